//! The small HTTP endpoint: `/health` (the process is up), `/ready` (it can serve: no group
//! placed here failed, every hosted group has a leader) and `/metrics` (Prometheus text).
//!
//! A node with a failed group stays healthy (it serves its other groups) but not ready, and
//! `/ready` says which group failed and why.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::node::Node;

pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(node);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn ready(State(node): State<Arc<Node>>) -> (StatusCode, String) {
    match node.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => {
            let mut body = String::from("not ready\n");
            for line in why {
                let _ = writeln!(body, "{line}");
            }
            (StatusCode::SERVICE_UNAVAILABLE, body)
        }
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# TYPE kvnode_flushes_total counter");
    let _ = writeln!(
        out,
        "kvnode_flushes_total {}",
        node.flusher.stats.flushes.load(Ordering::Relaxed)
    );
    let _ = writeln!(out, "# TYPE kvnode_flush_waiters_total counter");
    let _ = writeln!(
        out,
        "kvnode_flush_waiters_total {}",
        node.flusher.stats.waiters.load(Ordering::Relaxed)
    );
    let failed = node.failed_groups();
    let _ = writeln!(
        out,
        "# HELP kvnode_groups_failed Shard groups placed on this node that failed to start \
         (a corrupt file, say) and are fenced off until it restarts."
    );
    let _ = writeln!(out, "# TYPE kvnode_groups_failed gauge");
    let _ = writeln!(out, "kvnode_groups_failed {}", failed.len());
    let _ = writeln!(
        out,
        "# HELP kvnode_group_failed 1 for each shard group that failed to start on this node."
    );
    let _ = writeln!(out, "# TYPE kvnode_group_failed gauge");
    for (g, _) in &failed {
        let _ = writeln!(out, "kvnode_group_failed{{group=\"{g}\"}} 1");
    }
    let _ = writeln!(
        out,
        "# HELP kvnode_raft_messages_refused_total Raft messages refused before reaching their \
         group: from a node that is no replica, or with a term or index the group cannot have."
    );
    let _ = writeln!(out, "# TYPE kvnode_raft_messages_refused_total counter");
    for (reason, n) in node.raft_refused.by_reason() {
        let _ = writeln!(
            out,
            "kvnode_raft_messages_refused_total{{reason=\"{reason}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP kvnode_calls_refused_total Calls refused for their caller's TLS certificate: \
         none presented, or one whose role the service does not admit."
    );
    let _ = writeln!(out, "# TYPE kvnode_calls_refused_total counter");
    for (service, reason, n) in node.roles_refused.by_reason() {
        let _ = writeln!(
            out,
            "kvnode_calls_refused_total{{service=\"{service}\",reason=\"{reason}\"}} {n}"
        );
    }
    if let Some(tls) = &node.tls {
        tls.stats.write_metrics(&mut out, "kvnode");
    }
    let _ = writeln!(out, "# TYPE kvnode_group_is_leader gauge");
    for g in node.groups() {
        let m = g.raft.metrics().borrow().clone();
        let labels = format!("group=\"{}\"", g.id);
        let _ = writeln!(
            out,
            "kvnode_group_is_leader{{{labels}}} {}",
            u8::from(m.current_leader == Some(node.id))
        );
        let _ = writeln!(out, "kvnode_group_term{{{labels}}} {}", m.current_term);
        let _ = writeln!(
            out,
            "kvnode_group_last_log_index{{{labels}}} {}",
            m.last_log_index.unwrap_or(0)
        );
        let _ = writeln!(
            out,
            "kvnode_group_applied_index{{{labels}}} {}",
            m.last_applied.map_or(0, |l| l.index)
        );
    }
    out
}
