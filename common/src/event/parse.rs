//! Request bodies to validated events: one object, an array, or NDJSON lines, each through
//! the lenient pass (`lenient.rs`) and validation (`validate.rs`); a body of plain valid
//! events is first tried by the faster scanner (`fast.rs`). The errors of a refused body name
//! the element, the field and a code.

use std::fmt;

use serde::Serialize;

use super::lenient::RawItem;
use super::{fast, EventInput};

/// One validation problem, as returned to the producer in a 400 body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Position in the request (array element or NDJSON line, from 0); absent for a body
    /// that is not an event at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// Field path, e.g. `message.body`; empty for the event itself.
    pub field: String,
    /// Machine-readable code: `invalid_json`, `invalid_type`, `missing`, `invalid_value`,
    /// `out_of_range`, `too_long`, `too_many`, `empty`.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

impl FieldError {
    pub(super) fn new(index: Option<usize>, field: &str, code: &'static str, message: impl Into<String>) -> Self {
        FieldError { index, field: field.to_owned(), code, message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "[{i}].{}: {} ({})", self.field, self.message, self.code),
            None => write!(f, "{}: {} ({})", self.field, self.message, self.code),
        }
    }
}

/// How a request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One JSON object or a JSON array of objects.
    Json,
    /// One JSON object per line (`application/x-ndjson`).
    Ndjson,
}

/// Limits applied while parsing one request.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    /// Most events in one request.
    pub max_events: usize,
    /// Most errors reported back.
    pub max_errors: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits { max_events: 1000, max_errors: 100 }
    }
}

/// Parses and validates a whole request body. Either every event is valid (`Ok`) or the
/// errors of all invalid events, capped at `limits.max_errors`, are returned (`Err`).
///
/// A body of plain valid events is read by a scanner (`fast`); anything it is not sure
/// of, and every invalid body, goes through [`parse_body_serde`], so the result is always
/// the one `parse_body_serde` gives.
pub fn parse_body(body: &[u8], format: BodyFormat, limits: ParseLimits) -> Result<Vec<EventInput>, Vec<FieldError>> {
    if let Some(events) = fast_path(body, format, limits) {
        return Ok(events);
    }
    parse_body_serde(body, format, limits)
}

/// The events of a body the scanner could read and that are all valid.
pub(super) fn fast_path(body: &[u8], format: BodyFormat, limits: ParseLimits) -> Option<Vec<EventInput>> {
    let events = fast::parse(body, format, limits.max_events, |i, raw| raw.validate(Some(i)).ok())?;
    (!events.is_empty()).then_some(events)
}

/// [`parse_body`] with serde_json alone: the reference the fast path is tested against, and
/// the path of every body it does not read.
pub fn parse_body_serde(
    body: &[u8],
    format: BodyFormat,
    limits: ParseLimits,
) -> Result<Vec<EventInput>, Vec<FieldError>> {
    let items: Vec<(Option<usize>, Result<RawItem<'_>, FieldError>)> = match format {
        BodyFormat::Json => {
            let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
            if first == Some(b'[') {
                match serde_json::from_slice::<Vec<RawItem<'_>>>(body) {
                    Ok(v) => v.into_iter().enumerate().map(|(i, r)| (Some(i), Ok(r))).collect(),
                    Err(e) => return Err(vec![json_error(None, &e)]),
                }
            } else {
                match serde_json::from_slice::<RawItem<'_>>(body) {
                    Ok(r) => vec![(Some(0), Ok(r))],
                    Err(e) => return Err(vec![json_error(None, &e)]),
                }
            }
        }
        BodyFormat::Ndjson => body
            .split(|b| *b == b'\n')
            .filter(|line| line.iter().any(|b| !b.is_ascii_whitespace()))
            .enumerate()
            .map(|(i, line)| {
                (Some(i), serde_json::from_slice::<RawItem<'_>>(line).map_err(|e| json_error(Some(i), &e)))
            })
            .collect(),
    };
    if items.is_empty() {
        return Err(vec![FieldError::new(None, "", "empty", "the request holds no events")]);
    }
    if items.len() > limits.max_events {
        return Err(vec![FieldError::new(
            None,
            "",
            "too_many",
            format!("{} events in one request; at most {} are allowed", items.len(), limits.max_events),
        )]);
    }
    let mut events = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, item) in items {
        let result = item.map_err(|e| vec![e]).and_then(|raw| raw.validate(index));
        match result {
            Ok(ev) => events.push(ev),
            Err(errs) => {
                for e in errs {
                    if errors.len() < limits.max_errors {
                        errors.push(e);
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(errors)
    }
}

/// Parses and validates one JSON object (convenience for tests and tools).
pub fn parse_event(json: &[u8]) -> Result<EventInput, Vec<FieldError>> {
    match serde_json::from_slice::<RawItem<'_>>(json) {
        Ok(raw) => raw.validate(None),
        Err(e) => Err(vec![json_error(None, &e)]),
    }
}

pub(super) fn json_error(index: Option<usize>, e: &serde_json::Error) -> FieldError {
    FieldError::new(
        index,
        "",
        "invalid_json",
        format!("invalid JSON at line {} column {}: {}", e.line(), e.column(), e),
    )
}
