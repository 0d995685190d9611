//! The verifiable log: every stored record appended once to an append-only Merkle tree (RFC 6962
//! / RFC 9162 hashing), with signed checkpoints anyone can check offline.
//!
//! - [`tree`]: the tree and its proofs, pure (no I/O);
//! - [`note`]: keys and signed checkpoints (C2SP `tlog-checkpoint` in a C2SP `signed-note`,
//!   Ed25519, Go `sumdb/note` key formats);
//! - [`proof`]: the C2SP `tlog-proof` text.

pub mod note;
pub mod proof;
pub mod tree;

pub use note::{Checkpoint, LogKey, NoteError, VerifierKey};
pub use proof::TlogProof;
pub use tree::{Hash, Query};
