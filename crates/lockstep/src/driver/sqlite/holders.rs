//! Who holds an SQLite database file's locks, from Linux's `/proc/locks`:
//! what a "database is locked" error cannot say by itself.
//!
//! SQLite (unix VFS) with a rollback journal locks single bytes of the
//! database file at 1 GiB: the pending byte, then the reserved byte, then a
//! 510-byte shared range. In WAL mode a writer holds byte 120 of the
//! `-shm` file instead.

use std::path::Path;

const PENDING_BYTE: u64 = 0x4000_0000;
const RESERVED_BYTE: u64 = PENDING_BYTE + 1;
const SHARED_FIRST: u64 = PENDING_BYTE + 2;
/// WAL mode: the writer's lock in the `-shm` file.
const WAL_WRITE_BYTE: u64 = 120;

/// One process's hold on the database, as SQLite names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    pub pid: u32,
    /// `writing` (reserved or exclusive), `committing` (pending) or
    /// `reading` (shared).
    pub what: &'static str,
}

impl Holder {
    /// It holds the write lock, or is about to commit.
    pub(crate) fn writes(&self) -> bool {
        self.what != "reading"
    }
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
        if !same_file(fields[5], dev, inode) || pid == me {
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

/// The processes in `locks` other than `me` that hold the WAL write lock
/// of the `-shm` file with this device and inode.
pub(crate) fn wal_writers_in(locks: &str, dev: (u64, u64), inode: u64, me: u32) -> Vec<Holder> {
    let mut found: Vec<Holder> = Vec::new();
    for line in locks.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 || fields[1] != "POSIX" && fields[1] != "OFDLCK" || fields[3] != "WRITE"
        {
            continue;
        }
        let (Ok(pid), Ok(start)) = (fields[4].parse::<u32>(), fields[6].parse::<u64>()) else {
            continue;
        };
        let end = fields[7].parse::<u64>().unwrap_or(u64::MAX);
        if pid == me
            || start > WAL_WRITE_BYTE
            || end < WAL_WRITE_BYTE
            || !same_file(fields[5], dev, inode)
        {
            continue;
        }
        if !found.iter().any(|h| h.pid == pid) {
            found.push(Holder {
                pid,
                what: "writing",
            });
        }
    }
    found
}

fn same_file(id: &str, dev: (u64, u64), inode: u64) -> bool {
    let mut id = id.split(':');
    let (Some(major), Some(minor), Some(ino)) = (id.next(), id.next(), id.next()) else {
        return false;
    };
    u64::from_str_radix(major, 16).ok() == Some(dev.0)
        && u64::from_str_radix(minor, 16).ok() == Some(dev.1)
        && ino.parse::<u64>().ok() == Some(inode)
}

/// Every process other than this one with a lock on the database at
/// `path`, in either journal mode; `None` where that cannot be known.
pub(crate) fn holders(path: &Path) -> Option<Vec<Holder>> {
    use std::os::unix::fs::MetadataExt;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let id = |path: &Path| {
        std::fs::metadata(path).ok().map(|meta| {
            let dev = meta.dev();
            (
                (u64::from(libc::major(dev)), u64::from(libc::minor(dev))),
                meta.ino(),
            )
        })
    };
    let me = std::process::id();
    let (dev, inode) = id(path)?;
    let mut found = holders_in(&locks, dev, inode, me);
    let mut shm = path.as_os_str().to_os_string();
    shm.push("-shm");
    if let Some((dev, inode)) = id(Path::new(&shm)) {
        for writer in wal_writers_in(&locks, dev, inode, me) {
            match found.iter_mut().find(|h| h.pid == writer.pid) {
                Some(h) => h.what = "writing",
                None => found.push(writer),
            }
        }
    }
    Some(found)
}

/// "pid 812 (lockstep, stopped: writing), pid 90 (python3: reading)".
pub(crate) fn named(holders: &[Holder]) -> String {
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
    parts.join(", ")
}

/// "the database file is held by pid 812 (…), …" for the database at
/// `path`, or `None` where that cannot be known.
pub(crate) fn describe(path: &Path) -> Option<String> {
    let holders = holders(path)?;
    (!holders.is_empty()).then(|| format!("the database file is held by {}", named(&holders)))
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
    fn a_wal_writer_is_named_by_its_lock_on_the_shm_file() {
        let locks = "\
1: POSIX  ADVISORY  WRITE 812 08:01:77 120 120
2: POSIX  ADVISORY  READ 90 08:01:77 123 123
3: POSIX  ADVISORY  WRITE 91 08:01:77 124 124
4: POSIX  ADVISORY  WRITE 92 08:01:78 120 120
5: POSIX  ADVISORY  WRITE 93 08:01:77 100 130
";
        let pids: Vec<u32> = wal_writers_in(locks, (8, 1), 77, 1)
            .iter()
            .map(|h| h.pid)
            .collect();
        assert_eq!(pids, [812, 93]);
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
