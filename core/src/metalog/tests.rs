use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A directory of its own under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("kateway-metalog-{}-{name}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating a test directory");
        TempDir(dir)
    }

    fn log(&self) -> PathBuf {
        self.0.join("meta.log")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn open(path: &Path) -> Opened {
    MetaLog::open(path).expect("opening the log")
}

fn frame_len(record: &[u8]) -> u64 {
    (FRAME_HEADER + record.len()) as u64
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("stat").len()
}

#[test]
fn round_trip_and_reopen() {
    let dir = TempDir::new("round-trip");
    let path = dir.log();
    let opened = open(&path);
    assert!(opened.records.is_empty());
    assert_eq!(opened.dropped_bytes, 0);
    let mut log = opened.log;
    assert_eq!(log.len_bytes(), MAGIC.len() as u64);
    assert_eq!(fs::read(&path).expect("read"), MAGIC.to_vec());
    assert!(!tmp_path(&path).exists());

    log.append(br#"{"app":"a"}"#).expect("append");
    log.append_all(&[b"b", b"", b"c"]).expect("append_all");
    log.append_all(&[]).expect("append nothing");
    assert_eq!(log.records(), 4);
    assert_eq!(log.len_bytes(), file_len(&path));
    let len = log.len_bytes();
    drop(log);

    let opened = open(&path);
    assert_eq!(
        opened.records,
        vec![
            br#"{"app":"a"}"#.to_vec(),
            b"b".to_vec(),
            vec![],
            b"c".to_vec()
        ]
    );
    assert_eq!(opened.dropped_bytes, 0);
    assert_eq!(opened.log.records(), 4);
    assert_eq!(opened.log.len_bytes(), len);
}

#[test]
fn empty_and_large_records() {
    let dir = TempDir::new("sizes");
    let path = dir.log();
    let big: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let mut log = open(&path).log;
    log.append(b"").expect("empty record");
    log.append(&big).expect("1 MiB record");
    log.append(b"").expect("empty record");
    drop(log);
    let opened = open(&path);
    assert_eq!(opened.records, vec![vec![], big, vec![]]);
    assert_eq!(opened.dropped_bytes, 0);
}

#[test]
fn oversized_records_are_refused_whole() {
    let dir = TempDir::new("oversized");
    let path = dir.log();
    let mut log = open(&path).log;
    let huge = vec![0u8; MAX_RECORD + 1];
    let err = log.append_all(&[b"ok", &huge]).expect_err("too large");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(log.records(), 0);
    assert_eq!(file_len(&path), MAGIC.len() as u64);
    assert_eq!(
        log.rewrite(&[&huge]).expect_err("too large").kind(),
        io::ErrorKind::InvalidInput
    );
    log.append(b"next").expect("append after a refusal");
    drop(log);
    assert_eq!(open(&path).records, vec![b"next".to_vec()]);
}

/// Writes `records` to a fresh log at `path`, then applies `damage` to the file.
fn damaged(path: &Path, records: &[&[u8]], damage: impl FnOnce(&mut Vec<u8>)) {
    let mut log = open(path).log;
    log.append_all(records).expect("append");
    drop(log);
    let mut data = fs::read(path).expect("read");
    damage(&mut data);
    fs::write(path, &data).expect("write");
}

#[test]
fn a_torn_tail_is_dropped_and_appends_continue_after_it() {
    let dir = TempDir::new("torn");
    let path = dir.log();
    let third: &[u8] = b"third record";
    damaged(&path, &[b"one", b"two", third], |data| {
        data.truncate(data.len() - 3)
    });
    let good = file_len(&path) + 3 - frame_len(third);

    let opened = open(&path);
    assert_eq!(opened.records, vec![b"one".to_vec(), b"two".to_vec()]);
    assert_eq!(opened.dropped_bytes, frame_len(third) - 3);
    assert_eq!(file_len(&path), good);
    let mut log = opened.log;
    assert_eq!(log.len_bytes(), good);
    log.append(b"four").expect("append");
    drop(log);

    let opened = open(&path);
    assert_eq!(opened.dropped_bytes, 0);
    assert_eq!(
        opened.records,
        vec![b"one".to_vec(), b"two".to_vec(), b"four".to_vec()]
    );
}

#[test]
fn damage_followed_by_whole_records_is_refused_and_left_alone() {
    let dir = TempDir::new("middle");
    let path = dir.log();
    damaged(&path, &[b"one", b"revoke the key", b"three"], |data| {
        data[MAGIC.len() + FRAME_HEADER + 3 + FRAME_HEADER + 2] ^= 0x40;
    });
    let before = fs::read(&path).expect("read");
    let e = MetaLog::open(&path).map(|_| ()).expect_err("refused");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("restore"), "{e}");
    assert_eq!(fs::read(&path).expect("read"), before, "left alone");
    // Zeroes after a torn end are no records.
    let dir = TempDir::new("zeroes");
    let path = dir.log();
    damaged(&path, &[b"one", b"two"], |data| {
        data.truncate(data.len() - 2);
        data.extend_from_slice(&[0; 64]);
    });
    assert_eq!(open(&path).records, vec![b"one".to_vec()]);
}

#[test]
fn a_corrupt_last_payload_is_dropped() {
    let dir = TempDir::new("crc");
    let path = dir.log();
    damaged(&path, &[b"one", b"two"], |data| {
        let last = data.len() - 1;
        data[last] ^= 0x01;
    });
    let opened = open(&path);
    assert_eq!(opened.records, vec![b"one".to_vec()]);
    assert_eq!(opened.dropped_bytes, frame_len(b"two"));
    let mut log = opened.log;
    log.append(b"three").expect("append");
    drop(log);
    assert_eq!(
        open(&path).records,
        vec![b"one".to_vec(), b"three".to_vec()]
    );
}

#[test]
fn short_headers_and_huge_lengths_are_dropped() {
    let dir = TempDir::new("headers");
    let path = dir.log();
    damaged(&path, &[b"one"], |data| {
        data.extend_from_slice(&[1, 2, 3, 4, 5])
    });
    let opened = open(&path);
    assert_eq!(opened.records, vec![b"one".to_vec()]);
    assert_eq!(opened.dropped_bytes, 5);
    drop(opened);

    let dir = TempDir::new("huge-len");
    let path = dir.log();
    let huge = (MAX_RECORD as u32 + 1).to_le_bytes();
    damaged(&path, &[b"one"], |data| {
        data.extend_from_slice(&huge);
        data.extend_from_slice(&crc32c::crc32c(b"").to_le_bytes());
    });
    let opened = open(&path);
    assert_eq!(opened.records, vec![b"one".to_vec()]);
    assert_eq!(opened.dropped_bytes, 8);
}

#[test]
fn a_foreign_file_is_refused_and_left_alone() {
    let dir = TempDir::new("foreign");
    let path = dir.log();
    fs::write(&path, b"hello, world\n").expect("write");
    let err = MetaLog::open(&path).expect_err("not a log");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert_eq!(fs::read(&path).expect("read"), b"hello, world\n".to_vec());
    fs::write(&path, b"").expect("write");
    assert!(MetaLog::open(&path).is_err());
}

#[test]
fn rewrite_compacts() {
    let dir = TempDir::new("rewrite");
    let path = dir.log();
    let mut log = open(&path).log;
    for i in 0..10u8 {
        log.append(&[i; 100]).expect("append");
    }
    let before = log.len_bytes();
    log.rewrite(&[b"alpha", b"beta"]).expect("rewrite");
    assert_eq!(log.records(), 2);
    assert!(log.len_bytes() < before);
    assert_eq!(log.len_bytes(), file_len(&path));
    assert!(!tmp_path(&path).exists());
    log.append(b"gamma").expect("append after rewrite");
    assert_eq!(log.records(), 3);
    drop(log);

    let opened = open(&path);
    assert_eq!(opened.dropped_bytes, 0);
    assert_eq!(
        opened.records,
        vec![b"alpha".to_vec(), b"beta".to_vec(), b"gamma".to_vec()]
    );
    let mut log = opened.log;
    log.rewrite(&[]).expect("rewrite to nothing");
    drop(log);
    assert!(open(&path).records.is_empty());
}

#[test]
fn a_failed_rewrite_leaves_the_old_log() {
    let dir = TempDir::new("rewrite-fails");
    let path = dir.log();
    let mut log = open(&path).log;
    log.append(b"kept").expect("append");
    // A directory where the temporary file should go makes its creation fail.
    fs::create_dir(tmp_path(&path)).expect("mkdir");
    assert!(log.rewrite(&[b"lost"]).is_err());
    fs::remove_dir(tmp_path(&path)).expect("rmdir");
    log.append(b"after").expect("append after a failed rewrite");
    drop(log);
    assert_eq!(
        open(&path).records,
        vec![b"kept".to_vec(), b"after".to_vec()]
    );
}

#[test]
fn a_failed_append_leaves_no_partial_frame() {
    let dir = TempDir::new("append-fails");
    let path = dir.log();
    let mut log = open(&path).log;
    log.append(b"kept").expect("append");
    let len = log.len_bytes();
    // A read-only handle: the write fails, and so does the rollback, which makes the log
    // refuse appends until reopened.
    log.file = File::open(&path).expect("open read-only");
    assert!(log.append(b"lost").is_err());
    assert!(log.append(b"lost too").is_err());
    assert_eq!(log.records(), 1);
    assert_eq!(log.len_bytes(), len);
    drop(log);
    let opened = open(&path);
    assert_eq!(opened.records, vec![b"kept".to_vec()]);
    assert_eq!(opened.dropped_bytes, 0);
}

#[test]
fn a_relative_path_works() {
    assert_eq!(
        tmp_path(Path::new("meta.log")),
        PathBuf::from("meta.log.tmp")
    );
    assert!(sync_parent(Path::new("meta.log")).is_ok());
}
