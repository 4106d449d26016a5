//! The CLI commands other than `daemon`: the binary's edge, where typed errors become
//! `error: …` lines and exit codes. Everything here reads the same files the daemon writes
//! (the ledger, runs/, outbox/), so it works whether or not the daemon is running.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use dirigent::config::{Config, DEFAULT_CONFIG, validate_name};
use dirigent::duration::{self, Dur, short};
use dirigent::engine::running_daemon;
use dirigent::fsutil;
use dirigent::judge::signal_name;
use dirigent::ledger::{self, Event, Record};
use dirigent::state::{Phase, TaskBook, TaskRecord};
use dirigent::submit;
use dirigent::task::TaskFields;
use dirigent::usage;
use dirigent::workspace::Workspace;

use crate::cli::SubmitArgs;

pub fn init(ws: &Workspace, force: bool) -> Result<ExitCode> {
    ws.ensure()?;
    let cfg = ws.config();
    let existed = cfg.exists();
    if existed && !force {
        println!("kept the existing {}", cfg.display());
    } else {
        fsutil::write_atomic(&cfg, DEFAULT_CONFIG.as_bytes())
            .with_context(|| format!("cannot write `{}`", cfg.display()))?;
        println!("wrote {}", cfg.display());
    }
    println!(
        "created {} (inbox/, running/, done/, failed/, rejected/, escalations/, outbox/, runs/, workflows/)",
        ws.context().display()
    );
    match exclude_from_git(ws) {
        Ok(Some(file)) => println!(
            "added `/.context/` to {} (dirigent's state is not part of your code)",
            file.display()
        ),
        Ok(None) => {}
        Err(e) => eprintln!(
            "warning: could not keep .context/ out of git ({e}); add `.context/` to .gitignore"
        ),
    }
    println!("next: `dirigent daemon` to start, then `dirigent submit \"your prompt\" --wait`");
    Ok(ExitCode::SUCCESS)
}

/// In a git repository, lists `/.context/` in its `info/exclude` (the repository's own,
/// uncommitted ignore file) unless `.gitignore` or the exclude file already ignores it. Returns
/// the file it changed.
fn exclude_from_git(ws: &Workspace) -> Result<Option<PathBuf>> {
    let root = ws.root();
    if !root.join(".git").exists() {
        return Ok(None);
    }
    // `.git` may be a file (a worktree or submodule): ask git where the exclude file is.
    let asked = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-parse", "--git-path", "info/exclude"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|p| !p.is_empty());
    let exclude = match asked {
        Some(p) if Path::new(&p).is_absolute() => PathBuf::from(p),
        Some(p) => root.join(p),
        None if root.join(".git").is_dir() => root.join(".git/info/exclude"),
        None => return Ok(None),
    };
    let ignores = |file: &Path| {
        std::fs::read_to_string(file).is_ok_and(|text| {
            text.lines()
                .map(str::trim)
                .any(|l| matches!(l, ".context" | ".context/" | "/.context" | "/.context/"))
        })
    };
    if ignores(&root.join(".gitignore")) || ignores(&exclude) {
        return Ok(None);
    }
    if let Some(dir) = exclude.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut text = std::fs::read_to_string(&exclude).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(
        "# dirigent's queue, ledger and results (added by `dirigent init`)\n/.context/\n",
    );
    std::fs::write(&exclude, text)?;
    Ok(Some(exclude))
}

/// This workspace's ledger key, if the daemon has made one: records are checked with it.
fn ledger_key(ws: &Workspace) -> Option<dirigent::integrity::Key> {
    dirigent::integrity::load(ws).ok().flatten()
}

fn load_book(ws: &Workspace) -> Result<TaskBook> {
    let key = ledger_key(ws);
    let load = || dirigent::compact::load(ws, None, false, key.as_ref(), false);
    // A compaction may delete a segment between listing and reading it: look once more.
    let loaded = load()
        .or_else(|_| load())
        .with_context(|| format!("cannot read the ledger in `{}`", ws.context().display()))?;
    Ok(loaded.book)
}

fn find_task<'a>(book: &'a TaskBook, id: &str) -> Result<&'a TaskRecord> {
    book.get(id).ok_or_else(|| {
        anyhow::anyhow!("no task `{id}` in this workspace; `dirigent status` lists the tasks")
    })
}

/// Reads the prompt from the argument or stdin.
fn read_prompt(arg: Option<&str>) -> Result<String> {
    match arg {
        Some(p) if p != "-" => Ok(p.to_string()),
        _ => {
            if arg.is_none() && std::io::stdin().is_terminal() {
                bail!("no prompt: give it as an argument, or pipe it in with `-`");
            }
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read the prompt from stdin")?;
            Ok(s)
        }
    }
}

pub fn submit(ws: &Workspace, args: SubmitArgs) -> Result<ExitCode> {
    let prompt = match (&args.workflow, &args.prompt) {
        // A workflow needs no prompt; one given is kept for the record.
        (Some(_), None) => String::new(),
        _ => {
            let p = read_prompt(args.prompt.as_deref())?;
            if p.trim().is_empty() {
                bail!("the prompt is empty");
            }
            p
        }
    };
    let timeout = match &args.timeout {
        Some(t) => Some(Dur(
            duration::parse(t).map_err(|e| anyhow::anyhow!("`--timeout`: {e}"))?
        )),
        None => None,
    };
    if let Some(id) = &args.id {
        validate_name(id).map_err(|m| anyhow::anyhow!("invalid `--id` `{id}`: {m}"))?;
    }
    let fields = TaskFields {
        id: args.id,
        title: args.title,
        prompt: (!prompt.is_empty()).then_some(prompt),
        workflow: args.workflow,
        vars: args.vars.into_iter().collect(),
        role: args.role,
        agent: args.agent,
        chain: args.chain,
        output: args.output,
        after: args.after,
        priority: args.priority.unwrap_or(0),
        timeout,
        context: args.context,
        files: args.files,
        parent: dirigent::task::parent_from_env(),
        ..Default::default()
    };
    // Validate here, before anything is written, with the same rules the daemon applies.
    let config = Config::load(&ws.config())?;
    let book = load_book(ws)?;
    let (id, fields) =
        submit::prepare(fields, &config, ws, |id| book.contains(id)).map_err(|e| {
            anyhow::anyhow!(
                "{}",
                e.to_string()
                    .replace("choose another id", "choose another `--id`")
            )
        })?;
    if !ws.context().is_dir() {
        eprintln!(
            "dirigent: created `{}`: `{}` is a dirigent workspace now (`dirigent init` also writes a config to edit; add `.context/` to .gitignore)",
            ws.context().display(),
            ws.root().display()
        );
    }
    ws.ensure()?;
    let ledger_offset = std::fs::metadata(ws.ledger()).map(|m| m.len()).unwrap_or(0);
    let name = format!("{id}.json");
    let dest = submit_file(ws, &id, fields).map_err(|e| {
        anyhow::anyhow!(
            "{}",
            e.replace("choose another id", "choose another `--id`")
        )
    })?;
    if args.json {
        println!("{}", json!({"id": id, "file": dest}));
    } else if !args.wait {
        println!("{id}");
    }
    if !args.wait && running_daemon(ws).is_none() {
        eprintln!(
            "dirigent: no daemon is running on this workspace: `{id}` waits in .context/inbox/ and runs when one starts (`dirigent daemon`)"
        );
    }
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    if running_daemon(ws).is_none() {
        eprintln!(
            "dirigent: submitted `{id}`; no daemon is running on this workspace yet — waiting for one to start"
        );
    } else {
        eprintln!("dirigent: submitted `{id}`, waiting");
    }
    wait_for(ws, &id, &name, ledger_offset)
}

/// Puts the task into the inbox: through the running daemon when there is one (it reserves the
/// id, so no file dropped meanwhile can take it), else straight into the inbox.
fn submit_file(
    ws: &Workspace,
    id: &str,
    fields: TaskFields,
) -> std::result::Result<std::path::PathBuf, String> {
    if running_daemon(ws).is_some() {
        let req = dirigent::control::Request::Submit {
            task: Box::new(fields.clone()),
        };
        if let Ok(answer) = dirigent::control::request(ws, &req) {
            if !answer.ok {
                return Err(answer.message);
            }
            let file = answer.data.as_ref().and_then(|d| d["file"].as_str());
            return Ok(file
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| ws.inbox().join(format!("{id}.json"))));
        }
    }
    submit::write_into_inbox(ws, id, &fields)
        .map(|s| s.file)
        .map_err(|e| e.to_string())
}

/// Follows the ledger until the task is done, escalated or rejected. For a workflow run, its
/// tasks' attempts and its loop rounds are shown as they happen too.
fn wait_for(ws: &Workspace, id: &str, file: &str, mut offset: u64) -> Result<ExitCode> {
    let waker = ChangeWaker::new(&[ws.context()]);
    let started = Instant::now();
    // On a terminal, a live line shows what runs now; in a pipe, only the event lines.
    let mut live = LiveLine::new(std::io::stderr().is_terminal());
    // What runs now: (task, attempt, agent, since), the run's own tasks included.
    let mut current: Vec<(String, u32, String, Instant)> = Vec::new();
    let child_prefix = format!("{id}.");
    let key = ledger_key(ws);
    loop {
        let (records, next) = ledger::read_from(&ws.ledger(), offset, key.as_ref())?;
        offset = next;
        for r in records {
            let Some(task) = r.event.task().map(str::to_string) else {
                if let Event::Rejected {
                    file: f,
                    reason,
                    moved_to,
                } = &r.event
                    && f == file
                {
                    live.clear();
                    eprintln!("error: the task was rejected: {reason}");
                    eprintln!("(the file is in .context/rejected/{moved_to})");
                    return Ok(ExitCode::from(1));
                }
                continue;
            };
            let own = task == id;
            let child = task.starts_with(&child_prefix);
            if !own && !child {
                continue;
            }
            match &r.event {
                Event::AttemptStarted { attempt, agent, .. } => {
                    current.push((task.clone(), *attempt, agent.clone(), Instant::now()));
                }
                Event::AttemptFinished { .. } | Event::Done { .. } | Event::Escalated { .. } => {
                    current.retain(|(t, ..)| *t != task);
                }
                _ => {}
            }
            live.clear();
            if own {
                if let Some(code) = report_progress(ws, id, &r, started)? {
                    return Ok(code);
                }
            } else {
                report_child(&task, &r, started);
            }
        }
        let line = match current.last() {
            Some((task, n, agent, since)) => format!(
                "[{}] {}attempt {n}: {agent} running for {}{}",
                short(started.elapsed()),
                if task == id {
                    String::new()
                } else {
                    format!("{task}: ")
                },
                short(since.elapsed()),
                if current.len() > 1 {
                    format!(" (+{} more running)", current.len() - 1)
                } else {
                    String::new()
                }
            ),
            None => format!("[{}] waiting for `{id}`", short(started.elapsed())),
        };
        live.draw(&line);
        waker.wait(Duration::from_secs(1));
    }
}

/// The one redrawn status line of `--wait` on a terminal. It is drawn only when its text
/// changed and at most every [`LiveLine::MIN_GAP`], so a busy ledger cannot flood the
/// terminal; event lines first clear it.
struct LiveLine {
    tty: bool,
    shown: Option<String>,
    drawn_at: Option<Instant>,
}

impl LiveLine {
    const MIN_GAP: Duration = Duration::from_millis(250);

    fn new(tty: bool) -> Self {
        LiveLine {
            tty,
            shown: None,
            drawn_at: None,
        }
    }

    fn draw(&mut self, line: &str) {
        if !self.tty || self.shown.as_deref() == Some(line) {
            return;
        }
        if self.drawn_at.is_some_and(|t| t.elapsed() < Self::MIN_GAP) && self.shown.is_some() {
            return;
        }
        eprint!("\r\x1b[2K{line}");
        let _ = std::io::stderr().flush();
        self.shown = Some(line.to_string());
        self.drawn_at = Some(Instant::now());
    }

    /// Erases the line (when one is shown) so that an event line can take its place.
    fn clear(&mut self) {
        if self.tty && self.shown.take().is_some() {
            eprint!("\r\x1b[2K");
        }
    }
}

/// One event of a workflow run's task, for `--wait`: its attempts, its end, its rounds.
fn report_child(task: &str, r: &Record, started: Instant) {
    let t = short(started.elapsed());
    match &r.event {
        Event::AttemptStarted { attempt, agent, .. } => {
            eprintln!("[{t}] {task}: attempt {attempt}: {agent} started")
        }
        Event::AttemptFinished {
            attempt,
            agent,
            class,
            reason,
            duration_ms,
            ..
        } => eprintln!(
            "[{t}] {task}: attempt {attempt}: {agent} → {class} after {}: {reason}",
            short(Duration::from_millis(*duration_ms))
        ),
        Event::Done { output, agent, .. } => {
            eprintln!("[{t}] {task}: done by {agent}; result in {output}")
        }
        Event::Escalated { reason, .. } => eprintln!(
            "[{t}] {task}: failed: {}",
            reason.lines().next().unwrap_or("")
        ),
        _ => {}
    }
}

fn report_progress(
    ws: &Workspace,
    id: &str,
    r: &Record,
    started: Instant,
) -> Result<Option<ExitCode>> {
    let t = short(started.elapsed());
    match &r.event {
        Event::AttemptStarted {
            attempt,
            agent,
            pid,
            ..
        } => {
            eprintln!("[{t}] attempt {attempt}: {agent} started (pid {pid})");
        }
        Event::AttemptFinished {
            attempt,
            agent,
            class,
            reason,
            duration_ms,
            ..
        } => {
            eprintln!(
                "[{t}] attempt {attempt}: {agent} → {class} after {}: {reason}",
                short(Duration::from_millis(*duration_ms))
            );
        }
        Event::Done { output, agent, .. } => {
            eprintln!("[{t}] done by {agent}; result in {output}");
            let text = std::fs::read(ws.root().join(output))
                .with_context(|| format!("cannot read `{output}`"))?;
            std::io::stdout().write_all(&text)?;
            return Ok(Some(ExitCode::SUCCESS));
        }
        Event::Escalated {
            reason, attempts, ..
        } => {
            eprintln!("[{t}] escalated after {attempts} attempt(s): {reason}");
            eprintln!("see .context/escalations/{id}.md");
            return Ok(Some(ExitCode::from(1)));
        }
        Event::Requeued { .. } => eprintln!(
            "[{t}] the daemon stopped; the task is back in the inbox and waits for the next start"
        ),
        Event::PhaseCompleted { phase, output, .. } => {
            eprintln!("[{t}] phase {phase} completed: {output}")
        }
        Event::LoopRound {
            phase,
            round,
            passed,
            feedback,
            ..
        } => eprintln!(
            "[{t}] phase {phase} round {round}: {}{}",
            if *passed { "PASS" } else { "FAIL" },
            feedback
                .lines()
                .find(|l| !l.trim().is_empty())
                .map(|l| format!(" — {}", l.chars().take(160).collect::<String>()))
                .unwrap_or_default()
        ),
        _ => {}
    }
    Ok(None)
}

/// Wakes a waiting CLI command when something in the watched directories changes, or after a
/// timeout (a safety net for file systems without change events).
struct ChangeWaker {
    rx: std::sync::mpsc::Receiver<()>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl ChangeWaker {
    fn new(dirs: &[&Path]) -> Self {
        use notify::Watcher;
        let (tx, rx) = std::sync::mpsc::channel();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Our own reads of the ledger and capture files raise open/read/close events on
            // the watched directories: waking on those would spin a core.
            if res.as_ref().map_or(true, |e| is_change(&e.kind)) {
                let _ = tx.send(());
            }
        })
        .ok()
        .map(|mut w| {
            for d in dirs {
                let _ = w.watch(d, notify::RecursiveMode::NonRecursive);
            }
            w
        });
        ChangeWaker {
            rx,
            _watcher: watcher,
        }
    }

    fn wait(&self, limit: Duration) {
        let _ = self.rx.recv_timeout(limit);
        while self.rx.try_recv().is_ok() {}
    }
}

/// Whether a watcher event means something may have changed: a file created, written,
/// renamed or removed (and a file closed after writing), not merely opened or read.
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// The daemon's live state when it answers: its task book and, when it does not take work
/// now, why.
struct Live {
    answering: bool,
    paused: Option<String>,
}

fn daemon_line(ws: &Workspace, live: &Live) -> String {
    match (running_daemon(ws), live.answering) {
        (Some(pid), true) => match &live.paused {
            Some(why) => format!(
                "daemon: running (pid {pid}), not taking work: {why}; this is its live state"
            ),
            None => format!("daemon: running (pid {pid}); this is its live state"),
        },
        (Some(pid), false) => format!(
            "daemon: running (pid {pid}), not answering; showing the state recorded in the ledger"
        ),
        (None, _) => "daemon: not running (showing the state recorded in the ledger)".to_string(),
    }
}

/// The running daemon's own state when it answers, else the files. `true` = live.
fn load_live_book(ws: &Workspace) -> Result<(TaskBook, Live)> {
    if running_daemon(ws).is_some()
        && let Ok(answer) = dirigent::control::request(ws, &dirigent::control::Request::Status)
        && let Some(data) = answer.data
    {
        let paused = data["paused"]["why"].as_str().map(str::to_string);
        if let Ok(book) = serde_json::from_value::<TaskBook>(data) {
            return Ok((
                book,
                Live {
                    answering: true,
                    paused,
                },
            ));
        }
    }
    Ok((
        load_book(ws)?,
        Live {
            answering: false,
            paused: None,
        },
    ))
}

/// A file waiting in the inbox that the daemon has not taken in yet: (id, file name, whether
/// it is a task file at all).
fn inbox_files(ws: &Workspace, book: &TaskBook) -> Vec<(String, String, bool)> {
    let mut out: Vec<(String, String, bool)> = dirigent::inbox::scan(&ws.inbox())
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let (stem, _) = dirigent::fsutil::split_name(&c.name);
            let is_task = c.name.ends_with(".json") || c.name.ends_with(".md");
            (
                dirigent::task::id_from_stem(stem).to_string(),
                c.name,
                is_task,
            )
        })
        .filter(|(id, _, _)| !book.contains(id))
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// What a waiting inbox file will become, in words.
fn inbox_note(ws: &Workspace, is_task: bool) -> &'static str {
    match (is_task, running_daemon(ws).is_some()) {
        (false, _) => "not a task file (only .json and .md are): the daemon moves it to rejected/",
        (true, true) => "waiting in the inbox; the daemon takes it in shortly",
        (true, false) => "waiting in the inbox; it runs when a daemon starts (`dirigent daemon`)",
    }
}

pub fn status(ws: &Workspace, id: Option<&str>, as_json: bool) -> Result<ExitCode> {
    let (book, live) = load_live_book(ws)?;
    if let Some(id) = id
        && book.get(id).is_none()
        && let Some((_, file, is_task)) = inbox_files(ws, &book).into_iter().find(|(i, ..)| i == id)
    {
        if as_json {
            let v = json!({"id": id, "state": "inbox", "file": ws.inbox().join(&file)});
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!("{id} — .context/inbox/{file}");
            println!("state:    inbox: {}", inbox_note(ws, is_task));
            println!("{}", daemon_line(ws, &live));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(id) = id {
        let t = find_task(&book, id)?;
        if as_json {
            println!("{}", serde_json::to_string_pretty(t)?);
            return Ok(ExitCode::SUCCESS);
        }
        println!("{} — {}", t.id, t.title);
        println!("state:    {}", describe(t));
        println!(
            "chain:    {}",
            if t.chain.is_empty() {
                "(empty)".into()
            } else {
                t.chain.join(" → ")
            }
        );
        println!("received: {}", duration::clock(t.received_ms));
        if !t.after.is_empty() {
            println!("after:    {}", t.after.join(", "));
        }
        if t.cost_usd > 0.0 || t.budget_usd.is_some() {
            let budget = t
                .budget_usd
                .map(|b| format!(" of its {} budget", usage::dollars(b)))
                .unwrap_or_default();
            println!("cost:     {}{budget}", usage::dollars(t.cost_usd));
        }
        for a in &t.attempts {
            let status = match (a.exit_code, a.signal) {
                (_, Some(s)) => format!("signal {s} ({})", signal_name(s)),
                (Some(c), None) => format!("exit {c}"),
                _ => "-".into(),
            };
            println!(
                "attempt {}: {:<10} {:<12} {:<10} {:>8}  {}",
                a.n,
                a.agent,
                a.class.map(|c| c.as_str()).unwrap_or("running"),
                status,
                short(Duration::from_millis(a.duration_ms)),
                a.reason
            );
        }
        print_run(ws, &book, t);
        println!("{}", daemon_line(ws, &live));
        return Ok(ExitCode::SUCCESS);
    }
    let waiting = inbox_files(ws, &book);
    if as_json {
        let tasks: Vec<&TaskRecord> = book.iter().collect();
        let inbox: Vec<serde_json::Value> = waiting
            .iter()
            .map(|(id, file, is_task)| {
                json!({"id": id, "state": "inbox", "file": file, "task_file": is_task})
            })
            .collect();
        let pid = running_daemon(ws);
        let out = json!({
            // A number, or null when no daemon runs (or its pid could not be read).
            "daemon_pid": pid.as_deref().and_then(|p| p.parse::<u32>().ok()),
            "daemon_running": pid.is_some(),
            "inbox": inbox,
            "paused": live.paused,
            "tasks": tasks,
            "rejected": book.rejected,
            "spend": spend_report(ws, &book)?,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}", daemon_line(ws, &live));
    let spend = spend_report(ws, &book)?;
    if let Some(line) = spend_line(&spend) {
        println!("{line}");
    }
    if book.is_empty() && book.rejected.is_empty() && waiting.is_empty() {
        println!("no tasks yet: drop a file into .context/inbox/ or run `dirigent submit \"…\"`");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<28} {:<9} {:<10} {:>3} {:>8}  TITLE",
        "ID", "STATE", "AGENT", "#", "TIME"
    );
    for t in book.iter() {
        let agent = match &t.phase {
            Phase::Done { agent, .. } | Phase::Running { agent, .. } => agent.clone(),
            _ => t
                .attempts
                .last()
                .map(|a| a.agent.clone())
                .unwrap_or_else(|| "-".into()),
        };
        println!(
            "{:<28} {:<9} {:<10} {:>3} {:>8}  {}",
            t.id,
            t.phase.label(),
            agent,
            t.attempts.len(),
            short(Duration::from_millis(t.busy_ms())),
            t.title
        );
        // Why it failed, and what to do about it, where the user looks first.
        if let Phase::Failed { reason, .. } = &t.phase {
            let mut line: String = reason.chars().take(300).collect();
            if reason.chars().count() > 300 {
                line.push('…');
            }
            println!("{:<28} ↳ {line}", "");
        }
    }
    for (id, file, is_task) in &waiting {
        println!(
            "{id:<28} {:<9} {:<10} {:>3} {:>8}  .context/inbox/{file}",
            "inbox", "-", 0, "-"
        );
        println!("{:<28} ↳ {}", "", inbox_note(ws, *is_task));
    }
    for r in &book.rejected {
        println!(
            "rejected: {} — {}",
            r.file,
            r.reason.lines().next().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// For a workflow run: each phase of its workflow with its state, its loop rounds, and its
/// tasks with theirs (failed ones with their reason and report).
fn print_run(ws: &Workspace, book: &TaskBook, run: &TaskRecord) {
    let prefix = format!("{}.", run.id);
    let children: Vec<&TaskRecord> = book.iter().filter(|c| c.id.starts_with(&prefix)).collect();
    let workflow = run.spec.as_ref().and_then(|s| s.fields.workflow.clone());
    if workflow.is_none() && children.is_empty() && run.phases.is_empty() {
        return;
    }
    // The phases in order: from the definition when it can be read, else those recorded.
    let mut phases: Vec<String> = workflow
        .as_deref()
        .and_then(|name| {
            let defs = dirigent::workflow::discover(&ws.workflows()).ok()?;
            let def = defs.into_iter().find(|d| d.name == name)?;
            let wf: dirigent::workflow::Workflow = serde_saphyr::from_str(&def.text).ok()?;
            Some(wf.phases.iter().map(|p| p.name.value.clone()).collect())
        })
        .unwrap_or_default();
    // Once finished, a run keeps no definition: its recorded phases and its tasks' ids say.
    let from_tasks = children.iter().filter_map(|c| {
        let rest = c.id.strip_prefix(&prefix)?;
        let phase = rest.split('.').next()?;
        (phase != "distill").then(|| phase.to_string())
    });
    for p in run.phases.iter().map(|(p, _)| p.clone()).chain(from_tasks) {
        if !phases.contains(&p) {
            phases.push(p);
        }
    }
    println!("phases:");
    for p in &phases {
        let mine: Vec<&&TaskRecord> = children
            .iter()
            .filter(|c| {
                c.id.strip_prefix(&prefix)
                    .is_some_and(|rest| rest == p || rest.starts_with(&format!("{p}.")))
            })
            .collect();
        let state = if let Some((_, out)) = run.phases.iter().find(|(done, _)| done == p) {
            format!("completed → {out}")
        } else if mine.iter().any(|c| matches!(c.phase, Phase::Failed { .. })) {
            "failed".to_string()
        } else if mine.is_empty() {
            "not started".to_string()
        } else {
            "running".to_string()
        };
        println!("  {p:<20} {state}");
        for (phase, round, passed, feedback) in &run.rounds {
            if phase == p {
                println!(
                    "  {:<20}   round {round}: {}{}",
                    "",
                    if *passed { "PASS" } else { "FAIL" },
                    feedback
                        .lines()
                        .find(|l| !l.trim().is_empty())
                        .map(|l| format!(" — {}", l.chars().take(100).collect::<String>()))
                        .unwrap_or_default()
                );
            }
        }
    }
    if children.is_empty() {
        return;
    }
    println!("tasks:");
    for c in &children {
        let agent = match &c.phase {
            Phase::Done { agent, .. } | Phase::Running { agent, .. } => agent.clone(),
            _ => c
                .attempts
                .last()
                .map(|a| a.agent.clone())
                .unwrap_or_else(|| "-".into()),
        };
        println!("  {:<32} {:<9} {agent}", c.id, c.phase.label());
        if let Phase::Failed { reason, .. } = &c.phase {
            println!("  {:<32} ↳ {}", "", reason.lines().next().unwrap_or(""));
            let report = ws.escalations().join(format!("{}.md", c.id));
            if report.exists() {
                println!("  {:<32}   report: {}", "", report.display());
            }
        }
    }
}

/// Today's spending (UTC) against the budgets: `{day, total_usd, daily_budget_usd, agents:
/// {name: {spent_usd, budget_usd}}}`.
fn spend_report(ws: &Workspace, book: &TaskBook) -> Result<serde_json::Value> {
    // `status` works with a broken config too: the budgets are then unknown, and it says so.
    let config = match Config::load(&ws.config()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warning: budgets not shown: {e}");
            Config::parse("{}", "no config")?
        }
    };
    let today = dirigent::state::day_of(ledger::now_ms());
    let day = book.spend.get(&today).cloned().unwrap_or_default();
    let mut agents = serde_json::Map::new();
    let names: std::collections::BTreeSet<&String> = day
        .by_agent
        .keys()
        .chain(config.budgets.agents.keys())
        .collect();
    for name in names {
        agents.insert(
            name.clone(),
            json!({
                "spent_usd": day.by_agent.get(name).copied().unwrap_or(0.0),
                "budget_usd": config.budgets.agents.get(name),
            }),
        );
    }
    Ok(json!({
        "day": duration::clock(today * 86_400_000)[..10].to_string(),
        "total_usd": day.total_usd,
        "daily_budget_usd": config.budgets.daily,
        "agents": agents,
    }))
}

/// `spend today: $1.20 of $20.00 (claude $0.80 of $5.00, gemini $0.40)`, or nothing when
/// nothing was spent and no budget is set.
fn spend_line(spend: &serde_json::Value) -> Option<String> {
    let of = |budget: &serde_json::Value| {
        budget
            .as_f64()
            .map(|b| format!(" of {}", usage::dollars(b)))
            .unwrap_or_default()
    };
    let total = spend["total_usd"].as_f64().unwrap_or(0.0);
    let agents = spend["agents"].as_object()?;
    if total == 0.0 && spend["daily_budget_usd"].is_null() && agents.is_empty() {
        return None;
    }
    let parts: Vec<String> = agents
        .iter()
        .map(|(name, a)| {
            format!(
                "{name} {}{}",
                usage::dollars(a["spent_usd"].as_f64().unwrap_or(0.0)),
                of(&a["budget_usd"])
            )
        })
        .collect();
    let mut line = format!(
        "spend today (UTC): {}{}",
        usage::dollars(total),
        of(&spend["daily_budget_usd"])
    );
    if !parts.is_empty() {
        line.push_str(&format!(" ({})", parts.join(", ")));
    }
    Some(line)
}

fn describe(t: &TaskRecord) -> String {
    match &t.phase {
        Phase::Pending => "pending".into(),
        Phase::Requeued => "requeued (back in the inbox until the daemon starts)".into(),
        Phase::Running {
            attempt,
            agent,
            since_ms,
        } => {
            format!(
                "running: attempt {attempt} with {agent} since {}",
                duration::clock(*since_ms)
            )
        }
        Phase::Done {
            agent,
            output,
            finished_ms,
        } => {
            format!(
                "done by {agent} at {}; result in {output}",
                duration::clock(*finished_ms)
            )
        }
        Phase::Failed {
            reason,
            finished_ms,
        } => format!(
            "failed ({} at {}): {}; report in .context/escalations/{}.md",
            if reason == dirigent::state::CANCELLED_REASON {
                "cancelled"
            } else {
                "escalated"
            },
            duration::clock(*finished_ms),
            dirigent::progress::one_line(reason, 300),
            t.id
        ),
    }
}

pub fn logs(
    ws: &Workspace,
    id: &str,
    follow: bool,
    attempt: Option<u32>,
    stderr: bool,
) -> Result<ExitCode> {
    let mut book = load_book(ws)?;
    if follow && attempt.is_none() {
        // Following a task that has not started yet (queued, or still in the inbox): wait for
        // its first attempt instead of failing.
        let mut told = false;
        let waker = ChangeWaker::new(&[ws.context()]);
        loop {
            let waiting_in_inbox = book.get(id).is_none()
                && inbox_files(ws, &book)
                    .iter()
                    .any(|(i, _, is_task)| i == id && *is_task);
            match book.get(id) {
                Some(t) if !t.attempts.is_empty() => break,
                Some(t) if t.phase.is_terminal() => {
                    eprintln!(
                        "error: task `{id}` ended without an attempt: {}",
                        describe(t)
                    );
                    return Ok(ExitCode::from(1));
                }
                Some(_) => {}
                None if waiting_in_inbox => {}
                None => break, // unknown: `find_task` below says so
            }
            if !told {
                eprintln!(
                    "dirigent: `{id}` has not started yet; waiting for its first attempt{}",
                    if running_daemon(ws).is_none() {
                        " (no daemon is running: start one with `dirigent daemon`)"
                    } else {
                        ""
                    }
                );
                told = true;
            }
            waker.wait(Duration::from_secs(1));
            book = load_book(ws)?;
        }
    }
    let t = find_task(&book, id)?;
    let a = match attempt {
        Some(n) => t.attempts.iter().find(|a| a.n == n).ok_or_else(|| {
            anyhow::anyhow!(
                "task `{id}` has no attempt {n} (it has {})",
                t.attempts.len()
            )
        })?,
        None => t
            .attempts
            .last()
            .ok_or_else(|| anyhow::anyhow!("task `{id}` has not started an attempt yet"))?,
    };
    let path = ws.run_dir(id).join(format!(
        "{}-{}.{}",
        a.n,
        a.agent,
        if stderr { "stderr" } else { "stdout" }
    ));
    let mut out = std::io::stdout().lock();
    let mut pos = copy_from(&path, 0, &mut out)?;
    if !follow || a.class.is_some() {
        return Ok(ExitCode::SUCCESS);
    }
    let n = a.n;
    let waker = ChangeWaker::new(&[&ws.run_dir(id), ws.context()]);
    let mut offset = 0;
    let key = ledger_key(ws);
    loop {
        let (records, next) = ledger::read_from(&ws.ledger(), offset, key.as_ref())?;
        offset = next;
        let finished = records.iter().any(|r| {
            matches!(&r.event, Event::AttemptFinished { task, attempt, .. } if task == id && *attempt == n)
        });
        pos = copy_from(&path, pos, &mut out)?;
        if finished {
            return Ok(ExitCode::SUCCESS);
        }
        waker.wait(Duration::from_secs(1));
    }
}

fn copy_from(path: &Path, pos: u64, out: &mut impl Write) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(pos),
        Err(e) => return Err(e).with_context(|| format!("cannot open `{}`", path.display())),
    };
    f.seek(SeekFrom::Start(pos))?;
    let n = std::io::copy(&mut f, out)?;
    out.flush()?;
    Ok(pos + n)
}

pub fn result(ws: &Workspace, id: &str) -> Result<ExitCode> {
    let book = load_book(ws)?;
    let t = find_task(&book, id)?;
    match &t.phase {
        Phase::Done { output, .. } => {
            let text = std::fs::read(ws.root().join(output))
                .with_context(|| format!("cannot read the result `{output}`"))?;
            std::io::stdout().write_all(&text)?;
            Ok(ExitCode::SUCCESS)
        }
        Phase::Failed { .. } => {
            bail!("task `{id}` failed and has no result; see .context/escalations/{id}.md")
        }
        other => bail!(
            "task `{id}` is not done yet (it is {}); `dirigent submit --wait` or `dirigent logs {id} -f` follow it",
            other.label()
        ),
    }
}

pub fn agents(ws: &Workspace, as_json: bool) -> Result<ExitCode> {
    let config = Arc::new(Config::load(&ws.config())?);
    let book = load_book(ws)?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&dirigent::catalog::agents_report(ws, &config, &book))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let default_chain = config.effective_default_chain(ws.root());
    let rows = dirigent::catalog::agents(ws, &config, &book, &default_chain);
    println!("config: {}", config.source);
    println!(
        "default chain: {}",
        if default_chain.is_empty() {
            "(empty: no agent is installed)".to_string()
        } else {
            default_chain.join(" → ")
        }
    );
    println!();
    for r in &rows {
        let name = r["name"].as_str().unwrap_or("");
        let where_ = r["path"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| "not installed".into());
        let limits = format!(
            "timeout {}, idle {}, max_parallel {}, stagger {}",
            short(Duration::from_millis(r["timeout_ms"].as_u64().unwrap_or(0))),
            r["idle_timeout_ms"]
                .as_u64()
                .map(|m| short(Duration::from_millis(m)))
                .unwrap_or_else(|| "none".into()),
            r["max_parallel"]
                .as_u64()
                .map(|m| m.to_string())
                .unwrap_or_else(|| "-".into()),
            short(Duration::from_millis(r["stagger_ms"].as_u64().unwrap_or(0))),
        );
        let ins: Vec<&str> = r["in"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        println!("{name:<10} {where_}");
        let installed = r["installed"].as_bool().unwrap_or(false);
        if !installed {
            println!(
                "{:<10} cannot run: `{}` is not installed (not on PATH){}",
                "",
                r["program"].as_str().unwrap_or(name),
                r["install_hint"]
                    .as_str()
                    .map(|h| format!("; install: {h}"))
                    .unwrap_or_default()
            );
        }
        match r["availability"]["state"].as_str() {
            Some("cooling_down") => println!(
                "{:<10} COOLING DOWN until {}: {}",
                "",
                r["availability"]["until"].as_str().unwrap_or(""),
                r["availability"]["reason"].as_str().unwrap_or("")
            ),
            Some("disabled") => println!(
                "{:<10} DISABLED since {} (auth failed: {}); fix it, then `dirigent agents enable {name}`",
                "",
                r["availability"]["since"].as_str().unwrap_or(""),
                r["availability"]["reason"].as_str().unwrap_or("")
            ),
            // Never "ready" for an agent that cannot start.
            _ if !installed => {}
            _ => println!(
                "{:<10} ready (provider `{}`)",
                "",
                r["provider"].as_str().unwrap_or("")
            ),
        }
        println!("{:<10} {limits}", "");
        if !ins.is_empty() {
            println!("{:<10} in: {}", "", ins.join(", "));
        }
        if r["attempts"].as_u64().unwrap_or(0) > 0 {
            println!("{:<10} attempts: {}, ok: {}", "", r["attempts"], r["ok"]);
        }
        if let Some(f) = r["last_failure"].as_object() {
            println!(
                "{:<10} last failure: {} at {} (task {}): {}",
                "",
                f["class"].as_str().unwrap_or(""),
                f["at"].as_str().unwrap_or(""),
                f["task"].as_str().unwrap_or(""),
                f["reason"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn doctor(ws: &Workspace, as_json: bool) -> Result<ExitCode> {
    let config = Config::load(&ws.config())?;
    let book = load_book(ws)?;
    let report = dirigent::doctor::report(ws, &config, &book);
    let default_chain = config.effective_default_chain(ws.root());
    let agents = report["agents"].as_array().cloned().unwrap_or_default();
    let usable = agents
        .iter()
        .any(|a| a["ok"] == true && default_chain.iter().any(|c| a["name"] == c.as_str()));
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("config: {}", config.source);
        for a in &agents {
            let name = a["name"].as_str().unwrap_or("");
            let version = a["version"]
                .as_str()
                .map(|v| format!(" ({v})"))
                .unwrap_or_default();
            let place = match a["path"].as_str() {
                Some(p) => format!("{p}{version}"),
                None => "not installed".into(),
            };
            let creds = match a["credentials"]["state"].as_str() {
                Some("found") => format!(
                    ", credentials: {}",
                    a["credentials"]["at"].as_str().unwrap_or("")
                ),
                Some("missing") => ", credentials: none".into(),
                _ if a["preset"].is_string() && a["installed"] == true => {
                    ", credentials: not checked (its own answer decides)".into()
                }
                _ => String::new(),
            };
            let state = match a["availability"]["state"].as_str() {
                Some("cooling_down") => format!(
                    ", cooling down until {}",
                    a["availability"]["until"].as_str().unwrap_or("")
                ),
                Some("disabled") => ", disabled".into(),
                _ => String::new(),
            };
            let verdict = if a["ok"] == true { "ok" } else { "PROBLEM" };
            println!("{name:<10} {verdict}: {place}{creds}{state}");
            for p in a["problems"].as_array().into_iter().flatten() {
                println!("{:<10} - {}", "", p["problem"].as_str().unwrap_or(""));
                println!("{:<10}   fix: {}", "", p["fix"].as_str().unwrap_or(""));
            }
            if let Some(f) = a["last_failure"].as_object() {
                println!(
                    "{:<10} last failure: {} (task {}): {}",
                    "",
                    f["class"].as_str().unwrap_or(""),
                    f["task"].as_str().unwrap_or(""),
                    f["reason"].as_str().unwrap_or("")
                );
            }
        }
        println!(
            "\ndefault chain: {}",
            if default_chain.is_empty() {
                "(empty: no agent is installed)".to_string()
            } else {
                default_chain.join(" → ")
            }
        );
        if !usable {
            println!("no agent of the default chain can run: fix one of the problems above");
        }
        println!(
            "(checked with this shell's environment; a daemon started by systemd or launchd may see another one)"
        );
    }
    Ok(if usable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn find_workflow(ws: &Workspace, name: &str) -> Result<dirigent::workflow::Definition> {
    let all = dirigent::workflow::discover(&ws.workflows())?;
    let names: Vec<&str> = all.iter().map(|d| d.name.as_str()).collect();
    all.iter().find(|d| d.name == name).cloned().ok_or_else(|| {
        anyhow::anyhow!(
            "no workflow `{name}` (workflows: {}); `dirigent workflow list` shows them",
            names.join(", ")
        )
    })
}

pub fn workflow_list(ws: &Workspace, as_json: bool) -> Result<ExitCode> {
    let config = Config::load(&ws.config())?;
    let rows = dirigent::catalog::workflows(ws, &config)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    for r in &rows {
        let phases: Vec<&str> = r["phases"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        println!(
            "{:<30} {}",
            r["name"].as_str().unwrap_or(""),
            r["description"].as_str().unwrap_or("")
        );
        if r["valid"] == true {
            println!(
                "{:<30} {} ({})",
                "",
                phases.join(" → "),
                r["source"].as_str().unwrap_or("")
            );
        } else {
            println!(
                "{:<30} INVALID: run `dirigent workflow validate {}` ({})",
                "",
                r["name"].as_str().unwrap_or(""),
                r["source"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn workflow_show(ws: &Workspace, name: &str) -> Result<ExitCode> {
    let def = find_workflow(ws, name)?;
    println!("# {} ({})", def.name, def.source);
    print!("{}", def.text);
    if !def.text.ends_with('\n') {
        println!();
    }
    // The prompts each phase really gets, defaults included, as comments: the output stays a
    // definition that can be saved and edited.
    if let Ok(config) = Config::load(&ws.config())
        && let Ok(wf) = dirigent::workflow::validate(&def, &config)
    {
        print!("{}", dirigent::workflow::explain::prompt_comments(&wf));
    }
    Ok(ExitCode::SUCCESS)
}

/// Copies a workflow's definition into `.context/workflows/NAME.yaml` to edit it there (the
/// copy replaces the built-in). Refuses to overwrite a non-empty file unless `force`.
pub fn workflow_copy(ws: &Workspace, name: &str, force: bool) -> Result<ExitCode> {
    let dest = ws.workflows().join(format!("{name}.yaml"));
    // The built-in, even when a copy exists: copying again starts over from the original.
    let text = match dirigent::workflow::BUILTIN.iter().find(|(n, _)| *n == name) {
        Some((_, text)) => text.to_string(),
        None => find_workflow(ws, name)?.text,
    };
    let existing = std::fs::read_to_string(&dest).unwrap_or_default();
    if !existing.trim().is_empty() && !force {
        bail!(
            "`{}` exists already; edit it, or give `--force` to replace it with the built-in",
            dest.display()
        );
    }
    std::fs::create_dir_all(ws.workflows())
        .with_context(|| format!("cannot create `{}`", ws.workflows().display()))?;
    std::fs::write(&dest, text).with_context(|| format!("cannot write `{}`", dest.display()))?;
    println!(
        "copied `{name}` to {}; it replaces the built-in from now on (delete it to go back)",
        dest.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn workflow_validate(ws: &Workspace, targets: &[String]) -> Result<ExitCode> {
    let config = Config::load(&ws.config())?;
    let defs = if targets.is_empty() {
        dirigent::workflow::discover(&ws.workflows())?
    } else {
        let mut defs = Vec::new();
        for t in targets {
            let path = Path::new(t);
            if t.ends_with(".yaml") || t.ends_with(".yml") {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("cannot read `{t}`"))?;
                let name = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or(t)
                    .to_string();
                defs.push(dirigent::workflow::Definition {
                    name,
                    source: dirigent::workflow::Source::File(path.to_path_buf()),
                    text,
                });
            } else {
                defs.push(find_workflow(ws, t)?);
            }
        }
        defs
    };
    let mut bad = 0;
    for def in &defs {
        match dirigent::workflow::validate(def, &config) {
            Ok(wf) => {
                println!("ok: {} ({} phases)", def.label(), wf.phases.len());
                println!("  {}", dirigent::workflow::explain::variables_line(&wf));
                for line in dirigent::workflow::explain::runner_lines(&wf, &config) {
                    println!("  {line}");
                }
            }
            Err(problems) => {
                bad += problems.len();
                for p in problems {
                    eprintln!("error: {p}");
                }
            }
        }
    }
    if bad > 0 {
        eprintln!("{bad} problem(s) found");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends a request over the control socket and prints the daemon's answer.
pub fn control(ws: &Workspace, request: dirigent::control::Request) -> Result<ExitCode> {
    let answer = dirigent::control::request(ws, &request).map_err(|e| anyhow::anyhow!(e))?;
    if answer.ok {
        println!("{}", answer.message);
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("{}", answer.message)
    }
}

pub fn stats(
    ws: &Workspace,
    since: &str,
    by: crate::cli::StatsBy,
    as_json: bool,
) -> Result<ExitCode> {
    use dirigent::stats::{By, Scorecard};
    let period = duration::parse(since).map_err(|e| anyhow::anyhow!("`--since`: {e}"))?;
    let since_ms = ledger::now_ms().saturating_sub(period.as_millis() as u64);
    let by = match by {
        crate::cli::StatsBy::Agent => By::Agent,
        crate::cli::StatsBy::Role => By::Role,
        crate::cli::StatsBy::Model => By::Model,
    };
    let models: std::collections::HashMap<String, String> = Config::load(&ws.config())
        .map(|c| {
            c.agents
                .iter()
                .filter_map(|(n, a)| a.model.clone().map(|m| (n.clone(), m)))
                .collect()
        })
        .unwrap_or_default();
    let mut card = Scorecard::new(since_ms, by, &models);
    // Every file still kept, oldest first: the rotated segments, then the live ledger.
    let mut files: Vec<std::path::PathBuf> = ledger::segments(ws.context())?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    files.push(ws.ledger());
    let mut first_seq = None;
    for f in &files {
        ledger::read_each(f, |r| {
            first_seq.get_or_insert(r.seq);
            card.add(&r);
        })
        .with_context(|| format!("cannot read `{}`", f.display()))?;
    }
    let rows = card.rows();
    let compacted = first_seq.is_some_and(|s| s > 1);
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "since_ms": since_ms,
                "by": format!("{by:?}").to_lowercase(),
                "history_from_seq": first_seq,
                "rows": rows,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no attempts finished in the last {since}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:>8} {:>6} {:>6} {:>9} {:>9} {:>9} {:>10}  FAILURES",
        format!("{by:?}").to_uppercase(),
        "ATTEMPTS",
        "OK",
        "FALLBK",
        "MEDIAN",
        "P95",
        "COST",
        "$/SUCCESS"
    );
    for r in &rows {
        let failures: Vec<String> = r.classes.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let line = format!(
            "{:<16} {:>8} {:>5.0}% {:>5.0}% {:>9} {:>9} {:>9} {:>10}  {}",
            r.key,
            r.attempts,
            r.success_rate * 100.0,
            r.fallback_rate * 100.0,
            short(Duration::from_millis(r.median_ms)),
            short(Duration::from_millis(r.p95_ms)),
            usage::dollars(r.cost_usd),
            r.cost_per_success_usd
                .map(usage::dollars)
                .unwrap_or_else(|| "-".into()),
            failures.join(", ")
        );
        println!("{}", line.trim_end());
    }
    if compacted {
        println!(
            "(older history was compacted away; these figures start at ledger record {})",
            first_seq.unwrap_or(0)
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RemoveKind};

    #[test]
    fn only_changes_wake_a_waiting_client() {
        let cases = [
            (EventKind::Access(AccessKind::Open(AccessMode::Any)), false),
            (EventKind::Access(AccessKind::Read), false),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                false,
            ),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                true,
            ),
            (EventKind::Create(CreateKind::File), true),
            (EventKind::Modify(ModifyKind::Data(DataChange::Any)), true),
            (EventKind::Remove(RemoveKind::File), true),
            (EventKind::Any, true),
        ];
        for (kind, want) in cases {
            assert_eq!(super::is_change(&kind), want, "{kind:?}");
        }
    }
}
