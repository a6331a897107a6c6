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
