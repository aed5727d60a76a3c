//! The dropgate binary: command line, configuration, wiring of the store, the
//! gateway and every listener, and graceful shutdown. Business rules live in
//! the library crates; this crate only connects them.

mod cluster_keys;
mod config;
mod serve;
mod users;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{ConfigError, Effective};

#[derive(Parser)]
#[command(
    name = "dropgate",
    version,
    about = "Multi-protocol managed file transfer gateway (FTP, FTPS, SFTP)"
)]
struct Cli {
    /// Config file (default: $DROPGATE_CONFIG, else ./dropgate.toml if present, else built-in defaults).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every enabled listener until SIGINT/SIGTERM.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Validate the configuration and print the effective one (secrets masked).
    CheckConfig,
    /// Manage partner accounts.
    #[command(subcommand)]
    User(users::UserCommand),
    /// Manage administrators of the REST API and console.
    #[command(subcommand)]
    Admin(users::AdminCommand),
}

/// How the process ends: usage and config problems exit 2, everything else 1.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// Bad arguments or configuration.
    #[error("{0}")]
    Usage(String),
    /// Something failed while running.
    #[error("{0:#}")]
    Runtime(#[from] anyhow::Error),
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::Usage(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dropgate: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(msg)) => {
            eprintln!("dropgate: {msg}");
            ExitCode::from(2)
        }
        Err(CliError::Runtime(e)) => {
            eprintln!("dropgate: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    // Colour only for a person at a terminal; log files and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

fn load_config(cli: &Cli) -> Result<Effective, CliError> {
    let file = config::locate(cli.config.as_deref())?;
    Ok(config::load(file.as_deref())?)
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let cfg = load_config(&cli)?;
    match cli.command {
        Command::CheckConfig => {
            print!("{}", cfg.to_masked_toml());
            Ok(())
        }
        Command::Migrate => {
            let store = users::open_store(&cfg).await?;
            println!("migrations applied ({})", store.dialect());
            Ok(())
        }
        Command::Serve => serve::serve(cfg).await,
        Command::User(cmd) => users::user(cmd, &cfg).await,
        Command::Admin(cmd) => users::admin(cmd, &cfg).await,
    }
}

/// Reads a password from standard input: the first line, without its newline.
pub(crate) fn read_password_stdin() -> Result<String, CliError> {
    let mut buf = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut buf)
        .map_err(|e| {
            CliError::Usage(format!("--password-stdin: cannot read standard input: {e}"))
        })?;
    let pw = buf.lines().next().unwrap_or("").to_owned();
    if pw.is_empty() {
        return Err(CliError::Usage(
            "--password-stdin: standard input holds no password".into(),
        ));
    }
    Ok(pw)
}
