//! `kvctl dev`: a local cluster (three `kvnode`s and one `kvrouter` on loopback) in the
//! foreground.
//!
//! The children get the same flags on every start, so running `kvctl dev` again on the same
//! data dir restarts the same cluster with its data: a node ignores `--initial-cluster` once its
//! data dir is initialized.
//!
//! Secure by default: on first use it makes a CA and role certificates (DIR/certs) and an
//! admin token (DIR/admin.token), runs every hop over TLS (mutual between cluster processes)
//! and starts a new cluster with authentication on, the token being its first admin's.
//! `--insecure` runs plaintext without authentication, for nothing but a throwaway cluster.
//!
//! Each child runs in its own process group, so a terminal's Ctrl-C reaches only `kvctl`, which
//! then stops the children in order: SIGTERM, and SIGKILL for any still running 5 s later.
//! Killing `kvctl` itself with SIGKILL leaves them running; their logs name them.
//!
//! Every child is owned by one supervising task, the only place that waits for it or signals
//! it, so a signal can never reach a reaped (and possibly reused) pid.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use kvclient::{Client, ClientOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::time::{timeout, Instant};

use crate::Outcome;

/// How long the cluster may take to answer its first read.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long children get to exit after SIGTERM, and again after SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// HTTP ports (`/health`, `/ready`, `/metrics`) are the gRPC ports plus this.
const HTTP_PORT_OFFSET: u16 = 100;
/// The key read to tell whether the router serves requests; absent is fine.
const PROBE_KEY: &str = "kvctl-dev-probe";

/// Run a local cluster in the foreground.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Folder for the nodes' data (DIR/node-1..3) and the logs (DIR/logs).
    #[arg(long, value_name = "DIR", default_value = "./kvdata")]
    pub data_dir: PathBuf,
    /// gRPC port of node 1; nodes 2 and 3 use the next two. HTTP ports are gRPC ports + 100.
    #[arg(long, value_name = "P", default_value_t = 7401)]
    pub base_port: u16,
    /// Where the router listens for clients.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7400")]
    pub router_listen: String,
    /// Shard groups of the default keyspace (used when the cluster is first created).
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub shards: u32,
    /// Plaintext on every port and no authentication: anyone who reaches a port can do
    /// anything. Only for a throwaway cluster.
    #[arg(long)]
    pub insecure: bool,
}

/// Where a secure dev cluster keeps its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Secrets {
    /// `kvctl certs create` output: ca.pem, node.pem, router.pem, client.pem and keys.
    certs: PathBuf,
    /// The first admin's token, read by the nodes on the cluster's first start.
    token_file: PathBuf,
}

impl Secrets {
    fn of(args: &DevArgs) -> Option<Secrets> {
        (!args.insecure).then(|| Secrets {
            certs: args.data_dir.join("certs"),
            token_file: args.data_dir.join("admin.token"),
        })
    }

    fn tls_args(&self, role: &str) -> Vec<String> {
        let file = |name: String| self.certs.join(name).to_string_lossy().into_owned();
        vec![
            "--tls-cert".into(),
            file(format!("{role}.pem")),
            "--tls-key".into(),
            file(format!("{role}-key.pem")),
            "--tls-ca".into(),
            file("ca.pem".into()),
        ]
    }

    /// Makes what is missing: the certificates on first use, and the admin token. A token made
    /// for a data dir whose cluster already exists is not its admin's (nodes read the file on
    /// first start only), so an existing token file is kept as it is.
    fn ensure(&self) -> anyhow::Result<String> {
        if !self.certs.join("ca.pem").exists() {
            crate::certs::create(&self.certs, &[], 365, false)
                .with_context(|| format!("making certificates in {}", self.certs.display()))?;
        }
        if let Ok(token) = std::fs::read_to_string(&self.token_file) {
            return Ok(token.trim().to_string());
        }
        let token = shardmap::Token::generate(&mut rand::rngs::OsRng).reveal();
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options
            .open(&self.token_file)
            .with_context(|| format!("cannot create {}", self.token_file.display()))?;
        writeln!(file, "{token}")?;
        file.sync_all()?;
        Ok(token)
    }

    fn client_options(&self, token: &str) -> ClientOptions {
        ClientOptions {
            tls: Some(kv_proto::tls::ClientTls {
                ca: self.certs.join("ca.pem"),
                identity: None,
            }),
            token: Some(token.into()),
            ..ClientOptions::default()
        }
    }
}

/// One process to start.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChildSpec {
    /// Also the log file's name.
    name: String,
    /// `kvnode` or `kvrouter`.
    program: &'static str,
    args: Vec<String>,
    listen: SocketAddr,
    http: SocketAddr,
}

/// The processes of the cluster, nodes first.
fn plan(args: &DevArgs) -> anyhow::Result<Vec<ChildSpec>> {
    let router: SocketAddr = args
        .router_listen
        .parse()
        .with_context(|| format!("--router-listen {:?} is not HOST:PORT", args.router_listen))?;
    let port = |offset: u16| {
        args.base_port.checked_add(offset).with_context(|| {
            format!(
                "--base-port {} leaves no room for the ports",
                args.base_port
            )
        })
    };
    let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let mut nodes = Vec::new();
    for i in 0..3u16 {
        nodes.push((
            i + 1,
            loopback(port(i)?),
            loopback(port(i + HTTP_PORT_OFFSET)?),
        ));
    }
    let router_http = SocketAddr::new(
        router.ip(),
        router
            .port()
            .checked_add(HTTP_PORT_OFFSET)
            .context("--router-listen port leaves no room for its HTTP port")?,
    );
    let initial_cluster = nodes
        .iter()
        .map(|(id, addr, _)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",");
    let secrets = Secrets::of(args);
    let mut specs: Vec<ChildSpec> = nodes
        .iter()
        .map(|(id, listen, http)| ChildSpec {
            name: format!("node-{id}"),
            program: "kvnode",
            args: vec![
                "--id".into(),
                id.to_string(),
                "--listen".into(),
                listen.to_string(),
                "--data-dir".into(),
                args.data_dir
                    .join(format!("node-{id}"))
                    .to_string_lossy()
                    .into_owned(),
                "--initial-cluster".into(),
                initial_cluster.clone(),
                "--shards".into(),
                args.shards.to_string(),
                "--http".into(),
                http.to_string(),
            ]
            .into_iter()
            .chain(secrets.iter().flat_map(|s| {
                let mut extra = s.tls_args("node");
                extra.push("--bootstrap-admin-token-file".into());
                extra.push(s.token_file.to_string_lossy().into_owned());
                extra
            }))
            .collect(),
            listen: *listen,
            http: *http,
        })
        .collect();
    specs.push(ChildSpec {
        name: "router".into(),
        program: "kvrouter",
        args: vec![
            "--listen".into(),
            router.to_string(),
            "--nodes".into(),
            nodes
                .iter()
                .map(|(_, addr, _)| addr.to_string())
                .collect::<Vec<_>>()
                .join(","),
            "--http".into(),
            router_http.to_string(),
        ]
        .into_iter()
        .chain(secrets.iter().flat_map(|s| s.tls_args("router")))
        .collect(),
        listen: router,
        http: router_http,
    });
    Ok(specs)
}

/// Starts the cluster, waits until it serves, and supervises it until a signal or a crash.
pub async fn run(mut args: DevArgs) -> anyhow::Result<Outcome> {
    // Absolute, so the paths printed and passed to the children do not depend on their cwd.
    args.data_dir = std::path::absolute(&args.data_dir)
        .with_context(|| format!("--data-dir {}", args.data_dir.display()))?;
    let specs = plan(&args)?;
    let kvnode = find_binary("kvnode")?;
    let kvrouter = find_binary("kvrouter")?;
    for spec in &specs {
        for addr in [spec.listen, spec.http] {
            TcpListener::bind(addr)
                .with_context(|| format!("{addr} is not free (is another `kvctl dev` running?)"))?;
        }
    }
    let logs = args.data_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let secrets = Secrets::of(&args);
    let client_options = match &secrets {
        Some(s) => s.client_options(&s.ensure()?),
        None => ClientOptions::default(),
    };
    let mut signals = Signals::new()?;

    let (exit_tx, mut exits) = mpsc::unbounded_channel();
    let mut children = Vec::new();
    for spec in &specs {
        let program = if spec.program == "kvnode" {
            &kvnode
        } else {
            &kvrouter
        };
        match spawn(spec, program, &logs, exit_tx.clone()) {
            Ok(child) => children.push(child),
            Err(err) => {
                drop(exit_tx);
                stop_all(&children, &mut exits).await;
                return Err(err);
            }
        }
    }
    // From here on only the supervising tasks hold senders, so `exits` ends once all are done.
    drop(exit_tx);

    let router = specs.last().expect("plan ends with the router");
    let scheme = if secrets.is_some() { "https" } else { "http" };
    let router_url = format!("{scheme}://{}", router.listen);
    eprintln!(
        "kvctl dev: waiting for the cluster (logs in {})",
        logs.display()
    );
    let early = tokio::select! {
        ready = wait_ready(&router_url, router.http, client_options) => ready.err().map(Err),
        exit = exits.recv() => Some(Err(unexpected_exit(exit))),
        signal = signals.recv() => Some(signal.map(|()| Outcome::Success)),
    };
    let result = match early {
        Some(result) => result,
        None => {
            print_banner(&router_url, &specs, &args.data_dir, &logs, secrets.as_ref());
            tokio::select! {
                exit = exits.recv() => Err(unexpected_exit(exit)),
                signal = signals.recv() => signal.map(|()| Outcome::Success),
            }
        }
    };
    eprintln!("kvctl dev: stopping the cluster");
    stop_all(&children, &mut exits).await;
    result
}

fn print_banner(
    router_url: &str,
    specs: &[ChildSpec],
    data_dir: &Path,
    logs: &Path,
    secrets: Option<&Secrets>,
) {
    let nodes: Vec<String> = specs
        .iter()
        .filter(|s| s.program == "kvnode")
        .map(|s| s.listen.to_string())
        .collect();
    match secrets {
        Some(_) => println!("Cluster ready: TLS on every hop, authentication on."),
        None => println!("Cluster ready: INSECURE (plaintext, no authentication)."),
    }
    println!("  router: {router_url}");
    println!("  nodes:  {}", nodes.join(", "));
    println!("  data:   {}", data_dir.display());
    println!("  logs:   {}", logs.display());
    println!();
    println!("Try, in another terminal:");
    match secrets {
        Some(s) => {
            println!("  export KVCTL_ROUTER={router_url}");
            println!("  export KVCTL_TLS_CA={}", s.certs.join("ca.pem").display());
            println!("  export KVCTL_TOKEN=$(cat {})", s.token_file.display());
        }
        None if router_url != "http://127.0.0.1:7400" => {
            println!("  export KVCTL_ROUTER={router_url}");
        }
        None => {}
    }
    println!("  kvctl put a 1");
    println!("  kvctl get a");
    if let Some(s) = secrets {
        println!();
        println!(
            "The token is the first admin's (user admin) when this data dir's cluster was \
             created by kvctl dev; client certificates are in {}.",
            s.certs.display()
        );
    }
    println!();
    println!("Press Ctrl-C to stop.");
    let _ = io::stdout().flush();
}

/// Looks next to the running `kvctl` first (a cargo build puts all three binaries there), then
/// on PATH.
fn find_binary(name: &str) -> anyhow::Result<PathBuf> {
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    if let Some(dir) = &beside {
        let candidate = dir.join(&file);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(&file);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let beside = beside
        .map(|d| format!(" ({})", d.display()))
        .unwrap_or_default();
    bail!("cannot find `{name}` next to kvctl{beside} or on PATH; build it with `cargo build -p {name}`")
}

/// What a supervising task is told to do.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Term,
    Kill,
}

/// A started child, as the main task sees it.
struct Running {
    ctl: UnboundedSender<Stop>,
}

/// A child that has exited.
struct Exit {
    name: String,
    log: PathBuf,
    status: io::Result<ExitStatus>,
}

fn spawn(
    spec: &ChildSpec,
    program: &Path,
    logs: &Path,
    exits: UnboundedSender<Exit>,
) -> anyhow::Result<Running> {
    let log_path = logs.join(format!("{}.log", spec.name));
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    // Appending keeps earlier runs' logs; this line marks where this run starts.
    writeln!(
        log,
        "==== kvctl dev: {} {}",
        program.display(),
        spec.args.join(" ")
    )?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        // A backstop: if kvctl unwinds without stopping the children, they die with it.
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    tracing::info!(name = %spec.name, pid = ?child.id(), "started");
    let (ctl, ctl_rx) = mpsc::unbounded_channel();
    tokio::spawn(supervise(spec.name.clone(), log_path, child, ctl_rx, exits));
    Ok(Running { ctl })
}

/// Owns one child: waits for it, signals it on request, and reports its exit.
async fn supervise(
    name: String,
    log: PathBuf,
    mut child: Child,
    mut ctl: UnboundedReceiver<Stop>,
    exits: UnboundedSender<Exit>,
) {
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            stop = ctl.recv() => match stop {
                Some(Stop::Term) => terminate(&mut child),
                Some(Stop::Kill) => {
                    let _ = child.start_kill();
                }
                None => break child.wait().await,
            },
        }
    };
    let _ = exits.send(Exit { name, log, status });
}

/// Asks a child to stop cleanly.
fn terminate(child: &mut Child) {
    #[cfg(unix)]
    {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        // `id()` is `None` once the child has been reaped, so the pid is still this child's.
        if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    #[cfg(not(unix))]
    {
        let _ = child.start_kill();
    }
}

/// SIGTERM to all, SIGKILL to those still running after the grace period.
async fn stop_all(children: &[Running], exits: &mut UnboundedReceiver<Exit>) {
    for child in children {
        let _ = child.ctl.send(Stop::Term);
    }
    if timeout(STOP_GRACE, drain(exits)).await.is_ok() {
        return;
    }
    eprintln!(
        "kvctl dev: still running {}s after SIGTERM; killing",
        STOP_GRACE.as_secs()
    );
    for child in children {
        let _ = child.ctl.send(Stop::Kill);
    }
    if timeout(STOP_GRACE, drain(exits)).await.is_err() {
        eprintln!("kvctl dev: some processes did not exit even after SIGKILL");
    }
}

/// Reports exits until every supervising task has finished.
async fn drain(exits: &mut UnboundedReceiver<Exit>) {
    while let Some(exit) = exits.recv().await {
        eprintln!(
            "kvctl dev: {} stopped ({})",
            exit.name,
            describe(&exit.status)
        );
    }
}

fn describe(status: &io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(err) => format!("cannot wait for it: {err}"),
    }
}

/// The error for a child that exited on its own, with the end of its log.
fn unexpected_exit(exit: Option<Exit>) -> anyhow::Error {
    let Some(exit) = exit else {
        return anyhow::anyhow!("all processes exited unexpectedly");
    };
    let tail = std::fs::read(&exit.log)
        .map(|bytes| {
            let text = strip_ansi(&String::from_utf8_lossy(&bytes));
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(10)..].join("\n")
        })
        .unwrap_or_default();
    anyhow::anyhow!(
        "{} exited unexpectedly ({}); the end of {}:\n{}",
        exit.name,
        describe(&exit.status),
        exit.log.display(),
        tail
    )
}

/// Drops terminal colour codes (`ESC [ ... letter`), which children may write even to a file.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Polls until the router answers a read (an absent key is an answer), or, should reads fail
/// for a reason retrying cannot fix, until its `/ready` says 200.
async fn wait_ready(
    router_url: &str,
    http: SocketAddr,
    options: ClientOptions,
) -> anyhow::Result<()> {
    let client = Client::with_options(
        [router_url],
        ClientOptions {
            timeout: Duration::from_secs(1),
            max_retries: 0,
            ..options
        },
    )?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let last = match client.get(PROBE_KEY).await {
            Ok(_) => return Ok(()),
            Err(err) if !err.is_retryable() && http_ready(http).await => {
                tracing::warn!(error = %err, "the router is ready but reads fail");
                return Ok(());
            }
            Err(err) => err,
        };
        if Instant::now() >= deadline {
            bail!(
                "the cluster did not become ready within {}s (last error: {last})",
                READY_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `GET /ready` answered 200. Plain HTTP/1.1 by hand: one request does not justify an HTTP
/// client dependency.
async fn http_ready(addr: SocketAddr) -> bool {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET /ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        io::Result::Ok(head.starts_with(b"HTTP/1.") && &head[8..] == b" 200")
    };
    matches!(timeout(Duration::from_secs(1), probe).await, Ok(Ok(true)))
}

/// Ctrl-C and SIGTERM, listened to from the start so that none is missed between phases.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt()).context("cannot listen for Ctrl-C")?,
                terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    async fn recv(&mut self) -> anyhow::Result<()> {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
            Ok(())
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c()
                .await
                .context("cannot listen for Ctrl-C")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> DevArgs {
        DevArgs {
            data_dir: PathBuf::from("/tmp/kv"),
            base_port: 7401,
            router_listen: "127.0.0.1:7400".into(),
            shards: 4,
            insecure: true,
        }
    }

    #[test]
    fn plan_follows_the_flag_contract() {
        let specs = plan(&args()).unwrap();
        assert_eq!(specs.len(), 4);
        assert_eq!(specs[0].name, "node-1");
        assert_eq!(
            specs[0].args,
            [
                "--id",
                "1",
                "--listen",
                "127.0.0.1:7401",
                "--data-dir",
                "/tmp/kv/node-1",
                "--initial-cluster",
                "1=127.0.0.1:7401,2=127.0.0.1:7402,3=127.0.0.1:7403",
                "--shards",
                "4",
                "--http",
                "127.0.0.1:7501",
            ]
        );
        assert_eq!(specs[2].listen.port(), 7403);
        assert_eq!(specs[3].program, "kvrouter");
        assert_eq!(
            specs[3].args,
            [
                "--listen",
                "127.0.0.1:7400",
                "--nodes",
                "127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403",
                "--http",
                "127.0.0.1:7500",
            ]
        );
    }

    #[test]
    fn a_secure_plan_gives_every_process_its_role_certificate_and_nodes_the_token() {
        let secure = DevArgs {
            insecure: false,
            ..args()
        };
        let specs = plan(&secure).unwrap();
        let tail = |spec: &ChildSpec, n: usize| spec.args[spec.args.len() - n..].to_vec();
        assert_eq!(
            tail(&specs[0], 8),
            [
                "--tls-cert",
                "/tmp/kv/certs/node.pem",
                "--tls-key",
                "/tmp/kv/certs/node-key.pem",
                "--tls-ca",
                "/tmp/kv/certs/ca.pem",
                "--bootstrap-admin-token-file",
                "/tmp/kv/admin.token",
            ]
        );
        assert_eq!(
            tail(&specs[3], 6),
            [
                "--tls-cert",
                "/tmp/kv/certs/router.pem",
                "--tls-key",
                "/tmp/kv/certs/router-key.pem",
                "--tls-ca",
                "/tmp/kv/certs/ca.pem",
            ]
        );
        // --insecure adds none of them.
        assert!(plan(&args()).unwrap().iter().all(|s| !s
            .args
            .iter()
            .any(|a| a.starts_with("--tls") || a.contains("token"))));
    }

    #[test]
    fn secrets_are_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = Secrets::of(&DevArgs {
            data_dir: dir.path().to_path_buf(),
            insecure: false,
            ..args()
        })
        .unwrap();
        let token = secrets.ensure().unwrap();
        assert!(token.starts_with("kvt_"), "{token}");
        assert!(secrets.certs.join("node.pem").exists());
        let ca = std::fs::read(secrets.certs.join("ca.pem")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&secrets.token_file)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the token file is readable by others");
        }
        assert_eq!(secrets.ensure().unwrap(), token);
        assert_eq!(std::fs::read(secrets.certs.join("ca.pem")).unwrap(), ca);
    }

    #[test]
    fn plan_is_the_same_every_time() {
        // Restarting on the same dir relies on identical flags.
        assert_eq!(plan(&args()).unwrap(), plan(&args()).unwrap());
    }

    #[test]
    fn plan_refuses_bad_addresses_and_ports() {
        let bad_router = DevArgs {
            router_listen: "localhost".into(),
            ..args()
        };
        assert!(plan(&bad_router).is_err());
        let no_room = DevArgs {
            base_port: 65500,
            ..args()
        };
        assert!(plan(&no_room).is_err());
    }

    #[test]
    fn colour_codes_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m ok"),
            "2026  INFO ok"
        );
        assert_eq!(strip_ansi("plain\nlines"), "plain\nlines");
    }

    #[test]
    fn missing_binary_is_a_clear_error() {
        let err = find_binary("kvctl-no-such-binary").unwrap_err();
        assert!(err
            .to_string()
            .contains("cargo build -p kvctl-no-such-binary"));
    }

    #[tokio::test]
    async fn http_probe_reads_the_status_line() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for answer in [
                "HTTP/1.1 200 OK\r\n\r\n",
                "HTTP/1.1 503 Service Unavailable\r\n\r\n",
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await.unwrap();
                s.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        assert!(http_ready(addr).await);
        assert!(!http_ready(addr).await);
        server.await.unwrap();
    }
}
