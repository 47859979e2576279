//! Helpers shared by the fuzz targets (included with `#[path]`, not a target itself).
#![allow(dead_code)]

use std::path::PathBuf;

/// A per-process scratch file for APIs that read from a path. RAM-backed
/// /dev/shm when there is one, so millions of writes cost no disk I/O.
pub fn scratch(name: &str) -> PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("pki-signer-fuzz-{}-{name}", std::process::id()))
}

/// Write `data` to the scratch file `name` and return its path.
pub fn scratch_with(name: &str, data: &[u8]) -> PathBuf {
    let p = scratch(name);
    std::fs::write(&p, data).expect("write scratch file");
    p
}

/// A self-signed EC P-256 CA with its key, made once per process: signing
/// with it is cheap enough to run on every accepted input.
pub fn identity() -> pki_signer::identity::Identity {
    use pki_signer::keys::{FileKey, KeyType};
    use pki_signer::x509::{self, CertSpec, Subject};
    use rcgen::KeyUsagePurpose;
    let origin = std::path::Path::new("fuzz key");
    let pkcs8 = KeyType::EcP256.generate().expect("generate key");
    let key = FileKey::from_pkcs8(&pkcs8, origin).expect("load key");
    let spec = CertSpec {
        subject: Subject {
            common_name: "fuzz CA".into(),
            ..Default::default()
        },
        ca: true,
        not_before: time::OffsetDateTime::now_utc() - time::Duration::days(1),
        days: 30,
        key_usage: vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ],
        eku: vec![],
    };
    let cert = x509::issue(&spec, &key, None).expect("issue CA");
    pki_signer::identity::Identity {
        signer: Box::new(key),
        cert,
        chain: vec![],
    }
}
