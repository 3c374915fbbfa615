//! Abuse: an agent trying to wear a guardian down with hundreds of requests an hour, each a tiny
//! variation of the last, is merged and rate-limited, and the guardian hears of it once (one
//! request and one flag per hour), not hundreds of times; every attempt is still audited. On
//! SQLite and PostgreSQL. The long run (`scripts/reliability`) keeps it up for more hours.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use approval_host::clock::ManualClock;
use common::{ADMIN, Sse, TestDb, TestHost, report};
use serde_json::{Value, json};

const T0: u64 = 1_795_000_000_000;
const VENDOR: &str = "acme-toys";
const TEDDY: &str = "teddy-7";
const ROBOT: &str = "robot-2";
const MOM: &str = "guardian-mom";
const HOUR_MS: u64 = 3_600_000;

struct World {
    host: TestHost,
    vendor: String,
    teddy: String,
    robot: String,
}

async fn world(db: &TestDb) -> World {
    let host = TestHost::start(db, ManualClock::at(T0)).await;
    let vendor = host.vendor(VENDOR).await;
    let teddy = host.actor(&vendor, TEDDY, &["toy"], &[MOM]).await;
    let robot = host.actor(&vendor, ROBOT, &["toy"], &[MOM]).await;
    World {
        host,
        vendor,
        teddy,
        robot,
    }
}

/// A ¥600 payment (over the default threshold: it needs a guardian), varied a little by `i`:
/// the amount by up to 5%, the recipient's case and spaces, and optional fields' presence.
fn variation(i: u64) -> Value {
    let recipient = ["toy-shop", "Toy-Shop", " toy-shop", "TOY-SHOP "][(i % 4) as usize];
    json!({
        "action": "payment",
        "params": {"amount": 60_000 + (i * 37) % 3_000, "currency": "CNY", "recipient": recipient},
    })
}

/// The guardian's stream until `sentinel`'s pending event: the names of the events about
/// `actor` before it.
async fn events_until(stream: &mut Sse, actor: &str, sentinel: &str) -> Vec<String> {
    let mut names = Vec::new();
    while let Some((name, data)) = stream.next_within(30).await {
        let about = data["actor"]
            .as_str()
            .or(data["approval"]["actor"].as_str());
        if name == "pending" && data["id"] == sentinel {
            return names;
        }
        if name != "inbox" && (about == Some(actor) || name == "flagged") {
            names.push(name);
        }
    }
    panic!("the stream ended before the sentinel; saw {names:?}");
}

on_both_backends!(
    wearing_a_guardian_down_is_merged_rate_limited_and_flagged_once,
    wear_down
);
async fn wear_down(db: TestDb) {
    let w = world(&db).await;
    let hours = report::scale(1, 3);
    let per_hour = report::scale(240, 1_000);
    let mom = w
        .host
        .sessions
        .mint(MOM, T0, Duration::from_secs(hours * 3_600 + 3_600))
        .unwrap();
    let mut stream = w.host.inbox_stream(&mom).await;
    assert_eq!(stream.next_within(30).await.unwrap().0, "inbox");

    let step = HOUR_MS / per_hour;
    let mut outcomes: BTreeMap<&str, u64> = BTreeMap::new();
    let mut pending_ids = Vec::new();
    let mut merged_into_first = 0;
    for i in 0..hours * per_hour {
        let (status, body) = w.host.post("/v1/approvals", &w.teddy, variation(i)).await;
        let outcome = match (status, body["status"].as_str()) {
            (202, Some("pending")) => {
                let id = body["id"].as_str().unwrap().to_owned();
                if pending_ids.last() == Some(&id) {
                    if pending_ids.len() == 1 {
                        merged_into_first += 1;
                        assert_eq!(body["similar_requests"], merged_into_first, "{body}");
                    }
                    "merged"
                } else {
                    pending_ids.push(id);
                    "pending"
                }
            }
            (429, _) => {
                assert_eq!(body["code"], "rate_limited", "{body}");
                "rate_limited"
            }
            _ => panic!("request {i}: unexpected {status} {body}"),
        };
        *outcomes.entry(outcome).or_default() += 1;
        w.host.clock.advance(Duration::from_millis(step));
    }
    // The default limit is 20 requests for a guardian an hour, merged ones included: the first
    // asks, 19 variations merge into it, the rest of the hour is refused.
    assert_eq!(merged_into_first, 19);
    assert_eq!(
        pending_ids.len() as u64,
        hours,
        "one request a guardian sees per hour"
    );
    assert_eq!(outcomes["merged"], 19 * hours);
    assert_eq!(outcomes["rate_limited"], hours * per_hour - 20 * hours);

    // A request of another device of the same guardian marks the end of the stream to read.
    let (status, sentinel) = w.host.post("/v1/approvals", &w.robot, variation(0)).await;
    assert_eq!(status, 202, "{sentinel}");
    let names = events_until(&mut stream, TEDDY, sentinel["id"].as_str().unwrap()).await;
    let count = |n: &str| names.iter().filter(|x| *x == n).count() as u64;
    assert_eq!(count("pending"), hours, "{names:?}");
    assert!((1..=hours).contains(&count("flagged")), "{names:?}");

    // The guardian's inbox shows the flag; the platform sees every attempt in the audit log.
    let (_, inbox) = w.host.get("/v1/inbox", &mom).await;
    assert_eq!(inbox["flags"][0]["actor"], TEDDY, "{inbox}");
    let kinds = audit_kinds(&w.host, TEDDY).await;
    assert_eq!(kinds["request_received"], hours * per_hour);
    assert_eq!(kinds["merged"], 19 * hours);
    assert_eq!(kinds["rate_limited"], hours * per_hour - 20 * hours);
    let (_, flags) = w.host.get("/v1/vendor/flags", &w.vendor).await;
    let flags = flags.as_array().unwrap().len() as u64;

    let mut table = String::new();
    writeln!(
        table,
        "One device sent {} tiny variations of a ¥600 payment (amount ±5%, recipient's case and \
         spaces) over {hours} hour(s) on {}, under the default limit of 20 requests for a guardian \
         an hour.\n\n| | count |\n| --- | --- |\n| requests sent | {} |\n| new requests the guardian \
         was notified of | {} |\n| merged into a pending request | {} |\n| refused as rate limited | {} |\n\
         | volume flags raised | {flags} |\n| `request_received` entries in the audit log | {} |\n\
         | lost (sent but not audited) | {} |",
        hours * per_hour,
        backend(&db),
        hours * per_hour,
        count("pending"),
        outcomes["merged"],
        outcomes["rate_limited"],
        kinds["request_received"],
        hours * per_hour - kinds["request_received"],
    )
    .unwrap();
    report::write(&format!("abuse-{}", backend(&db)), &table);
}

on_both_backends!(
    requests_stored_before_variation_keys_are_still_merged_into,
    stored_before_variation_keys
);
async fn stored_before_variation_keys(db: TestDb) {
    let w = world(&db).await;
    let pay = |amount: u64, to: &str| json!({"action": "payment", "params": {"amount": amount, "currency": "CNY", "recipient": to}});
    let (status, first) = w
        .host
        .post("/v1/approvals", &w.teddy, pay(60_000, "toy-shop"))
        .await;
    assert_eq!(status, 202, "{first}");
    // As a host from before variation keys (migration 0008) stored it: no key.
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    let cleared = sqlx::query("UPDATE approvals SET variation_key = NULL")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(cleared.rows_affected(), 1);
    // The same request again joins it ...
    let (status, joined) = w
        .host
        .post("/v1/approvals", &w.teddy, pay(60_000, "toy-shop"))
        .await;
    assert_eq!((status, &joined["id"]), (202, &first["id"]), "{joined}");
    assert!(joined.get("similar_requests").is_none(), "{joined}");
    // ... and a tiny variation of it is merged into it.
    let (status, merged) = w
        .host
        .post("/v1/approvals", &w.teddy, pay(61_000, " Toy-Shop"))
        .await;
    assert_eq!((status, &merged["id"]), (202, &first["id"]), "{merged}");
    assert_eq!(merged["similar_requests"], 1);
    // And a request for another shop is still a request of its own.
    let (status, other) = w
        .host
        .post("/v1/approvals", &w.teddy, pay(60_000, "candy-shop"))
        .await;
    assert_eq!(status, 202, "{other}");
    assert_ne!(other["id"], first["id"]);
}

on_both_backends!(
    the_same_params_for_another_action_are_a_request_of_their_own,
    same_params_other_action
);
async fn same_params_other_action(db: TestDb) {
    let w = world(&db).await;
    // Undeclared generic kinds go to a guardian here, so an agent's own `pay` with a ¥600
    // payment's params needs one as the typed payment does: each needs a guardian, and neither
    // is the other.
    let (status, body) = w
        .host
        .put(
            "/v1/vendor/policy",
            &w.vendor,
            json!({"generic_actions": {"undeclared": "escalate"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let params = json!({"amount": 60_000, "currency": "CNY", "recipient": "bank"});
    let ask = |action: &str| {
        w.host.post(
            "/v1/approvals",
            &w.teddy,
            json!({"action": action, "params": params}),
        )
    };
    let (status, payment) = ask("payment").await;
    assert_eq!(status, 202, "{payment}");
    let (status, credential) = ask("pay").await;
    assert_eq!(status, 202, "{credential}");
    assert_ne!(credential["id"], payment["id"]);
    assert_eq!(credential["action"], "pay");
    assert_eq!(credential["rule"], "builtin.undeclared_action");
    // Each is joined by its own retry.
    let (_, again) = ask("pay").await;
    assert_eq!(again["id"], credential["id"], "{again}");
    let (_, again) = ask("payment").await;
    assert_eq!(again["id"], payment["id"], "{again}");
}

on_both_backends!(different_requests_are_not_merged, different_requests);
async fn different_requests(db: TestDb) {
    let w = world(&db).await;
    let ask = |params: Value| {
        let host = &w.host;
        let teddy = &w.teddy;
        async move {
            let (status, body) = host
                .post(
                    "/v1/approvals",
                    teddy,
                    json!({"action": "payment", "params": params}),
                )
                .await;
            assert_eq!(status, 202, "{body}");
            body
        }
    };
    let first = ask(json!({"amount": 60_000, "currency": "CNY", "recipient": "toy-shop"})).await;
    // Another recipient, or 20% more, is another request for the guardian.
    for params in [
        json!({"amount": 60_000, "currency": "CNY", "recipient": "candy-shop"}),
        json!({"amount": 72_000, "currency": "CNY", "recipient": "toy-shop"}),
    ] {
        let other = ask(params).await;
        assert_ne!(other["id"], first["id"], "{other}");
        assert!(other.get("similar_requests").is_none(), "{other}");
    }
    // A variation is merged: the agent is answered with the pending request, which keeps its
    // params, and the guardian's approval grants those.
    let keyed = json!({
        "action": "payment",
        "params": {"amount": 61_000, "currency": "CNY", "recipient": "Toy-Shop"},
        "idempotency_key": "k2",
    });
    let (status, merged) = w.host.post("/v1/approvals", &w.teddy, keyed.clone()).await;
    assert_eq!(status, 202, "{merged}");
    assert_eq!(merged["id"], first["id"]);
    assert_eq!(merged["params"]["amount"], 60_000);
    assert_eq!(merged["similar_requests"], 1);
    // A retry with the merged request's key is that request again: not merged (or counted) twice.
    let (_, retried) = w.host.post("/v1/approvals", &w.teddy, keyed.clone()).await;
    assert_eq!(
        (&retried["id"], &retried["similar_requests"]),
        (&first["id"], &json!(1))
    );
    // So is a retry of an identical request that joined it.
    let identical = json!({
        "action": "payment",
        "params": {"amount": 60_000, "currency": "CNY", "recipient": "toy-shop"},
        "idempotency_key": "k3",
    });
    let (_, joined) = w
        .host
        .post("/v1/approvals", &w.teddy, identical.clone())
        .await;
    assert_eq!(joined["id"], first["id"], "{joined}");
    let id = first["id"].as_str().unwrap();
    let mom = w.host.guardian(MOM);
    let (status, approved) = w
        .host
        .decide(id, &mom, json!({"decision": "approve"}))
        .await;
    assert_eq!(status, 200, "{approved}");
    // ... and after the decision, the decided request, with its token.
    let (status, retried) = w.host.post("/v1/approvals", &w.teddy, keyed).await;
    assert_eq!((status, &retried["id"]), (200, &first["id"]), "{retried}");
    assert_eq!(retried["status"], "approved");
    assert!(retried["token"]["token"].is_string(), "{retried}");
    let (status, retried) = w.host.post("/v1/approvals", &w.teddy, identical).await;
    assert_eq!((status, &retried["id"]), (200, &first["id"]), "{retried}");
    // Nothing is pending any more: the next variation is a request of its own.
    let again = ask(json!({"amount": 61_000, "currency": "CNY", "recipient": "toy-shop"})).await;
    assert_ne!(again["id"], first["id"]);
    // The merged attempt is in the log, pointing at the request it joined.
    let (status, entries) = w
        .host
        .get(
            &format!("/v1/audit/entries?actor={TEDDY}&type=merged"),
            ADMIN,
        )
        .await;
    assert_eq!(status, 200, "{entries}");
    let entries = entries["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        entries[0]["entry"]["event"]["into"], first["id"],
        "{entries:?}"
    );
}

fn backend(db: &TestDb) -> &'static str {
    if db.url.starts_with("sqlite") {
        "sqlite"
    } else {
        "postgres"
    }
}

/// How many audit entries of each type name `actor`.
async fn audit_kinds(host: &TestHost, actor: &str) -> BTreeMap<String, u64> {
    let mut kinds = BTreeMap::new();
    let mut cursor: Option<u64> = None;
    loop {
        let after = cursor.map_or(String::new(), |c| format!("&after={c}"));
        let (status, page) = host
            .get(
                &format!("/v1/audit/entries?actor={actor}&limit=1000{after}"),
                ADMIN,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        for entry in page["entries"].as_array().unwrap() {
            *kinds
                .entry(entry["entry"]["event"]["type"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        match page["next_after"].as_u64() {
            Some(next) => cursor = Some(next),
            None => return kinds,
        }
    }
}
