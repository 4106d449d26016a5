//! The ids of archived tasks — finished tasks the book keeps only as id → [`Outcome`] — packed
//! back to back in one string.
//!
//! A task is archived when it finishes, in the middle of a burst, so each id held as a string
//! of its own is a small allocation among the queued tasks' records. Once those records are
//! freed, the ids stay scattered one or two to a page, and the pages cannot be given back: a
//! daemon that ran a big drop kept well over a hundred megabytes it no longer used. Here the
//! newest ids wait in a small map and are merged, a few thousand at a time and whenever the
//! daemon gives memory back, into one sorted string with an index of spans, looked up by binary
//! search. Written (in a snapshot) as the map `{id: outcome}` it always was.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::Outcome;

/// The recent map is merged into the packed ids once it holds this many, or an eighth of the
/// packed ids if that is more: each merge copies every id once, so merging at a fixed size
/// would make a long history's archiving quadratic.
const MERGE_AT: usize = 4096;

#[derive(Default, Debug)]
pub struct Archive {
    /// Archived since the last merge.
    recent: HashMap<Box<str>, Outcome>,
    /// Every other id, sorted, back to back.
    text: String,
    /// Where each id of `text` is, in the same order.
    spans: Vec<Span>,
}

#[derive(Clone, Copy, Debug)]
struct Span {
    start: usize,
    len: u32,
    outcome: Outcome,
}

impl Archive {
    pub fn get(&self, id: &str) -> Option<Outcome> {
        if let Some(o) = self.recent.get(id) {
            return Some(*o);
        }
        self.spans
            .binary_search_by(|s| self.id_of(s).cmp(id))
            .ok()
            .map(|i| self.spans[i].outcome)
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    pub fn insert(&mut self, id: Box<str>, outcome: Outcome) {
        self.recent.insert(id, outcome);
        if self.recent.len() >= MERGE_AT.max(self.spans.len() / 8) {
            self.merge();
        }
    }

    pub fn len(&self) -> usize {
        self.recent.len() + self.spans.len()
    }

    /// Folds the recent ids into the packed ones, in allocations of exactly the size needed.
    pub fn compact(&mut self) {
        self.merge();
    }

    fn id_of(&self, s: &Span) -> &str {
        &self.text[s.start..s.start + s.len as usize]
    }

    /// Every id and its outcome, sorted by id (a recent one wins over a packed one): one pass
    /// over the packed ids and the recent ones, both in order.
    fn sorted(&self) -> impl Iterator<Item = (&str, Outcome)> {
        let mut recent: Vec<(&str, Outcome)> =
            self.recent.iter().map(|(id, o)| (&**id, *o)).collect();
        recent.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut recent = recent.into_iter().peekable();
        let mut packed = self
            .spans
            .iter()
            .map(|s| (self.id_of(s), s.outcome))
            .peekable();
        std::iter::from_fn(move || match (packed.peek(), recent.peek()) {
            (Some(p), Some(r)) if p.0 < r.0 => packed.next(),
            (Some(p), Some(r)) if p.0 == r.0 => {
                packed.next();
                recent.next()
            }
            (_, Some(_)) => recent.next(),
            (Some(_), None) => packed.next(),
            (None, None) => None,
        })
    }

    /// Folds the recent ids into the packed ones, in allocations of exactly the size needed.
    fn merge(&mut self) {
        if self.recent.is_empty() {
            return;
        }
        let room = self.text.len() + self.recent.keys().map(|id| id.len()).sum::<usize>();
        let mut text = String::with_capacity(room);
        let mut spans = Vec::with_capacity(self.spans.len() + self.recent.len());
        for (id, outcome) in self.sorted() {
            spans.push(Span {
                start: text.len(),
                // Task ids are names of at most a few hundred bytes.
                len: u32::try_from(id.len()).expect("a task id fits in 4 GB"),
                outcome,
            });
            text.push_str(id);
        }
        self.text = text;
        self.spans = spans;
        self.recent = HashMap::new();
    }
}

impl Serialize for Archive {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.sorted())
    }
}

impl<'de> Deserialize<'de> for Archive {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = HashMap::<Box<str>, Outcome>::deserialize(d)?;
        let mut archive = Archive {
            recent: map,
            ..Default::default()
        };
        archive.merge();
        Ok(archive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_found_before_and_after_each_merge() {
        let mut a = Archive::default();
        let n = MERGE_AT * 2 + 10;
        for i in 0..n {
            let outcome = if i % 3 == 0 {
                Outcome::Failed
            } else {
                Outcome::Done
            };
            a.insert(format!("t{i}").into_boxed_str(), outcome);
            // Every earlier id still answers, whichever part holds it.
            for j in [0, i / 2, i] {
                let want = if j % 3 == 0 {
                    Outcome::Failed
                } else {
                    Outcome::Done
                };
                assert_eq!(
                    a.get(&format!("t{j}")),
                    Some(want),
                    "t{j} after {i} inserts"
                );
            }
        }
        assert_eq!(a.len(), n, "every id counted once");
        assert!(
            a.recent.len() < MERGE_AT,
            "the recent map is merged once it is full"
        );
        for missing in ["t", "t-1", &format!("t{n}"), "", "u0"] {
            assert_eq!(a.get(missing), None, "`{missing}` was never archived");
        }
        a.compact();
        assert_eq!(
            (a.recent.len(), a.spans.len(), a.get("t1")),
            (0, n, Some(Outcome::Done)),
            "a compacted archive holds everything packed"
        );
    }

    #[test]
    fn an_id_archived_again_keeps_one_entry_with_the_newest_outcome() {
        let mut a = Archive::default();
        a.insert("a".into(), Outcome::Failed);
        a.compact();
        a.insert("a".into(), Outcome::Done);
        assert_eq!(a.get("a"), Some(Outcome::Done), "the recent outcome wins");
        a.compact();
        assert_eq!(
            (a.len(), a.get("a")),
            (1, Some(Outcome::Done)),
            "merged into one entry"
        );
    }

    #[test]
    fn written_and_read_as_a_map() {
        let mut a = Archive::default();
        a.insert("b".into(), Outcome::Done);
        a.compact();
        a.insert("a".into(), Outcome::Failed);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, r#"{"a":"failed","b":"done"}"#, "one map, sorted");
        let back: Archive = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (back.get("a"), back.get("b"), back.len()),
            (Some(Outcome::Failed), Some(Outcome::Done), 2),
            "read back"
        );
    }
}
