//! The book's tasks by id: each boxed [`TaskRecord`], found by the id it holds itself.
//!
//! A `HashMap<Arc<str>, Box<TaskRecord>>` kept the id beside the record in every slot: 24 bytes
//! a slot, and a table has a slot for every task (a third more while it is not full). Here a
//! slot is the record's box alone, 8 bytes, and the record's own `id` is the key: 2 MB less at
//! 100,000 waiting tasks. Written (in a snapshot) as the map `{id: record}` it always was.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;
use serde::{Deserialize, Serialize};

use super::TaskRecord;

#[derive(Default)]
pub struct TaskTable {
    records: HashTable<Box<TaskRecord>>,
    hasher: RandomState,
}

impl TaskTable {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn get(&self, id: &str) -> Option<&TaskRecord> {
        self.records
            .find(self.hasher.hash_one(id), |t| &*t.id == id)
            .map(|t| &**t)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut TaskRecord> {
        self.records
            .find_mut(self.hasher.hash_one(id), |t| &*t.id == id)
            .map(|t| &mut **t)
    }

    /// The id the table holds for `id` (to share it).
    pub fn id(&self, id: &str) -> Option<&Arc<str>> {
        self.get(id).map(|t| &t.id)
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    /// Adds `record`, or puts it in place of the one with its id.
    pub fn insert(&mut self, record: Box<TaskRecord>) {
        let hasher = &self.hasher;
        match self.records.entry(
            hasher.hash_one(&*record.id),
            |t| t.id == record.id,
            |t| hasher.hash_one(&*t.id),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut e) => *e.get_mut() = record,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(record);
            }
        }
    }

    pub fn remove(&mut self, id: &str) -> Option<Box<TaskRecord>> {
        self.records
            .find_entry(self.hasher.hash_one(id), |t| &*t.id == id)
            .ok()
            .map(|e| e.remove().0)
    }

    /// Every record, to change: not its id (the table finds it by its id).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut TaskRecord> {
        self.records.iter_mut().map(|t| &mut **t)
    }

    pub fn shrink_to_fit(&mut self) {
        let hasher = &self.hasher;
        self.records.shrink_to_fit(|t| hasher.hash_one(&*t.id));
    }
}

impl std::fmt::Debug for TaskTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.records.iter().map(|t| (&*t.id, t)))
            .finish()
    }
}

impl Serialize for TaskTable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.records.iter().map(|t| (&*t.id, t)))
    }
}

impl<'de> Deserialize<'de> for TaskTable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = TaskTable;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of task ids to records")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TaskTable, A::Error> {
                let mut table = TaskTable::default();
                while let Some((id, mut record)) = map.next_entry::<String, Box<TaskRecord>>()? {
                    // The key is the id, as it was when the map's key was: a hand-edited
                    // record that says otherwise does not move.
                    if *record.id != *id {
                        record.id = id.into();
                    }
                    table.insert(record);
                }
                Ok(table)
            }
        }
        d.deserialize_map(Visitor)
    }
}
