//! SIGINT and SIGTERM. For commands that hold the lock the first signal
//! asks the run to stop (finish or cancel the current migration, release
//! the lock, exit 130 or 143); a second one exits at once, and the lock is
//! then recovered as after a crash. Other commands, and any command before
//! its arguments are read, exit at once with 130 or 143.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::OnceLock;

use lockstep::CancelHandle;

/// The first signal received, 0 before any.
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// The write end of the pipe that wakes the watcher thread.
static WAKE: AtomicI32 = AtomicI32::new(-1);

/// The command takes the lock: a first signal stops it cleanly rather than
/// at once.
static STOP_CLEANLY: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(signal: libc::c_int) {
    let first = RECEIVED
        .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok();
    if !first || !STOP_CLEANLY.load(Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + signal) };
    }
    let fd = WAKE.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write is async-signal-safe; the buffer is one valid byte.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
}

/// The run to cancel, once there is one.
static RUN: OnceLock<CancelHandle> = OnceLock::new();

/// Installs the handlers, first thing in `main`: from then on a signal
/// ends the process with 130 or 143, never by its default action.
pub fn install() {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    WAKE.store(fds[1], Ordering::SeqCst);
    let read_end = fds[0];
    let spawned = std::thread::Builder::new()
        .name("lockstep-signals".into())
        .spawn(move || {
            let mut byte = 0u8;
            // SAFETY: reads one byte into a valid buffer.
            let n = unsafe { libc::read(read_end, (&mut byte as *mut u8).cast(), 1) };
            if n == 1 {
                if let Some(run) = RUN.get() {
                    run.cancel();
                }
            }
        });
    if spawned.is_err() {
        return;
    }
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a valid handler and an empty mask.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// The command takes the lock: from now on a first signal stops it
/// cleanly, also before the run exists (`register` then cancels it).
pub fn stop_cleanly() {
    STOP_CLEANLY.store(true, Ordering::SeqCst);
}

/// Names the run that a signal cancels; if one already arrived, cancels
/// it at once.
pub fn register(run: CancelHandle) {
    let _ = RUN.set(run.clone());
    if received().is_some() {
        run.cancel();
    }
}

/// The signal that cancelled the run, if one did.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}
