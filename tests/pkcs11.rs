//! Keys (and certificates) in an HSM: `--key pkcs11:token=...;object=...`
//! against a real SoftHSM2 token made by the test with softhsm2-util and
//! pkcs11-tool, checked with sbverify, osslsigncode and openssl.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::softhsm::{self, MODULE};
use common::*;
use pki_signer::keys::Signer;
use pki_signer::pkcs11::Pkcs11Key;
use pki_signer::sigalg::{Hash, Scheme};

/// Distinctive, so a leak into any output would be found by a substring search.
const PIN: &str = "48151623";
const SO_PIN: &str = "10203040";

/// A SoftHSM2 token "test" in its own directory, holding:
/// - `ssig` (id 01): RSA-2048 key + certificate made by openssl (files rsa.key/rsa.crt kept);
/// - `ssig-ec` (id 02), `ssig-ec384` (id 03): EC P-256 / P-384, the same way;
/// - `device-ca` (id 21): an RSA CA key + certificate (ca.key/ca.crt), for CSRs;
/// - `gen-rsa` (id 11), `gen-ec` (id 12): key pairs generated inside the token,
///   public halves exported by pkcs11-tool to gen-rsa.pub / gen-ec.pub.
struct Hsm {
    dir: PathBuf,
    conf: PathBuf,
}

/// SoftHSM2 sometimes answers CKR_GENERAL_ERROR when this process's module
/// and several pki-signer children use the token at the same moment; the
/// tests of this file take turns so that a flake cannot fail CI.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static M: std::sync::Mutex<()> = std::sync::Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

fn hsm() -> Option<&'static Hsm> {
    static H: OnceLock<Option<Hsm>> = OnceLock::new();
    H.get_or_init(|| {
        let tools = softhsm::tools()?;
        let tool = &tools.pkcs11_tool;
        let ossl = openssl();
        let dir = tempfile::tempdir().unwrap().keep();
        let d = dir.as_path();
        let conf = softhsm::init_token(&tools, d, "test", SO_PIN, PIN);
        // SoftHSM2 reads its configuration when the module is initialised, in
        // this process (library tests below) as in the pki-signer children.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let p11 = |args: &[&str]| {
            let mut a = vec!["--module", MODULE, "--login", "--pin", PIN];
            a.extend(args);
            peer_ok(tool, &a, d)
        };
        const LEAF: &[&str] = &[
            "-addext",
            "keyUsage=critical,digitalSignature",
            "-addext",
            "extendedKeyUsage=codeSigning",
        ];
        const CA: &[&str] = &[
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ];
        const RSA: &[&str] = &["-newkey", "rsa:2048"];
        const P256: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
        const P384: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"];
        for (name, label, id, newkey, exts) in [
            ("rsa", "ssig", "01", RSA, LEAF),
            ("ec", "ssig-ec", "02", P256, LEAF),
            ("ec384", "ssig-ec384", "03", P384, LEAF),
            ("ca", "device-ca", "21", RSA, CA),
        ] {
            let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
            let subj = format!("/CN=HSM {label}");
            let mut req = vec!["req", "-x509", "-nodes", "-keyout", &key, "-out", &crt];
            req.extend(newkey);
            req.extend(["-subj", &subj, "-days", "30"]);
            req.extend(exts);
            peer_ok(&ossl, &req, d);
            let (kder, cder) = (format!("{name}.key.der"), format!("{name}.crt.der"));
            peer_ok(
                &ossl,
                &[
                    "pkcs8", "-topk8", "-nocrypt", "-in", &key, "-outform", "DER", "-out", &kder,
                ],
                d,
            );
            peer_ok(
                &ossl,
                &["x509", "-in", &crt, "-outform", "DER", "-out", &cder],
                d,
            );
            p11(&[
                "--write-object",
                &kder,
                "--type",
                "privkey",
                "--usage-sign",
                "--label",
                label,
                "--id",
                id,
            ]);
            p11(&[
                "--write-object",
                &cder,
                "--type",
                "cert",
                "--label",
                label,
                "--id",
                id,
            ]);
        }
        for (label, id, kt) in [
            ("gen-rsa", "11", "rsa:2048"),
            ("gen-ec", "12", "EC:prime256v1"),
        ] {
            p11(&[
                "--keypairgen",
                "--key-type",
                kt,
                "--label",
                label,
                "--id",
                id,
            ]);
            let der = format!("{label}.pub.der");
            p11(&["--read-object", "--type", "pubkey", "--id", id, "-o", &der]);
            peer_ok(
                &ossl,
                &[
                    "pkey",
                    "-pubin",
                    "-inform",
                    "DER",
                    "-in",
                    &der,
                    "-out",
                    &format!("{label}.pub"),
                ],
                d,
            );
        }
        std::fs::write(d.join("pin.txt"), format!("{PIN}\n")).unwrap();
        Some(Hsm { dir, conf })
    })
    .as_ref()
}

/// pki-signer in the token's directory, with exactly the PKI_SIGNER_* variables given.
fn run(h: &Hsm, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(bin());
    c.args(args)
        .current_dir(&h.dir)
        .env("SOFTHSM2_CONF", &h.conf);
    for (k, _) in std::env::vars() {
        if k.starts_with("PKI_SIGNER_") && k != "PKI_SIGNER_REQUIRE_PEERS" {
            c.env_remove(k);
        }
    }
    c.envs(env.iter().copied());
    c.output().expect("run pki-signer")
}

/// The usual release-engineer set-up: module and PIN in the environment.
const ENV: &[(&str, &str)] = &[
    ("PKI_SIGNER_PKCS11_MODULE", MODULE),
    ("PKI_SIGNER_PKCS11_PIN", PIN),
];

fn pe_sign(h: &Hsm, env: &[(&str, &str)], out: &str, key: &str, cert: &str) -> Output {
    let input = systemd_boot().unwrap();
    run(
        h,
        env,
        &["pe", "sign", input, "-o", out, "--key", key, "--cert", cert],
    )
}

fn sbverify(h: &Hsm, cert: &str, file: &str) {
    let tool = peer("sbverify").expect("sbverify");
    peer_ok(&tool, &["--cert", cert, file], &h.dir);
}

fn osslsigncode_verify(h: &Hsm, ca: &str, file: &str) {
    let tool = peer("osslsigncode").expect("osslsigncode");
    let text = peer_ok(&tool, &["verify", "-CAfile", ca, "-in", file], &h.dir);
    assert!(text.contains("Signature verification: ok"), "{text}");
}

fn read(h: &Hsm, f: &str) -> Vec<u8> {
    std::fs::read(h.dir.join(f)).unwrap()
}

#[test]
fn pe_sign_with_a_token_key_is_accepted_by_sbverify_and_osslsigncode() {
    let _one_at_a_time = serial();
    let Some(h) = hsm() else { return };
    if systemd_boot().is_none() {
        return;
    }
    ok(pe_sign(
        h,
        ENV,
        "hsm.efi",
        "pkcs11:token=test;object=ssig",
        "rsa.crt",
    ));
    sbverify(h, "rsa.crt", "hsm.efi");
    osslsigncode_verify(h, "rsa.crt", "hsm.efi");
    ok(run(
        h,
        &[],
        &["pe", "verify", "hsm.efi", "--cert", "rsa.crt"],
    ));
    // PKCS#1 v1.5 is deterministic: the token produces the very bytes the key file does.
    ok(pe_sign(h, &[], "file.efi", "rsa.key", "rsa.crt"));
    assert_eq!(read(h, "hsm.efi"), read(h, "file.efi"));
}

#[test]
fn the_certificate_can_come_from_the_token_too() {
    let _one_at_a_time = serial();
    let Some(h) = hsm() else { return };
    if systemd_boot().is_none() {
        return;
    }
    ok(pe_sign(
        h,
        ENV,
        "both.efi",
        "pkcs11:token=test;id=%01",
        "pkcs11:token=test;object=ssig;type=cert",
    ));
    sbverify(h, "rsa.crt", "both.efi");
    osslsigncode_verify(h, "rsa.crt", "both.efi");
    ok(pe_sign(h, &[], "file2.efi", "rsa.key", "rsa.crt"));
    assert_eq!(read(h, "both.efi"), read(h, "file2.efi"));
}

#[test]
fn ec_token_keys_sign_for_osslsigncode() {
    let _one_at_a_time = serial();
    let Some(h) = hsm() else { return };
    if systemd_boot().is_none() {
        return;
    }
    ok(pe_sign(
        h,
        ENV,
        "ec.efi",
        "pkcs11:token=test;object=ssig-ec",
        "ec.crt",
    ));
    osslsigncode_verify(h, "ec.crt", "ec.efi");
    ok(pe_sign(
        h,
        ENV,
        "ec384.efi",
        "pkcs11:token=test;object=ssig-ec384",
        "pkcs11:token=test;object=ssig-ec384",
    ));
    osslsigncode_verify(h, "ec384.crt", "ec384.efi");
    ok(run(
        h,
        &[],
        &["pe", "verify", "ec384.efi", "--cert", "ec384.crt"],
    ));
}

#[test]
fn module_and_pin_source_can_be_given_in_the_uri() {
    let _one_at_a_time = serial();
    let Some(h) = hsm() else { return };
    if systemd_boot().is_none() {
        return;
    }
    let uri = format!(
        "pkcs11:token=test;object=ssig?module-path={MODULE}&pin-source=file:{}",
        h.dir.join("pin.txt").display()
    );
    ok(pe_sign(h, &[], "uri.efi", &uri, "rsa.crt"));
    sbverify(h, "rsa.crt", "uri.efi");
}

#[test]
fn token_problems_are_one_line_errors_that_never_show_the_pin() {
    let _one_at_a_time = serial();
    let Some(h) = hsm() else { return };
    if systemd_boot().is_none() {
        return;
    }
    const WRONG: &str = "99887766";
    let key = "pkcs11:token=test;object=ssig";
    type Env<'a> = Vec<(&'a str, &'a str)>;
    // (environment, --key, --cert, expected error)
    let cases: Vec<(Env, String, &str, &str)> = vec![
        (
            vec![
                ("PKI_SIGNER_PKCS11_MODULE", MODULE),
                ("PKI_SIGNER_PKCS11_PIN", WRONG),
            ],
            key.into(),
            "rsa.crt",
            "PKCS#11 login to token 'test' failed: CKR_PIN_INCORRECT",
        ),
        (
            ENV.to_vec(),
            "pkcs11:token=test;object=nope".into(),
            "rsa.crt",
            "no private key 'nope' on token 'test'",
        ),
        (
            ENV.to_vec(),
            "pkcs11:token=prod;object=ssig".into(),
            "rsa.crt",
            "no token 'prod' in PKCS#11 module",
        ),
        (
            ENV.to_vec(),
            key.into(),
            "pkcs11:token=test;object=nope",
            "no certificate 'nope' on token 'test'",
        ),
        (
            vec![
                ("PKI_SIGNER_PKCS11_MODULE", "/nonexistent/libnope.so"),
                ("PKI_SIGNER_PKCS11_PIN", PIN),
            ],
            key.into(),
            "rsa.crt",
            "PKCS#11 module /nonexistent/libnope.so not found",
        ),
        (
            vec![("PKI_SIGNER_PKCS11_PIN", PIN)],
            key.into(),
            "rsa.crt",
            "no PKCS#11 module: add ?module-path=",
        ),
        (
            vec![("PKI_SIGNER_PKCS11_MODULE", MODULE)],
            key.into(),
            "rsa.crt",
            "token 'test' needs a PIN: set PKI_SIGNER_PKCS11_PIN",
        ),
        (
            vec![("PKI_SIGNER_PKCS11_MODULE", MODULE)],
            format!("{key}?pin-value={PIN}"),
            "rsa.crt",
            "must not be part of the URI (pin-value): set PKI_SIGNER_PKCS11_PIN",
        ),
        (
            ENV.to_vec(),
            "pkcs11:token=test;object=gen-rsa".into(),
            "rsa.crt",
            "certificate does not match the key pkcs11:token=test;object=gen-rsa",
        ),
    ];
    for (env, key, cert, want) in cases {
        let o = pe_sign(h, &env, "bad.efi", &key, cert);
        let all = stdout(&o) + &stderr(&o);
        let err = fails(o, 2);
        assert!(err.contains(want), "{key} {env:?}: {err}");
        assert!(
            !all.contains(PIN) && !all.contains(WRONG),
            "PIN leaked: {all}"
        );
        assert!(!h.dir.join("bad.efi").exists(), "{key}: output written");
    }
}

/// Every scheme the signing paths use, checked with `openssl dgst -verify`
/// against the public key openssl made (imported keys) or pkcs11-tool
/// exported (keys generated on the token).
#[test]
fn every_signature_scheme_verifies_with_openssl() {
    let _one_at_a_time = serial();
    let Some(h) = hsm() else { return };
    let ossl = openssl();
    let d = h.dir.as_path();
    let uri = |object: &str| {
        format!(
            "pkcs11:token=test;object={object}?module-path={MODULE}&pin-source=file:{}",
            d.join("pin.txt").display()
        )
    };
    for (f, src) in [("rsa", "rsa.crt"), ("ec", "ec.crt"), ("ec384", "ec384.crt")] {
        peer_ok(
            &ossl,
            &[
                "x509",
                "-in",
                src,
                "-pubkey",
                "-noout",
                "-out",
                &format!("{f}.pub"),
            ],
            d,
        );
    }
    use Hash::*;
    use Scheme::{Ecdsa, RsaPkcs1};
    let rsa = [
        RsaPkcs1(Sha256),
        RsaPkcs1(Sha384),
        RsaPkcs1(Sha512),
        Scheme::pss(Sha256),
        Scheme::pss(Sha384),
        Scheme::pss(Sha512),
    ];
    let plan: &[(&str, &str, &[Scheme])] = &[
        ("ssig", "rsa.pub", &rsa),
        ("gen-rsa", "gen-rsa.pub", &rsa),
        ("ssig-ec", "ec.pub", &[Ecdsa(Sha256), Ecdsa(Sha512)]),
        ("gen-ec", "gen-ec.pub", &[Ecdsa(Sha256)]),
        ("ssig-ec384", "ec384.pub", &[Ecdsa(Sha384), Ecdsa(Sha512)]),
    ];
    let msg = b"signed attributes, or a GuestOS manifest";
    std::fs::write(d.join("msg"), msg).unwrap();
    for &(object, public, schemes) in plan {
        let key = Pkcs11Key::open(&uri(object)).unwrap_or_else(|e| panic!("{object}: {e}"));
        // public_key() is the subjectPublicKey content: the tail of the SPKI DER.
        peer_ok(
            &ossl,
            &[
                "pkey", "-pubin", "-in", public, "-outform", "DER", "-out", "spki.der",
            ],
            d,
        );
        let spki = std::fs::read(d.join("spki.der")).unwrap();
        assert!(
            spki.ends_with(key.public_key()),
            "{object}: public key differs"
        );
        for &s in schemes {
            let sig = key
                .sign(s, msg)
                .unwrap_or_else(|e| panic!("{object} {s:?}: {e}"));
            std::fs::write(d.join("sig"), &sig).unwrap();
            let hash = format!("-{}", s.hash().name());
            let mut args = vec!["dgst", &hash, "-verify", public, "-signature", "sig"];
            if matches!(s, Scheme::RsaPss { .. }) {
                args.extend([
                    "-sigopt",
                    "rsa_padding_mode:pss",
                    "-sigopt",
                    "rsa_pss_saltlen:digest",
                ]);
            }
            args.push("msg");
            let out = peer_ok(&ossl, &args, d);
            assert!(out.contains("Verified OK"), "{object} {s:?}: {out}");
        }
    }
    // Mismatched schemes are refused, as for key files.
    let ec = Pkcs11Key::open(&uri("ssig-ec")).unwrap();
    assert!(ec.sign(RsaPkcs1(Sha256), msg).is_err());
    assert!(ec.sign(Ecdsa(Sha384), msg).is_err());
    let rsa_key = Pkcs11Key::open(&uri("ssig")).unwrap();
    assert!(rsa_key.sign(Ecdsa(Sha256), msg).is_err());
    // One key, many signing threads: the session is shared safely.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..5 {
                    let sig = rsa_key.sign(Scheme::pss(Sha256), msg).unwrap();
                    assert_eq!(sig.len(), 256);
                }
            });
        }
    });
}

#[test]
fn parallel_builds_signing_on_one_softhsm_token_all_succeed() {
    // SoftHSM2 loses its token when one process reads it while another
    // rewrites it: in 4 x 80 such signings before pki-signer took turns, 46 failed.
    let _one_at_a_time = serial();
    let Some(h) = hsm() else { return };
    if systemd_boot().is_none() {
        return;
    }
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                for i in 0..8 {
                    let out = format!("par-{t}-{i}.efi");
                    ok(pe_sign(
                        h,
                        ENV,
                        &out,
                        "pkcs11:token=test;object=ssig",
                        "rsa.crt",
                    ));
                }
            });
        }
    });
    sbverify(h, "rsa.crt", "par-3-7.efi");
    assert_eq!(read(h, "par-0-0.efi"), read(h, "par-3-7.efi"));
}

#[test]
fn guestos_manifests_and_device_csrs_sign_with_token_keys() {
    let _one_at_a_time = serial();
    let Some(h) = hsm() else { return };
    let ossl = openssl();
    let d = h.dir.as_path();
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/guestos/core-1.conf");
    // cml verifies GuestOS signatures with RSA keys only: an EC token key is
    // refused before anything is written.
    std::fs::copy(&conf, d.join("ec-guest.conf")).unwrap();
    let o = run(
        h,
        ENV,
        &[
            "guestos",
            "sign",
            "ec-guest.conf",
            "--key",
            "pkcs11:token=test;object=ssig-ec",
            "--cert",
            "ec.crt",
        ],
    );
    assert!(
        stderr(&o).contains("Unsupported key type"),
        "{}",
        stderr(&o)
    );
    assert!(!d.join("ec-guest.sig").exists());
    {
        let (object, cert) = ("ssig", "rsa.crt");
        let name = format!("{object}-guest.conf");
        std::fs::copy(&conf, d.join(&name)).unwrap();
        let key = format!("pkcs11:token=test;object={object}");
        ok(run(
            h,
            ENV,
            &["guestos", "sign", &name, "--key", &key, "--cert", cert],
        ));
        let stem = name.trim_end_matches(".conf");
        let public = format!("{stem}.pub");
        peer_ok(
            &ossl,
            &["x509", "-in", cert, "-pubkey", "-noout", "-out", &public],
            d,
        );
        let sig = format!("{stem}.sig");
        let out = peer_ok(
            &ossl,
            &[
                "dgst",
                "-sha512",
                "-verify",
                &public,
                "-signature",
                &sig,
                &name,
            ],
            d,
        );
        assert!(out.contains("Verified OK"), "{object}: {out}");
    }
    device_csr(d, "/CN=device-1");
    ok(run(
        h,
        ENV,
        &[
            "csr",
            "sign",
            "device.csr",
            "-o",
            "device.cert",
            "--key",
            "pkcs11:token=test;object=device-ca",
            "--cert",
            "ca.crt",
        ],
    ));
    let out = peer_ok(&ossl, &["verify", "-CAfile", "ca.crt", "device.cert"], d);
    assert!(out.contains("device.cert: OK"), "{out}");
}
