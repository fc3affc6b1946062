//! Rust client for the sharded key-value store.
//!
//! The client talks only to routers (`kvrouter`), through the public gRPC API in
//! `proto/proto/kv.proto`; routers find each key's shard group and its leader. So the client
//! holds no cluster map and stays correct whatever the cluster does, and any router will do.
//!
//! Modules, and why each exists:
//!
//! - `client`: [`Client`] and its data calls. One private retry loop owns time budgets, backoff and
//!   moving between routers, so every call behaves the same under failures.
//! - `admin`: keyspace and directory administration ([`Client::create_keyspace`],
//!   [`Client::set_directory`], [`Client::locate`], ...), with [`KeyspaceSpec`] and what those
//!   calls return ([`KeyspaceInfo`], [`ShardGroup`], [`DirectoryEntry`]).
//! - `error`: [`Error`], and the single function that turns a gRPC status into it, reading the
//!   stable code the server puts in metadata rather than its message.
//! - `options`: [`ClientOptions`] for the client, [`ReadOptions`], [`WriteOptions`] and
//!   [`ScanOptions`] per call, [`Consistency`].
//! - `types`: what calls return ([`Versioned`], [`KeyValue`], [`ScanPage`],
//!   [`DeleteOutcome`]), plain structs that keep generated protobuf types out of the API.
//! - `endpoint`: turning `127.0.0.1:7400` into a lazily connected channel.
//! - `retry`: the backoff schedule.
//! - `session`: [`Session`] and [`SessionToken`]: read-your-writes on eventual reads.
//! - `users`: users, roles, grants and tokens ([`Client::create_user`], [`Client::grant`],
//!   ...); with authentication on, [`ClientOptions::token`] is sent on every call.
//!
//! Keys and values are taken as `impl Into<Bytes>` (literals, `Vec<u8>`, `String`, [`Bytes`])
//! and returned as [`Bytes`].
//!
//! # Example
//!
//! ```no_run
//! use kvclient::{Client, Consistency, Error, ReadOptions, ScanOptions, WriteOptions};
//!
//! # async fn example() -> Result<(), Error> {
//! // Start a local cluster with `kvctl dev` first.
//! let client = Client::connect(["http://127.0.0.1:7400"])?;
//!
//! let version = client.put("greeting", "hello").await?;
//! let read = client.get("greeting").await?.expect("just written");
//! assert_eq!(read.value, "hello");
//! assert_eq!(read.version, version);
//!
//! // Optimistic concurrency: write only if nobody wrote since our read.
//! let guarded = WriteOptions { if_version: Some(read.version), ..Default::default() };
//! match client.put_with("greeting", "hello again", &guarded).await {
//!     Ok(_) => {}
//!     Err(Error::ConditionFailed { current_version }) => {
//!         println!("lost the race; the key is now at {current_version:?}");
//!     }
//!     Err(other) => return Err(other),
//! }
//!
//! // A possibly stale read from any replica.
//! let eventual = ReadOptions { consistency: Consistency::Eventual, ..Default::default() };
//! let _maybe_stale = client.get_with("greeting", &eventual).await?;
//!
//! // Read-your-writes on eventual reads: a session sends the versions it has seen, and
//! // only a replica that has applied them serves its reads.
//! let session = client.session();
//! session.put("greeting", "hi").await?;
//! let mine = session.get_with("greeting", &eventual).await?.expect("read your write");
//! assert_eq!(mine.value, "hi");
//!
//! // An eventual read from a replica that heard from its leader within the last 500 ms.
//! let bounded = ReadOptions {
//!     consistency: Consistency::Eventual,
//!     max_staleness: Some(std::time::Duration::from_millis(500)),
//!     ..Default::default()
//! };
//! let _recent = client.get_with("greeting", &bounded).await?;
//!
//! // Every key from "a" (inclusive) to "z" (exclusive), across shard groups, in key order.
//! for kv in client.scan_all("a", "z", &ScanOptions::default()).await? {
//!     println!("{:?} = {:?} (version {})", kv.key, kv.value, kv.version);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Keyspaces:
//!
//! ```no_run
//! use kvclient::{codes, Client, Error, KeyspaceSpec, WriteOptions};
//!
//! # async fn example(client: Client) -> Result<(), Error> {
//! // Four groups on a consistent-hash ring, three replicas each.
//! let users = client.create_keyspace(&KeyspaceSpec::hash("users", 4)).await?;
//! assert_eq!(users.groups.len(), 4);
//! let in_users = WriteOptions { keyspace: "users".into(), ..Default::default() };
//! client.put_with("alice", "1", &in_users).await?;
//!
//! // Refusals carry stable codes.
//! match client.drop_keyspace("users", false).await {
//!     Err(e) if e.code() == codes::KEYSPACE_NOT_EMPTY => {
//!         client.drop_keyspace("users", true).await?;
//!     }
//!     other => { other?; }
//! }
//! # Ok(())
//! # }
//! ```

mod admin;
mod client;
mod endpoint;
mod error;
mod options;
mod retry;
mod session;
mod types;
mod users;

pub use admin::{
    DirectoryEntry, DirectoryLookup, KeyspaceInfo, KeyspaceSpec, ShardGroup, Strategy,
};
pub use bytes::Bytes;
pub use client::{next_start, Client};
pub use error::Error;
/// The stable error codes [`Error::code`] returns when the server sent one.
pub use kv_proto::codes;
pub use options::{
    AccessToken, ClientOptions, Consistency, ReadOptions, ScanOptions, WriteOptions,
};
pub use session::{Session, SessionToken};
pub use types::{DeleteOutcome, KeyValue, ScanPage, Versioned};
pub use users::{Grant, IssuedToken, RoleInfo, TokenInfo, UserInfo, WhoAmI};
