//! The outgoing buffer: every frame the connector sends waits here, in order,
//! until the link's writer takes it, bounded by count and by bytes.
//!
//! Devices push from any thread through [`OutboxHandle`] (no actor hop per
//! event); the connection's writer drains it while a session is up.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytestring::ByteString;
use connector_core::codec::FrameKind;
pub use connector_core::config::Overflow;
use tokio::sync::Notify;

/// One encoded frame ready for the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    /// Shared bytes: the writer clones it per write for the price of a count.
    pub text: ByteString,
}

impl Frame {
    pub fn new(kind: FrameKind, text: impl Into<ByteString>) -> Self {
        Frame {
            kind,
            text: text.into(),
        }
    }

    pub fn update() -> Self {
        Frame::new(FrameKind::Update, connector_core::codec::UPDATE_FRAME)
    }

    fn cost(&self) -> usize {
        self.text.len()
    }
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// Whether the new frame is in the buffer.
    pub accepted: bool,
    /// Frames given up to respect the bound (the new one included when refused).
    pub dropped: u64,
    /// True for the first drop after the buffer had room again, so a burst of
    /// drops is logged once rather than once per frame.
    pub burst_started: bool,
}

/// The bounded, ordered queue itself. Plain data; [`OutboxHandle`] shares it.
#[derive(Debug)]
pub struct Outbox {
    frames: VecDeque<Frame>,
    bytes: usize,
    max_frames: usize,
    max_bytes: usize,
    policy: Overflow,
    dropped_total: u64,
    in_burst: bool,
}

impl Outbox {
    pub fn new(max_frames: usize, max_bytes: usize, policy: Overflow) -> Self {
        Outbox {
            frames: VecDeque::new(),
            bytes: 0,
            max_frames: max_frames.max(1),
            max_bytes: max_bytes.max(1),
            policy,
            dropped_total: 0,
            in_burst: false,
        }
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    fn fits(&self, extra: usize) -> bool {
        self.frames.len() < self.max_frames && self.bytes + extra <= self.max_bytes
    }

    /// Appends a frame, applying the overflow policy when the bound is hit.
    pub fn push(&mut self, frame: Frame) -> Pushed {
        let cost = frame.cost();
        let mut dropped = 0;
        let accepted = if cost > self.max_bytes {
            // Larger than the whole buffer: no policy can make room for it.
            dropped = 1;
            false
        } else {
            match self.policy {
                Overflow::DropOldest => {
                    while !self.fits(cost) {
                        let old = self.frames.pop_front().expect("a full buffer has a frame");
                        self.bytes -= old.cost();
                        dropped += 1;
                    }
                    true
                }
                Overflow::DropNewest => {
                    if !self.fits(cost) {
                        dropped = 1;
                    }
                    dropped == 0
                }
            }
        };
        if accepted {
            self.bytes += cost;
            self.frames.push_back(frame);
        }
        self.dropped_total += dropped;
        let burst_started = dropped > 0 && !self.in_burst;
        if dropped > 0 {
            self.in_burst = true;
        }
        Pushed {
            accepted,
            dropped,
            burst_started,
        }
    }

    /// Takes frames from the front, at most `max_frames` and about `max_bytes`
    /// (always at least one), for one write to the socket.
    pub fn take_batch(&mut self, max_frames: usize, max_bytes: usize, into: &mut Vec<Frame>) {
        let mut bytes = 0;
        while into.len() < max_frames && (into.is_empty() || bytes < max_bytes) {
            let Some(frame) = self.frames.pop_front() else { break };
            bytes += frame.cost();
            self.bytes -= frame.cost();
            into.push(frame);
        }
        if self.frames.len() < self.max_frames / 2 {
            self.in_burst = false;
        }
    }

    /// Puts frames that could not be written back at the front, in their
    /// order, so a lost link loses nothing the writer had not finished.
    /// They were accepted once, so they go back even past the bound.
    pub fn requeue_front(&mut self, frames: impl DoubleEndedIterator<Item = Frame>) {
        for frame in frames.rev() {
            self.bytes += frame.cost();
            self.frames.push_front(frame);
        }
    }
}

/// A shared [`Outbox`] plus the signal that wakes its writer.
#[derive(Debug, Clone)]
pub struct OutboxHandle {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    outbox: Mutex<Outbox>,
    wake: Notify,
}

impl OutboxHandle {
    pub fn new(outbox: Outbox) -> Self {
        OutboxHandle {
            inner: Arc::new(Shared {
                outbox: Mutex::new(outbox),
                wake: Notify::new(),
            }),
        }
    }

    /// Locks the buffer. A panic elsewhere while it was held leaves plain
    /// data behind, so a poisoned lock is still safe to use.
    pub fn lock(&self) -> MutexGuard<'_, Outbox> {
        self.inner.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, frame: Frame) -> Pushed {
        let pushed = self.lock().push(frame);
        if pushed.accepted {
            self.inner.wake.notify_one();
        }
        pushed
    }

    /// Waits until a push has happened since the last call.
    pub async fn pushed(&self) {
        self.inner.wake.notified().await
    }

    /// Wakes the writer without a push, e.g. after frames were requeued.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Frame {
        Frame::new(FrameKind::Change, text.to_owned())
    }

    fn texts(outbox: &mut Outbox) -> Vec<String> {
        let mut batch = Vec::new();
        outbox.take_batch(usize::MAX, usize::MAX, &mut batch);
        batch.into_iter().map(|f| f.text.to_string()).collect()
    }

    #[test]
    fn keeps_frames_in_order() {
        let mut outbox = Outbox::new(10, 100, Overflow::DropOldest);
        for t in ["a", "b", "c"] {
            assert!(outbox.push(frame(t)).accepted);
        }
        assert_eq!((outbox.len(), outbox.bytes()), (3, 3));
        assert_eq!(texts(&mut outbox), ["a", "b", "c"]);
        assert_eq!((outbox.len(), outbox.bytes()), (0, 0));
    }

    #[test]
    fn drop_oldest_makes_room_by_count_and_by_bytes() {
        let mut outbox = Outbox::new(3, 100, Overflow::DropOldest);
        for t in ["a", "b", "c", "d"] {
            outbox.push(frame(t));
        }
        assert_eq!(texts(&mut outbox), ["b", "c", "d"]);

        let mut outbox = Outbox::new(100, 10, Overflow::DropOldest);
        outbox.push(frame("aaaa"));
        outbox.push(frame("bbbb"));
        // 7 bytes: "bbbb" + it would be 11 > 10, so both old frames must go
        // (with 6 bytes, "bbbb" + it is exactly 10 and fits).
        let pushed = outbox.push(frame("ccccccc"));
        assert_eq!(
            pushed,
            Pushed {
                accepted: true,
                dropped: 2,
                burst_started: true
            }
        );
        assert_eq!(texts(&mut outbox), ["ccccccc"]);
        assert_eq!(outbox.dropped_total(), 2);
    }

    #[test]
    fn drop_newest_keeps_what_was_accepted_first() {
        let mut outbox = Outbox::new(2, 100, Overflow::DropNewest);
        outbox.push(frame("a"));
        outbox.push(frame("b"));
        let first = outbox.push(frame("c"));
        let second = outbox.push(frame("d"));
        assert_eq!(
            first,
            Pushed {
                accepted: false,
                dropped: 1,
                burst_started: true
            }
        );
        assert_eq!(
            second,
            Pushed {
                accepted: false,
                dropped: 1,
                burst_started: false
            }
        );
        assert_eq!(texts(&mut outbox), ["a", "b"]);
        // Drained: the next overflow starts a new burst.
        outbox.push(frame("e"));
        outbox.push(frame("f"));
        assert!(outbox.push(frame("g")).burst_started);
    }

    #[test]
    fn a_frame_larger_than_the_whole_buffer_is_refused_under_either_policy() {
        for policy in [Overflow::DropOldest, Overflow::DropNewest] {
            let mut outbox = Outbox::new(10, 4, policy);
            outbox.push(frame("ab"));
            assert!(!outbox.push(frame("too long")).accepted);
            assert_eq!(texts(&mut outbox), ["ab"]);
        }
    }

    #[test]
    fn batches_respect_their_limits_and_requeue_restores_order() {
        let mut outbox = Outbox::new(10, 100, Overflow::DropOldest);
        for t in ["aa", "bb", "cc", "dd"] {
            outbox.push(frame(t));
        }
        let mut batch = Vec::new();
        outbox.take_batch(10, 3, &mut batch);
        assert_eq!(batch.len(), 2, "stops once the byte budget is reached");
        outbox.requeue_front(batch.into_iter());
        assert_eq!(outbox.bytes(), 8);
        let mut one = Vec::new();
        outbox.take_batch(1, 100, &mut one);
        assert_eq!(one[0].text, "aa");
        outbox.requeue_front(one.into_iter());
        assert_eq!(texts(&mut outbox), ["aa", "bb", "cc", "dd"]);
    }
}
