//! The `.drover` bundle file: a tar archive holding `envelope.json`, `trust.json` and
//! `payloads/NAME`, read entry by entry and never unpacked. Only regular files with exactly those
//! names, each once, pass [`BundleFile::open`]; the two JSON entries are read (at most
//! [`MAX_JSON_BYTES`] each) while payloads are only located, so no payload byte is read before the
//! signatures are checked, whatever order the entries come in.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read as _, Seek as _, SeekFrom, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use drover_proto::manifest::{BUNDLE_FILE_ENVELOPE, BUNDLE_FILE_PAYLOADS_DIR, BUNDLE_FILE_TRUST};
use drover_proto::{Envelope, Manifest, PayloadError, PayloadHasher, SafeName};
use tar::EntryType;

use crate::error::{Error, Result};

/// Largest `envelope.json` or `trust.json` read from a bundle file.
pub const MAX_JSON_BYTES: u64 = 1024 * 1024;
/// Largest tar extension header (GNU long name or link, PAX record set) accepted. tar-rs reads
/// these into memory whole, so they are bounded before it does.
pub const MAX_EXTENSION_BYTES: u64 = 64 * 1024;
/// Most tar headers read: each of the at most 256 payloads and the two JSON files may come with a
/// long name, a long link and a PAX header of its own.
pub const MAX_HEADERS: usize = 4 * (drover_proto::manifest::MAX_PAYLOADS + 2);
/// Bytes read at a time when streaming a payload: large enough that system calls vanish next to
/// SHA-256, small enough to keep the agent's memory flat for payloads of any size.
pub const READ_BUFFER_BYTES: usize = 1024 * 1024;

/// Why a bundle file's structure, or its entries against the manifest, are not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// The tar structure does not parse (bad header checksum, truncated header, bad number…).
    #[error("bundle file check failed: the file is not a valid tar archive: {0}")]
    Tar(String),
    /// More headers than any bundle needs.
    #[error("bundle file check failed: the archive has more than {limit} tar headers")]
    TooManyHeaders {
        /// The limit.
        limit: usize,
    },
    /// A long-name or PAX header larger than any bundle needs.
    #[error(
        "bundle file check failed: a tar extension header (long name or PAX) is {size} bytes, over the {limit}-byte limit"
    )]
    ExtensionTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// An entry's path starts with `/`.
    #[error("bundle file check failed: entry `{name}` has an absolute path")]
    AbsolutePath {
        /// The entry's path (shortened).
        name: String,
    },
    /// An entry's path has a `..` component.
    #[error("bundle file check failed: entry `{name}` leaves the bundle through `..`")]
    ParentPath {
        /// The entry's path (shortened).
        name: String,
    },
    /// An entry is not a regular file.
    #[error(
        "bundle file check failed: entry `{name}` is a {kind}, and a bundle holds only regular files"
    )]
    NotRegular {
        /// The entry's path (shortened).
        name: String,
        /// What it is instead.
        kind: &'static str,
    },
    /// An entry's name is none of the names a bundle has.
    #[error(
        "bundle file check failed: entry `{name}` is not part of a bundle ({reason}); a bundle holds envelope.json, trust.json and payloads/NAME only"
    )]
    Unexpected {
        /// The entry's path (shortened).
        name: String,
        /// Why it is not one of the expected names.
        reason: String,
    },
    /// The same name appears twice.
    #[error("bundle file check failed: entry `{name}` appears more than once")]
    Duplicate {
        /// The entry's path.
        name: String,
    },
    /// `envelope.json` or `trust.json` is larger than [`MAX_JSON_BYTES`].
    #[error("bundle file check failed: {name} is {size} bytes, over the {limit}-byte limit")]
    JsonTooLarge {
        /// The entry.
        name: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// An entry's data runs past the end of the file.
    #[error(
        "bundle file check failed: entry `{name}` declares {size} bytes, but the file ends before them (truncated)"
    )]
    Truncated {
        /// The entry's path.
        name: String,
        /// Its declared size.
        size: u64,
    },
    /// `envelope.json` or `trust.json` is missing.
    #[error("bundle file check failed: the file has no {name}")]
    Missing {
        /// The entry.
        name: &'static str,
    },
    /// `envelope.json` or `trust.json` is not a DSSE envelope.
    #[error("bundle file check failed: {name} is not a valid DSSE envelope: {reason}")]
    BadEnvelope {
        /// The entry.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A payload entry that the signed manifest does not list.
    #[error(
        "bundle file check failed: entry `payloads/{name}` is not a payload the signed manifest lists"
    )]
    UnlistedPayload {
        /// The payload name.
        name: String,
    },
    /// A payload the signed manifest lists has no entry.
    #[error(
        "bundle file check failed: the signed manifest lists payload `{name}`, and the file has no `payloads/{name}`"
    )]
    MissingPayload {
        /// The payload name.
        name: String,
    },
    /// A payload entry's size differs from the manifest's.
    #[error(
        "payload check failed: `payloads/{name}` is {in_file} bytes in the file, and the signed manifest declares {declared}"
    )]
    SizeMismatch {
        /// The payload name.
        name: String,
        /// Size of the entry.
        in_file: u64,
        /// Size in the manifest.
        declared: u64,
    },
}

/// What an entry of a bundle file is, by its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryName {
    /// `envelope.json`.
    Envelope,
    /// `trust.json`.
    Trust,
    /// `payloads/NAME`.
    Payload(SafeName),
}

impl EntryName {
    /// Classifies a tar entry's raw path; only the exact names of a bundle pass (no `./`, no
    /// trailing `/`, no normalisation of any kind).
    pub fn parse(raw: &[u8]) -> Result<EntryName, FileError> {
        let name = shorten(&String::from_utf8_lossy(raw));
        let Ok(text) = std::str::from_utf8(raw) else {
            return Err(FileError::Unexpected {
                name,
                reason: "its name is not UTF-8".into(),
            });
        };
        if text.starts_with('/') {
            return Err(FileError::AbsolutePath { name });
        }
        if text.split(['/', '\\']).any(|part| part == "..") {
            return Err(FileError::ParentPath { name });
        }
        if text == BUNDLE_FILE_ENVELOPE {
            return Ok(EntryName::Envelope);
        }
        if text == BUNDLE_FILE_TRUST {
            return Ok(EntryName::Trust);
        }
        let payload = text
            .strip_prefix(BUNDLE_FILE_PAYLOADS_DIR)
            .and_then(|rest| rest.strip_prefix('/'));
        match payload {
            Some(rest) => {
                SafeName::parse(rest)
                    .map(EntryName::Payload)
                    .map_err(|e| FileError::Unexpected {
                        name,
                        reason: format!("payload {e}"),
                    })
            }
            None => Err(FileError::Unexpected {
                name,
                reason: "unknown name".into(),
            }),
        }
    }
}

/// Where a payload's bytes lie in the bundle file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Located {
    offset: u64,
    size: u64,
}

/// A bundle file whose structure checked out: its two envelopes' JSON read, its payloads located.
/// The file stays open, so the bytes streamed later are those of the file checked now.
#[derive(Debug)]
pub struct BundleFile {
    path: PathBuf,
    file: File,
    envelope_json: Vec<u8>,
    trust_json: Vec<u8>,
    payloads: BTreeMap<SafeName, Located>,
}

impl BundleFile {
    /// Opens and indexes `path`. Structure errors are [`Error::Bundle`]; I/O errors are
    /// [`Error::Io`].
    pub fn open(path: &Path) -> Result<BundleFile> {
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let length = file
            .metadata()
            .map_err(|e| Error::io("read", path, e))?
            .len();
        let refused = |source: FileError| Error::Bundle {
            bundle: path.to_owned(),
            source: source.into(),
        };
        bound_headers(&file).map_err(|e| e.into_error(path, refused))?;
        let index = index(&file, length).map_err(|e| e.into_error(path, refused))?;
        let envelope_json = index
            .envelope_json
            .ok_or(FileError::Missing {
                name: BUNDLE_FILE_ENVELOPE,
            })
            .map_err(refused)?;
        let trust_json = index
            .trust_json
            .ok_or(FileError::Missing {
                name: BUNDLE_FILE_TRUST,
            })
            .map_err(refused)?;
        Ok(BundleFile {
            path: path.to_owned(),
            file,
            envelope_json,
            trust_json,
            payloads: index.payloads,
        })
    }

    /// The bundle file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `envelope.json`, parsed (not verified).
    pub fn envelope(&self) -> Result<Envelope, FileError> {
        Envelope::from_json(&self.envelope_json).map_err(|e| FileError::BadEnvelope {
            name: BUNDLE_FILE_ENVELOPE,
            reason: e.to_string(),
        })
    }

    /// `trust.json`, parsed (not verified).
    pub fn trust(&self) -> Result<Envelope, FileError> {
        Envelope::from_json(&self.trust_json).map_err(|e| FileError::BadEnvelope {
            name: BUNDLE_FILE_TRUST,
            reason: e.to_string(),
        })
    }

    /// Checks the payload entries against the (verified) manifest: the same names, and each
    /// entry exactly as long as declared.
    pub fn match_manifest(&self, manifest: &Manifest) -> Result<(), FileError> {
        if let Some(name) = self
            .payloads
            .keys()
            .find(|n| manifest.payload(n.as_str()).is_none())
        {
            return Err(FileError::UnlistedPayload {
                name: name.to_string(),
            });
        }
        for payload in &manifest.payloads {
            let Some(located) = self.payloads.get(&payload.name) else {
                return Err(FileError::MissingPayload {
                    name: payload.name.to_string(),
                });
            };
            if located.size != payload.size {
                return Err(FileError::SizeMismatch {
                    name: payload.name.to_string(),
                    in_file: located.size,
                    declared: payload.size,
                });
            }
        }
        Ok(())
    }

    /// Streams the payload `hasher` checks through it into `sink`, `buffer` bytes at a time, and
    /// fails on the first size or digest mismatch. Bytes reach `sink` before the digest is known:
    /// the sink is a staging file (removed on failure) or nowhere.
    pub fn stream_payload(
        &self,
        mut hasher: PayloadHasher,
        name: &SafeName,
        sink: &mut dyn Write,
        buffer: &mut [u8],
    ) -> Result<StreamOutcome> {
        let Some(located) = self.payloads.get(name) else {
            return Ok(StreamOutcome::Refused(
                FileError::MissingPayload {
                    name: name.to_string(),
                }
                .into(),
            ));
        };
        let mut offset = located.offset;
        let end = located.offset.saturating_add(located.size);
        while offset < end {
            let want = usize::try_from(end - offset)
                .unwrap_or(usize::MAX)
                .min(buffer.len());
            let read = self
                .file
                .read_at(&mut buffer[..want], offset)
                .map_err(|e| Error::io("read", &self.path, e))?;
            if read == 0 {
                // The file shrank since it was indexed: the hasher reports the short payload.
                break;
            }
            let chunk = &buffer[..read];
            if let Err(e) = hasher.update(chunk) {
                return Ok(StreamOutcome::Refused(e.into()));
            }
            sink.write_all(chunk)
                .map_err(|e| Error::io("write the payload", Path::new(name.as_str()), e))?;
            offset += read as u64;
        }
        Ok(match hasher.finish() {
            Ok(()) => StreamOutcome::Matched,
            Err(e) => StreamOutcome::Refused(e.into()),
        })
    }
}

/// How streaming one payload ended (I/O errors aside).
#[derive(Debug)]
pub enum StreamOutcome {
    /// Size and sha256 match the manifest.
    Matched,
    /// A check failed.
    Refused(super::BundleError),
}

impl From<PayloadError> for super::BundleError {
    fn from(e: PayloadError) -> Self {
        super::BundleError::Payload(e)
    }
}

/// A failure while walking the tar headers: a refusal, or an I/O error of the file itself.
enum WalkError {
    Refused(FileError),
    Io(io::Error),
}

impl WalkError {
    fn into_error(self, path: &Path, refused: impl Fn(FileError) -> Error) -> Error {
        match self {
            WalkError::Refused(e) => refused(e),
            WalkError::Io(e) => Error::io("read", path, e),
        }
    }
}

impl From<FileError> for WalkError {
    fn from(e: FileError) -> Self {
        WalkError::Refused(e)
    }
}

/// tar-rs reports malformed archives as `io::Error`s of kind `Other` (or `UnexpectedEof` for a
/// short header); those are refusals of the file, not failures to read it.
fn tar_error(e: io::Error) -> WalkError {
    match e.kind() {
        io::ErrorKind::Other | io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData => {
            WalkError::Refused(FileError::Tar(e.to_string()))
        }
        _ => WalkError::Io(e),
    }
}

/// First pass, over raw headers only (no extension is read): bounds the number of headers and the
/// size of every long-name and PAX header before tar-rs reads them into memory.
fn bound_headers(file: &File) -> Result<(), WalkError> {
    let mut reader = file;
    reader.seek(SeekFrom::Start(0)).map_err(WalkError::Io)?;
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries_with_seek().map_err(tar_error)?.raw(true);
    for (count, entry) in entries.enumerate() {
        if count >= MAX_HEADERS {
            return Err(FileError::TooManyHeaders { limit: MAX_HEADERS }.into());
        }
        let entry = entry.map_err(tar_error)?;
        let kind = entry.header().entry_type();
        let extension = kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions();
        if extension && entry.size() > MAX_EXTENSION_BYTES {
            return Err(FileError::ExtensionTooLarge {
                size: entry.size(),
                limit: MAX_EXTENSION_BYTES,
            }
            .into());
        }
    }
    Ok(())
}

#[derive(Default)]
struct Index {
    envelope_json: Option<Vec<u8>>,
    trust_json: Option<Vec<u8>>,
    payloads: BTreeMap<SafeName, Located>,
}

/// Second pass, over entries as tar-rs resolves them (long names, PAX `path` and `size`): checks
/// each name and type, reads the JSON entries and locates payloads without reading them.
///
/// Names are compared as tar-rs reads them. Another tar reader might see an ambiguous archive
/// differently, but what gets installed is only ever bytes whose sha256 the signed manifest
/// names, so such a difference can refuse a bundle and never smuggle one in.
fn index(file: &File, length: u64) -> Result<Index, WalkError> {
    let mut reader = file;
    reader.seek(SeekFrom::Start(0)).map_err(WalkError::Io)?;
    let mut archive = tar::Archive::new(reader);
    let mut index = Index::default();
    for entry in archive.entries_with_seek().map_err(tar_error)? {
        let mut entry = entry.map_err(tar_error)?;
        let raw_name = entry.path_bytes().into_owned();
        let shown = shorten(&String::from_utf8_lossy(&raw_name));
        let kind = entry.header().entry_type();
        // The name is judged first, so that `../x` as a symlink reports the escape.
        let name = EntryName::parse(&raw_name)?;
        if kind != EntryType::Regular {
            return Err(FileError::NotRegular {
                name: shown,
                kind: kind_name(kind),
            }
            .into());
        }
        let size = entry.size();
        let offset = entry.raw_file_position();
        if offset.checked_add(size).is_none_or(|end| end > length) {
            return Err(FileError::Truncated { name: shown, size }.into());
        }
        let duplicate = || FileError::Duplicate {
            name: shown.clone(),
        };
        match name {
            EntryName::Envelope | EntryName::Trust => {
                let (label, slot) = match name {
                    EntryName::Envelope => (BUNDLE_FILE_ENVELOPE, &mut index.envelope_json),
                    _ => (BUNDLE_FILE_TRUST, &mut index.trust_json),
                };
                if slot.is_some() {
                    return Err(duplicate().into());
                }
                if size > MAX_JSON_BYTES {
                    return Err(FileError::JsonTooLarge {
                        name: label,
                        size,
                        limit: MAX_JSON_BYTES,
                    }
                    .into());
                }
                let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
                (&mut entry)
                    .take(MAX_JSON_BYTES)
                    .read_to_end(&mut bytes)
                    .map_err(WalkError::Io)?;
                *slot = Some(bytes);
            }
            EntryName::Payload(payload) => {
                if index
                    .payloads
                    .insert(payload, Located { offset, size })
                    .is_some()
                {
                    return Err(duplicate().into());
                }
            }
        }
    }
    Ok(index)
}

/// What a non-regular entry is, in words.
fn kind_name(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Symlink => "symbolic link",
        EntryType::Link => "hard link",
        EntryType::Directory => "directory",
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "FIFO",
        EntryType::Continuous => "contiguous file",
        EntryType::GNUSparse => "sparse file",
        EntryType::XGlobalHeader => "PAX global header",
        _ => "special entry",
    }
}

/// At most 200 characters of an entry name, for messages.
fn shorten(name: &str) -> String {
    let mut shown: String = name.chars().take(200).collect();
    if shown.len() < name.len() {
        shown.push('…');
    }
    shown
}

/// Writes a `.drover` file in the order the agent reads best: `envelope.json`, `trust.json`, then
/// each `payloads/NAME` streamed from its file. For the server's bundle export, tests and the
/// `make-bundle` example.
pub fn write_bundle(
    out: impl Write,
    envelope: &Envelope,
    trust: &Envelope,
    payloads: &[(SafeName, PathBuf)],
) -> io::Result<()> {
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Deterministic);
    for (name, json) in [
        (BUNDLE_FILE_ENVELOPE, envelope.to_json()),
        (BUNDLE_FILE_TRUST, trust.to_json()),
    ] {
        let mut header = regular_header(json.len() as u64);
        builder.append_data(&mut header, name, json.as_bytes())?;
    }
    for (name, path) in payloads {
        let file = File::open(path)?;
        let mut header = regular_header(file.metadata()?.len());
        builder.append_data(
            &mut header,
            format!("{BUNDLE_FILE_PAYLOADS_DIR}/{name}"),
            io::BufReader::with_capacity(READ_BUFFER_BYTES, file),
        )?;
    }
    builder.into_inner()?.flush()
}

fn regular_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o644);
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::BundleError;

    /// A raw tar entry: `name`, `kind` and `data`, with the header written by hand so that tests
    /// can build what no well-behaved tar writer would.
    struct Raw<'a> {
        name: &'a str,
        kind: EntryType,
        data: &'a [u8],
        declared: Option<u64>,
    }

    fn raw<'a>(name: &'a str, data: &'a [u8]) -> Raw<'a> {
        Raw {
            name,
            kind: EntryType::Regular,
            data,
            declared: None,
        }
    }

    fn tar_of(entries: &[Raw<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            let mut header = tar::Header::new_gnu();
            // set_path refuses `..` and absolute paths; write the name field directly.
            let bytes = e.name.as_bytes();
            header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            header.set_entry_type(e.kind);
            header.set_size(e.declared.unwrap_or(e.data.len() as u64));
            header.set_mode(0o644);
            if e.kind == EntryType::Symlink {
                header.set_link_name("/etc/passwd").unwrap();
            }
            header.set_cksum();
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(e.data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0; 1024]);
        out
    }

    fn open(bytes: &[u8]) -> Result<BundleFile> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.drover");
        std::fs::write(&path, bytes).unwrap();
        BundleFile::open(&path)
    }

    fn refusal(bytes: &[u8]) -> FileError {
        match open(bytes).unwrap_err() {
            Error::Bundle {
                source: BundleError::File(e),
                ..
            } => e,
            other => panic!("not a file refusal: {other}"),
        }
    }

    const ENVELOPE: &[u8] = b"{\"envelope\":1}";
    const TRUST: &[u8] = b"{\"trust\":1}";

    #[test]
    fn names_must_be_exactly_those_of_a_bundle() {
        assert_eq!(
            EntryName::parse(b"envelope.json").unwrap(),
            EntryName::Envelope
        );
        assert_eq!(EntryName::parse(b"trust.json").unwrap(), EntryName::Trust);
        assert_eq!(
            EntryName::parse(b"payloads/model.onnx").unwrap(),
            EntryName::Payload(SafeName::parse("model.onnx").unwrap())
        );
        for bad in [
            &b"./envelope.json"[..],
            b"payloads/",
            b"payloads/a/b",
            b"payloads",
            b"other.txt",
            b"payloads/\xff",
            b"Envelope.json",
        ] {
            assert!(
                matches!(EntryName::parse(bad), Err(FileError::Unexpected { .. })),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            EntryName::parse(b"/etc/passwd"),
            Err(FileError::AbsolutePath { .. })
        ));
        for escape in [
            &b"../envelope.json"[..],
            b"payloads/../../x",
            b"payloads/..\\x",
        ] {
            assert!(matches!(
                EntryName::parse(escape),
                Err(FileError::ParentPath { .. })
            ));
        }
    }

    #[test]
    fn a_well_formed_file_is_indexed_in_any_order() {
        let bytes = tar_of(&[
            raw("payloads/b", b"bbbb"),
            raw("trust.json", TRUST),
            raw("payloads/a", b"a"),
            raw("envelope.json", ENVELOPE),
        ]);
        let file = open(&bytes).unwrap();
        assert_eq!(file.envelope_json, ENVELOPE);
        assert_eq!(file.trust_json, TRUST);
        let sizes: Vec<(String, u64)> = file
            .payloads
            .iter()
            .map(|(n, l)| (n.to_string(), l.size))
            .collect();
        assert_eq!(sizes, [("a".into(), 1), ("b".into(), 4)]);
        let located = file.payloads[&SafeName::parse("b").unwrap()];
        let mut buf = [0u8; 4];
        file.file.read_exact_at(&mut buf, located.offset).unwrap();
        assert_eq!(&buf, b"bbbb");
    }

    #[test]
    fn files_written_by_write_bundle_are_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let payload = dir.path().join("p");
        std::fs::write(&payload, vec![7u8; 3000]).unwrap();
        let key = drover_proto::SigningKey::from_bytes(&[1; 32]);
        let envelope = Envelope::sign("a", b"m".to_vec(), &key).unwrap();
        let trust = Envelope::sign("b", b"t".to_vec(), &key).unwrap();
        let long = SafeName::parse(&"n".repeat(128)).unwrap();
        let path = dir.path().join("b.drover");
        write_bundle(
            File::create(&path).unwrap(),
            &envelope,
            &trust,
            &[(long.clone(), payload)],
        )
        .unwrap();
        let file = BundleFile::open(&path).unwrap();
        assert_eq!(file.envelope().unwrap(), envelope);
        assert_eq!(file.trust().unwrap(), trust);
        assert_eq!(file.payloads[&long].size, 3000);
    }

    #[test]
    fn links_devices_and_directories_are_refused() {
        for (kind, words) in [
            (EntryType::Symlink, "symbolic link"),
            (EntryType::Link, "hard link"),
            (EntryType::Directory, "directory"),
            (EntryType::Char, "character device"),
            (EntryType::Block, "block device"),
            (EntryType::Fifo, "FIFO"),
        ] {
            let bytes = tar_of(&[
                raw("envelope.json", ENVELOPE),
                raw("trust.json", TRUST),
                Raw {
                    name: "payloads/model.onnx",
                    kind,
                    data: b"",
                    declared: None,
                },
            ]);
            let err = refusal(&bytes);
            assert_eq!(
                err,
                FileError::NotRegular {
                    name: "payloads/model.onnx".into(),
                    kind: words
                }
            );
        }
    }

    #[test]
    fn escaping_and_absolute_paths_are_refused_whatever_the_entry_type() {
        let symlink = Raw {
            name: "../evil",
            kind: EntryType::Symlink,
            data: b"",
            declared: None,
        };
        assert!(matches!(
            refusal(&tar_of(&[symlink])),
            FileError::ParentPath { .. }
        ));
        assert!(matches!(
            refusal(&tar_of(&[raw("/etc/cron.d/x", b"x")])),
            FileError::AbsolutePath { .. }
        ));
        assert!(matches!(
            refusal(&tar_of(&[raw("payloads/../../etc/x", b"x")])),
            FileError::ParentPath { .. }
        ));
    }

    #[test]
    fn duplicates_unexpected_and_missing_entries_are_refused() {
        let twice = tar_of(&[
            raw("envelope.json", ENVELOPE),
            raw("trust.json", TRUST),
            raw("envelope.json", ENVELOPE),
        ]);
        assert_eq!(
            refusal(&twice),
            FileError::Duplicate {
                name: "envelope.json".into()
            }
        );
        let payload_twice = tar_of(&[raw("payloads/a", b"1"), raw("payloads/a", b"2")]);
        assert!(matches!(
            refusal(&payload_twice),
            FileError::Duplicate { .. }
        ));
        let extra = tar_of(&[raw("envelope.json", ENVELOPE), raw("README", b"hi")]);
        assert!(matches!(refusal(&extra), FileError::Unexpected { .. }));
        let no_trust = tar_of(&[raw("envelope.json", ENVELOPE)]);
        assert_eq!(
            refusal(&no_trust),
            FileError::Missing { name: "trust.json" }
        );
        assert_eq!(
            refusal(&tar_of(&[])),
            FileError::Missing {
                name: "envelope.json"
            }
        );
    }

    #[test]
    fn oversized_json_is_refused_without_reading_it() {
        let big: &'static [u8] =
            Box::leak(vec![b' '; MAX_JSON_BYTES as usize + 1].into_boxed_slice());
        let bytes = tar_of(&[raw("envelope.json", big)]);
        assert_eq!(
            refusal(&bytes),
            FileError::JsonTooLarge {
                name: "envelope.json",
                size: MAX_JSON_BYTES + 1,
                limit: MAX_JSON_BYTES
            }
        );
    }

    #[test]
    fn truncated_and_corrupt_archives_are_refused() {
        let mut bytes = tar_of(&[raw("envelope.json", ENVELOPE), raw("payloads/a", b"abc")]);
        // Declare a payload far longer than the file.
        let short = tar_of(&[Raw {
            name: "payloads/a",
            kind: EntryType::Regular,
            data: b"abc",
            declared: Some(1 << 20),
        }]);
        assert!(matches!(refusal(&short), FileError::Truncated { .. }));
        // A flipped byte in a header breaks its checksum.
        bytes[10] ^= 0x20;
        assert!(matches!(refusal(&bytes), FileError::Tar(_)));
        // Not a tar at all.
        assert!(matches!(
            refusal(b"{\"this is\": \"json\"}"),
            FileError::Tar(_) | FileError::Missing { .. }
        ));
    }

    #[test]
    fn huge_extension_headers_are_refused_before_tar_reads_them() {
        let pax: &'static [u8] =
            Box::leak(vec![b'x'; MAX_EXTENSION_BYTES as usize + 1].into_boxed_slice());
        let bytes = tar_of(&[
            Raw {
                name: "PaxHeader",
                kind: EntryType::XHeader,
                data: pax,
                declared: None,
            },
            raw("envelope.json", ENVELOPE),
        ]);
        assert!(matches!(
            refusal(&bytes),
            FileError::ExtensionTooLarge { .. }
        ));
    }

    #[test]
    fn a_pax_size_record_is_the_size_that_counts() {
        // The header says 3 bytes, the PAX record says 5: tar-rs (0.4.45+) takes 5, like GNU tar.
        let record = b"10 size=5\n";
        let bytes = tar_of(&[
            Raw {
                name: "PaxHeader",
                kind: EntryType::XHeader,
                data: record,
                declared: None,
            },
            Raw {
                name: "payloads/a",
                kind: EntryType::Regular,
                data: b"hello",
                declared: Some(3),
            },
            raw("envelope.json", ENVELOPE),
            raw("trust.json", TRUST),
        ]);
        let file = open(&bytes).unwrap();
        assert_eq!(file.payloads[&SafeName::parse("a").unwrap()].size, 5);
    }
}
