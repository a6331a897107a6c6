//! HTTP/1.1: request decoding ([`decode`]), chunked bodies ([`chunked`]) and response encoding
//! ([`encode`]). Pure functions over byte buffers; the connection loop in the shards does the I/O.

pub mod chunked;
pub mod decode;
pub mod encode;

pub use decode::{Decoder, Event, HttpError, Limits, Method, Request};
pub use encode::Response;
