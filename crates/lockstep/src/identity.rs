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

/// Four random bytes from the kernel's generator.
pub fn random_u32() -> u32 {
    let mut buf = [0u8; 4];
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == buf.len() as isize {
        u32::from_ne_bytes(buf)
    } else {
        // Not secret, only distinct: the time and pid will do.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        t ^ std::process::id().rotate_left(16)
    }
}

/// Four random bytes as hex.
pub fn random_hex() -> String {
    format!("{:08x}", random_u32())
}

/// This process's start time as the kernel counts it (clock ticks since
/// boot), with the boot's id: with the host and the pid, it names this
/// process uniquely, so that a later process reusing the pid is not mistaken
/// for it. `None` where /proc is not available.
pub fn process_start(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it start after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 22, starttime; `rest` starts at field 3.
    let start = rest.split_whitespace().nth(19)?;
    Some(format!("{}/{start}", boot_id()?))
}

fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string())
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
    fn process_start_is_stable_and_ends_with_the_process() {
        let me = process_start(std::process::id()).expect("/proc is available on Linux");
        assert_eq!(process_start(std::process::id()), Some(me));
        // Start times count clock ticks, so two processes may share one:
        // what names a process is its pid together with its start time.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(process_start(child.id()).is_some());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(process_start(child.id()), None);
    }

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
