//! The leader-election record, as client-go stores it, and its JSON form.
//!
//! The annotation locks (Endpoints, ConfigMap) store the record as JSON in the annotation
//! [`ANNOTATION_KEY`]; [`LeaderElectionRecord::from_json`] and [`LeaderElectionRecord::to_json`]
//! read and write exactly what client-go reads and writes there. A Lease stores the same seven
//! fields in its spec; that mapping lives with the Lease lock.
//!
//! Records come from a shared API server: anyone allowed to write the object can put anything in
//! it. Decoding therefore checks every field and names the one that is wrong, and the elector
//! never overwrites a record that failed to decode.

use std::fmt;

use serde_json::{Map, Value};

use crate::time::Timestamp;

/// The annotation under which the Endpoints and ConfigMap locks keep the record.
pub const ANNOTATION_KEY: &str = "control-plane.alpha.kubernetes.io/leader";

/// The holder MultiLock reports when its two locks name different holders.
pub const UNKNOWN_LEADER: &str = "leaderelection.k8s.io/unknown";

/// The largest value Kubernetes can store in `leaseDurationSeconds` or `leaseTransitions`
/// (both are `int32` in a Lease).
pub const MAX_INT32: u32 = i32::MAX as u32;

/// The identity of a candidate: a non-empty string, unique per process.
///
/// Two processes with the same identity are one candidate to every other client: they would
/// both lead. Append something unique (a UUID, the pod UID) to a host name, as
/// kube-controller-manager does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity(pub(crate) String);

impl Identity {
    /// Wraps `id`.
    ///
    /// # Errors
    /// [`EmptyIdentity`] when `id` is empty: on the wire the empty holder means "no leader".
    pub fn new(id: impl Into<String>) -> Result<Self, EmptyIdentity> {
        let id = id.into();
        if id.is_empty() {
            return Err(EmptyIdentity);
        }
        Ok(Identity(id))
    }

    /// The identity as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An empty identity, refused by [`Identity::new`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an identity must not be empty (an empty holder means \"no leader\" on the wire)")]
#[non_exhaustive]
pub struct EmptyIdentity;

impl TryFrom<&str> for Identity {
    type Error = EmptyIdentity;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Identity::new(s)
    }
}

/// The version of a lock object, compared for equality only (a Kubernetes `resourceVersion` is
/// opaque: never parse or order it). Every write is a compare-and-swap on it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(String);

impl Version {
    /// Wraps an opaque version string.
    pub fn new(v: impl Into<String>) -> Self {
        Version(v.into())
    }

    /// The version as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A value together with the version of the lock object it was read from or written as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The object's version.
    pub version: Version,
    /// The value.
    pub value: T,
}

/// client-go's `LeaderElectionRecord`: who holds the lock, for how long, and since when.
///
/// The timestamps are for people and foreign tools; leasehold never decides anything from them
/// (clocks of different machines disagree). Only a change of the record tells a follower that
/// the holder is alive.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaderElectionRecord {
    /// The holder, or `None` when nobody holds the lock (`""` on the wire).
    pub holder: Option<Identity>,
    /// How long, in whole seconds, the holder asks others to wait after they last saw the
    /// record change. At most [`MAX_INT32`].
    pub lease_duration_seconds: u32,
    /// When the holder acquired the lock (by its own clock); `null` on the wire when unset.
    pub acquire_time: Option<Timestamp>,
    /// When the holder last renewed (by its own clock); `null` on the wire when unset.
    pub renew_time: Option<Timestamp>,
    /// How many times the holder has changed. At most [`MAX_INT32`]. leasehold's fencing token.
    pub leader_transitions: u32,
    /// Coordinated leader election: the strategy the API server elects with (`""` when none).
    pub strategy: String,
    /// Coordinated leader election: the candidate the API server wants to hold the lock next.
    pub preferred_holder: Option<Identity>,
}

/// A record (or part of one) that is not what client-go would write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid leader election record: {field}: {reason}")]
pub struct RecordError {
    /// The JSON field at fault, or `record` for the document as a whole.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl RecordError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        RecordError {
            field,
            reason: reason.into(),
        }
    }
}

impl LeaderElectionRecord {
    /// Decodes the JSON client-go stores in [`ANNOTATION_KEY`].
    ///
    /// Follows Go's `encoding/json` where it is lenient (missing fields and `null` are zero
    /// values, unknown fields are ignored, so records from newer versions still decode) and is
    /// strict where the value would be unsafe to act on: wrong types, negative numbers, numbers
    /// beyond `int32`, fractions, and times that are not RFC 3339 are errors naming the field.
    ///
    /// # Errors
    /// A [`RecordError`] naming the first field at fault.
    pub fn from_json(json: &str) -> Result<Self, RecordError> {
        let value: Value = serde_json::from_str(json)
            .map_err(|e| RecordError::new("record", format!("not valid JSON: {e}")))?;
        Self::from_json_value(&value)
    }

    /// Decodes a record from an already parsed JSON value; see [`LeaderElectionRecord::from_json`].
    ///
    /// # Errors
    /// A [`RecordError`] naming the first field at fault.
    pub fn from_json_value(value: &Value) -> Result<Self, RecordError> {
        let Value::Object(map) = value else {
            return Err(RecordError::new(
                "record",
                format!("expected a JSON object, got {}", kind(value)),
            ));
        };
        Ok(LeaderElectionRecord {
            holder: identity_field(map, "holderIdentity")?,
            lease_duration_seconds: int32_field(map, "leaseDurationSeconds")?,
            acquire_time: time_field(map, "acquireTime")?,
            renew_time: time_field(map, "renewTime")?,
            leader_transitions: int32_field(map, "leaderTransitions")?,
            strategy: string_field(map, "strategy")?,
            preferred_holder: identity_field(map, "preferredHolder")?,
        })
    }

    /// Encodes the record byte for byte as client-go's `json.Marshal` does: all seven fields in
    /// Go's order, whole-second UTC times, `null` for unset times, Go's string escaping.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(192);
        out.push_str("{\"holderIdentity\":");
        go_string(&mut out, self.holder.as_ref().map_or("", Identity::as_str));
        out.push_str(",\"leaseDurationSeconds\":");
        out.push_str(&self.lease_duration_seconds.to_string());
        out.push_str(",\"acquireTime\":");
        go_time(&mut out, self.acquire_time);
        out.push_str(",\"renewTime\":");
        go_time(&mut out, self.renew_time);
        out.push_str(",\"leaderTransitions\":");
        out.push_str(&self.leader_transitions.to_string());
        out.push_str(",\"strategy\":");
        go_string(&mut out, &self.strategy);
        out.push_str(",\"preferredHolder\":");
        go_string(
            &mut out,
            self.preferred_holder.as_ref().map_or("", Identity::as_str),
        );
        out.push('}');
        out
    }

    /// Whether `id` holds the lock according to this record.
    pub fn is_held_by(&self, id: &Identity) -> bool {
        self.holder.as_ref() == Some(id)
    }
}

impl serde::Serialize for LeaderElectionRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let value: Value =
            serde_json::from_str(&self.to_json()).map_err(serde::ser::Error::custom)?;
        value.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for LeaderElectionRecord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        LeaderElectionRecord::from_json_value(&value).map_err(serde::de::Error::custom)
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string_field(map: &Map<String, Value>, field: &'static str) -> Result<String, RecordError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(RecordError::new(
            field,
            format!("expected a string, got {}", kind(other)),
        )),
    }
}

fn identity_field(
    map: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<Identity>, RecordError> {
    let s = string_field(map, field)?;
    Ok((!s.is_empty()).then_some(Identity(s)))
}

fn int32_field(map: &Map<String, Value>, field: &'static str) -> Result<u32, RecordError> {
    let n = match map.get(field) {
        None | Some(Value::Null) => return Ok(0),
        Some(Value::Number(n)) => n,
        Some(other) => {
            return Err(RecordError::new(
                field,
                format!("expected an integer, got {}", kind(other)),
            ));
        }
    };
    if let Some(u) = n.as_u64() {
        return u32::try_from(u)
            .ok()
            .filter(|&u| u <= MAX_INT32)
            .ok_or_else(|| {
                RecordError::new(field, format!("{u} is larger than an int32 can hold"))
            });
    }
    if n.as_i64().is_some() {
        return Err(RecordError::new(field, format!("{n} is negative")));
    }
    Err(RecordError::new(
        field,
        format!("expected an integer, got {n}"),
    ))
}

fn time_field(
    map: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<Timestamp>, RecordError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        // Go's metav1.Time decodes "" as the zero time, which it writes back as null.
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Timestamp::parse_rfc3339(s)
            .map(Some)
            .map_err(|e| RecordError::new(field, e.to_string())),
        Some(other) => Err(RecordError::new(
            field,
            format!("expected an RFC 3339 time string, got {}", kind(other)),
        )),
    }
}

fn go_time(out: &mut String, t: Option<Timestamp>) {
    match t {
        None => out.push_str("null"),
        Some(t) => {
            out.push('"');
            out.push_str(&t.to_rfc3339_seconds());
            out.push('"');
        }
    }
}

/// Writes `s` as a JSON string escaped the way Go's `encoding/json` escapes it by default
/// (HTML-safe: `<`, `>` and `&` as `\u003c`, `\u003e`, `\u0026`; U+2028 and U+2029 escaped).
fn go_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BANANAPI: &str = r#"{"holderIdentity":"bananapi","leaseDurationSeconds":15,"acquireTime":"2017-10-10T00:08:42Z","renewTime":"2018-03-14T03:01:42Z","leaderTransitions":0}"#;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn decodes_a_real_annotation() {
        let r = LeaderElectionRecord::from_json(BANANAPI).expect("decodes");
        assert_eq!(r.holder, Some(Identity("bananapi".into())));
        assert_eq!(r.lease_duration_seconds, 15);
        assert_eq!(r.acquire_time, Some(ts("2017-10-10T00:08:42Z")));
        assert_eq!(r.renew_time, Some(ts("2018-03-14T03:01:42Z")));
        assert_eq!(r.leader_transitions, 0);
        assert_eq!(r.strategy, "");
        assert_eq!(r.preferred_holder, None);
    }

    #[test]
    fn encodes_what_client_go_writes() {
        let r = LeaderElectionRecord::from_json(BANANAPI).expect("decodes");
        // client-go's struct has no omitempty: all seven fields, in declaration order.
        assert_eq!(
            r.to_json(),
            r#"{"holderIdentity":"bananapi","leaseDurationSeconds":15,"acquireTime":"2017-10-10T00:08:42Z","renewTime":"2018-03-14T03:01:42Z","leaderTransitions":0,"strategy":"","preferredHolder":""}"#
        );
        // The zero record: empty strings and null times, as Go marshals a zero struct.
        assert_eq!(
            LeaderElectionRecord::default().to_json(),
            r#"{"holderIdentity":"","leaseDurationSeconds":0,"acquireTime":null,"renewTime":null,"leaderTransitions":0,"strategy":"","preferredHolder":""}"#
        );
    }

    #[test]
    fn encoding_truncates_to_seconds_and_escapes_like_go() {
        let r = LeaderElectionRecord {
            holder: Some(Identity("a<b>&\"c\"\\\n\u{1}\u{2028}é".into())),
            renew_time: Some(ts("2020-01-01T00:00:00.999999Z")),
            ..Default::default()
        };
        let json = r.to_json();
        assert!(
            json.starts_with(r#"{"holderIdentity":"a\u003cb\u003e\u0026\"c\"\\\n\u0001\u2028é""#)
        );
        assert!(json.contains(r#""renewTime":"2020-01-01T00:00:00Z""#));
        let back = LeaderElectionRecord::from_json(&json).expect("round trip");
        assert_eq!(back.holder, r.holder);
    }

    #[test]
    fn round_trips_all_fields() {
        let r = LeaderElectionRecord {
            holder: Some(Identity("baz".into())),
            lease_duration_seconds: MAX_INT32,
            acquire_time: Some(ts("2001-02-03T04:05:06Z")),
            renew_time: Some(ts("2001-02-03T04:05:07Z")),
            leader_transitions: 7,
            strategy: "OldestEmulationVersion".into(),
            preferred_holder: Some(Identity("qux".into())),
        };
        assert_eq!(LeaderElectionRecord::from_json(&r.to_json()), Ok(r.clone()));
        let via_serde: LeaderElectionRecord =
            serde_json::from_value(serde_json::to_value(&r).expect("serialize")).expect("de");
        assert_eq!(via_serde, r);
    }

    #[test]
    fn lenient_where_go_is() {
        let r = LeaderElectionRecord::from_json(
            r#"{"holderIdentity":null,"acquireTime":"","renewTime":null,"extra":{"x":[1]},"leaseDurationSeconds":1e1}"#,
        );
        // 1e1 is a float to serde_json: Go would reject it for an int too.
        assert_eq!(r.map_err(|e| e.field), Err("leaseDurationSeconds"));
        let r = LeaderElectionRecord::from_json(
            r#"{"holderIdentity":null,"acquireTime":"","renewTime":null,"extra":{"x":[1]}}"#,
        )
        .expect("decodes");
        assert_eq!(r, LeaderElectionRecord::default());
        assert_eq!(
            LeaderElectionRecord::from_json("{}"),
            Ok(LeaderElectionRecord::default())
        );
    }

    #[test]
    fn rejects_malformed_input_naming_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("", "record", "not valid JSON"),
            (r#"{"holderIdentity":"x""#, "record", "not valid JSON"),
            ("[]", "record", "an array"),
            ("null", "record", "null"),
            ("\"x\"", "record", "a string"),
            (r#"{"holderIdentity":5}"#, "holderIdentity", "a number"),
            (
                r#"{"holderIdentity":{"a":1}}"#,
                "holderIdentity",
                "an object",
            ),
            (
                r#"{"leaseDurationSeconds":"15"}"#,
                "leaseDurationSeconds",
                "a string",
            ),
            (
                r#"{"leaseDurationSeconds":-15}"#,
                "leaseDurationSeconds",
                "negative",
            ),
            (
                r#"{"leaseDurationSeconds":2147483648}"#,
                "leaseDurationSeconds",
                "int32",
            ),
            (
                r#"{"leaseDurationSeconds":99999999999999999999}"#,
                "leaseDurationSeconds",
                "integer",
            ),
            (
                r#"{"leaseDurationSeconds":1.5}"#,
                "leaseDurationSeconds",
                "integer",
            ),
            (
                r#"{"leaseDurationSeconds":true}"#,
                "leaseDurationSeconds",
                "a boolean",
            ),
            (
                r#"{"leaderTransitions":-1}"#,
                "leaderTransitions",
                "negative",
            ),
            (
                r#"{"acquireTime":"2017-10-10"}"#,
                "acquireTime",
                "too short",
            ),
            (
                r#"{"renewTime":"2018-02-30T00:00:00Z"}"#,
                "renewTime",
                "day out of range",
            ),
            (r#"{"renewTime":1520996502}"#, "renewTime", "RFC 3339"),
            (r#"{"strategy":["x"]}"#, "strategy", "an array"),
            (
                r#"{"preferredHolder":false}"#,
                "preferredHolder",
                "a boolean",
            ),
        ];
        for &(json, field, needle) in cases {
            let err = LeaderElectionRecord::from_json(json).expect_err(json);
            assert_eq!(err.field, field, "{json}: {err}");
            assert!(
                err.to_string().contains(needle),
                "{json}: {err} should say {needle:?}"
            );
        }
    }

    #[test]
    fn identity_must_not_be_empty() {
        assert!(Identity::new("").is_err());
        assert_eq!(
            Identity::new("a").map(|i| i.to_string()),
            Ok("a".to_string())
        );
    }

    proptest! {
        #[test]
        fn decoding_never_panics(s in "\\PC{0,200}") {
            let _ = LeaderElectionRecord::from_json(&s);
        }

        #[test]
        fn encode_decode_round_trip(
            holder in proptest::option::of("\\PC{1,20}"),
            lds in 0..=MAX_INT32,
            transitions in 0..=MAX_INT32,
            secs in proptest::option::of(-62_167_219_200i64..253_402_300_799),
            strategy in "\\PC{0,10}",
        ) {
            let t = secs.map(|s| Timestamp::from_unix_micros(s * 1_000_000).expect("in range"));
            let r = LeaderElectionRecord {
                holder: holder.map(Identity),
                lease_duration_seconds: lds,
                acquire_time: t,
                renew_time: t,
                leader_transitions: transitions,
                strategy,
                preferred_holder: None,
            };
            prop_assert_eq!(LeaderElectionRecord::from_json(&r.to_json()), Ok(r));
        }
    }
}
