//! Built-in presets: how each real agent CLI is invoked non-interactively and how its output is
//! judged. An agent in the config says `preset: gemini` and gets all of this; every field can
//! still be overridden in the config.
//!
//! The facts behind each preset (checked against the current CLIs without network):
//! - claude: `-p PROMPT --output-format json`; failures may be `"is_error": true` even with
//!   `"subtype": "success"`; "Not logged in" comes on stdout with exit 1; as root
//!   `--dangerously-skip-permissions` is refused, so we use `--permission-mode acceptEdits`;
//!   it retries ~3 minutes on network failure unless `CLAUDE_CODE_MAX_RETRIES` is set.
//! - gemini: `-p PROMPT -o json --yolo`; exit 55 = untrusted folder (unless
//!   `GEMINI_CLI_TRUST_WORKSPACE=true`), 41 = no auth, 42 = no prompt; errors as JSON on stderr.
//!   Parallel starts race on its state files, hence the default 1 s stagger.
//! - codex: `exec --json PROMPT` (JSONL events); `--full-auto` is rejected; it never exits on
//!   network failure, so the idle timeout is what ends it; success needs `turn.completed` and no
//!   `turn.failed`; outside a git repository it needs `--skip-git-repo-check`.
//! - aider: `--message PROMPT --yes-always --no-check-update --analytics-disable --no-pretty
//!   --no-git --input-history-file /dev/null --chat-history-file /dev/null
//!   --no-show-model-warnings --no-show-release-notes` (without these aider runs `git init`, edits
//!   `.gitignore` and leaves history files in the workspace, and opens a browser on a warning);
//!   exits 0 with litellm error text on stdout when the API fails, so patterns must catch it;
//!   with no key it waits 5 minutes for an OAuth login, which the idle timeout cuts short.
//! - opencode: `run --format json --print-logs --log-level WARN PROMPT`; error events arrive on
//!   stdout, and each failed try of its silent retry loop on stderr; it can die mid-turn with
//!   exit 0, so success needs a text event and no error event.
//! - ollama: `run MODEL PROMPT`; reads all of stdin when it is not a TTY (we give it /dev/null);
//!   prints `Error: …` on stderr with exit 1.

use std::time::Duration;

use crate::class::Class;

/// How the prompt reaches the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptMode {
    /// Written to the child's stdin, which is then closed.
    Stdin,
    /// Replaces `{prompt}` in the command (one argv element, never a shell string).
    Arg,
    /// Written to a file whose path replaces `{prompt_file}` in the command.
    File,
}

/// What the agent prints on stdout, which decides structured judging and result extraction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// Plain text: stdout is the result.
    Plain,
    /// One JSON object with `result`, `is_error`, `subtype` (claude `--output-format json`).
    ClaudeJson,
    /// One JSON object with `response` or `error` (gemini `-o json`).
    GeminiJson,
    /// JSON lines: `turn.completed` / `turn.failed` / `item.completed` (codex `exec --json`).
    CodexJsonl,
    /// JSON lines: `text` / `error` / `step_finish` events (opencode `run --format json`).
    OpencodeJsonl,
    /// aider's transcript: judged as plain text, but the result is the model's answer without
    /// aider's banner and its `Tokens:` line (which gives the usage).
    AiderText,
}

impl OutputFormat {
    /// Text judged by patterns as a whole (no structure that says success or failure).
    pub fn is_text(self) -> bool {
        matches!(self, OutputFormat::Plain | OutputFormat::AiderText)
    }
}

/// A built-in preset. Patterns are regexes; `classified` ones turn a failure into a specific
/// class (`auth`, `rate_limit`, `pattern`).
#[derive(Debug)]
pub struct Preset {
    pub name: &'static str,
    /// argv template; `{model_args}` expands to `model_args` when a model is set, else nothing.
    pub command: &'static [&'static str],
    pub model_args: &'static [&'static str],
    pub default_model: Option<&'static str>,
    pub prompt: PromptMode,
    pub format: OutputFormat,
    pub env: &'static [(&'static str, &'static str)],
    pub stagger: Duration,
    pub timeout: Duration,
    pub idle_timeout: Option<Duration>,
    /// Exit codes with a known meaning (checked before the generic `exit` class).
    pub exit_classes: &'static [(i32, Class)],
    pub classified: &'static [(Class, &'static str)],
    /// Patterns that make the output conclusive while the attempt still runs (see `watch`):
    /// the attempt is stopped at once for `auth` and `rate_limit`, after `fatal_repeats` lines
    /// for `network`.
    pub fatal: &'static [(Class, &'static str)],
    pub fatal_repeats: u32,
    /// Where the CLI's login can be, checked before each attempt (see `credentials`).
    pub credentials: Option<crate::credentials::Rule>,
    /// What to do when it is not logged in (Markdown with backticks, one sentence).
    pub login_hint: &'static str,
    pub install_hint: &'static str,
}

const MIN: u64 = 60;

/// What every CLI prints when it cannot reach its provider (Node's error codes, Rust's reqwest,
/// Python's httpx/litellm, the C library's resolver, and the CLIs' own words). DNS failures are
/// network failures whatever the CLI wraps them in (`litellm.InternalServerError: … Name or
/// service not known` is not the tool failing).
pub const NETWORK: &str = r"(?i)ECONNREFUSED|ECONNRESET|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|ENETUNREACH|getaddrinfo|fetch failed|connection (?:refused|reset|error|closed)|network (?:error|is unreachable)|could not resolve|failed to resolve|NameResolutionError|name or service not known|name does not resolve|temporary failure in name resolution|nodename nor servname|no address associated with hostname|failed to lookup address|dns error|failed to connect|cannot connect to api|unable to connect|error sending request|stream disconnected|APIConnectionError|ServiceUnavailableError|socket hang up|waiting for network|can'?t reach the api|cannot reach the api|api_error.{1,4}connection_failed";

/// codex's first words offline, 5 s apart, before it tries to connect at all (codex 0.171): its
/// model list cannot be fetched. Counted like the connection errors that follow, so an attempt
/// is decided some 15 s sooner.
const CODEX_NETWORK: &str = r"failed to refresh available models: request timed out";

/// A provider that is up but too busy (HTTP 529/503, `overloaded`): transient, so it is judged
/// `network` (the same agent again after a backoff), never "the tool failed".
pub const OVERLOADED: &str = r"(?i)overloaded|\b529\b|\b503\b|service unavailable|server is busy";

const CLAUDE_AUTH: &str = r"(?i)not logged in|invalid api key|please run /login|authentication_error|oauth token has expired|credit balance is too low";

/// aider's own provider errors: litellm's exception name, then (on the
/// next line) "Retrying in N seconds...". Its text is wrapped at 80 columns, so a DNS error can
/// be split over two lines; the exception name is what is matched. Not NETWORK: aider prints
/// resolver errors at start-up when it cannot fetch its model price list from GitHub, and goes
/// on to work with a reachable (local) provider.
// Not anchored at the line start: after a stream cut off mid-answer, the error follows the
// partial answer on the same line.
const AIDER_NETWORK: &str = r"litellm\.(?:InternalServerError|APIConnectionError|ServiceUnavailableError|Timeout|APIError)\b";

/// aider with no key at all prints this and then waits 5 minutes for a browser login.
const AIDER_AUTH: &str = r"(?i)AuthenticationError|invalid api key|no api keys? (?:were|was) provided|no api key|login to openrouter|Please open this URL in your browser";

/// Every built-in preset, in the order the default chain prefers them.
pub static PRESETS: &[Preset] = &[
    Preset {
        name: "claude",
        command: &[
            "claude",
            "-p",
            "{prompt}",
            "--output-format",
            "json",
            "--permission-mode",
            "acceptEdits",
            "{model_args}",
        ],
        model_args: &["--model", "{model}"],
        default_model: None,
        prompt: PromptMode::Arg,
        format: OutputFormat::ClaudeJson,
        // One retry loop, and it is ours: claude's own lasts ~3 minutes.
        env: &[("CLAUDE_CODE_MAX_RETRIES", "0")],
        stagger: Duration::ZERO,
        timeout: Duration::from_secs(30 * MIN),
        // claude prints its JSON only at the end: silence is normal, so no idle limit.
        idle_timeout: None,
        exit_classes: &[],
        classified: &[
            (Class::Auth, CLAUDE_AUTH),
            (Class::RateLimit, r"(?i)rate[_ ]limit|usage limit|\b429\b"),
            (Class::Network, NETWORK),
            (Class::Network, OVERLOADED),
        ],
        fatal: &[
            (Class::Auth, CLAUDE_AUTH),
            (Class::Network, NETWORK),
            (Class::Network, OVERLOADED),
        ],
        fatal_repeats: 3,
        credentials: Some(crate::credentials::Rule {
            env: &[
                "ANTHROPIC_API_KEY",
                "ANTHROPIC_AUTH_TOKEN",
                "CLAUDE_CODE_OAUTH_TOKEN",
                "CLAUDE_CODE_USE_BEDROCK",
                "CLAUDE_CODE_USE_VERTEX",
                "ANTHROPIC_BASE_URL",
            ],
            home_var: Some("CLAUDE_CONFIG_DIR"),
            home_default: ".claude",
            home_files: &[".credentials.json", "settings.json"],
            other_files: &[
                ".claude.json",
                "./.claude/settings.json",
                "./.claude/settings.local.json",
            ],
            // There the login is in the keychain.
            skip_on_macos: true,
        }),
        login_hint: "run `claude`, log in with `/login` (or set `ANTHROPIC_API_KEY`)",
        install_hint: "npm install -g @anthropic-ai/claude-code",
    },
    Preset {
        name: "gemini",
        command: &[
            "gemini",
            "-p",
            "{prompt}",
            "-o",
            "json",
            "--yolo",
            "{model_args}",
        ],
        model_args: &["-m", "{model}"],
        default_model: None,
        prompt: PromptMode::Arg,
        format: OutputFormat::GeminiJson,
        env: &[("GEMINI_CLI_TRUST_WORKSPACE", "true")],
        stagger: Duration::from_secs(1),
        timeout: Duration::from_secs(30 * MIN),
        idle_timeout: None,
        exit_classes: &[(41, Class::Auth), (55, Class::Auth)],
        classified: &[
            (
                Class::Auth,
                r"(?i)api key not valid|unauthenticated|permission_denied|GEMINI_API_KEY|auth method|not trusted|untrusted",
            ),
            (
                Class::RateLimit,
                r"(?i)resource_exhausted|quota|\b429\b|rate[_ ]limit",
            ),
            (Class::Network, NETWORK),
            (Class::Network, OVERLOADED),
        ],
        fatal: &[
            (Class::Network, NETWORK),
            (Class::Network, OVERLOADED),
            (
                Class::RateLimit,
                r"(?i)\b429\b|resource_exhausted|rate[_ ]limit",
            ),
        ],
        fatal_repeats: 2,
        credentials: Some(crate::credentials::Rule {
            env: &[
                "GEMINI_API_KEY",
                "GOOGLE_API_KEY",
                "GOOGLE_GENAI_USE_VERTEXAI",
                "GOOGLE_GENAI_USE_GCA",
                "GOOGLE_APPLICATION_CREDENTIALS",
                "GOOGLE_CLOUD_PROJECT",
            ],
            home_var: None,
            home_default: ".gemini",
            home_files: &["oauth_creds.json", ".env", "settings.json"],
            other_files: &[
                ".env",
                "./.env",
                "./.gemini/.env",
                "./.gemini/settings.json",
            ],
            skip_on_macos: false,
        }),
        login_hint: "run `gemini` and choose a login (or set `GEMINI_API_KEY`)",
        install_hint: "npm install -g @google/gemini-cli",
    },
    Preset {
        name: "codex",
        command: &[
            "codex",
            "exec",
            "{model_args}",
            "--json",
            "--skip-git-repo-check",
            "{prompt}",
        ],
        model_args: &["-m", "{model}"],
        default_model: None,
        prompt: PromptMode::Arg,
        format: OutputFormat::CodexJsonl,
        env: &[],
        stagger: Duration::ZERO,
        timeout: Duration::from_secs(30 * MIN),
        // codex never exits on a network failure; its event stream goes quiet instead.
        idle_timeout: Some(Duration::from_secs(5 * MIN)),
        exit_classes: &[],
        classified: &[
            (
                Class::Auth,
                r"(?i)not logged in|401 unauthorized|invalid_api_key|OPENAI_API_KEY|please log ?in",
            ),
            (
                Class::RateLimit,
                r"(?i)rate[_ ]limit|\b429\b|usage limit|quota",
            ),
            (Class::Network, NETWORK),
            (Class::Network, CODEX_NETWORK),
            (Class::Network, OVERLOADED),
        ],
        fatal: &[
            (
                Class::Auth,
                r"(?i)401 unauthorized|invalid_api_key|please log ?in",
            ),
            (Class::Network, NETWORK),
            (Class::Network, CODEX_NETWORK),
            (Class::Network, OVERLOADED),
            (Class::RateLimit, r"(?i)\b429\b|rate[_ ]limit|usage limit"),
        ],
        fatal_repeats: 3,
        credentials: Some(crate::credentials::Rule {
            // `codex exec` sends CODEX_API_KEY; it ignores OPENAI_API_KEY.
            env: &["CODEX_API_KEY"],
            home_var: Some("CODEX_HOME"),
            home_default: ".codex",
            // A config.toml may name another provider and its key variable.
            home_files: &["auth.json", "config.toml"],
            other_files: &[],
            skip_on_macos: false,
        }),
        login_hint: "run `codex login` (or set `CODEX_API_KEY`)",
        install_hint: "npm install -g @openai/codex",
    },
    Preset {
        name: "opencode",
        command: &[
            "opencode",
            "run",
            "{model_args}",
            "--format",
            "json",
            // Its retry loop (6 tries, ~65 s) is silent otherwise: with its warnings on
            // stderr, every failed try shows and the watcher can stop it.
            "--print-logs",
            "--log-level",
            "WARN",
            "{prompt}",
        ],
        model_args: &["-m", "{model}"],
        default_model: None,
        prompt: PromptMode::Arg,
        format: OutputFormat::OpencodeJsonl,
        // No models.dev download at start-up (it fails offline and is not needed to run).
        env: &[("OPENCODE_DISABLE_MODELS_FETCH", "true")],
        stagger: Duration::ZERO,
        timeout: Duration::from_secs(30 * MIN),
        idle_timeout: Some(Duration::from_secs(5 * MIN)),
        exit_classes: &[],
        classified: &[
            (
                Class::Auth,
                r"(?i)ProviderAuthError|api key|unauthorized|\b401\b",
            ),
            (Class::RateLimit, r"(?i)rate[_ ]limit|\b429\b|quota"),
            (Class::Network, NETWORK),
            (Class::Network, OVERLOADED),
        ],
        fatal: &[
            (Class::Auth, r"ProviderAuthError|(?i)\b401\b"),
            (Class::Network, NETWORK),
            (Class::Network, OVERLOADED),
            // Its stream ended without a finish (a cut connection); it then asks again forever.
            (Class::Network, r#""reason":"unknown""#),
            (Class::RateLimit, r"(?i)\b429\b|rate[_ ]limit"),
        ],
        // Each failed try logs one `stream error` line; two in a row are its retry loop.
        fatal_repeats: 2,
        // opencode has models that need no key: its own answer decides.
        credentials: None,
        login_hint: "run `opencode auth login`",
        install_hint: "npm install -g opencode-ai",
    },
    Preset {
        name: "aider",
        command: &[
            "aider",
            "{model_args}",
            "--message",
            "{prompt}",
            "--yes-always",
            "--no-check-update",
            "--analytics-disable",
            "--no-pretty",
            // Leave the workspace's git alone: no `git init`, no `.gitignore` edits, no
            // commits of its own (dirigent decides what becomes a commit).
            "--no-git",
            // No history files in the workspace, and no questions that `--yes-always` would
            // answer by opening a browser (model warnings, release notes).
            "--input-history-file",
            "/dev/null",
            "--chat-history-file",
            "/dev/null",
            "--no-show-model-warnings",
            "--no-show-release-notes",
        ],
        model_args: &["--model", "{model}"],
        default_model: None,
        prompt: PromptMode::Arg,
        format: OutputFormat::AiderText,
        // litellm's own price-list download at start-up: not needed, and it fails offline.
        env: &[("LITELLM_LOCAL_MODEL_COST_MAP", "True")],
        stagger: Duration::ZERO,
        timeout: Duration::from_secs(30 * MIN),
        // Without a key aider waits 5 minutes for an OAuth login in silence.
        idle_timeout: Some(Duration::from_secs(3 * MIN)),
        exit_classes: &[],
        classified: &[
            (Class::Auth, AIDER_AUTH),
            (Class::RateLimit, r"RateLimitError|(?i)rate limit exceeded"),
            (Class::Network, AIDER_NETWORK),
            // aider exits 0 after printing litellm's error: the text is all there is.
            (Class::ToolError, r"litellm\.\w+Error"),
        ],
        fatal: &[
            (Class::Auth, AIDER_AUTH),
            (Class::Network, AIDER_NETWORK),
            (Class::RateLimit, r"litellm\.RateLimitError"),
        ],
        fatal_repeats: 2,
        // aider reads keys from many places (`.env`, `.aider.conf.yml`, a local model): its own
        // answer, which comes at once, decides.
        credentials: None,
        login_hint: "set the API key of your model's provider (e.g. `ANTHROPIC_API_KEY`), or give aider a `model`",
        install_hint: "pip install aider-chat",
    },
    Preset {
        name: "ollama",
        command: &["ollama", "run", "{model}", "{prompt}"],
        model_args: &[],
        default_model: Some("llama3.2"),
        prompt: PromptMode::Arg,
        format: OutputFormat::Plain,
        env: &[],
        stagger: Duration::ZERO,
        timeout: Duration::from_secs(30 * MIN),
        idle_timeout: Some(Duration::from_secs(5 * MIN)),
        exit_classes: &[],
        classified: &[
            (Class::Network, NETWORK),
            (
                Class::Network,
                r"(?i)could not connect to (?:a running )?ollama|ollama server not responding",
            ),
            (Class::ToolError, r"(?m)^Error: "),
        ],
        fatal: &[(Class::Network, NETWORK)],
        fatal_repeats: 1,
        credentials: None,
        login_hint: "start the server with `ollama serve`",
        install_hint: "see https://ollama.com/download, then `ollama pull llama3.2`",
    },
];

/// The preset called `name`, if there is one.
pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// Names of all presets, in preference order.
pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_pattern_compiles_and_has_a_prompt_slot() {
        for p in PRESETS {
            for (_, re) in p.classified {
                regex::Regex::new(re).unwrap_or_else(|e| panic!("{}: {e}", p.name));
            }
            assert!(p.command.contains(&"{prompt}"), "{}", p.name);
        }
    }

    #[test]
    fn presets_carry_the_cli_facts() {
        let codex = find("codex").unwrap();
        assert!(!codex.command.contains(&"--full-auto"));
        assert!(codex.idle_timeout.is_some());
        let gemini = find("gemini").unwrap();
        assert!(gemini.env.contains(&("GEMINI_CLI_TRUST_WORKSPACE", "true")));
        assert_eq!(gemini.exit_classes, &[(41, Class::Auth), (55, Class::Auth)]);
        let claude = find("claude").unwrap();
        assert!(!claude.command.contains(&"--dangerously-skip-permissions"));
        assert!(
            claude
                .env
                .iter()
                .any(|(k, _)| *k == "CLAUDE_CODE_MAX_RETRIES")
        );
    }
}
