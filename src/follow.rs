//! Following the ledger from a point on — what `submit --wait` and `logs -f` do — so that every
//! record is seen once and in order even when the file is rotated into a segment between two
//! reads.

use std::path::PathBuf;

use crate::ledger::Record;
use crate::workspace::Workspace;

/// Follows the ledger from a point on, across rotations: each record once, in order. Reading
/// by byte offset alone would lose the records of a file rotated away between two reads (and
/// wait forever for a `done` among them); a rotation is seen by the file's identity or size,
/// and then the records after the last one seen are read from the segments too.
pub struct Follower {
    path: PathBuf,
    key: Option<crate::integrity::Key>,
    offset: u64,
    inode: Option<u64>,
    last_seq: Option<u64>,
}

impl Follower {
    /// From the ledger's end as it is now (what is written from here on).
    pub fn from_end(ws: &Workspace) -> Self {
        let meta = std::fs::metadata(ws.ledger()).ok();
        Follower {
            path: ws.ledger(),
            key: crate::integrity::load(ws).ok().flatten(),
            offset: meta.as_ref().map_or(0, |m| m.len()),
            inode: meta.as_ref().map(std::os::unix::fs::MetadataExt::ino),
            // Where "from here on" starts if the file is rotated before the first read.
            last_seq: last_seq_in(&ws.ledger()),
        }
    }

    /// From the start of the live file.
    pub fn from_start(ws: &Workspace) -> Self {
        let mut f = Follower::from_end(ws);
        f.offset = 0;
        f.last_seq = None;
        f
    }

    /// The records written since the last call.
    pub fn next_records(&mut self) -> std::io::Result<Vec<Record>> {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return Ok(Vec::new());
        };
        let rotated = self.inode.is_some_and(|i| i != meta.ino()) || meta.len() < self.offset;
        let records = if rotated {
            // Its length now is where the next plain read starts; what the catch-up below also
            // returns from beyond it is dropped next time by its sequence number.
            self.offset = meta.len();
            self.inode = Some(meta.ino());
            crate::ledger::read_after(
                &self.path,
                self.last_seq.unwrap_or(0),
                usize::MAX,
                self.key.as_ref(),
            )?
        } else {
            let (records, next) =
                crate::ledger::read_from(&self.path, self.offset, self.key.as_ref())?;
            self.offset = next;
            self.inode = Some(meta.ino());
            records
        };
        let seen = self.last_seq;
        let fresh: Vec<Record> = records
            .into_iter()
            .filter(|r| seen.is_none_or(|l| r.seq > l))
            .collect();
        if let Some(last) = fresh.last() {
            self.last_seq = Some(last.seq);
        }
        Ok(fresh)
    }
}

/// The sequence number of the last complete record in `path`, read from its tail.
fn last_seq_in(path: &std::path::Path) -> Option<u64> {
    let tail = crate::fsutil::read_tail(path, 64 * 1024);
    let last = tail.strip_suffix('\n')?.rsplit('\n').next()?;
    let rest = last.strip_prefix("{\"seq\":")?;
    rest[..rest.find(|c: char| !c.is_ascii_digit())?]
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Event;

    fn line(seq: u64) -> String {
        let r = Record {
            seq,
            ts: seq,
            event: Event::Cancelled {
                task: format!("t{seq}"),
            },
        };
        format!("{}\n", serde_json::to_string(&r).unwrap())
    }

    fn append(path: &std::path::Path, seqs: std::ops::RangeInclusive<u64>) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for s in seqs {
            f.write_all(line(s).as_bytes()).unwrap();
        }
    }

    #[test]
    fn records_written_just_before_a_rotation_are_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::new(dir.path()).unwrap();
        std::fs::create_dir_all(ws.context()).unwrap();
        append(&ws.ledger(), 1..=3);
        assert_eq!(
            last_seq_in(&ws.ledger()),
            Some(3),
            "the start point is read from the tail"
        );
        let mut f = Follower::from_end(&ws);
        let seqs = |f: &mut Follower| -> Vec<u64> {
            f.next_records().unwrap().iter().map(|r| r.seq).collect()
        };
        assert!(seqs(&mut f).is_empty(), "from the end: nothing yet");
        append(&ws.ledger(), 4..=5);
        assert_eq!(seqs(&mut f), [4, 5]);
        // 6 and 7 land in the file, which is then rotated away before the next read; 8 and 9
        // go into the new file.
        append(&ws.ledger(), 6..=7);
        std::fs::rename(ws.ledger(), crate::ledger::segment_path(ws.context(), 7)).unwrap();
        append(&ws.ledger(), 8..=9);
        assert_eq!(
            seqs(&mut f),
            [6, 7, 8, 9],
            "the rotated records, then the new file's"
        );
        append(&ws.ledger(), 10..=10);
        assert_eq!(seqs(&mut f), [10], "each record once");

        // Rotated before the first read: only what was written after the start point.
        let mut late = Follower::from_end(&ws);
        append(&ws.ledger(), 11..=11);
        std::fs::rename(ws.ledger(), crate::ledger::segment_path(ws.context(), 11)).unwrap();
        append(&ws.ledger(), 12..=12);
        assert_eq!(seqs(&mut late), [11, 12], "nothing from before the start");
    }
}
