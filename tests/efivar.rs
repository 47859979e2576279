//! `efivar esl/auth/show/verify` and the `.auth` files of `pki init --uefi`,
//! checked with efitools (cert-to-efi-sig-list, sign-efi-sig-list,
//! sig-list-to-certs), virt-firmware (virt-fw-sigdb, virt-fw-vars), pesign
//! and openssl. Also the generic detached PKCS#7 builder, with `openssl cms`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::*;

/// The PKI's default owner GUID (pki.rs DEFAULT_OWNER_GUID).
const OWNER: &str = "6e2d1f0b-3c4a-4b8e-9f5d-2a7c8e1b4d60";
const EPOCH: &str = "1700000000";
/// SOURCE_DATE_EPOCH=EPOCH as sign-efi-sig-list -t wants it.
const EPOCH_TIME: &str = "2023-11-14 22:13:20";
const TIME: &str = "2024-01-02 03:04:05";
const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// One PKI with UEFI keys (EC CAs for speed; PK/KEK/DB are RSA-2048 anyway),
/// made at SOURCE_DATE_EPOCH, shared by the tests of this file.
fn pki() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap().keep();
        ok(run_env(
            &tmp,
            &["pki", "init", "--uefi", "--key-type", "ec:prime256v1"],
            &[("SOURCE_DATE_EPOCH", EPOCH)],
        ));
        // ssig_subca.cert holds its chain; efitools wants exactly one certificate.
        peer_ok(
            &openssl(),
            &["x509", "-in", "pki/ssig_subca.cert", "-out", "subca.pem"],
            &tmp,
        );
        tmp.join("pki")
    })
}

fn p(name: &str) -> String {
    pki().join(name).to_str().unwrap().to_string()
}

fn subca_pem() -> String {
    pki()
        .parent()
        .unwrap()
        .join("subca.pem")
        .to_str()
        .unwrap()
        .to_string()
}

fn run_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    c.args(args)
        .current_dir(cwd)
        .env_remove("SOURCE_DATE_EPOCH");
    for (k, _) in std::env::vars() {
        if k.starts_with("PKI_SIGNER_") && k != "PKI_SIGNER_REQUIRE_PEERS" {
            c.env_remove(k);
        }
    }
    c.envs(env.iter().copied());
    c.output().expect("run pki-signer")
}

/// Our binary with SOURCE_DATE_EPOCH unset, so outputs depend on --time only.
fn run(cwd: &Path, args: &[&str]) -> Output {
    run_env(cwd, args, &[])
}

/// A virt-firmware tool: from $PKI_SIGNER_VENV or the repository's .venv
/// (where tests/ovmf/deps.sh installs it), else from PATH.
fn virt_fw(tool: &str) -> Option<PathBuf> {
    let venv = std::env::var_os("PKI_SIGNER_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    let in_venv = venv.join("bin").join(tool);
    if in_venv.is_file() {
        return Some(in_venv);
    }
    peer(tool)
}

fn sign_efi_sig_list(dir: &Path, args: &[&str]) -> Option<()> {
    let tool = peer("sign-efi-sig-list")?;
    peer_ok(&tool, args, dir);
    Some(())
}

/// The PKCS#7 and the variable data of an .auth file.
fn split_auth(auth: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let len = u32::from_le_bytes(auth[16..20].try_into().unwrap()) as usize;
    (auth[40..16 + len].to_vec(), auth[16 + len..].to_vec())
}

fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match body.len() {
        n @ 0..=0x7f => out.push(n as u8),
        n @ 0x80..=0xff => out.extend([0x81, n as u8]),
        n => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend(body);
    out
}

/// EFI variables carry a bare SignedData; openssl reads a ContentInfo.
fn wrap_content_info(signed_data: &[u8]) -> Vec<u8> {
    const SIGNED_DATA_OID: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02,
    ];
    der(0x30, &[SIGNED_DATA_OID, &der(0xa0, signed_data)].concat())
}

/// `openssl smime -verify` and `openssl cms -verify` of a detached PKCS#7
/// (ContentInfo, DER) over `content`, trusting `ca`. Returns whether both
/// accepted it (they must agree).
fn openssl_verifies(dir: &Path, p7: &[u8], content: &[u8], ca: &str) -> bool {
    fs::write(dir.join("check.p7"), p7).unwrap();
    fs::write(dir.join("check.bin"), content).unwrap();
    let mut results = vec![];
    for cmd in ["smime", "cms"] {
        let o = Command::new(openssl())
            .args([
                cmd, "-verify", "-binary", "-inform", "DER", "-purpose", "any",
            ])
            .args(["-in", "check.p7", "-content", "check.bin", "-CAfile", ca])
            .args(["-out", "/dev/null"])
            .current_dir(dir)
            .output()
            .unwrap();
        results.push(o.status.success());
        eprintln!("openssl {cmd} -verify: {}", stderr(&o).trim());
    }
    assert_eq!(results[0], results[1], "openssl smime and cms disagree");
    results[0]
}

// ---------------------------------------------------------------------------
// Signature lists

#[test]
fn esl_is_byte_identical_to_cert_to_efi_sig_list_and_virt_fw_sigdb() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // One list per certificate, in argument order.
    ok(run(
        d,
        &[
            "efivar",
            "esl",
            &p("DB.crt"),
            &subca_pem(),
            "--owner",
            OWNER,
            "-o",
            "db.esl",
        ],
    ));
    let ours = fs::read(d.join("db.esl")).unwrap();
    // pki init --uefi made the same list.
    assert_eq!(ours, fs::read(pki().join("DB.esl")).unwrap());

    if let Some(c2e) = peer("cert-to-efi-sig-list") {
        peer_ok(&c2e, &["-g", OWNER, &p("DB.crt"), "a.esl"], d);
        peer_ok(&c2e, &["-g", OWNER, &subca_pem(), "b.esl"], d);
        let efitools = [
            fs::read(d.join("a.esl")).unwrap(),
            fs::read(d.join("b.esl")).unwrap(),
        ]
        .concat();
        assert_eq!(ours, efitools, "cert-to-efi-sig-list differs");
    }

    // Certificates and hashes: one list per certificate, then one for all hashes.
    let h1 = "7843e376e57323bcdfebcffc8d5109eb39721c83d8bedab1dfd6431596875c2c";
    let h2 = "28fd6b9a39b745449fa2389a31045900804eae49ea7edb0f8c152a131df0002c";
    ok(run(
        d,
        &[
            "efivar",
            "esl",
            &p("DB.crt"),
            "--sha256",
            h1,
            "--sha256",
            h2,
            "--owner",
            OWNER,
            "-o",
            "mixed.esl",
        ],
    ));
    if let Some(sigdb) = virt_fw("virt-fw-sigdb") {
        peer_ok(
            &sigdb,
            &[
                "--add-cert",
                OWNER,
                &p("DB.crt"),
                "--add-hash",
                OWNER,
                h1,
                "--add-hash",
                OWNER,
                h2,
                "-o",
                "virt.esl",
            ],
            d,
        );
        assert_eq!(
            fs::read(d.join("mixed.esl")).unwrap(),
            fs::read(d.join("virt.esl")).unwrap(),
            "virt-fw-sigdb differs"
        );
        // And it reads ours back.
        let out = peer_ok(&sigdb, &["--input", "mixed.esl", "--print"], d);
        assert!(out.contains("EfiCertX509 count=1"), "{out}");
        assert!(out.contains("CN=Signature Database Key"), "{out}");
        assert!(out.contains("EfiCertSha256 count=2"), "{out}");
        assert!(out.contains(h1) && out.contains(h2), "{out}");
    }

    // sig-list-to-certs gets the certificates back, byte for byte.
    if let Some(sl2c) = peer("sig-list-to-certs") {
        peer_ok(&sl2c, &["db.esl", "out"], d);
        assert_eq!(
            fs::read(d.join("out-0.der")).unwrap(),
            fs::read(pki().join("DB.cer")).unwrap()
        );
        peer_ok(
            &openssl(),
            &[
                "x509",
                "-in",
                &subca_pem(),
                "-outform",
                "DER",
                "-out",
                "subca.der",
            ],
            d,
        );
        assert_eq!(
            fs::read(d.join("out-1.der")).unwrap(),
            fs::read(d.join("subca.der")).unwrap()
        );
    }
}

#[test]
fn esl_pe_entry_is_the_authenticode_digest_firmware_computes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    if !Path::new(SYSTEMD_BOOT).is_file() {
        if std::env::var("PKI_SIGNER_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("{SYSTEMD_BOOT} is missing (systemd-boot-efi)");
        }
        eprintln!("skipped: {SYSTEMD_BOOT} not available");
        return;
    }
    ok(run(
        d,
        &[
            "efivar",
            "esl",
            "--pe",
            SYSTEMD_BOOT,
            "--owner",
            OWNER,
            "-o",
            "pe.esl",
        ],
    ));
    let show = stdout(&ok(run(d, &["efivar", "show", "pe.esl", "--json"])));
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    let hash = v["entries"][0]["data"].as_str().unwrap().to_string();
    assert_eq!(v["entries"][0]["type"], "sha256");
    // pesign computes the same Authenticode digest. (efitools'
    // hash-to-efi-sig-list does not: it hashes this image differently from
    // pesign, sbsign and firmware, so it is no reference.)
    if let Some(pesign) = peer("pesign") {
        let out = peer_ok(&pesign, &["-h", "-i", SYSTEMD_BOOT], d);
        assert!(out.contains(&hash), "pesign: {out}, ours {hash}");
    }
    if let Some(sigdb) = virt_fw("virt-fw-sigdb") {
        peer_ok(&sigdb, &["--add-hash", OWNER, &hash, "-o", "virt.esl"], d);
        assert_eq!(
            fs::read(d.join("pe.esl")).unwrap(),
            fs::read(d.join("virt.esl")).unwrap()
        );
    }
}

// ---------------------------------------------------------------------------
// Authenticated variables

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

#[test]
fn auth_is_byte_identical_to_sign_efi_sig_list() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let h = "7843e376e57323bcdfebcffc8d5109eb39721c83d8bedab1dfd6431596875c2c";
    ok(run(
        d,
        &strs(&args(&format!(
            "efivar esl --sha256 {h} --owner {OWNER} -o dbx.esl"
        ))),
    ));
    // (ours after `efivar auth --time TIME`, sign-efi-sig-list's after `-t TIME`):
    // the same variable, key and list.
    let cases = [
        (
            "--var PK --key {PK.key} --cert {PK.crt} {PK.esl}",
            "-k {PK.key} -c {PK.crt} PK {PK.esl}",
        ),
        (
            "--var KEK --key {PK.key} --cert {PK.crt} {KEK.esl}",
            "-k {PK.key} -c {PK.crt} KEK {KEK.esl}",
        ),
        (
            "--var db --key {KEK.key} --cert {KEK.crt} {DB.esl}",
            "-k {KEK.key} -c {KEK.crt} db {DB.esl}",
        ),
        (
            "--var db --append --key {KEK.key} --cert {KEK.crt} {DB.esl}",
            "-a -k {KEK.key} -c {KEK.crt} db {DB.esl}",
        ),
        (
            "--var dbx --key {KEK.key} --cert {KEK.crt} dbx.esl",
            "-k {KEK.key} -c {KEK.crt} dbx dbx.esl",
        ),
    ];
    for (i, (ours, theirs)) in cases.iter().enumerate() {
        let mut a = args("efivar auth --time");
        a.push(TIME.into());
        a.extend(args(&format!("{ours} -o {i}.ours.auth")));
        let out = stdout(&ok(run(d, &strs(&a))));
        assert!(
            out.contains("update, 1 entr") || out.contains("2 entries"),
            "{out}"
        );

        let mut e = vec!["-t".to_string(), TIME.into()];
        e.extend(args(&format!("{theirs} {i}.efitools.auth")));
        if sign_efi_sig_list(d, &strs(&e)).is_none() {
            return;
        }
        assert_eq!(
            fs::read(d.join(format!("{i}.ours.auth"))).unwrap(),
            fs::read(d.join(format!("{i}.efitools.auth"))).unwrap(),
            "{ours}: differs from sign-efi-sig-list {theirs}"
        );
    }

    // The same through --role, with the time from SOURCE_DATE_EPOCH.
    let a = args("efivar auth --var KEK --role PK --dir PKI {KEK.esl} -o role.auth");
    let a: Vec<&str> = strs(&a)
        .into_iter()
        .map(|x| {
            if x == "PKI" {
                pki().to_str().unwrap()
            } else {
                x
            }
        })
        .collect();
    ok(run_env(d, &a, &[("SOURCE_DATE_EPOCH", EPOCH)]));
    let mut e = vec!["-t".to_string(), EPOCH_TIME.into()];
    e.extend(args(
        "-k {PK.key} -c {PK.crt} KEK {KEK.esl} role.efitools.auth",
    ));
    if sign_efi_sig_list(d, &strs(&e)).is_some() {
        assert_eq!(
            fs::read(d.join("role.auth")).unwrap(),
            fs::read(d.join("role.efitools.auth")).unwrap()
        );
    }
}

#[test]
fn auth_signature_verifies_with_openssl_over_the_payload_efitools_signs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(run(
        d,
        &[
            "efivar",
            "auth",
            "--var",
            "db",
            "--key",
            &p("KEK.key"),
            "--cert",
            &p("KEK.crt"),
            "--time",
            TIME,
            &p("DB.esl"),
            "-o",
            "db.auth",
        ],
    ));
    let auth = fs::read(d.join("db.auth")).unwrap();
    let (p7, data) = split_auth(&auth);
    assert_eq!(data, fs::read(pki().join("DB.esl")).unwrap());
    // sign-efi-sig-list -o writes exactly the bytes it would sign.
    let Some(()) = sign_efi_sig_list(d, &["-o", "-t", TIME, "db", &p("DB.esl"), "payload.bin"])
    else {
        return;
    };
    let payload = fs::read(d.join("payload.bin")).unwrap();
    let p7 = wrap_content_info(&p7);
    assert!(openssl_verifies(d, &p7, &payload, &p("KEK.crt")));
    // Not for another variable's payload, nor with another trust anchor.
    sign_efi_sig_list(
        d,
        &["-o", "-t", TIME, "KEK", &p("DB.esl"), "kek-payload.bin"],
    )
    .unwrap();
    assert!(!openssl_verifies(
        d,
        &p7,
        &fs::read(d.join("kek-payload.bin")).unwrap(),
        &p("KEK.crt")
    ));
    assert!(!openssl_verifies(d, &p7, &payload, &p("PK.crt")));
}

#[test]
fn pki_init_uefi_writes_auth_files_that_efitools_and_openssl_agree_with() {
    let dir = pki();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("pki.json")).unwrap()).unwrap();
    let auths: Vec<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "auth")
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(auths, ["DB.auth", "KEK.auth", "PK.auth"]);

    // (file, variable, list, signer, a certificate that must not be trusted for it)
    for (file, var, esl, signer, wrong) in [
        ("PK.auth", "PK", "PK.esl", "PK", "KEK"),
        ("KEK.auth", "KEK", "KEK.esl", "PK", "KEK"),
        ("DB.auth", "db", "DB.esl", "KEK", "PK"),
    ] {
        let auth = fs::read(dir.join(file)).unwrap();
        let (p7, data) = split_auth(&auth);
        assert_eq!(data, fs::read(dir.join(esl)).unwrap(), "{file}");
        // Time from SOURCE_DATE_EPOCH: efitools with the same time and key
        // writes the same bytes.
        let theirs = format!("{var}.efitools.auth");
        if sign_efi_sig_list(
            d,
            &[
                "-t",
                EPOCH_TIME,
                "-k",
                &p(&format!("{signer}.key")),
                "-c",
                &p(&format!("{signer}.crt")),
                var,
                &p(esl),
                &theirs,
            ],
        )
        .is_some()
        {
            assert_eq!(auth, fs::read(d.join(&theirs)).unwrap(), "{file}");
            sign_efi_sig_list(d, &["-o", "-t", EPOCH_TIME, var, &p(esl), "payload.bin"]).unwrap();
            let payload = fs::read(d.join("payload.bin")).unwrap();
            assert!(
                openssl_verifies(
                    d,
                    &wrap_content_info(&p7),
                    &payload,
                    &p(&format!("{signer}.crt"))
                ),
                "{file}"
            );
        }
        // Our own firmware-style check, with the right and the wrong anchor.
        let out = stdout(&ok(run(
            d,
            &[
                "efivar",
                "verify",
                &p(file),
                "--cert",
                &p(&format!("{signer}.crt")),
            ],
        )));
        assert!(out.contains("Verification OK"), "{out}");
        assert!(
            out.contains(&format!("{var} update, time {EPOCH_TIME}")),
            "{out}"
        );
        let o = run(
            d,
            &[
                "efivar",
                "verify",
                &p(file),
                "--var",
                var,
                "--cert",
                &p(&format!("{wrong}.crt")),
            ],
        );
        assert_eq!(
            o.status.code(),
            Some(1),
            "{file} trusted by {wrong}: {}",
            stdout(&o)
        );
        assert!(stdout(&o).contains("does not chain"), "{}", stdout(&o));
    }
    // A PK update needs no anchor: as in setup mode, it vouches for itself.
    ok(run(d, &["efivar", "verify", &p("PK.auth")]));
    // db trusted through KEK.esl, the way firmware looks it up.
    ok(run(
        d,
        &[
            "efivar",
            "verify",
            &p("DB.auth"),
            "--var",
            "db",
            "--esl",
            &p("KEK.esl"),
        ],
    ));
}

#[test]
fn efitools_and_virt_firmware_read_our_auth_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let h = "28fd6b9a39b745449fa2389a31045900804eae49ea7edb0f8c152a131df0002c";
    ok(run(
        d,
        &[
            "efivar", "esl", "--sha256", h, "--owner", OWNER, "-o", "dbx.esl",
        ],
    ));
    ok(run(
        d,
        &[
            "efivar",
            "auth",
            "--var",
            "dbx",
            "--role",
            "KEK",
            "--dir",
            pki().to_str().unwrap(),
            "--time",
            TIME,
            "dbx.esl",
            "-o",
            "dbx.auth",
        ],
    ));
    // virt-fw-vars takes a dbx update file (as Microsoft ships them) and
    // puts its signature lists into an OVMF variable store.
    let vars = Path::new("/usr/share/OVMF/OVMF_VARS_4M.fd");
    if let (Some(vfv), true) = (virt_fw("virt-fw-vars"), vars.is_file()) {
        let out = peer_ok(
            &vfv,
            &[
                "-i",
                vars.to_str().unwrap(),
                "--set-dbx",
                "dbx.auth",
                "-o",
                "vars.fd",
                "-p",
                "-v",
                "--hashes",
            ],
            d,
        );
        assert!(out.contains(h), "virt-fw-vars did not find our hash: {out}");
        // The variable store it wrote holds the update's time and lists.
        let out = peer_ok(&vfv, &["-i", "vars.fd", "-p", "-v", "--hashes"], d);
        assert!(out.contains("time=2024-01-02 03:04:05"), "{out}");
        assert!(out.contains(h), "{out}");
        let out = peer_ok(
            &vfv,
            &[
                "-i",
                vars.to_str().unwrap(),
                "--set-dbx",
                &p("DB.auth"),
                "-p",
                "-v",
            ],
            d,
        );
        assert!(out.contains("CN=Signature Database Key"), "{out}");
        assert!(out.contains("CN=Software Signing Sub CA"), "{out}");
    }
    // sig-list-to-certs reads the signature lists after the header.
    if let Some(sl2c) = peer("sig-list-to-certs") {
        let (_, data) = split_auth(&fs::read(pki().join("PK.auth")).unwrap());
        fs::write(d.join("pk.esl"), data).unwrap();
        peer_ok(&sl2c, &["pk.esl", "pk"], d);
        assert_eq!(
            fs::read(d.join("pk-0.der")).unwrap(),
            fs::read(pki().join("PK.cer")).unwrap()
        );
    }
}

#[test]
fn show_describes_lists_and_auth_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = stdout(&ok(run(d, &["efivar", "show", &p("DB.esl")])));
    assert!(out.contains("signature list, 2 entries"), "{out}");
    assert!(out.contains(&format!("[0] x509 owner {OWNER}")), "{out}");
    assert!(
        out.contains(
            "subject: C=DE, O=Development PKI, OU=Development, CN=Software Signing Sub CA"
        ),
        "{out}"
    );

    let out = stdout(&ok(run(d, &["efivar", "show", &p("KEK.auth")])));
    assert!(out.contains(&format!("time: {EPOCH_TIME}")), "{out}");
    assert!(
        out.contains("signed for: KEK (8be4df61-93ca-11d2-aa0d-00e098032b8c)"),
        "{out}"
    );
    assert!(
        out.contains("signer: C=DE, O=Development PKI, OU=Development, CN=Platform Key"),
        "{out}"
    );
    assert!(
        out.contains("bare SignedData, rsaEncryption with sha256, 1 certificate(s)"),
        "{out}"
    );

    let v: serde_json::Value = serde_json::from_str(&stdout(&ok(run(
        d,
        &["efivar", "show", &p("DB.auth"), "--json"],
    ))))
    .unwrap();
    assert_eq!(v["kind"], "auth");
    let a = &v["auth"];
    assert_eq!(a["var"], "db");
    assert_eq!(a["vendor_guid"], "d719b2cb-3d3a-4596-a3bc-dad00e67656f");
    assert_eq!(a["attributes"], "0x00000027");
    assert_eq!(a["append"], false);
    assert_eq!(a["signature_valid"], true);
    assert_eq!(a["content_info"], false);
    assert_eq!(a["signed_attributes"], false);
    assert_eq!(
        a["signer"]["subject"],
        "C=DE, O=Development PKI, OU=Development, CN=Key Exchange Key"
    );
    assert_eq!(v["entries"].as_array().unwrap().len(), 2);
    assert_eq!(v["entries"][1]["type"], "x509");

    // An append is recognised as such.
    ok(run(
        d,
        &[
            "efivar",
            "auth",
            "--var",
            "db",
            "--append",
            "--role",
            "KEK",
            "--dir",
            pki().to_str().unwrap(),
            "--time",
            TIME,
            &p("DB.esl"),
            "-o",
            "append.auth",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&stdout(&ok(run(
        d,
        &["efivar", "show", "append.auth", "--json"],
    ))))
    .unwrap();
    assert_eq!(v["auth"]["append"], true);
    assert_eq!(v["auth"]["attributes"], "0x00000067");
}

#[test]
fn output_is_reproducible_with_source_date_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for out in ["a.auth", "b.auth"] {
        let a = args(&format!(
            "efivar auth --var db --key {{KEK.key}} --cert {{KEK.crt}} {{DB.esl}} -o {out}"
        ));
        ok(run_env(d, &strs(&a), &[("SOURCE_DATE_EPOCH", EPOCH)]));
    }
    let a = fs::read(d.join("a.auth")).unwrap();
    assert_eq!(a, fs::read(d.join("b.auth")).unwrap());
    // EFI_TIME of SOURCE_DATE_EPOCH: 2023-11-14 22:13:20, little-endian year.
    assert_eq!(&a[..8], &[0xe7, 0x07, 11, 14, 22, 13, 20, 0]);
    assert_eq!(&a[8..16], &[0; 8]);
}

#[test]
fn verify_fails_with_exit_1_on_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let auth = fs::read(pki().join("DB.auth")).unwrap();
    // One byte of the certificate list changed.
    let mut t = auth.clone();
    let n = t.len();
    t[n - 40] ^= 1;
    fs::write(d.join("data.auth"), &t).unwrap();
    let o = run(
        d,
        &[
            "efivar",
            "verify",
            "data.auth",
            "--var",
            "db",
            "--cert",
            &p("KEK.crt"),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    // The timestamp changed: it is signed too.
    let mut t = auth.clone();
    t[6] ^= 1;
    fs::write(d.join("time.auth"), &t).unwrap();
    let o = run(
        d,
        &[
            "efivar",
            "verify",
            "time.auth",
            "--cert",
            &p("KEK.crt"),
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["ok"], false);
    assert!(
        v["problems"][0]
            .as_str()
            .unwrap()
            .contains("none of PK, KEK, db, dbx"),
        "{v}"
    );
    // Right file, wrong variable.
    let o = run(
        d,
        &[
            "efivar",
            "verify",
            &p("DB.auth"),
            "--var",
            "dbx",
            "--cert",
            &p("KEK.crt"),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("signed for db, not dbx"),
        "{}",
        stdout(&o)
    );
}

/// Split a command line into arguments; `{NAME}` is the PKI's file NAME.
fn args(line: &str) -> Vec<String> {
    line.split_whitespace()
        .map(
            |a| match a.strip_prefix('{').and_then(|a| a.strip_suffix('}')) {
                Some(name) => p(name),
                None => a.to_string(),
            },
        )
        .collect()
}

#[test]
fn bad_input_gives_one_line_errors_and_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fs::write(
        d.join("garbage.esl"),
        b"this is not a signature list at all",
    )
    .unwrap();
    let kek = "--key {KEK.key} --cert {KEK.crt}";
    let cases = [
        (
            format!("efivar esl --sha256 abcd --owner {OWNER} -o out"),
            "want 64 hex digits",
        ),
        (
            format!("efivar esl --owner {OWNER} -o out"),
            "nothing to put in the list",
        ),
        (
            format!("efivar esl garbage.esl --owner {OWNER} -o out"),
            "garbage.esl: not an X.509 certificate",
        ),
        (
            format!("efivar auth --var db {kek} garbage.esl -o out"),
            "garbage.esl: signature list at offset 0",
        ),
        // PK holds exactly one certificate.
        (
            "efivar auth --var PK --key {PK.key} --cert {PK.crt} {DB.esl} -o out".into(),
            "not valid for PK",
        ),
        // The key must belong to the certificate.
        (
            "efivar auth --var db --key {PK.key} --cert {KEK.crt} {DB.esl} -o out".into(),
            "does not match the key",
        ),
        (
            "efivar show garbage.esl".into(),
            "garbage.esl: signature list at offset 0",
        ),
        (
            "efivar verify {DB.esl}".into(),
            "not an authenticated variable",
        ),
    ];
    for (line, want) in &cases {
        let a = args(line);
        let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        let err = fails(run(d, &a), 2);
        assert!(err.contains(want), "{line}: {err}");
        assert!(!d.join("out").exists(), "{line} left output behind");
    }
    // Values clap checks: exit 2 with the reason.
    let cases = [
        (
            "efivar esl {PK.crt} --owner not-a-guid -o out".to_string(),
            "'not-a-guid' is not a GUID",
        ),
        (
            format!("efivar auth --var MokList {kek} {{DB.esl}} -o out"),
            "expected PK, KEK, db or dbx",
        ),
    ];
    for (line, want) in &cases {
        let a = args(line);
        let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        let o = run(d, &a);
        assert_eq!(o.status.code(), Some(2), "{line}");
        assert!(stderr(&o).contains(want), "{line}: {}", stderr(&o));
    }
    let a = args(&format!("efivar auth --var db {kek} {{DB.esl}} -o out"));
    let mut a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
    a.extend(["--time", "2024-13-01 00:00:00"]);
    let err = fails(run(d, &a), 2);
    assert!(err.contains("--time time '2024-13-01 00:00:00'"), "{err}");
    assert!(!d.join("out").exists());
}

// ---------------------------------------------------------------------------
// The generic detached PKCS#7 builder (also used for GuestOS --cms)

mod pkcs7_peer {
    use super::*;
    use pki_signer::identity::Identity;
    use pki_signer::pkcs7::{self, DetachedOptions};
    use pki_signer::sigalg::Hash;

    fn openssl_key_and_cert(d: &Path, name: &str, genpkey: &[&str]) {
        let ossl = openssl();
        let key = format!("{name}.key");
        let mut args = vec!["genpkey", "-out", &key];
        args.extend(genpkey);
        peer_ok(&ossl, &args, d);
        peer_ok(
            &ossl,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                &key,
                "-subj",
                &format!("/CN={name}"),
                "-days",
                "30",
                "-out",
                &format!("{name}.crt"),
            ],
            d,
        );
    }

    /// `openssl cms -verify` / `openssl smime -verify` accept what
    /// `sign_detached` makes for every key type and form.
    #[test]
    fn openssl_cms_verifies_detached_signatures() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        openssl_key_and_cert(
            d,
            "rsa",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        );
        openssl_key_and_cert(
            d,
            "p256",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        );
        openssl_key_and_cert(
            d,
            "p384",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        );
        // GyroidOS's secondary keys: RSA-PSS typed.
        openssl_key_and_cert(
            d,
            "pss",
            &["-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:2048"],
        );
        let content = b"name: \"guestos\"\nversion: 7\n".to_vec();
        let cases = [
            ("rsa", Hash::Sha256),
            ("rsa", Hash::Sha384),
            ("rsa", Hash::Sha512),
            ("p256", Hash::Sha256),
            ("p384", Hash::Sha384),
            ("p256", Hash::Sha512),
            ("p384", Hash::Sha512),
            ("pss", Hash::Sha256),
            ("pss", Hash::Sha512),
        ];
        for (name, hash) in cases {
            let id = Identity::load(&pki_signer::identity::KeySpec {
                key: Some(d.join(format!("{name}.key"))),
                cert: Some(d.join(format!("{name}.crt"))),
                ..Default::default()
            })
            .unwrap();
            for (signed_attrs, content_info) in [(true, true), (false, true)] {
                let opts = DetachedOptions {
                    signer: id.signer.as_ref(),
                    cert: &id.cert,
                    chain: &id.chain,
                    hash,
                    signed_attrs,
                    signing_time: Some(
                        time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
                    ),
                    content_info,
                };
                let der = pkcs7::sign_detached(&content, &opts).unwrap();
                let ca = format!("{name}.crt");
                assert!(
                    openssl_verifies(d, &der, &content, &ca),
                    "{name} {hash:?} attrs={signed_attrs}"
                );
                let mut other = content.clone();
                other[0] ^= 1;
                assert!(
                    !openssl_verifies(d, &der, &other, &ca),
                    "{name} {hash:?}: tampering unnoticed"
                );
                if signed_attrs {
                    let out = peer_ok(
                        &openssl(),
                        &[
                            "cms", "-cmsout", "-print", "-noout", "-inform", "DER", "-in",
                            "check.p7",
                        ],
                        d,
                    );
                    assert!(
                        out.contains("signingTime") && out.contains("Nov 14 22:13:20 2023 GMT"),
                        "{out}"
                    );
                    assert!(out.contains(hash.name()), "{out}");
                }
            }
        }
        // Hashes a key cannot make are refused with a clear message.
        let id = Identity::load(&pki_signer::identity::KeySpec {
            key: Some(d.join("p256.key")),
            cert: Some(d.join("p256.crt")),
            ..Default::default()
        })
        .unwrap();
        let e = pkcs7::sign_detached(
            &content,
            &DetachedOptions {
                signer: id.signer.as_ref(),
                cert: &id.cert,
                chain: &[],
                hash: Hash::Sha384,
                signed_attrs: true,
                signing_time: None,
                content_info: true,
            },
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("cannot make sha384 signatures"),
            "{e}"
        );
    }
}
