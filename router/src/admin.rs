//! The `kv.v1.Admin` gRPC service: thin handlers over the keyspace operations of the
//! [`Router`] (in `keyspaces`) and the user, role and token operations (in `users`),
//! with the same deadline, auth check, counting and error mapping as the `Kv` service.

use std::sync::Arc;
use std::time::Duration;

use kv_proto::kv as pb;
use kv_proto::kv::admin_server::Admin;
use kv_proto::kv::{
    CreateKeyspaceRequest, CreateKeyspaceResponse, DescribeKeyspaceRequest,
    DescribeKeyspaceResponse, DropKeyspaceRequest, DropKeyspaceResponse, GetDirectoryRequest,
    GetDirectoryResponse, ListDirectoryRequest, ListDirectoryResponse, ListKeyspacesRequest,
    ListKeyspacesResponse, LocateRequest, LocateResponse, RemoveDirectoryRequest,
    RemoveDirectoryResponse, SetDirectoryRequest, SetDirectoryResponse,
};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::error::to_status;
use crate::retry::request_budget;

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
            None,
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

    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        handler!(self, CreateUser, request, create_user)
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        handler!(self, DeleteUser, request, delete_user)
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        handler!(self, ListUsers, request, list_users)
    }

    async fn set_user_roles(
        &self,
        request: Request<pb::SetUserRolesRequest>,
    ) -> Result<Response<pb::SetUserRolesResponse>, Status> {
        handler!(self, SetUserRoles, request, set_user_roles)
    }

    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        handler!(self, IssueToken, request, issue_token)
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        handler!(self, RevokeToken, request, revoke_token)
    }

    async fn create_role(
        &self,
        request: Request<pb::CreateRoleRequest>,
    ) -> Result<Response<pb::CreateRoleResponse>, Status> {
        handler!(self, CreateRole, request, create_role)
    }

    async fn delete_role(
        &self,
        request: Request<pb::DeleteRoleRequest>,
    ) -> Result<Response<pb::DeleteRoleResponse>, Status> {
        handler!(self, DeleteRole, request, delete_role)
    }

    async fn list_roles(
        &self,
        request: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesResponse>, Status> {
        handler!(self, ListRoles, request, list_roles)
    }

    async fn grant(
        &self,
        request: Request<pb::GrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        handler!(self, Grant, request, grant)
    }

    async fn revoke_grant(
        &self,
        request: Request<pb::RevokeGrantRequest>,
    ) -> Result<Response<pb::RevokeGrantResponse>, Status> {
        handler!(self, RevokeGrant, request, revoke_grant)
    }

    async fn set_auth_enabled(
        &self,
        request: Request<pb::SetAuthEnabledRequest>,
    ) -> Result<Response<pb::SetAuthEnabledResponse>, Status> {
        handler!(self, SetAuthEnabled, request, set_auth_enabled)
    }

    /// Answers with the caller as authenticated; any accepted credential may ask.
    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let deadline = Instant::now() + request_budget(request.metadata(), self.request_timeout);
        let caller = Caller::of(&request);
        let result = match self
            .router
            .check(&caller, Method::WhoAmI.name(), request.get_ref(), deadline)
            .await
        {
            Ok(identity) => self.router.who_am_i(&identity, deadline).await,
            Err(e) => Err(e),
        };
        self.metrics.record(Method::WhoAmI, result.is_err());
        result.map(Response::new).map_err(to_status)
    }
}
