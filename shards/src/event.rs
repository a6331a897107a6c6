//! A single-threaded wake-up primitive: an epoch counter plus the wakers of tasks waiting for it
//! to move. Used for "new data on this topic", "a flush cycle finished" and "shutdown started".
//! Never crosses threads; other cores reach it through a mesh message.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// An epoch that tasks can wait on.
#[derive(Default)]
pub struct Event {
    epoch: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Event {
    /// The current epoch; pass it to [`Event::wait`].
    pub fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    /// Moves the epoch and wakes every waiter.
    pub fn notify(&self) {
        self.epoch.set(self.epoch.get() + 1);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves once the epoch differs from `seen`.
    pub fn wait(&self, seen: u64) -> Wait<'_> {
        Wait { ev: self, seen }
    }
}

/// Future returned by [`Event::wait`].
pub struct Wait<'a> {
    ev: &'a Event,
    seen: u64,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.ev.epoch.get() != self.seen {
            return Poll::Ready(());
        }
        let mut w = self.ev.wakers.borrow_mut();
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
        Poll::Pending
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
