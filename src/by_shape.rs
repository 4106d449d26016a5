//! Reading a value the user may write in more than one shape — a word, a list or a map — each
//! shape as its own type.
//!
//! serde's `untagged` tries every form in turn and, when none fits, says only "data did not
//! match any variant of untagged enum X". Here the shape decides the form, so a mistake gets
//! that form's own error (`unknown field `chain``, `missing field `agents``), and a shape that
//! no form takes gets the caller's words for what it expected. Used by config (roles, the
//! fleet's roster), `verify` and workflow files.

use std::marker::PhantomData;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Unexpected, Visitor};

/// What each shape is read as; `None`: that shape is refused with `expecting`.
pub struct Shapes<T, L, M> {
    /// What the value may be, for the error when it is none of them (`a role: …`).
    pub expecting: &'static str,
    pub word: Option<fn(String) -> T>,
    pub list: Option<fn(L) -> T>,
    pub map: Option<fn(M) -> T>,
}

/// Reads `d` by its shape (see [`Shapes`]).
pub fn read<'de, D, T, L, M>(d: D, shapes: Shapes<T, L, M>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    L: Deserialize<'de>,
    M: Deserialize<'de>,
{
    d.deserialize_any(ShapeVisitor(shapes, PhantomData))
}

/// A word or a list.
pub fn word_or_list<'de, D, T, L>(
    d: D,
    expecting: &'static str,
    word: fn(String) -> T,
    list: fn(L) -> T,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    L: Deserialize<'de>,
{
    read::<D, T, L, ()>(
        d,
        Shapes {
            expecting,
            word: Some(word),
            list: Some(list),
            map: None,
        },
    )
}

struct ShapeVisitor<'de, T, L, M>(Shapes<T, L, M>, PhantomData<&'de ()>);

impl<'de, T, L, M> Visitor<'de> for ShapeVisitor<'de, T, L, M>
where
    L: Deserialize<'de>,
    M: Deserialize<'de>,
{
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.0.expecting)
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<T, E> {
        match self.0.word {
            Some(word) => Ok(word(v.to_string())),
            None => Err(E::invalid_type(Unexpected::Str(v), &self)),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        match self.0.list {
            Some(list) => L::deserialize(SeqAccessDeserializer::new(seq)).map(list),
            None => Err(A::Error::invalid_type(Unexpected::Seq, &self)),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        match self.0.map {
            Some(of) => M::deserialize(MapAccessDeserializer::new(map)).map(of),
            None => Err(A::Error::invalid_type(Unexpected::Map, &self)),
        }
    }
}
