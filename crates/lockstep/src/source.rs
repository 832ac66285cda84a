//! Migration files on disk: names, sections, directives and checksums.
//!
//! Two layouts are accepted in one directory:
//! - `<version>_<name>.sql` with a `-- upgrade` line, then SQL, and optionally
//!   a `-- rollback` line, then SQL;
//! - a pair `<version>_<name>.up.sql` and `<version>_<name>.down.sql`.
//!
//! A section may hold directive lines: `-- lockstep:no-transaction`,
//! `-- lockstep:lock-timeout DURATION`, `-- lockstep:statement-timeout
//! DURATION`.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::fsread::io_reason;
use crate::remedy::Remedy;
use crate::sql;
use crate::version::Version;

/// Files larger than this are refused: a migration is code, not a data dump,
/// and the whole file is held in memory and sent in one message.
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// All migrations of a directory: the versioned ones, ordered by version,
/// the repeatable ones, by name, and the upgrade callbacks.
#[derive(Debug, Clone)]
pub struct MigrationSet {
    dir: PathBuf,
    migrations: Vec<Migration>,
    repeatables: Vec<Migration>,
    callbacks: Vec<Migration>,
}

/// One migration: its up section and, when it has one, its down section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The version from the file name: whole, or Flyway's dotted one.
    pub version: Version,
    /// The name from the file name, `[a-z0-9_]+`.
    pub name: String,
    /// The `-- upgrade` section (or the `.up.sql` file).
    pub up: Section,
    /// The `-- rollback` section (or the `.down.sql` file), when present and
    /// not empty. Boxed: many migrations have none, and a set holds one
    /// record per file.
    pub down: Option<Box<Section>>,
    /// SHA-256 over the normalised file bytes (see [`Checksum`]).
    pub checksum: Checksum,
    /// Whose layout its file follows.
    pub layout: Layout,
}

/// Whose layout a migration's file follows. A directory holds one tool's
/// single files (pairs go with any).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Layout {
    /// One file, `-- upgrade` and `-- rollback`.
    Lockstep,
    /// `.up.sql` and `.down.sql` (lockstep's, golang-migrate's, sqlx's).
    #[default]
    Pair,
    /// One file, `-- migrate:up` and `-- migrate:down`.
    Dbmate,
    /// One file, `-- +goose Up` and `-- +goose Down`.
    Goose,
    /// One file without markers, all of it the upgrade (sqlx's up-only
    /// migrations).
    WholeFile,
    /// diesel's directory `<version>_<name>/` with `up.sql` and
    /// `down.sql`.
    Diesel {
        /// Its `metadata.toml` says `run_in_transaction = false`.
        no_transaction: bool,
    },
    /// A repeatable migration, `R__<name>.sql` (Flyway's), `ROC__` or
    /// `RA__` (jetbase's): no version, its whole file (or its `-- upgrade`
    /// section) run after the versioned migrations. Its `version` is 0.
    Repeatable(Repeat),
    /// An upgrade callback, `before-upgrade.sql` or `after-upgrade.sql`
    /// (Flyway's `beforeMigrate.sql`, `afterMigrate.sql`): run under the
    /// lock on every upgrade that applies something, never recorded. Its
    /// `version` is 0.
    Callback(Hook),
}

/// When a repeatable migration runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// On every upgrade (`RA__`).
    Always,
    /// When it never ran, or its checksum changed since it last ran (`R__`,
    /// `ROC__`).
    OnChange,
}

impl Repeat {
    /// Its name in JSON: `always`, `on_change`.
    pub fn as_str(self) -> &'static str {
        match self {
            Repeat::Always => "always",
            Repeat::OnChange => "on_change",
        }
    }
}

/// Which upgrade callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Before the first migration an upgrade applies.
    BeforeUpgrade,
    /// After the last.
    AfterUpgrade,
}

impl Hook {
    /// Its file name, as lockstep writes it.
    pub fn file_name(self) -> &'static str {
        match self {
            Hook::BeforeUpgrade => "before-upgrade.sql",
            Hook::AfterUpgrade => "after-upgrade.sql",
        }
    }
}

/// Whose files a migrations directory holds: the config file's `format`.
/// `Auto` takes each file as it comes, one layout per directory; a tool's
/// name refuses any file that is not in that tool's layout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// Whatever the files are, one layout per directory.
    #[default]
    Auto,
    /// lockstep's single files and pairs.
    Lockstep,
    /// golang-migrate's pairs.
    GolangMigrate,
    /// sqlx's marker-less files and pairs.
    Sqlx,
    /// dbmate's single files.
    Dbmate,
    /// goose's single files.
    Goose,
    /// diesel's directories.
    Diesel,
}

impl Format {
    /// The names the config file takes.
    pub const NAMES: &'static [&'static str] = &[
        "auto",
        "lockstep",
        "golang-migrate",
        "sqlx",
        "dbmate",
        "goose",
        "diesel",
    ];

    /// A format by its name in [`Format::NAMES`].
    pub fn parse(name: &str) -> Option<Format> {
        Some(match name {
            "auto" => Format::Auto,
            "lockstep" => Format::Lockstep,
            "golang-migrate" => Format::GolangMigrate,
            "sqlx" => Format::Sqlx,
            "dbmate" => Format::Dbmate,
            "goose" => Format::Goose,
            "diesel" => Format::Diesel,
            _ => return None,
        })
    }

    /// The layout a new migration of this format is written in; `None`
    /// for `Auto` (the directory's newest says).
    pub fn new_layout(self) -> Option<Layout> {
        Some(match self {
            Format::Auto => return None,
            Format::Lockstep => Layout::Lockstep,
            Format::GolangMigrate => Layout::Pair,
            Format::Sqlx => Layout::WholeFile,
            Format::Dbmate => Layout::Dbmate,
            Format::Goose => Layout::Goose,
            Format::Diesel => Layout::Diesel {
                no_transaction: false,
            },
        })
    }

    /// Whether a file of `layout` is one of this format's.
    fn admits(self, layout: Layout) -> bool {
        match self {
            Format::Auto => true,
            Format::Lockstep => matches!(layout, Layout::Lockstep | Layout::Pair),
            Format::GolangMigrate => layout == Layout::Pair,
            Format::Sqlx => matches!(layout, Layout::WholeFile | Layout::Pair),
            Format::Dbmate => layout == Layout::Dbmate,
            Format::Goose => layout == Layout::Goose,
            Format::Diesel => matches!(layout, Layout::Diesel { .. }),
        }
    }
}

impl Layout {
    /// Whether `other` is a layout of the same kind: both repeatable, or
    /// both the same callback.
    fn same_kind(self, other: Layout) -> bool {
        match (self, other) {
            (Layout::Repeatable(_), Layout::Repeatable(_)) => true,
            (a, b) => a == b,
        }
    }

    /// The layout's section markers, for messages.
    fn markers(self) -> &'static str {
        match self {
            Layout::Lockstep => "lockstep's `-- upgrade`/`-- rollback`",
            Layout::Pair => "`.up.sql`/`.down.sql` files",
            Layout::Dbmate => "dbmate's `-- migrate:up`/`-- migrate:down`",
            Layout::Goose => "goose's `-- +goose Up`/`-- +goose Down`",
            Layout::WholeFile => {
                "no section markers (sqlx's layout: the whole file is the upgrade)"
            }
            Layout::Diesel { .. } => "diesel's `<version>_<name>/up.sql` directories",
            Layout::Repeatable(_) => "a repeatable migration's file",
            Layout::Callback(_) => "an upgrade callback's file",
        }
    }

    /// The line that starts the upgrade section.
    fn up_marker(self) -> &'static str {
        match self {
            Layout::Dbmate => "`-- migrate:up`",
            Layout::Goose => "`-- +goose Up`",
            _ => "`-- upgrade`",
        }
    }
}

// A set holds a record per file, all at once: what a record holds inline
// is held 10,000 times over at 10,000 files. Grown only on purpose: by
// the upgrade section's two timeouts, which each migration may set, by
// its file's layout, and by the parts of a dotted version.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Migration>() == 200);

/// The SQL of one direction of a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The SQL text, exactly as in the file (after BOM and CRLF normalisation).
    pub sql: String,
    /// The file it comes from.
    pub path: PathBuf,
    /// The 1-based line of the file on which `sql` starts.
    pub first_line: usize,
    /// Whether the section runs outside a transaction
    /// (`-- lockstep:no-transaction`).
    pub no_transaction: bool,
    /// How long each of its statements may wait for a table lock
    /// (`-- lockstep:lock-timeout 30s`; zero: without bound); `None`: as
    /// the run's `StatementOptions` say.
    pub lock_timeout: Option<Duration>,
    /// How long each of its statements may run
    /// (`-- lockstep:statement-timeout 10m`; zero: without bound); `None`:
    /// as the run's options say.
    pub statement_timeout: Option<Duration>,
}

impl Section {
    /// The file line and column of a byte offset into [`Section::sql`].
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let (line, col) = sql::line_col(&self.sql, offset);
        (self.first_line + line - 1, col)
    }
}

/// Why a migration file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    /// The file (or directory) at fault.
    pub path: PathBuf,
    /// The 1-based line, when the problem is on one.
    pub line: Option<usize>,
    /// What is wrong, as a lowercase phrase.
    pub message: String,
    /// What a human should do about it.
    pub remedy: Option<Remedy>,
}

impl SourceError {
    pub(crate) fn new(path: &Path, message: impl Into<String>) -> Self {
        SourceError {
            path: path.to_path_buf(),
            line: None,
            message: message.into(),
            remedy: None,
        }
    }

    fn at(mut self, line: usize) -> Self {
        self.line = Some(line);
        self
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.remedy = Some(Remedy::Text(hint.into()));
        self
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for SourceError {}

/// Normalises a file's bytes: a UTF-8 byte order mark removed and CRLF
/// line endings turned into LF, so that an editor's or git's line-ending
/// setting never reads as a change.
fn normalize_in_place(bytes: &mut Vec<u8>) {
    let bom = if bytes.starts_with(b"\xEF\xBB\xBF") {
        3
    } else {
        0
    };
    let mut kept = 0;
    for i in bom..bytes.len() {
        if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
            continue;
        }
        bytes[kept] = bytes[i];
        kept += 1;
    }
    bytes.truncate(kept);
}

/// The checksum of a migration: SHA-256 over its normalised file, and for a
/// pair of files over the up file, a NUL byte, then the down file.
pub fn checksum(up: &[u8], down: Option<&[u8]>) -> Checksum {
    let mut hasher = Sha256::new();
    hasher.update(up);
    if let Some(down) = down {
        hasher.update([0u8]);
        hasher.update(down);
    }
    Checksum(Sum::Sha256(hasher.finalize().into()))
}

/// A migration's checksum: SHA-256 over its file, a UTF-8 byte order mark
/// removed and CRLF line endings read as LF (so that an editor's or git's
/// line-ending setting never reads as a change), and for a pair of files
/// over the up file, a NUL byte, then the down file. Written `sha256:<64
/// hex digits>` in the history table and in output. Held as its 32 bytes: as
/// text it would be an allocation per file and per history row, 20,000 of
/// them for 10,000 applied migrations.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Checksum(Sum);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Sum {
    Sha256([u8; 32]),
    /// Text from a history row that is not a SHA-256 checksum as lockstep
    /// writes it: kept as written, equal to no file's checksum.
    Other(Box<str>),
}

const SHA256_PREFIX: &str = "sha256:";

impl Checksum {
    /// Reads a checksum as the history table stores it. Anything but
    /// `sha256:` and 64 lowercase hex digits (a row edited by hand) is kept
    /// as written: it then matches no file, and is shown as it is.
    pub fn parse(text: &str) -> Checksum {
        let digest = text.strip_prefix(SHA256_PREFIX).and_then(|hex| {
            let hex = hex.as_bytes();
            if hex.len() != 64 {
                return None;
            }
            let mut bytes = [0u8; 32];
            for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
                *byte = (lower_hex_digit(pair[0])? << 4) | lower_hex_digit(pair[1])?;
            }
            Some(bytes)
        });
        Checksum(match digest {
            Some(bytes) => Sum::Sha256(bytes),
            None => Sum::Other(text.into()),
        })
    }

    /// The first 12 hex digits, with the prefix: enough to tell two apart
    /// in a message.
    pub fn short(&self) -> String {
        let mut text = self.to_string();
        let mut end = text.len().min(SHA256_PREFIX.len() + 12);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text
    }
}

fn lower_hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Sum::Sha256(bytes) => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let mut text = [0u8; SHA256_PREFIX.len() + 64];
                text[..SHA256_PREFIX.len()].copy_from_slice(SHA256_PREFIX.as_bytes());
                for (pair, byte) in text[SHA256_PREFIX.len()..].chunks_exact_mut(2).zip(bytes) {
                    pair[0] = HEX[usize::from(byte >> 4)];
                    pair[1] = HEX[usize::from(byte & 0xf)];
                }
                f.write_str(std::str::from_utf8(&text).expect("ASCII"))
            }
            Sum::Other(text) => f.write_str(text),
        }
    }
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Checksum({self})")
    }
}

/// How a file name parses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileName {
    /// `<version>_<name>.sql`
    Single {
        /// The version.
        version: Version,
        /// The name.
        name: String,
    },
    /// `<version>_<name>.up.sql` or `.down.sql`
    Half {
        /// The version.
        version: Version,
        /// The name.
        name: String,
        /// `.up.sql` rather than `.down.sql`.
        up: bool,
    },
    /// `R__<name>.sql`, `ROC__<name>.sql`, `RA__<name>.sql`
    Repeatable {
        /// The name.
        name: String,
        /// When it runs.
        repeat: Repeat,
    },
    /// `before-upgrade.sql`, `after-upgrade.sql` (or Flyway's
    /// `beforeMigrate.sql`, `afterMigrate.sql`)
    Callback(Hook),
}

/// Parses a migration file name. `Ok(None)` for files that are not SQL
/// (ignored), an error message for `.sql` files of neither form.
pub(crate) fn parse_file_name(file_name: &str) -> Result<Option<FileName>, String> {
    let Some(stem) = file_name.strip_suffix(".sql") else {
        let lower = file_name.to_ascii_lowercase();
        if lower.ends_with(".sql") {
            // `1_init.SQL` would otherwise be skipped as not SQL, silently.
            return Err("the extension must be `.sql`, in lowercase".to_string());
        }
        return Ok(None);
    };
    let (stem, half) = if let Some(s) = stem.strip_suffix(".up") {
        (s, Some(true))
    } else if let Some(s) = stem.strip_suffix(".down") {
        (s, Some(false))
    } else {
        (stem, None)
    };
    if half.is_none() {
        if let Some(parsed) = parse_unversioned(stem)? {
            return Ok(Some(parsed));
        }
        if let Some(parsed) = parse_dbwarden(stem) {
            return Ok(Some(parsed));
        }
        if let Some(parsed) = parse_yoyo(stem) {
            return Ok(Some(parsed));
        }
    }
    let bad = || {
        "file name does not match `<version>_<name>.sql` or `<version>_<name>.up.sql`/`.down.sql` \
         (version: digits; name: letters, digits, `_`, `-` and `.`)"
            .to_string()
    };
    // Flyway's and jetbase's `V<version>__<description>.sql`, and MSR's
    // `V<version>_<name>.up.sql`: the `V` is not part of the version.
    // Flyway's `U<version>__<description>.sql` undoes its `V` file: the
    // rollback half of a pair.
    let undo = stem.starts_with('U') && half.is_none();
    let half = if undo { Some(false) } else { half };
    let prefixed = stem
        .strip_prefix('V')
        .or_else(|| stem.strip_prefix('U').filter(|_| undo));
    let stem = match prefixed {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => {
            // Flyway's own files: the version up to `__`, dotted or
            // underscored (`V1.2.3__…`, `V1_2_3__…`).
            if half.is_none() || undo {
                let (text, name) = rest.split_once("__").ok_or_else(|| {
                    "a Flyway file name is `V<version>__<description>.sql` (version: digits, \
                     or digits separated by `.` or `_`)"
                        .to_string()
                })?;
                if name.is_empty() || !is_tool_name(name) {
                    return Err(bad());
                }
                let version = Version::parse(text)?;
                let name = name.to_string();
                return Ok(Some(match half {
                    None => FileName::Single { version, name },
                    Some(up) => FileName::Half { version, name, up },
                }));
            }
            rest
        }
        _ => stem,
    };
    // golang-migrate's pairs may have no name: `<version>.up.sql`; Flyway
    // and jetbase put two `_` before the description.
    let (digits, name) = match stem.split_once('_') {
        Some((digits, name)) => (digits, name.strip_prefix('_').unwrap_or(name)),
        None if half.is_some() && !undo => (stem, ""),
        None => return Err(bad()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if (name.is_empty() && half.is_none()) || !is_tool_name(name) {
        return Err(bad());
    }
    let version = parse_version(digits)?;
    let name = name.to_string();
    Ok(Some(match half {
        None => FileName::Single { version, name },
        Some(up) => FileName::Half { version, name, up },
    }))
}

/// A repeatable migration's or a callback's file name (without `.sql`);
/// `None` for any other.
fn parse_unversioned(stem: &str) -> Result<Option<FileName>, String> {
    let hook = match stem {
        "before-upgrade" | "beforeMigrate" => Some(Hook::BeforeUpgrade),
        "after-upgrade" | "afterMigrate" => Some(Hook::AfterUpgrade),
        _ => None,
    };
    if let Some(hook) = hook {
        return Ok(Some(FileName::Callback(hook)));
    }
    // `RA__` and `ROC__` are jetbase's; `R__` Flyway's.
    let prefixes = [
        ("RA__", Repeat::Always),
        ("ROC__", Repeat::OnChange),
        ("R__", Repeat::OnChange),
    ];
    let Some((name, repeat)) = prefixes
        .iter()
        .find_map(|(prefix, repeat)| stem.strip_prefix(prefix).map(|name| (name, *repeat)))
    else {
        return Ok(None);
    };
    if name.is_empty() || !is_tool_name(name) {
        return Err(
            "a repeatable migration's file name is `R__<name>.sql`, `ROC__<name>.sql` or `RA__<name>.sql` \
             (name: letters, digits, `_`, `-` and `.`)"
                .to_string(),
        );
    }
    Ok(Some(FileName::Repeatable {
        name: name.to_string(),
        repeat,
    }))
}

/// DBWarden's file names (without `.sql`): `<database>__<NNNN>_<name>`,
/// a four-digit version after the database's name, and
/// `<database>__RA__<name>`, `<database>__ROC__<name>`; `None` for any
/// other. As DBWarden's pattern reads them, the database's name is the
/// longest that leaves such a rest; it starts with a letter, so that
/// lockstep's own `<version>_<name>` never reads as DBWarden's.
fn parse_dbwarden(stem: &str) -> Option<FileName> {
    let flyway =
        stem.starts_with(['V', 'U']) && stem[1..].starts_with(|c: char| c.is_ascii_digit());
    if flyway || !stem.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let ends: Vec<usize> = stem.match_indices("__").map(|(i, _)| i).collect();
    ends.into_iter().rev().find_map(|at| {
        let (database, rest) = (&stem[..at], &stem[at + 2..]);
        let database_ok = database
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !database_ok {
            return None;
        }
        for (prefix, repeat) in [("RA__", Repeat::Always), ("ROC__", Repeat::OnChange)] {
            if let Some(name) = rest.strip_prefix(prefix).filter(|n| !n.is_empty()) {
                return is_tool_name(name).then(|| FileName::Repeatable {
                    name: name.to_string(),
                    repeat,
                });
            }
        }
        let (digits, name) = rest.split_at_checked(4)?;
        let name = name.strip_prefix('_').filter(|n| !n.is_empty())?;
        if !digits.bytes().all(|b| b.is_ascii_digit()) || !is_tool_name(name) {
            return None;
        }
        Some(FileName::Single {
            version: parse_version(digits).ok()?,
            name: name.to_string(),
        })
    })
}

/// yoyo's file names (without `.sql`), as `yoyo new` writes them:
/// `<YYYYMMDD>_<NN>_<five letters or digits>[-<slug>]`, and the same with
/// `.rollback` for its rollback; `None` for any other. yoyo orders its
/// migrations by that id: the version is the date and the number,
/// `<YYYYMMDD>.<NN>`, in the same order; the name is the rest.
fn parse_yoyo(stem: &str) -> Option<FileName> {
    let (stem, rollback) = match stem.strip_suffix(".rollback") {
        Some(stem) => (stem, true),
        None => (stem, false),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let (date, rest) = stem.split_once('_')?;
    let (number, name) = rest.split_once('_')?;
    let (id, slug) = name.split_at_checked(5)?;
    let shaped = date.len() == 8
        && digits(date)
        && number.len() >= 2
        && digits(number)
        && id.bytes().all(|b| b.is_ascii_alphanumeric())
        && (slug.is_empty() || slug.starts_with('-'))
        && is_tool_name(name);
    if !shaped {
        return None;
    }
    let version = Version::parse(&format!("{date}.{number}")).ok()?;
    let name = name.to_string();
    Some(match rollback {
        false => FileName::Single { version, name },
        true => FileName::Half {
            version,
            name,
            up: false,
        },
    })
}

/// A migration's name as the tools that made it write names: ASCII
/// letters, digits, `_`, `-` and `.` (lockstep's own `new` writes
/// lowercase, digits and `_`).
fn is_tool_name(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Parses a whole version: digits, at most 18 of them so that it fits a
/// signed 64-bit column on every engine.
pub(crate) fn parse_version(digits: &str) -> Result<Version, String> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("version `{digits}` is not a number"));
    }
    Version::parse(digits)
}

/// A migration named in a refusal or error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// Its version (0 for a repeatable migration or a callback).
    pub version: Version,
    /// Its name.
    pub name: String,
    /// Versioned, repeatable or a callback.
    pub kind: Kind,
}

/// What kind of file a migration is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Kind {
    /// Versioned: applied once, in version order.
    #[default]
    Versioned,
    /// Repeatable: no version, runs after the versioned ones.
    Repeatable(Repeat),
    /// An upgrade callback, never recorded.
    Callback(Hook),
}

impl Named {
    /// The migration `m`, named.
    pub fn of(m: &Migration) -> Named {
        Named {
            version: m.version,
            name: m.name.clone(),
            kind: m.kind(),
        }
    }

    /// A versioned migration, named.
    pub fn versioned(version: Version, name: &str) -> Named {
        Named {
            version,
            name: name.to_string(),
            kind: Kind::Versioned,
        }
    }
}

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Repeatable(_) => return write!(f, "repeatable {}", self.name),
            Kind::Callback(hook) => return write!(f, "callback {}", hook.file_name()),
            Kind::Versioned => {}
        }
        if self.name.is_empty() {
            // golang-migrate's `<version>.up.sql` has no name.
            write!(f, "{}", self.version)
        } else {
            write!(f, "{} {}", self.version, self.name)
        }
    }
}

/// A migration that ran and is recorded (or, in a dry run, would be).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The version.
    pub version: Version,
    /// The name.
    pub name: String,
    /// Wall time of the migration, including its round trip.
    pub duration: std::time::Duration,
    /// Whether it ran outside a transaction.
    pub no_transaction: bool,
    /// Versioned, repeatable or a callback.
    pub kind: Kind,
}

impl Step {
    /// The migration that ran, named.
    pub fn named(&self) -> Named {
        Named {
            version: self.version,
            name: self.name.clone(),
            kind: self.kind,
        }
    }
}

/// The error for a file whose upgrade section is empty, in the words of
/// its layout.
fn unwritten(m: &Migration) -> SourceError {
    let path = &m.up.path;
    match m.layout {
        Layout::Pair | Layout::Diesel { .. } => SourceError::new(path, "the upgrade file is empty")
            .hint("write the migration's SQL in this file"),
        // The section starts on the line after its marker.
        _ if m.up.first_line > 1 => {
            let marker = match m.layout {
                Layout::Dbmate | Layout::Goose => m.layout.up_marker(),
                _ => Layout::Lockstep.up_marker(),
            };
            SourceError::new(path, "the upgrade section is empty")
                .at(m.up.first_line - 1)
                .hint(format!("write the migration's SQL after the {marker} line"))
        }
        _ => SourceError::new(path, "the file is empty").hint(
            "write the migration's SQL after a line `-- upgrade`, and what undoes it after `-- rollback`",
        ),
    }
}

impl Migration {
    /// Whether its upgrade section holds no SQL yet (comments at most):
    /// nothing to apply.
    pub fn is_unwritten(&self) -> bool {
        !sql::has_code(&self.up.sql)
    }

    /// Versioned, repeatable or a callback: what its layout says.
    pub fn kind(&self) -> Kind {
        match self.layout {
            Layout::Repeatable(repeat) => Kind::Repeatable(repeat),
            Layout::Callback(hook) => Kind::Callback(hook),
            _ => Kind::Versioned,
        }
    }

    /// The largest version: 18 digits, so that every version fits a signed
    /// 64-bit column on every engine.
    pub const MAX_VERSION: u64 = 999_999_999_999_999_999;

    /// The largest migration file lockstep reads.
    pub const MAX_FILE_BYTES: u64 = MAX_FILE_BYTES;

    /// Parses a version as a file name writes it: digits (at most 18), or
    /// Flyway's dotted or underscored parts (see [`Version`]).
    pub fn parse_version(text: &str) -> Result<Version, String> {
        Version::parse(text)
    }

    /// Checks a name for a new migration: lowercase letters, digits and
    /// `_`.
    pub fn check_name(name: &str) -> Result<(), String> {
        if !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            Ok(())
        } else {
            Err(format!(
                "invalid migration name `{name}`: use lowercase letters, digits and `_`"
            ))
        }
    }

    /// The version of a file named as a migration (`<version>_<name>.sql`,
    /// or either file of a pair); `None` for any other name.
    pub fn version_of(file_name: &str) -> Option<Version> {
        match parse_file_name(file_name) {
            Ok(Some(FileName::Single { version, .. } | FileName::Half { version, .. })) => {
                Some(version)
            }
            _ => None,
        }
    }

    /// The version of a directory named as a diesel migration
    /// (`2023-01-01-120000_create_users`); `None` for any other name.
    pub fn version_of_dir(dir_name: &str) -> Option<Version> {
        parse_diesel_name(dir_name).map(|(version, _)| version)
    }

    /// The version that a directory numbered by timestamps gives a
    /// migration written at `time`: `YYYYMMDDHHMMSS` in UTC.
    pub fn version_at(time: std::time::SystemTime) -> u64 {
        let secs = time
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let u = crate::clock::Utc::from_unix(secs as i64);
        let date = (u.year as u64 * 100 + u64::from(u.month)) * 100 + u64::from(u.day);
        date * 1_000_000
            + u64::from(u.hour) * 10_000
            + u64::from(u.minute) * 100
            + u64::from(u.second)
    }
}

impl MigrationSet {
    /// Reads and parses every migration in `dir`. Fails on the first bad
    /// file, in file-name order, without touching any database.
    pub fn load(dir: impl AsRef<Path>) -> Result<MigrationSet, SourceError> {
        Self::load_as(dir, Format::Auto)
    }

    /// [`MigrationSet::load`], refusing any file not in `format`'s layout.
    pub fn load_as(dir: impl AsRef<Path>, format: Format) -> Result<MigrationSet, SourceError> {
        let set = Self::load_drafts_as(dir, format)?;
        set.check_written()?;
        Ok(set)
    }

    /// [`MigrationSet::load_as`], taking in files whose upgrade section is
    /// still empty (the state right after `lockstep new`), for `status` to
    /// show them; [`Migration::is_unwritten`] tells them.
    pub fn load_drafts_as(
        dir: impl AsRef<Path>,
        format: Format,
    ) -> Result<MigrationSet, SourceError> {
        let dir = dir.as_ref();
        let names = list(dir)?;
        let (mut jobs, unversioned) = jobs(dir, names)?;
        // In version order before parsing: the result needs no sort, and
        // the first error reported is the first in version order. Within a
        // version, in the listing's (name) order. In place: the listing is
        // nearly always in version order already.
        jobs.sort_unstable_by(|a, b| (a.version(), a.path()).cmp(&(b.version(), b.path())));
        check_versions_once(&jobs)?;
        join_pairs(&mut jobs)?;
        let migrations = parse_all(jobs)?;
        if let Some(m) = migrations.iter().find(|m| !format.admits(m.layout)) {
            return Err(SourceError::new(
                &m.up.path,
                format!(
                    "not in the layout `format` names: it uses {}",
                    m.layout.markers()
                ),
            )
            .hint(
                "rewrite it in the directory's layout, or set `format = \"auto\"` in lockstep.toml",
            ));
        }
        check_one_layout(&migrations)?;
        let (repeatables, callbacks) = parse_unversioned_files(unversioned)?;
        Ok(MigrationSet {
            dir: dir.to_path_buf(),
            migrations,
            repeatables,
            callbacks,
        })
    }

    /// Builds a set from migrations parsed elsewhere (embedders that ship
    /// their migrations inside the binary). Versions must be unique;
    /// repeatable migrations and callbacks (by their layout) go apart.
    pub fn from_migrations(
        dir: impl Into<PathBuf>,
        migrations: Vec<Migration>,
    ) -> Result<MigrationSet, SourceError> {
        let dir = dir.into();
        let (unversioned, mut migrations): (Vec<Migration>, Vec<Migration>) = migrations
            .into_iter()
            .partition(|m| matches!(m.layout, Layout::Repeatable(_) | Layout::Callback(_)));
        let (mut repeatables, mut callbacks): (Vec<Migration>, Vec<Migration>) = unversioned
            .into_iter()
            .partition(|m| matches!(m.layout, Layout::Repeatable(_)));
        repeatables.sort_by(|a, b| a.name.cmp(&b.name));
        callbacks.sort_by_key(|c| matches!(c.layout, Layout::Callback(Hook::AfterUpgrade)));
        migrations.sort_by_key(|m| m.version);
        for pair in migrations.windows(2) {
            if pair[0].version == pair[1].version {
                return Err(duplicate(
                    &pair[1].up.path,
                    &pair[0].up.path,
                    pair[0].version,
                ));
            }
        }
        Ok(MigrationSet {
            dir,
            migrations,
            repeatables,
            callbacks,
        })
    }

    /// The directory the migrations were read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The layout of the newest migration in `dir` (by version), read
    /// without parsing the others: the form `new` writes the next one in.
    /// `None` for a directory without migrations; a file that does not
    /// parse counts as lockstep's own.
    pub fn newest_layout(dir: impl AsRef<Path>) -> Option<Layout> {
        let dir = dir.as_ref();
        let mut newest: Option<(Version, Layout, PathBuf)> = None;
        for (name, kind) in list(dir).ok()? {
            let found = if kind.is_dir() {
                parse_diesel_name(&name)
                    .filter(|_| dir.join(&name).join("up.sql").is_file())
                    .map(|(v, _)| {
                        (
                            v,
                            Layout::Diesel {
                                no_transaction: false,
                            },
                        )
                    })
            } else {
                match parse_file_name(&name) {
                    Ok(Some(FileName::Half { version, .. })) => Some((version, Layout::Pair)),
                    Ok(Some(FileName::Single { version, .. })) => Some((version, Layout::Lockstep)),
                    _ => None,
                }
            };
            if let Some((version, layout)) = found {
                if newest.as_ref().is_none_or(|(v, ..)| version > *v) {
                    newest = Some((version, layout, dir.join(&name)));
                }
            }
        }
        let (_, layout, path) = newest?;
        if layout != Layout::Lockstep {
            return Some(layout);
        }
        // A single file: its markers say whose it is.
        let text = read_text(&path).ok()?;
        Some(match find_markers(&text, &path) {
            Ok(Some(markers)) => markers.layout,
            Ok(None) => Layout::WholeFile,
            Err(_) => Layout::Lockstep,
        })
    }

    /// The migrations, ordered by version.
    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    /// Refuses the first file, in version order, whose upgrade section is
    /// empty: nothing to apply yet.
    pub fn check_written(&self) -> Result<(), SourceError> {
        let all = self
            .migrations
            .iter()
            .chain(&self.repeatables)
            .chain(&self.callbacks);
        match all.filter(|m| m.is_unwritten()).map(unwritten).next() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// The upgrade callbacks: the one before the upgrade first.
    pub fn callbacks(&self) -> &[Migration] {
        &self.callbacks
    }

    /// The repeatable migrations, by name.
    pub fn repeatables(&self) -> &[Migration] {
        &self.repeatables
    }

    /// The upgrade callback for `hook`, when the directory has one.
    pub fn callback(&self, hook: Hook) -> Option<&Migration> {
        self.callbacks
            .iter()
            .find(|c| c.layout == Layout::Callback(hook))
    }

    /// The migration with this version.
    pub fn get(&self, version: Version) -> Option<&Migration> {
        self.migrations
            .binary_search_by_key(&version, |m| m.version)
            .ok()
            .map(|i| &self.migrations[i])
    }
}

/// The directory's entries that may be migrations (not hidden), by name,
/// with their type from the listing itself: no system call per file on
/// file systems that report it (std falls back to lstat where they do not).
fn list(dir: &Path) -> Result<Vec<(String, fs::FileType)>, SourceError> {
    let entries = fs::read_dir(dir).map_err(|e| {
        let err = SourceError::new(
            dir,
            format!("cannot read the migrations directory: {}", io_reason(&e)),
        );
        if e.kind() == io::ErrorKind::NotFound {
            SourceError {
                remedy: Some(Remedy::CreateMigrations),
                ..err
            }
        } else {
            err
        }
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| SourceError::new(dir, io_reason(&e)))?;
        let Ok(file_name) = entry.file_name().into_string() else {
            continue;
        };
        if file_name.starts_with('.') {
            continue;
        }
        let kind = entry
            .file_type()
            .map_err(|e| SourceError::new(&entry.path(), io_reason(&e)))?;
        names.push((file_name, kind));
    }
    names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(names)
}

/// A job for each file named like a migration; a file named almost like
/// one, or an entry named like one that is not a regular file inside the
/// directory, is an error.
/// Repeatable migrations and callbacks come apart, as the files they are.
fn jobs(dir: &Path, names: Vec<(String, fs::FileType)>) -> Result<Listed, SourceError> {
    let canonical_dir = fs::canonicalize(dir).map_err(|e| SourceError::new(dir, io_reason(&e)))?;
    let mut jobs: Vec<Job> = Vec::with_capacity(names.len());
    let mut unversioned: Vec<(FileName, PathBuf)> = Vec::new();
    // Every badly named file, named in one run: a directory taken over
    // from another tool may have many.
    let mut bad_names: Vec<(PathBuf, String, String)> = Vec::new();
    for (file_name, kind) in names {
        // Sized exactly (`join` doubles the buffer as it grows): each
        // migration keeps its path.
        let mut path = PathBuf::with_capacity(dir.as_os_str().len() + 1 + file_name.len());
        path.push(dir);
        path.push(&file_name);
        if kind.is_dir() {
            if let Some(job) = diesel_job(&file_name, &path)? {
                jobs.push(job);
                continue;
            }
        }
        let parsed = match parse_file_name(&file_name) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => continue,
            Err(message) => {
                if path.is_file() {
                    let at = offending_char(&file_name)
                        .map(|(i, c)| format!(" (`{c}` at character {})", i + 1))
                        .unwrap_or_default();
                    bad_names.push((path, message, at));
                }
                continue;
            }
        };
        let is_file = if kind.is_symlink() {
            check_inside(&path, &canonical_dir)?;
            path.is_file()
        } else {
            kind.is_file()
        };
        if !is_file {
            // A directory, FIFO or device named like a migration is a
            // mistake worth naming: it would otherwise vanish silently.
            return Err(SourceError::new(&path, "not a regular file")
                .hint("migrations are plain `.sql` files; rename or remove this entry"));
        }
        jobs.push(match parsed {
            FileName::Repeatable { .. } | FileName::Callback(_) => {
                unversioned.push((parsed, path));
                continue;
            }
            FileName::Single { version, name } => Job::Single(version, name, path),
            FileName::Half { version, name, up } => {
                let (up, down) = if up {
                    (Some(path), None)
                } else {
                    (None, Some(path))
                };
                Job::Pair(
                    version,
                    Halves {
                        name,
                        up,
                        down,
                        layout: Layout::Pair,
                    },
                )
            }
        });
    }
    if let Some((first, message, at)) = bad_names.first() {
        let message = match bad_names.len() {
            1 => format!("{message}{at}"),
            n => {
                let all: Vec<String> = bad_names
                    .iter()
                    .map(|(path, _, at)| format!("{}{at}", path.display()))
                    .collect();
                format!(
                    "{n} files are named neither way: {}; {message}",
                    all.join(", ")
                )
            }
        };
        let hint = if bad_names.len() == 1 {
            "rename it, or move it out of the migrations directory"
        } else {
            "rename them, or move them out of the migrations directory"
        };
        return Err(SourceError::new(first, message).hint(hint));
    }
    Ok((jobs, unversioned))
}

/// A repeatable migration or a callback from its file's text: the whole
/// file, or its `-- upgrade` section; a rollback section is refused.
fn parse_unversioned_text(
    parsed: FileName,
    path: PathBuf,
    text: String,
) -> Result<Migration, SourceError> {
    let (name, layout) = match parsed {
        FileName::Repeatable { name, repeat } => (name, Layout::Repeatable(repeat)),
        FileName::Callback(hook) => (String::new(), Layout::Callback(hook)),
        FileName::Single { .. } | FileName::Half { .. } => unreachable!("versioned"),
    };
    let mut m = parse_single_text(Version::default(), name, path, text)?;
    if let Some(down) = &m.down {
        let what = if matches!(layout, Layout::Repeatable(_)) {
            "a repeatable migration has no rollback section: `rollback` leaves it as it is"
        } else {
            "an upgrade callback has no rollback section"
        };
        return Err(SourceError::new(&m.up.path, what)
            .at(down.first_line.saturating_sub(1))
            .hint("remove the rollback section"));
    }
    m.layout = layout;
    Ok(m)
}

/// A directory's versioned migrations to parse, and its repeatable
/// migrations' and callbacks' files.
type Listed = (Vec<Job>, Vec<(FileName, PathBuf)>);

/// The repeatable migrations (by name) and the callbacks (before, then
/// after) of a directory, parsed: each file whole, or its `-- upgrade`
/// section, never a rollback; no two of one name or hook.
fn parse_unversioned_files(
    files: Vec<(FileName, PathBuf)>,
) -> Result<(Vec<Migration>, Vec<Migration>), SourceError> {
    let mut repeatables: Vec<Migration> = Vec::new();
    let mut callbacks: Vec<Migration> = Vec::new();
    for (parsed, path) in files {
        let text = read_text(&path)?;
        let m = parse_unversioned_text(parsed, path, text)?;
        let layout = m.layout;
        let others = if matches!(layout, Layout::Repeatable(_)) {
            &mut repeatables
        } else {
            &mut callbacks
        };
        if let Some(other) = others
            .iter()
            .find(|o| o.name == m.name && o.layout.same_kind(layout))
        {
            let what = match layout {
                Layout::Callback(hook) => format!("a second `{}` callback", hook.file_name()),
                _ => format!("a second repeatable migration named `{}`", m.name),
            };
            return Err(SourceError::new(
                &m.up.path,
                format!("{what}: `{}` is one too", other.up.path.display()),
            )
            .hint("keep one of the two files"));
        }
        others.push(m);
    }
    repeatables.sort_by(|a, b| a.name.cmp(&b.name));
    callbacks.sort_by_key(|c| matches!(c.layout, Layout::Callback(Hook::AfterUpgrade)));
    Ok((repeatables, callbacks))
}

/// The first character of a file name where it stops being a migration's
/// `<version>_<name>[.up|.down].sql`, as a 0-based character index.
fn offending_char(file_name: &str) -> Option<(usize, char)> {
    let stem = file_name.strip_suffix(".sql")?;
    let stem = stem
        .strip_suffix(".up")
        .or_else(|| stem.strip_suffix(".down"))
        .unwrap_or(stem);
    if let Some(prefix) = ["RA__", "ROC__", "R__"]
        .into_iter()
        .find(|p| stem.starts_with(p))
    {
        return stem
            .chars()
            .enumerate()
            .skip(prefix.len())
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')));
    }
    let mut chars = stem.chars().enumerate().peekable();
    let mut digits = 0;
    while chars.next_if(|(_, c)| c.is_ascii_digit()).is_some() {
        digits += 1;
    }
    match chars.next() {
        Some((i, c)) if digits == 0 || c != '_' => return Some((i, c)),
        None if digits == 0 => return stem.chars().next().map(|c| (0, c)),
        _ => {}
    }
    chars.find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
}

/// A diesel migration: a directory `<version>_<name>` (the version's
/// digits may be split by `-`: `2023-01-01-000000`) holding `up.sql` and
/// `down.sql`, and a `metadata.toml` that may say `run_in_transaction =
/// false`. `None` for a directory that holds no `up.sql`; a directory that
/// does, named otherwise, is refused: it would be ignored silently.
fn diesel_job(dir_name: &str, path: &Path) -> Result<Option<Job>, SourceError> {
    let up = path.join("up.sql");
    if !up.is_file() {
        return Ok(None);
    }
    let Some((version, name)) = parse_diesel_name(dir_name) else {
        return Err(SourceError::new(
            path,
            "a directory with an `up.sql` whose name does not match diesel's `<version>_<name>`",
        )
        .hint("name it `<version>_<name>` (version: digits, which may be split by `-`), or move it out of the migrations directory"));
    };
    let down = path.join("down.sql");
    let metadata = fs::read_to_string(path.join("metadata.toml")).unwrap_or_default();
    let no_transaction = metadata.lines().any(|l| {
        let l: String = l.chars().filter(|c| !c.is_whitespace()).collect();
        l == "run_in_transaction=false"
    });
    Ok(Some(Job::Pair(
        version,
        Halves {
            name: name.to_string(),
            up: Some(up),
            down: down.is_file().then_some(down),
            layout: Layout::Diesel { no_transaction },
        },
    )))
}

/// A diesel directory's version and name: `2023-01-01-120000_create_users`.
fn parse_diesel_name(dir_name: &str) -> Option<(Version, &str)> {
    let (version, name) = dir_name.split_once('_')?;
    let digits: String = version.chars().filter(|&c| c != '-').collect();
    let dashes_between_digits = !version.starts_with('-') && !version.ends_with('-');
    (dashes_between_digits && !name.is_empty() && is_tool_name(name))
        .then(|| parse_version(&digits).ok().map(|v| (v, name)))
        .flatten()
}

/// Joins the two halves of a pair (jobs in version order), which share a
/// version, into one job; anything else that shares a version is a
/// duplicate.
fn join_pairs(jobs: &mut Vec<Job>) -> Result<(), SourceError> {
    let mut duplicated = None;
    jobs.dedup_by(|later, earlier| {
        if later.version() != earlier.version() || duplicated.is_some() {
            return false;
        }
        let version = earlier.version();
        match (later, earlier) {
            (Job::Pair(_, l), Job::Pair(_, e))
                if e.up.is_none() != l.up.is_none() && e.down.is_none() != l.down.is_none() =>
            {
                if l.name != e.name {
                    // The two halves of one pair, misnamed: not two
                    // migrations of one version.
                    duplicated = Some(halves_disagree(e, l, version));
                    return false;
                }
                e.up = e.up.take().or(l.up.take());
                e.down = e.down.take().or(l.down.take());
                true
            }
            // Flyway's `U` file (listed first) and the `V` file it undoes;
            // yoyo's `<id>.rollback.sql` (listed first) and its `<id>.sql`.
            (Job::Single(_, name, path), Job::Pair(_, e))
                if e.up.is_none()
                    && (is_undo(e.down.as_deref()) && is_flyway(path)
                        || is_rollback_of(e.down.as_deref(), path)) =>
            {
                if *name != e.name {
                    duplicated = Some(halves_disagree(
                        e,
                        &Halves {
                            name: name.clone(),
                            up: Some(path.clone()),
                            ..Halves::default()
                        },
                        version,
                    ));
                    return false;
                }
                e.up = Some(std::mem::take(path));
                true
            }
            (later, earlier) => {
                duplicated = Some(duplicate(later.path(), earlier.path(), earlier.version()));
                false
            }
        }
    });
    duplicated.map_or(Ok(()), Err)
}

/// Whether `down` is yoyo's rollback of `up`: `<id>.rollback.sql` beside
/// `<id>.sql`.
fn is_rollback_of(down: Option<&Path>, up: &Path) -> bool {
    let rollback = up.to_str().and_then(|u| u.strip_suffix(".sql"));
    rollback.is_some_and(|r| down == Some(Path::new(&format!("{r}.rollback.sql"))))
}

/// Whether `path` names a Flyway undo file, `U<version>__….sql`.
fn is_undo(path: Option<&Path>) -> bool {
    file_name_starts(path, 'U')
}

/// Whether `path` names a Flyway versioned file, `V<version>__….sql`.
fn is_flyway(path: &Path) -> bool {
    file_name_starts(Some(path), 'V')
}

fn file_name_starts(path: Option<&Path>, letter: char) -> bool {
    path.and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(letter))
}

/// One migration to read and parse.
enum Job {
    Single(Version, String, PathBuf),
    Pair(Version, Halves),
}

impl Job {
    fn version(&self) -> Version {
        match self {
            Job::Single(version, ..) | Job::Pair(version, _) => *version,
        }
    }

    /// The file the job was listed under; for a pair, its up half when it
    /// has one.
    fn path(&self) -> &Path {
        match self {
            Job::Single(_, _, path) => path,
            Job::Pair(_, h) => {
                h.up.as_deref()
                    .or(h.down.as_deref())
                    .unwrap_or(Path::new(""))
            }
        }
    }

    /// Parses the job's migration; the job gives up its names to it.
    fn run(&mut self) -> Result<Migration, SourceError> {
        match self {
            Job::Single(version, name, path) => {
                parse_single(*version, std::mem::take(name), std::mem::take(path))
            }
            Job::Pair(version, halves) => parse_pair(*version, std::mem::take(halves)),
        }
    }
}

/// Below this many files one thread reads them faster than two start.
const PARALLEL_FROM: usize = 200;

/// Reads and parses the jobs, on a few threads when there are many (the
/// time goes to opening and reading files). Returns the migrations in job
/// order, or the error of the first job in that order that failed: the
/// same answer as one thread would give. Each thread fills its own part of
/// the result.
fn parse_all(mut jobs: Vec<Job>) -> Result<Vec<Migration>, SourceError> {
    let threads = if jobs.len() < PARALLEL_FROM {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    };
    let mut parsed: Vec<Option<Migration>> = Vec::with_capacity(jobs.len());
    parsed.resize_with(jobs.len(), || None);
    let fill = |jobs: &mut [Job], out: &mut [Option<Migration>]| {
        for (job, slot) in jobs.iter_mut().zip(out) {
            *slot = Some(job.run()?);
        }
        Ok::<(), SourceError>(())
    };
    let per_thread = jobs.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let mut parts = jobs
            .chunks_mut(per_thread)
            .zip(parsed.chunks_mut(per_thread));
        // This thread takes the first part.
        let mine = parts.next();
        let others: Vec<_> = parts
            .map(|(jobs, out)| scope.spawn(move || fill(jobs, out)))
            .collect();
        // The first failure in job order: this thread's part comes first.
        if let Some((jobs, out)) = mine {
            fill(jobs, out)?;
        }
        for handle in others {
            handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        }
        Ok::<(), SourceError>(())
    })?;
    Ok(parsed
        .into_iter()
        .map(|m| m.expect("every job was parsed"))
        .collect())
}

#[derive(Default)]
struct Halves {
    name: String,
    up: Option<PathBuf>,
    down: Option<PathBuf>,
    /// Pairs of files, or diesel's directory.
    layout: Layout,
}

/// Refuses a directory whose single files follow more than one tool's
/// layout (pairs go with any), naming the first file of each: a file
/// read in the wrong tool's words would run the wrong SQL.
fn check_one_layout(migrations: &[Migration]) -> Result<(), SourceError> {
    let mut first: Vec<&Migration> = Vec::new();
    for m in migrations.iter().filter(|m| m.layout != Layout::Pair) {
        let kind = std::mem::discriminant(&m.layout);
        if !first
            .iter()
            .any(|f| std::mem::discriminant(&f.layout) == kind)
        {
            first.push(m);
        }
    }
    if first.len() < 2 {
        return Ok(());
    }
    let named: Vec<String> = first
        .iter()
        .map(|m| format!("{} uses {}", m.up.path.display(), m.layout.markers()))
        .collect();
    let err = SourceError::new(
        &first[1].up.path,
        format!(
            "the migrations directory mixes layouts: {}",
            named.join("; ")
        ),
    );
    Err(if first.iter().any(|m| m.layout == Layout::WholeFile) {
        err.hint("a file without section markers runs whole as its upgrade: add `-- upgrade` (and `-- rollback`) to it, as in the other files")
    } else {
        err.hint("mark every file's sections in one tool's words")
    })
}

/// Refuses a version that three or more migrations share, naming every
/// file (two are a duplicate that `join_pairs` names).
fn check_versions_once(jobs: &[Job]) -> Result<(), SourceError> {
    for group in jobs.chunk_by(|a, b| a.version() == b.version()) {
        // A pair's two files are one migration.
        let halves = |up: bool| {
            group
                .iter()
                .filter(|j| matches!(j, Job::Pair(_, h) if h.up.is_some() == up))
                .count()
        };
        let singles = group
            .iter()
            .filter(|j| matches!(j, Job::Single(..)))
            .count();
        if singles + halves(true).max(halves(false)) < 3 {
            continue;
        }
        if let [first, rest @ ..] = group {
            let others: Vec<String> = rest
                .iter()
                .map(|j| format!("`{}`", j.path().display()))
                .collect();
            return Err(SourceError::new(
                first.path(),
                format!(
                    "duplicate version {}: {} have it too",
                    first.version(),
                    others.join(" and ")
                ),
            )
            .hint("give all but one of them new versions: each version must be unique"));
        }
    }
    Ok(())
}

fn duplicate(path: &Path, other: &Path, version: Version) -> SourceError {
    SourceError::new(
        path,
        format!(
            "duplicate version {version}: `{}` has it too",
            other.display()
        ),
    )
    .hint("give one of them a new version: each version must be unique")
}

/// The `.up.sql` and `.down.sql` of one version under two names.
fn halves_disagree(a: &Halves, b: &Halves, version: Version) -> SourceError {
    let (up, down) = if a.up.is_some() { (a, b) } else { (b, a) };
    let path = |h: &Halves| {
        h.up.as_deref()
            .or(h.down.as_deref())
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    SourceError::new(
        Path::new(&path(down)),
        format!(
            "this `.down.sql` file and `{}` have version {version} but different names (`{}` and `{}`)",
            path(up),
            down.name,
            up.name
        ),
    )
    .hint("name both files of a pair alike, or give one of them a new version")
}

/// Refuses a symlink that leads out of the migrations directory: the
/// directory is what gets reviewed, so it must be what runs.
fn check_inside(path: &Path, canonical_dir: &Path) -> Result<(), SourceError> {
    let target = fs::canonicalize(path)
        .map_err(|e| SourceError::new(path, format!("broken symbolic link: {}", io_reason(&e))))?;
    if target.starts_with(canonical_dir) {
        Ok(())
    } else {
        Err(SourceError::new(
            path,
            format!(
                "symbolic link points outside the migrations directory (to `{}`)",
                target.display()
            ),
        )
        .hint("copy the file into the migrations directory instead"))
    }
}

/// Reads a migration file, refusing anything but a regular file of at most
/// [`MAX_FILE_BYTES`].
fn read_text(path: &Path) -> Result<String, SourceError> {
    use crate::fsread::{read_regular, ReadError};
    let bytes = read_regular(path, MAX_FILE_BYTES).map_err(|e| match e {
        ReadError::Io(e) => SourceError::new(path, format!("cannot read: {}", io_reason(&e))),
        ReadError::NotRegular => SourceError::new(path, "not a regular file")
            .hint("migrations are plain `.sql` files; rename or remove this entry"),
        ReadError::TooLarge(_) => SourceError::new(path, e.reason(MAX_FILE_BYTES))
            .hint("split it into several migrations, or load bulk data with a dedicated tool"),
    })?;
    decode(path, bytes)
}

/// Normalises a file's bytes and decodes them as UTF-8, in the buffer
/// they were read into.
fn decode(path: &Path, mut bytes: Vec<u8>) -> Result<String, SourceError> {
    normalize_in_place(&mut bytes);
    // SQLite reads a statement's text only up to a NUL and silently drops
    // the rest; PostgreSQL refuses it only when the migration runs, after
    // the ones before it committed. No SQL holds one: refuse it here.
    if let Some(at) = bytes.iter().position(|&b| b == 0) {
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        return Err(SourceError::new(path, "file holds a NUL byte")
            .at(line)
            .hint("remove it: SQL text cannot hold a NUL byte (SQLite would silently ignore everything after it)"));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..valid]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        SourceError::new(path, "file is not valid UTF-8")
            .at(line)
            .hint("save the file as UTF-8")
    })
}

/// What a line of a migration file is to the parser.
enum Line<'a> {
    /// A section marker: up or down, in a tool's words; `false` when it
    /// says the section runs outside a transaction (dbmate's
    /// `transaction:false`).
    Upgrade(Layout, bool),
    Rollback(Layout, bool),
    /// goose's `-- +goose NO TRANSACTION`: the whole file.
    NoTransaction,
    /// DBWarden's `-- @dbwarden:autocommit` before a statement that must
    /// run outside a transaction: the section it is in.
    Autocommit,
    Directive(&'a str),
    Other,
}

fn classify_line(line: &str) -> Line<'_> {
    let trimmed = line.trim();
    let Some(comment) = trimmed.strip_prefix("--") else {
        return Line::Other;
    };
    let comment = comment.trim();
    if let Some(marker) = tool_marker(comment) {
        return marker;
    }
    if comment == "@dbwarden:autocommit" {
        Line::Autocommit
    } else if comment.eq_ignore_ascii_case("upgrade") {
        Line::Upgrade(Layout::Lockstep, true)
    } else if comment.eq_ignore_ascii_case("rollback") {
        Line::Rollback(Layout::Lockstep, true)
    } else if comment
        .get(..9)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("lockstep:"))
    {
        Line::Directive(comment[9..].trim())
    } else {
        Line::Other
    }
}

/// What a section's directive lines say.
#[derive(Default)]
struct Directives {
    no_transaction: bool,
    lock_timeout: Option<Duration>,
    statement_timeout: Option<Duration>,
}

/// dbmate's and goose's section markers, as those tools write them:
/// `-- migrate:up [transaction:false]`, `-- migrate:down`, `-- +goose Up`,
/// `-- +goose Down`, `-- +goose NO TRANSACTION`. goose's other
/// annotations (`StatementBegin`, `StatementEnd`) are comments here:
/// lockstep's lexer finds statement boundaries by itself.
fn tool_marker(comment: &str) -> Option<Line<'static>> {
    if let Some(rest) = comment.strip_prefix("migrate:") {
        let mut words = rest.split_whitespace();
        let direction = words.next()?;
        let transaction = !words.any(|w| w.eq_ignore_ascii_case("transaction:false"));
        return match direction {
            "up" => Some(Line::Upgrade(Layout::Dbmate, transaction)),
            "down" => Some(Line::Rollback(Layout::Dbmate, transaction)),
            _ => None,
        };
    }
    let goose = comment.strip_prefix("+goose")?.trim();
    if goose.eq_ignore_ascii_case("up") {
        Some(Line::Upgrade(Layout::Goose, true))
    } else if goose.eq_ignore_ascii_case("down") {
        Some(Line::Rollback(Layout::Goose, true))
    } else if goose.eq_ignore_ascii_case("no transaction") {
        Some(Line::NoTransaction)
    } else {
        Some(Line::Other)
    }
}

/// The directives a section carries, checked: each known, at most once,
/// with a value where it takes one.
fn directives(text: &str, first_line: usize, path: &Path) -> Result<Directives, SourceError> {
    const KNOWN: &str = "the directives are `-- lockstep:no-transaction`, `-- lockstep:lock-timeout DURATION` and `-- lockstep:statement-timeout DURATION`";
    let mut found = Directives::default();
    let mut seen: Vec<&str> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let directive = match classify_line(line) {
            Line::Directive(directive) => directive,
            Line::Autocommit => {
                found.no_transaction = true;
                continue;
            }
            _ => continue,
        };
        let at = first_line + i;
        let (word, value) = directive
            .split_once(char::is_whitespace)
            .map_or((directive, ""), |(w, v)| (w, v.trim()));
        let timeout = |slot: &mut Option<Duration>| {
            if value.is_empty() {
                return Err(SourceError::new(
                    path,
                    format!("`-- lockstep:{word}` needs a duration"),
                )
                .at(at)
                .hint(format!("write e.g. `-- lockstep:{word} 30s` (0: no limit)")));
            }
            let d = crate::duration::parse_duration(value)
                .map_err(|m| SourceError::new(path, format!("`-- lockstep:{word}`: {m}")).at(at))?;
            *slot = Some(d);
            Ok(())
        };
        match word {
            "no-transaction" if value.is_empty() => found.no_transaction = true,
            "no-transaction" => {
                return Err(
                    SourceError::new(path, "`-- lockstep:no-transaction` takes no value")
                        .at(at)
                        .hint("write the line as `-- lockstep:no-transaction` alone"),
                )
            }
            "lock-timeout" => timeout(&mut found.lock_timeout)?,
            "statement-timeout" => timeout(&mut found.statement_timeout)?,
            other => {
                return Err(SourceError::new(
                    path,
                    format!("unknown directive `-- lockstep:{other}`"),
                )
                .at(at)
                .hint(KNOWN))
            }
        }
        if seen.contains(&word) {
            return Err(
                SourceError::new(path, format!("`-- lockstep:{word}` given twice"))
                    .at(at)
                    .hint("keep one of the two lines"),
            );
        }
        seen.push(word);
    }
    Ok(found)
}

fn section(text: &str, first_line: usize, path: &Path) -> Result<Section, SourceError> {
    let directives = directives(text, first_line, path)?;
    Ok(Section {
        sql: text.to_string(),
        path: path.to_path_buf(),
        first_line,
        no_transaction: directives.no_transaction,
        lock_timeout: directives.lock_timeout,
        statement_timeout: directives.statement_timeout,
    })
}

/// Parses one migration file from its name and bytes, without touching the
/// file system: `<version>_<name>.sql`, or the `.up.sql` half of a pair
/// (which then has no rollback section).
pub fn parse_migration(file_name: &str, bytes: &[u8]) -> Result<Migration, SourceError> {
    let path = Path::new(file_name);
    let parsed = match parse_file_name(file_name) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Err(SourceError::new(path, "not a `.sql` file")),
        Err(message) => return Err(SourceError::new(path, message)),
    };
    let text = decode(path, bytes.to_vec())?;
    let m = match parsed {
        FileName::Single { version, name } => {
            parse_single_text(version, name, path.to_path_buf(), text)
        }
        FileName::Half {
            version,
            name,
            up: true,
        } => {
            let up = check_half(path, text)?;
            pair_from_texts(version, name, path, up, None)
        }
        unversioned @ (FileName::Repeatable { .. } | FileName::Callback(_)) => {
            parse_unversioned_text(unversioned, path.to_path_buf(), text)
        }
        FileName::Half { up: false, .. } => Err(SourceError::new(
            path,
            "a `.down.sql` file is read with its `.up.sql` file",
        )),
    }?;
    match m.is_unwritten() {
        true => Err(unwritten(&m)),
        false => Ok(m),
    }
}

fn parse_single(version: Version, name: String, path: PathBuf) -> Result<Migration, SourceError> {
    let text = read_text(&path)?;
    parse_single_text(version, name, path, text)
}

/// A section marker line of a single-file migration.
#[derive(Clone, Copy)]
struct Marker {
    /// Its 0-based line index.
    line: usize,
    /// The byte offset of its first character.
    start: usize,
    /// The byte offset just after it: where its section's SQL begins.
    end: usize,
}

/// A single file's section markers, in one tool's words.
struct Markers {
    layout: Layout,
    up: Marker,
    down: Option<Marker>,
    /// Which sections run outside a transaction by the tool's own words
    /// (dbmate's `transaction:false`, goose's `NO TRANSACTION`): up, down.
    no_transaction: (bool, bool),
}

/// The upgrade marker line and the rollback marker line, when there is
/// one, in one tool's words: each at most once, no directive before them,
/// an upgrade line there. A file with no marker at all is sqlx's: the
/// whole file is the upgrade (`None`).
fn find_markers(text: &str, path: &Path) -> Result<Option<Markers>, SourceError> {
    let mut up: Option<Marker> = None;
    let mut down: Option<Marker> = None;
    let mut layout: Option<(Layout, usize)> = None;
    let mut no_transaction = (false, false);
    let mut early_directive: Option<usize> = None;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let marker = Marker {
            line: i,
            start: offset,
            end: offset + line.len(),
        };
        offset = marker.end;
        let line_kind = classify_line(line);
        if let Line::Upgrade(this, _) | Line::Rollback(this, _) = line_kind {
            match layout {
                Some((first, at)) if first != this => {
                    return Err(SourceError::new(
                        path,
                        format!(
                            "{} marker in a file that uses {} (line {})",
                            this.markers(),
                            first.markers(),
                            at + 1
                        ),
                    )
                    .at(i + 1)
                    .hint("mark a file's sections in one tool's words"));
                }
                Some(_) => {}
                None => layout = Some((this, i)),
            }
        }
        let (slot, word) = match line_kind {
            Line::Upgrade(_, transaction) => {
                no_transaction.0 |= !transaction;
                (&mut up, "upgrade")
            }
            Line::Rollback(_, transaction) => {
                no_transaction.1 |= !transaction;
                (&mut down, "rollback")
            }
            Line::NoTransaction => {
                no_transaction = (true, true);
                continue;
            }
            // Fine in a file without markers (all of it the upgrade);
            // refused below when a marker follows.
            Line::Directive(_) if up.is_none() && down.is_none() => {
                early_directive.get_or_insert(i);
                continue;
            }
            Line::Directive(_) | Line::Autocommit | Line::Other => continue,
        };
        if let Some(prev) = slot {
            return Err(SourceError::new(
                path,
                format!(
                    "second `-- {word}` line (the first is on line {})",
                    prev.line + 1
                ),
            )
            .at(i + 1));
        }
        *slot = Some(marker);
    }
    let Some((layout, _)) = layout else {
        return Ok(None);
    };
    if let Some(at) = early_directive {
        return Err(
            SourceError::new(path, "directive before the `-- upgrade` line")
                .at(at + 1)
                .hint("put directives inside the section they apply to"),
        );
    }
    let Some(up) = up else {
        return Err(
            SourceError::new(path, format!("no {} line", layout.up_marker())).hint(format!(
                "start the migration's SQL with a line {}",
                layout.up_marker()
            )),
        );
    };
    Ok(Some(Markers {
        layout,
        up,
        down,
        no_transaction,
    }))
}

/// Parses a single-file migration. Its text becomes the upgrade section's
/// SQL in place, so a file costs no copy of itself.
fn parse_single_text(
    version: Version,
    name: String,
    path: PathBuf,
    mut text: String,
) -> Result<Migration, SourceError> {
    let Some(markers) = find_markers(&text, &path)? else {
        return whole_file(version, name, path, text);
    };
    let Markers {
        layout,
        up,
        down,
        no_transaction,
    } = markers;
    let first_marker = down.map_or(up.start, |d| d.start.min(up.start));
    if let Some(at) = sql::first_code_offset(&text[..first_marker]) {
        return Err(
            SourceError::new(&path, format!("SQL before the {} line", layout.up_marker()))
                .at(sql::line_col(&text, at).0)
                .hint(format!(
                    "only comments may come before {}",
                    layout.up_marker()
                )),
        );
    }
    // A section runs to the next marker or the end of the file.
    let (up_end, down_end) = match down {
        Some(d) if d.start > up.start => (d.start, text.len()),
        Some(_) => (text.len(), up.start),
        None => (text.len(), text.len()),
    };
    let up_text = &text[up.end..up_end];
    let directives = directives(up_text, up.line + 2, &path)?;
    let down_section = match down {
        Some(d) => {
            let down_text = &text[d.end..down_end];
            let mut s = section(down_text, d.line + 2, &path)?;
            s.no_transaction |= no_transaction.1;
            sql::has_code(down_text).then(|| Box::new(s))
        }
        None => None,
    };
    let checksum = checksum(text.as_bytes(), None);
    text.truncate(up_end);
    text.drain(..up.end);
    Ok(Migration {
        version,
        name,
        checksum,
        up: Section {
            sql: text,
            path,
            first_line: up.line + 2,
            no_transaction: directives.no_transaction || no_transaction.0,
            lock_timeout: directives.lock_timeout,
            statement_timeout: directives.statement_timeout,
        },
        down: down_section,
        layout,
    })
}

/// A file without section markers, as sqlx writes an up-only migration:
/// the whole file is the upgrade, with sqlx's `-- no-transaction` as its
/// first line read as lockstep's directive.
fn whole_file(
    version: Version,
    name: String,
    path: PathBuf,
    text: String,
) -> Result<Migration, SourceError> {
    let mut up = section(&text, 1, &path)?;
    up.no_transaction |= says_no_transaction(&text);
    Ok(Migration {
        version,
        name,
        checksum: checksum(text.as_bytes(), None),
        up: Section { sql: text, ..up },
        down: None,
        layout: Layout::WholeFile,
    })
}

/// Whether a file without section markers says, in another tool's words,
/// that it runs outside a transaction: sqlx's `-- no-transaction` as its
/// first line, yoyo's `-- transactional: false` among its leading comments.
fn says_no_transaction(text: &str) -> bool {
    let yoyo = |line: &str| {
        let directive = line.trim().strip_prefix("--").unwrap_or_default();
        directive.split_once(':').is_some_and(|(word, value)| {
            word.trim() == "transactional" && value.trim().eq_ignore_ascii_case("false")
        })
    };
    let sqlx = text
        .lines()
        .next()
        .is_some_and(|l| l.trim() == "-- no-transaction");
    sqlx || text
        .lines()
        .take_while(|l| l.trim().is_empty() || l.trim_start().starts_with("--"))
        .any(yoyo)
}

fn parse_pair(version: Version, halves: Halves) -> Result<Migration, SourceError> {
    let Some(up_path) = halves.up else {
        let down = halves.down.expect("a half exists");
        if is_undo(Some(&down)) {
            return Err(SourceError::new(
                &down,
                "an undo file without the versioned file it undoes",
            )
            .hint(format!(
                "add `V{version}__{}.sql`, or remove this file",
                halves.name
            )));
        }
        return Err(
            SourceError::new(&down, "a `.down.sql` file without its `.up.sql` file").hint(format!(
                "add `{version}_{}.up.sql`, or remove this file",
                halves.name
            )),
        );
    };
    let up_text = check_half(&up_path, read_text(&up_path)?)?;
    let down = match &halves.down {
        Some(path) => Some((path.as_path(), check_half(path, read_text(path)?)?)),
        None => None,
    };
    let mut m = pair_from_texts(version, halves.name, &up_path, up_text, down)?;
    if let Layout::Diesel { no_transaction } = halves.layout {
        m.layout = halves.layout;
        m.up.no_transaction |= no_transaction;
        if let Some(down) = m.down.as_deref_mut() {
            down.no_transaction |= no_transaction;
        }
    }
    Ok(m)
}

/// One file of a pair is a whole section: it may not hold section markers.
fn check_half(path: &Path, text: String) -> Result<String, SourceError> {
    for (i, line) in text.lines().enumerate() {
        if matches!(classify_line(line), Line::Upgrade(..) | Line::Rollback(..)) {
            return Err(
                SourceError::new(path, "section marker in a `.up.sql`/`.down.sql` file")
                    .at(i + 1)
                    .hint(
                        "in a pair of files each file is a whole section: remove the marker line",
                    ),
            );
        }
    }
    Ok(text)
}

fn pair_from_texts(
    version: Version,
    name: String,
    up_path: &Path,
    up_text: String,
    down: Option<(&Path, String)>,
) -> Result<Migration, SourceError> {
    let mut up = section(&up_text, 1, up_path)?;
    up.no_transaction |= says_no_transaction(&up_text);
    let down_section = match &down {
        Some((path, text)) => {
            let mut s = section(text, 1, path)?;
            s.no_transaction |= says_no_transaction(text);
            sql::has_code(text).then(|| Box::new(s))
        }
        None => None,
    };
    Ok(Migration {
        version,
        name,
        checksum: checksum(
            up_text.as_bytes(),
            down.as_ref().map(|(_, text)| text.as_bytes()),
        ),
        up,
        down: down_section,
        layout: Layout::Pair,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(files: &[(&str, &[u8])]) -> Dir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "lockstep-source-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            for (name, content) in files {
                let path = dir.join(name);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(path, content).unwrap();
            }
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Each migration's version, name, whether it has a rollback, and
    /// whether its upgrade runs outside a transaction.
    fn summary(set: &MigrationSet) -> Vec<(String, &str, bool, bool)> {
        set.migrations()
            .iter()
            .map(|m| {
                let down = m.down.is_some();
                (
                    m.version.to_string(),
                    m.name.as_str(),
                    down,
                    m.up.no_transaction,
                )
            })
            .collect()
    }

    fn load(files: &[(&str, &[u8])]) -> Result<MigrationSet, SourceError> {
        let dir = Dir::new(files);
        MigrationSet::load(&dir.0)
    }

    fn load_err(files: &[(&str, &[u8])]) -> (String, Option<usize>, String) {
        let err = load(files).unwrap_err();
        let file = err.path.file_name().unwrap().to_str().unwrap().to_string();
        // Other files the message names, by their names too.
        let dir = format!("{}/", err.path.parent().unwrap().display());
        (file, err.line, err.message.replace(&dir, ""))
    }

    /// Enough files to be read on several threads.
    fn many(bad: &[usize]) -> Vec<(String, Vec<u8>)> {
        (1..=3 * PARALLEL_FROM)
            .map(|i| {
                let body = if bad.contains(&i) {
                    format!("SELECT {i};\n")
                } else {
                    format!("-- upgrade\nSELECT {i};\n")
                };
                (format!("{i:04}_m{i}.sql"), body.into_bytes())
            })
            .collect()
    }

    fn as_refs(files: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
        files
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect()
    }

    #[test]
    fn repeatables_and_callbacks_load_apart_from_the_versioned() {
        let set = load(&[
            ("1_a.sql", b"-- upgrade\nSELECT 1;\n"),
            ("R__b.sql", b"SELECT 2;\n"),
            ("RA__a.sql", b"-- upgrade\nSELECT 3;\n"),
            ("afterMigrate.sql", b"SELECT 4;\n"),
            ("before-upgrade.sql", b"SELECT 5;\n"),
        ])
        .unwrap();
        assert_eq!(set.migrations().len(), 1);
        let repeatables: Vec<(&str, Kind)> = set
            .repeatables()
            .iter()
            .map(|m| (m.name.as_str(), m.kind()))
            .collect();
        assert_eq!(
            repeatables,
            [
                ("a", Kind::Repeatable(Repeat::Always)),
                ("b", Kind::Repeatable(Repeat::OnChange))
            ]
        );
        assert_eq!(set.repeatables()[0].up.sql, "SELECT 3;\n");
        assert_eq!(set.repeatables()[0].up.first_line, 2);
        let before = set.callback(Hook::BeforeUpgrade).unwrap();
        assert_eq!(before.up.sql, "SELECT 5;\n");
        assert_eq!(
            set.callback(Hook::AfterUpgrade).unwrap().kind(),
            Kind::Callback(Hook::AfterUpgrade)
        );
        // A repeatable file mixes with any layout of the versioned ones.
        load(&[
            ("1_a.sql", b"-- migrate:up\nSELECT 1;\n"),
            ("R__b.sql", b"SELECT 2;\n"),
        ])
        .unwrap();
    }

    #[test]
    fn a_file_without_markers_takes_directives_anywhere() {
        let set = load(&[(
            "R__c.sql",
            b"-- lockstep:no-transaction\n-- lockstep:lock-timeout 1s\nSELECT 1;\n",
        )])
        .unwrap();
        let c = &set.repeatables()[0].up;
        assert!(c.no_transaction);
        assert_eq!(c.lock_timeout, Some(Duration::from_secs(1)));
        // Before a marker that follows, still refused.
        let (_, line, message) = load_err(&[(
            "R__d.sql",
            b"-- lockstep:no-transaction\n-- upgrade\nSELECT 1;\n",
        )]);
        assert_eq!(line, Some(1));
        assert_eq!(message, "directive before the `-- upgrade` line");
    }

    #[test]
    fn flyway_undo_files_are_the_rollback_of_their_versioned_file() {
        let set = load(&[
            ("V1__users.sql", b"CREATE TABLE users (id int);\n"),
            ("U1__users.sql", b"DROP TABLE users;\n"),
            ("V2__posts.sql", b"CREATE TABLE posts (id int);\n"),
        ])
        .unwrap();
        let [one, two] = set.migrations() else {
            panic!("two migrations")
        };
        assert_eq!(one.up.sql, "CREATE TABLE users (id int);\n");
        assert_eq!(one.down.as_ref().unwrap().sql, "DROP TABLE users;\n");
        assert!(one.down.as_ref().unwrap().path.ends_with("U1__users.sql"));
        assert!(two.down.is_none());
        // The undo file counts in the checksum, as a pair's second half.
        assert_ne!(
            one.checksum,
            checksum(b"CREATE TABLE users (id int);\n", None)
        );

        let (file, _, message) = load_err(&[("U3__x.sql", b"DROP TABLE x;\n")]);
        assert_eq!(file, "U3__x.sql");
        assert_eq!(message, "an undo file without the versioned file it undoes");
        let (_, _, message) =
            load_err(&[("V3__x.sql", b"SELECT 1;\n"), ("U3__y.sql", b"SELECT 2;\n")]);
        assert!(message.contains("different names"), "{message}");
        assert_eq!(
            parse_file_name("U1.2__dotted.sql"),
            Ok(Some(FileName::Half {
                version: Version::parse("1.2").unwrap(),
                name: "dotted".into(),
                up: false
            }))
        );
    }

    #[test]
    fn bad_repeatables_and_callbacks_are_named() {
        let (file, _, message) =
            load_err(&[("R__b.sql", b"SELECT 1;\n"), ("RA__b.sql", b"SELECT 2;\n")]);
        assert_eq!(file, "R__b.sql");
        assert_eq!(
            message,
            "a second repeatable migration named `b`: `RA__b.sql` is one too"
        );
        let (file, _, message) = load_err(&[
            ("before-upgrade.sql", b"SELECT 1;\n"),
            ("beforeMigrate.sql", b"SELECT 2;\n"),
        ]);
        assert_eq!(file, "beforeMigrate.sql");
        assert_eq!(
            message,
            "a second `before-upgrade.sql` callback: `before-upgrade.sql` is one too"
        );
        let (file, line, message) = load_err(&[(
            "R__v.sql",
            b"-- upgrade\nSELECT 1;\n-- rollback\nSELECT 2;\n",
        )]);
        assert_eq!((file.as_str(), line), ("R__v.sql", Some(3)));
        assert!(message.starts_with("a repeatable migration has no rollback section"));
        let (file, _, message) = load_err(&[("R__in it.sql", b"SELECT 1;\n")]);
        assert_eq!(file, "R__in it.sql");
        assert!(message.ends_with("(` ` at character 6)"), "{message}");
        let (_, _, message) = load_err(&[("R__v.sql", b"")]);
        assert!(message.contains("empty"), "{message}");
    }

    #[test]
    fn many_files_load_in_version_order() {
        let files = many(&[]);
        let set = load(&as_refs(&files)).unwrap();
        let versions: Vec<u64> = set.migrations().iter().map(|m| m.version.first()).collect();
        let expected: Vec<u64> = (1..=3 * PARALLEL_FROM as u64).collect();
        assert_eq!(versions, expected);
        assert!(set
            .migrations()
            .iter()
            .all(|m| m.up.sql.contains(&format!("SELECT {};", m.version))));
    }

    #[test]
    fn jobs_become_their_migrations_in_order_on_one_thread_and_on_several() {
        let files = many(&[]);
        let dir = Dir::new(&as_refs(&files));
        for count in [PARALLEL_FROM - 1, files.len()] {
            let jobs: Vec<Job> = files[..count]
                .iter()
                .enumerate()
                .map(|(i, (file, _))| {
                    let name = format!("m{}", i + 1);
                    Job::Single((i as u64 + 1).into(), name, dir.0.join(file))
                })
                .collect();
            let migrations = parse_all(jobs).unwrap();
            assert_eq!(migrations.len(), count);
            for (i, m) in migrations.iter().enumerate() {
                assert_eq!(m.version, (i as u64 + 1).into(), "{count} jobs");
                assert_eq!(m.up.sql, format!("SELECT {};\n", i + 1));
            }
        }
    }

    #[test]
    fn many_files_report_the_first_bad_one_as_one_thread_would() {
        // One bad file in the last thread's share, one in the first's.
        let last = 3 * PARALLEL_FROM - 1;
        let files = many(&[last, 7]);
        let (file, line, _) = load_err(&as_refs(&files));
        assert_eq!((file.as_str(), line), ("0007_m7.sql", None));
        let files = many(&[last]);
        let (file, _, _) = load_err(&as_refs(&files));
        assert_eq!(file, format!("{last:04}_m{last}.sql"));
    }

    #[test]
    fn the_first_bad_file_in_version_order_is_reported_across_both_forms() {
        // A bad `.up.sql` pair below a bad single file: pairs and singles
        // are listed apart, and the pair's error must still come first.
        let last = 3 * PARALLEL_FROM - 1;
        let mut files = many(&[last]);
        files.retain(|(name, _)| !name.starts_with("0005_"));
        files.push((
            "0005_pair.up.sql".into(),
            b"-- lockstep:bogus\nSELECT 5;\n".to_vec(),
        ));
        files.push(("0005_pair.down.sql".into(), b"SELECT 0;\n".to_vec()));
        let (file, line, message) = load_err(&as_refs(&files));
        assert_eq!(
            (file.as_str(), line),
            ("0005_pair.up.sql", Some(1)),
            "{message}"
        );
    }

    #[test]
    fn file_names() {
        let ok: &[(&str, FileName)] = &[
            (
                "1_init.sql",
                FileName::Single {
                    version: 1.into(),
                    name: "init".into(),
                },
            ),
            (
                "20261124101500_add_users.sql",
                FileName::Single {
                    version: 20261124101500.into(),
                    name: "add_users".into(),
                },
            ),
            (
                "0002_x2.up.sql",
                FileName::Half {
                    version: 2.into(),
                    name: "x2".into(),
                    up: true,
                },
            ),
            (
                "0002_x2.down.sql",
                FileName::Half {
                    version: 2.into(),
                    name: "x2".into(),
                    up: false,
                },
            ),
        ];
        for (name, want) in ok {
            assert_eq!(
                parse_file_name(name).unwrap().as_ref(),
                Some(want),
                "{name}"
            );
        }
        assert!(parse_file_name("1_init.SQL").is_err());
        assert!(parse_file_name("1_init.up.Sql").is_err());
        for ignored in ["README.md", "notes.txt", "1_init.sql.bak"] {
            assert_eq!(parse_file_name(ignored).unwrap(), None, "{ignored}");
        }
        // Other tools' names: capitals, hyphens, dots; golang-migrate's
        // name-less pairs.
        for (file, version, name) in [
            ("1_Init.sql", 1, "Init"),
            ("2_add-users.v2.sql", 2, "add-users.v2"),
            ("3.up.sql", 3, ""),
            ("3.down.sql", 3, ""),
            // Flyway's and jetbase's versioned files, MSR's pairs.
            ("V4__create_users.sql", 4, "create_users"),
            ("V202301011200_add.up.sql", 202301011200, "add"),
            // DBWarden's: the database's name, then four digits.
            ("primary__0001_create_users.sql", 1, "create_users"),
            ("app_db__0012_add__index.sql", 12, "add__index"),
        ] {
            let parsed = parse_file_name(file).unwrap().unwrap();
            let (v, n) = match &parsed {
                FileName::Single { version, name } | FileName::Half { version, name, .. } => {
                    (*version, name.as_str())
                }
                other => panic!("{file}: {other:?}"),
            };
            assert_eq!((v, n), (version.into(), name), "{file}");
        }
        // Flyway's dotted and underscored versions, jetbase's default.
        for (file, version, name) in [
            ("V1.2.3__add_users.sql", "1.2.3", "add_users"),
            ("V1_12_15__more.sql", "1.12.15", "more"),
            ("V20251225.120000__seed.sql", "20251225.120000", "seed"),
            ("V2.0__whole.sql", "2", "whole"),
        ] {
            assert_eq!(
                parse_file_name(file),
                Ok(Some(FileName::Single {
                    version: Version::parse(version).unwrap(),
                    name: name.into()
                })),
                "{file}"
            );
        }
        // Repeatable migrations and callbacks.
        for (file, want) in [
            (
                "R__views.sql",
                FileName::Repeatable {
                    name: "views".into(),
                    repeat: Repeat::OnChange,
                },
            ),
            (
                "ROC__Refresh-Views.sql",
                FileName::Repeatable {
                    name: "Refresh-Views".into(),
                    repeat: Repeat::OnChange,
                },
            ),
            (
                "RA__grants.sql",
                FileName::Repeatable {
                    name: "grants".into(),
                    repeat: Repeat::Always,
                },
            ),
            (
                "before-upgrade.sql",
                FileName::Callback(Hook::BeforeUpgrade),
            ),
            ("beforeMigrate.sql", FileName::Callback(Hook::BeforeUpgrade)),
            ("after-upgrade.sql", FileName::Callback(Hook::AfterUpgrade)),
            ("afterMigrate.sql", FileName::Callback(Hook::AfterUpgrade)),
            (
                "primary__RA__seed_data.sql",
                FileName::Repeatable {
                    name: "seed_data".into(),
                    repeat: Repeat::Always,
                },
            ),
            (
                "primary__ROC__views.sql",
                FileName::Repeatable {
                    name: "views".into(),
                    repeat: Repeat::OnChange,
                },
            ),
        ] {
            assert_eq!(parse_file_name(file), Ok(Some(want)), "{file}");
        }
        for bad in ["R__.sql", "R__in it.sql", "RA__x;y.sql"] {
            assert!(parse_file_name(bad).is_err(), "{bad}");
        }
        // A pair's half is never a repeatable one.
        assert!(parse_file_name("R__views.up.sql").is_err());
        for bad in [
            "init.sql",
            "1.sql",
            "1-init.sql",
            "_init.sql",
            "1_.sql",
            "1_in it.sql",
            "1_init;x.sql",
            "v1_init.sql",
            "1234567890123456789_too_long.sql",
            "V__no_version.sql",
            "V1.2.3.4.5__five_parts.sql",
            "V1..2__empty_part.sql",
            "V1.2_3__both_separators.sql",
            "V1.2_x.sql",
            "primary__001_three_digits.sql",
            "primary__0001_.sql",
            "primary__0001x.sql",
            "pri-mary__0001_x.sql",
            "primary__RA__.sql",
        ] {
            assert!(parse_file_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_file_name("V1.2.3.4.5__x.sql").unwrap_err(),
            "version `1.2.3.4.5` has more than 4 parts"
        );
        assert!(parse_file_name("V1.2_x.sql")
            .unwrap_err()
            .starts_with("a Flyway file name is `V<version>__<description>.sql`"));
    }

    #[test]
    fn single_file_with_both_sections() {
        let set = load(&[(
            "1_init.sql",
            b"-- a header comment\n-- upgrade\nCREATE TABLE t (id int);\n\n-- rollback\nDROP TABLE t;\n",
        )])
        .unwrap();
        let m = &set.migrations()[0];
        assert_eq!((m.version, m.name.as_str()), (1.into(), "init"));
        assert_eq!(m.up.sql, "CREATE TABLE t (id int);\n\n");
        assert_eq!(m.up.first_line, 3);
        assert!(!m.up.no_transaction);
        let down = m.down.as_ref().unwrap();
        assert_eq!(down.sql, "DROP TABLE t;\n");
        assert_eq!(down.first_line, 6);
        assert_eq!(m.up.position(2), (3, 3));
    }

    #[test]
    fn rollback_section_may_come_first_and_empty_means_none() {
        let set = load(&[(
            "1_a.sql",
            b"-- rollback\n-- nothing to undo\n-- upgrade\nSELECT 1;\n",
        )])
        .unwrap();
        let m = &set.migrations()[0];
        assert_eq!(m.up.sql, "SELECT 1;\n");
        assert!(m.down.is_none());
    }

    #[test]
    fn pair_of_files() {
        let set = load(&[
            (
                "2_b.up.sql",
                b"-- lockstep:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (x);\n",
            ),
            ("2_b.down.sql", b"DROP INDEX i;\n"),
            ("1_a.up.sql", b"SELECT 1;\n"),
        ])
        .unwrap();
        let versions: Vec<u64> = set.migrations().iter().map(|m| m.version.first()).collect();
        assert_eq!(versions, [1, 2]);
        let b = set.get(2.into()).unwrap();
        assert!(b.up.no_transaction);
        assert!(!b.down.as_ref().unwrap().no_transaction);
        assert!(set.get(1.into()).unwrap().down.is_none());
        assert_eq!(
            b.checksum,
            checksum(
                b"-- lockstep:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (x);\n",
                Some(b"DROP INDEX i;\n")
            )
        );
    }

    #[test]
    fn checksum_ignores_bom_and_crlf() {
        let plain = load(&[("1_a.sql", b"-- upgrade\nSELECT 1;\n")]).unwrap();
        let windows = load(&[("1_a.sql", b"\xEF\xBB\xBF-- upgrade\r\nSELECT 1;\r\n")]).unwrap();
        assert_eq!(
            plain.migrations()[0].checksum,
            windows.migrations()[0].checksum
        );
        assert_eq!(plain.migrations()[0], {
            let mut m = windows.migrations()[0].clone();
            m.up.path = plain.migrations()[0].up.path.clone();
            m
        });
        assert_eq!(
            checksum(b"", None).to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_checksum_reads_back_as_it_is_written() {
        let sum = checksum(b"CREATE TABLE t (id int);\n", None);
        let text = sum.to_string();
        assert_eq!(Checksum::parse(&text), sum);
        assert_eq!(sum.short(), text[..7 + 12]);
        assert_eq!(format!("{sum:?}"), format!("Checksum({text})"));
    }

    #[test]
    fn a_checksum_edited_by_hand_is_kept_as_written_and_matches_no_file() {
        let sum = checksum(b"x", None);
        let text = sum.to_string();
        // Anything but the exact form lockstep writes stays text: upper
        // case, a digit short or long, another prefix, a non-hex digit.
        for edited in [
            text.to_uppercase(),
            text[..text.len() - 1].to_string(),
            format!("{text}0"),
            text.replacen("sha256:", "sha512:", 1),
            format!("{}g", &text[..text.len() - 1]),
            String::new(),
            "é".repeat(20),
        ] {
            let parsed = Checksum::parse(&edited);
            assert_ne!(parsed, sum, "{edited}");
            assert_eq!(parsed.to_string(), edited);
        }
        assert_eq!(Checksum::parse(&"é".repeat(20)).short(), "é".repeat(9));
        assert_eq!(Checksum::parse("md5:1").short(), "md5:1");
    }

    #[test]
    fn other_tools_files_are_read_in_their_own_words() {
        // dbmate: `-- migrate:up`, `transaction:false`.
        let set = load(&[(
            "20240101120000_a.sql",
            b"-- migrate:up transaction:false\nCREATE INDEX CONCURRENTLY i ON t (c);\n\n-- migrate:down\nDROP INDEX i;\n",
        )])
        .unwrap();
        let m = &set.migrations()[0];
        assert_eq!(m.layout, Layout::Dbmate);
        assert!(m.up.no_transaction);
        assert_eq!(m.up.sql, "CREATE INDEX CONCURRENTLY i ON t (c);\n\n");
        assert_eq!(m.down.as_deref().unwrap().sql, "DROP INDEX i;\n");
        assert!(!m.down.as_deref().unwrap().no_transaction);
        // goose: annotations, `NO TRANSACTION` for the whole file.
        let set = load(&[(
            "00002_b.sql",
            b"-- +goose NO TRANSACTION\n-- +goose Up\n-- +goose StatementBegin\nCREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n-- +goose StatementEnd\n-- +goose Down\nDROP FUNCTION f();\n",
        )])
        .unwrap();
        let m = &set.migrations()[0];
        assert_eq!((m.layout, m.version), (Layout::Goose, 2.into()));
        assert!(m.up.no_transaction && m.down.as_deref().unwrap().no_transaction);
        assert!(m
            .up
            .sql
            .starts_with("-- +goose StatementBegin\nCREATE FUNCTION"));
        // sqlx: no markers, the whole file; its `-- no-transaction` line.
        let set = load(&[
            (
                "1_c.sql",
                b"-- no-transaction\nCREATE INDEX CONCURRENTLY i ON t (c);\n",
            ),
            ("2_d.sql", b"CREATE TABLE d (id int);\n"),
        ])
        .unwrap();
        let [c, d] = set.migrations() else { panic!() };
        assert_eq!((c.layout, d.layout), (Layout::WholeFile, Layout::WholeFile));
        assert!(c.up.no_transaction && !d.up.no_transaction);
        assert_eq!(d.up.sql, "CREATE TABLE d (id int);\n");
        // yoyo: `<date>_<nn>_<id>[-<slug>].sql`, its rollback beside it,
        // `-- transactional: false` among the leading comments; sqlx's
        // `-- no-transaction` heads a pair's file too.
        let set = load(&[
            (
                "20240101_01_AbCdE-create-users.sql",
                b"CREATE TABLE users (id int);\n",
            ),
            (
                "20240101_01_AbCdE-create-users.rollback.sql",
                b"DROP TABLE users;\n",
            ),
            (
                "20240101_02_xY9z0.sql",
                b"-- depends: 20240101_01_AbCdE-create-users\n-- transactional: false\nCREATE INDEX CONCURRENTLY i ON users (id);\n",
            ),
            ("20240101_10_qqqqq-late.sql", b"SELECT 1;\n"),
        ])
        .unwrap();
        assert_eq!(
            summary(&set),
            [
                ("20240101.1".to_string(), "AbCdE-create-users", true, false),
                ("20240101.2".to_string(), "xY9z0", false, true),
                ("20240101.10".to_string(), "qqqqq-late", false, false),
            ]
        );
        let set = load(&[
            (
                "1_a.up.sql",
                b"-- no-transaction\nCREATE INDEX CONCURRENTLY i ON t (c);\n",
            ),
            ("1_a.down.sql", b"DROP INDEX i;\n"),
        ])
        .unwrap();
        assert!(set.migrations()[0].up.no_transaction);
        assert!(!set.migrations()[0].down.as_deref().unwrap().no_transaction);
        // DBWarden: jetbase's markers, its header lines comments, its
        // `-- @dbwarden:autocommit` (as often as it comes) the section's.
        let set = load(&[
            (
                "primary__0001_users.sql",
                b"-- depends_on: []\n-- upgrade\nCREATE TABLE users (id int);\n\n-- rollback\nDROP TABLE users;\n",
            ),
            (
                "primary__0002_index.sql",
                b"-- upgrade\n-- @dbwarden:autocommit\nCREATE INDEX CONCURRENTLY i ON users (id);\n-- @dbwarden:autocommit\nCREATE INDEX CONCURRENTLY j ON users (id);\n-- rollback\nDROP INDEX i;\n",
            ),
            ("primary__RA__grants.sql", b"-- upgrade\nSELECT 1;\n"),
        ])
        .unwrap();
        let [users, index] = set.migrations() else {
            panic!()
        };
        assert_eq!((users.version, users.name.as_str()), (1.into(), "users"));
        assert_eq!(
            (users.layout, index.layout),
            (Layout::Lockstep, Layout::Lockstep)
        );
        assert!(!users.up.no_transaction && index.up.no_transaction);
        assert!(!index.down.as_deref().unwrap().no_transaction);
        assert_eq!(set.repeatables()[0].name, "grants");
    }

    #[test]
    fn every_bad_name_and_every_file_of_a_version_is_named_in_one_run() {
        let (path, _, message) = load_err(&[
            ("1_a.sql", b"-- upgrade\nSELECT 1;\n"),
            ("2-b.sql", b"-- upgrade\nSELECT 1;\n"),
            ("3_c d.sql", b"-- upgrade\nSELECT 1;\n"),
            ("v4__e.sql", b"-- upgrade\nSELECT 1;\n"),
        ]);
        assert_eq!(path, "2-b.sql");
        assert!(
            message.starts_with(
                "3 files are named neither way: 2-b.sql (`-` at character 2), 3_c d.sql (` ` at character 4), v4__e.sql (`v` at character 1); file name does not match"
            ),
            "{message}"
        );
        let (path, _, message) = load_err(&[
            ("5_a.sql", b"-- upgrade\nSELECT 1;\n"),
            ("5_b.sql", b"-- upgrade\nSELECT 1;\n"),
            ("5_c.up.sql", b"SELECT 1;\n"),
        ]);
        assert_eq!(path, "5_a.sql");
        assert_eq!(
            message,
            "duplicate version 5: `5_b.sql` and `5_c.up.sql` have it too"
        );
    }

    #[test]
    fn diesel_directories_are_migrations() {
        let set = load(&[
            ("00000000000000_diesel_initial_setup/up.sql", b"SELECT 0;\n"),
            (
                "00000000000000_diesel_initial_setup/down.sql",
                b"SELECT 1;\n",
            ),
            (
                "2023-01-01-120000_create_users/up.sql",
                b"CREATE TABLE users (id int);\n",
            ),
            (
                "2023-01-01-120000_create_users/down.sql",
                b"DROP TABLE users;\n",
            ),
            (
                "2023-01-02-000000_index/up.sql",
                b"CREATE INDEX CONCURRENTLY i ON users (id);\n",
            ),
            (
                "2023-01-02-000000_index/metadata.toml",
                b"run_in_transaction = false\n",
            ),
            ("notes/readme.txt", b"not a migration\n"),
        ])
        .unwrap();
        assert_eq!(
            summary(&set),
            [
                ("0".to_string(), "diesel_initial_setup", true, false),
                ("20230101120000".to_string(), "create_users", true, false),
                ("20230102000000".to_string(), "index", false, true)
            ]
        );
        // A directory of migrations is never skipped silently.
        let (path, _, message) = load_err(&[("create_users/up.sql", b"SELECT 1;\n")]);
        assert_eq!(path, "create_users");
        assert!(message.contains("does not match diesel's"), "{message}");
        let (_, _, message) = load_err(&[
            ("1_a.sql", b"-- upgrade\nSELECT 1;\n"),
            ("2023-01-01-120000_b/up.sql", b"SELECT 2;\n"),
        ]);
        assert!(message.contains("mixes layouts"), "{message}");
    }

    #[test]
    fn a_directory_of_mixed_layouts_is_refused_naming_a_file_of_each() {
        let (path, line, message) = load_err(&[
            ("1_a.sql", b"-- upgrade\nCREATE TABLE a (id int);\n"),
            ("2_b.sql", b"CREATE TABLE b (id int);\n"),
            ("3_c.up.sql", b"CREATE TABLE c (id int);\n"),
        ]);
        assert_eq!((path.as_str(), line), ("2_b.sql", None));
        assert!(
            message.starts_with("the migrations directory mixes layouts: "),
            "{message}"
        );
        assert!(message.contains("1_a.sql uses lockstep's"), "{message}");
        assert!(
            message.contains("2_b.sql uses no section markers"),
            "{message}"
        );
        // Pairs go with any layout.
        assert!(load(&[
            ("1_a.sql", b"-- +goose Up\nSELECT 1;\n"),
            ("2_b.up.sql", b"SELECT 2;\n"),
        ])
        .is_ok());
    }

    #[test]
    fn timeout_directives_bound_their_own_section() {
        let set = load(&[(
            "1_a.sql",
            b"-- upgrade\n-- lockstep:lock-timeout 30s\n-- LOCKSTEP:statement-timeout 1m30s\nSELECT 1;\n-- rollback\n-- lockstep:lock-timeout 0\nSELECT 2;\n",
        )])
        .unwrap();
        let m = &set.migrations()[0];
        assert_eq!(m.up.lock_timeout, Some(Duration::from_secs(30)));
        assert_eq!(m.up.statement_timeout, Some(Duration::from_secs(90)));
        let down = m.down.as_deref().unwrap();
        assert_eq!(down.lock_timeout, Some(Duration::ZERO));
        assert_eq!(down.statement_timeout, None);
    }

    #[test]
    fn bad_files_are_named_with_their_line() {
        type Files<'a> = &'a [(&'a str, &'a [u8])];
        type Want<'a> = (&'a str, Option<usize>, &'a str);
        let table: &[(Files<'_>, Want<'_>)] = &[
            (
                &[("1_a.sql", b"-- migrate:down\nDROP TABLE t;\n")],
                ("1_a.sql", None, "no `-- migrate:up` line"),
            ),
            (
                &[(
                    "1_a.sql",
                    b"-- upgrade\nCREATE TABLE t (id int);\n-- migrate:down\nDROP TABLE t;\n",
                )],
                (
                    "1_a.sql",
                    Some(3),
                    "dbmate's `-- migrate:up`/`-- migrate:down` marker in a file that uses lockstep's `-- upgrade`/`-- rollback` (line 1)",
                ),
            ),
            (
                &[(
                    "1_a.sql",
                    b"-- upgrade\n-- just a comment\n\n-- rollback\nDROP TABLE t;\n",
                )],
                ("1_a.sql", Some(1), "the upgrade section is empty"),
            ),
            (
                &[(
                    "1_a.sql",
                    b"-- upgrade\nSELECT 1;\n-- lockstep:no-transactions\n",
                )],
                (
                    "1_a.sql",
                    Some(3),
                    "unknown directive `-- lockstep:no-transactions`",
                ),
            ),
            (
                &[("1_a.sql", b"-- upgrade\n-- lockstep:lock-timeout\nSELECT 1;\n")],
                (
                    "1_a.sql",
                    Some(2),
                    "`-- lockstep:lock-timeout` needs a duration",
                ),
            ),
            (
                &[("1_a.sql", b"-- upgrade\nSELECT 1;\n-- lockstep:statement-timeout soon\n")],
                (
                    "1_a.sql",
                    Some(3),
                    "`-- lockstep:statement-timeout`: `soon` is not a duration; write e.g. 30s, 5m, 1h or 500ms",
                ),
            ),
            (
                &[(
                    "1_a.sql",
                    b"-- upgrade\n-- lockstep:lock-timeout 1s\n-- lockstep:lock-timeout 2s\nSELECT 1;\n",
                )],
                ("1_a.sql", Some(3), "`-- lockstep:lock-timeout` given twice"),
            ),
            (
                &[("1_a.sql", b"-- upgrade\n-- lockstep:no-transaction yes\nSELECT 1;\n")],
                (
                    "1_a.sql",
                    Some(2),
                    "`-- lockstep:no-transaction` takes no value",
                ),
            ),
            (
                &[("1_a.sql", b"-- upgrade\nSELECT 1;\n-- upgrade\nSELECT 2;\n")],
                (
                    "1_a.sql",
                    Some(3),
                    "second `-- upgrade` line (the first is on line 1)",
                ),
            ),
            (
                &[("1_a.sql", b"SELECT 0;\n-- upgrade\nSELECT 1;\n")],
                ("1_a.sql", Some(1), "SQL before the `-- upgrade` line"),
            ),
            (
                &[("1_a.sql", b"-- upgrade\nSELECT 1;\nSELECT '\xff';\n")],
                ("1_a.sql", Some(3), "file is not valid UTF-8"),
            ),
            (
                &[
                    ("1_a.sql", b"-- upgrade\nSELECT 1;\n"),
                    ("01_b.sql", b"-- upgrade\nSELECT 2;\n"),
                ],
                ("1_a.sql", None, "duplicate version 1: "),
            ),
            (
                &[
                    ("1_a.sql", b"-- upgrade\nSELECT 1;\n"),
                    ("1_a.up.sql", b"SELECT 2;\n"),
                ],
                ("1_a.up.sql", None, "duplicate version 1: "),
            ),
            (
                &[
                    ("1_a.down.sql", b"SELECT 0;\n"),
                    ("1_a.up.sql", b"SELECT 1;\n"),
                    ("1_b.sql", b"-- upgrade\nSELECT 2;\n"),
                ],
                (
                    "1_b.sql",
                    None,
                    "duplicate version 1: `1_a.up.sql` has it too",
                ),
            ),
            (
                &[
                    ("2_a.up.sql", b"SELECT 1;\n"),
                    ("2_b.down.sql", b"SELECT 0;\n"),
                ],
                (
                    "2_b.down.sql",
                    None,
                    "this `.down.sql` file and `2_a.up.sql` have version 2 but different names (`b` and `a`)",
                ),
            ),
            (
                &[("3_c.down.sql", b"DROP TABLE c;\n")],
                (
                    "3_c.down.sql",
                    None,
                    "a `.down.sql` file without its `.up.sql` file",
                ),
            ),
            (
                &[("3_c.up.sql", b"-- upgrade\nSELECT 1;\n")],
                (
                    "3_c.up.sql",
                    Some(1),
                    "section marker in a `.up.sql`/`.down.sql` file",
                ),
            ),
            (
                &[("3_c.up.sql", b"\n-- nothing\n")],
                ("3_c.up.sql", None, "the upgrade file is empty"),
            ),
            (
                &[("notes.sql", b"SELECT 1;\n")],
                ("notes.sql", None, "file name does not match"),
            ),
        ];
        for (files, (file, line, message)) in table {
            let (got_file, got_line, got_message) = load_err(files);
            assert_eq!(&got_file, file, "{files:?}");
            assert_eq!(&got_line, line, "{files:?}");
            assert!(
                got_message.starts_with(message),
                "{got_message} vs {message}"
            );
        }
    }

    #[test]
    fn parse_migration_from_bytes_matches_the_file() {
        let content = b"-- upgrade\nCREATE TABLE t (id int);\n-- rollback\nDROP TABLE t;\n";
        let set = load(&[("7_t.sql", content)]).unwrap();
        let from_bytes = parse_migration("7_t.sql", content).unwrap();
        assert_eq!(from_bytes.checksum, set.migrations()[0].checksum);
        assert_eq!(from_bytes.up.sql, set.migrations()[0].up.sql);
        assert!(parse_migration("7_t.up.sql", b"SELECT 1;")
            .unwrap()
            .down
            .is_none());
        assert!(parse_migration("7_t.down.sql", b"SELECT 1;").is_err());
        assert!(parse_migration("notes.txt", b"").is_err());
    }

    /// Found by fuzzing: a comment whose ninth byte fell inside a
    /// multi-byte character panicked on slicing.
    #[test]
    fn comment_with_multibyte_text_near_the_directive_prefix() {
        let content = "-- upgrade\n--!`-\u{feff}B&Ҥҥ\nSELECT 1;\n--lockstepé: x\n";
        assert!(parse_migration("1_a.sql", content.as_bytes()).is_ok());
        assert!(parse_migration("1_a.sql", "--!`-\u{feff}B&Ҥҥ".as_bytes()).is_err());
    }

    #[test]
    fn dbmate_markers_are_read_as_dbmate_reads_them() {
        let set = load(&[("1_a.sql", b"-- migrate:up\nSELECT 1;\n")]).unwrap();
        assert_eq!(set.migrations()[0].up.sql, "SELECT 1;\n");
    }

    #[test]
    fn missing_directory_hints_at_init() {
        let err = MigrationSet::load("/nonexistent/lockstep-migrations").unwrap_err();
        assert!(err.message.contains("cannot read the migrations directory"));
        assert_eq!(err.remedy, Some(Remedy::CreateMigrations));
    }

    #[test]
    fn other_files_and_hidden_files_are_ignored() {
        let set = load(&[
            ("README.md", b"# notes"),
            (".1_swap.sql", b"garbage"),
            ("1_a.sql", b"-- upgrade\nSELECT 1;\n"),
        ])
        .unwrap();
        assert_eq!(set.migrations().len(), 1);
    }

    #[test]
    fn symlink_out_of_the_directory_is_refused() {
        let outside = Dir::new(&[("x.sql", b"-- upgrade\nSELECT 1;\n")]);
        let inside = Dir::new(&[("2_b.sql", b"-- upgrade\nSELECT 2;\n")]);
        std::os::unix::fs::symlink(outside.0.join("x.sql"), inside.0.join("1_a.sql")).unwrap();
        let err = MigrationSet::load(&inside.0).unwrap_err();
        assert!(
            err.message.contains("outside the migrations directory"),
            "{err}"
        );
        // A link inside the directory is fine.
        fs::remove_file(inside.0.join("1_a.sql")).unwrap();
        std::os::unix::fs::symlink(inside.0.join("2_b.sql"), inside.0.join("3_c.sql")).unwrap();
        assert!(MigrationSet::load(&inside.0).is_ok());
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("0001"), Ok(1.into()));
        assert_eq!(
            parse_version("999999999999999999"),
            Ok(999_999_999_999_999_999.into())
        );
        assert!(parse_version("1999999999999999999").is_err());
        assert!(parse_version("1a").is_err());
        assert!(Migration::check_name("add_users_2").is_ok());
        let at = |secs| {
            Migration::version_at(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        };
        assert_eq!(at(0), 19700101000000);
        assert_eq!(at(951_782_400), 20000229000000);
        assert_eq!(at(1_795_519_845), 20261124113045);
        assert!(Migration::check_name("Add Users").is_err());
    }
}
