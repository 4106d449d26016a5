//! One agent of the config: its entry as written ([`RawAgent`]), what it becomes once its
//! preset is merged in and every field checked ([`Agent`], built by [`build_agent`]), and what
//! an agent knows how to do with itself — its argv for a prompt, whether it is installed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use crate::class::Class;
use crate::duration::Dur;
use crate::preset::{self, OutputFormat, Preset, PromptMode};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default)]
    delay: Option<Dur>,
    #[serde(default)]
    factor: Option<f64>,
    #[serde(default)]
    max_delay: Option<Dur>,
    #[serde(default)]
    jitter: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    #[serde(default)]
    preset: Option<String>,
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    prompt: Option<PromptMode>,
    #[serde(default)]
    output: Option<OutputFormat>,
    #[serde(default)]
    stagger: Option<Dur>,
    #[serde(default)]
    max_parallel: Option<usize>,
    #[serde(default)]
    timeout: Option<Dur>,
    #[serde(default)]
    idle_timeout: Option<Dur>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    success: RawSuccess,
    /// Extra failure patterns by class (`auth`, `rate_limit`, `network`, `tool_error`), checked
    /// before the preset's.
    #[serde(default)]
    patterns: BTreeMap<String, Vec<String>>,
    /// Patterns that stop a running attempt as soon as they appear, by class (`auth`,
    /// `network`, `rate_limit`, `tool_error`), checked before the preset's.
    #[serde(default)]
    fatal_patterns: BTreeMap<String, Vec<String>>,
    /// Lines of a `network` fatal pattern before the attempt is stopped.
    #[serde(default)]
    fatal_repeats: Option<u32>,
    /// Check for the preset CLI's credentials before each attempt (default true).
    #[serde(default)]
    preflight: Option<bool>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    cooldown: Option<Dur>,
    #[serde(default)]
    retry: Option<RawRetry>,
    #[serde(default)]
    starts_per_minute: Option<u32>,
    #[serde(default)]
    fallback_model: Option<String>,
    /// What one attempt takes from resource groups: `{local-gpu: 20}`.
    #[serde(default)]
    resources: BTreeMap<String, f64>,
    /// A state directory per concurrent instance (claude, gemini, codex, opencode presets).
    #[serde(default)]
    isolate: bool,
    /// Where its attempts work (`worktree` or `shared`), unless the task says.
    #[serde(default)]
    workdir: Option<crate::workdir::Workdir>,
    /// Checks its work in the worktree, unless the task gives its own.
    #[serde(default)]
    verify: Option<crate::editing::VerifyWritten>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSuccess {
    #[serde(default)]
    exit_codes: Option<Vec<i32>>,
    #[serde(default)]
    require_output: Option<bool>,
    #[serde(default)]
    fail_patterns: Vec<String>,
}

/// A validated agent: everything needed to spawn and judge one attempt.
#[derive(Debug, Clone)]
pub struct Agent {
    pub name: String,
    pub preset: Option<&'static Preset>,
    /// argv template (program first); placeholders are expanded by [`Agent::argv`].
    pub command: Vec<String>,
    pub model: Option<String>,
    pub prompt: PromptMode,
    pub format: OutputFormat,
    pub stagger: Duration,
    pub max_parallel: Option<usize>,
    pub timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub env: Vec<(String, String)>,
    pub exit_codes: Vec<i32>,
    pub require_output: bool,
    pub fail_patterns: Vec<Regex>,
    pub classified: Vec<(Class, Regex)>,
    /// What stops an attempt while it runs (see `watch`).
    pub fatal: crate::watch::FatalRules,
    /// Whether a preset's credentials are looked for before each attempt (see `credentials`).
    pub preflight: bool,
    pub exit_classes: Vec<(i32, Class)>,
    /// The account it runs on: agents that share one share rate-limit cooldowns, an auth
    /// failure and `providers:` start limits. Default: the preset's name, else the agent's.
    pub provider: String,
    /// How long a rate-limited provider rests when the CLI did not say when it resets.
    pub cooldown: Duration,
    /// Retries of the same agent after a `network` failure, before the chain moves on.
    pub retry: Retry,
    /// At most this many starts of this agent in any 60 s.
    pub starts_per_minute: Option<u32>,
    /// Tried with the same agent before the chain moves on (`opus` → `sonnet`).
    pub fallback_model: Option<String>,
    /// The config's model aliases (`models:`), applied to `{model}` when spawning.
    pub aliases: Arc<BTreeMap<String, String>>,
    /// What one attempt takes from each resource group while it runs.
    pub resources: BTreeMap<String, f64>,
    /// Each concurrent instance gets its own state directory (see `isolation`).
    pub isolate: bool,
    /// Where its attempts work, unless the task says (see `workdir`).
    pub workdir: Option<crate::workdir::Workdir>,
    /// Its `verify` commands (see `editing`).
    pub verify: Vec<Vec<String>>,
}

/// Backoff for retrying one agent: `delay × factor^n`, at most `max_delay`, ± `jitter`.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    pub attempts: u32,
    pub delay: Duration,
    pub factor: f64,
    pub max_delay: Duration,
    pub jitter: f64,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 2,
            delay: Duration::from_secs(5),
            factor: 2.0,
            max_delay: Duration::from_secs(60),
            jitter: 0.2,
        }
    }
}

impl Retry {
    /// The wait before retry number `n` (0-based); `spread` in [0, 1) picks the jitter.
    pub fn delay_for(&self, n: u32, spread: f64) -> Duration {
        let base = self.delay.as_secs_f64() * self.factor.powi(n.min(64) as i32);
        let base = base.min(self.max_delay.as_secs_f64());
        let jittered = base * (1.0 + self.jitter * (2.0 * spread - 1.0));
        Duration::try_from_secs_f64(jittered.max(0.0)).unwrap_or(self.max_delay)
    }
}

/// Values substituted into an agent's argv template.
pub struct ArgvValues<'a> {
    pub prompt: &'a str,
    pub prompt_file: &'a str,
    pub task_id: &'a str,
    pub workspace: &'a str,
}

impl Agent {
    pub fn program(&self) -> &str {
        &self.command[0]
    }

    /// Resolves the program on PATH (or as a path), `None` when it is not installed.
    pub fn resolve(&self, cwd: &Path) -> Option<std::path::PathBuf> {
        let program = self.program();
        if program.contains('/') {
            let path = cwd.join(program);
            return is_executable(&path).then_some(path);
        }
        which::which(program).ok()
    }

    /// Expands the argv template. Each placeholder stays inside its own argv element: nothing
    /// here ever passes through a shell.
    pub fn argv(&self, v: &ArgvValues<'_>) -> Vec<String> {
        let model_args: &[&str] = self.preset.map(|p| p.model_args).unwrap_or(&[]);
        let model = self.resolved_model();
        let mut out = Vec::with_capacity(self.command.len() + 2);
        for part in &self.command {
            if part == "{model_args}" {
                if let Some(model) = model {
                    out.extend(model_args.iter().map(|a| a.replace("{model}", model)));
                }
                continue;
            }
            out.push(expand(part, model, v));
        }
        out
    }

    /// The model after the config's aliases (`models:`) are applied.
    pub fn resolved_model(&self) -> Option<&str> {
        let model = self.model.as_deref()?;
        Some(self.aliases.get(model).map_or(model, String::as_str))
    }
}

fn expand(part: &str, model: Option<&str>, v: &ArgvValues<'_>) -> String {
    if !part.contains('{') {
        return part.to_string();
    }
    // One pass so that text substituted in (the prompt) is never expanded again.
    let mut out = String::with_capacity(part.len());
    let mut rest = part;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let Some(end) = after.find('}') else {
            out.push_str(after);
            return out;
        };
        let key = &after[1..end];
        match key {
            "prompt" => out.push_str(v.prompt),
            "prompt_file" => out.push_str(v.prompt_file),
            "task_id" => out.push_str(v.task_id),
            "workspace" => out.push_str(v.workspace),
            "model" => out.push_str(model.unwrap_or("")),
            _ => out.push_str(&after[..=end]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// What is wrong with one agent's entry (the config error names the agent).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("unknown preset `{name}` (presets: {known})")]
    UnknownPreset { name: String, known: String },
    #[error("give either `preset` or `command`, not both (use `args` to add flags to a preset)")]
    PresetAndCommand,
    #[error("needs a `command` (an argv array) or a `preset`")]
    NoCommand,
    #[error("`command` must start with the program to run")]
    EmptyCommand,
    /// `prompt: MODE` without the placeholder that mode fills.
    #[error("`prompt: {0}` needs `{1}` in the command")]
    NoPlaceholder(&'static str, &'static str),
    #[error("the command uses `{{model}}` but no `model` is set")]
    NoModel,
    #[error("{what} `{pattern}`: {cause}")]
    Pattern {
        what: &'static str,
        pattern: String,
        cause: regex::Error,
    },
    #[error(
        "`{key}` has an unknown class `{class}` (classes: auth, rate_limit, network, tool_error)"
    )]
    UnknownClass { key: &'static str, class: String },
    #[error("`{0}` must be at least 1")]
    Zero(&'static str),
    #[error(transparent)]
    Verify(crate::editing::BadVerify),
    #[error("`retry.factor` must be between 1 and 10")]
    RetryFactor,
    #[error("`retry.jitter` must be between 0 and 1 (a fraction of the delay)")]
    RetryJitter,
    #[error("`{key}` is {given}; it must be at least {min} (an agent does not even start in less){off}", given = crate::duration::short(*given), min = crate::duration::short(crate::duration::MIN_TIMEOUT), off = if *key == "idle_timeout" { "; `0` turns it off" } else { "" })]
    ShortTimeout { key: &'static str, given: Duration },
    #[error("`isolate` works with the claude, gemini, codex and opencode presets")]
    CannotIsolate,
}

pub(super) fn build_agent(name: &str, raw: RawAgent) -> Result<Agent, AgentError> {
    let preset = match &raw.preset {
        Some(p) => Some(preset::find(p).ok_or_else(|| AgentError::UnknownPreset {
            name: p.clone(),
            known: preset::names().join(", "),
        })?),
        None => None,
    };
    if preset.is_some() && raw.command.is_some() {
        return Err(AgentError::PresetAndCommand);
    }
    let mut command: Vec<String> = match (&raw.command, preset) {
        (Some(cmd), _) => cmd.clone(),
        (None, Some(p)) => p.command.iter().map(|s| s.to_string()).collect(),
        (None, None) => {
            // An agent named like a preset gets that preset implicitly.
            return match preset::find(name) {
                Some(_) => build_agent(
                    name,
                    RawAgent {
                        preset: Some(name.to_string()),
                        ..raw
                    },
                ),
                None => Err(AgentError::NoCommand),
            };
        }
    };
    if command.is_empty() || command[0].is_empty() {
        return Err(AgentError::EmptyCommand);
    }
    command.extend(raw.args.iter().cloned());
    let prompt = raw
        .prompt
        .or(preset.map(|p| p.prompt))
        .unwrap_or(PromptMode::Stdin);
    let has = |ph: &str| command.iter().any(|c| c.contains(ph));
    match prompt {
        PromptMode::Arg if !has("{prompt}") => {
            return Err(AgentError::NoPlaceholder("arg", "{prompt}"));
        }
        PromptMode::File if !has("{prompt_file}") => {
            return Err(AgentError::NoPlaceholder("file", "{prompt_file}"));
        }
        _ => {}
    }
    let model = raw
        .model
        .or_else(|| preset.and_then(|p| p.default_model).map(str::to_string));
    if has("{model}") && model.is_none() {
        return Err(AgentError::NoModel);
    }
    let mut env: Vec<(String, String)> = preset
        .map(|p| {
            p.env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    for (k, v) in raw.env {
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    }
    let mut fail_patterns = Vec::new();
    for pat in &raw.success.fail_patterns {
        fail_patterns.push(Regex::new(pat).map_err(|cause| AgentError::Pattern {
            what: "fail pattern",
            pattern: pat.clone(),
            cause,
        })?);
    }
    let mut classified = by_class("patterns", &raw.patterns)?;
    if let Some(p) = preset {
        classified.extend(
            p.classified
                .iter()
                .map(|(c, re)| (*c, Regex::new(re).expect("preset regexes are tested"))),
        );
    }
    let mut fatal_patterns = by_class("fatal_patterns", &raw.fatal_patterns)?;
    if let Some(p) = preset {
        fatal_patterns.extend(
            p.fatal
                .iter()
                .map(|(c, re)| (*c, Regex::new(re).expect("preset regexes are tested"))),
        );
    }
    let fatal = crate::watch::FatalRules {
        patterns: fatal_patterns,
        repeats: match raw.fatal_repeats {
            Some(0) => return Err(AgentError::Zero("fatal_repeats")),
            Some(n) => n.min(1000),
            None => preset.map_or(3, |p| p.fatal_repeats),
        },
    };
    let retry = {
        let d = Retry::default();
        let r = raw.retry.unwrap_or_default();
        let retry = Retry {
            attempts: r.attempts.unwrap_or(d.attempts),
            delay: r.delay.map_or(d.delay, |x| x.0),
            factor: r.factor.unwrap_or(d.factor),
            max_delay: r.max_delay.map_or(d.max_delay, |x| x.0),
            jitter: r.jitter.unwrap_or(d.jitter),
        };
        if !(1.0..=10.0).contains(&retry.factor) {
            return Err(AgentError::RetryFactor);
        }
        if !(0.0..=1.0).contains(&retry.jitter) {
            return Err(AgentError::RetryJitter);
        }
        retry
    };
    if raw.max_parallel == Some(0) {
        return Err(AgentError::Zero("max_parallel"));
    }
    let timeout = raw
        .timeout
        .map(|d| d.0)
        .or(preset.map(|p| p.timeout))
        .unwrap_or(Duration::from_secs(30 * 60));
    if timeout < crate::duration::MIN_TIMEOUT {
        return Err(AgentError::ShortTimeout {
            key: "timeout",
            given: timeout,
        });
    }
    if let Some(given) = raw
        .idle_timeout
        .map(|d| d.0)
        .filter(|d| !d.is_zero() && *d < crate::duration::MIN_TIMEOUT)
    {
        return Err(AgentError::ShortTimeout {
            key: "idle_timeout",
            given,
        });
    }
    Ok(Agent {
        name: name.to_string(),
        preset,
        command,
        model,
        prompt,
        format: raw
            .output
            .or(preset.map(|p| p.format))
            .unwrap_or(OutputFormat::Plain),
        stagger: raw
            .stagger
            .map(|d| d.0)
            .or(preset.map(|p| p.stagger))
            .unwrap_or_default(),
        max_parallel: raw.max_parallel,
        timeout,
        idle_timeout: raw
            .idle_timeout
            .map(|d| d.0)
            .or(preset.and_then(|p| p.idle_timeout))
            .filter(|d| !d.is_zero()),
        env,
        exit_codes: raw.success.exit_codes.unwrap_or_else(|| vec![0]),
        require_output: raw.success.require_output.unwrap_or(true),
        fail_patterns,
        classified,
        fatal,
        preflight: raw.preflight.unwrap_or(true),
        exit_classes: preset.map(|p| p.exit_classes.to_vec()).unwrap_or_default(),
        fallback_model: raw.fallback_model,
        aliases: Arc::default(),
        resources: raw.resources,
        workdir: raw.workdir,
        verify: match &raw.verify {
            Some(v) => v.commands().map_err(AgentError::Verify)?,
            None => vec![],
        },
        isolate: match (raw.isolate, preset) {
            (false, _) => false,
            (true, Some(p)) if crate::isolation::recipe(p.name).is_some() => true,
            (true, _) => {
                return Err(AgentError::CannotIsolate);
            }
        },
        provider: raw
            .provider
            .or(preset.map(|p| p.name.to_string()))
            .unwrap_or_else(|| name.to_string()),
        cooldown: raw.cooldown.map_or(Duration::from_secs(10 * 60), |d| d.0),
        retry,
        starts_per_minute: match raw.starts_per_minute {
            Some(0) => return Err(AgentError::Zero("starts_per_minute")),
            n => n,
        },
    })
}

/// Compiles `key:`'s patterns by class (`patterns:`, `fatal_patterns:`).
fn by_class(
    key: &'static str,
    raw: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<(Class, Regex)>, AgentError> {
    let mut out = Vec::new();
    for (class_name, pats) in raw {
        let class = match class_name.as_str() {
            "auth" => Class::Auth,
            "rate_limit" => Class::RateLimit,
            "network" => Class::Network,
            "tool_error" => Class::ToolError,
            other => {
                return Err(AgentError::UnknownClass {
                    key,
                    class: other.to_string(),
                });
            }
        };
        for pat in pats {
            out.push((
                class,
                Regex::new(pat).map_err(|cause| AgentError::Pattern {
                    what: "pattern",
                    pattern: pat.clone(),
                    cause,
                })?,
            ));
        }
    }
    Ok(out)
}
