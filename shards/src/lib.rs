//! kateway-shards: the thread-per-core gateway.
//!
//! Layers, from the socket down (see `docs/architecture.md`):
//!
//! * [`conn`]: transports. A connection driver turns bytes into `kateway_proto::command`
//!   commands with a sans-I/O codec and writes the `kateway_proto::reply` replies back.
//! * [`api`]: executes a command: the one place that knows what each command does.
//! * [`delivery`]: subscriptions: bounded reads, parking until data arrives or a deadline,
//!   acknowledgement; the same for every transport and both backends.
//! * [`backend`]: the seam between the gateway and where topics live (the embedded log store,
//!   or Apache Kafka with a hinted-handoff buffer); the only module that knows which one runs.
//! * [`logset`]: one core's partition logs, their group commit ([`logset::flusher`]) and
//!   durability accounting; both backends keep their logs here.
//! * [`queue`], [`delay`], [`webhook`]: leased delivery (per-message acks, retries, dead
//!   letters), delayed messages and webhook push, on top of the delivery layer and the backend
//!   seam.
//! * [`catalog`], [`admin`]: the topic catalog, its file, and topic administration.
//! * [`node`], [`shard`], [`mesh`], [`request`], [`tasks`]: a core, its context, and how cores
//!   ask each other for things. Cores share nothing mutable.
//! * [`tenancy`]: apps, keys, grants and quotas: authentication and admission at the edge,
//!   the per-core view they are checked against, and core 0's metadata writer.
//! * [`runtime`], [`core`], [`fds`], [`upgrade`]: process and core bootstrap, the open-file
//!   budget, and the handover of the listening sockets to a new binary.
//! * [`cli`]: the admin commands (`kateway status|topics|groups|tail|keys ...`), clients of a
//!   running gateway's API.

pub mod admin;
pub mod alloc;
pub mod api;
pub mod backend;
pub mod catalog;
pub mod cli;
pub mod conn;
pub mod core;
pub mod date;
pub mod delay;
pub mod delivery;
pub mod event;
pub mod fds;
pub mod idem;
pub mod logset;
pub mod mesh;
pub mod metrics;
pub mod node;
pub mod queue;
pub mod request;
pub mod runtime;
pub mod shard;
pub mod tasks;
pub mod tenancy;
pub mod upgrade;
pub mod webhook;
