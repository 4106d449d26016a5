//! `dirigent submit` and `dirigent workflow run`: a task into the inbox, then — with `--wait` —
//! following the ledger until it settles, with a live line on a terminal.

use super::*;

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
    let verify = args
        .verify
        .iter()
        .map(|c| {
            dirigent::editing::split_command(c).map_err(|e| anyhow::anyhow!("`--verify`: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let after = args.after.clone();
    let is_run = args.workflow.is_some();
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
        parent: dirigent::task::parent_from_env(ws.root()),
        workdir: args.workdir,
        verify: (!verify.is_empty()).then_some(dirigent::editing::VerifyWritten::Many(verify)),
        merge: args.merge,
        ..Default::default()
    };
    // Checked here with the config on disk. While a daemon runs its previous one (the file was
    // made invalid since), that daemon checks the task: it is what runs it.
    let (id, fields) = match Config::load(&ws.config()) {
        // The file removed while a daemon runs: the daemon keeps the configuration it read, so
        // what the embedded default refuses (an agent only the file named) is the daemon's to
        // judge, not this process's.
        Ok(config)
            if !ws.config().exists()
                && running_daemon(ws).is_some()
                && load_book(ws).is_ok_and(|b| b.config_file_gone) =>
        {
            match checked(ws, fields.clone(), &config) {
                Ok(checked) => checked,
                Err(e) => {
                    eprintln!(
                        "warning: {e}\nwarning: `{}` is missing, so this was checked against the embedded default; the running daemon keeps the configuration it read before and checks this task itself (`dirigent init` writes a new file)",
                        ws.config().display()
                    );
                    let mut fields = fields;
                    (dirigent::submit::id_of(&mut fields), fields)
                }
            }
        }
        Ok(config) => checked(ws, fields, &config)?,
        Err(e) if running_daemon(ws).is_some() => {
            eprintln!(
                "warning: {e}\nwarning: the daemon still runs its previous configuration, which checks this task; fix the file (a daemon started now would refuse it)"
            );
            let mut fields = fields;
            (dirigent::submit::id_of(&mut fields), fields)
        }
        Err(e) => bail!("{e} (no daemon runs, and none starts with this file: fix it first)"),
    };
    let creating = !ws.context().is_dir();
    ws.ensure()?;
    if creating {
        // As `init` does: dirigent's state is not part of the user's code.
        let kept_out = match dirigent::git::exclude_context(ws.root()) {
            Ok(Some(file)) => format!("; `/.context/` is added to {}", file.display()),
            Ok(None) => String::new(),
            Err(_) => "; add `.context/` to .gitignore".into(),
        };
        eprintln!(
            "dirigent: created `{}`: `{}` is a dirigent workspace now (`dirigent init` also writes a config to edit{kept_out})",
            ws.context().display(),
            ws.root().display(),
        );
    }
    let follower = dirigent::follow::Follower::from_end(ws);
    let name = format!("{id}.json");
    let dest = submit_file(ws, &id, fields).map_err(|refused| match refused {
        Refused::Taken(why) => taken(&why),
        Refused::Other(why) => anyhow::anyhow!("{why}"),
    })?;
    // A bounded wait is a wait.
    let wait = args.wait || args.wait_for.is_some();
    if args.json && !wait {
        println!("{}", json!({"id": id, "file": dest}));
    } else if !wait {
        println!("{id}");
    }
    if !wait && running_daemon(ws).is_none() {
        eprintln!(
            "dirigent: no daemon is running on this workspace: `{id}` waits in .context/inbox/ and runs when one starts (`dirigent daemon`)"
        );
    }
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    if running_daemon(ws).is_none() {
        eprintln!(
            "dirigent: submitted `{id}`; no daemon is running on this workspace yet — waiting for one to start"
        );
    } else {
        eprintln!("dirigent: submitted `{id}`, waiting");
    }
    // A wait for other tasks first is said, not left to look like a hang.
    if !after.is_empty() {
        let book = load_book(ws).unwrap_or_default();
        let names: Vec<String> = after
            .iter()
            .map(|a| match book.get(a).map(|t| t.phase()) {
                // Nothing moves it but a person: said, or the wait looks like a hang.
                Some(Phase::MergeWaiting { .. }) => {
                    format!("`{a}` (verified, waiting to be merged: `dirigent merge {a}`)")
                }
                _ => format!("`{a}`"),
            })
            .collect();
        eprintln!(
            "dirigent: `{id}` starts once {} {} done",
            names.join(" and "),
            if names.len() == 1 { "is" } else { "are" }
        );
    }
    let mut end = Ending {
        json: args.json,
        file: dest.display().to_string(),
        branch: None,
        answered: None,
        nothing_new: false,
        said_merge_wait: false,
        give_up_at: args.wait_for.map(|d| Instant::now() + d),
        bound: args.wait_for,
        failed_as: None,
        run: is_run,
    };
    wait_for(ws, &id, &name, follower, &mut end)
}

/// The task checked here, before anything is written, with the same rules the daemon applies
/// (`config`'s), and what it would be warned of: its id and its fields in their normal form.
fn checked(ws: &Workspace, fields: TaskFields, config: &Config) -> Result<(String, TaskFields)> {
    // Validate here, before anything is written, with the same rules the daemon applies.
    let book = load_book(ws)?;
    let (id, fields) = dirigent::submit::prepare(fields, config, ws, |id| book.contains(id))
        .map_err(|e| match e {
            dirigent::submit::SubmitError::Exists(why) => taken(&why),
            // The rules speak of the task's keys; here they were given as flags.
            other => {
                let text = other.to_string();
                let flag = [
                    ("`files` path ", "`--file` "),
                    ("`context` path ", "`--context` "),
                    ("`output` path ", "`--output` "),
                ]
                .iter()
                .find_map(|(key, flag)| text.strip_prefix(key).map(|rest| format!("{flag}{rest}")));
                anyhow::anyhow!("{}", flag.unwrap_or(text))
            }
        })?;
    // Not refused: an earlier task (`--after`) may write it. But a typo should not wait
    // silently until the task starts.
    let contexts = fields
        .context
        .iter()
        .map(|c| ("--context", ws.context(), c));
    let given = contexts.chain(fields.files.iter().map(|f| ("--file", ws.root(), f)));
    for (flag, base, rel) in given {
        let path = base.join(rel);
        // As the daemon will read it: a regular file, no link followed.
        let problem = match std::fs::symlink_metadata(&path) {
            Err(_) => format!("there is no such file in `{}` now", base.display()),
            Ok(m) if m.file_type().is_symlink() => format!(
                "`{}` is a symbolic link, and links are never followed",
                path.display()
            ),
            Ok(m) if !m.is_file() => format!("`{}` is not a regular file", path.display()),
            Ok(_) => continue,
        };
        eprintln!(
            "warning: `{flag} {rel}`: {problem}; the task escalates if it is still so when it starts"
        );
    }
    // An editing task reads its files in a worktree made from the last commit: a file never
    // committed is not there, and a draft not committed is not what the agent sees.
    // The agent's word counts too when every agent it may run says the same (`--agent`, or a
    // `--chain` of agents that all work in the workspace).
    let named: Vec<&str> = fields
        .agent
        .iter()
        .map(String::as_str)
        .chain(fields.chain.iter().flatten().map(String::as_str))
        .collect();
    let agent_word = named
        .iter()
        .map(|a| config.agents.get(*a).and_then(|c| c.workdir))
        .reduce(|a, b| if a == b { a } else { None })
        .flatten();
    let mut asked = dirigent::task::asked_workdir(&fields, config);
    asked.agent = agent_word;
    let in_worktree =
        dirigent::workdir::decide(asked, dirigent::git::in_repository(ws.root()), false)
            == Ok(dirigent::workdir::Workdir::Worktree);
    // Settings only a task in a worktree has: given to one that works in the workspace, they
    // would be taken without effect.
    let only_in_trees: Vec<&str> = [
        ("--merge", fields.merge.is_some()),
        ("--verify", fields.verify.is_some()),
    ]
    .into_iter()
    .filter_map(|(flag, given)| given.then_some(flag))
    .collect();
    if !in_worktree && fields.workflow.is_none() && !only_in_trees.is_empty() {
        eprintln!(
            "warning: {} only for a task that works in its own worktree of a git repository; this one works in the workspace ({}), so {} ignored",
            match only_in_trees.as_slice() {
                [one] => format!("`{one}` counts"),
                many => format!(
                    "{} count",
                    many.iter()
                        .map(|f| format!("`{f}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            },
            if dirigent::git::in_repository(ws.root()) {
                "`workdir: shared`"
            } else {
                "it is not a git repository"
            },
            if only_in_trees.len() == 1 {
                "it is"
            } else {
                "they are"
            }
        );
    }
    if in_worktree && fields.workflow.is_none() && dirigent::git::has_no_commits(ws.root()) {
        eprintln!(
            "warning: {}; the task escalates if it is still so when it starts",
            dirigent::git::GitError::NoCommits
        );
    }
    if in_worktree && fields.base.is_none() && fields.merge_into.is_none() {
        let setup = &config.editing.setup;
        // Under a `worktree.copy`/`link` path, a new tree gets it from the checkout.
        let brought = |rel: &str| {
            setup.copy.iter().chain(&setup.link).any(|p| {
                rel == p.as_str()
                    || rel
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
        };
        for rel in &fields.files {
            if brought(rel)
                || !std::fs::symlink_metadata(ws.root().join(rel)).is_ok_and(|m| m.is_file())
            {
                continue;
            }
            use dirigent::git::Committed;
            let problem = match dirigent::git::committed(ws.root(), rel) {
                Ok(Committed::AsIs) | Err(_) => continue,
                Ok(Committed::Changed) => {
                    "has changes that are not committed, and the task's worktree holds the committed version"
                }
                Ok(Committed::Untracked) => {
                    "is not committed, so the task's worktree does not hold it"
                }
                Ok(Committed::Ignored) => {
                    "is ignored by git, so the task's worktree does not hold it"
                }
            };
            eprintln!(
                "warning: `--file {rel}` {problem}; commit it first, or run the task in the workspace itself (`--workdir shared`)"
            );
        }
    }
    Ok((id, fields))
}

/// The most bytes of a result `--wait` holds in memory (the JSON object's `result`; a result
/// waiting to be merged): an agent's output can be any size.
const RESULT_IN_JSON: u64 = 16 << 20;

/// How `--wait` reports the task's end: its result on stdout, or (`--json`) one object.
struct Ending {
    json: bool,
    /// Where the task file was put (for the object).
    file: String,
    /// Its branch, once a worktree was made for it.
    branch: Option<String>,
    /// The last attempt that succeeded (its number and agent): its answer is the result of a
    /// task that waits to be merged.
    answered: Option<(u32, String)>,
    /// Its branch, replayed onto the target, added nothing (`merge_ready` with the target's
    /// own commit): its change was there already.
    nothing_new: bool,
    /// That the wait goes on through a held-up `merge: auto` was said.
    said_merge_wait: bool,
    /// `--wait-for`: when the wait ends whatever the task does.
    give_up_at: Option<Instant>,
    /// `--wait-for`, as asked.
    bound: Option<Duration>,
    /// The class of its last failed attempt or merge.
    failed_as: Option<dirigent::class::Class>,
    /// A workflow run: its tasks, not the run itself, have attempts to follow.
    run: bool,
}

impl Ending {
    /// Where the task file is once the task is in `state`: it was put into the inbox, and the
    /// daemon moves it (into `done/`, `failed/`, `rejected/` — right after recording the end —;
    /// `running/` while it waits to be merged).
    fn file_now(&self, state: &str) -> String {
        let put = std::path::Path::new(&self.file);
        let place = match state {
            "done" => "done",
            "failed" | "cancelled" => "failed",
            "rejected" => "rejected",
            "merge_waiting" | "pending" | "running" | "merging" => "running",
            _ => return self.file.clone(),
        };
        match (
            put.parent().and_then(|inbox| inbox.parent()),
            put.file_name(),
        ) {
            (Some(context), Some(name)) => context.join(place).join(name).display().to_string(),
            _ => self.file.clone(),
        }
    }

    /// Prints the object for `state` with `more` merged in (with `--json`).
    fn object(&self, id: &str, state: &str, more: serde_json::Value) {
        if !self.json {
            return;
        }
        let mut v = json!({"id": id, "file": self.file_now(state), "state": state});
        if let Some(b) = &self.branch {
            v["branch"] = json!(b);
        }
        if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), more) {
            obj.extend(more);
        }
        println!("{v}");
    }
}

/// Why the CLI could not put a task into the inbox.
enum Refused {
    /// The id is taken (a known task, or a file waiting in the inbox).
    Taken(dirigent::submit::Taken),
    Other(String),
}

/// The CLI's words for a taken id: it names the flag that chooses one.
fn taken(why: &dirigent::submit::Taken) -> anyhow::Error {
    anyhow::anyhow!("{why}; choose another `--id`")
}

/// Puts the task into the inbox: through the running daemon when there is one (it reserves the
/// id, so no file dropped meanwhile can take it), else straight into the inbox.
fn submit_file(
    ws: &Workspace,
    id: &str,
    fields: TaskFields,
) -> std::result::Result<std::path::PathBuf, Refused> {
    if running_daemon(ws).is_some() {
        let req = dirigent::control::Request::Submit {
            task: Box::new(fields.clone()),
        };
        if let Ok(answer) = dirigent::control::request(ws, &req)
            // Busy (every connection taken): the inbox takes it as well.
            && answer.failure != Some(dirigent::control::Failure::Unavailable)
        {
            if answer.failure == Some(dirigent::control::Failure::Conflict) {
                let waiting = answer.data.as_ref().and_then(|d| d["waiting"].as_str());
                return Err(Refused::Taken(match waiting {
                    Some(path) => dirigent::submit::Taken::Waiting(path.into()),
                    None => dirigent::submit::Taken::Known(id.to_string()),
                }));
            }
            if !answer.ok {
                return Err(Refused::Other(answer.message));
            }
            let file = answer.data.as_ref().and_then(|d| d["file"].as_str());
            return Ok(file
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| ws.inbox().join(format!("{id}.json"))));
        }
    }
    dirigent::submit::write_into_inbox(ws, id, &fields)
        .map(|s| s.file)
        .map_err(|e| match e {
            dirigent::submit::SubmitError::Exists(why) => Refused::Taken(why),
            other => Refused::Other(other.to_string()),
        })
}

/// Follows the ledger until the task is done, escalated or rejected. For a workflow run, its
/// tasks' attempts and its loop rounds are shown as they happen too.
fn wait_for(
    ws: &Workspace,
    id: &str,
    file: &str,
    mut follower: dirigent::follow::Follower,
    end: &mut Ending,
) -> Result<ExitCode> {
    let waker = ChangeWaker::new(&[ws.context()]);
    let started = Instant::now();
    // Where the task stands as its records tell (`inbox` until the daemon takes it in), and
    // why it waits when it does: what an interrupted wait leaves says so.
    let mut standing = Standing::default();
    // What an interrupt leaves now (set at once, then again when the daemon or the task moved).
    // Since when the task file is neither in the inbox nor taken in: removed (see below).
    let mut missing_since: Option<Instant> = None;
    let first = standing.parting(id, end, running_daemon(ws).is_some());
    let _ = dirigent::signals::part_with(first.0.clone(), first.1.clone());
    let mut parting = Some(first);
    // On a terminal, a live line shows what runs now; in a pipe, only the event lines.
    let mut live = LiveLine::new(std::io::stderr().is_terminal());
    // What runs now: (task, attempt, agent, since), the run's own tasks included.
    let mut current: Vec<(String, u32, String, Instant)> = Vec::new();
    let child_prefix = format!("{id}.");
    // Whether a daemon runs (looked at once a second at most): its going away, or coming
    // back, is said, never waited through silently.
    let mut daemon = running_daemon(ws);
    let mut looked = Instant::now();
    // The daemon's lock was seen let go: the records are read once more before saying how it
    // went (a clean stop writes its record before it lets go).
    let mut gone_unconfirmed = false;
    // A stop was written (`daemon_stopped`) since the daemon last started.
    let mut stopped_cleanly = false;
    // The stop was already told (the task was put back into the inbox).
    let mut stop_told = false;
    // Why the task waits, as the daemon last said (a fleet with no worker for its agent, a
    // server away): asked every few seconds while nothing runs, said when it changes.
    let mut waiting_for: Option<String> = None;
    // The fleet's worker that holds it, as the daemon last said (from the workers' heartbeats).
    let mut running_on: Option<String> = None;
    let mut asked = Instant::now();
    loop {
        let records = follower.next_records()?;
        for r in records {
            let Some(task) = r.event.task().map(str::to_string) else {
                match &r.event {
                    Event::DaemonStopped { .. } => stopped_cleanly = true,
                    Event::DaemonStarted { .. } => stopped_cleanly = false,
                    _ => {}
                }
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
                    end.object(
                        id,
                        "rejected",
                        json!({"reason": reason, "moved_to": format!(".context/rejected/{moved_to}")}),
                    );
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
                standing.follow(&r.event);
                // Before the line that tells of it: an interrupt after that line leaves this.
                set_parting(&mut parting, standing.parting(id, end, daemon.is_some()));
                if matches!(r.event, Event::Requeued { .. }) {
                    stop_told = true;
                }
                if let Some(code) = report_progress(ws, id, &r, started, end)? {
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
        if gone_unconfirmed || looked.elapsed() >= Duration::from_secs(1) {
            looked = Instant::now();
            let now = running_daemon(ws);
            match (&daemon, &now) {
                (Some(_), None) if !gone_unconfirmed => {
                    gone_unconfirmed = true;
                    continue;
                }
                (Some(pid), None) => {
                    // As below: what an interrupt leaves is set before the line is printed.
                    set_parting(&mut parting, standing.parting(id, end, false));
                    live.clear();
                    let t = short(started.elapsed());
                    if !stopped_cleanly {
                        eprintln!(
                            "[{t}] the daemon (pid {pid}) is gone without a clean stop; `{id}` goes on when a daemon starts again (`dirigent daemon`, or its service)"
                        );
                    } else if !stop_told {
                        eprintln!(
                            "[{t}] the daemon stopped; `{id}` waits for the next start (`dirigent daemon`)"
                        );
                    }
                }
                (None, Some(pid)) => {
                    // Before the line that tells of it: an interrupt after that line leaves
                    // what goes on with a daemon.
                    set_parting(&mut parting, standing.parting(id, end, true));
                    live.clear();
                    eprintln!(
                        "[{}] a daemon (pid {pid}) is running; waiting for `{id}`",
                        short(started.elapsed())
                    );
                    stop_told = false;
                }
                _ => {}
            }
            gone_unconfirmed = false;
            daemon = now;
        }
        if current.is_empty() && daemon.is_some() && asked.elapsed() >= WHY_EVERY {
            asked = Instant::now();
            let data = dirigent::control::request(
                ws,
                &dirigent::control::Request::Get { id: id.to_string() },
            )
            .ok()
            .and_then(|r| r.data);
            let said = |key: &str| {
                data.as_ref()
                    .and_then(|d| d[key].as_str().map(dirigent::terminal::printable))
            };
            let (why, on) = (said("waiting_for"), said("running_on"));
            if on != running_on {
                if let Some(worker) = &on {
                    live.clear();
                    let t = short(started.elapsed());
                    eprintln!("[{t}] running on worker `{worker}` of the fleet");
                }
                running_on = on;
            }
            if why != waiting_for {
                live.clear();
                let t = short(started.elapsed());
                match &why {
                    Some(why) => eprintln!("[{t}] waiting: {why}"),
                    None if waiting_for.is_some() => eprintln!("[{t}] no longer waiting for that"),
                    None => {}
                }
                waiting_for = why;
            }
        }
        // Interrupted, the client says what goes on without it (and, with `--json`, still
        // prints its object: a script learns the id, where the file is, how the task stands).
        set_parting(&mut parting, standing.parting(id, end, daemon.is_some()));
        // Its file removed from the inbox before the daemon took it in (the way to cancel a
        // task without a daemon): nothing will ever run — said, not waited for. Two seconds
        // with no file and no record, so a claim on its way to the ledger is not mistaken.
        if standing.seen || std::path::Path::new(&end.file).exists() || claimed(ws, id) {
            missing_since = None;
        } else if missing_since.is_some_and(|t| t.elapsed() >= Duration::from_secs(2)) {
            live.clear();
            let reason = "its file was removed from .context/inbox/ before the daemon took it in: nothing runs";
            eprintln!("error: `{id}` will not run: {reason}");
            end.object(id, "cancelled", json!({"reason": reason}));
            return Ok(ExitCode::from(1));
        } else if missing_since.is_none() {
            missing_since = Some(Instant::now());
        }
        live.draw(&line);
        // `--wait-for` ran out: the wait ends, the task does not.
        if let Some(at) = end.give_up_at {
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                live.clear();
                // The bound asked for, not the clock's reading of it (`999ms` for `1s`).
                let waited = end.bound.unwrap_or_else(|| started.elapsed());
                eprintln!(
                    "dirigent: stopped waiting after {} (`--wait-for`); `{id}` goes on (`dirigent status {id}` shows it, `dirigent cancel {id}` stops it)",
                    short(waited)
                );
                let mut more = standing.what();
                more["file"] = json!(end.file_now(standing.state.unwrap_or("inbox")));
                end.object(id, "waiting", more);
                return Ok(ExitCode::from(124));
            }
            waker.wait(left.min(Duration::from_secs(1)));
            continue;
        }
        // Looked at again within a second while its file may be gone.
        waker.wait(Duration::from_secs(1));
    }
}

/// Where a followed task stands, as its records tell.
#[derive(Default)]
struct Standing {
    /// A record of it was seen: the daemon took it in.
    seen: bool,
    /// `pending`, `running`, `merging`, `merge_waiting`; `None`: in the inbox.
    state: Option<&'static str>,
    /// Why it waits to be merged.
    reason: Option<String>,
}

impl Standing {
    fn follow(&mut self, event: &Event) {
        self.seen = true;
        let state = match event {
            Event::Requeued { .. } => None,
            Event::AttemptStarted { .. } => Some("running"),
            Event::MergeStarted { .. } => Some("merging"),
            Event::MergeWaiting { reason, .. } => {
                self.reason = Some(reason.clone());
                Some("merge_waiting")
            }
            Event::Received { .. }
            | Event::Claimed { .. }
            | Event::AttemptFinished { .. }
            | Event::Retried { .. } => Some("pending"),
            _ => return,
        };
        if state != Some("merge_waiting") {
            self.reason = None;
        }
        self.state = state;
    }

    /// `task_state` (and `reason`) for the object a wait that ended early prints.
    fn what(&self) -> serde_json::Value {
        let mut v = json!({"task_state": self.state.unwrap_or("inbox")});
        if let Some(r) = &self.reason {
            v["reason"] = json!(r);
        }
        v
    }

    /// The line and object an interrupt leaves now.
    fn parting(&self, id: &str, end: &Ending, daemon: bool) -> (String, Option<String>) {
        let words = match (daemon, self.state) {
            (true, _) if end.run => format!(
                "dirigent: stopped waiting; the run `{id}` goes on in the daemon (`dirigent status {id}` shows its phases and tasks, `dirigent logs -f --all` follows their attempts, `dirigent cancel {id}` stops it)"
            ),
            (true, _) => format!(
                "dirigent: stopped waiting; `{id}` goes on in the daemon (`dirigent logs {id} -f` follows it, `dirigent cancel {id}` stops it)"
            ),
            (false, None) => format!(
                "dirigent: stopped waiting; `{id}` waits in .context/inbox/ and runs when a daemon starts (`dirigent daemon`); remove its file there to drop it"
            ),
            (false, Some(state)) => format!(
                "dirigent: stopped waiting; `{id}` is {state} and goes on when a daemon starts (`dirigent daemon`)"
            ),
        };
        let state = self.state.unwrap_or("inbox");
        let object = end.json.then(|| {
            let mut v = json!({"id": id, "file": end.file_now(state), "state": "waiting"});
            if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), self.what()) {
                obj.extend(more);
            }
            if let Some(b) = &end.branch {
                v["branch"] = json!(b);
            }
            v.to_string()
        });
        (words, object)
    }
}

/// How often `--wait` asks the daemon why a task that runs nowhere waits.
const WHY_EVERY: Duration = Duration::from_secs(3);

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

/// `attempt 2: gemini → rate_limit after 3.1s: …` for an `attempt_finished` event.
fn finished_line(event: &Event) -> String {
    match event {
        Event::AttemptFinished {
            attempt,
            agent,
            class,
            reason,
            duration_ms,
            ..
        } => format!(
            "attempt {attempt}: {agent} → {class} after {}: {reason}",
            short(Duration::from_millis(*duration_ms))
        ),
        _ => String::new(),
    }
}

/// One event of a workflow run's task, for `--wait`: its attempts, its end, its rounds.
fn report_child(task: &str, r: &Record, started: Instant) {
    let t = short(started.elapsed());
    match &r.event {
        Event::AttemptStarted { attempt, agent, .. } => {
            eprintln!("[{t}] {task}: attempt {attempt}: {agent} started")
        }
        Event::AttemptFinished { .. } => {
            eprintln!("[{t}] {task}: {}", finished_line(&r.event))
        }
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
    end: &mut Ending,
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
            ..
        } => {
            if *class == dirigent::class::Class::Ok {
                end.answered = Some((*attempt, agent.clone()));
            } else {
                end.failed_as = Some(*class);
            }
            eprintln!("[{t}] {}", finished_line(&r.event))
        }
        Event::Done { output, agent, .. } => {
            eprintln!("[{t}] done by {agent}; result in {output}");
            // Through no link and from no FIFO (an agent may have replaced the file); streamed
            // to stdout, and at most `RESULT_IN_JSON` bytes of it in the JSON object.
            let mut f = dirigent::fsutil::open_confined(ws.root(), output)
                .map_err(|e| anyhow::anyhow!("the result `{output}` {e}"))?;
            if end.json {
                let mut text = Vec::new();
                (&mut f).take(RESULT_IN_JSON).read_to_end(&mut text)?;
                end.object(
                    id,
                    "done",
                    json!({"agent": agent, "output": output, "result": String::from_utf8_lossy(&text)}),
                );
            } else {
                print_agent_text(&mut f)?;
            }
            return Ok(Some(ExitCode::SUCCESS));
        }
        Event::Escalated {
            reason, attempts, ..
        } => {
            // A workflow run makes no attempt of its own: its tasks do.
            match attempts {
                0 => eprintln!("[{t}] escalated: {reason}"),
                1 => eprintln!("[{t}] escalated after 1 attempt: {reason}"),
                n => eprintln!("[{t}] escalated after {n} attempts: {reason}"),
            }
            eprintln!("see .context/escalations/{id}.md");
            // What the last failure was (`verify`, `conflict`, `timeout`…): a script tells a
            // check that failed from a conflict without reading the reason's words.
            let class = end.failed_as.map(|c| c.as_str());
            end.object(
                id,
                "failed",
                json!({"reason": reason, "class": class, "attempts": attempts, "report": format!(".context/escalations/{id}.md")}),
            );
            return Ok(Some(ExitCode::from(1)));
        }
        Event::MergeFailed { class, .. } => end.failed_as = Some(*class),
        Event::WorktreeMade {
            branch, base, path, ..
        } => {
            end.branch = Some(branch.clone());
            eprintln!(
                "[{t}] working on `{branch}` (from {}) in {}",
                &base[..base.len().min(12)],
                path.display()
            )
        }
        Event::MergeWaiting { reason, .. } => {
            eprintln!("[{t}] verified; waiting to be merged: {reason}");
            // Only `dirigent merge` ends this wait: the work is ready for review.
            if reason.starts_with(dirigent::editing::MANUAL_MERGE) {
                // The agent's answer is the result until it is merged.
                let answer = end.answered.as_ref().and_then(|(n, agent)| {
                    let mut text = Vec::new();
                    dirigent::task_log::CaptureFile::of(ws, id, *n, agent, "stdout")
                        .open()
                        .ok()?
                        .take(RESULT_IN_JSON)
                        .read_to_end(&mut text)
                        .ok()?;
                    Some(text)
                });
                if end.json {
                    let mut more = json!({"reason": reason});
                    if let Some(text) = &answer {
                        more["result"] = json!(String::from_utf8_lossy(text));
                    }
                    end.object(id, "merge_waiting", more);
                } else if let Some(text) = answer {
                    print_agent_text(text.as_slice())?;
                }
                return Ok(Some(ExitCode::SUCCESS));
            }
            // `merge: auto` held up (a dirty checkout, say): the merge queue tries again by
            // itself, and the wait is for the merge — said once, so it is not a silent hang.
            if !end.said_merge_wait && !reason.starts_with("queued for merging") {
                end.said_merge_wait = true;
                eprintln!(
                    "[{t}] still waiting: it merges by itself once that is fixed; Ctrl-C leaves the wait (the task stays, and `dirigent status {id}` follows it)"
                );
            }
        }
        // Fleet mode: where it went, and where it ran.
        Event::Published { subject, .. } => {
            eprintln!(
                "[{t}] on the fleet's queue ({subject}); a worker that runs its agent takes it"
            )
        }
        Event::RanOn { worker, .. } => eprintln!("[{t}] ran on worker `{worker}` of the fleet"),
        Event::MergeReady { old, commit, .. } => end.nothing_new = old == commit,
        Event::Merged { target, commit, .. } if end.nothing_new => eprintln!(
            "[{t}] its change was on `{target}` already (another task made the same one): nothing new to merge; `{target}` stays at {}",
            &commit[..commit.len().min(12)]
        ),
        Event::Merged { target, commit, .. } => eprintln!(
            "[{t}] merged into `{target}` at {}",
            &commit[..commit.len().min(12)]
        ),
        Event::Requeued { .. } => eprintln!(
            "[{t}] the daemon stopped; the task is back in the inbox and waits for the next start"
        ),
        Event::Cancelled { .. } => {
            eprintln!(
                "[{t}] cancelled by the user; `dirigent retry {id}` runs it again from the start"
            );
            end.object(
                id,
                "cancelled",
                json!({"reason": dirigent::state::CANCELLED_REASON}),
            );
            return Ok(Some(ExitCode::from(1)));
        }
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
            match dirigent::runner::feedback_line(feedback, 200) {
                line if line.is_empty() => line,
                line => format!(" — {line}"),
            }
        ),
        _ => {}
    }
    Ok(None)
}

/// Makes `now` what an interrupt leaves (see `signals::part_with`), when it changed.
fn set_parting(parting: &mut Option<(String, Option<String>)>, now: (String, Option<String>)) {
    if parting.as_ref() != Some(&now) {
        let _ = dirigent::signals::part_with(now.0.clone(), now.1.clone());
        *parting = Some(now);
    }
}
