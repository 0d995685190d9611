//! One engine's hand-off loop: hold the engine's cursor lease, read the records after it, hand
//! the selected ones over (several at once), store each verdict as it arrives, and move the
//! cursor past a batch once every capture of it has a verdict. An engine that cannot be reached
//! is asked again with backoff, for as long as it takes; the cursor waits meanwhile.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::request::{Handoff, Skip};
use super::{Attempt, Engine, Verdict};
use crate::http::AppState;
use crate::otlp::export::{Backoff, Rng};
use crate::store::{CaptureStore as _, Cursor, NewVerdict};

/// How long a claim on an engine's cursor lasts; it is renewed every third of that.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often the store is looked at when ingest has not said there is something new.
const POLL: Duration = Duration::from_secs(1);
/// How long to wait before asking an unavailable store again.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Most records read at once.
const BATCH: u32 = 64;
/// The first wait after a failed attempt; it doubles up to `--audit-retry-max-ms`.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// Hands captures to `engine` until it is stopped.
pub async fn run(state: Arc<AppState>, engine: Arc<Engine>) {
    tracing::info!(engine = %engine.name, "handing stored captures to the audit engine");
    // Asked beside the loop, so an engine that does not answer delays neither it nor a stop.
    let asked = Arc::clone(&engine);
    let health = tokio::spawn(async move {
        match asked.health().await {
            Ok(health) => tracing::info!(engine = %asked.name, "audit engine {health}"),
            Err(why) => {
                tracing::warn!(engine = %asked.name, "audit engine health check: {why}; captures wait in the store until it answers")
            }
        }
    });
    let mut stop = engine.stop.subscribe();
    let mut lease: Option<(Cursor, Instant)> = None;
    let name = engine.cursor_name();
    loop {
        if *stop.borrow() {
            break;
        }
        let cursor = match hold(&state, &engine, &mut lease).await {
            Ok(Some(c)) => c,
            Ok(None) | Err(()) => {
                if !pause(&mut stop, LEASE / 3).await {
                    break;
                }
                continue;
            }
        };
        let records = match state.store.read_after(cursor, BATCH).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(engine = %engine.name, error = %e, "hand-off: reading the store failed");
                if !pause(&mut stop, STORE_RETRY).await {
                    break;
                }
                continue;
            }
        };
        let Some(last) = records.last().map(|r| r.cursor) else {
            engine.stats.oldest_in_hand_ms.store(0, Ordering::Relaxed);
            tokio::select! {
                _ = engine.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        // Deriving views decodes bodies: CPU work, kept off the async workers.
        let selection = engine.selection.clone();
        let selected = tokio::task::spawn_blocking(move || {
            records
                .into_iter()
                .map(|r| (r.seq, r.id, selection.select(&r.raw)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut todo: Vec<(i64, Handoff)> = Vec::new();
        for (seq, id, s) in selected {
            match s {
                Ok(h) => todo.push((seq, h)),
                Err(Skip::Unreadable(why)) => {
                    engine.stats.skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(engine = %engine.name, capture = %id, "not handed over: the stored record no longer reads ({why})");
                }
                Err(_) => {
                    engine.stats.skipped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let done = match judged(&state, &engine, &todo, &mut stop).await {
            Some(d) => d,
            None => break,
        };
        todo.retain(|(_, h)| !done.contains(&h.capture_id));
        let oldest = todo
            .iter()
            .map(|(_, h)| h.request.timestamp_ms)
            .filter(|t| *t > 0)
            .min()
            .unwrap_or(0);
        engine
            .stats
            .oldest_in_hand_ms
            .store(oldest, Ordering::Relaxed);
        match hand_over(&state, &engine, todo, &mut stop, &mut lease).await {
            Handed::All => {}
            Handed::Stopped => break,
            Handed::LostLease => continue,
        }
        match state
            .store
            .save_cursor(name.clone(), engine.holder.clone(), last, LEASE)
            .await
        {
            Ok(true) => lease = Some((last, Instant::now())),
            Ok(false) => {
                tracing::warn!(engine = %engine.name, "another collector took the hand-off cursor over; standing by");
                lease = None;
                engine.stats.handing_off.store(false, Ordering::Relaxed);
            }
            // The verdicts are stored; the batch is read again and its judged captures skipped.
            Err(e) => {
                tracing::debug!(engine = %engine.name, error = %e, "hand-off: saving the cursor failed")
            }
        }
    }
    health.abort();
    if lease.is_some() {
        let _ = state
            .store
            .release_cursor(name, engine.holder.clone())
            .await;
    }
    engine.stats.handing_off.store(false, Ordering::Relaxed);
    tracing::info!(engine = %engine.name, "audit hand-off stopped");
}

/// Waits `d`; false when the loop is asked to stop.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => !*stop.borrow(),
        _ = stop.changed() => false,
    }
}

/// The cursor, claiming or renewing the lease when due. `Ok(None)`: another collector holds
/// it; `Err(())`: the store cannot say now.
async fn hold(
    state: &AppState,
    engine: &Engine,
    lease: &mut Option<(Cursor, Instant)>,
) -> Result<Option<Cursor>, ()> {
    if let Some((cursor, renewed)) = *lease {
        if renewed.elapsed() < LEASE / 3 {
            return Ok(Some(cursor));
        }
    }
    match state
        .store
        .claim_cursor(engine.cursor_name(), engine.holder.clone(), LEASE)
        .await
    {
        Ok(Some(cursor)) => {
            if lease.is_none() {
                tracing::info!(engine = %engine.name, cursor = %cursor, "this collector hands captures to the engine (it holds the engine's cursor)");
            }
            *lease = Some((cursor, Instant::now()));
            engine.stats.handing_off.store(true, Ordering::Relaxed);
            Ok(Some(cursor))
        }
        Ok(None) => {
            if lease.take().is_some() {
                tracing::info!(engine = %engine.name, "another collector hands captures to this engine; standing by");
            }
            engine.stats.handing_off.store(false, Ordering::Relaxed);
            Ok(None)
        }
        Err(e) => {
            tracing::debug!(engine = %engine.name, error = %e, "hand-off cursor not reachable");
            Err(())
        }
    }
}

/// The captures of `todo` this engine has judged already (a batch read again after a crash);
/// `None` when stopped while the store was unavailable.
async fn judged(
    state: &AppState,
    engine: &Engine,
    todo: &[(i64, Handoff)],
    stop: &mut watch::Receiver<bool>,
) -> Option<Vec<String>> {
    if todo.is_empty() {
        return Some(Vec::new());
    }
    let ids: Vec<String> = todo.iter().map(|(_, h)| h.capture_id.clone()).collect();
    loop {
        match state.store.judged(engine.name.clone(), ids.clone()).await {
            Ok(done) => return Some(done),
            Err(e) => {
                tracing::debug!(engine = %engine.name, error = %e, "hand-off: reading verdicts failed");
                if !pause(stop, STORE_RETRY).await {
                    return None;
                }
            }
        }
    }
}

enum Handed {
    All,
    Stopped,
    LostLease,
}

/// Hands `todo` over, at most `engine.concurrency` at once, renewing the lease meanwhile.
async fn hand_over(
    state: &Arc<AppState>,
    engine: &Arc<Engine>,
    todo: Vec<(i64, Handoff)>,
    stop: &mut watch::Receiver<bool>,
    lease: &mut Option<(Cursor, Instant)>,
) -> Handed {
    let mut waiting = todo.into_iter();
    let mut tasks = JoinSet::new();
    let spawn = |tasks: &mut JoinSet<bool>, (seq, h): (i64, Handoff)| {
        tasks.spawn(judge_one(Arc::clone(state), Arc::clone(engine), seq, h));
    };
    for item in waiting.by_ref().take(engine.concurrency) {
        spawn(&mut tasks, item);
    }
    let mut renew = tokio::time::interval(LEASE / 3);
    renew.tick().await;
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => return Handed::All,
                Some(Ok(true)) => {
                    if let Some(item) = waiting.next() {
                        spawn(&mut tasks, item);
                    }
                }
                Some(Ok(false)) => {
                    tasks.abort_all();
                    return Handed::Stopped;
                }
                Some(Err(e)) => {
                    tracing::error!(engine = %engine.name, error = %e, "a hand-off task failed; its batch is read again");
                    tasks.abort_all();
                    return Handed::LostLease;
                }
            },
            _ = renew.tick() => {
                if let Ok(None) = hold(state, engine, lease).await {
                    tasks.abort_all();
                    return Handed::LostLease;
                }
            }
            _ = stop.changed() => {
                tasks.abort_all();
                return Handed::Stopped;
            }
        }
    }
}

/// Hands one capture over until the engine answers, and stores what it answered. False when
/// stopped first.
async fn judge_one(state: Arc<AppState>, engine: Arc<Engine>, seq: i64, h: Handoff) -> bool {
    let mut stop = engine.stop.subscribe();
    let mut backoff = Backoff::new(FIRST_RETRY, engine.retry_max);
    let mut rng = Rng(crate::otlp::export::seed());
    engine.stats.sent.fetch_add(1, Ordering::Relaxed);
    let mut verdict = loop {
        match engine.judge(&h).await {
            Attempt::Done(v) => break v,
            Attempt::Bad(why) => {
                tracing::error!(engine = %engine.name, capture = %h.capture_id, "the audit engine's answer is unusable: {why}; kept as an engine error on the capture");
                break Verdict::error(&engine.name, why, h.answer_complete, super::now());
            }
            Attempt::Retry(why) => {
                engine.stats.retried.fetch_add(1, Ordering::Relaxed);
                if engine.stats.up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(engine = %engine.name, "the audit engine cannot be reached ({why}); its captures wait in the store and are sent again with backoff");
                } else {
                    tracing::debug!(engine = %engine.name, capture = %h.capture_id, "audit engine still unreachable ({why})");
                }
                if !pause(&mut stop, backoff.next(rng.unit())).await {
                    return false;
                }
            }
        }
    };
    if !engine.stats.up.swap(true, Ordering::Relaxed) {
        tracing::info!(engine = %engine.name, "the audit engine answers");
    }
    verdict.capture_id = h.capture_id.clone();
    let new = NewVerdict {
        capture_seq: seq,
        capture_id: h.capture_id.clone(),
        engine: engine.name.clone(),
        status: verdict.status.as_str().to_owned(),
        score: verdict.score,
        hallucination: verdict.hallucination,
        verdict: serde_json::to_string(&verdict).unwrap_or_default(),
        received_at: verdict.received_at.clone(),
        annotate: state.annotates(&verdict),
    };
    loop {
        match state.store.add_verdict(new.clone()).await {
            Ok(()) => break,
            Err(e) => {
                tracing::debug!(engine = %engine.name, capture = %h.capture_id, error = %e, "storing a verdict failed; trying again");
                if !pause(&mut stop, STORE_RETRY).await {
                    return false;
                }
            }
        }
    }
    state.verdict_stored();
    use super::verdict::VerdictStatus;
    match verdict.status {
        VerdictStatus::Error => engine.stats.failed.fetch_add(1, Ordering::Relaxed),
        VerdictStatus::Completed | VerdictStatus::Failed => {
            engine.stats.judged.fetch_add(1, Ordering::Relaxed)
        }
        VerdictStatus::Pending => 0,
    };
    true
}
