//! Memory tuning for the whole process. The CLI owns its process, so it
//! may; the library leaves both alone, since an embedder's allocator and
//! SQLite are the embedder's.

/// While the guard lives, SQLite keeps its heap near `bytes` (a soft
/// limit: it reuses pages of its caches rather than adding more, and
/// never fails an allocation for it). Dropping the guard puts the limit
/// back as it was.
pub struct SqliteHeapLimit {
    previous: i64,
}

impl SqliteHeapLimit {
    pub fn set(bytes: i64) -> SqliteHeapLimit {
        // SAFETY: a process-wide setting behind SQLite's own mutex; it
        // returns the limit it replaces, negative on error.
        let previous = unsafe { libsqlite3_sys::sqlite3_soft_heap_limit64(bytes) };
        SqliteHeapLimit {
            previous: previous.max(0),
        }
    }
}

impl Drop for SqliteHeapLimit {
    fn drop(&mut self) {
        // SAFETY: as in `set`.
        unsafe {
            libsqlite3_sys::sqlite3_soft_heap_limit64(self.previous);
        }
    }
}

/// Hands the pages of freed memory back to the system. After an SQLite
/// history read, the engine has let go of its parsed schema and of its
/// page cache (`Migrator::prefetch_history`), megabytes over a large
/// database, in the middle of the heap where the allocator keeps them.
/// The files' records then reuse only part of them. At 10,000 tables
/// this took 0.9 MiB off the run's peak (12.68 -> 11.81 MiB, GNU time,
/// medians of 15) and no measurable time.
pub fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: glibc's malloc_trim only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
