//! Who is calling, and whether they may: the one place every `Kv` and `Admin` request is
//! checked when the cluster map says auth is on.
//!
//! A caller is identified by an `authorization: Bearer kvt_…` header or, failing that, by a
//! client certificate (role `client`, common name = user name) that the TLS acceptor attached
//! as a [`PeerInfo`]. The token is looked up by its id in an [`AuthIndex`] built once per map
//! epoch ([`Gate`]), so a request costs one hash-map lookup and one SHA-256, never a scan.
//!
//! Each request type says what it needs ([`Authorize`]): read or write of keys, read of a scan
//! range, an admin role for a change, or just a known caller. A refusal is
//! [`RouterError::Unauthenticated`] (no, bad, expired or revoked credential) or
//! [`RouterError::PermissionDenied`] (naming the user, the action and the target); both are
//! counted by reason and written to the audit log.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use kv_proto::kv::{
    self as pb, BatchGetRequest, BatchPutRequest, DeleteRequest, GetRequest, PutRequest,
    ScanRequest,
};
use kv_proto::peer::{CertRole, PeerInfo};
use shardmap::auth::{AuthIndex, Authenticated, AuthnError};
use shardmap::{keyspace_name, CompiledMap};
use tokio::time::Instant;

use crate::error::RouterError;
use crate::metrics::DenyReason;
use crate::routing::Router;

use super::audit::{self, AuditRecord};

/// The metadata key of bearer tokens.
pub const AUTHORIZATION: &str = "authorization";

/// What a request offers as proof of who it is, read from its metadata and connection.
#[derive(Debug, Default)]
pub struct Caller {
    /// The `authorization` header's value, as sent.
    pub authorization: Option<String>,
    /// The common name of a verified client certificate with role `client`.
    pub cert_user: Option<String>,
    /// The peer's address, for the audit log.
    pub addr: Option<SocketAddr>,
    /// The identity these credentials were last found to be, under which map epoch and until
    /// when: a call stream's `Caller` serves all its calls, and the identity cannot change
    /// without a new epoch (a revoked token, a changed grant) or the token's expiry, so the
    /// calls after the first skip the token's parse and hash.
    verified: std::sync::Mutex<Option<Verified>>,
}

#[derive(Debug, Clone)]
struct Verified {
    epoch: u64,
    /// Wall-clock ms past which the token is expired (`u64::MAX`: never).
    until_ms: u64,
    identity: Identity,
}

impl Clone for Caller {
    fn clone(&self) -> Caller {
        Caller {
            authorization: self.authorization.clone(),
            cert_user: self.cert_user.clone(),
            addr: self.addr,
            verified: std::sync::Mutex::new(None),
        }
    }
}

impl Caller {
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        let peer = PeerInfo::of(request);
        let cert_user = peer
            .and_then(|p| p.cert.as_ref())
            .filter(|c| c.role == Some(CertRole::Client))
            .map(|c| c.name.clone());
        Caller {
            authorization: request
                .metadata()
                .get(AUTHORIZATION)
                .map(|v| v.to_str().unwrap_or("<not ASCII>").to_string()),
            cert_user,
            addr: peer.and_then(|p| p.addr).or_else(|| request.remote_addr()),
            verified: std::sync::Mutex::new(None),
        }
    }

    fn remembered(&self, epoch: u64, now_ms: u64) -> Option<Identity> {
        let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        verified
            .as_ref()
            .filter(|v| v.epoch == epoch && now_ms < v.until_ms)
            .map(|v| v.identity.clone())
    }

    fn remember(&self, epoch: u64, until_ms: u64, identity: &Identity) {
        *self.verified.lock().unwrap_or_else(|p| p.into_inner()) = Some(Verified {
            epoch,
            until_ms,
            identity: identity.clone(),
        });
    }

    fn peer(&self) -> String {
        self.addr
            .map_or_else(|| "unknown".to_string(), |a| a.to_string())
    }
}

/// Who a request turned out to be from.
#[derive(Debug, Clone)]
pub enum Identity {
    /// Auth is off: everyone may do everything.
    Anyone,
    User(Authenticated),
}

impl Identity {
    pub fn name(&self) -> &str {
        match self {
            Identity::Anyone => "anonymous",
            Identity::User(a) => &a.user,
        }
    }
}

/// What a request needs to be allowed.
#[derive(Debug)]
pub enum Need<'a> {
    /// Reading (`write` false) or writing keys of a keyspace.
    Keys {
        keyspace: &'a str,
        keys: Vec<&'a [u8]>,
        write: bool,
    },
    /// Reading every key of `[start, end)` (`end` empty: unbounded).
    Range {
        keyspace: &'a str,
        start: &'a [u8],
        end: &'a [u8],
    },
    /// An admin role: anything that changes the cluster's shape or its users.
    Admin,
    /// Any accepted credential: listing and describing.
    Known,
}

/// A request type's action name, target and need.
pub trait Authorize {
    /// What the request needs.
    fn need(&self) -> Need<'_>;
    /// What it acts on, for messages and the audit log.
    fn target(&self) -> String;
    /// Whether it changes the cluster (and so is written to the audit log). A method of its
    /// own so that data requests answer without building their [`Need`].
    fn is_change(&self) -> bool {
        false
    }
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn keys_target(keyspace: &str, keys: &[&[u8]]) -> String {
    let ks = keyspace_name(keyspace);
    match keys {
        [one] => format!("key {:?} of keyspace {ks:?}", show(one)),
        many => format!("{} keys of keyspace {ks:?}", many.len()),
    }
}

impl Authorize for GetRequest {
    fn need(&self) -> Need<'_> {
        Need::Keys {
            keyspace: &self.keyspace,
            keys: vec![&self.key],
            write: false,
        }
    }
    fn target(&self) -> String {
        keys_target(&self.keyspace, &[&self.key])
    }
}

impl Authorize for PutRequest {
    fn need(&self) -> Need<'_> {
        Need::Keys {
            keyspace: &self.keyspace,
            keys: vec![&self.key],
            write: true,
        }
    }
    fn target(&self) -> String {
        keys_target(&self.keyspace, &[&self.key])
    }
}

impl Authorize for DeleteRequest {
    fn need(&self) -> Need<'_> {
        Need::Keys {
            keyspace: &self.keyspace,
            keys: vec![&self.key],
            write: true,
        }
    }
    fn target(&self) -> String {
        keys_target(&self.keyspace, &[&self.key])
    }
}

impl Authorize for ScanRequest {
    fn need(&self) -> Need<'_> {
        Need::Range {
            keyspace: &self.keyspace,
            start: &self.start,
            end: &self.end,
        }
    }
    fn target(&self) -> String {
        format!(
            "range [{:?}, {:?}) of keyspace {:?}",
            show(&self.start),
            show(&self.end),
            keyspace_name(&self.keyspace)
        )
    }
}

impl Authorize for BatchGetRequest {
    fn need(&self) -> Need<'_> {
        Need::Keys {
            keyspace: &self.keyspace,
            keys: self.keys.iter().map(|k| &k[..]).collect(),
            write: false,
        }
    }
    fn target(&self) -> String {
        let keys: Vec<&[u8]> = self.keys.iter().map(|k| &k[..]).collect();
        keys_target(&self.keyspace, &keys)
    }
}

impl Authorize for BatchPutRequest {
    fn need(&self) -> Need<'_> {
        Need::Keys {
            keyspace: &self.keyspace,
            keys: self.kvs.iter().map(|kv| &kv.key[..]).collect(),
            write: true,
        }
    }
    fn target(&self) -> String {
        let keys: Vec<&[u8]> = self.kvs.iter().map(|kv| &kv.key[..]).collect();
        keys_target(&self.keyspace, &keys)
    }
}

/// Admin requests: the need and how the target is named.
macro_rules! admin_requests {
    ($($request:ty => $need:ident, |$r:ident| $target:expr;)*) => {$(
        impl Authorize for $request {
            fn need(&self) -> Need<'_> {
                Need::$need
            }
            fn target(&self) -> String {
                let $r = self;
                $target
            }
            fn is_change(&self) -> bool {
                matches!(self.need(), Need::Admin)
            }
        }
    )*};
}

admin_requests! {
    pb::CreateKeyspaceRequest => Admin,
        |r| format!("keyspace {:?}", r.spec.as_ref().map_or("", |s| s.name.as_str()));
    pb::DropKeyspaceRequest => Admin, |r| format!("keyspace {:?}", keyspace_name(&r.name));
    pb::SetDirectoryRequest => Admin,
        |r| format!("directory {:?} of keyspace {:?}", show(&r.directory), keyspace_name(&r.keyspace));
    pb::RemoveDirectoryRequest => Admin,
        |r| format!("directory {:?} of keyspace {:?}", show(&r.directory), keyspace_name(&r.keyspace));
    pb::ListKeyspacesRequest => Known, |_r| "keyspaces".to_string();
    pb::DescribeKeyspaceRequest => Known, |r| format!("keyspace {:?}", keyspace_name(&r.name));
    pb::GetDirectoryRequest => Known,
        |r| format!("directory {:?} of keyspace {:?}", show(&r.directory), keyspace_name(&r.keyspace));
    pb::ListDirectoryRequest => Known, |r| format!("directories of keyspace {:?}", keyspace_name(&r.keyspace));
    pb::LocateRequest => Known, |r| format!("{} keys of keyspace {:?}", r.keys.len(), keyspace_name(&r.keyspace));
    pb::CreateUserRequest => Admin, |r| format!("user {:?}", r.name);
    pb::DeleteUserRequest => Admin, |r| format!("user {:?}", r.name);
    // Users and roles list token ids and every grant: operators' business only.
    pb::ListUsersRequest => Admin, |_r| "users".to_string();
    pb::SetUserRolesRequest => Admin, |r| format!("user {:?}", r.name);
    pb::IssueTokenRequest => Admin, |r| format!("user {:?}", r.user);
    pb::RevokeTokenRequest => Admin, |r| format!("token {:?}", token_id_of(&r.id));
    pb::CreateRoleRequest => Admin, |r| format!("role {:?}", r.name);
    pb::DeleteRoleRequest => Admin, |r| format!("role {:?}", r.name);
    pb::ListRolesRequest => Admin, |_r| "roles".to_string();
    pb::GrantRequest => Admin, |r| format!("role {:?}", r.role);
    pb::RevokeGrantRequest => Admin, |r| format!("role {:?}", r.role);
    pb::SetAuthEnabledRequest => Admin, |r| format!("auth enabled={}", r.enabled);
    pb::WhoAmIRequest => Known, |_r| "self".to_string();
}

/// The id of a token given as its id or its whole text; never the secret, so that a revoked
/// token's text pasted into a command does not land in the audit log.
pub fn token_id_of(text: &str) -> String {
    match shardmap::Token::parse(text) {
        Ok(t) => t.id().to_string(),
        Err(_) => text.chars().take(32).collect(),
    }
}

/// The auth index of the map in use, rebuilt when the map's epoch changes.
///
/// A std `RwLock`: held only to compare an epoch and clone an `Arc`, never across an await.
#[derive(Debug, Default)]
pub struct Gate {
    index: RwLock<Option<(u64, Arc<AuthIndex>)>>,
}

impl Gate {
    pub fn index(&self, map: &CompiledMap) -> Arc<AuthIndex> {
        let epoch = map.map.epoch;
        if let Some((e, index)) = &*self.index.read().unwrap_or_else(|p| p.into_inner()) {
            if *e == epoch {
                return index.clone();
            }
        }
        let index = Arc::new(AuthIndex::new(&map.map.auth));
        let mut slot = self.index.write().unwrap_or_else(|p| p.into_inner());
        // Keep the newest: a request holding an older map must not evict a newer index.
        if slot.as_ref().is_none_or(|(e, _)| *e <= epoch) {
            *slot = Some((epoch, index.clone()));
        }
        index
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn unauthenticated(reason: DenyReason, message: String) -> RouterError {
    RouterError::Unauthenticated { reason, message }
}

impl Router {
    /// Who `caller` is under the map in use (waiting for the first map until `deadline`).
    pub async fn authenticate(
        &self,
        caller: &Caller,
        deadline: Instant,
    ) -> Result<Identity, RouterError> {
        let map = self.maps.wait(deadline).await?;
        let epoch = map.map.epoch;
        let now = now_ms();
        if let Some(identity) = caller.remembered(epoch, now) {
            return Ok(identity);
        }
        let index = self.auth.index(&map);
        if !index.enabled {
            return Ok(Identity::Anyone);
        }
        let found = if let Some(header) = &caller.authorization {
            let Some(token) = header
                .strip_prefix("Bearer ")
                .or_else(|| header.strip_prefix("bearer "))
            else {
                return Err(unauthenticated(
                    DenyReason::MalformedToken,
                    "the authorization header must be \"Bearer <token>\"".into(),
                ));
            };
            index.authenticate_token_until(token.trim(), now)
        } else if let Some(name) = &caller.cert_user {
            index.user(name).map(|user| (user, None))
        } else {
            return Err(unauthenticated(
                DenyReason::NoCredential,
                "no credential: send \"authorization: Bearer <token>\" (kvctl --token) or a \
                 client certificate"
                    .into(),
            ));
        };
        match found {
            Ok((user, expires_at_ms)) => {
                let identity = Identity::User(user.clone());
                caller.remember(epoch, expires_at_ms.unwrap_or(u64::MAX), &identity);
                Ok(identity)
            }
            Err(e) => Err(unauthenticated(deny_reason(&e), e.to_string())),
        }
    }

    /// Authenticates and authorizes one request; a refusal is counted and audited.
    pub async fn check<R: Authorize>(
        &self,
        caller: &Caller,
        action: &str,
        request: &R,
        deadline: Instant,
    ) -> Result<Identity, RouterError> {
        let refused = match self.authenticate(caller, deadline).await {
            Ok(identity) => match authorize(&identity, action, request) {
                Ok(()) => return Ok(identity),
                Err(e) => (identity.name().to_string(), e),
            },
            Err(e) => (claimed(caller), e),
        };
        let (who, e) = refused;
        if let Some(reason) = e.deny_reason() {
            self.metrics.count_denied(reason);
            audit::record(AuditRecord {
                identity: who,
                peer: caller.peer(),
                action: action.to_string(),
                target: request.target(),
                outcome: "denied",
                reason: e.to_string(),
            });
        }
        Err(e)
    }

    /// Writes the outcome of an admin change to the audit log.
    pub fn audit_change(
        &self,
        caller: &Caller,
        identity: &Identity,
        action: &str,
        target: String,
        error: Option<&RouterError>,
    ) {
        audit::record(AuditRecord {
            identity: identity.name().to_string(),
            peer: caller.peer(),
            action: action.to_string(),
            target,
            outcome: if error.is_some() { "failed" } else { "ok" },
            reason: error.map(|e| e.to_string()).unwrap_or_default(),
        });
    }
}

/// Whether `identity` may do what `request` needs; `action` names it in the refusal.
pub fn authorize<R: Authorize>(
    identity: &Identity,
    action: &str,
    request: &R,
) -> Result<(), RouterError> {
    let Identity::User(user) = identity else {
        return Ok(());
    };
    let p = &user.permissions;
    let (allowed, needs) = match request.need() {
        Need::Keys {
            keyspace,
            keys,
            write,
        } => (
            keys.iter().all(|k| p.allows_key(keyspace, k, write)),
            if write { "write" } else { "read" },
        ),
        Need::Range {
            keyspace,
            start,
            end,
        } => (p.allows_range(keyspace, start, end), "read"),
        Need::Admin => (p.admin, "an admin role"),
        Need::Known => (true, ""),
    };
    if allowed {
        return Ok(());
    }
    Err(RouterError::PermissionDenied {
        user: user.user.to_string(),
        action: action.to_string(),
        target: request.target(),
        needs,
    })
}

/// Who a refused caller claimed to be: the token's id or the certificate's name, never the
/// secret.
fn claimed(caller: &Caller) -> String {
    if let Some(header) = &caller.authorization {
        let token = header.trim_start_matches("Bearer ").trim();
        return format!("token:{}", token_id_of(token));
    }
    match &caller.cert_user {
        Some(name) => format!("cert:{name}"),
        None => "anonymous".to_string(),
    }
}

fn deny_reason(e: &AuthnError) -> DenyReason {
    match e {
        AuthnError::Malformed(_) => DenyReason::MalformedToken,
        AuthnError::UnknownToken(_) => DenyReason::UnknownToken,
        AuthnError::WrongSecret(_) => DenyReason::InvalidToken,
        AuthnError::Expired { .. } => DenyReason::ExpiredToken,
        AuthnError::UnknownUser(_) => DenyReason::UnknownUser,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use shardmap::auth::{Access, AuthChange, Grant};
    use shardmap::{ClusterMap, MapChange, Token};

    use super::*;

    fn map_with_reader() -> (CompiledMap, Token, Token) {
        let admin = Token::generate(&mut rand::rngs::OsRng);
        let reader = Token::generate(&mut rand::rngs::OsRng);
        let nodes: Vec<_> = (1..=3).map(|i| (i, format!("h{i}:1"))).collect();
        let mut map = ClusterMap::bootstrap(&nodes, 2, 3).unwrap();
        map.auth = shardmap::AuthConfig::bootstrap(admin.entry(0, None));
        for change in [
            AuthChange::CreateRole {
                name: "r".into(),
                admin: false,
            },
            AuthChange::Grant {
                role: "r".into(),
                grant: Grant {
                    keyspace: "default".into(),
                    prefix: b"t/".to_vec(),
                    access: Access::Read,
                },
            },
            AuthChange::CreateUser {
                name: "bob".into(),
                roles: vec!["r".into()],
                token: Some(reader.entry(0, None)),
            },
        ] {
            map = map.apply(&MapChange::Auth(change)).unwrap();
        }
        (CompiledMap::new(map).unwrap(), admin, reader)
    }

    #[test]
    fn gate_rebuilds_only_on_a_new_epoch() {
        let (map, _, _) = map_with_reader();
        let gate = Gate::default();
        let a = gate.index(&map);
        let b = gate.index(&map);
        assert!(Arc::ptr_eq(&a, &b));
        let mut next = map.map.clone();
        next.epoch += 1;
        let c = gate.index(&CompiledMap::new(next).unwrap());
        assert!(!Arc::ptr_eq(&a, &c));
        // An older map does not evict the newer index.
        gate.index(&map);
        assert!(Arc::ptr_eq(
            &gate.index(
                &CompiledMap::new({
                    let mut m = map.map.clone();
                    m.epoch += 1;
                    m
                })
                .unwrap()
            ),
            &c
        ));
    }

    #[test]
    fn requests_are_allowed_as_their_grants_say() {
        let (map, admin, reader) = map_with_reader();
        let index = AuthIndex::new(&map.map.auth);
        let who =
            |t: &Token| Identity::User(index.authenticate_token(&t.reveal(), 0).unwrap().clone());
        let (admin, bob) = (who(&admin), who(&reader));
        let get = |key: &'static str| GetRequest {
            key: Bytes::from_static(key.as_bytes()),
            ..Default::default()
        };
        let put = PutRequest {
            key: Bytes::from_static(b"t/1"),
            ..Default::default()
        };
        let scan = |start: &'static [u8], end: &'static [u8]| ScanRequest {
            start: Bytes::from_static(start),
            end: Bytes::from_static(end),
            ..Default::default()
        };
        let batch = BatchGetRequest {
            keys: vec![Bytes::from_static(b"t/1"), Bytes::from_static(b"u/1")],
            ..Default::default()
        };
        assert!(authorize(&bob, "Get", &get("t/1")).is_ok());
        assert!(authorize(&bob, "Scan", &scan(b"t/", b"t0")).is_ok());
        assert!(authorize(&bob, "ListKeyspaces", &pb::ListKeyspacesRequest::default()).is_ok());
        for (action, refused) in [
            ("Get", authorize(&bob, "Get", &get("u/1"))),
            ("Put", authorize(&bob, "Put", &put)),
            ("Scan", authorize(&bob, "Scan", &scan(b"t/", b""))),
            ("BatchGet", authorize(&bob, "BatchGet", &batch)),
            (
                "CreateUser",
                authorize(&bob, "CreateUser", &pb::CreateUserRequest::default()),
            ),
        ] {
            let e = refused.unwrap_err();
            assert_eq!(e.deny_reason(), Some(DenyReason::Forbidden), "{action}");
            let message = e.to_string();
            assert!(
                message.contains("\"bob\"") && message.contains(action),
                "{message}"
            );
        }
        for allowed in [
            authorize(&admin, "Put", &put),
            authorize(&admin, "Scan", &scan(b"", b"")),
            authorize(&admin, "CreateUser", &pb::CreateUserRequest::default()),
            authorize(
                &Identity::Anyone,
                "DropKeyspace",
                &pb::DropKeyspaceRequest::default(),
            ),
        ] {
            assert!(allowed.is_ok(), "{allowed:?}");
        }
        assert!(pb::CreateUserRequest::default().is_change());
        assert!(!pb::ListKeyspacesRequest::default().is_change());
        assert!(!put.is_change());
        assert_eq!(get("t/1").target(), "key \"t/1\" of keyspace \"default\"");
    }

    #[test]
    fn a_verified_identity_is_remembered_for_its_epoch_and_until_it_expires() {
        let caller = Caller::default();
        let who = Identity::User(Authenticated {
            user: "u".into(),
            permissions: Default::default(),
        });
        assert!(caller.remembered(3, 0).is_none());
        caller.remember(3, 1_000, &who);
        assert_eq!(caller.remembered(3, 999).unwrap().name(), "u");
        assert!(caller.remembered(3, 1_000).is_none(), "expired");
        assert!(caller.remembered(4, 10).is_none(), "another epoch");
        assert!(
            caller.clone().remembered(3, 10).is_none(),
            "a clone starts afresh"
        );
    }

    #[test]
    fn token_ids_never_show_the_secret() {
        let t = Token::generate(&mut rand::rngs::OsRng);
        assert_eq!(token_id_of(&t.reveal()), t.id());
        let caller = Caller {
            authorization: Some(format!("Bearer {}", t.reveal())),
            ..Default::default()
        };
        let shown = claimed(&caller);
        assert_eq!(shown, format!("token:{}", t.id()));
    }
}
