//! The log engine's file-system seam: every data file is a [`LogFile`], whose operations pass
//! named failpoints ([`crate::fail`]) and whose descriptor is opened on demand and closed again
//! under a per-core budget ([`Files`]).
//!
//! Descriptors are a process resource that a client must not be able to exhaust (a topic with
//! thousands of partitions would otherwise hold two per partition for good), and startup must not
//! depend on more of them than the running server could get. So a partition holds paths, not
//! descriptors: a file is opened when it is read, written or synced, and the budget closes the
//! least recently used ones (a clock: each open file gets a second chance if it was used since
//! the clock last passed it). Closing a file with unsynced data loses nothing: the data is in
//! the page cache and `fsync` on any later descriptor of the inode writes it (and, since Linux
//! 4.16, reports a write-back error that no descriptor has seen yet).

use crate::fail::{self, Action};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};

/// Failpoint of segment data writes.
pub const FP_WRITE: &str = "log::write";
/// Failpoint of offsets-log writes.
pub const FP_OFFSETS_WRITE: &str = "log::offsets_write";
/// Failpoint of data fsyncs (evaluated by whoever issues the fsync).
pub const FP_FSYNC: &str = "log::fsync";
/// Failpoint of the zero-filled space written ahead of a segment's appends.
pub const FP_PREALLOCATE: &str = "log::preallocate";
/// Failpoint of segment creation.
pub const FP_CREATE: &str = "log::create";
/// Failpoint of atomic file replacement (catalogs, offsets-log compaction).
pub const FP_REPLACE: &str = "log::replace";

/// Creates `dir` (and its parents) unless it exists. A path that exists but is not a directory
/// (say, a stray file named like a partition) is an error that says so, of kind
/// [`io::ErrorKind::NotADirectory`], rather than the `EEXIST` that creating it would report.
pub(crate) fn ensure_dir(dir: &Path) -> crate::Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(crate::LogError::io(
            "open",
            dir,
            io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        )),
        Err(_) => std::fs::create_dir_all(dir).map_err(|e| crate::LogError::io("mkdir", dir, e)),
    }
}

/// One core's budget of open log-file descriptors.
pub struct Files {
    max: usize,
    open: Cell<usize>,
    clock: RefCell<VecDeque<Weak<Slot>>>,
    opened: Cell<u64>,
    evicted: Cell<u64>,
}

impl Files {
    /// A budget of at most `max` open files (at least 4).
    pub fn new(max: usize) -> Rc<Self> {
        Rc::new(Self {
            max: max.max(4),
            open: Cell::new(0),
            clock: RefCell::new(VecDeque::new()),
            opened: Cell::new(0),
            evicted: Cell::new(0),
        })
    }

    /// Files open now.
    pub fn open_now(&self) -> usize {
        self.open.get()
    }

    /// The budget.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Files opened since start, and files closed to stay within the budget.
    pub fn counters(&self) -> (u64, u64) {
        (self.opened.get(), self.evicted.get())
    }

    fn admit(&self, slot: &Rc<Slot>) {
        self.open.set(self.open.get() + 1);
        self.opened.set(self.opened.get() + 1);
        let mut clock = self.clock.borrow_mut();
        clock.push_back(Rc::downgrade(slot));
        if clock.len() > 2 * self.max + 64 {
            clock.retain(|w| w.upgrade().is_some_and(|s| s.file.borrow().is_some()));
        }
        let mut passes = 2 * clock.len();
        while self.open.get() > self.max && passes > 0 {
            passes -= 1;
            let Some(w) = clock.pop_front() else { break };
            let Some(s) = w.upgrade() else { continue };
            if Rc::ptr_eq(&s, slot) {
                clock.push_back(w);
                continue;
            }
            if s.file.borrow().is_none() {
                continue;
            }
            if s.used.replace(false) {
                clock.push_back(w);
                continue;
            }
            s.file.borrow_mut().take();
            self.open.set(self.open.get() - 1);
            self.evicted.set(self.evicted.get() + 1);
        }
    }
}

struct Slot {
    path: PathBuf,
    file: RefCell<Option<Rc<File>>>,
    used: Cell<bool>,
    files: Rc<Files>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.file.get_mut().take().is_some() {
            self.files.open.set(self.files.open.get().saturating_sub(1));
        }
    }
}

/// A log file: a path, and a descriptor while the budget allows. Cloning shares the slot.
#[derive(Clone)]
pub struct LogFile(Rc<Slot>);

impl LogFile {
    /// Creates (or truncates) `path`, passing the `log::create` failpoint.
    pub fn create(files: &Rc<Files>, path: PathBuf) -> io::Result<Self> {
        if let Some(a) = fail::eval(FP_CREATE) {
            return Err(a.error());
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let lf = Self::at(files, path);
        *lf.0.file.borrow_mut() = Some(Rc::new(f));
        files.admit(&lf.0);
        Ok(lf)
    }

    /// Opens (creating if needed, never truncating) `path`.
    pub fn open_or_create(files: &Rc<Files>, path: PathBuf) -> io::Result<Self> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let lf = Self::at(files, path);
        *lf.0.file.borrow_mut() = Some(Rc::new(f));
        files.admit(&lf.0);
        Ok(lf)
    }

    /// An existing file at `path`, opened when first used.
    pub fn at(files: &Rc<Files>, path: PathBuf) -> Self {
        Self(Rc::new(Slot {
            path,
            file: RefCell::new(None),
            used: Cell::new(true),
            files: files.clone(),
        }))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// The open descriptor, opening the file if the budget closed it.
    pub fn handle(&self) -> io::Result<Rc<File>> {
        self.0.used.set(true);
        if let Some(f) = self.0.file.borrow().as_ref() {
            return Ok(f.clone());
        }
        let f = Rc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.0.path)?,
        );
        *self.0.file.borrow_mut() = Some(f.clone());
        self.0.files.admit(&self.0);
        Ok(f)
    }

    /// A descriptor of its own (for an fsync issued elsewhere, e.g. through io_uring).
    pub fn dup(&self) -> io::Result<File> {
        self.handle()?.try_clone()
    }

    /// Closes the descriptor now (the file stays usable; it is reopened when needed).
    pub fn close(&self) {
        if self.0.file.borrow_mut().take().is_some() {
            let files = &self.0.files;
            files.open.set(files.open.get().saturating_sub(1));
        }
    }

    /// Writes all of `data` at `pos`, passing failpoint `point`.
    pub fn write_all_at(&self, point: &'static str, data: &[u8], pos: u64) -> io::Result<()> {
        let f = self.handle()?;
        match fail::eval(point) {
            None => f.write_all_at(data, pos),
            Some(Action::Short(n)) => {
                f.write_all_at(&data[..n.min(data.len())], pos)?;
                Err(Action::Short(n).error())
            }
            Some(Action::Torn(n)) => {
                let _ = f.write_all_at(&data[..n.min(data.len())], pos);
                // A power cut in the middle of the write: nothing after this runs.
                std::process::abort();
            }
            Some(a) => Err(a.error()),
        }
    }

    /// Reads exactly `buf.len()` bytes at `pos`.
    pub fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.handle()?.read_exact_at(buf, pos)
    }

    /// The file's size on disk.
    pub fn size(&self) -> io::Result<u64> {
        Ok(self.handle()?.metadata()?.len())
    }

    /// Truncates (or extends) the file to `len`.
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        self.handle()?.set_len(len)
    }

    /// `fdatasync` on this thread, passing the `log::fsync` failpoint (recovery and tests; the
    /// gateway's group commit issues its fsyncs through io_uring).
    pub fn sync_data(&self) -> io::Result<()> {
        match fail::eval(FP_FSYNC) {
            None | Some(Action::Hang | Action::Delay(_)) => {}
            Some(a) => return Err(a.error()),
        }
        self.handle()?.sync_data()
    }

    /// When the file was last modified.
    pub fn modified(&self) -> io::Result<std::time::SystemTime> {
        std::fs::metadata(&self.0.path)?.modified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_closes_least_recently_used_and_reopens_on_use() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(4);
        let all: Vec<LogFile> = (0..10)
            .map(|i| {
                let f = LogFile::create(&files, dir.path().join(format!("{i}"))).unwrap();
                f.write_all_at(FP_WRITE, format!("file {i}").as_bytes(), 0)
                    .unwrap();
                assert!(files.open_now() <= 4);
                f
            })
            .collect();
        assert_eq!(files.open_now(), 4);
        for (i, f) in all.iter().enumerate() {
            let mut b = vec![0u8; 6];
            f.read_exact_at(&mut b, 0).unwrap();
            assert_eq!(b, format!("file {i}").as_bytes()[..6]);
            assert!(files.open_now() <= 4);
        }
        let (opened, evicted) = files.counters();
        assert!(opened >= 20 && evicted >= 16, "{opened} {evicted}");
        drop(all);
        assert_eq!(
            files.open_now(),
            0,
            "dropped slots give their descriptors back"
        );
    }

    #[test]
    fn failpoints_fail_writes_short_writes_and_fsyncs() {
        let _g = fail::test_lock();
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(8);
        let f = LogFile::create(&files, dir.path().join("x")).unwrap();
        fail::configure("log::write=1*enospc->1*short(3)->off;log::fsync=eio").unwrap();
        let e = f.write_all_at(FP_WRITE, b"abcdef", 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(28));
        assert_eq!(f.size().unwrap(), 0, "a failed write writes nothing");
        assert!(f.write_all_at(FP_WRITE, b"abcdef", 0).is_err());
        assert_eq!(
            f.size().unwrap(),
            3,
            "a short write leaves a partial write behind"
        );
        f.write_all_at(FP_WRITE, b"abcdef", 0).unwrap();
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(5));
        fail::clear();
        f.sync_data().unwrap();
    }
}
