//! Server-sent events (the WHATWG `text/event-stream` format) as Streamable HTTP uses them:
//! a decoder fed bytes as they arrive, which yields each event once its blank line comes,
//! and the encoding of one event. No I/O.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// `event:` (absent means `message`).
    pub event: Option<String>,
    /// The `data:` lines joined by `\n`.
    pub data: String,
    /// `id:`, when the event set one.
    pub id: Option<String>,
}

/// Why a stream cannot be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("an event is larger than {0} bytes")]
    TooLarge(usize),
}

/// An incremental decoder with a size bound on the event being assembled.
#[derive(Debug)]
pub struct Decoder {
    max: usize,
    /// Bytes of a line not yet ended.
    line: Vec<u8>,
    current: Event,
    has_data: bool,
    /// Whether the last byte seen was a `\r` (a `\n` right after it ends nothing more).
    after_cr: bool,
    started: bool,
    /// The last `id:` seen, dispatched or not (what a reconnection resumes from).
    last_id: Option<String>,
}

impl Decoder {
    /// A decoder refusing events (and lines) over `max` bytes.
    pub fn new(max: usize) -> Decoder {
        Decoder {
            max,
            line: Vec::new(),
            current: Event::default(),
            has_data: false,
            after_cr: false,
            started: false,
            last_id: None,
        }
    }

    /// The last event id the stream set (also by an event without data).
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// Feeds bytes; every event they complete is pushed onto `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Event>) -> Result<(), SseError> {
        for &b in bytes {
            if b == b'\n' && self.after_cr {
                self.after_cr = false;
                continue;
            }
            self.after_cr = b == b'\r';
            if b == b'\n' || b == b'\r' {
                let line = std::mem::take(&mut self.line);
                self.line_done(&line, out);
                self.line = line;
                self.line.clear();
                continue;
            }
            if self.line.len() + self.current.data.len() >= self.max {
                return Err(SseError::TooLarge(self.max));
            }
            self.line.push(b);
        }
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<Event>) {
        // A byte-order mark may open the stream.
        let line = if !self.started {
            self.started = true;
            line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line)
        } else {
            line
        };
        if line.is_empty() {
            if self.has_data {
                out.push(std::mem::take(&mut self.current));
            } else {
                self.current = Event::default();
            }
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return; // a comment (keep-alive)
        }
        let (field, value) = match line.iter().position(|&c| c == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(&value);
                self.has_data = true;
            }
            b"event" => self.current.event = Some(value.into_owned()),
            // An id with NUL is ignored, as the standard says.
            b"id" if !value.contains('\0') => {
                self.last_id = Some(value.to_string());
                self.current.id = Some(value.into_owned());
            }
            _ => {}
        }
    }
}

/// One event carrying `data` (a JSON message: one line), with an id when given.
pub fn encode(id: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 32);
    out.extend_from_slice(b"event: message\n");
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    // JSON text holds no raw CR or LF inside strings: any is whitespace. A lone CR would end
    // an SSE line, so CRs become spaces; LFs start another `data:` line.
    for line in data.split(|&b| b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend(line.iter().map(|&b| if b == b'\r' { b' ' } else { b }));
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunks: &[&[u8]]) -> Vec<Event> {
        let mut d = Decoder::new(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn events_across_chunks_and_line_endings() {
        let evs = decode(&[
            b"\xef\xbb\xbf: hi\r\nevent: message\r\nid: 7\r",
            b"\ndata: {\"a\":\r\ndata: 1}\r\n\r\n",
            b"data:x\n\ndata\n\n",
        ]);
        assert_eq!(
            evs,
            vec![
                Event {
                    event: Some("message".into()),
                    data: "{\"a\":\n1}".into(),
                    id: Some("7".into())
                },
                Event {
                    event: None,
                    data: "x".into(),
                    id: None
                },
                Event {
                    event: None,
                    data: "".into(),
                    id: None
                },
            ]
        );
    }

    #[test]
    fn an_event_without_data_is_not_dispatched_but_its_id_counts() {
        let mut d = Decoder::new(1 << 10);
        let mut out = Vec::new();
        d.feed(b"id: 1\ndata: x\n\nevent: ping\nid: 3\n\n", &mut out)
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(d.last_id(), Some("3"));
    }

    #[test]
    fn a_lone_carriage_return_cannot_split_an_event() {
        let bytes = encode(None, b"{\"a\":\r1}");
        let evs = decode(&[&bytes]);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].data, "{\"a\": 1}");
    }

    #[test]
    fn an_unbounded_event_is_refused() {
        let mut d = Decoder::new(16);
        let mut out = Vec::new();
        assert_eq!(d.feed(&[b'x'; 40], &mut out), Err(SseError::TooLarge(16)));
    }

    #[test]
    fn encode_round_trips() {
        let bytes = encode(Some("s-1"), br#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        let evs = decode(&[&bytes]);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].id.as_deref(), Some("s-1"));
        assert_eq!(evs[0].data, r#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
    }
}
