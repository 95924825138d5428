//! Dashboard workflows over HTTP with a signed-in session, as a browser posts
//! its forms: enrollment tokens with their join command, rollout abort and
//! rollback, the audit log's filters, CSRF on every mutating route, the
//! overview's expiring certificates and active rollouts, and the device form's
//! refusals.

use std::collections::BTreeSet;

use drover_tests::{DeviceKey, TestApp, shows_escaped, spawn_app, wait_until};
use serde_json::{Value, json};

use crate::dashboard::{now_ms, operator_with_password, page_csrf, sign_in};
use crate::rollouts::{create as create_rollout, model, rollout};

/// The text of the element with `id` up to its first `</tag>` (no nested tags of the same name).
fn element<'a>(html: &'a str, id: &str, tag: &str) -> &'a str {
    let start = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("#{id} on the page"));
    let end = html[start..]
        .find(&format!("</{tag}>"))
        .unwrap_or_else(|| panic!("#{id} is closed"));
    &html[start..start + end]
}

async fn enrollment_tokens(app: &TestApp, admin: &str) -> Value {
    app.get(admin, "/api/v1/enrollment-tokens")
        .await
        .json()
        .await
        .expect("tokens json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrollment_token_made_in_the_form_shows_a_join_command_that_enrolls() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let password = operator_with_password(&app, "olga", "operator").await;
    let (client, _) = sign_in(&app, "olga", &password).await;
    let (_, csrf) = page_csrf(&app, &client, "/tokens").await;
    let post = |fields: Vec<(&'static str, String)>| {
        let mut form = vec![
            ("csrf_token", csrf.clone()),
            ("uses", "2".to_string()),
            ("expires_in", "1h".to_string()),
            ("device_types", "rpi4".to_string()),
            ("tags", "site=berlin, line=3".to_string()),
        ];
        for (k, v) in fields {
            form.retain(|(key, _)| *key != k);
            form.push((k, v));
        }
        let client = client.clone();
        let url = app.url("/tokens/enrollment");
        async move { client.post(url).form(&form).send().await.expect("post") }
    };

    // Bad input comes back on the page with the server's words, and creates nothing.
    for (field, value, message) in [
        ("uses", "0", "uses: use a whole number from 1 to 100000"),
        ("uses", "two", "uses: use a whole number from 1 to 100000"),
        (
            "expires_in",
            "10s",
            "expires_in: use a duration from 1m to 365d",
        ),
        ("device_types", "<b>pi</b>", "device_types"),
        ("tags", "site", "is not KEY=VALUE"),
    ] {
        let res = post(vec![(field, value.to_string())]).await;
        assert_eq!(res.status(), 400, "{field}={value}");
        let html = res.text().await.expect("html");
        assert!(
            html.contains("class=\"flash error\" role=\"alert\"") && html.contains(message),
            "{field}={value} shows {message:?}"
        );
        assert!(!html.contains("id=\"join-command\""), "{field}={value}");
        assert!(!html.contains("<b>pi</b>"), "the message is escaped");
    }
    assert_eq!(
        enrollment_tokens(&app, &admin).await["total"],
        0,
        "no token was created"
    );

    let res = post(vec![]).await;
    assert_eq!(res.status(), 200);
    let html = res.text().await.expect("html");
    let join = element(&html, "join-command", "code");
    let join = &join[join.find('>').expect("code opens") + 1..];
    let device_port = app
        .device_base
        .rsplit(':')
        .next()
        .expect("device port")
        .to_string();
    let server = format!("https://{}:{device_port}", app.settings.public_hostnames[0]);
    let token = join
        .split_whitespace()
        .skip_while(|w| *w != "--token")
        .nth(1)
        .expect("the command names its token")
        .to_string();
    assert_eq!(
        join,
        format!(
            "drover-agent enroll --server {server} --token {token} --ca-hash {}",
            app.ca_hash
        )
    );
    let listed = enrollment_tokens(&app, &admin).await;
    assert_eq!(listed["total"], 1);
    let created = &listed["items"][0];
    assert!(token.starts_with(created["prefix"].as_str().expect("prefix")));
    assert_eq!(created["uses"], 2);
    assert_eq!(created["device_types"], json!(["rpi4"]));
    assert_eq!(created["tags"], json!({"site": "berlin", "line": "3"}));
    assert_eq!(created["created_by"], "user:olga");

    // The token works: a device enrolls with it and gets its tags.
    let res = app.enroll(&token, &DeviceKey::new(), "rpi4").await;
    assert_eq!(res.status(), 201);
    let enrolled: Value = res.json().await.expect("json");
    let device = app
        .device(&admin, enrolled["device_id"].as_str().expect("id"))
        .await;
    assert_eq!(device["tags"], json!({"site": "berlin", "line": "3"}));
    assert_eq!(device["status"], "accepted");
    let (page, _) = page_csrf(&app, &client, "/tokens").await;
    assert!(page.contains("<td>1 of 2</td>"), "one use left");
    assert!(!page.contains(&token), "the secret is not shown again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_are_aborted_and_rolled_back_from_their_page_and_a_viewer_cannot() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    // Devices that never come online: their rollouts wait in `running` for them.
    for _ in 0..2 {
        app.enrolled_device(&admin).await;
    }
    let bundle = model(&app, &admin, "1.0.0").await;
    let first = create_rollout(
        &app,
        &admin,
        json!({"name": "to abort", "bundle_id": bundle, "target": {"device_type": "rpi4"}, "phases": [{"percent": 100}]}),
    )
    .await;
    let first = first["id"].as_str().expect("id").to_owned();
    assert_eq!(rollout(&app, &admin, &first).await["state"], "running");

    // A viewer holds a session and its CSRF token, and is still refused.
    let password = operator_with_password(&app, "val", "viewer").await;
    let (viewer, _) = sign_in(&app, "val", &password).await;
    let (page, csrf) = page_csrf(&app, &viewer, &format!("/rollouts/{first}")).await;
    assert!(
        !page.contains(&format!("action=\"/rollouts/{first}/abort\"")),
        "no abort control for a viewer"
    );
    for action in ["abort", "rollback"] {
        let res = viewer
            .post(app.url(&format!("/rollouts/{first}/{action}")))
            .form(&[("csrf_token", csrf.as_str())])
            .send()
            .await
            .expect("post");
        assert_eq!(res.status(), 403, "{action}");
        assert!(
            res.text()
                .await
                .expect("html")
                .contains("this needs the operator role; you are a viewer")
        );
    }
    assert_eq!(rollout(&app, &admin, &first).await["state"], "running");

    let password = operator_with_password(&app, "olga", "operator").await;
    let (client, _) = sign_in(&app, "olga", &password).await;
    let (page, csrf) = page_csrf(&app, &client, &format!("/rollouts/{first}")).await;
    assert!(page.contains(&format!("action=\"/rollouts/{first}/abort\"")));
    let res = client
        .post(app.url(&format!("/rollouts/{first}/abort")))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .expect("abort");
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], format!("/rollouts/{first}"));
    let aborted = rollout(&app, &admin, &first).await;
    assert_eq!(aborted["state"], "aborted", "{aborted}");
    // An aborted rollout cannot be rolled back: the page says why.
    let res = client
        .post(app.url(&format!("/rollouts/{first}/rollback")))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .expect("rollback");
    assert_eq!(res.status(), 409);
    let html = res.text().await.expect("html");
    assert!(
        html.contains(&format!("rollout {first} is aborted; rollback needs it")),
        "the conflict is shown"
    );
    let res = client
        .post(app.url(&format!("/rollouts/{first}/explode")))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .expect("unknown action");
    assert_eq!(res.status(), 404);

    let second = create_rollout(
        &app,
        &admin,
        json!({"name": "to roll back", "bundle_id": bundle, "target": {"device_type": "rpi4"}, "phases": [{"percent": 100}]}),
    )
    .await;
    let second = second["id"].as_str().expect("id").to_owned();
    let res = client
        .post(app.url(&format!("/rollouts/{second}/rollback")))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .expect("rollback");
    assert_eq!(res.status(), 303);
    let state = rollout(&app, &admin, &second).await["state"].clone();
    assert!(
        state == "rolling_back" || state == "rolled_back",
        "rollback ordered: {state}"
    );
    let entries = app.audit(&admin, "actor=user:olga&action=rollout").await;
    let done: Vec<(&str, &str, &str)> = entries
        .iter()
        .filter_map(|e| {
            Some((
                e["action"].as_str()?,
                e["target"].as_str()?,
                e["outcome"].as_str()?,
            ))
        })
        .collect();
    assert_eq!(
        done,
        [
            ("rollout.rollback", second.as_str(), "success"),
            ("rollout.rollback", first.as_str(), "failure"),
            ("rollout.abort", first.as_str(), "success"),
        ],
        "newest first; the refused rollback is recorded as refused"
    );
}

/// The actions of the rows of an audit page, in order.
fn audit_rows(html: &str) -> Vec<String> {
    let Some(start) = html.find("<tbody>") else {
        return Vec::new();
    };
    let body = &html[start..html.find("</tbody>").expect("tbody closes")];
    body.split("<tr>")
        .skip(1)
        .map(|row| {
            let at = row.find("<td><code>").expect("action cell") + "<td><code>".len();
            row[at..at + row[at..].find("</code>").expect("code closes")].to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_page_shows_only_entries_matching_its_filters() {
    let app = spawn_app().await;
    let password = operator_with_password(&app, "ada", "admin").await;
    let (client, _) = sign_in(&app, "ada", &password).await;
    let (_, csrf) = page_csrf(&app, &client, "/tokens").await;
    let res = client
        .post(app.url("/users"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("username", "cyd"),
            ("password", "long-enough-pw"),
            ("role", "viewer"),
        ])
        .send()
        .await
        .expect("create user");
    assert_eq!(res.status(), 303);
    let res = client
        .post(app.url("/tokens/enrollment"))
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("uses", "1"),
            ("expires_in", "1h"),
            ("device_types", ""),
            ("tags", ""),
        ])
        .send()
        .await
        .expect("create token");
    assert_eq!(res.status(), 200);

    let (html, _) = page_csrf(&app, &client, "/audit?actor=user:ada&action=user.create").await;
    assert_eq!(audit_rows(&html), ["user.create"]);
    assert!(html.contains("<td>cyd</td>"), "the target");
    assert!(!html.contains("<td>user:admin</td>"));
    assert!(html.contains("value=\"user:ada\"") && html.contains("value=\"user.create\""));

    let (html, _) = page_csrf(&app, &client, "/audit?actor=user:ada").await;
    let rows = audit_rows(&html);
    assert_eq!(
        rows.iter().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            "auth.login".to_string(),
            "user.create".to_string(),
            "enrollment_token.create".to_string()
        ]),
        "{rows:?}"
    );
    assert!(!html.contains("<td>user:admin</td>"));

    // An action filter is a prefix: `user` matches every creation, the first admin's at the
    // first start, ada's by the admin and cyd's by ada, and nothing else.
    let (html, _) = page_csrf(&app, &client, "/audit?action=user").await;
    assert_eq!(
        audit_rows(&html),
        ["user.create", "user.create", "user.create"]
    );
    assert!(html.contains("<td>user:ada</td>") && html.contains("<td>user:admin</td>"));
    assert!(html.contains("(3 in all)"));

    // Markup in a filter is shown escaped and matches nothing.
    let res = client
        .get(app.url("/audit"))
        .query(&[
            ("actor", "<script>alert(1)</script>"),
            ("action", "\"><img src=x>"),
        ])
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 200);
    let html = res.text().await.expect("html");
    assert!(!html.contains("<script>alert(1)</script>") && !html.contains("<img src=x>"));
    assert!(shows_escaped(&html, "<script>alert(1)</script>"));
    assert!(shows_escaped(&html, "\"><img src=x>"));
    assert!(audit_rows(&html).is_empty() && html.contains("No entries match"));

    let res = client
        .get(app.url("/audit?from=yesterday"))
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 400);
    let html = res.text().await.expect("html");
    assert!(html.contains("from:"), "the bad field is named");
    assert!(html.contains("value=\"yesterday\""), "the form keeps it");
}

/// Every mutating dashboard route as its handler attribute names it, read from the server's
/// source: actix keeps no list of routes to ask at run time.
fn mutating_routes_in_source() -> BTreeSet<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/src/http/web");
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("the web handlers") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("source");
        for builder in ["web::post()", "web::put()", "web::patch()", "web::delete()"] {
            assert!(
                !source.contains(builder),
                "{} registers a route with {builder}; teach this test to read it",
                path.display()
            );
        }
        for line in source.lines().map(str::trim) {
            for method in ["post", "put", "patch", "delete"] {
                if let Some(rest) = line.strip_prefix(&format!("#[{method}(\"")) {
                    let route = rest.split('"').next().expect("route");
                    found.insert(format!("{} {route}", method.to_uppercase()));
                }
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutating_route_refuses_a_post_without_the_csrf_token() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let device = app.enrolled_device(&admin).await;
    let bundle = model(&app, &admin, "1.0.0").await;
    let r = create_rollout(
        &app,
        &admin,
        json!({"name": "held", "bundle_id": bundle, "target": {"device_type": "rpi4"}, "phases": [{"percent": 100}]}),
    )
    .await;
    let rollout_id = r["id"].as_str().expect("id").to_owned();
    let token = app.enrollment_token(&admin, json!({"uses": 1})).await;
    let token_id = token["id"].as_str().expect("id").to_owned();
    let password = operator_with_password(&app, "ada", "admin").await;
    let (client, _) = sign_in(&app, "ada", &password).await;
    let users: Value = app
        .get(&admin, "/api/v1/users")
        .await
        .json()
        .await
        .expect("users");
    let ada_id = users["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|u| u["username"] == "ada")
        .and_then(|u| u["id"].as_str())
        .expect("ada's id")
        .to_owned();

    // Each route pattern with the paths posted to it. Ids that name nothing are as good a probe
    // as real ones (a handler reached without the check answers 404, not 403); the real ones
    // let the test see that nothing changed. `/login` has its own CSRF check, a cookie paired
    // with the form (there is no session yet): `login_form_rejects_wrong_passwords_and_missing_csrf`.
    let d = device.id.as_str();
    let r = rollout_id.as_str();
    let probes: Vec<(&str, Vec<String>)> = vec![
        ("POST /logout", vec!["/logout".into()]),
        ("POST /account/password", vec!["/account/password".into()]),
        ("POST /users", vec!["/users".into()]),
        (
            "POST /users/{id}/delete",
            vec![format!("/users/{ada_id}/delete")],
        ),
        ("POST /tokens/api", vec!["/tokens/api".into()]),
        (
            "POST /tokens/api/{id}/revoke",
            vec!["/tokens/api/no-such-token/revoke".into()],
        ),
        ("POST /tokens/enrollment", vec!["/tokens/enrollment".into()]),
        (
            "POST /tokens/enrollment/{id}/revoke",
            vec![format!("/tokens/enrollment/{token_id}/revoke")],
        ),
        ("POST /alerts/rules", vec!["/alerts/rules".into()]),
        (
            "POST /alerts/rules/{id}/delete",
            vec!["/alerts/rules/no-such-rule/delete".into()],
        ),
        ("POST /bundles", vec!["/bundles".into()]),
        (
            "POST /bundles/artifacts",
            vec!["/bundles/artifacts?name=model.onnx".into()],
        ),
        (
            "POST /bundles/artifacts/{id}/delete",
            vec!["/bundles/artifacts/no-such-artifact/delete".into()],
        ),
        (
            "POST /bundles/{id}/delete",
            vec![format!("/bundles/{bundle}/delete")],
        ),
        ("POST /devices/{id}", vec![format!("/devices/{d}")]),
        (
            "POST /devices/{id}/accept",
            vec![format!("/devices/{d}/accept")],
        ),
        (
            "POST /devices/{id}/revoke",
            vec![format!("/devices/{d}/revoke")],
        ),
        (
            "POST /devices/{id}/decommission",
            vec![format!("/devices/{d}/decommission")],
        ),
        ("POST /rollouts", vec!["/rollouts".into()]),
        ("POST /rollouts/preview", vec!["/rollouts/preview".into()]),
        (
            "POST /rollouts/{id}/{action}",
            ["pause", "resume", "abort", "rollback"]
                .iter()
                .map(|a| format!("/rollouts/{r}/{a}"))
                .collect(),
        ),
        ("POST /webhooks", vec!["/webhooks".into()]),
        (
            "POST /webhooks/{id}/delete",
            vec!["/webhooks/no-such-hook/delete".into()],
        ),
    ];
    let listed: BTreeSet<String> = probes
        .iter()
        .map(|(route, _)| (*route).to_string())
        .chain(["POST /login".to_string()])
        .collect();
    assert_eq!(
        mutating_routes_in_source(),
        listed,
        "a mutating dashboard route was added or removed: list it here with a path to probe"
    );

    let tokens_before = enrollment_tokens(&app, &admin).await;
    // Plausible forms, so that only the missing token can be the reason for a refusal.
    let fields = [
        ("name", "probe"),
        ("username", "eve"),
        ("password", "long-enough-pw"),
        ("role", "admin"),
        ("uses", "1"),
        ("expires_in", "1h"),
        ("device_types", ""),
        ("tags", "site=x"),
        ("url", "http://127.0.0.1:9/hook"),
    ];
    for (route, paths) in &probes {
        for path in paths {
            for forged in [None, Some("not-the-token")] {
                let mut req = client.post(app.url(path)).form(&fields);
                if let Some(f) = forged {
                    req = req.header("x-csrf-token", f);
                }
                let res = req.send().await.expect("post");
                assert_eq!(res.status(), 403, "{route}: {path} with {forged:?}");
                let body = res.text().await.expect("body");
                assert!(
                    body.contains("reload the page and try again"),
                    "{route}: {path} says why: {body}"
                );
            }
        }
    }

    // Nothing changed.
    assert_eq!(app.device(&admin, d).await["status"], "accepted");
    assert_eq!(app.device(&admin, d).await["tags"], json!({}));
    assert_eq!(rollout(&app, &admin, r).await["state"], "running");
    let tokens = enrollment_tokens(&app, &admin).await;
    assert_eq!(tokens, tokens_before, "no token created or revoked");
    assert!(
        tokens["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|t| t["id"] == token_id.as_str() && t["state"] == "active")
    );
    let users: Value = app
        .get(&admin, "/api/v1/users")
        .await
        .json()
        .await
        .expect("users");
    assert_eq!(users["total"], 2, "none created, none deleted");
    let bundles: Value = app
        .get(&admin, "/api/v1/bundles")
        .await
        .json()
        .await
        .expect("bundles");
    assert_eq!(bundles["total"], 1);
    // The refused logout kept the session.
    page_csrf(&app, &client, "/").await;
    assert!(
        app.audit(&admin, "actor=user:ada")
            .await
            .iter()
            .all(|e| e["action"] == "auth.login"),
        "no change was audited for ada"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_names_expiring_certificates_and_shows_rollout_progress() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let soon = app.enrolled_device(&admin).await;
    let later = app.enrolled_device(&admin).await;
    let res = app
        .client
        .patch(app.url(&format!("/api/v1/devices/{}", soon.id)))
        .bearer_auth(&admin)
        .json(&json!({"name": "press-7"}))
        .send()
        .await
        .expect("rename");
    assert_eq!(res.status(), 200);
    // No endpoint issues a short certificate; renewal failing for 27 days is what this shows.
    let not_after = now_ms() + 3 * 86_400_000 + 3_600_000;
    let changed = drover_server::on_store!(&app.store, pool => sqlx::query(
        "UPDATE device_certificates SET not_after = $1 WHERE device_id = $2")
        .bind(not_after).bind(&soon.id).execute(pool).await.map(|r| r.rows_affected()))
    .expect("shorten the certificate");
    assert_eq!(changed, 1, "the device has one certificate");

    let bundle = model(&app, &admin, "1.0.0").await;
    let r = create_rollout(
        &app,
        &admin,
        json!({"name": "spring update", "bundle_id": bundle, "target": {"device_type": "rpi4"}, "phases": [{"percent": 100}]}),
    )
    .await;
    let id = r["id"].as_str().expect("id").to_owned();
    // Neither device comes online; one has reported success, as an agent would after its offer.
    drover_server::on_store!(&app.store, pool => sqlx::query(
        "INSERT INTO device_updates (device_id, rollout_id, bundle_id, seq, state, detail, version, updated_at)
         VALUES ($1, $2, $3, 1, 'succeeded', 'installed', '1.0.0', $4)")
        .bind(&soon.id).bind(&id).bind(&bundle).bind(now_ms()).execute(pool).await.map(|r| r.rows_affected()))
    .expect("seed a finished update");
    let counted = wait_until(std::time::Duration::from_secs(10), || async {
        let r = rollout(&app, &admin, &id).await;
        r["counts"]["succeeded"] == 1 && r["phase"] == 1
    })
    .await;
    assert!(counted, "{}", rollout(&app, &admin, &id).await);

    let password = operator_with_password(&app, "pia", "viewer").await;
    let (client, _) = sign_in(&app, "pia", &password).await;
    let (html, _) = page_csrf(&app, &client, "/").await;
    assert!(html.contains("Certificates expiring within 14 days (1)"));
    let expiring = element(&html, "expiring", "ul");
    assert!(
        expiring.contains(&format!("<a href=\"/devices/{}\">press-7</a>", soon.id)),
        "{expiring}"
    );
    assert!(
        expiring.contains("certificate expires in 3 d"),
        "{expiring}"
    );
    assert!(!expiring.contains(&later.id));

    let active = element(&html, "active-rollouts", "ul");
    assert!(
        active.contains(&format!("<a href=\"/rollouts/{id}\">spring update</a>")),
        "{active}"
    );
    assert!(
        active.contains("state-running\">running</span>"),
        "{active}"
    );
    // Phases are stored from 0 and shown from 1.
    assert!(active.contains("detector 1.0.0 · phase 1 of 1"), "{active}");
    assert!(
        active.contains("<progress max=\"2\" value=\"1\""),
        "{active}"
    );
    assert!(active.contains(">50%</progress>"), "{active}");
    assert!(active.contains("1 succeeded of 2"), "{active}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tags_on_the_device_form_are_a_400_naming_them_and_change_nothing() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let d = app.enrolled_device(&admin).await;
    let password = operator_with_password(&app, "olga", "operator").await;
    let (client, _) = sign_in(&app, "olga", &password).await;
    let page = format!("/devices/{}", d.id);
    let (_, csrf) = page_csrf(&app, &client, &page).await;
    let save = |name: &str, tags: &str| {
        client
            .post(app.url(&page))
            .form(&[
                ("csrf_token", csrf.as_str()),
                ("name", name),
                ("tags", tags),
            ])
            .send()
    };

    for (tags, message) in [
        ("site=berlin\nnot a pair", "is not KEY=VALUE"),
        ("<b>k</b>=v", "use 1 to 64 letters, digits"),
    ] {
        let res = save("renamed", tags).await.expect("post");
        assert_eq!(res.status(), 400, "{tags}");
        let html = res.text().await.expect("html");
        let alert = element(&html, "device-name", "main");
        assert!(
            alert.contains("class=\"flash error\" role=\"alert\">tags: ")
                && alert.contains(message),
            "{tags}: the page shows {message:?}"
        );
        assert!(!html.contains("<b>k</b>"), "escaped");
        assert!(
            html.contains("action=\"/devices/"),
            "the form is shown again"
        );
        // As typed, to correct rather than type again.
        let form = element(&html, "d-name", "textarea");
        assert!(form.contains("value=\"renamed\""), "{form}");
        assert!(
            shows_escaped(form.rsplit('>').next().unwrap_or(""), tags),
            "{tags}: the tags as typed in {form}"
        );
    }
    let device = app.device(&admin, &d.id).await;
    assert_ne!(device["name"], "renamed", "nothing saved");
    assert_eq!(device["tags"], json!({}));

    // A bad name is the operator's to fix too.
    let res = save(" ", "site=berlin").await.expect("post");
    assert_eq!(res.status(), 400);
    assert!(
        res.text()
            .await
            .expect("html")
            .contains("name: use 1 to 128 printable characters")
    );

    let res = save("renamed", "site=berlin\nline=3").await.expect("post");
    assert_eq!(res.status(), 303);
    let device = app.device(&admin, &d.id).await;
    assert_eq!(device["name"], "renamed");
    assert_eq!(device["tags"], json!({"site": "berlin", "line": "3"}));

    // The device's state forbidding an action stays a conflict.
    let res = client
        .post(app.url(&format!("/devices/{}/revoke", d.id)))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .expect("revoke");
    assert_eq!(res.status(), 303);
    let res = client
        .post(app.url(&format!("/devices/{}/accept", d.id)))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .expect("accept");
    assert_eq!(res.status(), 409);
    assert!(
        res.text()
            .await
            .expect("html")
            .contains("a revoked device cannot be accepted")
    );
}
