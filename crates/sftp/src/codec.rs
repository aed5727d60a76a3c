//! SFTP version 3 wire format, as OpenSSH's `sftp-server` speaks it: framing,
//! request decoding and reply encoding. Pure functions, no I/O.
//!
//! Why our own codec rather than `russh-sftp`'s: that crate decodes strings
//! lossily (a non-UTF-8 name silently becomes U+FFFD, so the server would act
//! on a different path than the client named), drops `ATTR_EXTENDED` pairs,
//! accepts trailing garbage, has no length bound outside its private reader,
//! and its server loop handles one request at a time. Here every string stays
//! raw bytes until the dispatcher decides, every packet must be consumed
//! exactly, and the frame length is bounded before anything is buffered.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest accepted packet (the length field, excluding itself), as OpenSSH's
/// `SFTP_MAX_MSG_LENGTH`.
pub(crate) const MAX_PACKET_LEN: u32 = 256 * 1024;
/// Extended attribute pairs a decoded request keeps (the rest are skipped).
const MAX_KEPT_EXTENDED_ATTRS: usize = 16;
/// Largest read we serve and write we advertise (`SFTP_MAX_MSG_LENGTH - 1024`),
/// so a full DATA reply or WRITE request always fits in one packet.
pub(crate) const MAX_IO_LEN: u32 = MAX_PACKET_LEN - 1024;

/// The protocol version we speak.
pub(crate) const SFTP_VERSION: u32 = 3;

/// Packet types (draft-ietf-secsh-filexfer-02).
pub(crate) mod packet {
    pub(crate) const INIT: u8 = 1;
    pub(crate) const VERSION: u8 = 2;
    pub(crate) const OPEN: u8 = 3;
    pub(crate) const CLOSE: u8 = 4;
    pub(crate) const READ: u8 = 5;
    pub(crate) const WRITE: u8 = 6;
    pub(crate) const LSTAT: u8 = 7;
    pub(crate) const FSTAT: u8 = 8;
    pub(crate) const SETSTAT: u8 = 9;
    pub(crate) const FSETSTAT: u8 = 10;
    pub(crate) const OPENDIR: u8 = 11;
    pub(crate) const READDIR: u8 = 12;
    pub(crate) const REMOVE: u8 = 13;
    pub(crate) const MKDIR: u8 = 14;
    pub(crate) const RMDIR: u8 = 15;
    pub(crate) const REALPATH: u8 = 16;
    pub(crate) const STAT: u8 = 17;
    pub(crate) const RENAME: u8 = 18;
    pub(crate) const READLINK: u8 = 19;
    pub(crate) const SYMLINK: u8 = 20;
    pub(crate) const STATUS: u8 = 101;
    pub(crate) const HANDLE: u8 = 102;
    pub(crate) const DATA: u8 = 103;
    pub(crate) const NAME: u8 = 104;
    pub(crate) const ATTRS: u8 = 105;
    pub(crate) const EXTENDED: u8 = 200;
    pub(crate) const EXTENDED_REPLY: u8 = 201;
}

/// `SSH_FXF_*` open flags.
pub(crate) mod open_flags {
    pub(crate) const READ: u32 = 0x01;
    pub(crate) const WRITE: u32 = 0x02;
    pub(crate) const APPEND: u32 = 0x04;
    pub(crate) const CREAT: u32 = 0x08;
    pub(crate) const TRUNC: u32 = 0x10;
    pub(crate) const EXCL: u32 = 0x20;
}

/// `SSH_FILEXFER_ATTR_*` flags.
mod attr_flags {
    pub(super) const SIZE: u32 = 0x01;
    pub(super) const UIDGID: u32 = 0x02;
    pub(super) const PERMISSIONS: u32 = 0x04;
    pub(super) const ACMODTIME: u32 = 0x08;
    pub(super) const EXTENDED: u32 = 0x8000_0000;
}

/// Extension names we implement (advertised in VERSION with their version).
pub(crate) mod ext {
    pub(crate) const POSIX_RENAME: &str = "posix-rename@openssh.com";
    pub(crate) const STATVFS: &str = "statvfs@openssh.com";
    pub(crate) const FSTATVFS: &str = "fstatvfs@openssh.com";
    pub(crate) const HARDLINK: &str = "hardlink@openssh.com";
    pub(crate) const FSYNC: &str = "fsync@openssh.com";
    pub(crate) const LIMITS: &str = "limits@openssh.com";
    pub(crate) const EXPAND_PATH: &str = "expand-path@openssh.com";

    /// What VERSION advertises (name, version string), OpenSSH's numbering.
    pub(crate) const ADVERTISED: &[(&str, &str)] = &[
        (POSIX_RENAME, "1"),
        (STATVFS, "2"),
        (FSTATVFS, "2"),
        (HARDLINK, "1"),
        (FSYNC, "1"),
        (LIMITS, "1"),
        (EXPAND_PATH, "1"),
    ];
}

/// `SSH_FX_*` status codes of version 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum StatusCode {
    Ok = 0,
    Eof = 1,
    NoSuchFile = 2,
    PermissionDenied = 3,
    Failure = 4,
    BadMessage = 5,
    OpUnsupported = 8,
}

/// File attributes (`ATTRS`), every field optional as on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Attrs {
    pub(crate) size: Option<u64>,
    pub(crate) uid_gid: Option<(u32, u32)>,
    pub(crate) permissions: Option<u32>,
    /// (atime, mtime) in seconds since the epoch.
    pub(crate) times: Option<(u32, u32)>,
    /// `ATTR_EXTENDED` (type, data) pairs, raw.
    pub(crate) extended: Vec<(Bytes, Bytes)>,
}

/// An extended request (`SSH_FXP_EXTENDED`) we understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExtendedRequest {
    PosixRename {
        from: Bytes,
        to: Bytes,
    },
    Statvfs {
        path: Bytes,
    },
    Fstatvfs {
        handle: Bytes,
    },
    Hardlink {
        from: Bytes,
        to: Bytes,
    },
    Fsync {
        handle: Bytes,
    },
    Limits,
    ExpandPath {
        path: Bytes,
    },
    /// Any other name: answered with OP_UNSUPPORTED.
    Unknown {
        name: Bytes,
    },
}

/// A decoded client request. Strings are raw bytes (paths, handles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    Init {
        version: u32,
    },
    Open {
        id: u32,
        path: Bytes,
        pflags: u32,
        attrs: Attrs,
    },
    Close {
        id: u32,
        handle: Bytes,
    },
    Read {
        id: u32,
        handle: Bytes,
        offset: u64,
        len: u32,
    },
    Write {
        id: u32,
        handle: Bytes,
        offset: u64,
        data: Bytes,
    },
    Lstat {
        id: u32,
        path: Bytes,
    },
    Fstat {
        id: u32,
        handle: Bytes,
    },
    Setstat {
        id: u32,
        path: Bytes,
        attrs: Attrs,
    },
    Fsetstat {
        id: u32,
        handle: Bytes,
        attrs: Attrs,
    },
    Opendir {
        id: u32,
        path: Bytes,
    },
    Readdir {
        id: u32,
        handle: Bytes,
    },
    Remove {
        id: u32,
        path: Bytes,
    },
    Mkdir {
        id: u32,
        path: Bytes,
        attrs: Attrs,
    },
    Rmdir {
        id: u32,
        path: Bytes,
    },
    Realpath {
        id: u32,
        path: Bytes,
    },
    Stat {
        id: u32,
        path: Bytes,
    },
    Rename {
        id: u32,
        from: Bytes,
        to: Bytes,
    },
    Readlink {
        id: u32,
        path: Bytes,
    },
    /// OpenSSH sends the arguments in the reverse of the draft's order:
    /// the link's target first, then the path of the link to create.
    Symlink {
        id: u32,
        target: Bytes,
        link: Bytes,
    },
    Extended {
        id: u32,
        request: ExtendedRequest,
    },
}

impl Request {
    /// The request id (INIT has none).
    pub(crate) fn id(&self) -> Option<u32> {
        use Request::*;
        match self {
            Init { .. } => None,
            Open { id, .. }
            | Close { id, .. }
            | Read { id, .. }
            | Write { id, .. }
            | Lstat { id, .. }
            | Fstat { id, .. }
            | Setstat { id, .. }
            | Fsetstat { id, .. }
            | Opendir { id, .. }
            | Readdir { id, .. }
            | Remove { id, .. }
            | Mkdir { id, .. }
            | Rmdir { id, .. }
            | Realpath { id, .. }
            | Stat { id, .. }
            | Rename { id, .. }
            | Readlink { id, .. }
            | Symlink { id, .. }
            | Extended { id, .. } => Some(*id),
        }
    }
}

/// The stream of packets is broken: the session cannot continue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// A length field of zero or above [`MAX_PACKET_LEN`].
    #[error("SFTP packet length {0} out of bounds")]
    BadLength(u32),
}

/// Why one packet could not be decoded (the framing is intact).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// Truncated fields or trailing bytes: answer BAD_MESSAGE when `id` is known.
    #[error("malformed SFTP packet (type {kind})")]
    Malformed { kind: u8, id: Option<u32> },
    /// A packet type a client may not send: answer OP_UNSUPPORTED.
    #[error("unsupported SFTP packet type {kind}")]
    Unsupported { kind: u8, id: Option<u32> },
}

impl DecodeError {
    /// The request id, when the packet got that far.
    pub(crate) fn id(&self) -> Option<u32> {
        match self {
            DecodeError::Malformed { id, .. } | DecodeError::Unsupported { id, .. } => *id,
        }
    }
}

/// Splits the channel's byte stream into packets, refusing oversized ones
/// before buffering them (so a 4 GiB length field costs 4 bytes).
#[derive(Debug, Default)]
pub(crate) struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    /// Appends bytes received from the channel.
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet returned as packets.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole packet (type byte onward), `None` if more bytes are
    /// needed. Never holds more than one partial packet plus one push.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        let Some(head) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        if len == 0 || len > MAX_PACKET_LEN {
            return Err(FrameError::BadLength(len));
        }
        let total = 4 + len as usize;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let mut frame = self.buf.split_to(total);
        frame.advance(4);
        Ok(Some(frame.freeze()))
    }
}

/// A cursor over one packet; every getter fails on truncation.
struct Fields {
    buf: Bytes,
}

#[derive(Debug)]
struct Short;

impl Fields {
    fn u8(&mut self) -> Result<u8, Short> {
        if self.buf.remaining() < 1 {
            return Err(Short);
        }
        Ok(self.buf.get_u8())
    }
    fn u32(&mut self) -> Result<u32, Short> {
        if self.buf.remaining() < 4 {
            return Err(Short);
        }
        Ok(self.buf.get_u32())
    }
    fn u64(&mut self) -> Result<u64, Short> {
        if self.buf.remaining() < 8 {
            return Err(Short);
        }
        Ok(self.buf.get_u64())
    }
    fn string(&mut self) -> Result<Bytes, Short> {
        let len = self.u32()? as usize;
        if self.buf.remaining() < len {
            return Err(Short);
        }
        Ok(self.buf.split_to(len))
    }
    fn attrs(&mut self) -> Result<Attrs, Short> {
        let flags = self.u32()?;
        let mut a = Attrs::default();
        if flags & attr_flags::SIZE != 0 {
            a.size = Some(self.u64()?);
        }
        if flags & attr_flags::UIDGID != 0 {
            a.uid_gid = Some((self.u32()?, self.u32()?));
        }
        if flags & attr_flags::PERMISSIONS != 0 {
            a.permissions = Some(self.u32()?);
        }
        if flags & attr_flags::ACMODTIME != 0 {
            a.times = Some((self.u32()?, self.u32()?));
        }
        if flags & attr_flags::EXTENDED != 0 {
            let count = self.u32()?;
            for _ in 0..count {
                // Each pair needs at least 8 bytes: a count cannot make us loop
                // past what the packet holds. Only the first few are kept:
                // nothing acts on them, and a pair costs 8 bytes on the wire
                // but 64 in memory, so keeping 32,000 empty ones would make a
                // request outgrow the bytes charged for it.
                let pair = (self.string()?, self.string()?);
                if a.extended.len() < MAX_KEPT_EXTENDED_ATTRS {
                    a.extended.push(pair);
                }
            }
        }
        Ok(a)
    }
    fn is_empty(&self) -> bool {
        !self.buf.has_remaining()
    }
}

/// Decodes one packet (as returned by [`FrameDecoder::next_frame`]).
pub(crate) fn decode_request(frame: Bytes) -> Result<Request, DecodeError> {
    let mut f = Fields { buf: frame };
    let kind = f
        .u8()
        .map_err(|_| DecodeError::Malformed { kind: 0, id: None })?;
    if kind == packet::INIT {
        let version = f
            .u32()
            .map_err(|_| DecodeError::Malformed { kind, id: None })?;
        // Clients may append extension pairs; v3 clients (OpenSSH) send none.
        // They carry nothing we act on, but they must be well-formed.
        while !f.is_empty() {
            f.string()
                .and_then(|_| f.string())
                .map_err(|_| DecodeError::Malformed { kind, id: None })?;
        }
        return Ok(Request::Init { version });
    }
    let id = f
        .u32()
        .map_err(|_| DecodeError::Malformed { kind, id: None })?;
    let malformed = |_: Short| DecodeError::Malformed { kind, id: Some(id) };
    let req = decode_body(kind, id, &mut f).map_err(malformed)?;
    let Some(req) = req else {
        return Err(DecodeError::Unsupported { kind, id: Some(id) });
    };
    // The single exception to the strict end check: pkg/sftp (the Go library
    // under rclone, restic and others; at least up to the version Debian 12
    // ships) sends WRITE packets framed with its whole buffer after a shorter
    // data length. OpenSSH's server ignores such tails; so do we, for WRITE
    // only, where the data length field is authoritative.
    if !f.is_empty() && kind != packet::WRITE {
        return Err(DecodeError::Malformed { kind, id: Some(id) });
    }
    Ok(req)
}

fn decode_body(kind: u8, id: u32, f: &mut Fields) -> Result<Option<Request>, Short> {
    use packet as p;
    Ok(Some(match kind {
        p::OPEN => Request::Open {
            id,
            path: f.string()?,
            pflags: f.u32()?,
            attrs: f.attrs()?,
        },
        p::CLOSE => Request::Close {
            id,
            handle: f.string()?,
        },
        p::READ => Request::Read {
            id,
            handle: f.string()?,
            offset: f.u64()?,
            len: f.u32()?,
        },
        p::WRITE => Request::Write {
            id,
            handle: f.string()?,
            offset: f.u64()?,
            data: f.string()?,
        },
        p::LSTAT => Request::Lstat {
            id,
            path: f.string()?,
        },
        p::FSTAT => Request::Fstat {
            id,
            handle: f.string()?,
        },
        p::SETSTAT => Request::Setstat {
            id,
            path: f.string()?,
            attrs: f.attrs()?,
        },
        p::FSETSTAT => Request::Fsetstat {
            id,
            handle: f.string()?,
            attrs: f.attrs()?,
        },
        p::OPENDIR => Request::Opendir {
            id,
            path: f.string()?,
        },
        p::READDIR => Request::Readdir {
            id,
            handle: f.string()?,
        },
        p::REMOVE => Request::Remove {
            id,
            path: f.string()?,
        },
        p::MKDIR => Request::Mkdir {
            id,
            path: f.string()?,
            attrs: f.attrs()?,
        },
        p::RMDIR => Request::Rmdir {
            id,
            path: f.string()?,
        },
        p::REALPATH => Request::Realpath {
            id,
            path: f.string()?,
        },
        p::STAT => Request::Stat {
            id,
            path: f.string()?,
        },
        p::RENAME => Request::Rename {
            id,
            from: f.string()?,
            to: f.string()?,
        },
        p::READLINK => Request::Readlink {
            id,
            path: f.string()?,
        },
        p::SYMLINK => Request::Symlink {
            id,
            target: f.string()?,
            link: f.string()?,
        },
        p::EXTENDED => {
            let name = f.string()?;
            let request = match &name[..] {
                n if n == ext::POSIX_RENAME.as_bytes() => ExtendedRequest::PosixRename {
                    from: f.string()?,
                    to: f.string()?,
                },
                n if n == ext::STATVFS.as_bytes() => ExtendedRequest::Statvfs { path: f.string()? },
                n if n == ext::FSTATVFS.as_bytes() => ExtendedRequest::Fstatvfs {
                    handle: f.string()?,
                },
                n if n == ext::HARDLINK.as_bytes() => ExtendedRequest::Hardlink {
                    from: f.string()?,
                    to: f.string()?,
                },
                n if n == ext::FSYNC.as_bytes() => ExtendedRequest::Fsync {
                    handle: f.string()?,
                },
                n if n == ext::LIMITS.as_bytes() => ExtendedRequest::Limits,
                n if n == ext::EXPAND_PATH.as_bytes() => {
                    ExtendedRequest::ExpandPath { path: f.string()? }
                }
                _ => {
                    // Unknown extensions carry data we cannot check: consume it.
                    f.buf.advance(f.buf.remaining());
                    ExtendedRequest::Unknown { name }
                }
            };
            Request::Extended { id, request }
        }
        _ => return Ok(None),
    }))
}

/// Builds one reply packet: reserves the length field and fills it in `finish`.
pub(crate) struct ReplyBuilder {
    buf: BytesMut,
}

impl ReplyBuilder {
    pub(crate) fn new(kind: u8, capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(capacity + 5);
        buf.put_u32(0);
        buf.put_u8(kind);
        ReplyBuilder { buf }
    }
    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.put_u32(v);
        self
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.put_u64(v);
        self
    }
    pub(crate) fn string(&mut self, s: &[u8]) -> &mut Self {
        self.buf.put_u32(s.len() as u32);
        self.buf.put_slice(s);
        self
    }
    pub(crate) fn attrs(&mut self, a: &Attrs) -> &mut Self {
        let mut flags = 0;
        if a.size.is_some() {
            flags |= attr_flags::SIZE;
        }
        if a.uid_gid.is_some() {
            flags |= attr_flags::UIDGID;
        }
        if a.permissions.is_some() {
            flags |= attr_flags::PERMISSIONS;
        }
        if a.times.is_some() {
            flags |= attr_flags::ACMODTIME;
        }
        if !a.extended.is_empty() {
            flags |= attr_flags::EXTENDED;
        }
        self.u32(flags);
        if let Some(s) = a.size {
            self.u64(s);
        }
        if let Some((u, g)) = a.uid_gid {
            self.u32(u).u32(g);
        }
        if let Some(p) = a.permissions {
            self.u32(p);
        }
        if let Some((at, mt)) = a.times {
            self.u32(at).u32(mt);
        }
        if !a.extended.is_empty() {
            self.u32(a.extended.len() as u32);
            for (k, v) in &a.extended {
                self.string(k).string(v);
            }
        }
        self
    }
    pub(crate) fn finish(mut self) -> Bytes {
        let len = (self.buf.len() - 4) as u32;
        self.buf[..4].copy_from_slice(&len.to_be_bytes());
        self.buf.freeze()
    }
}

/// `SSH_FXP_VERSION` with our extensions (`hardlink@openssh.com` only
/// where the storage has links).
pub(crate) fn encode_version(hard_links: bool) -> Bytes {
    let mut b = ReplyBuilder::new(packet::VERSION, 256);
    b.u32(SFTP_VERSION);
    for (name, version) in ext::ADVERTISED {
        if *name == ext::HARDLINK && !hard_links {
            continue;
        }
        b.string(name.as_bytes()).string(version.as_bytes());
    }
    b.finish()
}

/// `SSH_FXP_STATUS` (language tag empty, as OpenSSH sends it).
pub(crate) fn encode_status(id: u32, code: StatusCode, message: &str) -> Bytes {
    let mut b = ReplyBuilder::new(packet::STATUS, 16 + message.len());
    b.u32(id)
        .u32(code as u32)
        .string(message.as_bytes())
        .string(b"");
    b.finish()
}

/// `SSH_FXP_HANDLE`.
pub(crate) fn encode_handle(id: u32, handle: &[u8]) -> Bytes {
    let mut b = ReplyBuilder::new(packet::HANDLE, 8 + handle.len());
    b.u32(id).string(handle);
    b.finish()
}

/// `SSH_FXP_DATA`: the header and the payload as one buffer.
pub(crate) fn encode_data(id: u32, data: &[u8]) -> Bytes {
    let mut b = ReplyBuilder::new(packet::DATA, 8 + data.len());
    b.u32(id).string(data);
    b.finish()
}

/// `SSH_FXP_ATTRS`.
pub(crate) fn encode_attrs(id: u32, attrs: &Attrs) -> Bytes {
    let mut b = ReplyBuilder::new(packet::ATTRS, 64);
    b.u32(id).attrs(attrs);
    b.finish()
}

/// One entry of an `SSH_FXP_NAME` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NameEntry {
    pub(crate) filename: String,
    pub(crate) longname: String,
    pub(crate) attrs: Attrs,
}

/// Size of an entry on the wire (to keep NAME replies under the packet limit).
pub(crate) fn name_entry_len(e: &NameEntry) -> usize {
    4 + e.filename.len() + 4 + e.longname.len() + 4 + 8 + 8 + 4 + 8 + 64
}

/// `SSH_FXP_NAME`.
pub(crate) fn encode_name(id: u32, entries: &[NameEntry]) -> Bytes {
    let cap = entries.iter().map(name_entry_len).sum::<usize>() + 8;
    let mut b = ReplyBuilder::new(packet::NAME, cap);
    b.u32(id).u32(entries.len() as u32);
    for e in entries {
        b.string(e.filename.as_bytes())
            .string(e.longname.as_bytes())
            .attrs(&e.attrs);
    }
    b.finish()
}

/// `SSH_FXP_EXTENDED_REPLY` carrying u64 fields (statvfs, limits).
pub(crate) fn encode_extended_u64s(id: u32, values: &[u64]) -> Bytes {
    let mut b = ReplyBuilder::new(packet::EXTENDED_REPLY, 4 + 8 * values.len());
    b.u32(id);
    for v in values {
        b.u64(*v);
    }
    b.finish()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Builds a request packet the way a client would.
    fn pkt(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
        v.push(kind);
        v.extend_from_slice(body);
        v
    }
    fn s(x: &[u8]) -> Vec<u8> {
        let mut v = (x.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(x);
        v
    }
    fn u32b(x: u32) -> Vec<u8> {
        x.to_be_bytes().to_vec()
    }
    fn u64b(x: u64) -> Vec<u8> {
        x.to_be_bytes().to_vec()
    }
    fn decode(bytes: &[u8]) -> Result<Request, DecodeError> {
        let mut d = FrameDecoder::default();
        d.push(bytes);
        let frame = d.next_frame().unwrap().unwrap();
        assert_eq!(d.buffered(), 0, "one packet exactly");
        decode_request(frame)
    }
    fn b(x: &[u8]) -> Bytes {
        Bytes::copy_from_slice(x)
    }

    #[test]
    fn framing_waits_for_whole_packets_across_pushes() {
        let p = pkt(packet::CLOSE, &[&u32b(7)[..], &s(b"h1")].concat());
        let mut d = FrameDecoder::default();
        for byte in &p[..p.len() - 1] {
            d.push(&[*byte]);
            assert_eq!(d.next_frame().unwrap(), None);
        }
        d.push(&p[p.len() - 1..]);
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(
            decode_request(f).unwrap(),
            Request::Close {
                id: 7,
                handle: b(b"h1")
            }
        );
        assert_eq!(d.next_frame().unwrap(), None);
    }

    #[test]
    fn framing_splits_several_packets_in_one_push() {
        let mut all = pkt(packet::STAT, &[&u32b(1)[..], &s(b"/a")].concat());
        all.extend(pkt(packet::LSTAT, &[&u32b(2)[..], &s(b"/b")].concat()));
        let mut d = FrameDecoder::default();
        d.push(&all);
        let a = decode_request(d.next_frame().unwrap().unwrap()).unwrap();
        let c = decode_request(d.next_frame().unwrap().unwrap()).unwrap();
        assert_eq!(
            a,
            Request::Stat {
                id: 1,
                path: b(b"/a")
            }
        );
        assert_eq!(
            c,
            Request::Lstat {
                id: 2,
                path: b(b"/b")
            }
        );
        assert_eq!(d.next_frame().unwrap(), None);
    }

    #[test]
    fn framing_refuses_bad_lengths_before_buffering() {
        let mut d = FrameDecoder::default();
        d.push(&[0xff, 0xff, 0xff, 0xff, 1]);
        assert_eq!(d.next_frame(), Err(FrameError::BadLength(u32::MAX)));
        let mut d = FrameDecoder::default();
        d.push(&(MAX_PACKET_LEN + 1).to_be_bytes());
        assert_eq!(
            d.next_frame(),
            Err(FrameError::BadLength(MAX_PACKET_LEN + 1))
        );
        let mut d = FrameDecoder::default();
        d.push(&[0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::BadLength(0)));
        // The maximum itself is fine (and is only waited for, not allocated up front beyond it).
        let mut d = FrameDecoder::default();
        d.push(&MAX_PACKET_LEN.to_be_bytes());
        assert_eq!(d.next_frame(), Ok(None));
    }

    #[test]
    fn decodes_init_with_and_without_extensions() {
        assert_eq!(
            decode(&pkt(packet::INIT, &u32b(3))).unwrap(),
            Request::Init { version: 3 }
        );
        let with_ext = [&u32b(6)[..], &s(b"x@y"), &s(b"1")].concat();
        assert_eq!(
            decode(&pkt(packet::INIT, &with_ext)).unwrap(),
            Request::Init { version: 6 }
        );
        let broken = [&u32b(3)[..], &s(b"x@y")].concat();
        assert!(matches!(
            decode(&pkt(packet::INIT, &broken)),
            Err(DecodeError::Malformed { id: None, .. })
        ));
    }

    #[test]
    fn decodes_open_with_full_attrs() {
        let attrs = [
            &u32b(0x8000_000f)[..],
            &u64b(1234),
            &u32b(1000),
            &u32b(1001),
            &u32b(0o100644),
            &u32b(11),
            &u32b(22),
            &u32b(1),
            &s(b"k"),
            &s(b"\xffv"),
        ]
        .concat();
        let body = [&u32b(9)[..], &s(b"/in/a.txt"), &u32b(0x1a), &attrs].concat();
        let r = decode(&pkt(packet::OPEN, &body)).unwrap();
        assert_eq!(
            r,
            Request::Open {
                id: 9,
                path: b(b"/in/a.txt"),
                pflags: 0x1a,
                attrs: Attrs {
                    size: Some(1234),
                    uid_gid: Some((1000, 1001)),
                    permissions: Some(0o100644),
                    times: Some((11, 22)),
                    extended: vec![(b(b"k"), b(b"\xffv"))],
                },
            }
        );
    }

    #[test]
    fn decodes_every_request_type() {
        let id = u32b(42);
        let h = s(b"\x00\x00\x00\x01");
        let no_attrs = u32b(0);
        let cases: Vec<(u8, Vec<u8>, Request)> = vec![
            (
                packet::CLOSE,
                [&id[..], &h].concat(),
                Request::Close {
                    id: 42,
                    handle: b(b"\0\0\0\x01"),
                },
            ),
            (
                packet::READ,
                [&id[..], &h, &u64b(1 << 40), &u32b(32768)].concat(),
                Request::Read {
                    id: 42,
                    handle: b(b"\0\0\0\x01"),
                    offset: 1 << 40,
                    len: 32768,
                },
            ),
            (
                packet::WRITE,
                [&id[..], &h, &u64b(5), &s(b"data")].concat(),
                Request::Write {
                    id: 42,
                    handle: b(b"\0\0\0\x01"),
                    offset: 5,
                    data: b(b"data"),
                },
            ),
            (
                packet::LSTAT,
                [&id[..], &s(b"l")].concat(),
                Request::Lstat {
                    id: 42,
                    path: b(b"l"),
                },
            ),
            (
                packet::FSTAT,
                [&id[..], &h].concat(),
                Request::Fstat {
                    id: 42,
                    handle: b(b"\0\0\0\x01"),
                },
            ),
            (
                packet::SETSTAT,
                [&id[..], &s(b"p"), &u32b(8), &u32b(1), &u32b(2)].concat(),
                Request::Setstat {
                    id: 42,
                    path: b(b"p"),
                    attrs: Attrs {
                        times: Some((1, 2)),
                        ..Attrs::default()
                    },
                },
            ),
            (
                packet::FSETSTAT,
                [&id[..], &h, &u32b(1), &u64b(0)].concat(),
                Request::Fsetstat {
                    id: 42,
                    handle: b(b"\0\0\0\x01"),
                    attrs: Attrs {
                        size: Some(0),
                        ..Attrs::default()
                    },
                },
            ),
            (
                packet::OPENDIR,
                [&id[..], &s(b"/")].concat(),
                Request::Opendir {
                    id: 42,
                    path: b(b"/"),
                },
            ),
            (
                packet::READDIR,
                [&id[..], &h].concat(),
                Request::Readdir {
                    id: 42,
                    handle: b(b"\0\0\0\x01"),
                },
            ),
            (
                packet::REMOVE,
                [&id[..], &s(b"f")].concat(),
                Request::Remove {
                    id: 42,
                    path: b(b"f"),
                },
            ),
            (
                packet::MKDIR,
                [&id[..], &s(b"d"), &no_attrs].concat(),
                Request::Mkdir {
                    id: 42,
                    path: b(b"d"),
                    attrs: Attrs::default(),
                },
            ),
            (
                packet::RMDIR,
                [&id[..], &s(b"d")].concat(),
                Request::Rmdir {
                    id: 42,
                    path: b(b"d"),
                },
            ),
            (
                packet::REALPATH,
                [&id[..], &s(b".")].concat(),
                Request::Realpath {
                    id: 42,
                    path: b(b"."),
                },
            ),
            (
                packet::STAT,
                [&id[..], &s(b"s")].concat(),
                Request::Stat {
                    id: 42,
                    path: b(b"s"),
                },
            ),
            (
                packet::RENAME,
                [&id[..], &s(b"a"), &s(b"b")].concat(),
                Request::Rename {
                    id: 42,
                    from: b(b"a"),
                    to: b(b"b"),
                },
            ),
            (
                packet::READLINK,
                [&id[..], &s(b"l")].concat(),
                Request::Readlink {
                    id: 42,
                    path: b(b"l"),
                },
            ),
            (
                packet::SYMLINK,
                [&id[..], &s(b"target"), &s(b"link")].concat(),
                Request::Symlink {
                    id: 42,
                    target: b(b"target"),
                    link: b(b"link"),
                },
            ),
        ];
        for (kind, body, want) in cases {
            let got = decode(&pkt(kind, &body)).unwrap();
            assert_eq!(got, want, "type {kind}");
            assert_eq!(got.id(), Some(42));
            // Every type refuses one missing byte, and all but WRITE one trailing byte.
            let mut long = body.clone();
            long.push(0);
            if kind == packet::WRITE {
                assert_eq!(
                    decode(&pkt(kind, &long)).unwrap(),
                    want,
                    "WRITE ignores a tail"
                );
            } else {
                assert_eq!(
                    decode(&pkt(kind, &long)),
                    Err(DecodeError::Malformed { kind, id: Some(42) }),
                    "trailing byte, type {kind}"
                );
            }
            let short = &body[..body.len() - 1];
            assert_eq!(
                decode(&pkt(kind, short)),
                Err(DecodeError::Malformed { kind, id: Some(42) }),
                "short, type {kind}"
            );
        }
    }

    #[test]
    fn decodes_extended_requests() {
        let id = u32b(5);
        let ext = |name: &str, rest: &[u8]| {
            pkt(
                packet::EXTENDED,
                &[&id[..], &s(name.as_bytes()), rest].concat(),
            )
        };
        let r = |x: Vec<u8>| decode(&x).unwrap();
        assert_eq!(
            r(ext(ext::POSIX_RENAME, &[&s(b"a")[..], &s(b"b")].concat())),
            Request::Extended {
                id: 5,
                request: ExtendedRequest::PosixRename {
                    from: b(b"a"),
                    to: b(b"b")
                }
            }
        );
        assert_eq!(
            r(ext(ext::STATVFS, &s(b"/"))),
            Request::Extended {
                id: 5,
                request: ExtendedRequest::Statvfs { path: b(b"/") }
            }
        );
        assert_eq!(
            r(ext(ext::FSTATVFS, &s(b"h"))),
            Request::Extended {
                id: 5,
                request: ExtendedRequest::Fstatvfs { handle: b(b"h") }
            }
        );
        assert_eq!(
            r(ext(ext::HARDLINK, &[&s(b"a")[..], &s(b"b")].concat())),
            Request::Extended {
                id: 5,
                request: ExtendedRequest::Hardlink {
                    from: b(b"a"),
                    to: b(b"b")
                }
            }
        );
        assert_eq!(
            r(ext(ext::FSYNC, &s(b"h"))),
            Request::Extended {
                id: 5,
                request: ExtendedRequest::Fsync { handle: b(b"h") }
            }
        );
        assert_eq!(
            r(ext(ext::LIMITS, b"")),
            Request::Extended {
                id: 5,
                request: ExtendedRequest::Limits
            }
        );
        assert_eq!(
            r(ext(ext::EXPAND_PATH, &s(b"~/x"))),
            Request::Extended {
                id: 5,
                request: ExtendedRequest::ExpandPath { path: b(b"~/x") }
            }
        );
        assert_eq!(
            r(ext("copy-data", b"anything")),
            Request::Extended {
                id: 5,
                request: ExtendedRequest::Unknown {
                    name: b(b"copy-data")
                }
            }
        );
        assert_eq!(
            decode(&ext(ext::LIMITS, b"x")),
            Err(DecodeError::Malformed {
                kind: packet::EXTENDED,
                id: Some(5)
            })
        );
        assert_eq!(
            decode(&ext(ext::STATVFS, b"")),
            Err(DecodeError::Malformed {
                kind: packet::EXTENDED,
                id: Some(5)
            })
        );
    }

    #[test]
    fn unknown_types_and_truncated_ids() {
        assert_eq!(
            decode(&pkt(99, &u32b(3))),
            Err(DecodeError::Unsupported {
                kind: 99,
                id: Some(3)
            })
        );
        // A reply type sent by a client is not a request either.
        assert_eq!(
            decode(&pkt(packet::STATUS, &[&u32b(3)[..], &u32b(0)].concat())),
            Err(DecodeError::Unsupported {
                kind: packet::STATUS,
                id: Some(3)
            })
        );
        assert_eq!(
            decode(&pkt(packet::OPEN, &[0, 1])),
            Err(DecodeError::Malformed {
                kind: packet::OPEN,
                id: None
            })
        );
    }

    #[test]
    fn many_extended_attrs_are_skipped_not_kept() {
        // 30,000 empty pairs in one SETSTAT: decoded, but only a few kept.
        let mut body = Vec::new();
        body.extend_from_slice(&u32b(7));
        body.extend_from_slice(&s(b"/f"));
        body.extend_from_slice(&u32b(attr_flags::EXTENDED));
        body.extend_from_slice(&u32b(30_000));
        for _ in 0..30_000 {
            body.extend_from_slice(&[0u8; 8]);
        }
        let r = decode(&pkt(packet::SETSTAT, &body)).unwrap();
        let Request::Setstat { attrs, .. } = r else {
            panic!("{r:?}");
        };
        assert_eq!(attrs.extended.len(), MAX_KEPT_EXTENDED_ATTRS);
    }

    #[test]
    fn attr_extended_count_cannot_overrun() {
        let body = [&u32b(1)[..], &s(b"p"), &u32b(0x8000_0000), &u32b(u32::MAX)].concat();
        assert_eq!(
            decode(&pkt(packet::SETSTAT, &body)),
            Err(DecodeError::Malformed {
                kind: packet::SETSTAT,
                id: Some(1)
            })
        );
    }

    #[test]
    fn raw_non_utf8_names_are_kept_byte_for_byte() {
        let body = [&u32b(1)[..], &s(b"/caf\xe9")].concat();
        assert_eq!(
            decode(&pkt(packet::STAT, &body)).unwrap(),
            Request::Stat {
                id: 1,
                path: b(b"/caf\xe9")
            }
        );
    }

    #[test]
    fn encodes_version() {
        for hard_links in [true, false] {
            let v = encode_version(hard_links);
            let mut want = vec![packet::VERSION];
            want.extend(u32b(3));
            for (n, ver) in ext::ADVERTISED {
                if *n == ext::HARDLINK && !hard_links {
                    continue;
                }
                want.extend(s(n.as_bytes()));
                want.extend(s(ver.as_bytes()));
            }
            let mut framed = u32b(want.len() as u32);
            framed.extend(want);
            assert_eq!(&v[..], &framed[..]);
            let has = v
                .windows(ext::HARDLINK.len())
                .any(|w| w == ext::HARDLINK.as_bytes());
            assert_eq!(has, hard_links);
        }
    }

    #[test]
    fn encodes_status_byte_for_byte() {
        let got = encode_status(7, StatusCode::NoSuchFile, "No such file");
        let want = [
            &u32b(1 + 4 + 4 + 4 + 12 + 4)[..],
            &[101],
            &u32b(7),
            &u32b(2),
            &s(b"No such file"),
            &s(b""),
        ]
        .concat();
        assert_eq!(&got[..], &want[..]);
    }

    #[test]
    fn encodes_handle_data_attrs_name_extended() {
        assert_eq!(
            &encode_handle(1, b"\0\0\0\x05")[..],
            &[&u32b(13)[..], &[102], &u32b(1), &s(b"\0\0\0\x05")].concat()[..]
        );
        assert_eq!(
            &encode_data(2, b"abc")[..],
            &[&u32b(12)[..], &[103], &u32b(2), &s(b"abc")].concat()[..]
        );
        let attrs = Attrs {
            size: Some(3),
            permissions: Some(0o100600),
            times: Some((1, 2)),
            ..Attrs::default()
        };
        let a = [
            &u32b(0x0d)[..],
            &u64b(3),
            &u32b(0o100600),
            &u32b(1),
            &u32b(2),
        ]
        .concat();
        assert_eq!(
            &encode_attrs(3, &attrs)[..],
            &[&u32b(1 + 4 + a.len() as u32)[..], &[105], &u32b(3), &a].concat()[..]
        );
        let with_ext = Attrs {
            uid_gid: Some((1, 2)),
            extended: vec![(b(b"a"), b(b"b"))],
            ..Attrs::default()
        };
        let a2 = [
            &u32b(0x8000_0002)[..],
            &u32b(1),
            &u32b(2),
            &u32b(1),
            &s(b"a"),
            &s(b"b"),
        ]
        .concat();
        assert_eq!(
            &encode_attrs(4, &with_ext)[..],
            &[&u32b(1 + 4 + a2.len() as u32)[..], &[105], &u32b(4), &a2].concat()[..]
        );
        let e = NameEntry {
            filename: "/".into(),
            longname: "/".into(),
            attrs: Attrs::default(),
        };
        let body = [&[104][..], &u32b(5), &u32b(1), &s(b"/"), &s(b"/"), &u32b(0)].concat();
        assert_eq!(
            &encode_name(5, &[e])[..],
            &[&u32b(body.len() as u32)[..], &body].concat()[..]
        );
        let body = [&[201][..], &u32b(6), &u64b(1), &u64b(2)].concat();
        assert_eq!(
            &encode_extended_u64s(6, &[1, 2])[..],
            &[&u32b(body.len() as u32)[..], &body].concat()[..]
        );
    }

    #[test]
    fn encoded_attrs_decode_back() {
        let attrs = Attrs {
            size: Some(u64::MAX),
            uid_gid: Some((0, 0)),
            permissions: Some(0o40755),
            times: Some((u32::MAX, 0)),
            extended: vec![(b(b"x"), b(b""))],
        };
        let reply = encode_attrs(1, &attrs);
        // Reuse the request decoder's attrs parser on the reply body.
        let mut f = Fields {
            buf: reply.slice(9..),
        };
        assert_eq!(f.attrs().unwrap(), attrs);
        assert!(f.is_empty());
    }
}
