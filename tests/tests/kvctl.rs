//! `kvctl` against a real cluster: output formats and exit codes as the design's contracts
//! state them (0 success, 2 key absent, 1 any other error with a message on stderr).

use std::io::BufRead;
use std::process::Output;
use std::time::Duration;

use cluster_tests::bins::bin_path;
use cluster_tests::cluster::{cleanup_dir, test_dir};
use cluster_tests::ports::{free_addr, free_port_block};
use cluster_tests::process::{kill_mentioning, pids_mentioning};
use cluster_tests::{kvctl, wait_for, ChildProcess, Cluster, ClusterOptions};
use nix::sys::signal::Signal;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Panics unless `out` exited with `code`; the message shows both streams.
fn expect_exit(what: &str, out: &Output, code: i32, diag: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: exit {:?}, expected {code}; stdout {:?}, stderr {:?} {diag}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_commands_print_and_exit_as_documented() {
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let diag = cluster.diag();

    let out = cluster.kvctl(["put", "a", "1"]).await.unwrap();
    expect_exit("put a 1", &out, 0, &diag);

    let out = cluster.kvctl(["get", "a"]).await.unwrap();
    expect_exit("get a", &out, 0, &diag);
    assert_eq!(
        text(&out.stdout),
        "1\n",
        "get a prints the value alone {diag}"
    );

    // Flags may follow the subcommand.
    let out = cluster
        .kvctl(["get", "a", "--consistency", "eventual"])
        .await
        .unwrap();
    expect_exit("get a --consistency eventual", &out, 0, &diag);

    let out = cluster.kvctl(["get", "absent-key"]).await.unwrap();
    expect_exit("get of an absent key", &out, 2, &diag);
    assert!(
        out.stdout.is_empty(),
        "absent key printed {:?}",
        text(&out.stdout)
    );

    let out = cluster.kvctl(["get", "a", "-o", "json"]).await.unwrap();
    expect_exit("get a -o json", &out, 0, &diag);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("get -o json printed {:?}: {e}", text(&out.stdout)));
    assert_eq!(json["key"], "a", "{json}");
    assert_eq!(json["value"], "1", "{json}");
    assert!(
        json["version"].as_u64().is_some_and(|v| v > 0),
        "version in {json}"
    );

    // An error: exit 1, a message on stderr, nothing on stdout.
    let out = cluster.kvctl(["put", "", "x"]).await.unwrap();
    expect_exit("put of an empty key", &out, 1, &diag);
    assert!(
        out.stdout.is_empty(),
        "error printed on stdout: {:?}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).to_lowercase().contains("key"),
        "stderr should name the problem: {:?}",
        text(&out.stderr)
    );

    for (k, v) in [("c", "3"), ("b", "2"), ("d", "4")] {
        let out = cluster.kvctl(["put", k, v]).await.unwrap();
        expect_exit("put", &out, 0, &diag);
    }
    let out = cluster.kvctl(["scan", "a", "d"]).await.unwrap();
    expect_exit("scan a d", &out, 0, &diag);
    assert_eq!(
        text(&out.stdout),
        "a\t1\nb\t2\nc\t3\n",
        "scan [a, d) {diag}"
    );

    let out = cluster
        .kvctl(["scan", "", "", "--keys-only"])
        .await
        .unwrap();
    expect_exit("scan --keys-only", &out, 0, &diag);
    assert_eq!(text(&out.stdout), "a\nb\nc\nd\n", "scan --keys-only {diag}");

    let out = cluster
        .kvctl(["scan", "", "", "--limit", "2"])
        .await
        .unwrap();
    expect_exit("scan --limit 2", &out, 0, &diag);
    assert_eq!(text(&out.stdout), "a\t1\nb\t2\n", "scan --limit 2 {diag}");

    let out = cluster
        .kvctl(["scan", "b", "", "-o", "json"])
        .await
        .unwrap();
    expect_exit("scan -o json", &out, 0, &diag);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("scan -o json printed {:?}: {e}", text(&out.stdout)));
    let rows = json
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {json}"));
    let keys: Vec<&str> = rows.iter().filter_map(|r| r["key"].as_str()).collect();
    assert_eq!(keys, ["b", "c", "d"], "{json}");
    assert!(
        rows.iter()
            .all(|r| r["version"].as_u64().is_some_and(|v| v > 0)),
        "{json}"
    );

    let out = cluster.kvctl(["delete", "a"]).await.unwrap();
    expect_exit("delete a", &out, 0, &diag);
    let out = cluster.kvctl(["get", "a"]).await.unwrap();
    expect_exit("get a after delete", &out, 2, &diag);

    // Conditional put: version 0 means "must not exist".
    let out = cluster
        .kvctl(["put", "b", "x", "--if-version", "0"])
        .await
        .unwrap();
    expect_exit("put --if-version 0 of an existing key", &out, 1, &diag);
    let out = cluster.kvctl(["get", "b"]).await.unwrap();
    assert_eq!(
        text(&out.stdout),
        "2\n",
        "failed conditional put changed b {diag}"
    );
}

/// A listing longer than the server's page (1,000 keys) comes out whole and in order, printed
/// page by page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_scan_pages_through_long_listings() {
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let diag = cluster.diag();
    let keys: Vec<String> = (0..2_500).map(|i| format!("p{i:05}")).collect();
    for chunk in keys.chunks(500) {
        cluster
            .client()
            .batch_put(
                chunk.iter().map(|k| (k.clone(), format!("v{k}"))),
                &kvclient::WriteOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("batch_put: {e} {diag}"));
    }

    let out = cluster
        .kvctl(["scan", "p", "q", "--keys-only"])
        .await
        .unwrap();
    expect_exit("scan --keys-only", &out, 0, &diag);
    let listed: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert!(
        listed == keys,
        "{} keys listed of {} {diag}",
        listed.len(),
        keys.len()
    );

    let out = cluster
        .kvctl(["scan", "p", "q", "--limit", "1500"])
        .await
        .unwrap();
    expect_exit("scan --limit 1500", &out, 0, &diag);
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), 1500, "{diag}");
    assert_eq!(lines[1499], "p01499	vp01499", "{diag}");

    let out = cluster
        .kvctl(["scan", "p01000", "", "-o", "json"])
        .await
        .unwrap();
    expect_exit("scan -o json", &out, 0, &diag);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("scan -o json is not JSON: {e} {diag}"));
    let rows = json.as_array().expect("an array");
    assert_eq!(rows.len(), 1500, "{diag}");
    assert_eq!(rows[0]["key"], "p01000", "{diag}");
    assert_eq!(rows[1499]["value"], "vp02499", "{diag}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_reports_an_unreachable_router_with_exit_1() {
    // Nothing listens there.
    let router = format!("http://{}", free_addr());
    let out = kvctl(&router, ["get", "a", "--timeout", "2s"])
        .await
        .unwrap();
    expect_exit("get from an unreachable router", &out, 1, "");
    assert!(out.stdout.is_empty(), "stdout: {:?}", text(&out.stdout));
    assert!(!out.stderr.is_empty(), "no message on stderr");
}

/// Kills whatever `kvctl dev` left behind (its children run in their own process groups, so
/// they outlive a killed parent) and keeps the dir if the test failed.
struct DevGuard {
    dir: std::path::PathBuf,
}

impl Drop for DevGuard {
    fn drop(&mut self) {
        kill_mentioning(&self.dir.display().to_string());
        if std::thread::panicking() {
            eprintln!("test failed: kvctl dev dir kept at {}", self.dir.display());
        } else {
            cleanup_dir(&self.dir);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_dev_runs_a_cluster_until_ctrl_c() {
    let dir = test_dir("dev").unwrap();
    let guard = DevGuard { dir: dir.clone() };
    let data_dir = dir.join("data");
    let dir_text = data_dir.display().to_string();
    // kvctl dev derives its ports: nodes at BASE, BASE+1, BASE+2, HTTP at those + 100; the
    // router at R, its HTTP at R + 100.
    let base = free_port_block(&[0, 1, 2, 100, 101, 102]);
    let router_port = free_port_block(&[0, 100]);
    let mut dev = ChildProcess::new(
        "kvctl-dev",
        bin_path("kvctl"),
        vec![
            "dev".into(),
            "--data-dir".into(),
            dir_text.clone(),
            "--base-port".into(),
            base.to_string(),
            "--router-listen".into(),
            format!("127.0.0.1:{router_port}"),
        ],
        dir.join("kvctl-dev.log"),
    );
    dev.pipe_stdout();
    dev.start().expect("start kvctl dev");
    let diag = format!(
        "(kvctl dev output in {}, cluster logs in {}/logs)",
        dev.log_path().display(),
        dir_text
    );

    // Its stdout, line by line, copied to the log.
    let stdout = dev.take_stdout().expect("piped stdout");
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let log_path = dev.log_path().to_path_buf();
    std::thread::spawn(move || {
        let mut log = std::fs::OpenOptions::new().append(true).open(log_path).ok();
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(log) = log.as_mut() {
                use std::io::Write;
                let _ = writeln!(log, "stdout: {line}");
            }
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // Wait for the banner's router address.
    let router = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(line) = lines.recv().await {
            if let Some(url) = line.split_whitespace().find(|w| w.starts_with("https://")) {
                if line.contains("router") {
                    return Some(url.to_string());
                }
            }
        }
        None
    })
    .await
    .unwrap_or_else(|_| panic!("kvctl dev printed no router address within 90 s {diag}"))
    .unwrap_or_else(|| panic!("kvctl dev closed stdout without a router address {diag}"));
    assert_eq!(router, format!("https://127.0.0.1:{router_port}"), "{diag}");
    let children = pids_mentioning(&dir_text);
    assert!(
        children.len() >= 4,
        "expected three kvnode and one kvrouter mentioning {dir_text}, found pids {children:?} {diag}"
    );

    // Secure by default: TLS with its own CA, and authentication with the admin token it
    // made; without the token, or in plaintext, nothing is served.
    let ca = data_dir.join("certs").join("ca.pem").display().to_string();
    let token = std::fs::read_to_string(data_dir.join("admin.token"))
        .unwrap_or_else(|e| panic!("kvctl dev wrote no admin.token: {e} {diag}"));
    let token = token.trim();
    let out = kvctl(
        &router,
        ["put", "a", "1", "--tls-ca", &ca, "--token", token],
    )
    .await
    .unwrap();
    expect_exit("put a 1 on kvctl dev", &out, 0, &diag);
    let out = kvctl(&router, ["get", "a", "--tls-ca", &ca, "--token", token])
        .await
        .unwrap();
    expect_exit("get a on kvctl dev", &out, 0, &diag);
    assert_eq!(text(&out.stdout), "1\n", "{diag}");
    let out = kvctl(&router, ["get", "a", "--tls-ca", &ca]).await.unwrap();
    expect_exit("get a without a token", &out, 1, &diag);
    let plain = router.replace("https://", "http://");
    let out = kvctl(&plain, ["get", "a", "--token", token, "--timeout", "2s"])
        .await
        .unwrap();
    expect_exit("get a in plaintext", &out, 1, &diag);

    // Ctrl-C: kvctl dev stops its children and exits.
    let status = dev
        .stop_with(Signal::SIGINT, Duration::from_secs(60))
        .await
        .unwrap();
    let status = status.unwrap_or_else(|| panic!("kvctl dev ignored SIGINT for 60 s {diag}"));
    assert!(
        status.success(),
        "kvctl dev exited with {status} after SIGINT {diag}"
    );
    wait_for(
        Duration::from_secs(10),
        "kvctl dev's children are gone",
        || {
            let left = pids_mentioning(&dir_text);
            async move { left.is_empty() }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: still running {:?} {diag}", pids_mentioning(&dir_text)));
    drop(guard);
}

/// `kvctl bench -o json` prints one object with the contract's fields. The shape, never the
/// speed: these machines are shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_bench_prints_the_contract_fields() {
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let diag = cluster.diag();
    for workload in ["put", "get-strong", "get-eventual", "mixed"] {
        let out = cluster
            .kvctl([
                "bench",
                "--workload",
                workload,
                "--concurrency",
                "4",
                "--duration",
                "1s",
                "--keys",
                "50",
                "--value-size",
                "16",
                "-o",
                "json",
            ])
            .await
            .unwrap();
        expect_exit(workload, &out, 0, &diag);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{workload}: not JSON ({e}): {:?}", text(&out.stdout)));
        for field in ["ops_per_s", "p50_us", "p99_us", "p999_us", "errors"] {
            assert!(
                report[field].is_number(),
                "{workload}: field {field} missing or not a number in {report}"
            );
        }
        assert!(
            report["ops_per_s"].as_f64().unwrap_or(0.0) > 0.0,
            "{workload}: {report}"
        );
        assert!(
            report["p50_us"].as_u64() <= report["p99_us"].as_u64()
                && report["p99_us"].as_u64() <= report["p999_us"].as_u64(),
            "{workload}: percentiles out of order in {report}"
        );
    }
    let out = cluster
        .kvctl(["bench", "--concurrency", "0", "--duration", "1s"])
        .await
        .unwrap();
    expect_exit("bench --concurrency 0", &out, 1, &diag);
}
