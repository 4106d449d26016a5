//! The `dirigent` binary: parses the command line into a validated command, runs it, and turns
//! errors into `error: …` lines and a non-zero exit status.

mod cli;
mod commands;
mod complete;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, WorkflowCommand};
use dirigent::control::Request;
use dirigent::workspace::Workspace;

fn main() -> ExitCode {
    // A per-attempt supervisor (see `reaper::spawn`): not a command for people, so before clap.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == dirigent::reaper::SUPERVISE_ARG)
    {
        dirigent::supervise::main(&args[2..]);
    }
    // A shell asking for completions (`COMPLETE=bash dirigent -- …`): answer and exit.
    complete::answer_if_asked();
    // A script that asked for `--json` reads stdout: a failure is an object there too.
    let wants_json = args
        .iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let shown = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
            if wants_json && !shown {
                // Its first paragraph: the error and what it lists (`[possible values: …]`).
                let full = e.to_string();
                let said: Vec<&str> = full
                    .lines()
                    .take_while(|l| !l.trim().is_empty())
                    .map(str::trim)
                    .collect();
                let said = said.join(" ");
                let said = said.strip_prefix("error: ").unwrap_or(&said);
                println!("{}", serde_json::json!({ "error": said }));
            }
            e.exit()
        }
    };
    if !matches!(cli.command, Command::Daemon { .. }) {
        // A command whose reader went away (`dirigent status --json | head`) ends quietly, as
        // Unix tools do, instead of panicking on the failed write. The daemon keeps SIGPIPE
        // ignored: a client that hangs up must never stop it.
        // SAFETY: no other thread exists yet; this only changes one signal's disposition.
        unsafe {
            nix::libc::signal(nix::libc::SIGPIPE, nix::libc::SIG_DFL);
        }
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Never a panic on a closed stderr: the exit status still says it failed.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            if wants_json {
                let _ = writeln!(
                    std::io::stdout(),
                    "{}",
                    serde_json::json!({ "error": format!("{e:#}") })
                );
            }
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // `init` and `daemon` make the workspace wherever they are told; every other command needs
    // it to exist (a typo there must not quietly create one somewhere else).
    let creates = matches!(cli.command, Command::Init { .. } | Command::Daemon { .. });
    if let Some(root) = &cli.root
        && !root.is_dir()
        && (!creates || root.exists())
    {
        // A typo must not quietly create a workspace somewhere else.
        anyhow::bail!(
            "the workspace `{}` (from `--root` or DIRIGENT_ROOT) {}",
            root.display(),
            if root.exists() {
                "is not a directory".to_string()
            } else {
                format!(
                    "does not exist; check the path, or make it a workspace with `dirigent --root {} init`",
                    root.display()
                )
            }
        );
    }
    let ws = Workspace::discover(cli.root.as_deref())?;
    // Commands that read a workspace's state or ask its daemon: in a directory that is none,
    // "no tasks yet" or "no daemon is running" would be true of the wrong place.
    let reads_a_workspace = matches!(
        cli.command,
        Command::Status { .. }
            | Command::Top
            | Command::Logs { .. }
            | Command::Result { .. }
            | Command::Cancel { .. }
            | Command::Diff { .. }
            | Command::Merge { .. }
            | Command::Discard { .. }
            | Command::Retry { .. }
            | Command::Stats { .. }
    );
    if reads_a_workspace && !ws.context().is_dir() {
        match &cli.root {
            Some(root) => anyhow::bail!(
                "`{}` (from `--root` or DIRIGENT_ROOT) is not a dirigent workspace: it has no `.context/`; make it one with `dirigent --root {} init`",
                root.display(),
                root.display()
            ),
            None => anyhow::bail!(
                "no dirigent workspace here: neither `{}` nor a directory above it has a `.context/`; run this in your project's directory, or name it with `--root DIR`",
                ws.root().display()
            ),
        }
    }
    match cli.command {
        Command::Completions { shell } => {
            complete::register(shell, &mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Init { force } => commands::init(&ws, force),
        Command::Open { no_browser, json } => commands::open(&ws, no_browser, json),
        Command::Daemon {
            log_level,
            log_format,
            http,
        } => daemon(
            ws,
            &log_level,
            log_format,
            dirigent::engine::Options { http },
        ),
        Command::Mcp => mcp(ws),
        Command::Stats {
            since,
            by,
            fleet,
            json,
        } => commands::stats(&ws, &since, by, fleet, json),
        Command::Submit(args) => commands::submit(&ws, *args),
        Command::Top | Command::Status { watch: true, .. } => commands::top(&ws),
        Command::Status {
            json, fleet: true, ..
        } => commands::fleet_status(&ws, json),
        Command::Status { id, json, .. } => commands::status(&ws, id.as_deref(), json),
        Command::Fleet {
            action: Some(cli::FleetAction::Permissions { nodes, workers }),
            ..
        } => commands::fleet_permissions(&nodes, &workers),
        Command::Fleet { json, .. } => commands::fleet(&ws, json),
        Command::Logs {
            ids,
            all,
            follow,
            attempt,
            stderr,
        } => match &ids[..] {
            [] if !all => Err(anyhow::anyhow!(
                "give the task (or tasks) whose output to print, or `--all` for every attempt's; `dirigent status` lists the tasks"
            )),
            [id] if !all => commands::logs(&ws, id, follow, attempt, stderr),
            _ if attempt.is_some() || stderr => Err(anyhow::anyhow!(
                "`--attempt` and `--stderr` take one task; several show every stream of their latest attempts"
            )),
            _ => commands::logs_many(&ws, &ids, follow),
        },
        Command::Result { id, json } => commands::result(&ws, &id, json),
        Command::Cancel { id, json } => {
            commands::control(&ws, &id, Request::Cancel { id: id.clone() }, json)
        }
        Command::Retry { id, json } => {
            commands::control(&ws, &id, Request::Retry { id: id.clone() }, json)
        }
        Command::Merge { id, no_wait, json } => commands::merge(&ws, id, no_wait, json),
        Command::Discard { id, json } => {
            commands::control(&ws, &id, Request::Discard { id: id.clone() }, json)
        }
        Command::Diff { id, json } => commands::diff(&ws, &id, json),
        Command::Agents {
            action: Some(cli::AgentsAction::Enable { names }),
            json,
        } => commands::enable_agents(&ws, names, json),
        Command::Agents { json, action: None } => commands::agents(&ws, json),
        Command::Doctor { json } => commands::doctor(&ws, json),
        Command::Workflow(WorkflowCommand::List { json }) => commands::workflow_list(&ws, json),
        Command::Workflow(WorkflowCommand::Show { name }) => commands::workflow_show(&ws, &name),
        Command::Workflow(WorkflowCommand::Copy { name, force }) => {
            commands::workflow_copy(&ws, &name, force)
        }
        Command::Workflow(WorkflowCommand::Validate { targets, json }) => {
            commands::workflow_validate(&ws, &targets, json)
        }
        Command::Workflow(WorkflowCommand::Run {
            name,
            vars,
            id,
            wait,
            wait_for,
            json,
        }) => commands::submit(
            &ws,
            cli::SubmitArgs {
                prompt: None,
                role: None,
                agent: None,
                chain: None,
                output: None,
                after: vec![],
                id,
                title: None,
                priority: None,
                timeout: None,
                context: vec![],
                files: vec![],
                workflow: Some(name),
                vars,
                workdir: None,
                verify: vec![],
                merge: None,
                wait,
                wait_for,
                json,
            },
        ),
    }
}

/// `dirigent mcp`: stdout is the protocol, so nothing else may be printed there.
fn mcp(ws: Workspace) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(dirigent::mcp::serve_stdio(ws))?;
    Ok(ExitCode::SUCCESS)
}

fn daemon(
    ws: Workspace,
    log_level: &str,
    format: cli::LogFormat,
    options: dirigent::engine::Options,
) -> anyhow::Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(log_level))
        .map_err(|e| anyhow::anyhow!("invalid `--log-level` `{log_level}`: {e}"))?;
    // Logs go to stderr; under systemd, journald takes them from there. A log line that cannot
    // be written (stderr closed: `dirigent daemon 2>&1 | head`) is dropped, never a panic: the
    // daemon's work does not depend on anyone reading its log.
    let colours = matches!(format, cli::LogFormat::Text)
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false)
        .with_writer(move || LossyStderr { colours });
    match format {
        cli::LogFormat::Json => logs.json().with_current_span(false).init(),
        cli::LogFormat::Text => logs.with_ansi(colours).init(),
    }
    limit_malloc_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ran = runtime.block_on(async {
        // Registered before the daemon does anything, so a signal during start-up is not lost.
        let mut stops = dirigent::signals::StopSignals::install(ws.root())?;
        let shutdown = async move {
            stops.next_stop().await;
        };
        let reload = reload_signal()?;
        // A file-size limit (RLIMIT_FSIZE) must surface as a write error the daemon reports, not
        // kill it. A handler rather than SIG_IGN: agents get the default action back on exec.
        let mut xfsz = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(
            nix::libc::SIGXFSZ,
        ))?;
        tokio::spawn(async move { while xfsz.recv().await.is_some() {} });
        dirigent::engine::run_with_options(ws, shutdown, reload, options).await?;
        anyhow::Ok(())
    });
    // The stop is recorded; a blocking step its deadline cut off (a hung git command) must not
    // hold the exit: dropping the runtime would wait for it for ever.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    ran?;
    Ok(ExitCode::SUCCESS)
}

/// stderr, with every write error swallowed (see `daemon`).
struct LossyStderr {
    /// The logger writes colour sequences (stderr is a terminal): they are kept.
    colours: bool,
}

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A log line may name what came from outside (an inbox file's name, an agent's words):
        // what would drive a terminal is taken out. Most lines have nothing to take.
        let plain = buf
            .iter()
            .all(|b| (*b >= 0x20 && *b != 0x7f && *b != 0xc2) || *b == b'\n' || *b == b'\t');
        if plain {
            let _ = std::io::stderr().write_all(buf);
        } else {
            let text = dirigent::terminal::log_safe(&String::from_utf8_lossy(buf), self.colours);
            let _ = std::io::stderr().write_all(text.as_bytes());
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// glibc gives each thread that allocates its own arena (up to 8 per core), and a daemon that
/// runs for weeks keeps their fragments: two arenas hold the same work in less memory
/// (`scripts/bench/throughput`: peak RSS 31.5 → 29.7 MiB). Called before any thread starts.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; no other thread exists yet.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 2);
    }
}

/// Installs the SIGHUP handler now (its default action would end the process) and forwards each
/// SIGHUP as a reload request.
fn reload_signal() -> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if tx.send(()).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}
