//! Attempt start: the prompt is composed (task, context files, workspace files), the attempt is
//! planned and spawned under its supervisor, and its start is recorded before the agent runs.

use super::*;

/// Most bytes of one context file put into a prompt.
pub(super) const MAX_CONTEXT_FILE: u64 = 4 * 1024 * 1024;

/// Most bytes of a whole prompt with its files: what one attempt may hold in memory and write
/// to its prompt file (no agent takes more; many files at the limit above would be gigabytes).
pub(super) const MAX_PROMPT: usize = 16 * 1024 * 1024;

/// The prompt an agent receives: the task's prompt, then each `context` file (under
/// `.context/`) and each `files` entry (workspace files — in a worktree task, read from its
/// tree: `(tree, the workspace's place in it)`), each in its own fenced section. The paths are
/// checked again with the acceptance rules (the spec may come from an old ledger) and read
/// through no link.
fn compose_prompt(
    ws: &Workspace,
    spec: &TaskSpec,
    tree: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<String, PromptError> {
    if spec.fields.context.is_empty() && spec.fields.files.is_empty() {
        return Ok(spec.prompt.clone());
    }
    let refused = |in_context: bool, label: &str, e: String| {
        PromptError::Refused(if in_context {
            format!("context file `{label}`: {e}")
        } else {
            format!("file `{label}` (the task's `files`): {e}")
        })
    };
    let open = |r: std::io::Result<confined::Dir>| {
        r.map_err(|e| match fsutil::exhausted(&e) {
            Some(what) => PromptError::Exhausted(format!("{what} (opening the workspace: {e})")),
            None => PromptError::Refused(format!("cannot open the workspace: {e}")),
        })
    };
    let mut out = spec.prompt.clone();
    out.push_str("\n\n---\n");
    let mut dirs: Option<(confined::Dir, confined::Dir)> = None;
    let sources = spec
        .fields
        .context
        .iter()
        .map(|c| (true, c))
        .chain(spec.fields.files.iter().map(|f| (false, f)));
    for (in_context, rel) in sources {
        let label = if in_context {
            format!(".context/{rel}")
        } else {
            rel.clone()
        };
        let path = if in_context {
            confined::context_path("context", rel)
        } else {
            let rel = match tree {
                Some((_, inside)) => inside.join(rel).to_string_lossy().into_owned(),
                None => rel.clone(),
            };
            confined::workspace_path("files", &rel)
        }
        .map_err(|e| refused(in_context, &label, e.to_string()))?;
        if dirs.is_none() {
            let root = match tree {
                Some((top, _)) => confined::Dir::open(top),
                None => ws.open_root(),
            };
            dirs = Some((open(ws.open_context())?, open(root)?));
        }
        let (ctx, root) = dirs.as_ref().expect("just opened");
        let base = if in_context { ctx } else { root };
        let text =
            confined::read_text(base, &path, MAX_CONTEXT_FILE).map_err(
                |e| match fsutil::exhausted(&e) {
                    Some(what) => {
                        PromptError::Exhausted(format!("{what} (reading `{label}`: {e})"))
                    }
                    None => refused(in_context, &label, format!("cannot be read: {e}")),
                },
            )?;
        let section = format!("\n## {label}\n\n{}\n", escalate::fenced(&text));
        if out.len().saturating_add(section.len()) > MAX_PROMPT {
            return Err(PromptError::Refused(format!(
                "the prompt with its files would be over {} MiB at `{label}`; name fewer or smaller files",
                MAX_PROMPT >> 20
            )));
        }
        out.push_str(&section);
    }
    Ok(out)
}

/// Why the prompt could not be put together.
enum PromptError {
    /// A context file is missing, too big, a link …: the task escalates.
    Refused(String),
    /// A resource ran out while reading: the task waits.
    Exhausted(String),
}

impl Engine {
    pub(super) fn start_attempt(&mut self, id: &str, agent: Arc<Agent>) {
        self.live.park(id);
        let t = self.book.get(id).expect("queued tasks are in the book");
        let spec = t.spec().expect("unfinished tasks keep their spec");
        let tree_plan = match self.tree_plan(id, &agent) {
            Ok(p) => p,
            Err(reason) => {
                if let Some(slot) = self.slots.get_mut(split_entry_base(&agent.name)) {
                    slot.running -= 1;
                }
                return self.escalate(id, reason);
            }
        };
        let t = self.book.get(id).expect("queued tasks are in the book");
        let suffix = match (
            &tree_plan,
            t.attempts().last(),
            t.more().worktree.as_deref(),
        ) {
            // A conflict to resolve (`on_conflict: agent`).
            (Some(_), _, Some(w)) if w.resolve.is_some() => {
                work_check::resolve_section(&w.branch, w.resolve.as_ref().expect("checked"))
            }
            // A `verify` round: the check's output is the feedback.
            (Some((plan, _)), Some(last), _) if plan.continuing => {
                work_check::feedback(&self.ws, id, last)
            }
            _ => String::new(),
        };
        let prompt = match compose_prompt(&self.ws, &spec, None) {
            Ok(p) => p + &suffix,
            Err(e) => {
                if let Some(slot) = self.slots.get_mut(split_entry_base(&agent.name)) {
                    slot.running -= 1;
                }
                self.unplan(tree_plan);
                return match e {
                    PromptError::Refused(reason) => self.escalate(id, reason),
                    PromptError::Exhausted(what) => {
                        self.pause(what);
                        self.enqueue(id);
                    }
                };
            }
        };
        let previous = t.attempts().last().and_then(|a| {
            let class = a.class?;
            (class != Class::Ok && class != Class::Interrupted).then(|| PreviousAttempt {
                agent: a.agent.clone(),
                class,
                stdout: self
                    .ws
                    .run_dir(id)
                    .join(crate::workspace::attempt_file(a.n, &a.agent, "stdout")),
                stderr: self
                    .ws
                    .run_dir(id)
                    .join(crate::workspace::attempt_file(a.n, &a.agent, "stderr")),
            })
        });
        // An isolated agent: the lowest instance no running attempt of it uses.
        let base = split_entry_base(&agent.name).to_string();
        let (instance, extra_env) = if agent.isolate {
            let used: HashSet<usize> = self
                .live
                .attempts()
                .filter(|r| r.agent == base)
                .filter_map(|r| r.instance)
                .collect();
            let n = (0..).find(|n| !used.contains(n)).expect("a free instance");
            let recipe = agent
                .preset
                .and_then(|p| crate::isolation::recipe(p.name))
                .expect("config checked that the preset can be isolated");
            let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
            match crate::isolation::prepare(self.ws.context(), &base, n, recipe, home.as_deref()) {
                Ok((var, dir)) => (Some(n), vec![(var, dir.display().to_string())]),
                Err(e) => {
                    if let Some(slot) = self.slots.get_mut(&base) {
                        slot.running -= 1;
                    }
                    self.unplan(tree_plan);
                    return self.escalate(
                        id,
                        format!("cannot prepare the isolated state directory of `{base}`: {e}"),
                    );
                }
            }
        } else {
            (None, vec![])
        };
        let t = self.book.get(id).expect("queued tasks are in the book");
        let attempt = t.attempts().iter().map(|a| a.n).max().unwrap_or(0) + 1;
        // Network retries this agent has had in a row on this task.
        let retries_used = t
            .attempts()
            .iter()
            .rev()
            .take_while(|a| a.agent == agent.name && a.class == Some(Class::Network))
            .count() as u32;
        let plan = AttemptPlan {
            task_id: id.to_string(),
            attempt,
            timeout: spec.fields.timeout.map_or(agent.timeout, |d| d.0),
            idle_timeout: spec.fields.idle_timeout.map(|d| d.0).or(agent.idle_timeout),
            agent: agent.clone(),
            prompt,
            workspace: self.ws.clone(),
            kill_grace: self.config.kill_grace,
            leak_timeout: self.config.leak_timeout,
            previous,
            extra_env,
            workdir: None,
            max_output: self.config.max_output as u64,
        };
        // A task of the fleet that only answers works in a scratch directory of its own, never
        // in this workspace (another node's prompt must not edit this node's files), and git
        // there does not find this workspace's repository.
        let answers_for_fleet = tree_plan.is_none()
            && matches!(
                t.more().fleet.as_deref(),
                Some(crate::state::FleetPart::Taken { .. })
            );
        let plan = match answers_for_fleet {
            true => {
                let scratch = self.ws.context().join("fleet").join("scratch");
                let dir = scratch.join(id);
                if let Err(e) = std::fs::create_dir_all(&dir) {
                    if let Some(slot) = self.slots.get_mut(&base) {
                        slot.running -= 1;
                    }
                    return self.escalate(
                        id,
                        format!("cannot make its scratch directory `{}`: {e}", dir.display()),
                    );
                }
                let mut plan = plan;
                plan.extra_env.push((
                    "GIT_CEILING_DIRECTORIES".into(),
                    scratch.display().to_string(),
                ));
                plan.workdir = Some(dir);
                plan
            }
            false => plan,
        };
        let resolving: Vec<String> = t
            .more()
            .worktree
            .as_ref()
            .and_then(|w| w.resolve.as_ref())
            .map(|r| r.files.clone())
            .unwrap_or_default();
        let check = tree_plan.as_ref().map(|(_, settings)| {
            let verify_failures = t
                .attempts()
                .iter()
                .rev()
                .take_while(|a| a.agent == agent.name && a.class == Some(Class::Verify))
                .count() as u32;
            (
                settings.clone(),
                verify_failures,
                spec.title.clone(),
                self.side_stop.subscribe(),
                resolving,
            )
        });
        let tree_plan = tree_plan.map(|(plan, _)| plan);
        let (stop_tx, stop_rx) = watch::channel(None);
        self.live.start(
            id,
            RunningAttempt {
                agent: split_entry_base(&agent.name).to_string(),
                instance,
                resources: agent.resources.clone(),
                stop: stop_tx,
            },
        );
        tracing::info!(task = id, agent = %agent.name, attempt, "starting attempt");
        let ledger = self.ledger.clone();
        let tx = self.tx.clone();
        let prices = self.config.prices.clone();
        let ws = self.ws.clone();
        // A tree of the fleet is of another node's repository: this workspace's `setup` is
        // not for it.
        let setup_cmd = match &tree_plan {
            Some(p) if p.delivered => None,
            _ => self.config.editing.setup.setup.clone(),
        };
        let setup_stop = self.side_stop.subscribe();
        let mut last_word = LastWord {
            task: id.to_string(),
            tx: Some(self.tx.clone()),
            started: None,
        };
        self.tasks.spawn(async move {
            let mut plan = plan;
            // In a worktree: made (and recorded) or put back at the base before the agent runs.
            let mut tree_state = None;
            let (tree_repo, tree_context) = match &tree_plan {
                Some(p) => (
                    Some(p.repo.clone()),
                    p.inside.join(".context").to_string_lossy().into_owned(),
                ),
                None => (None, String::new()),
            };
            if let Some(tree_plan) = tree_plan {
                let task = plan.task_id.clone();
                match tokio::task::spawn_blocking(move || worktrees::prepare(&tree_plan)).await {
                    Ok(Ok(ready)) => {
                        if let Some(made) = ready.made {
                            let records = record(&ledger, &tx, made).await;
                            if records.is_empty() {
                                last_word.lost(Lost::LedgerRefused);
                                return;
                            }
                            let _ = tx.send(Msg::Recorded(records));
                            // A new (or reused) tree is set up once, before its first agent.
                            if let Some(argv) = &setup_cmd {
                                // A cancel stops the setup as the daemon's stop does.
                                let limits = crate::side_command::SideLimits {
                                    limit: plan.timeout,
                                    stop: setup_stop,
                                    cancel: Some(stop_rx.clone()),
                                    grace: plan.kill_grace,
                                    dir: None,
                                    task: Some(plan.task_id.clone()),
                                };
                                let ended = worktrees::run_setup(
                                    &ws,
                                    &task,
                                    argv,
                                    &ready.state,
                                    &ready.agent_dir,
                                    limits,
                                )
                                .await;
                                match ended {
                                    Ok(()) => {}
                                    Err(Some(reason)) => {
                                        last_word.say(Msg::AttemptUnjudged {
                                            task,
                                            reason,
                                            exhausted: None,
                                        });
                                        return;
                                    }
                                    // Stopped before its agent: cancelled, or interrupted by
                                    // the daemon's stop (the task runs again after it).
                                    Err(None) => {
                                        let cancelled = *stop_rx.borrow()
                                            == Some(crate::judge::StopCause::Cancel);
                                        let (class, why) = if cancelled {
                                            (
                                                Class::Cancelled,
                                                "cancelled during the worktree's setup",
                                            )
                                        } else {
                                            (
                                                Class::Interrupted,
                                                "the daemon stopped during the worktree's setup",
                                            )
                                        };
                                        let report = AttemptReport::not_run(
                                            crate::judge::Verdict::fail(class, why.to_string()),
                                            None,
                                            Duration::ZERO,
                                            plan.stdout_path(),
                                            plan.stderr_path(),
                                        );
                                        let events = finished_events(
                                            &plan,
                                            attempt,
                                            retries_used,
                                            &report,
                                            &prices,
                                        );
                                        send_end(&ledger, &tx, events, task, report, last_word)
                                            .await;
                                        return;
                                    }
                                }
                            }
                        }
                        // `files:` are the tree's, as the agent will find them.
                        if !spec.fields.files.is_empty() {
                            let inside = ready
                                .agent_dir
                                .strip_prefix(&ready.state.tree.path)
                                .unwrap_or(std::path::Path::new(""))
                                .to_path_buf();
                            let top = ready.state.tree.path.clone();
                            match compose_prompt(&ws, &spec, Some((&top, &inside))) {
                                Ok(p) => plan.prompt = p + &suffix,
                                Err(e) => {
                                    let (reason, exhausted) = match e {
                                        PromptError::Refused(r) => (r, None),
                                        PromptError::Exhausted(w) => (w.clone(), Some(w)),
                                    };
                                    last_word.say(Msg::AttemptUnjudged {
                                        task,
                                        reason,
                                        exhausted,
                                    });
                                    return;
                                }
                            }
                        }
                        plan.extra_env.extend(worktrees::tree_env(&ready.state));
                        plan.workdir = Some(ready.agent_dir.clone());
                        tree_state = Some((ready.state, ready.agent_dir));
                    }
                    Ok(Err(e)) => {
                        let exhausted = e.exhausted().map(str::to_string);
                        last_word.say(Msg::AttemptUnjudged {
                            task,
                            reason: format!("cannot ready the task's worktree: {e}"),
                            exhausted,
                        });
                        return;
                    }
                    Err(_) => {
                        last_word.lost(Lost::Panicked);
                        return;
                    }
                }
            }
            let (task, agent_name) = (plan.task_id.clone(), plan.agent.name.clone());
            let (l2, tx2, task2, agent2) =
                (ledger.clone(), tx.clone(), task.clone(), agent_name.clone());
            // Fired once `started` has reached the engine, so that `AttemptDone` never
            // overtakes it.
            let (started_sent, started_reached) = tokio::sync::oneshot::channel::<()>();
            last_word.started = Some(started_reached);
            let (fault_task, mut fault_stop) = (task.clone(), stop_rx.clone());
            let cancel = stop_rx.clone();
            let report = spawn::run_attempt(&plan, stop_rx, move |info| async move {
                let ev = Event::AttemptStarted {
                    task: task2,
                    attempt,
                    agent: agent2,
                    pid: info.pid,
                    pgid: info.pgid,
                    start_ticks: info.start_ticks,
                    boot_id: info.boot_id,
                    argv0: info.argv0,
                };
                let (written, durable) = l2.append_written(ev);
                tokio::spawn(async move {
                    match durable.await {
                        Ok(rec) => drop(tx2.send(Msg::Recorded(vec![rec]))),
                        Err(e) => drop(tx2.send(Msg::LedgerFailed(e.to_string()))),
                    }
                    drop(started_sent);
                });
                // In the file (if not yet fsynced): a crash of the daemon from here on finds it.
                let _ = written.await;
                if crate::fault::at("attempt-panic", &fault_task) {
                    panic!("injected fault `attempt-panic` for `{fault_task}`");
                }
                if crate::fault::at("attempt-panic-at-stop", &fault_task) {
                    let _ = fault_stop.wait_for(Option::is_some).await;
                    panic!("injected fault `attempt-panic-at-stop` for `{fault_task}`");
                }
            })
            .await;
            last_word.started_reached().await;
            let mut report = report;
            if let (Some((state, dir)), Some((settings, verify_failures, title, stop, resolving))) =
                (tree_state, check)
                && report.ran
                && report.verdict.class != Class::Interrupted
                && report.verdict.class != Class::Cancelled
            {
                let check = work_check::CheckPlan {
                    ws: ws.clone(),
                    task: plan.task_id.clone(),
                    title,
                    attempt,
                    agent: plan.agent.name.clone(),
                    state,
                    dir,
                    settings,
                    resolving,
                    output: spec.fields.output.clone(),
                    repo: tree_repo.clone().expect("a tree has its repository"),
                    context: tree_context.clone(),
                    verify_failures,
                    limit: plan.timeout,
                    grace: plan.kill_grace,
                    stop,
                    cancel,
                };
                work_check::check(check, &mut report).await;
            }
            let events = finished_events(&plan, attempt, retries_used, &report, &prices);
            send_end(&ledger, &tx, events, task, report, last_word).await;
        });
    }
}

/// Records an attempt's end (`events`) and tells the engine: its slot once the end is in the
/// file, then its judged end once it is on disk.
async fn send_end(
    ledger: &Ledger,
    tx: &mpsc::UnboundedSender<Msg>,
    events: Vec<Event>,
    task: String,
    report: AttemptReport,
    last_word: LastWord,
) {
    let (written, durable) = ledger.append_all_written(events);
    // Once its end is in the file, the next attempt may start: its start is written after this
    // end (the ledger never shows more running than the cap), and waiting for the fsync runs
    // no agent.
    let _ = written.await;
    let _ = tx.send(Msg::AgentGone { task: task.clone() });
    let records = match durable.await {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(Msg::LedgerFailed(e.to_string()));
            vec![]
        }
    };
    last_word.say(Msg::AttemptDone {
        task,
        records,
        report: Box::new(report),
    });
}

/// Held by the work of one attempt until it sends the engine its last word (its judged end, or
/// why it could not start). Work that ends without one — a panic, a bug; an early return —
/// tells the engine through this guard's drop, so its task does not stay `running`, holding its
/// slot, until a restart.
struct LastWord {
    task: String,
    /// To the engine, which holds the receiving half; `None` once the last word is said.
    tx: Option<mpsc::UnboundedSender<Msg>>,
    /// Resolves once the attempt's `attempt_started` has reached the engine (its sender is held
    /// by the work that records it): no word about the attempt may overtake its start.
    started: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl LastWord {
    /// Waits until the attempt's start, if one was recorded, has reached the engine.
    async fn started_reached(&mut self) {
        if let Some(started) = self.started.take() {
            let _ = started.await;
        }
    }

    /// Sends the attempt's last word.
    fn say(mut self, msg: Msg) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(msg);
        }
    }

    /// The work ends early, knowing why.
    fn lost(mut self, how: Lost) {
        self.send_lost(how);
    }

    fn send_lost(&mut self, how: Lost) {
        let Some(tx) = self.tx.take() else { return };
        // The engine waits for `started` itself, in a task it tracks: a stop waits for it too.
        let _ = tx.send(Msg::AttemptLost {
            task: std::mem::take(&mut self.task),
            how,
            started: self.started.take(),
        });
    }
}

impl Drop for LastWord {
    fn drop(&mut self) {
        self.send_lost(if std::thread::panicking() {
            Lost::Panicked
        } else {
            Lost::NoVerdict
        });
    }
}
