//! The embedded store from any core: a read spans the cores that own a topic's partitions (one
//! mesh hop each, starting at a different core each time so no core's partitions starve the
//! others'), a commit and a status query go to the owners. The local core is asked directly,
//! the others through a [`Request`].

use super::Store;
use crate::catalog::LocalTopic;
use crate::metrics;
use crate::request::{Answer, Fetch, Fetched, Request};
use kateway_core::{Error, ErrorKind, Groups, PartitionInfo};

fn unexpected() -> Error {
    Error::new(ErrorKind::Internal, "unexpected answer from another core")
}

impl Store {
    /// Asks core `core` (not this one).
    async fn ask(&self, core: usize, req: Request) -> Result<Answer, Error> {
        metrics::inc(&self.logs.shard.metrics.mesh_messages_total);
        self.logs.shard.mesh.call(core, req).await
    }

    /// A bounded read for a group over every core owning partitions of `topic`. A core that
    /// fails does not cost the others' records: its error is returned only when nothing was
    /// found elsewhere.
    pub async fn read(&self, topic: &LocalTopic, f: &Fetch) -> Result<Fetched, Error> {
        let shard = &self.logs.shard;
        let turn = shard.turn();
        let owners = &topic.owner_cores;
        let n = owners.len();
        let mut out = Fetched::default();
        let mut bytes = 0;
        let mut failed = None;
        for core in (0..n).map(|i| owners[(turn + i) % n]) {
            let left = f.max - out.records.len();
            if left == 0 || bytes >= f.max_bytes {
                break;
            }
            let mut f = f.clone();
            f.max = left;
            f.max_bytes -= bytes;
            let got = if core == shard.id {
                self.fetch(&f)
            } else {
                match self.ask(core, Request::Fetch(f)).await {
                    Ok(Answer::Delivered(r)) => r,
                    Ok(_) => Err(unexpected()),
                    Err(e) => Err(e),
                }
            };
            match got {
                Ok(got) => {
                    bytes += got.records.iter().map(|m| m.value.len()).sum::<usize>();
                    out.records.extend(got.records);
                    out.more |= got.more;
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) if out.records.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// Commits `next` for `group` on partition `p` of `topic`, on its owner.
    pub async fn commit_anywhere(
        &self,
        topic: &LocalTopic,
        p: u32,
        group: &str,
        next: u64,
        seek: bool,
    ) -> Result<(), Error> {
        let shard = &self.logs.shard;
        let owner = topic.owner(p, shard.cores());
        if owner == shard.id {
            return self.commit(&topic.name, p, group, next, seek).await;
        }
        let req = Request::Commit {
            topic: topic.name.to_string(),
            partition: p,
            group: group.to_owned(),
            offset: next,
            seek,
        };
        match self.ask(owner, req).await? {
            Answer::Done(r) => r,
            _ => Err(unexpected()),
        }
    }

    /// Partition offsets (and the groups asked about) from every core.
    pub async fn info_anywhere(
        &self,
        topic: &LocalTopic,
        groups: &Groups,
    ) -> Result<Vec<PartitionInfo>, Error> {
        let shard = &self.logs.shard;
        let mut all = Vec::new();
        for core in topic.owner_cores.iter().copied() {
            if core == shard.id {
                all.extend(self.info(&topic.name, groups));
                continue;
            }
            let req = Request::Info {
                topic: topic.name.to_string(),
                groups: groups.clone(),
            };
            match self.ask(core, req).await? {
                Answer::Infos(v) => all.extend(v),
                _ => return Err(unexpected()),
            }
        }
        all.sort_by_key(|i| i.partition);
        Ok(all)
    }
}
