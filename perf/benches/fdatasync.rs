//! What one `fdatasync` of a small write costs on the file system the benchmark runs on (set
//! `TMPDIR` to the data directory's), by where the write lands: at the end of a growing file
//! (the size changes: the sync must commit the inode through the journal), inside space made
//! with `fallocate` (unwritten extents, converted through the journal when written), or inside
//! space already written with zeros (the log store's `store.preallocate_bytes`: data only).
//! Wall time per write + sync; `perf stat` around it gives the CPU.

use criterion::{criterion_group, criterion_main, Criterion};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

const WRITE: usize = 4096;
/// Space made ahead, enough for every write of a run (reset when used up).
const SPACE: u64 = 64 << 20;

#[derive(Clone, Copy)]
enum Space {
    Grown,
    Fallocated,
    ZeroFilled,
}

fn prepare(dir: &std::path::Path, how: Space) -> File {
    let path = dir.join("f");
    let _ = std::fs::remove_file(&path);
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("create");
    match how {
        Space::Grown => {}
        Space::Fallocated => {
            // SAFETY: a plain system call on a descriptor this function owns.
            #[allow(unsafe_code)]
            let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, SPACE as libc::off_t) };
            assert_eq!(r, 0, "fallocate");
        }
        Space::ZeroFilled => {
            let zeros = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < SPACE {
                f.write_all_at(&zeros, at).expect("zero-fill");
                at += zeros.len() as u64;
            }
        }
    }
    f.sync_all().expect("sync");
    f
}

fn fdatasync(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = vec![b'x'; WRITE];
    let mut g = c.benchmark_group("fdatasync_4KiB");
    g.sample_size(20);
    for (name, how) in [
        ("appended", Space::Grown),
        ("fallocated", Space::Fallocated),
        ("zero_filled", Space::ZeroFilled),
    ] {
        let mut f = prepare(dir.path(), how);
        let mut at = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                if at + WRITE as u64 > SPACE {
                    f = prepare(dir.path(), how);
                    at = 0;
                }
                f.write_all_at(&data, at).expect("write");
                f.sync_data().expect("fdatasync");
                at += WRITE as u64;
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fdatasync);
criterion_main!(benches);
