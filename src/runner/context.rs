//! What a phase's tasks see besides their prompt: the earlier phases' outputs (all of them,
//! the phase's `input`s, or distilled summaries made by distill tasks) and, for the `scoped`
//! strategy, workspace files. These read the workspace; they write nothing.

use std::collections::BTreeMap;

use super::{Action, Child, ChildState, child_state, read_output, render, route};
use crate::config::Config;
use crate::state::{TaskBook, TaskRecord};
use crate::workflow::{ContextStrategy, FanOut, FanOutTasks, Kind, Phase, TaskList};
use crate::workspace::Workspace;

/// The built-in prompt of a distill step.
const DISTILL_PROMPT: &str = "Distill the following into a short summary for the next step: the key decisions, \
constraints, risks and open questions, in at most ten bullet points. Leave out everything else.";

/// The `distilled` context: a summary of each earlier phase (or of the phase's `input`s),
/// made by a distill task `<run>.distill.<phase>` whose result is cached in
/// `.context/outbox/<run>.distill.<phase>.md` and reused by every later distilled phase. Returns the
/// summaries, or the actions that make the missing ones (and nothing else happens meanwhile).
pub(super) fn distilled(
    run: &TaskRecord,
    phase: &Phase,
    book: &TaskBook,
    config: &Config,
    ws: &Workspace,
) -> Result<String, Vec<Action>> {
    let names: Vec<String> = if phase.input_given {
        context_inputs(phase)
    } else {
        run.more().phases.iter().map(|(p, _)| p.clone()).collect()
    };
    let step = phase.distill.as_ref();
    let named = phase.distill_by.as_ref().map(|r| (&r.name, r.accepts));
    let (agent, role) = match named.map(|(n, a)| route(&n.value, a, config)) {
        Some(Ok(r)) => r,
        Some(Err(why)) => {
            return Err(vec![Action::Failed(format!(
                "phase `{}`: {why}",
                phase.name.value
            ))]);
        }
        None => (None, None),
    };
    let ask = step
        .and_then(|d| d.prompt.clone())
        .unwrap_or_else(|| DISTILL_PROMPT.to_string());
    let mut text = String::new();
    let mut actions = Vec::new();
    let mut waiting = false;
    for name in names {
        let Some((_, out)) = run.more().phases.iter().find(|(p, _)| *p == name) else {
            continue;
        };
        let id = format!("{}.distill.{name}", run.id());
        match child_state(book, run.id(), &id) {
            ChildState::Missing => actions.push(Action::Submit(Child {
                id,
                title: format!("distill {name}"),
                prompt: format!(
                    "{ask}\n\n---\n## Output of phase `{name}`\n\n{}",
                    read_output(ws, out).trim_end()
                ),
                agent: agent.clone(),
                role: role.clone(),
                chain: None,
                // The default, `.context/outbox/<run>.distill.<phase>.md`, is the cache.
                output: None,
                files: vec![],
                workdir: None,
                verify: None,
            })),
            ChildState::Waiting => waiting = true,
            ChildState::Failed(reason) => {
                return Err(vec![Action::Failed(format!(
                    "phase `{}` failed: distilling `{name}` failed: {reason}",
                    phase.name.value
                ))]);
            }
            ChildState::Done(summary) => {
                text.push_str(&format!(
                    "\n## Summary of phase `{name}`\n\n{}\n",
                    read_output(ws, &summary).trim_end()
                ));
            }
        }
    }
    if waiting || !actions.is_empty() {
        Err(actions)
    } else {
        Ok(text)
    }
}

/// The `input`s a phase's tasks see as context: all of them, except a routed phase's task
/// list, which its tasks receive one item each.
fn context_inputs(phase: &Phase) -> Vec<String> {
    let list = match &phase.kind {
        Kind::FanOut(FanOut {
            tasks:
                FanOutTasks::Routed {
                    list: TaskList::FromPhase(from),
                    ..
                },
            ..
        }) => Some(from),
        _ => None,
    };
    phase
        .inputs
        .iter()
        .filter(|i| Some(*i) != list)
        .cloned()
        .collect()
}

/// The earlier outputs this phase sees: all of them (`full`) or its `input`s (the others).
pub(super) fn inputs(run: &TaskRecord, phase: &Phase, ws: &Workspace) -> String {
    let names: Vec<String> = match phase.context {
        Some(ContextStrategy::Full) => run.more().phases.iter().map(|(p, _)| p.clone()).collect(),
        _ => context_inputs(phase),
    };
    let mut s = String::new();
    for name in names {
        if let Some((_, out)) = run.more().phases.iter().find(|(p, _)| *p == name) {
            s.push_str(&format!(
                "\n## Output of phase `{name}` ({out})\n\n{}\n",
                read_output(ws, out).trim_end()
            ));
        }
    }
    s
}

/// The workspace files a `scoped` phase's tasks see: its `files`, globs expanded.
pub(super) fn scoped_files(
    phase: &Phase,
    ws: &Workspace,
    vars: &BTreeMap<String, String>,
) -> Vec<String> {
    if phase.context != Some(ContextStrategy::Scoped) {
        return vec![];
    }
    let mut out = Vec::new();
    for f in &phase.files {
        let f = render(f, vars);
        if f.contains(['*', '?']) {
            out.extend(glob_workspace(ws, &f));
        } else {
            out.push(f);
        }
    }
    // In their normal form (`./a.txt` is `a.txt`), and each once: globs may overlap, and a file
    // may be named and matched.
    let mut seen = std::collections::HashSet::new();
    out.into_iter()
        .map(|f| {
            crate::confined::workspace_path("files", &f)
                .map(|p| p.to_string())
                .unwrap_or(f)
        })
        .filter(|f| seen.insert(f.clone()))
        .collect()
}

/// Workspace files (relative paths, sorted) matching `pattern`: `*` and `?` within a path
/// segment, `**` for any number of directories. Dot-directories, `target` and `node_modules`
/// are skipped; at most 10,000 files, found among at most 200,000 entries (it runs on the
/// engine's thread: a huge tree must not hold every door while it is walked).
pub fn glob_workspace(ws: &Workspace, pattern: &str) -> Vec<String> {
    const MAX_SEEN: usize = 200_000;
    let mut seen = 0usize;
    let pat: Vec<&str> = pattern
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    let mut out = Vec::new();
    let mut stack = vec![(ws.root().to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > MAX_SEEN {
                tracing::warn!(
                    "`{pattern}`: stopped looking after {MAX_SEEN} entries of the workspace; {} file(s) matched so far",
                    out.len()
                );
                out.sort();
                return out;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                if name != "target" && name != "node_modules" {
                    stack.push((e.path(), path));
                }
            } else if ft.is_file() && glob_match(&pat, &path.split('/').collect::<Vec<_>>()) {
                out.push(path);
                if out.len() >= 10_000 {
                    out.sort();
                    return out;
                }
            }
        }
    }
    out.sort();
    out
}

fn glob_match(pat: &[&str], path: &[&str]) -> bool {
    wildcard(
        pat,
        path,
        |p| *p == "**",
        |p, s| segment_match(p.as_bytes(), s.as_bytes()),
    )
}

fn segment_match(p: &[u8], s: &[u8]) -> bool {
    wildcard(p, s, |p| *p == b'*', |p, c| *p == b'?' || p == c)
}

/// Whether `pat` matches all of `s`, where an element for which `is_star` holds matches any
/// run of elements (none included) and any other matches one element for which `one` holds.
/// Greedy, going back only to the last star: O(|pat| · |s|) calls of `one`, however many stars
/// a pattern holds — a pattern is a submitter's to choose, and a matcher that tries every split
/// (exponential in the stars) would hold the daemon on one.
fn wildcard<P, S>(
    pat: &[P],
    s: &[S],
    is_star: impl Fn(&P) -> bool,
    one: impl Fn(&P, &S) -> bool,
) -> bool {
    let (mut pi, mut si) = (0, 0);
    // Where to go back to: the pattern just after the last star, and how much of `s` that
    // star has taken so far.
    let mut back: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < pat.len() && is_star(&pat[pi]) {
            back = Some((pi + 1, si));
            pi += 1;
        } else if pi < pat.len() && one(&pat[pi], &s[si]) {
            pi += 1;
            si += 1;
        } else if let Some((after_star, taken)) = back {
            // The last star takes one more element, and the rest is tried from there.
            back = Some((after_star, taken + 1));
            pi = after_star;
            si = taken + 1;
        } else {
            return false;
        }
    }
    pat[pi..].iter().all(is_star)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let m = |p: &str, s: &str| {
            glob_match(
                &p.split('/').collect::<Vec<_>>(),
                &s.split('/').collect::<Vec<_>>(),
            )
        };
        assert!(m("src/**/*.py", "src/a.py") && m("src/**/*.py", "src/x/y/b.py"));
        assert!(!m("src/**/*.py", "src/a.rs") && !m("src/*.py", "src/x/b.py"));
        assert!(m("**", "a/b/c") && m("a?c.md", "abc.md"));
        for (p, s, want) in [
            ("*", "", true),
            ("*", "abc", true),
            ("a*", "a", true),
            ("*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("*a*a", "aaa", true),
            ("*a*a", "a", false),
            ("?", "", false),
            ("a?*", "ab", true),
            ("**/x.py", "x.py", true),
            ("a/**/b/**/c", "a/b/c", true),
            ("a/**/b/**/c", "a/x/b/y/z/c", true),
            ("a/**/b/**/c", "a/x/y/c", false),
            ("src/*/*.rs", "src/a.rs", false),
        ] {
            assert_eq!(m(p, s), want, "`{p}` against `{s}`");
        }
    }

    /// A pattern of many stars that fails at its very end is decided at once: the matcher goes
    /// back only to the last star (trying every split would take longer than the test's life).
    #[test]
    fn many_stars_are_decided_without_trying_every_split() {
        let name = "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz.py";
        let stars = format!("{}Z", "*".repeat(60));
        assert!(
            !segment_match(stars.as_bytes(), name.as_bytes()),
            "expected no match for a pattern ending in a letter the name lacks"
        );
        let deep = format!("{}/nothing", vec!["**"; 60].join("/"));
        let path: Vec<&str> = std::iter::repeat_n("d", 60).chain(["f.py"]).collect();
        let pat: Vec<&str> = deep.split('/').collect();
        assert!(
            !glob_match(&pat, &path),
            "expected no match for a path that never names `nothing`"
        );
    }
}
