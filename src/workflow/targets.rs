//! Who runs a workflow step. A workflow names its runners the way its author thinks of them —
//! `agent: claude`, `role: reviewer`, the `model: claude-opus` users write, an ensemble's
//! `models: [...]`, `judge:` and `routing:` values — and this module turns each name into what
//! the engine can start: one agent (possibly `agent:model`), or a role's fallback chain.
//!
//! The lookup order, first match wins (documented in docs/workflows.md):
//! 1. an agent of the config (`claude`);
//! 2. an `agent:model` entry whose agent is configured (`claude:opus`);
//! 3. a role: one the config defines, or one of the [`STANDARD_ROLES`] the built-in workflows
//!    use, which runs on the default chain when the config does not define it;
//! 4. a `models:` alias of the config whose value resolves by 1–3
//!    (`models: {claude-opus: "claude:opus"}`).
//!
//! [`resolve`] is pure; [`diversify`] spreads an ensemble's proposers over different agents.

use crate::config::Config;

pub use crate::config::STANDARD_ROLES;

/// What a name resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One agent; the text may be `agent:model`.
    Agent(String),
    /// A role the config defines: its chain.
    Role(String),
    /// A standard role the config does not define: the default chain.
    DefaultChain { role: String },
}

impl Target {
    /// The task fields that route a child task here: (`agent`, `role`).
    pub fn fields(&self) -> (Option<String>, Option<String>) {
        match self {
            Target::Agent(a) => (Some(a.clone()), None),
            Target::Role(r) | Target::DefaultChain { role: r } => (None, Some(r.clone())),
        }
    }
}

/// Which kinds of name a key accepts: `agent:` only agents, `role:` only roles, the others
/// anything in the lookup order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepts {
    Agent,
    Role,
    Any,
}

/// A resolved name and, for `workflow validate`, how it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub target: Target,
    pub how: String,
}

/// Resolves `name` in the lookup order; the error says why nothing matched.
pub fn resolve(name: &str, accepts: Accepts, config: &Config) -> Result<Resolved, Unresolved> {
    if let Some(found) = direct(name, accepts, config) {
        return Ok(found);
    }
    if accepts == Accepts::Any
        && let Some(value) = config.model_targets.get(name)
        && let Some(found) = direct(value, Accepts::Any, config)
    {
        return Ok(Resolved {
            how: format!("`{name}` is a `models:` alias for `{value}`: {}", found.how),
            target: found.target,
        });
    }
    Err(not_found(name, accepts, config))
}

/// Steps 1–3 of the lookup.
fn direct(name: &str, accepts: Accepts, config: &Config) -> Option<Resolved> {
    if accepts != Accepts::Role {
        if config.agents.contains_key(name) {
            return Some(Resolved {
                target: Target::Agent(name.to_string()),
                how: format!("agent `{name}`"),
            });
        }
        if let Some((agent, model)) = name.split_once(':')
            && !model.is_empty()
            && config.agents.contains_key(agent)
        {
            return Some(Resolved {
                target: Target::Agent(name.to_string()),
                how: format!("agent `{agent}` with model `{model}`"),
            });
        }
    }
    if accepts != Accepts::Agent {
        if let Some(chain) = config.roles.get(name) {
            return Some(Resolved {
                target: Target::Role(name.to_string()),
                how: format!("role `{name}` ({})", chain.join(" → ")),
            });
        }
        if STANDARD_ROLES.contains(&name) {
            return Some(Resolved {
                target: Target::DefaultChain {
                    role: name.to_string(),
                },
                how: format!("role `{name}`, not defined in the config: the default chain runs it"),
            });
        }
    }
    None
}

/// Why a name runs nothing; each says what is there and, where it can, what was meant or which
/// config line would make it run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unresolved {
    #[error("unknown agent `{name}` (configured: {agents}){hint}")]
    UnknownAgent {
        name: String,
        agents: String,
        hint: String,
    },
    #[error("unknown role `{name}` (roles: {roles}){hint}")]
    UnknownRole {
        name: String,
        roles: String,
        hint: String,
    },
    #[error("`{name}` names no agent before `:` (configured: {agents})")]
    NoAgentBeforeColon { name: String, agents: String },
    #[error("`{name}` names no model after `:`")]
    NoModelAfterColon { name: String },
    #[error("`{name}` names agent `{agent}`, which is not configured (configured: {agents}){hint}")]
    AgentNotConfigured {
        name: String,
        agent: String,
        agents: String,
        hint: String,
    },
    #[error(transparent)]
    Nothing(Box<NothingMatched>),
}

/// A name that is no agent, `agent:model`, role or `models:` alias.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{name}` is not an agent (configured: {agents}), an `agent:model` entry, a role (roles: {roles}) or a `models:` alias.{alias}{did_you_mean}{add}"
)]
pub struct NothingMatched {
    name: String,
    agents: String,
    roles: String,
    /// What a `models:` alias of that name stands for, when there is one.
    alias: String,
    did_you_mean: String,
    /// The config line to add.
    add: String,
}

fn not_found(name: &str, accepts: Accepts, config: &Config) -> Unresolved {
    let agents = config.agents.keys().cloned().collect::<Vec<_>>();
    let mut roles: Vec<String> = config.roles.keys().cloned().collect();
    roles.extend(
        STANDARD_ROLES
            .iter()
            .filter(|r| !config.roles.contains_key(**r))
            .map(|r| r.to_string()),
    );
    roles.sort();
    let mut candidates: Vec<&str> = Vec::new();
    if accepts != Accepts::Role {
        candidates.extend(agents.iter().map(String::as_str));
    }
    if accepts != Accepts::Agent {
        candidates.extend(roles.iter().map(String::as_str));
    }
    if accepts == Accepts::Any {
        candidates.extend(config.model_targets.keys().map(String::as_str));
    }
    let suggestion = crate::suggest::did_you_mean(name, candidates.iter().copied());
    let hint = suggestion
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
    let agents = agents.join(", ");
    let name_ = name.to_string();
    match accepts {
        Accepts::Agent => Unresolved::UnknownAgent {
            name: name_,
            agents,
            hint,
        },
        Accepts::Role => Unresolved::UnknownRole {
            name: name_,
            roles: roles.join(", "),
            hint,
        },
        Accepts::Any => {
            if let Some((agent, model)) = name.split_once(':') {
                if agent.is_empty() {
                    return Unresolved::NoAgentBeforeColon {
                        name: name_,
                        agents,
                    };
                }
                if model.is_empty() {
                    return Unresolved::NoModelAfterColon { name: name_ };
                }
                let hint =
                    crate::suggest::did_you_mean(agent, config.agents.keys().map(String::as_str))
                        .map(|s| format!("; did you mean `{s}:{model}`?"))
                        .unwrap_or_default();
                return Unresolved::AgentNotConfigured {
                    name: name_,
                    agent: agent.to_string(),
                    agents,
                    hint,
                };
            }
            let alias = match config.model_targets.get(name) {
                Some(value) => format!(
                    " It is a `models:` alias for `{value}`, which is no agent, `agent:model` or role."
                ),
                None => String::new(),
            };
            let did_you_mean = suggestion
                .map(|s| format!(" Did you mean `{s}`?"))
                .unwrap_or_default();
            let add = match name.split_once('-') {
                Some((agent, model)) if config.agents.contains_key(agent) => format!(
                    " To run it, add `{name}: \"{agent}:{model}\"` under `models:` in the config."
                ),
                _ => format!(
                    " To run it, add `{name}: AGENT` (or `AGENT:MODEL`) under `models:` in the config."
                ),
            };
            Unresolved::Nothing(Box::new(NothingMatched {
                name: name_,
                agents,
                roles: roles.join(", "),
                alias,
                did_you_mean,
                add,
            }))
        }
    }
}

/// An ensemble's proposers, each as a concrete chain: where two would start with the same agent,
/// the later one starts with the first agent of its chain not yet used by an earlier proposer —
/// several perspectives are the point of an ensemble. Chains with nothing new stay as they are.
pub fn diversify(chains: Vec<Vec<String>>) -> Vec<Vec<String>> {
    let mut used: Vec<String> = Vec::new();
    let mut out = Vec::with_capacity(chains.len());
    for mut chain in chains {
        let base = |e: &String| e.split(':').next().unwrap_or("").to_string();
        if let Some(first) = chain.first()
            && used.contains(&base(first))
            && let Some(k) = chain.iter().position(|e| !used.contains(&base(e)))
        {
            let fresh = chain.remove(k);
            chain.insert(0, fresh);
        }
        if let Some(first) = chain.first() {
            used.push(base(first));
        }
        out.push(chain);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            "agents:\n  claude: {command: [c]}\n  local: {command: [l]}\nroles:\n  backend: [claude, local]\nmodels:\n  claude-opus: \"claude:opus\"\n  fast: local\n  gpt-4o: nobody\n  big: qwen2.5\n",
            "t",
        )
        .unwrap()
    }

    #[test]
    fn lookup_order_case_table() {
        let cfg = config();
        let agent = |s: &str| Target::Agent(s.into());
        let cases: &[(&str, Accepts, Result<Target, &str>)] = &[
            ("claude", Accepts::Any, Ok(agent("claude"))),
            ("claude:opus", Accepts::Any, Ok(agent("claude:opus"))),
            (
                "claude:",
                Accepts::Any,
                Err("`claude:` names no model after `:`"),
            ),
            (":opus", Accepts::Any, Err("names no agent before `:`")),
            (
                "claud:opus",
                Accepts::Any,
                Err("did you mean `claude:opus`?"),
            ),
            ("backend", Accepts::Any, Ok(Target::Role("backend".into()))),
            (
                "reviewer",
                Accepts::Any,
                Ok(Target::DefaultChain {
                    role: "reviewer".into(),
                }),
            ),
            ("claude-opus", Accepts::Any, Ok(agent("claude:opus"))),
            ("fast", Accepts::Any, Ok(agent("local"))),
            // An alias to a model name is a spawn-time alias, not a runner.
            ("big", Accepts::Any, Err("is not an agent")),
            ("gpt-4o", Accepts::Any, Err("is not an agent")),
            (
                "claude-sonnet",
                Accepts::Any,
                Err("claude-sonnet: \"claude:sonnet\""),
            ),
            ("backend", Accepts::Agent, Err("unknown agent `backend`")),
            ("claude-opus", Accepts::Agent, Err("unknown agent")),
            ("claude", Accepts::Role, Err("unknown role `claude`")),
            ("reviewr", Accepts::Role, Err("did you mean `reviewer`?")),
            (
                "planner",
                Accepts::Role,
                Ok(Target::DefaultChain {
                    role: "planner".into(),
                }),
            ),
        ];
        for (name, accepts, want) in cases {
            let got = resolve(name, *accepts, &cfg);
            match (want, &got) {
                (Ok(t), Ok(r)) => assert_eq!(&r.target, t, "{name} as {accepts:?}"),
                (Err(part), Err(msg)) => {
                    assert!(
                        msg.to_string().contains(part),
                        "{name} as {accepts:?}: {msg:?} lacks {part:?}"
                    )
                }
                _ => panic!("{name} as {accepts:?}: expected {want:?}, got {got:?}"),
            }
        }
        assert_eq!(
            resolve("claude-opus", Accepts::Any, &cfg).unwrap().how,
            "`claude-opus` is a `models:` alias for `claude:opus`: agent `claude` with model `opus`"
        );
    }

    #[test]
    fn proposers_on_one_chain_start_with_different_agents() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        type Chains<'a> = &'a [&'a [&'a str]];
        let cases: &[(Chains, Chains)] = &[
            (
                &[&["a", "b", "c"], &["a", "b", "c"], &["a", "b", "c"]],
                &[&["a", "b", "c"], &["b", "a", "c"], &["c", "a", "b"]],
            ),
            // One agent only: nothing to spread over.
            (&[&["a"], &["a"]], &[&["a"], &["a"]]),
            // Explicit, different agents stay.
            (&[&["a"], &["b"]], &[&["a"], &["b"]]),
            // `agent:model` entries count as their agent.
            (
                &[&["a:x", "b"], &["a:y", "b"]],
                &[&["a:x", "b"], &["b", "a:y"]],
            ),
            // More proposers than agents: the extra ones keep their order.
            (
                &[&["a", "b"], &["a", "b"], &["a", "b"]],
                &[&["a", "b"], &["b", "a"], &["a", "b"]],
            ),
        ];
        for (input, want) in cases {
            let got = diversify(input.iter().map(|c| v(c)).collect());
            let want: Vec<Vec<String>> = want.iter().map(|c| v(c)).collect();
            assert_eq!(got, want, "chains {input:?}");
        }
    }
}
