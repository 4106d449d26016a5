//! A task's worktree: put on its branch and base, what an attempt changed there (diff, stat,
//! patch), its commit, and the replay of its branch onto a moved target. Every command names
//! the tree's recorded git directory, after checking the tree is still where it was made.

use super::*;

impl Tree {
    /// The commit the tree's `HEAD` points at.
    pub fn head(&self) -> Result<String, GitError> {
        Ok(in_tree(self, ["rev-parse", "--verify", "HEAD^{commit}"])?
            .trim()
            .to_string())
    }

    /// What the tree changed against `base` (commits the agent made included), untracked files
    /// too.
    pub fn diff_stat(&self, base: &str) -> Result<DiffStat, GitError> {
        stage_all(self)?;
        let numstat = in_tree(self, ["diff", "--cached", "--numstat", base])?;
        let mut stat = DiffStat::default();
        for line in numstat.lines() {
            let mut parts = line.split('\t');
            let (Some(added), Some(removed)) = (parts.next(), parts.next()) else {
                continue;
            };
            stat.files += 1;
            // `-` for binary files: they count as a file, not as lines.
            stat.insertions += added.parse::<u64>().unwrap_or(0);
            stat.deletions += removed.parse::<u64>().unwrap_or(0);
        }
        Ok(stat)
    }

    /// Everything the tree changed against `base` as a binary-safe patch (untracked files
    /// included), for the human and for the next agent.
    pub fn patch(&self, base: &str) -> Result<String, GitError> {
        stage_all(self)?;
        in_tree(self, ["diff", "--cached", "--binary", base])
    }

    /// Readies a pooled tree for another task: a new branch `branch` at `base`, checked out by
    /// force, and every file git does not track removed — ignored ones too, so nothing one
    /// task's agent left there reaches the next task. Measured with `scripts/bench/worktrees`,
    /// this is tens of milliseconds where making a worktree of a large repository afresh takes
    /// seconds.
    pub fn reuse(&self, branch: &str, base: &str) -> Result<(), GitError> {
        self.abort_rebase()?;
        {
            // Only the checkout looks at the other worktrees (is the branch used elsewhere?).
            let _admin = admin();
            in_tree(self, ["checkout", "--quiet", "--force", "-B", branch, base])?;
        }
        in_tree(self, ["clean", "--quiet", "-ffdx"]).map(drop)
    }

    /// Gives the tree back to the pool: its head detached (so its branch can go) and every file
    /// git does not track removed.
    /// (Its files stay until [`Tree::reuse`] checks the next task's base out and cleans: that
    /// is one pass over the tree instead of two.)
    pub fn release(&self) -> Result<(), GitError> {
        let _admin = admin();
        self.abort_rebase()?;
        if self.git_dir.join("MERGE_HEAD").exists() {
            in_tree(self, ["merge", "--abort"])?;
        }
        let head = self.head()?;
        in_tree(self, ["update-ref", "--no-deref", "HEAD", &head]).map(drop)
    }

    /// Whether git ignores `rel` (a path inside the tree): a tracked path is not ignored.
    pub fn is_ignored(&self, rel: &str) -> Result<bool, GitError> {
        match in_tree(self, ["check-ignore", "--quiet", "--", rel]) {
            Ok(_) => Ok(true),
            Err(GitError::Failed { status, .. }) if status == "exit status: 1" => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the tree is a worktree git knows, with a git directory of its own.
    pub fn is_usable(&self) -> bool {
        self.git_dir.join("HEAD").is_file()
            && in_tree(self, ["rev-parse", "--verify", "HEAD"]).is_ok()
    }

    /// Puts the tree (and its branch) back to `base`: tracked changes, commits and untracked
    /// files are discarded; ignored files (a copied `.env`, a linked `node_modules`) stay. A
    /// rebase left half-done by a crash is abandoned first.
    pub fn reset_to(&self, base: &str) -> Result<(), GitError> {
        self.abort_rebase()?;
        in_tree(self, ["reset", "--quiet", "--hard", base])?;
        in_tree(self, ["clean", "--quiet", "-fd"]).map(drop)
    }

    /// Applies a patch made by [`Tree::patch`].
    pub fn apply(&self, patch_file: &Path) -> Result<(), GitError> {
        in_tree(
            self,
            [
                OsStr::new("apply"),
                OsStr::new("--whitespace=nowarn"),
                patch_file.as_os_str(),
            ],
        )
        .map(drop)
    }

    /// Puts the tree's `HEAD` back on `branch` if the agent switched it elsewhere (keeping the
    /// files as they are), so dirigent commits on the task's branch and nowhere else.
    pub fn ensure_on(&self, branch: &str) -> Result<(), GitError> {
        let _admin = admin();
        let want = format!("refs/heads/{branch}");
        let head = in_tree(self, ["symbolic-ref", "--quiet", "HEAD"]).unwrap_or_default();
        if head.trim() != want {
            in_tree(self, ["symbolic-ref", "HEAD", &want])?;
        }
        Ok(())
    }

    /// Commits everything in the tree on its branch — after any commits the agent made itself —
    /// with `title` and the trailers `Dirigent-Task:` and `Dirigent-Agent:`. Returns the new
    /// head, or `None` when there was nothing to commit.
    pub fn commit_all(
        &self,
        title: &str,
        task: &str,
        agent: &str,
    ) -> Result<Option<String>, GitError> {
        stage_all(self)?;
        self.commit_staged(title, task, agent)
    }

    /// [`Tree::commit_all`] of what is staged already ([`Tree::diff_stat`] stages everything):
    /// one pass over the tree fewer.
    pub fn commit_staged(
        &self,
        title: &str,
        task: &str,
        agent: &str,
    ) -> Result<Option<String>, GitError> {
        if in_tree(self, ["diff", "--cached", "--quiet"]).is_ok() {
            return Ok(None);
        }
        let message = format!("{title}\n\nDirigent-Task: {task}\nDirigent-Agent: {agent}\n");
        let mut args = identity_in(self);
        args.extend(["commit", "--quiet", "--no-verify", "-m", &message].map(String::from));
        in_tree(self, &args)?;
        self.head().map(Some)
    }

    /// Replays the tree's branch on `onto` (a `git rebase` in the tree). On a conflict the
    /// rebase is abandoned — the branch is as it was — and the conflict returned.
    pub fn rebase_onto(&self, onto: &str) -> Result<Result<(), Conflict>, GitError> {
        let mut args = identity_in(self);
        args.extend(["rebase", "--quiet", "--no-autostash", onto].map(String::from));
        match in_tree(self, &args) {
            Ok(_) => Ok(Ok(())),
            Err(GitError::Failed { exhausted, .. }) => {
                let files: Vec<String> =
                    in_tree(self, ["diff", "--name-only", "-z", "--diff-filter=U"])
                        .unwrap_or_default()
                        .split('\0')
                        .filter(|n| !n.is_empty())
                        .map(str::to_string)
                        .collect();
                let mut hunks = String::new();
                for f in &files {
                    // The commits are the agent's: a "file" may be a link to a FIFO.
                    if let Ok(bytes) =
                        crate::fsutil::read_small_nofollow(&self.path.join(f), 8 << 20)
                    {
                        hunks.push_str(&conflict_regions(f, &String::from_utf8_lossy(&bytes)));
                    }
                }
                self.abort_rebase()?;
                if files.is_empty() {
                    // Not a conflict: git failed for another reason (a lock, a broken tree).
                    return Err(GitError::Failed {
                        args: format!("rebase {onto}"),
                        status: "no conflicting file".into(),
                        stderr: "the rebase stopped without a conflict".into(),
                        exhausted,
                    });
                }
                Ok(Err(Conflict {
                    files,
                    hunks: bounded(hunks),
                }))
            }
            Err(e) => Err(e),
        }
    }

    /// Starts merging `target` into the tree's branch and leaves the conflicts in the files for
    /// an agent to resolve (nothing is committed). A merge left from before is abandoned first.
    pub fn start_merge(&self, target: &str) -> Result<(), GitError> {
        self.abort_rebase()?;
        if self.git_dir.join("MERGE_HEAD").exists() {
            in_tree(self, ["merge", "--abort"])?;
        }
        let mut args = identity_in(self);
        args.extend(
            [
                "merge",
                "--quiet",
                "--no-ff",
                "--no-commit",
                "--no-edit",
                target,
            ]
            .map(String::from),
        );
        match in_tree(self, &args) {
            Ok(_) => Ok(()),
            // Stopped at its conflicts: what is wanted.
            Err(GitError::Failed { .. }) if self.git_dir.join("MERGE_HEAD").exists() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// What in the tree's work (staged, against `base`) git may not merge into a user's
    /// checkout: a history that no longer holds `base` (a reset or rebase below it, which a diff
    /// would show as deletions the merge would not make); a change to `context` (dirigent's own
    /// `.context/`, or a file or link of that name); and new files the user's checkout (`repo`)
    /// ignores — a force-added `.env` — because a fast-forward overwrites ignored files without
    /// asking. `None` when the work is clean.
    pub fn unmergeable(
        &self,
        repo: &Repo,
        base: &str,
        context: &str,
    ) -> Result<Option<String>, GitError> {
        if in_tree(self, ["merge-base", "--is-ancestor", base, "HEAD"]).is_err() {
            return Ok(Some(
                "the agent moved its branch below its base (a reset or rebase): its work must build on the base".into(),
            ));
        }
        let names = in_tree(
            self,
            [
                "diff",
                "--cached",
                "--name-only",
                "-z",
                "--no-renames",
                base,
            ],
        )?;
        let own = names
            .split('\0')
            .find(|n| *n == context || n.starts_with(&format!("{context}/")));
        if let Some(path) = own {
            return Ok(Some(format!(
                "the work changes `{path}`, inside dirigent's own `.context/`: refused"
            )));
        }
        let added = in_tree(
            self,
            [
                "diff",
                "--cached",
                "--name-only",
                "-z",
                "--no-renames",
                "--diff-filter=A",
                base,
            ],
        )?;
        let added: Vec<&str> = added.split('\0').filter(|n| !n.is_empty()).collect();
        // A worker's cache of a fleet node's repository is bare: there is no checkout here
        // whose ignored files a merge could overwrite (the work goes back as a branch).
        if added.is_empty() || repo.is_bare() {
            return Ok(None);
        }
        // Asked of the user's checkout, with its own ignore rules: the tree's `.gitignore` is
        // the agent's to change.
        let args: Vec<String> = ["check-ignore", "--no-index", "--"]
            .into_iter()
            .map(str::to_string)
            .chain(added.iter().map(|s| s.to_string()))
            .collect();
        let out = run(&repo.top, &args)?;
        // 0: some are ignored, 1: none is; anything else is git failing, and refuses the work.
        match out.status.code() {
            Some(0) | Some(1) => {}
            _ => return Err(failed(&args, &out)),
        }
        let ignored: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|n| !n.is_empty())
            .map(|n| format!("`{n}`"))
            .collect();
        Ok((!ignored.is_empty()).then(|| {
            format!(
                "the work adds files your checkout ignores ({}), which a merge would write over your own: refused",
                ignored.join(", ")
            )
        }))
    }

    /// Removes the untracked files of the tree that only the work's own ignore rules hide (a
    /// `.gitignore` the agent added or changed): the user's checkout would not ignore them and
    /// the commit does not hold them, so a `verify` that found them would pass on work that
    /// fails once merged. What the user's checkout ignores too — build output, installed
    /// dependencies, local settings — stays, so a check need not rebuild what the attempt
    /// built. Returns what was removed (a directory as `dir/`). A fleet worker's bare cache has
    /// no checkout to ask, and removes nothing.
    pub fn drop_hidden_by_work(&self, repo: &Repo) -> Result<Vec<String>, GitError> {
        if repo.is_bare() {
            return Ok(Vec::new());
        }
        let listed = in_tree(
            self,
            [
                "ls-files",
                "-z",
                "--others",
                "--ignored",
                "--exclude-standard",
                "--directory",
            ],
        )?;
        let listed: Vec<&str> = listed.split('\0').filter(|n| !n.is_empty()).collect();
        // A directory shown whole can be shown with files of its own too: each path once.
        let dirs: std::collections::HashSet<&str> = listed
            .iter()
            .copied()
            .filter(|n| n.ends_with('/'))
            .collect();
        let ignored: Vec<&str> = listed
            .iter()
            .copied()
            .filter(|n| {
                !n.trim_end_matches('/')
                    .match_indices('/')
                    .any(|(at, _)| dirs.contains(&n[..=at]))
            })
            .collect();
        let mut hidden = Vec::new();
        // In chunks: a command line has a length limit, and an agent chooses how many.
        for chunk in ignored.chunks(256) {
            // Each as `./name`: a name starting `:(` would be read as pathspec magic.
            let args: Vec<String> = ["check-ignore", "--no-index", "--"]
                .into_iter()
                .map(str::to_string)
                .chain(chunk.iter().map(|n| format!("./{n}")))
                .collect();
            let out = run(&repo.top, &args)?;
            // 0: some are ignored, 1: none is; anything else is git failing.
            match out.status.code() {
                Some(0) | Some(1) => {}
                _ => return Err(failed(&args, &out)),
            }
            let also: std::collections::HashSet<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| {
                    let name = unquote_path(l);
                    name.strip_prefix("./").map(str::to_string).unwrap_or(name)
                })
                .collect();
            hidden.extend(
                chunk
                    .iter()
                    .filter(|n| !also.contains(**n))
                    .map(|n| n.to_string()),
            );
        }
        for chunk in hidden.chunks(256) {
            // `-X`: only what the tree's rules ignore — each of these is — and `-ff` also
            // takes a repository the agent made inside one.
            let args: Vec<&str> = [
                "--literal-pathspecs",
                "clean",
                "-q",
                "-ff",
                "-d",
                "-X",
                "--",
            ]
            .into_iter()
            .chain(chunk.iter().map(String::as_str))
            .collect();
            in_tree(self, &args)?;
        }
        Ok(hidden)
    }

    /// Writes the tree's `.git` file again, naming its recorded git directory: an agent may have
    /// pointed it at another repository (the user's own), and the next agent's `git commit`
    /// would land there.
    pub fn restore_dot_git(&self) -> Result<(), GitError> {
        self.check_in_place()?;
        let dot_git = self.path.join(".git");
        let want = format!("gitdir: {}\n", self.git_dir.display());
        // Read only as what it should be: a small regular file, no link followed, never
        // waiting (a FIFO there would block the reader for good).
        let meta = std::fs::symlink_metadata(&dot_git);
        if let Ok(m) = &meta
            && m.is_file()
            && m.len() == want.len() as u64
            && crate::fsutil::read_small_nofollow(&dot_git, want.len())
                .ok()
                .as_deref()
                == Some(want.as_bytes())
        {
            return Ok(());
        }
        match meta {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&dot_git).map_err(GitError::Io)?,
            Ok(_) => std::fs::remove_file(&dot_git).map_err(GitError::Io)?,
            Err(_) => {}
        }
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&dot_git)
            .and_then(|mut f| f.write_all(want.as_bytes()))
            .map_err(GitError::Io)
    }

    /// Whether the tree is still a directory of its own where it was made — not a link (nor
    /// its parent, `.context/worktrees`): every git command and file written in the tree
    /// would otherwise act on whatever the link names (`checkout --force` and `clean -ffdx`
    /// wipe it).
    pub fn check_in_place(&self) -> Result<(), GitError> {
        let displaced = |why| GitError::Displaced {
            path: self.path.clone(),
            why,
        };
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_symlink() => return Err(displaced("it is a link")),
            Ok(m) if !m.is_dir() => return Err(displaced("it is not a directory")),
            Ok(_) => {}
            // Gone: git says so in its own words.
            Err(_) => return Ok(()),
        }
        if let Some(parent) = self.path.parent()
            && std::fs::symlink_metadata(parent).is_ok_and(|m| !m.is_dir())
        {
            return Err(displaced("the directory it is in is a link"));
        }
        Ok(())
    }

    /// Abandons a rebase in progress in the tree, if there is one.
    pub fn abort_rebase(&self) -> Result<(), GitError> {
        let merge_dir = self.git_dir.join("rebase-merge");
        let apply_dir = self.git_dir.join("rebase-apply");
        if merge_dir.exists() || apply_dir.exists() {
            in_tree(self, ["rebase", "--abort"])?;
        }
        Ok(())
    }

    /// Takes the last commits back off the tree's branch down to `to`, keeping their changes
    /// staged: work that failed its check is not left in the branch's history.
    pub fn uncommit(&self, to: &str) -> Result<(), GitError> {
        in_tree(self, ["reset", "--quiet", "--soft", to]).map(drop)
    }

    /// Paths a command changed in the tree: tracked files changed, and untracked files git does
    /// not ignore.
    pub fn changed_paths(&self) -> Result<Vec<String>, GitError> {
        let out = in_tree(
            self,
            ["status", "--porcelain", "-z", "--untracked-files=all"],
        )?;
        Ok(out
            .split('\0')
            .filter(|l| l.len() > 3)
            .map(|l| l[3..].to_string())
            .collect())
    }

    /// Moves the tree's branch (and its files) to `commit`.
    pub fn move_to(&self, commit: &str) -> Result<(), GitError> {
        if self.head()? == commit && self.is_clean_tree()? {
            return Ok(());
        }
        in_tree(self, ["reset", "--quiet", "--hard", commit]).map(drop)
    }

    /// Whether nothing is staged or changed in the tree against its `HEAD` (untracked files
    /// aside).
    fn is_clean_tree(&self) -> Result<bool, GitError> {
        Ok(in_tree(self, ["diff-index", "--quiet", "HEAD", "--"]).is_ok())
    }
}
