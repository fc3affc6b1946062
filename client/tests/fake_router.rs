//! The client against an in-process fake router: real tonic `Kv` and `Admin` servers on
//! loopback over an in-memory map, with injected failures. Checks what unit tests cannot: metadata survives the
//! wire, retries and router rotation happen, paging ends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kv_proto::kv::admin_server::{Admin, AdminServer};
use kv_proto::kv::kv_server::{Kv, KvServer};
use kv_proto::kv::{self, KeyValue as PbKeyValue};
use kv_proto::{codes, meta};
use kvclient::{
    Client, ClientOptions, Error, KeyspaceSpec, ReadOptions, ScanOptions, Strategy, WriteOptions,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

#[derive(Default)]
struct State {
    // A std Mutex: held only for map operations, never across an await.
    data: Mutex<BTreeMap<Bytes, (Bytes, u64)>>,
    index: AtomicU64,
    /// Answer this many calls with UNAVAILABLE before serving.
    fail_next: AtomicU32,
    /// Sleep this long before answering.
    delay_ms: AtomicU64,
    calls: AtomicU32,
    /// Most keys per scan page.
    page: AtomicU32,
    /// The admin service's keyspaces, and the map epoch.
    keyspaces: Mutex<BTreeMap<String, kv::KeyspaceInfo>>,
    epoch: AtomicU64,
    /// Answer `Multi` with UNIMPLEMENTED, as a router that predates it.
    no_multi: std::sync::atomic::AtomicBool,
    /// `Multi` RPCs received.
    multis: AtomicU32,
    /// The `authorization` header of each unary Get, MultiStream and WhoAmI received.
    authorizations: Mutex<Vec<String>>,
}

#[derive(Clone)]
struct Fake(Arc<State>);

fn coded(code: tonic::Code, error_code: &'static str, message: &str) -> Status {
    let mut s = Status::new(code, message);
    s.metadata_mut()
        .insert(meta::ERROR_CODE, error_code.parse().unwrap());
    s
}

impl Fake {
    /// Records a request's `authorization` header (empty when absent) and returns it.
    fn saw_authorization<T>(&self, r: &Request<T>) -> String {
        let value = r
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        self.0.authorizations.lock().unwrap().push(value.clone());
        value
    }

    async fn enter(&self) -> Result<(), Status> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        let delay = self.0.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let failing = self
            .0
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(coded(
                tonic::Code::Unavailable,
                codes::NO_QUORUM,
                "no quorum",
            ));
        }
        Ok(())
    }

    fn check_key(key: &[u8]) -> Result<(), Status> {
        if key.is_empty() {
            return Err(coded(
                tonic::Code::InvalidArgument,
                codes::INVALID_KEY,
                "key must not be empty",
            ));
        }
        Ok(())
    }

    fn check_version(current: u64, expected: Option<u64>) -> Result<(), Status> {
        match expected {
            Some(want) if want != current => {
                let mut s = coded(
                    tonic::Code::FailedPrecondition,
                    codes::CONDITION_FAILED,
                    "version mismatch",
                );
                s.metadata_mut()
                    .insert(meta::CURRENT_VERSION, current.to_string().parse().unwrap());
                Err(s)
            }
            _ => Ok(()),
        }
    }

    fn read(&self, key: &Bytes) -> kv::GetResponse {
        let data = self.0.data.lock().unwrap();
        match data.get(key) {
            Some((value, version)) => kv::GetResponse {
                found: true,
                key: key.clone(),
                value: value.clone(),
                version: *version,
                group_id: 1,
                served_by: 1,
                applied_index: self.0.index.load(Ordering::SeqCst),
                ..Default::default()
            },
            None => kv::GetResponse::default(),
        }
    }
}

#[tonic::async_trait]
impl Kv for Fake {
    async fn multi(
        &self,
        r: Request<kv::MultiRequest>,
    ) -> Result<Response<kv::MultiResponse>, Status> {
        if self.0.no_multi.load(Ordering::SeqCst) {
            return Err(Status::unimplemented("Multi is not served here"));
        }
        self.0.multis.fetch_add(1, Ordering::SeqCst);
        kv_proto::multi::serve_kv(self, r).await.map(Response::new)
    }

    type MultiStreamStream = kv_proto::multi::Inbound<kv::MultiResponse>;

    async fn multi_stream(
        &self,
        r: Request<tonic::Streaming<kv::MultiRequest>>,
    ) -> Result<Response<Self::MultiStreamStream>, Status> {
        if self.0.no_multi.load(Ordering::SeqCst) {
            return Err(Status::unimplemented("MultiStream is not served here"));
        }
        self.0.multis.fetch_add(1, Ordering::SeqCst);
        self.saw_authorization(&r);
        Ok(Response::new(kv_proto::multi::serve_kv_stream(
            self.clone(),
            r,
        )))
    }

    async fn get(&self, r: Request<kv::GetRequest>) -> Result<Response<kv::GetResponse>, Status> {
        // Not the calls of a MultiStream, which reach here as new requests without the
        // stream's metadata (nor its peer address).
        if r.remote_addr().is_some() {
            self.saw_authorization(&r);
        }
        self.enter().await?;
        let r = r.into_inner();
        Self::check_key(&r.key)?;
        Ok(Response::new(self.read(&r.key)))
    }

    async fn put(&self, r: Request<kv::PutRequest>) -> Result<Response<kv::PutResponse>, Status> {
        self.enter().await?;
        let r = r.into_inner();
        Self::check_key(&r.key)?;
        let mut data = self.0.data.lock().unwrap();
        let current = data.get(&r.key).map_or(0, |(_, v)| *v);
        Self::check_version(current, r.expected_version)?;
        let version = self.0.index.fetch_add(1, Ordering::SeqCst) + 1;
        data.insert(r.key, (r.value, version));
        Ok(Response::new(kv::PutResponse {
            version,
            group_id: 1,
            ..Default::default()
        }))
    }

    async fn delete(
        &self,
        r: Request<kv::DeleteRequest>,
    ) -> Result<Response<kv::DeleteResponse>, Status> {
        self.enter().await?;
        let r = r.into_inner();
        Self::check_key(&r.key)?;
        let mut data = self.0.data.lock().unwrap();
        let current = data.get(&r.key).map_or(0, |(_, v)| *v);
        Self::check_version(current, r.expected_version)?;
        let version = self.0.index.fetch_add(1, Ordering::SeqCst) + 1;
        let existed = data.remove(&r.key).is_some();
        Ok(Response::new(kv::DeleteResponse {
            existed,
            version,
            group_id: 1,
            ..Default::default()
        }))
    }

    async fn scan(
        &self,
        r: Request<kv::ScanRequest>,
    ) -> Result<Response<kv::ScanResponse>, Status> {
        self.enter().await?;
        let r = r.into_inner();
        let page = self.0.page.load(Ordering::SeqCst) as usize;
        let limit = if r.limit == 0 {
            page
        } else {
            page.min(r.limit as usize)
        };
        let data = self.0.data.lock().unwrap();
        let mut kvs = Vec::new();
        let mut more = false;
        for (key, (value, version)) in data.range(r.start.clone()..) {
            if !r.end.is_empty() && *key >= r.end {
                break;
            }
            if kvs.len() == limit {
                more = true;
                break;
            }
            kvs.push(PbKeyValue {
                key: key.clone(),
                value: if r.keys_only {
                    Bytes::new()
                } else {
                    value.clone()
                },
                version: *version,
            });
        }
        Ok(Response::new(kv::ScanResponse {
            kvs,
            more,
            ..Default::default()
        }))
    }

    async fn batch_get(
        &self,
        r: Request<kv::BatchGetRequest>,
    ) -> Result<Response<kv::BatchGetResponse>, Status> {
        self.enter().await?;
        let results = r.into_inner().keys.iter().map(|k| self.read(k)).collect();
        Ok(Response::new(kv::BatchGetResponse {
            results,
            ..Default::default()
        }))
    }

    async fn batch_put(
        &self,
        r: Request<kv::BatchPutRequest>,
    ) -> Result<Response<kv::BatchPutResponse>, Status> {
        self.enter().await?;
        let mut data = self.0.data.lock().unwrap();
        let versions = r
            .into_inner()
            .kvs
            .into_iter()
            .map(|kv| {
                let version = self.0.index.fetch_add(1, Ordering::SeqCst) + 1;
                data.insert(kv.key, (kv.value, version));
                version
            })
            .collect();
        Ok(Response::new(kv::BatchPutResponse {
            versions,
            ..Default::default()
        }))
    }
}

impl Fake {
    fn unknown_keyspace(name: &str) -> Status {
        coded(
            tonic::Code::InvalidArgument,
            codes::UNKNOWN_KEYSPACE,
            &format!("unknown keyspace {name:?}"),
        )
    }

    fn bump(&self) -> u64 {
        self.0.epoch.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn with_keyspace<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut kv::KeyspaceInfo) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let mut keyspaces = self.0.keyspaces.lock().unwrap();
        let info = keyspaces
            .get_mut(name)
            .ok_or_else(|| Self::unknown_keyspace(name))?;
        f(info)
    }
}

/// A small admin service: hash and range keyspaces with made-up groups, directory tables,
/// and the refusals whose codes the client must keep apart.
#[tonic::async_trait]
impl Admin for Fake {
    async fn create_keyspace(
        &self,
        r: Request<kv::CreateKeyspaceRequest>,
    ) -> Result<Response<kv::CreateKeyspaceResponse>, Status> {
        self.enter().await?;
        let spec = r.into_inner().spec.unwrap_or_default();
        let placement = if spec.strategy == "directory" {
            spec.fallback.as_str()
        } else {
            spec.strategy.as_str()
        };
        let groups: Vec<kv::ShardGroup> = match placement {
            "hash" => (0..spec.shards)
                .map(|i| kv::ShardGroup {
                    id: u64::from(i) + 10,
                    replicas: vec![1, 2, 3],
                    leader: 1,
                    ring_share_percent: 100.0 / f64::from(spec.shards),
                    ..Default::default()
                })
                .collect(),
            "range" => {
                let mut bounds = vec![Bytes::new()];
                bounds.extend(spec.split_points.iter().cloned());
                bounds.push(Bytes::new());
                bounds
                    .windows(2)
                    .enumerate()
                    .map(|(i, w)| kv::ShardGroup {
                        id: i as u64 + 10,
                        replicas: vec![1, 2, 3],
                        leader: 2,
                        range_start: w[0].clone(),
                        range_end: w[1].clone(),
                        ..Default::default()
                    })
                    .collect()
            }
            other => {
                return Err(coded(
                    tonic::Code::InvalidArgument,
                    codes::INVALID_MAP_CHANGE,
                    &format!("unknown strategy {other:?}"),
                ))
            }
        };
        let mut keyspaces = self.0.keyspaces.lock().unwrap();
        if keyspaces.contains_key(&spec.name) {
            return Err(coded(
                tonic::Code::AlreadyExists,
                codes::KEYSPACE_EXISTS,
                &format!("keyspace {:?} exists", spec.name),
            ));
        }
        let epoch = self.bump();
        let info = kv::KeyspaceInfo {
            name: spec.name.clone(),
            strategy: spec.strategy,
            replication: if spec.replication == 0 {
                3
            } else {
                spec.replication
            },
            groups,
            fallback: spec.fallback,
            separator: spec.separator,
            directory: vec![],
            vnodes: spec.vnodes,
            epoch,
        };
        keyspaces.insert(spec.name, info.clone());
        Ok(Response::new(kv::CreateKeyspaceResponse {
            keyspace: Some(info),
            epoch,
        }))
    }

    async fn drop_keyspace(
        &self,
        r: Request<kv::DropKeyspaceRequest>,
    ) -> Result<Response<kv::DropKeyspaceResponse>, Status> {
        self.enter().await?;
        let r = r.into_inner();
        let mut keyspaces = self.0.keyspaces.lock().unwrap();
        if !keyspaces.contains_key(&r.name) {
            return Err(Self::unknown_keyspace(&r.name));
        }
        // The fake keeps one data map: any key makes every keyspace non-empty.
        if !r.force && !self.0.data.lock().unwrap().is_empty() {
            return Err(coded(
                tonic::Code::FailedPrecondition,
                codes::KEYSPACE_NOT_EMPTY,
                &format!("keyspace {:?} still holds keys; drop it with force", r.name),
            ));
        }
        keyspaces.remove(&r.name);
        Ok(Response::new(kv::DropKeyspaceResponse {
            epoch: self.bump(),
        }))
    }

    async fn list_keyspaces(
        &self,
        _: Request<kv::ListKeyspacesRequest>,
    ) -> Result<Response<kv::ListKeyspacesResponse>, Status> {
        self.enter().await?;
        Ok(Response::new(kv::ListKeyspacesResponse {
            keyspaces: self.0.keyspaces.lock().unwrap().values().cloned().collect(),
            epoch: self.0.epoch.load(Ordering::SeqCst),
        }))
    }

    async fn describe_keyspace(
        &self,
        r: Request<kv::DescribeKeyspaceRequest>,
    ) -> Result<Response<kv::DescribeKeyspaceResponse>, Status> {
        self.enter().await?;
        let name = r.into_inner().name;
        let info = self.with_keyspace(&name, |k| Ok(k.clone()))?;
        Ok(Response::new(kv::DescribeKeyspaceResponse {
            keyspace: Some(info),
            epoch: self.0.epoch.load(Ordering::SeqCst),
        }))
    }

    async fn set_directory(
        &self,
        r: Request<kv::SetDirectoryRequest>,
    ) -> Result<Response<kv::SetDirectoryResponse>, Status> {
        self.enter().await?;
        let r = r.into_inner();
        self.with_keyspace(&r.keyspace, |k| {
            if let Some(e) = k.directory.iter_mut().find(|e| e.directory == r.directory) {
                if e.group_id != r.group_id && !self.0.data.lock().unwrap().is_empty() {
                    return Err(coded(
                        tonic::Code::FailedPrecondition,
                        codes::DIRECTORY_NOT_EMPTY,
                        "the directory holds keys",
                    ));
                }
                e.group_id = r.group_id;
            } else {
                k.directory.push(kv::DirectoryEntry {
                    directory: r.directory.clone(),
                    group_id: r.group_id,
                });
                k.directory.sort_by(|a, b| a.directory.cmp(&b.directory));
            }
            Ok(())
        })?;
        Ok(Response::new(kv::SetDirectoryResponse {
            epoch: self.bump(),
        }))
    }

    async fn get_directory(
        &self,
        r: Request<kv::GetDirectoryRequest>,
    ) -> Result<Response<kv::GetDirectoryResponse>, Status> {
        self.enter().await?;
        let r = r.into_inner();
        let group = self.with_keyspace(&r.keyspace, |k| {
            Ok(k.directory
                .iter()
                .find(|e| e.directory == r.directory)
                .map(|e| e.group_id))
        })?;
        Ok(Response::new(kv::GetDirectoryResponse {
            found: group.is_some(),
            group_id: group.unwrap_or(0),
        }))
    }

    async fn list_directory(
        &self,
        r: Request<kv::ListDirectoryRequest>,
    ) -> Result<Response<kv::ListDirectoryResponse>, Status> {
        self.enter().await?;
        let name = r.into_inner().keyspace;
        let entries = self.with_keyspace(&name, |k| Ok(k.directory.clone()))?;
        Ok(Response::new(kv::ListDirectoryResponse { entries }))
    }

    async fn remove_directory(
        &self,
        r: Request<kv::RemoveDirectoryRequest>,
    ) -> Result<Response<kv::RemoveDirectoryResponse>, Status> {
        self.enter().await?;
        let r = r.into_inner();
        self.with_keyspace(&r.keyspace, |k| {
            k.directory.retain(|e| e.directory != r.directory);
            Ok(())
        })?;
        Ok(Response::new(kv::RemoveDirectoryResponse {
            epoch: self.bump(),
        }))
    }

    async fn locate(
        &self,
        r: Request<kv::LocateRequest>,
    ) -> Result<Response<kv::LocateResponse>, Status> {
        self.enter().await?;
        let r = r.into_inner();
        let groups = self.with_keyspace(&r.keyspace, |k| Ok(k.groups.clone()))?;
        let group_ids = r
            .keys
            .iter()
            .map(|key| {
                groups
                    .iter()
                    .find(|g| {
                        (g.range_start.is_empty() || *key >= g.range_start)
                            && (g.range_end.is_empty() || *key < g.range_end)
                    })
                    .map_or(0, |g| g.id)
            })
            .collect();
        Ok(Response::new(kv::LocateResponse {
            group_ids,
            epoch: self.0.epoch.load(Ordering::SeqCst),
        }))
    }

    // Users and roles are the router's business (tests/tests/auth.rs runs them for real);
    // the fake only answers WhoAmI, with the authorization header it received.

    async fn create_user(
        &self,
        _r: Request<kv::CreateUserRequest>,
    ) -> Result<Response<kv::CreateUserResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn delete_user(
        &self,
        _r: Request<kv::DeleteUserRequest>,
    ) -> Result<Response<kv::DeleteUserResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn list_users(
        &self,
        _r: Request<kv::ListUsersRequest>,
    ) -> Result<Response<kv::ListUsersResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn set_user_roles(
        &self,
        _r: Request<kv::SetUserRolesRequest>,
    ) -> Result<Response<kv::SetUserRolesResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn issue_token(
        &self,
        _r: Request<kv::IssueTokenRequest>,
    ) -> Result<Response<kv::IssueTokenResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn revoke_token(
        &self,
        _r: Request<kv::RevokeTokenRequest>,
    ) -> Result<Response<kv::RevokeTokenResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn create_role(
        &self,
        _r: Request<kv::CreateRoleRequest>,
    ) -> Result<Response<kv::CreateRoleResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn delete_role(
        &self,
        _r: Request<kv::DeleteRoleRequest>,
    ) -> Result<Response<kv::DeleteRoleResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn list_roles(
        &self,
        _r: Request<kv::ListRolesRequest>,
    ) -> Result<Response<kv::ListRolesResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn grant(
        &self,
        _r: Request<kv::GrantRequest>,
    ) -> Result<Response<kv::GrantResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn revoke_grant(
        &self,
        _r: Request<kv::RevokeGrantRequest>,
    ) -> Result<Response<kv::RevokeGrantResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn set_auth_enabled(
        &self,
        _r: Request<kv::SetAuthEnabledRequest>,
    ) -> Result<Response<kv::SetAuthEnabledResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn who_am_i(
        &self,
        r: Request<kv::WhoAmIRequest>,
    ) -> Result<Response<kv::WhoAmIResponse>, Status> {
        Ok(Response::new(kv::WhoAmIResponse {
            user: self.saw_authorization(&r),
            ..Default::default()
        }))
    }
}

async fn start() -> (SocketAddr, Arc<State>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(State {
        page: AtomicU32::new(1000),
        ..State::default()
    });
    let service = KvServer::new(Fake(state.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .add_service(AdminServer::new(Fake(state.clone())))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, state)
}

fn fast(timeout: Duration) -> ClientOptions {
    ClientOptions {
        timeout,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        ..ClientOptions::default()
    }
}

#[tokio::test]
async fn put_get_delete_round_trip() {
    let (addr, _) = start().await;
    let client = Client::connect([addr.to_string()]).unwrap();
    assert_eq!(client.get("a").await.unwrap(), None);
    let version = client.put("a", "1").await.unwrap();
    let read = client.get("a").await.unwrap().unwrap();
    assert_eq!(
        (read.value.as_ref(), read.version),
        (b"1".as_ref(), version)
    );
    let gone = client.delete("a").await.unwrap();
    assert!(gone.existed);
    assert!(!client.delete("a").await.unwrap().existed);
}

#[tokio::test]
async fn concurrent_calls_share_multi_rpcs_and_keep_their_own_outcomes() {
    let (addr, state) = start().await;
    state.delay_ms.store(20, Ordering::SeqCst);
    let client = Client::with_options([addr.to_string()], fast(Duration::from_secs(5))).unwrap();
    let calls = (0..200u32).map(|i| {
        let client = client.clone();
        tokio::spawn(async move {
            // Every tenth call is bad input: it must fail alone, not its batch.
            let key = if i % 10 == 0 {
                String::new()
            } else {
                format!("k{i}")
            };
            (i, client.put(key, format!("v{i}")).await)
        })
    });
    let calls: Vec<_> = calls.collect();
    for call in calls {
        let (i, outcome) = call.await.unwrap();
        match outcome {
            Ok(version) => assert!(version > 0 && i % 10 != 0),
            Err(e) => assert!(
                i % 10 == 0 && matches!(e, Error::InvalidArgument { .. }),
                "call {i}: {e}"
            ),
        }
    }
    let multis = state.multis.load(Ordering::SeqCst);
    assert!(
        multis > 0 && multis < 100,
        "200 calls took {multis} Multi RPCs"
    );
    state.delay_ms.store(0, Ordering::SeqCst);
    for i in (1..200u32).filter(|i| i % 10 != 0) {
        let got = client.get(format!("k{i}")).await.unwrap().unwrap();
        assert_eq!(got.value, Bytes::from(format!("v{i}")));
    }
}

#[tokio::test]
async fn a_raw_call_stream_answers_each_call_by_id_and_refuses_empty_calls() {
    let (addr, _state) = start().await;
    let mut kv = kv::kv_client::KvClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let put = kv::Call {
        call: Some(kv::call::Call::Put(kv::PutRequest {
            key: Bytes::from("k"),
            value: Bytes::from("v"),
            ..Default::default()
        })),
        timeout_ms: 1000,
        id: 7,
    };
    let empty = kv::Call {
        call: None,
        timeout_ms: 0,
        id: 8,
    };
    let bad_key = kv::Call {
        call: Some(kv::call::Call::Get(kv::GetRequest::default())),
        timeout_ms: 1000,
        id: 9,
    };
    let outbound = tokio_stream::iter(vec![kv::MultiRequest {
        calls: vec![put, empty, bad_key],
    }]);
    let mut inbound = kv.multi_stream(outbound).await.unwrap().into_inner();
    let mut results = std::collections::HashMap::new();
    while let Some(message) = inbound.message().await.unwrap() {
        for r in message.results {
            results.insert(r.id, r.result.unwrap());
        }
    }
    assert_eq!(
        results.len(),
        3,
        "every call answered once the caller stops sending"
    );
    assert!(matches!(results[&7], kv::call_result::Result::Put(_)));
    for id in [8, 9] {
        match &results[&id] {
            kv::call_result::Result::Error(e) => {
                assert_eq!(
                    e.code,
                    tonic::Code::InvalidArgument as i32,
                    "call {id}: {e:?}"
                )
            }
            other => panic!("call {id}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_router_without_multi_gets_one_rpc_per_call() {
    let (addr, state) = start().await;
    state.no_multi.store(true, Ordering::SeqCst);
    let client = Client::with_options([addr.to_string()], fast(Duration::from_secs(5))).unwrap();
    client.put("a", "1").await.unwrap();
    assert_eq!(
        client.get("a").await.unwrap().unwrap().value,
        Bytes::from("1")
    );
    assert_eq!(state.multis.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn errors_keep_their_codes_over_the_wire() {
    let (addr, _) = start().await;
    let client = Client::connect([addr.to_string()]).unwrap();
    let err = client.put("", "1").await.unwrap_err();
    assert_eq!(err.to_string(), "invalid argument: key must not be empty");
    assert_eq!(err.code(), codes::INVALID_KEY);

    let version = client.put("k", "1").await.unwrap();
    let stale = WriteOptions {
        if_version: Some(version + 100),
        ..Default::default()
    };
    assert_eq!(
        client.put_with("k", "2", &stale).await.unwrap_err(),
        Error::ConditionFailed {
            current_version: Some(version)
        }
    );
    let create_only = WriteOptions {
        if_version: Some(0),
        ..Default::default()
    };
    assert_eq!(
        client.put_with("k", "2", &create_only).await.unwrap_err(),
        Error::ConditionFailed {
            current_version: Some(version)
        }
    );
}

#[tokio::test]
async fn unavailable_is_retried_until_it_passes() {
    let (addr, state) = start().await;
    let client = Client::with_options([addr.to_string()], fast(Duration::from_secs(5))).unwrap();
    state.fail_next.store(3, Ordering::SeqCst);
    client.put("a", "1").await.unwrap();
    assert_eq!(state.calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn retries_stop_at_max_retries() {
    let (addr, state) = start().await;
    let options = ClientOptions {
        max_retries: 2,
        ..fast(Duration::from_secs(5))
    };
    let client = Client::with_options([addr.to_string()], options).unwrap();
    state.fail_next.store(100, Ordering::SeqCst);
    let err = client.get("a").await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert_eq!(state.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn invalid_arguments_are_not_retried() {
    let (addr, state) = start().await;
    let client = Client::with_options([addr.to_string()], fast(Duration::from_secs(5))).unwrap();
    client.get("").await.unwrap_err();
    assert_eq!(state.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_dead_router_is_skipped() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let (addr, state) = start().await;
    let client = Client::with_options(
        [dead_addr.to_string(), addr.to_string()],
        fast(Duration::from_secs(5)),
    )
    .unwrap();
    client.put("a", "1").await.unwrap();
    assert_eq!(state.calls.load(Ordering::SeqCst), 1);
    // Later calls go straight to the live router.
    client.get("a").await.unwrap();
    assert_eq!(state.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_slow_router_times_out() {
    let (addr, state) = start().await;
    let client =
        Client::with_options([addr.to_string()], fast(Duration::from_millis(200))).unwrap();
    state.delay_ms.store(2_000, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let err = client.get("a").await.unwrap_err();
    assert_eq!(err, Error::Timeout);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn scan_all_pages_through_everything() {
    let (addr, state) = start().await;
    let client = Client::connect([addr.to_string()]).unwrap();
    let keys: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
    client
        .batch_put(
            keys.iter().map(|k| (k.clone(), format!("v-{k}"))),
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    state.page.store(4, Ordering::SeqCst);

    let page = client.scan("", "", &ScanOptions::default()).await.unwrap();
    assert_eq!(page.kvs.len(), 4);
    assert!(page.more);

    let all = client
        .scan_all("", "", &ScanOptions::default())
        .await
        .unwrap();
    let got: Vec<&[u8]> = all.iter().map(|kv| kv.key.as_ref()).collect();
    let want: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    assert_eq!(got, want);

    let limited = ScanOptions {
        limit: 10,
        keys_only: true,
        ..Default::default()
    };
    let some = client.scan_all("k05", "", &limited).await.unwrap();
    assert_eq!(some.len(), 10);
    assert_eq!(some[0].key, "k05");
    assert!(some.iter().all(|kv| kv.value.is_empty()));

    let bounded = client
        .scan_all("k03", "k11", &ScanOptions::default())
        .await
        .unwrap();
    assert_eq!(bounded.len(), 8);
}

#[tokio::test]
async fn scan_stream_asks_for_a_page_only_when_it_is_needed() {
    use futures::StreamExt;
    let (addr, state) = start().await;
    let client = Client::connect([addr.to_string()]).unwrap();
    let keys: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
    client
        .batch_put(
            keys.iter().map(|k| (k.clone(), "v")),
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    state.page.store(4, Ordering::SeqCst);
    let options = ScanOptions::default();

    let before = state.calls.load(Ordering::SeqCst);
    let mut stream = std::pin::pin!(client.scan_stream("", "", &options));
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(stream.next().await.unwrap().unwrap().key);
    }
    assert_eq!(
        state.calls.load(Ordering::SeqCst) - before,
        2,
        "two pages of 4 for 5 keys"
    );
    while let Some(kv) = stream.next().await {
        got.push(kv.unwrap().key);
    }
    let want: Vec<Bytes> = keys.iter().map(|k| Bytes::from(k.clone())).collect();
    assert_eq!(got, want);

    let limited = ScanOptions {
        limit: 6,
        ..Default::default()
    };
    let some: Vec<_> = client.scan_stream("k10", "", &limited).collect().await;
    let some: Vec<Bytes> = some.into_iter().map(|kv| kv.unwrap().key).collect();
    assert_eq!(some, want[10..16].to_vec());
}

#[tokio::test]
async fn batch_get_keeps_request_order() {
    let (addr, _) = start().await;
    let client = Client::connect([addr.to_string()]).unwrap();
    client
        .batch_put([("b", "2"), ("a", "1")], &WriteOptions::default())
        .await
        .unwrap();
    let got = client
        .batch_get(["a", "missing", "b"], &ReadOptions::default())
        .await
        .unwrap();
    let values: Vec<Option<&[u8]>> = got
        .iter()
        .map(|v| v.as_ref().map(|v| v.value.as_ref()))
        .collect();
    assert_eq!(values, [Some(b"1".as_ref()), None, Some(b"2".as_ref())]);
}

#[tokio::test]
async fn keyspace_admin_round_trip() {
    let (addr, _) = start().await;
    let client = Client::connect([addr.to_string()]).unwrap();
    let created = client
        .create_keyspace(&KeyspaceSpec::range("orders", ["g", "p"]).with_replication(5))
        .await
        .unwrap();
    assert_eq!(created.name, "orders");
    assert_eq!(created.replication, 5);
    assert_eq!(created.groups.len(), 3);
    assert_eq!(created.groups[1].range_start, "g");
    assert_eq!(created.groups[1].range_end, "p");
    assert_eq!(client.describe_keyspace("orders").await.unwrap(), created);

    client
        .create_keyspace(&KeyspaceSpec::hash("users", 4))
        .await
        .unwrap();
    let names: Vec<String> = client
        .list_keyspaces()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["orders", "users"]);

    assert_eq!(
        client.locate("orders", ["a", "h", "z"]).await.unwrap(),
        [10, 11, 12]
    );

    client.drop_keyspace("users", false).await.unwrap();
    assert_eq!(client.list_keyspaces().await.unwrap().len(), 1);
}

#[tokio::test]
async fn directory_admin_round_trip() {
    let (addr, _) = start().await;
    let client = Client::connect([addr.to_string()]).unwrap();
    let spec = KeyspaceSpec::directory("tenants", Strategy::Hash).with_shards(2);
    client.create_keyspace(&spec).await.unwrap();
    let lookup = client.get_directory("tenants", "acme").await.unwrap();
    assert!(!lookup.found);
    assert_eq!(lookup.group_id, None);
    client.set_directory("tenants", "acme", 11).await.unwrap();
    client.set_directory("tenants", "beta", 10).await.unwrap();
    let lookup = client.get_directory("tenants", "acme").await.unwrap();
    assert!(lookup.found);
    assert_eq!(lookup.group_id, Some(11));
    let entries = client.list_directory("tenants").await.unwrap();
    assert_eq!(
        entries
            .iter()
            .map(|e| (e.directory.as_ref(), e.group_id))
            .collect::<Vec<_>>(),
        [(b"acme".as_ref(), 11), (b"beta".as_ref(), 10)]
    );
    client.remove_directory("tenants", "acme").await.unwrap();
    assert_eq!(client.list_directory("tenants").await.unwrap().len(), 1);
}

#[tokio::test]
async fn admin_refusals_keep_their_codes_and_are_not_retried() {
    let (addr, state) = start().await;
    let client = Client::with_options([addr.to_string()], fast(Duration::from_secs(5))).unwrap();
    client
        .create_keyspace(&KeyspaceSpec::hash("users", 2))
        .await
        .unwrap();
    client.put("k", "v").await.unwrap();

    let calls = |state: &State| state.calls.load(Ordering::SeqCst);
    let before = calls(&state);
    let err = client
        .create_keyspace(&KeyspaceSpec::hash("users", 2))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
    assert_eq!(err.code(), codes::KEYSPACE_EXISTS);
    assert_eq!(calls(&state), before + 1);

    let before = calls(&state);
    let err = client.drop_keyspace("users", false).await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition { .. }), "{err:?}");
    assert_eq!(err.code(), codes::KEYSPACE_NOT_EMPTY);
    assert!(err.to_string().contains("still holds keys"), "{err}");
    assert_eq!(calls(&state), before + 1);

    let before = calls(&state);
    let err = client.describe_keyspace("nope").await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    assert_eq!(err.code(), codes::UNKNOWN_KEYSPACE);
    assert_eq!(calls(&state), before + 1);

    client.drop_keyspace("users", true).await.unwrap();
}

#[tokio::test]
async fn admin_calls_retry_unavailable() {
    let (addr, state) = start().await;
    let client = Client::with_options([addr.to_string()], fast(Duration::from_secs(5))).unwrap();
    state.fail_next.store(2, Ordering::SeqCst);
    client.list_keyspaces().await.unwrap();
    assert_eq!(state.calls.load(Ordering::SeqCst), 3);
}

/// Runs the kvctl binary against the router; returns exit code, stdout, stderr.
async fn kvctl(addr: SocketAddr, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(args)
        .env("KVCTL_ROUTER", format!("http://{addr}"))
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn kvctl_keyspace_and_directory_commands() {
    let (addr, _) = start().await;
    let (code, out, err) = kvctl(
        addr,
        &[
            "keyspace",
            "create",
            "orders",
            "--strategy",
            "range",
            "--split-points",
            "g",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("strategy:    range\n"), "{out}");
    assert!(out.contains("range [-inf, g)"), "{out}");
    assert!(out.contains("range [g, +inf)"), "{out}");

    let (code, out, _) = kvctl(addr, &["keyspace", "list"]).await;
    assert_eq!((code, out.as_str()), (0, "orders\trange\t2\t3\n"));

    let (code, out, _) = kvctl(addr, &["keyspace", "describe", "orders", "-o", "json"]).await;
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["name"], "orders");
    assert_eq!(json["groups"][1]["range_start"], "g");

    let (code, _, err) = kvctl(addr, &["keyspace", "describe", "nope"]).await;
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: invalid argument: unknown keyspace"),
        "{err}"
    );

    // A bad strategy fails before any call, with the usual error line.
    let (code, out, err) = kvctl(
        addr,
        &["keyspace", "create", "x", "--strategy", "consistent"],
    )
    .await;
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "error: invalid argument: unknown strategy \"consistent\": expected hash, range or directory\n"
    );

    let (code, _, err) = kvctl(
        addr,
        &[
            "keyspace",
            "create",
            "t",
            "--strategy",
            "directory",
            "--fallback",
            "hash",
            "--shards",
            "2",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = kvctl(addr, &["directory", "get", "t", "acme"]).await;
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("no entry"), "{err}");
    let (code, out, _) = kvctl(addr, &["directory", "set", "t", "acme", "11"]).await;
    assert_eq!((code, out.as_str()), (0, "OK\n"));
    let (code, out, _) = kvctl(addr, &["directory", "get", "t", "acme"]).await;
    assert_eq!((code, out.as_str()), (0, "11\n"));
    let (code, out, _) = kvctl(addr, &["directory", "list", "t", "-o", "json"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!([{"directory": "acme", "group_id": 11}])
    );
    let (code, _, _) = kvctl(addr, &["directory", "remove", "t", "acme"]).await;
    assert_eq!(code, 0);

    let (code, out, _) = kvctl(addr, &["put", "k", "v", "--keyspace", "orders"]).await;
    assert_eq!((code, out.as_str()), (0, "OK\n"));
    let (code, _, err) = kvctl(addr, &["keyspace", "drop", "orders"]).await;
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: failed precondition (KEYSPACE_NOT_EMPTY): "),
        "{err}"
    );
    let (code, out, _) = kvctl(
        addr,
        &["keyspace", "drop", "orders", "--force", "-o", "json"],
    )
    .await;
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["dropped"], true);
}

/// The token goes out as bearer metadata on every kind of call: the shared `MultiStream`,
/// unary data calls and admin calls; without one, no header is sent.
#[tokio::test]
async fn the_token_is_sent_on_every_call() {
    let (addr, state) = start().await;
    let token = "kvt_0011223344556677_".to_string() + &"ab".repeat(32);
    for coalesce in [true, false] {
        let client = Client::with_options(
            [format!("http://{addr}")],
            ClientOptions {
                token: Some(token.as_str().into()),
                coalesce,
                ..ClientOptions::default()
            },
        )
        .unwrap();
        client.put("k", "v").await.unwrap();
        client.get("k").await.unwrap();
        assert_eq!(
            client.who_am_i().await.unwrap().user,
            format!("Bearer {token}")
        );
        assert!(
            !format!("{client:?}").contains(&token[25..]),
            "Debug shows the secret"
        );
    }
    let seen = std::mem::take(&mut *state.authorizations.lock().unwrap());
    // One MultiStream (coalesced), one unary Get, two WhoAmI.
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(
        seen.iter().all(|h| *h == format!("Bearer {token}")),
        "{seen:?}"
    );
    let plain =
        Client::with_options([format!("http://{addr}")], fast(Duration::from_secs(2))).unwrap();
    assert_eq!(plain.who_am_i().await.unwrap().user, "");
    let bad = Client::with_options(
        [format!("http://{addr}")],
        ClientOptions {
            token: Some("kvt_\n".into()),
            ..ClientOptions::default()
        },
    );
    assert!(bad.is_ok(), "surrounding whitespace is trimmed");
}
