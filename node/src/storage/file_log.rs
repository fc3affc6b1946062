//! A group's Raft log in append-only segment files, implementing openraft's `RaftLogStorage`.
//!
//! Why not a sled tree: on every replica each put went through sled three times (log insert,
//! log remove at purge, state-machine insert), and every group commit flushed the whole sled
//! database, so sled sealed and wrote a buffer per flush. Here an entry is written once,
//! sequentially, and made durable by `fdatasync` (stronger than the `sync_file_range` sled
//! flushes with). sled keeps the vote, the purge marker and the state machine; it is flushed
//! where those need it (votes, and before a purge drops entries the state machine would need to
//! replay after a crash).
//!
//! Layout: `DIR/{first index:020}.wal` segments, each holding consecutive entries. A record is
//! `len: u32 | crc32: u32 | bincode Entry` (little endian, the checksum covers the entry bytes).
//! A segment is synced before the next one starts, so only the newest segment can end in a torn
//! record, and opening cuts such a tail off; a bad record anywhere else is corruption and the
//! group refuses to start. Entries at or below the purge marker may linger in the oldest
//! segment until it is deleted as a whole; opening skips them.
//!
//! The newest segment is kept zero-filled [`PREALLOCATE`] bytes ahead of its last record, so
//! that an append overwrites blocks the file already has, within its size: its `fdatasync` then
//! writes the data alone, where growing the file made every sync write the inode as well
//! (~30 % more CPU per sync here). A zero length where a record header is due marks the end of
//! the records; closing a segment and opening the newest one cut the zeros off again, so that
//! nothing but records ever follows a record in a segment that is not the newest.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend};

use super::raft_meta::RaftMeta;
use super::{off_worker, read_err, DurableAcks, Flusher};
use crate::types::{Entry, GroupId, LogId, StorageError, TypeConfig, Vote};

/// A segment that reaches this size is closed and the next append starts a new one, so that
/// purged entries free their space in whole files. The default of `--log-segment-bytes`.
pub const SEGMENT_BYTES: u64 = 32 << 20;
const HEADER: usize = 8;
/// Larger than any entry the node accepts (values are limited to a few MiB); a bigger length in
/// a header is a torn or corrupt record, not an allocation to attempt.
const MAX_RECORD: usize = 256 << 20;
const SUFFIX: &str = ".wal";
/// Encoded bytes of the newest entries kept in memory as well (see [`Segments::cache`]).
const CACHE_BYTES: usize = 1 << 20;
/// Zeros kept written ahead of the newest segment's records (see the module doc): an idle
/// group's log costs at most this much disk beyond its records.
const PREALLOCATE: u64 = 1 << 20;

/// One group's log store. Clones share the same files.
#[derive(Clone)]
pub struct FileLog {
    group: GroupId,
    inner: Arc<Mutex<Segments>>,
    meta: RaftMeta,
    flusher: Flusher,
    acks: DurableAcks,
}

struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Where the records end.
    len: u64,
    /// The file's size: records, then zeros.
    allocated: u64,
}

impl Segment {
    /// Makes sure zeros are written up to at least `upto`, extending by whole
    /// [`PREALLOCATE`] steps. Not synced here: the group-commit sync after the next append
    /// covers them, once per step.
    fn preallocate(&mut self, upto: u64) -> io::Result<()> {
        if upto <= self.allocated {
            return Ok(());
        }
        // Static: a fresh zeroed buffer per step cost a memset and a page fault per page.
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let target = upto.next_multiple_of(PREALLOCATE);
        while self.allocated < target {
            let step = (target - self.allocated).min(ZEROS.len() as u64);
            self.file
                .write_all_at(&ZEROS[..step as usize], self.allocated)?;
            self.allocated += step;
        }
        Ok(())
    }

    /// Cuts the file back to its records and syncs it, size included.
    fn trim(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_all()?;
        self.len = len;
        self.allocated = len;
        Ok(())
    }
}

/// Where one entry lives.
#[derive(Clone, Copy)]
struct Loc {
    log_id: LogId,
    /// The `first` of its segment.
    segment: u64,
    offset: u64,
    len: u32,
}

struct Segments {
    dir: PathBuf,
    /// Oldest first; appends go to the last one.
    segments: Vec<Segment>,
    /// One per entry in the log, consecutive indexes.
    locs: VecDeque<Loc>,
    /// The newest entries, with their record lengths, a suffix of `locs`: the leader replicates
    /// and every replica applies an entry right after appending it, and reading it back from
    /// here saves a `pread`, a checksum and a decode. At most [`CACHE_BYTES`] of records.
    cache: VecDeque<(Entry, u32)>,
    cache_bytes: usize,
    /// [`CACHE_BYTES`], smaller in tests.
    cache_limit: usize,
    /// Reused for encoding appends.
    buf: Vec<u8>,
    /// [`SEGMENT_BYTES`], smaller in tests.
    segment_bytes: u64,
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: io::Error) -> StorageError {
    StorageError::from_io_error(subject, verb, e)
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}{SUFFIX}"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl FileLog {
    /// Opens (or creates) the group's log under `dir`, recovering from a torn tail.
    pub fn open(
        db: &sled::Db,
        dir: &Path,
        group: GroupId,
        flusher: Flusher,
        acks: DurableAcks,
    ) -> Result<FileLog, StorageError> {
        let meta = RaftMeta::open(db, group, flusher.clone())
            .map_err(|e| read_err(ErrorSubject::Store, e))?;
        let purged = meta.purged()?;
        let inner = Segments::open(dir, purged.map(|p| p.index))
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        Ok(FileLog {
            group,
            inner: Arc::new(Mutex::new(inner)),
            meta,
            flusher,
            acks,
        })
    }

    /// Closes a segment once it reaches `bytes` instead of [`SEGMENT_BYTES`] (at least one
    /// record each). Smaller segments give purged entries their space back sooner; tests use
    /// them to have a log span many files.
    pub fn with_segment_bytes(self, bytes: u64) -> FileLog {
        self.lock().segment_bytes = bytes.max(1);
        self
    }

    fn lock(&self) -> MutexGuard<'_, Segments> {
        // A panic while holding the lock leaves the in-memory index no worse than the files it
        // describes; appends check continuity again.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entries in `[start, end)` that the log holds, read on the calling thread (for
    /// opening a group, before its Raft core runs).
    pub fn read_now(&self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        self.lock().read(start, end)
    }

    /// Appends and syncs `entries` on the calling thread, as openraft's `append` would.
    #[cfg(test)]
    pub fn append_now(&self, entries: Vec<Entry>) -> Result<(), StorageError> {
        if let Some(file) = self.lock().append(entries)? {
            file.sync_data()
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        }
        Ok(())
    }

    /// Removes the files of a group that this node no longer hosts.
    pub fn remove_dir(dir: &Path) -> io::Result<()> {
        match fs::remove_dir_all(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl Segments {
    fn open(dir: &Path, purged: Option<u64>) -> io::Result<Segments> {
        fs::create_dir_all(dir)?;
        let mut firsts = Vec::new();
        for item in fs::read_dir(dir)? {
            let name = item?.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name
                .strip_suffix(SUFFIX)
                .and_then(|n| n.parse::<u64>().ok())
            {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut me = Segments {
            dir: dir.to_path_buf(),
            segments: Vec::new(),
            locs: VecDeque::new(),
            cache: VecDeque::new(),
            cache_bytes: 0,
            cache_limit: CACHE_BYTES,
            buf: Vec::new(),
            segment_bytes: SEGMENT_BYTES,
        };
        let count = firsts.len();
        for (n, first) in firsts.into_iter().enumerate() {
            me.load_segment(first, purged, n + 1 == count)?;
        }
        Ok(me)
    }

    /// Reads one segment's records into the index. Only the newest segment may end in a torn
    /// record (older ones were synced before the next began); its tail is cut off.
    fn load_segment(&mut self, first: u64, purged: Option<u64>, newest: bool) -> io::Result<()> {
        let path = segment_path(&self.dir, first);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let bytes = fs::read(&path)?;
        let mut offset = 0usize;
        let mut expect = first;
        let corrupt = |what: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("log segment {}: {what}", path.display()),
            )
        };
        while offset < bytes.len() {
            let Some(entry) = decode_record(&bytes[offset..]) else {
                if newest {
                    // Zeros are the preallocated space after the last record; anything else
                    // is a record torn by a crash.
                    if bytes[offset..].iter().any(|b| *b != 0) {
                        tracing::warn!(
                            segment = %path.display(),
                            offset,
                            dropped = bytes.len() - offset,
                            "cutting off a torn record at the end of the log"
                        );
                    }
                    // Cut even plain zeros: a crash may have kept a later page of unsynced
                    // records and lost an earlier one, and the next appends must not end up
                    // followed by that leftover.
                    file.set_len(offset as u64)?;
                    file.sync_all()?;
                    break;
                }
                return Err(corrupt(format!("bad record at byte {offset}")));
            };
            let (entry, len) = entry.map_err(|e| corrupt(format!("at byte {offset}: {e}")))?;
            let index = entry.log_id.index;
            if index != expect {
                return Err(corrupt(format!(
                    "entry {index} at byte {offset}, expected {expect}"
                )));
            }
            expect += 1;
            // Index 0 is a real entry (openraft's first membership), so nothing purged is `None`.
            if purged.is_none_or(|p| index > p) {
                if let Some(last) = self.locs.back() {
                    if last.log_id.index + 1 != index {
                        return Err(corrupt(format!(
                            "entry {index} follows {} with a gap",
                            last.log_id.index
                        )));
                    }
                }
                self.locs.push_back(Loc {
                    log_id: entry.log_id,
                    segment: first,
                    offset: offset as u64,
                    len: len as u32,
                });
            }
            offset += len;
        }
        if offset == 0 {
            // Created just before a crash, or cut back to nothing: the next append recreates
            // it, and keeping it would give two segments one name.
            drop(file);
            fs::remove_file(&path)?;
            return Ok(());
        }
        let len = offset as u64;
        self.segments.push(Segment {
            first,
            path,
            file: Arc::new(file),
            len,
            allocated: len,
        });
        Ok(())
    }

    fn segment(&self, first: u64) -> Option<&Segment> {
        let at = self.segments.partition_point(|s| s.first < first);
        self.segments.get(at).filter(|s| s.first == first)
    }

    /// Whether appending at `index` starts a new segment (syncing the last one and the
    /// directory) rather than writing to the newest.
    fn rolls(&self, index: u64) -> bool {
        let follows = match (self.segments.last(), self.locs.back()) {
            (Some(seg), Some(last)) => last.segment == seg.first && last.log_id.index + 1 == index,
            _ => false,
        };
        !(follows
            && self
                .segments
                .last()
                .is_some_and(|s| s.len < self.segment_bytes))
    }

    /// Whether reading from `index` on is served from the cache of recent entries.
    fn cached(&self, index: u64) -> bool {
        self.cache_first().is_some_and(|first| first <= index)
    }

    /// The segment the next entry (`index`) goes to, starting a new one when there is none, the
    /// newest is full, or `index` does not follow its last entry (after a snapshot install).
    fn active_for(&mut self, index: u64) -> io::Result<usize> {
        if !self.rolls(index) {
            return Ok(self.segments.len() - 1);
        }
        if let Some(seg) = self.segments.last_mut() {
            // Trimmed and synced now so that only the newest segment can ever end in anything
            // but a whole record.
            seg.trim(seg.len)?;
        }
        let path = segment_path(&self.dir, index);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        sync_dir(&self.dir)?;
        self.segments.push(Segment {
            first: index,
            path,
            file: Arc::new(file),
            len: 0,
            allocated: 0,
        });
        Ok(self.segments.len() - 1)
    }

    /// Writes `entries` to the newest segment (not yet durable) and returns its file.
    fn append(&mut self, entries: Vec<Entry>) -> Result<Option<Arc<File>>, StorageError> {
        let Some(head) = entries.first() else {
            return Ok(None);
        };
        let w = |e: io::Error| io_err(ErrorSubject::Logs, ErrorVerb::Write, e);
        if let Some(last) = self.locs.back() {
            // openraft truncates before it overwrites, and purges before it jumps ahead.
            let index = head.log_id.index;
            if index != last.log_id.index + 1 {
                return Err(w(io::Error::other(format!(
                    "append at {index} after entries up to {}",
                    last.log_id.index
                ))));
            }
        }
        let at = self.active_for(head.log_id.index).map_err(w)?;
        let (first, start) = (self.segments[at].first, self.segments[at].len);
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut locs = Vec::with_capacity(entries.len());
        for (n, entry) in entries.iter().enumerate() {
            let expect = head.log_id.index + n as u64;
            if entry.log_id.index != expect {
                self.buf = buf;
                return Err(w(io::Error::other(format!(
                    "append of entry {} where {expect} was due",
                    entry.log_id.index
                ))));
            }
            let offset = buf.len();
            encode_record(&mut buf, entry).map_err(w)?;
            locs.push(Loc {
                log_id: entry.log_id,
                segment: first,
                offset: start + offset as u64,
                len: (buf.len() - offset) as u32,
            });
        }
        let seg = &mut self.segments[at];
        // Positional: a failed write leaves `len` where it was, and the next append overwrites
        // whatever it left behind.
        let res = seg
            .preallocate(start + buf.len() as u64)
            .and_then(|()| seg.file.write_all_at(&buf, start));
        let written = buf.len() as u64;
        self.buf = buf;
        res.map_err(w)?;
        seg.len += written;
        let file = seg.file.clone();
        for (entry, loc) in entries.into_iter().zip(&locs) {
            self.cache.push_back((entry, loc.len));
            self.cache_bytes += loc.len as usize;
        }
        while self.cache_bytes > self.cache_limit {
            if let Some((_, len)) = self.cache.pop_front() {
                self.cache_bytes -= len as usize;
            }
        }
        self.locs.extend(locs);
        Ok(Some(file))
    }

    /// The index of the oldest cached entry.
    fn cache_first(&self) -> Option<u64> {
        self.cache.front().map(|(e, _)| e.log_id.index)
    }

    fn first_index(&self) -> Option<u64> {
        self.locs.front().map(|l| l.log_id.index)
    }

    fn read(&self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        let Some(first) = self.first_index() else {
            return Ok(Vec::new());
        };
        let start = start.max(first);
        let end = end.min(first + self.locs.len() as u64);
        if start >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(end.saturating_sub(start) as usize);
        let r = |e: io::Error| io_err(ErrorSubject::Logs, ErrorVerb::Read, e);
        let cached_from = self.cache_first().unwrap_or(end).clamp(start, end);
        let mut i = start;
        // One read per run of entries in the same segment, up to the cached ones.
        while i < cached_from {
            let head = self.locs[(i - first) as usize];
            let mut j = i + 1;
            while j < cached_from && self.locs[(j - first) as usize].segment == head.segment {
                j += 1;
            }
            let tail = self.locs[(j - 1 - first) as usize];
            let seg = self.segment(head.segment).ok_or_else(|| {
                r(io::Error::other(format!(
                    "segment {} of entry {i} is missing",
                    head.segment
                )))
            })?;
            let span = (tail.offset + tail.len as u64 - head.offset) as usize;
            let mut bytes = vec![0u8; span];
            seg.file.read_exact_at(&mut bytes, head.offset).map_err(r)?;
            let mut at = 0usize;
            for k in i..j {
                let loc = self.locs[(k - first) as usize];
                let (entry, _) = decode_record(&bytes[at..])
                    .ok_or_else(|| r(io::Error::other(format!("entry {k} fails its checksum"))))?
                    .map_err(|e| r(io::Error::other(format!("entry {k}: {e}"))))?;
                if entry.log_id != loc.log_id {
                    return Err(r(io::Error::other(format!(
                        "entry {k} on disk is {}",
                        entry.log_id
                    ))));
                }
                out.push(entry);
                at += loc.len as usize;
            }
            i = j;
        }
        if let Some(cache_first) = self.cache_first().filter(|_| cached_from < end) {
            let skip = (cached_from - cache_first) as usize;
            let take = (end - cached_from) as usize;
            out.extend(
                self.cache
                    .iter()
                    .skip(skip)
                    .take(take)
                    .map(|(e, _)| e.clone()),
            );
        }
        Ok(out)
    }

    /// Drops entries from `index` on, durably (a conflicting suffix must not come back).
    fn truncate(&mut self, index: u64) -> io::Result<()> {
        let Some(first) = self.first_index() else {
            return Ok(());
        };
        let keep = index.saturating_sub(first) as usize;
        let Some(&cut) = self.locs.get(keep) else {
            return Ok(());
        };
        let mut removed = false;
        while let Some(seg) = self.segments.last() {
            if seg.first < cut.segment {
                break;
            }
            if seg.first == cut.segment && cut.offset > 0 {
                if let Some(seg) = self.segments.last_mut() {
                    seg.trim(cut.offset)?;
                }
                break;
            }
            fs::remove_file(&seg.path)?;
            self.segments.pop();
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        self.locs.truncate(keep);
        while self
            .cache
            .back()
            .is_some_and(|(e, _)| e.log_id.index >= index)
        {
            if let Some((_, len)) = self.cache.pop_back() {
                self.cache_bytes -= len as usize;
            }
        }
        Ok(())
    }

    /// Forgets entries up to `index` and deletes the segments that hold nothing newer. Not
    /// synced: a deleted segment that comes back after a crash is skipped by the purge marker.
    fn purge(&mut self, index: u64) -> io::Result<()> {
        while self.locs.front().is_some_and(|l| l.log_id.index <= index) {
            self.locs.pop_front();
        }
        while self
            .cache
            .front()
            .is_some_and(|(e, _)| e.log_id.index <= index)
        {
            if let Some((_, len)) = self.cache.pop_front() {
                self.cache_bytes -= len as usize;
            }
        }
        let keep_from = self.locs.front().map(|l| l.segment);
        while let Some(seg) = self.segments.first() {
            if keep_from.is_some_and(|k| seg.first >= k) {
                break;
            }
            fs::remove_file(&seg.path)?;
            self.segments.remove(0);
        }
        Ok(())
    }
}

/// Appends `entry` to `buf` as one record (see the module doc).
pub fn encode_record(buf: &mut Vec<u8>, entry: &Entry) -> io::Result<()> {
    let at = buf.len();
    buf.extend_from_slice(&[0u8; HEADER]);
    bincode::serialize_into(&mut *buf, entry).map_err(io::Error::other)?;
    let body_len = buf.len() - at - HEADER;
    if body_len > MAX_RECORD {
        buf.truncate(at);
        return Err(io::Error::other(format!(
            "a log entry of {body_len} bytes is larger than {MAX_RECORD}"
        )));
    }
    let len = (body_len as u32).to_le_bytes();
    let crc = crc32fast::hash(&buf[at + HEADER..]).to_le_bytes();
    buf[at..at + 4].copy_from_slice(&len);
    buf[at + 4..at + HEADER].copy_from_slice(&crc);
    Ok(())
}

/// The entry at the start of `bytes` and the record's whole length. `None` where the record is
/// incomplete or fails its checksum (a torn write); `Some(Err)` where the checksum holds but
/// the entry does not decode (corruption no crash explains).
pub fn decode_record(bytes: &[u8]) -> Option<Result<(Entry, usize), bincode::Error>> {
    let header = bytes.get(..HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let body = bytes.get(HEADER..HEADER + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    Some(bincode::deserialize(body).map(|e| (e, HEADER + len)))
}

fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => i.saturating_add(1),
        Bound::Excluded(i) => *i,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for FileLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(&range);
        let log = self.lock();
        if log.cached(start) {
            log.read(start, end)
        } else {
            off_worker(|| log.read(start, end))
        }
    }
}

impl RaftLogStorage<TypeConfig> for FileLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged = self.meta.purged()?;
        let last = self.lock().locs.back().map(|l| l.log_id);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.meta.save_vote(vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.meta.vote()
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let tracked: Vec<(u64, u64)> = entries
            .iter()
            .filter_map(|e| self.acks.tracked(e))
            .collect();
        let mut log = self.lock();
        let file = match entries.first() {
            Some(head) if log.rolls(head.log_id.index) => off_worker(|| log.append(entries)),
            _ => log.append(entries),
        }?;
        drop(log);
        let Some(file) = file else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        // Raft hears of the append, and eventual writes this node proposed are acknowledged,
        // once the group-commit sync covering this write is done.
        self.flusher.on_synced(
            file,
            self.acks.append_completion(self.group, tracked, callback),
        );
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        off_worker(|| self.lock().truncate(log_id.index))
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The marker first, durable with the state machine, before the entries go.
        self.meta.save_purged(&log_id).await?;
        off_worker(|| self.lock().purge(log_id.index))
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::types::{golden, Op, Request};

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    impl Segments {
        fn encoded_len(&self, e: &Entry) -> usize {
            let mut buf = Vec::new();
            encode_record(&mut buf, e).unwrap();
            buf.len()
        }
    }

    fn indexes(s: &Segments) -> Vec<u64> {
        s.locs.iter().map(|l| l.log_id.index).collect()
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), None).unwrap();
        s.append((1..=3).map(entry).collect::<Vec<_>>()).unwrap();
        let path = segment_path(dir.path(), 1);
        let whole = fs::read(&path).unwrap();
        // A crash in the middle of writing the third record.
        let third = s.locs[2];
        fs::write(&path, &whole[..third.offset as usize + 5]).unwrap();
        drop(s);
        let mut s = Segments::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&s), vec![1, 2]);
        s.append(vec![entry(3)]).unwrap();
        drop(s);
        let s = Segments::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&s), vec![1, 2, 3]);
        assert_eq!(s.read(0, u64::MAX).unwrap().len(), 3);
    }

    #[test]
    fn a_flipped_bit_in_the_tail_record_drops_only_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), None).unwrap();
        s.append((1..=3).map(entry).collect::<Vec<_>>()).unwrap();
        let path = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        let third = s.locs[2];
        bytes[(third.offset + third.len as u64 - 1) as usize] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        drop(s);
        let s = Segments::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&s), vec![1, 2]);
    }

    #[test]
    fn the_newest_segment_is_zero_filled_ahead_and_closed_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), None).unwrap();
        s.append(vec![entry(1), entry(2)]).unwrap();
        let records = s.segments[0].len;
        let size = |first| fs::metadata(segment_path(dir.path(), first)).unwrap().len();
        assert_eq!(size(1), PREALLOCATE, "the file is allocated ahead");
        let bytes = fs::read(segment_path(dir.path(), 1)).unwrap();
        assert!(bytes[records as usize..].iter().all(|b| *b == 0));
        // Closing the segment cuts its zeros off.
        s.segment_bytes = 1;
        s.append(vec![entry(3)]).unwrap();
        assert_eq!(size(1), records);
        assert_eq!(size(3), PREALLOCATE);
        drop(s);
        // Zeros after the last record are the end, not a torn record: nothing is dropped, and
        // the newest segment is cut back to its records until the next append.
        let mut s = Segments::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&s), vec![1, 2, 3]);
        assert_eq!(size(3), s.segments[1].len);
        s.append(vec![entry(4)]).unwrap();
        assert_eq!(size(3), PREALLOCATE);
        drop(s);
        let s = Segments::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&s), vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_record_left_behind_a_lost_one_never_resurfaces() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), None).unwrap();
        s.append((1..=3).map(entry).collect::<Vec<_>>()).unwrap();
        // A crash before the sync kept record 3's page but lost record 2's.
        let path = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        let second = s.locs[1];
        let lost = second.offset as usize..(second.offset + second.len as u64) as usize;
        bytes[lost].fill(0);
        fs::write(&path, &bytes).unwrap();
        drop(s);
        let mut s = Segments::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&s), vec![1]);
        // A new leader's shorter entry 2 takes the place: the old record 3 must not follow it.
        let short = Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), 2),
            payload: EntryPayload::Blank,
        };
        s.append(vec![short]).unwrap();
        drop(s);
        let s = Segments::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&s), vec![1, 2]);
        assert_eq!(s.locs[1].log_id.leader_id.term, 2);
    }

    #[test]
    fn corruption_in_an_older_segment_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), None).unwrap();
        s.segment_bytes = 1;
        s.append(vec![entry(1), entry(2)]).unwrap();
        s.append(vec![entry(3)]).unwrap();
        assert_eq!(s.segments.len(), 2, "a full segment is closed");
        drop(s);
        let path = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER + 1] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let err = Segments::open(dir.path(), None)
            .err()
            .expect("corruption is an error");
        assert!(err.to_string().contains("bad record"), "{err}");
    }

    #[test]
    fn segments_roll_over_and_reads_span_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), None).unwrap();
        s.segment_bytes = 40;
        for i in 1..=10 {
            s.append(vec![entry(i)]).unwrap();
        }
        assert!(s.segments.len() > 2);
        let read: Vec<u64> = s
            .read(2, 10)
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(read, (2..10).collect::<Vec<_>>());
        // Truncating into an older segment deletes the newer ones, durably.
        s.truncate(4).unwrap();
        s.purge(2).unwrap();
        drop(s);
        let s = Segments::open(dir.path(), Some(2)).unwrap();
        assert_eq!(indexes(&s), vec![3]);
    }

    #[test]
    fn reads_from_the_cache_and_from_disk_agree_through_truncate_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), None).unwrap();
        s.segment_bytes = 200;
        // Room for a few records only, so that reads span disk and cache.
        s.cache_limit = 3 * s.encoded_len(&entry(1));
        s.append((1..=20).map(entry).collect()).unwrap();
        assert_eq!(s.cache_first(), Some(18));
        let ids = |s: &Segments, a, b| -> Vec<LogId> {
            s.read(a, b).unwrap().iter().map(|e| e.log_id).collect()
        };
        let term = |t, i| LogId::new(CommittedLeaderId::new(t, 1), i);
        assert_eq!(
            ids(&s, 15, 21),
            (15..=20).map(|i| term(1, i)).collect::<Vec<_>>()
        );
        assert_eq!(ids(&s, 19, 20), vec![term(1, 19)]);
        assert_eq!(ids(&s, 1, 3), vec![term(1, 1), term(1, 2)]);
        // A new leader overwrites 19 and 20: nothing of the old ones may be read back.
        s.truncate(19).unwrap();
        let newer = |i| Entry {
            log_id: term(2, i),
            payload: EntryPayload::Blank,
        };
        s.append(vec![newer(19), newer(20)]).unwrap();
        assert_eq!(
            ids(&s, 17, 100),
            vec![term(1, 17), term(1, 18), term(2, 19), term(2, 20)]
        );
        s.purge(18).unwrap();
        assert_eq!(ids(&s, 0, 100), vec![term(2, 19), term(2, 20)]);
        // The same from disk alone.
        drop(s);
        let s = Segments::open(dir.path(), Some(18)).unwrap();
        assert_eq!(s.cache_first(), None);
        assert_eq!(ids(&s, 0, 100), vec![term(2, 19), term(2, 20)]);
    }

    #[test]
    fn truncate_survives_a_reopen_and_purge_deletes_whole_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), None).unwrap();
        s.append((1..=5).map(entry).collect::<Vec<_>>()).unwrap();
        s.truncate(4).unwrap();
        s.append(vec![entry(4)]).unwrap();
        drop(s);
        let mut s = Segments::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&s), vec![1, 2, 3, 4]);
        // Everything purged, then a jump ahead (as after a snapshot install).
        s.purge(4).unwrap();
        assert!(s.segments.is_empty());
        assert!(!segment_path(dir.path(), 1).exists());
        s.append(vec![entry(100)]).unwrap();
        drop(s);
        let s = Segments::open(dir.path(), Some(4)).unwrap();
        assert_eq!(indexes(&s), vec![100]);
    }

    #[test]
    fn entries_at_or_below_the_purge_marker_are_skipped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), None).unwrap();
        s.append((1..=6).map(entry).collect::<Vec<_>>()).unwrap();
        s.purge(3).unwrap();
        drop(s);
        let s = Segments::open(dir.path(), Some(3)).unwrap();
        assert_eq!(indexes(&s), vec![4, 5, 6]);
        let read: Vec<u64> = s
            .read(0, 100)
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(read, vec![4, 5, 6]);
    }

    #[test]
    fn entry_zero_survives_a_reopen_when_nothing_was_purged() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), None).unwrap();
        s.append(vec![entry(0), entry(1)]).unwrap();
        drop(s);
        let s = Segments::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&s), vec![0, 1]);
        let s = Segments::open(dir.path(), Some(0)).unwrap();
        assert_eq!(indexes(&s), vec![1]);
    }

    /// `entry` is stored as exactly `expected` (hex), and those bytes read back as `entry`.
    fn assert_record(entry: &Entry, expected: &str) {
        let mut buf = Vec::new();
        encode_record(&mut buf, entry).expect("encodes");
        let expected = golden::unhex(expected);
        assert_eq!(
            golden::hex(&buf),
            golden::hex(&expected),
            "log record of {entry:?}: {}",
            golden::CHANGED
        );
        let (back, len) = decode_record(&expected)
            .expect("the golden record passes its checksum")
            .expect("the golden record decodes");
        assert_eq!(len, expected.len());
        assert_eq!(&back, entry, "decoding the log record: {}", golden::CHANGED);
    }

    // Log record golden vectors: body length (u32 LE), CRC-32 of the body (u32 LE, the IEEE
    // polynomial, the same as zlib's crc32), then the bincode Entry: log_id (leader term u64,
    // leader node u64, index u64), then EntryPayload (u32 variant: 0 Blank, 1 Normal,
    // 2 Membership). If one fails you changed a persisted format; existing data dirs would be
    // misread.

    #[test]
    fn golden_record_of_a_blank_entry() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), 5),
            payload: EntryPayload::Blank,
        };
        assert_record(
            &entry,
            "1c000000 85c1df7e
             0200000000000000 0100000000000000 0500000000000000 00000000",
        );
    }

    #[test]
    fn golden_record_of_a_normal_entry() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), 6),
            payload: EntryPayload::Normal(Request::Write {
                ops: vec![Op::Put {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    expected_version: None,
                }],
                dedup: None,
            }),
        };
        // The Request's own bytes are pinned in `types::tests`.
        assert_record(
            &entry,
            "40000000 cde86cd3
             0200000000000000 0100000000000000 0600000000000000 01000000
             00000000 0100000000000000 00000000 0100000000000000 6b 0100000000000000 76 00 00",
        );
    }

    #[test]
    fn golden_record_of_a_membership_entry() {
        // If this fails you changed a persisted format; existing data dirs would be misread.
        let membership = openraft::Membership::new(
            vec![[1, 2].into()],
            std::collections::BTreeMap::from([
                (1, openraft::BasicNode::new("a:1")),
                (2, openraft::BasicNode::new("b:2")),
            ]),
        );
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 0),
            payload: EntryPayload::Membership(membership),
        };
        // Membership = configs (a list of voter sets) then nodes (id to BasicNode { addr }).
        assert_record(
            &entry,
            "6a000000 756e48be
             0100000000000000 0100000000000000 0000000000000000 02000000
             0100000000000000 0200000000000000 0100000000000000 0200000000000000
             0200000000000000
             0100000000000000 0300000000000000 613a31
             0200000000000000 0300000000000000 623a32",
        );
    }

    #[test]
    fn appends_that_break_continuity_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), None).unwrap();
        s.append(vec![entry(1), entry(2)]).unwrap();
        assert!(s.append(vec![entry(2)]).is_err());
        assert!(s.append(vec![entry(4)]).is_err());
        assert!(s.append(vec![entry(3), entry(5)]).is_err());
        s.append(vec![entry(3)]).unwrap();
        assert_eq!(indexes(&s), vec![1, 2, 3]);
    }
}
