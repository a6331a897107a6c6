//! Push streams of a subscribe, for every transport: a [`Subscription`] asked again and again,
//! its batches encoded as server-sent events ([`Events`]); the WebSocket driver pushes the
//! batches of the same subscription as frames. A stream ends when the core drains; its read
//! errors end it with an error event.

use super::subscribe;
use crate::delivery::Subscription;
use crate::node::Core;
use crate::shard::Held;
use bytes::BytesMut;
use kateway_core::Error;
use kateway_proto::command::{Caller, Subscribe};
use kateway_proto::sse;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Messages per batch of a stream that did not ask for a batch size.
const STREAM_BATCH: usize = 100;

/// A subscription whose batches are server-sent events.
pub struct Events {
    sub: Subscription,
    heartbeat: Duration,
    done: bool,
}

/// A piece of an event stream and the response memory held for it until it is written.
pub struct Chunk {
    pub data: BytesMut,
    pub hold: Option<Held>,
}

impl Chunk {
    /// An error event (the stream ends after it).
    pub fn error(e: &Error) -> Self {
        let mut data = BytesMut::new();
        sse::put_error(&mut data, e.message(), e.kind().code());
        Chunk { data, hold: None }
    }
}

/// What an event stream sends: the next piece, or `None` once the stream is over.
pub(crate) trait EventSource {
    async fn next(&mut self) -> Option<Chunk>;
}

impl EventSource for Events {
    async fn next(&mut self) -> Option<Chunk> {
        Events::next(self).await
    }
}

/// Opens the event stream of a subscribe (`Accept: text/event-stream`).
pub async fn events(
    core: &Rc<Core>,
    caller: Caller<'_>,
    s: &Subscribe<'_>,
) -> Result<Events, Error> {
    let max = s.batch.unwrap_or(STREAM_BATCH);
    Ok(Events {
        sub: subscribe::open(core, caller, s, max).await?,
        heartbeat: core.shard.cfg().sse.heartbeat.0,
        done: false,
    })
}

impl Events {
    /// The next piece: events for the messages that arrived, a heartbeat after an idle
    /// interval, an error event, or `None` once the stream is over.
    pub async fn next(&mut self) -> Option<Chunk> {
        if self.done {
            return None;
        }
        let mut data = BytesMut::new();
        match self.sub.next(Instant::now() + self.heartbeat).await {
            Ok(b) if b.records.is_empty() => {
                if self.sub.draining() {
                    return None;
                }
                data.extend_from_slice(sse::HEARTBEAT);
                Some(Chunk { data, hold: None })
            }
            Ok(b) => {
                for m in &b.records {
                    sse::put_event(&mut data, m);
                }
                let mut hold = b.held;
                if let Some(h) = &mut hold {
                    // The events wait for the client, not the records they came from.
                    h.resize(data.len());
                }
                Some(Chunk { data, hold })
            }
            Err(e) => {
                self.done = true;
                sse::put_error(&mut data, e.message(), e.kind().code());
                Some(Chunk { data, hold: None })
            }
        }
    }
}
