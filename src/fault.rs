//! Faults injected on purpose, so tests can reach the paths that handle dirigent's own bugs (a
//! panic in the work of an attempt) and crashes at exact moments (between a record and the
//! work it announces), which nothing outside can cause on demand.
//!
//! A debug build reads `DIRIGENT_FAULT` once: a comma-separated list of `POINT:TASK` (the fault
//! `POINT` fires for the task `TASK` only, every time it is reached). A release build has none
//! of this: [`at`] is `false` and the variable is never read.

/// Whether the fault `point` is asked for at this place, for `task`.
pub fn at(point: &str, task: &str) -> bool {
    #[cfg(debug_assertions)]
    {
        static ASKED: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
        ASKED
            .get_or_init(|| parse(&std::env::var("DIRIGENT_FAULT").unwrap_or_default()))
            .iter()
            .any(|(p, t)| p == point && t == task)
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = (point, task);
        false
    }
}

#[cfg(debug_assertions)]
fn parse(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|one| one.trim().split_once(':'))
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect()
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::parse;

    #[test]
    fn a_fault_list_names_a_point_and_a_task_each() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("", &[]),
            ("attempt-panic:boom", &[("attempt-panic", "boom")]),
            (
                "attempt-panic:a, stall:b.1",
                &[("attempt-panic", "a"), ("stall", "b.1")],
            ),
            ("no-task-named", &[]),
        ];
        for (text, want) in cases {
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(p, t)| (p.to_string(), t.to_string()))
                .collect();
            assert_eq!(parse(text), want, "parsing `{text}`");
        }
    }
}
