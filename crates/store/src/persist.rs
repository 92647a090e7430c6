//! On-disk state of a persistent [`crate::EmbeddedStore`]: a lock file, a snapshot and a
//! write-ahead log.
//!
//! Layout of the data directory:
//!
//! * `LOCK` — held with `flock(LOCK_EX)` while a store has the directory open (contains the pid
//!   of the holder, for humans). The kernel releases it when the process dies.
//! * `snapshot` — the whole state at one log sequence number: magic `ILNSNP01`, then one frame.
//!   Replaced atomically (written to `snapshot.tmp`, fsync'd, renamed, directory fsync'd).
//! * `wal` — the write-ahead log of committed changes since (or around) the snapshot: magic
//!   `ILNWAL01`, then frames, one per committed change, appended and fsync'd before the change
//!   is applied and acknowledged.
//!
//! A frame is `len: u64 LE | crc: u32 LE | payload (len bytes)`, where `crc` is the CRC-32
//! (IEEE) of the 8 length bytes followed by the payload. Loading stops at a torn tail (a frame
//! cut short, or a last frame with a bad checksum, or zeros to the end of the file: what a
//! crash during an append leaves) and drops it; a bad frame followed by more data is
//! corruption and an error naming the file and the offset.
//!
//! Every log record carries a sequence number (`lsn`); the snapshot records the last one it
//! includes, so records already in the snapshot are skipped if a crash hit between writing the
//! snapshot and emptying the log.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::StoreError;

const WAL_MAGIC: &[u8; 8] = b"ILNWAL01";
const SNAPSHOT_MAGIC: &[u8; 8] = b"ILNSNP01";
const FRAME_HEADER: usize = 12;
/// How long `open` waits for a lock held by a store being dropped (in this process or a dying
/// one) before it reports the directory as in use.
const LOCK_WAIT: Duration = Duration::from_millis(500);

/// File names inside the data directory.
pub(crate) const LOCK_FILE: &str = "LOCK";
pub(crate) const SNAPSHOT_FILE: &str = "snapshot";
pub(crate) const SNAPSHOT_TMP_FILE: &str = "snapshot.tmp";
pub(crate) const WAL_FILE: &str = "wal";

/// One change inside a log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Set a key (attached to `lease`, 0 = none).
    Put {
        key: String,
        value: Arc<[u8]>,
        lease: i64,
    },
    /// Remove a key.
    Delete { key: String },
    /// A lease was granted.
    Grant { id: i64, ttl: Duration },
    /// A lease ended (revoked or expired); its keys are deleted by `Delete` ops of the same
    /// record.
    Revoke { id: i64 },
    /// The history before this revision was compacted.
    Compact { revision: i64 },
}

/// One committed change: the store revision after it and its operations, applied atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogRecord {
    pub lsn: u64,
    pub revision: i64,
    pub ops: Vec<Op>,
}

/// The whole state, as in the snapshot file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SnapshotState {
    pub lsn: u64,
    pub revision: i64,
    pub compact_revision: i64,
    pub next_lease: i64,
    pub leases: Vec<(i64, Duration)>,
    pub kv: Vec<(String, Arc<[u8]>, i64)>,
}

/// What [`DataDir::open`] found on disk.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub snapshot: Option<SnapshotState>,
    /// Log records after the snapshot, in order.
    pub records: Vec<LogRecord>,
}

/// An open, locked data directory.
#[derive(Debug)]
pub(crate) struct DataDir {
    dir: PathBuf,
    /// Holds the flock for as long as the store lives.
    _lock: File,
    wal: File,
    wal_len: u64,
    snapshot_len: u64,
    next_lsn: u64,
    /// Set after a failed write that could not be undone: no more writes.
    failed: Option<String>,
}

fn dir_err(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::DataDir {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn io_ctx<'a>(path: &'a Path, what: &str) -> impl FnOnce(io::Error) -> StoreError + 'a {
    let what = what.to_string();
    move |e| dir_err(path, format!("{what}: {e}"))
}

impl DataDir {
    /// Creates (if needed) and locks `dir`, then reads the snapshot and the log.
    pub(crate) fn open(dir: &Path) -> Result<(DataDir, Loaded), StoreError> {
        fs::create_dir_all(dir).map_err(io_ctx(dir, "creating the data directory"))?;
        let lock = lock_dir(dir)?;
        let snap_path = dir.join(SNAPSHOT_FILE);
        let (snapshot, snapshot_len) = match fs::read(&snap_path) {
            Ok(bytes) => {
                let len = bytes.len() as u64;
                (Some(read_snapshot(&snap_path, &bytes)?), len)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (None, 0),
            Err(e) => return Err(dir_err(&snap_path, format!("reading: {e}"))),
        };
        // A leftover of a crash while writing a snapshot: never renamed, so never valid.
        let _ = fs::remove_file(dir.join(SNAPSHOT_TMP_FILE));

        let wal_path = dir.join(WAL_FILE);
        let mut wal = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&wal_path)
            .map_err(io_ctx(&wal_path, "opening"))?;
        let mut bytes = Vec::new();
        wal.read_to_end(&mut bytes)
            .map_err(io_ctx(&wal_path, "reading"))?;
        let after = snapshot.as_ref().map_or(0, |s| s.lsn);
        let (all, valid_len) = if bytes.len() < WAL_MAGIC.len() {
            // New, or cut short while its header was written (nothing committed yet).
            (Vec::new(), 0)
        } else {
            read_wal(&wal_path, &bytes)?
        };
        let last_lsn = all.last().map_or(after, |r| r.lsn.max(after));
        let records: Vec<LogRecord> = all.into_iter().filter(|r| r.lsn > after).collect();
        if valid_len < bytes.len() as u64 && valid_len > 0 {
            log::warn!(
                "embedded store: {}: dropping a torn tail of {} bytes at offset {valid_len} \
                 (an interrupted write)",
                wal_path.display(),
                bytes.len() as u64 - valid_len
            );
        }
        let mut wal_len = valid_len;
        if wal_len == 0 {
            wal.set_len(0).map_err(io_ctx(&wal_path, "truncating"))?;
            write_all_at_end(&mut wal, WAL_MAGIC).map_err(io_ctx(&wal_path, "writing"))?;
            wal.sync_all().map_err(io_ctx(&wal_path, "syncing"))?;
            sync_dir(dir)?;
            wal_len = WAL_MAGIC.len() as u64;
        } else if wal_len < bytes.len() as u64 {
            wal.set_len(wal_len)
                .map_err(io_ctx(&wal_path, "truncating the torn tail"))?;
            wal.sync_all().map_err(io_ctx(&wal_path, "syncing"))?;
        }
        Ok((
            DataDir {
                dir: dir.to_path_buf(),
                _lock: lock,
                wal,
                wal_len,
                snapshot_len,
                next_lsn: last_lsn + 1,
                failed: None,
            },
            Loaded { snapshot, records },
        ))
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// Current size of the log file.
    pub(crate) fn wal_len(&self) -> u64 {
        self.wal_len
    }

    /// Size of the snapshot file as last written or read (0: none).
    pub(crate) fn snapshot_len(&self) -> u64 {
        self.snapshot_len
    }

    fn check_usable(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(reason) => Err(dir_err(
                &self.dir,
                format!("no more writes after an earlier failure: {reason}"),
            )),
            None => Ok(()),
        }
    }

    /// Appends one record and fsyncs it. On error nothing is committed (the partial frame is
    /// cut off again; if even that fails, the directory refuses further writes).
    pub(crate) fn append(&mut self, revision: i64, ops: &[Op]) -> Result<(), StoreError> {
        self.check_usable()?;
        let rec = LogRecord {
            lsn: self.next_lsn,
            revision,
            ops: ops.to_vec(),
        };
        let frame = frame(&encode_record(&rec));
        let path = self.dir.join(WAL_FILE);
        let result = write_all_at_end(&mut self.wal, &frame).and_then(|()| self.wal.sync_data());
        match result {
            Ok(()) => {
                self.wal_len += frame.len() as u64;
                self.next_lsn += 1;
                Ok(())
            }
            Err(e) => {
                let reason = format!("appending a record at offset {}: {e}", self.wal_len);
                if let Err(e2) = self
                    .wal
                    .set_len(self.wal_len)
                    .and_then(|()| self.wal.sync_all())
                {
                    self.failed = Some(format!("{reason}; then cutting it off: {e2}"));
                }
                Err(dir_err(&path, reason))
            }
        }
    }

    /// The lsn the snapshot of the current state (after every appended record) carries.
    pub(crate) fn last_lsn(&self) -> u64 {
        self.next_lsn - 1
    }

    /// Writes `state` as the new snapshot (atomically) and empties the log.
    pub(crate) fn write_snapshot(&mut self, state: &SnapshotState) -> Result<(), StoreError> {
        self.check_usable()?;
        let tmp = self.dir.join(SNAPSHOT_TMP_FILE);
        let path = self.dir.join(SNAPSHOT_FILE);
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(SNAPSHOT_MAGIC);
        bytes.extend_from_slice(&frame(&encode_snapshot(state)));
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(dir_err(&tmp, format!("writing the snapshot: {e}")));
        }
        fs::rename(&tmp, &path).map_err(io_ctx(&path, "renaming the new snapshot into place"))?;
        sync_dir(&self.dir)?;
        self.snapshot_len = bytes.len() as u64;
        // The snapshot holds everything: the log may go. Records left there by a crash before
        // this point are skipped on load (their lsn is not above the snapshot's).
        let wal_path = self.dir.join(WAL_FILE);
        let reset = self
            .wal
            .set_len(WAL_MAGIC.len() as u64)
            .and_then(|()| self.wal.sync_all());
        match reset {
            Ok(()) => {
                self.wal_len = WAL_MAGIC.len() as u64;
                Ok(())
            }
            Err(e) => {
                let reason = format!("emptying the log after a snapshot: {e}");
                self.failed = Some(reason.clone());
                Err(dir_err(&wal_path, reason))
            }
        }
    }
}

/// Opens and flocks `<dir>/LOCK`, waiting briefly for a holder that is letting go.
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let mut f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_ctx(&path, "opening the lock file"))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(dir_err(&path, format!("locking: {e}")));
        }
        if Instant::now() >= deadline {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another store".to_string()
            } else {
                format!("another store (pid {holder})")
            };
            return Err(dir_err(
                dir,
                format!("already in use by {who}: {} is locked", path.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = format!("{}\n", std::process::id());
    let _ = f
        .set_len(0)
        .and_then(|()| write_all_at_end(&mut f, pid.as_bytes()));
    Ok(f)
}

fn write_all_at_end(f: &mut File, bytes: &[u8]) -> io::Result<()> {
    use std::io::Seek;
    f.seek(io::SeekFrom::End(0))?;
    f.write_all(bytes)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_ctx(dir, "syncing the directory"))
}

// ---------------------------------------------------------------------------------------------
// Frames

fn frame(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut crc = Crc32::new();
    crc.update(&len);
    crc.update(payload);
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.finish().to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads the frame at `offset`: `Ok(Some((payload, next offset)))`, `Ok(None)` for a torn tail
/// (the file ends inside it, or it is the last thing in the file and its checksum is wrong,
/// or only zeros follow), `Err` for a bad frame followed by more data.
fn read_frame<'a>(
    path: &Path,
    bytes: &'a [u8],
    offset: usize,
) -> Result<Option<(&'a [u8], usize)>, StoreError> {
    let rest = &bytes[offset..];
    if rest.len() < FRAME_HEADER {
        return Ok(None);
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&rest[..8]);
    let mut crc4 = [0u8; 4];
    crc4.copy_from_slice(&rest[8..12]);
    let len = u64::from_le_bytes(len8);
    let available = (rest.len() - FRAME_HEADER) as u64;
    if len > available {
        return Ok(None);
    }
    let end = FRAME_HEADER + len as usize;
    let payload = &rest[FRAME_HEADER..end];
    let mut crc = Crc32::new();
    crc.update(&len8);
    crc.update(payload);
    if crc.finish() == u32::from_le_bytes(crc4) {
        return Ok(Some((payload, offset + end)));
    }
    if end == rest.len() || rest.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    Err(dir_err(
        path,
        format!(
            "corrupt record at offset {offset}: checksum mismatch, and {} more bytes follow \
             (not an interrupted write; restore the file or remove the directory to start empty)",
            rest.len() - end
        ),
    ))
}

fn read_wal(path: &Path, bytes: &[u8]) -> Result<(Vec<LogRecord>, u64), StoreError> {
    if &bytes[..WAL_MAGIC.len()] != WAL_MAGIC {
        return Err(dir_err(
            path,
            "not an ilanet store log (bad magic at offset 0)",
        ));
    }
    let mut offset = WAL_MAGIC.len();
    let mut records = Vec::new();
    while let Some((payload, next)) = read_frame(path, bytes, offset)? {
        let rec = decode_record(payload).map_err(|e| {
            dir_err(
                path,
                format!("corrupt record at offset {offset} (checksum ok): {e}"),
            )
        })?;
        if let Some(prev) = records.last().map(|r: &LogRecord| r.lsn) {
            if rec.lsn <= prev {
                return Err(dir_err(
                    path,
                    format!(
                        "record at offset {offset} has sequence number {} after {prev}",
                        rec.lsn
                    ),
                ));
            }
        }
        records.push(rec);
        offset = next;
    }
    Ok((records, offset as u64))
}

fn read_snapshot(path: &Path, bytes: &[u8]) -> Result<SnapshotState, StoreError> {
    if bytes.len() < SNAPSHOT_MAGIC.len() || &bytes[..SNAPSHOT_MAGIC.len()] != SNAPSHOT_MAGIC {
        return Err(dir_err(
            path,
            "not an ilanet store snapshot (bad magic at offset 0)",
        ));
    }
    let offset = SNAPSHOT_MAGIC.len();
    // The snapshot is renamed into place only when complete: any damage is corruption.
    let payload = match read_frame(path, bytes, offset) {
        Ok(Some((payload, end))) if end == bytes.len() => payload,
        Ok(Some((_, end))) => {
            return Err(dir_err(
                path,
                format!("{} unexpected bytes at offset {end}", bytes.len() - end),
            ))
        }
        Ok(None) | Err(_) => {
            return Err(dir_err(
                path,
                format!("corrupt snapshot at offset {offset}: truncated or checksum mismatch"),
            ))
        }
    };
    decode_snapshot(payload)
        .map_err(|e| dir_err(path, format!("corrupt snapshot at offset {offset}: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Encoding

struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn duration(&mut self, d: Duration) {
        self.u64(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }
}

struct Dec<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() - self.pos < n {
            return Err(format!(
                "{n} bytes needed at payload offset {}, {} left",
                self.pos,
                self.b.len() - self.pos
            ));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn i64(&mut self) -> Result<i64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(a))
    }
    fn len(&mut self) -> Result<usize, String> {
        let n = self.u64()?;
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.b.len() - self.pos)
            .ok_or_else(|| format!("length {n} at payload offset {} too large", self.pos - 8))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.len()?;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, String> {
        let at = self.pos;
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| format!("key at payload offset {at} is not UTF-8"))
    }
    fn duration(&mut self) -> Result<Duration, String> {
        Ok(Duration::from_nanos(self.u64()?))
    }
    fn count(&mut self, min_item_bytes: usize) -> Result<usize, String> {
        let n = self.u64()?;
        // Each item takes at least `min_item_bytes`: a count beyond that is garbage.
        usize::try_from(n)
            .ok()
            .filter(|n| n.saturating_mul(min_item_bytes) <= self.b.len() - self.pos)
            .ok_or_else(|| format!("count {n} at payload offset {} too large", self.pos - 8))
    }
    fn end(&self) -> Result<(), String> {
        if self.pos != self.b.len() {
            return Err(format!("{} trailing bytes", self.b.len() - self.pos));
        }
        Ok(())
    }
}

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_GRANT: u8 = 3;
const OP_REVOKE: u8 = 4;
const OP_COMPACT: u8 = 5;

pub(crate) fn encode_record(r: &LogRecord) -> Vec<u8> {
    let mut e = Enc(Vec::new());
    e.u64(r.lsn);
    e.i64(r.revision);
    e.u64(r.ops.len() as u64);
    for op in &r.ops {
        match op {
            Op::Put { key, value, lease } => {
                e.u8(OP_PUT);
                e.bytes(key.as_bytes());
                e.bytes(value);
                e.i64(*lease);
            }
            Op::Delete { key } => {
                e.u8(OP_DELETE);
                e.bytes(key.as_bytes());
            }
            Op::Grant { id, ttl } => {
                e.u8(OP_GRANT);
                e.i64(*id);
                e.duration(*ttl);
            }
            Op::Revoke { id } => {
                e.u8(OP_REVOKE);
                e.i64(*id);
            }
            Op::Compact { revision } => {
                e.u8(OP_COMPACT);
                e.i64(*revision);
            }
        }
    }
    e.0
}

pub(crate) fn decode_record(b: &[u8]) -> Result<LogRecord, String> {
    let mut d = Dec { b, pos: 0 };
    let lsn = d.u64()?;
    let revision = d.i64()?;
    let n = d.count(9)?;
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        let at = d.pos;
        let op = match d.u8()? {
            OP_PUT => Op::Put {
                key: d.string()?,
                value: d.bytes()?.into(),
                lease: d.i64()?,
            },
            OP_DELETE => Op::Delete { key: d.string()? },
            OP_GRANT => Op::Grant {
                id: d.i64()?,
                ttl: d.duration()?,
            },
            OP_REVOKE => Op::Revoke { id: d.i64()? },
            OP_COMPACT => Op::Compact { revision: d.i64()? },
            other => return Err(format!("unknown operation {other} at payload offset {at}")),
        };
        ops.push(op);
    }
    d.end()?;
    Ok(LogRecord { lsn, revision, ops })
}

fn encode_snapshot(s: &SnapshotState) -> Vec<u8> {
    let size: usize = s.kv.iter().map(|(k, v, _)| k.len() + v.len() + 24).sum();
    let mut e = Enc(Vec::with_capacity(size + 64 + 16 * s.leases.len()));
    e.u64(s.lsn);
    e.i64(s.revision);
    e.i64(s.compact_revision);
    e.i64(s.next_lease);
    e.u64(s.leases.len() as u64);
    for (id, ttl) in &s.leases {
        e.i64(*id);
        e.duration(*ttl);
    }
    e.u64(s.kv.len() as u64);
    for (k, v, lease) in &s.kv {
        e.bytes(k.as_bytes());
        e.bytes(v);
        e.i64(*lease);
    }
    e.0
}

fn decode_snapshot(b: &[u8]) -> Result<SnapshotState, String> {
    let mut d = Dec { b, pos: 0 };
    let mut s = SnapshotState {
        lsn: d.u64()?,
        revision: d.i64()?,
        compact_revision: d.i64()?,
        next_lease: d.i64()?,
        ..SnapshotState::default()
    };
    let n = d.count(16)?;
    for _ in 0..n {
        s.leases.push((d.i64()?, d.duration()?));
    }
    let n = d.count(24)?;
    for _ in 0..n {
        s.kv.push((d.string()?, d.bytes()?.into(), d.i64()?));
    }
    d.end()?;
    Ok(s)
}

// ---------------------------------------------------------------------------------------------
// CRC-32 (IEEE 802.3, reflected, as zlib's crc32)

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

struct Crc32(u32);

impl Crc32 {
    fn new() -> Self {
        Crc32(0xFFFF_FFFF)
    }
    fn update(&mut self, bytes: &[u8]) {
        let mut c = self.0;
        for b in bytes {
            c = CRC_TABLE[((c ^ u32::from(*b)) & 0xFF) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }
    fn finish(&self) -> u32 {
        self.0 ^ 0xFFFF_FFFF
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_zlib() {
        let mut c = Crc32::new();
        c.update(b"123456789");
        assert_eq!(c.finish(), 0xCBF4_3926);
    }

    #[test]
    fn records_and_snapshots_round_trip() {
        let rec = LogRecord {
            lsn: 7,
            revision: 42,
            ops: vec![
                Op::Put {
                    key: "/k".into(),
                    value: Arc::from(&b"v"[..]),
                    lease: 3,
                },
                Op::Delete { key: "/d".into() },
                Op::Grant {
                    id: 3,
                    ttl: Duration::from_millis(1500),
                },
                Op::Revoke { id: 3 },
                Op::Compact { revision: 40 },
            ],
        };
        assert_eq!(decode_record(&encode_record(&rec)), Ok(rec.clone()));
        let enc = encode_record(&rec);
        for cut in 0..enc.len() {
            assert!(decode_record(&enc[..cut]).is_err(), "cut at {cut}");
        }
        let snap = SnapshotState {
            lsn: 9,
            revision: 5,
            compact_revision: 2,
            next_lease: 11,
            leases: vec![(10, Duration::from_secs(3))],
            kv: vec![("/a".into(), Arc::from(&b"x"[..]), 10)],
        };
        assert_eq!(decode_snapshot(&encode_snapshot(&snap)), Ok(snap));
        // A garbage count does not allocate its way into an abort.
        let mut bad = encode_record(&rec);
        bad[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_record(&bad).is_err());
    }
}
