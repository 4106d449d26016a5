//! Catching what escapes a process group. Killing an attempt's group reaches every process that
//! stayed in it; a process that called `setsid` (or `setpgid`) has left it. On Linux the daemon
//! is a *child subreaper*: orphaned descendants are reparented to it instead of to init. After
//! each attempt, [`sweep`] looks at the daemon's adopted children and kills those that belong to
//! that attempt — found by the `DIRIGENT_TASK_ID`, `DIRIGENT_ATTEMPT` and `DIRIGENT_WORKSPACE`
//! variables every attempt's processes inherit, or by the attempt's process group — and reaps
//! adopted zombies.
//!
//! An adopted process is killed when it is in the ended attempt's group, or when it carries this
//! workspace's `DIRIGENT_WORKSPACE` and is no longer in the group of anything still running —
//! the workspace alone decides, so an escapee that rewrote its other variables is caught too.
//!
//! Under systemd, [`sweep_cgroup`] also kills what is left in the service's cgroup outside any
//! live group: a process cannot leave a cgroup, so even one that cleared its environment
//! (`env -i setsid …`) is found. Without systemd, such a process whose parent lives on outside
//! the daemon's tree is not caught (see docs/security.md).
//!
//! Children the daemon spawns itself are waited for by tokio; they are registered here (under
//! the same lock the sweep takes) so the sweep never reaps one of them.

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// Pids of children spawned through [`spawn`] that tokio has not reaped yet.
static OWN_CHILDREN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Makes this process a child subreaper (Linux). Returns whether it worked.
pub fn become_subreaper() -> bool {
    #[cfg(target_os = "linux")]
    {
        nix::sys::prctl::set_child_subreaper(true).is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

pub use crate::supervise::{SPAWN_FAILED, SUPERVISE_ARG};

/// The program run as the supervisor: `DIRIGENT_SUPERVISOR`, else the small
/// `dirigent-supervise` next to this executable, else this executable itself (`dirigent
/// __supervise`; a program embedding the library sets the variable). Both take the same
/// arguments.
///
/// This executable is found through `/proc/self/exe` on Linux, which the kernel resolves to the
/// running binary's own file even after an upgrade replaced or deleted it on disk (`cargo
/// install` while the service runs): the path `current_exe` gives would then name a file that
/// is gone, and no agent could start. The small binary is looked for at every start, so one
/// removed later is simply not used; its calling convention does not change between versions.
pub fn supervisor_program() -> std::ffi::OsString {
    static OWN: std::sync::OnceLock<std::ffi::OsString> = std::sync::OnceLock::new();
    if let Some(p) = std::env::var_os("DIRIGENT_SUPERVISOR").filter(|p| !p.is_empty()) {
        return p;
    }
    if let Some(p) = small_supervisor() {
        return p;
    }
    OWN.get_or_init(|| {
        let own = std::path::Path::new("/proc/self/exe");
        own.exists()
            .then(|| own.as_os_str().to_os_string())
            .or_else(|| std::env::current_exe().ok().map(|p| p.into_os_string()))
            .unwrap_or_else(|| "dirigent".into())
    })
    .clone()
}

/// The name of the small supervisor binary, installed next to `dirigent`.
pub const SMALL_SUPERVISOR: &str = "dirigent-supervise";

/// `dirigent-supervise` in this executable's directory, if it is one we may run: an absolute
/// path (a relative one would be resolved in the agent's directory, where an agent can plant a
/// file), a regular executable file and not a link, owned by this user or root and writable by
/// no one else — the same trust as the `dirigent` binary beside it should have.
fn small_supervisor() -> Option<std::ffi::OsString> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let exe = std::fs::read_link("/proc/self/exe")
        .or_else(|_| std::env::current_exe())
        .ok()?;
    let path = exe.parent()?.join(SMALL_SUPERVISOR);
    if !path.is_absolute() {
        return None;
    }
    let meta = std::fs::symlink_metadata(&path).ok()?;
    let mode = meta.permissions().mode();
    let owner_ok = meta.uid() == nix::unistd::geteuid().as_raw() || meta.uid() == 0;
    (meta.file_type().is_file() && mode & 0o111 != 0 && mode & 0o022 == 0 && owner_ok)
        .then(|| path.into_os_string())
}

/// A command that runs `program args…` under a per-attempt supervisor: [`supervisor_program`]
/// started with [`SUPERVISE_ARG`] (see [`crate::supervise::main`]). The command's stdin is the
/// prompt when `stdin_prompt` is set, else `/dev/null`; the caller sets the environment,
/// directory, output and process group as for the program itself. Should the daemon die while
/// the program runs, the supervisor stops the group itself: SIGTERM, `grace`, SIGKILL.
pub fn command(
    program: &std::ffi::OsStr,
    args: &[String],
    stdin_prompt: bool,
    grace: std::time::Duration,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(supervisor_program());
    cmd.arg(SUPERVISE_ARG);
    if !stdin_prompt {
        cmd.arg("--null-stdin");
    }
    cmd.arg(format!(
        "{}{}",
        crate::supervise::GRACE_ARG,
        grace.as_millis()
    ));
    cmd.arg("--").arg(program).args(args);
    // The gate byte (and then the prompt) travel on this pipe.
    cmd.stdin(std::process::Stdio::piped());
    cmd
}

/// Spawns a [`command`] and registers the child, atomically with respect to [`sweep`].
///
/// The child the daemon sees is the supervisor. It waits for one byte on its stdin — the gate
/// the daemon opens once `attempt_started` is written — then starts the program (with that
/// same stdin, or `/dev/null`), ignores SIGTERM, SIGINT and SIGHUP, lets go of every
/// descriptor, waits for the program and exits as it did (the same code, or the same signal) —
/// unless the daemon dies first: then it stops the group itself (see `supervise.rs`).
/// So an agent's `$PPID` is never the daemon (`kill -TERM $PPID` changes nothing, `kill -KILL
/// $PPID` ends the attempt, not the daemon), and an agent never runs unrecorded. The supervisor
/// leads the process group; stopping the group stops both.
pub fn spawn(
    cmd: &mut tokio::process::Command,
) -> std::io::Result<(tokio::process::Child, Registered, Gate)> {
    let mut own = OWN_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    own.insert(pid);
    let gate = Gate(child.stdin.take());
    Ok((child, Registered(pid), gate))
}

/// Runs a short helper command (git) to its end and returns its output, its child registered
/// atomically with respect to [`sweep`] — otherwise a sweep can reap the finished child before
/// `wait` does, and the command fails with `ECHILD` ("No child processes"). Blocking.
///
/// The command leads a process group of its own (what it starts — a filter, a helper — is in
/// it), so [`stop_helpers`] can end it whole.
///
/// It carries the workspace's `DIRIGENT_WORKSPACE` (see [`mark_helpers_with`]), so what a crash
/// leaves of it — a git hanging on a filter, holding `index.lock` — is stopped by the next start
/// ([`kill_leftovers`]) like an agent.
pub fn output(cmd: &mut std::process::Command) -> std::io::Result<std::process::Output> {
    use std::os::unix::process::CommandExt;
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    if let Some(root) = HELPER_MARK
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        cmd.env("DIRIGENT_WORKSPACE", root);
    }
    let child = {
        let mut own = OWN_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
        let child = cmd.spawn()?;
        own.insert(child.id());
        HELPERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(child.id());
        child
    };
    let _registered = Registered(child.id());
    let _helper = Helper(child.id());
    child.wait_with_output()
}

/// The workspace whose daemon this process runs, once it has taken the workspace's lock:
/// [`output`] marks its helper commands with it.
static HELPER_MARK: Mutex<Option<std::path::PathBuf>> = Mutex::new(None);

/// Marks every helper command from now on as `workspace`'s. Called by the daemon once it holds
/// the workspace's lock. (One process runs one daemon; a test that runs two in one process
/// marks the helpers with the later one's.)
pub fn mark_helpers_with(workspace: &Path) {
    *HELPER_MARK.lock().unwrap_or_else(|e| e.into_inner()) = Some(workspace.to_path_buf());
}

/// Helper commands ([`output`]) running now, by pid (= their process group).
static HELPERS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Takes a helper out of [`HELPERS`] once it has been waited for.
struct Helper(u32);

impl Drop for Helper {
    fn drop(&mut self) {
        HELPERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}

/// Tells every helper command still running (a git command that hangs on a slow filter) to
/// stop, with its group: SIGTERM, on which git removes its lock files. For a daemon's stop
/// that will not wait for them any longer. Returns how many were told.
pub fn stop_helpers() -> usize {
    let running = HELPERS.lock().unwrap_or_else(|e| e.into_inner());
    for pid in running.iter() {
        let _ = nix::sys::signal::killpg(Pid::from_raw(*pid as i32), Signal::SIGTERM);
    }
    running.len()
}

/// The supervisor's stdin, held by the daemon: [`Gate::open`] lets the program run; dropping
/// it unopened makes the supervisor exit (125) without running it.
pub struct Gate(Option<tokio::process::ChildStdin>);

impl Gate {
    /// Lets the program run; returns its stdin, for the prompt.
    pub async fn open(mut self) -> Option<tokio::process::ChildStdin> {
        use tokio::io::AsyncWriteExt;
        let mut stdin = self.0.take()?;
        stdin.write_all(b"g").await.ok()?;
        Some(stdin)
    }
}

/// Unregisters the child when dropped — after tokio has waited for it.
pub struct Registered(u32);

impl Drop for Registered {
    fn drop(&mut self) {
        OWN_CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}

/// Which attempt's leftovers to kill: members of its process group, and every escaped process
/// of this workspace that is no longer in a live group of the daemon's.
pub struct Leftovers<'a> {
    pub workspace: &'a Path,
    pub pgid: u32,
    /// The task whose attempt ended (its processes carry it as `DIRIGENT_TASK_ID`), when it
    /// was an attempt: an escaped process that names another task is that task's — a helper
    /// its attempt, still running, started with `setsid` — and is left to that attempt's end.
    pub task: Option<&'a str>,
}

/// Whether `pid`'s environment names, as its `DIRIGENT_TASK_ID`, a task other than `task`
/// whose attempt is running now. (A process that names a task falsely is swept when that
/// task's attempt ends.)
fn of_another_task(pid: u32, task: Option<&str>) -> bool {
    let Some(task) = task else { return false };
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let Some(named) = env
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(b"DIRIGENT_TASK_ID="))
    else {
        return false;
    };
    named != task.as_bytes()
        && std::str::from_utf8(named).is_ok_and(|named| {
            RUNNING_TASKS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(named)
        })
}

/// Tasks whose attempt's agent runs now, with how many (one, but a count is safe).
static RUNNING_TASKS: Mutex<std::collections::BTreeMap<String, usize>> =
    Mutex::new(std::collections::BTreeMap::new());

/// Holds a task in [`RUNNING_TASKS`] while its attempt's agent runs; dropped before that
/// attempt's sweep.
pub struct RunningTask(String);

impl RunningTask {
    pub fn new(task: &str) -> Self {
        *RUNNING_TASKS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(task.to_string())
            .or_default() += 1;
        RunningTask(task.to_string())
    }
}

impl Drop for RunningTask {
    fn drop(&mut self) {
        let mut running = RUNNING_TASKS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = running.get_mut(&self.0) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.0);
            }
        }
    }
}

/// Kills (and reaps) adopted children that belong to `who`, reaps adopted zombies, and repeats
/// while killing them exposes more (their children are adopted in turn). Blocking: call it from
/// `spawn_blocking`. Returns how many processes were killed.
pub fn sweep(who: Option<&Leftovers<'_>>) -> usize {
    // Every orphan the daemon adopted descends from something it started (an agent, a hook, a
    // check: it is their subreaper), so one that is not in the group of something still
    // running escaped an attempt — whatever its environment says (`env -i setsid …` carries no
    // marker). One still in such a group is left to it.
    sweep_where(|pid, stat, own| {
        who.is_some_and(|w| {
            stat.pgid == w.pgid || (!own.contains(&stat.pgid) && !of_another_task(pid, w.task))
        })
    })
}

/// [`sweep`] at the daemon's stop, once everything it started has ended: every orphan it
/// adopted escaped something of it (a `verify` command's `setsid` child, say) and is killed.
pub fn sweep_all_adopted() -> usize {
    sweep_where(|_, _, _| true)
}

fn sweep_where(ours: impl Fn(u32, &ProcStat, &BTreeSet<u32>) -> bool) -> usize {
    let own = OWN_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    let mut killed = 0;
    // Until a round finds nothing to kill: each kill hands the victim's children to the
    // daemon, so a chain of orphans N deep takes N rounds. (Bounded only against a process
    // that forks faster than it is killed.)
    for _round in 0..4096 {
        let mut acted = false;
        for pid in adopted_children(&own) {
            let Some(stat) = ProcStat::read(pid) else {
                continue;
            };
            if stat.state == 'Z' {
                let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
                continue;
            }
            if ours(pid, &stat, &own) {
                let p = Pid::from_raw(pid as i32);
                let _ = kill(p, Signal::SIGKILL);
                // SIGKILL cannot be caught: this returns as soon as it is dead.
                let _ = waitpid(p, None);
                killed += 1;
                acted = true;
            }
        }
        if !acted {
            break;
        }
    }
    killed
}

/// The daemon's children that it did not spawn through [`spawn`]: orphans it adopted.
///
/// The kernel hands an orphan to the subreaper's first live thread — the main thread, which
/// lives as long as the process — so its `children` list is the one to read. Reading every
/// thread's instead cost each sweep one file per thread, and a daemon serving fifty event
/// streams can hold fifty blocking-pool threads: that alone slowed its trivial tasks by a tenth.
/// Children other threads spawned themselves (and wait for) are not listed either, so the sweep
/// cannot reap one before its own waiter does. Only when the main thread is gone are all read.
fn adopted_children(own: &BTreeSet<u32>) -> Vec<u32> {
    let mut out = Vec::new();
    let main = format!("/proc/self/task/{}/children", std::process::id());
    let lists: Vec<String> = match std::fs::read_to_string(&main) {
        Ok(list) => vec![list],
        Err(_) => match std::fs::read_dir("/proc/self/task") {
            Ok(tasks) => tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
                .collect(),
            Err(_) => return out,
        },
    };
    for list in &lists {
        out.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .filter(|p| !own.contains(p)),
        );
    }
    out.sort_unstable();
    out.dedup();
    out
}

struct ProcStat {
    state: char,
    ppid: u32,
    pgid: u32,
}

impl ProcStat {
    fn read(pid: u32) -> Option<ProcStat> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        let pgid = fields.next()?.parse().ok()?;
        Some(ProcStat { state, ppid, pgid })
    }
}

/// Whether any process of group `pgid` is alive (a zombie, dead but not yet reaped by whoever
/// adopted it, is not), from `/proc`.
pub(crate) fn group_alive(pgid: u32) -> bool {
    !group_members(pgid).is_empty()
}

/// The live processes (zombies aside) of group `pgid`, from `/proc`.
pub(crate) fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| ProcStat::read(*pid).is_some_and(|s| s.pgid == pgid && s.state != 'Z'))
        .collect()
}

/// The parent of `pid`, from `/proc`.
pub(crate) fn parent_of(pid: u32) -> Option<u32> {
    ProcStat::read(pid).map(|s| s.ppid)
}

/// Whether `pid` or one of its ancestors (below the daemon) is in a live group of the daemon's:
/// a process an attempt still running started, even in a group of its own.
fn below_live_group(pid: u32, own: &BTreeSet<u32>, daemon: u32) -> bool {
    let mut p = pid;
    for _ in 0..64 {
        let Some(stat) = ProcStat::read(p) else {
            return false;
        };
        if own.contains(&stat.pgid) {
            return true;
        }
        if stat.ppid == daemon || stat.ppid <= 1 {
            return false;
        }
        p = stat.ppid;
    }
    false
}

/// At start-up, before anything is spawned: kills every process that carries this workspace's
/// `DIRIGENT_WORKSPACE` — all of them are leftovers of an earlier daemon (the workspace lock
/// guarantees there is no other one). This catches what the ledger cannot: an agent spawned in
/// the instant before a crash, before its `attempt_started` was written. Returns how many were
/// killed.
///
/// They are asked first (SIGTERM), and killed (SIGKILL) if still there after
/// [`LEFTOVER_GRACE`]: a git command a crash left hanging on a filter removes its `index.lock`
/// when asked, and would leave it behind if killed — the task's worktree then refuses every git
/// command that needs the index.
pub fn kill_leftovers(workspace: &Path) -> usize {
    let me = std::process::id();
    // This daemon's own helper commands (a fleet worker's fetch may run already) lead their
    // groups, with what they started: none of them is an earlier daemon's.
    let ours = |pid: u32| {
        ProcStat::read(pid).is_some_and(|stat| {
            HELPERS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&stat.pgid)
        })
    };
    let carriers = || -> Vec<u32> {
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        procs
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| *pid != me && carries_workspace(*pid, workspace) && !ours(*pid))
            .collect()
    };
    let asked: BTreeSet<u32> = carriers()
        .into_iter()
        .filter(|pid| kill(Pid::from_raw(*pid as i32), Signal::SIGTERM).is_ok())
        .collect();
    let deadline = std::time::Instant::now() + LEFTOVER_GRACE;
    while !asked.is_empty() && std::time::Instant::now() < deadline {
        sweep(None); // those that were our children (adopted) are zombies once they end
        if !carriers().iter().any(|pid| asked.contains(pid)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut killed = asked.len();
    // Killed processes' children carry the variable too; a few rounds get them all.
    for _round in 0..8 {
        let found = carriers()
            .into_iter()
            .filter(|pid| kill(Pid::from_raw(*pid as i32), Signal::SIGKILL).is_ok())
            .filter(|pid| !asked.contains(pid))
            .count();
        killed += found;
        if found == 0 && carriers().is_empty() {
            break;
        }
        // Give the kernel a moment to tear them down before looking for their children.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Any of them that were our children (adopted) are zombies now.
    sweep(None);
    killed
}

/// The processes of the daemon's own cgroup when it runs as a systemd service (`INVOCATION_ID`
/// set, cgroup v2, a `.service` cgroup): every process the daemon ever started is in it, also
/// one that cleared its environment and left its group (`env -i setsid …`), which nothing else
/// can find. `None` elsewhere (a terminal's cgroup holds the user's shell too).
fn service_cgroup_procs() -> Option<Vec<u32>> {
    std::env::var_os("INVOCATION_ID")?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    if !path.ends_with(".service") {
        return None;
    }
    let procs = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/cgroup.procs")).ok()?;
    Some(
        procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect(),
    )
}

/// Under systemd: kills every process of the service's cgroup that is not the daemon and neither
/// in nor below a live group of the daemon's (an attempt, a hook, an evaluator that still runs):
/// what is left is an orphan of a finished one. Blocking. Returns how many were killed.
/// A process that names another task than `task` (see [`Leftovers::task`]) is left alone.
pub fn sweep_cgroup(task: Option<&str>) -> usize {
    let Some(procs) = service_cgroup_procs() else {
        return 0;
    };
    let own = OWN_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    let me = std::process::id();
    let my_group = nix::unistd::getpgrp().as_raw() as u32;
    let mut killed = 0;
    for pid in procs {
        if pid == me {
            continue;
        }
        let Some(stat) = ProcStat::read(pid) else {
            continue;
        };
        if stat.state == 'Z'
            || stat.pgid == my_group
            || below_live_group(pid, &own, me)
            || of_another_task(pid, task)
        {
            continue;
        }
        if kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
            killed += 1;
        }
    }
    drop(own);
    if killed > 0 {
        sweep(None);
    }
    killed
}

/// How long [`kill_leftovers`] waits for leftovers it asked to stop before it kills them.
pub const LEFTOVER_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether the environment of `pid` carries this workspace's `DIRIGENT_WORKSPACE`.
pub(crate) fn carries_workspace(pid: u32, workspace: &Path) -> bool {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    // Compared as paths: `/ws/` and `/ws//.` name the workspace as well as `/ws` does; and
    // resolved, so a daemon started through a link (`--root /link`) finds what one started on
    // the real path left, and the other way round.
    env.split(|b| *b == 0).any(|var| {
        var.strip_prefix(b"DIRIGENT_WORKSPACE=")
            .is_some_and(|value| {
                let value = Path::new(std::ffi::OsStr::from_bytes(value));
                value.components().eq(workspace.components())
                    || matches!(
                        (std::fs::canonicalize(value), std::fs::canonicalize(workspace)),
                        (Ok(a), Ok(b)) if a == b
                    )
            })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_workspace_marker_is_compared_as_a_path() {
        use std::path::Path;
        // Whether a process whose DIRIGENT_WORKSPACE is `value` counts as `workspace`'s.
        let carries = |value: &Path, workspace: &Path| {
            let mut child = std::process::Command::new("sleep")
                .arg("30")
                .env_clear()
                .env("DIRIGENT_WORKSPACE", value)
                .spawn()
                .unwrap();
            let got = super::carries_workspace(child.id(), workspace);
            let _ = child.kill();
            let _ = child.wait();
            got
        };
        let dir = tempfile::tempdir().unwrap();
        let (real, link) = (dir.path().join("real"), dir.path().join("link"));
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        // (the value in the environment, the workspace, whether it names it: spelt otherwise,
        // or through a link either way)
        let cases = [
            (Path::new("/tmp/ws"), Path::new("/tmp/ws"), true),
            (Path::new("/tmp/ws/"), Path::new("/tmp/ws"), true),
            (Path::new("/tmp//ws/."), Path::new("/tmp/ws"), true),
            (Path::new("/tmp/ws2"), Path::new("/tmp/ws"), false),
            (Path::new("/tmp"), Path::new("/tmp/ws"), false),
            (&link, &real, true),
            (&real, &link, true),
            (&link, dir.path(), false),
        ];
        for (value, workspace, want) in cases {
            assert_eq!(
                carries(value, workspace),
                want,
                "DIRIGENT_WORKSPACE={} in {}",
                value.display(),
                workspace.display()
            );
        }
    }
}
