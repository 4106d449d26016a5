//! The per-attempt supervisor: the process the daemon starts for every attempt, which starts
//! the agent itself. See `reaper::spawn` for why it exists (an agent's parent is never the
//! daemon; nothing runs before its attempt is on disk).
//!
//! Should the daemon die while the program runs (a crash, SIGKILL), the supervisor notices its
//! parent gone and stops the program's group itself, so no agent runs on unsupervised until the
//! next start (which would kill it).
//!
//! It is its own small binary, `dirigent-supervise`, installed next to `dirigent` (the daemon
//! falls back to `dirigent __supervise` without it). Starting the full `dirigent` binary for every
//! attempt cost about 2 ms of CPU — mapping and relocating tens of megabytes to run a hundred
//! lines — which was the largest single cost of a short task. This file therefore uses nothing
//! but `std` and `libc`: the small binary includes it by path, without the library.

/// The argument that makes the `dirigent` binary run as a per-attempt supervisor (the small
/// binary accepts it too, so both are called the same way).
pub const SUPERVISE_ARG: &str = "__supervise";

/// How a supervisor reports on stderr that its program could not be started (it then exits 127).
pub const SPAWN_FAILED: &str = "dirigent: cannot start";

/// `--grace-ms=N`: how long the program has between SIGTERM and SIGKILL when the daemon is
/// found gone (the daemon's `kill_grace`; 5 s without it).
pub const GRACE_ARG: &str = "--grace-ms=";

/// How often a supervisor looks whether its daemon is still there. A child's end wakes it at
/// once; this bounds how long a program outlives a daemon that died.
const DAEMON_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// The supervisor's `main` (`dirigent __supervise [--null-stdin] -- PROGRAM ARGS…`, or
/// `dirigent-supervise` with the same arguments): see `reaper::spawn`. Runs in a fresh,
/// single-threaded process.
pub fn main(args: &[std::ffi::OsString]) -> ! {
    use nix::libc;
    use std::io::Write;
    use std::os::unix::process::ExitStatusExt;
    let mut rest = args.iter();
    let mut null_stdin = false;
    let mut grace = std::time::Duration::from_secs(5);
    for a in rest.by_ref() {
        match a.to_str() {
            Some("--null-stdin") => null_stdin = true,
            Some(g) if g.starts_with(GRACE_ARG) => {
                if let Ok(ms) = g[GRACE_ARG.len()..].parse() {
                    grace = std::time::Duration::from_millis(ms);
                }
            }
            Some("--") => break,
            _ => {}
        }
    }
    // The daemon, as this process's parent: when it is gone (a crash, SIGKILL), the program is
    // stopped rather than left running unsupervised until the next start.
    // SAFETY: getppid has no preconditions.
    let daemon = unsafe { libc::getppid() };
    let Some(program) = rest.next() else {
        let _ = writeln!(std::io::stderr(), "dirigent: {SUPERVISE_ARG}: no program");
        std::process::exit(127);
    };
    // The gate: one byte, or EOF when the daemon is gone (then nothing runs).
    // Exactly one byte, unbuffered: what follows on stdin (the prompt) is the program's.
    let mut byte = [0u8; 1];
    loop {
        // SAFETY: reads into a one-byte stack buffer from this process's fd 0.
        let n = unsafe { libc::read(0, byte.as_mut_ptr().cast(), 1) };
        match n {
            1 => break,
            -1 if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {
                continue;
            }
            _ => std::process::exit(125),
        }
    }
    // The program may signal its parent at once (`kill -TERM $PPID` as its first line): block
    // the stop signals before it exists and ignore them before unblocking, so none can land
    // between. The child starts with an empty mask (below) and default dispositions.
    const STOPS: [i32; 6] = [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ];
    // SAFETY: this process is single-threaded; sigprocmask changes only its own mask.
    let mut stops: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut stops);
        for sig in STOPS {
            libc::sigaddset(&mut stops, sig);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &stops, std::ptr::null_mut());
    }
    let mut cmd = std::process::Command::new(program);
    cmd.args(rest);
    if null_stdin {
        cmd.stdin(std::process::Stdio::null());
    }
    // The program must start with nothing blocked (std does not reset the mask on every path;
    // a blocked SIGTERM would make every graceful stop wait out the grace period).
    // SAFETY: sigprocmask is async-signal-safe; the closure touches nothing else.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "{SPAWN_FAILED} `{}`: {e}",
                program.to_string_lossy()
            );
            std::process::exit(127);
        }
    };
    // SAFETY: this process is single-threaded; these calls change only its own signal
    // dispositions, mask and descriptors. Ignoring a pending signal discards it.
    unsafe {
        for sig in STOPS.into_iter().chain([libc::SIGPIPE]) {
            libc::signal(sig, libc::SIG_IGN);
        }
        libc::sigprocmask(libc::SIG_UNBLOCK, &stops, std::ptr::null_mut());
        // Hold none of the pipes: their end-of-file is the program's alone.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
    let status = wait_while_the_daemon_lives(child.id() as libc::pid_t, daemon, grace);
    if let Some(code) = status.code() {
        std::process::exit(code);
    }
    if let Some(sig) = status.signal() {
        // End the same way, so the daemon records the program's signal.
        // SAFETY: resets one disposition of this process and signals itself.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
        }
        std::process::exit(128 + sig);
    }
    std::process::exit(127)
}

/// The write end of the pipe the SIGCHLD handler wakes [`wait_while_the_daemon_lives`] through
/// (-1 before it exists).
static WAKE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn child_changed(_sig: nix::libc::c_int) {
    use nix::libc;
    let fd = WAKE.load(std::sync::atomic::Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write is async-signal-safe; a full pipe (already woken) is fine to ignore.
        unsafe { libc::write(fd, [0u8].as_ptr().cast(), 1) };
    }
}

/// Waits for the program `pid` and returns how it ended — unless the daemon (`daemon`, this
/// process's parent at its start) goes first: then the program's group gets SIGTERM, `grace` to
/// end, and SIGKILL (this process with it). The parent is looked at every [`DAEMON_CHECK`]; the
/// program's end wakes the wait at once (a SIGCHLD handler writes to a pipe the wait polls).
fn wait_while_the_daemon_lives(
    pid: nix::libc::pid_t,
    daemon: nix::libc::pid_t,
    grace: std::time::Duration,
) -> std::process::ExitStatus {
    use nix::libc;
    use std::os::unix::process::ExitStatusExt;
    let mut fds = [-1; 2];
    // SAFETY: this process is single-threaded; the pipe's descriptors are its own, the handler
    // only writes to one of them.
    let woken = unsafe {
        if libc::pipe(fds.as_mut_ptr()) == 0 {
            for fd in fds {
                libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK);
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
            WAKE.store(fds[1], std::sync::atomic::Ordering::Relaxed);
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = child_changed as extern "C" fn(libc::c_int) as usize;
            act.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(libc::SIGCHLD, &act, std::ptr::null_mut());
            true
        } else {
            false
        }
    };
    let mut stopping_since: Option<std::time::Instant> = None;
    loop {
        let mut status = 0;
        // SAFETY: waits for this process's own child without blocking.
        match unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } {
            p if p == pid => {
                // SAFETY: getppid has no preconditions.
                if stopping_since.is_some() || unsafe { libc::getppid() } != daemon {
                    // The daemon is gone: what the program left in its group goes too.
                    // SAFETY: signals this process's own group.
                    unsafe { libc::kill(0, libc::SIGKILL) };
                }
                return std::process::ExitStatus::from_raw(status);
            }
            -1 if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted => {
                std::process::exit(127)
            }
            _ => {}
        }
        // SAFETY: getppid has no preconditions.
        if stopping_since.is_none() && unsafe { libc::getppid() } != daemon {
            // SAFETY: signals this process's own group; this process ignores SIGTERM.
            unsafe { libc::kill(0, libc::SIGTERM) };
            stopping_since = Some(std::time::Instant::now());
        }
        if let Some(since) = stopping_since
            && since.elapsed() >= grace
        {
            // SAFETY: signals this process's own group, this process included.
            unsafe { libc::kill(0, libc::SIGKILL) };
        }
        let wait = match stopping_since {
            Some(since) => grace.saturating_sub(since.elapsed()).min(DAEMON_CHECK),
            None => DAEMON_CHECK,
        };
        if woken {
            let mut pfd = libc::pollfd {
                fd: fds[0],
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polls one descriptor of this process, then drains it into a stack buffer.
            unsafe {
                libc::poll(&mut pfd, 1, wait.as_millis().max(1) as libc::c_int);
                let mut sink = [0u8; 64];
                while libc::read(fds[0], sink.as_mut_ptr().cast(), sink.len()) > 0 {}
            }
        } else {
            std::thread::sleep(wait.min(std::time::Duration::from_millis(20)));
        }
    }
}
