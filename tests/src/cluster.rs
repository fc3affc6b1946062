//! A whole cluster in one temp dir: nodes, a router, and what tests ask of them.
//!
//! Layout of the dir (printed when a test starts, kept when it fails):
//!
//! ```text
//! <dir>/node1/ ...      data dirs
//! <dir>/logs/node1.log  stdout+stderr of each process, appended across restarts
//! <dir>/logs/router.log
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::Context;
use kv_proto::kv::kv_client::KvClient;
use kv_proto::node::{GroupStatus, GroupStatusResponse};
use tonic::transport::Channel;

use std::net::Ipv4Addr;

use crate::bins::bin_path;
use crate::netns::Network;
use crate::node::{NodeConfig, NodeProcess, RouterProcess, RPC_TIMEOUT};
use crate::ports::free_addr;
use crate::process::log_tail;
use crate::wait::wait_until;

/// Default time for a cluster to come up, or to recover after a fault.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What [`Cluster::start`] starts.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Storage nodes (ids 1..=nodes).
    pub nodes: usize,
    /// `--shards`: data groups of the default keyspace.
    pub shards: u32,
    /// `--snapshot-logs`: build a snapshot every N applied entries (node default when `None`).
    pub snapshot_logs: Option<u64>,
    /// `--max-logs-kept`: log entries kept behind a snapshot (node default when `None`).
    pub max_logs_kept: Option<u64>,
    /// Routers to start (0 for node-only tests).
    pub routers: usize,
    /// Extra `kvnode` arguments.
    pub node_args: Vec<String>,
    /// How long to wait for every process's `/ready`.
    pub ready_timeout: Duration,
    /// Run every node and router in a network namespace of its own, on a per-cluster bridge
    /// (see [`crate::netns`]), so that tests can partition the network. Needs root; call
    /// [`crate::netns::require_netns`] first.
    pub netns: bool,
    /// Run with TLS everywhere: certificates from `kvctl certs create` in `<dir>/certs` (valid
    /// for every process's address, loopback or namespace), mutual TLS between nodes and from
    /// routers to nodes, routers serving `https://`, and the harness's clients presenting the
    /// client certificate (see [`Cluster::certs`]).
    pub tls: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            shards: 4,
            snapshot_logs: None,
            max_logs_kept: None,
            routers: 1,
            node_args: Vec::new(),
            ready_timeout: READY_TIMEOUT,
            netns: false,
            tls: false,
        }
    }
}

/// A running cluster. Dropping it kills every process; its dir is deleted when the test passed
/// and kept (path and log tails printed) when it failed, or always with `KV_KEEP_TEST_DIRS=1`.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    nodes: Vec<NodeProcess>,
    routers: Vec<RouterProcess>,
    /// Each router's address on the cluster subnet (netns clusters only), in router order.
    router_ips: Vec<Ipv4Addr>,
    /// Keep the dir even without a panic (set when starting failed).
    keep: bool,
    /// The certificates' dir, when started with `tls: true`.
    certs: Option<PathBuf>,
    /// The namespaces, when started with `netns: true`. Declared last: dropped after
    /// `Drop::drop` has killed the processes inside.
    network: Option<Network>,
}

/// Who a partition separates (netns clusters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Node `id`.
    Node(u64),
    /// Router `i` (0-based, in start order).
    Router(usize),
    /// The root namespace: the harness and the test's clients.
    Host,
}

/// Ports of processes in namespaces: each has its own address, so fixed ports never collide.
const NS_NODE_PORT: u16 = 7000;
const NS_NODE_HTTP_PORT: u16 = 8000;
const NS_ROUTER_PORT: u16 = 7100;
const NS_ROUTER_HTTP_PORT: u16 = 8100;
/// Router `i` in its own namespace has address `10.X.Y.(ROUTER_OCTET + i)`.
const ROUTER_OCTET: u8 = 101;

impl Cluster {
    /// Starts the nodes, waits until each is ready, then the routers, and waits for them.
    pub async fn start(options: ClusterOptions) -> anyhow::Result<Cluster> {
        let dir = test_dir("cluster")?;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        eprintln!(
            "cluster dir: {} (logs in {})",
            dir.display(),
            logs.display()
        );

        let mut network = if options.netns {
            Some(Network::create().context("creating the cluster's network namespaces")?)
        } else {
            None
        };
        let mut node_ns = Vec::new();
        let mut addrs: Vec<(String, String)> = Vec::new();
        for i in 0..options.nodes {
            match network.as_mut() {
                Some(net) => {
                    let member = net.add_member(&format!("n{}", i + 1), i as u8 + 1)?;
                    addrs.push((
                        format!("{}:{NS_NODE_PORT}", member.ip),
                        format!("{}:{NS_NODE_HTTP_PORT}", member.ip),
                    ));
                    node_ns.push(Some(member.ns));
                }
                None => {
                    addrs.push((free_addr(), free_addr()));
                    node_ns.push(None);
                }
            }
        }
        let initial_cluster = addrs
            .iter()
            .enumerate()
            .map(|(i, (addr, _))| format!("{}={addr}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            dir: dir.clone(),
            nodes: Vec::new(),
            routers: Vec::new(),
            router_ips: Vec::new(),
            keep: false,
            certs: None,
            network,
        };
        match cluster.boot(options, addrs, node_ns, initial_cluster).await {
            Ok(()) => Ok(cluster),
            Err(e) => {
                // Dropped without a panic in flight, but a failure all the same.
                cluster.keep = true;
                Err(e.context(format!(
                    "starting the cluster in {} (logs in {})",
                    dir.display(),
                    logs.display()
                )))
            }
        }
    }

    /// Creates and starts the processes of a cluster whose struct already exists, so that
    /// whatever started is killed by `Drop` if a later step fails.
    async fn boot(
        &mut self,
        options: ClusterOptions,
        addrs: Vec<(String, String)>,
        node_ns: Vec<Option<String>>,
        initial_cluster: String,
    ) -> anyhow::Result<()> {
        let dir = self.dir.clone();
        let logs = self.logs_dir();
        if options.tls {
            // Certificates name the addresses processes are dialed at: loopback, or each
            // node's and router's address on the cluster subnet.
            let mut hosts: Vec<String> = Vec::new();
            if let Some(net) = &self.network {
                hosts.extend(
                    addrs
                        .iter()
                        .filter_map(|(a, _)| a.rsplit_once(':').map(|(host, _)| host.to_string())),
                );
                hosts.extend(
                    (0..options.routers).map(|i| net.addr(ROUTER_OCTET + i as u8).to_string()),
                );
            }
            let certs = dir.join("certs");
            let mut args = vec!["certs".to_string(), "create".into(), "--dir".into()];
            args.push(certs.display().to_string());
            for host in hosts {
                args.extend(["--host".to_string(), host]);
            }
            let out = kvctl("http://127.0.0.1:1", args).await?;
            anyhow::ensure!(
                out.status.success(),
                "kvctl certs create: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            self.certs = Some(certs);
        }
        for (i, (addr, http_addr)) in addrs.iter().enumerate() {
            let id = i as u64 + 1;
            let config = NodeConfig {
                id,
                addr: addr.clone(),
                http_addr: http_addr.clone(),
                data_dir: dir.join(format!("node{id}")),
                initial_cluster: initial_cluster.clone(),
                shards: options.shards,
                snapshot_logs: options.snapshot_logs,
                max_logs_kept: options.max_logs_kept,
                extra_args: options.node_args.clone(),
                netns: node_ns[i].clone(),
                tls: self.certs_for("node"),
            };
            let log = logs.join(format!("node{id}.log"));
            self.nodes.push(NodeProcess::new(config, log));
        }
        for node in &mut self.nodes {
            node.start()?;
        }
        self.wait_nodes_ready(options.ready_timeout).await?;

        let node_addrs: Vec<String> = addrs.iter().map(|(a, _)| a.clone()).collect();
        for i in 0..options.routers {
            let name = if i == 0 {
                "router".to_string()
            } else {
                format!("router{}", i + 1)
            };
            let log = logs.join(format!("{name}.log"));
            let router = match self.network.as_mut() {
                Some(net) => {
                    let member = net.add_member(&format!("r{}", i + 1), ROUTER_OCTET + i as u8)?;
                    self.router_ips.push(member.ip);
                    RouterProcess::new(
                        &name,
                        format!("{}:{}", member.ip, NS_ROUTER_PORT + i as u16),
                        format!("{}:{}", member.ip, NS_ROUTER_HTTP_PORT + i as u16),
                        &node_addrs,
                        log,
                    )
                    .in_netns(&member.ns)
                }
                None => RouterProcess::new(&name, free_addr(), free_addr(), &node_addrs, log),
            };
            let router = match self.certs_for("router") {
                Some(tls) => router.with_tls(&tls),
                None => router,
            };
            self.routers.push(router);
        }
        for router in &mut self.routers {
            router.start()?;
        }
        self.wait_routers_ready(options.ready_timeout).await
    }

    /// Keeps the cluster's dir (and prints its log tails) when it is dropped, as if the test
    /// had failed: for callers that report a failure without panicking.
    pub fn keep_dir(&mut self) {
        self.keep = true;
    }

    /// The dir of the cluster's certificates (`ca.pem`, `node.pem`, `router.pem`,
    /// `client.pem` and their keys), when started with `tls: true`.
    pub fn certs(&self) -> Option<&Path> {
        self.certs.as_deref()
    }

    /// `ROLE.pem`, `ROLE-key.pem` and `ca.pem` of a TLS cluster.
    pub fn certs_for(&self, role: &str) -> Option<kv_proto::tls::TlsFiles> {
        let dir = self.certs.as_ref()?;
        Some(kv_proto::tls::TlsFiles {
            cert: dir.join(format!("{role}.pem")),
            key: dir.join(format!("{role}-key.pem")),
            ca: dir.join("ca.pem"),
        })
    }

    /// What a client of a TLS cluster trusts and presents: the CA and the client certificate.
    pub fn client_tls(&self) -> Option<kv_proto::tls::ClientTls> {
        self.certs_for("client").map(|f| kv_proto::tls::ClientTls {
            ca: f.ca,
            identity: Some((f.cert, f.key)),
        })
    }

    /// The cluster's temp dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the process logs are.
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// A line for assertion messages: where to look when it fails.
    pub fn diag(&self) -> String {
        format!("(cluster logs in {})", self.logs_dir().display())
    }

    pub fn nodes(&self) -> &[NodeProcess] {
        &self.nodes
    }

    pub fn nodes_mut(&mut self) -> &mut [NodeProcess] {
        &mut self.nodes
    }

    /// Node ids, 1..=n.
    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id()).collect()
    }

    /// The node with id `id` (panics when there is none).
    pub fn node(&self, id: u64) -> &NodeProcess {
        self.nodes
            .iter()
            .find(|n| n.id() == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    pub fn node_mut(&mut self, id: u64) -> &mut NodeProcess {
        self.nodes
            .iter_mut()
            .find(|n| n.id() == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The first router.
    pub fn router(&self) -> &RouterProcess {
        self.routers.first().expect("the cluster has no router")
    }

    pub fn router_mut(&mut self) -> &mut RouterProcess {
        self.routers.first_mut().expect("the cluster has no router")
    }

    /// Every router, in start order (`router`, `router2`, ...).
    pub fn routers(&self) -> &[RouterProcess] {
        &self.routers
    }

    pub fn routers_mut(&mut self) -> &mut [RouterProcess] {
        &mut self.routers
    }

    /// `http://HOST:PORT` of the first router.
    pub fn router_endpoint(&self) -> String {
        self.router().endpoint()
    }

    /// Waits until every running node answers `/ready`.
    pub async fn wait_nodes_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let waits = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.is_running().then_some(n))
            .map(|n| n.wait_ready(timeout));
        for result in futures::future::join_all(waits).await {
            result?;
        }
        Ok(())
    }

    /// Waits until every running router answers `/ready`.
    pub async fn wait_routers_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        for router in &mut self.routers {
            if router.is_running() {
                router.wait_ready(timeout).await?;
            }
        }
        Ok(())
    }

    /// Waits until every running process answers `/ready`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_nodes_ready(timeout).await?;
        self.wait_routers_ready(timeout).await
    }

    /// SIGKILL every node.
    pub fn kill_nodes(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            node.kill()?;
        }
        Ok(())
    }

    /// A client library handle for the first router, with a time budget per call suited to
    /// a loaded test machine (30 s, retries included).
    pub fn client(&self) -> kvclient::Client {
        self.client_with(kvclient::ClientOptions {
            timeout: Duration::from_secs(30),
            max_retries: 20,
            ..Default::default()
        })
    }

    /// A client library handle for router `i` alone, with `options` (and the client
    /// certificate of a TLS cluster, unless `options` name TLS settings of their own).
    pub fn client_of(&self, i: usize, options: kvclient::ClientOptions) -> kvclient::Client {
        let endpoint = self.routers[i].endpoint();
        kvclient::Client::with_options([endpoint], self.with_client_tls(options))
            .unwrap_or_else(|e| panic!("kvclient refused the router endpoint: {e}"))
    }

    /// A client library handle for every router, with `options`.
    pub fn client_with(&self, options: kvclient::ClientOptions) -> kvclient::Client {
        let endpoints: Vec<String> = self.routers.iter().map(|r| r.endpoint()).collect();
        kvclient::Client::with_options(endpoints, self.with_client_tls(options))
            .unwrap_or_else(|e| panic!("kvclient refused the router endpoints: {e}"))
    }

    fn with_client_tls(&self, mut options: kvclient::ClientOptions) -> kvclient::ClientOptions {
        if options.tls.is_none() {
            options.tls = self.client_tls();
        }
        options
    }

    /// A raw gRPC client of the first router's `Kv` service, for checking exact status codes.
    pub async fn kv_client(&self) -> anyhow::Result<KvClient<Channel>> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(self.router_endpoint())?
            .connect_timeout(RPC_TIMEOUT)
            .timeout(Duration::from_secs(30));
        if let Some(tls) = self.client_tls() {
            endpoint = endpoint.tls_config(tls.config()?)?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to router at {}", self.router_endpoint()))?;
        Ok(KvClient::new(channel)
            .max_decoding_message_size(kv_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(kv_proto::MAX_MESSAGE_BYTES))
    }

    /// Node `id`'s view of the groups it hosts.
    pub async fn group_status(&self, id: u64) -> anyhow::Result<GroupStatusResponse> {
        self.node(id).group_status().await
    }

    /// The status of `group` as node `id` sees it, if that node answers and hosts it.
    pub async fn group_status_of(&self, id: u64, group: u64) -> Option<GroupStatus> {
        let status = self.group_status(id).await.ok()?;
        status.groups.into_iter().find(|g| g.group_id == group)
    }

    /// Every answering node's status, by node id (nodes that do not answer are left out).
    pub async fn all_group_status(&self) -> BTreeMap<u64, GroupStatusResponse> {
        let queries = self.nodes.iter().map(|n| async move {
            let status = tokio::time::timeout(RPC_TIMEOUT * 2, n.group_status()).await;
            (n.id(), status)
        });
        futures::future::join_all(queries)
            .await
            .into_iter()
            .filter_map(|(id, s)| Some((id, s.ok()?.ok()?)))
            .collect()
    }

    /// The group ids hosted anywhere, the meta group (0) included.
    pub async fn group_ids(&self) -> BTreeSet<u64> {
        self.all_group_status()
            .await
            .values()
            .flat_map(|s| s.groups.iter().map(|g| g.group_id))
            .collect()
    }

    /// The leader of `group`: of the leaders the answering nodes report, the one reported with
    /// the highest term. `None` when no answering node knows one.
    pub async fn leader_of(&self, group: u64) -> Option<u64> {
        self.all_group_status()
            .await
            .values()
            .flat_map(|s| s.groups.iter())
            .filter(|g| g.group_id == group && g.leader != 0)
            .max_by_key(|g| g.term)
            .map(|g| g.leader)
    }

    /// Waits until `group` has a leader other than `not` that the leader itself confirms
    /// (it answers GroupStatus and names itself), and returns it.
    pub async fn wait_leader(
        &self,
        group: u64,
        not: Option<u64>,
        timeout: Duration,
    ) -> anyhow::Result<u64> {
        let what = format!(
            "group {group} has a leader other than {not:?} {}",
            self.diag()
        );
        wait_until(timeout, &what, || async move {
            let leader = self.leader_of(group).await?;
            if Some(leader) == not {
                return None;
            }
            let own = self.group_status_of(leader, group).await?;
            (own.leader == leader).then_some(leader)
        })
        .await
    }

    /// Runs `kvctl --router <first router> ARGS...` to completion (60 s at most), with the
    /// CA and client certificate of a TLS cluster.
    pub async fn kvctl<I, S>(&self, args: I) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut all: Vec<std::ffi::OsString> = Vec::new();
        if let Some(tls) = self.certs_for("client") {
            for (flag, path) in [
                ("--tls-ca", tls.ca),
                ("--tls-cert", tls.cert),
                ("--tls-key", tls.key),
            ] {
                all.push(flag.into());
                all.push(path.into());
            }
        }
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        kvctl(&self.router_endpoint(), all).await
    }

    /// Logs of every process, last `lines` lines each.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut paths: Vec<PathBuf> = self
            .nodes
            .iter()
            .map(|n| n.log_path().to_path_buf())
            .collect();
        paths.extend(self.routers.iter().map(|r| r.log_path().to_path_buf()));
        for path in paths {
            out.push_str(&format!(
                "---- {} (last {lines} lines)\n{}\n",
                path.display(),
                log_tail(&path, lines)
            ));
        }
        out
    }
}

/// Partitions (clusters started with `netns: true`).
impl Cluster {
    /// The cluster's namespaces; fails on a loopback cluster.
    pub fn network(&self) -> anyhow::Result<&Network> {
        self.network
            .as_ref()
            .context("this cluster runs on loopback: start it with `netns: true` to partition it")
    }

    /// The address of `peer` on the cluster subnet.
    pub fn peer_ip(&self, peer: Peer) -> anyhow::Result<Ipv4Addr> {
        let net = self.network()?;
        match peer {
            Peer::Host => Ok(net.host_ip()),
            Peer::Node(id) => {
                let node = self
                    .nodes
                    .iter()
                    .find(|n| n.id() == id)
                    .with_context(|| format!("no node {id}"))?;
                let host = node.addr().split(':').next().unwrap_or_default();
                host.parse()
                    .with_context(|| format!("node{id} address {}", node.addr()))
            }
            Peer::Router(i) => self
                .router_ips
                .get(i)
                .copied()
                .with_context(|| format!("no router {i}")),
        }
    }

    fn peer_ips(&self, peers: &[Peer]) -> anyhow::Result<Vec<Ipv4Addr>> {
        peers.iter().map(|p| self.peer_ip(*p)).collect()
    }

    /// Cuts the nodes of `side_a` from the nodes of `side_b` (Raft and everything else between
    /// them), both directions, established connections included. Routers and the harness
    /// still reach every node; a router started in a node's namespace
    /// ([`Cluster::start_router_in_node_ns`]) shares that node's side.
    pub fn partition(&self, side_a: &[u64], side_b: &[u64]) -> anyhow::Result<()> {
        let a: Vec<Peer> = side_a.iter().map(|&id| Peer::Node(id)).collect();
        let b: Vec<Peer> = side_b.iter().map(|&id| Peer::Node(id)).collect();
        self.partition_peers(&a, &b)
    }

    /// Cuts every peer of `side_a` from every peer of `side_b`, both directions.
    pub fn partition_peers(&self, side_a: &[Peer], side_b: &[Peer]) -> anyhow::Result<()> {
        let a = self.peer_ips(side_a)?;
        let b = self.peer_ips(side_b)?;
        self.note_all(&format!("==== harness: partition {side_a:?} | {side_b:?}"));
        self.network()?.partition(&a, &b)
    }

    /// Cuts node `id` from every other node and every router in a namespace of its own (the
    /// harness still reaches it, so its status stays readable).
    pub fn isolate_node(&self, id: u64) -> anyhow::Result<()> {
        let mut others: Vec<Peer> = self
            .node_ids()
            .into_iter()
            .filter(|&n| n != id)
            .map(Peer::Node)
            .collect();
        others.extend((0..self.router_ips.len()).map(Peer::Router));
        self.partition_peers(&[Peer::Node(id)], &others)
    }

    /// Removes every partition.
    pub fn heal(&self) -> anyhow::Result<()> {
        self.note_all("==== harness: heal (every partition removed)");
        self.network()?.heal()
    }

    /// Starts one more router inside node `id`'s namespace (so that it shares the node's side
    /// of any partition), waits until it is ready, and returns its index.
    pub async fn start_router_in_node_ns(&mut self, id: u64) -> anyhow::Result<usize> {
        let ip = self.peer_ip(Peer::Node(id))?;
        let ns = self
            .node(id)
            .netns()
            .context("the node runs in no namespace")?
            .to_string();
        let i = self.routers.len();
        let name = format!("router{}", i + 1);
        let node_addrs: Vec<String> = self.nodes.iter().map(|n| n.addr().to_string()).collect();
        let log = self.logs_dir().join(format!("{name}.log"));
        let mut router = RouterProcess::new(
            &name,
            format!("{ip}:{}", NS_ROUTER_PORT + i as u16),
            format!("{ip}:{}", NS_ROUTER_HTTP_PORT + i as u16),
            &node_addrs,
            log,
        )
        .in_netns(&ns);
        router.start()?;
        self.routers.push(router);
        self.router_ips.push(ip);
        self.routers[i].wait_ready(READY_TIMEOUT).await?;
        Ok(i)
    }

    /// Appends a harness line to every process log (faults are then easy to find).
    fn note_all(&self, line: &str) {
        use std::io::Write;
        let paths = self
            .nodes
            .iter()
            .map(|n| n.log_path())
            .chain(self.routers.iter().map(|r| r.log_path()));
        for path in paths {
            if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) {
                let _ = writeln!(f, "{line}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for router in &mut self.routers {
            let _ = router.kill();
        }
        for node in &mut self.nodes {
            let _ = node.kill();
        }
        if std::thread::panicking() || self.keep {
            eprintln!(
                "test failed: cluster dir kept at {}\n{}",
                self.dir.display(),
                self.log_tails(40)
            );
        } else {
            cleanup_dir(&self.dir);
        }
        if let Some(net) = &self.network {
            if std::thread::panicking() && !net.blocked().is_empty() {
                eprintln!("partition rules at failure:\n{}", net.rules());
            }
        }
        // `network` drops after this, deleting the namespaces of the killed processes.
    }
}

/// Removes a passing test's dir, unless `KV_KEEP_TEST_DIRS` asks to keep it.
pub fn cleanup_dir(dir: &Path) {
    if std::env::var_os("KV_KEEP_TEST_DIRS").is_some() {
        eprintln!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A fresh dir for one test, under `KV_TEST_DIR` or the system temp dir, named after the test.
pub fn test_dir(kind: &str) -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("KV_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)?;
    let test = std::thread::current()
        .name()
        .unwrap_or(kind)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>();
    let dir = tempfile::Builder::new()
        .prefix(&format!("kv-{test}-"))
        .tempdir_in(&base)?
        .keep();
    Ok(dir)
}

/// Runs `kvctl --router ROUTER ARGS...` to completion (60 s at most).
pub async fn kvctl<I, S>(router: &str, args: I) -> anyhow::Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = tokio::process::Command::new(bin_path("kvctl"));
    cmd.arg("--router")
        .arg(router)
        .args(args)
        .env_remove("KVCTL_ROUTER")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .context("kvctl did not finish within 60 s")??;
    Ok(output)
}
