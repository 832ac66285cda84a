//! Reading a file that a user named: only a regular file, only up to a size
//! bound. Opened non-blocking, so that a FIFO (or one swapped in after a
//! directory was listed) is refused instead of waited on, and a device such
//! as `/dev/zero` is refused instead of read without end.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Why a file was not read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// It could not be opened or read.
    Io(io::Error),
    /// It is a directory, FIFO, device or socket.
    NotRegular,
    /// It is larger than the bound, by its size (or by what was read when
    /// it grew while being read).
    TooLarge(u64),
}

impl ReadError {
    /// A lowercase phrase for messages.
    pub(crate) fn reason(&self, limit: u64) -> String {
        match self {
            ReadError::Io(e) => io_reason(e),
            ReadError::NotRegular => "not a regular file".into(),
            ReadError::TooLarge(size) => format!(
                "file is too large ({} MiB; the limit is {} MiB)",
                size / (1024 * 1024),
                limit / (1024 * 1024)
            ),
        }
    }
}

/// The phrase for an I/O error, without Rust's wording of its kind.
pub(crate) fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file or directory".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    }
}

/// The bytes of the regular file at `path`, if it holds at most `limit`.
/// One open, one `fstat`, the reads.
pub(crate) fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular);
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge(meta.len()));
    }
    // `read_to_end` on a `File` would ask the size again (statx, lseek).
    let mut bytes = vec![0; meta.len() as usize + 1];
    let mut filled = 0;
    loop {
        if filled == bytes.len() {
            // Grew since the fstat.
            bytes.resize(filled * 2, 0);
        }
        let wanted = bytes.len() - filled;
        match file.read(&mut bytes[filled..]) {
            Ok(0) => break,
            // All the fstat promised, and less than asked: the end, without
            // another read to hear it.
            Ok(n) if n < wanted && filled + n == meta.len() as usize => {
                filled += n;
                break;
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
        if filled as u64 > limit {
            return Err(ReadError::TooLarge(filled as u64));
        }
    }
    bytes.truncate(filled);
    Ok(bytes)
}
