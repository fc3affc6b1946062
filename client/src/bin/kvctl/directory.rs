//! `kvctl directory set|get|list|remove`: the table of a directory keyspace.

use std::io::Write;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::args::Global;
use crate::output::{self, OutputFormat};
use crate::Outcome;

/// Map directories of a directory keyspace to groups.
#[derive(Debug, Args)]
pub struct DirectoryArgs {
    #[command(subcommand)]
    pub command: DirectoryCommand,
}

#[derive(Debug, Subcommand)]
pub enum DirectoryCommand {
    /// Send a directory's keys to a group (refused if that would move existing keys).
    Set {
        /// The directory keyspace.
        keyspace: String,
        /// The directory: a key prefix up to, not including, the separator.
        directory: String,
        /// The group id (see `keyspace describe`).
        group: u64,
    },
    /// Print the group of a directory's entry (exit code 2 when it has none).
    Get {
        /// The directory keyspace.
        keyspace: String,
        /// The directory.
        directory: String,
    },
    /// One line per entry: the directory and its group, tab-separated.
    List {
        /// The directory keyspace.
        keyspace: String,
    },
    /// Remove a directory's entry, so that its keys follow the fallback.
    Remove {
        /// The directory keyspace.
        keyspace: String,
        /// The directory.
        directory: String,
    },
}

pub async fn run(args: DirectoryArgs, global: &Global) -> anyhow::Result<Outcome> {
    let client = global.client()?;
    let mut outcome = Outcome::Success;
    let document = match args.command {
        DirectoryCommand::Set {
            keyspace,
            directory,
            group,
        } => {
            let epoch = client
                .set_directory(&keyspace, directory.clone(), group)
                .await?;
            Done::Ok(output::object(
                &[
                    ("keyspace", Value::from(keyspace)),
                    ("group_id", group.into()),
                    ("epoch", epoch.into()),
                ],
                &[("directory", directory.as_bytes())],
            ))
        }
        DirectoryCommand::Get {
            keyspace,
            directory,
        } => {
            let found = client.get_directory(&keyspace, directory.clone()).await?;
            if !found.found {
                let place = match found.group_id {
                    Some(g) => format!("the fallback places it in group {g}"),
                    None => "the fallback spreads its keys over groups".to_owned(),
                };
                eprintln!("no entry for directory {directory:?} in keyspace {keyspace:?}; {place}");
                outcome = Outcome::KeyAbsent;
            }
            let json = output::object(
                &[
                    ("keyspace", Value::from(keyspace)),
                    ("found", found.found.into()),
                    ("group_id", found.group_id.map_or(Value::Null, Value::from)),
                ],
                &[("directory", directory.as_bytes())],
            );
            match found.group_id {
                Some(group) if found.found => Done::Text(format!("{group}\n").into_bytes(), json),
                _ => Done::Text(Vec::new(), json),
            }
        }
        DirectoryCommand::List { keyspace } => {
            let entries = client.list_directory(&keyspace).await?;
            let mut text = Vec::new();
            output::write_directory_text(&mut text, &entries)?;
            Done::Text(text, output::directory_entries_json(&entries))
        }
        DirectoryCommand::Remove {
            keyspace,
            directory,
        } => {
            let epoch = client
                .remove_directory(&keyspace, directory.clone())
                .await?;
            Done::Ok(output::object(
                &[
                    ("keyspace", Value::from(keyspace)),
                    ("removed", true.into()),
                    ("epoch", epoch.into()),
                ],
                &[("directory", directory.as_bytes())],
            ))
        }
    };
    let mut out = std::io::stdout().lock();
    match (global.output, document) {
        (OutputFormat::Text, Done::Ok(_)) => writeln!(out, "OK")?,
        (OutputFormat::Text, Done::Text(text, _)) => out.write_all(&text)?,
        (OutputFormat::Json, Done::Ok(json) | Done::Text(_, json)) => {
            output::write_json(&mut out, &json)?
        }
    }
    out.flush()?;
    Ok(outcome)
}

/// What a command prints: `OK` or the given text, or the JSON document with `-o json`.
enum Done {
    Ok(Value),
    Text(Vec<u8>, Value),
}
