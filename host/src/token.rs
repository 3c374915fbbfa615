//! Capability tokens: the Ed25519-signed JWT the host mints when a request is allowed by policy
//! or approved by a guardian, and the offline verification a vendor's own service performs with
//! the host's published JWKS and the request's parameters.
//!
//! A token is a compact JWS (RFC 7515) with `alg: EdDSA` (RFC 8037), `typ: JWT` and the `kid`
//! of its key, the RFC 7638 thumbprint of the public key. Its claims bind:
//!
//! | claim | meaning |
//! | --- | --- |
//! | `iss` | the host ([`TokenConfig::issuer`]) |
//! | `sub` | the actor (the device or agent) |
//! | `aud` | the vendor |
//! | `iat`, `exp` | issue and expiry time, whole seconds since the Unix epoch |
//! | `jti` | a random 128-bit id, 32 lowercase hex digits |
//! | `act` | the action kind, e.g. `payment` |
//! | `params_hash` | [`crate::canonical::params_hash`] of the parameters to execute |
//! | `approval_id` | the decision record |
//! | `decision_method` | `policy` or `human` |
//! | `amount` | `{"minor_units": u64, "currency": "CNY"}`: the approved amount, when there is one |
//! | `scope` | the approved scope (an integer), when there is one |
//!
//! Lifetimes: [`TokenIssuer`] is process-wide (the signing key and the keys still verifiable,
//! swapped as a whole on rotation, so minting never waits and never touches the database);
//! [`TokenVerifier`] is a snapshot of the verification keys. This module never reads the system
//! clock: every time comes from a `now_ms` argument.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{SigningKey, VerifyingKey};
use jwt_compact::alg::Ed25519;
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{AlgorithmExt as _, Claims, Header, UntrustedToken, ValidationError};
use rand::TryRng as _;
use rand::rngs::SysRng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use crate::canonical::{CanonicalError, params_hash};
use crate::risk::Money;
use crate::store::{Db, StoreError, keys};

/// The default lifetime of a token.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);

/// The longest lifetime a configuration may give tokens: a capability is used at once.
pub const MAX_TTL: Duration = Duration::from_secs(60 * 60);

/// The shortest lifetime: `exp` has a resolution of one second.
pub const MIN_TTL: Duration = Duration::from_secs(1);

/// The longest token [`TokenVerifier::verify`] parses; ours are well under 1 KiB.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The JWS algorithm of every token (RFC 8037 section 3.1).
const ALG: &str = "EdDSA";

/// The `typ` header of every token.
const TYP: &str = "JWT";

/// The last millisecond this module accepts as a time (9999-12-31T23:59:59Z), well inside what
/// the timestamp types underneath represent.
const MAX_TIME_MS: u64 = 253_402_300_799_000;

/// Who settled the request the token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecisionMethod {
    /// The policy allowed it without a human.
    Policy,
    /// A guardian approved it (possibly amended).
    Human,
}

impl DecisionMethod {
    /// The value of the `decision_method` claim.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionMethod::Policy => "policy",
            DecisionMethod::Human => "human",
        }
    }

    /// The method whose claim value is `name`.
    pub fn parse(name: &str) -> Option<Self> {
        [DecisionMethod::Policy, DecisionMethod::Human]
            .into_iter()
            .find(|m| m.as_str() == name)
    }
}

/// What the token grants beyond the exact parameters: the approved amount or scope. For a
/// revised request, the amended one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Nothing beyond the parameters.
    None,
    /// An approved amount (claim `amount`).
    Amount(Money),
    /// An approved scope (claim `scope`).
    Scope(u64),
}

/// What a capability token binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityClaims {
    /// The vendor (`aud`): the service that executes the action.
    pub vendor: String,
    /// The actor (`sub`).
    pub actor: String,
    /// The action kind (`act`), e.g. `payment`.
    pub action: String,
    /// [`crate::canonical::params_hash`] of the parameters that may be executed.
    pub params_hash: String,
    /// The approved amount or scope.
    pub grant: Grant,
    /// The decision record the token comes from.
    pub approval_id: String,
    /// Who decided.
    pub decision_method: DecisionMethod,
}

/// A minted token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintedToken {
    /// Its unique id (`jti`).
    pub id: String,
    /// The compact JWT.
    pub token: String,
    /// When it expires (`exp`, in milliseconds: a multiple of 1000).
    pub expires_at_ms: u64,
    /// The `kid` of the key that signed it.
    pub key_id: String,
}

/// How the host signs tokens.
#[derive(Clone)]
pub struct TokenConfig {
    /// The `iss` claim, e.g. `approval-host` or the host's URL.
    pub issuer: String,
    /// How long a token is valid, between [`MIN_TTL`] and [`MAX_TTL`].
    pub ttl: Duration,
    /// An Ed25519 seed from configuration. `None`: use the persisted signing key, or generate
    /// and persist one on first start.
    pub signing_key: Option<[u8; 32]>,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            issuer: "approval-host".to_owned(),
            ttl: DEFAULT_TTL,
            signing_key: None,
        }
    }
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("issuer", &self.issuer)
            .field("ttl", &self.ttl)
            .field("signing_key", &self.signing_key.map(|_| "<redacted>"))
            .finish()
    }
}

/// A token that verified, with what it binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCapability {
    /// The claims the token binds.
    pub claims: CapabilityClaims,
    /// Its unique id (`jti`): what a service records to refuse a replay.
    pub token_id: String,
    /// The `kid` of the key that signed it.
    pub key_id: String,
    /// `iat`, in milliseconds.
    pub issued_at_ms: u64,
    /// `exp`, in milliseconds.
    pub expires_at_ms: u64,
}

/// Why a token cannot be minted or verified, or the keys cannot be loaded. [`TokenError::code`]
/// gives each a stable machine-readable name.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a compact JWS with the expected header and claims.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header names an algorithm other than `EdDSA` (`none`, `HS256`, ...).
    #[error("unsupported token algorithm {0:?}: only EdDSA is accepted")]
    UnsupportedAlgorithm(String),
    /// No verification key has the token's `kid` (a foreign key, or one retired too long ago).
    #[error("unknown token key {0:?}")]
    UnknownKey(String),
    /// The signature does not verify: the token was altered or signed by another key.
    #[error("token signature does not verify")]
    BadSignature,
    /// `iss` is not the expected issuer.
    #[error("token issued by someone else")]
    WrongIssuer,
    /// `aud` is not the expected vendor.
    #[error("token is for another vendor")]
    WrongAudience,
    /// `sub` is not the actor the service is acting for.
    #[error("token is for another actor")]
    WrongActor,
    /// `act` is not the action the service is about to execute.
    #[error("token is for another action")]
    WrongAction,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// The parameters presented are not the ones the token binds.
    #[error("the parameters do not match the token's params_hash")]
    ParamsMismatch,
    /// The parameters presented cannot be hashed.
    #[error("parameters cannot be hashed: {0}")]
    InvalidParams(#[source] CanonicalError),
    /// Claims that cannot be minted (an empty field, a `params_hash` that is not SHA-256 hex).
    #[error("invalid token claims: {0}")]
    InvalidClaims(String),
    /// A JWKS that cannot be used.
    #[error("invalid JWKS: {0}")]
    InvalidJwks(String),
    /// A configuration that cannot be used.
    #[error("invalid token configuration: {0}")]
    InvalidConfig(String),
    /// The operating system's random generator failed.
    #[error("no randomness available: {0}")]
    Entropy(String),
    /// The token cannot be encoded (a time out of range).
    #[error("cannot encode token: {0}")]
    Encoding(String),
    /// Reading or writing the keys failed.
    #[error("token key storage failed: {0}")]
    Storage(#[from] StoreError),
}

impl TokenError {
    /// The stable machine-readable code of the error.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "token_malformed",
            TokenError::UnsupportedAlgorithm(_) => "token_unsupported_algorithm",
            TokenError::UnknownKey(_) => "token_unknown_key",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::WrongIssuer => "token_wrong_issuer",
            TokenError::WrongAudience => "token_wrong_audience",
            TokenError::WrongActor => "token_wrong_actor",
            TokenError::WrongAction => "token_wrong_action",
            TokenError::Expired => "token_expired",
            TokenError::ParamsMismatch => "token_params_mismatch",
            TokenError::InvalidParams(_) => "params_invalid",
            TokenError::InvalidClaims(_) => "token_claims_invalid",
            TokenError::InvalidJwks(_) => "jwks_invalid",
            TokenError::InvalidConfig(_) => "token_config_invalid",
            TokenError::Entropy(_) => "token_entropy_unavailable",
            TokenError::Encoding(_) => "token_encoding_failed",
            TokenError::Storage(_) => "token_storage_failed",
        }
    }
}

/// The `kid` of an Ed25519 public key: its RFC 7638 JWK thumbprint (SHA-256, base64url).
pub fn key_id(key: &VerifyingKey) -> String {
    URL_SAFE_NO_PAD.encode(JsonWebKey::from(key).thumbprint::<Sha256>())
}

/// The public JWK of `key` as published in the JWKS:
/// `{"kty":"OKP","crv":"Ed25519","x":..,"kid":..,"alg":"EdDSA","use":"sig"}`.
pub fn public_jwk(key: &VerifyingKey) -> String {
    to_json(&PublishedJwk::of(key))
}

/// A public key as published (private: the wire shape stays in this module).
#[derive(Serialize)]
struct PublishedJwk {
    kty: &'static str,
    crv: &'static str,
    x: String,
    kid: String,
    alg: &'static str,
    #[serde(rename = "use")]
    use_: &'static str,
}

impl PublishedJwk {
    fn of(key: &VerifyingKey) -> Self {
        Self {
            kty: "OKP",
            crv: "Ed25519",
            x: URL_SAFE_NO_PAD.encode(key.as_bytes()),
            kid: key_id(key),
            alg: ALG,
            use_: "sig",
        }
    }
}

#[derive(Serialize)]
struct PublishedJwks {
    keys: Vec<PublishedJwk>,
}

/// JSON of a value made of strings only, whose serialization cannot fail.
fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The claims as they travel in the token (private: the domain types carry no serde). Every
/// field has a default so that a token missing a claim parses, fails its signature check and is
/// reported as such; required claims are checked once the signature holds.
#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
struct WireClaims {
    iss: String,
    sub: String,
    aud: String,
    jti: String,
    act: String,
    params_hash: String,
    approval_id: String,
    decision_method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    amount: Option<WireAmount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireAmount {
    minor_units: u64,
    currency: String,
}

/// Header fields beyond those jwt-compact reads, which this module must look at.
#[derive(Clone, Deserialize)]
struct HeaderExtras {
    /// RFC 7515 section 4.1.11: extensions a verifier must understand. We understand none.
    #[serde(default)]
    crit: Option<Value>,
}

/// One JWK of a JWKS, as read by [`TokenVerifier::from_jwks`].
#[derive(Deserialize)]
struct JwkRecord {
    kty: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
}

#[derive(Deserialize)]
struct JwksRecord {
    keys: Vec<Value>,
}

/// A key that verifies tokens.
#[derive(Debug, Clone)]
struct PublicKey {
    kid: String,
    key: VerifyingKey,
    /// When it stopped signing; published until `retired_at_ms + ttl`.
    retired_at_ms: Option<u64>,
}

/// The issuer's keys at one moment: swapped as a whole on rotation.
struct KeySet {
    signing: SigningKey,
    signing_kid: String,
    /// The signing key's public half first, then retired keys whose tokens may be unexpired.
    public: Vec<PublicKey>,
}

impl KeySet {
    /// The set of the stored keys (signing key first, as `store::keys::list_keys` orders them);
    /// `None` when there is no signing key.
    fn from_stored(stored: &[keys::StoredKey]) -> Result<Option<Self>, StoreError> {
        let mut signing = None;
        let mut public = Vec::with_capacity(stored.len());
        for row in stored {
            let key = SigningKey::from_bytes(&row.secret);
            let kid = key_id(&key.verifying_key());
            if kid != row.kid {
                return Err(StoreError::Corrupt(format!(
                    "token key {}: the secret's thumbprint is {kid}",
                    row.kid
                )));
            }
            public.push(PublicKey {
                kid: kid.clone(),
                key: key.verifying_key(),
                retired_at_ms: row.retired_at_ms,
            });
            if row.retired_at_ms.is_none() {
                signing = Some((key, kid));
            }
        }
        Ok(signing.map(|(signing, signing_kid)| KeySet {
            signing,
            signing_kid,
            public,
        }))
    }

    /// The keys a verifier accepts at `now_ms`: the signing key and the retired keys whose
    /// tokens may not have expired yet.
    fn published(&self, now_ms: u64, ttl: Duration) -> impl Iterator<Item = &PublicKey> {
        let ttl_ms = millis(ttl);
        self.public.iter().filter(move |k| match k.retired_at_ms {
            None => true,
            Some(retired) => retired.saturating_add(ttl_ms) > now_ms,
        })
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `N` bytes from the operating system's random generator.
fn random_bytes<const N: usize>() -> Result<[u8; N], TokenError> {
    let mut bytes = [0u8; N];
    SysRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| TokenError::Entropy(e.to_string()))?;
    Ok(bytes)
}

/// A new random signing key and its kid.
fn generate_key() -> Result<([u8; 32], String), TokenError> {
    let seed = random_bytes::<32>()?;
    let kid = key_id(&SigningKey::from_bytes(&seed).verifying_key());
    Ok((seed, kid))
}

/// The keys that are live at `now_ms` (the signing key, and those retired less than `ttl` ago);
/// generates and persists a signing key when there is none. Replicas racing here all end up with
/// the one key the database accepted.
async fn load_keys(db: &Db, ttl: Duration, now_ms: u64) -> Result<KeySet, TokenError> {
    for _ in 0..8 {
        let stored = keys::list_keys(db, now_ms.saturating_sub(millis(ttl))).await?;
        if let Some(set) = KeySet::from_stored(&stored)? {
            return Ok(set);
        }
        let (seed, kid) = generate_key()?;
        // `false`: another replica installed a key first; the next read finds it.
        keys::insert_key(db, &kid, &seed, now_ms).await?;
    }
    Err(TokenError::Storage(StoreError::Corrupt(
        "no token signing key could be installed".to_owned(),
    )))
}

/// Mints capability tokens and publishes the keys that verify them. Process-wide.
pub struct TokenIssuer {
    /// The `iss` claim.
    issuer: String,
    /// Lifetime of the tokens, and how long a retired key stays published.
    ttl: Duration,
    /// The signing key and the still-verifiable ones; replaced as a whole by `rotate` and
    /// `refresh` so that minting reads a consistent set without a lock.
    keys: ArcSwap<KeySet>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("issuer", &self.issuer)
            .field("ttl", &self.ttl)
            .field("signing_kid", &self.keys.load().signing_kid)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// Loads the signing key, or on first start generates and persists one. A key from the
    /// configuration becomes the signing key (the previous one is retired and stays verifiable
    /// for one TTL). Several replicas opening at once agree on one key.
    ///
    /// # Errors
    /// An invalid configuration (empty issuer, TTL out of bounds), a storage failure, stored
    /// keys that are corrupt, or no randomness for a new key.
    pub async fn open(db: &Db, config: TokenConfig, now_ms: u64) -> Result<Self, TokenError> {
        if config.issuer.is_empty() {
            return Err(TokenError::InvalidConfig("the issuer is empty".to_owned()));
        }
        if !(MIN_TTL..=MAX_TTL).contains(&config.ttl) {
            return Err(TokenError::InvalidConfig(format!(
                "the token TTL {:?} is outside {MIN_TTL:?}..={MAX_TTL:?}",
                config.ttl
            )));
        }
        if let Some(seed) = config.signing_key {
            let kid = key_id(&SigningKey::from_bytes(&seed).verifying_key());
            let current = keys::list_keys(db, u64::MAX).await?;
            if current.first().is_none_or(|k| k.kid != kid) {
                keys::activate_key(db, &kid, &seed, now_ms).await?;
            }
        }
        let set = load_keys(db, config.ttl, now_ms).await?;
        Ok(Self::with_keys(config.issuer, config.ttl, set))
    }

    fn with_keys(issuer: String, ttl: Duration, set: KeySet) -> Self {
        Self {
            issuer,
            ttl,
            keys: ArcSwap::from_pointee(set),
        }
    }

    /// The `iss` claim of the tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The lifetime of the tokens.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The `kid` of the key that signs new tokens.
    pub fn signing_key_id(&self) -> String {
        self.keys.load().signing_kid.clone()
    }

    /// Mints a token for `claims`, valid from `now_ms` for the configured TTL (`exp` is rounded
    /// down to the second). No database access.
    ///
    /// # Errors
    /// Claims with an empty field or a `params_hash` that is not 64 lowercase hex digits, a time
    /// out of range, or no randomness for the `jti`.
    pub fn mint(&self, claims: &CapabilityClaims, now_ms: u64) -> Result<MintedToken, TokenError> {
        let jti = hex::encode(random_bytes::<16>()?);
        self.mint_with_id(claims, jti, now_ms)
    }

    /// [`Self::mint`] with a given `jti` (deterministic: the known-answer tests use it).
    fn mint_with_id(
        &self,
        claims: &CapabilityClaims,
        jti: String,
        now_ms: u64,
    ) -> Result<MintedToken, TokenError> {
        check_claims(claims)?;
        if now_ms > MAX_TIME_MS {
            return Err(TokenError::Encoding(format!(
                "time {now_ms} ms is out of range"
            )));
        }
        let issued_at_s = now_ms / 1000;
        let expires_at_s = now_ms.saturating_add(millis(self.ttl)) / 1000;
        let (amount, scope) = match &claims.grant {
            Grant::None => (None, None),
            Grant::Amount(money) => (
                Some(WireAmount {
                    minor_units: money.minor_units,
                    currency: money.currency.clone(),
                }),
                None,
            ),
            Grant::Scope(scope) => (None, Some(*scope)),
        };
        let mut jwt = Claims::new(WireClaims {
            iss: self.issuer.clone(),
            sub: claims.actor.clone(),
            aud: claims.vendor.clone(),
            jti: jti.clone(),
            act: claims.action.clone(),
            params_hash: claims.params_hash.clone(),
            approval_id: claims.approval_id.clone(),
            decision_method: claims.decision_method.as_str().to_owned(),
            amount,
            scope,
        });
        // jwt-compact's timestamps are chrono's; the conversion from `SystemTime` saves naming
        // chrono here. Both times are below MAX_TIME_MS, so neither conversion can fail.
        jwt.issued_at = Some((SystemTime::UNIX_EPOCH + Duration::from_secs(issued_at_s)).into());
        jwt.expiration = Some((SystemTime::UNIX_EPOCH + Duration::from_secs(expires_at_s)).into());

        let keys = self.keys.load();
        let header = Header::empty()
            .with_key_id(keys.signing_kid.clone())
            .with_token_type(TYP);
        let token = Ed25519
            .token(&header, &jwt, &keys.signing)
            .map_err(|e| TokenError::Encoding(e.to_string()))?;
        Ok(MintedToken {
            id: jti,
            token,
            expires_at_ms: expires_at_s * 1000,
            key_id: keys.signing_kid.clone(),
        })
    }

    /// Replaces the signing key with a new random one, persisted before it is used. The old key
    /// stays in the JWKS (and in [`Self::verifier`]) until `now_ms + ttl`, when every token it
    /// signed has expired. Returns the `kid` that now signs (the new key, unless another
    /// replica rotated at the same moment and won). With a key from the configuration, the next
    /// start makes the configured key the signing key again: rotate that one by changing the
    /// configuration.
    ///
    /// # Errors
    /// A storage failure, or no randomness for the new key.
    pub async fn rotate(&self, db: &Db, now_ms: u64) -> Result<String, TokenError> {
        let (seed, kid) = generate_key()?;
        keys::activate_key(db, &kid, &seed, now_ms).await?;
        self.refresh(db, now_ms).await
    }

    /// Re-reads the keys from the database, to pick up a rotation by another replica. A replica
    /// that keeps minting with a key another one retired does so until it refreshes, so call this
    /// at an interval well below the TTL. Returns the `kid` that now signs.
    ///
    /// # Errors
    /// A storage failure, corrupt stored keys, or no randomness when no key is left to sign.
    pub async fn refresh(&self, db: &Db, now_ms: u64) -> Result<String, TokenError> {
        let set = load_keys(db, self.ttl, now_ms).await?;
        let kid = set.signing_kid.clone();
        self.keys.store(Arc::new(set));
        Ok(kid)
    }

    /// The JWKS to publish at `now_ms`:
    /// `{"keys":[{"kty":"OKP","crv":"Ed25519","x":..,"kid":..,"alg":"EdDSA","use":"sig"}, ..]}`,
    /// the signing key first, then retired keys whose tokens may not have expired.
    pub fn jwks(&self, now_ms: u64) -> String {
        let keys = self.keys.load();
        to_json(&PublishedJwks {
            keys: keys
                .published(now_ms, self.ttl)
                .map(|k| PublishedJwk::of(&k.key))
                .collect(),
        })
    }

    /// A verifier of this issuer's tokens for `vendor` with the keys published at `now_ms`: what
    /// that vendor's service builds from [`Self::jwks`].
    pub fn verifier(&self, now_ms: u64, vendor: &str) -> TokenVerifier {
        let keys = self.keys.load();
        TokenVerifier {
            issuer: self.issuer.clone(),
            audience: vendor.to_owned(),
            keys: keys
                .published(now_ms, self.ttl)
                .map(|k| (k.kid.clone(), k.key))
                .collect(),
        }
    }
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_claims(claims: &CapabilityClaims) -> Result<(), TokenError> {
    for (name, value) in [
        ("vendor", &claims.vendor),
        ("actor", &claims.actor),
        ("action", &claims.action),
        ("approval_id", &claims.approval_id),
    ] {
        if value.is_empty() {
            return Err(TokenError::InvalidClaims(format!("{name} is empty")));
        }
    }
    if !is_sha256_hex(&claims.params_hash) {
        return Err(TokenError::InvalidClaims(
            "params_hash is not 64 lowercase hex digits".to_owned(),
        ));
    }
    if let Grant::Amount(money) = &claims.grant
        && money.currency.is_empty()
    {
        return Err(TokenError::InvalidClaims(
            "the amount has no currency".to_owned(),
        ));
    }
    Ok(())
}

/// What a vendor's service is about to do, which a token must have been minted for.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The actor it acts for (the token's `sub`).
    pub actor: &'a str,
    /// The action kind it executes (`act`), e.g. `payment`.
    pub action: &'a str,
    /// The params it executes, hashed as the host hashed the approved ones (`params_hash`).
    pub params: &'a Value,
}

/// Verifies capability tokens offline for one vendor's service: the signature by `kid` against a
/// set of public keys, the algorithm, the issuer, the audience, and for each token the actor, the
/// action, the expiry and the parameters the service is about to execute.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    /// The expected `iss`.
    issuer: String,
    /// The expected `aud`: the vendor whose service verifies.
    audience: String,
    /// The verification keys by `kid`.
    keys: Vec<(String, VerifyingKey)>,
}

impl TokenVerifier {
    /// A verifier with the Ed25519 keys of a JWKS (as [`TokenIssuer::jwks`] publishes it), for
    /// tokens of `issuer` to `vendor` (the `aud` every token must name). Keys of other types,
    /// algorithms or uses are ignored (RFC 7517 section 5), as are keys without a `kid`.
    ///
    /// # Errors
    /// The JSON is not a JWKS, an Ed25519 key is not a valid (or is a weak) public key, two keys
    /// share a `kid`, no Ed25519 key is usable, or `issuer` or `vendor` is empty.
    pub fn from_jwks(jwks_json: &str, issuer: &str, vendor: &str) -> Result<Self, TokenError> {
        if issuer.is_empty() {
            return Err(TokenError::InvalidConfig("the issuer is empty".to_owned()));
        }
        if vendor.is_empty() {
            return Err(TokenError::InvalidConfig("the vendor is empty".to_owned()));
        }
        let jwks: JwksRecord =
            serde_json::from_str(jwks_json).map_err(|e| TokenError::InvalidJwks(e.to_string()))?;
        let mut keys: Vec<(String, VerifyingKey)> = Vec::new();
        for value in jwks.keys {
            let jwk: JwkRecord = serde_json::from_value(value)
                .map_err(|e| TokenError::InvalidJwks(e.to_string()))?;
            let ours = jwk.kty.as_deref() == Some("OKP")
                && jwk.crv.as_deref() == Some("Ed25519")
                && jwk.alg.as_deref().is_none_or(|alg| alg == ALG)
                && jwk.use_.as_deref().is_none_or(|u| u == "sig");
            let (true, Some(kid)) = (ours, jwk.kid) else {
                continue;
            };
            let x = jwk.x.unwrap_or_default();
            let key = URL_SAFE_NO_PAD
                .decode(&x)
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok())
                .filter(|key| !key.is_weak())
                .ok_or_else(|| {
                    TokenError::InvalidJwks(format!("key {kid:?}: x is not an Ed25519 public key"))
                })?;
            if keys.iter().any(|(k, _)| *k == kid) {
                return Err(TokenError::InvalidJwks(format!(
                    "two keys have the kid {kid:?}"
                )));
            }
            keys.push((kid, key));
        }
        if keys.is_empty() {
            return Err(TokenError::InvalidJwks("no Ed25519 signing key".to_owned()));
        }
        Ok(Self {
            issuer: issuer.to_owned(),
            audience: vendor.to_owned(),
            keys,
        })
    }

    /// The `kid`s this verifier accepts.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(kid, _)| kid.as_str())
    }

    /// Checks the token's algorithm (`EdDSA` only), its signature by the key its `kid` names, its
    /// issuer, its audience (this verifier's vendor), that it is for the `expected` actor and
    /// action, its expiry at `now_ms`, and that the `expected` params hash to its `params_hash`;
    /// returns what it binds. The caller then settles its `jti` once: a token is single-use.
    ///
    /// # Errors
    /// [`TokenError::Malformed`], [`TokenError::UnsupportedAlgorithm`],
    /// [`TokenError::UnknownKey`], [`TokenError::BadSignature`], [`TokenError::WrongIssuer`],
    /// [`TokenError::WrongAudience`], [`TokenError::WrongActor`], [`TokenError::WrongAction`],
    /// [`TokenError::Expired`], [`TokenError::InvalidParams`] or [`TokenError::ParamsMismatch`],
    /// checked in that order, except that claims of the wrong JSON type (a string `exp`) are
    /// reported as malformed before the signature is checked: jwt-compact parses claims first.
    /// Any other change to a token is a bad signature.
    pub fn verify(
        &self,
        token: &str,
        expected: &Expected<'_>,
        now_ms: u64,
    ) -> Result<VerifiedCapability, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed(format!(
                "longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        let untrusted = UntrustedToken::<HeaderExtras>::try_from(token)
            .map_err(|e| TokenError::Malformed(e.to_string()))?;
        if untrusted.algorithm() != ALG {
            return Err(TokenError::UnsupportedAlgorithm(
                untrusted.algorithm().to_owned(),
            ));
        }
        let header = untrusted.header();
        if header.other_fields.crit.is_some() {
            return Err(TokenError::Malformed(
                "critical header extensions".to_owned(),
            ));
        }
        if header
            .token_type
            .as_deref()
            .is_some_and(|typ| !typ.eq_ignore_ascii_case(TYP))
        {
            return Err(TokenError::Malformed("typ is not JWT".to_owned()));
        }
        let kid = header
            .key_id
            .as_deref()
            .ok_or_else(|| TokenError::Malformed("no kid".to_owned()))?;
        let (kid, key) = self
            .keys
            .iter()
            .find(|(k, _)| k == kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.to_owned()))?;

        let verified = Ed25519
            .validator::<WireClaims>(key)
            .validate(&untrusted)
            .map_err(|e| match e {
                ValidationError::AlgorithmMismatch { actual, .. } => {
                    TokenError::UnsupportedAlgorithm(actual)
                }
                ValidationError::InvalidSignature
                | ValidationError::InvalidSignatureLen { .. }
                | ValidationError::MalformedSignature(_) => TokenError::BadSignature,
                other => TokenError::Malformed(other.to_string()),
            })?;
        let claims = verified.claims();
        let wire = &claims.custom;

        if wire.iss != self.issuer {
            return Err(TokenError::WrongIssuer);
        }
        if self.audience != wire.aud {
            return Err(TokenError::WrongAudience);
        }
        if expected.actor != wire.sub {
            return Err(TokenError::WrongActor);
        }
        if expected.action != wire.act {
            return Err(TokenError::WrongAction);
        }
        let time_ms = |seconds: Option<i64>, name: &str| {
            seconds
                .and_then(|s| u64::try_from(s).ok())
                .and_then(|s| s.checked_mul(1000))
                .ok_or_else(|| TokenError::Malformed(format!("no valid {name}")))
        };
        let expires_at_ms = time_ms(claims.expiration.map(|t| t.timestamp()), "exp")?;
        let issued_at_ms = time_ms(claims.issued_at.map(|t| t.timestamp()), "iat")?;
        if now_ms >= expires_at_ms {
            return Err(TokenError::Expired);
        }

        let decision_method = DecisionMethod::parse(&wire.decision_method).ok_or_else(|| {
            TokenError::Malformed(format!("decision_method {:?}", wire.decision_method))
        })?;
        let grant = match (&wire.amount, wire.scope) {
            (None, None) => Grant::None,
            (Some(amount), None) => Grant::Amount(Money {
                minor_units: amount.minor_units,
                currency: amount.currency.clone(),
            }),
            (None, Some(scope)) => Grant::Scope(scope),
            (Some(_), Some(_)) => {
                return Err(TokenError::Malformed("both amount and scope".to_owned()));
            }
        };
        for (name, value) in [
            ("sub", &wire.sub),
            ("aud", &wire.aud),
            ("jti", &wire.jti),
            ("act", &wire.act),
            ("approval_id", &wire.approval_id),
        ] {
            if value.is_empty() {
                return Err(TokenError::Malformed(format!("no {name}")));
            }
        }

        if params_hash(expected.params).map_err(TokenError::InvalidParams)? != wire.params_hash {
            return Err(TokenError::ParamsMismatch);
        }
        Ok(VerifiedCapability {
            claims: CapabilityClaims {
                vendor: wire.aud.clone(),
                actor: wire.sub.clone(),
                action: wire.act.clone(),
                params_hash: wire.params_hash.clone(),
                grant,
                approval_id: wire.approval_id.clone(),
                decision_method,
            },
            token_id: wire.jti.clone(),
            key_id: kid.clone(),
            issued_at_ms,
            expires_at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use jwt_compact::Algorithm as _;
    use serde_json::json;

    use super::*;

    /// RFC 8037 appendix A.1: the Ed25519 private key `d` (the RFC 8032 section 7.1 test 1 seed)
    /// and its public key `x`.
    const RFC8037_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
    const RFC8037_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    /// RFC 8037 appendix A.3: the RFC 7638 thumbprint of that key, hex and base64url.
    const RFC8037_THUMBPRINT_HEX: &str =
        "90facafea9b1556698540f70c0117a22ea37bd5cf3ed3c47093c1707282b4b89";
    const RFC8037_THUMBPRINT: &str = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k";
    /// RFC 8037 appendix A.4: the JWS of "Example of Ed25519 signing" with `{"alg":"EdDSA"}`.
    const RFC8037_SIGNING_INPUT: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
    const RFC8037_SIGNATURE: &str =
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

    const NOW_MS: u64 = 1_795_000_000_123;

    fn rfc_seed() -> [u8; 32] {
        URL_SAFE_NO_PAD
            .decode(RFC8037_D)
            .unwrap()
            .try_into()
            .unwrap()
    }

    /// An issuer with the RFC 8037 key alone, without a database.
    fn rfc_issuer() -> TokenIssuer {
        let seed = rfc_seed();
        let stored = [keys::StoredKey {
            kid: RFC8037_THUMBPRINT.to_owned(),
            secret: seed,
            created_at_ms: 0,
            retired_at_ms: None,
        }];
        let set = KeySet::from_stored(&stored).unwrap().unwrap();
        TokenIssuer::with_keys("approval-host".to_owned(), DEFAULT_TTL, set)
    }

    fn params() -> Value {
        json!({"recipient": "toy-shop", "currency": "CNY", "amount": 60000})
    }

    fn payment_claims() -> CapabilityClaims {
        CapabilityClaims {
            vendor: "acme-toys".into(),
            actor: "teddy-7".into(),
            action: "payment".into(),
            params_hash: params_hash(&params()).unwrap(),
            grant: Grant::Amount(Money::new(60000, "CNY")),
            approval_id: "apr_0001".into(),
            decision_method: DecisionMethod::Human,
        }
    }

    fn rfc_jwk() -> Value {
        serde_json::from_str(&public_jwk(
            &SigningKey::from_bytes(&rfc_seed()).verifying_key(),
        ))
        .unwrap()
    }

    fn segment_json(token: &str, index: usize) -> Value {
        let part = token.split('.').nth(index).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn rfc8037_a1_a2_public_key_derivation() {
        let key = SigningKey::from_bytes(&rfc_seed());
        assert_eq!(
            URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
            RFC8037_X
        );
    }

    #[test]
    fn rfc8037_a3_thumbprint_is_the_kid() {
        let key = SigningKey::from_bytes(&rfc_seed()).verifying_key();
        assert_eq!(key_id(&key), RFC8037_THUMBPRINT);
        assert_eq!(
            hex::encode(URL_SAFE_NO_PAD.decode(key_id(&key)).unwrap()),
            RFC8037_THUMBPRINT_HEX
        );
        let jwk = format!(
            r#"{{"kty":"OKP","crv":"Ed25519","x":"{RFC8037_X}","kid":"{RFC8037_THUMBPRINT}","alg":"EdDSA","use":"sig"}}"#
        );
        assert_eq!(public_jwk(&key), jwk);
        assert_eq!(rfc_issuer().jwks(NOW_MS), format!(r#"{{"keys":[{jwk}]}}"#));
    }

    /// The signature primitive the tokens use reproduces RFC 8037 A.4 byte for byte, and accepts
    /// it (A.5).
    #[test]
    fn rfc8037_a4_a5_signature() {
        let key = SigningKey::from_bytes(&rfc_seed());
        let signature = Ed25519.sign(&key, RFC8037_SIGNING_INPUT.as_bytes());
        assert_eq!(
            URL_SAFE_NO_PAD.encode(signature.to_bytes()),
            RFC8037_SIGNATURE
        );
        assert!(Ed25519.verify_signature(
            &signature,
            &key.verifying_key(),
            RFC8037_SIGNING_INPUT.as_bytes()
        ));
        let mut altered = RFC8037_SIGNING_INPUT.as_bytes().to_vec();
        altered[30] ^= 1;
        assert!(!Ed25519.verify_signature(&signature, &key.verifying_key(), &altered));
    }

    /// A whole token with the RFC 8037 key, a fixed time and `jti`, computed independently (with
    /// Python's `cryptography` package, serializing the header and claims in this order).
    #[test]
    fn token_known_answer() {
        let minted = rfc_issuer()
            .mint_with_id(
                &payment_claims(),
                "00112233445566778899aabbccddeeff".into(),
                NOW_MS,
            )
            .unwrap();
        assert_eq!(
            minted.token,
            "eyJhbGciOiJFZERTQSIsImtpZCI6ImtQcktfcW14VldhWVZBOXd3QkY2SXVvM3ZWeno3VHhIQ1R3WEJ5Z3JTNGsiLCJ0eXAiOiJKV1QifQ.\
             eyJleHAiOjE3OTUwMDAzMDAsImlhdCI6MTc5NTAwMDAwMCwiaXNzIjoiYXBwcm92YWwtaG9zdCIsInN1YiI6InRlZGR5LTciLCJhdWQiOiJhY21lLXRveXMiLCJqdGkiOiIwMDExMjIzMzQ0NTU2Njc3ODg5OWFhYmJjY2RkZWVmZiIsImFjdCI6InBheW1lbnQiLCJwYXJhbXNfaGFzaCI6ImE4ZmIxMjRjM2ZiNWYwNTFhMzhkNTA0YmIyNDlkMWUzM2EzNjk5OWNjOWNlNTBjYzM3ODdmMGJhYjQ3ODAzNGMiLCJhcHByb3ZhbF9pZCI6ImFwcl8wMDAxIiwiZGVjaXNpb25fbWV0aG9kIjoiaHVtYW4iLCJhbW91bnQiOnsibWlub3JfdW5pdHMiOjYwMDAwLCJjdXJyZW5jeSI6IkNOWSJ9fQ.\
             1kGQg9Zl54sxl0ixNzfHpc4qUUJOOmy5OSvLWwwNZj5JKfP6A99p9mBTkuNoZsSsEBLPWo3ZG-sPvLDDutGvCQ"
        );
        assert_eq!(minted.expires_at_ms, 1_795_000_300_000);
        assert_eq!(minted.key_id, RFC8037_THUMBPRINT);
        assert_eq!(minted.id, "00112233445566778899aabbccddeeff");
    }

    #[test]
    fn claims_encoding() {
        let issuer = rfc_issuer();
        let minted = issuer.mint(&payment_claims(), NOW_MS).unwrap();
        assert_eq!(
            segment_json(&minted.token, 0),
            json!({"alg": "EdDSA", "kid": RFC8037_THUMBPRINT, "typ": "JWT"})
        );
        let payload = segment_json(&minted.token, 1);
        assert_eq!(
            payload,
            json!({
                "iss": "approval-host", "sub": "teddy-7", "aud": "acme-toys",
                "iat": 1_795_000_000u64, "exp": 1_795_000_300u64, "jti": minted.id,
                "act": "payment",
                "params_hash": "a8fb124c3fb5f051a38d504bb249d1e33a36999cc9ce50cc3787f0bab478034c",
                "approval_id": "apr_0001", "decision_method": "human",
                "amount": {"minor_units": 60000, "currency": "CNY"},
            })
        );
        assert_eq!(minted.id.len(), 32);
        assert!(minted.id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(
            issuer.mint(&payment_claims(), NOW_MS).unwrap().id,
            minted.id
        );

        let scoped = CapabilityClaims {
            grant: Grant::Scope(3),
            decision_method: DecisionMethod::Policy,
            ..payment_claims()
        };
        let payload = segment_json(&issuer.mint(&scoped, NOW_MS).unwrap().token, 1);
        assert_eq!(payload["scope"], json!(3));
        assert_eq!(payload["decision_method"], json!("policy"));
        assert!(payload.get("amount").is_none());

        let plain = CapabilityClaims {
            grant: Grant::None,
            ..payment_claims()
        };
        let payload = segment_json(&issuer.mint(&plain, NOW_MS).unwrap().token, 1);
        assert!(payload.get("amount").is_none() && payload.get("scope").is_none());
    }

    #[test]
    fn minted_claims_round_trip() {
        let issuer = rfc_issuer();
        for grant in [
            Grant::None,
            Grant::Scope(7),
            Grant::Amount(Money::new(1, "EUR")),
        ] {
            let claims = CapabilityClaims {
                grant,
                ..payment_claims()
            };
            let minted = issuer.mint(&claims, NOW_MS).unwrap();
            let expected = Expected {
                actor: "teddy-7",
                action: "payment",
                params: &params(),
            };
            let verified = issuer
                .verifier(NOW_MS, "acme-toys")
                .verify(&minted.token, &expected, NOW_MS)
                .unwrap();
            assert_eq!(verified.claims, claims);
            assert_eq!(verified.token_id, minted.id);
            assert_eq!(verified.key_id, RFC8037_THUMBPRINT);
            assert_eq!(verified.issued_at_ms, 1_795_000_000_000);
            assert_eq!(verified.expires_at_ms, minted.expires_at_ms);
        }
    }

    #[test]
    fn mint_refuses_invalid_claims() {
        let issuer = rfc_issuer();
        for claims in [
            CapabilityClaims {
                vendor: String::new(),
                ..payment_claims()
            },
            CapabilityClaims {
                params_hash: "ABC".into(),
                ..payment_claims()
            },
            CapabilityClaims {
                params_hash: "A8FB124C3FB5F051A38D504BB249D1E33A36999CC9CE50CC3787F0BAB478034C"
                    .into(),
                ..payment_claims()
            },
        ] {
            let err = issuer.mint(&claims, NOW_MS).unwrap_err();
            assert_eq!(err.code(), "token_claims_invalid", "{err}");
        }
        assert_eq!(
            issuer.mint(&payment_claims(), u64::MAX).unwrap_err().code(),
            "token_encoding_failed"
        );
    }

    #[test]
    fn jwks_parsing() {
        let issuer = rfc_issuer();
        let jwks = issuer.jwks(NOW_MS);
        let verifier = TokenVerifier::from_jwks(&jwks, "approval-host", "acme-toys").unwrap();
        assert_eq!(verifier.key_ids().collect::<Vec<_>>(), [RFC8037_THUMBPRINT]);

        // Foreign keys are skipped; ours are still found.
        let mixed = json!({"keys": [
            {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0", "kid": "ec"},
            {"kty": "OKP", "crv": "X25519", "x": RFC8037_X, "kid": "x"},
            {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X, "kid": "enc", "use": "enc"},
            {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X},
            rfc_jwk(),
        ]});
        let verifier =
            TokenVerifier::from_jwks(&mixed.to_string(), "approval-host", "acme-toys").unwrap();
        assert_eq!(verifier.key_ids().collect::<Vec<_>>(), [RFC8037_THUMBPRINT]);

        for bad in [
            "not json".to_owned(),
            json!({"keys": []}).to_string(),
            json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "short"}]}).to_string(),
            // The identity point: a weak key that "verifies" forged signatures.
            json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "weak",
                             "x": URL_SAFE_NO_PAD.encode([1u8].iter().chain([0u8; 31].iter()).copied().collect::<Vec<_>>())}]})
                .to_string(),
            json!({"keys": [rfc_jwk(), rfc_jwk()]}).to_string(),
        ] {
            let err = TokenVerifier::from_jwks(&bad, "approval-host", "acme-toys").unwrap_err();
            assert_eq!(err.code(), "jwks_invalid", "{bad}: {err}");
        }
    }

    #[test]
    fn error_codes_are_distinct() {
        let errors = [
            TokenError::Malformed(String::new()),
            TokenError::UnsupportedAlgorithm(String::new()),
            TokenError::UnknownKey(String::new()),
            TokenError::BadSignature,
            TokenError::WrongIssuer,
            TokenError::WrongAudience,
            TokenError::Expired,
            TokenError::ParamsMismatch,
            TokenError::InvalidParams(CanonicalError::NotAnObject),
            TokenError::InvalidClaims(String::new()),
            TokenError::InvalidJwks(String::new()),
            TokenError::InvalidConfig(String::new()),
            TokenError::Entropy(String::new()),
            TokenError::Encoding(String::new()),
            TokenError::Storage(StoreError::Corrupt(String::new())),
        ];
        let mut codes: Vec<_> = errors.iter().map(TokenError::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), errors.len());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let config = TokenConfig {
            signing_key: Some(rfc_seed()),
            ..TokenConfig::default()
        };
        let secret_hex = hex::encode(rfc_seed());
        for text in [format!("{config:?}"), format!("{:?}", rfc_issuer())] {
            assert!(
                !text.contains(&secret_hex) && !text.contains(RFC8037_D),
                "{text}"
            );
        }
        assert!(format!("{:?}", rfc_issuer()).contains(RFC8037_THUMBPRINT));
    }
}
