//! Rust client for the sharded key-value store.
//!
//! The client talks only to routers (`kvrouter`), through the public gRPC API in
//! `proto/proto/kv.proto`; routers find each key's shard group and its leader. So the client
//! holds no cluster map and stays correct whatever the cluster does, and any router will do.
//!
//! Modules, and why each exists:
//!
//! - `client`: [`Client`] and its calls. One private retry loop owns time budgets, backoff and
//!   moving between routers, so every call behaves the same under failures.
//! - `error`: [`Error`], and the single function that turns a gRPC status into it, reading the
//!   stable code the server puts in metadata rather than its message.
//! - `options`: [`ClientOptions`] for the client, [`ReadOptions`], [`WriteOptions`] and
//!   [`ScanOptions`] per call, [`Consistency`].
//! - `types`: what calls return ([`Versioned`], [`KeyValue`], [`ScanPage`],
//!   [`DeleteOutcome`]), plain structs that keep generated protobuf types out of the API.
//! - `endpoint`: turning `127.0.0.1:7400` into a lazily connected channel.
//! - `retry`: the backoff schedule.
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
//! // Every key from "a" (inclusive) to "z" (exclusive), across shard groups, in key order.
//! for kv in client.scan_all("a", "z", &ScanOptions::default()).await? {
//!     println!("{:?} = {:?} (version {})", kv.key, kv.value, kv.version);
//! }
//! # Ok(())
//! # }
//! ```

mod client;
mod endpoint;
mod error;
mod options;
mod retry;
mod types;

pub use bytes::Bytes;
pub use client::{next_start, Client};
pub use error::Error;
pub use options::{ClientOptions, Consistency, ReadOptions, ScanOptions, WriteOptions};
pub use types::{DeleteOutcome, KeyValue, ScanPage, Versioned};
