//! The per-attempt supervisor: the process the daemon starts for every attempt, which starts
//! the agent itself. See `reaper::spawn` for why it exists (an agent's parent is never the
//! daemon; nothing runs before its attempt is on disk).
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

/// The supervisor's `main` (`dirigent __supervise [--null-stdin] -- PROGRAM ARGS…`, or
/// `dirigent-supervise` with the same arguments): see `reaper::spawn`. Runs in a fresh,
/// single-threaded process.
pub fn main(args: &[std::ffi::OsString]) -> ! {
    use nix::libc;
    use std::io::Write;
    use std::os::unix::process::ExitStatusExt;
    let mut rest = args.iter();
    let mut null_stdin = false;
    for a in rest.by_ref() {
        match a.to_str() {
            Some("--null-stdin") => null_stdin = true,
            Some("--") => break,
            _ => {}
        }
    }
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
    let mut child = match cmd.spawn() {
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
    let status = loop {
        match child.wait() {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => std::process::exit(127),
        }
    };
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
