//! The raw baseline: a bare WebSocket client on a blocking `TcpStream` that
//! does what the runtime does for each event (build the message, encode it
//! with the runtime's own codec, mask it as a client frame) and writes the
//! frames in batches of 512, with no actors, buffer or locks in between.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use connector_core::codec::encode_message;
use connector_core::Message;
use connector_runtime::device::unix_now;
use platform_sim::wire::encode_masked;

/// The opcode of a text frame.
const TEXT: u8 = 0x1;

/// Frames per socket write, as the runtime's writer.
const BATCH: usize = 512;

/// An authenticated session with the simulator.
pub struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    /// Opens `/ws` and sends the (empty) credentials frame.
    pub fn connect(addr: SocketAddr) -> std::io::Result<RawClient> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes())?;
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte)?;
            answer.push(byte[0]);
        }
        if !answer.starts_with(b"HTTP/1.1 101") {
            return Err(std::io::Error::other("the simulator refused the WebSocket upgrade"));
        }
        let mut frame = Vec::new();
        encode_masked(
            &mut frame,
            TEXT,
            br#"{"user":"","pw":""}"#,
            0x5a17_c0de_u32.to_be_bytes(),
        );
        stream.write_all(&frame)?;
        Ok(RawClient { stream })
    }

    /// Writes `change:` events of `devices` round-robin until `stop`,
    /// counting them in `sent`.
    pub fn blast(mut self, devices: &[String], stop: &AtomicBool, sent: &AtomicU64) -> std::io::Result<()> {
        let mut buffer = Vec::with_capacity(BATCH * 256);
        let mut i = 0;
        let mut mask: u32 = 0x1234_5678;
        while !stop.load(Ordering::Relaxed) {
            buffer.clear();
            let now = unix_now();
            for _ in 0..BATCH {
                let message = Message::event(devices[i].as_str(), crate::pump::ENDPOINT, crate::pump::BODY);
                let text = encode_message(&message, now);
                mask = mask.wrapping_mul(2_654_435_761).wrapping_add(1);
                encode_masked(&mut buffer, TEXT, text.as_bytes(), mask.to_be_bytes());
                i = if i + 1 == devices.len() { 0 } else { i + 1 };
            }
            self.stream.write_all(&buffer)?;
            sent.fetch_add(BATCH as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Spawns [`RawClient::blast`] on a thread of its own.
pub fn spawn_blast(
    client: RawClient,
    devices: Vec<String>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> std::thread::JoinHandle<std::io::Result<()>> {
    std::thread::Builder::new()
        .name("raw-baseline".to_owned())
        .spawn(move || client.blast(&devices, &stop, &sent))
        .expect("raw thread starts")
}
