//! A waiting task's spec, held as the JSON text it is written as, less what its record holds.
//!
//! Every unfinished task in the [`crate::state::TaskBook`] keeps its spec until it finishes, and
//! the tasks of a big drop (100,000 at once) wait a long time. As a struct a spec takes about
//! 600 bytes before its strings, most of them empty options; as text, a short task's takes about
//! 110, and about 60 without the id, title and chain its record holds anyway (a field is left out
//! only when it is the record's: a requeued task's new spec may differ). The text is parsed
//! again where a spec is used — an attempt starts, a result settles — which is rare next to how
//! long a task waits. A record writes its spec whole (see `TaskRecord`'s `Serialize`), so a
//! snapshot keeps the shape it had when the struct itself was written, and a packed spec read
//! from one is whole until the book packs it again (`TaskBook::share_after_read`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::task::{TaskFields, TaskSpec};

/// A [`TaskSpec`] as JSON text without the parts its record holds; always text that parses
/// (checked when it is read from a snapshot).
#[derive(Clone)]
pub struct PackedSpec(Box<RawValue>);

/// What the record of a spec holds itself: the packed text leaves these out when they match.
#[derive(Clone, Copy)]
pub struct Held<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub chain: &'a [String],
}

/// A spec as packed: the written form of [`TaskSpec`] with the held parts left out.
#[derive(Serialize)]
struct Packing<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chain: Option<&'a [String]>,
    #[serde(skip_serializing_if = "is_default_source")]
    chain_source: &'a str,
    fields: &'a TaskFields,
}

/// Most tasks take the configured default chain: its source is not written.
const DEFAULT_SOURCE: &str = "default";

fn is_default_source(source: &&str) -> bool {
    *source == DEFAULT_SOURCE
}

fn default_source() -> String {
    DEFAULT_SOURCE.to_string()
}

/// [`Packing`] as read: a whole spec reads too.
#[derive(Deserialize)]
struct Unpacking {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    chain: Option<Vec<String>>,
    #[serde(default = "default_source")]
    chain_source: String,
    fields: TaskFields,
}

impl PackedSpec {
    /// `spec` as text, without what `held` has the same.
    pub fn pack(spec: &TaskSpec, held: Held<'_>) -> Self {
        // The prompt as `TaskSpec` writes it: left out when it is the file's own.
        let prompt_in_fields = spec.fields.prompt.as_deref().unwrap_or("") == spec.prompt;
        let packing = Packing {
            id: (spec.id != held.id).then_some(spec.id.as_str()),
            title: (spec.title != held.title).then_some(spec.title.as_str()),
            prompt: (!prompt_in_fields).then_some(spec.prompt.as_str()),
            chain: (spec.chain[..] != *held.chain).then_some(&spec.chain[..]),
            chain_source: &spec.chain_source,
            fields: &spec.fields,
        };
        PackedSpec(serde_json::value::to_raw_value(&packing).expect("a spec serialises"))
    }

    /// The spec, parsed, with what its record holds put back.
    pub fn unpack(&self, held: Held<'_>) -> Arc<TaskSpec> {
        let u: Unpacking = serde_json::from_str(self.0.get())
            .expect("a packed spec parses: it was checked when it was made");
        Arc::new(TaskSpec {
            id: u.id.unwrap_or_else(|| held.id.to_string()),
            title: u.title.unwrap_or_else(|| held.title.to_string()),
            prompt: u
                .prompt
                .unwrap_or_else(|| u.fields.prompt.clone().unwrap_or_default()),
            chain: u.chain.unwrap_or_else(|| held.chain.to_vec()),
            chain_source: u.chain_source,
            fields: u.fields,
        })
    }

    /// Its size in bytes (the text held).
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    /// Never empty: the text is a JSON object.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The workflow a run runs, without parsing the rest (dispatch asks on every round).
    pub fn workflow(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Peek {
            fields: PeekFields,
        }
        #[derive(Deserialize)]
        struct PeekFields {
            #[serde(default)]
            workflow: Option<String>,
        }
        serde_json::from_str::<Peek>(self.0.get())
            .ok()
            .and_then(|p| p.fields.workflow)
    }
}

impl std::fmt::Debug for PackedSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.get())
    }
}

impl<'de> Deserialize<'de> for PackedSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        // Checked here, once, so that `unpack` never meets text that does not parse.
        serde_json::from_str::<Unpacking>(raw.get()).map_err(serde::de::Error::custom)?;
        Ok(PackedSpec(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(fields: &str) -> TaskSpec {
        serde_json::from_str(&format!(
            r#"{{"id":"t1","title":"x","chain":["a"],"chain_source":"default","fields":{fields}}}"#
        ))
        .unwrap()
    }

    fn chain(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn packs_without_what_the_record_holds_and_unpacks_whole() {
        let a = chain(&["a"]);
        let b = chain(&["b"]);
        let held = |id, title, chain| Held { id, title, chain };
        // (fields, what the record holds, the packed text, the workflow it names)
        let cases: [(&str, Held, &str, Option<&str>); 5] = [
            (
                r#"{"prompt":"p"}"#,
                held("t1", "x", &a),
                r#"{"fields":{"prompt":"p"}}"#,
                None,
            ),
            (
                r#"{"workflow":"review"}"#,
                held("t1", "x", &a),
                r#"{"fields":{"workflow":"review"}}"#,
                Some("review"),
            ),
            // What the record holds differently is kept (a requeued task's new spec).
            (
                r#"{"prompt":"p"}"#,
                held("t1", "old title", &a),
                r#"{"title":"x","fields":{"prompt":"p"}}"#,
                None,
            ),
            (
                r#"{"prompt":"p"}"#,
                held("t2", "x", &b),
                r#"{"id":"t1","chain":["a"],"fields":{"prompt":"p"}}"#,
                None,
            ),
            // A prompt that is not the file's own is kept too.
            (
                r#"{"workflow":"w","prompt":"q"}"#,
                held("t1", "x", &a),
                r#"{"fields":{"prompt":"q","workflow":"w"}}"#,
                Some("w"),
            ),
        ];
        for (fields, held, text, workflow) in cases {
            let s = spec(fields);
            let packed = PackedSpec::pack(&s, held);
            assert_eq!(format!("{packed:?}"), text, "{fields}: the packed text");
            assert_eq!(*packed.unpack(held), s, "{fields}: back whole");
            assert_eq!(
                packed.workflow().as_deref(),
                workflow,
                "{fields}: its workflow"
            );
        }
        let mut s = spec(r#"{"prompt":"p"}"#);
        s.prompt = "set apart from the file's".into();
        s.chain_source = "role:reviewer".into();
        let packed = PackedSpec::pack(&s, held("t1", "x", &a));
        assert_eq!(
            *packed.unpack(held("t1", "x", &a)),
            s,
            "a prompt apart from the fields and a chain source other than the default are kept: \
             {packed:?}"
        );
    }

    #[test]
    fn reads_a_whole_spec_and_checks_it() {
        #[derive(Deserialize)]
        struct Holder {
            spec: PackedSpec,
        }
        let s = spec(r#"{"prompt":"p"}"#);
        let json = format!("{{\"spec\":{}}}", serde_json::to_string(&s).unwrap());
        let other = chain(&["z"]);
        let elsewhere = Held {
            id: "t9",
            title: "y",
            chain: &other,
        };
        let back: Holder = serde_json::from_str(&json).unwrap();
        assert_eq!(
            *back.spec.unpack(elsewhere),
            s,
            "a whole spec (a snapshot's) reads back as itself"
        );
        // `dirigent status` reads the daemon's answer through a `serde_json::Value`.
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let back: Holder = serde_json::from_value(value).unwrap();
        assert_eq!(
            *back.spec.unpack(elsewhere),
            s,
            "read back from a JSON value"
        );
        let err = serde_json::from_str::<Holder>(r#"{"spec":{"id":3}}"#)
            .err()
            .expect("a spec that does not parse is refused when read");
        assert!(err.to_string().contains("invalid type"), "{err}");
    }
}
