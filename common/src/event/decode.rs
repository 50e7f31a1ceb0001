//! The hand-written bincode `Decode` of the two event structs (the envelope's payload).

use bincode::de::read::Reader;
use bincode::de::Decoder;
use bincode::error::DecodeError;
use bincode::Decode;

use super::{ChatEvent, MessageContent};
use crate::envelope::Version;

// `Decode` is written out for the two event structs (field order = the derived `Encode`)
// so their strings are copied straight from the input slice: bincode's own `String`
// decode zero-fills a buffer first (about 15% of the envelope round trip in a profile).

/// Reads a length-prefixed UTF-8 string, copying from the input slice when the reader
/// exposes it. Lengths are claimed against the decoder's limit before anything is allocated.
fn decode_string<D: Decoder>(decoder: &mut D) -> Result<String, DecodeError> {
    let len = u64::decode(decoder)?;
    let len = usize::try_from(len).map_err(|_| DecodeError::OutsideUsizeRange(len))?;
    decoder.claim_container_read::<u8>(len)?;
    let reader = decoder.reader();
    if let Some(bytes) = reader.peek_read(len) {
        let text = std::str::from_utf8(bytes).map_err(|inner| DecodeError::Utf8 { inner })?.to_owned();
        reader.consume(len);
        return Ok(text);
    }
    let mut bytes = vec![0u8; len];
    reader.read(&mut bytes)?;
    String::from_utf8(bytes).map_err(|e| DecodeError::Utf8 { inner: e.utf8_error() })
}

impl<Context> Decode<Context> for MessageContent {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        Ok(MessageContent {
            kind: Decode::decode(decoder)?,
            body: decode_string(decoder)?,
            mentions: Decode::decode(decoder)?,
        })
    }
}
bincode::impl_borrow_decode!(MessageContent);

impl Decode<Version> for ChatEvent {
    fn decode<D: Decoder<Context = Version>>(decoder: &mut D) -> Result<Self, DecodeError> {
        // schema version 3 added `read_seq`, `name` and `avatar_url`; records of versions 1
        // and 2 (written before) end after `user_id`
        let tail = decoder.context().0 >= 3;
        Ok(ChatEvent {
            message_id: Decode::decode(decoder)?,
            ingested_at_ms: Decode::decode(decoder)?,
            sent_at_ms: Decode::decode(decoder)?,
            event_type: Decode::decode(decoder)?,
            session_id: Decode::decode(decoder)?,
            session_kind: Decode::decode(decoder)?,
            sender_id: Decode::decode(decoder)?,
            recipient_id: Decode::decode(decoder)?,
            client_msg_id: decode_opt_string(decoder)?,
            message: Decode::decode(decoder)?,
            target_id: Decode::decode(decoder)?,
            user_id: Decode::decode(decoder)?,
            read_seq: if tail { Decode::decode(decoder)? } else { None },
            name: if tail { decode_opt_string(decoder)? } else { None },
            avatar_url: if tail { decode_opt_string(decoder)? } else { None },
        })
    }
}
bincode::impl_borrow_decode_with_context!(ChatEvent, Version);

/// An `Option<String>` (bincode's tag byte, then the string).
fn decode_opt_string<D: Decoder>(decoder: &mut D) -> Result<Option<String>, DecodeError> {
    match u8::decode(decoder)? {
        0 => Ok(None),
        1 => Ok(Some(decode_string(decoder)?)),
        found => Err(DecodeError::UnexpectedVariant {
            type_name: "Option<String>",
            allowed: &bincode::error::AllowedEnumVariants::Range { min: 0, max: 1 },
            found: found.into(),
        }),
    }
}
