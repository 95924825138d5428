//! The device side of updates: the offer a device fetches, and status
//! reports that never go backwards (an older seq or anything after a final
//! state is acknowledged but not stored).

use drover_proto::UpdateOffer;
use drover_tests::{problem, spawn_app};
use serde_json::{Value, json};

use crate::bundles::{artifact, bundle_body, create_bundle, sample};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_fetches_its_offer_and_its_reports_only_move_forward() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let a = artifact(&app, &admin, "model.onnx", sample(70_000, 3)).await;
    let bundle = create_bundle(&app, &admin, &bundle_body("detector", "1.2.0", &[&a])).await;
    let bundle_id = bundle["id"].as_str().expect("id").to_string();
    let d = app.enrolled_device(&admin).await;
    let other = app.enrolled_device(&admin).await;
    let device = app.device_client(Some((&d.cert_pem, &d.key_pem)));
    let url = |path: &str| format!("{}/device/v1{path}", app.device_base);

    let res = device.get(url("/update")).send().await.expect("update");
    assert_eq!(res.status(), 204, "nothing offered yet");

    drover_server::bundles::offer(&app.store, &d.id, &bundle_id, Some("r1"))
        .await
        .expect("offer");
    let res = device.get(url("/update")).send().await.expect("update");
    assert_eq!(res.status(), 200);
    let offer: UpdateOffer = res.json().await.expect("an UpdateOffer");
    assert_eq!(offer.rollout_id, "r1");
    assert_eq!(offer.bundle_id, bundle_id);
    assert_eq!(offer.payloads.len(), 1);
    assert_eq!(offer.payloads[0].size, 70_000);
    let bytes = device
        .get(url(offer.payloads[0].url.trim_start_matches("/device/v1")))
        .send()
        .await
        .expect("blob")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(
        bytes.to_vec(),
        sample(70_000, 3),
        "the offer's url serves the payload"
    );
    let res = app
        .device_client(Some((&other.cert_pem, &other.key_pem)))
        .get(url("/update"))
        .send()
        .await
        .expect("update");
    assert_eq!(res.status(), 204, "offers are per device");

    let report = |body: Value| {
        let device = device.clone();
        let url = url("/update/r1/status");
        async move { device.post(url).json(&body).send().await.expect("report") }
    };
    let answer = |res: reqwest::Response| async move {
        assert_eq!(res.status(), 200);
        res.json::<Value>().await.expect("json")
    };
    let v = answer(report(json!({"seq": 1, "state": "downloading", "detail": ""})).await).await;
    assert_eq!(v["recorded"], true);
    let v =
        answer(report(json!({"seq": 3, "state": "installing", "detail": "writing"})).await).await;
    assert_eq!(v["recorded"], true);
    // A retried older report is acknowledged and changes nothing.
    let v = answer(report(json!({"seq": 2, "state": "verifying", "detail": ""})).await).await;
    assert_eq!(
        (v["recorded"].clone(), v["state"].clone()),
        (json!(false), json!("installing"))
    );
    let v = answer(
        report(
            json!({"seq": 4, "state": "reverted", "detail": "health check failed (exit 3)",
                      "version": "1.1.0", "log_tail": "selftest: camera not found"}),
        )
        .await,
    )
    .await;
    assert_eq!(v["recorded"], true);
    // A final state never changes, and the offer is done.
    let v = answer(report(json!({"seq": 5, "state": "succeeded", "detail": ""})).await).await;
    assert_eq!(
        (v["recorded"].clone(), v["state"].clone()),
        (json!(false), json!("reverted"))
    );
    let res = device.get(url("/update")).send().await.expect("update");
    assert_eq!(res.status(), 204, "a finished offer is not offered again");

    // The failure and its log tail are in the device's events.
    let events: Value = app
        .get(&admin, &format!("/api/v1/devices/{}/events", d.id))
        .await
        .json()
        .await
        .expect("events");
    let text = events.to_string();
    assert!(
        text.contains("update_reverted") && text.contains("camera not found"),
        "{text}"
    );

    // The device record shows where its update stands.
    let v = app.device(&admin, &d.id).await;
    assert_eq!(v["update"]["state"], "reverted", "{v}");
    assert_eq!(v["update"]["version"], "1.1.0");

    // Bad reports name the problem; unknown rollouts are 404.
    let res = report(json!({"seq": 6, "state": "exploded", "detail": ""})).await;
    problem(res, 400).await;
    let res = report(json!({"seq": 6, "state": "failed", "surprise": 1})).await;
    problem(res, 400).await;
    let res = report(json!({"seq": 6, "state": "failed", "version": ""})).await;
    assert!(
        problem(res, 400).await["detail"]
            .as_str()
            .expect("detail")
            .contains("version")
    );
    let res = device
        .post(url("/update/nope/status"))
        .json(&json!({"seq": 1, "state": "failed"}))
        .send()
        .await
        .expect("report");
    problem(res, 404).await;
    let res = app
        .device_client(Some((&other.cert_pem, &other.key_pem)))
        .post(url("/update/r1/status"))
        .json(&json!({"seq": 9, "state": "succeeded"}))
        .send()
        .await
        .expect("report");
    problem(res, 404).await;
    let anonymous = app.device_client(None).get(url("/update")).send().await;
    assert!(
        anonymous
            .map(|r| r.status().as_u16() == 401 || r.status().as_u16() == 403)
            .unwrap_or(true),
        "no client certificate, no offer"
    );
}
