//! Command line and environment: one [`Config`], read once at start.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Environment variable holding the token required on ingest.
pub const INGEST_TOKEN_ENV: &str = "TRUTHTABLE_INGEST_TOKEN";
/// Environment variable holding the token required on reads.
pub const READ_TOKEN_ENV: &str = "TRUTHTABLE_READ_TOKEN";

const ENV_HELP: &str = "\
Environment:
  TRUTHTABLE_INGEST_TOKEN  When set (non-empty), POST /v1/captures requires
                           `authorization: Bearer <token>`; 401 otherwise.
  TRUTHTABLE_READ_TOKEN    When set (non-empty), GET /v1/captures and
                           GET /v1/captures/{id} require `authorization: Bearer <token>`.
  RUST_LOG                 Log filter (default: info), e.g. `debug` or `truthtable_collector=debug`.

HTTP API:
  POST /v1/captures          NDJSON capture records (schema truthtable.capture.v1), one per line.
                             2xx only once every record of the request is durably on disk.
  GET  /v1/captures?limit=N&before=CURSOR
                             Summaries, newest stored first; `next_before` pages further back.
  GET  /v1/captures/{id}     {\"capture\": <record as received>, \"audit\": <audit view>}
  GET  /healthz              Liveness.
  GET  /metrics              Prometheus text format.

Signals: SIGTERM or SIGINT finish the requests in flight, then close the store and exit 0.";

/// Command line of `truthtable-collector`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "truthtable-collector",
    version,
    about = "TruthTable audit collector: durable, deduplicating store of LLM capture records",
    long_about = "TruthTable audit collector.\n\nReceives capture records from the TruthTable Envoy \
                  filter over HTTP (NDJSON), stores them durably in SQLite (WAL, synchronous=FULL), \
                  deduplicated by id, and serves them back with an audit view: question, context, \
                  answer, tool calls and usage reassembled from the captured bodies.",
    after_help = ENV_HELP
)]
pub struct Cli {
    /// Address to listen on (use port 0 for any free port; the bound address is logged).
    #[arg(long, default_value = "127.0.0.1:8081", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// SQLite database file; created if missing (with `-wal` and `-shm` beside it).
    #[arg(long, default_value = "./truthtable.db", value_name = "PATH")]
    pub db: PathBuf,

    /// Largest ingest request body accepted, in bytes; larger requests get 413.
    #[arg(long, default_value_t = 64 * 1024 * 1024, value_name = "BYTES")]
    pub max_body_bytes: usize,
}

/// Everything the collector needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Database file.
    pub db: PathBuf,
    /// Largest ingest body.
    pub max_body_bytes: usize,
    /// Bearer token required on ingest, if any.
    pub ingest_token: Option<String>,
    /// Bearer token required on reads, if any.
    pub read_token: Option<String>,
}

impl Config {
    /// Combines the command line with the environment (`env` looks a variable up; empty counts
    /// as unset).
    pub fn new(cli: Cli, env: impl Fn(&str) -> Option<String>) -> Self {
        let token = |name| env(name).filter(|t: &String| !t.is_empty());
        Config {
            listen: cli.listen,
            db: cli.db,
            max_body_bytes: cli.max_body_bytes,
            ingest_token: token(INGEST_TOKEN_ENV),
            read_token: token(READ_TOKEN_ENV),
        }
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
        assert_eq!(cfg.db, PathBuf::from("./truthtable.db"));
        assert_eq!(cfg.max_body_bytes, 64 * 1024 * 1024);
        assert_eq!(cfg.ingest_token, None);
        assert_eq!(cfg.read_token, None);
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
    fn help_mentions_every_flag_and_variable() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for needle in [
            "--listen",
            "--db",
            "--max-body-bytes",
            INGEST_TOKEN_ENV,
            READ_TOKEN_ENV,
        ] {
            assert!(help.contains(needle), "{needle} missing from --help");
        }
    }
}
