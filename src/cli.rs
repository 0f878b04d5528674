//! Command-line definition (docs/design.md) and dispatch to one module per verb in `cmd/`.
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
    /// Stage3 layer + config layer + bootstrap emerges -> sealed image M/bootstrap
    Bootstrap(cmd::bootstrap::BootstrapOpts),
    /// Check the bootstrap image: the world set resolves with nothing to do
    Check(cmd::check::CheckOpts),
    /// Create the builder container on the bootstrap image
    Builder(cmd::builder::BuilderOpts),
    /// Interactive shell in the builder, or run CMD there
    Shell(cmd::shell::ShellOpts),
    /// Bring the builder to the newest snapshot and the machine's configuration
    Update(cmd::update::UpdateOpts),
    /// The build loop (forever, or --once)
    Build(cmd::build::BuildOpts),
    /// A new builder on the newest stage3, reusing every still-valid binpkg, swapped in when complete
    Rebase(cmd::rebase::RebaseOpts),
    /// Wake a loop that idles after a failure or waits for its next pass
    Resume(cmd::resume::ResumeOpts),
    /// Show (-f: follow) the machine's newest log
    Logs(cmd::logs::LogsOpts),
    /// State of the loop, current package, last pass
    Status(cmd::status::StatusOpts),
    /// The whole chain: fetch, bootstrap, check, builder, build
    Run(cmd::run::RunOpts),
    /// Capture a Gentoo host's configuration (run on the host): `host export`
    Host(cmd::host::HostOpts),
    /// Register and list host configurations: `machine import`, `machine list`
    Machine(cmd::machine::MachineOpts),
    /// Build packages a host wants before they are in its world (`--wait`: until published)
    Request(cmd::request::RequestOpts),
    /// Every difference between a machine's configuration and a host bundle; exit 1 if any
    Diff(cmd::diff::DiffOpts),
    /// Binhost over HTTP for every machine (Packages, binpkgs, tree snapshot, host config),
    /// plus a status page
    Serve(cmd::serve::ServeOpts),
    /// The store's binpkg signing key: fingerprint, public keys, rotation
    Key(cmd::key::KeyOpts),
    /// Run a command in a rootless container (debugging, tests)
    Exec(cmd::exec::ExecOpts),
    /// Run a command in a user namespace with the containers' id mapping (like `podman unshare`)
    Unshare(cmd::unshare::UnshareOpts),
    /// One-time, as root: subordinate id ranges for a user
    SetupHost(cmd::setup_host::SetupHostOpts),
    /// Sealed layers: unpack a stage3, commit an upper dir, unpack an ebuild tree, list
    Layer(cmd::layer::LayerOpts),
    /// Images (ordered stacks of layers): list, lowerdir, rm
    Image(cmd::image::ImageOpts),
    /// Export an image as an OCI image layout
    Snapshot(cmd::snapshot::SnapshotOpts),
    /// Rebuild an image from an OCI image layout, offline
    Restore(cmd::restore::RestoreOpts),
    /// A distccd in the machine's own image, for builders whose gbuild.toml names it
    Helper(cmd::helper::HelperOpts),
    /// The published generations: list, roll back, tag (hosts follow /<M>@<tag>/)
    Publish(cmd::publish::PublishOpts),
    /// Remove what nothing references (layers, images, trees, downloads, old generations,
    /// leftovers); --dry-run lists it with sizes
    Gc(cmd::gc::GcOpts),
    /// Shell completions generated from this command line: bash, zsh, fish, elvish, powershell
    Completions(cmd::completions::CompletionsOpts),
    /// The man page generated from this command line (gbuild.1 on standard output)
    Man(cmd::completions::ManOpts),
    #[command(hide = true, name = "__layer-helper")]
    LayerHelper { request: String },
    #[command(hide = true, name = "__watchdog")]
    Watchdog(cmd::exec::WatchdogOpts),
    #[command(hide = true, name = "__run")]
    RunArgv {
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
            // Help or usage on a closed stream: the exit status still says what happened.
            let _ = e.print();
            return code;
        }
    };
    quiet_broken_pipe();
    gbuild::progress::set_quiet(cli.quiet);
    init_tracing(cli.verbose);
    let ctx = cmd::Ctx {
        store_opt: cli.store.clone(),
        config_opt: cli.config.clone(),
        verbose: cli.verbose,
        quiet: cli.quiet,
    };
    let result = match cli.command {
        Command::Fetch(o) => cmd::fetch::run(&ctx, o),
        Command::Bootstrap(o) => cmd::bootstrap::run(&ctx, o),
        Command::Check(o) => cmd::check::run(&ctx, o),
        Command::Builder(o) => cmd::builder::run(&ctx, o),
        Command::Shell(o) => cmd::shell::run(&ctx, o),
        Command::Update(o) => cmd::update::run(&ctx, o),
        Command::Build(o) => cmd::build::run(&ctx, o),
        Command::Rebase(o) => cmd::rebase::run(&ctx, o),
        Command::Resume(o) => cmd::resume::run(&ctx, o),
        Command::Logs(o) => cmd::logs::run(&ctx, o),
        Command::Status(o) => cmd::status::run(&ctx, o),
        Command::Run(o) => cmd::run::run(&ctx, o),
        Command::Host(o) => cmd::host::run(&ctx, o),
        Command::Machine(o) => cmd::machine::run(&ctx, o),
        Command::Request(o) => cmd::request::run(&ctx, o),
        Command::Diff(o) => cmd::diff::run(&ctx, o),
        Command::Serve(o) => cmd::serve::run(&ctx, o),
        Command::Key(o) => cmd::key::run(&ctx, o),
        Command::Exec(o) => cmd::exec::run(&ctx, o),
        Command::Unshare(o) => cmd::unshare::run(&ctx, o),
        Command::SetupHost(o) => cmd::setup_host::run(&ctx, o),
        Command::Watchdog(o) => cmd::exec::watchdog(o),
        Command::Layer(o) => cmd::layer::run(&ctx, o),
        Command::Image(o) => cmd::image::run(&ctx, o),
        Command::Snapshot(o) => cmd::snapshot::run(&ctx, o),
        Command::Restore(o) => cmd::restore::run(&ctx, o),
        Command::Helper(o) => cmd::helper::run(&ctx, o),
        Command::Publish(o) => cmd::publish::run(&ctx, o),
        Command::Gc(o) => cmd::gc::run(&ctx, o),
        Command::Completions(o) => cmd::completions::completions(&ctx, o),
        Command::Man(o) => cmd::completions::man(&ctx, o),
        Command::LayerHelper { request } => Ok(cmd::layer::serve(&request)),
        Command::RunArgv { argv } => cmd::unshare::exec_argv(&argv),
    };
    match result {
        Ok(code) => code,
        // A reader that went away (`gbuild logs | head`) is not a failure.
        Err(e) if is_broken_pipe(&e) => 0,
        Err(e) => {
            eprintln!("gbuild: {}", cmd::one_line(&e));
            1
        }
    }
}

/// `println!` panics when standard output is a closed pipe; that reader going away ends gbuild
/// with status 0 and no message, like a write error of kind BrokenPipe does.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Diagnostics on stderr: gbuild's own events as the command line's lines (`gbuild: MESSAGE`,
/// `gbuild: warning: MESSAGE`), everything else (libcontainer, libcgroups) in tracing's format.
/// gbuild's notices, warnings and errors by default, debug with `-v`, anything with `GBUILD_LOG`
/// (tracing's env-filter syntax).
fn init_tracing(verbose: bool) {
    let default = if verbose {
        "debug"
    } else {
        "warn,gbuild=info,libcontainer=error,libcgroups=error"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("GBUILD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Fails only when a subscriber is already installed (a test harness): that one reports.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(Lines(tracing_subscriber::fmt::format().without_time()))
        .try_init();
}

/// The event format: gbuild's events as one line each, prefixed like the binary's own messages.
struct Lines(tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Full, ()>);

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Lines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing_subscriber::fmt::FormatFields;
        let meta = event.metadata();
        if meta.target() != "gbuild" && !meta.target().starts_with("gbuild::") {
            return self.0.format_event(ctx, w, event);
        }
        let prefix = match *meta.level() {
            tracing::Level::WARN => "gbuild: warning: ",
            tracing::Level::DEBUG | tracing::Level::TRACE => "gbuild: debug: ",
            _ => "gbuild: ",
        };
        w.write_str(prefix)?;
        ctx.format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}
