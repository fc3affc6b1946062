//! `kvctl revoke ROLE [--keyspace KS] [--prefix P]`: take a role's grant away.
//! (Tokens are revoked with `kvctl user revoke`.)

use std::io::Write;

use clap::Args;

use crate::args::Global;
use crate::output::{self, OutputFormat};
use crate::role::{role_json, role_line};
use crate::Outcome;

/// Take away a role's grant on a keyspace and prefix.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The role.
    pub role: String,
    /// The grant's keyspace (the default keyspace when not given).
    #[arg(long, default_value = "")]
    pub keyspace: String,
    /// The grant's prefix, exactly as granted (default: the whole-keyspace grant).
    #[arg(long, default_value = "")]
    pub prefix: String,
}

pub async fn run(args: RevokeArgs, global: &Global) -> anyhow::Result<Outcome> {
    let client = global.client()?;
    let role = client
        .revoke_grant(&args.role, &args.keyspace, args.prefix.as_bytes())
        .await?;
    let mut out = std::io::stdout().lock();
    match global.output {
        OutputFormat::Text => out.write_all(role_line(&role).as_bytes())?,
        OutputFormat::Json => output::write_json(&mut out, &role_json(&role))?,
    }
    out.flush()?;
    Ok(Outcome::Success)
}
