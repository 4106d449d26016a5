//! The engine's event loop plumbing: what wakes it (timers, reloads, messages from attempts),
//! pausing when a resource runs out and resuming, and the graceful shutdown.

use super::*;

/// Returns freed heap pages to the system (glibc keeps them otherwise: after a burst of ten
/// thousand tasks the daemon would hold the burst's peak for weeks).
pub(super) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator has marked free.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

impl Engine {
    /// Reloads `.context/dirigent.yaml`. Running attempts keep the agents they started with;
    /// queued tasks keep their chains (an agent that disappeared fails their next attempt).
    pub(super) async fn reload(&mut self, trigger: &str, always: bool) {
        // A config read from a `.context/` someone else put in place would run their commands.
        if !self.context_intact() {
            return;
        }
        let path = self.ws.config();
        let read = crate::config::read_text(&path);
        let text = read.as_ref().ok().cloned().flatten();
        if !always && read.is_ok() && text == self.config_text {
            return;
        }
        let rejected = |error: String| Event::ConfigRejected {
            trigger: trigger.to_string(),
            error,
        };
        let from_file = self.config.source != crate::config::EMBEDDED_SOURCE;
        let event = match read {
            Err(e) => {
                tracing::error!(
                    trigger,
                    "the configuration cannot be read, keeping the running one: {e}"
                );
                rejected(e.to_string())
            }
            // Deleted while running (an editor's swap, a mistake): the daemon does not quietly
            // become another one. The embedded default takes over only at the next start.
            // Empty: being written (`cp`, `cat >` and many editors truncate the file first,
            // then write it). Taken as written, a config with no agents would fail every
            // queued task; the change that completes the file reloads it.
            Ok(Some(t)) if t.trim().is_empty() => {
                tracing::info!(
                    trigger,
                    "`{}` is empty (being written?); the running configuration stays in force",
                    path.display()
                );
                return;
            }
            Ok(None) if from_file => {
                self.config_text = None;
                let error = format!("`{}` {}", path.display(), crate::state::DELETED_CONFIG_END);
                tracing::warn!(trigger, "{error}");
                rejected(error)
            }
            Ok(text) => {
                let parsed = match &text {
                    Some(t) => Config::parse(t, &path.display().to_string()),
                    None => Config::parse(
                        crate::config::DEFAULT_CONFIG,
                        crate::config::EMBEDDED_SOURCE,
                    ),
                };
                match parsed {
                    Ok(config) => {
                        // Changed in meaning, not merely in spacing or comments; compared with
                        // the running configuration's text (a rejected edit in between is not
                        // the running one).
                        let unchanged = text == self.running_text
                            || same_yaml(text.as_deref(), self.running_text.as_deref());
                        self.config_text = text.clone();
                        self.running_text = text;
                        if unchanged {
                            tracing::info!(trigger, source = %config.source, "configuration re-read: unchanged");
                        } else {
                            tracing::info!(trigger, source = %config.source, "configuration reloaded");
                        }
                        let source = config.source.clone();
                        self.config = Arc::new(config);
                        self.config_watch.send_replace(self.config.clone());
                        self.tell_fleet_agents();
                        Event::ConfigReloaded {
                            trigger: trigger.to_string(),
                            source,
                        }
                    }
                    Err(e) => {
                        self.config_text = text;
                        tracing::error!(
                            trigger,
                            "the new configuration is invalid, keeping the previous one: {e}"
                        );
                        rejected(e.to_string())
                    }
                }
            }
        };
        self.record_now(event).await;
    }

    /// Whether `.context/` is still the directory the daemon started with, and still private.
    /// Not (another user who may write to the workspace moved it away and made their own, or
    /// opened it): the daemon stops — it must not read a config, or take tasks, from there —
    /// and says where its state went.
    pub(super) fn context_intact(&mut self) -> bool {
        if self.stop_self.is_some() {
            return false;
        }
        let why = if self.ws.context_id() != self.context_id {
            format!(
                "`{}` was replaced while the daemon ran (moved away, and another put in its place): the daemon stops rather than read a config or take tasks from it. Its own state — the ledger, the tasks — is in the directory it was moved to; put that back before starting again",
                self.ws.context().display()
            )
        } else if let Err(e) = self.ws.check_private_above() {
            format!("{e}; the daemon stops until it is fixed")
        } else {
            return true;
        };
        tracing::error!("{why}");
        self.stop_self = Some(why);
        false
    }

    pub(super) fn notify(&self, msg: &str) {
        if let Some(n) = &self.notifier {
            n.send(msg);
        }
    }

    pub(super) fn status_line(&self) -> String {
        let (mut pending, mut done, mut failed) =
            (0, self.book.archived_done, self.book.archived_failed);
        for t in self.book.iter() {
            match t.phase() {
                Phase::Done { .. } => done += 1,
                Phase::Failed { .. } => failed += 1,
                Phase::Pending | Phase::Requeued | Phase::Merging | Phase::MergeWaiting { .. } => {
                    pending += 1
                }
                Phase::Running { .. } => {}
            }
        }
        let paused = match self.not_claiming() {
            Some(why) => format!(" — {why}"),
            None => String::new(),
        };
        format!(
            "{} running, {pending} pending, {done} done, {failed} failed{paused}",
            self.live.running_count()
        )
    }

    pub(super) fn next_wake(&self) -> Instant {
        [
            self.progress_due,
            self.stagger_due,
            self.watchdog_due,
            self.paused.as_ref().map(|p| p.retry_at),
            Some(self.rescan_due),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("rescan_due is always set")
    }

    pub(super) async fn on_timer(&mut self) {
        let now = Instant::now();
        if self.progress_due.is_some_and(|t| t <= now) {
            self.progress_due = None;
            self.write_progress();
            self.give_memory_back();
            if self.notifier.is_some() {
                self.notify(&format!("STATUS={}", self.status_line()));
            }
        }
        if let (Some(due), Some(n)) = (self.watchdog_due, &self.notifier)
            && due <= now
        {
            n.send("WATCHDOG=1");
            self.watchdog_due = n.watchdog_every.map(|every| later(now, every));
        }
        if self.stagger_due.is_some_and(|t| t <= now) {
            self.stagger_due = None; // dispatch() runs next and sets it again if needed
        }
        if self.paused.as_ref().is_some_and(|p| p.retry_at <= now) {
            self.resume().await;
        }
        if self.rescan_due <= now {
            self.rescan_due = later(now, self.config.inbox_rescan);
            if !self.context_intact() {
                return;
            }
            self.retry_waiting_merges();
            self.pump_merges();
            self.expire_kept_trees();
            self.prune_runs_if_due(now);
            self.tell_fleet_agents();
            self.ingest().await;
        }
    }

    /// Something a person reads changed: `progress.md` is written again soon — after
    /// [`PROGRESS_DELAY`], or after twenty times what the last writing took, whichever is
    /// longer, so that however many tasks wait it never takes more than a twentieth of the
    /// engine's time.
    pub(super) fn changed(&mut self) {
        if self.progress_due.is_none() {
            let wait = PROGRESS_DELAY.max(self.progress_cost * 20);
            self.progress_due = Some(Instant::now() + wait);
        }
    }

    /// Once a burst of tasks has drained (nothing queued or running, and many settled since
    /// the last time), the allocator gives its free pages back to the system: a queue of
    /// 100,000 tasks otherwise leaves the daemon holding the memory that queue needed, for
    /// weeks.
    fn give_memory_back(&mut self) {
        if self.settled_since_trim < TRIM_AFTER || !self.live.is_idle() {
            return;
        }
        self.settled_since_trim = 0;
        self.compactor.catch_up();
        self.book.shrink();
        self.live.shrink();
        self.reserved.shrink_to_fit();
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: `malloc_trim` only releases free memory of glibc's heaps; it takes a lock
        // of its own and is safe to call from any thread at any time.
        unsafe {
            nix::libc::malloc_trim(0);
        }
    }

    pub(super) fn write_progress(&mut self) {
        let began = Instant::now();
        if let Err(e) = progress::write(&self.ws, &self.book) {
            tracing::warn!("cannot write `{}`: {e}", self.ws.progress().display());
        }
        self.progress_cost = began.elapsed();
    }

    /// The agent of `task`'s attempt has ended: its slot is free (once; later calls do nothing).
    fn release_slot(&mut self, task: &str) {
        if let Some(agent) = self.live.release_slot(task)
            && let Some(slot) = self.slots.get_mut(agent)
        {
            slot.running -= 1;
        }
    }

    pub(super) fn handle(&mut self, msg: Msg) {
        self.reap_tasks();
        match msg {
            Msg::AgentGone { task } => self.release_slot(&task),
            Msg::AttemptDone {
                task,
                records,
                report,
            } => {
                self.release_slot(&task);
                self.live.end_attempt(&task);
                if let (false, Some(what)) = (report.ran, &report.exhausted) {
                    // It never started, so nothing was recorded: it waits for the resource.
                    self.pause(what.clone());
                    if self.accepting {
                        self.enqueue(&task);
                    }
                    return;
                }
                if records.is_empty() {
                    return; // the ledger refused it: ledger_failed already stopped new work
                }
                self.apply(&records);
                let Some(t) = self.book.get(&task) else {
                    return;
                };
                let (attempt, agent) = (
                    t.attempts().last().map_or(0, |a| a.n),
                    t.attempts().last().map(|a| a.agent.clone()),
                );
                tracing::info!(
                    task,
                    agent = agent.as_deref().unwrap_or("?"),
                    attempt,
                    class = report.verdict.class.as_str(),
                    "attempt finished: {}",
                    report.verdict.reason
                );
                let verified = report.work.as_ref().is_some_and(|w| w.commit.is_some());
                match report.verdict.class {
                    Class::Ok if verified => self.after_verified(&task, *report),
                    Class::Ok => self.settle_done(&task, *report),
                    Class::Cancelled => self.settle_cancelled(&task),
                    Class::Interrupted => {
                        if let Some(what) = &report.exhausted {
                            self.pause(what.clone());
                        }
                        if self.accepting {
                            self.enqueue(&task);
                        }
                    }
                    _ => {
                        let Some(t) = self.book.get(&task) else {
                            return;
                        };
                        if t.chain_pos() >= t.chain().len() {
                            let reason = chain_failed(t, &self.config);
                            self.escalate(&task, reason);
                        } else {
                            self.enqueue(&task);
                        }
                    }
                }
            }
            Msg::Fleet(msg) => self.fleet_waiting.push(msg),
            Msg::Settled { task, records } => {
                self.settled_since_trim += 1;
                self.live.settled(&task);
                self.apply(&records);
                self.tell_fleet_settled(&task);
                self.tree_after_settled(&task);
                // A task of a workflow run settled: the run may move on.
                for run in self.live.runs_of(&task) {
                    self.live.advance(&run);
                }
            }
            Msg::Evaluated {
                run,
                key,
                id,
                records,
            } => {
                if let Some(progress) = self.live.run_mut(&run)
                    && progress.evaluating.get(&key).is_some_and(|e| e.id == id)
                {
                    progress.evaluating.remove(&key);
                }
                self.apply(&records);
                if self.live.run_mut(&run).is_some() {
                    self.live.advance(&run);
                }
            }
            Msg::ResultFailed { task, reason } => {
                self.live.stop_finishing(&task);
                self.escalate(&task, reason);
            }
            Msg::Paused { what, held } => {
                // The task stays `finishing`: nothing else may touch it until this is done.
                self.pause(what);
                self.held.push(held);
            }
            Msg::LedgerFailed(why) => self.ledger_failed(why),
            Msg::Recorded(records) => self.apply(&records),
            Msg::TreeFreed(tree) => self.pool_or_remove(tree),
            Msg::RunsOld(old) => self.on_runs_old(old),
            Msg::RunsPruned(emptied) => self.on_runs_pruned(emptied),
            Msg::TreeGivenUp { task, records } => {
                self.apply(&records);
                self.trees_leaving.remove(&task);
            }
            Msg::TreeRetired { task, pooled } => {
                self.trees_leaving.remove(&task);
                if let Some(tree) = pooled {
                    self.pool_or_remove(tree);
                }
                // Cancelled meanwhile: it stays so.
                if self
                    .book
                    .get(&task)
                    .is_some_and(|t| matches!(t.phase(), Phase::Pending))
                {
                    self.enqueue_or_advance(&task);
                }
            }
            // No word about an attempt may overtake its start.
            Msg::AttemptLost {
                task,
                how,
                started: Some(started),
            } => {
                let tx = self.tx.clone();
                self.tasks.spawn(async move {
                    let _ = started.await;
                    let _ = tx.send(Msg::AttemptLost {
                        task,
                        how,
                        started: None,
                    });
                });
            }
            Msg::AttemptLost {
                task,
                how,
                started: None,
            } => self.attempt_lost(task, how),
            Msg::AttemptUnjudged {
                task,
                reason,
                exhausted,
            } => {
                if let Some(run) = self.live.end_attempt(&task)
                    && let Some(slot) = self.slots.get_mut(&run.agent)
                {
                    slot.running -= 1;
                }
                match exhausted {
                    Some(what) => {
                        self.pause(format!("{what} ({reason})"));
                        if self.accepting {
                            self.enqueue(&task);
                        }
                    }
                    None => self.escalate(&task, reason),
                }
            }
            Msg::MergeEnded { task, target, end } => self.merge_ended(&task, &target, end),
        }
    }

    /// The work of `id`'s attempt ended without its last word (see [`Msg::AttemptLost`]). The
    /// task escalates rather than running again: the same bug would likely end the next
    /// attempt the same way, and a user who retries it sees that in one step.
    fn attempt_lost(&mut self, id: String, how: Lost) {
        self.release_slot(&id);
        self.live.end_attempt(&id);
        if how == Lost::LedgerRefused || self.ledger_failed.is_some() {
            return; // as for an end the ledger refused: the next start settles it
        }
        tracing::error!(task = %id, "the work of this attempt {how}: a bug in dirigent");
        // Its end, when its start is recorded: the ledger never shows an attempt running for
        // a task that is over.
        let open = self
            .book
            .get(&id)
            .and_then(|t| t.open_attempt())
            .map(|a| (a.n, a.agent.clone(), a.started_ms));
        let reason = format!(
            "internal error: dirigent's own work for this attempt {how} (a bug; the daemon's log has the details){}. `dirigent retry {id}` runs the task again",
            if open.is_some() {
                "; its agent was stopped"
            } else {
                ", before its agent started"
            }
        );
        let Some((attempt, agent, started_ms)) = open else {
            self.escalate(&id, reason);
            return;
        };
        let ran = Duration::from_millis(ledger::now_ms().saturating_sub(started_ms));
        let end = settling::interrupted_end(&self.ws, &id, attempt, &agent, &reason, ran);
        let (ledger, tx) = (self.ledger.clone(), self.tx.clone());
        self.tasks.spawn(async move {
            let records = record(&ledger, &tx, end).await;
            if records.is_empty() {
                return;
            }
            let _ = tx.send(Msg::Recorded(records));
            let _ = tx.send(Msg::AttemptUnjudged {
                task: id,
                reason,
                exhausted: None,
            });
        });
    }

    /// Collects the tasks that ended, so the set does not grow with every task ever spawned.
    fn reap_tasks(&mut self) {
        while let Some(ended) = self.tasks.try_join_next() {
            report_task_end(ended);
        }
    }

    /// Stops claiming and starting work because a resource ran out (`what` says which, and
    /// where). Tries again after a backoff (1 s, doubling to 30 s while it keeps failing).
    pub(super) fn pause(&mut self, what: String) {
        let now = Instant::now();
        if self
            .last_resume
            .is_some_and(|t| now.saturating_duration_since(t) > PAUSE_FORGET)
        {
            self.pause_backoff = PAUSE_FIRST;
        }
        if let Some(p) = &mut self.paused {
            p.what = what;
            return;
        }
        let retry_at = now + self.pause_backoff;
        tracing::warn!(
            "paused: {what}. Nothing new is claimed or started, and finished work is kept; dirigent tries again in {}",
            crate::duration::short(self.pause_backoff)
        );
        self.paused = Some(Pause {
            what,
            since_ms: ledger::now_ms(),
            retry_at,
        });
        self.pause_backoff = (self.pause_backoff * 2).min(PAUSE_MAX);
        self.changed();
    }

    /// The pause's time is up: do the held work again and let dispatch try. What still fails
    /// pauses again, for longer.
    async fn resume(&mut self) {
        let Some(p) = self.paused.take() else { return };
        tracing::info!("resuming after the pause ({})", p.what);
        self.last_resume = Some(Instant::now());
        for held in std::mem::take(&mut self.held) {
            match held {
                Held::Settle { task, report } => {
                    self.live.stop_finishing(&task);
                    self.settle_done(&task, *report);
                }
                Held::Escalate { snapshot, reason } => self.spawn_escalation(snapshot, reason),
            }
        }
        if std::mem::take(&mut self.claims_left) {
            // Files claimed before the pause but not read then.
            match self.ws.open_sub("running") {
                Ok(running) => {
                    let claimed: Vec<Claimed> = running
                        .names()
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|n| n.into_string().ok())
                        .filter(|n| n.starts_with(claim::CLAIM_PREFIX))
                        .map(|claim_name| Claimed {
                            name: claim::original_name(&claim_name)
                                .unwrap_or(&claim_name)
                                .to_string(),
                            claim_name,
                        })
                        .collect();
                    self.take_in(&running, claimed).await;
                }
                Err(_) => self.claims_left = true,
            }
        }
        self.dirty.notify_one();
        self.changed();
    }

    /// Why nothing may be claimed or started now, if so.
    pub(super) fn not_claiming(&self) -> Option<String> {
        if let Some(why) = &self.ledger_failed {
            return Some(format!("the ledger cannot be written ({why})"));
        }
        if let Some(why) = self.ledger.paused() {
            return Some(format!("paused: the ledger cannot be written ({why})"));
        }
        self.paused.as_ref().map(|p| format!("paused: {}", p.what))
    }

    /// Graceful stop: terminate running attempts, wait for them and for settling tasks, put
    /// unfinished task files back into the inbox, record it all.
    pub(super) async fn shutdown(&mut self) {
        self.accepting = false;
        for run in self.live.attempts() {
            let _ = run.stop.send(Some(crate::judge::StopCause::Shutdown));
        }
        self.side_stop.send_replace(true);
        self.live.stop_evaluators();
        // Everything is told to stop; what has not ended by this deadline (a git command that
        // hangs) is left to the next start, which the ledger tells what was under way — a stop
        // must end.
        let deadline =
            tokio::time::Instant::now() + self.config.kill_grace.saturating_add(STOP_WAIT_EXTRA);
        loop {
            // Work held for a resource is not waited for: the ledger has what the next start
            // needs to do it (a successful attempt without `done` is settled again).
            for held in std::mem::take(&mut self.held) {
                self.live.stop_finishing(held.task());
            }
            if self.tasks.is_empty() {
                // Every piece of work is one of `tasks`: with none left, nothing more can end
                // it. What they said before they ended is in the channel already.
                while let Ok(msg) = self.rx.try_recv() {
                    self.handle(msg);
                }
                if !self.tasks.is_empty() {
                    continue;
                }
                // Work whose task died without its last word (a panic, a bug) is not waited
                // for: the stop would wait for ever (the ledger has it; the next start closes it).
                if self.live.busy() > 0 {
                    tracing::error!(
                        busy = self.live.busy(),
                        "work whose task ended without a word (a bug); not waited for"
                    );
                }
                break;
            }
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                Some(ended) = self.tasks.join_next() => report_task_end(ended),
                () = tokio::time::sleep_until(deadline) => {
                    tracing::error!(
                        left = self.tasks.len(),
                        "stopping without waiting any longer for work still under way; the next start takes it up from the ledger"
                    );
                    // Cut off now, before the stop's own records: each holds a handle of the
                    // ledger, whose writer ends only once every handle is gone. What they said
                    // before is applied first: the requeueing below reads the book.
                    self.tasks.abort_all();
                    // A git command they waited on would run on after the daemon, holding its
                    // locks against the next start. (Cut off first: the command's failure is
                    // not taken for the task's.)
                    let told = crate::reaper::stop_helpers();
                    if told > 0 {
                        tracing::warn!("told {told} git command(s) still running to stop");
                    }
                    self.tasks.shutdown().await;
                    while let Ok(msg) = self.rx.try_recv() {
                        match msg {
                            // The cut-off itself, not a bug: the attempt stays open in the
                            // ledger, and the next start closes it as interrupted.
                            Msg::AttemptLost {
                                how: Lost::NoVerdict,
                                ..
                            } => {}
                            msg => self.handle(msg),
                        }
                    }
                    self.tasks.shutdown().await;
                    break;
                }
            }
        }
        let dirs = self
            .ws
            .open_sub("running")
            .and_then(|r| Ok((r, self.ws.open_sub("inbox")?)));
        let (running, inbox) = match dirs {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("cannot open running/ or the inbox to put tasks back: {e}");
                return;
            }
        };
        let mut events = Vec::new();
        for t in self.book.iter() {
            if t.phase().is_terminal() || *t.phase() == Phase::Requeued {
                continue;
            }
            // A task of the fleet stays with the fleet: one published here waits for its
            // outcome in running/; one taken from it goes back (below).
            if t.more().fleet.is_some() {
                continue;
            }
            // Verified work (committed on its branch, waiting for or in the merge queue) stays
            // in running/: the next start takes its merge up where it was, instead of running
            // the agent again.
            if t.more()
                .worktree
                .as_ref()
                .is_some_and(|w| w.commit.is_some())
            {
                continue;
            }
            if running.kind(t.file()) != Some(confined::Kind::File) {
                continue;
            }
            match task_file::requeue(&running, &inbox, t.id(), t.file()) {
                Ok(file) => events.push(Event::Requeued {
                    task: t.id().to_string(),
                    file,
                }),
                Err(e) => {
                    tracing::error!(task = %t.id(), "cannot move the task file back to the inbox: {e}")
                }
            }
        }
        let count = events.len();
        let taken: Vec<String> = self
            .book
            .iter()
            .filter(|t| {
                !t.phase().is_terminal()
                    && matches!(
                        t.more().fleet.as_deref(),
                        Some(crate::state::FleetPart::Taken { .. })
                    )
            })
            .map(|t| t.id().to_string())
            .collect();
        for id in taken {
            self.hand_back(&id).await;
        }
        // Recorded a few thousand at a time: one append of every task put back would be held
        // whole, as records and as text, on top of the book (tens of megabytes after a big
        // drop).
        let mut rest = events.into_iter();
        let mut last: Vec<Event> = rest.by_ref().take(REQUEUED_PER_APPEND).collect();
        while rest.len() > 0 {
            self.record_all(last).await;
            last = rest.by_ref().take(REQUEUED_PER_APPEND).collect();
        }
        last.push(Event::DaemonStopped {
            pid: std::process::id(),
        });
        self.record_all(last).await;
        if count > 0 {
            tracing::info!("{count} unfinished task(s) were put back into the inbox");
        }
        self.write_progress();
    }
}

/// How long a stop waits, beyond `kill_grace`, for the work it told to stop: with the default
/// grace (5 s), well within the service units' `TimeoutStopSec=30`, so the stop still records
/// itself.
const STOP_WAIT_EXTRA: Duration = Duration::from_secs(10);

/// How many `requeued` records a stop appends at once.
const REQUEUED_PER_APPEND: usize = 4096;

/// A spawned task that panicked is a bug: say so (the engine goes on; the ledger decides what
/// the next start does with its task).
fn report_task_end(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended
        && e.is_panic()
    {
        tracing::error!("an engine task panicked: {e}");
    }
}

/// Whether two config texts mean the same: equal as YAML values (spacing, comments and key
/// order aside).
fn same_yaml(a: Option<&str>, b: Option<&str>) -> bool {
    let value =
        |t: Option<&str>| t.and_then(|t| serde_saphyr::from_str::<serde_json::Value>(t).ok());
    match (value(a), value(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}
