//! The SFTP listener: SSH-2 (russh) with the SFTP version 3 subsystem, as
//! OpenSSH's `sftp-server` speaks it, over `dropgate-core`.
//!
//! Owns: the SSH side (host keys generated once and kept, the algorithm
//! policy, password and public-key authentication through
//! [`Gateway::authenticate`](dropgate_core::Gateway::authenticate), connection
//! limits, login grace and idle timeouts, refusing shells, commands, ptys and
//! forwarding), and the SFTP side (a byte-exact v3 codec with OpenSSH's
//! extensions and a pipelined request dispatcher).
//!
//! Must not: touch the disk or the database. Every file operation goes
//! through [`dropgate_core::Session`] (which checks permissions, keeps quotas
//! and writes the audit log), and every client path through
//! [`dropgate_vfs::VirtualPath`], the one canonicalizer. Host keys are the
//! only files this crate writes, into `data_dir`.
//!
//! Layout: `server` (accept loop, limits, shutdown), `ssh` (the russh
//! handler), `host_keys`, `codec` (pure wire format), `dispatcher` (reader,
//! executor and writer of one SFTP session), `ops` (what each request does),
//! `listing` (attributes and `ls -l` names), `status` (error → status table).

mod budget;
mod codec;
mod dispatcher;
mod error;
mod host_keys;
mod listing;
mod ops;
mod server;
mod ssh;
mod status;

pub use error::SftpError;
pub use host_keys::{DEFAULT_HOST_KEY_FILES, check_host_key, ensure_default_host_keys};
pub use server::{SftpConfig, SftpServer};

/// Pure functions exposed for `cargo bench` (`benches/codec.rs`); not a
/// stable API.
#[doc(hidden)]
pub mod bench_support {
    /// Splits a channel byte stream into packets and decodes each request;
    /// returns how many decoded.
    pub fn decode_stream(stream: &[u8]) -> usize {
        let mut frames = crate::codec::FrameDecoder::default();
        frames.push(stream);
        let mut n = 0;
        while let Ok(Some(frame)) = frames.next_frame() {
            if crate::codec::decode_request(frame).is_ok() {
                n += 1;
            }
        }
        n
    }
}

/// Pure functions exposed for the fuzz targets (`fuzz/`); not a stable API.
#[doc(hidden)]
pub mod fuzz_support {
    use crate::codec::{FrameDecoder, decode_request};

    /// Feeds `data` to the framer in two pieces (as a channel may deliver
    /// it) and decodes every whole packet; returns how many were decoded.
    pub fn decode_stream(data: &[u8]) -> usize {
        let mut frames = FrameDecoder::default();
        let mut n = 0;
        let (a, b) = data.split_at(data.len() / 2);
        for piece in [a, b] {
            frames.push(piece);
            loop {
                match frames.next_frame() {
                    Ok(Some(frame)) => {
                        let _ = decode_request(frame);
                        n += 1;
                    }
                    Ok(None) => break,
                    // The connection would end here.
                    Err(_) => return n,
                }
            }
        }
        n
    }
}
