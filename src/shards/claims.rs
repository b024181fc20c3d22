//! What a member's Lease says it claims: the shard bitmaps and their JSON annotation.
//!
//! A member writes [`MemberClaims`] as compact JSON in the annotation [`MEMBER_ANNOTATION`] of
//! its own Lease:
//!
//! ```json
//! {"v":1,"group":"orders","shards":1024,"hash":"xxh64-splitmix64-v1","seq":42,"epoch":17,"active":"<b64>","pending":"<b64>","leaving":false}
//! ```
//!
//! `active` and `pending` are [`ShardSet`] bitmaps in base64url ([`ShardSet::to_base64url`]).
//! Anyone allowed to write a Lease can put anything in it, and a record this code misreads
//! could let two members own one shard, so [`MemberClaims::decode`] is strict: one JSON object,
//! every field present once with its type, bitmaps in their one canonical form (unknown fields
//! are ignored, for compatible additions within version 1), and it names what is wrong
//! otherwise. Its caller treats a record that fails to decode as claiming every shard.

use serde::de::{DeserializeOwned, Error as _, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::hash::HASH_ID;

/// The label that puts a member's Lease in its group: `leasehold.dev/shard-group: <group>`.
pub const GROUP_LABEL: &str = "leasehold.dev/shard-group";

/// The annotation that holds a member's claims (the JSON of [`MemberClaims::encode`]).
pub const MEMBER_ANNOTATION: &str = "leasehold.dev/shard-member";

/// The finalizer a member's Lease carries while it has a holder.
pub const MEMBER_FINALIZER: &str = "leasehold.dev/shard-member";

/// The largest number of shards in a group (a bitmap is then 8 KiB, 10,923 characters).
pub const MAX_SHARDS: u32 = 65_536;

/// The version of the annotation's format, its `"v"` field.
pub const CLAIMS_VERSION: u64 = 1;

/// The largest `seq` or `epoch` an annotation may carry, 2^53 - 1: the largest integer every
/// JSON reader (JavaScript, Go's `interface{}` decoding, `jq`) holds exactly. A member adds
/// one to each per write or token, so a genuine record takes millennia to get there; a
/// larger number is garbage, and reading it as such keeps every sum below `u64::MAX` (tokens
/// never saturate into equal ones).
pub const MAX_COUNTER: u64 = (1 << 53) - 1;

/// The largest `seq` or `epoch` a member takes over from a record it reads, 2^52: a readable
/// record above it counts as carrying 0. A member's own counters then stay below
/// [`MAX_COUNTER`] for 2^52 more writes, so nothing a member writes is ever unreadable.
pub const MAX_ADOPTED_COUNTER: u64 = 1 << 52;

/// `value` if a member may take it over, else 0 (see [`MAX_ADOPTED_COUNTER`]).
pub(crate) fn adopted(value: u64) -> u64 {
    if value > MAX_ADOPTED_COUNTER {
        0
    } else {
        value
    }
}

/// Why an annotation or a bitmap was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimsError {
    /// The annotation has a format version this code does not know.
    #[error("unknown shard-member annotation version {0} (this code reads version 1)")]
    UnknownVersion(u64),
    /// The annotation belongs to another group.
    #[error("the shard-member annotation belongs to group {0:?}")]
    OtherGroup(String),
    /// The annotation divides keys into a different number of shards.
    #[error("the shard-member annotation has {0} shards, not this group's number")]
    OtherShardCount(u32),
    /// The annotation assigns shards with another hash.
    #[error("the shard-member annotation uses hash {0:?}, not {HASH_ID:?}")]
    OtherHash(String),
    /// Not JSON, not an object, or a field missing, repeated or of the wrong type.
    #[error("malformed shard-member annotation: {0}")]
    Malformed(String),
    /// A bitmap that is not the canonical encoding of a set of shards.
    #[error("bad shard bitmap: {0}")]
    BadBitmap(String),
    /// A shard both active and pending.
    #[error("the shard-member annotation has shards both active and pending")]
    Overlap,
}

/// A set of shards among `0..n`, as a fixed-size bitset (`n` ≤ [`MAX_SHARDS`]).
///
/// Shards at or above the capacity are never members: inserting one does nothing, and
/// looking one up says no. Two sets are equal when they have the same capacity and shards.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShardSet {
    /// The capacity `n`.
    n: u32,
    /// Shard `s` is bit `s % 64` of `words[s / 64]`; there are ⌈n/64⌉ words and the bits at or
    /// above `n` are zero (so the derived comparisons and hash are by content).
    words: Vec<u64>,
}

impl ShardSet {
    /// The empty set of capacity `n`, capped at [`MAX_SHARDS`].
    pub fn new(n: u32) -> Self {
        let n = n.min(MAX_SHARDS);
        ShardSet {
            n,
            words: vec![0; n.div_ceil(64) as usize],
        }
    }

    /// The set of all the shards `0..n`, `n` capped at [`MAX_SHARDS`].
    pub fn full(n: u32) -> Self {
        let mut set = ShardSet::new(n);
        set.words.fill(u64::MAX);
        set.clear_excess();
        set
    }

    /// The capacity: the set holds shards among `0..capacity()`.
    pub fn capacity(&self) -> u32 {
        self.n
    }

    /// Adds `shard`; whether it was added (false if present or out of range).
    pub fn insert(&mut self, shard: u32) -> bool {
        match self.bit(shard) {
            Some((word, mask)) => {
                let added = *word & mask == 0;
                *word |= mask;
                added
            }
            None => false,
        }
    }

    /// Removes `shard`; whether it was present.
    pub fn remove(&mut self, shard: u32) -> bool {
        match self.bit(shard) {
            Some((word, mask)) => {
                let present = *word & mask != 0;
                *word &= !mask;
                present
            }
            None => false,
        }
    }

    /// Whether `shard` is in the set (false if out of range).
    pub fn contains(&self, shard: u32) -> bool {
        shard < self.n && self.words[(shard / 64) as usize] & (1 << (shard % 64)) != 0
    }

    /// The number of shards in the set.
    pub fn len(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }

    /// Whether the set has no shards.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The shards in the set, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().zip(0u32..).flat_map(|(&word, i)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.trailing_zeros();
                rest &= rest - 1; // clears the lowest set bit
                Some(i * 64 + bit)
            })
        })
    }

    /// Adds every shard of `other` (those below this set's capacity).
    pub fn union_with(&mut self, other: &ShardSet) {
        for (word, theirs) in self.words.iter_mut().zip(&other.words) {
            *word |= theirs;
        }
        self.clear_excess();
    }

    /// Whether the two sets have a shard in common.
    pub fn intersects(&self, other: &ShardSet) -> bool {
        self.words.iter().zip(&other.words).any(|(a, b)| a & b != 0)
    }

    /// Removes every shard.
    pub fn clear(&mut self) {
        self.words.fill(0);
    }

    /// The bitmap in base64url without padding: ⌈n/8⌉ bytes, shard `s` at bit `s & 7` (least
    /// significant first) of byte `s >> 3`; the empty set is `""` whatever the capacity.
    pub fn to_base64url(&self) -> String {
        if self.is_empty() {
            return String::new();
        }
        let bytes: Vec<u8> = (0..self.n.div_ceil(8) as usize)
            .map(|i| (self.words[i / 8] >> (8 * (i % 8))) as u8)
            .collect();
        let mut out = String::with_capacity(encoded_len(bytes.len()));
        for chunk in bytes.chunks(3) {
            // Up to 24 bits, most significant first, cut into 6-bit characters: 1 byte makes
            // 2 characters, 2 bytes 3 and 3 bytes 4, as unpadded base64 does.
            let bits = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[(bits >> (18 - 6 * i)) as usize & 63]));
            }
        }
        out
    }

    /// Decodes the bitmap of a set of capacity `n` written by [`ShardSet::to_base64url`].
    ///
    /// Strict: accepts only what `to_base64url` writes, so `""` is the empty set and anything
    /// else must be exactly ⌈n/8⌉ bytes in unpadded base64url with zero unused bits, no shard
    /// at or above `n`, and at least one shard.
    ///
    /// # Errors
    /// [`ClaimsError::BadBitmap`] otherwise, or when `n` is above [`MAX_SHARDS`].
    pub fn from_base64url(s: &str, n: u32) -> Result<ShardSet, ClaimsError> {
        decode_bitmap(s, n).map_err(ClaimsError::BadBitmap)
    }

    /// The word and bit of `shard`, if it is in range.
    fn bit(&mut self, shard: u32) -> Option<(&mut u64, u64)> {
        if shard >= self.n {
            return None;
        }
        let word = self.words.get_mut((shard / 64) as usize)?;
        Some((word, 1 << (shard % 64)))
    }

    /// Zeroes the bits at or above the capacity, restoring the invariant.
    fn clear_excess(&mut self) {
        if let Some(last) = self.words.last_mut()
            && !self.n.is_multiple_of(64)
        {
            *last &= (1 << (self.n % 64)) - 1;
        }
    }

    /// The same shards (those below `n`) in a set of capacity `n`.
    fn resized(&self, n: u32) -> ShardSet {
        let mut set = ShardSet::new(n);
        set.union_with(self);
        set
    }
}

/// The base64url alphabet (RFC 4648 §5).
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The length of `bytes` bytes in unpadded base64.
fn encoded_len(bytes: usize) -> usize {
    (bytes * 4).div_ceil(3)
}

/// The value of a base64url character.
fn sextet(c: u8) -> Option<u32> {
    let value = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    };
    Some(u32::from(value))
}

/// [`ShardSet::from_base64url`], with the reason of a failure.
fn decode_bitmap(s: &str, n: u32) -> Result<ShardSet, String> {
    if n > MAX_SHARDS {
        return Err(format!("{n} shards is more than the maximum {MAX_SHARDS}"));
    }
    let mut set = ShardSet::new(n);
    if s.is_empty() {
        return Ok(set);
    }
    let want = encoded_len(n.div_ceil(8) as usize);
    if s.len() != want {
        return Err(format!(
            "{} characters, but {n} shards take {want} (or \"\" for none)",
            s.len()
        ));
    }
    let mut byte_index = 0usize;
    for (chunk_index, chunk) in s.as_bytes().chunks(4).enumerate() {
        let mut bits = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let value = sextet(c).ok_or_else(|| {
                format!(
                    "byte {:#04x} at {} is not base64url",
                    c,
                    chunk_index * 4 + i
                )
            })?;
            bits = bits << 6 | value;
        }
        // 4 characters carry 3 bytes; a last group of 3 carries 2 bytes and 2 unused bits, one
        // of 2 carries 1 byte and 4 unused bits. (One character alone cannot occur: no byte
        // count encodes to a length of 4k + 1.)
        let (count, unused) = match chunk.len() {
            4 => (3, 0),
            3 => (2, 2),
            2 => (1, 4),
            _ => return Err("truncated base64".to_owned()),
        };
        if bits & ((1 << unused) - 1) != 0 {
            return Err(
                "non-canonical base64: the unused bits of the last character are set".to_owned(),
            );
        }
        bits >>= unused;
        for i in (0..count).rev() {
            let byte = u64::from((bits >> (8 * i)) as u8);
            if let Some(word) = set.words.get_mut(byte_index / 8) {
                *word |= byte << (8 * (byte_index % 8));
            }
            byte_index += 1;
        }
    }
    // The bytes cover ⌈n/8⌉·8 bits: any past `n` are in the last word.
    if let Some(&last) = set.words.last()
        && !n.is_multiple_of(64)
        && last >> (n % 64) != 0
    {
        return Err(format!("a shard at or above {n} is set"));
    }
    if set.is_empty() {
        return Err("non-canonical: the empty set is written \"\"".to_owned());
    }
    Ok(set)
}

/// What a member claims, as written in its Lease's annotation [`MEMBER_ANNOTATION`].
///
/// `active` and `pending` must be disjoint and of the same capacity, the group's number of
/// shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberClaims {
    /// +1 on every write of this Lease by leasehold, across terms and restarts; at most
    /// [`MAX_COUNTER`].
    pub seq: u64,
    /// Never decreases on a Lease; at most [`MAX_COUNTER`].
    pub epoch: u64,
    /// The shards the member owns.
    pub active: ShardSet,
    /// The shards the member is acquiring.
    pub pending: ShardSet,
    /// Whether a graceful leave has begun.
    pub leaving: bool,
}

/// The annotation's fields, in the order written.
const FIELDS: [&str; 9] = [
    "v", "group", "shards", "hash", "seq", "epoch", "active", "pending", "leaving",
];

/// The annotation's known fields as parsed JSON, each present at most once; other fields are
/// skipped unread.
///
/// The crate's `serde` has no `derive` feature, so this reads the object by hand, which also
/// lets it check the version before the types of fields another version may change, and
/// reject a repeated field, which readers could otherwise take differently (first or last).
struct Fields([Option<Value>; FIELDS.len()]);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FieldsVisitor)
    }
}

/// The visitor of [`Fields`]: accepts a JSON object only.
struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut fields = Fields(Default::default());
        while let Some(key) = map.next_key::<String>()? {
            let slot = FIELDS
                .iter()
                .position(|&f| f == key)
                .and_then(|i| fields.0.get_mut(i));
            match slot {
                Some(Some(_)) => return Err(A::Error::custom(format!("duplicate field `{key}`"))),
                Some(slot) => *slot = Some(map.next_value()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

impl Fields {
    /// Takes the field `name` (one of [`FIELDS`]) as a `T`.
    fn take<T: DeserializeOwned>(&mut self, name: &str) -> Result<T, ClaimsError> {
        let value = FIELDS
            .iter()
            .position(|&f| f == name)
            .and_then(|i| self.0.get_mut(i))
            .and_then(Option::take)
            .ok_or_else(|| ClaimsError::Malformed(format!("missing field `{name}`")))?;
        serde_json::from_value(value)
            .map_err(|e| ClaimsError::Malformed(format!("field `{name}`: {e}")))
    }
}

/// `s` as a JSON string literal, quoted and escaped.
fn json_string(s: &str) -> String {
    // `Value`'s `Display` writes to a `String`, which cannot fail.
    Value::from(s).to_string()
}

impl MemberClaims {
    /// No claims, in a group of `shards` shards; `seq` and `epoch` 0.
    pub fn empty(shards: u32) -> Self {
        MemberClaims {
            seq: 0,
            epoch: 0,
            active: ShardSet::new(shards),
            pending: ShardSet::new(shards),
            leaving: false,
        }
    }

    /// The member's claims: `active ∪ pending`.
    pub fn claims(&self) -> ShardSet {
        let mut claims = self.active.clone();
        claims.union_with(&self.pending);
        claims
    }

    /// The annotation's compact JSON for the group `group`, whose number of shards is
    /// `active`'s capacity (`pending` is written with that capacity).
    pub fn encode(&self, group: &str) -> String {
        let shards = self.active.capacity();
        let pending = self.pending.resized(shards).to_base64url();
        // By hand, to fix the field order (the wire contract); the bitmaps are base64url and
        // need no escaping.
        format!(
            r#"{{"v":{CLAIMS_VERSION},"group":{},"shards":{shards},"hash":{},"seq":{},"epoch":{},"active":"{}","pending":"{pending}","leaving":{}}}"#,
            json_string(group),
            json_string(HASH_ID),
            self.seq,
            self.epoch,
            self.active.to_base64url(),
            self.leaving,
        )
    }

    /// Reads the annotation `text` of a member of the group `group` of `shards` shards.
    ///
    /// # Errors
    /// In this order: [`ClaimsError::Malformed`] if `text` is not one JSON object, repeats a
    /// field or has no `u64` field `v`; [`ClaimsError::UnknownVersion`] if `v` is not 1;
    /// `Malformed` if another field is missing or of the wrong type, or `seq` or `epoch` is
    /// above [`MAX_COUNTER`]; [`ClaimsError::OtherGroup`],
    /// [`ClaimsError::OtherShardCount`] and [`ClaimsError::OtherHash`] if the record is not
    /// for this group, [`ClaimsError::BadBitmap`] and [`ClaimsError::Overlap`]. Unknown fields
    /// are ignored.
    pub fn decode(text: &str, group: &str, shards: u32) -> Result<MemberClaims, ClaimsError> {
        let mut fields: Fields =
            serde_json::from_str(text).map_err(|e| ClaimsError::Malformed(e.to_string()))?;
        let v: u64 = fields.take("v")?;
        if v != CLAIMS_VERSION {
            return Err(ClaimsError::UnknownVersion(v));
        }
        let group_found: String = fields.take("group")?;
        let shards_found: u32 = fields.take("shards")?;
        let hash: String = fields.take("hash")?;
        let seq: u64 = fields.take("seq")?;
        let epoch: u64 = fields.take("epoch")?;
        let active: String = fields.take("active")?;
        let pending: String = fields.take("pending")?;
        let leaving: bool = fields.take("leaving")?;
        for (name, value) in [("seq", seq), ("epoch", epoch)] {
            if value > MAX_COUNTER {
                return Err(ClaimsError::Malformed(format!(
                    "field `{name}`: {value} is above {MAX_COUNTER}"
                )));
            }
        }
        if group_found != group {
            return Err(ClaimsError::OtherGroup(group_found));
        }
        if shards_found != shards {
            return Err(ClaimsError::OtherShardCount(shards_found));
        }
        if hash != HASH_ID {
            return Err(ClaimsError::OtherHash(hash));
        }
        let bitmap = |field: &str, s: &str| {
            decode_bitmap(s, shards).map_err(|e| ClaimsError::BadBitmap(format!("{field}: {e}")))
        };
        let active = bitmap("active", &active)?;
        let pending = bitmap("pending", &pending)?;
        if active.intersects(&pending) {
            return Err(ClaimsError::Overlap);
        }
        Ok(MemberClaims {
            seq,
            epoch,
            active,
            pending,
            leaving,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn set(n: u32, shards: &[u32]) -> ShardSet {
        let mut set = ShardSet::new(n);
        for &s in shards {
            assert!(set.insert(s), "{s}");
        }
        set
    }

    #[test]
    fn set_operations() {
        let mut s = ShardSet::new(100);
        assert_eq!(s.capacity(), 100);
        assert!(s.is_empty());
        assert!(s.insert(0) && s.insert(63) && s.insert(64) && s.insert(99));
        assert!(!s.insert(99), "already present");
        assert!(!s.insert(100) && !s.insert(u32::MAX), "out of range");
        assert!(!s.contains(100) && !s.contains(u32::MAX));
        assert_eq!(s.len(), 4);
        assert_eq!(s.iter().collect::<Vec<_>>(), [0, 63, 64, 99]);
        assert!(s.remove(63) && !s.remove(63) && !s.remove(1000));
        assert_eq!(s.iter().collect::<Vec<_>>(), [0, 64, 99]);

        let full = ShardSet::full(100);
        assert_eq!(full.len(), 100);
        assert_eq!(
            full.iter().collect::<Vec<_>>(),
            (0..100).collect::<Vec<_>>()
        );
        assert!(full.intersects(&s));
        assert!(!set(100, &[1, 2]).intersects(&s));

        let mut u = set(100, &[1]);
        u.union_with(&s);
        assert_eq!(u, set(100, &[0, 1, 64, 99]));
        // Shards beyond the capacity are dropped.
        let mut small = set(70, &[5]);
        small.union_with(&ShardSet::full(200));
        assert_eq!(small, ShardSet::full(70));
        u.clear();
        assert!(u.is_empty() && u.capacity() == 100);

        assert_eq!(ShardSet::new(u32::MAX).capacity(), MAX_SHARDS);
        assert_eq!(ShardSet::full(0).len(), 0);
        assert_eq!(ShardSet::full(MAX_SHARDS).len(), MAX_SHARDS);
    }

    #[test]
    fn bitmap_layout() {
        // Expected strings from Python's `base64.urlsafe_b64encode(...).rstrip(b"=")`.
        assert_eq!(set(10, &[0, 9]).to_base64url(), "AQI"); // bytes 01 02
        assert_eq!(set(10, &[0]).to_base64url(), "AQA");
        assert_eq!(ShardSet::full(10).to_base64url(), "_wM");
        let s = set(1024, &[0, 9, 500, 1023]);
        let text = s.to_base64url();
        assert_eq!(text.len(), 171, "1,024 shards take 171 characters");
        assert!(
            text.starts_with("AQIAAAAA") && text.ends_with("AAAAAIA"),
            "{text}"
        );
        assert_eq!(ShardSet::new(1024).to_base64url(), "");
        assert_eq!(ShardSet::full(MAX_SHARDS).to_base64url().len(), 10_923);
    }

    #[test]
    fn strict_bitmaps() {
        let ok = |s: &str, n: u32| ShardSet::from_base64url(s, n);
        let bad = |s: &str, n: u32| match ok(s, n) {
            Err(ClaimsError::BadBitmap(why)) => why,
            other => panic!("{s:?} for {n}: {other:?}"),
        };
        assert_eq!(ok("", 10), Ok(ShardSet::new(10)));
        assert_eq!(ok("", 0), Ok(ShardSet::new(0)));
        assert_eq!(ok("AQI", 10), Ok(set(10, &[0, 9])));
        assert_eq!(ok("_wM", 10), Ok(ShardSet::full(10)));
        assert!(bad("AQ", 10).contains("characters"), "too short");
        assert!(bad("AQIA", 10).contains("characters"), "too long");
        assert!(bad("AQI=", 10).contains("characters"), "padding");
        assert!(bad("AQ==", 8).contains("characters"), "padding");
        assert!(
            bad("AQ=", 10).contains("not base64url"),
            "padding at the right length"
        );
        assert!(
            bad("AQ+", 10).contains("not base64url"),
            "the standard alphabet"
        );
        assert!(
            bad("AQ/", 10).contains("not base64url"),
            "the standard alphabet"
        );
        assert!(bad("AQ\u{e9}", 10).contains("characters"), "non-ASCII");
        assert!(bad("AAQ", 10).contains("at or above 10"), "shard 10 of 10");
        assert!(bad("_wc", 10).contains("at or above 10"));
        assert!(
            bad("AQB", 10).contains("non-canonical"),
            "unused bits in the last char"
        );
        assert!(
            bad("AB", 8).contains("non-canonical"),
            "unused bits, 1-byte bitmap"
        );
        assert!(
            bad("AAA", 10).contains("empty set"),
            "zero bytes are not \"\""
        );
        assert!(bad("A", 0).contains("characters"));
        assert!(bad("", MAX_SHARDS + 1).contains("maximum"));
        assert_eq!(ok("AQ", 8), Ok(set(8, &[0])));
        assert_eq!(ok("gA", 8), Ok(set(8, &[7])));
    }

    fn sample() -> MemberClaims {
        MemberClaims {
            seq: 42,
            epoch: 17,
            active: set(1024, &[0, 9]),
            pending: set(1024, &[1023]),
            leaving: false,
        }
    }

    #[test]
    fn encoding() {
        let text = sample().encode("orders");
        let zeros = "A".repeat(168);
        let want = format!(
            r#"{{"v":1,"group":"orders","shards":1024,"hash":"xxh64-splitmix64-v1","seq":42,"epoch":17,"active":"AQI{zeros}","pending":"{zeros}AIA","leaving":false}}"#
        );
        assert_eq!(text, want);
        assert_eq!(MemberClaims::decode(&text, "orders", 1024), Ok(sample()));
        assert_eq!(sample().claims(), set(1024, &[0, 9, 1023]));

        let empty = MemberClaims::empty(7);
        assert_eq!(
            empty.encode("g\"q"),
            r#"{"v":1,"group":"g\"q","shards":7,"hash":"xxh64-splitmix64-v1","seq":0,"epoch":0,"active":"","pending":"","leaving":false}"#
        );
        assert_eq!(
            MemberClaims::decode(&empty.encode("g\"q"), "g\"q", 7),
            Ok(empty)
        );

        // A `pending` of another capacity is written with `active`'s.
        let mut odd = sample();
        odd.pending = set(2000, &[5, 1500]);
        let decoded = MemberClaims::decode(&odd.encode("orders"), "orders", 1024);
        assert_eq!(decoded.map(|c| c.pending), Ok(set(1024, &[5])));
    }

    #[test]
    fn largest_annotation() {
        let full = MemberClaims {
            active: ShardSet::full(MAX_SHARDS),
            ..MemberClaims::empty(MAX_SHARDS)
        };
        let mut half = MemberClaims::empty(MAX_SHARDS);
        for s in 0..MAX_SHARDS {
            if s % 2 == 0 {
                half.active.insert(s);
            } else {
                half.pending.insert(s);
            }
        }
        half.seq = MAX_COUNTER;
        half.epoch = MAX_COUNTER;
        for (what, claims) in [("all active", full), ("half active, half pending", half)] {
            let text = claims.encode(&"g".repeat(63));
            println!("{MAX_SHARDS} shards, {what}: {} bytes", text.len());
            assert!(text.len() < 256 * 1024);
            assert_eq!(
                MemberClaims::decode(&text, &"g".repeat(63), MAX_SHARDS),
                Ok(claims)
            );
        }
        let empty = MemberClaims::empty(MAX_SHARDS);
        assert_eq!(
            MemberClaims::decode(&empty.encode("g"), "g", MAX_SHARDS),
            Ok(empty)
        );
    }

    /// `sample()`'s JSON with `field` set to `value` (or removed, for `Value::Null`).
    fn with(field: &str, value: Value) -> String {
        let mut v: Value =
            serde_json::from_str(&sample().encode("orders")).expect("encode writes JSON");
        if let Some(object) = v.as_object_mut() {
            if value.is_null() {
                object.remove(field);
            } else {
                object.insert(field.to_owned(), value);
            }
        }
        v.to_string()
    }

    #[test]
    fn strict_decoding() {
        let decode = |text: &str| MemberClaims::decode(text, "orders", 1024);
        let malformed = |text: &str| {
            assert!(
                matches!(decode(text), Err(ClaimsError::Malformed(_))),
                "{text}: {:?}",
                decode(text)
            );
        };

        assert_eq!(
            decode(&with("v", json!(2))),
            Err(ClaimsError::UnknownVersion(2))
        );
        assert_eq!(decode(r#"{"v":0}"#), Err(ClaimsError::UnknownVersion(0)));
        assert_eq!(
            decode(&with("group", json!("payments"))),
            Err(ClaimsError::OtherGroup("payments".into()))
        );
        assert_eq!(
            decode(&with("shards", json!(2048))),
            Err(ClaimsError::OtherShardCount(2048))
        );
        assert_eq!(
            decode(&with("hash", json!("fnv"))),
            Err(ClaimsError::OtherHash("fnv".into()))
        );
        assert_eq!(
            MemberClaims::decode(&sample().encode("orders"), "orders", 1023),
            Err(ClaimsError::OtherShardCount(1024))
        );
        let overlap = MemberClaims {
            pending: set(1024, &[9]),
            ..sample()
        };
        assert_eq!(decode(&overlap.encode("orders")), Err(ClaimsError::Overlap));
        for (field, value) in [
            ("active", json!("AQI")),
            ("active", json!("A".repeat(171))),
            ("pending", json!(format!("{}=", "A".repeat(170)))),
        ] {
            match decode(&with(field, value)) {
                Err(ClaimsError::BadBitmap(why)) => assert!(why.starts_with(field), "{why}"),
                other => panic!("{field}: {other:?}"),
            }
        }

        // Unknown fields are ignored.
        assert_eq!(decode(&with("future", json!({"x": [1, 2]}))), Ok(sample()));

        // Missing, mistyped, repeated fields; not objects; not JSON.
        for field in [
            "v", "group", "shards", "hash", "seq", "epoch", "active", "pending", "leaving",
        ] {
            malformed(&with(field, Value::Null));
            malformed(&with(field, json!([])));
        }
        malformed(&with("seq", json!(-1)));
        malformed(&with("epoch", json!(1.5)));
        // Counters above 2^53 - 1 are garbage: sums of them could saturate.
        malformed(&with("seq", json!(MAX_COUNTER + 1)));
        malformed(&with("epoch", json!(u64::MAX)));
        assert!(decode(&with("epoch", json!(MAX_COUNTER))).is_ok());
        malformed(&with("v", json!(-1)));
        malformed(&with("v", json!("1")));
        malformed(&with("v", json!(1.0)));
        malformed(&with("shards", json!(1u64 << 32)));
        malformed(&with("leaving", json!(0)));
        malformed(
            &sample()
                .encode("orders")
                .replace(r#""seq":42"#, r#""seq":18446744073709551616"#),
        );
        malformed(
            &sample()
                .encode("orders")
                .replace(r#""seq":42"#, r#""seq":1e400"#),
        );
        malformed(
            &sample()
                .encode("orders")
                .replace(r#""v":1"#, r#""v":1e400"#),
        );
        malformed(
            &sample()
                .encode("orders")
                .replace(r#""v":1"#, r#""v":99999999999999999999999"#),
        );
        malformed(
            &sample()
                .encode("orders")
                .replace(r#""seq":42"#, r#""seq":42,"seq":43"#),
        );
        malformed(
            &sample()
                .encode("orders")
                .replace(r#""v":1"#, r#""v":1,"v":1"#),
        );
        malformed(&format!("{} x", sample().encode("orders")));
        for garbage in [
            "",
            " ",
            "null",
            "[]",
            "{}",
            "1",
            "\"x\"",
            "{",
            "}",
            "{\"v\":1",
            "\u{feff}{}",
        ] {
            malformed(garbage);
        }
        malformed(r#"[1,"orders",1024,"xxh64-splitmix64-v1",42,17,"","",false]"#);
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        malformed(&deep);
        let deep = format!(
            r#"{{"v":1,"x":{}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        malformed(&deep);
        let deep = format!(
            r#"{{"v":1,"x":{}1{}}}"#,
            r#"{"a":"#.repeat(10_000),
            "}".repeat(10_000)
        );
        malformed(&deep);
    }

    /// A random set of capacity 1..=2000 and a disjoint one of the same capacity.
    fn disjoint_sets() -> impl Strategy<Value = (ShardSet, ShardSet)> {
        (1u32..=2000).prop_flat_map(|n| {
            proptest::collection::vec(0u8..3, n as usize).prop_map(move |choice| {
                let (mut active, mut pending) = (ShardSet::new(n), ShardSet::new(n));
                for (shard, c) in (0u32..).zip(choice) {
                    match c {
                        1 => active.insert(shard),
                        2 => pending.insert(shard),
                        _ => false,
                    };
                }
                (active, pending)
            })
        })
    }

    /// Arbitrary JSON, with the annotation's field names and plausible values among the rest.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            (0u64..3).prop_map(Value::from),
            Just(json!("orders")),
            Just(json!(HASH_ID)),
            "[A-Za-z0-9_=+/-]{0,8}".prop_map(Value::from),
            "\\PC{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(json_key(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn json_key() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(
                &[
                    "v", "group", "shards", "hash", "seq", "epoch", "active", "pending", "leaving"
                ][..]
            )
            .prop_map(str::to_owned),
            "\\PC{0,4}",
        ]
    }

    proptest! {
        #[test]
        fn round_trip((active, pending) in disjoint_sets(), seq in 0..=MAX_COUNTER, epoch in 0..=MAX_COUNTER, leaving: bool) {
            let n = active.capacity();
            for s in [&active, &pending] {
                let text = s.to_base64url();
                prop_assert_eq!(text.len(), if s.is_empty() { 0 } else { encoded_len(n.div_ceil(8) as usize) });
                prop_assert_eq!(&ShardSet::from_base64url(&text, n), &Ok(s.clone()));
            }
            let claims = MemberClaims { seq, epoch, active, pending, leaving };
            let text = claims.encode("orders");
            let decoded = MemberClaims::decode(&text, "orders", n);
            prop_assert_eq!(&decoded, &Ok(claims));
            // Canonical: decoding then encoding gives back the same text.
            prop_assert_eq!(decoded.map(|c| c.encode("orders")), Ok(text));
        }

        #[test]
        fn bitmap_decoding_is_canonical(s in "[A-Za-z0-9_-]{0,6}", n in 0u32..40) {
            if let Ok(set) = ShardSet::from_base64url(&s, n) {
                prop_assert_eq!(set.to_base64url(), s);
            }
        }

        #[test]
        fn decode_never_panics_on_strings(s in "\\PC{0,200}", n in 0u32..=MAX_SHARDS + 1) {
            let _ = MemberClaims::decode(&s, "orders", n);
        }

        #[test]
        fn decode_never_panics_on_json(
            fields in proptest::collection::btree_map(json_key(), json_value(), 0..12),
            n in prop_oneof![Just(10u32), Just(1024), 0u32..=MAX_SHARDS + 1],
        ) {
            let text = Value::Object(fields.into_iter().collect()).to_string();
            if let Ok(claims) = MemberClaims::decode(&text, "orders", n) {
                prop_assert!(!claims.active.intersects(&claims.pending));
                prop_assert_eq!(claims.active.capacity(), n);
            }
        }

        #[test]
        fn decode_never_panics_on_near_misses(
            (active, pending) in disjoint_sets(),
            field in json_key(),
            value in json_value(),
        ) {
            let n = active.capacity();
            let claims = MemberClaims { seq: 1, epoch: 2, active, pending, leaving: false };
            let mut v: Value = serde_json::from_str(&claims.encode("orders")).expect("JSON");
            if let Some(object) = v.as_object_mut() {
                object.insert(field, value);
            }
            let _ = MemberClaims::decode(&v.to_string(), "orders", n);
        }
    }
}
