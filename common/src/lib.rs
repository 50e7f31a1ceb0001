//! chatpipe-common: the pieces every chatpipe role shares.
//!
//! A short tour, one module per concern:
//!
//! * [`event`] — the chat event model and the producer-facing JSON of DESIGN §4: parsing and
//!   validation that names the failing field (and the array index), 64-bit ids accepted as
//!   numbers or decimal strings and written as strings.
//! * [`envelope`] — the versioned bincode envelope of every internal topic (`chat.events`,
//!   `chat.rows`, the changelog). Decoding never panics: garbage, truncated or future-version
//!   bytes are an [`envelope::EnvelopeError`].
//! * [`snowflake`] — unique, time-ordered 63-bit message ids; a clock that steps back is
//!   waited out up to a bound and refused beyond it, so an id never repeats.
//! * [`row_key`] — the salted, session-prefixed, newest-first HBase row keys of DESIGN §5 and
//!   the one salt constant the pre-split list derives from.
//! * [`rows`] — `RowMutation`, the value of `chat.rows` (the processor decides rows, the
//!   sink writes them).
//! * [`kafka`] — Kafka client configuration from CLI flags (secrets redacted), topic
//!   creation, DLQ header names; [`group`] — the consumer-group watchdog that rejoins a
//!   member a faulty coordinator left without partitions.
//! * [`duration`] — the one parser of duration flags (humantime syntax); [`backoff`] — the
//!   one retry backoff (exponential, capped, jittered); [`seek_back`] — the one schedule of
//!   fetching again from further back when a broker skipped records.
//! * [`telemetry`], [`http`], [`shutdown`] — tracing set-up, the `/metrics` `/healthz`
//!   `/readyz` server, and the SIGINT/SIGTERM shutdown future.
//!
//! Nothing here panics on input: every fallible function returns a typed error.

pub mod backoff;
pub mod duration;
pub mod envelope;
pub mod event;
pub mod group;
pub mod http;
pub mod kafka;
pub mod row_key;
pub mod rows;
pub mod seek_back;
pub mod shutdown;
pub mod snowflake;
pub mod telemetry;
