//! Network namespaces, so that a test can cut real TCP traffic between real processes.
//!
//! Signals (SIGSTOP, SIGKILL) fault a whole process; a partition faults the network between
//! processes that keep running, which is what Raft's safety argument is really about. Each
//! cluster started with `netns: true` gets its own small network:
//!
//! ```text
//!   root namespace (harness, test client)          hub namespace <tag>-h
//!   veth kv<r>h  10.X.Y.254/24  ---------------------  port  \
//!                                                               bridge br0 ---- nft bridge table
//!   namespace <tag>-n1: eth0 10.X.Y.1/24  ----------------  port  /         "kvpart": the DROP rules
//!   namespace <tag>-n2: eth0 10.X.Y.2/24  ----------------  port /
//!   namespace <tag>-r1: eth0 10.X.Y.101/24 ---------------  port
//! ```
//!
//! - Every member (a node, a router) has its own namespace and address; processes start with
//!   `ip netns exec NS ...`, so `kvnode` and `kvrouter` need no extra flags.
//! - The bridge lives in a namespace of its own rather than in the root namespace: the root
//!   namespace of a CI machine often has a firewall (Docker sets the `FORWARD` policy to
//!   DROP, and `br_netfilter` passes bridged frames through it), which a fresh namespace does
//!   not have. So nothing of the host's firewall is touched or relied on.
//! - A partition is a pair of nft DROP rules (one per direction) on the bridge's forward hook,
//!   matching source and destination addresses. Every packet between two members crosses the
//!   bridge, so the rules cut new and established TCP connections alike, silently (a
//!   blackhole, as a real partition, not a reset). Healing flushes the chain.
//! - The subnet `10.X.Y.0/24` is drawn at random (X in 200..=250) and checked against the
//!   host's addresses; names carry the test process id and a random tag, so concurrent tests
//!   never collide.
//! - [`Network`]'s `Drop` deletes the root-side veth and every namespace (the veths and the
//!   bridge go with them), after a panic too. Namespaces left by a test process that was
//!   SIGKILLed (a nextest timeout) are swept by the next [`Network::create`]: their names
//!   start with `kvt-<pid>-`, and that pid no longer runs.
//!
//! Needs root (or `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`), `ip` from iproute2 and `nft`. Tests that
//! need namespaces call [`require_netns`]: it fails the test with a message saying what is
//! missing, or skips it (returns `false`) only when `KV_SKIP_NETNS=1` is set.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use anyhow::Context;
use rand::Rng;

/// Prefix of every namespace name this harness creates: `kvt-<pid>-<tag>-<member>`.
const NS_PREFIX: &str = "kvt-";
/// The host address (root namespace side) in every cluster subnet.
pub const HOST_OCTET: u8 = 254;

/// Distinguishes the networks one test process creates.
static SEQ: AtomicU32 = AtomicU32::new(0);

/// Whether this machine can create network namespaces (root, `ip` and `nft` present); `Err`
/// says what is missing.
pub fn netns_support() -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!(
            "network namespaces need root (running as uid {})",
            nix::unistd::Uid::effective()
        );
    }
    for (tool, arg) in [("ip", "-V"), ("nft", "--version")] {
        let out = Command::new(tool)
            .arg(arg)
            .output()
            .with_context(|| format!("`{tool}` is not installed (iproute2 / nftables)"))?;
        if !out.status.success() {
            anyhow::bail!(
                "`{tool} {arg}` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

/// For tests that need namespaces: `true` when they can run. Without support it panics with
/// the reason, unless `KV_SKIP_NETNS=1` is set, in which case it prints why and returns
/// `false` (the test then returns early). Never skips silently.
pub fn require_netns() -> bool {
    match netns_support() {
        Ok(()) => true,
        Err(e) => {
            if std::env::var("KV_SKIP_NETNS").as_deref() == Ok("1") {
                eprintln!("SKIPPED (KV_SKIP_NETNS=1): this test needs network namespaces: {e:#}");
                false
            } else {
                panic!(
                    "this test needs network namespaces and cannot create them: {e:#}. Run the \
                     tests as root with iproute2 and nftables installed, or set KV_SKIP_NETNS=1 \
                     to skip the partition tests explicitly."
                );
            }
        }
    }
}

/// Runs a command to completion; the error carries its stderr.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !out.status.success() {
        anyhow::bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS...`
fn ip(args: &[&str]) -> anyhow::Result<String> {
    run("ip", args)
}

/// `ip netns exec NS PROGRAM ARGS...`
fn in_ns(ns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    ip(&full)
}

/// Deletes namespaces whose creating test process is gone (it was SIGKILLed before its
/// `Drop` ran). Their processes died with it (`PR_SET_PDEATHSIG`).
fn sweep_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("netns: deleting stale namespace {name} of gone process {pid}");
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// One member of the network: a namespace with one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The namespace name, for `ip netns exec`.
    pub ns: String,
    /// Its address on the cluster subnet.
    pub ip: Ipv4Addr,
}

/// A per-cluster network: a hub namespace with a bridge, the host's veth into it, and one
/// namespace per member. See the module docs.
#[derive(Debug)]
pub struct Network {
    /// `kvt-<pid>-<tag>`: every namespace name starts with it.
    prefix: String,
    /// Short random tag for interface names (at most 15 bytes each).
    ifprefix: String,
    /// `10.X.Y`
    subnet: [u8; 3],
    hub: String,
    host_if: String,
    /// Every namespace created, hub included, for teardown.
    namespaces: Vec<String>,
    members: Vec<Member>,
    /// Blocked (from, to) address pairs. A std mutex: held only around `nft` calls, never
    /// across `.await`.
    blocked: Mutex<BTreeSet<(Ipv4Addr, Ipv4Addr)>>,
}

impl Network {
    /// Creates the hub namespace, its bridge and the host's veth with address `10.X.Y.254`.
    pub fn create() -> anyhow::Result<Network> {
        netns_support()?;
        sweep_stale();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let mut rng = rand::thread_rng();
        let tag: u32 = rng.gen_range(0..0x100_0000);
        let prefix = format!("{NS_PREFIX}{}-{seq}", std::process::id());
        let ifprefix = format!("kv{tag:06x}");
        let subnet = pick_subnet()?;
        let mut net = Network {
            hub: format!("{prefix}-h"),
            host_if: format!("{ifprefix}h"),
            prefix,
            ifprefix,
            subnet,
            namespaces: Vec::new(),
            members: Vec::new(),
            blocked: Mutex::new(BTreeSet::new()),
        };
        net.setup_hub()
            .with_context(|| format!("creating the hub namespace {}", net.hub))?;
        eprintln!(
            "netns: network {} on {}.0/24 (host {})",
            net.prefix,
            net.subnet_str(),
            net.host_ip()
        );
        Ok(net)
    }

    fn setup_hub(&mut self) -> anyhow::Result<()> {
        let hub = self.hub.clone();
        ip(&["netns", "add", &hub])?;
        self.namespaces.push(hub.clone());
        in_ns(&hub, "ip", &["link", "set", "lo", "up"])?;
        in_ns(&hub, "ip", &["link", "add", "br0", "type", "bridge"])?;
        in_ns(&hub, "ip", &["link", "set", "br0", "up"])?;
        // The DROP rules live here: a bridge-family table sees every frame between two ports.
        in_ns(&hub, "nft", &["add", "table", "bridge", "kvpart"])?;
        in_ns(
            &hub,
            "nft",
            &[
                "add chain bridge kvpart forward { type filter hook forward priority 0; policy accept; }",
            ],
        )?;
        // The host's leg: one end in the root namespace with the host address.
        let host_if = self.host_if.clone();
        let peer = format!("{}p", self.ifprefix);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &hub])?;
        in_ns(&hub, "ip", &["link", "set", &peer, "master", "br0", "up"])?;
        let host_cidr = format!("{}/24", self.host_ip());
        ip(&["addr", "add", &host_cidr, "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        Ok(())
    }

    fn subnet_str(&self) -> String {
        format!("{}.{}.{}", self.subnet[0], self.subnet[1], self.subnet[2])
    }

    /// `10.X.Y.octet`
    pub fn addr(&self, octet: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], octet)
    }

    /// The root namespace's address on the subnet (the harness and the test client).
    pub fn host_ip(&self) -> Ipv4Addr {
        self.addr(HOST_OCTET)
    }

    /// Creates a member namespace `<prefix>-<name>` with address `10.X.Y.octet`, wired to the
    /// bridge.
    pub fn add_member(&mut self, name: &str, octet: u8) -> anyhow::Result<Member> {
        anyhow::ensure!(
            octet != 0 && octet != 255 && octet != HOST_OCTET,
            "octet {octet} is reserved"
        );
        let ns = format!("{}-{name}", self.prefix);
        let ip_addr = self.addr(octet);
        anyhow::ensure!(
            !self.members.iter().any(|m| m.ip == ip_addr || m.ns == ns),
            "member {name} or address {ip_addr} exists already"
        );
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        let a = format!("{}{octet}a", self.ifprefix);
        let b = format!("{}{octet}b", self.ifprefix);
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])
            .and_then(|_| ip(&["link", "set", &a, "netns", &ns]))
            .and_then(|_| ip(&["link", "set", &b, "netns", &self.hub]))
            .and_then(|_| in_ns(&self.hub, "ip", &["link", "set", &b, "master", "br0", "up"]))
            .and_then(|_| in_ns(&ns, "ip", &["link", "set", &a, "name", "eth0"]))
            .and_then(|_| {
                in_ns(
                    &ns,
                    "ip",
                    &["addr", "add", &format!("{ip_addr}/24"), "dev", "eth0"],
                )
            })
            .and_then(|_| in_ns(&ns, "ip", &["link", "set", "eth0", "up"]))
            .and_then(|_| in_ns(&ns, "ip", &["link", "set", "lo", "up"]))
            .with_context(|| format!("wiring namespace {ns} ({ip_addr})"))?;
        let member = Member { ns, ip: ip_addr };
        self.members.push(member.clone());
        Ok(member)
    }

    /// Every member, in creation order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Drops every packet from `from` to `to` (one direction). Idempotent.
    pub fn block_one_way(&self, from: Ipv4Addr, to: Ipv4Addr) -> anyhow::Result<()> {
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        if blocked.contains(&(from, to)) || from == to {
            return Ok(());
        }
        let rule = format!("add rule bridge kvpart forward ip saddr {from} ip daddr {to} drop");
        in_ns(&self.hub, "nft", &[&rule])?;
        blocked.insert((from, to));
        Ok(())
    }

    /// Drops every packet between `a` and `b`, both directions.
    pub fn block(&self, a: Ipv4Addr, b: Ipv4Addr) -> anyhow::Result<()> {
        self.block_one_way(a, b)?;
        self.block_one_way(b, a)
    }

    /// Cuts every address of `side_a` from every address of `side_b`, both directions.
    pub fn partition(&self, side_a: &[Ipv4Addr], side_b: &[Ipv4Addr]) -> anyhow::Result<()> {
        for &a in side_a {
            for &b in side_b {
                self.block(a, b)?;
            }
        }
        Ok(())
    }

    /// Removes every DROP rule: the network is whole again.
    pub fn heal(&self) -> anyhow::Result<()> {
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        in_ns(
            &self.hub,
            "nft",
            &["flush", "chain", "bridge", "kvpart", "forward"],
        )?;
        blocked.clear();
        Ok(())
    }

    /// The (from, to) pairs currently dropped.
    pub fn blocked(&self) -> BTreeSet<(Ipv4Addr, Ipv4Addr)> {
        self.blocked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The nft rules as the kernel holds them, for diagnostics.
    pub fn rules(&self) -> String {
        in_ns(&self.hub, "nft", &["list", "table", "bridge", "kvpart"])
            .unwrap_or_else(|e| format!("(cannot list rules: {e:#})"))
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // The root-side veth first: deleting it deletes its peer in the hub at once, whereas
        // a namespace's devices go away asynchronously after `ip netns del`.
        let _ = ip(&["link", "del", &self.host_if]);
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("netns: cannot delete namespace {ns}: {e:#}");
            }
        }
    }
}

/// A random `10.X.Y` (X in 200..=250) that no address or route of the root namespace uses.
fn pick_subnet() -> anyhow::Result<[u8; 3]> {
    let used = ip(&["-4", "-o", "addr", "show"]).unwrap_or_default()
        + &ip(&["-4", "route", "show"]).unwrap_or_default();
    let mut rng = rand::thread_rng();
    for _ in 0..1_000 {
        let subnet = [10, rng.gen_range(200..=250), rng.gen_range(0..=255)];
        let needle = format!("{}.{}.{}.", subnet[0], subnet[1], subnet[2]);
        if !used.contains(&needle) {
            return Ok(subnet);
        }
    }
    anyhow::bail!("no free 10.X.Y.0/24 subnet found")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;

    /// A TCP echo of one line across the bridge, with a short timeout.
    fn exchange(from_ns: Option<&str>, to: SocketAddr) -> bool {
        // The client side runs in a namespace through a tiny bash /dev/tcp script.
        match from_ns {
            None => {
                let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) else {
                    return false;
                };
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let _ = s.write_all(b"ping\n");
                let mut buf = [0u8; 5];
                s.read_exact(&mut buf).is_ok()
            }
            Some(ns) => {
                let script = format!(
                    "exec 3<>/dev/tcp/{}/{} && echo ping >&3 && head -c5 <&3",
                    to.ip(),
                    to.port()
                );
                Command::new("timeout")
                    .args(["3", "ip", "netns", "exec", ns, "bash", "-c", &script])
                    .output()
                    .map(|o| o.status.success() && o.stdout == b"ping\n")
                    .unwrap_or(false)
            }
        }
    }

    /// Creates a network, checks traffic flows, blocks it, heals it, and checks teardown.
    /// Runs only where namespaces can be created (see [`require_netns`]).
    #[test]
    fn block_heal_and_teardown() {
        if !require_netns() {
            return;
        }
        let mut net = Network::create().unwrap();
        let m1 = net.add_member("n1", 1).unwrap();
        let m2 = net.add_member("n2", 2).unwrap();
        let addr: SocketAddr = format!("{}:7000", m1.ip).parse().unwrap();
        // A listener inside n1 (bound by a thread that entered the namespace).
        let listener = listen_in(&m1.ns, addr);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { continue };
                let mut buf = [0u8; 5];
                if c.read_exact(&mut buf).is_ok() {
                    let _ = c.write_all(&buf);
                }
            }
        });
        assert!(exchange(None, addr), "host -> n1");
        assert!(exchange(Some(&m2.ns), addr), "n2 -> n1");
        net.block(m1.ip, m2.ip).unwrap();
        assert!(!exchange(Some(&m2.ns), addr), "n2 -> n1 while blocked");
        assert!(exchange(None, addr), "host -> n1 is not blocked");
        net.heal().unwrap();
        assert!(exchange(Some(&m2.ns), addr), "n2 -> n1 after heal");
        let names: Vec<String> = net.namespaces.clone();
        let host_if = net.host_if.clone();
        drop(net);
        let list = ip(&["netns", "list"]).unwrap();
        for ns in names {
            assert!(!list.contains(&ns), "{ns} left behind: {list}");
        }
        assert!(
            ip(&["link", "show", &host_if]).is_err(),
            "{host_if} left behind"
        );
    }

    /// A listener bound inside namespace `ns`: a thread enters it (setns), binds and returns;
    /// the socket keeps its namespace.
    fn listen_in(ns: &str, addr: SocketAddr) -> TcpListener {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            TcpListener::bind(addr).unwrap()
        })
        .join()
        .unwrap()
    }
}
