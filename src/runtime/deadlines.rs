//! The deadline structure: sorted runs in front of a binary min-heap, with lazy deletion (Trio's
//! `Deadlines`, plus the runs).
//!
//! Every timer and every cancel-scope deadline is an entry here. An entry lives in a slab; its
//! deadline is a `(when, seq, key)` triple, kept in one of [`RUNS`] sorted runs or in the heap.
//! Deadlines mostly arrive in order: a program's timeouts and sleeps have a few fixed lengths, so
//! each length gives an ascending stream (now + 1 ms, a little later + 1 ms, ...). A triple not
//! below the last triple of some run is appended to the run whose last triple is the greatest
//! such, in O(1), and comes out of its front in O(1); only the others pay the heap's O(log n).
//! The earliest triple is the least of the heap's top and the runs' fronts.
//!
//! Changing or removing an entry does not touch the triples: the old triple becomes stale (its
//! `seq` no longer matches the entry's) and is dropped when it is the least. To keep memory
//! bounded under many changes, the stale triples are swept out once there are more than twice
//! as many triples as armed entries, plus a small constant ([`Deadlines::prune`], tested by
//! `memory_stays_bounded_under_ten_million_changes`).
//!
//! An entry stores only its triple's `seq`, not its deadline, so that it fits in 16 bytes with
//! its target (one per sleeping task). The `seq` alone must then tell the current triple from
//! every stale one, so no number is ever handed out twice while a triple carrying it may still be
//! stored: when the counter reaches its limit, [`Deadlines::renumber`] drops the stale triples
//! and numbers the live ones afresh from 1, in their order. Entries due at the same instant come
//! out in the order they were armed.
//!
//! It never acts on what expires: [`Deadlines::pop_expired`] hands back the key and the caller
//! decides (wake a sleeper, cancel a scope).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::num::NonZeroU32;

use super::clock::Instant;
use super::slab::Slab;

const PRUNE_SLACK: usize = 64;

/// How many sorted runs: enough for a handful of distinct timeout lengths at once. Each costs a
/// comparison when arming and when looking for the earliest deadline.
const RUNS: usize = 4;

/// `(when, seq, key)`: ordered by deadline, then arming order.
type Triple = (Instant, u32, u32);

/// Where the least triple is: a run's index, or [`HEAP`].
const HEAP: usize = RUNS;

/// An ascending run of triples: a vector consumed from the front. The consumed prefix is
/// dropped once it is at least half the vector (and not tiny), so a pop costs O(1) amortized
/// and the run holds at most twice its live triples.
#[derive(Debug, Default)]
struct Run {
    items: Vec<Triple>,
    head: usize,
}

impl Run {
    #[inline]
    fn front(&self) -> Option<&Triple> {
        self.items.get(self.head)
    }

    fn pop_front(&mut self) {
        self.head += 1;
        if self.head == self.items.len() {
            self.items.clear();
            self.head = 0;
        } else if self.head >= 64 && 2 * self.head >= self.items.len() {
            self.items.drain(..self.head);
            self.head = 0;
        }
    }

    fn len(&self) -> usize {
        self.items.len() - self.head
    }

    /// `items` is emptied (and `head` zeroed) as soon as the last live triple leaves, so its
    /// last element is the run's.
    fn last(&self) -> Option<&Triple> {
        self.items.last()
    }

    fn retain(&mut self, keep: impl FnMut(&Triple) -> bool) {
        self.items.drain(..self.head);
        self.head = 0;
        self.items.retain(keep);
    }

    /// Empties the run and returns its triples.
    fn take(&mut self) -> impl Iterator<Item = Triple> {
        let head = std::mem::take(&mut self.head);
        std::mem::take(&mut self.items).into_iter().skip(head)
    }
}

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
    /// Each in ascending order.
    runs: [Run; RUNS],
    heap: BinaryHeap<Reverse<Triple>>,
    /// Triples in the runs and the heap, stale ones included.
    triples: usize,
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
            runs: Default::default(),
            heap: BinaryHeap::new(),
            triples: 0,
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
            self.push((when, seq.get(), key as u32));
        }
        key
    }

    /// Stores a triple: at the end of the run whose last triple is the greatest not above it (an
    /// empty run counts as ending at zero), else in the heap.
    #[inline]
    fn push(&mut self, t: Triple) {
        self.triples += 1;
        // `t` has the highest seq of all stored triples (seqs only grow, and renumbering keeps
        // that), so it is above a triple exactly when its deadline is not below that one's.
        let mut best = HEAP;
        let mut best_back = Instant::ZERO;
        for (i, run) in self.runs.iter().enumerate() {
            let back = run.last().map_or(Instant::ZERO, |l| l.0);
            if back <= t.0 && (best == HEAP || back > best_back) {
                best = i;
                best_back = back;
            }
        }
        if best == HEAP {
            self.heap.push(Reverse(t));
        } else {
            self.runs[best].items.push(t);
        }
    }

    /// The least triple, stale or not, and where it is.
    #[inline]
    fn least(&self) -> Option<(usize, Triple)> {
        let mut best = self.heap.peek().map(|&Reverse(t)| (HEAP, t));
        for (i, run) in self.runs.iter().enumerate() {
            if let Some(&t) = run.front()
                && best.is_none_or(|(_, b)| t < b)
            {
                best = Some((i, t));
            }
        }
        best
    }

    /// Removes the least triple, which is at `at`.
    fn pop_least(&mut self, at: usize) {
        if at == HEAP {
            self.heap.pop();
        } else {
            self.runs[at].pop_front();
        }
        self.triples -= 1;
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
            self.push((when, seq.get(), key as u32));
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

    /// The least live triple and where it is, dropping the stale ones before it.
    #[inline]
    fn least_live(&mut self) -> Option<(usize, Triple)> {
        // Asked on every pass of the loop: with no deadline at all it must cost nothing, not
        // even a call.
        if self.triples == 0 { None } else { self.find_least_live() }
    }

    fn find_least_live(&mut self) -> Option<(usize, Triple)> {
        loop {
            let (at, t) = self.least()?;
            if Self::is_live(&self.entries, t.1, t.2) {
                return Some((at, t));
            }
            self.pop_least(at);
        }
    }

    /// The earliest armed deadline.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        self.least_live().map(|(_, (when, _, _))| when)
    }

    /// Disarms and returns the earliest entry due at or before `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<usize> {
        let (at, (when, _, key)) = self.least_live()?;
        if when > now {
            return None;
        }
        self.pop_least(at);
        self.entries[key as usize].seq = DISARMED;
        self.armed -= 1;
        self.prune();
        Some(key as usize)
    }

    /// Number of entries (armed or not).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Triples stored, stale ones included (for the memory bound test).
    #[cfg(test)]
    fn triple_count(&self) -> usize {
        debug_assert_eq!(self.triples, self.heap.len() + self.runs.iter().map(Run::len).sum::<usize>());
        self.triples
    }

    /// Sweeps out the stale triples once they outnumber the armed entries (plus a constant).
    fn prune(&mut self) {
        if self.triples > 2 * self.armed + PRUNE_SLACK {
            let entries = &self.entries;
            self.heap.retain(|Reverse((_, seq, key))| Self::is_live(entries, *seq, *key));
            for run in &mut self.runs {
                run.retain(|(_, seq, key)| Self::is_live(entries, *seq, *key));
            }
            self.triples = self.heap.len() + self.runs.iter().map(Run::len).sum::<usize>();
        }
    }

    /// Drops the stale triples and numbers the live ones `1, 2, ...` in their `(when, seq)`
    /// order, which keeps the order of entries due at the same instant; they end up sorted, in
    /// the first run. Runs once per `u32::MAX - 1` armings, so its O(n log n) is nothing per
    /// arming.
    #[cold]
    fn renumber(&mut self) {
        let entries = &self.entries;
        let heap = std::mem::take(&mut self.heap).into_vec().into_iter().map(|Reverse(t)| t);
        let runs = self.runs.iter_mut().flat_map(Run::take);
        let mut live: Vec<Triple> =
            heap.chain(runs).filter(|(_, seq, key)| Self::is_live(entries, *seq, *key)).collect();
        live.sort_unstable();
        for (i, (_, seq, key)) in live.iter_mut().enumerate() {
            let fresh = NonZeroU32::new(i as u32 + 1).expect("hatchery internal error: renumbering overflow");
            *seq = fresh.get();
            self.entries[*key as usize].seq = fresh;
        }
        // Below `DISARMED`: `insert` keeps the entries, so the live triples, fewer than that. With
        // as many armed entries as the limit (only a test's small limit allows it), the next
        // arming renumbers again, which is slow but stays correct.
        self.next_seq =
            NonZeroU32::new(live.len() as u32 + 1).expect("hatchery internal error: renumbering overflow");
        self.triples = live.len();
        self.runs[0] = Run { items: live, head: 0 };
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
        /// Insert a little after the previous `InsertLater` (wrapping round): an ascending
        /// stream, as a fixed timeout gives, interleaved with the other operations.
        InsertLater(u16),
        Reset(usize, u16),
        Disarm(usize),
        Remove(usize),
        Pop(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            // Few distinct instants, so that many entries fall due at once and their order counts.
            3 => (0..64u16).prop_map(Op::Insert),
            3 => (0..4u16).prop_map(Op::InsertLater),
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
        /// The runs and the heap agree with a BTreeMap model ordered by (deadline, arming order).
        /// A small sequence limit makes it renumber often, and the order must survive that.
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
            let mut later = 0u16;
            for op in ops {
                let op = match op {
                    Op::InsertLater(delta) => {
                        later = (later + delta) % 64;
                        Op::Insert(later)
                    }
                    op => op,
                };
                match op {
                    Op::InsertLater(_) => unreachable!(),
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
                prop_assert!(d.triple_count() <= 2 * armed.len() + PRUNE_SLACK + 1);
            }
        }
    }

    /// An ascending stream goes through a run in order, and the run drops what it has handed
    /// out: never more than twice its live triples (plus the first 64) stored.
    #[test]
    fn ascending_stream_uses_one_run_and_stays_compact() {
        let mut d = Deadlines::new();
        let keys: Vec<usize> = (0..10_000u16).map(|i| d.insert(at(i), ())).collect();
        assert_eq!(d.runs[0].len(), 10_000);
        assert!(d.heap.is_empty());
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(d.pop_expired(at(u16::MAX)), Some(k));
            let live = 10_000 - i - 1;
            assert!(d.runs[0].items.len() <= 2 * live + 64, "{} stored for {live}", d.runs[0].items.len());
        }
        assert_eq!(d.pop_expired(at(u16::MAX)), None);
        assert_eq!(d.triple_count(), 0);
    }

    #[test]
    fn memory_stays_bounded_under_ten_million_changes() {
        let mut d = Deadlines::new();
        let keys: Vec<usize> = (0..100).map(|i| d.insert(at(i), ())).collect();
        for i in 0..10_000_000u64 {
            let k = keys[(i % 100) as usize];
            d.reset(k, Instant::from_origin(std::time::Duration::from_nanos(i * 7 % 1_000_003)));
        }
        assert!(d.triple_count() <= 2 * 100 + PRUNE_SLACK + 1, "heap grew to {}", d.triple_count());
        assert_eq!(d.len(), 100);
    }
}
