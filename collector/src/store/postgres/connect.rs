//! From `--db postgres://…` to a connection configuration: the URL as libpq reads it (plus
//! `sslmode=verify-ca|verify-full` and `sslrootcert`, which tokio-postgres does not know), the
//! password from the first source that has one, TLS as `sslmode` asks, and a name for the logs
//! that never shows the password. Also: which database errors are worth retrying.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{self, CryptoProvider};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::{Host, SslMode};

use crate::config::PasswordSources;
use crate::store::StoreError;

/// How long one connection attempt may take unless the URL sets `connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `sslmode`, as libpq spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, the certificate not checked (libpq's default).
    Prefer,
    /// TLS or no connection; the certificate checked against `sslrootcert` when one is given.
    Require,
    /// TLS, the certificate signed by a trusted root (any host name).
    VerifyCa,
    /// TLS, the certificate signed by a trusted root and naming the host.
    VerifyFull,
}

impl TlsMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => TlsMode::Disable,
            "allow" | "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                ))
            }
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

/// Everything needed to open connections to the database.
pub struct Target {
    /// The connection settings, password included.
    pub config: tokio_postgres::Config,
    /// `None` for `sslmode=disable`.
    pub tls: Option<rustls::ClientConfig>,
    /// `postgres://user@host:port/db?sslmode=…`, without the password.
    pub display: String,
}

/// Reads `url` and finds its password. Errors name what is wrong and never include the password.
pub fn target(url: &str, passwords: &PasswordSources) -> Result<Target, StoreError> {
    let bad = |why: String| StoreError::Config(format!("the database URL is not usable: {why}"));
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut mode = TlsMode::Prefer;
    let mut root_cert = None;
    let mut passed_on = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| bad(format!("the value of {key} is not UTF-8")))?;
        match key {
            "sslmode" => mode = TlsMode::parse(&decoded).map_err(bad)?,
            "sslrootcert" => root_cert = Some(decoded.into_owned()),
            _ => passed_on.push(pair),
        }
    }
    // tokio-postgres knows disable/prefer/require; the verifying modes are TLS-required for it.
    passed_on.push(match mode {
        TlsMode::Disable => "sslmode=disable",
        TlsMode::Prefer => "sslmode=prefer",
        _ => "sslmode=require",
    });
    let rebuilt = format!("{base}?{}", passed_on.join("&"));
    let mut config: tokio_postgres::Config = rebuilt.parse().map_err(|e| bad(chain(&e)))?;
    debug_assert!(matches!(
        config.get_ssl_mode(),
        SslMode::Disable | SslMode::Prefer | SslMode::Require
    ));
    let user = config
        .get_user()
        .ok_or_else(|| bad("it names no user (postgres://USER@HOST:PORT/DBNAME)".into()))?
        .to_owned();
    if config.get_hosts().is_empty() {
        return Err(bad(
            "it names no host (postgres://USER@HOST:PORT/DBNAME)".into()
        ));
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("truthtable-collector");
    }
    let dbname = config.get_dbname().unwrap_or(&user).to_owned();
    let display = describe(&config, &user, &dbname, mode);
    if config.get_password().is_none() {
        let (host, port) = first_host_port(&config);
        if let Some(password) = find_password(passwords, &host, port, &dbname, &user)? {
            config.password(password);
        }
    }
    let tls = match mode {
        TlsMode::Disable => None,
        _ => Some(tls_config(mode, root_cert.as_deref()).map_err(|why| {
            StoreError::Config(format!("TLS to the database ({display}): {why}"))
        })?),
    };
    Ok(Target {
        config,
        tls,
        display,
    })
}

fn first_host_port(config: &tokio_postgres::Config) -> (String, u16) {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        // libpq matches a socket directory against "localhost" in the password file.
        Some(Host::Unix(_)) | None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    (host, port)
}

fn describe(config: &tokio_postgres::Config, user: &str, dbname: &str, mode: TlsMode) -> String {
    let ports = config.get_ports();
    let mut hosts = String::new();
    for (i, host) in config.get_hosts().iter().enumerate() {
        if i > 0 {
            hosts.push(',');
        }
        match host {
            Host::Tcp(h) => hosts.push_str(h),
            Host::Unix(p) => hosts.push_str(&p.display().to_string()),
        }
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let _ = write!(hosts, ":{port}");
    }
    format!(
        "postgres://{user}@{hosts}/{dbname}?sslmode={}",
        mode.as_str()
    )
}

/// The password from `--db-password-file`, `PGPASSWORD` or a libpq password file, in that order.
fn find_password(
    sources: &PasswordSources,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Result<Option<String>, StoreError> {
    if let Some(path) = &sources.file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            StoreError::Config(format!(
                "reading the database password file {}: {e}",
                path.display()
            ))
        })?;
        let password = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        return Ok(Some(password.to_owned()));
    }
    if let Some(password) = &sources.env {
        return Ok(Some(password.clone()));
    }
    let Some(path) = &sources.passfile else {
        return Ok(None);
    };
    Ok(read_passfile(path).and_then(|text| pgpass_lookup(&text, host, port, dbname, user)))
}

/// A libpq password file's text, or `None` (with a warning, as libpq gives) when it is missing,
/// unreadable or readable by others.
fn read_passfile(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).ok()?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file {} has group or world access and is ignored; permissions should be u=rw (0600) or less",
            path.display()
        );
        return None;
    }
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) => {
            tracing::warn!("password file {} cannot be read: {e}", path.display());
            None
        }
    }
}

/// The password of the first `host:port:database:user:password` line that matches (`*` matches
/// anything; `\:` and `\\` are a literal colon and backslash).
fn pgpass_lookup(text: &str, host: &str, port: u16, dbname: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    for line in text.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = vec![String::new()];
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let (Some(next), Some(f)) = (chars.next(), fields.last_mut()) {
                        f.push(next);
                    }
                }
                ':' if fields.len() < 5 => fields.push(String::new()),
                c => {
                    if let Some(f) = fields.last_mut() {
                        f.push(c);
                    }
                }
            }
        }
        let Ok([h, p, d, u, password]) = <[String; 5]>::try_from(fields) else {
            continue;
        };
        let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        if matches(&h, host) && matches(&p, &port) && matches(&d, dbname) && matches(&u, user) {
            return Some(password);
        }
    }
    None
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(crypto::ring::default_provider())
}

fn tls_config(mode: TlsMode, root_cert: Option<&str>) -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    // As libpq: `require` with a root certificate file checks the chain like `verify-ca`.
    let mode = match (mode, root_cert) {
        (TlsMode::Require, Some(_)) => TlsMode::VerifyCa,
        (mode, _) => mode,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        TlsMode::Disable | TlsMode::Prefer | TlsMode::Require => Arc::new(EncryptOnly { provider }),
        TlsMode::VerifyCa | TlsMode::VerifyFull => {
            let roots = match root_cert {
                Some("system") => system_roots()?,
                Some(path) => file_roots(Path::new(path))?,
                None => {
                    return Err(format!(
                        "sslmode={} needs sslrootcert=PATH (a PEM file of the CA certificates) or sslrootcert=system",
                        mode.as_str()
                    ))
                }
            };
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| e.to_string())?;
            if mode == TlsMode::VerifyCa {
                Arc::new(AnyName(webpki))
            } else {
                webpki
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn file_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "sslrootcert {} holds no PEM certificate",
            PathBuf::from(path).display()
        ));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(format!(
            "sslrootcert=system found no trusted certificates on this system ({} errors)",
            found.errors.len()
        ));
    }
    Ok(roots)
}

/// `sslmode=prefer|require` as libpq means them: encrypted, but any certificate is accepted
/// (the handshake signatures are still checked).
#[derive(Debug)]
struct EncryptOnly {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A database failure, sorted by whether sending the same thing later may work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Unreachable, restarting, overloaded, read-only after a failover, a deadlock: retry.
    Transient(String),
    /// Wrong credentials, a missing database or privilege, a bad certificate, a bad query.
    Permanent(String),
}

impl Failure {
    /// What went wrong, in words.
    pub fn cause(&self) -> &str {
        match self {
            Failure::Transient(c) | Failure::Permanent(c) => c,
        }
    }
}

/// SQLSTATE codes (or classes, two characters) after which the same statement may succeed.
const TRANSIENT_SQLSTATES: &[&str] = &[
    "08",    // connection exception
    "53",    // insufficient resources: too many connections, disk full, out of memory
    "57P01", // admin_shutdown
    "57P02", // crash_shutdown
    "57P03", // cannot_connect_now (starting up, shutting down, in recovery)
    "57014", // query_canceled (statement_timeout)
    "40001", // serialization_failure
    "40P01", // deadlock_detected
    "55P03", // lock_not_available
    "25006", // read_only_sql_transaction: connected to a standby after a failover
    "58",    // system error (I/O)
];

/// An error and its sources, joined by `: `.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

/// Sorts a tokio-postgres error and names its cause.
pub fn classify(e: &tokio_postgres::Error) -> Failure {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let cause = format!("{} (SQLSTATE {code})", db.message());
        return if TRANSIENT_SQLSTATES.iter().any(|t| code.starts_with(t)) {
            Failure::Transient(cause)
        } else {
            Failure::Permanent(cause)
        };
    }
    let cause = chain(e);
    let source = std::error::Error::source(e);
    let io_kind = source
        .and_then(|s| s.downcast_ref::<io::Error>())
        .map(io::Error::kind);
    let text = cause.to_ascii_lowercase();
    let permanent = text.starts_with("invalid configuration")
        || text.starts_with("invalid connection string")
        || text.starts_with("authentication error")
        || text.contains("name or service not known")
        || text.contains("no address associated with hostname")
        || (text.starts_with("error performing tls handshake")
            && !matches!(
                io_kind,
                Some(io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof)
            ));
    if permanent {
        Failure::Permanent(cause)
    } else {
        Failure::Transient(cause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> PasswordSources {
        PasswordSources::default()
    }

    #[test]
    fn the_url_is_read_as_libpq_reads_it_and_shown_without_its_password() {
        let t = target(
            "postgres://tt:s3cret@db.example.com:6432/captures?connect_timeout=3&sslmode=disable",
            &sources(),
        )
        .unwrap();
        assert_eq!(t.config.get_user(), Some("tt"));
        assert_eq!(t.config.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(t.config.get_dbname(), Some("captures"));
        assert_eq!(
            t.config.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
        assert!(t.tls.is_none());
        assert_eq!(
            t.display,
            "postgres://tt@db.example.com:6432/captures?sslmode=disable"
        );
        assert!(!t.display.contains("s3cret"));
    }

    #[test]
    fn defaults_prefer_tls_and_bound_the_connection_time() {
        let t = target("postgresql://tt@db/captures", &sources()).unwrap();
        assert!(t.tls.is_some());
        assert_eq!(t.config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(t.display, "postgres://tt@db:5432/captures?sslmode=prefer");
        assert_eq!(
            t.config.get_application_name(),
            Some("truthtable-collector")
        );
    }

    #[test]
    fn bad_urls_are_refused_naming_the_problem_and_not_the_password() {
        for (url, needle) in [
            ("postgres://db/x", "no user"),
            ("postgres://tt:pw@db/x?sslmode=maybe", "sslmode=maybe"),
            ("postgres://tt:pw@db/x?colour=red", "unknown option"),
            ("postgres://tt:pw@db:port/x", "invalid"),
            (
                "postgres://tt:pw@db/x?sslmode=verify-full",
                "needs sslrootcert",
            ),
            (
                "postgres://tt:pw@db/x?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
                "/nonexistent/ca.pem",
            ),
        ] {
            let err = match target(url, &sources()) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{url} was accepted"),
            };
            assert!(err.contains(needle), "{url}: {err}");
            assert!(!err.contains(":pw@"), "{url}: {err}");
        }
    }

    #[test]
    fn the_password_comes_from_the_first_source_that_has_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "from-file\n").unwrap();
        let all = PasswordSources {
            file: Some(file.clone()),
            env: Some("from-env".into()),
            passfile: None,
        };
        let pw = |url: &str, s: &PasswordSources| {
            target(url, s)
                .unwrap()
                .config
                .get_password()
                .map(|p| String::from_utf8(p.to_vec()).unwrap())
        };
        assert_eq!(
            pw("postgres://tt:in-url@db/x", &all).as_deref(),
            Some("in-url")
        );
        assert_eq!(pw("postgres://tt@db/x", &all).as_deref(), Some("from-file"));
        let env_only = PasswordSources {
            file: None,
            ..all.clone()
        };
        assert_eq!(
            pw("postgres://tt@db/x", &env_only).as_deref(),
            Some("from-env")
        );
        assert_eq!(pw("postgres://tt@db/x", &sources()), None);
        let missing = PasswordSources {
            file: Some(dir.path().join("nope")),
            ..sources()
        };
        let err = target("postgres://tt@db/x", &missing)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("password file") && err.contains("nope"),
            "{err}"
        );
    }

    #[test]
    fn a_libpq_password_file_is_matched_line_by_line_and_must_be_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let pgpass = dir.path().join("pgpass");
        std::fs::write(
            &pgpass,
            "# comment\nother:5432:*:tt:wrong\ndb:5432:captures:tt:pa\\:ss\\\\word\n*:*:*:*:fallback\n",
        )
        .unwrap();
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = PasswordSources {
            passfile: Some(pgpass.clone()),
            ..sources()
        };
        let pw = |url: &str| {
            target(url, &s)
                .unwrap()
                .config
                .get_password()
                .map(|p| String::from_utf8(p.to_vec()).unwrap())
        };
        assert_eq!(
            pw("postgres://tt@db/captures").as_deref(),
            Some("pa:ss\\word")
        );
        assert_eq!(
            pw("postgres://tt@db:6432/captures").as_deref(),
            Some("fallback")
        );
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            pw("postgres://tt@db/captures"),
            None,
            "a readable file is ignored"
        );
    }

    #[test]
    fn tls_modes_follow_libpq() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let url = format!(
            "postgres://tt@db/x?sslmode=verify-full&sslrootcert={}",
            empty.display()
        );
        let err = target(&url, &sources()).err().unwrap().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        for mode in ["prefer", "require", "allow"] {
            let t = target(&format!("postgres://tt@db/x?sslmode={mode}"), &sources()).unwrap();
            assert!(t.tls.is_some(), "{mode}");
        }
    }
}
