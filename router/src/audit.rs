//! The audit log (`kvrouter --audit-log FILE`): one JSON line per admin change, successful or
//! not, and per refused request.
//!
//! Requests never wait for the disk: a record goes into a bounded channel to one writer task,
//! and when the channel is full (a slow or stuck disk) it is dropped and counted
//! (`kvrouter_audit_dropped_total`), so an audit log can cost memory up to [`AUDIT_QUEUE`]
//! records and never a request's latency. The writer appends and flushes each batch.
//!
//! The log is process-wide, installed once by `main` ([`AuditLog::install`]): the router's
//! server setup does not pass it down yet, so this keeps it reachable from the handlers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Records waiting for the writer before new ones are dropped.
pub const AUDIT_QUEUE: usize = 16 * 1024;

/// One line of the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// The user; for a refused credential, what it claimed (`token:<id>`, `cert:<name>`), or
    /// `anonymous`.
    pub identity: String,
    /// The peer's `HOST:PORT`.
    pub peer: String,
    /// The RPC, such as `Put` or `CreateUser`.
    pub action: String,
    /// What it acted on, such as `keyspace "users"`.
    pub target: String,
    /// `ok`, `failed` (an admin change that was refused or did not finish) or `denied`.
    pub outcome: &'static str,
    /// Why it failed or was denied; empty on success.
    pub reason: String,
}

#[derive(Serialize)]
struct Line<'a> {
    /// Milliseconds since the Unix epoch.
    time_ms: u64,
    #[serde(flatten)]
    record: &'a AuditRecord,
}

/// The sending side of the audit log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    tx: mpsc::Sender<AuditRecord>,
}

static LOG: OnceLock<AuditLog> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);
static WRITTEN: AtomicU64 = AtomicU64::new(0);
static WRITE_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Why the audit log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("an audit log is already installed ({0})")]
    AlreadyInstalled(PathBuf),
}

impl AuditLog {
    /// Opens `path` for appending (creating it) and starts its writer task on the current
    /// Tokio runtime. Fails at once if the file cannot be opened, so that a typo in the flag
    /// stops the router rather than losing the log.
    pub async fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(|source| AuditError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let (tx, rx) = mpsc::channel(AUDIT_QUEUE);
        tokio::spawn(write_lines(file, rx, path.to_path_buf()));
        Ok(AuditLog {
            path: path.to_path_buf(),
            tx,
        })
    }

    /// Makes this the process's audit log.
    pub fn install(self) -> Result<(), AuditError> {
        let path = self.path.clone();
        LOG.set(self)
            .map_err(|_| AuditError::AlreadyInstalled(path))
    }
}

/// Queues a record for the audit log, if one is installed; drops it when the queue is full.
pub fn record(record: AuditRecord) {
    let Some(log) = LOG.get() else {
        return;
    };
    if log.tx.try_send(record).is_err() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Records dropped because the writer fell behind, written, and failed writes.
pub fn counters() -> (u64, u64, u64) {
    (
        DROPPED.load(Ordering::Relaxed),
        WRITTEN.load(Ordering::Relaxed),
        WRITE_ERRORS.load(Ordering::Relaxed),
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Appends every queued record as a line, a batch at a time, flushing after each batch.
async fn write_lines(
    mut file: tokio::fs::File,
    mut rx: mpsc::Receiver<AuditRecord>,
    path: PathBuf,
) {
    let mut batch = Vec::new();
    let mut buf = Vec::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        buf.clear();
        let time_ms = now_ms();
        for record in batch.drain(..) {
            // Serializing plain strings and numbers cannot fail.
            if serde_json::to_writer(
                &mut buf,
                &Line {
                    time_ms,
                    record: &record,
                },
            )
            .is_ok()
            {
                buf.push(b'\n');
            }
        }
        let lines = buf.iter().filter(|b| **b == b'\n').count() as u64;
        match async {
            file.write_all(&buf).await?;
            file.flush().await
        }
        .await
        {
            Ok(()) => {
                WRITTEN.fetch_add(lines, Ordering::Relaxed);
            }
            Err(e) => {
                WRITE_ERRORS.fetch_add(lines, Ordering::Relaxed);
                tracing::warn!(path = %path.display(), error = %e, "writing the audit log failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_one_json_line_per_record() {
        let dir = std::env::temp_dir().join(format!("kvrouter-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.log");
        let _ = std::fs::remove_file(&path);
        let log = AuditLog::open(&path).await.unwrap();
        log.install().unwrap();
        for outcome in ["ok", "denied"] {
            record(AuditRecord {
                identity: "bob".into(),
                peer: "127.0.0.1:1".into(),
                action: "Put".into(),
                target: "key \"k\" of keyspace \"default\"".into(),
                outcome,
                reason: String::new(),
            });
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 2 || std::time::Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[1]["outcome"], "denied");
        assert_eq!(lines[0]["identity"], "bob");
        assert!(lines[0]["time_ms"].as_u64().unwrap() > 0);
        assert!(AuditLog::open(&path).await.unwrap().install().is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
