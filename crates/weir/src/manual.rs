//! Shell completions and manual pages, generated from the command-line
//! definition itself, so they never disagree with `--help`.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

/// Writes the completion script for `shell` to stdout.
pub(crate) fn completions<C: CommandFactory>(shell: clap_complete::Shell) -> Result<()> {
    use std::io::Write;
    let mut cmd = C::command();
    let name = cmd.get_name().to_owned();
    // Into memory first: the generator panics on a failed write (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    let mut out = std::io::stdout().lock();
    match out.write_all(&script).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write the completion script")
        }
        _ => Ok(()),
    }
}

/// Writes `weir.1` and a page per subcommand, nested ones included
/// (`weir-backend-drain.1`), into `dir`.
pub(crate) fn man_pages<C: CommandFactory>(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cmd = C::command();
    cmd.build();
    write_pages(&cmd, dir)
}

fn write_pages(cmd: &clap::Command, dir: &Path) -> Result<()> {
    let page = clap_mangen::Man::new(cmd.clone());
    let path = dir.join(page.get_filename());
    let mut out = Vec::new();
    page.render(&mut out)
        .with_context(|| format!("cannot render {}", path.display()))?;
    std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
    // clap's generated `help` subcommands are `--help`, already in every page.
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        write_pages(sub, dir)?;
    }
    Ok(())
}
