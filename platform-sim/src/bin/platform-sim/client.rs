//! A minimal HTTP/1.1 client for the control API: one request per
//! connection over a plain `TcpStream`. The control API is plain HTTP on
//! loopback with sized JSON answers, so this is all the CLI needs, and it
//! keeps a full HTTP client out of the simulator's dependencies.

use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    time::Duration,
};

/// What went wrong talking to the control API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the simulator URL must look like http://HOST:PORT, not {0:?}")]
    BadUrl(String),
    #[error("cannot reach the simulator at {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("error talking to the simulator: {0}")]
    Io(#[from] std::io::Error),
    #[error("the simulator sent an answer that is not HTTP")]
    BadAnswer,
}

/// Status and body of one answer.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// The `HOST:PORT` part of an `http://` URL.
pub fn authority(url: &str) -> Result<String, ClientError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ClientError::BadUrl(url.to_owned()))?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return Err(ClientError::BadUrl(url.to_owned()));
    }
    Ok(authority.to_owned())
}

/// Sends one request to `url` (`http://HOST:PORT`) + `path`.
pub fn request(
    url: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    let authority = authority(url)?;
    let addr = authority
        .to_socket_addrs()
        .map_err(|source| ClientError::Connect {
            addr: authority.clone(),
            source,
        })?
        .next()
        .ok_or_else(|| ClientError::BadUrl(url.to_owned()))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|source| ClientError::Connect {
            addr: authority.clone(),
            source,
        })?;
    stream.set_read_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_answer(&raw)
}

fn parse_answer(raw: &[u8]) -> Result<Answer, ClientError> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(ClientError::BadAnswer)?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| ClientError::BadAnswer)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(ClientError::BadAnswer)?;
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = &raw[split + 4..];
    let body = if chunked {
        dechunk(body).ok_or(ClientError::BadAnswer)?
    } else {
        body.to_vec()
    };
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sized_and_chunked_answers() {
        let sized = parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((sized.status, sized.body.as_str()), (200, "{}"));
        let chunked = parse_answer(
            b"HTTP/1.1 504 Gateway Timeout\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((chunked.status, chunked.body.as_str()), (504, "abcde"));
        assert!(parse_answer(b"garbage").is_err());
    }

    #[test]
    fn authority_needs_http_url() {
        assert_eq!(authority("http://127.0.0.1:8093/lookup").unwrap(), "127.0.0.1:8093");
        assert!(authority("ws://x:1").is_err());
        assert!(authority("http://").is_err());
    }
}
