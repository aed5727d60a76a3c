//! A throwaway FTP server for trying clients by hand and for quick speed
//! checks: a temporary gateway (deleted on exit) with one account.
//!
//! ```text
//! cargo run -p dropgate-ftp --example serve -- [PORT] [USER] [PASSWORD]
//! ```
//! Prints the address and the account's home folder; stops on Ctrl-C.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use dropgate_ftp::{FtpConfig, FtpServer};
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

    let tg = TestGateway::new().await;
    tg.add_user(&user, &password).await;
    let config = FtpConfig {
        listen: vec![format!("127.0.0.1:{port}").parse().unwrap()],
        passive_ports: 41000..=41999,
        passive_address: None,
        active_mode: true,
        idle_timeout: Duration::from_secs(300),
        banner: "dropgate ready".into(),
        max_connections: 2000,
        max_connections_per_ip: 500,
    };
    let server = FtpServer::bind(config, tg.gateway.clone())
        .await
        .expect("bind");
    println!(
        "listening on {:?}; user {user}, home {}",
        server.local_addrs(),
        tg.home(&user).display()
    );
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(server.run(shutdown.clone()));
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
    let _ = run.await;
    tg.gateway.shutdown().await;
}
