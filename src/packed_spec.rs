//! A waiting task's spec, held as the JSON text it is written as.
//!
//! Every unfinished task in the [`crate::state::TaskBook`] keeps its spec until it finishes, and
//! the tasks of a big drop (100,000 at once) wait a long time. As a struct a spec takes about
//! 600 bytes before its strings, most of them empty options; as text, a short task's takes about
//! 150. The text is parsed again where a spec is used — an attempt starts, a result settles —
//! which is rare next to how long a task waits. It goes into a snapshot as the object it is, so
//! the snapshot keeps the shape it had when the struct itself was written.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::task::TaskSpec;

/// A [`TaskSpec`] as its JSON text; always text that parses as one (checked when it is read
/// from a snapshot).
#[derive(Clone)]
pub struct PackedSpec(Box<RawValue>);

impl PackedSpec {
    pub fn pack(spec: &TaskSpec) -> Self {
        PackedSpec(serde_json::value::to_raw_value(spec).expect("a spec serialises"))
    }

    /// The spec, parsed.
    pub fn unpack(&self) -> Arc<TaskSpec> {
        Arc::new(
            serde_json::from_str(self.0.get())
                .expect("a packed spec parses: it was checked when it was made"),
        )
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

impl Serialize for PackedSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for PackedSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        // Checked here, once, so that `unpack` never meets text that does not parse.
        serde_json::from_str::<TaskSpec>(raw.get()).map_err(serde::de::Error::custom)?;
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

    #[test]
    fn packs_unpacks_and_peeks() {
        // (fields, the workflow it names)
        let cases = [
            (r#"{"prompt":"p"}"#, None),
            (r#"{"workflow":"review"}"#, Some("review")),
        ];
        for (fields, workflow) in cases {
            let s = spec(fields);
            let packed = PackedSpec::pack(&s);
            assert_eq!(*packed.unpack(), s, "{fields} back whole");
            assert_eq!(
                packed.workflow().as_deref(),
                workflow,
                "{fields}: its workflow"
            );
            let text = format!("{packed:?}");
            assert!(text.len() < 200, "{fields} is small as text: {text}");
        }
    }

    #[test]
    fn written_as_the_object_itself_and_checked_when_read() {
        #[derive(Serialize, Deserialize)]
        struct Holder {
            spec: PackedSpec,
        }
        let s = spec(r#"{"prompt":"p"}"#);
        let json = serde_json::to_string(&Holder {
            spec: PackedSpec::pack(&s),
        })
        .unwrap();
        assert_eq!(
            json,
            format!("{{\"spec\":{}}}", serde_json::to_string(&s).unwrap()),
            "the same text as the struct written directly"
        );
        let back: Holder = serde_json::from_str(&json).unwrap();
        assert_eq!(*back.spec.unpack(), s, "read back");
        // `dirigent status` reads the daemon's answer through a `serde_json::Value`.
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let back: Holder = serde_json::from_value(value).unwrap();
        assert_eq!(*back.spec.unpack(), s, "read back from a JSON value");
        let err = serde_json::from_str::<Holder>(r#"{"spec":{"id":3}}"#)
            .err()
            .expect("a spec that does not parse is refused when read");
        assert!(err.to_string().contains("invalid type"), "{err}");
    }
}
