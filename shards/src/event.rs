//! A single-threaded wake-up primitive: an epoch counter plus the wakers of tasks waiting for it
//! to move. Used for "new data on this topic", "a flush cycle finished" and "shutdown started".
//! Never crosses threads; other cores reach it through a mesh message.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// An epoch that tasks can wait on. Each waiting future owns one slot for its waker and frees
/// it when dropped, so abandoned waits (a `select!` that took another branch, a closed
/// connection) leave nothing behind and every poll is O(1).
#[derive(Default)]
pub struct Event {
    epoch: Cell<u64>,
    slots: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Event {
    /// The current epoch; pass it to [`Event::wait`].
    pub fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    /// Moves the epoch and wakes every waiter.
    pub fn notify(&self) {
        self.epoch.set(self.epoch.get() + 1);
        let woken: Vec<Waker> = self
            .slots
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in woken {
            w.wake();
        }
    }

    /// Resolves once the epoch differs from `seen`.
    pub fn wait(&self, seen: u64) -> Wait<'_> {
        Wait {
            ev: self,
            seen,
            slot: None,
        }
    }

    /// Waiting futures registered now (for tests and metrics).
    pub fn waiters(&self) -> usize {
        self.slots.borrow().iter().filter(|s| s.is_some()).count()
    }
}

/// Future returned by [`Event::wait`].
pub struct Wait<'a> {
    ev: &'a Event,
    seen: u64,
    slot: Option<usize>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.ev.epoch.get() != self.seen {
            return Poll::Ready(());
        }
        let mut slots = self.ev.slots.borrow_mut();
        match self.slot {
            Some(k) => match &mut slots[k] {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            },
            None => {
                let k = match self.ev.free.borrow_mut().pop() {
                    Some(k) => {
                        slots[k] = Some(cx.waker().clone());
                        k
                    }
                    None => {
                        slots.push(Some(cx.waker().clone()));
                        slots.len() - 1
                    }
                };
                drop(slots);
                self.slot = Some(k);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.slot {
            self.ev.slots.borrow_mut()[k] = None;
            self.ev.free.borrow_mut().push(k);
        }
    }
}

/// Gives every other ready task on this core one turn before continuing.
pub fn yield_now() -> YieldNow {
    YieldNow(false)
}

/// Future returned by [`yield_now`].
pub struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn dropped_waits_free_their_slot_and_notify_wakes() {
        let ev = Event::default();
        let flag = Arc::new(Flag(Default::default()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        for _ in 0..1000 {
            let mut w = Box::pin(ev.wait(ev.epoch()));
            assert!(w.as_mut().poll(&mut cx).is_pending());
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(ev.waiters(), 0, "abandoned waits leave nothing behind");
        assert_eq!(ev.slots.borrow().len(), 1, "one slot reused");
        let mut w = Box::pin(ev.wait(ev.epoch()));
        assert!(w.as_mut().poll(&mut cx).is_pending());
        ev.notify();
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        assert!(w.as_mut().poll(&mut cx).is_ready());
    }
}
