//! Knowing before trying: does a preset's CLI have any way to log in?
//!
//! A CLI with no credentials at all cannot succeed, and some do not say so quickly (codex just
//! tries the network). Before each attempt of a preset agent, `spawn` asks [`check`] whether
//! any credential the CLI accepts is present: an API-key variable in the attempt's environment,
//! or a login file under the CLI's config home. When none is, the attempt is judged `auth`
//! without a spawn, with the command that fixes it. Only presence is checked, never content,
//! and nothing is ever printed of a value.
//!
//! The check errs towards "present": any file that could hold credentials or name another way
//! in (a `.env` the CLI loads, a config with custom providers) counts. Where the CLI can hold
//! its login somewhere we cannot see (the macOS keychain), or can run without one (opencode's
//! free models, aider with a local model), there is no rule and the CLI's own answer decides.

use std::path::{Path, PathBuf};

/// Where one CLI keeps what lets it log in.
#[derive(Debug)]
pub struct Rule {
    /// Variables any of which (set and not empty) is a way in.
    pub env: &'static [&'static str],
    /// The variable that moves the CLI's config home, and its default under `$HOME`.
    pub home_var: Option<&'static str>,
    pub home_default: &'static str,
    /// Files in the config home any of which counts.
    pub home_files: &'static [&'static str],
    /// Files under `$HOME` (or the workspace, for `./…`) any of which counts.
    pub other_files: &'static [&'static str],
    /// Why the check does not apply on this system (then the CLI decides).
    pub skip_on_macos: bool,
}

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A way in exists: which one (a variable's name or a path, never a value).
    Present(String),
    /// None: the places that were looked at.
    Missing(Vec<String>),
    /// No rule applies (no preset rule, or a system where logins hide elsewhere).
    Unknown,
}

/// Checks `rule` against an environment (`var` looks a variable up) and a workspace.
pub fn check(rule: &Rule, var: &dyn Fn(&str) -> Option<String>, workspace: &Path) -> Found {
    if rule.skip_on_macos && cfg!(target_os = "macos") {
        return Found::Unknown;
    }
    for name in rule.env {
        if var(name).is_some_and(|v| !v.trim().is_empty()) {
            return Found::Present(format!("${name}"));
        }
    }
    let Some(home) = var("HOME").filter(|h| !h.is_empty()).map(PathBuf::from) else {
        return Found::Unknown;
    };
    let config_home = rule
        .home_var
        .and_then(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(rule.home_default));
    let mut looked = Vec::new();
    let candidates =
        rule.home_files
            .iter()
            .map(|f| config_home.join(f))
            .chain(rule.other_files.iter().map(|f| match f.strip_prefix("./") {
                Some(rel) => workspace.join(rel),
                None => home.join(f),
            }));
    for path in candidates {
        // Presence only; a link counts if it leads somewhere.
        if std::fs::metadata(&path).is_ok() {
            return Found::Present(path.display().to_string());
        }
        looked.push(path.display().to_string());
    }
    looked.extend(rule.env.iter().map(|n| format!("${n}")));
    Found::Missing(looked)
}

/// The places looked at, short enough for a reason: the first file, every variable, and how
/// many other files (`dirigent doctor --json` lists them all).
pub fn summary(looked: &[String]) -> String {
    let (vars, files): (Vec<&String>, Vec<&String>) =
        looked.iter().partition(|l| l.starts_with('$'));
    let mut parts: Vec<String> = Vec::new();
    if let Some(first) = files.first() {
        parts.push(format!("no `{first}`"));
    }
    if files.len() > 1 {
        parts.push(format!("nor {} other file(s)", files.len() - 1));
    }
    if !vars.is_empty() {
        let names: Vec<String> = vars.iter().map(|v| format!("`{v}`")).collect();
        parts.push(format!("no {}", names.join(" or ")));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: Rule = Rule {
        env: &["TEST_API_KEY"],
        home_var: Some("TEST_HOME"),
        home_default: ".test",
        home_files: &["auth.json"],
        other_files: &["./.env"],
        skip_on_macos: false,
    };

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_summary_names_the_first_file_and_every_variable() {
        let looked: Vec<String> = [
            "/h/.codex/auth.json",
            "/h/.codex/config.toml",
            "$CODEX_API_KEY",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            summary(&looked),
            "no `/h/.codex/auth.json`, nor 1 other file(s), no `$CODEX_API_KEY`"
        );
    }

    #[test]
    fn what_counts_as_a_way_in() {
        let home = tempfile::tempdir().unwrap();
        let ws = tempfile::tempdir().unwrap();
        let h = home.path().to_str().unwrap();
        // Nothing at all.
        let missing = check(&RULE, &env(&[("HOME", h)]), ws.path());
        assert!(
            matches!(&missing, Found::Missing(l) if l.len() == 3 && l[2] == "$TEST_API_KEY"),
            "expected the three places looked at, got {missing:?}"
        );
        // An empty variable is not a key.
        assert!(matches!(
            check(
                &RULE,
                &env(&[("HOME", h), ("TEST_API_KEY", " ")]),
                ws.path()
            ),
            Found::Missing(_)
        ));
        assert_eq!(
            check(
                &RULE,
                &env(&[("HOME", h), ("TEST_API_KEY", "sk-x")]),
                ws.path()
            ),
            Found::Present("$TEST_API_KEY".into()),
            "the variable's name, never its value"
        );
        // The login file in the default config home, then in a moved one.
        std::fs::create_dir(home.path().join(".test")).unwrap();
        std::fs::write(home.path().join(".test/auth.json"), "{}").unwrap();
        assert!(matches!(
            check(&RULE, &env(&[("HOME", h)]), ws.path()),
            Found::Present(p) if p.ends_with(".test/auth.json")
        ));
        let moved = tempfile::tempdir().unwrap();
        assert!(
            matches!(
                check(
                    &RULE,
                    &env(&[("HOME", h), ("TEST_HOME", moved.path().to_str().unwrap())]),
                    ws.path()
                ),
                Found::Missing(_)
            ),
            "a moved config home is where the CLI looks"
        );
        // A file in the workspace the CLI loads.
        std::fs::write(ws.path().join(".env"), "").unwrap();
        assert!(matches!(
            check(&RULE, &env(&[("HOME", h), ("TEST_HOME", moved.path().to_str().unwrap())]), ws.path()),
            Found::Present(p) if p.ends_with(".env")
        ));
        // No HOME: no verdict.
        assert_eq!(check(&RULE, &env(&[]), ws.path()), Found::Unknown);
    }
}
