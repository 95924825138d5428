//! The local intake for device programs (CONTRACT: "Local intake for device programs"): a Unix
//! socket `STATE_DIR/intake.sock` taking newline-delimited JSON, and optionally the same over
//! HTTP on loopback. Every line is validated here; a reading is answered `{"ok":true,"seq":N}`
//! only once it is durable in the spool, a bad line is answered with an error naming the problem
//! and never spooled, and neither breaks the connection.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use drover_proto::{SafeName, Version};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{Notify, Semaphore};

use super::SharedState;
use super::spool::{NewReading, Spool};
use crate::error::{Error, Result};

/// The socket's name in the state directory.
pub const SOCKET_FILE: &str = "intake.sock";
/// Longest line (or HTTP body element), in bytes.
pub const MAX_LINE: usize = 64 * 1024;
/// Most metrics in one reading.
pub const MAX_METRICS: usize = 64;
/// Longest metric name.
pub const MAX_NAME: usize = 64;
/// Most bundle versions one reading may name (`versions`).
pub const MAX_VERSIONS: usize = 16;
/// How far a reading's `ts` may be from the agent's clock: a year, in ms.
pub const MAX_TS_SKEW_MS: i64 = 366 * 24 * 3600 * 1000;
/// Most intake connections served at once (socket and HTTP each).
const MAX_CONNECTIONS: usize = 64;
/// Largest HTTP request body.
const MAX_HTTP_BODY: usize = 1024 * 1024;
/// Largest HTTP request head.
const MAX_HTTP_HEAD: usize = 16 * 1024;
/// An HTTP client that sends nothing for this long is cut off.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The spool as the intake and the publisher share it.
pub type SharedSpool = Arc<Mutex<Spool>>;

/// One valid intake line.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// A reading to spool.
    Reading(NewReading),
    /// `defer_updates`: hold installs and reboots until this time (ms), before capping.
    DeferUpdates {
        /// As the program asked.
        until: i64,
    },
}

/// Parses one line; `now_ms` is the agent's clock (for the default and the bounds of `ts`).
pub fn parse_line(line: &[u8], now_ms: i64) -> Result<Item, String> {
    if line.len() > MAX_LINE {
        return Err(format!("line is longer than {MAX_LINE} bytes"));
    }
    let value: Value =
        serde_json::from_slice(line).map_err(|e| format!("line is not valid JSON: {e}"))?;
    parse_item(&value, now_ms)
}

/// Parses one JSON value of the intake's forms.
pub fn parse_item(value: &Value, now_ms: i64) -> Result<Item, String> {
    let Value::Object(object) = value else {
        return Err(
            "expected a JSON object: {\"metrics\":{NAME:NUMBER},\"ts\":MS} or {\"control\":\"defer_updates\",\"until\":MS}"
                .into(),
        );
    };
    if let Some(control) = object.get("control") {
        return parse_control(control, object);
    }
    if let Some(key) = object
        .keys()
        .find(|k| !["metrics", "ts", "versions"].contains(&k.as_str()))
    {
        return Err(format!(
            "unknown field `{}`; a reading has `metrics` and optionally `ts` and `versions`",
            shorten(key)
        ));
    }
    let metrics = match object.get("metrics") {
        None => return Err("missing `metrics`: expected {\"metrics\":{NAME:NUMBER}}".into()),
        Some(Value::Object(metrics)) => parse_metrics(metrics)?,
        Some(_) => return Err("`metrics` must be an object of NAME: NUMBER".into()),
    };
    let ts = match object.get("ts") {
        None | Some(Value::Null) => now_ms,
        Some(ts) => {
            let ts = ts
                .as_i64()
                .ok_or("`ts` must be milliseconds since the Unix epoch, an integer")?;
            if (ts - now_ms).abs() > MAX_TS_SKEW_MS {
                return Err(format!(
                    "`ts` {ts} is more than a year away from the agent's clock ({now_ms}); send milliseconds since the Unix epoch, or leave `ts` out"
                ));
            }
            ts
        }
    };
    let versions = match object.get("versions") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(versions)) => parse_versions(versions)?,
        Some(_) => {
            return Err(
                "`versions` must be an object of BUNDLE_NAME: VERSION, e.g. {\"detector\":\"1.2.0\"}"
                    .into(),
            );
        }
    };
    Ok(Item::Reading(NewReading {
        ts,
        metrics,
        versions,
    }))
}

/// A reading's `versions`: the bundle versions the program used for it (a model it loaded),
/// which the agent stamps on the reading in place of the installed ones of the same names.
fn parse_versions(versions: &Map<String, Value>) -> Result<BTreeMap<String, Version>, String> {
    if versions.len() > MAX_VERSIONS {
        return Err(format!(
            "`versions` has {} names; at most {MAX_VERSIONS} are allowed in one reading",
            versions.len()
        ));
    }
    let mut out = BTreeMap::new();
    for (name, value) in versions {
        SafeName::parse(name).map_err(|e| format!("`versions` names a bundle badly: {e}"))?;
        let version = value
            .as_str()
            .ok_or_else(|| {
                format!(
                    "version of `{}` must be a string such as \"1.2.0\", not {}",
                    shorten(name),
                    kind_of(value)
                )
            })
            .and_then(|text| {
                Version::parse(text).map_err(|e| {
                    format!(
                        "version `{}` of `{}` is not a semantic version: {e}",
                        shorten(text),
                        shorten(name)
                    )
                })
            })?;
        out.insert(name.clone(), version);
    }
    Ok(out)
}

fn parse_metrics(metrics: &Map<String, Value>) -> Result<BTreeMap<String, f64>, String> {
    if metrics.is_empty() {
        return Err("`metrics` is empty; give at least one NAME: NUMBER".into());
    }
    if metrics.len() > MAX_METRICS {
        return Err(format!(
            "`metrics` has {} names; at most {MAX_METRICS} are allowed in one reading",
            metrics.len()
        ));
    }
    let mut out = BTreeMap::new();
    for (name, value) in metrics {
        if name.is_empty()
            || name.len() > MAX_NAME
            || !name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
        {
            return Err(format!(
                "metric name `{}` is not valid: use 1 to {MAX_NAME} ASCII letters, digits, `_`, `.` or `-`",
                shorten(name)
            ));
        }
        let number = value
            .as_f64()
            .filter(|n| n.is_finite())
            .ok_or_else(|| format!("metric `{name}` must be a number, not {}", kind_of(value)))?;
        out.insert(name.clone(), number);
    }
    Ok(out)
}

fn parse_control(control: &Value, object: &Map<String, Value>) -> Result<Item, String> {
    if control != "defer_updates" {
        return Err(format!(
            "unknown control {}; the one control is \"defer_updates\"",
            shorten(&control.to_string())
        ));
    }
    if let Some(key) = object
        .keys()
        .find(|k| !["control", "until"].contains(&k.as_str()))
    {
        return Err(format!(
            "unknown field `{}`; defer_updates has `control` and `until`",
            shorten(key)
        ));
    }
    let until = object
        .get("until")
        .and_then(Value::as_i64)
        .ok_or("defer_updates needs `until`, milliseconds since the Unix epoch (an integer)")?;
    Ok(Item::DeferUpdates { until })
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number out of range",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn shorten(text: &str) -> String {
    text.chars().take(80).collect()
}

/// Handles intake items for every transport: spools readings (one fsync per call) and records
/// holds. Clone it into each connection.
#[derive(Clone, Debug)]
pub struct Intake {
    spool: SharedSpool,
    shared: SharedState,
    max_defer_ms: i64,
    /// Woken after readings were spooled (the publisher waits on it).
    spooled: Arc<Notify>,
}

impl Intake {
    /// An intake over `spool`; holds are capped at `max_defer_s` from now (0 refuses them).
    pub fn new(
        spool: SharedSpool,
        shared: SharedState,
        max_defer_s: u64,
        spooled: Arc<Notify>,
    ) -> Intake {
        Intake {
            spool,
            shared,
            max_defer_ms: i64::try_from(max_defer_s.saturating_mul(1000)).unwrap_or(i64::MAX),
            spooled,
        }
    }

    /// Answers each item in order: readings are appended together and fsync'd once before any
    /// answer is given; a bad item's answer names its problem.
    pub async fn handle(&self, items: Vec<Result<Item, String>>, now_ms: i64) -> Vec<Value> {
        let mut readings = Vec::new();
        for item in &items {
            if let Ok(Item::Reading(reading)) = item {
                readings.push(reading.clone());
            }
        }
        let seqs = if readings.is_empty() {
            Ok(Vec::new())
        } else {
            let spool = Arc::clone(&self.spool);
            let versions = self.shared.lock().versions.clone();
            tokio::task::spawn_blocking(move || {
                spool
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .append(&readings, &versions)
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))
        };
        let mut seqs = match seqs {
            Ok(seqs) => {
                if !seqs.is_empty() {
                    self.spooled.notify_one();
                }
                Ok(seqs.into_iter())
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot write readings to the spool");
                Err(format!("the agent cannot store readings: {e}"))
            }
        };
        items
            .into_iter()
            .map(|item| match item {
                Err(problem) => json!({"ok": false, "error": problem}),
                Ok(Item::Reading(_)) => match &mut seqs {
                    Ok(seqs) => match seqs.next() {
                        Some(seq) => json!({"ok": true, "seq": seq}),
                        None => {
                            json!({"ok": false, "error": "the agent lost track of this reading"})
                        }
                    },
                    Err(problem) => json!({"ok": false, "error": problem}),
                },
                Ok(Item::DeferUpdates { until }) => self.defer(until, now_ms),
            })
            .collect()
    }

    fn defer(&self, until: i64, now_ms: i64) -> Value {
        if self.max_defer_ms == 0 {
            return json!({"ok": false, "error": "this device refuses update holds (max_defer_s = 0 in agent.toml)"});
        }
        let capped = until.min(now_ms.saturating_add(self.max_defer_ms));
        let mut shared = self.shared.lock();
        shared.defer_until = (capped > now_ms).then_some(capped);
        tracing::info!(
            until = capped,
            asked = until,
            "device program holds updates"
        );
        json!({"ok": true, "until": capped})
    }
}

/// Binds `STATE_DIR/intake.sock` (mode 0660), removing a stale socket left by an agent that
/// stopped; refuses when another agent answers on it.
pub fn bind_socket(path: &Path) -> Result<UnixListener> {
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::Runtime(format!(
                "another drover-agent is already running with the intake {}; stop it first",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| Error::io("remove the stale socket", path, e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| Error::io("listen on", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| Error::io("set the mode of", path, e))?;
    Ok(listener)
}

/// Serves the Unix socket until the task is dropped.
pub async fn serve_socket(listener: UnixListener, intake: Intake, now: fn() -> i64) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "intake socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(
                limit = MAX_CONNECTIONS,
                "too many intake connections; refusing one"
            );
            continue;
        };
        let intake = intake.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_lines(stream, &intake, now).await {
                tracing::debug!(error = %e, "intake connection ended");
            }
            drop(slot);
        });
    }
}

/// Reads newline-delimited JSON from `stream` and answers each line with one line. All complete
/// lines a read delivers form one batch with one fsync.
pub async fn serve_lines<S>(mut stream: S, intake: &Intake, now: fn() -> i64) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    // Inside a line longer than MAX_LINE: skip to its end (it was answered already).
    let mut skipping = false;
    loop {
        let n = stream.read(&mut chunk).await?;
        let eof = n == 0;
        buf.extend_from_slice(&chunk[..n]);
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut answers_first: Vec<Value> = Vec::new();
        let mut consumed = 0;
        while let Some(pos) = buf[consumed..].iter().position(|&b| b == b'\n') {
            let line = &buf[consumed..consumed + pos];
            consumed += pos + 1;
            if std::mem::take(&mut skipping) {
                continue;
            }
            lines.push(line.to_vec());
        }
        buf.drain(..consumed);
        if eof && !buf.is_empty() && !skipping {
            lines.push(std::mem::take(&mut buf));
        }
        if !skipping && buf.len() > MAX_LINE {
            skipping = true;
            buf.clear();
            answers_first.push(
                json!({"ok": false, "error": format!("line is longer than {MAX_LINE} bytes")}),
            );
        } else if skipping {
            buf.clear();
        }
        let now_ms = now();
        let items: Vec<Result<Item, String>> = lines
            .iter()
            .map(|line| trim_line(line))
            .filter(|line| !line.is_empty())
            .map(|line| parse_line(line, now_ms))
            .collect();
        let mut answers = if items.is_empty() {
            Vec::new()
        } else {
            intake.handle(items, now_ms).await
        };
        answers.extend(answers_first);
        if !answers.is_empty() {
            let mut out = Vec::new();
            for answer in answers {
                out.extend_from_slice(answer.to_string().as_bytes());
                out.push(b'\n');
            }
            stream.write_all(&out).await?;
            stream.flush().await?;
        }
        if eof {
            return Ok(());
        }
    }
}

fn trim_line(line: &[u8]) -> &[u8] {
    line.trim_ascii()
}

/// Binds the HTTP intake; only loopback addresses are accepted by the configuration.
pub async fn bind_http(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        Error::Runtime(format!(
            "cannot listen for the HTTP intake on {addr}: {e}; change [intake] http_listen in agent.toml"
        ))
    })
}

/// Serves `POST /v1/telemetry` until the task is dropped: a body of one item or an array of
/// them; the answer is the item's answer, or `{"ok":all,"results":[…]}` for an array. One request
/// per connection.
pub async fn serve_http(listener: TcpListener, intake: Intake, now: fn() -> i64) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP intake accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let intake = intake.clone();
        tokio::spawn(async move {
            let answer =
                tokio::time::timeout(HTTP_TIMEOUT, http_exchange(&mut stream, &intake, now))
                    .await
                    .unwrap_or_else(|_| Ok(HttpAnswer::error(408, "the request took too long")));
            if let Ok(answer) = answer {
                let _ = stream.write_all(&answer.to_bytes()).await;
                let _ = stream.shutdown().await;
            }
            drop(slot);
        });
    }
}

/// An HTTP status and JSON body.
#[derive(Debug)]
struct HttpAnswer {
    status: u16,
    body: Value,
}

impl HttpAnswer {
    fn error(status: u16, problem: &str) -> HttpAnswer {
        HttpAnswer {
            status,
            body: json!({"ok": false, "error": problem}),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            411 => "Length Required",
            413 => "Content Too Large",
            431 => "Request Header Fields Too Large",
            _ => "Error",
        };
        let body = self.body.to_string();
        format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.status,
            body.len()
        )
        .into_bytes()
    }
}

async fn http_exchange<S>(
    stream: &mut S,
    intake: &Intake,
    now: fn() -> i64,
) -> io::Result<HttpAnswer>
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_HTTP_HEAD {
            return Ok(HttpAnswer::error(431, "request head too large"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let mut length = None;
    for header in lines {
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Ok(HttpAnswer::error(
                411,
                "send the body with Content-Length, not chunked",
            ));
        }
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/v1/telemetry" {
        return Ok(HttpAnswer::error(
            404,
            "not found; POST readings to /v1/telemetry",
        ));
    }
    if method != "POST" {
        return Ok(HttpAnswer::error(405, "use POST /v1/telemetry"));
    }
    let Some(length) = length else {
        return Ok(HttpAnswer::error(411, "Content-Length is required"));
    };
    if length > MAX_HTTP_BODY {
        return Ok(HttpAnswer::error(413, "body larger than 1 MiB"));
    }
    let mut body = buf.split_off(head_end + 4);
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    let now_ms = now();
    let value: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => {
            return Ok(HttpAnswer::error(
                400,
                &format!("body is not valid JSON: {e}"),
            ));
        }
    };
    let (items, single) = match &value {
        Value::Array(elements) => (
            elements
                .iter()
                .map(|element| parse_sized(element, now_ms))
                .collect::<Vec<_>>(),
            false,
        ),
        _ => (vec![parse_sized(&value, now_ms)], true),
    };
    if items.is_empty() {
        return Ok(HttpAnswer::error(400, "the array is empty"));
    }
    let answers = intake.handle(items, now_ms).await;
    let all_ok = answers.iter().all(|a| a["ok"] == true);
    let status = if all_ok { 200 } else { 400 };
    let body = if single {
        answers.into_iter().next().unwrap_or(Value::Null)
    } else {
        json!({"ok": all_ok, "results": answers})
    };
    Ok(HttpAnswer { status, body })
}

/// An element of an HTTP body, with the line-length limit applied as to a socket line.
fn parse_sized(value: &Value, now_ms: i64) -> Result<Item, String> {
    if value.to_string().len() > MAX_LINE {
        return Err(format!("reading is longer than {MAX_LINE} bytes"));
    }
    parse_item(value, now_ms)
}

/// The socket path in `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE)
}

/// Parses `METRIC=VALUE` arguments of `drover-agent send` into a reading line.
pub fn send_line(pairs: &[String]) -> Result<String> {
    if pairs.is_empty() {
        return Err(Error::Usage(
            "give at least one METRIC=VALUE, for example: drover-agent send temp_c=48.2".into(),
        ));
    }
    let mut metrics = Map::new();
    for pair in pairs {
        let bad =
            |why: &str| Error::Usage(format!("`{}` is not METRIC=VALUE: {why}", shorten(pair)));
        let (name, value) = pair.split_once('=').ok_or_else(|| bad("missing `=`"))?;
        let number: f64 = value
            .trim()
            .parse()
            .ok()
            .filter(|n: &f64| n.is_finite())
            .ok_or_else(|| bad("VALUE must be a finite number"))?;
        let number = serde_json::Number::from_f64(number)
            .ok_or_else(|| bad("VALUE must be a finite number"))?;
        metrics.insert(name.to_owned(), Value::Number(number));
    }
    let line = json!({"metrics": metrics}).to_string();
    // The agent checks the names too; checking here gives exit code 2 for a malformed name.
    match parse_line(line.as_bytes(), 0) {
        Ok(_) => Ok(line),
        Err(problem) => Err(Error::Usage(problem)),
    }
}

/// `drover-agent send`: hands one reading to the running agent and returns its sequence number.
pub fn send(state_dir: &Path, pairs: &[String]) -> Result<u64> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let line = send_line(pairs)?;
    let path = socket_path(state_dir);
    let not_running = |e: io::Error| {
        Error::Runtime(format!(
            "the agent is not running (cannot connect to {}: {e}); start it with drover-agent run",
            path.display()
        ))
    };
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(not_running)?;
    let io_error = |e: io::Error| Error::io("talk to the agent over", &path, e);
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io_error)?;
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(io_error)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(io_error)?;
    let answer: Value = serde_json::from_str(&answer).map_err(|_| {
        Error::Runtime(format!(
            "the agent's answer is not JSON: `{}`",
            shorten(answer.trim())
        ))
    })?;
    if answer["ok"] == true
        && let Some(seq) = answer["seq"].as_u64()
    {
        return Ok(seq);
    }
    Err(Error::Runtime(format!(
        "the agent refused the reading: {}",
        answer["error"].as_str().unwrap_or("no reason given")
    )))
}

/// Connects to a running agent's socket (used by tests and tools).
pub async fn connect(state_dir: &Path) -> io::Result<UnixStream> {
    UnixStream::connect(socket_path(state_dir)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_732_300_000_000;

    fn problem(line: &str) -> String {
        parse_line(line.as_bytes(), NOW).unwrap_err()
    }

    #[test]
    fn a_reading_parses_with_or_without_ts() {
        let Item::Reading(r) = parse_line(
            br#"{"metrics":{"temp_c":48.2,"a.b-c_1":-3},"ts":1732300000123}"#,
            NOW,
        )
        .unwrap() else {
            panic!("not a reading");
        };
        assert_eq!(r.ts, 1_732_300_000_123);
        assert_eq!(r.metrics["temp_c"], 48.2);
        assert_eq!(r.metrics["a.b-c_1"], -3.0);
        let Item::Reading(r) = parse_line(br#"{"metrics":{"x":1}}"#, NOW).unwrap() else {
            panic!("not a reading");
        };
        assert_eq!(r.ts, NOW);
    }

    #[test]
    fn a_reading_may_name_the_versions_it_was_made_with() {
        let Item::Reading(r) = parse_line(
            br#"{"metrics":{"inference_ms":12.5},"versions":{"detector":"2.0.0","cam-model_x.y":"1.0.0-rc.1"}}"#,
            NOW,
        )
        .unwrap() else {
            panic!("not a reading");
        };
        assert_eq!(r.versions["detector"], Version::new(2, 0, 0));
        assert_eq!(r.versions["cam-model_x.y"].to_string(), "1.0.0-rc.1");
        let Item::Reading(r) = parse_line(br#"{"metrics":{"x":1},"versions":{}}"#, NOW).unwrap()
        else {
            panic!("not a reading");
        };
        assert!(r.versions.is_empty());
        let Item::Reading(r) = parse_line(br#"{"metrics":{"x":1}}"#, NOW).unwrap() else {
            panic!("not a reading");
        };
        assert!(r.versions.is_empty());
    }

    #[test]
    fn bad_versions_are_refused_with_the_problem_named() {
        let many: Vec<String> = (0..17).map(|i| format!("\"m{i}\":\"1.0.0\"")).collect();
        let many = format!(
            "{{\"metrics\":{{\"x\":1}},\"versions\":{{{}}}}}",
            many.join(",")
        );
        let cases = [
            (
                r#"{"metrics":{"x":1},"versions":["1.0.0"]}"#,
                "`versions` must be an object",
            ),
            (
                r#"{"metrics":{"x":1},"versions":"1.0.0"}"#,
                "`versions` must be an object",
            ),
            (
                r#"{"metrics":{"x":1},"versions":{"detector":2}}"#,
                "version of `detector` must be a string",
            ),
            (
                r#"{"metrics":{"x":1},"versions":{"detector":"v2"}}"#,
                "version `v2` of `detector` is not a semantic version",
            ),
            (
                r#"{"metrics":{"x":1},"versions":{"detector":"2.0"}}"#,
                "is not a semantic version",
            ),
            (
                r#"{"metrics":{"x":1},"versions":{"../etc":"1.0.0"}}"#,
                "`versions` names a bundle badly",
            ),
            (
                r#"{"metrics":{"x":1},"versions":{"":"1.0.0"}}"#,
                "`versions` names a bundle badly",
            ),
            (&many, "has 17 names; at most 16"),
            (r#"{"versions":{"detector":"1.0.0"}}"#, "missing `metrics`"),
        ];
        for (line, expected) in cases {
            let got = problem(line);
            assert!(got.contains(expected), "{line}: {got}");
        }
    }

    fn intake(dir: &Path, shared: &SharedState) -> (Intake, SharedSpool) {
        let epoch = drover_proto::Epoch::from_random(&[7; 8]);
        let spool = Arc::new(Mutex::new(
            Spool::open(dir, 1 << 20, epoch).expect("open the spool"),
        ));
        let intake = Intake::new(
            Arc::clone(&spool),
            shared.clone(),
            3600,
            Arc::new(Notify::new()),
        );
        (intake, spool)
    }

    #[tokio::test]
    async fn a_readings_versions_are_stamped_over_the_installed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedState::default();
        shared.lock().versions = BTreeMap::from([
            ("detector".to_owned(), Version::new(2, 0, 0)),
            ("firmware".to_owned(), Version::new(5, 0, 0)),
        ]);
        let (intake, spool) = intake(dir.path(), &shared);
        let lines: [&[u8]; 2] = [
            br#"{"metrics":{"x":1},"versions":{"detector":"1.0.0"}}"#,
            br#"{"metrics":{"x":2}}"#,
        ];
        let items = lines.iter().map(|l| parse_line(l, NOW)).collect();
        let answers = intake.handle(items, NOW).await;
        assert_eq!(
            answers,
            [json!({"ok": true, "seq": 1}), json!({"ok": true, "seq": 2})]
        );
        let spool = spool.lock().unwrap();
        let stored = spool.peek(spool.head(), 1 << 20).unwrap();
        let stamped: Vec<String> = stored
            .iter()
            .map(|s| serde_json::to_string(&s.telemetry.as_ref().unwrap().versions).unwrap())
            .collect();
        assert_eq!(
            stamped,
            [
                r#"{"detector":"1.0.0","firmware":"5.0.0"}"#,
                r#"{"detector":"2.0.0","firmware":"5.0.0"}"#
            ]
        );
    }

    #[tokio::test]
    async fn a_hold_is_capped_and_one_ending_now_releases_it() {
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedState::default();
        let (intake, _spool) = intake(dir.path(), &shared);
        let hold = |until| vec![Ok(Item::DeferUpdates { until })];
        let answers = intake.handle(hold(NOW + 60_000), NOW).await;
        assert_eq!(answers, [json!({"ok": true, "until": NOW + 60_000})]);
        assert_eq!(shared.lock().defer_until, Some(NOW + 60_000));
        let answers = intake.handle(hold(NOW + 7_200_000), NOW).await;
        assert_eq!(answers, [json!({"ok": true, "until": NOW + 3_600_000})]);
        // The SDK's release: a hold that ends now holds nothing.
        let answers = intake.handle(hold(NOW), NOW).await;
        assert_eq!(answers, [json!({"ok": true, "until": NOW})]);
        assert_eq!(shared.lock().defer_until, None);
    }

    #[test]
    fn defer_updates_parses() {
        assert_eq!(
            parse_line(br#"{"control":"defer_updates","until":1732300600000}"#, NOW).unwrap(),
            Item::DeferUpdates {
                until: 1_732_300_600_000
            }
        );
    }

    #[test]
    fn bad_lines_are_refused_with_the_problem_named() {
        let long_name = "n".repeat(65);
        let many: Vec<String> = (0..65).map(|i| format!("\"m{i}\":1")).collect();
        let many = format!("{{\"metrics\":{{{}}}}}", many.join(","));
        let cases = [
            ("not json", "not valid JSON"),
            ("[1,2]", "expected a JSON object"),
            (r#"{"ts":1}"#, "missing `metrics`"),
            (r#"{"metrics":[1]}"#, "`metrics` must be an object"),
            (r#"{"metrics":{}}"#, "`metrics` is empty"),
            (&many, "has 65 names; at most 64"),
            (
                &format!(r#"{{"metrics":{{"{long_name}":1}}}}"#),
                "is not valid: use 1 to 64",
            ),
            (
                r#"{"metrics":{"temp c":1}}"#,
                "metric name `temp c` is not valid",
            ),
            (r#"{"metrics":{"":1}}"#, "metric name `` is not valid"),
            (
                r#"{"metrics":{"t":"hot"}}"#,
                "metric `t` must be a number, not a string",
            ),
            (
                r#"{"metrics":{"t":null}}"#,
                "metric `t` must be a number, not null",
            ),
            (
                r#"{"metrics":{"t":1},"ts":"now"}"#,
                "`ts` must be milliseconds",
            ),
            (
                r#"{"metrics":{"t":1},"ts":1.5}"#,
                "`ts` must be milliseconds",
            ),
            (r#"{"metrics":{"t":1},"ts":1000}"#, "more than a year away"),
            (r#"{"metrics":{"t":1},"temp":2}"#, "unknown field `temp`"),
            (r#"{"control":"reboot"}"#, "unknown control \"reboot\""),
            (
                r#"{"control":"defer_updates"}"#,
                "defer_updates needs `until`",
            ),
            (r#"{"metrics":{"t":1e999}}"#, "not valid JSON"),
        ];
        for (line, expected) in cases {
            let got = problem(line);
            assert!(got.contains(expected), "{line}: {got}");
        }
        assert!(problem(&"x".repeat(MAX_LINE + 1)).contains("longer than 65536"));
    }

    #[test]
    fn send_arguments_become_one_reading() {
        let line = send_line(&["temp_c=40".into(), "load=0.5".into()]).unwrap();
        assert_eq!(line, r#"{"metrics":{"load":0.5,"temp_c":40.0}}"#);
        for bad in ["temp_c", "temp_c=hot", "temp c=1", "=1", "t=inf", "t=NaN"] {
            let err = send_line(&[bad.into()]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}: {err}");
        }
        assert_eq!(send_line(&[]).unwrap_err().exit_code(), 2);
    }
}
