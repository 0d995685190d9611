//! Command line and environment: one [`Config`], read once at start.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::otlp::{self, NonLlm, OtlpInputs};

/// Environment variable holding the token required on ingest.
pub const INGEST_TOKEN_ENV: &str = "TRUTHTABLE_INGEST_TOKEN";
/// Environment variable holding the token required on reads.
pub const READ_TOKEN_ENV: &str = "TRUTHTABLE_READ_TOKEN";
/// Environment variable holding the token required to post verdicts.
pub const VERDICT_TOKEN_ENV: &str = "TRUTHTABLE_VERDICT_TOKEN";
/// Environment variable holding the `whsec_` secrets webhook engines are signed with.
pub const WEBHOOK_SECRETS_ENV: &str = "TRUTHTABLE_WEBHOOK_SECRETS";
/// Environment variable holding the token required on erasures and holds.
pub const ADMIN_TOKEN_ENV: &str = "TRUTHTABLE_ADMIN_TOKEN";
/// Environment variable that may hold `--db` (a Kubernetes Secret, say).
pub const DB_ENV: &str = "TRUTHTABLE_DB";
/// Environment variable that may hold `--db-password-file`.
pub const DB_PASSWORD_FILE_ENV: &str = "TRUTHTABLE_DB_PASSWORD_FILE";
/// Environment variable that may hold `--log-key`.
pub const LOG_KEY_ENV: &str = "TRUTHTABLE_LOG_KEY";
/// The PostgreSQL password, as libpq reads it.
pub const PGPASSWORD_ENV: &str = "PGPASSWORD";
/// A libpq password file (`host:port:database:user:password` lines), as libpq reads it.
pub const PGPASSFILE_ENV: &str = "PGPASSFILE";

const ENV_HELP: &str = "\
Environment:
  TRUTHTABLE_DB            The --db value when the flag is not given (e.g. from a Secret).
  TRUTHTABLE_DB_PASSWORD_FILE
                           The --db-password-file value when the flag is not given.
  PGPASSWORD               PostgreSQL password, when neither the URL nor --db-password-file has one.
  PGPASSFILE               libpq password file (host:port:database:user:password lines, mode 0600),
                           read when no other source has a password (default: ~/.pgpass).
  TRUTHTABLE_INGEST_TOKEN  When set (non-empty), POST /v1/captures requires
                           `authorization: Bearer <token>`; 401 otherwise.
  TRUTHTABLE_READ_TOKEN    When set (non-empty), GET /v1/captures and
                           GET /v1/captures/{id} require `authorization: Bearer <token>`
                           (or the web view's session cookie), and the web view asks for it
                           in a sign-in form.
  TRUTHTABLE_ADMIN_TOKEN   Erasures and legal holds (POST /v1/erasures, /v1/holds) require
                           `authorization: Bearer <token>`; without it they are refused.
  TRUTHTABLE_LOG_KEY       The --log-key value when the flag is not given.
  TRUTHTABLE_VERDICT_TOKEN When set (non-empty), POST /v1/captures/{id}/verdicts takes verdicts
                           with `authorization: Bearer <token>` (webhook engines that answer later).
  TRUTHTABLE_WEBHOOK_SECRETS
                           The whsec_ secrets webhook engines are signed with, space-separated
                           (two during a rotation); needed for an https:// --audit-engine.
  RUST_LOG                 Log filter (default: info), e.g. `debug` or `truthtable_collector=debug`.

OpenTelemetry export (off unless an endpoint is set; a TRACES_ variable wins over the general one):
  OTEL_EXPORTER_OTLP_ENDPOINT
                           Base URL of the OTLP receiver (/v1/traces is added for http/protobuf).
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
                           The traces URL, used as it is.
  OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_EXPORTER_OTLP_TRACES_PROTOCOL
                           http/protobuf (default) or grpc.
  OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_TRACES_HEADERS
                           key=value,key2=value2 (percent-decoded): e.g. Authorization=Basic%20...
  OTEL_EXPORTER_OTLP_TIMEOUT, OTEL_EXPORTER_OTLP_TRACES_TIMEOUT
                           Milliseconds one export request may take (default: 10000).
  OTEL_EXPORTER_OTLP_COMPRESSION, OTEL_EXPORTER_OTLP_TRACES_COMPRESSION
                           gzip or none (default).
  OTEL_SERVICE_NAME        The resource's service.name (default: truthtable-collector).
  OTEL_RESOURCE_ATTRIBUTES More resource attributes, key=value,... (e.g. openinference.project.name=rag).
  OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT, OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT
                           Longest string attribute, in characters (default: 65536).
  OTEL_SDK_DISABLED        true turns export off.
  OTEL_TRACES_EXPORTER     otlp, or none to turn export off.
  TRUTHTABLE_OTLP_NON_LLM  The --otlp-non-llm value when the flag is not given.

HTTP API:
  POST /v1/captures          NDJSON capture records (schema truthtable.capture.v1), one per line.
                             2xx only once every record of the request is durably committed;
                             503 while the database is unavailable (send again later).
  GET  /v1/captures?limit=N&before=CURSOR&since=&until=&outcome=&protocol=&model=&status=&mark=&q=
                             Summaries, newest stored first, filtered and searched;
                             `next_before` / `prev_after` page older / newer.
  GET  /v1/captures/{id}     {\"capture\": <record as received>, \"audit\": <audit view>}
  GET  /v1/log/checkpoint    The verifiable log's latest signed checkpoint (C2SP signed note).
  GET  /v1/log/key           Its verifier key.
  GET  /v1/log/consistency?old=N&new=M
                             RFC 9162 consistency proof, one base64 hash a line.
  GET  /v1/captures/{id}/entry
                             The capture's log entry: its record bytes exactly as stored.
  GET  /v1/captures/{id}/proof[?size=N]
                             A C2SP tlog-proof of the entry (against checkpoint N).
  GET  /v1/captures/{id}     {\"capture\": <record as received>, \"audit\": <audit view>,
                             \"verdicts\": [<each audit engine's verdict>]}
  POST /v1/captures/{id}/verdicts
                             A verdict from an audit engine (TRUTHTABLE_VERDICT_TOKEN).
  GET  /healthz              200 when the store takes writes, 503 (naming the cause) when not.
  GET  /livez                200 while the process serves HTTP, whatever the database does.
  GET  /metrics              Prometheus text format (export counters included).
  GET  /  (and /ui)          The web view: the list, filters and search; /ui/captures/{id}
                             shows one capture; /ui/login signs in with the read token.

Signals: SIGTERM or SIGINT finish the requests in flight, then close the store and exit 0.";

/// Command line of `truthtable-collector`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "truthtable-collector",
    version,
    about = "TruthTable audit collector: durable, deduplicating store of LLM capture records",
    long_about = "TruthTable audit collector.\n\nReceives capture records from the TruthTable Envoy \
                  filter over HTTP (NDJSON), stores them durably, deduplicated by id, and serves \
                  them back with an audit view: question, context, answer, tool calls and usage \
                  reassembled from the captured bodies. The store is an embedded SQLite file (WAL, \
                  synchronous=FULL) for one collector, or a PostgreSQL database that several \
                  collector replicas share.",
    after_help = ENV_HELP
)]
pub struct Cli {
    /// Address to listen on (use port 0 for any free port; the bound address is logged).
    #[arg(long, default_value = "127.0.0.1:8081", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// The store: a SQLite file path (created if missing, with `-wal` and `-shm` beside it), or a
    /// PostgreSQL URL `postgres://USER@HOST:PORT/DBNAME[?sslmode=...]` shared by several collectors.
    #[arg(
        long,
        env = DB_ENV,
        hide_env_values = true,
        default_value = "./truthtable.db",
        value_name = "PATH_OR_URL"
    )]
    pub db: String,

    /// File holding the PostgreSQL password (the whole file, one trailing newline ignored).
    #[arg(long, env = DB_PASSWORD_FILE_ENV, value_name = "PATH")]
    pub db_password_file: Option<PathBuf>,

    /// Most PostgreSQL connections this collector opens (one per ingest or read in progress).
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub db_pool_size: u16,

    /// Largest ingest request body accepted, in bytes; larger requests get 413.
    #[arg(long, default_value_t = 64 * 1024 * 1024, value_name = "BYTES")]
    pub max_body_bytes: usize,

    /// Export every stored capture as an OpenTelemetry span to this OTLP endpoint: a base URL,
    /// as OTEL_EXPORTER_OTLP_ENDPOINT (which it overrides). No export when neither is set.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// The OTLP protocol, as OTEL_EXPORTER_OTLP_PROTOCOL (which it overrides); default
    /// http/protobuf.
    #[arg(long, value_enum, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<otlp::Protocol>,

    /// Exchanges that are not LLM calls: exported as plain HTTP spans (`http`) or not at all
    /// (`skip`).
    #[arg(
        long,
        value_enum,
        env = otlp::config::NON_LLM_ENV,
        default_value = "http",
        value_name = "WHAT"
    )]
    pub otlp_non_llm: NonLlm,

    /// Most captures in one export request (requests also stay under 3 MiB).
    #[arg(long, default_value_t = 256, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub otlp_batch_size: u32,

    /// The verifiable log's signing key: a file holding an Ed25519 key in Go `sumdb/note`
    /// private-key format (`PRIVATE+KEY+<name>+<hash>+<base64>`), as `truthtable-collector
    /// keygen` writes it. Without it, a SQLite store's key is `<db>.log-key` beside the
    /// database, created at first start; on PostgreSQL the log needs this key.
    #[arg(long, env = LOG_KEY_ENV, value_name = "PATH")]
    pub log_key: Option<PathBuf>,

    /// The verifiable log: `on`, or `off` (nothing is sequenced or signed; for measuring its
    /// cost).
    #[arg(long, value_enum, default_value = "on", value_name = "ON_OFF")]
    pub log: Switch,

    /// Retention: erase captures whose exchange started longer ago than this (`180d`, `12h`,
    /// `30m`; at least 1m). A pass runs within a minute of start, then every hour. Off unless
    /// given.
    #[arg(long, value_name = "DURATION", value_parser = crate::erase::parse_duration)]
    pub retain: Option<std::time::Duration>,

    /// Longest wait between export attempts while the OTLP endpoint is down, in milliseconds.
    #[arg(long, default_value_t = 30_000, value_name = "MS", value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub otlp_retry_max_ms: u64,

    /// A gap longer than this between the pieces of a streamed answer is reported as a stall
    /// (audit view `timing.stalls`, OpenTelemetry stall events), in milliseconds.
    #[arg(long, default_value_t = crate::audit::timing::DEFAULT_STALL_THRESHOLD_MS, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub stall_threshold_ms: u64,
    /// Hand every stored LLM capture with an answer to this audit engine and keep its verdict:
    /// TruthTable's AuditService at grpc://HOST:PORT (grpcs:// for TLS), or any HTTP engine at an
    /// https:// URL, over Standard Webhooks. Repeat for several.
    #[arg(long = "audit-engine", value_name = "URL")]
    pub audit_engines: Vec<String>,

    /// Hand over only captures whose request path starts with this (repeatable).
    #[arg(long = "audit-path", value_name = "PREFIX")]
    pub audit_paths: Vec<String>,

    /// Hand over only captures of this model (`gpt-4o`), or of models starting with a prefix
    /// (`gpt-4*`) (repeatable).
    #[arg(long = "audit-model", value_name = "MODEL")]
    pub audit_models: Vec<String>,

    /// The share of the selected captures handed over, 0 to 1, chosen by capture id (the same
    /// captures every time).
    #[arg(long, default_value_t = 1.0, value_name = "SHARE")]
    pub audit_sample: f64,

    /// Most captures one engine judges at once.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub audit_concurrency: u16,

    /// Longest wait for one audit's result, in milliseconds; then the capture gets an engine
    /// error.
    #[arg(long, default_value_t = 600_000, value_name = "MS", value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub audit_timeout_ms: u64,

    /// Longest wait between attempts while an engine is down, in milliseconds.
    #[arg(long, default_value_t = 30_000, value_name = "MS", value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub audit_retry_max_ms: u64,
}

impl Cli {
    /// Parses a command line (`args[0]` is the program name); an error says what is wrong.
    pub fn try_from_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Cli::try_parse_from(args)
    }
}

/// A feature on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    /// On.
    On,
    /// Off.
    Off,
}

/// Where the captures are kept, as `--db` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbTarget {
    /// An embedded SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (`postgres://` or `postgresql://`), possibly with a password.
    Postgres(String),
}

impl DbTarget {
    /// A `postgres://` or `postgresql://` URL selects PostgreSQL; anything else is a file path.
    pub fn from_arg(arg: &str) -> Self {
        let lower = arg.get(..13).unwrap_or(arg).to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            DbTarget::Postgres(arg.to_owned())
        } else {
            DbTarget::Sqlite(PathBuf::from(arg))
        }
    }
}

/// Where a PostgreSQL password may come from, besides the URL, in the order they are tried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswordSources {
    /// `--db-password-file`: the whole file is the password.
    pub file: Option<PathBuf>,
    /// `PGPASSWORD`.
    pub env: Option<String>,
    /// `PGPASSFILE`, else `~/.pgpass`: a libpq password file.
    pub passfile: Option<PathBuf>,
}

/// Everything the collector needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// The store.
    pub db: DbTarget,
    /// Where the PostgreSQL password comes from when the URL has none.
    pub db_password: PasswordSources,
    /// Most PostgreSQL connections.
    pub db_pool_size: usize,
    /// Largest ingest body.
    pub max_body_bytes: usize,
    /// Bearer token required on ingest, if any.
    pub ingest_token: Option<String>,
    /// Bearer token required on reads, if any.
    pub read_token: Option<String>,
    /// Bearer token that posts verdicts; without one, none are taken.
    pub verdict_token: Option<String>,
    /// OpenTelemetry export, as given (checked by [`otlp::ExportConfig::resolve`]).
    pub otlp: OtlpInputs,
    /// The verifiable log's key file, if given.
    pub log_key: Option<PathBuf>,
    /// The verifiable log is off.
    pub log_off: bool,
    /// Gaps between content longer than this are stalls (`--stall-threshold-ms`).
    pub stall_threshold_ms: u64,
    /// The audit hand-off, as given (checked by [`crate::engine::Engine::all`]).
    pub audit: crate::engine::AuditInputs,
    /// Bearer token required on erasures and holds; without it they are refused.
    pub admin_token: Option<String>,
    /// Retention: captures older than this are erased.
    pub retain: Option<std::time::Duration>,
}

impl Config {
    /// Combines the command line with the environment (`env` looks a variable up; empty counts
    /// as unset).
    pub fn new(cli: Cli, env: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name| env(name).filter(|t: &String| !t.is_empty());
        let passfile = var(PGPASSFILE_ENV)
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".pgpass")));
        Config {
            listen: cli.listen,
            db: DbTarget::from_arg(&cli.db),
            db_password: PasswordSources {
                file: cli.db_password_file,
                env: var(PGPASSWORD_ENV),
                passfile,
            },
            db_pool_size: usize::from(cli.db_pool_size),
            max_body_bytes: cli.max_body_bytes,
            ingest_token: var(INGEST_TOKEN_ENV),
            read_token: var(READ_TOKEN_ENV),
            log_key: cli.log_key,
            log_off: cli.log == Switch::Off,
            stall_threshold_ms: cli.stall_threshold_ms,
            verdict_token: var(VERDICT_TOKEN_ENV),
            admin_token: var(ADMIN_TOKEN_ENV),
            retain: cli.retain,
            otlp: OtlpInputs {
                endpoint: cli.otlp_endpoint,
                protocol: cli.otlp_protocol,
                non_llm: cli.otlp_non_llm,
                batch_size: cli.otlp_batch_size,
                retry_max: std::time::Duration::from_millis(cli.otlp_retry_max_ms),
                env: otlp::config::VARIABLES
                    .iter()
                    .filter_map(|name| Some(((*name).to_owned(), var(name)?)))
                    .collect(),
            },
            audit: crate::engine::AuditInputs {
                engines: cli.audit_engines,
                selection: crate::engine::Selection {
                    paths: cli.audit_paths,
                    models: cli.audit_models,
                    sample: cli.audit_sample,
                },
                concurrency: usize::from(cli.audit_concurrency),
                call_timeout: std::time::Duration::from_secs(30),
                deadline: std::time::Duration::from_millis(cli.audit_timeout_ms),
                retry_max: std::time::Duration::from_millis(cli.audit_retry_max_ms),
                webhook_secrets: var(WEBHOOK_SECRETS_ENV)
                    .map(|s| {
                        s.split([' ', ','])
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            },
        }
    }

    /// A configuration with the defaults for the store `db` and no tokens (tests, embedding).
    pub fn with_db(db: DbTarget) -> Self {
        let mut config = Self::new(Cli::parse_from(["truthtable-collector"]), |_| None);
        config.db = db;
        config
    }

    /// Reads the process's command line and environment; exits with usage on bad arguments.
    pub fn from_process() -> Self {
        Self::new(Cli::parse(), |name| std::env::var(name).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_ones() {
        let cfg = Config::new(Cli::parse_from(["truthtable-collector"]), |_| None);
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:8081");
        assert_eq!(cfg.db, DbTarget::Sqlite(PathBuf::from("./truthtable.db")));
        assert_eq!(cfg.db_pool_size, 8);
        assert_eq!(cfg.db_password, PasswordSources::default());
        assert_eq!(cfg.max_body_bytes, 64 * 1024 * 1024);
        assert_eq!(cfg.ingest_token, None);
        assert_eq!(cfg.read_token, None);
        assert_eq!(cfg.otlp.endpoint, None);
        assert_eq!(cfg.otlp.non_llm, NonLlm::Http);
        assert_eq!(cfg.otlp.batch_size, 256);
        assert_eq!(cfg.otlp.retry_max, std::time::Duration::from_secs(30));
        assert!(otlp::ExportConfig::resolve(&cfg.otlp).unwrap().is_none());
    }

    #[test]
    fn export_settings_come_from_the_otel_variables_and_the_flags() {
        let cli = Cli::parse_from([
            "x",
            "--otlp-protocol",
            "grpc",
            "--otlp-non-llm",
            "skip",
            "--otlp-batch-size",
            "10",
        ]);
        let cfg = Config::new(cli, |name| match name {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://phoenix:4317".into()),
            "OTEL_SERVICE_NAME" => Some("audit".into()),
            "OTEL_EXPORTER_OTLP_HEADERS" => Some(String::new()),
            _ => None,
        });
        assert!(
            !cfg.otlp.env.contains_key("OTEL_EXPORTER_OTLP_HEADERS"),
            "empty is unset"
        );
        let export = otlp::ExportConfig::resolve(&cfg.otlp).unwrap().unwrap();
        assert_eq!(export.url, "http://phoenix:4317");
        assert_eq!(export.protocol, otlp::Protocol::Grpc);
        assert_eq!(export.non_llm, NonLlm::Skip);
        assert_eq!(export.batch_size, 10);
        assert_eq!(export.resource[0].1, "audit");
        let cli = Cli::parse_from(["x", "--otlp-endpoint", "http://flag:6006"]);
        let export = otlp::ExportConfig::resolve(&Config::new(cli, |_| None).otlp)
            .unwrap()
            .unwrap();
        assert_eq!(export.url, "http://flag:6006/v1/traces");
        assert!(Cli::try_from_args(["x", "--otlp-protocol", "http/json"]).is_err());
    }

    #[test]
    fn tokens_come_from_the_environment_and_empty_means_unset() {
        let cli = Cli::parse_from(["x", "--listen", "0.0.0.0:9000", "--db", "/tmp/a.db"]);
        let cfg = Config::new(cli, |name| match name {
            INGEST_TOKEN_ENV => Some("in".into()),
            READ_TOKEN_ENV => Some(String::new()),
            _ => None,
        });
        assert_eq!(cfg.ingest_token.as_deref(), Some("in"));
        assert_eq!(cfg.read_token, None);
        assert_eq!(cfg.listen.port(), 9000);
    }

    #[test]
    fn a_postgres_url_selects_postgresql_and_anything_else_is_a_sqlite_path() {
        for url in [
            "postgres://tt@db:5432/captures",
            "postgresql://tt@db/captures?sslmode=require",
            "POSTGRES://tt@db/x",
        ] {
            assert_eq!(DbTarget::from_arg(url), DbTarget::Postgres(url.into()));
        }
        for path in [
            "./truthtable.db",
            "/data/postgres/t.db",
            "postgres",
            "pg:/x",
        ] {
            assert_eq!(DbTarget::from_arg(path), DbTarget::Sqlite(path.into()));
        }
    }

    #[test]
    fn password_sources_come_from_flag_and_libpq_variables() {
        let cli = Cli::parse_from(["x", "--db-password-file", "/run/secrets/pg"]);
        let cfg = Config::new(cli, |name| match name {
            PGPASSWORD_ENV => Some("pw".into()),
            "HOME" => Some("/home/tt".into()),
            _ => None,
        });
        assert_eq!(
            cfg.db_password,
            PasswordSources {
                file: Some("/run/secrets/pg".into()),
                env: Some("pw".into()),
                passfile: Some("/home/tt/.pgpass".into()),
            }
        );
        let cfg = Config::new(Cli::parse_from(["x"]), |name| match name {
            PGPASSFILE_ENV => Some("/etc/tt/pgpass".into()),
            "HOME" => Some("/home/tt".into()),
            _ => None,
        });
        assert_eq!(cfg.db_password.passfile, Some("/etc/tt/pgpass".into()));
    }

    #[test]
    fn help_mentions_every_flag_and_variable() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for needle in [
            "--listen",
            "--db",
            "--db-password-file",
            "--db-pool-size",
            "--max-body-bytes",
            INGEST_TOKEN_ENV,
            READ_TOKEN_ENV,
            DB_ENV,
            DB_PASSWORD_FILE_ENV,
            PGPASSWORD_ENV,
            PGPASSFILE_ENV,
            "--otlp-endpoint",
            "--otlp-protocol",
            "--otlp-non-llm",
            "--otlp-batch-size",
            "--otlp-retry-max-ms",
            "--log-key",
            "--log ",
            LOG_KEY_ENV,
        ]
        .into_iter()
        .chain(otlp::config::VARIABLES)
        {
            assert!(help.contains(needle), "{needle} missing from --help");
        }
    }
}
