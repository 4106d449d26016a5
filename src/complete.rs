//! Shell completion that knows the workspace: besides subcommands and flags, it offers the
//! configured agents and roles, the workflows, and the task ids, read when the user presses Tab
//! (a static script could not know them). The shell's script calls `COMPLETE=<shell> dirigent`
//! to ask; [`register`] prints that script for `dirigent completions SHELL`.

use clap_complete::engine::{ArgValueCandidates, CompletionCandidate};
use dirigent::config::Config;
use dirigent::workspace::Workspace;

/// The environment variable the completion script sets when it asks the binary.
pub const VAR: &str = "COMPLETE";

/// Answers a completion request and exits, when this process is one; otherwise returns.
pub fn answer_if_asked() {
    clap_complete::CompleteEnv::with_factory(<crate::cli::Cli as clap::CommandFactory>::command)
        .var(VAR)
        .complete();
}

/// Prints the script that makes `shell` ask this binary for completions.
pub fn register(shell: clap_complete::Shell, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let name = shell.to_string();
    let shells = clap_complete::env::Shells::builtins();
    let completer = shells
        .completer(&name)
        .ok_or_else(|| std::io::Error::other(format!("no completion support for `{name}`")))?;
    completer.write_registration(VAR, "dirigent", "dirigent", "dirigent", out)
}

/// The workspace a completion is for: `DIRIGENT_ROOT` or the nearest `.context/` above.
fn workspace() -> Option<Workspace> {
    let root = std::env::var_os("DIRIGENT_ROOT").map(std::path::PathBuf::from);
    Workspace::discover(root.as_deref()).ok()
}

fn config() -> Option<Config> {
    Config::load(&workspace()?.config()).ok()
}

fn candidates(names: impl IntoIterator<Item = String>) -> Vec<CompletionCandidate> {
    names.into_iter().map(CompletionCandidate::new).collect()
}

/// Configured agents.
pub fn agents() -> ArgValueCandidates {
    ArgValueCandidates::new(|| {
        candidates(
            config()
                .map(|c| c.agents.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default(),
        )
    })
}

/// Configured and standard roles.
pub fn roles() -> ArgValueCandidates {
    ArgValueCandidates::new(|| candidates(config().map(|c| c.role_names()).unwrap_or_default()))
}

/// Built-in and `.context/workflows/` workflows.
pub fn workflows() -> ArgValueCandidates {
    ArgValueCandidates::new(|| {
        let Some(ws) = workspace() else {
            return Vec::new();
        };
        candidates(
            dirigent::workflow::discover(&ws.workflows())
                .map(|defs| defs.into_iter().map(|d| d.name).collect::<Vec<_>>())
                .unwrap_or_default(),
        )
    })
}

/// Task ids the ledger knows, newest first, and the ones waiting in the inbox.
pub fn tasks() -> ArgValueCandidates {
    ArgValueCandidates::new(|| {
        let Some(ws) = workspace() else {
            return Vec::new();
        };
        let key = dirigent::integrity::load(&ws).ok().flatten();
        let mut ids: Vec<(u64, String)> =
            dirigent::compact::load(&ws, None, false, key.as_ref(), false)
                .map(|l| {
                    l.book
                        .iter()
                        .map(|t| (t.received_ms, t.id().to_string()))
                        .collect()
                })
                .unwrap_or_default();
        ids.sort_by_key(|(received, _)| std::cmp::Reverse(*received));
        let mut names: Vec<String> = ids.into_iter().map(|(_, id)| id).collect();
        for c in dirigent::inbox::scan(&ws.inbox()).unwrap_or_default() {
            let (stem, _) = dirigent::fsutil::split_name(&c.name);
            let id = dirigent::task::id_from_stem(stem);
            if !names.contains(&id) {
                names.push(id);
            }
        }
        candidates(names)
    })
}
