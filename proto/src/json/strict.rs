//! The check [`super::Obj`] makes on an object's members as it is read, without copying it: a
//! member whose value is `null` is refused ([`NotNull`]: where the field's type would take
//! `null` as absent, an `Option`, it is refused instead, naming the member; every other type
//! refuses `null` itself). A member named twice the derived impls refuse themselves.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// An object's members, each value read through [`NotNull`] under the name of its key.
pub struct Strict<'de, A> {
    pub map: A,
    /// The key of the member being read (borrowed from the body unless it has escapes).
    pub key: Cow<'de, str>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Strict<'de, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let Some(key) = self.map.next_key_seed(KeyText)? else {
            return Ok(None);
        };
        self.key = key;
        seed.deserialize(de::value::StrDeserializer::<A::Error>::new(&self.key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        let key = &*self.key;
        self.map
            .next_value_seed(NotNullSeed { seed, key })
            .map_err(|e| named(e, key))
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

/// A member's error, naming the member unless it does already (`invalid type: null, expected
/// a string` becomes ``` `url`: invalid type: null, expected a string```). The position
/// `serde_json` put in the message is left to it to add again, once, to the new error.
fn named<E: de::Error + fmt::Display>(e: E, key: &str) -> E {
    let text = e.to_string();
    if text.starts_with(&format!("`{key}`")) {
        return e;
    }
    let text = match text.rfind(" at line ") {
        Some(i) if text[i..].contains(" column ") => &text[..i],
        _ => &text,
    };
    E::custom(format!("`{key}`: {text}"))
}

/// A key's text, borrowed from the body where it can be.
struct KeyText;

impl<'de> DeserializeSeed<'de> for KeyText {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyText {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

/// The seed of a member's value, which reads it through [`NotNull`].
struct NotNullSeed<'k, S> {
    seed: S,
    key: &'k str,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for NotNullSeed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(NotNull { de, key: self.key })
    }
}

/// A member's value: the inner deserializer, except that an `Option` refuses `null`.
struct NotNull<'k, D> {
    de: D,
    key: &'k str,
}

macro_rules! forward {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, D::Error> {
            self.de.$method(v)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for NotNull<'_, D> {
    type Error = D::Error;

    forward!(deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_unit deserialize_seq deserialize_map deserialize_identifier
        deserialize_ignored_any);

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, D::Error> {
        self.de.deserialize_option(SomeOnly { v, key: self.key })
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_unit_struct(name, v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_newtype_struct(name, v)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, D::Error> {
        self.de.deserialize_tuple(len, v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_tuple_struct(name, len, v)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_struct(name, fields, v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_enum(name, variants, v)
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

/// An `Option`'s visitor that takes a value and refuses `null`.
struct SomeOnly<'k, V> {
    v: V,
    key: &'k str,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for SomeOnly<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.v.expecting(f)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        Err(E::custom(format!(
            "`{}` is null: leave an optional field out instead",
            self.key
        )))
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.visit_none()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.v.visit_some(d)
    }
}
