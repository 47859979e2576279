//! The TPM proof of `uki build`'s PCR 11 prediction: a UKI built by
//! `pki-signer uki build` (a systemd-stub: Debian 12's 252, bookworm-backports'
//! 254, trixie's 257 or forky's 262, each measuring a different set of sections; Debian's
//! kernel, a busybox initrd, `.pcrsig` signed by the PKI's PCR key) boots in OVMF with
//! Secure Boot enforced (our PK/KEK/db) and a software TPM 2.0 (swtpm behind
//! QEMU's tpm-tis); systemd-stub measures the sections into PCR 11 and the
//! initrd prints what the kernel reads back from the TPM
//! (/sys/class/tpm/tpm0/pcr-sha256/11). The test then checks, from the TPM's
//! value:
//! - it is not all zeros (the stub measured), and equals `uki measure
//!   --phases :` (the sections only, no boot phase: nothing in a busybox
//!   initrd runs systemd-pcrphase), in the sha256 and sha1 banks;
//! - SHA256(PCR11 || SHA256("enter-initrd")), what systemd-pcrphase extends
//!   when it enters the initrd, equals `uki measure`'s `enter-initrd` value;
//! - the PolicyPCR digest of that value (computed here) is the `pol` of the
//!   `.pcrsig` sha256 `enter-initrd` entry, whose signature `openssl dgst
//!   -verify` accepts with `.pcrpkey`: the policy a TPM-bound disk would be
//!   unlocked with matches the real PCR;
//! - the stub handed `.pcrsig` and `.pcrpkey` to the OS unchanged
//!   (/.extra/tpm2-pcr-signature.json, /.extra/tpm2-pcr-public-key.pem).
//!
//! One boot under TCG: ~35 s of CPU (tests/ovmf/boot.sh --tpm). The three
//! boots take turns: run side by side on the 2-core machine they would each
//! take minutes and risk the timeout.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use common::*;
use sha2::{Digest, Sha256};

const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 loglevel=4 rdinit=/init";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn required() -> bool {
    std::env::var("PKI_SIGNER_REQUIRE_PEERS").as_deref() == Ok("1")
}

/// One boot at a time.
static BOOT: Mutex<()> = Mutex::new(());

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn sha256(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

/// TPM2_PolicyPCR over PCR 11 of the sha256 bank from an empty SHA-256
/// policy session (TPM 2.0 Part 3, 23.7): SHA256(0^32 || TPM_CC_PolicyPCR ||
/// TPML_PCR_SELECTION{count 1, TPM_ALG_SHA256, sizeofSelect 3, 00 08 00} ||
/// SHA256(pcr value)).
fn policy_pcr11_sha256(pcr: &[u8]) -> Vec<u8> {
    let mut m = vec![0u8; 32];
    m.extend_from_slice(&0x0000_017fu32.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 1, 0x00, 0x0b, 3, 0x00, 0x08, 0x00]);
    m.extend_from_slice(&sha256(pcr));
    sha256(&m)
}

/// `uki measure UKI ARGS --json`: bank -> [(phase, hash)].
fn measure(d: &Path, uki: &str, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["uki", "measure", uki, "--json"];
    a.extend(args);
    serde_json::from_slice(&ok(run_in(d, &a)).stdout).unwrap()
}

/// The value of the only phase measured for `bank` (`--phases :`).
fn only_value(v: &serde_json::Value, bank: &str) -> String {
    let e = v[bank]
        .as_array()
        .unwrap_or_else(|| panic!("no {bank}: {v}"));
    assert_eq!(e.len(), 1, "{v}");
    e[0]["hash"].as_str().unwrap().to_string()
}

fn phase_value(v: &serde_json::Value, bank: &str, phase: &str) -> String {
    v[bank]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["phase"] == phase)
        .unwrap_or_else(|| panic!("no {bank} {phase} in {v}"))["hash"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The value after `PREFIX: ` on a serial log line (the last such line).
fn serial_value(log: &str, prefix: &str) -> Option<String> {
    log.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|v| v.trim().to_string())
        .next_back()
}

#[test]
fn ovmf_with_swtpm_measures_into_pcr11_what_uki_measure_predicts() {
    if !Path::new(STUB).is_file() {
        if required() {
            panic!("{STUB} is required (apt install systemd-boot-efi)");
        }
        eprintln!("skipped: {STUB} not installed");
        return;
    }
    prove_on(Path::new(STUB), 252);
}

/// systemd-stub 254 also measures `.uname` and `.sbat` (which `uki build`
/// rewrites as ukify does).
#[test]
fn ovmf_with_swtpm_measures_what_uki_measure_predicts_on_systemd_stub_254() {
    prove_on_stub_from("PKI_SIGNER_TEST_STUB_254", 254);
}

/// systemd-stub 257: exact section names, `.ucode`/`.profile`/`.dtbauto`/
/// `.hwids` known, and `uki build` lays the UKI out as ukify 257 does.
#[test]
fn ovmf_with_swtpm_measures_what_uki_measure_predicts_on_systemd_stub_257() {
    prove_on_stub_from("PKI_SIGNER_TEST_STUB_257", 257);
}

/// systemd-stub 262 (the rules of 258-262): `.efifw` known too, `.sbat`
/// without ukify 257's trailing NUL, the layout ukify 262 makes.
#[test]
fn ovmf_with_swtpm_measures_what_uki_measure_predicts_on_systemd_stub_262() {
    prove_on_stub_from("PKI_SIGNER_TEST_STUB_262", 262);
}

/// [`prove_on`] the stub the environment variable `var` names.
fn prove_on_stub_from(var: &str, major: u32) {
    if let Some(stub) = test_file(var, "scripts/stubdebs.sh prepares it") {
        prove_on(&stub, major);
    }
}

/// Build a signed UKI on `stub` (systemd-stub `major`), boot it with Secure
/// Boot and swtpm, and check the TPM's PCR 11 against the predictions.
fn prove_on(stub: &Path, major: u32) {
    let Some(kernel) = test_file("PKI_SIGNER_TEST_VMLINUZ", "scripts/test.sh prepares it") else {
        return;
    };
    for p in ["qemu-system-x86_64", "swtpm", "busybox", "python3"] {
        if peer(p).is_none() {
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(run_in(d, &["pki", "init", "--uefi"]));
    let pki = d.join("pki");
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

    // The busybox initrd whose /init prints PCR 11 (make-uki.sh --tpm).
    let o = Command::new("bash")
        .arg(repo().join("tests/ovmf/make-uki.sh"))
        .args(["--initrd-only", "initrd.cpio.gz", "--tpm"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(o.status.success(), "make-uki.sh: {}", stderr(&o));
    fs::write(
        d.join("os-release"),
        "NAME=\"pki-signer TPM test UKI\"\nID=pki-signer-test\nVERSION_ID=1\n",
    )
    .unwrap();
    ok(run_in(
        d,
        &[
            "uki",
            "build",
            "--linux",
            kernel.to_str().unwrap(),
            "--initrd",
            "initrd.cpio.gz",
            "--cmdline",
            CMDLINE,
            "--os-release",
            "os-release",
            "--stub",
            stub.to_str().unwrap(),
            "--role",
            "ssig_subca",
            "--pcr-role",
            "tpm2-pcr",
            "-o",
            "tpm.efi",
        ],
    ));

    let show: serde_json::Value =
        serde_json::from_slice(&ok(run_in(d, &["uki", "show", "tpm.efi", "--json"])).stdout)
            .unwrap();
    let version = show["stub_version"]["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(show["stub_version"]["major"], major, "{show}");

    // Predictions, before the boot.
    let sections_only = measure(
        d,
        "tpm.efi",
        &["--phases", ":", "--pcr-banks", "sha1,sha256"],
    );
    let phases = measure(d, "tpm.efi", &[]);
    let enter_initrd = phase_value(&phases, "sha256", "enter-initrd");

    // .pcrsig and .pcrpkey as an independent PE reader sees them.
    peer_ok(
        &peer("python3").unwrap(),
        &[
            repo().join("testdata/uki/sections.py").to_str().unwrap(),
            "tpm.efi",
            "sections",
        ],
        d,
    );
    let pcrsig = fs::read(d.join("sections/pcrsig")).unwrap();
    let pcrpkey = fs::read(d.join("sections/pcrpkey")).unwrap();

    // Boot: Secure Boot enforced with our PK/KEK/db (db: DB and the Software
    // Signing Sub CA, as in tests/firmware.rs), and the TPM.
    let _turn = BOOT.lock().unwrap_or_else(|e| e.into_inner());
    let started = std::time::Instant::now();
    let o = Command::new("bash")
        .arg(repo().join("tests/ovmf/boot.sh"))
        .args(["--uki", "tpm.efi", "--timeout", "240", "--tpm"])
        .args(["--log", "serial.log"])
        .args(["--pk", pki.join("PK.crt").to_str().unwrap()])
        .args(["--kek", pki.join("KEK.crt").to_str().unwrap()])
        .args(["--db", pki.join("DB.crt").to_str().unwrap()])
        .args(["--db", "ssig_subca.pem"])
        .current_dir(d)
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&fs::read(d.join("serial.log")).unwrap_or_default()).into_owned();
    eprintln!(
        "boot.sh --tpm (systemd-stub {version}): exit {:?} after {:.1?}\n{}{}",
        o.status.code(),
        started.elapsed(),
        stdout(&o),
        stderr(&o)
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "our signed UKI must boot with Secure Boot and the TPM; serial log:\n{log}"
    );

    // What the TPM holds.
    let pcr = serial_value(&log, "PKI-SIGNER-PCR11-SHA256:")
        .unwrap_or_else(|| panic!("no PCR 11 line in the serial log:\n{log}"))
        .to_ascii_lowercase();
    assert_ne!(
        pcr, "none",
        "the kernel found no TPM / no sha256 bank:\n{log}"
    );
    assert_eq!(pcr.len(), 64, "{pcr}");
    let pcr_bytes = unhex(&pcr);
    assert_ne!(
        pcr_bytes,
        vec![0u8; 32],
        "PCR 11 is all zeros: nothing measured"
    );

    // 1. The sections only: what the stub measured, as predicted.
    assert_eq!(
        pcr,
        only_value(&sections_only, "sha256"),
        "PCR 11 (sha256) read from the TPM differs from uki measure --phases :"
    );
    match serial_value(&log, "PKI-SIGNER-PCR11-SHA1:").map(|v| v.to_ascii_lowercase()) {
        Some(v) if v != "none" => assert_eq!(
            v,
            only_value(&sections_only, "sha1"),
            "PCR 11 (sha1) read from the TPM differs from uki measure --phases :"
        ),
        _ => eprintln!("note: the TPM has no sha1 bank; sha256 only"),
    }

    // 2. The enter-initrd phase, extended here as systemd-pcrphase does:
    //    PCR11 = SHA256(PCR11 || SHA256("enter-initrd")).
    let mut ext = pcr_bytes.clone();
    ext.extend_from_slice(&sha256(b"enter-initrd"));
    let after_enter_initrd = sha256(&ext);
    assert_eq!(
        hex(&after_enter_initrd),
        enter_initrd,
        "the TPM's PCR 11 extended by enter-initrd differs from uki measure's enter-initrd"
    );

    // 3. The signed policy for that value is in .pcrsig and verifies.
    let pol = hex(&policy_pcr11_sha256(&after_enter_initrd));
    let sig: serde_json::Value = serde_json::from_slice(
        &pcrsig[..pcrsig.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)],
    )
    .unwrap();
    let entry = sig["sha256"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["pol"] == pol.as_str())
        .unwrap_or_else(|| {
            panic!("no .pcrsig sha256 policy {pol} for the TPM's enter-initrd value: {sig}")
        });
    assert_eq!(entry["pcrs"], serde_json::json!([11]));
    fs::write(d.join("pol.bin"), unhex(&pol)).unwrap();
    fs::write(d.join("sig.b64"), entry["sig"].as_str().unwrap()).unwrap();
    let ossl = openssl();
    peer_ok(
        &ossl,
        &["base64", "-d", "-A", "-in", "sig.b64", "-out", "sig.bin"],
        d,
    );
    let v = peer_ok(
        &ossl,
        &[
            "dgst",
            "-sha256",
            "-verify",
            "sections/pcrpkey",
            "-signature",
            "sig.bin",
            "pol.bin",
        ],
        d,
    );
    assert!(v.contains("Verified OK"), "{v}");

    // 4. systemd-stub passed .pcrsig and .pcrpkey on to the OS unchanged.
    let extra: Vec<String> = log
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("PKI-SIGNER-EXTRA: "))
        .map(str::to_string)
        .collect();
    for (want, file) in [
        (&pcrsig, "/.extra/tpm2-pcr-signature.json"),
        (&pcrpkey, "/.extra/tpm2-pcr-public-key.pem"),
    ] {
        let line = format!("{}  {file}", hex(&sha256(want)));
        assert!(
            extra.contains(&line),
            "{file}: want {line:?}, the initrd saw {extra:?}"
        );
    }
    eprintln!(
        "systemd-stub {version}: PCR 11 sha256 from the TPM {pcr} = uki measure --phases :; + enter-initrd {enter_initrd} = uki measure; .pcrsig policy {pol} verifies"
    );
}
