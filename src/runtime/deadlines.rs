//! The deadline structure: a binary min-heap with lazy deletion (Trio's `Deadlines`).
//!
//! Every timer and every cancel-scope deadline is an entry here. An entry lives in a slab; the heap
//! holds `(when, seq, key)` triples. Changing or removing an entry does not touch the heap: the old
//! triple becomes stale (its `seq` no longer matches the entry's) and is skipped when it reaches
//! the top. To keep memory bounded under many changes, the heap is rebuilt from the live entries
//! once it holds more than twice as many triples as there are armed entries, plus a small
//! constant ([`Deadlines::prune`], tested by `prop_memory_stays_bounded`).
//!
//! It never acts on what expires: [`Deadlines::pop_expired`] hands back the key and the caller
//! decides (wake a sleeper, cancel a scope).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::num::NonZeroU32;

use super::clock::Instant;
use super::slab::Slab;

const PRUNE_SLACK: usize = 64;

#[derive(Debug)]
struct Entry<T> {
    /// When it is due while armed (in the heap); `Instant::MAX` once fired or disarmed.
    when: Instant,
    /// Matches the heap triple that is current for this entry. 32 bits: it only has to tell the
    /// current triple from stale ones, which pruning keeps few. Never zero: that niche lets the
    /// slab store an entry in 24 bytes rather than 32 (one per sleeping task).
    seq: NonZeroU32,
    data: T,
}

#[derive(Debug)]
pub(crate) struct Deadlines<T> {
    entries: Slab<Entry<T>>,
    heap: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    next_seq: NonZeroU32,
    armed: usize,
}

impl<T> Default for Deadlines<T> {
    fn default() -> Self {
        Deadlines { entries: Slab::new(), heap: BinaryHeap::new(), next_seq: NonZeroU32::MIN, armed: 0 }
    }
}

impl<T> Deadlines<T> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds an entry, armed at `when` (`Instant::MAX` adds it disarmed).
    pub(crate) fn insert(&mut self, when: Instant, data: T) -> usize {
        let key = self.entries.insert(Entry { when: Instant::MAX, seq: NonZeroU32::MIN, data });
        assert!(key < u32::MAX as usize, "hatchery internal error: more than 2^32 timers");
        self.reset(key, when);
        key
    }

    /// Re-arms `key` at `when`; `Instant::MAX` disarms it.
    pub(crate) fn reset(&mut self, key: usize, when: Instant) {
        let seq = self.next_seq;
        self.next_seq = NonZeroU32::new(seq.get().wrapping_add(1)).unwrap_or(NonZeroU32::MIN);
        let e = &mut self.entries[key];
        if e.when != Instant::MAX {
            self.armed -= 1;
        }
        e.seq = seq;
        e.when = when;
        if when != Instant::MAX {
            self.armed += 1;
            self.heap.push(Reverse((when, seq.get(), key as u32)));
        }
        self.prune();
    }

    /// Removes `key` and returns its data.
    pub(crate) fn remove(&mut self, key: usize) -> Option<T> {
        let e = self.entries.remove(key)?;
        if e.when != Instant::MAX {
            self.armed -= 1;
        }
        self.prune();
        Some(e.data)
    }

    pub(crate) fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        self.entries.get_mut(key).map(|e| &mut e.data)
    }

    pub(crate) fn get(&self, key: usize) -> Option<&T> {
        self.entries.get(key).map(|e| &e.data)
    }

    /// Whether `key` is armed (`None`: no such entry). An entry is disarmed when
    /// [`pop_expired`](Deadlines::pop_expired) hands it out or when reset to `Instant::MAX`.
    pub(crate) fn armed(&self, key: usize) -> Option<bool> {
        self.entries.get(key).map(|e| e.when != Instant::MAX)
    }

    #[cfg(test)]
    pub(crate) fn is_armed(&self, key: usize) -> bool {
        self.armed(key) == Some(true)
    }

    fn is_live(entries: &Slab<Entry<T>>, when: Instant, seq: u32, key: u32) -> bool {
        entries.get(key as usize).is_some_and(|e| e.seq.get() == seq && e.when == when)
    }

    fn drop_stale_top(&mut self) {
        while let Some(&Reverse((when, seq, key))) = self.heap.peek() {
            if Self::is_live(&self.entries, when, seq, key) {
                return;
            }
            self.heap.pop();
        }
    }

    /// The earliest armed deadline.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        self.drop_stale_top();
        self.heap.peek().map(|Reverse((when, _, _))| *when)
    }

    /// Disarms and returns the earliest entry due at or before `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<usize> {
        self.drop_stale_top();
        let &Reverse((when, _, key)) = self.heap.peek()?;
        if when > now {
            return None;
        }
        self.heap.pop();
        self.entries[key as usize].when = Instant::MAX;
        self.armed -= 1;
        self.prune();
        Some(key as usize)
    }

    /// Number of entries (armed or not).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Triples in the heap, stale ones included (for the memory bound test).
    #[cfg(test)]
    fn heap_len(&self) -> usize {
        self.heap.len()
    }

    fn prune(&mut self) {
        if self.heap.len() > 2 * self.armed + PRUNE_SLACK {
            let entries = &self.entries;
            self.heap.retain(|Reverse((when, seq, key))| Self::is_live(entries, *when, *seq, *key));
        }
    }
}

/// The size of one stored entry, slab slot included (for a size test).
#[cfg(test)]
pub(crate) fn slab_entry_size<T>() -> usize {
    super::slab::entry_size::<Entry<T>>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16),
        Reset(usize, u16),
        Disarm(usize),
        Remove(usize),
        Pop(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => any::<u16>().prop_map(Op::Insert),
            2 => (any::<usize>(), any::<u16>()).prop_map(|(k, t)| Op::Reset(k, t)),
            1 => any::<usize>().prop_map(Op::Disarm),
            1 => any::<usize>().prop_map(Op::Remove),
            2 => any::<u16>().prop_map(Op::Pop),
        ]
    }

    fn at(t: u16) -> Instant {
        Instant::from_origin(std::time::Duration::from_nanos(t as u64))
    }

    proptest! {
        /// The heap agrees with a BTreeMap model ordered by (deadline, arming order).
        #[test]
        fn prop_matches_btreemap_model(ops in proptest::collection::vec(op(), 0..1000)) {
            let mut d = Deadlines::new();
            // model: key -> (when, seq) for armed entries; order by (when, seq)
            let mut armed: BTreeMap<(u16, u64), usize> = BTreeMap::new();
            let mut by_key: BTreeMap<usize, Option<(u16, u64)>> = BTreeMap::new();
            let mut seq = 0u64;
            let mut keys: Vec<usize> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(t) => {
                        let k = d.insert(at(t), ());
                        prop_assert!(!by_key.contains_key(&k));
                        armed.insert((t, seq), k);
                        by_key.insert(k, Some((t, seq)));
                        seq += 1;
                        keys.push(k);
                    }
                    Op::Reset(..) | Op::Disarm(..) if keys.is_empty() => {}
                    Op::Reset(i, t) => {
                        let k = keys[i % keys.len()];
                        d.reset(k, at(t));
                        if let Some(Some(old)) = by_key.get(&k) { armed.remove(old); }
                        armed.insert((t, seq), k);
                        by_key.insert(k, Some((t, seq)));
                        seq += 1;
                    }
                    Op::Disarm(i) => {
                        let k = keys[i % keys.len()];
                        d.reset(k, Instant::MAX);
                        if let Some(Some(old)) = by_key.get(&k) { armed.remove(old); }
                        by_key.insert(k, None);
                        seq += 1;
                    }
                    Op::Remove(i) => {
                        if keys.is_empty() { continue; }
                        let k = keys.swap_remove(i % keys.len());
                        prop_assert!(d.remove(k).is_some());
                        if let Some(Some(old)) = by_key.remove(&k) { armed.remove(&old); }
                    }
                    Op::Pop(t) => {
                        let got = d.pop_expired(at(t));
                        let want = armed.iter().next().filter(|((w, _), _)| *w <= t).map(|(&(w, s), &k)| (w, s, k));
                        match want {
                            Some((w, s, k)) => {
                                prop_assert_eq!(got, Some(k));
                                armed.remove(&(w, s));
                                by_key.insert(k, None);
                                prop_assert!(!d.is_armed(k));
                            }
                            None => prop_assert_eq!(got, None),
                        }
                    }
                }
                let want_next = armed.keys().next().map(|(w, _)| at(*w));
                prop_assert_eq!(d.next_deadline(), want_next);
                prop_assert_eq!(d.len(), by_key.len());
                prop_assert!(d.heap_len() <= 2 * armed.len() + PRUNE_SLACK + 1);
            }
        }
    }

    #[test]
    fn memory_stays_bounded_under_ten_million_changes() {
        let mut d = Deadlines::new();
        let keys: Vec<usize> = (0..100).map(|i| d.insert(at(i), ())).collect();
        for i in 0..10_000_000u64 {
            let k = keys[(i % 100) as usize];
            d.reset(k, Instant::from_origin(std::time::Duration::from_nanos(i * 7 % 1_000_003)));
        }
        assert!(d.heap_len() <= 2 * 100 + PRUNE_SLACK + 1, "heap grew to {}", d.heap_len());
        assert_eq!(d.len(), 100);
    }
}
