//! API-key authentication and per-client rate limits (requests per second, and events per
//! second next to it: one token bucket of each per key).
//!
//! Keys are secrets: only their SHA-256 digests are kept in memory, they never appear in
//! `Debug`, logs or errors (the file parser names line numbers, not content), and a
//! presented key is compared with every configured digest in constant time
//! ([`subtle::ConstantTimeEq`]), so neither the position of a matching key nor the length of
//! a prefix that matched leaks through timing. Hashing first also makes the comparison
//! independent of the presented key's length.
//!
//! With auth off (`--insecure-no-auth`) every request is client 0 and any `Authorization`
//! header is ignored (the `dev` command relies on this).

use std::fmt;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::Error;

/// A secret string whose `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself: only for sending it (tests, clients), never for logging.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One configured key: a display name and the digest of the secret.
#[derive(Clone)]
struct KeyEntry {
    name: String,
    digest: [u8; 32],
}

/// The accepted API keys (digests only).
#[derive(Clone)]
pub struct ApiKeys {
    entries: Vec<KeyEntry>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys").field("names", &self.names().collect::<Vec<_>>()).finish()
    }
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl ApiKeys {
    /// Keys from `(name, secret)` pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a Secret)>) -> Self {
        ApiKeys {
            entries: pairs
                .into_iter()
                .map(|(name, key)| KeyEntry { name: name.to_owned(), digest: digest(key.expose().as_bytes()) })
                .collect(),
        }
    }

    /// Parses the keys file format: one key per line, `key` or `name:key` (split at the first
    /// `:`), surrounding whitespace trimmed, blank lines and `#` comments skipped. Unnamed
    /// keys are called `key-<line>`. Errors name the line, never its content.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, key) = match line.split_once(':') {
                Some((name, key)) => (name.trim().to_owned(), key.trim()),
                None => (format!("key-{line_no}"), line),
            };
            if name.is_empty() {
                return Err(format!("line {line_no}: the name before ':' is empty"));
            }
            if key.is_empty() {
                return Err(format!("line {line_no}: the key is empty"));
            }
            if key.chars().any(char::is_whitespace) {
                return Err(format!("line {line_no}: the key contains whitespace"));
            }
            entries.push(KeyEntry { name, digest: digest(key.as_bytes()) });
        }
        if entries.is_empty() {
            return Err("no keys (every request would be refused)".into());
        }
        Ok(ApiKeys { entries })
    }

    /// Reads and parses a keys file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text =
            std::fs::read_to_string(path).map_err(|source| Error::ApiKeysFile { path: path.to_owned(), source })?;
        Self::parse(&text).map_err(|message| Error::ApiKeysFormat { path: path.to_owned(), message })
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no keys (never true for a parsed file).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The key names (safe to log).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str())
    }

    /// The index of the key equal to `presented`, comparing against every key in constant
    /// time.
    pub fn verify(&self, presented: &[u8]) -> Option<usize> {
        let d = digest(presented);
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, e) in self.entries.iter().enumerate() {
            let eq = e.digest.ct_eq(&d);
            index.conditional_assign(&u32::try_from(i).unwrap_or(u32::MAX), eq);
            found |= eq;
        }
        bool::from(found).then_some(index as usize)
    }

    /// The name of key `index`.
    pub fn name(&self, index: usize) -> &str {
        self.entries.get(index).map_or("", |e| e.name.as_str())
    }
}

/// How requests are authenticated.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Every request is accepted (as client 0); `Authorization` is ignored.
    Disabled,
    /// `Authorization: Bearer <key>` must name one of these keys.
    Keys(ApiKeys),
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A bearer token that is not a configured key (or a malformed header).
    Invalid,
}

impl Auth {
    /// Number of distinct clients (rate-limit buckets).
    pub fn clients(&self) -> usize {
        match self {
            Auth::Disabled => 1,
            Auth::Keys(k) => k.len(),
        }
    }

    /// Authenticates the value of an `Authorization` header, returning the client index.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<usize, AuthFailure> {
        let keys = match self {
            Auth::Disabled => return Ok(0),
            Auth::Keys(k) => k,
        };
        let header = header.ok_or(AuthFailure::Missing)?;
        let token = bearer_token(header).ok_or(AuthFailure::Invalid)?;
        keys.verify(token).ok_or(AuthFailure::Invalid)
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 7235), trimmed.
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let header = header.trim_ascii();
    let (scheme, rest) = header.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let (first, _) = rest.split_first()?;
    if *first != b' ' {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// One token bucket per client (per API key; a single shared bucket with auth off: behind a
/// load balancer client addresses are not meaningful, and a per-address map would grow with
/// the number of addresses). The buckets are fixed at start, so memory is bounded by the
/// number of keys.
pub struct RateLimits {
    buckets: Vec<DefaultDirectRateLimiter>,
    clock: DefaultClock,
    /// How long an empty bucket takes to fill (`burst / per_second`).
    refill: Duration,
}

impl fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimits").field("buckets", &self.buckets.len()).finish()
    }
}

impl RateLimits {
    /// `per_second` steady rate and `burst` bucket size for each of `clients`; `None` when
    /// `per_second` is 0 (no limit).
    pub fn new(per_second: u32, burst: u32, clients: usize) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rate).allow_burst(burst);
        let buckets = (0..clients.max(1)).map(|_| RateLimiter::direct(quota)).collect();
        let refill = Duration::from_secs_f64(f64::from(burst.get()) / f64::from(rate.get()));
        Some(RateLimits { buckets, clock: DefaultClock::default(), refill })
    }

    /// Takes one token from `client`'s bucket, or says how long until one is available.
    pub fn check(&self, client: usize) -> Result<(), Duration> {
        self.check_n(client, 1)
    }

    /// Takes `n` tokens at once from `client`'s bucket (none when it lacks any of them), or
    /// says how long until `n` are available. `n` of 0 always passes; `n` above the burst
    /// can never pass, and is answered with the time the whole bucket takes to refill (the
    /// configuration check keeps the event burst at least `--max-batch`, so a request never
    /// asks for that many).
    pub fn check_n(&self, client: usize, n: u32) -> Result<(), Duration> {
        let (Some(bucket), Some(n)) = (self.buckets.get(client), NonZeroU32::new(n)) else { return Ok(()) };
        match bucket.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now())),
            Err(_insufficient) => Err(self.refill),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_named_and_bare_keys_and_skips_comments() {
        let keys = ApiKeys::parse("# keys\n\nchat-server: s3cret-one\n  bare-key-two  \n").unwrap();
        assert_eq!(keys.names().collect::<Vec<_>>(), vec!["chat-server", "key-4"]);
        assert_eq!(keys.verify(b"s3cret-one"), Some(0));
        assert_eq!(keys.verify(b"bare-key-two"), Some(1));
        assert_eq!(keys.verify(b"s3cret-on"), None);
        assert_eq!(keys.verify(b""), None);
    }

    #[test]
    fn file_errors_never_show_the_key() {
        for text in ["name:\n", ":hunter2\n", "a: hunter 2\n", "# only\n"] {
            let e = ApiKeys::parse(text).unwrap_err();
            assert!(!e.contains("hunter"), "{e}");
        }
        let keys = ApiKeys::parse("n:hunter2").unwrap();
        assert!(!format!("{keys:?}").contains("hunter2"));
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }

    #[test]
    fn bearer_header_parsing() {
        let auth = Auth::Keys(ApiKeys::parse("k1\nk2").unwrap());
        assert_eq!(auth.authenticate(Some(b"Bearer k2")), Ok(1));
        assert_eq!(auth.authenticate(Some(b"bearer   k1 ")), Ok(0));
        assert_eq!(auth.authenticate(Some(b"Basic k1")), Err(AuthFailure::Invalid));
        assert_eq!(auth.authenticate(Some(b"Bearerk1")), Err(AuthFailure::Invalid));
        assert_eq!(auth.authenticate(Some(b"Bearer ")), Err(AuthFailure::Invalid));
        assert_eq!(auth.authenticate(Some(b"Bearer k3")), Err(AuthFailure::Invalid));
        assert_eq!(auth.authenticate(None), Err(AuthFailure::Missing));
        assert_eq!(Auth::Disabled.authenticate(Some(b"Bearer anything")), Ok(0));
        assert_eq!(Auth::Disabled.authenticate(None), Ok(0));
    }

    #[test]
    fn rate_limit_is_per_client_and_says_when_to_retry() {
        let limits = RateLimits::new(1, 2, 2).unwrap();
        assert!(limits.check(0).is_ok());
        assert!(limits.check(0).is_ok());
        let wait = limits.check(0).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(limits.check(1).is_ok(), "another key has its own bucket");
        assert!(RateLimits::new(0, 10, 1).is_none());
    }

    #[test]
    fn event_rate_takes_a_request_s_events_at_once_or_none() {
        let limits = RateLimits::new(10, 20, 2).unwrap();
        assert!(limits.check_n(0, 15).is_ok());
        let wait = limits.check_n(0, 10).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(limits.check_n(0, 5).is_ok(), "a refused request took no tokens");
        assert!(limits.check_n(0, 0).is_ok());
        assert!(limits.check_n(1, 20).is_ok(), "another key has its own bucket");
        assert_eq!(limits.check_n(1, 21), Err(Duration::from_secs(2)), "more than the burst never passes");
    }
}
