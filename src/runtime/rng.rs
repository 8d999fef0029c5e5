//! The crate's one pseudo-random generator: xorshift64* seeded through SplitMix64. Small, fast
//! and reproducible; good enough to order a batch or to choose a fault, never for secrets.

/// SplitMix64: turns any seed (0, 1, 2, ...) into well-mixed bits.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One step of xorshift64* on `state` (which must not be 0): the next 64 random bits.
pub(crate) fn xorshift64star(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// A generator that owns its state.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, 0 included).
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(splitmix64(seed) | 1)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        xorshift64star(&mut self.0)
    }

    /// Uniform in `[0, n)` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_draws_and_below_stays_in_range() {
        let (mut a, mut b) = (Rng::new(0), Rng::new(0));
        let draws: Vec<u64> = (0..100).map(|_| a.below(7)).collect();
        assert!(draws.iter().all(|&d| d < 7));
        assert_eq!(draws, (0..100).map(|_| b.below(7)).collect::<Vec<_>>());
        assert!((0..7).all(|k| draws.contains(&k)), "every value in range comes up: {draws:?}");
        assert_eq!(Rng::new(3).below(0), 0);
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }
}
