//! Resumable payload download into the staging directory, for the update engine: bytes stream
//! into `staging/SHA256.part` through proto's `PayloadHasher` (hashing as they are written, on
//! the blocking pool), and the file takes its final name only when size and sha256 match. An
//! interrupted download keeps its `.part`; the next attempt re-hashes that prefix and asks for the
//! rest with `Range: bytes=N-`. Never more than the declared size is read (one byte past it ends
//! the transfer), and memory stays flat whatever the payload's size.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use drover_proto::{OfferedPayload, Payload, PayloadError, PayloadFormat, PayloadHasher};
use reqwest::StatusCode;
use tokio::sync::mpsc;

use super::BundleError;
use super::file::READ_BUFFER_BYTES;
use super::staging::{Staging, commit_part};
use crate::device_api::{DeviceApi, causes, problem_detail};
use crate::error::{Error, Result};

/// A transfer that delivers nothing for this long is dropped (and resumes next time).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Chunks queued between the network and the writer: bounded, so a slow disk slows the reader.
const QUEUED_CHUNKS: usize = 8;
/// The writer's buffer: network chunks are small, disk writes should not be.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// What a download is called in device API errors.
const WHAT: &str = "payload download";
/// Largest error body quoted.
const MAX_ERROR_BODY: usize = 4096;

/// Fetches `payload` into `staging` and returns the path of the complete file, whose size and
/// sha256 matched. A `.part` left by an earlier attempt is resumed; a complete file already
/// staged is re-hashed and reused.
pub async fn fetch(
    api: &DeviceApi,
    staging: &Staging,
    payload: &OfferedPayload,
) -> Result<PathBuf> {
    let refuse = |source: BundleError| Error::Bundle {
        bundle: PathBuf::from(format!("payload {}", payload.name)),
        source,
    };
    let part = staging.part_path(&payload.sha256);
    let done = staging.final_path(&payload.sha256);
    // A second round only after the server refused our range (416) or a complete `.part` did not
    // match: both start over from byte 0.
    for _round in 0..2 {
        let prepared = blocking({
            let (payload, part, done) = (payload.clone(), part.clone(), done.clone());
            move || prepare(&payload, &part, &done)
        })
        .await??;
        let Some(Part { file, hasher }) = prepared else {
            return Ok(done);
        };
        let offset = hasher.received();
        if offset == payload.size {
            let (owned, part, done) = (payload.clone(), part.clone(), done.clone());
            match blocking(move || finish(file, hasher, None, &owned, &part, &done)).await? {
                Ok(()) => return Ok(staging.final_path(&payload.sha256)),
                Err(Streamed::Refused(e)) => {
                    tracing::warn!(payload = %payload.name, error = %e, "a complete .part did not match; downloading it again");
                    continue;
                }
                Err(Streamed::Error(e)) => return Err(e),
            }
        }
        staging.check_space(payload.size - offset).map_err(refuse)?;
        let response = api.get_payload(&payload.url, offset, WHAT).await?;
        let status = response.status();
        let content_range = response
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok());
        let (file, hasher) = match judge(status, content_range, offset, payload.size) {
            Answer::Continue => (file, hasher),
            Answer::StartOver => {
                tracing::info!(payload = %payload.name, offset, "the server ignored the range and sent the whole payload; starting over");
                let part = part.clone();
                let file = blocking(move || empty(file, &part)).await??;
                (file, hasher_for(payload))
            }
            Answer::RangeRefused => {
                tracing::warn!(payload = %payload.name, offset, "the server refused the range; starting over");
                drop(file);
                remove(&part);
                continue;
            }
            Answer::Refuse(reason) => {
                return Err(refuse(BundleError::BadDownload {
                    name: payload.name.to_string(),
                    reason,
                }));
            }
            Answer::Failed => {
                let body = read_error_body(response).await;
                return Err(Error::Refused {
                    what: WHAT,
                    status: status.as_u16(),
                    detail: problem_detail(status, &body),
                });
            }
        };
        let remaining = payload.size - hasher.received();
        let (file, hasher, written, cause) = stream(response, file, hasher, remaining).await?;
        let (owned, part, done) = (payload.clone(), part.clone(), done.clone());
        let transfer = Some((written, cause));
        return match blocking(move || finish(file, hasher, transfer, &owned, &part, &done)).await? {
            Ok(()) => Ok(staging.final_path(&payload.sha256)),
            Err(Streamed::Refused(source)) => Err(refuse(source)),
            Err(Streamed::Error(e)) => Err(e),
        };
    }
    Err(refuse(BundleError::BadDownload {
        name: payload.name.to_string(),
        reason: "the server refused the range, and then the whole payload did not match".into(),
    }))
}

/// Runs `f` on the blocking pool: file reads, writes, hashing and fsync never block the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Runtime(format!("a download task failed: {e}")))
}

/// The `.part` file, positioned at its end, and a hasher that has seen its bytes.
struct Part {
    file: File,
    hasher: PayloadHasher,
}

/// The hasher for an offered payload (its format does not matter to size and digest).
fn hasher_for(payload: &OfferedPayload) -> PayloadHasher {
    PayloadHasher::new(&Payload {
        name: payload.name.clone(),
        size: payload.size,
        sha256: payload.sha256,
        format: PayloadFormat::File,
    })
}

/// `None` when the final file exists and matches; else the `.part` (created empty if missing,
/// emptied if longer than declared) with its bytes hashed.
fn prepare(payload: &OfferedPayload, part: &Path, done: &Path) -> Result<Option<Part>> {
    if let Ok(file) = File::open(done) {
        let mut hasher = hasher_for(payload);
        let len = file
            .metadata()
            .map_err(|e| Error::io("read", done, e))?
            .len();
        if len == payload.size
            && hash_prefix(&file, len, &mut hasher).is_ok()
            && hasher.finish().is_ok()
        {
            return Ok(None);
        }
        tracing::warn!(path = %done.display(), "a staged payload no longer matches; downloading it again");
        fs::remove_file(done).map_err(|e| Error::io("remove", done, e))?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(part)
        .map_err(|e| Error::io("open", part, e))?;
    let mut len = file
        .metadata()
        .map_err(|e| Error::io("read", part, e))?
        .len();
    if len > payload.size {
        file.set_len(0)
            .map_err(|e| Error::io("truncate", part, e))?;
        len = 0;
    }
    let mut hasher = hasher_for(payload);
    hash_prefix(&file, len, &mut hasher).map_err(|e| Error::io("read", part, e))?;
    // A short read (the file shrank meanwhile) leaves the hasher behind the file: cut the file.
    if hasher.received() != len {
        file.set_len(hasher.received())
            .map_err(|e| Error::io("truncate", part, e))?;
    }
    file.seek(SeekFrom::End(0))
        .map_err(|e| Error::io("read", part, e))?;
    Ok(Some(Part { file, hasher }))
}

/// Feeds the first `len` bytes of `file` to `hasher`.
fn hash_prefix(file: &File, len: u64, hasher: &mut PayloadHasher) -> io::Result<()> {
    let size = READ_BUFFER_BYTES.min(usize::try_from(len).unwrap_or(usize::MAX));
    let mut buffer = vec![0u8; size.max(1)];
    let mut offset = 0u64;
    while offset < len {
        let want = usize::try_from(len - offset)
            .unwrap_or(usize::MAX)
            .min(buffer.len());
        let read = file.read_at(&mut buffer[..want], offset)?;
        if read == 0 {
            break;
        }
        hasher
            .update(&buffer[..read])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        offset += read as u64;
    }
    Ok(())
}

/// Empties the `.part` after the server ignored our range.
fn empty(mut file: File, part: &Path) -> Result<File> {
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .map_err(|e| Error::io("truncate", part, e))?;
    Ok(file)
}

fn remove(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove a staged file");
    }
}

/// What to do with the server's answer to a request from `offset`.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// The body continues at `offset`.
    Continue,
    /// The body is the whole payload (the server ignored `Range`): empty the `.part` first.
    StartOver,
    /// 416: our range does not fit the server's blob; drop the `.part` and ask for everything.
    RangeRefused,
    /// An answer the contract does not allow.
    Refuse(String),
    /// An HTTP error status.
    Failed,
}

/// Judges the status and `Content-Range` of the answer to a request from `offset` (pure).
fn judge(status: StatusCode, content_range: Option<&str>, offset: u64, size: u64) -> Answer {
    match status {
        StatusCode::OK if offset == 0 => Answer::Continue,
        StatusCode::OK => Answer::StartOver,
        StatusCode::PARTIAL_CONTENT if offset > 0 => {
            let expected = (offset, size.saturating_sub(1));
            match content_range.and_then(parse_content_range) {
                Some((start, end, total))
                    if (start, end) == expected && total.is_none_or(|t| t == size) =>
                {
                    Answer::Continue
                }
                _ => Answer::Refuse(format!(
                    "asked for bytes {offset}-{} of {size}, the server answered Content-Range `{}`",
                    size.saturating_sub(1),
                    content_range.unwrap_or("(none)")
                )),
            }
        }
        StatusCode::PARTIAL_CONTENT => {
            Answer::Refuse("the server answered 206 to a request without Range".into())
        }
        StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => Answer::RangeRefused,
        _ => Answer::Failed,
    }
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`).
fn parse_content_range(text: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = text.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start.trim().parse().ok()?, end.trim().parse().ok()?, total))
}

async fn read_error_body(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout(STALL_TIMEOUT, response.chunk()).await {
        let room = MAX_ERROR_BODY - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    body
}

/// How a download failed: a refusal of the bytes, or an error around them.
enum Streamed {
    Refused(BundleError),
    Error(Error),
}

/// What the writer saw go wrong.
enum WriteFailure {
    /// More bytes than declared: the excess was neither hashed nor written.
    Payload(PayloadError),
    /// The disk.
    Io(io::Error),
}

/// Streams the body into the `.part` through the hasher on the blocking pool. Reading stops one
/// chunk past `remaining` bytes (the hasher refuses that chunk, so it is never written), at the
/// end of the body, on a transport error or after [`STALL_TIMEOUT`] without data. Returns the
/// file, the hasher, the writer's failure if any, and what ended the transfer early if anything.
async fn stream(
    mut response: reqwest::Response,
    file: File,
    hasher: PayloadHasher,
    remaining: u64,
) -> Result<(File, PayloadHasher, Option<WriteFailure>, Option<String>)> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUED_CHUNKS);
    let writer = tokio::task::spawn_blocking(move || {
        let mut hasher = hasher;
        let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
        let mut failure = None;
        while let Some(chunk) = rx.blocking_recv() {
            if let Err(e) = hasher.update(&chunk) {
                failure = Some(WriteFailure::Payload(e));
                break;
            }
            if let Err(e) = out.write_all(&chunk) {
                failure = Some(WriteFailure::Io(e));
                break;
            }
        }
        // What arrived stays in the `.part` for the next attempt, even when the transfer broke.
        match out.into_inner() {
            Ok(file) => Ok((file, hasher, failure)),
            Err(e) => Err(e.into_error()),
        }
    });

    let mut received = 0u64;
    let mut cause = None;
    loop {
        match tokio::time::timeout(STALL_TIMEOUT, response.chunk()).await {
            Err(_) => {
                cause = Some(format!("no data for {} s", STALL_TIMEOUT.as_secs()));
                break;
            }
            Ok(Err(e)) => {
                cause = Some(causes(&e.without_url()));
                break;
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => {
                received = received.saturating_add(chunk.len() as u64);
                if tx.send(chunk).await.is_err() || received > remaining {
                    break;
                }
            }
        }
    }
    drop(tx);
    drop(response);
    let (file, hasher, failure) = writer
        .await
        .map_err(|e| Error::Runtime(format!("the download writer failed: {e}")))?
        .map_err(|e| Error::io("write", Path::new("the staging .part file"), e))?;
    Ok((file, hasher, failure, cause))
}

/// Ends an attempt: a complete, matching `.part` is fsync'd and renamed to its final name; too
/// many bytes or a wrong digest remove it; too few keep it for the next attempt.
fn finish(
    file: File,
    hasher: PayloadHasher,
    transfer: Option<(Option<WriteFailure>, Option<String>)>,
    payload: &OfferedPayload,
    part: &Path,
    done: &Path,
) -> Result<(), Streamed> {
    let (failure, cause) = transfer.unwrap_or((None, None));
    match failure {
        Some(WriteFailure::Io(e)) => return Err(Streamed::Error(Error::io("write", part, e))),
        Some(WriteFailure::Payload(e)) => {
            drop(file);
            remove(part);
            return Err(Streamed::Refused(BundleError::Payload(e)));
        }
        None => {}
    }
    let received = hasher.received();
    if received < payload.size {
        return Err(Streamed::Refused(BundleError::Interrupted {
            name: payload.name.to_string(),
            received,
            size: payload.size,
            cause: cause.unwrap_or_else(|| "the server ended the body early".into()),
        }));
    }
    match hasher.finish() {
        Ok(()) => {
            commit_part(&file, part, done).map_err(|e| Streamed::Error(Error::io("stage", done, e)))
        }
        Err(e) => {
            drop(file);
            remove(part);
            Err(Streamed::Refused(BundleError::Payload(e)))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use drover_proto::{SafeName, Sha256};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    /// How the local test server misbehaves.
    #[derive(Clone, Copy, Debug)]
    enum Mode {
        /// Honours `Range` (206 with `Content-Range`).
        Good,
        /// Like `Good`, but the first answer stops after this many bytes and closes.
        CutFirstAfter(usize),
        /// Never stops sending (no `Content-Length`), until the client goes away.
        Endless,
        /// Sends this many bytes of every answer, then closes without error.
        Short(usize),
        /// Ignores `Range`: always 200 with the whole payload.
        IgnoreRange,
    }

    /// A plain-HTTP server on 127.0.0.1 serving `body` at `/device/v1/blobs/x`; counts the body
    /// bytes it sends and the requests it gets.
    struct Server {
        url: String,
        sent: Arc<AtomicU64>,
        requests: Arc<AtomicUsize>,
        ranges: Arc<std::sync::Mutex<Vec<Option<u64>>>>,
    }

    async fn serve(body: Vec<u8>, mode: Mode) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(body);
        let sent = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let ranges = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, r, g) = (sent.clone(), requests.clone(), ranges.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (body, sent, requests, ranges) =
                    (body.clone(), s.clone(), r.clone(), g.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let n = requests.fetch_add(1, Ordering::SeqCst);
                    let head = String::from_utf8_lossy(&head).to_lowercase();
                    let from = head
                        .lines()
                        .find_map(|l| l.strip_prefix("range: bytes="))
                        .and_then(|r| r.trim().trim_end_matches('-').parse::<u64>().ok());
                    ranges.lock().unwrap().push(from);
                    let size = body.len();
                    let (status, start, extra) = match (mode, from) {
                        (Mode::IgnoreRange | Mode::Endless | Mode::Short(_), _) | (_, None) => {
                            ("200 OK", 0usize, format!("Content-Length: {size}\r\n"))
                        }
                        (_, Some(f)) => (
                            "206 Partial Content",
                            f as usize,
                            format!(
                                "Content-Length: {}\r\nContent-Range: bytes {f}-{}/{size}\r\n",
                                size - f as usize,
                                size - 1
                            ),
                        ),
                    };
                    let extra = if matches!(mode, Mode::Endless | Mode::Short(_)) {
                        String::new()
                    } else {
                        extra
                    };
                    let header = format!("HTTP/1.1 {status}\r\n{extra}Connection: close\r\n\r\n");
                    if socket.write_all(header.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut data: &[u8] = &body[start..];
                    match mode {
                        Mode::CutFirstAfter(cut) if n == 0 => data = &data[..cut],
                        Mode::Short(cut) => data = &data[..cut],
                        _ => {}
                    }
                    if let Mode::Endless = mode {
                        // Bounded so that a broken client cannot keep the test running.
                        for _ in 0..1024 {
                            if socket.write_all(&body).await.is_err() {
                                return;
                            }
                            sent.fetch_add(body.len() as u64, Ordering::SeqCst);
                        }
                        return;
                    }
                    for chunk in data.chunks(8192) {
                        if socket.write_all(chunk).await.is_err() {
                            return;
                        }
                        sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                    }
                    let _ = socket.shutdown().await;
                });
            }
        });
        Server {
            url: format!("http://{addr}"),
            sent,
            requests,
            ranges,
        }
    }

    /// 256 KiB of bytes that differ from one position to the next.
    fn content() -> Vec<u8> {
        (0..256 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    fn offered(body: &[u8]) -> OfferedPayload {
        OfferedPayload {
            name: SafeName::parse("model.onnx").unwrap(),
            size: body.len() as u64,
            sha256: Sha256::digest(body),
            url: "/device/v1/blobs/x".into(),
        }
    }

    fn setup() -> (tempfile::TempDir, Staging) {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open_dir(&dir.path().join("staging")).unwrap();
        (dir, staging)
    }

    fn source(err: &Error) -> &BundleError {
        match err {
            Error::Bundle { source, .. } => source,
            other => panic!("not a bundle refusal: {other}"),
        }
    }

    fn names_in(staging: &Staging) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(staging.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".lock")
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_payload_downloads_and_takes_its_final_name() {
        let body = content();
        let server = serve(body.clone(), Mode::Good).await;
        let (_dir, staging) = setup();
        let api = DeviceApi::plain_http_for_tests(&server.url);
        let path = fetch(&api, &staging, &offered(&body)).await.unwrap();
        assert_eq!(fs::read(&path).unwrap(), body);
        assert_eq!(names_in(&staging), [Sha256::digest(&body).to_string()]);
        // Fetching again reuses the staged file without a request.
        fetch(&api, &staging, &offered(&body)).await.unwrap();
        assert_eq!(server.requests.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_interrupted_download_resumes_where_it_stopped() {
        let body = content();
        let cut = body.len() * 6 / 10;
        let server = serve(body.clone(), Mode::CutFirstAfter(cut)).await;
        let (_dir, staging) = setup();
        let api = DeviceApi::plain_http_for_tests(&server.url);
        let payload = offered(&body);
        let err = fetch(&api, &staging, &payload).await.unwrap_err();
        assert!(
            matches!(source(&err), BundleError::Interrupted { received, .. } if *received == cut as u64),
            "{err}"
        );
        assert!(
            err.to_string().contains("the next attempt resumes there"),
            "{err}"
        );
        let part = staging.part_path(&payload.sha256);
        assert_eq!(fs::metadata(&part).unwrap().len(), cut as u64);

        let path = fetch(&api, &staging, &payload).await.unwrap();
        assert_eq!(fs::read(&path).unwrap(), body);
        assert!(!part.exists());
        assert_eq!(*server.ranges.lock().unwrap(), [None, Some(cut as u64)]);
        let sent = server.sent.load(Ordering::SeqCst);
        assert!(
            sent <= body.len() as u64 * 110 / 100,
            "{sent} bytes sent for a {}-byte payload",
            body.len()
        );
    }

    #[tokio::test]
    async fn endless_data_is_refused_one_chunk_past_the_declared_size() {
        let body = content();
        let server = serve(body.clone(), Mode::Endless).await;
        let (_dir, staging) = setup();
        let api = DeviceApi::plain_http_for_tests(&server.url);
        let err = fetch(&api, &staging, &offered(&body)).await.unwrap_err();
        assert!(
            matches!(
                source(&err),
                BundleError::Payload(PayloadError::TooLong { .. })
            ),
            "{err}"
        );
        assert!(err.to_string().contains("payload check failed"), "{err}");
        assert!(names_in(&staging).is_empty(), "{:?}", names_in(&staging));
        // The client hung up long before the server's bounded flood ended.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(server.sent.load(Ordering::SeqCst) < body.len() as u64 * 64);
    }

    #[tokio::test]
    async fn short_data_is_never_staged_under_its_final_name() {
        let body = content();
        let server = serve(body.clone(), Mode::Short(1000)).await;
        let (_dir, staging) = setup();
        let api = DeviceApi::plain_http_for_tests(&server.url);
        let payload = offered(&body);
        let err = fetch(&api, &staging, &payload).await.unwrap_err();
        assert!(
            matches!(
                source(&err),
                BundleError::Interrupted { received: 1000, .. }
            ),
            "{err}"
        );
        assert!(!staging.final_path(&payload.sha256).exists());
    }

    #[tokio::test]
    async fn a_wrong_digest_removes_the_part_file() {
        let body = content();
        let mut other = body.clone();
        other[12345] ^= 1;
        let server = serve(other, Mode::Good).await;
        let (_dir, staging) = setup();
        let api = DeviceApi::plain_http_for_tests(&server.url);
        let err = fetch(&api, &staging, &offered(&body)).await.unwrap_err();
        assert!(
            matches!(
                source(&err),
                BundleError::Payload(PayloadError::DigestMismatch { .. })
            ),
            "{err}"
        );
        assert!(names_in(&staging).is_empty());
    }

    #[tokio::test]
    async fn a_server_ignoring_range_restarts_cleanly() {
        let body = content();
        let server = serve(body.clone(), Mode::IgnoreRange).await;
        let (_dir, staging) = setup();
        let payload = offered(&body);
        // A third of the payload from an earlier attempt.
        fs::write(staging.part_path(&payload.sha256), &body[..body.len() / 3]).unwrap();
        let api = DeviceApi::plain_http_for_tests(&server.url);
        let path = fetch(&api, &staging, &payload).await.unwrap();
        assert_eq!(fs::read(path).unwrap(), body);
        assert_eq!(
            *server.ranges.lock().unwrap(),
            [Some(body.len() as u64 / 3)]
        );
    }

    #[tokio::test]
    async fn a_corrupt_part_file_is_caught_and_replaced() {
        let body = content();
        let server = serve(body.clone(), Mode::Good).await;
        let (_dir, staging) = setup();
        let payload = offered(&body);
        // A complete `.part` with one wrong byte (a power cut left garbage, say).
        let mut bad = body.clone();
        bad[7] ^= 0xff;
        fs::write(staging.part_path(&payload.sha256), &bad).unwrap();
        let api = DeviceApi::plain_http_for_tests(&server.url);
        let path = fetch(&api, &staging, &payload).await.unwrap();
        assert_eq!(fs::read(path).unwrap(), body);
    }

    #[test]
    fn answers_are_judged_by_status_and_content_range() {
        use StatusCode as S;
        assert_eq!(judge(S::OK, None, 0, 10), Answer::Continue);
        assert_eq!(judge(S::OK, None, 4, 10), Answer::StartOver);
        assert_eq!(
            judge(S::PARTIAL_CONTENT, Some("bytes 4-9/10"), 4, 10),
            Answer::Continue
        );
        assert_eq!(
            judge(S::PARTIAL_CONTENT, Some("bytes 4-9/*"), 4, 10),
            Answer::Continue
        );
        for wrong in [
            "bytes 0-9/10",
            "bytes 4-8/10",
            "bytes 4-9/11",
            "4-9/10",
            "garbage",
        ] {
            assert!(
                matches!(
                    judge(S::PARTIAL_CONTENT, Some(wrong), 4, 10),
                    Answer::Refuse(_)
                ),
                "{wrong}"
            );
        }
        assert!(matches!(
            judge(S::PARTIAL_CONTENT, None, 4, 10),
            Answer::Refuse(_)
        ));
        assert!(matches!(
            judge(S::PARTIAL_CONTENT, None, 0, 10),
            Answer::Refuse(_)
        ));
        assert_eq!(
            judge(S::RANGE_NOT_SATISFIABLE, None, 4, 10),
            Answer::RangeRefused
        );
        assert_eq!(judge(S::NOT_FOUND, None, 0, 10), Answer::Failed);
        assert_eq!(judge(S::RANGE_NOT_SATISFIABLE, None, 0, 10), Answer::Failed);
    }

    #[tokio::test]
    async fn payload_urls_must_be_paths_on_the_device_api() {
        let api = DeviceApi::plain_http_for_tests("http://127.0.0.1:9");
        for bad in [
            "https://elsewhere/x",
            "//elsewhere/x",
            "/device/v1/../x",
            "blobs/x",
        ] {
            let err = api.get_payload(bad, 0, WHAT).await.unwrap_err();
            assert!(
                err.to_string().contains("is not a path on the device API"),
                "{bad}: {err}"
            );
        }
    }
}
