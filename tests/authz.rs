//! The authorization matrix (issue 8): every endpoint the host serves × every kind of caller,
//! each cell's status asserted, on SQLite and PostgreSQL.
//!
//! The endpoints come from the host itself: `/openapi.json` and the router in
//! `host/src/http/mod.rs` (which also serves the console's files and MCP at `/mcp`). The test
//! fails when either names an endpoint the table has no row for, so a new endpoint needs a new
//! row. Path parameters name objects of vendor A and its actor (an approval of A's actor, A's
//! plugin, A's actor, A itself), so "vendor B" is another vendor reaching for A's object.
//!
//! The callers are the eleven roles of issue 8, some with several credentials: the platform
//! admin, vendor A, vendor B, the agent of A's actor, the agent of B's actor, a guardian of A's
//! actor, a guardian of B's actor only, expired or revoked credentials, no credentials, forged
//! credentials (a session signed with another key, an unsigned session, never-issued agent and
//! vendor secrets, a capability token the host minted), and altered claims (a valid session's
//! subject or expiry changed under its signature).
//!
//! Besides the status, every cell checks what the architecture promises around it:
//! - a refused call changes nothing: vendor A's and vendor B's observable state (policy, actor,
//!   plugin states, webhook, overrides, the two approvals under test, their credentials still
//!   working) and the audit log's size are the same after it; a call that succeeds for one side
//!   leaves the other side's state as it was;
//! - a 401 says why (`unauthenticated`, `session_expired`, `invalid_credentials`);
//! - a 2xx answer to one side never names the other side's vendor, actor or approvals;
//! - the decider recorded is the session's subject, whatever the request adds.
//!
//! Cells that succeed run after the refusals of their row, and the ones that change something
//! are undone afterwards (a revoked token reissued, a rotated key taken over, a plugin
//! reactivated, a webhook set again), so every cell's expectation holds on its own. The long
//! size repeats the matrix on vendor B's objects (the table mirrored: B's side must now succeed
//! where A's did) and on A's ids in upper case (ids are case-sensitive: nothing exists there).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use approval_host::audit::Receipt;
use approval_host::audit::checkpoint::CheckpointVerifier;
use approval_host::audit::entry::Event;
use approval_host::clock::{Clock as _, ManualClock};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{ADMIN, TestDb, TestHost, plugin, variant};
use reqwest::Method;
use serde_json::{Value, json};

const T0: u64 = 1_795_000_000_000;
const MOM: &str = "guardian-mom";
const DAD: &str = "guardian-dad";
const ZED: &str = "guardian-zed";
const ZOE: &str = "guardian-zoe";
/// The webhook both vendors use: nothing listens there, deliveries just fail in the background.
const HOOK: &str = "http://127.0.0.1:9/hook";

// ---- the callers ------------------------------------------------------------------------------

/// The two vendors of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A = 0,
    B = 1,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// The table's columns, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Admin,
    VendorA,
    VendorB,
    AgentA,
    AgentB,
    /// A guardian of A's actor.
    Guardian,
    /// A guardian of B's actor only.
    OtherGuardian,
    Expired,
    Anonymous,
    Forged,
    Altered,
}

const ROLES: [Role; 11] = [
    Role::Admin,
    Role::VendorA,
    Role::VendorB,
    Role::AgentA,
    Role::AgentB,
    Role::Guardian,
    Role::OtherGuardian,
    Role::Expired,
    Role::Anonymous,
    Role::Forged,
    Role::Altered,
];

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Admin => "platform admin",
            Role::VendorA => "vendor A",
            Role::VendorB => "vendor B",
            Role::AgentA => "agent of A",
            Role::AgentB => "agent of B",
            Role::Guardian => "guardian of the actor",
            Role::OtherGuardian => "another guardian",
            Role::Expired => "expired session",
            Role::Anonymous => "no credentials",
            Role::Forged => "forged token",
            Role::Altered => "altered claims",
        }
    }

    /// The side this caller belongs to, if any.
    fn side(self) -> Option<Side> {
        match self {
            Role::VendorA | Role::AgentA | Role::Guardian => Some(Side::A),
            Role::VendorB | Role::AgentB | Role::OtherGuardian => Some(Side::B),
            _ => None,
        }
    }

    /// The same kind of caller on the other side.
    fn mirror(self) -> Role {
        match self {
            Role::VendorA => Role::VendorB,
            Role::VendorB => Role::VendorA,
            Role::AgentA => Role::AgentB,
            Role::AgentB => Role::AgentA,
            Role::Guardian => Role::OtherGuardian,
            Role::OtherGuardian => Role::Guardian,
            other => other,
        }
    }

    fn column(self) -> usize {
        ROLES.iter().position(|r| *r == self).unwrap()
    }
}

/// One credential of a role: the `Authorization` header sent (none at all for `None`), and for
/// the credentials that must fail, the code of their 401.
#[derive(Debug, Clone)]
struct Credential {
    label: &'static str,
    header: Option<String>,
    refused_as: Option<&'static str>,
}

fn bearer(label: &'static str, token: &str) -> Credential {
    Credential {
        label,
        header: Some(format!("Bearer {token}")),
        refused_as: None,
    }
}

fn refused(label: &'static str, header: Option<String>, code: &'static str) -> Credential {
    Credential {
        label,
        header,
        refused_as: Some(code),
    }
}

/// A JWT's payload changed by `change`, its header and signature kept.
fn altered(jwt: &str, change: impl FnOnce(&mut Value)) -> String {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    change(&mut claims);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

// ---- the world ----------------------------------------------------------------------------------

/// One vendor's objects: what path parameters name, and what the snapshot reads.
#[derive(Debug, Clone)]
struct Objects {
    vendor: String,
    actor: String,
    /// The actor's guardian among the roles.
    guardian: &'static str,
    /// A plugin of the vendor: version 1 active, version 2 inactive (and activated before 1, so
    /// a rollback has somewhere to go).
    plugin: String,
    /// A pending approval of the actor, never decided by the matrix.
    pending: String,
    /// A pending approval of the actor that the decision row decides.
    to_decide: String,
    /// A console file.
    file: String,
}

impl Objects {
    /// The same objects, named in upper case.
    fn upper(&self) -> Objects {
        Objects {
            vendor: self.vendor.to_uppercase(),
            actor: self.actor.to_uppercase(),
            guardian: self.guardian,
            plugin: self.plugin.to_uppercase(),
            pending: self.pending.to_uppercase(),
            to_decide: self.to_decide.to_uppercase(),
            file: self.file.to_uppercase(),
        }
    }
}

/// A host with two vendors, each with an actor, its agent, its guardians, a plugin, a webhook
/// and pending approvals; and the credentials of every role.
struct World {
    host: TestHost,
    /// Each side's current vendor key and agent token (rotations replace them).
    vendor_keys: [String; 2],
    agent_tokens: [String; 2],
    /// Guardian sessions: MOM guards A's actor, ZED guards B's.
    sessions: [String; 2],
    objects: [Objects; 2],
    /// The credentials that must be refused, by role.
    bad: Vec<(Role, Credential)>,
}

impl World {
    fn vendor_key(&self, side: Side) -> &str {
        &self.vendor_keys[side as usize]
    }

    fn agent_token(&self, side: Side) -> &str {
        &self.agent_tokens[side as usize]
    }

    fn session(&self, side: Side) -> &str {
        &self.sessions[side as usize]
    }

    fn objects(&self, side: Side) -> &Objects {
        &self.objects[side as usize]
    }

    fn credentials(&self, role: Role) -> Vec<Credential> {
        match role {
            Role::Admin => vec![bearer("admin token", ADMIN)],
            Role::VendorA => vec![bearer("vendor A key", self.vendor_key(Side::A))],
            Role::VendorB => vec![bearer("vendor B key", self.vendor_key(Side::B))],
            Role::AgentA => vec![bearer("agent A token", self.agent_token(Side::A))],
            Role::AgentB => vec![bearer("agent B token", self.agent_token(Side::B))],
            Role::Guardian => vec![bearer("session of MOM", self.session(Side::A))],
            Role::OtherGuardian => vec![bearer("session of ZED", self.session(Side::B))],
            _ => self
                .bad
                .iter()
                .filter(|(r, _)| *r == role)
                .map(|(_, c)| c.clone())
                .collect(),
        }
    }

    /// `method path` as `credential`, with `body`.
    async fn send(
        &self,
        method: &Method,
        path: &str,
        credential: &Credential,
        body: &Body,
    ) -> Answer {
        // An upload refused before its body is read closes the connection, which a pooled
        // client must not reuse: uploads go on a connection of their own.
        let client = match body {
            Body::Wasm(_) => reqwest::Client::new(),
            _ => self.host.client.clone(),
        };
        let mut request = client.request(method.clone(), format!("{}{path}", self.host.url));
        if let Some(header) = &credential.header {
            request = request.header("authorization", header);
        }
        request = match body {
            Body::Empty => request,
            Body::Json(value) => request.json(value),
            Body::Wasm(bytes) => request
                .header("content-type", "application/wasm")
                .body(bytes.clone()),
            Body::Mcp(value) => request
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2025-06-18")
                .json(value),
        };
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} as {}: {e}", credential.label));
        let status = response.status().as_u16();
        let streaming = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("text/event-stream"));
        // A stream stays open: its status is the answer (dropping it closes the connection).
        let text = if streaming {
            String::new()
        } else {
            response.text().await.unwrap_or_default()
        };
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let mut answer = Answer {
            status,
            code: json["code"].as_str().map(str::to_owned),
            json,
            text,
        };
        if matches!(body, Body::Mcp(_)) && status == 200 {
            answer.status = mcp_status(&answer.json);
        }
        answer
    }

    async fn get_as(&self, path: &str, token: &str) -> (u16, Value) {
        self.host.get(path, token).await
    }
}

/// An MCP answer's status: a tool's error counts as the status its code stands for (a tool
/// that cannot see an approval answers `not_found` inside a 200 JSON-RPC response).
fn mcp_status(json: &Value) -> u16 {
    if json.get("error").is_some() {
        return 400;
    }
    if json["result"]["isError"].as_bool() != Some(true) {
        return 200;
    }
    let text = json["result"]["content"][0]["text"].as_str().unwrap_or("");
    let error: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    match error["code"].as_str() {
        Some("not_found") => 404,
        // Anything else is unexpected here: a status no cell expects.
        _ => 599,
    }
}

/// What a cell got: its status (for MCP tool calls, see `mcp_status`), its error code, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    code: Option<String>,
    json: Value,
    text: String,
}

/// Vendors A (`acme-toys`: actor `teddy-7` of MOM and DAD, plugin `velocity`) and B
/// (`other-toys`: actor `robot-9` of ZED and ZOE, plugin `hostile-wasi-probe`, which allows),
/// built alike so that the table mirrors; the credentials that must fail.
async fn world(db: &TestDb) -> World {
    let host = TestHost::start(db, ManualClock::at(T0)).await;
    let mut vendor_keys = [
        host.vendor("acme-toys").await,
        host.vendor("other-toys").await,
    ];
    let plugins = [
        ("velocity", plugin("velocity")),
        ("hostile-wasi-probe", plugin("hostile_wasi_probe")),
    ];
    for (key, (name, bytes)) in vendor_keys.iter().zip(&plugins) {
        let (status, body) = host
            .put(
                "/v1/vendor/policy",
                key,
                json!({"plugin_limits": {"deadline_ms": 10000},
                    "generic_actions": {"declared": ["lights.on"]}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        for (bytes, version) in [(bytes.clone(), 1), (variant(bytes, "v2"), 2)] {
            let (status, body) = upload(&host, key, bytes).await;
            assert_eq!(status, 201, "{body}");
            assert_eq!(body["version"], version, "{body}");
        }
        for version in [2, 1] {
            let (status, body) = host
                .post(
                    &format!("/v1/vendor/plugins/{name}@{version}/activate"),
                    key,
                    json!({}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
        let (status, body) = host
            .put("/v1/vendor/webhook", key, json!({"url": HOOK}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let mut agent_tokens = [
        host.actor(&vendor_keys[0], "teddy-7", &["toy"], &[MOM, DAD])
            .await,
        host.actor(&vendor_keys[1], "robot-9", &["toy"], &[ZED, ZOE])
            .await,
    ];
    let sessions = [host.guardian(MOM), host.guardian(ZED)];

    // Credentials that were good once: A's first agent token (replaced with revoke_others) and
    // A's first vendor key (rotated by the platform).
    let revoked_agent = agent_tokens[0].clone();
    let (status, body) = host
        .post(
            "/v1/vendor/actors/teddy-7/tokens?revoke_others=true",
            &vendor_keys[0],
            json!({}),
        )
        .await;
    assert_eq!((status, body["revoked"].as_u64()), (201, Some(1)), "{body}");
    agent_tokens[0] = body["token"].as_str().unwrap().to_owned();
    let rotated_vendor = vendor_keys[0].clone();
    let (status, body) = host
        .post("/v1/vendors/acme-toys/keys", ADMIN, json!({}))
        .await;
    assert_eq!(status, 201, "{body}");
    vendor_keys[0] = body["api_key"].as_str().unwrap().to_owned();

    // Each guardian tightens their actor's threshold (the override rows set it again).
    for ((actor, session), vendor) in ["teddy-7", "robot-9"]
        .iter()
        .zip(&sessions)
        .zip(["acme-toys", "other-toys"])
    {
        let (status, body) = host
            .put(
                &format!("/v1/actors/{actor}/overrides"),
                session,
                overrides(),
            )
            .await;
        assert_eq!(
            (status, body["vendor"].as_str()),
            (200, Some(vendor)),
            "{body}"
        );
    }

    // Two pending approvals per actor, and a capability token of an allowed request.
    let mut pending = Vec::new();
    for token in &agent_tokens {
        let mut ids = Vec::new();
        for amount in [60_000, 70_000] {
            let (status, body) = host.post("/v1/approvals", token, pay(amount)).await;
            assert_eq!(
                (status, body["status"].as_str()),
                (202, Some("pending")),
                "{body}"
            );
            ids.push(body["id"].as_str().unwrap().to_owned());
        }
        pending.push(ids);
    }
    let (status, allowed) = host.post("/v1/approvals", &agent_tokens[0], lights()).await;
    assert_eq!(
        (status, allowed["status"].as_str()),
        (200, Some("allowed")),
        "{allowed}"
    );
    let capability = allowed["token"]["token"].as_str().unwrap().to_owned();
    // A receipt signs a checkpoint, which the proof endpoints need.
    let (status, body) = host
        .get(&format!("/v1/approvals/{}/receipt", pending[0][0]), ADMIN)
        .await;
    assert_eq!(status, 200, "{body}");

    let now = host.clock.now_ms();
    let expired = host
        .sessions
        .mint(MOM, now - 7_200_000, Duration::from_secs(3600))
        .unwrap();
    let wrong_key =
        approval_host::access::SessionIssuer::new(approval_host::server::DEV_ISSUER, &[9; 32])
            .mint(MOM, now, Duration::from_secs(3600))
            .unwrap();
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(
            json!({"iss": approval_host::server::DEV_ISSUER, "sub": MOM, "exp": now / 1000 + 3600})
                .to_string()
        )
    );
    let some = |prefix: &str| format!("{prefix}{}", URL_SAFE_NO_PAD.encode([7u8; 32]));
    let header = |token: &str| Some(format!("Bearer {token}"));
    let invalid = "invalid_credentials";
    let bad = vec![
        (
            Role::Expired,
            refused(
                "expired session of MOM",
                header(&expired),
                "session_expired",
            ),
        ),
        (
            Role::Expired,
            refused("revoked agent token of A", header(&revoked_agent), invalid),
        ),
        (
            Role::Expired,
            refused(
                "rotated-out vendor key of A",
                header(&rotated_vendor),
                invalid,
            ),
        ),
        (
            Role::Anonymous,
            refused("no Authorization header", None, "unauthenticated"),
        ),
        (
            Role::Anonymous,
            refused("empty bearer", Some("Bearer ".into()), "unauthenticated"),
        ),
        (
            Role::Anonymous,
            refused(
                "Basic scheme",
                Some(format!("Basic {}", URL_SAFE_NO_PAD.encode("mom:pw"))),
                "unauthenticated",
            ),
        ),
        (
            Role::Forged,
            refused(
                "session of MOM signed with another key",
                header(&wrong_key),
                invalid,
            ),
        ),
        (
            Role::Forged,
            refused(
                "unsigned session of MOM (alg none)",
                header(&unsigned),
                invalid,
            ),
        ),
        (
            Role::Forged,
            refused("never-issued agent token", header(&some("aha_")), invalid),
        ),
        (
            Role::Forged,
            refused("never-issued vendor key", header(&some("ahv_")), invalid),
        ),
        (
            Role::Forged,
            refused(
                "capability token of an allowed request",
                header(&capability),
                invalid,
            ),
        ),
        (
            Role::Altered,
            refused(
                "ZED's session with sub = MOM",
                header(&altered(&sessions[1], |c| c["sub"] = json!(MOM))),
                invalid,
            ),
        ),
        (
            Role::Altered,
            refused(
                "MOM's expired session with exp extended",
                header(&altered(&expired, |c| c["exp"] = json!(now / 1000 + 3600))),
                invalid,
            ),
        ),
    ];
    let objects = [
        Objects {
            vendor: "acme-toys".into(),
            actor: "teddy-7".into(),
            guardian: MOM,
            plugin: "velocity".into(),
            pending: pending[0][0].clone(),
            to_decide: pending[0][1].clone(),
            file: "app.js".into(),
        },
        Objects {
            vendor: "other-toys".into(),
            actor: "robot-9".into(),
            guardian: ZED,
            plugin: "hostile-wasi-probe".into(),
            pending: pending[1][0].clone(),
            to_decide: pending[1][1].clone(),
            file: "verify.js".into(),
        },
    ];
    World {
        host,
        vendor_keys,
        agent_tokens,
        sessions,
        objects,
        bad,
    }
}

async fn upload(host: &TestHost, key: &str, bytes: Vec<u8>) -> (u16, Value) {
    let response = host
        .call(Method::POST, "/v1/vendor/plugins", key)
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .unwrap();
    common::answer(response).await
}

fn pay(minor_units: u64) -> Value {
    json!({
        "action": "payment",
        "params": {"amount": minor_units, "currency": "CNY", "recipient": "toy-shop"}
    })
}

/// An action nothing escalates: allowed at once.
fn lights() -> Value {
    json!({"action": "lights.on", "params": {"room": "kids"}})
}

/// The override both guardians set (a tightening, so always within the vendor's bounds).
fn overrides() -> Value {
    json!({"spend_thresholds": {"CNY": 40000}})
}

// ---- the table ----------------------------------------------------------------------------------

/// A row's request body.
#[derive(Debug, Clone)]
enum Body {
    Empty,
    Json(Value),
    Wasm(Vec<u8>),
    Mcp(Value),
}

/// One endpoint as one request, and the status each role must get.
#[derive(Debug, Clone)]
struct Row {
    method: Method,
    /// The route as the router and the OpenAPI document name it.
    route: &'static str,
    /// The request's path: the route with the objects filled in, and a query.
    path: String,
    body: Body,
    /// Whether the request names an object (in its path or body).
    names_object: bool,
    expect: [u16; 11],
}

impl Row {
    fn expected(&self, pass: Pass, role: Role) -> u16 {
        match pass {
            Pass::Own(Side::A) => self.expect[role.column()],
            Pass::Own(Side::B) => self.expect[role.mirror().column()],
            Pass::Upper => {
                let status = self.expect[role.column()];
                if self.names_object && (status < 300 || status == 404) {
                    404
                } else {
                    status
                }
            }
        }
    }

    fn name(&self) -> String {
        format!("{} {}", self.method, self.route)
    }
}

/// Where path parameters point: one side's own objects, or A's named in upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Own(Side),
    Upper,
}

impl Pass {
    fn side(self) -> Side {
        match self {
            Pass::Own(side) => side,
            Pass::Upper => Side::A,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Pass::Own(Side::A) => "A's objects",
            Pass::Own(Side::B) => "B's objects (table mirrored)",
            Pass::Upper => "A's ids in upper case",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Pass::Own(Side::A) => "a",
            Pass::Own(Side::B) => "b",
            Pass::Upper => "upper",
        }
    }
}

fn fill(route: &str, o: &Objects) -> String {
    let id = if route.ends_with("/decision") {
        &o.to_decide
    } else {
        &o.pending
    };
    route
        .replace("{id}", id)
        .replace("{actor}", &o.actor)
        .replace("{version}", &format!("{}@2", o.plugin))
        .replace("{name}", &o.plugin)
        .replace("{vendor}", &o.vendor)
        .replace("{file}", &o.file)
}

fn row(method: Method, route: &'static str, expect: [u16; 11], o: &Objects) -> Row {
    Row {
        method,
        route,
        path: fill(route, o),
        body: Body::Empty,
        names_object: route.contains('{'),
        expect,
    }
}

impl Row {
    fn query(mut self, query: &str) -> Row {
        self.path.push_str(query);
        self
    }

    fn json(mut self, body: Value) -> Row {
        self.body = Body::Json(body);
        self
    }

    fn wasm(mut self, bytes: Vec<u8>) -> Row {
        self.body = Body::Wasm(bytes);
        self
    }

    fn mcp(mut self, id: u64, method: &str, params: Value, names_object: bool) -> Row {
        self.body =
            Body::Mcp(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        self.names_object = names_object;
        self
    }
}

// The columns of every row, in order (A is the side whose objects the row names):
//  admin, vendor A, vendor B, agent A, agent B, guardian of the actor, another guardian,
//  expired, none, forged, altered.
const PUBLIC: [u16; 11] = [200; 11];
const ANY_CALLER: [u16; 11] = [200, 200, 200, 200, 200, 200, 200, 401, 401, 401, 401];
const ADMIN_ONLY: [u16; 11] = [200, 404, 404, 404, 404, 404, 404, 401, 401, 401, 401];
const ANY_VENDOR: [u16; 11] = [404, 200, 200, 404, 404, 404, 404, 401, 401, 401, 401];
const VENDOR_A: [u16; 11] = [404, 200, 404, 404, 404, 404, 404, 401, 401, 401, 401];
const ANY_GUARDIAN: [u16; 11] = [404, 404, 404, 404, 404, 200, 200, 401, 401, 401, 401];
const GUARDIAN_OF_A: [u16; 11] = [404, 404, 404, 404, 404, 200, 404, 401, 401, 401, 401];
const ANY_AGENT: [u16; 11] = [404, 404, 404, 200, 200, 404, 404, 401, 401, 401, 401];
const AGENT_OF_A: [u16; 11] = [404, 404, 404, 200, 404, 404, 404, 401, 401, 401, 401];

/// Every endpoint, as requests on the objects `o`. `pass` makes created names unique per pass.
fn table(o: &Objects, pass: Pass) -> Vec<Row> {
    use Method as M;
    let tag = pass.tag();
    vec![
        // anyone
        row(M::GET, "/.well-known/jwks.json", PUBLIC, o),
        row(M::GET, "/.well-known/audit-log-key", PUBLIC, o),
        row(M::GET, "/healthz", PUBLIC, o),
        row(M::GET, "/readyz", PUBLIC, o),
        row(M::GET, "/metrics", PUBLIC, o),
        row(M::GET, "/openapi.json", PUBLIC, o),
        row(M::GET, "/console", PUBLIC, o),
        row(M::GET, "/console/", PUBLIC, o),
        row(M::GET, "/console/{file}", PUBLIC, o),
        row(M::GET, "/v1/whoami", ANY_CALLER, o),
        // agents, and the parties of an approval
        row(M::POST, "/v1/approvals", ANY_AGENT, o).json(lights()),
        row(
            M::GET,
            "/v1/approvals/{id}",
            [202, 202, 404, 202, 404, 202, 404, 401, 401, 401, 401],
            o,
        ),
        row(
            M::GET,
            "/v1/approvals/{id}/events",
            [200, 200, 404, 200, 404, 200, 404, 401, 401, 401, 401],
            o,
        ),
        row(
            M::GET,
            "/v1/approvals/{id}/receipt",
            [200, 200, 404, 200, 404, 200, 404, 401, 401, 401, 401],
            o,
        ),
        row(M::POST, "/mcp", ANY_AGENT, o).mcp(1, "tools/list", json!({}), false),
        row(M::POST, "/mcp", ANY_AGENT, o).mcp(
            2,
            "tools/call",
            json!({"name": "request_approval", "arguments": lights()}),
            false,
        ),
        row(M::POST, "/mcp", AGENT_OF_A, o).mcp(
            3,
            "tools/call",
            json!({"name": "get_approval", "arguments": {"approval_id": o.pending}}),
            true,
        ),
        row(M::POST, "/mcp", AGENT_OF_A, o).mcp(
            4,
            "tools/call",
            json!({"name": "wait_for_approval", "arguments": {"approval_id": o.pending, "wait_seconds": 0}}),
            true,
        ),
        // (A stateless MCP server has no session stream to GET or session to DELETE.)
        row(
            M::GET,
            "/mcp",
            [404, 404, 404, 405, 405, 404, 404, 401, 401, 401, 401],
            o,
        ),
        row(
            M::DELETE,
            "/mcp",
            [404, 404, 404, 405, 405, 404, 404, 401, 401, 401, 401],
            o,
        ),
        // guardians
        row(M::GET, "/v1/inbox", ANY_GUARDIAN, o),
        row(M::GET, "/v1/inbox/stream", ANY_GUARDIAN, o),
        row(M::GET, "/v1/inbox/history", ANY_GUARDIAN, o),
        row(M::GET, "/v1/guardian/actors", ANY_GUARDIAN, o),
        row(M::POST, "/v1/approvals/{id}/decision", GUARDIAN_OF_A, o)
            .json(json!({"decision": "approve"})),
        row(M::GET, "/v1/actors/{actor}/overrides", GUARDIAN_OF_A, o),
        row(M::PUT, "/v1/actors/{actor}/overrides", GUARDIAN_OF_A, o).json(overrides()),
        // vendors
        row(M::GET, "/v1/vendor/policy", ANY_VENDOR, o),
        row(M::PUT, "/v1/vendor/policy", ANY_VENDOR, o)
            .json(json!({"plugin_limits": {"deadline_ms": 10000}})),
        row(
            M::POST,
            "/v1/vendor/actors",
            [404, 201, 201, 404, 404, 404, 404, 401, 401, 401, 401],
            o,
        )
        .json(json!({"id": "device-new", "guardians": ["guardian-new"]})),
        row(M::GET, "/v1/vendor/actors/{actor}", VENDOR_A, o),
        row(
            M::POST,
            "/v1/vendor/actors/{actor}/tokens",
            [404, 201, 404, 404, 404, 404, 404, 401, 401, 401, 401],
            o,
        ),
        row(M::DELETE, "/v1/vendor/actors/{actor}/tokens", VENDOR_A, o),
        row(M::GET, "/v1/vendor/plugins", ANY_VENDOR, o),
        // New bytes each pass, of a plugin neither side's objects name.
        row(
            M::POST,
            "/v1/vendor/plugins",
            [404, 201, 201, 404, 404, 404, 404, 401, 401, 401, 401],
            o,
        )
        .wasm(variant(&plugin("hostile_trap"), &format!("upload-{tag}"))),
        row(M::POST, "/v1/vendor/plugins/{version}/activate", VENDOR_A, o),
        row(M::POST, "/v1/vendor/plugins/{version}/shadow", VENDOR_A, o),
        row(M::POST, "/v1/vendor/plugins/{version}/deactivate", VENDOR_A, o),
        row(M::POST, "/v1/vendor/plugins/{version}/replay", VENDOR_A, o),
        row(M::POST, "/v1/vendor/plugins/{name}/rollback", VENDOR_A, o),
        row(M::GET, "/v1/vendor/webhook", ANY_VENDOR, o),
        row(M::PUT, "/v1/vendor/webhook", ANY_VENDOR, o).json(json!({"url": HOOK})),
        row(
            M::DELETE,
            "/v1/vendor/webhook",
            [404, 204, 204, 404, 404, 404, 404, 401, 401, 401, 401],
            o,
        ),
        row(M::GET, "/v1/vendor/webhook/deliveries", ANY_VENDOR, o),
        row(M::GET, "/v1/vendor/flags", ANY_VENDOR, o),
        // the platform
        row(M::GET, "/v1/vendors", ADMIN_ONLY, o),
        row(
            M::POST,
            "/v1/vendors",
            [201, 404, 404, 404, 404, 404, 404, 401, 401, 401, 401],
            o,
        )
        .json(json!({"id": format!("new-vendor-{tag}"), "name": "New"})),
        row(
            M::POST,
            "/v1/vendors/{vendor}/keys",
            [201, 404, 404, 404, 404, 404, 404, 401, 401, 401, 401],
            o,
        ),
        row(M::GET, "/v1/audit/entries", ADMIN_ONLY, o),
        row(M::GET, "/v1/audit/checkpoint", ADMIN_ONLY, o),
        row(M::GET, "/v1/audit/proofs/inclusion", ADMIN_ONLY, o).query("?index=0"),
        row(M::GET, "/v1/audit/proofs/consistency", ADMIN_ONLY, o).query("?old_size=1"),
        row(M::GET, "/v1/audit/export", ADMIN_ONLY, o),
        row(M::GET, "/v1/audit/plugins", ADMIN_ONLY, o),
        row(M::GET, "/v1/audit/flags", ADMIN_ONLY, o),
    ]
}

// ---- which endpoints exist ----------------------------------------------------------------------

/// `(METHOD, route)` of every route in the router's source.
fn routed() -> BTreeSet<(String, String)> {
    let source = include_str!("../host/src/http/mod.rs");
    let mut out = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find(".route(") {
        let args = &rest[at + ".route(".len()..];
        let mut depth = 1;
        let end = args
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(i, _)| i)
            .expect("a closed .route(");
        let call = &args[..end];
        let path = call.split('"').nth(1).expect("a route's path");
        for method in ["get", "post", "put", "delete", "patch"] {
            let named = call.match_indices(&format!("{method}(")).any(|(i, _)| {
                !call[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            });
            if named {
                out.insert((method.to_uppercase(), path.to_owned()));
            }
        }
        rest = &args[end..];
    }
    // A nested service takes every method: MCP's streamable HTTP defines POST (messages), GET
    // (a session's stream) and DELETE (a session's end).
    let mut rest = source;
    while let Some(at) = rest.find(".nest_service(") {
        let args = &rest[at + ".nest_service(".len()..];
        let path = args.split('"').nth(1).expect("a nested service's path");
        for method in ["GET", "POST", "DELETE"] {
            out.insert((method.to_owned(), path.to_owned()));
        }
        rest = args;
    }
    out
}

/// `(METHOD, route)` of every operation in the OpenAPI document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, operations) in doc["paths"].as_object().expect("paths") {
        for method in operations.as_object().unwrap().keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

// ---- what must not change ---------------------------------------------------------------------

/// What each side and the platform look like, read by their owners.
#[derive(Debug, PartialEq)]
struct Snapshot {
    sides: [Vec<(&'static str, Value)>; 2],
    audit_size: u64,
    vendors: Value,
}

async fn side_state(w: &World, side: Side) -> Vec<(&'static str, Value)> {
    let o = w.objects(side);
    let key = w.vendor_key(side);
    // Each read is [status, what matters of the body]; they run at once.
    let read = |path: String, token: String, keep: fn(&Value) -> Value| async move {
        let (status, body) = w.get_as(&path, &token).await;
        json!([status, keep(&body)])
    };
    let whole: fn(&Value) -> Value = Value::clone;
    let plugin_states: fn(&Value) -> Value = |list| {
        list.as_array()
            .map(|l| {
                l.iter()
                    .map(|p| json!([p["reference"], p["state"]]))
                    .collect()
            })
            .unwrap_or(Value::Null)
    };
    let settlement: fn(&Value) -> Value = |a| json!([a["status"], a["decider"]]);
    let (policy, actor, device, plugins, webhook, overrides, pending, to_decide, vendor, agent) = futures_util::join!(
        read("/v1/vendor/policy".into(), key.into(), whole),
        read(format!("/v1/vendor/actors/{}", o.actor), key.into(), whole),
        read("/v1/vendor/actors/device-new".into(), key.into(), whole),
        read("/v1/vendor/plugins".into(), key.into(), plugin_states),
        read("/v1/vendor/webhook".into(), key.into(), |h| json!([
            h["url"],
            h["created_at"]
        ])),
        read(
            format!("/v1/actors/{}/overrides?vendor={}", o.actor, o.vendor),
            w.session(side).into(),
            whole
        ),
        read(
            format!("/v1/approvals/{}", o.pending),
            ADMIN.into(),
            settlement
        ),
        read(
            format!("/v1/approvals/{}", o.to_decide),
            ADMIN.into(),
            settlement
        ),
        read("/v1/whoami".into(), key.into(), whole),
        read("/v1/whoami".into(), w.agent_token(side).into(), whole),
    );
    vec![
        ("policy", policy),
        ("actor", actor),
        ("new device", device),
        ("plugins", plugins),
        ("webhook", webhook),
        ("overrides", overrides),
        ("pending approval", pending),
        ("approval to decide", to_decide),
        ("vendor key", vendor),
        ("agent token", agent),
    ]
}

async fn snapshot(w: &World) -> Snapshot {
    let (a, b, vendors) = futures_util::join!(
        side_state(w, Side::A),
        side_state(w, Side::B),
        w.get_as("/v1/vendors", ADMIN)
    );
    Snapshot {
        sides: [a, b],
        audit_size: w.host.state.audit.size().await.unwrap(),
        vendors: vendors.1,
    }
}

/// What differs between two snapshots, in the parts `role`'s call must not have touched.
fn changed(before: &Snapshot, after: &Snapshot, role: Role, succeeded: bool) -> Vec<String> {
    let mut sides = vec![Side::A, Side::B];
    if succeeded {
        match role.side() {
            // The platform may change anything; a side may change its own.
            _ if role == Role::Admin => return Vec::new(),
            Some(own) => sides.retain(|s| *s != own),
            None => {}
        }
    }
    let mut out = Vec::new();
    for side in sides {
        for ((name, was), (_, is)) in before.sides[side as usize]
            .iter()
            .zip(&after.sides[side as usize])
        {
            if was != is {
                out.push(format!("{side:?}'s {name}: {was} -> {is}"));
            }
        }
    }
    if !succeeded {
        if before.audit_size != after.audit_size {
            out.push(format!(
                "the audit log grew: {} -> {}",
                before.audit_size, after.audit_size
            ));
        }
        if before.vendors != after.vendors {
            out.push(format!("vendors: {} -> {}", before.vendors, after.vendors));
        }
    }
    out
}

// ---- running the matrix -------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Tally {
    cells: u64,
    by_status: BTreeMap<u16, u64>,
    by_role: BTreeMap<Role, BTreeMap<u16, u64>>,
    state_checks: u64,
    leak_checks: u64,
    effect_checks: u64,
    failures: Vec<String>,
}

impl Tally {
    fn fail(&mut self, what: String) {
        eprintln!("FAIL {what}");
        self.failures.push(what);
    }
}

async fn run_pass(w: &mut World, pass: Pass, tally: &mut Tally) {
    let objects = match pass {
        Pass::Own(side) => w.objects(side).clone(),
        Pass::Upper => w.objects(Side::A).upper(),
    };
    for row in table(&objects, pass) {
        run_row(w, &row, pass, tally).await;
    }
}

/// Whether a row is one of the endpoints anyone may read (its answers name no side).
fn public(row: &Row) -> bool {
    !(row.route.starts_with("/v1/") || row.route == "/mcp")
}

async fn run_row(w: &mut World, row: &Row, pass: Pass, tally: &mut Tally) {
    // The refusals first, then the cells that succeed: a success may change the object (a
    // decision, a revocation), and each is undone (or taken over) before the next cell.
    let (refusals, successes): (Vec<Role>, Vec<Role>) =
        ROLES.iter().partition(|r| row.expected(pass, **r) >= 300);
    let mutating = row.method != Method::GET;
    // The state after one cell is the state before the next.
    let mut last = None;
    for role in refusals.into_iter().chain(successes) {
        for credential in w.credentials(role) {
            let expected = row.expected(pass, role);
            let before = match last.take() {
                Some(state) => Some(state),
                None if mutating => Some(snapshot(w).await),
                None => None,
            };
            let answer = w.send(&row.method, &row.path, &credential, &row.body).await;
            let cell = format!(
                "[{}] {} ({}) as {} ({})",
                pass.name(),
                row.name(),
                row.path,
                role.name(),
                credential.label
            );
            tally.cells += 1;
            *tally.by_status.entry(answer.status).or_default() += 1;
            *tally
                .by_role
                .entry(role)
                .or_default()
                .entry(answer.status)
                .or_default() += 1;
            if answer.status != expected {
                tally.fail(format!(
                    "{cell}: expected {expected}, got {}: {}",
                    answer.status,
                    answer.text.chars().take(300).collect::<String>()
                ));
            }
            if answer.status == 401
                && let Some(code) = credential.refused_as
                && answer.code.as_deref() != Some(code)
            {
                tally.fail(format!(
                    "{cell}: 401 with code {:?}, not {code}",
                    answer.code
                ));
            }
            let succeeded = answer.status < 300;
            if succeeded
                && !public(row)
                && let Some(side) = role.side()
            {
                tally.leak_checks += 1;
                let other = w.objects(side.other());
                for name in [
                    &other.vendor,
                    &other.actor,
                    &other.pending,
                    &other.to_decide,
                ] {
                    if answer.text.contains(name.as_str()) {
                        tally.fail(format!("{cell}: the answer names {name}: {}", answer.text));
                    }
                }
            }
            if succeeded {
                after_success(w, row, pass, role, &answer, tally).await;
            }
            if let Some(before) = before {
                tally.state_checks += 1;
                let after = snapshot(w).await;
                for change in changed(&before, &after, role, succeeded) {
                    tally.fail(format!("{cell} changed {change}"));
                }
                last = Some(after);
            }
        }
    }
}

/// The events of the audit entries of `kind` that match `filter`, oldest first.
async fn entries(w: &World, kind: &str, filter: &str) -> Vec<Value> {
    let (status, body) = w
        .get_as(
            &format!("/v1/audit/entries?type={kind}&{filter}&limit=1000"),
            ADMIN,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["entry"]["event"].clone())
        .collect()
}

/// The deciders of an approval's `decided` entries in its receipt, verified with the log's
/// published key.
async fn receipt_deciders(w: &World, id: &str) -> Vec<(String, Option<String>)> {
    let (status, body) = w
        .get_as(&format!("/v1/approvals/{id}/receipt"), ADMIN)
        .await;
    assert_eq!(status, 200, "{body}");
    let receipt = Receipt::from_json(&body["receipt"].to_string()).unwrap();
    receipt
        .verify(&CheckpointVerifier::new(body["log_key"].as_str().unwrap()).unwrap())
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event {
            Event::Decided {
                status, decider, ..
            } => Some((status, decider)),
            _ => None,
        })
        .collect()
}

/// Puts a side's plugin back as it was: version 1 active, version 2 inactive.
async fn restore_plugins(w: &World, side: Side, tally: &mut Tally) {
    let (key, name) = (w.vendor_key(side), &w.objects(side).plugin);
    for (version, to) in [(1, "activate"), (2, "deactivate")] {
        let (status, body) = w
            .host
            .post(
                &format!("/v1/vendor/plugins/{name}@{version}/{to}"),
                key,
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, list) = w.get_as("/v1/vendor/plugins", key).await;
    let states: BTreeMap<String, String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == name.as_str())
        .map(|p| {
            (
                p["reference"].as_str().unwrap().to_owned(),
                p["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    tally.effect_checks += 1;
    let want = BTreeMap::from([
        (format!("{name}@1"), "active".to_owned()),
        (format!("{name}@2"), "inactive".to_owned()),
    ]);
    if states != want {
        tally.fail(format!("{side:?}'s plugin was not restored: {states:?}"));
    }
}

/// Checks what a successful cell did, and undoes what would change the next cells.
async fn after_success(
    w: &mut World,
    row: &Row,
    pass: Pass,
    role: Role,
    answer: &Answer,
    tally: &mut Tally,
) {
    let own = role.side();
    match (row.method.as_str(), row.route) {
        ("DELETE", "/v1/vendor/actors/{actor}/tokens") => {
            let side = own.unwrap();
            let old = w.agent_token(side).to_owned();
            tally.effect_checks += 1;
            let (status, _) = w.get_as("/v1/whoami", &old).await;
            // (The tokens of the row's earlier cell that issued one are revoked with it.)
            if status != 401 || answer.json["revoked"].as_u64().is_none_or(|n| n < 1) {
                tally.fail(format!(
                    "revoking {side:?}'s agent tokens: {} and the old token answers {status}",
                    answer.json
                ));
            }
            let (status, body) = w
                .host
                .post(
                    &format!("/v1/vendor/actors/{}/tokens", w.objects(side).actor),
                    w.vendor_key(side),
                    json!({}),
                )
                .await;
            assert_eq!(status, 201, "{body}");
            w.agent_tokens[side as usize] = body["token"].as_str().unwrap().to_owned();
        }
        ("POST", "/v1/vendors/{vendor}/keys") => {
            let side = pass.side();
            let old = w.vendor_key(side).to_owned();
            let new = answer.json["api_key"].as_str().unwrap().to_owned();
            tally.effect_checks += 1;
            let (old_status, _) = w.get_as("/v1/whoami", &old).await;
            let (_, me) = w.get_as("/v1/whoami", &new).await;
            if old_status != 401 || me["vendor"] != w.objects(side).vendor.as_str() {
                tally.fail(format!(
                    "rotating {side:?}'s key: the old key answers {old_status}, the new one is {me}"
                ));
            }
            w.vendor_keys[side as usize] = new;
        }
        (
            "POST",
            "/v1/vendor/plugins/{version}/activate"
            | "/v1/vendor/plugins/{version}/shadow"
            | "/v1/vendor/plugins/{version}/deactivate"
            | "/v1/vendor/plugins/{name}/rollback",
        ) => restore_plugins(w, own.unwrap(), tally).await,
        ("DELETE", "/v1/vendor/webhook") => {
            let key = w.vendor_key(own.unwrap()).to_owned();
            tally.effect_checks += 1;
            if w.get_as("/v1/vendor/webhook", &key).await.0 != 404 {
                tally.fail(format!("{:?}'s webhook survived its deletion", own));
            }
            let (status, body) = w
                .host
                .put("/v1/vendor/webhook", &key, json!({"url": HOOK}))
                .await;
            assert_eq!(status, 200, "{body}");
        }
        ("POST", "/v1/approvals/{id}/decision") => {
            // The decider is the session's subject, in the record and in the log.
            let side = own.unwrap();
            let guardian = w.objects(side).guardian;
            let id = answer.json["id"].as_str().unwrap_or_default().to_owned();
            tally.effect_checks += 1;
            if answer.json["decider"] != guardian || answer.json["status"] != "approved" {
                tally.fail(format!("a decision by {guardian} answered {}", answer.json));
            }
            let deciders = receipt_deciders(w, &id).await;
            if !deciders.contains(&("approved".to_owned(), Some(guardian.to_owned()))) {
                tally.fail(format!(
                    "{id}'s receipt records {deciders:?}, not {guardian}"
                ));
            }
        }
        ("PUT", "/v1/actors/{actor}/overrides") => {
            let side = own.unwrap();
            let o = w.objects(side);
            let found = entries(w, "overrides_changed", &format!("vendor={}", o.vendor)).await;
            let by = found.last().map(|e| e["changed_by"].clone());
            tally.effect_checks += 1;
            if !by
                .as_ref()
                .and_then(Value::as_str)
                .is_some_and(|b| b.ends_with(o.guardian))
            {
                tally.fail(format!("{}'s overrides were changed by {by:?}", o.actor));
            }
        }
        ("PUT", "/v1/vendor/policy") => {
            let vendor = w.objects(own.unwrap()).vendor.clone();
            let found = entries(w, "policy_changed", &format!("vendor={vendor}")).await;
            let by = found.last().map(|e| e["changed_by"].clone());
            tally.effect_checks += 1;
            if by != Some(json!(format!("vendor:{vendor}"))) {
                tally.fail(format!("{vendor}'s policy was changed by {by:?}"));
            }
        }
        ("POST", "/mcp") if answer.json["result"]["tools"].is_array() => {
            // No tool decides: an agent cannot approve its own request through MCP either.
            let mut names: Vec<&str> = answer.json["result"]["tools"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|t| t["name"].as_str())
                .collect();
            names.sort_unstable();
            tally.effect_checks += 1;
            if names != ["get_approval", "request_approval", "wait_for_approval"] {
                tally.fail(format!("the MCP tools are {names:?}"));
            }
        }
        _ => {}
    }
}

/// A guardian's decision records the session's subject, whatever else the request names.
async fn decider_checks(w: &World, tally: &mut Tally) {
    let mom = w.session(Side::A).to_owned();
    let (status, asked) = w
        .host
        .post("/v1/approvals", w.agent_token(Side::A), pay(80_000))
        .await;
    assert_eq!(status, 202, "{asked}");
    let id = asked["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/approvals/{id}");
    // Bodies that name another decider are refused (unknown fields), and decide nothing.
    for body in [
        json!({"decision": "approve", "decider": DAD}),
        json!({"decision": "approve", "decided_by": DAD}),
        json!({"decision": "approve", "guardian": DAD}),
        json!({"decision": "approve", "sub": DAD}),
        json!({"decision": "deny", "reason": "no", "decider": DAD}),
        json!({"decision": "revise", "params": {"amount": 100, "currency": "CNY", "recipient": "toy-shop"}, "decider": DAD}),
    ] {
        let (status, answer) = w.host.decide(&id, &mom, body.clone()).await;
        let (_, record) = w.get_as(&path, ADMIN).await;
        tally.effect_checks += 1;
        if status != 400 || record["status"] != "pending" || !record["decider"].is_null() {
            tally.fail(format!(
                "deciding with {body}: {status} {answer}; the approval is now {record}"
            ));
        }
    }
    // A decider named in the query or in headers is ignored: the session's subject decides.
    let response = w
        .host
        .call(
            Method::POST,
            &format!("{path}/decision?decider={DAD}&decided_by={DAD}&guardian={DAD}"),
            &mom,
        )
        .header("x-decider", DAD)
        .header("x-guardian", DAD)
        .header("x-forwarded-user", DAD)
        .json(&json!({"decision": "approve"}))
        .send()
        .await
        .unwrap();
    let (status, answer) = common::answer(response).await;
    let (_, record) = w.get_as(&path, ADMIN).await;
    let deciders = receipt_deciders(w, &id).await;
    let logged: Vec<Value> = entries(w, "decided", &format!("approval_id={id}"))
        .await
        .into_iter()
        .filter(|e| e["status"] == "approved")
        .map(|e| e["decider"].clone())
        .collect();
    tally.effect_checks += 4;
    if status != 200 || answer["decider"] != MOM {
        tally.fail(format!(
            "deciding with a decider in the query and headers: {status} {answer}"
        ));
    }
    if record["decider"] != MOM {
        tally.fail(format!("the record's decider is {}", record["decider"]));
    }
    let approved: Vec<_> = deciders.iter().filter(|(s, _)| s == "approved").collect();
    if approved != [&("approved".to_owned(), Some(MOM.to_owned()))] {
        tally.fail(format!("the receipt's deciders are {deciders:?}"));
    }
    if logged != [json!(MOM)] {
        tally.fail(format!("the audit log's deciders are {logged:?}"));
    }
    // The other guardian of the actor, too late, is told who decided.
    let dad = w.host.guardian(DAD);
    let (status, answer) = w.host.decide(&id, &dad, json!({"decision": "deny"})).await;
    tally.effect_checks += 1;
    if status != 409 || answer["approval"]["decider"] != MOM {
        tally.fail(format!("a second decision: {status} {answer}"));
    }
}

// ---- the test ---------------------------------------------------------------------------------

/// Each backend's figures, for the one report of both.
static FIGURES: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

on_both_backends!(
    every_endpoint_answers_every_caller_as_the_table_says,
    matrix
);
async fn matrix(db: TestDb) {
    let started = Instant::now();
    let backend = if db.url.starts_with("sqlite") {
        "SQLite"
    } else {
        "PostgreSQL"
    };
    let mut w = world(&db).await;

    // The table covers every endpoint the host serves, and nothing else.
    let (status, doc) = w.host.get("/openapi.json", "").await;
    assert_eq!(status, 200);
    let (routed, documented) = (routed(), documented(&doc));
    let unparsed: Vec<_> = documented.difference(&routed).collect();
    assert!(
        unparsed.is_empty(),
        "documented operations not found in the router's source (is `routed` still reading it?): {unparsed:?}"
    );
    let served: BTreeSet<(String, String)> = routed.union(&documented).cloned().collect();
    let rows = table(w.objects(Side::A), Pass::Own(Side::A));
    let covered: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r.method.to_string(), r.route.to_owned()))
        .collect();
    let missing: Vec<_> = served.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "endpoints without a row in the matrix: {missing:?}"
    );
    let unknown: Vec<_> = covered.difference(&served).collect();
    assert!(
        unknown.is_empty(),
        "rows for endpoints the host does not serve: {unknown:?}"
    );

    let passes: Vec<Pass> = if common::report::long() {
        vec![Pass::Own(Side::A), Pass::Own(Side::B), Pass::Upper]
    } else {
        vec![Pass::Own(Side::A)]
    };
    let mut tally = Tally::default();
    for pass in &passes {
        run_pass(&mut w, *pass, &mut tally).await;
    }
    decider_checks(&w, &mut tally).await;
    let elapsed = started.elapsed();

    let credentials: usize = ROLES.iter().map(|r| w.credentials(*r).len()).sum();
    let statuses = tally
        .by_status
        .iter()
        .map(|(s, n)| format!("{s}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let figures = format!(
        "| {backend} | {} | {} ({} rows) | {} ({credentials}) | {} | {statuses} | {} | {} | {} | {} | {:.1} s |",
        passes
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join("; "),
        covered.len(),
        rows.len(),
        ROLES.len(),
        tally.cells,
        tally.state_checks,
        tally.leak_checks,
        tally.effect_checks,
        tally.failures.len(),
        elapsed.as_secs_f64(),
    );
    let mut by_role = format!(
        "\nCells by role ({backend}):\n\n| role | credentials | cells by status |\n| --- | --- | --- |\n"
    );
    for role in ROLES {
        let counts = tally.by_role.get(&role).cloned().unwrap_or_default();
        let labels: Vec<&str> = w.credentials(role).iter().map(|c| c.label).collect();
        by_role.push_str(&format!(
            "| {} | {} | {} |\n",
            role.name(),
            labels.join(", "),
            counts
                .iter()
                .map(|(s, n)| format!("{s}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let report = {
        let mut all = FIGURES.lock().unwrap();
        all.retain(|(b, _)| b != backend);
        all.push((backend.to_owned(), figures));
        all.sort();
        let lines: Vec<&str> = all.iter().map(|(_, f)| f.as_str()).collect();
        format!(
            "Every endpoint the host serves (its OpenAPI document plus the router's console files \
             and MCP) called by every kind of caller, each cell's status asserted. Path parameters \
             name vendor A's objects, so vendor B, B's agent and B's guardian reach for another \
             side's objects. Around each cell: a refused call leaves both vendors' state and the \
             audit log as they were (\"state checks\"), a success by one side leaves the other's \
             as it was, a 401 says why, a success never names the other side's vendor, actor or \
             approvals (\"leak checks\"), and successes do what they say (\"effect checks\": \
             revocations, rotations, restored plugins, the decider and `changed_by` in the log). \
             The decider is the session's subject: bodies naming another decider are refused and \
             decide nothing; a decider named in the query or headers is ignored. The 200s of \
             refused credentials are the public endpoints (keys, health, metrics, the OpenAPI \
             document, the console), which read no credentials; the 405s are agents' GET and \
             DELETE on the stateless MCP server; an MCP tool's `not_found` error counts as 404. \
             {}\n\n\
             | backend | passes | endpoints | roles (credentials) | cells | cells by status | \
             state checks | leak checks | effect checks | failures | time |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n{}\n{by_role}",
            if common::report::long() {
                "The long size runs the matrix three times: on A's objects, on B's objects with \
                 the table mirrored (B's side must succeed where A's did, A's side is refused), \
                 and on A's ids in upper case (ids are case-sensitive: nothing is there, so every \
                 caller that reaches the endpoint gets 404)."
            } else {
                "The short size runs the matrix once, on A's objects; the long size adds B's \
                 objects (the table mirrored) and A's ids in upper case."
            },
            lines.join("\n")
        )
    };
    common::report::write("authz", &report);
    assert!(
        tally.failures.is_empty(),
        "{} of {} cells failed:\n{}",
        tally.failures.len(),
        tally.cells,
        tally.failures.join("\n")
    );
    w.host.stop().await;
}
