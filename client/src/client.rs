//! [`Client`]: the calls, with timeouts, retries and router rotation.
//!
//! Every call goes through [`Client::call_on`], which owns the time budget, the retry loop and
//! the choice of router, so each public method only builds its request and reads its answer.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, Stream, TryStreamExt};
use kv_proto::kv::call::Call;
use kv_proto::kv::call_result::Result as Outcome;
use kv_proto::kv::{self, admin_client::AdminClient, kv_client::KvClient};
use kv_proto::multi::{self, timeout_ms, Answer, Mux, Outbound};
use kv_proto::MAX_MESSAGE_BYTES;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Code;

use crate::error::from_status;
use crate::options::staleness_ms;
use crate::session::{Session, SessionToken};
use crate::{
    endpoint, retry, ClientOptions, DeleteOutcome, Error, KeyValue, ReadOptions, ScanOptions,
    ScanPage, Versioned, WriteOptions,
};

/// A handle to the cluster, talking to one or more routers.
///
/// Cheap to clone (clones share connections) and usable from many tasks at once.
///
/// Keys and values are taken as `impl Into<Bytes>`: string and byte-string literals,
/// `Vec<u8>`, `String` and [`Bytes`] all work without copying; borrow a non-`'static` slice
/// with `Bytes::copy_from_slice(slice)`.
///
/// Every call has a time budget ([`ClientOptions::timeout`]) that covers its retries. A call
/// that fails with a retryable error ([`Error::is_retryable`]) is retried with exponential
/// backoff, moving to the next router on transport errors and `UNAVAILABLE`. Plain puts and
/// deletes are idempotent, so retrying them is safe; a conditional write retried after an
/// unknown outcome can report [`Error::ConditionFailed`] although its first attempt applied.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    routers: Vec<Router>,
    /// The router calls go to first. An atomic rather than a lock: it is read on every call
    /// and only ever swapped for the next index, and a stale read merely picks a router that
    /// another task just gave up on.
    current: AtomicUsize,
    options: ClientOptions,
    /// `Bearer <token>` from [`ClientOptions::token`], made once.
    bearer: Option<Bearer>,
}

/// The `authorization` metadata value sent on every call.
type Bearer = tonic::metadata::AsciiMetadataValue;

struct Router {
    url: String,
    /// The data service and the admin service, sharing one channel.
    kv: KvClient<Channel>,
    admin: AdminClient<Channel>,
    /// Gets, puts and deletes carried over one shared `MultiStream` call (see
    /// [`ClientOptions::coalesce`]).
    calls: Arc<Calls>,
    /// Cleared when the router answers `MultiStream` with `UNIMPLEMENTED` (it predates it):
    /// calls then go one RPC each.
    multi: Arc<AtomicBool>,
}

type Calls = Mux<kv::MultiRequest, kv::MultiResponse>;

/// What a call needs of the router it goes to; cheap clones of [`Router`]'s handles.
#[derive(Clone)]
struct Handles {
    kv: KvClient<Channel>,
    calls: Arc<Calls>,
    multi: Arc<AtomicBool>,
    bearer: Option<Bearer>,
}

impl Router {
    fn handles(&self, bearer: &Option<Bearer>) -> Handles {
        Handles {
            kv: self.kv.clone(),
            calls: self.calls.clone(),
            multi: self.multi.clone(),
            bearer: bearer.clone(),
        }
    }
}

/// Opens the router's `MultiStream` on the shared channel when the first call needs it. The
/// stream carries the token once, at its start: the router checks every call on it with it.
fn multiplexer(kv: KvClient<Channel>, bearer: Option<Bearer>) -> Calls {
    Mux::new(move |outbound: Outbound<kv::MultiRequest>| {
        let mut kv = kv.clone();
        let mut request = tonic::Request::new(outbound);
        authorize(&mut request, bearer.as_ref());
        multi::opening(async move { kv.multi_stream(request).await })
    })
}

/// Adds the access token, if any, to a request.
fn authorize<T>(request: &mut tonic::Request<T>, bearer: Option<&Bearer>) {
    if let Some(value) = bearer {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
}

/// A request whose `grpc-timeout` tells the server how long we wait, so that it can give up in
/// time too, carrying the access token if there is one.
fn timed<T>(message: T, budget: Duration, bearer: Option<&Bearer>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(budget);
    authorize(&mut request, bearer);
    request
}

/// Runs one Get, Put or Delete on `router`: in a shared `Multi` call when coalescing, else as
/// its own RPC.
async fn one_call(
    router: Handles,
    call: Call,
    budget: Duration,
    coalesce: bool,
) -> Result<Outcome, tonic::Status> {
    if coalesce && router.multi.load(Ordering::Relaxed) {
        let shared = kv::Call {
            call: Some(call.clone()),
            timeout_ms: timeout_ms(budget),
            id: 0,
        };
        match router.calls.call(shared).await {
            Ok(result) => return result.outcome(),
            // The router predates the stream: from now on, one RPC per call.
            Err(s) if s.code() == Code::Unimplemented => {
                router.multi.store(false, Ordering::Relaxed);
            }
            Err(s) => return Err(s),
        }
    }
    let mut kv = router.kv;
    let bearer = router.bearer.as_ref();
    match call {
        Call::Get(r) => kv
            .get(timed(r, budget, bearer))
            .await
            .map(|r| Outcome::Get(r.into_inner())),
        Call::Put(r) => kv
            .put(timed(r, budget, bearer))
            .await
            .map(|r| Outcome::Put(r.into_inner())),
        Call::Delete(r) => kv
            .delete(timed(r, budget, bearer))
            .await
            .map(|r| Outcome::Delete(r.into_inner())),
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field(
                "routers",
                &self
                    .inner
                    .routers
                    .iter()
                    .map(|r| r.url.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("options", &self.inner.options)
            .finish()
    }
}

impl Client {
    /// A client for the given routers with default [`ClientOptions`].
    ///
    /// Endpoints look like `http://127.0.0.1:7400` or `127.0.0.1:7400`. Nothing is dialled
    /// yet: connections open on first use, so this only fails on unusable addresses
    /// ([`Error::InvalidEndpoint`]) or an empty list.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime: each channel starts a background task.
    pub fn connect(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Result<Self, Error> {
        Self::with_options(endpoints, ClientOptions::default())
    }

    /// A client for the given routers with the given options. See [`Client::connect`].
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, as [`Client::connect`].
    pub fn with_options(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
        options: ClientOptions,
    ) -> Result<Self, Error> {
        let bearer = match &options.token {
            Some(token) => Some(
                Bearer::try_from(format!("Bearer {}", token.as_str())).map_err(|_| {
                    Error::invalid("the access token holds characters a header cannot carry")
                })?,
            ),
            None => None,
        };
        let mut routers = Vec::new();
        for raw in endpoints {
            let url = endpoint::normalize(&raw.into())?;
            let channel = endpoint::channel(&url, &options)?;
            let kv = KvClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            let admin = AdminClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            let multi = Arc::new(AtomicBool::new(true));
            let calls = Arc::new(multiplexer(kv.clone(), bearer.clone()));
            routers.push(Router {
                url,
                kv,
                admin,
                calls,
                multi,
            });
        }
        if routers.is_empty() {
            return Err(Error::InvalidEndpoint {
                endpoint: String::new(),
                message: "no router endpoint given".into(),
            });
        }
        Ok(Client {
            inner: Arc::new(Inner {
                routers,
                current: AtomicUsize::new(0),
                options,
                bearer,
            }),
        })
    }

    /// The normalized router addresses, in rotation order.
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        self.inner.routers.iter().map(|r| r.url.as_str())
    }

    /// The options this client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// Reads a key with strong consistency in the default keyspace; `Ok(None)` if it is absent.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Versioned>, Error> {
        self.get_with(key, &ReadOptions::default()).await
    }

    /// Reads a key; `Ok(None)` if it is absent.
    pub async fn get_with(
        &self,
        key: impl Into<Bytes>,
        options: &ReadOptions,
    ) -> Result<Option<Versioned>, Error> {
        self.get_in(key.into(), options, None).await
    }

    /// A [`Session`]: the same calls, carrying a session token so that eventual reads see
    /// at least the writes and reads made through the session before (read-your-writes).
    pub fn session(&self) -> Session {
        Session::new(self.clone(), SessionToken::default())
    }

    /// A [`Session`] that continues from a token saved with [`Session::token`] (possibly by
    /// another process).
    pub fn session_from(&self, token: SessionToken) -> Session {
        Session::new(self.clone(), token)
    }

    pub(crate) async fn get_in(
        &self,
        key: Bytes,
        options: &ReadOptions,
        session: Option<&Session>,
    ) -> Result<Option<Versioned>, Error> {
        let req = kv::GetRequest {
            keyspace: options.keyspace.clone(),
            key,
            consistency: options.consistency.to_proto(),
            session: session.map(Session::to_proto),
            max_staleness_ms: staleness_ms(options.max_staleness),
        };
        let Outcome::Get(resp) = self.call_one(Call::Get(req)).await? else {
            return Err(mismatched("Get"));
        };
        absorb(session, resp.session.as_ref());
        Ok(Versioned::from_proto(resp))
    }

    /// Writes a key with strong consistency in the default keyspace; returns its new version.
    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<u64, Error> {
        self.put_with(key, value, &WriteOptions::default()).await
    }

    /// Writes a key, if `options.if_version` allows; returns its new version.
    pub async fn put_with(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        options: &WriteOptions,
    ) -> Result<u64, Error> {
        self.put_in(key.into(), value.into(), options, None).await
    }

    pub(crate) async fn put_in(
        &self,
        key: Bytes,
        value: Bytes,
        options: &WriteOptions,
        session: Option<&Session>,
    ) -> Result<u64, Error> {
        let req = kv::PutRequest {
            keyspace: options.keyspace.clone(),
            key,
            value,
            consistency: options.consistency.to_proto(),
            expected_version: options.if_version,
            request_id: new_request_id(),
        };
        let Outcome::Put(resp) = self.call_one(Call::Put(req)).await? else {
            return Err(mismatched("Put"));
        };
        absorb(session, resp.session.as_ref());
        Ok(resp.version)
    }

    /// Deletes a key with strong consistency in the default keyspace. Deleting an absent key
    /// succeeds with `existed: false`.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<DeleteOutcome, Error> {
        self.delete_with(key, &WriteOptions::default()).await
    }

    /// Deletes a key, if `options.if_version` allows.
    pub async fn delete_with(
        &self,
        key: impl Into<Bytes>,
        options: &WriteOptions,
    ) -> Result<DeleteOutcome, Error> {
        self.delete_in(key.into(), options, None).await
    }

    pub(crate) async fn delete_in(
        &self,
        key: Bytes,
        options: &WriteOptions,
        session: Option<&Session>,
    ) -> Result<DeleteOutcome, Error> {
        let req = kv::DeleteRequest {
            keyspace: options.keyspace.clone(),
            key,
            consistency: options.consistency.to_proto(),
            expected_version: options.if_version,
            request_id: new_request_id(),
        };
        let Outcome::Delete(resp) = self.call_one(Call::Delete(req)).await? else {
            return Err(mismatched("Delete"));
        };
        absorb(session, resp.session.as_ref());
        Ok(DeleteOutcome {
            existed: resp.existed,
            version: resp.version,
            group_id: resp.group_id,
        })
    }

    /// One page of the keys in `[start, end)`, in key order. An empty `start` means the first
    /// key, an empty `end` no upper bound. When `more` is set, continue with
    /// [`next_start`] of the last key, or use [`Client::scan_all`].
    pub async fn scan(
        &self,
        start: impl Into<Bytes>,
        end: impl Into<Bytes>,
        options: &ScanOptions,
    ) -> Result<ScanPage, Error> {
        self.scan_page(start.into(), end.into(), options.limit, options, None)
            .await
    }

    /// All keys in `[start, end)` (at most `options.limit` when it is not 0), paging through
    /// the server's pages, collected. For large ranges prefer [`Client::scan_stream`], which
    /// holds one page at a time.
    ///
    /// Each page is a separate call with its own time budget, and pages are not one snapshot:
    /// a write between two pages may or may not be seen.
    pub async fn scan_all(
        &self,
        start: impl Into<Bytes>,
        end: impl Into<Bytes>,
        options: &ScanOptions,
    ) -> Result<Vec<KeyValue>, Error> {
        self.scan_pages(start.into(), end.into(), options, None)
            .try_collect()
            .await
    }

    /// The keys in `[start, end)` (at most `options.limit` when it is not 0) as a stream that
    /// asks for the next page only when the last one has been consumed, so memory stays at
    /// one page (at most [`kv_proto::MAX_SCAN_BYTES`]) however large the range. Pages are not
    /// one snapshot, as for [`Client::scan_all`]; an error ends the stream.
    pub fn scan_stream<'a>(
        &'a self,
        start: impl Into<Bytes>,
        end: impl Into<Bytes>,
        options: &'a ScanOptions,
    ) -> impl Stream<Item = Result<KeyValue, Error>> + 'a {
        self.scan_pages(start.into(), end.into(), options, None)
    }

    pub(crate) fn scan_pages<'a>(
        &'a self,
        start: Bytes,
        end: Bytes,
        options: &'a ScanOptions,
        session: Option<&'a Session>,
    ) -> impl Stream<Item = Result<KeyValue, Error>> + 'a {
        let limit = options.limit as usize;
        // The state: where the next page starts and how many keys came before it; `None` once
        // the range, the limit or the server's pages are exhausted.
        let first = Some((start, 0usize));
        stream::try_unfold(first, move |state| {
            let end = end.clone();
            async move {
                let Some((start, seen)) = state else {
                    return Ok(None);
                };
                let want = if limit == 0 {
                    0
                } else {
                    u32::try_from(limit - seen).unwrap_or(u32::MAX)
                };
                let page = self
                    .scan_page(start, end.clone(), want, options, session)
                    .await?;
                let mut kvs = page.kvs;
                let Some(last) = kvs.last() else {
                    // An empty page cannot advance, whatever `more` says.
                    return Ok(None);
                };
                let next = next_start(&last.key);
                if limit != 0 {
                    kvs.truncate(limit - seen);
                }
                let seen = seen + kvs.len();
                let reached_limit = limit != 0 && seen >= limit;
                let reached_end = !end.is_empty() && next >= end;
                let done = !page.more || reached_limit || reached_end;
                Ok(Some((kvs, (!done).then_some((next, seen)))))
            }
        })
        .map_ok(|kvs| stream::iter(kvs.into_iter().map(Ok)))
        .try_flatten()
    }

    pub(crate) async fn scan_page(
        &self,
        start: Bytes,
        end: Bytes,
        limit: u32,
        options: &ScanOptions,
        session: Option<&Session>,
    ) -> Result<ScanPage, Error> {
        let req = kv::ScanRequest {
            keyspace: options.keyspace.clone(),
            start,
            end,
            limit,
            consistency: options.consistency.to_proto(),
            keys_only: options.keys_only,
            session: session.map(Session::to_proto),
            max_staleness_ms: staleness_ms(options.max_staleness),
        };
        let resp = self
            .call(req, |mut c, r| async move { c.scan(r).await })
            .await?;
        absorb(session, resp.session.as_ref());
        Ok(ScanPage {
            kvs: resp.kvs.into_iter().map(KeyValue::from).collect(),
            more: resp.more,
        })
    }

    /// Reads many keys at once; one entry per key, in the order given (`None`: absent).
    /// The router splits the batch per shard group and reads the groups in parallel.
    pub async fn batch_get(
        &self,
        keys: impl IntoIterator<Item = impl Into<Bytes>>,
        options: &ReadOptions,
    ) -> Result<Vec<Option<Versioned>>, Error> {
        let keys = keys.into_iter().map(Into::into).collect();
        self.batch_get_in(keys, options, None).await
    }

    pub(crate) async fn batch_get_in(
        &self,
        keys: Vec<Bytes>,
        options: &ReadOptions,
        session: Option<&Session>,
    ) -> Result<Vec<Option<Versioned>>, Error> {
        let req = kv::BatchGetRequest {
            keyspace: options.keyspace.clone(),
            keys,
            consistency: options.consistency.to_proto(),
            session: session.map(Session::to_proto),
            max_staleness_ms: staleness_ms(options.max_staleness),
        };
        let wanted = req.keys.len();
        let resp = self
            .call(req, |mut c, r| async move { c.batch_get(r).await })
            .await?;
        absorb(session, resp.session.as_ref());
        if resp.results.len() != wanted {
            return Err(Error::Server {
                status: tonic::Code::Internal,
                code: None,
                message: format!(
                    "batch get asked for {wanted} keys but got {} results",
                    resp.results.len()
                ),
            });
        }
        Ok(resp
            .results
            .into_iter()
            .map(Versioned::from_proto)
            .collect())
    }

    /// Writes many keys at once; returns each entry's new version, in the order given.
    ///
    /// The batch is not atomic across shard groups: on an error some entries may have been
    /// written. `options.if_version` is not supported here and is refused.
    pub async fn batch_put(
        &self,
        kvs: impl IntoIterator<Item = (impl Into<Bytes>, impl Into<Bytes>)>,
        options: &WriteOptions,
    ) -> Result<Vec<u64>, Error> {
        let kvs = kvs
            .into_iter()
            .map(|(key, value)| (key.into(), value.into()))
            .collect();
        self.batch_put_in(kvs, options, None).await
    }

    pub(crate) async fn batch_put_in(
        &self,
        kvs: Vec<(Bytes, Bytes)>,
        options: &WriteOptions,
        session: Option<&Session>,
    ) -> Result<Vec<u64>, Error> {
        if options.if_version.is_some() {
            return Err(Error::invalid("batch_put does not support if_version"));
        }
        let req = kv::BatchPutRequest {
            request_id: new_request_id(),
            keyspace: options.keyspace.clone(),
            kvs: kvs
                .into_iter()
                .map(|(key, value)| kv::KeyValue {
                    key,
                    value,
                    version: 0,
                })
                .collect(),
            consistency: options.consistency.to_proto(),
        };
        let resp = self
            .call(req, |mut c, r| async move { c.batch_put(r).await })
            .await?;
        absorb(session, resp.session.as_ref());
        Ok(resp.versions)
    }

    /// Runs one RPC of the `Kv` service; see [`Client::call_on`].
    async fn call<Req, Resp, F, Fut>(&self, req: Req, mut rpc: F) -> Result<Resp, Error>
    where
        Req: Clone,
        F: FnMut(KvClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.call_on(
            |r| r.kv.clone(),
            req,
            |c, r, budget| rpc(c, timed(r, budget, self.inner.bearer.as_ref())),
        )
        .await
    }

    /// Runs one Get, Put or Delete; see [`Client::call_on`] and [`ClientOptions::coalesce`].
    async fn call_one(&self, call: Call) -> Result<Outcome, Error> {
        let coalesce = self.inner.options.coalesce;
        let bearer = &self.inner.bearer;
        self.call_on(
            |r| r.handles(bearer),
            call,
            |router, call, budget| async move {
                one_call(router, call, budget, coalesce)
                    .await
                    .map(tonic::Response::new)
            },
        )
        .await
    }

    /// Runs one RPC of the `Admin` service; see [`Client::call_on`]. Admin calls retry exactly
    /// what data calls retry: never `INVALID_ARGUMENT`, `ALREADY_EXISTS` or
    /// `FAILED_PRECONDITION`.
    pub(crate) async fn admin_call<Req, Resp, F, Fut>(
        &self,
        req: Req,
        mut rpc: F,
    ) -> Result<Resp, Error>
    where
        Req: Clone,
        F: FnMut(AdminClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.call_on(
            |r| r.admin.clone(),
            req,
            |c, r, budget| rpc(c, timed(r, budget, self.inner.bearer.as_ref())),
        )
        .await
    }

    /// Runs one RPC within the call's time budget, retrying retryable failures
    /// ([`Error::is_retryable`]) with backoff and moving to the next router after transport
    /// errors and `UNAVAILABLE`. `service` picks the generated client of a router.
    async fn call_on<C, Req, Resp, F, Fut>(
        &self,
        service: impl Fn(&Router) -> C,
        req: Req,
        mut rpc: F,
    ) -> Result<Resp, Error>
    where
        Req: Clone,
        F: FnMut(C, Req, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let options = &self.inner.options;
        let deadline = Instant::now() + options.timeout;
        let mut retry = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Timeout);
            }
            let index = self.inner.current.load(Ordering::Relaxed) % self.inner.routers.len();
            let router = &self.inner.routers[index];
            // `rpc` tells the router how long we wait (`grpc-timeout`, or the call's budget in
            // a `Multi`); the local timeout covers a router that never answers at all.
            let outcome =
                tokio::time::timeout(remaining, rpc(service(router), req.clone(), remaining)).await;
            let err = match outcome {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(status)) => from_status(&status),
                Err(_elapsed) => Error::Timeout,
            };
            tracing::debug!(router = %router.url, retry, error = %err, "call failed");
            if !err.is_retryable() || retry >= options.max_retries {
                return Err(err);
            }
            if matches!(err, Error::Transport(_) | Error::Unavailable { .. }) {
                self.rotate_from(index);
            }
            let wait = retry::backoff(options, retry);
            if Instant::now() + wait >= deadline {
                // No time left for another attempt: the last error says more than "timeout".
                return Err(err);
            }
            tokio::time::sleep(wait).await;
            retry += 1;
        }
    }

    /// Moves to the router after `index`, unless another task has already moved on.
    fn rotate_from(&self, index: usize) {
        let count = self.inner.routers.len();
        if count > 1 {
            let _ = self.inner.current.compare_exchange(
                index,
                (index + 1) % count,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

/// The router answered a call with a result of another kind: a broken router, not retried.
fn mismatched(method: &str) -> Error {
    Error::Server {
        status: Code::Internal,
        code: None,
        message: format!("the router answered a {method} with a result of another kind"),
    }
}

/// Merges a response's token into the session, if the call was made through one.
fn absorb(session: Option<&Session>, token: Option<&kv::SessionToken>) {
    if let (Some(session), Some(token)) = (session, token) {
        session.absorb(token);
    }
}

/// The smallest key after `key`: `key` followed by a zero byte. Where the next scan page
/// starts.
pub fn next_start(key: &[u8]) -> Bytes {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next.into()
}

/// A fresh id for one logical write. Every retry of the call sends the same request (and so the
/// same id), which lets the shard group apply the write at most once: without it, a retry after
/// an unknown outcome could apply a put a second time, after other writes, and bring an old value
/// back.
fn new_request_id() -> Bytes {
    Bytes::from(rand::random::<[u8; 16]>().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn next_start_appends_zero() {
        assert_eq!(&next_start(b"a")[..], b"a\0");
        assert_eq!(&next_start(b"")[..], b"\0");
        assert!(next_start(b"a").as_ref() > b"a".as_ref());
        assert!(next_start(b"a").as_ref() < b"a\0\0".as_ref());
    }

    #[tokio::test]
    async fn connect_normalizes_and_refuses_empty_lists() {
        let c = Client::connect(["127.0.0.1:1", "http://127.0.0.1:2/"]).unwrap();
        assert_eq!(
            c.endpoints().collect::<Vec<_>>(),
            ["http://127.0.0.1:1", "http://127.0.0.1:2"]
        );
        assert!(matches!(
            Client::connect(Vec::<String>::new()),
            Err(Error::InvalidEndpoint { .. })
        ));
        assert!(matches!(
            Client::connect(["https://x:1"]),
            Err(Error::InvalidEndpoint { .. })
        ));
    }

    #[tokio::test]
    async fn rotation_moves_once_per_failure() {
        let c = Client::connect(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]).unwrap();
        c.rotate_from(0);
        // A second task that failed on router 0 does not skip router 1.
        c.rotate_from(0);
        assert_eq!(c.inner.current.load(Ordering::Relaxed), 1);
        c.rotate_from(1);
        c.rotate_from(2);
        assert_eq!(c.inner.current.load(Ordering::Relaxed), 0);
    }

    fn assert_send_sync<T: Send + Sync + Clone>() {}

    #[test]
    fn client_is_shareable() {
        assert_send_sync::<Client>();
    }

    /// Nothing listens on the port: the call fails as a transport error, after retrying
    /// within its budget, and never hangs.
    #[tokio::test]
    async fn unreachable_router_is_a_transport_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let c = Client::with_options(
            [addr.to_string()],
            ClientOptions {
                timeout: Duration::from_secs(2),
                max_retries: 2,
                initial_backoff: Duration::from_millis(1),
                ..ClientOptions::default()
            },
        )
        .unwrap();
        let started = std::time::Instant::now();
        let err = c.get("a").await.unwrap_err();
        assert!(matches!(err, Error::Transport(_)), "{err:?}");
        assert!(err.is_retryable());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn client_side_checks_fail_fast() {
        let c = Client::connect(["127.0.0.1:1"]).unwrap();
        let err = c
            .batch_put(
                [("a", "1")],
                &WriteOptions {
                    if_version: Some(1),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { code: None, .. }));
    }
}
