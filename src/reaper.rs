//! Catching what escapes a process group. Killing an attempt's group reaches every process that
//! stayed in it; a process that called `setsid` (or `setpgid`) has left it. On Linux the daemon
//! is a *child subreaper*: orphaned descendants are reparented to it instead of to init. After
//! each attempt, [`sweep`] looks at the daemon's adopted children and kills those that belong to
//! that attempt — found by the `DIRIGENT_TASK_ID`, `DIRIGENT_ATTEMPT` and `DIRIGENT_WORKSPACE`
//! variables every attempt's processes inherit, or by the attempt's process group — and reaps
//! adopted zombies.
//!
//! What cannot be caught: a process that escaped *and* whose ancestors are still alive outside
//! the daemon's tree (it never becomes our child), or one that cleared its environment and left
//! the group before its parent died. Those need a cgroup, which dirigent does not use (yet).
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
pub fn spawn(
    cmd: &mut tokio::process::Command,
) -> std::io::Result<(tokio::process::Child, Registered)> {
    let mut own = OWN_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    let child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    own.insert(pid);
    Ok((child, Registered(pid)))
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

/// Which attempt's leftovers to kill.
pub struct Leftovers<'a> {
    pub task: &'a str,
    pub attempt: u32,
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
            let ours = who.is_some_and(|w| stat.pgid == w.pgid || belongs_to(pid, w));
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
    pgid: u32,
}

impl ProcStat {
    fn read(pid: u32) -> Option<ProcStat> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
        let state = fields.next()?.chars().next()?;
        let _ppid = fields.next()?;
        let pgid = fields.next()?.parse().ok()?;
        Some(ProcStat { state, pgid })
    }
}

/// Whether the process's environment marks it as part of this attempt.
fn belongs_to(pid: u32, w: &Leftovers<'_>) -> bool {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let (mut task, mut attempt, mut ws) = (false, false, false);
    let attempt_s = w.attempt.to_string();
    for var in env.split(|b| *b == 0) {
        let Some(eq) = var.iter().position(|b| *b == b'=') else {
            continue;
        };
        let (k, v) = (&var[..eq], &var[eq + 1..]);
        match k {
            b"DIRIGENT_TASK_ID" => task = v == w.task.as_bytes(),
            b"DIRIGENT_ATTEMPT" => attempt = v == attempt_s.as_bytes(),
            b"DIRIGENT_WORKSPACE" => ws = v == w.workspace.as_os_str().as_encoded_bytes(),
            _ => {}
        }
    }
    task && attempt && ws
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

fn carries_workspace(pid: u32, workspace: &Path) -> bool {
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
