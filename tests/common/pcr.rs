//! Checking a UKI's PCR policy with peers only: Python extracts the
//! sections, systemd-measure computes PCR 11, Python recomputes each
//! policy digest from it (testdata/uki/policy.py), openssl verifies each
//! signature.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{bin, openssl, peer, peer_ok, stderr};

pub const MEASURE: &str = "/usr/lib/systemd/systemd-measure";

fn testdata(f: &str) -> String {
    format!("{}/testdata/uki/{f}", env!("CARGO_MANIFEST_DIR"))
}

/// Extract `uki`'s sections into `d/s`; returns that directory.
#[allow(dead_code)]
pub fn extract(d: &Path, uki: &str) -> PathBuf {
    let py = peer("python3").expect("python3");
    peer_ok(&py, &[&testdata("sections.py"), uki, "s"], d);
    d.join("s")
}

/// Verify every policy of `d/s/pcrsig` (from [`extract`]) for `banks` with
/// the public key `key` (PEM); returns how many verified. None when
/// systemd-measure is not installed. Panics on a policy that does not verify.
#[allow(dead_code)]
pub fn verify_policies(d: &Path, banks: &[&str], key: &Path) -> Option<usize> {
    if !Path::new(MEASURE).is_file() {
        return None;
    }
    let mut args = vec!["calculate".to_string()];
    for f in [
        "linux", "osrel", "cmdline", "initrd", "splash", "dtb", "pcrpkey",
    ] {
        if d.join("s").join(f).is_file() {
            args.push(format!("--{f}=s/{f}"));
        }
    }
    args.extend(banks.iter().map(|b| format!("--bank={b}")));
    args.push("--json=short".into());
    let o = Command::new(MEASURE)
        .args(&args)
        .current_dir(d)
        .output()
        .unwrap();
    assert!(o.status.success(), "systemd-measure: {}", stderr(&o));
    fs::write(d.join("calc.json"), &o.stdout).unwrap();
    let py = peer("python3").expect("python3");
    let listed = peer_ok(
        &py,
        &[&testdata("policy.py"), "calc.json", "s/pcrsig", "pol"],
        d,
    );
    let mut n = 0;
    for l in listed.lines() {
        let id = l.split_whitespace().next().unwrap();
        let bank = format!("-{}", id.split('-').next().unwrap());
        let (pol, sig) = (format!("pol/{id}.pol"), format!("pol/{id}.sig"));
        let key = key.to_str().unwrap();
        let args = ["dgst", &bank, "-verify", key, "-signature", &sig, &pol];
        let o = Command::new(openssl())
            .args(args)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(o.status.success(), "policy {id} with {key}: {}", stderr(&o));
        n += 1;
    }
    Some(n)
}

/// `uki build` in `d` of testdata's kernel and os-release and `d/initrd`,
/// SOURCE_DATE_EPOCH fixed, with `extra` (keys, banks...) added.
#[allow(dead_code)]
pub fn uki_build(d: &Path, out: &str, extra: &[&str]) -> Output {
    let (linux, osrel) = (testdata("linux.bin"), testdata("os-release"));
    let mut args = vec![
        "uki",
        "build",
        "--linux",
        &linux,
        "--os-release",
        &osrel,
        "--initrd",
        "initrd",
        "--cmdline",
        "quiet",
        "-o",
        out,
    ];
    args.extend(extra);
    Command::new(bin())
        .args(&args)
        .current_dir(d)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .expect("run pki-signer")
}
