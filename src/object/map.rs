//! A map from object names to a small value: 40 to 46 bytes a name when the
//! value is one byte.
//!
//! A receiver keeps a record of every object of a push: asked for,
//! arriving, staged. With a million objects, a `HashSet<ObjectName>` each
//! for "asked for" and "staged" (33-byte buckets at a load between 7/16 and
//! 7/8) and the copies made to publish them took depot-receive to 188 MiB.
//! Here each name sits once, in a `Vec`, beside its value; the hash table
//! holds only 4-byte positions; and publishing takes the `Vec` as it is. The
//! table is keyed with a random SipHash key, as `std`'s is: the names a
//! pusher asks about are its own choice.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

use super::ObjectName;

/// A map from object names to `V`, in the order names were first inserted.
/// Names are never removed.
pub struct ObjectMap<V> {
    names: Vec<ObjectName>,
    values: Vec<V>,
    /// Positions in `names` and `values`.
    positions: HashTable<u32>,
    hasher: RandomState,
}

impl<V> Default for ObjectMap<V> {
    fn default() -> Self {
        Self {
            names: Vec::new(),
            values: Vec::new(),
            positions: HashTable::new(),
            hasher: RandomState::new(),
        }
    }
}

impl<V: std::fmt::Debug + Copy> std::fmt::Debug for ObjectMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V: Copy> ObjectMap<V> {
    /// An empty map.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many names the map holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the map is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    fn position(&self, name: &ObjectName) -> Option<usize> {
        let hash = self.hasher.hash_one(name);
        self.positions
            .find(hash, |&at| self.names[at as usize] == *name)
            .map(|&at| at as usize)
    }

    /// The value of `name`, if it is in the map.
    #[must_use]
    pub fn get(&self, name: &ObjectName) -> Option<V> {
        self.position(name).map(|at| self.values[at])
    }

    /// The value of `name`, to change in place.
    pub fn get_mut(&mut self, name: &ObjectName) -> Option<&mut V> {
        let at = self.position(name)?;
        Some(&mut self.values[at])
    }

    /// Sets the value of `name`, adding it if it is new; returns the value
    /// it had.
    ///
    /// # Panics
    /// When the map already holds 2^32 names (140 GiB of them).
    pub fn insert(&mut self, name: ObjectName, value: V) -> Option<V> {
        match self.find_or_add(name, value) {
            (_, true) => None,
            (at, false) => Some(std::mem::replace(&mut self.values[at], value)),
        }
    }

    /// Adds `name` with `value` if it is not in the map; false (and the
    /// value it has is kept) if it is.
    ///
    /// # Panics
    /// When the map already holds 2^32 names (140 GiB of them).
    pub fn insert_if_absent(&mut self, name: ObjectName, value: V) -> bool {
        self.find_or_add(name, value).1
    }

    /// The position of `name`, added with `value` if it was absent, and
    /// whether it was: one hash and one probe either way.
    fn find_or_add(&mut self, name: ObjectName, value: V) -> (usize, bool) {
        let Self {
            names,
            values,
            positions,
            hasher,
        } = self;
        let hash = hasher.hash_one(name);
        match positions.entry(
            hash,
            |&at| names[at as usize] == name,
            |&at| hasher.hash_one(names[at as usize]),
        ) {
            hashbrown::hash_table::Entry::Occupied(entry) => (*entry.get() as usize, false),
            hashbrown::hash_table::Entry::Vacant(slot) => {
                let at = u32::try_from(names.len()).expect("fewer than 2^32 objects in a map");
                slot.insert(at);
                names.push(name);
                values.push(value);
                (at as usize, true)
            }
        }
    }

    /// The names and their values, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&ObjectName, &V)> {
        self.names.iter().zip(&self.values)
    }

    /// The values, to change in place, in insertion order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.values.iter_mut()
    }

    /// The names whose value passes `keep`, reusing the map's own memory
    /// for them; the table is freed first.
    #[must_use]
    pub fn into_names_where(self, keep: impl Fn(V) -> bool) -> Vec<ObjectName> {
        let Self {
            mut names,
            values,
            positions,
            ..
        } = self;
        drop(positions);
        let mut kept = 0;
        for (at, value) in values.into_iter().enumerate() {
            if keep(value) {
                names[kept] = names[at];
                kept += 1;
            }
        }
        names.truncate(kept);
        names
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::checksum::Checksum;
    use crate::object::ObjectType;

    fn name(n: u16, kind: ObjectType) -> ObjectName {
        let mut bytes = [0u8; 32];
        bytes[..2].copy_from_slice(&n.to_le_bytes());
        ObjectName::new(Checksum::from_array(bytes), kind)
    }

    fn kind(k: u8) -> ObjectType {
        [ObjectType::File, ObjectType::DirTree, ObjectType::Commit][usize::from(k % 3)]
    }

    proptest! {
        /// Any sequence of inserts and changes leaves the map agreeing with std's
        /// `HashMap` on every answer, on its members, and on what
        /// `into_names_where` keeps, across the table's growth.
        #[test]
        fn agrees_with_a_hash_map(ops in prop::collection::vec((0u16..3000, any::<u8>(), 0u8..4, 0u8..3), 0..6000)) {
            let mut map = ObjectMap::new();
            let mut model = HashMap::new();
            for (n, k, value, op) in ops {
                let name = name(n, kind(k));
                prop_assert_eq!(map.get(&name), model.get(&name).copied());
                match op {
                    0 => prop_assert_eq!(map.insert(name, value), model.insert(name, value)),
                    1 => {
                        let absent = !model.contains_key(&name);
                        model.entry(name).or_insert(value);
                        prop_assert_eq!(map.insert_if_absent(name, value), absent);
                    }
                    _ => {
                        if let Some(v) = model.get_mut(&name) {
                            *v = value;
                        }
                        if let Some(v) = map.get_mut(&name) {
                            *v = value;
                        }
                    }
                }
                prop_assert_eq!(map.len(), model.len());
            }
            let members: HashMap<ObjectName, u8> = map.iter().map(|(n, v)| (*n, *v)).collect();
            prop_assert_eq!(members.len(), map.len());
            prop_assert_eq!(&members, &model);
            for n in 0..3000u16 {
                for k in 0..3 {
                    let name = name(n, kind(k));
                    prop_assert_eq!(map.get(&name), model.get(&name).copied());
                }
            }
            let mut kept = map.into_names_where(|v| v % 2 == 0);
            let mut expected: Vec<ObjectName> =
                model.iter().filter(|(_, v)| *v % 2 == 0).map(|(n, _)| *n).collect();
            kept.sort_unstable();
            expected.sort_unstable();
            prop_assert_eq!(kept, expected);
        }
    }

    #[test]
    fn a_name_is_distinct_from_the_same_checksum_of_another_kind() {
        let mut map = ObjectMap::new();
        assert_eq!(map.insert(name(7, ObjectType::File), 1), None);
        assert_eq!(map.insert(name(7, ObjectType::DirTree), 2), None);
        assert_eq!(map.insert(name(7, ObjectType::File), 3), Some(1));
        assert_eq!(map.get(&name(7, ObjectType::DirTree)), Some(2));
        assert_eq!(map.get(&name(7, ObjectType::Commit)), None);
    }

    #[test]
    fn names_are_kept_in_insertion_order() {
        let mut map = ObjectMap::new();
        for n in (0..2000u16).rev() {
            map.insert(name(n, ObjectType::File), n);
        }
        let order: Vec<u16> = map.iter().map(|(_, v)| *v).collect();
        assert_eq!(order, (0..2000u16).rev().collect::<Vec<_>>());
    }
}
