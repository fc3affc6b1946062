//! Many independent calls in one `Multi` RPC: the coalescer that gathers them on the calling
//! side, and the serving loop that answers each with the service's own handler.
//!
//! On a two-core box a unary gRPC call costs tens of microseconds of CPU on each side (HTTP/2
//! stream, headers, task wakeups), more than the work behind a small get or put. Under load,
//! callers of one peer therefore share RPCs: a [`Coalescer`] queues calls and sends whatever
//! has queued as one `Multi` request whenever one of a few batch slots is free. No timer is
//! involved: a lone call goes out at once, and batches grow only while earlier ones are in
//! flight, so coalescing adds no latency when there is nothing to share.
//!
//! Each call of a batch is answered as if it had been sent alone: the server runs its unary
//! handler for it, and a failure travels as a [`CallError`] carrying the status code, message
//! and metadata (error code, leader hint) that the unary call would have returned.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, KeyAndValueRef};
use tonic::{Code, Request, Status};

use crate::kv::{self, CallError};
use crate::node;

/// The most calls one `Multi` request may carry; servers refuse more.
pub const MAX_CALLS: usize = 4096;

/// How a [`Coalescer`] shapes its batches.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Calls per batch at most.
    pub max_calls: usize,
    /// Batches in flight at once; calls arriving meanwhile wait for a slot and go out together.
    pub max_in_flight: usize,
}

impl Default for Shape {
    fn default() -> Self {
        // Measured with 256 concurrent clients (docs/benchmarks.md): 4 batches in flight made
        // big batches but queued every call behind whole batches (strong gets fell to half);
        // 16 recovered most, 64 and 256 alike. Batches still form from the calls that queue
        // while the dispatcher is busy.
        Shape {
            max_calls: 256,
            max_in_flight: 64,
        }
    }
}

/// Gathers concurrent calls to one peer into batches (see the module docs). Cheap to share
/// behind an `Arc`; the dispatching task ends when the coalescer is dropped.
pub struct Coalescer<Req, Resp> {
    queue: mpsc::UnboundedSender<Waiting<Req, Resp>>,
}

impl<Req, Resp> std::fmt::Debug for Coalescer<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer").finish_non_exhaustive()
    }
}

struct Waiting<Req, Resp> {
    call: Req,
    budget: Duration,
    reply: oneshot::Sender<Result<Resp, Status>>,
}

/// What sending one batch yields: one outcome per call, in order, or one status for all.
pub type BatchOutcome<Resp> = Result<Vec<Result<Resp, Status>>, Status>;

impl<Req: Send + 'static, Resp: Send + 'static> Coalescer<Req, Resp> {
    /// Starts the dispatching task. `send` carries one batch and the longest budget among its
    /// calls (the RPC's timeout).
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn new<S, Fut>(shape: Shape, send: S) -> Self
    where
        S: Fn(Vec<Req>, Duration) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = BatchOutcome<Resp>> + Send + 'static,
    {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(waiting, shape, send));
        Coalescer { queue }
    }

    /// Sends `call` in the next batch and waits for its own outcome. The caller bounds the
    /// wait; `budget` only sizes the batch's timeout.
    pub async fn call(&self, call: Req, budget: Duration) -> Result<Resp, Status> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Waiting {
                call,
                budget,
                reply,
            })
            .map_err(|_| Status::unavailable("the call coalescer has stopped"))?;
        answer
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("the batch carrying the call was lost")))
    }
}

async fn dispatch<Req, Resp, S, Fut>(
    mut waiting: mpsc::UnboundedReceiver<Waiting<Req, Resp>>,
    shape: Shape,
    send: S,
) where
    Req: Send + 'static,
    Resp: Send + 'static,
    S: Fn(Vec<Req>, Duration) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = BatchOutcome<Resp>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(shape.max_in_flight.max(1)));
    let send = Arc::new(send);
    loop {
        // Take the slot before the calls: while every slot is busy, calls pile up in the
        // queue and leave together as soon as one frees.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = waiting.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < shape.max_calls.max(1) {
            match waiting.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let send = send.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // A caller that has given up (its own timeout) needs no answer.
            batch.retain(|w| !w.reply.is_closed());
            let Some(budget) = batch.iter().map(|w| w.budget).max() else {
                return;
            };
            let (calls, replies): (Vec<Req>, Vec<_>) =
                batch.into_iter().map(|w| (w.call, w.reply)).unzip();
            let expected = replies.len();
            match send(calls, budget).await {
                Ok(results) if results.len() == expected => {
                    for (result, reply) in results.into_iter().zip(replies) {
                        let _ = reply.send(result);
                    }
                }
                Ok(results) => {
                    let status = Status::internal(format!(
                        "the peer answered {} results for a batch of {expected} calls",
                        results.len()
                    ));
                    for reply in replies {
                        let _ = reply.send(Err(status.clone()));
                    }
                }
                Err(status) => {
                    for reply in replies {
                        let _ = reply.send(Err(status.clone()));
                    }
                }
            }
        });
    }
}

/// A failed call's status as it travels inside a batch.
pub fn call_error(status: &Status) -> CallError {
    let mut metadata = HashMap::new();
    for entry in status.metadata().iter() {
        if let KeyAndValueRef::Ascii(key, value) = entry {
            if let Ok(value) = value.to_str() {
                metadata.insert(key.as_str().to_string(), value.to_string());
            }
        }
    }
    CallError {
        code: status.code() as i32,
        message: status.message().to_string(),
        metadata,
    }
}

/// The status a [`CallError`] stands for, as the unary call would have returned it.
pub fn status_of(error: CallError) -> Status {
    let mut status = Status::new(Code::from_i32(error.code), error.message);
    let metadata = status.metadata_mut();
    for (key, value) in error.metadata {
        if let (Ok(key), Ok(value)) = (
            AsciiMetadataKey::from_bytes(key.as_bytes()),
            value.parse::<AsciiMetadataValue>(),
        ) {
            metadata.insert(key, value);
        }
    }
    status
}

/// The unary request a call of a batch is served as: its own budget when it has one, else the
/// batch's `grpc-timeout`.
fn unary<T>(message: T, timeout_ms: u32, batch_timeout: Option<&AsciiMetadataValue>) -> Request<T> {
    let mut request = Request::new(message);
    if timeout_ms > 0 {
        request.set_timeout(Duration::from_millis(timeout_ms.into()));
    } else if let Some(value) = batch_timeout {
        request.metadata_mut().insert("grpc-timeout", value.clone());
    }
    request
}

fn check_count(count: usize) -> Result<(), Status> {
    if count > MAX_CALLS {
        return Err(Status::invalid_argument(format!(
            "a Multi request carries {count} calls, over the limit of {MAX_CALLS}"
        )));
    }
    Ok(())
}

/// Serves a `kv.v1.Kv/Multi` request with `service`'s own Get, Put and Delete handlers, all
/// calls concurrently.
pub async fn serve_kv<S: kv::kv_server::Kv>(
    service: &S,
    request: Request<kv::MultiRequest>,
) -> Result<kv::MultiResponse, Status> {
    use kv::call::Call;
    use kv::call_result::Result as Outcome;
    let batch_timeout = request.metadata().get("grpc-timeout").cloned();
    let calls = request.into_inner().calls;
    check_count(calls.len())?;
    let results = futures::future::join_all(calls.into_iter().map(|call| {
        let timeout = batch_timeout.as_ref();
        async move {
            let t = call.timeout_ms;
            let outcome = match call.call {
                Some(Call::Get(r)) => service
                    .get(unary(r, t, timeout))
                    .await
                    .map(|r| Outcome::Get(r.into_inner())),
                Some(Call::Put(r)) => service
                    .put(unary(r, t, timeout))
                    .await
                    .map(|r| Outcome::Put(r.into_inner())),
                Some(Call::Delete(r)) => service
                    .delete(unary(r, t, timeout))
                    .await
                    .map(|r| Outcome::Delete(r.into_inner())),
                None => Err(Status::invalid_argument(
                    "a call of the batch names no request",
                )),
            };
            kv::CallResult {
                result: Some(outcome.unwrap_or_else(|s| Outcome::Error(call_error(&s)))),
            }
        }
    }))
    .await;
    Ok(kv::MultiResponse { results })
}

/// Serves a `kv.node.v1.Node/Multi` request with `service`'s own Write and Read handlers, all
/// calls concurrently.
pub async fn serve_node<S: node::node_server::Node>(
    service: &S,
    request: Request<node::NodeMultiRequest>,
) -> Result<node::NodeMultiResponse, Status> {
    use node::node_call::Call;
    use node::node_call_result::Result as Outcome;
    let batch_timeout = request.metadata().get("grpc-timeout").cloned();
    let calls = request.into_inner().calls;
    check_count(calls.len())?;
    let results = futures::future::join_all(calls.into_iter().map(|call| {
        let timeout = batch_timeout.as_ref();
        async move {
            let t = call.timeout_ms;
            let outcome = match call.call {
                Some(Call::Write(r)) => service
                    .write(unary(r, t, timeout))
                    .await
                    .map(|r| Outcome::Write(r.into_inner())),
                Some(Call::Read(r)) => service
                    .read(unary(r, t, timeout))
                    .await
                    .map(|r| Outcome::Read(r.into_inner())),
                None => Err(Status::invalid_argument(
                    "a call of the batch names no request",
                )),
            };
            node::NodeCallResult {
                result: Some(outcome.unwrap_or_else(|s| Outcome::Error(call_error(&s)))),
            }
        }
    }))
    .await;
    Ok(node::NodeMultiResponse { results })
}

/// A call's budget as carried in the batch: whole milliseconds, at least one.
pub fn timeout_ms(budget: Duration) -> u32 {
    u32::try_from(budget.as_millis()).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn statuses_survive_the_trip_through_a_batch() {
        let mut status = Status::unavailable("not the leader of shard group 3");
        status
            .metadata_mut()
            .insert(crate::meta::ERROR_CODE, "NOT_LEADER".parse().unwrap());
        status
            .metadata_mut()
            .insert(crate::meta::LEADER_ADDR, "127.0.0.1:7001".parse().unwrap());
        let back = status_of(call_error(&status));
        assert_eq!(back.code(), Code::Unavailable);
        assert_eq!(back.message(), "not the leader of shard group 3");
        assert_eq!(
            back.metadata().get(crate::meta::ERROR_CODE).unwrap(),
            "NOT_LEADER"
        );
        assert_eq!(
            back.metadata().get(crate::meta::LEADER_ADDR).unwrap(),
            "127.0.0.1:7001"
        );
    }

    #[test]
    fn unknown_codes_and_bad_metadata_do_not_panic() {
        let mut metadata = HashMap::new();
        metadata.insert("bad key with spaces".to_string(), "v".to_string());
        metadata.insert("good".to_string(), "bad\nvalue".to_string());
        let status = status_of(CallError {
            code: 999,
            message: "x".into(),
            metadata,
        });
        assert_eq!(status.code(), Code::Unknown);
        assert!(status.metadata().is_empty());
    }

    #[tokio::test]
    async fn concurrent_calls_share_batches_and_each_gets_its_own_answer() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = batches.clone();
        let coalescer = Arc::new(Coalescer::new(
            Shape {
                max_calls: 64,
                max_in_flight: 1,
            },
            move |calls: Vec<u32>, _budget| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(calls
                        .into_iter()
                        .map(|c| {
                            if c % 7 == 0 {
                                Err(Status::invalid_argument(format!("{c} is refused")))
                            } else {
                                Ok(c * 2)
                            }
                        })
                        .collect())
                }
            },
        ));
        let calls = (1..=100u32).map(|c| {
            let coalescer = coalescer.clone();
            tokio::spawn(async move { (c, coalescer.call(c, Duration::from_secs(1)).await) })
        });
        let calls: Vec<_> = calls.collect();
        for handle in calls {
            let (c, outcome) = handle.await.unwrap();
            match outcome {
                Ok(v) => assert_eq!(v, c * 2),
                Err(s) => {
                    assert_eq!(c % 7, 0);
                    assert_eq!(s.message(), format!("{c} is refused"));
                }
            }
        }
        let sent = batches.load(Ordering::SeqCst);
        assert!(sent < 100, "100 concurrent calls took {sent} batches");
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_calls_and_a_short_answer_is_an_error() {
        let failing = Coalescer::new(Shape::default(), |_calls: Vec<u32>, _| async {
            Err::<Vec<Result<u32, Status>>, _>(Status::unavailable("connection refused"))
        });
        let err = failing.call(1, Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        let short = Coalescer::new(Shape::default(), |_calls: Vec<u32>, _| async {
            Ok::<Vec<Result<u32, Status>>, Status>(Vec::new())
        });
        let err = short.call(1, Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(err.code(), Code::Internal);
    }
}
