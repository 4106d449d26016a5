//! Command-line definitions (clap). Kept apart from the commands so completions and a man page
//! can be generated from them later.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "dirigent",
    version,
    about = "Supervise AI coding-agent CLIs: a task inbox, fallback chains, judging, a durable ledger",
    long_about = "dirigent runs agent CLIs (claude, gemini, codex, aider, opencode, ollama, local scripts) \
as supervised child processes. Drop task files into .context/inbox/, use `dirigent submit`, the HTTP API \
(`dirigent daemon --http`) or the MCP server (`dirigent mcp`); the daemon runs each task through its fallback chain, judges every attempt, and records everything in \
.context/ledger.jsonl and .context/progress.md."
)]
pub struct Cli {
    /// The workspace (project directory). Default: $DIRIGENT_ROOT, else the nearest ancestor of
    /// the current directory that has a `.context/`, else the current directory.
    #[arg(long, global = true, env = "DIRIGENT_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create `.context/` with the default config (commented) and every directory it needs.
    Init {
        /// Overwrite an existing `.context/dirigent.yaml` with the default.
        #[arg(long)]
        force: bool,
    },
    /// Run the supervisor in the foreground (what the systemd/launchd service runs).
    ///
    /// Stops gracefully on SIGINT/SIGTERM: running attempts are terminated and their tasks go
    /// back into the inbox to run again on the next start.
    Daemon {
        /// Log level: error, warn, info, debug, trace. `RUST_LOG` takes precedence.
        #[arg(long, default_value = "info", value_name = "LEVEL")]
        log_level: String,
        /// `text` for people, `json` (one object per line) for log collectors.
        #[arg(long, default_value = "text", value_enum)]
        log_format: LogFormat,
        /// Serve the HTTP API, SSE events and the OpenAI-compatible endpoint on this address
        /// (`127.0.0.1:8787`, or just a port for loopback); overrides `http:` in the config.
        /// Requests need the bearer token in `.context/http.token`. See docs/api.md.
        #[arg(long, value_name = "ADDR", value_parser = dirigent::config::parse_listen)]
        http: Option<std::net::SocketAddr>,
    },
    /// Serve the Model Context Protocol on stdin/stdout for an assistant (Claude Code:
    /// `claude mcp add dirigent -- dirigent --root DIR mcp`). Talks to the running daemon;
    /// starts nothing else.
    Mcp,
    /// Write a task into the inbox. Works while the daemon is down; it runs when it starts.
    Submit(Box<SubmitArgs>),
    /// Show tasks and their state, or one task in detail. Reads the ledger, so it also works
    /// while the daemon is down.
    Status {
        /// A task id: show its attempts in detail.
        #[arg(add = crate::complete::tasks())]
        id: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Keep the view open and redraw it in place as things change (as `dirigent top`).
        #[arg(short, long, conflicts_with_all = ["id", "json"])]
        watch: bool,
        /// Fleet mode: every node's tasks, as the fleet's events stream has them (each node's
        /// own `status` stays the authority on its tasks).
        #[arg(long, conflicts_with_all = ["id", "watch"])]
        fleet: bool,
    },
    /// A live view of the running agents, redrawn in place: each with its attempt, elapsed
    /// time and the last line it printed; then what waits and what finished last. Sleeps until
    /// something changes. Ctrl-C leaves it.
    Top,
    /// Fleet mode (`cluster:` in the config): the running daemon's view of its fleet — the
    /// NATS server, every worker heard from (live or gone), their agents and how many tasks
    /// each holds, and the agents tasks wait for that no live worker runs.
    Fleet {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<FleetAction>,
    },
    /// Print an attempt's captured output (the latest attempt unless `--attempt`). With several
    /// ids or `--all`: every attempt's output interleaved, each line prefixed `id/agent |`
    /// (with `-f`, attempts that start later join in).
    Logs {
        /// The task (or tasks) whose output to print (`dirigent status` lists them).
        #[arg(add = crate::complete::tasks())]
        ids: Vec<String>,
        /// The output of every running attempt.
        #[arg(long, conflicts_with_all = ["ids", "attempt", "stderr"])]
        all: bool,
        /// Keep printing new output until the attempt ends (with `--all`: until Ctrl-C).
        #[arg(short, long)]
        follow: bool,
        /// Which attempt (1, 2, …); one task only.
        #[arg(long, value_name = "N")]
        attempt: Option<u32>,
        /// Print stderr instead of stdout; one task only (several show both).
        #[arg(long)]
        stderr: bool,
    },
    /// Print a finished task's result text.
    Result {
        /// The task's id (`dirigent status` lists them).
        #[arg(add = crate::complete::tasks())]
        id: String,
        /// Machine-readable output: `{"id", "state", "result"}` (and `output`, or the
        /// `attempt` and `agent` whose answer waits to be merged).
        #[arg(long)]
        json: bool,
    },
    /// Stop a task: its running attempt's whole process group, or its place in the queue. The
    /// task is recorded as cancelled and its file goes to `failed/`. Needs the daemon.
    Cancel {
        /// The task's id (`dirigent status` lists them).
        #[arg(add = crate::complete::tasks())]
        id: String,
        /// Machine-readable output: `{"ok", "id", "message"}`; refused, `{"ok": false, "id",
        /// "error", "failure"}` (exit 2).
        #[arg(long)]
        json: bool,
    },
    /// Show what an editing task changed against its base: its verified commit (or its
    /// worktree as it stands), as a stat and a patch.
    Diff {
        /// The task's id (`dirigent status` lists them).
        #[arg(add = crate::complete::tasks())]
        id: String,
        /// Machine-readable output: `{"id", "branch", "base", "diff"}`.
        #[arg(long)]
        json: bool,
    },
    /// Merge a task that waits to be merged (merge_waiting) into its target branch, through the
    /// merge queue: replayed on the target's head, verified again if the target moved, and the
    /// target moved only if nothing else did meanwhile. Needs the daemon.
    /// Waits until it is merged (exit 0) or cannot be (exit 1, with why).
    Merge {
        /// The task's id (`dirigent status` lists them).
        #[arg(add = crate::complete::tasks())]
        id: String,
        /// Return once the merge is queued, without waiting for it.
        #[arg(long)]
        no_wait: bool,
        /// Machine-readable output: one object once it is decided — `{"id", "state"}`, `state`
        /// `merged` (with `target`, `commit`), `not_merged` (with `reason`: it failed, or an
        /// agent resolves a conflict with `resolving`; exit 1), `merge_waiting` (with `reason`:
        /// held, e.g. by uncommitted changes, and tried again on its own; exit 1), `queued`
        /// (`--no-wait`) or `waiting` (the daemon stopped first; the merge goes on; exit 1).
        #[arg(long)]
        json: bool,
    },
    /// Throw away an editing task's branch and worktree. A task waiting to be merged ends
    /// cancelled; a finished task loses its kept branch or worktree. Needs the daemon.
    Discard {
        /// The task's id (`dirigent status` lists them).
        #[arg(add = crate::complete::tasks())]
        id: String,
        /// Machine-readable output: `{"ok", "id", "message"}`; refused, `{"ok": false, "id",
        /// "error", "failure"}` (exit 2).
        #[arg(long)]
        json: bool,
    },
    /// Run a failed or cancelled task again from the top of its chain (its file is re-read, so
    /// you may fix it in `failed/` first). Needs the daemon.
    Retry {
        /// The task's id (`dirigent status` lists them).
        #[arg(add = crate::complete::tasks())]
        id: String,
        /// Machine-readable output: `{"ok", "id", "message"}`; refused, `{"ok": false, "id",
        /// "error", "failure"}` (exit 2).
        #[arg(long)]
        json: bool,
    },
    /// List configured agents: installed or not, ready / cooling down / disabled, limits, the
    /// chains and roles they are in. `dirigent agents enable NAME` uses a disabled (auth
    /// failure) or cooling-down agent's provider again.
    Agents {
        /// Machine-readable output (with `enable`: `{"enabled": […], "refused": [{"agent",
        /// "error"}]}`).
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: Option<AgentsAction>,
    },
    /// Can each agent run? Per agent: installed and its version (a preset's CLI; a custom
    /// `command` is never run), credentials found (where, never what), disabled or cooling down, its last failure — and the exact command that fixes each
    /// problem. Exits 1 when no agent of the default chain can run. Checks this shell's
    /// environment: a daemon started by systemd or launchd may see another one.
    Doctor {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Scorecards from the ledger: attempts, success rate, fallback rate, failure classes,
    /// median and p95 duration, cost and cost per success — per agent, role or model.
    Stats {
        /// Only attempts that finished in this period: `24h`, `7d`, `30d`.
        #[arg(long, default_value = "7d", value_name = "DURATION")]
        since: String,
        /// Group by `agent`, `role` (the task's chain source), `model`, or — with `--fleet` —
        /// `worker`.
        #[arg(long, value_enum, default_value = "agent")]
        by: StatsBy,
        /// Fleet mode: every node's attempts, read from the fleet's events stream (the NATS
        /// server in `cluster:`) instead of this workspace's ledger.
        #[arg(long)]
        fleet: bool,
        /// Machine-readable output (the scorecards and a row per UTC day).
        #[arg(long)]
        json: bool,
    },
    /// Print the shell script that completes commands, flags, and this workspace's agents, roles,
    /// workflows and task ids (it asks `dirigent` at each Tab). Bash: add
    /// `source <(dirigent completions bash)` to ~/.bashrc; zsh likewise; fish:
    /// `dirigent completions fish | source`.
    Completions {
        /// `bash`, `zsh`, `fish`, `elvish` or `powershell`.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Open the web dashboard of the running daemon: prints a login link that works once
    /// (within 5 minutes) and opens it in a browser where one is at hand. Needs the daemon
    /// with its HTTP door (`daemon --http ADDR` or `http:` in the config). See
    /// docs/dashboard.md.
    #[command(visible_alias = "dashboard")]
    Open {
        /// Only print the link.
        #[arg(long)]
        no_browser: bool,
        /// Machine-readable output: `{url, expires_ms, opened_with}`.
        #[arg(long)]
        json: bool,
    },
    /// Print the man page (roff): `dirigent man > ~/.local/share/man/man1/dirigent.1`.
    Man,
    /// Declarative multi-agent workflows: the built-in ones and `.context/workflows/*.yaml`.
    #[command(subcommand)]
    Workflow(WorkflowCommand),
}

#[derive(Debug, Subcommand)]
pub enum AgentsAction {
    /// Use the agents' providers again after an auth failure (once the login is fixed) or
    /// before their rate-limit cooldown ends: `dirigent agents enable claude gemini`. Needs the
    /// daemon.
    Enable {
        /// One or more agents.
        #[arg(required = true, num_args = 1.., add = crate::complete::agents())]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// List the workflows: name, where it is defined, phases, description.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print a workflow's definition, then (as comments) the prompt each phase runs with —
    /// defaults included.
    Show {
        /// The workflow to show.
        #[arg(add = crate::complete::workflows())]
        name: String,
    },
    /// Copy a workflow into `.context/workflows/NAME.yaml` to edit it; the copy replaces the
    /// built-in. Refuses to overwrite an existing copy without `--force`.
    Copy {
        /// The workflow to copy.
        #[arg(add = crate::complete::workflows())]
        name: String,
        /// Replace a copy that exists.
        #[arg(long)]
        force: bool,
    },
    /// Start a workflow run: writes a task with `workflow` into the inbox (works while the
    /// daemon is down). `--wait` follows it and exits 0 when done, 1 when escalated.
    Run {
        /// The workflow (`dirigent workflow list` lists them).
        #[arg(add = crate::complete::workflows())]
        name: String,
        /// A workflow variable, `name=value` (repeatable).
        #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
        vars: Vec<(String, String)>,
        /// The run's id (default: generated).
        #[arg(long)]
        id: Option<String>,
        /// Follow the run: each task's attempts and each phase and round on stderr, the result on stdout.
        #[arg(long)]
        wait: bool,
        /// `--wait`, for at most DURATION: then exit 124 (the run goes on).
        #[arg(long, value_name = "DURATION", value_parser = parse_wait_for)]
        wait_for: Option<std::time::Duration>,
        /// Print `{"id": …, "file": …}`; with `--wait`, one object once the run settles (as `submit --json`).
        #[arg(long)]
        json: bool,
    },
    /// Check workflows (all, or the names or files given) and report every problem with file,
    /// line and column; for a valid one, the variables a run needs and what runs each phase
    /// (which agent, `agent:model`, role or `models:` alias a name resolved to). Exits 1 when
    /// there are problems.
    Validate {
        /// Workflow names or `.yaml` files (default: every workflow).
        #[arg(add = crate::complete::workflows())]
        targets: Vec<String>,
        /// Machine-readable output: `{"ok", "problems", "workflows": [{"name", "file", "ok",
        /// …}]}` — a valid one with its `variables` and `phases`, an invalid one with its
        /// `problems` (`file`, `line`, `column`, `message`).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StatsBy {
    Agent,
    Role,
    Model,
    /// The fleet node that ran the attempts (with `--fleet`).
    Worker,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The prompt; `-` or nothing reads it from stdin.
    pub prompt: Option<String>,
    /// Route through a configured role's chain.
    #[arg(long, conflicts_with_all = ["agent", "chain"])]
    #[arg(add = crate::complete::roles())]
    pub role: Option<String>,
    /// Pin one agent.
    #[arg(long, conflicts_with = "chain")]
    #[arg(add = crate::complete::agents())]
    pub agent: Option<String>,
    /// An explicit fallback chain, comma-separated: `gemini,claude`.
    #[arg(long, value_delimiter = ',')]
    #[arg(add = crate::complete::agents())]
    pub chain: Option<Vec<String>>,
    /// Write the result to this workspace-relative path instead of `.context/outbox/<id>.md`.
    #[arg(long, value_name = "PATH")]
    pub output: Option<String>,
    /// Run only after this task is done (repeatable).
    #[arg(long, value_name = "ID")]
    #[arg(add = crate::complete::tasks())]
    pub after: Vec<String>,
    /// The task id (default: generated from the prompt).
    #[arg(long)]
    pub id: Option<String>,
    /// A short title for status and progress.md (default: the prompt's first line).
    #[arg(long)]
    pub title: Option<String>,
    /// Higher runs first (default 0).
    #[arg(long, allow_hyphen_values = true, value_parser = parse_priority)]
    pub priority: Option<i64>,
    /// Wall-clock limit per attempt, e.g. `10m` (default: the agent's).
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// A file under `.context/` to include in the prompt (repeatable).
    #[arg(long, value_name = "FILE")]
    pub context: Vec<String>,
    /// A workspace file to include in the prompt (repeatable).
    #[arg(long = "file", value_name = "FILE")]
    pub files: Vec<String>,
    /// Run this workflow instead of a prompt (see `dirigent workflow list`).
    #[arg(long, conflicts_with_all = ["role", "agent", "chain"])]
    #[arg(add = crate::complete::workflows())]
    pub workflow: Option<String>,
    /// A workflow variable, `name=value` (repeatable; with `--workflow`).
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var, requires = "workflow")]
    pub vars: Vec<(String, String)>,
    /// Where its attempts work: `worktree` (a git worktree and branch of its own, checked and
    /// merged) or `shared` (the workspace itself; for a task that only answers). Default: a
    /// worktree in a git repository.
    #[arg(long, value_name = "worktree|shared", value_parser = parse_workdir)]
    pub workdir: Option<dirigent::workdir::Workdir>,
    /// Run in the worktree once the agent says done; the work passes only if it exits 0
    /// (repeatable; each one command, split into words as a shell would — quotes and
    /// backslashes, no variables or operators: `--verify "sh -c 'cargo test && cargo clippy'"`).
    #[arg(long, value_name = "COMMAND")]
    pub verify: Vec<String>,
    /// How its verified branch reaches its target: `auto`, `manual` (waits for `dirigent
    /// merge`) or `none`.
    #[arg(long, value_name = "auto|manual|none", value_parser = parse_merge)]
    pub merge: Option<dirigent::editing::MergeMode>,
    /// Follow the task: print progress on stderr and the result on stdout; exit 0 when done
    /// (or verified and waiting for `dirigent merge`), 1 when escalated, rejected or cancelled,
    /// 130 when interrupted (Ctrl-C; the task goes on) and 143 on SIGTERM.
    #[arg(long)]
    pub wait: bool,
    /// `--wait`, for at most DURATION (`30s`, `10m`): then it stops waiting with exit 124 (the
    /// task goes on, as after Ctrl-C). `--timeout` limits each attempt, not the wait.
    #[arg(long, value_name = "DURATION", value_parser = parse_wait_for)]
    pub wait_for: Option<std::time::Duration>,
    /// Print `{"id": …, "file": …}` instead of the bare id. With `--wait`: one object once
    /// the task settles instead — `id`, `file`, `state` (`done`, `failed`, `cancelled`,
    /// `merge_waiting`, `rejected`; `waiting` when the wait is interrupted) and what goes with
    /// it (`result` and `output`, `reason`, `report`, `branch`).
    #[arg(long)]
    pub json: bool,
}

/// A priority: a whole number (clap's own words were the parser's, `invalid digit found in
/// string`).
fn parse_priority(s: &str) -> Result<i64, String> {
    s.trim().parse().map_err(|_| {
        "expected a whole number, higher runs first (e.g. `10` or `-5`; default 0)".to_string()
    })
}

fn parse_workdir(s: &str) -> Result<dirigent::workdir::Workdir, String> {
    match s {
        "worktree" => Ok(dirigent::workdir::Workdir::Worktree),
        "shared" => Ok(dirigent::workdir::Workdir::Shared),
        _ => Err("expected `worktree` or `shared`".into()),
    }
}

fn parse_merge(s: &str) -> Result<dirigent::editing::MergeMode, String> {
    match s {
        "auto" => Ok(dirigent::editing::MergeMode::Auto),
        "manual" => Ok(dirigent::editing::MergeMode::Manual),
        "none" => Ok(dirigent::editing::MergeMode::None),
        _ => Err("expected `auto`, `manual` or `none`".into()),
    }
}

/// Parses `name=value`.
fn parse_var(s: &str) -> Result<(String, String), NotAVar> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(NotAVar(s.to_string())),
    }
}

/// A `--var` that is not `name=value`.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not `name=value`")]
pub struct NotAVar(String);

/// What `dirigent fleet` does besides showing the fleet.
#[derive(Debug, Subcommand)]
pub enum FleetAction {
    /// Print the NATS server's `authorization` block that confines each node to its own part
    /// of the fleet: its own tasks, records, heartbeat and outcomes; only workers pull tasks,
    /// and only for the agents given. One user per node, by its nkey (the `cluster.nkey` seed's
    /// public half). Paste it into `nats-server.conf`; its last lines are the roster
    /// (`cluster.nodes`) that turns on signed messages in every node's config
    /// (docs/cluster.md, "Permissions" and "Signed messages").
    Permissions {
        /// A node that only submits: `NAME=NKEY` (its `cluster.name` and public nkey, `U…`).
        #[arg(long = "node", value_name = "NAME=NKEY")]
        nodes: Vec<String>,
        /// A node that works: `NAME=NKEY`, or `NAME=NKEY:AGENT,AGENT` to let it pull only
        /// those agents' tasks.
        #[arg(long = "worker", value_name = "NAME=NKEY[:AGENTS]")]
        workers: Vec<String>,
    },
}

/// `--wait-for`'s value: a duration as everywhere (`30s`, `10m`).
fn parse_wait_for(text: &str) -> Result<std::time::Duration, String> {
    dirigent::duration::parse(text).map_err(|e| e.to_string())
}
