//! The persistent outbox's file (`platform.buffer.path`): an append-only log
//! of the frames the buffer accepted and of the ones that left it, so that a
//! connector killed while the platform is down sends, after its restart,
//! exactly what it had not sent yet.
//!
//! # Why a file of our own
//! The buffer is a FIFO written at the tail and released at the head, and
//! its whole content is in memory anyway. That is a log, not a database: an
//! append-only file costs one `write` per accepted frame and nothing per read,
//! where an embedded B-tree (redb) would add a transaction, page copies and a
//! second index per frame, and sled is no longer maintained. What a log needs
//! (checksums, a torn tail, compaction) fits in this one file.
//!
//! # Format
//! An 8-byte header, `SEPLOBX` and the format version `1`, then records:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | body length `n`, little endian |
//! | 4 | CRC-32 (IEEE) of the body, little endian |
//! | `n` | body: a tag byte, then the tag's fields |
//!
//! - tag `1`, a frame: its sequence number (u64 LE), its kind (`0` response,
//!   `1` change, `2` update), then its text.
//! - tag `2`, done: two sequence numbers `from`, `to` (u64 LE, inclusive);
//!   those frames were sent (written to the socket) or dropped by the bound.
//!
//! Sequence numbers grow by one per accepted frame and are never reused.
//! On open the live frames are those without a `done` record, in file order.
//! A record that is cut short or fails its checksum ends the log: a process
//! killed mid-write leaves exactly such a torn tail. It is cut off with a
//! warning, never a panic, and the records before it are kept.
//!
//! # Durability
//! Every record is handed to the kernel (`write`) before `push` returns, so
//! whatever the buffer accepted survives the connector being killed, SIGKILL
//! included. A background thread calls `fdatasync` at most every
//! [`SYNC_INTERVAL`] while there is something new: after a power cut or a
//! kernel crash, at most that much of the newest records can be missing.
//!
//! # Size
//! When the buffer runs empty and the file has grown past [`TRUNCATE_AT`],
//! it is truncated to its header. When the file is much larger than what is
//! still live (a long outage under `drop_oldest` writes a `done` per dropped
//! frame), the live frames are rewritten into a new file that replaces the
//! old one by rename, so the file stays within a small multiple of the bound.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use connector_core::codec::FrameKind;
use tracing::{error, warn};

use super::Frame;

/// First bytes of every journal file: a name and the format version.
const HEADER: &[u8; 8] = b"SEPLOBX\x01";
/// Length and checksum in front of every record body.
const RECORD_HEAD: usize = 8;
const TAG_FRAME: u8 = 1;
const TAG_DONE: u8 = 2;
/// Tag, sequence number and kind in front of a frame's text.
const FRAME_FIELDS: usize = 1 + 8 + 1;
const DONE_LEN: usize = 1 + 8 + 8;
/// Bytes a frame's record takes beyond its text.
pub const RECORD_OVERHEAD: usize = RECORD_HEAD + FRAME_FIELDS;

/// How often new records are forced to the disk: the window a power cut can
/// take from the newest records (a killed process loses nothing).
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// A drained buffer truncates a file larger than this.
pub const TRUNCATE_AT: u64 = 1024 * 1024;
/// A file larger than this and than [`COMPACT_RATIO`] times the live
/// records is rewritten with only the live ones.
pub const COMPACT_AT: u64 = 16 * 1024 * 1024;
pub const COMPACT_RATIO: u64 = 2;

/// Why the journal could not be opened or written; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the outbox file {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read the outbox file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write the outbox file {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("{} is not an outbox file (its header is not SEPLOBX version 1); move it away or pick another platform.buffer.path", path.display())]
    NotAJournal { path: PathBuf },
}

/// What [`Journal::open`] found in the file.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The live frames, oldest first, each with its sequence number.
    pub frames: Vec<Frame>,
    /// The sequence number the next accepted frame gets.
    pub next_seq: u64,
    /// Bytes of a torn or corrupt tail that were cut off.
    pub torn_bytes: u64,
}

/// The open journal file; see the module docs. Owned by the outbox, which
/// calls it under its lock, so records land in the buffer's order.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Bytes of the file that hold whole records (the write position).
    len: u64,
    /// The records of one call, written with a single `write`.
    scratch: Vec<u8>,
    /// Set after a failed write, so the failure is logged once, not per frame.
    failing: bool,
    syncer: Syncer,
}

impl Journal {
    /// Opens (or creates) the journal at `path` and reads back its live
    /// frames. A torn tail is cut off and logged.
    pub fn open(path: &Path) -> Result<(Journal, Recovered), JournalError> {
        let open_err = |source| JournalError::Open {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(open_err)?;
        }
        let mut file = private(OpenOptions::new().read(true).write(true).create(true).truncate(false))
            .open(path)
            .map_err(open_err)?;
        let bytes = std::fs::read(path).map_err(|source| JournalError::Read {
            path: path.to_owned(),
            source,
        })?;
        let write_err = |source| JournalError::Write {
            path: path.to_owned(),
            source,
        };
        let recovered = if bytes.is_empty() {
            file.write_all(HEADER).map_err(write_err)?;
            file.sync_all().map_err(write_err)?;
            sync_dir(path);
            Scan::default()
        } else if bytes.len() < HEADER.len() && HEADER.starts_with(&bytes) {
            // Killed while writing the header of a new file.
            file.set_len(0).map_err(write_err)?;
            file.write_all(HEADER).map_err(write_err)?;
            file.sync_all().map_err(write_err)?;
            Scan::default()
        } else if !bytes.starts_with(HEADER) {
            return Err(JournalError::NotAJournal { path: path.to_owned() });
        } else {
            scan(&bytes)
        };
        let len = recovered.good_len.max(HEADER.len() as u64);
        let torn_bytes = (bytes.len() as u64).saturating_sub(len);
        if torn_bytes > 0 {
            warn!(
                path = %path.display(),
                kept_bytes = len,
                torn_bytes,
                "outbox file ends in a torn or corrupt record (killed mid-write?); cut it off"
            );
            file.set_len(len).map_err(write_err)?;
        }
        file.seek(SeekFrom::Start(len)).map_err(write_err)?;
        let syncer = Syncer::start(&file, path).map_err(open_err)?;
        let journal = Journal {
            path: path.to_owned(),
            file,
            len,
            scratch: Vec::new(),
            failing: false,
            syncer,
        };
        let next_seq = recovered.next_seq;
        let recovered = Recovered {
            frames: recovered.live(),
            next_seq,
            torn_bytes,
        };
        Ok((journal, recovered))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len <= HEADER.len() as u64
    }

    /// Adds a frame record to the pending write.
    pub fn frame(&mut self, frame: &Frame) {
        let text = frame.text.as_bytes();
        let start = self.begin_record();
        self.scratch.push(TAG_FRAME);
        self.scratch.extend_from_slice(&frame.seq.to_le_bytes());
        self.scratch.push(kind_byte(frame.kind));
        self.scratch.extend_from_slice(text);
        self.end_record(start);
    }

    /// Adds `done` records for these sequence numbers to the pending write,
    /// one per run of consecutive numbers.
    pub fn done(&mut self, seqs: impl IntoIterator<Item = u64>) {
        let mut run: Option<(u64, u64)> = None;
        for seq in seqs {
            run = match run {
                Some((from, to)) if to.checked_add(1) == Some(seq) => Some((from, seq)),
                Some((from, to)) => {
                    self.done_range(from, to);
                    Some((seq, seq))
                }
                None => Some((seq, seq)),
            };
        }
        if let Some((from, to)) = run {
            self.done_range(from, to);
        }
    }

    fn done_range(&mut self, from: u64, to: u64) {
        let start = self.begin_record();
        self.scratch.push(TAG_DONE);
        self.scratch.extend_from_slice(&from.to_le_bytes());
        self.scratch.extend_from_slice(&to.to_le_bytes());
        self.end_record(start);
    }

    fn begin_record(&mut self) -> usize {
        let start = self.scratch.len();
        self.scratch.extend_from_slice(&[0; RECORD_HEAD]);
        start
    }

    fn end_record(&mut self, start: usize) {
        let body = &self.scratch[start + RECORD_HEAD..];
        let (len, crc) = (body.len() as u32, crc32fast::hash(body));
        self.scratch[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.scratch[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Writes the pending records with one `write`. A failure is logged (once
    /// until a write succeeds again) and the file is cut back to its last
    /// whole record; the frames stay in memory, only their durability is lost.
    pub fn commit(&mut self) {
        if self.scratch.is_empty() {
            return;
        }
        match self.file.write_all(&self.scratch) {
            Ok(()) => {
                self.len += self.scratch.len() as u64;
                self.syncer.dirty();
                if std::mem::take(&mut self.failing) {
                    warn!(path = %self.path.display(), "outbox file writable again");
                }
            }
            Err(source) => {
                if !std::mem::replace(&mut self.failing, true) {
                    let error = JournalError::Write {
                        path: self.path.clone(),
                        source,
                    };
                    error!("{error}; buffered frames are kept in memory only until it works again");
                }
                // A partial record would hide every later one on the next open.
                let _ = self.file.set_len(self.len);
                let _ = self.file.seek(SeekFrom::Start(self.len));
            }
        }
        self.scratch.clear();
    }

    /// Empties the file down to its header: nothing in it is live.
    pub fn truncate(&mut self) -> Result<(), JournalError> {
        let write_err = |source| JournalError::Write {
            path: self.path.clone(),
            source,
        };
        self.scratch.clear();
        self.file.set_len(HEADER.len() as u64).map_err(write_err)?;
        self.file
            .seek(SeekFrom::Start(HEADER.len() as u64))
            .map_err(write_err)?;
        // Durable at once: a truncation lost to a power cut would send
        // everything in the old file again.
        self.file.sync_data().map_err(write_err)?;
        self.len = HEADER.len() as u64;
        Ok(())
    }

    /// Replaces the file by one that holds only `live`, in order: written
    /// beside it, synced, then renamed over it, so a crash at any point
    /// leaves either the old file or the new one.
    pub fn rewrite<'a>(&mut self, live: impl Iterator<Item = &'a Frame>) -> Result<(), JournalError> {
        let tmp = self.path.with_extension("compacting");
        let write_err = |path: &Path| {
            let path = path.to_owned();
            move |source| JournalError::Write { path, source }
        };
        self.scratch.clear();
        self.scratch.extend_from_slice(HEADER);
        for frame in live {
            self.frame(frame);
        }
        // A file left by a rewrite cut short may predate the owner-only mode,
        // which applies only to a file being created.
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(write_err(&tmp)(e)),
        }
        let mut file = private(OpenOptions::new().read(true).write(true).create_new(true))
            .open(&tmp)
            .map_err(write_err(&tmp))?;
        file.write_all(&self.scratch).map_err(write_err(&tmp))?;
        file.sync_all().map_err(write_err(&tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(write_err(&self.path))?;
        sync_dir(&self.path);
        self.len = self.scratch.len() as u64;
        self.scratch.clear();
        self.syncer.replace(&file).map_err(write_err(&self.path))?;
        self.file = file;
        Ok(())
    }
}

/// The live frames of the journal at `path`, read without changing the
/// file (a torn tail just ends the list): for inspecting the outbox of a
/// connector that may be running.
pub fn read_live(path: &Path) -> Result<Vec<Frame>, JournalError> {
    let bytes = std::fs::read(path).map_err(|source| JournalError::Read {
        path: path.to_owned(),
        source,
    })?;
    if bytes.len() < HEADER.len() && HEADER.starts_with(&bytes) {
        return Ok(Vec::new());
    }
    if !bytes.starts_with(HEADER) {
        return Err(JournalError::NotAJournal { path: path.to_owned() });
    }
    Ok(scan(&bytes).live())
}

fn kind_byte(kind: FrameKind) -> u8 {
    match kind {
        FrameKind::Response => 0,
        FrameKind::Change => 1,
        FrameKind::Update => 2,
    }
}

fn kind_of(byte: u8) -> Option<FrameKind> {
    match byte {
        0 => Some(FrameKind::Response),
        1 => Some(FrameKind::Change),
        2 => Some(FrameKind::Update),
        _ => None,
    }
}

/// Creates files readable and writable by their owner only (0600 on unix):
/// the journal holds every device's events.
fn private(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(options, 0o600);
    options
}

/// A rename or a new file is durable only once its directory is synced.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
    }
}

/// What a pass over the file found.
#[derive(Debug, Default)]
struct Scan {
    frames: Vec<Frame>,
    done: Vec<(u64, u64)>,
    next_seq: u64,
    /// End of the last whole, valid record.
    good_len: u64,
}

impl Scan {
    /// The frames without a `done` record, in file order.
    fn live(mut self) -> Vec<Frame> {
        // Sorted and merged into disjoint ranges, so one binary search per
        // frame finds the only range that could hold it.
        self.done.sort_unstable();
        let mut done: Vec<(u64, u64)> = Vec::with_capacity(self.done.len());
        for (from, to) in self.done {
            match done.last_mut() {
                Some(last) if from <= last.1.saturating_add(1) => last.1 = last.1.max(to),
                _ => done.push((from, to)),
            }
        }
        let is_done = |seq: u64| {
            let at = done.partition_point(|&(from, _)| from <= seq);
            at > 0 && done[at - 1].1 >= seq
        };
        self.frames.retain(|f| !is_done(f.seq));
        self.frames
    }
}

/// Reads records from `bytes` (which starts with the header) up to the end
/// or the first record that is cut short, fails its checksum or makes no sense.
fn scan(bytes: &[u8]) -> Scan {
    let mut scan = Scan {
        good_len: HEADER.len() as u64,
        ..Scan::default()
    };
    let mut at = HEADER.len();
    while let Some(head) = bytes.get(at..at + RECORD_HEAD) {
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        let Some(body) = bytes.get(at + RECORD_HEAD..at + RECORD_HEAD + len) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        match (body.first(), body.len()) {
            (Some(&TAG_FRAME), n) if n >= FRAME_FIELDS => {
                let seq = u64::from_le_bytes(body[1..9].try_into().expect("8 bytes"));
                let (Some(kind), Ok(text)) = (kind_of(body[9]), std::str::from_utf8(&body[FRAME_FIELDS..])) else {
                    break;
                };
                scan.next_seq = scan.next_seq.max(seq.saturating_add(1));
                scan.frames.push(Frame::with_seq(seq, kind, text.to_owned()));
            }
            (Some(&TAG_DONE), DONE_LEN) => {
                let from = u64::from_le_bytes(body[1..9].try_into().expect("8 bytes"));
                let to = u64::from_le_bytes(body[9..17].try_into().expect("8 bytes"));
                scan.next_seq = scan.next_seq.max(to.saturating_add(1));
                scan.done.push((from, to));
            }
            _ => break,
        }
        at += RECORD_HEAD + len;
        scan.good_len = at as u64;
    }
    scan
}

/// The background `fdatasync`: a thread with its own handle on the file, so
/// a slow disk never holds up the buffer's lock.
#[derive(Debug)]
struct Syncer {
    shared: Arc<SyncShared>,
    /// Dropping it tells the thread to sync once more and end.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct SyncShared {
    file: Mutex<File>,
    dirty: AtomicBool,
    path: PathBuf,
}

impl SyncShared {
    fn sync_if_dirty(&self) {
        if self.dirty.swap(false, Ordering::AcqRel) {
            let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = file.sync_data() {
                warn!(path = %self.path.display(), "cannot sync the outbox file: {e}");
            }
        }
    }
}

impl Syncer {
    fn start(file: &File, path: &Path) -> io::Result<Syncer> {
        let shared = Arc::new(SyncShared {
            file: Mutex::new(file.try_clone()?),
            dirty: AtomicBool::new(false),
            path: path.to_owned(),
        });
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("outbox-sync".into()).spawn({
            let shared = shared.clone();
            move || loop {
                let last = matches!(
                    stopped.recv_timeout(SYNC_INTERVAL),
                    Err(mpsc::RecvTimeoutError::Disconnected)
                );
                shared.sync_if_dirty();
                if last {
                    break;
                }
            }
        })?;
        Ok(Syncer {
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn dirty(&self) {
        self.shared.dirty.store(true, Ordering::Release);
    }

    fn replace(&self, file: &File) -> io::Result<()> {
        let clone = file.try_clone()?;
        *self.shared.file.lock().unwrap_or_else(|e| e.into_inner()) = clone;
        Ok(())
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory per test under the system's temp dir.
    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("outbox-journal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn change(seq: u64, text: &str) -> Frame {
        Frame::with_seq(seq, FrameKind::Change, text.to_owned())
    }

    fn texts(recovered: &Recovered) -> Vec<String> {
        recovered.frames.iter().map(|f| f.text.to_string()).collect()
    }

    fn append(journal: &mut Journal, frames: &[Frame]) {
        for frame in frames {
            journal.frame(frame);
        }
        journal.commit();
    }

    #[test]
    fn frames_appended_are_read_back_in_order_with_their_kinds() {
        let path = scratch_dir("append").join("outbox.log");
        {
            let (mut journal, recovered) = Journal::open(&path).unwrap();
            assert!(recovered.frames.is_empty() && journal.is_empty());
            journal.frame(&change(0, "change:{\"a\":1}"));
            journal.frame(&Frame::with_seq(1, FrameKind::Update, "update"));
            journal.frame(&Frame::with_seq(2, FrameKind::Response, "response:{}"));
            journal.commit();
        }
        let (_journal, recovered) = Journal::open(&path).unwrap();
        let kinds: Vec<FrameKind> = recovered.frames.iter().map(|f| f.kind).collect();
        assert_eq!(texts(&recovered), ["change:{\"a\":1}", "update", "response:{}"]);
        assert_eq!(kinds, [FrameKind::Change, FrameKind::Update, FrameKind::Response]);
        assert_eq!(recovered.next_seq, 3);
        assert_eq!(recovered.torn_bytes, 0);
    }

    #[test]
    fn done_frames_are_not_read_back_even_when_they_are_not_contiguous() {
        let path = scratch_dir("done").join("outbox.log");
        {
            let (mut journal, _) = Journal::open(&path).unwrap();
            let frames: Vec<Frame> = (0..10).map(|i| change(i, &i.to_string())).collect();
            append(&mut journal, &frames);
            journal.done([0, 1, 2, 5, 6, 9]);
            journal.commit();
        }
        let (_journal, recovered) = Journal::open(&path).unwrap();
        assert_eq!(texts(&recovered), ["3", "4", "7", "8"]);
        assert_eq!(recovered.next_seq, 10);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_the_records_before_it_are_kept() {
        let dir = scratch_dir("torn");
        let path = dir.join("outbox.log");
        {
            let (mut journal, _) = Journal::open(&path).unwrap();
            append(&mut journal, &[change(0, "first"), change(1, "second")]);
        }
        let whole = std::fs::read(&path).unwrap();
        // Every way a write can be cut short, and a flipped bit in the last record.
        let last_record = whole.len() - (RECORD_HEAD + FRAME_FIELDS + "second".len());
        for cut in last_record..whole.len() {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let (_journal, recovered) = Journal::open(&path).unwrap();
            assert_eq!(texts(&recovered), ["first"], "cut at {cut}");
            assert_eq!(recovered.torn_bytes, (cut - last_record) as u64);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), last_record as u64);
        }
        let mut flipped = whole.clone();
        *flipped.last_mut().unwrap() ^= 0x20;
        std::fs::write(&path, &flipped).unwrap();
        let (mut journal, recovered) = Journal::open(&path).unwrap();
        assert_eq!(texts(&recovered), ["first"]);
        // New records go where the torn one was, and are read back.
        append(&mut journal, &[change(7, "third")]);
        drop(journal);
        let (_journal, recovered) = Journal::open(&path).unwrap();
        assert_eq!(texts(&recovered), ["first", "third"]);
        assert_eq!(recovered.next_seq, 8);
    }

    #[test]
    fn a_file_cut_inside_its_header_is_started_afresh_and_a_foreign_file_is_refused() {
        let dir = scratch_dir("header");
        let path = dir.join("outbox.log");
        std::fs::write(&path, &HEADER[..3]).unwrap();
        let (journal, recovered) = Journal::open(&path).unwrap();
        assert!(recovered.frames.is_empty() && journal.is_empty());
        drop(journal);

        let foreign = dir.join("notes.txt");
        std::fs::write(&foreign, "shopping list").unwrap();
        let error = Journal::open(&foreign).unwrap_err();
        assert!(matches!(error, JournalError::NotAJournal { .. }), "{error:?}");
        assert!(error.to_string().contains("notes.txt"), "{error}");
        assert_eq!(
            std::fs::read_to_string(&foreign).unwrap(),
            "shopping list",
            "left alone"
        );
    }

    #[test]
    fn an_unopenable_path_is_an_error_naming_it() {
        let dir = scratch_dir("unopenable");
        let error = Journal::open(&dir).unwrap_err();
        assert!(error.to_string().contains(&dir.display().to_string()), "{error}");
    }

    #[test]
    fn truncate_and_rewrite_keep_only_what_is_live() {
        let path = scratch_dir("compact").join("outbox.log");
        let (mut journal, _) = Journal::open(&path).unwrap();
        let frames: Vec<Frame> = (0..100).map(|i| change(i, &format!("event {i}"))).collect();
        append(&mut journal, &frames);
        journal.done(0..90);
        journal.commit();
        let before = journal.len();
        journal.rewrite(frames[90..].iter()).unwrap();
        assert!(
            journal.len() < before / 5,
            "{} is not much smaller than {before}",
            journal.len()
        );
        assert!(!path.with_extension("compacting").exists());
        // Appends after a rewrite go to the new file.
        append(&mut journal, &[change(100, "event 100")]);
        drop(journal);
        let (mut journal, recovered) = Journal::open(&path).unwrap();
        let expected: Vec<String> = (90..=100).map(|i| format!("event {i}")).collect();
        assert_eq!(texts(&recovered), expected);
        assert_eq!(recovered.next_seq, 101);

        journal.truncate().unwrap();
        assert!(journal.is_empty());
        append(&mut journal, &[change(101, "after truncate")]);
        drop(journal);
        let (_journal, recovered) = Journal::open(&path).unwrap();
        assert_eq!(texts(&recovered), ["after truncate"]);
    }

    #[cfg(unix)]
    #[test]
    fn the_file_and_its_rewrite_are_readable_by_the_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let path = scratch_dir("mode").join("outbox.log");
        let (mut journal, _) = Journal::open(&path).unwrap();
        assert_eq!(mode(&path), 0o600, "a new journal");
        let frames: Vec<Frame> = (0..10).map(|i| change(i, &format!("event {i}"))).collect();
        append(&mut journal, &frames);
        // A world-readable leftover of an older version's cut-short rewrite.
        let tmp = path.with_extension("compacting");
        std::fs::write(&tmp, b"stale").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        journal.rewrite(frames[5..].iter()).unwrap();
        assert_eq!(mode(&path), 0o600, "the rewritten journal");
        drop(journal);
        let (_journal, recovered) = Journal::open(&path).unwrap();
        assert_eq!(recovered.frames.len(), 5);
    }
}
