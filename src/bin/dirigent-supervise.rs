//! `dirigent-supervise`: the per-attempt supervisor as a small binary of its own, so that each
//! attempt does not start the whole `dirigent` binary (see `src/supervise.rs`). Installed next
//! to `dirigent`, which finds it there; never run by hand.

#[path = "../supervise.rs"]
mod supervise;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    supervise::main(&args)
}
