//! The contract shared by the Drover server and agent: signed envelopes, manifests, trust, topics
//! and MQTT messages. Pure data and rules only: no I/O, no async, no clock (time is passed in).

#![deny(missing_docs)]

pub mod device_api;
pub mod envelope;
pub mod manifest;
pub mod messages;
pub mod timestamp;
pub mod topics;
pub mod trust;
pub mod verify;
pub mod version;

pub use device_api::{
    CaResponse, CertificateResponse, EnrollRequest, EnrollResponse, OfferedPayload, RecoverRequest,
    RenewRequest, UpdateOffer, UpdateStatusRecorded, UpdateStatusReport,
};
pub use envelope::{
    Envelope, EnvelopeError, KeyId, PublicKey, SigningKey, pae, signing_key_from_pem,
    signing_key_to_pem,
};
pub use manifest::{
    Installer, Kind, MANIFEST_PAYLOAD_TYPE, Manifest, ManifestError, Payload, PayloadFormat,
    SafeName, Sha256,
};
pub use messages::{
    Command, Epoch, Health, InstalledBundle, MessageError, Presence, Reading, Readings, Telemetry,
    UpdateState,
};
pub use timestamp::{Timestamp, TimestampError};
pub use topics::{DeviceId, PrefixShape, TopicError, TopicKind, parse_topic, topic};
pub use trust::{
    KeyStatus, SigningKeyEntry, TRUST_PAYLOAD_TYPE, TrustDocument, TrustError, TrustStore,
    TrustedDocument,
};
pub use verify::{
    DeviceFacts, PayloadError, PayloadHasher, VerifiedManifest, VerifyError, verify_bundle,
    verify_bundle_without_device,
};
pub use version::{Version, VersionError};
