//! The error taxonomy. Every failure that can reach a client is an [`Error`] with an
//! [`ErrorKind`]; the kind fixes the stable numeric `code`, the HTTP status (`code / 100`), where
//! the failure came from and whether retrying can help. Turning an error into an HTTP response
//! happens in exactly one place, in the shards' API edge.

use std::borrow::Cow;

/// Where a failure originated; tells operators whom to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The request was wrong; retrying the same request will fail again.
    Client,
    /// The local disk or log engine failed.
    Disk,
    /// The gateway is overloaded or shutting down; retrying later can succeed.
    Capacity,
    /// A bug or an unexpected state inside the gateway.
    Internal,
}

macro_rules! kinds {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $origin:ident;)*) => {
        /// Every failure kind with its stable code. `code / 100` is the HTTP status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorKind { $($(#[$doc])* $name,)* }

        impl ErrorKind {
            /// Every kind.
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$name,)*];
            /// The stable numeric code sent to clients as `"code"`.
            pub const fn code(self) -> u32 { match self { $(ErrorKind::$name => $code,)* } }
            /// Where failures of this kind come from.
            pub const fn origin(self) -> Origin { match self { $(ErrorKind::$name => Origin::$origin,)* } }
        }
    };
}

kinds! {
    /// The request could not be parsed as HTTP/1.1.
    MalformedHttp = 40000, Client;
    /// An app, topic, version or group name breaks the naming rules.
    InvalidName = 40001, Client;
    /// A query parameter or header has an invalid value.
    InvalidParam = 40002, Client;
    /// A batch body could not be decoded.
    InvalidBatch = 40003, Client;
    /// A subscribe call without `group`.
    MissingGroup = 40004, Client;
    /// An acknowledgement names an impossible partition or offset.
    InvalidAck = 40005, Client;
    /// A request body is not what the route expects.
    InvalidBody = 40006, Client;
    /// A required header such as `Appid` is missing.
    MissingHeader = 40007, Client;
    /// A receipt that this gateway did not issue for this topic and group (forged, damaged, or
    /// another group's).
    InvalidReceipt = 40008, Client;
    /// No credentials, or credentials that do not authenticate (`WWW-Authenticate: Bearer`).
    Unauthorized = 40100, Client;
    /// Authenticated, but the key may not do this (wrong app, scope, topic or listener).
    Forbidden = 40300, Client;
    /// The topic does not exist.
    UnknownTopic = 40400, Client;
    /// No route matches the path.
    UnknownRoute = 40401, Client;
    /// No such app, key or grant (the tenancy API).
    UnknownEntity = 40402, Client;
    /// No pending delay has this id (never issued for this topic, or cancelled already).
    UnknownDelay = 40403, Client;
    /// The route exists but not for this method.
    MethodNotAllowed = 40500, Client;
    /// The client was too slow to send its request.
    RequestTimeout = 40800, Client;
    /// The resource already exists.
    Conflict = 40900, Client;
    /// The receipt's lease is no longer the message's current one (it expired and the message
    /// was delivered again, or it was acked): the caller no longer holds the message.
    StaleLease = 40901, Client;
    /// A publish with this `Idempotency-Key` is still in progress (`Retry-After`).
    IdempotencyInProgress = 40902, Client;
    /// Another call that moves the same dead letters (a redrive, a purge or a peek) is running
    /// (`Retry-After`).
    DeadLettersMoving = 40903, Client;
    /// The delay fired (or is firing): too late to cancel it.
    DelayFired = 40904, Client;
    /// This `Idempotency-Key` was used for a publish with another body.
    IdempotencyMismatch = 42200, Client;
    /// A configuration reload was refused: the file does not parse or validate, or changes a
    /// setting that cannot change while the gateway runs (the message names the keys).
    ConfigRefused = 42201, Client;
    /// Content-Length is required and missing.
    LengthRequired = 41100, Client;
    /// A message, batch or body is over its limit.
    PayloadTooLarge = 41300, Client;
    /// A request body in a content coding the gateway does not decode.
    UnsupportedEncoding = 41500, Client;
    /// A WebSocket route asked for without a valid upgrade handshake.
    UpgradeRequired = 42600, Client;
    /// The request's headers are over the limit.
    HeadersTooLarge = 43100, Client;
    /// The core has too much work in flight; retry after the advertised delay.
    Overloaded = 42900, Capacity;
    /// The app's quota is spent for now (`Retry-After`, `RateLimit-Policy`, `RateLimit`).
    QuotaExceeded = 42901, Capacity;
    /// The app holds its share of a core's requests in flight (`limits.app_share_per_core`).
    AppBusy = 42903, Capacity;
    /// Too many failed authentications from this client address.
    TooManyAuthFailures = 42902, Capacity;
    /// A bug or an unexpected state.
    Internal = 50000, Internal;
    /// The request uses a protocol feature the gateway does not implement.
    NotImplemented = 50100, Client;
    /// The log engine failed to write or sync (a full disk, an I/O error); the core refuses
    /// writes until a retry finds the disk taking writes again.
    StorageFailed = 50300, Disk;
    /// The gateway is shutting down.
    ShuttingDown = 50301, Capacity;
    /// Too many connections on this core.
    TooManyConnections = 50302, Capacity;
    /// Kafka cannot be reached for a request that cannot be buffered (subscribe, administration).
    KafkaUnavailable = 50303, Capacity;
    /// Kafka is unreachable and the hinted-handoff buffer is at its disk budget.
    HandoffFull = 50304, Capacity;
    /// Records on disk are damaged and the recovery mode refuses to skip them; the message
    /// names the partition and offsets, which a seek past them skips.
    DamagedData = 50305, Disk;
    /// The core holds its limit of response bytes for clients that have not read them yet.
    ResponsesBuffered = 50306, Capacity;
    /// `/ready`: the gateway should not get traffic now (the message says why).
    NotReady = 50307, Capacity;
    /// The core holds its limit of bytes of requests still arriving.
    RequestsBuffered = 50308, Capacity;
    /// The core runs as many requests as it may (`limits.max_requests_in_flight_per_core`).
    Busy = 50309, Capacity;
}

impl ErrorKind {
    /// The HTTP status for this kind.
    pub const fn status(self) -> u16 {
        (self.code() / 100) as u16
    }

    /// Whether the same request may succeed if retried later.
    pub const fn retryable(self) -> bool {
        matches!(self.origin(), Origin::Capacity | Origin::Disk)
    }
}

/// A failure with its kind and a message for humans.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{msg}")]
pub struct Error {
    kind: ErrorKind,
    msg: Cow<'static, str>,
    allow: Option<&'static str>,
    /// Seconds before a retry can succeed, where the failure knows better than its kind.
    retry: Option<u32>,
    /// `RateLimit-Policy` and `RateLimit` header values of a quota refusal.
    limit: Option<Box<(String, String)>>,
}

/// The longest message an error keeps, in bytes: a message that quotes what a client sent (an
/// unknown key, a bad value) is cut there, so that a 5 MiB key is not sent back.
pub const MAX_MESSAGE: usize = 1024;

/// `msg` cut to [`MAX_MESSAGE`] bytes at a character boundary, ending in "…" when cut.
fn bounded(msg: Cow<'static, str>) -> Cow<'static, str> {
    if msg.len() <= MAX_MESSAGE {
        return msg;
    }
    let kept = crate::text::prefix(&msg, MAX_MESSAGE - '…'.len_utf8());
    Cow::Owned(format!("{kept}…"))
}

impl Error {
    /// A new error of `kind`, its message at most [`MAX_MESSAGE`] bytes.
    pub fn new(kind: ErrorKind, msg: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            msg: bounded(msg.into()),
            allow: None,
            retry: None,
            limit: None,
        }
    }

    /// This error with a `Retry-After` of `secs` (at least 1).
    pub fn with_retry_after(mut self, secs: u32) -> Self {
        self.retry = Some(secs.max(1));
        self
    }

    /// This error with `RateLimit-Policy` and `RateLimit` header values.
    pub fn with_rate_limit(mut self, policy: String, limit: String) -> Self {
        self.limit = Some(Box::new((policy, limit)));
        self
    }

    /// The `RateLimit-Policy` and `RateLimit` header values of a quota refusal.
    pub fn rate_limit(&self) -> Option<(&str, &str)> {
        self.limit.as_deref().map(|(p, l)| (p.as_str(), l.as_str()))
    }

    /// A 405 for a route that exists for the methods in `allow` (the `Allow` header).
    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(ErrorKind::MethodNotAllowed, "method not allowed")
        }
    }

    /// The methods a 405 allows.
    pub fn allow(&self) -> Option<&'static str> {
        self.allow
    }

    /// The kind, which fixes code, status and origin.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message for humans.
    pub fn message(&self) -> &str {
        &self.msg
    }

    /// Shorthand for the HTTP status.
    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// Seconds a client should wait before retrying, for capacity failures.
    pub fn retry_after(&self) -> Option<u32> {
        if self.retry.is_some() {
            return self.retry;
        }
        match self.kind.origin() {
            Origin::Capacity => Some(1),
            Origin::Disk => Some(5),
            _ => None,
        }
    }

    /// Shorthand for an [`ErrorKind::InvalidParam`] error.
    pub fn param(msg: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::InvalidParam, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let short = Error::param("x".repeat(MAX_MESSAGE));
        assert_eq!(short.message().len(), MAX_MESSAGE);
        for pad in ["k", "é", "€", "😀"] {
            let e = Error::param(format!("unknown field `{}`", pad.repeat(5 << 20)));
            assert!(e.message().len() <= MAX_MESSAGE, "{pad}");
            assert!(e.message().starts_with("unknown field `"));
            assert!(e.message().ends_with('…'));
        }
    }

    #[test]
    fn status_is_code_div_100() {
        for k in [
            ErrorKind::MalformedHttp,
            ErrorKind::UnknownTopic,
            ErrorKind::PayloadTooLarge,
            ErrorKind::HeadersTooLarge,
            ErrorKind::Overloaded,
            ErrorKind::ShuttingDown,
        ] {
            assert_eq!(k.status() as u32, k.code() / 100);
        }
        assert_eq!(ErrorKind::HeadersTooLarge.status(), 431);
        assert!(ErrorKind::Overloaded.retryable());
        assert!(!ErrorKind::InvalidName.retryable());
        assert_eq!(
            Error::new(ErrorKind::ShuttingDown, "x").retry_after(),
            Some(1)
        );
    }
}
