//! The HTTP API end to end: a real server on a loopback port, on SQLite and on PostgreSQL,
//! driven as its users drive it. The acceptance scenarios of the approval workflow, each user's
//! reach (404/401 outside it), push, webhooks, the MCP server, and the OpenAPI document.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use approval_host::audit::Receipt;
use approval_host::audit::checkpoint::CheckpointVerifier;
use approval_host::audit::entry::Event;
use approval_host::clock::{Clock as _, ManualClock};
use approval_host::token::{Expected, TokenVerifier};
use common::{ADMIN, Sse, TestDb, TestHost, plugin};
use reqwest::Method;
use serde_json::{Value, json};

const T0: u64 = 1_795_000_000_000;
const VENDOR: &str = "acme-toys";
const TEDDY: &str = "teddy-7";
const MOM: &str = "guardian-mom";
const DAD: &str = "guardian-dad";

/// A host with vendor `acme-toys` running velocity, a toy `teddy-7` guarded by mom and dad.
struct World {
    host: TestHost,
    vendor: String,
    agent: String,
    mom: String,
    dad: String,
}

async fn world(db: &TestDb) -> World {
    let host = TestHost::start(db, ManualClock::at(T0)).await;
    let vendor = host.vendor(VENDOR).await;
    let (status, body) = host
        .put(
            "/v1/vendor/policy",
            &vendor,
            json!({"plugin_limits": {"deadline_ms": 10000},
                "generic_actions": {"declared": ["lights.on"]}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let upload = host
        .call(Method::POST, "/v1/vendor/plugins", &vendor)
        .header("content-type", "application/wasm")
        .body(plugin("velocity"))
        .send()
        .await
        .unwrap();
    let (status, body) = common::answer(upload).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = host
        .post("/v1/vendor/plugins/velocity@1/activate", &vendor, json!({}))
        .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("active")),
        "{body}"
    );
    let agent = host.actor(&vendor, TEDDY, &["toy"], &[MOM, DAD]).await;
    let (mom, dad) = (host.guardian(MOM), host.guardian(DAD));
    World {
        host,
        vendor,
        agent,
        mom,
        dad,
    }
}

fn pay(minor_units: u64) -> Value {
    json!({
        "action": "payment",
        "params": {"amount": minor_units, "currency": "CNY", "recipient": "toy-shop"},
        "provenance": {"surface": "voice", "tool": "shop-skill"}
    })
}

async fn ask(w: &World, amount: u64) -> (u16, Value) {
    w.host.post("/v1/approvals", &w.agent, pay(amount)).await
}

/// The approval's receipt, verified with the published log key alone; its entries.
async fn receipt(w: &World, id: &str, token: &str) -> Vec<Event> {
    let (status, body) = w
        .host
        .get(&format!("/v1/approvals/{id}/receipt"), token)
        .await;
    assert_eq!(status, 200, "{body}");
    let key = reqwest::get(format!("{}/.well-known/audit-log-key", w.host.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(key.trim(), body["log_key"].as_str().unwrap());
    let receipt = Receipt::from_json(&body["receipt"].to_string()).unwrap();
    receipt
        .verify(&CheckpointVerifier::new(key.trim()).unwrap())
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect()
}

fn decided(events: &[Event]) -> Vec<(String, String, Option<String>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Decided {
                status,
                method,
                decider,
                ..
            } => Some((status.clone(), method.clone(), decider.clone())),
            _ => None,
        })
        .collect()
}

on_both_backends!(
    a_guardian_approves_and_the_waiting_agent_gets_its_token,
    approve
);
async fn approve(db: TestDb) {
    let w = world(&db).await;
    let mut stream = w.host.inbox_stream(&w.mom).await;
    let (name, inbox) = stream.next_within(10).await.unwrap();
    assert_eq!(name, "inbox");
    assert_eq!(inbox["pending"], json!([]));

    let (status, asked) = ask(&w, 60_000).await;
    assert_eq!(status, 202, "{asked}");
    assert_eq!(asked["status"], "pending");
    let id = asked["id"].as_str().unwrap().to_owned();
    assert!(asked["expires_at"].as_u64().unwrap() > T0);

    // The guardian's stream hears of it.
    let (name, pushed) = stream.next_within(10).await.unwrap();
    assert_eq!(
        (name.as_str(), pushed["id"].as_str()),
        ("pending", Some(id.as_str()))
    );
    assert_eq!(
        pushed["amount"],
        json!({"minor_units": 60000, "currency": "CNY", "exponent": 2})
    );
    assert_eq!(pushed["rule"], "builtin.spend_threshold");
    assert!(
        pushed.get("token").is_none(),
        "a guardian never sees a token"
    );

    // The agent waits; the guardian approves.
    let waiting = w
        .host
        .get_later(&format!("/v1/approvals/{id}?wait=10"), &w.agent);
    let (status, settled) = w
        .host
        .decide(&id, &w.mom, json!({"decision": "approve"}))
        .await;
    assert_eq!(
        (status, settled["status"].as_str()),
        (200, Some("approved")),
        "{settled}"
    );
    let (status, answer) = waiting.await.unwrap();
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("approved")),
        "{answer}"
    );
    assert_eq!(answer["decider"], MOM);

    // The token binds the params, verified with the published JWKS.
    let jwks = reqwest::get(format!("{}/.well-known/jwks.json", w.host.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let verifier = TokenVerifier::from_jwks(&jwks, "approval-host", VENDOR).unwrap();
    let token = answer["token"]["token"].as_str().unwrap();
    let now = w.host.clock.now_ms();
    let params = &answer["params"];
    let expecting = |params| Expected {
        actor: answer["actor"].as_str().unwrap(),
        action: "payment",
        params,
    };
    let verified = verifier.verify(token, &expecting(params), now).unwrap();
    assert_eq!(verified.claims.approval_id, id);
    let mut other = params.clone();
    other["amount"] = json!(90_000);
    assert!(verifier.verify(token, &expecting(&other), now).is_err());

    let (name, pushed) = stream.next_within(10).await.unwrap();
    assert_eq!(
        (name.as_str(), pushed["status"].as_str()),
        ("settled", Some("approved"))
    );

    // The audit log holds the request, the classification and the approval by mom.
    let events = receipt(&w, &id, &w.agent).await;
    assert!(matches!(events[0], Event::RequestReceived { .. }));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::PluginClassified { plugin, .. } if plugin == "velocity"))
    );
    assert_eq!(
        decided(&events),
        [
            ("pending".into(), "policy".into(), None),
            ("approved".into(), "human".into(), Some(MOM.into()))
        ]
    );
    // The guardian may fetch the receipt too.
    receipt(&w, &id, &w.mom).await;
}

on_both_backends!(a_guardian_denies_and_the_agent_is_told_why, deny);
async fn deny(db: TestDb) {
    let w = world(&db).await;
    let (_, asked) = ask(&w, 70_000).await;
    let id = asked["id"].as_str().unwrap();
    let (status, settled) = w
        .host
        .decide(
            id,
            &w.dad,
            json!({"decision": "deny", "reason": "we said no more toys this month"}),
        )
        .await;
    assert_eq!(status, 200, "{settled}");
    let (status, answer) = w
        .host
        .get(&format!("/v1/approvals/{id}?wait=5"), &w.agent)
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer["status"], "denied");
    assert_eq!(answer["decision_reason"], "we said no more toys this month");
    assert!(answer.get("token").is_none());
    let events = receipt(&w, id, &w.agent).await;
    assert_eq!(
        decided(&events).last().unwrap(),
        &("denied".into(), "human".into(), Some(DAD.into()))
    );
}

on_both_backends!(nobody_decides_and_the_agent_gets_approval_timeout, timeout);
async fn timeout(db: TestDb) {
    let w = world(&db).await;
    let (_, asked) = ask(&w, 60_000).await;
    let id = asked["id"].as_str().unwrap().to_owned();
    let expires = asked["expires_at"].as_u64().unwrap();
    // A long-poll in progress when the request expires is answered by the sweeper's timeout.
    let waiting = w
        .host
        .get_later(&format!("/v1/approvals/{id}?wait=10"), &w.agent);
    tokio::time::sleep(Duration::from_millis(50)).await;
    w.host.clock.set(expires);
    let (status, body) = waiting.await.unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (410, Some("approval_timeout")),
        "{body}"
    );
    assert_eq!(body["approval"]["status"], "timed_out");
    // Asking again says the same; a guardian sees the record as timed out.
    let (status, body) = w.host.get(&format!("/v1/approvals/{id}"), &w.agent).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (410, Some("approval_timeout"))
    );
    let (status, body) = w.host.get(&format!("/v1/approvals/{id}"), &w.mom).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("timed_out")));
    assert_eq!(body["decision_method"], "timeout");
    let (status, body) = w
        .host
        .decide(&id, &w.mom, json!({"decision": "approve"}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (410, Some("approval_timeout"))
    );
    let events = receipt(&w, &id, &w.agent).await;
    assert_eq!(
        decided(&events).last().unwrap(),
        &("timed_out".into(), "timeout".into(), None)
    );
}

on_both_backends!(
    a_template_and_an_override_each_change_the_outcome,
    precedence
);
async fn precedence(db: TestDb) {
    let w = world(&db).await;
    let robot = w.host.actor(&w.vendor, "robot-2", &["toy"], &[MOM]).await;
    assert_eq!(ask(&w, 60_000).await.1["status"], "pending");
    // The vendor raises the CNY threshold to ¥800: the same ¥600 is allowed.
    let (status, body) = w
        .host
        .put(
            "/v1/vendor/policy",
            &w.vendor,
            json!({"plugin_limits": {"deadline_ms": 10000}, "spend_thresholds": {"CNY": 80000}}),
        )
        .await;
    assert_eq!((status, body["version"].as_u64()), (200, Some(2)), "{body}");
    // (Not the same ¥600 again: an identical request joins the one still pending.)
    let (status, body) = ask(&w, 65_000).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("allowed")),
        "{body}"
    );
    assert!(body["token"]["token"].is_string());
    // Mom lowers it to ¥300 for teddy only: ¥400 waits for her on teddy, not on the robot.
    let (status, body) = w
        .host
        .put(
            &format!("/v1/actors/{TEDDY}/overrides"),
            &w.mom,
            json!({"spend_thresholds": {"CNY": 30000}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        w.host
            .get(&format!("/v1/actors/{TEDDY}/overrides"), &w.mom)
            .await
            .1["overrides"],
        json!({"spend_thresholds": {"CNY": 30000}})
    );
    assert_eq!(ask(&w, 40_000).await.1["status"], "pending");
    let (_, body) = w.host.post("/v1/approvals", &robot, pay(40_000)).await;
    assert_eq!(body["status"], "allowed");
    // A malformed template names its field.
    let (status, body) = w
        .host
        .put(
            "/v1/vendor/policy",
            &w.vendor,
            json!({"spend_thresholds": {"CNY": "lots"}}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("policy_invalid")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("spend_thresholds"),
        "{body}"
    );
}

on_both_backends!(an_expired_session_leaves_requests_queued, expired_session);
async fn expired_session(db: TestDb) {
    let w = world(&db).await;
    let (status, body) = w
        .host
        .put(
            "/v1/vendor/policy",
            &w.vendor,
            json!({"plugin_limits": {"deadline_ms": 10000}, "ttl_seconds": {"default": 600, "cred.put": 60}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let short = w
        .host
        .sessions
        .mint(MOM, w.host.clock.now_ms(), Duration::from_secs(90))
        .unwrap();
    let (_, payment) = ask(&w, 60_000).await;
    let (_, credential) = w
        .host
        .post(
            "/v1/approvals",
            &w.agent,
            json!({"action": "cred.put", "params": {"service": "bank", "category": "banking"}}),
        )
        .await;
    assert_eq!(credential["status"], "pending");
    assert_eq!(
        w.host.get("/v1/inbox", &short).await.1["pending"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    w.host.clock.advance(Duration::from_secs(120));
    let (status, body) = w.host.get("/v1/inbox", &short).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("session_expired"))
    );
    // After a new login: the payment still waits; the credential expired meanwhile.
    let fresh = w.host.guardian(MOM);
    let (status, inbox) = w.host.get("/v1/inbox", &fresh).await;
    assert_eq!(status, 200);
    let pending: Vec<&str> = inbox["pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(pending, [payment["id"].as_str().unwrap()]);
    let (_, expired) = w
        .host
        .get(
            &format!("/v1/approvals/{}", credential["id"].as_str().unwrap()),
            &fresh,
        )
        .await;
    assert_eq!(expired["status"], "timed_out");
}

on_both_backends!(racing_decisions_have_one_winner, races);
async fn races(db: TestDb) {
    let w = world(&db).await;
    // Two guardians deciding at once, ten times over: one wins, the rest are told who did.
    let (_, asked) = ask(&w, 60_000).await;
    let id = asked["id"].as_str().unwrap().to_owned();
    let mut calls = Vec::new();
    for i in 0..10 {
        let (client, url) = (w.host.client.clone(), w.host.url.clone());
        let token = if i % 2 == 0 {
            w.mom.clone()
        } else {
            w.dad.clone()
        };
        let body = if i % 3 == 0 {
            json!({"decision": "deny"})
        } else {
            json!({"decision": "approve"})
        };
        let id = id.clone();
        calls.push(tokio::spawn(async move {
            common::answer(
                client
                    .post(format!("{url}/v1/approvals/{id}/decision"))
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }));
    }
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    let winners: Vec<&Value> = answers
        .iter()
        .filter(|a| a.0 == 200)
        .map(|a| &a.1)
        .collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    let winner = winners[0]["status"].as_str().unwrap();
    for (status, body) in answers.iter().filter(|a| a.0 != 200) {
        assert_eq!(*status, 409, "{body}");
        assert_eq!(body["code"], "already_decided");
        assert_eq!(body["approval"]["status"], winner);
    }

    // Approve and the timeout racing at the moment of expiry: exactly one of them happens.
    let (_, asked) = ask(&w, 61_000).await;
    let id = asked["id"].as_str().unwrap().to_owned();
    let expires = asked["expires_at"].as_u64().unwrap();
    w.host.clock.set(expires - 1);
    let decision_path = format!("/v1/approvals/{id}/decision");
    let decide = w
        .host
        .post(&decision_path, &w.mom, json!({"decision": "approve"}));
    let clock = w.host.clock.clone();
    let expire = async move {
        clock.set(expires);
    };
    let ((status, body), ()) = tokio::join!(decide, expire);
    let (_, record) = w.host.get(&format!("/v1/approvals/{id}"), &w.mom).await;
    match status {
        200 => assert_eq!(record["status"], "approved", "{body}"),
        410 => assert_eq!(record["status"], "timed_out", "{body}"),
        other => panic!("unexpected {other}: {body}"),
    }
}

on_both_backends!(an_agent_over_its_limit_is_refused_and_flagged, rate_limit);
async fn rate_limit(db: TestDb) {
    let w = world(&db).await;
    let (status, body) = w
        .host
        .put(
            "/v1/vendor/policy",
            &w.vendor,
            json!({"plugin_limits": {"deadline_ms": 10000}, "max_approval_requests_per_hour": 2}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut stream = w.host.inbox_stream(&w.mom).await;
    assert_eq!(stream.next_within(10).await.unwrap().0, "inbox");
    assert_eq!(ask(&w, 60_000).await.0, 202);
    // Another recipient: a request of its own (a tiny variation would be merged; tests/abuse.rs).
    let mut other = pay(61_000);
    other["params"]["recipient"] = json!("candy-shop");
    assert_eq!(w.host.post("/v1/approvals", &w.agent, other).await.0, 202);
    let refused = w
        .host
        .call(Method::POST, "/v1/approvals", &w.agent)
        .json(&pay(62_000))
        .send()
        .await
        .unwrap();
    let retry_after = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .to_owned();
    let (status, body) = common::answer(refused).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    assert_eq!(body["retry_after_seconds"].as_u64(), Some(3600));
    assert_eq!(retry_after, "3600");

    // A burst of small requests is unusual for this device: flagged, once, for everyone.
    for i in 0..30 {
        let (status, body) = w
            .host
            .post(
                "/v1/approvals",
                &w.agent,
                json!({"action": "lights.on", "params": {"room": format!("room-{i}")}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, flags) = w.host.get("/v1/audit/flags", ADMIN).await;
    assert_eq!(status, 200);
    let flags = flags.as_array().unwrap();
    assert_eq!(flags.len(), 1, "{flags:?}");
    assert_eq!(flags[0]["actor"], TEDDY);
    let (_, vendor_flags) = w.host.get("/v1/vendor/flags", &w.vendor).await;
    assert_eq!(vendor_flags.as_array().unwrap().len(), 1);
    let (_, inbox) = w.host.get("/v1/inbox", &w.mom).await;
    assert_eq!(inbox["flags"][0]["actor"], TEDDY);
    // The guardian's stream: the two pending requests, then the flag.
    let mut names = Vec::new();
    while let Some((name, _)) = stream.next_within(10).await {
        names.push(name.clone());
        if name == "flagged" {
            break;
        }
    }
    assert_eq!(names, ["pending", "pending", "flagged"]);
}

on_both_backends!(nobody_reaches_outside_their_own, reach);
async fn reach(db: TestDb) {
    let w = world(&db).await;
    let other_vendor = w.host.vendor("other-toys").await;
    let robot = w
        .host
        .actor(&other_vendor, "robot-9", &[], &["guardian-zed"])
        .await;
    let zed = w.host.guardian("guardian-zed");
    let (_, asked) = ask(&w, 60_000).await;
    let id = asked["id"].as_str().unwrap().to_owned();
    let forged =
        approval_host::access::SessionIssuer::new(approval_host::server::DEV_ISSUER, &[9; 32])
            .mint(MOM, w.host.clock.now_ms(), Duration::from_secs(3600))
            .unwrap();
    let expired = w
        .host
        .sessions
        .mint(
            MOM,
            w.host.clock.now_ms() - 7_200_000,
            Duration::from_secs(3600),
        )
        .unwrap();

    let get = |path: String, token: String| {
        let host = &w.host;
        async move { host.get(&path, &token).await.0 }
    };
    let approval = format!("/v1/approvals/{id}");
    let receipt_path = format!("/v1/approvals/{id}/receipt");
    // Reading the approval and its receipt.
    for (token, want) in [
        (&w.agent, 202),
        (&w.vendor, 202),
        (&w.mom, 202),
        (&ADMIN.to_owned(), 202),
        (&robot, 404),
        (&other_vendor, 404),
        (&zed, 404),
        (&String::new(), 401),
        (&forged, 401),
        (&expired, 401),
        (&"aha_not-a-token".to_owned(), 401),
    ] {
        assert_eq!(
            get(approval.clone(), token.clone()).await,
            want,
            "GET approval as {token}"
        );
        let receipt_want = if want == 202 { 200 } else { want };
        assert_eq!(
            get(receipt_path.clone(), token.clone()).await,
            receipt_want,
            "receipt as {token}"
        );
    }
    // Deciding: only a guardian of the actor; the agent never decides its own request.
    for token in [
        &w.agent,
        &w.vendor,
        &ADMIN.to_owned(),
        &robot,
        &other_vendor,
        &zed,
    ] {
        let (status, body) = w
            .host
            .post(
                &format!("{approval}/decision"),
                token,
                json!({"decision": "approve"}),
            )
            .await;
        assert_eq!(status, 404, "decision as {token}: {body}");
    }
    assert_eq!(
        w.host
            .post(
                &format!("{approval}/decision"),
                "",
                json!({"decision": "approve"})
            )
            .await
            .0,
        401
    );
    // Guardian endpoints.
    assert_eq!(
        get(format!("/v1/actors/{TEDDY}/overrides"), zed.clone()).await,
        404
    );
    assert_eq!(
        get(format!("/v1/actors/{TEDDY}/overrides"), w.agent.clone()).await,
        404
    );
    assert_eq!(get("/v1/inbox".into(), w.agent.clone()).await, 404);
    assert_eq!(get("/v1/inbox".into(), w.vendor.clone()).await, 404);
    assert_eq!(w.host.get("/v1/inbox", &zed).await.1["pending"], json!([]));
    // Vendor endpoints: another vendor's actor or plugin does not exist for you.
    assert_eq!(
        get(format!("/v1/vendor/actors/{TEDDY}"), other_vendor.clone()).await,
        404
    );
    assert_eq!(
        w.host
            .post(
                &format!("/v1/vendor/actors/{TEDDY}/tokens"),
                &other_vendor,
                json!({})
            )
            .await
            .0,
        404
    );
    assert_eq!(
        w.host
            .post(
                "/v1/vendor/plugins/velocity@1/deactivate",
                &other_vendor,
                json!({})
            )
            .await
            .0,
        404
    );
    assert_eq!(get("/v1/vendor/policy".into(), w.agent.clone()).await, 404);
    assert_eq!(get("/v1/vendor/policy".into(), w.mom.clone()).await, 404);
    assert_eq!(get("/v1/vendor/plugins".into(), String::new()).await, 401);
    // Platform endpoints.
    for path in [
        "/v1/audit/entries",
        "/v1/audit/checkpoint",
        "/v1/vendors",
        "/v1/audit/export",
    ] {
        assert_eq!(get(path.into(), w.vendor.clone()).await, 404, "{path}");
        assert_eq!(get(path.into(), w.mom.clone()).await, 404, "{path}");
        assert_eq!(get(path.into(), String::new()).await, 401, "{path}");
        assert!(
            matches!(get(path.into(), ADMIN.to_owned()).await, 200),
            "{path}"
        );
    }
    // A revoked agent token stops working.
    let (status, _) = answer_of(
        w.host
            .call(
                Method::DELETE,
                &format!("/v1/vendor/actors/{TEDDY}/tokens"),
                &w.vendor,
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ask(&w, 100).await.0, 401);
}

async fn answer_of(response: reqwest::Response) -> (u16, Value) {
    common::answer(response).await
}

/// Sends a POST of `len` bytes on a connection of its own, writing the whole body before reading
/// anything, and gives the answer's status and JSON body.
async fn written_whole(url: &str, path: &str, token: &str, len: usize) -> (u16, Value) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let address = url.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket
        .write_all(&vec![b' '; len])
        .await
        .unwrap_or_else(|e| panic!("{path}: writing {len} bytes: {e}"));
    let mut answer = Vec::new();
    socket
        .read_to_end(&mut answer)
        .await
        .unwrap_or_else(|e| panic!("{path}: reading the answer: {e}"));
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = body.trim();
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
    )
}

on_both_backends!(
    text_a_caller_controls_is_bounded_before_it_reaches_the_log,
    bounded_texts
);
async fn bounded_texts(db: TestDb) {
    let w = world(&db).await;
    let pay = |extra: Value| {
        let mut body = json!({"action": "payment",
            "params": {"amount": 100, "currency": "CNY", "recipient": "toy-shop"}});
        merge(&mut body, extra);
        body
    };
    let cases = [
        // Seen on the demo: this one was allowed and broke `audit verify` for good.
        (
            pay(json!({"provenance": {"surface": "s".repeat(70_000)}})),
            "provenance.surface is 70000 bytes; at most 64",
        ),
        (
            pay(json!({"provenance": {"surface": "voice", "tool": "shop\u{202E}lliks"}})),
            "provenance.tool must not contain bidirectional controls",
        ),
        (
            pay(json!({"provenance": {"surface": "voice\nsecond line"}})),
            "provenance.surface must not contain control characters",
        ),
        (
            pay(json!({"idempotency_key": "k".repeat(201)})),
            "idempotency_key is 201 bytes",
        ),
        // Shown as "pay ¥600 to toy-shop" while the token bound `recurring`.
        (
            pay(
                json!({"params": {"amount": 60000, "currency": "CNY", "recipient": "toy-shop",
                "recurring": "daily"}}),
            ),
            "params.recurring is not a field of payment",
        ),
        // 2^53 + 1: it would share its params_hash with 2^53.
        (
            pay(
                json!({"params": {"amount": 9_007_199_254_740_993_u64, "currency": "CNY",
                "recipient": "toy-shop"}}),
            ),
            "params.amount",
        ),
        (
            pay(json!({"params": {"amount": 1, "currency": "CNY", "recipient": "r".repeat(300)}})),
            "params.recipient is 300 bytes",
        ),
    ];
    for (body, names) in cases {
        let (status, answer) = w.host.post("/v1/approvals", &w.agent, body.clone()).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some("invalid_request")),
            "{answer}"
        );
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(names), "{message}");
        assert!(
            message.len() < 300,
            "the error does not echo the text: {message}"
        );
    }
    // Well-formed requests still go through, and the log verifies with everything in it.
    let (status, answer) = w
        .host
        .post(
            "/v1/approvals",
            &w.agent,
            pay(json!({"provenance": {"surface": "语音", "tool": "shop-skill"}})),
        )
        .await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("allowed")),
        "{answer}"
    );
    let audit = &w.host.state.audit;
    audit.checkpoint().await.unwrap();
    let mut export = Vec::new();
    audit.export(&mut export).await.unwrap();
    let report =
        approval_host::audit::verify::verify_export(&export[..], audit.vkey(), &[]).unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(report.entries > 0);
}

/// Sets `extra`'s fields on `body`, replacing any already there.
fn merge(body: &mut Value, extra: Value) {
    if let (Value::Object(body), Value::Object(extra)) = (body, extra) {
        body.extend(extra);
    }
}

on_both_backends!(bad_input_gets_a_clear_error, bad_input);
async fn bad_input(db: TestDb) {
    let w = world(&db).await;
    let cases = [
        (
            json!({"action": "payment"}),
            400,
            "invalid_request",
            "params",
        ),
        (
            json!({"action": "payment", "params": {"amount": "600", "currency": "CNY", "recipient": "x"}}),
            400,
            "invalid_request",
            "amount",
        ),
        (
            json!({"action": "payment", "params": {}, "surprise": 1}),
            400,
            "invalid_request",
            "surprise",
        ),
        (
            json!({"action": "payment", "params": [1, 2]}),
            400,
            "invalid_request",
            "object",
        ),
        (
            json!({"action": "lights.on", "params": {"blob": "x".repeat(70_000)}}),
            413,
            "params_too_large",
            "params",
        ),
    ];
    for (body, status, code, names) in cases {
        let (got, answer) = w.host.post("/v1/approvals", &w.agent, body.clone()).await;
        assert_eq!(
            (got, answer["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
        assert!(
            answer["message"].as_str().unwrap().contains(names),
            "{answer}"
        );
    }
    let raw = w
        .host
        .call(Method::POST, "/v1/approvals", &w.agent)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(common::answer(raw).await.0, 400);
    // Bodies over the limit, written whole before the answer is read (as a client without
    // `Expect: 100-continue` does): the host reads and discards the rest, so the client gets
    // its 413 and not a reset connection, up to 16 MiB past the limit.
    for (path, token, len, code) in [
        ("/v1/approvals", &w.agent, 2 << 20, "body_too_large"),
        ("/v1/approvals", &w.agent, 12 << 20, "body_too_large"),
        (
            "/v1/vendor/plugins",
            &w.vendor,
            28 << 20,
            "plugin_too_large",
        ),
    ] {
        let (status, body) = written_whole(&w.host.url, path, token, len).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (413, Some(code)),
            "{path} with {len} bytes: {body}"
        );
    }
    // An upload that is not a component says what to change.
    let (status, body) = common::answer(
        w.host
            .call(Method::POST, "/v1/vendor/plugins", &w.vendor)
            .body(b"\0asm\x01\0\0\0".to_vec())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("plugin_invalid")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("wasm32-wasip2"),
        "{body}"
    );
    // Multipart works as well as a raw body (and the same bytes are the same version).
    let form = reqwest::multipart::Form::new().part(
        "component",
        reqwest::multipart::Part::bytes(plugin("velocity")).file_name("velocity.wasm"),
    );
    let (status, body) = common::answer(
        w.host
            .call(Method::POST, "/v1/vendor/plugins", &w.vendor)
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["reference"].as_str()),
        (200, Some("velocity@1")),
        "{body}"
    );
    // Unknown endpoints are JSON 404s.
    let (status, body) = w.host.get("/v1/nothing-here", &w.agent).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
}

on_both_backends!(
    an_approval_streams_its_events_and_the_log_proves_itself,
    events_and_proofs
);
async fn events_and_proofs(db: TestDb) {
    let w = world(&db).await;
    let (_, asked) = ask(&w, 60_000).await;
    let id = asked["id"].as_str().unwrap().to_owned();
    let mut events = Sse::new(
        w.host
            .call(Method::GET, &format!("/v1/approvals/{id}/events"), &w.agent)
            .send()
            .await
            .unwrap(),
    );
    let (name, now) = events.next_within(10).await.unwrap();
    assert_eq!(
        (name.as_str(), now["status"].as_str()),
        ("approval", Some("pending"))
    );
    w.host
        .decide(&id, &w.mom, json!({"decision": "approve"}))
        .await;
    let (name, settled) = events.next_within(10).await.unwrap();
    assert_eq!(
        (name.as_str(), settled["status"].as_str()),
        ("approval", Some("approved"))
    );
    assert!(
        settled["token"]["token"].is_string(),
        "the agent's stream carries its token"
    );
    assert!(
        events.next_within(10).await.is_none(),
        "the stream ends once settled"
    );

    // The platform's proofs check out against the signed checkpoint.
    let (status, checkpoint) = w.host.get("/v1/audit/checkpoint", ADMIN).await;
    assert_eq!(status, 200, "{checkpoint}");
    let opened = CheckpointVerifier::new(checkpoint["log_key"].as_str().unwrap())
        .unwrap()
        .open(checkpoint["checkpoint"].as_str().unwrap())
        .unwrap();
    assert_eq!(opened.size, checkpoint["size"].as_u64().unwrap());
    let b64 = |v: &Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    let (_, page) = w
        .host
        .get(&format!("/v1/audit/entries?approval_id={id}"), ADMIN)
        .await;
    let entry = &page["entries"][0];
    let index = entry["index"].as_u64().unwrap();
    let (_, proof) = w
        .host
        .get(&format!("/v1/audit/proofs/inclusion?index={index}"), ADMIN)
        .await;
    let hashes: Vec<Vec<u8>> = proof["proof"].as_array().unwrap().iter().map(b64).collect();
    approval_host::audit::merkle::verify_inclusion(
        index,
        opened.size,
        &approval_host::audit::merkle::leaf_hash(&b64(&entry["bytes"])).0,
        &hashes,
        &opened.root.0,
    )
    .unwrap();
    // A later checkpoint extends this one.
    ask(&w, 1_000).await;
    let (_, later) = w.host.get("/v1/audit/checkpoint", ADMIN).await;
    let later_size = later["size"].as_u64().unwrap();
    assert!(later_size > opened.size);
    let (_, proof) = w
        .host
        .get(
            &format!(
                "/v1/audit/proofs/consistency?old_size={}&size={later_size}",
                opened.size
            ),
            ADMIN,
        )
        .await;
    let hashes: Vec<Vec<u8>> = proof["proof"].as_array().unwrap().iter().map(b64).collect();
    approval_host::audit::merkle::verify_consistency(
        opened.size,
        later_size,
        &hashes,
        &opened.root.0,
        &b64(&later["root"]),
    )
    .unwrap();
    let (status, body) = w
        .host
        .get("/v1/audit/proofs/inclusion?index=999999", ADMIN)
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(w.host.get("/readyz", "").await.0, 200);
    assert_eq!(w.host.get("/healthz", "").await.0, 200);
}
