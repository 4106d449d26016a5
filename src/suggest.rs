//! "Did you mean": the closest known name to a mistyped one, for error messages about unknown
//! agents, roles, workflows and commands' arguments.

/// The candidate closest to `name` by edit distance, when it is close enough to be a typo:
/// at most a third of the name's length (and at least one edit) away. Ties go to the first.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        if c == name {
            continue;
        }
        let d = distance(&name.to_lowercase(), &c.to_lowercase());
        if d <= limit && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// `; did you mean `x`?` for the close candidate, or nothing: the tail of an error message.
pub fn hint<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    did_you_mean(name, candidates)
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default()
}

/// Edit distance counting characters, where swapping two neighbours is one edit (the most
/// common typo: `alhpa`), i.e. the optimal-string-alignment distance.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_case_table() {
        let known = [
            "claude",
            "gemini",
            "codex",
            "reviewer",
            "feature-build",
            "alpha",
        ];
        let cases: &[(&str, Option<&str>)] = &[
            ("claud", Some("claude")),
            ("Gemini", Some("gemini")),
            ("reviewr", Some("reviewer")),
            ("feature-biuld", Some("feature-build")),
            ("codx", Some("codex")),
            ("godo", None),
            ("alhpa", Some("alpha")),
            ("xyz", None),
            ("c", None),
            ("claude", None),
        ];
        for (name, want) in cases {
            assert_eq!(did_you_mean(name, known), *want, "suggestion for {name:?}");
        }
    }
}
