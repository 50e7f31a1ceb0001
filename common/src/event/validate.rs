//! The second pass of parsing: checks each lenient event (`lenient.rs`) against the rules of
//! DESIGN §4 and builds the [`EventInput`], or collects one [`FieldError`] per problem
//! (field path, machine-readable code, message).

use std::borrow::Cow;

use chrono::DateTime;

use super::lenient::{ArrayOr, LooseValue, ObjectOr, RawEvent, RawMessage};
use super::*;

/// Collects the errors of one event.
pub(super) struct EventCheck {
    pub(super) index: Option<usize>,
    pub(super) errors: Vec<FieldError>,
}

impl EventCheck {
    pub(super) fn err(&mut self, field: &str, code: &'static str, message: impl Into<String>) {
        self.errors.push(FieldError::new(self.index, field, code, message));
    }

    /// Present (not null) value of a field, or None.
    pub(super) fn present<'v, 'a>(v: &'v Option<LooseValue<'a>>) -> Option<&'v LooseValue<'a>> {
        match v {
            None | Some(LooseValue::Null) => None,
            Some(v) => Some(v),
        }
    }

    pub(super) fn id(&mut self, field: &str, v: &Option<LooseValue<'_>>, required: bool) -> Option<u64> {
        self.id_named(|| Cow::Borrowed(field), v, required)
    }

    /// [`EventCheck::id`] with the field's name made only when there is an error (a mention's
    /// name is formatted from its position).
    pub(super) fn id_named<'f>(
        &mut self,
        name: impl Fn() -> Cow<'f, str>,
        v: &Option<LooseValue<'_>>,
        required: bool,
    ) -> Option<u64> {
        let Some(v) = Self::present(v) else {
            if required {
                let field = name();
                self.err(&field, "missing", format!("{field} is required"));
            }
            return None;
        };
        let parsed = match v {
            LooseValue::U64(n) => Ok(*n),
            LooseValue::Negative => Err(("out_of_range", "must be a positive 64-bit id".to_owned())),
            LooseValue::F64(f) if f.fract() == 0.0 && f.abs() >= u64::MAX as f64 => {
                Err(("out_of_range", "exceeds the 64-bit id range".to_owned()))
            }
            LooseValue::F64(_) => Err(("invalid_type", "must be an integer id".to_owned())),
            LooseValue::Str(s) => parse_decimal_id(s),
            other => Err(("invalid_type", format!("must be a number or a decimal string, not {}", other.type_name()))),
        };
        match parsed {
            Ok(0) => {
                let field = name();
                self.err(&field, "out_of_range", format!("{field} must be a positive 64-bit id"));
                None
            }
            Ok(n) => Some(n),
            Err((code, msg)) => {
                let field = name();
                self.err(&field, code, format!("{field} {msg}"));
                None
            }
        }
    }

    /// An optional (or `required`) string of at most `max` bytes.
    pub(super) fn text(
        &mut self,
        field: &str,
        v: &Option<LooseValue<'_>>,
        required: bool,
        max: usize,
    ) -> Option<String> {
        match Self::present(v) {
            None => {
                if required {
                    self.err(field, "missing", format!("{field} is required"));
                }
                None
            }
            Some(LooseValue::Str(s)) if s.len() > max => {
                self.err(field, "too_long", format!("{field} is longer than {max} bytes"));
                None
            }
            Some(LooseValue::Str(s)) => Some(s.clone().into_owned()),
            Some(other) => {
                self.err(field, "invalid_type", format!("{field} must be a string, not {}", other.type_name()));
                None
            }
        }
    }

    pub(super) fn name<T>(
        &mut self,
        field: &str,
        v: &Option<LooseValue<'_>>,
        parse: fn(&str) -> Option<T>,
        allowed: &str,
    ) -> Option<T> {
        match Self::present(v) {
            None => {
                self.err(field, "missing", format!("{field} is required"));
                None
            }
            Some(LooseValue::Str(s)) => {
                let r = parse(s);
                if r.is_none() {
                    self.err(field, "invalid_value", format!("{field} must be one of {allowed}"));
                }
                r
            }
            Some(other) => {
                self.err(field, "invalid_type", format!("{field} must be a string, not {}", other.type_name()));
                None
            }
        }
    }
}

pub(super) fn parse_decimal_id(s: &str) -> Result<u64, (&'static str, String)> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(("invalid_value", "must be a decimal string of digits".to_owned()));
    }
    s.parse::<u64>().map_err(|_| ("out_of_range", "exceeds the 64-bit id range".to_owned()))
}

/// Parses `sent_at`: RFC 3339 text or epoch milliseconds.
pub(super) fn parse_time(c: &mut EventCheck, v: &Option<LooseValue<'_>>) -> Option<i64> {
    const FIELD: &str = "sent_at";
    // Epoch ms between 1970 and year 9999 (what RFC 3339 can also express).
    const MAX_MS: u64 = 253_402_300_799_999;
    match EventCheck::present(v)? {
        LooseValue::U64(ms) if *ms <= MAX_MS => Some(*ms as i64),
        LooseValue::U64(_) | LooseValue::Negative => {
            c.err(FIELD, "out_of_range", "sent_at epoch milliseconds must be between 1970 and 9999");
            None
        }
        LooseValue::Str(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) if t.timestamp_millis() >= 0 => Some(t.timestamp_millis()),
            Ok(_) => {
                c.err(FIELD, "out_of_range", "sent_at must not be before 1970");
                None
            }
            Err(e) => {
                c.err(FIELD, "invalid_value", format!("sent_at is not RFC 3339: {e}"));
                None
            }
        },
        other => {
            c.err(
                FIELD,
                "invalid_type",
                format!("sent_at must be RFC 3339 text or epoch ms, not {}", other.type_name()),
            );
            None
        }
    }
}

impl ObjectOr<'_, RawEvent<'_>> {
    pub(super) fn validate(self, index: Option<usize>) -> Result<EventInput, Vec<FieldError>> {
        match self {
            ObjectOr::Object(raw) => raw.validate(index),
            ObjectOr::Other(v) => Err(vec![FieldError::new(
                index,
                "",
                "invalid_type",
                format!("an event must be a JSON object, not {}", v.type_name()),
            )]),
        }
    }
}

impl RawEvent<'_> {
    pub(super) fn validate(self, index: Option<usize>) -> Result<EventInput, Vec<FieldError>> {
        let mut c = EventCheck { index, errors: Vec::new() };
        let event_type = c.name(
            "type",
            &self.event_type,
            EventType::from_name,
            "message, edit, recall, read, join, leave, session, profile",
        );
        let is_profile = event_type == Some(EventType::Profile);
        // a profile is about a user, not a session: it is routed by `user_id`
        let needs_user = matches!(event_type, Some(EventType::Join | EventType::Leave | EventType::Profile));
        let user_id = c.id("user_id", &self.user_id, needs_user);
        let session_id = c.id("session_id", &self.session_id, !is_profile);
        let session_kind = if is_profile && EventCheck::present(&self.session_kind).is_none() {
            Some(SessionKind::Direct)
        } else {
            c.name("session_kind", &self.session_kind, SessionKind::from_name, "direct, group, channel")
        };
        let sender_id = c.id("sender_id", &self.sender_id, !is_profile);
        let needs_recipient = event_type == Some(EventType::Message) && session_kind == Some(SessionKind::Direct);
        let recipient_id = c.id("recipient_id", &self.recipient_id, needs_recipient);
        let read_seq = c.id("read_seq", &self.read_seq, false);
        let needs_target = matches!(event_type, Some(EventType::Edit | EventType::Recall))
            || (event_type == Some(EventType::Read) && read_seq.is_none());
        let target_id = c.id("target_id", &self.target_id, needs_target);
        let name = c.text("name", &self.name, event_type == Some(EventType::Session), MAX_NAME_BYTES);
        let avatar_url = c.text("avatar_url", &self.avatar_url, false, MAX_AVATAR_URL_BYTES);
        if is_profile && EventCheck::present(&self.name).is_none() && EventCheck::present(&self.avatar_url).is_none() {
            c.err("name", "missing", "a profile event needs name or avatar_url");
        }
        let (session_id, sender_id) = if is_profile { (user_id, user_id) } else { (session_id, sender_id) };
        let sent_at_ms = parse_time(&mut c, &self.sent_at);
        let client_msg_id = match EventCheck::present(&self.client_msg_id) {
            None => None,
            Some(LooseValue::Str(s)) if s.is_empty() => {
                c.err("client_msg_id", "empty", "client_msg_id must not be empty");
                None
            }
            Some(LooseValue::Str(s)) if s.len() > MAX_CLIENT_MSG_ID_BYTES => {
                c.err(
                    "client_msg_id",
                    "too_long",
                    format!("client_msg_id is longer than {MAX_CLIENT_MSG_ID_BYTES} bytes"),
                );
                None
            }
            Some(LooseValue::Str(s)) => Some(s.clone().into_owned()),
            Some(other) => {
                c.err(
                    "client_msg_id",
                    "invalid_type",
                    format!("client_msg_id must be a string, not {}", other.type_name()),
                );
                None
            }
        };
        let needs_message = matches!(event_type, Some(EventType::Message | EventType::Edit));
        let message = match self.message {
            None | Some(ObjectOr::Other(LooseValue::Null)) => {
                if needs_message {
                    c.err("message", "missing", "message is required for message and edit events");
                }
                None
            }
            Some(ObjectOr::Other(other)) => {
                c.err("message", "invalid_type", format!("message must be an object, not {}", other.type_name()));
                None
            }
            Some(ObjectOr::Object(m)) => validate_message(&mut c, m),
        };
        if !c.errors.is_empty() {
            return Err(c.errors);
        }
        match (event_type, session_id, session_kind, sender_id) {
            (Some(event_type), Some(session_id), Some(session_kind), Some(sender_id)) => Ok(EventInput {
                event_type,
                session_id,
                session_kind,
                sender_id,
                recipient_id,
                client_msg_id,
                sent_at_ms,
                message: if needs_message { message } else { None },
                target_id,
                user_id,
                read_seq,
                name,
                avatar_url,
            }),
            // Unreachable in practice: a missing required field recorded an error above.
            _ => Err(vec![FieldError::new(index, "", "invalid_value", "incomplete event")]),
        }
    }
}

pub(super) fn validate_message(c: &mut EventCheck, m: RawMessage<'_>) -> Option<MessageContent> {
    let kind = c.name("message.kind", &m.kind, MessageKind::from_name, "text, image, audio, video, file, card, system");
    let body = match EventCheck::present(&m.body) {
        None => {
            c.err("message.body", "missing", "message.body is required");
            None
        }
        Some(LooseValue::Str(s)) if s.len() > MAX_BODY_BYTES => {
            c.err(
                "message.body",
                "too_long",
                format!("message.body is {} bytes; at most {MAX_BODY_BYTES} are allowed", s.len()),
            );
            None
        }
        Some(LooseValue::Str(s)) => Some(s.clone().into_owned()),
        Some(other) => {
            c.err("message.body", "invalid_type", format!("message.body must be a string, not {}", other.type_name()));
            None
        }
    };
    let mut mentions = Vec::new();
    match m.mentions {
        None | Some(ArrayOr::Other(LooseValue::Null)) => {}
        Some(ArrayOr::Other(other)) => {
            c.err(
                "message.mentions",
                "invalid_type",
                format!("message.mentions must be an array, not {}", other.type_name()),
            );
        }
        Some(ArrayOr::Array(items)) if items.len() > MAX_MENTIONS => {
            c.err("message.mentions", "too_many", format!("at most {MAX_MENTIONS} mentions are allowed"));
        }
        Some(ArrayOr::Array(items)) => {
            for (i, item) in items.into_iter().enumerate() {
                if let Some(id) = c.id_named(|| Cow::Owned(format!("message.mentions[{i}]")), &Some(item), true) {
                    mentions.push(id);
                }
            }
        }
    }
    Some(MessageContent { kind: kind?, body: body?, mentions })
}
