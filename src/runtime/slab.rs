//! A minimal slab: dense storage with stable `usize` keys and a free list.
//!
//! Used for nursery records, cancel-status nodes, waiters, timers and I/O sources. Keys are
//! reused after removal; callers that hand keys to code that may outlive the entry pair them
//! with a generation number.

#[derive(Debug)]
enum Entry<T> {
    Occupied(T),
    Vacant(Option<usize>),
}

#[derive(Debug)]
pub(crate) struct Slab<T> {
    entries: Vec<Entry<T>>,
    free: Option<usize>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab { entries: Vec::new(), free: None, len: 0 }
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
        self.free.unwrap_or(self.entries.len())
    }

    pub(crate) fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        match self.free {
            Some(k) => {
                let next = match &self.entries[k] {
                    Entry::Vacant(n) => *n,
                    Entry::Occupied(_) => unreachable!("hatchery internal error: slab free list corrupt"),
                };
                self.free = next;
                self.entries[k] = Entry::Occupied(value);
                k
            }
            None => {
                self.entries.push(Entry::Occupied(value));
                self.entries.len() - 1
            }
        }
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
                self.free = Some(key);
                self.len -= 1;
                match old {
                    Entry::Occupied(v) => Some(v),
                    Entry::Vacant(_) => unreachable!(),
                }
            }
            _ => None,
        }
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
