//! The reading spool, `STATE_DIR/spool/`: an append-only queue of segment files that survives
//! restarts and power loss. A reading is durable (written and fsync'd) before the intake answers
//! it; it leaves the spool only once the broker acknowledged its publish, or when the spool is
//! full and its oldest segment is dropped (and counted).
//!
//! Files: `NNNNNNNNNNNNNNNNNNNN.seg` (20-digit segment number, rising), each a run of frames
//! `[u32 LE payload length][u32 LE CRC-32 of payload][payload]`, the payload being the reading
//! in the contract's single telemetry form (`{"epoch","seq","ts","metrics","versions"}`).
//! A frame whose length runs past the file or whose checksum fails ends the segment: at start it
//! is cut off (a torn last write after power loss), never mis-read. `state.json` holds the head
//! (first reading not yet acknowledged) and the lifetime drop count, as JSON padded with spaces to
//! a fixed size so that an acknowledgement can overwrite it in place.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use drover_proto::{Epoch, Reading, Readings, Telemetry, Version};
use serde::{Deserialize, Serialize};

use crate::atomic_write::write_atomic;

/// The spool's directory inside the state directory.
pub const SPOOL_DIR: &str = "spool";
/// Largest segment file (smaller when `spool_max_bytes` is small: a sixteenth of it).
pub const MAX_SEGMENT_BYTES: u64 = 1024 * 1024;
/// Smallest segment file.
const MIN_SEGMENT_BYTES: u64 = 4096;
/// Frame header: payload length and CRC-32, both u32 little-endian.
const FRAME_HEADER: u64 = 8;
/// A frame claiming a longer payload is damage, not a reading.
const MAX_PAYLOAD: u64 = 1024 * 1024;
/// The head and drop count.
const STATE_FILE: &str = "state.json";
/// `state.json`'s size: its JSON (at most about 100 bytes) padded with spaces. One write this
/// small at offset 0 stays inside one disk sector.
const STATE_BYTES: usize = 128;
/// Segment file suffix.
const SEGMENT_SUFFIX: &str = ".seg";

/// A place in the spool: segment number and byte offset in it. Orders as the spool does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Segment number.
    pub segment: u64,
    /// Byte offset inside the segment.
    pub offset: u64,
}

/// A reading as the intake hands it over, before the spool stamps it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewReading {
    /// Milliseconds since the Unix epoch (the program's, or the agent's clock at intake).
    pub ts: i64,
    /// Metric name → value (validated by the intake).
    pub metrics: BTreeMap<String, f64>,
    /// Versions the program says it used for this reading (a model it loaded): they win over the
    /// installed versions for the same bundle names. Usually empty.
    pub versions: BTreeMap<String, Version>,
}

/// One reading read back from the spool, with where it lies.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    /// Where its frame starts.
    pub start: Position,
    /// Where the next frame starts.
    pub end: Position,
    /// Payload size in bytes (what it adds to a batch, roughly).
    pub bytes: usize,
    /// The reading in single telemetry form; `None` if the frame's checksum held but its JSON
    /// does not decode (written by another release): it is acknowledged without being sent.
    pub telemetry: Option<Telemetry>,
}

/// A run of readings inside one segment, to acknowledge once the broker has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First frame.
    pub start: Position,
    /// Just past the last frame.
    pub end: Position,
    /// Frames in the run.
    pub count: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    id: u64,
    bytes: u64,
    records: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SpoolState {
    head_segment: u64,
    head_offset: u64,
    dropped: u64,
}

/// The open spool. One per state directory and process; callers share it behind a lock.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Oldest first; the front one holds the head.
    segments: VecDeque<Segment>,
    /// The last segment, opened for appending by this process (none until the first append).
    active: Option<File>,
    next_segment: u64,
    head: Position,
    /// Frames of the head segment before `head`.
    head_skipped: u64,
    /// Acknowledged runs past the head (acks may arrive out of order), by start.
    acked: BTreeMap<Position, Span>,
    dropped: u64,
    epoch: Epoch,
    next_seq: u64,
    /// Appends are fsync'd (false only for the fleet simulator's generated readings).
    durable: bool,
    /// `state.json`, kept open once an acknowledgement wrote it in place.
    state_file: Option<File>,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, bounded by `max_bytes` of segment files.
    /// Torn or damaged frames at the end of a segment are cut off. Readings appended from now
    /// carry `epoch` and sequence numbers from 1.
    pub fn open(dir: &Path, max_bytes: u64, epoch: Epoch) -> io::Result<Spool> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)?;
        let state = read_state(dir);
        let mut segments = VecDeque::new();
        let mut head = None;
        let mut max_id = state.head_segment;
        for id in segment_ids(dir)? {
            max_id = max_id.max(id);
            let path = segment_path(dir, id);
            if id < state.head_segment {
                // Fully acknowledged before the last stop; its removal did not reach the disk.
                remove_quietly(&path);
                continue;
            }
            let upto = (id == state.head_segment).then_some(state.head_offset);
            let scan = scan(&path, upto)?;
            if scan.valid_len < scan.file_len {
                tracing::warn!(
                    segment = %path.display(),
                    kept_bytes = scan.valid_len,
                    cut_bytes = scan.file_len - scan.valid_len,
                    "spool segment ends in a torn or damaged record; cutting it off"
                );
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(scan.valid_len)?;
                file.sync_all()?;
            }
            if scan.records == 0 {
                remove_quietly(&path);
                continue;
            }
            if head.is_none() {
                head = Some(match scan.before {
                    Some((offset, skipped)) => (
                        Position {
                            segment: id,
                            offset,
                        },
                        skipped,
                    ),
                    None => (
                        Position {
                            segment: id,
                            offset: 0,
                        },
                        0,
                    ),
                });
            }
            segments.push_back(Segment {
                id,
                bytes: scan.valid_len,
                records: scan.records,
            });
        }
        let next_segment = max_id + 1;
        let (head, head_skipped) = head.unwrap_or((
            Position {
                segment: next_segment,
                offset: 0,
            },
            0,
        ));
        let mut spool = Spool {
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes: (max_bytes / 16).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES),
            segments,
            active: None,
            next_segment,
            head,
            head_skipped,
            acked: BTreeMap::new(),
            dropped: state.dropped,
            epoch,
            next_seq: 1,
            durable: true,
            state_file: None,
        };
        spool.release_finished_segments();
        Ok(spool)
    }

    /// Stops fsyncing appends: for readings that can be generated again (the fleet simulator,
    /// where thousands of spools share one disk), never for a device's real readings.
    pub fn without_fsync(mut self) -> Spool {
        self.durable = false;
        self
    }

    /// This run's epoch.
    pub fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    /// Readings waiting for the broker's acknowledgement.
    pub fn depth(&self) -> u64 {
        let stored: u64 = self.segments.iter().map(|s| s.records).sum();
        let acked: u64 = self.acked.values().map(|s| s.count).sum();
        stored.saturating_sub(self.head_skipped + acked)
    }

    /// Readings dropped from a full spool, over the spool's lifetime (persisted).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes of segment files on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// The oldest reading not yet acknowledged (or where the next one will go).
    pub fn head(&self) -> Position {
        self.head
    }

    /// Stamps `readings` (epoch, next sequence numbers, `versions` with each reading's own
    /// versions laid over them) and appends them, then
    /// fsyncs once: when this returns `Ok`, every one of them survives a power loss. Returns their
    /// sequence numbers. A full spool first drops its oldest segment.
    pub fn append(
        &mut self,
        readings: &[NewReading],
        versions: &BTreeMap<String, Version>,
    ) -> io::Result<Vec<u64>> {
        let mut seqs = Vec::with_capacity(readings.len());
        // Where the active segment stood when this batch first wrote to it, to undo on error.
        let mut undo: Option<(u64, Segment)> = None;
        // The batch's frames for the active segment, written together: one write per segment
        // rather than one per reading.
        let mut pending: Vec<u8> = Vec::new();
        let result = (|| {
            for reading in readings {
                let seq = self.next_seq;
                let mut stamped = versions.clone();
                stamped.extend(reading.versions.clone());
                let frame = encode_frame(&Telemetry {
                    epoch: self.epoch.clone(),
                    versions: stamped,
                    readings: Readings::Single(Reading {
                        seq,
                        ts: reading.ts,
                        metrics: reading.metrics.clone(),
                    }),
                })?;
                if self.needs_segment(frame.len() as u64) {
                    self.write_pending(&mut pending)?;
                }
                self.make_room(frame.len() as u64)?;
                let (_, segment) = self.active_mut()?;
                if undo.is_none_or(|(id, _)| id != segment.id) {
                    undo = Some((segment.id, *segment));
                }
                pending.extend_from_slice(&frame);
                segment.bytes += frame.len() as u64;
                segment.records += 1;
                self.next_seq += 1;
                seqs.push(seq);
            }
            self.write_pending(&mut pending)?;
            if let Some(file) = self.active.as_ref().filter(|_| self.durable) {
                file.sync_data()?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            // Take back what this batch wrote to the active segment; a sequence number once
            // handed out is never reused (an earlier segment may hold it durably).
            if let (Some((id, before)), Some(file)) = (undo, &self.active)
                && let Some(segment) = self.segments.back_mut()
                && segment.id == id
            {
                let _ = file.set_len(before.bytes);
                *segment = before;
            }
            return Err(e);
        }
        Ok(seqs)
    }

    /// Up to about `max_bytes` of readings from `from` on (never before the head), all from one
    /// segment; at least one reading when any is waiting.
    pub fn peek(&self, from: Position, max_bytes: u64) -> io::Result<Vec<Stored>> {
        let from = from.max(self.head);
        let Some(segment) = self
            .segments
            .iter()
            .find(|s| s.id > from.segment || (s.id == from.segment && from.offset < s.bytes))
        else {
            return Ok(Vec::new());
        };
        let offset = if segment.id == from.segment {
            from.offset
        } else {
            0
        };
        let mut file = File::open(segment_path(&self.dir, segment.id))?;
        file.seek(SeekFrom::Start(offset))?;
        let remaining = segment.bytes - offset;
        let mut buf = vec![
            0;
            usize::try_from(remaining.min(max_bytes.max(FRAME_HEADER)))
                .unwrap_or(usize::MAX)
        ];
        file.read_exact(&mut buf)?;
        if let Some(len) = frame_len(&buf)
            && len > buf.len() as u64
            && len <= remaining
        {
            // One reading larger than the limit: read it whole.
            buf.resize(usize::try_from(len).unwrap_or(usize::MAX), 0);
            file.seek(SeekFrom::Start(offset))?;
            file.read_exact(&mut buf)?;
        }
        let mut out = Vec::new();
        let mut at = 0usize;
        while let Some(payload) = frame_payload(&buf[at..]) {
            let len = payload.len() + FRAME_HEADER as usize;
            let start = Position {
                segment: segment.id,
                offset: offset + at as u64,
            };
            let telemetry = match serde_json::from_slice::<Telemetry>(payload) {
                Ok(t) if matches!(t.readings, Readings::Single(_)) => Some(t),
                _ => {
                    tracing::warn!(
                        segment = segment.id,
                        offset = start.offset,
                        "spooled reading does not decode; skipping it"
                    );
                    None
                }
            };
            at += len;
            out.push(Stored {
                start,
                end: Position {
                    segment: segment.id,
                    offset: offset + at as u64,
                },
                bytes: payload.len(),
                telemetry,
            });
        }
        Ok(out)
    }

    /// The broker acknowledged the readings of `span`: forget them. Acks may come in any order;
    /// the head moves over the acknowledged runs that touch it, and a segment it leaves is
    /// deleted. Readings already dropped are ignored.
    pub fn ack(&mut self, span: Span) -> io::Result<()> {
        if span.start < self.head || span.count == 0 {
            return Ok(());
        }
        self.acked.insert(span.start, span);
        let before = self.head;
        while let Some(run) = self.acked.remove(&self.head) {
            self.head = run.end;
            self.head_skipped += run.count;
            self.release_finished_segments();
        }
        if self.head != before {
            // Not fsync'd: losing it to a power cut only re-sends readings the server de-duplicates.
            self.write_state(false)?;
        }
        Ok(())
    }

    /// Deletes the front segment while the head has passed its end and no one appends to it.
    fn release_finished_segments(&mut self) {
        while let Some(front) = self.segments.front().copied() {
            let appending = self.active.is_some() && self.segments.len() == 1;
            if self.head.segment != front.id || self.head.offset < front.bytes || appending {
                break;
            }
            remove_quietly(&segment_path(&self.dir, front.id));
            self.segments.pop_front();
            self.head = self.segments.front().map_or(
                Position {
                    segment: self.next_segment,
                    offset: 0,
                },
                |s| Position {
                    segment: s.id,
                    offset: 0,
                },
            );
            self.head_skipped = 0;
        }
    }

    /// Opens a new segment when there is none or `frame` does not fit the active one, then drops
    /// the oldest segments until the files plus `frame` fit the bound.
    fn make_room(&mut self, frame: u64) -> io::Result<()> {
        if self.needs_segment(frame) {
            self.open_segment()?;
        }
        while self.bytes() + frame > self.max_bytes && self.segments.len() > 1 {
            self.drop_oldest()?;
        }
        Ok(())
    }

    /// True when `frame` goes to a new segment: none is open for appending, or it is full.
    fn needs_segment(&self, frame: u64) -> bool {
        self.active.is_none()
            || self
                .segments
                .back()
                .is_some_and(|s| s.bytes > 0 && s.bytes + frame > self.segment_bytes)
    }

    /// Writes the frames gathered for the active segment.
    fn write_pending(&mut self, pending: &mut Vec<u8>) -> io::Result<()> {
        if !pending.is_empty() {
            self.active_mut()?.0.write_all(pending)?;
            pending.clear();
        }
        Ok(())
    }

    fn active_mut(&mut self) -> io::Result<(&mut File, &mut Segment)> {
        match (self.active.as_mut(), self.segments.back_mut()) {
            (Some(file), Some(segment)) => Ok((file, segment)),
            _ => Err(io::Error::other(
                "the spool has no segment open for appending",
            )),
        }
    }

    fn open_segment(&mut self) -> io::Result<()> {
        if let Some(previous) = self.active.take().filter(|_| self.durable) {
            // Part of the batch being appended lives there: make it durable before moving on.
            previous.sync_data()?;
        }
        let id = self.next_segment;
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o640)
            .open(segment_path(&self.dir, id))?;
        if self.durable {
            File::open(&self.dir)?.sync_all()?;
        }
        self.next_segment += 1;
        if self.segments.is_empty() {
            self.head = Position {
                segment: id,
                offset: 0,
            };
            self.head_skipped = 0;
        }
        self.segments.push_back(Segment {
            id,
            bytes: 0,
            records: 0,
        });
        self.active = Some(file);
        Ok(())
    }

    /// Drops the oldest segment (never the active one) and counts its unacknowledged readings.
    fn drop_oldest(&mut self) -> io::Result<()> {
        let Some(front) = self.segments.pop_front() else {
            return Ok(());
        };
        let acked: u64 = self
            .acked
            .values()
            .filter(|s| s.start.segment == front.id)
            .map(|s| s.count)
            .sum();
        self.acked.retain(|start, _| start.segment != front.id);
        let lost = front.records.saturating_sub(self.head_skipped + acked);
        self.dropped += lost;
        remove_quietly(&segment_path(&self.dir, front.id));
        self.head = self.segments.front().map_or(
            Position {
                segment: self.next_segment,
                offset: 0,
            },
            |s| Position {
                segment: s.id,
                offset: 0,
            },
        );
        self.head_skipped = 0;
        tracing::warn!(
            dropped = lost,
            dropped_total = self.dropped,
            "spool full: dropped its oldest readings"
        );
        self.write_state(true)
    }

    /// Writes the head and drop count. A drop is written atomically and durably (a new file renamed
    /// over the old); an acknowledgement overwrites the file in place, neither fsync'd nor renamed,
    /// because creating a file per acknowledgement costs an inode each time (half the simulator's
    /// CPU) and a metadata write on a device's flash.
    fn write_state(&mut self, durable: bool) -> io::Result<()> {
        let state = SpoolState {
            head_segment: self.head.segment,
            head_offset: self.head.offset,
            dropped: self.dropped,
        };
        let mut bytes = serde_json::to_vec(&state).map_err(io::Error::other)?;
        if bytes.len() >= STATE_BYTES {
            return Err(io::Error::other(format!(
                "the spool state takes {} bytes, more than its {STATE_BYTES}",
                bytes.len()
            )));
        }
        // JSON allows trailing whitespace: the padded file still reads as the state alone.
        bytes.resize(STATE_BYTES - 1, b' ');
        bytes.push(b'\n');
        let path = self.dir.join(STATE_FILE);
        if durable {
            // The rename leaves a handle kept open on the replaced file.
            self.state_file = None;
            return write_atomic(&path, &bytes, 0o640);
        }
        let file = match &mut self.state_file {
            Some(file) => file,
            slot => {
                let file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o640)
                    .open(&path)?;
                // A longer file (damaged, or written by hand) would keep a tail past the padding.
                file.set_len(STATE_BYTES as u64)?;
                slot.insert(file)
            }
        };
        file.write_all_at(&bytes, 0)
    }
}

/// Readings waiting in the spool at `dir`, read from its files alone (for `status`; the agent may
/// be running). A missing spool holds none.
pub fn depth_on_disk(dir: &Path) -> io::Result<u64> {
    let ids = match segment_ids(dir) {
        Ok(ids) => ids,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let state = read_state(dir);
    let mut depth = 0;
    for id in ids.into_iter().filter(|id| *id >= state.head_segment) {
        let upto = (id == state.head_segment).then_some(state.head_offset);
        let scan = match scan(&segment_path(dir, id), upto) {
            Ok(scan) => scan,
            // Deleted by the running agent between listing and reading.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        depth += scan.records - scan.before.map_or(0, |(_, skipped)| skipped);
    }
    Ok(depth)
}

/// What a pass over a segment file found.
#[derive(Debug)]
struct Scan {
    file_len: u64,
    /// Length of the run of whole, checksummed frames from the start.
    valid_len: u64,
    records: u64,
    /// For `upto`: the last frame boundary at or before it, and the frames before that.
    before: Option<(u64, u64)>,
}

fn scan(path: &Path, upto: Option<u64>) -> io::Result<Scan> {
    let data = fs::read(path)?;
    let mut at = 0usize;
    let mut records = 0u64;
    let mut before = upto.map(|_| (0u64, 0u64));
    while let Some(payload) = frame_payload(&data[at..]) {
        at += payload.len() + FRAME_HEADER as usize;
        records += 1;
        if let (Some(limit), Some(b)) = (upto, before.as_mut())
            && at as u64 <= limit
        {
            *b = (at as u64, records);
        }
    }
    Ok(Scan {
        file_len: data.len() as u64,
        valid_len: at as u64,
        records,
        before,
    })
}

/// The payload length a frame header at the start of `buf` claims, header included.
fn frame_len(buf: &[u8]) -> Option<u64> {
    let header: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    Some(u64::from(u32::from_le_bytes(header)) + FRAME_HEADER)
}

/// The payload of the whole, checksummed frame at the start of `buf`, if there is one.
fn frame_payload(buf: &[u8]) -> Option<&[u8]> {
    let len = frame_len(buf)? - FRAME_HEADER;
    if len == 0 || len > MAX_PAYLOAD {
        return None;
    }
    let crc: [u8; 4] = buf.get(4..8)?.try_into().ok()?;
    let payload = buf.get(8..8 + usize::try_from(len).ok()?)?;
    (crc32(payload) == u32::from_le_bytes(crc)).then_some(payload)
}

fn encode_frame(telemetry: &Telemetry) -> io::Result<Vec<u8>> {
    let payload = serde_json::to_vec(telemetry).map_err(io::Error::other)?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| u64::from(*len) <= MAX_PAYLOAD)
        .ok_or_else(|| io::Error::other("a reading too large for the spool"))?;
    let mut frame = Vec::with_capacity(payload.len() + FRAME_HEADER as usize);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&crc32(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}{SEGMENT_SUFFIX}"))
}

/// Segment numbers in `dir`, oldest first; other files are ignored.
fn segment_ids(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name
            .strip_suffix(SEGMENT_SUFFIX)
            .filter(|digits| digits.len() == 20 && digits.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|digits| digits.parse().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// `state.json`, or the start (everything re-sent, nothing counted dropped) when it is missing or
/// damaged: the server de-duplicates re-sent readings.
fn read_state(dir: &Path) -> SpoolState {
    let path = dir.join(STATE_FILE);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(file = %path.display(), error = %e, "spool state is damaged; re-sending every spooled reading");
            SpoolState::default()
        }),
        Err(_) => SpoolState::default(),
    }
}

fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(file = %path.display(), error = %e, "cannot remove a spool segment");
    }
}

/// CRC-32 (IEEE 802.3, as zlib and Ethernet use it); catches a torn or bit-flipped record.
fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(n: u8) -> Epoch {
        Epoch::from_random(&[n; 8])
    }

    fn reading(value: f64) -> NewReading {
        NewReading {
            ts: 1_732_300_000_000,
            metrics: BTreeMap::from([("temp_c".to_owned(), value)]),
            versions: BTreeMap::new(),
        }
    }

    fn no_versions() -> BTreeMap<String, Version> {
        BTreeMap::new()
    }

    fn values(stored: &[Stored]) -> Vec<f64> {
        stored
            .iter()
            .map(|s| s.telemetry.as_ref().unwrap().readings.as_slice()[0].metrics["temp_c"])
            .collect()
    }

    fn span(stored: &[Stored]) -> Span {
        Span {
            start: stored[0].start,
            end: stored[stored.len() - 1].end,
            count: stored.len() as u64,
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn a_readings_own_versions_win_over_the_installed_ones_for_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20, epoch(1)).unwrap();
        let installed = BTreeMap::from([
            ("detector".to_owned(), Version::new(2, 0, 0)),
            ("firmware".to_owned(), Version::new(5, 0, 0)),
        ]);
        let mut loaded = reading(1.0);
        loaded.versions = BTreeMap::from([("detector".to_owned(), Version::new(1, 0, 0))]);
        spool.append(&[loaded, reading(2.0)], &installed).unwrap();
        let stored = spool.peek(spool.head(), 1 << 20).unwrap();
        let stamped: Vec<_> = stored
            .iter()
            .map(|s| s.telemetry.as_ref().unwrap().versions.clone())
            .collect();
        assert_eq!(
            stamped[0],
            BTreeMap::from([
                ("detector".to_owned(), Version::new(1, 0, 0)),
                ("firmware".to_owned(), Version::new(5, 0, 0)),
            ])
        );
        assert_eq!(stamped[1], installed);
    }

    #[test]
    fn appended_readings_are_stamped_and_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20, epoch(1)).unwrap();
        let versions = BTreeMap::from([("detector".to_owned(), Version::new(1, 2, 0))]);
        assert_eq!(
            spool
                .append(&[reading(1.0), reading(2.0)], &versions)
                .unwrap(),
            [1, 2]
        );
        assert_eq!(spool.append(&[reading(3.0)], &versions).unwrap(), [3]);
        assert_eq!(spool.depth(), 3);
        let stored = spool.peek(spool.head(), 1 << 20).unwrap();
        assert_eq!(values(&stored), [1.0, 2.0, 3.0]);
        let t = stored[2].telemetry.as_ref().unwrap();
        assert_eq!(t.epoch, epoch(1));
        assert_eq!(t.versions, versions);
        assert_eq!(t.readings.as_slice()[0].seq, 3);
        assert_eq!(t.readings.as_slice()[0].ts, 1_732_300_000_000);
    }

    #[test]
    fn acknowledged_readings_leave_and_out_of_order_acks_wait_for_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20, epoch(1)).unwrap();
        spool
            .append(&[reading(1.0), reading(2.0), reading(3.0)], &no_versions())
            .unwrap();
        let stored = spool.peek(spool.head(), 1 << 20).unwrap();
        spool.ack(span(&stored[1..2])).unwrap();
        assert_eq!(spool.depth(), 2);
        assert_eq!(spool.head(), stored[0].start);
        spool.ack(span(&stored[..1])).unwrap();
        assert_eq!(spool.head(), stored[1].end);
        assert_eq!(values(&spool.peek(spool.head(), 1 << 20).unwrap()), [3.0]);
        // A repeated ack changes nothing.
        spool.ack(span(&stored[..1])).unwrap();
        assert_eq!(spool.depth(), 1);
    }

    #[test]
    fn a_restarted_spool_keeps_unacknowledged_readings_under_a_new_epoch() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut spool = Spool::open(dir.path(), 1 << 20, epoch(1)).unwrap();
            spool
                .append(&[reading(1.0), reading(2.0), reading(3.0)], &no_versions())
                .unwrap();
            let stored = spool.peek(spool.head(), 1 << 20).unwrap();
            spool.ack(span(&stored[..1])).unwrap();
        }
        assert_eq!(depth_on_disk(dir.path()).unwrap(), 2);
        let mut spool = Spool::open(dir.path(), 1 << 20, epoch(2)).unwrap();
        assert_eq!(spool.depth(), 2);
        assert_eq!(spool.append(&[reading(4.0)], &no_versions()).unwrap(), [1]);
        let mut all = Vec::new();
        let mut from = spool.head();
        loop {
            let stored = spool.peek(from, 1 << 20).unwrap();
            let Some(last) = stored.last() else { break };
            from = last.end;
            all.extend(stored);
        }
        assert_eq!(values(&all), [2.0, 3.0, 4.0]);
        let epochs: Vec<_> = all
            .iter()
            .map(|s| s.telemetry.as_ref().unwrap().epoch.clone())
            .collect();
        assert_eq!(epochs, [epoch(1), epoch(1), epoch(2)]);
    }

    #[test]
    fn a_torn_final_record_is_cut_off_and_never_read() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut spool = Spool::open(dir.path(), 1 << 20, epoch(1)).unwrap();
            spool
                .append(&[reading(1.0), reading(2.0)], &no_versions())
                .unwrap();
        }
        let id = segment_ids(dir.path()).unwrap()[0];
        let path = segment_path(dir.path(), id);
        let whole = fs::read(&path).unwrap();
        // Power lost halfway through a third frame.
        let third = encode_frame(&Telemetry {
            epoch: epoch(1),
            versions: no_versions(),
            readings: Readings::Single(Reading {
                seq: 3,
                ts: 1,
                metrics: BTreeMap::from([("temp_c".to_owned(), 3.0)]),
            }),
        })
        .unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(&third[..third.len() - 5]);
        fs::write(&path, &torn).unwrap();
        assert_eq!(depth_on_disk(dir.path()).unwrap(), 2);
        let spool = Spool::open(dir.path(), 1 << 20, epoch(2)).unwrap();
        assert_eq!(spool.depth(), 2);
        assert_eq!(fs::read(&path).unwrap(), whole);

        // A whole-length frame whose bytes are wrong (a bit flipped) is refused the same way.
        drop(spool);
        let mut flipped = whole.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x40;
        fs::write(&path, &flipped).unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, epoch(3)).unwrap();
        assert_eq!(values(&spool.peek(spool.head(), 1 << 20).unwrap()), [1.0]);
    }

    #[test]
    fn a_full_spool_drops_the_oldest_readings_first_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let max = 64 * 1024;
        let mut spool = Spool::open(dir.path(), max, epoch(1)).unwrap();
        let mut seq = 0;
        for i in 0..3000 {
            seq = spool
                .append(&[reading(f64::from(i))], &no_versions())
                .unwrap()[0];
        }
        assert_eq!(seq, 3000);
        assert!(spool.bytes() <= max, "{} bytes", spool.bytes());
        assert!(spool.dropped() > 0);
        assert_eq!(spool.depth() + spool.dropped(), 3000);
        // What is left is the newest, in order, without a gap.
        let mut left = Vec::new();
        let mut from = spool.head();
        loop {
            let stored = spool.peek(from, 1 << 20).unwrap();
            let Some(last) = stored.last() else { break };
            from = last.end;
            left.extend(values(&stored));
        }
        let first = 3000 - left.len();
        let expected: Vec<f64> = (first..3000).map(|i| i as f64).collect();
        assert_eq!(left, expected);
        // The count survives a restart.
        let dropped = spool.dropped();
        drop(spool);
        let spool = Spool::open(dir.path(), max, epoch(2)).unwrap();
        assert_eq!(spool.dropped(), dropped);
        assert_eq!(spool.depth(), left.len() as u64);
    }

    #[test]
    fn acknowledgements_overwrite_the_state_in_place_and_a_drop_replaces_it() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join(STATE_FILE);
        // An older release wrote the state compact; it is read, then overwritten whole.
        fs::write(&state, br#"{"head_segment":0,"head_offset":0,"dropped":7}"#).unwrap();
        let max = 64 * 1024;
        let mut spool = Spool::open(dir.path(), max, epoch(1)).unwrap();
        assert_eq!(spool.dropped(), 7);
        for i in 0..10 {
            spool
                .append(&[reading(f64::from(i))], &no_versions())
                .unwrap();
        }
        let stored = spool.peek(spool.head(), 1 << 20).unwrap();
        spool.ack(span(&stored[..3])).unwrap();
        let inode = fs::metadata(&state).unwrap().ino();
        spool.ack(span(&stored[3..5])).unwrap();
        assert_eq!(
            fs::metadata(&state).unwrap().ino(),
            inode,
            "rewritten in place"
        );
        assert_eq!(fs::metadata(&state).unwrap().len(), STATE_BYTES as u64);
        assert!(
            !fs::read_dir(dir.path()).unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("tmp")),
            "no temporary file is left"
        );
        let reopened = Spool::open(dir.path(), max, epoch(2)).unwrap();
        assert_eq!(reopened.head(), stored[5].start);
        assert_eq!(reopened.depth(), 5);
        drop(reopened);

        // A drop replaces the file (durably, by rename); the next acknowledgement must land in
        // the new file, not in the replaced one still open.
        for i in 10..3000 {
            spool
                .append(&[reading(f64::from(i))], &no_versions())
                .unwrap();
        }
        assert!(spool.dropped() > 7);
        assert_ne!(fs::metadata(&state).unwrap().ino(), inode);
        let stored = spool.peek(spool.head(), 1 << 20).unwrap();
        spool.ack(span(&stored[..4])).unwrap();
        let (head, dropped, depth) = (spool.head(), spool.dropped(), spool.depth());
        drop(spool);
        let reopened = Spool::open(dir.path(), max, epoch(3)).unwrap();
        assert_eq!(reopened.head(), head);
        assert_eq!(reopened.dropped(), dropped);
        assert_eq!(reopened.depth(), depth);
    }

    #[test]
    fn acknowledging_everything_deletes_the_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 64 * 1024, epoch(1)).unwrap();
        for i in 0..500 {
            spool
                .append(&[reading(f64::from(i))], &no_versions())
                .unwrap();
        }
        assert!(segment_ids(dir.path()).unwrap().len() > 2);
        loop {
            let stored = spool.peek(spool.head(), 1 << 20).unwrap();
            if stored.is_empty() {
                break;
            }
            spool.ack(span(&stored)).unwrap();
        }
        assert_eq!(spool.depth(), 0);
        // Only the segment still open for appending remains.
        assert_eq!(segment_ids(dir.path()).unwrap().len(), 1);
        drop(spool);
        let spool = Spool::open(dir.path(), 64 * 1024, epoch(2)).unwrap();
        assert_eq!(spool.depth(), 0);
        assert!(segment_ids(dir.path()).unwrap().is_empty());
        assert_eq!(depth_on_disk(dir.path()).unwrap(), 0);
    }

    #[test]
    fn peek_returns_one_reading_larger_than_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20, epoch(1)).unwrap();
        spool
            .append(&[reading(1.0), reading(2.0)], &no_versions())
            .unwrap();
        let stored = spool.peek(spool.head(), 10).unwrap();
        assert_eq!(values(&stored), [1.0]);
    }
}
