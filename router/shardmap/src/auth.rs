//! Users, roles, grants and access tokens: the `auth` section of the cluster map, and the pure
//! logic that decides who may do what.
//!
//! The section lives in the meta group's map like keyspaces do, so every router sees the same
//! users and grants at the same epoch, and changes to it are serialized by Raft like every other
//! [`crate::MapChange`]. Maps written before it existed read as "auth off".
//!
//! - [`Token`]: the text a client presents, `kvt_<id>_<secret>`. Only the SHA-256 of the secret
//!   is ever stored ([`TokenEntry::sha256`]); the id finds the entry without scanning.
//! - [`AuthIndex`]: built once per map version by whoever serves requests, so that a request
//!   costs one hash-map lookup and one SHA-256, never a scan of every user.
//! - [`Permissions`]: a user's roles merged; answers whether a key, a set of keys or a scan
//!   range may be read or written.
//!
//! Limits ([`MAX_USERS`], [`MAX_ROLES`], ...) keep the section, which every router holds and
//! every map change copies, small.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::directory::prefix_end;
use crate::{keyspace_name, MapError};

/// Most users the map holds.
pub const MAX_USERS: usize = 1_000;
/// Most roles the map holds.
pub const MAX_ROLES: usize = 200;
/// Most grants one role holds.
pub const MAX_GRANTS_PER_ROLE: usize = 100;
/// Most roles one user holds.
pub const MAX_ROLES_PER_USER: usize = 32;
/// Most live tokens one user holds: revoke old ones to issue more.
pub const MAX_TOKENS_PER_USER: usize = 16;
/// Longest user or role name.
pub const MAX_AUTH_NAME_LEN: usize = 64;
/// Longest grant prefix (the longest key a node accepts by default).
pub const MAX_PREFIX_LEN: usize = 4 * 1024;
/// The role every cluster bootstrapped with an admin token starts with.
pub const ADMIN_ROLE: &str = "admin";
/// The user every cluster bootstrapped with an admin token starts with.
pub const ADMIN_USER: &str = "admin";

/// What a token's text starts with, so that a leaked one is easy to recognise and scan for.
pub const TOKEN_PREFIX: &str = "kvt_";
/// Random bytes in a token id (hex in the text).
const ID_BYTES: usize = 8;
/// Random bytes in a token secret (hex in the text).
const SECRET_BYTES: usize = 32;

/// The `auth` section of the cluster map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthConfig {
    /// When false every request is allowed, as before auth existed.
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub users: BTreeMap<String, User>,
    #[serde(default)]
    pub roles: BTreeMap<String, Role>,
}

/// A user: the roles it holds and the tokens it may present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
}

/// A token as stored: its id and the hash of its secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    /// The id part of the token text (16 lowercase hex digits).
    pub id: String,
    /// Lowercase hex of the SHA-256 of the secret part of the token text.
    pub sha256: String,
    /// When it was issued (milliseconds since the Unix epoch, the issuer's clock).
    pub created_ms: u64,
    /// When it stops being accepted; `None`: never.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

/// A role: admin (everything), and grants on keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// May change the cluster (keyspaces, directories, users, roles) and read and write every key.
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub grants: Vec<Grant>,
}

/// Access to the keys of one keyspace that start with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub keyspace: String,
    /// Empty: the whole keyspace. A directory `tenant-a/` is granted as that key prefix.
    #[serde(default)]
    pub prefix: Vec<u8>,
    pub access: Access,
}

/// What a grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Read,
    ReadWrite,
}

impl Access {
    pub fn name(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::ReadWrite => "read-write",
        }
    }

    /// Whether this access covers a write (`true`) or a read (`false`).
    pub fn covers(self, write: bool) -> bool {
        !write || self == Access::ReadWrite
    }
}

impl std::str::FromStr for Access {
    type Err = MapError;
    fn from_str(s: &str) -> Result<Self, MapError> {
        match s {
            "read" | "r" => Ok(Access::Read),
            "read-write" | "readwrite" | "read_write" | "rw" => Ok(Access::ReadWrite),
            other => Err(MapError::Invalid(format!(
                "unknown access {other:?}: expected read or read-write"
            ))),
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl AuthConfig {
    /// Whether this is the section of a map that never had auth (then it is not written at
    /// all, so maps without auth keep their exact JSON).
    pub fn is_off(&self) -> bool {
        !self.enabled && self.users.is_empty() && self.roles.is_empty()
    }

    /// The section of a cluster bootstrapped with an admin token: auth on, role `admin`, and
    /// user `admin` holding it with that one token.
    pub fn bootstrap(admin_token: TokenEntry) -> AuthConfig {
        AuthConfig {
            enabled: true,
            users: BTreeMap::from([(
                ADMIN_USER.to_string(),
                User {
                    roles: vec![ADMIN_ROLE.to_string()],
                    tokens: vec![admin_token],
                },
            )]),
            roles: BTreeMap::from([(
                ADMIN_ROLE.to_string(),
                Role {
                    admin: true,
                    grants: Vec::new(),
                },
            )]),
        }
    }

    /// The user holding the token with this id.
    pub fn token_owner(&self, id: &str) -> Option<&str> {
        self.users
            .iter()
            .find(|(_, u)| u.tokens.iter().any(|t| t.id == id))
            .map(|(name, _)| name.as_str())
    }

    /// Whether some user holds an admin role and a token, so that turning auth on (or taking
    /// an admin away) cannot lock every operator out.
    fn has_admin_with_token(&self) -> bool {
        self.users.values().any(|u| {
            !u.tokens.is_empty()
                && u.roles
                    .iter()
                    .any(|r| self.roles.get(r).is_some_and(|r| r.admin))
        })
    }
}

fn invalid(msg: impl Into<String>) -> MapError {
    MapError::Invalid(msg.into())
}

/// User and role names: short, printable, no spaces.
pub fn check_auth_name(what: &str, name: &str) -> Result<(), MapError> {
    if name.is_empty() {
        return Err(invalid(format!("{what} name must not be empty")));
    }
    if name.len() > MAX_AUTH_NAME_LEN {
        return Err(invalid(format!(
            "{what} name is longer than {MAX_AUTH_NAME_LEN} bytes"
        )));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
    {
        return Err(invalid(format!(
            "{what} name {name:?} may hold only letters, digits, '-', '_', '.' and '@'"
        )));
    }
    Ok(())
}

fn check_token_entry(t: &TokenEntry) -> Result<(), MapError> {
    if !is_hex(&t.id, ID_BYTES) {
        return Err(invalid(format!(
            "token id must be {} hex digits",
            ID_BYTES * 2
        )));
    }
    if !is_hex(&t.sha256, 32) {
        return Err(invalid("a token's sha256 must be 64 hex digits"));
    }
    Ok(())
}

/// The auth changes of [`crate::MapChange`], applied to the section of the map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthChange {
    /// Turns checking on or off. Turning it on needs a user with an admin role and a token.
    SetEnabled {
        enabled: bool,
    },
    /// A new user with these roles and, optionally, a first token.
    CreateUser {
        name: String,
        roles: Vec<String>,
        token: Option<TokenEntry>,
    },
    DeleteUser {
        name: String,
    },
    /// Replaces a user's roles.
    SetUserRoles {
        name: String,
        roles: Vec<String>,
    },
    IssueToken {
        user: String,
        token: TokenEntry,
    },
    /// Removes the token with this id, whoever holds it.
    RevokeToken {
        id: String,
    },
    CreateRole {
        name: String,
        admin: bool,
    },
    /// Refused while a user holds the role.
    DeleteRole {
        name: String,
    },
    /// Adds a grant to a role; a grant on the same keyspace and prefix is replaced.
    Grant {
        role: String,
        grant: Grant,
    },
    /// Removes the role's grant on this keyspace and prefix.
    RevokeGrant {
        role: String,
        keyspace: String,
        prefix: Vec<u8>,
    },
}

impl AuthConfig {
    /// The section after `change`, or why the change is refused.
    pub fn apply(&self, change: &AuthChange) -> Result<AuthConfig, MapError> {
        let mut next = self.clone();
        match change {
            AuthChange::SetEnabled { enabled } => {
                next.enabled = *enabled;
            }
            AuthChange::CreateUser { name, roles, token } => {
                check_auth_name("user", name)?;
                if next.users.contains_key(name) {
                    return Err(invalid(format!("user {name:?} already exists")));
                }
                if next.users.len() >= MAX_USERS {
                    return Err(invalid(format!(
                        "the cluster holds the most users it may ({MAX_USERS}): delete some first"
                    )));
                }
                next.check_roles(roles)?;
                let mut user = User {
                    roles: dedup(roles),
                    tokens: Vec::new(),
                };
                if let Some(t) = token {
                    next.check_new_token(t)?;
                    user.tokens.push(t.clone());
                }
                next.users.insert(name.clone(), user);
            }
            AuthChange::DeleteUser { name } => {
                if next.users.remove(name).is_none() {
                    return Err(invalid(format!("unknown user {name:?}")));
                }
            }
            AuthChange::SetUserRoles { name, roles } => {
                next.check_roles(roles)?;
                let user = next
                    .users
                    .get_mut(name)
                    .ok_or_else(|| invalid(format!("unknown user {name:?}")))?;
                user.roles = dedup(roles);
            }
            AuthChange::IssueToken { user, token } => {
                next.check_new_token(token)?;
                let u = next
                    .users
                    .get_mut(user)
                    .ok_or_else(|| invalid(format!("unknown user {user:?}")))?;
                if u.tokens.len() >= MAX_TOKENS_PER_USER {
                    return Err(invalid(format!(
                        "user {user:?} holds the most tokens a user may ({MAX_TOKENS_PER_USER}): revoke one first"
                    )));
                }
                u.tokens.push(token.clone());
            }
            AuthChange::RevokeToken { id } => {
                let found = next.users.values_mut().any(|u| {
                    let before = u.tokens.len();
                    u.tokens.retain(|t| &t.id != id);
                    u.tokens.len() != before
                });
                if !found {
                    return Err(invalid(format!("no token has id {id:?}")));
                }
            }
            AuthChange::CreateRole { name, admin } => {
                check_auth_name("role", name)?;
                if next.roles.contains_key(name) {
                    return Err(invalid(format!("role {name:?} already exists")));
                }
                if next.roles.len() >= MAX_ROLES {
                    return Err(invalid(format!(
                        "the cluster holds the most roles it may ({MAX_ROLES}): delete some first"
                    )));
                }
                next.roles.insert(
                    name.clone(),
                    Role {
                        admin: *admin,
                        grants: Vec::new(),
                    },
                );
            }
            AuthChange::DeleteRole { name } => {
                if !next.roles.contains_key(name) {
                    return Err(invalid(format!("unknown role {name:?}")));
                }
                let holders: Vec<&str> = next
                    .users
                    .iter()
                    .filter(|(_, u)| u.roles.contains(name))
                    .map(|(n, _)| n.as_str())
                    .collect();
                if !holders.is_empty() {
                    return Err(invalid(format!(
                        "role {name:?} is held by {}: take it from them first",
                        holders.join(", ")
                    )));
                }
                next.roles.remove(name);
            }
            AuthChange::Grant { role, grant } => {
                check_grant(grant)?;
                let r = next
                    .roles
                    .get_mut(role)
                    .ok_or_else(|| invalid(format!("unknown role {role:?}")))?;
                let keyspace = keyspace_name(&grant.keyspace);
                let grant = Grant {
                    keyspace: keyspace.to_string(),
                    ..grant.clone()
                };
                match r
                    .grants
                    .iter_mut()
                    .find(|g| g.keyspace == grant.keyspace && g.prefix == grant.prefix)
                {
                    Some(g) if g.access == grant.access => {
                        return Err(invalid(format!("role {role:?} already has that grant")))
                    }
                    Some(g) => g.access = grant.access,
                    None => {
                        if r.grants.len() >= MAX_GRANTS_PER_ROLE {
                            return Err(invalid(format!(
                                "role {role:?} holds the most grants a role may ({MAX_GRANTS_PER_ROLE}): revoke some first"
                            )));
                        }
                        r.grants.push(grant);
                    }
                }
            }
            AuthChange::RevokeGrant {
                role,
                keyspace,
                prefix,
            } => {
                let r = next
                    .roles
                    .get_mut(role)
                    .ok_or_else(|| invalid(format!("unknown role {role:?}")))?;
                let keyspace = keyspace_name(keyspace);
                let before = r.grants.len();
                r.grants
                    .retain(|g| !(g.keyspace == keyspace && &g.prefix == prefix));
                if r.grants.len() == before {
                    return Err(invalid(format!(
                        "role {role:?} has no grant on keyspace {keyspace:?} prefix {:?}",
                        String::from_utf8_lossy(prefix)
                    )));
                }
            }
        }
        // Whatever the change, while auth is on some admin must still be able to log in:
        // otherwise no one could ever change users again.
        if next.enabled && !next.has_admin_with_token() {
            return Err(invalid(
                "the change would leave no user with an admin role and a token, locking every \
                 operator out; give another user an admin role and a token first",
            ));
        }
        Ok(next)
    }

    fn check_roles(&self, roles: &[String]) -> Result<(), MapError> {
        if roles.len() > MAX_ROLES_PER_USER {
            return Err(invalid(format!(
                "a user may hold at most {MAX_ROLES_PER_USER} roles"
            )));
        }
        match roles.iter().find(|r| !self.roles.contains_key(*r)) {
            Some(r) => Err(invalid(format!("unknown role {r:?}"))),
            None => Ok(()),
        }
    }

    fn check_new_token(&self, token: &TokenEntry) -> Result<(), MapError> {
        check_token_entry(token)?;
        if self.token_owner(&token.id).is_some() {
            return Err(invalid(format!(
                "a token with id {:?} already exists",
                token.id
            )));
        }
        Ok(())
    }
}

fn check_grant(grant: &Grant) -> Result<(), MapError> {
    crate::change::check_name(keyspace_name(&grant.keyspace))?;
    if grant.prefix.len() > MAX_PREFIX_LEN {
        return Err(invalid(format!(
            "a grant's prefix is longer than {MAX_PREFIX_LEN} bytes"
        )));
    }
    Ok(())
}

fn dedup(roles: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(roles.len());
    for r in roles {
        if !out.contains(r) {
            out.push(r.clone());
        }
    }
    out
}

/// An access token as a client holds it: `kvt_<id>_<secret>`, both parts lowercase hex.
/// `Debug` and `Display`-free on purpose: the secret must not end up in logs by accident;
/// [`Token::reveal`] is the one way to the text.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    id: String,
    secret: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({TOKEN_PREFIX}{}_…)", self.id)
    }
}

/// Why a token text is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenFormatError {
    #[error("a token must start with {TOKEN_PREFIX:?}")]
    Prefix,
    #[error("a token is {TOKEN_PREFIX}<16 hex digits>_<64 hex digits>")]
    Shape,
}

impl Token {
    /// A new token from a cryptographically secure random source.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Token {
        let mut id = [0u8; ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        rng.fill_bytes(&mut id);
        rng.fill_bytes(&mut secret);
        Token {
            id: hex(&id),
            secret: hex(&secret),
        }
    }

    /// Parses a token's text (surrounding whitespace ignored, so a file with a trailing
    /// newline reads).
    pub fn parse(text: &str) -> Result<Token, TokenFormatError> {
        let rest = text
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenFormatError::Prefix)?;
        let (id, secret) = rest.split_once('_').ok_or(TokenFormatError::Shape)?;
        if !is_hex(id, ID_BYTES) || !is_hex(secret, SECRET_BYTES) {
            return Err(TokenFormatError::Shape);
        }
        Ok(Token {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// The token's id: not secret, it names the token in lists, revocations and logs.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The full text to hand to the client, once.
    pub fn reveal(&self) -> String {
        format!("{TOKEN_PREFIX}{}_{}", self.id, self.secret)
    }

    /// What the map stores for this token.
    pub fn entry(&self, created_ms: u64, expires_at_ms: Option<u64>) -> TokenEntry {
        TokenEntry {
            id: self.id.clone(),
            sha256: hex(&secret_hash(&self.secret)),
            created_ms,
            expires_at_ms,
        }
    }
}

/// SHA-256 of a token's secret part, as text.
fn secret_hash(secret: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Equality that takes the same time wherever the inputs differ, so response times do not
/// tell an attacker how much of a guessed hash was right.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_hex(text: &str, bytes: usize) -> bool {
    text.len() == bytes * 2 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    if !is_hex(text, 32) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// What a user may do: its roles merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub admin: bool,
    /// Per keyspace, the grants on it.
    grants: HashMap<String, Vec<(Vec<u8>, Access)>>,
}

impl Permissions {
    /// The permissions of holding `roles` (unknown role names grant nothing).
    pub fn of_roles<'a>(
        config: &AuthConfig,
        roles: impl IntoIterator<Item = &'a String>,
    ) -> Permissions {
        let mut p = Permissions::default();
        for role in roles.into_iter().filter_map(|r| config.roles.get(r)) {
            p.admin |= role.admin;
            for g in &role.grants {
                p.grants
                    .entry(keyspace_name(&g.keyspace).to_string())
                    .or_default()
                    .push((g.prefix.clone(), g.access));
            }
        }
        p
    }

    fn in_keyspace(&self, keyspace: &str) -> &[(Vec<u8>, Access)] {
        self.grants
            .get(keyspace_name(keyspace))
            .map_or(&[], Vec::as_slice)
    }

    /// Whether `key` of `keyspace` may be read (`write` false) or written.
    pub fn allows_key(&self, keyspace: &str, key: &[u8], write: bool) -> bool {
        self.admin
            || self
                .in_keyspace(keyspace)
                .iter()
                .any(|(prefix, access)| access.covers(write) && key.starts_with(prefix))
    }

    /// Whether every key in `[start, end)` (`end` empty: no upper bound) may be read: the
    /// range must lie inside the union of the read grants' prefixes. An empty range needs
    /// some grant on the keyspace.
    pub fn allows_range(&self, keyspace: &str, start: &[u8], end: &[u8]) -> bool {
        if self.admin {
            return true;
        }
        let grants = self.in_keyspace(keyspace);
        if grants.is_empty() {
            return false;
        }
        if !end.is_empty() && start >= end {
            return true;
        }
        // Each prefix covers [prefix, prefix_end(prefix)); an empty end is +infinity.
        let mut spans: Vec<(&[u8], Vec<u8>)> = grants
            .iter()
            .map(|(p, _)| (p.as_slice(), prefix_end(p)))
            .collect();
        spans.sort();
        let mut covered_to: Vec<u8> = start.to_vec();
        loop {
            // The span that holds `covered_to` and reaches furthest.
            let mut best: Option<&Vec<u8>> = None;
            for (lo, hi) in &spans {
                let holds = *lo <= covered_to.as_slice()
                    && (hi.is_empty() || covered_to.as_slice() < hi.as_slice());
                if holds && best.is_none_or(|b| !b.is_empty() && (hi.is_empty() || hi > b)) {
                    best = Some(hi);
                }
            }
            match best {
                None => return false,
                Some(hi) if hi.is_empty() => return true,
                Some(hi) => {
                    if !end.is_empty() && hi.as_slice() >= end {
                        return true;
                    }
                    covered_to = hi.clone();
                }
            }
        }
    }

    /// Whether the user holds any grant, of any access, on `keyspace`.
    pub fn any_in(&self, keyspace: &str) -> bool {
        self.admin || !self.in_keyspace(keyspace).is_empty()
    }
}

/// A token as the index keeps it.
#[derive(Debug, Clone)]
struct IndexedToken {
    user: Arc<str>,
    sha256: [u8; 32],
    expires_at_ms: Option<u64>,
}

/// Who a credential turned out to be.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub user: Arc<str>,
    pub permissions: Arc<Permissions>,
}

/// Why a credential was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    #[error("malformed token: {0}")]
    Malformed(TokenFormatError),
    /// No token has this id: never issued, or revoked (or its user deleted).
    #[error("unknown or revoked token {0}")]
    UnknownToken(String),
    /// The id is known but the secret does not match its hash.
    #[error("invalid token {0}")]
    WrongSecret(String),
    #[error("token {id} expired at {expired_at_ms} ms since the epoch")]
    Expired { id: String, expired_at_ms: u64 },
    /// A certificate names a user the map does not have.
    #[error("unknown user {0:?}")]
    UnknownUser(String),
}

impl AuthnError {
    /// A short label for metrics and the audit log.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthnError::Malformed(_) => "malformed_token",
            AuthnError::UnknownToken(_) => "unknown_token",
            AuthnError::WrongSecret(_) => "invalid_token",
            AuthnError::Expired { .. } => "expired_token",
            AuthnError::UnknownUser(_) => "unknown_user",
        }
    }
}

/// The auth section compiled for lookups: tokens by id, permissions by user.
#[derive(Debug, Clone, Default)]
pub struct AuthIndex {
    pub enabled: bool,
    tokens: HashMap<String, IndexedToken>,
    users: HashMap<String, Authenticated>,
}

impl AuthIndex {
    pub fn new(config: &AuthConfig) -> AuthIndex {
        let mut users = HashMap::new();
        let mut tokens = HashMap::new();
        for (name, user) in &config.users {
            let authenticated = Authenticated {
                user: Arc::from(name.as_str()),
                permissions: Arc::new(Permissions::of_roles(config, &user.roles)),
            };
            for t in &user.tokens {
                // A stored hash that is not hex matches nothing: such a token cannot log in.
                if let Some(sha256) = unhex32(&t.sha256) {
                    tokens.insert(
                        t.id.clone(),
                        IndexedToken {
                            user: authenticated.user.clone(),
                            sha256,
                            expires_at_ms: t.expires_at_ms,
                        },
                    );
                }
            }
            users.insert(name.clone(), authenticated);
        }
        AuthIndex {
            enabled: config.enabled,
            tokens,
            users,
        }
    }

    /// The user a token's text belongs to, at wall-clock time `now_ms`.
    pub fn authenticate_token(
        &self,
        text: &str,
        now_ms: u64,
    ) -> Result<&Authenticated, AuthnError> {
        self.authenticate_token_until(text, now_ms)
            .map(|(user, _)| user)
    }

    /// As [`AuthIndex::authenticate_token`], with the time the token expires (`None`: never),
    /// for callers that remember a verified token until then.
    pub fn authenticate_token_until(
        &self,
        text: &str,
        now_ms: u64,
    ) -> Result<(&Authenticated, Option<u64>), AuthnError> {
        let token = Token::parse(text).map_err(AuthnError::Malformed)?;
        let entry = self
            .tokens
            .get(&token.id)
            .ok_or_else(|| AuthnError::UnknownToken(token.id.clone()))?;
        if !constant_time_eq(&secret_hash(&token.secret), &entry.sha256) {
            return Err(AuthnError::WrongSecret(token.id));
        }
        if let Some(at) = entry.expires_at_ms {
            if now_ms >= at {
                return Err(AuthnError::Expired {
                    id: token.id,
                    expired_at_ms: at,
                });
            }
        }
        self.users
            .get(&*entry.user)
            .map(|user| (user, entry.expires_at_ms))
            .ok_or_else(|| AuthnError::UnknownUser(entry.user.to_string()))
    }

    /// A user by name (a client certificate's common name).
    pub fn user(&self, name: &str) -> Result<&Authenticated, AuthnError> {
        self.users
            .get(name)
            .ok_or_else(|| AuthnError::UnknownUser(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn grant(keyspace: &str, prefix: &str, access: Access) -> Grant {
        Grant {
            keyspace: keyspace.into(),
            prefix: prefix.as_bytes().to_vec(),
            access,
        }
    }

    fn perms(grants: Vec<Grant>) -> Permissions {
        let mut config = AuthConfig::default();
        config.roles.insert(
            "r".into(),
            Role {
                admin: false,
                grants,
            },
        );
        Permissions::of_roles(&config, &["r".to_string()])
    }

    #[test]
    fn tokens_round_trip_and_reject_bad_text() {
        let t = Token::generate(&mut rand::rngs::OsRng);
        let text = t.reveal();
        assert!(text.starts_with("kvt_"));
        assert_eq!(Token::parse(&format!("{text}\n")).unwrap(), t);
        assert!(
            !format!("{t:?}").contains(&t.secret),
            "Debug leaks the secret"
        );
        for bad in [
            "",
            "kvt_",
            "abc",
            "kvt_0011223344556677",
            "kvt_0011223344556677_00",
            "kvt_00112233445566_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
            "kvt_0011223344556677_00112233445566778899AABBCCDDEEFF00112233445566778899aabbccddeeff",
            "xyz_0011223344556677_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        ] {
            assert!(Token::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn index_authenticates_only_the_right_secret_before_expiry() {
        let good = Token::generate(&mut rand::rngs::OsRng);
        let expiring = Token::generate(&mut rand::rngs::OsRng);
        let mut config = AuthConfig::bootstrap(good.entry(1, None));
        config = config
            .apply(&AuthChange::IssueToken {
                user: ADMIN_USER.into(),
                token: expiring.entry(1, Some(1_000)),
            })
            .unwrap();
        let index = AuthIndex::new(&config);
        let who = index.authenticate_token(&good.reveal(), 5_000).unwrap();
        assert_eq!(&*who.user, "admin");
        assert!(who.permissions.admin);
        assert!(index.authenticate_token(&expiring.reveal(), 999).is_ok());
        assert!(matches!(
            index.authenticate_token(&expiring.reveal(), 1_000),
            Err(AuthnError::Expired { .. })
        ));
        // Same id, another secret.
        let forged = format!("kvt_{}_{}", good.id, "0".repeat(64));
        assert!(matches!(
            index.authenticate_token(&forged, 0),
            Err(AuthnError::WrongSecret(_))
        ));
        let other = Token::generate(&mut rand::rngs::OsRng);
        assert!(matches!(
            index.authenticate_token(&other.reveal(), 0),
            Err(AuthnError::UnknownToken(_))
        ));
        assert!(matches!(
            index.authenticate_token("Bearer nope", 0),
            Err(AuthnError::Malformed(_))
        ));
        // Revoked: unknown from then on.
        let revoked = config
            .apply(&AuthChange::RevokeToken {
                id: expiring.id.clone(),
            })
            .unwrap();
        assert!(matches!(
            AuthIndex::new(&revoked).authenticate_token(&expiring.reveal(), 0),
            Err(AuthnError::UnknownToken(_))
        ));
        assert!(index.user("admin").is_ok());
        assert!(index.user("nobody").is_err());
    }

    #[test]
    fn grants_match_keyspace_prefix_and_access() {
        let p = perms(vec![
            grant("a", "", Access::Read),
            grant("b", "tenant-1/", Access::ReadWrite),
        ]);
        assert!(p.allows_key("a", b"x", false));
        assert!(!p.allows_key("a", b"x", true), "read-only cannot write");
        assert!(!p.allows_key("c", b"x", false), "no grant on keyspace c");
        assert!(p.allows_key("b", b"tenant-1/k", true));
        assert!(p.allows_key("b", b"tenant-1/k", false));
        assert!(!p.allows_key("b", b"tenant-2/k", false));
        assert!(
            !p.allows_key("b", b"tenant-1", false),
            "the prefix itself is longer"
        );
        // The default keyspace answers to both names.
        let d = perms(vec![grant("", "", Access::Read)]);
        assert!(d.allows_key("default", b"k", false));
        assert!(d.allows_key("", b"k", false));
    }

    #[test]
    fn scans_need_read_on_the_whole_range() {
        let p = perms(vec![
            grant("k", "a", Access::Read),
            grant("k", "b", Access::ReadWrite),
            grant("k", "d", Access::Read),
        ]);
        assert!(p.allows_range("k", b"a", b"b"));
        assert!(p.allows_range("k", b"a", b"c"), "a and b are adjacent");
        assert!(p.allows_range("k", b"a1", b"a9"));
        assert!(!p.allows_range("k", b"a", b"d"), "c is not granted");
        assert!(!p.allows_range("k", b"a", b""), "unbounded end");
        assert!(!p.allows_range("k", b"", b"b"), "keys before a");
        assert!(p.allows_range("k", b"d", b"e"));
        assert!(!p.allows_range("other", b"a", b"b"));
        let all = perms(vec![grant("k", "", Access::Read)]);
        assert!(all.allows_range("k", b"", b""));
        assert!(p.allows_range("k", b"z", b"z"), "empty range");
        // A prefix of 0xff bytes has no end: it covers every key from it on.
        let ff = perms(vec![Grant {
            keyspace: "k".into(),
            prefix: vec![0xff],
            access: Access::Read,
        }]);
        assert!(ff.allows_range("k", b"\xff", b""));
        assert!(!ff.allows_range("k", b"\xfe", b""));
    }

    proptest! {
        /// A range is allowed exactly when every key in it is readable. Prefixes and bounds
        /// use bytes 0..3 and at most 2 of them, so every key behaves like one of at most 3
        /// bytes over 0..=3 (any byte above 2 compares alike): checking those is exhaustive.
        #[test]
        fn range_check_agrees_with_key_checks(
            prefixes in prop::collection::vec(prop::collection::vec(0u8..3, 0..3), 0..4),
            start in prop::collection::vec(0u8..3, 0..3),
            end in prop::collection::vec(0u8..3, 0..3),
        ) {
            let grants = prefixes
                .iter()
                .map(|p| Grant { keyspace: "k".into(), prefix: p.clone(), access: Access::Read })
                .collect::<Vec<_>>();
            let p = perms(grants);
            let mut keys: Vec<Vec<u8>> = vec![Vec::new()];
            for len in 1..=3u32 {
                for n in 0..4u32.pow(len) {
                    keys.push((0..len).map(|i| ((n >> (2 * i)) & 3) as u8).collect());
                }
            }
            let in_range = |k: &Vec<u8>| *k >= start && (end.is_empty() || *k < end);
            let by_keys = keys.iter().filter(|k| in_range(k)).all(|k| p.allows_key("k", k, false));
            let empty = !end.is_empty() && start >= end;
            if !empty {
                prop_assert_eq!(p.allows_range("k", &start, &end), by_keys);
            }
        }

        #[test]
        fn read_never_implies_write(prefix in prop::collection::vec(any::<u8>(), 0..4),
                                    key in prop::collection::vec(any::<u8>(), 1..6)) {
            let p = perms(vec![Grant { keyspace: "k".into(), prefix: prefix.clone(), access: Access::Read }]);
            prop_assert!(!p.allows_key("k", &key, true));
            prop_assert_eq!(p.allows_key("k", &key, false), key.starts_with(&prefix));
        }
    }

    #[test]
    fn changes_validate_and_refuse_lockout() {
        let admin = Token::generate(&mut rand::rngs::OsRng);
        let c = AuthConfig::bootstrap(admin.entry(0, None));
        let c = c
            .apply(&AuthChange::CreateRole {
                name: "reader".into(),
                admin: false,
            })
            .unwrap();
        let c = c
            .apply(&AuthChange::Grant {
                role: "reader".into(),
                grant: grant("", "p/", Access::Read),
            })
            .unwrap();
        assert_eq!(c.roles["reader"].grants[0].keyspace, "default");
        // Upgrading replaces; granting the same again is refused.
        let up = c
            .apply(&AuthChange::Grant {
                role: "reader".into(),
                grant: grant("default", "p/", Access::ReadWrite),
            })
            .unwrap();
        assert_eq!(up.roles["reader"].grants.len(), 1);
        assert_eq!(up.roles["reader"].grants[0].access, Access::ReadWrite);
        assert!(up
            .apply(&AuthChange::Grant {
                role: "reader".into(),
                grant: grant("default", "p/", Access::ReadWrite),
            })
            .is_err());
        let c = c
            .apply(&AuthChange::CreateUser {
                name: "bob".into(),
                roles: vec!["reader".into()],
                token: None,
            })
            .unwrap();
        for bad in [
            AuthChange::CreateUser {
                name: "bob".into(),
                roles: vec![],
                token: None,
            },
            AuthChange::CreateUser {
                name: "carl".into(),
                roles: vec!["nope".into()],
                token: None,
            },
            AuthChange::CreateUser {
                name: "has space".into(),
                roles: vec![],
                token: None,
            },
            AuthChange::DeleteRole {
                name: "reader".into(),
            },
            AuthChange::DeleteUser {
                name: "admin".into(),
            },
            AuthChange::SetUserRoles {
                name: "admin".into(),
                roles: vec!["reader".into()],
            },
            AuthChange::RevokeToken {
                id: admin.id.clone(),
            },
            AuthChange::IssueToken {
                user: "bob".into(),
                token: admin.entry(0, None),
            },
            AuthChange::RevokeGrant {
                role: "reader".into(),
                keyspace: "default".into(),
                prefix: b"q/".to_vec(),
            },
            AuthChange::Grant {
                role: "reader".into(),
                grant: grant("bad name", "", Access::Read),
            },
        ] {
            let e = c.apply(&bad);
            assert!(matches!(e, Err(MapError::Invalid(_))), "{bad:?}: {e:?}");
        }
        let gone = c
            .apply(&AuthChange::RevokeGrant {
                role: "reader".into(),
                keyspace: "".into(),
                prefix: b"p/".to_vec(),
            })
            .unwrap();
        assert!(gone.roles["reader"].grants.is_empty());
        // With auth off the lockout check does not apply.
        let off = c.apply(&AuthChange::SetEnabled { enabled: false }).unwrap();
        assert!(off
            .apply(&AuthChange::DeleteUser {
                name: "admin".into()
            })
            .is_ok());
        let empty = AuthConfig::default();
        assert!(empty
            .apply(&AuthChange::SetEnabled { enabled: true })
            .is_err());
    }

    #[test]
    fn tables_are_bounded() {
        let admin = Token::generate(&mut rand::rngs::OsRng);
        let mut c = AuthConfig::bootstrap(admin.entry(0, None));
        for i in 0..MAX_TOKENS_PER_USER - 1 {
            let t = Token::generate(&mut rand::rngs::OsRng);
            c = c
                .apply(&AuthChange::IssueToken {
                    user: "admin".into(),
                    token: t.entry(i as u64, None),
                })
                .unwrap();
        }
        let e = c
            .apply(&AuthChange::IssueToken {
                user: "admin".into(),
                token: Token::generate(&mut rand::rngs::OsRng).entry(0, None),
            })
            .unwrap_err();
        assert!(e.to_string().contains("most tokens"), "{e}");
        c = c
            .apply(&AuthChange::CreateRole {
                name: "r".into(),
                admin: false,
            })
            .unwrap();
        for i in 0..MAX_GRANTS_PER_ROLE {
            c = c
                .apply(&AuthChange::Grant {
                    role: "r".into(),
                    grant: grant("k", &format!("{i}/"), Access::Read),
                })
                .unwrap();
        }
        let e = c
            .apply(&AuthChange::Grant {
                role: "r".into(),
                grant: grant("k", "x/", Access::Read),
            })
            .unwrap_err();
        assert!(e.to_string().contains("most grants"), "{e}");
    }
}
