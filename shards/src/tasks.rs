//! A core's long-lived tasks, by name: the acceptor, the inbox, the flushers, the replayer and
//! the periodic tasks. They all end on the core's stop token (`Shard::stop_event`, which each
//! watches); [`Tasks::finish`] waits for them within a budget and names the ones that did not
//! end in time.

use monoio::task::JoinHandle;
use std::cell::RefCell;
use std::future::Future;
use std::time::{Duration, Instant};

/// The registry.
#[derive(Default)]
pub struct Tasks {
    running: RefCell<Vec<(&'static str, JoinHandle<()>)>>,
}

impl Tasks {
    /// Starts `fut` as the task `name`.
    pub fn spawn(&self, name: &'static str, fut: impl Future<Output = ()> + 'static) {
        self.running.borrow_mut().push((name, monoio::spawn(fut)));
    }

    /// Waits for every task to end (they watch the stop token) for at most `budget`; returns
    /// the names of those still running then.
    pub async fn finish(&self, budget: Duration) -> Vec<&'static str> {
        let deadline = Instant::now() + budget;
        let running = std::mem::take(&mut *self.running.borrow_mut());
        let mut late = Vec::new();
        for (name, h) in running {
            let left = deadline.saturating_duration_since(Instant::now());
            if monoio::time::timeout(left, h).await.is_err() {
                late.push(name);
            }
        }
        late
    }
}
