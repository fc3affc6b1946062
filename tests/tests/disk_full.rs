//! A node whose disk fills up (issue #11): its groups cannot append or apply, so it must stop
//! being ready and stop, not linger half dead behind a `/ready` of 200, while the other
//! replicas keep serving; once there is room again, started again, it serves and catches up.
//!
//! The node's data dir is moved onto a small tmpfs (needs root to mount) and the rest of it is
//! filled with a file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cluster_tests::{wait_for, Cluster, ClusterOptions};
use kvclient::ClientOptions;

/// A tmpfs mounted at a path for the test's life; unmounted when dropped, even on a panic.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` where mounting is not allowed (a container without the capability).
    fn mount(at: &Path, bytes: u64) -> Option<Tmpfs> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(at)
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .expect("running cp");
    assert!(
        status.success(),
        "copy {} to {}",
        from.display(),
        to.display()
    );
}

fn du_bytes(dir: &Path) -> u64 {
    let out = Command::new("du")
        .args(["-sb"])
        .arg(dir)
        .output()
        .expect("running du");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("du output")
}

/// Writes zeros to `path` until the file system is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler file");
    let chunk = vec![0u8; 1 << 20];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_stops_and_serves_again_once_there_is_room() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let mut cluster = Cluster::start(ClusterOptions {
        shards: 1,
        // Small segments, so the log needs new space soon.
        node_args: vec!["--log-segment-bytes".into(), "4194304".into()],
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    let diag = cluster.diag();
    let client = cluster.client_with(ClientOptions {
        timeout: Duration::from_secs(30),
        ..Default::default()
    });
    client
        .put("before", "1")
        .await
        .unwrap_or_else(|e| panic!("put: {e} {diag}"));

    // Node 3's data dir onto a tmpfs with a little room, then no room at all.
    let node = cluster.node_mut(3);
    node.kill().expect("kill node 3");
    let data = node.data_dir().to_path_buf();
    let saved = data.with_extension("saved");
    std::fs::rename(&data, &saved).expect("move the data dir aside");
    std::fs::create_dir_all(&data).expect("mount point");
    let room = du_bytes(&saved) + 64 * 1024 * 1024;
    let Some(_tmpfs) = Tmpfs::mount(&data, room) else {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    };
    copy_dir(&saved, &data);
    node.start().expect("start node 3");
    node.wait_ready(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("node 3 ready on its tmpfs: {e:#} {diag}"));
    let filler = data.join("filler");
    fill(&filler);

    // Writes go on through the other two replicas; node 3 runs out of space and stops.
    let value = vec![b'v'; 64 * 1024];
    let mut written = 0;
    let stopped = wait_for(Duration::from_secs(60), "node 3 stops", || {
        let (client, value) = (client.clone(), value.clone());
        written += 1;
        let key = format!("k{written}");
        let running = cluster.node_mut(3).is_running();
        async move {
            if running {
                client
                    .put(key, value)
                    .await
                    .unwrap_or_else(|e| panic!("a put while node 3 fills up: {e}"));
            }
            !running
        }
    })
    .await;
    stopped.unwrap_or_else(|e| panic!("{e:#}: node 3 kept running with a full disk {diag}"));
    let log = std::fs::read_to_string(cluster.node(3).log_path()).unwrap_or_default();
    assert!(
        log.contains("stopped") && log.contains("free disk space"),
        "node 3 did not say why it stopped {diag}"
    );
    client
        .put("after", "2")
        .await
        .unwrap_or_else(|e| panic!("a put with node 3 down: {e} {diag}"));

    // Room again: started again, it is ready and has every write.
    std::fs::remove_file(&filler).expect("remove the filler");
    let node = cluster.node_mut(3);
    node.start().expect("restart node 3");
    node.wait_ready(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("node 3 ready once there is room: {e:#} {diag}"));
    for key in ["before", "after"] {
        let got = client
            .get(key)
            .await
            .unwrap_or_else(|e| panic!("get {key}: {e} {diag}"));
        assert!(got.is_some(), "{key} missing {diag}");
    }
    // Node 3 itself catches up: it applies the write made while it was down.
    let status = wait_for(
        Duration::from_secs(30),
        "node 3 applies what it missed",
        || {
            let node = cluster.node(3);
            let leader_applied = async {
                let mut best = 0;
                for n in cluster.nodes() {
                    if let Ok(s) = n.group_status().await {
                        for g in s.groups.iter().filter(|g| g.group_id == 1) {
                            best = best.max(g.applied_index);
                        }
                    }
                }
                best
            };
            async move {
                let target = leader_applied.await;
                match node.group_status().await {
                    Ok(s) => s
                        .groups
                        .iter()
                        .any(|g| g.group_id == 1 && g.applied_index >= target),
                    Err(_) => false,
                }
            }
        },
    )
    .await;
    status.unwrap_or_else(|e| panic!("{e:#} {diag}"));
}
