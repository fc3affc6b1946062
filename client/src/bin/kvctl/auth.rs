//! `kvctl auth token-new|whoami|enable|disable`: authentication as a whole.
//!
//! `token-new` makes a token locally, with no cluster involved: it is what
//! `kvnode --bootstrap-admin-token-file` reads on a new cluster's first start.

use std::io::Write;

use clap::{Args, Subcommand};
use serde_json::json;
use shardmap::Token;

use crate::args::Global;
use crate::output;
use crate::Outcome;

/// Authentication: bootstrap tokens, who am I, on and off.
#[derive(Debug, Args)]
pub struct AuthArgs {
    #[command(subcommand)]
    pub command: AuthCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Print a new random token (for `kvnode --bootstrap-admin-token-file`); contacts no one.
    TokenNew {
        /// Also write it to this file (created with mode 0600; refused if it exists).
        #[arg(long, value_name = "FILE")]
        file: Option<std::path::PathBuf>,
    },
    /// Print the user the router takes this kvctl to be (from --token or a client cert).
    Whoami,
    /// Turn authentication on (needs a user with an admin role and a token).
    Enable,
    /// Turn authentication off: every caller may then do everything.
    Disable,
}

/// Writes a new file only the owner can read.
fn write_secret_file(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

pub async fn run(args: AuthArgs, global: &Global) -> anyhow::Result<Outcome> {
    let (text, json) = match args.command {
        AuthCommand::TokenNew { file } => {
            let token = Token::generate(&mut rand::rngs::OsRng).reveal();
            if let Some(path) = &file {
                write_secret_file(path, &format!("{token}\n"))?;
            }
            (format!("{token}\n"), json!({"token": token}))
        }
        AuthCommand::Whoami => {
            let me = global.client()?.who_am_i().await?;
            (
                format!(
                    "{}\t{}\t{}\n",
                    me.user,
                    if me.roles.is_empty() {
                        "-".to_string()
                    } else {
                        me.roles.join(",")
                    },
                    if me.auth_enabled {
                        "auth on"
                    } else {
                        "auth off"
                    }
                ),
                json!({"user": me.user, "roles": me.roles, "admin": me.admin, "auth_enabled": me.auth_enabled}),
            )
        }
        AuthCommand::Enable | AuthCommand::Disable => {
            let enabled = matches!(args.command, AuthCommand::Enable);
            let epoch = global.client()?.set_auth_enabled(enabled).await?;
            (
                "OK\n".to_string(),
                json!({"auth_enabled": enabled, "epoch": epoch}),
            )
        }
    };
    output::print(global.output, &text, &json)?;
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_are_new_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        write_secret_file(&path, "x\n").unwrap();
        assert!(write_secret_file(&path, "y\n").is_err(), "overwrote a file");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
