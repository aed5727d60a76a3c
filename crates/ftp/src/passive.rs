//! Passive data connections: one [`PassivePortPool`] per listener shared by
//! every session, and the task that waits for the client's data connection.
//!
//! A port is leased when a client sends PASV/EPSV and returns to the pool as
//! soon as the data connection is accepted, when nobody connects within the
//! wait limit, or when the session moves on (a new PASV, a disconnect): the
//! lease lives in the [`PendingPassive`] that owns the listener, and is
//! dropped with it in all three cases.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dropgate_core::proxy::Proxied;
use dropgate_core::{Admission, ProxyPolicy, Source};
use rustix::io::Errno;
use rustix::net::{self, AddressFamily, SocketFlags, SocketType};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// How many ports one PASV tries before giving up (ports held by other
/// processes are skipped).
const MAX_BIND_ATTEMPTS: usize = 256;

/// Ports any one source or account may hold, however small the range
/// (lftp's and FileZilla's parallel transfers open a few sessions at once).
const MIN_HOLDER_SHARE: usize = 4;

/// The passive port range of one listener, shared by all its sessions.
#[derive(Clone)]
pub(crate) struct PassivePortPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    first: u16,
    state: Mutex<PoolState>,
}

struct PoolState {
    /// One flag per port of the range.
    in_use: Vec<bool>,
    /// Leases held per source address and per account, so that one of
    /// them cannot take every port (PASV after PASV on many sessions,
    /// never connecting) and lock everyone else out of transfers.
    by_source: HashMap<Source, usize>,
    by_account: HashMap<String, usize>,
    /// Where the next search starts: round robin, so a port just released
    /// (and maybe still in TIME_WAIT on the client side) is reused last.
    next: usize,
    leased: usize,
}

/// Who asks for a passive port.
#[derive(Clone, Debug)]
pub(crate) struct Holder {
    /// The client's address; counted by source as admission counts it (an
    /// IPv4 address, or an IPv6 /64; IPv4-mapped addresses count as IPv4).
    pub(crate) source: IpAddr,
    /// The logged-in account.
    pub(crate) account: String,
}

/// Why no port was leased.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoPort {
    /// Every port of the range is leased.
    Exhausted,
    /// This source or account already holds its share of the range.
    HolderFull,
}

/// A port taken from the pool; dropping it gives the port back.
pub(crate) struct PortLease {
    pool: Arc<PoolInner>,
    port: u16,
    source: Source,
    account: String,
}

impl PortLease {
    /// The leased port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let mut st = self.pool.lock();
        let i = usize::from(self.port - self.pool.first);
        if st.in_use[i] {
            st.in_use[i] = false;
            st.leased -= 1;
            release(&mut st.by_source, &self.source);
            release(&mut st.by_account, &self.account);
        }
    }
}

/// Decrements a holder's count, forgetting holders at zero.
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

impl PoolInner {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // Nothing can be left half-updated by a panic under this lock.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl PassivePortPool {
    /// A pool over `range` (port 0 is never handed out; an empty range makes
    /// every PASV fail with 425).
    pub(crate) fn new(range: RangeInclusive<u16>) -> PassivePortPool {
        let first = (*range.start()).max(1);
        let last = *range.end();
        let len = if last >= first {
            usize::from(last - first) + 1
        } else {
            0
        };
        PassivePortPool {
            inner: Arc::new(PoolInner {
                first,
                state: Mutex::new(PoolState {
                    in_use: vec![false; len],
                    by_source: HashMap::new(),
                    by_account: HashMap::new(),
                    next: 0,
                    leased: 0,
                }),
            }),
        }
    }

    /// The most ports one source or one account may hold at once: a quarter
    /// of the range, but at least [`MIN_HOLDER_SHARE`] (all of a range that
    /// small). Ports are held only from PASV until the data connection
    /// arrives, so a real client holds one per session.
    pub(crate) fn holder_share(&self) -> usize {
        let capacity = self.capacity();
        (capacity / 4).max(capacity.min(MIN_HOLDER_SHARE))
    }

    /// Takes a free port for `holder`.
    pub(crate) fn lease(&self, holder: &Holder) -> Result<PortLease, NoPort> {
        let share = self.holder_share();
        let source = Source::of(holder.source);
        let mut st = self.inner.lock();
        if st.by_source.get(&source).copied().unwrap_or(0) >= share
            || st.by_account.get(&holder.account).copied().unwrap_or(0) >= share
        {
            return Err(NoPort::HolderFull);
        }
        let len = st.in_use.len();
        for k in 0..len {
            let i = (st.next + k) % len;
            if !st.in_use[i] {
                let Ok(offset) = u16::try_from(i) else {
                    break;
                };
                st.in_use[i] = true;
                st.leased += 1;
                st.next = (i + 1) % len;
                *st.by_source.entry(source).or_default() += 1;
                *st.by_account.entry(holder.account.clone()).or_default() += 1;
                return Ok(PortLease {
                    pool: self.inner.clone(),
                    port: self.inner.first + offset,
                    source,
                    account: holder.account.clone(),
                });
            }
        }
        Err(NoPort::Exhausted)
    }

    /// How many ports are leased right now.
    #[cfg(test)]
    pub(crate) fn leased(&self) -> usize {
        self.inner.lock().leased
    }

    /// How many ports the range holds.
    pub(crate) fn capacity(&self) -> usize {
        self.inner.lock().in_use.len()
    }

    /// Binds a listener on `ip` at a port leased to `holder`. The listener
    /// is not registered with the reactor yet (see [`PendingPassive`]).
    pub(crate) fn bind(
        &self,
        ip: IpAddr,
        holder: &Holder,
    ) -> Result<(std::net::TcpListener, PortLease), BindError> {
        let family = if ip.is_ipv4() {
            AddressFamily::INET
        } else {
            AddressFamily::INET6
        };
        // One socket for every attempt: a failed bind leaves it unbound.
        // Ports of the range that clients on this host use as their own
        // (the ephemeral range often overlaps) fail often enough that a
        // fresh socket each time was measurable.
        let socket = net::socket_with(
            family,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(io::Error::from)?;
        net::sockopt::set_socket_reuseaddr(&socket, true).map_err(io::Error::from)?;
        for _ in 0..self.capacity().min(MAX_BIND_ATTEMPTS) {
            let lease = match self.lease(holder) {
                Ok(l) => l,
                Err(NoPort::Exhausted) => break,
                Err(NoPort::HolderFull) => return Err(BindError::HolderFull),
            };
            match net::bind(&socket, &SocketAddr::new(ip, lease.port())) {
                Ok(()) => {
                    net::listen(&socket, 8).map_err(io::Error::from)?;
                    return Ok((std::net::TcpListener::from(socket), lease));
                }
                // Held by another socket: try the next one.
                Err(Errno::ADDRINUSE) => continue,
                Err(e) => return Err(io::Error::from(e).into()),
            }
        }
        Err(BindError::Exhausted)
    }
}

/// Why no passive listener could be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BindError {
    #[error("no passive port available")]
    Exhausted,
    #[error("this address or account holds its share of the passive ports")]
    HolderFull,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A passive listener waiting for the client's data connection.
///
/// It owns its listener and port lease, so dropping it (a new PASV, the end
/// of the session, its expiry) closes the listener and frees the port at
/// once. Connections are accepted when the transfer starts; until then the
/// kernel holds a client that connected early.
pub(crate) struct PendingPassive {
    listener: Incoming,
    lease: PortLease,
    /// Only this host may connect.
    client: IpAddr,
    /// After this, the port goes back to the pool.
    deadline: Instant,
    /// Bans apply to data connections too.
    admission: Option<Arc<Admission>>,
    /// Data connections from a trusted proxy carry the client in a header.
    proxy: Option<Arc<ProxyPolicy>>,
}

impl PendingPassive {
    /// A listener for `client`, valid for `wait`.
    pub(crate) fn new(
        listener: std::net::TcpListener,
        lease: PortLease,
        client: IpAddr,
        wait: Duration,
    ) -> PendingPassive {
        PendingPassive {
            listener: Incoming {
                waiting: Some(listener),
                polled: None,
                looked: false,
            },
            lease,
            client,
            deadline: Instant::now() + wait,
            admission: None,
            proxy: None,
        }
    }

    /// Reads the PROXY header of a data connection from a trusted proxy and
    /// checks the client it names (`[cluster] proxy_protocol`).
    pub(crate) fn behind(mut self, proxy: Option<Arc<ProxyPolicy>>) -> PendingPassive {
        self.proxy = proxy;
        self
    }

    /// Refuses data connections from a banned source (the control
    /// connection may have been admitted before the ban).
    pub(crate) fn admitted_by(mut self, admission: Arc<Admission>) -> PendingPassive {
        self.admission = Some(admission);
        self
    }

    /// When the listener expires.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The client's data connection. Connections from any other address
    /// are closed unread and the wait goes on, up to the deadline. The port
    /// is freed when this returns.
    pub(crate) async fn accept(self) -> io::Result<TcpStream> {
        let PendingPassive {
            mut listener,
            lease,
            client,
            deadline,
            admission,
            proxy,
        } = self;
        // Headers of connections from a trusted proxy are read side by side,
        // so a stalled one cannot hold up the client's own connection.
        let mut headers: JoinSet<HeaderRead> = JoinSet::new();
        let result = tokio::time::timeout_at(deadline.into(), async {
            loop {
                let accepted = tokio::select! {
                    Some(done) = headers.join_next(), if !headers.is_empty() => match done {
                        Ok((stream, _, Ok(Proxied::Client { source, .. }))) => Ok((stream, source)),
                        Ok((stream, from, Ok(Proxied::Local))) => Ok((stream, from)),
                        Ok((_, from, Err(e))) => {
                            tracing::debug!(proxy = %from, error = %e, "data connection from a trusted proxy closed");
                            continue;
                        }
                        Err(_) => continue,
                    },
                    r = listener.accept() => match r {
                        Ok((mut stream, from))
                            if proxy.as_ref().is_some_and(|p| p.trusts(from.ip())) =>
                        {
                            if headers.len() < MAX_PENDING_DATA_HEADERS {
                                headers.spawn(async move {
                                    let header = dropgate_core::proxy::read_header(&mut stream).await;
                                    (stream, from, header)
                                });
                            }
                            continue;
                        }
                        other => other,
                    },
                };
                match accepted {
                    Ok((stream, from))
                        if admission.as_ref().is_some_and(|a| a.is_banned(from.ip())) =>
                    {
                        tracing::info!(%from, "data connection from a banned source refused");
                        drop(stream);
                    }
                    Ok((stream, from)) if same_host(from.ip(), client) => return Ok(stream),
                    Ok((stream, from)) => {
                        tracing::warn!(%from, expected = %client, port = lease.port(), "data connection from a foreign address refused");
                        drop(stream);
                    }
                    Err(e) if is_transient(&e) => {
                        tracing::debug!(error = %e, "passive accept failed");
                        // Out of descriptors and the like: do not spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no data connection")));
        drop(listener);
        drop(lease);
        result
    }
}

/// A passive listener that joins the reactor only when it has to.
///
/// Clients connect right after the PASV reply, before the transfer command,
/// so by the time the transfer accepts, the connection is usually waiting in
/// the backlog: taking it straight away spares registering the listener
/// (two `epoll_ctl` calls) and the wake-up its connection would cause while
/// the session still waits for the command. Only the first call looks
/// there: a later one (a connection was refused) goes through the reactor,
/// whose budget makes a flood of connections yield (and the deadline count).
struct Incoming {
    /// Not registered yet (non-blocking).
    waiting: Option<std::net::TcpListener>,
    /// Registered once a connection had to be waited for.
    polled: Option<TcpListener>,
    /// The backlog was looked at without the reactor.
    looked: bool,
}

impl Incoming {
    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        let first = !self.looked;
        self.looked = true;
        if let Some(waiting) = self.waiting.as_ref().filter(|_| first) {
            match net::acceptfrom_with(waiting, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
                Ok((fd, Some(from))) => {
                    let stream = TcpStream::from_std(std::net::TcpStream::from(fd))?;
                    let from = SocketAddr::try_from(from).map_err(|_| {
                        io::Error::new(io::ErrorKind::InvalidData, "not an IP peer")
                    })?;
                    return Ok((stream, from));
                }
                Ok((fd, None)) => {
                    let stream = std::net::TcpStream::from(fd);
                    let from = stream.peer_addr()?;
                    return Ok((TcpStream::from_std(stream)?, from));
                }
                Err(Errno::AGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(waiting) = self.waiting.take() {
            self.polled = Some(TcpListener::from_std(waiting)?);
        }
        match &self.polled {
            Some(listener) => listener.accept().await,
            None => Err(io::Error::other("passive listener gone")),
        }
    }
}

/// A data connection from a trusted proxy, with what its header said.
type HeaderRead = (
    TcpStream,
    std::net::SocketAddr,
    Result<Proxied, dropgate_core::proxy::ProxyError>,
);

/// Data connections from a trusted proxy whose header may be outstanding at
/// once per passive port; more are closed unread.
const MAX_PENDING_DATA_HEADERS: usize = 16;

/// Accept errors that concern one connection or a momentary shortage.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || e.raw_os_error().is_some_and(|c| {
        c == rustix::io::Errno::MFILE.raw_os_error()
            || c == rustix::io::Errno::NFILE.raw_os_error()
            || c == rustix::io::Errno::NOBUFS.raw_os_error()
            || c == rustix::io::Errno::NOMEM.raw_os_error()
    })
}

/// How long a resolved `passive_address` name is reused.
const NAME_CACHE: Duration = Duration::from_secs(60);

/// The address PASV replies announce.
pub(crate) enum AdvertisedAddress {
    /// The control connection's local address.
    ControlLocal,
    /// A fixed IPv4 address (`passive_address = "203.0.113.7"`).
    Fixed(Ipv4Addr),
    /// A DNS name, resolved to IPv4 and cached briefly (dynamic addresses).
    Name {
        host: String,
        cached: Mutex<Option<(Instant, Ipv4Addr)>>,
    },
}

impl AdvertisedAddress {
    /// From the configuration (`None` or empty: the control connection's address).
    pub(crate) fn new(config: Option<&str>) -> AdvertisedAddress {
        match config.map(str::trim).filter(|s| !s.is_empty()) {
            None => AdvertisedAddress::ControlLocal,
            Some(s) => match s.parse::<Ipv4Addr>() {
                Ok(ip) => AdvertisedAddress::Fixed(ip),
                Err(_) => AdvertisedAddress::Name {
                    host: s.to_owned(),
                    cached: Mutex::new(None),
                },
            },
        }
    }

    /// The IPv4 address to put in a PASV reply on a connection whose local
    /// address is `local`; `None` if there is none (IPv6 without a
    /// configured address, or a name that does not resolve).
    pub(crate) async fn resolve(&self, local: IpAddr) -> Option<Ipv4Addr> {
        match self {
            AdvertisedAddress::ControlLocal => match local.to_canonical() {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            },
            AdvertisedAddress::Fixed(ip) => Some(*ip),
            AdvertisedAddress::Name { host, cached } => {
                if let Some((at, ip)) = *cached.lock().unwrap_or_else(|p| p.into_inner())
                    && at.elapsed() < NAME_CACHE
                {
                    return Some(ip);
                }
                let found = tokio::net::lookup_host((host.as_str(), 0))
                    .await
                    .ok()?
                    .find_map(|a| match a.ip() {
                        IpAddr::V4(v4) => Some(v4),
                        IpAddr::V6(_) => None,
                    });
                match found {
                    Some(ip) => {
                        *cached.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some((Instant::now(), ip));
                        Some(ip)
                    }
                    None => {
                        tracing::warn!(%host, "passive_address does not resolve to an IPv4 address");
                        None
                    }
                }
            }
        }
    }
}

/// Whether two addresses are the same host (IPv4-mapped IPv6 equals IPv4).
pub(crate) fn same_host(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::net::TcpSocket;

    /// A holder no other call returns (its own address and account).
    fn anyone() -> Holder {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Holder {
            source: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)),
            account: format!("user{n}"),
        }
    }

    #[test]
    fn one_source_or_account_holds_at_most_a_quarter_of_the_range() {
        assert_eq!(PassivePortPool::new(1..=2).holder_share(), 2);
        assert_eq!(PassivePortPool::new(1..=10).holder_share(), 4);
        let pool = PassivePortPool::new(8000..=8039);
        assert_eq!(pool.holder_share(), 10);
        let hoarder = Holder {
            source: "192.0.2.1".parse().unwrap(),
            account: "hoarder".into(),
        };
        let held: Vec<PortLease> = (0..10).map(|_| pool.lease(&hoarder).unwrap()).collect();
        assert_eq!(pool.lease(&hoarder).err(), Some(NoPort::HolderFull));
        // The same account from elsewhere, or the same address (IPv4-mapped
        // too) under another account, is still one holder too many.
        let moved = Holder {
            source: "192.0.2.2".parse().unwrap(),
            ..hoarder.clone()
        };
        assert_eq!(pool.lease(&moved).err(), Some(NoPort::HolderFull));
        let mapped = Holder {
            source: "::ffff:192.0.2.1".parse().unwrap(),
            account: "other".into(),
        };
        assert_eq!(pool.lease(&mapped).err(), Some(NoPort::HolderFull));
        // One IPv6 host owns a whole /64: its other addresses are the same source.
        let v6 = |ip: &str, account: &str| Holder {
            source: ip.parse().unwrap(),
            account: account.into(),
        };
        let six: Vec<PortLease> = (0..10)
            .map(|i| pool.lease(&v6(&format!("2001:db8::{i}"), &format!("v6-{i}"))))
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            pool.lease(&v6("2001:db8::ff", "v6-x")).err(),
            Some(NoPort::HolderFull)
        );
        drop(six);
        // Everyone else is served.
        let others: Vec<PortLease> = (0..30).map(|_| pool.lease(&anyone()).unwrap()).collect();
        assert_eq!(pool.leased(), 40);
        drop(held);
        assert!(pool.lease(&hoarder).is_ok(), "given back with the ports");
        drop(others);
    }

    #[test]
    fn leases_round_robin_and_release_on_drop() {
        let pool = PassivePortPool::new(5000..=5002);
        assert_eq!(pool.capacity(), 3);
        let a = pool.lease(&anyone()).unwrap();
        let b = pool.lease(&anyone()).unwrap();
        let c = pool.lease(&anyone()).unwrap();
        assert_eq!((a.port(), b.port(), c.port()), (5000, 5001, 5002));
        assert!(pool.lease(&anyone()).is_err());
        assert_eq!(pool.leased(), 3);
        drop(b);
        assert_eq!(pool.leased(), 2);
        let d = pool.lease(&anyone()).unwrap();
        assert_eq!(d.port(), 5001);
        drop((a, c, d));
        assert_eq!(pool.leased(), 0);
        // Round robin: the search continues after the last port handed out.
        assert_eq!(pool.lease(&anyone()).unwrap().port(), 5002);
    }

    #[test]
    fn empty_and_zero_ranges() {
        #[allow(clippy::reversed_empty_ranges)]
        let pool = PassivePortPool::new(6000..=5999);
        assert_eq!(pool.capacity(), 0);
        assert!(pool.lease(&anyone()).is_err());
        let pool = PassivePortPool::new(0..=1);
        let only = pool.lease(&anyone()).unwrap();
        assert_eq!(only.port(), 1);
        assert!(pool.lease(&anyone()).is_err());
    }

    #[test]
    fn churn_does_not_leak() {
        let pool = PassivePortPool::new(7000..=7009);
        let pools: Vec<_> = (0..8).map(|_| pool.clone()).collect();
        std::thread::scope(|s| {
            for p in &pools {
                s.spawn(move || {
                    for _ in 0..10_000 {
                        if let Ok(l) = p.lease(&anyone()) {
                            assert!((7000..=7009).contains(&l.port()));
                        }
                    }
                });
            }
        });
        assert_eq!(pool.leased(), 0);
    }

    #[test]
    fn mapped_addresses_are_the_same_host() {
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(same_host(v4, mapped));
        assert!(!same_host(v4, other));
    }

    #[tokio::test]
    async fn foreign_connections_are_closed_and_the_wait_goes_on() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let pool = PassivePortPool::new(45000..=45999);
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        let (listener, lease) = pool.bind(client, &anyone()).unwrap();
        let addr = SocketAddr::new(client, lease.port());
        let pending = PendingPassive::new(listener, lease, client, Duration::from_secs(10));
        let foreign = TcpSocket::new_v4().unwrap();
        foreign.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut foreign = foreign.connect(addr).await.unwrap();
        let mut real = TcpStream::connect(addr).await.unwrap();
        let mut accepted = pending.accept().await.unwrap();
        assert_eq!(pool.leased(), 0, "released on use");
        let mut buf = [0u8; 8];
        assert_eq!(foreign.read(&mut buf).await.unwrap_or(0), 0);
        real.write_all(b"hi").await.unwrap();
        accepted.read_exact(&mut buf[..2]).await.unwrap();
        assert_eq!(&buf[..2], b"hi");
    }

    #[tokio::test]
    async fn a_connection_made_early_or_late_is_accepted() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let pool = PassivePortPool::new(46000..=46999);
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        for early in [true, false] {
            let (listener, lease) = pool.bind(client, &anyone()).unwrap();
            let addr = SocketAddr::new(client, lease.port());
            let pending = PendingPassive::new(listener, lease, client, Duration::from_secs(10));
            // Early: waiting in the backlog before the accept (taken without
            // the reactor). Late: it arrives while the accept waits.
            let (mut accepted, mut real) = if early {
                let real = TcpStream::connect(addr).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
                (pending.accept().await.unwrap(), real)
            } else {
                let late = tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    TcpStream::connect(addr).await.unwrap()
                });
                let accepted = pending.accept().await.unwrap();
                (accepted, late.await.unwrap())
            };
            real.write_all(b"hi").await.unwrap();
            let mut buf = [0u8; 2];
            accepted.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"hi", "early: {early}");
            assert_eq!(pool.leased(), 0, "released on use");
        }
    }

    #[tokio::test]
    async fn advertised_addresses() {
        let local: IpAddr = "10.1.2.3".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(
            AdvertisedAddress::new(None).resolve(local).await,
            Some(Ipv4Addr::new(10, 1, 2, 3))
        );
        assert_eq!(
            AdvertisedAddress::new(Some("")).resolve(mapped).await,
            Some(Ipv4Addr::new(10, 1, 2, 3))
        );
        assert_eq!(AdvertisedAddress::new(None).resolve(v6).await, None);
        assert_eq!(
            AdvertisedAddress::new(Some("203.0.113.7"))
                .resolve(v6)
                .await,
            Some(Ipv4Addr::new(203, 0, 113, 7))
        );
        assert_eq!(
            AdvertisedAddress::new(Some("localhost"))
                .resolve(local)
                .await,
            Some(Ipv4Addr::LOCALHOST)
        );
    }

    #[tokio::test]
    async fn skips_ports_in_use_and_frees_on_timeout() {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = busy.local_addr().unwrap().port();
        let Some(next) = port.checked_add(1) else {
            return;
        };
        let pool = PassivePortPool::new(port..=next);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        match pool.bind(ip, &anyone()) {
            Ok((listener, lease)) => {
                assert_eq!(lease.port(), next);
                let pending = PendingPassive::new(listener, lease, ip, Duration::from_millis(50));
                assert_eq!(pool.leased(), 1);
                let err = pending.accept().await.unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::TimedOut);
                assert_eq!(pool.leased(), 0);
            }
            // The neighbouring port happened to be taken too.
            Err(e) => assert!(matches!(e, BindError::Exhausted), "{e}"),
        }
    }
}
