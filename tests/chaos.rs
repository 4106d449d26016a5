//! The short chaos run CI does: scripts/chaos with 100 tasks and 5 SIGKILLs of the daemon (the
//! full run, 1,000 tasks and 20 kills, is documented in docs/RELIABILITY.md).

use std::process::Command;

#[test]
fn a_hundred_tasks_survive_five_sigkills() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/chaos");
    let out = Command::new("python3")
        .args([
            script,
            "--tasks",
            "100",
            "--kills",
            "5",
            "--seed",
            "7",
            "--binary",
            env!("CARGO_BIN_EXE_dirigent"),
        ])
        .output()
        .expect("python3 runs scripts/chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chaos run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    assert!(
        stdout.contains("processes of the run still alive: 0"),
        "{stdout}"
    );
}
