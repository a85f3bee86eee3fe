//! Which segments a peer holds or is fetching: a bitset over segment ids from a moving
//! base, compact on the wire and in memory (a live window fits in one word).

use crate::integrity::SegmentId;

/// Most segments a set may span; beyond that the oldest are dropped.
pub const MAX_SPAN: u64 = 65_536;

/// A set of segment ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentSet {
    base: u64,
    words: Vec<u64>,
}

impl SegmentSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from its wire form: `base` and little-endian bitmap bytes.
    pub fn from_bitmap(base: u64, bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        for (i, byte) in bytes.iter().enumerate() {
            words[i / 8] |= u64::from(*byte) << ((i % 8) * 8);
        }
        let mut set = Self { base, words };
        set.trim();
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

    pub fn contains(&self, id: SegmentId) -> bool {
        let Some(offset) = id.0.checked_sub(self.base) else { return false };
        let (word, bit) = ((offset / 64) as usize, offset % 64);
        self.words.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    pub fn insert(&mut self, id: SegmentId) {
        if self.words.is_empty() {
            self.base = id.0 - id.0 % 64;
        }
        if id.0 < self.base {
            // Grow downwards by whole words.
            let shift_words = (self.base - id.0).div_ceil(64) as usize;
            if (self.words.len() + shift_words) as u64 * 64 > MAX_SPAN {
                return; // too old to track
            }
            let mut words = vec![0; shift_words];
            words.append(&mut self.words);
            self.words = words;
            self.base -= shift_words as u64 * 64;
        }
        let offset = id.0 - self.base;
        if offset >= MAX_SPAN {
            // Slide forward, forgetting the oldest.
            self.remove_below(SegmentId(id.0 + 1 - MAX_SPAN));
            return self.insert(id);
        }
        let (word, bit) = ((offset / 64) as usize, offset % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << bit;
    }

    pub fn remove(&mut self, id: SegmentId) {
        let Some(offset) = id.0.checked_sub(self.base) else { return };
        let (word, bit) = ((offset / 64) as usize, offset % 64);
        if let Some(w) = self.words.get_mut(word) {
            *w &= !(1 << bit);
        }
        self.trim();
    }

    /// Forgets every id below `id`.
    pub fn remove_below(&mut self, id: SegmentId) {
        if id.0 <= self.base {
            return;
        }
        let drop_words = ((id.0 - self.base) / 64) as usize;
        if drop_words >= self.words.len() {
            self.words.clear();
            self.base = id.0 - id.0 % 64;
            return;
        }
        self.words.drain(..drop_words);
        self.base += drop_words as u64 * 64;
        let partial = id.0 - self.base;
        if partial > 0 {
            self.words[0] &= !((1u64 << partial) - 1);
        }
        self.trim();
    }

    fn trim(&mut self) {
        while self.words.last() == Some(&0) {
            self.words.pop();
        }
        let leading = self.words.iter().take_while(|w| **w == 0).count();
        if leading > 0 {
            self.words.drain(..leading);
            self.base += leading as u64 * 64;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = SegmentId> + '_ {
        self.words.iter().enumerate().flat_map(move |(i, w)| {
            (0..64).filter(move |b| w & (1 << b) != 0).map(move |b| SegmentId(self.base + i as u64 * 64 + b))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        /// Behaves like a `BTreeSet` restricted to the last MAX_SPAN ids, and survives
        /// the bitmap round trip.
        #[test]
        fn matches_a_btreeset(ops in proptest::collection::vec((0u8..3, 0u64..400), 0..200)) {
            let mut set = SegmentSet::new();
            let mut model = BTreeSet::new();
            for (op, id) in ops {
                match op {
                    0 => { set.insert(SegmentId(id)); model.insert(id); }
                    1 => { set.remove(SegmentId(id)); model.remove(&id); }
                    _ => { set.remove_below(SegmentId(id)); model.retain(|x| *x >= id); }
                }
                prop_assert_eq!(set.iter().map(|s| s.0).collect::<BTreeSet<_>>(), model.clone());
                let (base, bytes) = set.to_bitmap();
                prop_assert_eq!(SegmentSet::from_bitmap(base, &bytes).iter().collect::<Vec<_>>(), set.iter().collect::<Vec<_>>());
            }
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
}

/// Which chunks of one segment a peer holds while it is still fetching the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkSet {
    words: Vec<u64>,
}

/// Most chunks a set may name (matches the record limit).
pub const MAX_CHUNK_SET_BYTES: usize = crate::integrity::MAX_CHUNKS / 8;

impl ChunkSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        for (i, byte) in bytes.iter().enumerate() {
            words[i / 8] |= u64::from(*byte) << ((i % 8) * 8);
        }
        while words.last() == Some(&0) {
            words.pop();
        }
        Self { words }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        bytes
    }

    pub fn insert(&mut self, chunk: u32) {
        let (word, bit) = ((chunk / 64) as usize, chunk % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << bit;
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
}

#[cfg(test)]
mod chunk_set_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrips(chunks in proptest::collection::btree_set(0u32..2000, 0..50)) {
            let mut set = ChunkSet::new();
            for c in &chunks {
                set.insert(*c);
            }
            let back = ChunkSet::from_bytes(&set.to_bytes());
            prop_assert_eq!(back.len(), chunks.len());
            for c in 0..2000 {
                prop_assert_eq!(back.contains(c), chunks.contains(&c));
            }
        }
    }
}
