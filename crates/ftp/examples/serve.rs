//! A throwaway FTP server for trying clients by hand and for quick speed
//! checks: a temporary gateway (deleted on exit) with one account. Explicit
//! FTPS (`AUTH TLS`, optional) is on with a generated self-signed
//! certificate, and implicit FTPS listens on a free port (printed).
//!
//! ```text
//! cargo run -p dropgate-ftp --example serve -- [PORT] [USER] [PASSWORD]
//! ```
//! Prints the addresses and the account's home folder; stops on Ctrl-C.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use dropgate_ftp::{FtpConfig, FtpServer, FtpsTls, TlsMode, TlsSettings};
use dropgate_testkit::TestGateway;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .map(|p| p.parse().expect("PORT"))
        .unwrap_or(2121);
    let user = args.next().unwrap_or_else(|| "bench".into());
    let password = args.next().unwrap_or_else(|| "bench".into());

    let tg = TestGateway::with_config(|c| c.admission.max_connections_per_source = 500).await;
    tg.add_user(&user, &password).await;
    let tls = FtpsTls::load(TlsSettings {
        cert: None,
        key: None,
        data_dir: tg.dir.path().join("data"),
        require_session_reuse: true,
        tls12_only: false,
    })
    .expect("FTPS certificate");
    let config = FtpConfig {
        listen: vec![format!("127.0.0.1:{port}").parse().unwrap()],
        passive_ports: 41000..=41999,
        passive_address: None,
        active_mode: true,
        idle_timeout: Duration::from_secs(300),
        banner: "dropgate ready".into(),
        tls: Some(tls),
        tls_mode: TlsMode::Optional,
        implicit_tls: false,
    };
    let implicit = FtpConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        passive_ports: 42000..=42999,
        implicit_tls: true,
        ..config.clone()
    };
    let server = FtpServer::bind(config, tg.gateway.clone())
        .await
        .expect("bind");
    let implicit = FtpServer::bind(implicit, tg.gateway.clone())
        .await
        .expect("bind implicit FTPS");
    println!(
        "listening on {:?} (FTP, explicit FTPS) and {:?} (implicit FTPS); user {user}, home {}",
        server.local_addrs(),
        implicit.local_addrs(),
        tg.home(&user).display()
    );
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(server.run(shutdown.clone()));
    let run_implicit = tokio::spawn(implicit.run(shutdown.clone()));
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
    let _ = run.await;
    let _ = run_implicit.await;
    tg.gateway.shutdown().await;
}
