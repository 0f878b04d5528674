//! `gbuild helper [--machine M] --listen ADDR[:PORT] [--allow CIDR]...`: a distccd in a rootless
//! container of the machine's image, for builders whose gbuild.toml names it in `distcc_hosts`.
//! Runs in the foreground (a service manager keeps it running: scripts/systemd, scripts/openrc).

use std::path::PathBuf;

use gbuild::builder::helper::{self, Cidr, HelperOptions};

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct HelperOpts {
    /// The machine whose image (its builder's toolchain) runs distccd
    #[arg(long, default_value = "default")]
    pub machine: String,
    /// Address (of this box) and port to listen on [port default: 3632]
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = helper::parse_listen)]
    pub listen: std::net::SocketAddr,
    /// Builders that may send compile jobs (repeatable) [default: the listen address alone]
    #[arg(long, value_name = "CIDR")]
    pub allow: Vec<Cidr>,
    /// Compile jobs at once [default: distccd's, the number of cores + 2]
    #[arg(long, value_name = "N")]
    pub jobs: Option<u32>,
    /// Log file [default: <store>/machines/<M>/logs/helper/<addr>-<port>.log]
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
}

pub fn run(ctx: &Ctx, o: HelperOpts) -> anyhow::Result<i32> {
    let opts = HelperOptions {
        listen: o.listen,
        allow: o.allow,
        jobs: o.jobs,
        log: o.log,
    };
    // Refused before anything is opened or started.
    helper::check_listen(&opts.listen, &opts.allowed())?;
    let store = ctx.store()?;
    let config = ctx.config(&store)?;
    let m = gbuild::builder::Machine::open(&store, &o.machine)?;
    let map =
        gbuild::idmap::IdMapping::for_current_user(gbuild::idmap::IdPolicy::Auto, &mut |w| {
            ctx.note(w)
        })?;
    let env = gbuild::builder::BuildEnv {
        store,
        config,
        map,
        runtime: gbuild::runtime::Runtime::new(gbuild::runtime::default_state_root()),
        mirror: None,
        echo: ctx.verbose,
    };
    Ok(helper::run(&env, &m, &opts, ctx.verbose)?)
}
