//! `kvctl put KEY VALUE`.

use std::io::Write;

use clap::Args;
use kvclient::WriteOptions;

use crate::args::{Global, Target};
use crate::output::{self, OutputFormat};
use crate::Outcome;

/// Write a key.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// Write only if the key's current version is N (0: only if the key does not exist).
    #[arg(long, value_name = "N")]
    pub if_version: Option<u64>,
    #[command(flatten)]
    pub target: Target,
}

/// Prints `OK`, or `{"key", "version"}` with `-o json`.
pub async fn run(args: PutArgs, global: &Global) -> anyhow::Result<Outcome> {
    let client = global.client()?;
    let options = WriteOptions {
        keyspace: args.target.keyspace,
        consistency: args.target.consistency.into(),
        if_version: args.if_version,
    };
    let key = args.key.into_bytes();
    let version = client.put_with(key.clone(), args.value, &options).await?;
    let mut out = std::io::stdout().lock();
    match global.output {
        OutputFormat::Text => writeln!(out, "OK")?,
        OutputFormat::Json => output::write_json(&mut out, &output::put_json(&key, version))?,
    }
    out.flush()?;
    Ok(Outcome::Success)
}
