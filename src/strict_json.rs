//! JSON that says one thing: an object with a key written twice is refused, at any depth.
//!
//! `serde_json` keeps the last of two equal keys in a map (`vars`, a chat request, an MCP
//! message) and refuses them only in a struct. A filter in front of a door that reads the first
//! one then sees another request than dirigent runs, so every door that reads JSON from outside
//! — task files, `POST /tasks`, a workflow run, a chat, MCP — checks with [`check`] before it
//! reads. Keys are compared after unescaping: `"a"` and `"\u0061"` are the same key.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value read only for its keys.
struct NoDuplicates;

impl<'de> Deserialize<'de> for NoDuplicates {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicates)
    }
}

impl<'de> Visitor<'de> for NoDuplicates {
    type Value = NoDuplicates;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(NoDuplicates)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(NoDuplicates)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(NoDuplicates)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(NoDuplicates)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(NoDuplicates)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(NoDuplicates)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<NoDuplicates>()?.is_some() {}
        Ok(NoDuplicates)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                // The value is not read: the error stops the parse here.
                let shown: String = key.chars().take(60).collect();
                return Err(de::Error::custom(format!(
                    "the key `{shown}` is written twice in one object; write each key once"
                )));
            }
            map.next_value::<NoDuplicates>()?;
        }
        Ok(NoDuplicates)
    }
}

/// Refuses a JSON text that holds an object with a key written twice. Other faults (not JSON,
/// trailing text) are left to the parse that follows, which words them for its door: this says
/// `Ok` for them.
pub fn check(text: &[u8]) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(text);
    match NoDuplicates::deserialize(&mut de) {
        Err(e) if e.classify() == serde_json::error::Category::Data => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn a_key_written_twice_is_refused_at_any_depth() {
        // (text, refused?)
        let cases: &[(&str, bool)] = &[
            (r#"{"a": 1, "b": 2}"#, false),
            (r#"{"a": 1, "a": 2}"#, true),
            (r#"{"a": 1, "\u0061": 2}"#, true),
            (r#"{"vars": {"x": "1", "x": "2"}}"#, true),
            (r#"[{"m": 1}, {"m": 2}]"#, false),
            (r#"{"l": [{"k": 1, "k": 1}]}"#, true),
            (r#"{"a": {"a": {"a": 1}}}"#, false),
            // Not JSON: left to the door's own parse and its words.
            (r#"{"a": "#, false),
            ("not json", false),
        ];
        for (text, refused) in cases {
            let got = check(text.as_bytes());
            assert_eq!(got.is_err(), *refused, "{text}: {got:?}");
            if let Err(e) = got {
                assert!(
                    e.to_string().contains("is written twice in one object"),
                    "{text}: {e}"
                );
            }
        }
    }
}
