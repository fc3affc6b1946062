//! `kvnode` and `kvrouter` as test processes.
//!
//! Each type knows its own flags, ports and data dir, so that a restart is exactly the same
//! command line on the same data, and a test can inject one fault at a time (see
//! [`ChildProcess`] for the signals).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use kv_proto::node::node_client::NodeClient;
use kv_proto::node::{GroupStatusRequest, GroupStatusResponse};
use tonic::transport::Channel;

use crate::bins::bin_path;
use crate::probe::http_status;
use crate::process::ChildProcess;
use crate::wait::wait_for;

/// Deadline of one harness-issued RPC (status queries).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(3);

/// How a node is started; the same for every restart.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    /// `127.0.0.1:PORT` of the gRPC server.
    pub addr: String,
    /// `127.0.0.1:PORT` of `/health` and `/ready`.
    pub http_addr: String,
    pub data_dir: PathBuf,
    /// `1=HOST:PORT,2=HOST:PORT,...`
    pub initial_cluster: String,
    pub shards: u32,
    pub snapshot_logs: Option<u64>,
    pub max_logs_kept: Option<u64>,
    pub extra_args: Vec<String>,
    /// The network namespace the node runs in (clusters started with `netns: true`).
    pub netns: Option<String>,
    /// The node's certificate files, when it serves mutual TLS: passed as `--tls-*`, and
    /// presented by the harness's own calls to it (which need a node or router certificate).
    pub tls: Option<kv_proto::tls::TlsFiles>,
}

/// One `kvnode` process.
#[derive(Debug)]
pub struct NodeProcess {
    config: NodeConfig,
    process: ChildProcess,
}

impl NodeProcess {
    /// Describes the node; [`NodeProcess::start`] runs it.
    pub fn new(config: NodeConfig, log_path: PathBuf) -> Self {
        let mut args = vec![
            "--id".to_string(),
            config.id.to_string(),
            "--listen".into(),
            config.addr.clone(),
            "--http".into(),
            config.http_addr.clone(),
            "--data-dir".into(),
            config.data_dir.display().to_string(),
            "--initial-cluster".into(),
            config.initial_cluster.clone(),
            "--shards".into(),
            config.shards.to_string(),
        ];
        if let Some(n) = config.snapshot_logs {
            args.extend(["--snapshot-logs".into(), n.to_string()]);
        }
        if let Some(n) = config.max_logs_kept {
            args.extend(["--max-logs-kept".into(), n.to_string()]);
        }
        if let Some(tls) = &config.tls {
            args.extend(tls_args(tls));
        }
        args.extend(config.extra_args.iter().cloned());
        let name = format!("node{}", config.id);
        let mut process = ChildProcess::new(&name, bin_path("kvnode"), args, log_path);
        if let Some(ns) = &config.netns {
            process.netns(ns);
        }
        NodeProcess { config, process }
    }

    pub fn id(&self) -> u64 {
        self.config.id
    }

    /// `127.0.0.1:PORT` of the gRPC server.
    pub fn addr(&self) -> &str {
        &self.config.addr
    }

    /// `http://127.0.0.1:PORT` of the gRPC server.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.config.addr)
    }

    /// `127.0.0.1:PORT` of the HTTP probes.
    pub fn http_addr(&self) -> &str {
        &self.config.http_addr
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// The network namespace the node runs in, if any.
    pub fn netns(&self) -> Option<&str> {
        self.config.netns.as_deref()
    }

    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// The underlying process, for signals not wrapped here.
    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.config.data_dir)?;
        self.process.start()
    }

    /// SIGKILL; waits until the process is gone.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.process.kill()
    }

    /// SIGTERM, SIGKILL after `timeout`.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.process.terminate(timeout).await.map(|_| ())
    }

    /// SIGSTOP.
    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.process.pause()
    }

    /// SIGCONT.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.process.resume()
    }

    /// Kills the node if it runs, then starts it again with the same flags and data dir.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.process.kill()?;
        self.start()
    }

    /// Deletes the data dir (the node must be stopped), leaving an empty one.
    pub fn wipe_data(&mut self) -> anyhow::Result<()> {
        if self.process.is_running() {
            anyhow::bail!("wipe_data on running {}", self.process.name());
        }
        if self.config.data_dir.exists() {
            std::fs::remove_dir_all(&self.config.data_dir)
                .with_context(|| format!("removing {}", self.config.data_dir.display()))?;
        }
        std::fs::create_dir_all(&self.config.data_dir)?;
        Ok(())
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Waits until `/ready` answers 200: the node has the cluster map and every group it hosts
    /// has a known leader.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_probe("/ready", timeout).await
    }

    /// Waits until `/health` answers 200.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_probe("/health", timeout).await
    }

    async fn wait_probe(&mut self, path: &str, timeout: Duration) -> anyhow::Result<()> {
        let addr = self.config.http_addr.clone();
        let name = self.process.name().to_string();
        let log = self.process.log_path().to_path_buf();
        let what = format!("{name} answers 200 on {path}");
        let process = &mut self.process;
        wait_for(timeout, &what, || {
            let exited = !process.is_running();
            let addr = addr.clone();
            async move { exited || http_status(&addr, path).await == Some(200) }
        })
        .await
        .with_context(|| format!("log: {}", log.display()))?;
        if !self.process.is_running() {
            let status = self.process.exit_status();
            anyhow::bail!(
                "{name} exited ({status:?}) while waiting for {path}; log {}:\n{}",
                log.display(),
                self.process.log_tail(30)
            );
        }
        Ok(())
    }

    /// A gRPC client for the node's `Node` service, presenting the node's own certificate
    /// when it serves TLS.
    pub async fn node_client(&self) -> anyhow::Result<NodeClient<Channel>> {
        node_client_with(&self.config.addr, self.config.tls.as_ref()).await
    }

    /// The node's view of every group it hosts.
    pub async fn group_status(&self) -> anyhow::Result<GroupStatusResponse> {
        let mut client = self.node_client().await?;
        let response = client
            .group_status(GroupStatusRequest {})
            .await
            .with_context(|| format!("GroupStatus on node{}", self.config.id))?;
        Ok(response.into_inner())
    }
}

/// `--tls-cert FILE --tls-key FILE --tls-ca FILE`.
pub fn tls_args(tls: &kv_proto::tls::TlsFiles) -> Vec<String> {
    vec![
        "--tls-cert".to_string(),
        tls.cert.display().to_string(),
        "--tls-key".into(),
        tls.key.display().to_string(),
        "--tls-ca".into(),
        tls.ca.display().to_string(),
    ]
}

/// A `Node` client for `addr` (`HOST:PORT`), with connect and request deadlines.
pub async fn node_client(addr: &str) -> anyhow::Result<NodeClient<Channel>> {
    node_client_with(addr, None).await
}

/// A `Node` client for `addr` over TLS presenting `tls`'s certificate (plaintext when `None`).
pub async fn node_client_with(
    addr: &str,
    tls: Option<&kv_proto::tls::TlsFiles>,
) -> anyhow::Result<NodeClient<Channel>> {
    Ok(NodeClient::new(node_channel(addr, tls).await?)
        .max_decoding_message_size(kv_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(kv_proto::MAX_MESSAGE_BYTES))
}

/// A connected channel to node `addr`, over TLS presenting `tls`'s certificate and trusting
/// its CA (plaintext when `None`), with connect and request deadlines.
pub async fn node_channel(
    addr: &str,
    tls: Option<&kv_proto::tls::TlsFiles>,
) -> anyhow::Result<Channel> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))?
        .connect_timeout(RPC_TIMEOUT)
        .timeout(RPC_TIMEOUT);
    if let Some(tls) = tls {
        let client = kv_proto::tls::ClientTls {
            ca: tls.ca.clone(),
            identity: Some((tls.cert.clone(), tls.key.clone())),
        };
        endpoint = endpoint.tls_config(client.config()?)?;
    }
    endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to node at {addr}"))
}

/// One `kvrouter` process.
#[derive(Debug)]
pub struct RouterProcess {
    addr: String,
    http_addr: String,
    /// Serves its client API over TLS ([`RouterProcess::with_tls`]).
    https: bool,
    process: ChildProcess,
}

impl RouterProcess {
    /// Describes a router in front of `nodes` (`HOST:PORT` each).
    pub fn new(
        name: &str,
        addr: String,
        http_addr: String,
        nodes: &[String],
        log_path: PathBuf,
    ) -> Self {
        let args = vec![
            "--listen".to_string(),
            addr.clone(),
            "--http".into(),
            http_addr.clone(),
            "--nodes".into(),
            nodes.join(","),
        ];
        let process = ChildProcess::new(name, bin_path("kvrouter"), args, log_path);
        RouterProcess {
            addr,
            http_addr,
            https: false,
            process,
        }
    }

    /// The same router, run inside network namespace `ns` (its addresses must be that
    /// namespace's).
    pub fn in_netns(mut self, ns: &str) -> Self {
        self.process.netns(ns);
        self
    }

    /// The network namespace the router runs in, if any.
    pub fn netns(&self) -> Option<&str> {
        self.process.netns_name()
    }

    /// The same router with more flags (`--tls-cert ...`, say).
    pub fn with_args(mut self, extra: impl IntoIterator<Item = String>) -> Self {
        self.process.push_args(extra);
        self
    }

    /// The same router serving TLS with `tls` (and dialing nodes with it).
    pub fn with_tls(mut self, tls: &kv_proto::tls::TlsFiles) -> Self {
        self.process.push_args(tls_args(tls));
        self.https = true;
        self
    }

    /// `127.0.0.1:PORT` of the `Kv` service.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS) of the `Kv` service.
    pub fn endpoint(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn http_addr(&self) -> &str {
        &self.http_addr
    }

    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        self.process.start()
    }

    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.process.kill()
    }

    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.process.terminate(timeout).await.map(|_| ())
    }

    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.process.pause()
    }

    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.process.resume()
    }

    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.process.kill()?;
        self.start()
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Waits until `/ready` answers 200: the router has a cluster map.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let addr = self.http_addr.clone();
        let log = self.process.log_path().to_path_buf();
        let what = format!("{} answers 200 on /ready", self.process.name());
        let process = &mut self.process;
        wait_for(timeout, &what, || {
            let exited = !process.is_running();
            let addr = addr.clone();
            async move { exited || http_status(&addr, "/ready").await == Some(200) }
        })
        .await
        .with_context(|| format!("log: {}", log.display()))?;
        if !self.process.is_running() {
            let status = self.process.exit_status();
            anyhow::bail!(
                "{} exited ({status:?}) while waiting for /ready; log {}:\n{}",
                self.process.name(),
                log.display(),
                self.process.log_tail(30)
            );
        }
        Ok(())
    }
}
