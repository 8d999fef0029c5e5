//! A minimal slab: dense storage with stable `usize` keys and a free list.
//!
//! Used for nursery records, cancel-status nodes, waiters, timers and I/O sources. Keys are
//! reused after removal; callers that hand keys to code that may outlive the entry pair them
//! with a generation number. Keys stay below `u32::MAX`, so a vacant slot links the free list
//! with a `u32`: a slab of values of 12 bytes with a niche stores each in 16.

#[derive(Debug)]
enum Entry<T> {
    Occupied(T),
    /// The next vacant key, or `NONE`.
    Vacant(u32),
}

/// The end of the free list.
const NONE: u32 = u32::MAX;

#[derive(Debug)]
pub(crate) struct Slab<T> {
    entries: Vec<Entry<T>>,
    free: u32,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab { entries: Vec::new(), free: NONE, len: 0 }
    }
}

impl<T> Slab<T> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The key the next `insert` will return.
    pub(crate) fn vacant_key(&self) -> usize {
        if self.free == NONE { self.entries.len() } else { self.free as usize }
    }

    #[inline]
    pub(crate) fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        if self.free == NONE {
            if self.entries.len() >= NONE as usize {
                too_many();
            }
            self.entries.push(Entry::Occupied(value));
            return self.entries.len() - 1;
        }
        let k = self.free as usize;
        self.free = match &self.entries[k] {
            Entry::Vacant(next) => *next,
            Entry::Occupied(_) => unreachable!("hatchery internal error: slab free list corrupt"),
        };
        self.entries[k] = Entry::Occupied(value);
        k
    }

    pub(crate) fn get(&self, key: usize) -> Option<&T> {
        match self.entries.get(key) {
            Some(Entry::Occupied(v)) => Some(v),
            _ => None,
        }
    }

    pub(crate) fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        match self.entries.get_mut(key) {
            Some(Entry::Occupied(v)) => Some(v),
            _ => None,
        }
    }

    pub(crate) fn remove(&mut self, key: usize) -> Option<T> {
        match self.entries.get_mut(key) {
            Some(e @ Entry::Occupied(_)) => {
                let old = std::mem::replace(e, Entry::Vacant(self.free));
                // `key < NONE`: `insert` never hands out a larger one.
                self.free = key as u32;
                self.len -= 1;
                match old {
                    Entry::Occupied(v) => Some(v),
                    Entry::Vacant(_) => unreachable!(),
                }
            }
            _ => None,
        }
    }

    /// The first occupied key at or after `from`.
    pub(crate) fn next_key_from(&self, from: usize) -> Option<usize> {
        let rest = self.entries.get(from..)?;
        rest.iter().position(|e| matches!(e, Entry::Occupied(_))).map(|i| from + i)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.entries.iter().enumerate().filter_map(|(k, e)| match e {
            Entry::Occupied(v) => Some((k, v)),
            Entry::Vacant(_) => None,
        })
    }
}

impl<T> std::ops::Index<usize> for Slab<T> {
    type Output = T;
    fn index(&self, key: usize) -> &T {
        self.get(key).expect("hatchery internal error: stale slab key")
    }
}

impl<T> std::ops::IndexMut<usize> for Slab<T> {
    fn index_mut(&mut self, key: usize) -> &mut T {
        self.get_mut(key).expect("hatchery internal error: stale slab key")
    }
}

#[cold]
#[inline(never)]
fn too_many() -> ! {
    panic!("hatchery internal error: more than 2^32 - 1 slab entries")
}

/// The size of one slot holding a `T` (for size tests).
#[cfg(test)]
pub(crate) fn entry_size<T>() -> usize {
    std::mem::size_of::<Entry<T>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_keys_lifo() {
        let mut s = Slab::new();
        let a = s.insert('a');
        let b = s.insert('b');
        assert_eq!((a, b), (0, 1));
        assert_eq!(s.remove(a), Some('a'));
        assert_eq!(s.remove(a), None);
        assert_eq!(s.vacant_key(), 0);
        assert_eq!(s.insert('c'), 0);
        assert_eq!(s[0], 'c');
        assert_eq!(s.len(), 2);
        assert_eq!(s.iter().map(|(_, v)| *v).collect::<String>(), "cb");
    }
}
