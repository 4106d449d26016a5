//! Telling dirigent's own records from lines somebody else wrote.
//!
//! Agents run in the workspace as the same user as the daemon, so they can write into
//! `.context/ledger.jsonl`: a forged `done` line would count their task done, a deleted line
//! would change history. Every record the ledger writer appends (and every snapshot) therefore
//! carries a seal: `,"mac":"<32 hex>"}` at the end of the line, an HMAC-SHA-256 (truncated to
//! 128 bits) of the line without it, under a key that lives outside the workspace
//! (`$XDG_STATE_HOME/dirigent/keys/`, or `~/.local/state/dirigent/keys/`; `DIRIGENT_STATE_DIR`
//! moves it). Replay ([`Checker`]) admits a sealed line only if its seal is right; records
//! below the key's mark (`<key>.from`: the first record it sealed) were taken as written when the
//! key was made — an older version's, or a moved workspace's; everything else is reported and
//! skipped, and the rest is replayed.
//!
//! What this does not stop — and `docs/security.md` says so — is a process of the same user
//! that reads the key file and seals its own lines: only running agents as another user (or in
//! a sandbox that hides the key) closes that.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::workspace::Workspace;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The end of a sealed line: `,"mac":"` + 32 hex digits + `"}`.
const SEAL_PREFIX: &[u8] = b",\"mac\":\"";
const MAC_HEX: usize = 32;
const SEAL_LEN: usize = SEAL_PREFIX.len() + MAC_HEX + 2;

/// A workspace's sealing key, and from which record on it has sealed everything.
#[derive(Clone)]
pub struct Key {
    raw: [u8; 32],
    /// The first sequence number this key sealed (from `<key>.from`, written at the first start
    /// with the key): every record from there on must carry its seal. Records below it were
    /// taken as written when the key was made — an older version's unsealed ledger, or a
    /// workspace copied or moved here, whose seals are another path's key. `None`: a key made
    /// before the mark existed (then an unsealed line counts only before the first sealed one).
    sealed_from: Option<u64>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(…)")
    }
}

/// What a line's seal says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seal {
    /// Sealed with this key.
    Valid,
    /// No seal (written before sealing existed, or by someone else).
    Unsigned,
    /// A seal that does not match: written by someone else, or damaged.
    Bad,
}

/// See [`Key::sealing_writer`]. Everything but the last byte written so far has gone to the
/// inner writer and into the MAC; the last byte (the object's closing `}`) is held back, for
/// the seal goes before it.
pub struct SealingWriter<W: Write> {
    inner: W,
    mac: HmacSha256,
    held: Option<u8>,
}

impl<W: Write> Write for SealingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Some((&last, body)) = buf.split_last() else {
            return Ok(0);
        };
        if let Some(b) = self.held.take() {
            self.inner.write_all(&[b])?;
            self.mac.update(&[b]);
        }
        self.inner.write_all(body)?;
        self.mac.update(body);
        self.held = Some(last);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> SealingWriter<W> {
    /// Writes the seal and the closing `}`; returns the inner writer, flushed.
    pub fn finish(mut self) -> std::io::Result<W> {
        if self.held != Some(b'}') {
            return Err(std::io::Error::other("a sealed object must end in `}`"));
        }
        self.mac.update(b"}");
        let full = self.mac.finalize().into_bytes();
        self.inner.write_all(SEAL_PREFIX)?;
        for b in &full[..16] {
            write!(self.inner, "{b:02x}")?;
        }
        self.inner.write_all(b"\"}")?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

/// See [`Key::checking_reader`]. Everything read passes through; the MAC takes it in as it
/// goes, except the last bytes, which may be the seal (and a newline) — what the MAC covers is
/// known only at the end.
pub struct CheckingReader<R: Read> {
    inner: R,
    mac: HmacSha256,
    /// The last bytes read and not yet in the MAC: at most [`CHECK_TAIL`].
    tail: Vec<u8>,
    /// Bytes read in all.
    len: u64,
}

/// The seal and a trailing newline.
const CHECK_TAIL: usize = SEAL_LEN + 1;

impl<R: Read> Read for CheckingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.len += n as u64;
        self.tail.extend_from_slice(&buf[..n]);
        if self.tail.len() > CHECK_TAIL {
            let cut = self.tail.len() - CHECK_TAIL;
            self.mac.update(&self.tail[..cut]);
            self.tail.drain(..cut);
        }
        Ok(n)
    }
}

impl<R: Read> CheckingReader<R> {
    /// What the seal of everything read says: the same as [`Key::check`] on all of it. Read to
    /// the end first.
    pub fn finish(mut self) -> Seal {
        let newline = usize::from(self.tail.last() == Some(&b'\n'));
        let tail = &self.tail[..self.tail.len() - newline];
        let line_len = self.len - newline as u64;
        if line_len < (SEAL_LEN + 2) as u64 || tail.len() < SEAL_LEN {
            return Seal::Unsigned;
        }
        let (body_end, seal) = tail.split_at(tail.len() - SEAL_LEN);
        if &seal[..SEAL_PREFIX.len()] != SEAL_PREFIX || &seal[SEAL_LEN - 2..] != b"\"}" {
            return Seal::Unsigned;
        }
        let Some(given) = parse_hex16(&seal[SEAL_PREFIX.len()..SEAL_LEN - 2]) else {
            return Seal::Bad;
        };
        self.mac.update(body_end);
        self.mac.update(b"}");
        let want = self.mac.finalize().into_bytes();
        if same_16(&want[..16], &given) {
            Seal::Valid
        } else {
            Seal::Bad
        }
    }
}

/// Compared in time independent of where the first difference is.
fn same_16(want: &[u8], given: &[u8; 16]) -> bool {
    want.iter()
        .zip(given)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

impl Key {
    fn mac(&self, parts: &[&[u8]]) -> [u8; 16] {
        let mut m = <HmacSha256 as KeyInit>::new_from_slice(&self.raw).expect("any key length");
        for p in parts {
            m.update(p);
        }
        let full = m.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// Appends to `out` the JSON object `object` (which must end in `}`) with its seal.
    pub fn seal_into(&self, object: &[u8], out: &mut Vec<u8>) {
        debug_assert_eq!(object.last(), Some(&b'}'));
        let body = &object[..object.len() - 1];
        let mac = self.mac(&[body, b"}"]);
        out.extend_from_slice(body);
        out.extend_from_slice(SEAL_PREFIX);
        for b in mac {
            let _ = write!(out, "{b:02x}");
        }
        out.extend_from_slice(b"\"}");
    }

    /// A writer that seals, on the way, the JSON object written through it — the same bytes
    /// as [`Key::seal_into`] on the whole object, without holding the object in memory (a
    /// snapshot of a book with 100,000 queued tasks is tens of megabytes). Call
    /// [`SealingWriter::finish`] at the end.
    pub fn sealing_writer<W: Write>(&self, inner: W) -> SealingWriter<W> {
        SealingWriter {
            inner,
            mac: <HmacSha256 as KeyInit>::new_from_slice(&self.raw).expect("any key length"),
            held: None,
        }
    }

    /// A reader that checks, on the way, the seal of what is read through it — what
    /// [`Key::check`] says of all of it, without holding it in memory (a snapshot is read while
    /// it is parsed). Call [`CheckingReader::finish`] once it is read to the end.
    pub fn checking_reader<R: Read>(&self, inner: R) -> CheckingReader<R> {
        CheckingReader {
            inner,
            mac: <HmacSha256 as KeyInit>::new_from_slice(&self.raw).expect("any key length"),
            tail: Vec::with_capacity(2 * CHECK_TAIL),
            len: 0,
        }
    }

    /// Checks the seal of one line (a trailing newline is ignored).
    pub fn check(&self, line: &[u8]) -> Seal {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let n = line.len();
        if n < SEAL_LEN + 2
            || &line[n - SEAL_LEN..n - SEAL_LEN + SEAL_PREFIX.len()] != SEAL_PREFIX
            || &line[n - 2..] != b"\"}"
        {
            return Seal::Unsigned;
        }
        let hex = &line[n - 2 - MAC_HEX..n - 2];
        let Some(given) = parse_hex16(hex) else {
            return Seal::Bad;
        };
        let want = self.mac(&[&line[..n - SEAL_LEN], b"}"]);
        if same_16(&want, &given) {
            Seal::Valid
        } else {
            Seal::Bad
        }
    }
}

fn parse_hex16(hex: &[u8]) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// A line replay refused, for the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub file: PathBuf,
    /// 1-based line number in `file`.
    pub line: u64,
    pub seq: Option<u64>,
    pub why: &'static str,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` line {}", self.file.display(), self.line)?;
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(f, ": {}", self.why)
    }
}

/// Decides, line by line across a whole replay (snapshot, segments, current file), which
/// records to believe. Without a key it believes everything.
#[derive(Debug, Default)]
pub struct Checker {
    key: Option<Key>,
    /// A sealed record has been admitted: from here on, unsealed lines are not believed.
    sealed_seen: bool,
    /// The sequence number of the first record admitted with a valid seal.
    first_sealed: Option<u64>,
    /// The highest sequence number admitted; a record at or below it is a copy.
    last_seq: u64,
    pub valid: u64,
    pub refused: Vec<Refused>,
    refused_total: usize,
}

/// Refusals kept in full for the report; the rest are only counted.
const REFUSED_KEPT: usize = 100;

impl Checker {
    pub fn new(key: Option<Key>) -> Self {
        Checker {
            key,
            ..Default::default()
        }
    }

    /// Whether the line (with the record's `seq`) is one of dirigent's. Lines refused are
    /// remembered in `refused` (the first hundred) and counted.
    pub fn admit(&mut self, file: &Path, line_no: u64, line: &[u8], seq: u64) -> bool {
        let Some(key) = &self.key else {
            // No key: every line is believed, as the files say (tools, tests, old ledgers).
            return true;
        };
        let seal = key.check(line);
        // Below the key's mark, records were taken as written when the key was made.
        let adopted = key.sealed_from.is_some_and(|from| seq < from);
        let verdict = match seal {
            _ if seq <= self.last_seq => {
                Err("its sequence number repeats an earlier record's: it is a copy")
            }
            _ if adopted => Ok(()),
            Seal::Unsigned if self.sealed_seen || key.sealed_from.is_some() => {
                Err("it carries no seal, so dirigent did not write it")
            }
            Seal::Bad => Err("its seal does not match: it was altered, or not written by dirigent"),
            _ => Ok(()),
        };
        if verdict.is_ok() && seal == Seal::Valid {
            self.sealed_seen = true;
            self.first_sealed.get_or_insert(seq);
            self.valid += 1;
        }
        match verdict {
            Ok(()) => {
                self.last_seq = seq;
                true
            }
            Err(why) => {
                self.refused_total += 1;
                if self.refused.len() < REFUSED_KEPT {
                    self.refused.push(Refused {
                        file: file.to_path_buf(),
                        line: line_no,
                        seq: Some(seq),
                        why,
                    });
                }
                false
            }
        }
    }

    /// Notes that replay continues after a snapshot covering records up to `seq`.
    pub fn after_snapshot(&mut self, seq: u64, sealed: bool) {
        self.last_seq = self.last_seq.max(seq);
        self.sealed_seen |= sealed;
    }

    /// The sequence number of the first record admitted with a valid seal.
    pub fn first_sealed(&self) -> Option<u64> {
        self.first_sealed
    }

    /// The highest sequence number admitted so far.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// How many lines were refused in all (only the first hundred are kept in `refused`).
    pub fn refused_total(&self) -> usize {
        self.refused_total
    }

    /// Whether a key is checking the lines.
    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    /// Whether any record failed its check only because of the key (none verified at all,
    /// yet some were refused as altered): the workspace was probably copied or its key lost.
    pub fn looks_like_another_key(&self) -> bool {
        // A marked key has sealed this workspace's records: one that verifies none of them is
        // forgery, not a move (a moved workspace's path has no key yet).
        self.key.as_ref().is_some_and(|k| k.sealed_from.is_none())
            && self.valid == 0
            && self.refused.iter().any(|r| r.why.starts_with("its seal"))
    }
}

/// Where keys live: `DIRIGENT_STATE_DIR`, else `$XDG_STATE_HOME/dirigent`, else
/// `~/.local/state/dirigent`. `None` when none of them can be found.
pub fn state_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DIRIGENT_STATE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("dirigent"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".local/state/dirigent"))
}

/// The key file of `ws`: named after a digest of the workspace's real path, outside it.
pub fn key_path(ws: &Workspace) -> PathBuf {
    let root = ws.root().canonicalize().unwrap_or(ws.root().to_path_buf());
    let digest = Sha256::digest(root.as_os_str().as_encoded_bytes());
    let name: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    match state_dir() {
        Some(dir) => dir.join("keys").join(format!("{name}.key")),
        // Nowhere outside the workspace: keep it with the ledger (agents can read it there).
        None => ws.context().join("ledger.key"),
    }
}

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot use the ledger key `{path}`: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("the ledger key `{path}` {problem}")]
    Unsafe { path: String, problem: String },
    #[error("the directory of the ledger keys `{path}` {problem}")]
    UnsafeDir { path: String, problem: String },
}

/// Reads the key of `ws`, if there is one (the CLI: it never makes one).
pub fn load(ws: &Workspace) -> Result<Option<Key>, KeyError> {
    read_key(&key_path(ws))
}

/// Reads the key of `ws`, making one (32 random bytes, mode 0600, in a 0700 directory) when
/// there is none. Returns it and whether it is new.
pub fn load_or_create(ws: &Workspace) -> Result<(Key, bool), KeyError> {
    let path = key_path(ws);
    if let Some(key) = read_key(&path)? {
        return Ok((key, false));
    }
    let io = |cause| KeyError::Io {
        path: path.display().to_string(),
        cause,
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| io(std::io::Error::other(e.to_string())))?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut f) => {
            f.write_all(format!("{hex}\n").as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            Ok((
                Key {
                    raw,
                    sealed_from: None,
                },
                true,
            ))
        }
        // Another process made it first: use that one.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_key(&path)?.map(|k| (k, false)).ok_or_else(|| io(e))
        }
        Err(e) => Err(io(e)),
    }
}

/// The directory of the keys must be the user's own and closed to others: another user who
/// can write there can delete a key (then every record is unverifiable) or put one in its place.
fn check_key_dir(dir: &Path) -> Result<(), KeyError> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(cause) => {
            return Err(KeyError::Io {
                path: dir.display().to_string(),
                cause,
            });
        }
    };
    use crate::fsutil::Untrusted;
    let me = nix::unistd::geteuid().as_raw();
    let problem = match crate::fsutil::untrusted_dir(&meta, me, 0o022) {
        None => return Ok(()),
        Some(Untrusted::NotADirectory) => "is not a directory".to_string(),
        Some(Untrusted::Owner(uid)) => format!(
            "belongs to uid {uid}, not to you (uid {me}); remove it (its keys are not yours to trust)"
        ),
        Some(Untrusted::OpenTo(mode)) => {
            format!("can be written by other users (mode {mode:o}); run `chmod 700` on it")
        }
    };
    Err(KeyError::UnsafeDir {
        path: dir.display().to_string(),
        problem,
    })
}

fn read_key(path: &Path) -> Result<Option<Key>, KeyError> {
    if let Some(dir) = path.parent() {
        check_key_dir(dir)?;
    }
    let unsafe_key = |problem: String| KeyError::Unsafe {
        path: path.display().to_string(),
        problem,
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(unsafe_key("is a symbolic link; remove it".into()));
        }
        Err(cause) => {
            return Err(KeyError::Io {
                path: path.display().to_string(),
                cause,
            });
        }
    };
    let meta = file.metadata().map_err(|cause| KeyError::Io {
        path: path.display().to_string(),
        cause,
    })?;
    if !meta.is_file() {
        return Err(unsafe_key("is not a regular file".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(unsafe_key(format!(
            "belongs to uid {}, not to you (uid {me})",
            meta.uid()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(unsafe_key(format!(
            "can be read by other users (mode {:o}); run `chmod 600` on it",
            meta.permissions().mode() & 0o777
        )));
    }
    let mut text = String::new();
    file.take(200)
        .read_to_string(&mut text)
        .map_err(|cause| KeyError::Io {
            path: path.display().to_string(),
            cause,
        })?;
    let text = text.trim();
    let mut raw = [0u8; 32];
    let ok = text.len() == 64
        && text.as_bytes().chunks(2).enumerate().all(|(i, pair)| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 16).ok())
                .map(|b| raw[i] = b)
                .is_some()
        });
    if !ok {
        return Err(unsafe_key(
            "does not hold a key (64 hex digits); delete it to make a new one".into(),
        ));
    }
    Ok(Some(Key {
        raw,
        sealed_from: read_sealed_from(&from_path(path)),
    }))
}

/// Where the mark of the first record a key sealed lives: beside the key.
fn from_path(key: &Path) -> PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push(".from");
    PathBuf::from(name)
}

/// The mark, when it is there and reads as a number (a few bytes, no link followed).
fn read_sealed_from(path: &Path) -> Option<u64> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

impl Key {
    /// The first sequence number this key sealed, when marked.
    pub fn sealed_from(&self) -> Option<u64> {
        self.sealed_from
    }
}

/// Marks that the key of `ws` seals every record from `seq` on (see [`Key`]); written once, at
/// the first start with the key, before anything is sealed. Written aside and renamed, 0600.
pub fn mark_sealed_from(ws: &Workspace, key: &mut Key, seq: u64) -> std::io::Result<()> {
    let path = from_path(&key_path(ws));
    let aside = {
        let mut name = path.as_os_str().to_owned();
        name.push(".tmp");
        PathBuf::from(name)
    };
    let _ = std::fs::remove_file(&aside);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&aside)?;
    f.write_all(format!("{seq}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&aside, &path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    key.sealed_from = Some(seq);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        Key {
            raw: [b; 32],
            sealed_from: None,
        }
    }

    #[test]
    fn a_key_in_a_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        std::fs::write(keys.join("k.key"), format!("{}\n", "ab".repeat(32))).unwrap();
        std::fs::set_permissions(keys.join("k.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(read_key(&keys.join("k.key")).unwrap().is_some());
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = read_key(&keys.join("k.key")).unwrap_err().to_string();
        assert!(
            e.ends_with("can be written by other users (mode 777); run `chmod 700` on it"),
            "expected the directory refused, got {e}"
        );
    }

    #[test]
    fn a_streamed_seal_is_the_seal_of_the_whole_object() {
        let k = key(7);
        let object = br#"{"format":1,"seq":42,"book":{"tasks":{"a":{"id":"a"}}}}"#;
        let mut whole = Vec::new();
        k.seal_into(object, &mut whole);
        // Written in pieces of every size from one byte to all of it at once.
        for piece in 1..=object.len() {
            let mut w = k.sealing_writer(Vec::new());
            for chunk in object.chunks(piece) {
                w.write_all(chunk).unwrap();
            }
            let streamed = w.finish().unwrap();
            assert_eq!(
                String::from_utf8_lossy(&streamed),
                String::from_utf8_lossy(&whole),
                "expected the same sealed bytes when written {piece} bytes at a time"
            );
            assert_eq!(
                k.check(&streamed),
                Seal::Valid,
                "expected the streamed seal to check"
            );
        }
        let mut not_an_object = k.sealing_writer(Vec::new());
        not_an_object.write_all(b"[1,2]").unwrap();
        assert!(
            not_an_object.finish().is_err(),
            "expected a refusal for bytes that do not end in a closing brace"
        );
    }

    #[test]
    fn a_seal_checked_while_reading_says_what_the_whole_check_says() {
        let k = key(7);
        let object = br#"{"format":1,"seq":42,"book":{}}"#;
        let mut sealed = Vec::new();
        k.seal_into(object, &mut sealed);
        let with_newline = [sealed.as_slice(), b"\n"].concat();
        let mut altered = sealed.clone();
        altered[12] = b'7';
        let mut bad_hex = sealed.clone();
        let at = bad_hex.len() - 5;
        bad_hex[at] = b'x';
        let mut other_key = Vec::new();
        key(8).seal_into(object, &mut other_key);
        // (what, bytes, the seal expected)
        let cases: [(&str, &[u8], Seal); 8] = [
            ("sealed", &sealed, Seal::Valid),
            ("sealed, newline", &with_newline, Seal::Valid),
            ("altered body", &altered, Seal::Bad),
            ("seal not hex", &bad_hex, Seal::Bad),
            ("another key", &other_key, Seal::Bad),
            ("unsealed", object, Seal::Unsigned),
            ("short", b"{}", Seal::Unsigned),
            ("empty", b"", Seal::Unsigned),
        ];
        for (what, bytes, expected) in cases {
            assert_eq!(k.check(bytes), expected, "{what}: the whole check");
            // Read in pieces of every size from one byte to all of it at once.
            for piece in 1..=bytes.len().max(1) {
                let mut r = k.checking_reader(ChunkedReader(bytes, piece));
                let mut back = Vec::new();
                r.read_to_end(&mut back).unwrap();
                assert_eq!(back, bytes, "{what}: the bytes pass through");
                assert_eq!(r.finish(), expected, "{what}, read {piece} bytes at a time");
            }
        }
    }

    /// Gives at most `.1` bytes per read.
    struct ChunkedReader<'a>(&'a [u8], usize);

    impl Read for ChunkedReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn seals_verify_and_forgeries_do_not() {
        let k = key(7);
        let mut line = Vec::new();
        k.seal_into(br#"{"seq":1,"ts":2,"event":"done","task":"t"}"#, &mut line);
        let text = String::from_utf8(line.clone()).unwrap();
        assert!(text.ends_with("\"}"), "{text}");
        assert!(text.contains(",\"mac\":\""), "{text}");
        // Still one JSON object.
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["task"], "t");
        assert_eq!(k.check(&line), Seal::Valid);
        line.push(b'\n');
        assert_eq!(k.check(&line), Seal::Valid, "a trailing newline is ignored");
        // Another key, an edited body, an unsealed line.
        assert_eq!(key(8).check(&line), Seal::Bad);
        let edited = text.replace("\"t\"", "\"u\"");
        assert_eq!(k.check(edited.as_bytes()), Seal::Bad);
        assert_eq!(
            k.check(br#"{"seq":1,"ts":2,"event":"done","task":"t"}"#),
            Seal::Unsigned
        );
    }

    #[test]
    fn the_checker_admits_legacy_lines_only_before_the_first_seal() {
        let k = key(1);
        let sealed = |json: &str| {
            let mut v = Vec::new();
            k.seal_into(json.as_bytes(), &mut v);
            v
        };
        let f = Path::new("ledger.jsonl");
        let mut c = Checker::new(Some(k.clone()));
        // Cases: (line, seq, admitted)
        let cases: Vec<(Vec<u8>, u64, bool)> = vec![
            (br#"{"seq":1}"#.to_vec(), 1, true),  // legacy, before any seal
            (sealed(r#"{"seq":2}"#), 2, true),    // sealed
            (br#"{"seq":3}"#.to_vec(), 3, false), // unsealed after a seal: forged
            (sealed(r#"{"seq":2}"#), 2, false),   // a copy of an earlier record
            (sealed(r#"{"seq":4}"#), 4, true),
        ];
        for (i, (line, seq, want)) in cases.iter().enumerate() {
            assert_eq!(c.admit(f, i as u64 + 1, line, *seq), *want, "case {i}");
        }
        assert_eq!(c.refused.len(), 2);
        assert!(c.refused[0].why.contains("no seal"), "{:?}", c.refused[0]);
        assert!(!c.looks_like_another_key());
        let mut none = Checker::new(None);
        assert!(none.admit(f, 1, br#"{"seq":9}"#, 9));
    }

    #[test]
    fn keys_are_private_and_reused() {
        let state = tempfile::tempdir().unwrap();
        let ws_dir = tempfile::tempdir().unwrap();
        // SAFETY: tests in this module are the only users of this variable in this process.
        unsafe { std::env::set_var("DIRIGENT_STATE_DIR", state.path()) };
        let ws = Workspace::new(ws_dir.path()).unwrap();
        let (a, created) = load_or_create(&ws).unwrap();
        assert!(created);
        let (b, created) = load_or_create(&ws).unwrap();
        assert!(!created);
        assert_eq!(a.raw, b.raw);
        let path = key_path(&ws);
        assert!(path.starts_with(state.path()), "{}", path.display());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(&ws).unwrap_err().to_string();
        assert!(err.contains("can be read by other users"), "{err}");
    }
}
