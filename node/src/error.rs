//! The node's errors, and their one mapping to gRPC statuses.

use kv_proto::{codes, meta};
use shardmap::LimitError;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::types::{GroupId, MapChangeRefused, NodeId};

#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    #[error("shard group {0} is not hosted on this node")]
    UnknownGroup(GroupId),
    /// The group is placed here but failed to start (a corrupt log segment, say): fenced off
    /// until the node restarts, while its other replicas and the node's other groups serve.
    #[error("shard group {group} failed on this node and is fenced off: {reason}")]
    GroupFailed { group: GroupId, reason: String },
    #[error("not the leader of shard group {group}")]
    NotLeader {
        group: GroupId,
        leader: Option<(NodeId, String)>,
    },
    #[error("shard group {group} has no quorum: {reason}")]
    NoQuorum { group: GroupId, reason: String },
    #[error("{0}")]
    Invalid(#[from] LimitError),
    #[error("the cluster map is not available yet")]
    MapNotReady,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("storage error: {0}")]
    Storage(String),
    #[error("raft stopped: {0}")]
    Fatal(String),
    #[error("request for shard group {group} was routed with map epoch {request}, older than the group's key set (node map epoch {current}): refresh the map")]
    StaleEpoch {
        group: GroupId,
        request: u64,
        current: u64,
    },
    #[error("key {key:?} is fenced off in shard group {group} by a map change (in progress, or left unfinished: run it again): refresh the map")]
    Fenced { group: GroupId, key: String },
    #[error("the values read add up to more than {max} bytes: read fewer keys at once")]
    ReadTooLarge { max: usize },
    #[error("{count} keys in one request; at most {max}")]
    TooManyKeys { count: usize, max: usize },
    #[error("shard group {group} holds the most fences it can ({max}): finish or abort the admin changes left unfinished")]
    TooManyFences { group: GroupId, max: usize },
    #[error("key does not belong to shard group {group} under map epoch {epoch}: refresh the map")]
    WrongGroup { group: GroupId, epoch: u64 },
    #[error("{}", describe_refusal(.0))]
    MapChange(MapChangeRefused),
    /// An eventual read's session token is ahead of this replica, which did not catch up in
    /// time: the caller tries another replica.
    #[error("replica of shard group {group} has applied index {applied}, behind the session's {wanted}: try another replica")]
    Lagging {
        group: GroupId,
        applied: u64,
        wanted: u64,
    },
    /// An eventual read's max staleness is shorter than the time since this replica last
    /// heard from its leader (a leader: from a quorum).
    #[error("replica of shard group {group} last heard from its leader (or, leading, from a quorum) {}: more than the read's max staleness of {max_staleness_ms} ms", describe_age(.age))]
    StaleReplica {
        group: GroupId,
        age: Option<std::time::Duration>,
        max_staleness_ms: u32,
    },
    #[error(transparent)]
    RaftRefused(#[from] crate::raft_guard::Refusal),
}

fn describe_age(age: &Option<std::time::Duration>) -> String {
    match age {
        Some(a) => format!("{} ms ago", a.as_millis()),
        None => "never since it started or took its current role".into(),
    }
}

fn describe_refusal(r: &MapChangeRefused) -> String {
    match r {
        MapChangeRefused::StaleEpoch { current } => {
            format!("the cluster map changed meanwhile (now epoch {current}): retry")
        }
        MapChangeRefused::Invalid(m) => m.clone(),
        MapChangeRefused::UnknownKeyspace(k) => format!("unknown keyspace {k:?}"),
        MapChangeRefused::KeyspaceExists(k) => format!("keyspace {k:?} already exists"),
        MapChangeRefused::NoMap => "the cluster map is not stored yet".into(),
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        let message = e.to_string();
        let (code, error_code) = match &e {
            NodeError::UnknownGroup(_) => (Code::NotFound, codes::UNKNOWN_GROUP),
            // UNAVAILABLE, not INTERNAL: the group's other replicas can serve, and routers try
            // the next replica on UNAVAILABLE.
            NodeError::GroupFailed { .. } => (Code::Unavailable, codes::GROUP_FAILED),
            NodeError::NotLeader { .. } => (Code::Unavailable, codes::NOT_LEADER),
            NodeError::NoQuorum { .. } => (Code::Unavailable, codes::NO_QUORUM),
            NodeError::Lagging { .. } => (Code::Unavailable, codes::LAGGING),
            NodeError::StaleReplica { .. } => (Code::Unavailable, codes::STALE_REPLICA),
            NodeError::Invalid(LimitError::EmptyKey | LimitError::KeyTooLarge { .. }) => {
                (Code::InvalidArgument, codes::INVALID_KEY)
            }
            NodeError::Invalid(LimitError::ValueTooLarge { .. }) => {
                (Code::InvalidArgument, codes::INVALID_VALUE)
            }
            NodeError::Invalid(LimitError::WriteTooLarge { .. }) => {
                (Code::InvalidArgument, codes::WRITE_TOO_LARGE)
            }
            NodeError::Invalid(LimitError::StartAfterEnd) => {
                (Code::InvalidArgument, codes::INVALID_RANGE)
            }
            NodeError::BadRequest(_) => (Code::InvalidArgument, "BAD_REQUEST"),
            NodeError::MapNotReady => (Code::Unavailable, codes::NOT_READY),
            NodeError::Storage(_) => (Code::Internal, "STORAGE"),
            NodeError::Fatal(_) => (Code::Unavailable, "SHUTTING_DOWN"),
            NodeError::StaleEpoch { .. } => (Code::Aborted, codes::STALE_EPOCH),
            NodeError::Fenced { .. } => (Code::Aborted, codes::STALE_EPOCH),
            NodeError::ReadTooLarge { .. } => (Code::ResourceExhausted, codes::RESPONSE_TOO_LARGE),
            NodeError::TooManyKeys { .. } => (Code::InvalidArgument, codes::TOO_MANY_KEYS),
            NodeError::TooManyFences { .. } => (Code::ResourceExhausted, codes::TOO_MANY_FENCES),
            NodeError::WrongGroup { .. } => (Code::Aborted, codes::WRONG_GROUP),
            NodeError::RaftRefused(crate::raft_guard::Refusal::NotAReplica { .. }) => {
                (Code::PermissionDenied, codes::RAFT_REFUSED)
            }
            NodeError::RaftRefused(_) => (Code::InvalidArgument, codes::RAFT_REFUSED),
            NodeError::MapChange(r) => match r {
                MapChangeRefused::StaleEpoch { .. } => (Code::Aborted, codes::STALE_EPOCH),
                MapChangeRefused::Invalid(_) => (Code::InvalidArgument, codes::INVALID_MAP_CHANGE),
                MapChangeRefused::UnknownKeyspace(_) => {
                    (Code::InvalidArgument, codes::UNKNOWN_KEYSPACE)
                }
                MapChangeRefused::KeyspaceExists(_) => {
                    (Code::AlreadyExists, codes::KEYSPACE_EXISTS)
                }
                MapChangeRefused::NoMap => (Code::Unavailable, codes::NOT_READY),
            },
        };
        let mut status = Status::new(code, message);
        let md = status.metadata_mut();
        md.insert(meta::ERROR_CODE, MetadataValue::from_static(error_code));
        if let NodeError::NotLeader {
            leader: Some((id, addr)),
            ..
        } = &e
        {
            md.insert(meta::LEADER_ID, MetadataValue::from(*id));
            if let Ok(v) = addr.parse() {
                md.insert(meta::LEADER_ADDR, v);
            }
        }
        status
    }
}

impl From<sled::Error> for NodeError {
    fn from(e: sled::Error) -> Self {
        NodeError::Storage(e.to_string())
    }
}
