//! `docs/reference.md` is checked against the code, so it cannot fall behind it: every key the
//! configuration parser knows has a row (and every row is a key), the documented defaults and ranges
//! are the ones the parser applies, every field of a real capture record is described (and the
//! example record has exactly that shape), and every metric the filter defines is listed.
//!
//! The user docs (README.md, docs/, collector/README.md) cite only files the repository has, and
//! the README's layout table lists every file of the repository.
//!
//! Nothing here needs Envoy or the .wasm: it runs the plain-Rust modules of the filter crate.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use truthtable_filter::batcher::Bodies;
use truthtable_filter::body::BodyTap;
use truthtable_filter::config::{Config, ConfigError};
use truthtable_filter::headers::HeaderBlock;
use truthtable_filter::record::{Ending, Exchange};
use truthtable_filter::redact;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn reference() -> String {
    std::fs::read_to_string(repo().join("docs/reference.md")).expect("docs/reference.md")
}

/// The text of the `## title` section, up to the next `## ` heading.
fn section(doc: &str, title: &str) -> String {
    let start = doc
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("docs/reference.md has no `## {title}` section"));
    let body = &doc[start + title.len() + 5..];
    let end = body.find("\n## ").unwrap_or(body.len());
    body[..end].to_owned()
}

/// Table rows of a section whose first cell is a code span: the cells, `\|` unescaped.
fn rows(section: &str) -> Vec<Vec<String>> {
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|line| {
            let mut cells = Vec::new();
            let mut cell = String::new();
            let mut chars = line.trim().trim_matches('|').chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\\' if chars.peek() == Some(&'|') => {
                        cell.push('|');
                        chars.next();
                    }
                    '|' => cells.push(std::mem::take(&mut cell).trim().to_owned()),
                    _ => cell.push(c),
                }
            }
            cells.push(cell.trim().to_owned());
            cells
        })
        .collect()
}

/// The text of a cell that is exactly one code span, without the backticks.
fn code(cell: &str) -> Option<&str> {
    let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!inner.contains('`')).then_some(inner)
}

/// The code spans of a cell, in order.
fn spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// The filter's keys, from the parser itself: serde lists every field it accepts when it meets
/// one it does not know.
fn filter_keys() -> BTreeSet<String> {
    let err = Config::parse(br#"{"audit_cluster": "a", "__no_such_key__": 1}"#).unwrap_err();
    let list = err
        .problem
        .split("expected one of")
        .nth(1)
        .unwrap_or_else(|| panic!("no key list in {err}"));
    let keys: BTreeSet<String> = spans(list).into_iter().map(str::to_owned).collect();
    assert!(
        keys.contains("audit_cluster") && keys.len() >= 7,
        "{keys:?}"
    );
    keys
}

fn filter_rows() -> Vec<Vec<String>> {
    let rows = rows(&section(&reference(), "Filter configuration"));
    for row in &rows {
        assert_eq!(
            row.len(),
            5,
            "key | type | default | range | effect: {row:?}"
        );
    }
    rows
}

fn key_of(row: &[String]) -> String {
    code(&row[0])
        .unwrap_or_else(|| panic!("first cell should be `key`: {row:?}"))
        .to_owned()
}

fn parse(config: &Map<String, Value>) -> Result<Config, ConfigError> {
    Config::parse(Value::Object(config.clone()).to_string().as_bytes())
}

fn minimal() -> Map<String, Value> {
    json!({"audit_cluster": "truthtable_audit"})
        .as_object()
        .unwrap()
        .clone()
}

#[test]
fn every_filter_key_has_a_row_and_every_row_is_a_key() {
    let documented: BTreeSet<String> = filter_rows().iter().map(|r| key_of(r)).collect();
    let keys = filter_keys();
    let missing: Vec<_> = keys.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&keys).collect();
    assert!(
        missing.is_empty(),
        "filter keys missing from docs/reference.md: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "docs/reference.md documents keys the filter does not accept: {stale:?}"
    );
    let doc = reference();
    for key in &keys {
        assert!(doc.contains(&format!("| `{key}` |")), "no row for {key}");
    }
}

#[test]
fn documented_defaults_are_the_ones_the_parser_applies() {
    let defaults = parse(&minimal()).unwrap();
    for row in filter_rows() {
        let key = key_of(&row);
        let cell = row[2].as_str();
        if cell == "required" {
            let mut config = minimal();
            config.remove(&key);
            let err = parse(&config).expect_err("a required key");
            assert_eq!(err.key, key, "{err}");
            continue;
        }
        let value = if let Some(other) = cell.strip_prefix("the value of ") {
            let other = code(other).unwrap_or_else(|| panic!("{key}: {cell}"));
            minimal()
                .get(other)
                .unwrap_or_else(|| {
                    panic!("{key}: default names {other}, not in the minimal config")
                })
                .clone()
        } else {
            let text = code(cell).unwrap_or_else(|| {
                panic!("{key}: default cell should be `required`, `JSON` or the value of `key`: {cell}")
            });
            serde_json::from_str(text).unwrap_or_else(|e| panic!("{key}: default {text}: {e}"))
        };
        let mut explicit = minimal();
        explicit.insert(key.clone(), value.clone());
        let got = parse(&explicit).unwrap_or_else(|e| panic!("{key} = {value}: {e}"));
        assert_eq!(
            got, defaults,
            "{key}: the documented default {value} is not what the parser uses when the key is absent"
        );
    }
}

/// `(min, max)` from a range cell that starts with `` `MIN..=MAX` ``.
fn bounds(cell: &str) -> Option<(u64, u64)> {
    let first = *spans(cell).first()?;
    let (lo, hi) = first.split_once("..=")?;
    Some((lo.parse().ok()?, hi.parse().ok()?))
}

#[test]
fn documented_ranges_are_the_ones_the_parser_enforces() {
    let rows = filter_rows();
    let range_of = |key: &str| {
        rows.iter()
            .find(|r| key_of(r) == key)
            .and_then(|r| bounds(&r[3]))
            .unwrap_or_else(|| panic!("no numeric range for {key}"))
    };
    // Settings that keep the cross-key rules (queue >= batch, retry_max >= retry_initial) out of
    // the way of a bound being tested.
    let low = json!({"batch_max_bytes": 1024, "retry_initial_ms": 10});
    let high = json!({"queue_max_bytes": 1_073_741_824u64, "retry_max_ms": 3_600_000u64});
    let with = |base: &Value, key: &str, v: u64| {
        let mut config = minimal();
        config.extend(base.as_object().unwrap().clone());
        config.insert(key.to_owned(), json!(v));
        config
    };
    let mut checked = 0;
    for row in &rows {
        let key = key_of(row);
        let Some((min, max)) = bounds(&row[3]) else {
            assert!(
                !matches!(row[1].as_str(), "integer"),
                "{key}: an integer key needs a `MIN..=MAX` range"
            );
            continue;
        };
        for (v, base) in [(min, &low), (max, &high)] {
            parse(&with(base, &key, v))
                .unwrap_or_else(|e| panic!("{key} = {v} is documented as valid: {e}"));
        }
        let mut refused = vec![(max + 1, &high)];
        if min > 0 {
            refused.push((min - 1, &low));
        }
        for (v, base) in refused {
            let err = parse(&with(base, &key, v))
                .expect_err(&format!("{key} = {v} is documented as out of range"));
            assert_eq!(err.key, key, "{err}");
        }
        // "and at least `other`": one below the other key's value is refused, naming this key.
        if let Some(rest) = row[3].split("at least ").nth(1) {
            let other = spans(rest)[0];
            let (other_min, _) = range_of(other);
            let v = min.max(other_min) + 1000;
            parse(
                &with(&low, &key, v)
                    .into_iter()
                    .chain([(other.to_owned(), json!(v))])
                    .collect(),
            )
            .unwrap_or_else(|e| panic!("{key} = {other} = {v} is documented as valid: {e}"));
            let config = with(&low, &key, v)
                .into_iter()
                .chain([(other.to_owned(), json!(v + 1))])
                .collect();
            let err = parse(&config).expect_err(&format!("{key} below {other}"));
            assert_eq!(err.key, key, "{err}");
        }
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} ranges checked");
}

fn feed(tap: &mut BodyTap, chunk: &[u8]) {
    let room = tap.room(chunk.len());
    tap.push(chunk.len(), chunk[..room].to_vec());
}

/// A record as the filter writes it, with every optional part present.
fn real_record() -> Value {
    let config = Config::parse(br#"{"audit_cluster": "a"}"#).unwrap();
    let t0 = 1_795_623_040_186_123_456u64;
    let mut ex = Exchange::new(config.max_body_bytes);
    ex.started_ns = Some(t0);
    ex.request_headers = Some(HeaderBlock::from_pairs(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "api.example.com"),
        (":path", "/v1/chat/completions?stream=true"),
        ("content-type", "application/json"),
        ("x-request-id", "9f1c2d3e"),
    ]));
    feed(&mut ex.request_body, br#"{"model":"demo"}"#);
    ex.response_headers = Some(HeaderBlock::from_pairs(&[
        (":status", "200"),
        ("content-type", "text/event-stream"),
    ]));
    ex.response_headers_ns = Some(t0 + 212_500_000);
    feed(&mut ex.response_body, b"data: [DONE]\n\n");
    ex.response_chunks.push(t0 + 240_130_000, 14);
    ex.response_ended = true;
    let mut out = Vec::new();
    ex.write_record(
        &mut out,
        &Ending {
            now_ns: t0 + 1_804_200_000,
            details: "via_upstream",
            fallback_id: "unused",
            amendment: None,
        },
        &config,
        Bodies::Kept,
    );
    serde_json::from_slice(&out).unwrap()
}

/// Dotted paths of every object field, with `request.body.x` / `response.body.x` as `*.body.x`.
fn field_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    let Value::Object(map) = value else { return };
    for (k, v) in map {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let path = match path.split_once(".body.") {
            Some((_, rest)) => format!("*.body.{rest}"),
            None => path,
        };
        out.insert(path.clone());
        field_paths(v, &path, out);
    }
}

fn example_record(doc: &str) -> Value {
    let schema = section(doc, "Capture record");
    let start = schema.find("```json\n").expect("an example record") + 8;
    let end = start + schema[start..].find("```").expect("end of the example");
    serde_json::from_str(&schema[start..end]).expect("the example record is JSON")
}

#[test]
fn every_record_field_is_described_and_the_example_has_the_real_shape() {
    let doc = reference();
    let mut real = BTreeSet::new();
    field_paths(&real_record(), "", &mut real);
    let documented: BTreeSet<String> = rows(&section(&doc, "Capture record"))
        .iter()
        .filter_map(|r| code(&r[0]).map(str::to_owned))
        .collect();
    let missing: Vec<_> = real.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&real).collect();
    assert!(
        missing.is_empty(),
        "record fields not in docs/reference.md: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "docs/reference.md describes fields records do not have: {stale:?}"
    );

    let mut example = BTreeSet::new();
    field_paths(&example_record(&doc), "", &mut example);
    assert_eq!(
        example, real,
        "the example record's fields differ from a real record's"
    );
    assert_eq!(example_record(&doc)["schema"], real_record()["schema"]);
}

#[test]
fn every_filter_metric_is_listed_with_its_type() {
    // The metrics are defined in the wasm-only host glue, so they are read from its source.
    let host =
        std::fs::read_to_string(repo().join("src/host/metrics.rs")).expect("src/host/metrics.rs");
    let metrics = section(&reference(), "Metrics");
    let mut found = 0;
    for (kind, call) in [("counter", "counter(\""), ("gauge", "gauge(\"")] {
        for piece in host.split(call).skip(1) {
            let name = &piece[..piece.find('"').unwrap()];
            let row = format!("| `{name}` | {kind} |");
            assert!(
                metrics.contains(&row),
                "docs/reference.md lacks the row {row}"
            );
            found += 1;
        }
    }
    assert!(
        found >= 8,
        "found only {found} metric definitions in src/host/metrics.rs"
    );
}

/// The code spans of the `### Redaction` subsection.
fn redaction_names() -> BTreeSet<String> {
    let doc = reference();
    let start = doc
        .find("\n### Redaction\n")
        .expect("docs/reference.md has a `### Redaction` subsection");
    let body = &doc[start + 1..];
    let end = body[4..].find("\n#").map_or(body.len(), |i| i + 4);
    spans(&body[..end]).into_iter().map(str::to_owned).collect()
}

#[test]
fn every_built_in_redacted_name_is_listed_and_every_listed_name_is_built_in() {
    let listed = redaction_names();
    for name in redact::DEFAULT_HEADERS
        .iter()
        .chain(redact::DEFAULT_QUERY_PARAMS)
    {
        assert!(
            listed.contains(*name),
            "docs/reference.md's Redaction section does not list `{name}`"
        );
    }
    let known: BTreeSet<&str> = redact::DEFAULT_HEADERS
        .iter()
        .chain(redact::DEFAULT_QUERY_PARAMS)
        .copied()
        .chain(["redact_headers", "redact_query_params", "audit_headers"])
        .collect();
    for name in &listed {
        // Spans that are not names: separators and examples (`&`, `api%5Fkey`, a whole query).
        let example = !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        assert!(
            example || known.contains(name.as_str()),
            "docs/reference.md lists `{name}` as redacted, but the filter does not redact it"
        );
    }
}

/// The user docs: what a user of the repository reads.
const USER_DOCS: [&str; 4] = [
    "README.md",
    "docs/reference.md",
    "docs/deploy.md",
    "collector/README.md",
];

#[test]
fn user_docs_cite_only_files_the_repository_has() {
    for doc in USER_DOCS {
        let text = std::fs::read_to_string(repo().join(doc)).unwrap();
        for outside in ["shared/", "CONTRACT.md"] {
            assert!(
                !text.contains(outside),
                "{doc} cites {outside}, which is not in the repository: the repository's own docs carry it"
            );
        }
        // Every relative Markdown link points at a file or directory that exists.
        let dir = repo().join(doc).parent().unwrap().to_owned();
        for piece in text.split("](").skip(1) {
            let target = &piece[..piece.find(')').unwrap()];
            let path = target.split('#').next().unwrap();
            if path.is_empty() || path.contains("://") {
                continue;
            }
            assert!(
                dir.join(path).exists(),
                "{doc} links to {target}, which does not exist"
            );
        }
    }
}

/// Every file of the repository: tracked, or new and not ignored.
fn repository_files() -> Vec<String> {
    let out = std::process::Command::new("git")
        .args(["ls-files", "--cached", "--others", "--exclude-standard"])
        .current_dir(repo())
        .output()
        .expect("git ls-files");
    assert!(out.status.success(), "git ls-files failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|f| repo().join(f).exists()) // deleted in the work tree, not yet committed
        .map(str::to_owned)
        .collect()
}

#[test]
fn readme_layout_table_lists_every_file_of_the_repository() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let layout = &readme[readme.find("\n## Layout\n").expect("## Layout")..];
    let layout = &layout[1..];
    let layout = &layout[..layout.find("\n## ").unwrap_or(layout.len())];
    // A row names paths in its first cell (a directory ends with `/`), and in its text the files
    // below those directories, relative to them (a name ending with `/` covers what is below it).
    let rows: Vec<(Vec<&str>, Vec<&str>)> = layout
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let (first, rest) = l[1..].split_once(" | ").expect("two cells");
            (spans(first), spans(rest))
        })
        .collect();
    assert!(rows.len() >= 8, "the layout table has {} rows", rows.len());
    for (paths, _) in &rows {
        for path in paths {
            assert!(
                repo().join(path).exists(),
                "the layout table names {path}, which does not exist"
            );
        }
    }
    let listed = |file: &str| {
        rows.iter().any(|(paths, names)| {
            paths.contains(&file)
                || paths.iter().any(|dir| {
                    let Some(rel) = file.strip_prefix(dir).filter(|_| dir.ends_with('/')) else {
                        return false;
                    };
                    names
                        .iter()
                        .any(|n| *n == rel || (n.ends_with('/') && rel.starts_with(n)))
                })
        })
    };
    let missing: Vec<String> = repository_files()
        .into_iter()
        .filter(|f| !listed(f))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md's layout table does not list: {missing:?}"
    );
}

#[test]
fn the_framed_delivery_example_is_a_frame_the_collector_reads_as_documented() {
    let doc = reference();
    let start = doc
        .find("\nTTF1 0")
        .expect("a framed example in docs/reference.md")
        + 1;
    let end = start + doc[start..].find("\n```").expect("the example's end");
    let frame = format!("{}\n", &doc[start..end]);
    let frames = truthtable_collector::frames::split(frame.as_bytes())
        .unwrap_or_else(|e| panic!("the documented frame does not split: {e}"));
    assert_eq!(frames.len(), 1);
    let line = frames[0].to_line().unwrap();
    let becomes = doc[end..]
        .split("becomes `…")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .expect("the documented result");
    assert!(
        line.ends_with(becomes),
        "{line}\ndoes not end with\n{becomes}"
    );
    let record: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["request"]["body"]["data"], r#"{"q":1}"#);
}
