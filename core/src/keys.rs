//! API keys: their format, how one is made and shown once, how it is stored (a keyed hash,
//! never the secret) and how a presented key is checked. No I/O: the caller supplies the pepper
//! (a server secret kept beside the metadata) and the key records.
//!
//! A key reads `kw<scope>_<keyid>_<secret><check>`:
//! * `scope`: one letter, `p` publish, `s` subscribe, `a` app-admin, `o` operator, `l` a legacy
//!   secret imported from the original kateway (publish and subscribe);
//! * `keyid`: 12 base32 characters (60 random bits), public: it names the key in logs, audit
//!   entries and the operator API;
//! * `secret`: 32 base32 characters (160 random bits);
//! * `check`: 7 base32 characters of a CRC-32C over everything before it, so that a mistyped or
//!   truncated key is refused before any lookup, and secret scanners can recognise a key.
//!
//! What is stored is `HMAC-SHA256(pepper, secret)`; a presented key is found by its key id and
//! its secret compared through the HMAC in constant time.

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;

/// The base32 alphabet of keys (RFC 4648, lowercase).
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
const KEYID_LEN: usize = 12;
const SECRET_LEN: usize = 32;
const CHECK_LEN: usize = 7;

/// What a key may do: one scope per key, named by its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Publish,
    Subscribe,
    AppAdmin,
    Operator,
    /// The original kateway's app secret: publish and subscribe.
    Legacy,
}

impl Scope {
    fn letter(self) -> u8 {
        match self {
            Scope::Publish => b'p',
            Scope::Subscribe => b's',
            Scope::AppAdmin => b'a',
            Scope::Operator => b'o',
            Scope::Legacy => b'l',
        }
    }

    fn of_letter(l: u8) -> Option<Self> {
        Some(match l {
            b'p' => Scope::Publish,
            b's' => Scope::Subscribe,
            b'a' => Scope::AppAdmin,
            b'o' => Scope::Operator,
            b'l' => Scope::Legacy,
            _ => return None,
        })
    }

    /// The scope called `name` in the API (`publish`, `subscribe`, `app_admin`, `operator`).
    pub fn of_name(name: &str) -> Option<Self> {
        Some(match name {
            "publish" | "pub" => Scope::Publish,
            "subscribe" | "sub" => Scope::Subscribe,
            "app_admin" | "admin" => Scope::AppAdmin,
            "operator" => Scope::Operator,
            _ => return None,
        })
    }

    /// The scope's name in the API.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::Subscribe => "subscribe",
            Scope::AppAdmin => "app_admin",
            Scope::Operator => "operator",
            Scope::Legacy => "legacy",
        }
    }

    /// Whether a key of this scope allows `wanted`.
    pub fn allows(self, wanted: Scope) -> bool {
        self == wanted
            || (self == Scope::Legacy && matches!(wanted, Scope::Publish | Scope::Subscribe))
    }
}

/// Why a presented key was refused before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// Not of the form `kw<scope>_<keyid>_<secret><check>`.
    Malformed,
    /// The check characters do not match: a typo or a truncated key.
    BadCheck,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyError::Malformed => "not a kateway key",
            KeyError::BadCheck => "the key's check characters do not match (mistyped or cut?)",
        })
    }
}

impl std::error::Error for KeyError {}

/// A key as presented, parsed and its check verified; the secret is not yet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Presented<'a> {
    pub scope: Scope,
    pub keyid: &'a str,
    secret: &'a str,
}

impl fmt::Debug for Presented<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("Presented")
            .field("scope", &self.scope)
            .field("keyid", &self.keyid)
            .finish_non_exhaustive()
    }
}

/// The check characters of `body` (a key without them).
fn check(body: &[u8]) -> [u8; CHECK_LEN] {
    let mut c = crc32c::crc32c(body);
    let mut out = [0u8; CHECK_LEN];
    for o in out.iter_mut().rev() {
        *o = ALPHABET[(c & 31) as usize];
        c >>= 5;
    }
    out
}

fn is_base32(s: &str) -> bool {
    // A range check, not a search of the alphabet: this runs on every request.
    s.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7'))
}

/// Parses a presented key and verifies its check characters.
pub fn parse(key: &str) -> Result<Presented<'_>, KeyError> {
    let b = key.as_bytes();
    let len = 3 + 1 + KEYID_LEN + 1 + SECRET_LEN + CHECK_LEN;
    if b.len() != len || !key.is_ascii() || &b[..2] != b"kw" {
        return Err(KeyError::Malformed);
    }
    let scope = Scope::of_letter(b[2]).ok_or(KeyError::Malformed)?;
    let (keyid, rest) = (&key[4..4 + KEYID_LEN], &key[4 + KEYID_LEN..]);
    if b[3] != b'_' || !rest.starts_with('_') {
        return Err(KeyError::Malformed);
    }
    let secret = &rest[1..1 + SECRET_LEN];
    let tail = &rest[1 + SECRET_LEN..];
    if !is_base32(keyid) || !is_base32(secret) || !is_base32(tail) {
        return Err(KeyError::Malformed);
    }
    if check(&b[..len - CHECK_LEN]) != tail.as_bytes() {
        return Err(KeyError::BadCheck);
    }
    Ok(Presented {
        scope,
        keyid,
        secret,
    })
}

/// The key of an `Authorization: Bearer <key>` header value.
pub fn bearer(header: &[u8]) -> Option<&str> {
    let v = std::str::from_utf8(header).ok()?.trim();
    let (scheme, key) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim())
        .filter(|k| !k.is_empty())
}

/// A server secret the stored hashes are keyed with.
pub struct Pepper(hmac::Key);

impl Pepper {
    /// A pepper of these bytes (at least 32).
    pub fn new(bytes: &[u8]) -> Option<Self> {
        (bytes.len() >= 32).then(|| Self(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    /// 32 fresh random bytes for a new pepper.
    pub fn generate() -> Result<[u8; 32], ring::error::Unspecified> {
        let mut b = [0u8; 32];
        SystemRandom::new().fill(&mut b)?;
        Ok(b)
    }

    /// What is stored for a secret.
    pub fn hash(&self, secret: &str) -> [u8; 32] {
        let tag = hmac::sign(&self.0, secret.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Whether a presented key's secret is the one `stored` was made from (constant time).
    pub fn verify(&self, key: &Presented<'_>, stored: &[u8; 32]) -> bool {
        self.verify_secret(key.secret, stored)
    }

    /// Whether `secret` is the one `stored` was made from (constant time).
    pub fn verify_secret(&self, secret: &str, stored: &[u8; 32]) -> bool {
        hmac::verify(&self.0, secret.as_bytes(), stored).is_ok()
    }

    /// 32 secret bytes for another purpose (such as tagging receipts), derived from the pepper
    /// and `label`: every gateway with the same pepper derives the same ones.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let tag = hmac::sign(&self.0, format!("kateway derive {label}").as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// A public fingerprint of the pepper, stored beside each hash, so a gateway that was given
    /// another pepper can say so instead of refusing every key without a reason.
    pub fn id(&self) -> String {
        let tag = hmac::sign(&self.0, b"kateway pepper id");
        tag.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl<'a> Presented<'a> {
    /// The secret part, for a per-core cache of verified keys; never logged or stored.
    pub fn secret(&self) -> &'a str {
        self.secret
    }
}

/// A fresh random key id.
pub fn random_keyid() -> Result<String, ring::error::Unspecified> {
    let mut raw = [0u8; KEYID_LEN];
    SystemRandom::new().fill(&mut raw)?;
    Ok(raw
        .iter()
        .map(|b| ALPHABET[(b & 31) as usize] as char)
        .collect())
}

/// A legacy secret (the original kateway's app secret, any text) as a key: a fresh key id and
/// the hash to store. The text a client sends stays the secret itself.
pub fn legacy(secret: &str, pepper: &Pepper) -> Result<NewKey, ring::error::Unspecified> {
    Ok(NewKey {
        text: secret.to_owned(),
        keyid: random_keyid()?,
        hash: pepper.hash(secret),
    })
}

/// A new key: the text to show once, its key id, and what to store.
pub struct NewKey {
    /// The whole key: shown to its owner once, never stored.
    pub text: String,
    pub keyid: String,
    pub hash: [u8; 32],
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("keyid", &self.keyid)
            .finish_non_exhaustive()
    }
}

/// Makes a new random key of `scope`.
pub fn generate(scope: Scope, pepper: &Pepper) -> Result<NewKey, ring::error::Unspecified> {
    let rng = SystemRandom::new();
    let mut raw = [0u8; KEYID_LEN + SECRET_LEN];
    rng.fill(&mut raw)?;
    let chars: Vec<u8> = raw.iter().map(|b| ALPHABET[(b & 31) as usize]).collect();
    let keyid = String::from_utf8_lossy(&chars[..KEYID_LEN]).into_owned();
    let secret = String::from_utf8_lossy(&chars[KEYID_LEN..]).into_owned();
    let mut text = format!("kw{}_{keyid}_{secret}", scope.letter() as char);
    let c = check(text.as_bytes());
    text.push_str(&String::from_utf8_lossy(&c));
    Ok(NewKey {
        hash: pepper.hash(&secret),
        text,
        keyid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pepper() -> Pepper {
        Pepper::new(&[7u8; 32]).unwrap()
    }

    #[test]
    fn a_new_key_parses_and_verifies_against_what_is_stored() {
        let p = pepper();
        let k = generate(Scope::Publish, &p).unwrap();
        assert!(k.text.starts_with("kwp_"));
        assert_eq!(k.text.len(), 4 + 12 + 1 + 32 + 7);
        let parsed = parse(&k.text).unwrap();
        assert_eq!(parsed.scope, Scope::Publish);
        assert_eq!(parsed.keyid, k.keyid);
        assert!(p.verify(&parsed, &k.hash));
        // Another pepper, or another key with the same id: refused.
        assert!(!Pepper::new(&[8u8; 32]).unwrap().verify(&parsed, &k.hash));
        let other = generate(Scope::Publish, &p).unwrap();
        assert!(!p.verify(&parsed, &other.hash));
        assert_ne!(k.keyid, other.keyid);
        // What is stored is not the secret, and Debug shows no secret.
        assert!(!format!("{k:?}{parsed:?}").contains(&k.text[17..49]));
    }

    #[test]
    fn typos_truncation_and_strangers_are_refused_before_any_lookup() {
        let k = generate(Scope::Subscribe, &pepper()).unwrap().text;
        // One character changed anywhere: the check fails (or the format does).
        for i in 4..k.len() {
            let mut t = k.clone().into_bytes();
            t[i] = if t[i] == b'a' { b'b' } else { b'a' };
            let t = String::from_utf8(t).unwrap();
            assert!(parse(&t).is_err(), "position {i}");
        }
        assert_eq!(parse(&k[..k.len() - 1]), Err(KeyError::Malformed));
        assert_eq!(parse("ghp_0123456789"), Err(KeyError::Malformed));
        let mut upper = k.clone();
        upper.make_ascii_uppercase();
        assert_eq!(parse(&upper), Err(KeyError::Malformed));
        let swapped = format!("kwo{}", &k[3..]);
        assert_eq!(
            parse(&swapped),
            Err(KeyError::BadCheck),
            "the scope is covered"
        );
    }

    #[test]
    fn bearer_headers_and_scopes() {
        assert_eq!(bearer(b"Bearer kwp_x"), Some("kwp_x"));
        assert_eq!(bearer(b"bearer   kwp_x  "), Some("kwp_x"));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert!(Scope::Legacy.allows(Scope::Publish) && Scope::Legacy.allows(Scope::Subscribe));
        assert!(!Scope::Legacy.allows(Scope::AppAdmin));
        assert!(!Scope::Publish.allows(Scope::Subscribe));
        assert!(Pepper::new(&[0; 16]).is_none());
    }
}
