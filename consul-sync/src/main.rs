//! The `consul-sync` binary: parses flags, loads the configuration, binds the HTTP endpoint,
//! builds the shutdown future (SIGTERM or SIGINT) and hands over to [`consul_sync::app::run`].
//! The helper subcommands (`check-config`, `owner`) live in [`cli`].

mod cli;

use clap::{Parser, Subcommand};
use consul_sync::config::{Config, DEFAULT_CONFIG_FILE};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tracing::{error, warn};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    version,
    about = "Registers pushgateways in Consul and keeps every Envoy's member list equal to the healthy ones"
)]
struct Flags {
    /// The configuration file (the Go dynamic-sharding's keys are accepted as they are).
    #[arg(long = "config.file", default_value = DEFAULT_CONFIG_FILE)]
    config_file: PathBuf,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long = "log.level", default_value = "info")]
    log_level: String,
    /// Without a subcommand, consul-sync runs.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Checks a configuration file: exit 0, or 1 naming every problem.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
    /// Prints the pushgateway (host:port) that owns a push path, computed with the filter's code.
    Owner {
        /// The members, comma-separated host:port (computed offline).
        #[arg(
            long,
            value_name = "HOST:PORT,...",
            conflicts_with = "from",
            required_unless_present = "from"
        )]
        members: Option<String>,
        /// An Envoy control listener's base URL: use the member list it routes with.
        #[arg(long, value_name = "URL")]
        from: Option<String>,
        /// The filter's vnodes.
        #[arg(long, default_value_t = dynamic_sharding::ring::DEFAULT_VNODES)]
        vnodes: u32,
        /// The push path (/metrics/job/<job>{/<label>/<value>}) or a full push URL.
        path: String,
    },
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    match flags.command {
        Some(Command::CheckConfig { file }) => return cli::check_config(&file),
        Some(Command::Owner {
            members,
            from,
            vnodes,
            path,
        }) => {
            let members = match (members, from) {
                (_, Some(url)) => cli::Members::From(url),
                (Some(list), None) => cli::Members::Listed(list),
                // clap requires one of the two.
                (None, None) => return ExitCode::from(2),
            };
            return cli::owner(members, vnodes, &path);
        }
        None => {}
    }
    init_logs(&flags.log_level);
    daemon(&flags.config_file)
}

/// Logs to stderr at `level` (RUST_LOG overrides it), in colour on a terminal.
fn init_logs(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .try_init();
}

/// Runs consul-sync with the configuration in `file` until SIGTERM or SIGINT.
fn daemon(file: &Path) -> ExitCode {
    let (config, warnings) = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    for w in warnings {
        warn!("{}: {w}", file.display());
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            error!("starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(&config.http_listen_addr).await {
            Ok(l) => l,
            Err(e) => {
                error!("http_listen_addr {}: cannot listen: {e}", config.http_listen_addr);
                return ExitCode::FAILURE;
            }
        };
        let shutdown = match shutdown_signal() {
            Ok(s) => s,
            Err(e) => {
                error!("installing signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        match consul_sync::app::run(config, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Completes on SIGTERM or SIGINT.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
