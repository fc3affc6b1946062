//! `kvctl scan START END`.

use std::io::Write;

use clap::Args;
use kvclient::ScanOptions;

use crate::args::{Global, Target};
use crate::output::{self, OutputFormat};
use crate::Outcome;

/// List keys in [START, END).
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// First key (inclusive); "" for the first key there is.
    pub start: String,
    /// End key (exclusive); "" for no upper bound.
    pub end: String,
    /// Print at most N keys (all of them when not given).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// Print keys without their values.
    #[arg(long)]
    pub keys_only: bool,
    #[command(flatten)]
    pub target: Target,
}

/// Prints `KEY<TAB>VALUE` lines (keys alone with `--keys-only`) in key order, or a JSON array
/// of `{key, value, version}` with `-o json`.
pub async fn run(args: ScanArgs, global: &Global) -> anyhow::Result<Outcome> {
    let client = global.client()?;
    let options = ScanOptions {
        limit: args.limit.unwrap_or(0),
        keys_only: args.keys_only,
        keyspace: args.target.keyspace,
        consistency: args.target.consistency.into(),
    };
    // All pages are read before printing, so an error halfway prints nothing rather than a
    // truncated listing that looks complete.
    let kvs = client.scan_all(args.start, args.end, &options).await?;
    let mut out = std::io::stdout().lock();
    match global.output {
        OutputFormat::Text => output::write_scan_text(&mut out, &kvs, args.keys_only)?,
        OutputFormat::Json => {
            output::write_json(&mut out, &output::scan_json(&kvs, args.keys_only))?
        }
    }
    out.flush()?;
    Ok(Outcome::Success)
}
