//! The local-directory backend: `ROOT/sha256/ab/abcdef…`. An upload goes to
//! a temporary file beside the final ones (same file system, so the closing
//! rename is atomic), hashed as it is written, synced, then renamed to its
//! digest; bytes already stored are not written twice.

use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use drover_proto::Sha256;
use futures_util::{Stream, StreamExt};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{ByteStream, Stored, too_large};
use crate::error::{Error, Result};

/// Chunks queued between the request and the writing thread: bounds memory per upload.
const QUEUE: usize = 16;
/// Read size when serving a blob.
const READ_CHUNK: usize = 64 * 1024;

/// A blob directory.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Internal(format!("blob store: {what} {}: {e}", path.display()))
}

impl LocalDir {
    /// Uses `root`, creating it (and `root/sha256`) when absent.
    pub fn create(root: PathBuf) -> Result<LocalDir> {
        let dir = root.join("sha256");
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::invalid(
                "blob_url",
                format!("cannot create the blob directory {}: {e}", dir.display()),
            )
        })?;
        Ok(LocalDir { root })
    }

    fn objects(&self) -> PathBuf {
        self.root.join("sha256")
    }

    /// Where the blob with this digest lives.
    pub fn path_of(&self, digest: &Sha256) -> PathBuf {
        let hex = digest.to_string();
        self.objects().join(&hex[..2]).join(hex)
    }

    pub(super) async fn put<S, E>(&self, mut body: S, limit: u64) -> Result<Stored>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let tmp = self
            .objects()
            .join(format!(".upload-{}", uuid::Uuid::now_v7().simple()));
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(QUEUE);
        let writer = tokio::task::spawn_blocking({
            let tmp = tmp.clone();
            move || write_and_hash(&tmp, rx)
        });
        let mut received: u64 = 0;
        let reading: Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| {
                    Error::invalid("body", format!("reading the upload failed: {e}"))
                })?;
                received = received.saturating_add(chunk.len() as u64);
                if received > limit {
                    return Err(too_large(limit));
                }
                if tx.send(chunk).await.is_err() {
                    // The writer stopped; its own error is reported below.
                    break;
                }
            }
            Ok(())
        }
        .await;
        drop(tx);
        let written = writer
            .await
            .map_err(|e| Error::Internal(format!("blob writer: {e}")))?;
        let outcome = match (reading, written) {
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => Err(io_err("writing", &tmp, e)),
            (Ok(()), Ok((sha256, size))) => {
                let target = self.path_of(&sha256);
                let moving = tmp.clone();
                tokio::task::spawn_blocking(move || settle(&moving, &target))
                    .await
                    .map_err(|e| Error::Internal(format!("blob writer: {e}")))?
                    .map(|()| Stored { sha256, size })
                    .map_err(|e| io_err("storing", &tmp, e))
            }
        };
        if outcome.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        outcome
    }

    pub(super) async fn open(&self, digest: &Sha256, start: u64, len: u64) -> Result<ByteStream> {
        let path = self.path_of(digest);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!("no blob {digest}")));
            }
            Err(e) => return Err(io_err("opening", &path, e)),
        };
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| io_err("seeking in", &path, e))?;
        let reader = file.take(len);
        Ok(tokio_util::io::ReaderStream::with_capacity(reader, READ_CHUNK).boxed())
    }

    pub(super) async fn size(&self, digest: &Sha256) -> Result<Option<u64>> {
        let path = self.path_of(digest);
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading", &path, e)),
        }
    }

    pub(super) async fn delete(&self, digest: &Sha256) -> Result<()> {
        let path = self.path_of(digest);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("deleting", &path, e)),
        }
    }
}

/// Runs on a blocking thread: writes what arrives to `tmp`, hashing it, and syncs it.
fn write_and_hash(
    tmp: &Path,
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> std::io::Result<(Sha256, u64)> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)?;
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
    let mut hasher = sha2::Sha256::new();
    let mut size: u64 = 0;
    while let Some(chunk) = rx.blocking_recv() {
        hasher.update(&chunk);
        out.write_all(&chunk)?;
        size += chunk.len() as u64;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok((Sha256::from_bytes(hasher.finalize().into()), size))
}

/// Moves a finished upload to its digest name, or drops it when that blob exists.
fn settle(tmp: &Path, target: &Path) -> std::io::Result<()> {
    if target.exists() {
        return std::fs::remove_file(tmp);
    }
    let dir = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    std::fs::rename(tmp, target)?;
    // The rename is durable only once the directory entry is.
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = std::io::Result<Bytes>> + Unpin {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    async fn read_all(mut s: super::ByteStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.expect("chunk"));
        }
        out
    }

    #[tokio::test]
    async fn stores_once_by_digest_and_reads_ranges() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalDir::create(dir.path().to_path_buf()).expect("store");
        let stored = store
            .put(chunks(&[b"hello ", b"world"]), 1024)
            .await
            .expect("put");
        assert_eq!(stored.size, 11);
        assert_eq!(stored.sha256, Sha256::digest(b"hello world"));
        let path = store.path_of(&stored.sha256);
        let hex = stored.sha256.to_string();
        assert!(path.ends_with(format!("sha256/{}/{hex}", &hex[..2])));
        let again = store
            .put(chunks(&[b"hello world"]), 1024)
            .await
            .expect("again");
        assert_eq!(again, stored);
        let entries = std::fs::read_dir(dir.path().join("sha256"))
            .expect("dir")
            .count();
        assert_eq!(entries, 1, "one prefix folder and no temporary files");
        assert_eq!(
            read_all(store.open(&stored.sha256, 6, 5).await.expect("open")).await,
            b"world"
        );
        assert_eq!(store.size(&stored.sha256).await.expect("size"), Some(11));
        store.delete(&stored.sha256).await.expect("delete");
        assert_eq!(store.size(&stored.sha256).await.expect("size"), None);
        assert!(matches!(
            store.open(&stored.sha256, 0, 1).await,
            Err(Error::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn an_upload_over_the_limit_keeps_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalDir::create(dir.path().to_path_buf()).expect("store");
        let err = store
            .put(chunks(&[b"0123456789", b"0123456789"]), 15)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::TooLarge(_)), "{err}");
        let left = std::fs::read_dir(dir.path().join("sha256"))
            .expect("dir")
            .count();
        assert_eq!(left, 0);
    }
}
