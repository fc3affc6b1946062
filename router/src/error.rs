//! The router's one error type, and the one place it becomes a gRPC status.
//!
//! Variants carry what a caller needs to act (the group, the current version, the node's
//! stable code); [`to_status`] turns them into a `tonic::Status` with the stable code in the
//! `kv-error-code` metadata, so that clients never parse messages.

use kv_proto::{codes, meta};
use shardmap::{GroupId, LimitError, MapError};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::metrics::DenyReason;

/// Everything that can go wrong in the router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// An empty or oversized key.
    #[error("invalid key: {0}")]
    InvalidKey(LimitError),
    /// An oversized value.
    #[error("invalid value: {0}")]
    InvalidValue(LimitError),
    /// A malformed scan range.
    #[error("invalid range: {0}")]
    InvalidRange(LimitError),
    /// A request id longer than the router accepts.
    #[error("request_id is {0} bytes, over the limit of 64 bytes")]
    InvalidRequestId(usize),
    /// The request names a keyspace the cluster map does not have.
    #[error("unknown keyspace {0:?}")]
    UnknownKeyspace(String),
    /// A conditional write found another version.
    #[error("version mismatch: expected {expected}, current {current}")]
    ConditionFailed { expected: u64, current: u64 },
    /// No cluster map has been loaded yet.
    #[error("the router has not loaded the cluster map yet")]
    NotReady,
    /// The deadline passed before any replica of the group answered.
    #[error("shard group {group} unavailable after {attempts} attempts: {last_error}")]
    Unavailable {
        group: GroupId,
        attempts: u32,
        last_error: String,
        /// The last node error's stable code, when it had one.
        code: Option<String>,
    },
    /// No replica could serve an eventual read within its max staleness: each was asked once
    /// in a round, and at least one said it had not heard from its leader recently enough
    /// (`STALE_REPLICA`) while none served. Answered at once, not at the deadline (see
    /// `Router::call_any`); `UNAVAILABLE` with code `STALE_REPLICA`, so that a client may try
    /// again later.
    #[error("shard group {group}: no replica has heard from its leader within the read's max staleness of {max_staleness_ms} ms ({refused} of the {asked} asked said so; last: {last_error}); allow more staleness or read with strong consistency")]
    TooStale {
        group: GroupId,
        max_staleness_ms: u32,
        /// Replicas that refused as too stale, of those asked.
        refused: u32,
        asked: u32,
        last_error: String,
    },
    /// A batch read's values add up to more than [`kv_proto::MAX_READ_BYTES`].
    #[error("the values read add up to more than {max} bytes: read fewer keys at once")]
    ReadTooLarge { max: usize },
    /// A batch request with more than [`kv_proto::MAX_BATCH_KEYS`] keys.
    #[error("{count} keys in one request; at most {max}")]
    TooManyKeys { count: usize, max: usize },
    /// A node refused the request for a reason retrying cannot fix; passed on as is.
    #[error("shard group {group}: {message}")]
    Node {
        group: GroupId,
        code: Code,
        message: String,
        error_code: Option<String>,
    },
    /// A node refused a request because it was routed with an out-of-date map (`STALE_EPOCH`,
    /// `WRONG_GROUP`), or the map no longer has the group. The map has been refreshed; the
    /// operation routes again. Only escapes to a client if that keeps happening until the
    /// deadline, as [`RouterError::Unavailable`]; reported as `ABORTED` should it ever escape.
    #[error("shard group {group}: routed with an out-of-date map ({code}): {message}")]
    Remap {
        group: GroupId,
        code: String,
        message: String,
    },
    /// An administrative request the map refuses (checked by the router against its map, with
    /// the same rules the meta group applies): unknown keyspace, existing keyspace, invalid
    /// change.
    #[error("{0}")]
    Admin(MapError),
    /// The meta group refused a map change; its status is passed on unchanged.
    #[error("{message}")]
    MapChangeRefused {
        code: Code,
        message: String,
        error_code: Option<String>,
    },
    /// Dropping a keyspace that still holds keys, without `force`.
    #[error("keyspace {keyspace} holds data in group {group}; use --force to drop it anyway")]
    KeyspaceNotEmpty { keyspace: String, group: GroupId },
    /// Moving (or removing) a directory entry whose keys live in another group.
    #[error("directory {directory} has data in group {group}; {action} needs data migration, which is not supported yet")]
    DirectoryNotEmpty {
        directory: String,
        group: GroupId,
        /// What was asked: "moving it" or "removing its entry".
        action: &'static str,
    },
    /// An admin change committed, but a group it gave keys to still refuses writes to them
    /// (the fence it held from an earlier change could not be lifted).
    #[error("the change committed at map epoch {epoch}, but shard group {group} still refuses writes to the keys it now owns ({reason}): run the same command again to finish it")]
    Unfinished {
        epoch: u64,
        group: GroupId,
        reason: String,
    },
    /// A node answered with something that does not fit the protocol.
    #[error("bad response from shard group {group}: {reason}")]
    BadResponse { group: GroupId, reason: String },
    /// The cluster map could not be used.
    #[error("cluster map: {0}")]
    Map(MapError),
    /// A node address that is not a valid URI authority.
    #[error("bad node address {addr:?}: {source}")]
    BadAddress {
        addr: String,
        source: tonic::transport::Error,
    },
    /// The configuration cannot work (for example no seed nodes).
    #[error("configuration: {0}")]
    Config(String),
    /// Binding or serving a socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// Auth is on and the request's credential is missing, malformed, unknown, revoked,
    /// expired, or names no user.
    #[error("unauthenticated: {message}")]
    Unauthenticated { reason: DenyReason, message: String },
    /// The caller is known, but none of its roles allows the action on the target.
    #[error("permission denied: user {user:?} may not {action} {target}: it needs {needs} there")]
    PermissionDenied {
        user: String,
        action: String,
        target: String,
        /// "read", "write" or "an admin role".
        needs: &'static str,
    },
}

impl From<MapError> for RouterError {
    fn from(err: MapError) -> Self {
        match err {
            MapError::UnknownKeyspace(name) => RouterError::UnknownKeyspace(name),
            other => RouterError::Map(other),
        }
    }
}

impl RouterError {
    /// The stable code sent in `kv-error-code`, if the error has one.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            RouterError::InvalidKey(_) => Some(codes::INVALID_KEY),
            RouterError::InvalidValue(_) => Some(codes::INVALID_VALUE),
            RouterError::InvalidRange(_) => Some(codes::INVALID_RANGE),
            RouterError::InvalidRequestId(_) => Some("INVALID_REQUEST_ID"),
            RouterError::UnknownKeyspace(_) => Some(codes::UNKNOWN_KEYSPACE),
            RouterError::ConditionFailed { .. } => Some(codes::CONDITION_FAILED),
            RouterError::NotReady => Some(codes::NOT_READY),
            RouterError::Unavailable { code, .. } => {
                Some(code.as_deref().unwrap_or(codes::NO_QUORUM))
            }
            RouterError::TooStale { .. } => Some(codes::STALE_REPLICA),
            RouterError::ReadTooLarge { .. } => Some(codes::RESPONSE_TOO_LARGE),
            RouterError::TooManyKeys { .. } => Some(codes::TOO_MANY_KEYS),
            RouterError::Node { error_code, .. } => error_code.as_deref(),
            RouterError::Map(MapError::UnknownGroup(_)) => Some(codes::UNKNOWN_GROUP),
            RouterError::Remap { code, .. } => Some(code),
            RouterError::Admin(e) => Some(match e {
                MapError::UnknownKeyspace(_) => codes::UNKNOWN_KEYSPACE,
                MapError::KeyspaceExists(_) => codes::KEYSPACE_EXISTS,
                _ => codes::INVALID_MAP_CHANGE,
            }),
            RouterError::MapChangeRefused { error_code, .. } => error_code.as_deref(),
            RouterError::KeyspaceNotEmpty { .. } => Some(codes::KEYSPACE_NOT_EMPTY),
            RouterError::DirectoryNotEmpty { .. } => Some(codes::DIRECTORY_NOT_EMPTY),
            RouterError::Unauthenticated { .. } => Some(codes::UNAUTHENTICATED),
            RouterError::PermissionDenied { .. } => Some(codes::PERMISSION_DENIED),
            _ => None,
        }
    }

    /// The gRPC code the error is reported with.
    pub fn grpc_code(&self) -> Code {
        match self {
            RouterError::InvalidKey(_)
            | RouterError::InvalidValue(_)
            | RouterError::InvalidRange(_)
            | RouterError::InvalidRequestId(_)
            | RouterError::UnknownKeyspace(_) => Code::InvalidArgument,
            RouterError::ConditionFailed { .. } => Code::FailedPrecondition,
            RouterError::NotReady
            | RouterError::Unavailable { .. }
            | RouterError::TooStale { .. }
            | RouterError::Unfinished { .. } => Code::Unavailable,
            RouterError::Node { code, .. } => *code,
            RouterError::Map(MapError::UnknownGroup(_)) => Code::Unavailable,
            RouterError::Remap { .. } => Code::Aborted,
            RouterError::Admin(e) => match e {
                MapError::UnknownKeyspace(_) => Code::InvalidArgument,
                MapError::KeyspaceExists(_) => Code::AlreadyExists,
                _ => Code::InvalidArgument,
            },
            RouterError::MapChangeRefused { code, .. } => *code,
            RouterError::KeyspaceNotEmpty { .. } | RouterError::DirectoryNotEmpty { .. } => {
                Code::FailedPrecondition
            }
            RouterError::ReadTooLarge { .. } => Code::ResourceExhausted,
            RouterError::TooManyKeys { .. } => Code::InvalidArgument,
            RouterError::Unauthenticated { .. } => Code::Unauthenticated,
            RouterError::PermissionDenied { .. } => Code::PermissionDenied,
            _ => Code::Internal,
        }
    }

    /// Why a request was refused by authentication or authorization, if it was.
    pub fn deny_reason(&self) -> Option<DenyReason> {
        match self {
            RouterError::Unauthenticated { reason, .. } => Some(*reason),
            RouterError::PermissionDenied { .. } => Some(DenyReason::Forbidden),
            _ => None,
        }
    }
}

/// The one mapping from [`RouterError`] to the status a client sees.
pub fn to_status(err: RouterError) -> Status {
    let mut status = Status::new(err.grpc_code(), err.to_string());
    let md = status.metadata_mut();
    if let Some(code) = err.error_code() {
        if let Ok(value) = MetadataValue::try_from(code) {
            md.insert(meta::ERROR_CODE, value);
        }
    }
    if let RouterError::ConditionFailed { current, .. } = &err {
        md.insert(meta::CURRENT_VERSION, MetadataValue::from(*current));
    }
    status
}

impl From<RouterError> for Status {
    fn from(err: RouterError) -> Self {
        to_status(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(status: &Status) -> Option<&str> {
        status
            .metadata()
            .get(meta::ERROR_CODE)
            .and_then(|v| v.to_str().ok())
    }

    #[test]
    fn auth_refusals_have_their_own_codes_and_name_the_problem() {
        let status = to_status(RouterError::Unauthenticated {
            reason: DenyReason::ExpiredToken,
            message: "token 00 expired".into(),
        });
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(code_of(&status), Some(codes::UNAUTHENTICATED));
        assert!(status.message().contains("expired"), "{}", status.message());
        let status = to_status(RouterError::PermissionDenied {
            user: "bob".into(),
            action: "Put".into(),
            target: "key \"k\" of keyspace \"a\"".into(),
            needs: "write",
        });
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(code_of(&status), Some(codes::PERMISSION_DENIED));
        for part in ["bob", "Put", "\"k\"", "\"a\"", "write"] {
            assert!(status.message().contains(part), "{}", status.message());
        }
    }

    #[test]
    fn invalid_input_is_invalid_argument_with_a_code() {
        let status = to_status(RouterError::InvalidKey(LimitError::EmptyKey));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(code_of(&status), Some(codes::INVALID_KEY));
        assert!(status.message().contains("empty"), "{}", status.message());

        let status = to_status(RouterError::UnknownKeyspace("nope".into()));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(code_of(&status), Some(codes::UNKNOWN_KEYSPACE));
    }

    #[test]
    fn condition_failed_carries_the_current_version() {
        let status = to_status(RouterError::ConditionFailed {
            expected: 3,
            current: 7,
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "version mismatch: expected 3, current 7");
        assert_eq!(code_of(&status), Some(codes::CONDITION_FAILED));
        let current = status.metadata().get(meta::CURRENT_VERSION);
        assert_eq!(current.and_then(|v| v.to_str().ok()), Some("7"));
    }

    #[test]
    fn unavailable_names_the_group_and_last_error() {
        let status = to_status(RouterError::Unavailable {
            group: 4,
            attempts: 9,
            last_error: "node 2: connection refused".into(),
            code: None,
        });
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("group 4"));
        assert!(status.message().contains("connection refused"));
        assert_eq!(code_of(&status), Some(codes::NO_QUORUM));
    }

    #[test]
    fn admin_errors_map_to_their_codes() {
        let cases = [
            (
                RouterError::Admin(MapError::UnknownKeyspace("k".into())),
                Code::InvalidArgument,
                codes::UNKNOWN_KEYSPACE,
            ),
            (
                RouterError::Admin(MapError::KeyspaceExists("k".into())),
                Code::AlreadyExists,
                codes::KEYSPACE_EXISTS,
            ),
            (
                RouterError::Admin(MapError::Invalid("unknown strategy \"x\"".into())),
                Code::InvalidArgument,
                codes::INVALID_MAP_CHANGE,
            ),
            (
                RouterError::KeyspaceNotEmpty {
                    keyspace: "k".into(),
                    group: 7,
                },
                Code::FailedPrecondition,
                codes::KEYSPACE_NOT_EMPTY,
            ),
            (
                RouterError::DirectoryNotEmpty {
                    directory: "tenant-a".into(),
                    group: 7,
                    action: "moving it",
                },
                Code::FailedPrecondition,
                codes::DIRECTORY_NOT_EMPTY,
            ),
            (
                RouterError::Remap {
                    group: 7,
                    code: codes::WRONG_GROUP.into(),
                    message: "x".into(),
                },
                Code::Aborted,
                codes::WRONG_GROUP,
            ),
        ];
        for (err, code, error_code) in cases {
            let status = to_status(err);
            assert_eq!(status.code(), code, "{}", status.message());
            assert_eq!(code_of(&status), Some(error_code));
        }
    }

    #[test]
    fn refused_map_changes_pass_through_unchanged() {
        let status = to_status(RouterError::MapChangeRefused {
            code: Code::AlreadyExists,
            message: "keyspace \"k\" already exists".into(),
            error_code: Some(codes::KEYSPACE_EXISTS.into()),
        });
        assert_eq!(status.code(), Code::AlreadyExists);
        assert_eq!(status.message(), "keyspace \"k\" already exists");
        assert_eq!(code_of(&status), Some(codes::KEYSPACE_EXISTS));

        let status = to_status(RouterError::KeyspaceNotEmpty {
            keyspace: "logs".into(),
            group: 9,
        });
        assert_eq!(
            status.message(),
            "keyspace logs holds data in group 9; use --force to drop it anyway"
        );
        let status = to_status(RouterError::DirectoryNotEmpty {
            directory: "tenant-a".into(),
            group: 9,
            action: "moving it",
        });
        assert_eq!(
            status.message(),
            "directory tenant-a has data in group 9; moving it needs data migration, which is not supported yet"
        );
    }
}
