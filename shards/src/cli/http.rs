//! The admin CLI's HTTP/1.1 client: one blocking request per connection over a plain TCP
//! socket (`Connection: close`), bodies by `Content-Length`, chunked, or to the close. Enough
//! for the gateway's JSON answers and long polls; nothing here runs inside the gateway.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Where the gateway is and who is asking.
pub struct Client {
    /// `host:port`.
    pub addr: String,
    /// Sent as `Authorization: Bearer <key>`.
    pub key: Option<String>,
    /// Sent as `Appid` (a gateway with authentication off believes it).
    pub appid: Option<String>,
}

/// An answer: status, headers (names in lower case) and body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON (`null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A success, or the gateway's error message with its status.
    pub fn ok(self) -> Result<Self, String> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let j = self.json();
        let msg = match (j["code"].as_u64(), j["errmsg"].as_str()) {
            (Some(code), Some(m)) => format!("{m} ({code})"),
            _ => String::from_utf8_lossy(&self.body).trim().to_owned(),
        };
        Err(format!("{}: {msg}", self.status))
    }
}

impl Client {
    /// Sends one request and reads its answer (waiting up to `wait` longer than usual, for a
    /// long poll).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        wait: Duration,
    ) -> Result<Answer, String> {
        let s = TcpStream::connect(&self.addr)
            .map_err(|e| format!("cannot reach the gateway at {}: {e}", self.addr))?;
        s.set_read_timeout(Some(wait + Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        if let Some(k) = &self.key {
            head.push_str(&format!("Authorization: Bearer {k}\r\n"));
        }
        if let Some(a) = &self.appid {
            head.push_str(&format!("Appid: {a}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let lost = |e: std::io::Error| format!("{}: {e}", self.addr);
        (&s).write_all(head.as_bytes()).map_err(lost)?;
        (&s).write_all(body).map_err(lost)?;
        read_answer(&mut BufReader::new(s)).map_err(lost)
    }
}

fn read_answer(r: &mut impl BufRead) -> std::io::Result<Answer> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no HTTP status line"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("the answer ended in its head"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = line.trim_end().split(';').next().unwrap_or("");
            let n = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
            if n == 0 {
                break;
            }
            let at = body.len();
            body.resize(at + n, 0);
            r.read_exact(&mut body[at..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else if status != 204 && status != 304 {
        r.read_to_end(&mut body)?;
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sized_chunked_and_empty_answers() {
        let a = read_answer(&mut &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"[..]).unwrap();
        assert_eq!((a.status, &a.body[..]), (200, &b"hi"[..]));
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let a = read_answer(&mut &raw[..]).unwrap();
        assert_eq!(&a.body[..], b"abcde");
        let a = read_answer(&mut &b"HTTP/1.1 204 No Content\r\n\r\n"[..]).unwrap();
        assert!(a.body.is_empty());
        assert!(read_answer(&mut &b"HTTP/1.1 200 OK\r\nContent-Le"[..]).is_err());
        let e = Answer {
            status: 404,
            headers: vec![],
            body: br#"{"code":40400,"errmsg":"no such topic"}"#.to_vec(),
        };
        assert_eq!(e.ok().err().unwrap(), "404: no such topic (40400)");
    }
}
