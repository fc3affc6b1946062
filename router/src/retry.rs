//! What to do after a node refuses a request, how long to wait before trying again, and how
//! long a request may take at all. Pure functions, so the policy is tested without a cluster.

use std::time::Duration;

use kv_proto::{codes, meta};
use shardmap::NodeId;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// First wait between two attempts that found no leader.
pub const BACKOFF_START: Duration = Duration::from_millis(10);
/// Longest wait between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_millis(200);

/// The router's reaction to a node's error status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The node named the leader: remember it and send there at once.
    Redirect {
        leader: NodeId,
        addr: Option<String>,
    },
    /// Try the group's next replica after a short backoff. `refresh_map` asks for a map reload
    /// first, because the error suggests the map the request was routed with is out of date.
    NextReplica { refresh_map: bool },
    /// The node says the request was routed with an out-of-date map (`STALE_EPOCH`: the
    /// keyspace changed since the epoch sent; `WRONG_GROUP`: the key is not the group's under
    /// the node's map). Read the map now and route again: the key may live elsewhere.
    Remap,
    /// Retrying cannot help (bad input, or an error the router does not understand).
    Fail,
}

/// The stable `kv-error-code` of a status, if any.
pub fn error_code(status: &Status) -> Option<&str> {
    status
        .metadata()
        .get(meta::ERROR_CODE)
        .and_then(|v| v.to_str().ok())
}

/// Classifies a node's error status.
pub fn classify(status: &Status) -> Decision {
    let code = error_code(status);
    if status.code() == Code::InvalidArgument {
        return Decision::Fail;
    }
    match code {
        Some(codes::NOT_LEADER) => {
            let md = status.metadata();
            let leader = md
                .get(meta::LEADER_ID)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse::<NodeId>().ok());
            let addr = md
                .get(meta::LEADER_ADDR)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
            match leader {
                Some(leader) => Decision::Redirect { leader, addr },
                None => Decision::NextReplica { refresh_map: false },
            }
        }
        Some(codes::STALE_EPOCH) | Some(codes::WRONG_GROUP) => Decision::Remap,
        Some(codes::UNKNOWN_GROUP) => Decision::NextReplica { refresh_map: true },
        // Refusals of map changes by the meta group: the caller's answer, not a routing problem.
        Some(codes::UNKNOWN_KEYSPACE)
        | Some(codes::KEYSPACE_EXISTS)
        | Some(codes::INVALID_MAP_CHANGE)
        | Some(codes::CONDITION_FAILED) => Decision::Fail,
        Some(codes::NO_QUORUM)
        | Some(codes::NOT_READY)
        | Some(codes::LAGGING)
        | Some(codes::STALE_REPLICA) => Decision::NextReplica { refresh_map: false },
        _ => match status.code() {
            // Transport failures (refused, reset, timed out) surface as these codes.
            Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted => Decision::NextReplica { refresh_map: false },
            Code::NotFound => Decision::NextReplica { refresh_map: true },
            _ => Decision::Fail,
        },
    }
}

/// Exponential backoff: 10ms, 20ms, 40ms ... capped at 200ms.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_START,
        }
    }
}

impl Backoff {
    /// The wait before the next attempt; each call doubles the following one up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }
}

/// How long a request may take: the configured timeout, or the client's `grpc-timeout` if that
/// is shorter. A small margin is kept so that the router's own answer (naming the group and the
/// last error) reaches the client before the client gives up.
pub fn request_budget(metadata: &MetadataMap, configured: Duration) -> Duration {
    let client = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    budget_within(client, configured)
}

/// [`request_budget`] of a call streamed in a `MultiStream` with `timeout_ms` (0: none): the
/// budget its unary handler finds in the `grpc-timeout` that `kv_proto::multi` gives the unary
/// request it serves the call as. That header holds at most 8 digits of its unit, so past
/// 99,999,999 ms it carries whole seconds.
pub fn stream_call_budget(timeout_ms: u32, configured: Duration) -> Duration {
    let client = match timeout_ms {
        0 => None,
        ms if ms <= 99_999_999 => Some(Duration::from_millis(ms.into())),
        ms => Some(Duration::from_secs((ms / 1000).into())),
    };
    budget_within(client, configured)
}

/// The client's timeout less a margin when it is shorter than the configured one.
fn budget_within(client: Option<Duration>, configured: Duration) -> Duration {
    match client {
        Some(client) if client < configured => {
            let margin = (client / 10).min(Duration::from_millis(20));
            client - margin
        }
        _ => configured,
    }
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    match unit {
        "H" => Some(Duration::from_secs(n.checked_mul(3600)?)),
        "M" => Some(Duration::from_secs(n.checked_mul(60)?)),
        "S" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_millis(n)),
        "u" => Some(Duration::from_micros(n)),
        "n" => Some(Duration::from_nanos(n)),
        _ => None,
    }
}

/// The time one attempt may use out of what is left: all of it when little is left, otherwise
/// half (at least a second), so that a replica that hangs still leaves time to try another.
pub fn attempt_budget(remaining: Duration) -> Duration {
    if remaining <= Duration::from_secs(1) {
        remaining
    } else {
        (remaining / 2).max(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn status(
        code: Code,
        error_code: Option<&'static str>,
        extra: &[(&'static str, &'static str)],
    ) -> Status {
        let mut s = Status::new(code, "x");
        if let Some(c) = error_code {
            s.metadata_mut()
                .insert(meta::ERROR_CODE, MetadataValue::from_static(c));
        }
        for (k, v) in extra {
            s.metadata_mut().insert(*k, MetadataValue::from_static(v));
        }
        s
    }

    #[test]
    fn not_leader_with_hint_redirects() {
        let s = status(
            Code::Unavailable,
            Some(codes::NOT_LEADER),
            &[(meta::LEADER_ID, "3"), (meta::LEADER_ADDR, "10.0.0.3:7000")],
        );
        assert_eq!(
            classify(&s),
            Decision::Redirect {
                leader: 3,
                addr: Some("10.0.0.3:7000".into())
            }
        );
        let s = status(
            Code::Unavailable,
            Some(codes::NOT_LEADER),
            &[(meta::LEADER_ID, "2")],
        );
        assert_eq!(
            classify(&s),
            Decision::Redirect {
                leader: 2,
                addr: None
            }
        );
    }

    #[test]
    fn not_leader_without_hint_tries_the_next_replica() {
        let s = status(Code::Unavailable, Some(codes::NOT_LEADER), &[]);
        assert_eq!(classify(&s), Decision::NextReplica { refresh_map: false });
        let s = status(
            Code::Unavailable,
            Some(codes::NOT_LEADER),
            &[(meta::LEADER_ID, "garbage")],
        );
        assert_eq!(classify(&s), Decision::NextReplica { refresh_map: false });
    }

    #[test]
    fn unavailable_and_transport_errors_try_the_next_replica() {
        for code in [
            Code::Unavailable,
            Code::Unknown,
            Code::Cancelled,
            Code::DeadlineExceeded,
        ] {
            assert_eq!(
                classify(&status(code, None, &[])),
                Decision::NextReplica { refresh_map: false }
            );
        }
        let s = status(Code::Unavailable, Some(codes::NO_QUORUM), &[]);
        assert_eq!(classify(&s), Decision::NextReplica { refresh_map: false });
        for c in [codes::LAGGING, codes::STALE_REPLICA] {
            let s = status(Code::Unavailable, Some(c), &[]);
            assert_eq!(classify(&s), Decision::NextReplica { refresh_map: false });
        }
    }

    #[test]
    fn unknown_group_refreshes_the_map_and_stale_routing_remaps() {
        let s = status(Code::NotFound, Some(codes::UNKNOWN_GROUP), &[]);
        assert_eq!(classify(&s), Decision::NextReplica { refresh_map: true });
        let s = status(Code::Aborted, Some(codes::STALE_EPOCH), &[]);
        assert_eq!(classify(&s), Decision::Remap);
        let s = status(Code::Aborted, Some(codes::WRONG_GROUP), &[]);
        assert_eq!(classify(&s), Decision::Remap);
    }

    #[test]
    fn refused_map_changes_are_not_retried() {
        let s = status(Code::NotFound, Some(codes::UNKNOWN_KEYSPACE), &[]);
        assert_eq!(classify(&s), Decision::Fail);
        let s = status(Code::AlreadyExists, Some(codes::KEYSPACE_EXISTS), &[]);
        assert_eq!(classify(&s), Decision::Fail);
        let s = status(Code::InvalidArgument, Some(codes::INVALID_MAP_CHANGE), &[]);
        assert_eq!(classify(&s), Decision::Fail);
    }

    #[test]
    fn invalid_argument_is_never_retried() {
        for c in [
            codes::INVALID_KEY,
            codes::INVALID_VALUE,
            codes::INVALID_RANGE,
        ] {
            assert_eq!(
                classify(&status(Code::InvalidArgument, Some(c), &[])),
                Decision::Fail
            );
        }
        assert_eq!(
            classify(&status(Code::InvalidArgument, None, &[])),
            Decision::Fail
        );
        assert_eq!(classify(&status(Code::Internal, None, &[])), Decision::Fail);
        assert_eq!(
            classify(&status(Code::PermissionDenied, None, &[])),
            Decision::Fail
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..7).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, vec![10, 20, 40, 80, 160, 200, 200]);
    }

    #[test]
    fn grpc_timeout_parsing() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("300u"), Some(Duration::from_micros(300)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }

    #[test]
    fn request_budget_takes_the_shorter_timeout() {
        let configured = Duration::from_secs(5);
        let mut md = MetadataMap::new();
        assert_eq!(request_budget(&md, configured), configured);
        md.insert("grpc-timeout", MetadataValue::from_static("100m"));
        assert_eq!(request_budget(&md, configured), Duration::from_millis(90));
        md.insert("grpc-timeout", MetadataValue::from_static("60S"));
        assert_eq!(request_budget(&md, configured), configured);
    }

    #[test]
    fn streamed_calls_get_the_budget_of_the_unary_request_they_stand_for() {
        for configured in [Duration::from_secs(5), Duration::from_secs(200 * 86_400)] {
            for ms in [
                0,
                1,
                99,
                100,
                4_999,
                5_000,
                5_001,
                99_999,
                100_000,
                99_999_999,
                100_000_000,
                100_000_999,
                u32::MAX,
            ] {
                let mut unary = tonic::Request::new(());
                if ms > 0 {
                    unary.set_timeout(Duration::from_millis(ms.into()));
                }
                assert_eq!(
                    stream_call_budget(ms, configured),
                    request_budget(unary.metadata(), configured),
                    "{ms} ms within {configured:?}"
                );
            }
        }
    }

    #[test]
    fn attempt_budget_leaves_room_for_another_replica() {
        assert_eq!(
            attempt_budget(Duration::from_secs(5)),
            Duration::from_millis(2500)
        );
        assert_eq!(
            attempt_budget(Duration::from_millis(1500)),
            Duration::from_secs(1)
        );
        assert_eq!(
            attempt_budget(Duration::from_millis(300)),
            Duration::from_millis(300)
        );
    }
}
