//! A raw async WebSocket client on a tokio `TcpStream`: exact control over
//! the bytes, and it reports IO errors (such as a reset) as they are.

use std::{io, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::frames::{decode_server, encode_masked, handshake_request, ServerFrame};

pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// What a read saw.
#[derive(Debug)]
pub enum Read {
    Frame(ServerFrame),
    /// Orderly end of stream (FIN) with no further frame.
    Eof,
    Error(io::Error),
}

impl RawWs {
    pub async fn connect(addr: SocketAddr) -> io::Result<RawWs> {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(handshake_request(&addr.to_string(), "/ws").as_bytes())
            .await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no handshake answer"));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "handshake refused: {head}");
        buf.drain(..end);
        Ok(RawWs { stream, buf })
    }

    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        encode_masked(&mut out, opcode, payload, [1, 2, 3, 4]);
        self.stream.write_all(&out).await
    }

    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.send(super::frames::TEXT, text.as_bytes()).await
    }

    /// Writes many text frames in one write, as a busy peer's kernel would
    /// deliver them.
    pub async fn send_texts(&mut self, texts: &[String]) -> io::Result<()> {
        let mut out = Vec::new();
        for text in texts {
            encode_masked(&mut out, super::frames::TEXT, text.as_bytes(), [1, 2, 3, 4]);
        }
        self.stream.write_all(&out).await
    }

    /// Ends the write half (FIN) without a close frame.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        self.stream.shutdown().await
    }

    /// Reads the next frame, waiting at most `timeout` (panics after it).
    pub async fn read(&mut self, timeout: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some((frame, used)) = decode_server(&self.buf) {
                self.buf.drain(..used);
                return Read::Frame(frame);
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => panic!("no frame within {timeout:?}"),
                Ok(Ok(0)) => return Read::Eof,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(error)) => return Read::Error(error),
            }
        }
    }
}
