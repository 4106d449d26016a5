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

/// Spawns `cmd` and registers the child, atomically with respect to [`sweep`].
///
/// The child the daemon sees is a small per-attempt supervisor: a fork of the daemon that
/// forks once more, lets that second child exec the command, waits for it and exits as it did
/// (the same code, or the same signal). The command's parent is therefore never the daemon: an
/// agent that runs `kill -TERM $PPID` (or `-KILL`) ends its own supervisor, whose exit the
/// daemon sees as the attempt's end, and the daemon lives on. The supervisor leads the process
/// group, so stopping the group stops both; it holds no descriptor of the daemon's (not even
/// the pipes), so end-of-output still comes from the command alone.
pub fn spawn(
    cmd: &mut tokio::process::Command,
) -> std::io::Result<(tokio::process::Child, Registered, Gate)> {
    use std::os::fd::AsRawFd;
    // The command waits at this gate until the daemon opens it (after `attempt_started` is on
    // disk): an agent that kills the daemon at once can no longer run unrecorded.
    let (gate_read, gate_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let gate_fd = gate_read.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (fork, sigaction, close_range/close, read, waitpid, kill, _exit); it
    // allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || match nix::libc::fork() {
            -1 => Err(std::io::Error::last_os_error()),
            0 => {
                wait_at_gate(gate_fd);
                Ok(()) // the command: std goes on to exec it
            }
            command => supervise(command),
        });
    }
    let mut own = OWN_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    let child = cmd.spawn()?;
    drop(gate_read);
    let pid = child.id().unwrap_or(0);
    own.insert(pid);
    Ok((child, Registered(pid), Gate(Some(gate_write))))
}

/// The other end of a spawned command's gate: [`Gate::open`] lets it run; dropping it unopened
/// makes it exit (125) without running.
pub struct Gate(Option<std::os::fd::OwnedFd>);

impl Gate {
    pub fn open(&mut self) {
        if let Some(fd) = self.0.take() {
            let _ = nix::unistd::write(&fd, b"g");
        }
    }
}

/// In the command's process, before exec: closes every descriptor but stdio and the gate —
/// also std's exec-error pipe, so that `spawn` returns now instead of at the exec — then waits
/// for the daemon's byte. EOF (the daemon is gone) ends the process instead.
fn wait_at_gate(fd: nix::libc::c_int) {
    use nix::libc;
    // SAFETY: system calls on this process's own descriptors, stack buffers only.
    unsafe {
        close_from_to(3, fd - 1);
        close_from_to(fd + 1, libc::c_int::MAX);
        let mut byte = 0u8;
        loop {
            let n = libc::read(fd, (&mut byte as *mut u8).cast(), 1);
            if n == 1 {
                break;
            }
            if n == -1 && *errno_location() == libc::EINTR {
                continue;
            }
            libc::_exit(125);
        }
        libc::close(fd);
    }
}

/// Closes the descriptors `from..=to` (async-signal-safe).
unsafe fn close_from_to(from: nix::libc::c_int, to: nix::libc::c_int) {
    use nix::libc;
    if from > to {
        return;
    }
    // SAFETY: closing descriptors of this process.
    unsafe {
        #[cfg(target_os = "linux")]
        if libc::syscall(libc::SYS_close_range, from as u32, to as u32, 0u32) == 0 {
            return;
        }
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur.min(65_536) as libc::c_int
        } else {
            1024
        };
        for fd in from..=to.min(max) {
            libc::close(fd);
        }
    }
}

/// The per-attempt supervisor (see [`spawn`]): waits for `command` and exits as it did. Runs
/// between fork and exec of a multithreaded process, so only async-signal-safe calls.
fn supervise(command: nix::libc::pid_t) -> ! {
    use nix::libc;
    // SAFETY: plain system calls on this process's own state; see `spawn`.
    unsafe {
        // The daemon's handlers (inherited, never reset by an exec here) must not run. The
        // supervisor ends when the command ends, not before: a SIGTERM to the group is the
        // command's to answer (or ignore, until the SIGKILL that ends both), and `kill $PPID`
        // from the command changes nothing.
        for sig in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        // No descriptor of the daemon's: the output pipes must reach EOF when the command
        // closes them, and std's exec-error pipe must close when the command execs.
        close_from_to(0, libc::c_int::MAX);
        let mut status: libc::c_int = 0;
        loop {
            let r = libc::waitpid(command, &mut status, 0);
            if r == command {
                break;
            }
            if r == -1 && *errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        if libc::WIFSIGNALED(status) {
            // End the same way, so the daemon records the command's signal.
            let sig = libc::WTERMSIG(status);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig);
        }
        libc::_exit(127)
    }
}

#[cfg(target_os = "linux")]
unsafe fn errno_location() -> *mut nix::libc::c_int {
    // SAFETY: the C library's own thread-local errno.
    unsafe { nix::libc::__errno_location() }
}

#[cfg(not(target_os = "linux"))]
unsafe fn errno_location() -> *mut nix::libc::c_int {
    // SAFETY: the C library's own thread-local errno.
    unsafe { nix::libc::__error() }
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
}

/// Kills (and reaps) adopted children that belong to `who`, reaps adopted zombies, and repeats
/// while killing them exposes more (their children are adopted in turn). Blocking: call it from
/// `spawn_blocking`. Returns how many processes were killed.
pub fn sweep(who: Option<&Leftovers<'_>>) -> usize {
    let own = OWN_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    let mut killed = 0;
    for _round in 0..16 {
        let mut acted = false;
        for pid in adopted_children(&own) {
            let Some(stat) = ProcStat::read(pid) else {
                continue;
            };
            if stat.state == 'Z' {
                let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
                continue;
            }
            // Matched on the workspace alone: an escapee that rewrote its other variables is
            // still caught. One still in the group of something running is left alone.
            let ours = who.is_some_and(|w| {
                stat.pgid == w.pgid
                    || (!own.contains(&stat.pgid) && carries_workspace(pid, w.workspace))
            });
            if ours {
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

fn adopted_children(own: &BTreeSet<u32>) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let Ok(list) = std::fs::read_to_string(t.path().join("children")) else {
            continue;
        };
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
pub fn kill_leftovers(workspace: &Path) -> usize {
    let me = std::process::id();
    let mut killed = 0;
    // Killed processes' children carry the variable too; a few rounds get them all.
    for _round in 0..8 {
        let mut found = 0;
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return killed;
        };
        for entry in procs.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me {
                continue;
            }
            if carries_workspace(pid, workspace)
                && kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok()
            {
                found += 1;
            }
        }
        killed += found;
        if found == 0 {
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
pub fn sweep_cgroup() -> usize {
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
        if stat.state == 'Z' || stat.pgid == my_group || below_live_group(pid, &own, me) {
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

/// Whether the environment of `pid` carries this workspace's `DIRIGENT_WORKSPACE`.
pub(crate) fn carries_workspace(pid: u32, workspace: &Path) -> bool {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want = [
        b"DIRIGENT_WORKSPACE=".as_slice(),
        workspace.as_os_str().as_encoded_bytes(),
    ]
    .concat();
    env.split(|b| *b == 0).any(|var| var == want.as_slice())
}
