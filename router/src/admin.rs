//! The `kv.v1.Admin` gRPC service: thin handlers over the keyspace operations of the
//! [`Router`] (in `keyspaces`), with the same deadline, counting and error mapping as the `Kv`
//! service.

use std::sync::Arc;
use std::time::Duration;

use kv_proto::kv::admin_server::Admin;
use kv_proto::kv::{
    CreateKeyspaceRequest, CreateKeyspaceResponse, DescribeKeyspaceRequest,
    DescribeKeyspaceResponse, DropKeyspaceRequest, DropKeyspaceResponse, GetDirectoryRequest,
    GetDirectoryResponse, ListDirectoryRequest, ListDirectoryResponse, ListKeyspacesRequest,
    ListKeyspacesResponse, LocateRequest, LocateResponse, RemoveDirectoryRequest,
    RemoveDirectoryResponse, SetDirectoryRequest, SetDirectoryResponse,
};
use tonic::{Request, Response, Status};

use crate::metrics::{Method, Metrics};
use crate::routing::Router;
use crate::service::handle;

/// The public administration service.
#[derive(Debug, Clone)]
pub struct AdminService {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    request_timeout: Duration,
}

impl AdminService {
    pub fn new(
        router: Arc<Router>,
        metrics: Arc<Metrics>,
        request_timeout: Duration,
    ) -> AdminService {
        AdminService {
            router,
            metrics,
            request_timeout,
        }
    }
}

/// One handler: the method's counter name and the router operation it calls.
macro_rules! handler {
    ($self:ident, $method:ident, $request:ident, $op:ident) => {
        handle(
            &$self.router,
            &$self.metrics,
            $self.request_timeout,
            Method::$method,
            $request,
            |r, req, d| async move { r.$op(req, d).await },
        )
        .await
    };
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_keyspace(
        &self,
        request: Request<CreateKeyspaceRequest>,
    ) -> Result<Response<CreateKeyspaceResponse>, Status> {
        handler!(self, CreateKeyspace, request, create_keyspace)
    }

    async fn drop_keyspace(
        &self,
        request: Request<DropKeyspaceRequest>,
    ) -> Result<Response<DropKeyspaceResponse>, Status> {
        handler!(self, DropKeyspace, request, drop_keyspace)
    }

    async fn list_keyspaces(
        &self,
        request: Request<ListKeyspacesRequest>,
    ) -> Result<Response<ListKeyspacesResponse>, Status> {
        handler!(self, ListKeyspaces, request, list_keyspaces)
    }

    async fn describe_keyspace(
        &self,
        request: Request<DescribeKeyspaceRequest>,
    ) -> Result<Response<DescribeKeyspaceResponse>, Status> {
        handler!(self, DescribeKeyspace, request, describe_keyspace)
    }

    async fn set_directory(
        &self,
        request: Request<SetDirectoryRequest>,
    ) -> Result<Response<SetDirectoryResponse>, Status> {
        handler!(self, SetDirectory, request, set_directory)
    }

    async fn get_directory(
        &self,
        request: Request<GetDirectoryRequest>,
    ) -> Result<Response<GetDirectoryResponse>, Status> {
        handler!(self, GetDirectory, request, get_directory)
    }

    async fn list_directory(
        &self,
        request: Request<ListDirectoryRequest>,
    ) -> Result<Response<ListDirectoryResponse>, Status> {
        handler!(self, ListDirectory, request, list_directory)
    }

    async fn remove_directory(
        &self,
        request: Request<RemoveDirectoryRequest>,
    ) -> Result<Response<RemoveDirectoryResponse>, Status> {
        handler!(self, RemoveDirectory, request, remove_directory)
    }

    async fn locate(
        &self,
        request: Request<LocateRequest>,
    ) -> Result<Response<LocateResponse>, Status> {
        handler!(self, Locate, request, locate_keys)
    }
}
