//! Which segments a peer holds or is fetching: a bitset over segment ids from a moving
//! base, compact on the wire and in memory (a live window fits in one word).
//!
//! Every id comes from the network, so nothing here trusts one: arithmetic is checked
//! (a `u64` id never becomes a wrapped `usize` on wasm32), no operation recurses, and
//! a set never spans more than [`MAX_SPAN`] ids (at most 8 KiB), whatever it is fed.

use crate::integrity::SegmentId;

/// Most segments a set may span; beyond that the oldest are dropped.
pub const MAX_SPAN: u64 = 65_536;
const MAX_WORDS: usize = (MAX_SPAN / 64) as usize;

/// A set of segment ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentSet {
    /// Always a multiple of 64: word `i` holds ids `base + 64·i ..= base + 64·i + 63`.
    base: u64,
    words: Vec<u64>,
}

impl SegmentSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from its wire form: `base` and little-endian bitmap bytes. Bits past
    /// `u64::MAX` or past [`MAX_SPAN`] from the lowest id set are dropped.
    pub fn from_bitmap(base: u64, bytes: &[u8]) -> Self {
        let mut set = Self::new();
        for (i, byte) in bytes.iter().enumerate().take((MAX_SPAN / 8) as usize) {
            for bit in 0..8u64 {
                if byte & (1 << bit) == 0 {
                    continue;
                }
                let Some(id) =
                    (i as u64).checked_mul(8).and_then(|o| o.checked_add(bit)).and_then(|o| base.checked_add(o))
                else {
                    return set;
                };
                set.insert(SegmentId(id));
            }
        }
        set
    }

    /// The wire form: `(base, bitmap bytes)`.
    pub fn to_bitmap(&self) -> (u64, Vec<u8>) {
        let mut bytes: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        (self.base, bytes)
    }

    /// Word index and bit of `id`, if it lies within the words held.
    fn position(&self, id: SegmentId) -> Option<(usize, u64)> {
        let offset = id.0.checked_sub(self.base)?;
        let word = offset / 64;
        (word < self.words.len() as u64).then_some((word as usize, offset % 64))
    }

    pub fn contains(&self, id: SegmentId) -> bool {
        self.position(id).is_some_and(|(word, bit)| self.words[word] & (1 << bit) != 0)
    }

    /// Adds `id`. An id more than [`MAX_SPAN`] below the highest held is ignored; one
    /// more than [`MAX_SPAN`] above the lowest slides the set forward, forgetting the
    /// oldest.
    pub fn insert(&mut self, id: SegmentId) {
        let aligned = id.0 - id.0 % 64;
        if self.words.is_empty() {
            self.base = aligned;
        } else if aligned < self.base {
            // Grow downwards by whole words, if the span allows.
            let shift = (self.base - aligned) / 64;
            if shift.saturating_add(self.words.len() as u64) > MAX_WORDS as u64 {
                return; // too old to track
            }
            self.words.splice(0..0, std::iter::repeat_n(0, shift as usize));
            self.base = aligned;
        } else if (aligned - self.base) / 64 >= MAX_WORDS as u64 {
            // Slide forward so that `id`'s word becomes the last one the span allows.
            let drop = (aligned - self.base) / 64 - (MAX_WORDS as u64 - 1);
            if drop >= self.words.len() as u64 {
                self.words.clear();
                self.base = aligned;
            } else {
                self.words.drain(..drop as usize);
                self.base += drop * 64;
            }
        }
        // Now `aligned - base` is at most (MAX_WORDS - 1) words.
        let word = ((aligned - self.base) / 64) as usize;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << (id.0 % 64);
        self.trim_front();
    }

    pub fn remove(&mut self, id: SegmentId) {
        if let Some((word, bit)) = self.position(id) {
            self.words[word] &= !(1 << bit);
            self.trim();
        }
    }

    /// Forgets every id below `id`.
    pub fn remove_below(&mut self, id: SegmentId) {
        if id.0 <= self.base {
            return;
        }
        let drop = (id.0 - self.base) / 64;
        if drop >= self.words.len() as u64 {
            self.words.clear();
            self.base = 0;
            return;
        }
        self.words.drain(..drop as usize);
        self.base += drop * 64;
        let partial = id.0 - self.base;
        if partial > 0 {
            self.words[0] &= !((1u64 << partial) - 1);
        }
        self.trim();
    }

    /// Forgets every id above `id`.
    pub fn remove_above(&mut self, id: SegmentId) {
        let Some(offset) = id.0.checked_sub(self.base) else {
            self.words.clear();
            self.base = 0;
            return;
        };
        let word = offset / 64;
        if word >= self.words.len() as u64 {
            return;
        }
        self.words.truncate(word as usize + 1);
        let keep = offset % 64;
        if keep < 63 {
            self.words[word as usize] &= (1u64 << (keep + 1)) - 1;
        }
        self.trim();
    }

    fn trim(&mut self) {
        while self.words.last() == Some(&0) {
            self.words.pop();
        }
        self.trim_front();
    }

    fn trim_front(&mut self) {
        let leading = self.words.iter().take_while(|w| **w == 0).count();
        if leading > 0 {
            self.words.drain(..leading);
            self.base += leading as u64 * 64;
        }
        if self.words.is_empty() {
            self.base = 0;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Lowest and highest id held.
    pub fn bounds(&self) -> Option<(SegmentId, SegmentId)> {
        let first = self.words.first()?;
        let last = self.words.last()?;
        let low = self.base + u64::from(first.trailing_zeros());
        let high = self.base + (self.words.len() as u64 - 1) * 64 + 63 - u64::from(last.leading_zeros());
        Some((SegmentId(low), SegmentId(high)))
    }

    pub fn iter(&self) -> impl Iterator<Item = SegmentId> + '_ {
        self.words.iter().enumerate().flat_map(move |(i, w)| {
            (0..64u64).filter(move |b| w & (1 << b) != 0).map(move |b| SegmentId(self.base + i as u64 * 64 + b))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// The model: a `BTreeSet` that keeps at most the ids within MAX_SPAN of the highest
    /// word, as the set does.
    fn check(set: &SegmentSet, model: &BTreeSet<u64>) -> Result<(), TestCaseError> {
        prop_assert_eq!(set.iter().map(|s| s.0).collect::<BTreeSet<_>>(), model.clone());
        prop_assert!(set.words.len() <= MAX_WORDS);
        prop_assert_eq!(set.base % 64, 0);
        let (base, bytes) = set.to_bitmap();
        prop_assert_eq!(
            SegmentSet::from_bitmap(base, &bytes).iter().collect::<Vec<_>>(),
            set.iter().collect::<Vec<_>>()
        );
        prop_assert_eq!(set.bounds().map(|(a, b)| (a.0, b.0)), model.first().zip(model.last()).map(|(a, b)| (*a, *b)));
        Ok(())
    }

    fn model_insert(model: &mut BTreeSet<u64>, id: u64) {
        let word = id / 64;
        if let (Some(first), Some(last)) = (model.first().copied(), model.last().copied()) {
            let (low, high) = (first / 64, last / 64);
            if word < low {
                if high - word + 1 > MAX_WORDS as u64 {
                    return;
                }
            } else if word - low >= MAX_WORDS as u64 {
                let floor = word - (MAX_WORDS as u64 - 1);
                model.retain(|x| x / 64 >= floor);
            }
        }
        model.insert(id);
    }

    fn id_strategy() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..400, 0u64..300_000, (u64::MAX - 200)..=u64::MAX, any::<u64>()]
    }

    proptest! {
        /// Behaves like its model under any sequence of operations with any ids,
        /// including ids near `u64::MAX` and jumps far past the span.
        #[test]
        fn matches_its_model(ops in proptest::collection::vec((0u8..4, id_strategy()), 0..200)) {
            let mut set = SegmentSet::new();
            let mut model = BTreeSet::new();
            for (op, id) in ops {
                match op {
                    0 => { set.insert(SegmentId(id)); model_insert(&mut model, id); }
                    1 => { set.remove(SegmentId(id)); model.remove(&id); }
                    2 => { set.remove_below(SegmentId(id)); model.retain(|x| *x >= id); }
                    _ => { set.remove_above(SegmentId(id)); model.retain(|x| *x <= id); }
                }
                check(&set, &model)?;
            }
        }

        /// Any wire bitmap decodes to a bounded set.
        #[test]
        fn any_bitmap_is_bounded(base in id_strategy(), bytes in proptest::collection::vec(any::<u8>(), 0..9000)) {
            let set = SegmentSet::from_bitmap(base, &bytes);
            prop_assert!(set.words.len() <= MAX_WORDS);
            prop_assert!(set.len() <= bytes.iter().map(|b| b.count_ones() as usize).sum::<usize>());
        }
    }

    #[test]
    fn slides_forward_past_the_span() {
        let mut set = SegmentSet::new();
        set.insert(SegmentId(5));
        set.insert(SegmentId(5 + MAX_SPAN + 10));
        assert!(!set.contains(SegmentId(5)));
        assert!(set.contains(SegmentId(5 + MAX_SPAN + 10)));
        assert_eq!(set.len(), 1);
    }

    /// The attack that recursed forever before: an id just past the span of a set
    /// whose base was not where the slide expected it.
    #[test]
    fn the_recursion_attack_is_a_plain_slide() {
        let mut set = SegmentSet::new();
        set.insert(SegmentId(10));
        set.insert(SegmentId(65_541));
        assert!(set.contains(SegmentId(65_541)));
        assert!(set.words.len() <= MAX_WORDS);
    }

    /// `64·(2^32−1)` then `0`: on wasm32 the old span check wrapped in `usize` and asked
    /// for a 2^32-word vector.
    #[test]
    fn a_far_jump_down_is_ignored() {
        let mut set = SegmentSet::new();
        set.insert(SegmentId(64 * (u64::from(u32::MAX))));
        set.insert(SegmentId(0));
        assert_eq!(set.len(), 1);
        assert!(set.words.len() <= MAX_WORDS);
        let mut top = SegmentSet::new();
        top.insert(SegmentId(u64::MAX));
        top.insert(SegmentId(0));
        assert_eq!(top.iter().collect::<Vec<_>>(), vec![SegmentId(u64::MAX)]);
    }
}

/// Which chunks of one segment a peer holds while it is still fetching the rest.
/// Immutable once built and cheap to clone (one announcement goes to every neighbour).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkSet {
    words: std::sync::Arc<[u64]>,
}

/// Most bytes of a chunk bitmap (matches the record limit).
pub const MAX_CHUNK_SET_BYTES: usize = crate::integrity::MAX_CHUNKS / 8;

impl ChunkSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// From wire bytes; bits past [`crate::integrity::MAX_CHUNKS`] are dropped.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let bytes = &bytes[..bytes.len().min(MAX_CHUNK_SET_BYTES)];
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        for (i, byte) in bytes.iter().enumerate() {
            words[i / 8] |= u64::from(*byte) << ((i % 8) * 8);
        }
        while words.last() == Some(&0) {
            words.pop();
        }
        Self { words: words.into() }
    }

    /// The set of the given chunks; chunks past [`crate::integrity::MAX_CHUNKS`] are
    /// ignored.
    pub fn from_chunks(chunks: impl IntoIterator<Item = u32>) -> Self {
        let mut words: Vec<u64> = Vec::new();
        for chunk in chunks {
            if chunk as usize >= crate::integrity::MAX_CHUNKS {
                continue;
            }
            let (word, bit) = ((chunk / 64) as usize, chunk % 64);
            if word >= words.len() {
                words.resize(word + 1, 0);
            }
            words[word] |= 1 << bit;
        }
        Self { words: words.into() }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        bytes
    }

    /// Bytes of [`ChunkSet::to_bytes`].
    pub fn byte_len(&self) -> usize {
        let Some(last) = self.words.iter().rposition(|w| *w != 0) else { return 0 };
        last * 8 + (8 - self.words[last].leading_zeros() as usize / 8)
    }

    pub fn contains(&self, chunk: u32) -> bool {
        self.words.get((chunk / 64) as usize).is_some_and(|w| w & (1 << (chunk % 64)) != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words
            .iter()
            .enumerate()
            .flat_map(|(i, w)| (0..64u32).filter(move |b| w & (1 << b) != 0).map(move |b| i as u32 * 64 + b))
    }
}

#[cfg(test)]
mod chunk_set_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrips(chunks in proptest::collection::btree_set(0u32..2000, 0..50)) {
            let set = ChunkSet::from_chunks(chunks.iter().copied());
            prop_assert_eq!(set.byte_len(), set.to_bytes().len());
            let back = ChunkSet::from_bytes(&set.to_bytes());
            prop_assert_eq!(back.len(), chunks.len());
            prop_assert_eq!(back.iter().collect::<Vec<_>>(), chunks.iter().copied().collect::<Vec<_>>());
            for c in 0..2000 {
                prop_assert_eq!(back.contains(c), chunks.contains(&c));
            }
        }
    }

    #[test]
    fn out_of_range_chunks_are_ignored() {
        assert!(ChunkSet::from_chunks([u32::MAX]).is_empty());
        assert!(ChunkSet::from_bytes(&vec![0xff; MAX_CHUNK_SET_BYTES * 4]).len() <= crate::integrity::MAX_CHUNKS);
    }
}
