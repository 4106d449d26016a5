//! The hostile input corpus: every file in tests/corpus/ (expectations in tests/corpus/EXPECT)
//! plus the ones git cannot hold (symlinks, a FIFO, a hard link, 100 MB, odd names, a
//! directory) go through one daemon. Each is rejected with a clear reason or accepted correctly,
//! nothing outside `.context/` is read or written, and the daemon stays up.

mod common;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use common::Workspace;
use dirigent::ledger::Event;

const CONFIG: &str = r#"
kill_grace: 300ms
roles: { backend: [good] }
default_chain: [good]
agents:
  good: { command: ["{agents}/ok.sh"], prompt: stdin }
"#;

#[derive(Debug, PartialEq)]
enum Want {
    Accept(String),
    Reject(String),
    Escalate(String),
}

fn expectations() -> BTreeMap<String, Want> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let text = std::fs::read_to_string(dir.join("EXPECT")).unwrap();
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let mut parts = line.splitn(3, '\t');
        let (name, kind, text) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap().to_string(),
        );
        let want = match kind {
            "accept" => Want::Accept(text),
            "reject" => Want::Reject(text),
            "escalate" => Want::Escalate(text),
            other => panic!("EXPECT: unknown kind {other}"),
        };
        out.insert(name.to_string(), want);
    }
    out
}

/// Every regular file outside `.context/` with its content, to prove nothing there changes.
fn outside_snapshot(root: &Path) -> BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if p.file_name() == Some(std::ffi::OsStr::new(".context"))
                || p.file_name() == Some(std::ffi::OsStr::new("daemon.log"))
            {
                continue;
            }
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn the_hostile_corpus_is_rejected_or_accepted_correctly_and_the_daemon_stays_up() {
    let ws = Workspace::new(CONFIG);
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut want = expectations();
    assert!(want.len() >= 30, "the corpus shrank");

    // Things outside `.context/` that hostile files point at.
    let secret = ws.root().join("secret.txt");
    std::fs::write(&secret, r#"{"prompt": "the secret"}"#).unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), ws.root().join("docs")).unwrap();
    let before = outside_snapshot(ws.root());

    let d = ws.start();
    let inbox = ws.path("inbox");
    let stage = ws.path("inbox/.tmp");
    for name in want.keys() {
        std::fs::copy(corpus.join(name), stage.join(name)).unwrap();
        std::fs::rename(stage.join(name), inbox.join(name)).unwrap();
    }
    // The ones git cannot hold.
    let mut extra = |name: &str, w: Want| {
        want.insert(name.to_string(), w);
    };
    std::fs::write(
        stage.join("nested.json"),
        format!("{{\"prompt\": {}", "[".repeat(10_000)),
    )
    .unwrap();
    std::fs::rename(stage.join("nested.json"), inbox.join("nested.json")).unwrap();
    extra(
        "nested.json",
        Want::Reject(
            "invalid task JSON at line 1 column 11: `prompt`: invalid type: sequence, expected a string"
                .into(),
        ),
    );
    let big = std::fs::File::create(stage.join("hundred-mb.json")).unwrap();
    big.set_len(100 * 1024 * 1024).unwrap();
    std::fs::rename(stage.join("hundred-mb.json"), inbox.join("hundred-mb.json")).unwrap();
    extra(
        "hundred-mb.json",
        Want::Reject("the limit is 1048576 bytes".into()),
    );
    std::os::unix::fs::symlink(&secret, inbox.join("symlink-to-secret.json")).unwrap();
    extra(
        "symlink-to-secret.json",
        Want::Reject("symbolic link".into()),
    );
    nix::unistd::mkfifo(&inbox.join("fifo.json"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    extra("fifo.json", Want::Reject("a FIFO".into()));
    std::fs::hard_link(&secret, inbox.join("hardlink.json")).unwrap();
    extra("hardlink.json", Want::Reject("other hard links".into()));
    std::fs::create_dir(inbox.join("directory.json")).unwrap();
    extra("directory.json", Want::Reject("a directory".into()));
    std::fs::write(stage.join("x"), r#"{"prompt": "newline in the name"}"#).unwrap();
    std::fs::rename(stage.join("x"), inbox.join("new\nline.json")).unwrap();
    extra("new\nline.json", Want::Accept("newline in the name".into()));
    let not_utf8 = std::ffi::OsStr::from_bytes(b"bad-\xff-name.json");
    std::fs::write(stage.join("y"), r#"{"prompt": "p"}"#).unwrap();
    std::fs::rename(stage.join("y"), inbox.join(not_utf8)).unwrap();
    extra(
        "bad-\u{fffd}-name.json",
        Want::Reject("not valid UTF-8".into()),
    );
    let long = format!("{}.json", "l".repeat(250));
    std::fs::write(stage.join("z"), r#"{"prompt": "a very long name"}"#).unwrap();
    std::fs::rename(stage.join("z"), inbox.join(&long)).unwrap();
    extra(&long, Want::Accept("a very long name".into()));

    let total = want.len();
    // Wait until every file is accounted for: rejected, or accepted and settled.
    let outcomes = ws.wait_for("every corpus file to be handled", |recs| {
        let mut by_file: BTreeMap<String, Result<String, String>> = BTreeMap::new();
        let mut task_file: BTreeMap<String, String> = BTreeMap::new();
        for r in recs {
            match &r.event {
                Event::Rejected { file, reason, .. } => {
                    by_file.insert(file.clone(), Err(reason.clone()));
                }
                Event::Received { task, file, .. } => {
                    task_file.insert(task.clone(), file.clone());
                }
                Event::Done { task, output, .. } => {
                    let text = std::fs::read(ws.root().join(output)).unwrap_or_default();
                    by_file.insert(
                        task_file[task].clone(),
                        Ok(String::from_utf8_lossy(&text).into_owned()),
                    );
                }
                Event::Escalated { task, reason, .. } => {
                    by_file.insert(task_file[task].clone(), Err(format!("escalated: {reason}")));
                }
                _ => {}
            }
        }
        (by_file.len() == total).then_some(by_file)
    });
    let mut failures = Vec::new();
    for (name, w) in &want {
        let got = outcomes.get(name);
        let ok = match (w, got) {
            (Want::Accept(t), Some(Ok(result))) => result.contains(t.as_str()),
            (Want::Reject(t), Some(Err(reason))) => {
                !reason.starts_with("escalated") && reason.contains(t.as_str())
            }
            (Want::Escalate(t), Some(Err(reason))) => {
                reason.starts_with("escalated") && reason.contains(t.as_str())
            }
            _ => false,
        };
        if !ok {
            failures.push(format!("{name:?}: want {w:?}, got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} corpus files went wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Every rejection has its error file, which starts with `error:`.
    for (name, w) in &want {
        if matches!(w, Want::Reject(_)) {
            let moved = ws.records().into_iter().find_map(|r| match r.event {
                Event::Rejected { file, moved_to, .. } if &file == name => Some(moved_to),
                _ => None,
            });
            let err = std::fs::read_to_string(
                ws.path("rejected")
                    .join(format!("{}.error.txt", moved.unwrap())),
            )
            .unwrap();
            assert!(err.starts_with("error: the task file"), "{name}: {err}");
        }
    }
    // Nothing outside `.context/` was read into a result or written.
    assert_eq!(outside_snapshot(ws.root()), before);
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    for (_, result) in outcomes
        .iter()
        .filter_map(|(n, o)| o.as_ref().ok().map(|r| (n, r)))
    {
        assert!(
            !result.contains("the secret"),
            "the secret leaked into a result"
        );
    }
    // Still up.
    assert!(!common::process_gone(d.pid()));
    ws.drop_task("after.json", r#"{"prompt": "still alive"}"#);
    assert!(matches!(ws.wait_settled("after"), Event::Done { .. }));
}

#[test]
fn a_file_that_vanishes_between_scan_and_claim_is_simply_gone() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dirigent::workspace::Workspace::new(dir.path()).unwrap();
    ws.ensure().unwrap();
    std::fs::write(ws.inbox().join("v.json"), r#"{"prompt": "p"}"#).unwrap();
    let listed = dirigent::inbox::scan(&ws.inbox()).unwrap();
    assert_eq!(listed.len(), 1, "the scan lists the file");
    // Another claimer takes it after the scan.
    std::fs::remove_file(ws.inbox().join("v.json")).unwrap();
    let (inbox, running) = (
        ws.open_sub("inbox").unwrap(),
        ws.open_sub("running").unwrap(),
    );
    let claimed = dirigent::claim::claim(&inbox, &running, &listed[0].name).unwrap();
    assert_eq!(claimed, None, "a file that is gone is not claimed");
}
