//! Flags shared by several subcommands.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use kvclient::{Client, ClientOptions, Consistency};

use crate::output::OutputFormat;

/// Flags every subcommand accepts, before or after its name.
#[derive(Debug, Args)]
pub struct Global {
    /// Router address; several may be given, comma-separated, to fail over between them.
    #[arg(
        long,
        global = true,
        env = "KVCTL_ROUTER",
        default_value = "http://127.0.0.1:7400"
    )]
    pub router: String,

    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// Time budget of each request, retries included (e.g. 500ms, 5s, 1m).
    #[arg(long, global = true, env = "KVCTL_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// CA certificate (PEM) to trust for an `https://` router.
    #[arg(long, global = true, env = "KVCTL_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Client certificate (PEM) to present to an `https://` router (with --tls-key).
    #[arg(
        long,
        global = true,
        env = "KVCTL_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<std::path::PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(
        long,
        global = true,
        env = "KVCTL_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<std::path::PathBuf>,

    /// Access token (`kvt_...`) sent with every request, for a cluster with authentication
    /// on (from `kvctl user create`, `kvctl user token` or the bootstrap token file).
    #[arg(long, global = true, env = "KVCTL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl Global {
    /// The TLS setup of the flags, if any.
    pub fn tls(&self) -> anyhow::Result<Option<kv_proto::tls::ClientTls>> {
        let identity = self.tls_cert.clone().zip(self.tls_key.clone());
        match (&self.tls_ca, identity) {
            (Some(ca), identity) => Ok(Some(kv_proto::tls::ClientTls {
                ca: ca.clone(),
                identity,
            })),
            (None, Some(_)) => {
                anyhow::bail!(
                    "--tls-cert needs --tls-ca: the CA that signed the router's certificate"
                )
            }
            (None, None) => Ok(None),
        }
    }

    /// A client for the routers named by `--router`.
    pub fn client(&self) -> anyhow::Result<Client> {
        let endpoints = self
            .router
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty());
        Client::with_options(endpoints, self.client_options()?).context("--router")
    }

    /// What every client kvctl makes is given: the timeout, TLS files and token.
    pub fn client_options(&self) -> anyhow::Result<ClientOptions> {
        Ok(ClientOptions {
            timeout: self.timeout,
            tls: self.tls()?,
            token: self.token.clone().map(Into::into),
            ..ClientOptions::default()
        })
    }
}

/// Where a data command applies and how consistent it must be.
#[derive(Debug, Args)]
pub struct Target {
    /// Consistency of the request.
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Strong)]
    pub consistency: ConsistencyArg,

    /// Keyspace (the default keyspace when not given).
    #[arg(long, default_value = "")]
    pub keyspace: String,
}

/// `--consistency` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    /// Linearizable reads, quorum-committed writes.
    Strong,
    /// Possibly stale reads from any replica, leader-accepted writes.
    Eventual,
}

impl From<ConsistencyArg> for Consistency {
    fn from(c: ConsistencyArg) -> Self {
        match c {
            ConsistencyArg::Strong => Consistency::Strong,
            ConsistencyArg::Eventual => Consistency::Eventual,
        }
    }
}

/// Parses `500ms`, `5s`, `1.5s`, `2m`, `1h`, or a bare number of seconds. Zero is refused:
/// no request can finish in no time.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 500ms, 5s, 2m)"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit {other:?} (use ms, s, m or h)")),
    };
    let duration = Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "0", "0s", "-1s", "s", "5 parsecs", "1e400", "1..2s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
