//! The daemon's stop signals, with who sent them.
//!
//! A stop signal (SIGTERM, SIGINT) is received with `SA_SIGINFO`, so the sender's pid and uid
//! are known (the kernel fills them in for `kill`). The handler only stores them and writes one
//! byte to a pipe; [`StopSignals::next_stop`] reads the pipe in the runtime and decides:
//! a signal sent by a process the daemon started — an agent, a hook, anything carrying this
//! workspace's `DIRIGENT_WORKSPACE` or descending from the daemon — is logged and ignored (an
//! agent must not be able to stop its supervisor); any other is logged with its sender and
//! stops the daemon. A sender that has already exited cannot be looked at; it is believed.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use nix::libc;

/// The pipe the handler writes to (-1 until installed).
static WAKE: AtomicI32 = AtomicI32::new(-1);
/// The last stop signal's sender, as the kernel gave it.
static SENDER_PID: AtomicI32 = AtomicI32::new(0);
static SENDER_UID: AtomicU32 = AtomicU32::new(0);
/// Whether the handler found the sender below the daemon (1) or not (0), while the sender was
/// most likely still alive: a sender that exits right after `kill` is gone by the time the
/// runtime looks.
static SENDER_OURS: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo with SA_SIGINFO; only atomics, open(2), read(2),
    // close(2), getpid(2) and write(2) — all async-signal-safe — are used here, on stack buffers.
    unsafe {
        if !info.is_null() {
            let pid = (*info).si_pid();
            SENDER_PID.store(pid, Ordering::SeqCst);
            SENDER_UID.store((*info).si_uid(), Ordering::SeqCst);
            SENDER_OURS.store(i32::from(descends_from_me(pid)), Ordering::SeqCst);
        }
        let fd = WAKE.load(Ordering::SeqCst);
        if fd >= 0 {
            let byte = sig as u8;
            libc::write(fd, (&byte as *const u8).cast(), 1);
        }
    }
}

/// For the control socket, whose overflow connections are not for the daemon's own
/// descendants: whether `pid` is one — or cannot be told otherwise (gone before it was looked
/// at, a chain of parents deeper than 32, no `/proc`), which counts as one: an agent could
/// otherwise hide behind a quick exit or deep nesting.
pub(crate) fn descends_from_me_or_unknown(pid: libc::pid_t) -> bool {
    placed(pid) != Some(false)
}

/// Whether `pid` descends from this process. Runs in the signal handler.
fn descends_from_me(pid: libc::pid_t) -> bool {
    placed(pid) == Some(true)
}

/// Whether `pid` descends from this process, read from `/proc/<pid>/stat` up the chain; `None`
/// when that cannot be told (a process gone on the way, more than 32 parents). No allocation,
/// no lock: it runs in the signal handler.
fn placed(pid: libc::pid_t) -> Option<bool> {
    // SAFETY: getpid is async-signal-safe.
    let me = unsafe { libc::getpid() };
    let mut p = pid;
    for _ in 0..32 {
        if p == me {
            return Some(true);
        }
        match parent_in_handler(p) {
            Some(pp) if pp > 1 => p = pp,
            Some(_) => return Some(false),
            None => return None,
        }
    }
    None
}

/// The parent of `pid` from `/proc/<pid>/stat`, with stack buffers only.
fn parent_in_handler(pid: libc::pid_t) -> Option<libc::pid_t> {
    let mut path = [0u8; 32];
    let prefix = b"/proc/";
    path[..prefix.len()].copy_from_slice(prefix);
    let mut at = prefix.len();
    let mut digits = [0u8; 12];
    let mut n = 0;
    let mut v = pid as u32;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in (0..n).rev() {
        path[at] = digits[i];
        at += 1;
    }
    let tail = b"/stat\0";
    path[at..at + tail.len()].copy_from_slice(tail);
    let mut buf = [0u8; 512];
    // SAFETY: a NUL-terminated path on the stack; a stack buffer for read.
    let len = unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let len = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        len
    };
    if len <= 0 {
        return None;
    }
    let stat = &buf[..len as usize];
    // After the command name's last ')': " S PPID ..."
    let close = stat.iter().rposition(|b| *b == b')')?;
    let mut fields = stat[close + 1..]
        .split(|b| *b == b' ')
        .filter(|f| !f.is_empty());
    let _state = fields.next()?;
    let ppid = fields.next()?;
    let mut value: libc::pid_t = 0;
    for d in ppid {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value
            .checked_mul(10)?
            .checked_add(libc::pid_t::from(d - b'0'))?;
    }
    Some(value)
}

/// Receives the daemon's stop signals (see the module doc).
pub struct StopSignals {
    /// The read end of the handler's pipe.
    pipe: tokio::net::unix::pipe::Receiver,
    /// Kept open for the handler (it writes to the raw fd).
    _write: OwnedFd,
    workspace: PathBuf,
}

/// A stop signal and its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub signal: &'static str,
    pub pid: i32,
    pub uid: u32,
}

impl StopSignals {
    /// Installs the handlers for SIGTERM and SIGINT. Call it inside the runtime, before the
    /// daemon does anything, so a signal during start-up is not lost.
    pub fn install(workspace: &Path) -> std::io::Result<StopSignals> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)?;
        WAKE.store(write.as_raw_fd(), Ordering::SeqCst);
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::SigAction(on_signal),
            nix::sys::signal::SaFlags::SA_SIGINFO | nix::sys::signal::SaFlags::SA_RESTART,
            nix::sys::signal::SigSet::empty(),
        );
        for sig in [
            nix::sys::signal::Signal::SIGTERM,
            nix::sys::signal::Signal::SIGINT,
        ] {
            // SAFETY: the handler is async-signal-safe (see `on_signal`).
            unsafe { nix::sys::signal::sigaction(sig, &action) }?;
        }
        Ok(StopSignals {
            pipe: tokio::net::unix::pipe::Receiver::from_owned_fd(read)?,
            _write: write,
            workspace: workspace.to_path_buf(),
        })
    }

    /// Resolves with the first stop signal that is not an agent's; logs every one.
    pub async fn next_stop(&mut self) -> Sent {
        let mut buf = [0u8; 16];
        loop {
            let n = match self.pipe.read(&mut buf).await {
                Ok(n) if n > 0 => n,
                // The pipe cannot close while we hold its write end; stop to be safe.
                _ => {
                    return Sent {
                        signal: "SIGTERM",
                        pid: 0,
                        uid: 0,
                    };
                }
            };
            let sig = buf[n - 1] as libc::c_int;
            let sent = Sent {
                signal: if sig == libc::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                },
                pid: SENDER_PID.load(Ordering::SeqCst),
                uid: SENDER_UID.load(Ordering::SeqCst),
            };
            let who = describe(sent.pid);
            let ours = SENDER_OURS.swap(0, Ordering::SeqCst) == 1;
            if sent.pid > 0 && (ours || started_by_us(sent.pid, &self.workspace)) {
                tracing::warn!(
                    sender_pid = sent.pid,
                    "ignored {} from pid {} ({who}): it is a process the daemon started (an agent or a hook), and those may not stop it; stop the daemon from outside",
                    sent.signal,
                    sent.pid
                );
                continue;
            }
            if sent.pid > 0 && who == "already exited" {
                tracing::warn!(
                    sender_pid = sent.pid,
                    "{} received from pid {}, which had already exited, so dirigent cannot tell whether an agent sent it; stopping (an agent that keeps doing this is stopped by `max_interruptions`)",
                    sent.signal,
                    sent.pid
                );
            } else if sent.pid > 0 {
                tracing::info!(
                    sender_pid = sent.pid,
                    sender_uid = sent.uid,
                    "{} received from pid {} ({who}, uid {})",
                    sent.signal,
                    sent.pid,
                    sent.uid
                );
            } else {
                tracing::info!("{} received (from the kernel or a terminal)", sent.signal);
            }
            return sent;
        }
    }
}

use tokio::io::AsyncReadExt;

/// The command line of `pid`, for the log.
fn describe(pid: i32) -> String {
    if pid <= 0 {
        return "unknown".into();
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(raw) if !raw.is_empty() => {
            let text: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|p| !p.is_empty())
                .take(6)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            format!("`{}`", text.join(" "))
        }
        _ => "already exited".into(),
    }
}

/// Whether `pid` is one of the daemon's descendants, or carries this workspace's marker.
fn started_by_us(pid: i32, workspace: &Path) -> bool {
    let Ok(pid) = u32::try_from(pid) else {
        return false;
    };
    if crate::reaper::carries_workspace(pid, workspace) {
        return true;
    }
    let me = std::process::id();
    let mut p = pid;
    for _ in 0..64 {
        if p == me {
            return true;
        }
        match crate::reaper::parent_of(p) {
            Some(pp) if pp > 1 => p = pp,
            _ => return false,
        }
    }
    false
}

/// What a waiting client (`submit --wait`) leaves when it is interrupted: a line for stderr
/// and, with `--json`, one for stdout. Replaced as the client learns more (the task claimed,
/// the daemon gone); each one is leaked, never freed, so the handler may read whichever it
/// loads — a client replaces it a handful of times.
static PARTING: std::sync::atomic::AtomicPtr<(Vec<u8>, Option<Vec<u8>>)> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// The handler is installed once.
static INSTALLED: std::sync::Once = std::sync::Once::new();

extern "C" fn on_interrupt(sig: libc::c_int) {
    // SAFETY: an atomic load of a pointer to memory that is never freed or changed once
    // published, write(2) and _exit(2) — async-signal-safe.
    unsafe {
        let parting = PARTING.load(std::sync::atomic::Ordering::Acquire);
        if let Some((line, object)) = parting.as_ref() {
            libc::write(2, line.as_ptr().cast(), line.len());
            if let Some(object) = object {
                libc::write(1, object.as_ptr().cast(), object.len());
            }
        }
        libc::_exit(128 + sig);
    }
}

/// Makes SIGINT and SIGTERM end a waiting client with `line` on stderr (what goes on without
/// it, and how to follow or stop it) and `object` on stdout, instead of in silence. Exits
/// 128 + the signal. Called again, the newer words replace the older.
pub fn part_with(line: String, object: Option<String>) -> std::io::Result<()> {
    let mut bytes = line.into_bytes();
    // On a terminal a live status line may be drawn: the line takes its place.
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bytes.splice(0..0, *b"\r\x1b[2K");
    }
    bytes.push(b'\n');
    let object = object.map(|o| {
        let mut o = o.into_bytes();
        o.push(b'\n');
        o
    });
    let parting = Box::into_raw(Box::new((bytes, object)));
    PARTING.store(parting, std::sync::atomic::Ordering::Release);
    let mut installed = Ok(());
    INSTALLED.call_once(|| {
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_interrupt),
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        for sig in [
            nix::sys::signal::Signal::SIGINT,
            nix::sys::signal::Signal::SIGTERM,
        ] {
            // SAFETY: the handler is async-signal-safe (see `on_interrupt`).
            if let Err(e) = unsafe { nix::sys::signal::sigaction(sig, &action) } {
                installed = Err(e.into());
            }
        }
    });
    installed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handlers_parent_walk_agrees_with_proc() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert_eq!(
            parent_in_handler(child.id() as i32),
            Some(std::process::id() as i32)
        );
        assert!(descends_from_me(child.id() as i32));
        assert!(!descends_from_me(1));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(parent_in_handler(i32::MAX), None);
    }

    #[test]
    fn descendants_and_marked_processes_are_ours() {
        let ws = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert!(
            started_by_us(child.id() as i32, ws.path()),
            "a child is ours"
        );
        let _ = child.kill();
        let _ = child.wait();
        let mut marked = std::process::Command::new("setsid")
            .args(["sleep", "30"])
            .env("DIRIGENT_WORKSPACE", ws.path())
            .spawn()
            .unwrap();
        assert!(started_by_us(marked.id() as i32, ws.path()));
        let _ = marked.kill();
        let _ = marked.wait();
        // init is nobody's child.
        assert!(!started_by_us(1, ws.path()));
        assert_eq!(describe(0), "unknown");
    }
}
