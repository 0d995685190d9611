//! The Merkle tree of the log, hashed as RFC 6962 / RFC 9162 (SHA-256; leaf = H(0x00 ‖ entry),
//! node = H(0x01 ‖ left ‖ right)), and its proofs. No I/O.
//!
//! The tree is kept as Go's `sumdb/tlog` keeps it: every complete subtree's hash is stored once,
//! at a dense index ([`tlog::stored_hash_index`]), so a root or a proof at any size reads at most
//! a few dozen stored hashes. The arithmetic is Cloudflare's port of that package
//! (`tlog_tiles`); this module says which stored hashes an answer needs ([`Query::indexes`]), so
//! a store can fetch exactly those and then answer ([`Query::answer`]).

use std::cell::RefCell;
use std::collections::HashMap;

pub use tlog_tiles::tlog::Hash;
use tlog_tiles::tlog::{self, HashReader};

/// A failure of the tree arithmetic: a proof that does not verify, or hashes that are missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// The proof does not prove what it claims.
    #[error("the proof does not verify")]
    InvalidProof,
    /// The sizes or the index asked for do not fit the tree.
    #[error("{0}")]
    OutOfRange(String),
    /// A stored hash the answer needs is not there.
    #[error("stored hash {0} is missing")]
    Missing(u64),
    /// Any other failure of the arithmetic.
    #[error("tree: {0}")]
    Other(String),
}

impl From<tlog::Error> for TreeError {
    fn from(e: tlog::Error) -> Self {
        match e {
            tlog::Error::InvalidProof => TreeError::InvalidProof,
            other => TreeError::Other(other.to_string()),
        }
    }
}

/// The hash of a leaf: SHA-256(0x00 ‖ entry).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    tlog::record_hash(entry)
}

/// The hash of an interior node: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: Hash, right: Hash) -> Hash {
    tlog::node_hash(left, right)
}

/// The stored index of the leaf hash of record `index`.
pub fn leaf_index(index: u64) -> u64 {
    stored_index(0, index)
}

/// The stored index of the hash of the `n`th complete subtree of 2^`level` records.
pub fn stored_index(level: u8, n: u64) -> u64 {
    tlog::stored_hash_index(level, n)
}

/// Stored hashes by their index: those a store read, and those appending made.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hashes(pub HashMap<u64, Hash>);

impl HashReader for Hashes {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog::Error> {
        indexes
            .iter()
            .map(|i| self.0.get(i).copied().ok_or(tlog::Error::IndexesNotInTree))
            .collect()
    }
}

/// Every stored hash of a tree, densely by index (the offline verifier's whole tree in memory:
/// 64 bytes a record).
#[derive(Debug, Clone, Default)]
pub struct DenseTree {
    size: u64,
    hashes: Vec<Hash>,
}

impl HashReader for DenseTree {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog::Error> {
        indexes
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| self.hashes.get(i).copied())
                    .ok_or(tlog::Error::IndexesNotInTree)
            })
            .collect()
    }
}

impl DenseTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records in the tree.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf (by its hash).
    pub fn push(&mut self, leaf: Hash) -> Result<(), TreeError> {
        let stored = tlog::stored_hashes_for_record_hash(self.size, leaf, self)?;
        self.hashes.extend(stored);
        self.size += 1;
        Ok(())
    }

    /// The leaf hash of record `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.stored(leaf_index(index))
    }

    /// The hash at stored index `index`.
    pub fn stored(&self, index: u64) -> Option<Hash> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.hashes.get(i).copied())
    }

    /// Answers a query from the whole tree.
    pub fn answer(&self, query: Query) -> Result<Vec<Hash>, TreeError> {
        query.check(self.size)?;
        query.run(self)
    }
}

/// Remembers which stored hashes a computation reads, and answers zeros: which hashes a root or
/// a proof needs does not depend on their values.
struct Recorder(RefCell<Vec<u64>>);

impl HashReader for Recorder {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog::Error> {
        self.0.borrow_mut().extend_from_slice(indexes);
        Ok(vec![Hash::default(); indexes.len()])
    }
}

/// What can be asked of a stored tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// The root of the tree of this many records (one hash).
    Root(u64),
    /// The RFC 6962 audit path of record `index` in the tree of `size` records.
    Inclusion {
        /// The record's index.
        index: u64,
        /// The tree's size.
        size: u64,
    },
    /// The RFC 6962 consistency proof from the tree of `old` records to that of `new`.
    Consistency {
        /// The earlier size.
        old: u64,
        /// The later size.
        new: u64,
    },
}

impl Query {
    /// Whether the query fits a tree of `size` records.
    pub fn check(self, size: u64) -> Result<(), TreeError> {
        let fits = match self {
            Query::Root(n) => n <= size,
            Query::Inclusion { index, size: n } => index < n && n <= size,
            Query::Consistency { old, new } => old <= new && new <= size,
        };
        if fits {
            Ok(())
        } else {
            Err(TreeError::OutOfRange(match self {
                Query::Root(n) => format!("no tree of size {n}: the log holds {size} records"),
                Query::Inclusion { index, size: n } => format!(
                    "no record {index} in a tree of size {n} (the log holds {size} records)"
                ),
                Query::Consistency { old, new } => format!(
                    "no consistency proof from size {old} to {new}: old must be at most new, and new at most {size}"
                ),
            }))
        }
    }

    /// The stored hashes the answer reads.
    pub fn indexes(self) -> Result<Vec<u64>, TreeError> {
        let recorder = Recorder(RefCell::new(Vec::new()));
        self.run(&recorder)?;
        let mut indexes = recorder.0.into_inner();
        indexes.sort_unstable();
        indexes.dedup();
        Ok(indexes)
    }

    /// The answer, from (at least) the hashes [`Query::indexes`] named.
    pub fn answer(self, hashes: &Hashes) -> Result<Vec<Hash>, TreeError> {
        self.run(hashes)
    }

    fn run(self, r: &impl HashReader) -> Result<Vec<Hash>, TreeError> {
        let missing = |e: tlog::Error| match e {
            tlog::Error::IndexesNotInTree => TreeError::Other(
                "a stored hash the answer needs is missing from the store".to_owned(),
            ),
            other => other.into(),
        };
        match self {
            Query::Root(n) => Ok(vec![tlog::tree_hash(n, r).map_err(missing)?]),
            Query::Inclusion { index, size } => tlog::prove_record(size, index, r).map_err(missing),
            Query::Consistency { old, new } if old == new || old == 0 => Ok(Vec::new()),
            Query::Consistency { old, new } => tlog::prove_tree(new, old, r).map_err(missing),
        }
    }
}

/// The stored hashes a tree of `size` records needs to take more leaves: the roots of its
/// complete subtrees.
pub fn frontier(size: u64) -> Vec<u64> {
    if size == 0 {
        Vec::new()
    } else {
        tlog::sub_tree_index(0, size, Vec::new())
    }
}

/// Appends `leaves` to a tree of `size` records whose [`frontier`] is in `known`; returns the
/// stored hashes that appending made, by index, in order (and adds them to `known`).
pub fn append(
    size: u64,
    leaves: &[Hash],
    known: &mut Hashes,
) -> Result<Vec<(u64, Hash)>, TreeError> {
    let mut made = Vec::with_capacity(leaves.len() * 2);
    for (n, leaf) in (size..).zip(leaves) {
        let stored = tlog::stored_hashes_for_record_hash(n, *leaf, known)?;
        let start = tlog::stored_hash_index(0, n);
        for (i, h) in (start..).zip(stored) {
            known.0.insert(i, h);
            made.push((i, h));
        }
    }
    Ok(made)
}

/// Verifies that `proof` is the audit path of a record with leaf hash `leaf` at `index` in the
/// tree of `size` records whose root is `root`.
pub fn check_inclusion(
    proof: &[Hash],
    size: u64,
    root: Hash,
    index: u64,
    leaf: Hash,
) -> Result<(), TreeError> {
    if index >= size {
        return Err(TreeError::InvalidProof);
    }
    tlog::check_record(&proof.to_vec(), size, root, index, leaf).map_err(Into::into)
}

/// Verifies that `proof` shows the tree of `old` records with root `old_root` to be a prefix of
/// the tree of `new` records with root `new_root`.
pub fn check_consistency(
    proof: &[Hash],
    old: u64,
    old_root: Hash,
    new: u64,
    new_root: Hash,
) -> Result<(), TreeError> {
    match (old, new) {
        _ if old > new => Err(TreeError::InvalidProof),
        _ if old == new => {
            if proof.is_empty() && old_root == new_root {
                Ok(())
            } else {
                Err(TreeError::InvalidProof)
            }
        }
        (0, _) => {
            if proof.is_empty() && old_root == tlog::EMPTY_HASH {
                Ok(())
            } else {
                Err(TreeError::InvalidProof)
            }
        }
        _ => tlog::check_tree(&proof.to_vec(), new, new_root, old, old_root).map_err(Into::into),
    }
}

/// The root of the empty tree: SHA-256 of nothing.
pub const EMPTY_ROOT: Hash = tlog::EMPTY_HASH;

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    fn hex(h: &Hash) -> String {
        h.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The leaves of Certificate Transparency's reference tree (RFC 6962 test data).
    fn ct_leaves() -> Vec<Vec<u8>> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|h| unhex(h))
        .collect()
    }

    /// Its published roots for sizes 0 to 8.
    const CT_ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn ct_tree() -> DenseTree {
        let mut t = DenseTree::new();
        for leaf in ct_leaves() {
            t.push(leaf_hash(&leaf)).unwrap();
        }
        t
    }

    fn hexes(hs: &[Hash]) -> Vec<String> {
        hs.iter().map(hex).collect()
    }

    #[test]
    fn roots_match_the_published_rfc_6962_vectors() {
        let t = ct_tree();
        for (n, want) in CT_ROOTS.iter().enumerate() {
            let root = t.answer(Query::Root(n as u64)).unwrap();
            assert_eq!(hex(&root[0]), *want, "size {n}");
        }
        assert_eq!(EMPTY_ROOT, Hash(Sha256::digest(b"").into()));
    }

    #[test]
    fn proofs_match_the_published_rfc_6962_vectors() {
        let t = ct_tree();
        let inclusion = t.answer(Query::Inclusion { index: 5, size: 8 }).unwrap();
        assert_eq!(
            hexes(&inclusion),
            [
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]
        );
        let inclusion = t.answer(Query::Inclusion { index: 1, size: 5 }).unwrap();
        assert_eq!(
            hexes(&inclusion),
            [
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ]
        );
        let consistency = t.answer(Query::Consistency { old: 6, new: 8 }).unwrap();
        assert_eq!(
            hexes(&consistency),
            [
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]
        );
        let consistency = t.answer(Query::Consistency { old: 2, new: 5 }).unwrap();
        assert_eq!(
            hexes(&consistency),
            [
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ]
        );
    }

    /// A second implementation: RFC 9162 section 2.1's definitions, written out recursively
    /// over the leaves, sharing no code with `tlog_tiles`.
    mod rfc9162 {
        use sha2::{Digest as _, Sha256};

        pub type H = [u8; 32];

        pub fn leaf(d: &[u8]) -> H {
            Sha256::new()
                .chain_update([0])
                .chain_update(d)
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

        /// The largest power of two smaller than n (n > 1).
        fn split(n: usize) -> usize {
            let mut k = 1;
            while k << 1 < n {
                k <<= 1;
            }
            k
        }

        pub fn mth(d: &[H]) -> H {
            match d.len() {
                0 => Sha256::digest(b"").into(),
                1 => d[0],
                n => {
                    let k = split(n);
                    node(&mth(&d[..k]), &mth(&d[k..]))
                }
            }
        }

        pub fn path(m: usize, d: &[H]) -> Vec<H> {
            let n = d.len();
            if n <= 1 {
                return Vec::new();
            }
            let k = split(n);
            if m < k {
                let mut p = path(m, &d[..k]);
                p.push(mth(&d[k..]));
                p
            } else {
                let mut p = path(m - k, &d[k..]);
                p.push(mth(&d[..k]));
                p
            }
        }

        fn subproof(m: usize, d: &[H], b: bool) -> Vec<H> {
            let n = d.len();
            if m == n {
                return if b { Vec::new() } else { vec![mth(d)] };
            }
            let k = split(n);
            if m <= k {
                let mut p = subproof(m, &d[..k], b);
                p.push(mth(&d[k..]));
                p
            } else {
                let mut p = subproof(m - k, &d[k..], false);
                p.push(mth(&d[..k]));
                p
            }
        }

        pub fn consistency(m: usize, d: &[H]) -> Vec<H> {
            if m == 0 || m == d.len() {
                Vec::new()
            } else {
                subproof(m, d, true)
            }
        }
    }

    #[test]
    fn roots_and_proofs_agree_with_a_second_implementation_of_rfc_9162() {
        let entries: Vec<Vec<u8>> = (0..70u32)
            .map(|i| format!("record {i}").into_bytes())
            .collect();
        let leaves: Vec<rfc9162::H> = entries.iter().map(|e| rfc9162::leaf(e)).collect();
        let mut t = DenseTree::new();
        for e in &entries {
            t.push(leaf_hash(e)).unwrap();
        }
        for n in 0..=entries.len() {
            let root = t.answer(Query::Root(n as u64)).unwrap()[0];
            assert_eq!(root.0, rfc9162::mth(&leaves[..n]), "root of {n}");
            for i in 0..n {
                let p = t
                    .answer(Query::Inclusion {
                        index: i as u64,
                        size: n as u64,
                    })
                    .unwrap();
                let want = rfc9162::path(i, &leaves[..n]);
                assert_eq!(
                    p.iter().map(|h| h.0).collect::<Vec<_>>(),
                    want,
                    "path {i} of {n}"
                );
                check_inclusion(&p, n as u64, root, i as u64, Hash(leaves[i])).unwrap();
            }
            for m in 0..=n {
                let p = t
                    .answer(Query::Consistency {
                        old: m as u64,
                        new: n as u64,
                    })
                    .unwrap();
                let want = rfc9162::consistency(m, &leaves[..n]);
                assert_eq!(
                    p.iter().map(|h| h.0).collect::<Vec<_>>(),
                    want,
                    "{m} -> {n}"
                );
                let old_root = Hash(rfc9162::mth(&leaves[..m]));
                check_consistency(&p, m as u64, old_root, n as u64, root).unwrap();
            }
        }
    }

    #[test]
    fn a_proof_for_anything_else_does_not_verify() {
        let t = ct_tree();
        let root = t.answer(Query::Root(8)).unwrap()[0];
        let leaf = leaf_hash(&ct_leaves()[5]);
        let p = t.answer(Query::Inclusion { index: 5, size: 8 }).unwrap();
        check_inclusion(&p, 8, root, 5, leaf).unwrap();
        assert!(
            check_inclusion(&p, 8, root, 4, leaf).is_err(),
            "another index"
        );
        assert!(
            check_inclusion(&p, 8, root, 5, leaf_hash(b"x")).is_err(),
            "another entry"
        );
        assert!(
            check_inclusion(&p, 6, root, 5, leaf).is_err(),
            "another size"
        );
        assert!(
            check_inclusion(&p[..2], 8, root, 5, leaf).is_err(),
            "a short proof"
        );
        assert!(
            check_inclusion(&p, 8, root, 8, leaf).is_err(),
            "index beyond the tree"
        );
        let old = t.answer(Query::Root(6)).unwrap()[0];
        let c = t.answer(Query::Consistency { old: 6, new: 8 }).unwrap();
        check_consistency(&c, 6, old, 8, root).unwrap();
        assert!(
            check_consistency(&c, 6, root, 8, root).is_err(),
            "a rewritten past"
        );
        assert!(check_consistency(&c, 5, old, 8, root).is_err());
        assert!(check_consistency(&[], 8, old, 8, root).is_err());
        assert!(check_consistency(&c, 8, root, 6, old).is_err(), "shrinking");
    }

    #[test]
    fn a_store_reads_only_the_hashes_a_query_names_and_appends_from_its_frontier() {
        let t = ct_tree();
        let all: Hashes = Hashes(
            (0..t.hashes.len() as u64)
                .map(|i| (i, t.hashes[i as usize]))
                .collect(),
        );
        for q in [
            Query::Root(7),
            Query::Inclusion { index: 3, size: 7 },
            Query::Consistency { old: 3, new: 7 },
        ] {
            let needed = Hashes(
                q.indexes()
                    .unwrap()
                    .iter()
                    .map(|i| (*i, all.0[i]))
                    .collect(),
            );
            assert_eq!(q.answer(&needed).unwrap(), t.answer(q).unwrap(), "{q:?}");
            assert!(needed.0.len() <= 8);
        }
        // Appending leaves 5..8 to a store holding only the frontier of 5 gives the same tree.
        let mut known = Hashes(frontier(5).iter().map(|i| (*i, all.0[i])).collect());
        let leaves: Vec<Hash> = ct_leaves()[5..].iter().map(|e| leaf_hash(e)).collect();
        let made = append(5, &leaves, &mut known).unwrap();
        for (i, h) in &made {
            assert_eq!(t.hashes[*i as usize], *h, "stored hash {i}");
        }
        assert_eq!(made.first().map(|m| m.0), Some(leaf_index(5)));
        assert_eq!(made.last().map(|m| m.0), Some(t.hashes.len() as u64 - 1));
        assert!(Query::Root(9).check(8).is_err());
        assert!(Query::Inclusion { index: 8, size: 8 }.check(8).is_err());
        assert!(Query::Consistency { old: 5, new: 3 }.check(8).is_err());
    }
}
