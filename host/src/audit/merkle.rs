//! RFC 6962 / RFC 9162 Merkle tree math for the audit log: leaf and node hashes (SHA-256 with the
//! 0x00 / 0x01 prefixes), the stored-hash layout, proofs from stored hashes, proof verification,
//! and a streaming [`Frontier`] for verifiers.
//!
//! The tree math is `tlog_tiles` (Cloudflare's port of Go's `golang.org/x/mod/sumdb/tlog`): every
//! hash of a complete subtree is stored once, at a dense index, so that a root, an inclusion proof
//! or a consistency proof reads at most a few dozen stored hashes, never the whole log. Those
//! functions read through a synchronous [`HashReader`]; the database is asynchronous, so this
//! module pairs them with a [`HashCache`] that records which indexes an operation asked for and
//! was missing. The caller fetches exactly those (one query) and runs the operation again (see
//! `store::audit::tree`). Which indexes an operation reads depends only on the sizes involved,
//! never on hash values, so the second run always completes.
//!
//! Architecture invariant: this module does no I/O.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

pub use tlog_tiles::tlog::Hash;
use tlog_tiles::tlog::{self, HashReader};

/// The length of every hash in the tree.
pub const HASH_LEN: usize = 32;

/// The longest proof accepted: a tree of 2^64 leaves has proofs of at most 64 hashes (a
/// consistency proof one more).
const MAX_PROOF_LEN: usize = 65;

/// The root of the empty tree: SHA-256 of nothing.
pub const EMPTY_ROOT: Hash = tlog::EMPTY_HASH;

/// Why a proof or a tree operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("entry {index} is not in a tree of {size} entries")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("tree size {old} is larger than tree size {new}")]
    SizesOutOfOrder { old: u64, new: u64 },
    #[error("a consistency proof needs a non-empty older tree")]
    EmptyTree,
    #[error("a hash must be {HASH_LEN} bytes, got {0}")]
    BadHashLength(usize),
    #[error("a proof of {0} hashes is longer than any tree needs")]
    ProofTooLong(usize),
    #[error("the proof does not lead to the expected root")]
    Mismatch,
    #[error("stored hash {0} is missing")]
    MissingHash(u64),
}

/// The leaf hash of an entry: SHA-256(0x00 || entry).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    tlog::record_hash(entry)
}

/// The hash of an interior node: SHA-256(0x01 || left || right).
pub fn node_hash(left: Hash, right: Hash) -> Hash {
    tlog::node_hash(left, right)
}

/// A hash from untrusted bytes.
///
/// # Errors
/// The bytes are not exactly [`HASH_LEN`] long.
pub fn hash_from_bytes(bytes: &[u8]) -> Result<Hash, ProofError> {
    <[u8; HASH_LEN]>::try_from(bytes)
        .map(Hash)
        .map_err(|_| ProofError::BadHashLength(bytes.len()))
}

fn proof_from_bytes<B: AsRef<[u8]>>(proof: &[B]) -> Result<Vec<Hash>, ProofError> {
    if proof.len() > MAX_PROOF_LEN {
        return Err(ProofError::ProofTooLong(proof.len()));
    }
    proof.iter().map(|h| hash_from_bytes(h.as_ref())).collect()
}

/// Checks that `leaf` is entry `index` of the tree of `size` entries whose root is `root`
/// (RFC 9162 section 2.1.3.2). Every argument may come from an untrusted party.
///
/// # Errors
/// The index is outside the tree, a hash is not 32 bytes, or the proof does not lead to `root`.
pub fn verify_inclusion<B: AsRef<[u8]>>(
    index: u64,
    size: u64,
    leaf: &[u8],
    proof: &[B],
    root: &[u8],
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let leaf = hash_from_bytes(leaf)?;
    let root = hash_from_bytes(root)?;
    let proof = proof_from_bytes(proof)?;
    tlog::check_record(&proof, size, root, index, leaf).map_err(|_| ProofError::Mismatch)
}

/// Checks that the tree of `size2` entries with root `root2` extends the tree of `size1` entries
/// with root `root1` (RFC 9162 section 2.1.4.2). Equal sizes need an empty proof and equal roots;
/// a consistency proof from the empty tree proves nothing and is refused.
///
/// # Errors
/// The sizes are out of order or zero, a hash is not 32 bytes, or the proof does not connect the
/// two roots.
pub fn verify_consistency<B: AsRef<[u8]>>(
    size1: u64,
    size2: u64,
    proof: &[B],
    root1: &[u8],
    root2: &[u8],
) -> Result<(), ProofError> {
    if size1 > size2 {
        return Err(ProofError::SizesOutOfOrder {
            old: size1,
            new: size2,
        });
    }
    if size1 == 0 {
        return Err(ProofError::EmptyTree);
    }
    if size1 == size2 {
        // Nothing to prove but that the roots are the same bytes.
        return if proof.is_empty() && root1 == root2 {
            Ok(())
        } else {
            Err(ProofError::Mismatch)
        };
    }
    let root1 = hash_from_bytes(root1)?;
    let root2 = hash_from_bytes(root2)?;
    let proof = proof_from_bytes(proof)?;
    tlog::check_tree(&proof, size2, root2, size1, root1).map_err(|_| ProofError::Mismatch)
}

// ---- stored trees ------------------------------------------------------------------------------

/// Stored hashes known so far, by stored-hash index, and the indexes an operation asked for that
/// were not known. Interior mutability because `tlog`'s reader is a shared reference; a mutex
/// (never contended) rather than a `RefCell` so that async code holding one stays `Send`.
#[derive(Debug, Default)]
pub struct HashCache {
    known: Mutex<HashMap<u64, Hash>>,
    missing: Mutex<Vec<u64>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HashCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds hashes read from storage or computed.
    pub fn insert(&self, hashes: impl IntoIterator<Item = (u64, Hash)>) {
        lock(&self.known).extend(hashes);
    }

    /// The indexes asked for and missing since the last call, sorted and deduplicated.
    pub fn take_missing(&self) -> Vec<u64> {
        let mut missing = std::mem::take(&mut *lock(&self.missing));
        missing.sort_unstable();
        missing.dedup();
        missing
    }

    /// The hashes at `indexes`, in order.
    ///
    /// # Errors
    /// One of them is not in the cache.
    pub fn get(&self, indexes: &[u64]) -> Result<Vec<Hash>, ProofError> {
        let known = lock(&self.known);
        indexes
            .iter()
            .map(|i| known.get(i).copied().ok_or(ProofError::MissingHash(*i)))
            .collect()
    }
}

impl HashReader for HashCache {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog::Error> {
        let known = lock(&self.known);
        let found: Vec<Hash> = indexes
            .iter()
            .filter_map(|i| known.get(i).copied())
            .collect();
        if found.len() == indexes.len() {
            return Ok(found);
        }
        lock(&self.missing).extend(indexes.iter().filter(|i| !known.contains_key(i)));
        Err(tlog::Error::IndexesNotInTree)
    }
}

/// What to do with a stored tree; each runs over a [`HashCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeOp {
    /// The root of the tree of `size` entries.
    Root { size: u64 },
    /// The inclusion proof of entry `index` in the tree of `size` entries.
    Inclusion { index: u64, size: u64 },
    /// The consistency proof from the tree of `old` entries to the tree of `size`.
    Consistency { old: u64, size: u64 },
}

impl TreeOp {
    /// Runs the operation on `cache`: a root is returned as a one-hash vector.
    ///
    /// # Errors
    /// Indexes outside the tree, or hashes the cache does not hold (they are then listed by
    /// [`HashCache::take_missing`]).
    pub fn run(self, cache: &HashCache) -> Result<Vec<Hash>, ProofError> {
        let missing = |_| match lock(&cache.missing).first() {
            Some(&index) => ProofError::MissingHash(index),
            None => ProofError::Mismatch,
        };
        match self {
            TreeOp::Root { size } => tlog::tree_hash(size, cache).map(|h| vec![h]),
            TreeOp::Inclusion { index, size } => {
                if index >= size {
                    return Err(ProofError::IndexOutOfRange { index, size });
                }
                tlog::prove_record(size, index, cache)
            }
            TreeOp::Consistency { old, size } => {
                if old > size {
                    return Err(ProofError::SizesOutOfOrder { old, new: size });
                }
                if old == 0 {
                    return Err(ProofError::EmptyTree);
                }
                tlog::prove_tree(size, old, cache)
            }
        }
        .map_err(missing)
    }
}

/// The stored hashes to write when appending `leaves` to a tree of `size` entries, as (stored-hash
/// index, hash) pairs. Reads the tree's right edge from `cache` (and adds the new hashes to it).
///
/// # Errors
/// The right edge is not in the cache (see [`HashCache::take_missing`]).
pub fn append(
    size: u64,
    leaves: &[Hash],
    cache: &HashCache,
) -> Result<Vec<(u64, Hash)>, ProofError> {
    let mut out = Vec::with_capacity(leaves.len() * 2);
    for (n, leaf) in (size..).zip(leaves) {
        let hashes = tlog::stored_hashes_for_record_hash(n, *leaf, cache).map_err(|_| {
            ProofError::MissingHash(lock(&cache.missing).first().copied().unwrap_or(0))
        })?;
        let first = tlog::stored_hash_index(0, n);
        let new: Vec<(u64, Hash)> = (first..).zip(hashes).collect();
        cache.insert(new.iter().copied());
        out.extend(new);
    }
    Ok(out)
}

/// The stored-hash indexes of the right edge of a tree of `size` entries: what [`append`] reads.
pub fn right_edge(size: u64) -> Vec<u64> {
    if size == 0 {
        Vec::new()
    } else {
        tlog::sub_tree_index(0, size, Vec::new())
    }
}

/// The stored-hash index of entry `index`'s leaf hash.
pub fn leaf_index(index: u64) -> u64 {
    tlog::stored_hash_index(0, index)
}

/// The number of stored hashes of a tree of `size` entries.
pub fn stored_hash_count(size: u64) -> u64 {
    tlog::stored_hash_count(size)
}

// ---- streaming ---------------------------------------------------------------------------------

/// The right edge of a tree being rebuilt leaf by leaf: the roots of its maximal complete
/// subtrees, largest first. O(log n) memory, so a verifier can stream any number of entries.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    size: u64,
    /// One hash per set bit of `size`, from the most significant.
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tree of `size` leaves whose right edge is `nodes` (the roots of its maximal complete
    /// subtrees, largest first, as [`right_edge`] lists their stored-hash indexes): where to go
    /// on pushing leaves after `size`. `nodes` must hold one hash per set bit of `size`.
    pub fn resume(size: u64, nodes: Vec<Hash>) -> Self {
        debug_assert_eq!(nodes.len(), size.count_ones() as usize);
        Self { size, nodes }
    }

    /// The number of leaves pushed.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut size = self.size;
        // Each trailing one bit of the old size is a complete subtree the new leaf completes.
        while size & 1 == 1 {
            let left = self.nodes.pop().unwrap_or_default();
            hash = node_hash(left, hash);
            size >>= 1;
        }
        self.nodes.push(hash);
        self.size += 1;
    }

    /// The root of the tree so far (RFC 6962 MTH).
    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        let Some(&last) = nodes.next() else {
            return EMPTY_ROOT;
        };
        nodes.fold(last, |right, &left| node_hash(left, right))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// RFC 6962 section 2.1, literally: MTH of a list of leaves.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => EMPTY_ROOT,
            1 => leaves[0],
            n => {
                let k = (n - 1).next_power_of_two().max(1);
                let k = if k >= n { k / 2 } else { k };
                node_hash(mth(&leaves[..k]), mth(&leaves[k..]))
            }
        }
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    fn stored(leaves: &[Hash]) -> HashCache {
        let cache = HashCache::new();
        let hashes = append(0, leaves, &cache).unwrap();
        assert_eq!(hashes.len() as u64, stored_hash_count(leaves.len() as u64));
        cache
    }

    #[test]
    fn the_frontier_and_the_stored_tree_agree_with_the_rfc_definition() {
        let all = leaves(70);
        let cache = stored(&all);
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), EMPTY_ROOT);
        for n in 1..=all.len() {
            frontier.push(all[n - 1]);
            let expected = mth(&all[..n]);
            assert_eq!(frontier.root(), expected, "frontier at {n}");
            let size = n as u64;
            assert_eq!(TreeOp::Root { size }.run(&cache).unwrap(), vec![expected]);
        }
    }

    #[test]
    fn a_frontier_resumed_from_the_stored_right_edge_rebuilds_every_later_root() {
        let all = leaves(70);
        let cache = stored(&all);
        for from in 0..all.len() {
            let nodes = cache.get(&right_edge(from as u64)).unwrap();
            let mut frontier = Frontier::resume(from as u64, nodes);
            for n in from + 1..=all.len() {
                frontier.push(all[n - 1]);
                assert_eq!(frontier.root(), mth(&all[..n]), "from {from} to {n}");
            }
        }
    }

    #[test]
    fn appending_in_batches_stores_the_same_hashes_as_one_by_one() {
        let all = leaves(37);
        let whole = stored(&all);
        let batched = HashCache::new();
        let mut size = 0;
        for chunk in all.chunks(5) {
            // A fresh cache with only the right edge, as the store provides it.
            let edge = HashCache::new();
            let known = lock(&batched.known);
            edge.insert(right_edge(size).into_iter().map(|i| (i, known[&i])));
            drop(known);
            let hashes = append(size, chunk, &edge).unwrap();
            batched.insert(hashes);
            size += chunk.len() as u64;
        }
        assert_eq!(*lock(&batched.known), *lock(&whole.known));
    }

    #[test]
    fn a_missing_right_edge_is_named_not_guessed() {
        let cache = HashCache::new();
        let err = append(3, &leaves(1), &cache).unwrap_err();
        assert!(matches!(err, ProofError::MissingHash(_)));
        assert_eq!(cache.take_missing(), right_edge(3));
    }

    #[test]
    fn verification_refuses_inputs_no_tree_has() {
        let h = leaf_hash(b"x");
        let proof: Vec<Vec<u8>> = vec![vec![0; 32]; 66];
        assert_eq!(
            verify_inclusion(0, 2, &h.0, &proof, &h.0),
            Err(ProofError::ProofTooLong(66))
        );
        assert_eq!(
            verify_inclusion(0, 1, &h.0[..31], &[] as &[&[u8]], &h.0),
            Err(ProofError::BadHashLength(31))
        );
        assert_eq!(
            verify_consistency(0, 1, &[] as &[&[u8]], &h.0, &h.0),
            Err(ProofError::EmptyTree)
        );
        assert_eq!(
            verify_inclusion(u64::MAX, u64::MAX, &h.0, &[] as &[&[u8]], &h.0),
            Err(ProofError::IndexOutOfRange {
                index: u64::MAX,
                size: u64::MAX
            })
        );
    }
}
