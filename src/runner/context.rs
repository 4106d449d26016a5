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
        match child_state(book, &id) {
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
/// are skipped; at most 10,000 files.
pub fn glob_workspace(ws: &Workspace, pattern: &str) -> Vec<String> {
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
    match (pat.first(), path.first()) {
        (None, None) => true,
        (Some(&"**"), _) => {
            glob_match(&pat[1..], path) || (!path.is_empty() && glob_match(pat, &path[1..]))
        }
        (Some(p), Some(s)) => {
            segment_match(p.as_bytes(), s.as_bytes()) && glob_match(&pat[1..], &path[1..])
        }
        _ => false,
    }
}

fn segment_match(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            segment_match(&p[1..], s) || (!s.is_empty() && segment_match(p, &s[1..]))
        }
        (Some(b'?'), Some(_)) => segment_match(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => segment_match(&p[1..], &s[1..]),
        _ => false,
    }
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
    }
}
