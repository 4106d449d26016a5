//! Configuration: `.context/dirigent.yaml`, or the embedded default (`context/dirigent.yaml`)
//! when that file is absent. Raw YAML is parsed into a validated [`Config`] before anything runs:
//! presets are merged in, regexes compiled, every chain and role checked against the agents.
//! The daemon, `agents` and task parsing all read the same [`Config`].
//!
//! Each agent's entry is built and checked in [`agent`]; this file holds the rest: roles,
//! providers, budgets, models, the doors' settings.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::duration::Dur;
use crate::preset;

mod agent;
pub mod cluster;
pub mod notify;
mod read_all;
mod written;
mod yaml;

use written::{RawConfig, RawRole, RawRoleFull, RawWorktree};

pub use read_all::{Collected, from_yaml_collecting};
pub use yaml::{
    MAX_CONFIG_BYTES, YamlError, from_yaml, key_of, read_text, yaml_error, yaml_message,
};

use agent::build_agent;
pub use agent::{Agent, AgentError, ArgvValues, Retry};

/// [`Config::queue_in_memory`] unless set.
pub const DEFAULT_QUEUE_IN_MEMORY: usize = 64 << 20;

/// [`Config::max_output`] unless set.
pub const DEFAULT_MAX_OUTPUT: usize = 256 << 20;

/// [`Config::keep_runs`] unless set: a month of output to look back at.
pub const DEFAULT_KEEP_RUNS: Duration = Duration::from_secs(30 * 24 * 3600);

/// The shortest `keep_runs`: output must outlive the look a person takes at a failure.
pub const MIN_KEEP_RUNS: Duration = Duration::from_secs(3600);

/// A size the way the config writes one: `256MiB`, `512KiB`, `1000` (bytes).
pub fn shown_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{}GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// A size in bytes as written in the config: a whole number with an optional `KiB`, `MiB` or
/// `GiB` (`64MiB`, `512 KiB`, `1048576`).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let not_a_size = || format!("`{text}` is not a size: write a whole number, e.g. `64MiB`");
    if number.is_empty() {
        return Err(not_a_size());
    }
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`: write a number of bytes, or one with KiB, MiB or GiB (`64MiB`)"
            ));
        }
    };
    number
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(not_a_size)
}

/// What [`Config::source`] says of the embedded default.
pub const EMBEDDED_SOURCE: &str = "embedded default config";

/// The embedded default config, written out by `dirigent init`.
pub const DEFAULT_CONFIG: &str = include_str!("../../context/dirigent.yaml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read `{path}`: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("`{path}`: {message}")]
    Invalid { path: String, message: String },
}

/// Spending limits in US dollars; days are UTC days.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Budgets {
    /// All agents together, per day.
    pub daily: Option<f64>,
    /// Per agent, per day.
    pub agents: BTreeMap<String, f64>,
    /// Per task (a task's `budget_usd` overrides it; a workflow run's covers its tasks).
    pub task: Option<f64>,
}

/// Limits of one provider (`providers:`).
#[derive(Debug, Clone, Default)]
pub struct Provider {
    pub starts_per_minute: Option<u32>,
}

/// Roles that always exist: the built-in workflows use them, so they must run on any config.
/// A config that does not define one runs it on the default chain.
pub const STANDARD_ROLES: &[&str] = &[
    "planner", "proposer", "judge", "backend", "frontend", "reviewer", "bulk",
];

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    pub concurrency: usize,
    /// `None` = every installed agent, presets first in preference order.
    pub default_chain: Option<Vec<String>>,
    pub roles: BTreeMap<String, Vec<String>>,
    /// Roles whose chain is ordered by recent success rate and cost (`strategy: best`).
    pub best_roles: std::collections::BTreeSet<String>,
    pub agents: BTreeMap<String, Arc<Agent>>,
    pub on_escalate: Option<Vec<String>>,
    /// Time between SIGTERM and SIGKILL to a process group.
    pub kill_grace: Duration,
    /// How long to wait for stdout/stderr EOF after the agent exited before killing its group.
    pub leak_timeout: Duration,
    /// Safety-net inbox rescan interval (the watcher does the real work).
    pub inbox_rescan: Duration,
    /// The ledger file is rotated into a segment after this many events (read at start).
    pub ledger_segment_events: u64,
    /// Rotated segments kept as readable history once a snapshot covers them.
    pub ledger_keep_segments: usize,
    /// Start limits shared by all agents of a provider.
    pub providers: BTreeMap<String, Provider>,
    /// Resource groups and their capacity (`resources:`).
    pub resources: BTreeMap<String, f64>,
    /// Read from `.context/dirigent.yaml` (`false`: the embedded default, or text parsed
    /// without a file): advice says where a change goes.
    pub from_file: bool,
    /// USD per million tokens, by model, for CLIs that report tokens but no cost.
    pub prices: Arc<BTreeMap<String, crate::usage::Price>>,
    pub budgets: Budgets,
    /// Where notifications go (`notify:`).
    pub notify: Vec<notify::Destination>,
    /// Fleet mode (`cluster:`): tasks go through a NATS JetStream work queue. Read at start; a
    /// reload does not move the daemon into or out of a fleet.
    pub cluster: Option<cluster::Cluster>,
    /// Where the HTTP API listens (`http:`); `None` = no HTTP server unless `--http` is given.
    /// Read at start; a reload does not move the server.
    pub http: Option<std::net::SocketAddr>,
    /// A task whose attempts end `interrupted` (the daemon stopped or crashed while they ran)
    /// this many times in a row escalates instead of running again: an agent that brings the
    /// daemon down cannot make it crash-loop.
    pub max_interruptions: u32,
    /// How many tasks may be created from inside the attempts of one task and of the tasks
    /// those create in turn (counted per original task).
    pub max_spawned_tasks: u32,
    /// The most bytes the specs (prompts, mostly) of tasks taken in and not finished may hold
    /// in the daemon's memory; past it, task files wait in the inbox until some finish.
    pub queue_in_memory: usize,
    /// The most bytes an attempt may print (stdout and stderr together): past it, it is
    /// stopped and fails — an agent printing in a loop would otherwise fill the disk.
    pub max_output: usize,
    /// How long the run directory (prompts, captured output) of a finished task is kept
    /// before it is removed; `None`: for ever.
    pub keep_runs: Option<Duration>,
    /// `models:` entries that name what runs a model (an agent, `agent:model` or a role), for
    /// workflows' `model:` keys; the other entries are spawn-time model aliases of the agents.
    pub model_targets: BTreeMap<String, String>,
    /// Where attempts work unless a task, phase, role or agent says (see `workdir`).
    pub workdir: Option<crate::workdir::Workdir>,
    /// A role's own `workdir` and `verify`, for the tasks that name it.
    pub role_editing: BTreeMap<String, (Option<crate::workdir::Workdir>, Vec<Vec<String>>)>,
    /// Defaults for editing tasks: verify, merge, worktree setup (see `editing`).
    pub editing: crate::editing::Defaults,
    /// Where the config came from, for messages.
    pub source: String,
}

/// The editing defaults, checked: commands are argv, paths stay inside the workspace.
#[allow(clippy::too_many_arguments)]
fn editing_defaults(
    verify: Option<crate::editing::VerifyWritten>,
    verify_rounds: Option<u32>,
    expect_changes: Option<bool>,
    merge: Option<crate::editing::MergeMode>,
    merge_into: Option<String>,
    merge_strategy: Option<crate::editing::MergeStrategy>,
    on_conflict: Option<crate::editing::OnConflict>,
    carry_failed_changes: Option<bool>,
    keep_failed: Option<Dur>,
    worktree: RawWorktree,
) -> Result<crate::editing::Defaults, String> {
    let d = crate::editing::Defaults::default();
    crate::editing::check_verify_rounds(verify_rounds)?;
    if let Some(branch) = &merge_into {
        crate::git::check_target_name(branch)
            .map_err(|why| format!("`merge_into: {branch}`: {why}"))?;
    }
    let paths = |key: &str, list: Vec<String>| -> Result<Vec<String>, String> {
        list.iter()
            .map(|p| {
                crate::confined::workspace_path(key, p)
                    .map(|p| p.to_string())
                    .map_err(|e| format!("`worktree.{key}`: {e}"))
            })
            .collect()
    };
    if matches!(&worktree.setup, Some(argv) if argv.is_empty()) {
        return Err("`worktree.setup` is an empty command; give an argv such as [npm, ci]".into());
    }
    Ok(crate::editing::Defaults {
        verify: match verify {
            Some(v) => v.commands().map_err(|e| e.to_string())?,
            None => vec![],
        },
        verify_rounds: verify_rounds.unwrap_or(d.verify_rounds),
        expect_changes,
        merge: merge.unwrap_or(d.merge),
        merge_into,
        merge_strategy: merge_strategy.unwrap_or(d.merge_strategy),
        on_conflict: on_conflict.unwrap_or(d.on_conflict),
        carry_failed_changes: carry_failed_changes.unwrap_or(d.carry_failed_changes),
        keep_failed: keep_failed.map_or(d.keep_failed, |k| k.0),
        setup: crate::editing::Setup {
            copy: paths("copy", worktree.copy)?,
            link: paths("link", worktree.link)?,
            setup: worktree.setup,
        },
    })
}

impl Config {
    /// Loads `.context/dirigent.yaml`, or the embedded default when it does not exist.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_text(path).map(|(config, _)| config)
    }

    /// [`Config::load`], and the text it was made from (`None`: the embedded default), from
    /// one read: whoever later compares the file with the running config compares it with
    /// what that config was made from.
    pub fn load_with_text(path: &Path) -> Result<(Config, Option<String>), ConfigError> {
        let text = read_text(path)?;
        let config = match &text {
            Some(text) => Config {
                from_file: true,
                ..Self::parse(text, &path.display().to_string())?
            },
            None => Self::parse(DEFAULT_CONFIG, EMBEDDED_SOURCE)?,
        };
        Ok((config, text))
    }

    /// Parses and validates config text; `source` names it in error messages.
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: source.to_string(),
            message,
        };
        let mut raw: RawConfig = if text.trim().is_empty() {
            serde_saphyr::from_str("{}").map_err(|e| invalid(e.to_string()))?
        } else {
            // Every problem reading finds, not only the first, one per line.
            let read = from_yaml_collecting::<RawConfig>(text);
            match read.value {
                Some(raw) if read.problems.is_empty() => raw,
                _ => {
                    let lines: Vec<String> =
                        read.problems.iter().map(|e| yaml_error(e, text)).collect();
                    let more = match lines.len() {
                        0 | 1 => String::new(),
                        n => format!("\n({n} problems)"),
                    };
                    return Err(invalid(format!("{}{more}", lines.join("\n"))));
                }
            }
        };
        // Every problem found below, not only the first: a file with three mistakes is fixed
        // in one edit, not three reloads.
        let mut problems: Vec<String> = Vec::new();
        let concurrency = raw.concurrency.unwrap_or(4);
        if concurrency == 0 {
            problems.push("`concurrency` must be at least 1".into());
        }
        // `models:` holds two kinds of alias: a model name for another model (applied when an
        // agent spawns), and a model name for what runs it (an agent, `agent:model` or a role),
        // which workflows use (`model: claude-opus`).
        let runs_it = |value: &str| {
            let (agent, model) = split_entry(value);
            (raw.agents.contains_key(agent) && model != Some(""))
                || raw.roles.contains_key(value)
                || STANDARD_ROLES.contains(&value)
        };
        let (model_targets, spawn_aliases): (BTreeMap<_, _>, BTreeMap<_, _>) =
            std::mem::take(&mut raw.models)
                .into_iter()
                .partition(|(_, value)| runs_it(value));
        let aliases = Arc::new(spawn_aliases);
        for (group, capacity) in &raw.resources {
            if !capacity.is_finite() || *capacity <= 0.0 {
                problems.push(format!("resource group `{group}` needs a capacity above 0"));
            }
        }
        for (model, price) in &raw.prices {
            for (side, value) in [("input", price.input), ("output", price.output)] {
                if !value.is_finite() || value < 0.0 {
                    problems.push(format!(
                        "`prices.{model}.{side}` is {value}: a price is dollars per million tokens, a finite number of 0 or more"
                    ));
                }
            }
        }
        // The names written, also of an agent with a problem of its own: a chain naming it is
        // not "not configured" too.
        let declared: Vec<String> = raw.agents.keys().cloned().collect();
        let mut agents = BTreeMap::new();
        for (name, raw_agent) in raw.agents {
            let built = validate_name(&name)
                .map_err(|m| m.to_string())
                .and_then(|()| build_agent(&name, raw_agent).map_err(|m| m.to_string()));
            match built {
                Ok(mut agent) => {
                    agent.aliases = aliases.clone();
                    agents.insert(name, Arc::new(agent));
                }
                Err(m) => problems.push(format!("agent `{name}`: {m}")),
            }
        }
        for (name, agent) in &agents {
            for (group, amount) in &agent.resources {
                let Some(capacity) = raw.resources.get(group) else {
                    problems.push(format!(
                        "agent `{name}` uses resource group `{group}`, which is not declared under `resources:`"
                    ));
                    continue;
                };
                if !amount.is_finite() || *amount < 0.0 || amount > capacity {
                    problems.push(format!(
                        "agent `{name}` takes {amount} of `{group}`, which holds {capacity}: it could never run"
                    ));
                }
            }
        }
        let is_declared = |agent: &str| declared.iter().any(|d| d == agent);
        let not_configured = |agent: &str| {
            format!(
                "agent `{agent}`, which is not configured (agents: {}){}",
                list(declared.iter()),
                crate::suggest::hint(agent, declared.iter().map(String::as_str))
            )
        };
        let check_chain = |what: &str, chain: &[String], problems: &mut Vec<String>| {
            for entry in chain {
                let (agent, model) = split_entry(entry);
                if model == Some("") {
                    problems.push(format!("{what}: `{entry}` names no model after `:`"));
                } else if !is_declared(agent) {
                    problems.push(format!("{what} names {}", not_configured(agent)));
                }
            }
        };
        if let Some(chain) = &raw.default_chain {
            if chain.is_empty() {
                problems.push(
                    "`default_chain` is empty: list the agents to try in order, or leave it out to use every installed agent".into(),
                );
            }
            check_chain("`default_chain`", chain, &mut problems);
        }
        let mut roles = BTreeMap::new();
        let mut best_roles = std::collections::BTreeSet::new();
        let mut role_editing = BTreeMap::new();
        for (role, raw_role) in raw.roles {
            let chain = match raw_role {
                RawRole::Chain(chain) => chain,
                RawRole::Full(RawRoleFull {
                    agents,
                    strategy,
                    workdir,
                    verify,
                }) => {
                    if workdir.is_some() || verify.is_some() {
                        let verify = match verify.as_ref().map(|v| v.commands()) {
                            Some(Ok(commands)) => commands,
                            Some(Err(e)) => {
                                problems.push(format!("role `{role}`: {e}"));
                                vec![]
                            }
                            None => vec![],
                        };
                        role_editing.insert(role.clone(), (workdir, verify));
                    }
                    match strategy.as_deref() {
                        None | Some("order") => {}
                        Some("best") => {
                            best_roles.insert(role.clone());
                        }
                        Some(other) => problems.push(format!(
                            "role `{role}`: unknown strategy `{other}` (strategies: order, best){}",
                            crate::suggest::hint(other, ["order", "best"])
                        )),
                    }
                    agents
                }
            };
            roles.insert(role, chain);
        }
        for (role, chain) in &roles {
            if chain.is_empty() {
                problems.push(format!("role `{role}` has an empty chain"));
            }
            check_chain(&format!("role `{role}`"), chain, &mut problems);
        }
        if let Some(cmd) = &raw.on_escalate
            && cmd.first().is_none_or(|program| program.trim().is_empty())
        {
            problems.push("`on_escalate` must name a command".into());
        }
        let budgets = {
            let b = raw.budgets;
            for (agent, _) in b.agents.iter() {
                if !is_declared(agent) {
                    problems.push(format!("`budgets.agents` names {}", not_configured(agent)));
                }
            }
            let bad = |d: f64| !d.is_finite() || d < 0.0;
            let negative = b.daily.is_some_and(bad)
                || b.task.is_some_and(bad)
                || b.agents.values().any(|d| bad(*d));
            if negative {
                problems.push("budgets must be numbers of US dollars, 0 or more".into());
            }
            Budgets {
                daily: b.daily,
                agents: b.agents,
                task: b.task,
            }
        };
        let notify = notify::build(std::mem::take(&mut raw.notify)).unwrap_or_else(|m| {
            problems.push(m);
            Vec::new()
        });
        // A filter on an agent that does not exist would silence the destination for good.
        for d in &notify {
            if let Some(agent) = d.agents.iter().find(|a| !is_declared(split_entry(a).0)) {
                problems.push(format!(
                    "`notify` destination `{}` names {}",
                    d.name,
                    not_configured(agent)
                ));
            }
        }
        let cluster = match raw.cluster.take().map(cluster::build) {
            Some(Ok(c)) => Some(c),
            Some(Err(m)) => {
                problems.push(m);
                None
            }
            None => None,
        };
        let inbox_rescan = match raw.inbox_rescan {
            // A rescan on every turn of the loop would spin a core.
            Some(d) if d.0 < Duration::from_millis(100) => {
                problems.push("`inbox_rescan` must be at least 100ms".into());
                d.0
            }
            Some(d) => d.0,
            None => Duration::from_secs(30),
        };
        let ledger_segment_events = match raw.ledger_segment_events {
            Some(0) => {
                problems.push("`ledger_segment_events` must be at least 1".into());
                1
            }
            Some(n) => n,
            None => 100_000,
        };
        let http = match raw.http.as_deref().map(parse_listen) {
            None => None,
            Some(Ok(addr)) => Some(addr),
            Some(Err(m)) => {
                problems.push(format!("`http`: {m}"));
                None
            }
        };
        let max_interruptions = match raw.max_interruptions {
            Some(0) => {
                problems.push("`max_interruptions` must be at least 1".into());
                1
            }
            Some(n) => n,
            None => 5,
        };
        // A byte size of at least 1MiB, for `key`.
        let mut at_least_a_mib =
            |key: &str, text: Option<&str>, default: usize| match text.map(parse_bytes) {
                None => default,
                Some(Ok(n)) if n >= 1 << 20 => n,
                Some(Ok(_)) => {
                    problems.push(format!("`{key}` must be at least 1MiB"));
                    default
                }
                Some(Err(why)) => {
                    problems.push(format!("`{key}`: {why}"));
                    default
                }
            };
        let queue_in_memory = at_least_a_mib(
            "queue_in_memory",
            raw.queue_in_memory.as_deref(),
            DEFAULT_QUEUE_IN_MEMORY,
        );
        let max_output =
            at_least_a_mib("max_output", raw.max_output.as_deref(), DEFAULT_MAX_OUTPUT);
        let keep_runs = match raw.keep_runs.as_deref().map(str::trim) {
            None => Some(DEFAULT_KEEP_RUNS),
            Some("forever") => None,
            Some(text) => match crate::duration::parse(text) {
                Ok(d) if d >= MIN_KEEP_RUNS => Some(d),
                Ok(_) => {
                    problems.push("`keep_runs` must be at least 1h (or `forever`)".into());
                    None
                }
                Err(e) => {
                    problems.push(format!("`keep_runs`: {e}; or `forever`"));
                    None
                }
            },
        };
        let editing = editing_defaults(
            raw.verify,
            raw.verify_rounds,
            raw.expect_changes,
            raw.merge,
            raw.merge_into,
            raw.merge_strategy,
            raw.on_conflict,
            raw.carry_failed_changes,
            raw.keep_failed,
            raw.worktree,
        )
        .unwrap_or_else(|m| {
            problems.push(m);
            Default::default()
        });
        match problems.len() {
            0 => {}
            1 => return Err(invalid(problems.remove(0))),
            n => return Err(invalid(format!("{}\n({n} problems)", problems.join("\n")))),
        }
        Ok(Config {
            notify,
            cluster,
            concurrency,
            default_chain: raw.default_chain,
            model_targets,
            roles,
            best_roles,
            agents,
            on_escalate: raw.on_escalate,
            kill_grace: raw.kill_grace.map_or(Duration::from_secs(5), |d| d.0),
            leak_timeout: raw.leak_timeout.map_or(Duration::from_secs(2), |d| d.0),
            inbox_rescan,
            ledger_segment_events,
            ledger_keep_segments: raw.ledger_keep_segments.unwrap_or(2),
            providers: raw
                .providers
                .into_iter()
                .map(|(name, p)| {
                    (
                        name,
                        Provider {
                            starts_per_minute: p.starts_per_minute,
                        },
                    )
                })
                .collect(),
            prices: Arc::new(raw.prices),
            resources: raw.resources,
            from_file: false,
            budgets,
            http,
            max_interruptions,
            max_spawned_tasks: raw.max_spawned_tasks.unwrap_or(100),
            queue_in_memory,
            max_output,
            keep_runs,
            workdir: raw.workdir,
            role_editing,
            editing,
            source: source.to_string(),
        })
    }

    /// The agent a chain entry runs: the agent itself, or for `agent:model` a copy with that
    /// model, named after the entry (so its attempts and files say which model ran).
    pub fn agent_for(&self, entry: &str) -> Option<Arc<Agent>> {
        let (name, model) = split_entry(entry);
        let agent = self.agents.get(name)?;
        match model {
            None => Some(agent.clone()),
            Some(model) => {
                let mut variant = (**agent).clone();
                variant.name = entry.to_string();
                variant.model = Some(model.to_string());
                Some(Arc::new(variant))
            }
        }
    }

    /// `chain` with each agent's `fallback_model` inserted right after it, unless the entry
    /// already runs that model or the chain already has it.
    pub fn expand_fallbacks(&self, chain: Vec<String>) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(chain.len());
        for entry in chain {
            let (name, model) = split_entry(&entry);
            let fallback = self.agents.get(name).and_then(|a| {
                let fb = a.fallback_model.as_deref()?;
                let current = model.or(a.model.as_deref());
                (current != Some(fb)).then(|| format!("{name}:{fb}"))
            });
            out.push(entry);
            if let Some(fb) = fallback
                && !out.contains(&fb)
            {
                out.push(fb);
            }
        }
        out
    }

    /// The default chain as it stands now: the configured one, or every installed agent
    /// (presets first, in preference order, then the others by name).
    pub fn effective_default_chain(&self, cwd: &Path) -> Vec<String> {
        if let Some(chain) = &self.default_chain {
            return chain.clone();
        }
        let mut names: Vec<&String> = self.agents.keys().collect();
        let rank = |n: &str| {
            preset::names()
                .iter()
                .position(|p| *p == n)
                .unwrap_or(usize::MAX)
        };
        names.sort_by_key(|n| (rank(n), (*n).clone()));
        names
            .into_iter()
            .filter(|n| self.agents[*n].resolve(cwd).is_some())
            .cloned()
            .collect()
    }

    /// A role's chain: the configured one, or for a standard role the config does not define
    /// (see [`STANDARD_ROLES`]) the default chain. `None`: no such role.
    pub fn role_chain(&self, role: &str, cwd: &Path) -> Option<Vec<String>> {
        match self.roles.get(role) {
            Some(chain) => Some(chain.clone()),
            None if STANDARD_ROLES.contains(&role) => Some(self.effective_default_chain(cwd)),
            None => None,
        }
    }

    /// Every role a task or workflow may name: the configured ones and the standard ones.
    pub fn role_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.roles.keys().cloned().collect();
        for r in STANDARD_ROLES {
            if !self.roles.contains_key(*r) {
                names.push(r.to_string());
            }
        }
        names.sort();
        names
    }

    /// Roles and the default chain that mention `agent`, for `dirigent agents`.
    pub fn memberships(&self, agent: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self
            .default_chain
            .as_ref()
            .is_some_and(|c| c.iter().any(|a| a == agent))
        {
            out.push("default_chain".to_string());
        }
        for (role, chain) in &self.roles {
            if chain.iter().any(|a| a == agent) {
                out.push(format!("role:{role}"));
            }
        }
        out
    }
}

/// A chain entry is an agent, or `agent:model` to run that agent with another model.
pub fn split_entry(entry: &str) -> (&str, Option<&str>) {
    match entry.split_once(':') {
        Some((agent, model)) => (agent, Some(model)),
        None => (entry, None),
    }
}

/// Parses a listen address for the HTTP API: `127.0.0.1:8787`, `[::1]:8787`, or a bare port
/// (`8787`, meaning loopback).
pub fn parse_listen(text: &str) -> Result<std::net::SocketAddr, BadListen> {
    let text = text.trim();
    if let Ok(port) = text.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().map_err(|_| BadListen(text.to_string()))
}

/// A listen address that is none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a listen address; write `127.0.0.1:8787` (or just a port)")]
pub struct BadListen(pub String);

/// Agent, role and task ids share one alphabet, safe as file names.
pub fn validate_name(name: &str) -> Result<(), BadName> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(()) } else { Err(BadName) }
}

/// A name outside the alphabet agent, role and task ids share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "names use ASCII letters, digits, `-`, `_` and `.`, do not start with `.` or `-`, and have at most 128 characters"
)]
pub struct BadName;

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_read_in_bytes_or_binary_units() {
        let cases: &[(&str, Result<usize, &str>)] = &[
            ("1048576", Ok(1 << 20)),
            ("64MiB", Ok(64 << 20)),
            ("512 KiB", Ok(512 << 10)),
            ("2GiB", Ok(2 << 30)),
            ("10B", Ok(10)),
            ("64MB", Err("unknown unit `MB`")),
            ("MiB", Err("is not a size")),
            ("-1MiB", Err("is not a size")),
            ("99999999999999999999GiB", Err("is not a size")),
        ];
        for (text, want) in cases {
            match (parse_bytes(text), want) {
                (Ok(n), Ok(w)) => assert_eq!(n, *w, "`{text}`"),
                (Err(e), Err(w)) => assert!(e.contains(w), "`{text}`: expected `{w}` in `{e}`"),
                (got, _) => panic!("`{text}`: expected {want:?}, got {got:?}"),
            }
        }
    }

    /// A file with several mistakes gets them all in one answer, each once: fixing one does
    /// not reveal the next at the following reload.
    #[test]
    fn every_problem_of_a_file_is_reported_at_once() {
        let text = "agents:\n  echo: { command: [/bin/echo] }\n  bad name: { command: [/bin/echo] }\ndefault_chain: [ecoh]\nroles:\n  review: [echo, othr]\n  plan: { agents: [bad name], strategy: bets }\nbudgets: { agents: { ech: 1 } }\nmax_output: 1KiB\nmax_interruptions: 0\nconcurrency: 0\n";
        let Err(ConfigError::Invalid { message, .. }) = Config::parse(text, "f") else {
            panic!("expected the file refused");
        };
        let want = [
            "agent `bad name`: names use ASCII letters",
            "`default_chain` names agent `ecoh`, which is not configured (agents: bad name, echo); did you mean `echo`?",
            "role `plan`: unknown strategy `bets` (strategies: order, best); did you mean `best`?",
            "role `review` names agent `othr`, which is not configured",
            "`budgets.agents` names agent `ech`, which is not configured",
            "`max_interruptions` must be at least 1",
            "`max_output` must be at least 1MiB",
            "`concurrency` must be at least 1",
            "(8 problems)",
        ];
        let lines: Vec<&str> = message.lines().collect();
        assert_eq!(lines.len(), want.len(), "one line per problem: {message}");
        for w in want {
            assert!(
                lines.iter().any(|l| l.starts_with(w)),
                "expected a line starting `{w}` in:\n{message}"
            );
        }
        // An agent with a problem of its own is not also "not configured" where it is named.
        assert!(
            !message.contains("`bad name`, which is not configured"),
            "{message}"
        );
    }

    /// A value of the wrong kind is shown, as written.
    #[test]
    fn a_value_of_the_wrong_kind_is_shown() {
        let cases = [
            ("concurrency: many\n", "; got `many`"),
            ("concurrency: -1 # no\n", "; got `-1`"),
            ("concurrency: \"4 x\"\n", "; got `\"4 x\"`"),
            (
                "budgets: { daily: lots }\n",
                "`budgets.daily`: expected a number; got `lots`",
            ),
            (
                "agents: { e: { command: [x], max_parallel: zwölf } }\n",
                "; got `zwölf`",
            ),
        ];
        for (text, want) in cases {
            let Err(ConfigError::Invalid { message, .. }) = Config::parse(text, "f") else {
                panic!("expected `{text}` refused");
            };
            assert!(
                message.ends_with(want),
                "`{text}`: expected it to end `{want}`, got {message}"
            );
        }
    }

    #[test]
    fn embedded_default_is_valid_and_knows_every_preset() {
        let cfg = Config::parse(DEFAULT_CONFIG, "embedded").unwrap();
        for p in preset::names() {
            assert!(
                cfg.agents.contains_key(p),
                "{p} missing from the default config"
            );
        }
        assert!(
            cfg.default_chain.is_none(),
            "default chain is the installed subset"
        );
    }

    #[test]
    fn argv_expands_placeholders_without_reexpanding_the_prompt() {
        let cfg = Config::parse(
            "agents:\n  a:\n    command: [\"tool\", \"--p={prompt}\", \"{model}\"]\n    model: m1\n    prompt: arg\n",
            "t",
        )
        .unwrap();
        let argv = cfg.agents["a"].argv(&ArgvValues {
            prompt: "say {model} $(rm -rf /)",
            prompt_file: "/x",
            task_id: "t1",
            workspace: "/w",
        });
        assert_eq!(argv, ["tool", "--p=say {model} $(rm -rf /)", "m1"]);
    }

    #[test]
    fn preset_model_args_appear_only_with_a_model() {
        let cfg = Config::parse(
            "agents:\n  g: {preset: gemini}\n  h: {preset: gemini, model: x}\n",
            "t",
        )
        .unwrap();
        let v = ArgvValues {
            prompt: "p",
            prompt_file: "",
            task_id: "",
            workspace: "",
        };
        assert_eq!(
            cfg.agents["g"].argv(&v),
            ["gemini", "-p", "p", "-o", "json", "--yolo"]
        );
        assert_eq!(
            cfg.agents["h"].argv(&v),
            ["gemini", "-p", "p", "-o", "json", "--yolo", "-m", "x"]
        );
    }

    #[test]
    fn every_problem_reading_finds_is_reported_not_only_the_first() {
        let text = "concurrency: many\nbogus: 1\nagents:\n  x:\n    command: [a]\n    timeout: soon\n    colour: red\n";
        let err = Config::parse(text, "t").unwrap_err().to_string();
        assert_eq!(
            err.lines()
                .map(|l| l.split(": ").next().unwrap_or(""))
                .collect::<Vec<_>>(),
            [
                "`t`",
                "line 2 column 1",
                "line 6 column 14",
                "line 7 column 5",
                "(4 problems)"
            ],
            "expected the four problems in order, each with its position: {err}"
        );
        assert!(
            err.starts_with("`t`: line 1 column 14: `concurrency`: expected a whole number")
                && err.contains("`agents.x.timeout`: invalid duration `soon`")
                && err.contains("unknown field `colour`"),
            "expected each problem in words: {err}"
        );
    }

    /// What reading steps over must not invent problems nor lose the ones after it.
    #[test]
    fn stepping_over_a_problem_invents_none_and_loses_none() {
        let cases: [(&str, &[&str], &str); 4] = [
            // A map whose every key is wrong is not also "not a map" (its keys, stepped over,
            // leave it empty).
            (
                "agents:\n  e:\n    command: \"/x\"\n    timeout: forever\ndefault_chain: [e]\n",
                &["`agents.e.command`", "`agents.e.timeout`", "(2 problems)"],
                "expected a map",
            ),
            // A list at the key's own indent is the unknown key's value, not a problem.
            (
                "bogus:\n- a\n- b\nconcurrency: x\n",
                &["unknown field `bogus`", "line 4 column 14: `concurrency`"],
                "a problem in the list's lines",
            ),
            // An item of a list of the wrong kind: the items after it are read on.
            (
                "agents:\n  a:\n    command: [x]\n    success:\n      exit_codes: [zero]\n    colour: 1\n",
                &["`agents.a.success.exit_codes[0]`", "unknown field `colour`"],
                "-",
            ),
            // An anchor is not blanked (its aliases would dangle): reading stops there.
            (
                "agents:\n  a:\n    command: [x]\n    timeout: &t soon\n  b:\n    command: [y]\n    timeout: *t\n",
                &["invalid duration `soon`"],
                "anchor",
            ),
        ];
        for (text, wanted, never) in cases {
            let err = Config::parse(text, "t").unwrap_err().to_string();
            for w in wanted {
                assert!(err.contains(w), "{text:?}: expected {w:?} in:\n{err}");
            }
            assert!(
                !err.contains(never),
                "{text:?}: expected no {never:?} in:\n{err}"
            );
        }
    }

    #[test]
    fn config_errors_name_the_problem() {
        let cases = [
            ("concurrency: 0\n", "`concurrency` must be at least 1"),
            ("bogus: 1\n", "bogus"),
            ("agents:\n  x: {}\n", "needs a `command`"),
            ("agents:\n  x: {preset: nope}\n", "unknown preset `nope`"),
            (
                "default_chain: [ghost]\n",
                "agent `ghost`, which is not configured",
            ),
            (
                "agents:\n  editor: {command: [a]}\nroles:\n  coder: [editr]\n",
                "role `coder` names agent `editr`, which is not configured (agents: editor); did you mean `editor`?",
            ),
            (
                "agents:\n  x: {command: [a], prompt: arg}\n",
                "needs `{prompt}`",
            ),
            (
                "agents:\n  x: {command: [a], success: {fail_patterns: [\"(\"]}}\n",
                "fail pattern",
            ),
            (
                "agents:\n  x: {command: [a], timeout: soon}\n",
                "invalid duration",
            ),
            ("max_output: 10KiB\n", "`max_output` must be at least 1MiB"),
            (
                "verify_rounds: 11\n",
                "`verify_rounds` is 11; at most 10 (each round runs the agent again in the same slot)",
            ),
            (
                "agents:\n  x: {command: [a], timeout: 50ms}\n",
                "`timeout` is 50ms; it must be at least 100ms (an agent does not even start in less)",
            ),
            (
                "agents:\n  x: {command: [a], idle_timeout: 1ms}\n",
                "`idle_timeout` is 1ms; it must be at least 100ms (an agent does not even start in less); `0` turns it off",
            ),
            (
                "agents:\n  x: {command: [a], timeout: 1ns}\n",
                "invalid duration `1ns` (dirigent counts time in whole milliseconds)",
            ),
            ("roles:\n  r: []\n", "empty chain"),
            // Values of the wrong shape, in the reader's words rather than the parser's.
            (
                "concurrency: [1]\n",
                "line 1 column 14: `concurrency`: expected one value (a word or a number), not a list or a map",
            ),
            (
                "concurrency: two\n",
                "line 1 column 14: `concurrency`: expected a whole number, not negative and not too large",
            ),
            (
                "default_chain: claude\n",
                "line 1 column 16: `default_chain`: expected a list: `[a, b]`, or one `- item` per line",
            ),
            (
                "budgets: {daily: lots}\n",
                "line 1 column 18: `budgets.daily`: expected a number",
            ),
            (
                "concurrency: 99999999999999999999999\n",
                "`concurrency`: expected a whole number, not negative and not too large",
            ),
            (
                "agents:\n  x: {command: [a], prompt: [arg]}\n",
                "`agents.x.prompt`: expected one word, not a list",
            ),
            (
                "budgets: 5\n",
                "line 1 column 10: `budgets`: expected a map: `key: value` lines, or `{key: value}`",
            ),
            (
                "prices:\n  opus: {input: -15, output: 75}\n",
                "`prices.opus.input` is -15: a price is dollars per million tokens, a finite number of 0 or more",
            ),
            (
                "prices:\n  opus: {input: 15, output: .nan}\n",
                "`prices.opus.output` is NaN",
            ),
            (
                "roles:\n  r: {chain: [a]}\n",
                "line 2 column 7: in `roles.r`: unknown field `chain`, expected one of agents, strategy",
            ),
            ("roles:\n  r: {strategy: best}\n", "missing field `agents`"),
            (
                "roles:\n  r: claude\n",
                "expected a role: a list of agents (`[claude, gemini]`) or a map",
            ),
            // A value of the wrong type names its key.
            ("concurrency: [4]\n", "line 1 column 14: `concurrency`: "),
            (
                "agents:\n  x: {command: [a], model: [m, n]}\n",
                "`agents.x.model`: ",
            ),
            ("on_escalate: notify\n", "`on_escalate`: "),
            (
                "agents:\n  x: {command: [a]}\n  x: {command: [b]}\n",
                "`x` is a duplicate key here: write each key once",
            ),
            (
                "default_chain: []\n",
                "`default_chain` is empty: list the agents",
            ),
            (
                "agents:\n  x: {command: [a, \"{prompt}\"], prompt: arg}\nnotify: [{command: [page], agents: [nope]}]\n",
                "`notify` destination `command-1` names agent `nope`, which is not configured (agents: x)",
            ),
            ("on_escalate: [\"\"]\n", "`on_escalate` must name a command"),
            (
                "notify: [{command: \"page-me.sh\"}]\n",
                "write `command: [\"page-me.sh\"]`",
            ),
        ];
        for (text, want) in cases {
            let err = Config::parse(text, "cfg.yaml").unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.starts_with("`cfg.yaml`"), "{err}");
        }
    }
}
