//! `.context/progress.md`: the human-readable view of the ledger, a checklist a person can read at
//! a glance. Rendered from a [`TaskBook`] and replaced atomically (temp file + rename), so a reader
//! never sees half a file. The daemon renders it shortly after changes (coalesced), never on a
//! timer while idle.

use std::fmt::Write as _;
use std::time::Duration;

use crate::duration::{clock, short};
use crate::state::{Phase, TaskBook};

/// A title is shown on one line of at most this many characters.
pub const TITLE_SHOWN: usize = 200;

/// At most this many finished tasks are listed per section; older ones are counted.
pub const FINISHED_SHOWN: usize = 500;

/// At most this many pending tasks are listed (the next to run); the rest are counted, so the
/// file — rewritten about once a second while work flows — stays small with 10,000 queued.
pub const PENDING_SHOWN: usize = 200;

/// Renders the Markdown text. Every task is looked at (to count it), but only the lines shown
/// are formatted: with a long history held in full, formatting every finished task to show
/// the last [`FINISHED_SHOWN`] was most of a render's cost.
pub fn render(book: &TaskBook) -> String {
    let mut done_tasks = Vec::new();
    let mut running = Vec::new();
    let mut pending = Vec::new();
    let mut failed_tasks = Vec::new();
    let mut merging = Vec::new();
    let mut pending_more = 0usize;
    let branch_of = |t: &crate::state::TaskRecord| {
        t.branch_note()
            .map(|b| format!(", {b}"))
            .unwrap_or_default()
    };
    for t in book.iter() {
        match t.phase() {
            Phase::Done { .. } => done_tasks.push(t),
            Phase::Merging => merging.push(format!(
                "- [ ] {} — {} (merging{})",
                t.id(),
                one_line(t.title(), TITLE_SHOWN),
                branch_of(t)
            )),
            Phase::MergeWaiting { reason } => merging.push(format!(
                "- [ ] {} — {} ({}{})",
                t.id(),
                one_line(t.title(), TITLE_SHOWN),
                one_line(reason, 300),
                branch_of(t)
            )),
            Phase::Running {
                attempt,
                agent,
                since_ms,
            } => running.push(format!(
                "- [ ] {} — {} ({agent}, attempt {attempt}, started {})",
                t.id(),
                one_line(t.title(), TITLE_SHOWN),
                clock(*since_ms)
            )),
            Phase::Pending | Phase::Requeued if pending.len() >= PENDING_SHOWN => {
                pending_more += 1;
            }
            Phase::Pending | Phase::Requeued => {
                let why = if t.attempts().is_empty() {
                    "queued".to_string()
                } else {
                    let last = t.attempts().last().expect("non-empty");
                    format!(
                        "after {} {}",
                        last.agent,
                        last.class.map(|c| c.as_str()).unwrap_or("?")
                    )
                };
                let waiting = if t.more().after.is_empty() {
                    String::new()
                } else {
                    format!(", after {}", t.more().after.join(", "))
                };
                pending.push(format!(
                    "- [ ] {} — {} ({why}{waiting})",
                    t.id(),
                    one_line(t.title(), TITLE_SHOWN)
                ));
            }
            Phase::Failed { .. } => failed_tasks.push(t),
        }
    }
    let now_ms = crate::ledger::now_ms();
    // The finished tasks' lines: the most recent FINISHED_SHOWN formatted, the others counted.
    let (done, done_skipped) = last_lines(&done_tasks, |t| {
        let Phase::Done { agent, .. } = t.phase() else {
            unreachable!("only done tasks are listed here")
        };
        format!(
            "- [x] {} — {} ({agent}, {}{})",
            t.id(),
            one_line(t.title(), TITLE_SHOWN),
            short(Duration::from_millis(t.busy_ms(now_ms))),
            branch_of(t)
        )
    });
    let (failed, failed_skipped) = last_lines(&failed_tasks, |t| {
        let Phase::Failed { reason, .. } = t.phase() else {
            unreachable!("only failed tasks are listed here")
        };
        format!(
            "- [ ] {} — {} ({}: {}; see escalations/{}.md)",
            t.id(),
            one_line(t.title(), TITLE_SHOWN),
            if reason == crate::state::CANCELLED_REASON {
                "cancelled"
            } else {
                "escalated"
            },
            one_line(reason, 300),
            t.id()
        )
    });
    let mut out = String::from("# Progress\n\n");
    let _ = writeln!(
        out,
        "_{} done · {} running · {} pending · {} failed — written by dirigent from `ledger.jsonl`_\n",
        done_tasks.len() + book.archived_done,
        running.len(),
        pending.len() + pending_more,
        failed_tasks.len() + book.archived_failed
    );
    // Providers that are not taking work, and the day's spending: what a reader must know.
    let now = crate::ledger::now_ms();
    let mut providers = Vec::new();
    for (name, p) in &book.providers {
        if let Some(d) = &p.disabled {
            providers.push(format!(
                "- {name}: disabled since {} (auth failed via `{}`: {}); fix it, then `dirigent agents enable {}`",
                clock(d.since_ms),
                d.agent,
                d.reason,
                d.agent
            ));
        } else if let Some(until) = p.cooling_until_ms.filter(|u| *u > now) {
            providers.push(format!(
                "- {name}: cooling down until {} ({})",
                clock(until),
                p.cooling_reason
            ));
        }
    }
    if !providers.is_empty() {
        let _ = writeln!(
            out,
            "## Providers
{}
",
            providers.join("\n")
        );
    }
    if let Some(day) = book.spend.get(&crate::state::day_of(now))
        && day.total_usd > 0.0
    {
        let _ = writeln!(
            out,
            "_spent today (UTC): {}_\n",
            crate::usage::dollars(day.total_usd)
        );
    }
    section(
        &mut out,
        "Completed",
        &done,
        Some(book.archived_done + done_skipped),
    );
    section(&mut out, "In Progress", &running, None);
    if !merging.is_empty() {
        section(&mut out, "Waiting to Merge", &merging, None);
    }
    section(&mut out, "Pending", &pending, None);
    if pending_more > 0 {
        // Before the blank line `section` ended with.
        out.pop();
        let _ = writeln!(
            out,
            "- … and {pending_more} more pending (see `dirigent status`)\n"
        );
    }
    section(
        &mut out,
        "Failed",
        &failed,
        Some(book.archived_failed + failed_skipped),
    );
    out
}

/// The lines of the last [`FINISHED_SHOWN`] of `tasks`, and how many earlier ones were left out.
fn last_lines<'a>(
    tasks: &[&'a crate::state::TaskRecord],
    line: impl Fn(&'a crate::state::TaskRecord) -> String,
) -> (Vec<String>, usize) {
    let skip = tasks.len().saturating_sub(FINISHED_SHOWN);
    (tasks[skip..].iter().map(|t| line(t)).collect(), skip)
}

/// A section; finished ones (`earlier` is `Some`) say how many earlier tasks are not listed,
/// including those the daemon no longer holds in full.
fn section(out: &mut String, name: &str, lines: &[String], earlier: Option<usize>) {
    let _ = writeln!(out, "## {name}");
    let hidden = earlier.unwrap_or(0);
    if lines.is_empty() && hidden == 0 {
        out.push_str("_none_\n");
    }
    if hidden > 0 {
        let _ = writeln!(out, "- … {hidden} earlier tasks (see `dirigent status`)");
    }
    for l in lines {
        out.push_str(l);
        out.push('\n');
    }
    out.push('\n');
}

/// Writes `progress.md` atomically.
/// Writes `progress.md` in `.context/` of `ws` atomically (never through a link).
pub fn write(ws: &crate::workspace::Workspace, book: &TaskBook) -> std::io::Result<()> {
    ws.open_context()?
        .write_atomic("progress.md", render(book).as_bytes(), 0o600)
}

/// Cuts `text` to at most `at` bytes, at a character, and appends `marker` when it cut.
pub fn cut_bytes(text: &mut String, at: usize, marker: &str) {
    if text.len() > at {
        let mut end = at;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(marker);
    }
}

/// A reason on one line of at most `max` characters: a list item stays one item however many
/// lines an agent's error had.
pub fn one_line(text: &str, max: usize) -> String {
    // Control characters too: an escape sequence in a title must not reach a terminal that
    // shows the file, nor a line break the agents that read it.
    let joined = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if joined.chars().count() <= max {
        joined
    } else {
        let mut cut: String = joined.chars().take(max).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_at_a_character_with_its_marker() {
        let cases = [
            ("short", 10, "short"),
            ("exactly10!", 10, "exactly10!"),
            ("eleven char", 10, "eleven cha…"),
            // `é` is two bytes: a cut inside it moves back to before it.
            ("abcdé", 5, "abcd…"),
        ];
        for (text, at, want) in cases {
            let mut t = text.to_string();
            cut_bytes(&mut t, at, "…");
            assert_eq!(t, want, "`{text}` cut at {at}");
        }
    }
    use crate::ledger::{Event, Record};

    #[test]
    fn a_long_queue_is_listed_up_to_a_bound_and_counted() {
        let book = queued(1000);
        let text = render(&book);
        assert!(
            text.contains("_0 done · 0 running · 1000 pending · 0 failed"),
            "the header counts every pending task, listed or not: {}",
            &text[..200]
        );
        let listed = text.lines().filter(|l| l.starts_with("- [ ] t")).count();
        assert_eq!(listed, PENDING_SHOWN, "the next tasks to run are listed");
        assert!(
            text.contains("- [ ] t1 — a task (queued)\n")
                && text.contains("- … and 800 more pending (see `dirigent status`)\n\n## Failed"),
            "the rest are counted: {}",
            &text[text.len().saturating_sub(400)..]
        );
        assert!(
            text.len() < 20_000,
            "{} bytes for 1,000 queued tasks",
            text.len()
        );
    }

    #[test]
    fn a_long_history_lists_the_latest_finished_and_counts_the_rest() {
        let mut book = queued(1000);
        for n in 1..=600u64 {
            book.apply(&Record {
                seq: 1000 + n,
                ts: 1000 + n,
                event: Event::Cancelled {
                    task: format!("t{n}"),
                },
            });
        }
        let text = render(&book);
        assert!(
            text.contains("_0 done · 0 running · 400 pending · 600 failed"),
            "the header counts every task: {}",
            &text[..200]
        );
        let failed = &text[text.find("## Failed").expect("a Failed section")..];
        assert!(
            failed.starts_with(
                "## Failed\n- … 100 earlier tasks (see `dirigent status`)\n- [ ] t101 — "
            ),
            "the 500 latest are listed after the count of the earlier ones: {}",
            &failed[..300]
        );
        assert_eq!(
            failed.lines().filter(|l| l.starts_with("- [ ] t")).count(),
            FINISHED_SHOWN,
            "exactly the latest {FINISHED_SHOWN} finished tasks are listed"
        );
        assert!(failed.contains("- [ ] t600 — "), "the latest is listed");
    }

    /// A book of `n` tasks received and waiting.
    fn queued(n: u64) -> TaskBook {
        let mut book = TaskBook::default();
        for n in 1..=n {
            let id = format!("t{n}");
            let fields = crate::task::TaskFields {
                prompt: Some("p".into()),
                ..Default::default()
            };
            book.apply(&Record {
                seq: n,
                ts: n,
                event: Event::Received {
                    task: id.clone(),
                    file: format!("{id}.json"),
                    spec: Box::new(crate::task::TaskSpec {
                        id: id.clone(),
                        title: "a task".into(),
                        prompt: "p".into(),
                        chain: vec!["a".into()],
                        chain_source: "default".into(),
                        fields,
                    }),
                },
            });
        }
        book
    }
}
