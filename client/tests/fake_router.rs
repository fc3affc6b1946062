//! The client against an in-process fake router: a real tonic `Kv` server on loopback over an
//! in-memory map, with injected failures. Checks what unit tests cannot: metadata survives the
//! wire, retries and router rotation happen, paging ends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kv_proto::kv::kv_server::{Kv, KvServer};
use kv_proto::kv::{self, KeyValue as PbKeyValue};
use kv_proto::{codes, meta};
use kvclient::{Client, ClientOptions, Error, ReadOptions, ScanOptions, WriteOptions};
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
            },
            None => kv::GetResponse::default(),
        }
    }
}

#[tonic::async_trait]
impl Kv for Fake {
    async fn get(&self, r: Request<kv::GetRequest>) -> Result<Response<kv::GetResponse>, Status> {
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
        Ok(Response::new(kv::ScanResponse { kvs, more }))
    }

    async fn batch_get(
        &self,
        r: Request<kv::BatchGetRequest>,
    ) -> Result<Response<kv::BatchGetResponse>, Status> {
        self.enter().await?;
        let results = r.into_inner().keys.iter().map(|k| self.read(k)).collect();
        Ok(Response::new(kv::BatchGetResponse { results }))
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
        Ok(Response::new(kv::BatchPutResponse { versions }))
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
