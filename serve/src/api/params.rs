//! Request parameters: the query parameters each route accepts, and their parsers.
//!
//! Ids are decimal strings (digits only, no sign, no leading zero, at most `u64::MAX`);
//! `limit` is 1..=[`MAX_LIMIT`](super::MAX_LIMIT) (default [`DEFAULT_LIMIT`](super::DEFAULT_LIMIT));
//! a parameter may appear once; an unknown parameter is refused. Every refusal is
//! [`ApiError::BadParam`] naming the parameter. Pure.

use std::collections::BTreeMap;

use super::errors::{bad, ApiError};
use super::{DEFAULT_LIMIT, MAX_LIMIT};

/// `GET /v1/sessions/{session}/messages`.
pub const MESSAGES: &[&str] = &["limit", "before", "after_seq"];
/// `GET /v1/users/{user}/inbox`.
pub const INBOX: &[&str] = &["limit", "before"];
/// `GET /v1/users/{user}/sessions`.
pub const USER_SESSIONS: &[&str] = &["limit", "before"];
/// `GET /v1/sessions/{session}/members`.
pub const MEMBERS: &[&str] = &["limit", "after"];
/// Routes without query parameters.
pub const NONE: &[&str] = &[];

/// A decimal id: digits only, no sign, no leading zero, fits u64.
pub(crate) fn parse_id(parameter: &str, raw: &str) -> Result<u64, ApiError> {
    let valid = !raw.is_empty()
        && raw.len() <= 20
        && raw.bytes().all(|b| b.is_ascii_digit())
        && !(raw.len() > 1 && raw.starts_with('0'));
    valid
        .then(|| raw.parse::<u64>().ok())
        .flatten()
        .ok_or_else(|| bad(parameter, "expected a decimal id (digits only, at most 18446744073709551615)"))
}

/// The query parameters of a request, each at most once and each in `allowed`.
pub(crate) fn parse_query<'q>(raw: Option<&'q str>, allowed: &[&str]) -> Result<BTreeMap<&'q str, &'q str>, ApiError> {
    let mut out = BTreeMap::new();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !allowed.contains(&k) {
            let hint = if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") };
            return Err(bad(k, format!("unknown parameter (accepted: {hint})")));
        }
        if out.insert(k, v).is_some() {
            return Err(bad(k, "given more than once"));
        }
    }
    Ok(out)
}

pub(crate) fn limit_of(q: &BTreeMap<&str, &str>) -> Result<usize, ApiError> {
    match q.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) && v.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err(bad("limit", format!("expected an integer from 1 to {MAX_LIMIT}"))),
        },
    }
}

pub(crate) fn opt_id(q: &BTreeMap<&str, &str>, name: &str) -> Result<Option<u64>, ApiError> {
    q.get(name).map(|v| parse_id(name, v)).transpose()
}

pub(crate) fn opt_seq(q: &BTreeMap<&str, &str>, name: &str) -> Result<Option<u64>, ApiError> {
    q.get(name)
        .map(|v| {
            (!v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()))
                .then(|| v.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| bad(name, "expected a non-negative integer seq"))
        })
        .transpose()
}

/// A sessions-list cursor: `<activity ms>.<session id>`.
pub(crate) fn parse_session_cursor(raw: &str) -> Result<(i64, u64), ApiError> {
    let err = || bad("before", "expected the `cursor` of a session of the previous page (`<ms>.<session id>`)");
    let (ms, id) = raw.split_once('.').ok_or_else(err)?;
    let ms = (!ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit())).then(|| ms.parse::<i64>().ok()).flatten();
    let id = parse_id("before", id).ok();
    match (ms, id) {
        (Some(ms), Some(id)) => Ok((ms, id)),
        _ => Err(err()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_strict_decimals() {
        assert_eq!(parse_id("session", "0").unwrap(), 0);
        assert_eq!(parse_id("session", "18446744073709551615").unwrap(), u64::MAX);
        for bad in ["", "-1", "+1", "01", "1.5", "abc", "18446744073709551616", " 1", "1e3"] {
            match parse_id("session", bad) {
                Err(ApiError::BadParam { parameter, .. }) => assert_eq!(parameter, "session"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn query_parameters_are_known_unique_and_bounded() {
        let q = parse_query(Some("limit=5&before=7"), MESSAGES).unwrap();
        assert_eq!(limit_of(&q).unwrap(), 5);
        assert_eq!(opt_id(&q, "before").unwrap(), Some(7));
        let name = |e: ApiError| match e {
            ApiError::BadParam { parameter, .. } => parameter,
            other => panic!("{other:?}"),
        };
        assert_eq!(name(parse_query(Some("limt=5"), MESSAGES).unwrap_err()), "limt");
        assert_eq!(name(parse_query(Some("limit=5&limit=6"), MESSAGES).unwrap_err()), "limit");
        for l in ["0", "201", "-1", "x", "", "+5"] {
            let raw = format!("limit={l}");
            let q = parse_query(Some(&raw), MESSAGES).unwrap();
            assert_eq!(name(limit_of(&q).unwrap_err()), "limit", "{l}");
        }
        assert_eq!(limit_of(&parse_query(None, MESSAGES).unwrap()).unwrap(), DEFAULT_LIMIT);
        let q = parse_query(Some("after_seq=x"), MESSAGES).unwrap();
        assert_eq!(name(opt_seq(&q, "after_seq").unwrap_err()), "after_seq");
    }

    #[test]
    fn session_cursors_round_trip() {
        assert_eq!(parse_session_cursor("1767225600000.42").unwrap(), (1_767_225_600_000, 42));
        for bad in ["", "1", ".1", "1.", "x.1", "1.x", "1.01"] {
            assert!(parse_session_cursor(bad).is_err(), "{bad}");
        }
    }
}
