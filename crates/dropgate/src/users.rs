//! `dropgate user …` and `dropgate admin …`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use dropgate_core::{AccountError, Gateway, GatewayConfig, PasswordChange};
use dropgate_store::{Permission, Store, StoreError, User};

use crate::CliError;
use crate::config::Effective;

#[derive(Subcommand)]
pub(crate) enum UserCommand {
    /// Create an account.
    Add {
        /// Account name: 1-64 of [A-Za-z0-9._-].
        name: String,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        /// OpenSSH public key file (repeatable).
        #[arg(long = "key", value_name = "PUBKEY_FILE")]
        keys: Vec<PathBuf>,
        /// Home folder below the storage root (default: the name).
        #[arg(long)]
        home: Option<String>,
        /// Permissions on a path, e.g. /inbox=list,upload (repeatable; default /=*).
        #[arg(long = "perm", value_name = "PATH=PERM,PERM")]
        perms: Vec<String>,
        /// Storage quota in bytes (0: unlimited).
        #[arg(long)]
        quota_bytes: Option<u64>,
        /// Create the account disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// List accounts.
    List,
    /// Show one account as JSON.
    Show { name: String },
    /// Delete an account (its files are kept) and end its live sessions.
    Delete { name: String },
    /// Count what an account's home holds from disk, as the quota counts it.
    Rescan { name: String },
    /// Set a new password.
    Passwd {
        name: String,
        /// Read the password from standard input.
        #[arg(long, required = true)]
        password_stdin: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum AdminCommand {
    /// Create an administrator.
    Add {
        name: String,
        /// Read the password from standard input.
        #[arg(long, required = true)]
        password_stdin: bool,
    },
}

/// Connects and migrates (every command that touches the store does both).
pub(crate) async fn open_store(cfg: &Effective) -> Result<Store, CliError> {
    // The audit log is as durable as the uploads it records.
    let store = Store::connect_synced(
        &cfg.database_url,
        cfg.raw.database.max_connections,
        cfg.raw.storage.durable_uploads,
    )
    .await
    .map_err(|e| match e {
        StoreError::Url(m) => CliError::Usage(format!("config key `database.url`: {m}")),
        other => CliError::Runtime(anyhow::anyhow!("cannot open the database: {other}")),
    })?;
    store
        .migrate()
        .await
        .context("applying database migrations")?;
    Ok(store)
}

/// A gateway over the store for account changes (no listener runs: there
/// are no live sessions to end in this process).
async fn open_gateway(cfg: &Effective) -> Result<Arc<Gateway>, CliError> {
    let store = open_store(cfg).await?;
    let mut config = GatewayConfig::with_backend(crate::serve::storage_backend(cfg)?);
    config.node_name = cfg.node_name.clone();
    let gateway = Gateway::new(store, config);
    // Account changes made here fire `account_changed` rules too (a running
    // server's dispatcher delivers them).
    gateway
        .reload_rules()
        .await
        .context("loading event rules")?;
    Ok(gateway)
}

fn account(e: AccountError) -> CliError {
    match e {
        AccountError::Store(e) => usage(e),
        other => CliError::Runtime(anyhow::anyhow!("{other}")),
    }
}

fn usage(e: StoreError) -> CliError {
    match e {
        StoreError::Invalid(f) => CliError::Usage(format!("invalid {}: {}", f.field, f.message)),
        StoreError::Duplicate(what) => CliError::Usage(format!("{what} already exists")),
        StoreError::NotFound(what) => CliError::Usage(format!("{what} not found")),
        StoreError::PasswordTooLong => CliError::Usage(e.to_string()),
        other => CliError::Runtime(anyhow::anyhow!(other)),
    }
}

fn parse_perm(spec: &str) -> Result<(String, BTreeSet<Permission>), CliError> {
    let (path, list) = spec.split_once('=').ok_or_else(|| {
        CliError::Usage(format!(
            "--perm {spec:?}: expected PATH=PERM,PERM (e.g. /inbox=list,upload)"
        ))
    })?;
    let perms = list
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|p| {
            p.parse::<Permission>()
                .map_err(|e| CliError::Usage(format!("--perm {spec:?}: {e}")))
        })
        .collect::<Result<BTreeSet<_>, _>>()?;
    Ok((path.to_owned(), perms))
}

pub(crate) async fn user(cmd: UserCommand, cfg: &Effective) -> Result<(), CliError> {
    // Parse every argument before touching the database.
    match cmd {
        UserCommand::Add {
            name,
            password_stdin,
            keys,
            home,
            perms,
            quota_bytes,
            disabled,
        } => {
            let mut user = User::new(&name);
            if let Some(h) = home {
                user.home = h;
            }
            if !perms.is_empty() {
                user.permissions.clear();
                for spec in &perms {
                    let (path, set) = parse_perm(spec)?;
                    user.permissions.insert(path, set);
                }
            }
            for file in &keys {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| CliError::Usage(format!("--key {}: {e}", file.display())))?;
                for line in text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                {
                    user.public_keys.push(line.to_owned());
                }
            }
            if let Some(q) = quota_bytes {
                user.quota.max_bytes = q;
            }
            user.enabled = !disabled;
            user.validate()
                .map_err(|f| CliError::Usage(format!("invalid {}: {}", f.field, f.message)))?;
            let password = if password_stdin {
                Some(crate::read_password_stdin()?)
            } else {
                None
            };
            if password.is_none() && user.public_keys.is_empty() {
                eprintln!(
                    "dropgate: note: {name} has neither a password nor a key and cannot log in yet"
                );
            }
            let gateway = open_gateway(cfg).await?;
            gateway
                .create_account(&user, password.as_deref())
                .await
                .map_err(account)?;
            println!("user {name} created");
            Ok(())
        }
        UserCommand::List => {
            let store = open_store(cfg).await?;
            let mut offset = 0u64;
            println!(
                "{:<24} {:<8} {:<24} HOME",
                "USERNAME", "ENABLED", "LAST LOGIN"
            );
            loop {
                let (page, _total) = store.list_users(500, offset).await.map_err(usage)?;
                if page.is_empty() {
                    break;
                }
                offset += page.len() as u64;
                for u in page {
                    let last = u
                        .last_login_at
                        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string());
                    println!(
                        "{:<24} {:<8} {:<24} {}",
                        u.username,
                        u.enabled,
                        last.as_deref().unwrap_or("-"),
                        u.home
                    );
                }
            }
            Ok(())
        }
        UserCommand::Show { name } => {
            let store = open_store(cfg).await?;
            let rec = store.get_user(&name).await.map_err(usage)?;
            let rec = rec.ok_or_else(|| CliError::Usage(format!("user {name:?} not found")))?;
            let json = serde_json::to_string_pretty(&rec.user).context("rendering the account")?;
            println!("{json}");
            Ok(())
        }
        UserCommand::Delete { name } => {
            let gateway = open_gateway(cfg).await?;
            gateway
                .delete_account(&name, false)
                .await
                .map_err(account)?;
            println!("user {name} deleted (files kept)");
            Ok(())
        }
        UserCommand::Rescan { name } => {
            let gateway = open_gateway(cfg).await?;
            let rec = gateway.store().get_user(&name).await.map_err(usage)?;
            let rec = rec.ok_or_else(|| CliError::Usage(format!("user {name:?} not found")))?;
            let (bytes, files) = gateway
                .usage(&rec.user)
                .await
                .map_err(|e| CliError::Runtime(anyhow::anyhow!("measuring the home: {e}")))?;
            let q = rec.user.quota;
            let limit = |v: u64| {
                if v == 0 {
                    "unlimited".to_owned()
                } else {
                    v.to_string()
                }
            };
            println!(
                "{name}: {bytes} bytes in {files} files (quota: {} bytes, {} files)",
                limit(q.max_bytes),
                limit(q.max_files)
            );
            Ok(())
        }
        UserCommand::Passwd {
            name,
            password_stdin: _,
        } => {
            let password = crate::read_password_stdin()?;
            let gateway = open_gateway(cfg).await?;
            gateway
                .set_account_password(&name, PasswordChange::Set(password))
                .await
                .map_err(account)?;
            println!("password of {name} changed");
            Ok(())
        }
    }
}

pub(crate) async fn admin(cmd: AdminCommand, cfg: &Effective) -> Result<(), CliError> {
    match cmd {
        AdminCommand::Add {
            name,
            password_stdin: _,
        } => {
            dropgate_store::validate_username(&name)
                .map_err(|f| CliError::Usage(format!("invalid {}: {}", f.field, f.message)))?;
            let password = crate::read_password_stdin()?;
            let store = open_store(cfg).await?;
            let hash = store.hasher().hash(&password).await.map_err(usage)?;
            store.create_admin(&name, &hash).await.map_err(usage)?;
            println!("admin {name} created");
            Ok(())
        }
    }
}
