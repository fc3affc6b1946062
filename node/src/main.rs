//! `kvnode`: parses flags and runs a storage node.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use kv_proto::peer::CertRole;
use kv_proto::tls::{ClientAuth, TlsCerts, TlsFiles};
use kvnode::{NodeConfig, RaftTuning};
use shardmap::Limits;
use tokio_util::sync::CancellationToken;

// glibc's malloc was a tenth of a node's CPU under load (a profile, docs/benchmarks.md);
// mimalloc's thread-local free lists make the many small per-request allocations cheap.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "kvnode",
    version,
    about = "Storage node: hosts Raft shard groups on sled"
)]
struct Args {
    /// This node's id (a positive integer named in --initial-cluster).
    #[arg(long, env = "KVNODE_ID", required_unless_present = "id_from_hostname")]
    id: Option<u64>,
    /// Take the id from the host name's ordinal suffix plus one (`kvnode-0` is node 1), as a
    /// Kubernetes StatefulSet names its pods.
    #[arg(long, env = "KVNODE_ID_FROM_HOSTNAME", conflicts_with = "id")]
    id_from_hostname: bool,
    /// Address for gRPC (data and Raft traffic).
    #[arg(long, env = "KVNODE_LISTEN")]
    listen: String,
    /// Directory for this node's data; created if missing.
    #[arg(long, env = "KVNODE_DATA_DIR")]
    data_dir: PathBuf,
    /// The members of a new cluster: `1=HOST:PORT,2=HOST:PORT,3=HOST:PORT`. Read on first start
    /// only; a restart uses what the data dir recorded.
    #[arg(long, env = "KVNODE_INITIAL_CLUSTER", default_value = "")]
    initial_cluster: String,
    /// Data shard groups of the default keyspace in a new cluster.
    #[arg(long, env = "KVNODE_SHARDS", default_value_t = 4)]
    shards: u32,
    /// Replicas per shard group in a new cluster.
    #[arg(long, env = "KVNODE_REPLICATION", default_value_t = 3)]
    replication: usize,
    /// Address for HTTP /health, /ready and /metrics.
    #[arg(long, env = "KVNODE_HTTP")]
    http: Option<String>,
    /// Build a snapshot after this many applied entries per group.
    #[arg(long, env = "KVNODE_SNAPSHOT_LOGS", default_value_t = 10_000)]
    snapshot_logs: u64,
    /// Log entries kept behind a snapshot.
    #[arg(long, env = "KVNODE_MAX_LOGS_KEPT", default_value_t = 1_000)]
    max_logs_kept: u64,
    /// Raft heartbeat interval in milliseconds. openraft 0.9 also uses it as the deadline of
    /// each AppendEntries call, so it must cover sending the largest batch to a busy follower.
    #[arg(long, env = "KVNODE_HEARTBEAT_MS", default_value_t = 200)]
    heartbeat_ms: u64,
    /// Minimum Raft election timeout in milliseconds (the maximum is twice this).
    #[arg(long, env = "KVNODE_ELECTION_TIMEOUT_MS", default_value_t = 1_000)]
    election_timeout_ms: u64,
    /// Size in bytes at which a group's Raft log segment file is closed and the next one
    /// begins. Purged entries free their disk space a whole segment at a time.
    #[arg(long, env = "KVNODE_LOG_SEGMENT_BYTES", default_value_t = kvnode::storage::SEGMENT_BYTES)]
    log_segment_bytes: u64,
    /// sled page cache size in MiB.
    #[arg(long, env = "KVNODE_CACHE_MB", default_value_t = 256)]
    cache_mb: u64,
    /// Largest key in bytes.
    #[arg(long, env = "KVNODE_MAX_KEY_BYTES", default_value_t = Limits::default().max_key_bytes)]
    max_key_bytes: usize,
    /// Largest value in bytes.
    #[arg(long, env = "KVNODE_MAX_VALUE_BYTES", default_value_t = Limits::default().max_value_bytes)]
    max_value_bytes: usize,
    /// Largest write to one shard group (keys and values of one Raft entry) in bytes; strong
    /// writes gathered into one entry stay under it too.
    #[arg(long, env = "KVNODE_MAX_WRITE_BYTES", default_value_t = Limits::default().max_write_bytes)]
    max_write_bytes: usize,
    /// Bytes of log entries per AppendEntries message; a longer run of entries goes in several
    /// (one entry alone may exceed it). Must stay under the Raft message limit.
    #[arg(long, env = "KVNODE_RAFT_APPEND_BYTES", default_value_t = kvnode::network::DEFAULT_APPEND_BYTES)]
    raft_append_bytes: usize,
    /// This node's certificate (PEM, naming the node role): serve mutual TLS only, and dial
    /// other nodes with it. Needs --tls-key and --tls-ca. The files are re-read when they
    /// change, so rotating them needs no restart.
    #[arg(long, env = "KVNODE_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "KVNODE_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// The CA certificates (PEM) whose node and router certificates may call this node.
    #[arg(long, env = "KVNODE_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// How long a request may wait for a quorum, in milliseconds, before UNAVAILABLE.
    #[arg(long, env = "KVNODE_REQUEST_TIMEOUT_MS", default_value_t = 4_000)]
    request_timeout_ms: u64,
    /// A file holding the first admin's access token (make one with `kvctl auth token-new`).
    /// Read on a new cluster's first start only: the cluster starts with authentication on and
    /// user `admin` (role `admin`) holding that token; only its hash is stored. Without it
    /// the cluster runs with authentication off.
    #[arg(long, env = "KVNODE_BOOTSTRAP_ADMIN_TOKEN_FILE", value_name = "FILE")]
    bootstrap_admin_token_file: Option<PathBuf>,
}

fn parse_cluster(s: &str) -> anyhow::Result<Vec<(u64, String)>> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|part| {
            let (id, addr) = part
                .split_once('=')
                .with_context(|| format!("--initial-cluster entry {part:?} is not ID=HOST:PORT"))?;
            let id: u64 = id
                .trim()
                .parse()
                .with_context(|| format!("--initial-cluster entry {part:?}: bad node id"))?;
            let addr = addr.trim();
            if !addr.contains(':') {
                bail!("--initial-cluster entry {part:?}: address must be HOST:PORT");
            }
            Ok((id, addr.to_string()))
        })
        .collect()
}

fn id_from_hostname() -> anyhow::Result<u64> {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .context("--id-from-hostname: neither $HOSTNAME nor /etc/hostname is set")?;
    ordinal_id(host.trim())
}

/// `kvnode-2` → 3: StatefulSet ordinals start at 0, node ids at 1.
fn ordinal_id(host: &str) -> anyhow::Result<u64> {
    let ordinal = host
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .with_context(|| format!("host name {host:?} does not end in -ORDINAL"))?;
    Ok(ordinal + 1)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "info,openraft=warn,openraft::replication=off,openraft::engine=error,sled=warn"
                    .into()
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let id = match args.id {
        Some(id) => id,
        None => id_from_hostname()?,
    };
    if id == 0 {
        bail!("--id must be a positive integer");
    }
    let config = NodeConfig {
        id,
        data_dir: args.data_dir,
        initial_cluster: parse_cluster(&args.initial_cluster)?,
        shards: args.shards,
        replication: args.replication,
        limits: Limits {
            max_key_bytes: args.max_key_bytes,
            max_value_bytes: args.max_value_bytes,
            max_write_bytes: args.max_write_bytes,
        },
        raft: RaftTuning {
            heartbeat_ms: args.heartbeat_ms,
            election_timeout_ms: args.election_timeout_ms,
            snapshot_logs: args.snapshot_logs,
            append_bytes: args.raft_append_bytes,
            max_logs_kept: args.max_logs_kept,
        },
        cache_capacity_bytes: args.cache_mb * 1024 * 1024,
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        log_segment_bytes: args.log_segment_bytes,
        bootstrap_admin_token_file: args.bootstrap_admin_token_file,
        tls: match TlsFiles::from_flags(args.tls_cert, args.tls_key, args.tls_ca)? {
            Some(files) => Some(TlsCerts::load(
                files,
                ClientAuth::Required,
                Some(CertRole::Node),
            )?),
            None => {
                tracing::warn!(
                    "serving plaintext: anyone who reaches this port can call it (--tls-cert, --tls-key, --tls-ca)"
                );
                None
            }
        },
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let http = match &args.http {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding --http {addr}"))?,
        ),
        None => None,
    };
    tracing::info!(id = config.id, listen = %listener.local_addr()?, "kvnode starting");
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    kvnode::run(config, listener, http, shutdown).await?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_flag() {
        let c = parse_cluster("1=a:1, 2=b:2").unwrap();
        assert_eq!(c, vec![(1, "a:1".to_string()), (2, "b:2".to_string())]);
        assert!(parse_cluster("1=a").is_err());
        assert!(parse_cluster("x=a:1").is_err());
        assert!(parse_cluster("a:1").is_err());
        assert!(parse_cluster("").unwrap().is_empty());
    }

    #[test]
    fn ordinals() {
        assert_eq!(ordinal_id("kvnode-0").unwrap(), 1);
        assert_eq!(ordinal_id("my-kv-node-12").unwrap(), 13);
        assert!(ordinal_id("kvnode").is_err());
    }
}
