//! Framing of the control connection: bounded command lines in, replies out.
//!
//! The stream is boxed so FTPS can swap a TLS stream in after `AUTH TLS`
//! (see [`ControlChannel::upgrade`]) and the implicit-FTPS listener can
//! hand over an already-encrypted one; nothing here knows which it is.

use std::future::Future;
use std::io;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dropgate_ftps::AckNow;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::reply::Reply;

/// Longest accepted command line, CR LF included.
pub(crate) const MAX_LINE: usize = 8192;

/// Bytes asked from the socket per read (keeps the buffer bounded).
const READ_CHUNK: u64 = 4096;

/// Anything a control connection can run over (TCP today, TLS with FTPS).
/// [`AckNow`] lets the `AUTH TLS` handshake reach the TCP socket inside.
pub(crate) trait ControlIo: AsyncRead + AsyncWrite + AckNow + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + AckNow + Send + Unpin> ControlIo for T {}

impl AckNow for Box<dyn ControlIo> {
    fn ack_now(&self) {
        (**self).ack_now();
    }
}

/// The control connection's byte stream.
pub(crate) type ControlStream = Box<dyn ControlIo>;

/// Why no command line could be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LineError {
    /// More than [`MAX_LINE`] bytes without a line end.
    #[error("command line too long")]
    TooLong,
    /// The connection failed.
    #[error("control connection: {0}")]
    Io(#[from] io::Error),
}

/// One control connection: reads lines, writes replies.
pub(crate) struct ControlChannel {
    stream: ControlStream,
    /// Received bytes not yet returned as lines (at most MAX_LINE + READ_CHUNK).
    input: BytesMut,
    /// Reused buffer for encoding replies.
    output: Vec<u8>,
    /// The peer closed its side.
    eof: bool,
    /// A client that stops reading replies is dropped after this long.
    write_timeout: Duration,
}

impl ControlChannel {
    pub(crate) fn new(stream: ControlStream, write_timeout: Duration) -> ControlChannel {
        ControlChannel {
            stream,
            input: BytesMut::with_capacity(1024),
            output: Vec::with_capacity(256),
            eof: false,
            write_timeout,
        }
    }

    /// The next command line without its line end (CR LF or a bare LF), or
    /// `None` at end of stream. Cancel-safe: received bytes stay buffered.
    pub(crate) async fn read_line(&mut self) -> Result<Option<Bytes>, LineError> {
        loop {
            if let Some(line) = self.take_line()? {
                return Ok(Some(line));
            }
            if self.eof {
                return Ok(None);
            }
            self.fill().await?;
        }
    }

    fn take_line(&mut self) -> Result<Option<Bytes>, LineError> {
        match self.input.iter().position(|&b| b == b'\n') {
            Some(i) if i + 1 > MAX_LINE => Err(LineError::TooLong),
            Some(i) => {
                let mut line = self.input.split_to(i + 1);
                line.truncate(i);
                if line.last() == Some(&b'\r') {
                    line.truncate(i - 1);
                }
                Ok(Some(line.freeze()))
            }
            None if self.input.len() >= MAX_LINE => Err(LineError::TooLong),
            None => Ok(None),
        }
    }

    /// Reads once more into the buffer (never more than READ_CHUNK).
    async fn fill(&mut self) -> io::Result<()> {
        self.input.reserve(READ_CHUNK as usize);
        let n = (&mut self.stream)
            .take(READ_CHUNK)
            .read_buf(&mut self.input)
            .await?;
        if n == 0 {
            self.eof = true;
        }
        Ok(())
    }

    /// Whether the client has closed the control connection, without
    /// waiting: used before committing an upload, because a client that dies
    /// mid-upload closes its data connection too, which looks like the end
    /// of the file. Bytes that arrive meanwhile stay buffered.
    pub(crate) async fn closed_now(&mut self) -> bool {
        if self.eof {
            return true;
        }
        if !self.input.is_empty() {
            return false;
        }
        // Poll the read exactly once. (Not `timeout(Duration::ZERO, ..)`:
        // tokio fires even an elapsed timer only at the driver's next 1 ms
        // tick, which cost every upload a millisecond before its 226.)
        let polled = {
            let mut fill = std::pin::pin!(self.fill());
            std::future::poll_fn(|cx| Poll::Ready(fill.as_mut().poll(cx))).await
        };
        match polled {
            Poll::Ready(Ok(())) => self.eof,
            Poll::Ready(Err(_)) => true,
            Poll::Pending => false,
        }
    }

    /// Sends one reply and flushes.
    pub(crate) async fn send(&mut self, reply: &Reply) -> io::Result<()> {
        self.output.clear();
        reply.encode(&mut self.output);
        let (stream, out) = (&mut self.stream, &self.output);
        tokio::time::timeout(self.write_timeout, async {
            stream.write_all(out).await?;
            stream.flush().await
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client does not read replies"))?
    }

    /// The raw stream, for replies streamed in pieces (STAT of a folder).
    pub(crate) fn stream_mut(&mut self) -> &mut ControlStream {
        &mut self.stream
    }

    /// How long a stalled write may take.
    pub(crate) fn write_timeout(&self) -> Duration {
        self.write_timeout
    }

    /// Swaps the stream for what `handshake` makes of it (the TLS upgrade
    /// after `AUTH TLS`). Every byte received but not yet returned as a
    /// command is dropped first: commands pipelined before the handshake
    /// must never run (STARTTLS command injection). Bytes still in the
    /// socket reach the handshake and fail it. On error the channel is left
    /// closed.
    pub(crate) async fn upgrade<F, Fut>(&mut self, handshake: F) -> io::Result<()>
    where
        F: FnOnce(ControlStream) -> Fut,
        Fut: Future<Output = io::Result<ControlStream>>,
    {
        self.input.clear();
        self.eof = false;
        let plain = std::mem::replace(&mut self.stream, closed_stream());
        self.stream = handshake(plain).await?;
        Ok(())
    }

    /// Closes gracefully: sends FIN, then reads and discards what the client
    /// still sends for a short while, so the last reply is not destroyed by
    /// a reset (closing with unread input makes the kernel send RST).
    pub(crate) async fn close_draining(mut self, max: Duration) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(max, async {
            loop {
                match self.stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }

    /// Closes: flushes and sends FIN.
    pub(crate) async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }
}

/// A stream whose peer is gone: reads end, writes fail.
fn closed_stream() -> ControlStream {
    Box::new(tokio::io::duplex(1).0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A channel whose client sends `input` and then closes.
    fn channel(input: &[u8]) -> ControlChannel {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let data = input.to_vec();
        tokio::spawn(async move {
            let _ = theirs.write_all(&data).await;
            let _ = theirs.shutdown().await;
        });
        ControlChannel::new(Box::new(ours), Duration::from_secs(1))
    }

    #[tokio::test]
    async fn splits_lines_and_strips_line_ends() {
        let mut c = channel(b"USER a\r\nPASS b\nNOOP\r\npartial");
        assert_eq!(c.read_line().await.unwrap().unwrap(), &b"USER a"[..]);
        assert_eq!(c.read_line().await.unwrap().unwrap(), &b"PASS b"[..]);
        assert_eq!(c.read_line().await.unwrap().unwrap(), &b"NOOP"[..]);
        assert!(
            c.read_line().await.unwrap().is_none(),
            "a partial line at EOF is dropped"
        );
    }

    #[tokio::test]
    async fn long_lines_are_refused_without_buffering_them() {
        let mut big = vec![b'A'; 10 << 20];
        big.extend_from_slice(b"\r\n");
        let mut c = channel(&big);
        assert!(matches!(c.read_line().await, Err(LineError::TooLong)));
        assert!(c.input.len() <= MAX_LINE + READ_CHUNK as usize);
    }

    #[tokio::test]
    async fn upgrade_drops_pipelined_commands() {
        let mut c = channel(b"AUTH TLS\r\nUSER x\r\nPASS y\r\n");
        assert_eq!(c.read_line().await.unwrap().unwrap(), &b"AUTH TLS"[..]);
        // The rest arrived with the same read and sits in the buffer.
        assert!(c.input.starts_with(b"USER x"));
        c.upgrade(|old| async move {
            drop(old);
            Ok(Box::new(std::io::Cursor::new(b"NOOP\r\n".to_vec())) as ControlStream)
        })
        .await
        .unwrap();
        assert_eq!(c.read_line().await.unwrap().unwrap(), &b"NOOP"[..]);
        assert!(c.read_line().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_line_of_exactly_the_limit_is_accepted() {
        let mut line = vec![b'A'; MAX_LINE - 2];
        line.extend_from_slice(b"\r\n");
        let mut c = channel(&line);
        assert_eq!(c.read_line().await.unwrap().unwrap().len(), MAX_LINE - 2);
    }
}
