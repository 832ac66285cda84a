//! `fix checksums`, `fix missing`, `fix dirty`.

use lockstep::{DirtyResolution, Fixed};

use super::run::Progress;
use super::{connect, load_and_connect, plural};
use crate::cli::{BaselineArgs, FixArgs, FixCommand, ImportArgs, LockArgs};
use crate::error::{CliError, Exit};
use crate::json;
use crate::printer::Printer;
use crate::settings::Settings;

pub fn fix(
    settings: &Settings,
    printer: &mut Printer,
    args: &FixArgs,
    name: &str,
) -> Result<Exit, CliError> {
    settings.database()?;
    let (fixed, dry_run, nothing) = match &args.command {
        FixCommand::Checksums(dry) => checksums(settings, printer, &args.lock, dry.dry_run)?,
        FixCommand::Missing(dry) => {
            let (set, mut migrator) =
                load_and_connect(settings, || connect(settings, printer, &args.lock, None))?;
            let fixed = migrator.fix_missing(&set, dry.dry_run, &mut Progress::new(printer))?;
            (
                fixed,
                dry.dry_run,
                "nothing to fix: every applied migration has its file",
            )
        }
        FixCommand::Dirty(dirty) => {
            let resolution = if dirty.applied {
                DirtyResolution::Applied
            } else {
                DirtyResolution::Forget
            };
            let mut migrator = connect(settings, printer, &args.lock, None)?;
            let fixed = migrator.fix_dirty(
                dirty.version,
                resolution,
                dirty.dry_run,
                &mut Progress::new(printer),
            )?;
            (vec![fixed], dirty.dry_run, "")
        }
    };
    report(printer, name, &fixed, dry_run, nothing, &[])
}

/// `fix checksums` (and `repair`): what it recorded, whether it was a dry
/// run, and what to say when there was nothing to fix.
pub fn checksums(
    settings: &Settings,
    printer: &mut Printer,
    lock: &LockArgs,
    dry_run: bool,
) -> Result<(Vec<Fixed>, bool, &'static str), CliError> {
    let (set, mut migrator) =
        load_and_connect(settings, || connect(settings, printer, lock, None))?;
    let fixed = migrator.fix_checksums(&set, dry_run, &mut Progress::new(printer))?;
    Ok((
        fixed,
        dry_run,
        "nothing to fix: every applied migration's file matches its checksum",
    ))
}

/// `baseline VERSION`: the migrations up to VERSION recorded as applied,
/// without running them.
pub fn baseline(
    settings: &Settings,
    printer: &mut Printer,
    args: &BaselineArgs,
) -> Result<Exit, CliError> {
    settings.database()?;
    let (set, mut migrator) =
        load_and_connect(settings, || connect(settings, printer, &args.lock, None))?;
    let recorded = migrator.baseline(
        &set,
        args.version,
        args.dry_run,
        &mut Progress::new(printer),
    )?;
    let nothing = format!(
        "nothing to record: history already holds every migration up to {}",
        args.version
    );
    report(printer, "baseline", &recorded, args.dry_run, &nothing, &[])
}

/// `import TOOL`: what another tool applied, recorded as applied; its
/// table left as it is.
pub fn import(
    settings: &Settings,
    printer: &mut Printer,
    args: &ImportArgs,
) -> Result<Exit, CliError> {
    settings.database()?;
    let (set, mut migrator) =
        load_and_connect(settings, || connect(settings, printer, &args.lock, None))?;
    let imported = migrator.import(&set, args.tool, args.dry_run, &mut Progress::new(printer))?;
    for warning in &imported.warnings {
        printer.warn(warning);
    }
    let nothing = format!(
        "nothing to record: history already holds every migration {} applied",
        args.tool.name()
    );
    report(
        printer,
        "import",
        &imported.recorded,
        args.dry_run,
        &nothing,
        &imported.warnings,
    )
}

/// What a fix (or baseline) changed, or would have: a line per row, and
/// the JSON document.
pub fn report(
    printer: &mut Printer,
    name: &str,
    fixed: &[Fixed],
    dry_run: bool,
    nothing: &str,
    warnings: &[String],
) -> Result<Exit, CliError> {
    if let Some(signal) = crate::signals::received() {
        // Too late to stop the fix, which is written: the exit code is the
        // signal's, and the output says what was done.
        let done = if dry_run || fixed.is_empty() {
            "nothing was changed".to_string()
        } else {
            format!(
                "{} changed first",
                plural(fixed.len(), "row was", "rows were")
            )
        };
        return Err(CliError::new(
            Exit::Signal(signal),
            "cancelled",
            format!("cancelled; {done}"),
        ));
    }
    for f in fixed {
        let prefix = if dry_run { "would have " } else { "" };
        let migration = match f.kind {
            lockstep::Kind::Versioned => format!("{} {}", f.version, f.name),
            _ => format!("repeatable {}", f.name),
        };
        printer.line(&format!("{migration}: {prefix}{}", f.action));
    }
    if fixed.is_empty() {
        printer.line(nothing);
    } else if dry_run {
        printer.line(&format!(
            "dry run: {} would change; nothing was changed",
            plural(fixed.len(), "row", "rows")
        ));
    }
    printer.document(name, Exit::Success, || json::Fix {
        dry_run,
        changes: fixed.iter().map(json::FixJson::from).collect(),
        warnings: warnings.to_vec(),
    });
    Ok(Exit::Success)
}
