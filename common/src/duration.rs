//! Durations on the command line: the one parser every role's `--*-timeout`, `--*-interval`
//! and `--window` flag uses (`value_parser = parse_duration`).
//!
//! The syntax is humantime's (`500ms`, `30s`, `1m 30s`, `24h`); an invalid value is a
//! `String` error that names the value, humantime's reason and an example, which clap
//! prints after the flag's name.

use std::time::Duration;

/// Parses a humantime duration (`500ms`, `30s`, `1m 30s`, `24h`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e} (e.g. 500ms, 30s, 24h)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_humantime_syntax() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(24 * 3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn error_names_the_value_and_an_example() {
        let err = parse_duration("5 parsecs").unwrap_err();
        assert!(err.starts_with("invalid duration \"5 parsecs\": "), "{err}");
        assert!(err.ends_with("(e.g. 500ms, 30s, 24h)"), "{err}");
        assert!(parse_duration("").is_err());
        assert!(parse_duration("12").is_err(), "a unit is required");
    }
}
