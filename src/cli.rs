//! Command-line definition (DESIGN.md section 2) and dispatch to one module per verb in `cmd/`.
//! Exit status: 0 success, 1 failure, 2 usage error; a command's own status passes through.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::cmd;

#[derive(Parser, Debug)]
#[command(
    name = "gbuild",
    version,
    about = "Rootless builder of Gentoo binary packages that mirrors a host's configuration exactly"
)]
pub struct Cli {
    /// Store directory [default: $XDG_DATA_HOME/gbuild]
    #[arg(long, global = true, env = "GBUILD_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Configuration file [default: <store>/gbuild.toml, else built-in defaults]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More output
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Less output (no progress, no notices)
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Download and verify the stage3 and the ebuild-tree snapshot into the store
    Fetch(cmd::fetch::FetchOpts),
    /// Binhost over HTTP for every machine (Packages, binpkgs, tree snapshot, host config),
    /// plus a status page
    Serve(cmd::serve::ServeOpts),
    /// Run a command in a rootless container (debugging, tests)
    Exec(cmd::exec::ExecOpts),
    /// Run a command in a user namespace with the containers' id mapping (like `podman unshare`)
    Unshare(cmd::unshare::UnshareOpts),
    /// One-time, as root: subordinate id ranges and cgroup delegation for a user
    SetupHost(cmd::setup_host::SetupHostOpts),
    #[command(hide = true, name = "__watchdog")]
    Watchdog(cmd::exec::WatchdogOpts),
    #[command(hide = true, name = "__run")]
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        argv: Vec<std::ffi::OsString>,
    },
}

/// Parse, run, and map the outcome to an exit status.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    gbuild::progress::set_quiet(cli.quiet);
    init_tracing(cli.verbose);
    let ctx = cmd::Ctx::new(&cli);
    let result = match cli.command {
        Command::Fetch(o) => cmd::fetch::run(&ctx, o),
        Command::Serve(o) => cmd::serve::run(&ctx, o),
        Command::Exec(o) => cmd::exec::run(&ctx, o),
        Command::Unshare(o) => cmd::unshare::run(&ctx, o),
        Command::SetupHost(o) => cmd::setup_host::run(&ctx, o),
        Command::Watchdog(o) => cmd::exec::watchdog(o),
        Command::Run { argv } => cmd::unshare::exec_argv(&argv),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gbuild: {}", cmd::one_line(&e));
            1
        }
    }
}

/// Diagnostics from gbuild and libcontainer on stderr: warnings by default, debug with `-v`,
/// anything with `GBUILD_LOG` (tracing's env-filter syntax).
fn init_tracing(verbose: bool) {
    let default = if verbose {
        "debug"
    } else {
        "warn,libcontainer=error,libcgroups=error"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("GBUILD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
}
