//! Maps keyed by conversion id with a cheap hash.
//!
//! Why not the standard hasher: every job looks its id up several times (record, queue entry,
//! running attempt, bus topic), and SipHash, built to resist keys chosen by an attacker, is a
//! good part of each lookup. Conversion ids are UUIDv7s the engine generates, so they are
//! spread already; folding their bytes and mixing the result is enough. An id from a client
//! is only ever looked up, never inserted, so it cannot crowd a map's buckets.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::ConversionId;

/// A map from conversion id, with [`IdHasher`].
pub(crate) type IdMap<V> = HashMap<ConversionId, V, BuildHasherDefault<IdHasher>>;

/// Folds the bytes it is given eight at a time, multiplying after each; `finish` brings the
/// well-mixed high bits down to the low ones the table indexes by.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

/// An odd constant with well-spread bits (2^64 divided by the golden ratio).
const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(26) ^ u64::from_le_bytes(word)).wrapping_mul(MIX);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.write(&n.to_le_bytes());
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn ids_made_together_spread_over_the_buckets() {
        let build = BuildHasherDefault::<IdHasher>::default();
        let ids: Vec<ConversionId> = (0..4096).map(|_| ConversionId::new()).collect();
        // The low 12 bits pick one of 4096 buckets: nearly all ids should land apart.
        let buckets: HashSet<u64> = ids.iter().map(|id| build.hash_one(id) & 0xfff).collect();
        assert!(
            buckets.len() > 2400,
            "only {} of 4096 buckets used",
            buckets.len()
        );
        // The top 7 bits are the table's tag: all 128 values are used.
        let tags: HashSet<u64> = ids.iter().map(|id| build.hash_one(id) >> 57).collect();
        assert_eq!(tags.len(), 128);
    }

    #[test]
    fn a_map_finds_what_it_holds() {
        let mut map: IdMap<usize> = IdMap::default();
        let ids: Vec<ConversionId> = (0..1000).map(|_| ConversionId::new()).collect();
        for (i, id) in ids.iter().enumerate() {
            map.insert(*id, i);
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(map.get(id), Some(&i));
        }
    }
}
