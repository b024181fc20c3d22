//! The hashing wire contract: which shard a key falls in, and which member owns a shard.
//!
//! Every member of a group must compute exactly the same answers, in Rust or elsewhere, so
//! everything here is frozen by test vectors and named by [`HASH_ID`], which goes in every
//! member record. Changing any of it needs a new id and a new group.
//!
//! * [`shard_for`]: `XXH64(key, seed 0) mod N`. [`xxh64`] is the published xxHash algorithm
//!   (the same as Go's `cespare/xxhash/v2.Sum64` and Python's `xxhash.xxh64_intdigest`).
//! * Ownership is rendezvous hashing (highest random weight): shard `k` belongs to the member
//!   with the largest `(weight(member_hash(m), k), m)`, comparing identities as bytes when two
//!   weights tie. A join moves only the shards the joiner now wins, a leave only the leaver's.

use std::num::NonZeroU32;

use super::claims::ShardSet;

/// The name of the algorithms in this module, written in every member record.
pub const HASH_ID: &str = "xxh64-splitmix64-v1";

// The five XXH64 primes, from the xxHash specification.
const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

/// The SplitMix64 increment (the golden ratio in 64 bits).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// One XXH64 round: folds the 8-byte `lane` into the accumulator `acc`.
fn round(acc: u64, lane: u64) -> u64 {
    acc.wrapping_add(lane.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

/// Folds one of the four stripe accumulators into the converged accumulator.
fn merge(acc: u64, val: u64) -> u64 {
    (acc ^ round(0, val)).wrapping_mul(P1).wrapping_add(P4)
}

/// XXH64 of `bytes` with `seed`, as published in the xxHash specification.
///
/// `xxh64(b"abc", 0) == 0x44bc2cf5ad770999`.
pub fn xxh64(bytes: &[u8], seed: u64) -> u64 {
    // Stripes of 32 bytes feed four accumulators; inputs shorter than one stripe skip them.
    let (stripes, rest) = bytes.as_chunks::<32>();
    let mut acc = if stripes.is_empty() {
        seed.wrapping_add(P5)
    } else {
        let mut v = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        for stripe in stripes {
            let (lanes, _) = stripe.as_chunks::<8>();
            for (v, lane) in v.iter_mut().zip(lanes) {
                *v = round(*v, u64::from_le_bytes(*lane));
            }
        }
        let acc = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        v.iter().fold(acc, |acc, &v| merge(acc, v))
    };
    // `usize` is at most 64 bits on every Rust target, so this is the length mod 2^64.
    acc = acc.wrapping_add(bytes.len() as u64);

    // The remaining 0..32 bytes: 8 at a time, then 4, then one by one.
    let (words, rest) = rest.as_chunks::<8>();
    for word in words {
        acc ^= round(0, u64::from_le_bytes(*word));
        acc = acc.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
    }
    let rest = match rest.split_first_chunk::<4>() {
        Some((half, rest)) => {
            acc ^= u64::from(u32::from_le_bytes(*half)).wrapping_mul(P1);
            acc = acc.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
            rest
        }
        None => rest,
    };
    for &byte in rest {
        acc ^= u64::from(byte).wrapping_mul(P5);
        acc = acc.rotate_left(11).wrapping_mul(P1);
    }

    // The final avalanche.
    acc ^= acc >> 33;
    acc = acc.wrapping_mul(P2);
    acc ^= acc >> 29;
    acc = acc.wrapping_mul(P3);
    acc ^ (acc >> 32)
}

/// The shard of `key` among `shards`: `xxh64(key, 0) % shards`.
///
/// `shard_for("default/my-object", 1024) == 270`.
pub fn shard_for(key: impl AsRef<[u8]>, shards: NonZeroU32) -> u32 {
    let shard = xxh64(key.as_ref(), 0) % u64::from(shards.get());
    // The remainder is below `shards`, a `u32`, so the conversion is exact.
    shard as u32
}

/// The hash of a member's identity that its weights derive from: `xxh64(identity, 0)`.
pub fn member_hash(identity: &str) -> u64 {
    xxh64(identity.as_bytes(), 0)
}

/// The rendezvous weight of the member whose hash is `member_hash` for `shard`.
///
/// This is output number `shard + 1` of SplitMix64 seeded with `member_hash` (the mixer of
/// Java's `SplittableRandom`).
pub fn weight(member_hash: u64, shard: u32) -> u64 {
    let mut z = member_hash.wrapping_add((u64::from(shard) + 1).wrapping_mul(GAMMA));
    z ^= z >> 30;
    z = z.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^= z >> 27;
    z = z.wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A set of member identities, with their hashes, among which shards are assigned.
///
/// Members are kept sorted by identity (as bytes) and without duplicates, so the index of a
/// member ([`Members::owner_index`], [`Members::assign`]) does not depend on the order they
/// were given in, and comparing indices compares identities. Every query is a pure function
/// of the set: members that see the same set compute the same owners.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// The identities, sorted and deduplicated.
    identities: Vec<String>,
    /// `hashes[i] = member_hash(&identities[i])`.
    hashes: Vec<u64>,
}

impl Members {
    /// The set of `identities`, deduplicated.
    pub fn new<I, S>(identities: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut identities: Vec<String> = identities.into_iter().map(Into::into).collect();
        identities.sort_unstable();
        identities.dedup();
        let hashes = identities.iter().map(|id| member_hash(id)).collect();
        Members { identities, hashes }
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.identities.len()
    }

    /// Whether there are no members (then no shard has an owner).
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    /// Whether `identity` is a member.
    pub fn contains(&self, identity: &str) -> bool {
        self.index_of(identity).is_some()
    }

    /// The index of `identity`, if it is a member.
    pub fn index_of(&self, identity: &str) -> Option<usize> {
        self.identities
            .binary_search_by(|id| id.as_str().cmp(identity))
            .ok()
    }

    /// The identity at `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<&str> {
        self.identities.get(index).map(String::as_str)
    }

    /// The identities, in index order (sorted as bytes).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.identities.iter().map(String::as_str)
    }

    /// The index of the owner of `shard`, or `None` if there are no members.
    pub fn owner_index(&self, shard: u32) -> Option<usize> {
        // Members are sorted, so on equal weights the larger index is the larger identity:
        // comparing `(weight, index)` is comparing `(weight, identity)`. `max_by_key` keeps the
        // last of equal maxima, which is the larger index, but the index in the key says so.
        self.hashes
            .iter()
            .enumerate()
            .max_by_key(|&(i, &h)| (weight(h, shard), i))
            .map(|(i, _)| i)
    }

    /// The identity of the owner of `shard`, or `None` if there are no members.
    pub fn owner(&self, shard: u32) -> Option<&str> {
        self.owner_index(shard).and_then(|i| self.get(i))
    }

    /// The owner's index for every shard in `0..shards`, or `None` if there are no members.
    pub fn assign(&self, shards: u32) -> Option<Vec<usize>> {
        if self.is_empty() {
            return None;
        }
        (0..shards).map(|k| self.owner_index(k)).collect()
    }

    /// The shards among `0..shards` that `identity` owns (empty if it is not a member).
    ///
    /// One pass over the shards with at most one weight per member each, stopping at the first
    /// member that beats `identity`; no allocation besides the result. The result's capacity
    /// is `shards`, capped at [`MAX_SHARDS`](super::claims::MAX_SHARDS) as
    /// [`ShardSet::new`] does.
    pub fn owned_by(&self, identity: &str, shards: u32) -> ShardSet {
        let mut owned = ShardSet::new(shards);
        let Some(me) = self.index_of(identity) else {
            return owned;
        };
        let mine = self.hashes[me];
        for shard in 0..owned.capacity() {
            let key = (weight(mine, shard), me);
            let beaten = self
                .hashes
                .iter()
                .enumerate()
                .any(|(i, &h)| i != me && (weight(h, shard), i) > key);
            if !beaten {
                owned.insert(shard);
            }
        }
        owned
    }
}

impl<S: Into<String>> FromIterator<S> for Members {
    fn from_iter<I: IntoIterator<Item = S>>(identities: I) -> Self {
        Members::new(identities)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("test shard counts are nonzero")
    }

    /// `n` bytes of the pattern `(i * 7 + 3) mod 256`, the input of the computed vectors.
    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn xxh64_published_vectors() {
        assert_eq!(xxh64(b"", 0), 0xef46_db37_51d8_e999);
        assert_eq!(xxh64(b"abc", 0), 0x44bc_2cf5_ad77_0999);
        assert_eq!(xxh64(&[b'a'; 40], 0), 0x569e_a684_3111_ef03);
    }

    /// The vectors of xxHash's own sanity check (`xsum_sanity_check.c`), over its generated
    /// buffer, with seeds 0 and PRIME32.
    #[test]
    fn xxh64_upstream_sanity_vectors() {
        const PRIME32: u64 = 2_654_435_761;
        let mut generator = PRIME32;
        let buffer: Vec<u8> = (0..222)
            .map(|_| {
                let byte = (generator >> 56) as u8;
                generator = generator.wrapping_mul(11_400_714_785_074_694_797);
                byte
            })
            .collect();
        let cases = [
            (0, 0, 0xEF46_DB37_51D8_E999),
            (0, PRIME32, 0xAC75_FDA2_929B_17EF),
            (1, 0, 0xE934_A84A_DB05_2768),
            (1, PRIME32, 0x5014_6076_43A9_B4C3),
            (14, 0, 0x8282_DCC4_994E_35C8),
            (14, PRIME32, 0xC3BD_6BF6_3DEB_6DF0),
            (222, 0, 0xB641_AE8C_B691_C174),
            (222, PRIME32, 0x20CB_8AB7_AE10_C14A),
        ];
        for (len, seed, want) in cases {
            assert_eq!(xxh64(&buffer[..len], seed), want, "len {len} seed {seed}");
        }
    }

    /// Computed with an independent Python implementation of the specification (which
    /// reproduces the vectors above), over [`pattern`]: every branch of the tail and of the
    /// stripe loop, and a nonzero seed.
    #[test]
    fn xxh64_computed_vectors() {
        let cases: [(usize, u64, u64); 13] = [
            (1, 0, 0x1f25_c8d0_bc1f_4bb6),
            (3, 0, 0x31d2_363f_52e5_64c9),
            (4, 0, 0x9bb6_4b7d_66ee_9fda),
            (7, 0, 0x9a7b_1499_59ce_60d8),
            (8, 0, 0xdab9_9d95_c6f9_0092),
            (31, 0, 0xa2aa_5f33_cc4a_6119),
            (32, 0, 0x23c3_c17e_f790_fd97),
            (33, 0, 0x50a7_cfc7_ba58_8784),
            (100, 0, 0xa61f_8d4c_170f_e531),
            (0, GAMMA, 0xc434_9fc9_3c01_0000),
            (5, GAMMA, 0xa677_b535_c22b_67a5),
            (40, GAMMA, 0x3b36_66e2_50c8_3a50),
            (100, GAMMA, 0xf6d8_f65c_625a_bb4f),
        ];
        for (len, seed, want) in cases {
            assert_eq!(xxh64(&pattern(len), seed), want, "len {len} seed {seed:#x}");
        }
        assert_eq!(xxh64(b"abc", 1), 0xbea9_ca81_9932_8908);
    }

    #[test]
    fn shard_for_vector() {
        assert_eq!(shard_for("default/my-object", nz(1024)), 270);
        assert_eq!(shard_for(b"default/my-object", nz(1)), 0);
    }

    #[test]
    fn weight_vectors() {
        let h = member_hash("node-0");
        assert_eq!(h, 0x1578_8205_5c80_2771);
        assert_eq!(weight(h, 0), 0x066c_1559_fd2b_dfe1);
        assert_eq!(weight(h, 1), 0x6ed7_7d14_8885_539d);
    }

    #[test]
    fn owner_vectors() {
        // Given out of order and with a duplicate: the set, and so the indices, are the same.
        let members = Members::new(["node-2", "node-0", "node-1", "node-0"]);
        assert_eq!(members.len(), 3);
        assert_eq!(
            members.iter().collect::<Vec<_>>(),
            ["node-0", "node-1", "node-2"]
        );
        assert_eq!(members.assign(8), Some(vec![2, 2, 2, 0, 1, 2, 2, 1]));
        let owners: Vec<_> = (0..8).filter_map(|k| members.owner(k)).collect();
        assert_eq!(
            owners,
            [
                "node-2", "node-2", "node-2", "node-0", "node-1", "node-2", "node-2", "node-1"
            ]
        );
        let owned: Vec<u32> = members.owned_by("node-2", 8).iter().collect();
        assert_eq!(owned, [0, 1, 2, 5, 6]);
        assert!(members.owned_by("node-3", 8).is_empty());
    }

    #[test]
    fn no_members_no_owner() {
        let members = Members::new(Vec::<String>::new());
        assert!(members.is_empty());
        assert_eq!(members.owner(0), None);
        assert_eq!(members.assign(4), None);
        assert!(!members.contains("a"));
        assert_eq!(members.owned_by("a", 4).capacity(), 4);
    }

    #[test]
    fn ties_go_to_the_larger_identity() {
        // No two known identities have equal hashes, so force them equal to exercise the rule.
        let members = Members {
            identities: vec!["a".into(), "b".into()],
            hashes: vec![7, 7],
        };
        for shard in 0..16 {
            assert_eq!(members.owner(shard), Some("b"));
        }
        assert_eq!(members.owned_by("b", 16).len(), 16);
        assert!(members.owned_by("a", 16).is_empty());
    }

    /// Loads of `N = 1024` shards over `pod-0..pod-{M-1}` stay under the exact union bound
    /// x(δ = 1e-3) of the design (§4).
    #[test]
    fn balance() {
        const N: u32 = 1024;
        for (m, bound) in [(3usize, 394usize), (10, 141), (50, 42)] {
            let members = Members::new((0..m).map(|i| format!("pod-{i}")));
            let mut loads = vec![0usize; m];
            for owner in members.assign(N).expect("members") {
                loads[owner] += 1;
            }
            let max = loads.iter().copied().max().unwrap_or(0);
            let mean = f64::from(N) / m as f64;
            println!("M={m}: max {max}, max/mean {:.3}", max as f64 / mean);
            assert!(max <= bound, "M={m}: max load {max} > {bound}");
            // `owned_by` agrees with `assign`.
            for (i, id) in members.iter().enumerate() {
                assert_eq!(members.owned_by(id, N).len() as usize, loads[i]);
            }
        }
    }

    fn identities() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec("[a-z0-9-]{1,6}", 0..8)
    }

    proptest! {
        #[test]
        fn join_moves_shards_only_to_the_joiner(ids in identities(), joiner in "[a-z0-9-]{1,6}") {
            prop_assume!(!ids.contains(&joiner));
            let before = Members::new(ids.iter().cloned());
            let after = Members::new(ids.iter().cloned().chain([joiner.clone()]));
            for shard in 0..256 {
                let (old, new) = (before.owner(shard), after.owner(shard));
                if old != new {
                    prop_assert_eq!(new, Some(joiner.as_str()), "shard {}", shard);
                }
            }
        }

        #[test]
        fn leave_moves_only_the_leavers_shards(ids in identities(), pick in any::<prop::sample::Index>()) {
            let before = Members::new(ids.iter().cloned());
            prop_assume!(!before.is_empty());
            let leaver = before.get(pick.index(before.len())).expect("in range").to_string();
            let after = Members::new(before.iter().filter(|&id| id != leaver));
            let owned = before.owned_by(&leaver, 256);
            for shard in 0..256 {
                let (old, new) = (before.owner(shard), after.owner(shard));
                if old != new {
                    prop_assert_eq!(old, Some(leaver.as_str()), "shard {}", shard);
                }
                prop_assert_eq!(owned.contains(shard), old == Some(leaver.as_str()));
            }
        }
    }
}
