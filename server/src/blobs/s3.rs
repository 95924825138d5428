//! The S3-compatible backend (AWS S3, MinIO, Ceph RGW, …) through
//! `object_store`, for servers that run as several replicas. An upload goes to
//! `PREFIX/uploads/ID` as a multipart upload, hashed on the way; then it is
//! copied to `PREFIX/sha256/ab/abcdef…` unless that object exists, and the
//! temporary object is removed. A failed or oversized upload is aborted.

use std::fmt::Display;
use std::sync::Arc;

use bytes::Bytes;
use drover_proto::Sha256;
use futures_util::{Stream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, WriteMultipart};
use sha2::Digest;

use super::{ByteStream, Stored, too_large};
use crate::error::{Error, Result};

/// Size of each multipart part (S3 wants at least 5 MiB but for the last).
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts in flight per upload; with the one being filled, this bounds memory.
const PARTS_IN_FLIGHT: usize = 2;

/// Where and how to reach a bucket. Endpoint and region may come from the
/// `blob_url` (`s3://BUCKET/PREFIX?endpoint=URL&region=R`); credentials come
/// from the usual `AWS_*` variables (or the instance's role), never the URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// Endpoint of an S3-compatible server, such as `http://minio:9000`.
    pub endpoint: Option<String>,
    /// Region (S3-compatible servers usually accept any).
    pub region: Option<String>,
    /// Access key id, when not taken from the environment.
    pub access_key_id: Option<String>,
    /// Secret access key, when not taken from the environment.
    pub secret_access_key: Option<String>,
}

impl S3Options {
    /// Parses `s3://BUCKET[/PREFIX][?endpoint=URL&region=REGION]`.
    pub fn parse_url(url: &str) -> Result<S3Options> {
        let bad = |m: &str| {
            Error::invalid(
                "blob_url",
                format!("{url:?}: {m}; use s3://BUCKET/PREFIX?endpoint=URL&region=REGION"),
            )
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("not an s3:// URL"))?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        if bucket.is_empty() {
            return Err(bad("the bucket is missing"));
        }
        let mut options = S3Options {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            ..S3Options::default()
        };
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query).map_err(|_| bad("the query is not readable"))?;
        for (key, value) in pairs {
            match key.as_str() {
                "endpoint" => options.endpoint = Some(value),
                "region" => options.region = Some(value),
                other => {
                    return Err(bad(&format!(
                        "unknown parameter {other:?} (endpoint and region are accepted; credentials come from AWS_* variables)"
                    )));
                }
            }
        }
        Ok(options)
    }
}

/// A bucket (and prefix) holding blobs.
#[derive(Clone)]
pub struct S3Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl std::fmt::Debug for S3Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Bucket")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn s3_err(what: &str, e: object_store::Error) -> Error {
    Error::Internal(format!("blob store (S3): {what}: {e}"))
}

impl S3Bucket {
    /// Connects lazily (nothing is sent until the first request); with
    /// `from_env` the `AWS_*` variables fill what `options` leaves out.
    pub fn connect(options: &S3Options, from_env: bool) -> Result<S3Bucket> {
        let mut builder = if from_env {
            AmazonS3Builder::from_env()
        } else {
            AmazonS3Builder::new()
        };
        builder = builder.with_bucket_name(&options.bucket);
        if let Some(endpoint) = &options.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(region) = &options.region {
            builder = builder.with_region(region);
        }
        if let Some(id) = &options.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &options.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let store = builder.build().map_err(|e| {
            Error::invalid("blob_url", format!("S3 bucket {}: {e}", options.bucket))
        })?;
        Ok(S3Bucket {
            store: Arc::new(store),
            prefix: options.prefix.clone(),
        })
    }

    fn key(&self, rest: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(rest)
        } else {
            ObjectPath::from(format!("{}/{rest}", self.prefix))
        }
    }

    fn path_of(&self, digest: &Sha256) -> ObjectPath {
        let hex = digest.to_string();
        self.key(&format!("sha256/{}/{hex}", &hex[..2]))
    }

    pub(super) async fn put<S, E>(&self, mut body: S, limit: u64) -> Result<Stored>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let tmp = self.key(&format!("uploads/{}", uuid::Uuid::now_v7().simple()));
        let upload = self
            .store
            .put_multipart(&tmp)
            .await
            .map_err(|e| s3_err("starting an upload", e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        // Hashing a network-sized chunk takes microseconds; it stays inline.
        let mut hasher = sha2::Sha256::new();
        let mut size: u64 = 0;
        let reading: Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| {
                    Error::invalid("body", format!("reading the upload failed: {e}"))
                })?;
                size = size.saturating_add(chunk.len() as u64);
                if size > limit {
                    return Err(too_large(limit));
                }
                hasher.update(&chunk);
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| s3_err("uploading", e))?;
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        if let Err(e) = reading {
            let _ = writer.abort().await;
            return Err(e);
        }
        writer
            .finish()
            .await
            .map_err(|e| s3_err("finishing an upload", e))?;
        let sha256 = Sha256::from_bytes(hasher.finalize().into());
        let target = self.path_of(&sha256);
        let settled = match self.store.head(&target).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => self
                .store
                .copy(&tmp, &target)
                .await
                .map_err(|e| s3_err("storing", e)),
            Err(e) => Err(s3_err("checking", e)),
        };
        let _ = self.store.delete(&tmp).await;
        settled.map(|()| Stored { sha256, size })
    }

    pub(super) async fn open(&self, digest: &Sha256, start: u64, len: u64) -> Result<ByteStream> {
        if len == 0 {
            // S3 has no empty range; there is nothing to fetch anyway.
            return match self.size(digest).await? {
                Some(_) => Ok(futures_util::stream::empty().boxed()),
                None => Err(Error::NotFound(format!("no blob {digest}"))),
            };
        }
        let options = GetOptions::new().with_range(Some(start..start.saturating_add(len)));
        match self.store.get_opts(&self.path_of(digest), options).await {
            Ok(got) => Ok(got.into_stream().map_err(std::io::Error::other).boxed()),
            Err(object_store::Error::NotFound { .. }) => {
                Err(Error::NotFound(format!("no blob {digest}")))
            }
            Err(e) => Err(s3_err("reading", e)),
        }
    }

    pub(super) async fn size(&self, digest: &Sha256) -> Result<Option<u64>> {
        match self.store.head(&self.path_of(digest)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_err("reading", e)),
        }
    }

    pub(super) async fn delete(&self, digest: &Sha256) -> Result<()> {
        match self.store.delete(&self.path_of(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3_err("deleting", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_bucket_prefix_endpoint_and_region() {
        let o = S3Options::parse_url(
            "s3://fleet/blobs/prod/?endpoint=http://minio:9000&region=eu-west-1",
        )
        .expect("valid");
        assert_eq!(o.bucket, "fleet");
        assert_eq!(o.prefix, "blobs/prod");
        assert_eq!(o.endpoint.as_deref(), Some("http://minio:9000"));
        assert_eq!(o.region.as_deref(), Some("eu-west-1"));
        let o = S3Options::parse_url("s3://fleet").expect("valid");
        assert_eq!((o.prefix.as_str(), o.endpoint), ("", None));
        for bad in ["s3://", "s3:///x", "s3://b?secret=x"] {
            let e = S3Options::parse_url(bad).unwrap_err().to_string();
            assert!(e.starts_with("blob_url:"), "{bad}: {e}");
        }
    }
}
