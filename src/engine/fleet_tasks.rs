//! Fleet mode, the engine's side (see `crate::fleet` for the whole flow): where an accepted
//! task is published instead of queued, where a task taken off the fleet's queue is received
//! and run here, and where a task taken off the queue that cannot finish here is handed back.
//! An outcome from the fleet for a task published here is settled in `fleet_outcomes`.
//!
//! Which of these applies is [`placement`]'s decision, a pure function; the rest carries it out.

use super::*;
use crate::fleet::{self, End, Taken, ToEngine, ToFleet};
use crate::state::{FleetPart, HANDED_BACK_REASON};

/// Where a task that is ready to run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Placement {
    /// This node's own queue.
    Here,
    /// The fleet's queue (then it waits for its outcome).
    Publish,
    /// Already on the fleet's queue: it waits for its outcome.
    AwaitOutcome,
    /// Taken off the fleet's queue and not finished here: it goes back to the fleet.
    HandBack,
}

/// What a task needs that only this node has, so it cannot go to the fleet yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Needs {
    /// It edits in a worktree of this node's repository.
    pub worktree: bool,
    /// It waits for other tasks of this node (`after`).
    pub after: bool,
    /// It is a workflow run (its runner is here; its phases go to the fleet one by one).
    pub run: bool,
    /// Its work must be merged here before what follows can start (it says `merge: auto` or
    /// `merge_into:` — a workflow step that edits does): fleet work comes back unmerged.
    pub merged_here: bool,
}

/// The decision. `fleet`: this node is in a fleet (with a link to it); `edits_travel`: its
/// editing tasks can go to the fleet (it has `cluster.repository`).
pub(super) fn placement(
    fleet: bool,
    edits_travel: bool,
    part: Option<&FleetPart>,
    needs: Needs,
) -> Placement {
    match part {
        Some(FleetPart::Taken { .. }) => Placement::HandBack,
        Some(FleetPart::Retry { .. }) if fleet => Placement::Publish,
        Some(FleetPart::Retry { .. }) => Placement::Here,
        Some(FleetPart::Published { .. }) if fleet => Placement::AwaitOutcome,
        // Published, but the node left the fleet since: it runs here.
        Some(FleetPart::Published { .. }) => Placement::Here,
        None if !fleet || needs.after || needs.run => Placement::Here,
        None if needs.worktree && (!edits_travel || needs.merged_here) => Placement::Here,
        None => Placement::Publish,
    }
}

/// Where a task published from this node stands, as far as the node can tell
/// ([`Engine::fleet_whereabouts`]).
pub(super) enum FleetWhereabouts {
    /// The live worker whose heartbeat says it holds the task.
    RunningOn(String),
    /// Why no worker has it yet.
    WaitingFor(String),
}

impl Engine {
    /// Where task `id` goes (see [`placement`]).
    pub(super) fn placement_of(&self, id: &str) -> Placement {
        let Some(t) = self.book.get(id) else {
            return Placement::Here;
        };
        let needs = t.spec().map_or(Needs::default(), |spec| Needs {
            worktree: self.edits_in_worktree(&spec),
            after: !spec.fields.after.is_empty(),
            run: spec.fields.workflow.is_some(),
            merged_here: spec.fields.merge == Some(crate::editing::MergeMode::Auto)
                || spec.fields.merge_into.is_some(),
        });
        let edits_travel = self.fleet.as_ref().is_some_and(|l| l.repository.is_some());
        placement(
            self.fleet.is_some(),
            edits_travel,
            t.more().fleet.as_deref(),
            needs,
        )
    }

    /// Whether an attempt of the task would work in a worktree here, for any agent of its
    /// chain (the same decision as at an attempt's start, `tree_plan`).
    fn edits_in_worktree(&self, spec: &TaskSpec) -> bool {
        let in_repo = crate::git::in_repository(self.ws.root());
        let role = self.role_of(spec).and_then(|(w, _)| *w);
        let decide = |agent: Option<crate::workdir::Workdir>| {
            let asked = crate::workdir::Asked {
                task: spec.fields.workdir,
                phase: None,
                role,
                agent,
                config: self.config.workdir,
            };
            crate::workdir::decide(asked, in_repo, spec.fields.workflow.is_some())
                == Ok(crate::workdir::Workdir::Worktree)
        };
        if spec.chain.is_empty() {
            return decide(None);
        }
        spec.chain
            .iter()
            .any(|entry| decide(self.config.agent_for(entry).and_then(|a| a.workdir)))
    }

    /// The fleet as this node sees it, for `status`: the server, the workers, and the agents
    /// that tasks published here wait for but no live worker runs.
    pub(super) fn fleet_status(&self) -> Option<serde_json::Value> {
        let link = self.fleet.as_ref()?;
        let view = fleet::heartbeat::lock(&link.view);
        let mut unrunnable: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for t in self.book.iter() {
            if t.phase().is_terminal() {
                continue;
            }
            let Some(FleetPart::Published { subject, .. }) = t.more().fleet.as_deref() else {
                continue;
            };
            let agent = fleet::agent_of_subject(subject);
            if !view.runs(&agent) {
                unrunnable
                    .entry(agent)
                    .or_default()
                    .push(t.id().to_string());
            }
        }
        let mut out = view.to_json();
        out["node"] = link.node.clone().into();
        out["url"] = link.url.clone().into();
        out["works"] = link.works.into();
        out["unrunnable"] = serde_json::json!(unrunnable);
        Some(out)
    }

    /// Where a task published from here stands, when this node can tell (`None` for any other
    /// task): the worker that holds it, as that worker's heartbeat says (a hint: the node hears
    /// for sure only the outcome); else why it has no worker — the server is away, or no live
    /// worker runs its agent.
    pub(super) fn fleet_whereabouts(&self, t: &TaskRecord) -> Option<FleetWhereabouts> {
        let link = self.fleet.as_ref()?;
        let Some(FleetPart::Published {
            subject,
            worker: None,
            round,
            ..
        }) = t.more().fleet.as_deref()
        else {
            return None;
        };
        if t.phase().is_terminal() {
            return None;
        }
        let view = fleet::heartbeat::lock(&link.view);
        let key = fleet::key_of(&link.node, t.id(), *round, t.received_ms);
        if let Some(worker) = view.holder(&key) {
            return Some(FleetWhereabouts::RunningOn(worker.to_string()));
        }
        if !view.connected {
            return Some(FleetWhereabouts::WaitingFor(format!(
                "the fleet's server is not connected{}; the task waits on its queue and goes to a worker once this node is back",
                view.problem
                    .as_deref()
                    .map(|p| format!(" ({})", crate::terminal::printable(p)))
                    .unwrap_or_default()
            )));
        }
        let agent = fleet::agent_of_subject(subject);
        (!view.runs(&agent)).then(|| {
            FleetWhereabouts::WaitingFor(format!(
                "no live worker of the fleet runs `{agent}`; the task runs once one that does joins (`dirigent fleet` lists the workers)"
            ))
        })
    }

    /// Tells the fleet component which agents this node runs, when that changed since it was
    /// last told: after a config reload, and at every inbox rescan (an agent's CLI installed
    /// or removed since).
    pub(super) fn tell_fleet_agents(&mut self) {
        let Some(link) = &self.fleet else { return };
        let now = super::daemon::capabilities(&self.config, self.ws.root());
        if now != self.fleet_agents {
            let _ = link.to_fleet.send(ToFleet::Agents(now.clone()));
            self.fleet_agents = now;
        }
    }

    /// Tells the fleet about a start in a provider's `starts_per_minute` window.
    pub(super) fn tell_fleet_started(&self, window: &str) {
        if let (Some(link), Some(provider)) = (&self.fleet, window.strip_prefix("provider:")) {
            let _ = link.to_fleet.send(ToFleet::Started {
                provider: provider.to_string(),
            });
        }
    }

    /// The start log `room` reads: this node's, with the other workers' starts added to each
    /// provider window (fleet mode).
    pub(super) fn starts_with_fleet(
        &self,
        windows: &[(String, u32)],
    ) -> Option<HashMap<String, std::collections::VecDeque<Instant>>> {
        if self.starts_elsewhere.is_empty() {
            return None;
        }
        let mut out = HashMap::new();
        for (window, _) in windows {
            let mut all: Vec<Instant> = self
                .start_log
                .get(window)
                .into_iter()
                .flatten()
                .copied()
                .chain(
                    self.starts_elsewhere
                        .get(window)
                        .into_iter()
                        .flat_map(|w| w.values().flatten().copied()),
                )
                .collect();
            all.sort();
            out.insert(window.clone(), all.into());
        }
        Some(out)
    }

    /// Hands an accepted task to the fleet's queue; `published` is recorded when the server
    /// has it.
    pub(super) fn publish(&mut self, id: &str) {
        let Some(spec) = self.book.get(id).and_then(|t| t.spec()) else {
            return;
        };
        // An editing task carries where workers reach the repository; its base commit is
        // resolved by the fleet component (git runs off the engine's loop).
        let edit = match (
            self.edits_in_worktree(&spec),
            self.fleet.as_ref().and_then(|l| l.repository.clone()),
        ) {
            (true, Some(repository)) => match self.repo() {
                Ok(repo) => {
                    let inside = self.inside(&repo);
                    let Some(inside) = inside.to_str().map(str::to_string) else {
                        self.escalate(
                            id,
                            format!(
                                "it cannot go on the fleet's queue: the workspace's place in the repository, `{}`, is not UTF-8",
                                inside.display()
                            ),
                        );
                        return;
                    };
                    Some(Box::new(fleet::EditAsk {
                        repository,
                        here: repo.top,
                        base: spec.fields.base.clone(),
                        merge_into: self.editing_of(&spec, &[]).merge_into,
                        inside,
                    }))
                }
                Err(e) => {
                    self.escalate(id, format!("it cannot go on the fleet's queue: {e}"));
                    return;
                }
            },
            _ => None,
        };
        let (Some(link), Some(t)) = (&self.fleet, self.book.get(id)) else {
            return;
        };
        let round = match t.more().fleet.as_deref() {
            Some(FleetPart::Retry { round }) => *round,
            _ => 0,
        };
        let _ = link.to_fleet.send(ToFleet::Publish {
            spec,
            round,
            received_ms: t.received_ms,
            edit,
        });
    }

    /// Records that a task taken off the queue goes back to it unfinished.
    pub(super) async fn hand_back(&mut self, id: &str) {
        let Some(t) = self.book.get(id) else { return };
        if t.phase().is_terminal() {
            return;
        }
        let file = t.file().to_string();
        let fields = t.spec().map(|s| s.fields.clone());
        tracing::info!(task = id, "{HANDED_BACK_REASON}");
        if self.record_now(Event::HandedBack { task: id.into() }).await
            && let Err(e) = task_file::settle(
                &self.ws,
                Place::Running,
                Place::Failed,
                &file,
                id,
                fields.as_ref(),
            )
        {
            tracing::warn!(task = id, "cannot move the task file to failed/: {e}");
        }
    }

    /// Carries out what the fleet component sent, in the order it came.
    pub(super) async fn take_fleet_messages(&mut self) {
        // Spending, both ways: this node's today goes out with its heartbeat; the others'
        // come in for the budgets.
        if let Some(link) = &self.fleet {
            let today = crate::state::day_of(ledger::now_ms());
            let mut view = fleet::heartbeat::lock(&link.view);
            let own = self.book.spend.get(&today).cloned().unwrap_or_default();
            if view.own_spend.0 != today || view.own_spend.1 != own {
                view.own_spend = (today, own);
            }
            self.book.elsewhere = view.spent_elsewhere(&link.node);
        }
        for id in std::mem::take(&mut self.hand_backs) {
            self.hand_back(&id).await;
        }
        for msg in std::mem::take(&mut self.fleet_waiting) {
            match msg {
                ToEngine::Published {
                    task,
                    subject,
                    round,
                    seq,
                    base,
                } => {
                    let this_round = match self.book.get(&task) {
                        Some(t) if !t.phase().is_terminal() => match t.more().fleet.as_deref() {
                            None => round == 0,
                            Some(FleetPart::Retry { round: r }) => *r == round,
                            Some(_) => false,
                        },
                        _ => false,
                    };
                    if this_round {
                        tracing::info!(task, subject, "on the fleet's queue");
                        self.record_now(Event::Published {
                            task,
                            subject,
                            round,
                            stream_seq: seq,
                            base,
                        })
                        .await;
                    }
                }
                ToEngine::Run {
                    queued,
                    edit,
                    reply,
                } => {
                    let answer = self.run_for_fleet(*queued, edit).await;
                    let _ = reply.send(answer);
                }
                ToEngine::Outcome {
                    task,
                    round,
                    received_ms,
                    outcome,
                } => {
                    self.settle_from_fleet(&task, round, received_ms, outcome)
                        .await
                }
                ToEngine::Unpublishable { task, reason } => {
                    let unsent = self.book.get(&task).is_some_and(|t| {
                        !t.phase().is_terminal()
                            && matches!(
                                t.more().fleet.as_deref(),
                                None | Some(FleetPart::Retry { .. })
                            )
                    });
                    if unsent {
                        tracing::warn!(task, "cannot go on the fleet's queue: {reason}");
                        self.escalate(
                            &task,
                            format!("it cannot go on the fleet's queue: {reason}"),
                        );
                    }
                }
                ToEngine::Provider(word) => self.heed(word).await,
                ToEngine::Starts {
                    worker,
                    provider,
                    at_ms,
                } => {
                    let (now, now_ms) = (Instant::now(), ledger::now_ms());
                    let at: Vec<Instant> = at_ms
                        .iter()
                        .filter_map(|t| {
                            now.checked_sub(Duration::from_millis(now_ms.saturating_sub(*t)))
                        })
                        .collect();
                    self.starts_elsewhere
                        .entry(format!("provider:{provider}"))
                        .or_default()
                        .insert(worker, at);
                }
                ToEngine::Cancel { task } => {
                    let answer = self
                        .control(crate::protocol::Request::Cancel { id: task.clone() })
                        .await;
                    tracing::info!(task, "its node cancelled it: {}", answer.message);
                }
                ToEngine::Claimed { task, key, won } => {
                    self.record_now(Event::FleetSettled { task, key, won })
                        .await;
                }
            }
        }
    }

    /// A task of the fleet, to run here: checked with this node's own rules, written into
    /// `running/`, recorded `received` + `claimed` + `fleet_taken`, and queued.
    async fn run_for_fleet(
        &mut self,
        queued: fleet::QueuedTask,
        edit: Option<Box<fleet::edits::EditHere>>,
    ) -> Taken {
        if !self.accepting {
            return Taken::Busy("this worker is stopping".into());
        }
        if let Some(why) = self.not_claiming() {
            return Taken::Busy(why);
        }
        let key = queued.key();
        // A repeat delivery: the task this key already runs as here, or its end.
        let earlier = self
            .book
            .iter()
            .rev()
            .find(|t| matches!(t.more().fleet.as_deref(), Some(FleetPart::Taken { key: k, .. }) if *k == key))
            .cloned();
        if let Some(t) = &earlier {
            match self.end_of(t) {
                Some(end) => {
                    return Taken::Ended {
                        task: t.id().to_string(),
                        end,
                    };
                }
                None if !t.phase().is_terminal() => {
                    return Taken::Runs {
                        task: t.id().to_string(),
                    };
                }
                // Handed back or cancelled here: it runs again under a new id.
                None => {}
            }
        }
        if !queued.well_formed() {
            return Taken::Refused(format!("`{key}` does not name a node and a task"));
        }
        // Named for its node and id (`desk.fix-login`), shortened to the names' limit when
        // that is too long; a later copy (another round, or handed back and delivered here
        // again) gets a number.
        let mut base = format!("{}.{}", queued.node, queued.spec.id);
        if base.len() > MAX_LOCAL_ID {
            let cut = (0..=MAX_LOCAL_ID - 16)
                .rev()
                .find(|i| base.is_char_boundary(*i))
                .unwrap_or(0);
            base = format!(
                "{}.{:015x}",
                &base[..cut].trim_end_matches('.'),
                fnv(&key) >> 4
            );
        }
        let mut id = base.clone();
        let mut n = 1;
        while self.book.contains(&id) || self.reserved.contains_key(&id) {
            n += 1;
            id = format!("{base}.{n}");
        }
        if crate::config::validate_name(&id).is_err() {
            return Taken::Refused(format!("`{key}` cannot be a task id here"));
        }
        if queued.spec.fields.workflow.is_some() {
            return Taken::Refused(
                "a workflow run does not travel: it runs on the node it was submitted to (its phases go to the fleet)".into(),
            );
        }
        // Its `after` and `parent` name tasks of the node it came from, not of this one.
        // Every agent of its chain that this worker has rests (a cooldown, an auth failure —
        // seen here or anywhere in the fleet): not now; the task waits on the queue instead of
        // escalating here.
        if let Some(why) = self.all_resting(&queued.spec.chain) {
            return Taken::Busy(why);
        }
        if queued.edit.is_some() != edit.is_some() {
            return Taken::Refused("its repository was not readied on this worker".into());
        }
        // Commands of another machine's choosing run here only when this worker says so.
        if queued.spec.fields.verify.is_some()
            && !self
                .config
                .cluster
                .as_ref()
                .is_some_and(|c| c.run_task_verify)
        {
            return Taken::Refused(
                "it brings its own `verify` commands, which this worker does not run for other nodes (`cluster.run_task_verify: true` in its config allows it)".into(),
            );
        }
        let mut fields = queued.spec.fields.clone();
        fields.id = None;
        fields.after.clear();
        fields.parent = None;
        // Its `output` names a file of the submitting node's workspace, where that node writes
        // the result it is sent; here the result stays in this worker's outbox (written to the
        // same path here, it replaced the worker's own files).
        fields.output = None;
        // Where it works here is the fleet's decision (`tree_plan`): a worktree of the
        // repository it came with, or — a task that only answers — this workspace. Its node's
        // `base` and `merge_into` name that node's branches.
        fields.workdir = None;
        fields.base = None;
        fields.merge_into = None;
        let spec = match crate::task::accept(id.clone(), fields, &self.config, self.ws.root()) {
            Ok(spec) => spec,
            Err(e) => return Taken::Refused(e.0),
        };
        let running = match self.ws.open_sub("running") {
            Ok(r) => r,
            Err(e) => return Taken::Refused(format!("cannot open running/: {e}")),
        };
        let file =
            match task_file::place_in_running(&running, &spec.fields, &id, &format!("{id}.json")) {
                Ok(f) => f,
                Err(e) => return Taken::Refused(format!("cannot write the task file: {e}")),
            };
        let events = vec![
            Event::Received {
                task: id.clone(),
                file: file.clone(),
                spec: Box::new(spec),
            },
            Event::Claimed {
                task: id.clone(),
                file,
            },
            Event::FleetTaken {
                task: id.clone(),
                key: key.clone(),
                edit: edit.map(|e| *e),
            },
        ];
        if self.record_all(events).await.is_none() {
            return Taken::Refused("this worker cannot write its ledger".into());
        }
        tracing::info!(task = %id, key, "taken from the fleet");
        self.enqueue(&id);
        Taken::Runs { task: id }
    }

    /// Another worker's word on a provider, recorded here when it changes what this node
    /// knows (a later cooldown, a disable, an enable of what is resting here).
    async fn heed(&mut self, word: fleet::stewardship::Word) {
        use fleet::stewardship::ProviderWord;
        let known = self.book.providers.get(&word.provider);
        let now = ledger::now_ms();
        let worker = Some(word.worker.clone());
        let event = match word.state {
            ProviderWord::Cooling {
                agent,
                until_ms,
                reason,
            } => {
                let later = known
                    .and_then(|p| p.cooling_until_ms)
                    .is_none_or(|u| u < until_ms);
                (until_ms > now && later).then(|| Event::ProviderCooldown {
                    provider: word.provider.clone(),
                    worker,
                    agent,
                    task: String::new(),
                    until_ms,
                    reason: format!("on worker `{}`: {reason}", word.worker),
                })
            }
            ProviderWord::Disabled { agent, reason } => known
                .is_none_or(|p| p.disabled.is_none())
                .then(|| Event::ProviderDisabled {
                    provider: word.provider.clone(),
                    worker,
                    agent,
                    task: String::new(),
                    reason: format!("on worker `{}`: {reason}", word.worker),
                }),
            ProviderWord::Enabled => known.is_some().then(|| Event::ProviderEnabled {
                provider: word.provider.clone(),
                worker,
            }),
        };
        if let Some(event) = event {
            tracing::info!(provider = %word.provider, worker = %word.worker, "the fleet's word on the provider");
            self.record_now(event).await;
        }
    }

    /// Why none of `chain`'s agents can start here now, when each one configured here rests
    /// (`None`: one can, or none is configured here — then the task's check says so).
    fn all_resting(&self, chain: &[String]) -> Option<String> {
        let now = ledger::now_ms();
        let mut why = Vec::new();
        for entry in chain {
            let Some(agent) = self.config.agent_for(entry) else {
                continue;
            };
            match self.book.availability(&agent.provider, now) {
                crate::state::Availability::Ready => return None,
                crate::state::Availability::CoolingDown { reason, .. }
                | crate::state::Availability::Disabled { reason, .. } => {
                    why.push(format!("`{entry}`: {reason}"))
                }
            }
        }
        (!why.is_empty())
            .then(|| format!("every agent of its chain rests here ({})", why.join("; ")))
    }

    /// How a finished task ended, as the fleet is told (`None`: it has no outcome to give —
    /// not finished, handed back, or cancelled).
    fn end_of(&self, t: &TaskRecord) -> Option<End> {
        match t.phase() {
            // The fleet component reads the result (off the engine's loop) and sends it inline
            // or through the object store.
            Phase::Done { agent, output, .. } => {
                // An editing task's committed work goes back with it.
                let deliver = match t.more().fleet.as_deref() {
                    Some(FleetPart::Taken { edit, .. }) => edit.clone(),
                    _ => None,
                };
                let work = deliver.as_ref().and_then(|here| {
                    let w = t.more().worktree.as_deref()?;
                    Some(Box::new(fleet::edits::Work {
                        branch: here.branch.clone(),
                        commit: w.commit.clone()?,
                        base: w.base.clone(),
                        carried: fleet::edits::Carried::NotYet,
                    }))
                });
                Some(End::Done {
                    agent: agent.clone(),
                    attempt: t.attempts().last().map_or(0, |a| a.n),
                    text: String::new(),
                    truncated: false,
                    object: None,
                    object_sha256: None,
                    local_output: Some(output.clone()),
                    deliver: work.as_ref().and(deliver).map(Box::new),
                    work,
                })
            }
            Phase::Failed { reason, .. }
                if reason != HANDED_BACK_REASON && reason != crate::state::CANCELLED_REASON =>
            {
                Some(End::Escalated {
                    reason: with_attempts(reason, t),
                    attempts: t.attempts().len() as u32,
                })
            }
            _ => None,
        }
    }

    /// A task published here is cancelled here: the fleet takes it off its queue, and the
    /// worker that runs it stops.
    pub(super) fn tell_fleet_cancelled(&self, id: &str) {
        let (Some(link), Some(t)) = (&self.fleet, self.book.get(id)) else {
            return;
        };
        if let Some(FleetPart::Published { round, seq, .. }) = t.more().fleet.as_deref() {
            let _ = link.to_fleet.send(ToFleet::Cancel {
                key: fleet::key_of(&link.node, id, *round, t.received_ms),
                seq: *seq,
            });
        }
    }

    /// A task taken off the queue settled here: the fleet component claims its outcome.
    pub(super) fn tell_fleet_settled(&mut self, id: &str) {
        let Some(link) = &self.fleet else { return };
        // Its scratch directory (a task that answered), if it had one.
        let scratch = self.ws.context().join("fleet").join("scratch").join(id);
        if scratch.exists() {
            self.tasks.spawn(async move {
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(scratch)).await;
            });
        }
        let Some(t) = self.book.get(id) else { return };
        let Some(FleetPart::Taken { key, .. }) = t.more().fleet.as_deref() else {
            return;
        };
        let word = match self.end_of(t) {
            Some(end) => ToFleet::Settled {
                key: key.clone(),
                task: id.to_string(),
                end,
            },
            // Cancelled here: not an outcome; another worker runs it.
            None if t.phase().is_terminal() => ToFleet::HandBack { key: key.clone() },
            None => return,
        };
        let _ = link.to_fleet.send(word);
    }
}

/// An escalation's reason as its node is told it: with how each attempt here ended (agent,
/// class, exit, the attempt's reason) and the local id to look its output up by, since the node
/// has no record of attempts made on another machine.
fn with_attempts(reason: &str, t: &TaskRecord) -> String {
    if t.attempts().is_empty() {
        return reason.to_string();
    }
    let mut out = format!(
        "{reason}\n\nAttempts on this worker (task `{}` here; `dirigent logs {}` on it shows their output):",
        t.id(),
        t.id()
    );
    for a in t.attempts().iter().take(20) {
        let ended = match (a.exit_code, a.signal) {
            (_, Some(sig)) => format!("signal {sig}"),
            (Some(code), None) => format!("exit code {code}"),
            _ => "no exit".into(),
        };
        out.push_str(&format!(
            "\n- attempt {}: {} → {} ({ended}): {}",
            a.n,
            a.agent,
            a.class.map_or("?", |c| c.as_str()),
            crate::progress::one_line(&a.reason, 300)
        ));
    }
    out
}

/// Local ids leave room for a copy's number (`.NN`) under the names' 128 characters.
const MAX_LOCAL_ID: usize = 120;

/// A short, stable fingerprint of a key, for a local id that had to be shortened.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_a_ready_task_goes() {
        let published = FleetPart::Published {
            subject: "dirigent.tasks.a".into(),
            worker: None,
            round: 0,
            seq: 1,
            base: None,
        };
        let retried = FleetPart::Retry { round: 1 };
        let taken = FleetPart::Taken {
            key: "n.t".into(),
            won: None,
            edit: None,
        };
        let plain = Needs::default();
        let edits = Needs {
            worktree: true,
            ..Needs::default()
        };
        let waits = Needs {
            after: true,
            ..Needs::default()
        };
        let run = Needs {
            run: true,
            ..Needs::default()
        };
        let step = Needs {
            worktree: true,
            merged_here: true,
            ..Needs::default()
        };
        // (in a fleet, editing tasks travel, part, needs, where it goes)
        let cases: &[(bool, bool, Option<&FleetPart>, Needs, Placement)] = &[
            (false, false, None, plain, Placement::Here),
            (false, true, None, edits, Placement::Here),
            (true, false, None, plain, Placement::Publish),
            (true, false, None, edits, Placement::Here),
            (true, true, None, edits, Placement::Publish),
            (true, true, None, waits, Placement::Here),
            (true, false, None, waits, Placement::Here),
            (true, true, None, run, Placement::Here),
            (true, true, None, step, Placement::Here),
            (
                true,
                false,
                Some(&published),
                plain,
                Placement::AwaitOutcome,
            ),
            (
                true,
                false,
                Some(&published),
                edits,
                Placement::AwaitOutcome,
            ),
            (false, false, Some(&published), plain, Placement::Here),
            (true, false, Some(&taken), plain, Placement::HandBack),
            (false, false, Some(&taken), plain, Placement::HandBack),
            (true, false, Some(&retried), plain, Placement::Publish),
            (false, false, Some(&retried), plain, Placement::Here),
        ];
        for (fleet, travel, part, needs, want) in cases {
            assert_eq!(
                placement(*fleet, *travel, *part, *needs),
                *want,
                "fleet {fleet}, edits travel {travel}, part {part:?}, needs {needs:?}: expected {want:?}"
            );
        }
    }
}
