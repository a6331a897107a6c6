//! The metadata log of the embedded backend: a small, durable, append-only file of records.
//!
//! It owns the file's format and its durability: apps, keys, grants and quotas are written as
//! records (opaque byte strings here; JSON to the caller), each durable before its write is
//! answered. Writes are rare and the file is small, so it is read whole when opened and
//! compacted by rewriting it whole.
//!
//! Format: the header [`MAGIC`], then frames `len: u32 LE | crc32c(payload): u32 LE | payload`,
//! a payload at most [`MAX_RECORD`] bytes. Opening reads frames up to the end of the file or
//! the first bad one (short, CRC mismatch, length over the maximum) and truncates the file
//! there: what a crash tore off the tail is dropped, and [`Opened::dropped_bytes`] says how much
//! so that the caller can log it. A bad frame with whole records after it is damage, not a torn
//! end: dropping those records could undo a revocation, so the file is refused and left alone.
//!
//! An append that fails is rolled back (the file is cut back to its previous length) so that no
//! later append lands after a partial frame. If the rollback or the sync itself fails, what the
//! disk holds is unknown and the log refuses further appends until it is opened again.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The first bytes of a metadata log.
pub const MAGIC: &[u8; 8] = b"KWMETA1\n";

/// The largest record, in bytes (16 MiB).
pub const MAX_RECORD: usize = 16 << 20;

/// The bytes before each payload: its length and its CRC-32C.
const FRAME_HEADER: usize = 8;

/// An open metadata log, positioned for appending.
#[derive(Debug)]
pub struct MetaLog {
    file: File,
    path: PathBuf,
    len: u64,
    records: usize,
    /// Set when a failed sync or rollback left the file's contents unknown.
    broken: bool,
}

/// What [`MetaLog::open`] found.
#[derive(Debug)]
pub struct Opened {
    /// The log, ready for appending.
    pub log: MetaLog,
    /// Every record in the file, in order.
    pub records: Vec<Vec<u8>>,
    /// Bytes of a torn or corrupt tail that were truncated away (0 for a clean file).
    pub dropped_bytes: u64,
}

impl MetaLog {
    /// Opens the log at `path`, creating it (with its header, the file and its directory
    /// fsynced) when there is none. A torn or corrupt tail is truncated away and reported in
    /// [`Opened::dropped_bytes`]; damage with whole records after it, and a file that does not
    /// start with [`MAGIC`], are refused with `InvalidData` and the file left alone.
    pub fn open(path: &Path) -> io::Result<Opened> {
        let mut file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Self::create(path),
            Err(e) => return Err(e),
        };
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let scan = scan(&data)?;
        let dropped_bytes = (data.len() - scan.end) as u64;
        if dropped_bytes > 0 {
            file.set_len(scan.end as u64)?;
            file.sync_all()?;
        }
        let log = MetaLog {
            file,
            path: path.to_path_buf(),
            len: scan.end as u64,
            records: scan.records.len(),
            broken: false,
        };
        Ok(Opened {
            log,
            records: scan.records,
            dropped_bytes,
        })
    }

    /// Creates an empty log at `path`, atomically (a temporary file renamed into place).
    fn create(path: &Path) -> io::Result<Opened> {
        let (file, len) = replace(path, &encode_log(&[])?)?;
        let log = MetaLog {
            file,
            path: path.to_path_buf(),
            len,
            records: 0,
            broken: false,
        };
        Ok(Opened {
            log,
            records: Vec::new(),
            dropped_bytes: 0,
        })
    }

    /// Appends one record and syncs the file's data (`fdatasync`) before returning.
    pub fn append(&mut self, record: &[u8]) -> io::Result<()> {
        self.append_all(&[record])
    }

    /// Appends several records with one write and one sync. Either all of them are appended
    /// or, on error, none (a record over [`MAX_RECORD`] is refused with `InvalidInput` before
    /// anything is written).
    pub fn append_all(&mut self, records: &[&[u8]]) -> io::Result<()> {
        self.usable()?;
        let mut frames = Vec::new();
        for record in records {
            encode_frame(record, &mut frames)?;
        }
        if frames.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.write_at_end(&frames) {
            self.roll_back();
            return Err(e);
        }
        if let Err(e) = self.file.sync_data() {
            self.roll_back();
            self.broken = true;
            return Err(e);
        }
        self.len += frames.len() as u64;
        self.records += records.len();
        Ok(())
    }

    /// Replaces the whole log with `records` (compaction): writes `<path>.tmp`, fsyncs it,
    /// renames it over the log, fsyncs the directory, and appends to the new file from then
    /// on. An error before the rename leaves the old log untouched and in use; an error in the
    /// directory's fsync, after it, leaves the new log in place but refusing appends until
    /// reopened, since whether the rename is durable is unknown.
    pub fn rewrite(&mut self, records: &[&[u8]]) -> io::Result<()> {
        let contents = encode_log(records)?;
        let tmp = tmp_path(&self.path);
        let file = write_file(&tmp, &contents)?;
        if let Err(e) = fs::rename(&tmp, &self.path) {
            // Best effort: a stale temporary file is overwritten by the next rewrite anyway.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.file = file;
        self.len = contents.len() as u64;
        self.records = records.len();
        self.broken = false;
        if let Err(e) = sync_parent(&self.path) {
            self.broken = true;
            return Err(e);
        }
        Ok(())
    }

    /// The file's length in bytes, header included.
    pub fn len_bytes(&self) -> u64 {
        self.len
    }

    /// The number of records in the file.
    pub fn records(&self) -> usize {
        self.records
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `Err` when an earlier failure left the log needing to be reopened.
    fn usable(&self) -> io::Result<()> {
        if self.broken {
            Err(io::Error::other(format!(
                "metadata log {} failed to sync or roll back; reopen it",
                self.path.display()
            )))
        } else {
            Ok(())
        }
    }

    /// Writes `bytes` after the last whole frame.
    fn write_at_end(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(self.len))?;
        self.file.write_all(bytes)
    }

    /// Cuts the file back to its last whole frame after a failed append; if even that fails,
    /// marks the log unusable.
    fn roll_back(&mut self) {
        if self.file.set_len(self.len).is_err() {
            self.broken = true;
        }
    }
}

/// The records of a log file's contents and where the last good frame ends.
struct Scan {
    records: Vec<Vec<u8>>,
    end: usize,
}

/// Reads `data` (a whole log file) up to its end or its first bad frame.
fn scan(data: &[u8]) -> io::Result<Scan> {
    if !data.starts_with(MAGIC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a kateway metadata log (bad header)",
        ));
    }
    let mut records = Vec::new();
    let mut end = MAGIC.len();
    while let Some((payload, frame_len)) = read_frame(&data[end..]) {
        records.push(payload.to_vec());
        end += frame_len;
    }
    // A torn end (a write that was never acknowledged) has no whole frame after it; damage in
    // the middle does. Dropping what follows damage could bring back what it undid (a revoked
    // key): refused, and the file left alone.
    // (Empty frames do not count: zeroes, as a torn write may leave, make one.)
    let whole = |i: usize| read_frame(&data[i..]).is_some_and(|(p, _)| !p.is_empty());
    if let Some(at) = (end + 1..data.len()).find(|&i| whole(i)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "damaged at byte {end}, with whole records after it (from byte {at}): restore it from a backup"
            ),
        ));
    }
    Ok(Scan { records, end })
}

/// The payload of the frame at the start of `data` and the frame's length, or `None` when
/// there is no whole, valid frame there.
fn read_frame(data: &[u8]) -> Option<(&[u8], usize)> {
    let header = data.get(..FRAME_HEADER)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_RECORD {
        return None;
    }
    let payload = data.get(FRAME_HEADER..FRAME_HEADER + len)?;
    (crc32c::crc32c(payload) == crc).then_some((payload, FRAME_HEADER + len))
}

/// Appends the frame of `record` to `out`; `InvalidInput` for a record over [`MAX_RECORD`].
fn encode_frame(record: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    if record.len() > MAX_RECORD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "metadata record of {} bytes exceeds the maximum of {MAX_RECORD}",
                record.len()
            ),
        ));
    }
    // MAX_RECORD fits a u32.
    out.extend_from_slice(&(record.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(record).to_le_bytes());
    out.extend_from_slice(record);
    Ok(())
}

/// A whole log file holding `records`.
fn encode_log(records: &[&[u8]]) -> io::Result<Vec<u8>> {
    let mut out = MAGIC.to_vec();
    for record in records {
        encode_frame(record, &mut out)?;
    }
    Ok(out)
}

/// `<path>.tmp`.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".tmp");
    PathBuf::from(name)
}

/// Puts a file holding `contents` at `path` atomically: written and fsynced as `<path>.tmp`,
/// renamed into place, the directory fsynced. Returns the file, open for reading and writing,
/// and its length.
fn replace(path: &Path, contents: &[u8]) -> io::Result<(File, u64)> {
    let tmp = tmp_path(path);
    let file = write_file(&tmp, contents)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_parent(path)?;
    Ok((file, contents.len() as u64))
}

/// Creates (or truncates) the file at `path`, writes `contents` and fsyncs it; on error removes
/// it again, best effort.
fn write_file(path: &Path, contents: &[u8]) -> io::Result<File> {
    let write = || -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        // Readable by the gateway's user only: key hashes are no secrets, but no one else's.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(contents)?;
        file.sync_all()?;
        Ok(file)
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(path);
    })
}

/// Fsyncs the directory holding `path`, so that a creation or rename there is durable.
#[cfg(unix)]
fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Directories cannot be fsynced portably outside Unix; the rename is as durable as the
/// platform makes it.
#[cfg(not(unix))]
fn sync_parent(_path: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests;
