//! `kvctl delete KEY`.

use std::io::Write;

use clap::Args;
use kvclient::WriteOptions;

use crate::args::{Global, Target};
use crate::output::{self, OutputFormat};
use crate::Outcome;

/// Delete a key.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The key.
    pub key: String,
    /// Delete only if the key's current version is N.
    #[arg(long, value_name = "N")]
    pub if_version: Option<u64>,
    #[command(flatten)]
    pub target: Target,
}

/// Prints `OK` (with a note when the key did not exist), or `{"key", "existed", "version"}`
/// with `-o json`. Deleting an absent key succeeds.
pub async fn run(args: DeleteArgs, global: &Global) -> anyhow::Result<Outcome> {
    let client = global.client()?;
    let options = WriteOptions {
        keyspace: args.target.keyspace,
        consistency: args.target.consistency.into(),
        if_version: args.if_version,
    };
    let key = args.key.into_bytes();
    let outcome = client.delete_with(key.clone(), &options).await?;
    let mut out = std::io::stdout().lock();
    match global.output {
        OutputFormat::Text if outcome.existed => writeln!(out, "OK")?,
        OutputFormat::Text => writeln!(out, "OK (existed: false)")?,
        OutputFormat::Json => output::write_json(
            &mut out,
            &output::delete_json(&key, outcome.existed, outcome.version),
        )?,
    }
    out.flush()?;
    Ok(Outcome::Success)
}
