//! [`FrameCodec`]: the session's WebSocket codec. It wraps awc's `ws::Codec`
//! so that a frame over the configured size limit is skipped with bounded
//! memory instead of ending the session (PROTOCOL.md section 4).
//!
//! awc's codec waits until a whole frame is in its read buffer before it
//! looks at the length limit, so an oversized frame is buffered in full, and
//! past its own `max_size` it fails the stream. This codec reads each frame
//! header itself first: a data frame whose payload is over the limit is
//! consumed as it arrives ("skip N bytes"), keeping only a short excerpt for
//! the log, and then reported as [`Inbound::Oversized`]. Everything else,
//! and every write, goes to the wrapped codec unchanged.
//!
//! Pure bytes-in, items-out: no IO here, so the tests feed it buffers.

use actix_codec::{Decoder, Encoder};
use awc::error::WsProtocolError;
use awc::ws;
use bytes::{Buf, BytesMut};

/// Payload bytes of a skipped frame kept for the log line: a little over the
/// excerpt `connector_core::codec::excerpt` shows, so it marks the cut.
const EXCERPT_KEEP: usize = 96;

/// WebSocket opcodes of data frames (RFC 6455 section 5.2): continuation,
/// text and binary. Control frames are at most 125 bytes and never skipped.
const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;

/// An item read from the platform's socket.
#[derive(Debug)]
pub enum Inbound {
    /// A frame within the limit, as awc's codec decoded it.
    Frame(ws::Frame),
    /// A data frame over the limit: skipped, with its declared payload length
    /// and the start of its payload (unmasked).
    Oversized {
        len: u64,
        /// The frame's opcode and FIN bit, so the session can drop a
        /// fragmented message a skipped fragment belonged to.
        fragment: bool,
        excerpt: Vec<u8>,
    },
}

/// A frame header (RFC 6455 section 5.2), as far as skipping needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    /// The declared payload length (7-, 16- or 64-bit on the wire).
    pub len: u64,
    pub mask: Option<[u8; 4]>,
    /// Bytes of the header itself, before the payload.
    pub header_len: usize,
}

/// Reads a frame header from the start of `src`; `None` while it is incomplete.
/// Checks nothing beyond the layout: the wrapped codec refuses bad frames.
pub fn parse_header(src: &[u8]) -> Option<Header> {
    let (&first, &second) = (src.first()?, src.get(1)?);
    let (len, mut at) = match second & 0x7F {
        126 => (u64::from(u16::from_be_bytes(src.get(2..4)?.try_into().ok()?)), 4),
        127 => (u64::from_be_bytes(src.get(2..10)?.try_into().ok()?), 10),
        short => (u64::from(short), 2),
    };
    let mask = if second & 0x80 != 0 {
        let key: [u8; 4] = src.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(key)
    } else {
        None
    };
    Some(Header {
        fin: first & 0x80 != 0,
        opcode: first & 0x0F,
        len,
        mask,
        header_len: at,
    })
}

/// A frame being skipped: how much of it is still to come.
#[derive(Debug)]
struct Skip {
    header: Header,
    remaining: u64,
    excerpt: Vec<u8>,
}

/// The session codec; see the module docs.
#[derive(Debug)]
pub struct FrameCodec {
    inner: ws::Codec,
    limit: usize,
    skip: Option<Skip>,
}

impl FrameCodec {
    /// A client-side codec (the platform's frames are unmasked) that skips
    /// data frames whose payload is over `limit` bytes.
    pub fn new(limit: usize) -> Self {
        FrameCodec {
            inner: ws::Codec::new().max_size(limit).client_mode(),
            limit,
            skip: None,
        }
    }

    /// True while the payload of an oversized frame is being skipped.
    pub fn skipping(&self) -> bool {
        self.skip.is_some()
    }

    /// Consumes what `src` holds of the frame being skipped; the frame's
    /// item once its last byte is in.
    fn skip_payload(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, WsProtocolError> {
        let skip = self.skip.as_mut().expect("called while skipping");
        let take = usize::try_from(skip.remaining).map_or(src.len(), |r| r.min(src.len()));
        let offset = skip.header.len - skip.remaining;
        let keep = take.min(EXCERPT_KEEP.saturating_sub(skip.excerpt.len()));
        for (i, &byte) in src[..keep].iter().enumerate() {
            // The mask repeats every 4 bytes from the start of the payload.
            let key = skip.header.mask.map_or(0, |m| m[((offset + i as u64) % 4) as usize]);
            skip.excerpt.push(byte ^ key);
        }
        src.advance(take);
        skip.remaining -= take as u64;
        if skip.remaining > 0 {
            return Ok(None);
        }
        let Skip { header, excerpt, .. } = self.skip.take().expect("checked above");
        let fragment = !header.fin || header.opcode == OP_CONTINUATION;
        if fragment {
            self.track_fragment(header)?;
        }
        Ok(Some(Inbound::Oversized {
            len: header.len,
            fragment,
            excerpt,
        }))
    }

    /// Keeps the wrapped codec's view of fragmented messages in step with a
    /// skipped fragment, by showing it an empty frame with the same opcode
    /// and FIN bit: otherwise the next fragment would look out of order to it
    /// and fail the session. A skipped fragment in the wrong place fails it
    /// just as the real one would have.
    fn track_fragment(&mut self, header: Header) -> Result<(), WsProtocolError> {
        let first = if header.fin { 0x80 } else { 0 } | header.opcode;
        let mut empty = BytesMut::from(&[first, 0][..]);
        self.inner.decode(&mut empty).map(drop)
    }
}

impl Decoder for FrameCodec {
    type Item = Inbound;
    type Error = WsProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, WsProtocolError> {
        if self.skip.is_none() {
            let Some(header) = parse_header(src) else {
                return Ok(None);
            };
            let data = matches!(header.opcode, OP_CONTINUATION | OP_TEXT | OP_BINARY);
            if !data || header.len <= self.limit as u64 {
                return Ok(self.inner.decode(src)?.map(Inbound::Frame));
            }
            src.advance(header.header_len);
            self.skip = Some(Skip {
                header,
                remaining: header.len,
                excerpt: Vec::with_capacity(EXCERPT_KEEP.min(header.len as usize)),
            });
        }
        self.skip_payload(src)
    }
}

impl Encoder<ws::Message> for FrameCodec {
    type Error = WsProtocolError;

    fn encode(&mut self, item: ws::Message, dst: &mut BytesMut) -> Result<(), WsProtocolError> {
        self.inner.encode(item, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unmasked (server-to-client) frame header for `len` bytes.
    fn header(first: u8, len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
        let bit = if mask.is_some() { 0x80 } else { 0 };
        let mut out = vec![first];
        if len < 126 {
            out.push(bit | len as u8);
        } else if len <= u64::from(u16::MAX) {
            out.push(bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        out.extend(mask.into_iter().flatten());
        out
    }

    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = header(first, payload.len() as u64, None);
        out.extend_from_slice(payload);
        out
    }

    /// Feeds `bytes` in pieces of `chunk` and collects every item.
    fn decode_all(codec: &mut FrameCodec, bytes: &[u8], chunk: usize) -> Vec<Inbound> {
        let mut buf = BytesMut::new();
        let mut items = Vec::new();
        for piece in bytes.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(item) = codec.decode(&mut buf).expect("decodes") {
                items.push(item);
            }
            if codec.skipping() {
                assert!(buf.is_empty(), "a skipped payload must not stay buffered");
            }
        }
        items
    }

    #[test]
    fn headers_of_every_length_form_parse_whole_or_not_at_all() {
        let key = Some([1, 2, 3, 4]);
        let table: [(Vec<u8>, Header); 5] = [
            (
                header(0x81, 5, None),
                Header {
                    fin: true,
                    opcode: 1,
                    len: 5,
                    mask: None,
                    header_len: 2,
                },
            ),
            (
                header(0x01, 125, key),
                Header {
                    fin: false,
                    opcode: 1,
                    len: 125,
                    mask: key,
                    header_len: 6,
                },
            ),
            (
                header(0x82, 126, None),
                Header {
                    fin: true,
                    opcode: 2,
                    len: 126,
                    mask: None,
                    header_len: 4,
                },
            ),
            (
                header(0x80, 65_535, key),
                Header {
                    fin: true,
                    opcode: 0,
                    len: 65_535,
                    mask: key,
                    header_len: 8,
                },
            ),
            (
                header(0x81, 1 << 40, key),
                Header {
                    fin: true,
                    opcode: 1,
                    len: 1 << 40,
                    mask: key,
                    header_len: 14,
                },
            ),
        ];
        for (bytes, expected) in table {
            assert_eq!(parse_header(&bytes), Some(expected), "{bytes:?}");
            for cut in 0..bytes.len() {
                assert_eq!(parse_header(&bytes[..cut]), None, "{bytes:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn frames_within_the_limit_go_to_the_wrapped_codec() {
        let mut codec = FrameCodec::new(16);
        let mut bytes = frame(0x81, b"hello");
        bytes.extend(frame(0x89, b"ping"));
        let items = decode_all(&mut codec, &bytes, 3);
        assert!(matches!(&items[..], [
            Inbound::Frame(ws::Frame::Text(t)),
            Inbound::Frame(ws::Frame::Ping(p)),
        ] if &t[..] == b"hello" && &p[..] == b"ping"));
    }

    #[test]
    fn an_oversized_frame_is_skipped_with_an_excerpt_and_the_next_frame_still_reads() {
        for chunk in [1, 7, 1000, 100_000] {
            let mut codec = FrameCodec::new(100);
            let payload: Vec<u8> = (0..70_000u32).map(|i| b'a' + (i % 26) as u8).collect();
            let mut bytes = frame(0x81, &payload);
            bytes.extend(frame(0x81, b"{}"));
            let items = decode_all(&mut codec, &bytes, chunk);
            match &items[..] {
                [Inbound::Oversized {
                    len,
                    fragment: false,
                    excerpt,
                }, Inbound::Frame(ws::Frame::Text(next))] => {
                    assert_eq!(*len, 70_000);
                    assert_eq!(&excerpt[..], &payload[..EXCERPT_KEEP]);
                    assert_eq!(&next[..], b"{}");
                }
                other => panic!("chunk {chunk}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_masked_oversized_frame_keeps_an_unmasked_excerpt() {
        let mut codec = FrameCodec::new(4);
        let key = [0x11, 0x22, 0x33, 0x44];
        let plain = b"0123456789";
        let mut bytes = header(0x82, plain.len() as u64, Some(key));
        bytes.extend(plain.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        let items = decode_all(&mut codec, &bytes, 3);
        assert!(
            matches!(&items[..], [Inbound::Oversized { len: 10, excerpt, .. }] if &excerpt[..] == plain),
            "{items:?}"
        );
    }

    #[test]
    fn a_huge_declared_length_is_skipped_as_it_arrives() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&header(0x81, 1 << 40, None)[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        for _ in 0..100 {
            buf.extend_from_slice(&[b'x'; 4096]);
            assert!(codec.decode(&mut buf).unwrap().is_none());
            assert!(buf.is_empty());
        }
        assert!(codec.skipping());
    }

    #[test]
    fn skipping_a_fragment_keeps_the_fragment_order_in_step() {
        let mut codec = FrameCodec::new(8);
        let mut bytes = frame(0x01, b"first fragment, too long");
        bytes.extend(frame(0x00, b"mid"));
        bytes.extend(frame(0x80, b"last"));
        bytes.extend(frame(0x81, b"{}"));
        let items = decode_all(&mut codec, &bytes, 5);
        assert!(
            matches!(
                &items[..],
                [
                    Inbound::Oversized { fragment: true, .. },
                    Inbound::Frame(ws::Frame::Continuation(actix_http::ws::Item::Continue(_))),
                    Inbound::Frame(ws::Frame::Continuation(actix_http::ws::Item::Last(_))),
                    Inbound::Frame(ws::Frame::Text(_)),
                ]
            ),
            "{items:?}"
        );
        // An oversized last fragment ends the message for the wrapped codec too.
        let mut bytes = frame(0x01, b"ok");
        bytes.extend(frame(0x80, b"a last fragment, too long"));
        bytes.extend(frame(0x81, b"{}"));
        let items = decode_all(&mut codec, &bytes, 4);
        assert!(
            matches!(
                &items[..],
                [
                    Inbound::Frame(ws::Frame::Continuation(actix_http::ws::Item::FirstText(_))),
                    Inbound::Oversized { fragment: true, .. },
                    Inbound::Frame(ws::Frame::Text(_)),
                ]
            ),
            "{items:?}"
        );
    }

    /// xorshift64: enough spread for generated frames and splits, no dependency.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn random_frames_split_anywhere_decode_the_same_and_only_small_ones_are_kept() {
        const LIMIT: usize = 300;
        let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
        for _ in 0..300 {
            // Text frames of sizes around the limit, some masked.
            let mut bytes = Vec::new();
            let mut expected = Vec::new();
            for _ in 0..(next(&mut rng) % 8 + 1) {
                let len = (next(&mut rng) % (3 * LIMIT as u64)) as usize;
                let fill = b'a' + (next(&mut rng) % 26) as u8;
                let mask = (next(&mut rng) & 1 == 0).then(|| (next(&mut rng) as u32).to_be_bytes());
                bytes.extend(header(0x81, len as u64, mask));
                bytes.extend((0..len).map(|i| fill ^ mask.map_or(0, |m| m[i % 4])));
                expected.push((len, fill, len > LIMIT));
            }
            let mut codec = FrameCodec::new(LIMIT);
            let mut buf = BytesMut::new();
            let mut items = Vec::new();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let take = ((next(&mut rng) % 700) as usize + 1).min(rest.len());
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(item)) => items.push(item),
                        Ok(None) => break,
                        // A masked frame is a protocol error for a client
                        // unless it is skipped: the session would end here.
                        Err(_) => {
                            buf.clear();
                            rest = &[];
                            break;
                        }
                    }
                }
                assert!(buf.len() <= LIMIT + 14 + 700, "buffered {} bytes", buf.len());
            }
            for (item, &(len, fill, oversized)) in items.iter().zip(&expected) {
                match item {
                    Inbound::Oversized { len: got, excerpt, .. } => {
                        assert!(oversized);
                        assert_eq!(*got, len as u64);
                        assert!(excerpt.iter().all(|&b| b == fill));
                    }
                    Inbound::Frame(ws::Frame::Text(text)) => {
                        assert!(!oversized);
                        assert_eq!(text.len(), len);
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn writes_go_to_the_wrapped_codec() {
        let mut ours = BytesMut::new();
        let mut theirs = BytesMut::new();
        FrameCodec::new(8)
            .encode(ws::Message::Text("hello there".into()), &mut ours)
            .unwrap();
        ws::Codec::new()
            .client_mode()
            .encode(ws::Message::Text("hello there".into()), &mut theirs)
            .unwrap();
        // Client frames are masked with a random key: compare the layout.
        assert_eq!(ours.len(), theirs.len());
        assert_eq!(parse_header(&ours).map(|h| h.len), Some(11));
    }
}
