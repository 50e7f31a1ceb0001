//! Parsing, validation, JSON and envelope round trips of events, and the generator of
//! arbitrary valid events other modules' property tests use.

use super::parse::fast_path;
use super::*;
use proptest::prelude::*;

fn one(json: &str) -> Result<EventInput, Vec<FieldError>> {
    parse_event(json.as_bytes())
}

#[test]
fn accepts_ids_as_numbers_and_strings() {
    let a = one(r#"{"type":"message","session_id":"18446744073709551615","session_kind":"group","sender_id":7,"message":{"kind":"text","body":"hi"}}"#).unwrap();
    assert_eq!(a.session_id, u64::MAX);
    assert_eq!(a.sender_id, 7);
    assert_eq!(a.sent_at_ms, None);
}

#[test]
fn rejects_out_of_range_id_naming_the_field() {
    let e = one(
        r#"{"type":"read","session_id":18446744073709551616,"session_kind":"group","sender_id":1,"target_id":"1"}"#,
    )
    .unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].field.as_str(), e[0].code), ("session_id", "out_of_range"));
    let e = one(
        r#"{"type":"read","session_id":"18446744073709551616","session_kind":"group","sender_id":1,"target_id":"1"}"#,
    )
    .unwrap_err();
    assert_eq!((e[0].field.as_str(), e[0].code), ("session_id", "out_of_range"));
    let e = one(r#"{"type":"read","session_id":-3,"session_kind":"group","sender_id":1,"target_id":"1"}"#).unwrap_err();
    assert_eq!((e[0].field.as_str(), e[0].code), ("session_id", "out_of_range"));
}

#[test]
fn reports_every_bad_field_with_array_index() {
    let body = br#"[{"type":"message","session_id":1,"session_kind":"direct","sender_id":2,"recipient_id":3,"message":{"kind":"text","body":"ok"}},
                    {"type":"message","session_id":true,"session_kind":"direct","sender_id":2,"message":{"kind":"gif","body":5}}]"#;
    let errs = parse_body(body, BodyFormat::Json, ParseLimits::default()).unwrap_err();
    let got: Vec<_> = errs.iter().map(|e| (e.index, e.field.as_str(), e.code)).collect();
    assert_eq!(
        got,
        vec![
            (Some(1), "session_id", "invalid_type"),
            (Some(1), "recipient_id", "missing"),
            (Some(1), "message.kind", "invalid_value"),
            (Some(1), "message.body", "invalid_type"),
        ]
    );
}

#[test]
fn ndjson_lines_are_indexed_and_blank_lines_skipped() {
    let body = b"{\"type\":\"join\",\"session_id\":1,\"session_kind\":\"group\",\"sender_id\":2,\"user_id\":2}\n\n{\"type\":\"leave\"}\n";
    let errs = parse_body(body, BodyFormat::Ndjson, ParseLimits::default()).unwrap_err();
    assert!(errs.iter().all(|e| e.index == Some(1)));
    assert!(errs.iter().any(|e| e.field == "user_id" && e.code == "missing"));
}

#[test]
fn sent_at_accepts_rfc3339_and_epoch_ms() {
    let a = one(r#"{"type":"read","session_id":1,"session_kind":"group","sender_id":1,"target_id":1,"sent_at":"2026-01-02T03:04:05.678Z"}"#).unwrap();
    let b = one(
        r#"{"type":"read","session_id":1,"session_kind":"group","sender_id":1,"target_id":1,"sent_at":1767323045678}"#,
    )
    .unwrap();
    assert_eq!(a.sent_at_ms, Some(1_767_323_045_678));
    assert_eq!(a.sent_at_ms, b.sent_at_ms);
    let e = one(
        r#"{"type":"read","session_id":1,"session_kind":"group","sender_id":1,"target_id":1,"sent_at":"yesterday"}"#,
    )
    .unwrap_err();
    assert_eq!(e[0].field, "sent_at");
}

#[test]
fn too_many_events_and_garbage_are_rejected() {
    let one_ev = r#"{"type":"read","session_id":1,"session_kind":"group","sender_id":1,"target_id":1}"#;
    let body = format!("[{}]", [one_ev; 3].join(","));
    let e = parse_body(body.as_bytes(), BodyFormat::Json, ParseLimits { max_events: 2, max_errors: 10 }).unwrap_err();
    assert_eq!(e[0].code, "too_many");
    let e = parse_body(b"{nope", BodyFormat::Json, ParseLimits::default()).unwrap_err();
    assert_eq!(e[0].code, "invalid_json");
    let e = parse_body(b"[1,\"x\"]", BodyFormat::Json, ParseLimits::default()).unwrap_err();
    assert_eq!(e.iter().map(|e| e.index).collect::<Vec<_>>(), vec![Some(0), Some(1)]);
    let e = parse_body(b"[]", BodyFormat::Json, ParseLimits::default()).unwrap_err();
    assert_eq!(e[0].code, "empty");
}

#[test]
fn clamps_future_sent_at_and_keeps_past() {
    let mut input =
        one(r#"{"type":"read","session_id":1,"session_kind":"group","sender_id":1,"target_id":1,"sent_at":5000000}"#)
            .unwrap();
    let ev = ChatEvent::from_input(input.clone(), 1, 1_000_000, 60_000);
    assert_eq!(ev.sent_at_ms, 1_000_000);
    input.sent_at_ms = Some(10);
    assert_eq!(ChatEvent::from_input(input, 1, 1_000_000, 60_000).sent_at_ms, 10);
}

pub(crate) fn arb_input() -> impl Strategy<Value = EventInput> {
    let id = 1..=u64::MAX;
    (
        prop::sample::select(EventType::ALL),
        id.clone(),
        prop::sample::select(SessionKind::ALL),
        id.clone(),
        prop::option::of(id.clone()),
        prop::option::of("[a-zA-Z0-9\\-_ ]{1,64}"),
        prop::option::of(0i64..253_402_300_799_999),
        (prop::sample::select(MessageKind::ALL), ".{0,200}", prop::collection::vec(id.clone(), 0..4)),
        prop::option::of(id.clone()),
        (
            prop::option::of(id.clone()),
            prop::option::of(id),
            prop::option::of("[a-zA-Z0-9 ]{1,40}"),
            prop::option::of("https://[a-z]{1,20}\\.example/[a-z0-9]{1,20}"),
        ),
    )
        .prop_map(
            |(
                t,
                session_id,
                sk,
                sender_id,
                recipient,
                cmid,
                sent,
                (mk, body, mentions),
                target,
                (user, read_seq, name, avatar_url),
            )| {
                let user = if matches!(t, EventType::Join | EventType::Leave | EventType::Profile) {
                    Some(user.unwrap_or(1))
                } else {
                    user
                };
                // a profile is routed by its user: session and sender are the user
                let (session_id, sender_id) = match (t, user) {
                    (EventType::Profile, Some(u)) => (u, u),
                    _ => (session_id, sender_id),
                };
                let name = match t {
                    EventType::Session => Some(name.unwrap_or_else(|| "general".into())),
                    EventType::Profile if avatar_url.is_none() => Some(name.unwrap_or_else(|| "ann".into())),
                    _ => name,
                };
                let recipient_id = if t == EventType::Message && sk == SessionKind::Direct {
                    Some(recipient.unwrap_or(9))
                } else {
                    recipient
                };
                EventInput {
                    event_type: t,
                    session_id,
                    session_kind: sk,
                    sender_id,
                    recipient_id,
                    client_msg_id: cmid,
                    sent_at_ms: sent,
                    message: matches!(t, EventType::Message | EventType::Edit).then(|| MessageContent {
                        kind: mk,
                        body,
                        mentions,
                    }),
                    target_id: if matches!(t, EventType::Edit | EventType::Recall | EventType::Read) {
                        Some(target.unwrap_or(1))
                    } else {
                        target
                    },
                    user_id: user,
                    read_seq,
                    name,
                    avatar_url,
                }
            },
        )
}

/// JSON text of one field value: the plain forms the fast path reads and odd ones it
/// leaves to serde.
fn arb_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[0-9]{1,21}",
        4 => "\"[a-z0-9 _.:-]{0,12}\"",
        2 => prop::sample::select(vec![
            "\"message\"", "\"edit\"", "\"recall\"", "\"read\"", "\"join\"", "\"leave\"", "\"direct\"",
            "\"group\"", "\"channel\"", "\"text\"", "\"card\"", "\"2026-01-02T03:04:05.678Z\"",
        ])
        .prop_map(str::to_owned),
        2 => prop::sample::select(vec![
            "true", "false", "null", "-1", "-0", "1.5", "1e3", "0.0", "0", "00", "01", "18446744073709551615",
            "18446744073709551616", "\"a\\\"b\"", "\"\\u0041\"", "\"\u{e9}t\u{e9}\"", "\"tab\there\"", "[]",
            "{}", "[1,2]", "{\"a\":1}", "nul", "tru", "\"\"", "\"unterminated",
        ])
        .prop_map(str::to_owned),
    ]
}

fn arb_ws() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", "", " ", "\n", "\t", "\r\n", "\u{c}"])
}

/// An object of random keys (mostly the right ones, sometimes repeated) and values.
fn arb_fields(keys: Vec<&'static str>, value: BoxedStrategy<String>) -> impl Strategy<Value = String> {
    let key = prop_oneof![
        8 => prop::sample::select(keys).prop_map(|k| format!("\"{k}\"")),
        1 => prop::sample::select(vec!["\"x\"", "\"Type\"", "\"t\\u0079pe\"", "\"kind\"", "\"\""])
            .prop_map(str::to_owned),
    ];
    prop::collection::vec((key, value, arb_ws(), arb_ws()), 0..12).prop_map(|fields| {
        let fields: Vec<String> = fields.iter().map(|(k, v, w1, w2)| format!("{w1}{k}{w2}:{w1}{v}{w2}")).collect();
        format!("{{{}}}", fields.join(","))
    })
}

fn arb_object() -> impl Strategy<Value = String> {
    let ids = prop::collection::vec(arb_value(), 0..4).prop_map(|v| format!("[{}]", v.join(",")));
    let message_value = prop_oneof![4 => arb_value(), 1 => ids].boxed();
    let message = arb_fields(vec!["kind", "body", "mentions"], message_value);
    let value = prop_oneof![6 => arb_value(), 1 => message].boxed();
    arb_fields(EVENT_FIELDS.to_vec(), value)
}

/// Valid events whose strings need no escape (what the fast path reads).
fn arb_plain_input() -> impl Strategy<Value = EventInput> {
    (arb_input(), "[^\"\\\\\\x00-\\x1f]{0,100}").prop_map(|(mut input, body)| {
        if let Some(m) = input.message.as_mut() {
            m.body = body;
        }
        input
    })
}

/// A plain valid event with one change: an odd value in one field (or inside `message`),
/// a repeated key, or an unknown key.
fn arb_mutated_event() -> impl Strategy<Value = String> {
    let change = (0..4u8, any::<prop::sample::Index>(), arb_value(), arb_ws());
    (arb_plain_input(), change).prop_map(|(input, (how, at, value, ws))| {
        let object = |fields: &[(String, String)]| {
            let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{ws}\"{k}\"{ws}:{ws}{v}")).collect();
            format!("{{{}}}", fields.join(","))
        };
        let fields_of = |v: serde_json::Value| -> Vec<(String, String)> {
            v.as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v.to_string())).collect()
        };
        let mut fields = fields_of(serde_json::from_str(&input.to_json()).unwrap());
        let i = at.index(fields.len());
        match how {
            0 => fields[i].1 = value,
            1 => fields.push(fields[i].clone()),
            2 => fields.insert(i, ("x".to_owned(), value)),
            _ => {
                if let Some(m) = fields.iter_mut().find(|(k, _)| k == "message") {
                    let mut inner = fields_of(serde_json::from_str(&m.1).unwrap());
                    let j = at.index(inner.len());
                    inner[j].1 = if inner[j].0 == "mentions" { format!("[{value}]") } else { value };
                    m.1 = object(&inner);
                }
            }
        }
        object(&fields)
    })
}

/// Request bodies: valid events (as producers write them) and random objects, as one
/// object, an array or NDJSON lines.
fn arb_body() -> impl Strategy<Value = (Vec<u8>, BodyFormat, usize)> {
    let object = prop_oneof![
        2 => arb_plain_input().prop_map(|i| i.to_json()),
        1 => arb_input().prop_map(|i| i.to_json()),
        2 => arb_mutated_event(),
        1 => arb_object(),
    ];
    (prop::collection::vec(object, 1..4), 0..3u8, arb_ws(), 1..5usize).prop_map(|(objects, form, ws, max)| match form {
        0 => (format!("{ws}{}{ws}", objects[0]).into_bytes(), BodyFormat::Json, max),
        1 => (format!("{ws}[{}]{ws}", objects.join(&format!("{ws},"))).into_bytes(), BodyFormat::Json, max),
        _ => (objects.join(&format!("{ws}\n")).into_bytes(), BodyFormat::Ndjson, max),
    })
}

#[test]
fn fast_path_reads_plain_events() {
    let bodies = [
        r#"{"type":"message","session_id":"1234567890123456789","session_kind":"group","sender_id":987654321,"client_msg_id":"c-1","sent_at":"2026-11-21T10:15:30.123Z","message":{"kind":"text","body":"see you at five","mentions":["42",43]}}"#,
        r#"[ {"type": "join", "session_id": 1, "session_kind": "group", "sender_id": 2, "user_id": 2, "sent_at": 1790000000000},
            {"type":"read","session_id":1,"session_kind":"group","sender_id":2,"target_id":"9","message":null} ]"#,
    ];
    for body in bodies {
        let fast = fast_path(body.as_bytes(), BodyFormat::Json, ParseLimits::default());
        assert!(fast.is_some(), "the fast path should read {body}");
        assert_eq!(
            fast.ok_or(()),
            parse_body_serde(body.as_bytes(), BodyFormat::Json, ParseLimits::default()).map_err(|_| ())
        );
    }
    let escaped =
        br#"{"type":"join","session_id":1,"session_kind":"group","sender_id":2,"user_id":2,"client_msg_id":"a"b"}"#;
    assert!(fast_path(escaped, BodyFormat::Json, ParseLimits::default()).is_none(), "escapes go to serde");
    let unknown = br#"{"type":"join","session_id":1,"session_kind":"group","sender_id":2,"user_id":2,"extra":1}"#;
    assert!(fast_path(unknown, BodyFormat::Json, ParseLimits::default()).is_none(), "unknown keys go to serde");
    assert!(parse_body(unknown, BodyFormat::Json, ParseLimits::default()).is_ok(), "and serde ignores them");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn fast_path_agrees_with_serde((body, format, max_events) in arb_body()) {
        let limits = ParseLimits { max_events, max_errors: 100 };
        let serde = parse_body_serde(&body, format, limits);
        if let Some(fast) = fast_path(&body, format, limits) {
            prop_assert_eq!(Ok(fast), serde.clone(), "{}", String::from_utf8_lossy(&body));
        }
        prop_assert_eq!(parse_body(&body, format, limits), serde);
    }

    #[test]
    fn fast_path_reads_every_plain_valid_event(
        input in arb_plain_input(),
        ws in prop::sample::select(vec!["", " ", "\n", "\t", "\r\n"]),
    ) {
        let body = format!("[{ws}{}{ws}]", input.to_json());
        let fast = fast_path(body.as_bytes(), BodyFormat::Json, ParseLimits::default());
        prop_assert_eq!(fast, Some(vec![input]));
    }
}

proptest! {
    #[test]
    fn json_round_trip(input in arb_input()) {
        let json = input.to_json();
        let back = parse_event(json.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e:?} for {json}")))?;
        prop_assert_eq!(back, input);
    }

    #[test]
    fn arbitrary_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_body(&body, BodyFormat::Json, ParseLimits::default());
        let _ = parse_body(&body, BodyFormat::Ndjson, ParseLimits::default());
    }

    #[test]
    fn arbitrary_json_values_never_panic(s in "[\\[\\]{}:,\"a-z0-9 .eE+-]{0,200}") {
        let _ = parse_body(s.as_bytes(), BodyFormat::Json, ParseLimits::default());
    }
}
