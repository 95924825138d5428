//! The local intake as device programs see it: a real Unix socket (and the HTTP listener) over a
//! real spool in a temporary state directory, and the `drover-agent send` binary against it.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use drover_agent::report::SharedState;
use drover_agent::report::intake::{self, Intake, SharedSpool};
use drover_agent::report::spool::{SPOOL_DIR, Spool, depth_on_disk};
use drover_proto::Epoch;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::Notify;

const NOW: i64 = 1_732_300_000_000;

fn now() -> i64 {
    NOW
}

/// An intake over a fresh spool in `dir`, serving `dir/intake.sock`.
fn start(dir: &Path, max_defer_s: u64) -> (SharedSpool, SharedState, Intake) {
    let spool = Spool::open(&dir.join(SPOOL_DIR), 1 << 20, Epoch::from_random(&[9; 8]))
        .expect("open the spool");
    let spool = Arc::new(Mutex::new(spool));
    let shared = SharedState::default();
    let intake = Intake::new(
        Arc::clone(&spool),
        shared.clone(),
        max_defer_s,
        Arc::new(Notify::new()),
    );
    let listener = intake::bind_socket(&intake::socket_path(dir)).expect("bind the socket");
    tokio::spawn(intake::serve_socket(listener, intake.clone(), now));
    (spool, shared, intake)
}

async fn answers(dir: &Path, text: &str, count: usize) -> Vec<Value> {
    let stream = intake::connect(dir).await.expect("connect");
    let (read, mut write) = stream.into_split();
    write.write_all(text.as_bytes()).await.expect("write");
    let mut lines = BufReader::new(read).lines();
    let mut out = Vec::new();
    for _ in 0..count {
        let line = lines.next_line().await.expect("read").expect("an answer");
        out.push(serde_json::from_str(&line).expect("JSON"));
    }
    out
}

#[tokio::test]
async fn each_line_gets_one_answer_and_bad_lines_do_not_break_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _, _) = start(dir.path(), 3600);
    let text = concat!(
        "{\"metrics\":{\"temp_c\":48.2},\"ts\":1732300000123}\n",
        "{\"metrics\":{\"temp c\":1}}\n",
        "\n",
        "{\"metrics\":{\"load\":0.5}}\n",
    );
    let got = answers(dir.path(), text, 3).await;
    assert_eq!(got[0], serde_json::json!({"ok": true, "seq": 1}));
    assert_eq!(got[1]["ok"], false);
    assert!(
        got[1]["error"]
            .as_str()
            .unwrap()
            .contains("metric name `temp c`")
    );
    assert_eq!(got[2], serde_json::json!({"ok": true, "seq": 2}));
    assert_eq!(spool.lock().unwrap().depth(), 2);
    assert_eq!(depth_on_disk(&dir.path().join(SPOOL_DIR)).unwrap(), 2);
}

#[tokio::test]
async fn an_overlong_line_is_refused_and_the_next_line_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _, _) = start(dir.path(), 3600);
    let text = format!(
        "{{\"metrics\":{{\"x\":1}},\"pad\":\"{}\"}}\n{{\"metrics\":{{\"x\":2}}}}\n",
        "p".repeat(100_000)
    );
    let got = answers(dir.path(), &text, 2).await;
    assert!(
        got[0]["error"]
            .as_str()
            .unwrap()
            .contains("longer than 65536")
    );
    assert_eq!(got[1], serde_json::json!({"ok": true, "seq": 1}));
    assert_eq!(spool.lock().unwrap().depth(), 1);
}

#[tokio::test]
async fn defer_updates_is_stored_and_capped_by_max_defer_s() {
    let dir = tempfile::tempdir().unwrap();
    let (_, shared, _) = start(dir.path(), 60);
    let text = format!(
        "{{\"control\":\"defer_updates\",\"until\":{}}}\n",
        NOW + 3_600_000
    );
    let got = answers(dir.path(), &text, 1).await;
    assert_eq!(
        got[0],
        serde_json::json!({"ok": true, "until": NOW + 60_000})
    );
    assert_eq!(shared.lock().defer_until, Some(NOW + 60_000));

    let dir = tempfile::tempdir().unwrap();
    let (_, shared, _) = start(dir.path(), 0);
    let got = answers(dir.path(), &text, 1).await;
    assert!(
        got[0]["error"]
            .as_str()
            .unwrap()
            .contains("max_defer_s = 0")
    );
    assert_eq!(shared.lock().defer_until, None);
}

#[tokio::test]
async fn a_second_agent_cannot_take_a_live_socket_but_a_stale_one_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let _running = start(dir.path(), 3600);
    let err = intake::bind_socket(&intake::socket_path(dir.path())).unwrap_err();
    assert!(err.to_string().contains("already running"), "{err}");

    let stale = tempfile::tempdir().unwrap();
    let path = intake::socket_path(stale.path());
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let _listener = intake::bind_socket(&path).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_hands_a_reading_to_the_running_intake() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _, _) = start(dir.path(), 3600);
    let state_dir = dir.path().to_owned();
    let seq = tokio::task::spawn_blocking(move || {
        intake::send(&state_dir, &["temp_c=40".into(), "fan=1200".into()])
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(seq, 1);
    let binary = env!("CARGO_BIN_EXE_drover-agent");
    let state_dir = dir.path().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(binary)
            .arg("send")
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("temp_c=41.5")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "2\n");
    assert_eq!(spool.lock().unwrap().depth(), 2);
}

#[test]
fn send_without_a_running_agent_or_with_a_bad_argument_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_drover-agent");
    let run = |arg: &str| {
        Command::new(binary)
            .args(["send", "--state-dir"])
            .arg(dir.path())
            .arg(arg)
            .output()
            .unwrap()
    };
    let output = run("temp_c=40");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("drover-agent: the agent is not running"),
        "{stderr}"
    );
    let output = run("temp_c");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`temp_c` is not METRIC=VALUE"), "{stderr}");
}

#[tokio::test]
async fn the_http_intake_takes_one_reading_or_an_array() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _, intake) = start(dir.path(), 3600);
    let listener = intake::bind_http("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(intake::serve_http(listener, intake, now));
    let post = |path: &'static str, body: String| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, serde_json::from_str::<Value>(body).unwrap())
    };
    let (status, body) = post("/v1/telemetry", r#"{"metrics":{"temp_c":40}}"#.into()).await;
    assert_eq!(
        (status, body),
        (200, serde_json::json!({"ok": true, "seq": 1}))
    );
    let (status, body) = post(
        "/v1/telemetry",
        r#"[{"metrics":{"a":1}},{"metrics":{}}]"#.into(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["ok"], false);
    assert_eq!(
        body["results"][0],
        serde_json::json!({"ok": true, "seq": 2})
    );
    assert!(
        body["results"][1]["error"]
            .as_str()
            .unwrap()
            .contains("`metrics` is empty")
    );
    let (status, _) = post("/elsewhere", "{}".into()).await;
    assert_eq!(status, 404);
    assert_eq!(spool.lock().unwrap().depth(), 2);
}
