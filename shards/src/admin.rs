//! The catalog writer, on core 0 (calls are serialised there): applies a topic administration
//! call checked by [`crate::catalog::Catalog::plan`] to the catalog file and to every core, and
//! what each core does to install or remove a topic ([`apply_here`], [`drop_here`]).
//!
//! A creation or growth that fails on any core is rolled back (catalog included), so a failed
//! call leaves nothing behind. A deletion makes every core forget the topic, moves its directory
//! into the trash (which frees its space even on a full disk) and only then rewrites the
//! catalog; if that write fails the trash marker stays and the next start completes the
//! deletion.

use crate::backend::{self, Backend};
use crate::catalog::{file, AdminOp, Change, TopicMeta};
use crate::request::{Answer, Request};
use crate::shard::Shard;
use kateway_core::{Error, ErrorKind};
use std::path::Path;
use std::rc::Rc;

/// Opens a topic's partitions here and then installs (or replaces) it on this core: requests
/// see the topic (or its new partitions) only once every partition is open, since opening many
/// lets the core serve other requests in between.
pub async fn apply_here(shard: &Shard, backend: &Backend, meta: &TopicMeta) -> Result<(), Error> {
    backend.apply_topic(meta).await?;
    shard
        .catalog
        .borrow_mut()
        .insert(meta.clone(), shard.id, shard.cores());
    Ok(())
}

/// Forgets a topic on this core and closes its partitions here (core 0 removes the files).
pub fn drop_here(shard: &Shard, backend: &Backend, name: &str) {
    shard.catalog.borrow_mut().remove(name);
    backend.drop_topic(name);
    shard.topic_event(name).notify();
}

/// Core 0: applies `op` to the catalog file and every core; returns the topic as it is now.
pub async fn apply(shard: &Rc<Shard>, backend: &Backend, op: AdminOp) -> Result<TopicMeta, Error> {
    let path = backend::catalog_path(&shard.cfg());
    let root = backend::data_root(&shard.cfg());
    let budget = crate::catalog::Budget::of(&shard.cfg());
    let before = shard.catalog.borrow().metas();
    let (after, change) = shard.catalog.borrow().plan(op, budget)?;
    match change {
        Change::None(meta) => Ok(meta),
        Change::Apply(meta) => {
            file::store(&path, &after)?;
            if let Err(e) = everywhere_apply(shard, backend, &meta).await {
                // Back to what it was: the catalog first, then every core.
                let _ = file::store(&path, &before);
                match before.iter().find(|t| t.name == meta.name) {
                    Some(old) => {
                        let _ = everywhere_apply(shard, backend, old).await;
                        // Every core closed the new partitions; remove what their creation
                        // left on disk.
                        for p in old.partitions..meta.partitions {
                            file::remove_any(&file::partition_dir(&root, &meta.name, p));
                        }
                    }
                    None => forget(shard, backend, &root, &path, &before, &meta.name).await,
                }
                return Err(e);
            }
            Ok(meta)
        }
        Change::Remove(meta) => {
            forget(shard, backend, &root, &path, &after, &meta.name).await;
            Ok(meta)
        }
    }
}

/// Installs `meta` on every core, this one first.
async fn everywhere_apply(
    shard: &Rc<Shard>,
    backend: &Backend,
    meta: &TopicMeta,
) -> Result<(), Error> {
    apply_here(shard, backend, meta).await?;
    for a in shard
        .mesh
        .broadcast(shard.id, |_| Request::Apply(meta.clone()))
        .await
    {
        match a? {
            Answer::Done(r) => r?,
            _ => return Err(Error::new(ErrorKind::Internal, "unexpected answer")),
        }
    }
    Ok(())
}

/// Makes every core forget topic `name`, moves its directory into the trash (freeing its
/// space) and writes `catalog` (which no longer lists it).
async fn forget(
    shard: &Rc<Shard>,
    backend: &Backend,
    root: &Path,
    path: &Path,
    catalog: &[TopicMeta],
    name: &str,
) {
    drop_here(shard, backend, name);
    let _ = shard
        .mesh
        .broadcast(shard.id, |_| Request::Drop(name.to_owned()))
        .await;
    let marker = match file::trash(root, name) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(topic = name, "cannot move the topic into the trash: {e}");
            let _ = std::fs::remove_dir_all(file::topic_dir(root, name));
            None
        }
    };
    match file::store(path, catalog) {
        Ok(()) => {
            if let Some(m) = marker {
                file::remove_any(&m);
            }
        }
        Err(e) => tracing::error!(
            topic = name,
            "the topic is gone but the catalog could not be rewritten ({e}); the next start completes the deletion"
        ),
    }
}

/// From any core: has core 0 apply `op`.
pub async fn request(shard: &Shard, op: AdminOp) -> Result<TopicMeta, Error> {
    match shard.mesh.call(0, Request::Admin(op)).await? {
        Answer::Topic(r) => r,
        _ => Err(Error::new(
            ErrorKind::Internal,
            "unexpected answer from core 0",
        )),
    }
}

/// The gateway's own topic at `path` (a dead-letter topic, the delay log), created with
/// `partitions` and `retention_hours` if it does not exist yet; one created meanwhile by
/// another core or gateway is taken as it is.
pub async fn ensure(
    shard: &Shard,
    backend: &Backend,
    path: &kateway_proto::command::TopicPath<'_>,
    partitions: u32,
    retention_hours: Option<u64>,
) -> Result<Rc<crate::catalog::LocalTopic>, Error> {
    match backend.resolve(path).await {
        Ok(t) => return Ok(t),
        Err(e) if e.kind() != kateway_core::ErrorKind::UnknownTopic => return Err(e),
        Err(_) => {}
    }
    let op = AdminOp::Create(TopicMeta {
        name: format!("{}.{}.{}", path.appid, path.topic, path.ver),
        partitions,
        retention_hours,
        retention_bytes: None,
        created_ms: crate::shard::now_ms(),
    });
    let conflict = |e: &Error| e.kind() == kateway_core::ErrorKind::Conflict;
    match backend.administer(op, path).await {
        Ok(op) => match request(shard, op).await {
            Err(e) if !conflict(&e) => return Err(e),
            _ => {}
        },
        Err(e) if !conflict(&e) => return Err(e),
        Err(_) => {}
    }
    backend.resolve(path).await
}
