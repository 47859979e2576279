//! Key files as other tools write them: openssl's PKCS#8 (plain and
//! encrypted), RSA-PSS typed keys (GyroidOS "secondary" keys), PKCS#1 and SEC1 PEM.

mod common;

use std::fs;
use std::path::Path;

use common::*;

/// Make `NAME.key` with `genkey` args and a self-signed `NAME.cert` for it.
fn make(dir: &Path, name: &str, genkey: &[&str]) {
    let ossl = openssl();
    let key = format!("{name}.key");
    let mut args = genkey.to_vec();
    if !args.contains(&"-out") {
        args.extend(["-out", &key]);
    }
    peer_ok(&ossl, &args, dir);
    let key_for_req = if fs::read_to_string(dir.join(&key))
        .unwrap()
        .contains("ENCRYPTED")
    {
        vec!["-passin", "env:PKI_SIGNER_KEY_PASS"]
    } else {
        vec![]
    };
    let cert = format!("{name}.cert");
    let subj = format!("/CN={name}");
    let mut req = vec![
        "req", "-x509", "-key", &key, "-subj", &subj, "-days", "365", "-out", &cert,
    ];
    req.extend(key_for_req);
    peer_ok(&ossl, &req, dir);
}

#[test]
fn keys_in_every_common_format_match_their_openssl_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // A directory of keys is private, or `pki check` fails.
    fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::env::set_var("PKI_SIGNER_KEY_PASS", "test1234");
    make(
        d,
        "pkcs8_rsa",
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
    );
    make(
        d,
        "rsa_pss",
        &[
            "genpkey",
            "-algorithm",
            "RSA-PSS",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
    );
    make(
        d,
        "pkcs8_ec384",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:secp384r1",
        ],
    );
    make(
        d,
        "encrypted",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-aes-256-cbc",
            "-pass",
            "env:PKI_SIGNER_KEY_PASS",
        ],
    );
    make(
        d,
        "pkcs1",
        &["genrsa", "-traditional", "-out", "pkcs1.key", "2048"],
    );
    make(
        d,
        "sec1",
        &["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
    );
    assert!(fs::read_to_string(d.join("pkcs1.key"))
        .unwrap()
        .contains("BEGIN RSA PRIVATE KEY"));
    assert!(fs::read_to_string(d.join("sec1.key"))
        .unwrap()
        .contains("BEGIN EC PRIVATE KEY"));
    assert!(fs::read_to_string(d.join("encrypted.key"))
        .unwrap()
        .contains("BEGIN ENCRYPTED PRIVATE KEY"));

    let pass = d.join("pass.txt");
    fs::write(&pass, "test1234\n").unwrap();
    let out = stdout(&ok(run_in(
        d,
        &[
            "pki",
            "check",
            "--dir",
            ".",
            "--key-pass-file",
            pass.to_str().unwrap(),
        ],
    )));
    assert!(out.contains("OK (6 items)"), "{out}");

    fs::write(&pass, "wrong\n").unwrap();
    let o = run_in(
        d,
        &[
            "pki",
            "check",
            "--dir",
            ".",
            "--key-pass-file",
            pass.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("encrypted.key: wrong password for encrypted key"),
        "{}",
        stdout(&o)
    );
    assert!(
        !stdout(&o).contains("test1234") && !stderr(&o).contains("wrong\n"),
        "no password echoed"
    );

    let o = run_in(d, &["pki", "check", "--dir", "."]);
    assert!(
        stdout(&o).contains("key is encrypted: set PKI_SIGNER_KEY_PASS or pass --key-pass-file"),
        "{}",
        stdout(&o)
    );
}
