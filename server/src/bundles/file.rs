//! The `.drover` bundle file for offline installs: a tar archive of
//! `envelope.json`, `trust.json` (the current trust document) and
//! `payloads/NAME` for each payload. Only the tar headers are built in memory;
//! payload bytes stream from the blob store, so memory stays flat for
//! multi-GiB bundles, and the length is known before the first byte.

use bytes::Bytes;
use drover_proto::manifest::{BUNDLE_FILE_ENVELOPE, BUNDLE_FILE_PAYLOADS_DIR, BUNDLE_FILE_TRUST};
use futures_util::StreamExt;
use futures_util::stream;

use crate::blobs::{BlobStore, ByteStream};
use crate::error::{Error, Result};
use crate::keys;
use crate::store::Store;

const BLOCK: u64 = 512;

/// A `.drover` file ready to stream.
pub struct BundleFile {
    /// File name for Content-Disposition (`NAME-VERSION.drover`).
    pub file_name: String,
    /// Exact length in bytes.
    pub length: u64,
    /// The bytes.
    pub stream: ByteStream,
}

/// One piece of the archive.
enum Part {
    Bytes(Bytes),
    Blob {
        sha256: drover_proto::Sha256,
        size: u64,
    },
}

impl Part {
    fn len(&self) -> u64 {
        match self {
            Part::Bytes(b) => b.len() as u64,
            Part::Blob { size, .. } => *size,
        }
    }
}

/// The tar header (with a GNU long-name entry first when the path needs one).
fn header(path: &str, size: u64, mtime: u64) -> Result<Bytes> {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    let mut builder = tar::Builder::new(Vec::new());
    // With an empty reader `append_data` writes the header alone; the data
    // and its padding follow from the stream.
    builder
        .append_data(&mut header, path, std::io::empty())
        .map_err(|e| Error::Internal(format!("tar header for {path}: {e}")))?;
    Ok(Bytes::from(std::mem::take(builder.get_mut())))
}

fn padding(len: u64) -> Option<Bytes> {
    let rest = len % BLOCK;
    (rest != 0).then(|| Bytes::from(vec![0u8; (BLOCK - rest) as usize]))
}

fn file_parts(parts: &mut Vec<Part>, path: &str, body: Part, mtime: u64) -> Result<()> {
    let len = body.len();
    parts.push(Part::Bytes(header(path, len, mtime)?));
    parts.push(body);
    if let Some(pad) = padding(len) {
        parts.push(Part::Bytes(pad));
    }
    Ok(())
}

/// Builds the `.drover` file of a bundle.
pub async fn bundle_file(store: &Store, blobs: &BlobStore, id: &str) -> Result<BundleFile> {
    let bundle = super::get(store, id).await?;
    let manifest = bundle.manifest()?;
    let trust = keys::current_trust(store)
        .await?
        .ok_or_else(|| Error::Internal("no trust document".into()))?;
    let mtime = u64::try_from(bundle.created_at / 1000).unwrap_or_default();
    let mut parts = Vec::new();
    file_parts(
        &mut parts,
        BUNDLE_FILE_ENVELOPE,
        Part::Bytes(Bytes::from(bundle.envelope.clone())),
        mtime,
    )?;
    file_parts(
        &mut parts,
        BUNDLE_FILE_TRUST,
        Part::Bytes(Bytes::from(trust.to_json())),
        mtime,
    )?;
    for p in &manifest.payloads {
        // Fail before the first byte rather than in the middle of the archive.
        if blobs.size(&p.sha256).await? != Some(p.size) {
            return Err(Error::Internal(format!(
                "the blob of payload {} ({}) is missing or has another size",
                p.name, p.sha256
            )));
        }
        file_parts(
            &mut parts,
            &format!("{BUNDLE_FILE_PAYLOADS_DIR}/{}", p.name),
            Part::Blob {
                sha256: p.sha256,
                size: p.size,
            },
            mtime,
        )?;
    }
    // The end of a tar archive: two zero blocks.
    parts.push(Part::Bytes(Bytes::from(vec![0u8; 2 * BLOCK as usize])));
    let length = parts.iter().map(Part::len).sum();
    let blobs = blobs.clone();
    let stream = stream::iter(parts)
        .then(move |part| {
            let blobs = blobs.clone();
            async move {
                match part {
                    Part::Bytes(b) => stream::once(async move { Ok(b) }).boxed(),
                    Part::Blob { sha256, size } => match blobs.open(&sha256, 0, size).await {
                        Ok(s) => s,
                        Err(e) => {
                            stream::once(async move { Err(std::io::Error::other(e.to_string())) })
                                .boxed()
                        }
                    },
                }
            }
        })
        .flatten()
        .boxed();
    Ok(BundleFile {
        file_name: format!("{}-{}.drover", bundle.name, bundle.version),
        length,
        stream,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_one_block_or_a_long_name_and_one_block() {
        let short = header("payloads/model.onnx", 10, 0).expect("header");
        assert_eq!(short.len(), 512);
        let long = header(&format!("payloads/{}", "x".repeat(128)), 10, 0).expect("header");
        assert_eq!(
            long.len(),
            512 * 3,
            "long-name header, its name block, the header"
        );
        assert_eq!(padding(512), None);
        assert_eq!(padding(10).map(|p| p.len()), Some(502));
    }
}
