//! Per-instance state directories (`isolate: true` on an agent), so CLIs that run at the same
//! time cannot corrupt each other's config and session files. Each concurrent instance of an
//! agent gets its own directory, `.context/isolation/<agent>/<n>/`, which the CLI is pointed at
//! through the variable it honours, and which is seeded from the user's real config: the
//! credentials and settings are copied in (mode 0600), and copied again whenever the user's
//! file is newer (a fresh login reaches every instance).
//!
//! | CLI | variable | copied from `$HOME` |
//! |---|---|---|
//! | claude | `CLAUDE_CONFIG_DIR=<dir>` | `.claude/.credentials.json`, `.claude/settings.json`, `.claude.json` |
//! | gemini | `GEMINI_CLI_HOME=<dir>` | `.gemini/oauth_creds.json`, `.gemini/settings.json`, `.gemini/google_accounts.json` |
//! | codex | `CODEX_HOME=<dir>` | `.codex/auth.json`, `.codex/config.toml` |
//! | opencode | `XDG_DATA_HOME=<dir>` | `.local/share/opencode/auth.json` |
//!
//! Copies rather than links: the CLIs rewrite these files (token refreshes, settings), and a
//! shared file is exactly what isolation avoids. The trade-off is in docs/providers.md.

use std::path::{Path, PathBuf};

/// How one preset is isolated: the variable, and the files seeded (relative to `$HOME` → the
/// instance directory).
pub struct Recipe {
    pub var: &'static str,
    pub files: &'static [(&'static str, &'static str)],
}

/// The recipe for a preset, if it can be isolated.
pub fn recipe(preset: &str) -> Option<&'static Recipe> {
    static CLAUDE: Recipe = Recipe {
        var: "CLAUDE_CONFIG_DIR",
        files: &[
            (".claude/.credentials.json", ".credentials.json"),
            (".claude/settings.json", "settings.json"),
            (".claude.json", ".claude.json"),
        ],
    };
    static GEMINI: Recipe = Recipe {
        var: "GEMINI_CLI_HOME",
        files: &[
            (".gemini/oauth_creds.json", ".gemini/oauth_creds.json"),
            (".gemini/settings.json", ".gemini/settings.json"),
            (
                ".gemini/google_accounts.json",
                ".gemini/google_accounts.json",
            ),
        ],
    };
    static CODEX: Recipe = Recipe {
        var: "CODEX_HOME",
        files: &[
            (".codex/auth.json", "auth.json"),
            (".codex/config.toml", "config.toml"),
        ],
    };
    static OPENCODE: Recipe = Recipe {
        var: "XDG_DATA_HOME",
        files: &[(".local/share/opencode/auth.json", "opencode/auth.json")],
    };
    match preset {
        "claude" => Some(&CLAUDE),
        "gemini" => Some(&GEMINI),
        "codex" => Some(&CODEX),
        "opencode" => Some(&OPENCODE),
        _ => None,
    }
}

/// Prepares instance `n` of `agent` under `context` and returns the variable to set. Missing
/// source files are skipped (the CLI then reports it is not logged in, which is judged `auth`).
pub fn prepare(
    context: &Path,
    agent: &str,
    n: usize,
    recipe: &Recipe,
    home: Option<&Path>,
) -> std::io::Result<(String, PathBuf)> {
    let name = agent.replace(':', "_");
    let dir = context.join("isolation").join(&name).join(n.to_string());
    // Every directory on the way is opened without following a link (an agent could plant one
    // to have the credentials copied somewhere else), and the copies are made 0600 from the
    // start.
    let instance = crate::confined::Dir::open(context)?.descend(
        &["isolation", name.as_str(), n.to_string().as_str()],
        Some(0o700),
    )?;
    if let Some(home) = home {
        for (from, to) in recipe.files {
            let src = home.join(from);
            let Ok(src_meta) = std::fs::metadata(&src) else {
                continue;
            };
            let to = crate::confined::RelPath::parse("isolation", to)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let parent = instance.descend(to.parents(), Some(0o700))?;
            let fresh = parent
                .modified(to.file_name())
                .zip(src_meta.modified().ok())
                .is_some_and(|(d, s)| d >= s);
            if fresh {
                continue;
            }
            let mut from_file = std::fs::File::open(&src)?;
            parent.copy_atomic(to.file_name(), &mut from_file, 0o600)?;
        }
    }
    Ok((recipe.var.to_string(), dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_is_seeded_from_home_and_refreshed_when_home_changes() {
        let home = tempfile::tempdir().unwrap();
        let ctx = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".codex")).unwrap();
        std::fs::write(home.path().join(".codex/auth.json"), "token-1").unwrap();
        let r = recipe("codex").unwrap();
        let (var, dir) = prepare(ctx.path(), "codex", 0, r, Some(home.path())).unwrap();
        assert_eq!(var, "CODEX_HOME");
        assert_eq!(dir, ctx.path().join("isolation/codex/0"));
        assert_eq!(
            std::fs::read_to_string(dir.join("auth.json")).unwrap(),
            "token-1"
        );
        // A later login at home reaches the instance; the instance's own changes stay until then.
        std::fs::write(home.path().join(".codex/auth.json"), "token-2").unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(home.path().join(".codex/auth.json"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        prepare(ctx.path(), "codex", 0, r, Some(home.path())).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("auth.json")).unwrap(),
            "token-2"
        );
        assert!(recipe("aider").is_none());
    }
}
