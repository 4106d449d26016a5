//! Process groups: every agent and side command runs in a group of its own, and is stopped as
//! a group — SIGTERM, a grace, SIGKILL — so nothing it started outlives it. Also how a process
//! is told apart from a later one with the same pid (its start time and the boot), so that after
//! a crash only the group that was really ours is killed.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Kills a process group when dropped, unless disarmed: no path out of an attempt — panic,
/// cancellation, early return — leaves the group running.
pub struct GroupGuard(pub Option<Pid>);

impl GroupGuard {
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

/// SIGTERM to the group, up to `grace` for the leader to exit, then SIGKILL. Returns the exit
/// status (if it could be collected) and the last signal sent.
pub async fn terminate_group(
    pgid: Pid,
    child: &mut tokio::process::Child,
    grace: Duration,
) -> (Option<std::process::ExitStatus>, Signal) {
    let _ = killpg(pgid, Signal::SIGTERM);
    if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
        // The leader is gone; anything left in its group gets no more grace.
        let _ = killpg(pgid, Signal::SIGKILL);
        return (status.ok(), Signal::SIGTERM);
    }
    let _ = killpg(pgid, Signal::SIGKILL);
    (child.wait().await.ok(), Signal::SIGKILL)
}

/// Start time of a process in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
pub fn proc_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: count from the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// This boot's id, so pids from an earlier boot are never signalled. Read once: it cannot change
/// while the daemon runs, and every attempt's start records it.
pub fn boot_id() -> Option<String> {
    static BOOT_ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .clone()
}

/// After a crash: stops a process group recorded in the ledger if — and only if — it is provably
/// the attempt's: the same boot, and its leader the same process (same start time) or gone with
/// every member started after the leader was (an agent that killed its supervisor, or what was
/// left in the group after the agent ended). Returns whether any of it was alive.
pub async fn reap_orphan_group(
    pid: u32,
    start_ticks: Option<u64>,
    recorded_boot: Option<&str>,
    grace: Duration,
) -> bool {
    let (Some(ticks), Some(boot)) = (start_ticks, recorded_boot) else {
        return false;
    };
    if boot_id().as_deref() != Some(boot) {
        return false;
    }
    // The pid belongs to another process now: the group of that id is not the attempt's.
    if proc_start_ticks(pid).is_some_and(|t| t != ticks) {
        return false;
    }
    // Nothing alive in the group (a leader that is only a zombie — its supervisor stopped the
    // group when the daemon died, and whoever adopted it has not reaped it yet): nothing to
    // stop. A member older than the leader was would be of another group of that id.
    let members = crate::reaper::group_members(pid);
    if members.is_empty()
        || members
            .iter()
            .any(|m| proc_start_ticks(*m).is_some_and(|t| t < ticks))
    {
        return false;
    }
    let pgid = Pid::from_raw(pid as i32);
    let _ = killpg(pgid, Signal::SIGTERM);
    let until = Instant::now() + grace;
    while Instant::now() < until {
        // Not our children: there is no exit event to await, so look again shortly.
        if !crate::reaper::group_alive(pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = killpg(pgid, Signal::SIGKILL);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[tokio::test]
    async fn an_orphan_is_only_killed_when_it_is_provably_the_same_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        let ticks = proc_start_ticks(pid).unwrap();
        let boot = boot_id().unwrap();
        let grace = Duration::from_millis(200);
        // A different start time (a reused pid) or another boot: never touched.
        assert!(!reap_orphan_group(pid, Some(ticks + 1), Some(&boot), grace).await);
        assert!(!reap_orphan_group(pid, Some(ticks), Some("another-boot"), grace).await);
        assert!(!reap_orphan_group(pid, None, None, grace).await);
        assert_eq!(child.try_wait().unwrap(), None, "it must still run");
        // The same process: terminated.
        assert!(reap_orphan_group(pid, Some(ticks), Some(&boot), grace).await);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(15));
    }

    #[test]
    fn start_ticks_of_self() {
        let me = std::process::id();
        let a = proc_start_ticks(me).expect("linux /proc");
        assert_eq!(proc_start_ticks(me), Some(a));
        assert!(boot_id().is_some_and(|b| b.len() >= 32));
    }
}
