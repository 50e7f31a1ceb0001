//! `chatpipe tables`: the tables of DESIGN §6, created idempotently over Thrift1
//! (`tables create`) or printed as HBase shell DDL with the salt pre-splits
//! (`tables --hbase-shell`), because Thrift1's `createTable` cannot pre-split and has no
//! namespace call.
//!
//! Settings, per table (the design names no TTL, so none is set: chat history, membership
//! and counts are kept until the product deletes them):
//!
//! | table | family | versions | why |
//! |---|---|---|---|
//! | `chat:messages` | `m` | 3 | edits overwrite `m:body`; the two previous bodies stay readable for moderation and support (`get` with versions), reads see the latest |
//! | `chat:channel_messages` | `m` | 1 | large and public: no history worth its storage |
//! | `chat:inbox` | `i` | 1 | a pointer, rewritten as is on replay |
//! | `chat:members` | `f` | 1 | current membership only |
//! | `chat:user_sessions` | `f` | 1 | current membership and read mark only |
//! | `chat:counts` | `c` | 1 | a corrected window replaces the old value |
//! | `chat:sessions` | `s` | 1 | the current state of a room (last seq, member count, name) |
//! | `chat:users` | `u` | 1 | the current profile |
//!
//! On a real cluster, run the printed DDL in `hbase shell` (it creates the `chat` namespace
//! and pre-splits every table into [`SALT_BUCKETS`] regions at `"001"`…`"127"`, the salt
//! prefixes). `tables create` is for the emulator and for clusters where pre-splitting is
//! not wanted; on real HBase it needs the namespace to exist.

use std::fmt::Write as _;

use chatpipe_common::row_key::{split_points, SALT_BUCKETS};
use chatpipe_common::rows::tables;
use hbase_thrift::hbase::ColumnDescriptor;

use crate::config::HbaseArgs;
use crate::hbase::{HbaseClient, HbaseError};

/// HBase's `HConstants.FOREVER`: no TTL.
pub const TTL_FOREVER: i32 = i32::MAX;

/// One table of DESIGN §6 and its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSpec {
    /// `namespace:table`.
    pub name: &'static str,
    /// Its one column family.
    pub family: &'static str,
    /// Versions kept per cell.
    pub max_versions: i32,
    /// Time to live in seconds ([`TTL_FOREVER`]: none).
    pub ttl_secs: i32,
}

/// Every table, with the settings of the module doc.
pub const TABLES: &[TableSpec] = &[
    TableSpec { name: tables::MESSAGES, family: "m", max_versions: 3, ttl_secs: TTL_FOREVER },
    TableSpec { name: tables::CHANNEL_MESSAGES, family: "m", max_versions: 1, ttl_secs: TTL_FOREVER },
    TableSpec { name: tables::INBOX, family: "i", max_versions: 1, ttl_secs: TTL_FOREVER },
    TableSpec { name: tables::MEMBERS, family: "f", max_versions: 1, ttl_secs: TTL_FOREVER },
    TableSpec { name: tables::USER_SESSIONS, family: "f", max_versions: 1, ttl_secs: TTL_FOREVER },
    TableSpec { name: tables::COUNTS, family: "c", max_versions: 1, ttl_secs: TTL_FOREVER },
    TableSpec { name: tables::SESSIONS, family: "s", max_versions: 1, ttl_secs: TTL_FOREVER },
    TableSpec { name: tables::USERS, family: "u", max_versions: 1, ttl_secs: TTL_FOREVER },
];

impl TableSpec {
    /// The Thrift1 family descriptor (every field set: the generated defaults of 0 and ""
    /// are refused by HBase).
    pub fn column_descriptor(&self) -> ColumnDescriptor {
        ColumnDescriptor {
            name: Some(format!("{}:", self.family).into_bytes()),
            max_versions: Some(self.max_versions),
            compression: Some("NONE".into()),
            in_memory: Some(false),
            bloom_filter_type: Some("ROW".into()),
            bloom_filter_vector_size: Some(0),
            bloom_filter_nb_hashes: Some(0),
            block_cache_enabled: Some(true),
            time_to_live: Some(self.ttl_secs),
        }
    }
}

/// What `create` did to one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It did not exist and was created.
    Created,
    /// It existed with the family.
    Existed,
}

/// Why the tables could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum TablesError {
    /// Talking to HBase failed.
    #[error(transparent)]
    Hbase(#[from] HbaseError),
    /// A table exists without its family; Thrift1 cannot alter it.
    #[error("table {table} exists without column family {family:?}; alter it in hbase shell")]
    MissingFamily {
        /// The table.
        table: String,
        /// The family it lacks.
        family: String,
    },
}

impl TablesError {
    /// Whether trying again may help.
    pub fn is_retriable(&self) -> bool {
        match self {
            TablesError::Hbase(e) => e.is_retriable(),
            TablesError::MissingFamily { .. } => false,
        }
    }
}

/// Creates every missing table of [`TABLES`] and checks the existing ones have their
/// family. Idempotent; a concurrent creator is fine (`AlreadyExists` counts as existing).
pub fn create_all(client: &mut HbaseClient) -> Result<Vec<(&'static str, Outcome)>, TablesError> {
    let existing = client.table_names()?;
    let mut out = Vec::with_capacity(TABLES.len());
    for spec in TABLES {
        let outcome = if existing.iter().any(|t| t == spec.name) {
            Outcome::Existed
        } else {
            match client.create_table(spec.name, vec![spec.column_descriptor()]) {
                Ok(()) => Outcome::Created,
                Err(HbaseError::AlreadyExists(_)) => Outcome::Existed,
                Err(e) => return Err(e.into()),
            }
        };
        if outcome == Outcome::Existed {
            let families = client.families(spec.name)?;
            if !families.contains_key(spec.family) {
                return Err(TablesError::MissingFamily { table: spec.name.into(), family: spec.family.into() });
            }
        }
        out.push((spec.name, outcome));
    }
    Ok(out)
}

/// HBase shell DDL for every table: namespace, families, versions, TTL and the
/// [`SALT_BUCKETS`]-region pre-split.
pub fn hbase_shell_ddl() -> String {
    let splits = split_points().iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# chatpipe tables (DESIGN §6): {SALT_BUCKETS} salt regions per table, split at the salt prefixes."
    );
    let _ = writeln!(out, "# Run in `hbase shell`. Changing the salt count is a migration, not an alter.");
    let _ = writeln!(out, "create_namespace 'chat'");
    for spec in TABLES {
        let ttl = if spec.ttl_secs == TTL_FOREVER { "'FOREVER'".to_owned() } else { spec.ttl_secs.to_string() };
        let _ = writeln!(
            out,
            "create '{}', {{NAME => '{}', VERSIONS => {}, TTL => {ttl}, BLOOMFILTER => 'ROW'}}, {{SPLITS => [{splits}]}}",
            spec.name, spec.family, spec.max_versions
        );
    }
    out
}

/// `chatpipe tables`: create the tables over Thrift, or print the shell DDL.
#[derive(clap::Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TablesArgs {
    /// Print HBase shell DDL (namespace, families, the 127 salt split points) for a real
    /// cluster instead of talking to HBase.
    #[arg(long)]
    pub hbase_shell: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Option<TablesCommand>,
}

/// `chatpipe tables` subcommands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum TablesCommand {
    /// Create every table of DESIGN §6 that is missing (idempotent).
    Create(CreateArgs),
}

/// `chatpipe tables create` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct CreateArgs {
    /// HBase Thrift connection.
    #[command(flatten)]
    pub hbase: HbaseArgs,
}

/// Runs `chatpipe tables`, writing what it did (or the DDL) to `out`.
pub async fn run(args: TablesArgs, out: &mut (dyn std::io::Write + Send)) -> Result<(), TablesError> {
    match (args.hbase_shell, args.command) {
        (_, Some(TablesCommand::Create(create))) => {
            let config = create.hbase.config();
            let report = tokio::task::spawn_blocking(move || {
                let mut client = HbaseClient::connect(&config)?;
                create_all(&mut client)
            })
            .await
            .map_err(|e| HbaseError::Task(e.to_string()))??;
            for (table, outcome) in report {
                let what = match outcome {
                    Outcome::Created => "created",
                    Outcome::Existed => "exists",
                };
                let _ = writeln!(out, "{table}\t{what}");
            }
        }
        (true, None) => {
            let _ = out.write_all(hbase_shell_ddl().as_bytes());
        }
        (false, None) => {
            let _ = writeln!(out, "nothing to do: use `chatpipe tables create --hbase-thrift HOST:PORT` or `chatpipe tables --hbase-shell`");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_of_the_design_is_specified_with_its_family() {
        let specs: Vec<(&str, &str)> = TABLES.iter().map(|t| (t.name, t.family)).collect();
        assert_eq!(specs, tables::ALL.to_vec());
    }

    #[test]
    fn shell_ddl_has_the_namespace_and_127_splits_per_table() {
        let ddl = hbase_shell_ddl();
        assert!(ddl.contains("create_namespace 'chat'"));
        let creates: Vec<&str> = ddl.lines().filter(|l| l.starts_with("create '")).collect();
        assert_eq!(creates.len(), TABLES.len());
        for line in creates {
            let splits = line.split("SPLITS => [").nth(1).unwrap();
            assert_eq!(splits.matches('\'').count(), 2 * 127, "{line}");
            assert!(splits.starts_with("'001', '002'"));
            assert!(splits.ends_with("'127']}"));
        }
        assert!(ddl.contains("create 'chat:messages', {NAME => 'm', VERSIONS => 3"));
    }

    /// `chatpipe tables create --thrift-transport T --thrift-protocol P` against an emulator
    /// serving T and P: every wire format HBase's Thrift server offers, through the flags.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tables_create_speaks_every_transport_and_protocol() {
        use chatpipe_hbase_emulator::{Config as EmulatorConfig, ThriftProtocol as P, ThriftTransport as T};
        use clap::Parser;

        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: TablesArgs,
        }
        for (transport, protocol, t, p) in [
            (T::Buffered, P::Binary, "buffered", "binary"),
            (T::Framed, P::Binary, "framed", "binary"),
            (T::Buffered, P::Compact, "buffered", "compact"),
            (T::Framed, P::Compact, "framed", "compact"),
        ] {
            let config = EmulatorConfig::in_memory("127.0.0.1:0".parse().unwrap()).with_wire(transport, protocol);
            let emulator = chatpipe_hbase_emulator::start(config).unwrap();
            let addr = emulator.local_addr().to_string();
            let argv = ["x", "create", "--hbase-thrift", &addr, "--thrift-transport", t, "--thrift-protocol", p];
            let cli = Cli::try_parse_from(argv).unwrap();
            let mut out = Vec::new();
            run(cli.args.clone(), &mut out).await.unwrap();
            let text = String::from_utf8(out).unwrap();
            assert_eq!(text.matches("\tcreated").count(), TABLES.len(), "{t}/{p}: {text}");
            // Run again: every table exists now (listed and described over the same wire).
            let mut again = Vec::new();
            run(cli.args, &mut again).await.unwrap();
            assert_eq!(String::from_utf8(again).unwrap().matches("\texists").count(), TABLES.len(), "{t}/{p}");
        }
    }
}
