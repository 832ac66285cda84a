//! The lock held by this run: its fence, and a heartbeat that renews the
//! lease every third of it on a connection of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{Fence, LockStore, Renewal, Stop, StoreError};

/// The lock held by this run: its fence and its heartbeat.
pub(crate) struct Held {
    pub fence: Fence,
    /// The command it was taken for, for the audit log.
    pub command: String,
    /// Set when the heartbeat or a fenced write found the token changed.
    lost: Arc<AtomicBool>,
    heartbeat: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl Held {
    /// Starts the heartbeat of a lock just taken, on a connection that
    /// `store` opens for it.
    pub fn start<S: LockStore + ?Sized>(
        store: &S,
        fence: Fence,
        command: &str,
    ) -> Result<Held, S::Error> {
        let conn = store.heartbeat_store()?;
        let lost = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = mpsc::channel::<()>();
        let beat = {
            let fence = fence.clone();
            let lost = lost.clone();
            move || beat(conn, &fence, &stopped, &lost)
        };
        let handle = std::thread::Builder::new()
            .name("lockstep-heartbeat".into())
            .spawn(beat)
            .map_err(|e| S::Error::from(Stop::NoHeartbeat(e)))?;
        Ok(Held {
            fence,
            command: command.to_string(),
            lost,
            heartbeat: Some((stop, handle)),
        })
    }

    /// The heartbeat or a fenced write saw the token change.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    pub fn mark_lost(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }

    /// Stops the heartbeat and waits for it.
    pub fn stop_heartbeat(&mut self) {
        if let Some((stop, handle)) = self.heartbeat.take() {
            drop(stop);
            let _ = handle.join();
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stop_heartbeat();
    }
}

/// The heartbeat thread: renews until stopped, or until the token is no
/// longer current, which it flags.
fn beat<E: StoreError>(
    mut conn: Box<dyn LockStore<Error = E>>,
    fence: &Fence,
    stopped: &mpsc::Receiver<()>,
    lost: &AtomicBool,
) {
    let interval = fence.ttl / 3;
    loop {
        match stopped.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            // Stopped, or the run is over.
            _ => return,
        }
        match conn.renew_lock(fence) {
            Ok(Renewal::Renewed) | Ok(Renewal::Busy) => {}
            Ok(Renewal::Lost) => {
                lost.store(true, Ordering::SeqCst);
                return;
            }
            // A broken heartbeat connection is not a loss: the fenced
            // writes decide. Reconnect for the next beat.
            Err(_) => {
                if let Ok(fresh) = conn.heartbeat_store() {
                    conn = fresh;
                }
            }
        }
    }
}
