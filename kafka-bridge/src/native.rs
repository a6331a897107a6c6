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

/// An application handle on one of a client's topics (`rd_kafka_topic_t`): producing through
/// it skips librdkafka's lookup of the topic by name, a linear search of every topic the client
/// ever produced to, under the client's lock, on each message.
pub(crate) struct TopicHandle(*mut rdkafka::bindings::rd_kafka_topic_t);

// SAFETY: librdkafka topic handles may be used from any thread; the handle is a counted
// reference released in `Drop`, which the owner runs before the client is destroyed.
unsafe impl Send for TopicHandle {}
unsafe impl Sync for TopicHandle {}

impl TopicHandle {
    /// A handle on `name` in `client` (created with the client's default topic settings);
    /// `None` for a name librdkafka refuses.
    pub(crate) fn new<C: ClientContext>(client: &Client<C>, name: &str) -> Option<Self> {
        let name = CString::new(name).ok()?;
        // SAFETY: a live client; the name is NUL-terminated and only read during the call; a
        // NULL configuration means the client's defaults.
        let rkt = unsafe {
            rdkafka::bindings::rd_kafka_topic_new(
                client.native_ptr(),
                name.as_ptr(),
                std::ptr::null_mut(),
            )
        };
        (!rkt.is_null()).then_some(Self(rkt))
    }
}

impl Drop for TopicHandle {
    fn drop(&mut self) {
        // SAFETY: releases the reference `new` took, once.
        unsafe { rdkafka::bindings::rd_kafka_topic_destroy(self.0) }
    }
}

/// One record for [`produce`]; `opaque` comes back with its delivery report.
pub(crate) struct Record<'a> {
    pub partition: i32,
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// Milliseconds since the epoch; 0: now.
    pub timestamp: i64,
    /// One header `(name, value)` when set.
    pub header: Option<(&'a str, &'a [u8])>,
}

/// Enqueues `rec` on `topic` of `client` (librdkafka copies key, value and header), with
/// `opaque` as the message's opaque, which comes back with its delivery report; on refusal the
/// error code is returned with the opaque.
pub(crate) fn produce<C: ClientContext, O: rdkafka::util::IntoOpaque>(
    client: &Client<C>,
    topic: &TopicHandle,
    rec: &Record<'_>,
    opaque: O,
) -> Result<(), (rdkafka::types::RDKafkaErrorCode, O)> {
    use rdkafka::bindings as rd;
    use rdkafka::bindings::rd_kafka_vtype_t::*;
    let key = if rec.key.is_empty() {
        std::ptr::null()
    } else {
        rec.key.as_ptr()
    };
    let headers = match rec.header {
        None => std::ptr::null_mut(),
        Some((name, value)) => {
            // SAFETY: a new header list that we own until producev takes it; the name and
            // value are copied by `rd_kafka_header_add` with the lengths given.
            unsafe {
                let h = rd::rd_kafka_headers_new(1);
                rd::rd_kafka_header_add(
                    h,
                    name.as_ptr().cast(),
                    name.len() as isize,
                    value.as_ptr().cast(),
                    value.len() as isize,
                );
                h
            }
        }
    };
    // SAFETY: the argument list pairs each `RD_KAFKA_VTYPE_*` tag with an argument of the type
    // librdkafka reads for it (as the `rdkafka` crate's own `BaseProducer::send` does, with a
    // topic handle in place of a topic name), ended by `RD_KAFKA_VTYPE_END`; `MSG_F_COPY`
    // makes librdkafka copy the key and value before returning; the topic handle is live.
    let opaque = opaque.into_ptr();
    let err = unsafe {
        rd::rd_kafka_producev(
            client.native_ptr(),
            RD_KAFKA_VTYPE_RKT,
            topic.0,
            RD_KAFKA_VTYPE_PARTITION,
            rec.partition,
            RD_KAFKA_VTYPE_MSGFLAGS,
            rd::RD_KAFKA_MSG_F_COPY,
            RD_KAFKA_VTYPE_VALUE,
            rec.value.as_ptr(),
            rec.value.len(),
            RD_KAFKA_VTYPE_KEY,
            key,
            rec.key.len(),
            RD_KAFKA_VTYPE_OPAQUE,
            opaque,
            RD_KAFKA_VTYPE_TIMESTAMP,
            rec.timestamp,
            RD_KAFKA_VTYPE_HEADERS,
            headers,
            RD_KAFKA_VTYPE_END,
        )
    };
    if err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return Ok(());
    }
    if !headers.is_null() {
        // SAFETY: producev takes the headers only when it succeeds.
        unsafe { rd::rd_kafka_headers_destroy(headers) }
    }
    // SAFETY: producev did not take the opaque: it is still the pointer `into_ptr` made.
    Err((err.into(), unsafe { O::from_ptr(opaque) }))
}
