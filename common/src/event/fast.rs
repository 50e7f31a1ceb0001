//! The fast path of [`super::parse_body`]: a scanner for the shape a valid request has in
//! practice, building the same raw events the serde pass builds.
//!
//! It reads objects whose keys are the event's own fields (and `kind`, `body`, `mentions`
//! inside `message`), strings without escapes or control characters, non-negative integers
//! that fit 64 bits, `true`, `false` and `null`. Anything else is "not sure" (`None`): an
//! unknown or repeated key, an escape, a fraction or exponent, a sign, an overflowing
//! number, an object or array where a scalar goes, malformed JSON, more events than allowed.
//! The caller then parses the whole body with serde_json, which stays the parser of record
//! and writes every error message; this path never produces an error of its own, and its
//! events still go through the same validation.
//!
//! Why by hand: serde's derive path with `deserialize_any` on every field (so that a wrong
//! type is reported by field name) costs about 1 µs for a 300-byte event, a quarter of
//! ingest's CPU per accepted event; the scanner does the same for valid input in about
//! 0.6 µs, validation included (sonic-rs, tried instead, was slower than serde_json here).
//! A differential property test in `super::tests` checks that both paths agree on
//! generated bodies, odd ones included.

use std::borrow::Cow;

use super::lenient::{ArrayOr, LooseValue, ObjectOr, RawEvent, RawMessage};
use super::{BodyFormat, MAX_MENTIONS};

/// The events of a body, each passed to `accept` with its index as it is read (which
/// turns it into the caller's type, or answers `None` to stop), or `None` when the serde
/// pass must decide.
pub(super) fn parse<T>(
    body: &[u8],
    format: BodyFormat,
    max_events: usize,
    mut accept: impl FnMut(usize, RawEvent<'_>) -> Option<T>,
) -> Option<Vec<T>> {
    let mut out = Vec::new();
    match format {
        BodyFormat::Json => {
            let mut s = Scanner { b: body, i: 0 };
            if s.peek()? == b'[' {
                s.i += 1;
                loop {
                    if out.len() == max_events {
                        return None;
                    }
                    out.push(accept(out.len(), s.event()?)?);
                    match s.next()? {
                        b',' => {}
                        b']' => break,
                        _ => return None,
                    }
                }
            } else {
                out.push(accept(0, s.event()?)?);
            }
            s.end()?;
        }
        BodyFormat::Ndjson => {
            // The same line split and blank-line rule as the serde pass.
            for line in body.split(|b| *b == b'\n').filter(|line| line.iter().any(|b| !b.is_ascii_whitespace())) {
                if out.len() == max_events {
                    return None;
                }
                let mut s = Scanner { b: line, i: 0 };
                out.push(accept(out.len(), s.event()?)?);
                s.end()?;
            }
        }
    }
    Some(out)
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    /// Skips JSON whitespace; the next byte, not consumed.
    fn peek(&mut self) -> Option<u8> {
        while let Some(&c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(c);
            }
            self.i += 1;
        }
        None
    }

    /// Skips JSON whitespace; the next byte, consumed.
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// Nothing but whitespace is left.
    fn end(&mut self) -> Option<()> {
        self.peek().is_none().then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let rest = self.b.get(self.i..)?;
        rest.starts_with(word).then(|| self.i += word.len())
    }

    /// The bytes of a string with no escape and no control character (not yet checked to
    /// be UTF-8), borrowed from the body.
    fn raw_string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let rest = self.b.get(self.i..)?;
        let len = special_byte(rest)?;
        if rest.get(len) != Some(&b'"') {
            return None; // an escape or a control character
        }
        self.i += len + 1;
        rest.get(..len)
    }

    /// A string with no escape and no control character, borrowed from the body.
    fn string(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.raw_string()?).ok()
    }

    /// A non-negative integer in JSON's syntax (no leading zero) that fits 64 bits.
    fn number(&mut self) -> Option<u64> {
        let rest = self.b.get(self.i..)?;
        let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || (digits > 1 && rest.first() == Some(&b'0')) {
            return None;
        }
        if matches!(rest.get(digits), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let mut n: u64 = 0;
        for &d in rest.get(..digits)? {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        self.i += digits;
        Some(n)
    }

    /// A scalar field value; `Some(None)` for `null` (serde's `Option` reads null as absent).
    fn scalar(&mut self) -> Option<Option<LooseValue<'a>>> {
        Some(Some(match self.peek()? {
            b'"' => LooseValue::Str(Cow::Borrowed(self.string()?)),
            b'0'..=b'9' => LooseValue::U64(self.number()?),
            b't' => {
                self.literal(b"true")?;
                LooseValue::Bool
            }
            b'f' => {
                self.literal(b"false")?;
                LooseValue::Bool
            }
            b'n' => {
                self.literal(b"null")?;
                return Some(None);
            }
            _ => return None,
        }))
    }

    /// Reads an object whose keys are all known to `key` (which numbers them, below 16), calling
    /// `field` with each key's number to read its value. A repeated key is "not sure": serde
    /// reports it.
    fn object(
        &mut self,
        key: fn(&[u8]) -> Option<u32>,
        mut field: impl FnMut(&mut Self, u32) -> Option<()>,
    ) -> Option<()> {
        self.expect(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        let mut seen = 0u16;
        loop {
            let number = key(self.raw_string()?)?;
            let bit = 1u16.checked_shl(number)?;
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            self.expect(b':')?;
            field(self, number)?;
            match self.next()? {
                b',' => {}
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    fn event(&mut self) -> Option<RawEvent<'a>> {
        let mut ev = RawEvent::default();
        self.object(event_key, |s, number| {
            let slot = match number {
                0 => &mut ev.event_type,
                1 => &mut ev.session_id,
                2 => &mut ev.session_kind,
                3 => &mut ev.sender_id,
                4 => &mut ev.recipient_id,
                5 => &mut ev.client_msg_id,
                6 => &mut ev.sent_at,
                7 => {
                    ev.message = s.message()?;
                    return Some(());
                }
                8 => &mut ev.target_id,
                9 => &mut ev.user_id,
                10 => &mut ev.read_seq,
                11 => &mut ev.name,
                _ => &mut ev.avatar_url,
            };
            *slot = s.scalar()?;
            Some(())
        })?;
        Some(ev)
    }

    fn message(&mut self) -> Option<Option<ObjectOr<'a, RawMessage<'a>>>> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(None);
        }
        let mut m = RawMessage::default();
        self.object(message_key, |s, number| {
            match number {
                0 => m.kind = s.scalar()?,
                1 => m.body = s.scalar()?,
                _ => m.mentions = s.mentions()?,
            }
            Some(())
        })?;
        Some(Some(ObjectOr::Object(m)))
    }

    /// An array of ids (strings or integers), or `null`.
    fn mentions(&mut self) -> Option<Option<ArrayOr<'a>>> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(None);
        }
        self.expect(b'[')?;
        let mut ids = Vec::new();
        if self.peek()? == b']' {
            self.i += 1;
            return Some(Some(ArrayOr::Array(ids)));
        }
        loop {
            match self.scalar()? {
                Some(id @ (LooseValue::Str(_) | LooseValue::U64(_))) if ids.len() < MAX_MENTIONS => ids.push(id),
                _ => return None,
            }
            match self.next()? {
                b',' => {}
                b']' => return Some(Some(ArrayOr::Array(ids))),
                _ => return None,
            }
        }
    }
}

/// The number of an event key (its place in [`super::EVENT_FIELDS`]).
fn event_key(key: &[u8]) -> Option<u32> {
    Some(match key {
        b"type" => 0,
        b"session_id" => 1,
        b"session_kind" => 2,
        b"sender_id" => 3,
        b"recipient_id" => 4,
        b"client_msg_id" => 5,
        b"sent_at" => 6,
        b"message" => 7,
        b"target_id" => 8,
        b"user_id" => 9,
        b"read_seq" => 10,
        b"name" => 11,
        b"avatar_url" => 12,
        _ => return None,
    })
}

/// The number of a key of `message`.
fn message_key(key: &[u8]) -> Option<u32> {
    Some(match key {
        b"kind" => 0,
        b"body" => 1,
        b"mentions" => 2,
        _ => return None,
    })
}

/// The position of the first `"`, `\\` or control character (below 0x20), eight bytes at a
/// time: in a word `w`, `(w - 0x01…01 * c) & !w & 0x80…80` marks bytes below `c`, and its
/// lowest mark is exact (a borrow can only mark bytes above a real one).
fn special_byte(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |w: u64, c: u8| w.wrapping_sub(ONES * u64::from(c)) & !w;
    let mut chunks = s.chunks_exact(8);
    let mut at = 0;
    for chunk in chunks.by_ref() {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else { break };
        let w = u64::from_le_bytes(bytes);
        let marks =
            (below(w ^ (ONES * u64::from(b'"')), 1) | below(w ^ (ONES * u64::from(b'\\')), 1) | below(w, 0x20)) & HIGH;
        if marks != 0 {
            return Some(at + marks.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    chunks.remainder().iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20).map(|p| at + p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn event_keys_are_numbered_in_the_order_of_event_fields() {
        for (i, name) in super::super::EVENT_FIELDS.iter().enumerate() {
            assert_eq!(event_key(name.as_bytes()), u32::try_from(i).ok(), "{name}");
        }
        assert_eq!(event_key(b"extra"), None);
    }

    proptest! {
        #[test]
        fn special_byte_finds_the_first_quote_backslash_or_control(
            s in prop::collection::vec(prop_oneof![
                8 => 0x20u8..=0xff,
                1 => prop::sample::select(vec![b'"', b'\\', 0x00, 0x1f, 0x21, 0x5b, 0x5d, 0x7f, 0x80]),
            ], 0..40)
        ) {
            let naive = s.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
            prop_assert_eq!(special_byte(&s), naive);
        }
    }
}
