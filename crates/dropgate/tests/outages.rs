//! What the server does when the machine lets it down: a full disk, a
//! database that goes away, too few file descriptors. Real binary, real
//! clients, a real tmpfs and a real PostgreSQL cluster of the test's own
//! (stopped and started while the gateway runs). Needs root, for the mount
//! and to run PostgreSQL as its own user, as CI has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Gateway, PrivatePostgres, curl, require_tool};
use serde_json::json;

const PASSWORD: &str = "Right-pass-1";

fn create_partner(gw: &Gateway) -> String {
    let token = gw.token();
    gw.create_user(
        &token,
        &json!({"username": "partner", "password": PASSWORD}),
    );
    token
}

fn ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An OpenSSH `sftp` run fed on stdin: it exits 0 whatever its commands
/// did, so any error it printed counts as a failure.
fn sftp_ok(what: &str, out: &Output) {
    let said = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = said
        .lines()
        .filter(|l| !l.starts_with("Connected to"))
        .collect();
    assert!(
        out.status.success() && errors.is_empty(),
        "{what} failed: {said}"
    );
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap()
}

/// Names under `dir` (recursively) that look like upload temporaries.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else if e.file_name().to_string_lossy().starts_with(".dropgate-") {
                found.push(p);
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------
// A full disk.

/// A small tmpfs, unmounted on drop.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&path).unwrap();
        let out = run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                path.to_str().unwrap(),
            ],
        );
        ok("mount tmpfs (the test needs root)", &out);
        SmallDisk { path }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = run("umount", &["-l", self.path.to_str().unwrap()]);
    }
}

#[test]
fn a_full_disk_fails_uploads_honestly_keeps_downloads_and_recovers() {
    require_tool("curl", "curl");
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path().join("files"), "16m");
    let gw = Gateway::start_in(
        dir,
        &format!("[storage]\nroot = {:?}\n", disk.path.to_str().unwrap()),
    );
    create_partner(&gw);
    // (Not `gw.home`: the storage root is the small disk.)
    let home = disk.path.join("partner");
    let work = tempfile::tempdir().unwrap();
    let keep = pseudo_random(1 << 20, 1);
    let upload = pseudo_random(4 << 20, 2);
    std::fs::write(work.path().join("keep.bin"), &keep).unwrap();
    std::fs::write(work.path().join("upload.bin"), &upload).unwrap();
    let ftp = |path: &str| format!("ftp://partner:{PASSWORD}@{}/{path}", gw.addr("ftp"));
    let local = |name: &str| work.path().join(name).to_str().unwrap().to_owned();
    ok(
        "first upload",
        &curl(&["-T", &local("keep.bin"), &ftp("keep.bin")]),
    );
    assert!(std::fs::read(home.join("keep.bin")).unwrap() == keep);

    // Something else fills the disk.
    let free = || {
        let out = run(
            "df",
            &["-B1", "--output=avail", disk.path.to_str().unwrap()],
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<u64>().ok())
            .unwrap()
    };
    let filler = disk.path.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    drop(f);
    // Leave 1 MiB: the 4 MiB uploads below cannot fit.
    let len = std::fs::metadata(&filler).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(len - (1 << 20))
        .unwrap();
    println!("free before the uploads: {} KiB", free() / 1024);

    // FTP: curl reports the failure, and it is the server's 452.
    let out = curl(&["-v", "-T", &local("upload.bin"), &ftp("full-ftp.bin")]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "FTP upload to a full disk succeeded");
    assert!(
        said.lines()
            .any(|l| l.starts_with("< 452") || l.starts_with("< 552")),
        "{said}"
    );
    // SFTP (OpenSSH): a failure, not a success.
    let out = common::sftp_password(
        gw.addr("sftp"),
        "127.0.0.1",
        "partner",
        PASSWORD,
        &format!("put {} full-sftp.bin\n", local("upload.bin")),
    );
    // (sftp reading commands from stdin exits 0 whatever they did; what it
    // printed tells.)
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("write remote") && said.contains("Failure"),
        "SFTP upload to a full disk did not fail as it should: {said}"
    );
    // Nothing was left behind under a final name or as a temporary.
    assert!(!home.join("full-ftp.bin").exists());
    assert!(!home.join("full-sftp.bin").exists());
    assert_eq!(temporaries(&disk.path), Vec::<PathBuf>::new());
    // Downloads go on.
    let out = curl(&[&ftp("keep.bin")]);
    ok("download from a full disk", &out);
    assert!(out.stdout == keep, "download content");

    // Space comes back: uploads work again, on both protocols.
    std::fs::remove_file(&filler).unwrap();
    ok(
        "FTP upload after space was freed",
        &curl(&["-T", &local("upload.bin"), &ftp("after-ftp.bin")]),
    );
    sftp_ok(
        "SFTP upload after space was freed",
        &common::sftp_password(
            gw.addr("sftp"),
            "127.0.0.1",
            "partner",
            PASSWORD,
            &format!("put {} after-sftp.bin\n", local("upload.bin")),
        ),
    );
    assert!(std::fs::read(home.join("after-ftp.bin")).unwrap() == upload);
    assert!(std::fs::read(home.join("after-sftp.bin")).unwrap() == upload);
    drop(gw);
}

// ---------------------------------------------------------------------------
// The database goes away.

/// A curl FTP listing as `partner`: whether it logged in, and how long it took.
fn ftp_login(gw: &Gateway) -> (bool, Duration) {
    let started = Instant::now();
    let out = curl(&[
        "--max-time",
        "20",
        &format!("ftp://partner:{PASSWORD}@{}/", gw.addr("ftp")),
    ]);
    (out.status.success(), started.elapsed())
}

#[test]
fn without_its_database_the_server_fails_logins_closed_finishes_transfers_and_recovers() {
    require_tool("curl", "curl");
    let pg = PrivatePostgres::start();
    let gw = Gateway::start(&format!("[database]\nurl = {:?}\n", pg.url()));
    let token = create_partner(&gw);
    let home = gw.home("partner");
    let work = tempfile::tempdir().unwrap();
    let data = pseudo_random(6 << 20, 3);
    let src = work.path().join("slow.bin");
    std::fs::write(&src, &data).unwrap();
    assert!(ftp_login(&gw).0, "login with the database up");

    // Two uploads at 1 MB/s, so they run while the database goes away.
    let ftp_addr = gw.addr("ftp");
    let sftp_addr = gw.addr("sftp");
    let src_ftp = src.to_str().unwrap().to_owned();
    let ftp_upload = std::thread::spawn(move || {
        curl(&[
            "--limit-rate",
            "1M",
            "-T",
            &src_ftp,
            &format!("ftp://partner:{PASSWORD}@{ftp_addr}/live-ftp.bin"),
        ])
    });
    let src_sftp = src.to_str().unwrap().to_owned();
    let sftp_upload = std::thread::spawn(move || {
        // `put` of sftp has no rate limit; the shell pipes through pv-like dd.
        common::sftp_password(
            sftp_addr,
            "127.0.0.1",
            "partner",
            PASSWORD,
            &format!("put {src_sftp} live-sftp.bin\n"),
        )
    });
    std::thread::sleep(Duration::from_secs(1));
    pg.stop();
    let stopped = Instant::now();

    // New logins fail closed, quickly, on both protocols.
    let (logged_in, took) = ftp_login(&gw);
    assert!(!logged_in, "FTP login without a database");
    assert!(took < Duration::from_secs(5), "FTP refusal took {took:?}");
    let started = Instant::now();
    let out = common::sftp_password(sftp_addr, "127.0.0.1", "partner", PASSWORD, "ls\n");
    let took = started.elapsed();
    assert!(!out.status.success(), "SFTP login without a database");
    assert!(took < Duration::from_secs(5), "SFTP refusal took {took:?}");

    // The transfers that were running finish, intact.
    ok("FTP upload across the outage", &ftp_upload.join().unwrap());
    ok(
        "SFTP upload across the outage",
        &sftp_upload.join().unwrap(),
    );
    assert!(std::fs::read(home.join("live-ftp.bin")).unwrap() == data);
    assert!(std::fs::read(home.join("live-sftp.bin")).unwrap() == data);
    println!(
        "uploads done {:?} after the database stopped",
        stopped.elapsed()
    );

    // The database returns: logins work again within 10 s.
    pg.pg_ctl_start();
    let back = Instant::now();
    loop {
        if ftp_login(&gw).0 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "logins did not recover"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    println!("logins recovered {:?} after the database", back.elapsed());
    // The uploads' events waited in the spool and are in the store now.
    gw.wait_events(&token, "kind=upload&username=partner", |items| {
        ["/live-ftp.bin", "/live-sftp.bin"]
            .iter()
            .all(|p| items.iter().any(|e| e["path"] == *p))
    });
    let log = gw.log.lock().unwrap().clone();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn with_sqlite_write_locked_logins_go_on_and_uploads_keep_their_events() {
    require_tool("curl", "curl");
    require_tool("python3", "python3");
    let gw = Gateway::start("");
    let token = create_partner(&gw);
    let work = tempfile::tempdir().unwrap();
    let data = pseudo_random(1 << 20, 5);
    let src = work.path().join("f.bin");
    std::fs::write(&src, &data).unwrap();
    // Another program holds SQLite's write lock for 12 s.
    let db = gw.dir.path().join("data/dropgate.db");
    let mut locker = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked', flush=True)\n\
             time.sleep(12)\n\
             c.execute('COMMIT')\n",
        ])
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(locker.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    let locked = Instant::now();
    // Reads go on beside the lock (WAL): logins work, and an upload is
    // acknowledged once its event is in the spool.
    let out = curl(&[
        "--max-time",
        "30",
        "-T",
        src.to_str().unwrap(),
        &format!("ftp://partner:{PASSWORD}@{}/locked.bin", gw.addr("ftp")),
    ]);
    ok("FTP upload while SQLite is locked", &out);
    assert!(
        locked.elapsed() < Duration::from_secs(12),
        "answered while locked"
    );
    assert!(std::fs::read(gw.home("partner").join("locked.bin")).unwrap() == data);
    sftp_ok(
        "SFTP login while SQLite is locked",
        &common::sftp_password(gw.addr("sftp"), "127.0.0.1", "partner", PASSWORD, "ls\n"),
    );
    // Once the lock is gone the spooled events reach the store.
    locker.wait().unwrap();
    gw.wait_events(&token, "kind=upload&username=partner", |items| {
        items.iter().any(|e| e["path"] == "/locked.bin")
    });
    // A busy store is not a refusing one: nothing was set aside.
    let rejected = gw.dir.path().join("data/spool/rejected");
    let set_aside = std::fs::read_dir(&rejected).map(|d| d.count()).unwrap_or(0);
    assert_eq!(set_aside, 0, "{}", gw.log.lock().unwrap());
}

// ---------------------------------------------------------------------------
// Too few descriptors.

/// A logged-in FTP control connection, blocking.
struct Ftp {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Ftp {
    fn connect(addr: SocketAddr) -> (Ftp, String) {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = Ftp {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        let greeting = c.reply();
        (c, greeting)
    }

    fn reply(&mut self) -> String {
        let mut line = String::new();
        let _ = self.r.read_line(&mut line);
        line.trim_end().to_owned()
    }

    fn cmd(&mut self, line: &str) -> String {
        self.w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        self.reply()
    }

    fn data(&mut self, addr: SocketAddr) -> TcpStream {
        let r = self.cmd("EPSV");
        assert!(r.starts_with("229"), "{r}");
        let port: u16 = r
            .split("(|||")
            .nth(1)
            .and_then(|s| s.split('|').next())
            .and_then(|p| p.parse().ok())
            .unwrap();
        TcpStream::connect(SocketAddr::new(addr.ip(), port)).unwrap()
    }
}

#[test]
fn at_the_descriptor_limit_new_connections_are_refused_and_sessions_carry_on() {
    require_tool("prlimit", "util-linux");
    // 400 descriptors: (400 - 256 spare) / 5 per connection = 28 connections.
    let gw = Gateway::start_wrapped(
        tempfile::tempdir().unwrap(),
        "[limits]\nmax_connections_per_ip = 1000\n",
        &["prlimit", "--nofile=400:400", "--"],
    );
    create_partner(&gw);
    let log = gw.log.lock().unwrap().clone();
    assert!(log.contains("admitting at most 28 connections"), "{log}");
    let ftp = gw.addr("ftp");
    let (mut session, greeting) = Ftp::connect(ftp);
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(session.cmd("USER partner").starts_with("331"));
    assert!(session.cmd(&format!("PASS {PASSWORD}")).starts_with("230"));

    // Fill the server up; the connection past the limit gets a clear 421.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        let (c, greeting) = Ftp::connect(ftp);
        if greeting.starts_with("220") {
            held.push(c);
        } else {
            assert_eq!(greeting, "421 Too many connections.");
            refused += 1;
        }
    }
    assert_eq!((held.len(), refused), (27, 13));

    // The session already in keeps working: an upload, a listing, a download.
    let body = pseudo_random(256 << 10, 4);
    let mut data = session.data(ftp);
    assert!(session.cmd("STOR kept.bin").starts_with("150"));
    data.write_all(&body).unwrap();
    drop(data);
    assert!(session.reply().starts_with("226"));
    let mut data = session.data(ftp);
    assert!(session.cmd("NLST").starts_with("150"));
    let mut names = String::new();
    data.read_to_string(&mut names).unwrap();
    assert!(session.reply().starts_with("226"));
    assert!(names.contains("kept.bin"), "{names}");
    let mut data = session.data(ftp);
    assert!(session.cmd("RETR kept.bin").starts_with("150"));
    let mut got = Vec::new();
    data.read_to_end(&mut got).unwrap();
    assert!(session.reply().starts_with("226"));
    assert!(got == body);
    drop(held);
}

#[test]
fn out_of_descriptors_a_new_connection_is_refused_at_once_not_left_waiting() {
    require_tool("prlimit", "util-linux");
    // Room for 348 connections by the admission count...
    let gw = Gateway::start_wrapped(
        tempfile::tempdir().unwrap(),
        "[limits]\nmax_connections_per_ip = 1000\n",
        &["prlimit", "--nofile=2000:2000", "--"],
    );
    let ftp = gw.addr("ftp");
    // ...but the descriptors run out first: the limit is lowered under the
    // running server (another part of the process, or an operator's
    // mistake). Past it, a new connection is answered at once with 421
    // instead of waiting unanswered in the listen queue.
    let pid = gw.pid().to_string();
    // New descriptors take the lowest free number, and the limit bounds the
    // number: ten past the first free one leaves room for ten more.
    let open: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u64>().ok())
        .collect();
    let first_free = (0..).find(|n| !open.contains(n)).unwrap();
    let limit = format!("--nofile={}:2000", first_free + 10);
    ok("prlimit", &run("prlimit", &["--pid", &pid, &limit]));
    let mut held = Vec::new();
    let refused_after = loop {
        let started = Instant::now();
        let (c, greeting) = Ftp::connect(ftp);
        let took = started.elapsed();
        if greeting.starts_with("220") {
            held.push(c);
            assert!(held.len() < 200, "descriptors never ran out");
            continue;
        }
        assert_eq!(greeting, "421 Too many connections.");
        assert!(took < Duration::from_secs(3), "refusal took {took:?}");
        break held.len();
    };
    println!("refused after {refused_after} connections");
    gw.wait_log("out of descriptors: refusing a connection");
    // With descriptors back, connections are served again.
    ok(
        "prlimit",
        &run("prlimit", &["--pid", &pid, "--nofile=2000:2000"]),
    );
    drop(held);
    let (_c, greeting) = Ftp::connect(ftp);
    assert!(greeting.starts_with("220"), "{greeting}");
}
