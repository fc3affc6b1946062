//! User, role, grant and token administration (`kvctl user|role|grant|revoke`).
//!
//! Every change needs a caller with an admin role once authentication is on; the router
//! answers others with [`Error::PermissionDenied`]. Token texts come back exactly once, from
//! [`Client::create_user`] and [`Client::issue_token`]: the cluster keeps only their hashes.

use bytes::Bytes;
use kv_proto::kv;

use crate::{Client, Error};

/// A token as listed: its id and times, never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Names the token in lists and in `kvctl user revoke`.
    pub id: String,
    /// When it was issued, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// When it stops working; `None`: never.
    pub expires_at_ms: Option<u64>,
}

impl From<kv::TokenInfo> for TokenInfo {
    fn from(t: kv::TokenInfo) -> Self {
        TokenInfo {
            id: t.id,
            created_ms: t.created_ms,
            expires_at_ms: (t.expires_at_ms > 0).then_some(t.expires_at_ms),
        }
    }
}

/// A user with its roles and tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub roles: Vec<String>,
    pub tokens: Vec<TokenInfo>,
}

impl From<kv::UserInfo> for UserInfo {
    fn from(u: kv::UserInfo) -> Self {
        UserInfo {
            name: u.name,
            roles: u.roles,
            tokens: u.tokens.into_iter().map(TokenInfo::from).collect(),
        }
    }
}

/// Read or read-write access to the keys of a keyspace under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Empty means the default keyspace.
    pub keyspace: String,
    /// Empty: the whole keyspace.
    pub prefix: Bytes,
    /// `read` or `read-write`.
    pub access: String,
}

impl From<kv::Grant> for Grant {
    fn from(g: kv::Grant) -> Self {
        Grant {
            keyspace: g.keyspace,
            prefix: g.prefix,
            access: g.access,
        }
    }
}

/// A role: admin, and grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleInfo {
    pub name: String,
    pub admin: bool,
    pub grants: Vec<Grant>,
}

impl From<kv::RoleInfo> for RoleInfo {
    fn from(r: kv::RoleInfo) -> Self {
        RoleInfo {
            name: r.name,
            admin: r.admin,
            grants: r.grants.into_iter().map(Grant::from).collect(),
        }
    }
}

/// A newly issued token: its text (shown once) and how it is listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// `kvt_<id>_<secret>`: hand it to its user; it cannot be read back.
    pub token: String,
    pub info: TokenInfo,
}

/// Who the router takes the caller to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhoAmI {
    /// `anonymous` when authentication is off.
    pub user: String,
    pub auth_enabled: bool,
    pub roles: Vec<String>,
    pub admin: bool,
}

fn missing(what: &str) -> Error {
    Error::Server {
        status: tonic::Code::Internal,
        code: None,
        message: format!("the router answered without {what}"),
    }
}

/// Users, roles, grants and tokens. Errors worth branching on (use [`Error::code`]):
///
/// | failure | variant | code |
/// | --- | --- | --- |
/// | no, bad, expired or revoked token | [`Error::Unauthenticated`] | `UNAUTHENTICATED` |
/// | the caller has no admin role | [`Error::PermissionDenied`] | `PERMISSION_DENIED` |
/// | unknown user or role, a name taken, a table full | [`Error::InvalidArgument`] | `INVALID_MAP_CHANGE` |
impl Client {
    /// Creates a user holding `roles`; with `token`, also issues its first token (expiring
    /// after `token_ttl_ms` when non-zero) and returns it.
    pub async fn create_user(
        &self,
        name: &str,
        roles: &[String],
        token: bool,
        token_ttl_ms: u64,
    ) -> Result<(UserInfo, Option<String>), Error> {
        let req = kv::CreateUserRequest {
            name: name.to_owned(),
            roles: roles.to_vec(),
            with_token: token,
            token_ttl_ms,
        };
        let resp = self
            .admin_call(req, |mut c, r| async move { c.create_user(r).await })
            .await?;
        let user = resp
            .user
            .map(UserInfo::from)
            .ok_or_else(|| missing("the user"))?;
        Ok((user, (!resp.token.is_empty()).then_some(resp.token)))
    }

    /// Deletes a user and its tokens; returns the new map epoch.
    pub async fn delete_user(&self, name: &str) -> Result<u64, Error> {
        let req = kv::DeleteUserRequest {
            name: name.to_owned(),
        };
        let resp = self
            .admin_call(req, |mut c, r| async move { c.delete_user(r).await })
            .await?;
        Ok(resp.epoch)
    }

    /// Every user, and whether authentication is on.
    pub async fn list_users(&self) -> Result<(Vec<UserInfo>, bool), Error> {
        let resp = self
            .admin_call(kv::ListUsersRequest {}, |mut c, r| async move {
                c.list_users(r).await
            })
            .await?;
        Ok((
            resp.users.into_iter().map(UserInfo::from).collect(),
            resp.auth_enabled,
        ))
    }

    /// Replaces a user's roles.
    pub async fn set_user_roles(&self, name: &str, roles: &[String]) -> Result<UserInfo, Error> {
        let req = kv::SetUserRolesRequest {
            name: name.to_owned(),
            roles: roles.to_vec(),
        };
        let resp = self
            .admin_call(req, |mut c, r| async move { c.set_user_roles(r).await })
            .await?;
        resp.user
            .map(UserInfo::from)
            .ok_or_else(|| missing("the user"))
    }

    /// Issues a new token to `user` (expiring after `ttl_ms` when non-zero).
    pub async fn issue_token(&self, user: &str, ttl_ms: u64) -> Result<IssuedToken, Error> {
        let req = kv::IssueTokenRequest {
            user: user.to_owned(),
            ttl_ms,
        };
        let resp = self
            .admin_call(req, |mut c, r| async move { c.issue_token(r).await })
            .await?;
        Ok(IssuedToken {
            token: resp.token,
            info: resp
                .info
                .map(TokenInfo::from)
                .ok_or_else(|| missing("the token"))?,
        })
    }

    /// Revokes a token, given by its id or its whole text; it stops working on every router
    /// as soon as each has the new map.
    pub async fn revoke_token(&self, id: &str) -> Result<u64, Error> {
        let req = kv::RevokeTokenRequest { id: id.to_owned() };
        let resp = self
            .admin_call(req, |mut c, r| async move { c.revoke_token(r).await })
            .await?;
        Ok(resp.epoch)
    }

    /// Creates a role; `admin` roles may do everything.
    pub async fn create_role(&self, name: &str, admin: bool) -> Result<RoleInfo, Error> {
        let req = kv::CreateRoleRequest {
            name: name.to_owned(),
            admin,
        };
        let resp = self
            .admin_call(req, |mut c, r| async move { c.create_role(r).await })
            .await?;
        resp.role
            .map(RoleInfo::from)
            .ok_or_else(|| missing("the role"))
    }

    /// Deletes a role no user holds.
    pub async fn delete_role(&self, name: &str) -> Result<u64, Error> {
        let req = kv::DeleteRoleRequest {
            name: name.to_owned(),
        };
        let resp = self
            .admin_call(req, |mut c, r| async move { c.delete_role(r).await })
            .await?;
        Ok(resp.epoch)
    }

    /// Every role.
    pub async fn list_roles(&self) -> Result<Vec<RoleInfo>, Error> {
        let resp = self
            .admin_call(kv::ListRolesRequest {}, |mut c, r| async move {
                c.list_roles(r).await
            })
            .await?;
        Ok(resp.roles.into_iter().map(RoleInfo::from).collect())
    }

    /// Gives `role` access (`read` or `read-write`) to the keys of `keyspace` under `prefix`
    /// (empty: all of them); replaces its grant on the same keyspace and prefix.
    pub async fn grant(&self, role: &str, grant: &Grant) -> Result<RoleInfo, Error> {
        let req = kv::GrantRequest {
            role: role.to_owned(),
            grant: Some(kv::Grant {
                keyspace: grant.keyspace.clone(),
                prefix: grant.prefix.clone(),
                access: grant.access.clone(),
            }),
        };
        let resp = self
            .admin_call(req, |mut c, r| async move { c.grant(r).await })
            .await?;
        resp.role
            .map(RoleInfo::from)
            .ok_or_else(|| missing("the role"))
    }

    /// Takes `role`'s grant on `keyspace` and `prefix` away.
    pub async fn revoke_grant(
        &self,
        role: &str,
        keyspace: &str,
        prefix: &[u8],
    ) -> Result<RoleInfo, Error> {
        let req = kv::RevokeGrantRequest {
            role: role.to_owned(),
            keyspace: keyspace.to_owned(),
            prefix: Bytes::copy_from_slice(prefix),
        };
        let resp = self
            .admin_call(req, |mut c, r| async move { c.revoke_grant(r).await })
            .await?;
        resp.role
            .map(RoleInfo::from)
            .ok_or_else(|| missing("the role"))
    }

    /// Turns authentication on or off for the whole cluster. Turning it on is refused unless
    /// some user holds an admin role and a token, so that no one is locked out.
    pub async fn set_auth_enabled(&self, enabled: bool) -> Result<u64, Error> {
        let req = kv::SetAuthEnabledRequest { enabled };
        let resp = self
            .admin_call(req, |mut c, r| async move { c.set_auth_enabled(r).await })
            .await?;
        Ok(resp.epoch)
    }

    /// Who the router takes this client to be.
    pub async fn who_am_i(&self) -> Result<WhoAmI, Error> {
        let resp = self
            .admin_call(kv::WhoAmIRequest {}, |mut c, r| async move {
                c.who_am_i(r).await
            })
            .await?;
        Ok(WhoAmI {
            user: resp.user,
            auth_enabled: resp.auth_enabled,
            roles: resp.roles,
            admin: resp.admin,
        })
    }
}
