//! Issue 13's gated rollouts end to end, over real simulated devices: a model that installs and
//! passes its health check but is 50 % slower halts in the canary phase (and rolls back), the
//! same rollout without the slowdown completes, and a gate without enough readings holds its
//! phase and then halts it. The simulated devices are alike (`--spread 0`), so the difference
//! the gates see is the version's alone.

use std::time::Duration;

use drover_tests::{TestApp, problem, spawn_app, wait_until};
use serde_json::{Value, json};

use crate::rollouts::{create, event_kinds, fleet, in_phase, members, model, until_state};

/// Alike devices (each reads once a second, as `fleet` starts them).
const FLAGS: [&str; 4] = ["--spread", "0", "--noise", "0.02"];

/// The detail of the rollout's first event of `kind`.
async fn event_detail(app: &TestApp, admin: &str, id: &str, kind: &str) -> String {
    let events: Value = app
        .get(admin, &format!("/api/v1/rollouts/{id}/events"))
        .await
        .json()
        .await
        .expect("events json");
    events
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["kind"] == kind)
        .and_then(|e| e["detail"].as_str())
        .unwrap_or_else(|| panic!("a {kind} event in {events}"))
        .to_owned()
}

/// Ids of the devices reporting `bundle` installed (`detector:1.0.0`), sorted.
async fn on_version(app: &TestApp, admin: &str, bundle: &str) -> Vec<String> {
    let list: Value = app
        .get(
            admin,
            &format!("/api/v1/devices?version={bundle}&per_page=500"),
        )
        .await
        .json()
        .await
        .expect("device list");
    let mut ids: Vec<String> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids
}

fn gated(bundle: &str, min_samples: i64) -> Value {
    json!({"name": "gated model", "bundle_id": bundle, "target": {"device_type": "rpi4"},
           "phases": [{"percent": 20, "soak_seconds": 8}, {"percent": 100, "soak_seconds": 4}],
           "failure_threshold_pct": 0, "auto_rollback": true,
           "gates": [{"metric": "inference_ms", "stat": "mean", "max_increase_pct": 20, "min_samples": min_samples}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slower_model_halts_at_the_canaries_and_the_same_rollout_without_it_completes() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let mut flags = FLAGS.to_vec();
    flags.extend(["--degrade-versions", "2.0.0:inference_ms=1.5"]);
    let sim = fleet(&app, &admin, 10, "fleet", &flags).await;
    // Everyone on 1.0.0 first, so that a rollback has a version to return to.
    let first = model(&app, &admin, "1.0.0").await;
    let r = create(
        &app,
        &admin,
        json!({"name": "base", "bundle_id": first, "target": {"device_type": "rpi4"}, "phases": [{"percent": 100}]}),
    )
    .await;
    until_state(&app, &admin, r["id"].as_str().expect("id"), "completed").await;

    let slow = model(&app, &admin, "2.0.0").await;
    let r = create(&app, &admin, gated(&slow, 5)).await;
    let id = r["id"].as_str().expect("id").to_owned();
    let ended = until_state(&app, &admin, &id, "rolled_back").await;
    assert_eq!(
        ended["reason"], "every device the rollout updated was rolled back",
        "{ended}"
    );
    let kinds = event_kinds(&app, &admin, &id).await;
    assert!(kinds.iter().any(|k| k == "rollback_ordered"), "{kinds:?}");
    // The halt names the phase, the gate and its metric, and carries the comparison.
    let reason = event_detail(&app, &admin, &id, "halted").await;
    assert!(
        reason.starts_with("phase 1 failed its gate inference_ms mean: updated ")
            && reason.contains(" readings, 2 devices) vs control ")
            && reason.ends_with(", limit +20%"),
        "{reason}"
    );
    let verdict = &ended["gate_verdicts"][0];
    assert_eq!(verdict["outcome"], "fail", "{ended}");
    assert_eq!(verdict["phase"], 1, "judged in the canary phase");
    assert_eq!(verdict["baseline_kind"], "control");
    let change = verdict["change_pct"].as_f64().expect("change");
    assert!(
        (25.0..65.0).contains(&change),
        "well over the limit, near +50 %: {verdict}"
    );
    assert!(
        verdict["updated_samples"].as_i64().expect("samples") >= 5
            && verdict["baseline_samples"].as_i64().expect("samples") >= 5
    );
    let list = members(&app, &admin, &id).await;
    let canaries = in_phase(&list, 1);
    assert_eq!(canaries.len(), 2, "two canaries");
    for d in &canaries {
        assert_eq!(d["state"], "rolled_back", "{d}");
        assert_eq!(d["version"], "1.0.0", "back on the previous version: {d}");
    }
    assert!(
        in_phase(&list, 2).iter().all(|d| d["state"] == "pending"),
        "the rest of the fleet never got it: {list:?}"
    );
    // What the devices themselves report installed: the whole fleet on 1.0.0 again.
    let mut canary_ids: Vec<String> = canaries
        .iter()
        .map(|d| d["device_id"].as_str().expect("id").to_owned())
        .collect();
    canary_ids.sort();
    let back = wait_until(Duration::from_secs(30), || async {
        let on_old = on_version(&app, &admin, "detector:1.0.0").await;
        on_old.len() == 10
            && canary_ids.iter().all(|c| on_old.contains(c))
            && on_version(&app, &admin, "detector:2.0.0").await.is_empty()
    })
    .await;
    assert!(
        back,
        "the canaries report 1.0.0 installed: {:?} on 1.0.0, {:?} on 2.0.0",
        on_version(&app, &admin, "detector:1.0.0").await,
        on_version(&app, &admin, "detector:2.0.0").await
    );
    // The rollout's page shows the comparison that decided.
    let password = crate::dashboard::operator_with_password(&app, "gus", "viewer").await;
    let (client, _) = crate::dashboard::sign_in(&app, "gus", &password).await;
    let page = client
        .get(app.url(&format!("/rollouts/{id}")))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    let start = page
        .find(r#"id="gate-verdicts""#)
        .unwrap_or_else(|| panic!("the verdicts' table in {page}"));
    let table = &page[start..start + page[start..].find("</table>").expect("its end")];
    let value = |v: &Value| format!("{:.3}", v.as_f64().expect("a value"));
    for shown in [
        format!(
            "{} <span class=\"muted\">({} readings, {} devices)</span>",
            value(&verdict["updated"]),
            verdict["updated_samples"],
            verdict["updated_devices"]
        ),
        format!(
            "{} <span class=\"muted\">(control: {} readings, {} devices)</span>",
            value(&verdict["baseline"]),
            verdict["baseline_samples"],
            verdict["baseline_devices"]
        ),
        format!("{change:+.1}%"),
        "<td>+20%</td>".to_owned(),
        "<td>1</td>".to_owned(),
        ">fail</span>".to_owned(),
    ] {
        assert!(table.contains(&shown), "{shown} in {table}");
    }

    // The same rollout of a version that is not slower goes all the way.
    let fine = model(&app, &admin, "2.0.1").await;
    let r = create(&app, &admin, gated(&fine, 5)).await;
    let id = r["id"].as_str().expect("id").to_owned();
    let done = until_state(&app, &admin, &id, "completed").await;
    let verdicts = done["gate_verdicts"].as_array().expect("verdicts");
    assert_eq!(verdicts.len(), 2, "one verdict per phase: {done}");
    assert!(verdicts.iter().all(|v| v["outcome"] == "pass"), "{done}");
    assert_eq!(
        verdicts[1]["baseline_kind"], "before",
        "no control group in the last phase"
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_without_enough_readings_holds_its_phase_then_halts_it() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let sim = fleet(&app, &admin, 4, "fleet", &FLAGS).await;
    let bundle = model(&app, &admin, "3.0.0").await;
    let mut body = gated(&bundle, 1_000_000);
    body["phases"] =
        json!([{"percent": 50, "soak_seconds": 2}, {"percent": 100, "soak_seconds": 2}]);
    body["auto_rollback"] = json!(false);
    let r = create(&app, &admin, body).await;
    let id = r["id"].as_str().expect("id").to_owned();
    let halted = until_state(&app, &admin, &id, "halted").await;
    let kinds = event_kinds(&app, &admin, &id).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "gate_held").count(),
        3,
        "held three times first: {kinds:?}"
    );
    assert!(
        halted["reason"]
            .as_str()
            .is_some_and(|r| r.contains("too few samples")),
        "{halted}"
    );
    assert_eq!(halted["gate_verdicts"][0]["outcome"], "too_few_samples");
    let list = members(&app, &admin, &id).await;
    assert!(in_phase(&list, 2).iter().all(|d| d["state"] == "pending"));
    sim.stop().await;
}

#[tokio::test]
async fn bad_gates_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let _device = app.enrolled_device(&admin).await;
    let bundle = model(&app, &admin, "1.0.0").await;
    for (gates, phases, field) in [
        (
            json!([{"metric": "inference_ms", "stat": "median", "max_increase_pct": 1, "min_samples": 1}]),
            json!([{"percent": 100, "soak_seconds": 5}]),
            "gates[0]",
        ),
        (
            json!([{"metric": "inference_ms", "stat": "mean", "min_samples": 1}]),
            json!([{"percent": 100, "soak_seconds": 5}]),
            "gates[0]",
        ),
        (
            json!([{"metric": "<b>", "stat": "mean", "max_increase_pct": 1, "min_samples": 1}]),
            json!([{"percent": 100, "soak_seconds": 5}]),
            "gates[0].metric",
        ),
        (
            json!([{"metric": "m", "stat": "mean", "max_increase_pct": -1, "min_samples": 1}]),
            json!([{"percent": 100, "soak_seconds": 5}]),
            "gates[0]",
        ),
        (
            json!([{"metric": "m", "stat": "mean", "max_increase_pct": 1, "min_samples": 1}]),
            json!([{"percent": 100}]),
            "phases[0].soak_seconds",
        ),
        (
            json!({"metric": "m"}),
            json!([{"percent": 100, "soak_seconds": 5}]),
            "gates",
        ),
    ] {
        let res = app
            .post_json(
                &admin,
                "/api/v1/rollouts",
                &json!({"name": "g", "bundle_id": bundle, "target": {"device_type": "rpi4"},
                        "phases": phases, "gates": gates}),
            )
            .await;
        let p = problem(res, 400).await;
        assert!(
            p["detail"].as_str().is_some_and(|d| d.contains(field)),
            "{field}: {p}"
        );
    }
    let list: Value = app
        .get(&admin, "/api/v1/rollouts")
        .await
        .json()
        .await
        .expect("list");
    assert_eq!(list["total"], 0, "nothing was stored");
}
