//! `uki build / measure / show`, checked by peers: systemd-measure (Debian's
//! systemd 252, bookworm-backports' 254 for a UKI on stub 254, forky's 262
//! for one on stub 262) predicts the same PCR 11 values for the same
//! sections, an independent Python PolicyPCR computation gives the same
//! policy digests, `openssl dgst -verify` accepts the policy signatures,
//! `systemd-measure sign` (run against swtpm) writes the same .pcrsig byte
//! for byte, sbverify / osslsigncode accept the Authenticode signature, and
//! ukify 254, 257 and 262 build the same UKI from the same inputs.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use common::*;

const MEASURE: &str = "/usr/lib/systemd/systemd-measure";
const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn testdata(f: &str) -> String {
    repo().join("testdata/uki").join(f).display().to_string()
}

/// A required system file (systemd-measure, the stub): None skips the
/// test, unless PKI_SIGNER_REQUIRE_PEERS=1.
fn system_file(p: &str, pkg: &str) -> Option<PathBuf> {
    if Path::new(p).is_file() {
        return Some(PathBuf::from(p));
    }
    if std::env::var("PKI_SIGNER_REQUIRE_PEERS").as_deref() == Ok("1") {
        panic!("{p} is required (apt install {pkg})");
    }
    eprintln!("skipped: {p} not installed");
    None
}

fn run_env(cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(bin());
    c.args(args).current_dir(cwd);
    for (k, _) in std::env::vars() {
        if k.starts_with("PKI_SIGNER_") && k != "PKI_SIGNER_REQUIRE_PEERS"
            || k == "SOURCE_DATE_EPOCH"
        {
            c.env_remove(k);
        }
    }
    c.envs(env.iter().copied());
    c.output().expect("run pki-signer")
}

/// A work directory with a development PKI (with the UEFI keys and the PCR
/// key) and the parts of a UKI: two initrds of odd sizes (to check the
/// 4-byte padding between them).
fn setup() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(run_in(d, &["pki", "init", "--uefi"]));
    let a: Vec<u8> = (0..100_003u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(d.join("initrd-a"), a).unwrap();
    fs::write(d.join("initrd-b"), b"second initrd, 30 bytes long..").unwrap();
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
    tmp
}

const BUILD: &[&str] = &[
    "uki",
    "build",
    "--initrd",
    "initrd-a",
    "--initrd",
    "initrd-b",
    "--cmdline",
    "console=ttyS0 quiet",
    "--uname",
    "6.1.0-test",
    "--role",
    "ssig_subca",
    "--pcr-role",
    "tpm2-pcr",
];

fn build(d: &Path, out: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let (linux, osrel) = (testdata("linux.bin"), testdata("os-release"));
    let mut args: Vec<&str> = BUILD.to_vec();
    args.extend(["--linux", &linux, "--os-release", &osrel, "-o", out]);
    args.extend(extra);
    run_env(d, env, &args)
}

/// `build` with the PCR key `pcr_key` (`--pcr-key`) in place of `--pcr-role tpm2-pcr`.
fn build_pcr_key(
    d: &Path,
    out: &str,
    pcr_key: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let (linux, osrel) = (testdata("linux.bin"), testdata("os-release"));
    let mut args: Vec<&str> = BUILD
        .iter()
        .copied()
        .filter(|a| *a != "--pcr-role" && *a != "tpm2-pcr")
        .collect();
    args.extend([
        "--linux",
        &linux,
        "--os-release",
        &osrel,
        "-o",
        out,
        "--pcr-key",
        pcr_key,
    ]);
    args.extend(extra);
    run_env(d, env, &args)
}

/// The sections of `uki` as Python reads them, in `d/dir`.
fn extract(d: &Path, uki: &str, dir: &str) -> Vec<String> {
    let py = peer("python3").expect("python3");
    let out = peer_ok(&py, &[&testdata("sections.py"), uki, dir], d);
    out.lines()
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

/// The sections systemd-measure 252 takes (its options are the names
/// without the dot).
const MEASURED_252: &[&str] = &[
    "linux", "osrel", "cmdline", "initrd", "splash", "dtb", "pcrpkey",
];
/// systemd-measure 254 adds `.uname` and `.sbat`.
const MEASURED_254: &[&str] = &[
    "linux", "osrel", "cmdline", "initrd", "splash", "dtb", "uname", "sbat", "pcrpkey",
];
/// systemd-measure 262 takes these too.
const MEASURED_262: &[&str] = &[
    "linux", "osrel", "cmdline", "initrd", "ucode", "splash", "dtb", "uname", "sbat", "pcrpkey",
    "profile", "dtbauto", "hwids", "efifw",
];

/// systemd-measure's arguments for the sections of `known` extracted to `dir`.
fn measure_args(d: &Path, dir: &str, known: &[&str]) -> Vec<String> {
    known
        .iter()
        .filter(|f| d.join(dir).join(f).is_file())
        .map(|f| format!("--{f}={dir}/{f}"))
        .collect()
}

fn systemd_measure(d: &Path, args: &[String]) -> serde_json::Value {
    systemd_measure_with(Path::new(MEASURE), d, args)
}

fn systemd_measure_with(tool: &Path, d: &Path, args: &[String]) -> serde_json::Value {
    let o = Command::new(tool)
        .args(args)
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "systemd-measure {args:?}: {}",
        stderr(&o)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn json(o: Output) -> serde_json::Value {
    serde_json::from_slice(&ok(o).stdout).unwrap()
}

#[test]
fn measure_from_parts_equals_systemd_measure_calculate() {
    let (Some(_), Some(_)) = (
        system_file(MEASURE, "systemd"),
        system_file(STUB, "systemd-boot-efi"),
    ) else {
        return;
    };
    let tmp = setup();
    let d = tmp.path();
    fs::write(d.join("cmdline"), "console=ttyS0 quiet").unwrap();
    let ours = json(run_in(
        d,
        &[
            "uki",
            "measure",
            "--linux",
            &testdata("linux.bin"),
            "--os-release",
            &testdata("os-release"),
            "--cmdline-file",
            "cmdline",
            "--initrd",
            "initrd-a",
            "--pcrpkey",
            "pki/tpm2-pcr-public.pem",
            "--json",
        ],
    ));
    let theirs = systemd_measure(
        d,
        &[
            "calculate".into(),
            format!("--linux={}", testdata("linux.bin")),
            format!("--osrel={}", testdata("os-release")),
            "--cmdline=cmdline".into(),
            "--initrd=initrd-a".into(),
            "--pcrpkey=pki/tpm2-pcr-public.pem".into(),
            "--json=short".into(),
        ],
    );
    // All four banks, four phases each.
    assert_eq!(theirs.as_object().unwrap().len(), 4);
    assert_eq!(ours, theirs);

    // Phases given: normalised, sorted and deduplicated as systemd-measure does.
    let ours = json(run_in(
        d,
        &[
            "uki",
            "measure",
            "--linux",
            &testdata("linux.bin"),
            "--phases",
            "sysinit:ready,enter-initrd::",
            "--phases",
            "enter-initrd",
            "--pcr-banks",
            "sha384,sha256",
            "--json",
        ],
    ));
    let theirs = systemd_measure(
        d,
        &[
            "calculate".into(),
            format!("--linux={}", testdata("linux.bin")),
            "--phase=sysinit:ready".into(),
            "--phase=enter-initrd::".into(),
            "--phase=enter-initrd".into(),
            "--bank=sha384".into(),
            "--bank=sha256".into(),
            "--json=short".into(),
        ],
    );
    assert_eq!(ours, theirs);

    // The sections alone, before any phase: what the TPM holds when the initrd starts.
    let ours = json(run_in(
        d,
        &[
            "uki",
            "measure",
            "--linux",
            &testdata("linux.bin"),
            "--phases",
            ":",
            "--json",
        ],
    ));
    let theirs = systemd_measure(
        d,
        &[
            "calculate".into(),
            format!("--linux={}", testdata("linux.bin")),
            "--phase=:".into(),
            "--json=short".into(),
        ],
    );
    assert_eq!(ours, theirs);
}

#[test]
fn built_uki_is_accepted_by_peers_and_its_pcr_policy_verifies() {
    let Some(measure) = system_file(MEASURE, "systemd") else {
        return;
    };
    if system_file(STUB, "systemd-boot-efi").is_none() {
        return;
    }
    let tmp = setup();
    let d = tmp.path();
    let report = json(build(
        d,
        "uki.efi",
        &["--pcr-banks", "sha512,sha256", "--json"],
        &[],
    ));

    // The digest signed, computed as the image was written, is the one
    // read back from the file.
    assert_eq!(report["digest"], written_digest(d, "uki.efi"));

    // Authenticode: sbverify and osslsigncode.
    if let Some(sbverify) = peer("sbverify") {
        peer_ok(&sbverify, &["--cert", "ssig_subca.pem", "uki.efi"], d);
    }
    if let Some(oss) = peer("osslsigncode") {
        let t = peer_ok(
            &oss,
            &[
                "verify",
                "-CAfile",
                "pki/ssig_rootca.cert",
                "-in",
                "uki.efi",
            ],
            d,
        );
        assert!(t.contains("Signature verification: ok"), "{t}");
    }

    // The layout, read independently.
    let names = extract(d, "uki.efi", "s");
    let tail: Vec<&str> = names.iter().map(|s| s.as_str()).skip(8).collect();
    assert_eq!(
        tail,
        [".osrel", ".cmdline", ".uname", ".pcrpkey", ".initrd", ".linux", ".pcrsig"]
    );
    let initrd = fs::read(d.join("s/initrd")).unwrap();
    let mut want = fs::read(d.join("initrd-a")).unwrap();
    want.resize(100_004, 0);
    want.extend_from_slice(&fs::read(d.join("initrd-b")).unwrap());
    want.resize(want.len().next_multiple_of(4), 0);
    assert!(
        initrd == want,
        "initrds concatenated, each padded to 4 bytes"
    );
    assert_eq!(
        fs::read(d.join("s/pcrpkey")).unwrap(),
        fs::read(d.join("pki/tpm2-pcr-public.pem")).unwrap()
    );

    // PCR 11: systemd-measure calculate over the extracted sections.
    let mut args = vec!["calculate".to_string()];
    args.extend(measure_args(d, "s", MEASURED_252));
    args.extend(["--bank=sha256".into(), "--bank=sha512".into()]);
    args.push("--json=short".into());
    let theirs = systemd_measure(d, &args);
    assert_eq!(report["pcr"], theirs, "build report");
    let ours = json(run_in(
        d,
        &[
            "uki",
            "measure",
            "uki.efi",
            "--pcr-banks",
            "sha256,sha512",
            "--json",
        ],
    ));
    assert_eq!(ours, theirs, "uki measure of the built UKI");
    fs::write(d.join("calc.json"), theirs.to_string()).unwrap();

    // .pcrsig: the policy digests recomputed in Python from systemd-measure's
    // PCR values, each signature checked by openssl.
    let py = peer("python3").expect("python3");
    let listed = peer_ok(
        &py,
        &[&testdata("policy.py"), "calc.json", "s/pcrsig", "pol"],
        d,
    );
    assert_eq!(listed.lines().count(), 8, "{listed}");
    for l in listed.lines() {
        let id = l.split_whitespace().next().unwrap();
        let bank = id.split('-').next().unwrap();
        let (pol, sig) = (format!("pol/{id}.pol"), format!("pol/{id}.sig"));
        let t = peer_ok(
            &openssl(),
            &[
                "dgst",
                &format!("-{bank}"),
                "-verify",
                "pki/tpm2-pcr-public.pem",
                "-signature",
                &sig,
                &pol,
            ],
            d,
        );
        assert!(t.contains("Verified OK"), "{t}");
    }
    let pkfp = report["pcr_key_fingerprint"].as_str().unwrap();
    let der = Command::new(openssl())
        .args([
            "rsa",
            "-pubin",
            "-in",
            "pki/tpm2-pcr-public.pem",
            "-RSAPublicKey_out",
            "-outform",
            "DER",
        ])
        .current_dir(d)
        .output()
        .unwrap()
        .stdout;
    use sha2::Digest as _;
    assert_eq!(pkfp, hex(&sha2::Sha256::digest(&der)));

    // uki show agrees.
    let show = json(run_in(d, &["uki", "show", "uki.efi", "--json"]));
    assert_eq!(show["ok"], true, "{show}");
    assert_eq!(show["policies"].as_array().unwrap().len(), 8);
    assert!(show["policies"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["phase"].is_string() && p["signature_valid"] == true));

    // systemd-measure sign, where it can run (systemd 252 needs libtss2 and a
    // TPM for the trial policy session: swtpm), writes the same bytes.
    measure_sign_writes_pcrsig(&measure, d, MEASURED_252);
}

/// `systemd-measure sign` (`tool`) over the sections of `known` extracted to
/// `d/s`, for the sha256 and sha512 banks, prints `s/pcrsig` byte for byte.
/// Its trial policy session needs a TPM: swtpm.
fn measure_sign_writes_pcrsig(tool: &Path, d: &Path, known: &[&str]) {
    measure_sign_writes_pcrsig_for(tool, d, known, &["sha256", "sha512"]);
}

/// [`measure_sign_writes_pcrsig`] for `banks`.
fn measure_sign_writes_pcrsig_for(tool: &Path, d: &Path, known: &[&str], banks: &[&str]) {
    let Some(tpm) = Swtpm::start(d) else {
        return;
    };
    let mut args = vec!["sign".to_string()];
    args.extend(measure_args(d, "s", known));
    args.extend(banks.iter().map(|b| format!("--bank={b}")));
    args.extend([
        "--private-key=pki/tpm2-pcr-private.pem".into(),
        "--public-key=pki/tpm2-pcr-public.pem".into(),
        format!("--tpm2-device=swtpm:host=127.0.0.1,port={}", tpm.port),
        "--json=short".into(),
    ]);
    let o = Command::new(tool)
        .args(&args)
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{} sign: {}",
        tool.display(),
        stderr(&o)
    );
    assert_eq!(
        String::from_utf8_lossy(&fs::read(d.join("s/pcrsig")).unwrap()),
        String::from_utf8_lossy(&o.stdout),
        ".pcrsig byte for byte"
    );
}

/// `pe digest` of a signed image: the Authenticode SHA-256 `PeImage::digest`
/// reads from the file.
fn written_digest(d: &Path, uki: &str) -> serde_json::Value {
    let v = json(run_in(d, &["pe", "digest", uki, "--json"]));
    assert_eq!(v["sha256"], v["sha256_when_signed"], "{v}");
    v["sha256"].clone()
}

/// A stub whose data does not end where its sections do (bytes after its
/// symbol table, so the table stays): the UKI has a gap before its first new
/// section, and "the rest" of the Authenticode digest is not in file order.
/// The digest computed while writing still equals the one read back.
#[test]
fn one_pass_digest_of_a_uki_with_gaps() {
    let Some(tmp) = setup_with_stub("stub-tail.efi", |s| s.extend_from_slice(b"tail!")) else {
        return;
    };
    let d = tmp.path();
    let report = json(build(
        d,
        "uki.efi",
        &["--stub", "stub-tail.efi", "--json"],
        &[],
    ));
    assert_eq!(report["digest"], written_digest(d, "uki.efi"));
    ok(run_in(
        d,
        &["pe", "verify", "uki.efi", "--cert", "ssig_subca.pem"],
    ));
    let show = json(run_in(d, &["uki", "show", "uki.efi", "--json"]));
    assert_eq!(show["ok"], true, "{show}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// swtpm on a free TCP port, for `systemd-measure sign`. None (skipped)
/// when swtpm or libtss2's swtpm TCTI is missing, unless required.
struct Swtpm {
    child: Child,
    port: u16,
}

impl Swtpm {
    fn start(d: &Path) -> Option<Swtpm> {
        let swtpm = peer("swtpm")?;
        let tcti = ["/usr/lib/x86_64-linux-gnu/libtss2-tcti-swtpm.so.0"];
        if !tcti.iter().any(|p| Path::new(p).exists()) {
            if std::env::var("PKI_SIGNER_REQUIRE_PEERS").as_deref() == Ok("1") {
                panic!("libtss2-tcti-swtpm0 is required (apt install libtss2-tcti-swtpm0 libtss2-esys-3.0.2-0 libtss2-rc0 libtss2-mu0)");
            }
            eprintln!("skipped: libtss2 swtpm TCTI not installed");
            return None;
        }
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        fs::create_dir_all(d.join("tpm")).unwrap();
        for _ in 0..5 {
            // The swtpm TCTI finds the control channel at port + 1.
            let port = free();
            let ctrl = port.wrapping_add(1);
            if port == u16::MAX || std::net::TcpListener::bind(("127.0.0.1", ctrl)).is_err() {
                continue;
            }
            let mut child = Command::new(&swtpm)
                .args([
                    "socket",
                    "--tpm2",
                    "--tpmstate",
                    "dir=tpm",
                    "--server",
                    &format!("type=tcp,port={port},bindaddr=127.0.0.1"),
                    "--ctrl",
                    &format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"),
                    "--flags",
                    "not-need-init,startup-clear",
                ])
                .current_dir(d)
                .spawn()
                .unwrap();
            for _ in 0..50 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(Swtpm { child, port });
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("swtpm did not start");
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn build_is_deterministic_with_source_date_epoch() {
    if system_file(STUB, "systemd-boot-efi").is_none() {
        return;
    }
    let tmp = setup();
    let d = tmp.path();
    let env = [("SOURCE_DATE_EPOCH", "1700000000")];
    ok(build(d, "a.efi", &[], &env));
    ok(build(d, "b.efi", &[], &env));
    assert_eq!(
        fs::read(d.join("a.efi")).unwrap(),
        fs::read(d.join("b.efi")).unwrap()
    );
    // No temp files left behind.
    let left: Vec<_> = fs::read_dir(d)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn show_fails_on_a_tampered_pcrsig_and_measure_reads_the_built_uki() {
    if system_file(STUB, "systemd-boot-efi").is_none() {
        return;
    }
    let tmp = setup();
    let d = tmp.path();
    ok(build(d, "uki.efi", &[], &[]));
    let text = stdout(&ok(run_in(d, &["uki", "show", "uki.efi"])));
    assert!(text.contains("systemd-stub 252"), "{text}");
    assert!(
        text.contains(".pcrsig sha256 enter-initrd: signature valid"),
        "{text}"
    );
    // Flip one character of the first signature (same length: the layout stays).
    let mut b = fs::read(d.join("uki.efi")).unwrap();
    let at = find(&b, b"\"sig\":\"").unwrap() + 7;
    b[at] = if b[at] == b'A' { b'B' } else { b'A' };
    fs::write(d.join("bad.efi"), &b).unwrap();
    let err = fails(run_in(d, &["uki", "show", "bad.efi"]), 1);
    assert!(err.contains("does not verify"), "{err}");
    let r = run_in(d, &["uki", "show", "bad.efi", "--json"]);
    assert_eq!(r.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["policies"][0]["signature_valid"], false);

    // Text output of measure, systemd-measure's format.
    let t = stdout(&ok(run_in(
        d,
        &["uki", "measure", "uki.efi", "--pcr-banks", "sha256"],
    )));
    assert_eq!(t.lines().count(), 8, "{t}");
    assert!(
        t.starts_with("# PCR[11] Phase <enter-initrd>\n11:sha256="),
        "{t}"
    );
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// [`setup`] plus a copy of the system stub, changed by `edit`, at `name`;
/// None (skipped) where the stub is not installed.
fn setup_with_stub(name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> Option<tempfile::TempDir> {
    system_file(STUB, "systemd-boot-efi")?;
    let tmp = setup();
    let mut stub = fs::read(STUB).unwrap();
    edit(&mut stub);
    fs::write(tmp.path().join(name), &stub).unwrap();
    Some(tmp)
}

/// `uki build` on a copy of `stub` whose `.sdmagic` says systemd-stub `to`
/// instead of `from` fails with one line naming that version, and writes
/// nothing; that line.
fn refused_as(d: &Path, stub: &Path, from: &str, to: &str) -> String {
    let mut b = fs::read(stub).unwrap();
    let at = find(&b, format!("systemd-stub {from}").as_bytes()).unwrap() + 13;
    b[at..at + to.len()].copy_from_slice(to.as_bytes());
    let name = format!("stub{to}.efi");
    fs::write(d.join(&name), &b).unwrap();
    let err = fails(build(d, "uki.efi", &["--stub", &name], &[]), 2);
    assert!(err.contains(&format!("systemd-stub {to}")), "{err}");
    assert!(!d.join("uki.efi").exists());
    err
}

#[test]
fn a_stub_of_unknown_version_is_refused() {
    if system_file(STUB, "systemd-boot-efi").is_none() {
        return;
    }
    let tmp = setup();
    let d = tmp.path();
    let err = refused_as(d, Path::new(STUB), "252", "999");
    assert!(err.contains("not known"), "{err}");
    // Not a stub at all.
    fs::write(d.join("junk.efi"), b"MZ junk").unwrap();
    fails(build(d, "uki.efi", &["--stub", "junk.efi"], &[]), 2);
}

#[test]
fn usage_and_input_errors_are_one_line() {
    let tmp = setup();
    let d = tmp.path();
    // No --linux.
    fails(
        run_in(
            d,
            &[
                "uki",
                "build",
                "--os-release",
                "x",
                "--cmdline",
                "c",
                "-o",
                "o.efi",
                "--role",
                "ssig_subca",
            ],
        ),
        2,
    );
    // A typo in a phase.
    let err = fails(
        build(d, "uki.efi", &["--phases", "enter-initrd:sysnit"], &[]),
        2,
    );
    assert!(err.contains("sysnit"), "{err}");
    // The sha1 bank is not signed.
    let err = fails(build(d, "uki.efi", &["--pcr-banks", "sha1"], &[]), 2);
    assert!(err.contains("sha1"), "{err}");
    // An EC PCR key.
    peer_ok(
        &openssl(),
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ec.pem",
        ],
        d,
    );
    let err = fails(build_pcr_key(d, "uki.efi", "ec.pem", &[], &[]), 2);
    assert!(err.contains("RSA"), "{err}");
    // A device as an input.
    let err = fails(build(d, "uki.efi", &["--splash", "/dev/zero"], &[]), 2);
    assert!(err.contains("/dev/zero"), "{err}");
    assert!(!d.join("uki.efi").exists());
}

#[test]
fn release_mode_refuses_the_development_pcr_key() {
    if system_file(STUB, "systemd-boot-efi").is_none() {
        return;
    }
    let tmp = setup();
    let d = tmp.path();
    // A production-like Authenticode key outside the development PKI.
    fs::create_dir(d.join("prod")).unwrap();
    peer_ok(
        &openssl(),
        &[
            "req",
            "-x509",
            "-nodes",
            "-newkey",
            "rsa:2048",
            "-keyout",
            "prod/db.key",
            "-out",
            "prod/db.crt",
            "-subj",
            "/CN=prod db",
            "-days",
            "30",
        ],
        d,
    );
    fs::copy(d.join("pki/tpm2-pcr-private.pem"), d.join("prod/pcr.pem")).unwrap();
    let mut args: Vec<&str> = vec!["--release", "uki", "build"];
    let (linux, osrel) = (testdata("linux.bin"), testdata("os-release"));
    args.extend([
        "--linux",
        &linux,
        "--os-release",
        &osrel,
        "--cmdline",
        "x",
        "-o",
        "uki.efi",
        "--key",
        "prod/db.key",
        "--cert",
        "prod/db.crt",
    ]);
    // The role of a development PKI.
    let mut a = args.clone();
    a.extend(["--pcr-role", "tpm2-pcr"]);
    let err = fails(run_in(d, &a), 2);
    assert!(err.contains("release mode refuses"), "{err}");
    // Its key, copied elsewhere: still the development public key.
    let mut a = args.clone();
    a.extend(["--pcr-key", "prod/pcr.pem"]);
    let err = fails(run_in(d, &a), 2);
    assert!(err.contains("release mode refuses"), "{err}");
    // A fresh PCR key is fine.
    openssl_rsa_key(d, "prod/pcr2.pem");
    let mut a = args.clone();
    a.extend(["--pcr-key", "prod/pcr2.pem"]);
    ok(run_in(d, &a));
}

#[test]
fn pcr_key_in_a_pkcs11_token_signs_the_same_policy() {
    if system_file(STUB, "systemd-boot-efi").is_none() {
        return;
    }
    let Some(t) = common::softhsm::tools() else {
        return;
    };
    let tmp = setup();
    let d = tmp.path();
    let conf = common::softhsm::init_token(&t, d, "uki", "5678", "1234");
    peer_ok(
        &openssl(),
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "pki/tpm2-pcr-private.pem",
            "-outform",
            "DER",
            "-out",
            "pcr.der",
        ],
        d,
    );
    let o = Command::new(&t.pkcs11_tool)
        .args([
            "--module",
            common::softhsm::MODULE,
            "--token-label",
            "uki",
            "--login",
            "--pin",
            "1234",
            "--write-object",
            "pcr.der",
            "--type",
            "privkey",
            "--usage-sign",
            "--label",
            "pcr",
            "--id",
            "42",
        ])
        .current_dir(d)
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let env = [
        ("SOFTHSM2_CONF", conf.to_str().unwrap()),
        ("PKI_SIGNER_PKCS11_MODULE", common::softhsm::MODULE),
        ("PKI_SIGNER_PKCS11_PIN", "1234"),
    ];
    // The file key, then the same key in the token: RSA PKCS#1 v1.5 is
    // deterministic, so .pcrsig (and the whole UKI) are identical.
    ok(build(d, "file.efi", &[], &env));
    ok(build_pcr_key(
        d,
        "hsm.efi",
        "pkcs11:token=uki;object=pcr",
        &[],
        &env,
    ));
    assert!(
        fs::read(d.join("file.efi")).unwrap() == fs::read(d.join("hsm.efi")).unwrap(),
        "same UKI with the PCR key in a token"
    );
    ok(run_in(d, &["uki", "show", "hsm.efi"]));
}

/// ukify's `uki` SBAT entry, which ukify 254 and later add (and `uki build`
/// with them) when no `--sbat` is given.
const UKI_SBAT: &str =
    "uki,1,UKI,uki,1,https://uapi-group.org/specifications/specs/unified_kernel_image/";

fn stub_254() -> Option<PathBuf> {
    test_file(
        "PKI_SIGNER_TEST_STUB_254",
        "scripts/stubdebs.sh prepares it",
    )
}

fn measure_254() -> Option<PathBuf> {
    test_file(
        "PKI_SIGNER_TEST_MEASURE_254",
        "scripts/stubdebs.sh prepares it",
    )
}

/// The text of an SBAT section: up to its first NUL.
fn sbat_text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8(b[..end].to_vec()).unwrap()
}

/// systemd-stub 254 also measures `.uname` and `.sbat`: a UKI built on it
/// predicts what bookworm-backports' systemd-measure 254 calculates for its
/// sections (from the UKI, from the parts, and in the build report), and its
/// `.pcrsig` is what that systemd-measure signs, byte for byte.
#[test]
fn stub_254_uki_measures_and_signs_as_systemd_measure_254() {
    let (Some(stub), Some(measure)) = (stub_254(), measure_254()) else {
        return;
    };
    // ukify 254-256's order, .pcrsig last; .sbat as ukify 254 writes it: the
    // stub's entries, then ukify's uki entry, a NUL.
    let names = [
        ".osrel", ".cmdline", ".uname", ".pcrpkey", ".initrd", ".linux", ".pcrsig",
    ];
    measures_and_signs_as(
        &stub,
        &measure,
        254,
        MEASURED_254,
        &names,
        "\n\0",
        &["sha512", "sha256"],
        &[],
    );
    // 254 does not load microcode: `--microcode` is refused.
    let tmp = setup();
    let d = tmp.path();
    fs::write(d.join("ucode.cpio"), b"microcode").unwrap();
    let stub = stub.to_str().unwrap();
    let a = ["--stub", stub, "--microcode", "ucode.cpio"];
    let err = fails(build(d, "u.efi", &a, &[]), 2);
    assert!(err.contains("does not know .ucode"), "{err}");
    assert!(!d.join("u.efi").exists());
}

/// The same for systemd-stub 262 and forky's systemd-measure 262 (which runs
/// on Debian 12): ukify 257's order, and `.sbat` as ukify 262 writes it,
/// without the NUL. systemd-measure 262 signs every bank's policy with
/// SHA-256, pki-signer with the bank's hash: on 262 it signs sha256 only,
/// and refuses sha512 with one line.
#[test]
fn stub_262_uki_measures_and_signs_as_systemd_measure_262() {
    let prep = "scripts/stubdebs.sh prepares it";
    let (Some(stub), Some(measure)) = (
        test_file("PKI_SIGNER_TEST_STUB_262", prep),
        test_file("PKI_SIGNER_TEST_MEASURE_262", prep),
    ) else {
        return;
    };
    // With microcode, which systemd-measure 262 takes as --ucode.
    let names = [
        ".osrel", ".cmdline", ".uname", ".pcrpkey", ".linux", ".initrd", ".ucode", ".pcrsig",
    ];
    measures_and_signs_as(
        &stub,
        &measure,
        262,
        MEASURED_262,
        &names,
        "\n",
        &["sha256"],
        &["--microcode", "ucode.cpio"],
    );
    let tmp = setup();
    let d = tmp.path();
    let stub = stub.to_str().unwrap();
    let err = fails(
        build(
            d,
            "u.efi",
            &["--stub", stub, "--pcr-banks", "sha256,sha512"],
            &[],
        ),
        2,
    );
    assert!(err.contains("--pcr-banks sha256"), "{err}");
    assert!(!d.join("u.efi").exists());
}

/// A UKI built on `stub` (systemd-stub `major`, its policy signed for
/// `sign_banks`) ends with the sections `names`, its `.sbat` is the stub's
/// entries, ukify's `uki` entry and `sbat_end`, and `measure` (that
/// release's systemd-measure, taking the sections `known`) calculates what
/// the build report, `uki measure` of the UKI and of the parts predict (sha256
/// and sha512), and signs its `.pcrsig` byte for byte. `extra` goes to the
/// build and to `uki measure` of the parts (`ucode.cpio` is there).
#[allow(clippy::too_many_arguments)]
fn measures_and_signs_as(
    stub: &Path,
    measure: &Path,
    major: u32,
    known: &[&str],
    names: &[&str],
    sbat_end: &str,
    sign_banks: &[&str],
    extra: &[&str],
) {
    let stub = stub.to_str().unwrap();
    let tmp = setup();
    let d = tmp.path();
    fs::write(d.join("ucode.cpio"), b"070701 early microcode stand-in").unwrap();
    let banks = sign_banks.join(",");
    let mut a = vec!["--stub", stub, "--pcr-banks", &banks, "--json"];
    a.extend(extra);
    let report = json(build(d, "uki.efi", &a, &[]));
    assert_eq!(report["stub_version"]["major"], major, "{report}");

    let got = extract(d, "uki.efi", "s");
    assert_eq!(got[got.len() - names.len()..], *names);
    extract(d, stub, "stub");
    let want = format!(
        "{}{UKI_SBAT}{sbat_end}",
        sbat_text(&fs::read(d.join("stub/sbat")).unwrap())
    );
    assert_eq!(
        String::from_utf8(fs::read(d.join("s/sbat")).unwrap()).unwrap(),
        want
    );

    let mut args = vec!["calculate".to_string()];
    args.extend(measure_args(d, "s", known));
    assert!(
        args.iter().any(|a| a.starts_with("--sbat="))
            && args.iter().any(|a| a.starts_with("--uname=")),
        "{args:?}"
    );
    args.extend([
        "--bank=sha256".into(),
        "--bank=sha512".into(),
        "--json=short".into(),
    ]);
    let theirs = systemd_measure_with(measure, d, &args);
    assert_eq!(theirs.as_object().unwrap().len(), 2, "{theirs}");
    assert_eq!(report["pcr"].as_object().unwrap().len(), sign_banks.len());
    for b in sign_banks {
        assert_eq!(report["pcr"][b], theirs[b], "build report");
    }
    let banks = ["--pcr-banks", "sha256,sha512", "--json"];
    let mut a = vec!["uki", "measure", "uki.efi"];
    a.extend(banks);
    assert_eq!(json(run_in(d, &a)), theirs, "uki measure of the UKI");
    let (linux, osrel) = (testdata("linux.bin"), testdata("os-release"));
    let mut a = vec![
        "uki",
        "measure",
        "--stub",
        stub,
        "--linux",
        &linux,
        "--os-release",
        &osrel,
        "--cmdline",
        "console=ttyS0 quiet",
        "--uname",
        "6.1.0-test",
        "--initrd",
        "initrd-a",
        "--initrd",
        "initrd-b",
        "--pcrpkey",
        "pki/tpm2-pcr-public.pem",
    ];
    a.extend(banks);
    a.extend(extra);
    assert_eq!(json(run_in(d, &a)), theirs, "uki measure of the parts");
    let show = json(run_in(d, &["uki", "show", "uki.efi", "--json"]));
    assert_eq!(show["ok"], true, "{show}");
    assert!(show["policies"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["phase"].is_string()));

    measure_sign_writes_pcrsig_for(measure, d, known, sign_banks);
}

/// (name, virtual address, virtual size, raw offset, raw size) of each section `uki show` lists.
fn layout(show: &serde_json::Value) -> Vec<(String, u64, u64, u64, u64)> {
    show["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let n = |k: &str| s[k].as_u64().unwrap();
            (
                s["name"].as_str().unwrap().to_string(),
                n("virtual_address"),
                n("virtual_size"),
                n("raw_offset"),
                n("raw_size"),
            )
        })
        .collect()
}

/// ukify, given the same inputs and stub (bookworm-backports' ukify 254 on
/// stub 254, trixie's ukify 257 on stub 257, forky's ukify 262 on stub 262;
/// its PCR steps run by systemd-measure 254, signing against swtpm, or
/// forky's systemd-measure 262 for ukify 262), builds the UKI `uki build` builds:
/// `uki show` lists the same sections in the same order at the same
/// addresses (except that ukify 254 puts `.pcrsig` before `.linux`, pki-signer
/// always last), every section holds the same bytes (`.pcrsig`: the same
/// JSON values; ukify re-serialises it with Python's spacing), and ukify's
/// PCR 11 values are those `uki measure` predicts for our UKI. Twice: with
/// Debian's kernel (NX_COMPAT, no `.sbat`), and with systemd-boot's EFI binary
/// as `.linux`, a PE image with a `.sbat` (merged into the UKI's) and without
/// NX_COMPAT (which ukify 257 and 262 then clear in the UKI, as `uki build` does).
#[test]
fn ukify_builds_the_same_uki_from_the_same_inputs() {
    let prep = "scripts/stubdebs.sh prepares it";
    let (Some(measure), Some(measure262), Some(python), Some(kernel)) = (
        measure_254(),
        test_file("PKI_SIGNER_TEST_MEASURE_262", prep),
        test_file("PKI_SIGNER_TEST_PYTHON", prep),
        test_file("PKI_SIGNER_TEST_VMLINUZ", "scripts/test.sh prepares it"),
    ) else {
        return;
    };
    let tmp = setup();
    let d = tmp.path();
    fs::write(d.join("cmdline"), "console=ttyS0 quiet").unwrap();
    fs::write(d.join("ucode.cpio"), b"070701 early microcode stand-in").unwrap();
    // ukify runs the systemd-measure in its --tools directory.
    for (tools, m) in [("tools254", &measure), ("tools262", &measure262)] {
        fs::create_dir(d.join(tools)).unwrap();
        std::os::unix::fs::symlink(m, d.join(tools).join("systemd-measure")).unwrap();
    }
    let Some(tpm) = Swtpm::start(d) else {
        return;
    };
    let Some(sdboot) = systemd_boot() else {
        return;
    };
    let objdump = peer("objdump").expect("objdump");
    let osrel = testdata("os-release");
    let runs = [
        (
            254,
            "PKI_SIGNER_TEST_STUB_254",
            "PKI_SIGNER_TEST_UKIFY_254",
            "tools254",
        ),
        (
            257,
            "PKI_SIGNER_TEST_STUB_257",
            "PKI_SIGNER_TEST_UKIFY_257",
            "tools254",
        ),
        (
            262,
            "PKI_SIGNER_TEST_STUB_262",
            "PKI_SIGNER_TEST_UKIFY_262",
            "tools262",
        ),
    ]
    .into_iter()
    .flat_map(|r| {
        [
            (r, "kernel", kernel.to_str().unwrap()),
            (r, "sdboot", sdboot),
        ]
    });
    for ((major, stub_var, ukify_var, tools), tag, kernel) in runs {
        let (Some(stub), Some(ukify)) = (test_file(stub_var, prep), test_file(ukify_var, prep))
        else {
            continue;
        };
        let stub = stub.to_str().unwrap();
        let (ours, theirs) = (
            format!("ours{major}-{tag}.efi"),
            format!("ukify{major}-{tag}.efi"),
        );
        let mut common = vec![
            "--linux",
            kernel,
            "--initrd",
            "initrd-a",
            "--initrd",
            "initrd-b",
            "--uname",
            "6.1.0-test",
        ];
        if major >= 262 {
            // ukify 254 has no --microcode; ukify 257 runs systemd-measure
            // 254 here, which has no --ucode.
            common.extend(["--microcode", "ucode.cpio"]);
        }
        let parts = common.clone();
        let mut a = vec!["uki", "build", "--stub", stub, "-o", &ours];
        a.extend(&common);
        a.extend(["--cmdline-file", "cmdline", "--os-release", &osrel]);
        a.extend(["--role", "ssig_subca", "--pcr-role", "tpm2-pcr"]);
        ok(run_in(d, &a));

        let o = Command::new(&python)
            .arg(&ukify)
            .args(["build", "--stub", stub, "--output", &theirs])
            .args(&common)
            .args([
                "--cmdline",
                "@cmdline",
                "--os-release",
                &format!("@{osrel}"),
            ])
            .args(["--pcr-private-key", "pki/tpm2-pcr-private.pem"])
            .args(["--pcr-public-key", "pki/tpm2-pcr-public.pem"])
            .args(["--pcr-banks", "sha256", "--tools", tools, "--measure"])
            .env(
                "SYSTEMD_TPM2_DEVICE",
                format!("swtpm:host=127.0.0.1,port={}", tpm.port),
            )
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "ukify {major}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        let version = major;
        let major = format!("{major} ({tag})");
        if version >= 257 {
            // ukify 254 keeps the stub's DllCharacteristics whatever the kernel's.
            let dll = |f: &str| {
                peer_ok(&objdump, &["-p", f], d)
                    .lines()
                    .find(|l| l.starts_with("DllCharacteristics"))
                    .unwrap()
                    .to_string()
            };
            assert_eq!(dll(&ours), dll(&theirs), "ukify {major}");
        }

        // The same sections, in the same order, at the same places.
        let show = |f: &str| json(run_in(d, &["uki", "show", f, "--json"]));
        let (s_ours, s_theirs) = (show(&ours), show(&theirs));
        assert_eq!(s_theirs["ok"], true, "ukify {major}'s .pcrsig: {s_theirs}");
        let (l_ours, l_theirs) = (layout(&s_ours), layout(&s_theirs));
        let names = |l: &[(String, u64, u64, u64, u64)]| -> Vec<String> {
            l.iter().map(|s| s.0.clone()).collect()
        };
        let (mut n_ours, mut n_theirs) = (names(&l_ours), names(&l_theirs));
        assert_eq!(n_ours.last().map(String::as_str), Some(".pcrsig"));
        if version == 254 {
            n_ours.retain(|n| n != ".pcrsig");
            n_theirs.retain(|n| n != ".pcrsig");
        }
        assert_eq!(n_ours, n_theirs, "ukify {major}: sections and order");
        // Up to the first .pcrsig of either (ukify 254 puts .linux after it).
        let pos = |l: &[(String, u64, u64, u64, u64)]| l.iter().position(|s| s.0 == ".pcrsig");
        let common = pos(&l_ours).min(pos(&l_theirs)).unwrap_or(0);
        assert_eq!(
            l_ours[..common],
            l_theirs[..common],
            "ukify {major}: addresses and sizes"
        );

        // The same bytes.
        let dir_ours = format!("x-{ours}");
        let dir_theirs = format!("x-{theirs}");
        extract(d, &ours, &dir_ours);
        extract(d, &theirs, &dir_theirs);
        for n in n_theirs.iter().filter(|n| *n != ".pcrsig") {
            let f = n.trim_start_matches('.');
            let (a, b) = (
                fs::read(d.join(&dir_ours).join(f)).unwrap(),
                fs::read(d.join(&dir_theirs).join(f)).unwrap(),
            );
            assert!(a == b, "ukify {major}: section {n} differs");
        }
        let pcrsig = |dir: &str| -> serde_json::Value {
            let b = fs::read(d.join(dir).join("pcrsig")).unwrap();
            serde_json::from_str(sbat_text(&b).trim()).unwrap()
        };
        assert_eq!(
            pcrsig(&dir_ours),
            pcrsig(&dir_theirs),
            "ukify {major}: .pcrsig"
        );

        // ukify's PCR 11 values (systemd-measure calculate's lines).
        let values = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| l.starts_with("11:"))
                .map(str::to_string)
                .collect()
        };
        let predicted = stdout(&ok(run_in(
            d,
            &["uki", "measure", &ours, "--pcr-banks", "sha256"],
        )));
        assert_eq!(values(&stdout(&o)).len(), 4, "{}", stdout(&o));
        assert_eq!(
            values(&stdout(&o)),
            values(&predicted),
            "ukify {major}: PCR 11"
        );
        eprintln!("ukify {major}: same sections, bytes and PCR 11 as uki build");

        // systemd-measure 262 signs the sha512 bank's policy with SHA-256 too;
        // `uki show` accepts that (pki-signer itself signs sha256 only there).
        if version == 262 && tag == "kernel" {
            let o = Command::new(&python)
                .arg(&ukify)
                .args(["build", "--stub", stub, "--output", "banks262.efi"])
                .args(&parts)
                .args([
                    "--cmdline",
                    "@cmdline",
                    "--os-release",
                    &format!("@{osrel}"),
                ])
                .args(["--pcr-private-key", "pki/tpm2-pcr-private.pem"])
                .args(["--pcr-public-key", "pki/tpm2-pcr-public.pem"])
                .args([
                    "--pcr-banks",
                    "sha256,sha512",
                    "--tools",
                    tools,
                    "--measure",
                ])
                .env(
                    "SYSTEMD_TPM2_DEVICE",
                    format!("swtpm:host=127.0.0.1,port={}", tpm.port),
                )
                .current_dir(d)
                .output()
                .unwrap();
            assert!(o.status.success(), "ukify 262 sha512: {}", stderr(&o));
            let show = json(run_in(d, &["uki", "show", "banks262.efi", "--json"]));
            assert_eq!(show["ok"], true, "{show}");
            let banks: Vec<&str> = show["policies"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| p["bank"].as_str())
                .collect();
            assert!(banks.contains(&"sha512"), "{show}");
        }
    }
}

/// A UKI `bytes` with the section header named `from` renamed to `to` (8 bytes, NUL-padded).
fn rename_section(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    let pad = |n: &str| {
        let mut v = n.as_bytes().to_vec();
        v.resize(8, 0);
        v
    };
    let mut b = bytes.to_vec();
    let at = find(&b, &pad(from)).unwrap_or_else(|| panic!("no section {from}"));
    b[at..at + 8].copy_from_slice(&pad(to));
    b
}

/// What the newer stubs would measure unpredictably is refused with one
/// line: a version past 262, a multi-profile UKI or `.dtbauto` on 257 and
/// 262, `.efifw` on 262 (on 257 it is just another section), a measured
/// section past SizeOfImage, and on 254 a name the stub takes for a measured
/// section.
#[test]
fn newer_stubs_refuse_what_cannot_be_predicted() {
    let prep = "scripts/stubdebs.sh prepares it";
    let (Some(s254), Some(s257), Some(s262)) = (
        stub_254(),
        test_file("PKI_SIGNER_TEST_STUB_257", prep),
        test_file("PKI_SIGNER_TEST_STUB_262", prep),
    ) else {
        return;
    };
    let tmp = setup();
    let d = tmp.path();
    let err = refused_as(d, &s262, "262", "263");
    assert!(err.contains("252-262"), "{err}");

    let profile = (".profile", "multi-profile");
    let dtbauto = (".dtbauto", "machine");
    let efifw = (".efifw", "firmware ID");
    for (major, stub, refused, plain) in [
        (
            257,
            &s257,
            vec![profile, dtbauto],
            vec![".unamex", ".efifw"],
        ),
        (262, &s262, vec![profile, dtbauto, efifw], vec![".unamex"]),
    ] {
        let name = format!("u{major}.efi");
        ok(build(d, &name, &["--stub", stub.to_str().unwrap()], &[]));
        let u = fs::read(d.join(&name)).unwrap();
        for (section, why) in refused {
            fs::write(d.join("x.efi"), rename_section(&u, ".uname", section)).unwrap();
            let err = fails(run_in(d, &["uki", "measure", "x.efi"]), 2);
            assert!(err.contains(section) && err.contains(why), "{major}: {err}");
            // show still lists it, without claiming what is measured.
            let show = json(run_in(d, &["uki", "show", "x.efi", "--json"]));
            assert!(show["sections"][0]["measured"].is_null(), "{show}");
        }
        // All 8 bytes are compared: `.unamex` is just another section.
        for section in plain {
            fs::write(d.join("x.efi"), rename_section(&u, ".uname", section)).unwrap();
            ok(run_in(d, &["uki", "measure", "x.efi"]));
        }
        // SizeOfImage cut to the headers: every section lies past it.
        let mut x = u.clone();
        let opt = u32::from_le_bytes(x[0x3c..0x40].try_into().unwrap()) as usize + 24;
        x[opt + 56..opt + 60].copy_from_slice(&0x1000u32.to_le_bytes());
        fs::write(d.join("x.efi"), &x).unwrap();
        let err = fails(run_in(d, &["uki", "measure", "x.efi"]), 2);
        assert!(err.contains("past SizeOfImage"), "{major}: {err}");
    }

    ok(build(
        d,
        "u254.efi",
        &["--stub", s254.to_str().unwrap()],
        &[],
    ));
    let u254 = fs::read(d.join("u254.efi")).unwrap();
    fs::write(
        d.join("x.efi"),
        rename_section(&u254, ".cmdline", ".unamex"),
    )
    .unwrap();
    let err = fails(run_in(d, &["uki", "measure", "x.efi"]), 2);
    assert!(
        err.contains(".unamex") && err.contains("takes it as .uname"),
        "{err}"
    );
}

/// `uki build --plan` records the UKI; `resign` and `offline request` refuse
/// it while its PCR policy is signed by the development PCR key (re-signing
/// only replaces the Authenticode signature), and re-sign it when the policy
/// key is a production one: sbverify accepts the release signature and the
/// policy still verifies with openssl.
#[test]
fn plan_records_the_uki_and_resign_refuses_a_development_pcr_policy() {
    if system_file(STUB, "systemd-boot-efi").is_none() {
        return;
    }
    let tmp = setup();
    let d = tmp.path();
    ok(run_in(
        d,
        &["pki", "init", "--dir", "rel", "--key-type", "ec:prime256v1"],
    ));
    fs::write(
        d.join("keys.json"),
        r#"{ "trust": ["rel/ssig_rootca.cert"],
             "ssig_subca": {"key": "rel/ssig_subca.key", "cert": "rel/ssig_subca.cert"} }"#,
    )
    .unwrap();
    ok(build(d, "dev.efi", &["--plan", "dev-plan.json"], &[]));
    let rec: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(d.join("dev-plan.json")).unwrap()).unwrap();
    assert_eq!(rec["kind"], "uki", "{rec}");
    assert_eq!(rec["output"], "dev.efi");
    assert_eq!(rec["artifact"], STUB, "the stub it was built on");
    let show = json(run_in(d, &["uki", "show", "dev.efi", "--json"]));
    assert_eq!(rec["pcr_key_fingerprint"], show["pcrpkey_fingerprint"]);
    let err = fails(
        run_in(
            d,
            &[
                "resign",
                "--plan",
                "dev-plan.json",
                "--keys",
                "keys.json",
                "--out-dir",
                "out",
            ],
        ),
        2,
    );
    assert!(err.contains("development PCR key"), "{err}");
    assert!(!d.join("out/dev.efi").exists());
    let err = fails(
        run_in(
            d,
            &[
                "offline",
                "request",
                "--plan",
                "dev-plan.json",
                "--keys",
                "keys.json",
                "-o",
                "req.json",
            ],
        ),
        2,
    );
    assert!(err.contains("development PCR key"), "{err}");

    // The PCR key is already the production one: only Authenticode is re-signed.
    openssl_rsa_key(d, "rel/pcr.pem");
    peer_ok(
        &openssl(),
        &[
            "pkey",
            "-in",
            "rel/pcr.pem",
            "-pubout",
            "-out",
            "rel/pcr.pub",
        ],
        d,
    );
    ok(build_pcr_key(
        d,
        "prod.efi",
        "rel/pcr.pem",
        &["--plan", "prod-plan.json"],
        &[],
    ));
    ok(run_in(
        d,
        &[
            "resign",
            "--plan",
            "prod-plan.json",
            "--keys",
            "keys.json",
            "--out-dir",
            "out",
        ],
    ));
    if let Some(sbverify) = peer("sbverify") {
        peer_ok(
            &openssl(),
            &["x509", "-in", "rel/ssig_subca.cert", "-out", "rel.pem"],
            d,
        );
        peer_ok(&sbverify, &["--cert", "rel.pem", "out/prod.efi"], d);
    }
    // The policy the build signed is still there and verifies.
    extract(d, "out/prod.efi", "s");
    let sig: serde_json::Value =
        serde_json::from_slice(&fs::read(d.join("s/pcrsig")).unwrap()).unwrap();
    let first = &sig["sha256"][0];
    fs::write(d.join("pol.b64"), first["sig"].as_str().unwrap()).unwrap();
    peer_ok(
        &openssl(),
        &["base64", "-d", "-A", "-in", "pol.b64", "-out", "pol.sig"],
        d,
    );
    let pol: Vec<u8> = (0..first["pol"].as_str().unwrap().len() / 2)
        .map(|i| u8::from_str_radix(&first["pol"].as_str().unwrap()[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    fs::write(d.join("pol.bin"), pol).unwrap();
    let t = peer_ok(
        &openssl(),
        &[
            "dgst",
            "-sha256",
            "-verify",
            "rel/pcr.pub",
            "-signature",
            "pol.sig",
            "pol.bin",
        ],
        d,
    );
    assert!(t.contains("Verified OK"), "{t}");
}

/// Without `--uname`, `.uname` comes from the kernel as ukify finds it (the
/// release the bzImage header points to), so that the same command line
/// gives ukify's sections; with `--uname`, the given text wins.
#[test]
fn uname_comes_from_the_kernel_as_ukify_takes_it() {
    let prep = "scripts/stubdebs.sh prepares it";
    let (Some(python), Some(ukify), Some(stub), Some(kernel)) = (
        test_file("PKI_SIGNER_TEST_PYTHON", prep),
        test_file("PKI_SIGNER_TEST_UKIFY_257", prep),
        test_file("PKI_SIGNER_TEST_STUB_257", prep),
        test_file("PKI_SIGNER_TEST_VMLINUZ", "scripts/test.sh prepares it"),
    ) else {
        return;
    };
    let tmp = setup();
    let d = tmp.path();
    let (stub, kernel, osrel) = (
        stub.to_str().unwrap(),
        kernel.to_str().unwrap(),
        testdata("os-release"),
    );
    let ours = |out: &str, extra: &[&str]| {
        let mut a = vec!["uki", "build", "--stub", stub, "--linux", kernel];
        a.extend(["--cmdline", "quiet", "--os-release", &osrel]);
        a.extend(["--role", "ssig_subca", "-o", out]);
        a.extend(extra);
        ok(run_in(d, &a))
    };
    let o = ours("ours.efi", &[]);
    assert!(stdout(&o).contains("(from the kernel)"), "{}", stdout(&o));
    let o = Command::new(&python)
        .arg(&ukify)
        .args([
            "build",
            "--stub",
            stub,
            "--linux",
            kernel,
            "--cmdline",
            "quiet",
        ])
        .args([
            "--os-release",
            &format!("@{osrel}"),
            "--output",
            "theirs.efi",
        ])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(o.status.success(), "ukify: {}", stderr(&o));
    let objcopy = peer("objcopy").expect("objcopy");
    let uname = |f: &str| {
        let out = format!("{f}.uname");
        peer_ok(
            &objcopy,
            &["-O", "binary", "--only-section=.uname", f, &out],
            d,
        );
        fs::read(d.join(out)).unwrap()
    };
    let theirs = uname("theirs.efi");
    assert!(theirs.starts_with(b"6."), "{theirs:?}");
    assert_eq!(uname("ours.efi"), theirs);
    let names = |f: &str| -> Vec<String> {
        layout(&json(run_in(d, &["uki", "show", f, "--json"])))
            .into_iter()
            .map(|s| s.0)
            .collect()
    };
    assert_eq!(names("ours.efi"), names("theirs.efi"));

    ours("given.efi", &["--uname", "given"]);
    assert_eq!(uname("given.efi"), b"given");
}
