//! The versioned bincode envelope of every internal topic.
//!
//! Layout: `MAGIC` (1 byte) · schema version (1 byte) · bincode body (standard config,
//! varint integers). Decoding checks the magic, refuses versions newer than this build
//! understands, caps allocation at [`MAX_BODY`] and refuses trailing bytes, so garbage,
//! truncated or future-version input is an [`EnvelopeError`] and never a panic.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// First byte of every envelope.
pub const MAGIC: u8 = 0xC7;
/// The schema version this build writes and the newest it reads.
pub const SCHEMA_VERSION: u8 = 1;
/// Largest body decoded; bounds what a corrupt length prefix can make us allocate.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_BODY>,
>;

const fn config() -> Config {
    bincode::config::standard().with_limit::<MAX_BODY>()
}

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
    #[error("envelope schema version {0} is newer than this build understands ({SCHEMA_VERSION})")]
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

/// Encodes `value` into a new envelope.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EnvelopeError> {
    let mut out = Vec::with_capacity(128);
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Encodes `value` into `out` (cleared first), reusing its allocation.
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
    out.clear();
    out.push(MAGIC);
    out.push(SCHEMA_VERSION);
    bincode::serde::encode_into_std_write(value, out, config()).map_err(|e| EnvelopeError::Encode(e.to_string()))?;
    Ok(())
}

/// Decodes an envelope.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, EnvelopeError> {
    let [magic, version, body @ ..] = bytes else {
        return Err(EnvelopeError::Truncated(bytes.len()));
    };
    if *magic != MAGIC {
        return Err(EnvelopeError::BadMagic(*magic));
    }
    if *version > SCHEMA_VERSION || *version == 0 {
        return Err(EnvelopeError::FutureVersion(*version));
    }
    let (value, used) =
        bincode::serde::decode_from_slice(body, config()).map_err(|e| EnvelopeError::Body(e.to_string()))?;
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
            let mut framed = vec![MAGIC, SCHEMA_VERSION];
            framed.extend_from_slice(&bytes);
            let _ = decode::<ChatEvent>(&framed);
            let _ = decode::<RowMutation>(&framed);
        }

        #[test]
        fn every_truncation_is_an_error(ev in arb_event(), cut in any::<prop::sample::Index>()) {
            let bytes = encode(&ev).unwrap();
            let n = cut.index(bytes.len());
            prop_assert!(decode::<ChatEvent>(&bytes[..n]).is_err());
        }
    }

    #[test]
    fn future_version_and_bad_magic_are_refused() {
        let mut bytes = encode(&7u32).unwrap();
        bytes[1] = SCHEMA_VERSION + 1;
        assert!(matches!(decode::<u32>(&bytes), Err(EnvelopeError::FutureVersion(_))));
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
