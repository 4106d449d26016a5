//! Task files: JSON (`*.json`) or Markdown with optional YAML front matter (`*.md`, body = the
//! prompt). Parsing is strict — unknown keys, wrong types, a missing prompt, unsafe paths are all
//! errors with a line and column where the parser has them — and happens before a task is
//! accepted. A parse error sends the file to `rejected/`; it never reaches the engine.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{Config, validate_name};
use crate::confined;
use crate::duration::Dur;

/// The most files a task's `files` (or its `context`) may name: each is put into the prompt.
pub const MAX_FILES: usize = 256;

/// The largest task file we read. Bigger files are rejected without being read.
pub const MAX_TASK_BYTES: u64 = 1024 * 1024;

/// The fields a task file may have. Only `prompt` (or `workflow`) is required.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Dur>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i64,
    /// Most this task (a workflow run: with all its tasks) may cost, in US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    /// The task whose attempt created this one. dirigent's own CLI and MCP server set it when
    /// they run inside an attempt (`DIRIGENT_TASK_ID`), so that `max_spawned_tasks` bounds what
    /// agents create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The workflow run this task is a step of. Set by dirigent for the tasks a run submits,
    /// and accepted only from it: a task naming a run that does not want it, at that moment,
    /// with exactly these fields, is refused — no one else can hand a run its results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_run: Option<String>,
    /// Where its attempts work: `worktree` (a git worktree of its own) or `shared`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<crate::workdir::Workdir>,
    /// The commit its worktree starts from (a branch, tag or commit); default: the head of the
    /// branch it merges into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Run in the worktree once the agent says done: one argv or a list of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<crate::editing::VerifyWritten>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_rounds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_changes: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<crate::editing::MergeMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_into: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_strategy: Option<crate::editing::MergeStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_conflict: Option<crate::editing::OnConflict>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carry_failed_changes: Option<bool>,
}

impl TaskFields {
    /// The editing settings it gives (see `editing`); `verify` was checked at acceptance.
    pub fn editing(&self) -> crate::editing::TaskSays {
        crate::editing::TaskSays {
            verify: self.verify.as_ref().and_then(|v| v.commands().ok()),
            verify_rounds: self.verify_rounds,
            expect_changes: self.expect_changes,
            merge: self.merge,
            merge_into: self.merge_into.clone(),
            merge_strategy: self.merge_strategy,
            on_conflict: self.on_conflict,
            carry_failed_changes: self.carry_failed_changes,
        }
    }
}

/// The task an attempt runs for, when this process runs inside one (an agent calling
/// `dirigent submit` or the MCP server) of the workspace at `root`. An attempt of another
/// workspace is none of this one's tasks: an agent of one project may hand work to another.
pub fn parent_from_env(root: &Path) -> Option<String> {
    let from = std::path::PathBuf::from(std::env::var_os("DIRIGENT_WORKSPACE")?);
    let same = from == root
        || matches!(
            (from.canonicalize(), root.canonicalize()),
            (Ok(a), Ok(b)) if a == b
        );
    if !same {
        return None;
    }
    std::env::var("DIRIGENT_TASK_ID")
        .ok()
        .filter(|id| validate_name(id).is_ok())
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// An accepted task: its fields plus the id and chain decided at acceptance.
///
/// Written (to the ledger, a snapshot, the fleet's queue) with its prompt once: `prompt` is left
/// out when it is the file's own `fields.prompt`, and read back from there. A long prompt would
/// otherwise take twice its size in every record and in every queued task's memory.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(from = "SpecAsWritten")]
pub struct TaskSpec {
    pub id: String,
    pub title: String,
    pub prompt: String,
    /// The fallback chain, fixed when the task was accepted.
    pub chain: Vec<String>,
    /// Where the chain came from: `chain`, `agent`, `role:NAME` or `default`.
    pub chain_source: String,
    /// The fields as the task file gave them.
    pub fields: TaskFields,
}

/// [`TaskSpec`] as read: `prompt` may be left out (see there).
#[derive(Deserialize)]
struct SpecAsWritten {
    id: String,
    title: String,
    #[serde(default)]
    prompt: Option<String>,
    chain: Vec<String>,
    chain_source: String,
    fields: TaskFields,
}

impl From<SpecAsWritten> for TaskSpec {
    fn from(w: SpecAsWritten) -> Self {
        TaskSpec {
            prompt: w
                .prompt
                .unwrap_or_else(|| w.fields.prompt.clone().unwrap_or_default()),
            id: w.id,
            title: w.title,
            chain: w.chain,
            chain_source: w.chain_source,
            fields: w.fields,
        }
    }
}

impl Serialize for TaskSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let prompt_in_fields = self.fields.prompt.as_deref().unwrap_or("") == self.prompt;
        let mut out = s.serialize_struct("TaskSpec", 6 - usize::from(prompt_in_fields))?;
        out.serialize_field("id", &self.id)?;
        out.serialize_field("title", &self.title)?;
        if prompt_in_fields {
            out.skip_field("prompt")?;
        } else {
            out.serialize_field("prompt", &self.prompt)?;
        }
        out.serialize_field("chain", &self.chain)?;
        out.serialize_field("chain_source", &self.chain_source)?;
        out.serialize_field("fields", &self.fields)?;
        out.end()
    }
}

/// Why a task file was refused. The text goes into `rejected/<name>.error.txt`.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct Reject(pub String);

fn reject<T>(msg: impl Into<String>) -> Result<T, Reject> {
    Err(Reject(msg.into()))
}

/// Parses task file bytes. `name` is the file name (its extension picks the format).
pub fn parse_fields(name: &str, bytes: &[u8]) -> Result<TaskFields, Reject> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            return reject(format!(
                "the file is not valid UTF-8 (first bad byte at offset {})",
                e.valid_up_to()
            ));
        }
    };
    // A UTF-8 byte order mark is harmless: editors on Windows write one.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return reject("the file is empty");
    }
    if name.ends_with(".json") {
        if !text.trim_start().starts_with('{') {
            return reject("a JSON task file must be one object, like {\"prompt\": \"…\"}");
        }
        if let Err(e) = crate::strict_json::check(text.as_bytes()) {
            return reject(invalid_json(None, &e));
        }
        let mut de = serde_json::Deserializer::from_str(text);
        match serde_path_to_error::deserialize::<_, TaskFields>(&mut de) {
            // Only space may follow the object (as `serde_json::from_str` checks).
            Ok(fields) => match de.end() {
                Ok(()) => Ok(fields),
                Err(e) => reject(invalid_json(None, &e)),
            },
            Err(e) => reject(invalid_json(crate::config::key_of(e.path()), e.inner())),
        }
    } else if name.ends_with(".md") {
        parse_markdown(text)
    } else if name.ends_with(".yaml") || name.ends_with(".yml") {
        reject(
            "not a task file: task files end in `.json` or `.md`; a workflow definition belongs in `.context/workflows/`, and a config in `.context/dirigent.yaml`",
        )
    } else {
        reject(
            "not a task file: task files end in `.json` (an object like {\"prompt\": \"…\"}) or `.md` (the prompt as Markdown)",
        )
    }
}

/// Why a JSON task file does not read: where, the field it was at (`files`), and what.
fn invalid_json(key: Option<String>, e: &serde_json::Error) -> String {
    let message = unknown_field_hint(strip_serde_position(&e.to_string()));
    let message = match key {
        // An unknown field's message names it already.
        Some(key) if !message.starts_with("unknown field") => format!("`{key}`: {message}"),
        _ => message,
    };
    format!(
        "invalid task JSON at line {} column {}: {message}",
        e.line(),
        e.column()
    )
}

/// serde's "unknown field `agnet`, expected one of `id`, `title`, …" as "unknown field
/// `agnet`; did you mean `agent`?" when one of the known fields is that close (the whole list
/// otherwise: then it helps).
fn unknown_field_hint(message: String) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message;
    };
    let Some((name, list)) = rest.split_once("`, expected one of ") else {
        return message;
    };
    let known: Vec<&str> = list.split(", ").map(|k| k.trim_matches('`')).collect();
    match crate::suggest::did_you_mean(name, known.iter().copied()) {
        Some(close) => format!("unknown field `{name}`; did you mean `{close}`?"),
        None => message,
    }
}

fn strip_serde_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn parse_markdown(text: &str) -> Result<TaskFields, Reject> {
    let mut lines = text.split_inclusive('\n');
    let first = lines.next().unwrap_or("");
    if first.trim_end_matches(['\r', '\n']) != "---" {
        return Ok(TaskFields {
            prompt: Some(text.trim().to_string()),
            ..Default::default()
        });
    }
    let mut front = String::new();
    let mut body_start = None;
    let mut offset = first.len();
    for line in lines {
        if line.trim_end_matches(['\r', '\n']) == "---" {
            body_start = Some(offset + line.len());
            break;
        }
        front.push_str(line);
        offset += line.len();
    }
    let Some(body_start) = body_start else {
        return reject("front matter starts with `---` on line 1 but has no closing `---` line");
    };
    let mut fields: TaskFields = if front.trim().is_empty() {
        TaskFields::default()
    } else {
        crate::config::from_yaml(&front).map_err(|e| {
            let msg = crate::config::yaml_message(&e);
            match e.error.location() {
                // Line 1 of the front matter is line 2 of the file.
                Some(loc) if loc.line() > 0 => Reject(format!(
                    "invalid front matter at line {} column {}: {msg}",
                    loc.line() + 1,
                    loc.column(),
                )),
                _ => Reject(format!("invalid front matter: {msg}")),
            }
        })?
    };
    let body = text[body_start..].trim();
    if !body.is_empty() {
        if fields.prompt.is_some() {
            return reject(
                "the prompt is given twice: as `prompt` in the front matter and as the body",
            );
        }
        fields.prompt = Some(body.to_string());
    }
    Ok(fields)
}

/// Turns a file stem into an id: disallowed characters become `-`.
pub fn id_from_stem(stem: &str) -> String {
    let mut id: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    while id.starts_with(['.', '-']) {
        id.remove(0);
    }
    id.truncate(100);
    if id.is_empty() {
        "task".to_string()
    } else {
        id
    }
}

/// Validates fields against the config and decides the chain. `id` is already chosen.
pub fn accept(
    id: String,
    fields: TaskFields,
    config: &Config,
    root: &Path,
) -> Result<TaskSpec, Reject> {
    if fields.budget_usd.is_some_and(|b| !b.is_finite() || b < 0.0) {
        return reject("`budget_usd` must be a number of US dollars, 0 or more");
    }
    if let Some(name) = &fields.workflow {
        return accept_workflow(id, name.clone(), fields, config, root);
    }
    let prompt = match &fields.prompt {
        Some(p) if !p.trim().is_empty() => p.clone(),
        _ => return reject("the task has no prompt: give `prompt` (or a Markdown body)"),
    };
    let given = [
        fields.agent.is_some(),
        fields.chain.is_some(),
        fields.role.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if given > 1 {
        return reject("give only one of `agent`, `chain` and `role`");
    }
    let known = |entry: &str| -> Result<(), Reject> {
        if entry.trim().is_empty() {
            return reject("an agent's name is empty (two commas in a row, or a trailing one?)");
        }
        let (name, model) = crate::config::split_entry(entry);
        if model == Some("") {
            return reject(format!("`{entry}` names no model after `:`"));
        }
        if config.agents.contains_key(name) {
            Ok(())
        } else {
            let hint = crate::suggest::hint(name, config.agents.keys().map(String::as_str));
            reject(format!(
                "unknown agent `{name}` (configured: {}){hint}",
                config.agents.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        }
    };
    let (chain, chain_source) = if let Some(agent) = &fields.agent {
        known(agent)?;
        (vec![agent.clone()], "agent".to_string())
    } else if let Some(chain) = &fields.chain {
        if chain.is_empty() {
            return reject("`chain` is empty");
        }
        for a in chain {
            known(a)?;
        }
        (chain.clone(), "chain".to_string())
    } else if let Some(role) = &fields.role {
        match config.role_chain(role, root) {
            Some(chain) => (chain, format!("role:{role}")),
            None => {
                let names = config.role_names();
                let hint = crate::suggest::hint(role, names.iter().map(String::as_str));
                return reject(format!(
                    "unknown role `{role}` (roles: {}){hint}",
                    names.join(", ")
                ));
            }
        }
    } else {
        (config.effective_default_chain(root), "default".to_string())
    };
    // Each agent's `fallback_model` runs right after it, before the chain moves on.
    let chain = config.expand_fallbacks(chain);
    // Paths are normalised before any rule applies, and kept in their normal form.
    let mut fields = fields;
    for c in fields.context.iter_mut() {
        *c = confined::context_path("context", c)
            .map_err(|e| Reject(e.to_string()))?
            .to_string();
    }
    for f in fields.files.iter_mut() {
        *f = confined::workspace_path("files", f)
            .map_err(|e| Reject(e.to_string()))?
            .to_string();
    }
    // Each file goes into the prompt whole: a name given twice (in any spelling) would only
    // make the prompt bigger — a thousand times over, a prompt of gigabytes.
    for (key, list) in [("context", &fields.context), ("files", &fields.files)] {
        if list.len() > MAX_FILES {
            return reject(format!(
                "`{key}` names {} files; at most {MAX_FILES} go into a prompt",
                list.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = list.iter().find(|p| !seen.insert(p.as_str())) {
            return reject(format!(
                "`{key}` names `{twice}` twice; name each file once"
            ));
        }
    }
    if let Some(out) = fields.output.as_mut() {
        // Normalising would drop the slash and write a file where a directory was meant.
        if out.ends_with('/') {
            return reject(format!(
                "`output` path `{out}` names a directory; name the file the result goes to (`{out}result.md`)"
            ));
        }
        if out.starts_with('~') {
            let rest = out.trim_start_matches('~').trim_start_matches('/');
            return reject(format!(
                "`output` path `{out}`: `~` is not a home directory here; paths are relative to the workspace{}",
                match out.strip_prefix("~/") {
                    Some(_) if !rest.is_empty() => format!(" (write `{rest}`)"),
                    _ => String::new(),
                }
            ));
        }
        *out = confined::workspace_path("output", out)
            .map_err(|e| Reject(e.to_string()))?
            .to_string();
        // What can be seen now is said now, not after the agent ran: a directory where the
        // file goes, a link on the way (the write refuses both again, as they may appear later).
        let mut at = root.to_path_buf();
        let parts: Vec<&str> = out.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            at.push(part);
            let Ok(meta) = std::fs::symlink_metadata(&at) else {
                break;
            };
            let so_far = parts[..=i].join("/");
            if meta.file_type().is_symlink() {
                return reject(format!(
                    "`output` path `{out}` goes through `{so_far}`, a symbolic link; dirigent writes results only through real directories"
                ));
            }
            if i + 1 == parts.len() && meta.is_dir() {
                return reject(format!(
                    "`output` path `{out}` is a directory; name the file the result goes to (`{out}/result.md`)"
                ));
            }
            if i + 1 < parts.len() && !meta.is_dir() {
                return reject(format!(
                    "`output` path `{out}` goes through `{so_far}`, which is a file, not a directory"
                ));
            }
        }
    }
    if let Some(parent) = &fields.parent {
        validate_name(parent).map_err(|m| Reject(format!("`parent` id `{parent}`: {m}")))?;
    }
    for dep in &fields.after {
        validate_name(dep).map_err(|m| Reject(format!("`after` id `{dep}`: {m}")))?;
    }
    let min = crate::duration::MIN_TIMEOUT;
    if let Some(d) = fields.timeout.filter(|d| d.0 < min) {
        return reject(format!(
            "`timeout` is {}; it must be at least {} (an agent does not even start in less)",
            crate::duration::short(d.0),
            crate::duration::short(min)
        ));
    }
    if let Some(d) = fields.idle_timeout.filter(|d| d.0 < min) {
        return reject(format!(
            "`idle_timeout` is {}; it must be at least {} (leave it out to use the agent's)",
            crate::duration::short(d.0),
            crate::duration::short(min)
        ));
    }
    accept_editing(&id, &fields, config, root)?;
    check_title(fields.title.as_deref())?;
    let title = fields
        .title
        .clone()
        .unwrap_or_else(|| title_from_prompt(&prompt));
    Ok(TaskSpec {
        id,
        title,
        prompt,
        chain,
        chain_source,
        fields,
    })
}

/// The editing keys: `verify` well formed, branch names git takes, and `workdir: worktree` (the
/// task's or the config's) only in a git repository — refused here rather than when it runs.
fn accept_editing(
    id: &str,
    fields: &TaskFields,
    config: &Config,
    root: &Path,
) -> Result<(), Reject> {
    if let Some(v) = &fields.verify {
        v.commands().map_err(|e| Reject(e.to_string()))?;
    }
    crate::editing::check_verify_rounds(fields.verify_rounds).map_err(Reject)?;
    if let Some(branch) = &fields.merge_into {
        crate::git::check_target_name(branch)
            .map_err(|why| Reject(format!("`merge_into: {branch}`: {why}")))?;
    }
    if let Some(base) = &fields.base
        && (base.is_empty() || base.starts_with('-') || base.contains(char::is_control))
    {
        return reject(format!(
            "`base: {base}` is not a revision (a branch, tag or commit)"
        ));
    }
    match crate::workdir::decide(
        asked_workdir(fields, config),
        crate::git::in_repository(root),
        false,
    ) {
        Err(e) => reject(e.to_string()),
        // Its branch is named after its id: an id git refuses is refused now, not at its
        // first attempt.
        Ok(crate::workdir::Workdir::Worktree) => crate::git::branch_for(id)
            .map(drop)
            .map_err(|e| Reject(e.to_string())),
        Ok(crate::workdir::Workdir::Shared) => Ok(()),
    }
}

/// Where the task and the config ask its attempts to work (an agent may still say otherwise):
/// what acceptance checks, and what `submit` warns by.
pub fn asked_workdir(fields: &TaskFields, config: &Config) -> crate::workdir::Asked {
    crate::workdir::Asked {
        task: fields.workdir,
        role: fields
            .role
            .as_deref()
            .and_then(|r| config.role_editing.get(r))
            .and_then(|(w, _)| *w),
        config: config.workdir,
        ..Default::default()
    }
}

/// A task that runs a workflow: the workflow must exist and validate, and every variable without
/// a default must be given. It gets no chain: the workflow runner drives it.
fn accept_workflow(
    id: String,
    name: String,
    fields: TaskFields,
    config: &Config,
    root: &Path,
) -> Result<TaskSpec, Reject> {
    if fields.agent.is_some() || fields.chain.is_some() || fields.role.is_some() {
        return reject(
            "a `workflow` task names its agents in the workflow; remove `agent`, `chain` and `role`",
        );
    }
    // The run itself reads nothing: taken and then ignored, they would mislead.
    if !fields.files.is_empty() || !fields.context.is_empty() {
        return reject(
            "a `workflow` task reads no `files` or `context` itself: its phases name what they read (`files` with `context: scoped`); remove them",
        );
    }
    // Its editing tasks merge into its `merge_into` (a run branch, say).
    if let Some(branch) = &fields.merge_into {
        crate::git::check_target_name(branch)
            .map_err(|why| Reject(format!("`merge_into: {branch}`: {why}")))?;
    }
    let dir = root.join(crate::workspace::CONTEXT_DIR).join("workflows");
    let defs = crate::workflow::discover(&dir)
        .map_err(|e| Reject(format!("cannot read `{}`: {e}", dir.display())))?;
    let Some(def) = defs.iter().find(|d| d.name == name) else {
        let names: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
        let hint = crate::suggest::hint(&name, names.iter().copied());
        return reject(format!(
            "unknown workflow `{name}` (workflows: {}){hint}",
            names.join(", ")
        ));
    };
    let wf = crate::workflow::validate(def, config).map_err(|problems| {
        Reject(format!(
            "workflow `{name}` is invalid:\n{}",
            problems
                .iter()
                .map(|p| format!("  {p}"))
                .collect::<Vec<_>>()
                .join("\n")
        ))
    })?;
    // Declared variables, and the ones the templates use without declaring (required).
    let variables = &wf.variables;
    for given in fields.vars.keys() {
        if !variables.contains_key(given) {
            let known: Vec<&str> = variables.keys().map(String::as_str).collect();
            let hint = crate::suggest::hint(given, known.iter().copied());
            return reject(format!(
                "workflow `{name}` has no variable `{given}` (variables: {}){hint}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
        }
    }
    let missing: Vec<String> = wf
        .required_variables()
        .into_iter()
        .filter(|v| !fields.vars.contains_key(v))
        .collect();
    if !missing.is_empty() {
        // In the words of each door: the CLI's flag, a task file's or a request's `vars`.
        let args: Vec<String> = missing.iter().map(|v| format!("--var {v}=…")).collect();
        let keys: Vec<String> = missing.iter().map(|v| format!("\"{v}\": …")).collect();
        return reject(format!(
            "workflow `{name}` needs the variable{} {}: give {} as `{}` (`\"vars\": {{{}}}` in a task file or a request)",
            if missing.len() == 1 { "" } else { "s" },
            missing
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", "),
            if missing.len() == 1 { "it" } else { "them" },
            args.join(" "),
            keys.join(", ")
        ));
    }
    // Where the phases will write, with this run's variables: a variable that leads an
    // `output` out of the workspace is refused now, not halfway through the run.
    let mut vars = crate::workflow::vars_of(&wf, &fields.vars);
    vars.insert("workflow".into(), name.clone());
    vars.insert("run".into(), id.clone());
    for phase in &wf.phases {
        vars.insert("phase".into(), phase.name.value.clone());
        if let Some(out) = &phase.output {
            let path = crate::workflow::render(&out.value, &vars);
            confined::workspace_path("output", &path).map_err(|e| {
                Reject(format!(
                    "workflow `{name}`: with these variables, phase `{}` cannot write its result: {e}",
                    phase.name.value
                ))
            })?;
        }
    }
    check_title(fields.title.as_deref())?;
    let title = fields
        .title
        .clone()
        .unwrap_or_else(|| format!("workflow {name}"));
    Ok(TaskSpec {
        id,
        title,
        prompt: fields.prompt.clone().unwrap_or_default(),
        chain: vec![],
        chain_source: format!("workflow:{name}"),
        fields,
    })
}

/// The longest title a task may be given (the prompt holds the rest).
pub const MAX_TITLE: usize = 200;

/// A title as given: one line of at most [`MAX_TITLE`] characters — it is shown in
/// `progress.md`, which agents read, and on terminals.
fn check_title(title: Option<&str>) -> Result<(), Reject> {
    let Some(title) = title else { return Ok(()) };
    if let Some(c) = title.chars().find(|c| c.is_control()) {
        return reject(format!(
            "`title` must be one line of text; it holds a control character (U+{:04X})",
            u32::from(c)
        ));
    }
    // A title is shown to agents (`progress.md`) and people: it reads as it is written.
    if let Some(c) = title.chars().find(|c| crate::terminal::is_bidi_control(*c)) {
        return reject(format!(
            "`title` holds a bidirectional formatting character (U+{:04X}), which makes text read in another order than it is written; leave it out",
            u32::from(c)
        ));
    }
    let n = title.chars().count();
    if n > MAX_TITLE {
        return reject(format!(
            "`title` has {n} characters; at most {MAX_TITLE} (the prompt holds the rest)"
        ));
    }
    Ok(())
}

/// The first non-empty line of the prompt, its control characters made spaces, shortened to
/// 72 characters.
pub fn title_from_prompt(prompt: &str) -> String {
    let line: String = prompt
        .lines()
        .map(|l| l.trim().trim_start_matches('#').trim())
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .chars()
        .filter(|c| !crate::terminal::is_bidi_control(*c))
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let line = line.trim();
    if line.chars().count() > 72 {
        let mut s: String = line.chars().take(71).collect();
        s.push('…');
        s
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::parse(
            "agents:\n  a: {command: [x]}\n  b: {command: [y]}\nroles:\n  backend: [b, a]\ndefault_chain: [a, b]\n",
            "t",
        )
        .unwrap()
    }

    fn parse_ok(name: &str, text: &str) -> TaskSpec {
        let fields = parse_fields(name, text.as_bytes()).unwrap();
        accept("t".into(), fields, &cfg(), Path::new("/")).unwrap()
    }

    fn parse_err(name: &str, text: &str) -> String {
        match parse_fields(name, text.as_bytes()) {
            Err(e) => e.0,
            Ok(f) => accept("t".into(), f, &cfg(), Path::new("/")).unwrap_err().0,
        }
    }

    #[test]
    fn chain_selection_table() {
        let cases = [
            (r#"{"prompt":"p"}"#, vec!["a", "b"], "default"),
            (r#"{"prompt":"p","agent":"b"}"#, vec!["b"], "agent"),
            (
                r#"{"prompt":"p","chain":["b","a"]}"#,
                vec!["b", "a"],
                "chain",
            ),
            (
                r#"{"prompt":"p","role":"backend"}"#,
                vec!["b", "a"],
                "role:backend",
            ),
        ];
        for (json, chain, source) in cases {
            let spec = parse_ok("x.json", json);
            assert_eq!(spec.chain, chain, "{json}");
            assert_eq!(spec.chain_source, source, "{json}");
        }
    }

    #[test]
    fn markdown_front_matter_and_body() {
        let spec = parse_ok(
            "x.md",
            "---\nagent: b\npriority: 3\ntimeout: 2m\n---\n# Review auth\n\nLook for bugs.\n",
        );
        assert_eq!(spec.prompt, "# Review auth\n\nLook for bugs.");
        assert_eq!(spec.title, "Review auth");
        assert_eq!(spec.fields.priority, 3);
        assert_eq!(spec.chain, ["b"]);
        let plain = parse_ok("y.md", "just a prompt\n");
        assert_eq!(plain.prompt, "just a prompt");
        let crlf = parse_ok("z.md", "---\r\nagent: a\r\n---\r\nhello\r\n");
        assert_eq!(crlf.prompt, "hello");
        let bom = parse_ok("b.json", "\u{feff}{\"prompt\":\"p\"}");
        assert_eq!(bom.prompt, "p");
    }

    #[test]
    fn titles_are_one_bounded_line() {
        let long = format!(
            r#"{{"prompt":"p","title":"{}"}}"#,
            "t".repeat(MAX_TITLE + 1)
        );
        let err = parse_err("x.json", &long);
        assert!(
            err.contains("`title` has 201 characters; at most 200"),
            "expected the title's length refused, got {err}"
        );
        let fitting = format!(r#"{{"prompt":"p","title":"{}"}}"#, "t".repeat(MAX_TITLE));
        assert_eq!(
            parse_ok("x.json", &fitting).title.chars().count(),
            MAX_TITLE
        );
        // A title made from the prompt keeps no control character.
        assert_eq!(
            title_from_prompt("fix \u{1b}[31mthis\rnow\nmore"),
            "fix  [31mthis now"
        );
        // Nor a bidirectional override (text that reads in another order than written); a
        // title given with one is refused.
        assert_eq!(
            title_from_prompt("review \u{202E}txt.exe\u{202C} please"),
            "review txt.exe please"
        );
        let err = parse_err("x.json", r#"{"prompt":"p","title":"a \u202e b"}"#);
        assert!(
            err.contains("`title` holds a bidirectional formatting character (U+202E)"),
            "expected the override refused, got {err}"
        );
    }

    #[test]
    fn rejection_table() {
        let cases = [
            (
                "x.json",
                r#"{"prompt":"p","colour":"red"}"#,
                "unknown field `colour`, expected one of `id`",
            ),
            (
                "x.json",
                r#"{"prompt":"p","agnet":"a"}"#,
                "line 1 column 21: unknown field `agnet`; did you mean `agent`?",
            ),
            ("x.json", r#"{"prompt":"p""#, "line 1 column"),
            ("x.json", r#"{"prompt":5}"#, "`prompt`: invalid type"),
            (
                "x.json",
                r#"{"prompt":"p","files":"src/a.rs"}"#,
                "line 1 column 32: `files`: invalid type: string \"src/a.rs\", expected a sequence",
            ),
            ("x.json", r#"{"prompt":"p"} x"#, "trailing characters"),
            (
                "x.md",
                "---\nfiles: src/a.rs\n---\nbody\n",
                "invalid front matter at line 2 column 8: `files`: ",
            ),
            ("x.json", r#"{"agent":"a"}"#, "no prompt"),
            (
                "x.json",
                r#"{"prompt":"p","title":"one\ntwo"}"#,
                "`title` must be one line of text; it holds a control character (U+000A)",
            ),
            (
                "x.json",
                r#"{"prompt":"p","title":"red \u001b[31m"}"#,
                "`title` must be one line of text; it holds a control character (U+001B)",
            ),
            ("x.json", "", "empty"),
            (
                "x.json",
                r#"{"prompt":"p","agent":"zz"}"#,
                "unknown agent `zz`",
            ),
            (
                "x.json",
                r#"{"prompt":"p","role":"qa"}"#,
                "unknown role `qa`",
            ),
            (
                "x.json",
                r#"{"prompt":"p","agent":"a","role":"backend"}"#,
                "only one of",
            ),
            (
                "x.json",
                r#"{"prompt":"p","output":"../../x"}"#,
                "contains `..`",
            ),
            (
                "x.json",
                r#"{"prompt":"p","output":"/etc/x"}"#,
                "is absolute",
            ),
            (
                "x.json",
                r#"{"prompt":"p","output":"sub/"}"#,
                "`output` path `sub/` names a directory; name the file the result goes to (`sub/result.md`)",
            ),
            (
                "x.json",
                r#"{"prompt":"p","output":"a\nb.md"}"#,
                "`output` path \"a\\nb.md\" holds a control character",
            ),
            (
                "x.json",
                r#"{"prompt":"p","context":["../secret"]}"#,
                "contains `..`",
            ),
            // A file named twice (in any spelling) would only make the prompt bigger.
            (
                "x.json",
                r#"{"prompt":"p","files":["src/a.rs","./src//a.rs"]}"#,
                "`files` names `src/a.rs` twice; name each file once",
            ),
            (
                "x.json",
                r#"{"prompt":"p","context":["notes.md","notes.md"]}"#,
                "`context` names `notes.md` twice; name each file once",
            ),
            (
                "x.json",
                r#"{"prompt":"p","timeout":"soon"}"#,
                "invalid duration",
            ),
            ("x.json", r#"{"prompt":"p","chain":[]}"#, "`chain` is empty"),
            (
                "x.json",
                r#"{"prompt":"p","chain":["a",""]}"#,
                "an agent's name is empty (two commas in a row, or a trailing one?)",
            ),
            ("x.md", "---\nagent: a\n", "no closing `---`"),
            (
                "x.md",
                "---\nagent: [a\n---\nbody\n",
                "invalid front matter at line",
            ),
            ("x.md", "---\nwat: 1\n---\nbody\n", "unknown field `wat`"),
            ("x.md", "---\nprompt: a\n---\nbody\n", "given twice"),
            ("x.txt", "hello", "not a task file"),
        ];
        for (name, text, want) in cases {
            let err = parse_err(name, text);
            assert!(
                err.contains(want),
                "{name} {text:?}: got {err:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn invalid_utf8_is_rejected_with_offset() {
        let err = parse_fields("x.json", b"{\"prompt\":\"\xff\"}").unwrap_err();
        assert!(err.0.contains("offset 11"), "{}", err.0);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let text = format!("{{\"prompt\": {}", "[".repeat(10_000));
        let err = parse_fields("x.json", text.as_bytes()).unwrap_err();
        // No task field accepts arbitrary nesting: the parser stops at the first wrong type.
        assert!(err.0.contains("invalid task JSON"), "{}", err.0);
        let err = parse_fields("x.json", b"[1, 2]").unwrap_err();
        assert!(err.0.contains("must be one object"), "{}", err.0);
    }

    #[test]
    fn ids_from_stems_are_safe() {
        assert_eq!(id_from_stem("auth review"), "auth-review");
        assert_eq!(id_from_stem(".hidden"), "hidden");
        assert_eq!(
            id_from_stem("überprüfung"),
            "-berpr-fung".trim_start_matches('-')
        );
        assert_eq!(id_from_stem("---"), "task");
    }

    #[test]
    fn a_spec_is_written_with_its_prompt_once_and_read_back_whole() {
        let from_file = parse_ok(
            "x.json",
            r#"{"title": "login", "prompt": "fix the login bug"}"#,
        );
        let mut changed = from_file.clone();
        changed.prompt = "a prompt of its own".into();
        let mut no_prompt = from_file.clone();
        no_prompt.fields.prompt = None;
        no_prompt.prompt = String::new();
        // (spec, how often the prompt text appears in its JSON)
        let cases = [
            (&from_file, "fix the login bug", 1),
            (&changed, "a prompt of its own", 1),
            (&no_prompt, "\"prompt\"", 0),
        ];
        for (spec, text, times) in cases {
            let json = serde_json::to_string(spec).unwrap();
            assert_eq!(json.matches(text).count(), times, "`{text}` in {json}");
            let back: TaskSpec = serde_json::from_str(&json).unwrap();
            assert_eq!(&back, spec, "read back from {json}");
        }
        // An older record holds the prompt twice: still read the same.
        let old = r#"{"id":"t","title":"x","prompt":"p","chain":["a"],"chain_source":"default","fields":{"prompt":"p"}}"#;
        let back: TaskSpec = serde_json::from_str(old).unwrap();
        assert_eq!(
            (back.prompt.as_str(), back.fields.prompt.as_deref()),
            ("p", Some("p")),
            "the older form's prompt"
        );
    }
}
