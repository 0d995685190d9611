//! A real PostgreSQL server for tests: Debian's `postgresql` package, `initdb` into a temporary
//! directory and `pg_ctl` on a free loopback port (as the `postgres` user when the tests run as
//! root). Password authentication (scram-sha-256) for the role [`USER`]; one fresh database per
//! test from [`Postgres::database`].
//!
//! [`Postgres::shared`] is one server per test binary; [`Postgres::start`] one a test owns (to
//! stop or restart it). Each server has a guardian process that stops it and removes its
//! directory when the test process ends, however it ends.

use super::{free_port, is_root};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The role the collector connects as.
pub const USER: &str = "truthtable";
/// Its password.
pub const PASSWORD: &str = "pw-for-tests-only";

/// What differs between test servers.
#[derive(Debug, Clone, Copy, Default)]
pub struct PgOptions {
    /// Serve TLS with a certificate for `localhost` signed by a test CA ([`Postgres::ca_file`]).
    pub tls: bool,
}

/// A running PostgreSQL server.
pub struct Postgres {
    pub port: u16,
    root: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    guardian: Mutex<Option<(Child, ChildStdin)>>,
}

/// The directory of `initdb` and `pg_ctl`: `$PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!("no PostgreSQL server binaries: apt-get install -y postgresql (scripts/setup does), or set PG_BIN")
    })
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static SHARED: OnceLock<Postgres> = OnceLock::new();
static DATABASES: AtomicUsize = AtomicUsize::new(0);

impl Postgres {
    /// The server shared by the tests of this binary (started on first use).
    pub fn shared() -> &'static Postgres {
        SHARED.get_or_init(|| Postgres::start(PgOptions::default()))
    }

    /// A server of the test's own; stopped when dropped.
    pub fn start(opts: PgOptions) -> Postgres {
        let bin = bin_dir();
        let as_postgres = is_root();
        let root = std::env::temp_dir().join(format!(
            "truthtable-pg-{}-{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let pg = Postgres {
            port: free_port(),
            root,
            bin,
            as_postgres,
            guardian: Mutex::new(None),
        };
        if as_postgres {
            run(
                Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(&pg.root),
                "chown",
            );
        }
        let pwfile = pg.root.join("pw");
        std::fs::write(&pwfile, "superuser-pw\n").unwrap();
        if as_postgres {
            run(
                Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(&pwfile),
                "chown",
            );
        }
        run(
            pg.cmd("initdb")
                .arg("-D")
                .arg(pg.data())
                .args(["-U", "postgres", "-A", "scram-sha-256", "-E", "UTF8"])
                .args(["--locale=C", "-N", "--pwfile"])
                .arg(&pwfile),
            "initdb",
        );
        let mut conf = String::from(
            "listen_addresses = '127.0.0.1'\nmax_connections = 200\nfsync = on\n\
             unix_socket_directories = ''\nlog_min_messages = warning\n",
        );
        conf.push_str(&format!("port = {}\n", pg.port));
        if opts.tls {
            pg.make_certificate();
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(pg.data().join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .unwrap();
        pg.spawn_guardian();
        pg.start_again();
        pg.superuser_sql(
            "postgres",
            &format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}' CREATEDB"),
        );
        pg
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// A command for one of the server's programs, as the `postgres` user when we are root.
    fn cmd(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// A test CA ([`Postgres::ca_file`]) and a server certificate it signed for `localhost`.
    fn make_certificate(&self) {
        let data = self.data();
        let (ca_key, ca, csr) = (
            self.root.join("ca.key"),
            self.ca_file(),
            self.root.join("server.csr"),
        );
        run(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=truthtable test CA", "-keyout"])
                .arg(&ca_key)
                .arg("-out")
                .arg(&ca),
            "openssl req (CA)",
        );
        run(
            Command::new("openssl")
                .args([
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    "/CN=localhost",
                ])
                .arg("-keyout")
                .arg(data.join("server.key"))
                .arg("-out")
                .arg(&csr),
            "openssl req (server)",
        );
        let ext = self.root.join("server.ext");
        std::fs::write(
            &ext,
            "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(&ca)
                .arg("-CAkey")
                .arg(&ca_key)
                .args(["-CAcreateserial", "-extfile"])
                .arg(&ext)
                .arg("-out")
                .arg(data.join("server.crt")),
            "openssl x509 (sign)",
        );
        if self.as_postgres {
            run(
                Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(data.join("server.key"))
                    .arg(data.join("server.crt")),
                "chown",
            );
        }
        run(
            Command::new("chmod")
                .arg("600")
                .arg(data.join("server.key")),
            "chmod",
        );
    }

    /// The CA that signed the server's certificate (for `localhost`).
    pub fn ca_file(&self) -> PathBuf {
        self.root.join("ca.crt")
    }

    /// A process that stops the server and removes its directory once our end of its stdin
    /// closes: when this `Postgres` is dropped, or the test process dies.
    fn spawn_guardian(&self) {
        let stop = format!(
            "{prefix}{pg_ctl} -D {data} -m immediate -w stop >/dev/null 2>&1; rm -rf {root}",
            prefix = if self.as_postgres {
                "runuser -u postgres -- "
            } else {
                ""
            },
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.data().display(),
            root = self.root.display(),
        );
        let mut child = Command::new("sh")
            .args(["-c", &format!("read _; {stop}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        *self.guardian.lock().unwrap() = Some((child, stdin));
    }

    /// Starts the (stopped) server and waits until it takes connections.
    pub fn start_again(&self) {
        run(
            self.cmd("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.root.join("server.log"))
                .args(["-w", "-t", "60", "start"]),
            "pg_ctl start",
        );
    }

    /// Stops the server: `fast` (clients disconnected, clean shutdown) or `immediate` (as a
    /// crash: recovery from the WAL at the next start).
    pub fn stop(&self, mode: &str) {
        run(
            self.cmd("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", mode, "-w", "stop"]),
            "pg_ctl stop",
        );
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }

    /// Runs SQL as the superuser in database `db`; returns psql's unaligned output.
    pub fn superuser_sql(&self, db: &str, sql: &str) -> String {
        self.sql_as("postgres", "superuser-pw", db, sql)
    }

    /// Runs SQL as [`USER`] in database `db`; returns psql's unaligned, tuples-only output.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        self.sql_as(USER, PASSWORD, db, sql)
    }

    fn sql_as(&self, user: &str, password: &str, db: &str, sql: &str) -> String {
        let psql = if self.bin.join("psql").exists() {
            self.bin.join("psql")
        } else {
            PathBuf::from("psql")
        };
        run(
            Command::new(psql)
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", user, "-d", db, "-c", sql])
                .env("PGPASSWORD", password)
                .env("PGSSLMODE", "prefer"),
            &format!("psql {sql}"),
        )
        .trim()
        .to_owned()
    }

    /// A new, empty database owned by [`USER`]; returns its name.
    pub fn database(&self) -> String {
        let name = format!("tt_{}", DATABASES.fetch_add(1, Ordering::SeqCst));
        self.superuser_sql("postgres", &format!("CREATE DATABASE {name} OWNER {USER}"));
        name
    }

    /// `postgres://truthtable@127.0.0.1:PORT/DB?sslmode=disable`: no password in it.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{USER}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// The same URL with the password in it.
    pub fn url_with_password(&self, db: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Waits until `pred` holds for the output of `sql` (as [`USER`] in `db`).
    pub fn wait_for(&self, db: &str, sql: &str, timeout: Duration, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.sql(db, sql);
            if pred(&out) {
                return;
            }
            assert!(Instant::now() < deadline, "{sql} still gives {out:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's data directory root (for tests that need files beside it).
    pub fn dir(&self) -> &Path {
        &self.root
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some((mut child, stdin)) = self.guardian.lock().unwrap().take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}
