//! Minimal JSON string escaping for hand-written responses (RFC 8259 §7), and [`Obj`], which
//! reads a request body's JSON object strictly.

use bytes::{BufMut, BytesMut};

/// Appends `s` as a quoted, escaped JSON string.
pub fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u8(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.put_slice(&bytes[start..i]);
        match esc {
            Some(e) => out.put_slice(e),
            None => out.put_slice(format!("\\u{:04x}", b).as_bytes()),
        }
        start = i + 1;
    }
    out.put_slice(&bytes[start..]);
    out.put_u8(b'"');
}

/// `{"errmsg": msg, "code": code}`: the error body of every failed request.
pub fn error_body(msg: &str, code: u32) -> BytesMut {
    let mut out = BytesMut::with_capacity(msg.len() + 32);
    out.put_slice(b"{\"errmsg\":");
    put_str(&mut out, msg);
    out.put_slice(b",\"code\":");
    super::http1::encode::put_u64(&mut out, code.into());
    out.put_u8(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        let mut out = BytesMut::new();
        put_str(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(&out[..], "\"a\\\"b\\\\c\\nd\\u0001é\"".as_bytes());
        assert_eq!(
            &error_body("x", 40400)[..],
            b"{\"errmsg\":\"x\",\"code\":40400}"
        );
    }
}

/// A struct read from a JSON object only. Derived `Deserialize` impls also take a JSON array
/// (the fields by position), which `deny_unknown_fields` does not stop: `[5]` would be a quota
/// of 5 publishes a second. Every request body that is an object is read through this.
///
/// A member that is `null` is refused, as the API's schema says: an optional field is left out,
/// never null (`Option` fields would otherwise take `null` as absent, which the schema does not
/// allow). A member named twice is refused too (by the derived impl). The object is read in
/// place (`strict::Strict`): nothing is copied.
#[derive(Debug)]
pub struct Obj<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Obj<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                let strict = strict::Strict {
                    map,
                    key: std::borrow::Cow::Borrowed(""),
                };
                T::deserialize(serde::de::value::MapAccessDeserializer::new(strict))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData)).map(Obj)
    }
}

mod strict;

#[cfg(test)]
mod obj_tests {
    use super::Obj;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Q {
        a: Option<u32>,
        b: Option<String>,
    }

    #[test]
    fn objects_are_read_and_arrays_refused() {
        let q: Obj<Q> = serde_json::from_str(r#"{"a":5,"b":"x"}"#).unwrap();
        assert_eq!(
            q.0,
            Q {
                a: Some(5),
                b: Some("x".into())
            }
        );
        let q: Obj<Q> = serde_json::from_str("{}").unwrap();
        assert_eq!(q.0, Q { a: None, b: None });
        for bad in [
            "[5]",
            "[]",
            "5",
            "\"x\"",
            "null",
            r#"{"c":1}"#,
            r#"{"a":"5"}"#,
        ] {
            assert!(serde_json::from_str::<Obj<Q>>(bad).is_err(), "{bad}");
        }
        // The plain derive takes the array: what Obj is for.
        assert!(serde_json::from_str::<Q>("[5, null]").is_ok());
        // Required fields, nested values, a key with escapes.
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct R {
            a: u32,
            b: Option<(u32, Vec<String>)>,
        }
        let r: Obj<R> = serde_json::from_str(r#"{"\u0061":5,"b":[1,["x"]]}"#).unwrap();
        assert_eq!((r.0.a, r.0.b), (5, Some((1, vec!["x".to_owned()]))));
        for bad in [
            r#"{"a":null}"#,
            r#"{"a":5,"a":6}"#,
            r#"{"a":5,"b":[1,null]}"#,
            "[5]",
            "{}",
        ] {
            assert!(serde_json::from_str::<Obj<R>>(bad).is_err(), "{bad}");
        }
        let e = serde_json::from_str::<Obj<R>>(r#"{"a":1,"\u0062":null}"#).unwrap_err();
        assert!(e.to_string().starts_with("`b` is null"), "{e}");
        // Any member's error names it, with the position once.
        for (bad, want) in [
            (
                r#"{"a":null}"#,
                "`a`: invalid type: null, expected u32 at line 1 column",
            ),
            (
                r#"{"a":1,"b":[1,[2]]}"#,
                "`b`: invalid type: integer `2`, expected a string",
            ),
        ] {
            let e = serde_json::from_str::<Obj<R>>(bad).unwrap_err().to_string();
            assert!(e.starts_with(want), "{bad}: {e}");
            assert_eq!(e.matches(" at line ").count(), 1, "{e}");
        }
        // An optional field is left out, never null; and named once.
        for bad in [r#"{"a":null}"#, r#"{"a":5,"b":null}"#, r#"{"a":5,"a":6}"#] {
            let e = serde_json::from_str::<Obj<Q>>(bad).unwrap_err().to_string();
            assert!(e.contains("`a`") || e.contains("`b`"), "{bad}: {e}");
        }
    }
}
