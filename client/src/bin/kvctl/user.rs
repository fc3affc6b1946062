//! `kvctl user create|list|delete|token|revoke|roles`: users and their access tokens.
//!
//! A token's text is printed once, by `create` and `token`: the cluster keeps only its hash,
//! so it can never be shown again (issue another and revoke the old one instead).

use clap::{Args, Subcommand};
use kvclient::{TokenInfo, UserInfo};
use serde_json::{json, Value};

use crate::args::{parse_duration, Global};
use crate::output;
use crate::Outcome;

/// Manage users and their access tokens.
#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(subcommand)]
    pub command: UserCommand,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user and print its first token (shown once).
    Create {
        /// The user's name (letters, digits, '-', '_', '.', '@').
        name: String,
        /// A role the user holds; repeat or comma-separate for several.
        #[arg(long = "role", value_delimiter = ',')]
        roles: Vec<String>,
        /// Do not issue a token (the user authenticates with a client certificate).
        #[arg(long)]
        no_token: bool,
        /// The token stops working after this long (e.g. 30m, 24h); default: never.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// One line per user: name, roles, token ids.
    List,
    /// Delete a user and its tokens.
    Delete { name: String },
    /// Issue another token to a user and print it (shown once).
    Token {
        name: String,
        /// The token stops working after this long (e.g. 30m, 24h); default: never.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// Revoke a token, given by its id (see `user list`) or its whole text.
    Revoke { token: String },
    /// Replace a user's roles (comma-separated; empty for none).
    Roles {
        name: String,
        #[arg(value_delimiter = ',')]
        roles: Vec<String>,
    },
}

fn ms(ttl: Option<std::time::Duration>) -> u64 {
    ttl.map_or(0, |d| {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}

pub fn token_json(t: &TokenInfo) -> Value {
    json!({"id": t.id, "created_ms": t.created_ms, "expires_at_ms": t.expires_at_ms})
}

pub fn user_json(u: &UserInfo) -> Value {
    json!({
        "name": u.name,
        "roles": u.roles,
        "tokens": u.tokens.iter().map(token_json).collect::<Vec<_>>(),
    })
}

/// `NAME<TAB>ROLES<TAB>TOKEN IDS`, lists comma-separated, `-` when empty.
pub fn user_line(u: &UserInfo) -> String {
    let list = |items: Vec<&str>| {
        if items.is_empty() {
            "-".to_string()
        } else {
            items.join(",")
        }
    };
    format!(
        "{}\t{}\t{}\n",
        u.name,
        list(u.roles.iter().map(String::as_str).collect()),
        list(u.tokens.iter().map(|t| t.id.as_str()).collect())
    )
}

pub async fn run(args: UserArgs, global: &Global) -> anyhow::Result<Outcome> {
    let client = global.client()?;
    let (text, json) = match args.command {
        UserCommand::Create {
            name,
            roles,
            no_token,
            ttl,
        } => {
            let (user, token) = client
                .create_user(&name, &roles, !no_token, ms(ttl))
                .await?;
            let text = match &token {
                Some(t) => {
                    eprintln!("created user {name:?}; its token is shown once, store it now:");
                    format!("{t}\n")
                }
                None => format!("created user {name:?}\n"),
            };
            let mut json = user_json(&user);
            json["token"] = token.map_or(Value::Null, Value::from);
            (text, json)
        }
        UserCommand::List => {
            let (users, enabled) = client.list_users().await?;
            if !enabled {
                eprintln!("note: authentication is off in this cluster");
            }
            let text: String = users.iter().map(user_line).collect();
            let json = json!({
                "auth_enabled": enabled,
                "users": users.iter().map(user_json).collect::<Vec<_>>(),
            });
            (text, json)
        }
        UserCommand::Delete { name } => {
            let epoch = client.delete_user(&name).await?;
            (
                "OK\n".to_string(),
                json!({"user": name, "deleted": true, "epoch": epoch}),
            )
        }
        UserCommand::Token { name, ttl } => {
            let issued = client.issue_token(&name, ms(ttl)).await?;
            eprintln!(
                "issued token {} to {name:?}; it is shown once, store it now:",
                issued.info.id
            );
            let mut json = token_json(&issued.info);
            json["user"] = name.into();
            json["token"] = issued.token.clone().into();
            (format!("{}\n", issued.token), json)
        }
        UserCommand::Revoke { token } => {
            let epoch = client.revoke_token(&token).await?;
            ("OK\n".to_string(), json!({"revoked": true, "epoch": epoch}))
        }
        UserCommand::Roles { name, roles } => {
            let roles: Vec<String> = roles.into_iter().filter(|r| !r.is_empty()).collect();
            let user = client.set_user_roles(&name, &roles).await?;
            (user_line(&user), user_json(&user))
        }
    };
    output::print(global.output, &text, &json)?;
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_print_as_lines_and_json() {
        let u = UserInfo {
            name: "bob".into(),
            roles: vec!["a".into(), "b".into()],
            tokens: vec![TokenInfo {
                id: "00ff".into(),
                created_ms: 1,
                expires_at_ms: None,
            }],
        };
        assert_eq!(user_line(&u), "bob\ta,b\t00ff\n");
        let empty = UserInfo {
            name: "x".into(),
            roles: vec![],
            tokens: vec![],
        };
        assert_eq!(user_line(&empty), "x\t-\t-\n");
        let j = user_json(&u);
        assert_eq!(j["tokens"][0]["id"], "00ff");
        assert_eq!(j["tokens"][0]["expires_at_ms"], Value::Null);
        assert_eq!(ms(None), 0);
        assert_eq!(ms(Some(std::time::Duration::from_secs(2))), 2000);
    }
}
