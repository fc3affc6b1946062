//! The router's settings, and the small duration syntax its flags use ("5s", "500ms").
//!
//! Kept apart from `main.rs` so that tests and embedders (such as `kvctl dev`) build a
//! [`Config`] without going through clap.

use std::time::Duration;

use shardmap::Limits;

/// Everything [`crate::run`] needs besides the bound gRPC listener and the shutdown token.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seed node addresses (`HOST:PORT`) to load the cluster map from. Once loaded, the map's own
    /// node addresses are used for routing and for later refreshes; the seeds stay a fallback.
    pub nodes: Vec<String>,
    /// Where to serve `/health`, `/ready` and `/metrics` (`HOST:PORT`), if anywhere.
    pub http: Option<String>,
    /// The longest a client request may take, retries included. A shorter `grpc-timeout` sent
    /// by the client wins.
    pub request_timeout: Duration,
    /// How often the cluster map is re-read when nothing suggests it changed: a fallback, since
    /// the router follows the map with `WatchClusterMap`.
    pub map_refresh_interval: Duration,
    /// Key and value size limits checked before anything is sent to a node.
    pub limits: Limits,
    /// Serve the client API over TLS with these files (client certificates from the CA are
    /// verified when presented, not required), and dial nodes with mutual TLS.
    pub tls: Option<kv_proto::tls::TlsFiles>,
}

impl Config {
    /// A configuration with the default timeouts and limits for the given seed nodes.
    ///
    /// ```
    /// let config = kvrouter::Config::new(vec!["127.0.0.1:7001".to_string()]);
    /// assert_eq!(config.request_timeout, std::time::Duration::from_secs(5));
    /// ```
    pub fn new(nodes: Vec<String>) -> Config {
        Config {
            nodes,
            http: None,
            request_timeout: Duration::from_secs(5),
            map_refresh_interval: Duration::from_secs(5),
            limits: Limits::default(),
            tls: None,
        }
    }
}

/// Why a duration flag could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationParseError {
    #[error("empty duration")]
    Empty,
    #[error("duration {0:?} has no unit (use ns, us, ms, s, m or h, e.g. 500ms)")]
    MissingUnit(String),
    #[error("duration {0:?} has an unknown unit (use ns, us, ms, s, m or h)")]
    UnknownUnit(String),
    #[error("duration {0:?} is not a non-negative number followed by a unit")]
    BadNumber(String),
}

/// Parses a duration such as `5s`, `500ms`, `1.5s`, `2m`, `100us`, `1h`: one non-negative
/// number (decimals allowed) followed by one unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`).
///
/// ```
/// use std::time::Duration;
/// assert_eq!(kvrouter::parse_duration("500ms"), Ok(Duration::from_millis(500)));
/// assert_eq!(kvrouter::parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert!(kvrouter::parse_duration("5").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, DurationParseError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationParseError::Empty);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if unit.is_empty() {
        return Err(DurationParseError::MissingUnit(text.to_string()));
    }
    let unit_secs = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(DurationParseError::UnknownUnit(text.to_string())),
    };
    if number.is_empty() {
        return Err(DurationParseError::BadNumber(text.to_string()));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| DurationParseError::BadNumber(text.to_string()))?;
    Duration::try_from_secs_f64(value * unit_secs)
        .map_err(|_| DurationParseError::BadNumber(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_units() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 10ms "), Ok(Duration::from_millis(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn rejects_malformed_durations() {
        assert_eq!(parse_duration(""), Err(DurationParseError::Empty));
        assert!(matches!(
            parse_duration("5"),
            Err(DurationParseError::MissingUnit(_))
        ));
        assert!(matches!(
            parse_duration("5d"),
            Err(DurationParseError::UnknownUnit(_))
        ));
        assert!(matches!(
            parse_duration("ms"),
            Err(DurationParseError::BadNumber(_))
        ));
        assert!(matches!(
            parse_duration("1.2.3s"),
            Err(DurationParseError::BadNumber(_))
        ));
        assert!(parse_duration("-1s").is_err());
    }
}
