//! The device list, in the API and the dashboard: the installed-version
//! filter follows the devices' health reports, every documented order holds
//! (ties broken by id), totals and pages agree under filters, bad values are
//! 400 problems naming their field, and what devices and operators wrote
//! reaches the page escaped.

use std::time::Duration;

use drover_tests::{EnrolledDevice, TestApp, spawn_app, wait_until};
use rumqttc::QoS;
use serde_json::{Value, json};

use crate::dashboard::{operator_with_password, sign_in};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// A device's MQTT session, kept open while the test publishes through it.
struct Session {
    client: rumqttc::AsyncClient,
    device: EnrolledDevice,
    _loop: tokio::task::JoinHandle<()>,
}

impl Session {
    async fn open(app: &TestApp, device: &EnrolledDevice) -> Session {
        let (client, mut eventloop) =
            drover_tests::mqtt_connect(app.mqtt_options(&device.id, device))
                .await
                .expect("connects");
        let task = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        Session {
            client,
            device: device.clone(),
            _loop: task,
        }
    }

    /// Publishes a health report naming these (name, kind, version) bundles.
    async fn report(&self, installed: &[(&str, &str, &str)]) {
        let installed: Vec<Value> = installed
            .iter()
            .map(|(name, kind, version)| json!({"name": name, "kind": kind, "version": version}))
            .collect();
        let health = json!({"ts": now_ms(), "uptime_s": 5, "cpu_pct": 1.0, "mem_used": 1,
            "mem_total": 2, "disk_free": 3, "installed": installed, "spool_depth": 0,
            "spool_dropped": 0, "update_state": null});
        self.client
            .publish(
                self.device.topic("health"),
                QoS::AtLeastOnce,
                false,
                health.to_string(),
            )
            .await
            .expect("publish health");
    }

    /// Publishes the retained presence message, which stamps last contact.
    async fn online(&self) {
        self.client
            .publish(
                self.device.topic("state"),
                QoS::AtLeastOnce,
                true,
                json!({"online": true, "ts": now_ms()}).to_string(),
            )
            .await
            .expect("publish state");
    }
}

/// Enrolls a device of a type through a token of its own.
async fn enroll(app: &TestApp, admin: &str, device_type: &str) -> EnrolledDevice {
    app.enrolled_device_of_type(admin, device_type).await
}

async fn patch(app: &TestApp, admin: &str, id: &str, body: Value) {
    let res = app
        .client
        .patch(app.url(&format!("/api/v1/devices/{id}")))
        .bearer_auth(admin)
        .json(&body)
        .send()
        .await
        .expect("patch");
    assert_eq!(res.status(), 200, "patch {id}");
}

/// `GET /api/v1/devices?{query}`, which must answer 200.
async fn list(app: &TestApp, admin: &str, query: &str) -> Value {
    let res = app.get(admin, &format!("/api/v1/devices?{query}")).await;
    assert_eq!(res.status(), 200, "{query}");
    res.json().await.expect("json")
}

fn ids(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_string())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

async fn page(client: &reqwest::Client, app: &TestApp, path: &str) -> (u16, String) {
    let res = client.get(app.url(path)).send().await.expect("page");
    let status = res.status().as_u16();
    (status, res.text().await.expect("html"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_filter_follows_what_devices_report_installed() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let a = app.enrolled_device(&admin).await;
    let b = app.enrolled_device(&admin).await;
    let silent = app.enrolled_device(&admin).await;
    let (sa, sb) = (Session::open(&app, &a).await, Session::open(&app, &b).await);
    sa.report(&[
        ("detector", "model", "1.2.0"),
        ("<b>fw", "firmware", "2.0.0"),
    ])
    .await;
    sb.report(&[("detector", "model", "1.3.0")]).await;
    let reported = wait_until(Duration::from_secs(15), || async {
        list(&app, &admin, "version=detector").await["total"] == 2
    })
    .await;
    assert!(reported, "both reports were stored");

    let on_12 = list(&app, &admin, "version=detector:1.2.0").await;
    assert_eq!(on_12["total"], 1);
    assert_eq!(ids(&on_12), vec![a.id.clone()]);
    assert_eq!(
        ids(&list(&app, &admin, "version=detector:1.3.0").await),
        vec![b.id.clone()]
    );
    for any in ["version=detector", "version=detector%3A"] {
        let body = list(&app, &admin, any).await;
        assert_eq!(
            sorted(ids(&body)),
            sorted(vec![a.id.clone(), b.id.clone()]),
            "{any}"
        );
    }
    assert_eq!(
        list(&app, &admin, "version=detector:9.9.9").await["total"],
        0
    );
    assert_eq!(list(&app, &admin, "version=nothing").await["total"], 0);
    let all = list(&app, &admin, "").await;
    assert_eq!(
        all["total"], 3,
        "devices that never reported are listed too"
    );
    assert!(ids(&all).contains(&silent.id));

    let device = app.device(&admin, &a.id).await;
    let installed = device["installed"].as_array().expect("installed");
    assert_eq!(installed.len(), 2, "{device}");
    let detector = installed
        .iter()
        .find(|i| i["name"] == "detector")
        .expect("detector")
        .clone();
    assert_eq!(detector["kind"], "model");
    assert_eq!(detector["version"], "1.2.0");

    let password = operator_with_password(&app, "vera", "viewer").await;
    let (client, _) = sign_in(&app, "vera", &password).await;
    let (status, html) = page(&client, &app, "/devices?version=detector%3A1.2.0").await;
    assert_eq!(status, 200);
    assert!(html.contains(&a.id) && !html.contains(&b.id) && !html.contains(&silent.id));
    assert!(html.contains("detector 1.2.0"), "the installed column");
    assert!(
        html.contains("&#60;b&#62;fw 2.0.0") && !html.contains("<b>fw"),
        "bundle names are escaped"
    );
    assert!(
        html.contains("value=\"detector:1.2.0\""),
        "the filter keeps its value"
    );

    // The same set again changes nothing; a new version moves the device.
    let healthy_at = |body: Value| body["received_at"].as_str().unwrap_or("").to_string();
    let before = healthy_at(
        app.get(&admin, &format!("/api/v1/devices/{}/health", a.id))
            .await
            .json()
            .await
            .expect("json"),
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    sa.report(&[
        ("<b>fw", "firmware", "2.0.0"),
        ("detector", "model", "1.2.0"),
    ])
    .await;
    let again = wait_until(Duration::from_secs(15), || async {
        let body: Value = app
            .get(&admin, &format!("/api/v1/devices/{}/health", a.id))
            .await
            .json()
            .await
            .expect("json");
        healthy_at(body) != before
    })
    .await;
    assert!(again, "the repeated report was stored");
    let device = app.device(&admin, &a.id).await;
    let kept = device["installed"]
        .as_array()
        .expect("installed")
        .iter()
        .find(|i| i["name"] == "detector")
        .expect("detector")
        .clone();
    assert_eq!(
        kept["since"], detector["since"],
        "an unchanged entry keeps its since"
    );

    sb.report(&[("detector", "model", "1.2.0")]).await;
    sa.report(&[("detector", "model", "1.3.0")]).await;
    let moved = wait_until(Duration::from_secs(15), || async {
        ids(&list(&app, &admin, "version=detector:1.2.0").await) == [b.id.clone()]
            && ids(&list(&app, &admin, "version=detector:1.3.0").await) == [a.id.clone()]
    })
    .await;
    assert!(moved, "the filter follows the new reports");
    assert_eq!(
        list(&app, &admin, "version=%3Cb%3Efw").await["total"],
        0,
        "a bundle no longer reported is gone"
    );
    let device = app.device(&admin, &a.id).await;
    assert_ne!(device["installed"][0]["since"], detector["since"]);
    let (_, html) = page(&client, &app, "/devices?version=detector%3A1.3.0").await;
    assert!(html.contains(&a.id) && !html.contains(&b.id));
}

/// The key each documented order sorts by, ascending; `-x` is its exact reverse.
fn key(sort: &str, d: &Value) -> (String, Option<i64>, String) {
    let time = |v: &Value| {
        v.as_str().map(|s| {
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .expect("rfc3339");
            (t.unix_timestamp_nanos() / 1_000_000) as i64
        })
    };
    let text = |f: &str| d[f].as_str().expect("text").to_string();
    let id = text("id");
    match sort.trim_start_matches('-') {
        "name" => (text("name"), None, id),
        "last_seen" => (String::new(), time(&d["last_seen_at"]), id),
        "type" => (text("device_type"), None, id),
        "status" => (text("status"), None, id),
        "created" => (String::new(), time(&d["created_at"]), id),
        other => panic!("no key for {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_order_holds_with_ties_broken_by_id_across_pages() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut devices = Vec::new();
    for (name, device_type) in [
        ("delta", "rpi4"),
        ("alpha", "x86"),
        ("charlie", "rpi4"),
        ("alpha", "jetson"),
        ("bravo", "x86"),
        ("echo", "rpi4"),
    ] {
        let d = enroll(&app, &admin, device_type).await;
        patch(&app, &admin, &d.id, json!({"name": name})).await;
        devices.push(d);
    }
    let revoked = app
        .post_json(
            &admin,
            &format!("/api/v1/devices/{}/revoke", devices[2].id),
            &json!({}),
        )
        .await;
    assert_eq!(revoked.status(), 200);
    // Three devices are heard from, in an order unlike enrollment's; the rest never.
    let mut sessions = Vec::new();
    for i in [4, 0, 5] {
        let session = Session::open(&app, &devices[i]).await;
        session.online().await;
        let up = wait_until(Duration::from_secs(10), || async {
            app.device(&admin, &devices[i].id).await["last_seen_at"].is_string()
        })
        .await;
        assert!(up, "device {i} was heard from");
        sessions.push(session);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let mut orders = Vec::new();
    for sort in [
        "name",
        "-name",
        "last_seen",
        "-last_seen",
        "type",
        "status",
        "created",
        "-created",
    ] {
        let whole = list(&app, &admin, &format!("sort={sort}&per_page=500")).await;
        let items = whole["items"].as_array().expect("items").clone();
        assert_eq!(items.len(), 6, "{sort}");
        let mut expected = items.clone();
        expected.sort_by_key(|d| key(sort, d));
        if sort.starts_with('-') {
            expected.reverse();
        }
        let got: Vec<&Value> = items.iter().map(|d| &d["id"]).collect();
        let want: Vec<&Value> = expected.iter().map(|d| &d["id"]).collect();
        assert_eq!(got, want, "sort={sort}");
        // Pages of two read the same order, with the whole total on each.
        let mut paged = Vec::new();
        for n in 1..=3 {
            let body = list(&app, &admin, &format!("sort={sort}&per_page=2&page={n}")).await;
            assert_eq!(body["total"], 6);
            paged.extend(ids(&body));
        }
        assert_eq!(paged, ids(&whole), "sort={sort} across pages");
        // Filtered, a page is read either by sorting the matches (one large
        // page) or by walking the order's index (small pages): the same order.
        let rpi4: Vec<String> = items
            .iter()
            .filter(|d| d["device_type"] == "rpi4")
            .map(|d| d["id"].as_str().expect("id").to_string())
            .collect();
        let sorted_matches =
            list(&app, &admin, &format!("type=rpi4&sort={sort}&per_page=500")).await;
        assert_eq!(ids(&sorted_matches), rpi4, "sort={sort} of the matches");
        let mut walked = Vec::new();
        for n in 1..=3 {
            let body = list(
                &app,
                &admin,
                &format!("type=rpi4&sort={sort}&per_page=1&page={n}"),
            )
            .await;
            assert_eq!(body["total"], 3);
            walked.extend(ids(&body));
        }
        assert_eq!(walked, rpi4, "sort={sort} walking the index");
        orders.push(ids(&whole));
    }
    assert_eq!(
        ids(&list(&app, &admin, "").await),
        orders[0],
        "name is the default"
    );
    let name = &orders[0];
    assert_eq!(
        app.device(&admin, &name[0]).await["name"],
        "alpha",
        "{name:?}"
    );
    let last_seen = &orders[2];
    assert_eq!(
        &last_seen[3..],
        [
            devices[4].id.clone(),
            devices[0].id.clone(),
            devices[5].id.clone()
        ],
        "never-seen devices come first, then the longest silent"
    );
    let created = &orders[6];
    let enrolled: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
    assert_eq!(created, &enrolled);
    assert_eq!(
        &orders[5][5], &devices[2].id,
        "revoked sorts after accepted"
    );

    // The dashboard reads the same order and keeps it in its page links.
    let password = operator_with_password(&app, "otto", "viewer").await;
    let (client, _) = sign_in(&app, "otto", &password).await;
    let (status, html) = page(&client, &app, "/devices?sort=-created&per_page=2&type=rpi4").await;
    assert_eq!(status, 200);
    let first = html.find(&devices[5].id).expect("newest rpi4");
    let second = html.find(&devices[2].id).expect("next rpi4");
    assert!(first < second, "newest first");
    assert!(
        !html.contains(&format!("/devices/{}\"", devices[0].id)),
        "page 2 holds the oldest"
    );
    assert!(
        html.contains("type=rpi4")
            && html.contains("sort=-created")
            && html.contains("per_page=2&#38;page=2"),
        "the next page keeps filter and order"
    );
    assert!(html.contains("<option value=\"-created\" selected>"));
    assert!(html.contains("Page 1 of 2 · 3 devices"));
    drop(sessions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_versions_and_orders_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    for (query, field) in [
        ("version=detector%3A1.2", "version"),
        ("version=detector%3Av1.2.0", "version"),
        ("version=%3A1.2.0", "version"),
        ("version=a%2Fb", "version"),
        ("sort=size", "sort"),
        ("sort=-type", "sort"),
        ("sort=NAME", "sort"),
    ] {
        let body = drover_tests::problem(
            app.get(&admin, &format!("/api/v1/devices?{query}")).await,
            400,
        )
        .await;
        assert_eq!(body["field"], field, "{query}");
    }
    let password = operator_with_password(&app, "ida", "viewer").await;
    let (client, _) = sign_in(&app, "ida", &password).await;
    let (status, html) = page(&client, &app, "/devices?sort=size").await;
    assert_eq!(status, 400);
    assert!(
        html.contains("sort:") && html.contains("-last_seen"),
        "the page says why"
    );
    let (status, html) = page(
        &client,
        &app,
        "/devices?version=%3Cscript%3Ealert(1)%3C%2Fscript%3E%3A1",
    )
    .await;
    assert_eq!(status, 400);
    assert!(html.contains("version:"));
    assert!(
        !html.contains("<script>alert(1)</script>"),
        "the refused value is shown escaped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_and_pages_agree_under_filters_and_markup_stays_escaped() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut at_berlin = Vec::new();
    for i in 0..5 {
        let d = app.enrolled_device(&admin).await;
        let site = if i < 3 { "berlin" } else { "oslo" };
        let name = if i == 0 {
            "<script>alert(1)</script>".to_string()
        } else {
            format!("cam_{i}")
        };
        patch(
            &app,
            &admin,
            &d.id,
            json!({"name": name, "tags": {"site": site, "note": "<script>alert(1)</script>"}}),
        )
        .await;
        if i < 3 {
            at_berlin.push(d.id.clone());
        }
    }
    let mut seen = Vec::new();
    for n in 1..=2 {
        let body = list(
            &app,
            &admin,
            &format!("tag=site%3Aberlin&per_page=2&page={n}"),
        )
        .await;
        assert_eq!(body["total"], 3);
        assert_eq!(body["page"], n);
        seen.extend(ids(&body));
    }
    assert_eq!(sorted(seen), sorted(at_berlin.clone()));
    let beyond = list(&app, &admin, "tag=site%3Aberlin&per_page=2&page=3").await;
    assert_eq!(beyond["total"], 3, "a page past the end still counts");
    assert_eq!(beyond["items"], json!([]));
    let both = list(&app, &admin, "tag=site%3Aberlin&q=cam_&status=accepted").await;
    assert_eq!(both["total"], 2, "filters combine");
    assert_eq!(
        list(&app, &admin, "q=cam_").await["total"],
        4,
        "an underscore is searched for, not a wildcard"
    );
    assert_eq!(list(&app, &admin, "q=cam%25").await["total"], 0);
    let tagged = list(&app, &admin, "tag=site%3Aoslo").await;
    assert_eq!(
        tagged["items"][0]["tags"]["note"],
        "<script>alert(1)</script>"
    );

    let password = operator_with_password(&app, "eve", "viewer").await;
    let (client, _) = sign_in(&app, "eve", &password).await;
    let (status, html) = page(&client, &app, "/devices?tag=site%3Aberlin&per_page=2").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("Page 1 of 2 · 3 devices"),
        "the pager counts matches"
    );
    assert!(html.contains("id=\"devices-results\" data-live=\"fleet\""));
    let (_, html) = page(&client, &app, "/devices").await;
    assert!(
        !html.contains("<script>alert(1)</script>"),
        "names and tag values are escaped"
    );
    assert!(html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"));
    assert!(html.contains("note=&#60;script&#62;alert(1)&#60;/script&#62;"));
    for label in ["Version", "Sort", "Last seen", "Installed"] {
        assert!(html.contains(label), "{label}");
    }
    assert!(html.contains("<label for=\"f-version\">") && html.contains("<label for=\"f-sort\">"));
}

/// The overview's kept counts, next to the same counts taken from the rows.
async fn kept_and_counted(
    app: &TestApp,
) -> (
    drover_server::fleet::tallies::Tallies,
    drover_server::fleet::tallies::Tallies,
) {
    use drover_server::store::Store;
    let kept = drover_server::fleet::tallies::read(&app.store)
        .await
        .expect("read tallies");
    const DEVICES: &str = "SELECT status,
            CASE WHEN online THEN 'online' WHEN last_seen_at IS NULL THEN 'never' ELSE 'offline' END,
            COUNT(*) FROM devices GROUP BY 1, 2";
    const VERSIONS: &str =
        "SELECT name, version, COUNT(*) FROM device_versions GROUP BY name, version";
    type Counted = Vec<(String, String, i64)>;
    let (devices, versions): (Counted, Counted) = match &app.store {
        Store::Sqlite(pool) => (
            sqlx::query_as(DEVICES)
                .fetch_all(pool)
                .await
                .expect("count"),
            sqlx::query_as(VERSIONS)
                .fetch_all(pool)
                .await
                .expect("count"),
        ),
        Store::Postgres(pool) => (
            sqlx::query_as(DEVICES)
                .fetch_all(pool)
                .await
                .expect("count"),
            sqlx::query_as(VERSIONS)
                .fetch_all(pool)
                .await
                .expect("count"),
        ),
    };
    let mut counted = drover_server::fleet::tallies::Tallies::default();
    for (status, presence, n) in devices {
        *counted.by_status.entry(status.clone()).or_default() += n;
        if status == "accepted" {
            match presence.as_str() {
                "online" => counted.presence.online += n,
                "never" => counted.presence.never += n,
                _ => counted.presence.offline += n,
            }
        }
    }
    for (name, version, n) in versions {
        counted.versions.insert((name, version), n);
    }
    (kept, counted)
}

async fn assert_counts_kept(app: &TestApp, step: &str) {
    let (kept, counted) = kept_and_counted(app).await;
    assert_eq!(kept, counted, "after {step}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overviews_kept_counts_equal_the_rows_through_every_kind_of_change() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    assert_counts_kept(&app, "start").await;

    let mut devices = Vec::new();
    for _ in 0..4 {
        devices.push(enroll(&app, &admin, "gateway").await);
    }
    let approval = app
        .enrollment_token(&admin, json!({"uses": 1, "approval": true}))
        .await;
    let key = drover_tests::DeviceKey::new();
    let res = app
        .enroll(approval["token"].as_str().expect("token"), &key, "gateway")
        .await;
    assert_eq!(res.status(), 201);
    let pending: Value = res.json().await.expect("json");
    let pending = pending["device_id"].as_str().expect("id").to_string();
    assert_counts_kept(&app, "enrolling").await;
    let before = drover_server::fleet::tallies::read(&app.store)
        .await
        .expect("read");
    assert_eq!(before.by_status.get("pending"), Some(&1), "{before:?}");
    assert_eq!(before.presence.never, 4, "{before:?}");

    // Presence and installed versions through the devices' own MQTT messages.
    let mut sessions = Vec::new();
    for (i, device) in devices.iter().take(3).enumerate() {
        let s = Session::open(&app, device).await;
        s.online().await;
        let version = if i == 0 { "1.0.0" } else { "1.1.0" };
        s.report(&[
            ("detector", "model", version),
            ("agent", "application", "0.9.0"),
        ])
        .await;
        sessions.push(s);
    }
    assert!(
        wait_until(Duration::from_secs(10), || async {
            let t = drover_server::fleet::tallies::read(&app.store)
                .await
                .expect("read");
            t.presence.online == 3 && t.versions.values().sum::<i64>() == 6
        })
        .await,
        "presence and versions arrive: {:?}",
        kept_and_counted(&app).await
    );
    assert_counts_kept(&app, "presence and reports").await;

    // A version changes, a bundle is dropped from a report.
    sessions[0]
        .report(&[
            ("detector", "model", "1.1.0"),
            ("agent", "application", "0.9.0"),
        ])
        .await;
    sessions[1].report(&[("detector", "model", "1.1.0")]).await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            let t = drover_server::fleet::tallies::read(&app.store)
                .await
                .expect("read");
            t.versions.get(&("detector".into(), "1.1.0".into())) == Some(&3)
                && t.versions.get(&("agent".into(), "0.9.0".into())) == Some(&2)
        })
        .await,
        "changed versions arrive"
    );
    assert_counts_kept(&app, "a changed and a dropped version").await;

    // Their health reports are fresh now and stale four minutes on (the overview's
    // "no recent health report" reads the time each report leaves on its device).
    let fresh = drover_server::fleet::overview(&app.store, now_ms())
        .await
        .expect("overview");
    assert_eq!(fresh.stale.1, 0, "{:?}", fresh.stale);
    let later = drover_server::fleet::overview(&app.store, now_ms() + 4 * 60_000)
        .await
        .expect("overview");
    assert_eq!(later.stale.1, 3, "{:?}", later.stale);
    assert!(
        later
            .stale
            .0
            .iter()
            .all(|n| n.note.starts_with("last health report")),
        "{:?}",
        later.stale
    );

    // Status changes: accepted, revoked (its versions go), decommissioned.
    let res = app
        .post_json(
            &admin,
            &format!("/api/v1/devices/{pending}/accept"),
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .post_json(
            &admin,
            &format!("/api/v1/devices/{}/revoke", devices[2].id),
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .delete(&admin, &format!("/api/v1/devices/{}", devices[3].id))
        .await;
    assert!(res.status().is_success(), "{}", res.status());
    assert_counts_kept(&app, "accept, revoke and decommission").await;

    // Many devices in one statement: the presence sweep marks every silent device offline.
    drover_server::telemetry::retention::mark_silent_offline(
        &app.store,
        Duration::ZERO,
        now_ms() + 60_000,
    )
    .await
    .expect("sweep");
    assert_counts_kept(&app, "the presence sweep").await;
    let swept = drover_server::fleet::tallies::read(&app.store)
        .await
        .expect("read");
    assert_eq!(swept.presence.online, 0, "{swept:?}");

    // Folding the rows changes no count, and a second fold has nothing to do.
    let removed = drover_server::fleet::tallies::compact(&app.store)
        .await
        .expect("compact");
    assert!(removed > 0, "there were rows to fold");
    assert_counts_kept(&app, "folding").await;
    assert_eq!(
        drover_server::fleet::tallies::compact(&app.store)
            .await
            .expect("compact"),
        0
    );
    assert_eq!(
        drover_server::fleet::tallies::read(&app.store)
            .await
            .expect("read"),
        swept
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_text_in_names_through_the_index_and_without_it_alike() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    // Ten devices, so a text one device holds is rare enough for SQLite's trigram index
    // and a text eight of them hold is read for instead: both ways must answer the same.
    let names = [
        "unit-00",
        "unit-01",
        "unit-02",
        "unit-03",
        "unit-04",
        "unit-05",
        "unit-06",
        "unit-07",
        "alpha-CAM-01",
        "beta \"q\" 50%_x",
    ];
    let mut made = Vec::new();
    for name in names {
        let d = enroll(&app, &admin, "gateway").await;
        patch(&app, &admin, &d.id, json!({"name": name})).await;
        made.push(d.id);
    }
    let search = |q: &str| {
        let q = q.to_string();
        let app = &app;
        let admin = &admin;
        async move {
            let query = format!("q={}&per_page=500", urlencode(&q));
            let body = list(app, admin, &query).await;
            let found = sorted(ids(&body));
            assert_eq!(body["total"], found.len(), "{q}: {body}");
            found
        }
    };
    let with = |pick: &[usize]| sorted(pick.iter().map(|&i| made[i].clone()).collect());
    assert_eq!(search("cam-0").await, with(&[8]), "rare text, any case");
    assert_eq!(
        search("unit").await,
        with(&[0, 1, 2, 3, 4, 5, 6, 7]),
        "common text"
    );
    assert_eq!(search("unit-03").await, with(&[3]));
    assert_eq!(
        search("\"q\" 50%_").await,
        with(&[9]),
        "quotes and LIKE's wildcards are text"
    );
    assert_eq!(
        search("zzqq").await,
        Vec::<String>::new(),
        "text nobody holds"
    );
    assert_eq!(
        search("ph").await,
        with(&[8]),
        "text shorter than a trigram"
    );
    assert_eq!(search(&made[4][4..20]).await, with(&[4]), "part of an id");

    // A renamed device is found by its new name only.
    patch(&app, &admin, &made[8], json!({"name": "delta-cam-09"})).await;
    assert_eq!(search("alpha").await, Vec::<String>::new());
    assert_eq!(search("delta-cam").await, with(&[8]));
    assert_eq!(search("cam-0").await, with(&[8]));

    // The dashboard's list searches the same way.
    let password = operator_with_password(&app, "searcher", "viewer").await;
    let (client, _) = sign_in(&app, "searcher", &password).await;
    let (status, html) = page(&client, &app, "/devices?q=delta-cam").await;
    assert_eq!(status, 200);
    assert!(
        html.contains(&made[8]) && !html.contains(&made[3]),
        "{html}"
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
