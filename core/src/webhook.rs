//! Webhook push, without I/O: the signing secret of a subscription, the signature of a request
//! (Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>` over
//! `<id>.<timestamp>.<body>`), the retry backoff, and which addresses an endpoint may have.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::net::IpAddr;

/// The signing secret of a subscription: HMAC-SHA256 of its nonce under `key` (derived from
/// the cluster's pepper), so every gateway of a cluster signs alike and none stores it.
pub fn secret(key: &[u8], nonce: &str) -> [u8; 32] {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&k, nonce.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// The secret as shown to the subscriber: `whsec_<base64>`.
pub fn secret_text(secret: &[u8; 32]) -> String {
    format!("whsec_{}", STANDARD.encode(secret))
}

/// The `webhook-signature` value: `v1,<base64 HMAC-SHA256 of "<id>.<ts>.<body>">`.
pub fn sign(secret: &[u8; 32], id: &str, ts: i64, body: &[u8]) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&k);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(ts.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("v1,{}", STANDARD.encode(ctx.sign().as_ref()))
}

/// The wait before attempt `attempt + 1` after `attempt` failed ones: `base · 2^(attempt-1)`,
/// at most `max`, scaled by `jitter` in `[0, 1)` to between half and all of it.
pub fn backoff_ms(attempt: u32, base: u64, max: u64, jitter: f64) -> u64 {
    let exp = base.saturating_mul(1u64 << attempt.saturating_sub(1).min(40));
    let full = exp.min(max);
    full / 2 + ((full / 2) as f64 * jitter.clamp(0.0, 1.0)) as u64
}

/// Whether `ip` is a public address: not loopback, private, link-local, shared (CGNAT),
/// unspecified, multicast, documentation or reserved, in IPv4 or IPv6 (IPv4-mapped included).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (18..20).contains(&o[1]))
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // IPv4-compatible (::a.b.c.d) and IPv4-translated (::ffff:0:a.b.c.d).
                || s[..6] == [0; 6]
                || s[..6] == [0, 0, 0, 0, 0xffff, 0]
                // Discard-only, Teredo and 6to4 (which embed IPv4 addresses), site-local.
                || s[..4] == [0x100, 0, 0, 0]
                || s[0] == 0x2001 && s[1] == 0
                || s[0] == 0x2002
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || s[0] == 0x2001 && s[1] == 0x0db8
                || s[0] == 0x0064 && s[1] == 0xff9b)
        }
    }
}

/// The IPv4 address a host written the way `inet_aton` reads it names (`127.1`, `2130706433`,
/// `0x7f.1`, `0177.0.0.1`: one to four numbers, each decimal, `0x` hex or `0` octal), which
/// the system's resolver takes for an address; `None` for a host that is a name.
pub fn inet_aton(host: &str) -> Option<std::net::Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(4);
    for p in &parts {
        let v = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
            u64::from_str_radix(h, 16).ok()?
        } else if p.len() > 1 && p.starts_with('0') {
            u64::from_str_radix(&p[1..], 8).ok()?
        } else {
            p.parse::<u64>().ok()?
        };
        nums.push(v);
    }
    let (last, head) = nums.split_last()?;
    if head.iter().any(|&n| n > 255) || *last >= 1u64 << (8 * (4 - head.len())) {
        return None;
    }
    let mut v = *last as u32;
    for (i, &n) in head.iter().enumerate() {
        v |= (n as u32) << (24 - 8 * i);
    }
    Some(std::net::Ipv4Addr::from(v))
}

/// The parts of an endpoint URL: TLS or not, host, port, and the request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, `/` when none.
    pub target: String,
}

impl Url {
    /// Parses `http(s)://host[:port][/path][?query]` (an IPv6 host in brackets).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err("url must start with http:// or https://".into());
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let tail = tail.split('#').next().unwrap_or("");
        let target = if tail.is_empty() {
            "/".to_owned()
        } else if tail.starts_with('?') {
            format!("/{tail}")
        } else {
            tail.to_owned()
        };
        if authority.contains('@') {
            return Err("url must not carry user info".into());
        }
        if !authority.is_ascii() {
            return Err(
                "the url's host must be ASCII (an international name in its xn-- form)".into(),
            );
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("unclosed [ in the url's host")?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("{h:?} is not an IPv6 address"));
            }
            let port = match after {
                "" => None,
                a => Some(
                    a.strip_prefix(':')
                        .ok_or("only :port may follow ] in the url")?,
                ),
            };
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (authority.to_owned(), None),
            }
        };
        let port = match port {
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some(p) => p.parse().map_err(|_| format!("invalid port {p:?}"))?,
        };
        if host.is_empty() || port == 0 {
            return Err("url needs a host and a port above 0".into());
        }
        Ok(Self {
            tls,
            host: host.to_ascii_lowercase(),
            port,
            target,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_standard_webhooks() {
        // The example of the Standard Webhooks specification's reference libraries.
        let secret = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let mut s = [0u8; 32];
        // The spec's secret is 24 bytes: sign with the HMAC directly for the check.
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
        let want = ring::hmac::sign(
            &k,
            b"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{\"test\": 2432232314}",
        );
        assert_eq!(
            STANDARD.encode(want.as_ref()),
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        s[..24].copy_from_slice(&secret);
        let sig = sign(&s, "m", 5, b"body");
        assert!(sig.starts_with("v1,"));
        assert_ne!(sig, sign(&s, "m", 6, b"body"));
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_cap() {
        assert_eq!(backoff_ms(1, 1000, 60_000, 1.0), 1000);
        assert_eq!(backoff_ms(1, 1000, 60_000, 0.0), 500);
        assert_eq!(backoff_ms(3, 1000, 60_000, 1.0), 4000);
        assert_eq!(backoff_ms(30, 1000, 60_000, 1.0), 60_000);
        assert_eq!(backoff_ms(1000, 1000, 60_000, 0.5), 45_000);
    }

    #[test]
    fn only_public_addresses_are_public() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::",
            "::127.0.0.1",
            "::ffff:0:127.0.0.1",
            "2002:7f00:1::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fec0::1",
            "100::1",
        ] {
            assert!(!is_public(a.parse().unwrap()), "{a}");
        }
        for a in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn inet_aton_forms_are_addresses() {
        let v4 = |s: &str| inet_aton(s).map(|a| a.to_string());
        for (host, want) in [
            ("127.1", "127.0.0.1"),
            ("2130706433", "127.0.0.1"),
            ("0x7f000001", "127.0.0.1"),
            ("0x7f.1", "127.0.0.1"),
            ("0177.0.0.1", "127.0.0.1"),
            ("0", "0.0.0.0"),
            ("10.1.2", "10.1.0.2"),
            ("8.8.8.8", "8.8.8.8"),
        ] {
            assert_eq!(v4(host).as_deref(), Some(want), "{host}");
        }
        for name in [
            "example.com",
            "cafe.de",
            "1.2.3.4.5",
            "256.1.1.1",
            "1.2.3.256",
            "",
            "0x",
        ] {
            assert_eq!(v4(name), None, "{name}");
        }
    }

    #[test]
    fn urls() {
        let u = Url::parse("https://Example.com/hook?x=1").unwrap();
        assert_eq!(
            u,
            Url {
                tls: true,
                host: "example.com".into(),
                port: 443,
                target: "/hook?x=1".into()
            }
        );
        let u = Url::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((u.port, u.target.as_str()), (8080, "/"));
        let u = Url::parse("http://[::1]:9/a#frag").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("::1", 9, "/a")
        );
        assert!(Url::parse("ftp://x").is_err());
        assert!(Url::parse("http://u:p@x/").is_err());
        assert!(Url::parse("http://x:99999/").is_err());
        assert!(Url::parse("http:///a").is_err());
        assert!(Url::parse("http://[::1]garbage/x").is_err());
        assert!(Url::parse("http://[not-v6]/x").is_err());
        assert!(Url::parse("http://exämple.com/").is_err());
        assert!(Url::parse("http://[::1]/x").is_ok());
    }
}
