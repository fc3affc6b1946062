//! A router out of file descriptors: idle TCP connections hold every descriptor its limit
//! allows. It must not spin (tonic retries a failed accept at once, and out of descriptors every
//! retry fails again), and it must serve again once those connections close.

use std::time::Duration;

use cluster_tests::ports::free_addr;
use cluster_tests::probe::http_status;
use cluster_tests::{bins, wait_for, ChildProcess, Cluster, ClusterOptions};

/// CPU time (user + system) of process `pid` so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_out_of_descriptors_does_not_spin_and_recovers() {
    let cluster = Cluster::start(ClusterOptions {
        routers: 0,
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    let diag = cluster.diag();
    let nodes: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.addr().to_string())
        .collect();
    let (addr, http) = (free_addr(), free_addr());
    let mut router = ChildProcess::new(
        "router-fd",
        "/usr/bin/prlimit".into(),
        vec![
            "--nofile=160:160".into(),
            bins::bin_path("kvrouter").display().to_string(),
            "--listen".into(),
            addr.clone(),
            "--http".into(),
            http.clone(),
            "--nodes".into(),
            nodes.join(","),
        ],
        cluster.logs_dir().join("router-fd.log"),
    );
    router.start().expect("router starts");
    wait_for(Duration::from_secs(60), "the router is ready", || {
        let http = http.clone();
        async move { http_status(&http, "/ready").await == Some(200) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#} {diag}"));
    let pid = router.pid().expect("router pid");

    // More idle connections than the router has descriptors.
    let mut idle = Vec::new();
    // Once the accept queue is full too, the kernel drops SYNs and a connect would wait out
    // its retries (minutes): a connect that does not complete soon means the router is full.
    for _ in 0..300 {
        let connect = tokio::net::TcpStream::connect(&addr);
        match tokio::time::timeout(Duration::from_millis(500), connect).await {
            Ok(Ok(s)) => idle.push(s),
            Ok(Err(_)) => {}
            Err(_) => break,
        }
    }
    assert!(
        idle.len() > 160,
        "only {} connections opened: the router was never out of descriptors {diag}",
        idle.len()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_time(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_time(pid) - before;
    assert!(
        router.is_running(),
        "the router died out of descriptors {diag}"
    );
    // Spinning takes a whole core (about 3 s here); backing off takes almost nothing.
    assert!(
        used < Duration::from_millis(1_000),
        "the router used {used:?} of CPU in 3 s while out of descriptors: it spins {diag}"
    );

    drop(idle);
    let client = kvclient::Client::connect([format!("http://{addr}")]).expect("client");
    let put = wait_for(Duration::from_secs(30), "a put through the router", || {
        let client = client.clone();
        async move { client.put("fd-key", "v").await.is_ok() }
    })
    .await;
    put.unwrap_or_else(|e| {
        panic!("the router does not serve once the connections closed: {e:#} {diag}")
    });
}
