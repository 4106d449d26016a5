//! The NATS permissions that confine each node of a fleet to its own part
//! (`dirigent fleet permissions`; docs/cluster.md, "Permissions").
//!
//! The fleet's subjects carry the node's name where it matters — `dirigent.tasks.<agent>.<node>`,
//! `dirigent.events.<node>`, `dirigent.cancel.<node>`, outcome keys `<node>.<id>…`, heartbeat
//! and start keys, reply subjects `_INBOX_<node>.…` — so the server can hold each node's user
//! to its own subjects. What every node may do, and what a worker may do besides, is decided
//! here as data ([`grants`]); [`config`] writes it out as an `authorization` block for
//! `nats-server.conf`, one user per node, identified by its nkey.
//!
//! The flow this serves: a submitting node publishes only its own tasks, claims (cancels) only
//! its own outcomes, writes only its own heartbeat and events, and reads only replies meant for
//! it; it cannot pull tasks. A worker may also pull the tasks of the agents it is given, tell
//! the server how they went, write any task's outcome and the results store, and share its
//! starts and provider words. Workers are trusted with outcomes: a worker could always have
//! been the one handed a task.
//!
//! A narrowing, not a wall: on nats-server 2.9 a request's reply subject is not checked
//! against publish permissions, so a node can have the server write onto another node's
//! subjects (docs/cluster.md, "What the permissions do not close"). Signed messages
//! (`super::signing`, with the roster this block ends with) are what ties a task, an outcome
//! or a heartbeat to its node.

use std::fmt::Write as _;

use super::events::EVENTS_STREAM;
use super::{
    OUTCOMES_BUCKET, PROVIDERS_BUCKET, RESULTS_BUCKET, STARTS_BUCKET, TASKS_STREAM, WORKERS_BUCKET,
    consumer_for, inbox_prefix,
};

/// One node of the fleet as the server knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Its `cluster.name`.
    pub name: String,
    /// The public half of its nkey (`U…`), the seed of which is its `cluster.nkey` file.
    pub nkey: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// Submits tasks, runs none (`cluster.work: false`).
    Submitter,
    /// Also runs tasks: those of `agents`, or of every agent when `None`.
    Worker { agents: Option<Vec<String>> },
}

/// What a node's user may publish and subscribe to.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Grants {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// The streams and buckets every node reads, and makes when missing (the first node to
/// start makes them; an operator may make them beforehand and drop `STREAM.CREATE`).
fn streams() -> Vec<String> {
    let mut out = vec![TASKS_STREAM.to_string(), EVENTS_STREAM.to_string()];
    for bucket in [
        OUTCOMES_BUCKET,
        WORKERS_BUCKET,
        STARTS_BUCKET,
        PROVIDERS_BUCKET,
    ] {
        out.push(format!("KV_{bucket}"));
    }
    out.push(format!("OBJ_{RESULTS_BUCKET}"));
    out
}

/// The grants of one node.
pub fn grants(member: &Member) -> Grants {
    let me = &member.name;
    let mut publish = vec![
        // Its own tasks, records, cancels, heartbeat, and cancelled outcomes.
        format!("dirigent.tasks.*.{me}"),
        format!("dirigent.events.{me}"),
        format!("dirigent.cancel.{me}"),
        format!("$KV.{OUTCOMES_BUCKET}.{me}.>"),
        format!("$KV.{WORKERS_BUCKET}.{me}"),
        // `dirigent agents disable`/`enable` on any node, and a 429 seen anywhere, rest or
        // free a provider fleet-wide (keys are providers: the server cannot tell whose).
        format!("$KV.{PROVIDERS_BUCKET}.>"),
        // Flow control of the ordered consumers it watches buckets and reads events through.
        "$JS.FC.>".to_string(),
        "$JS.API.INFO".to_string(),
        // A cancelled task still on the queue is taken off it (by its sequence: the server
        // cannot tell whose it is, see docs/cluster.md).
        format!("$JS.API.STREAM.MSG.DELETE.{TASKS_STREAM}"),
    ];
    for stream in streams() {
        publish.push(format!("$JS.API.STREAM.INFO.{stream}"));
        publish.push(format!("$JS.API.STREAM.CREATE.{stream}"));
        if stream == TASKS_STREAM {
            // Only workers read the queue, and only through their agents' consumers.
            continue;
        }
        // Reading buckets, results and events: keys and objects directly, watches and the
        // events through consumers of its own.
        publish.push(format!("$JS.API.DIRECT.GET.{stream}"));
        publish.push(format!("$JS.API.DIRECT.GET.{stream}.>"));
        publish.push(format!("$JS.API.STREAM.MSG.GET.{stream}"));
        publish.push(format!("$JS.API.CONSUMER.CREATE.{stream}"));
        publish.push(format!("$JS.API.CONSUMER.CREATE.{stream}.>"));
        publish.push(format!("$JS.API.CONSUMER.INFO.{stream}.*"));
        publish.push(format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.*"));
        publish.push(format!("$JS.API.CONSUMER.DELETE.{stream}.*"));
    }
    let mut subscribe = vec![format!("{}.>", inbox_prefix(me))];
    if let Role::Worker { agents } = &member.role {
        publish.extend([
            format!("$KV.{OUTCOMES_BUCKET}.>"),
            format!("$KV.{STARTS_BUCKET}.*.{me}"),
            format!("$O.{RESULTS_BUCKET}.>"),
            // A result put again replaces the chunks of the one before.
            format!("$JS.API.STREAM.PURGE.OBJ_{RESULTS_BUCKET}"),
        ]);
        // A consumer is made with its filter in the subject, which the server holds the
        // consumer's config to: a worker given `ollama` cannot make (or remake) `pull-ollama`
        // with a filter of another agent's tasks.
        let consumers: Vec<(String, String)> = match agents {
            Some(agents) => agents
                .iter()
                .map(|a| (consumer_for(a), super::filter_for(a)))
                .collect(),
            None => vec![("*".to_string(), "dirigent.tasks.*.*".to_string())],
        };
        for (c, filter) in consumers {
            publish.extend([
                format!("$JS.API.CONSUMER.CREATE.{TASKS_STREAM}.{c}.{filter}"),
                format!("$JS.API.CONSUMER.INFO.{TASKS_STREAM}.{c}"),
                format!("$JS.API.CONSUMER.MSG.NEXT.{TASKS_STREAM}.{c}"),
                format!("$JS.ACK.{TASKS_STREAM}.{c}.>"),
            ]);
        }
        subscribe.push(super::CANCEL_SUBJECTS.to_string());
    }
    Grants { publish, subscribe }
}

/// The `authorization` block for `nats-server.conf`: one user per member, nothing allowed that
/// is not listed. Every subject is quoted (`$` starts a variable in that format).
pub fn config(members: &[Member]) -> String {
    let mut out = String::from(
        "# The fleet's users, one per node (written by `dirigent fleet permissions`).\nauthorization {\n  users = [\n",
    );
    for m in members {
        let g = grants(m);
        let role = match &m.role {
            Role::Submitter => "submits".to_string(),
            Role::Worker { agents: None } => "works (every agent)".to_string(),
            Role::Worker { agents: Some(a) } => format!("works ({})", a.join(", ")),
        };
        let _ = writeln!(out, "    # `{}`: {role}", m.name);
        let _ = writeln!(out, "    {{");
        let _ = writeln!(out, "      nkey: \"{}\"", m.nkey);
        let _ = writeln!(out, "      permissions: {{");
        for (what, items) in [("publish", &g.publish), ("subscribe", &g.subscribe)] {
            let _ = writeln!(out, "        {what}: {{ allow: [");
            for item in items {
                let _ = writeln!(out, "          \"{item}\",");
            }
            let _ = writeln!(out, "        ] }}");
        }
        let _ = writeln!(out, "      }}");
        let _ = writeln!(out, "    }}");
    }
    out.push_str("  ]\n}\n");
    let roster: Vec<String> = members
        .iter()
        .map(|m| match &m.role {
            Role::Submitter => format!("{}: {}", m.name, m.nkey),
            Role::Worker { agents: None } => {
                format!("{}: {{key: {}, works: all}}", m.name, m.nkey)
            }
            Role::Worker {
                agents: Some(agents),
            } => format!(
                "{}: {{key: {}, works: [{}]}}",
                m.name,
                m.nkey,
                agents.join(", ")
            ),
        })
        .collect();
    let _ = writeln!(
        out,
        "# And in every node's .context/dirigent.yaml, under `cluster:`, the same roster, so each\n# node signs what it sends and checks what it reads (docs/cluster.md, \"Signed messages\"):\n#   nodes: {{{}}}",
        roster.join(", ")
    );
    out
}

/// A member from the command line: `NAME=NKEY` or `NAME=NKEY:AGENT,AGENT` (workers).
pub fn parse_member(text: &str, works: bool) -> Result<Member, String> {
    let (name, rest) = text.split_once('=').ok_or_else(|| {
        format!("`{text}`: write `NAME=NKEY` (the node's `cluster.name` and its public nkey, `U…`)")
    })?;
    let (nkey, agents) = match rest.split_once(':') {
        Some((k, a)) => (k, Some(a)),
        None => (rest, None),
    };
    if crate::config::validate_name(name).is_err() || name.contains('.') {
        return Err(format!(
            "`{name}` is not a node name: letters, digits, `-` and `_`, as `cluster.name`"
        ));
    }
    // A user's public nkey (`U…`, its checksum right).
    let is_user_key = nkey.starts_with('U') && nkeys::KeyPair::from_public_key(nkey).is_ok();
    if !is_user_key {
        return Err(format!(
            "`{nkey}` is not a user's public nkey (56 characters starting with `U`; `nk -gen user -pubout` makes a pair)"
        ));
    }
    let role = match (works, agents) {
        (false, None) => Role::Submitter,
        (false, Some(_)) => {
            return Err(format!(
                "`{text}`: a node that only submits runs no agents; give agents to `--worker`"
            ));
        }
        (true, None) => Role::Worker { agents: None },
        (true, Some(list)) => {
            let agents: Vec<String> = list.split(',').map(str::to_string).collect();
            if let Some(bad) = agents
                .iter()
                .find(|a| crate::config::validate_name(a).is_err())
            {
                return Err(format!("`{bad}` is not an agent name"));
            }
            Role::Worker {
                agents: Some(agents),
            }
        }
    };
    Ok(Member {
        name: name.to_string(),
        nkey: nkey.to_string(),
        role,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4";

    #[test]
    fn a_member_is_parsed_or_refused_with_the_reason() {
        let cases: &[(&str, bool, Result<Role, &str>)] = &[
            (&format!("desk={KEY}"), false, Ok(Role::Submitter)),
            (
                &format!("gpu={KEY}"),
                true,
                Ok(Role::Worker { agents: None }),
            ),
            (
                &format!("gpu={KEY}:ollama,qwen.2"),
                true,
                Ok(Role::Worker {
                    agents: Some(vec!["ollama".into(), "qwen.2".into()]),
                }),
            ),
            ("desk", false, Err("write `NAME=NKEY`")),
            (&format!("a.b={KEY}"), false, Err("is not a node name")),
            ("desk=SUABC", false, Err("is not a user's public nkey")),
            (
                // The right length and alphabet, a wrong checksum.
                "desk=UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF5",
                false,
                Err("is not a user's public nkey"),
            ),
            (
                &format!("desk={}", KEY.to_lowercase()),
                false,
                Err("is not a user's public nkey"),
            ),
            (&format!("desk={KEY}:claude"), false, Err("runs no agents")),
            (&format!("gpu={KEY}:a b"), true, Err("is not an agent name")),
        ];
        for (text, works, want) in cases {
            let got = parse_member(text, *works);
            match (want, &got) {
                (Ok(role), Ok(m)) => assert_eq!(&m.role, role, "role of {text:?}"),
                (Err(needle), Err(e)) => {
                    assert!(
                        e.contains(needle),
                        "{text:?}: expected an error with {needle:?}, got {e:?}"
                    )
                }
                _ => panic!("{text:?}: expected {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn a_submitter_publishes_only_its_own_and_never_pulls_tasks() {
        let desk = grants(&Member {
            name: "desk".into(),
            nkey: KEY.into(),
            role: Role::Submitter,
        });
        for own in [
            "dirigent.tasks.*.desk",
            "dirigent.events.desk",
            "dirigent.cancel.desk",
            "$KV.dirigent_outcomes.desk.>",
            "$KV.dirigent_workers.desk",
        ] {
            assert!(
                desk.publish.iter().any(|p| p == own),
                "desk may publish {own}"
            );
        }
        for never in [
            "dirigent.tasks.",
            "$KV.dirigent_outcomes.>",
            "$JS.API.>",
            "$O.",
        ] {
            assert!(
                !desk.publish.iter().any(|p| p == never
                    || (never.ends_with('.') && p.starts_with(never) && !p.ends_with(".desk"))),
                "desk may not publish {never}: {:?}",
                desk.publish
            );
        }
        assert!(
            !desk
                .publish
                .iter()
                .any(|p| p.contains("CONSUMER") && p.contains(TASKS_STREAM)),
            "a submitter makes no consumer on the queue: {:?}",
            desk.publish
        );
        assert_eq!(
            desk.subscribe,
            vec!["_INBOX_desk.>".to_string()],
            "replies to desk only"
        );
    }

    #[test]
    fn a_worker_given_agents_pulls_only_theirs() {
        let gpu = grants(&Member {
            name: "gpu".into(),
            nkey: KEY.into(),
            role: Role::Worker {
                agents: Some(vec!["ollama".into()]),
            },
        });
        let pulls: Vec<&String> = gpu
            .publish
            .iter()
            .filter(|p| p.starts_with("$JS.API.CONSUMER.MSG.NEXT.DIRIGENT_TASKS"))
            .collect();
        assert_eq!(
            pulls,
            vec!["$JS.API.CONSUMER.MSG.NEXT.DIRIGENT_TASKS.pull-ollama"],
            "the worker pulls through its agent's consumer only"
        );
        assert!(
            gpu.subscribe.iter().any(|s| s == "dirigent.cancel.*"),
            "a worker hears cancels"
        );
        let text = config(&[Member {
            name: "gpu".into(),
            nkey: KEY.into(),
            role: Role::Worker {
                agents: Some(vec!["ollama".into()]),
            },
        }]);
        assert!(
            text.contains(&format!(
                "#   nodes: {{gpu: {{key: {KEY}, works: [ollama]}}}}"
            )),
            "the block ends with the roster for the nodes' configs:\n{text}"
        );
        assert!(
            text.contains(&format!("nkey: \"{KEY}\""))
                && text.contains("\"$KV.dirigent_starts.*.gpu\""),
            "the block names the user and quotes each subject:\n{text}"
        );
    }
}
