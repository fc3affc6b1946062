//! The client's error type, and the one place where a gRPC status becomes one.
//!
//! Callers branch on variants, never on messages: the router puts a stable code in the
//! `kv-error-code` metadata and the mapping below reads it, so a reworded server message cannot
//! change what a program does.

use kv_proto::{codes, meta};
use tonic::{Code, Status};

/// Everything a [`Client`](crate::Client) call can fail with.
///
/// An absent key is not an error: [`Client::get`](crate::Client::get) answers `Ok(None)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request itself is wrong (empty or oversized key or value, unknown keyspace,
    /// malformed range...). Retrying the same request cannot succeed.
    #[error("invalid argument: {message}")]
    InvalidArgument {
        /// The stable code from [`kv_proto::codes`] (such as `INVALID_KEY`), when the server
        /// sent one; `None` for checks made by the client itself.
        code: Option<String>,
        /// What is wrong, for people.
        message: String,
    },

    /// A conditional write (`if_version`) found another version.
    ///
    /// A conditional write retried after an unknown outcome (a timeout or a lost connection)
    /// can report this even though the first attempt applied: then `current_version` is the
    /// version that attempt wrote.
    #[error("condition failed: {}", match .current_version {
        Some(0) => "the key does not exist".to_string(),
        Some(v) => format!("the key's current version is {v}"),
        None => "the key's version differs".to_string(),
    })]
    ConditionFailed {
        /// The key's version when the condition was checked (0: the key does not exist);
        /// `None` when the server did not say.
        current_version: Option<u64>,
    },

    /// What the request would create exists already (`KEYSPACE_EXISTS`: a keyspace of that
    /// name). A create retried after an unknown outcome (a timeout or a lost connection) can
    /// report this even though its first attempt created it.
    #[error("already exists: {message}")]
    AlreadyExists {
        /// The stable code (such as `KEYSPACE_EXISTS`), when the server sent one.
        code: Option<String>,
        /// What the server said.
        message: String,
    },

    /// The cluster's state does not allow the request, for a reason other than a conditional
    /// write's version (that is [`Error::ConditionFailed`]): `KEYSPACE_NOT_EMPTY` (drop it with
    /// `force`), `DIRECTORY_NOT_EMPTY` (a directory holding keys cannot move). Retrying the same
    /// request cannot succeed until that state changes.
    #[error("failed precondition{}: {message}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    FailedPrecondition {
        /// The stable code, when the server sent one.
        code: Option<String>,
        /// What the server said.
        message: String,
    },

    /// The cluster could not serve the request now (no quorum, no leader yet, router not
    /// ready). Retrying later may succeed; the client already retried within its time budget.
    #[error("unavailable: {message}")]
    Unavailable {
        /// The stable code (such as `NO_QUORUM` or `NOT_READY`), when the server sent one.
        code: Option<String>,
        /// What the server said.
        message: String,
    },

    /// The call did not finish within its timeout. For a write the outcome is unknown: it may
    /// or may not have been applied.
    #[error("timed out (a write's outcome is unknown)")]
    Timeout,

    /// No answer could be exchanged with any router (connection refused or reset, protocol
    /// error). For a write the outcome is unknown when the connection broke mid-call.
    #[error("transport error: {0}")]
    Transport(String),

    /// An endpoint given to [`Client::connect`](crate::Client::connect) is not a usable
    /// address, or none was given.
    #[error("invalid endpoint {endpoint:?}: {message}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it was refused.
        message: String,
    },

    /// Authentication is on and the call's credential was refused: none was given
    /// ([`ClientOptions::token`](crate::ClientOptions::token)), or the token is malformed,
    /// unknown, revoked or expired. Retrying with the same credential cannot succeed.
    #[error("{message}")]
    Unauthenticated {
        /// `UNAUTHENTICATED`, when the server sent it.
        code: Option<String>,
        /// What the server said, naming the problem.
        message: String,
    },

    /// The caller is known, but none of its roles allows this action on this target (the
    /// message names the user, the action and the target).
    #[error("{message}")]
    PermissionDenied {
        /// `PERMISSION_DENIED`, when the server sent it.
        code: Option<String>,
        /// What the server said.
        message: String,
    },

    /// Any other error the server answered with.
    #[error("server error ({status:?}{}): {message}", code.as_deref().map(|c| format!(", {c}")).unwrap_or_default())]
    Server {
        /// The gRPC status code.
        status: Code,
        /// The stable code, when the server sent one.
        code: Option<String>,
        /// What the server said.
        message: String,
    },
}

impl Error {
    /// Whether trying the same call again may succeed: the cluster or the network was
    /// unavailable, the call ran out of time, or the server aborted it because the cluster map
    /// changed under it (`ABORTED`, or the stable code `STALE_EPOCH`).
    ///
    /// Never true for [`Error::InvalidArgument`], [`Error::ConditionFailed`],
    /// [`Error::AlreadyExists`] or [`Error::FailedPrecondition`] (other than `STALE_EPOCH`).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable { .. } | Error::Timeout | Error::Transport(_) => true,
            Error::Server {
                status: Code::Aborted,
                ..
            } => true,
            Error::Server { code, .. } | Error::FailedPrecondition { code, .. } => {
                code.as_deref() == Some(codes::STALE_EPOCH)
            }
            _ => false,
        }
    }

    /// The stable error code: the server's when it sent one, otherwise one named after the
    /// variant (`TIMEOUT`, `TRANSPORT`, ...), so that scripts never parse messages.
    pub fn code(&self) -> &str {
        match self {
            Error::InvalidArgument { code, .. } => code.as_deref().unwrap_or("INVALID_ARGUMENT"),
            Error::ConditionFailed { .. } => codes::CONDITION_FAILED,
            Error::AlreadyExists { code, .. } => code.as_deref().unwrap_or("ALREADY_EXISTS"),
            Error::FailedPrecondition { code, .. } => {
                code.as_deref().unwrap_or("FAILED_PRECONDITION")
            }
            Error::Unavailable { code, .. } => code.as_deref().unwrap_or("UNAVAILABLE"),
            Error::Timeout => "TIMEOUT",
            Error::Transport(_) => "TRANSPORT",
            Error::InvalidEndpoint { .. } => "INVALID_ENDPOINT",
            Error::Server { code, .. } => code.as_deref().unwrap_or("SERVER"),
            Error::Unauthenticated { code, .. } => {
                code.as_deref().unwrap_or(codes::UNAUTHENTICATED)
            }
            Error::PermissionDenied { code, .. } => {
                code.as_deref().unwrap_or(codes::PERMISSION_DENIED)
            }
        }
    }

    /// A client-side argument check failed.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            code: None,
            message: message.into(),
        }
    }
}

/// Maps a status from a call to the router onto [`Error`]. The only such mapping in the crate.
pub(crate) fn from_status(status: &Status) -> Error {
    let metadata = status.metadata();
    let code = metadata
        .get(meta::ERROR_CODE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let current_version = metadata
        .get(meta::CURRENT_VERSION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let message = status.message().to_owned();

    // Only a failed version condition is `ConditionFailed`: other precondition codes
    // (`KEYSPACE_NOT_EMPTY`, ...) are not version conflicts. A version header without any
    // code is taken as one too.
    if code.as_deref() == Some(codes::CONDITION_FAILED)
        || (status.code() == Code::FailedPrecondition
            && code.is_none()
            && current_version.is_some())
    {
        return Error::ConditionFailed { current_version };
    }

    // The channel enforces the `grpc-timeout` we set on each request itself, and reports
    // expiry as a locally made CANCELLED.
    if source_chain(status).any(|e| e.is::<tonic::TimeoutExpired>()) {
        return Error::Timeout;
    }

    // tonic attaches the underlying error as the source only for statuses it made up locally
    // (connect failures, broken HTTP/2 streams); statuses sent by a server never have one.
    if std::error::Error::source(status).is_some() || is_local_not_ready(status) {
        return Error::Transport(with_sources(status));
    }

    match status.code() {
        Code::InvalidArgument => Error::InvalidArgument { code, message },
        Code::Unavailable => Error::Unavailable { code, message },
        Code::AlreadyExists => Error::AlreadyExists { code, message },
        Code::FailedPrecondition => Error::FailedPrecondition { code, message },
        Code::DeadlineExceeded => Error::Timeout,
        Code::Unauthenticated => Error::Unauthenticated { code, message },
        Code::PermissionDenied => Error::PermissionDenied { code, message },
        other => Error::Server {
            status: other,
            code,
            message,
        },
    }
}

/// The generated client reports a failed `ready()` of the channel as a bare `UNKNOWN` status
/// with this prefix and no source.
fn is_local_not_ready(status: &Status) -> bool {
    status.code() == Code::Unknown && status.message().starts_with("Service was not ready")
}

/// The errors beneath a status, nearest first.
fn source_chain(status: &Status) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(std::error::Error::source(status), |e| e.source())
}

/// The status message followed by its source chain: "tcp connect error" alone does not say
/// that the connection was refused.
fn with_sources(status: &Status) -> String {
    let mut text = status.message().to_owned();
    for err in source_chain(status) {
        let part = err.to_string();
        // tonic's own wrapper adds only the words "transport error" to its cause.
        if !part.is_empty() && part != "transport error" && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_meta(mut status: Status, pairs: &[(&'static str, &str)]) -> Status {
        for (k, v) in pairs {
            status.metadata_mut().insert(*k, v.parse().unwrap());
        }
        status
    }

    #[test]
    fn invalid_argument_keeps_code_and_message() {
        let s = with_meta(
            Status::invalid_argument("key must not be empty"),
            &[(meta::ERROR_CODE, codes::INVALID_KEY)],
        );
        let e = from_status(&s);
        assert_eq!(
            e,
            Error::InvalidArgument {
                code: Some(codes::INVALID_KEY.into()),
                message: "key must not be empty".into()
            }
        );
        assert_eq!(e.to_string(), "invalid argument: key must not be empty");
        assert!(!e.is_retryable());
        assert_eq!(e.code(), codes::INVALID_KEY);
    }

    #[test]
    fn failed_condition_carries_current_version() {
        let s = with_meta(
            Status::failed_precondition("version mismatch"),
            &[
                (meta::ERROR_CODE, codes::CONDITION_FAILED),
                (meta::CURRENT_VERSION, "42"),
            ],
        );
        assert_eq!(
            from_status(&s),
            Error::ConditionFailed {
                current_version: Some(42)
            }
        );
        // The version header alone is enough on FAILED_PRECONDITION.
        let s = with_meta(
            Status::failed_precondition("x"),
            &[(meta::CURRENT_VERSION, "0")],
        );
        let e = from_status(&s);
        assert_eq!(
            e,
            Error::ConditionFailed {
                current_version: Some(0)
            }
        );
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("does not exist"));
    }

    #[test]
    fn failed_precondition_without_condition_data_keeps_its_code() {
        let e = from_status(&Status::failed_precondition("something else"));
        assert_eq!(
            e,
            Error::FailedPrecondition {
                code: None,
                message: "something else".into()
            }
        );
        assert_eq!(e.code(), "FAILED_PRECONDITION");
        assert!(!e.is_retryable());
    }

    #[test]
    fn non_empty_keyspace_and_directory_are_not_condition_failures() {
        for stable in [codes::KEYSPACE_NOT_EMPTY, codes::DIRECTORY_NOT_EMPTY] {
            // Even with a version header, the code decides.
            let s = with_meta(
                Status::failed_precondition("keyspace \"t\" still holds keys"),
                &[(meta::ERROR_CODE, stable), (meta::CURRENT_VERSION, "3")],
            );
            let e = from_status(&s);
            assert_eq!(
                e,
                Error::FailedPrecondition {
                    code: Some(stable.into()),
                    message: "keyspace \"t\" still holds keys".into()
                }
            );
            assert_eq!(e.code(), stable);
            assert!(!e.is_retryable());
            assert_eq!(
                e.to_string(),
                format!("failed precondition ({stable}): keyspace \"t\" still holds keys")
            );
        }
    }

    #[test]
    fn existing_keyspace_is_already_exists() {
        let s = with_meta(
            Status::already_exists("keyspace \"t\" exists"),
            &[(meta::ERROR_CODE, codes::KEYSPACE_EXISTS)],
        );
        let e = from_status(&s);
        assert_eq!(
            e,
            Error::AlreadyExists {
                code: Some(codes::KEYSPACE_EXISTS.into()),
                message: "keyspace \"t\" exists".into()
            }
        );
        assert_eq!(e.code(), codes::KEYSPACE_EXISTS);
        assert!(!e.is_retryable());
        assert_eq!(e.to_string(), "already exists: keyspace \"t\" exists");
    }

    #[test]
    fn map_errors_are_invalid_arguments() {
        for stable in [codes::INVALID_MAP_CHANGE, codes::UNKNOWN_KEYSPACE] {
            let s = with_meta(
                Status::invalid_argument("no"),
                &[(meta::ERROR_CODE, stable)],
            );
            let e = from_status(&s);
            assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
            assert_eq!(e.code(), stable);
            assert!(!e.is_retryable());
        }
    }

    #[test]
    fn stale_epoch_is_retryable() {
        let s = with_meta(
            Status::aborted("map changed"),
            &[(meta::ERROR_CODE, codes::STALE_EPOCH)],
        );
        let e = from_status(&s);
        assert_eq!(
            e,
            Error::Server {
                status: Code::Aborted,
                code: Some(codes::STALE_EPOCH.into()),
                message: "map changed".into()
            }
        );
        assert!(e.is_retryable());
        assert!(from_status(&Status::aborted("x")).is_retryable());
        let s = with_meta(
            Status::failed_precondition("stale"),
            &[(meta::ERROR_CODE, codes::STALE_EPOCH)],
        );
        assert!(from_status(&s).is_retryable());
    }

    #[test]
    fn unavailable_is_retryable() {
        let s = with_meta(
            Status::unavailable("no quorum"),
            &[(meta::ERROR_CODE, codes::NO_QUORUM)],
        );
        let e = from_status(&s);
        assert_eq!(
            e,
            Error::Unavailable {
                code: Some(codes::NO_QUORUM.into()),
                message: "no quorum".into()
            }
        );
        assert!(e.is_retryable());
    }

    #[test]
    fn deadline_is_timeout() {
        let e = from_status(&Status::deadline_exceeded("too slow"));
        assert_eq!(e, Error::Timeout);
        assert!(e.is_retryable());
    }

    #[test]
    fn local_deadline_is_timeout() {
        let s = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(from_status(&s), Error::Timeout);
    }

    #[test]
    fn locally_made_statuses_are_transport_errors() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let s = Status::from_error(Box::new(io));
        assert!(matches!(from_status(&s), Error::Transport(_)), "{s:?}");
        let s = Status::unknown("Service was not ready: broken");
        assert!(matches!(from_status(&s), Error::Transport(_)));
    }

    #[test]
    fn other_codes_are_server_errors() {
        let s = with_meta(
            Status::internal("boom"),
            &[(meta::ERROR_CODE, codes::UNKNOWN_GROUP)],
        );
        let e = from_status(&s);
        assert_eq!(
            e,
            Error::Server {
                status: Code::Internal,
                code: Some(codes::UNKNOWN_GROUP.into()),
                message: "boom".into()
            }
        );
        assert!(!e.is_retryable());
        assert_eq!(e.code(), codes::UNKNOWN_GROUP);
    }
}
