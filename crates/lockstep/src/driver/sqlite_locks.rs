//! Who holds an SQLite database file's locks, from Linux's `/proc/locks`:
//! what a "database is locked" error cannot say by itself.
//!
//! SQLite (unix VFS, rollback journal) locks single bytes at 1 GiB: the
//! pending byte, then the reserved byte, then a 510-byte shared range.

use std::path::Path;

const PENDING_BYTE: u64 = 0x4000_0000;
const RESERVED_BYTE: u64 = PENDING_BYTE + 1;
const SHARED_FIRST: u64 = PENDING_BYTE + 2;

/// One process's hold on the database, as SQLite names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    pub pid: u32,
    /// `writing` (reserved or exclusive), `committing` (pending) or
    /// `reading` (shared).
    pub what: &'static str,
}

/// The processes other than this one that hold locks on `path`, from
/// `locks` (the text of `/proc/locks`). Empty where that says nothing.
pub(crate) fn holders_in(locks: &str, dev: (u64, u64), inode: u64, me: u32) -> Vec<Holder> {
    let mut found: Vec<Holder> = Vec::new();
    for line in locks.lines() {
        // "1: POSIX  ADVISORY  WRITE 1234 08:01:5678 1073741825 1073741825"
        let fields: Vec<&str> = line.split_whitespace().collect();
        // A blocked request ("1: -> POSIX ...") is not a hold.
        if fields.len() < 8 || fields[1] == "->" || fields[1] != "POSIX" && fields[1] != "OFDLCK" {
            continue;
        }
        let Ok(pid) = fields[4].parse::<u32>() else {
            continue;
        };
        let mut id = fields[5].split(':');
        let (Some(major), Some(minor), Some(ino)) = (id.next(), id.next(), id.next()) else {
            continue;
        };
        let same_file = u64::from_str_radix(major, 16).ok() == Some(dev.0)
            && u64::from_str_radix(minor, 16).ok() == Some(dev.1)
            && ino.parse::<u64>().ok() == Some(inode);
        if !same_file || pid == me {
            continue;
        }
        let Ok(start) = fields[6].parse::<u64>() else {
            continue;
        };
        let write = fields[3] == "WRITE";
        let what = match start {
            PENDING_BYTE => "committing",
            RESERVED_BYTE => "writing",
            s if s >= SHARED_FIRST && write => "writing",
            s if s >= SHARED_FIRST => "reading",
            _ => continue,
        };
        match found.iter_mut().find(|h| h.pid == pid) {
            // The strongest hold names the process.
            Some(h) if h.what == "reading" => h.what = what,
            Some(_) => {}
            None => found.push(Holder { pid, what }),
        }
    }
    found
}

/// "held by pid 812 (lockstep, stopped: writing), pid 90 (python3: reading)"
/// for the database at `path`, or `None` where that cannot be known.
pub(crate) fn describe(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let dev = meta.dev();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let holders = holders_in(
        &locks,
        (u64::from(libc::major(dev)), u64::from(libc::minor(dev))),
        meta.ino(),
        std::process::id(),
    );
    if holders.is_empty() {
        return None;
    }
    let parts: Vec<String> = holders
        .iter()
        .map(|h| {
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", h.pid))
                .map(|c| c.trim().to_string())
                .unwrap_or_else(|_| "?".into());
            let stopped = if process_stopped(h.pid) {
                ", stopped"
            } else {
                ""
            };
            format!("pid {} ({comm}{stopped}: {})", h.pid, h.what)
        })
        .collect();
    Some(format!("the database file is held by {}", parts.join(", ")))
}

/// Whether the process is stopped (SIGSTOP, a debugger): its state in
/// `/proc/<pid>/stat` is `T` or `t`.
fn process_stopped(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|s| s == "T" || s == "t")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCKS: &str = "\
1: POSIX  ADVISORY  WRITE 812 08:01:5678 1073741825 1073741825
2: POSIX  ADVISORY  READ 812 08:01:5678 1073741826 1073742335
3: POSIX  ADVISORY  READ 90 08:01:5678 1073741826 1073742335
3: -> POSIX  ADVISORY  WRITE 91 08:01:5678 1073741824 1073741824
4: POSIX  ADVISORY  READ 77 08:01:9999 1073741826 1073742335
5: FLOCK  ADVISORY  WRITE 66 08:01:5678 0 EOF
6: POSIX  ADVISORY  WRITE 55 08:01:5678 1073741824 1073741824
7: POSIX  ADVISORY  READ 4 0a:1f:5678 1073741826 1073742335
";

    #[test]
    fn names_each_holder_of_this_file_by_its_strongest_lock() {
        let found = holders_in(LOCKS, (8, 1), 5678, 1);
        assert_eq!(
            found,
            [
                Holder {
                    pid: 812,
                    what: "writing"
                },
                Holder {
                    pid: 90,
                    what: "reading"
                },
                Holder {
                    pid: 55,
                    what: "committing"
                },
            ]
        );
        // Another device with the same inode number; this process itself.
        assert_eq!(
            holders_in(LOCKS, (0x0a, 0x1f), 5678, 1),
            [Holder {
                pid: 4,
                what: "reading"
            }]
        );
        assert!(holders_in(LOCKS, (8, 1), 5678, 812)
            .iter()
            .all(|h| h.pid != 812));
    }

    #[test]
    fn a_real_sqlite_write_lock_is_seen_from_another_process_view() {
        // This process's own locks are left out, so open the database and
        // look at the text as another process would: with `me` = 0.
        let dir = std::env::temp_dir().join(format!("lockstep-locks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (x); BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
            .unwrap();
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&path).unwrap();
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        let dev = meta.dev();
        let found = holders_in(
            &locks,
            (u64::from(libc::major(dev)), u64::from(libc::minor(dev))),
            meta.ino(),
            0,
        );
        assert_eq!(
            found,
            [Holder {
                pid: std::process::id(),
                what: "writing"
            }]
        );
        conn.execute_batch("ROLLBACK").unwrap();
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
