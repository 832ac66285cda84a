//! Who is running: host name, process id, executor id.

/// This machine's host name, or `unknown-host`.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most
    // that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(s) if !s.is_empty() => s.to_string(),
        _ => "unknown-host".into(),
    }
}

/// Four random bytes as hex, from the kernel's generator.
pub fn random_hex() -> String {
    let mut buf = [0u8; 4];
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        // Not secret, only distinct: the time and pid will do.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        buf = (t ^ std::process::id().rotate_left(16)).to_be_bytes();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// The default executor id: `<host>-<pid>-<random hex>`, unique per run.
pub fn default_executor() -> String {
    format!("{}-{}-{}", hostname(), std::process::id(), random_hex())
}

/// Checks an executor id given by a user: printable, no control characters,
/// at most 200 characters.
pub fn check_executor(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the owner name is empty".into());
    }
    if id.chars().count() > 200 {
        return Err("the owner name is longer than 200 characters".into());
    }
    if id.chars().any(char::is_control) {
        return Err("the owner name contains control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executor_ids() {
        let id = default_executor();
        assert!(id.contains(&format!("-{}-", std::process::id())), "{id}");
        assert_ne!(default_executor(), id);
        assert!(check_executor(&id).is_ok());
        assert!(check_executor("ci job 7 / pod-a").is_ok());
        assert!(check_executor("").is_err());
        assert!(check_executor("a\nb").is_err());
    }
}
