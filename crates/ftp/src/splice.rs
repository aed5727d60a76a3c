//! Zero-copy receive for plain FTP uploads: `splice(2)` moves the bytes
//! from the data socket into a pipe (the kernel passes page references, no
//! copy) and from the pipe into the file (one copy, into the page cache),
//! where `read` + `write` copy twice through a buffer of ours.
//!
//! Used where the upload needs nothing of its bytes but their count
//! ([`Upload::writes_direct`]: page-cache mode, past the part the stream
//! hash follows). Two pipes alternate as the two buffers of the copying
//! path do: one is written to disk on a blocking thread while the other
//! fills from the socket on the connection's task.
//!
//! Neither tokio nor a crate of the field offers a socket-to-file splice
//! with tokio's readiness; rustix gives the calls, the loop is here.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use dropgate_core::Upload;
use rustix::io::Errno;
use rustix::net::RecvFlags;
use rustix::pipe::SpliceFlags;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::error::TransferError;
use crate::transfer::{TransferControl, disk, net};

/// Bytes one pipe holds (and one disk write moves): as the copying path's
/// buffers. Where the system refuses pipes this large
/// (`/proc/sys/fs/pipe-max-size`, or a user past `pipe-user-pages-soft`,
/// whose new pipes get two pages), the upload takes the copying path:
/// a blocking hand-off per few KiB would cost more than the copy saves.
const PIPE_BYTES: usize = 1 << 20;

/// A pipe: the socket splices into `write`, the disk write drains `read`.
struct Pipe {
    read: Arc<OwnedFd>,
    write: OwnedFd,
    /// What one fill may put in (the pipe's size).
    capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let capacity = rustix::pipe::fcntl_setpipe_size(&write, PIPE_BYTES)?.min(PIPE_BYTES);
        Ok(Pipe {
            read: Arc::new(read),
            write,
            capacity,
        })
    }
}

/// The two pipes of one zero-copy receive.
pub(crate) struct Pipes([Pipe; 2]);

impl Pipes {
    /// `None` when the process is out of descriptors or may not have pipes
    /// of [`PIPE_BYTES`]: the upload then goes on through the copying path.
    pub(crate) fn new() -> Option<Pipes> {
        match (Pipe::new(), Pipe::new()) {
            (Ok(a), Ok(b)) => Some(Pipes([a, b])),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "no pipe for a zero-copy upload");
                None
            }
        }
    }
}

/// Receives the rest of an upload from `pos` on, straight into its file,
/// until the client closes the data connection.
pub(crate) async fn receive(
    tcp: &TcpStream,
    upload: &Upload,
    mut pos: u64,
    pipes: Pipes,
    ctl: &TransferControl,
) -> Result<(), TransferError> {
    let [mut current, mut next] = pipes.0;
    let (mut held, mut eof) = fill(tcp, &current, ctl).await?;
    loop {
        if eof {
            if held > 0 {
                disk(ctl, upload.write_direct(pos, held, drain(&current, held))).await?;
            }
            return Ok(());
        }
        // One disk write in flight while the other pipe fills.
        let ((), (following, at_end)) = tokio::try_join!(
            disk(ctl, upload.write_direct(pos, held, drain(&current, held))),
            fill(tcp, &next, ctl)
        )?;
        pos += held;
        held = following;
        eof = at_end;
        std::mem::swap(&mut current, &mut next);
    }
}

/// What one `splice` from the socket did.
enum Step {
    Moved(usize),
    /// The pipe has no room left (its slots hold partial pages).
    PipeFull,
}

/// Moves bytes from the socket into `pipe` until it is full or the client
/// closes; returns the bytes it holds and whether the end was reached.
/// Counts them in the transfer's progress (what STAT shows).
async fn fill(
    tcp: &TcpStream,
    pipe: &Pipe,
    ctl: &TransferControl,
) -> Result<(u64, bool), TransferError> {
    let mut held = 0usize;
    while held < pipe.capacity {
        net(ctl, tcp.readable()).await?;
        let step = tcp.try_io(Interest::READABLE, || {
            let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
            match rustix::pipe::splice(tcp, None, &pipe.write, None, pipe.capacity - held, flags) {
                Ok(n) => Ok(Step::Moved(n)),
                // EAGAIN from an empty socket or from a pipe whose slots are
                // used up by partial pages: only the socket's own state
                // tells. Readiness is cleared (WouldBlock) only when the
                // socket has nothing, or a pending end would never wake us.
                Err(Errno::AGAIN) if held > 0 => match peek(tcp) {
                    Err(Errno::AGAIN) => Err(io::ErrorKind::WouldBlock.into()),
                    Ok(_) => Ok(Step::PipeFull),
                    Err(e) => Err(e.into()),
                },
                Err(e) => Err(e.into()),
            }
        });
        match step {
            Ok(Step::Moved(0)) => return Ok((held as u64, true)),
            Ok(Step::Moved(n)) => {
                held += n;
                ctl.progress.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(Step::PipeFull) => break,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(TransferError::Data(e)),
        }
    }
    Ok((held as u64, false))
}

/// Whether the socket has a byte or its end waiting (`Ok(0)`: the end),
/// without taking it.
fn peek(tcp: &TcpStream) -> Result<usize, Errno> {
    let mut byte = [0u8; 1];
    rustix::net::recv(tcp, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT).map(|(n, _)| n)
}

/// The disk write of a filled pipe: moves its `len` bytes into the file.
fn drain(pipe: &Pipe, len: u64) -> dropgate_core::vfs::DirectWrite {
    let read = pipe.read.clone();
    Box::new(move |file, offset| {
        let mut at = offset;
        let mut left = usize::try_from(len).unwrap_or(usize::MAX);
        while left > 0 {
            match rustix::pipe::splice(&*read, None, file, Some(&mut at), left, SpliceFlags::MOVE) {
                // The pipe holds `len` bytes, so this cannot happen; an
                // error rather than a wait if it does.
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => left -= n,
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(at - offset)
    })
}
