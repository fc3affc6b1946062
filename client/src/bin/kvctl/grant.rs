//! `kvctl grant ROLE read|read-write [--keyspace KS] [--prefix P]`: give a role access to keys.

use std::io::Write;

use clap::{Args, ValueEnum};
use kvclient::{Bytes, Grant};

use crate::args::Global;
use crate::output::{self, OutputFormat};
use crate::role::{role_json, role_line};
use crate::Outcome;

/// Give a role read or read-write access to the keys of a keyspace under a prefix.
#[derive(Debug, Args)]
pub struct GrantArgs {
    /// The role.
    pub role: String,
    /// What the grant allows.
    #[arg(value_enum)]
    pub access: AccessArg,
    /// The keyspace (the default keyspace when not given).
    #[arg(long, default_value = "")]
    pub keyspace: String,
    /// Only keys starting with this (a directory such as `tenant-a/` works); default: all.
    #[arg(long, default_value = "")]
    pub prefix: String,
}

/// The access a grant gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccessArg {
    /// Get, BatchGet, Scan.
    Read,
    /// Reads, and Put, Delete, BatchPut.
    ReadWrite,
}

impl AccessArg {
    fn name(self) -> &'static str {
        match self {
            AccessArg::Read => "read",
            AccessArg::ReadWrite => "read-write",
        }
    }
}

pub async fn run(args: GrantArgs, global: &Global) -> anyhow::Result<Outcome> {
    let client = global.client()?;
    let grant = Grant {
        keyspace: args.keyspace,
        prefix: Bytes::from(args.prefix.into_bytes()),
        access: args.access.name().to_string(),
    };
    let role = client.grant(&args.role, &grant).await?;
    let mut out = std::io::stdout().lock();
    match global.output {
        OutputFormat::Text => out.write_all(role_line(&role).as_bytes())?,
        OutputFormat::Json => output::write_json(&mut out, &role_json(&role))?,
    }
    out.flush()?;
    Ok(Outcome::Success)
}
