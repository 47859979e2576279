//! `pki export --layout kairos`: the file names Kairos's tools expect
//! (AuroraBoot genkey: PK/KEK/db .key .pem .der .esl .auth,
//! tpm2-pcr-private.pem), checked by efitools (sig-list-to-certs reads the
//! lists; sign-efi-sig-list, given the exported keys and certificates,
//! writes the exported .auth files byte for byte) and openssl (each key
//! belongs to its certificate, each .der is its .pem).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

/// SOURCE_DATE_EPOCH of the PKI, as sign-efi-sig-list -t wants it.
const EPOCH: &str = "1700000000";
const EPOCH_TIME: &str = "2023-11-14 22:13:20";

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// openssl's PEM of what `args` (an openssl command) prints, for comparing keys.
fn openssl_out(d: &Path, args: &[&str]) -> String {
    peer_ok(&openssl(), args, d)
}

#[test]
fn kairos_layout_names_and_keys_are_what_kairos_and_efitools_expect() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(run_env(
        d,
        &["pki", "init", "--uefi", "--key-type", "ec:prime256v1"],
        &[("SOURCE_DATE_EPOCH", EPOCH)],
    ));
    let out = ok(run_env(
        d,
        &["pki", "export", "--layout", "kairos", "keys", "--json"],
        &[],
    ));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["token_keys"], serde_json::json!([]));
    let keys = d.join("keys");
    let names: BTreeSet<String> = fs::read_dir(&keys)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut want: BTreeSet<String> = ["tpm2-pcr-private.pem", "tpm2-pcr-public.pem"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for n in ["PK", "KEK", "db"] {
        for ext in ["key", "pem", "der", "esl", "auth"] {
            want.insert(format!("{n}.{ext}"));
        }
    }
    assert_eq!(names, want);
    assert_eq!(mode(&keys), 0o700);
    for n in ["PK.key", "KEK.key", "db.key", "tpm2-pcr-private.pem"] {
        assert_eq!(mode(&keys.join(n)), 0o600, "{n}");
    }
    assert_eq!(mode(&keys.join("db.pem")), 0o644);

    // openssl: each key is its certificate's, each .der its .pem, the PCR
    // public key the private key's.
    for n in ["PK", "KEK", "db"] {
        let (key, pem, der) = (format!("{n}.key"), format!("{n}.pem"), format!("{n}.der"));
        assert_eq!(
            openssl_out(&keys, &["pkey", "-in", &key, "-pubout"]),
            openssl_out(&keys, &["x509", "-in", &pem, "-noout", "-pubkey"]),
            "{key} and {pem}"
        );
        assert_eq!(
            openssl_out(&keys, &["x509", "-inform", "DER", "-in", &der]),
            openssl_out(&keys, &["x509", "-in", &pem]),
            "{der} and {pem}"
        );
    }
    assert_eq!(
        openssl_out(&keys, &["pkey", "-in", "tpm2-pcr-private.pem", "-pubout"]),
        fs::read_to_string(keys.join("tpm2-pcr-public.pem")).unwrap()
    );
    // db is the PKI's DB role (RSA, as firmware wants), not another key.
    assert_eq!(
        fs::read(keys.join("db.key")).unwrap(),
        fs::read(d.join("pki/DB.key")).unwrap()
    );

    // efitools: the lists hold the certificates; db's also ssig_subca's, so
    // what the layer signs with boots too.
    if let Some(sl2c) = peer("sig-list-to-certs") {
        for n in ["PK", "KEK", "db"] {
            peer_ok(&sl2c, &[&format!("{n}.esl"), &format!("x-{n}")], &keys);
            assert_eq!(
                fs::read(keys.join(format!("x-{n}-0.der"))).unwrap(),
                fs::read(keys.join(format!("{n}.der"))).unwrap(),
                "{n}.esl"
            );
        }
        assert_eq!(
            openssl_out(&keys, &["x509", "-inform", "DER", "-in", "x-db-1.der"]),
            openssl_out(d, &["x509", "-in", "pki/ssig_subca.cert"]),
            "db.esl's second certificate is ssig_subca's"
        );
        for n in ["PK", "KEK", "db"] {
            fs::remove_file(keys.join(format!("x-{n}-0.der"))).unwrap();
        }
        fs::remove_file(keys.join("x-db-1.der")).unwrap();
    }
    // sign-efi-sig-list with the exported key and certificate of the signer
    // (PK signs PK and KEK, KEK signs db) writes the same .auth.
    if let Some(sesl) = peer("sign-efi-sig-list") {
        for (n, var, signer) in [
            ("PK", "PK", "PK"),
            ("KEK", "KEK", "PK"),
            ("db", "db", "KEK"),
        ] {
            let (key, cert) = (format!("{signer}.key"), format!("{signer}.pem"));
            let (esl, auth) = (format!("{n}.esl"), format!("{n}.efitools"));
            peer_ok(
                &sesl,
                &["-t", EPOCH_TIME, "-k", &key, "-c", &cert, var, &esl, &auth],
                &keys,
            );
            assert_eq!(
                fs::read(keys.join(&auth)).unwrap(),
                fs::read(keys.join(format!("{n}.auth"))).unwrap(),
                "{n}.auth"
            );
        }
    }
}

#[test]
fn export_refuses_what_it_cannot_do_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // No UEFI keys.
    ok(run_in(
        d,
        &[
            "pki",
            "init",
            "--dir",
            "plain",
            "--key-type",
            "ec:prime256v1",
        ],
    ));
    let err = fails(
        run_in(
            d,
            &["pki", "export", "--dir", "plain", "--layout", "kairos", "k"],
        ),
        2,
    );
    assert!(err.contains("pki init --uefi"), "{err}");
    assert!(!d.join("k").exists());

    ok(run_in(
        d,
        &["pki", "init", "--uefi", "--key-type", "ec:prime256v1"],
    ));
    // A directory with files in it is left alone.
    fs::create_dir(d.join("full")).unwrap();
    fs::write(d.join("full/db.key"), "mine").unwrap();
    let err = fails(
        run_in(d, &["pki", "export", "--layout", "kairos", "full"]),
        2,
    );
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(fs::read_to_string(d.join("full/db.key")).unwrap(), "mine");
    // An empty one is filled.
    fs::create_dir(d.join("empty")).unwrap();
    ok(run_in(d, &["pki", "export", "--layout", "kairos", "empty"]));
    assert!(d.join("empty/db.key").is_file());
    // A broken PKI is refused, not exported: a certificate that is not its
    // key's, a certificate that does not parse.
    for (file, from, what) in [
        ("DB.crt", Some("KEK.crt"), "is not that of DB.key"),
        ("KEK.cer", None, "KEK.cer"),
    ] {
        let bad = d.join("pki-bad");
        let _ = fs::remove_dir_all(&bad);
        fs::create_dir(&bad).unwrap();
        for e in fs::read_dir(d.join("pki")).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                fs::copy(e.path(), bad.join(e.file_name())).unwrap();
            }
        }
        match from {
            Some(f) => fs::copy(bad.join(f), bad.join(file)).map(|_| ()),
            None => fs::write(bad.join(file), b"\x30\x03\x02\x01"),
        }
        .unwrap();
        let err = fails(
            run_in(
                d,
                &[
                    "pki", "export", "--dir", "pki-bad", "--layout", "kairos", "k2",
                ],
            ),
            2,
        );
        assert!(err.contains(what), "{file}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!d.join("k2").exists());
    }
    fs::remove_dir_all(d.join("pki-bad")).unwrap();
    // Release mode: a development PKI's keys would sign releases.
    let err = fails(
        run_in(
            d,
            &["--release", "pki", "export", "--layout", "kairos", "rel"],
        ),
        2,
    );
    assert!(err.contains("release mode refuses"), "{err}");
    assert!(!d.join("rel").exists());
    // No temp directory is left behind.
    let left: Vec<String> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
