//! The mesh: how cores talk. Each core has one bounded inbox; every core holds a sender to every
//! inbox. A message that needs an answer carries a one-shot reply channel. Messages carry owned,
//! `Send` data only; nothing shared is mutated across cores.

use kateway_core::{Error, ErrorKind};

/// A message in an inbox: the request, and where to send the answer (if one is wanted).
pub type Envelope<M, A> = (M, Option<flume::Sender<A>>);

/// Senders to every core's inbox.
pub struct Mesh<M, A> {
    inboxes: Vec<flume::Sender<Envelope<M, A>>>,
}

impl<M, A> Clone for Mesh<M, A> {
    fn clone(&self) -> Self {
        Self {
            inboxes: self.inboxes.clone(),
        }
    }
}

impl<M, A> Mesh<M, A> {
    /// Creates the inboxes; returns the mesh and each core's receiver.
    pub fn new(cores: usize, capacity: usize) -> (Self, Vec<flume::Receiver<Envelope<M, A>>>) {
        let (tx, rx): (Vec<_>, Vec<_>) = (0..cores).map(|_| flume::bounded(capacity)).unzip();
        (Self { inboxes: tx }, rx)
    }

    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.inboxes.len()
    }

    /// Sends without waiting for an answer.
    pub async fn send(&self, core: usize, msg: M) {
        // A closed inbox means that core has stopped; nothing useful can be done about it.
        let _ = self.inboxes[core].send_async((msg, None)).await;
    }

    /// Sends from a thread outside the reactors, waiting for room.
    pub fn send_blocking(&self, core: usize, msg: M) -> bool {
        self.inboxes[core].send((msg, None)).is_ok()
    }

    /// Sends a request from a thread outside the reactors; the answer arrives on the receiver.
    pub fn ask_blocking(&self, core: usize, msg: M) -> Option<flume::Receiver<A>> {
        let (tx, rx) = flume::bounded(1);
        self.inboxes[core].send((msg, Some(tx))).ok().map(|()| rx)
    }

    /// Sends a request and waits for its answer.
    pub async fn call(&self, core: usize, msg: M) -> Result<A, Error> {
        let (tx, rx) = flume::bounded(1);
        if self.inboxes[core]
            .send_async((msg, Some(tx)))
            .await
            .is_err()
        {
            return Err(stopped());
        }
        rx.recv_async().await.map_err(|_| stopped())
    }
}

impl<M, A> Mesh<M, A> {
    /// Sends `make(core)` to every core but `except` at once, then collects the answers (in
    /// core order, `except` left out).
    pub async fn broadcast(
        &self,
        except: usize,
        make: impl Fn(usize) -> M,
    ) -> Vec<Result<A, Error>> {
        let mut waiting = Vec::with_capacity(self.cores());
        for core in (0..self.cores()).filter(|&c| c != except) {
            let (tx, rx) = flume::bounded(1);
            let sent = self.inboxes[core].send_async((make(core), Some(tx))).await;
            waiting.push(sent.ok().map(|()| rx));
        }
        let mut out = Vec::with_capacity(waiting.len());
        for rx in waiting {
            out.push(match rx {
                Some(rx) => rx.recv_async().await.map_err(|_| stopped()),
                None => Err(stopped()),
            });
        }
        out
    }
}

fn stopped() -> Error {
    Error::new(ErrorKind::ShuttingDown, "core stopped")
}
