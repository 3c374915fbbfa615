//! The audit log's cryptography against known answers and random trees: every RFC 6962 inclusion
//! and consistency vector of transparency-dev/merkle (those that must fail included), the C2SP
//! signed-note vectors, and property tests over random trees of up to a few hundred leaves: every
//! proof from the stored tree verifies, and flipping any bit of a proof, root or leaf fails it.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use approval_host::audit::checkpoint::{CheckpointVerifier, LogKey};
use approval_host::audit::merkle::{
    self, EMPTY_ROOT, Frontier, Hash, HashCache, TreeOp, verify_consistency, verify_inclusion,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use proptest::prelude::*;
use serde::Deserialize;
use signed_note::{Note, StandardSigner, StandardVerifier, VerifierList};

/// The vectors, copied into the repository from `../shared/testdata/` (see its README) so that
/// a clone anywhere runs them; when the shared copy is present, it must be the same.
fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/testdata")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    out.sort();
    out
}

#[test]
fn the_vendored_vectors_are_the_shared_ones() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata");
    if !shared.exists() {
        return; // A clone outside the workplace has only the vendored copy.
    }
    let ours = files(&testdata());
    let theirs = files(&shared);
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(
            std::fs::read(a).unwrap(),
            std::fs::read(b).unwrap(),
            "{}",
            a.display()
        );
    }
}

fn b64(text: &str) -> Vec<u8> {
    STANDARD.decode(text).unwrap()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InclusionCase {
    leaf_idx: u64,
    tree_size: u64,
    root: String,
    leaf_hash: String,
    proof: Option<Vec<String>>,
    desc: String,
    want_err: bool,
}

#[test]
fn rfc6962_inclusion_vectors() {
    let cases = files(&testdata().join("rfc6962/inclusion"));
    assert!(cases.len() > 50, "only {} inclusion vectors", cases.len());
    let mut failing = 0;
    for path in &cases {
        let case: InclusionCase =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let proof: Vec<Vec<u8>> = case
            .proof
            .unwrap_or_default()
            .iter()
            .map(|p| b64(p))
            .collect();
        let result = verify_inclusion(
            case.leaf_idx,
            case.tree_size,
            &b64(&case.leaf_hash),
            &proof,
            &b64(&case.root),
        );
        assert_eq!(
            result.is_err(),
            case.want_err,
            "{} ({}): {result:?}",
            path.display(),
            case.desc
        );
        failing += usize::from(case.want_err);
    }
    assert!(failing > 0 && failing < cases.len());
}

#[derive(Deserialize)]
struct ConsistencyCase {
    size1: u64,
    size2: u64,
    root1: String,
    root2: String,
    proof: Option<Vec<String>>,
    desc: String,
    #[serde(rename = "wantErr")]
    want_err: bool,
}

#[test]
fn rfc6962_consistency_vectors() {
    let cases = files(&testdata().join("rfc6962/consistency"));
    assert!(cases.len() > 50, "only {} consistency vectors", cases.len());
    for path in &cases {
        let case: ConsistencyCase =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let proof: Vec<Vec<u8>> = case
            .proof
            .unwrap_or_default()
            .iter()
            .map(|p| b64(p))
            .collect();
        let result = verify_consistency(
            case.size1,
            case.size2,
            &proof,
            &b64(&case.root1),
            &b64(&case.root2),
        );
        assert_eq!(
            result.is_err(),
            case.want_err,
            "{} ({}): {result:?}",
            path.display(),
            case.desc
        );
    }
}

#[test]
fn the_eight_leaf_tree_of_the_vectors_has_the_documented_root() {
    // shared/testdata/README.md: the tree behind the 0..4 folders.
    let leaves = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    let mut frontier = Frontier::new();
    let cache = HashCache::new();
    let hashes: Vec<Hash> = leaves
        .iter()
        .map(|l| merkle::leaf_hash(&hex::decode(l).unwrap()))
        .collect();
    merkle::append(0, &hashes, &cache).unwrap();
    hashes.iter().for_each(|h| frontier.push(*h));
    let root = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328";
    assert_eq!(hex::encode(frontier.root().0), root);
    assert_eq!(
        hex::encode(TreeOp::Root { size: 8 }.run(&cache).unwrap()[0].0),
        root
    );
}

#[derive(Deserialize)]
struct NoteVectors {
    verify: Vec<VerifyCase>,
    sign: Vec<SignCase>,
}

#[derive(Deserialize)]
struct VerifyCase {
    vkey: String,
    key_id_hex: String,
    text: String,
    note: String,
}

#[derive(Deserialize)]
struct SignCase {
    skey: String,
    vkey: String,
    text: String,
    signature_line: String,
    tampered_text_must_fail: String,
}

fn note_vectors() -> NoteVectors {
    serde_json::from_str(
        &std::fs::read_to_string(testdata().join("signed-note/vectors.json")).unwrap(),
    )
    .unwrap()
}

#[test]
fn signed_note_verification_vectors() {
    for case in note_vectors().verify {
        let verifier = StandardVerifier::new(&case.vkey).unwrap();
        assert_eq!(
            format!("{:08x}", signed_note::Verifier::key_id(&verifier)),
            case.key_id_hex
        );
        let note = Note::from_bytes(case.note.as_bytes()).unwrap();
        note.verify(&VerifierList::new(vec![Box::new(verifier.clone())]))
            .unwrap();
        assert_eq!(note.text(), case.text.as_bytes());
        // One changed byte of the text and the signature no longer verifies.
        let tampered = case.note.replacen("example", "exemple", 1);
        let note = Note::from_bytes(tampered.as_bytes()).unwrap();
        assert!(
            note.verify(&VerifierList::new(vec![Box::new(verifier)]))
                .is_err()
        );
    }
}

#[test]
fn signed_note_signing_vectors_byte_for_byte() {
    for case in note_vectors().sign {
        // The library signer and our log key agree with the vector exactly.
        let signer = StandardSigner::new(&case.skey).unwrap();
        let mut note = Note::new(case.text.as_bytes(), &[]).unwrap();
        note.add_sigs(&[&signer]).unwrap();
        let signed = String::from_utf8(note.to_bytes()).unwrap();
        assert_eq!(signed, format!("{}\n{}", case.text, case.signature_line));

        let key = LogKey::from_skey(&case.skey).unwrap();
        assert_eq!(key.vkey(), case.vkey);

        let verifier = StandardVerifier::new(&case.vkey).unwrap();
        let known = VerifierList::new(vec![Box::new(verifier)]);
        Note::from_bytes(signed.as_bytes())
            .unwrap()
            .verify(&known)
            .unwrap();
        let tampered = format!("{}\n{}", case.tampered_text_must_fail, case.signature_line);
        assert!(
            Note::from_bytes(tampered.as_bytes())
                .unwrap()
                .verify(&known)
                .is_err()
        );
    }
}

#[test]
fn a_checkpoint_is_a_c2sp_signed_note_any_note_verifier_opens() {
    let key = LogKey::from_seed("audit.example.com/approvals", &[42; 32]).unwrap();
    let root = merkle::leaf_hash(b"first entry");
    let note = key.sign(1, &root);
    // The generic C2SP verifier accepts it...
    let generic = StandardVerifier::new(key.vkey()).unwrap();
    let parsed = Note::from_bytes(note.as_bytes()).unwrap();
    parsed
        .verify(&VerifierList::new(vec![Box::new(generic)]))
        .unwrap();
    // ...and its text is the tlog-checkpoint body: origin, size, base64 root.
    assert_eq!(
        std::str::from_utf8(parsed.text()).unwrap(),
        format!(
            "audit.example.com/approvals\n1\n{}\n",
            STANDARD.encode(root.0)
        )
    );
    let opened = CheckpointVerifier::new(key.vkey())
        .unwrap()
        .open(&note)
        .unwrap();
    assert_eq!((opened.size, opened.root), (1, root));
}

// ---- random trees ------------------------------------------------------------------------------

/// RFC 6962 section 2.1, literally.
fn mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => EMPTY_ROOT,
        1 => leaves[0],
        n => {
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            merkle::node_hash(mth(&leaves[..k]), mth(&leaves[k..]))
        }
    }
}

fn tree(size: u64, seed: u64) -> (Vec<Hash>, HashCache) {
    let leaves: Vec<Hash> = (0..size)
        .map(|i| merkle::leaf_hash(format!("{seed}:{i}").as_bytes()))
        .collect();
    let cache = HashCache::new();
    merkle::append(0, &leaves, &cache).unwrap();
    (leaves, cache)
}

fn flip(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[bit / 8] ^= 1 << (bit % 8);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn inclusion_proofs_verify_and_any_flipped_bit_fails(
        size in 1u64..400, index_seed in any::<u64>(), seed in any::<u64>(), bit in 0usize..256,
    ) {
        let (leaves, cache) = tree(size, seed);
        let index = index_seed % size;
        let root = TreeOp::Root { size }.run(&cache).unwrap()[0];
        prop_assert_eq!(root, mth(&leaves));
        let proof: Vec<[u8; 32]> = TreeOp::Inclusion { index, size }
            .run(&cache)
            .unwrap()
            .iter()
            .map(|h| h.0)
            .collect();
        let leaf = leaves[index as usize].0;
        prop_assert!(verify_inclusion(index, size, &leaf, &proof, &root.0).is_ok());

        prop_assert!(verify_inclusion(index, size, &flip(&leaf, bit), &proof, &root.0).is_err());
        prop_assert!(verify_inclusion(index, size, &leaf, &proof, &flip(&root.0, bit)).is_err());
        for at in 0..proof.len() {
            let mut bad = proof.clone();
            bad[at].copy_from_slice(&flip(&proof[at], bit));
            prop_assert!(verify_inclusion(index, size, &leaf, &bad, &root.0).is_err());
        }
        // Another position or size does not take the same proof (unless it is the same tree path).
        if size > 1 {
            let other = (index + 1) % size;
            if leaves[other as usize] != leaves[index as usize] {
                prop_assert!(verify_inclusion(other, size, &leaf, &proof, &root.0).is_err());
            }
        }
    }

    #[test]
    fn consistency_proofs_verify_and_any_flipped_bit_fails(
        size in 2u64..400, old_seed in any::<u64>(), seed in any::<u64>(), bit in 0usize..256,
    ) {
        let (leaves, cache) = tree(size, seed);
        let old = 1 + old_seed % (size - 1);
        let root = TreeOp::Root { size }.run(&cache).unwrap()[0];
        let old_root = TreeOp::Root { size: old }.run(&cache).unwrap()[0];
        prop_assert_eq!(old_root, mth(&leaves[..old as usize]));
        let proof: Vec<[u8; 32]> = TreeOp::Consistency { old, size }
            .run(&cache)
            .unwrap()
            .iter()
            .map(|h| h.0)
            .collect();
        prop_assert!(verify_consistency(old, size, &proof, &old_root.0, &root.0).is_ok());

        prop_assert!(verify_consistency(old, size, &proof, &flip(&old_root.0, bit), &root.0).is_err());
        prop_assert!(verify_consistency(old, size, &proof, &old_root.0, &flip(&root.0, bit)).is_err());
        for at in 0..proof.len() {
            let mut bad = proof.clone();
            bad[at].copy_from_slice(&flip(&proof[at], bit));
            prop_assert!(verify_consistency(old, size, &bad, &old_root.0, &root.0).is_err());
        }
    }

    #[test]
    fn the_streaming_frontier_rebuilds_every_root(size in 0u64..400, seed in any::<u64>()) {
        let (leaves, _) = tree(size, seed);
        let mut frontier = Frontier::new();
        leaves.iter().for_each(|l| frontier.push(*l));
        prop_assert_eq!(frontier.root(), mth(&leaves));
    }
}

#[test]
fn a_proof_reads_a_logarithmic_number_of_stored_hashes() {
    // Asking an empty cache makes an operation list every stored hash it would read.
    for size in [
        1u64,
        2,
        3,
        1_000,
        1 << 20,
        1_000_000,
        10_000_000,
        u64::MAX / 2,
    ] {
        let log2 = 64 - u64::from(size.leading_zeros());
        for op in [
            TreeOp::Root { size },
            TreeOp::Inclusion {
                index: size / 3,
                size,
            },
            TreeOp::Consistency {
                old: (size / 2).max(1),
                size,
            },
        ] {
            let cache = HashCache::new();
            assert!(op.run(&cache).is_err() || size == 1);
            let reads = cache.take_missing().len() as u64;
            assert!(reads <= 2 * log2 + 2, "{op:?} reads {reads} hashes");
        }
    }
}
