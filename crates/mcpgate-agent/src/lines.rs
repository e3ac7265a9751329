//! Newline-delimited framing with a size limit, for untrusted streams.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// One read.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line is in the buffer (without its newline).
    Ok,
    /// A line longer than the limit was skipped up to its newline.
    TooLong,
    /// The stream ended.
    Eof,
}

/// Reads one line into `buf` (cleared first), skipping lines over `max` bytes without
/// holding them in memory. Empty lines are skipped.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    loop {
        buf.clear();
        let mut too_long = false;
        loop {
            let chunk = r.fill_buf().await?;
            if chunk.is_empty() {
                return Ok(if too_long {
                    Line::TooLong
                } else if buf.is_empty() {
                    Line::Eof
                } else {
                    Line::Ok
                });
            }
            let (take, done) = match memchr(chunk) {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if !too_long {
                if buf.len().saturating_add(take) > max.saturating_add(1) {
                    too_long = true;
                    buf.clear();
                } else {
                    buf.extend_from_slice(&chunk[..take]);
                }
            }
            r.consume(take);
            if done {
                break;
            }
        }
        if too_long {
            return Ok(Line::TooLong);
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        if !buf.iter().all(u8::is_ascii_whitespace) {
            return Ok(Line::Ok);
        }
    }
}

fn memchr(s: &[u8]) -> Option<usize> {
    s.iter().position(|b| *b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_and_limits() {
        let data = b"one\n\n  \ntwo\r\n0123456789abc\nthree".to_vec();
        let mut r = tokio::io::BufReader::with_capacity(4, &data[..]);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        loop {
            match read_line(&mut r, &mut buf, 10).await.unwrap() {
                Line::Ok => got.push(String::from_utf8(buf.clone()).unwrap()),
                Line::TooLong => got.push("<too long>".into()),
                Line::Eof => break,
            }
        }
        assert_eq!(got, ["one", "two", "<too long>", "three"]);
    }
}
