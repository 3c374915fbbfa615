//! Who is calling: the four kinds of callers and their credentials.
//!
//! - the **platform admin**: one token from the configuration;
//! - a **vendor**: an API key (`ahv_…`), shown once when issued, stored as its SHA-256;
//! - an **agent** (one actor of one vendor): a bearer token (`aha_…`) its vendor issued, stored
//!   as its SHA-256;
//! - a **guardian**: a session JWT (EdDSA) from the account system, verified against the
//!   configured issuer, keys and audience, within a bounded lifetime; the guardian is the pair
//!   (issuer, `sub`), written as one id, the decider recorded (see [`SessionIssuers`]).
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
    /// A guardian, by their own id (the session's `sub`, prefixed for every issuer but the
    /// primary one: [`SessionIssuers`]), until the session expires.
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

/// The `aud` the development issuer puts in its sessions, and its verifier requires.
pub const DEFAULT_SESSION_AUDIENCE: &str = "approval-host";

/// The longest a session may last (`exp - iat`) unless configured otherwise.
pub const DEFAULT_MAX_SESSION_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How far ahead of the host's clock a session's `iat` and `nbf` may be (the account system's
/// clock may run a little ahead).
pub const SESSION_LEEWAY: Duration = Duration::from_secs(60);

/// What separates a guardian prefix from the session's `sub` in a guardian id.
const PREFIX_SEPARATOR: char = ':';

/// The claims of a guardian session.
#[derive(Debug, Serialize, Deserialize)]
struct SessionClaims {
    iss: String,
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<Audience>,
}

/// A JWT's `aud`: one string or an array of them (RFC 7519 §4.1.3).
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn names(&self, audience: &str) -> bool {
        match self {
            Audience::One(one) => one == audience,
            Audience::Many(many) => many.iter().any(|one| one == audience),
        }
    }
}

/// The protected header fields a session is checked for beyond `alg`.
#[derive(Debug, Clone, Deserialize)]
struct SessionHeader {
    /// `crit` (RFC 7515 §4.1.11), whatever its value: the host implements no JWS extension, so
    /// any name listed is one it does not understand and the session is refused.
    #[serde(default, deserialize_with = "present")]
    crit: Option<serde_json::Value>,
}

/// `Some` for a field that is there, even as `null`.
fn present<'de, D: serde::Deserializer<'de>>(
    field: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(field).map(Some)
}

/// What a session must satisfy beyond its signature and issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRules {
    /// The `aud` the session must name (alone or among others).
    pub audience: String,
    /// The longest `exp - iat` accepted.
    pub max_lifetime: Duration,
    /// How far in the future `iat` and `nbf` may be.
    pub leeway: Duration,
}

impl SessionRules {
    /// Sessions for `audience`, with the default lifetime and leeway.
    pub fn new(audience: &str) -> Self {
        Self {
            audience: audience.to_owned(),
            max_lifetime: DEFAULT_MAX_SESSION_LIFETIME,
            leeway: SESSION_LEEWAY,
        }
    }
}

/// Verifies guardian session JWTs: `alg: EdDSA`, no `crit` header, signed by one of the
/// configured keys, from the configured issuer, naming the configured audience, with a
/// non-empty `sub`, an `iat` and an `exp` at most the maximum lifetime apart, not expired, and
/// neither `iat` nor `nbf` beyond the leeway in the future.
#[derive(Clone)]
pub struct SessionVerifier {
    issuer: String,
    keys: Vec<VerifyingKey>,
    rules: SessionRules,
    /// `None`: guardians are named by their bare `sub` (the primary issuer); `Some(p)`: by
    /// `p:sub`, so that they are never an other issuer's guardians.
    guardian_prefix: Option<String>,
}

impl std::fmt::Debug for SessionVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionVerifier")
            .field("issuer", &self.issuer)
            .field("keys", &self.keys.len())
            .field("rules", &self.rules)
            .field("guardian_prefix", &self.guardian_prefix)
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

fn bad(why: &str) -> AccessError {
    AccessError::BadSession(why.to_owned())
}

/// Milliseconds of a duration, saturating.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl SessionVerifier {
    /// Sessions of `issuer` signed by any of `keys` that satisfy `rules`; guardians named by
    /// their bare `sub`.
    pub fn new(issuer: &str, keys: Vec<VerifyingKey>, rules: SessionRules) -> Self {
        Self {
            issuer: issuer.to_owned(),
            keys,
            rules,
            guardian_prefix: None,
        }
    }

    /// The same verifier naming guardians `prefix:sub`.
    #[must_use]
    pub fn with_guardian_prefix(mut self, prefix: &str) -> Self {
        self.guardian_prefix = Some(prefix.to_owned());
        self
    }

    /// The same verifier with another maximum lifetime.
    #[must_use]
    pub fn with_max_lifetime(mut self, max_lifetime: Duration) -> Self {
        self.rules.max_lifetime = max_lifetime;
        self
    }

    /// The issuer whose sessions this verifier accepts.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The guardian id of a valid session at `now_ms`, and when the session expires.
    ///
    /// # Errors
    /// [`AccessError::Expired`] for an expired session, [`AccessError::BadSession`] for anything
    /// else wrong (algorithm, `crit`, signature, issuer, audience, missing claims, lifetime,
    /// issued or valid only in the future).
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<(String, u64), AccessError> {
        let untrusted =
            UntrustedToken::<SessionHeader>::try_from(token).map_err(|e| bad(&e.to_string()))?;
        if untrusted.algorithm() != "EdDSA" {
            return Err(bad("the algorithm is not EdDSA"));
        }
        if untrusted.header().other_fields.crit.is_some() {
            return Err(bad(
                "a crit header names an extension the host does not implement",
            ));
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
        if !claims
            .custom
            .aud
            .as_ref()
            .is_some_and(|aud| aud.names(&self.rules.audience))
        {
            return Err(bad("not for this host's audience"));
        }
        if claims.custom.sub.is_empty() {
            return Err(bad("no subject"));
        }
        let expires_at_ms = self.check_times(claims, now_ms)?;
        let id = match &self.guardian_prefix {
            None => claims.custom.sub.clone(),
            Some(prefix) => format!("{prefix}{PREFIX_SEPARATOR}{}", claims.custom.sub),
        };
        Ok((id, expires_at_ms))
    }

    /// When a session whose signature and names hold expires, if its times hold at `now_ms`.
    ///
    /// `now - iat` needs no bound of its own: `now < exp` and `exp - iat <= max_lifetime`.
    fn check_times(&self, claims: &Claims<SessionClaims>, now_ms: u64) -> Result<u64, AccessError> {
        let (Some(issued), Some(expires)) = (
            claims.issued_at.map(|t| t.timestamp_millis()),
            claims.expiration.map(|t| t.timestamp_millis()),
        ) else {
            return Err(bad("no iat or no exp"));
        };
        if expires <= issued {
            return Err(bad("exp is not after iat"));
        }
        if expires.saturating_sub(issued) > millis(self.rules.max_lifetime) {
            return Err(bad("longer than the maximum session lifetime"));
        }
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        if now >= expires {
            return Err(AccessError::Expired);
        }
        let latest = now.saturating_add(millis(self.rules.leeway));
        if issued > latest {
            return Err(bad("issued in the future"));
        }
        if claims
            .not_before
            .is_some_and(|t| t.timestamp_millis() > latest)
        {
            return Err(bad("not valid yet (nbf)"));
        }
        // `expires > now >= 0`.
        Ok(u64::try_from(expires).unwrap_or(0))
    }
}

/// Two issuers would name guardians alike.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssuerConflict {
    #[error(
        "guardian sessions of {0:?} and {1:?} would both name guardians by their bare `sub`: all issuers but one need a guardian prefix"
    )]
    TwoPrimaries(String, String),
    #[error("the guardian prefix {0:?} is given to two issuers")]
    SamePrefix(String),
    #[error("a guardian prefix must be non-empty and without ':', not {0:?}")]
    BadPrefix(String),
}

/// Every issuer whose guardian sessions are accepted. A guardian is the pair (issuer, `sub`):
/// at most one issuer, the primary one, names guardians by their bare `sub` (what existing data
/// holds); each other one by `prefix:sub`, with a prefix of its own that holds no `:`. A primary
/// session whose `sub` starts with another issuer's `prefix:` is refused, so no two sessions of
/// different issuers ever name the same guardian.
#[derive(Debug, Clone, Default)]
pub struct SessionIssuers {
    verifiers: Vec<SessionVerifier>,
    /// `prefix:` of every prefixed issuer: what a primary session's `sub` may not start with.
    reserved: Vec<String>,
}

impl SessionIssuers {
    /// The issuers of `verifiers`.
    ///
    /// # Errors
    /// Two issuers without a prefix, a prefix used twice, or an empty one or one with a `:`.
    pub fn new(verifiers: Vec<SessionVerifier>) -> Result<Self, IssuerConflict> {
        let mut primary: Option<&str> = None;
        let mut reserved: Vec<String> = Vec::new();
        for verifier in &verifiers {
            match &verifier.guardian_prefix {
                None => {
                    if let Some(first) = primary {
                        return Err(IssuerConflict::TwoPrimaries(
                            first.to_owned(),
                            verifier.issuer.clone(),
                        ));
                    }
                    primary = Some(&verifier.issuer);
                }
                Some(prefix) => {
                    if prefix.is_empty() || prefix.contains(PREFIX_SEPARATOR) {
                        return Err(IssuerConflict::BadPrefix(prefix.clone()));
                    }
                    let reserve = format!("{prefix}{PREFIX_SEPARATOR}");
                    if reserved.contains(&reserve) {
                        return Err(IssuerConflict::SamePrefix(prefix.clone()));
                    }
                    reserved.push(reserve);
                }
            }
        }
        Ok(Self {
            verifiers,
            reserved,
        })
    }

    /// Whether no issuer is trusted (guardians cannot sign in).
    pub fn is_empty(&self) -> bool {
        self.verifiers.is_empty()
    }

    /// The guardian id of a valid session of any issuer at `now_ms`, and when it expires.
    ///
    /// # Errors
    /// As [`SessionVerifier::verify`]: an expired session of a trusted issuer says so; otherwise
    /// the last refusal.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<(String, u64), AccessError> {
        let mut refusal = AccessError::Unknown;
        for verifier in &self.verifiers {
            match verifier.verify(token, now_ms) {
                Ok((id, _))
                    if verifier.guardian_prefix.is_none()
                        && self.reserved.iter().any(|r| id.starts_with(r.as_str())) =>
                {
                    return Err(bad("the subject names a guardian of another issuer"));
                }
                Ok(guardian) => return Ok(guardian),
                Err(AccessError::Expired) => return Err(AccessError::Expired),
                Err(e) => refusal = e,
            }
        }
        Err(refusal)
    }
}

/// Signs guardian sessions: what an account system does. The host uses one only for the demo
/// and tests (`approval-host dev guardian-token`).
#[derive(Clone)]
pub struct SessionIssuer {
    issuer: String,
    /// The `aud` of every session minted.
    audience: String,
    key: SigningKey,
}

impl std::fmt::Debug for SessionIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionIssuer")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl SessionIssuer {
    /// An issuer named `issuer` signing with the Ed25519 seed `seed`, for the audience
    /// [`DEFAULT_SESSION_AUDIENCE`].
    pub fn new(issuer: &str, seed: &[u8; 32]) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audience: DEFAULT_SESSION_AUDIENCE.to_owned(),
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The same issuer minting sessions for `audience`.
    #[must_use]
    pub fn with_audience(mut self, audience: &str) -> Self {
        audience.clone_into(&mut self.audience);
        self
    }

    /// The issuer's public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The issuer's public key, base64url: what a host's configuration lists.
    pub fn public_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes())
    }

    /// A verifier for this issuer's sessions (its audience, the default lifetime and leeway).
    pub fn verifier(&self) -> SessionVerifier {
        SessionVerifier::new(
            &self.issuer,
            vec![self.key.verifying_key()],
            SessionRules::new(&self.audience),
        )
    }

    /// A session for `subject`, issued (and valid from) `now_ms`, valid for `ttl`.
    ///
    /// # Errors
    /// A time out of range.
    pub fn mint(&self, subject: &str, now_ms: u64, ttl: Duration) -> Result<String, AccessError> {
        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let mut claims = Claims::new(SessionClaims {
            iss: self.issuer.clone(),
            sub: subject.to_owned(),
            aud: Some(Audience::One(self.audience.clone())),
        });
        claims.issued_at = Some(at(now_ms / 1000 * 1000).into());
        claims.not_before = claims.issued_at;
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
    sessions: SessionIssuers,
    /// Vendors and actors by the SHA-256 of their credential, while none is revoked.
    known: Arc<Cached<String, Principal>>,
}

/// The most credentials cached.
const CACHED_CREDENTIALS: usize = 200_000;

impl Access {
    /// Credentials over `db`, the admin token of the configuration, guardian sessions checked
    /// by any of `sessions`.
    pub fn new(db: Db, admin_token: Option<&str>, sessions: SessionIssuers) -> Self {
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
            let (id, expires_at_ms) = self.sessions.verify(credential, now_ms)?;
            return Ok(Principal::Guardian { id, expires_at_ms });
        }
        Err(AccessError::Unknown)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const NOW: u64 = 1_795_000_000_000;
    /// `NOW` in JWT seconds.
    const NOW_S: i64 = 1_795_000_000;
    const SEED: [u8; 32] = [3; 32];
    const ISSUER: &str = "accounts.example";

    /// A session of `ISSUER` signed with `SEED` whose header and claims are exactly these.
    fn signed(header: serde_json::Value, claims: serde_json::Value) -> String {
        use ed25519_dalek::Signer as _;
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = SigningKey::from_bytes(&SEED).sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    /// Claims that verify at `NOW`, with `changes` applied (`null` removes a claim).
    fn claims(changes: serde_json::Value) -> serde_json::Value {
        let mut claims = serde_json::json!({"iss": ISSUER, "sub": "parent-1",
            "aud": DEFAULT_SESSION_AUDIENCE, "iat": NOW_S, "nbf": NOW_S, "exp": NOW_S + 3600});
        for (name, value) in changes.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(name);
            } else {
                claims[name] = value.clone();
            }
        }
        claims
    }

    fn header() -> serde_json::Value {
        serde_json::json!({"alg": "EdDSA", "typ": "JWT"})
    }

    fn verifier() -> SessionVerifier {
        SessionIssuer::new(ISSUER, &SEED).verifier()
    }

    /// Whether the verifier refuses these claims as a bad session (never as expired).
    fn refused(claims: serde_json::Value) -> bool {
        matches!(
            verifier().verify(&signed(header(), claims), NOW),
            Err(AccessError::BadSession(_))
        )
    }

    #[test]
    fn the_claims_of_the_helpers_verify() {
        assert_eq!(
            verifier()
                .verify(&signed(header(), claims(serde_json::json!({}))), NOW)
                .unwrap(),
            ("parent-1".to_owned(), NOW + 3_600_000)
        );
    }

    #[test]
    fn a_session_for_another_audience_is_refused() {
        use serde_json::json;
        assert!(refused(claims(json!({"aud": "another-host"}))));
        assert!(refused(claims(json!({"aud": ["another-host", "a-third"]}))));
        assert!(refused(claims(json!({"aud": []}))));
        assert!(refused(claims(json!({"aud": null}))));
        assert!(refused(claims(json!({"aud": 7}))));
        // An array that names this host among others is for this host too.
        let among = claims(json!({"aud": ["another-host", DEFAULT_SESSION_AUDIENCE]}));
        assert_eq!(
            verifier().verify(&signed(header(), among), NOW).unwrap().0,
            "parent-1"
        );
        // The development issuer's sessions are for its own audience only.
        let elsewhere = SessionIssuer::new(ISSUER, &SEED)
            .with_audience("another-host")
            .mint("parent-1", NOW, Duration::from_secs(60))
            .unwrap();
        assert!(matches!(
            verifier().verify(&elsewhere, NOW),
            Err(AccessError::BadSession(_))
        ));
    }

    #[test]
    fn a_session_issued_in_the_future_is_refused() {
        use serde_json::json;
        let leeway = i64::try_from(SESSION_LEEWAY.as_secs()).unwrap();
        assert!(refused(claims(
            json!({"iat": NOW_S + leeway + 1, "nbf": null})
        )));
        assert!(refused(claims(json!({"nbf": NOW_S + leeway + 1}))));
        // Within the leeway, an account system's clock a little ahead is forgiven.
        let ahead = claims(json!({"iat": NOW_S + leeway, "nbf": NOW_S + leeway}));
        assert!(verifier().verify(&signed(header(), ahead), NOW).is_ok());
        // A minted session is valid from the moment it was issued, not before.
        let minted = SessionIssuer::new(ISSUER, &SEED)
            .mint("parent-1", NOW + 61_000, Duration::from_secs(600))
            .unwrap();
        assert!(matches!(
            verifier().verify(&minted, NOW),
            Err(AccessError::BadSession(_))
        ));
        assert!(verifier().verify(&minted, NOW + 1_000).is_ok());
    }

    #[test]
    fn a_session_without_iat_or_exp_is_refused() {
        use serde_json::json;
        assert!(refused(claims(json!({"iat": null}))));
        assert!(refused(claims(json!({"exp": null}))));
        assert!(refused(claims(json!({"exp": NOW_S}))), "exp is iat");
        // nbf is optional.
        let without_nbf = claims(json!({"nbf": null}));
        assert!(
            verifier()
                .verify(&signed(header(), without_nbf), NOW)
                .is_ok()
        );
    }

    #[test]
    fn a_session_longer_than_the_maximum_lifetime_is_refused() {
        use serde_json::json;
        let max = i64::try_from(DEFAULT_MAX_SESSION_LIFETIME.as_secs()).unwrap();
        assert!(refused(claims(json!({"exp": NOW_S + max + 1}))));
        // A session issued long ago and still unexpired is as long.
        assert!(refused(claims(
            json!({"iat": NOW_S - max, "nbf": NOW_S - max, "exp": NOW_S + 1})
        )));
        let longest = claims(json!({"exp": NOW_S + max}));
        assert!(verifier().verify(&signed(header(), longest), NOW).is_ok());
        // The maximum is the verifier's.
        let hour = verifier().with_max_lifetime(Duration::from_secs(3600));
        let day = SessionIssuer::new(ISSUER, &SEED)
            .mint("parent-1", NOW, Duration::from_secs(3601))
            .unwrap();
        assert!(matches!(
            hour.verify(&day, NOW),
            Err(AccessError::BadSession(_))
        ));
        // An expired session that was never too long still says it expired.
        let expired = SessionIssuer::new(ISSUER, &SEED)
            .mint("parent-1", NOW - 7_200_000, Duration::from_secs(3600))
            .unwrap();
        assert!(matches!(
            hour.verify(&expired, NOW),
            Err(AccessError::Expired)
        ));
    }

    #[test]
    fn an_unknown_crit_header_is_refused() {
        use serde_json::json;
        let good = claims(json!({}));
        for crit in [
            json!(["exp"]),
            json!(["b64"]),
            json!([]),
            json!(null),
            json!("x"),
        ] {
            let header = json!({"alg": "EdDSA", "typ": "JWT", "crit": crit});
            assert!(
                matches!(
                    verifier().verify(&signed(header, good.clone()), NOW),
                    Err(AccessError::BadSession(_))
                ),
                "crit {crit}"
            );
        }
        // Other header fields are not extensions.
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": "k1", "x-note": 1});
        assert!(verifier().verify(&signed(header, good), NOW).is_ok());
    }

    #[test]
    fn a_subject_of_another_issuer_is_another_guardian() {
        let a = SessionIssuer::new("accounts.a", &[1; 32]);
        let b = SessionIssuer::new("accounts.b", &[2; 32]);
        let issuers =
            SessionIssuers::new(vec![a.verifier(), b.verifier().with_guardian_prefix("b")])
                .unwrap();
        let of = |issuer: &SessionIssuer, sub: &str| {
            issuers.verify(
                &issuer.mint(sub, NOW, Duration::from_secs(60)).unwrap(),
                NOW,
            )
        };
        assert_eq!(of(&a, "parent-1").unwrap().0, "parent-1");
        // B's parent-1 is not A's.
        assert_eq!(of(&b, "parent-1").unwrap().0, "b:parent-1");
        // Nor can A name B's guardians.
        assert!(matches!(
            of(&a, "b:parent-1"),
            Err(AccessError::BadSession(_))
        ));
        assert_eq!(of(&a, "bb:parent-1").unwrap().0, "bb:parent-1");
        // B's key does not sign for A.
        let forged = SessionIssuer::new("accounts.a", &[2; 32])
            .mint("parent-1", NOW, Duration::from_secs(60))
            .unwrap();
        assert!(matches!(
            issuers.verify(&forged, NOW),
            Err(AccessError::BadSession(_))
        ));
    }

    #[test]
    fn issuers_that_would_name_guardians_alike_are_refused() {
        let v = |name: &str| SessionIssuer::new(name, &[1; 32]).verifier();
        assert_eq!(
            SessionIssuers::new(vec![v("a"), v("b")]).unwrap_err(),
            IssuerConflict::TwoPrimaries("a".into(), "b".into())
        );
        assert_eq!(
            SessionIssuers::new(vec![
                v("b").with_guardian_prefix("x"),
                v("c").with_guardian_prefix("x")
            ])
            .unwrap_err(),
            IssuerConflict::SamePrefix("x".into())
        );
        for prefix in ["", "x:y"] {
            assert_eq!(
                SessionIssuers::new(vec![v("b").with_guardian_prefix(prefix)]).unwrap_err(),
                IssuerConflict::BadPrefix(prefix.into())
            );
        }
        assert!(SessionIssuers::new(vec![v("a"), v("b").with_guardian_prefix("x")]).is_ok());
    }

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
        let other_issuer = SessionVerifier::new(
            "elsewhere",
            vec![issuer.key.verifying_key()],
            SessionRules::new(DEFAULT_SESSION_AUDIENCE),
        );
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
