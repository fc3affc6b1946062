//! What a node does when a group's Raft core stops at run time: a log append, an apply or a
//! flush failed (a full disk, an I/O error). Recovery in process is not possible: sled keeps
//! the first write error and fails every later write until the database is opened again, and
//! every group shares one database. So the node stops being ready at once, says why, and exits
//! with an error, for its supervisor (Kubernetes, systemd) to restart it: it serves again once
//! the disk has room, as etcd and TiKV do. The group's other replicas keep serving meanwhile.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::Fatal;
use tokio_util::sync::CancellationToken;

use crate::node::Node;

/// How often running groups are checked.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Watches `node`'s groups until `shutdown`; on the first that stopped by itself, records why
/// ([`Node::storage_failure`]) and cancels `shutdown`, which ends the node's servers.
pub async fn watch_groups(node: Arc<Node>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for group in node.groups() {
            let state = group.raft.metrics().borrow().running_state.clone();
            match state {
                Ok(()) => {}
                // Shut down on purpose: the node is stopping, or the group was dropped.
                Err(Fatal::Stopped) => {}
                Err(fatal) => {
                    let why = format!("shard group {} stopped: {fatal}", group.id);
                    tracing::error!(
                        group = group.id,
                        error = %fatal,
                        "a shard group's Raft core stopped; the node stops so that a restart \
                         recovers it (free disk space first if the disk is full)"
                    );
                    node.record_storage_failure(why);
                    shutdown.cancel();
                    return;
                }
            }
        }
    }
}
