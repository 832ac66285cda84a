//! A forced release's way in between two migrations (SQLite's write lock
//! passes from one migration to the next without a gap), and waking the
//! waiters on this host when the lock is released.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::SqliteDriver;

/// The longest a holder waits between migrations for a forced release.
pub(super) const YIELD_LIMIT: Duration = Duration::from_secs(30);

/// A POSIX read lock on the release side file: a forced release holds it
/// while it waits for the database. Released when the file closes.
pub(super) struct ReleaseRequest(#[allow(dead_code)] std::fs::File);

/// A waiter's watch on the release file (Linux inotify): a release, plain
/// or forced, closes the file after opening it for writing, which wakes
/// every waiter on this host at once instead of at its next poll. Waiters
/// on other hosts (a database on a network share) and waiters that could
/// not set a watch up still poll; the lock row stays the only truth, and a
/// wake-up that was not a release costs one look.
pub(super) struct Wake {
    fd: std::os::fd::OwnedFd,
}

impl Wake {
    /// Watches `path`, creating it if no waiter has yet. `None` where that
    /// cannot be done.
    pub(super) fn watch(path: &Path) -> Option<Wake> {
        // Made empty by the first waiter; nobody can be watching a file
        // that did not exist, so closing it wakes nobody. If another
        // waiter made it first, it is left alone.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(_) => return None,
        }
        Self::inotify(path)
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn inotify(path: &Path) -> Option<Wake> {
        use std::ffi::CString;
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        use std::os::unix::ffi::OsStrExt;
        let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
        // SAFETY: plain system calls; the descriptor is owned right away.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            if fd < 0 {
                return None;
            }
            let fd = OwnedFd::from_raw_fd(fd);
            if libc::inotify_add_watch(fd.as_raw_fd(), c_path.as_ptr(), libc::IN_CLOSE_WRITE) < 0 {
                return None;
            }
            Some(Wake { fd })
        }
    }

    /// Elsewhere waiters poll.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn inotify(_path: &Path) -> Option<Wake> {
        None
    }

    /// Waits up to `timeout` for a release; `true` when one came. A signal
    /// ends the wait early (the caller then looks whether it was told to
    /// stop).
    pub(super) fn wait(&self, timeout: Duration) -> bool {
        use std::os::fd::AsRawFd;
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut poll, 1, ms) } <= 0 {
            return false;
        }
        // Drain the events: one wake-up however many closes came.
        let mut buf = [0u8; 4096];
        // SAFETY: reads into a buffer of the given length.
        while unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        true
    }
}

fn record_lock(kind: libc::c_int) -> libc::flock {
    // SAFETY: flock is a plain C struct; all-zero is a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = 0;
    lock.l_len = 1;
    lock
}

impl SqliteDriver {
    /// `<database>-lockstep-release`: the side file through which a forced
    /// release asks a running holder to pause between migrations, and
    /// through which a release wakes the waiters on this host (see
    /// [`Wake`]). `None` for an in-memory database.
    pub(super) fn release_file(&self) -> Option<PathBuf> {
        if self.memory {
            return None;
        }
        let mut name = self.path.as_os_str().to_os_string();
        name.push("-lockstep-release");
        Some(PathBuf::from(name))
    }

    /// Announces a forced release until the returned value is dropped.
    pub(super) fn request_release(&self) -> Option<ReleaseRequest> {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.release_file()?)
            .ok()?;
        let lock = record_lock(libc::F_RDLCK);
        // SAFETY: a valid descriptor and a valid lock description.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLKW, &lock) };
        (rc == 0).then_some(ReleaseRequest(file))
    }

    /// Wakes the waiters on this host after a release: closing the release
    /// file after opening it for writing is the event they watch for. Only
    /// where a waiter made the file; written nothing, and no record lock is
    /// taken (this process holds none on it to lose by the close).
    pub(super) fn announce_release(&self) {
        if let Some(path) = self.release_file() {
            let _ = std::fs::OpenOptions::new().write(true).open(path);
        }
    }

    /// Whether a forced release is announced right now. Only asks: a holder
    /// frozen after asking must not look like a request to the next one.
    pub(super) fn release_pending(&self) -> bool {
        use std::os::fd::AsRawFd;
        let Some(path) = self.release_file() else {
            return false;
        };
        let Ok(file) = std::fs::File::open(path) else {
            return false;
        };
        let mut lock = record_lock(libc::F_WRLCK);
        // SAFETY: a valid descriptor and a valid lock description.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) };
        rc == 0 && lock.l_type != libc::F_UNLCK as libc::c_short
    }
}
