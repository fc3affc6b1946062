//! Sessions: read-your-writes on eventual reads.
//!
//! A [`Session`] carries a [`SessionToken`], the highest version (Raft log index) it has seen
//! in each shard group. Every call through the session sends the token, and every answer's
//! token is merged back in (highest version per group). An eventual read is then served only
//! by a replica that has applied at least the token's version for its group, so it sees every
//! write made and every version read through the session before, even when it lands on
//! another replica than the write.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::{Stream, TryStreamExt};
use kv_proto::kv;

use crate::{
    Client, DeleteOutcome, Error, KeyValue, ReadOptions, ScanOptions, ScanPage, Versioned,
    WriteOptions,
};

/// The highest version seen per shard group. Serializable as a plain map, so that a session can
/// be handed to another process (e.g. in a cookie) and continued with
/// [`Client::session_from`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionToken {
    /// Group id to the highest version seen in it.
    pub versions: BTreeMap<u64, u64>,
}

impl SessionToken {
    /// The version seen in `group` (0: none).
    pub fn version(&self, group: u64) -> u64 {
        self.versions.get(&group).copied().unwrap_or(0)
    }

    /// Raises each group's version to `other`'s where that is higher.
    pub fn merge(&mut self, other: &SessionToken) {
        for (group, version) in &other.versions {
            self.observe(*group, *version);
        }
    }

    /// Raises `group`'s version to `version` if that is higher (0 is nothing seen).
    pub fn observe(&mut self, group: u64, version: u64) {
        if version == 0 {
            return;
        }
        let entry = self.versions.entry(group).or_insert(0);
        *entry = (*entry).max(version);
    }

    fn to_proto(&self) -> kv::SessionToken {
        kv::SessionToken {
            versions: self.versions.iter().map(|(g, v)| (*g, *v)).collect(),
        }
    }

    fn from_proto(token: &kv::SessionToken) -> SessionToken {
        SessionToken {
            versions: token.versions.iter().map(|(g, v)| (*g, *v)).collect(),
        }
    }
}

/// A client handle that carries a session token ([`Client::session`]). Cheap to clone; clones
/// share the token, so a session may be used from several tasks (each call sends the token as
/// it is when the call starts).
#[derive(Debug, Clone)]
pub struct Session {
    client: Client,
    token: Arc<Mutex<SessionToken>>,
}

impl Session {
    pub(crate) fn new(client: Client, token: SessionToken) -> Session {
        Session {
            client,
            token: Arc::new(Mutex::new(token)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SessionToken> {
        self.token.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session's token now.
    pub fn token(&self) -> SessionToken {
        self.lock().clone()
    }

    /// The client the session calls through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn to_proto(&self) -> kv::SessionToken {
        self.lock().to_proto()
    }

    pub(crate) fn absorb(&self, token: &kv::SessionToken) {
        self.lock().merge(&SessionToken::from_proto(token));
    }

    /// As [`Client::get`], within the session.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Versioned>, Error> {
        self.get_with(key, &ReadOptions::default()).await
    }

    /// As [`Client::get_with`], within the session.
    pub async fn get_with(
        &self,
        key: impl Into<Bytes>,
        options: &ReadOptions,
    ) -> Result<Option<Versioned>, Error> {
        self.client.get_in(key.into(), options, Some(self)).await
    }

    /// As [`Client::put`], within the session.
    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<u64, Error> {
        self.put_with(key, value, &WriteOptions::default()).await
    }

    /// As [`Client::put_with`], within the session.
    pub async fn put_with(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        options: &WriteOptions,
    ) -> Result<u64, Error> {
        self.client
            .put_in(key.into(), value.into(), options, Some(self))
            .await
    }

    /// As [`Client::delete`], within the session.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<DeleteOutcome, Error> {
        self.delete_with(key, &WriteOptions::default()).await
    }

    /// As [`Client::delete_with`], within the session.
    pub async fn delete_with(
        &self,
        key: impl Into<Bytes>,
        options: &WriteOptions,
    ) -> Result<DeleteOutcome, Error> {
        self.client.delete_in(key.into(), options, Some(self)).await
    }

    /// As [`Client::scan`], within the session.
    pub async fn scan(
        &self,
        start: impl Into<Bytes>,
        end: impl Into<Bytes>,
        options: &ScanOptions,
    ) -> Result<ScanPage, Error> {
        self.client
            .scan_page(start.into(), end.into(), options.limit, options, Some(self))
            .await
    }

    /// As [`Client::scan_all`], within the session.
    pub async fn scan_all(
        &self,
        start: impl Into<Bytes>,
        end: impl Into<Bytes>,
        options: &ScanOptions,
    ) -> Result<Vec<KeyValue>, Error> {
        self.client
            .scan_pages(start.into(), end.into(), options, Some(self))
            .try_collect()
            .await
    }

    /// As [`Client::scan_stream`], within the session.
    pub fn scan_stream<'a>(
        &'a self,
        start: impl Into<Bytes>,
        end: impl Into<Bytes>,
        options: &'a ScanOptions,
    ) -> impl Stream<Item = Result<KeyValue, Error>> + 'a {
        self.client
            .scan_pages(start.into(), end.into(), options, Some(self))
    }

    /// As [`Client::batch_get`], within the session.
    pub async fn batch_get(
        &self,
        keys: impl IntoIterator<Item = impl Into<Bytes>>,
        options: &ReadOptions,
    ) -> Result<Vec<Option<Versioned>>, Error> {
        let keys = keys.into_iter().map(Into::into).collect();
        self.client.batch_get_in(keys, options, Some(self)).await
    }

    /// As [`Client::batch_put`], within the session.
    pub async fn batch_put(
        &self,
        kvs: impl IntoIterator<Item = (impl Into<Bytes>, impl Into<Bytes>)>,
        options: &WriteOptions,
    ) -> Result<Vec<u64>, Error> {
        let kvs = kvs
            .into_iter()
            .map(|(key, value)| (key.into(), value.into()))
            .collect();
        self.client.batch_put_in(kvs, options, Some(self)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_merge_to_the_highest_version_per_group() {
        let mut t = SessionToken::default();
        t.observe(1, 5);
        t.observe(1, 3);
        t.observe(2, 0);
        assert_eq!(t.version(1), 5);
        assert_eq!(t.version(2), 0);
        let other = SessionToken {
            versions: [(1, 4), (2, 9)].into_iter().collect(),
        };
        t.merge(&other);
        assert_eq!(t.versions, [(1, 5), (2, 9)].into_iter().collect());
        let round = SessionToken::from_proto(&t.to_proto());
        assert_eq!(round, t);
    }

    #[tokio::test]
    async fn a_session_merges_every_answer() {
        let session = Client::connect(["127.0.0.1:1"]).unwrap().session();
        session.absorb(&kv::SessionToken {
            versions: [(3, 10)].into_iter().collect(),
        });
        session.absorb(&kv::SessionToken {
            versions: [(3, 7), (4, 1)].into_iter().collect(),
        });
        assert_eq!(
            session.token().versions,
            [(3, 10), (4, 1)].into_iter().collect()
        );
        assert_eq!(session.clone().to_proto().versions.get(&3), Some(&10));
    }
}
