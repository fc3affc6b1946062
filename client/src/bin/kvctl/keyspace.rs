//! `kvctl keyspace create|list|describe|drop|locate`.

use std::io::Write;

use clap::{Args, Subcommand};
use kvclient::{Bytes, KeyspaceSpec, Strategy};
use serde_json::Value;

use crate::args::Global;
use crate::output::{self, OutputFormat};
use crate::Outcome;

/// Create, inspect and drop keyspaces.
#[derive(Debug, Args)]
pub struct KeyspaceArgs {
    #[command(subcommand)]
    pub command: KeyspaceCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeyspaceCommand {
    /// Create a keyspace and its shard groups; prints it as `describe` does.
    Create(CreateArgs),
    /// One line per keyspace: name, strategy, group count, replication, tab-separated.
    List,
    /// A keyspace's strategy, groups (leader marked *) and key sets, and directory entries.
    Describe {
        /// The keyspace.
        name: String,
    },
    /// Drop a keyspace and its groups.
    Drop {
        /// The keyspace.
        name: String,
        /// Drop it even if it holds keys (they are lost).
        #[arg(long)]
        force: bool,
    },
    /// Which group each key maps to: the key and its group, tab-separated, per key.
    Locate {
        /// The keyspace.
        name: String,
        /// The keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

/// `keyspace create NAME --strategy hash|range|directory ...`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The keyspace's name: letters, digits, '-', '_' and '.'.
    pub name: String,
    /// How keys map to groups: hash, range or directory.
    #[arg(long, value_name = "hash|range|directory")]
    pub strategy: String,
    /// Number of groups (hash, or directory with a hash fallback).
    #[arg(long, value_name = "N")]
    pub shards: Option<u32>,
    /// Sorted split keys, comma-separated or repeated (range, or directory with a range
    /// fallback); N split points make N+1 groups.
    #[arg(long, value_name = "K1,K2,...", value_delimiter = ',')]
    pub split_points: Vec<String>,
    /// Virtual nodes per group on the hash ring (default 256).
    #[arg(long, value_name = "V")]
    pub vnodes: Option<u32>,
    /// Replicas per group: 1, 3 or 5 (default 3).
    #[arg(long, value_name = "1|3|5")]
    pub replication: Option<u32>,
    /// Directory keyspaces: where keys without a directory entry go, hash or range.
    #[arg(long, value_name = "hash|range")]
    pub fallback: Option<String>,
    /// Directory keyspaces: what ends a key's directory (default "/").
    #[arg(long, value_name = "SEP")]
    pub separator: Option<String>,
}

impl CreateArgs {
    /// The spec these flags ask for, or why they cannot work.
    pub fn spec(&self) -> Result<KeyspaceSpec, kvclient::Error> {
        let strategy: Strategy = self.strategy.parse()?;
        let fallback = self
            .fallback
            .as_deref()
            .map(Strategy::parse_fallback)
            .transpose()?;
        let spec = KeyspaceSpec {
            name: self.name.clone(),
            strategy,
            shards: self.shards.unwrap_or(0),
            split_points: self
                .split_points
                .iter()
                .map(|k| Bytes::from(k.clone().into_bytes()))
                .collect(),
            vnodes: self.vnodes.unwrap_or(0),
            fallback,
            separator: self
                .separator
                .as_ref()
                .map(|s| Bytes::from(s.clone().into_bytes()))
                .unwrap_or_default(),
            replication: self.replication.unwrap_or(0),
        };
        if self.shards == Some(0) {
            return Err(kvclient::Error::InvalidArgument {
                code: None,
                message: "--shards must be at least 1".into(),
            });
        }
        spec.check()?;
        Ok(spec)
    }
}

pub async fn run(args: KeyspaceArgs, global: &Global) -> anyhow::Result<Outcome> {
    match args.command {
        KeyspaceCommand::Create(create) => {
            // Checked before connecting, so that bad flags fail the same with or without a
            // cluster.
            let spec = create.spec()?;
            let info = global.client()?.create_keyspace(&spec).await?;
            let mut out = std::io::stdout().lock();
            match global.output {
                OutputFormat::Text => output::write_keyspace_text(&mut out, &info)?,
                OutputFormat::Json => output::write_json(&mut out, &output::keyspace_json(&info))?,
            }
            out.flush()?;
        }
        KeyspaceCommand::List => {
            let all = global.client()?.list_keyspaces().await?;
            let mut out = std::io::stdout().lock();
            match global.output {
                OutputFormat::Text => output::write_keyspace_list_text(&mut out, &all)?,
                OutputFormat::Json => output::write_json(&mut out, &output::keyspaces_json(&all))?,
            }
            out.flush()?;
        }
        KeyspaceCommand::Describe { name } => {
            let info = global.client()?.describe_keyspace(&name).await?;
            let mut out = std::io::stdout().lock();
            match global.output {
                OutputFormat::Text => output::write_keyspace_text(&mut out, &info)?,
                OutputFormat::Json => output::write_json(&mut out, &output::keyspace_json(&info))?,
            }
            out.flush()?;
        }
        KeyspaceCommand::Drop { name, force } => {
            let epoch = global.client()?.drop_keyspace(&name, force).await?;
            let mut out = std::io::stdout().lock();
            match global.output {
                OutputFormat::Text => writeln!(out, "OK")?,
                OutputFormat::Json => output::write_json(
                    &mut out,
                    &output::object(
                        &[
                            ("name", Value::from(name)),
                            ("dropped", true.into()),
                            ("epoch", epoch.into()),
                        ],
                        &[],
                    ),
                )?,
            }
            out.flush()?;
        }
        KeyspaceCommand::Locate { name, keys } => {
            let keys: Vec<Vec<u8>> = keys.into_iter().map(String::into_bytes).collect();
            let groups = global.client()?.locate(&name, keys.clone()).await?;
            let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            let mut out = std::io::stdout().lock();
            match global.output {
                OutputFormat::Text => output::write_locate_text(&mut out, &keys, &groups)?,
                OutputFormat::Json => {
                    output::write_json(&mut out, &output::locate_json(&keys, &groups))?
                }
            }
            out.flush()?;
        }
    }
    Ok(Outcome::Success)
}
