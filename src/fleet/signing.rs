//! Signed messages: with `cluster.nodes` (the fleet's roster, each node's name and public
//! nkey), every node signs what others act on with its own nkey seed, and checks what it reads
//! against the roster. This is what ties a message to its node: the server's permissions
//! cannot (a request's reply subject is not checked against them, so a node can have the
//! server write onto another node's subjects — docs/cluster.md, "Signed messages").
//!
//! What is signed, and over what (a signature covers a context naming where the message
//! belongs, then its bytes, so it cannot be moved elsewhere):
//! - a task on the queue: `task <subject>` + the payload, in the headers `Dirigent-Signer` and
//!   `Dirigent-Signature`; its message id is derived from a signature too, so no other node
//!   can guess it and make the real publish a "duplicate";
//! - an outcome: `outcome <key>` + the outcome, in an envelope in the bucket's value;
//! - a heartbeat: `heartbeat <key>` + the heartbeat, in the same envelope;
//! - a batch of records on the events stream: `events <subject>` + the batch, in headers;
//! - a provider word (`provider <key>`) and a worker's start count (`starts <key>`), in the
//!   envelope.
//!
//! Without a roster nothing is signed and nothing is checked, as before.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// The header naming the node that signed a message.
const SIGNER_HEADER: &str = "Dirigent-Signer";
/// The header holding the signature (hex).
const SIGNATURE_HEADER: &str = "Dirigent-Signature";

/// What a node of the roster may answer for.
#[derive(Debug, Clone, PartialEq)]
pub enum Works {
    /// It only submits: no outcome, start count or spending of its counts.
    No,
    /// It runs every agent's tasks.
    All,
    /// It runs these agents' tasks: an outcome it signs names one of them.
    Agents(Vec<String>),
}

/// One node of the roster.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Its public nkey (`U…`).
    pub key: String,
    pub works: Works,
}

/// The fleet's roster, by node name (`cluster.nodes`).
pub type Roster = BTreeMap<String, Member>;

/// A roster entry as written: `name: UKEY` (a node that only submits), or
/// `name: {key: UKEY, works: all | [agent, …]}`.
#[derive(Debug)]
pub enum RawMember {
    Key(String),
    Full(RawMemberFull),
}

/// A roster entry written as a map.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMemberFull {
    key: String,
    #[serde(default)]
    works: Option<RawWorks>,
}

#[derive(Debug)]
pub enum RawWorks {
    Word(String),
    Agents(Vec<String>),
}

// Both read by shape (`by_shape`), not `untagged`: each form gets its own error (`unknown field
// `wroks``, `missing field `key``), and a map's unknown key is refused instead of dropped.
impl<'de> Deserialize<'de> for RawMember {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::by_shape::read(
            d,
            crate::by_shape::Shapes {
                expecting: "a node's public key (`UABC…`) or `{key: UABC…, works: all}`",
                word: Some(RawMember::Key),
                list: None::<fn(()) -> RawMember>,
                map: Some(RawMember::Full),
            },
        )
    }
}

impl<'de> Deserialize<'de> for RawWorks {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::by_shape::word_or_list(
            d,
            "`all` or a list of the agents the node runs",
            RawWorks::Word,
            RawWorks::Agents,
        )
    }
}

/// This node's key and the fleet's roster.
pub struct Signing {
    me: String,
    pair: nkeys::KeyPair,
    roster: HashMap<String, (nkeys::KeyPair, Works)>,
}

impl std::fmt::Debug for Signing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signing")
            .field("me", &self.me)
            .field("roster", &self.roster.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Signing {
    /// From this node's seed and the roster; `Err` says what does not fit (the roster was
    /// checked when the config was read: names, keys, this node listed).
    pub fn new(me: &str, seed: &str, roster: &Roster) -> Result<Signing, String> {
        let pair = nkeys::KeyPair::from_seed(seed.trim())
            .map_err(|e| format!("`cluster.nkey` does not hold an nkey seed: {e}"))?;
        let listed = roster
            .get(me)
            .ok_or_else(|| format!("`cluster.nodes` does not list this node, `{me}`"))?;
        if pair.public_key() != listed.key {
            return Err(format!(
                "`cluster.nodes` gives `{me}` the key `{}`, but `cluster.nkey` holds the seed of `{}`",
                listed.key,
                pair.public_key()
            ));
        }
        let mut keys = HashMap::new();
        for (name, member) in roster {
            let public = nkeys::KeyPair::from_public_key(&member.key).map_err(|e| {
                format!(
                    "`cluster.nodes.{name}`: `{}` is not a public nkey: {e}",
                    member.key
                )
            })?;
            keys.insert(name.clone(), (public, member.works.clone()));
        }
        Ok(Signing {
            me: me.to_string(),
            pair,
            roster: keys,
        })
    }

    /// What `node` may answer for (`None`: not a node of the roster).
    pub fn works(&self, node: &str) -> Option<&Works> {
        self.roster.get(node).map(|(_, w)| w)
    }

    /// This node's signature of `body` in `context`, in hex.
    pub fn sign(&self, context: &str, body: &[u8]) -> String {
        let signature = self
            .pair
            .sign(&signed_bytes(context, body))
            .expect("a key pair made from a seed signs");
        hex(&signature)
    }

    /// Whether `signature` is `signer`'s, a node of the roster, of `body` in `context`.
    pub fn verify(&self, signer: &str, context: &str, body: &[u8], signature: &str) -> bool {
        let Some((key, _)) = self.roster.get(signer) else {
            return false;
        };
        let Some(signature) = unhex(signature) else {
            return false;
        };
        key.verify(&signed_bytes(context, body), &signature).is_ok()
    }

    /// The headers that sign `body` in `context` as this node's (a task on the queue, a batch
    /// of records on the events stream).
    pub fn headers(&self, context: &str, body: &[u8]) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(SIGNER_HEADER, self.me.as_str());
        headers.insert(SIGNATURE_HEADER, self.sign(context, body).as_str());
        headers
    }

    /// Whether `headers` (see [`Self::headers`]) sign `body` in `context` as `node`'s.
    pub fn signed_by(
        &self,
        node: &str,
        headers: Option<&async_nats::HeaderMap>,
        context: &str,
        body: &[u8],
    ) -> bool {
        let header = |name: &str| headers?.get(name).map(|v| v.as_str());
        match (header(SIGNER_HEADER), header(SIGNATURE_HEADER)) {
            (Some(signer), Some(signature)) => {
                signer == node && self.verify(signer, context, body, signature)
            }
            _ => false,
        }
    }

    /// The message id of a task published under `key`: the same on every publish of it (a
    /// signature by this node's key is deterministic), and unguessable by other nodes.
    pub fn message_id(&self, key: &str) -> String {
        let signature = self.sign("message-id", key.as_bytes());
        format!("{}.{}", self.me, &signature[..32])
    }
}

fn signed_bytes(context: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(context.len() + 1 + body.len());
    out.extend_from_slice(context.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || text.len() > 256 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A bucket value with its signer and signature.
#[derive(Serialize, Deserialize)]
struct Envelope<'a> {
    signer: String,
    signature: String,
    #[serde(borrow)]
    body: &'a serde_json::value::RawValue,
}

/// The value to put in a bucket: `body` (JSON) as it is, or signed in an envelope.
pub fn seal(signing: Option<&Signing>, context: &str, body: Vec<u8>) -> Vec<u8> {
    let Some(signing) = signing else {
        return body;
    };
    let signature = signing.sign(context, &body);
    let raw = String::from_utf8(body).expect("JSON is UTF-8");
    let raw = serde_json::value::RawValue::from_string(raw).expect("the body is JSON");
    serde_json::to_vec(&Envelope {
        signer: signing.me.clone(),
        signature,
        body: &raw,
    })
    .expect("an envelope serialises")
}

/// What a bucket value holds, and who signed it. With a roster, only a value signed by a node
/// of the roster for `context` is taken (`Err`: why not); without one, the body of an envelope
/// or the value as it is (signer `None`).
pub fn open<'a>(
    signing: Option<&Signing>,
    context: &str,
    value: &'a [u8],
) -> Result<(Option<String>, &'a [u8]), String> {
    let envelope = serde_json::from_slice::<Envelope>(value).ok();
    match (signing, envelope) {
        (None, Some(e)) => Ok((None, e.body.get().as_bytes())),
        (None, None) => Ok((None, value)),
        (Some(_), None) => Err("it is not signed".into()),
        (Some(s), Some(e)) => {
            let body = e.body.get().as_bytes();
            if s.verify(&e.signer, context, body, &e.signature) {
                Ok((Some(e.signer), body))
            } else if s.roster.contains_key(&e.signer) {
                Err(format!("its signature is not `{}`'s", e.signer))
            } else {
                Err(format!("`{}` is not a node of `cluster.nodes`", e.signer))
            }
        }
    }
}

/// A roster as the config gives it, checked: node names, public user keys, what each works.
pub fn parse_roster(raw: BTreeMap<String, RawMember>) -> Result<Roster, String> {
    let mut roster = Roster::new();
    for (name, member) in raw {
        if crate::config::validate_name(&name).is_err() || name.contains('.') {
            return Err(format!(
                "`cluster.nodes`: `{name}` is not a node name (letters, digits, `-` and `_`)"
            ));
        }
        let (key, works) = match member {
            RawMember::Key(key) => (key, Works::No),
            RawMember::Full(RawMemberFull { key, works }) => {
                let works = match works {
                    None => Works::No,
                    Some(RawWorks::Word(w)) if w == "all" => Works::All,
                    Some(RawWorks::Word(w)) => {
                        return Err(format!(
                            "`cluster.nodes.{name}.works`: `{w}`: write `all`, or a list of the agents it runs"
                        ));
                    }
                    Some(RawWorks::Agents(agents)) => {
                        if let Some(bad) = agents
                            .iter()
                            .find(|a| crate::config::validate_name(a).is_err())
                        {
                            return Err(format!(
                                "`cluster.nodes.{name}.works`: `{bad}` is not an agent name"
                            ));
                        }
                        Works::Agents(agents)
                    }
                };
                (key, works)
            }
        };
        let user = key.starts_with('U') && nkeys::KeyPair::from_public_key(&key).is_ok();
        if !user {
            return Err(format!(
                "`cluster.nodes.{name}`: `{key}` is not a user's public nkey (`U…`, 56 characters)"
            ));
        }
        roster.insert(name, Member { key, works });
    }
    Ok(roster)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> (Signing, Signing, nkeys::KeyPair) {
        let (a, b, stranger) = (
            nkeys::KeyPair::new_user(),
            nkeys::KeyPair::new_user(),
            nkeys::KeyPair::new_user(),
        );
        let roster: Roster = [
            (
                "desk".to_string(),
                Member {
                    key: a.public_key(),
                    works: Works::No,
                },
            ),
            (
                "gpu".to_string(),
                Member {
                    key: b.public_key(),
                    works: Works::Agents(vec!["alpha".into()]),
                },
            ),
        ]
        .into();
        (
            Signing::new("desk", &a.seed().unwrap(), &roster).unwrap(),
            Signing::new("gpu", &b.seed().unwrap(), &roster).unwrap(),
            stranger,
        )
    }

    #[test]
    fn a_sealed_value_opens_only_for_its_context_and_signer() {
        let (desk, gpu, _) = fleet();
        let value = seal(
            Some(&gpu),
            "outcome desk.t=1",
            br#"{"worker":"gpu"}"#.to_vec(),
        );
        let (signer, body) = open(Some(&desk), "outcome desk.t=1", &value).unwrap();
        assert_eq!(signer.as_deref(), Some("gpu"), "the signer is named");
        assert_eq!(body, br#"{"worker":"gpu"}"#, "the body is as it was sealed");
        let cases: &[(&str, &[u8], &str)] = &[
            ("outcome desk.u=1", &value, "is not `gpu`'s"),
            ("outcome desk.t=1", br#"{"worker":"gpu"}"#, "is not signed"),
            (
                "outcome desk.t=1",
                &String::from_utf8(value.clone())
                    .unwrap()
                    .replace(r#""worker":"gpu""#, r#""worker":"evil""#)
                    .into_bytes(),
                "is not `gpu`'s",
            ),
            (
                "outcome desk.t=1",
                &String::from_utf8(value.clone())
                    .unwrap()
                    .replace(r#""signer":"gpu""#, r#""signer":"ghost""#)
                    .into_bytes(),
                "is not a node of `cluster.nodes`",
            ),
        ];
        for (context, value, why) in cases {
            let err = open(Some(&desk), context, value).unwrap_err();
            assert!(
                err.contains(why),
                "{context}: expected {why:?}, got {err:?}"
            );
        }
        // Without a roster, the body is read either way.
        assert_eq!(open(None, "x", &value).unwrap().1, br#"{"worker":"gpu"}"#);
        assert_eq!(open(None, "x", b"{}").unwrap().1, b"{}");
    }

    #[test]
    fn message_ids_are_stable_and_the_nodes_own() {
        let (desk, gpu, _) = fleet();
        let id = desk.message_id("desk.t=1");
        assert_eq!(id, desk.message_id("desk.t=1"), "the same on every publish");
        assert!(
            id.starts_with("desk.") && id.len() == "desk.".len() + 32,
            "{id}"
        );
        assert_ne!(
            id,
            gpu.message_id("desk.t=1"),
            "another node cannot make it"
        );
    }

    #[test]
    fn a_roster_that_does_not_fit_the_seed_is_refused_with_the_reason() {
        let (a, b) = (nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user());
        let roster =
            parse_roster([("desk".to_string(), RawMember::Key(a.public_key()))].into()).unwrap();
        let err = Signing::new("desk", &b.seed().unwrap(), &roster).unwrap_err();
        assert!(err.contains("holds the seed of"), "{err}");
        let err = Signing::new("gpu", &b.seed().unwrap(), &roster).unwrap_err();
        assert!(err.contains("does not list this node, `gpu`"), "{err}");
        let full = |works: Option<RawWorks>| {
            RawMember::Full(RawMemberFull {
                key: a.public_key(),
                works,
            })
        };
        let cases: Vec<(&str, RawMember, Result<Works, &str>)> = vec![
            ("desk", RawMember::Key(a.public_key()), Ok(Works::No)),
            ("desk", full(None), Ok(Works::No)),
            (
                "gpu",
                full(Some(RawWorks::Word("all".into()))),
                Ok(Works::All),
            ),
            (
                "gpu",
                full(Some(RawWorks::Agents(vec!["ollama".into()]))),
                Ok(Works::Agents(vec!["ollama".into()])),
            ),
            (
                "gpu",
                full(Some(RawWorks::Word("yes".into()))),
                Err("write `all`"),
            ),
            (
                "gpu",
                full(Some(RawWorks::Agents(vec!["a b".into()]))),
                Err("is not an agent name"),
            ),
            (
                "a.b",
                RawMember::Key(a.public_key()),
                Err("is not a node name"),
            ),
            (
                "desk",
                RawMember::Key("UNOTAKEY".into()),
                Err("is not a user's public nkey"),
            ),
            (
                "desk",
                RawMember::Key(a.seed().unwrap()),
                Err("is not a user's public nkey"),
            ),
        ];
        for (name, member, want) in cases {
            let got = parse_roster([(name.to_string(), member)].into());
            match (&want, got) {
                (Ok(works), Ok(r)) => assert_eq!(&r[name].works, works, "{name}"),
                (Err(why), Err(e)) => {
                    assert!(e.contains(why), "{name}: expected {why:?}, got {e:?}")
                }
                (_, got) => panic!("{name}: expected {want:?}, got {got:?}"),
            }
        }
    }
}
