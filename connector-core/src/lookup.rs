//! Reads the socket address out of the platform's lookup answer (PROTOCOL.md
//! section 2) and derives the HTTP base that registration uses.

use std::fmt;

/// Why a lookup body gave no usable socket address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("lookup answer holds no ws:// or wss:// URL: {excerpt:?}")]
    NoSocketUrl { excerpt: String },
    #[error("socket URL {url:?} has no host")]
    NoHost { url: String },
    #[error("socket URL {url:?} has an invalid port")]
    BadPort { url: String },
}

/// Where the platform's WebSocket listens, as the lookup answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketUrl {
    /// `wss://` (and so `https://` for registration) rather than `ws://`.
    pub secure: bool,
    /// Host name or address; an IPv6 address keeps its brackets.
    pub host: String,
    pub port: u16,
    /// Path after the port, `""` when there is none.
    pub path: String,
}

impl SocketUrl {
    /// The WebSocket URL to open.
    pub fn ws_url(&self) -> String {
        let scheme = if self.secure { "wss" } else { "ws" };
        format!("{scheme}://{}:{}{}", self.host, self.port, self.path)
    }

    /// `BASE` of PROTOCOL.md section 2: the same host and port over HTTP.
    pub fn http_base(&self) -> String {
        let scheme = if self.secure { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }

    /// The same address with TLS switched on, as `CONNECTOR_HTTPS` asks even
    /// when the platform answered a plain `ws://` URL.
    pub fn with_tls(mut self, secure: bool) -> Self {
        self.secure |= secure;
        self
    }
}

impl fmt::Display for SocketUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.ws_url())
    }
}

/// Takes the first `ws://` or `wss://` URL in a lookup body. The body may be
/// plain text or a JSON string (whose escapes are undone first); the URL ends
/// at white space, a quote or the end of the body.
pub fn parse_lookup_body(body: &str) -> Result<SocketUrl, LookupError> {
    let unquoted = serde_json::from_str::<String>(body.trim()).ok();
    let text = unquoted.as_deref().unwrap_or(body);
    let start = [text.find("ws://"), text.find("wss://")]
        .into_iter()
        .flatten()
        .min()
        .ok_or_else(|| LookupError::NoSocketUrl {
            excerpt: crate::codec::excerpt(body.as_bytes()),
        })?;
    let rest = &text[start..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
        .unwrap_or(rest.len());
    parse_socket_url(&rest[..end])
}

fn parse_socket_url(url: &str) -> Result<SocketUrl, LookupError> {
    let (secure, rest) = match url.strip_prefix("wss://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("ws://").unwrap_or(url)),
    };
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    // The seed splits on ':'; an IPv6 literal needs its brackets honoured.
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let close = v6
                .find(']')
                .ok_or_else(|| LookupError::NoHost { url: url.to_owned() })?;
            (&authority[..close + 2], v6[close + 1..].strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() || host == "[]" {
        return Err(LookupError::NoHost { url: url.to_owned() });
    }
    let port = match port {
        None => {
            if secure {
                443
            } else {
                80
            }
        }
        Some(port) => port.parse().map_err(|_| LookupError::BadPort { url: url.to_owned() })?,
    };
    Ok(SocketUrl {
        secure,
        host: host.to_owned(),
        port,
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(secure: bool, host: &str, port: u16, path: &str) -> SocketUrl {
        SocketUrl {
            secure,
            host: host.into(),
            port,
            path: path.into(),
        }
    }

    #[test]
    fn good_lookup_bodies() {
        let table = [
            ("ws://10.0.0.1:8093", url(false, "10.0.0.1", 8093, "")),
            ("ws://platform.example:8093\n", url(false, "platform.example", 8093, "")),
            ("\"ws://127.0.0.1:5000/ws\"", url(false, "127.0.0.1", 5000, "/ws")),
            ("\"ws:\\/\\/127.0.0.1:5000\\/ws\"", url(false, "127.0.0.1", 5000, "/ws")),
            (
                "wss://secure.example:443/socket/v1",
                url(true, "secure.example", 443, "/socket/v1"),
            ),
            ("connect to ws://h:1/p please", url(false, "h", 1, "/p")),
            ("{\"url\": \"wss://h:2\"}", url(true, "h", 2, "")),
            ("ws://h", url(false, "h", 80, "")),
            ("wss://h/x", url(true, "h", 443, "/x")),
            ("ws://[::1]:8093/ws", url(false, "[::1]", 8093, "/ws")),
            ("ws://h:9?x=1", url(false, "h", 9, "?x=1")),
        ];
        for (body, expected) in table {
            assert_eq!(parse_lookup_body(body), Ok(expected), "body {body:?}");
        }
    }

    #[test]
    fn bad_lookup_bodies() {
        let table = [
            ("", "no ws:// or wss://"),
            ("http://h:1", "no ws:// or wss://"),
            ("<html>502 Bad Gateway</html>", "no ws:// or wss://"),
            ("ws://:8093", "no host"),
            ("ws://h:80x", "invalid port"),
            ("ws://h:70000", "invalid port"),
            ("ws://[::1:5", "no host"),
        ];
        for (body, fragment) in table {
            let err = parse_lookup_body(body).unwrap_err();
            assert!(err.to_string().contains(fragment), "{body:?}: {err}");
        }
    }

    #[test]
    fn derives_the_http_base_and_honours_forced_tls() {
        let plain = url(false, "h", 8093, "/ws");
        assert_eq!(plain.http_base(), "http://h:8093");
        assert_eq!(plain.ws_url(), "ws://h:8093/ws");
        let forced = plain.with_tls(true);
        assert_eq!(forced.http_base(), "https://h:8093");
        assert_eq!(forced.ws_url(), "wss://h:8093/ws");
    }
}
