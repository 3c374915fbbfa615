//! Capability tokens end to end: a minted token verifies offline against the published JWKS
//! with its params, and fails on any changed claim, header, signature, param, key, issuer or
//! algorithm, and after its expiry; signing keys persist across restarts on SQLite and
//! PostgreSQL, rotation keeps old tokens verifiable until they expire, and replicas starting or
//! rotating at once agree on one signing key.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use approval_host::canonical::params_hash;
use approval_host::risk::Money;
use approval_host::store::keys;
use approval_host::token::{
    CapabilityClaims, DEFAULT_TTL, DecisionMethod, Expected, Grant, MintedToken, TokenConfig,
    TokenError, TokenIssuer, TokenVerifier, key_id,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::TestDb;
use ed25519_dalek::SigningKey;
use jwt_compact::alg::{Ed25519, Hs256, Hs256Key};
use jwt_compact::{Algorithm as _, AlgorithmSignature as _};
use serde_json::{Value, json};

const ISSUER: &str = "approval-host";
const T0: u64 = 1_795_000_000_000;
const TTL_MS: u64 = 300_000;

/// RFC 8037 appendix A.1's Ed25519 seed, and its thumbprint (appendix A.3).
const RFC8037_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
const RFC8037_KID: &str = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k";

fn rfc_seed() -> [u8; 32] {
    URL_SAFE_NO_PAD
        .decode(RFC8037_D)
        .unwrap()
        .try_into()
        .unwrap()
}

fn params() -> Value {
    json!({"amount": 60000, "currency": "CNY", "recipient": "toy-shop"})
}

fn claims() -> CapabilityClaims {
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

async fn open(db: &TestDb, now_ms: u64) -> TokenIssuer {
    TokenIssuer::open(&db.db, TokenConfig::default(), now_ms)
        .await
        .unwrap()
}

async fn open_with_key(db: &TestDb, seed: [u8; 32], now_ms: u64) -> TokenIssuer {
    let config = TokenConfig {
        signing_key: Some(seed),
        ..TokenConfig::default()
    };
    TokenIssuer::open(&db.db, config, now_ms).await.unwrap()
}

/// What a vendor's service does: a verifier from the published JWKS alone.
fn vendor_verifier(issuer: &TokenIssuer, now_ms: u64) -> TokenVerifier {
    TokenVerifier::from_jwks(&issuer.jwks(now_ms), ISSUER, "acme-toys").unwrap()
}

/// What the vendor's service executes for [`claims`]'s actor: its payment with `params`.
fn expecting(params: &Value) -> Expected<'_> {
    Expected {
        actor: "teddy-7",
        action: "payment",
        params,
    }
}

fn verify(
    verifier: &TokenVerifier,
    token: &str,
    now_ms: u64,
) -> Result<approval_host::token::VerifiedCapability, TokenError> {
    verifier.verify(token, &expecting(&params()), now_ms)
}

fn jwks_kids(issuer: &TokenIssuer, now_ms: u64) -> Vec<String> {
    let jwks: Value = serde_json::from_str(&issuer.jwks(now_ms)).unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

fn decode(segment: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
}

fn encode(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// The token's header and payload as JSON, and its signature segment.
fn split(token: &str) -> (Value, Value, String) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    (decode(parts[0]), decode(parts[1]), parts[2].to_owned())
}

/// The token with another header, keeping its payload and signature.
fn with_header(token: &str, header: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", encode(header), parts[1], parts[2])
}

/// Changes of one claim's value that keep its JSON type, as JSON text.
fn changed_values(name: &str, value: &Value) -> Vec<String> {
    match (name, value) {
        ("amount", _) => vec![
            r#"{"minor_units":6000000,"currency":"CNY"}"#.to_owned(),
            r#"{"minor_units":60000,"currency":"USD"}"#.to_owned(),
        ],
        ("decision_method", _) => vec![json!("policy").to_string()],
        ("params_hash", _) => {
            let other = json!({"amount": 6_000_000, "currency": "CNY", "recipient": "toy-shop"});
            vec![json!(params_hash(&other).unwrap()).to_string()]
        }
        (_, Value::String(s)) => vec![json!(format!("{s}x")).to_string(), json!("").to_string()],
        (_, Value::Number(n)) => {
            let n = n.as_u64().unwrap();
            vec![(n + 3600).to_string(), (n - 1).to_string()]
        }
        other => panic!("unexpected claim {other:?}"),
    }
}

on_both_backends!(a_minted_token_verifies_against_the_jwks, round_trip);
async fn round_trip(db: TestDb) {
    let issuer = open(&db, T0).await;
    let minted = issuer.mint(&claims(), T0).unwrap();
    assert_eq!(minted.expires_at_ms, T0 + TTL_MS);
    assert_eq!(minted.key_id, issuer.signing_key_id());
    assert_eq!(minted.id.len(), 32);

    let verifier = vendor_verifier(&issuer, T0 + 1);
    let verified = verify(&verifier, &minted.token, T0 + 1).unwrap();
    assert_eq!(verified.claims, claims());
    assert_eq!(verified.token_id, minted.id);
    assert_eq!(verified.key_id, minted.key_id);
    assert_eq!(
        (verified.issued_at_ms, verified.expires_at_ms),
        (T0, T0 + TTL_MS)
    );

    // The same params however they are spelled (RFC 8785): key order, number format.
    let respelled: Value =
        serde_json::from_str(r#"{ "recipient": "toy-shop", "currency": "CNY", "amount": 6.0e4 }"#)
            .unwrap();
    assert!(
        verifier
            .verify(&minted.token, &expecting(&respelled), T0)
            .is_ok()
    );

    // The issuer's own verifier is the same as the vendor's.
    assert_eq!(
        issuer
            .verifier(T0, "acme-toys")
            .verify(&minted.token, &expecting(&params()), T0)
            .unwrap(),
        verified
    );

    // The JWKS publishes the key in RFC 7517/8037 form, its kid the RFC 7638 thumbprint.
    let jwks: Value = serde_json::from_str(&issuer.jwks(T0)).unwrap();
    let jwk = &jwks["keys"][0];
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    assert_eq!(
        (&jwk["kty"], &jwk["crv"], &jwk["alg"], &jwk["use"]),
        (
            &json!("OKP"),
            &json!("Ed25519"),
            &json!("EdDSA"),
            &json!("sig")
        )
    );
    let x: [u8; 32] = URL_SAFE_NO_PAD
        .decode(jwk["x"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let public = ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap();
    assert_eq!(jwk["kid"], json!(key_id(&public)));
    assert_eq!(jwk["kid"], json!(minted.key_id));
}

/// The payload's members in their signed order, each as its name and its value's JSON text. The
/// tampering below changes one member and keeps every other byte, so that the signature is the
/// only thing that can notice.
fn members(token: &str) -> Vec<(String, String)> {
    let payload = URL_SAFE_NO_PAD
        .decode(token.split('.').nth(1).unwrap())
        .unwrap();
    let text = String::from_utf8(payload).unwrap();
    let inner = &text[1..text.len() - 1];
    let (mut members, mut depth, mut in_string, mut escaped, mut start) =
        (Vec::new(), 0, false, false, 0);
    for (i, c) in inner.char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            ',' if depth == 0 => {
                members.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    members.push(&inner[start..]);
    members
        .into_iter()
        .map(|member| {
            let (name, value) = member.split_once("\":").unwrap();
            (name[1..].to_owned(), value.to_owned())
        })
        .collect()
}

/// The token with the payload made of `members`, keeping its header and signature.
fn with_members(token: &str, members: &[(String, String)]) -> String {
    let body: Vec<String> = members
        .iter()
        .map(|(name, value)| format!("\"{name}\":{value}"))
        .collect();
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(format!("{{{}}}", body.join(","))),
        parts[2]
    )
}

#[tokio::test]
async fn any_changed_claim_fails_verification() {
    let db = common::sqlite().await;
    let issuer = open(&db, T0).await;
    let verifier = vendor_verifier(&issuer, T0);
    let minted = issuer.mint(&claims(), T0).unwrap();
    let signed = members(&minted.token);
    let names: Vec<&str> = signed.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "exp",
            "iat",
            "iss",
            "sub",
            "aud",
            "jti",
            "act",
            "params_hash",
            "approval_id",
            "decision_method",
            "amount"
        ]
    );
    // The harness changes nothing by itself: the members re-assembled are the signed token.
    assert_eq!(with_members(&minted.token, &signed), minted.token);
    assert!(verify(&verifier, &with_members(&minted.token, &signed), T0).is_ok());

    for (i, (name, value)) in signed.iter().enumerate() {
        let value: Value = serde_json::from_str(value).unwrap();
        for changed in changed_values(name, &value) {
            let mut tampered = signed.clone();
            tampered[i].1.clone_from(&changed);
            let err = verify(&verifier, &with_members(&minted.token, &tampered), T0);
            assert!(
                matches!(err, Err(TokenError::BadSignature)),
                "{name} = {changed}: {err:?}"
            );
        }
        let mut removed = signed.clone();
        removed.remove(i);
        let err = verify(&verifier, &with_members(&minted.token, &removed), T0);
        assert!(
            matches!(err, Err(TokenError::BadSignature)),
            "without {name}: {err:?}"
        );
    }

    // An added claim: a scope the guardian never granted.
    let mut added = signed.clone();
    added.push(("scope".into(), "1000".into()));
    let err = verify(&verifier, &with_members(&minted.token, &added), T0);
    assert!(matches!(err, Err(TokenError::BadSignature)), "{err:?}");

    // The same claims in another order are other bytes: the signature covers the encoding.
    let mut reordered = signed.clone();
    reordered.swap(0, 1);
    let err = verify(&verifier, &with_members(&minted.token, &reordered), T0);
    assert!(matches!(err, Err(TokenError::BadSignature)), "{err:?}");

    // A claim of another JSON type does not even parse, so it is refused as malformed.
    let mut retyped = signed.clone();
    retyped[0].1 = "\"never\"".into();
    let err = verify(&verifier, &with_members(&minted.token, &retyped), T0);
    assert!(matches!(err, Err(TokenError::Malformed(_))), "{err:?}");
}

#[tokio::test]
async fn a_changed_header_or_signature_fails_verification() {
    let db = common::sqlite().await;
    let issuer = open(&db, T0).await;
    let verifier = vendor_verifier(&issuer, T0);
    let minted = issuer.mint(&claims(), T0).unwrap();
    let (header, _, signature) = split(&minted.token);
    assert_eq!(
        header,
        json!({"alg": "EdDSA", "kid": minted.key_id, "typ": "JWT"})
    );

    // The header is signed too.
    let mut jku = header.clone();
    jku["jku"] = json!("https://evil.example/jwks.json");
    let err = verify(&verifier, &with_header(&minted.token, &jku), T0);
    assert!(matches!(err, Err(TokenError::BadSignature)), "{err:?}");

    let mut kid = header.clone();
    kid["kid"] = json!(RFC8037_KID);
    let err = verify(&verifier, &with_header(&minted.token, &kid), T0);
    assert!(
        matches!(&err, Err(TokenError::UnknownKey(k)) if k == RFC8037_KID),
        "{err:?}"
    );

    let mut no_kid = header.clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    let err = verify(&verifier, &with_header(&minted.token, &no_kid), T0);
    assert!(matches!(err, Err(TokenError::Malformed(_))), "{err:?}");

    let mut typ = header.clone();
    typ["typ"] = json!("dpop+jwt");
    let err = verify(&verifier, &with_header(&minted.token, &typ), T0);
    assert!(matches!(err, Err(TokenError::Malformed(_))), "{err:?}");

    let mut crit = header.clone();
    crit["crit"] = json!(["exp"]);
    let err = verify(&verifier, &with_header(&minted.token, &crit), T0);
    assert!(matches!(err, Err(TokenError::Malformed(_))), "{err:?}");

    // Every bit of the signature counts; so does its length.
    let mut bytes = URL_SAFE_NO_PAD.decode(&signature).unwrap();
    let prefix = minted.token.rsplit_once('.').unwrap().0;
    for i in [0, 31, 32, 63] {
        bytes[i] ^= 0x01;
        let token = format!("{prefix}.{}", URL_SAFE_NO_PAD.encode(&bytes));
        let err = verify(&verifier, &token, T0);
        assert!(
            matches!(err, Err(TokenError::BadSignature)),
            "byte {i}: {err:?}"
        );
        bytes[i] ^= 0x01;
    }
    let short = format!("{prefix}.{}", URL_SAFE_NO_PAD.encode(&bytes[..63]));
    assert!(matches!(
        verify(&verifier, &short, T0),
        Err(TokenError::BadSignature)
    ));
    let none = format!("{prefix}.");
    assert!(matches!(
        verify(&verifier, &none, T0),
        Err(TokenError::BadSignature)
    ));

    for garbage in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.???.***",
        &format!("{}.", minted.token),
        &"a".repeat(10_000),
    ] {
        let err = verify(&verifier, garbage, T0);
        assert!(
            matches!(err, Err(TokenError::Malformed(_))),
            "{garbage:.40}: {err:?}"
        );
    }
}

#[tokio::test]
async fn alg_none_and_hs256_are_refused() {
    let db = common::sqlite().await;
    let issuer = open(&db, T0).await;
    let verifier = vendor_verifier(&issuer, T0);
    let minted = issuer.mint(&claims(), T0).unwrap();
    let (header, payload, _) = split(&minted.token);

    for alg in ["none", "None", "NONE"] {
        let mut unsigned = header.clone();
        unsigned["alg"] = json!(alg);
        let token = format!("{}.{}.", encode(&unsigned), encode(&payload));
        let err = verify(&verifier, &token, T0);
        assert!(
            matches!(&err, Err(TokenError::UnsupportedAlgorithm(a)) if a == alg),
            "{alg}: {err:?}"
        );
    }

    // HS256 keyed with the published public key: the classic algorithm confusion.
    let jwks: Value = serde_json::from_str(&issuer.jwks(T0)).unwrap();
    let x = URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().unwrap())
        .unwrap();
    let mut hs = header.clone();
    hs["alg"] = json!("HS256");
    let signing_input = format!("{}.{}", encode(&hs), encode(&payload));
    let mac = Hs256.sign(&Hs256Key::new(&x), signing_input.as_bytes());
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(mac.as_bytes()));
    let err = verify(&verifier, &token, T0);
    assert!(
        matches!(&err, Err(TokenError::UnsupportedAlgorithm(a)) if a == "HS256"),
        "{err:?}"
    );

    // The non-standard name "Ed25519" for the same signature is refused as well.
    let mut renamed = header.clone();
    renamed["alg"] = json!("Ed25519");
    let err = verify(&verifier, &with_header(&minted.token, &renamed), T0);
    assert!(
        matches!(err, Err(TokenError::UnsupportedAlgorithm(_))),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_changed_param_fails_verification() {
    let db = common::sqlite().await;
    let issuer = open(&db, T0).await;
    let verifier = vendor_verifier(&issuer, T0);
    let minted = issuer.mint(&claims(), T0).unwrap();
    for changed in [
        json!({"amount": 60001, "currency": "CNY", "recipient": "toy-shop"}),
        json!({"amount": 60000, "currency": "USD", "recipient": "toy-shop"}),
        json!({"amount": 60000, "currency": "CNY", "recipient": "evil-shop"}),
        json!({"amount": 60000, "currency": "CNY"}),
        json!({"amount": 60000, "currency": "CNY", "recipient": "toy-shop", "memo": "x"}),
        json!({"amount": "60000", "currency": "CNY", "recipient": "toy-shop"}),
        json!({}),
    ] {
        let err = verifier.verify(&minted.token, &expecting(&changed), T0);
        assert!(
            matches!(err, Err(TokenError::ParamsMismatch)),
            "{changed}: {err:?}"
        );
    }
    let err = verifier.verify(&minted.token, &expecting(&json!([60000, "CNY"])), T0);
    assert!(matches!(err, Err(TokenError::InvalidParams(_))), "{err:?}");
}

#[tokio::test]
async fn a_token_for_another_vendor_actor_or_action_fails_verification() {
    let db = common::sqlite().await;
    let issuer = open(&db, T0).await;
    let minted = issuer.mint(&claims(), T0).unwrap();
    let other_vendor = TokenVerifier::from_jwks(&issuer.jwks(T0), ISSUER, "other-vendor").unwrap();
    let err = verify(&other_vendor, &minted.token, T0);
    assert!(matches!(err, Err(TokenError::WrongAudience)), "{err:?}");
    let verifier = vendor_verifier(&issuer, T0);
    let params = params();
    let another_actor = Expected {
        actor: "teddy-8",
        ..expecting(&params)
    };
    let err = verifier.verify(&minted.token, &another_actor, T0);
    assert!(matches!(err, Err(TokenError::WrongActor)), "{err:?}");
    // A payment service is never handed a token minted for another action with the same
    // params (a generic "pay" an agent picked), whatever those params say.
    let another_action = Expected {
        action: "pay",
        ..expecting(&params)
    };
    let err = verifier.verify(&minted.token, &another_action, T0);
    assert!(matches!(err, Err(TokenError::WrongAction)), "{err:?}");
    assert_eq!(
        (
            TokenError::WrongActor.code(),
            TokenError::WrongAction.code()
        ),
        ("token_wrong_actor", "token_wrong_action")
    );
    assert!(TokenVerifier::from_jwks(&issuer.jwks(T0), ISSUER, "").is_err());
}

#[tokio::test]
async fn a_different_key_fails_verification() {
    let db = common::sqlite().await;
    let other_db = common::sqlite().await;
    let issuer = open(&db, T0).await;
    let other = open(&other_db, T0).await;
    assert_ne!(issuer.signing_key_id(), other.signing_key_id());
    let minted = issuer.mint(&claims(), T0).unwrap();

    // Another host's JWKS does not know the key.
    let err = verify(&vendor_verifier(&other, T0), &minted.token, T0);
    assert!(matches!(err, Err(TokenError::UnknownKey(_))), "{err:?}");

    // The same header and claims signed by another key under our kid.
    let (header, payload, _) = split(&minted.token);
    let signing_input = format!("{}.{}", encode(&header), encode(&payload));
    let forger = SigningKey::from_bytes(&rfc_seed());
    let signature = Ed25519.sign(&forger, signing_input.as_bytes());
    let forged = format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    );
    let err = verify(&vendor_verifier(&issuer, T0), &forged, T0);
    assert!(matches!(err, Err(TokenError::BadSignature)), "{err:?}");
}

#[tokio::test]
async fn an_expired_token_fails_verification() {
    let db = common::sqlite().await;
    let issuer = open(&db, T0).await;
    let verifier = vendor_verifier(&issuer, T0);
    // Minted mid-second: exp rounds down to the second, never beyond the TTL.
    let minted = issuer.mint(&claims(), T0 + 999).unwrap();
    assert_eq!(minted.expires_at_ms, T0 + TTL_MS);
    assert!(verify(&verifier, &minted.token, minted.expires_at_ms - 1).is_ok());
    for now in [
        minted.expires_at_ms,
        minted.expires_at_ms + 1,
        T0 + 86_400_000,
    ] {
        let err = verify(&verifier, &minted.token, now);
        assert!(matches!(err, Err(TokenError::Expired)), "{now}: {err:?}");
    }
}

#[tokio::test]
async fn a_wrong_issuer_fails_verification() {
    let db = common::sqlite().await;
    let issuer = open(&db, T0).await;
    let minted = issuer.mint(&claims(), T0).unwrap();
    let elsewhere =
        TokenVerifier::from_jwks(&issuer.jwks(T0), "https://other-host.example", "acme-toys")
            .unwrap();
    let err = verify(&elsewhere, &minted.token, T0);
    assert!(matches!(err, Err(TokenError::WrongIssuer)), "{err:?}");

    // Same database, same key, another configured issuer name.
    let config = TokenConfig {
        issuer: "staging-host".into(),
        ..TokenConfig::default()
    };
    let staging = TokenIssuer::open(&db.db, config, T0).await.unwrap();
    assert_eq!(staging.signing_key_id(), issuer.signing_key_id());
    let staged = staging.mint(&claims(), T0).unwrap();
    let err = verify(&vendor_verifier(&issuer, T0), &staged.token, T0);
    assert!(matches!(err, Err(TokenError::WrongIssuer)), "{err:?}");
}

#[tokio::test]
async fn invalid_configurations_are_refused() {
    let db = common::sqlite().await;
    for config in [
        TokenConfig {
            issuer: String::new(),
            ..TokenConfig::default()
        },
        TokenConfig {
            ttl: Duration::from_millis(999),
            ..TokenConfig::default()
        },
        TokenConfig {
            ttl: Duration::from_secs(24 * 3600),
            ..TokenConfig::default()
        },
    ] {
        let err = TokenIssuer::open(&db.db, config, T0).await.unwrap_err();
        assert_eq!(err.code(), "token_config_invalid");
    }
    assert!(keys::list_keys(&db.db, 0).await.unwrap().is_empty());
}

on_both_backends!(a_persisted_key_is_reused_on_the_next_start, persisted);
async fn persisted(db: TestDb) {
    let first = open(&db, T0).await;
    let minted = first.mint(&claims(), T0).unwrap();
    drop(first);

    let second = open(&db, T0 + 60_000).await;
    assert_eq!(second.signing_key_id(), minted.key_id);
    assert_eq!(jwks_kids(&second, T0 + 60_000), [minted.key_id.as_str()]);
    assert!(
        verify(
            &vendor_verifier(&second, T0 + 60_000),
            &minted.token,
            T0 + 60_000
        )
        .is_ok()
    );
    assert_eq!(
        second.mint(&claims(), T0 + 60_000).unwrap().key_id,
        minted.key_id
    );

    let stored = keys::list_keys(&db.db, 0).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].kid, minted.key_id);
    assert_eq!(stored[0].created_at_ms, T0);
    assert_eq!(stored[0].retired_at_ms, None);
    assert_eq!(
        key_id(&SigningKey::from_bytes(&stored[0].secret).verifying_key()),
        minted.key_id
    );
}

on_both_backends!(a_configured_key_is_persisted_and_activated, configured);
async fn configured(db: TestDb) {
    // First start without configuration: a generated key.
    let generated = open(&db, T0).await;
    let old = generated.mint(&claims(), T0).unwrap();

    // The configured key (RFC 8037's) replaces it; the generated one stays verifiable.
    let t1 = T0 + 10_000;
    let configured = open_with_key(&db, rfc_seed(), t1).await;
    assert_eq!(configured.signing_key_id(), RFC8037_KID);
    assert_eq!(
        jwks_kids(&configured, t1),
        [RFC8037_KID, old.key_id.as_str()]
    );
    let minted = configured.mint(&claims(), t1).unwrap();
    assert_eq!(minted.key_id, RFC8037_KID);
    let verifier = vendor_verifier(&configured, t1);
    assert!(verify(&verifier, &old.token, t1).is_ok());
    assert!(verify(&verifier, &minted.token, t1).is_ok());

    // Opening again, with or without the configuration, keeps the configured key.
    let again = open_with_key(&db, rfc_seed(), t1 + 1).await;
    assert_eq!(again.signing_key_id(), RFC8037_KID);
    let unconfigured = open(&db, t1 + 2).await;
    assert_eq!(unconfigured.signing_key_id(), RFC8037_KID);

    // The generated key leaves the JWKS once its tokens have expired.
    assert_eq!(jwks_kids(&unconfigured, t1 + TTL_MS), [RFC8037_KID]);
    let stored = keys::list_keys(&db.db, 0).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(
        (stored[0].kid.as_str(), stored[0].retired_at_ms),
        (RFC8037_KID, None)
    );
    assert_eq!(
        (stored[1].kid.as_str(), stored[1].retired_at_ms),
        (old.key_id.as_str(), Some(t1))
    );

    // A configuration that goes back to a retired key re-activates it.
    let back = TokenIssuer::open(
        &db.db,
        TokenConfig {
            signing_key: Some(stored[1].secret),
            ..TokenConfig::default()
        },
        t1 + 3,
    )
    .await
    .unwrap();
    assert_eq!(back.signing_key_id(), old.key_id);
    assert_eq!(jwks_kids(&back, t1 + 3), [old.key_id.as_str(), RFC8037_KID]);
}

on_both_backends!(
    rotation_keeps_old_tokens_verifiable_until_they_expire,
    rotation
);
async fn rotation(db: TestDb) {
    let issuer = open(&db, T0).await;
    let replica = open(&db, T0).await;
    let old: MintedToken = issuer.mint(&claims(), T0).unwrap();

    let t1 = T0 + 60_000;
    let new_kid = issuer.rotate(&db.db, t1).await.unwrap();
    assert_ne!(new_kid, old.key_id);
    assert_eq!(issuer.signing_key_id(), new_kid);
    let new = issuer.mint(&claims(), t1).unwrap();
    assert_eq!(new.key_id, new_kid);

    // Both keys are published, the signing key first; both tokens verify.
    assert_eq!(
        jwks_kids(&issuer, t1),
        [new_kid.as_str(), old.key_id.as_str()]
    );
    let verifier = vendor_verifier(&issuer, t1);
    assert!(verify(&verifier, &old.token, t1).is_ok());
    assert!(verify(&verifier, &new.token, t1).is_ok());

    // Another replica picks the rotation up on refresh, a fresh one on open.
    assert_eq!(replica.signing_key_id(), old.key_id);
    assert_eq!(replica.refresh(&db.db, t1).await.unwrap(), new_kid);
    assert_eq!(replica.mint(&claims(), t1).unwrap().key_id, new_kid);
    let restarted = open(&db, t1).await;
    assert_eq!(restarted.signing_key_id(), new_kid);
    assert!(verify(&vendor_verifier(&restarted, t1), &old.token, t1).is_ok());

    // The old token verifies until its own expiry, then is expired (its key still published).
    let last = old.expires_at_ms - 1;
    assert!(verify(&vendor_verifier(&issuer, last), &old.token, last).is_ok());
    let err = verify(&verifier, &old.token, old.expires_at_ms);
    assert!(matches!(err, Err(TokenError::Expired)), "{err:?}");

    // One TTL after the rotation, every token of the old key has expired: it is withdrawn.
    let gone = t1 + TTL_MS;
    assert_eq!(jwks_kids(&issuer, gone), [new_kid.as_str()]);
    let err = verify(&vendor_verifier(&issuer, gone), &old.token, gone);
    assert!(matches!(err, Err(TokenError::UnknownKey(_))), "{err:?}");
    assert!(verify(&vendor_verifier(&issuer, gone), &new.token, gone - 1).is_ok());
    assert_eq!(jwks_kids(&open(&db, gone).await, gone), [new_kid.as_str()]);
}

on_both_backends!(concurrent_first_starts_agree_on_one_key, concurrent_opens);
async fn concurrent_opens(db: TestDb) {
    let opens: Vec<_> = (0..8)
        .map(|_| {
            let db = db.db.clone();
            tokio::spawn(async move {
                TokenIssuer::open(&db, TokenConfig::default(), T0)
                    .await
                    .unwrap()
                    .signing_key_id()
            })
        })
        .collect();
    let mut kids = Vec::new();
    for open in opens {
        kids.push(open.await.unwrap());
    }
    assert!(kids.iter().all(|kid| *kid == kids[0]), "{kids:?}");
    let stored = keys::list_keys(&db.db, 0).await.unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].kid, kids[0]);
}

on_both_backends!(
    concurrent_rotations_leave_one_signing_key,
    concurrent_rotations
);
async fn concurrent_rotations(db: TestDb) {
    let issuers: Vec<_> = replicas(&db).await;
    let t1 = T0 + 1_000;
    let rotations: Vec<_> = issuers
        .iter()
        .map(|issuer| {
            let issuer = issuer.clone();
            let db = db.db.clone();
            tokio::spawn(async move { issuer.rotate(&db, t1).await.unwrap() })
        })
        .collect();
    for rotation in rotations {
        rotation.await.unwrap();
    }
    let stored = keys::list_keys(&db.db, 0).await.unwrap();
    let active: Vec<_> = stored
        .iter()
        .filter(|k| k.retired_at_ms.is_none())
        .collect();
    assert_eq!(active.len(), 1, "{stored:?}");
    assert_eq!(stored.len(), 1 + issuers.len());
    for issuer in &issuers {
        assert_eq!(issuer.refresh(&db.db, t1).await.unwrap(), active[0].kid);
    }
}

/// Four issuers over the same database, as four replicas.
async fn replicas(db: &TestDb) -> Vec<std::sync::Arc<TokenIssuer>> {
    let mut issuers = Vec::new();
    for _ in 0..4 {
        issuers.push(std::sync::Arc::new(open(db, T0).await));
    }
    issuers
}

#[test]
fn default_configuration() {
    let config = TokenConfig::default();
    assert_eq!(config.issuer, ISSUER);
    assert_eq!(config.ttl, DEFAULT_TTL);
    assert_eq!(DEFAULT_TTL, Duration::from_millis(TTL_MS));
    assert!(config.signing_key.is_none());
}
