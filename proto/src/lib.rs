//! Generated gRPC types and services.
//!
//! - [`kv`]: the public KV API served by `kvrouter` (service `Kv`).
//! - [`node`]: what `kvnode` serves: data RPCs naming a shard group (service `Node`) and the
//!   multi-raft transport (service `Raft`).
//!
//! - [`multi`]: many independent calls in one `Multi` RPC (both services).
//! - [`peer`]: who is at the other end of a connection (its certificate's role and name).
//! - [`tls`]: TLS configs from the PEM files named by `--tls-cert`, `--tls-key`, `--tls-ca`.
//!
//! Message size limits are set by each server and client; [`MAX_MESSAGE_BYTES`] is the one
//! value they share, sized above the largest allowed value plus framing.

/// The generated modules, nested as their protobuf packages so cross-package paths resolve.
pub mod pb {
    pub mod kv {
        pub mod v1 {
            tonic::include_proto!("kv.v1");
        }
        pub mod node {
            pub mod v1 {
                tonic::include_proto!("kv.node.v1");
            }
        }
    }
}

pub mod multi;
pub mod peer;
pub mod tls;

/// Node protocol: data RPCs per group, and Raft transport.
pub use pb::kv::node::v1 as node;
/// Public KV API.
pub use pb::kv::v1 as kv;

/// Bytes of keys and values past which a scan page ends (with `more` set), on nodes and on
/// routers merging groups' pages: a scan of large values with a high limit would otherwise
/// build a response of gigabytes. A page holds at least one key, so it can always advance.
pub const MAX_SCAN_BYTES: usize = 4 * 1024 * 1024;

/// Bytes of values past which a batch read (a node `Read`, a router `BatchGet`) is refused
/// with `RESPONSE_TOO_LARGE` rather than answered: well under [`MAX_MESSAGE_BYTES`], and a
/// read of many large values would otherwise be built whole in memory.
pub const MAX_READ_BYTES: usize = 32 * 1024 * 1024;

/// Most keys in one batch request (`BatchGet`, `BatchPut`, a node `Read`).
pub const MAX_BATCH_KEYS: usize = 10_000;

/// Largest gRPC message any of our servers or clients encode or decode.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Metadata keys carried on error statuses, so that callers never parse messages.
pub mod meta {
    /// A stable error code (see [`super::codes`]).
    pub const ERROR_CODE: &str = "kv-error-code";
    /// On `NOT_LEADER`: the leader's node id, when known.
    pub const LEADER_ID: &str = "kv-leader-id";
    /// On `NOT_LEADER`: the leader's address, when known.
    pub const LEADER_ADDR: &str = "kv-leader-addr";
    /// On `CONDITION_FAILED`: the key's current version (0: absent).
    pub const CURRENT_VERSION: &str = "kv-current-version";
}

/// Stable error codes, sent in [`meta::ERROR_CODE`].
pub mod codes {
    pub const NOT_LEADER: &str = "NOT_LEADER";
    pub const UNKNOWN_GROUP: &str = "UNKNOWN_GROUP";
    pub const STALE_EPOCH: &str = "STALE_EPOCH";
    pub const INVALID_KEY: &str = "INVALID_KEY";
    pub const INVALID_VALUE: &str = "INVALID_VALUE";
    /// One write to one shard group is over `--max-write-bytes`.
    pub const WRITE_TOO_LARGE: &str = "WRITE_TOO_LARGE";
    pub const INVALID_RANGE: &str = "INVALID_RANGE";
    pub const UNKNOWN_KEYSPACE: &str = "UNKNOWN_KEYSPACE";
    pub const CONDITION_FAILED: &str = "CONDITION_FAILED";
    pub const NO_QUORUM: &str = "NO_QUORUM";
    pub const NOT_READY: &str = "NOT_READY";
    /// The key does not belong to the group under the node's map: refresh the map and retry.
    pub const WRONG_GROUP: &str = "WRONG_GROUP";
    pub const INVALID_MAP_CHANGE: &str = "INVALID_MAP_CHANGE";
    pub const KEYSPACE_EXISTS: &str = "KEYSPACE_EXISTS";
    pub const KEYSPACE_NOT_EMPTY: &str = "KEYSPACE_NOT_EMPTY";
    pub const DIRECTORY_NOT_EMPTY: &str = "DIRECTORY_NOT_EMPTY";
    /// The replica has not applied up to the session token: try another replica.
    pub const LAGGING: &str = "LAGGING";
    /// The replica has not heard from its leader within the read's max staleness.
    pub const STALE_REPLICA: &str = "STALE_REPLICA";
    /// The group failed to start on this node (a corrupt file, say) and is fenced off here:
    /// try another replica.
    pub const GROUP_FAILED: &str = "GROUP_FAILED";
    /// A group holds the most fences it can: admin changes were left unfinished.
    pub const TOO_MANY_FENCES: &str = "TOO_MANY_FENCES";
    /// A batch read's values add up to more than `MAX_READ_BYTES`: read fewer keys at once.
    pub const RESPONSE_TOO_LARGE: &str = "RESPONSE_TOO_LARGE";
    /// A Raft message refused before it reached the group: from a node that is no replica,
    /// or with a term or index outside what the group could have.
    pub const RAFT_REFUSED: &str = "RAFT_REFUSED";
    /// A batch holds more than `MAX_BATCH_KEYS` keys.
    pub const TOO_MANY_KEYS: &str = "TOO_MANY_KEYS";
    /// The server has the most calls in flight it takes (`multi::SERVER_CALLS_IN_FLIGHT`).
    pub const SERVER_BUSY: &str = "SERVER_BUSY";
    /// Auth is on and the request carries no credential, or one that is malformed, unknown,
    /// revoked, expired, or names no user (`UNAUTHENTICATED`).
    pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
    /// The caller is known but none of its roles allows this action on this target
    /// (`PERMISSION_DENIED`).
    pub const PERMISSION_DENIED: &str = "PERMISSION_DENIED";
    /// The caller's certificate does not name a role this service admits (a client
    /// certificate on a node's `Raft` service, say), or the caller presented none.
    pub const WRONG_ROLE: &str = "WRONG_ROLE";
}
