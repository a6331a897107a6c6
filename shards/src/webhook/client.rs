//! The outgoing HTTP/1.1 client of webhook push, one per core: keep-alive connections pooled
//! per endpoint (scheme, host, port), plain TCP or TLS (rustls with the system's root
//! certificates), a POST under a deadline, and the response's status and first bytes (the rest
//! of its body read and dropped). Addresses are resolved for each new connection and must be
//! public unless `webhook.allow_private_addresses` allows others.

use bytes::Bytes;
use kateway_core::webhook::{is_public, Url};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Idle connections kept per endpoint.
const POOL: usize = 64;
/// Response bytes kept for the delivery log.
const KEEP: usize = 256;
/// The most of a response's head, and of its body, the client reads: a longer body is left
/// unread and its connection closed instead of reused, so that what a request in flight holds
/// stays small whatever an endpoint answers.
const MAX_RESPONSE: usize = 16 << 10;

enum Stream {
    Plain(TcpStream),
    Tls(Box<monoio_rustls::ClientTlsStream<TcpStream>>),
}

impl Stream {
    async fn write_all(&mut self, buf: Vec<u8>) -> std::io::Result<()> {
        let (r, _) = match self {
            Stream::Plain(s) => s.write_all(buf).await,
            Stream::Tls(s) => s.write_all(buf).await,
        };
        r.map(|_| ())
    }

    async fn read(&mut self, buf: Vec<u8>) -> (std::io::Result<usize>, Vec<u8>) {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }
}

struct Conn {
    s: Stream,
}

/// What an endpoint answered.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The first bytes of the body.
    pub body: Bytes,
    /// `Retry-After` in seconds, if given.
    pub retry_after: Option<u64>,
    /// `webhook-delivery: abort-message`: drop it, do not retry.
    pub abort: bool,
}

type Key = (bool, String, u16);

/// A core's client.
pub struct Client {
    pools: RefCell<HashMap<Key, Vec<Conn>>>,
    tls: RefCell<Option<monoio_rustls::TlsConnector>>,
    allow_private: bool,
}

impl Client {
    pub fn new(allow_private: bool) -> Rc<Self> {
        Rc::new(Self {
            pools: RefCell::default(),
            tls: RefCell::new(None),
            allow_private,
        })
    }

    fn connector(&self) -> Result<monoio_rustls::TlsConnector, String> {
        if let Some(c) = self.tls.borrow().as_ref() {
            return Ok(c.clone());
        }
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err("no system root certificates to check https endpoints with".into());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cc = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cc.alpn_protocols = vec![b"http/1.1".to_vec()];
        let c = monoio_rustls::TlsConnector::from(Arc::new(cc));
        *self.tls.borrow_mut() = Some(c.clone());
        Ok(c)
    }

    /// POSTs `body` with `headers` to `url`, within `timeout` (connecting included).
    pub async fn post(
        &self,
        url: &Url,
        headers: &[(&str, String)],
        body: &Bytes,
        timeout: Duration,
    ) -> Result<Response, String> {
        let deadline = Instant::now() + timeout;
        let mut req = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: kateway\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n",
            url.target,
            host_header(url),
            body.len()
        );
        for (k, v) in headers {
            // A value with control characters (a key or tags produced straight to Kafka, say)
            // could end the head early or inject headers: it is left out.
            if v.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                continue;
            }
            req.push_str(k);
            req.push_str(": ");
            req.push_str(v);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        let key: Key = (url.tls, url.host.clone(), url.port);
        // A pooled connection the endpoint closed meanwhile fails before any answer: then one
        // fresh connection is tried.
        let pooled = self.pools.borrow_mut().get_mut(&key).and_then(Vec::pop);
        if let Some(conn) = pooled {
            match self.exchange(conn, &key, bytes.clone(), deadline).await {
                Ok(r) => return Ok(r),
                Err((true, _)) => {}
                Err((false, e)) => return Err(e),
            }
        }
        let conn = self.connect(url, deadline).await?;
        self.exchange(conn, &key, bytes, deadline)
            .await
            .map_err(|(_, e)| e)
    }

    async fn connect(&self, url: &Url, deadline: Instant) -> Result<Conn, String> {
        let addrs: Vec<SocketAddr> = resolve(&url.host, url.port, deadline)
            .await?
            .into_iter()
            .filter(|a| self.allow_private || is_public(a.ip()))
            .collect();
        if addrs.is_empty() {
            return Err(format!(
                "{} resolves to no public address (webhook.allow_private_addresses is off)",
                url.host
            ));
        }
        // Each address in turn, until one connects.
        let mut tcp = Err(String::new());
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            tcp = match monoio::time::timeout(left, TcpStream::connect_addr(addr)).await {
                Ok(Ok(s)) => Ok(s),
                Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
                Err(_) => Err(format!("connect {addr}: timed out")),
            };
            if tcp.is_ok() {
                break;
            }
        }
        let tcp = tcp?;
        let _ = tcp.set_nodelay(true);
        if !url.tls {
            return Ok(Conn {
                s: Stream::Plain(tcp),
            });
        }
        let name = rustls_pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| format!("tls name {}: {e}", url.host))?;
        let connector = self.connector()?;
        let left = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(left, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => Ok(Conn {
                s: Stream::Tls(Box::new(s)),
            }),
            Ok(Err(e)) => Err(format!("tls handshake with {}: {e}", url.host)),
            Err(_) => Err(format!("tls handshake with {}: timed out", url.host)),
        }
    }

    /// Sends a request on `conn` and reads the answer; the connection goes back to the pool
    /// if it may be used again. An error says whether nothing was answered at all (the
    /// request may be tried on a fresh connection).
    async fn exchange(
        &self,
        mut conn: Conn,
        key: &Key,
        req: Vec<u8>,
        deadline: Instant,
    ) -> Result<Response, (bool, String)> {
        let left = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(left, conn.s.write_all(req)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err((true, format!("write: {e}"))),
            Err(_) => return Err((false, "timed out writing the request".into())),
        }
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        // Interim answers (100 Continue, 103 Early Hints: RFC 9110 §15.2) come before the final
        // one and are skipped, a few at most.
        let mut interim = 0;
        let (head_end, status) = loop {
            let head_end = loop {
                if let Some(i) = find(&buf, b"\r\n\r\n") {
                    break i + 4;
                }
                if buf.len() > MAX_RESPONSE {
                    return Err((false, "response head over 16 KiB".into()));
                }
                match read_more(&mut conn, &mut buf, deadline).await {
                    Ok(0) => {
                        return Err((buf.is_empty(), "connection closed before an answer".into()))
                    }
                    Ok(_) => {}
                    Err(e) => return Err((buf.is_empty() && e != TIMEOUT, e)),
                }
            };
            let head = std::str::from_utf8(&buf[..head_end])
                .map_err(|_| (false, "response head is not text".to_owned()))?;
            let mut lines = head.split("\r\n");
            let status: u16 = lines
                .next()
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|c| c.parse().ok())
                .ok_or((false, "no status line in the answer".to_owned()))?;
            if (100..200).contains(&status) && status != 101 && interim < 8 {
                interim += 1;
                buf.drain(..head_end);
                continue;
            }
            break (head_end, status);
        };
        let head = std::str::from_utf8(&buf[..head_end])
            .map_err(|_| (false, "response head is not text".to_owned()))?;
        let lines = head.split("\r\n").skip(1);
        let (mut len, mut chunked, mut close, mut retry_after, mut abort) =
            (None::<usize>, false, false, None, false);
        for l in lines {
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "content-length" => len = v.parse().ok(),
                "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                "connection" => close = v.eq_ignore_ascii_case("close"),
                "retry-after" => retry_after = v.parse().ok(),
                "webhook-delivery" => abort = v.eq_ignore_ascii_case("abort-message"),
                _ => {}
            }
        }
        let mut body = buf.split_off(head_end);
        // Read the rest of the body, to reuse the connection (or to its close).
        let complete = loop {
            let done = if chunked {
                chunked_end(&body).is_some()
            } else {
                len.is_some_and(|n| body.len() >= n)
            };
            // No body: a 1xx past the limit, 204 and 304 (RFC 9112 §6.3).
            if done
                || (len.is_none() && !chunked && (status < 200 || status == 204 || status == 304))
            {
                break true;
            }
            if body.len() > MAX_RESPONSE {
                break false;
            }
            match read_more(&mut conn, &mut body, deadline).await {
                Ok(0) => break len.is_none() && !chunked,
                Ok(_) => {}
                Err(_) => break false,
            }
        };
        let reusable = complete && !close && (len.is_some() || chunked);
        if reusable {
            let mut pools = self.pools.borrow_mut();
            let pool = pools.entry(key.clone()).or_default();
            if pool.len() < POOL {
                pool.push(conn);
            }
        }
        body.truncate(KEEP);
        Ok(Response {
            status,
            body: Bytes::from(body),
            retry_after,
            abort,
        })
    }
}

const TIMEOUT: &str = "timed out waiting for the answer";

async fn read_more(conn: &mut Conn, buf: &mut Vec<u8>, deadline: Instant) -> Result<usize, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    let chunk = vec![0u8; 16 * 1024];
    match monoio::time::timeout(left, conn.s.read(chunk)).await {
        Ok((Ok(n), chunk)) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(n)
        }
        Ok((Err(e), _)) => Err(format!("read: {e}")),
        Err(_) => Err(TIMEOUT.into()),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Where a complete chunked body ends, if it is complete.
fn chunked_end(b: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = find(&b[at..], b"\r\n")? + at;
        let size_text = std::str::from_utf8(&b[at..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailers, then an empty line.
            let end = find(&b[at..], b"\r\n")?;
            if end == 0 {
                return Some(at + 2);
            }
            let rest = find(&b[at..], b"\r\n\r\n")?;
            return Some(at + rest + 4);
        }
        at = at.checked_add(size)?.checked_add(2)?;
        if at > b.len() {
            return None;
        }
    }
}

fn host_header(url: &Url) -> String {
    let default = if url.tls { 443 } else { 80 };
    let host = if url.host.contains(':') {
        format!("[{}]", url.host)
    } else {
        url.host.clone()
    };
    if url.port == default {
        host
    } else {
        format!("{host}:{}", url.port)
    }
}

/// The addresses of `host`: a literal one at once, a name through the system's resolver on a
/// thread of its own (it blocks).
async fn resolve(host: &str, port: u16, deadline: Instant) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = flume::bounded(1);
    let name = format!("{host}:{port}");
    std::thread::Builder::new()
        .name("kateway-resolve".into())
        .spawn(move || {
            use std::net::ToSocketAddrs;
            let r = name
                .to_socket_addrs()
                .map(Iterator::collect::<Vec<_>>)
                .map_err(|e| format!("resolve {name}: {e}"));
            let _ = tx.send(r);
        })
        .map_err(|e| format!("resolve {host}: {e}"))?;
    let left = deadline.saturating_duration_since(Instant::now());
    match monoio::time::timeout(left, rx.recv_async()).await {
        Ok(Ok(r)) => r,
        _ => Err(format!("resolve {host}: timed out")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_end_where_they_end() {
        assert_eq!(chunked_end(b"5\r\nhello\r\n0\r\n\r\n"), Some(15));
        assert_eq!(chunked_end(b"5\r\nhello\r\n0\r\n"), None);
        assert_eq!(chunked_end(b"5\r\nhel"), None);
        assert_eq!(chunked_end(b"0\r\nX-T: 1\r\n\r\n"), Some(13));
        assert_eq!(chunked_end(b"zz\r\n"), None);
    }
}
