//! `kvrouter`: parses flags and runs [`kvrouter::run`] until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

// glibc's malloc was a tenth of a node's CPU under load (a profile, docs/benchmarks.md);
// mimalloc's thread-local free lists make the many small per-request allocations cheap.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The store's router: serves the KV API and routes each request to its shard group's leader.
#[derive(Debug, Parser)]
#[command(name = "kvrouter", version, about)]
struct Args {
    /// Address to serve the KV gRPC API on (port 0 picks a free port).
    #[arg(
        long,
        env = "KVROUTER_LISTEN",
        default_value = "127.0.0.1:7400",
        value_name = "HOST:PORT"
    )]
    listen: String,

    /// Storage node addresses to load the cluster map from, comma-separated.
    #[arg(
        long,
        env = "KVROUTER_NODES",
        required = true,
        value_delimiter = ',',
        value_name = "HOST:PORT[,HOST:PORT...]"
    )]
    nodes: Vec<String>,

    /// Address to serve /health, /ready and /metrics on.
    #[arg(long, env = "KVROUTER_HTTP", value_name = "HOST:PORT")]
    http: Option<String>,

    /// Longest a request may take, retries included (e.g. 5s, 500ms).
    #[arg(long, env = "KVROUTER_REQUEST_TIMEOUT", default_value = "5s", value_name = "DURATION", value_parser = kvrouter::parse_duration)]
    request_timeout: Duration,

    /// How often to re-read the cluster map as a fallback to watching it (e.g. 5s).
    #[arg(long, env = "KVROUTER_MAP_REFRESH_INTERVAL", default_value = "5s", value_name = "DURATION", value_parser = kvrouter::parse_duration)]
    map_refresh_interval: Duration,

    /// This router's certificate (PEM, naming the router role): serve the client API over TLS
    /// only, and dial nodes with it (mutual TLS). Needs --tls-key and --tls-ca. The files are
    /// re-read when they change, so rotating them needs no restart.
    #[arg(long, env = "KVROUTER_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<std::path::PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "KVROUTER_TLS_KEY", value_name = "FILE")]
    tls_key: Option<std::path::PathBuf>,

    /// The cluster's CA certificates (PEM): nodes' certificates and any client certificate are
    /// checked against them.
    #[arg(long, env = "KVROUTER_TLS_CA", value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,

    /// Append one JSON line per admin change (successful or not) and per request refused by
    /// authentication or authorization to FILE (see docs/security.md).
    #[arg(long, env = "KVROUTER_AUDIT_LOG", value_name = "FILE")]
    audit_log: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let nodes: Vec<String> = args
        .nodes
        .iter()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    let mut config = kvrouter::Config::new(nodes);
    config.http = args.http;
    config.request_timeout = args.request_timeout;
    config.map_refresh_interval = args.map_refresh_interval;
    config.tls = kv_proto::tls::TlsFiles::from_flags(args.tls_cert, args.tls_key, args.tls_ca)?;

    if let Some(path) = &args.audit_log {
        kvrouter::audit::AuditLog::open(path).await?.install()?;
    }

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    println!("kvrouter listening on {local}");

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    kvrouter::run(config, listener, shutdown)
        .await
        .context("kvrouter failed")
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
