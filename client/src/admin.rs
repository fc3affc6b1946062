//! Keyspace and directory administration: the router's `Admin` service, as methods on
//! [`Client`]. Their retry rules and error codes are documented on that `impl Client` block,
//! where rustdoc shows them.
//!
//! [`KeyspaceSpec::check`] refuses obviously malformed specs before anything is sent (with
//! [`Error::InvalidArgument`] and no code); the router validates everything again.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use kv_proto::kv;

use crate::{Client, Error};

/// How a keyspace maps keys to shard groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Consistent hashing: keys spread evenly over the groups; scans visit every group.
    Hash,
    /// Sorted split keys: each group holds one contiguous key range.
    Range,
    /// An explicit table from a key's directory (its prefix up to a separator) to a group,
    /// with a hash or range fallback for directories not in the table.
    Directory,
}

impl Strategy {
    /// The name the API uses: `hash`, `range` or `directory`.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Hash => "hash",
            Strategy::Range => "range",
            Strategy::Directory => "directory",
        }
    }

    /// Parses a directory keyspace's fallback: `hash` or `range`.
    pub fn parse_fallback(text: &str) -> Result<Strategy, Error> {
        match text {
            "hash" => Ok(Strategy::Hash),
            "range" => Ok(Strategy::Range),
            other => Err(Error::invalid(format!(
                "unknown fallback {other:?}: expected hash or range"
            ))),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = Error;

    /// `hash`, `range` or `directory`; anything else is [`Error::InvalidArgument`].
    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "hash" => Ok(Strategy::Hash),
            "range" => Ok(Strategy::Range),
            "directory" => Ok(Strategy::Directory),
            other => Err(Error::invalid(format!(
                "unknown strategy {other:?}: expected hash, range or directory"
            ))),
        }
    }
}

/// What [`Client::create_keyspace`] asks for. Start from [`KeyspaceSpec::hash`],
/// [`KeyspaceSpec::range`] or [`KeyspaceSpec::directory`] and add options with the `with_`
/// methods; zero or empty fields mean "the server's default".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyspaceSpec {
    /// Letters, digits, `-`, `_` and `.`; at most 64 bytes.
    pub name: String,
    /// How keys map to groups.
    pub strategy: Strategy,
    /// Hash (or a directory's hash fallback): the number of groups.
    pub shards: u32,
    /// Range (or a directory's range fallback): sorted, distinct, non-empty split keys;
    /// `n` split points make `n + 1` groups.
    pub split_points: Vec<Bytes>,
    /// Hash: virtual nodes per group; 0 means the server's default (256).
    pub vnodes: u32,
    /// Directory: the strategy of keys whose directory has no entry (hash or range).
    pub fallback: Option<Strategy>,
    /// Directory: what ends a key's directory; empty means `/`.
    pub separator: Bytes,
    /// Replicas per group: 1, 3 or 5; 0 means the server's default (3).
    pub replication: u32,
}

impl KeyspaceSpec {
    fn new(name: impl Into<String>, strategy: Strategy) -> Self {
        KeyspaceSpec {
            name: name.into(),
            strategy,
            shards: 0,
            split_points: Vec::new(),
            vnodes: 0,
            fallback: None,
            separator: Bytes::new(),
            replication: 0,
        }
    }

    /// A hash keyspace of `shards` groups.
    pub fn hash(name: impl Into<String>, shards: u32) -> Self {
        Self::new(name, Strategy::Hash).with_shards(shards)
    }

    /// A range keyspace split at `split_points` (one group more than split points).
    pub fn range(
        name: impl Into<String>,
        split_points: impl IntoIterator<Item = impl Into<Bytes>>,
    ) -> Self {
        Self::new(name, Strategy::Range).with_split_points(split_points)
    }

    /// A directory keyspace with the given fallback; add `with_shards` (hash fallback) or
    /// `with_split_points` (range fallback).
    pub fn directory(name: impl Into<String>, fallback: Strategy) -> Self {
        let mut spec = Self::new(name, Strategy::Directory);
        spec.fallback = Some(fallback);
        spec
    }

    /// Sets the number of groups (hash, or a directory's hash fallback).
    pub fn with_shards(mut self, shards: u32) -> Self {
        self.shards = shards;
        self
    }

    /// Sets the split keys (range, or a directory's range fallback).
    pub fn with_split_points(
        mut self,
        split_points: impl IntoIterator<Item = impl Into<Bytes>>,
    ) -> Self {
        self.split_points = split_points.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the virtual nodes per group (hash).
    pub fn with_vnodes(mut self, vnodes: u32) -> Self {
        self.vnodes = vnodes;
        self
    }

    /// Sets the replicas per group (1, 3 or 5).
    pub fn with_replication(mut self, replication: u32) -> Self {
        self.replication = replication;
        self
    }

    /// Sets what ends a key's directory (directory).
    pub fn with_separator(mut self, separator: impl Into<Bytes>) -> Self {
        self.separator = separator.into();
        self
    }

    /// Refuses specs that are malformed on their face, with [`Error::InvalidArgument`]:
    /// options that do not apply to the strategy, a missing shard count or fallback,
    /// unsorted or duplicate split points, a replication other than 1, 3 or 5.
    /// [`Client::create_keyspace`] calls it before sending; the router checks everything
    /// (names, limits) again.
    pub fn check(&self) -> Result<(), Error> {
        if self.name.is_empty() {
            return Err(Error::invalid("keyspace name must not be empty"));
        }
        if !matches!(self.replication, 0 | 1 | 3 | 5) {
            return Err(Error::invalid(format!(
                "replication must be 1, 3 or 5, not {}",
                self.replication
            )));
        }
        let base = match (self.strategy, self.fallback) {
            (Strategy::Directory, None) => {
                return Err(Error::invalid(
                    "a directory keyspace needs a fallback: hash or range",
                ))
            }
            (Strategy::Directory, Some(Strategy::Directory)) => {
                return Err(Error::invalid(
                    "a directory keyspace's fallback must be hash or range",
                ))
            }
            (Strategy::Directory, Some(fallback)) => fallback,
            (strategy, Some(_)) => {
                return Err(Error::invalid(format!(
                    "a fallback applies to directory keyspaces, not {strategy}"
                )))
            }
            (strategy, None) => strategy,
        };
        if self.strategy != Strategy::Directory && !self.separator.is_empty() {
            return Err(Error::invalid(format!(
                "a separator applies to directory keyspaces, not {}",
                self.strategy
            )));
        }
        let what = if self.strategy == Strategy::Directory {
            format!("a directory keyspace with a {base} fallback")
        } else {
            format!("a {base} keyspace")
        };
        match base {
            Strategy::Hash => {
                if self.shards == 0 {
                    return Err(Error::invalid(format!(
                        "{what} needs a number of shards of at least 1"
                    )));
                }
                if !self.split_points.is_empty() {
                    return Err(Error::invalid(format!(
                        "{what} takes a number of shards, not split points"
                    )));
                }
            }
            Strategy::Range => {
                if self.vnodes != 0 {
                    return Err(Error::invalid(format!(
                        "{what} has no virtual nodes (they apply to hash)"
                    )));
                }
                check_split_points(&self.split_points)?;
                let groups = self.split_points.len() + 1;
                if self.shards != 0 && self.shards as usize != groups {
                    return Err(Error::invalid(format!(
                        "{} split points make {groups} ranges; do not also give {} shards",
                        self.split_points.len(),
                        self.shards
                    )));
                }
            }
            Strategy::Directory => unreachable!("the fallback was checked above"),
        }
        Ok(())
    }

    fn to_proto(&self) -> kv::KeyspaceSpec {
        kv::KeyspaceSpec {
            name: self.name.clone(),
            strategy: self.strategy.as_str().to_owned(),
            shards: self.shards,
            split_points: self.split_points.clone(),
            vnodes: self.vnodes,
            fallback: self
                .fallback
                .map(|f| f.as_str().to_owned())
                .unwrap_or_default(),
            separator: self.separator.clone(),
            replication: self.replication,
        }
    }
}

fn check_split_points(points: &[Bytes]) -> Result<(), Error> {
    if points.iter().any(|p| p.is_empty()) {
        return Err(Error::invalid("split points must not be empty keys"));
    }
    for pair in points.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a == b {
            return Err(Error::invalid(format!(
                "duplicate split point {:?}",
                String::from_utf8_lossy(a)
            )));
        }
        if a > b {
            return Err(Error::invalid(format!(
                "split points must be sorted: {:?} comes after {:?}",
                String::from_utf8_lossy(b),
                String::from_utf8_lossy(a)
            )));
        }
    }
    Ok(())
}

/// A keyspace as the router's map describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyspaceInfo {
    /// The keyspace's name.
    pub name: String,
    /// `hash`, `range` or `directory`, as the server spells it (parse with
    /// [`Strategy::from_str`]).
    pub strategy: String,
    /// Replicas per group.
    pub replication: u32,
    /// The keyspace's shard groups.
    pub groups: Vec<ShardGroup>,
    /// Directory keyspaces: the fallback strategy (`hash` or `range`); empty otherwise.
    pub fallback: String,
    /// Directory keyspaces: what ends a key's directory.
    pub separator: Bytes,
    /// Directory keyspaces: the table, directory to group.
    pub directory: Vec<DirectoryEntry>,
    /// Hash keyspaces (and hash fallbacks): virtual nodes per group.
    pub vnodes: u32,
    /// The map epoch at which the keyspace's key-to-group mapping last changed.
    pub epoch: u64,
}

impl KeyspaceInfo {
    /// The strategy that places keys without a directory entry: the strategy itself, or a
    /// directory keyspace's fallback. `None` when the server named one this client does not
    /// know.
    pub fn placement(&self) -> Option<Strategy> {
        match self.strategy.parse().ok()? {
            Strategy::Directory => Strategy::parse_fallback(&self.fallback).ok(),
            other => Some(other),
        }
    }
}

impl From<kv::KeyspaceInfo> for KeyspaceInfo {
    fn from(k: kv::KeyspaceInfo) -> Self {
        KeyspaceInfo {
            name: k.name,
            strategy: k.strategy,
            replication: k.replication,
            groups: k.groups.into_iter().map(ShardGroup::from).collect(),
            fallback: k.fallback,
            separator: k.separator,
            directory: k.directory.into_iter().map(DirectoryEntry::from).collect(),
            vnodes: k.vnodes,
            epoch: k.epoch,
        }
    }
}

/// One shard group of a keyspace.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardGroup {
    /// The group id.
    pub id: u64,
    /// The node ids of its replicas.
    pub replicas: Vec<u64>,
    /// The leader's node id as last seen by the router; 0 when unknown.
    pub leader: u64,
    /// Range placement: the group's range `[range_start, range_end)`; an empty bound is open.
    pub range_start: Bytes,
    /// See `range_start`.
    pub range_end: Bytes,
    /// Hash placement: the group's share of the ring, in percent.
    pub ring_share_percent: f64,
}

impl From<kv::ShardGroup> for ShardGroup {
    fn from(g: kv::ShardGroup) -> Self {
        ShardGroup {
            id: g.id,
            replicas: g.replicas,
            leader: g.leader,
            range_start: g.range_start,
            range_end: g.range_end,
            ring_share_percent: g.ring_share_percent,
        }
    }
}

/// One entry of a directory keyspace's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEntry {
    /// The directory (a key prefix up to, not including, the separator).
    pub directory: Bytes,
    /// The group its keys go to.
    pub group_id: u64,
}

impl From<kv::DirectoryEntry> for DirectoryEntry {
    fn from(e: kv::DirectoryEntry) -> Self {
        DirectoryEntry {
            directory: e.directory,
            group_id: e.group_id,
        }
    }
}

/// What [`Client::get_directory`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectoryLookup {
    /// Whether the directory has an entry in the table.
    pub found: bool,
    /// The entry's group; without an entry, the fallback's group when one group holds the
    /// whole directory (range fallback); `None` when the directory's keys spread over groups.
    pub group_id: Option<u64>,
}

fn missing(what: &str) -> Error {
    Error::Server {
        status: tonic::Code::Internal,
        code: None,
        message: format!("the router answered without {what}"),
    }
}

/// Keyspace and directory administration.
///
/// These calls go through the same retry loop as data calls: they retry transport errors,
/// `UNAVAILABLE` and a map that changed under them (`STALE_EPOCH`), and never
/// `INVALID_ARGUMENT`, `ALREADY_EXISTS` or `FAILED_PRECONDITION`.
///
/// Errors worth branching on (use [`Error::code`], never the message):
///
/// | failure | variant | code |
/// | --- | --- | --- |
/// | a keyspace of that name exists | [`Error::AlreadyExists`] | `KEYSPACE_EXISTS` |
/// | unknown keyspace | [`Error::InvalidArgument`] | `UNKNOWN_KEYSPACE` |
/// | a spec or change the map refuses | [`Error::InvalidArgument`] | `INVALID_MAP_CHANGE` |
/// | dropping a keyspace that holds keys without `force` | [`Error::FailedPrecondition`] | `KEYSPACE_NOT_EMPTY` |
/// | moving a directory that holds keys | [`Error::FailedPrecondition`] | `DIRECTORY_NOT_EMPTY` |
impl Client {
    /// Creates a keyspace and its shard groups; returns it as the map now holds it.
    ///
    /// A malformed spec fails before anything is sent ([`KeyspaceSpec::check`]). An existing
    /// name fails with [`Error::AlreadyExists`] (`KEYSPACE_EXISTS`), also when a retry after
    /// an unknown outcome finds the keyspace its first attempt created.
    pub async fn create_keyspace(&self, spec: &KeyspaceSpec) -> Result<KeyspaceInfo, Error> {
        spec.check()?;
        let req = kv::CreateKeyspaceRequest {
            spec: Some(spec.to_proto()),
        };
        let resp = self
            .admin_call(req, |mut c, r| async move { c.create_keyspace(r).await })
            .await?;
        resp.keyspace
            .map(KeyspaceInfo::from)
            .ok_or_else(|| missing("the keyspace"))
    }

    /// Drops a keyspace and its groups; returns the new map epoch. Without `force` a keyspace
    /// that still holds keys is refused ([`Error::FailedPrecondition`], `KEYSPACE_NOT_EMPTY`);
    /// with it, its keys are lost.
    pub async fn drop_keyspace(&self, name: &str, force: bool) -> Result<u64, Error> {
        if name.is_empty() {
            return Err(Error::invalid("keyspace name must not be empty"));
        }
        let req = kv::DropKeyspaceRequest {
            name: name.to_owned(),
            force,
        };
        let resp = self
            .admin_call(req, |mut c, r| async move { c.drop_keyspace(r).await })
            .await?;
        Ok(resp.epoch)
    }

    /// Every keyspace, the default one included.
    pub async fn list_keyspaces(&self) -> Result<Vec<KeyspaceInfo>, Error> {
        let resp = self
            .admin_call(kv::ListKeyspacesRequest {}, |mut c, r| async move {
                c.list_keyspaces(r).await
            })
            .await?;
        Ok(resp.keyspaces.into_iter().map(KeyspaceInfo::from).collect())
    }

    /// One keyspace; an unknown name is [`Error::InvalidArgument`] (`UNKNOWN_KEYSPACE`).
    pub async fn describe_keyspace(&self, name: &str) -> Result<KeyspaceInfo, Error> {
        let req = kv::DescribeKeyspaceRequest {
            name: name.to_owned(),
        };
        let resp = self
            .admin_call(req, |mut c, r| async move { c.describe_keyspace(r).await })
            .await?;
        resp.keyspace
            .map(KeyspaceInfo::from)
            .ok_or_else(|| missing("the keyspace"))
    }

    /// Maps a directory of a directory keyspace to one of its groups; returns the new map
    /// epoch. Moving a directory that holds keys is refused ([`Error::FailedPrecondition`],
    /// `DIRECTORY_NOT_EMPTY`). Setting the entry it already has succeeds.
    pub async fn set_directory(
        &self,
        keyspace: &str,
        directory: impl Into<Bytes>,
        group_id: u64,
    ) -> Result<u64, Error> {
        let req = kv::SetDirectoryRequest {
            keyspace: keyspace.to_owned(),
            directory: non_empty_directory(directory.into())?,
            group_id,
        };
        let resp = self
            .admin_call(req, |mut c, r| async move { c.set_directory(r).await })
            .await?;
        Ok(resp.epoch)
    }

    /// Where a directory's keys go: its entry, or what the fallback does with it.
    pub async fn get_directory(
        &self,
        keyspace: &str,
        directory: impl Into<Bytes>,
    ) -> Result<DirectoryLookup, Error> {
        let req = kv::GetDirectoryRequest {
            keyspace: keyspace.to_owned(),
            directory: non_empty_directory(directory.into())?,
        };
        let resp = self
            .admin_call(req, |mut c, r| async move { c.get_directory(r).await })
            .await?;
        Ok(DirectoryLookup {
            found: resp.found,
            group_id: (resp.group_id != 0).then_some(resp.group_id),
        })
    }

    /// The directory table of a directory keyspace.
    pub async fn list_directory(&self, keyspace: &str) -> Result<Vec<DirectoryEntry>, Error> {
        let req = kv::ListDirectoryRequest {
            keyspace: keyspace.to_owned(),
        };
        let resp = self
            .admin_call(req, |mut c, r| async move { c.list_directory(r).await })
            .await?;
        Ok(resp.entries.into_iter().map(DirectoryEntry::from).collect())
    }

    /// Removes a directory's entry, so that its keys follow the fallback again; returns the
    /// new map epoch. Refused like [`Client::set_directory`] when that would move keys.
    pub async fn remove_directory(
        &self,
        keyspace: &str,
        directory: impl Into<Bytes>,
    ) -> Result<u64, Error> {
        let req = kv::RemoveDirectoryRequest {
            keyspace: keyspace.to_owned(),
            directory: non_empty_directory(directory.into())?,
        };
        let resp = self
            .admin_call(req, |mut c, r| async move { c.remove_directory(r).await })
            .await?;
        Ok(resp.epoch)
    }

    /// The group each key maps to under the router's current map, in the order given.
    pub async fn locate(
        &self,
        keyspace: &str,
        keys: impl IntoIterator<Item = impl Into<Bytes>>,
    ) -> Result<Vec<u64>, Error> {
        let req = kv::LocateRequest {
            keyspace: keyspace.to_owned(),
            keys: keys.into_iter().map(Into::into).collect(),
        };
        let wanted = req.keys.len();
        let resp = self
            .admin_call(req, |mut c, r| async move { c.locate(r).await })
            .await?;
        if resp.group_ids.len() != wanted {
            return Err(Error::Server {
                status: tonic::Code::Internal,
                code: None,
                message: format!(
                    "locate asked for {wanted} keys but got {} groups",
                    resp.group_ids.len()
                ),
            });
        }
        Ok(resp.group_ids)
    }
}

fn non_empty_directory(directory: Bytes) -> Result<Bytes, Error> {
    if directory.is_empty() {
        return Err(Error::invalid("directory must not be empty"));
    }
    Ok(directory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(spec: KeyspaceSpec) -> String {
        match spec.check() {
            Err(Error::InvalidArgument {
                code: None,
                message,
            }) => message,
            other => panic!("{spec:?} gave {other:?}"),
        }
    }

    #[test]
    fn strategies_parse_and_print() {
        for s in [Strategy::Hash, Strategy::Range, Strategy::Directory] {
            assert_eq!(s.as_str().parse::<Strategy>().unwrap(), s);
            assert_eq!(s.to_string(), s.as_str());
        }
        let err = "consistent".parse::<Strategy>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid argument: unknown strategy \"consistent\": expected hash, range or directory"
        );
        assert_eq!(Strategy::parse_fallback("range").unwrap(), Strategy::Range);
        assert!(Strategy::parse_fallback("directory").is_err());
    }

    #[test]
    fn good_specs_pass() {
        KeyspaceSpec::hash("a", 4).check().unwrap();
        KeyspaceSpec::hash("a", 4)
            .with_vnodes(64)
            .with_replication(1)
            .check()
            .unwrap();
        KeyspaceSpec::range("r", ["g", "p"]).check().unwrap();
        KeyspaceSpec::range("r", Vec::<Bytes>::new())
            .check()
            .unwrap();
        KeyspaceSpec::range("r", ["g"])
            .with_shards(2)
            .check()
            .unwrap();
        KeyspaceSpec::directory("d", Strategy::Hash)
            .with_shards(2)
            .with_separator(":")
            .check()
            .unwrap();
        KeyspaceSpec::directory("d", Strategy::Range)
            .with_split_points(["m"])
            .check()
            .unwrap();
    }

    #[test]
    fn malformed_specs_are_refused_locally() {
        assert!(refused(KeyspaceSpec::hash("", 1)).contains("name"));
        assert!(refused(KeyspaceSpec::hash("a", 0)).contains("at least 1"));
        assert!(refused(KeyspaceSpec::hash("a", 2).with_replication(2)).contains("1, 3 or 5"));
        assert!(refused(KeyspaceSpec::hash("a", 2).with_split_points(["x"])).contains("not split"));
        assert!(refused(KeyspaceSpec::hash("a", 2).with_separator("/")).contains("separator"));
        assert!(refused(KeyspaceSpec::range("r", ["b", "a"])).contains("sorted"));
        assert!(refused(KeyspaceSpec::range("r", ["a", "a"])).contains("duplicate"));
        assert!(refused(KeyspaceSpec::range("r", ["a", ""])).contains("empty"));
        assert!(refused(KeyspaceSpec::range("r", ["a"]).with_shards(5)).contains("2 ranges"));
        assert!(refused(KeyspaceSpec::range("r", ["a"]).with_vnodes(5)).contains("virtual"));
        let mut with_fallback = KeyspaceSpec::hash("a", 2);
        with_fallback.fallback = Some(Strategy::Range);
        assert!(refused(with_fallback).contains("fallback"));
        let mut no_fallback = KeyspaceSpec::directory("d", Strategy::Hash).with_shards(1);
        no_fallback.fallback = None;
        assert!(refused(no_fallback).contains("needs a fallback"));
        assert!(refused(KeyspaceSpec::directory("d", Strategy::Directory)).contains("fallback"));
        assert!(refused(KeyspaceSpec::directory("d", Strategy::Hash)).contains("hash fallback"));
    }

    #[test]
    fn spec_to_proto() {
        let p = KeyspaceSpec::directory("d", Strategy::Range)
            .with_split_points(["m"])
            .with_separator(":")
            .with_replication(5)
            .to_proto();
        assert_eq!(p.name, "d");
        assert_eq!(p.strategy, "directory");
        assert_eq!(p.fallback, "range");
        assert_eq!(p.split_points, vec![Bytes::from_static(b"m")]);
        assert_eq!(p.separator, ":");
        assert_eq!(p.replication, 5);
        assert_eq!(KeyspaceSpec::hash("h", 3).to_proto().fallback, "");
    }

    #[test]
    fn placement_follows_the_fallback() {
        let info = |strategy: &str, fallback: &str| KeyspaceInfo {
            name: "k".into(),
            strategy: strategy.into(),
            replication: 3,
            groups: vec![],
            fallback: fallback.into(),
            separator: Bytes::new(),
            directory: vec![],
            vnodes: 0,
            epoch: 1,
        };
        assert_eq!(info("hash", "").placement(), Some(Strategy::Hash));
        assert_eq!(
            info("directory", "range").placement(),
            Some(Strategy::Range)
        );
        assert_eq!(info("consistent", "").placement(), None);
    }

    #[tokio::test]
    async fn admin_checks_fail_fast() {
        let c = Client::connect(["127.0.0.1:1"]).unwrap();
        let err = c
            .create_keyspace(&KeyspaceSpec::hash("a", 0))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { code: None, .. }));
        let err = c.set_directory("d", "", 1).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { code: None, .. }));
        let err = c.drop_keyspace("", false).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { code: None, .. }));
    }
}
