//! The tests' own blocking HTTP/1.1 client over `std::net::TcpStream`: independent of the
//! server's codec, and able to send malformed bytes on purpose; with helpers to read replies,
//! binary batch records and Prometheus scrapes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not json ({e}): {}", self.text()))
    }
    /// Asserts a JSON error body with the given status.
    pub fn assert_error(&self, status: u16) {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        let j = self.json();
        assert!(j["errmsg"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
        assert_eq!(j["code"].as_u64().unwrap() / 100, status as u64, "{j}");
    }
}

pub struct Conn {
    pub s: TcpStream,
    pub(super) buf: Vec<u8>,
}

impl Conn {
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<()> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.s.write_all(&bytes)
    }

    pub fn send_raw(&mut self, raw: &[u8]) -> std::io::Result<()> {
        self.s.write_all(raw)
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut tmp = [0u8; 65536];
        let n = self.s.read(&mut tmp)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    fn line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(l);
            }
            self.fill()?;
        }
    }

    fn exact(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    pub fn read_response(&mut self) -> std::io::Result<Resp> {
        self.read_reply(false)
    }

    /// Reads a response; the answer to a HEAD request (`head`) has no body, whatever its
    /// headers say.
    pub fn read_reply(&mut self, head: bool) -> std::io::Result<Resp> {
        let status_line = self.line()?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let l = self.line()?;
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if status == 100 || head {
            return Ok(Resp {
                status,
                headers,
                body,
            });
        }
        if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let size =
                    usize::from_str_radix(self.line()?.split(';').next().unwrap().trim(), 16)
                        .unwrap();
                if size == 0 {
                    self.line()?;
                    break;
                }
                body.extend(self.exact(size)?);
                self.exact(2)?;
            }
        } else if let Some(n) = get("content-length") {
            body = self.exact(n.parse().unwrap())?;
        }
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    pub fn req(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.send(method, path, headers, body).unwrap();
        self.read_reply(method == "HEAD").unwrap()
    }

    /// A request on a kept-alive connection, `None` when the server closed the connection
    /// before answering a byte: a request it then never read, which a client may send again
    /// on a new connection (as HTTP clients do for idempotent requests, and for requests with
    /// an `Idempotency-Key`).
    pub fn try_req(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Option<Resp>> {
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
        let untouched =
            |e: &std::io::Error| matches!(e.kind(), BrokenPipe | ConnectionReset | UnexpectedEof);
        if let Err(e) = self.send(method, path, headers, body) {
            return if untouched(&e) { Ok(None) } else { Err(e) };
        }
        if self.buf.is_empty() {
            if let Err(e) = self.fill() {
                return if untouched(&e) { Ok(None) } else { Err(e) };
            }
        }
        self.read_reply(method == "HEAD").map(Some)
    }

    /// Whether the server closed the connection (reads EOF).
    pub fn is_closed(&mut self) -> bool {
        self.s
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0))
            || matches!(self.s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }
}

/// Decodes the original's binary batch records.
pub fn records(body: &[u8]) -> Vec<(u32, u64, Vec<u8>)> {
    kateway_proto::batch::decode_records(body).expect("valid records")
}

/// The value of metric `name` in a Prometheus text scrape.
pub fn metric_value(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in\n{scrape}"))
}
