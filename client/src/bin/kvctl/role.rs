//! `kvctl role create|list|delete`: roles, which users hold and grants are given to.

use clap::{Args, Subcommand};
use kvclient::RoleInfo;
use serde_json::{json, Value};

use crate::args::Global;
use crate::output::{self, display_key};
use crate::Outcome;

/// Manage roles.
#[derive(Debug, Args)]
pub struct RoleArgs {
    #[command(subcommand)]
    pub command: RoleCommand,
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Create a role (then `kvctl grant` it access, and give it to users).
    Create {
        name: String,
        /// May change the cluster (keyspaces, directories, users, roles) and read and write
        /// every key.
        #[arg(long)]
        admin: bool,
    },
    /// One line per role: name, admin or -, grants (KEYSPACE:PREFIX*:ACCESS).
    List,
    /// Delete a role that no user holds.
    Delete { name: String },
}

pub fn role_json(r: &RoleInfo) -> Value {
    json!({
        "name": r.name,
        "admin": r.admin,
        "grants": r.grants.iter().map(|g| {
            let mut o = output::object(
                &[("keyspace", Value::from(g.keyspace.clone())), ("access", Value::from(g.access.clone()))],
                &[("prefix", &g.prefix)],
            );
            if o["keyspace"] == "" {
                o["keyspace"] = "default".into();
            }
            o
        }).collect::<Vec<_>>(),
    })
}

/// `NAME<TAB>admin|-<TAB>GRANTS`, grants as `KEYSPACE:PREFIX*:ACCESS`, comma-separated.
pub fn role_line(r: &RoleInfo) -> String {
    let grants: Vec<String> = r
        .grants
        .iter()
        .map(|g| format!("{}:{}*:{}", g.keyspace, display_key(&g.prefix), g.access))
        .collect();
    format!(
        "{}\t{}\t{}\n",
        r.name,
        if r.admin { "admin" } else { "-" },
        if grants.is_empty() {
            "-".to_string()
        } else {
            grants.join(",")
        }
    )
}

pub async fn run(args: RoleArgs, global: &Global) -> anyhow::Result<Outcome> {
    let client = global.client()?;
    let (text, json) = match args.command {
        RoleCommand::Create { name, admin } => {
            let role = client.create_role(&name, admin).await?;
            (role_line(&role), role_json(&role))
        }
        RoleCommand::List => {
            let roles = client.list_roles().await?;
            (
                roles.iter().map(role_line).collect(),
                Value::Array(roles.iter().map(role_json).collect()),
            )
        }
        RoleCommand::Delete { name } => {
            let epoch = client.delete_role(&name).await?;
            (
                "OK\n".to_string(),
                json!({"role": name, "deleted": true, "epoch": epoch}),
            )
        }
    };
    output::print(global.output, &text, &json)?;
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use kvclient::{Bytes, Grant};

    use super::*;

    #[test]
    fn roles_print_their_grants() {
        let r = RoleInfo {
            name: "reader".into(),
            admin: false,
            grants: vec![Grant {
                keyspace: "users".into(),
                prefix: Bytes::from_static(b"t/"),
                access: "read".into(),
            }],
        };
        assert_eq!(role_line(&r), "reader\t-\tusers:t/*:read\n");
        let j = role_json(&r);
        assert_eq!(j["grants"][0]["prefix"], "t/");
        assert_eq!(j["grants"][0]["access"], "read");
    }
}
