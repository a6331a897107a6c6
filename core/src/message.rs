//! The message vocabulary every crate shares: how durable a publish must be, a message to
//! publish and where it landed, a message handed to a subscriber, where a new group starts,
//! partition offsets with the groups asked about, and tag matching. The gateway's backends, its
//! cores and the Kafka bridge all speak these types, so nothing is translated between them.

use bytes::Bytes;

/// How durable a publish must be before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// fsynced (embedded), acknowledged by all in-sync replicas (Kafka).
    All,
    /// Written to the page cache (embedded), acknowledged by the leader (Kafka).
    Local,
    /// Queued in memory; answered at once.
    Async,
}

/// Where a group without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    Oldest,
    Newest,
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Item {
    /// Partition key (empty for none).
    pub key: Bytes,
    /// Tags as sent in `X-Tag` (empty for none).
    pub tags: Bytes,
    /// The payload.
    pub value: Bytes,
}

/// Where a publish landed: one offset per message (`-1` where none is known yet: buffered in
/// the hinted-handoff log, or queued with `async=1` on the Kafka backend).
#[derive(Debug, Clone)]
pub struct Published {
    pub offsets: Vec<i64>,
    /// Some messages went to the hinted-handoff log instead of Kafka.
    pub buffered: bool,
}

/// A message handed to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub partition: u32,
    pub offset: u64,
    /// Milliseconds since the Unix epoch when it was published.
    pub timestamp: i64,
    pub key: Bytes,
    pub tags: Bytes,
    pub value: Bytes,
    /// With leased delivery: the receipt and attempt it is delivered with.
    pub leased: Option<Box<Leased>>,
}

/// How a leased message is delivered: the receipt that settles it and its delivery attempt
/// (1 for the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    /// The receipt's text (URL-safe base64), inline: no allocation of its own.
    pub receipt: [u8; crate::queue::receipt::RECEIPT_LEN],
    /// The lease the receipt names (for the batch receipt of a batch).
    pub lease: crate::queue::LeaseId,
    pub attempt: u16,
}

/// Which groups' committed offsets a partition query wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Groups {
    /// None: offsets only.
    None,
    /// Exactly this group (its storage name).
    Exact(String),
    /// Every group whose storage name starts with this (`<appid>.`).
    Prefix(String),
}

impl Groups {
    /// Whether `group` is one of those asked for.
    pub fn wants(&self, group: &str) -> bool {
        match self {
            Groups::None => false,
            Groups::Exact(g) => g == group,
            Groups::Prefix(p) => group.starts_with(p.as_str()),
        }
    }
}

/// Offsets of one partition, and the committed offsets of the groups asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    pub oldest: u64,
    pub newest: u64,
    pub groups: Vec<(String, u64)>,
}

/// Splits an `X-Tag` value (`a;b`) into its tags.
pub fn parse_tags(header: &[u8]) -> Vec<Bytes> {
    header
        .split(|&b| b == b';')
        .map(|s| s.trim_ascii())
        .filter(|s| !s.is_empty())
        .map(Bytes::copy_from_slice)
        .collect()
}

/// Whether a message's `;`-separated tags contain one of the wanted tags.
pub fn tags_match(tags: &[u8], wanted: &[Bytes]) -> bool {
    tags.split(|&b| b == b';')
        .map(|t| t.trim_ascii())
        .any(|t| !t.is_empty() && wanted.iter().any(|w| &w[..] == t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_matching() {
        let w = parse_tags(b" b ; z;;");
        assert_eq!(w, vec![Bytes::from_static(b"b"), Bytes::from_static(b"z")]);
        assert!(tags_match(b"a;b", &w));
        assert!(tags_match(b" z ", &w));
        assert!(!tags_match(b"a;bb", &w));
        assert!(!tags_match(b"", &w));
    }

    #[test]
    fn group_queries() {
        assert!(!Groups::None.wants("a.g"));
        assert!(Groups::Exact("a.g".into()).wants("a.g"));
        assert!(!Groups::Exact("a.g".into()).wants("a.gg"));
        assert!(Groups::Prefix("a.".into()).wants("a.gg"));
        assert!(!Groups::Prefix("a.".into()).wants("b.g"));
    }
}
