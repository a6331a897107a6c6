//! The API edge: routes a decoded request to its handler and writes the response. Handlers
//! return `Result<(), Error>` and write their success response themselves; every failure
//! becomes a response in one place, [`write_error`].

mod admin;
mod publish;
mod subscribe;

pub use admin::{apply_admin, local_snapshot};

use crate::date::with_date;
use crate::metrics;
use crate::shard::{Held, Shard};
use bytes::BytesMut;
use kateway_core::{Error, ErrorKind};
use kateway_proto::http1::{encode::Response, HttpError, Method, Request};
use kateway_proto::json;
use kateway_proto::route::{route, Route, RouteError};
use std::rc::Rc;
use std::time::Instant;

/// What a handler needs besides the request: where to write, and whether the connection closes.
pub struct Out<'a> {
    pub buf: &'a mut BytesMut,
    pub close: bool,
    pub head: bool,
    /// Response bytes held against the core's budget until the answer is written.
    pub held: Vec<Held>,
}

/// What became of a request: whether to close the connection afterwards, and the budget its
/// answer holds until it is written.
pub struct Handled {
    pub close: bool,
    pub held: Vec<Held>,
}

impl<'a> Out<'a> {
    /// An answer written into `buf`.
    pub fn new(buf: &'a mut BytesMut, close: bool, head: bool) -> Self {
        Self {
            buf,
            close,
            head,
            held: Vec::new(),
        }
    }

    /// Starts a success response.
    pub fn response(&mut self, status: u16) -> Response<'_> {
        let close = self.close;
        with_date(|d| Response::new(self.buf, status, d)).close_if(close)
    }

    /// Writes a complete JSON response.
    pub fn json(&mut self, status: u16, body: &[u8]) {
        self.response(status).body("application/json", body);
    }
}

/// Handles one request, writing its response into `buf`.
pub async fn handle(shard: &Rc<Shard>, req: Request, buf: &mut BytesMut) -> Handled {
    let t0 = Instant::now();
    let close = !req.keep_alive || shard.shutdown.get();
    let mut out = Out::new(buf, close, req.method == Method::Head);
    let start = out.buf.len();
    let result = match route(req.method, req.path()) {
        Ok(r) => dispatch(shard, &req, r, &mut out).await,
        Err(RouteError::NotFound) => Err(Error::new(
            ErrorKind::UnknownRoute,
            format!("no route for {}", req.path()),
        )),
        Err(RouteError::MethodNotAllowed(allow)) => {
            write_error(
                &mut out,
                &Error::new(ErrorKind::MethodNotAllowed, "method not allowed"),
                Some(allow),
            );
            Ok(())
        }
    };
    if let Err(e) = result {
        out.buf.truncate(start);
        write_error(&mut out, &e, None);
    }
    if out.head {
        // HEAD: the same head as GET, no body.
        if let Some(end) = out.buf[start..].windows(4).position(|w| w == b"\r\n\r\n") {
            out.buf.truncate(start + end + 4);
        }
    }
    let m = &shard.metrics;
    metrics::inc(&m.http_requests_total);
    match out.buf.get(start + 9) {
        Some(b'2') => metrics::inc(&m.http_responses_2xx_total),
        Some(b'4') => metrics::inc(&m.http_responses_4xx_total),
        Some(b'5') => metrics::inc(&m.http_responses_5xx_total),
        _ => {}
    }
    m.request_seconds.observe(t0.elapsed());
    Handled {
        close: out.close,
        held: out.held,
    }
}

async fn dispatch(
    shard: &Rc<Shard>,
    req: &Request,
    r: Route<'_>,
    out: &mut Out<'_>,
) -> Result<(), Error> {
    match r {
        Route::Alive => {
            out.json(200, b"{\"ok\":1}");
            Ok(())
        }
        Route::Ready => admin::ready(shard, out).await,
        Route::Seek {
            appid,
            topic,
            ver,
            group,
            partition,
        } => subscribe::seek(shard, req, appid, topic, ver, group, partition, out).await,
        Route::Metrics => admin::metrics(shard, out).await,
        Route::ProcessStatus => admin::process_status(shard, out).await,
        Route::Publish { topic, ver } => publish::publish(shard, req, topic, ver, out).await,
        Route::Subscribe { appid, topic, ver } => {
            subscribe::subscribe(shard, req, appid, topic, ver, out).await
        }
        Route::AckBatch {
            appid,
            topic,
            ver,
            group,
        } => subscribe::ack_batch(shard, req, appid, topic, ver, group, out).await,
        Route::Topic {
            method,
            appid,
            topic,
            ver,
        } => admin::topic(shard, req, method, appid, topic, ver, out).await,
        Route::Partitions { appid, topic, ver } => {
            admin::partitions(shard, appid, topic, ver, out).await
        }
        Route::TopicStatus { appid, topic, ver } => {
            admin::topic_status(shard, req, appid, topic, ver, out).await
        }
    }
}

/// The one place where an error becomes a response: status from the code, JSON body
/// `{"errmsg","code"}`, `Retry-After` for capacity failures, `Allow` for 405. Client errors on
/// a request whose body may be unread close the connection.
pub fn write_error(out: &mut Out<'_>, e: &Error, allow: Option<&str>) {
    let body = json::error_body(e.message(), e.kind().code());
    let close = out.close
        || matches!(
            e.kind(),
            ErrorKind::MalformedHttp
                | ErrorKind::HeadersTooLarge
                | ErrorKind::RequestTimeout
                | ErrorKind::NotImplemented
                | ErrorKind::TooManyConnections
        );
    out.close = close;
    let mut r = with_date(|d| Response::new(out.buf, e.status(), d));
    if let Some(s) = e.retry_after() {
        r = r.header_int("retry-after", s.into());
    }
    if let Some(a) = allow {
        r = r.header("allow", a.as_bytes());
    }
    r.close_if(close).body("application/json", &body);
}

/// Maps a decoding failure to the error taxonomy.
pub fn http_error(e: &HttpError) -> Error {
    match e {
        HttpError::Malformed(m) => {
            Error::new(ErrorKind::MalformedHttp, format!("malformed request: {m}"))
        }
        HttpError::HeadersTooLarge => {
            Error::new(ErrorKind::HeadersTooLarge, "request headers too large")
        }
        HttpError::TooManyHeaders(n) => Error::new(
            ErrorKind::HeadersTooLarge,
            format!("too many header fields: at most {n}"),
        ),
        HttpError::BodyTooLarge => Error::new(ErrorKind::PayloadTooLarge, "request body too large"),
        HttpError::UnsupportedTransferEncoding => Error::new(
            ErrorKind::NotImplemented,
            "only chunked transfer coding is supported",
        ),
    }
}

/// The caller's app from the `Appid` header.
pub fn caller(req: &Request) -> Result<&str, Error> {
    let a = req
        .header_str("appid")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::new(ErrorKind::MissingHeader, "missing Appid header"))?;
    kateway_core::names::validate_part("appid", a)?;
    Ok(a)
}
