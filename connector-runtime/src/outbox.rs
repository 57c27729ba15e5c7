//! The outgoing buffer: every frame the connector sends waits here, in order,
//! until the link's writer has written it to the socket, bounded by count and
//! by bytes. With `platform.buffer.path` set it is also kept on disk by
//! [`journal`], so a restart of the connector loses nothing it accepted.
//!
//! Devices push from any thread through [`OutboxHandle`] (no actor hop per
//! event); the connection's writer takes batches while a session is up and
//! reports each one [`delivered`](Outbox::delivered) once it is flushed, or
//! gives it back with [`requeue_front`](Outbox::requeue_front) when the
//! session dies under it.
//!
//! # The bound
//! A frame counts against `max_frames` and `max_bytes` from the moment it is
//! accepted until it is flushed, whether it waits here or is in flight with
//! the writer, so what the connector holds never exceeds the bound, even when
//! a dying session gives its batch back. When a push does not fit, the
//! [`Overflow`] policy decides: `drop_oldest` gives up the oldest waiting
//! frames, `drop_newest` refuses the new one. Drops are counted, and a run
//! of drops (a *burst*, which ends once the buffer is below half its bound
//! again) is flagged once through [`Pushed::burst_started`], so callers log
//! and report it once per burst rather than once per frame.
//!
//! # Persistence
//! [`Outbox::open`] keeps the same queue in a [`journal`] file as well: each
//! accepted frame is written to the file before `push` returns, and leaves it
//! when it is delivered or dropped. A connector killed while the platform is
//! down sends, after its restart, exactly the frames it had not sent, in
//! order. Without a path nothing touches the disk: the in-memory queue is the
//! whole buffer, as fast as before.

pub mod journal;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use bytestring::ByteString;
use connector_core::codec::FrameKind;
pub use connector_core::config::Overflow;
use tokio::sync::Notify;
use tracing::warn;

use journal::Journal;
pub use journal::JournalError;

/// One encoded frame ready for the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    /// Shared bytes: the writer clones it per write for the price of a count.
    pub text: ByteString,
    /// Its place in the order of accepted frames, given by [`Outbox::push`];
    /// the journal names frames by it.
    seq: u64,
}

impl Frame {
    pub fn new(kind: FrameKind, text: impl Into<ByteString>) -> Self {
        Frame::with_seq(0, kind, text)
    }

    fn with_seq(seq: u64, kind: FrameKind, text: impl Into<ByteString>) -> Self {
        Frame {
            kind,
            text: text.into(),
            seq,
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
    /// Frames this buffer has given up since it was created, this push's included.
    pub dropped_total: u64,
}

/// What [`Outbox::open`] found on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Frames read back and waiting to be sent.
    pub frames: usize,
    pub bytes: usize,
    /// Frames read back that no longer fit the (possibly smaller) bound.
    pub dropped: u64,
    /// Bytes of a torn or corrupt tail that were cut off.
    pub torn_bytes: u64,
}

/// The bounded, ordered queue itself. Plain data; [`OutboxHandle`] shares it.
#[derive(Debug)]
pub struct Outbox {
    frames: VecDeque<Frame>,
    bytes: usize,
    /// Taken by the writer and not yet reported delivered; they still count
    /// against the bound.
    in_flight_frames: usize,
    in_flight_bytes: usize,
    max_frames: usize,
    max_bytes: usize,
    policy: Overflow,
    dropped_total: u64,
    in_burst: bool,
    next_seq: u64,
    journal: Option<Journal>,
}

impl Outbox {
    /// A buffer in memory only.
    pub fn new(max_frames: usize, max_bytes: usize, policy: Overflow) -> Self {
        Outbox {
            frames: VecDeque::new(),
            bytes: 0,
            in_flight_frames: 0,
            in_flight_bytes: 0,
            max_frames: max_frames.max(1),
            max_bytes: max_bytes.max(1),
            policy,
            dropped_total: 0,
            in_burst: false,
            next_seq: 0,
            journal: None,
        }
    }

    /// A buffer kept on disk at `path` as well, starting with the frames a
    /// previous run left there (oldest first). Frames that no longer fit the
    /// bound are dropped by the policy and reported in [`Restored::dropped`].
    pub fn open(
        max_frames: usize,
        max_bytes: usize,
        policy: Overflow,
        path: &Path,
    ) -> Result<(Self, Restored), JournalError> {
        let (journal, recovered) = Journal::open(path)?;
        let mut outbox = Outbox::new(max_frames, max_bytes, policy);
        outbox.next_seq = recovered.next_seq;
        // Admitted before the journal is attached: these frames are in the
        // file already. Those the bound gives up are marked done after.
        let seqs: Vec<u64> = recovered.frames.iter().map(|f| f.seq).collect();
        let mut dropped = 0;
        for frame in recovered.frames {
            dropped += outbox.admit(frame).1;
        }
        let mut kept = outbox.frames.iter().map(|f| f.seq).peekable();
        let gone: Vec<u64> = seqs
            .into_iter()
            .filter(|&seq| kept.next_if_eq(&seq).is_none())
            .collect();
        let mut journal = journal;
        journal.done(gone);
        outbox.journal = Some(journal);
        outbox.dropped_total = dropped;
        outbox.commit_journal();
        outbox.tend_journal();
        let restored = Restored {
            frames: outbox.frames.len(),
            bytes: outbox.bytes,
            dropped,
            torn_bytes: recovered.torn_bytes,
        };
        Ok((outbox, restored))
    }

    /// The journal file, when the buffer is persistent.
    pub fn path(&self) -> Option<&Path> {
        self.journal.as_ref().map(Journal::path)
    }

    /// Frames waiting to be taken by the writer.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes of the frames waiting to be taken by the writer.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Frames and bytes held against the bound: waiting plus in flight.
    pub fn held(&self) -> (usize, usize) {
        (
            self.frames.len() + self.in_flight_frames,
            self.bytes + self.in_flight_bytes,
        )
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    fn fits(&self, extra: usize) -> bool {
        let (frames, bytes) = self.held();
        frames < self.max_frames && bytes + extra <= self.max_bytes
    }

    /// Appends a frame, applying the overflow policy when the bound is hit.
    pub fn push(&mut self, mut frame: Frame) -> Pushed {
        frame.seq = self.next_seq;
        let (accepted, dropped) = self.admit(frame);
        if accepted {
            self.next_seq += 1;
        }
        self.commit_journal();
        self.dropped_total += dropped;
        let burst_started = dropped > 0 && !self.in_burst;
        if dropped > 0 {
            self.in_burst = true;
            self.tend_journal();
        }
        Pushed {
            accepted,
            dropped,
            burst_started,
            dropped_total: self.dropped_total,
        }
    }

    /// Queues `frame` (its `seq` already set) within the bound; returns
    /// whether it was accepted and how many frames were given up, the new one
    /// included when it was refused. The journal records the frames that
    /// came and went; the caller commits.
    fn admit(&mut self, frame: Frame) -> (bool, u64) {
        let cost = frame.cost();
        let mut dropped = 0;
        let accepted = if cost > self.max_bytes {
            // Larger than the whole buffer: no policy can make room for it.
            false
        } else {
            match self.policy {
                Overflow::DropOldest => loop {
                    if self.fits(cost) {
                        break true;
                    }
                    // Only waiting frames can go; with the rest in flight
                    // (a bound smaller than a batch) the new one cannot fit.
                    let Some(old) = self.frames.pop_front() else {
                        break false;
                    };
                    self.bytes -= old.cost();
                    if let Some(journal) = &mut self.journal {
                        journal.done([old.seq]);
                    }
                    dropped += 1;
                },
                Overflow::DropNewest => self.fits(cost),
            }
        };
        if accepted {
            if let Some(journal) = &mut self.journal {
                journal.frame(&frame);
            }
            self.bytes += cost;
            self.frames.push_back(frame);
        } else {
            dropped += 1;
        }
        (accepted, dropped)
    }

    /// Takes frames from the front, at most `max_frames` and about `max_bytes`
    /// (always at least one), for one write to the socket. They stay held
    /// against the bound until reported [`delivered`](Self::delivered).
    pub fn take_batch(&mut self, max_frames: usize, max_bytes: usize, into: &mut Vec<Frame>) {
        let mut bytes = 0;
        while into.len() < max_frames && (into.is_empty() || bytes < max_bytes) {
            let Some(frame) = self.frames.pop_front() else { break };
            bytes += frame.cost();
            self.bytes -= frame.cost();
            self.in_flight_frames += 1;
            self.in_flight_bytes += frame.cost();
            into.push(frame);
        }
    }

    /// The writer flushed these frames (taken with [`take_batch`](Self::take_batch))
    /// to the socket: they leave the bound, and the journal.
    pub fn delivered(&mut self, frames: &[Frame]) {
        let bytes: usize = frames.iter().map(Frame::cost).sum();
        self.in_flight_frames = self.in_flight_frames.saturating_sub(frames.len());
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(bytes);
        let (held_frames, held_bytes) = self.held();
        if held_frames < self.max_frames / 2 && held_bytes < self.max_bytes / 2 {
            self.in_burst = false;
        }
        if let Some(journal) = &mut self.journal {
            journal.done(frames.iter().map(|f| f.seq));
            self.commit_journal();
            self.tend_journal();
        }
    }

    /// Puts frames that could not be written back at the front, in their
    /// order, so a lost link loses nothing the writer had not finished.
    /// They never left the bound, so they always fit.
    pub fn requeue_front(&mut self, frames: impl DoubleEndedIterator<Item = Frame>) {
        for frame in frames.rev() {
            self.in_flight_frames = self.in_flight_frames.saturating_sub(1);
            self.in_flight_bytes = self.in_flight_bytes.saturating_sub(frame.cost());
            self.bytes += frame.cost();
            self.frames.push_front(frame);
        }
    }

    fn commit_journal(&mut self) {
        if let Some(journal) = &mut self.journal {
            journal.commit();
        }
    }

    /// Keeps the journal file small: truncated once nothing is live, rewritten
    /// with the waiting frames once it is mostly records of frames long gone.
    /// Only while nothing is in flight, since in-flight frames are live but
    /// not in the queue.
    fn tend_journal(&mut self) {
        let Some(journal) = &mut self.journal else { return };
        if self.in_flight_frames > 0 {
            return;
        }
        let live = (self.bytes + self.frames.len() * journal::RECORD_OVERHEAD) as u64;
        let result = if self.frames.is_empty() {
            if journal.len() <= journal::TRUNCATE_AT {
                return;
            }
            journal.truncate()
        } else if journal.len() > journal::COMPACT_AT && journal.len() > journal::COMPACT_RATIO * live {
            journal.rewrite(self.frames.iter())
        } else {
            return;
        };
        if let Err(error) = result {
            // The file keeps growing but stays correct; the next attempt may work.
            warn!("{error}; the outbox file was not compacted");
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
        outbox.delivered(&batch);
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
                burst_started: true,
                dropped_total: 2
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
                burst_started: true,
                dropped_total: 1
            }
        );
        assert_eq!(
            second,
            Pushed {
                accepted: false,
                dropped: 1,
                burst_started: false,
                dropped_total: 2
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

    #[test]
    fn frames_in_flight_count_against_the_bound_until_delivered() {
        let mut outbox = Outbox::new(3, 100, Overflow::DropNewest);
        for t in ["a", "b", "c"] {
            outbox.push(frame(t));
        }
        let mut batch = Vec::new();
        outbox.take_batch(2, 100, &mut batch);
        assert_eq!((outbox.len(), outbox.held()), (1, (3, 3)));
        assert!(!outbox.push(frame("d")).accepted, "the batch still holds its room");
        // The session dies: the batch comes back and the bound still holds.
        outbox.requeue_front(batch.into_iter());
        assert_eq!(outbox.held(), (3, 3));
        let mut batch = Vec::new();
        outbox.take_batch(2, 100, &mut batch);
        outbox.delivered(&batch);
        assert_eq!(outbox.held(), (1, 1));
        assert!(outbox.push(frame("e")).accepted);
        assert_eq!(texts(&mut outbox), ["c", "e"]);
    }

    #[test]
    fn drop_oldest_skips_frames_in_flight_and_a_burst_ends_below_half_the_bound_in_bytes_too() {
        let mut outbox = Outbox::new(100, 4, Overflow::DropOldest);
        for t in ["a", "b", "c", "d"] {
            outbox.push(frame(t));
        }
        let mut batch = Vec::new();
        outbox.take_batch(1, 100, &mut batch);
        let pushed = outbox.push(frame("e"));
        assert!(pushed.accepted && pushed.burst_started && pushed.dropped == 1);
        assert_eq!(batch[0].text, "a", "in flight, not dropped");
        outbox.delivered(&batch);
        // Still at 3 of 4 bytes: the burst goes on.
        assert!(!outbox.push(frame("f")).burst_started);
        let mut all = Vec::new();
        outbox.take_batch(100, 100, &mut all);
        outbox.delivered(&all);
        let texts: Vec<&str> = all.iter().map(|f| &*f.text).collect();
        assert_eq!(texts, ["c", "d", "e", "f"]);
        for t in ["g", "h", "i", "j"] {
            outbox.push(frame(t));
        }
        assert!(outbox.push(frame("k")).burst_started, "drained: a new burst");
    }

    fn scratch_path(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("outbox-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("outbox.log")
    }

    #[test]
    fn a_persistent_outbox_reopens_with_what_was_neither_delivered_nor_dropped() {
        let path = scratch_path("reopen");
        {
            let (mut outbox, restored) = Outbox::open(4, 1000, Overflow::DropOldest, &path).unwrap();
            assert_eq!(restored, Restored::default());
            for t in ["a", "b", "c", "d", "e"] {
                outbox.push(frame(t)); // "a" is dropped by the bound
            }
            let mut batch = Vec::new();
            outbox.take_batch(1, 1000, &mut batch);
            outbox.delivered(&batch); // "b" is sent
            let mut batch = Vec::new();
            outbox.take_batch(1, 1000, &mut batch); // "c" is in flight when the process dies
        }
        let (mut outbox, restored) = Outbox::open(4, 1000, Overflow::DropOldest, &path).unwrap();
        assert_eq!((restored.frames, restored.dropped), (3, 0));
        outbox.push(frame("f"));
        assert_eq!(texts(&mut outbox), ["c", "d", "e", "f"]);
        drop(outbox);
        let (outbox, restored) = Outbox::open(4, 1000, Overflow::DropOldest, &path).unwrap();
        assert_eq!((restored.frames, outbox.len()), (0, 0));
    }

    #[test]
    fn reopening_again_and_again_neither_loses_nor_repeats_a_frame() {
        let path = scratch_path("reopen-again");
        {
            let (mut outbox, _) = Outbox::open(10, 1000, Overflow::DropOldest, &path).unwrap();
            outbox.push(frame("a"));
        }
        for run in ["b", "c", "d"] {
            let (mut outbox, _) = Outbox::open(10, 1000, Overflow::DropOldest, &path).unwrap();
            outbox.push(frame(run));
        }
        let live: Vec<String> = journal::read_live(&path)
            .unwrap()
            .iter()
            .map(|f| f.text.to_string())
            .collect();
        assert_eq!(live, ["a", "b", "c", "d"]);
        let (mut outbox, restored) = Outbox::open(10, 1000, Overflow::DropOldest, &path).unwrap();
        assert_eq!(restored.frames, 4);
        assert_eq!(texts(&mut outbox), ["a", "b", "c", "d"]);
    }

    #[test]
    fn a_persistent_outbox_reopened_with_a_smaller_bound_applies_its_policy() {
        for (policy, kept) in [(Overflow::DropOldest, ["c", "d"]), (Overflow::DropNewest, ["a", "b"])] {
            let path = scratch_path(&format!("smaller-{policy}"));
            {
                let (mut outbox, _) = Outbox::open(10, 1000, policy, &path).unwrap();
                for t in ["a", "b", "c", "d"] {
                    outbox.push(frame(t));
                }
            }
            let (mut outbox, restored) = Outbox::open(2, 1000, policy, &path).unwrap();
            assert_eq!((restored.frames, restored.dropped), (2, 2), "{policy}");
            assert_eq!(outbox.dropped_total(), 2);
            assert_eq!(texts(&mut outbox), kept, "{policy}");
            drop(outbox);
            let (_, restored) = Outbox::open(10, 1000, policy, &path).unwrap();
            assert_eq!(restored.frames, 0, "{policy}: the dropped ones are gone for good");
        }
    }

    #[test]
    fn the_journal_stays_small_through_a_long_outage_and_is_truncated_once_drained() {
        let path = scratch_path("bounded-file");
        let (mut outbox, _) = Outbox::open(1000, usize::MAX, Overflow::DropOldest, &path).unwrap();
        let text = "x".repeat(1000);
        // 100 times the bound goes through the buffer while nothing is sent.
        for _ in 0..100_000 {
            outbox.push(frame(&text));
        }
        let file = std::fs::metadata(&path).unwrap().len();
        let limit = journal::COMPACT_AT.max(journal::COMPACT_RATIO * 1000 * 1100) + 1100;
        assert!(file <= limit, "{file} bytes on disk for a bound of about 1 MB");
        assert_eq!(outbox.dropped_total(), 99_000);
        texts(&mut outbox);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8, "just the header");
    }
}
