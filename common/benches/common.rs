//! Benchmarks of the hot pure functions: JSON parse + validate of a ~300-byte message event,
//! envelope encode + decode, row key encode. Run: `cargo bench -p chatpipe-common`.

use chatpipe_common::event::{parse_body, parse_body_serde, BodyFormat, ChatEvent, ParseLimits};
use chatpipe_common::{envelope, row_key};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

// the allocator of the chatpipe binary, so the numbers are the product's
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENT: &str = r#"{"type":"message","session_id":"1234567890123456789","session_kind":"group","sender_id":987654321,"client_msg_id":"c-7f3e2a9b-0001","sent_at":"2026-11-21T10:15:30.123Z","message":{"kind":"text","body":"RC is up on staging. Please run the checklist and report anything odd before five.","mentions":["42","43"]}}"#;

fn benches(c: &mut Criterion) {
    assert!((280..=340).contains(&EVENT.len()), "event is {} bytes", EVENT.len());
    let limits = ParseLimits::default();
    c.bench_function("json_parse_validate_300B", |b| {
        b.iter(|| parse_body(black_box(EVENT.as_bytes()), BodyFormat::Json, limits))
    });
    c.bench_function("json_parse_validate_300B_serde_only", |b| {
        b.iter(|| parse_body_serde(black_box(EVENT.as_bytes()), BodyFormat::Json, limits))
    });
    let batch = format!("[{}]", [EVENT; 100].join(","));
    c.bench_function("json_parse_validate_batch_of_100", |b| {
        b.iter(|| parse_body(black_box(batch.as_bytes()), BodyFormat::Json, limits))
    });
    let input = parse_body(EVENT.as_bytes(), BodyFormat::Json, limits).ok().and_then(|mut v| v.pop());
    let Some(input) = input else { panic!("bench event must be valid") };
    let event = ChatEvent::from_input(input, 123_456_789_012_345, 1_790_000_000_000, 60_000);
    let mut buf = Vec::with_capacity(512);
    c.bench_function("envelope_encode_decode", |b| {
        b.iter(|| {
            envelope::encode_into(black_box(&event), &mut buf).ok();
            envelope::decode::<ChatEvent>(black_box(&buf)).ok()
        })
    });
    let mut key = String::with_capacity(64);
    c.bench_function("row_key_encode", |b| {
        b.iter(|| {
            key.clear();
            row_key::encode_into(black_box(1_234_567_890_123_456_789), black_box(123_456_789_012_345), &mut key);
        })
    });
}

criterion_group!(common, benches);
criterion_main!(common);
