//! Whether the store takes writes, tracked from every operation's result and from a background
//! probe, and logged once per change of state (or of the reason it is down).

use std::sync::Mutex;

/// The store's state as `/healthz` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The last operation or probe succeeded.
    Up,
    /// The last operation or probe failed for this reason; the store keeps trying.
    Down(String),
}

impl Health {
    /// True when the store takes writes.
    pub fn is_up(&self) -> bool {
        matches!(self, Health::Up)
    }
}

/// The tracker: updated by whoever talks to the database, read by `/healthz` and `/metrics`.
#[derive(Debug)]
pub struct HealthTracker {
    backend: &'static str,
    state: Mutex<Health>,
}

impl HealthTracker {
    /// A tracker that starts in `initial`, which is not logged.
    pub fn new(backend: &'static str, initial: Health) -> Self {
        HealthTracker {
            backend,
            state: Mutex::new(initial),
        }
    }

    /// The current state.
    pub fn get(&self) -> Health {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Something succeeded: the store is up (logged if it was not).
    pub fn up(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Health::Down(was) = &*state {
            tracing::info!(
                store = self.backend,
                "database available again (was: {was})"
            );
            *state = Health::Up;
        }
    }

    /// Something failed because the database is unavailable: the store is down for `cause`
    /// (logged if it was up, or down for another reason).
    pub fn down(&self, cause: &str) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if *state != Health::Down(cause.to_owned()) {
            tracing::warn!(
                store = self.backend,
                "database unavailable: {cause}; ingest answers 503 until it is back"
            );
            *state = Health::Down(cause.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_follows_the_last_report() {
        let h = HealthTracker::new("postgres", Health::Up);
        h.down("connection refused");
        assert_eq!(h.get(), Health::Down("connection refused".into()));
        h.down("connection refused");
        h.down("the database system is starting up");
        assert_eq!(
            h.get(),
            Health::Down("the database system is starting up".into())
        );
        h.up();
        assert!(h.get().is_up());
    }
}
