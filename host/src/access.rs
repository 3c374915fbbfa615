//! Who is calling: the four kinds of callers and their credentials.
//!
//! - the **platform admin**: one token from the configuration;
//! - a **vendor**: an API key (`ahv_…`), shown once when issued, stored as its SHA-256;
//! - an **agent** (one actor of one vendor): a bearer token (`aha_…`) its vendor issued, stored
//!   as its SHA-256;
//! - a **guardian**: a session JWT (EdDSA) from the account system, verified against the
//!   configured issuer and keys; its `sub` is the guardian's own id, the decider recorded.
//!
//! Lifetimes: [`Access`] is process-wide. It knows nothing of HTTP: the API hands it the bearer
//! credential and gets a [`Principal`] back.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{SigningKey, VerifyingKey};
use jwt_compact::alg::Ed25519;
use jwt_compact::{AlgorithmExt as _, Claims, Header, UntrustedToken};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::store::cache::{Cached, Topic};
use crate::store::{Db, StoreError, credentials};

/// The prefix of vendor API keys.
pub const VENDOR_KEY_PREFIX: &str = "ahv_";
/// The prefix of agent tokens.
pub const AGENT_TOKEN_PREFIX: &str = "aha_";

/// The longest credential read (a session JWT is a few hundred bytes).
const MAX_CREDENTIAL_LEN: usize = 8 * 1024;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Vendor {
        vendor: String,
    },
    Agent {
        vendor: String,
        actor: String,
    },
    /// A guardian, by their own id (the session's `sub`), until the session expires.
    Guardian {
        id: String,
        expires_at_ms: u64,
    },
}

/// Why a credential was refused. Every case is a 401 to the caller; the distinction is for logs.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("no credentials")]
    Missing,
    #[error("unknown or revoked credentials")]
    Unknown,
    #[error("the session has expired")]
    Expired,
    #[error("the session is not valid: {0}")]
    BadSession(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no randomness available")]
    Randomness,
}

impl AccessError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            AccessError::Missing => "unauthenticated",
            AccessError::Expired => "session_expired",
            AccessError::Unknown | AccessError::BadSession(_) => "invalid_credentials",
            AccessError::Store(_) | AccessError::Randomness => "internal",
        }
    }
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn random_secret(prefix: &str) -> Result<String, AccessError> {
    use rand::TryRng as _;
    let mut bytes = [0u8; 32];
    rand::rngs::SysRng
        .try_fill_bytes(&mut bytes)
        .map_err(|_| AccessError::Randomness)?;
    Ok(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// Constant-time equality of two byte strings of any length.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The claims of a guardian session.
#[derive(Debug, Serialize, Deserialize)]
struct SessionClaims {
    iss: String,
    sub: String,
}

/// Verifies guardian session JWTs: `alg: EdDSA`, signed by one of the configured keys, from the
/// configured issuer, not expired, with a non-empty `sub`.
#[derive(Clone)]
pub struct SessionVerifier {
    issuer: String,
    keys: Vec<VerifyingKey>,
}

impl std::fmt::Debug for SessionVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionVerifier")
            .field("issuer", &self.issuer)
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// A configuration value that is not an Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an Ed25519 public key (32 bytes, base64 or base64url): {0:?}")]
pub struct BadPublicKey(pub String);

/// Reads an Ed25519 public key written as base64 or base64url.
///
/// # Errors
/// Not 32 bytes of (url-safe) base64, or not a point on the curve.
pub fn public_key_from_text(text: &str) -> Result<VerifyingKey, BadPublicKey> {
    let trimmed = text.trim().trim_end_matches('=');
    let bytes = URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| STANDARD.decode(text.trim()))
        .map_err(|_| BadPublicKey(text.to_owned()))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| BadPublicKey(text.to_owned()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| BadPublicKey(text.to_owned()))
}

impl SessionVerifier {
    /// Sessions of `issuer` signed by any of `keys`.
    pub fn new(issuer: &str, keys: Vec<VerifyingKey>) -> Self {
        Self {
            issuer: issuer.to_owned(),
            keys,
        }
    }

    /// The guardian id of a valid session at `now_ms`, and when the session expires.
    ///
    /// # Errors
    /// [`AccessError::Expired`] for an expired session, [`AccessError::BadSession`] for anything
    /// else wrong (algorithm, signature, issuer, missing claims).
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<(String, u64), AccessError> {
        let bad = |why: &str| AccessError::BadSession(why.to_owned());
        let untrusted = UntrustedToken::new(token).map_err(|e| bad(&e.to_string()))?;
        if untrusted.algorithm() != "EdDSA" {
            return Err(bad("the algorithm is not EdDSA"));
        }
        let verified = self
            .keys
            .iter()
            .find_map(|key| {
                Ed25519
                    .validator::<SessionClaims>(key)
                    .validate(&untrusted)
                    .ok()
            })
            .ok_or_else(|| bad("no configured key signed it"))?;
        let claims = verified.claims();
        if claims.custom.iss != self.issuer {
            return Err(bad("another issuer"));
        }
        if claims.custom.sub.is_empty() {
            return Err(bad("no subject"));
        }
        let expires = claims
            .expiration
            .and_then(|t| u64::try_from(t.timestamp()).ok())
            .ok_or_else(|| bad("no exp"))?;
        if now_ms / 1000 >= expires {
            return Err(AccessError::Expired);
        }
        Ok((claims.custom.sub.clone(), expires.saturating_mul(1000)))
    }
}

/// Signs guardian sessions: what an account system does. The host uses one only for the demo
/// and tests (`approval-host dev guardian-token`).
#[derive(Clone)]
pub struct SessionIssuer {
    issuer: String,
    key: SigningKey,
}

impl std::fmt::Debug for SessionIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionIssuer")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl SessionIssuer {
    /// An issuer named `issuer` signing with the Ed25519 seed `seed`.
    pub fn new(issuer: &str, seed: &[u8; 32]) -> Self {
        Self {
            issuer: issuer.to_owned(),
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The issuer's public key, base64url: what a host's configuration lists.
    pub fn public_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes())
    }

    /// A verifier for this issuer's sessions.
    pub fn verifier(&self) -> SessionVerifier {
        SessionVerifier::new(&self.issuer, vec![self.key.verifying_key()])
    }

    /// A session for `subject`, issued at `now_ms`, valid for `ttl`.
    ///
    /// # Errors
    /// A time out of range.
    pub fn mint(&self, subject: &str, now_ms: u64, ttl: Duration) -> Result<String, AccessError> {
        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let mut claims = Claims::new(SessionClaims {
            iss: self.issuer.clone(),
            sub: subject.to_owned(),
        });
        claims.issued_at = Some(at(now_ms / 1000 * 1000).into());
        claims.expiration = Some(
            at(
                (now_ms.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))) / 1000
                    * 1000,
            )
            .into(),
        );
        Ed25519
            .token(&Header::empty().with_token_type("JWT"), &claims, &self.key)
            .map_err(|e| AccessError::BadSession(e.to_string()))
    }
}

/// The process-wide access service.
#[derive(Debug, Clone)]
pub struct Access {
    db: Db,
    /// SHA-256 of the admin token, when one is configured.
    admin_token: Option<String>,
    /// Every issuer whose guardian sessions are accepted.
    sessions: Vec<SessionVerifier>,
    /// Vendors and actors by the SHA-256 of their credential, while none is revoked.
    known: Arc<Cached<String, Principal>>,
}

/// The most credentials cached.
const CACHED_CREDENTIALS: usize = 200_000;

impl Access {
    /// Credentials over `db`, the admin token of the configuration, guardian sessions checked
    /// by any of `sessions`.
    pub fn new(db: Db, admin_token: Option<&str>, sessions: Vec<SessionVerifier>) -> Self {
        let known = Arc::new(Cached::new(Arc::clone(db.versions()), CACHED_CREDENTIALS));
        Self {
            db,
            admin_token: admin_token.filter(|t| !t.is_empty()).map(sha256_hex),
            sessions,
            known,
        }
    }

    /// Whether vendor keys and agent tokens are served from the cache now (on PostgreSQL, only
    /// while the listener that hears other replicas' revocations is up).
    pub fn caching(&self) -> bool {
        self.known.enabled()
    }

    /// Issues a new API key for `vendor` (shown once: only its hash is kept).
    ///
    /// # Errors
    /// An unknown vendor or a database failure.
    pub async fn issue_vendor_key(&self, vendor: &str, now_ms: u64) -> Result<String, AccessError> {
        let key = random_secret(VENDOR_KEY_PREFIX)?;
        credentials::insert_vendor_key(&self.db, vendor, &sha256_hex(&key), now_ms).await?;
        Ok(key)
    }

    /// Issues a new key for `vendor` and revokes its others.
    ///
    /// # Errors
    /// As [`Self::issue_vendor_key`].
    pub async fn rotate_vendor_key(
        &self,
        vendor: &str,
        now_ms: u64,
    ) -> Result<String, AccessError> {
        let key = self.issue_vendor_key(vendor, now_ms).await?;
        credentials::revoke_vendor_keys(&self.db, vendor, &sha256_hex(&key), now_ms).await?;
        Ok(key)
    }

    /// Issues a bearer token for one actor (shown once).
    ///
    /// # Errors
    /// An unknown actor or a database failure.
    pub async fn issue_agent_token(
        &self,
        vendor: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<String, AccessError> {
        let token = random_secret(AGENT_TOKEN_PREFIX)?;
        credentials::insert_agent_token(&self.db, (vendor, actor), &sha256_hex(&token), now_ms)
            .await?;
        Ok(token)
    }

    /// Revokes every token of an actor; returns how many.
    ///
    /// # Errors
    /// A database failure.
    pub async fn revoke_agent_tokens(
        &self,
        vendor: &str,
        actor: &str,
        now_ms: u64,
    ) -> Result<u64, AccessError> {
        Ok(credentials::revoke_agent_tokens(&self.db, (vendor, actor), now_ms).await?)
    }

    /// Who presents `credential` (the bearer value) at `now_ms`.
    ///
    /// # Errors
    /// Unknown, revoked, expired or malformed credentials, or a database failure.
    pub async fn authenticate(
        &self,
        credential: &str,
        now_ms: u64,
    ) -> Result<Principal, AccessError> {
        let credential = credential.trim();
        if credential.is_empty() {
            return Err(AccessError::Missing);
        }
        if credential.len() > MAX_CREDENTIAL_LEN {
            return Err(AccessError::Unknown);
        }
        if let Some(admin) = &self.admin_token
            && same_secret(sha256_hex(credential).as_bytes(), admin.as_bytes())
        {
            return Ok(Principal::Admin);
        }
        if credential.starts_with(VENDOR_KEY_PREFIX) || credential.starts_with(AGENT_TOKEN_PREFIX) {
            let hash = sha256_hex(credential);
            let load = async {
                Ok::<_, StoreError>(if credential.starts_with(VENDOR_KEY_PREFIX) {
                    credentials::vendor_of_key(&self.db, &hash)
                        .await?
                        .map(|vendor| Principal::Vendor { vendor })
                } else {
                    credentials::actor_of_token(&self.db, &hash)
                        .await?
                        .map(|(vendor, actor)| Principal::Agent { vendor, actor })
                })
            };
            return self
                .known
                .get_or_load(&hash, &Topic::Credentials, load)
                .await?
                .ok_or(AccessError::Unknown);
        }
        if credential.matches('.').count() == 2 {
            // An expired session of a known issuer says so; otherwise the last refusal.
            let mut refusal = AccessError::Unknown;
            for sessions in &self.sessions {
                match sessions.verify(credential, now_ms) {
                    Ok((id, expires_at_ms)) => {
                        return Ok(Principal::Guardian { id, expires_at_ms });
                    }
                    Err(AccessError::Expired) => return Err(AccessError::Expired),
                    Err(e) => refusal = e,
                }
            }
            return Err(refusal);
        }
        Err(AccessError::Unknown)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const NOW: u64 = 1_795_000_000_000;

    #[test]
    fn sessions_verify_until_they_expire_and_only_from_their_issuer_and_key() {
        let issuer = SessionIssuer::new("accounts.example", &[3; 32]);
        let token = issuer
            .mint("parent-1", NOW, Duration::from_secs(60))
            .unwrap();
        let verifier = issuer.verifier();
        assert_eq!(
            verifier.verify(&token, NOW).unwrap(),
            ("parent-1".to_owned(), NOW + 60_000)
        );
        assert_eq!(verifier.verify(&token, NOW + 59_000).unwrap().0, "parent-1");
        assert!(matches!(
            verifier.verify(&token, NOW + 60_000),
            Err(AccessError::Expired)
        ));
        let other_key = SessionIssuer::new("accounts.example", &[4; 32]).verifier();
        assert!(matches!(
            other_key.verify(&token, NOW),
            Err(AccessError::BadSession(_))
        ));
        let other_issuer = SessionVerifier::new("elsewhere", vec![issuer.key.verifying_key()]);
        assert!(matches!(
            other_issuer.verify(&token, NOW),
            Err(AccessError::BadSession(_))
        ));
        // A changed subject breaks the signature.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        parts[1] = URL_SAFE_NO_PAD.encode(claims.replace("parent-1", "parent-2"));
        assert!(matches!(
            verifier.verify(&parts.join("."), NOW),
            Err(AccessError::BadSession(_))
        ));
    }

    #[test]
    fn public_keys_read_from_base64_or_base64url() {
        let issuer = SessionIssuer::new("x", &[5; 32]);
        let url = issuer.public_key();
        let standard = STANDARD.encode(URL_SAFE_NO_PAD.decode(&url).unwrap());
        assert_eq!(
            public_key_from_text(&url).unwrap(),
            issuer.key.verifying_key()
        );
        assert_eq!(
            public_key_from_text(&standard).unwrap(),
            issuer.key.verifying_key()
        );
        assert!(public_key_from_text("not a key").is_err());
    }
}
