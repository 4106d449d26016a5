//! Daemon assembly: prepares and locks the workspace, loads the config and the ledger, starts
//! the doors (control socket, HTTP), runs the engine's event loop until the `shutdown` future
//! resolves, and stops gracefully. [`run`] is the in-process entry point tests use.

use super::*;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot prepare the workspace `{path}`: {cause}")]
    Workspace { path: String, cause: std::io::Error },
    #[error("another dirigent daemon (pid {pid}) is already running on `{root}`; stop it first")]
    Locked { pid: String, root: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    NotPrivate(#[from] crate::workspace::NotPrivate),
    #[error(transparent)]
    Key(#[from] crate::integrity::KeyError),
    #[error("cannot serve the HTTP API on `{addr}`: {cause}")]
    Http { addr: String, cause: std::io::Error },
    #[error("cannot watch the inbox `{path}`: {cause}")]
    Watch { path: String, cause: notify::Error },
    /// `.context/` was replaced, or opened to others, while the daemon ran.
    #[error("{0}")]
    ContextReplaced(String),
    /// A fleet credential that no retry can bring (a variable the environment lacks).
    #[error("{0}")]
    Fleet(String),
}

/// Runs the daemon on `ws` until `shutdown` resolves, then stops gracefully: no new claims,
/// running attempts are terminated (group, grace, kill) and recorded as interrupted, and their
/// task files go back into the inbox so they run again on the next start. The in-process entry
/// point (`tests/in_process.rs` uses it); the binary calls [`run_with_options`].
pub async fn run(
    ws: Workspace,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let (_keep, reload) = mpsc::unbounded_channel();
    run_with_options(ws, shutdown, reload, Options::default()).await
}

/// What the command line adds to the config.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Serve the HTTP API here (`--http`); overrides the config's `http:`.
    pub http: Option<std::net::SocketAddr>,
}

/// [`run`], plus a channel of reload requests (the binary forwards SIGHUP into it) and the
/// command-line [`Options`]. A change of `.context/dirigent.yaml` reloads too. A reload never
/// touches running attempts; an invalid config is refused with one log line and the previous
/// one stays in force.
pub async fn run_with_options(
    ws: Workspace,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut reload: mpsc::UnboundedReceiver<()>,
    options: Options,
) -> Result<(), DaemonError> {
    let ws_err = |cause: std::io::Error| DaemonError::Workspace {
        path: ws.root().display().to_string(),
        cause,
    };
    ws.ensure().map_err(ws_err)?;
    ws.check_private()?;
    let _lock = lock_workspace(&ws)?;
    crate::reaper::mark_helpers_with(ws.root());
    if !crate::reaper::become_subreaper() {
        tracing::debug!("not a child subreaper: processes that escape with setsid are not caught");
    }
    let (config, config_text) = Config::load_with_text(&ws.config())?;
    let config = Arc::new(config);
    // Bound before the ledger is touched: a taken port or a bad token stops the start cleanly.
    let http_addr = options.http.or(config.http);
    let http_bound = match http_addr {
        Some(addr) => {
            Some(
                crate::http::bind(&ws, addr)
                    .await
                    .map_err(|cause| DaemonError::Http {
                        addr: addr.to_string(),
                        cause,
                    })?,
            )
        }
        None => None,
    };

    // Records are sealed with a key kept outside the workspace, so that lines an agent appends
    // to the ledger are not believed (see `integrity`).
    let (mut key, key_is_new) = crate::integrity::load_or_create(&ws)?;
    let loaded = crate::compact::load(&ws, Some(keep_finished()), true, Some(&key), key_is_new)
        .map_err(ws_err)?;
    report_refused(&ws, &loaded);
    if loaded.reseal_snapshot
        && let Err(e) = crate::compact::reseal_snapshot(&ws, &key)
    {
        tracing::warn!("cannot seal the ledger snapshot with this workspace's key: {e}");
    }
    // From here on every record must carry this key's seal: a ledger stripped of its seals (or
    // with every seal garbled) is then forgery, not an older version's or a moved workspace's.
    if key.sealed_from().is_none() {
        let next = loaded.book.last_seq + 1;
        let from = match loaded.first_sealed {
            Some(first) if !loaded.another_key => first,
            _ => next,
        };
        if let Err(e) = crate::integrity::mark_sealed_from(&ws, &mut key, from) {
            tracing::warn!(
                "cannot mark from which record the ledger key seals everything (tried again at the next start): {e}"
            );
        }
    }
    if let Some(aside) = &loaded.torn {
        tracing::warn!(
            "the ledger ended in a torn or damaged line (a crash while writing); it was cut off and kept in `{}`",
            aside.display()
        );
    }
    if loaded.skipped > 0 {
        tracing::warn!(
            "{} line(s) in the middle of `{}` could not be read and were skipped (they stay in the file)",
            loaded.skipped,
            ws.ledger().display()
        );
    }
    let book = loaded.book;
    let live = LiveTasks::default();
    let compactor = crate::compact::Compactor::new(
        ws.clone(),
        keep_finished(),
        config.ledger_keep_segments,
        Some(key.clone()),
    )
    .with_live_tasks(live.counter());
    // Finish what a crash may have interrupted — or what waited for a big queue to drain, and
    // still waits while the queue it left is big.
    compactor.at_start(loaded.uncovered_segments, || {
        book.iter().filter(|t| !t.phase().is_terminal()).count()
    });
    let rotation = ledger::Rotation {
        segment_events: config.ledger_segment_events,
        current_events: loaded.current_events,
        on_rotate: Box::new({
            let compactor = compactor.clone();
            move || compactor.rotated()
        }),
    };
    let (ledger, writer) = Ledger::open_rotating(
        &ws.ledger(),
        book.last_seq,
        Some(rotation),
        Some(key.clone()),
    )?;

    let dirty = Arc::new(Notify::new());
    // Unbounded, and safely so: only the engine's own tasks send on it, each a fixed few
    // messages (an attempt's start and end, an evaluation, a settle), so what can be queued is
    // bounded by the tasks and attempts alive at once (`concurrency`).
    let (tx, rx) = mpsc::unbounded_channel();
    let notifier = crate::service::Notifier::from_env();
    // Fleet mode: the component that talks to the fleet's server, started before recovery so
    // that tasks found accepted but not yet published go to the queue.
    let fleet_agents = capabilities(&config, ws.root());
    let (fleet, fleet_running) = match &config.cluster {
        Some(cluster) => {
            // Retrying cannot make a variable appear in this process's environment: said now.
            if let crate::config::cluster::Auth::Token(crate::config::notify::Secret::Env(var)) =
                &cluster.auth
                && std::env::var(var).map_or(true, |v| v.is_empty())
            {
                return Err(DaemonError::Fleet(format!(
                    "`cluster.token_env: {var}` names a variable this daemon's environment does not have (or is empty); set it where the daemon starts (for a service: `Environment=` in its unit, or an `EnvironmentFile=`)"
                )));
            }
            let to_engine = tx.clone();
            let (link, running) = crate::fleet::start(
                cluster.clone(),
                ws.root().to_path_buf(),
                fleet_agents.clone(),
                config.concurrency,
                &ledger.live(),
                Arc::new(move |m| drop(to_engine.send(Msg::Fleet(m)))),
            );
            (Some(link), Some(running))
        }
        None => (None, None),
    };
    let mut engine = Engine {
        fleet,
        fleet_waiting: Vec::new(),
        fleet_agents,
        hand_backs: Vec::new(),
        starts_elsewhere: HashMap::new(),
        live,
        watchdog_due: notifier
            .as_ref()
            .and_then(|n| n.watchdog_every)
            .map(|every| later(Instant::now(), every)),
        notifier,
        dirty: dirty.clone(),
        ws: ws.clone(),
        running_text: config_text.clone(),
        config_text,
        config_watch: watch::channel(config.clone()).0,
        config,
        ledger,
        book,
        slots: HashMap::new(),
        start_log: HashMap::new(),
        best_routed: 0,
        repo: None,
        merges: Default::default(),
        kept_trees: Vec::new(),
        discarding: HashSet::new(),
        tree_pool: Vec::new(),
        trees_leaving: HashSet::new(),
        next_slot: 0,
        tx,
        rx,
        tasks: JoinSet::new(),
        side_stop: watch::channel(false).0,
        evaluators: 0,
        accepting: true,
        ledger_failed: None,
        paused: None,
        held: Vec::new(),
        pause_backoff: PAUSE_FIRST,
        last_resume: None,
        claims_left: false,
        inbox_backlog: Default::default(),
        intake_held: None,
        held_scan_at: None,
        compactor,
        reserved: HashMap::new(),
        named_ahead: HashSet::new(),
        sent_children: HashMap::new(),
        merge_answer_owed: HashSet::new(),
        sent_hasher: Default::default(),
        progress_due: None,
        progress_cost: Duration::ZERO,
        settled_since_trim: 0,
        stagger_due: None,
        rescan_due: Instant::now(),
        // The first look soon after the start: a daemon restarted daily still prunes.
        prune_due: Instant::now(),
        context_id: ws.context_id(),
        stop_self: None,
        pruning: false,
    };
    // The daemon before was alive at least until its last record: an attempt it left open ran
    // until then.
    let last_heard_ms = engine.book.last_ts;
    let started = engine
        .ledger
        .append(Event::DaemonStarted {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
        })
        .await?;
    engine.book.apply(&started);
    engine.named_ahead = engine
        .book
        .iter()
        .filter(|t| !t.phase().is_terminal())
        .flat_map(|t| t.more().after.iter())
        .filter(|dep| !engine.book.contains(dep))
        .cloned()
        .collect();
    engine.recover(last_heard_ms).await?;
    engine.take_fleet_messages().await;

    // The doors' requests: every door holds an `Api` with a sender; the receiver is dropped
    // when the loop ends, which answers what is still queued with "shutting down".
    let (ctrl_tx, mut ctrl_rx) = mpsc::channel(crate::api::DOOR_REQUESTS);
    // Flipped when the daemon begins to stop, so long waits and event streams end.
    let (stopping_tx, stopping) = watch::channel(false);
    // How many records the engine's book has applied: doors waiting for a task's end re-read
    // it when this moves (the ledger's live records arrive before the engine has applied them).
    let (applied_tx, applied) = watch::channel(engine.book.applied);
    let api = crate::api::Api::new(
        ws.clone(),
        ctrl_tx,
        &engine.ledger,
        applied,
        stopping.clone(),
        Some(key),
    )
    .with_fleet(engine.fleet.as_ref().map(|link| link.conn.clone()));
    let control =
        crate::control::serve(&ws, api.clone()).map_err(|cause| DaemonError::Workspace {
            path: crate::control::socket_path(&ws).display().to_string(),
            cause,
        })?;
    let http = match (http_bound, http_addr) {
        (Some(bound), Some(addr)) => Some(crate::http::serve(bound, api.clone()).map_err(
            |cause| DaemonError::Http {
                addr: addr.to_string(),
                cause,
            },
        )?),
        _ => None,
    };
    drop(api);
    let records = engine.tx.clone();
    let _notifier = crate::notifications::start(
        ws.clone(),
        engine.config_watch.subscribe(),
        engine.ledger.live().subscribe(),
        engine.ledger.clone(),
        Arc::new(move |r| drop(records.send(Msg::Recorded(r)))),
        stopping,
    );
    let config_changed = Arc::new(Notify::new());
    let config_path = ws.config();
    let mut watcher = inbox::watch_with_config(
        &ws.inbox(),
        dirty.clone(),
        Some((&config_path, config_changed.clone())),
    )
    .map_err(|cause| DaemonError::Watch {
        path: ws.inbox().display().to_string(),
        cause,
    })?;
    // The configuration again, now that its watcher is up: a change made since it was first
    // read (a moment ago) would otherwise wait for the next one. Unchanged text is a no-op.
    engine.reload("file", false).await;
    // The first scan after the watcher is up: nothing dropped in between is missed.
    engine.ingest().await;
    engine.rescan_due = later(Instant::now(), engine.config.inbox_rescan);
    engine.advance_runs().await;
    engine.dispatch();
    engine.write_progress();
    tracing::info!(
        root = %ws.root().display(),
        config = %engine.config.source,
        concurrency = engine.config.concurrency,
        "dirigent is running"
    );
    engine.notify(&format!("READY=1\nSTATUS={}", engine.status_line()));

    // The stop is watched by a task of its own: if the loop is waiting on a ledger write that
    // is paused (the disk is full), the writer is told to give up, so a stop is never stuck.
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let give_up = engine.ledger.give_up_handle();
    tokio::spawn(async move {
        shutdown.await;
        give_up.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = stop_tx.send(true);
    });
    let mut was_idle = true;
    loop {
        let wake = engine.next_wake();
        tokio::select! {
            biased;
            _ = stop_rx.wait_for(|s| *s) => break,
            msg = engine.rx.recv() => {
                // The engine holds a sender itself, so the channel never closes here.
                if let Some(msg) = msg {
                    engine.handle(msg);
                }
            }
            // Doors before the inbox: a backlog of thousands of files re-arms `dirty` after each
            // batch, and `status` or `cancel` must still be answered meanwhile.
            Some(req) = ctrl_rx.recv() => {
                // Settle what attempts have already reported before answering: a client that
                // saw a task's end in the ledger and asks at once must not be told it runs.
                while let Ok(msg) = engine.rx.try_recv() {
                    engine.handle(msg);
                }
                let answer = engine.control(req.request).await;
                let _ = req.reply.send(answer);
            }
            () = dirty.notified() => engine.ingest().await,
            () = watcher.replaced.notified() => {
                watcher.rewatch();
                engine.ingest().await;
            }
            () = config_changed.notified() => engine.reload("file", false).await,
            Some(()) = reload.recv() => engine.reload("SIGHUP", true).await,
            () = sleep_until(wake) => engine.on_timer().await,
        }
        if engine.stop_self.is_some() {
            break;
        }
        engine.take_fleet_messages().await;
        engine.advance_runs().await;
        engine.dispatch();
        if *applied_tx.borrow() != engine.book.applied {
            applied_tx.send_replace(engine.book.applied);
        }
        // Going idle after work: hand the memory a burst used back to the system.
        let idle = engine.live.is_idle();
        if idle && !was_idle {
            release_free_memory();
        }
        was_idle = idle;
    }
    drop(watcher);
    let _ = stopping_tx.send(true);
    drop(ctrl_rx);
    control.abort();
    let _ = std::fs::remove_file(crate::control::socket_path(&ws));
    // The HTTP door closes (waiting a moment for its requests in flight) while the attempts
    // are being stopped, not before: an idle client must not hold the stop up.
    let http_closed = async {
        if let Some(http) = http {
            http.stop().await;
        }
    };
    engine.notify("STOPPING=1\nSTATUS=stopping: terminating running attempts");
    tracing::info!("shutting down: stopping running attempts");
    tokio::join!(http_closed, engine.shutdown());
    // Nothing of ours runs any more (or it was cut off): what it left behind goes, and the
    // zombies are reaped.
    let escaped = tokio::task::spawn_blocking(crate::reaper::sweep_all_adopted)
        .await
        .unwrap_or(0);
    if escaped > 0 {
        tracing::warn!("killed {escaped} process(es) that escaped their attempt or command");
    }
    let Engine {
        ledger,
        fleet,
        stop_self: stopped_because,
        ..
    } = engine;
    // The fleet component hands back what it still holds once the engine lets go of it.
    drop(fleet);
    if let Some(running) = fleet_running {
        running.join().await;
    }
    drop(ledger);
    writer.join();
    match stopped_because {
        Some(why) => Err(DaemonError::ContextReplaced(why)),
        None => Ok(()),
    }
}

/// The agents this node offers the fleet: those configured whose program is installed.
pub(super) fn capabilities(config: &Config, root: &std::path::Path) -> Vec<String> {
    config
        .agents
        .iter()
        .filter(|(_, agent)| agent.resolve(root).is_some())
        .map(|(name, _)| name.clone())
        .collect()
}

/// Says in the log which ledger lines were not believed, and why; and which were taken away.
fn report_refused(ws: &Workspace, loaded: &crate::compact::Loaded) {
    for (first, last) in &loaded.missing {
        let which = if first == last {
            format!("record {first} is")
        } else {
            format!("records {first}–{last} are")
        };
        tracing::error!(
            "{which} missing from the ledger `{}`: the lines were removed (an agent?) — what they recorded is not known, so a task they ended may run again, or show an earlier state",
            ws.ledger().display()
        );
    }
    if loaded.another_key {
        tracing::warn!(
            "no record of the ledger carries this workspace's seal (was the workspace copied or moved, or `{}` replaced?); its records were believed as written and are sealed from now on",
            crate::integrity::key_path(ws).display()
        );
        return;
    }
    if loaded.refused_count == 0 {
        return;
    }
    tracing::warn!(
        "{} line(s) of the ledger were not written by dirigent (or were altered) and are ignored; they stay in the files. An agent may have written them",
        loaded.refused_count
    );
    for r in loaded.refused.iter().take(10) {
        tracing::warn!("ignored: {r}");
    }
    if loaded.first_sealed.is_none() {
        tracing::warn!(
            "no line verifies under this workspace's key: if you copied another workspace's `.context/` over this one, remove `{}.from` and start again to take its records as written",
            crate::integrity::key_path(ws).display()
        );
    }
}

/// The pid the lock file names (at most a few bytes of it are read), or `unknown`.
fn lock_holder(ws: &Workspace) -> String {
    crate::fsutil::read_small_nofollow(&ws.lock(), 32)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| "unknown".into())
}

/// Held for the daemon's life: the lock file (it names the pid) and the workspace directory
/// itself. An agent can remove the file, or move `.context/` away, and a second daemon would
/// then have come in; it cannot move the workspace it works in from under the daemon.
struct WorkspaceLock {
    _file: nix::fcntl::Flock<std::fs::File>,
    _dir: nix::fcntl::Flock<std::fs::File>,
}

/// Locks the workspace directory itself (shared: to look; exclusive: to be its daemon). The
/// root is the user's choice: a link there is followed, as everywhere.
fn lock_workspace_dir(
    ws: &Workspace,
    how: nix::fcntl::FlockArg,
) -> Result<nix::fcntl::Flock<std::fs::File>, (Option<std::fs::File>, nix::errno::Errno)> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY)
        .open(ws.root())
        .map_err(|e| {
            (
                None,
                nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            )
        })?;
    nix::fcntl::Flock::lock(dir, how).map_err(|(f, e)| (Some(f), e))
}

fn lock_workspace(ws: &Workspace) -> Result<WorkspaceLock, DaemonError> {
    use std::io::Write;
    let path = ws.lock();
    let io = |cause| DaemonError::Workspace {
        path: path.display().to_string(),
        cause,
    };
    // Never through a link an agent planted: the lock file is truncated and written.
    let open = || {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(&path)
    };
    let file = match open() {
        Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => f,
        // A FIFO or a directory in its place: moved aside (it is no lock of a daemon's), and
        // the file made again.
        Ok(_) | Err(_) if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) => {
            let aside =
                path.with_file_name(format!("daemon.lock.displaced-{}", crate::ledger::now_ms()));
            std::fs::rename(&path, &aside).map_err(io)?;
            tracing::warn!(
                "`{}` was not a regular file (an agent may have put it there): moved aside to `{}`",
                path.display(),
                aside.display()
            );
            open().map_err(io)?
        }
        other => other.map_err(io)?,
    };
    // It is truncated and written: never as another name of some other file.
    crate::ledger::only_name(&file, &path).map_err(io)?;
    // A daemon killed a moment ago can leave the lock held for a few milliseconds by a child
    // it had forked and that had not yet exec'd (the lock's descriptor closes at the exec):
    // while the daemon named in the file is dead, the lock is asked for again, briefly.
    let mut file = file;
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                let dir = match lock_workspace_dir(ws, nix::fcntl::FlockArg::LockExclusiveNonblock)
                {
                    Ok(dir) => dir,
                    // The file was removed under a running daemon, which holds the directory
                    // — or, for a few milliseconds, a child of a daemon just killed does.
                    Err((_, nix::errno::Errno::EWOULDBLOCK))
                        if std::time::Instant::now() < give_up =>
                    {
                        file = lock
                            .unlock()
                            .map_err(|(_, e)| io(std::io::Error::from(e)))?;
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        continue;
                    }
                    Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                        return Err(DaemonError::Locked {
                            pid: "unknown: its lock file was removed".into(),
                            root: ws.root().display().to_string(),
                        });
                    }
                    Err((_, e)) => return Err(io(std::io::Error::from(e))),
                };
                lock.set_len(0).map_err(io)?;
                writeln!(lock, "{}", std::process::id()).map_err(io)?;
                return Ok(WorkspaceLock {
                    _file: lock,
                    _dir: dir,
                });
            }
            Err((back, nix::errno::Errno::EWOULDBLOCK)) => {
                let pid = lock_holder(ws);
                let holder_gone = pid.parse::<i32>().is_ok_and(|p| {
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None)
                        == Err(nix::errno::Errno::ESRCH)
                });
                if holder_gone && std::time::Instant::now() < give_up {
                    file = back;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                }
                return Err(DaemonError::Locked {
                    pid,
                    root: ws.root().display().to_string(),
                });
            }
            Err((_, e)) => return Err(io(std::io::Error::from(e))),
        }
    }
}

/// The pid of the daemon running on `ws`, if one holds the workspace lock.
pub fn running_daemon(ws: &Workspace) -> Option<String> {
    // Opened as the daemon left it, a small regular file: a FIFO or a sparse giant an agent put
    // in its place would hang or flood every command that asks.
    let by_file =
        crate::fsutil::open_nofollow(&ws.lock()).ok().and_then(
            |file| match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => Some(lock_holder(ws)),
                _ => None,
            },
        );
    // A daemon whose lock file was removed (or `.context/` moved) still holds the workspace.
    by_file.or_else(
        || match lock_workspace_dir(ws, nix::fcntl::FlockArg::LockSharedNonblock) {
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Some("unknown".into()),
            _ => None,
        },
    )
}
