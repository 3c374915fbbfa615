//! Guardian sessions over HTTP from hostile callers (issue 24, finding 5): a session must name
//! this host's audience, carry `iat` and `exp` at most the configured lifetime apart, be neither
//! issued nor valid only in the future, have no `crit` header, and its guardian is the pair
//! (issuer, `sub`): a session of the development issuer beside the configured one never acts as
//! the configured issuer's guardian of the same `sub`. Every refusal is a 401
//! `invalid_credentials` (an expired session `session_expired`); a host configured with an issuer
//! and no audience does not start.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use approval_host::access::SessionIssuer;
use approval_host::clock::ManualClock;
use approval_host::config::ServeConfig;
use approval_host::server::{DEV_ISSUER, Host, HostOptions};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{ADMIN, TestDb, answer, request_as};
use serde_json::{Value, json};

const T0: u64 = 1_795_000_000_000;
const T0_S: i64 = 1_795_000_000;
/// The configured account system.
const ACCOUNTS: &str = "https://accounts.sessions.test";
const SEED: [u8; 32] = [0xa1; 32];
/// The audience the host is configured with.
const AUDIENCE: &str = "https://approvals.sessions.test";
/// The configured maximum lifetime (shorter than the default day, to see it applied).
const MAX_LIFETIME_S: i64 = 3600;
const MOM: &str = "guardian-mom";

fn accounts() -> SessionIssuer {
    SessionIssuer::new(ACCOUNTS, &SEED).with_audience(AUDIENCE)
}

/// A configuration trusting `ACCOUNTS` for `AUDIENCE` over `db`, in `data`.
fn config(db: &TestDb, data: &std::path::Path) -> ServeConfig {
    let mut config = ServeConfig {
        database_url: Some(db.url.clone()),
        data_dir: data.to_owned(),
        admin_token: Some(ADMIN.to_owned()),
        ..ServeConfig::default()
    };
    config.guardian_sessions.issuer = Some(ACCOUNTS.to_owned());
    config.guardian_sessions.public_keys = vec![accounts().public_key()];
    config.guardian_sessions.audience = Some(AUDIENCE.to_owned());
    config.guardian_sessions.max_lifetime_s = MAX_LIFETIME_S.unsigned_abs();
    config
}

/// A host serving `config` on a loopback port at `T0`.
struct Served {
    url: String,
    client: reqwest::Client,
    dev: SessionIssuer,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _data: tempfile::TempDir,
}

impl Served {
    async fn start(db: &TestDb) -> Served {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let data = tempfile::tempdir().unwrap();
        let mut config = config(db, data.path());
        config.guardian_sessions.trust_dev_issuer = true;
        let host = Host::start(
            &config,
            HostOptions {
                clock: Arc::new(ManualClock::at(T0)),
                runtime: Some(common::test_config()),
            },
        )
        .await
        .unwrap();
        let dev = host.dev_sessions.clone().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = host
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Served {
            url,
            client: reqwest::Client::new(),
            dev,
            stop: Some(stop),
            _data: data,
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = request_as(&self.client, &self.url, method, path, token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        answer(request.send().await.unwrap()).await
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, token, None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    /// A vendor whose device `teddy-7` is guarded by `MOM`, and that device's agent token.
    async fn world(&self) -> String {
        let (status, body) = self
            .post(
                "/v1/vendors",
                ADMIN,
                json!({"id": "acme-toys", "name": "Acme Toys"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let vendor = body["api_key"].as_str().unwrap().to_owned();
        let (status, body) = self
            .post(
                "/v1/vendor/actors",
                &vendor,
                json!({"id": "teddy-7", "context_tags": ["toy"], "guardians": [MOM], "issue_token": true}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A session of `ACCOUNTS` whose header and claims are exactly these, signed with its key.
fn signed(header: &Value, claims: &Value) -> String {
    use ed25519_dalek::Signer as _;
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = ed25519_dalek::SigningKey::from_bytes(&SEED).sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// MOM's claims from `ACCOUNTS`, valid at `T0`, with `changes` (`null` removes a claim).
fn claims(changes: &Value) -> Value {
    let mut claims = json!({"iss": ACCOUNTS, "sub": MOM, "aud": AUDIENCE,
        "iat": T0_S, "nbf": T0_S, "exp": T0_S + 600});
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

fn header() -> Value {
    json!({"alg": "EdDSA", "typ": "JWT"})
}

on_both_backends!(
    a_subject_of_another_issuer_is_another_guardian,
    another_issuers_subject
);
async fn another_issuers_subject(db: TestDb) {
    let host = Served::start(&db).await;
    let agent = host.world().await;
    let (status, asked) = host
        .post(
            "/v1/approvals",
            &agent,
            json!({"action": "payment", "params": {"amount": 60_000, "currency": "CNY", "recipient": "toy-shop"}}),
        )
        .await;
    assert_eq!(
        (status, asked["status"].as_str()),
        (202, Some("pending")),
        "{asked}"
    );
    let id = asked["id"].as_str().unwrap();
    let mom = accounts().mint(MOM, T0, Duration::from_secs(600)).unwrap();
    let (status, me) = host.get("/v1/whoami", &mom).await;
    assert_eq!((status, me["guardian"].as_str()), (200, Some(MOM)), "{me}");
    let (status, inbox) = host.get("/v1/inbox", &mom).await;
    assert_eq!(status, 200, "{inbox}");
    assert_eq!(inbox["pending"].as_array().unwrap().len(), 1, "{inbox}");

    // The development issuer's session of the same `sub` is another guardian.
    let dev_mom = host.dev.mint(MOM, T0, Duration::from_secs(600)).unwrap();
    let (status, me) = host.get("/v1/whoami", &dev_mom).await;
    let dev_id = format!("{DEV_ISSUER}:{MOM}");
    assert_eq!(
        (status, me["guardian"].as_str()),
        (200, Some(dev_id.as_str())),
        "{me}"
    );
    let (status, inbox) = host.get("/v1/inbox", &dev_mom).await;
    assert_eq!(status, 200, "{inbox}");
    assert_eq!(inbox["pending"], json!([]), "{inbox}");
    let decision = format!("/v1/approvals/{id}/decision");
    let (status, body) = host
        .post(&decision, &dev_mom, json!({"decision": "approve"}))
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = host.get(&format!("/v1/approvals/{id}"), &dev_mom).await;
    assert_eq!(status, 404, "{body}");

    // Nor can the configured issuer name the development issuer's guardians.
    let posing = accounts()
        .mint(&dev_id, T0, Duration::from_secs(600))
        .unwrap();
    let (status, body) = host.get("/v1/whoami", &posing).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("invalid_credentials")),
        "{body}"
    );

    // The request waited for its own guardian, who decides it.
    let (status, settled) = host
        .post(&decision, &mom, json!({"decision": "approve"}))
        .await;
    assert_eq!(status, 200, "{settled}");
    assert_eq!(settled["status"], "approved", "{settled}");
}

on_both_backends!(
    hostile_sessions_are_refused_with_invalid_credentials,
    hostile_sessions
);
async fn hostile_sessions(db: TestDb) {
    let host = Served::start(&db).await;
    let future = T0_S + 61;
    let refused = [
        (
            "another audience",
            header(),
            claims(&json!({"aud": "https://elsewhere.test"})),
        ),
        (
            "an audience array without the host",
            header(),
            claims(&json!({"aud": ["a", "b"]})),
        ),
        ("no audience", header(), claims(&json!({"aud": null}))),
        (
            "the development issuer's audience",
            header(),
            claims(&json!({"aud": "approval-host"})),
        ),
        (
            "issued in the future",
            header(),
            claims(&json!({"iat": future, "nbf": null})),
        ),
        (
            "valid only in the future",
            header(),
            claims(&json!({"nbf": future})),
        ),
        (
            "longer than the configured lifetime",
            header(),
            claims(&json!({"exp": T0_S + MAX_LIFETIME_S + 1})),
        ),
        ("no iat", header(), claims(&json!({"iat": null}))),
        ("no exp", header(), claims(&json!({"exp": null}))),
        (
            "an unknown crit header",
            json!({"alg": "EdDSA", "typ": "JWT", "crit": ["x-bind"], "x-bind": true}),
            claims(&json!({})),
        ),
    ];
    for (what, header, claims) in &refused {
        let (status, body) = host.get("/v1/whoami", &signed(header, claims)).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("invalid_credentials")),
            "{what}: {body}"
        );
    }
    let accepted = [
        ("the claims the others change", claims(&json!({}))),
        (
            "an audience array naming the host",
            claims(&json!({"aud": ["a", AUDIENCE]})),
        ),
        (
            "the longest lifetime",
            claims(&json!({"exp": T0_S + MAX_LIFETIME_S})),
        ),
        (
            "an iat within the leeway",
            claims(&json!({"iat": T0_S + 60, "nbf": T0_S + 60})),
        ),
    ];
    for (what, claims) in &accepted {
        let (status, body) = host.get("/v1/whoami", &signed(&header(), claims)).await;
        assert_eq!(
            (status, body["guardian"].as_str()),
            (200, Some(MOM)),
            "{what}: {body}"
        );
    }
    let expired = claims(&json!({"iat": T0_S - 3000, "nbf": T0_S - 3000, "exp": T0_S - 1}));
    let (status, body) = host.get("/v1/whoami", &signed(&header(), &expired)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("session_expired")),
        "{body}"
    );
}

#[tokio::test]
async fn an_issuer_without_an_audience_does_not_start() {
    let db = common::sqlite().await;
    let data = tempfile::tempdir().unwrap();
    let start = |config: ServeConfig| async move {
        Host::start(
            &config,
            HostOptions {
                clock: Arc::new(ManualClock::at(T0)),
                runtime: Some(common::test_config()),
            },
        )
        .await
        .map(|_| ())
        .unwrap_err()
        .to_string()
    };
    let mut without = config(&db, data.path());
    without.guardian_sessions.audience = None;
    let message = start(without.clone()).await;
    assert!(
        message.contains("guardian_sessions.audience")
            && message.contains("APPROVAL_HOST_SESSION_AUDIENCE")
            && message.contains(ACCOUNTS),
        "{message}"
    );
    without.guardian_sessions.audience = Some("  ".to_owned());
    assert!(start(without).await.contains("guardian_sessions.audience"));
    let mut zero = config(&db, data.path());
    zero.guardian_sessions.max_lifetime_s = 0;
    assert!(
        start(zero).await.contains("max_lifetime_s"),
        "a zero lifetime is refused"
    );
}
