//! How many bytes of decoded SFTP requests may wait in memory: per
//! connection (every channel of it together) and server-wide.
//!
//! The reader of a channel never stops draining it (see the dispatcher), so
//! a client that sends requests faster than they finish, or never reads its
//! replies, makes the queue grow; these budgets bound that growth and end
//! the connection that goes past them. A request is charged from the moment
//! it is decoded until its reply has been sent (the charge takes the reply's
//! size once it exists), so replies held up by a client that keeps its SSH
//! window shut count too. What is not charged: one partial packet per
//! channel in the framer (at most 256 KiB each) and russh's own buffers.
//! Server-wide, request and reply memory stays below [`SERVER_HARD`] plus
//! one packet or reply per connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

const MIB: usize = 1024 * 1024;

/// Bytes one connection may have queued or executing, all channels
/// together. Far above what any client needs (OpenSSH: 64 x 255 KiB writes
/// = 16 MiB; paramiko prefetching a 1 GiB file: 32768 small reads, about
/// 3 MiB).
pub(crate) const PER_CONNECTION: usize = 64 * MIB;
/// What one connection may always hold, however busy the server is: the
/// most a real client keeps in flight (OpenSSH's 64 writes or reads of
/// 255 KiB, about 16 MiB), with a margin.
pub(crate) const FAIR_SHARE: usize = 24 * MIB;
/// Past this server-wide total, a connection holding more than its
/// [`FAIR_SHARE`] is ended when it asks for more.
pub(crate) const SERVER_SOFT: usize = 256 * MIB;
/// Past this server-wide total, any connection that asks for more is ended.
pub(crate) const SERVER_HARD: usize = 1024 * MIB;
/// Accounting overhead charged per request on top of its packet.
pub(crate) const REQUEST_OVERHEAD: usize = 96;

/// The server-wide counter, shared by every connection of a listener set.
#[derive(Clone, Default)]
pub(crate) struct ServerBudget {
    used: Arc<AtomicUsize>,
}

impl ServerBudget {
    /// A fresh per-connection budget drawing on this one.
    pub(crate) fn connection(&self) -> ConnectionBudget {
        ConnectionBudget {
            server: self.used.clone(),
            used: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Bytes charged right now, server-wide.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// One connection's budget; its channels share it.
#[derive(Clone)]
pub(crate) struct ConnectionBudget {
    server: Arc<AtomicUsize>,
    used: Arc<AtomicUsize>,
}

/// Why a charge was refused (the connection is then ended).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum OverBudget {
    #[error("more than {PER_CONNECTION} bytes of requests outstanding on one connection")]
    Connection,
    #[error("server-wide SFTP request budget exhausted ({0} bytes outstanding)")]
    Server(usize),
}

impl ConnectionBudget {
    /// Charges a packet of `len` bytes; the charge is released when the
    /// returned guard drops (once the request has executed).
    pub(crate) fn charge(&self, len: usize) -> Result<Charge, OverBudget> {
        let bytes = len.saturating_add(REQUEST_OVERHEAD);
        let mine = self.used.fetch_add(bytes, Ordering::AcqRel) + bytes;
        let total = self.server.fetch_add(bytes, Ordering::AcqRel) + bytes;
        // From here on the guard gives the bytes back, refused or not.
        let charge = Charge {
            budget: self.clone(),
            bytes,
        };
        if mine > PER_CONNECTION {
            return Err(OverBudget::Connection);
        }
        if total > SERVER_HARD || (total > SERVER_SOFT && mine > FAIR_SHARE) {
            return Err(OverBudget::Server(total));
        }
        Ok(charge)
    }
}

/// Bytes charged for one request, released on drop.
pub(crate) struct Charge {
    budget: ConnectionBudget,
    bytes: usize,
}

impl Charge {
    /// The same charge for `len` bytes instead (a request's reply, once it
    /// exists). Never refused: the bytes are already there, and what they
    /// add makes the connection's next request meet the budget.
    pub(crate) fn resize(mut self, len: usize) -> Charge {
        let bytes = len.saturating_add(REQUEST_OVERHEAD);
        if bytes > self.bytes {
            let more = bytes - self.bytes;
            self.budget.used.fetch_add(more, Ordering::AcqRel);
            self.budget.server.fetch_add(more, Ordering::AcqRel);
        } else {
            let less = self.bytes - bytes;
            self.budget.used.fetch_sub(less, Ordering::AcqRel);
            self.budget.server.fetch_sub(less, Ordering::AcqRel);
        }
        self.bytes = bytes;
        self
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        self.budget.server.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_reply_takes_over_its_requests_charge() {
        let server = ServerBudget::default();
        let conn = server.connection();
        let read = conn.charge(40).unwrap();
        assert_eq!(server.used(), 40 + REQUEST_OVERHEAD);
        let reply = read.resize(MIB);
        assert_eq!(server.used(), MIB + REQUEST_OVERHEAD);
        let write = conn.charge(MIB).unwrap().resize(20);
        assert_eq!(server.used(), MIB + 20 + 2 * REQUEST_OVERHEAD);
        drop((reply, write));
        assert_eq!(server.used(), 0);
    }

    #[test]
    fn channels_of_one_connection_share_its_budget() {
        let server = ServerBudget::default();
        let conn = server.connection();
        let other_channel = conn.clone();
        let packet = MIB - REQUEST_OVERHEAD;
        let mut held: Vec<Charge> = (0..63).map(|_| conn.charge(packet).unwrap()).collect();
        held.push(other_channel.charge(packet).unwrap());
        // 64 MiB held across two channels: the next byte ends the connection.
        assert_eq!(conn.charge(1).err(), Some(OverBudget::Connection));
        assert_eq!(server.used(), 64 * MIB, "a refused charge is given back");
        drop(held);
        assert_eq!(server.used(), 0);
        assert!(conn.charge(packet).is_ok());
    }

    #[test]
    fn a_busy_server_ends_greedy_connections_first_and_caps_everyone() {
        let server = ServerBudget::default();
        let packet = MIB - REQUEST_OVERHEAD;
        // Eight greedy connections at 32 MiB each, above their fair share: 256 MiB.
        let greedy: Vec<ConnectionBudget> = (0..8).map(|_| server.connection()).collect();
        let mut held: Vec<Charge> = Vec::new();
        for c in &greedy {
            held.extend((0..32).map(|_| c.charge(packet).unwrap()));
        }
        assert_eq!(server.used(), SERVER_SOFT);
        // Past the soft mark a connection over its fair share is ended...
        assert!(matches!(
            greedy[0].charge(packet).err(),
            Some(OverBudget::Server(_))
        ));
        // ...while one within it still gets its packets.
        let modest = server.connection();
        let mut modest_held: Vec<Charge> =
            (0..16).map(|_| modest.charge(packet).unwrap()).collect();
        // Up to the hard mark, where everyone is refused.
        let many: Vec<ConnectionBudget> = (0..64).map(|_| server.connection()).collect();
        let mut refused = 0;
        for c in &many {
            for _ in 0..16 {
                match c.charge(packet) {
                    Ok(ch) => modest_held.push(ch),
                    Err(_) => refused += 1,
                }
            }
        }
        assert!(refused > 0);
        assert!(server.used() <= SERVER_HARD, "{}", server.used());
        drop(held);
        drop(modest_held);
        assert_eq!(server.used(), 0);
    }
}
