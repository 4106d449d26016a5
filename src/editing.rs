//! How an editing task is checked and merged: the settings a task, its agent and the config
//! give (`verify`, `verify_rounds`, `expect_changes`, `merge`, `merge_into`, `merge_strategy`,
//! `on_conflict`, `carry_failed_changes`, and the worktree's `copy`/`link`/`setup`), their
//! parsed types, and the one function that resolves them for a task. Where an attempt works is
//! `workdir.rs`; doing the git work is `git.rs` and the engine's `worktrees`/`merging` rooms.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a finished, verified branch reaches its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MergeMode {
    /// Through the merge queue as soon as the task is verified.
    Auto,
    /// The task waits (`merge_waiting`) until `dirigent merge ID`.
    #[default]
    Manual,
    /// Never: the branch `dirigent/<id>` is the result.
    None,
}

/// How a `merge_waiting` reason that only `dirigent merge` ends begins (`merge: manual`).
pub const MANUAL_MERGE: &str = "`merge: manual`";

/// How a branch is put on its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MergeStrategy {
    /// The task's commits replayed on the target's head; the target fast-forwards.
    #[default]
    Rebase,
    /// A merge commit of the target's head and the branch.
    Merge,
    /// One commit on the target's head with the branch's changes.
    Squash,
}

/// What a conflict leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    /// The task escalates with class `conflict`, the files and hunks in its report.
    #[default]
    Escalate,
    /// The task's agent resolves it once in the worktree (the merge started there, its markers
    /// in the files); then it is checked, verified, committed and queued again.
    Agent,
}

/// `verify:` as written: one argv (`[cargo, test]`) or a list of them.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum VerifyWritten {
    One(Vec<String>),
    Many(Vec<Vec<String>>),
}

// Read by shape (`by_shape`), not `untagged`, so that a mistake is named ("mixes words and
// commands", "an integer, expected a word") instead of "data did not match any variant".
impl<'de> Deserialize<'de> for VerifyWritten {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// One item of the list: a word of the one command, or a whole command.
        enum Item {
            Word(String),
            Command(Vec<String>),
        }
        impl<'de> Deserialize<'de> for Item {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                crate::by_shape::word_or_list(
                    d,
                    "a word of a command (`cargo`) or a command (`[cargo, test]`)",
                    Item::Word,
                    Item::Command,
                )
            }
        }
        let items: Vec<Item> = crate::by_shape::read(
            d,
            crate::by_shape::Shapes {
                expecting: "a command (`[cargo, test]`) or a list of commands (`[[cargo, test], [make, lint]]`)",
                word: None,
                list: Some(|items| items),
                map: None::<fn(()) -> Vec<Item>>,
            },
        )?;
        let (mut words, mut commands) = (vec![], vec![]);
        for item in items {
            match item {
                Item::Word(w) => words.push(w),
                Item::Command(c) => commands.push(c),
            }
        }
        match (words.is_empty(), commands.is_empty()) {
            (_, true) => Ok(VerifyWritten::One(words)),
            (true, false) => Ok(VerifyWritten::Many(commands)),
            (false, false) => Err(serde::de::Error::custom(
                "`verify` mixes words and commands: write one command as a list of words \
                 (`[cargo, test]`) or every command as a list (`[[cargo, test], [make, lint]]`)",
            )),
        }
    }
}

/// Why a `verify:` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`verify` {0}")]
pub struct BadVerify(&'static str);

impl VerifyWritten {
    /// The commands, each a non-empty argv.
    pub fn commands(&self) -> Result<Vec<Vec<String>>, BadVerify> {
        let list = match self {
            VerifyWritten::One(argv) if argv.is_empty() => return Ok(vec![]),
            VerifyWritten::One(argv) => vec![argv.clone()],
            VerifyWritten::Many(list) => list.clone(),
        };
        if list.iter().any(|argv| argv.is_empty()) {
            return Err(BadVerify(
                "has an empty command; each is an argv such as [cargo, test]",
            ));
        }
        if list.iter().flatten().any(|a| a.contains('\0')) {
            return Err(BadVerify("contains a NUL byte"));
        }
        Ok(list)
    }
}

/// The worktree's preparation (`worktree:` in config).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Setup {
    /// Untracked files copied from the main tree (`.env`).
    pub copy: Vec<String>,
    /// Directories linked from the main tree (`node_modules`, `target`).
    pub link: Vec<String>,
    /// Run once in a new tree (`[npm, ci]`).
    pub setup: Option<Vec<String>>,
}

/// The most `verify_rounds` a task or the config may ask for: each round is another full run of
/// the agent in the same slot, so a large number holds the slot for hours on work that keeps
/// failing its check.
pub const MAX_VERIFY_ROUNDS: u32 = 10;

/// `verify_rounds` as given, or why it is refused.
pub fn check_verify_rounds(rounds: Option<u32>) -> Result<(), String> {
    match rounds {
        Some(n) if n > MAX_VERIFY_ROUNDS => Err(format!(
            "`verify_rounds` is {n}; at most {MAX_VERIFY_ROUNDS} (each round runs the agent again in the same slot)"
        )),
        _ => Ok(()),
    }
}

/// The config's defaults for editing tasks.
#[derive(Clone, Debug, PartialEq)]
pub struct Defaults {
    pub verify: Vec<Vec<String>>,
    pub verify_rounds: u32,
    pub expect_changes: Option<bool>,
    pub merge: MergeMode,
    pub merge_into: Option<String>,
    pub merge_strategy: MergeStrategy,
    pub on_conflict: OnConflict,
    pub carry_failed_changes: bool,
    /// How long the worktree of a failed task is kept for a human to look at.
    pub keep_failed: Duration,
    pub setup: Setup,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            verify: vec![],
            verify_rounds: 1,
            expect_changes: None,
            merge: MergeMode::Manual,
            merge_into: None,
            merge_strategy: MergeStrategy::Rebase,
            on_conflict: OnConflict::Escalate,
            carry_failed_changes: false,
            keep_failed: Duration::from_secs(24 * 3600),
            setup: Setup::default(),
        }
    }
}

/// What one task's editing settings resolve to (task over agent over config).
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub verify: Vec<Vec<String>>,
    pub verify_rounds: u32,
    pub expect_changes: bool,
    pub merge: MergeMode,
    pub merge_into: Option<String>,
    pub merge_strategy: MergeStrategy,
    pub on_conflict: OnConflict,
    pub carry_failed_changes: bool,
}

/// What the task says (already validated at acceptance).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskSays {
    pub verify: Option<Vec<Vec<String>>>,
    pub verify_rounds: Option<u32>,
    pub expect_changes: Option<bool>,
    pub merge: Option<MergeMode>,
    pub merge_into: Option<String>,
    pub merge_strategy: Option<MergeStrategy>,
    pub on_conflict: Option<OnConflict>,
    pub carry_failed_changes: Option<bool>,
}

/// Resolves a task's settings: the task's own (a workflow phase's `verify` is its tasks'), then
/// its role's `verify`, then its agent's, then the config's. `expect_changes` defaults to true
/// (this is only asked for worktree attempts).
pub fn resolve(
    task: &TaskSays,
    role_verify: &[Vec<String>],
    agent_verify: &[Vec<String>],
    config: &Defaults,
) -> Resolved {
    let verify = match &task.verify {
        Some(v) => v.clone(),
        None if !role_verify.is_empty() => role_verify.to_vec(),
        None if !agent_verify.is_empty() => agent_verify.to_vec(),
        None => config.verify.clone(),
    };
    Resolved {
        verify,
        verify_rounds: task.verify_rounds.unwrap_or(config.verify_rounds),
        expect_changes: task
            .expect_changes
            .or(config.expect_changes)
            .unwrap_or(true),
        merge: task.merge.unwrap_or(config.merge),
        merge_into: task.merge_into.clone().or(config.merge_into.clone()),
        merge_strategy: task.merge_strategy.unwrap_or(config.merge_strategy),
        on_conflict: task.on_conflict.unwrap_or(config.on_conflict),
        carry_failed_changes: task
            .carry_failed_changes
            .unwrap_or(config.carry_failed_changes),
    }
}

/// How a worktree attempt the agent called `ok` ends, once its tree is looked at: `None` keeps
/// `ok`; otherwise the class it ends in. Decided from facts only, so it is a case table.
pub fn checked_class(
    changed: bool,
    expect_changes: bool,
    verify_passed: Option<bool>,
) -> Option<crate::class::Class> {
    use crate::class::Class;
    if !changed && expect_changes {
        return Some(Class::NoChange);
    }
    match verify_passed {
        Some(false) => Some(Class::Verify),
        _ => None,
    }
}

/// A command line given as one string (`--verify "sh -c 'cargo test && cargo clippy'"`) split
/// into its argv the way a shell splits words, and nothing more: blanks separate words, `'…'`
/// keeps everything literally, `"…"` keeps blanks (a backslash escapes `"` and `\\` in it), a
/// backslash outside quotes escapes the next character. No variables, globs or operators: for
/// those, run `sh -c '…'`. An unclosed quote is an error, never a guess.
pub fn split_command(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(format!("`{text}` has a `'` that is not closed")),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => {
                                return Err(format!("`{text}` has a `\"` that is not closed"));
                            }
                        },
                        Some(c) => w.push(c),
                        None => return Err(format!("`{text}` has a `\"` that is not closed")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err(format!("`{text}` ends with a lone `\\`")),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = word {
        words.push(w);
    }
    if words.is_empty() {
        return Err("the command is empty".into());
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_string_is_split_into_words_as_a_shell_would() {
        let ok: &[(&str, &[&str])] = &[
            ("cargo test", &["cargo", "test"]),
            ("  cargo   test  ", &["cargo", "test"]),
            (
                "sh -c 'echo tests failed; exit 1'",
                &["sh", "-c", "echo tests failed; exit 1"],
            ),
            (
                r#"sh -c "echo \"hi\" there""#,
                &["sh", "-c", r#"echo "hi" there"#],
            ),
            (r#"a\ b c"#, &["a b", "c"]),
            ("''", &[""]),
            (r#"x"y z"'w'"#, &["xy zw"]),
            (r#""a\nb""#, &[r#"a\nb"#]),
        ];
        for (text, want) in ok {
            assert_eq!(
                split_command(text).as_deref(),
                Ok(&want.iter().map(|w| w.to_string()).collect::<Vec<_>>()[..]),
                "splitting `{text}`"
            );
        }
        let bad: &[(&str, &str)] = &[
            ("sh -c 'echo", "has a `'` that is not closed"),
            (r#"echo "hi"#, "has a `\"` that is not closed"),
            ("echo \\", "ends with a lone `\\`"),
            ("   ", "the command is empty"),
        ];
        for (text, want) in bad {
            let got = split_command(text).expect_err(text);
            assert!(got.contains(want), "`{text}`: expected `{want}` in `{got}`");
        }
    }
    use crate::class::Class;

    #[test]
    fn verify_reads_one_command_or_many_and_names_a_mistake() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // (JSON as written, what it reads as or the error's words)
        let cases: [(&str, Result<VerifyWritten, &str>); 6] = [
            (
                r#"["cargo","test"]"#,
                Ok(VerifyWritten::One(words(&["cargo", "test"]))),
            ),
            (
                r#"[["cargo","test"],["make"]]"#,
                Ok(VerifyWritten::Many(vec![
                    words(&["cargo", "test"]),
                    words(&["make"]),
                ])),
            ),
            ("[]", Ok(VerifyWritten::One(vec![]))),
            (
                r#"["cargo",["make"]]"#,
                Err("`verify` mixes words and commands"),
            ),
            (
                r#"["sleep",5]"#,
                Err("expected a word of a command (`cargo`)"),
            ),
            (
                r#""cargo test""#,
                Err("expected a command (`[cargo, test]`) or a list"),
            ),
        ];
        for (text, want) in cases {
            let got = serde_json::from_str::<VerifyWritten>(text);
            match (&got, &want) {
                (Ok(v), Ok(w)) => assert_eq!(v, w, "{text}"),
                (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{text}: {e}"),
                _ => panic!("{text}: expected {want:?}, got {got:?}"),
            }
        }
        // YAML too (config, roles, workflow files).
        let yaml: Result<VerifyWritten, _> = serde_saphyr::from_str("[cargo, [make]]");
        let err = yaml.expect_err("a mix is refused in YAML too").to_string();
        assert!(err.contains("`verify` mixes words and commands"), "{err}");
    }

    #[test]
    fn checked_class_table() {
        // (changed, expect_changes, verify passed) → class
        let cases: &[(bool, bool, Option<bool>, Option<Class>)] = &[
            (true, true, None, None),
            (true, true, Some(true), None),
            (true, true, Some(false), Some(Class::Verify)),
            (false, true, None, Some(Class::NoChange)),
            (false, true, Some(true), Some(Class::NoChange)),
            (false, false, None, None),
            (false, false, Some(false), Some(Class::Verify)),
            (true, false, Some(false), Some(Class::Verify)),
        ];
        for &(changed, expect, verify, want) in cases {
            assert_eq!(
                checked_class(changed, expect, verify),
                want,
                "expected changed={changed} expect_changes={expect} verify={verify:?} to end {want:?}"
            );
        }
    }

    #[test]
    fn resolution_table() {
        let config = Defaults {
            verify: vec![vec!["make".into()]],
            merge: MergeMode::Auto,
            ..Defaults::default()
        };
        let agent = vec![vec!["cargo".into(), "test".into()]];
        let none = TaskSays::default();
        let r = resolve(&none, &[], &[], &config);
        assert_eq!(r.verify, config.verify, "expected the config's verify");
        assert_eq!(r.merge, MergeMode::Auto, "expected the config's merge");
        assert!(r.expect_changes, "expected expect_changes on by default");
        assert_eq!(r.verify_rounds, 1, "expected one feedback round by default");
        let r = resolve(&none, &[], &agent, &config);
        assert_eq!(
            r.verify, agent,
            "expected the agent's verify over the config's"
        );
        let role = vec![vec!["make".to_string(), "check".to_string()]];
        let r = resolve(&none, &role, &agent, &config);
        assert_eq!(
            r.verify, role,
            "expected the role's verify over the agent's"
        );
        let task = TaskSays {
            verify: Some(vec![]),
            merge: Some(MergeMode::None),
            expect_changes: Some(false),
            ..TaskSays::default()
        };
        let r = resolve(&task, &[], &agent, &config);
        assert!(
            r.verify.is_empty(),
            "expected the task's empty verify to win"
        );
        assert_eq!(r.merge, MergeMode::None, "expected the task's merge to win");
        assert!(
            !r.expect_changes,
            "expected the task's expect_changes to win"
        );
    }

    #[test]
    fn verify_forms() {
        let one: VerifyWritten = serde_json::from_str(r#"["cargo","test"]"#).unwrap();
        assert_eq!(
            one.commands().unwrap(),
            vec![vec!["cargo".to_string(), "test".to_string()]],
            "expected one argv"
        );
        let many: VerifyWritten = serde_json::from_str(r#"[["a"],["b","c"]]"#).unwrap();
        assert_eq!(many.commands().unwrap().len(), 2, "expected two commands");
        let empty: VerifyWritten = serde_json::from_str(r#"[["a"],[]]"#).unwrap();
        assert!(
            empty.commands().is_err(),
            "expected an empty command refused"
        );
        assert!(
            serde_json::from_str::<VerifyWritten>(r#""cargo test""#).is_err(),
            "expected a shell string refused"
        );
    }
}
