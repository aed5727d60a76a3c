//! paramiko (Python) as the client: password and key logins, pipelined and
//! parallel transfers, error statuses, raw packets, interrupted uploads.
//! The transfer cases run on the storage under test (`DROPGATE_TEST_STORAGE`:
//! local disk or S3); where S3 cannot do what is asked, the script expects
//! the error the README documents.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use dropgate_core::store::{Permission, User};
use dropgate_testkit::write_random_file;

/// Connection helpers every script starts with.
const PRELUDE: &str = r#"
import errno, hashlib, os, socket, stat, struct, sys, threading, time
import paramiko

PORT = int(sys.argv[1])

def connect(user, **kw):
    t = paramiko.Transport(("127.0.0.1", PORT))
    t.banner_timeout = 30
    t.connect(username=user, **kw)
    return t
"#;

async fn script(h: &Harness, body: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec![h.port.to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    python(&format!("{PRELUDE}\n{body}"), &all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_and_key_logins_pipelined_and_parallel_transfers() {
    let mut h = Harness::start_on_storage_under_test().await;
    let key = h.user_with_key("pat", "pat-pw").await;
    let big = write_random_file(&h.work("big.bin"), 6 * 1024 * 1024 + 17, 21);
    let body = r#"
WORK = sys.argv[2]
KEY = sys.argv[3]
CAPS = set(sys.argv[4].split(","))

def refused(what, f, message):
    try:
        f()
    except IOError as e:
        assert message in str(e), (what, e)
        return
    raise SystemExit(what + " succeeded on storage without it")
big_path = os.path.join(WORK, "big.bin")
big = open(big_path, "rb").read()

t = connect("pat", password="pat-pw")
s = paramiko.SFTPClient.from_transport(t)
assert s.normalize("/../..") == "/", s.normalize("/../..")
assert s.normalize(".") == "/"
assert s.normalize("not/yet/there/..") == "/not/yet"
s.mkdir("p")
attrs = s.put(big_path, "p/big.bin", confirm=True)
assert attrs.st_size == len(big)

# prefetch: paramiko asks for the whole file at once, then reads.
with s.open("p/big.bin", "rb") as f:
    f.prefetch()
    assert f.read() == big
# readv: many scattered reads in flight.
with s.open("p/big.bin", "rb") as f:
    chunks = [(i * 70001, 40000 + i) for i in range(80)]
    for (off, ln), got in zip(chunks, f.readv(chunks)):
        assert got == big[off:off + ln], off
s.get("p/big.bin", os.path.join(WORK, "back.bin"))
assert open(os.path.join(WORK, "back.bin"), "rb").read() == big

assert s.listdir("p") == ["big.bin"]
st = s.stat("p/big.bin")
assert st.st_size == len(big) and stat.S_ISREG(st.st_mode)
assert stat.S_ISDIR(s.stat("p").st_mode)

s.posix_rename("p/big.bin", "p/b2.bin")
if "links" in CAPS:
    s.symlink("b2.bin", "p/link")
    assert s.readlink("p/link") == "/p/b2.bin", s.readlink("p/link")
    assert stat.S_ISLNK(s.lstat("p/link").st_mode)
    assert s.stat("p/link").st_size == len(big)
    s.remove("p/link")
else:
    NO_LINKS = "Links are not supported by this storage (S3)"
    refused("symlink", lambda: s.symlink("b2.bin", "p/link"), NO_LINKS)
    refused("readlink", lambda: s.readlink("p/b2.bin"), NO_LINKS)
    assert s.listdir("p") == ["b2.bin"], s.listdir("p")

if "set_times" in CAPS:
    s.utime("p/b2.bin", (1000000000, 1000000001))
    assert s.stat("p/b2.bin").st_mtime == 1000000001
else:
    refused("utime", lambda: s.utime("p/b2.bin", (1000000000, 1000000001)),
            "Setting file times is not supported by this storage (S3)")
if "resize" in CAPS:
    s.truncate("p/b2.bin", 10)
else:
    refused("truncate", lambda: s.truncate("p/b2.bin", 10),
            "Changing a file's size is not supported by this storage (S3)")
    assert s.stat("p/b2.bin").st_size == len(big)
    with s.open("p/b2.bin", "wb") as f:
        f.write(big[:10])
assert s.stat("p/b2.bin").st_size == 10
s.chmod("p/b2.bin", 0o600)  # accepted, no effect

# append mode writes land at the end, in order.
with s.open("p/b2.bin", "ab") as f:
    f.write(b"0123456789")
    f.write(b"abc")
with s.open("p/b2.bin", "rb") as f:
    assert f.read() == big[:10] + b"0123456789abc"

# exclusive create refuses an existing file.
try:
    s.open("p/b2.bin", "x")
    raise SystemExit("exclusive open of an existing file succeeded")
except IOError:
    pass

try:
    s.stat("nope")
    raise SystemExit("stat of a missing file succeeded")
except IOError as e:
    assert e.errno == errno.ENOENT, e
try:
    s.rmdir("p")
    raise SystemExit("rmdir of a full folder succeeded")
except IOError:
    pass
s.remove("p/b2.bin")
s.rmdir("p")
t.close()
print("password ok")

# A key login, and several threads with their own SFTP channel on one transport.
key = paramiko.Ed25519Key.from_private_key_file(KEY)
t = connect("pat", pkey=key)
errors = []
def worker(i):
    try:
        c = paramiko.SFTPClient.from_transport(t)
        blob = os.urandom(400000 + i)
        with c.open("thread%d.bin" % i, "wb") as f:
            f.set_pipelined(True)
            f.write(blob)
        with c.open("thread%d.bin" % i, "rb") as f:
            f.prefetch()
            assert f.read() == blob
        with c.open("p-big%d.bin" % i, "wb") as f:
            f.write(big[: 1024 * 1024])
        c.close()
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
for th in threads: th.start()
for th in threads: th.join(120)
assert not errors, errors
assert not any(th.is_alive() for th in threads)
t.close()
print("key ok")
"#;
    let out = script(
        &h,
        body,
        &[
            &h.work.path().display().to_string(),
            &key.display().to_string(),
            &h.capability_list(),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("key ok"),
        "{}",
        text(&out)
    );
    let home = h.files("pat").await;
    for i in 0..6 {
        assert_eq!(
            home.read(&format!("p-big{i}.bin")).await,
            &big[..1024 * 1024]
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_look_alike() {
    let mut h = Harness::start().await;
    let key = h.user_with_key("quinn", "right").await;
    let (other, _) = keygen(h.work.path(), "other").await;
    let body = r#"
KEY, OTHER = sys.argv[2], sys.argv[3]
def attempt(user, **kw):
    try:
        connect(user, **kw).close()
        return "accepted"
    except paramiko.AuthenticationException as e:
        return "%s: %s" % (type(e).__name__, e)
good = paramiko.Ed25519Key.from_private_key_file(KEY)
other = paramiko.Ed25519Key.from_private_key_file(OTHER)
print("right-password", attempt("quinn", password="right"))
print("right-key", attempt("quinn", pkey=good))
print("wrong-password", attempt("quinn", password="wrong"))
print("unknown-user-password", attempt("nobody", password="wrong"))
print("wrong-key", attempt("quinn", pkey=other))
print("unknown-user-key", attempt("nobody", pkey=good))
"#;
    let out = script(
        &h,
        body,
        &[&key.display().to_string(), &other.display().to_string()],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let result: BTreeMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(result["right-password"], "accepted", "{stdout}");
    assert_eq!(result["right-key"], "accepted", "{stdout}");
    let denied: BTreeSet<&str> = [
        "wrong-password",
        "unknown-user-password",
        "wrong-key",
        "unknown-user-key",
    ]
    .iter()
    .map(|k| result[k])
    .collect();
    assert_eq!(
        denied.len(),
        1,
        "every failure must look the same: {stdout}"
    );
    assert!(
        denied
            .iter()
            .all(|d| d.starts_with("AuthenticationException")),
        "{stdout}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_gib_length_field_drops_only_that_session() {
    let mut h = Harness::start().await;
    h.tg.add_user("rita", "pw").await;
    let body = r#"
def packet(kind, payload):
    return struct.pack(">IB", len(payload) + 1, kind) + payload
def sstr(b):
    return struct.pack(">I", len(b)) + b
def read_packet(ch):
    head = b""
    while len(head) < 4:
        more = ch.recv(4 - len(head))
        if not more: raise EOFError
        head += more
    n = struct.unpack(">I", head)[0]
    body = b""
    while len(body) < n:
        more = ch.recv(n - len(body))
        if not more: raise EOFError
        body += more
    return body

# A healthy session that must survive.
t1 = connect("rita", password="pw")
s1 = paramiko.SFTPClient.from_transport(t1)
s1.listdir(".")

# Raw SFTP on a second connection: a framed but malformed request is answered
# with BAD_MESSAGE and the session goes on; unknown types get OP_UNSUPPORTED.
t2 = connect("rita", password="pw")
ch = t2.open_session()
ch.settimeout(30)
ch.invoke_subsystem("sftp")
ch.sendall(packet(1, struct.pack(">I", 3)))
version = read_packet(ch)
assert version[0] == 2 and struct.unpack(">I", version[1:5])[0] == 3, version
assert b"posix-rename@openssh.com" in version and b"limits@openssh.com" in version
ch.sendall(packet(17, struct.pack(">II", 7, 100)))            # STAT, string length past the end
reply = read_packet(ch)
assert reply[0] == 101 and struct.unpack(">II", reply[1:9]) == (7, 5), reply
ch.sendall(packet(16, struct.pack(">I", 8) + sstr(b"/a/../..")) )   # REALPATH
reply = read_packet(ch)
assert reply[0] == 104 and reply[1:5] == struct.pack(">I", 8) and b"\x00\x00\x00\x01/" in reply, reply
ch.sendall(packet(99, struct.pack(">I", 9)))
reply = read_packet(ch)
assert reply[0] == 101 and struct.unpack(">II", reply[1:9]) == (9, 8), reply
ch.sendall(packet(17, struct.pack(">I", 10) + sstr(b"caf\xe9")))   # non-UTF-8 name
reply = read_packet(ch)
assert reply[0] == 101 and struct.unpack(">II", reply[1:9]) == (10, 4) and b"UTF-8" in reply, reply
ch.sendall(packet(200, struct.pack(">I", 11) + sstr(b"limits@openssh.com")))
reply = read_packet(ch)
assert reply[0] == 201, reply
max_packet, max_read, max_write, handles = struct.unpack(">QQQQ", reply[5:37])
assert max_packet == 256 * 1024 and max_read > 0 and max_write > 0 and handles > 0, reply
ch.sendall(packet(200, struct.pack(">I", 12) + sstr(b"statvfs@openssh.com") + sstr(b"/")))
reply = read_packet(ch)
assert reply[0] == 201 and len(reply) == 5 + 11 * 8, reply
ch.sendall(packet(200, struct.pack(">I", 13) + sstr(b"expand-path@openssh.com") + sstr(b"~/x/../y")))
reply = read_packet(ch)
assert reply[0] == 104 and sstr(b"/y") in reply, reply
print("raw ok")

# Now the 4 GiB length field: this connection is dropped...
ch.sendall(b"\xff\xff\xff\xff" + b"\x05" * 64)
deadline = time.time() + 15
while time.time() < deadline and t2.is_active():
    time.sleep(0.05)
print("oversized session active", t2.is_active())

# ...and the other one keeps working.
with s1.open("after.txt", "wb") as f:
    f.write(b"still here")
assert s1.open("after.txt", "rb").read() == b"still here"
print("other session ok")
"#;
    let out = script(&h, body, &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("raw ok"), "{}", text(&out));
    assert!(
        stdout.contains("oversized session active False"),
        "{}",
        text(&out)
    );
    assert!(stdout.contains("other session ok"), "{}", text(&out));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_dropped_mid_upload_leaves_nothing() {
    let mut h = Harness::start_on_storage_under_test().await;
    h.tg.add_user("sam", "pw").await;
    let home = h.files("sam").await;
    home.write("existing.bin", b"old content").await;
    let body = r#"
t = connect("sam", password="pw")
s = paramiko.SFTPClient.from_transport(t)
# Keep the file objects alive: paramiko closes (commits) a collected one.
files = []
for name in ("partial.bin", "existing.bin"):
    f = s.open(name, "wb")
    f.set_pipelined(True)
    for i in range(8):
        f.write(os.urandom(256 * 1024))
    files.append(f)
time.sleep(1.5)
print("wrote", flush=True)
# Cut the TCP connection under paramiko's feet: no SFTP close, no SSH disconnect.
t.sock.shutdown(socket.SHUT_RDWR)
os._exit(0)
"#;
    let out = script(&h, body, &[]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("wrote"),
        "{}",
        text(&out)
    );
    // The gateway has noticed the cut once the session is gone; only then
    // is what it left final (on S3 nothing was visible even before).
    assert!(
        wait_for(20, || h.tg.gateway.sessions().list().is_empty()).await,
        "the session outlived its connection"
    );
    assert!(
        wait_for(20, || home.temporaries().is_empty()).await,
        "temporaries left: {:?}",
        home.temporaries()
    );
    assert!(
        !home.exists("partial.bin").await,
        "a partial upload is visible under its final name"
    );
    assert_eq!(
        home.read("existing.bin").await,
        b"old content",
        "the old file was touched"
    );
    h.stop().await;
}

/// At a low rate limit, reads and writes in flight wait many seconds for
/// their turn; a cut connection must not keep the session (and its slot in
/// `max_sessions`) alive until they all had it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_does_not_wait_out_rate_limited_requests() {
    let mut h = Harness::start().await;
    let mut user = User::new("rita");
    user.bandwidth.download_kib_s = 16;
    user.bandwidth.upload_kib_s = 16;
    h.tg.add_user_with(user, Some("pw-r-1")).await;
    std::fs::write(h.home("rita").join("big.bin"), vec![7u8; 2 << 20]).unwrap();
    let body = r#"
t = connect("rita", password="pw-r-1")
s = paramiko.SFTPClient.from_transport(t)
w = s.open("up.bin", "wb")
w.set_pipelined(True)
r = s.open("big.bin", "rb")
r.prefetch()            # asks for all 2 MiB at once: 64 reads of 32 KiB
for i in range(8):
    w.write(os.urandom(32 * 1024))
time.sleep(1.0)
print("asked", flush=True)
t.sock.shutdown(socket.SHUT_RDWR)
os._exit(0)
"#;
    let out = script(&h, body, &[]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("asked"),
        "{}",
        text(&out)
    );
    // 2 MiB at 16 KiB/s would take two minutes to read out.
    let cut = std::time::Instant::now();
    assert!(
        wait_for(10, || h.tg.gateway.sessions().list().is_empty()).await,
        "the session outlived its connection by waiting out its rate limit"
    );
    let took = cut.elapsed();
    assert!(
        took < std::time::Duration::from_secs(3),
        "session ended after {took:?}"
    );
    assert!(
        !h.home("rita").join("up.bin").exists(),
        "an unfinished upload appeared under its final name"
    );
    h.stop().await;
}

/// paramiko, like OpenSSH's `sftp`, leaves Nagle's algorithm on: it holds its
/// `KEX_ECDH_INIT` until its `KEXINIT` is acknowledged, so a server that
/// delays that ACK (Linux does, by 40 ms or more, once it has answered anything)
/// makes every login wait. The key exchange alone takes a few ms here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_exchange_does_not_wait_for_a_delayed_ack() {
    let mut h = Harness::start().await;
    let body = r#"
times = []
for _ in range(8):
    t = paramiko.Transport(("127.0.0.1", PORT))
    t.banner_timeout = 30
    start = time.monotonic()
    t.start_client(timeout=30)
    times.append(time.monotonic() - start)
    t.close()
print("fastest %.4f" % min(times), " ".join("%.4f" % x for x in times), flush=True)
"#;
    let out = script(&h, body, &[]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let fastest: f64 = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{}", text(&out)));
    // With the ACK delayed every exchange takes at least 40 ms (the kernel's
    // minimum delayed-ACK time); the fastest of eight stays well under it.
    eprintln!("key exchanges took {stdout}");
    assert!(fastest < 0.030, "key exchanges took {stdout}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_and_quota_map_to_statuses() {
    let mut h = Harness::start_on_storage_under_test().await;
    let mut partner = User::new("tess");
    partner.permissions = BTreeMap::from([
        (
            "/".to_owned(),
            BTreeSet::from([Permission::List, Permission::Download]),
        ),
        (
            "/inbox".to_owned(),
            BTreeSet::from([Permission::List, Permission::Upload]),
        ),
        ("/dl".to_owned(), BTreeSet::from([Permission::Download])),
    ]);
    h.tg.add_user_with(partner, Some("pw")).await;
    let mut small = User::new("uma");
    small.quota.max_bytes = 1024 * 1024;
    h.tg.add_user_with(small, Some("pw")).await;
    let tess = h.files("tess").await;
    tess.mkdir_all("inbox").await;
    tess.write("readme.txt", b"hello").await;
    tess.write("dl/secret.bin", b"secret").await;
    let body = r#"
def code(f):
    try:
        f()
        return "ok"
    except IOError as e:
        return "errno=%s %s" % (e.errno, e)

t = connect("tess", password="pw")
s = paramiko.SFTPClient.from_transport(t)
print("read", code(lambda: s.open("readme.txt").read()))
# FSTAT of an open file: full attributes only where the folder may be listed.
fst = lambda p: (lambda a: "%s/%s" % (a.st_size, a.st_mtime is not None))(s.open(p).stat())
print("fstat-listable", fst("readme.txt"))
print("fstat-unlistable", fst("dl/secret.bin"))
print("write-root", code(lambda: s.open("new.txt", "wb").close()))
print("write-inbox", code(lambda: s.open("inbox/in.txt", "wb").write(b"x")))
print("overwrite-inbox", code(lambda: s.open("inbox/in.txt", "wb").close()))
print("delete", code(lambda: s.remove("readme.txt")))
print("mkdir", code(lambda: s.mkdir("d")))
t.close()

t = connect("uma", password="pw")
s = paramiko.SFTPClient.from_transport(t)
def too_big():
    with s.open("big.bin", "wb") as f:
        for i in range(8):
            f.write(os.urandom(256 * 1024))
print("quota", code(too_big))
print("after-quota", code(lambda: s.stat("big.bin")))
with s.open("fits.bin", "wb") as f:
    f.write(os.urandom(1000))
print("fits", s.stat("fits.bin").st_size)
t.close()
"#;
    let out = script(&h, body, &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let r: BTreeMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(r["read"], "ok", "{stdout}");
    assert_eq!(r["fstat-listable"], "5/True", "{stdout}");
    assert_eq!(r["fstat-unlistable"], "6/False", "{stdout}");
    assert!(r["write-root"].starts_with("errno=13"), "{stdout}");
    assert_eq!(r["write-inbox"], "ok", "{stdout}");
    assert!(r["overwrite-inbox"].starts_with("errno=13"), "{stdout}");
    assert!(r["delete"].starts_with("errno=13"), "{stdout}");
    assert!(r["mkdir"].starts_with("errno=13"), "{stdout}");
    assert!(r["quota"].contains("Quota exceeded"), "{stdout}");
    assert!(r["after-quota"].starts_with("errno=2"), "{stdout}");
    assert_eq!(r["fits"], "1000", "{stdout}");
    assert!(h.files("uma").await.temporaries().is_empty());
    h.stop().await;
}
