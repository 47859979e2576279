//! `pe sign/verify/attach/unsign/digest/show`, checked with sbverify,
//! osslsigncode and pesign on real EFI binaries.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;

const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
const SYSTEMD_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// One default PKI (RSA-4096 CAs, UEFI keys) shared by the tests of this file.
fn pki() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap().keep();
        ok(run_in(&tmp, &["pki", "init", "--uefi"]));
        // Single-certificate PEMs for tools that want exactly one.
        let ossl = openssl();
        for role in ["ssig_subca", "ssig_rootca"] {
            peer_ok(
                &ossl,
                &[
                    "x509",
                    "-in",
                    &format!("pki/{role}.cert"),
                    "-out",
                    &format!("{role}.pem"),
                ],
                &tmp,
            );
        }
        tmp.join("pki")
    })
}

fn pem(role: &str) -> String {
    pki()
        .parent()
        .unwrap()
        .join(format!("{role}.pem"))
        .to_str()
        .unwrap()
        .to_string()
}

/// A real binary, or None (skipped unless peers are required).
fn fixture(path: Option<&str>, what: &str) -> Option<PathBuf> {
    match path.map(PathBuf::from).filter(|p| p.is_file()) {
        Some(p) => Some(p),
        None => {
            if std::env::var("PKI_SIGNER_REQUIRE_PEERS").as_deref() == Ok("1") {
                panic!("test input {what} is missing (scripts/test.sh prepares it)");
            }
            eprintln!("skipped: {what} not available");
            None
        }
    }
}

fn systemd_boot() -> Option<PathBuf> {
    fixture(Some(SYSTEMD_BOOT), "systemd-bootx64.efi (systemd-boot-efi)")
}

fn stub() -> Option<PathBuf> {
    fixture(Some(SYSTEMD_STUB), "linuxx64.efi.stub (systemd-boot-efi)")
}

/// Debian's vmlinuz, signed by Debian (scripts/testbins.sh).
fn debian_vmlinuz() -> Option<PathBuf> {
    fixture(
        std::env::var("PKI_SIGNER_TEST_VMLINUZ").ok().as_deref(),
        "Debian signed vmlinuz ($PKI_SIGNER_TEST_VMLINUZ)",
    )
}

/// A UKI made with objcopy from the stub, a Debian kernel and a busybox initrd.
fn uki() -> Option<PathBuf> {
    fixture(
        std::env::var("PKI_SIGNER_TEST_UKI").ok().as_deref(),
        "test UKI ($PKI_SIGNER_TEST_UKI)",
    )
}

fn sign(dir: &Path, input: &Path, out: &str, extra: &[&str]) {
    let mut args = vec![
        "pe",
        "sign",
        input.to_str().unwrap(),
        "-o",
        out,
        "--role",
        "ssig_subca",
        "--dir",
        pki().to_str().unwrap(),
    ];
    args.extend(extra);
    ok(run_in(dir, &args));
}

fn sbverify(dir: &Path, cert: &str, file: &str) -> bool {
    let tool = peer("sbverify").expect("sbverify");
    Command::new(tool)
        .args(["--cert", cert, file])
        .current_dir(dir)
        .output()
        .unwrap()
        .status
        .success()
}

fn osslsigncode_verify(dir: &Path, ca: &str, file: &str) -> String {
    let tool = peer("osslsigncode").expect("osslsigncode");
    let o = Command::new(tool)
        .args(["verify", "-CAfile", ca, "-in", file])
        .current_dir(dir)
        .output()
        .unwrap();
    let text = stdout(&o) + &stderr(&o);
    assert!(o.status.success(), "osslsigncode verify {file}: {text}");
    text
}

/// osslsigncode's "Calculated message digest" of a signed file.
fn osslsigncode_digest(dir: &Path, file: &str) -> String {
    let tool = peer("osslsigncode").expect("osslsigncode");
    let o = Command::new(tool)
        .args(["verify", "-in", file])
        .current_dir(dir)
        .output()
        .unwrap();
    let text = stdout(&o);
    let line = text
        .lines()
        .find(|l| l.starts_with("Calculated message digest"))
        .unwrap_or_else(|| panic!("{text}"));
    line.rsplit(':').next().unwrap().trim().to_lowercase()
}

fn our_digest(dir: &Path, file: &str) -> String {
    let out = stdout(&ok(run_in(dir, &["pe", "digest", file])));
    out.split_whitespace().next().unwrap().to_string()
}

#[test]
fn signed_images_are_accepted_by_sbverify_osslsigncode_and_pesign() {
    let inputs: Vec<PathBuf> = [systemd_boot(), stub(), uki()]
        .into_iter()
        .flatten()
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for (i, input) in inputs.iter().enumerate() {
        let out = format!("signed{i}.efi");
        sign(d, input, &out, &[]);
        // db holds the sub CA itself, or the root above it: firmware accepts either.
        assert!(
            sbverify(d, &pem("ssig_subca"), &out),
            "sbverify --cert ssig_subca {}",
            input.display()
        );
        assert!(
            sbverify(d, &pem("ssig_rootca"), &out),
            "sbverify --cert ssig_rootca {}",
            input.display()
        );
        let text = osslsigncode_verify(d, &pem("ssig_rootca"), &out);
        assert!(text.contains("Signature verification: ok"), "{text}");
        // Our digest is what the peer computes over the signed file.
        assert_eq!(
            our_digest(d, &out),
            osslsigncode_digest(d, &out),
            "{}",
            input.display()
        );
        // The signed image's digest is the one announced for the input (which
        // differs from the input's own only by padding an unaligned end).
        let v: serde_json::Value = serde_json::from_str(&stdout(&ok(run_in(
            d,
            &["pe", "digest", "--json", input.to_str().unwrap()],
        ))))
        .unwrap();
        assert_eq!(
            our_digest(d, &out),
            v["sha256_when_signed"].as_str().unwrap()
        );
        if let Some(pesign) = peer("pesign") {
            let s = peer_ok(&pesign, &["-S", "-i", &out], d);
            assert!(
                s.contains("The signer's common name is Software Signing Sub CA"),
                "{s}"
            );
        }
        // And our own verify agrees, through db.
        let db = pki().join("DB.esl");
        ok(run_in(
            d,
            &["pe", "verify", &out, "--db", db.to_str().unwrap()],
        ));
    }
}

#[test]
fn digest_equals_pesign_hash_on_real_binaries() {
    let inputs: Vec<PathBuf> = [systemd_boot(), stub(), debian_vmlinuz(), uki()]
        .into_iter()
        .flatten()
        .collect();
    let Some(pesign) = peer("pesign") else { return };
    let tmp = tempfile::tempdir().unwrap();
    for input in &inputs {
        let p = input.to_str().unwrap();
        let theirs = peer_ok(&pesign, &["-h", "-i", p], tmp.path());
        let theirs = theirs
            .lines()
            .find_map(|l| l.strip_prefix("hash: "))
            .unwrap_or_else(|| panic!("{theirs}"));
        assert_eq!(our_digest(tmp.path(), p), theirs.trim(), "{p}");
    }
}

#[test]
fn our_verify_accepts_sbsign_and_osslsigncode_signatures() {
    let Some(input) = systemd_boot() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let key = pki().join("DB.key");
    let crt = pki().join("DB.crt");
    peer_ok(
        &peer("sbsign").unwrap(),
        &[
            "--key",
            key.to_str().unwrap(),
            "--cert",
            crt.to_str().unwrap(),
            "--output",
            "sb.efi",
            input.to_str().unwrap(),
        ],
        d,
    );
    peer_ok(
        &peer("osslsigncode").unwrap(),
        &[
            "sign",
            "-h",
            "sha256",
            "-certs",
            crt.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
            "-in",
            input.to_str().unwrap(),
            "-out",
            "os.efi",
        ],
        d,
    );
    for f in ["sb.efi", "os.efi"] {
        let out = stdout(&ok(run_in(
            d,
            &["pe", "verify", f, "--cert", crt.to_str().unwrap()],
        )));
        assert!(
            out.contains("trusted via") && out.contains("Signature verification OK"),
            "{f}: {out}"
        );
        // A different anchor is not trusted: exit 1.
        let o = run_in(d, &["pe", "verify", f, "--cert", &pem("ssig_rootca")]);
        assert_eq!(o.status.code(), Some(1), "{f}");
        assert_eq!(our_digest(d, f), osslsigncode_digest(d, f), "{f}");
    }
}

#[test]
fn signing_is_deterministic_and_signing_time_comes_from_source_date_epoch() {
    let Some(input) = systemd_boot() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    sign(d, &input, "a.efi", &[]);
    sign(d, &input, "b.efi", &[]);
    assert_eq!(
        fs::read(d.join("a.efi")).unwrap(),
        fs::read(d.join("b.efi")).unwrap()
    );
    let show: serde_json::Value =
        serde_json::from_str(&stdout(&ok(run_in(d, &["pe", "show", "a.efi", "--json"])))).unwrap();
    assert!(
        show["signatures"][0]["signing_time"].is_null(),
        "no signingTime without SOURCE_DATE_EPOCH"
    );

    let with_epoch = |out: &str| {
        let mut c = Command::new(bin());
        c.args([
            "pe",
            "sign",
            input.to_str().unwrap(),
            "-o",
            out,
            "--role",
            "ssig_subca",
            "--dir",
            pki().to_str().unwrap(),
        ]);
        c.env("SOURCE_DATE_EPOCH", "1700000000").current_dir(d);
        ok(c.output().unwrap());
    };
    with_epoch("c.efi");
    with_epoch("e.efi");
    assert_eq!(
        fs::read(d.join("c.efi")).unwrap(),
        fs::read(d.join("e.efi")).unwrap()
    );
    let show: serde_json::Value =
        serde_json::from_str(&stdout(&ok(run_in(d, &["pe", "show", "c.efi", "--json"])))).unwrap();
    assert_eq!(
        show["signatures"][0]["signing_time"],
        "2023-11-14T22:13:20Z"
    );
    assert!(sbverify(d, &pem("ssig_subca"), "c.efi"));
}

#[test]
fn debian_signed_kernel_append_replace_unsign() {
    let Some(vmlinuz) = debian_vmlinuz() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let sbverify_tool = peer("sbverify").unwrap();
    let list = |f: &str| peer_ok(&sbverify_tool, &["--list", f], d);
    assert!(
        list(vmlinuz.to_str().unwrap()).contains("signature 1"),
        "Debian's kernel is signed"
    );

    // Default: refuse, naming the options.
    let o = run_in(
        d,
        &[
            "pe",
            "sign",
            vmlinuz.to_str().unwrap(),
            "-o",
            "x.efi",
            "--role",
            "ssig_subca",
            "--dir",
            pki().to_str().unwrap(),
        ],
    );
    let err = fails(o, 2);
    assert!(
        err.contains("already signed (1 signature): pass --append") && err.contains("--replace"),
        "{err}"
    );
    assert!(!d.join("x.efi").exists());

    sign(d, &vmlinuz, "appended.efi", &["--append"]);
    let l = list("appended.efi");
    assert!(
        l.contains("signature 1") && l.contains("signature 2"),
        "{l}"
    );
    assert!(l.contains("Debian"), "Debian's signature kept: {l}");
    assert!(sbverify(d, &pem("ssig_subca"), "appended.efi"));

    sign(d, &vmlinuz, "replaced.efi", &["--replace"]);
    let l = list("replaced.efi");
    assert!(
        l.contains("signature 1") && !l.contains("signature 2") && !l.contains("Debian"),
        "{l}"
    );
    assert!(sbverify(d, &pem("ssig_subca"), "replaced.efi"));

    ok(run_in(
        d,
        &["pe", "unsign", "appended.efi", "-o", "bare.efi"],
    ));
    assert!(list("bare.efi").contains("No signature table present"));
    assert_eq!(
        our_digest(d, "bare.efi"),
        our_digest(d, vmlinuz.to_str().unwrap()),
        "unsign restores the digest"
    );
    ok(run_in(
        d,
        &[
            "pe",
            "unsign",
            "appended.efi",
            "-o",
            "ours-only.efi",
            "--index",
            "0",
        ],
    ));
    let l = list("ours-only.efi");
    assert!(
        !l.contains("Debian") && l.contains("Software Signing Sub CA"),
        "{l}"
    );
}

#[test]
fn detached_signatures_work_with_sbattach_and_our_attach() {
    let Some(input) = systemd_boot() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let args = [
        "pe",
        "sign",
        input.to_str().unwrap(),
        "--detached",
        "sig.p7",
        "--role",
        "ssig_subca",
        "--dir",
        pki().to_str().unwrap(),
    ];
    ok(run_in(d, &args));
    fs::copy(&input, d.join("sbattached.efi")).unwrap();
    peer_ok(
        &peer("sbattach").unwrap(),
        &["--attach", "sig.p7", "sbattached.efi"],
        d,
    );
    assert!(sbverify(d, &pem("ssig_subca"), "sbattached.efi"));
    ok(run_in(
        d,
        &[
            "pe",
            "attach",
            input.to_str().unwrap(),
            "--signature",
            "sig.p7",
            "-o",
            "attached.efi",
        ],
    ));
    assert_eq!(
        fs::read(d.join("attached.efi")).unwrap(),
        fs::read(d.join("sbattached.efi")).unwrap(),
        "same bytes as sbattach"
    );
    // sbsign --detached output attaches with ours.
    let key = pki().join("DB.key");
    let crt = pki().join("DB.crt");
    peer_ok(
        &peer("sbsign").unwrap(),
        &[
            "--key",
            key.to_str().unwrap(),
            "--cert",
            crt.to_str().unwrap(),
            "--detached",
            "--output",
            "sb.p7",
            input.to_str().unwrap(),
        ],
        d,
    );
    ok(run_in(
        d,
        &[
            "pe",
            "attach",
            "attached.efi",
            "--signature",
            "sb.p7",
            "-o",
            "two.efi",
            "--append",
        ],
    ));
    assert!(
        sbverify(d, crt.to_str().unwrap(), "two.efi") && sbverify(d, &pem("ssig_subca"), "two.efi")
    );
}

#[test]
fn in_place_and_batch_signing() {
    let Some(input) = systemd_boot() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fs::copy(&input, d.join("inplace.efi")).unwrap();
    ok(run_in(
        d,
        &[
            "pe",
            "sign",
            "inplace.efi",
            "--in-place",
            "--role",
            "ssig_subca",
            "--dir",
            pki().to_str().unwrap(),
        ],
    ));
    assert!(sbverify(d, &pem("ssig_subca"), "inplace.efi"));
    sign(d, &input, "copy.efi", &[]);
    assert_eq!(
        fs::read(d.join("inplace.efi")).unwrap(),
        fs::read(d.join("copy.efi")).unwrap()
    );

    fs::create_dir(d.join("in")).unwrap();
    let names: Vec<String> = (0..20).map(|i| format!("in/app{i}.efi")).collect();
    for n in &names {
        fs::copy(&input, d.join(n)).unwrap();
    }
    let mut args = vec![
        "pe",
        "sign",
        "--out-dir",
        "out",
        "--role",
        "ssig_subca",
        "--dir",
        pki().to_str().unwrap(),
    ];
    args.extend(names.iter().map(|s| s.as_str()));
    fs::create_dir(d.join("out")).unwrap();
    ok(run_in(d, &args));
    for i in [0, 19] {
        assert!(sbverify(d, &pem("ssig_subca"), &format!("out/app{i}.efi")));
    }
    // Signed on several threads, each output is what a call of its own makes.
    for i in 0..20 {
        assert_eq!(
            fs::read(d.join(format!("out/app{i}.efi"))).unwrap(),
            fs::read(d.join("copy.efi")).unwrap(),
            "app{i}.efi"
        );
    }
    let leftovers: Vec<_> = fs::read_dir(d.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");

    // One input that cannot be signed: nothing is written, and the error
    // names it.
    fs::write(d.join("in/app7.efi"), b"MZ but nothing more").unwrap();
    fs::create_dir(d.join("out2")).unwrap();
    args[3] = "out2";
    let err = fails(run_in(d, &args), 2);
    assert!(err.contains("app7.efi"), "{err}");
    assert_eq!(fs::read_dir(d.join("out2")).unwrap().count(), 0);

    // Two inputs with one file name cannot share an output directory.
    fs::create_dir(d.join("in2")).unwrap();
    fs::copy(&input, d.join("in2/app0.efi")).unwrap();
    fs::copy(&input, d.join("in/app7.efi")).unwrap();
    let mut dup = args[..8].to_vec();
    dup.extend(["in/app0.efi", "in2/app0.efi"]);
    let err = fails(run_in(d, &dup), 2);
    assert!(err.contains("out2/app0.efi"), "{err}");
    assert_eq!(fs::read_dir(d.join("out2")).unwrap().count(), 0);
}

#[test]
fn ec_keys_sign_too() {
    let Some(input) = systemd_boot() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(run_in(d, &["pki", "init", "--key-type", "ec:prime256v1"]));
    ok(run_in(
        d,
        &[
            "pe",
            "sign",
            input.to_str().unwrap(),
            "-o",
            "ec.efi",
            "--role",
            "ssig",
        ],
    ));
    // RFC 6979 nonces: EC signatures are reproducible too.
    let sign2 = [
        "pe",
        "sign",
        input.to_str().unwrap(),
        "-o",
        "ec2.efi",
        "--role",
        "ssig",
    ];
    ok(run_in(d, &sign2));
    assert_eq!(
        fs::read(d.join("ec.efi")).unwrap(),
        fs::read(d.join("ec2.efi")).unwrap()
    );
    let text = osslsigncode_verify(d, "pki/ssig_rootca.cert", "ec.efi");
    assert!(text.contains("Signature verification: ok"), "{text}");
    peer_ok(
        &openssl(),
        &["x509", "-in", "pki/ssig_subca.cert", "-out", "sub.pem"],
        d,
    );
    assert!(sbverify(d, "sub.pem", "ec.efi"));
}

#[test]
fn bad_inputs_fail_with_one_line_and_leave_nothing() {
    let Some(input) = systemd_boot() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let data = fs::read(&input).unwrap();
    fs::write(d.join("truncated.efi"), &data[..data.len() / 3]).unwrap();
    fs::write(d.join("headers-only.efi"), &data[..300]).unwrap();
    fs::write(d.join("text.efi"), "#!/bin/sh\necho not a PE\n").unwrap();
    fs::write(d.join("empty.efi"), "").unwrap();
    // Certificate table entry pointing past the end of the file.
    let mut bogus = data.clone();
    let pe = u32::from_le_bytes(bogus[0x3c..0x40].try_into().unwrap()) as usize;
    let dd4 = pe + 24 + 112 + 4 * 8; // PE32+ data directory 4
    bogus[dd4..dd4 + 4].copy_from_slice(&(data.len() as u32 + 4096).to_le_bytes());
    bogus[dd4 + 4..dd4 + 8].copy_from_slice(&64u32.to_le_bytes());
    fs::write(d.join("bogus-table.efi"), &bogus).unwrap();
    for f in [
        "truncated.efi",
        "headers-only.efi",
        "text.efi",
        "empty.efi",
        "bogus-table.efi",
    ] {
        let o = run_in(
            d,
            &[
                "pe",
                "sign",
                f,
                "-o",
                "out.efi",
                "--role",
                "ssig_subca",
                "--dir",
                pki().to_str().unwrap(),
            ],
        );
        let err = fails(o, 2);
        assert!(err.contains(f), "names the file: {err}");
        assert!(!d.join("out.efi").exists(), "{f}: no output left");
        for cmd in [
            vec!["pe", "verify", f, "--db", "x.esl"],
            vec!["pe", "show", f],
            vec!["pe", "digest", f],
        ] {
            let o = run_in(d, &cmd);
            assert!(
                matches!(o.status.code(), Some(1) | Some(2)),
                "{cmd:?}: {:?}",
                o.status
            );
        }
    }
    // Key that does not belong to the certificate.
    let key = pki().join("KEK.key");
    let o = run_in(
        d,
        &[
            "pe",
            "sign",
            input.to_str().unwrap(),
            "-o",
            "out.efi",
            "--key",
            key.to_str().unwrap(),
            "--cert",
            &pem("ssig_subca"),
        ],
    );
    let err = fails(o, 2);
    assert!(err.contains("does not match the key"), "{err}");
    assert!(!d.join("out.efi").exists());
    let leftovers: Vec<_> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}
