//! Offline signing: `offline request` on the build host, `offline sign` on a
//! signing host whose keys are in a SoftHSM2 token and which never sees an
//! artifact, `offline complete` back on the build host. sbverify,
//! osslsigncode and openssl accept the results under the production root
//! and refuse them under the development root; tampered or mixed-up
//! requests and responses are refused with one line and change nothing.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use common::softhsm::{self, MODULE};
use common::*;

const PIN: &str = "16180339";
const SO_PIN: &str = "14142135";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn pem_of(dir: &Path, cert: &str, out: &str) {
    peer_ok(&openssl(), &["x509", "-in", cert, "-out", out], dir);
}

/// A PKI made by `pki init --uefi` (RSA-2048), with PEM copies of the
/// certificates the peers take. `production`: its pki.json is marked
/// non-development and its subjects name a production organisation.
fn pki(production: bool) -> PathBuf {
    let tmp = tempfile::tempdir().unwrap().keep();
    let mut args = vec![
        "pki",
        "init",
        "--dir",
        "pki",
        "--key-type",
        "rsa:2048",
        "--uefi",
    ];
    if production {
        fs::write(
            tmp.join("profile.json"),
            r#"{"org": "Example Production", "org_unit": "Release"}"#,
        )
        .unwrap();
        args.extend(["--profile", "profile.json"]);
    }
    ok(run_in(&tmp, &args));
    if production {
        let m = tmp.join("pki/pki.json");
        let text = fs::read_to_string(&m).unwrap();
        fs::write(
            &m,
            text.replace("\"development\": true", "\"development\": false"),
        )
        .unwrap();
    }
    for (c, o) in [
        ("pki/ssig_subca.cert", "subca.pem"),
        ("pki/ssig_rootca.cert", "root.pem"),
        ("pki/gen_rootca.cert", "gen_root.pem"),
    ] {
        pem_of(&tmp, c, o);
    }
    tmp
}

fn dev() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| pki(false))
}

fn prod() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| pki(true))
}

/// The signing host: a SoftHSM2 token "release" holding the production
/// ssig_subca and KEK keys and certificates, and `keys.json` naming them by
/// URI (the other roles as files of the production PKI). None when SoftHSM2
/// is not installed (and not required).
fn hsm() -> Option<&'static Path> {
    static H: OnceLock<Option<PathBuf>> = OnceLock::new();
    H.get_or_init(|| {
        let tools = softhsm::tools()?;
        let p = prod().join("pki");
        let d = tempfile::tempdir().unwrap().keep();
        let conf = softhsm::init_token(&tools, &d, "release", SO_PIN, PIN);
        let ossl = openssl();
        for (role, cert, id) in [
            ("ssig_subca", "ssig_subca.cert", "01"),
            ("KEK", "KEK.crt", "02"),
        ] {
            let key = format!("{role}.key.der");
            let crt = format!("{role}.crt.der");
            softhsm::pkcs8_der(&p.join(format!("{role}.key")), &d.join(&key));
            peer_ok(
                &ossl,
                &[
                    "x509",
                    "-in",
                    s(&p.join(cert)),
                    "-outform",
                    "DER",
                    "-out",
                    &crt,
                ],
                &d,
            );
            for (file, ty) in [(key.as_str(), "privkey"), (crt.as_str(), "cert")] {
                softhsm::write_object(&tools, &conf, &d, PIN, file, ty, role, id);
            }
            fs::remove_file(d.join(&key)).unwrap();
        }
        // The PCR policy key: a private and a public key object, no certificate.
        softhsm::pkcs8_der(&p.join("tpm2-pcr-private.pem"), &d.join("pcr.key.der"));
        peer_ok(
            &ossl,
            &[
                "pkey",
                "-pubin",
                "-in",
                s(&p.join("tpm2-pcr-public.pem")),
                "-outform",
                "DER",
                "-out",
                "pcr.pub.der",
            ],
            &d,
        );
        for (file, ty) in [("pcr.key.der", "privkey"), ("pcr.pub.der", "pubkey")] {
            softhsm::write_object(&tools, &conf, &d, PIN, file, ty, "tpm2-pcr", "03");
        }
        fs::remove_file(d.join("pcr.key.der")).unwrap();
        fs::write(
            d.join("keys.json"),
            serde_json::json!({
                "trust": [p.join("ssig_rootca.cert")],
                "ssig_subca": {
                    "key": "pkcs11:token=release;object=ssig_subca",
                    "cert": p.join("ssig_subca.cert"),
                },
                "KEK": {
                    "key": "pkcs11:token=release;object=KEK",
                    "cert": "pkcs11:token=release;object=KEK",
                    "trust": [p.join("KEK.crt")],
                },
                "ssig_cml": { "key": p.join("ssig_cml.key"), "cert": p.join("ssig_cml.cert") },
                "device_subca": {
                    "key": p.join("device_subca.key"),
                    "cert": p.join("device_subca.cert"),
                    "trust": [p.join("gen_rootca.cert")],
                },
                "tpm2-pcr": {
                    "key": "pkcs11:token=release;object=tpm2-pcr",
                    "public": p.join("tpm2-pcr-public.pem"),
                },
            })
            .to_string(),
        )
        .unwrap();
        Some(d)
    })
    .as_deref()
}

/// What the build host knows: the production certificates (no keys are
/// read there; the "key" entries only keep the file one shape).
fn build_keys(dir: &Path) -> PathBuf {
    let p = prod().join("pki");
    let k = dir.join("keys-public.json");
    fs::write(
        &k,
        serde_json::json!({
            "trust": [p.join("ssig_rootca.cert")],
            "ssig_subca": { "key": "absent", "cert": p.join("ssig_subca.cert") },
            "KEK": { "key": "absent", "cert": p.join("KEK.crt"), "trust": [p.join("KEK.crt")] },
            "ssig_cml": { "key": "absent", "cert": p.join("ssig_cml.cert") },
            "device_subca": {
                "key": "absent", "cert": p.join("device_subca.cert"),
                "trust": [p.join("gen_rootca.cert")],
            },
            "tpm2-pcr": { "public": p.join("tpm2-pcr-public.pem") },
        })
        .to_string(),
    )
    .unwrap();
    k
}

/// pki-signer on the signing host: the token's module and PIN in the
/// environment, stdin not a terminal.
fn run_hsm(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let h = hsm().expect("token");
    let mut c = Command::new(bin());
    c.args(args).current_dir(cwd).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("PKI_SIGNER_") && k != "PKI_SIGNER_REQUIRE_PEERS" {
            c.env_remove(k);
        }
    }
    c.env("SOFTHSM2_CONF", h.join("softhsm2.conf"))
        .env("PKI_SIGNER_PKCS11_MODULE", MODULE)
        .env("PKI_SIGNER_PKCS11_PIN", PIN)
        .envs(env.iter().copied());
    c.output().expect("run pki-signer")
}

/// A build tree: three EFI applications (one already carrying the build's
/// development signature), a GuestOS manifest, the production DB.esl as a db
/// update, and a device CSR. Returns the build directory.
fn build() -> Option<PathBuf> {
    let efi = systemd_boot()?;
    hsm()?;
    let b = tempfile::tempdir().unwrap().keep();
    // Two different images (the stub ships with systemd-boot), so that
    // their signatures differ.
    let stub = Path::new(efi).with_file_name("linuxx64.efi.stub");
    let other = if stub.is_file() {
        stub.as_path()
    } else {
        Path::new(efi)
    };
    for (a, src) in [
        ("a1.efi", Path::new(efi)),
        ("a2.efi", other),
        ("a3.efi", Path::new(efi)),
    ] {
        fs::copy(src, b.join(a)).unwrap();
    }
    ok(run_in(
        &b,
        &[
            "pe",
            "sign",
            "a3.efi",
            "--in-place",
            "--role",
            "ssig_subca",
            "--dir",
            s(&dev().join("pki")),
        ],
    ));
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/guestos/core-1.conf"),
        b.join("core-1.conf"),
    )
    .unwrap();
    fs::copy(prod().join("pki/DB.esl"), b.join("db.esl")).unwrap();
    device_csr(&b, "/O=fleet/CN=dev-00001");
    Some(b)
}

fn request(b: &Path, extra: &[&str]) -> Output {
    let keys = build_keys(b);
    let mut args = vec![
        "offline",
        "request",
        "a1.efi",
        "a2.efi",
        "a3.efi",
        "core-1.conf",
        "device.csr",
        "--efivar",
        "db=db.esl",
        "--replace",
        "--keys",
        s(&keys),
        "-o",
        "request.json",
    ];
    args.extend(extra);
    run_in(b, &args)
}

/// Sign `request` in a directory of its own, with the build tree moved away
/// meanwhile: the signing host never reads an artifact.
fn sign_away(b: &Path, request: &Path, out: &Path, env: &[(&str, &str)]) -> Output {
    let h = hsm().unwrap();
    let sdir = tempfile::tempdir().unwrap().keep();
    fs::copy(request, sdir.join("request.json")).unwrap();
    let away = b.with_extension("away");
    fs::rename(b, &away).unwrap();
    let o = run_hsm(
        &sdir,
        &[
            "offline",
            "sign",
            "request.json",
            "--keys",
            s(&h.join("keys.json")),
            "-o",
            "response.json",
            "--yes",
        ],
        env,
    );
    fs::rename(&away, b).unwrap();
    let names: Vec<_> = fs::read_dir(&sdir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        names.len() <= 2,
        "signing host wrote more than the response: {names:?}"
    );
    if sdir.join("response.json").exists() {
        fs::copy(sdir.join("response.json"), out).unwrap();
    }
    o
}

fn sbverify(cert: &Path, file: &Path) -> bool {
    let tool = peer("sbverify").expect("sbverify");
    Command::new(tool)
        .args(["--cert", s(cert), s(file)])
        .output()
        .unwrap()
        .status
        .success()
}

fn osslsigncode_ok(ca: &Path, file: &Path) -> bool {
    let tool = peer("osslsigncode").expect("osslsigncode");
    let o = Command::new(tool)
        .args(["verify", "-CAfile", s(ca), "-in", s(file)])
        .output()
        .unwrap();
    o.status.success() && stdout(&o).contains("Signature verification: ok")
}

fn openssl_ok(args: &[&str], cwd: &Path) -> bool {
    Command::new(openssl())
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
        .status
        .success()
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn request_sign_complete_with_a_token_and_no_artifact_on_the_signing_host() {
    let Some(b) = build() else { return };
    let o = ok(request(&b, &[]));
    assert!(stdout(&o).contains("6 item(s)"), "{}", stdout(&o));
    let req = b.join("request.json");
    // Kilobytes, and no image inside: systemd-boot is ~140 kB.
    let size = fs::metadata(&req).unwrap().len();
    assert!(size < 64 << 10, "request is {size} bytes");

    // Without --yes and without a terminal: one line, nothing signed.
    let h = hsm().unwrap();
    let o = run_hsm(
        &b,
        &[
            "offline",
            "sign",
            "request.json",
            "--keys",
            s(&h.join("keys.json")),
            "-o",
            "r.json",
        ],
        &[],
    );
    let e = fails(o, 2);
    assert!(e.contains("--yes"), "{e}");
    assert!(!b.join("r.json").exists());

    let resp = b.join("response.json");
    let o = ok(sign_away(&b, &req, &resp, &[]));
    let summary = stderr(&o);
    for want in [
        "role ssig_subca: 3 pe",
        "role KEK: 1 efivar",
        "role ssig_cml: 1 guestos",
        "role device_subca: 1 csr",
        "pkcs11:token=release;object=ssig_subca",
        "certificate SHA-256",
    ] {
        assert!(summary.contains(want), "{want}: {summary}");
    }

    let o = ok(run_in(
        &b,
        &[
            "offline",
            "complete",
            "response.json",
            "--request",
            "request.json",
        ],
    ));
    assert!(
        stdout(&o).contains("6 completed, 0 already complete"),
        "{}",
        stdout(&o)
    );

    // PE: production, not development, for sbverify and osslsigncode; the
    // build's development signature on a3.efi is gone.
    let (p, d) = (prod(), dev());
    for a in ["a1.efi", "a2.efi", "a3.efi"] {
        let f = b.join(a);
        assert!(sbverify(&p.join("subca.pem"), &f), "{a}");
        assert!(!sbverify(&d.join("subca.pem"), &f), "{a}");
        assert!(osslsigncode_ok(&p.join("root.pem"), &f), "{a}");
        assert!(!osslsigncode_ok(&d.join("root.pem"), &f), "{a}");
    }
    fails_verify(run_in(
        &b,
        &[
            "pe",
            "verify",
            "a3.efi",
            "--cert",
            s(&d.join("pki/ssig_subca.cert")),
        ],
    ));

    // GuestOS: the signature with openssl (RSA-PSS, as cml), the chain with openssl verify.
    let pp = p.join("pki");
    peer_ok(
        &openssl(),
        &[
            "x509",
            "-in",
            "core-1.cert",
            "-pubkey",
            "-noout",
            "-out",
            "cml.pub",
        ],
        &b,
    );
    assert!(openssl_ok(
        &[
            "dgst",
            "-sha512",
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:-1",
            "-verify",
            "cml.pub",
            "-signature",
            "core-1.sig",
            "core-1.conf"
        ],
        &b
    ));
    assert!(openssl_ok(
        &[
            "verify",
            "-CAfile",
            s(&p.join("root.pem")),
            "-untrusted",
            "core-1.cert",
            "core-1.cert"
        ],
        &b
    ));
    assert!(!openssl_ok(
        &[
            "verify",
            "-CAfile",
            s(&d.join("root.pem")),
            "-untrusted",
            "core-1.cert",
            "core-1.cert"
        ],
        &b
    ));
    ok(run_in(
        &b,
        &[
            "guestos",
            "verify",
            "core-1.conf",
            "--trust",
            s(&pp.join("ssig_rootca.cert")),
        ],
    ));

    // CSR: openssl verify under the production customer root only.
    assert!(openssl_ok(
        &[
            "verify",
            "-CAfile",
            s(&p.join("gen_root.pem")),
            "-untrusted",
            "device.cert",
            "device.cert"
        ],
        &b
    ));
    assert!(!openssl_ok(
        &[
            "verify",
            "-CAfile",
            s(&d.join("gen_root.pem")),
            "-untrusted",
            "device.cert",
            "device.cert"
        ],
        &b
    ));

    // The db update: what firmware checks, with the production KEK only.
    ok(run_in(
        &b,
        &[
            "efivar",
            "verify",
            "db.auth",
            "--var",
            "db",
            "--cert",
            s(&pp.join("KEK.crt")),
        ],
    ));
    fails_verify(run_in(
        &b,
        &[
            "efivar",
            "verify",
            "db.auth",
            "--var",
            "db",
            "--cert",
            s(&d.join("pki/KEK.crt")),
        ],
    ));

    // Re-running complete is a no-op.
    let before = snapshot(&b);
    let o = ok(run_in(
        &b,
        &[
            "offline",
            "complete",
            "response.json",
            "--request",
            "request.json",
        ],
    ));
    assert!(
        stdout(&o).contains("0 completed, 6 already complete"),
        "{}",
        stdout(&o)
    );
    assert_eq!(snapshot(&b), before);
}

#[track_caller]
fn fails_verify(o: Output) {
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
}

/// A response with one field of its JSON changed by `edit`.
fn edited(resp: &Path, out: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(resp).unwrap()).unwrap();
    edit(&mut v);
    fs::write(out, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn tampered_and_mixed_up_requests_and_responses_are_refused() {
    let Some(b) = build() else { return };
    ok(request(&b, &[]));
    let (req, resp) = (b.join("request.json"), b.join("response.json"));
    ok(sign_away(&b, &req, &resp, &[]));
    let untouched = snapshot(&b);
    let complete = |r: &str, extra: &[&str]| {
        let mut args = vec!["offline", "complete", r];
        args.extend(extra);
        run_in(&b, &args)
    };
    let refused = |o: Output, want: &str| {
        assert_ne!(o.status.code(), Some(0), "{}", stdout(&o));
        let e = stderr(&o);
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
        assert!(e.contains(want), "{want}: {e}");
    };

    // Two signatures swapped: each is refused against its own bytes.
    edited(&resp, &b.join("swapped.json"), |v| {
        let r = v["results"].as_array_mut().unwrap();
        let a = r[0]["signature"].clone();
        r[0]["signature"] = r[1]["signature"].clone();
        r[1]["signature"] = a;
    });
    refused(
        complete("swapped.json", &[]),
        "does not verify with role 'ssig_subca'",
    );
    // Two results swapped whole.
    edited(&resp, &b.join("reordered.json"), |v| {
        v["results"].as_array_mut().unwrap().swap(0, 1);
    });
    refused(complete("reordered.json", &[]), "id is 1, expected 0");
    // A changed digest in the request the response carries.
    edited(&resp, &b.join("digest.json"), |v| {
        v["request"]["items"][0]["pe"]["authenticode_sha256"] = "00".repeat(32).into();
    });
    refused(complete("digest.json", &[]), "request_sha256");
    // ... also with the binding hash recomputed by the tamperer: the derived bytes differ.
    edited(&resp, &b.join("digest2.json"), |v| {
        v["request"]["items"][0]["pe"]["authenticode_sha256"] = "00".repeat(32).into();
        let r: pki_signer::offline::Request = serde_json::from_value(v["request"].clone()).unwrap();
        v["request_sha256"] = pki_signer::offline::request_sha256(&r).into();
    });
    refused(
        complete("digest2.json", &[]),
        "tbs is not what the item's own fields give",
    );
    // A response for another request.
    ok(run_in(
        &b,
        &[
            "offline",
            "request",
            "a1.efi",
            "--keys",
            s(&build_keys(&b)),
            "-o",
            "other.json",
        ],
    ));
    refused(
        complete("response.json", &["--request", "other.json"]),
        "refusing",
    );
    // Nothing was written by any of these.
    let now: Vec<_> = snapshot(&b)
        .into_iter()
        .filter(|(n, _)| !n.ends_with(".json"))
        .collect();
    let was: Vec<_> = untouched
        .iter()
        .filter(|(n, _)| !n.ends_with(".json"))
        .cloned()
        .collect();
    assert_eq!(now, was);

    // An artifact changed between request and complete.
    let mut img = fs::read(b.join("a2.efi")).unwrap();
    let n = img.len();
    img[n / 2] ^= 1;
    fs::write(b.join("a2.efi"), &img).unwrap();
    refused(
        complete("response.json", &[]),
        "changed since the request was made",
    );
    assert_eq!(fs::read(b.join("a2.efi")).unwrap(), img);
    for (name, bytes) in &was {
        if name != "a2.efi" {
            assert_eq!(&fs::read(b.join(name)).unwrap(), bytes, "{name}");
        }
    }

    // The signing host: a wrong role, a role with another certificate, a changed digest.
    let h = hsm().unwrap();
    let sign = |r: &Path| {
        run_hsm(
            &b,
            &[
                "offline",
                "sign",
                s(r),
                "--keys",
                s(&h.join("keys.json")),
                "-o",
                "x.json",
                "--yes",
            ],
            &[],
        )
    };
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&req).unwrap()).unwrap();
    let mut role = v.clone();
    let rc = role["roles"]["ssig_subca"].take();
    role["roles"].as_object_mut().unwrap().remove("ssig_subca");
    role["roles"]["nobody"] = rc;
    for i in role["items"].as_array_mut().unwrap() {
        if i["role"] == "ssig_subca" {
            i["role"] = "nobody".into();
        }
    }
    fs::write(b.join("role.json"), role.to_string()).unwrap();
    refused(sign(&b.join("role.json")), "role 'nobody' is not one of");
    let dev_cert = fs::read(dev().join("pki/ssig_subca.cert")).unwrap();
    let der = pem::parse(&dev_cert).unwrap().into_contents();
    v["roles"]["ssig_subca"]["cert"] = pki_signer::codec::hex(&der).into();
    v["roles"]["ssig_subca"]["cert_sha256"] = pki_signer::codec::sha256_hex(&der).into();
    fs::write(b.join("cert.json"), v.to_string()).unwrap();
    refused(sign(&b.join("cert.json")), "the request wants certificate");
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&req).unwrap()).unwrap();
    v["items"][1]["pe"]["authenticode_sha256"] = "11".repeat(32).into();
    fs::write(b.join("changed.json"), v.to_string()).unwrap();
    refused(
        sign(&b.join("changed.json")),
        "tbs is not what the item's own fields give",
    );
    assert!(!b.join("x.json").exists());
}

#[test]
fn a_ca_csr_and_development_keys_in_release_mode_are_refused() {
    let Some(b) = build() else { return };
    let keys = build_keys(&b);
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
            "ca.key",
            "-subj",
            "/CN=evil",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-out",
            "ca.csr",
        ],
        &b,
    );
    ok(run_in(
        &b,
        &[
            "offline",
            "request",
            "ca.csr",
            "--keys",
            s(&keys),
            "-o",
            "ca.json",
        ],
    ));
    let resp = b.join("ca-resp.json");
    let e = fails(sign_away(&b, &b.join("ca.json"), &resp, &[]), 2);
    assert!(e.contains("requests a CA certificate"), "{e}");
    assert!(!resp.exists());

    // The signing host's keys.json names the development ssig_subca key:
    // the request asks for that certificate, and release mode refuses it.
    let dp = dev().join("pki");
    let dkeys = b.join("dev-keys.json");
    fs::write(
        &dkeys,
        serde_json::json!({
            "trust": [dp.join("ssig_rootca.cert")],
            "ssig_subca": { "key": dp.join("ssig_subca.key"), "cert": dp.join("ssig_subca.cert") },
        })
        .to_string(),
    )
    .unwrap();
    ok(run_in(
        &b,
        &[
            "offline",
            "request",
            "a1.efi",
            "--keys",
            s(&dkeys),
            "-o",
            "dev.json",
        ],
    ));
    let o = run_hsm(
        &b,
        &[
            "offline",
            "sign",
            "dev.json",
            "--keys",
            s(&dkeys),
            "-o",
            "dev-resp.json",
            "--yes",
        ],
        &[("PKI_SIGNER_RELEASE", "1")],
    );
    let e = fails(o, 2);
    assert!(e.contains("release mode refuses"), "{e}");
    assert!(!b.join("dev-resp.json").exists());
    // Without release mode the same request signs (development keys are the user's call).
    ok(run_hsm(
        &b,
        &[
            "offline",
            "sign",
            "dev.json",
            "--keys",
            s(&dkeys),
            "-o",
            "dev-resp.json",
            "--yes",
        ],
        &[],
    ));
}

#[test]
fn complete_into_an_out_dir_leaves_the_artifacts_alone() {
    let Some(b) = build() else { return };
    ok(request(&b, &[]));
    let (req, resp) = (b.join("request.json"), b.join("response.json"));
    ok(sign_away(&b, &req, &resp, &[]));
    let before = snapshot(&b);
    let o = ok(run_in(
        &b,
        &[
            "offline",
            "complete",
            "response.json",
            "--request",
            "request.json",
            "--out-dir",
            "out",
        ],
    ));
    assert!(stdout(&o).contains("6 completed"), "{}", stdout(&o));
    assert_eq!(snapshot(&b), before);
    let out = b.join("out");
    for f in [
        "a1.efi",
        "a2.efi",
        "a3.efi",
        "core-1.conf",
        "core-1.sig",
        "core-1.cert",
        "db.auth",
        "device.cert",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert!(sbverify(&prod().join("subca.pem"), &out.join("a1.efi")));
    let o = ok(run_in(
        &b,
        &["offline", "complete", "response.json", "--out-dir", "out"],
    ));
    assert!(stdout(&o).contains("6 already complete"), "{}", stdout(&o));
}

/// One change to a JSON document.
type Edit = Box<dyn Fn(&mut serde_json::Value)>;

/// Writes testdata/malformed/offline/ when PKI_SIGNER_REGEN_MALFORMED=1:
/// broken requests and responses made from a real exchange with a
/// throwaway PKI (file keys, no token needed).
#[test]
fn regenerate_testdata_malformed_offline() {
    if std::env::var("PKI_SIGNER_REGEN_MALFORMED").as_deref() != Ok("1") {
        return;
    }
    let Some(efi) = systemd_boot() else { return };
    let t = tempfile::tempdir().unwrap().keep();
    ok(run_in(
        &t,
        &["pki", "init", "--dir", "pki", "--key-type", "ec:prime256v1"],
    ));
    fs::copy(efi, t.join("a.efi")).unwrap();
    fs::write(
        t.join("keys.json"),
        serde_json::json!({
            "trust": ["pki/ssig_rootca.cert"],
            "ssig_subca": { "key": "pki/ssig_subca.key", "cert": "pki/ssig_subca.cert" },
        })
        .to_string(),
    )
    .unwrap();
    ok(run_in(
        &t,
        &[
            "offline",
            "request",
            "a.efi",
            "--keys",
            "keys.json",
            "-o",
            "req.json",
        ],
    ));
    let c = Command::new(bin())
        .args([
            "offline",
            "sign",
            "req.json",
            "--keys",
            "keys.json",
            "-o",
            "resp.json",
            "--yes",
        ])
        .current_dir(&t)
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", stderr(&c));
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/malformed/offline");
    // The `uki` entries come from a_uki_gets_its_pcr_policy_and_image_signature_in_one_visit.
    for e in fs::read_dir(&top).into_iter().flatten().flatten() {
        if !e.file_name().to_string_lossy().contains("-uki-") {
            fs::remove_file(e.path()).unwrap();
        }
    }
    fs::create_dir_all(&top).unwrap();
    let req: serde_json::Value =
        serde_json::from_slice(&fs::read(t.join("req.json")).unwrap()).unwrap();
    let resp: serde_json::Value =
        serde_json::from_slice(&fs::read(t.join("resp.json")).unwrap()).unwrap();
    let put = |name: &str, bytes: Vec<u8>| fs::write(top.join(name), bytes).unwrap();
    let json = |v: &serde_json::Value| serde_json::to_vec(v).unwrap();
    put("request-zero-size.json", vec![]);
    put("request-garbage.json", b"\x00\xffnot json at all{".to_vec());
    put("request-truncated.json", json(&req)[..200].to_vec());
    put("request-deep.json", "[".repeat(5_000).into_bytes());
    let mut edits: Vec<(&str, Edit)> = vec![
        (
            "request-wrong-format.json",
            Box::new(|v| v["format"] = "pki-signer offline response".into()),
        ),
        (
            "request-version-2.json",
            Box::new(|v| v["version"] = 2.into()),
        ),
        (
            "request-unknown-field.json",
            Box::new(|v| v["items"][0]["extra"] = 1.into()),
        ),
        (
            "request-unknown-kind.json",
            Box::new(|v| v["items"][0]["kind"] = "elf".into()),
        ),
        (
            "request-unknown-scheme.json",
            Box::new(|v| v["items"][0]["scheme"] = "rsa-pkcs1-md5".into()),
        ),
        (
            "request-uppercase-hex.json",
            Box::new(|v| {
                let t = v["items"][0]["tbs"].as_str().unwrap().to_uppercase();
                v["items"][0]["tbs"] = t.into();
            }),
        ),
        (
            "request-odd-hex.json",
            Box::new(|v| {
                let t = format!("{}0", v["items"][0]["tbs"].as_str().unwrap());
                v["items"][0]["tbs"] = t.into();
            }),
        ),
        (
            "request-huge-tbs.json",
            Box::new(|v| v["items"][0]["tbs"] = "00".repeat(8192).into()),
        ),
        (
            "request-tbs-mismatch.json",
            Box::new(|v| v["items"][0]["pe"]["authenticode_sha256"] = "00".repeat(32).into()),
        ),
        (
            "request-bad-id.json",
            Box::new(|v| v["items"][0]["id"] = 7.into()),
        ),
        (
            "request-no-items.json",
            Box::new(|v| v["items"] = serde_json::json!([])),
        ),
        (
            "request-unknown-role.json",
            Box::new(|v| v["items"][0]["role"] = "nobody".into()),
        ),
        (
            "request-bad-fingerprint.json",
            Box::new(|v| v["roles"]["ssig_subca"]["cert_sha256"] = "11".repeat(32).into()),
        ),
        (
            "request-garbage-cert.json",
            Box::new(|v| v["roles"]["ssig_subca"]["cert"] = "3082".into()),
        ),
        (
            "request-no-trust.json",
            Box::new(|v| v["roles"]["ssig_subca"]["trust"] = serde_json::json!([])),
        ),
        (
            "request-relative-abs.json",
            Box::new(|v| v["items"][0]["artifact_abs"] = "a.efi".into()),
        ),
        (
            "request-control-name.json",
            Box::new(|v| v["items"][0]["artifact"] = "a\u{1b}[2J.efi".into()),
        ),
        (
            "request-bad-signing-time.json",
            Box::new(|v| v["items"][0]["pe"]["signing_time"] = "yesterday".into()),
        ),
        (
            "request-bad-existing.json",
            Box::new(|v| v["items"][0]["pe"]["existing"] = "merge".into()),
        ),
        (
            "request-efivar-params-on-pe.json",
            Box::new(|v| {
                v["items"][0]["efivar"] =
                    serde_json::json!({"var": "db", "append": false, "time": "2026-01-01 00:00:00"})
            }),
        ),
        (
            "request-csr-not-a-csr.json",
            Box::new(|v| {
                v["items"][0]["kind"] = "csr".into();
                v["items"][0].as_object_mut().unwrap().remove("scheme");
                v["items"][0].as_object_mut().unwrap().remove("pe");
            }),
        ),
        (
            "request-guestos-not-a-conf.json",
            Box::new(|v| {
                v["items"][0]["kind"] = "guestos".into();
                v["items"][0].as_object_mut().unwrap().remove("pe");
            }),
        ),
    ];
    for (name, edit) in edits.drain(..) {
        let mut v = req.clone();
        edit(&mut v);
        put(name, json(&v));
    }
    put("response-zero-size.json", vec![]);
    put("response-garbage.json", b"{\"format\": 7}".to_vec());
    let mut redits: Vec<(&str, Edit)> = vec![
        (
            "response-wrong-format.json",
            Box::new(|v| v["format"] = "pki-signer offline request".into()),
        ),
        (
            "response-bad-binding.json",
            Box::new(|v| v["request_sha256"] = "00".repeat(32).into()),
        ),
        (
            "response-tampered-request.json",
            Box::new(|v| v["request"]["items"][0]["artifact_sha256"] = "00".repeat(32).into()),
        ),
        (
            "response-no-results.json",
            Box::new(|v| v["results"] = serde_json::json!([])),
        ),
        (
            "response-bad-id.json",
            Box::new(|v| v["results"][0]["id"] = 3.into()),
        ),
        (
            "response-not-hex.json",
            Box::new(|v| v["results"][0]["signature"] = "zz".into()),
        ),
        (
            "response-huge-signature.json",
            Box::new(|v| v["results"][0]["signature"] = "00".repeat(5000).into()),
        ),
        (
            "response-empty-signature.json",
            Box::new(|v| v["results"][0]["signature"] = "".into()),
        ),
        (
            "response-wrong-signature.json",
            Box::new(|v| v["results"][0]["signature"] = "3006020101020101".into()),
        ),
        (
            "response-certificate-for-pe.json",
            Box::new(|v| v["results"][0]["certificate"] = "3082".into()),
        ),
        (
            "response-other-signer.json",
            Box::new(|v| v["signers"]["ssig_subca"]["cert_sha256"] = "22".repeat(32).into()),
        ),
        (
            "response-unknown-field.json",
            Box::new(|v| v["extra"] = true.into()),
        ),
    ];
    for (name, edit) in redits.drain(..) {
        let mut v = resp.clone();
        edit(&mut v);
        put(name, json(&v));
    }
}

/// A UKI the build made with its development keys, PCR policy included,
/// goes through one request, one visit to the token (the PCR key and the
/// image key in one login) and one completion. The result is what `uki
/// build` makes with the production keys, byte for byte, and the peers
/// accept it: sbverify and osslsigncode the image, openssl every policy
/// over PCR 11 values that systemd-measure computes.
#[test]
fn a_uki_gets_its_pcr_policy_and_image_signature_in_one_visit() {
    let stub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
    if !Path::new(stub).is_file() || hsm().is_none() {
        assert!(
            std::env::var("PKI_SIGNER_REQUIRE_PEERS").as_deref() != Ok("1"),
            "systemd-boot-efi and SoftHSM2 are required"
        );
        return;
    }
    let b = tempfile::tempdir().unwrap().keep();
    let initrd: Vec<u8> = (0..300_001u32).map(|i| (i * 13 % 251) as u8).collect();
    fs::write(b.join("initrd"), initrd).unwrap();
    let devdir = dev().join("pki");
    // The same UKI shape for the build's UKI and the direct production one.
    const SHAPE: [&str; 4] = ["--uname", "6.1.0-test", "--pcr-banks", "sha256,sha512"];
    let dev_keys = [
        SHAPE[0],
        SHAPE[1],
        SHAPE[2],
        SHAPE[3],
        "--role",
        "ssig_subca",
        "--dir",
        s(&devdir),
        "--pcr-role",
        "tpm2-pcr",
    ];
    ok(common::pcr::uki_build(&b, "uki.efi", &dev_keys));
    let keys = build_keys(&b);
    let req = |extra: &[&str]| {
        let mut args = vec![
            "offline",
            "request",
            "uki.efi",
            "--keys",
            s(&keys),
            "-o",
            "request.json",
        ];
        args.extend(extra);
        Command::new(bin())
            .args(&args)
            .current_dir(&b)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap()
    };
    // The development signature cannot stay: the image changes.
    let e = fails(req(&[]), 2);
    assert!(e.contains("--replace"), "{e}");
    ok(req(&["--replace"]));
    let request = fs::read(b.join("request.json")).unwrap();
    assert!(request.len() < 16 << 10, "{} bytes", request.len());
    let r: serde_json::Value = serde_json::from_slice(&request).unwrap();
    assert_eq!(r["items"][0]["kind"], "uki");
    assert_eq!(r["items"][0]["uki"]["phases"].as_array().unwrap().len(), 4);

    let o = sign_away(&b, &b.join("request.json"), &b.join("response.json"), &[]);
    let o = ok(o);
    assert!(
        stderr(&o).contains("PCR key tpm2-pcr: 8 policies of 1 UKI(s)"),
        "{}",
        stderr(&o)
    );
    let before = fs::read(b.join("uki.efi")).unwrap();

    if std::env::var("PKI_SIGNER_REGEN_MALFORMED").as_deref() == Ok("1") {
        malformed_uki_files(&b.join("request.json"), &b.join("response.json"));
    }

    // Tampered responses are refused with one line, and the UKI is left alone.
    let refused = |file: &str, want: &str| {
        let o = run_in(&b, &["offline", "complete", file]);
        assert_ne!(o.status.code(), Some(0), "{file}: {}", stdout(&o));
        let e = stderr(&o);
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
        assert!(e.contains(want), "{file}: {want}: {e}");
        assert!(fs::read(b.join("uki.efi")).unwrap() == before, "{file}");
    };
    let resp = b.join("response.json");
    edited(&resp, &b.join("t-pcr.json"), |v| {
        let sig = v["results"][0]["pcr_signatures"][0]
            .as_str()
            .unwrap()
            .to_string();
        let flipped = if sig.starts_with('0') { "1" } else { "0" };
        v["results"][0]["pcr_signatures"][0] = format!("{flipped}{}", &sig[1..]).into();
    });
    refused("t-pcr.json", "policy signature 0 does not verify");
    edited(&resp, &b.join("t-swap.json"), |v| {
        v["results"][0]["pcr_signatures"]
            .as_array_mut()
            .unwrap()
            .swap(1, 2);
    });
    refused("t-swap.json", "policy signature 1 does not verify");
    edited(&resp, &b.join("t-image.json"), |v| {
        let sig = v["results"][0]["signature"].as_str().unwrap().to_string();
        let flipped = if sig.ends_with('0') { "1" } else { "0" };
        v["results"][0]["signature"] = format!("{}{flipped}", &sig[..sig.len() - 1]).into();
    });
    refused("t-image.json", "does not verify with role 'ssig_subca'");
    // A section digest changed in the request (and its hash recomputed): the
    // signing host signs what it is given, the build host finds that the UKI
    // is not what was signed.
    edited(&resp, &b.join("t-digest.json"), |v| {
        v["request"]["items"][0]["uki"]["sections"][0]["digests"]["sha256"] =
            "00".repeat(32).into();
        let r: pki_signer::offline::Request = serde_json::from_value(v["request"].clone()).unwrap();
        v["request_sha256"] = pki_signer::offline::request_sha256(&r).into();
    });
    refused("t-digest.json", "policy signature 0 does not verify");
    // The same change made to the request before it was signed.
    edited(&b.join("request.json"), &b.join("t-request.json"), |v| {
        v["items"][0]["uki"]["sections"][0]["digests"]["sha256"] = "00".repeat(32).into();
    });
    ok(sign_away(
        &b,
        &b.join("t-request.json"),
        &b.join("t-signed.json"),
        &[],
    ));
    refused("t-signed.json", "not what the request was made from");

    ok(run_in(
        &b,
        &[
            "offline",
            "complete",
            "response.json",
            "--request",
            "request.json",
        ],
    ));
    assert_ne!(fs::read(b.join("uki.efi")).unwrap(), before);

    let (p, d) = (prod(), dev());
    assert!(sbverify(&p.join("subca.pem"), &b.join("uki.efi")));
    assert!(!sbverify(&d.join("subca.pem"), &b.join("uki.efi")));
    assert!(osslsigncode_ok(&p.join("root.pem"), &b.join("uki.efi")));
    assert!(!osslsigncode_ok(&d.join("root.pem"), &b.join("uki.efi")));

    // What uki build makes with the production keys, byte for byte.
    let pk = p.join("pki");
    let pcr_key = pk.join("tpm2-pcr-private.pem");
    ok(common::pcr::uki_build(
        &b,
        "direct.efi",
        &[
            SHAPE[0],
            SHAPE[1],
            SHAPE[2],
            SHAPE[3],
            "--role",
            "ssig_subca",
            "--dir",
            s(&pk),
            "--pcr-key",
            s(&pcr_key),
        ],
    ));
    assert!(
        fs::read(b.join("uki.efi")).unwrap() == fs::read(b.join("direct.efi")).unwrap(),
        "the completed UKI differs from uki build's with the production keys"
    );

    // .pcrpkey is the production key, and every policy verifies with it
    // over the PCR 11 values systemd-measure computes for the sections, and
    // not with the development key.
    let sections = common::pcr::extract(&b, "uki.efi");
    assert_eq!(
        fs::read(sections.join("pcrpkey")).unwrap(),
        fs::read(pk.join("tpm2-pcr-public.pem")).unwrap()
    );
    let banks = ["sha256", "sha512"];
    if let Some(n) = common::pcr::verify_policies(&b, &banks, &pk.join("tpm2-pcr-public.pem")) {
        assert_eq!(n, 8);
        let dev_key = d.join("pki/tpm2-pcr-public.pem");
        let other = std::panic::catch_unwind(|| common::pcr::verify_policies(&b, &banks, &dev_key));
        assert!(
            other.is_err(),
            "a policy verified with the development PCR key"
        );
    }

    // Run again: nothing to do, nothing changes.
    let after = fs::read(b.join("uki.efi")).unwrap();
    let o = ok(run_in(
        &b,
        &["offline", "complete", "response.json", "--json"],
    ));
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rep["already_complete"], 1, "{rep}");
    assert_eq!(fs::read(b.join("uki.efi")).unwrap(), after);
}

/// `testdata/malformed/offline/{request,response}-uki-*.json`: a real `uki`
/// request and response, each broken in one field.
fn malformed_uki_files(req: &Path, resp: &Path) {
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/malformed/offline");
    fs::create_dir_all(&top).unwrap();
    let edits: Vec<(&str, Edit)> = vec![
        (
            "append",
            Box::new(|v| v["items"][0]["uki"]["existing"] = "append".into()),
        ),
        (
            "sha1-bank",
            Box::new(|v| v["items"][0]["uki"]["banks"] = serde_json::json!(["sha1"])),
        ),
        (
            "unsorted-banks",
            Box::new(|v| v["items"][0]["uki"]["banks"] = serde_json::json!(["sha512", "sha256"])),
        ),
        (
            "short-digest",
            Box::new(|v| {
                v["items"][0]["uki"]["sections"][0]["digests"]["sha256"] = "00".repeat(31).into()
            }),
        ),
        (
            "partial-block",
            Box::new(|v| v["items"][0]["uki"]["prefix"]["compressed"] = 63.into()),
        ),
        (
            "long-pending",
            Box::new(|v| v["items"][0]["uki"]["prefix"]["pending"] = "00".repeat(64).into()),
        ),
        (
            "huge-zeros",
            Box::new(|v| v["items"][0]["uki"]["zeros_after"] = (1u64 << 40).into()),
        ),
        (
            "tbs",
            Box::new(|v| v["items"][0]["tbs"] = "00".repeat(32).into()),
        ),
        (
            "no-pcr-key",
            Box::new(|v| v["pcr_keys"] = serde_json::json!({})),
        ),
        (
            "unknown-phase",
            Box::new(|v| v["items"][0]["uki"]["phases"][0] = "enter-initrd:sysnit".into()),
        ),
        (
            "pe-params",
            Box::new(|v| {
                v["items"][0]["pe"] =
                    serde_json::json!({"authenticode_sha256": "00", "existing": "refuse"})
            }),
        ),
        (
            "pcr-key-not-rsa",
            Box::new(|v| v["pcr_keys"]["tpm2-pcr"]["public_key"] = "3013".into()),
        ),
    ];
    let load =
        |p: &Path| -> serde_json::Value { serde_json::from_slice(&fs::read(p).unwrap()).unwrap() };
    let put = |name: String, v: &serde_json::Value| {
        fs::write(top.join(name), serde_json::to_vec(v).unwrap()).unwrap()
    };
    for (name, edit) in &edits {
        let mut v = load(req);
        edit(&mut v);
        put(format!("request-uki-{name}.json"), &v);
        // The same fault in the request a response carries, its binding hash recomputed.
        let mut r = load(resp);
        edit(&mut r["request"]);
        if let Ok(q) = serde_json::from_value::<pki_signer::offline::Request>(r["request"].clone())
        {
            r["request_sha256"] = pki_signer::offline::request_sha256(&q).into();
        }
        put(format!("response-uki-{name}.json"), &r);
    }
    let responses: Vec<(&str, Edit)> = vec![
        (
            "no-pcr-signatures",
            Box::new(|v| v["results"][0]["pcr_signatures"] = serde_json::Value::Null),
        ),
        (
            "missing-pcr-signature",
            Box::new(|v| {
                v["results"][0]["pcr_signatures"]
                    .as_array_mut()
                    .unwrap()
                    .pop();
            }),
        ),
        (
            "pcr-signature-not-hex",
            Box::new(|v| v["results"][0]["pcr_signatures"][0] = "zz".into()),
        ),
        (
            "one-pcr-signature",
            Box::new(|v| v["results"][0]["pcr_signatures"] = serde_json::json!(["00"])),
        ),
    ];
    for (name, edit) in &responses {
        let mut r = load(resp);
        edit(&mut r);
        put(format!("response-uki-{name}.json"), &r);
    }
}
