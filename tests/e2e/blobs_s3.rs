//! The S3 blob backend against moto_server, a real S3-compatible server run
//! on a free loopback port (`pip install 'moto[server]'`). Where moto is
//! missing the test says so and passes, except in CI, where it fails.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use drover_server::blobs::{BlobStore, S3Options};
use drover_server::error::Error;
use futures_util::StreamExt;
use sha2::Digest;

struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto() -> Option<Moto> {
    let present = Command::new("moto_server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "moto_server is missing: `pip install 'moto[server]'` (.ci/run installs it)"
        );
        eprintln!("moto_server is missing: the S3 blob test did not run");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let moto = Moto {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "moto_server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(moto)
}

async fn read_all(
    store: &BlobStore,
    digest: &drover_proto::Sha256,
    start: u64,
    len: u64,
) -> Vec<u8> {
    let mut stream = store.open(digest, start, len).await.expect("open");
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_live_in_an_s3_bucket_by_digest_and_stream_back_in_ranges() {
    let Some(moto) = moto() else { return };
    let http = drover_tests::client();
    let res = http
        .put(format!("{}/drover-test", moto.url))
        .send()
        .await
        .expect("create bucket");
    assert!(res.status().is_success(), "create bucket: {}", res.status());
    let store = BlobStore::s3(&S3Options {
        bucket: "drover-test".into(),
        prefix: "fleet/a".into(),
        endpoint: Some(moto.url.clone()),
        region: Some("us-east-1".into()),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
    })
    .expect("store");

    // Larger than one 8 MiB part, so the upload is a real multipart upload.
    let bytes: Vec<u8> = (0..10 * 1024 * 1024 + 3)
        .map(|i: usize| (i as u8).wrapping_mul(7))
        .collect();
    let chunks = || {
        futures_util::stream::iter(
            bytes
                .chunks(64 * 1024)
                .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        )
    };
    let stored = store.put(chunks(), 1 << 30).await.expect("put");
    let hex = hex::encode(sha2::Sha256::digest(&bytes));
    assert_eq!(stored.sha256.to_string(), hex);
    assert_eq!(stored.size, bytes.len() as u64);
    assert_eq!(store.put(chunks(), 1 << 30).await.expect("again"), stored);
    assert_eq!(
        store.size(&stored.sha256).await.expect("size"),
        Some(bytes.len() as u64)
    );
    assert!(store.exists(&stored.sha256).await.expect("exists"));

    // The layout, seen with a plain S3 client: the digest's key, no temporary objects.
    let raw = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("drover-test")
        .with_endpoint(&moto.url)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()
        .expect("client");
    let keys: Vec<String> = object_store::ObjectStore::list(&raw, None)
        .map(|m| m.expect("listing").location.to_string())
        .collect()
        .await;
    assert_eq!(keys, [format!("fleet/a/sha256/{}/{hex}", &hex[..2])]);

    let start = 8 * 1024 * 1024 - 10;
    assert_eq!(
        read_all(&store, &stored.sha256, start as u64, 20).await,
        &bytes[start..start + 20]
    );
    let all = read_all(&store, &stored.sha256, 0, bytes.len() as u64).await;
    assert_eq!(hex::encode(sha2::Sha256::digest(&all)), hex);
    assert!(read_all(&store, &stored.sha256, 5, 0).await.is_empty());

    let err = store.put(chunks(), 1024 * 1024).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err}");
    let after: Vec<String> = object_store::ObjectStore::list(&raw, None)
        .map(|m| m.expect("listing").location.to_string())
        .collect()
        .await;
    assert_eq!(after, keys, "an upload over the limit leaves nothing");

    store.delete(&stored.sha256).await.expect("delete");
    assert_eq!(store.size(&stored.sha256).await.expect("size"), None);
    assert!(matches!(
        store.open(&stored.sha256, 0, 1).await,
        Err(Error::NotFound(_))
    ));
    store
        .delete(&stored.sha256)
        .await
        .expect("deleting twice is fine");
}
