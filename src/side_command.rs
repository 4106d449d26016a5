//! Side commands: a workflow loop's evaluator and the `on_escalate` hook. They run like agents
//! do — in the workspace, in a process group of their own, stdin from /dev/null, output to a
//! log below `.context/` — bounded by a time limit and by the daemon's stop.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::process_group::{GroupGuard, terminate_group};
use crate::workspace::Workspace;

/// How a supervised side command (an `on_escalate` hook, a loop's evaluator) ended.
pub enum CommandEnd {
    Exited(std::process::ExitStatus),
    TimedOut,
    /// The daemon is stopping (or its task was cancelled): the command's group was terminated
    /// before it ended.
    Stopped,
    CouldNotStart(String),
}

/// What bounds a side command: its time `limit`, the daemon's stop and its task's cancel —
/// when `stop` turns true (or its sender goes), or `cancel` says a cause, the group gets
/// SIGTERM, then SIGKILL after `grace`.
pub struct SideLimits {
    pub limit: Duration,
    pub stop: watch::Receiver<bool>,
    /// The attempt's stop (`dirigent cancel`), for a command run as part of one.
    pub cancel: Option<watch::Receiver<Option<crate::judge::StopCause>>>,
    pub grace: Duration,
    /// Where it runs, and variables it gets: a task's worktree for `verify`; `None` is the
    /// workspace.
    pub dir: Option<(std::path::PathBuf, Vec<(String, String)>)>,
    /// The task it runs for (a `verify`, a tree's `setup`, a loop's evaluator), given to it as
    /// `DIRIGENT_TASK_ID`: a helper it starts with `setsid` is then its own while it runs — left
    /// alone by the sweep after another task's attempt — and killed by its own sweep.
    pub task: Option<String>,
}

/// Runs a side command in the workspace the way attempts run: its own process group, stdin from
/// /dev/null, stdout and stderr into `log`, the whole group killed after `limit`, when the
/// daemon stops, and once it is done — and when this future is dropped, so nothing it started
/// outlives it.
pub async fn run_logged(
    ws: &Workspace,
    argv: &[String],
    log: &std::path::Path,
    limits: SideLimits,
) -> CommandEnd {
    let SideLimits {
        limit,
        mut stop,
        cancel,
        grace,
        dir,
        task,
    } = limits;
    let (out, err) = match open_log(ws, log).and_then(|f| Ok((f.try_clone()?, f))) {
        Ok((o, e)) => (Stdio::from(o), Stdio::from(e)),
        Err(e) => {
            return CommandEnd::CouldNotStart(format!("cannot create `{}`: {e}", log.display()));
        }
    };
    let mut cmd = crate::reaper::command(std::ffi::OsStr::new(&argv[0]), &argv[1..], false, grace);
    match &dir {
        Some((path, env)) => {
            cmd.current_dir(path).envs(env.iter().map(|(k, v)| (k, v)));
        }
        None => {
            cmd.current_dir(ws.root());
        }
    }
    // Found (and killed) by the next start if the daemon dies while it runs.
    cmd.env("DIRIGENT_WORKSPACE", ws.root());
    if let Some(task) = &task {
        cmd.env("DIRIGENT_TASK_ID", task);
    }
    // Held until it is reaped, and let go before its own sweep (as an attempt's is).
    let running = task.as_deref().map(crate::reaper::RunningTask::new);
    cmd.stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    let (mut child, registered, gate) = match crate::reaper::spawn(&mut cmd) {
        Ok(c) => c,
        Err(e) => return CommandEnd::CouldNotStart(format!("`{}` could not start: {e}", argv[0])),
    };
    let Some(pgid) = child.id().map(|p| Pid::from_raw(p as i32)) else {
        return CommandEnd::CouldNotStart(format!("`{}` ended before it was watched", argv[0]));
    };
    let _guard = GroupGuard(Some(pgid));
    drop(gate.open().await);
    let stopping = async {
        let cancelled = async {
            match cancel {
                Some(mut cancel) => drop(cancel.wait_for(Option::is_some).await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // A dropped sender is a stop too: the daemon is going.
            _ = stop.wait_for(|s| *s) => {}
            () = cancelled => {}
        }
    };
    let end = tokio::select! {
        status = tokio::time::timeout(limit, child.wait()) => match status {
            Ok(Ok(s)) => CommandEnd::Exited(s),
            Ok(Err(e)) => CommandEnd::CouldNotStart(format!("cannot wait for `{}`: {e}", argv[0])),
            Err(_) => CommandEnd::TimedOut,
        },
        () = stopping => {
            terminate_group(pgid, &mut child, grace).await;
            CommandEnd::Stopped
        }
    };
    // Nothing the command started outlives it; the guard does the same on every other way out.
    let _ = killpg(pgid, Signal::SIGKILL);
    let _ = child.wait().await;
    // Reaped: from here on the sweep may reap anything else, and what left the group
    // (`setsid`) and was adopted by the daemon goes too.
    drop(running);
    drop(registered);
    let root = ws.root().to_path_buf();
    let leader = pgid.as_raw() as u32;
    let _ = tokio::task::spawn_blocking(move || {
        crate::reaper::sweep(Some(&crate::reaper::Leftovers {
            workspace: &root,
            pgid: leader,
            // What it left that names another running task is that task's.
            task: Some(task.as_deref().unwrap_or("")),
        }))
    })
    .await;
    end
}

/// Creates a side command's log below `.context/` without following a link on the way (an agent
/// could plant one at the log's name to have a file of its choosing truncated).
fn open_log(ws: &Workspace, log: &std::path::Path) -> std::io::Result<std::fs::File> {
    let rel = log.strip_prefix(ws.context()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("`{}` is not below `.context/`", log.display()),
        )
    })?;
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let (name, dirs) = parts
        .split_last()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
    ws.open_context()?
        .descend(dirs, Some(0o700))?
        .create_fresh(name, 0o600)
}
