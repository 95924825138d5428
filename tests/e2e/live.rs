//! The dashboard's live updates: `GET /live` (Server-Sent Events) tells open
//! pages what changed, from real MQTT messages through the real ingest.

use std::time::Duration;

use drover_tests::*;
use rumqttc::QoS;
use serde_json::json;

use crate::dashboard::{operator_with_password, sign_in};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// An open event stream and what it has delivered so far.
struct Stream {
    res: reqwest::Response,
    seen: String,
}

impl Stream {
    async fn open(app: &TestApp, client: &reqwest::Client, path: &str) -> Stream {
        let res = client.get(app.url(path)).send().await.expect("live");
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(
            res.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("text/event-stream")
        );
        let mut s = Stream {
            res,
            seen: String::new(),
        };
        s.until("event: hello").await;
        s
    }

    /// Reads until `needle` has arrived (after what was consumed before); answers the text read.
    async fn until(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(at) = self.seen.find(needle) {
                let upto = at + needle.len();
                let text = self.seen[..upto].to_string();
                self.seen.drain(..upto);
                return text;
            }
            match tokio::time::timeout_at(deadline, self.res.chunk()).await {
                Ok(Ok(Some(c))) => self.seen.push_str(&String::from_utf8_lossy(&c)),
                Ok(Ok(None)) => panic!("the stream ended before {needle:?}: {}", self.seen),
                Ok(Err(e)) => panic!("the stream failed before {needle:?}: {e}"),
                Err(_) => panic!("no {needle:?} within 15 s; got {:?}", self.seen),
            }
        }
    }
}

#[tokio::test]
async fn pages_hear_presence_readings_and_health_as_they_are_stored() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let password = operator_with_password(&app, "watcher", "viewer").await;
    let (client, _) = sign_in(&app, "watcher", &password).await;

    let d = app.enrolled_device(&admin).await;
    let mut fleet = Stream::open(&app, &client, "/live").await;
    let mut page = Stream::open(&app, &client, &format!("/live?device={}", d.id)).await;

    let (mqtt, mut eventloop) = mqtt_connect(app.mqtt_options(&d.id, &d))
        .await
        .expect("connects");
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    mqtt.publish(
        d.topic("state"),
        QoS::AtLeastOnce,
        true,
        json!({"online": true, "ts": now_ms()}).to_string(),
    )
    .await
    .expect("publish");
    fleet.until("event: fleet").await;
    page.until("event: device").await;
    let overview = client
        .get(app.url("/"))
        .send()
        .await
        .expect("overview")
        .text()
        .await
        .expect("html");
    assert!(
        overview.contains(r#"id="presence-online" href="/devices?status=accepted&amp;presence=online"><span class="n">1</span>"#),
        "the overview counts the device online: {overview}"
    );
    assert!(
        overview.contains("connected"),
        "its event is among the recent ones"
    );
    assert!(
        overview.contains("No recent health report (1)")
            && overview.contains("online, no health report yet"),
        "an online device that never reported health needs attention"
    );

    let ts = now_ms();
    mqtt.publish(
        d.topic("telemetry"),
        QoS::AtLeastOnce,
        false,
        json!({"epoch": "e1", "seq": 1, "ts": ts, "metrics": {"temp_c": 41.25}}).to_string(),
    )
    .await
    .expect("publish");
    let text = page.until("\n\n").await;
    let text = if text.contains("event: readings") {
        text
    } else {
        page.until("event: readings").await;
        page.until("\n\n").await
    };
    assert!(
        text.contains(&format!(r#"["temp_c",{ts},41.25]"#)),
        "the reading itself arrives: {text}"
    );

    // Another device's readings do not reach this page.
    let other = app.enrolled_device(&admin).await;
    let (mqtt2, mut eventloop2) = mqtt_connect(app.mqtt_options(&other.id, &other))
        .await
        .expect("connects");
    tokio::spawn(async move { while eventloop2.poll().await.is_ok() {} });
    mqtt2
        .publish(
            other.topic("telemetry"),
            QoS::AtLeastOnce,
            false,
            json!({"epoch": "e2", "seq": 1, "ts": now_ms(), "metrics": {"temp_c": 99.5}})
                .to_string(),
        )
        .await
        .expect("publish");
    mqtt.publish(
        d.topic("telemetry"),
        QoS::AtLeastOnce,
        false,
        json!({"epoch": "e1", "seq": 2, "ts": now_ms(), "metrics": {"temp_c": 42.5}}).to_string(),
    )
    .await
    .expect("publish");
    let text = page.until("42.5").await;
    assert!(!text.contains("99.5"), "only its own device: {text}");

    // A stopping server ends the streams instead of waiting for them.
    app.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match page.res.chunk().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the stream ends when the server stops");
}

#[tokio::test]
async fn the_stream_needs_a_session_and_a_well_formed_focus() {
    let app = spawn_app().await;
    let anonymous = browser();
    let res = anonymous.get(app.url("/live")).send().await.expect("live");
    assert_eq!(res.status(), 303, "no session: to the login page");
    assert!(
        res.headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|l| l.starts_with("/login")),
    );

    let password = operator_with_password(&app, "peeker", "viewer").await;
    let (client, _) = sign_in(&app, "peeker", &password).await;
    let res = client
        .get(app.url("/live?device=%3Cscript%3E"))
        .send()
        .await
        .expect("live");
    assert_eq!(res.status(), 400);
    let body = res.text().await.expect("body");
    assert!(body.contains("device is not an id"), "{body}");
    assert!(
        !body.contains("<script>"),
        "the bad value is not echoed raw"
    );
}
