//! Turning what people type (`127.0.0.1:7400`, `http://router:7400/`) into tonic channels.
//!
//! Channels connect lazily, so [`Client::connect`](crate::Client::connect) succeeds with
//! routers that are not up yet and the first call pays for the connection; a channel
//! reconnects by itself after its connection breaks.

use tonic::transport::{Channel, Endpoint};

use crate::{ClientOptions, Error};

/// Adds `http://` where no scheme is given and drops trailing slashes; `https://` addresses
/// are kept as they are (they need [`ClientOptions::tls`]).
pub(crate) fn normalize(raw: &str) -> Result<String, Error> {
    let invalid = |message: &str| Error::InvalidEndpoint {
        endpoint: raw.to_owned(),
        message: message.to_owned(),
    };
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(invalid("empty address"));
    }
    let (url, authority_at) = match trimmed.split_once("://") {
        None => (format!("http://{}", trimmed.trim_end_matches('/')), 7),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => {
            (format!("http://{}", rest.trim_end_matches('/')), 7)
        }
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => {
            (format!("https://{}", rest.trim_end_matches('/')), 8)
        }
        Some((scheme, _)) => {
            return Err(invalid(&format!(
                "unsupported scheme {scheme:?} (http or https)"
            )))
        }
    };
    // An address without a host (`http://`, `http://:7400`) parses as a URI but cannot be
    // dialled.
    let authority = &url[authority_at..];
    if authority.is_empty() || authority.starts_with(':') {
        return Err(invalid("missing host"));
    }
    if authority.contains('/') {
        return Err(invalid("a router address has no path"));
    }
    // The URI parser accepts any characters as a port; a typo there should fail here, not
    // as a connection error on first use.
    if !authority.ends_with(']') {
        if let Some((_, port)) = authority.rsplit_once(':') {
            if port.parse::<u16>().is_err() {
                return Err(invalid(&format!("bad port {port:?}")));
            }
        }
    }
    Endpoint::from_shared(url.clone()).map_err(|e| invalid(&e.to_string()))?;
    Ok(url)
}

const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A lazily connected channel to one normalized address.
pub(crate) fn channel(url: &str, options: &ClientOptions) -> Result<Channel, Error> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| Error::InvalidEndpoint {
            endpoint: url.to_owned(),
            message: e.to_string(),
        })?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        // Calls share one long-lived stream per router: a router that vanished without closing
        // the connection (a partition, a dead host) must be noticed, so that the stream fails
        // and the next call opens another, instead of every call timing out on the old one.
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    let endpoint = if url.starts_with("https://") {
        let tls = options.tls.as_ref().ok_or_else(|| Error::InvalidEndpoint {
            endpoint: url.to_owned(),
            message: "an https router needs a CA to trust (ClientOptions::tls, kvctl --tls-ca)"
                .into(),
        })?;
        let config = tls.config().map_err(|e| Error::InvalidEndpoint {
            endpoint: url.to_owned(),
            message: e.to_string(),
        })?;
        endpoint
            .tls_config(config)
            .map_err(|e| Error::InvalidEndpoint {
                endpoint: url.to_owned(),
                message: format!("TLS: {e}"),
            })?
    } else {
        endpoint
    };
    Ok(endpoint.connect_lazy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_scheme_and_strips_slash() {
        assert_eq!(
            normalize("127.0.0.1:7400").unwrap(),
            "http://127.0.0.1:7400"
        );
        assert_eq!(
            normalize(" http://127.0.0.1:7400/ ").unwrap(),
            "http://127.0.0.1:7400"
        );
        assert_eq!(normalize("HTTP://router:1").unwrap(), "http://router:1");
        assert_eq!(
            normalize("localhost:7400").unwrap(),
            "http://localhost:7400"
        );
        assert_eq!(normalize("[::1]:7400").unwrap(), "http://[::1]:7400");
        assert_eq!(
            normalize("HTTPS://router:7400/").unwrap(),
            "https://router:7400"
        );
    }

    #[test]
    fn refuses_unusable_addresses() {
        for bad in [
            "",
            "  ",
            "http://",
            "https://",
            "ftp://router:7400",
            "unix:///tmp/x",
            ":7400",
            "http://router:7400/kv",
            "router:notaport",
            "a b:1",
        ] {
            assert!(
                matches!(normalize(bad), Err(Error::InvalidEndpoint { .. })),
                "{bad:?} was accepted"
            );
        }
    }
}
