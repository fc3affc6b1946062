//! Group commit: one thread makes writes durable for every group on the node.
//!
//! Raft may only be told an append is done once it is durable. Writers write, hand a completion
//! to this thread, and the thread makes durable at once everything queued so far (one sled
//! `flush` for the database, one `fdatasync` per log segment file written to) and then completes
//! each waiter in order. Throughput is then bounded by how much one round can carry, not by the
//! disk's fsync rate. One thread, not concurrent `flush_async` calls: seven or more of those at
//! once deadlock sled 0.34.7 (see tech notes).

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

type Completion = Box<dyn FnOnce(io::Result<()>) + Send>;

/// What a waiter needs made durable.
enum Target {
    /// The whole sled database.
    Db,
    /// One file's data (a log segment), by `fdatasync`.
    File(Arc<File>),
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct FlushStats {
    pub flushes: AtomicU64,
    pub waiters: AtomicU64,
}

/// A handle on the flusher thread. Cloning is cheap; the thread stops when the last handle is
/// dropped.
#[derive(Clone)]
pub struct Flusher {
    tx: mpsc::Sender<(Target, Completion)>,
    pub stats: Arc<FlushStats>,
}

impl Flusher {
    /// A flusher whose database flushes rely on sled alone (tests).
    pub fn start(db: sled::Db) -> io::Result<Flusher> {
        Self::spawn(db, None)
    }

    /// A flusher that also `fsync`s the database's file (sled's is at `dir/db`) after each
    /// flush: sled's own flush ends with `sync_file_range`, which does not reach the disk's
    /// cache or the file's metadata, so power loss could take what a flush promised.
    pub fn start_with_fsync(db: sled::Db, dir: &std::path::Path) -> io::Result<Flusher> {
        let file = File::open(dir.join("db"))?;
        Self::spawn(db, Some(file))
    }

    fn spawn(db: sled::Db, db_file: Option<File>) -> io::Result<Flusher> {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(FlushStats::default());
        let thread_stats = stats.clone();
        thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || run(db, db_file, rx, &thread_stats))?;
        Ok(Flusher { tx, stats })
    }

    /// Calls `done` once everything written to the database before this call is durable.
    pub fn on_durable(&self, done: impl FnOnce(io::Result<()>) + Send + 'static) {
        self.queue(Target::Db, Box::new(done));
    }

    /// Calls `done` once everything written to `file` before this call is durable. Unlike
    /// [`Flusher::on_durable`] this leaves the sled database alone.
    pub fn on_synced(&self, file: Arc<File>, done: impl FnOnce(io::Result<()>) + Send + 'static) {
        self.queue(Target::File(file), Box::new(done));
    }

    fn queue(&self, target: Target, done: Completion) {
        if let Err(mpsc::SendError((_, done))) = self.tx.send((target, done)) {
            done(Err(io::Error::other("the flusher has stopped")));
        }
    }

    /// Waits until everything written before this call is durable.
    pub async fn wait_durable(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.on_durable(move |res| {
            let _ = tx.send(res);
        });
        rx.await
            .unwrap_or_else(|_| Err(io::Error::other("the flusher dropped a waiter")))
    }
}

fn run(
    db: sled::Db,
    db_file: Option<File>,
    rx: mpsc::Receiver<(Target, Completion)>,
    stats: &FlushStats,
) {
    let mut batch = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        batch.extend(rx.try_iter());
        // Everything in `batch` was written before it was queued, so one flush of the database
        // and one sync per distinct file cover it all.
        let db_result = batch.iter().any(|(t, _)| matches!(t, Target::Db)).then(|| {
            db.flush().map_err(|e| e.to_string())?;
            match &db_file {
                Some(f) => f.sync_all().map_err(|e| e.to_string()),
                None => Ok(()),
            }
        });
        let mut synced: Vec<(*const File, Result<(), String>)> = Vec::new();
        for (target, _) in &batch {
            if let Target::File(f) = target {
                if !synced.iter().any(|(p, _)| *p == Arc::as_ptr(f)) {
                    synced.push((Arc::as_ptr(f), f.sync_data().map_err(|e| e.to_string())));
                }
            }
        }
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        stats
            .waiters
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        for (target, done) in batch.drain(..) {
            let res = match &target {
                Target::Db => db_result.as_ref(),
                Target::File(f) => synced
                    .iter()
                    .find(|(p, _)| *p == Arc::as_ptr(f))
                    .map(|(_, r)| r),
            };
            done(match res {
                Some(Ok(())) => Ok(()),
                Some(Err(e)) => Err(io::Error::other(e.clone())),
                None => Err(io::Error::other("the flusher lost a waiter's target")),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn many_waiters_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let f = Flusher::start(db.clone()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let f = f.clone();
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                db.insert(i.to_be_bytes(), &b"v"[..]).unwrap();
                f.wait_durable().await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(f.stats.waiters.load(Ordering::Relaxed), 200);
        assert!(f.stats.flushes.load(Ordering::Relaxed) <= 200);
    }
}
