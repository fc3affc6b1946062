//! Acknowledging eventual writes once they are durable in the leader's own log.
//!
//! An eventual write is proposed as a [`Request::TrackedWrite`] naming this node (`origin`) and
//! a sequence number. The proposer registers a oneshot here under `(group, seq)`; when the
//! group's [`FileLog`](super::FileLog) has made an entry durable (in the group-commit flush
//! callback it already uses for openraft), it fires the oneshots of the entries this node
//! proposed, with their log index. Entries proposed by other nodes (replicated here as a
//! follower) are ignored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::types::{Entry, GroupId, NodeId, Request};

type Waiters = HashMap<(GroupId, u64), oneshot::Sender<u64>>;

/// The node-wide registry of eventual writes waiting for their entry to be durable. Cheap to
/// clone; clones share the registry.
#[derive(Clone)]
pub struct DurableAcks {
    node: NodeId,
    next_seq: Arc<AtomicU64>,
    // std Mutex: held for one insert, remove or lookup, never across an await.
    waiters: Arc<Mutex<Waiters>>,
}

/// A registered eventual write: its sequence number, and where its log index arrives. Dropping
/// it unregisters the write.
pub struct PendingAck {
    group: GroupId,
    pub seq: u64,
    pub durable: oneshot::Receiver<u64>,
    acks: DurableAcks,
}

impl Drop for PendingAck {
    fn drop(&mut self) {
        self.acks.lock().remove(&(self.group, self.seq));
    }
}

impl DurableAcks {
    pub fn new(node: NodeId) -> DurableAcks {
        // Start from the clock so that a restarted node does not reuse the sequence numbers of
        // entries it proposed before (they may come back to it from a new leader's log).
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        DurableAcks {
            node,
            next_seq: Arc::new(AtomicU64::new(start)),
            waiters: Arc::default(),
        }
    }

    /// This node's id, the `origin` of the writes it proposes.
    pub fn node(&self) -> NodeId {
        self.node
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new eventual write in `group`.
    pub fn register(&self, group: GroupId) -> PendingAck {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().insert((group, seq), tx);
        PendingAck {
            group,
            seq,
            durable: rx,
            acks: self.clone(),
        }
    }

    /// `(seq, log index)` when `entry` is an eventual write this node proposed.
    pub fn tracked(&self, entry: &Entry) -> Option<(u64, u64)> {
        match &entry.payload {
            openraft::EntryPayload::Normal(Request::TrackedWrite { origin, seq, .. })
                if *origin == self.node =>
            {
                Some((*seq, entry.log_id.index))
            }
            _ => None,
        }
    }

    /// The completion a log store hands to the group-commit thread for an append: it tells
    /// openraft how the write went and, once it is durable, the writers of `tracked` (the
    /// append's entries that this node proposed as eventual writes).
    pub fn append_completion(
        &self,
        group: GroupId,
        tracked: Vec<(u64, u64)>,
        callback: openraft::storage::LogFlushed<crate::types::TypeConfig>,
    ) -> impl FnOnce(std::io::Result<()>) + Send + 'static {
        let acks = self.clone();
        move |res| {
            let durable = res.is_ok();
            callback.log_io_completed(res);
            if durable {
                acks.complete(group, &tracked);
            }
        }
    }

    /// Tells the writers of `tracked` (from [`DurableAcks::tracked`]) that their entries are
    /// durable at these log indexes.
    pub fn complete(&self, group: GroupId, tracked: &[(u64, u64)]) {
        if tracked.is_empty() {
            return;
        }
        let mut waiters = self.lock();
        for (seq, index) in tracked {
            if let Some(tx) = waiters.remove(&(group, *seq)) {
                let _ = tx.send(*index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{LogId, Op};
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64, req: Request) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(req),
        }
    }

    fn ops() -> Vec<Op> {
        vec![Op::Delete {
            key: b"k".to_vec(),
            expected_version: None,
        }]
    }

    #[tokio::test]
    async fn fires_only_this_nodes_entries_with_their_index() {
        let acks = DurableAcks::new(1);
        let mut mine = acks.register(5);
        let other_group = acks.register(6);
        let entries = [
            entry(
                10,
                Request::Write {
                    ops: ops(),
                    dedup: None,
                },
            ),
            entry(
                11,
                Request::TrackedWrite {
                    origin: 2,
                    seq: mine.seq,
                    ops: ops(),
                    dedup: None,
                },
            ),
            entry(
                12,
                Request::TrackedWrite {
                    origin: 1,
                    seq: mine.seq,
                    ops: ops(),
                    dedup: None,
                },
            ),
        ];
        let tracked: Vec<_> = entries.iter().filter_map(|e| acks.tracked(e)).collect();
        assert_eq!(tracked, vec![(mine.seq, 12)]);
        acks.complete(5, &tracked);
        assert_eq!((&mut mine.durable).await.unwrap(), 12);
        // The same sequence number in another group is a different write.
        acks.complete(7, &[(other_group.seq, 3)]);
        assert_eq!(acks.lock().len(), 1);
        drop(other_group);
        assert!(acks.lock().is_empty());
    }
}
