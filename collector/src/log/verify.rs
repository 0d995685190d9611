//! The offline check of a store against its signed checkpoints, as `truthtable-collector
//! verify` runs it: recompute the tree from the stored records in log order, check every kept
//! checkpoint's signature and root against it, and name each record that was modified,
//! deleted, inserted or moved, and a cut-off tail. Like `aws cloudtrail validate-logs`: a line
//! per finding, then `N of M records verified`.

use std::collections::HashMap;

use super::note::VerifierKey;
use super::tree::{self, DenseTree, Hash, Query};
use crate::store::erase::{ERASURE_KIND, EVENT_PREFIX, VERDICT_PREFIX};
use crate::store::log::{LogStore, VerdictRow};
use crate::store::StoreError;

/// Records read from the store at a time.
const PAGE: u32 = 5000;

/// The part of an erasure's log entry the check reads.
#[derive(Debug, serde::Deserialize)]
struct Erasure {
    kind: String,
    at: String,
    reason: String,
    by: String,
    captures: Vec<String>,
    /// The verdicts removed with the captures.
    #[serde(default)]
    verdicts: Vec<String>,
}

/// What a log entry is, as the report names it: `capture <id>`, `verdict verdict-<n>` or
/// `event <id>` (an erasure's or a hold's).
fn named(id: &str) -> String {
    match id.strip_prefix(EVENT_PREFIX) {
        Some(v) if v.starts_with(VERDICT_PREFIX) => format!("verdict {v}"),
        Some(event) => format!("event {event}"),
        None => format!("capture {id}"),
    }
}

/// What the check found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Every line of the report, in order; the last is the summary.
    pub lines: Vec<String>,
    /// Problems found (the command exits non-zero when there are any).
    pub problems: usize,
    /// Records whose entries are in the log, unchanged, where the log has them.
    pub verified: u64,
    /// Records the store holds or the log holds.
    pub total: u64,
}

impl Report {
    fn say(&mut self, line: String) {
        self.lines.push(line);
    }

    fn problem(&mut self, line: String) {
        self.problems += 1;
        self.lines.push(format!("FAIL {line}"));
    }

    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems == 0
    }
}

/// How the row `capture_verdicts` keeps of a verdict (what the list filters by, which capture
/// shows it) disagrees with its logged entry, if it does.
fn row_disagrees(row: Option<&VerdictRow>, entry: &str) -> Option<String> {
    let Some(row) = row else {
        return Some(
            "its row in capture_verdicts is gone: its capture no longer shows it".to_owned(),
        );
    };
    let v: serde_json::Value = serde_json::from_str(entry).ok()?;
    let capture = v["capture_id"].as_str().filter(|c| !c.is_empty());
    let differ = [
        ("capture", capture.is_some_and(|c| c != row.capture_id)),
        ("engine", v["engine"].as_str() != Some(row.engine.as_str())),
        ("status", v["status"].as_str() != Some(row.status.as_str())),
        ("score", v["score"].as_f64() != row.score),
        (
            "hallucination",
            v["hallucination"].as_bool() != row.hallucination,
        ),
    ];
    let fields: Vec<&str> = differ.iter().filter(|d| d.1).map(|d| d.0).collect();
    (!fields.is_empty()).then(|| {
        format!(
            "its row in capture_verdicts (what the list filters by) differs from its entry in {}",
            fields.join(", ")
        )
    })
}

/// Checks the store's log. `key` is the verifier key to check signatures against; without it,
/// the log's own key (the report says so).
pub async fn verify_store(
    store: &impl LogStore,
    key: Option<VerifierKey>,
) -> Result<Report, StoreError> {
    let mut r = Report::default();
    let state = store.log_state().await?;
    let key = match key {
        Some(k) => {
            r.say(format!(
                "checking signatures against the given key {}",
                k.as_str()
            ));
            Some(k)
        }
        None => match state.verifier_key.as_deref().map(VerifierKey::parse) {
            Some(Ok(k)) => {
                r.say(format!(
                    "checking signatures against the log's own key {} (no --key given: this shows the store agrees with itself; give the key you hold with --key to check who signed)",
                    k.as_str()
                ));
                Some(k)
            }
            Some(Err(e)) => {
                r.problem(format!("the log's own verifier key is not usable: {e}"));
                None
            }
            None => None,
        },
    };
    // Every checkpoint, its signature checked.
    let mut checkpoints = Vec::new();
    let stored_checkpoints = store.log_checkpoints().await?;
    if stored_checkpoints.is_empty() && state.size > 0 {
        r.problem(format!(
            "the log holds {} entries and no signed checkpoint",
            state.size
        ));
    }
    for (size, note) in stored_checkpoints {
        match key.as_ref().map(|k| k.open(&note)) {
            Some(Ok(c)) if c.size == size => checkpoints.push(c),
            Some(Ok(c)) => r.problem(format!(
                "the checkpoint kept as size {size} is signed for size {}",
                c.size
            )),
            Some(Err(e)) => r.problem(format!("checkpoint of size {size}: {e}")),
            None => r.problem(format!(
                "checkpoint of size {size}: no verifier key to check it with"
            )),
        }
    }
    // The entries in log order: the tree of the stored records beside the stored leaf hashes.
    let mut recomputed = DenseTree::new();
    let mut stored_leaves: Vec<Hash> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let mut records: Vec<Option<Hash>> = Vec::new();
    // The erasure event a tombstone names, per index; and what each logged erasure erased.
    let mut erased_by: Vec<Option<String>> = Vec::new();
    let mut erasures: HashMap<String, (u64, Erasure)> = HashMap::new();
    // What each verdict's row disagrees with its entry in, per index.
    let mut row_problems: Vec<Option<String>> = Vec::new();
    let mut next = 0u64;
    loop {
        let page = store.log_records(next, PAGE).await?;
        if page.is_empty() {
            break;
        }
        let leaf_indexes: Vec<u64> = page.iter().map(|e| tree::leaf_index(e.index)).collect();
        let hashes = store.log_hashes(leaf_indexes).await?;
        for e in page {
            while next < e.index {
                r.problem(format!("index {next}: the log's entry is gone"));
                stored_leaves.push(Hash::default());
                ids.push(String::new());
                records.push(None);
                erased_by.push(None);
                row_problems.push(None);
                let _ = recomputed.push(Hash::default());
                next += 1;
            }
            let stored = hashes
                .0
                .get(&tree::leaf_index(e.index))
                .copied()
                .unwrap_or_default();
            let leaf = e.raw.as_ref().map(|raw| tree::leaf_hash(raw.as_bytes()));
            if let (Some(event), Some(raw)) = (e.id.strip_prefix(EVENT_PREFIX), &e.raw) {
                if let Ok(x) = serde_json::from_str::<Erasure>(raw) {
                    if x.kind == ERASURE_KIND {
                        erasures.insert(event.to_owned(), (e.index, x));
                    }
                }
            }
            erased_by.push(e.erased_by);
            let is_verdict =
                e.id.strip_prefix(EVENT_PREFIX)
                    .is_some_and(|v| v.starts_with(VERDICT_PREFIX));
            row_problems.push(match (&e.raw, is_verdict) {
                (Some(raw), true) => row_disagrees(e.verdict_row.as_ref(), raw),
                _ => None,
            });
            let _ = recomputed.push(leaf.unwrap_or(stored));
            stored_leaves.push(stored);
            ids.push(e.id);
            records.push(leaf);
            next = e.index + 1;
        }
    }
    let logged = next;
    let by_leaf: HashMap<[u8; 32], u64> = stored_leaves
        .iter()
        .enumerate()
        .map(|(i, h)| (h.0, i as u64))
        .collect();
    // The erasure that removed each verdict, by its event id.
    let verdicts_erased: HashMap<&str, (&u64, &Erasure)> = erasures
        .values()
        .flat_map(|(j, x)| x.verdicts.iter().map(move |v| (v.as_str(), (j, x))))
        .collect();
    let mut erased = 0u64;
    for (i, (leaf, id)) in records.iter().zip(&ids).enumerate() {
        let i = i as u64;
        let Some(stored) = stored_leaves.get(i as usize).copied() else {
            continue;
        };
        let what = named(id);
        match leaf {
            _ if id.is_empty() => {}
            None => match id.strip_prefix(EVENT_PREFIX) {
                Some(event) => match verdicts_erased.get(event) {
                    Some((j, x)) => {
                        r.verified += 1;
                        r.say(format!(
                            "erased {what} (index {i}): erased with its capture on {} ({}) by {}, erasure entry at index {j}",
                            x.at, x.reason, x.by
                        ));
                    }
                    None => r.problem(format!("{what} (index {i}): deleted from the store")),
                },
                None => match erased_by.get(i as usize).cloned().flatten() {
                    Some(event) => match erasures.get(&event) {
                        Some((j, x)) if x.captures.iter().any(|c| c == id) => {
                            r.verified += 1;
                            erased += 1;
                            r.say(format!(
                                "erased capture {id} (index {i}): erased on {} ({}) by {}, erasure entry at index {j}",
                                x.at, x.reason, x.by
                            ));
                        }
                        _ => r.problem(format!(
                            "capture {id} (index {i}): deleted from the store — its tombstone names the erasure {event}, and no erasure in the log erased it"
                        )),
                    },
                    None => r.problem(format!(
                        "capture {id} (index {i}): deleted from the store"
                    )),
                },
            },
            Some(h) if *h == stored => {
                r.verified += 1;
                if let Some(why) = row_problems.get(i as usize).cloned().flatten() {
                    r.problem(format!("{what} (index {i}): {why}"));
                }
            }
            Some(h) => match by_leaf.get(&h.0) {
                Some(&j) => r.problem(format!(
                    "{what} (index {i}): moved — the store holds under it the record logged at index {j} ({})",
                    ids.get(j as usize).map_or("?".to_owned(), |id| named(id))
                )),
                None => r.problem(format!(
                    "{what} (index {i}): modified — its stored record is not the entry the log holds"
                )),
            },
        }
    }
    // Each checkpoint against the tree of the stored records.
    let latest = checkpoints.iter().map(|c| c.size).max().unwrap_or(0);
    if latest > logged {
        r.problem(format!(
            "cut-off tail: a checkpoint of size {latest} was signed, and the log holds {logged} entries — entries {logged} to {} are gone",
            latest - 1
        ));
    }
    let mut matching = 0;
    // Each checkpoint's size and whether the stored records give its root.
    let mut checked: Vec<(u64, bool)> = Vec::new();
    for c in &checkpoints {
        if c.size > recomputed.size() {
            continue;
        }
        let ok = matches!(recomputed.answer(Query::Root(c.size)), Ok(root) if root.first() == Some(&c.root));
        if ok {
            matching += 1;
        } else {
            r.problem(format!(
                "checkpoint of size {}: the stored records do not give its root {}",
                c.size, c.root
            ));
        }
        checked.push((c.size, ok));
    }
    // The smallest checkpoint that does not match, and the largest below it that does.
    if let Some(bad) = checked.iter().filter(|c| !c.1).map(|c| c.0).min() {
        let good = checked
            .iter()
            .filter(|c| c.1 && c.0 < bad)
            .map(|c| c.0)
            .max()
            .unwrap_or(0);
        // Between them a record changed; when every record there matches its stored leaf hash,
        // its leaf hash was changed with it: the stored tree above names where.
        let named = (good..bad).any(|i| {
            let i = i as usize;
            let stored = stored_leaves.get(i).copied();
            match records.get(i).copied().flatten() {
                Some(leaf) => Some(leaf) != stored || ids.get(i).is_none_or(String::is_empty),
                // Deleted (an erasure's tombstone is checked above).
                None => erased_by.get(i).is_none_or(Option::is_none),
            }
        });
        if !named {
            let suspects = rehashed(store, &recomputed, good, bad).await?;
            r.verified = r.verified.saturating_sub(suspects.len() as u64);
            let named: Vec<String> = suspects
                .iter()
                .take(10)
                .map(|&i| {
                    format!(
                        "{} (index {i})",
                        ids.get(i as usize).map(String::as_str).unwrap_or("?")
                    )
                })
                .collect();
            let more = suspects.len().saturating_sub(named.len());
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            r.problem(match suspects.as_slice() {
                [_] => format!(
                    "capture {}: modified together with its stored leaf hash — the stored tree above it and the checkpoint of size {bad} were computed from another record",
                    named.join("")
                ),
                _ => format!(
                    "captures {}{more}: one or more modified together with their stored leaf hashes — the stored tree above them and the checkpoint of size {bad} were computed from other records",
                    named.join(", ")
                ),
            });
        }
    }
    if erased > 0 {
        r.say(format!(
            "{erased} erased capture(s): content removed, tombstone and logged erasure entry in place"
        ));
    }
    r.say(format!(
        "{matching} of {} signed checkpoints match the stored records",
        checkpoints.len()
    ));
    // Records the store holds and the log does not.
    let mut pending = 0;
    for (id, passed) in store.log_missing(state.cursor).await? {
        if passed {
            r.problem(format!(
                "capture {id}: inserted — stored among logged records, and not in the log"
            ));
        } else {
            pending += 1;
            r.problem(format!(
                "capture {id}: not in the log — stored after the last sequenced record (inserted, or not yet sequenced by a running collector)"
            ));
        }
        r.total += 1;
    }
    if pending > 0 {
        r.say(format!(
            "{pending} record(s) are not yet in the log; verify a store whose collector has caught up (its log size metric equals its records) or stopped"
        ));
    }
    r.total += logged.max(latest);
    let summary = format!("{} of {} records verified", r.verified, r.total);
    r.lines.push(summary);
    Ok(r)
}

/// The records in `good..bad` under the lowest complete subtrees whose stored hash differs from
/// the one recomputed from the stored records: where records were changed together with their
/// stored leaf hashes (the hashes above a leaf were stored from the record the log appended).
/// All of `good..bad` when no stored hash differs (the whole path was rewritten).
async fn rehashed(
    store: &impl LogStore,
    recomputed: &DenseTree,
    good: u64,
    bad: u64,
) -> Result<Vec<u64>, StoreError> {
    for level in 1..64u8 {
        // Complete subtrees of 2^level records that end within the checkpoint and reach past
        // `good`.
        let nodes: Vec<u64> = ((good >> level)..(bad >> level)).collect();
        if nodes.is_empty() {
            break;
        }
        let indexes: Vec<u64> = nodes
            .iter()
            .map(|&n| tree::stored_index(level, n))
            .collect();
        let stored = store.log_hashes(indexes.clone()).await?;
        let mut found = Vec::new();
        for (&n, index) in nodes.iter().zip(&indexes) {
            if stored.0.get(index) != recomputed.stored(*index).as_ref() {
                found.extend(((n << level).max(good))..((n + 1) << level).min(bad));
            }
        }
        if !found.is_empty() {
            return Ok(found);
        }
    }
    Ok((good..bad).collect())
}

/// Checks an evidence bundle offline — a directory or a `.tar` / `.tar.gz` archive
/// (`truthtable-collector export`): every `<id>.entry` against its `<id>.tlog-proof`, and each
/// proof's checkpoint against `key`.
pub fn verify_bundle(path: &std::path::Path, key: &VerifierKey) -> anyhow::Result<Report> {
    use anyhow::Context as _;
    let files: std::collections::BTreeMap<String, Vec<u8>> = if path.is_dir() {
        let mut files = std::collections::BTreeMap::new();
        for e in std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
            let e = e.with_context(|| format!("reading {}", path.display()))?;
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            if name.ends_with(".tlog-proof") || name.ends_with(".entry") {
                let body = std::fs::read(e.path()).with_context(|| format!("reading {name}"))?;
                files.insert(name, body);
            }
        }
        files
    } else {
        read_archive(path).with_context(|| format!("reading the archive {}", path.display()))?
    };
    let mut r = Report::default();
    r.say(format!(
        "checking the bundle {} against the key {}",
        path.display(),
        key.as_str()
    ));
    let names: Vec<String> = files
        .keys()
        .filter_map(|n| n.strip_suffix(".tlog-proof").map(str::to_owned))
        .collect();
    for name in names {
        r.total += 1;
        let proof = files
            .get(&format!("{name}.tlog-proof"))
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        let Some(entry) = files.get(&format!("{name}.entry")) else {
            r.problem(format!("{name}: its entry is missing from the bundle"));
            continue;
        };
        match super::proof::TlogProof::parse(&proof).map(|p| (p.verify(entry, key), p.index)) {
            Ok((Ok(c), index)) => {
                r.verified += 1;
                r.say(format!(
                    "ok {name}: index {index}, in the signed checkpoint of size {}",
                    c.size
                ));
            }
            Ok((Err(e), _)) | Err(e) => r.problem(format!("{name}: {e}")),
        }
    }
    let summary = format!("{} of {} records verified", r.verified, r.total);
    r.lines.push(summary);
    Ok(r)
}

/// The regular files at the top level of a tar archive (gzip-compressed or not: told by its
/// first bytes), by name. Anything else in it — directories, links, nested paths — is refused.
fn read_archive(
    path: &std::path::Path,
) -> anyhow::Result<std::collections::BTreeMap<String, Vec<u8>>> {
    use std::io::Read as _;
    let bytes = std::fs::read(path)?;
    let tar_bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice()).read_to_end(&mut out)?;
        out
    } else {
        bytes
    };
    let mut files = std::collections::BTreeMap::new();
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let name = name.strip_prefix("./").unwrap_or(&name).to_owned();
        if name.is_empty() {
            continue;
        }
        if !entry.header().entry_type().is_file() || name.contains('/') {
            anyhow::bail!(
                "{name:?} is not a file at the archive's top level, as export writes them"
            );
        }
        let mut body = Vec::new();
        entry.read_to_end(&mut body)?;
        if files.insert(name.clone(), body).is_some() {
            anyhow::bail!("{name:?} is in the archive twice");
        }
    }
    Ok(files)
}
