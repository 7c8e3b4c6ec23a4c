//! The state file: kept answers written to disk whenever they change (at most once a second,
//! on a thread of its own) and at exit, so they survive a restart, an `idle_exit` and a crash
//! up to the last second. Writing is [`MemoryStore::save`]'s: a temporary file, fsync, rename.

use crate::state::{KEY_PREFIX, MemoryStore};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Longest time between a change and its save.
const DELAY: Duration = Duration::from_secs(1);

/// Saves a store to a file when told it changed.
pub struct Persister {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<MemoryStore>,
    path: PathBuf,
    dirty: AtomicBool,
    /// Serialises saves (the thread's and [`Persister::save_now`]).
    saving: Mutex<()>,
    wake: Condvar,
    nap: Mutex<()>,
    /// A failing disk: one error a minute.
    failing: crate::logger::Throttle,
}

impl Persister {
    /// Starts the saving thread for `store` and `path`.
    pub fn start(store: Arc<MemoryStore>, path: PathBuf) -> Persister {
        let shared = Arc::new(Shared {
            store,
            path,
            dirty: AtomicBool::new(false),
            saving: Mutex::new(()),
            wake: Condvar::new(),
            nap: Mutex::new(()),
            failing: crate::logger::Throttle::new(super::hub::WARN_EVERY),
        });
        let weak = Arc::downgrade(&shared);
        let started = std::thread::Builder::new()
            .name("late-state".into())
            .spawn(move || {
                while let Some(shared) = weak.upgrade() {
                    {
                        let nap = shared.nap.lock().unwrap_or_else(|p| p.into_inner());
                        let _ = shared.wake.wait_timeout(nap, DELAY);
                    }
                    if shared.dirty.swap(false, Ordering::AcqRel) {
                        // Let a burst of changes settle into one write.
                        std::thread::sleep(Duration::from_millis(100));
                        shared.save();
                    }
                }
            });
        if let Err(e) = started {
            crate::log_error!("late: cannot start the state file thread: {e}");
        }
        Persister { shared }
    }

    /// The state file.
    pub fn path(&self) -> &std::path::Path {
        &self.shared.path
    }

    /// Notes a change: saved within a second.
    pub fn changed(&self) {
        self.shared.dirty.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }

    /// Saves now (at exit).
    pub fn save_now(&self) {
        self.shared.dirty.store(false, Ordering::Release);
        self.shared.save();
    }
}

impl Shared {
    fn save(&self) {
        let _one = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.store.save(KEY_PREFIX, &self.path) {
            if let Some(left_out) = self.failing.hit(std::time::Instant::now()).map(|n| n - 1) {
                crate::log_error!(
                    "late: cannot write the state file {}: {e} (kept answers would not survive a restart) similar_errors_left_out={left_out}",
                    self.path.display()
                );
            }
        }
    }
}
