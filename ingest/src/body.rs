//! Receiving a request body and sizing it before anything is built from it.
//!
//! * [`read_body`] reads the body frame by frame under `--read-timeout` (408) and
//!   `--max-body-bytes` (413), **before** the request takes an in-flight slot, so a slow
//!   client holds a connection, not a slot. The bytes it holds are charged, as they arrive,
//!   to a process-wide budget (`--max-buffered-body-bytes`; a [`Semaphore`] of bytes): a slow
//!   client is charged only what it has sent, and when the budget is spent the request is
//!   refused at once (503, `Retry-After`) instead of waiting, so buffered bodies stay bounded
//!   however many connections are open.
//! * [`too_many_events`] counts the events of a body (JSON array elements, NDJSON lines)
//!   with a scan that allocates nothing and stops one past `--max-batch`, so a request with
//!   too many events is refused before the parser builds a single item of it (a 1 MiB body
//!   of `[{},{},…]` is ~350k items; built, 100–250 MB).
//!
//! Guarantee: per request at most `--max-body-bytes` are buffered, all requests together at
//! most `--max-buffered-body-bytes` (plus the one frame being checked), and a body's bytes
//! are released when the [`Buffered`] is dropped. Failure behaviour: every refusal is a
//! [`ReadError`] the API turns into a JSON error; nothing is produced.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use chatpipe_common::event::BodyFormat;
use http_body_util::BodyExt;
use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bytes of all bodies being received or parsed, charged as frames arrive.
pub(crate) struct BodyBudget {
    bytes: Arc<Semaphore>,
    gauge: IntGauge,
}

impl BodyBudget {
    /// A budget of `max_bytes`, reported on `gauge`.
    pub(crate) fn new(max_bytes: usize, gauge: IntGauge) -> Self {
        BodyBudget { bytes: Arc::new(Semaphore::new(max_bytes.min(Semaphore::MAX_PERMITS))), gauge }
    }

    /// Charges `n` bytes to `held` (merged into one permit), or `None` when the budget is spent.
    fn charge(&self, held: &mut Option<OwnedSemaphorePermit>, n: usize) -> Option<()> {
        let n32 = u32::try_from(n).ok()?;
        let permit = self.bytes.clone().try_acquire_many_owned(n32).ok()?;
        self.gauge.add(i64::from(n32));
        match held {
            Some(p) => p.merge(permit),
            None => *held = Some(permit),
        }
        Some(())
    }
}

/// A received body; its bytes stay charged to the budget until this is dropped.
pub(crate) struct Buffered {
    pub(crate) bytes: Bytes,
    charge: Option<OwnedSemaphorePermit>,
    gauge: IntGauge,
}

impl Drop for Buffered {
    fn drop(&mut self) {
        if let Some(p) = self.charge.take() {
            self.gauge.sub(i64::try_from(p.num_permits()).unwrap_or(i64::MAX));
        }
    }
}

/// Why a body was not received.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// Over `--max-body-bytes`.
    TooLarge,
    /// Not complete within `--read-timeout`.
    Timeout,
    /// The process-wide body budget is spent.
    BudgetSpent,
    /// The connection failed mid-body.
    Failed(String),
}

/// Reads `body` whole: at most `max_bytes`, within `timeout`, charging `budget` as frames
/// arrive (see the module doc).
pub(crate) async fn read_body(
    body: Body,
    max_bytes: usize,
    timeout: Duration,
    budget: &BodyBudget,
) -> Result<Buffered, ReadError> {
    let mut out = Buffered { bytes: Bytes::new(), charge: None, gauge: budget.gauge.clone() };
    let mut frames: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    let receive = async {
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ReadError::Failed(e.to_string()))?;
            let Ok(data) = frame.into_data() else { continue }; // trailers
            if data.is_empty() {
                continue;
            }
            total = total.checked_add(data.len()).filter(|t| *t <= max_bytes).ok_or(ReadError::TooLarge)?;
            budget.charge(&mut out.charge, data.len()).ok_or(ReadError::BudgetSpent)?;
            frames.push(data);
        }
        Ok::<(), ReadError>(())
    };
    tokio::time::timeout(timeout, receive).await.map_err(|_elapsed| ReadError::Timeout)??;
    out.bytes = match frames.len() {
        0 => Bytes::new(),
        1 => frames.pop().unwrap_or_default(),
        _ => {
            // One copy into a buffer of the exact size; the frames are freed right after.
            let mut joined = Vec::with_capacity(total);
            for f in frames.drain(..) {
                joined.extend_from_slice(&f);
            }
            Bytes::from(joined)
        }
    };
    Ok(out)
}

/// Whether `body` holds more than `max_events` events. Allocates nothing, and for most
/// bodies costs one vectorised byte count: fewer commas (JSON) or newlines (NDJSON) than the
/// limit cannot make too many events; only otherwise are the events counted (strings and
/// lines skipped eight bytes at a time), stopping one past the limit.
pub(crate) fn too_many_events(body: &[u8], format: BodyFormat, max_events: usize) -> bool {
    let separator = match format {
        BodyFormat::Json => b',',
        BodyFormat::Ndjson => b'\n',
    };
    if count_byte(body, separator) < max_events {
        return false;
    }
    count_events(body, format, max_events.saturating_add(1)) > max_events
}

/// How many events `body` holds, counted up to `cap` (the scan stops there).
///
/// The count is exact for well-formed bodies — JSON array elements, 1 for any other JSON
/// body, non-blank NDJSON lines (the parser's own rules) — and 0 for an empty body. For a
/// malformed JSON array it counts the values that start at the array's top level, an upper
/// bound of what the parser could build before it meets the error.
fn count_events(body: &[u8], format: BodyFormat, cap: usize) -> usize {
    match format {
        BodyFormat::Ndjson => {
            let (mut count, mut start) = (0usize, 0usize);
            while start < body.len() && count < cap {
                let end = find_either(body, start, b'\n', b'\n');
                if body[start..end].iter().any(|b| !b.is_ascii_whitespace()) {
                    count += 1;
                }
                start = end + 1;
            }
            count
        }
        BodyFormat::Json => match body.iter().position(|b| !b.is_ascii_whitespace()) {
            None => 0,
            Some(start) if body[start] == b'[' => array_elements(&body[start..], cap),
            Some(_) => 1,
        },
    }
}

/// The values that start at depth 1 of the JSON array opening `body`, up to `cap`. Strings
/// are skipped with their escapes, so brackets and commas inside them do not count.
fn array_elements(body: &[u8], cap: usize) -> usize {
    let mut depth = 0usize;
    let mut count = 0usize;
    // At depth 1, whether the next value starts an element (after `[` or `,`).
    let mut expect = false;
    let mut i = 0usize;
    while let Some(&b) = body.get(i) {
        i += 1;
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => continue,
            b',' => {
                expect = depth == 1;
                continue;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    // The array closed: anything after it is the parser's error to report.
                    break;
                }
                expect = false;
                continue;
            }
            _ => {}
        }
        if depth == 1 && expect {
            count += 1;
            if count >= cap {
                return count;
            }
        }
        expect = false;
        match b {
            b'[' | b'{' => {
                depth += 1;
                expect = depth == 1;
            }
            b'"' => i = skip_string(body, i),
            _ => {}
        }
    }
    count
}

/// The index just past the string whose content starts at `i` (after its opening quote),
/// escapes skipped; `body.len()` if it does not end.
fn skip_string(body: &[u8], mut i: usize) -> usize {
    loop {
        i = find_either(body, i, b'"', b'\\');
        match body.get(i) {
            None => return body.len(),
            Some(b'"') => return i + 1,
            Some(_) => i += 2, // a backslash and the byte it escapes
        }
    }
}

/// How many bytes of `body` are `byte`: 64-byte blocks counted into a `u8` each, which the
/// compiler vectorises (a plain `filter().count()` is not, and is ten times slower).
fn count_byte(body: &[u8], byte: u8) -> usize {
    let mut blocks = body.chunks_exact(64);
    let mut n = 0usize;
    for block in &mut blocks {
        n += usize::from(block.iter().fold(0u8, |k, b| k + u8::from(*b == byte)));
    }
    n + blocks.remainder().iter().filter(|b| **b == byte).count()
}

/// The index of the first `a` or `b` in `body` at or after `from` (`body.len()` if none),
/// eight bytes per step (SWAR: a byte of `w ^ splat(x)` is zero where `w` holds `x`).
fn find_either(body: &[u8], mut from: usize, a: u8, b: u8) -> usize {
    const LO: u64 = u64::from_le_bytes([0x01; 8]);
    const HI: u64 = u64::from_le_bytes([0x80; 8]);
    let (sa, sb) = (LO * u64::from(a), LO * u64::from(b));
    while let Some(word) = body.get(from..).and_then(<[u8]>::first_chunk::<8>) {
        let w = u64::from_le_bytes(*word);
        let (xa, xb) = (w ^ sa, w ^ sb);
        // The lowest set bit marks the first zero byte exactly (borrows only run upwards).
        let zero = ((xa.wrapping_sub(LO) & !xa) | (xb.wrapping_sub(LO) & !xb)) & HI;
        if zero != 0 {
            return from + (zero.trailing_zeros() / 8) as usize;
        }
        from += 8;
    }
    body.get(from..).and_then(|tail| tail.iter().position(|c| *c == a || *c == b)).map_or(body.len(), |p| from + p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatpipe_common::event::{parse_body_serde, ParseLimits};
    use proptest::prelude::*;

    const BIG: usize = 1_000_000;

    #[test]
    fn counts_array_elements_objects_and_lines() {
        let c = |s: &str, f| count_events(s.as_bytes(), f, BIG);
        assert_eq!(c("", BodyFormat::Json), 0);
        assert_eq!(c("  \n", BodyFormat::Json), 0);
        assert_eq!(c("[]", BodyFormat::Json), 0);
        assert_eq!(c(" [ ] ", BodyFormat::Json), 0);
        assert_eq!(c("[{}]", BodyFormat::Json), 1);
        assert_eq!(c("[{},{} , {\"a\":[1,2,{\"b\":\",]\\\"[\"}]}]", BodyFormat::Json), 3);
        assert_eq!(c("[1,\"x,y\",null,[2,3],true]", BodyFormat::Json), 5);
        assert_eq!(c("{\"a\":[1,2,3]}", BodyFormat::Json), 1);
        assert_eq!(c("17", BodyFormat::Json), 1);
        assert_eq!(c("[,,,,]", BodyFormat::Json), 0, "no value starts");
        assert_eq!(c("[1,2] [3,4,5]", BodyFormat::Json), 2, "what follows the array is not counted");
        assert_eq!(c("{}\n\n  \n{}\n{}", BodyFormat::Ndjson), 3);
        assert_eq!(c("", BodyFormat::Ndjson), 0);
    }

    #[test]
    fn byte_search_and_count_agree_with_the_plain_ones() {
        let text: Vec<u8> = (0..2000u32).map(|i| b"ab\"c\\de,\n"[(i * 7 % 9) as usize]).collect();
        for from in 0..40 {
            let plain = text[from..].iter().position(|c| *c == b'"' || *c == b'\\').map_or(text.len(), |p| from + p);
            assert_eq!(find_either(&text, from, b'"', b'\\'), plain, "from {from}");
        }
        assert_eq!(find_either(b"abc", 0, b'x', b'y'), 3);
        assert_eq!(find_either(b"abc", 5, b'x', b'y'), 3);
        assert_eq!(find_either(&[0x80, 0x22], 0, b'"', b'"'), 1);
        for len in [0, 1, 63, 64, 65, 1000, 2000] {
            let t = &text[..len];
            assert_eq!(count_byte(t, b','), t.iter().filter(|c| **c == b',').count(), "len {len}");
        }
        assert_eq!(count_byte(&[b','; 300], b','), 300, "no u8 overflow in a 64-byte block");
    }

    #[test]
    fn too_many_stops_one_past_the_limit() {
        let json = format!("[{}{{}}]", "{},".repeat(350_000));
        assert!(too_many_events(json.as_bytes(), BodyFormat::Json, 1000));
        assert_eq!(count_events(json.as_bytes(), BodyFormat::Json, 1001), 1001, "the scan stops at the cap");
        assert_eq!(count_events(json.as_bytes(), BodyFormat::Json, BIG), 350_001);
        let nd = "{}\n".repeat(350_000);
        assert!(too_many_events(nd.as_bytes(), BodyFormat::Ndjson, 1000));
        assert_eq!(count_events(nd.as_bytes(), BodyFormat::Ndjson, 1001), 1001);
        let nums = format!("[{}1]", "1,".repeat(5000));
        assert!(too_many_events(nums.as_bytes(), BodyFormat::Json, 10));
        // Exactly at the limit is not too many, with and without the separator shortcut.
        let ten = format!("[{}{{}}]", "{},".repeat(9));
        assert!(!too_many_events(ten.as_bytes(), BodyFormat::Json, 10));
        assert!(too_many_events(ten.as_bytes(), BodyFormat::Json, 9));
        let commas_inside = format!("[{}]", ["{\"a\":[1,2,3,4]}"; 3].join(","));
        assert!(!too_many_events(commas_inside.as_bytes(), BodyFormat::Json, 3), "commas inside events");
        assert!(!too_many_events("{}\n".repeat(10).as_bytes(), BodyFormat::Ndjson, 10));
        assert!(!too_many_events("{}\n\n\n{}\n".as_bytes(), BodyFormat::Ndjson, 2), "blank lines");
        assert!(too_many_events("{}\n{}\n{}".as_bytes(), BodyFormat::Ndjson, 2));
        assert!(!too_many_events(b"{\"a\":[1,2,3,4,5]}", BodyFormat::Json, 1));
    }

    fn serde_count(body: &[u8], format: BodyFormat) -> Option<usize> {
        let limits = ParseLimits { max_events: BIG, max_errors: BIG };
        match parse_body_serde(body, format, limits) {
            Ok(events) => Some(events.len()),
            Err(errors) => {
                // Invalid events are listed by index; a body-level error has none.
                let indexed: std::collections::BTreeSet<usize> = errors.iter().filter_map(|e| e.index).collect();
                errors.iter().all(|e| e.index.is_some()).then_some(indexed.len())
            }
        }
    }

    proptest! {
        /// For every body the parser reads as items, the scan counts at least the items
        /// the parser would build (exactly, when every item is reported), so refusing on
        /// the count never lets an over-limit body through to the parser.
        #[test]
        fn never_counts_fewer_than_the_parser_builds(
            items in prop::collection::vec(
                prop_oneof![
                    Just("{}".to_owned()),
                    Just("{\"type\":\"x\",\"a\":[1,{\"b\":\"]}\"}]}".to_owned()),
                    Just("\"s,\\\"]\"".to_owned()),
                    Just("[1,[2]]".to_owned()),
                    Just("12".to_owned()),
                    "[a-z0-9 ,:\\[\\]{}\"\\\\]{0,12}",
                ],
                0..40,
            ),
            ndjson in any::<bool>(),
        ) {
            let (body, format) = if ndjson {
                (items.join("\n"), BodyFormat::Ndjson)
            } else {
                (format!("[{}]", items.join(",")), BodyFormat::Json)
            };
            let counted = count_events(body.as_bytes(), format, BIG);
            if let Some(built) = serde_count(body.as_bytes(), format) {
                prop_assert!(counted >= built, "counted {counted} < {built} for {body:?}");
            }
            if ndjson {
                prop_assert_eq!(counted, body.split('\n').filter(|l| !l.trim().is_empty()).count());
            }
        }
    }

    fn budget(max: usize) -> BodyBudget {
        BodyBudget::new(max, IntGauge::new("g", "g").unwrap())
    }

    #[tokio::test]
    async fn reads_within_limits_and_releases_the_budget_on_drop() {
        let b = budget(100);
        let got = read_body(Body::from("0123456789"), 10, Duration::from_secs(1), &b).await.unwrap();
        assert_eq!(&got.bytes[..], b"0123456789");
        assert_eq!((b.bytes.available_permits(), b.gauge.get()), (90, 10));
        drop(got);
        assert_eq!((b.bytes.available_permits(), b.gauge.get()), (100, 0));
        let r = read_body(Body::from("01234567890"), 10, Duration::from_secs(1), &b).await;
        assert_eq!(r.err(), Some(ReadError::TooLarge));
        assert_eq!(b.bytes.available_permits(), 100, "a refused body releases what it held");
    }

    #[tokio::test]
    async fn a_spent_budget_refuses_instead_of_waiting() {
        let b = budget(15);
        let first = read_body(Body::from("0123456789"), 100, Duration::from_secs(1), &b).await.unwrap();
        let r = read_body(Body::from("0123456789"), 100, Duration::from_secs(1), &b).await;
        assert_eq!(r.err(), Some(ReadError::BudgetSpent));
        drop(first);
        assert!(read_body(Body::from("0123456789"), 100, Duration::from_secs(1), &b).await.is_ok());
    }

    #[tokio::test]
    async fn a_stalled_body_times_out_holding_only_what_it_sent() {
        let b = budget(1000);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        tx.send(Ok(Bytes::from_static(b"{\"type\""))).await.unwrap();
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
        let body = Body::from_stream(stream);
        let reading = read_body(body, 1000, Duration::from_millis(200), &b);
        tokio::pin!(reading);
        tokio::select! {
            _ = &mut reading => panic!("a stalled body does not complete"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        assert_eq!(b.bytes.available_permits(), 993, "charged the 7 bytes received");
        assert_eq!(reading.await.err(), Some(ReadError::Timeout));
        assert_eq!(b.bytes.available_permits(), 1000);
        drop(tx);
    }
}
