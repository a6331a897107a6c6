//! kateway-proto: everything about bytes on the wire, and nothing about sockets.
//!
//! * [`http1`]: a sans-I/O HTTP/1.1 request decoder (on httparse) and response encoder. It is fed
//!   a `BytesMut` and yields complete requests; it enforces the head and body limits and returns
//!   typed errors that the shards turn into 400/413/431 responses.
//! * [`route`]: maps method and path to a typed API call, or to 404/405.
//! * [`query`]: query-string access with percent-decoding.
//! * [`batch`]: the batch publish formats (ndjson and length-prefixed binary) and the subscribe
//!   output formats (the original's binary records and JSON lines).
//! * [`json`]: the tiny JSON string escaper used by hand-written responses.

pub mod batch;
pub mod http1;
pub mod json;
pub mod query;
pub mod route;
