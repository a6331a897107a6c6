//! The one librdkafka call the `rdkafka` crate does not wrap: adding brokers to a running
//! client (`rd_kafka_brokers_add`).
//!
//! Why it is needed: a broker that was frozen or fenced can answer a metadata request with no
//! brokers in it; librdkafka then forgets every broker it had learned and, with its bootstrap
//! brokers already gone, has nowhere to send anything: queued messages wait forever (seen with
//! librdkafka 2.12 after a broker was stopped for longer than its session timeout). Adding the
//! bootstrap brokers again lets it reconnect and learn the cluster anew. Adding brokers it
//! already knows does nothing.

#![allow(unsafe_code)]

use rdkafka::bindings::rd_kafka_brokers_add;
use rdkafka::client::{Client, ClientContext};
use std::ffi::CString;

/// Adds `brokers` (`host:port,...`) to `client`; returns how many were new.
pub(crate) fn add_brokers<C: ClientContext>(client: &Client<C>, brokers: &str) -> i32 {
    let Ok(list) = CString::new(brokers) else {
        return 0;
    };
    // SAFETY: `native_ptr` is the live `rd_kafka_t` that `client` owns for as long as it is
    // borrowed here; `rd_kafka_brokers_add` is thread-safe, reads the NUL-terminated list
    // only during the call and keeps no pointer to it.
    unsafe { rd_kafka_brokers_add(client.native_ptr(), list.as_ptr()) }
}

/// A handle on a client's main queue (where librdkafka puts delivery reports and errors), for
/// the two things the `rdkafka` crate does not offer: its length, and a descriptor written
/// when it stops being empty (`rd_kafka_queue_io_event_enable`), so that an event loop can
/// wait for delivery reports instead of a thread blocking in `poll`.
pub(crate) struct MainQueue(*mut rdkafka::bindings::rd_kafka_queue_t);

// SAFETY: librdkafka queues are thread-safe (every queue call takes the queue's own lock); the
// handle is a counted reference that stays valid until `Drop`.
unsafe impl Send for MainQueue {}
unsafe impl Sync for MainQueue {}

impl MainQueue {
    /// The main queue of `client` (a new reference to it).
    pub(crate) fn of<C: ClientContext>(client: &Client<C>) -> Self {
        // SAFETY: `native_ptr` is the live `rd_kafka_t` of `client`; the queue it returns is
        // a reference of our own, released in `Drop`.
        Self(unsafe { rdkafka::bindings::rd_kafka_queue_get_main(client.native_ptr()) })
    }

    /// Events waiting in the queue.
    pub(crate) fn len(&self) -> usize {
        // SAFETY: a live queue reference (see `of`).
        unsafe { rdkafka::bindings::rd_kafka_queue_length(self.0) }
    }

    /// From now on librdkafka writes the 8 bytes of `1u64` to `fd` (an eventfd) whenever an
    /// event arrives on the empty queue; `fd` of -1 stops it.
    pub(crate) fn notify(&self, fd: std::os::fd::RawFd) {
        let one = 1u64.to_ne_bytes();
        let (payload, size) = if fd < 0 {
            (std::ptr::null(), 0)
        } else {
            (one.as_ptr(), one.len())
        };
        // SAFETY: a live queue reference; librdkafka copies the payload during the call.
        unsafe {
            rdkafka::bindings::rd_kafka_queue_io_event_enable(self.0, fd, payload.cast(), size)
        }
    }
}

impl Drop for MainQueue {
    fn drop(&mut self) {
        // SAFETY: releases the reference taken in `of`, once.
        unsafe { rdkafka::bindings::rd_kafka_queue_destroy(self.0) }
    }
}

/// An eventfd (blocking, close-on-exec): librdkafka writes to it, an event loop reads it.
pub(crate) struct EventFd(std::os::fd::OwnedFd);

impl EventFd {
    pub(crate) fn new() -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscall; a non-negative result is a descriptor we now own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(Self(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    /// A descriptor of the same eventfd, owned by the caller.
    pub(crate) fn file(&self) -> std::io::Result<std::fs::File> {
        self.0.try_clone().map(std::fs::File::from)
    }

    pub(crate) fn raw(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }

    /// Adds one to the counter (wakes a reader).
    pub(crate) fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our descriptor; an eventfd write of a
        // small value cannot block meaningfully, and a failure only means a missed wake-up
        // that `wait` makes up for with its timeout.
        unsafe { libc::write(self.raw(), one.as_ptr().cast(), one.len()) };
    }

    /// Blocks until the counter is non-zero or `timeout` passed, then resets it.
    pub(crate) fn wait(&self, timeout: std::time::Duration) {
        let mut p = libc::pollfd {
            fd: self.raw(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one live pollfd; the eventfd is readable when polled so, and reading 8
        // bytes into a live buffer resets its counter without blocking.
        unsafe {
            if libc::poll(&mut p, 1, ms) > 0 {
                let mut buf = [0u8; 8];
                libc::read(self.raw(), buf.as_mut_ptr().cast(), buf.len());
            }
        }
    }
}
