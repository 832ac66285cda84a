//! `import`: another tool's history taken over. Its table is read as the
//! tool wrote it (and left untouched); each migration it applied that has
//! a file here is recorded in lockstep's history as applied, under the
//! lock, as `baseline` records; each runs-on-change repeatable migration it
//! ran, as its file is now, is recorded as run.

use sha2::{Digest, Sha256, Sha384};

use super::commands::{self, FixChange};
use super::{Fixed, Migrator, Observer};
use crate::error::Error;
use crate::history::{Change, HistoryRow, RepeatRow};
use crate::remedy::Remedy;
use crate::source::{Kind, Migration, MigrationSet, Repeat};
use crate::sql::Dialect;
use crate::version::Version;

/// Another migration tool whose history [`Migrator::import`] takes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tool {
    /// `schema_migrations (version, dirty)`: the newest version applied.
    GolangMigrate,
    /// `schema_migrations (version)`: each version applied.
    Dbmate,
    /// `goose_db_version (id, version_id, is_applied, tstamp)`: each
    /// apply and roll back, in order.
    Goose,
    /// `_sqlx_migrations (version, success, checksum, …)`.
    Sqlx,
    /// `__diesel_schema_migrations (version, run_on)`.
    Diesel,
    /// `flyway_schema_history (installed_rank, version, type, success,
    /// script, …)`: each migration, baseline and undo, in order.
    Flyway,
    /// `jetbase_migrations (order_executed, version, filename,
    /// migration_type, checksum, …)`: each versioned migration applied (a
    /// rollback deletes its row), and each repeatable one's last run.
    Jetbase,
    /// `_dbwarden_migrations (version, description, filename,
    /// migration_type, applied_at, checksum)`: as jetbase's, versions
    /// written with four digits.
    Dbwarden,
    /// `_yoyo_migration (migration_hash, migration_id, applied_at_utc)`:
    /// each migration applied, by its id (its file's name).
    Yoyo,
}

impl Tool {
    /// The names `import` takes.
    pub const NAMES: &'static [&'static str] = &[
        "golang-migrate",
        "dbmate",
        "goose",
        "sqlx",
        "diesel",
        "flyway",
        "jetbase",
        "dbwarden",
        "yoyo",
    ];

    /// A tool by its name in [`Tool::NAMES`].
    pub fn parse(name: &str) -> Option<Tool> {
        Some(match name {
            "golang-migrate" => Tool::GolangMigrate,
            "dbmate" => Tool::Dbmate,
            "goose" => Tool::Goose,
            "sqlx" => Tool::Sqlx,
            "diesel" => Tool::Diesel,
            "flyway" => Tool::Flyway,
            "jetbase" => Tool::Jetbase,
            "dbwarden" => Tool::Dbwarden,
            "yoyo" => Tool::Yoyo,
            _ => return None,
        })
    }

    /// The tool's name.
    pub fn name(self) -> &'static str {
        match self {
            Tool::GolangMigrate => "golang-migrate",
            Tool::Dbmate => "dbmate",
            Tool::Goose => "goose",
            Tool::Sqlx => "sqlx",
            Tool::Diesel => "diesel",
            Tool::Flyway => "flyway",
            Tool::Jetbase => "jetbase",
            Tool::Dbwarden => "dbwarden",
            Tool::Yoyo => "yoyo",
        }
    }

    /// The table the tool keeps its history in.
    pub fn table(self) -> &'static str {
        match self {
            Tool::GolangMigrate | Tool::Dbmate => "schema_migrations",
            Tool::Goose => "goose_db_version",
            Tool::Sqlx => "_sqlx_migrations",
            Tool::Diesel => "__diesel_schema_migrations",
            Tool::Flyway => "flyway_schema_history",
            Tool::Jetbase => "jetbase_migrations",
            Tool::Dbwarden => "_dbwarden_migrations",
            Tool::Yoyo => "_yoyo_migration",
        }
    }

    /// What to read of its table.
    fn query(self, dialect: Dialect) -> String {
        let table = self.table();
        match self {
            Tool::GolangMigrate => format!("SELECT version, dirty FROM {table}"),
            Tool::Dbmate | Tool::Diesel => format!("SELECT version FROM {table}"),
            Tool::Yoyo => format!("SELECT migration_id FROM {table}"),
            Tool::Goose => format!("SELECT version_id, is_applied FROM {table} ORDER BY id"),
            Tool::Flyway => format!(
                "SELECT version, type, success, script, checksum FROM {table} ORDER BY installed_rank"
            ),
            Tool::Jetbase => format!(
                "SELECT version, migration_type, checksum, filename FROM {table} ORDER BY order_executed"
            ),
            Tool::Dbwarden => format!(
                "SELECT version, migration_type, checksum, filename FROM {table} ORDER BY applied_at"
            ),
            Tool::Sqlx => {
                let hex = match dialect {
                    Dialect::Postgres => "encode(checksum, 'hex')",
                    _ => "lower(hex(checksum))",
                };
                format!("SELECT version, success, {hex} FROM {table}")
            }
        }
    }
}

/// What `import` did (or, in a dry run, would do), and what it noticed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The migrations recorded as applied.
    pub recorded: Vec<Fixed>,
    /// What a human should look at: a version applied by the tool that has
    /// no file here, a file that changed since the tool applied it.
    pub warnings: Vec<String>,
}

/// A boolean as the engines write one as text.
fn truthy(value: Option<&str>) -> bool {
    matches!(value, Some("t" | "true" | "1" | "TRUE"))
}

/// A version as the tool wrote it: digits, diesel's with `-`.
fn version(value: Option<&str>) -> Option<Version> {
    let digits: String = value?.chars().filter(|c| *c != '-').collect();
    crate::source::parse_version(&digits).ok()
}

impl Migrator {
    /// Takes over another tool's history: each migration its table says
    /// is applied, and that has a file here, is recorded as applied in
    /// lockstep's history (under the lock, without running), and the
    /// tool's table is left as it is. A dirty or failed migration in it is
    /// refused, naming its version.
    pub fn import(
        &mut self,
        set: &MigrationSet,
        tool: Tool,
        dry_run: bool,
        observer: &mut dyn Observer,
    ) -> Result<Imported, Error> {
        let rows = self
            .driver
            .read_table(&tool.query(self.driver.dialect()))?
            .ok_or_else(|| Error::Config {
                message: format!(
                    "no table {} here: nothing of {}'s to import",
                    tool.table(),
                    tool.name()
                ),
                remedy: Some(Remedy::Text(
                    "point the database URL at the database that tool migrated, or name the tool that did".into(),
                )),
            })?;
        let Found {
            applied,
            ran,
            mut warnings,
        } = applied_by(tool, &rows, set)?;
        let executor = self.options.executor.clone();
        let mut missing = Vec::new();
        let mut versions = Vec::new();
        for v in applied {
            if set.get(v).is_some() {
                versions.push(v);
            } else {
                missing.push(v);
            }
        }
        for v in missing {
            warnings.push(format!(
                "version {v} is applied by {} but no migration file here has it: not recorded",
                tool.name()
            ));
        }
        let label = format!(
            "recorded as applied (from {}'s {})",
            tool.name(),
            tool.table()
        );
        let ran_label = format!("recorded as run (from {}'s {})", tool.name(), tool.table());
        let import = |history: &[HistoryRow], repeats: &[RepeatRow]| {
            let mut changes = commands::record_applied(set, &versions, &executor, &label, history)?;
            changes.extend(record_ran(&ran, repeats, &executor, &ran_label));
            Ok(changes)
        };
        let import = match ran.is_empty() {
            true => commands::Fix::new("import", import),
            false => commands::Fix::with_repeatables("import", import),
        };
        let recorded = self.run_locked(&import, dry_run, observer)?;
        Ok(Imported { recorded, warnings })
    }
}

/// What the tool's rows say.
struct Found<'s> {
    /// The versions applied, in order.
    applied: Vec<Version>,
    /// The repeatable migrations that run on change, which the tool ran as
    /// their files are now.
    ran: Vec<&'s Migration>,
    /// What a human should look at.
    warnings: Vec<String>,
}

/// The changes that record the repeatable migrations in `ran` as run,
/// unless lockstep's last run of one already has its checksum.
fn record_ran<'a>(
    ran: &[&'a Migration],
    repeats: &[RepeatRow],
    executor: &'a str,
    label: &str,
) -> Vec<FixChange<'a>> {
    ran.iter()
        .filter(|m| {
            !repeats
                .iter()
                .any(|r| r.name == m.name && r.checksum == m.checksum)
        })
        .map(|m| {
            let fixed = Fixed {
                version: m.version,
                kind: m.kind(),
                name: m.name.clone(),
                action: label.to_string(),
            };
            let change = Change::Repeated {
                name: &m.name,
                checksum: &m.checksum,
                applied_by: executor,
                lock_token: None,
                duration_ms: Some(0),
            };
            (fixed, change)
        })
        .collect()
}

/// A repeatable migration the tool ran, from its file name there and the
/// checksum it recorded: its file here when it runs on change and is as
/// the tool ran it (`Ok`); else what to tell (`Err`), nothing for one that
/// runs on every upgrade anyway.
fn repeat_ran<'s>(
    tool: Tool,
    set: &'s MigrationSet,
    file: &str,
    recorded: Option<String>,
    checksum: impl Fn(&str) -> String,
) -> Result<&'s Migration, Option<String>> {
    let wanted = std::path::Path::new(file).file_name();
    let Some(m) = set
        .repeatables()
        .iter()
        .find(|m| m.up.path.file_name() == wanted)
    else {
        return Err(Some(format!(
            "repeatable migration {file} ran under {} but has no file here: not recorded",
            tool.name()
        )));
    };
    if m.kind() == Kind::Repeatable(Repeat::Always) {
        return Err(None);
    }
    let now = crate::fsread::read_regular(&m.up.path, crate::source::MAX_FILE_BYTES)
        .ok()
        .map(|bytes| checksum(&String::from_utf8_lossy(&bytes)));
    match (now, recorded) {
        (Some(now), Some(recorded)) if now == recorded => Ok(m),
        _ => Err(Some(format!(
            "repeatable migration {file} changed since {} ran it: lockstep's next upgrade runs it",
            tool.name()
        ))),
    }
}

/// The versions the tool's rows say are applied, in order, the repeatable
/// migrations it ran, and the warnings on the way; a dirty or failed state
/// refused.
fn applied_by<'s>(
    tool: Tool,
    rows: &[Vec<Option<String>>],
    set: &'s MigrationSet,
) -> Result<Found<'s>, Error> {
    let refuse = |message: String, hint: &str| Error::Config {
        message,
        remedy: Some(Remedy::Text(hint.into())),
    };
    let cell = |row: &Vec<Option<String>>, i: usize| row.get(i).cloned().flatten();
    let mut warnings = Vec::new();
    let mut applied: Vec<Version> = Vec::new();
    let mut ran: Vec<&Migration> = Vec::new();
    match tool {
        Tool::GolangMigrate => {
            let Some(row) = rows.first() else {
                return Ok(Found {
                    applied,
                    ran,
                    warnings,
                });
            };
            let newest = version(cell(row, 0).as_deref()).unwrap_or_default();
            if truthy(cell(row, 1).as_deref()) {
                return Err(refuse(
                    format!("golang-migrate's schema_migrations says version {newest} is dirty: it failed half-way"),
                    "repair the database, and mark it with `migrate force VERSION` as golang-migrate wants, before importing",
                ));
            }
            if set.get(newest).is_none() {
                warnings.push(format!(
                    "version {newest}, golang-migrate's newest, has no migration file here"
                ));
            }
            applied = set
                .migrations()
                .iter()
                .map(|m| m.version)
                .take_while(|&v| v <= newest)
                .collect();
        }
        Tool::Dbmate | Tool::Diesel => {
            applied = rows
                .iter()
                .filter_map(|r| version(cell(r, 0).as_deref()))
                .collect();
        }
        Tool::Goose => {
            for row in rows {
                let Some(v) = version(cell(row, 0).as_deref()).filter(|&v| v > Version::default())
                else {
                    continue;
                };
                applied.retain(|&a| a != v);
                if truthy(cell(row, 1).as_deref()) {
                    applied.push(v);
                }
            }
        }
        Tool::Flyway => {
            // The checksum each applied version was last applied with, and
            // each repeatable migration last ran with.
            let mut checksums: Vec<(Version, Option<String>)> = Vec::new();
            let mut repeats: Vec<(String, Option<String>)> = Vec::new();
            for row in rows {
                let script = cell(row, 3).unwrap_or_default();
                let Some(text) = cell(row, 0) else {
                    if truthy(cell(row, 2).as_deref()) {
                        repeats.retain(|(s, _)| *s != script);
                        repeats.push((script, cell(row, 4)));
                    }
                    continue;
                };
                let v = Version::parse(&text).map_err(|why| {
                    refuse(
                        format!("flyway_schema_history's version of {script}: {why}"),
                        "correct the row as Flyway wants (`flyway repair`) before importing",
                    )
                })?;
                if !truthy(cell(row, 2).as_deref()) {
                    return Err(refuse(
                        format!("flyway_schema_history says version {v} ({script}) failed"),
                        "repair it as Flyway wants (`flyway repair`) before importing",
                    ));
                }
                applied.retain(|&a| a != v);
                checksums.retain(|(a, _)| *a != v);
                if cell(row, 1).as_deref() != Some("UNDO_SQL") {
                    applied.push(v);
                    checksums.push((v, cell(row, 4)));
                }
            }
            let now = |text: &str| flyway_checksum(text).to_string();
            for (v, recorded) in checksums {
                warnings.extend(changed_since(tool, set, v, recorded, now));
            }
            for (script, recorded) in repeats {
                match repeat_ran(tool, set, &script, recorded, now) {
                    Ok(m) => ran.push(m),
                    Err(warning) => warnings.extend(warning),
                }
            }
        }
        Tool::Jetbase | Tool::Dbwarden => {
            let checksum = match tool {
                Tool::Jetbase => jetbase_checksum,
                _ => dbwarden_checksum,
            };
            for row in rows {
                let filename = cell(row, 3).unwrap_or_default();
                let kind = cell(row, 1).unwrap_or_default();
                let text = cell(row, 0).unwrap_or_default();
                if text.is_empty() || kind.to_ascii_lowercase().starts_with("runs_") {
                    match repeat_ran(tool, set, &filename, cell(row, 2), checksum) {
                        Ok(m) => ran.push(m),
                        Err(warning) => warnings.extend(warning),
                    }
                    continue;
                }
                let v = Version::parse(&text).map_err(|why| {
                    refuse(
                        format!("{}'s version of {filename}: {why}", tool.table()),
                        "correct the row as that tool wants before importing",
                    )
                })?;
                warnings.extend(changed_since(tool, set, v, cell(row, 2), checksum));
                applied.push(v);
            }
        }
        Tool::Yoyo => {
            // yoyo knows its migrations by their files' names: the file of
            // that name here says the version.
            let by_file: std::collections::HashMap<&std::ffi::OsStr, Version> = set
                .migrations()
                .iter()
                .filter_map(|m| Some((m.up.path.file_name()?, m.version)))
                .collect();
            for id in rows.iter().filter_map(|r| cell(r, 0)) {
                let file = format!("{id}.sql");
                match by_file.get(std::ffi::OsStr::new(&file)) {
                    Some(&v) => applied.push(v),
                    None => warnings.push(format!(
                        "{id} is applied by yoyo but no migration file here is {file}: not recorded"
                    )),
                }
            }
        }
        Tool::Sqlx => {
            for row in rows {
                let Some(v) = version(cell(row, 0).as_deref()) else {
                    continue;
                };
                if !truthy(cell(row, 1).as_deref()) {
                    return Err(refuse(
                        format!("sqlx's _sqlx_migrations says version {v} failed"),
                        "repair the database and that row as sqlx wants before importing",
                    ));
                }
                if let (Some(m), Some(recorded)) = (set.get(v), cell(row, 2)) {
                    let now = hex(&Sha384::digest(m.up.sql.as_bytes()));
                    if now != recorded {
                        warnings.push(format!(
                            "version {v}: the file changed since sqlx applied it (its checksum differs)"
                        ));
                    }
                }
                applied.push(v);
            }
        }
    }
    applied.sort_unstable();
    applied.dedup();
    Ok(Found {
        applied,
        ran,
        warnings,
    })
}

/// jetbase's checksum of a migration file: SHA-256 of its upgrade
/// statements as jetbase reads them (each line trimmed, comment and empty
/// lines left out, the lines of a statement joined by a space, up to a line
/// ending in the delimiter, which is cut), joined by newlines. The
/// delimiter is `;`, or what a leading `-- jetbase: delimiter=X` says.
fn jetbase_checksum(text: &str) -> String {
    let mut delimiter = ";".to_string();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some(comment) = line.strip_prefix("--") else {
            break;
        };
        let comment = comment.trim_start();
        if let Some(rest) = comment
            .get(..8)
            .filter(|p| p.eq_ignore_ascii_case("jetbase:"))
            .map(|_| comment[8..].trim_start())
        {
            if let Some(value) = rest
                .get(..10)
                .filter(|p| p.eq_ignore_ascii_case("delimiter="))
                .map(|_| rest[10..].trim())
            {
                delimiter = value.to_string();
                break;
            }
        }
    }
    let mut statements: Vec<String> = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(comment) = line.strip_prefix("--") {
            if comment.trim().eq_ignore_ascii_case("rollback") {
                break;
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        current.push(line);
        if line.ends_with(delimiter.as_str()) {
            let joined = current.join(" ");
            let statement = joined.trim_end_matches(|c| delimiter.contains(c)).trim();
            if !statement.is_empty() {
                statements.push(statement.to_string());
            }
            current.clear();
        }
    }
    hex(&Sha256::digest(statements.join("\n").as_bytes()))
}

/// A warning when the file of version `v` changed since `tool` applied it:
/// the checksum `checksum` computes of it is not the one `recorded`.
fn changed_since(
    tool: Tool,
    set: &MigrationSet,
    v: Version,
    recorded: Option<String>,
    checksum: impl Fn(&str) -> String,
) -> Option<String> {
    let (m, recorded) = (set.get(v)?, recorded?);
    let bytes = crate::fsread::read_regular(&m.up.path, crate::source::MAX_FILE_BYTES).ok()?;
    (checksum(&String::from_utf8_lossy(&bytes)) != recorded).then(|| {
        format!(
            "version {v}: the file changed since {} applied it (its checksum differs)",
            tool.name()
        )
    })
}

/// Flyway's checksum of a migration file: CRC-32 (IEEE) of its lines, each
/// without its line ending (`\n`, `\r\n` or a lone `\r`), a leading BOM
/// left out, as a signed 32-bit number.
fn flyway_checksum(text: &str) -> i32 {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut crc = !0u32;
    for byte in text.bytes().filter(|b| !matches!(b, b'\n' | b'\r')) {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc as i32
}

/// DBWarden's checksum of a migration file: SHA-256 of its upgrade
/// statements joined by `;`, as DBWarden reads them: the lines after a
/// `-- upgrade` line up to `-- rollback`, comment lines left out, a blank
/// line or `-- @dbwarden:autocommit` ending a run of lines (the marker
/// then kept at the head of the next), each run split at the `;`s outside
/// quotes and comments, each piece trimmed.
fn dbwarden_checksum(text: &str) -> String {
    const AUTOCOMMIT: &str = "-- @dbwarden:autocommit";
    let mut runs: Vec<String> = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let mut marker = false;
    let mut in_section = false;
    let mut flush = |current: &mut Vec<&str>, marker: &mut bool| {
        let statement = current.join("\n");
        let statement = statement.trim();
        if !statement.is_empty() {
            runs.push(if *marker {
                format!("{AUTOCOMMIT}\n{statement}")
            } else {
                statement.to_string()
            });
        }
        current.clear();
        *marker = false;
    };
    for line in text.split('\n') {
        let stripped = line.trim();
        if stripped == "-- upgrade" {
            in_section = true;
        } else if !in_section {
        } else if stripped == "-- rollback" {
            if !current.is_empty() {
                flush(&mut current, &mut marker);
            }
            in_section = false;
        } else if stripped == AUTOCOMMIT {
            if !current.is_empty() {
                flush(&mut current, &mut marker);
            }
            marker = true;
        } else if !stripped.is_empty() && !stripped.starts_with("--") {
            current.push(line);
        } else if !current.is_empty() && stripped.is_empty() {
            flush(&mut current, &mut marker);
        }
    }
    flush(&mut current, &mut marker);
    let statements: Vec<String> = runs
        .iter()
        .flat_map(|run| split_like_dbwarden(run))
        .collect();
    hex(&Sha256::digest(statements.join(";").as_bytes()))
}

/// DBWarden's split of SQL at `;`: outside `'`, `"` and `` ` `` quotes (a
/// doubled quote or a backslash escaping the next character), `--` and
/// `/* */` comments; each piece trimmed, empty ones left out.
fn split_like_dbwarden(sql: &str) -> Vec<String> {
    let chars: Vec<char> = sql.chars().collect();
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut push = |current: &mut String| {
        let piece = current.trim();
        if !piece.is_empty() {
            statements.push(piece.to_string());
        }
        current.clear();
    };
    let (mut quote, mut line_comment, mut block_comment) = (None, false, false);
    let mut i = 0;
    while i < chars.len() {
        let (c, next) = (chars[i], chars.get(i + 1).copied());
        i += 1;
        if line_comment {
            current.push(c);
            line_comment = c != '\n';
            continue;
        }
        if block_comment {
            current.push(c);
            if c == '*' && next == Some('/') {
                current.push('/');
                block_comment = false;
                i += 1;
            }
            continue;
        }
        if let Some(q) = quote {
            current.push(c);
            if c == q && next == Some(q) || c == '\\' && next.is_some() {
                current.extend(next);
                i += 1;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match (c, next) {
            ('\'' | '"' | '`', _) => quote = Some(c),
            ('-', Some('-')) => line_comment = true,
            ('/', Some('*')) => block_comment = true,
            (';', _) => {
                push(&mut current);
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    push(&mut current);
    statements
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jetbase_rows_as_jetbase_writes_them() {
        let row = |version: Option<&str>, kind: &str, file: &str| -> Vec<Option<String>> {
            vec![
                version.map(str::to_string),
                Some(kind.to_string()),
                Some("0".repeat(64)),
                Some(file.to_string()),
            ]
        };
        let set = MigrationSet::from_migrations("m", Vec::new()).unwrap();
        let rows = [
            row(Some("1"), "VERSIONED", "V1__a.sql"),
            row(None, "RUNS_ON_CHANGE", "ROC__v.sql"),
            row(Some("2"), "VERSIONED", "V2__b.sql"),
        ];
        let found = applied_by(Tool::Jetbase, &rows, &set).unwrap();
        assert_eq!(found.applied, [Version::whole(1), Version::whole(2)]);
        assert!(found.ran.is_empty());
        assert_eq!(
            found.warnings,
            ["repeatable migration ROC__v.sql ran under jetbase but has no file here: not recorded"]
        );
        // jetbase's default versions are dotted; a version that is none is
        // refused, naming the file.
        let dotted = [
            row(
                Some("20251225.120000"),
                "VERSIONED",
                "V20251225.120000__a.sql",
            ),
            row(Some("3"), "VERSIONED", "V3__c.sql"),
        ];
        let found = applied_by(Tool::Jetbase, &dotted, &set).unwrap();
        assert_eq!(
            found.applied,
            [
                Version::whole(3),
                Version::parse("20251225.120000").unwrap()
            ]
        );
        let bad = [row(Some("1.x"), "VERSIONED", "V1.x__a.sql")];
        let Err(err) = applied_by(Tool::Jetbase, &bad, &set) else {
            panic!("a version that is none, read")
        };
        assert!(
            err.to_string().contains(
                "jetbase_migrations's version of V1.x__a.sql: version `1.x` is not a number"
            ),
            "{err}"
        );
    }

    #[test]
    fn jetbase_checksums_are_jetbase_s() {
        // As jetbase 0.18.1 recorded these files.
        let table = [
            (
                "-- upgrade\nCREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);\nINSERT INTO users (name) VALUES ('a');\n\n-- rollback\nDROP TABLE users;\n",
                "28a327502fda4f85167a5ac017c7842140ef54e543d274455b4853dd81c51062",
            ),
            (
                "-- upgrade\nDROP VIEW IF EXISTS names;\nCREATE VIEW names AS SELECT name FROM users;\n",
                "b3b8887a8e4103ff93ea50659596780ea958dc58267447fc0867f7cfc969b69e",
            ),
        ];
        for (text, want) in table {
            assert_eq!(jetbase_checksum(text), want, "{text}");
        }
        // Lines of one statement joined, the delimiter cut, whatever the
        // file's spacing.
        assert_eq!(
            jetbase_checksum("-- upgrade\n  SELECT 1,\n   2;;  \n"),
            jetbase_checksum("SELECT 1, 2;")
        );
        assert_ne!(jetbase_checksum("SELECT 1;"), jetbase_checksum("SELECT 2;"));
        // A custom delimiter.
        assert_eq!(
            jetbase_checksum("-- jetbase: delimiter=$$\nSELECT 1$$\n"),
            jetbase_checksum("SELECT 1;")
        );
    }

    #[test]
    fn dbwarden_checksums_are_dbwarden_s() {
        // As DBWarden 0.20.11 computes them (the first as it recorded the
        // file; the second covers its quotes, comments, blank lines,
        // autocommit markers and a second `-- upgrade`).
        let table = [
            (
                "-- upgrade\nCREATE TABLE users (id integer PRIMARY KEY, name varchar(40));\nINSERT INTO users (id, name) VALUES (1, 'a; b');\n\n-- rollback\nDROP TABLE users;\n",
                "a8bcc80f79cc8efe4b784f9fcc0b7541a7e00c7dd4f7ffada0ba8f38639f6658",
            ),
            (
                "-- depends_on: [\"0001\"]\n-- upgrade\n-- a comment\n  SELECT 1;  -- trailing; comment\nSELECT 'it''s;' , \"x;y\", `z`; /* c; */ SELECT 2\n\n\n-- @dbwarden:autocommit\nCREATE INDEX CONCURRENTLY i ON t (c);\n-- @dbwarden:autocommit\n\nSELECT 'a\\';';\n-- rollback\nDROP INDEX i;\n-- upgrade\nSELECT 3;\n",
                "367eb522e4cc29af89cf6b4e61786be8b8e53941f78236ff2f73152d86658757",
            ),
            (
                "SELECT 1;\n",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
        ];
        for (text, want) in table {
            assert_eq!(dbwarden_checksum(text), want, "{text}");
        }
    }

    #[test]
    fn flyway_checksums_are_flyway_s() {
        // CRC-32 of the lines without their endings, as Flyway's
        // ChecksumCalculator feeds them (values from zlib's crc32).
        for (text, want) in [
            ("CREATE TABLE a (id integer);\n", 373690480),
            ("CREATE TABLE c (id integer);\n", -1094671903),
            (
                "\u{feff}SELECT 1;\r\n\r\nSELECT 2;\rSELECT 'é';\n",
                1960275288,
            ),
            ("", 0),
        ] {
            assert_eq!(flyway_checksum(text), want, "{text:?}");
        }
        // Line endings and empty lines are no part of it.
        assert_eq!(
            flyway_checksum("SELECT 1;\r\n\nSELECT 2;"),
            flyway_checksum("SELECT 1;\nSELECT 2;\n")
        );
    }
}
