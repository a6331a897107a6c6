//! The metadata records. Each names the entity it sets ([`Record::entity`]): a later record
//! for the same entity replaces the earlier one, which is what lets the log be compacted (the
//! embedded store rewrites its file; Kafka compacts the topic by record key). Audit entries have
//! unique entity names, so compaction keeps each until it ages out. Records hold key hashes,
//! never secrets.

use crate::keys::Scope;
use serde::{Deserialize, Serialize};

/// The pseudo-app operator keys belong to. App names cannot start with `_`, so no app can take it.
pub const OPERATOR_APP: &str = "_operator";

/// Who made a change, when, and from where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// `operator:<keyid>`, `app:<appid>:<keyid>`, or `gateway` for what a gateway does itself.
    pub actor: String,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The client address of the request that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

/// A key as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub keyid: String,
    /// The app it belongs to ([`OPERATOR_APP`] for operator keys).
    pub app: String,
    pub scope: Scope,
    /// Topic storage names (`<appid>.<topic>.<ver>`) it is narrowed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
    /// `HMAC-SHA256(pepper, secret)`, hex.
    pub hash: String,
    /// [`crate::keys::Pepper::id`] of the pepper the hash was made with.
    pub pepper_id: String,
    pub created_ms: i64,
    /// When it stops working (a retiring key after a rotation, or an expiring key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
    #[serde(default)]
    pub revoked: bool,
    pub stamp: Stamp,
}

impl KeyRecord {
    /// Whether the key works at `now_ms`.
    pub fn live(&self, now_ms: i64) -> bool {
        !self.revoked && self.expires_ms.is_none_or(|e| e > now_ms)
    }
}

/// What an app may use; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_messages_per_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_bytes_per_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe_bytes_per_sec: Option<u64>,
    /// Concurrent long polls, event streams and WebSockets, on each gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_streams: Option<u32>,
}

/// A leased group's delivery policy: each field left out takes the gateway's `[queue]`
/// setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuePolicySpec {
    /// Deliveries before a message is dead (1..=1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The lease length when a subscribe names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility_ms: Option<u64>,
    /// The backoff after the first failed attempt; it doubles per failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_base_ms: Option<u64>,
    /// The backoff's cap, and the cap of a nack's delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_max_ms: Option<u64>,
}

/// The longest backoff or lease a group policy may name (the gateway's `queue.max_visibility`
/// caps a lease further).
pub const QUEUE_POLICY_MAX_MS: u64 = 30 * 86_400_000;

impl QueuePolicySpec {
    /// Why the policy cannot be, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if let Some(n) = self.max_attempts {
            if !(1..=1000).contains(&n) {
                return Err(format!("max_attempts {n} is not within 1..=1000"));
            }
        }
        for (name, v) in [
            ("visibility", self.visibility_ms),
            ("backoff_base", self.backoff_base_ms),
            ("backoff_max", self.backoff_max_ms),
        ] {
            match v {
                Some(0) if name == "visibility" => return Err("visibility must be above 0".into()),
                Some(ms) if ms > QUEUE_POLICY_MAX_MS => {
                    return Err(format!("{name} is at most 30 days"))
                }
                _ => {}
            }
        }
        if let (Some(b), Some(m)) = (self.backoff_base_ms, self.backoff_max_ms) {
            if b > m {
                return Err("backoff_base must be at most backoff_max".into());
            }
        }
        Ok(())
    }
}

/// A webhook push subscription: the gateway leases the messages of a group on a topic and
/// POSTs each one to `url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// `http://` or `https://`.
    pub url: String,
    /// Hex; the signing secret is derived from it and the cluster's pepper.
    pub secret_nonce: String,
    /// Requests in flight to the endpoint, per gateway.
    pub max_in_flight: u32,
    /// How long one request may take.
    pub timeout_ms: u64,
    /// Deliveries before a message goes to the group's dead-letter topic.
    pub max_attempts: u32,
    /// Retry backoff: doubling from `backoff_base_ms`, at most `backoff_max_ms`, with jitter.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// One message in flight per key, in order.
    #[serde(default)]
    pub ordered: bool,
    /// Why the endpoint is paused (`None`: it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// Where a new subscription starts: the topic's oldest message, or new ones only.
    #[serde(default)]
    pub from_oldest: bool,
    pub created_ms: i64,
}

impl WebhookSpec {
    /// Why the spec cannot be, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        let rest = self
            .url
            .strip_prefix("http://")
            .or_else(|| self.url.strip_prefix("https://"))
            .ok_or("url must start with http:// or https://")?;
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        if host.is_empty() || host.contains('@') {
            return Err("url needs a host (and no user info)".into());
        }
        if self.url.len() > 2048 {
            return Err(format!("url is {} bytes: at most 2048", self.url.len()));
        }
        if let Some(b) = self.url.bytes().find(|&b| b <= b' ' || b == 0x7f) {
            return Err(format!(
                "url holds a space or control character (byte 0x{b:02x}): percent-encode it"
            ));
        }
        if !(1..=1000).contains(&self.max_in_flight) {
            return Err("max_in_flight must be 1..=1000".into());
        }
        if !(100..=300_000).contains(&self.timeout_ms) {
            return Err("timeout must be 100ms..=5m".into());
        }
        if !(1..=1000).contains(&self.max_attempts) {
            return Err("max_attempts must be 1..=1000".into());
        }
        if self.backoff_base_ms > self.backoff_max_ms || self.backoff_max_ms > QUEUE_POLICY_MAX_MS {
            return Err("backoff_base must be at most backoff_max, at most 30 days".into());
        }
        if self.backoff_base_ms < 10 {
            return Err("backoff_base must be at least 10ms".into());
        }
        Ok(())
    }
}

/// One entry of the audit list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    /// `<ts_ms, 13 digits>-<random>`: unique, and sorts by time.
    pub id: String,
    pub stamp: Stamp,
    /// What was done: `create_app`, `create_key`, `revoke_key`, ...
    pub action: String,
    /// What it was done to: `app/<appid>`, `key/<appid>/<keyid>`, `grant/<topic>/<appid>`, ...
    pub target: String,
}

/// One metadata record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    App {
        app: String,
        #[serde(default)]
        deleted: bool,
        stamp: Stamp,
    },
    Key(KeyRecord),
    /// App `app` may subscribe to topic `topic` (a storage name).
    Grant {
        topic: String,
        app: String,
        #[serde(default)]
        deleted: bool,
        stamp: Stamp,
    },
    Quota {
        app: String,
        quota: Option<QuotaSpec>,
        stamp: Stamp,
    },
    /// The delivery policy of app `app`'s leased group `group` (`None`: the defaults).
    QueuePolicy {
        app: String,
        group: String,
        policy: Option<QueuePolicySpec>,
        stamp: Stamp,
    },
    /// The webhook of app `app`'s group `group` on topic `topic` (a storage name; `None`:
    /// removed).
    Webhook {
        app: String,
        group: String,
        topic: String,
        spec: Option<WebhookSpec>,
        stamp: Stamp,
    },
    Audit(Audit),
}

impl Record {
    /// The entity this record sets: the compaction key.
    pub fn entity(&self) -> String {
        match self {
            Record::App { app, .. } => format!("app/{app}"),
            Record::Key(k) => format!("key/{}", k.keyid),
            Record::Grant { topic, app, .. } => format!("grant/{topic}/{app}"),
            Record::Quota { app, .. } => format!("quota/{app}"),
            Record::QueuePolicy { app, group, .. } => format!("qpolicy/{app}/{group}"),
            Record::Webhook {
                app, group, topic, ..
            } => format!("webhook/{app}/{group}/{topic}"),
            Record::Audit(a) => format!("audit/{}", a.id),
        }
    }

    /// The record as stored (JSON).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A stored record.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

/// The 32 bytes of a hex hash, if it is one.
pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = nib(b[2 * i])? << 4 | nib(b[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_name_their_entity() {
        let stamp = Stamp {
            actor: "operator:abc".into(),
            ts_ms: 5,
            ip: None,
        };
        let r = Record::Grant {
            topic: "a.t.v1".into(),
            app: "b".into(),
            deleted: false,
            stamp,
        };
        assert_eq!(r.entity(), "grant/a.t.v1/b");
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        assert!(Record::decode(b"{\"kind\":\"nope\"}").is_err());
        let h = [0xabu8; 32];
        assert_eq!(unhex32(&hex(&h)), Some(h));
        assert_eq!(unhex32("zz"), None);
    }

    #[test]
    fn a_webhook_url_is_refused_with_its_reason() {
        let spec = |url: &str| WebhookSpec {
            url: url.into(),
            secret_nonce: String::new(),
            max_in_flight: 10,
            timeout_ms: 1000,
            max_attempts: 5,
            backoff_base_ms: 100,
            backoff_max_ms: 1000,
            ordered: false,
            paused: None,
            from_oldest: false,
            created_ms: 0,
        };
        assert_eq!(spec("https://example.com/hook?a=b").check(), Ok(()));
        for (url, why) in [
            ("ftp://example.com/", "must start with http"),
            ("http:///x", "needs a host"),
            ("http://u@example.com/", "needs a host"),
            ("http://example.com/a b", "byte 0x20"),
            ("http://example.com/\r\nX: y", "byte 0x0d"),
            ("http://example.com/\u{7f}", "byte 0x7f"),
        ] {
            let e = spec(url).check().unwrap_err();
            assert!(e.contains(why), "{url:?}: {e}");
        }
        let long = format!("http://example.com/{}", "a".repeat(2048));
        assert!(spec(&long).check().unwrap_err().contains("at most 2048"));
    }
}
