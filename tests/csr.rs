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
    openssl_csr(
        dir,
        "device-0001",
        EC,
        "/O=my-project/CN=device-0001",
        &["subjectAltName=DNS:device-0001.local"],
    );
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
    assert!(ec.contains("DNS:device-0001.local"), "{ec}");
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
    openssl_csr(
        dir,
        "dev",
        EC,
        "/CN=dev",
        &["subjectAltName=DNS:dev.local,IP:10.0.0.7"],
    );
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
    assert!(x509_text(dir, "dev.cert").contains("DNS:dev.local, IP Address:10.0.0.7"));

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
