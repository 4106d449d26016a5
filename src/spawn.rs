//! Spawning and supervising one attempt: the child runs in its own process group with argv from
//! the agent's template (never a shell), stdin = the prompt or `/dev/null`, stdout and stderr
//! streamed to `runs/<id>/<n>-<agent>.stdout|.stderr` while only a bounded head/tail sample stays
//! in memory. The supervisor enforces the wall-clock `timeout` and the `idle_timeout`, and stops
//! the whole group (SIGTERM, grace, SIGKILL) on timeout, shutdown and drop.
//!
//! The engine spawns [`run_attempt`] as a task and holds the other half of its `stop` channel.
//! The attempt writes nothing to the ledger itself: the engine's `on_start` closure records
//! `attempt_started` (the agent runs only once that is written), and the engine records
//! `attempt_finished` from the [`AttemptReport`] it gets back.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::sleep_until;

use crate::config::{Agent, ArgvValues};
use crate::judge::{self, Evidence, OutputSample, StopCause, Verdict};
use crate::preset::{OutputFormat, PromptMode};
use crate::process_group::{GroupGuard, boot_id, proc_start_ticks, terminate_group};
use crate::workspace::Workspace;

/// Structured output larger than this is not parsed (the capture file still has all of it).
const MAX_STRUCTURED_BYTES: u64 = 32 * 1024 * 1024;

/// The attempt before this one, made available to the next agent in the chain.
#[derive(Clone, Debug)]
pub struct PreviousAttempt {
    pub agent: String,
    pub class: judge::Class,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// Everything needed to run one attempt.
pub struct AttemptPlan {
    pub task_id: String,
    pub attempt: u32,
    pub agent: Arc<Agent>,
    pub prompt: String,
    pub workspace: Workspace,
    pub timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub kill_grace: Duration,
    pub leak_timeout: Duration,
    pub previous: Option<PreviousAttempt>,
    /// Variables set for this attempt only (an isolated instance's state directory, where its
    /// worktree is).
    pub extra_env: Vec<(String, String)>,
    /// Where the agent runs: its task's worktree; `None` is the workspace.
    pub workdir: Option<PathBuf>,
    /// The most bytes it may print, stdout and stderr together (`max_output`).
    pub max_output: u64,
}

impl AttemptPlan {
    fn file(&self, ext: &str) -> PathBuf {
        self.workspace
            .run_dir(&self.task_id)
            .join(crate::workspace::attempt_file(
                self.attempt,
                &self.agent.name,
                ext,
            ))
    }
    pub fn stdout_path(&self) -> PathBuf {
        self.file("stdout")
    }
    pub fn stderr_path(&self) -> PathBuf {
        self.file("stderr")
    }
}

/// Facts about the started child, recorded in `attempt_started`.
#[derive(Clone, Debug)]
pub struct StartInfo {
    pub pid: u32,
    pub pgid: u32,
    pub start_ticks: Option<u64>,
    pub boot_id: Option<String>,
    pub argv0: String,
}

/// What a finished attempt produced.
#[derive(Debug)]
pub struct AttemptReport {
    /// Set when a resource ran out (disk space, descriptors, processes): what ran out and
    /// where. The attempt is not the agent's failure; the engine pauses and runs it again.
    pub exhausted: Option<String>,
    /// Whether a child was started at all (an attempt that never ran records nothing when a
    /// resource ran out).
    pub ran: bool,
    /// The stdout capture, open for reading: the result is copied from this descriptor, not
    /// from a path an agent could have swapped.
    pub stdout_capture: Option<std::fs::File>,
    pub verdict: Verdict,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stopped: Option<StopCause>,
    /// The strongest signal the supervisor had to send (SIGTERM, or SIGKILL after the grace).
    pub kill_signal: Option<i32>,
    pub leaked: bool,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub duration: Duration,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    /// For an attempt in a worktree: what it left there (see `engine::worktrees`).
    pub work: Option<crate::ledger::WorkChecked>,
}

impl AttemptReport {
    /// The report of an attempt that got no child, or whose end the daemon never saw (it
    /// stopped meanwhile): nothing ran under watch, so nothing is captured.
    pub fn not_run(
        verdict: Verdict,
        exhausted: Option<String>,
        duration: Duration,
        stdout_path: PathBuf,
        stderr_path: PathBuf,
    ) -> Self {
        AttemptReport {
            exhausted,
            ran: false,
            stdout_capture: None,
            verdict,
            exit_code: None,
            signal: None,
            stopped: None,
            kill_signal: None,
            leaked: false,
            stdout_bytes: 0,
            stderr_bytes: 0,
            duration,
            stdout_path,
            stderr_path,
            work: None,
        }
    }
}

/// Runs one attempt to its end. `on_start` is called once the child exists, and the agent runs
/// only when its future resolves (the engine resolves it once `attempt_started` is written); `stop` receiving a cause stops the attempt
/// for that cause, and its sender being dropped stops it as a shutdown.
pub async fn run_attempt<F, Fut>(
    plan: &AttemptPlan,
    mut stop: watch::Receiver<Option<StopCause>>,
    on_start: F,
) -> AttemptReport
where
    F: FnOnce(StartInfo) -> Fut,
    Fut: Future<Output = ()>,
{
    let stdout_path = plan.stdout_path();
    let stderr_path = plan.stderr_path();
    let began = Instant::now();
    // An attempt that never got a child: nothing ran, so nothing is captured.
    let not_run = |verdict: Verdict, exhausted: Option<String>| {
        AttemptReport::not_run(
            verdict,
            exhausted,
            began.elapsed(),
            stdout_path.clone(),
            stderr_path.clone(),
        )
    };
    let not_started = |why: &str, e: &std::io::Error| {
        not_run(
            Verdict::fail(judge::Class::Interrupted, format!("{why}: {e}")),
            Some(format!(
                "{} ({why}: {e})",
                crate::fsutil::exhausted(e).unwrap_or("a resource ran out")
            )),
        )
    };
    let spawn_failed = |reason: String| {
        let evidence = Evidence {
            spawn_error: Some(&reason),
            ..Default::default()
        };
        not_run(judge::judge(&plan.agent, &evidence), None)
    };

    let agent = &plan.agent;
    let Some(program) = agent.resolve(plan.workspace.root()) else {
        let hint = agent
            .preset
            .map(|p| format!("; install it with `{}`", p.install_hint))
            .unwrap_or_default();
        return spawn_failed(format!(
            "`{}` is not installed (not found on PATH){hint}",
            agent.program()
        ));
    };
    // A CLI with no way to log in cannot succeed: say so now, not after its network retries.
    if let Some(rule) = agent.preset.and_then(|p| p.credentials.as_ref())
        && agent.preflight
    {
        let var = |name: &str| {
            plan.extra_env
                .iter()
                .chain(agent.env.iter())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(name).ok())
        };
        if let crate::credentials::Found::Missing(looked) =
            crate::credentials::check(rule, &var, plan.workspace.root())
        {
            let hint = agent.preset.map(|p| p.login_hint).unwrap_or_default();
            return not_run(
                Verdict::fail(
                    judge::Class::Auth,
                    format!(
                        "not logged in: none of its credentials exists ({}); {hint}, then `dirigent agents enable {}` (not started)",
                        crate::credentials::summary(&looked),
                        agent.name
                    ),
                ),
                None,
            );
        }
    }
    let prompt_file = plan.file("prompt");
    // Everything below `runs/` is reached without following links: an agent of an earlier
    // attempt may have planted one at any of these names.
    let prepared = (|| {
        let dir = plan
            .workspace
            .open_sub(&format!("runs/{}", plan.task_id))
            .map_err(|e| ("cannot create the run directory", e))?;
        // The prompt is always kept next to the output, so a user can see exactly what was sent.
        dir.write_new(&file_name(&prompt_file), plan.prompt.as_bytes(), 0o600)
            .map_err(|e| ("cannot write the prompt file", e))?;
        let out = dir
            .create_fresh(&file_name(&stdout_path), 0o600)
            .map_err(|e| ("cannot create the stdout capture", e))?;
        let err = dir
            .create_fresh(&file_name(&stderr_path), 0o600)
            .map_err(|e| ("cannot create the stderr capture", e))?;
        let reader = out
            .try_clone()
            .map_err(|e| ("cannot keep the stdout capture open", e))?;
        Ok::<_, (&str, std::io::Error)>((out, err, reader))
    })();
    let (out_file, err_file, stdout_reader) = match prepared {
        Ok(files) => files,
        Err((why, e)) if crate::fsutil::exhausted(&e).is_some() => return not_started(why, &e),
        Err((why, e)) => return spawn_failed(format!("{why}: {e}")),
    };

    let mut argv = agent.argv(&ArgvValues {
        prompt: &plan.prompt,
        prompt_file: &prompt_file.to_string_lossy(),
        task_id: &plan.task_id,
        workspace: &plan.workspace.root().to_string_lossy(),
    });
    argv[0] = program.to_string_lossy().into_owned();
    let stdin_prompt = agent.prompt == PromptMode::Stdin;
    let mut cmd = crate::reaper::command(
        program.as_os_str(),
        &argv[1..],
        stdin_prompt,
        plan.kill_grace,
    );
    cmd.current_dir(plan.workdir.as_deref().unwrap_or(plan.workspace.root()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // The service manager's sockets are the daemon's, never an agent's.
    cmd.env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("WATCHDOG_PID")
        .env_remove("WATCHDOG_USEC");
    for (k, v) in agent.env.iter().chain(&plan.extra_env) {
        cmd.env(k, v);
    }
    cmd.env("DIRIGENT_TASK_ID", &plan.task_id)
        .env("DIRIGENT_ATTEMPT", plan.attempt.to_string())
        .env("DIRIGENT_AGENT", &agent.name)
        .env("DIRIGENT_CONTEXT_DIR", plan.workspace.context())
        .env("DIRIGENT_WORKSPACE", plan.workspace.root())
        .env("DIRIGENT_PROMPT_FILE", &prompt_file);
    if let Some(prev) = &plan.previous {
        cmd.env("DIRIGENT_PREVIOUS_AGENT", &prev.agent)
            .env("DIRIGENT_PREVIOUS_CLASS", prev.class.as_str())
            .env("DIRIGENT_PREVIOUS_STDOUT", &prev.stdout)
            .env("DIRIGENT_PREVIOUS_STDERR", &prev.stderr);
    }

    // Its processes that leave the group (a helper started with `setsid`) are not another
    // attempt's leftovers while it runs.
    let running = crate::reaper::RunningTask::new(&plan.task_id);
    let (mut child, registered, gate) = match crate::reaper::spawn(&mut cmd) {
        Ok(c) => c,
        Err(e) if crate::fsutil::exhausted(&e).is_some() => {
            return not_started(&format!("cannot start `{}`", argv[0]), &e);
        }
        // Too long a command line (a long prompt as `prompt: arg`): the agent's, not the
        // supervisor's.
        Err(e) if e.raw_os_error() == Some(nix::libc::E2BIG) => {
            return spawn_failed(format!(
                "cannot start `{}`: its command line is too long for the system ({e}); a prompt this long needs `prompt: stdin` or `prompt: file`",
                argv[0]
            ));
        }
        // The agent's own program is started by the supervisor, which reports its failure; an
        // error here is the supervisor's (this binary) — not the agent's.
        Err(e) => {
            return spawn_failed(format!(
                "cannot start the attempt's supervisor `{}` for `{}`: {e}; if dirigent was reinstalled, restart the daemon",
                crate::reaper::supervisor_program().to_string_lossy(),
                argv[0]
            ));
        }
    };
    let pid = child.id().unwrap_or(0);
    // process_group(0): the child leads a new group whose id is its pid.
    let pgid = Pid::from_raw(pid as i32);
    let mut guard = GroupGuard(Some(pgid));

    on_start(StartInfo {
        pid,
        pgid: pid,
        start_ticks: proc_start_ticks(pid),
        boot_id: boot_id(),
        argv0: argv[0].clone(),
    })
    .await;
    // Its start is written: the agent may run now.
    let stdin = gate.open().await;
    // The agent's limits (`timeout`, `idle_timeout`) and its duration count from here, when it
    // may run. Recording its start is the daemon's work, not the agent's: the ledger writer may
    // be inside the fsync of an earlier batch for seconds on a busy disk, and an agent must not
    // be judged idle or timed out for that.
    let started = Instant::now();
    if let (Some(mut stdin), true) = (stdin, stdin_prompt) {
        let prompt = plan.prompt.clone().into_bytes();
        // An agent that never reads stdin must not block us: write in the background and
        // ignore EPIPE.
        tokio::spawn(async move {
            let _ = stdin.write_all(&prompt).await;
            let _ = stdin.shutdown().await;
        });
    }

    // Output activity, in milliseconds since `started`, for the idle timeout.
    let activity = Arc::new(AtomicU64::new(0));
    let out_sample = Arc::new(Mutex::new(OutputSample::default()));
    let err_sample = Arc::new(Mutex::new(OutputSample::default()));
    let (out_progress, err_progress) = progress_rules(agent.format);
    let capture_failed = Arc::new(std::sync::OnceLock::new());
    // Both capture tasks count against one limit; the first past it wakes the loop below.
    let limit = OutputLimit {
        bytes: plan.max_output,
        printed: Arc::new(AtomicU64::new(0)),
        wake: Arc::new(tokio::sync::Notify::new()),
    };
    // Both capture tasks feed one watcher; the first conclusive line wakes the loop below.
    let watching = (!agent.fatal.is_empty()).then(|| Watching {
        watcher: Arc::new(Mutex::new(crate::watch::Watcher::new(
            agent.fatal.clone(),
            agent.format,
        ))),
        found: Arc::new(std::sync::OnceLock::new()),
        wake: Arc::new(tokio::sync::Notify::new()),
    });
    let mut out_task = tokio::spawn(capture(
        child.stdout.take().expect("piped"),
        out_file,
        capture_failed.clone(),
        out_sample.clone(),
        Progress {
            rule: out_progress,
            activity: activity.clone(),
            started,
        },
        watching.clone().map(|w| (w, crate::watch::Stream::Stdout)),
        limit.clone(),
    ));
    let mut err_task = tokio::spawn(capture(
        child.stderr.take().expect("piped"),
        err_file,
        capture_failed.clone(),
        err_sample.clone(),
        Progress {
            rule: err_progress,
            activity: activity.clone(),
            started,
        },
        watching.clone().map(|w| (w, crate::watch::Stream::Stderr)),
        limit.clone(),
    ));

    let at = |d: Duration| crate::duration::later(tokio::time::Instant::from_std(started), d);
    let deadline = at(plan.timeout);
    let mut stopped = None;
    let exit = loop {
        let idle_at = plan.idle_timeout.map(|idle| {
            at(Duration::from_millis(activity.load(Ordering::Relaxed)).saturating_add(idle))
        });
        tokio::select! {
            status = child.wait() => break status.ok(),
            _ = async { watching.as_ref().expect("guarded").wake.notified().await }, if watching.is_some() => {
                stopped = Some(StopCause::Conclusive);
                break None;
            }
            () = limit.wake.notified() => {
                stopped = Some(StopCause::OutputLimit);
                break None;
            }
            _ = sleep_until(deadline) => {
                stopped = Some(StopCause::Timeout);
                break None;
            }
            _ = sleep_until(idle_at.unwrap_or(deadline)), if idle_at.is_some() => {
                // Output may have arrived while we slept: re-arm unless truly idle.
                let last = started + Duration::from_millis(activity.load(Ordering::Relaxed));
                if last.elapsed() >= plan.idle_timeout.unwrap_or_default() {
                    stopped = Some(StopCause::Idle);
                    break None;
                }
            }
            changed = stop.changed() => {
                let cause = if changed.is_err() { Some(StopCause::Shutdown) } else { *stop.borrow() };
                if cause.is_some() {
                    stopped = cause;
                    break None;
                }
            }
        }
    };
    let mut kill_signal = None;
    let exit = match exit {
        Some(status) => Some(status),
        None => {
            let (status, sig) = terminate_group(pgid, &mut child, plan.kill_grace).await;
            kill_signal = Some(sig as i32);
            status
        }
    };
    let duration = started.elapsed();

    // The agent has exited, but a grandchild may still hold its stdout open. Give the pipes a
    // short time to reach EOF, then kill whatever is left of the group — at once on a stop (a
    // cancel, the daemon's shutdown): that waits for nobody's leftovers.
    let mut leaked;
    let stop_asked = async {
        loop {
            if stop.borrow_and_update().is_some() || stop.changed().await.is_err() {
                return;
            }
        }
    };
    // Each capture task is waited for once to its end: a finished `JoinHandle` must not be
    // polled again (it panics), and a wait cut short by the leak timeout or a stop is taken up
    // again below.
    let (mut out_ended, mut err_ended) = (false, false);
    let eof = tokio::select! {
        biased;
        eof = tokio::time::timeout(plan.leak_timeout, captures_ended(
            [(&mut out_task, &mut out_ended), (&mut err_task, &mut err_ended)],
        )) => {
            leaked = eof.is_err();
            eof.is_ok()
        }
        // A leak only if something of the group is still there to kill.
        () = stop_asked => {
            leaked = killpg(pgid, Signal::SIGKILL).is_ok();
            false
        }
    };
    if !eof {
        let _ = killpg(pgid, Signal::SIGKILL);
        let after_kill = tokio::time::timeout(
            Duration::from_secs(2),
            captures_ended([
                (&mut out_task, &mut out_ended),
                (&mut err_task, &mut err_ended),
            ]),
        )
        .await;
        if after_kill.is_err() {
            // Something outside the group (it called setsid) holds the pipe: stop reading.
            out_task.abort();
            err_task.abort();
        }
    }
    // Members of the group that closed their output but live on are leaks too.
    if killpg(pgid, Signal::SIGKILL).is_ok() {
        leaked = true;
    }
    guard.disarm();
    // tokio has reaped the child: from here on the sweep may reap anything else.
    drop(registered);
    // Processes that left the group (setsid) but were adopted by the daemon, and zombies.
    drop(running);
    let workspace = plan.workspace.root().to_path_buf();
    let task = plan.task_id.clone();
    let escaped = tokio::task::spawn_blocking(move || {
        crate::reaper::sweep(Some(&crate::reaper::Leftovers {
            workspace: &workspace,
            pgid: pid,
            task: Some(&task),
        })) + crate::reaper::sweep_cgroup(Some(&task))
    })
    .await
    .unwrap_or(0);
    if escaped > 0 {
        tracing::warn!(
            task = %plan.task_id,
            agent = %agent.name,
            attempt = plan.attempt,
            "killed {escaped} process(es) the attempt left behind outside its process group"
        );
        leaked = true;
    }

    let stdout = std::mem::take(&mut *out_sample.lock().expect("sample lock"));
    let stderr = std::mem::take(&mut *err_sample.lock().expect("sample lock"));
    let full = if agent.format != OutputFormat::Plain && stdout.total <= MAX_STRUCTURED_BYTES {
        read_capture(&stdout_reader).map(|b| String::from_utf8_lossy(&b).into_owned())
    } else {
        None
    };
    // A capture that could not be written in full is not the agent's doing: when the disk (or
    // the descriptors) ran out, the attempt runs again once there is room.
    let mut exhausted = None;
    // Any other write failure (a file-size limit, an I/O error) cuts the result short: judged.
    let mut capture_cut = None;
    // Past the limit and ended on its own before the stop: its capture is cut all the same.
    if stopped.is_none() && limit.printed.load(Ordering::Relaxed) > limit.bytes {
        stopped = Some(StopCause::OutputLimit);
    }
    if let Some(failure) = capture_failed.get() {
        match failure.exhausted {
            Some(what) if !matches!(stopped, Some(StopCause::Cancel | StopCause::Shutdown)) => {
                stopped = Some(StopCause::Exhausted);
                exhausted = Some(format!("{what} (saving its output: {})", failure.error));
            }
            Some(_) => {}
            None => {
                tracing::warn!(
                    task = %plan.task_id,
                    attempt = plan.attempt,
                    "the attempt's output could not be saved in full: {}",
                    failure.error
                );
                capture_cut = Some(failure.error.to_string());
            }
        }
    }
    use std::os::unix::process::ExitStatusExt;
    let exit_code = exit.and_then(|s| s.code());
    let signal = exit.and_then(|s| s.signal());
    let (stdout_bytes, stderr_bytes) = (stdout.total, stderr.total);
    // The supervisor could not start the program (it vanished or lost its execute bit after
    // it was found): it says so on stderr and exits 127.
    let spawn_error = (exit_code == Some(127)
        && stderr
            .head
            .starts_with(crate::reaper::SPAWN_FAILED.as_bytes()))
    .then(|| String::from_utf8_lossy(&stderr.head).trim().to_string());
    let verdict = judge::judge_at(
        agent,
        &Evidence {
            spawn_error: spawn_error.as_deref(),
            stopped,
            exit_code,
            signal,
            stdout,
            stderr,
            stdout_full: full.as_deref(),
            conclusive: watching.as_ref().and_then(|w| w.found.get().cloned()),
            // The limits that applied are this attempt's (a task may set its own).
            timeout: Some(plan.timeout),
            idle_timeout: plan.idle_timeout,
            capture_cut: capture_cut.as_deref(),
            output_limit: plan.max_output,
        },
        crate::ledger::now_ms(),
    );
    AttemptReport {
        exhausted,
        ran: true,
        stdout_capture: Some(stdout_reader),
        verdict,
        exit_code,
        signal,
        stopped,
        kill_signal,
        leaked,
        stdout_bytes,
        stderr_bytes,
        duration,
        stdout_path,
        stderr_path,
        work: None,
    }
}

/// The report of an attempt that ended before the daemon stopped, made again from what it
/// left: its capture files (read without following links) and the exit it recorded, judged
/// again. Recovery uses it to settle a successful attempt whose `done` was never recorded.
pub fn report_from_capture(
    ws: &Workspace,
    task_id: &str,
    a: &crate::state::AttemptSummary,
    agent: &Agent,
) -> AttemptReport {
    use std::io::Read;
    let dir = ws.run_dir(task_id);
    let (out_name, err_name) = (
        crate::workspace::attempt_file(a.n, &a.agent, "stdout"),
        crate::workspace::attempt_file(a.n, &a.agent, "stderr"),
    );
    let run_dir = ws.open_sub(&format!("runs/{task_id}")).ok();
    let open = |name: &str| run_dir.as_ref().and_then(|d| d.open_regular(name).ok());
    let sample = |file: Option<&std::fs::File>| {
        let mut sample = OutputSample::default();
        if let Some(mut f) = file {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sample.push(&buf[..n]);
            }
        }
        sample
    };
    let stdout_file = open(&out_name);
    let stdout = sample(stdout_file.as_ref());
    let stderr = sample(open(&err_name).as_ref());
    let full = match &stdout_file {
        Some(f) if agent.format != OutputFormat::Plain && stdout.total <= MAX_STRUCTURED_BYTES => {
            read_capture(f).map(|b| String::from_utf8_lossy(&b).into_owned())
        }
        _ => None,
    };
    let (stdout_bytes, stderr_bytes) = (stdout.total, stderr.total);
    let verdict = judge::judge_at(
        agent,
        &Evidence {
            spawn_error: None,
            stopped: None,
            exit_code: a.exit_code,
            signal: a.signal,
            stdout,
            stderr,
            stdout_full: full.as_deref(),
            ..Default::default()
        },
        crate::ledger::now_ms(),
    );
    AttemptReport {
        exhausted: None,
        ran: true,
        stdout_capture: stdout_file,
        verdict,
        exit_code: a.exit_code,
        signal: a.signal,
        stopped: None,
        kill_signal: None,
        leaked: false,
        stdout_bytes,
        stderr_bytes,
        duration: Duration::from_millis(a.duration_ms),
        stdout_path: dir.join(out_name),
        stderr_path: dir.join(err_name),
        work: None,
    }
}

/// The last component of a path built by [`AttemptPlan::file`].
fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What counts as progress for the idle timeout, per stream.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ProgressRule {
    /// Any output.
    AnyOutput,
    /// Nothing on this stream (its logs say nothing about progress).
    Never,
    /// JSON-lines events, except `{"type":"error"…}` ones: codex reports "Reconnecting…" as
    /// error events every few seconds forever when the network is down, which is not progress.
    EventsExceptErrors,
}

fn progress_rules(format: OutputFormat) -> (ProgressRule, ProgressRule) {
    match format {
        // Their stderr is logs (opencode's `--print-logs`), which go on while they hang.
        OutputFormat::CodexJsonl | OutputFormat::OpencodeJsonl => {
            (ProgressRule::EventsExceptErrors, ProgressRule::Never)
        }
        _ => (ProgressRule::AnyOutput, ProgressRule::AnyOutput),
    }
}

/// The watcher of one attempt's output, shared by its two capture tasks; `wake` is waited on
/// by the attempt's supervising loop, which stops the attempt once `found` is set.
#[derive(Clone)]
struct Watching {
    watcher: Arc<Mutex<crate::watch::Watcher>>,
    found: Arc<std::sync::OnceLock<crate::watch::Conclusive>>,
    wake: Arc<tokio::sync::Notify>,
}

/// Where a capture task reports progress: milliseconds since `started` in `activity`.
struct Progress {
    rule: ProgressRule,
    activity: Arc<AtomicU64>,
    started: Instant,
}

/// Classifies JSON lines as they stream by, a chunk at a time.
#[derive(Default)]
struct EventLines {
    /// The start of the current line, until it is long enough to decide.
    prefix: Vec<u8>,
    decided: bool,
}

const ERROR_EVENT: &[u8] = br#"{"type":"error""#;

impl EventLines {
    /// Whether `chunk` holds any line that is not an error event.
    fn feed(&mut self, chunk: &[u8]) -> bool {
        let mut progress = false;
        for &b in chunk {
            if b == b'\n' {
                if !self.decided && !self.prefix.is_empty() {
                    progress |= !ERROR_EVENT.starts_with(&self.prefix);
                }
                self.prefix.clear();
                self.decided = false;
            } else if !self.decided {
                self.prefix.push(b);
                if self.prefix.len() == ERROR_EVENT.len() {
                    self.decided = true;
                    progress |= self.prefix != ERROR_EVENT;
                }
            }
        }
        progress
    }
}

/// Why a capture file could not be written in full (the first failure of either stream).
#[derive(Debug)]
struct CaptureFailure {
    exhausted: Option<&'static str>,
    error: String,
}

/// The whole capture, read back through its descriptor.
fn read_capture(file: &std::fs::File) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::Start(0)).ok()?;
    let mut bytes = Vec::new();
    f.take(MAX_STRUCTURED_BYTES + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

/// What an attempt may print, counted over both streams. The holders are its two capture
/// tasks (counting) and the attempt's loop (woken once the limit is passed).
#[derive(Clone)]
struct OutputLimit {
    bytes: u64,
    printed: Arc<AtomicU64>,
    wake: Arc<tokio::sync::Notify>,
}

/// Copies a pipe into its capture file, keeping a bounded sample and noting progress. Past the
/// attempt's output limit nothing more is written (the pipe is still drained) and the attempt
/// is told to stop.
async fn capture(
    mut pipe: impl AsyncRead + Unpin,
    mut file: std::fs::File,
    failed: Arc<std::sync::OnceLock<CaptureFailure>>,
    sample: Arc<Mutex<OutputSample>>,
    progress: Progress,
    watching: Option<(Watching, crate::watch::Stream)>,
    limit: OutputLimit,
) {
    use std::io::Write;
    let mut buf = vec![0u8; 64 * 1024];
    let mut write_ok = true;
    let mut lines = EventLines::default();
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let moved = match progress.rule {
            ProgressRule::AnyOutput => true,
            ProgressRule::Never => false,
            ProgressRule::EventsExceptErrors => lines.feed(&buf[..n]),
        };
        if moved {
            progress.activity.store(
                progress.started.elapsed().as_millis() as u64,
                Ordering::Relaxed,
            );
        }
        let before = limit.printed.fetch_add(n as u64, Ordering::Relaxed);
        let room = limit.bytes.saturating_sub(before);
        if room < n as u64 {
            // Notified once, by the chunk that passes the limit.
            if room > 0 || before == limit.bytes {
                limit.wake.notify_one();
            }
        }
        let keep = n.min(usize::try_from(room).unwrap_or(usize::MAX));
        // A write to the page cache; if the disk fails we keep draining the pipe so the agent
        // is never blocked on a full pipe, and the sample still holds the head and tail.
        if write_ok
            && keep > 0
            && let Err(e) = file.write_all(&buf[..keep])
        {
            write_ok = false;
            let _ = failed.set(CaptureFailure {
                exhausted: crate::fsutil::exhausted(&e),
                error: e.to_string(),
            });
        }
        sample.lock().expect("sample lock").push(&buf[..n]);
        if let Some((w, stream)) = &watching {
            let found = w
                .watcher
                .lock()
                .expect("watcher lock")
                .feed(*stream, &buf[..n]);
            if let Some(c) = found
                && w.found.set(c).is_ok()
            {
                w.wake.notify_one();
            }
        }
    }
}

/// Waits for the capture tasks not yet seen to end, marking each as it ends.
async fn captures_ended<T>(tasks: [(&mut tokio::task::JoinHandle<T>, &mut bool); 2]) {
    for (task, ended) in tasks {
        if !*ended {
            let _ = task.await;
            *ended = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codex_error_events_are_not_progress() {
        let mut l = EventLines::default();
        assert!(!l.feed(b"{\"type\":\"error\",\"message\":\"Reconnecting... 1/5\"}\n"));
        // Split across chunks, in the middle of the prefix.
        assert!(!l.feed(b"{\"type\":\"er"));
        assert!(!l.feed(b"ror\",\"message\":\"Reconnecting... waiting for network\"}\n"));
        assert!(l.feed(b"{\"type\":\"item.completed\",\"item\":{}}\n"));
        assert!(l.feed(b"{\"type\":\"turn.completed\"}"));
        // A short non-event line is progress too.
        assert!(l.feed(b"\nok\n"));
        assert_eq!(
            progress_rules(OutputFormat::Plain),
            (ProgressRule::AnyOutput, ProgressRule::AnyOutput)
        );
    }
}
