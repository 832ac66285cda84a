//! `fix checksums`, `fix missing`, `fix dirty`.

use lockstep::{DirtyResolution, Fixed, MigrationSet};

use super::{connect, plural};
use crate::cli::FixCommand;
use crate::error::{CliError, Exit};
use crate::json;
use crate::printer::Printer;
use crate::settings::Settings;

pub fn fix(
    settings: &Settings,
    printer: &mut Printer,
    command: &FixCommand,
    name: &str,
) -> Result<Exit, CliError> {
    settings.database()?;
    let (fixed, dry_run, nothing) = match command {
        FixCommand::Checksums(args) => {
            let set = MigrationSet::load(&settings.migrations)?;
            let fixed = connect(settings)?.fix_checksums(&set, args.dry_run)?;
            (
                fixed,
                args.dry_run,
                "nothing to fix: every applied migration's file matches its checksum",
            )
        }
        FixCommand::Missing(args) => {
            let set = MigrationSet::load(&settings.migrations)?;
            let fixed = connect(settings)?.fix_missing(&set, args.dry_run)?;
            (
                fixed,
                args.dry_run,
                "nothing to fix: every applied migration has its file",
            )
        }
        FixCommand::Dirty(args) => {
            let resolution = if args.applied {
                DirtyResolution::Applied
            } else {
                DirtyResolution::Forget
            };
            let fixed = connect(settings)?.fix_dirty(args.version, resolution, args.dry_run)?;
            (vec![fixed], args.dry_run, "")
        }
    };
    for f in &fixed {
        let prefix = if dry_run { "would have " } else { "" };
        printer.line(&format!("{} {}: {prefix}{}", f.version, f.name, f.action));
    }
    if fixed.is_empty() {
        printer.line(nothing);
    } else if dry_run {
        printer.line(&format!(
            "dry run: {} would change; nothing was changed",
            plural(fixed.len(), "row", "rows")
        ));
    }
    printer.document(
        name,
        Exit::Success,
        json::Fix {
            dry_run,
            changes: fixed.iter().map(fix_json).collect(),
        },
    );
    Ok(Exit::Success)
}

fn fix_json(f: &Fixed) -> json::FixJson {
    json::FixJson {
        version: f.version,
        name: f.name.clone(),
        action: f.action.clone(),
    }
}
