//! SFTP sessions: russh client (aws-lc-rs), password authentication, the
//! `sftp` subsystem driven by russh-sftp's client (pipelined reads and
//! writes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, AuthResult, Handle};
use russh::keys::PublicKeyOrCertificate;
use russh_sftp::client::SftpSession;
use tokio::io::AsyncWriteExt;

use crate::content;

/// The client configuration every SFTP session shares.
pub(crate) fn client_config() -> Arc<client::Config> {
    Arc::new(client::Config {
        nodelay: true,
        ..client::Config::default()
    })
}

/// Accepts the server's host key: the load generator talks only to a
/// gateway on loopback that the operator started for it (its keys are made
/// on first start), and checks files, not identities.
struct Trusting;

impl client::Handler for Trusting {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// One logged-in SSH connection with its SFTP channel.
pub(crate) struct SftpConn {
    ssh: Handle<Trusting>,
    sftp: SftpSession,
}

impl SftpConn {
    pub(crate) async fn connect(
        addr: SocketAddr,
        config: Arc<client::Config>,
        user: &str,
        password: &str,
        request_timeout: Duration,
    ) -> Result<SftpConn, String> {
        let mut ssh = client::connect(config, addr, Trusting)
            .await
            .map_err(|e| err("SSH connect", e))?;
        match ssh
            .authenticate_password(user, password)
            .await
            .map_err(|e| err("SSH auth", e))?
        {
            AuthResult::Success => {}
            AuthResult::Failure { .. } => return Err("SSH auth: password refused".into()),
        }
        let channel = ssh
            .channel_open_session()
            .await
            .map_err(|e| err("SSH channel", e))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| err("sftp subsystem", e))?;
        let sftp = SftpSession::new(channel.into_stream())
            .await
            .map_err(|e| err("SFTP init", e))?;
        sftp.set_timeout(request_timeout.as_secs().max(1));
        Ok(SftpConn { ssh, sftp })
    }

    pub(crate) async fn mkdir(&mut self, path: &str) -> Result<(), String> {
        self.sftp
            .create_dir(path)
            .await
            .map_err(|e| err("MKDIR", e))
    }

    pub(crate) async fn rmdir(&mut self, path: &str) -> Result<(), String> {
        self.sftp
            .remove_dir(path)
            .await
            .map_err(|e| err("RMDIR", e))
    }

    pub(crate) async fn delete(&mut self, path: &str) -> Result<(), String> {
        self.sftp
            .remove_file(path)
            .await
            .map_err(|e| err("REMOVE", e))
    }

    /// OPEN (create, truncate), WRITEs, CLOSE: the SHA-256 of what was sent
    /// once the server has acknowledged every write and the close.
    pub(crate) async fn upload(
        &mut self,
        path: &str,
        seed: u64,
        size: u64,
    ) -> Result<[u8; 32], String> {
        let mut file = self.sftp.create(path).await.map_err(|e| err("OPEN", e))?;
        let digest = content::write(&mut file, seed, size)
            .await
            .map_err(|e| err("WRITE", e))?;
        file.shutdown().await.map_err(|e| err("CLOSE", e))?;
        Ok(digest)
    }

    /// OPEN, READs to the end, CLOSE: (bytes, SHA-256).
    pub(crate) async fn download(&mut self, path: &str) -> Result<(u64, [u8; 32]), String> {
        let mut file = self.sftp.open(path).await.map_err(|e| err("OPEN", e))?;
        let got = content::read(&mut file).await.map_err(|e| err("READ", e))?;
        file.shutdown().await.map_err(|e| err("CLOSE", e))?;
        Ok(got)
    }

    /// OPENDIR/READDIR: (name, size) of the regular files.
    pub(crate) async fn list(&mut self, dir: &str) -> Result<Vec<(String, u64)>, String> {
        let entries = self
            .sftp
            .read_dir(dir)
            .await
            .map_err(|e| err("READDIR", e))?;
        Ok(entries
            .filter(|e| e.file_type().is_file())
            .map(|e| (e.file_name(), e.metadata().len()))
            .collect())
    }

    /// Closes the SFTP channel and disconnects.
    pub(crate) async fn quit(self) -> Result<(), String> {
        self.sftp.close().await.map_err(|e| err("SFTP close", e))?;
        self.ssh
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await
            .map_err(|e| err("SSH disconnect", e))
    }
}
