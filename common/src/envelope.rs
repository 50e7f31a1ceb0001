//! The versioned bincode envelope of every internal topic.
//!
//! Layout: `MAGIC` (1 byte) · schema version (1 byte) · bincode body. Version 3 (written
//! now) and version 2 use fixed-width little-endian integers; version 1 (written by earlier
//! builds, still read so topics and changelogs written before an upgrade restore) used
//! varints. Version 3 marks the `chat.rows` value change from one `RowMutation` to a
//! `RowBatch` (see [`crate::rows::decode_record`]); every other type is the same in 2 and 3.
//! Fixed-width integers cost a few bytes per record (the topics are lz4-compressed) and
//! halve the integer coding time. Decoding checks the magic, refuses versions newer than
//! this build understands, caps allocation at [`MAX_BODY`] and refuses trailing bytes, so
//! garbage, truncated or future-version input is an [`EnvelopeError`] and never a panic.
//!
//! Types derive bincode's own `Encode`/`Decode` (not its serde bridge), which are several
//! times cheaper per field.

use bincode::config::{Config, Configuration, Fixint, Limit, LittleEndian, Varint};
use bincode::enc::write::Writer;
use bincode::error::EncodeError;
use bincode::{Decode, Encode};

/// First byte of every envelope.
pub const MAGIC: u8 = 0xC7;
/// The schema version this build writes and the newest it reads.
pub const SCHEMA_VERSION: u8 = 3;
/// Largest body decoded; bounds what a corrupt length prefix can make us allocate.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// Version 2: fixed-width integers.
const V2: Configuration<LittleEndian, Fixint, Limit<MAX_BODY>> =
    bincode::config::standard().with_fixed_int_encoding().with_limit::<MAX_BODY>();
/// Version 1: varint integers (read only).
const V1: Configuration<LittleEndian, Varint, Limit<MAX_BODY>> = bincode::config::standard().with_limit::<MAX_BODY>();

/// Why bytes are not a valid envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Fewer than the two header bytes.
    #[error("envelope is truncated: {0} bytes")]
    Truncated(usize),
    /// The first byte is not [`MAGIC`].
    #[error("not a chatpipe envelope (magic byte {0:#04x})")]
    BadMagic(u8),
    /// Written by a newer chatpipe.
    #[error("envelope schema version {0} is not one this build reads (1 to {SCHEMA_VERSION})")]
    FutureVersion(u8),
    /// The body does not decode.
    #[error("envelope body does not decode: {0}")]
    Body(String),
    /// The body decoded but bytes were left over.
    #[error("envelope has {0} trailing bytes")]
    Trailing(usize),
    /// The value could not be encoded (only for values over [`MAX_BODY`]).
    #[error("value does not encode: {0}")]
    Encode(String),
}

impl EnvelopeError {
    /// Envelope errors are properties of the bytes: retrying never helps.
    pub const fn is_retriable(&self) -> bool {
        false
    }
}

/// The decoding context: the schema version of the envelope being read, for the types
/// whose layout changed between versions (`ChatEvent` gained fields in version 3). Derived
/// `Decode`s ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version(pub u8);

/// Appends to a `Vec` without `io::Write`'s per-call overhead.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl Writer for VecWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Encodes `value` into a new envelope.
pub fn encode<T: Encode>(value: &T) -> Result<Vec<u8>, EnvelopeError> {
    let mut out = Vec::with_capacity(128);
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Encodes `value` into `out` (cleared first), reusing its allocation.
pub fn encode_into<T: Encode>(value: &T, out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
    out.clear();
    out.push(MAGIC);
    out.push(SCHEMA_VERSION);
    bincode::encode_into_writer(value, VecWriter(out), V2).map_err(|e| EnvelopeError::Encode(e.to_string()))?;
    Ok(())
}

/// Decodes an envelope.
pub fn decode<T: Decode<Version>>(bytes: &[u8]) -> Result<T, EnvelopeError> {
    let [magic, version, body @ ..] = bytes else {
        return Err(EnvelopeError::Truncated(bytes.len()));
    };
    if *magic != MAGIC {
        return Err(EnvelopeError::BadMagic(*magic));
    }
    match *version {
        1 => decode_body(body, V1, Version(1)),
        v @ (2 | 3) => decode_body(body, V2, Version(v)),
        v => Err(EnvelopeError::FutureVersion(v)),
    }
}

fn decode_body<T: Decode<Version>, C: Config>(body: &[u8], config: C, version: Version) -> Result<T, EnvelopeError> {
    let (value, used) = bincode::decode_from_slice_with_context(body, config, version)
        .map_err(|e| EnvelopeError::Body(e.to_string()))?;
    if used != body.len() {
        return Err(EnvelopeError::Trailing(body.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ChatEvent;
    use crate::rows::RowMutation;
    use proptest::prelude::*;

    fn arb_event() -> impl Strategy<Value = ChatEvent> {
        (crate::event::tests::arb_input(), any::<u64>(), any::<i64>(), any::<i64>())
            .prop_map(|(i, id, ing, skew)| ChatEvent::from_input(i, id, ing, skew.rem_euclid(1_000_000)))
    }

    proptest! {
        #[test]
        fn envelope_round_trip(ev in arb_event()) {
            let bytes = encode(&ev).unwrap();
            prop_assert_eq!(decode::<ChatEvent>(&bytes).unwrap(), ev);
        }

        #[test]
        fn decode_of_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<ChatEvent>(&bytes);
            let _ = decode::<RowMutation>(&bytes);
            for version in 1..=SCHEMA_VERSION {
                let mut framed = vec![MAGIC, version];
                framed.extend_from_slice(&bytes);
                let _ = decode::<ChatEvent>(&framed);
                let _ = decode::<RowMutation>(&framed);
            }
        }

        #[test]
        fn every_truncation_is_an_error(ev in arb_event(), cut in any::<prop::sample::Index>()) {
            let bytes = encode(&ev).unwrap();
            let n = cut.index(bytes.len());
            prop_assert!(decode::<ChatEvent>(&bytes[..n]).is_err());
        }
    }

    proptest! {
        #[test]
        fn version_1_and_2_records_still_decode(ev in arb_event()) {
            // what builds before version 3 wrote: the event without its three last fields
            // (each a `None`, one tag byte in either integer encoding)
            let ev = ChatEvent { read_seq: None, name: None, avatar_url: None, ..ev };
            let mut v1 = vec![MAGIC, 1];
            bincode::encode_into_std_write(&ev, &mut v1, V1).unwrap();
            v1.truncate(v1.len() - 3);
            prop_assert_eq!(decode::<ChatEvent>(&v1).unwrap(), ev.clone());
            let mut v2 = vec![MAGIC, 2];
            bincode::encode_into_std_write(&ev, &mut v2, V2).unwrap();
            v2.truncate(v2.len() - 3);
            prop_assert_eq!(decode::<ChatEvent>(&v2).unwrap(), ev.clone());
            let v3 = encode(&ev).unwrap();
            prop_assert_eq!(v3[1], SCHEMA_VERSION);
            prop_assert_eq!(decode::<ChatEvent>(&v3).unwrap(), ev);
        }
    }

    #[test]
    fn future_version_and_bad_magic_are_refused() {
        let mut bytes = encode(&7u32).unwrap();
        bytes[1] = SCHEMA_VERSION + 1;
        assert!(matches!(decode::<u32>(&bytes), Err(EnvelopeError::FutureVersion(_))));
        bytes[1] = 0;
        assert!(matches!(decode::<u32>(&bytes), Err(EnvelopeError::FutureVersion(0))));
        bytes[0] = b'{';
        assert!(matches!(decode::<u32>(&bytes), Err(EnvelopeError::BadMagic(b'{'))));
        let mut bytes = encode(&7u32).unwrap();
        bytes.push(0);
        assert!(matches!(decode::<u32>(&bytes), Err(EnvelopeError::Trailing(1))));
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // a Vec<u8> claiming u64::MAX elements
        let bytes = [MAGIC, SCHEMA_VERSION, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(decode::<Vec<u8>>(&bytes).is_err());
    }
}
