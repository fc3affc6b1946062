//! `kvctl get KEY`.

use std::io::Write;

use std::time::Duration;

use clap::Args;
use kvclient::ReadOptions;

use crate::args::{parse_duration, ConsistencyArg, Global, Target};
use crate::output::{self, OutputFormat};
use crate::Outcome;

/// Read a key.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The key.
    pub key: String,
    /// With --consistency eventual: only read from replicas that heard from their leader
    /// within this long (e.g. 500ms); fails with code STALE_REPLICA when none did in time.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_staleness: Option<Duration>,
    #[command(flatten)]
    pub target: Target,
}

/// Prints the value alone (raw bytes and a newline), or an object with `-o json`; an absent
/// key prints a note on stderr and ends with exit code 2.
pub async fn run(args: GetArgs, global: &Global) -> anyhow::Result<Outcome> {
    if args.max_staleness.is_some() && args.target.consistency != ConsistencyArg::Eventual {
        anyhow::bail!("--max-staleness applies to eventual reads: add --consistency eventual");
    }
    let client = global.client()?;
    let options = ReadOptions {
        keyspace: args.target.keyspace,
        consistency: args.target.consistency.into(),
        max_staleness: args.max_staleness,
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
