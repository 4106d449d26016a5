//! Where an attempt works: in a git worktree of its own (`worktree`), or in the workspace
//! itself (`shared`). This is the decision only — a pure function of what the task, its workflow
//! phase, its role, its agent and the config say, and of whether the workspace is a git
//! repository — tested as a case table; making and merging worktrees is `git.rs`'s part.
//!
//! The first of these that says anything wins: the task, the workflow phase, the role, the
//! agent, the config's default. With none: `worktree` in a git repository — except for steps that
//! only produce text (ensemble proposals, judges, distill steps), which need no tree of their
//! own — and `shared` outside one. The engine asks it at each attempt's start
//! (`engine/worktrees.rs`); acceptance asks it for the task's and the config's word, so that
//! `workdir: worktree` outside a repository is refused at once.

use serde::{Deserialize, Serialize};

/// Where an attempt works.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Workdir {
    /// A git worktree of the task's own, on its branch `dirigent/<id>`.
    Worktree,
    /// The workspace itself, shared with every other attempt.
    Shared,
}

/// What each level says, from the most specific.
#[derive(Clone, Copy, Debug, Default)]
pub struct Asked {
    pub task: Option<Workdir>,
    pub phase: Option<Workdir>,
    pub role: Option<Workdir>,
    pub agent: Option<Workdir>,
    pub config: Option<Workdir>,
}

/// Why an attempt cannot work where it was asked to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "`workdir: worktree` (from the {from}) needs a git repository, and this workspace is not one; run `git init`, or set `workdir: shared`"
)]
pub struct NeedsRepository {
    /// Which level asked: `task`, `workflow phase`, `role`, `agent` or `config`.
    pub from: &'static str,
}

/// Decides where an attempt works (see the module doc). `text_only`: the step only produces
/// text (an ensemble proposal, a judge, a distill step).
pub fn decide(
    asked: Asked,
    in_repository: bool,
    text_only: bool,
) -> Result<Workdir, NeedsRepository> {
    let levels = [
        ("task", asked.task),
        ("workflow phase", asked.phase),
        ("role", asked.role),
        ("agent", asked.agent),
        ("config", asked.config),
    ];
    match levels.iter().find_map(|(from, w)| w.map(|w| (*from, w))) {
        Some((from, Workdir::Worktree)) if !in_repository => Err(NeedsRepository { from }),
        Some((_, w)) => Ok(w),
        None if in_repository && !text_only => Ok(Workdir::Worktree),
        None => Ok(Workdir::Shared),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Workdir::{Shared, Worktree};

    #[test]
    fn decision_table() {
        let none = Asked::default();
        let task = |w| Asked {
            task: Some(w),
            ..none
        };
        let config = |w| Asked {
            config: Some(w),
            ..none
        };
        let agent_and_role = Asked {
            agent: Some(Worktree),
            role: Some(Shared),
            ..none
        };
        let phase_over_agent = Asked {
            phase: Some(Shared),
            agent: Some(Worktree),
            ..none
        };
        // (what, asked, in a repository, text only, expected)
        type Case = (
            &'static str,
            Asked,
            bool,
            bool,
            Result<Workdir, NeedsRepository>,
        );
        let cases: &[Case] = &[
            (
                "nothing asked, a repository",
                none,
                true,
                false,
                Ok(Worktree),
            ),
            ("nothing asked, a text step", none, true, true, Ok(Shared)),
            (
                "nothing asked, no repository",
                none,
                false,
                false,
                Ok(Shared),
            ),
            (
                "the task asks shared",
                task(Shared),
                true,
                false,
                Ok(Shared),
            ),
            (
                "the task asks a worktree for a text step",
                task(Worktree),
                true,
                true,
                Ok(Worktree),
            ),
            (
                "the config's default",
                config(Shared),
                true,
                false,
                Ok(Shared),
            ),
            (
                "the role before the agent",
                agent_and_role,
                true,
                false,
                Ok(Shared),
            ),
            (
                "the phase before the agent",
                phase_over_agent,
                true,
                false,
                Ok(Shared),
            ),
            (
                "a worktree asked outside a repository",
                config(Worktree),
                false,
                false,
                Err(NeedsRepository { from: "config" }),
            ),
            (
                "the task's worktree outside a repository",
                task(Worktree),
                false,
                false,
                Err(NeedsRepository { from: "task" }),
            ),
        ];
        for (what, asked, repo, text, want) in cases {
            assert_eq!(
                decide(*asked, *repo, *text),
                *want,
                "{what}: expected {want:?}"
            );
        }
        let err = decide(task(Worktree), false, false)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "`workdir: worktree` (from the task) needs a git repository, and this workspace is not one; run `git init`, or set `workdir: shared`",
            "expected the error to say who asked and what to do"
        );
    }
}
