//! Intake: a task is claimed here — the inbox is scanned, each file is claimed into `running/`,
//! read, checked (ids, `after`, the spawn limit) and recorded as `received`, or rejected with a
//! reason; accepted tasks join the queue.

use super::*;

/// Most inbox files taken in per scan; the rest wait for the next round, so a flood of files
/// neither blocks dispatching nor makes one huge batch.
const INGEST_BATCH: usize = 256;

/// The most bytes of task files taken in at once (then the next batch).
const INGEST_BATCH_BYTES: usize = 4 << 20;

/// Inbox files the tasks taken in wait for (see `Engine::awaited`): taken in even while the
/// intake is held back.
#[derive(Default)]
struct Awaited {
    /// Files of tasks a stop put back into the inbox.
    files: HashSet<String>,
    /// Ids of tasks others run `after` that are not taken in yet.
    ids: HashSet<String>,
}

impl Engine {
    /// Queues a task for its next attempt.
    pub(super) fn enqueue(&mut self, id: &str) {
        // A retried task whose old tree is still being given up is queued once it is
        // (`Msg::TreeRetired`): its new tree would meet the old one holding its branch.
        if self.trees_leaving.contains(id) {
            return;
        }
        match self.book.get(id) {
            Some(t) => self.live.queue_shared(t.shared_id(), t.priority()),
            None => self.live.queue(id, 0),
        }
    }

    /// Queues a task for attempts, or — a workflow run — has the runner advance it.
    pub(super) fn enqueue_or_advance(&mut self, id: &str) {
        let is_run = self.book.get(id).is_some_and(|t| t.workflow().is_some());
        if is_run {
            self.live.advance(id);
            return;
        }
        match self.placement_of(id) {
            fleet_tasks::Placement::Here => self.enqueue(id),
            fleet_tasks::Placement::Publish => self.publish(id),
            fleet_tasks::Placement::AwaitOutcome => {}
            fleet_tasks::Placement::HandBack => self.hand_backs.push(id.to_string()),
        }
    }

    /// A task id may be used for a new file if nobody has it, or if it belongs to a task that
    /// is coming back through the inbox (requeued by a graceful stop). An id a door reserved is
    /// free only for the file that door wrote (`explicit_in`: the file asking for it by name).
    fn id_free(&self, id: &str, explicit_in: Option<&str>) -> bool {
        if let Some(file) = self.reserved.get(id)
            && explicit_in != Some(file.as_str())
        {
            return false;
        }
        match self.book.get(id) {
            None => !self.book.contains(id),
            Some(t) => !t.phase().is_terminal() && !self.live.contains(id),
        }
    }

    /// Scans the inbox and takes in every candidate: each is claimed (renamed into
    /// `running/`) before it is read, then accepted or rejected.
    pub(super) async fn ingest(&mut self) {
        // Tasks from a `.context/` someone else put in place are not taken.
        if !self.accepting || !self.context_intact() {
            return;
        }
        let dir = self.ws.inbox();
        if let Some(why) = self.not_claiming() {
            let waiting = inbox::Backlog::scan(&dir).map(|b| b.len()).unwrap_or(0);
            if waiting > 0 {
                tracing::warn!(
                    "{waiting} task file(s) wait in the inbox: not claiming while {why}"
                );
            }
            return;
        }
        if self.inbox_backlog.is_empty() {
            // Held back, every file arriving would read the whole inbox again: once a
            // rescan period (`inbox_rescan`) is enough then, as the periodic rescan comes.
            if self.intake_held.is_some()
                && self
                    .held_scan_at
                    .is_some_and(|at| at.elapsed() < self.config.inbox_rescan)
            {
                return;
            }
            self.held_scan_at = self.intake_held.is_some().then(Instant::now);
            match inbox::Backlog::scan(&dir) {
                Ok(backlog) => self.inbox_backlog = backlog,
                Err(e) => {
                    if let Some(what) = fsutil::exhausted(&e) {
                        self.pause(format!("{what} (reading the inbox: {e})"));
                    } else {
                        tracing::error!("cannot read the inbox `{}`: {e}", dir.display());
                    }
                    return;
                }
            }
        }
        if self.inbox_backlog.is_empty() {
            return;
        }
        let mut room = self
            .config
            .queue_in_memory
            .saturating_sub(self.book.spec_bytes());
        let dirs = self
            .ws
            .open_sub("inbox")
            .and_then(|inbox| Ok((inbox, self.ws.open_sub("running")?)));
        let (inbox_dir, running) = match dirs {
            Ok(d) => d,
            Err(e) => {
                if let Some(what) = fsutil::exhausted(&e) {
                    self.pause(format!("{what} (opening `.context/`: {e})"));
                } else {
                    tracing::error!("cannot open the inbox or running/: {e}");
                }
                return;
            }
        };
        let held = room == 0;
        // What the tasks taken in wait for from the inbox, worked out once when needed.
        let mut awaited: Option<Awaited> = None;
        let mut feeders = Vec::new().into_iter();
        if held {
            // Held back: only what the tasks taken in wait for (leaving it out could leave them
            // waiting for ever, the room they hold never freed).
            let aw = self.awaited();
            let mut found = Vec::new();
            loop {
                let some = self.inbox_backlog.take(INGEST_BATCH);
                if some.is_empty() {
                    break;
                }
                found.extend(some.into_iter().filter(|c| self.is_awaited(&aw, &c.name)));
            }
            awaited = Some(aw);
            self.hold_intake_back();
            feeders = found.into_iter();
        } else {
            // Come back for the rest (and then for what arrived since) after this batch has
            // been dispatched.
            self.dirty.notify_one();
        }
        let mut claimed = Vec::new();
        let (mut looked, mut batch_bytes) = (0, 0);
        loop {
            // A batch is read whole before it is recorded: bounded in bytes too, or a batch of
            // big prompts would be held several times over at once.
            let within = looked < INGEST_BATCH && batch_bytes < INGEST_BATCH_BYTES;
            let next = match (held, within) {
                (true, true) => feeders.next(),
                (true, false) => {
                    if !feeders.as_slice().is_empty() {
                        // The rest at once, not at the next periodic scan.
                        self.held_scan_at = None;
                        self.dirty.notify_one();
                    }
                    None
                }
                (false, true) => self.inbox_backlog.take(1).pop(),
                (false, false) => None,
            };
            let Some(cand) = next else { break };
            looked += 1;
            let size =
                std::fs::symlink_metadata(dir.join(&cand.raw)).map_or(0, |m| m.len() as usize);
            // At least one file is taken in while there is any room: a big one is not held
            // back for ever.
            if room == 0 {
                let aw = awaited.get_or_insert_with(|| self.awaited());
                if !self.is_awaited(aw, &cand.name) {
                    self.hold_intake_back();
                    continue;
                }
            }
            room = room.saturating_sub(size);
            batch_bytes += size;
            let Some(name) = cand.raw.to_str() else {
                // Not UTF-8: it cannot be claimed under a text name; rejected where it is.
                let reason = "the file name is not valid UTF-8; rename the file".to_string();
                self.reject_unnamed(&cand.raw, reason).await;
                continue;
            };
            let claim_name = match claim::claim(&inbox_dir, &running, name) {
                Ok(Some(c)) => c,
                Ok(None) => continue, // gone: its writer took it back
                Err(e) => {
                    if let Some(what) = fsutil::exhausted(&e) {
                        self.pause(format!("{what} (claiming `{name}`: {e})"));
                        break;
                    }
                    tracing::error!(file = name, "cannot claim the task file: {e}");
                    continue;
                }
            };
            claimed.push(Claimed {
                claim_name,
                name: name.to_string(),
            });
        }
        self.take_in(&running, claimed).await;
    }

    /// What the unfinished tasks taken in wait for from the inbox, besides their workflow
    /// runs' tasks: their own files put back there by a stop, and the tasks they run `after`.
    fn awaited(&self) -> Awaited {
        let mut aw = Awaited::default();
        for t in self.book.iter().filter(|t| !t.phase().is_terminal()) {
            if matches!(t.phase(), Phase::Requeued) {
                aw.files.insert(t.file().to_string());
            }
            for dep in &t.more().after {
                if !self.book.contains(dep) {
                    aw.ids.insert(dep.clone());
                }
            }
        }
        aw
    }

    /// Whether the inbox file `name` is awaited by a task taken in: a task of a workflow run
    /// that is not finished (its id is the run's, a dot, and more), a task's own file put
    /// back by a stop (its spec is held already), or a task another runs `after`.
    fn is_awaited(&self, aw: &Awaited, name: &str) -> bool {
        let id = crate::task::id_from_stem(fsutil::split_name(name).0);
        aw.files.contains(name)
            || aw.ids.contains(&id)
            || id.match_indices('.').any(|(at, _)| {
                self.book
                    .get(&id[..at])
                    .is_some_and(|t| t.workflow().is_some() && !t.phase().is_terminal())
            })
    }

    /// Leaves the inbox's files where they are while the tasks taken in hold `queue_in_memory`
    /// of specs (their prompts, up to 1 MiB each, are held until a task finishes): a submitter
    /// who queues thousands of big prompts fills the inbox on disk, not the daemon's memory.
    /// Said once. The backlog is let go of: the inbox is read afresh when
    /// there is room again.
    fn hold_intake_back(&mut self) {
        self.inbox_backlog = Default::default();
        if self.intake_held.is_none() {
            let why = format!(
                "the tasks taken in and not finished hold {} MiB of prompts (`queue_in_memory`: {} MiB); the rest wait in the inbox until some finish",
                self.book.spec_bytes() >> 20,
                self.config.queue_in_memory >> 20
            );
            tracing::warn!("not taking more task files in: {why}");
            self.intake_held = Some(why);
        }
    }

    /// The spec a task put back by a stop was accepted with, when its file — back from the
    /// inbox — is refused now (its agent since removed from the config, the file edited into
    /// something invalid): the task was accepted once and is in the ledger, so it goes on as
    /// it was accepted (and fails at dispatch with a reason, if it cannot run) instead of
    /// being "rejected" while its record waits on — which a later start would run anyway.
    fn requeued_spec(&self, file: &str, reason: &str) -> Option<Box<TaskSpec>> {
        let id = crate::task::id_from_stem(fsutil::split_name(file).0);
        let t = self
            .book
            .get(&id)
            .filter(|t| matches!(t.phase(), Phase::Requeued) && t.file() == file)?;
        let spec = t.spec()?;
        tracing::warn!(
            task = %id,
            file,
            "its file, put back in the inbox by a stop, is refused now ({reason}); the task goes on as it was accepted"
        );
        Some(Box::new((*spec).clone()))
    }

    /// Why `spec` may not be taken in as (or beside) a workflow run's own task: it names a
    /// run (`workflow_run`) that does not want exactly it now — only the run's own child, as
    /// the run wrote it, is — or it names none but takes an id under a run's (`<run>.…`),
    /// where the run's children live. Without this anyone (an agent of the run included)
    /// could hand a run the result of a step, or a loop's evaluator verdict, of their choosing.
    /// `wanted` keeps each run's answer for the rest of the batch.
    fn run_check(
        &mut self,
        spec: &TaskSpec,
        written: Option<u64>,
        wanted: &mut HashMap<String, Vec<u64>>,
    ) -> Option<String> {
        let Some(run) = &spec.fields.workflow_run else {
            let owner = spec
                .id
                .match_indices('.')
                .map(|(at, _)| &spec.id[..at])
                .find(|prefix| {
                    // Live or finished: a finished one may be retried.
                    self.book.get(prefix).is_some_and(TaskRecord::may_be_run)
                })?;
            return Some(format!(
                "the id `{}` is under the workflow run `{owner}`'s (`{owner}.…` names its own tasks); choose another id",
                spec.id
            ));
        };
        // Sent by this daemon: exactly what it wrote, whatever the workspace holds now.
        if let Some(sent) = self.sent_children.get(&spec.id) {
            let ours = Some(*sent) == written;
            if ours {
                self.sent_children.remove(&spec.id);
            }
            return (!ours).then(|| {
                format!(
                    "`workflow_run` names `{run}`, which did not submit this task: dirigent sets it for a workflow run's own tasks"
                )
            });
        }
        // Written before a restart: what the run wants now.
        if !wanted.contains_key(run) {
            let live = self
                .book
                .get(run)
                .is_some_and(|t| !t.phase().is_terminal() && t.workflow().is_some());
            let wf = if live { self.workflow_of(run) } else { None };
            let children = wf
                .and_then(|wf| Some((self.book.get(run)?, wf)))
                .map(|(t, wf)| {
                    crate::runner::next(t, &wf, &self.book, &self.config, &self.ws)
                        .into_iter()
                        .filter_map(|a| match a {
                            crate::runner::Action::Submit(child) => {
                                Some(self.sent_digest(&self.child_fields(run, &child)))
                            }
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            wanted.insert(run.clone(), children);
        }
        let ours = written.is_some_and(|w| wanted[run].contains(&w));
        (!ours).then(|| {
            format!(
                "`workflow_run` names `{run}`, which did not submit this task: dirigent sets it for a workflow run's own tasks"
            )
        })
    }

    /// Reads, checks and records claimed files (in `running/` under their claim names, or —
    /// found there after a crash — under any name): ids given in the files first, then ids
    /// made from file names, so a file named like another task's explicit id never takes it.
    pub(super) async fn take_in(&mut self, running: &confined::Dir, claimed: Vec<Claimed>) {
        let mut parsed = Vec::new();
        let mut accepted: Vec<(Claimed, Box<TaskSpec>)> = Vec::new();
        let mut batch_ids: HashSet<String> = HashSet::new();
        for c in claimed {
            match claim::read(running, &c.claim_name, &c.name) {
                Ok(fields) => parsed.push((c, fields)),
                Err(claim::Unreadable::Refused(reason)) => {
                    match self.requeued_spec(&c.name, &reason) {
                        Some(spec) => {
                            batch_ids.insert(spec.id.clone());
                            accepted.push((c, spec));
                        }
                        None => self.reject(running, &c.claim_name, &c.name, reason).await,
                    }
                }
                Err(claim::Unreadable::Exhausted(e)) => {
                    // It stays claimed; it is taken in when the pause ends (or at the next start).
                    let what = fsutil::exhausted(&e).unwrap_or("a resource ran out");
                    self.pause(format!("{what} (reading `{}`: {e})", c.name));
                    self.claims_left = true;
                }
            }
        }
        let mut refused: Vec<(Claimed, String)> = Vec::new();
        let mut spawned_now: HashMap<String, u32> = HashMap::new();
        // What each workflow run named by a file of this batch wants submitted now.
        let mut wanted: HashMap<String, Vec<u64>> = HashMap::new();
        // Explicit ids first: they were asked for; a name-derived id yields to them.
        parsed.sort_by_key(|(_, f)| f.id.is_none());
        for (c, fields) in parsed {
            // A refusal is data from here on: the reason recorded with the rejected file.
            let id = claim::choose_id(&fields, &c.name, |id, explicit| {
                !batch_ids.contains(id) && self.id_free(id, explicit.then_some(c.name.as_str()))
            })
            .map_err(|refused| refused.to_string());
            // A run's own task is known by the fields as its run wrote them (accepting may put
            // a path in its normal form).
            let written = fields
                .workflow_run
                .is_some()
                .then(|| self.sent_digest(&fields));
            let spec = id
                .and_then(|id| {
                    crate::task::accept(id, fields, &self.config, self.ws.root()).map_err(|e| e.0)
                })
                .and_then(|spec| match &spec.fields.parent {
                    Some(parent) if !self.book.contains(parent) => {
                        Err(crate::submit::unknown_parent(parent))
                    }
                    Some(parent) => {
                        // Tasks agents create: bounded per original task, so an agent that
                        // keeps submitting (each task submitting the next) stops.
                        let origin = self.book.origin_of(parent);
                        let made = self.book.spawned.get(&origin).copied().unwrap_or(0)
                            + spawned_now.get(&origin).copied().unwrap_or(0);
                        if made >= self.config.max_spawned_tasks {
                            Err(format!(
                                "created from inside an attempt of `{parent}`: the attempts of `{origin}` and of the tasks they created have created {made} tasks, the limit (`max_spawned_tasks`)"
                            ))
                        } else {
                            *spawned_now.entry(origin).or_default() += 1;
                            Ok(spec)
                        }
                    }
                    None => Ok(spec),
                });
            let spec = match spec {
                Ok(spec) => match self.run_check(&spec, written, &mut wanted) {
                    Some(reason) => Err(reason),
                    None => Ok(spec),
                },
                refused => refused,
            };
            match spec {
                Ok(spec) => {
                    batch_ids.insert(spec.id.clone());
                    accepted.push((c, Box::new(spec)));
                }
                Err(reason) => match self.requeued_spec(&c.name, &reason) {
                    Some(spec) => {
                        batch_ids.insert(spec.id.clone());
                        accepted.push((c, spec));
                    }
                    None => refused.push((c, reason)),
                },
            }
        }
        // `after` must name a task that exists: known, in this batch, or waiting in the inbox.
        let mut kept = Vec::with_capacity(accepted.len());
        for (c, spec) in accepted {
            let known = |id: &str| {
                self.book.contains(id) || self.reserved.contains_key(id) || batch_ids.contains(id)
            };
            match crate::submit::unknown_dependency(&self.ws, &spec.fields.after, &known) {
                Some(reason) => refused.push((c, reason)),
                None => kept.push((c, spec)),
            }
        }
        // A task whose `after` leads back to itself would wait for good: refused now. Every new
        // circle runs through a task of this batch (the tasks taken in before formed none),
        // and a task taken in before leads into this batch only through an id it named while
        // that id still waited in the inbox (`named_ahead`). Without such ids the tasks taken
        // in before are ends of the search, and a batch costs what its own `after` lists
        // hold, however many tasks wait — a search per task over every task it could reach
        // made a big graph of `after` quadratic.
        let batch_after: HashMap<String, Vec<String>> = kept
            .iter()
            .map(|(_, spec)| (spec.id.clone(), spec.fields.after.clone()))
            .collect();
        let through_taken = !self.named_ahead.is_empty();
        let after_of = |id: &str| -> Option<&[String]> {
            match batch_after.get(id) {
                Some(after) => Some(after.as_slice()),
                None if through_taken => self
                    .book
                    .get(id)
                    .filter(|t| !t.phase().is_terminal())
                    .map(|t| t.more().after.as_slice()),
                None => None,
            }
        };
        let circles =
            crate::submit::may_have_cycle(batch_after.keys().map(String::as_str), &after_of);
        // Only a task something names can be on a circle.
        let named_in_batch: HashSet<&str> = if circles {
            batch_after.values().flatten().map(String::as_str).collect()
        } else {
            HashSet::new()
        };
        let mut accepted = Vec::with_capacity(kept.len());
        for (c, spec) in kept {
            let named = circles
                && (named_in_batch.contains(spec.id.as_str())
                    || self.named_ahead.contains(&spec.id));
            match named
                .then(|| crate::submit::dependency_cycle(&spec.id, &after_of))
                .flatten()
            {
                Some(reason) => refused.push((c, reason)),
                None => accepted.push((c, spec)),
            }
        }
        for (_, spec) in &accepted {
            self.named_ahead.remove(&spec.id);
        }
        // Named ahead: what is not a task once this batch is in (a task of the batch refused
        // above included — one that comes later under its id could close a circle).
        let taken: HashSet<&str> = accepted.iter().map(|(_, s)| s.id.as_str()).collect();
        let ahead: Vec<String> = accepted
            .iter()
            .flat_map(|(_, spec)| spec.fields.after.iter())
            .filter(|dep| !self.book.contains(dep) && !taken.contains(dep.as_str()))
            .cloned()
            .collect();
        self.named_ahead.extend(ahead);
        for (c, reason) in refused {
            self.reject(running, &c.claim_name, &c.name, reason).await;
        }
        self.accept_batch(running, accepted).await;
    }

    async fn accept_batch(
        &mut self,
        running: &confined::Dir,
        mut accepted: Vec<(Claimed, Box<TaskSpec>)>,
    ) {
        if accepted.is_empty() {
            return;
        }
        // `strategy: best` roles: the chain is ordered by the record, before it is recorded.
        let mut scores = None;
        for (_, spec) in accepted.iter_mut() {
            let Some(role) = spec.chain_source.strip_prefix("role:") else {
                continue;
            };
            if !self.config.best_roles.contains(role) {
                continue;
            }
            let scores = scores.get_or_insert_with(|| crate::routing::scores(&self.book));
            self.best_routed += 1;
            // Every tenth such task keeps the configured order, so no agent starves of data.
            if self.best_routed % crate::routing::EXPLORE_EVERY != 0 {
                spec.chain = crate::routing::rank(&spec.chain, scores);
            }
        }
        // Each file gets its task's name in running/, then `received` and `claimed` are
        // recorded together, with one fsync. A crash before that leaves `<id>.<ext>` in
        // running/, which the next start takes in as the same task.
        let mut events = Vec::with_capacity(accepted.len() * 2);
        for (c, spec) in &accepted {
            match task_file::name_claimed(running, &c.claim_name, &spec.id, &c.name) {
                Ok(file) => {
                    self.reserved.remove(&spec.id);
                    events.push(Event::Received {
                        task: spec.id.clone(),
                        file: c.name.clone(),
                        spec: spec.clone(),
                    });
                    events.push(Event::Claimed {
                        task: spec.id.clone(),
                        file,
                    });
                }
                Err(e) => {
                    // Still claimed under its claim name: the next start takes it in.
                    tracing::error!(task = %spec.id, "cannot name the claimed task file: {e}");
                }
            }
        }
        for r in self.record_all(events).await.unwrap_or_default() {
            if let Event::Claimed { task, .. } = &r.event {
                tracing::info!(task, "received");
                self.enqueue_or_advance(task);
            }
        }
    }

    /// Moves a claimed file to `rejected/` and records why.
    async fn reject(&mut self, from: &confined::Dir, from_name: &str, name: &str, reason: String) {
        tracing::warn!(file = %name, "rejected: {reason}");
        let moved = task_file::reject(&self.ws, from, from_name, name, &reason);
        self.record_rejection(name, reason, moved).await;
    }

    /// Rejects an inbox file whose name is not UTF-8, moving it by path.
    async fn reject_unnamed(&mut self, raw: &std::ffi::OsStr, reason: String) {
        let name = raw.to_string_lossy().into_owned();
        tracing::warn!(file = %name, "rejected: {reason}");
        let moved = task_file::reject_unnamed(&self.ws, raw, &reason);
        self.record_rejection(&name, reason, moved).await;
    }

    async fn record_rejection(
        &mut self,
        file: &str,
        reason: String,
        moved: std::io::Result<String>,
    ) {
        // A task a workflow run submitted that cannot be accepted fails the run, which would
        // otherwise wait for it forever.
        let run = self.live.runs_of(file).into_iter().next();
        let moved_to = match moved {
            Ok(m) => m,
            Err(e) => {
                // It stays claimed (or in the inbox); the next start tries again.
                tracing::error!(file = %file, "cannot move a rejected file to rejected/: {e}");
                return;
            }
        };
        let ev = Event::Rejected {
            file: file.to_string(),
            reason: reason.clone(),
            moved_to,
        };
        if self.record_now(ev).await
            && let Some(run) = run
        {
            self.escalate(
                &run,
                format!("a task it submitted (`{file}`) was rejected: {reason}"),
            );
        }
    }
}
