//! Issue 10 end to end: staged rollouts driven by the server's engine over real simulated
//! devices (`drover-agent simulate`): canaries first, soaks, halts with automatic rollback,
//! a server restart mid-phase, offline devices, pause, abort, maintenance windows, and the API's
//! refusals. Runs on SQLite by default and on PostgreSQL in CI.

use std::path::PathBuf;
use std::time::Duration;

use drover_tests::{TestApp, problem, spawn_app, wait_until};
use serde_json::{Value, json};

use crate::agent_updates::model_bundle;
use crate::simulator::{Simulator, devices};

/// How long a rollout over a few simulated devices may take.
const DONE: Duration = Duration::from_secs(120);

/// A fleet of `n` simulated rpi4 devices, all online; answers the simulator and the token.
pub(crate) async fn fleet(
    app: &TestApp,
    admin: &str,
    n: u32,
    dir: &str,
    flags: &[&str],
) -> Simulator {
    let token = app.enrollment_token(admin, json!({"uses": n})).await;
    let token = token["token"].as_str().expect("token").to_owned();
    let root: PathBuf = app.scratch().join(dir);
    let mut all = vec!["--rate", "1"];
    all.extend_from_slice(flags);
    let sim = Simulator::start(app, &token, &root, n, &all);
    let before = devices(app, admin, Some("online")).await.len();
    let up = wait_until(Duration::from_secs(60), || async {
        devices(app, admin, Some("online")).await.len() >= before + n as usize
    })
    .await;
    assert!(up, "{n} simulated devices online");
    // Offers read the installed set from health reports: wait until each device has sent one.
    let reported = wait_until(Duration::from_secs(60), || async {
        for d in devices(app, admin, None).await {
            let id = d["id"].as_str().expect("id");
            let health = app
                .get(admin, &format!("/api/v1/devices/{id}/health"))
                .await;
            if health.status() != 200 {
                return false;
            }
        }
        true
    })
    .await;
    assert!(reported, "every device sent a health report");
    sim
}

/// A `detector` model bundle of `version` for rpi4.
pub(crate) async fn model(app: &TestApp, admin: &str, version: &str) -> String {
    model_bundle(
        app,
        admin,
        version,
        format!("weights {version}").into_bytes(),
    )
    .await
}

pub(crate) async fn create(app: &TestApp, admin: &str, body: Value) -> Value {
    let res = app.post_json(admin, "/api/v1/rollouts", &body).await;
    let status = res.status();
    let body: Value = res.json().await.expect("rollout json");
    assert_eq!(status, 201, "{body}");
    body
}

pub(crate) async fn rollout(app: &TestApp, admin: &str, id: &str) -> Value {
    app.get(admin, &format!("/api/v1/rollouts/{id}"))
        .await
        .json()
        .await
        .expect("rollout json")
}

/// Waits until the rollout is in `state`; answers it.
pub(crate) async fn until_state(app: &TestApp, admin: &str, id: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + DONE;
    loop {
        let r = rollout(app, admin, id).await;
        if r["state"] == state {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout never reached {state}: {r}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `POST /rollouts/{id}/{action}`; answers the rollout.
async fn act(app: &TestApp, admin: &str, id: &str, action: &str) -> Value {
    app.post_json(
        admin,
        &format!("/api/v1/rollouts/{id}/{action}"),
        &json!({}),
    )
    .await
    .json()
    .await
    .expect("rollout json")
}

pub(crate) async fn members(app: &TestApp, admin: &str, id: &str) -> Vec<Value> {
    let list: Value = app
        .get(
            admin,
            &format!("/api/v1/rollouts/{id}/devices?per_page=500"),
        )
        .await
        .json()
        .await
        .expect("devices json");
    list["items"].as_array().expect("items").clone()
}

pub(crate) async fn event_kinds(app: &TestApp, admin: &str, id: &str) -> Vec<String> {
    let list: Value = app
        .get(admin, &format!("/api/v1/rollouts/{id}/events"))
        .await
        .json()
        .await
        .expect("events json");
    list.as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_owned))
        .collect()
}

/// Rows of `sql` (one integer) from the server's store, with `$1` bound to `rollout`.
async fn scalar(app: &TestApp, sql: &str, rollout: &str) -> i64 {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    drover_server::on_store!(&app.store, pool => sqlx::query_scalar::<_, i64>(sql)
        .bind(rollout).fetch_one(pool).await)
    .expect("query the store")
}

async fn offers(app: &TestApp, rollout: &str) -> (i64, i64) {
    (
        scalar(
            app,
            "SELECT COUNT(*) FROM device_offers WHERE rollout_id = $1",
            rollout,
        )
        .await,
        scalar(
            app,
            "SELECT COUNT(DISTINCT device_id) FROM device_offers WHERE rollout_id = $1",
            rollout,
        )
        .await,
    )
}

pub(crate) fn in_phase(list: &[Value], phase: i64) -> Vec<&Value> {
    list.iter().filter(|d| d["phase"] == phase).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phases_offer_canaries_first_soak_and_finish_with_every_device_updated() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let sim = fleet(&app, &admin, 20, "fleet", &[]).await;
    let v1 = model(&app, &admin, "1.0.0").await;
    let preview: Value = app
        .post_json(
            &admin,
            "/api/v1/rollouts/preview",
            &json!({"bundle_id": v1, "target": {"device_type": "rpi4"},
                    "phases": [{"percent": 10}, {"percent": 50}, {"percent": 100}]}),
        )
        .await
        .json()
        .await
        .expect("preview");
    assert_eq!(preview["matching"], 20, "{preview}");
    assert_eq!(preview["phase_sizes"], json!([2, 8, 10]));

    let r = create(
        &app,
        &admin,
        json!({"name": "detector 1.0.0", "bundle_id": v1, "target": {"device_type": "rpi4"},
               "phases": [{"percent": 10, "soak_seconds": 2}, {"percent": 50, "soak_seconds": 1}, {"percent": 100}],
               "failure_threshold_pct": 0, "max_in_flight": 20}),
    )
    .await;
    assert_eq!(r["state"], "running");
    assert_eq!(r["phase"], 1);
    let id = r["id"].as_str().expect("id").to_owned();
    // A second rollout over the same devices is refused while this one holds them.
    let v2 = model(&app, &admin, "1.1.0").await;
    let res = app
        .post_json(
            &admin,
            "/api/v1/rollouts",
            &json!({"name": "too soon", "bundle_id": v2, "target": {"device_type": "rpi4"},
                    "phases": [{"percent": 100}]}),
        )
        .await;
    let p = problem(res, 409).await;
    assert!(p["detail"].as_str().unwrap_or("").contains(&id), "{p}");

    let done = until_state(&app, &admin, &id, "completed").await;
    assert_eq!(done["counts"]["succeeded"], 20, "{done}");
    let list = members(&app, &admin, &id).await;
    assert_eq!(
        (
            in_phase(&list, 1).len(),
            in_phase(&list, 2).len(),
            in_phase(&list, 3).len()
        ),
        (2, 8, 10),
        "cumulative phases, rounded up"
    );
    assert!(
        list.iter()
            .all(|d| d["state"] == "succeeded" && d["version"] == "1.0.0")
    );
    // Every device was offered exactly once.
    assert_eq!(offers(&app, &id).await, (20, 20));
    // The canaries finished, then the soak passed, before phase 2 was offered anything.
    let canaries_done = scalar(
        &app,
        "SELECT MAX(u.updated_at) FROM device_updates u JOIN rollout_devices rd
           ON rd.device_id = u.device_id AND rd.rollout_id = u.rollout_id
          WHERE rd.rollout_id = $1 AND rd.phase = 0",
        &id,
    )
    .await;
    let phase_two_offered = scalar(
        &app,
        "SELECT MIN(offered_at) FROM rollout_devices WHERE rollout_id = $1 AND phase = 1",
        &id,
    )
    .await;
    assert!(
        phase_two_offered - canaries_done >= 2000,
        "soak of 2 s: canaries done at {canaries_done}, phase 2 offered at {phase_two_offered}"
    );
    let kinds = event_kinds(&app, &admin, &id).await;
    for k in [
        "created",
        "offered",
        "soaking",
        "phase_started",
        "completed",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
    }
    // Devices already on the version are skipped by the next rollout of it (once their health,
    // every second here, says what they run).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = create(
        &app,
        &admin,
        json!({"name": "again", "bundle_id": v1, "target": {"device_type": "rpi4"}, "phases": [{"percent": 100}]}),
    )
    .await;
    let again_id = again["id"].as_str().expect("id");
    let skipped = wait_until(Duration::from_secs(20), || async {
        rollout(&app, &admin, again_id).await["state"] == "completed"
    })
    .await;
    assert!(
        skipped,
        "a rollout of the installed version completes at once"
    );
    let list = members(&app, &admin, again_id).await;
    assert!(
        list.iter().all(|d| d["state"] == "skipped"
            && d["detail"].as_str().unwrap_or("").contains("already runs")),
        "{list:?}"
    );
    let audit = app.audit(&admin, "action=rollout.create").await;
    assert!(audit.len() >= 2, "{audit:?}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_version_halts_in_the_canary_phase_and_touches_no_one_else() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let sim = fleet(&app, &admin, 20, "fleet", &["--fail-versions", "2.0.0"]).await;
    let bad = model(&app, &admin, "2.0.0").await;
    let r = create(
        &app,
        &admin,
        json!({"name": "bad model", "bundle_id": bad, "target": {"device_type": "rpi4"},
               "phases": [{"percent": 10}, {"percent": 100}], "failure_threshold_pct": 0,
               "auto_rollback": true}),
    )
    .await;
    let id = r["id"].as_str().expect("id").to_owned();
    let ended = until_state(&app, &admin, &id, "rolled_back").await;
    assert!(
        ended["reason"]
            .as_str()
            .unwrap_or("")
            .contains("rolled back")
            || ended["reason"]
                .as_str()
                .unwrap_or("")
                .contains("every device"),
        "{ended}"
    );
    let kinds = event_kinds(&app, &admin, &id).await;
    for k in ["halted", "rollback_ordered", "rolled_back"] {
        assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
    }
    let list = members(&app, &admin, &id).await;
    let canaries = in_phase(&list, 1);
    assert_eq!(canaries.len(), 2);
    assert!(
        canaries
            .iter()
            .all(|d| d["state"] == "reverted" || d["state"] == "failed"),
        "the canaries failed their health check and went back: {canaries:?}"
    );
    assert!(
        in_phase(&list, 2).iter().all(|d| d["state"] == "pending"),
        "no device outside the canary phase was touched"
    );
    assert_eq!(offers(&app, &id).await, (2, 2));
    // The halted rollout no longer holds its devices: a good version can go out.
    let good = model(&app, &admin, "2.0.1").await;
    let next = create(
        &app,
        &admin,
        json!({"name": "fixed", "bundle_id": good, "target": {"device_type": "rpi4"}, "phases": [{"percent": 100}]}),
    )
    .await;
    until_state(&app, &admin, next["id"].as_str().expect("id"), "completed").await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_mid_phase_finishes_offering_each_device_once() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let sim = fleet(&app, &admin, 20, "fleet", &[]).await;
    let v1 = model(&app, &admin, "1.0.0").await;
    let r = create(
        &app,
        &admin,
        json!({"name": "through a restart", "bundle_id": v1, "target": {"device_type": "rpi4"},
               "phases": [{"percent": 10}, {"percent": 50}, {"percent": 100}],
               "max_in_flight": 2}),
    )
    .await;
    let id = r["id"].as_str().expect("id").to_owned();
    let mid = wait_until(DONE, || async {
        let r = rollout(&app, &admin, &id).await;
        r["phase"] == 2 && r["counts"]["succeeded"].as_i64().unwrap_or(0) >= 3
    })
    .await;
    assert!(mid, "the rollout reaches the middle of phase 2");
    let canaries: Vec<Value> = in_phase(&members(&app, &admin, &id).await, 1)
        .into_iter()
        .cloned()
        .collect();
    let app = app.shut_down().await.start_on_same_ports().await;
    let admin = app.admin_token().await;
    let done = until_state(&app, &admin, &id, "completed").await;
    assert_eq!(done["counts"]["succeeded"], 20, "{done}");
    assert_eq!(
        offers(&app, &id).await,
        (20, 20),
        "each device offered once"
    );
    let after: Vec<Value> = in_phase(&members(&app, &admin, &id).await, 1)
        .into_iter()
        .cloned()
        .collect();
    let ids = |l: &[Value]| l.iter().map(|d| d["device_id"].clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&canaries),
        ids(&after),
        "the same canaries after the restart"
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_devices_wait_pause_holds_offers_and_abort_leaves_devices_as_they_are() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let online = fleet(&app, &admin, 3, "online", &[]).await;
    let away = fleet(&app, &admin, 1, "away", &[]).await;
    away.stop().await;
    let gone = wait_until(Duration::from_secs(20), || async {
        devices(&app, &admin, Some("online")).await.len() == 3
    })
    .await;
    assert!(gone);
    let v1 = model(&app, &admin, "1.0.0").await;
    let r = create(
        &app,
        &admin,
        json!({"name": "with one away", "bundle_id": v1, "target": {"device_type": "rpi4"},
               "phases": [{"percent": 100}], "offline_timeout_seconds": 600}),
    )
    .await;
    let id = r["id"].as_str().expect("id").to_owned();
    let three = wait_until(DONE, || async {
        rollout(&app, &admin, &id).await["counts"]["succeeded"] == 3
    })
    .await;
    assert!(three);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = rollout(&app, &admin, &id).await;
    assert_eq!(
        r["state"], "running",
        "the offline device holds the phase: {r}"
    );
    assert_eq!(r["counts"]["pending"], 1, "{r}");
    // It comes back and gets its offer.
    let token = app.enrollment_token(&admin, json!({"uses": 1})).await;
    let back = Simulator::start(
        &app,
        token["token"].as_str().expect("token"),
        &app.scratch().join("away"),
        1,
        &["--rate", "1"],
    );
    until_state(&app, &admin, &id, "completed").await;
    assert_eq!(offers(&app, &id).await, (4, 4));

    // Pause: the offers out stay out, no new one goes.
    let v2 = model(&app, &admin, "1.1.0").await;
    let r = create(
        &app,
        &admin,
        json!({"name": "one at a time", "bundle_id": v2, "target": {"device_type": "rpi4"},
               "phases": [{"percent": 100}], "max_in_flight": 1}),
    )
    .await;
    let id = r["id"].as_str().expect("id").to_owned();
    let paused: Value = act(&app, &admin, &id, "pause").await;
    assert_eq!(paused["state"], "paused", "{paused}");
    let held = offers(&app, &id).await;
    assert!(held.0 <= 2, "at most the first offers went out: {held:?}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        offers(&app, &id).await,
        held,
        "nothing offered while paused"
    );
    let res = app
        .post_json(&admin, &format!("/api/v1/rollouts/{id}/pause"), &json!({}))
        .await;
    problem(res, 409).await;
    let resumed: Value = act(&app, &admin, &id, "resume").await;
    assert_eq!(resumed["state"], "running");
    let two = wait_until(DONE, || async {
        rollout(&app, &admin, &id).await["counts"]["succeeded"]
            .as_i64()
            .unwrap_or(0)
            >= 2
    })
    .await;
    assert!(two, "offers resume");
    // Abort: what was updated stays updated; nothing more goes out.
    let aborted: Value = act(&app, &admin, &id, "abort").await;
    assert_eq!(aborted["state"], "aborted");
    let at_abort = offers(&app, &id).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        offers(&app, &id).await,
        at_abort,
        "nothing offered after abort"
    );
    let list = members(&app, &admin, &id).await;
    let updated = list.iter().filter(|d| d["state"] == "succeeded").count();
    assert!(updated >= 2, "{list:?}");
    assert!(
        list.iter()
            .filter(|d| d["state"] == "succeeded")
            .all(|d| d["version"] == "1.1.0"),
        "updated devices keep the new version"
    );
    for action in ["rollout.pause", "rollout.resume", "rollout.abort"] {
        assert!(
            !app.audit(&admin, &format!("action={action}"))
                .await
                .is_empty(),
            "{action} audited"
        );
    }
    online.stop().await;
    back.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_returns_to_the_kept_version_and_leaves_a_first_install_in_place() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let sim = fleet(&app, &admin, 4, "fleet", &[]).await;
    let v1 = model(&app, &admin, "1.0.0").await;
    let v2 = model(&app, &admin, "1.1.0").await;
    for (name, b) in [("first", &v1), ("second", &v2)] {
        let r = create(
            &app,
            &admin,
            json!({"name": name, "bundle_id": b, "target": {"device_type": "rpi4"}, "phases": [{"percent": 100}]}),
        )
        .await;
        until_state(&app, &admin, r["id"].as_str().expect("id"), "completed").await;
        let id = r["id"].as_str().expect("id").to_owned();
        if name == "first" {
            // Nothing was installed before 1.0.0: the rollback is ordered, the agents refuse it,
            // and the rollout ends at once instead of waiting for confirmations that never come.
            let ordered = act(&app, &admin, &id, "rollback").await;
            assert_eq!(ordered["state"], "rolling_back", "{ordered}");
            let ended = until_state(&app, &admin, &id, "rolled_back").await;
            assert_eq!(
                ended["reason"],
                "nothing to roll back: 4 devices keep detector 1.0.0, their first install of it",
                "{ended}"
            );
            assert_eq!(ended["counts"]["succeeded"], 4, "{ended}");
            assert!(
                event_kinds(&app, &admin, &id)
                    .await
                    .iter()
                    .any(|k| k == "rollback_sent"),
                "the rollback was still ordered"
            );
            for d in members(&app, &admin, &id).await {
                assert_eq!(d["state"], "succeeded", "{d}");
                assert_eq!(d["version"], "1.0.0", "{d}");
                assert_eq!(
                    d["detail"],
                    "kept 1.0.0: the rollout installed the first detector here, with nothing earlier to return to",
                    "{d}"
                );
            }
        } else {
            let ordered = act(&app, &admin, &id, "rollback").await;
            assert_eq!(ordered["state"], "rolling_back", "{ordered}");
            let back = until_state(&app, &admin, &id, "rolled_back").await;
            assert_eq!(back["counts"]["rolled_back"], 4, "{back}");
            assert_eq!(
                back["reason"], "every device the rollout updated was rolled back",
                "{back}"
            );
            let list = members(&app, &admin, &id).await;
            assert!(
                list.iter().all(|d| d["version"] == "1.0.0"),
                "back on the kept version: {list:?}"
            );
        }
    }
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintenance_window_holds_offers_until_it_opens() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let sim = fleet(&app, &admin, 2, "fleet", &[]).await;
    let v1 = model(&app, &admin, "1.0.0").await;
    // A window that opens at the next whole minute (UTC) and lasts an hour.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let open = (now / 60 + 1) * 60;
    let hhmm = |t: u64| format!("{:02}:{:02}", (t / 3600) % 24, (t / 60) % 60);
    let r = create(
        &app,
        &admin,
        json!({"name": "at night", "bundle_id": v1, "target": {"device_type": "rpi4"},
               "phases": [{"percent": 100}],
               "maintenance_window": {"start": hhmm(open), "end": hhmm(open + 3600), "tz": "UTC"}}),
    )
    .await;
    let id = r["id"].as_str().expect("id").to_owned();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_open = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    if before_open < open {
        assert_eq!(offers(&app, &id).await, (0, 0), "closed window: no offers");
    }
    let done = until_state(&app, &admin, &id, "completed").await;
    let first_offer = scalar(
        &app,
        "SELECT MIN(offered_at) FROM rollout_devices WHERE rollout_id = $1",
        &id,
    )
    .await;
    assert!(
        first_offer >= i64::try_from(open * 1000).unwrap_or(0),
        "offered at {first_offer}, window opened at {}: {done}",
        open * 1000
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rollouts_are_refused_naming_the_problem() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let v1 = model(&app, &admin, "1.0.0").await;
    let base = json!({"name": "r", "bundle_id": v1, "target": {"device_type": "rpi4"}, "phases": [{"percent": 100}]});
    let with = |patch: Value| {
        let mut b = base.clone();
        for (k, v) in patch.as_object().expect("object") {
            b[k] = v.clone();
        }
        b
    };
    for (body, field) in [
        (
            with(json!({"phases": [{"percent": 50}, {"percent": 20}]})),
            "phases[1].percent",
        ),
        (
            with(json!({"phases": [{"percent": 50}]})),
            "phases[0].percent",
        ),
        (with(json!({"phases": []})), "phases"),
        (
            with(json!({"failure_threshold_pct": 150})),
            "failure_threshold_pct",
        ),
        (with(json!({"max_in_flight": 0})), "max_in_flight"),
        (with(json!({"target": {}})), "target"),
        (with(json!({"bundle_id": "nope"})), "bundle_id"),
        (with(json!({"name": " "})), "name"),
        (
            with(json!({"target": {"device_ids": ["nobody"]}})),
            "target.device_ids",
        ),
        (
            with(
                json!({"maintenance_window": {"start": "01:00", "end": "02:00", "tz": "Mars/Base"}}),
            ),
            "maintenance_window.tz",
        ),
        (with(json!({"start_at": "tomorrow"})), "start_at"),
        (with(json!({"colour": "blue"})), "colour"),
    ] {
        let res = app.post_json(&admin, "/api/v1/rollouts", &body).await;
        let p = problem(res, 400).await;
        assert!(
            p["detail"].as_str().unwrap_or("").contains(field),
            "{field}: {p}"
        );
    }
    // Well-formed but impossible: nothing matches.
    let res = app.post_json(&admin, "/api/v1/rollouts", &base).await;
    let p = problem(res, 422).await;
    assert!(
        p["detail"].as_str().unwrap_or("").contains("matches no"),
        "{p}"
    );
    // Viewers read but do not create.
    let viewer = app.user_token(&admin, "val", "viewer").await;
    let res = app.post_json(&viewer, "/api/v1/rollouts", &base).await;
    problem(res, 403).await;
    assert_eq!(app.get(&viewer, "/api/v1/rollouts").await.status(), 200);
    let res = app.get(&admin, "/api/v1/rollouts/nope").await;
    problem(res, 404).await;
    let res = app
        .post_json(&admin, "/api/v1/rollouts/nope/pause", &json!({}))
        .await;
    problem(res, 404).await;
    let failed = app.audit(&admin, "action=rollout.create").await;
    assert!(
        failed.iter().any(|e| e["outcome"] == "failure"),
        "refusals are audited: {failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_rollout_waits_and_a_bundle_in_use_cannot_be_deleted() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let sim = fleet(&app, &admin, 2, "fleet", &[]).await;
    let v1 = model(&app, &admin, "1.0.0").await;
    let r = create(
        &app,
        &admin,
        json!({"name": "later", "bundle_id": v1, "target": {"device_type": "rpi4"},
               "phases": [{"percent": 100}], "start_at": "2099-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(r["state"], "scheduled");
    let id = r["id"].as_str().expect("id").to_owned();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rollout(&app, &admin, &id).await["state"], "scheduled");
    assert!(
        members(&app, &admin, &id).await.is_empty(),
        "no snapshot before the start"
    );
    // It holds its target all the same.
    let res = app
        .post_json(
            &admin,
            "/api/v1/rollouts",
            &json!({"name": "meanwhile", "bundle_id": v1, "target": {"device_type": "rpi4"}, "phases": [{"percent": 100}]}),
        )
        .await;
    let p = problem(res, 409).await;
    let detail = p["detail"].as_str().unwrap_or("");
    assert!(detail.contains(&id) && detail.contains("scheduled"), "{p}");
    let res = app.delete(&admin, &format!("/api/v1/bundles/{v1}")).await;
    let p = problem(res, 409).await;
    assert!(p["detail"].as_str().unwrap_or("").contains(&id), "{p}");
    let aborted: Value = act(&app, &admin, &id, "abort").await;
    assert_eq!(aborted["state"], "aborted");
    let res = app.delete(&admin, &format!("/api/v1/bundles/{v1}")).await;
    assert_eq!(
        res.status(),
        204,
        "a finished rollout does not hold its bundle"
    );
    assert_eq!(
        rollout(&app, &admin, &id).await["bundle_version"],
        "1.0.0",
        "the rollout keeps its bundle's name and version"
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_previews_starts_and_pauses_a_rollout_in_the_dashboard() {
    use crate::dashboard::{operator_with_password, page_csrf, sign_in};
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let sim = fleet(&app, &admin, 3, "fleet", &[]).await;
    let v1 = model(&app, &admin, "1.0.0").await;
    let password = operator_with_password(&app, "olga", "operator").await;
    let (client, _) = sign_in(&app, "olga", &password).await;
    let (html, csrf) = page_csrf(&app, &client, "/rollouts").await;
    assert!(html.contains("No rollouts yet") && html.contains("Start a rollout"));
    assert!(html.contains(&v1), "the bundle is offered in the form");
    let form = |extra: &[(&str, &str)]| {
        let mut f: Vec<(String, String)> = vec![
            ("csrf_token".into(), csrf.clone()),
            ("name".into(), "from the dashboard".into()),
            ("bundle_id".into(), v1.clone()),
            ("device_type".into(), "rpi4".into()),
            ("phases".into(), "34:1, 100".into()),
            ("max_in_flight".into(), "1".into()),
        ];
        for (k, v) in extra {
            f.retain(|(key, _)| key != k);
            f.push(((*k).into(), (*v).into()));
        }
        f
    };
    // The live preview (htmx) counts the target and its phases.
    let preview = client
        .post(app.url("/rollouts/preview"))
        .form(&form(&[]))
        .send()
        .await
        .expect("preview");
    assert_eq!(preview.status(), 200);
    let text = preview.text().await.expect("fragment");
    assert!(
        text.contains("<strong>3</strong> devices match") && text.contains("phases of 2, 1"),
        "{text}"
    );
    // A bad phase list comes back with the form and the reason.
    let bad = client
        .post(app.url("/rollouts"))
        .form(&form(&[("phases", "ten")]))
        .send()
        .await
        .expect("bad create");
    assert_eq!(bad.status(), 400);
    let page = bad.text().await.expect("html");
    assert!(
        page.contains("`ten`") && page.contains("from the dashboard"),
        "the form keeps its fields"
    );
    let created = client
        .post(app.url("/rollouts"))
        .form(&form(&[]))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 303);
    let location = created
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .expect("location")
        .to_owned();
    let id = location.trim_start_matches("/rollouts/").to_owned();
    let (page, csrf) = page_csrf(&app, &client, &location).await;
    assert!(
        page.contains("from the dashboard") && page.contains("Pause"),
        "{page}"
    );
    let paused = client
        .post(app.url(&format!("/rollouts/{id}/pause")))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .expect("pause");
    assert_eq!(paused.status(), 303);
    assert_eq!(rollout(&app, &admin, &id).await["state"], "paused");
    let (page, csrf) = page_csrf(&app, &client, &location).await;
    assert!(page.contains("Resume") && page.contains("paused"));
    // Pausing twice is a conflict shown on the page.
    let again = client
        .post(app.url(&format!("/rollouts/{id}/pause")))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .expect("pause again");
    assert_eq!(again.status(), 409);
    let resumed = client
        .post(app.url(&format!("/rollouts/{id}/resume")))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .expect("resume");
    assert_eq!(resumed.status(), 303);
    until_state(&app, &admin, &id, "completed").await;
    let (page, _) = page_csrf(&app, &client, "/rollouts").await;
    assert!(page.contains("completed") && page.contains(&format!("/rollouts/{id}")));
    assert!(
        !app.audit(&admin, "action=rollout.pause").await.is_empty(),
        "dashboard controls are audited"
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_engine_leader_can_change_nothing() {
    use drover_server::rollouts::engine;
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let sim = fleet(&app, &admin, 3, "fleet", &[]).await;
    sim.stop().await;
    let offline = wait_until(Duration::from_secs(20), || async {
        devices(&app, &admin, Some("online")).await.is_empty()
    })
    .await;
    assert!(offline);
    let v1 = model(&app, &admin, "1.0.0").await;
    // Every device offline: the running engine waits and offers nothing.
    let r = create(
        &app,
        &admin,
        json!({"name": "fenced", "bundle_id": v1, "target": {"device_type": "rpi4"},
               "phases": [{"percent": 100}], "max_in_flight": 1}),
    )
    .await;
    let id = r["id"].as_str().expect("id").to_owned();
    let mqtt = app.mqtt.clone();
    let url = app.settings.database_url.clone();
    // The server stops (its engine with it); its devices look online again in the store.
    let stopped = app.shut_down().await;
    let store = drover_server::store::Store::connect(&url)
        .await
        .expect("store");
    drover_server::on_store!(&store, pool => sqlx::query("UPDATE devices SET online = TRUE")
        .execute(pool).await.map(|r| r.rows_affected()))
    .expect("mark online");
    let epoch: i64 = drover_server::on_store!(&store, pool => sqlx::query_scalar(
        "SELECT epoch FROM engine_leases WHERE name = 'rollouts'").fetch_one(pool).await)
    .expect("the lease");
    let offered = |store: drover_server::store::Store, id: String| async move {
        drover_server::on_store!(&store, pool => sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM device_offers WHERE rollout_id = $1").bind(&id).fetch_one(pool).await)
        .expect("offers")
    };
    // A leader whose epoch is not the lease's changes nothing and learns it lost.
    let led = engine::pass(&store, &mqtt, epoch + 7).await.expect("pass");
    assert!(!led, "a foreign epoch is not the leader");
    assert_eq!(offered(store.clone(), id.clone()).await, 0);
    // The lease's own epoch offers (one at a time).
    assert!(engine::pass(&store, &mqtt, epoch).await.expect("pass"));
    assert_eq!(offered(store.clone(), id.clone()).await, 1);
    // Another leader takes over: the old one's next pass offers nothing more.
    drover_server::on_store!(&store, pool => sqlx::query(
        "UPDATE engine_leases SET epoch = epoch + 1 WHERE name = 'rollouts'").execute(pool).await.map(|r| r.rows_affected()))
    .expect("a new leader");
    drover_server::on_store!(&store, pool => sqlx::query(
        "UPDATE rollout_devices SET state = 'skipped' WHERE rollout_id = $1 AND state = 'offered'").bind(&id).execute(pool).await.map(|r| r.rows_affected()))
    .expect("free the slot");
    let led = engine::pass(&store, &mqtt, epoch).await.expect("pass");
    assert!(!led, "the old leader learns it lost");
    assert_eq!(
        offered(store.clone(), id.clone()).await,
        1,
        "and offered nothing"
    );
    store.close().await;
    drop(stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_after_successes_rolls_the_updated_devices_back() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    // Two devices on which 2.0.0 runs well and two on which it fails its health check; each
    // first gets 1.0.0, so a rollback has a kept version to return to.
    let good = fleet(&app, &admin, 2, "good", &[]).await;
    let healthy: Vec<String> = {
        let mut ids: Vec<String> = devices(&app, &admin, None)
            .await
            .iter()
            .filter_map(|d| d["id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids
    };
    let bad = fleet(&app, &admin, 2, "bad", &["--fail-versions", "2.0.0"]).await;
    let all: Vec<String> = devices(&app, &admin, None)
        .await
        .iter()
        .filter_map(|d| d["id"].as_str().map(str::to_owned))
        .collect();
    let v1 = model(&app, &admin, "1.0.0").await;
    let first = create(
        &app,
        &admin,
        json!({"name": "base", "bundle_id": v1, "target": {"device_type": "rpi4"}, "phases": [{"percent": 100}]}),
    )
    .await;
    until_state(&app, &admin, first["id"].as_str().expect("id"), "completed").await;
    let v2 = model(&app, &admin, "2.0.0").await;
    // The snapshot order follows the rollout's id: schedule rollouts a few seconds ahead until
    // one's canaries (the first half) are the two healthy devices, aborting the others.
    let mut chosen = None;
    for attempt in 0..40 {
        let start = time::OffsetDateTime::now_utc() + time::Duration::seconds(4);
        let start = start
            .format(&time::format_description::well_known::Rfc3339)
            .expect("rfc3339");
        let r = create(
            &app,
            &admin,
            json!({"name": format!("2.0.0 try {attempt}"), "bundle_id": v2,
                   "target": {"device_type": "rpi4"},
                   "phases": [{"percent": 50}, {"percent": 100}],
                   "max_in_flight": 2, "auto_rollback": true, "start_at": start}),
        )
        .await;
        let id = r["id"].as_str().expect("id").to_owned();
        let order = drover_server::rollouts::plan::snapshot_order(&id, all.clone());
        let mut canaries = order[..2].to_vec();
        canaries.sort();
        if canaries == healthy {
            chosen = Some(id);
            break;
        }
        let aborted = act(&app, &admin, &id, "abort").await;
        assert_eq!(aborted["state"], "aborted", "{aborted}");
    }
    let id = chosen.expect("a rollout whose canaries are the healthy devices");
    let ended = until_state(&app, &admin, &id, "rolled_back").await;
    assert_eq!(ended["counts"]["rolled_back"], 2, "{ended}");
    let kinds = event_kinds(&app, &admin, &id).await;
    for k in [
        "phase_started",
        "halted",
        "rollback_ordered",
        "rollback_sent",
        "rolled_back",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
    }
    let list = members(&app, &admin, &id).await;
    for d in in_phase(&list, 1) {
        assert_eq!(d["state"], "rolled_back", "{d}");
        assert_eq!(d["version"], "1.0.0", "back on the kept version: {d}");
    }
    assert!(
        in_phase(&list, 2).iter().any(|d| d["state"] == "reverted"),
        "phase 2 failed: {list:?}"
    );
    good.stop().await;
    bad.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_targeted_by_tags_updates_only_the_devices_carrying_them() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let _north = fleet(&app, &admin, 3, "north", &["--tag", "site=north"]).await;
    let _south = fleet(&app, &admin, 2, "south", &["--tag", "site=south"]).await;
    let v1 = model(&app, &admin, "1.0.0").await;
    let north = json!({"device_type": "rpi4", "tags": {"site": "north"}});
    let preview: Value = app
        .post_json(
            &admin,
            "/api/v1/rollouts/preview",
            &json!({"bundle_id": v1, "target": north, "phases": [{"percent": 100}]}),
        )
        .await
        .json()
        .await
        .expect("preview");
    assert_eq!(preview["matching"], 3, "{preview}");

    // Every tag must match: the north devices carry no `line`, so a target that also asks for
    // one matches nobody, and is refused rather than started empty.
    let nobody = app
        .post_json(
            &admin,
            "/api/v1/rollouts",
            &json!({"name": "nobody", "bundle_id": v1, "phases": [{"percent": 100}],
                    "target": {"device_type": "rpi4", "tags": {"site": "north", "line": "7"}}}),
        )
        .await;
    let refused = problem(nobody, 422).await;
    assert!(
        refused["detail"]
            .as_str()
            .is_some_and(|d| d.contains("matches no accepted device")),
        "{refused}"
    );

    let r = create(
        &app,
        &admin,
        json!({"name": "north only", "bundle_id": v1, "target": north, "phases": [{"percent": 100}]}),
    )
    .await;
    let id = r["id"].as_str().expect("id").to_owned();
    let done = until_state(&app, &admin, &id, "completed").await;
    assert_eq!(done["counts"]["succeeded"], 3, "{done}");
    let list = members(&app, &admin, &id).await;
    assert_eq!(list.len(), 3, "{list:?}");
    for m in &list {
        let device = app
            .device(&admin, m["device_id"].as_str().expect("device_id"))
            .await;
        assert_eq!(device["tags"]["site"], "north", "{device}");
        assert_eq!(m["version"], "1.0.0", "{m}");
    }
    // Only the members were offered the bundle, each once; the other site heard nothing.
    assert_eq!(offers(&app, &id).await, (3, 3));
    let south: Value = app
        .get(&admin, "/api/v1/devices?tag=site:south")
        .await
        .json()
        .await
        .expect("device list");
    let south = south["items"].as_array().expect("items");
    assert_eq!(south.len(), 2, "{south:?}");
    for d in south {
        let offered = scalar(
            &app,
            "SELECT COUNT(*) FROM device_offers WHERE device_id = $1",
            d["id"].as_str().expect("id"),
        )
        .await;
        assert_eq!(offered, 0, "{d}");
    }
}
