//! Writes a signed `.drover` bundle with one random payload of N bytes, and the root public key
//! that verifies it, for trying `drover-agent verify` and for its benchmark:
//!
//! ```sh
//! cargo run --release -p drover-agent --example make-bundle -- --out /var/tmp/bench --size 1G
//! drover-agent verify --root-key /var/tmp/bench/root.pub /var/tmp/bench/bundle.drover
//! ```
//!
//! The keys are fixed test keys, printed nowhere and good for nothing else.

use std::fs::File;
use std::io::{BufWriter, Read as _, Write as _};
use std::path::PathBuf;

use clap::Parser;
use drover_agent::bundle::file::write_bundle;
use drover_proto::{
    Installer, KeyStatus, Kind, Manifest, Payload, PayloadFormat, PublicKey, SafeName, Sha256,
    SigningKey, SigningKeyEntry, Timestamp, TrustDocument, Version,
};
use sha2::Digest as _;

/// Writes OUT/bundle.drover (one random payload of SIZE bytes) and OUT/root.pub.
#[derive(Parser)]
struct Args {
    /// The directory to write into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Payload size in bytes; K, M and G suffixes are powers of 1024.
    #[arg(long, value_parser = parse_size)]
    size: u64,
    /// The device type the manifest names.
    #[arg(long, default_value = "generic")]
    device_type: String,
}

fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().last() {
        Some((i, 'K' | 'k')) => (&text[..i], 1 << 10),
        Some((i, 'M' | 'm')) => (&text[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&text[..i], 1 << 30),
        _ => (text, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("`{text}` is not a size such as 1048576, 512K, 64M or 1G"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let root = SigningKey::from_bytes(&[100; 32]);
    let signer = SigningKey::from_bytes(&[1; 32]);

    // The payload: xorshift64* from a seed off the kernel, hashed as it is written.
    let payload_path = args.out.join("payload.bin");
    let mut seed = [0u8; 8];
    File::open("/dev/urandom")?.read_exact(&mut seed)?;
    let mut state = u64::from_le_bytes(seed) | 1;
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&payload_path)?);
    let mut hasher = sha2::Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    let mut left = args.size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            word.copy_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        let n = usize::try_from(left.min(block.len() as u64))?;
        out.write_all(&block[..n])?;
        hasher.update(&block[..n]);
        left -= n as u64;
    }
    out.into_inner()?.sync_all()?;

    let issued = Timestamp::parse("2025-01-01T00:00:00Z")?;
    let expires = Timestamp::parse("2099-01-01T00:00:00Z")?;
    let public = PublicKey::from(&signer);
    let trust = TrustDocument {
        schema: 1,
        version: 1,
        issued_at: issued,
        expires_at: expires,
        root_public_key: PublicKey::from(&root),
        signing_keys: vec![SigningKeyEntry {
            keyid: public.key_id(),
            public_key: public,
            kinds: vec![],
            status: KeyStatus::Active,
        }],
        revoked_keyids: vec![],
        ca_certificates_pem: vec![],
    }
    .sign(&root)?;
    let name = SafeName::parse("payload.bin")?;
    let manifest = Manifest {
        schema: 1,
        bundle_id: "make-bundle".into(),
        name: SafeName::parse("bench")?,
        kind: Kind::Application,
        version: Version::parse("1.0.0")?,
        device_types: vec![args.device_type],
        installer: Installer::Files,
        created_at: issued,
        expires_at: expires,
        allow_downgrade: false,
        payloads: vec![Payload {
            name: name.clone(),
            size: args.size,
            sha256: Sha256::from_bytes(hasher.finalize().into()),
            format: PayloadFormat::File,
        }],
    };
    let envelope = manifest.sign(&signer)?;

    let bundle = args.out.join("bundle.drover");
    let file = File::create(&bundle)?;
    write_bundle(&file, &envelope, &trust, &[(name, payload_path.clone())])?;
    file.sync_all()?;
    std::fs::remove_file(&payload_path)?;
    let key = args.out.join("root.pub");
    std::fs::write(&key, PublicKey::from(&root).to_pem()?)?;
    println!("{}", bundle.display());
    println!("{}", key.display());
    Ok(())
}
