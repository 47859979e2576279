//! The firmware proof: OVMF with Secure Boot enforced and our PK/KEK/db
//! enrolled boots a UKI signed by pki-signer, and refuses the unsigned and
//! a tampered copy. Runs QEMU under TCG (tests/ovmf/boot.sh), ~10-30 s a boot.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/ovmf/boot.sh` exit code: 0 booted, 1 denied by the firmware, 2 harness error.
fn boot(dir: &Path, uki: &str, pki: &Path, extra_db: &[&str]) -> i32 {
    let mut c = Command::new("bash");
    c.arg(repo().join("tests/ovmf/boot.sh"))
        .args(["--uki", uki, "--timeout", "240"]);
    c.args([
        "--pk",
        pki.join("PK.crt").to_str().unwrap(),
        "--kek",
        pki.join("KEK.crt").to_str().unwrap(),
    ]);
    c.args(["--db", pki.join("DB.crt").to_str().unwrap()]);
    for d in extra_db {
        c.args(["--db", d]);
    }
    let o = c.current_dir(dir).output().unwrap();
    let code = o.status.code().unwrap_or(-1);
    eprintln!("boot {uki}: exit {code}\n{}{}", stdout(&o), stderr(&o));
    code
}

#[test]
fn ovmf_secure_boot_boots_our_signed_uki_and_refuses_unsigned_and_tampered() {
    let Some(uki) = std::env::var("PKI_SIGNER_TEST_UKI")
        .ok()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    else {
        if std::env::var("PKI_SIGNER_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("PKI_SIGNER_TEST_UKI is required (scripts/test.sh prepares it)");
        }
        eprintln!("skipped: no test UKI");
        return;
    };
    if peer("qemu-system-x86_64").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(run_in(d, &["pki", "init", "--uefi"]));
    let pki = d.join("pki");
    // db holds DB and the Software Signing Sub CA (as DB.esl does).
    peer_ok(
        &openssl(),
        &[
            "x509",
            "-in",
            "pki/ssig_subca.cert",
            "-out",
            "ssig_subca.pem",
        ],
        d,
    );
    let subca = d.join("ssig_subca.pem");
    let subca = subca.to_str().unwrap();

    ok(run_in(
        d,
        &[
            "pe",
            "sign",
            uki.to_str().unwrap(),
            "-o",
            "signed.efi",
            "--role",
            "ssig_subca",
        ],
    ));
    let mut tampered = fs::read(d.join("signed.efi")).unwrap();
    // One byte inside the .osrel text of the UKI.
    let at = tampered
        .windows(5)
        .position(|w| w == b"NAME=")
        .expect("os-release in UKI");
    tampered[at] ^= 0x20;
    fs::write(d.join("tampered.efi"), tampered).unwrap();

    assert_eq!(
        boot(d, "signed.efi", &pki, &[subca]),
        0,
        "signed UKI must boot"
    );
    assert_eq!(
        boot(d, uki.to_str().unwrap(), &pki, &[subca]),
        1,
        "unsigned UKI must be denied"
    );
    assert_eq!(
        boot(d, "tampered.efi", &pki, &[subca]),
        1,
        "tampered UKI must be denied"
    );
}

/// OVMF in Setup Mode takes our PK.auth, KEK.auth and DB.auth through
/// efivarfs, rejects forged ones, then enforces Secure Boot with them.
#[test]
fn ovmf_setup_mode_accepts_our_auth_files_then_enforces_them() {
    if peer("qemu-system-x86_64").is_none() {
        return;
    }
    let o = Command::new("bash")
        .arg(repo().join("tests/ovmf/enroll.sh"))
        .env("PKI_SIGNER_BIN", bin())
        .output()
        .unwrap();
    let log = stdout(&o) + &stderr(&o);
    eprintln!("{log}");
    assert_eq!(o.status.code(), Some(0), "enroll.sh: {log}");
}

/// `pki rotate` proven in firmware: OVMF in User Mode with Secure Boot on
/// takes the db append (signed by KEK) through efivarfs, boots the
/// successor's image, takes the dbx update, then refuses the predecessor's
/// image and still boots the successor's. Then `pki rotate KEK`: the KEK
/// append and the KEK replacement (both signed by PK) are accepted, after
/// which db/dbx updates signed by the new KEK are accepted and a db update
/// signed by the retired KEK is refused (tests/ovmf/rotate.sh, ~2.5 min).
#[test]
fn ovmf_user_mode_applies_rotation_updates_then_denies_the_predecessor() {
    if peer("qemu-system-x86_64").is_none() {
        return;
    }
    let o = Command::new("bash")
        .arg(repo().join("tests/ovmf/rotate.sh"))
        .env("PKI_SIGNER_BIN", bin())
        .output()
        .unwrap();
    let log = stdout(&o) + &stderr(&o);
    eprintln!("{log}");
    assert_eq!(o.status.code(), Some(0), "rotate.sh: {log}");
}
