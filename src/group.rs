//! Finished exchanges waiting to be written as records, a few at a time.
//!
//! Writing one record right after Envoy has run the rest of an exchange finds the writer's code
//! and tables cold; writing several in a row pays that once. A group is written when it holds
//! [`RECORDS`] exchanges or [`BODY_BYTES`] of kept bodies (so large bodies are not held; less when
//! a batch is smaller, so a group never holds back a full batch), and at every tick, so a record
//! waits no longer than its batch would anyway.

/// Exchanges written together, at most.
pub const RECORDS: usize = 16;

/// Kept body bytes held before the group is written, at most (one larger exchange is written at
/// once).
pub const BODY_BYTES: usize = 64 << 10;

/// Exchanges in the order they finished, with the body bytes they keep.
#[derive(Debug)]
pub struct Group<T> {
    items: Vec<T>,
    body_bytes: usize,
    body_bytes_limit: usize,
}

impl<T> Group<T> {
    /// A group for a worker whose batches hold `batch_max_bytes`.
    pub fn new(batch_max_bytes: usize) -> Group<T> {
        Group {
            items: Vec::with_capacity(RECORDS),
            body_bytes: 0,
            body_bytes_limit: BODY_BYTES.min(batch_max_bytes),
        }
    }

    /// Adds a finished exchange; true when the group is due to be written.
    pub fn push(&mut self, item: T, body_bytes: usize) -> bool {
        self.items.push(item);
        self.body_bytes += body_bytes;
        self.items.len() >= RECORDS || self.body_bytes >= self.body_bytes_limit
    }

    /// Hands over every held exchange, oldest first, leaving the group empty.
    pub fn drain(&mut self) -> std::vec::Drain<'_, T> {
        self.body_bytes = 0;
        self.items.drain(..)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_exchanges_are_written_sixteen_at_a_time_in_order() {
        let mut group = Group::new(256 << 10);
        for i in 0..RECORDS - 1 {
            assert!(!group.push(i, 2048), "due after {} exchanges", i + 1);
        }
        assert!(group.push(RECORDS - 1, 2048));
        let order: Vec<usize> = group.drain().collect();
        assert_eq!(order, (0..RECORDS).collect::<Vec<_>>());
        assert!(group.is_empty());
        // The count starts again.
        assert!(!group.push(99, 2048));
        assert_eq!(group.len(), 1);
    }

    #[test]
    fn a_large_body_makes_the_group_due_at_once_with_what_came_before() {
        let mut group = Group::new(256 << 10);
        assert!(!group.push("small", 1024));
        assert!(group.push("large", BODY_BYTES));
        assert_eq!(group.drain().collect::<Vec<_>>(), ["small", "large"]);
        // Body bytes start again from zero after a drain.
        assert!(!group.push("small again", BODY_BYTES - 1));
    }

    #[test]
    fn with_small_batches_a_group_holds_no_more_body_bytes_than_a_batch() {
        let mut group = Group::new(1024);
        assert!(!group.push(1, 512));
        assert!(group.push(2, 512));
        assert!(group.push(3, 2048));
    }

    #[test]
    fn bodies_adding_up_make_the_group_due() {
        let mut group = Group::new(256 << 10);
        assert!(!group.push(1, BODY_BYTES / 2));
        assert!(group.push(2, BODY_BYTES / 2));
    }
}
