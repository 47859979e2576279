//! Our Authenticode digest against a second, independent reader: the
//! `authenticode` crate over `object`'s PE parser, for every PE image of
//! the test corpus (system EFI binaries, the test kernel and UKI, UKIs we
//! build, signed copies of each, and the malformed and regression images
//! both readers accept).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use object::read::pe::{PeFile32, PeFile64};
use sha2::{Digest, Sha256};

/// The digest the `authenticode` crate computes, or None when `object`
/// does not take the file as a PE image.
fn theirs(data: &[u8]) -> Option<[u8; 32]> {
    let mut h = Sha256::new();
    let done = if let Ok(pe) = PeFile64::parse(data) {
        authenticode::authenticode_digest(&pe, &mut h).ok()
    } else if let Ok(pe) = PeFile32::parse(data) {
        authenticode::authenticode_digest(&pe, &mut h).ok()
    } else {
        None
    };
    done.map(|()| h.finalize().into())
}

/// Ours: the digest of the file as it is (no signing padding).
fn ours(p: &Path) -> Option<[u8; 32]> {
    let img = pki_signer::pe::PeImage::open(p).ok()?;
    img.digest().ok().map(|d| d.sha256_unpadded)
}

fn corpus(scratch: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = vec![];
    for dir in ["/usr/lib/systemd/boot/efi", "/usr/lib/shim"] {
        if let Ok(rd) = fs::read_dir(dir) {
            v.extend(
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "efi" || e == "stub")),
            );
        }
    }
    for var in ["PKI_SIGNER_TEST_VMLINUZ", "PKI_SIGNER_TEST_UKI"] {
        if let Ok(p) = std::env::var(var) {
            v.push(PathBuf::from(p));
        }
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in [
        "testdata/regress",
        "testdata/malformed/pe",
        "testdata/malformed/uki",
    ] {
        if let Ok(rd) = fs::read_dir(repo.join(dir)) {
            v.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    // Signed copies: the digest leaves out the certificate table.
    ok(run_in(
        scratch,
        &[
            "pki",
            "init",
            "--dir",
            "pki",
            "--key-type",
            "ec:prime256v1",
            "--uefi",
        ],
    ));
    let unsigned: Vec<PathBuf> = v
        .iter()
        .filter(|p| ours(p).is_some())
        .take(8)
        .cloned()
        .collect();
    for (i, p) in unsigned.iter().enumerate() {
        let out = scratch.join(format!("signed-{i}.efi"));
        let o = run_in(
            scratch,
            &[
                "pe",
                "sign",
                p.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--append",
                "--role",
                "ssig_subca",
            ],
        );
        if o.status.success() {
            v.push(out);
        }
    }
    // A UKI of ours, signed, PCR policy and all.
    let td = |f: &str| {
        repo.join("testdata/uki")
            .join(f)
            .to_string_lossy()
            .into_owned()
    };
    if Path::new("/usr/lib/systemd/boot/efi/linuxx64.efi.stub").is_file() {
        ok(run_in(
            scratch,
            &[
                "uki",
                "build",
                "--linux",
                &td("linux.bin"),
                "--os-release",
                &td("os-release"),
                "--cmdline",
                "quiet",
                "--role",
                "ssig_subca",
                "--pcr-role",
                "tpm2-pcr",
                "-o",
                "uki.efi",
            ],
        ));
        v.push(scratch.join("uki.efi"));
    }
    v
}

#[test]
fn our_digest_equals_the_authenticode_crates_over_the_corpus() {
    let t = tempfile::tempdir().unwrap();
    let files = corpus(t.path());
    let (mut compared, mut only_ours, mut only_theirs) = (0, vec![], vec![]);
    for p in &files {
        let data = fs::read(p).unwrap();
        match (ours(p), theirs(&data)) {
            (Some(a), Some(b)) => {
                assert_eq!(
                    pki_signer::codec::hex(&a),
                    pki_signer::codec::hex(&b),
                    "{}",
                    p.display()
                );
                compared += 1;
            }
            (Some(_), None) => only_ours.push(p.display().to_string()),
            (None, Some(_)) => only_theirs.push(p.display().to_string()),
            (None, None) => {}
        }
    }
    eprintln!(
        "{compared} images agree; accepted only by us: {only_ours:?}; only by the authenticode crate: {only_theirs:?}"
    );
    assert!(compared >= 10, "only {compared} images compared");
    // What we accept, the independent reader reads the same way.
    assert!(only_ours.is_empty(), "{only_ours:?}");
}
