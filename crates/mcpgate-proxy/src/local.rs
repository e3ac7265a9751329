//! A session's stream as the agent of this process sees it when the proxy hands the session
//! over in memory ([`crate::LocalAgent`]): once the agent's tunnel is cut, reads end and
//! writes fail, as on a tunnel stream whose connection is gone.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

/// How long an agent's session may take to end itself once its tunnel is cut.
pub(crate) const CUT_GRACE: Duration = Duration::from_secs(1);

/// A stream half that ends when `cut` resolves.
pub(crate) struct Cuttable<'a, S: ?Sized> {
    inner: &'a mut S,
    cut: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    is_cut: bool,
}

impl<'a, S: ?Sized> Cuttable<'a, S> {
    pub(crate) fn new(inner: &'a mut S, cut: impl Future<Output = ()> + Send + 'a) -> Self {
        Cuttable {
            inner,
            cut: Box::pin(cut),
            is_cut: false,
        }
    }

    /// Whether the tunnel is cut (and if not, wakes this task when it is).
    fn cut(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.is_cut && self.cut.as_mut().poll(cx).is_ready() {
            self.is_cut = true;
        }
        self.is_cut
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the agent's tunnel was cut")
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Cuttable<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.cut(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut *this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncBufRead + Unpin + ?Sized> AsyncBufRead for Cuttable<'_, S> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.cut(cx) {
            return Poll::Ready(Ok(&[]));
        }
        Pin::new(&mut *this.inner).poll_fill_buf(cx)
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        if !this.is_cut {
            Pin::new(&mut *this.inner).consume(amt);
        }
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Cuttable<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.cut(cx) {
            return Poll::Ready(Err(gone()));
        }
        Pin::new(&mut *this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.cut(cx) {
            return Poll::Ready(Err(gone()));
        }
        Pin::new(&mut *this.inner).poll_flush(cx)
    }

    /// The stream stays open for the proxy to tell the client why.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.cut(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut *this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests panic on failure by design
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn once_cut_reads_end_and_writes_fail() {
        let (cut_tx, cut_rx) = tokio::sync::watch::channel(false);
        let cut = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|c| *c).await;
        };
        let (client, agent_side) = tokio::io::duplex(64);
        let (read, mut write) = tokio::io::split(agent_side);
        let mut read = tokio::io::BufReader::new(read);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        client_write.write_all(b"one\n").await.unwrap();
        let mut r = Cuttable::new(&mut read, cut(cut_rx.clone()));
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        assert_eq!(line, "one\n");
        let mut w = Cuttable::new(&mut write, cut(cut_rx.clone()));
        w.write_all(b"answer\n").await.unwrap();
        // A read waiting for the client ends when the tunnel is cut.
        let mut rest = String::new();
        let (n, ()) = tokio::join!(r.read_line(&mut rest), async {
            cut_tx.send(true).unwrap();
        });
        assert_eq!((n.unwrap(), rest.as_str()), (0, ""));
        assert_eq!(
            w.write_all(b"more\n").await.unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        w.shutdown().await.unwrap();
        drop(w);
        // What was written before the cut reached the client, and the stream is still open
        // for the proxy's own last words.
        write.write_all(b"why\n").await.unwrap();
        let mut got = vec![0u8; 11];
        tokio::io::AsyncReadExt::read_exact(&mut client_read, &mut got)
            .await
            .unwrap();
        assert_eq!(got, b"answer\nwhy\n");
    }
}
