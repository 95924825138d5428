//! The blob store: artifact bytes kept by their sha256, written once and
//! never changed. One interface over the backends (a local directory, or an
//! S3-compatible bucket for several replicas);
//! a blob becomes visible under its digest only after it was fully written,
//! hashed and synced, so a reader never sees a partial blob.

mod local;
pub mod range;
mod s3;

use std::fmt::Display;

use bytes::Bytes;
use drover_proto::Sha256;
use futures_util::Stream;
use futures_util::stream::BoxStream;

pub use local::LocalDir;
pub use s3::{S3Bucket, S3Options};

use crate::error::{Error, Result};

/// A stream of blob bytes, as HTTP responses take it.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// What `put` stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Digest of the bytes, the blob's name.
    pub sha256: Sha256,
    /// Length in bytes.
    pub size: u64,
}

/// Where blobs live; chosen by the `blob_url` setting.
#[derive(Debug, Clone)]
pub enum BlobStore {
    /// A directory on this machine (`file://PATH`, the default).
    Local(LocalDir),
    /// An S3-compatible bucket (`s3://BUCKET/PREFIX`).
    S3(S3Bucket),
}

impl BlobStore {
    /// Opens the store a `blob_url` names, creating a local directory when needed.
    pub fn open_url(url: &str) -> Result<BlobStore> {
        if let Some(path) = url.strip_prefix("file://") {
            if path.is_empty() {
                return Err(Error::invalid(
                    "blob_url",
                    "file:// needs a directory, such as file:///var/lib/drover/blobs",
                ));
            }
            return Ok(BlobStore::Local(LocalDir::create(path.into())?));
        }
        if url.starts_with("s3://") {
            return Ok(BlobStore::S3(S3Bucket::connect(
                &S3Options::parse_url(url)?,
                true,
            )?));
        }
        Err(Error::invalid(
            "blob_url",
            format!("{url:?} is not supported; use file://PATH or s3://BUCKET/PREFIX"),
        ))
    }

    /// A bucket with explicit options only (no `AWS_*` variables): for tests
    /// and tools that hold their own credentials.
    pub fn s3(options: &S3Options) -> Result<BlobStore> {
        Ok(BlobStore::S3(S3Bucket::connect(options, false)?))
    }

    /// Streams `body` into the store while hashing it; fails with `TooLarge`
    /// (keeping nothing) once more than `limit` bytes arrive. Storing bytes
    /// that are already there keeps the one copy.
    pub async fn put<S, E>(&self, body: S, limit: u64) -> Result<Stored>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: Display,
    {
        match self {
            BlobStore::Local(dir) => dir.put(body, limit).await,
            BlobStore::S3(bucket) => bucket.put(body, limit).await,
        }
    }

    /// Streams `len` bytes of a blob from `start`; `NotFound` when it is absent.
    pub async fn open(&self, digest: &Sha256, start: u64, len: u64) -> Result<ByteStream> {
        match self {
            BlobStore::Local(dir) => dir.open(digest, start, len).await,
            BlobStore::S3(bucket) => bucket.open(digest, start, len).await,
        }
    }

    /// The blob's size, or `None` when it is absent.
    pub async fn size(&self, digest: &Sha256) -> Result<Option<u64>> {
        match self {
            BlobStore::Local(dir) => dir.size(digest).await,
            BlobStore::S3(bucket) => bucket.size(digest).await,
        }
    }

    /// Whether the blob is stored.
    pub async fn exists(&self, digest: &Sha256) -> Result<bool> {
        Ok(self.size(digest).await?.is_some())
    }

    /// Removes a blob; removing an absent blob succeeds.
    pub async fn delete(&self, digest: &Sha256) -> Result<()> {
        match self {
            BlobStore::Local(dir) => dir.delete(digest).await,
            BlobStore::S3(bucket) => bucket.delete(digest).await,
        }
    }
}

/// The error of an upload past the limit.
pub fn too_large(limit: u64) -> Error {
    Error::TooLarge(format!(
        "the artifact is larger than the limit of {limit} bytes (max_artifact_bytes); nothing was stored"
    ))
}
