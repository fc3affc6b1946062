//! `kvctl`: the command line for the key-value store.
//!
//! One file per subcommand (or command group), each a clap `Args` struct and a `run` function:
//! `put`, `get`, `delete`, `scan` talk to a router through [`kvclient`]; `keyspace` and
//! `directory` administer keyspaces through the router's admin service; `user`, `role`,
//! `grant`, `revoke` and `auth` administer authentication; `dev` starts a local cluster.
//! `args` holds the flags several subcommands share and `output` the text and JSON encodings,
//! kept apart from I/O so that tests can check them.
//!
//! Exit codes: 0 success, 2 key absent (`get`), 1 any other error (message on stderr).
//! Logs go to stderr, and only when `RUST_LOG` is set, so that stdout stays pipeable.

mod args;
mod auth;
mod bench;
mod certs;
mod delete;
mod dev;
mod directory;
mod get;
mod grant;
mod keyspace;
mod output;
mod put;
mod revoke;
mod role;
mod scan;
mod user;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::args::Global;

// glibc's malloc was a tenth of a node's CPU under load (a profile, docs/benchmarks.md);
// mimalloc's thread-local free lists make the many small per-request allocations cheap.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Create, list, describe and drop keyspaces.
    Keyspace(keyspace::KeyspaceArgs),
    /// Map directories of a directory keyspace to shard groups.
    Directory(directory::DirectoryArgs),
    /// Run a local cluster (three nodes and a router on loopback) in the foreground.
    Dev(dev::DevArgs),
    /// Generate load and report throughput and latency percentiles.
    Bench(bench::BenchArgs),
    /// Make a certificate authority and node, router and client certificates.
    Certs(certs::CertsArgs),
    /// Create, list and delete users; issue and revoke their tokens.
    User(user::UserArgs),
    /// Create, list and delete roles.
    Role(role::RoleArgs),
    /// Give a role read or read-write access to a keyspace (or a key prefix of it).
    Grant(grant::GrantArgs),
    /// Take a role's grant away.
    Revoke(revoke::RevokeArgs),
    /// Make a bootstrap token; show who you are; turn authentication on or off.
    Auth(auth::AuthArgs),
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
        Command::Keyspace(args) => keyspace::run(args, &global).await,
        Command::Directory(args) => directory::run(args, &global).await,
        Command::Dev(args) => dev::run(args).await,
        Command::Bench(args) => bench::run(args, &global).await,
        Command::Certs(args) => certs::run(args),
        Command::User(args) => user::run(args, &global).await,
        Command::Role(args) => role::run(args, &global).await,
        Command::Grant(args) => grant::run(args, &global).await,
        Command::Revoke(args) => revoke::run(args, &global).await,
        Command::Auth(args) => auth::run(args, &global).await,
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
    fn auth_commands_and_the_token_flag() {
        let cli = parse(&["user", "create", "bob", "--role", "a,b", "--token", "kvt_x"]).unwrap();
        assert_eq!(cli.global.token.as_deref(), Some("kvt_x"));
        let Command::User(user) = cli.command else {
            panic!("not user")
        };
        let user::UserCommand::Create { roles, .. } = user.command else {
            panic!("not create")
        };
        assert_eq!(roles, ["a", "b"]);
        let cli = parse(&[
            "grant",
            "r",
            "read-write",
            "--keyspace",
            "k",
            "--prefix",
            "t/",
        ])
        .unwrap();
        let Command::Grant(g) = cli.command else {
            panic!("not grant")
        };
        assert_eq!((g.keyspace.as_str(), g.prefix.as_str()), ("k", "t/"));
        assert!(parse(&["grant", "r", "write-only"]).is_err());
        assert!(parse(&["role", "create", "ops", "--admin"]).is_ok());
        assert!(parse(&["revoke", "r", "--keyspace", "k"]).is_ok());
        assert!(parse(&["auth", "token-new"]).is_ok());
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

    fn keyspace_command(args: &[&str]) -> keyspace::KeyspaceCommand {
        match parse(args).unwrap().command {
            Command::Keyspace(k) => k.command,
            other => panic!("not keyspace: {other:?}"),
        }
    }

    fn directory_command(args: &[&str]) -> directory::DirectoryCommand {
        match parse(args).unwrap().command {
            Command::Directory(d) => d.command,
            other => panic!("not directory: {other:?}"),
        }
    }

    #[test]
    fn keyspace_create_hash_with_flags_after_the_subcommand() {
        let cli = parse(&[
            "keyspace",
            "create",
            "users",
            "--strategy",
            "hash",
            "--shards",
            "4",
            "--vnodes",
            "64",
            "--replication",
            "5",
            "-o",
            "json",
            "--router",
            "h:1",
        ])
        .unwrap();
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert_eq!(cli.global.router, "h:1");
        let Command::Keyspace(k) = cli.command else {
            panic!("not keyspace")
        };
        let keyspace::KeyspaceCommand::Create(create) = k.command else {
            panic!("not create")
        };
        let spec = create.spec().unwrap();
        assert_eq!(
            spec,
            kvclient::KeyspaceSpec::hash("users", 4)
                .with_vnodes(64)
                .with_replication(5)
        );
    }

    #[test]
    fn keyspace_create_range_splits_split_points() {
        let keyspace::KeyspaceCommand::Create(create) = keyspace_command(&[
            "keyspace",
            "create",
            "orders",
            "--strategy",
            "range",
            "--split-points",
            "a,b,c",
        ]) else {
            panic!("not create")
        };
        assert_eq!(create.split_points, ["a", "b", "c"]);
        let spec = create.spec().unwrap();
        assert_eq!(
            spec,
            kvclient::KeyspaceSpec::range("orders", ["a", "b", "c"])
        );
        // Repeating the flag adds to the list.
        let keyspace::KeyspaceCommand::Create(create) = keyspace_command(&[
            "keyspace",
            "create",
            "orders",
            "--split-points",
            "a,b",
            "--strategy",
            "range",
            "--split-points",
            "c",
        ]) else {
            panic!("not create")
        };
        assert_eq!(create.split_points, ["a", "b", "c"]);
    }

    #[test]
    fn keyspace_create_directory() {
        let keyspace::KeyspaceCommand::Create(create) = keyspace_command(&[
            "keyspace",
            "create",
            "tenants",
            "--strategy",
            "directory",
            "--fallback",
            "range",
            "--split-points",
            "m",
            "--separator",
            ":",
        ]) else {
            panic!("not create")
        };
        assert_eq!(
            create.spec().unwrap(),
            kvclient::KeyspaceSpec::directory("tenants", kvclient::Strategy::Range)
                .with_split_points(["m"])
                .with_separator(":")
        );
        let keyspace::KeyspaceCommand::Create(create) = keyspace_command(&[
            "keyspace",
            "create",
            "tenants",
            "--strategy",
            "directory",
            "--fallback",
            "hash",
            "--shards",
            "3",
        ]) else {
            panic!("not create")
        };
        assert_eq!(
            create.spec().unwrap(),
            kvclient::KeyspaceSpec::directory("tenants", kvclient::Strategy::Hash).with_shards(3)
        );
    }

    #[test]
    fn keyspace_create_refuses_malformed_flags_with_clear_messages() {
        let message = |args: &[&str]| {
            let mut all = vec!["keyspace", "create", "k"];
            all.extend_from_slice(args);
            let keyspace::KeyspaceCommand::Create(create) = keyspace_command(&all) else {
                panic!("not create")
            };
            create.spec().unwrap_err().to_string()
        };
        assert_eq!(
            message(&["--strategy", "consistent"]),
            "invalid argument: unknown strategy \"consistent\": expected hash, range or directory"
        );
        assert_eq!(
            message(&[
                "--strategy",
                "directory",
                "--fallback",
                "ring",
                "--shards",
                "2"
            ]),
            "invalid argument: unknown fallback \"ring\": expected hash or range"
        );
        for (args, needle) in [
            (&["--strategy", "hash"][..], "shards"),
            (&["--strategy", "hash", "--shards", "0"], "--shards"),
            (&["--strategy", "range", "--split-points", "b,a"], "sorted"),
            (&["--strategy", "range", "--split-points", "a,,b"], "empty"),
            (
                &[
                    "--strategy",
                    "range",
                    "--split-points",
                    "a",
                    "--shards",
                    "3",
                ],
                "ranges",
            ),
            (
                &["--strategy", "hash", "--shards", "2", "--replication", "2"],
                "1, 3 or 5",
            ),
            (
                &["--strategy", "hash", "--shards", "2", "--fallback", "range"],
                "fallback",
            ),
            (&["--strategy", "directory", "--shards", "2"], "fallback"),
            (&["--strategy", "directory", "--fallback", "hash"], "shards"),
        ] {
            let m = message(args);
            assert!(m.starts_with("invalid argument: "), "{args:?}: {m}");
            assert!(m.contains(needle), "{args:?}: {m}");
        }
    }

    #[test]
    fn keyspace_list_describe_drop_locate() {
        let cli = parse(&["keyspace", "list", "-o", "json"]).unwrap();
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert!(matches!(
            cli.command,
            Command::Keyspace(keyspace::KeyspaceArgs {
                command: keyspace::KeyspaceCommand::List
            })
        ));
        let keyspace::KeyspaceCommand::Describe { name } =
            keyspace_command(&["keyspace", "describe", "users", "--timeout", "1s"])
        else {
            panic!("not describe")
        };
        assert_eq!(name, "users");
        let keyspace::KeyspaceCommand::Drop { name, force } =
            keyspace_command(&["keyspace", "drop", "users", "--force"])
        else {
            panic!("not drop")
        };
        assert_eq!((name.as_str(), force), ("users", true));
        let keyspace::KeyspaceCommand::Drop { force, .. } =
            keyspace_command(&["keyspace", "drop", "users"])
        else {
            panic!("not drop")
        };
        assert!(!force);
        let keyspace::KeyspaceCommand::Locate { name, keys } =
            keyspace_command(&["keyspace", "locate", "users", "a", "b"])
        else {
            panic!("not locate")
        };
        assert_eq!(
            (name.as_str(), keys),
            ("users", vec!["a".into(), "b".into()])
        );
    }

    #[test]
    fn directory_commands() {
        let directory::DirectoryCommand::Set {
            keyspace,
            directory,
            group,
        } = directory_command(&["directory", "set", "tenants", "acme", "7", "-o", "json"])
        else {
            panic!("not set")
        };
        assert_eq!(
            (keyspace.as_str(), directory.as_str(), group),
            ("tenants", "acme", 7)
        );
        let directory::DirectoryCommand::Get {
            keyspace,
            directory,
        } = directory_command(&["directory", "get", "tenants", "acme"])
        else {
            panic!("not get")
        };
        assert_eq!((keyspace.as_str(), directory.as_str()), ("tenants", "acme"));
        let directory::DirectoryCommand::List { keyspace } =
            directory_command(&["directory", "list", "tenants"])
        else {
            panic!("not list")
        };
        assert_eq!(keyspace, "tenants");
        let directory::DirectoryCommand::Remove {
            keyspace,
            directory,
        } = directory_command(&["directory", "remove", "tenants", "acme"])
        else {
            panic!("not remove")
        };
        assert_eq!((keyspace.as_str(), directory.as_str()), ("tenants", "acme"));
    }

    #[test]
    fn data_commands_take_a_keyspace() {
        for args in [
            &["put", "k", "v", "--keyspace", "users"][..],
            &["get", "k", "--keyspace", "users"],
            &["delete", "k", "--keyspace", "users"],
            &["scan", "a", "b", "--keyspace", "users"],
        ] {
            let target = match parse(args).unwrap().command {
                Command::Put(a) => a.target,
                Command::Get(a) => a.target,
                Command::Delete(a) => a.target,
                Command::Scan(a) => a.target,
                other => panic!("{other:?}"),
            };
            assert_eq!(target.keyspace, "users", "{args:?}");
        }
    }

    #[test]
    fn admin_usage_errors() {
        for bad in [
            &["keyspace"][..],
            &["keyspace", "create", "k"],
            &[
                "keyspace",
                "create",
                "k",
                "--strategy",
                "hash",
                "--shards",
                "x",
            ],
            &["keyspace", "describe"],
            &["keyspace", "locate", "k"],
            &["directory", "set", "t", "d"],
            &["directory", "set", "t", "d", "group-one"],
            &["directory", "get", "t"],
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.use_stderr(), "{bad:?}");
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
