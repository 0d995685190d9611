//! Which root contexts of the filter are alive in this Envoy, kept in Envoy's shared data (one
//! value for every VM of the same `vm_id`).
//!
//! Each root that ticks keeps an entry: its plugin (so a root being replaced can tell whether a
//! successor of the same plugin is running somewhere, even in another VM), when it last ticked,
//! and what it has added to the proxy's `truthtable_queue_*` gauges. A root that stops without
//! removing its entry — its VM crashed and was reloaded — leaves an entry that goes stale; the
//! root that finds it subtracts the gauges it held and counts its records as lost, so the totals
//! stay true after a crash.
//!
//! The host reads the value, changes it with the functions below and writes it back with the
//! compare-and-swap token it read; a concurrent writer makes it start again.

use serde::{Deserialize, Serialize};

/// The shared-data key of the registry.
pub const KEY: &str = "truthtable.roots.v1";

/// One live root context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Unique per root context in the proxy (context ids repeat across VMs).
    pub root: u64,
    /// The plugin this root runs: Envoy's plugin name and root id.
    pub plugin: String,
    /// When it last ticked (host time, ms since the epoch).
    pub seen_ms: u64,
    /// Without a tick for this long, the root is gone.
    pub stale_ms: u64,
    /// Shutting down: not a successor for anyone.
    #[serde(default)]
    pub draining: bool,
    /// What it has added to `truthtable_queue_bytes` and `truthtable_queue_records`.
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub records: u64,
}

/// Every entry, in the order roots first ticked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    #[serde(default)]
    pub roots: Vec<Entry>,
}

impl Registry {
    /// The registry stored under [`KEY`]; nothing, or bytes that are not one, read as empty.
    pub fn decode(bytes: Option<&[u8]>) -> Registry {
        bytes
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default()
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Adds `entry`, or replaces the entry of the same root.
    pub fn update(&mut self, entry: Entry) {
        match self.roots.iter_mut().find(|e| e.root == entry.root) {
            Some(e) => *e = entry,
            None => self.roots.push(entry),
        }
    }

    pub fn remove(&mut self, root: u64) -> Option<Entry> {
        let i = self.roots.iter().position(|e| e.root == root)?;
        Some(self.roots.remove(i))
    }

    /// Removes and returns the entries of roots that have not ticked within their `stale_ms`.
    pub fn reap(&mut self, now_ms: u64) -> Vec<Entry> {
        let (stale, live) = std::mem::take(&mut self.roots)
            .into_iter()
            .partition(|e| now_ms.saturating_sub(e.seen_ms) > e.stale_ms);
        self.roots = live;
        stale
    }

    /// Whether another root of `plugin`, not shutting down and not stale, is running: one that
    /// will take over what `me` hands on.
    pub fn has_successor(&self, me: u64, plugin: &str, now_ms: u64) -> bool {
        self.roots.iter().any(|e| {
            e.root != me
                && e.plugin == plugin
                && !e.draining
                && now_ms.saturating_sub(e.seen_ms) <= e.stale_ms
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(root: u64, plugin: &str, seen_ms: u64) -> Entry {
        Entry {
            root,
            plugin: plugin.to_owned(),
            seen_ms,
            stale_ms: 1000,
            draining: false,
            bytes: 0,
            records: 0,
        }
    }

    #[test]
    fn entries_round_trip_and_garbage_reads_as_empty() {
        let mut r = Registry::default();
        r.update(entry(1, "truthtable/truthtable", 10));
        r.update(Entry {
            bytes: 300,
            records: 2,
            ..entry(2, "other/x", 20)
        });
        assert_eq!(Registry::decode(Some(&r.encode())), r);
        assert_eq!(Registry::decode(None), Registry::default());
        assert_eq!(Registry::decode(Some(b"{not json")), Registry::default());
        assert_eq!(Registry::decode(Some(b"[1,2]")), Registry::default());
    }

    #[test]
    fn update_replaces_the_entry_of_the_same_root() {
        let mut r = Registry::default();
        r.update(entry(1, "p", 10));
        r.update(entry(1, "p", 50));
        assert_eq!(r.roots, vec![entry(1, "p", 50)]);
        assert_eq!(r.remove(1), Some(entry(1, "p", 50)));
        assert_eq!(r.remove(1), None);
    }

    #[test]
    fn a_successor_is_another_live_root_of_the_same_plugin() {
        let mut r = Registry::default();
        r.update(entry(1, "p", 1000));
        assert!(!r.has_successor(1, "p", 1000), "itself is no successor");
        r.update(entry(2, "other", 1000));
        assert!(!r.has_successor(1, "p", 1000), "another plugin is none");
        r.update(Entry {
            draining: true,
            ..entry(3, "p", 1000)
        });
        assert!(
            !r.has_successor(1, "p", 1000),
            "a root shutting down is none"
        );
        r.update(entry(4, "p", 1000));
        assert!(r.has_successor(1, "p", 1500));
        assert!(!r.has_successor(1, "p", 2001), "a stale one is none");
    }

    #[test]
    fn stale_entries_are_reaped_with_what_they_held() {
        let mut r = Registry::default();
        r.update(Entry {
            bytes: 4096,
            records: 7,
            ..entry(1, "p", 0)
        });
        r.update(entry(2, "p", 900));
        let reaped = r.reap(1500);
        assert_eq!(reaped.len(), 1);
        assert_eq!(
            (reaped[0].root, reaped[0].bytes, reaped[0].records),
            (1, 4096, 7)
        );
        assert_eq!(r.roots, vec![entry(2, "p", 900)]);
        assert!(r.reap(1500).is_empty(), "reaped once");
    }

    proptest::proptest! {
        #[test]
        fn any_stored_bytes_decode_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..100)) {
            let _ = Registry::decode(Some(&bytes));
        }
    }
}
