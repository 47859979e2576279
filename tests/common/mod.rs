//! Helpers shared by the integration tests: run our binary, run peer tools.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod pcr;
pub mod softhsm;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pki-signer")
}

/// Run pki-signer with `args` in `cwd`, with a clean PKI_SIGNER_* environment.
pub fn run_in(cwd: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(bin());
    c.args(args).current_dir(cwd);
    for (k, _) in std::env::vars() {
        if k.starts_with("PKI_SIGNER_") && k != "PKI_SIGNER_REQUIRE_PEERS" {
            c.env_remove(k);
        }
    }
    c.output().expect("run pki-signer")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
pub fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "expected success, got {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(&o),
        stderr(&o)
    );
    o
}

/// Assert exit code `code` and a single-line error on stderr; return that line.
#[track_caller]
pub fn fails(o: Output, code: i32) -> String {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(&o),
        stderr(&o)
    );
    let err = stderr(&o);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "error must be one line: {err:?}"
    );
    assert!(err.starts_with("pki-signer: error: "), "{err}");
    err
}

/// A peer tool (openssl, cert-to-efi-sig-list, sbverify...). scripts/test.sh
/// installs them and sets PKI_SIGNER_REQUIRE_PEERS=1, so in CI a missing peer
/// fails the test instead of silently skipping it.
pub fn peer(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var("PKI_SIGNER_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("peer tool {name} is required (PKI_SIGNER_REQUIRE_PEERS=1) but not installed");
        }
        eprintln!("skipped: peer tool {name} not installed");
    }
    found
}

/// Run a peer tool; panics with its output if it fails.
#[track_caller]
pub fn peer_ok(tool: &Path, args: &[&str], cwd: &Path) -> String {
    let o = Command::new(tool)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run peer");
    assert!(
        o.status.success(),
        "{} {:?} failed: {}{}",
        tool.display(),
        args,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o) + &stderr(&o)
}

pub const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// systemd-boot's EFI binary, a real PE image to sign. None (the test skips)
/// when it is not installed, unless PKI_SIGNER_REQUIRE_PEERS=1.
pub fn systemd_boot() -> Option<&'static str> {
    if Path::new(SYSTEMD_BOOT).is_file() {
        return Some(SYSTEMD_BOOT);
    }
    if std::env::var("PKI_SIGNER_REQUIRE_PEERS").as_deref() == Ok("1") {
        panic!("{SYSTEMD_BOOT} is missing (apt install systemd-boot-efi)");
    }
    eprintln!("skipped: {SYSTEMD_BOOT} not available");
    None
}

/// A file a test needs, named by the environment variable `var` (scripts/test.sh
/// prepares it; `how` says how). None (the test skips) when unset or missing,
/// unless PKI_SIGNER_REQUIRE_PEERS=1.
pub fn test_file(var: &str, how: &str) -> Option<PathBuf> {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    if p.is_none() {
        if std::env::var("PKI_SIGNER_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("{var} is required ({how})");
        }
        eprintln!("skipped: {var} not set ({how})");
    }
    p
}

pub fn openssl() -> PathBuf {
    peer("openssl").expect("openssl is needed by every PKI test")
}

/// What a device does: make its own P-256 key (`device.key`, kept) and a
/// CSR for it (`device.csr`) with openssl, in `dir`.
pub fn device_csr(dir: &Path, subject: &str) {
    peer_ok(
        &openssl(),
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "device.key",
            "-subj",
            subject,
            "-out",
            "device.csr",
        ],
        dir,
    );
}
