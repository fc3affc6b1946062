//! The `kv.v1.Kv` gRPC service: thin handlers that work out the request's deadline, check the
//! caller ([`auth`]), call the [`Router`], count the outcome and turn errors into statuses (in
//! [`crate::error::to_status`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use kv_proto::kv::call::Call as Which;
use kv_proto::kv::call_result::Result as Outcome;
use kv_proto::kv::kv_server::Kv;
use kv_proto::kv::{
    BatchGetRequest, BatchGetResponse, BatchPutRequest, BatchPutResponse, Call, CallResult,
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, MultiRequest, MultiResponse,
    PutRequest, PutResponse, ScanRequest, ScanResponse,
};
use kv_proto::multi::{bounded, call_error};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::error::{to_status, RouterError};
use crate::metrics::{Method, Metrics};
use crate::retry::{request_budget, stream_call_budget};
use crate::routing::Router;

use crate::auth::{Authorize, Caller};

/// The public KV service.
#[derive(Debug, Clone)]
pub struct KvService {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    request_timeout: Duration,
    /// The caller of the `Multi` request whose calls this copy answers: those calls reach the
    /// unary handlers without the batch's metadata and connection.
    caller: Option<Arc<Caller>>,
}

impl KvService {
    pub fn new(router: Arc<Router>, metrics: Arc<Metrics>, request_timeout: Duration) -> KvService {
        KvService {
            router,
            metrics,
            request_timeout,
            caller: None,
        }
    }

    async fn handle<Req, Resp, F, Fut>(
        &self,
        method: Method,
        request: Request<Req>,
        op: F,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Authorize,
        F: FnOnce(Arc<Router>, Req, Instant) -> Fut,
        Fut: Future<Output = Result<Resp, RouterError>>,
    {
        handle(
            &self.router,
            &self.metrics,
            self.request_timeout,
            method,
            request,
            self.caller.as_deref(),
            op,
        )
        .await
    }

    /// Answers one call of a `MultiStream` as `kv_proto::multi::serve_kv_stream` does (through
    /// the unary handler, within the call's budget), minus what that costs per call: a unary
    /// request with its metadata map and formatted `grpc-timeout` (parsed right back), and a
    /// boxed future per handler layer.
    ///
    /// Not an `async fn`, and built from combinators: an `async` wrapper keeps both the future
    /// it is handed and the one it awaits, which here would double a future of some kilobytes.
    ///
    /// Every call is checked on its own against the map in use when it arrives, so a token
    /// revoked while the stream is open stops working at once.
    fn stream_call(
        self: Arc<Self>,
        caller: Arc<Caller>,
        call: Call,
    ) -> impl Future<Output = CallResult> + Send {
        let Call {
            call,
            timeout_ms: t,
            id,
        } = call;
        let handler = async move {
            let deadline = Instant::now() + stream_call_budget(t, self.request_timeout);
            let (router, metrics) = (&self.router, &*self.metrics);
            match call {
                Some(Which::Get(r)) => {
                    checked(router, metrics, &caller, Method::Get, r, deadline, |r| {
                        router.get(r, deadline)
                    })
                    .await
                    .map(Outcome::Get)
                }
                Some(Which::Put(r)) => {
                    checked(router, metrics, &caller, Method::Put, r, deadline, |r| {
                        router.put(r, deadline)
                    })
                    .await
                    .map(Outcome::Put)
                }
                Some(Which::Delete(r)) => {
                    checked(router, metrics, &caller, Method::Delete, r, deadline, |r| {
                        router.delete(r, deadline)
                    })
                    .await
                    .map(Outcome::Delete)
                }
                None => Err(Status::invalid_argument("a call names no request")),
            }
        };
        bounded(t, handler).map(move |outcome| CallResult {
            result: Some(outcome.unwrap_or_else(|s| Outcome::Error(call_error(&s)))),
            id,
        })
    }
}

/// Runs one request: deadline from the configured timeout and the client's `grpc-timeout`,
/// the auth check, the routing call, the counters, the error mapping, and for admin changes
/// the audit line. Shared by the `Kv` and `Admin` services. `caller` overrides the request's
/// own credentials (for the calls of a `Multi`).
pub(crate) async fn handle<Req, Resp, F, Fut>(
    router: &Arc<Router>,
    metrics: &Metrics,
    request_timeout: Duration,
    method: Method,
    request: Request<Req>,
    caller: Option<&Caller>,
    op: F,
) -> Result<Response<Resp>, Status>
where
    Req: Authorize,
    F: FnOnce(Arc<Router>, Req, Instant) -> Fut,
    Fut: Future<Output = Result<Resp, RouterError>>,
{
    let deadline = Instant::now() + request_budget(request.metadata(), request_timeout);
    let own;
    let caller = match caller {
        Some(c) => c,
        None => {
            own = Caller::of(&request);
            &own
        }
    };
    let req = request.into_inner();
    let identity = match router.check(caller, method.name(), &req, deadline).await {
        Ok(identity) => identity,
        Err(e) => return finish(metrics, method, Err(e)).map(Response::new),
    };
    let change = req.is_change().then(|| req.target());
    let result = op(router.clone(), req, deadline).await;
    if let Some(target) = change {
        router.audit_change(
            caller,
            &identity,
            method.name(),
            target,
            result.as_ref().err(),
        );
    }
    finish(metrics, method, result).map(Response::new)
}

/// One call of a `MultiStream`: the auth check, then `op`, counted and mapped like a unary
/// request.
async fn checked<R, T, F, Fut>(
    router: &Arc<Router>,
    metrics: &Metrics,
    caller: &Caller,
    method: Method,
    req: R,
    deadline: Instant,
    op: F,
) -> Result<T, Status>
where
    R: Authorize,
    F: FnOnce(R) -> Fut,
    Fut: Future<Output = Result<T, RouterError>>,
{
    let result = match router.check(caller, method.name(), &req, deadline).await {
        Ok(_) => op(req).await,
        Err(e) => Err(e),
    };
    finish(metrics, method, result)
}

/// Counts a request's outcome and turns its error into a status.
fn finish<T>(
    metrics: &Metrics,
    method: Method,
    result: Result<T, RouterError>,
) -> Result<T, Status> {
    metrics.record(method, result.is_err());
    result.map_err(|err| {
        tracing::debug!(method = method.name(), error = %err, "request failed");
        to_status(err)
    })
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        self.handle(Method::Get, request, |r, req, d| async move {
            r.get(req, d).await
        })
        .await
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.handle(Method::Put, request, |r, req, d| async move {
            r.put(req, d).await
        })
        .await
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        self.handle(Method::Delete, request, |r, req, d| async move {
            r.delete(req, d).await
        })
        .await
    }

    async fn scan(&self, request: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        self.handle(Method::Scan, request, |r, req, d| async move {
            r.scan(req, d).await
        })
        .await
    }

    async fn batch_get(
        &self,
        request: Request<BatchGetRequest>,
    ) -> Result<Response<BatchGetResponse>, Status> {
        self.handle(Method::BatchGet, request, |r, req, d| async move {
            r.batch_get(req, d).await
        })
        .await
    }

    async fn batch_put(
        &self,
        request: Request<BatchPutRequest>,
    ) -> Result<Response<BatchPutResponse>, Status> {
        self.handle(Method::BatchPut, request, |r, req, d| async move {
            r.batch_put(req, d).await
        })
        .await
    }

    /// Each call runs through its unary handler above, so it is counted, timed and mapped to a
    /// status exactly as if it had come alone.
    async fn multi(
        &self,
        request: Request<MultiRequest>,
    ) -> Result<Response<MultiResponse>, Status> {
        // The calls reach the unary handlers as new requests: they carry the batch's caller.
        let scoped = KvService {
            caller: Some(Arc::new(Caller::of(&request))),
            ..self.clone()
        };
        kv_proto::multi::serve_kv(&scoped, request)
            .await
            .map(Response::new)
    }

    type MultiStreamStream = kv_proto::multi::Inbound<MultiResponse>;

    /// Each call is answered as by [`Kv::multi`], without the unary request (see
    /// [`KvService::stream_call`]).
    async fn multi_stream(
        &self,
        request: Request<tonic::Streaming<MultiRequest>>,
    ) -> Result<Response<Self::MultiStreamStream>, Status> {
        // One reference count per call rather than a clone of every field.
        let service = Arc::new(self.clone());
        // Read once: the stream's metadata and connection do not change.
        let caller = Arc::new(Caller::of(&request));
        // Boxed: the serving loop spawns a task per call around this future and keeps it
        // twice (see `stream_call`); a box keeps the task, which is moved a few times, small.
        Ok(Response::new(kv_proto::multi::serve_stream(
            request.into_inner(),
            move |call| Box::pin(service.clone().stream_call(caller.clone(), call)),
        )))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::fake_node::FakeCluster;
    use crate::routing::tests::router_for;

    fn call(which: Option<Which>, timeout_ms: u32) -> Call {
        Call {
            call: which,
            timeout_ms,
            id: 7,
        }
    }

    fn put(keyspace: &str, key: &str, value: &str, expected: Option<u64>) -> Which {
        Which::Put(PutRequest {
            keyspace: keyspace.into(),
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            expected_version: expected,
            ..Default::default()
        })
    }

    fn get(keyspace: &str, key: &str) -> Which {
        Which::Get(GetRequest {
            keyspace: keyspace.into(),
            key: Bytes::copy_from_slice(key.as_bytes()),
            ..Default::default()
        })
    }

    /// The unary path is what `kv_proto::multi` serves streamed calls with; the router's own
    /// shortcut must answer every call the same.
    #[tokio::test]
    async fn streamed_calls_are_answered_as_by_the_unary_handlers() {
        let cluster = FakeCluster::start(3, 2).await;
        cluster.set_leader(2);
        let router = Arc::new(router_for(&cluster).await);
        let metrics = Arc::new(Metrics::default());
        let service = Arc::new(KvService::new(router, metrics, Duration::from_secs(5)));
        let unary = |c: Call| {
            let service = service.clone();
            async move {
                let batch = Request::new(MultiRequest { calls: vec![c] });
                let mut answer = kv_proto::multi::serve_kv(&*service, batch).await.unwrap();
                answer.results.remove(0)
            }
        };
        service
            .clone()
            .stream_call(Default::default(), call(Some(put("", "k", "v", None)), 0))
            .await;
        // Calls that change nothing, so that both paths find the same state.
        let calls = [
            call(Some(get("", "k")), 0),
            call(Some(get("", "k")), 3_000),
            call(Some(get("", "absent")), 0),
            call(Some(get("", "")), 0),
            call(Some(get("nope", "k")), 0),
            call(Some(put("", "k", "w", Some(12_345))), 0),
            call(Some(put("", "", "w", None)), 100),
            call(
                Some(Which::Delete(DeleteRequest {
                    key: Bytes::from_static(b"k"),
                    expected_version: Some(12_345),
                    ..Default::default()
                })),
                0,
            ),
            call(None, 0),
        ];
        for c in calls {
            let streamed = service
                .clone()
                .stream_call(Default::default(), c.clone())
                .await;
            assert_eq!(streamed, unary(c.clone()).await, "{c:?}");
        }
        let written = service
            .clone()
            .stream_call(Default::default(), call(Some(put("", "k2", "v", None)), 0))
            .await;
        match written.result {
            Some(Outcome::Put(p)) => assert!(p.version > 0 && p.session.is_some()),
            other => panic!("{other:?}"),
        }
    }
}
