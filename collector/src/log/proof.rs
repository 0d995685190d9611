//! The C2SP `tlog-proof` text: `c2sp.org/tlog-proof@v1`, an `index N` line, the RFC 6962
//! inclusion proof one base64 hash a line (the leaf's sibling first), an empty line, then the
//! signed checkpoint verbatim. A file of it proves, offline, that an entry is in the log.

use super::note::{Checkpoint, NoteError, VerifierKey};
use super::tree::{self, Hash};

/// The first line of every proof.
pub const HEADER: &str = "c2sp.org/tlog-proof@v1";

/// An inclusion proof with the signed checkpoint it leads to.
#[derive(Debug, Clone, PartialEq)]
pub struct TlogProof {
    /// The entry's index in the log.
    pub index: u64,
    /// The audit path, the leaf's sibling first.
    pub path: Vec<Hash>,
    /// The signed checkpoint, verbatim.
    pub checkpoint: String,
}

/// Why a proof does not prove.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The text is not a `tlog-proof`.
    #[error("not a c2sp.org/tlog-proof@v1: {0}")]
    Malformed(String),
    /// Its checkpoint is not signed by the key (or not this log's).
    #[error("{0}")]
    Checkpoint(#[from] NoteError),
    /// The path does not lead from the entry to the checkpoint's root.
    #[error("the entry at index {0} is not in the tree of the checkpoint (size {1})")]
    NotIncluded(u64, u64),
}

impl TlogProof {
    /// The proof as text.
    pub fn to_text(&self) -> String {
        let mut out = format!("{HEADER}\nindex {}\n", self.index);
        for h in &self.path {
            out.push_str(&h.to_string());
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.checkpoint);
        out
    }

    /// Reads a proof (an `extra` line is accepted and ignored: it is not authenticated).
    pub fn parse(text: &str) -> Result<TlogProof, ProofError> {
        let bad = |why: &str| ProofError::Malformed(why.to_owned());
        let (head, checkpoint) = text
            .split_once("\n\n")
            .ok_or_else(|| bad("no empty line before the checkpoint"))?;
        let mut lines = head.split('\n');
        if lines.next() != Some(HEADER) {
            return Err(bad("the first line is not c2sp.org/tlog-proof@v1"));
        }
        let mut line = lines.next();
        if line.is_some_and(|l| l.starts_with("extra ")) {
            line = lines.next();
        }
        let index = line
            .and_then(|l| l.strip_prefix("index "))
            .ok_or_else(|| bad("no index line"))?;
        let parsed: u64 = index
            .parse()
            .map_err(|_| bad("the index is not a decimal number"))?;
        if parsed.to_string() != index {
            return Err(bad("the index is not a canonical decimal number"));
        }
        let path = lines
            .map(|l| Hash::parse_hash(l).map_err(|_| bad(&format!("{l:?} is not a base64 hash"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TlogProof {
            index: parsed,
            path,
            checkpoint: checkpoint.to_owned(),
        })
    }

    /// Checks that `entry` is at the proof's index in the tree of its checkpoint, and that the
    /// checkpoint is signed by `key`; returns the checkpoint.
    pub fn verify(&self, entry: &[u8], key: &VerifierKey) -> Result<Checkpoint, ProofError> {
        let checkpoint = key.open(&self.checkpoint)?;
        tree::check_inclusion(
            &self.path,
            checkpoint.size,
            checkpoint.root,
            self.index,
            tree::leaf_hash(entry),
        )
        .map_err(|_| ProofError::NotIncluded(self.index, checkpoint.size))?;
        Ok(checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::super::note::LogKey;
    use super::super::tree::{DenseTree, Query};
    use super::*;

    #[test]
    fn a_proof_round_trips_through_its_text_and_verifies_only_its_entry() {
        let key = LogKey::generate("example.com/log").unwrap();
        let vkey = VerifierKey::parse(key.verifier_key()).unwrap();
        let mut t = DenseTree::new();
        for i in 0..11 {
            t.push(tree::leaf_hash(format!("e{i}").as_bytes())).unwrap();
        }
        let root = t.answer(Query::Root(11)).unwrap()[0];
        let proof = TlogProof {
            index: 6,
            path: t.answer(Query::Inclusion { index: 6, size: 11 }).unwrap(),
            checkpoint: key.sign_checkpoint(11, root).unwrap(),
        };
        let text = proof.to_text();
        assert!(text.starts_with("c2sp.org/tlog-proof@v1\nindex 6\n"));
        assert!(text.ends_with(&proof.checkpoint));
        let parsed = TlogProof::parse(&text).unwrap();
        assert_eq!(parsed, proof);
        assert_eq!(parsed.verify(b"e6", &vkey).unwrap().size, 11);
        assert!(matches!(
            parsed.verify(b"e5", &vkey),
            Err(ProofError::NotIncluded(6, 11))
        ));
        let with_extra = text.replacen("index 6", "extra AAAA\nindex 6", 1);
        assert_eq!(TlogProof::parse(&with_extra).unwrap(), proof);
        for bad in [
            "",
            "c2sp.org/tlog-proof@v2\nindex 1\n\nx",
            "c2sp.org/tlog-proof@v1\nindex 01\n\nx",
            "c2sp.org/tlog-proof@v1\nindex 1\nnot-base64\n\nx",
        ] {
            assert!(TlogProof::parse(bad).is_err(), "{bad:?}");
        }
    }
}
