//! TruthTable audit collector.
//!
//! Receives capture records (schema `truthtable.capture.v1`) as NDJSON, stores them durably and
//! deduplicated — in an embedded SQLite file, or in a PostgreSQL database that several collector
//! replicas share — and serves them back with an audit view for faithfulness checks.
//! [`run`] is the whole program; [`serve`] runs it on a listener the caller bound (tests use
//! `127.0.0.1:0`).

pub mod audit;
pub mod config;
pub mod digest;
pub mod engine;
pub mod erase;
pub mod frames;
pub mod http;
pub mod indexer;
pub mod ingest;
pub mod lanes;
pub mod log;
pub mod metrics;
pub mod otlp;
pub mod reads;
pub mod record;
pub mod search;
pub mod sse;
pub mod store;
pub mod timestamp;
pub mod web;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use store::CaptureStore as _;

pub use config::Config;
pub use http::{app, AppState};

/// Builds the shared state over an opened store (with the OpenTelemetry exporter, when the
/// configuration turns export on). Call it inside a Tokio runtime.
pub fn state(config: &Config, store: store::Store) -> anyhow::Result<Arc<AppState>> {
    let otlp = otlp::ExportConfig::resolve(&config.otlp)
        .context("OpenTelemetry export")?
        .map(|c| otlp::ExportConfig {
            stall_threshold_ms: config.stall_threshold_ms,
            ..c
        })
        .map(otlp::Exporter::new)
        .transpose()
        .context("OpenTelemetry export")?;
    let log = log::configured_key(config)?
        .map(|key| log::Log::new(key).map(Arc::new))
        .transpose()?;
    if let Some(log) = &log {
        tracing::info!(verifier_key = %log.verifier().as_str(), "verifiable log on");
    }
    let annotator = otlp
        .as_ref()
        .and_then(|e| engine::annotate::Annotator::for_export(&e.config));
    Ok(Arc::new(AppState {
        store,
        metrics: metrics::Metrics::new(),
        ingest_token: config.ingest_token.clone(),
        read_token: config.read_token.clone(),
        verdict_token: config.verdict_token.clone(),
        max_body_bytes: config.max_body_bytes,
        otlp,
        indexer: Arc::new(indexer::Indexer::new()),
        log,
        stall_threshold_ms: config.stall_threshold_ms,
        engines: engine::Engine::all(&config.audit)?,
        annotator,
        admin_token: config.admin_token.clone(),
        erase: Arc::new(erase::Eraser::new(config.retain)),
    }))
}

/// Serves `state` on `listener` (and exports, when export is on) until `shutdown` resolves, lets
/// requests in flight finish, gives the indexer a few seconds to write the digests it was handed,
/// lets the exporter finish its request and save its cursor, then closes the store. Meanwhile
/// gives every stored record its digest ([`indexer::run`]).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let exporter = state
        .otlp
        .is_some()
        .then(|| tokio::spawn(otlp::run(Arc::clone(&state))));
    let handoffs: Vec<_> = state
        .engines
        .iter()
        .map(|e| tokio::spawn(engine::handoff::run(Arc::clone(&state), Arc::clone(e))))
        .collect();
    let indexing = tokio::spawn({
        let state = Arc::clone(&state);
        // One collector owns a SQLite file; a shared database may hold records a replica that
        // stopped stored and never indexed.
        let rescan =
            matches!(state.store, store::Store::Postgres(_)).then_some(indexer::RESCAN_EVERY);
        async move { indexer::run(&state.store, &state.indexer, rescan).await }
    });
    let logging = state.log.clone().map(|log| {
        let state = Arc::clone(&state);
        let leased = matches!(state.store, store::Store::Postgres(_));
        tokio::spawn(async move { log::sequencer::run(&state.store, &log, leased).await })
    });
    let annotating = state.annotator.clone().map(|a| {
        let state = Arc::clone(&state);
        tokio::spawn(engine::annotate::run(state, a))
    });
    let retention = state.erase.retain().map(|_| {
        let state = Arc::clone(&state);
        tokio::spawn(async move { erase::run_retention(&state).await })
    });
    // Streams of batches (`lanes`) end at shutdown, after the batch each is storing.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let router = app(Arc::clone(&state))
        .route_service(lanes::PATH, lanes::service(Arc::clone(&state), stopping));
    // Without TCP_NODELAY an acknowledgement written while the connection's last small write
    // (an HTTP/2 window update, the acknowledgement before it) waits for the proxy's delayed ACK
    // would wait with it: a held end would wait tens of milliseconds (BENCHMARKS.md).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY on a connection");
        }
    });
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop.send(true);
        })
        .await
        .context("serving HTTP");
    let left = state.indexer.settle(SHUTDOWN_INDEXING).await;
    if left > 0 {
        tracing::info!(
            records = left,
            "stopping with records not yet indexed; the next start gives them their digests"
        );
    }
    indexing.abort();
    let _ = indexing.await;
    if let Some(task) = annotating {
        task.abort();
        let _ = task.await;
    }
    if let Some(task) = retention {
        task.abort();
        let _ = task.await;
        state.erase.release(&state.store).await;
    }
    if let (Some(task), Some(log)) = (logging, &state.log) {
        task.abort();
        let _ = task.await;
        log::sequencer::release(&state.store, log).await;
    }
    if let (Some(task), Some(ex)) = (exporter, &state.otlp) {
        ex.stop();
        if let Err(e) = task.await {
            tracing::error!(error = %e, "the exporter task failed");
        }
    }
    for e in &state.engines {
        e.stop();
    }
    for task in handoffs {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "an audit hand-off task failed");
        }
    }
    served?;
    state.store.close().await.context("closing the store")?;
    tracing::info!("store closed; bye");
    Ok(())
}

/// How long a stopping collector waits for the indexer to write what it was handed.
const SHUTDOWN_INDEXING: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the SIGTERM and SIGINT handlers now, and returns a future that resolves on either.
pub fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; finishing requests in flight"),
            _ = int.recv() => tracing::info!("SIGINT received; finishing requests in flight"),
        }
    })
}

/// Opens the store, binds the listen address and serves until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    // A bad export setting is a start-up error, before anything is opened.
    otlp::ExportConfig::resolve(&config.otlp).context("OpenTelemetry export")?;
    engine::Engine::all(&config.audit)?;
    let store = store::Store::open(&config).await.with_context(|| {
        format!(
            "opening the store at {}",
            match &config.db {
                config::DbTarget::Sqlite(path) => path.display().to_string(),
                config::DbTarget::Postgres(_) => "the PostgreSQL database".to_owned(),
            }
        )
    })?;
    let db = store.describe();
    let backend = store.backend();
    let state = state(&config, store)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!(
        store = backend,
        db = %db,
        ingest_auth = config.ingest_token.is_some(),
        read_auth = config.read_token.is_some(),
        "truthtable-collector listening on {addr}"
    );
    serve(listener, state, shutdown).await
}
