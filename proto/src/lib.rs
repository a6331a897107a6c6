//! kateway-proto: everything about bytes on the wire, and nothing about sockets.
//!
//! * [`http1`]: a sans-I/O HTTP/1.1 request decoder (on httparse) and response encoder. It is fed
//!   a `BytesMut` and yields complete requests; it enforces the head and body limits and returns
//!   typed errors that the shards turn into 400/413/431 responses.
//! * [`route`]: maps method and path to a route, or to 404/405.
//! * [`command`]: a request's parts (from any transport) parsed into a typed, validated API call.
//! * [`reply`]: what a handler answers, as a value no transport owns, and the one place where an
//!   error becomes an answer.
//! * [`query`]: query-string access with percent-decoding.
//! * [`batch`]: the batch publish formats (ndjson and length-prefixed binary) and the subscribe
//!   output formats (the original's binary records and JSON lines).
//! * [`gzip`]: gzip request bodies (inflated within a limit) and gzip replies when accepted.
//! * [`h2scan`]: counts the control frames an HTTP/2 client sends (flood protection beside the
//!   HTTP/2 implementation).
//! * [`sse`]: the `text/event-stream` framing of delivered messages.
//! * [`json`]: the tiny JSON string escaper used by hand-written responses.
//! * [`openapi`]: the API's OpenAPI 3.1 document (`docs/openapi.json`, served at
//!   `/openapi.json`), checked against the route table.
//! * [`ws`]: a sans-I/O WebSocket (RFC 6455) codec: the upgrade handshake, a decoder of masked
//!   client frames into messages (with fragmentation, UTF-8 and size limits checked before the
//!   payload is buffered, and typed close codes), and the encoder of server frames.

pub mod batch;
pub mod command;
pub mod gzip;
pub mod h2scan;
pub mod http1;
pub mod json;
pub mod openapi;
pub mod query;
pub mod reply;
pub mod route;
pub mod sse;
pub mod ws;
