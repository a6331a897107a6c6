//! Naming rules. Apps, topics and groups are `[A-Za-z0-9_-]{1,64}`; versions look like `v1`.
//! A topic's storage name is `<appid>.<topic>.<ver>`; a group's is `<subscriber appid>.<group>`.
//! Because `.` is not allowed inside a part, both storage names are unambiguous.

use crate::error::{Error, ErrorKind};
use std::fmt;

/// Checks one name part against `[A-Za-z0-9_-]{1,64}`.
pub fn validate_part(what: &str, s: &str) -> Result<(), Error> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidName,
            format!("invalid {what} {s:?}: use 1-64 characters of [A-Za-z0-9_-]"),
        ))
    }
}

/// The app of a topic or group storage name (`<app>.<topic>.<ver>`, `<app>.<group>`).
pub fn app_of(storage_name: &str) -> &str {
    storage_name
        .split_once('.')
        .map_or(storage_name, |(a, _)| a)
}

/// Checks a version: `v` followed by 1-9 digits.
pub fn validate_ver(s: &str) -> Result<(), Error> {
    let ok = s.len() >= 2
        && s.len() <= 10
        && s.as_bytes()[0] == b'v'
        && s[1..].bytes().all(|b| b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidName,
            format!("invalid version {s:?}: use v followed by digits, like v1"),
        ))
    }
}

/// A topic: `(appid, topic, ver)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName {
    /// The owning app.
    pub appid: String,
    /// The topic within the app.
    pub topic: String,
    /// The version, like `v1`.
    pub ver: String,
}

impl TopicName {
    /// Validates and builds a topic name.
    pub fn new(appid: &str, topic: &str, ver: &str) -> Result<Self, Error> {
        validate_part("appid", appid)?;
        validate_part("topic", topic)?;
        validate_ver(ver)?;
        Ok(Self {
            appid: appid.to_owned(),
            topic: topic.to_owned(),
            ver: ver.to_owned(),
        })
    }

    /// Parses a storage name `<appid>.<topic>.<ver>`.
    pub fn parse_storage(s: &str) -> Result<Self, Error> {
        let mut it = s.split('.');
        match (it.next(), it.next(), it.next(), it.next()) {
            (Some(a), Some(t), Some(v), None) => Self::new(a, t, v),
            _ => Err(Error::new(
                ErrorKind::InvalidName,
                format!("invalid topic storage name {s:?}"),
            )),
        }
    }

    /// The storage name `<appid>.<topic>.<ver>`.
    pub fn storage_name(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.appid, self.topic, self.ver)
    }
}

/// A consumer group, owned by the subscribing app.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupName {
    /// The subscribing app.
    pub appid: String,
    /// The group within that app.
    pub group: String,
}

impl GroupName {
    /// Validates and builds a group name.
    pub fn new(appid: &str, group: &str) -> Result<Self, Error> {
        validate_part("appid", appid)?;
        validate_part("group", group)?;
        Ok(Self {
            appid: appid.to_owned(),
            group: group.to_owned(),
        })
    }

    /// Parses a storage name `<appid>.<group>`.
    pub fn parse_storage(s: &str) -> Result<Self, Error> {
        match s.split_once('.') {
            Some((a, g)) => Self::new(a, g),
            None => Err(Error::new(
                ErrorKind::InvalidName,
                format!("invalid group storage name {s:?}"),
            )),
        }
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.appid, self.group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let t = TopicName::new("app1", "orders_x-1", "v1").unwrap();
        assert_eq!(t.storage_name(), "app1.orders_x-1.v1");
        assert_eq!(TopicName::parse_storage("app1.orders_x-1.v1").unwrap(), t);
        assert!(TopicName::new("a.b", "t", "v1").is_err());
        assert!(TopicName::new("a", "", "v1").is_err());
        assert!(TopicName::new("a", "t", "1").is_err());
        assert!(TopicName::new("a", "t", "v").is_err());
        assert!(TopicName::new(&"x".repeat(65), "t", "v1").is_err());
        assert!(TopicName::new(&"x".repeat(64), "t", "v1").is_ok());
        let g = GroupName::new("app2", "g1").unwrap();
        assert_eq!(g.to_string(), "app2.g1");
        assert_eq!(GroupName::parse_storage("app2.g1").unwrap(), g);
        assert!(GroupName::new("app2", "g 1").is_err());
    }
}
