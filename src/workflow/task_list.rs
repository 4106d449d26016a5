//! The task list a `routed` phase reads from an earlier phase's output — what a planning model
//! writes when asked to decompose work. Models answer in many shapes, so this reads the common
//! ones rather than one strict format:
//!
//! - JSON lists of `{"category", "prompt"}` objects anywhere in the text, all of them (`task`,
//!   `description` or `title` in place of `prompt`; an object without both is left out);
//! - Markdown items, fenced or not: `- [backend] Add the endpoint`, `- backend: …`,
//!   `- backend — …`, `1. **frontend**: The form`, with indented lines below an item belonging
//!   to it (an open `- [ ]` checkbox is a plain item; a ticked `- [x]` one is done, not a task;
//!   `[text](link)` is a link, not a category);
//! - headings: `## [backend] Add the endpoint` or `### backend: …`, the text under the heading
//!   (code blocks included) being the task's details; or a heading that names a category (`## Frontend`) with plain
//!   items below it, each a task of that category.
//!
//! [`route`] then finds a category's entry in the phase's `routing`: exactly, then ignoring case,
//! then a `default` entry.

use std::collections::BTreeMap;

/// One task of the list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedTask {
    pub category: String,
    pub prompt: String,
}

/// Reads a task list; `categories` are the routing's keys (an unbracketed `word: text` line is a
/// task only when `word` is one of them, so prose like `Note: …` is not taken for a task).
pub fn parse(text: &str, categories: &[&str]) -> Result<Vec<ListedTask>, NoTaskList> {
    if let Some(tasks) = from_json(text) {
        return Ok(tasks);
    }
    let tasks = from_markdown(text, categories);
    if tasks.is_empty() {
        Err(NoTaskList {
            example: categories
                .first()
                .copied()
                .unwrap_or("category")
                .to_string(),
        })
    } else {
        Ok(tasks)
    }
}

/// An answer with no task list in it; `example` is a category to show the expected form with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "it holds no task list: expected lines like `- [{example}] what to do`, headings like `## [{example}] what to do`, or a JSON list of {{\"category\", \"prompt\"}}"
)]
pub struct NoTaskList {
    pub example: String,
}

/// A category's routing entry: exact, then ignoring case, then `default`.
pub fn route<'a, V>(routing: &'a BTreeMap<String, V>, category: &str) -> Option<&'a V> {
    routing
        .get(category)
        .or_else(|| {
            routing
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(category))
                .map(|(_, v)| v)
        })
        .or_else(|| routing.get("default"))
}

/// Every JSON list of task objects in the text (prose, fences and several lists around them),
/// in order. An object without a string `category` and prompt is left out; a list with none
/// that has them is not a task list.
fn from_json(text: &str) -> Option<Vec<ListedTask>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = text[from..].find('[') {
        let start = from + found;
        let mut stream = serde_json::Deserializer::from_str(&text[start..])
            .into_iter::<Vec<serde_json::Value>>();
        match stream.next() {
            Some(Ok(items)) => {
                let tasks: Vec<ListedTask> = items.iter().filter_map(task_of).collect();
                out.extend(tasks);
                from = start + stream.byte_offset().max(1);
            }
            _ => from = start + 1,
        }
    }
    (!out.is_empty()).then_some(out)
}

/// `{"category": …, "prompt"|"task"|"description"|"title": …}` as a task.
fn task_of(v: &serde_json::Value) -> Option<ListedTask> {
    let category = v.get("category")?.as_str()?.trim();
    let prompt = ["prompt", "task", "description", "title"]
        .iter()
        .find_map(|k| v.get(*k).and_then(|p| p.as_str()))?
        .trim();
    (!category.is_empty() && !prompt.is_empty()).then(|| ListedTask {
        category: category.to_string(),
        prompt: prompt.to_string(),
    })
}

/// Where a task's text is being collected.
enum Open {
    None,
    /// A list item: indented lines continue it.
    Item,
    /// A heading task of this level: every line until a heading of the same or a higher level.
    Heading(usize),
}

fn from_markdown(text: &str, categories: &[&str]) -> Vec<ListedTask> {
    let is_category = |word: &str| {
        categories
            .iter()
            .find(|c| c.eq_ignore_ascii_case(word))
            .map(|c| c.to_string())
    };
    let mut out: Vec<ListedTask> = Vec::new();
    let mut open = Open::None;
    // A heading that names a category: plain items below it belong to it.
    let mut section: Option<(usize, String)> = None;
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            // Models often fence their whole answer; a fence inside a heading task's details
            // (a code sample) belongs to the task.
            if matches!(open, Open::Heading(_)) {
                push_detail(&mut out, line.trim_end());
            }
            continue;
        }
        if in_fence && matches!(open, Open::Heading(_)) {
            push_detail(&mut out, line.trim_end());
            continue;
        }
        if let Some((level, title)) = heading(line) {
            if let Open::Heading(l) = open
                && level > l
            {
                push_detail(&mut out, line.trim());
                continue;
            }
            open = Open::None;
            if section.as_ref().is_some_and(|(l, _)| level <= *l) {
                section = None;
            }
            let title = strip_numbering(title).trim();
            let tag = tagged(title, &is_category).filter(|(_, task)| !task.is_empty());
            if let Some((category, task)) = tag {
                out.push(ListedTask {
                    category,
                    prompt: task.to_string(),
                });
                open = Open::Heading(level);
            } else if let Some(c) =
                is_category(title.trim_end_matches(':').trim().trim_matches(['[', ']']))
            {
                section = Some((level, c));
            }
            continue;
        }
        if let Some(item) = list_item(line) {
            let item = item.trim();
            if let Some((category, task)) = tagged(item, &is_category) {
                out.push(ListedTask {
                    category,
                    prompt: task.to_string(),
                });
                open = Open::Item;
                continue;
            }
            if let Some((_, category)) = &section
                && !item.is_empty()
            {
                out.push(ListedTask {
                    category: category.clone(),
                    prompt: item.to_string(),
                });
                open = Open::Item;
                continue;
            }
            if matches!(open, Open::Heading(_)) {
                push_detail(&mut out, line.trim_end());
            } else {
                open = Open::None;
            }
            continue;
        }
        match open {
            Open::Heading(_) => push_detail(&mut out, line.trim_end()),
            Open::Item if line.starts_with([' ', '\t']) && !line.trim().is_empty() => {
                push_detail(&mut out, line.trim())
            }
            Open::Item if line.trim().is_empty() => {}
            _ => open = Open::None,
        }
    }
    for t in &mut out {
        t.prompt = t.prompt.trim().to_string();
    }
    out.retain(|t| !t.prompt.is_empty() && !t.category.is_empty());
    out
}

fn push_detail(out: &mut [ListedTask], line: &str) {
    if let Some(last) = out.last_mut() {
        last.prompt.push('\n');
        last.prompt.push_str(line);
    }
}

/// `## text` → (2, `text`).
fn heading(line: &str) -> Option<(usize, &str)> {
    let t = line.trim_start();
    let level = t.bytes().take_while(|b| *b == b'#').count();
    if (1..=6).contains(&level) && t[level..].starts_with(' ') {
        Some((level, t[level..].trim()))
    } else {
        None
    }
}

/// `- text`, `* text`, `+ text`, `1. text`, `1) text`, with a `[ ]`/`[x]` checkbox removed.
fn list_item(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let rest = if let Some(r) = t
        .strip_prefix("- ")
        .or_else(|| t.strip_prefix("* "))
        .or_else(|| t.strip_prefix("+ "))
    {
        r
    } else {
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        t[digits..]
            .strip_prefix(". ")
            .or_else(|| t[digits..].strip_prefix(") "))?
    };
    let rest = rest.trim();
    if let Some(r) = rest.strip_prefix("[ ] ") {
        return Some(r.trim());
    }
    if rest.starts_with("[x] ") || rest.starts_with("[X] ") {
        // Ticked off: done already, not a task to run.
        return Some("");
    }
    Some(rest)
}

/// `1. text` or `Task 1: text` → `text` (headings are often numbered).
fn strip_numbering(t: &str) -> &str {
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits > 0
        && let Some(r) = t[digits..]
            .strip_prefix(". ")
            .or_else(|| t[digits..].strip_prefix(") "))
    {
        return r.trim();
    }
    t
}

/// `[category] task`, `category: task`, `**category**: task`, `**[category]** task`.
fn tagged(text: &str, is_category: &dyn Fn(&str) -> Option<String>) -> Option<(String, String)> {
    let plain: String = text.replacen("**", "", 2).replacen("__", "", 2);
    let t = plain.trim();
    if let Some(rest) = t.strip_prefix('[')
        && let Some((cat, task)) = rest.split_once(']')
        // `[README](README.md)` is a Markdown link, not a category.
        && !task.starts_with('(')
    {
        let cat = cat.trim();
        let task = task.trim_start_matches([':', '-', '—', '–', ' ']).trim();
        if !cat.is_empty() && !cat.contains(char::is_whitespace) {
            return Some((cat.to_string(), task.to_string()));
        }
    }
    // `category: task`, `category — task`, `category - task` for a known category.
    for sep in [":", " — ", " – ", " - "] {
        if let Some((cat, task)) = t.split_once(sep)
            && let Some(c) = is_category(cat.trim())
        {
            return Some((c, task.trim().to_string()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tasks(text: &str) -> Vec<(String, String)> {
        parse(text, &["frontend", "backend", "test"])
            .unwrap_or_else(|e| panic!("no tasks in {text:?}: {e}"))
            .into_iter()
            .map(|t| (t.category, t.prompt))
            .collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(c, t)| (c.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn task_list_shapes_case_table() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            (
                "Here you go:\n```json\n[{\"category\": \"backend\", \"prompt\": \"API\"}, {\"category\": \"test\", \"task\": \"tests\"}]\n```",
                &[("backend", "API"), ("test", "tests")],
            ),
            (
                "See [the plan] first.\n[{\"category\": \"frontend\", \"description\": \"form\"}]",
                &[("frontend", "form")],
            ),
            (
                "Tasks:\n- [frontend] the form\n- backend: the endpoint\n- not a task line here\nNote: prose\n",
                &[("frontend", "the form"), ("backend", "the endpoint")],
            ),
            (
                "1. **Backend**: the endpoint\n   with pagination\n2. [test] the tests\n",
                &[
                    ("backend", "the endpoint\nwith pagination"),
                    ("test", "the tests"),
                ],
            ),
            (
                "- [ ] [frontend] the form\n- [x] backend: done already\n",
                &[("frontend", "the form")],
            ),
            (
                "# Tasks\n## [backend] Add the endpoint\nIt returns JSON.\n- handle errors\n## 2. frontend: The form\nTwo fields.\n",
                &[
                    (
                        "backend",
                        "Add the endpoint\nIt returns JSON.\n- handle errors",
                    ),
                    ("frontend", "The form\nTwo fields."),
                ],
            ),
            (
                "## Frontend\n- the form\n- the list\n## Backend:\n- the endpoint\n## Notes\n- not a task\n",
                &[
                    ("frontend", "the form"),
                    ("frontend", "the list"),
                    ("backend", "the endpoint"),
                ],
            ),
            (
                "```\n- [backend] inside a fenced answer\n```\n- [docs] a category routing may lack\n",
                &[
                    ("backend", "inside a fenced answer"),
                    ("docs", "a category routing may lack"),
                ],
            ),
            (
                "## [backend] The endpoint\nUse this signature:\n```rust\nfn get() -> Json\n```\nand test it.\n",
                &[(
                    "backend",
                    "The endpoint\nUse this signature:\n```rust\nfn get() -> Json\n```\nand test it.",
                )],
            ),
            (
                "[{\"category\": \"backend\", \"prompt\": \"API\"}]\n(See note [1].)\n[{\"category\": \"test\", \"prompt\": \"tests\"}, {\"category\": \"test\", \"prompt\": {\"bad\": 1}}]",
                &[("backend", "API"), ("test", "tests")],
            ),
            (
                "- **frontend** — The form\n- backend - the endpoint\n- [README](README.md) is not a task\n- [x] test: done already\n",
                &[("frontend", "The form"), ("backend", "the endpoint")],
            ),
        ];
        for (text, want) in cases {
            assert_eq!(tasks(text), pairs(want), "task list {text:?}");
        }
        let err = parse("nothing here", &["backend"]).unwrap_err().to_string();
        assert!(err.contains("`- [backend] what to do`"), "{err}");
    }

    #[test]
    fn routing_matches_exactly_then_ignoring_case_then_default() {
        let mut routing: BTreeMap<String, &str> =
            [("backend".to_string(), "b"), ("Test".to_string(), "t")].into();
        assert_eq!(route(&routing, "backend"), Some(&"b"));
        assert_eq!(route(&routing, "BACKEND"), Some(&"b"));
        assert_eq!(route(&routing, "test"), Some(&"t"));
        assert_eq!(route(&routing, "docs"), None);
        routing.insert("default".into(), "d");
        assert_eq!(route(&routing, "docs"), Some(&"d"));
    }
}
