//! The allocator (mimalloc) and giving memory back. mimalloc keeps pages freed by a thread for
//! reuse and returns them to the operating system only when that thread calls into it again
//! past a purge delay; a core that served a burst of large answers and then went quiet would
//! keep that memory for good. Each core therefore asks mimalloc to collect at a fixed interval,
//! which returns what it no longer uses (a few microseconds when there is nothing to do).

#![allow(unsafe_code)]

use std::time::Duration;

/// How often each core collects.
const EVERY: Duration = Duration::from_secs(1);

/// Returns freed memory of this thread (and expired purges of the process) to the system.
pub fn collect() {
    // SAFETY: mi_collect only walks mimalloc's own structures for the calling thread and its
    // arenas; it takes no pointers from us and may be called at any time.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

/// Runs until the core stops.
pub async fn run(shard: std::rc::Rc<crate::shard::Shard>) {
    while !shard.sleep(EVERY).await {
        collect();
    }
}
