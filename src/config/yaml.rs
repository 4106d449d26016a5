//! Reading the config's YAML: the file itself (bounded, never a FIFO), parsing into a type
//! with the path of the key that failed, and the messages a user sees for a YAML error — the
//! key, the line, and a hint in plain words. [`super::Config`] and the task and workflow files
//! read their YAML through these.

use std::path::Path;

use super::ConfigError;

/// The largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Reads a config file's text: `None` when there is none. Only a regular file is read (a link
/// to one is fine: the config is the user's), never blocking on a FIFO, at most
/// [`MAX_CONFIG_BYTES`] — a config replaced by `/dev/zero` or a pipe is an error, not a hang.
pub fn read_text(path: &Path) -> Result<Option<String>, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |cause: std::io::Error| ConfigError::Read {
        path: path.display().to_string(),
        cause,
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    let meta = file.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it is not a regular file (a FIFO, device or directory); the config must be a file",
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("it is larger than the limit of {MAX_CONFIG_BYTES} bytes"),
        )));
    }
    String::from_utf8(bytes).map(Some).map_err(|e| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("it is not UTF-8 text ({e})"),
        ))
    })
}

/// A YAML document that does not read as the type asked for: the parser's error and the key it
/// was at (`agents.echo.model`), when there is one.
#[derive(Debug)]
pub struct YamlError {
    pub error: serde_saphyr::Error,
    pub key: Option<String>,
}

/// Reads YAML `text` as a `T`; an error says which key it was at (see [`YamlError`]).
pub fn from_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Box<YamlError>> {
    let mut key = None;
    serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            key = key_of(e.path());
            e.into_inner()
        })
    })
    .map_err(|error| Box::new(YamlError { error, key }))
}

/// A path to show: up to the first part that has no name (inside a flattened or hand-read
/// value), none at the top.
pub fn key_of(path: &serde_path_to_error::Path) -> Option<String> {
    let text = path.to_string();
    let known = text.split('?').next().unwrap_or("").trim_end_matches('.');
    // A value kept with its position (`Spanned`) adds its own `.value`: not the user's key.
    let known = known.strip_suffix(".value").unwrap_or(known);
    (!known.is_empty() && known != ".").then(|| known.to_string())
}

/// The first line of a serde-saphyr error, without its `error:` prefix and its position (which
/// the callers give their own way), and the key it was at in front.
pub fn yaml_message(e: &YamlError) -> String {
    let msg = e.error.to_string();
    let first = msg.lines().next().unwrap_or(&msg);
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let first = match first.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((pos, rest)) if pos.contains(" column ") => rest,
        _ => first,
    };
    // The parser's advice is for programs that call it (`set DuplicateKeyPolicy in Options`).
    let twice;
    let first = match first
        .strip_prefix("duplicate mapping key: ")
        .and_then(|rest| rest.split_once(", set DuplicateKeyPolicy"))
    {
        Some((name, _)) => {
            twice = format!("`{name}` is a duplicate key here: write each key once");
            twice.as_str()
        }
        None => first,
    };
    let first = plain_words(first);
    // A misspelt key or word: the known one it is closest to.
    let hint = ["unknown field `", "unknown variant `"]
        .iter()
        .find_map(|what| {
            let (_, rest) = first.split_once(what)?;
            let (wrong, rest) = rest.split_once('`')?;
            let (_, known) = rest.split_once("expected one of ")?;
            let known: Vec<&str> = known
                .split(',')
                .map(|k| k.trim().trim_matches('`'))
                .collect();
            Some(crate::suggest::hint(wrong, known))
        })
        .unwrap_or_default();
    let said = match e.key.as_deref() {
        // An unknown field's message names the field (the path ends with it): say where it
        // was found.
        Some(key) if first.starts_with("unknown field") => match key.rsplit_once('.') {
            Some((parent, _)) => format!("in `{parent}`: {first}"),
            None => first.to_string(),
        },
        Some(key) => format!("`{key}`: {first}"),
        None => first.to_string(),
    };
    format!("{said}{hint}")
}

/// The YAML parser's words for a value of the wrong shape (`expected sequence start`,
/// `invalid u64`), said in the words a config's reader uses; any other message as it is.
fn plain_words(message: &str) -> &str {
    match message {
        "expected sequence start" => "expected a list: `[a, b]`, or one `- item` per line",
        "expected mapping start" => "expected a map: `key: value` lines, or `{key: value}`",
        "expected string scalar" | "expected scalar" => {
            "expected one value (a word or a number), not a list or a map"
        }
        "externally tagged enum expected scalar or mapping" => "expected one word, not a list",
        // The parser says the same for `two`, `-1` and a number too big for the key.
        "invalid u8" | "invalid u16" | "invalid u32" | "invalid u64" | "invalid u128"
        | "invalid usize" => "expected a whole number, not negative and not too large",
        "invalid i8" | "invalid i16" | "invalid i32" | "invalid i64" | "invalid i128"
        | "invalid isize" => "expected a whole number, not too large",
        "invalid floating point" | "invalid f32" | "invalid f64" => "expected a number",
        m if m.starts_with("invalid boolean") => "expected `true` or `false`",
        other => other,
    }
}

/// The plain value that starts at 1-based `column` of `line` (up to a `,`, `}`, `]` or a
/// comment), at most 60 characters; `None` when there is none.
fn scalar_at(line: &str, column: u64) -> Option<String> {
    let rest: String = line
        .chars()
        .skip(usize::try_from(column).ok()?.checked_sub(1)?)
        .collect();
    let value = match rest.chars().next()? {
        q @ ('"' | '\'') => {
            let inner = &rest[1..];
            format!("{q}{}{q}", &inner[..inner.find(q)?])
        }
        _ => rest
            .split([',', '}', ']'])
            .next()?
            .split(" #")
            .next()?
            .trim()
            .to_string(),
    };
    (!value.is_empty()).then(|| value.chars().take(60).collect())
}

/// Formats a YAML error with its line and column and the key it was at.
pub fn yaml_error(e: &YamlError, text: &str) -> String {
    // serde-saphyr says `error: line L column C: what` and then draws the line; the caller puts
    // its own `error:` and the file name in front, so keep one line without the prefix.
    let message = yaml_message(e);
    let mut out = match e.error.location() {
        Some(loc) if loc.line() > 0 => {
            format!("line {} column {}: {message}", loc.line(), loc.column())
        }
        _ => message,
    };
    let e = &e.error;
    let line = e
        .location()
        .and_then(|l| text.lines().nth(l.line().saturating_sub(1) as usize))
        .unwrap_or("");
    // A value of the wrong kind: which value, so `concurrency: many` is not a riddle.
    let wrong_kind = [
        "expected a whole number",
        "expected a number",
        "expected `true` or `false`",
    ];
    if wrong_kind.iter().any(|w| out.contains(w))
        && let Some(loc) = e.location()
        && let Some(value) = scalar_at(line, loc.column())
    {
        out.push_str(&format!("; got `{}`", crate::terminal::printable(&value)));
    }
    // The most common mistake: a command written as one string, as in a shell.
    if let Some((_, value)) = line.split_once("command:")
        && let value = value.trim().trim_end_matches(['}', ']', ',', ' '])
        && (value.starts_with('"')
            || value.starts_with('\'')
            || value.chars().next().is_some_and(char::is_alphanumeric)
            || value.starts_with('/'))
    {
        // Split as the shell would have (quotes kept together); the YAML string's own quotes
        // go first.
        let unquoted = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        let words: Vec<String> = shlex::split(unquoted)
            .unwrap_or_else(|| unquoted.split_whitespace().map(str::to_string).collect())
            .iter()
            .map(|w| serde_json::to_string(w).unwrap_or_default())
            .collect();
        out.push_str(&format!(
            "; `command` is an argv list, never run through a shell: write `command: [{}]`",
            words.join(", ")
        ));
    }
    out
}
