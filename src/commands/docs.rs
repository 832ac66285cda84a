//! `completions` and `man`: generated from the command-line definitions,
//! so they never drift from what the parser accepts. Neither needs a
//! database or a config file.

use std::path::Path;

use clap::CommandFactory;

use crate::cli::{Cli, ManArgs};
use crate::error::CliError;

/// Prints the completion script for `shell` on stdout (a reader that
/// stops early, as `head` does, is not an error).
pub fn completions(shell: clap_complete::Shell) {
    use std::io::Write;
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "lockstep", &mut script);
    let _ = std::io::stdout().lock().write_all(&script);
}

/// Prints the manual page of `lockstep`, or of the subcommand `args`
/// names, on stdout; with `--dir`, writes every page there.
pub fn man(args: &ManArgs) -> Result<(), CliError> {
    let top = Cli::command();
    if let Some(dir) = &args.dir {
        return write_all(top, dir);
    }
    let mut page = top;
    let mut title = String::from("lockstep");
    for name in &args.command {
        let Some(sub) = page.find_subcommand(name).cloned() else {
            return Err(CliError::usage(format!("no command `{title} {name}`"))
                .with_hint("run `lockstep --help` for the commands"));
        };
        title = format!("{title}-{}", sub.get_name());
        page = sub.name(title.clone());
    }
    let mut text = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut text)
        .map_err(|e| CliError::io(format!("cannot render the manual page: {e}")))?;
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(&text);
    Ok(())
}

/// Every page, `lockstep.1` and one per subcommand (`lockstep-upgrade.1`,
/// `lockstep-lock-status.1`, …), into `dir`.
fn write_all(top: clap::Command, dir: &Path) -> Result<(), CliError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::io(format!("cannot create {}: {e}", dir.display())))?;
    clap_mangen::generate_to(top, dir).map_err(|e| {
        CliError::io(format!(
            "cannot write manual pages to {}: {e}",
            dir.display()
        ))
    })
}
