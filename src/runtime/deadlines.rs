//! The deadline structure: a binary min-heap with lazy deletion (Trio's `Deadlines`).
//!
//! Every timer and every cancel-scope deadline is an entry here. An entry lives in a slab; the heap
//! holds `(when, seq, key)` triples. Changing or removing an entry does not touch the heap: the old
//! triple becomes stale (its `seq` no longer matches the entry's) and is skipped when it reaches
//! the top. To keep memory bounded under many changes, the heap is rebuilt from the live entries
//! once it holds more than twice as many triples as there are armed entries, plus a small
//! constant ([`Deadlines::prune`], tested by `memory_stays_bounded_under_ten_million_changes`).
//!
//! An entry stores only its triple's `seq`, not its deadline, so that it fits in 16 bytes with
//! its target (one per sleeping task). The `seq` alone must then tell the current triple from
//! every stale one, so no number is ever handed out twice while a triple carrying it may still be
//! in the heap: when the counter reaches its limit, [`Deadlines::renumber`] drops the stale
//! triples and numbers the live ones afresh from 1, in their order. Entries due at the same
//! instant come out in the order they were armed.
//!
//! It never acts on what expires: [`Deadlines::pop_expired`] hands back the key and the caller
//! decides (wake a sleeper, cancel a scope).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::num::NonZeroU32;

use super::clock::Instant;
use super::slab::Slab;

const PRUNE_SLACK: usize = 64;

/// An entry's `seq` while it is disarmed (fired, or never armed): no triple carries it.
const DISARMED: NonZeroU32 = NonZeroU32::MAX;

#[derive(Debug)]
struct Entry<T> {
    /// The `seq` of this entry's current heap triple, or `DISARMED`. Never zero: that niche
    /// lets the slab store an entry with a 12-byte target in 16 bytes.
    seq: NonZeroU32,
    data: T,
}

#[derive(Debug)]
pub(crate) struct Deadlines<T> {
    entries: Slab<Entry<T>>,
    heap: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    /// The `seq` for the next triple; always below `seq_limit`.
    next_seq: NonZeroU32,
    /// When `next_seq` reaches it, the heap is renumbered. `u32::MAX` but in tests.
    seq_limit: u32,
    armed: usize,
}

impl<T> Default for Deadlines<T> {
    fn default() -> Self {
        Deadlines {
            entries: Slab::new(),
            heap: BinaryHeap::new(),
            next_seq: NonZeroU32::MIN,
            seq_limit: DISARMED.get(),
            armed: 0,
        }
    }
}

impl<T> Deadlines<T> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A structure that renumbers once `limit - 1` numbers are used, to test renumbering.
    #[cfg(test)]
    fn with_seq_limit(limit: u32) -> Self {
        assert!(limit >= 2);
        Deadlines { seq_limit: limit, ..Self::default() }
    }

    /// Adds an entry, armed at `when` (`Instant::MAX` adds it disarmed).
    pub(crate) fn insert(&mut self, when: Instant, data: T) -> usize {
        let seq = if when == Instant::MAX { DISARMED } else { self.take_seq() };
        let key = self.entries.insert(Entry { seq, data });
        // Fewer entries than `u32::MAX - 1` leave renumbering room for every armed one.
        assert!(key < (u32::MAX - 2) as usize, "hatchery internal error: more than 2^32 timers");
        if seq != DISARMED {
            // No triple goes stale, so there is nothing to prune.
            self.armed += 1;
            self.heap.push(Reverse((when, seq.get(), key as u32)));
        }
        key
    }

    /// The `seq` for a new triple.
    #[inline]
    fn take_seq(&mut self) -> NonZeroU32 {
        if self.next_seq.get() >= self.seq_limit {
            self.renumber();
        }
        let seq = self.next_seq;
        self.next_seq = seq.saturating_add(1);
        seq
    }

    /// Re-arms `key` at `when`; `Instant::MAX` disarms it.
    pub(crate) fn reset(&mut self, key: usize, when: Instant) {
        // Renumbering first, as it rewrites the entries' numbers.
        let seq = if when == Instant::MAX { DISARMED } else { self.take_seq() };
        let e = &mut self.entries[key];
        if e.seq != DISARMED {
            self.armed -= 1;
        }
        e.seq = seq;
        if seq != DISARMED {
            self.armed += 1;
            self.heap.push(Reverse((when, seq.get(), key as u32)));
        }
        self.prune();
    }

    /// Removes `key` and returns its data.
    pub(crate) fn remove(&mut self, key: usize) -> Option<T> {
        let e = self.entries.remove(key)?;
        if e.seq != DISARMED {
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
        self.entries.get(key).map(|e| e.seq != DISARMED)
    }

    #[cfg(test)]
    pub(crate) fn is_armed(&self, key: usize) -> bool {
        self.armed(key) == Some(true)
    }

    fn is_live(entries: &Slab<Entry<T>>, seq: u32, key: u32) -> bool {
        entries.get(key as usize).is_some_and(|e| e.seq.get() == seq)
    }

    fn drop_stale_top(&mut self) {
        while let Some(&Reverse((_, seq, key))) = self.heap.peek() {
            if Self::is_live(&self.entries, seq, key) {
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
        self.entries[key as usize].seq = DISARMED;
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
            self.heap.retain(|Reverse((_, seq, key))| Self::is_live(entries, *seq, *key));
        }
    }

    /// Drops the stale triples and numbers the live ones `1, 2, ...` in their `(when, seq)`
    /// order, which keeps the order of entries due at the same instant. Runs once per
    /// `u32::MAX - 1` armings, so its O(n log n) is nothing per arming.
    #[cold]
    fn renumber(&mut self) {
        let entries = &self.entries;
        let mut live: Vec<_> = std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .filter(|Reverse((_, seq, key))| Self::is_live(entries, *seq, *key))
            .collect();
        live.sort_unstable_by_key(|Reverse(triple)| *triple);
        for (i, Reverse((_, seq, key))) in live.iter_mut().enumerate() {
            let fresh = NonZeroU32::new(i as u32 + 1).expect("hatchery internal error: renumbering overflow");
            *seq = fresh.get();
            self.entries[*key as usize].seq = fresh;
        }
        // Below `DISARMED`: `insert` keeps the entries, so the live triples, fewer than that. With
        // as many armed entries as the limit (only a test's small limit allows it), the next
        // arming renumbers again, which is slow but stays correct.
        self.next_seq =
            NonZeroU32::new(live.len() as u32 + 1).expect("hatchery internal error: renumbering overflow");
        self.heap = BinaryHeap::from(live);
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
            // Few distinct instants, so that many entries fall due at once and their order counts.
            3 => (0..64u16).prop_map(Op::Insert),
            2 => (any::<usize>(), 0..64u16).prop_map(|(k, t)| Op::Reset(k, t)),
            1 => any::<usize>().prop_map(Op::Disarm),
            1 => any::<usize>().prop_map(Op::Remove),
            2 => (0..72u16).prop_map(Op::Pop),
        ]
    }

    fn at(t: u16) -> Instant {
        Instant::from_origin(std::time::Duration::from_nanos(t as u64))
    }

    proptest! {
        /// The heap agrees with a BTreeMap model ordered by (deadline, arming order). A small
        /// sequence limit makes it renumber often, and the order must survive that.
        #[test]
        fn prop_matches_btreemap_model(
            ops in proptest::collection::vec(op(), 0..1000),
            seq_limit in prop_oneof![Just(u32::MAX), 2u32..64],
        ) {
            let mut d = Deadlines::with_seq_limit(seq_limit);
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
