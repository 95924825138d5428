//! Webhooks end to end (issue 12): receivers of our own, written here on plain TCP, check every
//! delivery's signature with their own HMAC-SHA256; deliveries wait out a receiver that is down
//! or answers 503 and then arrive once each and in order; a hanging receiver delays no other
//! target; a restart keeps what is pending; bad targets are refused naming the field; rollout
//! events reach rollout targets; the log's retention; and the dashboard pages, for operators
//! and viewers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_server::webhooks::{self, Event};
use drover_tests::{TestApp, problem, spawn_app, wait_until};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::dashboard::{operator_with_password, page_csrf, sign_in};

/// How long deliveries may take to arrive once their receiver answers.
const ARRIVE: Duration = Duration::from_secs(30);

/// HMAC-SHA256 (RFC 2104) computed here from SHA-256 alone, independent of the server's code.
fn hmac_sha256(key: &[u8], message: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    hex::encode(outer.finalize())
}

#[test]
fn the_tests_hmac_matches_rfc_4231() {
    assert_eq!(
        hmac_sha256(b"Jefe", b"what do ya want for nothing?"),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

/// How a receiver answers.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// 200 to everything.
    Accept,
    /// 503 to the first `n` requests, then 200.
    RefuseFirst(usize),
    /// Reads the request and never answers.
    Hang,
}

/// One request as a receiver saw it.
#[derive(Debug, Clone)]
struct Request {
    /// `X-Drover-Delivery`.
    delivery: String,
    /// `X-Drover-Event`.
    event: String,
    /// `User-Agent`.
    user_agent: String,
    /// `Content-Type`.
    content_type: String,
    /// The parsed body.
    body: Value,
    /// Whether `X-Drover-Signature` is `sha256=` and the HMAC of the body with the secret.
    signed: bool,
    /// What the receiver answered.
    status: u16,
}

/// A webhook receiver on 127.0.0.1 that records every request.
struct Receiver {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A free port on 127.0.0.1 with nothing listening on it (yet).
async fn reserve_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

impl Receiver {
    /// Listens on `addr` (port 0 for any) and checks signatures with `secret`.
    async fn start(addr: SocketAddr, secret: &str, behaviour: Behaviour) -> Receiver {
        let listener = TcpListener::bind(addr).await.expect("the receiver binds");
        let addr = listener.local_addr().expect("addr");
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let log = requests.clone();
        let secret = secret.to_string();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(connection(socket, secret.clone(), behaviour, log.clone()));
            }
        });
        Receiver {
            addr,
            requests,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn all(&self) -> Vec<Request> {
        self.requests.lock().expect("log").clone()
    }

    /// The requests it answered with 200, in arrival order.
    fn accepted(&self) -> Vec<Request> {
        self.all().into_iter().filter(|r| r.status == 200).collect()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Serves one keep-alive connection: requests with a Content-Length body.
async fn connection(
    mut socket: TcpStream,
    secret: String,
    behaviour: Behaviour,
    log: Arc<Mutex<Vec<Request>>>,
) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            match socket.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let header = |name: &str| {
            head.lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        let length: usize = header("content-length").parse().unwrap_or(0);
        while buf.len() < head_end + length {
            match socket.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let body = buf[head_end..head_end + length].to_vec();
        buf.drain(..head_end + length);
        if let Behaviour::Hang = behaviour {
            std::future::pending::<()>().await;
        }
        let expected = format!("sha256={}", hmac_sha256(secret.as_bytes(), &body));
        let status = {
            let mut requests = log.lock().expect("log");
            let status = match behaviour {
                Behaviour::RefuseFirst(n) if requests.len() < n => 503,
                _ => 200,
            };
            requests.push(Request {
                delivery: header("x-drover-delivery"),
                event: header("x-drover-event"),
                user_agent: header("user-agent"),
                content_type: header("content-type"),
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                signed: header("x-drover-signature") == expected,
                status,
            });
            status
        };
        let reason = if status == 200 {
            "OK"
        } else {
            "Service Unavailable"
        };
        let answer = format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\n\r\n");
        if socket.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// `POST /webhooks`; answers the created target (with its secret).
async fn create(app: &TestApp, token: &str, body: Value) -> Value {
    let res = app.post_json(token, "/api/v1/webhooks", &body).await;
    let status = res.status();
    let body: Value = res.json().await.expect("webhook json");
    assert_eq!(status, 201, "{body}");
    body
}

/// A target's delivery log, newest first.
async fn deliveries(app: &TestApp, token: &str, id: &str) -> Vec<Value> {
    let res = app
        .get(
            token,
            &format!("/api/v1/webhooks/{id}/deliveries?per_page=500"),
        )
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("deliveries json");
    body["items"].as_array().expect("items").clone()
}

async fn alert(app: &TestApp, n: u64) -> usize {
    webhooks::enqueue(&app.store, Event::Alert, json!({"n": n}))
        .await
        .expect("enqueue")
}

/// Waits until `receiver` has accepted `n` requests.
async fn until_accepted(receiver: &Receiver, n: usize) {
    let arrived = wait_until(ARRIVE, || async { receiver.accepted().len() >= n }).await;
    assert!(arrived, "{n} deliveries arrive: {:#?}", receiver.all());
}

/// Checks that `received` are `n` signed alert deliveries `{n: 0..}`, in order, each once.
fn assert_signed_in_order_once(received: &[Request], n: u64) {
    let numbers: Vec<u64> = received
        .iter()
        .map(|r| r.body["data"]["n"].as_u64().expect("data.n"))
        .collect();
    assert_eq!(numbers, (0..n).collect::<Vec<_>>(), "in order, each once");
    let mut ids: Vec<&str> = received.iter().map(|r| r.delivery.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len() as u64, n, "each delivery id once");
    for r in received {
        assert!(r.signed, "signature checks out: {r:?}");
        assert_eq!(r.event, "alert");
        assert_eq!(r.body["event"], "alert");
        assert_eq!(
            r.body["id"],
            r.delivery.as_str(),
            "the body names its delivery"
        );
        assert!(
            r.body["created_at"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
        assert_eq!(r.content_type, "application/json");
        assert!(r.user_agent.starts_with("drover/"), "{}", r.user_agent);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_and_arrive_in_order_once_each_after_the_receiver_comes_up() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    // A: nothing listens yet. B: answers 503 twice, then 200.
    let down = reserve_port().await;
    let a = create(
        &app,
        &admin,
        json!({"url": format!("http://{down}/hook"), "events": ["alert"]}),
    )
    .await;
    let a_secret = a["secret"].as_str().expect("a generated secret").to_owned();
    assert_eq!(a_secret.len(), 64, "32 random bytes as hex");
    assert_eq!(a["events"], json!(["alert"]));
    let b_secret = "b-secret-0123456789";
    let b_rx = Receiver::start(
        "127.0.0.1:0".parse().expect("addr"),
        b_secret,
        Behaviour::RefuseFirst(2),
    )
    .await;
    let b = create(
        &app,
        &admin,
        json!({"url": b_rx.url(), "events": ["rollout", "alert"], "secret": b_secret}),
    )
    .await;
    assert_eq!(b["secret"], b_secret);

    // The secret is shown once: never by GET.
    let listed = app
        .get(&admin, "/api/v1/webhooks")
        .await
        .text()
        .await
        .expect("text");
    assert!(
        !listed.contains(&a_secret) && !listed.contains(b_secret),
        "{listed}"
    );
    let one = app
        .get(
            &admin,
            &format!("/api/v1/webhooks/{}", a["id"].as_str().expect("id")),
        )
        .await
        .text()
        .await
        .expect("text");
    assert!(!one.contains(&a_secret) && !one.contains("secret"), "{one}");

    for n in 0..5 {
        assert_eq!(alert(&app, n).await, 2, "both targets take alerts");
    }
    assert_eq!(
        webhooks::enqueue(&app.store, Event::Rollout, json!({}))
            .await
            .expect("enqueue"),
        1,
        "only B takes rollout events"
    );

    // A fails while nothing listens, then the receiver comes up on its port.
    let a_id = a["id"].as_str().expect("id").to_owned();
    let tried = wait_until(ARRIVE, || async {
        deliveries(&app, &admin, &a_id)
            .await
            .last()
            .is_some_and(|d| d["attempts"].as_i64().unwrap_or(0) >= 1)
    })
    .await;
    assert!(tried, "the first delivery to A was tried while A was down");
    let log = deliveries(&app, &admin, &a_id).await;
    let first = log.last().expect("first delivery");
    assert_eq!(first["state"], "pending");
    assert!(
        first["last_status"].is_null() && first["last_error"].is_string(),
        "{first}"
    );
    assert!(
        log.iter().rev().skip(1).all(|d| d["attempts"] == 0),
        "later deliveries wait for the first: {log:#?}"
    );
    let a_rx = Receiver::start(down, &a_secret, Behaviour::Accept).await;

    until_accepted(&a_rx, 5).await;
    until_accepted(&b_rx, 6).await;
    assert_signed_in_order_once(&a_rx.accepted(), 5);
    let b_alerts: Vec<Request> = b_rx
        .accepted()
        .into_iter()
        .filter(|r| r.event == "alert")
        .collect();
    assert_signed_in_order_once(&b_alerts, 5);
    // B's refusals were retries of its first delivery: nothing overtook it.
    let b_all = b_rx.all();
    assert_eq!(
        b_all.iter().map(|r| r.status).collect::<Vec<_>>()[..3],
        [503, 503, 200]
    );
    assert!(
        b_all[..3].iter().all(|r| r.delivery == b_all[0].delivery),
        "retried in place"
    );
    assert_eq!(b_all.last().map(|r| r.event.as_str()), Some("rollout"));

    // The log says the same, newest first, and nothing is sent twice afterwards.
    let done = wait_until(ARRIVE, || async {
        deliveries(&app, &admin, &a_id)
            .await
            .iter()
            .all(|d| d["state"] == "delivered")
    })
    .await;
    assert!(done, "A's log shows every delivery delivered");
    let log = deliveries(&app, &admin, &a_id).await;
    assert_eq!(log.len(), 5);
    let oldest = log.last().expect("oldest");
    assert!(oldest["attempts"].as_i64().unwrap_or(0) >= 2, "{oldest}");
    assert_eq!(oldest["last_status"], 200);
    assert!(oldest["delivered_at"].is_string());
    let ids: Vec<&str> = log.iter().filter_map(|d| d["id"].as_str()).collect();
    let sent: Vec<String> = a_rx
        .accepted()
        .into_iter()
        .rev()
        .map(|r| r.delivery)
        .collect();
    assert_eq!(ids, sent, "the log is newest first, with the ids sent");
    let b_log = deliveries(&app, &admin, b["id"].as_str().expect("id")).await;
    let b_first = b_log.last().expect("B's first");
    assert_eq!(b_first["attempts"], 3, "{b_first}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(a_rx.all().len(), 5, "nothing is delivered twice");
    assert_eq!(b_rx.accepted().len(), 6, "nothing is delivered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_does_not_delay_another_target() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let secret = "shared-secret-0123456789";
    let hanging = Receiver::start(any, secret, Behaviour::Hang).await;
    let healthy = Receiver::start(any, secret, Behaviour::Accept).await;
    let h = create(
        &app,
        &admin,
        json!({"url": hanging.url(), "events": ["alert"], "secret": secret}),
    )
    .await;
    create(
        &app,
        &admin,
        json!({"url": healthy.url(), "events": ["alert"], "secret": secret}),
    )
    .await;
    let started = Instant::now();
    for n in 0..3 {
        alert(&app, n).await;
    }
    until_accepted(&healthy, 3).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the healthy target is served well within the hanging one's 10 s timeout: {:?}",
        started.elapsed()
    );
    assert_signed_in_order_once(&healthy.accepted(), 3);
    assert!(
        hanging.all().is_empty(),
        "the hanging receiver never answered"
    );
    let log = deliveries(&app, &admin, h["id"].as_str().expect("id")).await;
    assert!(
        log.iter().all(|d| d["state"] == "pending"),
        "the hanging target's deliveries still wait: {log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_deliveries_survive_a_restart_and_arrive_once() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let down = reserve_port().await;
    let w = create(
        &app,
        &admin,
        json!({"url": format!("http://{down}/hook"), "events": ["alert"]}),
    )
    .await;
    let secret = w["secret"].as_str().expect("secret").to_owned();
    let id = w["id"].as_str().expect("id").to_owned();
    for n in 0..3 {
        assert_eq!(alert(&app, n).await, 1);
    }
    let tried = wait_until(ARRIVE, || async {
        deliveries(&app, &admin, &id)
            .await
            .last()
            .is_some_and(|d| d["attempts"].as_i64().unwrap_or(0) >= 1)
    })
    .await;
    assert!(tried, "tried before the restart");

    let app = app.restart().await;
    let admin = app.admin_token().await;
    let log = deliveries(&app, &admin, &id).await;
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|d| d["state"] == "pending"), "{log:#?}");
    let rx = Receiver::start(down, &secret, Behaviour::Accept).await;
    until_accepted(&rx, 3).await;
    assert_signed_in_order_once(&rx.accepted(), 3);
    let done = wait_until(ARRIVE, || async {
        deliveries(&app, &admin, &id)
            .await
            .iter()
            .all(|d| d["state"] == "delivered")
    })
    .await;
    assert!(done, "every delivery is recorded as delivered");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.all().len(), 3, "each delivery arrives once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_targets_are_refused_naming_the_field_and_only_operators_manage_them() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let long = format!("https://example.com/{}", "a".repeat(2048));
    for (body, field) in [
        (
            json!({"url": "ftp://example.com/in", "events": ["alert"]}),
            "url",
        ),
        (
            json!({"url": "javascript:alert(1)", "events": ["alert"]}),
            "url",
        ),
        (json!({"url": "example.com/in", "events": ["alert"]}), "url"),
        (json!({"url": "", "events": ["alert"]}), "url"),
        (json!({"url": long, "events": ["alert"]}), "url"),
        (json!({"events": ["alert"]}), "url"),
        (
            json!({"url": "https://example.com/in", "events": ["alert", "deploy"]}),
            "events",
        ),
        (
            json!({"url": "https://example.com/in", "events": []}),
            "events",
        ),
        (
            json!({"url": "https://example.com/in", "events": "alert"}),
            "events",
        ),
        (
            json!({"url": "https://example.com/in", "events": ["alert"], "secret": "too-short"}),
            "secret",
        ),
        (
            json!({"url": "https://example.com/in", "events": ["alert"], "colour": "red"}),
            "colour",
        ),
    ] {
        let res = app.post_json(&admin, "/api/v1/webhooks", &body).await;
        let p = problem(res, 400).await;
        assert_eq!(p["field"], field, "{body}: {p}");
        assert!(p["detail"].as_str().unwrap_or("").starts_with(field), "{p}");
    }
    let listed: Value = app
        .get(&admin, "/api/v1/webhooks")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(listed["total"], 0, "nothing was stored");

    // Viewers read; operators manage.
    let viewer = app.user_token(&admin, "vic", "viewer").await;
    let operator = app.user_token(&admin, "olga", "operator").await;
    let good = json!({"url": "https://hooks.example.com/drover", "events": ["rollout"]});
    problem(app.post_json(&viewer, "/api/v1/webhooks", &good).await, 403).await;
    let w = create(&app, &operator, good).await;
    let id = w["id"].as_str().expect("id").to_owned();
    let listed: Value = app
        .get(&viewer, "/api/v1/webhooks")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(listed["total"], 1);
    assert_eq!(
        listed["items"][0]["url"],
        "https://hooks.example.com/drover"
    );
    assert_eq!(listed["items"][0]["created_by"], "user:olga");
    assert!(listed["items"][0].get("secret").is_none());
    problem(
        app.delete(&viewer, &format!("/api/v1/webhooks/{id}")).await,
        403,
    )
    .await;
    problem(app.get(&viewer, "/api/v1/webhooks/nope").await, 404).await;
    problem(
        app.get(&viewer, "/api/v1/webhooks/nope/deliveries").await,
        404,
    )
    .await;
    problem(
        app.get(
            &viewer,
            &format!("/api/v1/webhooks/{id}/deliveries?per_page=0"),
        )
        .await,
        400,
    )
    .await;

    // Deleting stops what is pending and keeps the log.
    let down = reserve_port().await;
    let d = create(
        &app,
        &operator,
        json!({"url": format!("http://{down}/hook"), "events": ["alert"]}),
    )
    .await;
    let d_id = d["id"].as_str().expect("id").to_owned();
    alert(&app, 0).await;
    alert(&app, 1).await;
    let res = app
        .delete(&operator, &format!("/api/v1/webhooks/{d_id}"))
        .await;
    assert_eq!(res.status(), 204);
    let log = deliveries(&app, &viewer, &d_id).await;
    assert_eq!(log.len(), 2, "the log is kept");
    assert!(log.iter().all(|d| d["state"] == "cancelled"), "{log:#?}");
    let gone: Value = app
        .get(&viewer, &format!("/api/v1/webhooks/{d_id}"))
        .await
        .json()
        .await
        .expect("json");
    assert!(gone["deleted_at"].is_string(), "{gone}");
    let listed: Value = app
        .get(&viewer, "/api/v1/webhooks")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(listed["total"], 1, "a deleted target is not listed");
    problem(
        app.delete(&operator, &format!("/api/v1/webhooks/{d_id}"))
            .await,
        404,
    )
    .await;
    assert_eq!(
        alert(&app, 2).await,
        0,
        "a deleted target takes no more events"
    );

    let audit = app.audit(&admin, "action=webhook").await;
    let has = |action: &str, outcome: &str| {
        audit
            .iter()
            .any(|e| e["action"] == action && e["outcome"] == outcome)
    };
    assert!(has("webhook.create", "success"), "{audit:#?}");
    assert!(has("webhook.create", "failure"), "refusals are audited");
    assert!(has("webhook.delete", "success"));
    assert!(has("webhook.delete", "failure"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_events_reach_rollout_targets_only() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let secret = "rollout-secret-0123456789";
    let rollouts_rx = Receiver::start(any, secret, Behaviour::Accept).await;
    create(
        &app,
        &admin,
        json!({"url": rollouts_rx.url(), "events": ["rollout"], "secret": secret}),
    )
    .await;
    let alerts_only = create(
        &app,
        &admin,
        json!({"url": "http://127.0.0.1:9/never", "events": ["alert"]}),
    )
    .await;
    app.enrolled_device(&admin).await;
    let bundle =
        crate::agent_updates::model_bundle(&app, &admin, "1.0.0", b"weights".to_vec()).await;
    let res = app
        .post_json(
            &admin,
            "/api/v1/rollouts",
            &json!({"name": "later", "bundle_id": bundle, "target": {"device_type": "rpi4"},
                    "phases": [{"percent": 100}], "start_at": "2099-01-01T00:00:00Z"}),
        )
        .await;
    let status = res.status();
    let r: Value = res.json().await.expect("rollout json");
    assert_eq!(status, 201, "{r}");
    let rollout_id = r["id"].as_str().expect("id").to_owned();
    let res = app
        .post_json(
            &admin,
            &format!("/api/v1/rollouts/{rollout_id}/abort"),
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);

    until_accepted(&rollouts_rx, 2).await;
    let got = rollouts_rx.accepted();
    let kinds: Vec<&str> = got
        .iter()
        .filter_map(|r| r.body["data"]["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["created", "aborted"], "{got:#?}");
    for r in &got {
        assert!(r.signed, "{r:?}");
        assert_eq!(r.event, "rollout");
        assert_eq!(r.body["event"], "rollout");
        let data = &r.body["data"];
        assert_eq!(data["rollout_id"], rollout_id.as_str());
        assert_eq!(data["name"], "later");
        assert!(
            data["detail"].is_string() && data["at"].is_string(),
            "{data}"
        );
    }
    assert_eq!(got[1].body["data"]["state"], "aborted");
    assert!(
        deliveries(&app, &admin, alerts_only["id"].as_str().expect("id"))
            .await
            .is_empty(),
        "an alert target gets no rollout events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_add_and_delete_webhooks_in_the_dashboard_and_viewers_only_look() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let password = operator_with_password(&app, "olga", "operator").await;
    let (client, _) = sign_in(&app, "olga", &password).await;
    let (html, csrf) = page_csrf(&app, &client, "/webhooks").await;
    assert!(
        html.contains("No webhooks yet"),
        "an empty state that says what to do"
    );
    assert!(
        html.contains("action=\"/webhooks\""),
        "operators get the form"
    );

    // A refused form comes back with the server's message and what was typed, escaped.
    let res = client
        .post(app.url("/webhooks"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("url", "ftp://example.com/<b>files</b>"),
            ("events", "alert"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 400);
    let html = res.text().await.expect("html");
    assert!(
        html.contains("only http:// and https:// are accepted"),
        "{html}"
    );
    assert!(
        !html.contains("<b>files</b>") && html.contains("&#60;b&#62;files"),
        "escaped: {html}"
    );
    let res = client
        .post(app.url("/webhooks"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("url", "https://hooks.example.com/in"),
            ("secret", "short"),
            ("events", "alert"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 400);
    assert!(
        res.text()
            .await
            .expect("html")
            .contains("secret: is 5 characters")
    );

    // Created: the secret is shown once, with a Copy button.
    let res = client
        .post(app.url("/webhooks"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("url", "https://hooks.example.com/in"),
            ("events", "alert"),
            ("events", "rollout"),
            ("secret", ""),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 200);
    let html = res.text().await.expect("html");
    let marker = "<code id=\"new-secret\">";
    let start = html.find(marker).expect("the new secret is shown") + marker.len();
    let secret = &html[start..start + 64];
    assert!(secret.chars().all(|c| c.is_ascii_hexdigit()), "{secret}");
    assert!(html.contains("data-copy=\"#new-secret\""));
    let listed: Value = app
        .get(&admin, "/api/v1/webhooks")
        .await
        .json()
        .await
        .expect("json");
    let id = listed["items"][0]["id"].as_str().expect("id").to_owned();
    assert_eq!(listed["items"][0]["events"], json!(["alert", "rollout"]));
    let (html, _) = page_csrf(&app, &client, "/webhooks").await;
    assert!(!html.contains(secret), "the secret is not shown again");
    assert!(html.contains("https://hooks.example.com/in"));
    assert!(html.contains(&format!("/webhooks/{id}/delete")));

    // The log page: empty, then a pending delivery.
    let (html, _) = page_csrf(&app, &client, &format!("/webhooks/{id}")).await;
    assert!(html.contains("No deliveries yet"), "{html}");
    alert(&app, 0).await;
    let (html, _) = page_csrf(&app, &client, &format!("/webhooks/{id}")).await;
    assert!(html.contains("<td>alert</td>"), "{html}");

    // Viewers look but change nothing.
    let vpass = operator_with_password(&app, "vera", "viewer").await;
    let (viewer, _) = sign_in(&app, "vera", &vpass).await;
    let (html, vcsrf) = page_csrf(&app, &viewer, "/webhooks").await;
    assert!(html.contains("https://hooks.example.com/in"));
    assert!(
        !html.contains("action=\"/webhooks\"") && !html.contains("/delete\""),
        "no forms for viewers"
    );
    let res = viewer
        .post(app.url("/webhooks"))
        .form(&[
            ("csrf_token", vcsrf.as_str()),
            ("url", "https://hooks.example.com/other"),
            ("events", "alert"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 403);
    let (html, _) = page_csrf(&app, &viewer, &format!("/webhooks/{id}")).await;
    assert!(!html.contains("/delete\""), "no delete for viewers");

    let res = client
        .post(app.url(&format!("/webhooks/{id}/delete")))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/webhooks?done=deleted");
    let (html, _) = page_csrf(&app, &client, "/webhooks?done=deleted").await;
    assert!(html.contains("Webhook deleted"));
    assert!(html.contains("No webhooks yet"));
    let (html, _) = page_csrf(&app, &client, &format!("/webhooks/{id}")).await;
    assert!(html.contains("This webhook was deleted"));
    assert!(html.contains("state-cancelled"), "{html}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alert_firing_and_resolving_reaches_alert_targets_signed() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let secret = "alerts-secret-0123456789";
    let receiver = Receiver::start(
        "127.0.0.1:0".parse().expect("addr"),
        secret,
        Behaviour::Accept,
    )
    .await;
    create(
        &app,
        &admin,
        json!({"url": receiver.url(), "events": ["alert"], "secret": secret}),
    )
    .await;
    let res = app
        .post_json(
            &admin,
            "/api/v1/alert-rules",
            &json!({"name": "busy", "metric": "cpu_pct", "condition": {"op": ">", "value": 90},
                    "for_seconds": 0, "severity": "critical"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let d = app.enrolled_device(&admin).await;
    let (mqtt, mut eventloop) = drover_tests::mqtt_connect(app.mqtt_options(&d.id, &d))
        .await
        .expect("connects");
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    for (seq, value) in [(1, 97.5), (2, 12.0)] {
        mqtt.publish(
            d.topic("telemetry"),
            rumqttc::QoS::AtLeastOnce,
            false,
            json!({"epoch": "a1", "seq": seq, "ts": now + seq, "metrics": {"cpu_pct": value}})
                .to_string(),
        )
        .await
        .expect("publish");
        // One at a time: the second reading must find the alert fired.
        let n = usize::try_from(seq).expect("seq");
        until_accepted(&receiver, n).await;
    }
    let got = receiver.accepted();
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(
        got.iter().all(|r| r.signed && r.event == "alert"),
        "{got:#?}"
    );
    assert_eq!(got[0].body["data"]["state"], "firing");
    assert_eq!(got[0].body["data"]["device_id"], d.id.as_str());
    assert_eq!(got[0].body["data"]["value"], 97.5);
    assert_eq!(got[0].body["data"]["severity"], "critical");
    assert_eq!(got[1].body["data"]["state"], "resolved");
    assert_ne!(got[0].delivery, got[1].delivery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_log_keeps_finished_deliveries_for_its_retention_and_pending_ones_always() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let secret = "retention-secret-0123";
    let rx = Receiver::start(
        "127.0.0.1:0".parse().expect("addr"),
        secret,
        Behaviour::Accept,
    )
    .await;
    let up = create(
        &app,
        &admin,
        json!({"url": rx.url(), "events": ["alert"], "secret": secret}),
    )
    .await;
    let up_id = up["id"].as_str().expect("id").to_owned();
    let gone = create(
        &app,
        &admin,
        json!({"url": rx.url(), "events": ["alert"], "secret": secret}),
    )
    .await;
    let gone_id = gone["id"].as_str().expect("id").to_owned();
    for n in 0..2 {
        assert_eq!(alert(&app, n).await, 2);
    }
    until_accepted(&rx, 4).await;
    let delivered = wait_until(ARRIVE, || async {
        let mut all = deliveries(&app, &admin, &up_id).await;
        all.extend(deliveries(&app, &admin, &gone_id).await);
        all.len() == 4 && all.iter().all(|d| d["state"] == "delivered")
    })
    .await;
    assert!(delivered, "four deliveries recorded as delivered");
    let res = app
        .delete(&admin, &format!("/api/v1/webhooks/{gone_id}"))
        .await;
    assert_eq!(res.status(), 204);
    // Created after the other two, toward a port nothing listens on: it stays pending.
    let down = reserve_port().await;
    let waiting = create(
        &app,
        &admin,
        json!({"url": format!("http://{down}/hook"), "events": ["alert"]}),
    )
    .await;
    let waiting_id = waiting["id"].as_str().expect("id").to_owned();
    assert_eq!(alert(&app, 2).await, 2);
    until_accepted(&rx, 5).await;
    let recorded = wait_until(ARRIVE, || async {
        let log = deliveries(&app, &admin, &up_id).await;
        log.len() == 3 && log.iter().all(|d| d["state"] == "delivered")
    })
    .await;
    assert!(recorded, "the third delivery recorded as delivered");

    // Nothing has ended before a day ago: nothing goes.
    let day_ago = drover_server::store::now_ms() - 86_400_000;
    let pruned = webhooks::prune(&app.store, day_ago).await.expect("prune");
    assert_eq!(pruned, (0, 0));
    assert_eq!(deliveries(&app, &admin, &gone_id).await.len(), 2);

    // Everything finished has ended before now + 1 ms: the finished deliveries go, and with
    // them the deleted target; the pending delivery stays, whatever its age.
    let later = drover_server::store::now_ms() + 1;
    let pruned = webhooks::prune(&app.store, later).await.expect("prune");
    assert_eq!(
        pruned,
        (5, 1),
        "five finished deliveries and the deleted target"
    );
    assert!(deliveries(&app, &admin, &up_id).await.is_empty());
    let pending = deliveries(&app, &admin, &waiting_id).await;
    assert_eq!(pending.len(), 1, "{pending:#?}");
    assert_eq!(pending[0]["state"], "pending");
    problem(
        app.get(&admin, &format!("/api/v1/webhooks/{gone_id}/deliveries"))
            .await,
        404,
    )
    .await;
    let listed: Value = app
        .get(&admin, "/api/v1/webhooks")
        .await
        .json()
        .await
        .expect("list");
    assert_eq!(listed["total"], 2, "the live targets stay: {listed}");
}
