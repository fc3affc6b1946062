//! Many independent calls in one RPC: the multiplexer that carries them on the calling side,
//! and the serving loops that answer each with the service's own handler.
//!
//! On a two-core box a unary gRPC call costs tens of microseconds of CPU on each side (HTTP/2
//! stream setup, headers and trailers, task wakeups), more than the work behind a small get or
//! put. So callers of one peer share one long-lived `MultiStream` call: a [`Mux`] queues calls
//! and writes whatever has queued as one message whenever the stream can take one, and the
//! server answers each call as soon as it is done, batching whatever results are ready into
//! one message. No timer is involved: a lone call goes out at once, and messages grow only
//! while the connection is busy, so sharing adds no wait and a slow call (a put waiting for
//! its quorum) holds up no fast one (an eventual read).
//!
//! Each call is answered as if it had been sent alone: the server runs its unary handler for
//! it, and a failure travels as a [`CallError`] carrying the status code, message and metadata
//! (error code, leader hint) that the unary call would have returned. The unary `Multi` RPC
//! (one batch, answered when all its calls are) serves the same calls for simple clients.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, KeyAndValueRef};
use tonic::{Code, Request, Status, Streaming};

use crate::kv::{self, CallError};
use crate::node;

/// The most calls one message may carry; servers refuse more.
pub const MAX_CALLS: usize = 4096;

/// Calls (or results) per stream message at most.
const MESSAGE_CALLS: usize = 256;

/// Encoded bytes per stream message at most, unless its one item alone is larger. Calls and
/// results coalesced without a byte bound failed together once their values added up past
/// [`MAX_MESSAGE_BYTES`](crate::MAX_MESSAGE_BYTES) (a hundred concurrent gets of 1 MiB values:
/// one 72 MiB answer that the sender refused to encode). Well under that limit, so that a
/// message of one maximal value plus whatever small items fit beside it still passes, and
/// small: beyond a few megabytes a bigger message saves nothing per byte and only makes each
/// side buffer more before it can start on the first item.
pub const MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// How long a streamed call without a budget of its own may run on the server. Unary calls
/// are cut by their `grpc-timeout`; a stream has none, and a call that never ends would hold
/// its caller's slot and the server's task for good.
pub const STREAM_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A stream message: a batch of calls or of results.
pub trait Batch: Send + 'static {
    /// A `prost::Message`, so that a message can be cut by its encoded size.
    type Item: Tagged + prost::Message + Send + 'static;
    fn from_items(items: Vec<Self::Item>) -> Self;
    fn into_items(self) -> Vec<Self::Item>;
}

/// A call or result named by the id that pairs them on a stream.
pub trait Tagged {
    fn id(&self) -> u64;
    fn set_id(&mut self, id: u64);
}

macro_rules! batch {
    ($batch:ty, $field:ident, $item:ty) => {
        impl Batch for $batch {
            type Item = $item;
            fn from_items(items: Vec<$item>) -> Self {
                Self { $field: items }
            }
            fn into_items(self) -> Vec<$item> {
                self.$field
            }
        }
        impl Tagged for $item {
            fn id(&self) -> u64 {
                self.id
            }
            fn set_id(&mut self, id: u64) {
                self.id = id;
            }
        }
    };
}

/// A result as the caller wants it: the call's own outcome, or the status it failed with.
pub trait Answer {
    type Outcome;
    fn outcome(self) -> Result<Self::Outcome, Status>;
    /// The result of a call that failed with `status` before it ran.
    fn failed(status: &Status) -> Self;
}

macro_rules! answer {
    ($item:ty, $outcome:ty, $($error:ident)::+) => {
        impl Answer for $item {
            type Outcome = $outcome;
            fn outcome(self) -> Result<$outcome, Status> {
                match self.result {
                    Some($($error)::+(e)) => Err(status_of(e)),
                    Some(outcome) => Ok(outcome),
                    None => Err(Status::internal("the peer answered a call with nothing")),
                }
            }
            fn failed(status: &Status) -> Self {
                Self {
                    result: Some($($error)::+(call_error(status))),
                    ..Default::default()
                }
            }
        }
    };
}

answer!(
    kv::CallResult,
    kv::call_result::Result,
    kv::call_result::Result::Error
);
answer!(
    node::NodeCallResult,
    node::node_call_result::Result,
    node::node_call_result::Result::Error
);

batch!(kv::MultiRequest, calls, kv::Call);
batch!(kv::MultiResponse, results, kv::CallResult);
batch!(node::NodeMultiRequest, calls, node::NodeCall);
batch!(node::NodeMultiResponse, results, node::NodeCallResult);

/// The messages a stream yields.
pub type Inbound<B> = Pin<Box<dyn Stream<Item = Result<B, Status>> + Send>>;
/// The messages a caller writes to a stream (and a server writes back): whatever has queued,
/// as one message at a time. `T` is what the queue holds, `item` what of it goes out. A named
/// type rather than a combinator chain: futures holding the latter trip a compiler bug
/// (rust-lang/rust#102211, "higher-ranked lifetime error") once boxed as `Send`.
pub struct Outbound<B: Batch, T = <B as Batch>::Item> {
    queue: mpsc::UnboundedReceiver<T>,
    item: fn(T) -> B::Item,
    /// The first of the next message's items: taken before yielding once so that calls
    /// queued meanwhile go out in the same message, or taken for the last message but left
    /// out of it because it would have taken the message past [`MESSAGE_BYTES`] (see
    /// [`Outbound::poll_next`]).
    held: Option<B::Item>,
}

// Nothing in it is pinned structurally: the held item is only ever moved.
impl<B: Batch, T> Unpin for Outbound<B, T> {}

/// The bytes `item` adds to a message as one element of its repeated field: its encoded
/// length, the field's tag (one byte: every batch's field number is small) and the length
/// prefix.
fn framed_len(item: &impl prost::Message) -> usize {
    let len = item.encoded_len();
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

impl<B: Batch, T> Outbound<B, T> {
    fn new(queue: mpsc::UnboundedReceiver<T>, item: fn(T) -> B::Item) -> Self {
        Outbound {
            queue,
            item,
            held: None,
        }
    }
}

impl<B: Batch, T> Stream for Outbound<B, T> {
    type Item = B;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<B>> {
        let item = self.item;
        let first = match self.held.take() {
            Some(held) => held,
            None => match self.queue.poll_recv(cx) {
                // A lone item: yield once (a self-wake puts this task at the back of the run
                // queue) and send whatever has queued behind it by then. Each message costs a
                // write and a read of the socket, and a wake-up on each side; most calls
                // arrive in bursts (a Raft round's answers, a client's concurrent requests).
                std::task::Poll::Ready(Some(queued)) if self.queue.is_empty() => {
                    self.held = Some(item(queued));
                    cx.waker().wake_by_ref();
                    return std::task::Poll::Pending;
                }
                std::task::Poll::Ready(Some(queued)) => item(queued),
                std::task::Poll::Ready(None) => return std::task::Poll::Ready(None),
                std::task::Poll::Pending => return std::task::Poll::Pending,
            },
        };
        // The first item goes whatever its size: alone it is bounded by the limits on keys
        // and values, and holding it back would stall the stream for good.
        let mut bytes = framed_len(&first);
        let mut items = vec![first];
        while items.len() < MESSAGE_CALLS {
            let Ok(queued) = self.queue.try_recv() else {
                break;
            };
            let next = item(queued);
            bytes += framed_len(&next);
            if bytes > MESSAGE_BYTES {
                // Next message's first: order is kept, and it goes out as soon as the stream
                // takes another message.
                self.held = Some(next);
                break;
            }
            items.push(next);
        }
        std::task::Poll::Ready(Some(B::from_items(items)))
    }
}

/// A stream being opened, as [`Mux::new`] takes it (see [`opening`]).
pub type Opening<R> = Pin<Box<dyn Future<Output = Result<Inbound<R>, Status>> + Send>>;

/// Wraps a generated client's `multi_stream(...)` call for [`Mux::new`]. Boxed here, with its
/// type spelled out, because coercing such a future to `dyn Future + Send` inside a closure
/// trips the same compiler bug as [`Outbound`] avoids.
pub fn opening<R, F>(call: F) -> Opening<R>
where
    R: Batch,
    F: Future<Output = Result<tonic::Response<Streaming<R>>, Status>> + Send + 'static,
{
    Box::pin(async move {
        let inbound: Inbound<R> = Box::pin(call.await?.into_inner());
        Ok(inbound)
    })
}
type Opener<Q, R> = Box<dyn Fn(Outbound<Q>) -> Opening<R> + Send + Sync>;
type Waiter<T> = oneshot::Sender<Result<T, Status>>;

/// Calls to one peer over one shared stream (see the module docs), reopened on the next call
/// after the stream fails. The stream ends when the `Mux` is dropped.
pub struct Mux<Q: Batch, R: Batch> {
    open: Opener<Q, R>,
    live: Mutex<Option<Live<Q::Item, R::Item>>>,
    next_id: AtomicU64,
}

impl<Q: Batch, R: Batch> std::fmt::Debug for Mux<Q, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mux").finish_non_exhaustive()
    }
}

/// One open stream: where calls are queued, and the callers waiting for results.
struct Live<C, T> {
    calls: mpsc::UnboundedSender<C>,
    waiting: Arc<Waiting<T>>,
}

impl<C, T> Clone for Live<C, T> {
    fn clone(&self) -> Self {
        Live {
            calls: self.calls.clone(),
            waiting: self.waiting.clone(),
        }
    }
}

/// Shared with the task reading the stream, which does not hold the call queue: dropping the
/// `Mux` closes the queue, which ends the outbound stream and so the call.
struct Waiting<T> {
    // std Mutex: held only to insert or remove one entry, never across an await. Keyed by
    // ids this side hands out, so the fast hash needs no protection from chosen keys.
    callers: Mutex<foldhash::HashMap<u64, Waiter<T>>>,
    ended: AtomicBool,
}

impl<T> Waiting<T> {
    fn take(&self, id: u64) -> Option<Waiter<T>> {
        self.callers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
    }

    /// Fails every caller still waiting: the stream is gone.
    fn end(&self, status: &Status) {
        self.ended.store(true, Ordering::SeqCst);
        let callers: Vec<_> = self
            .callers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (_, waiter) in callers {
            let _ = waiter.send(Err(status.clone()));
        }
    }
}

/// Forgets a caller that stopped waiting (its own timeout), so that its entry does not stay.
struct Forget<'a, T> {
    waiting: &'a Waiting<T>,
    id: u64,
}

impl<T> Drop for Forget<'_, T> {
    fn drop(&mut self) {
        self.waiting.take(self.id);
    }
}

impl<Q: Batch, R: Batch> Mux<Q, R> {
    /// `open` starts the streaming call with the outbound messages and yields the inbound ones
    /// (the generated client's `multi_stream`).
    pub fn new<F, Fut>(open: F) -> Self
    where
        F: Fn(Outbound<Q>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Inbound<R>, Status>> + Send + 'static,
    {
        Mux {
            open: Box::new(move |outbound| Box::pin(open(outbound))),
            live: Mutex::new(None),
            next_id: AtomicU64::new(1),
        }
    }

    /// Sends `call` and waits for its result. The caller bounds the wait (and sets the call's
    /// own timeout, which the server enforces).
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (opening a stream starts a task).
    pub async fn call(&self, mut call: Q::Item) -> Result<R::Item, Status> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        call.set_id(id);
        let live = self.live();
        let (waiter, answer) = oneshot::channel();
        live.waiting
            .callers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, waiter);
        let _forget = Forget {
            waiting: &live.waiting,
            id,
        };
        // The stream may have ended since `live()`: then nobody would answer.
        let lost = live.calls.send(call).is_err() || live.waiting.ended.load(Ordering::SeqCst);
        if lost && live.waiting.take(id).is_some() {
            return Err(Status::unavailable(
                "the call stream to the peer closed; retry",
            ));
        }
        answer.await.unwrap_or_else(|_| {
            Err(Status::unavailable(
                "the call stream to the peer ended before answering",
            ))
        })
    }

    /// The open stream, or a new one when there is none or it has ended.
    fn live(&self) -> Live<Q::Item, R::Item> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = live.as_ref() {
            if !l.waiting.ended.load(Ordering::SeqCst) {
                return l.clone();
            }
        }
        let (calls, queued) = mpsc::unbounded_channel();
        let waiting = Arc::new(Waiting {
            callers: Mutex::new(foldhash::HashMap::default()),
            ended: AtomicBool::new(false),
        });
        let outbound = Outbound::new(queued, std::convert::identity);
        tokio::spawn(read(waiting.clone(), (self.open)(outbound)));
        let fresh = Live { calls, waiting };
        *live = Some(fresh.clone());
        fresh
    }
}

/// Hands each result to its caller until the stream ends, then fails whoever still waits.
async fn read<R: Batch>(waiting: Arc<Waiting<R::Item>>, opening: Opening<R>) {
    let status = match opening.await {
        Err(status) => status,
        Ok(mut inbound) => loop {
            match inbound.next().await {
                Some(Ok(message)) => {
                    for result in message.into_items() {
                        if let Some(waiter) = waiting.take(result.id()) {
                            let _ = waiter.send(Ok(result));
                        }
                    }
                }
                Some(Err(status)) => break status,
                None => break Status::unavailable("the peer closed the call stream"),
            }
        },
    };
    waiting.end(&status);
}

/// Calls one stream may have open on a server (running, or answered but not yet written back).
/// A caller that sends more waits: the server stops reading its stream, and HTTP/2 flow control
/// holds the caller back. Without a bound, a caller that sends without reading would grow the
/// server's memory without end.
pub const STREAM_CALLS_IN_FLIGHT: usize = 1024;

/// Calls all streams of a process may have open together. Per-stream bounds alone let many
/// streams that never read hold millions of calls (gigabytes, and a backlog that kept groups
/// busy for a minute after the streams were gone); past this a call is refused at once with
/// `SERVER_BUSY`.
pub const SERVER_CALLS_IN_FLIGHT: usize = 16 * 1024;

/// What a call holds until its answer is taken out of the queue: its stream's slot, and the
/// process's unless it was refused for want of one.
type CallSlots = (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>);

/// The answer to a call over [`SERVER_CALLS_IN_FLIGHT`].
fn server_busy() -> Status {
    let mut status = Status::resource_exhausted(format!(
        "the server has {SERVER_CALLS_IN_FLIGHT} calls in flight, most of them on streams whose answers are not read: retry later"
    ));
    status.metadata_mut().insert(
        crate::meta::ERROR_CODE,
        AsciiMetadataValue::from_static(crate::codes::SERVER_BUSY),
    );
    status
}

/// The status of a unary `Multi` call whose answer did not fit beside the earlier ones.
fn reply_too_large(used: usize) -> Status {
    let mut status = Status::resource_exhausted(format!(
        "the Multi reply already holds {used} bytes of earlier answers, and this one would pass the limit of {UNARY_REPLY_BYTES}: send fewer calls per batch, or use MultiStream"
    ));
    status.metadata_mut().insert(
        crate::meta::ERROR_CODE,
        AsciiMetadataValue::from_static(crate::codes::RESPONSE_TOO_LARGE),
    );
    status
}

/// Bytes of answers one unary `Multi` reply carries at most: a call whose answer would take
/// the reply past it (counted in request order) fails with `RESPONSE_TOO_LARGE`, rather than
/// the whole reply failing to encode past [`MAX_MESSAGE_BYTES`](crate::MAX_MESSAGE_BYTES).
pub const UNARY_REPLY_BYTES: usize = crate::MAX_READ_BYTES;

/// Keeps a unary reply within [`UNARY_REPLY_BYTES`]: every answer past it fails instead.
fn bound_reply<T: Answer + Tagged + prost::Message>(results: Vec<T>) -> Vec<T> {
    let mut used = 0usize;
    results
        .into_iter()
        .map(|r| {
            // The item's bytes plus its field tag and length prefix.
            let len = r.encoded_len() + 11;
            if used + len <= UNARY_REPLY_BYTES {
                used += len;
                return r;
            }
            let mut failed = T::failed(&reply_too_large(used));
            failed.set_id(r.id());
            failed
        })
        .collect()
}

/// The process-wide slots of [`SERVER_CALLS_IN_FLIGHT`].
fn server_slots() -> Arc<Semaphore> {
    static SLOTS: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    SLOTS
        .get_or_init(|| Arc::new(Semaphore::new(SERVER_CALLS_IN_FLIGHT)))
        .clone()
}

/// Serves a stream of call batches: every call runs in its own task through `handle`, and
/// results go back, batched as they are ready, named by their call's id. The stream ends once
/// the caller has stopped sending and every call has been answered.
pub fn serve_stream<Q, R, H, Fut>(mut incoming: Streaming<Q>, handle: H) -> Inbound<R>
where
    Q: Batch,
    R: Batch,
    R::Item: Answer,
    H: Fn(Q::Item) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R::Item> + Send + 'static,
{
    let (results, ready) = mpsc::unbounded_channel();
    let slots = Arc::new(Semaphore::new(STREAM_CALLS_IN_FLIGHT));
    let shared = server_slots();
    tokio::spawn(async move {
        while let Ok(Some(message)) = incoming.message().await {
            for call in message.into_items() {
                let Ok(own) = slots.clone().acquire_owned().await else {
                    return;
                };
                let id = call.id();
                // Every slot of the process taken: answered at once rather than queued, so
                // that streams that never read cannot make every other caller wait. The
                // answer still holds this stream's own slot until it is read.
                let Ok(shared_slot) = shared.clone().try_acquire_owned() else {
                    let mut refused = R::Item::failed(&server_busy());
                    refused.set_id(id);
                    let _ = results.send((refused, (own, None)));
                    continue;
                };
                let slot = (own, Some(shared_slot));
                let results = results.clone();
                let answer = handle(call);
                tokio::spawn(async move {
                    let mut result = answer.await;
                    result.set_id(id);
                    let _ = results.send((result, slot));
                });
            }
        }
    });
    // Taking a result out of the queue frees its call's slot.
    let answers: Outbound<R, (R::Item, CallSlots)> = Outbound::new(ready, |(item, _slot)| item);
    Box::pin(answers.map(Ok))
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

/// The unary request a call is served as: its own budget when it has one, else the batch's
/// `grpc-timeout`.
fn unary<T>(message: T, timeout_ms: u32, batch_timeout: Option<&AsciiMetadataValue>) -> Request<T> {
    let mut request = Request::new(message);
    if timeout_ms > 0 {
        request.set_timeout(Duration::from_millis(timeout_ms.into()));
    } else if let Some(value) = batch_timeout {
        request.metadata_mut().insert("grpc-timeout", value.clone());
    }
    request
}

/// Runs one call's handler within its own budget (else [`STREAM_CALL_TIMEOUT`]), as tonic
/// cuts a unary call at its `grpc-timeout`. Built from combinators, not an `async fn`: an
/// `async` wrapper keeps both the future it is handed and the one it awaits, which for the
/// services' handlers doubles a future of some kilobytes.
pub fn bounded<T>(
    timeout_ms: u32,
    handler: impl Future<Output = Result<T, Status>>,
) -> impl Future<Output = Result<T, Status>> {
    let budget = match timeout_ms {
        0 => STREAM_CALL_TIMEOUT,
        ms => Duration::from_millis(ms.into()),
    };
    tokio::time::timeout(budget, handler).map(move |outcome| {
        outcome.unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "no answer within {budget:?}"
            )))
        })
    })
}

fn check_count(count: usize) -> Result<(), Status> {
    if count > MAX_CALLS {
        return Err(Status::invalid_argument(format!(
            "a Multi request carries {count} calls, over the limit of {MAX_CALLS}"
        )));
    }
    Ok(())
}

/// One `kv.v1` call, answered by `service`'s unary handler.
async fn kv_call<S: kv::kv_server::Kv>(
    service: &S,
    call: kv::Call,
    batch_timeout: Option<&AsciiMetadataValue>,
) -> kv::CallResult {
    use kv::call::Call;
    use kv::call_result::Result as Outcome;
    let t = call.timeout_ms;
    let outcome = bounded(t, async {
        match call.call {
            Some(Call::Get(r)) => service
                .get(unary(r, t, batch_timeout))
                .await
                .map(|r| Outcome::Get(r.into_inner())),
            Some(Call::Put(r)) => service
                .put(unary(r, t, batch_timeout))
                .await
                .map(|r| Outcome::Put(r.into_inner())),
            Some(Call::Delete(r)) => service
                .delete(unary(r, t, batch_timeout))
                .await
                .map(|r| Outcome::Delete(r.into_inner())),
            None => Err(Status::invalid_argument("a call names no request")),
        }
    })
    .await;
    kv::CallResult {
        result: Some(outcome.unwrap_or_else(|s| Outcome::Error(call_error(&s)))),
        id: call.id,
    }
}

/// One `kv.node.v1` call, answered by `service`'s unary handler.
async fn node_call<S: node::node_server::Node>(
    service: &S,
    call: node::NodeCall,
    batch_timeout: Option<&AsciiMetadataValue>,
) -> node::NodeCallResult {
    use node::node_call::Call;
    use node::node_call_result::Result as Outcome;
    let t = call.timeout_ms;
    let outcome = bounded(t, async {
        match call.call {
            Some(Call::Write(r)) => service
                .write(unary(r, t, batch_timeout))
                .await
                .map(|r| Outcome::Write(r.into_inner())),
            Some(Call::Read(r)) => service
                .read(unary(r, t, batch_timeout))
                .await
                .map(|r| Outcome::Read(r.into_inner())),
            None => Err(Status::invalid_argument("a call names no request")),
        }
    })
    .await;
    node::NodeCallResult {
        result: Some(outcome.unwrap_or_else(|s| Outcome::Error(call_error(&s)))),
        id: call.id,
    }
}

/// Serves a unary `Multi` request: every call through `handle` (given the batch's
/// `grpc-timeout` for calls without a budget of their own), all concurrently, answered together.
async fn serve_batch<Q, R, H, Fut>(request: Request<Q>, handle: H) -> Result<R, Status>
where
    Q: Batch,
    R: Batch,
    R::Item: Answer,
    H: Fn(Q::Item, Option<AsciiMetadataValue>) -> Fut,
    Fut: Future<Output = R::Item>,
{
    let batch_timeout = request.metadata().get("grpc-timeout").cloned();
    let calls = request.into_inner().into_items();
    check_count(calls.len())?;
    // The batch's calls count against the same process-wide bound as streamed ones.
    let _slots = server_slots()
        .try_acquire_many_owned(calls.len() as u32)
        .map_err(|_| server_busy())?;
    let results = futures::future::join_all(
        calls
            .into_iter()
            .map(|call| handle(call, batch_timeout.clone())),
    )
    .await;
    Ok(R::from_items(bound_reply(results)))
}

/// Serves a `kv.v1.Kv/Multi` request with `service`'s own Get, Put and Delete handlers.
pub async fn serve_kv<S: kv::kv_server::Kv>(
    service: &S,
    request: Request<kv::MultiRequest>,
) -> Result<kv::MultiResponse, Status> {
    serve_batch(request, |call, timeout| async move {
        kv_call(service, call, timeout.as_ref()).await
    })
    .await
}

/// Serves a `kv.node.v1.Node/Multi` request with `service`'s own Write and Read handlers.
pub async fn serve_node<S: node::node_server::Node>(
    service: &S,
    request: Request<node::NodeMultiRequest>,
) -> Result<node::NodeMultiResponse, Status> {
    serve_batch(request, |call, timeout| async move {
        node_call(service, call, timeout.as_ref()).await
    })
    .await
}

/// Serves `kv.v1.Kv/MultiStream` with `service`'s own unary handlers (see [`serve_stream`]),
/// for a service with nothing faster to offer per call.
pub fn serve_kv_stream<S: kv::kv_server::Kv + Clone>(
    service: S,
    request: Request<Streaming<kv::MultiRequest>>,
) -> Inbound<kv::MultiResponse> {
    serve_stream(request.into_inner(), move |call| {
        let service = service.clone();
        async move { kv_call(&service, call, None).await }
    })
}

/// Serves `kv.node.v1.Node/MultiStream` with `service`'s own unary handlers (see
/// [`serve_stream`]), for a service with nothing faster to offer per call.
pub fn serve_node_stream<S: node::node_server::Node + Clone>(
    service: S,
    request: Request<Streaming<node::NodeMultiRequest>>,
) -> Inbound<node::NodeMultiResponse> {
    serve_stream(request.into_inner(), move |call| {
        let service = service.clone();
        async move { node_call(&service, call, None).await }
    })
}

/// A call's budget as carried in the batch: whole milliseconds, at least one.
pub fn timeout_ms(budget: Duration) -> u32 {
    u32::try_from(budget.as_millis()).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unary_reply_past_its_byte_bound_fails_the_calls_that_do_not_fit() {
        let mib = 1024 * 1024;
        let answer = |id: u64, bytes: usize| kv::CallResult {
            result: Some(kv::call_result::Result::Get(kv::GetResponse {
                value: vec![7u8; bytes].into(),
                found: true,
                ..Default::default()
            })),
            id,
        };
        let results = bound_reply(vec![
            answer(1, 10 * mib),
            answer(2, 10 * mib),
            answer(3, 10 * mib),
            answer(4, 10 * mib),
            answer(5, 10),
        ]);
        let codes: Vec<Option<String>> = results
            .iter()
            .map(|r| match &r.result {
                Some(kv::call_result::Result::Error(e)) => {
                    e.metadata.get(crate::meta::ERROR_CODE).cloned()
                }
                _ => None,
            })
            .collect();
        let too_large = Some(crate::codes::RESPONSE_TOO_LARGE.to_string());
        assert_eq!(codes, vec![None, None, None, too_large, None]);
        assert_eq!(
            results.iter().map(|r| r.id).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        let total: usize = results.iter().map(prost::Message::encoded_len).sum();
        assert!(total <= UNARY_REPLY_BYTES, "{total}");
    }

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

    use crate::kv::call_result::Result as Outcome;

    /// An in-memory peer: answers each Get call with its key as the value after `delay_ms` of
    /// the key's first byte, fails the stream on a key "boom", and counts messages and opens.
    fn peer(
        opens: Arc<AtomicU64>,
        messages: Arc<AtomicU64>,
    ) -> Mux<kv::MultiRequest, kv::MultiResponse> {
        Mux::new(move |mut outbound: Outbound<kv::MultiRequest>| {
            opens.fetch_add(1, Ordering::SeqCst);
            let messages = messages.clone();
            async move {
                let (tx, rx) = mpsc::unbounded_channel::<Result<kv::MultiResponse, Status>>();
                tokio::spawn(async move {
                    while let Some(message) = outbound.next().await {
                        messages.fetch_add(1, Ordering::SeqCst);
                        for call in message.calls {
                            let Some(kv::call::Call::Get(get)) = call.call else {
                                continue;
                            };
                            if get.key.as_ref() == b"boom" {
                                let _ = tx.send(Err(Status::unavailable("connection reset")));
                                return;
                            }
                            let tx = tx.clone();
                            tokio::spawn(async move {
                                let delay = u64::from(get.key[0] - b'0') * 20;
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                                let _ = tx.send(Ok(kv::MultiResponse {
                                    results: vec![kv::CallResult {
                                        id: call.id,
                                        result: Some(Outcome::Get(kv::GetResponse {
                                            value: get.key.clone(),
                                            ..Default::default()
                                        })),
                                    }],
                                }));
                            });
                        }
                    }
                });
                let inbound: Inbound<kv::MultiResponse> =
                    Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
                Ok(inbound)
            }
        })
    }

    fn get(key: &str) -> kv::Call {
        kv::Call {
            call: Some(kv::call::Call::Get(kv::GetRequest {
                key: bytes::Bytes::copy_from_slice(key.as_bytes()),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn value(result: kv::CallResult) -> String {
        match result.result {
            Some(Outcome::Get(g)) => String::from_utf8(g.value.to_vec()).unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn concurrent_calls_share_messages_and_a_slow_one_holds_up_no_other() {
        let (opens, messages) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mux = Arc::new(peer(opens.clone(), messages.clone()));
        let slow = {
            let mux = mux.clone();
            tokio::spawn(async move { mux.call(get("9-slow")).await })
        };
        let fast: Vec<_> = (0..100)
            .map(|i| {
                let mux = mux.clone();
                tokio::spawn(async move { (i, mux.call(get(&format!("0-{i}"))).await) })
            })
            .collect();
        for call in fast {
            let (i, result) = call.await.unwrap();
            assert_eq!(value(result.unwrap()), format!("0-{i}"));
        }
        assert!(
            !slow.is_finished(),
            "the fast calls waited for the slow one"
        );
        assert_eq!(value(slow.await.unwrap().unwrap()), "9-slow");
        assert_eq!(opens.load(Ordering::SeqCst), 1);
        let sent = messages.load(Ordering::SeqCst);
        assert!(sent < 50, "101 concurrent calls took {sent} messages");
    }

    #[tokio::test]
    async fn messages_are_cut_before_their_values_pass_the_byte_bound() {
        use prost::Message;
        let (queue, queued) = mpsc::unbounded_channel();
        // 100 answers of 1 MiB: 100 MiB, past the 64 MiB a message may carry; then small
        // ones, which still share messages.
        let big = bytes::Bytes::from(vec![b'v'; 1024 * 1024]);
        for id in 0..110u64 {
            let value = if id < 100 {
                big.clone()
            } else {
                bytes::Bytes::from_static(b"small")
            };
            queue
                .send(kv::CallResult {
                    id,
                    result: Some(Outcome::Get(kv::GetResponse {
                        value,
                        ..Default::default()
                    })),
                })
                .unwrap();
        }
        drop(queue);
        let outbound: Outbound<kv::MultiResponse> = Outbound::new(queued, std::convert::identity);
        let messages: Vec<kv::MultiResponse> = outbound.collect().await;
        for m in &messages {
            assert!(
                m.encoded_len() <= MESSAGE_BYTES || m.results.len() == 1,
                "a message of {} results is {} bytes",
                m.results.len(),
                m.encoded_len()
            );
        }
        let ids: Vec<u64> = messages
            .iter()
            .flat_map(|m| m.results.iter().map(|r| r.id))
            .collect();
        assert_eq!(
            ids,
            (0..110).collect::<Vec<_>>(),
            "every item once, in order"
        );
        assert!(
            messages.len() < 40,
            "110 items took {} messages",
            messages.len()
        );
        // Items larger than the bound still go, one per message.
        let (queue, queued) = mpsc::unbounded_channel();
        for id in 0..2u64 {
            queue
                .send(kv::CallResult {
                    id,
                    result: Some(Outcome::Get(kv::GetResponse {
                        value: bytes::Bytes::from(vec![b'x'; MESSAGE_BYTES + 1]),
                        ..Default::default()
                    })),
                })
                .unwrap();
        }
        drop(queue);
        let outbound: Outbound<kv::MultiResponse> = Outbound::new(queued, std::convert::identity);
        let sizes: Vec<usize> = outbound.map(|m| m.results.len()).collect().await;
        assert_eq!(sizes, vec![1, 1]);
    }

    #[tokio::test]
    async fn a_broken_stream_fails_its_waiting_calls_and_the_next_call_reopens() {
        let (opens, messages) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mux = Arc::new(peer(opens.clone(), messages));
        let waiting = {
            let mux = mux.clone();
            tokio::spawn(async move { mux.call(get("5-waits")).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let err = mux.call(get("boom")).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(
            waiting.await.unwrap().unwrap_err().code(),
            Code::Unavailable
        );
        assert_eq!(value(mux.call(get("0-again")).await.unwrap()), "0-again");
        assert_eq!(opens.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_leaves_nothing_behind() {
        let (opens, messages) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mux = peer(opens, messages);
        let gave_up =
            tokio::time::timeout(Duration::from_millis(20), mux.call(get("9-late"))).await;
        assert!(gave_up.is_err());
        let live = mux.live.lock().unwrap().clone().unwrap();
        assert!(live.waiting.callers.lock().unwrap().is_empty());
        // The late result, when it comes, finds nobody and is dropped.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(value(mux.call(get("0-next")).await.unwrap()), "0-next");
    }
}
