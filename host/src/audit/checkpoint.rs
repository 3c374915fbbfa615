//! Signed checkpoints: a tree head in the C2SP tlog-checkpoint form (origin line, tree size,
//! base64 root), signed as a C2SP signed note with Ed25519, and the keys in the `name+keyid+key`
//! forms the C2SP tools (Go's `sumdb/note`, `litetlog`, Sigstore) read and write.
//!
//! A checkpoint looks like this:
//!
//! ```text
//! approval-host.local/audit
//! 4096
//! nND/nri//U0xuHUrYSy0HtMeal2vzD9V4k/BO79C+QeI=
//!
//! — approval-host.local/audit Az3grk0b5sX...
//! ```
//!
//! The key's name is the log's origin. Formats and parsing are the `signed_note` and `tlog_tiles`
//! crates'; this module binds them to the log's origin and key. It does no I/O.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use signed_note::{Note, StandardSigner, StandardVerifier, VerifierList};
use tlog_tiles::checkpoint::Checkpoint as CheckpointText;

use super::merkle::Hash;

/// The signature type of Ed25519 in C2SP signed notes.
const ALG_ED25519: u8 = 0x01;

/// Why a key or a checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("a log origin must be non-empty, without spaces or '+': {0:?}")]
    BadOrigin(String),
    #[error("the signing key is not a C2SP Ed25519 private key (PRIVATE+KEY+name+id+key)")]
    BadSigningKey,
    #[error("the verification key is not a C2SP Ed25519 key (name+id+key): {0}")]
    BadVerifierKey(String),
    #[error("the note is not a well-formed signed note")]
    MalformedNote,
    #[error("the note's signature by {0} does not verify")]
    BadSignature(String),
    #[error("the note is not signed by the key {0}")]
    NotSignedByKey(String),
    #[error("the signed text is not a checkpoint")]
    MalformedCheckpoint,
    #[error("the checkpoint is for the log {found:?}, not {expected:?}")]
    WrongOrigin { expected: String, found: String },
}

/// The log's signing key: process-wide, shared by every replica of one log.
#[derive(Clone)]
pub struct LogKey {
    signer: StandardSigner,
    origin: String,
    vkey: String,
    skey: String,
}

impl std::fmt::Debug for LogKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogKey")
            .field("vkey", &self.vkey)
            .field("skey", &"<redacted>")
            .finish()
    }
}

fn check_origin(origin: &str) -> Result<(), CheckpointError> {
    if signed_note::is_key_name_valid(origin) {
        Ok(())
    } else {
        Err(CheckpointError::BadOrigin(origin.to_owned()))
    }
}

impl LogKey {
    /// The key with Ed25519 seed `seed` for the log `origin`.
    ///
    /// # Errors
    /// An origin C2SP does not allow as a key name.
    pub fn from_seed(origin: &str, seed: &[u8; 32]) -> Result<Self, CheckpointError> {
        check_origin(origin)?;
        let signing = SigningKey::from_bytes(seed);
        let mut public = vec![ALG_ED25519];
        public.extend_from_slice(signing.verifying_key().as_bytes());
        let id = signed_note::key_id(origin, &public);
        let mut private = vec![ALG_ED25519];
        private.extend_from_slice(seed);
        let skey = format!("PRIVATE+KEY+{origin}+{id:08x}+{}", STANDARD.encode(private));
        Self::from_skey(&skey)
    }

    /// A new random key for the log `origin`.
    ///
    /// # Errors
    /// An origin C2SP does not allow as a key name.
    pub fn generate(origin: &str) -> Result<Self, CheckpointError> {
        use rand::TryRng as _;
        let mut seed = [0u8; 32];
        rand::rngs::SysRng
            .try_fill_bytes(&mut seed)
            .map_err(|_| CheckpointError::BadSigningKey)?;
        Self::from_seed(origin, &seed)
    }

    /// The key encoded as a C2SP private key, `PRIVATE+KEY+<origin>+<keyid>+<base64>`.
    ///
    /// # Errors
    /// The text is not such a key (or its key id does not match its key).
    pub fn from_skey(skey: &str) -> Result<Self, CheckpointError> {
        let signer =
            StandardSigner::new(skey.trim()).map_err(|_| CheckpointError::BadSigningKey)?;
        let skey = skey.trim().to_owned();
        let origin = signed_note::Signer::name(&signer).to_owned();
        // PRIVATE+KEY+<name>+<id>+<base64>, where the base64 may itself contain '+'.
        let seed = skey
            .splitn(5, '+')
            .nth(4)
            .and_then(|b64| STANDARD.decode(b64).ok())
            .filter(|k| k.len() == 33)
            .ok_or(CheckpointError::BadSigningKey)?;
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&seed[1..]);
        let vkey = signed_note::new_ed25519_verifier_key(
            &origin,
            &SigningKey::from_bytes(&bytes).verifying_key(),
        );
        Ok(Self {
            signer,
            origin,
            vkey,
            skey,
        })
    }

    /// The log's origin (the key's name).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The verification key, `<origin>+<keyid>+<base64>`: what auditors are given.
    pub fn vkey(&self) -> &str {
        &self.vkey
    }

    /// The private key in C2SP form: a secret.
    pub fn skey(&self) -> &str {
        &self.skey
    }

    /// The signed checkpoint of the tree of `size` entries with root `root`.
    pub fn sign(&self, size: u64, root: &Hash) -> String {
        let text = format!("{}\n{size}\n{}\n", self.origin, STANDARD.encode(root.0));
        // The text is well-formed by construction (a valid origin, digits, base64) and Ed25519
        // signing cannot fail, so neither error below can happen.
        let mut note = Note::new(text.as_bytes(), &[]).unwrap_or_else(|_| unreachable!());
        note.add_sigs(&[&self.signer])
            .unwrap_or_else(|_| unreachable!());
        String::from_utf8(note.to_bytes()).unwrap_or_default()
    }
}

/// A checkpoint whose signature verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub size: u64,
    pub root: Hash,
    /// The whole signed note, as published.
    pub note: String,
}

/// Opens checkpoints signed by one log key: what an auditor runs, knowing only the public key.
#[derive(Clone)]
pub struct CheckpointVerifier {
    verifier: StandardVerifier,
    origin: String,
    vkey: String,
}

impl std::fmt::Debug for CheckpointVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointVerifier")
            .field("vkey", &self.vkey)
            .finish()
    }
}

impl CheckpointVerifier {
    /// A verifier for the key `vkey` (`<origin>+<keyid>+<base64>`).
    ///
    /// # Errors
    /// `vkey` is not a C2SP Ed25519 verifier key.
    pub fn new(vkey: &str) -> Result<Self, CheckpointError> {
        let vkey = vkey.trim();
        let verifier = StandardVerifier::new(vkey)
            .map_err(|e| CheckpointError::BadVerifierKey(e.to_string()))?;
        let origin = signed_note::Verifier::name(&verifier).to_owned();
        Ok(Self {
            verifier,
            origin,
            vkey: vkey.to_owned(),
        })
    }

    /// The log origin the key signs for.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The verification key.
    pub fn vkey(&self) -> &str {
        &self.vkey
    }

    /// Verifies `note`'s signature by this key and reads the checkpoint it signs. Signatures by
    /// other keys (witnesses, say) are ignored, as C2SP says.
    ///
    /// # Errors
    /// A malformed note, no signature by this key, a signature that does not verify, a text that
    /// is not a checkpoint, or a checkpoint of another log.
    pub fn open(&self, note: &str) -> Result<Checkpoint, CheckpointError> {
        let parsed =
            Note::from_bytes(note.as_bytes()).map_err(|_| CheckpointError::MalformedNote)?;
        let known = VerifierList::new(vec![Box::new(self.verifier.clone())]);
        match parsed.verify(&known) {
            Ok(_) => {}
            Err(signed_note::NoteError::InvalidSignature { .. }) => {
                return Err(CheckpointError::BadSignature(self.vkey.clone()));
            }
            Err(signed_note::NoteError::UnverifiedNote) => {
                return Err(CheckpointError::NotSignedByKey(self.vkey.clone()));
            }
            Err(_) => return Err(CheckpointError::MalformedNote),
        }
        let text = CheckpointText::from_bytes(parsed.text())
            .map_err(|_| CheckpointError::MalformedCheckpoint)?;
        if text.origin() != self.origin {
            return Err(CheckpointError::WrongOrigin {
                expected: self.origin.clone(),
                found: text.origin().to_owned(),
            });
        }
        Ok(Checkpoint {
            size: text.size(),
            root: *text.hash(),
            note: note.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_signed_checkpoint_opens_with_its_key_and_with_no_other() {
        let key = LogKey::from_seed("example.com/log", &[7; 32]).unwrap();
        let root = super::super::merkle::leaf_hash(b"entry");
        let note = key.sign(1, &root);
        assert!(note.starts_with(&format!(
            "example.com/log\n1\n{}\n\n— example.com/log ",
            STANDARD.encode(root.0)
        )));
        let verifier = CheckpointVerifier::new(key.vkey()).unwrap();
        assert_eq!(
            verifier.open(&note).unwrap(),
            Checkpoint {
                size: 1,
                root,
                note: note.clone()
            }
        );
        // The same key text round-trips, whatever characters its base64 holds.
        assert_eq!(LogKey::from_skey(key.skey()).unwrap().vkey(), key.vkey());
        for _ in 0..64 {
            let fresh = LogKey::generate("example.com/log").unwrap();
            assert_eq!(
                LogKey::from_skey(fresh.skey()).unwrap().vkey(),
                fresh.vkey()
            );
        }

        let other = LogKey::from_seed("example.com/log", &[8; 32]).unwrap();
        assert_eq!(
            CheckpointVerifier::new(other.vkey()).unwrap().open(&note),
            Err(CheckpointError::NotSignedByKey(other.vkey().to_owned()))
        );
        let forged = note.replacen("\n1\n", "\n2\n", 1);
        assert_eq!(
            verifier.open(&forged),
            Err(CheckpointError::BadSignature(key.vkey().to_owned()))
        );
        assert_eq!(
            verifier.open("not a note"),
            Err(CheckpointError::MalformedNote)
        );
    }

    #[test]
    fn origins_that_c2sp_forbids_are_refused() {
        for origin in ["", "a b", "a+b"] {
            assert_eq!(
                LogKey::from_seed(origin, &[1; 32]).unwrap_err(),
                CheckpointError::BadOrigin(origin.to_owned())
            );
        }
    }
}
