//! The verifiable log end to end, on the real binary over SQLite: proofs that a third party
//! checks (with its own RFC 6962 code and ring's Ed25519, not the collector's), `verify` on a
//! clean store and on each kind of tampering, restarts, keys. Verdicts are entries too, on
//! SQLite and a real PostgreSQL.
// This whole crate is tests; its helpers may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{ndjson, post, Process};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

type H = [u8; 32];

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn leaf(entry: &[u8]) -> H {
    Sha256::new()
        .chain_update([0])
        .chain_update(entry)
        .finalize()
        .into()
}

fn node(l: &H, r: &H) -> H {
    Sha256::new()
        .chain_update([1])
        .chain_update(l)
        .chain_update(r)
        .finalize()
        .into()
}

/// RFC 9162 section 2.1.3.2: the root an inclusion proof leads to.
fn inclusion_root(index: u64, size: u64, leaf: H, proof: &[H]) -> Option<H> {
    if index >= size {
        return None;
    }
    let (mut f_n, mut s_n, mut r) = (index, size - 1, leaf);
    for p in proof {
        if s_n == 0 {
            return None;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    (s_n == 0).then_some(r)
}

/// RFC 9162 section 2.1.4.2: whether a consistency proof joins the two roots.
fn consistent(old: u64, new: u64, old_root: H, new_root: H, proof: &[H]) -> bool {
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 || old > new {
        return false;
    }
    let mut path: Vec<H> = proof.to_vec();
    if old.is_power_of_two() {
        path.insert(0, old_root);
    }
    let (mut f_n, mut s_n) = (old - 1, new - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f_r, mut s_r) = (*first, *first);
    for c in rest {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node(c, &f_r);
            s_r = node(c, &s_r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            s_r = node(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    f_r == old_root && s_r == new_root && s_n == 0
}

/// Checks a signed checkpoint with ring against a verifier key and returns (size, root).
fn open_checkpoint(note: &str, vkey: &str) -> (u64, H) {
    let mut parts = vkey.trim().splitn(3, '+');
    let (name, hash, key) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        b64(parts.next().unwrap()),
    );
    assert_eq!(key[0], 1, "an Ed25519 key");
    let (text, sigs) = note.split_once("\n\n").unwrap();
    let text = format!("{text}\n");
    let sig_line = sigs
        .lines()
        .find_map(|l| l.strip_prefix(&format!("\u{2014} {name} ")))
        .expect("a signature by the log's key");
    let blob = b64(sig_line);
    assert_eq!(hex(&blob[..4]), hash);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key[1..])
        .verify(text.as_bytes(), &blob[4..])
        .expect("the checkpoint's signature verifies");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], name, "the origin is the key's name");
    (lines[1].parse().unwrap(), b64(lines[2]).try_into().unwrap())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

async fn text(client: &reqwest::Client, url: String) -> (u16, String) {
    let r = client.get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Waits until the latest checkpoint covers `size` records; returns it.
async fn checkpoint_of(client: &reqwest::Client, base: &str, size: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, note) = text(client, format!("{base}/v1/log/checkpoint")).await;
        if status == 200 && note.lines().nth(1).and_then(|l| l.parse::<u64>().ok()) >= Some(size) {
            return note;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint of {size}: {status} {note}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks the tlog-proof of `id` the collector serves against the entry it serves and the key.
async fn check_proof(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    vkey: &str,
    query: &str,
) -> (u64, H) {
    let at = format!("{base}/v1/captures/{id}");
    check_proof_at(client, &at, vkey, query).await
}

/// Checks the tlog-proof at `{at}/proof` against the entry at `{at}/entry` and the key.
async fn check_proof_at(client: &reqwest::Client, at: &str, vkey: &str, query: &str) -> (u64, H) {
    let (status, entry) = text(client, format!("{at}/entry")).await;
    assert_eq!(status, 200);
    let (status, proof) = text(client, format!("{at}/proof{query}")).await;
    assert_eq!(status, 200, "{proof}");
    let (head, note) = proof.split_once("\n\n").unwrap();
    let mut lines = head.lines();
    assert_eq!(lines.next(), Some("c2sp.org/tlog-proof@v1"));
    let index: u64 = lines
        .next()
        .unwrap()
        .strip_prefix("index ")
        .unwrap()
        .parse()
        .unwrap();
    let path: Vec<H> = lines.map(|l| b64(l).try_into().unwrap()).collect();
    let (size, root) = open_checkpoint(note, vkey);
    assert_eq!(
        inclusion_root(index, size, leaf(entry.as_bytes()), &path),
        Some(root),
        "{at}'s proof leads to the checkpoint's root"
    );
    (size, root)
}

fn verify(db: &Path, key: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_truthtable-collector"));
    cmd.args(["verify", "--db", &db.display().to_string()]);
    if let Some(k) = key {
        cmd.args(["--key", k]);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success(), text)
}

#[tokio::test]
async fn proofs_from_before_and_after_a_restart_verify_and_their_checkpoints_are_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    let client = reqwest::Client::new();
    let mut proc = Process::start(&db);
    let base = proc.base();
    assert!(
        proc.log_count("created a signing key for the verifiable log") == 1,
        "the first start makes a key beside the database and says so"
    );
    let (status, vkey) = text(&client, format!("{base}/v1/log/key")).await;
    assert_eq!(status, 200);
    let first: Vec<String> = (0..5).map(|i| format!("a-{i}")).collect();
    assert_eq!(
        post(&client, &base, ndjson(&first), None).await.status(),
        200
    );
    checkpoint_of(&client, &base, 5).await;
    let (old_size, old_root) = check_proof(&client, &base, "a-1", &vkey, "").await;
    assert_eq!(old_size, 5);
    proc.sigterm();
    assert!(proc.wait(20).success());

    let proc = Process::start(&db);
    let base = proc.base();
    assert_eq!(
        proc.log_count("created a signing key"),
        0,
        "the key is kept"
    );
    assert_eq!(text(&client, format!("{base}/v1/log/key")).await.1, vkey);
    let second: Vec<String> = (0..7).map(|i| format!("b-{i}")).collect();
    assert_eq!(
        post(&client, &base, ndjson(&second), None).await.status(),
        200
    );
    checkpoint_of(&client, &base, 12).await;
    let (new_size, new_root) = check_proof(&client, &base, "a-1", &vkey, "").await;
    assert_eq!(new_size, 12);
    check_proof(&client, &base, "b-6", &vkey, "").await;
    // The earlier checkpoint is still served, and proves against it still verify.
    assert_eq!(
        check_proof(&client, &base, "a-4", &vkey, "?size=5").await,
        (old_size, old_root)
    );
    let (status, consistency) =
        text(&client, format!("{base}/v1/log/consistency?old=5&new=12")).await;
    assert_eq!(status, 200);
    let proof: Vec<H> = consistency
        .lines()
        .map(|l| b64(l).try_into().unwrap())
        .collect();
    assert!(consistent(5, 12, old_root, new_root, &proof));
    assert!(!consistent(5, 12, leaf(b"other"), new_root, &proof));
    // Unknown ids and sizes beyond the log answer clearly.
    assert_eq!(
        text(&client, format!("{base}/v1/captures/nope/proof"))
            .await
            .0,
        404
    );
    assert_eq!(
        text(&client, format!("{base}/v1/captures/nope/entry"))
            .await
            .0,
        404
    );
    assert_eq!(
        text(&client, format!("{base}/v1/log/consistency?old=5&new=99"))
            .await
            .0,
        400
    );
    assert_eq!(
        text(&client, format!("{base}/v1/captures/b-6/proof?size=5"))
            .await
            .0,
        400
    );
    assert_eq!(
        common::metric(&client, &base, "truthtable_log_size").await,
        12
    );
    drop(proc);
}

/// Overwrites the tree's stored hash at `idx` in a SQLite store (64 to a row of
/// `log_hash_tiles`), as someone editing the file would.
fn set_stored_hash(conn: &rusqlite::Connection, idx: usize, hash: &[u8; 32]) {
    let tile = (idx / 64) as i64;
    let mut bytes: Vec<u8> = conn
        .query_row(
            "SELECT hashes FROM log_hash_tiles WHERE tile = ?1",
            [tile],
            |r| r.get(0),
        )
        .unwrap();
    let at = idx % 64 * 32;
    bytes[at..at + 32].copy_from_slice(hash);
    conn.execute(
        "UPDATE log_hash_tiles SET hashes = ?1 WHERE tile = ?2",
        rusqlite::params![bytes, tile],
    )
    .unwrap();
}

/// Puts a SQLite store back the way collectors before migration 10 kept it: the stored hashes a
/// row each in `log_hashes`, no leaf hashes beside the captures.
fn untile_hashes(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch("CREATE TABLE log_hashes (idx INTEGER PRIMARY KEY, hash BLOB NOT NULL);")
        .unwrap();
    let rows: Vec<(i64, Vec<u8>)> = conn
        .prepare("SELECT tile, hashes FROM log_hash_tiles ORDER BY tile")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (tile, bytes) in rows {
        for (k, hash) in bytes.chunks(32).enumerate() {
            conn.execute(
                "INSERT INTO log_hashes (idx, hash) VALUES (?1, ?2)",
                rusqlite::params![tile * 64 + k as i64, hash],
            )
            .unwrap();
        }
    }
    conn.execute_batch(
        "DROP TABLE log_hash_tiles; ALTER TABLE captures DROP COLUMN leaf; PRAGMA user_version = 9;",
    )
    .unwrap();
}

/// Posts 100 records in uneven batches (so sequencing steps end inside rows of 64 stored hashes),
/// stops the collector started with `args`, lets `rewind` put its store back as collectors kept
/// it before the hashes were tiled, starts it again, and checks that proofs across several rows
/// verify against the old checkpoint and a new one after 50 more records, that the two are
/// consistent, that `tiles` (`"<rows> <bytes>"` of `log_hash_tiles`) says 296 hashes in 5 rows,
/// and that `verify` of `db` verifies all 150.
async fn a_log_of_rows_migrates_and_goes_on(
    args: &[&str],
    rewind: impl FnOnce(),
    tiles: impl FnOnce() -> String,
    db: &Path,
) {
    let client = reqwest::Client::new();
    let mut proc = Process::start_with(args, &[]);
    let base = proc.base();
    let vkey = text(&client, format!("{base}/v1/log/key")).await.1;
    let ids: Vec<String> = (0..150).map(|i| format!("r-{i}")).collect();
    for chunk in ids[..100].chunks(37) {
        assert_eq!(
            post(&client, &base, ndjson(chunk), None).await.status(),
            200
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let old_note = checkpoint_of(&client, &base, 100).await;
    let (old_size, old_root) = check_proof(&client, &base, "r-63", &vkey, "").await;
    assert_eq!(old_size, 100);
    proc.sigterm();
    assert!(proc.wait(20).success());
    rewind();

    let proc = Process::start_with(args, &[]);
    let base = proc.base();
    for id in ["r-0", "r-63", "r-64", "r-99"] {
        assert_eq!(
            check_proof(&client, &base, id, &vkey, "?size=100").await,
            (old_size, old_root),
            "{id}"
        );
    }
    for chunk in ids[100..].chunks(17) {
        assert_eq!(
            post(&client, &base, ndjson(chunk), None).await.status(),
            200
        );
    }
    checkpoint_of(&client, &base, 150).await;
    assert_ne!(
        text(&client, format!("{base}/v1/log/checkpoint")).await.1,
        old_note
    );
    let (new_size, new_root) = check_proof(&client, &base, "r-149", &vkey, "").await;
    assert_eq!(new_size, 150);
    for id in ["r-0", "r-100", "r-127", "r-128"] {
        assert_eq!(
            check_proof(&client, &base, id, &vkey, "").await,
            (new_size, new_root),
            "{id}"
        );
    }
    let (status, consistency) = text(
        &client,
        format!("{base}/v1/log/consistency?old=100&new=150"),
    )
    .await;
    assert_eq!(status, 200);
    let proof: Vec<H> = consistency
        .lines()
        .map(|l| b64(l).try_into().unwrap())
        .collect();
    assert!(consistent(100, 150, old_root, new_root, &proof));
    drop(proc);
    assert_eq!(
        tiles(),
        format!("5 {}", 296 * 32),
        "the 296 stored hashes of 150 records, 64 to a row"
    );
    let (ok, out) = verify(db, Some(vkey.trim()));
    assert!(ok, "{out}");
    assert!(out.ends_with("150 of 150 records verified\n"), "{out}");
}

#[tokio::test]
async fn a_store_whose_hashes_were_a_row_each_migrates_and_its_log_goes_on_across_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rows.db");
    let db_arg = db.display().to_string();
    let rewind = || {
        untile_hashes(&db);
        let conn = rusqlite::Connection::open(&db).unwrap();
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM log_hashes", [], |r| r.get(0))
            .unwrap();
        // Go's layout stores 2n - popcount(n) hashes for n records: 197 for 100.
        assert_eq!(rows, 197, "a tree of 100 records stores 197 hashes");
    };
    let tiles = || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row(
            "SELECT count(*) || ' ' || sum(length(hashes)) FROM log_hash_tiles",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    a_log_of_rows_migrates_and_goes_on(&["--db", &db_arg], rewind, tiles, &db).await;
}

/// Copies the clean store, changes the copy with `sql`, and returns what `verify` says of it.
fn tampered(clean: &Path, name: &str, sql: &str) -> (bool, String) {
    let copy = clean.with_file_name(format!("{name}.db"));
    std::fs::copy(clean, &copy).unwrap();
    let conn = rusqlite::Connection::open(&copy).unwrap();
    conn.execute_batch(sql).unwrap();
    drop(conn);
    verify(&copy, None)
}

#[tokio::test]
async fn verify_passes_a_clean_store_and_names_each_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("clean.db");
    let client = reqwest::Client::new();
    let mut proc = Process::start(&db);
    let ids: Vec<String> = (0..20).map(|i| format!("id-{i}")).collect();
    assert_eq!(
        post(&client, &proc.base(), ndjson(&ids), None)
            .await
            .status(),
        200
    );
    checkpoint_of(&client, &proc.base(), 20).await;
    let vkey = text(&client, format!("{}/v1/log/key", proc.base())).await.1;
    proc.sigterm();
    assert!(proc.wait(20).success());

    let (ok, out) = verify(&db, Some(vkey.trim()));
    assert!(ok, "{out}");
    assert_eq!(
        out.lines().last(),
        Some("20 of 20 records verified"),
        "{out}"
    );
    let (ok, out) = verify(&db, None);
    assert!(ok, "{out}");
    assert!(out.contains("the log's own key"), "{out}");
    let (ok, out) = verify(
        &db,
        Some("other+12345678+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"),
    );
    assert!(!ok, "another key's verifier refuses the checkpoints: {out}");

    // Evidence for an auditor: chosen captures, checked with no database.
    let bundle = dir.path().join("evidence");
    let out = Command::new(env!("CARGO_BIN_EXE_truthtable-collector"))
        .args([
            "export",
            "--db",
            &db.display().to_string(),
            "--id",
            "id-3",
            "--id",
            "id-7",
            "--out",
        ])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(bundle.join("verifier-key"))
            .unwrap()
            .trim(),
        vkey.trim()
    );
    let check_bundle = || {
        let out = Command::new(env!("CARGO_BIN_EXE_truthtable-collector"))
            .args(["verify", "--bundle"])
            .arg(&bundle)
            .args(["--key", vkey.trim()])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, report) = check_bundle();
    assert!(ok, "{report}");
    assert!(report.ends_with("2 of 2 records verified\n"), "{report}");
    let entry = bundle.join("id-7.entry");
    let altered = std::fs::read_to_string(&entry)
        .unwrap()
        .replace("answer for id-7", "answer for id-8");
    std::fs::write(&entry, altered).unwrap();
    let (ok, report) = check_bundle();
    assert!(!ok, "{report}");
    assert!(
        report.contains("FAIL id-7: the entry at index 7 is not in the tree"),
        "{report}"
    );

    let cases = [
        (
            "modified",
            "UPDATE captures SET record = replace(record, 'answer for id-5', 'answer for id-6') WHERE id = 'id-5'",
            "capture id-5 (index 5): modified",
        ),
        (
            "deleted",
            "DELETE FROM captures WHERE id = 'id-7'",
            "capture id-7 (index 7): deleted",
        ),
        (
            "inserted",
            "INSERT INTO captures (seq, id, started_at, method, path, status, outcome, duration_ms, record)
             SELECT 0, 'forged', started_at, method, path, status, outcome, duration_ms,
                    replace(record, 'id-3', 'forged') FROM captures WHERE id = 'id-3'",
            "capture forged: inserted",
        ),
        (
            "swapped",
            "UPDATE captures SET record = CASE id
                 WHEN 'id-2' THEN (SELECT record FROM captures WHERE id = 'id-3')
                 ELSE (SELECT record FROM captures WHERE id = 'id-2') END
             WHERE id IN ('id-2', 'id-3')",
            "capture id-2 (index 2): moved — the store holds under it the record logged at index 3 (capture id-3)",
        ),
        (
            "cut",
            "DELETE FROM captures WHERE seq > 17; DELETE FROM log_entries WHERE idx >= 17",
            "cut-off tail: a checkpoint of size 20 was signed, and the log holds 17 entries — entries 17 to 19 are gone",
        ),
    ];
    for (name, sql, finding) in cases {
        let (ok, out) = tampered(&db, name, sql);
        assert!(!ok, "{name}: verify passed a tampered store:\n{out}");
        assert!(out.contains(finding), "{name}: no {finding:?} in\n{out}");
        assert!(
            out.lines()
                .last()
                .is_some_and(|l| l.ends_with("records verified")),
            "{name}: {out}"
        );
    }

    // A record changed together with its stored leaf hash: the stored hash above the two leaves
    // was computed from the record the log appended, so the pair is named.
    let copy = dir.path().join("rehashed.db");
    std::fs::copy(&db, &copy).unwrap();
    let conn = rusqlite::Connection::open(&copy).unwrap();
    let record: String = conn
        .query_row("SELECT record FROM captures WHERE id = 'id-5'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let forged = record.replace("answer for id-5", "answer for id-6");
    conn.execute(
        "UPDATE captures SET record = ?1 WHERE id = 'id-5'",
        [&forged],
    )
    .unwrap();
    // Record 5's leaf hash is stored at index 8 in Go's layout (0, 1; 2; 3, 4; 5; 6; 7, 8).
    set_stored_hash(&conn, 8, &leaf(forged.as_bytes()));
    drop(conn);
    let (ok, out) = verify(&copy, None);
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAIL captures id-4 (index 4), id-5 (index 5): one or more modified together with their stored leaf hashes"),
        "{out}"
    );
    assert!(out.ends_with("18 of 20 records verified\n"), "{out}");
}

/// Runs `export` on the store `db` with `args`, writing `out`; whether it succeeded, and its output.
fn export(db: &Path, args: &[&str], out: &Path) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_truthtable-collector"))
        .args(["export", "--db", &db.display().to_string()])
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Checks a bundle with `verify --bundle`; whether it verified, and the report.
fn verify_bundle(bundle: &Path, vkey: &str) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_truthtable-collector"))
        .args(["verify", "--bundle"])
        .arg(bundle)
        .args(["--key", vkey])
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

/// The files of a .tar.gz archive, by name, in order.
fn untar_gz(path: &Path) -> Vec<(String, Vec<u8>)> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut files = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut body = Vec::new();
        e.read_to_end(&mut body).unwrap();
        files.push((name, body));
    }
    files
}

#[tokio::test]
async fn export_by_the_lists_filters_picks_exactly_the_matching_captures_and_an_archive_verifies_offline(
) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let client = reqwest::Client::new();
    let mut proc = Process::start(&db);
    // Twelve captures: f-2, f-5 and f-9 answered 503, the others 200.
    let failed = ["f-2", "f-5", "f-9"];
    let body: String = (0..12)
        .map(|i| {
            let id = format!("f-{i}");
            let mut r = common::record(&id);
            if failed.contains(&id.as_str()) {
                r["response"]["status"] = serde_json::json!(503);
            }
            format!("{r}\n")
        })
        .collect();
    assert_eq!(post(&client, &proc.base(), body, None).await.status(), 200);
    checkpoint_of(&client, &proc.base(), 12).await;
    let vkey = text(&client, format!("{}/v1/log/key", proc.base())).await.1;
    let vkey = vkey.trim().to_owned();
    // The list's filters need the digests, derived behind ingest: wait until the list has them.
    let deadline = Instant::now() + Duration::from_secs(20);
    let listed: Vec<String> = loop {
        let (_, page) = text(&client, format!("{}/v1/captures?status=5xx", proc.base())).await;
        let page: serde_json::Value = serde_json::from_str(&page).unwrap();
        let ids: Vec<String> = page["captures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect();
        if ids.len() == 3 && page["indexing"] == false {
            break ids;
        }
        assert!(Instant::now() < deadline, "the list never showed 3: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    proc.sigterm();
    assert!(proc.wait(20).success());

    // By a filter (and an --id it also matches): exactly what the list shows for it, each once.
    let bundle = dir.path().join("failed");
    let (ok, out) = export(&db, &["--status", "5xx", "--id", "f-5"], &bundle);
    assert!(ok, "{out}");
    let mut exported: Vec<String> = std::fs::read_dir(&bundle)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".entry").map(str::to_owned)
        })
        .collect();
    exported.sort();
    let mut want = listed.clone();
    want.sort();
    assert_eq!(exported, want, "{out}");
    assert_eq!(want, failed);
    let (ok, report) = verify_bundle(&bundle, &vkey);
    assert!(
        ok && report.ends_with("3 of 3 records verified\n"),
        "{report}"
    );
    // Filters combine as in the list; matching nothing is an error, not an empty bundle.
    let none = dir.path().join("none");
    let (ok, out) = export(&db, &["--status", "200", "--until", "2026-11-25"], &none);
    assert!(
        !ok && out.contains("no capture matches the filter"),
        "{out}"
    );
    assert!(!none.exists());
    // A bad filter is refused with the list's own message.
    let (ok, out) = export(&db, &["--status", "6xx"], &dir.path().join("bad"));
    assert!(!ok && out.contains("status: expected"), "{out}");

    // The archive forms: one .tar.gz or .tar, checked as a directory is, with no database.
    let archive = dir.path().join("evidence.tar.gz");
    let (ok, out) = export(&db, &["--outcome", "complete"], &archive);
    assert!(ok, "{out}");
    let plain = dir.path().join("one.tar");
    let (ok, out) = export(&db, &["--id", "f-1"], &plain);
    assert!(ok, "{out}");
    let moved = dir.path().join("elsewhere.tar.gz");
    std::fs::rename(&archive, &moved).unwrap();
    std::fs::remove_file(&db).unwrap();
    let (ok, report) = verify_bundle(&moved, &vkey);
    assert!(ok, "{report}");
    assert!(report.ends_with("12 of 12 records verified\n"), "{report}");
    let (ok, report) = verify_bundle(&plain, &vkey);
    assert!(
        ok && report.ends_with("1 of 1 records verified\n"),
        "{report}"
    );

    // One entry changed inside the archive: caught and named.
    let altered = dir.path().join("altered.tar.gz");
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        std::fs::File::create(&altered).unwrap(),
        flate2::Compression::default(),
    ));
    for (name, body) in untar_gz(&moved) {
        let body = if name == "f-4.entry" {
            String::from_utf8(body)
                .unwrap()
                .replace("answer for f-4", "answer for f-0")
                .into_bytes()
        } else {
            body
        };
        let mut header = tar::Header::new_ustar();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, &name, body.as_slice())
            .unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap();
    let (ok, report) = verify_bundle(&altered, &vkey);
    assert!(!ok, "{report}");
    assert!(
        report.contains("FAIL f-4: the entry at index 4 is not in the tree"),
        "{report}"
    );
    assert!(report.ends_with("11 of 12 records verified\n"), "{report}");
}

#[test]
fn keygen_writes_a_key_the_collector_signs_with_and_a_bad_key_file_refuses_start() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("log.key");
    let out = Command::new(env!("CARGO_BIN_EXE_truthtable-collector"))
        .args(["keygen", "--name", "audit.example.com/log", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let vkey = String::from_utf8(out.stdout).unwrap();
    assert!(vkey.starts_with("audit.example.com/log+"), "{vkey}");
    let private = std::fs::read_to_string(&key).unwrap();
    assert!(private.starts_with("PRIVATE+KEY+audit.example.com/log+"));
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = Command::new(env!("CARGO_BIN_EXE_truthtable-collector"))
        .args(["keygen", "--name", "x", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(!again.status.success(), "never over an existing key");

    let db = dir.path().join("k.db");
    let proc = Process::start_with(
        &[
            "--db",
            &db.display().to_string(),
            "--log-key",
            &key.display().to_string(),
        ],
        &[],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let served = rt.block_on(async {
        text(
            &reqwest::Client::new(),
            format!("{}/v1/log/key", proc.base()),
        )
        .await
    });
    assert_eq!(served, (200, vkey.clone()));
    drop(proc);
    assert!(
        !dir.path().join("k.db.log-key").exists(),
        "no key made beside the database"
    );

    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "PRIVATE+KEY+oops\n").unwrap();
    for (path, says) in [
        (dir.path().join("missing.key"), "reading the log key"),
        (bad.clone(), "not a note private key"),
    ] {
        let out = Process::command(
            &[
                "--db",
                &db.display().to_string(),
                "--log-key",
                &path.display().to_string(),
            ],
            &[],
        )
        .output()
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with {}", path.display());
        assert!(
            err.contains(&path.display().to_string()),
            "names the file: {err}"
        );
        assert!(err.contains(says), "{err}");
    }
}

#[tokio::test]
async fn a_log_that_fails_its_own_check_says_so_keeps_ingesting_and_signs_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("check.db");
    let client = reqwest::Client::new();
    let mut proc = Process::start(&db);
    let ids: Vec<String> = (0..5).map(|i| format!("c-{i}")).collect();
    assert_eq!(
        post(&client, &proc.base(), ndjson(&ids), None)
            .await
            .status(),
        200
    );
    let signed = checkpoint_of(&client, &proc.base(), 5).await;
    proc.sigterm();
    assert!(proc.wait(20).success());
    // Someone rewrites a stored hash of the tree behind the collector's back: the root of the
    // first four records (stored index 6 in Go's layout: 0; 1, 2; 3; 4, 5, 6; 7).
    let conn = rusqlite::Connection::open(&db).unwrap();
    set_stored_hash(&conn, 6, &[0; 32]);
    drop(conn);

    let proc = Process::start(&db);
    let base = proc.base();
    let more: Vec<String> = (0..3).map(|i| format!("d-{i}")).collect();
    assert_eq!(
        post(&client, &base, ndjson(&more), None).await.status(),
        200,
        "ingest goes on"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc.log_count("THE VERIFIABLE LOG FAILS ITS OWN CHECK") == 0 {
        assert!(Instant::now() < deadline, "not said: {:?}", proc.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        common::metric(&client, &base, "truthtable_log_failing").await,
        1
    );
    assert!(
        common::metric(&client, &base, "truthtable_log_verification_failures_total").await >= 1
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        common::metric(&client, &base, "truthtable_log_size").await,
        8,
        "still sequenced"
    );
    assert_eq!(
        text(&client, format!("{base}/v1/log/checkpoint")).await.1,
        signed,
        "no checkpoint signed over a tree that disagrees with the last one"
    );
    assert_eq!(
        proc.log_count("FAILS ITS OWN CHECK"),
        1,
        "said once, not every poll"
    );
}

#[tokio::test]
async fn the_monitor_trusts_a_growing_log_and_catches_one_rebuilt_and_re_signed_with_the_same_key()
{
    let dir = tempfile::tempdir().unwrap();
    let (key, vkey) = common::keygen(dir.path(), "monitor.test/log");
    let state = dir.path().join("trusted-checkpoint");
    let monitor = |base: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_truthtable-collector"))
            .args(["monitor", "--url", base, "--key", &vkey, "--state"])
            .arg(&state)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let client = reqwest::Client::new();
    let start = |db: &str| {
        Process::start_with(
            &[
                "--db",
                &dir.path().join(db).display().to_string(),
                "--log-key",
                &key,
            ],
            &[],
        )
    };
    let honest = start("honest.db");
    let base = honest.base();
    let first: Vec<String> = (0..5).map(|i| format!("h-{i}")).collect();
    assert_eq!(
        post(&client, &base, ndjson(&first), None).await.status(),
        200
    );
    checkpoint_of(&client, &base, 5).await;
    let (ok, said) = monitor(&base);
    assert!(
        ok && said.contains("size 5 is signed; trusting it"),
        "{said}"
    );
    let more: Vec<String> = (5..8).map(|i| format!("h-{i}")).collect();
    assert_eq!(
        post(&client, &base, ndjson(&more), None).await.status(),
        200
    );
    checkpoint_of(&client, &base, 8).await;
    let (ok, said) = monitor(&base);
    assert!(
        ok && said
            .contains("size 8 is signed and consistent with the trusted checkpoint of size 5"),
        "{said}"
    );
    drop(honest);
    let trusted = std::fs::read_to_string(&state).unwrap();

    // Someone with the key rebuilds the log with other records and re-signs it.
    let forged = start("forged.db");
    let base = forged.base();
    let other: Vec<String> = (0..9).map(|i| format!("f-{i}")).collect();
    assert_eq!(
        post(&client, &base, ndjson(&other), None).await.status(),
        200
    );
    checkpoint_of(&client, &base, 9).await;
    let (ok, said) = monitor(&base);
    assert!(!ok, "{said}");
    assert!(
        said.contains(
            "FAIL the checkpoint of size 9 is not consistent with the trusted checkpoint of size 8"
        ),
        "{said}"
    );
    assert_eq!(
        std::fs::read_to_string(&state).unwrap(),
        trusted,
        "still trusts the honest one"
    );
}

#[tokio::test]
async fn proofs_and_checkpoints_are_served_while_ingest_waits_for_the_write_lock() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("busy.db");
    let client = reqwest::Client::new();
    let proc = Process::start(&db);
    let base = proc.base();
    let (_, vkey) = text(&client, format!("{base}/v1/log/key")).await;
    let ids: Vec<String> = (0..5).map(|i| format!("b-{i}")).collect();
    assert_eq!(post(&client, &base, ndjson(&ids), None).await.status(), 200);
    checkpoint_of(&client, &base, 5).await;
    // Another process holds SQLite's write lock: the collector's next batch waits for it (its
    // busy timeout), and with it the collector's one writing connection.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    let waiting = tokio::spawn({
        let (client, base) = (client.clone(), base.clone());
        async move {
            let more: Vec<String> = (0..3).map(|i| format!("w-{i}")).collect();
            post(&client, &base, ndjson(&more), None).await.status()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the batch did not wait for the lock"
    );
    // The log's reads go beside the writer (WAL), not behind it.
    let began = Instant::now();
    let (size, _) = tokio::time::timeout(
        Duration::from_secs(2),
        check_proof(&client, &base, "b-3", &vkey, ""),
    )
    .await
    .expect("a proof waited behind the writer");
    assert_eq!(size, 5);
    let (status, _) = tokio::time::timeout(
        Duration::from_secs(2),
        text(&client, format!("{base}/v1/log/checkpoint")),
    )
    .await
    .expect("the checkpoint waited behind the writer");
    assert_eq!(status, 200);
    assert!(began.elapsed() < Duration::from_secs(2));
    conn.execute_batch("COMMIT").unwrap();
    assert_eq!(
        waiting.await.unwrap(),
        200,
        "the batch is stored once the lock is free"
    );
    checkpoint_of(&client, &base, 8).await;
}

const VERDICTS: &str = "verdict-token-for-log-tests";
const ADMIN: &str = "admin-token-for-log-tests";

/// Posts a verdict on `id` as a webhook engine would later; returns it as stored.
async fn post_verdict(client: &reqwest::Client, base: &str, id: &str, body: Value) -> Value {
    let r = client
        .post(format!("{base}/v1/captures/{id}/verdicts"))
        .bearer_auth(VERDICTS)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

/// Stores three captures, three verdicts on two of them, then erases the second capture; checks
/// that each verdict's JSON names its place in the log and that its entry (the verdict exactly
/// as stored) and proof verify against a signed checkpoint. Returns the event id of the first
/// capture's first verdict and of the erased capture's verdict.
async fn verdicts_in_the_log(client: &reqwest::Client, base: &str) -> (String, String) {
    let ids: Vec<String> = (0..3).map(|i| format!("judged-{i}")).collect();
    assert_eq!(post(client, base, ndjson(&ids), None).await.status(), 200);
    let claims = json!([{"claim": "Lyon is the capital", "status": "contradicted",
                          "confidence": 0.9, "evidence": ["Paris is the capital of France."]}]);
    post_verdict(
        client,
        base,
        "judged-0",
        json!({"engine": "https://a.example/hook",
        "score": 0.25, "hallucination": true, "claims": claims}),
    )
    .await;
    post_verdict(
        client,
        base,
        "judged-0",
        json!({"engine": "https://b.example/hook",
        "status": "failed", "error": "timed out"}),
    )
    .await;
    post_verdict(
        client,
        base,
        "judged-1",
        json!({"engine": "https://a.example/hook",
        "score": 0.75, "hallucination": false}),
    )
    .await;
    // 3 records and 3 verdicts.
    checkpoint_of(client, base, 6).await;
    let vkey = text(client, format!("{base}/v1/log/key")).await.1;
    let capture: Value = common::get_json(client, format!("{base}/v1/captures/judged-0")).await;
    let verdicts = capture["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 2, "{capture:#}");
    let mut events = Vec::new();
    for v in verdicts {
        let log = &v["log"];
        let event = log["event"].as_str().unwrap().to_owned();
        assert!(event.starts_with("verdict-"), "{v:#}");
        assert!(log["index"].as_u64().is_some_and(|i| i >= 3), "{v:#}");
        assert_eq!(log["proof"], format!("/v1/log/events/{event}/proof"));
        // The entry is the verdict as shown, without its place in the log, byte for byte.
        let (status, entry) =
            text(client, format!("{base}{}", log["entry"].as_str().unwrap())).await;
        assert_eq!(status, 200);
        let mut shown = v.clone();
        shown.as_object_mut().unwrap().remove("log");
        assert_eq!(serde_json::from_str::<Value>(&entry).unwrap(), shown);
        assert_eq!(shown["capture_id"], "judged-0");
        let at = format!("{base}/v1/log/events/{event}");
        let (size, _) = check_proof_at(client, &at, &vkey, "").await;
        assert!(size >= 6);
        events.push(event);
    }
    let erased: Value = common::get_json(client, format!("{base}/v1/captures/judged-1")).await;
    let erased_event = erased["verdicts"][0]["log"]["event"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = client
        .post(format!("{base}/v1/erasures"))
        .bearer_auth(ADMIN)
        .json(&json!({"ids": ["judged-1"], "reason": "asked to forget"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(
        text(client, format!("{base}/v1/log/events/{erased_event}/entry"))
            .await
            .0,
        404,
        "the erased capture's verdict goes with it"
    );
    // … and the erasure's entry names it.
    checkpoint_of(client, base, 7).await;
    (events[0].clone(), erased_event)
}

fn verdict_log_args<'a>(db: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--db", db];
    args.extend_from_slice(more);
    args
}

const VERDICT_ENV: [(&str, &str); 2] = [
    ("TRUTHTABLE_VERDICT_TOKEN", VERDICTS),
    ("TRUTHTABLE_ADMIN_TOKEN", ADMIN),
];

#[tokio::test]
async fn a_verdict_is_a_log_entry_and_verify_names_one_changed_or_deleted_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("clean.db");
    let db_arg = db.display().to_string();
    let client = reqwest::Client::new();
    let mut proc = Process::start_with(&verdict_log_args(&db_arg, &[]), &VERDICT_ENV);
    let (event, erased) = verdicts_in_the_log(&client, &proc.base()).await;
    proc.sigterm();
    assert!(proc.wait(20).success());

    let (ok, out) = verify(&db, None);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("erased verdict {erased} (index ")),
        "{out}"
    );
    assert!(out.ends_with("7 of 7 records verified\n"), "{out}");
    let cases = [
        (
            "verdict-unflagged",
            format!("UPDATE capture_verdicts SET hallucination = 0 WHERE event_seq = (SELECT seq FROM log_events WHERE id = '{event}')"),
            "its row in capture_verdicts (what the list filters by) differs from its entry in hallucination",
        ),
        (
            "verdict-moved",
            format!("UPDATE capture_verdicts SET capture_id = 'judged-2' WHERE event_seq = (SELECT seq FROM log_events WHERE id = '{event}')"),
            "differs from its entry in capture",
        ),
        (
            "verdict-modified",
            format!("UPDATE log_events SET entry = replace(entry, '0.25', '0.95') WHERE id = '{event}'"),
            "modified",
        ),
        (
            "verdict-deleted",
            format!("DELETE FROM capture_verdicts WHERE event_seq = (SELECT seq FROM log_events WHERE id = '{event}');
                     DELETE FROM log_events WHERE id = '{event}'"),
            "deleted from the store",
        ),
    ];
    for (name, sql, finding) in cases {
        let (ok, out) = tampered(&db, name, &sql);
        assert!(!ok, "{name}: verify passed a tampered store:\n{out}");
        assert!(
            out.contains(&format!("FAIL verdict {event} (index ")) && out.contains(finding),
            "{name}: no {finding:?} of {event} in\n{out}"
        );
    }
}

#[tokio::test]
async fn a_verdict_is_a_log_entry_and_verify_names_one_changed_or_deleted_on_postgres() {
    let pg = common::postgres::Postgres::shared();
    let name = pg.database();
    let url = pg.url_with_password(&name);
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = common::keygen(dir.path(), "verdicts.test/log");
    let client = reqwest::Client::new();
    let mut proc = Process::start_with(&verdict_log_args(&url, &["--log-key", &key]), &VERDICT_ENV);
    let (event, erased) = verdicts_in_the_log(&client, &proc.base()).await;
    proc.sigterm();
    assert!(proc.wait(20).success());

    let db = Path::new(&url);
    let (ok, out) = verify(db, None);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("erased verdict {erased} (index ")),
        "{out}"
    );
    pg.sql(
        &name,
        &format!(
            "UPDATE log_events SET entry = replace(entry, '0.25', '0.95') WHERE id = '{event}'"
        ),
    );
    let (ok, out) = verify(db, None);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("FAIL verdict {event} (index ")) && out.contains("modified"),
        "{out}"
    );
    pg.sql(
        &name,
        &format!("DELETE FROM log_events WHERE id = '{event}'"),
    );
    let (ok, out) = verify(db, None);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("FAIL verdict {event} (index "))
            && out.contains("deleted from the store"),
        "{out}"
    );
}

#[tokio::test]
async fn a_postgres_log_whose_hashes_were_a_row_each_migrates_and_goes_on_across_rows() {
    let pg = common::postgres::Postgres::shared();
    let name = pg.database();
    let url = pg.url_with_password(&name);
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = common::keygen(dir.path(), "tiles.test/log");
    // Back to the layout before migration 11: a row per stored hash.
    let rewind = || {
        pg.sql(
            &name,
            "CREATE TABLE log_hashes (idx bigint PRIMARY KEY, hash bytea NOT NULL);
             INSERT INTO log_hashes (idx, hash)
                 SELECT tile * 64 + i, substring(hashes FROM i * 32 + 1 FOR 32)
                 FROM log_hash_tiles, generate_series(0, octet_length(hashes) / 32 - 1) AS i;
             DROP TABLE log_hash_tiles;
             DELETE FROM truthtable_schema WHERE version = 11;",
        );
        assert_eq!(pg.sql(&name, "SELECT count(*) FROM log_hashes"), "197");
    };
    let tiles = || {
        pg.sql(
            &name,
            "SELECT count(*) || ' ' || sum(octet_length(hashes)) FROM log_hash_tiles",
        )
    };
    let args = ["--db", url.as_str(), "--log-key", key.as_str()];
    a_log_of_rows_migrates_and_goes_on(&args, rewind, tiles, Path::new(&url)).await;
}
