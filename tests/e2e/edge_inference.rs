//! Issue 14: the edge-inference example's demo (`examples/edge-inference/demo.py`) runs end to
//! end — server, agent with a `files` installer, the Python service, detector 1.0.0 then 2.0.0
//! rolled out — and the server stored readings made with each version, as the fleet metrics
//! grouped by version show.

use serde_json::Value;

use drover_tests::TestDb;

use crate::python_sdk::python;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_inference_demo_stores_readings_of_both_model_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TestDb::new(dir.path()).await;
    let out = python(&db)
        .args(["examples/edge-inference/demo.py", "--seconds", "3"])
        .env("TMPDIR", dir.path())
        .output()
        .expect("run python3 examples/edge-inference/demo.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the demo failed:\n{stdout}\n{stderr}");
    let raw = stdout
        .lines()
        .find_map(|l| l.strip_prefix("raw answer for confidence: "))
        .unwrap_or_else(|| panic!("no fleet metrics answer in:\n{stdout}"));
    let answer: Value = serde_json::from_str(raw).expect("fleet metrics JSON");
    let groups = answer["groups"].as_array().expect("groups");
    for version in ["1.0.0", "2.0.0"] {
        let group = groups
            .iter()
            .find(|g| g["key"] == version)
            .unwrap_or_else(|| panic!("no readings of detector {version}: {answer}"));
        assert_eq!(group["devices"], 1, "{group}");
        let mean = group["mean"].as_f64().expect("mean");
        assert!(
            (0.5..=1.0).contains(&mean),
            "confidence is max(p, 1 - p): {group}"
        );
    }
    // The second model is the confident one (that is why it was rolled out).
    let mean = |v: &str| {
        groups.iter().find(|g| g["key"] == v).expect("group")["mean"]
            .as_f64()
            .expect("mean")
    };
    assert!(mean("2.0.0") > mean("1.0.0"), "{answer}");
    assert!(
        stdout.contains("both model versions' readings are stored"),
        "{stdout}"
    );
}
