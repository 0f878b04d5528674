//! `gbuild completions SHELL` and `gbuild man`: shell completions and a man page generated from
//! the clap definition, so they never disagree with the command line.

use std::io::Write;

use clap::CommandFactory;

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct CompletionsOpts {
    /// The shell to write completions for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(clap::Args, Debug)]
pub struct ManOpts {
    /// Write one page per verb (gbuild.1, gbuild-run.1, ...) into DIR instead of gbuild.1 on
    /// standard output
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
}

pub fn completions(_ctx: &Ctx, o: CompletionsOpts) -> anyhow::Result<i32> {
    let mut cmd = crate::cli::Cli::command();
    // Rendered first: the generator panics on a write error, a closed pipe included.
    let mut buf = Vec::new();
    clap_complete::generate(o.shell, &mut cmd, "gbuild", &mut buf);
    let mut out = std::io::stdout().lock();
    out.write_all(&buf)?;
    out.flush()?;
    Ok(0)
}

pub fn man(_ctx: &Ctx, o: ManOpts) -> anyhow::Result<i32> {
    let cmd = crate::cli::Cli::command();
    match o.dir {
        None => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut buf)?;
            let mut out = std::io::stdout().lock();
            out.write_all(&buf)?;
            out.flush()?;
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| anyhow::anyhow!("create directory {}: {e}", dir.display()))?;
            write_pages(&cmd, "gbuild", &dir)?;
        }
    }
    Ok(0)
}

/// One page for `cmd` and one for each visible subcommand, named `gbuild-<verb>-<sub>.1`.
fn write_pages(cmd: &clap::Command, name: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    let cmd = cmd.clone().name(name.to_string());
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
    let path = dir.join(format!("{name}.1"));
    gbuild::fsutil::atomic_write(&path, &buf)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}
