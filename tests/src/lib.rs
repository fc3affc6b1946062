//! Cluster test harness: real `kvnode`, `kvrouter` and `kvctl` processes on loopback.
//!
//! Modelled on etcd's e2e framework (`tests/framework/e2e/etcd_process.go`): one type per kind
//! of child process with start, kill, terminate, pause, resume, restart and wait-ready, and a
//! [`Cluster`] that owns them all in one temp dir. Tests inject faults with signals and check
//! the outcome through the client library, `kvctl` and the nodes' `GroupStatus` RPC.
//!
//! - [`bins`]: where the binaries are (`KV_BIN_DIR`, else the workspace's `target/debug`);
//!   build them first with `cargo build --workspace --bins`.
//! - [`ports`]: free loopback ports without collisions between concurrent tests.
//! - [`process`]: one child process, its log file and its signals; never leaked.
//! - [`probe`]: `/health` and `/ready` over a hand-written HTTP/1.0 GET.
//! - [`node`]: `kvnode` and `kvrouter` with their flags.
//! - [`cluster`]: a whole cluster, plus the questions tests ask of it (leaders, group status).
//! - [`wait`]: polling helpers; tests never sleep a fixed time.
//! - [`data`]: keys, values and bulk load/verify helpers.
//! - [`forge`]: Raft messages an attacker would forge (votes, heartbeats, appends).
//! - [`netns`]: a network namespace per process on a per-cluster bridge, and partitions as
//!   nft DROP rules on that bridge (clusters started with `netns: true`; needs root).
//! - [`linearizability`]: a recording client and a Wing-Gong checker of strong operations
//!   against a versioned register model, key by key.
//! - [`nemesis`]: randomized fault schedules (kills, quick restarts, whole-cluster kills,
//!   pauses, partitions, router kills) against strong operations, histories checked.
//! - [`admin`]: keyspaces through the router's `Admin` service, the nodes' cluster map, and
//!   per-group scans straight from a group's leader.
//!
//! Environment: `KV_BIN_DIR` (binaries), `KV_TEST_DIR` (where temp dirs go),
//! `KV_KEEP_TEST_DIRS=1` (keep dirs of passing tests too), `KV_SKIP_NETNS=1` (skip the tests that
//! need network namespaces instead of failing them where they cannot be created), `RUST_LOG` (passed to children,
//! default `info`). A failing test keeps its dir and prints the tails of every log.

pub mod admin;
pub mod bins;
pub mod cluster;
pub mod data;
pub mod forge;
pub mod linearizability;
pub mod nemesis;
pub mod netns;
pub mod node;
pub mod ports;
pub mod probe;
pub mod process;
pub mod wait;

pub use cluster::{kvctl, Cluster, ClusterOptions, Peer, READY_TIMEOUT};
pub use node::{NodeProcess, RouterProcess};
pub use process::ChildProcess;
pub use wait::{wait_for, wait_until};
