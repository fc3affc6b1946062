//! User, role, grant and token administration, behind the `kv.v1.Admin` service.
//!
//! Each change is a [`shardmap::AuthChange`] checked against the cached map and proposed to
//! the meta group like a keyspace change (`Router::change_checked`, with nothing to fence:
//! these changes strand no data). Token secrets are made here, from the operating system's
//! random source, and leave the router only in the response to the call that made them: the
//! map, the meta group's log and every router hold the hash alone.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kv_proto::kv as pb;
use shardmap::auth::{Access, AuthChange, AuthConfig, Grant, Role, TokenEntry, User};
use shardmap::{CompiledMap, MapChange, MapError, Token};
use tokio::time::Instant;

use super::auth::{token_id_of, Identity};
use crate::error::RouterError;
use crate::routing::Router;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn token_info(t: &TokenEntry) -> pb::TokenInfo {
    pb::TokenInfo {
        id: t.id.clone(),
        created_ms: t.created_ms,
        expires_at_ms: t.expires_at_ms.unwrap_or(0),
    }
}

fn user_info(name: &str, u: &User) -> pb::UserInfo {
    pb::UserInfo {
        name: name.to_string(),
        roles: u.roles.clone(),
        tokens: u.tokens.iter().map(token_info).collect(),
    }
}

fn role_info(name: &str, r: &Role) -> pb::RoleInfo {
    pb::RoleInfo {
        name: name.to_string(),
        admin: r.admin,
        grants: r
            .grants
            .iter()
            .map(|g| pb::Grant {
                keyspace: g.keyspace.clone(),
                prefix: g.prefix.clone().into(),
                access: g.access.name().to_string(),
            })
            .collect(),
    }
}

fn missing(what: &str, name: &str) -> RouterError {
    RouterError::Admin(MapError::Invalid(format!("unknown {what} {name:?}")))
}

fn user_of(map: &CompiledMap, name: &str) -> Result<pb::UserInfo, RouterError> {
    map.map
        .auth
        .users
        .get(name)
        .map(|u| user_info(name, u))
        .ok_or_else(|| missing("user", name))
}

fn role_of(map: &CompiledMap, name: &str) -> Result<pb::RoleInfo, RouterError> {
    map.map
        .auth
        .roles
        .get(name)
        .map(|r| role_info(name, r))
        .ok_or_else(|| missing("role", name))
}

/// A token's expiry from a lifetime in milliseconds (0: never).
fn expiry(ttl_ms: u64, now: u64) -> Option<u64> {
    (ttl_ms > 0).then(|| now.saturating_add(ttl_ms))
}

impl Router {
    /// Proposes an auth change; nothing to fence, so only the epoch check guards it.
    async fn change_auth(
        &self,
        change: AuthChange,
        deadline: Instant,
    ) -> Result<Arc<CompiledMap>, RouterError> {
        self.change_checked(&MapChange::Auth(change), deadline, |_| async { Ok(None) })
            .await
    }

    /// The auth section of the map in use.
    async fn auth_section(&self, deadline: Instant) -> Result<(AuthConfig, u64), RouterError> {
        let map = self.maps.wait(deadline).await?;
        Ok((map.map.auth.clone(), map.map.epoch))
    }

    pub async fn create_user(
        &self,
        req: pb::CreateUserRequest,
        deadline: Instant,
    ) -> Result<pb::CreateUserResponse, RouterError> {
        let now = now_ms();
        let token = req
            .with_token
            .then(|| Token::generate(&mut rand::rngs::OsRng));
        let change = AuthChange::CreateUser {
            name: req.name.clone(),
            roles: req.roles,
            token: token
                .as_ref()
                .map(|t| t.entry(now, expiry(req.token_ttl_ms, now))),
        };
        let map = self.change_auth(change, deadline).await?;
        Ok(pb::CreateUserResponse {
            user: Some(user_of(&map, &req.name)?),
            token: token.map(|t| t.reveal()).unwrap_or_default(),
            epoch: map.map.epoch,
        })
    }

    pub async fn delete_user(
        &self,
        req: pb::DeleteUserRequest,
        deadline: Instant,
    ) -> Result<pb::DeleteUserResponse, RouterError> {
        let map = self
            .change_auth(AuthChange::DeleteUser { name: req.name }, deadline)
            .await?;
        Ok(pb::DeleteUserResponse {
            epoch: map.map.epoch,
        })
    }

    pub async fn list_users(
        &self,
        _req: pb::ListUsersRequest,
        deadline: Instant,
    ) -> Result<pb::ListUsersResponse, RouterError> {
        let (auth, epoch) = self.auth_section(deadline).await?;
        Ok(pb::ListUsersResponse {
            users: auth
                .users
                .iter()
                .map(|(name, u)| user_info(name, u))
                .collect(),
            auth_enabled: auth.enabled,
            epoch,
        })
    }

    pub async fn set_user_roles(
        &self,
        req: pb::SetUserRolesRequest,
        deadline: Instant,
    ) -> Result<pb::SetUserRolesResponse, RouterError> {
        let change = AuthChange::SetUserRoles {
            name: req.name.clone(),
            roles: req.roles,
        };
        let map = self.change_auth(change, deadline).await?;
        Ok(pb::SetUserRolesResponse {
            user: Some(user_of(&map, &req.name)?),
            epoch: map.map.epoch,
        })
    }

    pub async fn issue_token(
        &self,
        req: pb::IssueTokenRequest,
        deadline: Instant,
    ) -> Result<pb::IssueTokenResponse, RouterError> {
        let now = now_ms();
        let token = Token::generate(&mut rand::rngs::OsRng);
        let entry = token.entry(now, expiry(req.ttl_ms, now));
        let info = token_info(&entry);
        let change = AuthChange::IssueToken {
            user: req.user,
            token: entry,
        };
        let map = self.change_auth(change, deadline).await?;
        Ok(pb::IssueTokenResponse {
            token: token.reveal(),
            info: Some(info),
            epoch: map.map.epoch,
        })
    }

    pub async fn revoke_token(
        &self,
        req: pb::RevokeTokenRequest,
        deadline: Instant,
    ) -> Result<pb::RevokeTokenResponse, RouterError> {
        let change = AuthChange::RevokeToken {
            id: token_id_of(&req.id),
        };
        let map = self.change_auth(change, deadline).await?;
        Ok(pb::RevokeTokenResponse {
            epoch: map.map.epoch,
        })
    }

    pub async fn create_role(
        &self,
        req: pb::CreateRoleRequest,
        deadline: Instant,
    ) -> Result<pb::CreateRoleResponse, RouterError> {
        let change = AuthChange::CreateRole {
            name: req.name.clone(),
            admin: req.admin,
        };
        let map = self.change_auth(change, deadline).await?;
        Ok(pb::CreateRoleResponse {
            role: Some(role_of(&map, &req.name)?),
            epoch: map.map.epoch,
        })
    }

    pub async fn delete_role(
        &self,
        req: pb::DeleteRoleRequest,
        deadline: Instant,
    ) -> Result<pb::DeleteRoleResponse, RouterError> {
        let map = self
            .change_auth(AuthChange::DeleteRole { name: req.name }, deadline)
            .await?;
        Ok(pb::DeleteRoleResponse {
            epoch: map.map.epoch,
        })
    }

    pub async fn list_roles(
        &self,
        _req: pb::ListRolesRequest,
        deadline: Instant,
    ) -> Result<pb::ListRolesResponse, RouterError> {
        let (auth, epoch) = self.auth_section(deadline).await?;
        Ok(pb::ListRolesResponse {
            roles: auth
                .roles
                .iter()
                .map(|(name, r)| role_info(name, r))
                .collect(),
            epoch,
        })
    }

    pub async fn grant(
        &self,
        req: pb::GrantRequest,
        deadline: Instant,
    ) -> Result<pb::GrantResponse, RouterError> {
        let g = req
            .grant
            .ok_or_else(|| RouterError::Admin(MapError::Invalid("no grant given".into())))?;
        let access: Access = g.access.parse().map_err(RouterError::Admin)?;
        let change = AuthChange::Grant {
            role: req.role.clone(),
            grant: Grant {
                keyspace: g.keyspace,
                prefix: g.prefix.to_vec(),
                access,
            },
        };
        let map = self.change_auth(change, deadline).await?;
        Ok(pb::GrantResponse {
            role: Some(role_of(&map, &req.role)?),
            epoch: map.map.epoch,
        })
    }

    pub async fn revoke_grant(
        &self,
        req: pb::RevokeGrantRequest,
        deadline: Instant,
    ) -> Result<pb::RevokeGrantResponse, RouterError> {
        let change = AuthChange::RevokeGrant {
            role: req.role.clone(),
            keyspace: req.keyspace,
            prefix: req.prefix.to_vec(),
        };
        let map = self.change_auth(change, deadline).await?;
        Ok(pb::RevokeGrantResponse {
            role: Some(role_of(&map, &req.role)?),
            epoch: map.map.epoch,
        })
    }

    pub async fn set_auth_enabled(
        &self,
        req: pb::SetAuthEnabledRequest,
        deadline: Instant,
    ) -> Result<pb::SetAuthEnabledResponse, RouterError> {
        let change = AuthChange::SetEnabled {
            enabled: req.enabled,
        };
        let map = self.change_auth(change, deadline).await?;
        Ok(pb::SetAuthEnabledResponse {
            epoch: map.map.epoch,
        })
    }

    /// The caller as the router sees it.
    pub async fn who_am_i(
        &self,
        identity: &Identity,
        deadline: Instant,
    ) -> Result<pb::WhoAmIResponse, RouterError> {
        let (auth, _) = self.auth_section(deadline).await?;
        let roles = auth
            .users
            .get(identity.name())
            .map(|u| u.roles.clone())
            .unwrap_or_default();
        Ok(pb::WhoAmIResponse {
            user: identity.name().to_string(),
            auth_enabled: auth.enabled,
            admin: match identity {
                Identity::Anyone => true,
                Identity::User(u) => u.permissions.admin,
            },
            roles,
        })
    }
}
