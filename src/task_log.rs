//! An attempt's output as a resumable stream: what `GET /tasks/{id}/log` sends (the dashboard
//! tails a running attempt with it). The agent's stdout and stderr are read from their capture
//! files under `.context/runs/<id>/`, from byte offsets a client can resume at (the event id is
//! `<stdout offset>.<stderr offset>`), until the attempt has finished and both are drained.
//!
//! The files are polled a few times a second while the attempt runs, and the stream ends when
//! the ledger says the attempt finished (or the daemon stops).

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};

use crate::ledger::Event;

/// How often a running attempt's files are read again.
const POLL: Duration = Duration::from_millis(250);

/// The most bytes one event carries.
const CHUNK: usize = 64 * 1024;

/// Where a reader is in the two files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offsets {
    pub stdout: u64,
    pub stderr: u64,
}

impl Offsets {
    /// `<stdout>.<stderr>`, as a `Last-Event-ID` gives it back.
    pub fn parse(s: &str) -> Option<Offsets> {
        let (o, e) = s.trim().split_once('.')?;
        Some(Offsets {
            stdout: o.parse().ok()?,
            stderr: e.parse().ok()?,
        })
    }

    pub fn id(&self) -> String {
        format!("{}.{}", self.stdout, self.stderr)
    }
}

/// One item of the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum LogItem {
    /// New output; `at` is where a reader is after it.
    Output {
        stream: &'static str,
        text: String,
        at: Offsets,
    },
    /// The attempt has finished and everything it wrote was sent.
    End { class: Option<String> },
}

/// One capture file: `<context>/runs/<task>/<name>`, opened one directory at a time without
/// following a link an agent planted anywhere on the way (the run directories are in the
/// workspace, where agents write), and only if it is a regular file.
#[derive(Debug, Clone)]
pub struct CaptureFile {
    pub context: PathBuf,
    pub task: String,
    pub name: String,
}

impl CaptureFile {
    /// The capture file of attempt `n` of `task` by `agent`, for `stream` (`stdout`/`stderr`).
    pub fn of(
        ws: &crate::workspace::Workspace,
        task: &str,
        n: u32,
        agent: &str,
        stream: &str,
    ) -> Self {
        CaptureFile {
            context: ws.context().to_path_buf(),
            task: task.to_string(),
            name: crate::workspace::attempt_file(n, agent, stream),
        }
    }

    pub fn open(&self) -> std::io::Result<std::fs::File> {
        crate::confined::Dir::open(&self.context)?
            .descend(&["runs", self.task.as_str()], None)?
            .open_regular(&self.name)
    }
}

/// Which attempt to follow, as the engine's record of the task tells.
pub struct Attempt {
    pub stdout: CaptureFile,
    pub stderr: CaptureFile,
    pub task: String,
    pub n: u32,
    /// Its class, when it has already finished.
    pub finished: Option<String>,
}

/// Reads what was added to `file` since `*at`: whole lines only unless `all` (or a line longer
/// than a chunk). Not there yet is nothing new.
pub fn read_new(file: &CaptureFile, at: &mut u64, all: bool) -> std::io::Result<Option<String>> {
    let mut f = match file.open() {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    f.seek(SeekFrom::Start(*at))?;
    let mut buf = Vec::with_capacity(4096);
    f.take(CHUNK as u64).read_to_end(&mut buf)?;
    if buf.is_empty() {
        return Ok(None);
    }
    let end = if all || buf.len() == CHUNK {
        buf.len()
    } else {
        match buf.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None => return Ok(None),
        }
    };
    buf.truncate(end);
    *at += end as u64;
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// The class of attempt `n` of `task` if it has finished, as the engine's book says.
async fn class_now(api: &crate::api::Api, task: &str, n: u32) -> Option<String> {
    let r = api
        .call(crate::protocol::Request::Get {
            id: task.to_string(),
        })
        .await;
    let data = r.data?;
    let attempts = data["attempts"].as_array()?;
    let a = attempts
        .iter()
        .find(|a| a["n"].as_u64() == Some(u64::from(n)))?;
    a["class"].as_str().map(str::to_string)
}

/// Streams attempt `a` from `from` into the returned channel. `live` is the ledger's live
/// records (subscribed before the attempt was looked up, so its end is not missed); `stopping`
/// ends the stream when the daemon stops.
pub fn follow(
    api: crate::api::Api,
    a: Attempt,
    from: Offsets,
    mut live: broadcast::Receiver<crate::ledger::LiveRecord>,
    mut stopping: watch::Receiver<bool>,
) -> mpsc::Receiver<LogItem> {
    // Sender: this stream's task; receiver: the HTTP response. Small: a slow client slows the
    // reading, nothing piles up.
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut at = from;
        let mut finished = a.finished.clone();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let done = finished.is_some();
            // Drain what is there (all of it once the attempt has finished).
            loop {
                let mut sent = false;
                for (stream, path) in [("stdout", &a.stdout), ("stderr", &a.stderr)] {
                    let offset = if stream == "stdout" {
                        &mut at.stdout
                    } else {
                        &mut at.stderr
                    };
                    let text = match read_new(path, offset, done) {
                        Ok(Some(t)) => t,
                        Ok(None) => continue,
                        Err(e) => {
                            tracing::debug!("cannot read `{}`: {e}", path.name);
                            continue;
                        }
                    };
                    sent = true;
                    if tx.send(LogItem::Output { stream, text, at }).await.is_err() {
                        return;
                    }
                }
                if !sent {
                    break;
                }
            }
            if done {
                let _ = tx.send(LogItem::End { class: finished }).await;
                return;
            }
            tokio::select! {
                _ = tick.tick() => {}
                got = live.recv() => match got {
                    Ok(r) => {
                        if let Event::AttemptFinished { task, attempt, class, .. } = &r.event
                            && *task == a.task
                            && *attempt == a.n
                        {
                            finished = Some(class.as_str().to_string());
                        }
                    }
                    // Missed records (the end may have been among them): the engine's
                    // record of the task says.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        finished = class_now(&api, &a.task, a.n).await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = stopping.changed() => return,
                () = tx.closed() => return,
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_refuse_other_text() {
        let cases = [
            ("0.0", Some((0, 0))),
            ("12.7", Some((12, 7))),
            (" 3.4 ", Some((3, 4))),
            ("3", None),
            ("a.b", None),
            ("-1.0", None),
        ];
        for (text, want) in cases {
            let got = Offsets::parse(text).map(|o| (o.stdout, o.stderr));
            assert_eq!(got, want, "{text:?}");
        }
        let o = Offsets {
            stdout: 5,
            stderr: 9,
        };
        assert_eq!(Offsets::parse(&o.id()), Some(o));
    }

    #[test]
    fn only_whole_lines_are_read_until_the_end() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("runs/t")).unwrap();
        let path = dir.path().join("runs/t/1-a.stdout");
        std::fs::write(&path, "one\ntw").unwrap();
        let file = |task: &str, name: &str| CaptureFile {
            context: dir.path().to_path_buf(),
            task: task.into(),
            name: name.into(),
        };
        let path = file("t", "1-a.stdout");
        let mut at = 0;
        assert_eq!(
            read_new(&path, &mut at, false).unwrap().as_deref(),
            Some("one\n")
        );
        assert_eq!(at, 4);
        assert_eq!(
            read_new(&path, &mut at, false).unwrap(),
            None,
            "half a line waits"
        );
        assert_eq!(
            read_new(&path, &mut at, true).unwrap().as_deref(),
            Some("tw")
        );
        assert_eq!(at, 6);
        // A link planted for the file, or for the task's directory, is not followed.
        std::os::unix::fs::symlink(
            dir.path().join("runs/t/1-a.stdout"),
            dir.path().join("runs/t/link"),
        )
        .unwrap();
        std::os::unix::fs::symlink(dir.path().join("runs/t"), dir.path().join("runs/u")).unwrap();
        for (task, name) in [("t", "link"), ("u", "1-a.stdout")] {
            let mut at = 0;
            assert!(
                read_new(&file(task, name), &mut at, true).is_err(),
                "{task}/{name} is read through a link"
            );
        }
    }
}
