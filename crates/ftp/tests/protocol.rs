//! Raw-socket tests: the listener spoken to byte for byte, for what real
//! clients never do on purpose (bounce attempts, foreign data connections,
//! garbage before login, aborts, disconnects mid-upload) and for the exact
//! replies of the less common commands.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Options, WAIT, connect_from, temporaries};
use dropgate_core::store::{Permission, User};
use dropgate_core::vfs::UploadMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_and_eprt_elsewhere_are_refused() {
    let server = common::start().await;
    server.user("u", "pw-u-1").await;
    let mut c = server.login("u", "pw-u-1").await;
    // Another host (127.0.0.2 is this machine, but not the client's address).
    c.expect("PORT 127,0,0,2,39,16", 504).await;
    c.expect("EPRT |1|127.0.0.2|10000|", 504).await;
    c.expect("EPRT |1|10.1.2.3|10000|", 504).await;
    // Privileged ports, even on the client's own address.
    c.expect("PORT 127,0,0,1,0,21", 504).await;
    c.expect("EPRT |1|127.0.0.1|80|", 504).await;
    c.expect("EPRT |1|127.0.0.1|1023|", 504).await;
    // Another address family than the control connection.
    c.expect("EPRT |2|::1|10000|", 504).await;
    // Malformed.
    c.expect("PORT 1,2,3", 501).await;
    c.expect("EPRT |9|127.0.0.1|10000|", 522).await;
    // Nothing was set up: a transfer now has no data connection.
    c.expect("LIST", 425).await;
    // The client's own address at an unprivileged port is fine.
    c.expect("PORT 127,0,0,1,39,16", 200).await;
    c.expect("EPRT |1|127.0.0.1|10000|", 200).await;
    server.stop().await;

    let server = common::start_with(Options {
        active_mode: false,
        ..Options::default()
    })
    .await;
    server.user("u", "pw-u-1").await;
    let mut c = server.login("u", "pw-u-1").await;
    c.expect("PORT 127,0,0,1,39,16", 502).await;
    c.expect("EPRT |1|127.0.0.1|10000|", 502).await;
    c.expect("EPSV", 229).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_transfer_comes_from_the_control_address() {
    let server = common::start().await;
    let home = server.user("u", "pw-u-1").await;
    std::fs::write(home.join("f.txt"), b"active data").unwrap();
    let mut c = server.login("u", "pw-u-1").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    c.expect(&format!("EPRT |1|127.0.0.1|{port}|"), 200).await;
    c.expect("RETR f.txt", 150).await;
    let (mut data, from) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from.ip(), server.addr.ip());
    let mut got = Vec::new();
    data.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"active data");
    assert_eq!(c.reply().await.code, 226);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_connection_from_another_address_is_refused() {
    let server = common::start().await;
    let home = server.user("u", "pw-u-1").await;
    std::fs::write(home.join("secret.txt"), b"only for the real client").unwrap();
    let mut c = server.login("u", "pw-u-1").await;
    for pasv in [false, true] {
        let data_addr = if pasv {
            c.pasv().await
        } else {
            SocketAddr::new(server.addr.ip(), c.epsv().await)
        };
        // An intruder on this machine, from 127.0.0.2, gets in first.
        let mut intruder = connect_from(Some("127.0.0.2"), data_addr).await;
        let mut data = connect_from(Some("127.0.0.1"), data_addr).await;
        c.expect("RETR secret.txt", 150).await;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, intruder.read(&mut buf))
            .await
            .expect("intruder closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "the intruder must get nothing");
        // The real client, who connected after the intruder, gets the file.
        let mut got = Vec::new();
        data.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"only for the real client");
        assert_eq!(c.reply().await.code, 226);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epsv_and_eprt_over_ipv6() {
    let server = common::start_with(Options {
        listen: "[::1]:0".parse().unwrap(),
        ..Options::default()
    })
    .await;
    let home = server.user("u", "pw-u-1").await;
    std::fs::write(home.join("v6.txt"), b"over ipv6").unwrap();
    let mut c = server.login("u", "pw-u-1").await;
    c.expect("EPSV 1", 522).await;
    c.expect("PASV", 425).await;
    let (got, r) = c.retr("v6.txt").await;
    assert_eq!((got.as_slice(), r.code), (&b"over ipv6"[..], 226));
    let listener = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    c.expect(&format!("EPRT |2|::1|{port}|"), 200).await;
    c.expect("RETR v6.txt", 150).await;
    let (mut data, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut got = Vec::new();
    data.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"over ipv6");
    assert_eq!(c.reply().await.code, 226);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_before_login_are_refused() {
    let server = common::start().await;
    server.user("u", "pw-u-1").await;
    let mut c = server.client().await;
    c.expect("LIST", 530).await;
    c.expect("RETR x", 530).await;
    c.expect("CWD /", 530).await;
    c.expect("PASV", 530).await;
    // These are served.
    c.expect("FEAT", 211).await;
    c.expect("SYST", 215).await;
    c.expect("NOOP", 200).await;
    c.expect("HELP", 214).await;
    c.expect("OPTS UTF8 ON", 200).await;
    c.expect("PASS x", 503).await;
    c.expect("USER u", 331).await;
    c.expect("PASS wrong", 530).await;
    let r = c.cmd("PASS pw-u-1").await;
    assert_eq!(
        r.code, 503,
        "PASS needs a fresh USER after a failure: {}",
        r.text
    );
    // Seven refusals so far; three more make ten.
    c.expect("FROB", 500).await;
    c.expect("STOR x", 530).await;
    c.send("MKD x").await;
    assert_eq!(c.reply().await.code, 530);
    let last = c.try_reply().await.expect("a 421 before closing");
    assert_eq!(last.code, 421, "{}", last.text);
    c.expect_closed().await;

    // A wrong password says the same thing as an unknown user.
    let mut c = server.client().await;
    c.expect("USER u", 331).await;
    let wrong = c.cmd("PASS wrong").await;
    c.expect("USER nobody", 331).await;
    let unknown = c.cmd("PASS wrong").await;
    assert_eq!(wrong.raw, unknown.raw);
    assert_eq!(wrong.text, "530 Login incorrect.");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abor_mid_download_then_the_session_goes_on() {
    let server = common::start().await;
    let home = server.user("u", "pw-u-1").await;
    // The transfer is far from done when ABOR comes.
    huge_file(&home);
    let mut c = server.login("u", "pw-u-1").await;
    let mut data = c.epsv_connect().await;
    c.expect("RETR huge.bin", 150).await;
    let mut buf = vec![0u8; 64 * 1024];
    data.read_exact(&mut buf).await.unwrap();
    // As curl and ftplib send it: Telnet IP and Synch before ABOR.
    c.send_bytes(b"\xff\xf4\xff\xf2ABOR\r\n").await;
    let first = c.reply().await;
    assert_eq!(first.code, 426, "{}", first.text);
    let second = c.reply().await;
    assert_eq!(second.code, 226, "{}", second.text);
    drop(data);
    let r = c.expect("PWD", 257).await;
    assert_eq!(r.text, "257 \"/\" is the current directory");
    // And a new transfer works.
    std::fs::write(home.join("small.txt"), b"after abort").unwrap();
    let (got, r) = c.retr("small.txt").await;
    assert_eq!((got.as_slice(), r.code), (&b"after abort"[..], 226));
    // ABOR with nothing running.
    c.expect("ABOR", 225).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abor_and_noop_and_stat_during_an_upload() {
    let server = common::start().await;
    let home = server.user("u", "pw-u-1").await;
    let mut c = server.login("u", "pw-u-1").await;
    let mut data = c.epsv_connect().await;
    c.expect("STOR up.bin", 150).await;
    data.write_all(&vec![7u8; 300_000]).await.unwrap();
    c.expect("NOOP", 200).await;
    c.stat_until(300_000).await;
    // A command other than ABOR/STAT/NOOP/QUIT waits for the transfer.
    c.send("PWD").await;
    c.send("ABOR").await;
    assert_eq!(c.reply().await.code, 426);
    assert_eq!(c.reply().await.code, 226);
    assert_eq!(
        c.reply().await.code,
        257,
        "the waiting PWD runs after the abort"
    );
    assert!(
        !home.join("up.bin").exists(),
        "an aborted upload leaves nothing (atomic mode)"
    );
    assert!(temporaries(&home).is_empty());
    drop(data);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_that_pauses_is_read_as_its_bytes_come() {
    // Past its first 1 MiB chunk a clear-text upload's socket wakes the
    // reader only once half a MiB has arrived; a client that then sends a
    // little and waits must still have those bytes taken (and shown) within
    // milliseconds, not when more come or the idle timeout ends the
    // transfer; and the same again after the next chunk put the mark back.
    const CHUNK: usize = 1 << 20;
    let server = common::start().await;
    let home = server.user("u", "pw-u-1").await;
    let mut c = server.login("u", "pw-u-1").await;
    let mut data = c.epsv_connect().await;
    c.expect("STOR paused.bin", 150).await;
    let body: Vec<u8> = (0..2 * CHUNK + 3_000).map(|i| (i % 251) as u8).collect();
    // STAT is answered by the task that counted these bytes, after it went
    // on to the next chunk: the mark is up from here.
    data.write_all(&body[..CHUNK]).await.unwrap();
    c.stat_until(CHUNK).await;
    let mut sent = CHUNK;
    for end in [CHUNK + 1_000, 2 * CHUNK + 2_000, 2 * CHUNK + 3_000] {
        data.write_all(&body[sent..end]).await.unwrap();
        sent = end;
        c.stat_until(sent).await;
    }
    drop(data);
    assert_eq!(c.reply().await.code, 226);
    assert_eq!(std::fs::read(home.join("paused.bin")).unwrap(), body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_dies_mid_upload_leaves_nothing() {
    let server = common::start().await;
    let home = server.user("u", "pw-u-1").await;
    std::fs::write(home.join("keep.bin"), b"old content").unwrap();

    // 1. The control connection is cut first (client crashed), then the data one.
    for target in ["new.bin", "keep.bin"] {
        let mut c = server.login("u", "pw-u-1").await;
        let mut data = c.epsv_connect().await;
        c.expect(&format!("STOR {target}"), 150).await;
        data.write_all(&vec![1u8; 2_000_000]).await.unwrap();
        drop(c);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = data.shutdown().await;
        drop(data);
    }
    // 2. Both closed at once, as when a process is killed; a large upload
    // and a small one (its whole file within the start of one chunk).
    for (target, len) in [("killed.bin", 1_000_000), ("killed-small.bin", 20_000)] {
        let mut c = server.login("u", "pw-u-1").await;
        let mut data = c.epsv_connect().await;
        c.expect(&format!("STOR {target}"), 150).await;
        data.write_all(&vec![2u8; len]).await.unwrap();
        drop(c);
        drop(data);
    }
    // 3. The data connection is reset while the control connection stays.
    let mut c = server.login("u", "pw-u-1").await;
    let mut data = c.epsv_connect().await;
    c.expect("STOR reset.bin", 150).await;
    data.write_all(&vec![3u8; 1_000_000]).await.unwrap();
    data.set_zero_linger().unwrap();
    drop(data);
    let r = c.reply().await;
    assert_eq!(r.code, 426, "{}", r.text);
    c.expect("NOOP", 200).await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    for gone in ["new.bin", "killed.bin", "killed-small.bin", "reset.bin"] {
        assert!(!home.join(gone).exists(), "{gone} must not exist");
    }
    assert_eq!(
        std::fs::read(home.join("keep.bin")).unwrap(),
        b"old content",
        "the old file is untouched"
    );
    assert!(
        temporaries(&home).is_empty(),
        "no temporaries left: {:?}",
        temporaries(&home)
    );
    let (listing, r) = c.listing("LIST -a").await;
    assert_eq!(r.code, 226);
    assert!(!listing.contains(".dropgate"), "{listing}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stor_reply_226_comes_after_the_file_is_in_place() {
    let server = common::start().await;
    let home = server.user("u", "pw-u-1").await;
    let mut c = server.login("u", "pw-u-1").await;
    for i in 0..20u8 {
        let data = vec![i; 100_000 + usize::from(i) * 777];
        let r = c.stor("visible.bin", &data).await;
        assert_eq!(r.code, 226, "{}", r.text);
        // Right after 226: the final name holds the whole file.
        assert_eq!(
            std::fs::read(home.join("visible.bin")).unwrap(),
            data,
            "round {i}"
        );
    }
    server.stop().await;
}

/// The server closes an upload's data connection just after its 226 (not
/// before: see `transfer::Closing`): a client that only half-closed its side
/// and waits for the server's end gets it. It guards the deferred close (an
/// order that cannot be told apart from the client's side): the socket must
/// not be kept until the session ends. Downloads close theirs before 226.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_connection_is_closed_once_an_upload_is_answered() {
    let server = common::start().await;
    let home = server.user("u", "pw-u-1").await;
    let mut c = server.login("u", "pw-u-1").await;
    for i in 0..5u8 {
        let data = vec![i; 4096 + usize::from(i)];
        let mut d = c.epsv_connect().await;
        c.expect(&format!("STOR half-{i}.bin"), 150).await;
        d.write_all(&data).await.unwrap();
        // Half-closed: the client still reads.
        d.shutdown().await.unwrap();
        let r = c.reply().await;
        assert_eq!(r.code, 226, "{}", r.text);
        let mut rest = Vec::new();
        let n = tokio::time::timeout(WAIT, d.read_to_end(&mut rest))
            .await
            .expect("the server closed the data connection after its 226")
            .unwrap();
        assert_eq!(n, 0, "nothing is sent back on an upload's data connection");
        assert_eq!(
            std::fs::read(home.join(format!("half-{i}.bin"))).unwrap(),
            data
        );
    }
    // The session goes on as usual: a download after them.
    let (got, r) = c.retr("half-4.bin").await;
    assert_eq!(r.code, 226);
    assert_eq!(got, vec![4u8; 4100]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_refuse_with_550_without_leaking_paths() {
    let server = common::start().await;
    let mut user = User::new("partner");
    user.permissions = BTreeMap::from([
        ("/".to_owned(), BTreeSet::from([Permission::List])),
        (
            "/inbox".to_owned(),
            BTreeSet::from([Permission::List, Permission::Upload]),
        ),
    ]);
    server.tg.add_user_with(user, Some("pw-partner")).await;
    let home = server.home("partner");
    std::fs::create_dir(home.join("inbox")).unwrap();
    std::fs::write(home.join("report.csv"), b"a,b").unwrap();
    let mut c = server.login("partner", "pw-partner").await;
    let host_path = server.tg.dir.path().display().to_string();
    let mut replies = Vec::new();
    replies.push(c.stor("/top.txt", b"x").await);
    replies.push(c.retr("report.csv").await.1);
    replies.push(c.cmd("DELE report.csv").await);
    replies.push(c.cmd("MKD newdir").await);
    replies.push(c.expect("RNFR report.csv", 350).await);
    replies.push(c.cmd("RNTO renamed.csv").await);
    replies.push(c.cmd("MFMT 20200101000000 report.csv").await);
    replies.push(c.cmd("HASH report.csv").await);
    replies.push(c.retr("../../../../etc/passwd").await.1);
    replies.push(c.cmd("CWD /nonexistent").await);
    replies.push(c.cmd("SIZE /../../etc/hostname").await);
    replies.push(c.cmd("RETR \\..\\..\\etc\\passwd").await);
    for (i, r) in replies.iter().enumerate() {
        if i != 4 {
            assert_eq!(r.code, 550, "reply {i}: {}", r.text);
        }
        assert!(
            !r.text.contains(&host_path) && !r.text.contains("/tmp"),
            "leaks a host path: {}",
            r.text
        );
    }
    assert!(home.join("report.csv").exists() && !home.join("renamed.csv").exists());
    // What is allowed works, and the session is still fine.
    c.expect("CWD inbox", 250).await;
    assert_eq!(c.stor("drop.csv", b"1,2").await.code, 226);
    assert_eq!(std::fs::read(home.join("inbox/drop.csv")).unwrap(), b"1,2");
    let (_, r) = c.retr("drop.csv").await;
    assert_eq!(r.code, 550, "no download permission in the inbox");
    c.expect("NOOP", 200).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_quota_fails_with_552() {
    let server = common::start().await;
    let mut user = User::new("small");
    user.quota.max_bytes = 100_000;
    server.tg.add_user_with(user, Some("pw-small")).await;
    let home = server.home("small");
    let mut c = server.login("small", "pw-small").await;
    assert_eq!(c.stor("fits.bin", &[1u8; 60_000]).await.code, 226);
    let r = c.stor("too-big.bin", &vec![2u8; 3_000_000]).await;
    assert_eq!(r.code, 552, "{}", r.text);
    assert!(!home.join("too-big.bin").exists());
    assert!(temporaries(&home).is_empty());
    // Over by a file that arrives in one chunk (written by the commit).
    let r = c.stor("small-over.bin", &[4u8; 50_000]).await;
    assert_eq!(r.code, 552, "{}", r.text);
    assert!(!home.join("small-over.bin").exists());
    assert!(temporaries(&home).is_empty());
    // Nothing of the failed uploads counts: 40 000 bytes still fit.
    assert_eq!(c.stor("fits-too.bin", &[3u8; 39_000]).await.code, 226);
    c.expect("NOOP", 200).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pwd_and_mkd_quote_and_escape_names() {
    let server = common::start().await;
    let home = server.user("u", "pw-u-1").await;
    let mut c = server.login("u", "pw-u-1").await;
    let r = c.expect("MKD a\"b", 257).await;
    assert_eq!(r.text, "257 \"/a\"\"b\" created");
    c.expect("CWD a\"b", 250).await;
    let r = c.expect("PWD", 257).await;
    assert_eq!(r.text, "257 \"/a\"\"b\" is the current directory");
    c.expect("XPWD", 257).await;
    c.expect("CDUP", 250).await;
    // RFC 2640 lets a CR inside a name travel as CR NUL, but a name with a
    // line break would forge entries in line-based listings: refused.
    c.send_bytes(b"MKD cr\r\0name\r\n").await;
    let r = c.reply().await;
    assert_eq!(r.code, 553, "{r:?}");
    assert!(!home.join("cr\rname").exists());
    c.expect("XMKD plain", 257).await;
    c.expect("XRMD plain", 250).await;
    c.expect("CWD a\"b", 250).await;
    c.expect("XCUP", 250).await;
    c.expect("XCWD /a\"b", 250).await;
    let r = c.expect("PWD", 257).await;
    assert_eq!(r.text, "257 \"/a\"\"b\" is the current directory");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_get_421_timeout() {
    let server = common::start_with(Options {
        idle_timeout: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    server.user("u", "pw-u-1").await;
    let mut c = server.login("u", "pw-u-1").await;
    let started = tokio::time::Instant::now();
    let r = c.try_reply().await.expect("421 before close");
    assert_eq!(r.text, "421 Timeout.");
    assert!(started.elapsed() >= Duration::from_millis(900));
    c.expect_closed().await;
    // Before login too.
    let mut c = server.client().await;
    assert_eq!(c.try_reply().await.expect("421").code, 421);
    c.expect_closed().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_answer_421() {
    let server = common::start_with(Options {
        max_connections: 3,
        max_connections_per_ip: 2,
        ..Options::default()
    })
    .await;
    let a = server.client().await;
    let b = server.client().await;
    let mut c = common::Client::connect_raw(server.addr).await;
    let r = c.try_reply().await.expect("421");
    assert_eq!(r.text, "421 Too many connections.");
    c.expect_closed().await;
    drop(a);
    // The freed place can be used again (the server notices the close first).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut d = common::Client::connect_raw(server.addr).await;
        if d.try_reply().await.map(|r| r.code) == Some(220) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "place was not freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(b);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_or_account_cannot_hoard_the_passive_ports() {
    // 16 ports: a holder's share is 4 (a quarter of the range).
    let server = common::start_with(Options {
        passive_ports: Some(47970..=47985),
        ..Options::default()
    })
    .await;
    server.user("hoarder", "pw-h-1").await;
    server.user("other", "pw-o-1").await;
    server.user("third", "pw-t-1").await;
    let login_from = async |from: &str, user: &str, password: &str| {
        let stream = connect_from(Some(from), server.addr).await;
        let (r, w) = stream.into_split();
        let mut c = common::Client {
            r: tokio::io::BufReader::new(r),
            w,
            peer: server.addr,
        };
        assert_eq!(c.reply().await.code, 220);
        c.login(user, password).await;
        c
    };
    // PASV after PASV on many sessions, never connecting.
    let mut hoarding = Vec::new();
    for _ in 0..4 {
        let mut c = login_from("127.0.0.1", "hoarder", "pw-h-1").await;
        c.expect("EPSV", 229).await;
        hoarding.push(c);
    }
    let mut fifth = login_from("127.0.0.1", "hoarder", "pw-h-1").await;
    let r = fifth.expect("EPSV", 425).await;
    assert!(r.text.contains("Too many passive"), "{}", r.text);
    // The same address under another account, and the account from another
    // address, are refused too...
    let mut same_source = login_from("127.0.0.1", "other", "pw-o-1").await;
    same_source.expect("PASV", 425).await;
    let mut same_account = login_from("127.0.0.2", "hoarder", "pw-h-1").await;
    same_account.expect("EPSV", 425).await;
    // ...while everyone else transfers.
    let home = server.home("third");
    std::fs::write(home.join("f"), b"still served").unwrap();
    let mut third = login_from("127.0.0.2", "third", "pw-t-1").await;
    let port = third.epsv().await;
    let mut data = connect_from(
        Some("127.0.0.2"),
        std::net::SocketAddr::new(server.addr.ip(), port),
    )
    .await;
    third.send("RETR f").await;
    assert_eq!(third.reply().await.code, 150);
    let mut got = Vec::new();
    data.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"still served");
    assert_eq!(third.reply().await.code, 226);
    // A session that moves on gives its port back.
    hoarding[0].expect("QUIT", 221).await;
    drop(hoarding.remove(0));
    let deadline = tokio::time::Instant::now() + WAIT;
    while fifth.cmd("EPSV").await.code != 229 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "port not given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ports_are_not_leaked() {
    // Two ports for everything: any leak shows up as a 425. Above the
    // kernel's ephemeral range (32768-60999), so no client socket of a
    // test running alongside can be sitting on one of them.
    let server = common::start_with(Options {
        passive_ports: Some(61990..=61991),
        ..Options::default()
    })
    .await;
    let home = server.user("u", "pw-u-1").await;
    std::fs::write(home.join("f"), b"x").unwrap();
    for round in 0..15 {
        let mut c = server.login("u", "pw-u-1").await;
        // Prepared and replaced, prepared and used, prepared and abandoned.
        c.expect("PASV", 227).await;
        c.expect("EPSV", 229).await;
        let (got, r) = c.retr("f").await;
        assert_eq!((got.as_slice(), r.code), (&b"x"[..], 226), "round {round}");
        let (_, r) = c.listing("NLST").await;
        assert_eq!(r.code, 226);
        c.expect("EPSV", 229).await;
        if round % 2 == 0 {
            c.expect("QUIT", 221).await;
        }
        drop(c);
    }
    // All of them come back once the sessions are gone.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut c = server.login("u", "pw-u-1").await;
    loop {
        let a = c.cmd("EPSV").await;
        if a.code == 229 {
            let mut c2 = server.login("u", "pw-u-1").await;
            let b = c2.cmd("EPSV").await;
            if b.code == 229 {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ports leaked: {}",
            a.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_and_kick_say_421() {
    let server = common::start().await;
    server.user("u", "pw-u-1").await;
    let mut kicked = server.login("u", "pw-u-1").await;
    let mut waiting = server.login("u", "pw-u-1").await;
    let mut anonymous = server.client().await;

    let sessions = server.tg.gateway.sessions().list();
    assert_eq!(sessions.len(), 2);
    assert!(server.tg.gateway.sessions().disconnect(&sessions[0].id));
    // Which of the two was first is not known: one of them gets the 421.
    let (r1, r2) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(2), kicked.try_reply()),
        tokio::time::timeout(Duration::from_secs(2), waiting.try_reply())
    );
    let kicked_replies: Vec<_> = [r1, r2]
        .into_iter()
        .filter_map(|r| r.ok().flatten())
        .collect();
    assert_eq!(kicked_replies.len(), 1);
    assert_eq!(
        kicked_replies[0].text,
        "421 Session closed by the administrator."
    );

    server.shutdown.cancel();
    let r = anonymous.try_reply().await.expect("421 on shutdown");
    assert_eq!(r.text, "421 Server shutting down.");
    anonymous.expect_closed().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ascii_mode_converts_line_ends() {
    let server = common::start().await;
    let home = server.user("u", "pw-u-1").await;
    let mut c = server.login("u", "pw-u-1").await;
    c.expect("TYPE A", 200).await;
    assert_eq!(
        c.stor("dos.txt", b"one\r\ntwo\r\nlone\rcr\r\n").await.code,
        226
    );
    assert_eq!(
        std::fs::read(home.join("dos.txt")).unwrap(),
        b"one\ntwo\nlone\rcr\n"
    );
    std::fs::write(home.join("unix.txt"), b"a\nb\r\nc\n").unwrap();
    let (got, r) = c.retr("unix.txt").await;
    assert_eq!((got.as_slice(), r.code), (&b"a\r\nb\r\nc\r\n"[..], 226));
    // SIZE reports the stored size even in ASCII mode (as vsftpd).
    assert_eq!(c.expect("SIZE unix.txt", 213).await.text, "213 7");
    c.expect("TYPE I", 200).await;
    let (got, _) = c.retr("unix.txt").await;
    assert_eq!(got, b"a\nb\r\nc\n");
    c.expect("TYPE L 8", 200).await;
    c.expect("TYPE E", 504).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_and_file_commands() {
    let server = common::start().await;
    let home = server.user("u", "pw-u-1").await;
    std::fs::write(home.join("f.txt"), b"hello").unwrap();
    let mut c = server.login("u", "pw-u-1").await;

    let feat = c.expect("FEAT", 211).await.text;
    for f in [
        " EPRT",
        " EPSV",
        " HASH SHA-256*",
        " MDTM",
        " MFMT",
        " MLST type*;size*;modify*;perm*;unique*;",
        " PASV",
        " REST STREAM",
        " SIZE",
        " TVFS",
        " UTF8",
    ] {
        assert!(feat.lines().any(|l| l == f), "FEAT lacks {f:?}:\n{feat}");
    }
    assert!(!feat.contains("AUTH"), "no TLS yet");
    assert_eq!(c.expect("SYST", 215).await.text, "215 UNIX Type: L8");
    c.expect("HELP", 214).await;
    c.expect("SITE HELP", 214).await;
    c.expect("SITE CHMOD 777 f.txt", 500).await;
    let stat = c.expect("STAT", 211).await.text;
    assert!(
        stat.contains("Logged in as u") && stat.ends_with("211 End of status"),
        "{stat}"
    );
    c.expect("MODE S", 200).await;
    c.expect("MODE B", 504).await;
    c.expect("STRU F", 200).await;
    c.expect("STRU R", 504).await;
    c.expect("ALLO 1000", 202).await;
    c.expect("ACCT x", 202).await;
    c.expect("OPTS UTF8 ON", 200).await;
    assert_eq!(
        c.expect("OPTS MLST size;modify;", 200).await.text,
        "200 MLST OPTS size;modify;"
    );
    assert!(
        c.expect("FEAT", 211)
            .await
            .text
            .contains(" MLST type;size*;modify*;perm;unique;")
    );
    c.expect("OPTS BOGUS", 501).await;
    c.expect("AUTH TLS", 502).await;
    c.expect("AUTH SSL", 502).await;
    c.expect("PBSZ 0", 200).await;
    c.expect("PROT P", 536).await;
    c.expect("PROT C", 200).await;
    c.expect("FROB", 500).await;
    c.expect("CWD", 501).await;

    assert_eq!(c.expect("SIZE f.txt", 213).await.text, "213 5");
    c.expect("SIZE nope.txt", 550).await;
    c.expect("MKD d", 257).await;
    c.expect("SIZE d", 550).await;
    c.expect("MFMT 20010203040506 f.txt", 213).await;
    assert_eq!(c.expect("MDTM f.txt", 213).await.text, "213 20010203040506");
    c.expect("MFMT 2001 f.txt", 501).await;
    let hash = c.expect("HASH f.txt", 213).await.text;
    assert_eq!(
        hash,
        format!("213 SHA-256 0-5 {} f.txt", common::sha256_hex(b"hello"))
    );
    let mlst = c.expect("MLST f.txt", 250).await.text;
    let lines: Vec<&str> = mlst.lines().collect();
    assert_eq!(lines.len(), 3, "{mlst}");
    assert_eq!(lines[1], " size=5;modify=20010203040506; /f.txt");
    c.expect("OPTS MLST type;size;modify;perm;unique;", 200)
        .await;

    // Rename: RNFR checks the source exists; RNTO replaces a target.
    c.expect("RNFR nope.txt", 550).await;
    c.expect("RNTO x", 503).await;
    std::fs::write(home.join("g.txt"), b"old").unwrap();
    c.expect("RNFR f.txt", 350).await;
    c.expect("RNTO g.txt", 250).await;
    assert_eq!(std::fs::read(home.join("g.txt")).unwrap(), b"hello");
    c.expect("RNFR g.txt", 350).await;
    c.expect("NOOP", 200).await;
    c.expect("RNTO h.txt", 503).await;

    // STOU picks a fresh name; a second one does not overwrite.
    for expected in ["up.txt", "up.txt.1"] {
        let mut d = c.epsv_connect().await;
        let r = c.expect("STOU up.txt", 150).await;
        assert!(r.text.contains(&format!("FILE: {expected}")), "{}", r.text);
        d.write_all(expected.as_bytes()).await.unwrap();
        drop(d);
        assert_eq!(c.reply().await.code, 226);
        assert_eq!(
            std::fs::read(home.join(expected)).unwrap(),
            expected.as_bytes()
        );
    }

    // Listings.
    let (list, r) = c.listing("LIST").await;
    assert_eq!(r.code, 226);
    let up = list
        .lines()
        .find(|l| l.ends_with(" up.txt"))
        .unwrap_or_else(|| panic!("{list}"));
    let fields: Vec<&str> = up.split_whitespace().collect();
    assert!(fields[0].starts_with("-rw"), "{up}");
    assert_eq!(fields[4], "6", "{up}");
    assert_eq!(fields[7].len(), 5, "recent files show HH:MM: {up}");
    assert!(
        list.lines()
            .any(|l| l.starts_with('d') && l.ends_with(" d")),
        "{list}"
    );
    let (one, _) = c.listing("LIST -la g.txt").await;
    assert_eq!(one.lines().count(), 1, "{one}");
    let old = home.join("old.txt");
    std::fs::write(&old, b"o").unwrap();
    c.expect("MFMT 20010203040506 old.txt", 213).await;
    let (one, _) = c.listing("LIST old.txt").await;
    assert!(
        one.contains("Feb  3  2001 old.txt"),
        "old files show the year: {one}"
    );
    let (names, _) = c.listing("NLST").await;
    let mut names: Vec<&str> = names.lines().collect();
    names.sort();
    assert_eq!(names, ["d", "g.txt", "old.txt", "up.txt", "up.txt.1"]);
    let (mlsd, _) = c.listing("MLSD").await;
    assert!(
        mlsd.lines()
            .any(|l| l.starts_with("type=dir;") && l.ends_with("; d")),
        "{mlsd}"
    );
    let (_, r) = c.listing("MLSD g.txt").await;
    assert_eq!(r.code, 501);
    let stat = c.expect("STAT .", 213).await.text;
    assert!(stat.lines().any(|l| l.ends_with(" g.txt")), "{stat}");
    assert!(stat.ends_with("213 End of status."), "{stat}");

    c.expect("DELE d", 550).await;
    c.expect("RMD d", 250).await;
    c.expect("RMD d", 550).await;
    c.expect("DELE g.txt", 250).await;
    c.expect("REST 10", 350).await;
    c.expect("REST x", 501).await;
    c.expect("REIN", 220).await;
    c.expect("PWD", 530).await;
    c.login("u", "pw-u-1").await;
    c.expect("QUIT", 221).await;
    c.expect_closed().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_address_is_announced() {
    let server = common::start_with(Options {
        passive_address: Some("localhost".into()),
        ..Options::default()
    })
    .await;
    server.user("u", "pw-u-1").await;
    let mut c = server.login("u", "pw-u-1").await;
    assert_eq!(c.pasv().await.ip().to_string(), "127.0.0.1");
    server.stop().await;
    let server = common::start_with(Options {
        passive_address: Some("203.0.113.9".into()),
        ..Options::default()
    })
    .await;
    server.user("u", "pw-u-1").await;
    let mut c = server.login("u", "pw-u-1").await;
    assert_eq!(c.pasv().await.ip().to_string(), "203.0.113.9");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_and_append_over_raw_commands() {
    for mode in [
        UploadMode::Atomic,
        UploadMode::AtomicResume,
        UploadMode::Direct,
    ] {
        let server = common::start_with(Options {
            upload_mode: mode,
            ..Options::default()
        })
        .await;
        let home = server.user("u", "pw-u-1").await;
        let mut c = server.login("u", "pw-u-1").await;
        assert_eq!(c.stor("r.bin", b"0123456789").await.code, 226);
        c.expect("REST 4", 350).await;
        assert_eq!(c.stor("r.bin", b"abcdefgh").await.code, 226);
        assert_eq!(
            std::fs::read(home.join("r.bin")).unwrap(),
            b"0123abcdefgh",
            "{mode:?}"
        );
        c.expect("REST 100", 350).await;
        let r = c.stor("r.bin", b"x").await;
        assert_eq!(r.code, 554, "{mode:?}: {}", r.text);
        let mut d = c.epsv_connect().await;
        c.expect("APPE r.bin", 150).await;
        d.write_all(b"!").await.unwrap();
        drop(d);
        assert_eq!(c.reply().await.code, 226);
        assert_eq!(
            std::fs::read(home.join("r.bin")).unwrap(),
            b"0123abcdefgh!",
            "{mode:?}"
        );
        c.expect("REST 8", 350).await;
        let (got, r) = c.retr("r.bin").await;
        assert_eq!((got.as_slice(), r.code), (&b"efgh!"[..], 226));
        c.expect("REST 14", 350).await;
        let (_, r) = c.retr("r.bin").await;
        assert_eq!(r.code, 554);
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_during_an_upload_lets_it_finish() {
    let server = common::start().await;
    let home = server.user("u", "pw-u-1").await;
    let mut c = server.login("u", "pw-u-1").await;
    let mut data = c.epsv_connect().await;
    c.expect("STOR polite.bin", 150).await;
    data.write_all(&[5u8; 500_000]).await.unwrap();
    // QUIT first, then the end of the data, then the client goes away.
    c.send("QUIT").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    data.shutdown().await.unwrap();
    drop(data);
    let r = c.reply().await;
    assert_eq!(r.code, 226, "{}", r.text);
    assert_eq!(c.reply().await.code, 221);
    c.expect_closed().await;
    assert_eq!(
        std::fs::read(home.join("polite.bin")).unwrap(),
        vec![5u8; 500_000]
    );

    // The same, with the control connection closed right after QUIT.
    let mut c = server.login("u", "pw-u-1").await;
    let mut data = c.epsv_connect().await;
    c.expect("STOR gone.bin", 150).await;
    data.write_all(&[6u8; 500_000]).await.unwrap();
    c.send("QUIT").await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    data.shutdown().await.unwrap();
    drop(data);
    let deadline = tokio::time::Instant::now() + WAIT;
    while std::fs::read(home.join("gone.bin")).ok() != Some(vec![6u8; 500_000]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upload was not committed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_idle_timeout_means_none() {
    let server = common::start_with(Options {
        idle_timeout: Duration::ZERO,
        ..Options::default()
    })
    .await;
    let home = server.user("u", "pw-u-1").await;
    std::fs::write(home.join("f"), b"still here").unwrap();
    let mut c = server.login("u", "pw-u-1").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.expect("NOOP", 200).await;
    let (got, r) = c.retr("f").await;
    assert_eq!((got.as_slice(), r.code), (&b"still here"[..], 226));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_folders_are_listed_completely() {
    const N: usize = 20_000;
    let server = common::start().await;
    let home = server.user("u", "pw-u-1").await;
    std::fs::create_dir(home.join("many")).unwrap();
    for i in 0..N {
        std::fs::File::create(home.join("many").join(format!("entry-{i:06}.dat"))).unwrap();
    }
    let mut c = server.login("u", "pw-u-1").await;
    let (list, r) = c.listing("LIST many").await;
    assert_eq!(r.code, 226);
    assert_eq!(list.lines().count(), N);
    assert!(
        list.lines()
            .all(|l| l.starts_with("-rw") && l.contains(" entry-")),
        "LIST lines"
    );
    let (names, _) = c.listing("NLST many").await;
    let set: BTreeSet<&str> = names.lines().collect();
    assert_eq!(set.len(), N);
    assert!(set.contains("entry-019999.dat"));
    let (mlsd, _) = c.listing("MLSD many").await;
    assert_eq!(
        mlsd.lines()
            .filter(|l| l.starts_with("type=file;size=0;"))
            .count(),
        N
    );
    let stat = c.expect("STAT many", 213).await.text;
    assert_eq!(stat.lines().count(), N + 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abor_racing_the_end_of_an_upload_never_hangs() {
    let server = common::start().await;
    let home = server.user("u", "pw-u-1").await;
    let mut c = server.login("u", "pw-u-1").await;
    let started = tokio::time::Instant::now();
    for i in 0..20 {
        let name = format!("race-{i}.bin");
        let mut data = c.epsv_connect().await;
        c.expect(&format!("STOR {name}"), 150).await;
        data.write_all(&[9u8; 200_000]).await.unwrap();
        data.shutdown().await.unwrap();
        drop(data);
        c.send("ABOR").await;
        let first = c.reply().await;
        let second = c.reply().await;
        assert_eq!(
            second.code, 226,
            "round {i}: {} / {}",
            first.text, second.text
        );
        match first.code {
            // Aborted: nothing under the final name.
            426 => assert!(!home.join(&name).exists(), "round {i}"),
            // Completed before the abort: the whole file.
            226 => assert_eq!(
                std::fs::read(home.join(&name)).unwrap().len(),
                200_000,
                "round {i}"
            ),
            other => panic!("round {i}: unexpected {other}: {}", first.text),
        }
        c.expect("NOOP", 200).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "an ABOR stalled: {:?}",
        started.elapsed()
    );
    assert!(temporaries(&home).is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_only_drop_box_is_usable() {
    let server = common::start().await;
    let mut user = User::new("dropper");
    user.permissions = BTreeMap::from([
        ("/".to_owned(), BTreeSet::new()),
        ("/inbox".to_owned(), BTreeSet::from([Permission::Upload])),
    ]);
    server.tg.add_user_with(user, Some("pw-dropper")).await;
    let home = server.home("dropper");
    std::fs::create_dir(home.join("inbox")).unwrap();
    std::fs::create_dir(home.join("other")).unwrap();
    let mut c = server.login("dropper", "pw-dropper").await;
    let (_, r) = c.listing("LIST").await;
    assert_eq!(r.code, 550, "no list on /: {}", r.text);
    c.expect("CWD other", 550).await;
    c.expect("CWD inbox", 250).await;
    assert_eq!(c.stor("dropped.csv", b"x;y").await.code, 226);
    assert_eq!(
        std::fs::read(home.join("inbox/dropped.csv")).unwrap(),
        b"x;y"
    );
    let r = c.stor("dropped.csv", b"again").await;
    assert_eq!(r.code, 550, "no overwrite permission: {}", r.text);
    let (_, r) = c.retr("dropped.csv").await;
    assert_eq!(r.code, 550);
    c.expect("CDUP", 250).await;
    c.expect("PWD", 257).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abor_stops_a_rate_limited_download_at_once() {
    let server = common::start().await;
    let mut user = User::new("slow");
    user.bandwidth.download_kib_s = 16;
    server.tg.add_user_with(user, Some("pw-s-1")).await;
    std::fs::write(server.home("slow").join("big.bin"), vec![7u8; 1 << 20]).unwrap();
    let mut c = server.login("slow", "pw-s-1").await;
    let d = c.epsv_connect().await;
    c.expect("RETR big.bin", 150).await;
    // The first 64 KiB wait about 4 s for a 16 KiB/s limit: ABOR comes
    // during that wait and must not wait it out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    abor_answered_at_once(&mut c).await;
    c.expect("NOOP", 200).await;
    drop(d);
    server.stop().await;
}

/// A large zero-copy download (many `sendfile` calls, each after the
/// socket became writable again) arrives whole and in order, from a REST
/// offset too, with STAT and the sessions list counting as it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_download_arrives_whole_and_is_counted_as_it_goes() {
    let server = common::start().await;
    let home = server.user("u", "pw-u-1").await;
    let data = dropgate_testkit::write_random_file(&home.join("big.bin"), 40 << 20, 9);
    let mut c = server.login("u", "pw-u-1").await;
    let (got, r) = c.retr("big.bin").await;
    assert_eq!(r.code, 226, "{}", r.text);
    assert!(
        got == data,
        "{} of {} bytes, or not the same",
        got.len(),
        data.len()
    );
    let from = (20 << 20) + 3;
    c.expect(&format!("REST {from}"), 350).await;
    let (got, r) = c.retr("big.bin").await;
    assert_eq!(r.code, 226, "{}", r.text);
    assert!(got == data[from..], "{} bytes from {from}", got.len());

    // Progress while it runs: read 32 MiB of a 1 GiB file, then both
    // counts are at least that.
    huge_file(&home);
    let mut d = c.epsv_connect().await;
    c.expect("RETR huge.bin", 150).await;
    let mut buf = vec![0u8; 32 << 20];
    d.read_exact(&mut buf).await.unwrap();
    let r = c.expect("STAT", 213).await;
    let counted: u64 = r
        .text
        .split(" bytes so far")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {:?}", r.text));
    assert!(counted >= 32 << 20, "{}", r.text);
    let listed = server.tg.gateway.sessions().list();
    let bytes = listed
        .iter()
        .find_map(|s| s.transfer.as_ref())
        .map(|t| t.bytes)
        .expect("the download in the sessions list");
    assert!(bytes >= 32 << 20, "{bytes}");
    c.expect("ABOR", 426).await;
    assert_eq!(c.reply().await.code, 226);
    drop(d);
    server.stop().await;
}

/// ABOR while the download waits for a full socket (the client stopped
/// reading): answered at once, twice in a row, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abor_wakes_a_download_blocked_on_a_full_socket() {
    let server = common::start().await;
    let home = server.user("u", "pw-u-1").await;
    huge_file(&home);
    let mut c = server.login("u", "pw-u-1").await;
    for _ in 0..2 {
        let mut d = c.epsv_connect().await;
        c.expect("RETR huge.bin", 150).await;
        let mut buf = vec![0u8; 24 << 20];
        d.read_exact(&mut buf).await.unwrap();
        // Both socket buffers fill: the sender waits for room.
        tokio::time::sleep(Duration::from_millis(500)).await;
        abor_answered_at_once(&mut c).await;
        // The data connection ends (no more than what was buffered).
        let rest = tokio::time::timeout(WAIT, async {
            let mut n = 0usize;
            loop {
                match d.read(&mut buf).await {
                    Ok(0) | Err(_) => return n,
                    Ok(k) => n += k,
                }
            }
        })
        .await
        .expect("the data connection closed");
        assert!(rest < 64 << 20, "{rest} bytes after ABOR");
        c.expect("NOOP", 200).await;
    }
    server.stop().await;
}

/// A client that stops reading a large download meets the idle limit:
/// 426, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_large_download_fails_after_the_idle_limit() {
    let server = common::start_with(Options {
        idle_timeout: Duration::from_secs(2),
        ..Options::default()
    })
    .await;
    let home = server.user("u", "pw-u-1").await;
    huge_file(&home);
    let mut c = server.login("u", "pw-u-1").await;
    let d = c.epsv_connect().await;
    c.expect("RETR huge.bin", 150).await;
    let started = Instant::now();
    let r = c.reply().await;
    let took = started.elapsed();
    assert_eq!(r.code, 426, "{}", r.text);
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(9),
        "426 after {took:?}"
    );
    c.expect("NOOP", 200).await;
    drop(d);
    server.stop().await;
}

/// More large downloads at once than the runtime has workers, all started
/// before any is read: every one arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_large_downloads_all_arrive_whole() {
    let server = common::start().await;
    let home = server.user("u", "pw-u-1").await;
    let data = dropgate_testkit::write_random_file(&home.join("big.bin"), 20 << 20, 11);
    let mut clients = Vec::new();
    for _ in 0..6 {
        let mut c = server.login("u", "pw-u-1").await;
        let d = c.epsv_connect().await;
        c.expect("RETR big.bin", 150).await;
        clients.push((c, d));
    }
    // All have started (each sent its first socketful) before any is read.
    let mut reads = tokio::task::JoinSet::new();
    for (mut c, mut d) in clients {
        reads.spawn(async move {
            let mut got = Vec::new();
            tokio::time::timeout(WAIT, d.read_to_end(&mut got))
                .await
                .expect("data in time")
                .expect("read data");
            (got, c.reply().await.code)
        });
    }
    for (got, code) in reads.join_all().await {
        assert_eq!(code, 226);
        assert!(
            got == data,
            "{} of {} bytes, or not the same",
            got.len(),
            data.len()
        );
    }
    server.stop().await;
}

/// The client goes away in the middle of a large download, data connection
/// first (426), then both at once, several times: every session ends, and
/// a download after them is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_download_ends_its_session() {
    let server = common::start().await;
    let home = server.user("u", "pw-u-1").await;
    huge_file(&home);
    let mut buf = vec![0u8; 20 << 20];
    let mut c = server.login("u", "pw-u-1").await;
    let mut d = c.epsv_connect().await;
    c.expect("RETR huge.bin", 150).await;
    d.read_exact(&mut buf).await.unwrap();
    d.set_zero_linger().unwrap();
    drop(d);
    assert_eq!(c.reply().await.code, 426);
    c.expect("NOOP", 200).await;
    drop(c);
    for _ in 0..4 {
        let mut c = server.login("u", "pw-u-1").await;
        let mut d = c.epsv_connect().await;
        c.expect("RETR huge.bin", 150).await;
        d.read_exact(&mut buf).await.unwrap();
        drop(c);
        drop(d);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while !server.tg.gateway.sessions().list().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sessions left: {}",
            server.tg.gateway.sessions().list().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And a large download after them is whole.
    let data = dropgate_testkit::write_random_file(&home.join("big.bin"), 20 << 20, 12);
    let mut c = server.login("u", "pw-u-1").await;
    let (got, r) = c.retr("big.bin").await;
    assert_eq!(r.code, 226);
    assert!(got == data);
    server.stop().await;
}

/// A sparse 1 GiB `huge.bin` in `home`: a download far from done whenever
/// the test acts.
fn huge_file(home: &std::path::Path) {
    std::fs::File::create(home.join("huge.bin"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
}

/// Sends ABOR during a transfer: 426 for the transfer, then 226, within
/// two seconds.
async fn abor_answered_at_once(c: &mut common::Client) {
    let started = Instant::now();
    c.send("ABOR").await;
    assert_eq!(c.reply().await.code, 426);
    assert_eq!(c.reply().await.code, 226);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "ABOR answered after {took:?}"
    );
}
