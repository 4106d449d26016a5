//! Reading the ledger back: the whole live file ([`read`]), record by record with the integrity
//! check ([`read_each_checked`]), from a sequence number across the rotated segments
//! ([`read_from`], [`read_after`]), and cutting off a torn tail left by a crash ([`repair`]).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{Record, now_ms};
use crate::integrity::{Checker, Key};

/// Every complete record. A torn or unparsable tail is reported as the byte offset where the
/// valid part ends; `repair` cuts it off. An unparsable line *followed by* good lines is not a
/// tail: it is skipped and counted, never cut.
pub struct Replay {
    pub records: Vec<Record>,
    /// Byte length up to the end of the last good line.
    pub valid_len: u64,
    /// Total file length; more than `valid_len` means a damaged tail.
    pub file_len: u64,
    /// Unparsable lines in the middle of the ledger (reported, kept in the file).
    pub skipped: usize,
}

/// Reads the ledger (read-only) into memory. A missing file is an empty ledger.
pub fn read(path: &Path) -> std::io::Result<Replay> {
    let mut records = Vec::new();
    let info = read_each(path, |r| records.push(r))?;
    Ok(Replay {
        records,
        valid_len: info.valid_len,
        file_len: info.file_len,
        skipped: info.skipped,
    })
}

/// What streaming through a ledger file found.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReadInfo {
    /// Byte length up to the end of the last good line.
    pub valid_len: u64,
    pub file_len: u64,
    /// Unparsable lines followed by good ones (reported, kept in the file).
    pub skipped: usize,
    /// Good records.
    pub count: u64,
    /// The highest sequence number seen.
    pub last_seq: u64,
}

/// Streams every complete record of a ledger file to `each`, without holding them in memory.
/// A missing file is an empty ledger. Every line is believed (see [`read_each_checked`]).
pub fn read_each(path: &Path, each: impl FnMut(Record)) -> std::io::Result<ReadInfo> {
    read_each_checked(path, &mut Checker::new(None), each)
}

/// [`read_each`], passing only the records `checker` admits (sealed by this workspace's key,
/// in order); refused lines are counted in `checker`, not in `skipped`. The file is opened
/// without following a link.
pub fn read_each_checked(
    path: &Path,
    checker: &mut Checker,
    mut each: impl FnMut(Record),
) -> std::io::Result<ReadInfo> {
    let file = match open_nofollow(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ReadInfo::default()),
        Err(e) => return Err(e),
    };
    let mut info = ReadInfo {
        file_len: file.metadata()?.len(),
        ..Default::default()
    };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut pos = 0u64;
    let mut line_no = 0u64;
    let mut bad_since_valid = 0usize;
    let mut line = Vec::new();
    loop {
        let n = match read_line_bounded(&mut reader, &mut line)? {
            Line::End => break,
            Line::TooLong(n) => {
                pos += n as u64;
                line_no += 1;
                bad_since_valid += 1;
                continue;
            }
            Line::Whole(n) => n,
        };
        pos += n as u64;
        line_no += 1;
        match serde_json::from_slice::<Record>(&line) {
            Ok(r) => {
                // A line that parses ends a damaged stretch, whether or not it is believed.
                info.valid_len = pos;
                info.skipped += bad_since_valid;
                bad_since_valid = 0;
                if checker.admit(path, line_no, &line, r.seq) {
                    info.last_seq = info.last_seq.max(r.seq);
                    info.count += 1;
                    each(r);
                }
            }
            Err(_) => bad_since_valid += 1,
        }
    }
    Ok(info)
}

/// Most bytes of one ledger line. A record holds at most a task's spec (a prompt of at most
/// 1 MiB, up to six times that escaped); a longer "line" is damage — a hole an agent punched
/// into the file with `truncate`, say — and is skipped without being held in memory.
pub(crate) const MAX_LINE: usize = 16 << 20;

/// One line read by [`read_line_bounded`].
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A whole line (ending in `\n`) of this many bytes, in the buffer.
    Whole(usize),
    /// A line longer than [`MAX_LINE`], of this many bytes, read past and not kept.
    TooLong(usize),
    /// The end of the file, or a last line with no `\n` (torn): nothing more to read.
    End,
}

/// Reads the next line into `line` (cleared first), holding at most [`MAX_LINE`] bytes.
fn read_line_bounded(reader: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<Line> {
    line.clear();
    let mut n = 0usize;
    let mut too_long = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(Line::End);
        }
        let (len, whole) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if !too_long {
            if line.len() + len > MAX_LINE {
                too_long = true;
                line.clear();
                line.shrink_to(1 << 16);
            } else {
                line.extend_from_slice(&buf[..len]);
            }
        }
        reader.consume(len);
        n += len;
        if whole {
            return Ok(if too_long {
                Line::TooLong(n)
            } else {
                Line::Whole(n)
            });
        }
    }
}

/// Opens a ledger file without following a link at its name (an agent could plant one, to
/// make the daemon read `/dev/zero` or append to a file of its choosing).
pub(super) fn open_nofollow(path: &Path, append: bool) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = OpenOptions::new();
    if append {
        // Readable too: the writer reads the last byte when someone else appended (see
        // `start_on_a_line`).
        o.create(true).append(true).read(true).mode(0o600);
    } else {
        o.read(true);
    }
    // Never waiting on a FIFO put in its place: opened without blocking, then refused.
    let file = o
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other(format!(
            "`{}` is not a regular file",
            path.display()
        )));
    }
    if append {
        only_name(&file, path)?;
    }
    Ok(file)
}

/// Refuses to write to a file that has another name: `O_NOFOLLOW` stops a symbolic link, not
/// a hard link, and an agent can hard-link any file of the user's into `.context/` in the
/// ledger's place — to have it cut as a "torn tail" and written over.
pub(crate) fn only_name(file: &File, path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let names = file.metadata()?.nlink();
    if names > 1 {
        return Err(std::io::Error::other(format!(
            "`{}` has {names} names (hard links): another file may have been put in its place, and dirigent writes nothing to it; look at it, then remove its other names or move it away",
            path.display()
        )));
    }
    Ok(())
}

/// The file a segment closed at `last_seq` is renamed to. Zero-padded, so names sort by age.
pub fn segment_path(dir: &Path, last_seq: u64) -> PathBuf {
    dir.join(format!("ledger.{last_seq:020}.jsonl"))
}

/// Rotated segments in `dir`, oldest first, with the last sequence number each holds.
pub fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = name
            .strip_prefix("ledger.")
            .and_then(|r| r.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            // Only the files dirigent made: a FIFO, a directory or a link under such a name
            // (an agent can make one) would hang or break every start.
            if !e.file_type().is_ok_and(|t| t.is_file()) {
                tracing::warn!(
                    "`{}` is not a regular file, so it is no segment of the ledger; left alone",
                    e.path().display()
                );
                continue;
            }
            out.push((seq, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads records appended after byte `offset` (for followers such as `submit --wait`).
/// Returns the records and the new offset; an incomplete last line is left for next time.
/// With a key, a line that follows a sealed one without a valid seal of its own is skipped.
pub fn read_from(
    path: &Path,
    offset: u64,
    key: Option<&Key>,
) -> std::io::Result<(Vec<Record>, u64)> {
    let mut file = match open_nofollow(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], offset)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len < offset {
        // Replaced or truncated: start over.
        return read_from(path, 0, key);
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::with_capacity(1 << 16, file.take(len - offset));
    let mut out = Vec::new();
    let mut consumed = 0u64;
    let mut checker = Checker::new(key.cloned());
    let mut line = Vec::new();
    let mut line_no = 0u64;
    loop {
        let n = match read_line_bounded(&mut reader, &mut line)? {
            Line::End => break,
            Line::TooLong(n) => {
                consumed += n as u64;
                line_no += 1;
                continue;
            }
            Line::Whole(n) => n,
        };
        consumed += n as u64;
        line_no += 1;
        if let Ok(r) = serde_json::from_slice::<Record>(&line)
            && checker.admit(path, line_no, &line, r.seq)
        {
            out.push(r);
        }
    }
    Ok((out, offset + consumed))
}

/// Up to `max` records with a sequence number above `after`, oldest first, from the rotated
/// segments next to `path` and `path` itself. Records compacted away are simply not there: the
/// first one returned may be well above `after + 1`. A rotation racing the read is detected
/// (a hole between two records) and the read is repeated.
pub fn read_after(
    path: &Path,
    after: u64,
    max: usize,
    key: Option<&Key>,
) -> std::io::Result<Vec<Record>> {
    read_after_within(path, after, max, usize::MAX, key)
}

/// [`read_after`], stopping too once the records read take `max_bytes` of ledger text (at
/// least one is read): a page of records of big prompts (up to 1 MiB each) stays small.
pub fn read_after_within(
    path: &Path,
    after: u64,
    max: usize,
    max_bytes: usize,
    key: Option<&Key>,
) -> std::io::Result<Vec<Record>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut attempt = 0;
    loop {
        let mut budget = max_bytes.max(1);
        let mut out: Vec<Record> = Vec::new();
        let mut files: Vec<PathBuf> = segments(dir)?
            .into_iter()
            .filter(|(last, _)| *last > after)
            .map(|(_, p)| p)
            .collect();
        files.push(path.to_path_buf());
        for file in files {
            if out.len() >= max || budget == 0 {
                break;
            }
            match read_page_of(&file, after, max, &mut budget, key, &mut out) {
                Ok(_) => {}
                // Compaction removed a segment after we listed it: its records are gone.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let contiguous = out.windows(2).all(|w| w[1].seq == w[0].seq + 1);
        attempt += 1;
        if contiguous || attempt >= 3 {
            return Ok(out);
        }
    }
}

/// Appends to `out` the records of `path` above `after`, until `out` holds `max`. Lines at or
/// below `after` are skipped by their leading `{"seq":N` without parsing the rest, so paging
/// through a long file stays cheap.
fn read_page_of(
    path: &Path,
    after: u64,
    max: usize,
    budget: &mut usize,
    key: Option<&Key>,
    out: &mut Vec<Record>,
) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(1 << 20, open_nofollow(path, false)?);
    let mut line = Vec::new();
    let mut checker = Checker::new(key.cloned());
    let mut line_no = 0;
    while out.len() < max && *budget > 0 {
        match read_line_bounded(&mut reader, &mut line)? {
            Line::End => break,
            Line::TooLong(_) => {
                line_no += 1;
                continue;
            }
            Line::Whole(_) => {}
        }
        line_no += 1;
        if leading_seq(&line).is_some_and(|seq| seq <= after) {
            // Still noted, so that an unsealed line after it is recognised as out of place.
            if key.is_some_and(|k| k.check(&line) == crate::integrity::Seal::Valid) {
                checker.after_snapshot(0, true);
            }
            continue;
        }
        if let Ok(r) = serde_json::from_slice::<Record>(&line)
            && r.seq > after
            && checker.admit(path, line_no, &line, r.seq)
        {
            out.push(r);
            *budget = budget.saturating_sub(line.len());
        }
    }
    Ok(())
}

/// The sequence number a ledger line starts with (`{"seq":42,…`), as the writer puts it first.
pub(super) fn leading_seq(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Cuts a damaged tail off, saving it to `ledger.torn-<unix-ms>` first. Returns the saved path.
pub fn repair(path: &Path, replay: &Replay) -> std::io::Result<Option<PathBuf>> {
    repair_at(path, replay.valid_len, replay.file_len)
}

/// [`repair`] given the lengths from [`read_each`].
pub fn repair_at(path: &Path, valid_len: u64, file_len: u64) -> std::io::Result<Option<PathBuf>> {
    if file_len <= valid_len {
        return Ok(None);
    }
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)?
    };
    only_name(&file, path)?;
    file.seek(SeekFrom::Start(valid_len))?;
    let aside = path.with_file_name(format!("ledger.torn-{}", now_ms()));
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&aside)?;
    // At most one line's worth is kept for a look: a torn tail is a line or two, and a tail of
    // gigabytes (a hole punched into the file) must not be copied onto the disk.
    std::io::copy(&mut (&mut file).take(MAX_LINE as u64), &mut out)?;
    out.sync_all()?;
    file.set_len(valid_len)?;
    file.sync_all()?;
    Ok(Some(aside))
}
