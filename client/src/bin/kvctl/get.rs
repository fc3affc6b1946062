//! `kvctl get KEY`.

use std::io::Write;

use clap::Args;
use kvclient::ReadOptions;

use crate::args::{Global, Target};
use crate::output::{self, OutputFormat};
use crate::Outcome;

/// Read a key.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The key.
    pub key: String,
    #[command(flatten)]
    pub target: Target,
}

/// Prints the value alone (raw bytes and a newline), or an object with `-o json`; an absent
/// key prints a note on stderr and ends with exit code 2.
pub async fn run(args: GetArgs, global: &Global) -> anyhow::Result<Outcome> {
    let client = global.client()?;
    let options = ReadOptions {
        keyspace: args.target.keyspace,
        consistency: args.target.consistency.into(),
    };
    let Some(found) = client.get_with(args.key.clone(), &options).await? else {
        eprintln!("key not found: {}", args.key);
        return Ok(Outcome::KeyAbsent);
    };
    let mut out = std::io::stdout().lock();
    match global.output {
        OutputFormat::Text => output::write_line(&mut out, &found.value)?,
        OutputFormat::Json => output::write_json(&mut out, &output::versioned_json(&found))?,
    }
    out.flush()?;
    Ok(Outcome::Success)
}
