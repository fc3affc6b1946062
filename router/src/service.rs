//! The `kv.v1.Kv` gRPC service: thin handlers that work out the request's deadline, call the
//! [`Router`], count the outcome and turn errors into statuses (in [`crate::error::to_status`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kv_proto::kv::kv_server::Kv;
use kv_proto::kv::{
    BatchGetRequest, BatchGetResponse, BatchPutRequest, BatchPutResponse, DeleteRequest,
    DeleteResponse, GetRequest, GetResponse, MultiRequest, MultiResponse, PutRequest, PutResponse,
    ScanRequest, ScanResponse,
};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::error::{to_status, RouterError};
use crate::metrics::{Method, Metrics};
use crate::retry::request_budget;
use crate::routing::Router;

/// The public KV service.
#[derive(Debug, Clone)]
pub struct KvService {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    request_timeout: Duration,
}

impl KvService {
    pub fn new(router: Arc<Router>, metrics: Arc<Metrics>, request_timeout: Duration) -> KvService {
        KvService {
            router,
            metrics,
            request_timeout,
        }
    }

    async fn handle<Req, Resp, F, Fut>(
        &self,
        method: Method,
        request: Request<Req>,
        op: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(Arc<Router>, Req, Instant) -> Fut,
        Fut: Future<Output = Result<Resp, RouterError>>,
    {
        handle(
            &self.router,
            &self.metrics,
            self.request_timeout,
            method,
            request,
            op,
        )
        .await
    }
}

/// Runs one request: deadline from the configured timeout and the client's `grpc-timeout`,
/// the routing call, the counters, the error mapping. Shared by the `Kv` and `Admin` services.
pub(crate) async fn handle<Req, Resp, F, Fut>(
    router: &Arc<Router>,
    metrics: &Metrics,
    request_timeout: Duration,
    method: Method,
    request: Request<Req>,
    op: F,
) -> Result<Response<Resp>, Status>
where
    F: FnOnce(Arc<Router>, Req, Instant) -> Fut,
    Fut: Future<Output = Result<Resp, RouterError>>,
{
    let deadline = Instant::now() + request_budget(request.metadata(), request_timeout);
    let result = op(router.clone(), request.into_inner(), deadline).await;
    metrics.record(method, result.is_err());
    match result {
        Ok(response) => Ok(Response::new(response)),
        Err(err) => {
            tracing::debug!(method = method.name(), error = %err, "request failed");
            Err(to_status(err))
        }
    }
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
        kv_proto::multi::serve_kv(self, request)
            .await
            .map(Response::new)
    }

    type MultiStreamStream = kv_proto::multi::Inbound<MultiResponse>;

    async fn multi_stream(
        &self,
        request: Request<tonic::Streaming<MultiRequest>>,
    ) -> Result<Response<Self::MultiStreamStream>, Status> {
        Ok(Response::new(kv_proto::multi::serve_kv_stream(
            self.clone(),
            request,
        )))
    }
}
