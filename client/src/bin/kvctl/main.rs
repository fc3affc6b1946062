//! `kvctl`: the command line for the key-value store.
//!
//! One file per subcommand, each a clap `Args` struct and a `run` function: `put`, `get`,
//! `delete`, `scan` talk to a router through [`kvclient`]; `dev` starts a local cluster.
//! `args` holds the flags several subcommands share and `output` the text and JSON encodings,
//! kept apart from I/O so that tests can check them.
//!
//! Exit codes: 0 success, 2 key absent (`get`), 1 any other error (message on stderr).
//! Logs go to stderr, and only when `RUST_LOG` is set, so that stdout stays pipeable.

mod args;
mod delete;
mod dev;
mod get;
mod output;
mod put;
mod scan;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::args::Global;

/// Command line for the sharded key-value store.
#[derive(Debug, Parser)]
#[command(name = "kvctl", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a key.
    Put(put::PutArgs),
    /// Read a key; prints its value alone (exit code 2 when absent).
    Get(get::GetArgs),
    /// Delete a key (deleting an absent key succeeds).
    Delete(delete::DeleteArgs),
    /// List keys in [START, END) in key order.
    Scan(scan::ScanArgs),
    /// Run a local cluster (three nodes and a router on loopback) in the foreground.
    Dev(dev::DevArgs),
}

/// How a successful command ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit code 0.
    Success,
    /// Exit code 2: the key asked for does not exist.
    KeyAbsent,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version are not errors; usage errors exit 1 like any other error
            // (clap's own default would be 2, which here means "key absent").
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::KeyAbsent) => ExitCode::from(2),
        Err(err) if is_broken_pipe(&err) => {
            // The reader went away (`kvctl scan ... | head`): nothing left to tell anyone.
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let global = cli.global;
    match cli.command {
        Command::Put(args) => put::run(args, &global).await,
        Command::Get(args) => get::run(args, &global).await,
        Command::Delete(args) => delete::run(args, &global).await,
        Command::Scan(args) => scan::run(args, &global).await,
        Command::Dev(args) => dev::run(args).await,
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::args::ConsistencyArg;
    use crate::output::OutputFormat;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kvctl").chain(args.iter().copied()))
    }

    #[test]
    fn global_flags_may_follow_the_subcommand() {
        let cli = parse(&[
            "put",
            "a",
            "1",
            "--router",
            "x:1",
            "-o",
            "json",
            "--timeout",
            "2s",
        ])
        .unwrap();
        assert_eq!(cli.global.router, "x:1");
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert_eq!(cli.global.timeout, Duration::from_secs(2));
        let Command::Put(put) = cli.command else {
            panic!("not put")
        };
        assert_eq!((put.key.as_str(), put.value.as_str()), ("a", "1"));
    }

    #[test]
    fn global_flags_before_the_subcommand() {
        let cli = parse(&["--router", "http://h:2", "get", "k"]).unwrap();
        assert_eq!(cli.global.router, "http://h:2");
        assert_eq!(cli.global.output, OutputFormat::Text);
        assert!(matches!(cli.command, Command::Get(_)));
    }

    #[test]
    fn put_flags() {
        let cli = parse(&[
            "put",
            "k",
            "v",
            "--if-version",
            "0",
            "--consistency",
            "eventual",
            "--keyspace",
            "users",
        ])
        .unwrap();
        let Command::Put(put) = cli.command else {
            panic!("not put")
        };
        assert_eq!(put.if_version, Some(0));
        assert_eq!(put.target.consistency, ConsistencyArg::Eventual);
        assert_eq!(put.target.keyspace, "users");
    }

    #[test]
    fn scan_accepts_empty_end_and_flags() {
        let cli = parse(&["scan", "a", "", "--limit", "10", "--keys-only"]).unwrap();
        let Command::Scan(scan) = cli.command else {
            panic!("not scan")
        };
        assert_eq!(scan.start, "a");
        assert_eq!(scan.end, "");
        assert_eq!(scan.limit, Some(10));
        assert!(scan.keys_only);
    }

    #[test]
    fn dev_defaults() {
        let cli = parse(&["dev"]).unwrap();
        let Command::Dev(dev) = cli.command else {
            panic!("not dev")
        };
        assert_eq!(dev.data_dir, std::path::PathBuf::from("./kvdata"));
        assert_eq!(dev.base_port, 7401);
        assert_eq!(dev.router_listen, "127.0.0.1:7400");
        assert_eq!(dev.shards, 4);
    }

    #[test]
    fn bad_input_is_a_usage_error_not_a_panic() {
        for bad in [
            &["put", "a"][..],
            &["put", "a", "1", "--if-version", "x"],
            &["get", "a", "--consistency", "sometimes"],
            &["get", "a", "-o", "yaml"],
            &["get", "a", "--timeout", "-1s"],
            &["frobnicate"],
            &[],
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.use_stderr(), "{bad:?}");
        }
        assert!(!parse(&["--help"]).unwrap_err().use_stderr());
        assert!(!parse(&["--version"]).unwrap_err().use_stderr());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
