//! File contents: pseudo-random bytes from a seed, produced while they are
//! sent and hashed on the way, so no session holds a whole file in memory;
//! downloads are hashed as they arrive.

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const CHUNK: usize = 64 * 1024;

/// Writes `size` bytes generated from `seed` to `w` (not flushed or closed)
/// and returns their SHA-256.
pub(crate) async fn write<W: AsyncWrite + Unpin>(
    w: &mut W,
    seed: u64,
    size: u64,
) -> std::io::Result<[u8; 32]> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
        let chunk = &mut buf[..n];
        rng.fill_bytes(chunk);
        hash.update(&*chunk);
        w.write_all(chunk).await?;
        left -= n as u64;
    }
    Ok(hash.finalize().into())
}

/// Reads `r` to its end: (bytes, SHA-256).
pub(crate) async fn read<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u64, [u8; 32])> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hash.finalize().into()))
}

/// Lower-case hex of a digest.
pub(crate) fn hex(d: &[u8]) -> String {
    use std::fmt::Write;
    d.iter()
        .fold(String::with_capacity(d.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn what_is_written_reads_back_with_the_same_digest() {
        let mut out = Vec::new();
        let d = write(&mut out, 7, 200_000).await.unwrap_or_default();
        assert_eq!(out.len(), 200_000);
        let (n, d2) = read(&mut out.as_slice()).await.unwrap_or_default();
        assert_eq!((n, d2), (200_000, d));
        let mut other = Vec::new();
        let d3 = write(&mut other, 8, 200_000).await.unwrap_or_default();
        assert_ne!(d, d3);
        assert_eq!(hex(&[0, 255, 16]), "00ff10");
    }
}
