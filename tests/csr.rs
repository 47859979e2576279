//! `csr sign / show`: device CSRs made by `openssl req`, certificates checked
//! with `openssl verify` and `openssl x509`.

mod common;

use std::fs;
use std::path::Path;

use common::*;

/// A fast PKI (EC P-256 everywhere) in DIR/pki of a fresh temp DIR.
fn pki() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    ok(run_in(
        tmp.path(),
        &["pki", "init", "--key-type", "ec:prime256v1"],
    ));
    tmp
}

/// `openssl req -new -newkey ...`: writes NAME.key and NAME.csr in `dir`.
fn openssl_csr(dir: &Path, name: &str, newkey: &[&str], subj: &str, addext: &[&str]) {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let mut args = vec!["req", "-new", "-nodes", "-keyout", &key, "-out", &csr];
    args.extend(newkey);
    args.extend(["-subj", subj]);
    for e in addext {
        args.extend(["-addext", e]);
    }
    peer_ok(&openssl(), &args, dir);
}

const EC: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
const RSA: &[&str] = &["-newkey", "rsa:2048"];

fn x509_text(dir: &Path, cert: &str) -> String {
    peer_ok(&openssl(), &["x509", "-in", cert, "-noout", "-text"], dir)
}

fn openssl_verify(dir: &Path, certs: &[&str]) -> String {
    let mut args = vec![
        "verify",
        "-CAfile",
        "pki/gen_rootca.cert",
        "-untrusted",
        "pki/device_subca.cert",
    ];
    args.extend(certs);
    peer_ok(&openssl(), &args, dir)
}

fn index(dir: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(dir.join("pki/issued/index.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn ec_and_rsa_device_csrs_get_client_certificates_openssl_verifies() {
    let tmp = pki();
    let dir = tmp.path();
    // Golioth names a device by O and CN only; it allows no subjectAltName.
    openssl_csr(dir, "device-0001", EC, "/O=my-project/CN=device-0001", &[]);
    openssl_csr(dir, "device-0002", RSA, "/O=my-project/CN=device-0002", &[]);

    for dev in ["device-0001", "device-0002"] {
        let out = stdout(&ok(run_in(
            dir,
            &[
                "csr",
                "sign",
                &format!("{dev}.csr"),
                "--role",
                "device_subca",
                "-o",
                &format!("{dev}.cert"),
                "--profile",
                "golioth",
                "--project",
                "my-project",
            ],
        )));
        assert!(
            out.starts_with(&format!("issued {dev}.cert for 'O=my-project, CN={dev}'")),
            "{out}"
        );
        let v = openssl_verify(dir, &[&format!("{dev}.cert")]);
        assert!(v.contains(": OK"), "{v}");

        // The device's own key is the one certified.
        let cert_pub = peer_ok(
            &openssl(),
            &["x509", "-in", &format!("{dev}.cert"), "-noout", "-pubkey"],
            dir,
        );
        let key_pub = peer_ok(
            &openssl(),
            &["pkey", "-in", &format!("{dev}.key"), "-pubout"],
            dir,
        );
        assert_eq!(cert_pub, key_pub);

        // The file holds the certificate and device_subca, not the root.
        let pem = fs::read_to_string(dir.join(format!("{dev}.cert"))).unwrap();
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2);
        let subca = fs::read_to_string(dir.join("pki/device_subca.cert")).unwrap();
        assert!(pem.ends_with(&subca));
    }

    let ec = x509_text(dir, "device-0001.cert");
    assert!(
        ec.contains("Subject: O = my-project, CN = device-0001"),
        "{ec}"
    );
    assert!(ec.contains("CA:FALSE"), "{ec}");
    assert!(
        ec.contains("X509v3 Key Usage: critical\n                Digital Signature\n"),
        "{ec}"
    );
    assert!(ec.contains("TLS Web Client Authentication"), "{ec}");
    assert!(!ec.contains("Subject Alternative Name"), "{ec}");
    assert!(ec.contains("X509v3 Subject Key Identifier"), "{ec}");
    assert!(ec.contains("X509v3 Authority Key Identifier"), "{ec}");

    let rsa = x509_text(dir, "device-0002.cert");
    assert!(rsa.contains("CA:FALSE"), "{rsa}");
    assert!(rsa.contains("Digital Signature, Key Encipherment"), "{rsa}");
    assert!(rsa.contains("TLS Web Client Authentication"), "{rsa}");
    assert!(!rsa.contains("Subject Alternative Name"), "{rsa}");

    let ix = index(dir);
    assert_eq!(ix.len(), 2);
    assert_eq!(ix[0]["csr"], "device-0001.csr");
    assert_eq!(ix[0]["subject"], "O=my-project, CN=device-0001");
    assert_eq!(ix[0]["issuer_role"], "device_subca");
    let fp = peer_ok(
        &openssl(),
        &[
            "x509",
            "-in",
            "device-0001.cert",
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
        dir,
    );
    assert!(
        fp.replace(':', "")
            .to_lowercase()
            .contains(ix[0]["fingerprint_sha256"].as_str().unwrap()),
        "{fp}"
    );
    let serial = peer_ok(
        &openssl(),
        &["x509", "-in", "device-0001.cert", "-noout", "-serial"],
        dir,
    );
    assert_eq!(
        serial.trim().to_lowercase(),
        format!("serial={}", ix[0]["serial"].as_str().unwrap())
    );
}

#[test]
fn refused_csrs_exit_2_with_one_line_and_write_nothing() {
    let tmp = pki();
    let dir = tmp.path();
    openssl_csr(dir, "good", EC, "/O=my-project/CN=device-0001", &[]);
    openssl_csr(
        dir,
        "ca",
        EC,
        "/O=my-project/CN=device-0002",
        &["basicConstraints=critical,CA:TRUE"],
    );
    openssl_csr(
        dir,
        "certsign",
        EC,
        "/O=my-project/CN=device-0003",
        &["keyUsage=digitalSignature,keyCertSign"],
    );
    openssl_csr(dir, "no-cn", EC, "/O=my-project", &[]);

    // Flip the last byte of the signature: the CSR still parses, but does not verify.
    peer_ok(
        &openssl(),
        &[
            "req",
            "-in",
            "good.csr",
            "-outform",
            "DER",
            "-out",
            "tampered.der",
        ],
        dir,
    );
    let mut der = fs::read(dir.join("tampered.der")).unwrap();
    *der.last_mut().unwrap() ^= 0x01;
    fs::write(dir.join("tampered.der"), der).unwrap();
    fs::write(dir.join("garbage.csr"), b"\x30\x82\xff\xffnot a csr").unwrap();

    let cases: &[(&str, &[&str], &str)] = &[
        (
            "tampered.der",
            &[],
            "self-signature (ecdsa-with-SHA256, EC P-256) is invalid",
        ),
        (
            "ca.csr",
            &[],
            "requests a CA certificate (basicConstraints CA:TRUE)",
        ),
        (
            "certsign.csr",
            &[],
            "keyCertSign and cRLSign are for CAs only",
        ),
        (
            "good.csr",
            &["--profile", "golioth", "--project", "other-project"],
            "subject O is 'my-project', but profile golioth needs O=other-project",
        ),
        (
            "no-cn.csr",
            &["--profile", "gyroidos"],
            "profile gyroidos needs CN=",
        ),
        ("garbage.csr", &[], "not a PKCS#10 certificate request"),
    ];
    for (csr, extra, msg) in cases {
        let mut args = vec![
            "csr",
            "sign",
            csr,
            "--role",
            "device_subca",
            "-o",
            "out.cert",
        ];
        args.extend(*extra);
        let err = fails(run_in(dir, &args), 2);
        assert!(
            err.starts_with(&format!("pki-signer: error: {csr}: ")),
            "{err}"
        );
        assert!(err.contains(msg), "{csr}: {err}");
        assert!(!dir.join("out.cert").exists(), "{csr}");
    }
    assert!(!dir.join("pki/issued/index.jsonl").exists());

    // One bad CSR in a batch: nothing of the batch is issued.
    let err = fails(
        run_in(
            dir,
            &[
                "csr",
                "sign",
                "good.csr",
                "ca.csr",
                "--role",
                "device_subca",
                "--out-dir",
                "batch",
            ],
        ),
        2,
    );
    assert!(err.contains("ca.csr: requests a CA certificate"), "{err}");
    assert!(!dir.join("batch").exists());

    let err = fails(
        run_in(
            dir,
            &[
                "csr",
                "sign",
                "good.csr",
                "--role",
                "device_subca",
                "-o",
                "out.cert",
                "--profile",
                "golioth",
            ],
        ),
        2,
    );
    assert!(
        err.contains("--profile golioth needs --project SLUG"),
        "{err}"
    );
}

#[test]
fn a_batch_of_100_csrs_is_signed_in_one_call_and_indexed() {
    let tmp = pki();
    let dir = tmp.path();
    fs::create_dir(dir.join("csrs")).unwrap();
    let mut csrs = vec![];
    for i in 0..100 {
        let name = format!("csrs/dev-{i:03}");
        openssl_csr(dir, &name, EC, &format!("/O=fleet/CN=dev-{i:03}"), &[]);
        csrs.push(format!("{name}.csr"));
    }
    let sign_args = |part: &[String], out_dir: &str| {
        let mut args: Vec<String> = vec!["csr".into(), "sign".into()];
        args.extend(part.iter().cloned());
        for a in [
            "--role",
            "device_subca",
            "--out-dir",
            out_dir,
            "--profile",
            "golioth",
            "--project",
            "fleet",
            "--json",
        ] {
            args.push(a.into());
        }
        args
    };
    let run = |args: &[String]| run_in(dir, &args.iter().map(String::as_str).collect::<Vec<_>>());

    let j: serde_json::Value =
        serde_json::from_str(&stdout(&ok(run(&sign_args(&csrs, "certs"))))).unwrap();
    assert_eq!(j["certificates"].as_array().unwrap().len(), 100);
    let ix = index(dir);
    assert_eq!(ix.len(), 100);
    let mut names: Vec<&str> = ix.iter().map(|e| e["csr"].as_str().unwrap()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 100);
    let certs: Vec<String> = (0..100).map(|i| format!("certs/dev-{i:03}.cert")).collect();
    let v = openssl_verify(dir, &certs.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(v.matches(": OK").count(), 100, "{v}");

    // Two runs at once, as two provisioning stations would: the index must
    // gain every certificate exactly once, with no interleaved lines.
    let (a, b) = (
        sign_args(&csrs[..50], "certs-a"),
        sign_args(&csrs[50..], "certs-b"),
    );
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| run(&a));
        let tb = s.spawn(|| run(&b));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    ok(ra);
    ok(rb);
    let ix = index(dir);
    assert_eq!(ix.len(), 200);
    let mut serials: Vec<&str> = ix.iter().map(|e| e["serial"].as_str().unwrap()).collect();
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), 200);
}

#[test]
fn key_and_cert_files_sign_without_a_pki_dir_and_index_only_on_request() {
    let tmp = pki();
    let dir = tmp.path();
    openssl_csr(dir, "dev", EC, "/CN=dev", &["subjectAltName=DNS:dev.local"]);
    ok(run_in(
        dir,
        &[
            "csr",
            "sign",
            "dev.csr",
            "--key",
            "pki/device_subca.key",
            "--cert",
            "pki/device_subca.cert",
            "-o",
            "dev.cert",
        ],
    ));
    assert!(!dir.join("pki/issued").exists());
    assert!(openssl_verify(dir, &["dev.cert"]).contains(": OK"));
    assert!(x509_text(dir, "dev.cert").contains("DNS:dev.local"));

    ok(run_in(
        dir,
        &[
            "csr",
            "sign",
            "dev.csr",
            "--key",
            "pki/device_subca.key",
            "--cert",
            "pki/device_subca.cert",
            "-o",
            "dev2.cert",
            "--index",
            "issued.jsonl",
        ],
    ));
    let ix = fs::read_to_string(dir.join("issued.jsonl")).unwrap();
    assert_eq!(ix.lines().count(), 1);
    assert!(ix.contains("\"cert\":\"dev2.cert\""), "{ix}");

    // A leaf cannot issue: the issuer must be a CA.
    let err = fails(
        run_in(
            dir,
            &[
                "csr",
                "sign",
                "dev.csr",
                "--role",
                "backend",
                "-o",
                "dev3.cert",
            ],
        ),
        2,
    );
    assert!(err.contains("is not a CA"), "{err}");
}

#[test]
fn validity_is_cut_to_the_issuers_not_after() {
    let tmp = pki();
    let dir = tmp.path();
    openssl_csr(dir, "dev", EC, "/CN=dev", &[]);
    let o = ok(run_in(
        dir,
        &[
            "csr",
            "sign",
            "dev.csr",
            "--role",
            "device_subca",
            "-o",
            "dev.cert",
            "--days",
            "100000",
        ],
    ));
    assert!(
        stderr(&o).contains("goes past the issuer's notAfter"),
        "{}",
        stderr(&o)
    );
    let end = |f: &str| peer_ok(&openssl(), &["x509", "-in", f, "-noout", "-enddate"], dir);
    assert_eq!(end("dev.cert"), end("pki/device_subca.cert"));

    ok(run_in(
        dir,
        &[
            "csr",
            "sign",
            "dev.csr",
            "--role",
            "device_subca",
            "-o",
            "dev30.cert",
            "--days",
            "30",
        ],
    ));
    // -checkend: still valid in 29 days, no longer in 31.
    peer_ok(
        &openssl(),
        &[
            "x509",
            "-in",
            "dev30.cert",
            "-noout",
            "-checkend",
            &(29 * 86400).to_string(),
        ],
        dir,
    );
    let expired = std::process::Command::new(openssl())
        .args([
            "x509",
            "-in",
            "dev30.cert",
            "-noout",
            "-checkend",
            &(31 * 86400).to_string(),
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(!expired.status.success());
}

#[test]
fn show_prints_subject_key_sans_and_signature_check() {
    let tmp = pki();
    let dir = tmp.path();
    openssl_csr(
        dir,
        "dev",
        RSA,
        "/O=my-project/CN=device-0001",
        &[
            "subjectAltName=DNS:device-0001.local",
            "extendedKeyUsage=clientAuth",
        ],
    );
    let out = stdout(&ok(run_in(dir, &["csr", "show", "dev.csr"])));
    assert!(
        out.contains("subject:    O=my-project, CN=device-0001"),
        "{out}"
    );
    assert!(out.contains("key:        RSA 2048"), "{out}");
    assert!(out.contains("SAN:        DNS:device-0001.local"), "{out}");
    assert!(
        out.contains("requests:   extendedKeyUsage: clientAuth [not copied]"),
        "{out}"
    );
    assert!(
        out.contains("signature:  sha256WithRSAEncryption valid"),
        "{out}"
    );

    let j: serde_json::Value = serde_json::from_str(&stdout(&ok(run_in(
        dir,
        &["csr", "show", "dev.csr", "--json"],
    ))))
    .unwrap();
    assert_eq!(j["signature_valid"], true);
    assert_eq!(j["subject_alt_names"][0], "DNS:device-0001.local");

    // An RSA-PSS self-signature verifies too.
    peer_ok(
        &openssl(),
        &[
            "req",
            "-new",
            "-key",
            "dev.key",
            "-subj",
            "/CN=pss",
            "-sha384",
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:48",
            "-out",
            "pss.csr",
        ],
        dir,
    );
    let out = stdout(&ok(run_in(dir, &["csr", "show", "pss.csr"])));
    assert!(out.contains("signature:  RSASSA-PSS valid"), "{out}");

    // A bad signature is shown, and the exit status says so.
    peer_ok(
        &openssl(),
        &[
            "req", "-in", "dev.csr", "-outform", "DER", "-out", "bad.der",
        ],
        dir,
    );
    let mut der = fs::read(dir.join("bad.der")).unwrap();
    *der.last_mut().unwrap() ^= 0x01;
    fs::write(dir.join("bad.der"), der).unwrap();
    let o = run_in(dir, &["csr", "show", "bad.der"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("INVALID: signature does not verify"),
        "{}",
        stdout(&o)
    );
}

// ---------------------------------------------------------------------------
// CSR policy: what a profile lets into a certificate. The odd CSRs are made by
// python3-cryptography (openssl's -subj cannot hold NUL or ESC), the ordinary
// ones by openssl; the certificates are checked with openssl.

/// A python3 that can import `cryptography` (scripts/test.sh installs
/// python3-cryptography), or None (the test skips) unless peers are required.
fn crypto_python() -> Option<std::path::PathBuf> {
    for py in ["python3", "/usr/bin/python3"] {
        let usable = std::process::Command::new(py)
            .args(["-c", "import cryptography.x509"])
            .output()
            .is_ok_and(|o| o.status.success());
        if usable {
            return Some(py.into());
        }
    }
    if std::env::var("PKI_SIGNER_REQUIRE_PEERS").as_deref() == Ok("1") {
        panic!(
            "python3 with the cryptography module is required (apt install python3-cryptography)"
        );
    }
    eprintln!("skipped: no python3 with the cryptography module");
    None
}

/// Writes spec["out"]: an EC P-256 CSR with the subject attributes given as
/// [oid, value] (UTF8String; IA5String for emailAddress) and the SANs given
/// as [dns|ip|email|uri, value], exactly as given.
const PY_CSR: &str = r#"
import ipaddress, json, sys
from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ObjectIdentifier
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
spec = json.loads(sys.argv[1])
key = ec.generate_private_key(ec.SECP256R1())
def attr(oid, value):
    t = _ASN1Type.IA5String if oid == "1.2.840.113549.1.9.1" else _ASN1Type.UTF8String
    return x509.NameAttribute(ObjectIdentifier(oid), value, t)
b = x509.CertificateSigningRequestBuilder().subject_name(
    x509.Name([attr(o, v) for o, v in spec["subject"]]))
make = {"dns": x509.DNSName, "email": x509.RFC822Name, "uri": x509.UniformResourceIdentifier,
        "ip": lambda v: x509.IPAddress(ipaddress.ip_address(v))}
sans = [make[t](v) for t, v in spec.get("san", [])]
if sans:
    b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
csr = b.sign(key, hashes.SHA256())
open(spec["out"], "wb").write(csr.public_bytes(serialization.Encoding.PEM))
"#;

const O: &str = "2.5.4.10";
const OU: &str = "2.5.4.11";
const CN: &str = "2.5.4.3";

/// `NAME.csr` in `dir`, made by python3-cryptography.
fn py_csr(py: &Path, dir: &Path, name: &str, subject: &[(&str, &str)], san: &[(&str, &str)]) {
    let spec = serde_json::json!({
        "out": format!("{name}.csr"),
        "subject": subject.iter().map(|(o, v)| [o, v]).collect::<Vec<_>>(),
        "san": san.iter().map(|(t, v)| [t, v]).collect::<Vec<_>>(),
    });
    peer_ok(py, &["-c", PY_CSR, &spec.to_string()], dir);
}

fn sign_args<'a>(csr: &'a str, out: &'a str, profile: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["csr", "sign", csr, "--role", "device_subca", "-o", out];
    args.extend(profile);
    args
}

/// `openssl x509 -noout -subject -ext subjectAltName` of a certificate file.
fn subject_and_san(dir: &Path, cert: &str) -> String {
    peer_ok(
        &openssl(),
        &[
            "x509",
            "-in",
            cert,
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName",
        ],
        dir,
    )
}

const GOLIOTH: &[&str] = &["--profile", "golioth", "--project", "my-project"];
const GYROIDOS: &[&str] = &["--profile", "gyroidos"];

#[test]
fn subjects_with_controls_or_nothing_visible_are_refused_by_every_profile() {
    let Some(py) = crypto_python() else {
        return;
    };
    let tmp = pki();
    let dir = tmp.path();
    // (CSR, attribute, value, what the refusal says)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "nul",
            "CN",
            "victim-device\0.attacker",
            "subject CN 'victim-device\\x00.attacker' holds control character U+0000 (NUL) at position 14",
        ),
        (
            "newline",
            "CN",
            "dev-1\nissued for 'CN=admin'",
            "subject CN 'dev-1\\x0aissued for 'CN=admin'' holds control character U+000A (line feed)",
        ),
        (
            "esc",
            "CN",
            "dev-1\x1b[2J\x1b[1;1H",
            "subject CN 'dev-1\\x1b[2J\\x1b[1;1H' holds control character U+001B (ESC) at position 6",
        ),
        ("c1", "CN", "dev-1\u{9b}31m", "U+009B (CSI)"),
        (
            "zwsp",
            "CN",
            "\u{200b}",
            "subject CN '\\u{200b}' is empty or only invisible characters",
        ),
        (
            "joiners",
            "CN",
            "\u{200c}\u{200d}\u{2060}\u{feff}",
            "is empty or only invisible characters",
        ),
        ("spaces", "CN", "   ", "is empty or only invisible characters"),
        (
            "bidi",
            "CN",
            "dev-\u{202e}1-ved",
            "holds invisible or reordering character U+202E (bidi control)",
        ),
        (
            "hidden",
            "CN",
            "dev\u{200b}-1",
            "holds invisible or reordering character U+200B (zero width space)",
        ),
        ("trailing", "CN", "dev-1 ", "has leading or trailing whitespace"),
        (
            "o-esc",
            "O",
            "my-project\x1b]0;pwned\x07",
            "subject O 'my-project\\x1b]0;pwned\\x07' holds control character U+001B (ESC)",
        ),
    ];
    for (name, field, value, _) in cases {
        let subject: Vec<(&str, &str)> = if *field == "O" {
            vec![(O, value), (CN, "dev-1")]
        } else {
            vec![(O, "my-project"), (CN, value)]
        };
        py_csr(&py, dir, name, &subject, &[]);
    }
    for profile in [&[][..], GOLIOTH, GYROIDOS] {
        for (name, field, _, msg) in cases {
            let csr = format!("{name}.csr");
            let err = fails(run_in(dir, &sign_args(&csr, "out.cert", profile)), 2);
            assert!(
                err.starts_with(&format!("pki-signer: error: {csr}: subject {field} '")),
                "{profile:?} {err}"
            );
            assert!(err.contains(msg), "{profile:?} {name}: {err}");
            assert!(
                !err.contains(['\0', '\x1b', '\u{9b}', '\u{202e}']),
                "{err:?}"
            );
            assert!(!dir.join("out.cert").exists(), "{name}");
            assert!(!dir.join("pki/issued/index.jsonl").exists(), "{name}");
        }
    }
}

#[test]
fn only_the_profiles_subject_attributes_are_copied() {
    let Some(py) = crypto_python() else {
        return;
    };
    let tmp = pki();
    let dir = tmp.path();
    openssl_csr(
        dir,
        "extra",
        EC,
        "/C=DE/ST=Bayern/O=my-project/OU=Evil Unit/CN=device-0001/emailAddress=admin@example.com",
        &[],
    );
    // What is dropped is not checked, but its value is escaped in the warning.
    py_csr(
        &py,
        dir,
        "ou-esc",
        &[(O, "my-project"), (OU, "x\x1b[2J"), (CN, "device-0002")],
        &[],
    );
    let cases: &[(&str, &[&str], &str, &str, &str)] = &[
        (
            "extra.csr",
            GOLIOTH,
            "golioth.cert",
            "subject=O = my-project, CN = device-0001",
            "subject C=DE, ST=Bayern, OU=Evil Unit, emailAddress=admin@example.com not copied",
        ),
        (
            "extra.csr",
            &[],
            "default.cert",
            "subject=O = my-project, CN = device-0001",
            "OU=Evil Unit",
        ),
        (
            // GyroidOS's cml writes C, O, OU and CN into its device CSRs.
            "extra.csr",
            GYROIDOS,
            "gyroidos.cert",
            "subject=C = DE, O = my-project, OU = Evil Unit, CN = device-0001",
            "subject ST=Bayern, emailAddress=admin@example.com not copied",
        ),
        (
            "ou-esc.csr",
            GOLIOTH,
            "ou-esc.cert",
            "subject=O = my-project, CN = device-0002",
            "subject OU=x\\x1b[2J not copied",
        ),
    ];
    for (csr, profile, out, subject, warning) in cases {
        let o = ok(run_in(dir, &sign_args(csr, out, profile)));
        let err = stderr(&o);
        assert!(err.contains(warning), "{out}: {err}");
        assert!(!err.contains('\x1b'), "{err:?}");
        let shown = subject_and_san(dir, out);
        assert_eq!(shown.lines().next(), Some(*subject), "{shown}");
        assert!(!shown.contains("Subject Alternative Name"), "{shown}");
        assert!(openssl_verify(dir, &[out]).contains(": OK"));
    }
    let ix = index(dir);
    assert_eq!(ix.len(), cases.len());
    assert_eq!(ix[0]["subject"], "O=my-project, CN=device-0001");
}

#[test]
fn only_the_san_types_a_profile_lists_are_copied() {
    let Some(py) = crypto_python() else {
        return;
    };
    let tmp = pki();
    let dir = tmp.path();
    let uuid = "5c3b1c64-94b4-4c0e-b6f2-1b6f2d0e8a11";
    let urn = format!("urn:uuid:{uuid}");
    let subject = [(O, "my-project"), (CN, "dev-1")];
    let sans: &[(&str, &str, &str)] = &[
        ("wild", "dns", "*.example.com"),
        ("ip", "ip", "10.0.0.7"),
        ("email", "email", "admin@example.com"),
        ("dns", "dns", "dev-1.local"),
        ("dns-nul", "dns", "dev-1.local\0.evil.example"),
        ("uuid", "uri", &urn),
        ("bad-uuid", "uri", "urn:uuid:not-a-uuid"),
        ("https", "uri", "https://evil.example/"),
    ];
    for (name, t, v) in sans {
        py_csr(&py, dir, name, &subject, &[(t, v)]);
    }
    // A CSR as GyroidOS's cml makes it (ssl_mkreq): C, O, OU, CN and URI:UUID:<uuid>.
    openssl_csr(
        dir,
        "cml",
        RSA,
        "/C=DE/O=Fraunhofer/OU=AISEC/CN=device-0001",
        &[&format!("subjectAltName=URI:UUID:{uuid}")],
    );
    let lab = r#"{"name": "lab", "copy_subject": ["CN"], "allowed_san": ["ip", "dns-wildcard", "email"]}"#;
    fs::write(dir.join("lab.json"), lab).unwrap();
    let lab_profile: &[&str] = &["--profile", "lab.json"];

    let refused: &[(&str, &[&str], &str)] = &[
        (
            "wild",
            &[],
            "subjectAltName DNS:*.example.com: wildcard DNS names are not allowed by profile default (it allows: dns)",
        ),
        (
            "ip",
            &[],
            "subjectAltName IP Address:10.0.0.7: IP addresses are not allowed by profile default",
        ),
        (
            "email",
            &[],
            "subjectAltName email:admin@example.com: e-mail addresses are not allowed by profile default",
        ),
        (
            "dns-nul",
            &[],
            "subjectAltName DNS:dev-1.local\\x00.evil.example: 'local\\x00' is not a host name label",
        ),
        (
            "dns",
            GOLIOTH,
            "subjectAltName DNS:dev-1.local: DNS names are not allowed by profile golioth (it allows: none)",
        ),
        ("wild", GOLIOTH, "not allowed by profile golioth"),
        ("ip", GOLIOTH, "not allowed by profile golioth"),
        ("email", GOLIOTH, "not allowed by profile golioth"),
        ("uuid", GOLIOTH, "URIs of this form are not allowed by profile golioth"),
        (
            "dns",
            GYROIDOS,
            "DNS names are not allowed by profile gyroidos (it allows: uri:UUID:, uri:urn:uuid:)",
        ),
        ("ip", GYROIDOS, "IP addresses are not allowed by profile gyroidos"),
        (
            "bad-uuid",
            GYROIDOS,
            "subjectAltName URI:urn:uuid:not-a-uuid: no UUID (8-4-4-4-12 hex digits) after the prefix",
        ),
        (
            "https",
            GYROIDOS,
            "subjectAltName URI:https://evil.example/: URIs of this form are not allowed by profile gyroidos",
        ),
        (
            "uuid",
            lab_profile,
            "URIs of this form are not allowed by profile lab (it allows: ip, dns-wildcard, email)",
        ),
    ];
    for (name, profile, msg) in refused {
        let csr = format!("{name}.csr");
        let err = fails(run_in(dir, &sign_args(&csr, "out.cert", profile)), 2);
        assert!(
            err.starts_with(&format!("pki-signer: error: {csr}: ")),
            "{err}"
        );
        assert!(err.contains(msg), "{name} {profile:?}: {err}");
        assert!(!err.contains('\0'), "{err:?}");
        assert!(!dir.join("out.cert").exists());
    }
    assert!(!dir.join("pki/issued/index.jsonl").exists());

    let allowed: &[(&str, &[&str], &str, String)] = &[
        (
            "dns",
            &[],
            "subject=O = my-project, CN = dev-1",
            "DNS:dev-1.local".into(),
        ),
        (
            "uuid",
            GYROIDOS,
            "subject=O = my-project, CN = dev-1",
            format!("URI:{urn}"),
        ),
        (
            "cml",
            GYROIDOS,
            "subject=C = DE, O = Fraunhofer, OU = AISEC, CN = device-0001",
            format!("URI:UUID:{uuid}"),
        ),
        (
            "wild",
            lab_profile,
            "subject=CN = dev-1",
            "DNS:*.example.com".into(),
        ),
        (
            "ip",
            lab_profile,
            "subject=CN = dev-1",
            "IP Address:10.0.0.7".into(),
        ),
        (
            "email",
            lab_profile,
            "subject=CN = dev-1",
            "email:admin@example.com".into(),
        ),
    ];
    for (name, profile, subject, san) in allowed {
        let out = format!("{name}-{}.cert", profile.len());
        ok(run_in(
            dir,
            &sign_args(&format!("{name}.csr"), &out, profile),
        ));
        let shown = subject_and_san(dir, &out);
        let lines: Vec<&str> = shown.lines().map(str::trim).collect();
        assert_eq!(
            lines,
            [*subject, "X509v3 Subject Alternative Name:", san.as_str()],
            "{shown}"
        );
        assert!(openssl_verify(dir, &[&out]).contains(": OK"));
    }

    // Profiles are checked before any CSR is read.
    let bad_profiles: &[(&str, &str)] = &[
        (
            r#"{"copy_subjects": ["CN"]}"#,
            "unknown field `copy_subjects`",
        ),
        (
            r#"{"copy_subject": ["CN"], "require_subject": ["O"]}"#,
            "require_subject names O, which copy_subject does not copy",
        ),
        (
            r#"{"copy_subject": ["CN", "UID"]}"#,
            "unknown subject attribute 'UID'",
        ),
        (
            r#"{"allowed_san": ["ftp"]}"#,
            "allowed_san 'ftp': expected dns",
        ),
        (
            r#"{"subject_values": {"O": "acme\u001b[2J"}}"#,
            "subject_values O 'acme\\x1b[2J' holds control character U+001B (ESC)",
        ),
    ];
    for (json, msg) in bad_profiles {
        fs::write(dir.join("bad.json"), json).unwrap();
        let err = fails(
            run_in(
                dir,
                &sign_args("dns.csr", "out.cert", &["--profile", "bad.json"]),
            ),
            2,
        );
        assert!(
            err.starts_with("pki-signer: error: bad.json: bad CSR profile: "),
            "{err}"
        );
        assert!(err.contains(msg), "{json}: {err}");
    }
}

#[test]
fn the_index_is_never_written_through_a_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(run_in(
        dir,
        &[
            "pki",
            "init",
            "--dir",
            "release-pki",
            "--key-type",
            "ec:prime256v1",
        ],
    ));
    // GyroidOS links release PKIs into the build: ./pki -> release-pki.
    std::os::unix::fs::symlink("release-pki", dir.join("pki")).unwrap();
    openssl_csr(dir, "dev", EC, "/O=my-project/CN=dev-1", &[]);

    let err = fails(run_in(dir, &sign_args("dev.csr", "dev.cert", &[])), 2);
    assert!(
        err.starts_with("pki-signer: error: pki: PKI directory is a symlink"),
        "{err}"
    );
    assert!(err.contains("give --index FILE"), "{err}");
    assert!(!dir.join("dev.cert").exists());
    assert!(!dir.join("release-pki/issued").exists());

    // --index records elsewhere; the certificate is issued.
    let mut args = sign_args("dev.csr", "dev.cert", &[]);
    args.extend(["--index", "issued.jsonl"]);
    ok(run_in(dir, &args));
    assert!(openssl_verify(dir, &["dev.cert"]).contains(": OK"));
    assert_eq!(
        fs::read_to_string(dir.join("issued.jsonl"))
            .unwrap()
            .lines()
            .count(),
        1
    );
    assert!(!dir.join("release-pki/issued").exists());

    // A symlinked index file, or a symlinked issued/ in a real PKI directory.
    fs::write(dir.join("victim"), "keep\n").unwrap();
    std::os::unix::fs::symlink("victim", dir.join("link.jsonl")).unwrap();
    let mut args = sign_args("dev.csr", "dev2.cert", &[]);
    args.extend(["--index", "link.jsonl"]);
    let err = fails(run_in(dir, &args), 2);
    assert!(
        err.starts_with("pki-signer: error: link.jsonl: is a symlink"),
        "{err}"
    );
    assert_eq!(fs::read_to_string(dir.join("victim")).unwrap(), "keep\n");
    assert!(!dir.join("dev2.cert").exists());

    fs::create_dir(dir.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink("../elsewhere", dir.join("release-pki/issued")).unwrap();
    let mut args = sign_args("dev.csr", "dev3.cert", &[]);
    args.extend(["--dir", "release-pki"]);
    let err = fails(run_in(dir, &args), 2);
    assert!(
        err.starts_with("pki-signer: error: release-pki/issued: is a symlink"),
        "{err}"
    );
    assert!(!dir.join("dev3.cert").exists());
    assert_eq!(fs::read_dir(dir.join("elsewhere")).unwrap().count(), 0);
}

#[test]
fn show_escapes_control_characters_for_the_terminal() {
    let Some(py) = crypto_python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    py_csr(
        &py,
        dir,
        "esc",
        &[
            (O, "my-project\u{202e}"),
            (CN, "dev-1\x1b[2J\x1b]0;owned\x07\nsignature: valid"),
        ],
        &[("uri", "urn:x\x1b[31m")],
    );
    let out = stdout(&ok(run_in(dir, &["csr", "show", "esc.csr"])));
    assert!(
        out.contains(
            "subject:    O=my-project\\u{202e}, CN=dev-1\\x1b[2J\\x1b]0;owned\\x07\\x0asignature: valid\n"
        ),
        "{out}"
    );
    assert!(out.contains("SAN:        URI:urn:x\\x1b[31m\n"), "{out}");
    assert!(!out.contains(['\x1b', '\x07', '\u{202e}']), "{out:?}");
    // JSON stays JSON: the value is exact, escaped by JSON's rules.
    let j: serde_json::Value = serde_json::from_str(&stdout(&ok(run_in(
        dir,
        &["csr", "show", "esc.csr", "--json"],
    ))))
    .unwrap();
    assert_eq!(
        j["subject"],
        "O=my-project\u{202e}, CN=dev-1\x1b[2J\x1b]0;owned\x07\nsignature: valid"
    );
}

/// The same escaping everywhere a subject reaches the terminal: `pki show` of
/// a directory holding a certificate made by python3-cryptography.
#[test]
fn pki_show_escapes_subjects_too() {
    let Some(py) = crypto_python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let script = r#"
import datetime
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
k = ec.generate_private_key(ec.SECP256R1())
n = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil\x1b[2J\nroot\u202e")])
now = datetime.datetime.now(datetime.timezone.utc)
c = (x509.CertificateBuilder().subject_name(n).issuer_name(n).public_key(k.public_key())
     .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
     .sign(k, hashes.SHA256()))
open("evil.cert", "wb").write(c.public_bytes(serialization.Encoding.PEM))
"#;
    peer_ok(&py, &["-c", script], dir);
    let out = stdout(&ok(run_in(dir, &["pki", "show", "--dir", "."])));
    assert!(
        out.contains("  subject:     CN=evil\\x1b[2J\\x0aroot\\u{202e}\n"),
        "{out}"
    );
    assert!(
        out.contains("  issuer:      CN=evil\\x1b[2J\\x0aroot\\u{202e}\n"),
        "{out}"
    );
    assert!(!out.contains(['\x1b', '\u{202e}']), "{out:?}");
}
