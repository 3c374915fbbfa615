//! The API's integrations end to end: webhooks (signed, retried, never in the decision's way),
//! the MCP server for LLM agents, plugin statistics, shadow agreement and replay, push across
//! two replicas on PostgreSQL, the OpenAPI document, and the demo binary from start to a
//! graceful stop.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use approval_host::clock::ManualClock;
use approval_host::http::webhooks::sign;
use axum::http::HeaderMap;
use common::{ADMIN, TestDb, TestHost, plugin, variant};
use reqwest::Method;
use serde_json::{Value, json};

const T0: u64 = 1_795_000_000_000;

struct World {
    host: TestHost,
    vendor: String,
    agent: String,
    mom: String,
}

async fn world(db: &TestDb) -> World {
    world_on(TestHost::start(db, ManualClock::at(T0)).await, true).await
}

async fn world_on(host: TestHost, create: bool) -> World {
    let vendor = if create {
        host.vendor("acme-toys").await
    } else {
        String::new()
    };
    if create {
        let (status, _) = host
            .put(
                "/v1/vendor/policy",
                &vendor,
                json!({"plugin_limits": {"deadline_ms": 10000}}),
            )
            .await;
        assert_eq!(status, 200);
    }
    let agent = if create {
        host.actor(&vendor, "teddy-7", &["toy"], &["guardian-mom"])
            .await
    } else {
        String::new()
    };
    let mom = host.guardian("guardian-mom");
    World {
        host,
        vendor,
        agent,
        mom,
    }
}

fn pay(minor_units: u64) -> Value {
    json!({"action": "payment", "params": {"amount": minor_units, "currency": "CNY", "recipient": "toy-shop"}})
}

// ---- webhooks ------------------------------------------------------------------------------

/// A guardian app's webhook receiver on loopback: records deliveries, can fail or hang.
#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    /// Answer 500 to this many more deliveries.
    failing: Arc<Mutex<u32>>,
    /// When set, deliveries wait for it before answering.
    gate: Arc<Mutex<Option<Arc<tokio::sync::Semaphore>>>>,
}

/// A receiver started and set as the vendor's webhook: the receiver and the signing secret.
async fn webhook_receiver(w: &World) -> (Receiver, String) {
    let receiver = Receiver::default();
    let url = receiver.start().await;
    let (status, hook) = w
        .host
        .put("/v1/vendor/webhook", &w.vendor, json!({"url": url}))
        .await;
    assert_eq!(status, 200, "{hook}");
    (receiver, hook["secret"].as_str().unwrap().to_owned())
}

impl Receiver {
    async fn start(&self) -> String {
        let me = self.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let me = me.clone();
                async move {
                    let gate = me.gate.lock().unwrap().clone();
                    if let Some(gate) = gate {
                        let _ = gate.acquire().await;
                    }
                    me.received.lock().unwrap().push((headers, body));
                    let mut failing = me.failing.lock().unwrap();
                    if *failing > 0 {
                        *failing -= 1;
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::NO_CONTENT
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    async fn wait_for(&self, count: usize) -> Vec<(HeaderMap, String)> {
        for _ in 0..2_000 {
            if self.received.lock().unwrap().len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.received.lock().unwrap().clone()
    }
}

fn check_signature(secret: &str, headers: &HeaderMap, body: &str) {
    let id = headers["webhook-id"].to_str().unwrap();
    let timestamp: u64 = headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        headers["webhook-signature"].to_str().unwrap(),
        sign(secret, id, timestamp, body).unwrap()
    );
}

on_both_backends!(webhooks_are_signed_retried_and_never_in_the_way, webhooks);
async fn webhooks(db: TestDb) {
    let w = world(&db).await;
    let (receiver, secret) = webhook_receiver(&w).await;
    assert!(secret.starts_with("whsec_"));
    assert!(
        w.host
            .get("/v1/vendor/webhook", &w.vendor)
            .await
            .1
            .get("secret")
            .is_none()
    );

    // A pending request reaches the guardian app, signed.
    let (_, asked) = w.host.post("/v1/approvals", &w.agent, pay(60_000)).await;
    let id = asked["id"].as_str().unwrap().to_owned();
    let got = receiver.wait_for(1).await;
    let (headers, body) = &got[0];
    check_signature(&secret, headers, body);
    let delivered: Value = serde_json::from_str(body).unwrap();
    assert_eq!(delivered["type"], "approval.pending");
    assert_eq!(delivered["data"]["id"], id.as_str());

    // The settlement's first attempt fails; it is retried after the backoff.
    *receiver.failing.lock().unwrap() = 1;
    w.host
        .decide(&id, &w.mom, json!({"decision": "approve"}))
        .await;
    receiver.wait_for(2).await;
    // The settlement's delivery in the log (the clock stands still: find it by type).
    let settled = |log: &Value| {
        log.as_array()
            .unwrap()
            .iter()
            .find(|d| d["event_type"] == "approval.settled")
            .cloned()
            .unwrap_or(Value::Null)
    };
    let mut delivery = Value::Null;
    for _ in 0..2_000 {
        delivery = settled(
            &w.host
                .get("/v1/vendor/webhook/deliveries", &w.vendor)
                .await
                .1,
        );
        if delivery["attempts"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        (
            delivery["status"].as_str(),
            delivery["last_status"].as_u64()
        ),
        (Some("pending"), Some(500)),
        "{delivery}"
    );
    w.host.clock.advance(Duration::from_secs(2));
    w.host.state.webhooks.send_due().await.unwrap();
    let got = receiver.wait_for(3).await;
    check_signature(&secret, &got[2].0, &got[2].1);
    assert_eq!(
        got[1].0["webhook-id"], got[2].0["webhook-id"],
        "a retry keeps its id"
    );
    for _ in 0..2_000 {
        delivery = settled(
            &w.host
                .get("/v1/vendor/webhook/deliveries", &w.vendor)
                .await
                .1,
        );
        if delivery["status"] == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        (delivery["status"].as_str(), delivery["attempts"].as_u64()),
        (Some("delivered"), Some(2)),
        "{delivery}"
    );

    // A webhook that hangs does not hold up requests or decisions.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    *receiver.gate.lock().unwrap() = Some(Arc::clone(&gate));
    let (status, asked) = w.host.post("/v1/approvals", &w.agent, pay(61_000)).await;
    assert_eq!(status, 202);
    let (status, _) = w
        .host
        .decide(
            asked["id"].as_str().unwrap(),
            &w.mom,
            json!({"decision": "deny"}),
        )
        .await;
    assert_eq!(status, 200, "decided while the webhook still hangs");
    assert_eq!(receiver.received.lock().unwrap().len(), 3);
    gate.add_permits(10);
    receiver.wait_for(5).await;
}

on_both_backends!(
    cached_guardians_and_webhooks_follow_their_changes,
    cached_settings
);
/// The host caches a device's guardians and whether a vendor has a webhook (every event reads
/// both): a change is seen by the very next event.
async fn cached_settings(db: TestDb) {
    let w = world(&db).await;
    // An event reads (and caches) both: mom guards the device, and there is no webhook.
    let (status, _) = w.host.post("/v1/approvals", &w.agent, pay(60_000)).await;
    assert_eq!(status, 202);

    // Dad takes over the device, and the vendor sets a webhook.
    w.host
        .actor(&w.vendor, "teddy-7", &["toy"], &["guardian-dad"])
        .await;
    let (receiver, secret) = webhook_receiver(&w).await;
    let dad = w.host.guardian("guardian-dad");
    let mut stream = w.host.inbox_stream(&dad).await;
    assert_eq!(stream.next_within(10).await.unwrap().0, "inbox");

    let (status, asked) = w.host.post("/v1/approvals", &w.agent, pay(90_000)).await;
    assert_eq!(status, 202);
    let id = asked["id"].as_str().unwrap();
    let (name, pushed) = stream
        .next_within(10)
        .await
        .expect("the new guardian hears of the request");
    assert_eq!(
        (name.as_str(), pushed["id"].as_str()),
        ("pending", Some(id))
    );
    // The first event may or may not have reached the webhook (it was set meanwhile); the
    // second must.
    let mut delivered = None;
    for _ in 0..2_000 {
        delivered = receiver
            .received
            .lock()
            .unwrap()
            .iter()
            .find(|(_, body)| serde_json::from_str::<Value>(body).unwrap()["data"]["id"] == id)
            .cloned();
        if delivered.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (headers, body) = delivered.expect("the new webhook gets the request");
    check_signature(&secret, &headers, &body);
}

on_both_backends!(
    each_of_many_guardians_hears_of_a_request_and_no_one_else,
    many_guardians
);
/// A device with many guardians, registered in no particular order: each of them hears of its
/// requests on their stream, and a guardian of another device does not.
async fn many_guardians(db: TestDb) {
    let w = world(&db).await;
    // Sixty guardians in a shuffled order, and one registered last that sorts first.
    let mut guardians: Vec<String> = (0..60)
        .map(|i| format!("guardian-{:02}", (i * 37) % 60))
        .collect();
    guardians.push("aaron".to_owned());
    let names: Vec<&str> = guardians.iter().map(String::as_str).collect();
    w.host.actor(&w.vendor, "teddy-7", &["toy"], &names).await;
    let robot = w
        .host
        .actor(&w.vendor, "robot-2", &["toy"], &["guardian-zed"])
        .await;
    let mut streams = Vec::new();
    for guardian in ["aaron", "guardian-00", "guardian-59", "guardian-zed"] {
        let session = w.host.guardian(guardian);
        let mut stream = w.host.inbox_stream(&session).await;
        assert_eq!(stream.next_within(10).await.unwrap().0, "inbox");
        streams.push((guardian, stream));
    }

    let (status, teddy) = w.host.post("/v1/approvals", &w.agent, pay(60_000)).await;
    assert_eq!(status, 202);
    let (status, robot) = w.host.post("/v1/approvals", &robot, pay(70_000)).await;
    assert_eq!(status, 202);
    for (guardian, stream) in &mut streams {
        let (name, pushed) = stream.next_within(10).await.unwrap();
        // Zed's first event is the robot's request: teddy's went by without reaching him.
        let expected = if *guardian == "guardian-zed" {
            &robot
        } else {
            &teddy
        };
        assert_eq!(
            (name.as_str(), &pushed["id"]),
            ("pending", &expected["id"]),
            "{guardian}'s stream"
        );
    }
}

// ---- MCP ----------------------------------------------------------------------------------

async fn mcp(w: &World, token: &str, id: u64, method: &str, params: Value) -> (u16, Value) {
    let response = w
        .host
        .call(Method::POST, "/mcp", token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
        .send()
        .await
        .unwrap();
    common::answer(response).await
}

fn tool_json(result: &Value) -> (bool, Value) {
    let text = result["result"]["content"][0]["text"].as_str().unwrap();
    (
        result["result"]["isError"].as_bool().unwrap_or(false),
        serde_json::from_str(text).unwrap(),
    )
}

on_both_backends!(an_llm_agent_asks_and_waits_through_mcp, mcp_tools);
async fn mcp_tools(db: TestDb) {
    let w = world(&db).await;
    let (status, init) = mcp(
        &w,
        &w.agent,
        1,
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}),
    )
    .await;
    assert_eq!(status, 200, "{init}");
    let (_, tools) = mcp(&w, &w.agent, 2, "tools/list", json!({})).await;
    let mut names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{tools}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["get_approval", "request_approval", "wait_for_approval"],
        "no tool decides"
    );

    let (_, called) = mcp(
        &w,
        &w.agent,
        3,
        "tools/call",
        json!({"name": "request_approval", "arguments": {
            "action": "payment",
            "params": {"amount": 60000, "currency": "CNY", "recipient": "toy-shop"},
            "tool": "shopping-assistant"}}),
    )
    .await;
    let (error, approval) = tool_json(&called);
    assert!(!error, "{called}");
    assert_eq!(approval["status"], "pending");
    assert_eq!(
        (approval["surface"].as_str(), approval["tool"].as_str()),
        (Some("mcp"), Some("shopping-assistant"))
    );
    let id = approval["id"].as_str().unwrap().to_owned();

    w.host
        .decide(&id, &w.mom, json!({"decision": "approve"}))
        .await;
    let (_, waited) = mcp(
        &w,
        &w.agent,
        4,
        "tools/call",
        json!({"name": "wait_for_approval", "arguments": {"approval_id": id, "wait_seconds": 5}}),
    )
    .await;
    let (error, approval) = tool_json(&waited);
    assert!(!error, "{waited}");
    assert_eq!(approval["status"], "approved");
    assert!(approval["token"]["token"].is_string());

    // Only agents reach it.
    assert_eq!(mcp(&w, "", 5, "tools/list", json!({})).await.0, 401);
    assert_eq!(mcp(&w, &w.mom, 6, "tools/list", json!({})).await.0, 404);
    assert_eq!(mcp(&w, &w.vendor, 7, "tools/list", json!({})).await.0, 404);
}

// ---- plugins ------------------------------------------------------------------------------

on_both_backends!(
    vendors_see_stats_shadow_agreement_and_replays,
    plugin_lifecycle
);
async fn plugin_lifecycle(db: TestDb) {
    let w = world(&db).await;
    let upload = |bytes: Vec<u8>| {
        w.host
            .call(Method::POST, "/v1/vendor/plugins", &w.vendor)
            .body(bytes)
            .send()
    };
    let velocity = plugin("velocity");
    assert_eq!(
        common::answer(upload(velocity.clone()).await.unwrap())
            .await
            .0,
        201
    );
    let (status, v2) = common::answer(upload(variant(&velocity, "v2")).await.unwrap()).await;
    assert_eq!(
        (status, v2["reference"].as_str()),
        (201, Some("velocity@2"))
    );
    assert_eq!(
        w.host
            .post("/v1/vendor/plugins/1/activate", &w.vendor, json!({}))
            .await
            .0,
        200
    );
    assert_eq!(
        w.host
            .post("/v1/vendor/plugins/velocity@2/shadow", &w.vendor, json!({}))
            .await
            .0,
        200
    );
    for amount in [1_000, 2_000, 3_000, 60_000] {
        w.host.post("/v1/approvals", &w.agent, pay(amount)).await;
    }
    let (_, versions) = w.host.get("/v1/vendor/plugins", &w.vendor).await;
    let v1 = &versions[0];
    assert_eq!(
        (v1["state"].as_str(), v1["stats"]["calls"].as_u64()),
        (Some("active"), Some(4)),
        "{versions}"
    );
    assert!(v1["stats"]["p50_us"].as_u64().unwrap() > 0);
    assert!(v1["stats"]["p99_us"].as_u64().unwrap() >= v1["stats"]["p50_us"].as_u64().unwrap());
    let v2 = &versions[1];
    assert_eq!(v2["state"], "shadow");
    assert_eq!(v2["stats"]["compared_with_active"], 4);
    assert_eq!(v2["stats"]["agreement_with_active"], 1.0);

    // The same code replayed changes nothing; a trapping plugin would change outcomes.
    let (status, replay) = w
        .host
        .post("/v1/vendor/plugins/velocity@2/replay", &w.vendor, json!({}))
        .await;
    assert_eq!(status, 200, "{replay}");
    assert_eq!(
        (
            replay["compared"].as_u64(),
            replay["verdicts_changed"].as_u64()
        ),
        (Some(4), Some(0))
    );
    assert_eq!(replay["changed"], json!([]));
    let (status, trap) = common::answer(upload(plugin("hostile_trap")).await.unwrap()).await;
    assert_eq!(status, 201, "{trap}");
    let reference = trap["reference"].as_str().unwrap();
    let (_, replay) = w
        .host
        .post(
            &format!("/v1/vendor/plugins/{reference}/replay"),
            &w.vendor,
            json!({}),
        )
        .await;
    assert_eq!(replay["failures"], 4, "{replay}");
    // The three small payments were allowed; with a failing plugin they would go to a human.
    assert_eq!(replay["outcomes_changed"], 3, "{replay}");
    assert!(
        replay["changed"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["error_code"] == "plugin_trap")
    );

    // Rollback, and the platform's view across vendors.
    assert_eq!(
        w.host
            .post(
                "/v1/vendor/plugins/velocity@2/activate",
                &w.vendor,
                json!({})
            )
            .await
            .0,
        200
    );
    let (_, back) = w
        .host
        .post("/v1/vendor/plugins/velocity/rollback", &w.vendor, json!({}))
        .await;
    assert_eq!(
        (back["version"].as_u64(), back["state"].as_str()),
        (Some(1), Some("active"))
    );
    let (_, health) = w.host.get("/v1/audit/plugins", ADMIN).await;
    assert!(
        health
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["plugin"] == "velocity" && h["recent"]["calls"] == 4),
        "{health}"
    );
    // The audit explorer finds the plugin's classifications.
    let (_, found) = w
        .host
        .get(
            "/v1/audit/entries?plugin=velocity&type=plugin_classified",
            ADMIN,
        )
        .await;
    assert_eq!(found["entries"].as_array().unwrap().len(), 8, "{found}");
}

// ---- replicas ------------------------------------------------------------------------------

/// Two replicas on one PostgreSQL: push crosses them, and a long-poll on one hears a decision
/// made on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_crosses_replicas_on_postgres() {
    let db = common::postgres().await;
    let first = world(&db).await;
    let second = world_on(TestHost::start(&db, first.host.clock.clone()).await, false).await;
    let mut stream = second.host.inbox_stream(&second.mom).await;
    assert_eq!(stream.next_within(10).await.unwrap().0, "inbox");
    let (_, asked) = first
        .host
        .post("/v1/approvals", &first.agent, pay(60_000))
        .await;
    let id = asked["id"].as_str().unwrap().to_owned();
    let (name, pushed) = stream
        .next_within(10)
        .await
        .expect("the other replica's request arrives");
    assert_eq!(
        (name.as_str(), pushed["id"].as_str()),
        ("pending", Some(id.as_str()))
    );

    let waiting = first
        .host
        .get_later(&format!("/v1/approvals/{id}?wait=10"), &first.agent);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, _) = second
        .host
        .decide(&id, &second.mom, json!({"decision": "approve"}))
        .await;
    assert_eq!(status, 200);
    let (status, answer) = waiting.await.unwrap();
    assert_eq!((status, answer["status"].as_str()), (200, Some("approved")));
}

/// A token revoked through one replica stops working on the other at once, though the other
/// had it cached: the revocation reaches it by `NOTIFY`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_replica_reaches_the_others_cache() {
    let db = common::postgres().await;
    let first = world(&db).await;
    let second = world_on(TestHost::start(&db, first.host.clock.clone()).await, false).await;
    // The second replica caches credentials once it listens for other replicas' changes.
    for _ in 0..200 {
        if second.host.state.access.caching() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(second.host.state.access.caching());
    let (status, _) = second
        .host
        .post("/v1/approvals", &first.agent, pay(1_000))
        .await;
    assert_eq!(
        status, 200,
        "the token works (and is cached) on the second replica"
    );
    let (status, _) = common::answer(
        first
            .host
            .call(
                Method::DELETE,
                "/v1/vendor/actors/teddy-7/tokens",
                &first.vendor,
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    // The notification is asynchronous: allow it a few seconds (the cache would keep the token
    // for a minute without it).
    let mut refused = false;
    for _ in 0..100 {
        let (status, _) = second
            .host
            .post("/v1/approvals", &first.agent, pay(1_000))
            .await;
        if status == 401 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "the second replica still accepts a revoked token");
}

// ---- the OpenAPI document ------------------------------------------------------------------

on_both_backends!(the_openapi_document_describes_every_endpoint, openapi);
async fn openapi(db: TestDb) {
    let w = world(&db).await;
    let (status, doc) = w.host.get("/openapi.json", "").await;
    assert_eq!(status, 200);
    let endpoints = [
        ("post", "/v1/approvals"),
        ("get", "/v1/approvals/{id}"),
        ("get", "/v1/approvals/{id}/events"),
        ("get", "/v1/approvals/{id}/receipt"),
        ("post", "/v1/approvals/{id}/decision"),
        ("get", "/v1/inbox"),
        ("get", "/v1/inbox/stream"),
        ("get", "/v1/inbox/history"),
        ("get", "/v1/guardian/actors"),
        ("get", "/v1/whoami"),
        ("get", "/v1/actors/{actor}/overrides"),
        ("put", "/v1/actors/{actor}/overrides"),
        ("get", "/v1/vendor/policy"),
        ("put", "/v1/vendor/policy"),
        ("post", "/v1/vendor/actors"),
        ("get", "/v1/vendor/actors/{actor}"),
        ("post", "/v1/vendor/actors/{actor}/tokens"),
        ("delete", "/v1/vendor/actors/{actor}/tokens"),
        ("get", "/v1/vendor/plugins"),
        ("post", "/v1/vendor/plugins"),
        ("post", "/v1/vendor/plugins/{version}/activate"),
        ("post", "/v1/vendor/plugins/{version}/shadow"),
        ("post", "/v1/vendor/plugins/{version}/deactivate"),
        ("post", "/v1/vendor/plugins/{version}/replay"),
        ("post", "/v1/vendor/plugins/{name}/rollback"),
        ("get", "/v1/vendor/webhook"),
        ("put", "/v1/vendor/webhook"),
        ("delete", "/v1/vendor/webhook"),
        ("get", "/v1/vendor/webhook/deliveries"),
        ("get", "/v1/vendor/flags"),
        ("get", "/v1/vendors"),
        ("post", "/v1/vendors"),
        ("post", "/v1/vendors/{vendor}/keys"),
        ("get", "/v1/audit/entries"),
        ("get", "/v1/audit/checkpoint"),
        ("get", "/v1/audit/proofs/inclusion"),
        ("get", "/v1/audit/proofs/consistency"),
        ("get", "/v1/audit/export"),
        ("get", "/v1/audit/plugins"),
        ("get", "/v1/audit/flags"),
        ("get", "/.well-known/jwks.json"),
        ("get", "/.well-known/audit-log-key"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
    ];
    let paths = doc["paths"].as_object().unwrap();
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    for (method, path) in endpoints {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is not in /openapi.json"
        );
    }
    assert_eq!(
        documented,
        endpoints.len(),
        "every documented operation is listed here"
    );
    // And every listed endpoint is served (anything but the fallback's 404 for no route).
    for (method, path) in endpoints {
        let path = path
            .replace("{id}", "apr_x")
            .replace("{actor}", "x")
            .replace("{version}", "x@1")
            .replace("{name}", "x")
            .replace("{vendor}", "x");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let response = w.host.call(method.clone(), &path, "").send().await.unwrap();
        let status = response.status().as_u16();
        let (_, body) = common::answer(response).await;
        assert!(
            !(status == 404 && body["message"] == "no such endpoint"),
            "{method} {path} is not routed"
        );
    }
    // Metrics count requests by route.
    let metrics = w
        .host
        .client
        .get(format!("{}/metrics", w.host.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("approval_host_http_requests_total"),
        "{metrics}"
    );
    assert!(metrics.contains("route=\"/v1/vendor/policy\""), "{metrics}");
}

// ---- the demo binary ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_a_ready_world_and_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_approval-host"))
        .args(["demo", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let path = dir.path().join("demo.json");
    let mut demo = Value::Null;
    for _ in 0..6_000 {
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(value) = serde_json::from_str::<Value>(&text)
        {
            demo = value;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let field = |name: &str| {
        demo[name]
            .as_str()
            .unwrap_or_else(|| panic!("demo.json has no {name}"))
            .to_owned()
    };
    let (base, guardian, agent, pending) = (
        field("base_url"),
        field("guardian_token"),
        field("agent_token"),
        field("pending_approval"),
    );
    let client = reqwest::Client::new();
    let get = |path: &str, token: &str| {
        let request = client.get(format!("{base}{path}")).bearer_auth(token);
        async move { common::answer(request.send().await.unwrap()).await }
    };
    let (_, inbox) = get("/v1/inbox", &guardian).await;
    assert_eq!(inbox["pending"][0]["id"], pending.as_str());
    let decided = client
        .post(format!("{base}/v1/approvals/{pending}/decision"))
        .bearer_auth(&guardian)
        .json(&json!({"decision": "approve"}))
        .send()
        .await
        .unwrap();
    assert_eq!(decided.status().as_u16(), 200);
    let (_, answer) = get(&format!("/v1/approvals/{pending}"), &agent).await;
    assert_eq!(answer["status"], "approved");
    let (status, _) = get("/v1/vendors", &field("admin_token")).await;
    assert_eq!(status, 200);
    // The running host's audit log verifies offline, fetched by URL.
    let verified = tokio::process::Command::new(env!("CARGO_BIN_EXE_approval-host"))
        .args([
            "audit",
            "verify",
            "--url",
            &base,
            "--token",
            &field("admin_token"),
            "--key",
            &field("audit_log_key"),
        ])
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success() && report.starts_with("OK: the audit log"),
        "{report}"
    );

    // SIGTERM: in-flight work finishes and a last checkpoint covers every entry.
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("curl -s $HOST/v1/inbox"), "{printed}");
    let db = approval_host::store::Db::connect(&format!(
        "sqlite://{}?mode=rw",
        dir.path().join("approval-host.db").display()
    ))
    .await
    .unwrap();
    let log = common::audit_log(&db).await;
    let size = log.size().await.unwrap();
    assert!(size > 0);
    assert_eq!(log.latest_checkpoint().await.unwrap().unwrap().size, size);
}
