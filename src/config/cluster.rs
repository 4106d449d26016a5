//! The `cluster:` section: a daemon in fleet mode — its tasks go through a NATS JetStream
//! work queue that every worker of the fleet pulls from (see `crate::fleet` and
//! docs/cluster.md). Without the section the daemon is on its own, exactly as before.
//!
//! Parsed into a validated [`Cluster`] here: the address split once, the credentials checked
//! for a single source, the worker's name a safe name (it goes into NATS subjects and keys).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::notify::Secret;
use crate::duration::Dur;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    url: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_env: Option<String>,
    #[serde(default)]
    creds: Option<PathBuf>,
    #[serde(default)]
    nkey: Option<PathBuf>,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    ack_wait: Option<Dur>,
    #[serde(default)]
    work: Option<bool>,
    #[serde(default)]
    repository: Option<String>,
    #[serde(default)]
    repositories: Vec<String>,
    #[serde(default)]
    run_task_verify: Option<bool>,
    #[serde(default)]
    nodes: std::collections::BTreeMap<String, crate::fleet::signing::RawMember>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    ca: Option<PathBuf>,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
}

/// How this node proves who it is to the NATS server.
#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    /// No credentials (a server on a private network, or the tests' own).
    None,
    /// A shared token (`token:` or `token_env:`).
    Token(Secret),
    /// A `.creds` file (JWT and nkey seed), as `nsc` writes it.
    Creds(PathBuf),
    /// A file holding an nkey seed (`SU…`).
    Nkey(PathBuf),
}

/// TLS to the server: required when given; `ca` adds a root, `cert` + `key` are a client
/// certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub ca: Option<PathBuf>,
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Fleet mode, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// `nats://host:port` (or `tls://…`); several servers separated by commas.
    pub url: String,
    /// This node's name in the fleet: unique per worker, in subjects and keys.
    pub name: String,
    pub auth: Auth,
    pub tls: Option<Tls>,
    /// How long the server waits for a worker's word on a task before it hands the task to
    /// another worker. A worker says "still working" well within it while an attempt runs.
    pub ack_wait: Duration,
    /// Whether this node runs tasks from the fleet (`work: false`: it only submits).
    pub work: bool,
    /// Where workers reach this node's repository (a path or URL). With it, editing tasks
    /// submitted here go to the fleet and come back as branches; without it they run here.
    pub repository: Option<String>,
    /// The repositories this worker edits for the fleet: an editing task whose repository is
    /// not under one of these is refused. Empty: it takes no editing tasks.
    pub repositories: Vec<crate::fleet::edits::Source>,
    /// Whether this worker runs the `verify` commands another node's task brings with it
    /// (`run_task_verify: true`). Off by default: a task from another machine then runs no
    /// command of that machine's choosing here, only this worker's own config's; such a task
    /// is refused (and offered to other workers).
    pub run_task_verify: bool,
    /// The fleet's roster, each node's name and public nkey: with it, every node signs its
    /// tasks, outcomes and heartbeats with its `nkey` seed and takes only those signed by a
    /// node listed here (`crate::fleet::signing`). Empty: nothing is signed.
    pub nodes: crate::fleet::signing::Roster,
}

/// The default wait: short, so a dead worker's task moves on within half a minute.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

pub(super) fn build(raw: RawCluster) -> Result<Cluster, String> {
    let url = raw.url.trim().to_string();
    if url.is_empty() {
        return Err(
            "`cluster.url` is empty: give the NATS server, e.g. `nats://127.0.0.1:4222`".into(),
        );
    }
    for one in url.split(',') {
        let one = one.trim();
        let known = ["nats://", "tls://"].iter().any(|s| one.starts_with(s));
        if !known || one.len() <= "nats://".len() {
            return Err(format!(
                "`cluster.url`: `{one}` is not a NATS address; write `nats://HOST:PORT` (or `tls://HOST:PORT`)"
            ));
        }
    }
    let name = match raw.name {
        Some(n) => n,
        None => default_name(),
    };
    super::validate_name(&name).map_err(|_| {
        format!(
            "`cluster.name`: `{name}` is not a node name: use letters, digits, `-` and `_` (no dots), at most 128 characters"
        )
    })?;
    // NATS subjects are split at dots; a name is one token.
    if name.contains('.') {
        return Err(format!(
            "`cluster.name`: `{name}` has a dot; a worker's name is one word of a NATS subject"
        ));
    }
    let given = [
        raw.token.is_some(),
        raw.token_env.is_some(),
        raw.creds.is_some(),
        raw.nkey.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(
            "`cluster`: give one of `token`, `token_env`, `creds` or `nkey`, not several".into(),
        );
    }
    let auth = if let Some(t) = raw.token {
        Auth::Token(Secret::Given(t))
    } else if let Some(v) = raw.token_env {
        Auth::Token(Secret::Env(v))
    } else if let Some(c) = raw.creds {
        Auth::Creds(c)
    } else if let Some(k) = raw.nkey {
        Auth::Nkey(k)
    } else {
        Auth::None
    };
    let tls = match raw.tls {
        None => None,
        Some(t) => Some(Tls {
            ca: t.ca,
            client: match (t.cert, t.key) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => {
                    return Err(
                        "`cluster.tls`: a client certificate needs both `cert` and `key`".into(),
                    );
                }
            },
        }),
    };
    let ack_wait = raw.ack_wait.map_or(DEFAULT_ACK_WAIT, |d| d.0);
    if ack_wait < Duration::from_secs(1) {
        return Err("`cluster.ack_wait` must be at least 1s".into());
    }
    let repository = match raw.repository {
        Some(r) => {
            crate::fleet::edits::Source::parse(&r)
                .map_err(|e| format!("`cluster.repository`: `{r}`: {e}"))?;
            Some(r)
        }
        None => None,
    };
    let repositories = raw
        .repositories
        .iter()
        .map(|r| {
            crate::fleet::edits::Source::parse(r)
                .map_err(|e| format!("`cluster.repositories`: `{r}`: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let nodes = crate::fleet::signing::parse_roster(raw.nodes)?;
    if !nodes.is_empty() {
        if !matches!(auth, Auth::Nkey(_)) {
            return Err(
                "`cluster.nodes` (signed messages) needs `cluster.nkey`: each node signs with its own seed".into(),
            );
        }
        if !nodes.contains_key(&name) {
            return Err(format!(
                "`cluster.nodes` does not list this node, `{name}`: every node of the fleet, this one too, with its public nkey"
            ));
        }
    }
    Ok(Cluster {
        url,
        name,
        auth,
        tls,
        ack_wait,
        work: raw.work.unwrap_or(true),
        repository,
        repositories,
        run_task_verify: raw.run_task_verify.unwrap_or(false),
        nodes,
    })
}

/// The host's name, made safe for a subject (`worker` when it has none we can use).
fn default_name() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let safe: String = host
        .split('.')
        .next()
        .unwrap_or("")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if safe.is_empty() {
        "worker".into()
    } else {
        safe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Cluster, String> {
        let raw: RawCluster = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        build(raw)
    }

    #[test]
    fn cluster_sections_are_checked() {
        let cases: &[(&str, Result<(), &str>)] = &[
            ("url: nats://127.0.0.1:4222\nname: a", Ok(())),
            ("url: nats://a:1,nats://b:2\nname: a", Ok(())),
            ("url: http://x\nname: a", Err("is not a NATS address")),
            ("url: ''\nname: a", Err("is empty")),
            ("url: nats://x:1\nname: a.b", Err("has a dot")),
            ("url: nats://x:1\nname: '../x'", Err("`cluster.name`")),
            (
                "url: nats://x:1\nname: a\ntoken: t\ncreds: /c",
                Err("not several"),
            ),
            (
                "url: nats://x:1\nname: a\ntls: {cert: /c}",
                Err("both `cert` and `key`"),
            ),
            (
                "url: nats://x:1\nname: a\nack_wait: 10ms",
                Err("at least 1s"),
            ),
            (
                "url: nats://x:1\nname: a\nrepository: /srv/git/app\nrepositories: [/srv/git, 'https://git.example.com/acme']",
                Ok(()),
            ),
            (
                "url: nats://x:1\nname: a\nrepository: git@host:app.git",
                Err("`cluster.repository`: `git@host:app.git`"),
            ),
            (
                "url: nats://x:1\nname: a\nrepositories: [srv/git]",
                Err("`cluster.repositories`: `srv/git`: write an absolute path"),
            ),
            (
                "url: nats://x:1\nname: a\nnkey: /k\nnodes: {a: UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4}",
                Ok(()),
            ),
            (
                "url: nats://x:1\nname: a\ntoken: t\nnodes: {a: UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4}",
                Err("needs `cluster.nkey`"),
            ),
            (
                "url: nats://x:1\nname: a\nnkey: /k\nnodes: {b: UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4}",
                Err("does not list this node, `a`"),
            ),
            (
                "url: nats://x:1\nname: a\nnkey: /k\nnodes: {a: SUAKEY}",
                Err("`cluster.nodes.a`: `SUAKEY` is not a user's public nkey"),
            ),
            (
                "url: nats://x:1\nname: a\nnkey: /k\nnodes: {a: {key: UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4, wroks: all}}",
                Err("unknown field `wroks`, expected one of key, works"),
            ),
            (
                "url: nats://x:1\nname: a\nnkey: /k\nnodes: {a: 5}",
                Err("expected a node's public key (`UABC…`) or `{key: UABC…, works: all}`"),
            ),
            (
                "url: nats://x:1\nname: a\nnkey: /k\nnodes: {a: {key: UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4, works: {x: 1}}}",
                Err("expected `all` or a list of the agents the node runs"),
            ),
        ];
        for (yaml, want) in cases {
            let got = parse(yaml);
            match (want, &got) {
                (Ok(()), Ok(_)) => {}
                (Err(part), Err(e)) => assert!(
                    e.contains(part),
                    "for {yaml:?}: expected an error containing {part:?}, got {e:?}"
                ),
                _ => panic!("for {yaml:?}: expected {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn defaults_are_a_working_node_with_a_short_ack_wait() {
        let c = parse("url: nats://127.0.0.1:4222\nname: gpu").expect("a valid section");
        assert_eq!(c.ack_wait, DEFAULT_ACK_WAIT, "the default ack wait");
        assert!(c.work, "a node works unless it says `work: false`");
        assert_eq!(c.auth, Auth::None, "no credentials unless given");
    }
}
