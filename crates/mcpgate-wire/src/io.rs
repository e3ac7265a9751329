//! Tokio `AsyncRead`/`AsyncBufRead`/`AsyncWrite` over one HTTP/2 stream, respecting its flow
//! control in both directions.
//!
//! - [`RecvReader`] gives back window only for bytes the consumer has taken: a consumer that
//!   stops reading stops the stream's window, and the peer's writes to that stream (and only
//!   that stream) wait. What it holds is bounded by the stream window.
//! - [`SendWriter`] writes only what the peer's window allows and otherwise waits for
//!   capacity (`poll_capacity`); it never buffers beyond the capacity h2 assigned it.
//! - Shutting the writer down ends the stream (`END_STREAM`); dropping it before that resets
//!   the stream (`CANCEL`), which the peer's reader sees as an error.

use bytes::{Buf, Bytes};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

use crate::tunnel::STREAM_WINDOW;

/// The reading half of a tunnel stream.
pub struct RecvReader {
    state: RecvState,
    /// The DATA frame being consumed; its bytes are not yet released to the peer's window.
    chunk: Bytes,
}

enum RecvState {
    /// Waiting for the response head (the opening side of a stream).
    Head(h2::client::ResponseFuture),
    Body(h2::RecvStream),
    Done,
}

impl RecvReader {
    /// Reads a stream's body (a request body on the agent, a response body on the proxy).
    pub fn new(body: h2::RecvStream) -> RecvReader {
        RecvReader {
            state: RecvState::Body(body),
            chunk: Bytes::new(),
        }
    }

    /// Reads the body of a response not received yet; an answer other than `200` is an error.
    pub(crate) fn response(head: h2::client::ResponseFuture) -> RecvReader {
        RecvReader {
            state: RecvState::Head(head),
            chunk: Bytes::new(),
        }
    }
}

impl AsyncBufRead for RecvReader {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        while this.chunk.is_empty() {
            match &mut this.state {
                RecvState::Head(head) => match ready!(Pin::new(head).poll(cx)) {
                    Ok(response) if response.status() == http::StatusCode::OK => {
                        this.state = RecvState::Body(response.into_body());
                    }
                    Ok(response) => {
                        this.state = RecvState::Done;
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::ConnectionRefused,
                            format!("the agent refused the stream ({})", response.status()),
                        )));
                    }
                    Err(e) => {
                        this.state = RecvState::Done;
                        return Poll::Ready(Err(io_error(e)));
                    }
                },
                RecvState::Body(body) => match ready!(body.poll_data(cx)) {
                    Some(Ok(data)) => this.chunk = data,
                    None => this.state = RecvState::Done,
                    // The peer answered in full and then reset what it did not need to read.
                    Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => {
                        this.state = RecvState::Done
                    }
                    Some(Err(e)) => {
                        this.state = RecvState::Done;
                        return Poll::Ready(Err(io_error(e)));
                    }
                },
                RecvState::Done => break,
            }
        }
        Poll::Ready(Ok(&this.chunk[..]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        let amt = amt.min(this.chunk.len());
        this.chunk.advance(amt);
        if let RecvState::Body(body) = &mut this.state {
            // Only now may the peer send this much more. An error means the stream is gone,
            // and with it the window.
            let _ = body.flow_control().release_capacity(amt);
        }
    }
}

impl AsyncRead for RecvReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let available = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

/// The writing half of a tunnel stream.
pub struct SendWriter {
    send: h2::SendStream<Bytes>,
    ended: bool,
}

impl SendWriter {
    /// Writes a stream's body (a request body on the proxy, a response body on the agent).
    pub fn new(send: h2::SendStream<Bytes>) -> SendWriter {
        SendWriter { send, ended: false }
    }

    /// Why the stream cannot take more data.
    fn broken(&mut self, cx: &mut Context<'_>) -> io::Error {
        match self.send.poll_reset(cx) {
            Poll::Ready(Ok(reason)) => io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("the tunnel stream was reset ({reason})"),
            ),
            Poll::Ready(Err(e)) => io_error(e),
            Poll::Pending => io::Error::new(io::ErrorKind::BrokenPipe, "the tunnel stream closed"),
        }
    }
}

impl AsyncWrite for SendWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.ended {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        loop {
            let capacity = self.send.capacity();
            if capacity > 0 {
                let n = capacity.min(buf.len());
                return match self
                    .send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                {
                    Ok(()) => Poll::Ready(Ok(n)),
                    Err(_) => Poll::Ready(Err(self.broken(cx))),
                };
            }
            // Ask for room for this write (never more than a stream window) and wait for the
            // peer to open its window: this is where a slow reader pushes back.
            self.send
                .reserve_capacity(buf.len().min(STREAM_WINDOW as usize));
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Poll::Ready(Err(self.broken(cx))),
            }
        }
    }

    /// h2's connection task writes what [`poll_write`](Self::poll_write) handed it.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Ends the stream.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.ended {
            return Poll::Ready(Ok(()));
        }
        self.ended = true;
        self.send.reserve_capacity(0);
        match self.send.send_data(Bytes::new(), true) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(_) => Poll::Ready(Err(self.broken(cx))),
        }
    }
}

/// An h2 error as an I/O error of the matching kind.
pub(crate) fn io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::from(io::ErrorKind::ConnectionAborted));
    }
    let kind = if e.is_reset() || e.is_go_away() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::InvalidData
    };
    io::Error::new(kind, e)
}
