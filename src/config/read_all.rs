//! Reading YAML written by people so that one mistake does not hide the others: an unknown key
//! or a value of the wrong kind is noted with its position, stepped over (the key blanked out,
//! an unknown word replaced by a known one, every other line left where it was) and the text
//! read again. `dirigent.yaml` and workflow files are both read this way; each caller turns the
//! problems into its own messages.

use super::{YamlError, from_yaml};

/// At most this many problems are collected: a file with more is not worth reading further.
const MOST: usize = 32;

/// What reading found: the value, when the text could be read once its problems were stepped
/// over, and the problems in the order they were met.
pub struct Collected<T> {
    /// Read with the stepped-over keys blanked out: `None` when a problem stopped reading.
    pub value: Option<T>,
    /// Every problem met, the one that stopped reading (if any) last.
    pub problems: Vec<Box<YamlError>>,
    /// A stepped-over problem was a value (not an unknown key): the value read lacks it or has
    /// a stand-in, so checks past reading would report what is not so.
    pub values_stepped_over: bool,
}

/// Reads `text` as a `T`, collecting the problems it can step over (see the module docs).
pub fn from_yaml_collecting<T: serde::de::DeserializeOwned>(text: &str) -> Collected<T> {
    let mut problems: Vec<Box<YamlError>> = Vec::new();
    let mut wrong_values: Vec<String> = Vec::new();
    let mut text = text.to_string();
    loop {
        let e = match from_yaml::<T>(&text) {
            Ok(value) => {
                return Collected {
                    value: Some(value),
                    problems,
                    values_stepped_over: !wrong_values.is_empty(),
                };
            }
            Err(e) => e,
        };
        let raw = e.error.to_string();
        if let Some(missing) = raw.split("missing field `").nth(1)
            && wrong_values
                .iter()
                .any(|w| missing.starts_with(&format!("{w}`")))
        {
            // Only missing because its wrong value was blanked: said already.
            return Collected {
                value: None,
                problems,
                values_stepped_over: true,
            };
        }
        let next = (problems.len() < MOST)
            .then(|| step_over(&text, &e, &raw))
            .flatten();
        // A map whose every key was stepped over reads as empty, and then as "not a map": that
        // is the stepping's doing, not a mistake of the text (its keys were reported).
        let emptied = e.key.as_deref().is_some_and(|k| {
            problems.iter().any(|p| {
                p.key
                    .as_deref()
                    .is_some_and(|pk| pk.starts_with(&format!("{k}.")))
            })
        });
        if !(emptied && next.is_some()) {
            problems.push(e);
        }
        match next {
            Some((stepped, wrong)) => {
                wrong_values.extend(wrong);
                text = stepped;
            }
            None => {
                return Collected {
                    value: None,
                    problems,
                    values_stepped_over: !wrong_values.is_empty(),
                };
            }
        }
    }
}

/// `text` with the problem `e` stepped over, and the key whose value was wrong (`None` for
/// an unknown key); `None` when it cannot be stepped over safely (a syntax error, a flow map).
fn step_over(text: &str, e: &YamlError, raw: &str) -> Option<(String, Option<String>)> {
    let loc = e.error.location()?;
    let (line, column) = (loc.line().max(1) as usize, loc.column().max(1) as usize);
    if raw.contains("unknown field `") {
        return Some((blank_key(text, line, column)?, None));
    }
    let name = e.key.as_deref().and_then(value_key)?;
    let (l, c) = key_of_value(text, line, column, name)?;
    // An unknown word is replaced by a known one rather than blanked: the key may be required
    // (`type`), and reading goes on past it.
    if let Some((wrong, known)) = stand_in(raw)
        && let Some(replaced) = replace_value(text, l, wrong, known)
    {
        return Some((replaced, Some(name.to_string())));
    }
    Some((blank_key(text, l, c)?, Some(name.to_string())))
}

/// `text` with the block-style key at `line`:`column` (1-based) and its value blanked out —
/// the key's line and the more indented lines under it made empty (a list item's dash kept), so
/// every other position stays where it was. `None` when the key is not at the start of its line
/// (a flow map), where blanking could change what the rest means.
fn blank_key(text: &str, line: usize, column: usize) -> Option<String> {
    let lines: Vec<&str> = text.split('\n').collect();
    let at = lines.get(line.checked_sub(1)?)?;
    let indent = column.checked_sub(1)?;
    let before = at.get(..indent)?;
    // A list item's first key (`- rounds: many`): the dash stays, and the item's other keys,
    // more indented below it, still make its map.
    let keep = match before.trim_end_matches(' ').strip_suffix('-') {
        Some(dash) if dash.chars().all(|c| c == ' ') && before.ends_with(' ') => {
            &at[..dash.len() + 1]
        }
        _ if before.chars().all(|c| c == ' ') => "",
        _ => return None,
    };
    // A key with nothing after its colon may hold a list written at its own indent
    // (`bogus:` then `- a`): those items are its value too.
    let bare = at[indent..]
        .split_once(':')
        .is_some_and(|(_, rest)| rest.split(" #").next().unwrap_or("").trim().is_empty());
    let mut out: Vec<&str> = lines.clone();
    out[line - 1] = keep;
    let mut blanked = vec![*at];
    for (i, l) in lines.iter().enumerate().skip(line) {
        let own = l.len() - l.trim_start_matches(' ').len();
        let item = own == indent && (l.trim() == "-" || l.trim_start().starts_with("- "));
        if l.trim().is_empty() || own > indent || (bare && item) {
            out[i] = "";
            blanked.push(l);
        } else {
            break;
        }
    }
    // An anchor (`&name`) defined there may be used elsewhere: blanked, every use would read as
    // a problem of its own.
    if blanked.iter().any(|l| holds_anchor(l)) {
        return None;
    }
    Some(out.join("\n"))
}

/// Whether a YAML line defines an anchor (`&name` after a space or at the start).
fn holds_anchor(line: &str) -> bool {
    let code = line.split(" #").next().unwrap_or(line);
    code.match_indices('&').any(|(i, _)| {
        let before_ok = i == 0 || code[..i].ends_with([' ', '[', '{', ',', '-', ':']);
        let after_ok = code[i + 1..]
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        before_ok && after_ok
    })
}

/// The key a value error is about, from its path (`phases[0].type.value` → `type`); `None`
/// for a list item or the top.
fn value_key(path: &str) -> Option<&str> {
    let path = path.strip_suffix(".value").unwrap_or(path);
    let last = path.rsplit('.').next()?;
    // An item of a list (`exit_codes[0]`): the list's key holds it.
    let last = last.split('[').next().unwrap_or(last);
    (!last.is_empty() && !last.contains(']')).then_some(last)
}

/// Where the key `name` holding the value at `line`:`column` (1-based) is written: on that line
/// before the value (`rounds: many`), or as the nearest less indented line above it (`agents:`
/// over a block). `None` when it is not found there — a syntax error, not a value.
fn key_of_value(text: &str, line: usize, column: usize, name: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.split('\n').collect();
    let key_at = |l: &str| -> Option<usize> {
        let rest = l.trim_start_matches(' ');
        let rest = rest
            .strip_prefix("- ")
            .map_or(rest, |r| r.trim_start_matches(' '));
        rest.strip_prefix(name)?
            .starts_with(':')
            .then(|| l.len() - rest.len() + 1)
    };
    let here = lines.get(line.checked_sub(1)?)?;
    if let Some(col) = key_at(here)
        && col < column
    {
        return Some((line, col));
    }
    let indent_of = |l: &str| l.len() - l.trim_start_matches(' ').len();
    let own = indent_of(here);
    let (i, above) = lines[..line - 1]
        .iter()
        .enumerate()
        .rev()
        .find(|(_, l)| !l.trim().is_empty() && indent_of(l) < own)?;
    key_at(above).map(|col| (i + 1, col))
}

/// For `unknown variant `x`, expected one of a, b`: the wrong word and the first known one.
fn stand_in(message: &str) -> Option<(&str, &str)> {
    let (_, rest) = message.split_once("unknown variant `")?;
    let (wrong, rest) = rest.split_once('`')?;
    let (_, known) = rest.split_once("expected one of ")?;
    let first = known.split([',', ' ', '\n']).find(|w| !w.is_empty())?;
    let first = first.trim_matches('`');
    (!first.is_empty() && !wrong.trim().is_empty()).then_some((wrong, first))
}

/// `text` with the value `wrong` after the key on `line` (1-based) replaced by `known`.
fn replace_value(text: &str, line: usize, wrong: &str, known: &str) -> Option<String> {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let l = lines.get_mut(line.checked_sub(1)?)?;
    let colon = l.find(':')?;
    let at = colon + l[colon..].find(wrong)?;
    l.replace_range(at..at + wrong.len(), known);
    Some(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_blanked_with_what_is_under_it_and_positions_kept() {
        let text = "a: 1\nb:\n  c: 2\n  d: 3\ne: 4\n";
        assert_eq!(blank_key(text, 2, 1).as_deref(), Some("a: 1\n\n\n\ne: 4\n"));
        // A list item's first key keeps the dash; its siblings stay.
        let text = "- x: 1\n  y: 2\n";
        assert_eq!(blank_key(text, 1, 3).as_deref(), Some("-\n  y: 2\n"));
        // Inside a flow map: not blanked.
        assert_eq!(blank_key("{ x: 1, y: 2 }\n", 1, 9), None);
        // A list at the key's own indent is its value.
        assert_eq!(
            blank_key("a:\n- 1\n- 2\nb: 3\n", 1, 1).as_deref(),
            Some("\n\n\nb: 3\n")
        );
        // An anchor there would leave its aliases dangling: not stepped over.
        assert_eq!(blank_key("a: &t soon\nb: *t\n", 1, 1), None);
        assert!(!holds_anchor("cmd: [a&b]") && holds_anchor("- &x 1"));
    }

    #[test]
    fn the_key_of_a_value_is_found_on_its_line_or_above_it() {
        let text = "p:\n  - rounds: many\n    agents:\n      nested: 1\n";
        assert_eq!(key_of_value(text, 2, 13, "rounds"), Some((2, 5)));
        assert_eq!(key_of_value(text, 4, 7, "agents"), Some((3, 5)));
        assert_eq!(key_of_value(text, 4, 7, "other"), None);
        assert_eq!(value_key("phases[0].type.value"), Some("type"));
        assert_eq!(value_key("agents.a.exit_codes[0]"), Some("exit_codes"));
    }

    #[test]
    fn an_unknown_word_has_a_stand_in() {
        assert_eq!(
            stand_in("unknown variant `sigle`, expected one of single, ensemble"),
            Some(("sigle", "single"))
        );
        assert_eq!(stand_in("unknown variant ``, expected one of a"), None);
        assert_eq!(
            replace_value("    type: sigle # the type\n", 1, "sigle", "single").as_deref(),
            Some("    type: single # the type\n")
        );
    }
}
