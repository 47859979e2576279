//! `pki init --hsm`: a PKI whose keys are generated inside a SoftHSM2 token
//! made by the test, checked with openssl, pkcs11-tool, sbverify and efitools;
//! then `--role` signing with those token keys.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::softhsm::{self, MODULE};
use common::*;

const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// Distinctive, so a leak into any output would be found by a substring search.
const PIN: &str = "31415926";
const SO_PIN: &str = "27182818";
/// SOURCE_DATE_EPOCH for the .auth files, as sign-efi-sig-list -t wants it.
const EPOCH: &str = "1700000000";
const EPOCH_TIME: &str = "2023-11-14 22:13:20";

/// (role, root) of every non-UEFI role of the default PKI.
const CHAINS: &[(&str, &str)] = &[
    ("ssig_rootca", "ssig_rootca"),
    ("ssig_subca", "ssig_rootca"),
    ("ssig_subca_cml", "ssig_rootca"),
    ("ssig", "ssig_rootca"),
    ("ssig_cml", "ssig_rootca"),
    ("gen_rootca", "gen_rootca"),
    ("device_subca", "gen_rootca"),
    ("user_subca", "gen_rootca"),
    ("backend_subca", "gen_rootca"),
    ("backend", "gen_rootca"),
    ("ocsp_server", "gen_rootca"),
];
const UEFI_ROLES: &[&str] = &["PK", "KEK", "DB"];

/// A SoftHSM2 token labelled "prod" in its own directory: every test gets its
/// own, so tests run in parallel without seeing each other's keys.
struct Token {
    dir: PathBuf,
    conf: PathBuf,
    _tmp: tempfile::TempDir,
}

fn token() -> Option<Token> {
    let tools = softhsm::tools()?;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let conf = softhsm::init_token(&tools, &dir, "prod", SO_PIN, PIN);
    let t = Token {
        dir,
        conf,
        _tmp: tmp,
    };
    fs::write(t.dir.join("pin.txt"), format!("{PIN}\n")).unwrap();
    Some(t)
}

/// A peer tool run against the test's token; panics with its output if it fails.
#[track_caller]
fn tool(t: &Token, prog: &Path, args: &[&str]) -> String {
    let o = Command::new(prog)
        .args(args)
        .current_dir(&t.dir)
        .env("SOFTHSM2_CONF", &t.conf)
        .output()
        .expect("run peer");
    assert!(
        o.status.success(),
        "{} {args:?} failed: {}{}",
        prog.display(),
        stdout(&o),
        stderr(&o)
    );
    stdout(&o) + &stderr(&o)
}

/// pki-signer in the token's directory with exactly the PKI_SIGNER_* variables given.
fn run(t: &Token, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut all = vec![("SOFTHSM2_CONF", t.conf.to_str().unwrap())];
    all.extend_from_slice(env);
    run_env(&t.dir, args, &all)
}

/// The release engineer's set-up: module and PIN in the environment.
const ENV: &[(&str, &str)] = &[
    ("PKI_SIGNER_PKCS11_MODULE", MODULE),
    ("PKI_SIGNER_PKCS11_PIN", PIN),
];

/// `pkcs11-tool --list-objects --login`, as (kind, label, access) per object.
fn token_objects(t: &Token) -> Vec<(String, String, String)> {
    let out = tool(
        t,
        &peer("pkcs11-tool").unwrap(),
        &[
            "--module",
            MODULE,
            "--token-label",
            "prod",
            "--login",
            "--pin",
            PIN,
            "--list-objects",
        ],
    );
    let mut objs: Vec<(String, String, String)> = vec![];
    for line in out.lines() {
        if line.contains(" Object;") {
            let kind = line.split(" Object;").next().unwrap().to_string();
            objs.push((kind, String::new(), String::new()));
        } else if let Some(o) = objs.last_mut() {
            let l = line.trim();
            if let Some(v) = l.strip_prefix("label:") {
                o.1 = v.trim().to_string();
            } else if let Some(v) = l.strip_prefix("Access:") {
                o.2 = v.trim().to_string();
            }
        }
    }
    objs
}

fn verify_chains(dir: &Path) {
    let ossl = openssl();
    for (role, root) in CHAINS {
        let out = peer_ok(
            &ossl,
            &[
                "verify",
                "-CAfile",
                &format!("{root}.cert"),
                "-untrusted",
                &format!("{role}.cert"),
                &format!("{role}.cert"),
            ],
            dir,
        );
        assert!(out.contains(": OK"), "{role}: {out}");
    }
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(dir.join("pki.json")).unwrap()).unwrap()
}

/// Every role's key is a token URI without PIN, and no private key is in DIR.
fn assert_keys_only_in_token(dir: &Path, roles: &[&str]) {
    let m = manifest(dir);
    assert_eq!(m["development"], false, "a token PKI is a production PKI");
    for r in m["roles"].as_array().unwrap() {
        let role = r["role"].as_str().unwrap();
        let uri = r["key_uri"]
            .as_str()
            .unwrap_or_else(|| panic!("{role}: {r}"));
        assert!(
            uri.starts_with(&format!("pkcs11:token=prod;object={role};id=%")),
            "{uri}"
        );
        assert!(r.get("key").is_none(), "{role} has a key file: {r}");
    }
    let text = fs::read_to_string(dir.join("pki.json")).unwrap();
    assert!(!text.contains(PIN) && !text.contains("pin-"), "{text}");
    for e in fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".key") && name != "tpm2-pcr-private.pem",
            "private key file {name} in {}",
            dir.display()
        );
    }
    for role in roles {
        assert!(
            dir.join(format!("{role}.cert")).is_file() || dir.join(format!("{role}.crt")).is_file(),
            "{role}"
        );
    }
}

/// Every role has exactly one private key on the token, made there and never
/// extractable, plus its public key and certificate under the same label.
fn assert_token_holds(t: &Token, labels: &[&str]) {
    let objs = token_objects(t);
    for label in labels {
        let of = |kind: &str| {
            objs.iter()
                .filter(|o| o.0 == kind && o.1 == *label)
                .collect::<Vec<_>>()
        };
        let private = of("Private Key");
        assert_eq!(private.len(), 1, "{label}: {objs:?}");
        assert_eq!(
            private[0].2, "sensitive, always sensitive, never extractable, local",
            "{label}"
        );
        assert_eq!(of("Public Key").len(), 1, "{label}: {objs:?}");
    }
}

/// .auth files of a token PKI: the PKCS#7 signs the payload sign-efi-sig-list
/// computes, and openssl accepts the signature with the signer's certificate.
fn assert_auth_files_verify(dir: &Path) {
    let Some(sesl) = peer("sign-efi-sig-list") else {
        return;
    };
    for (file, var, esl, signer) in [
        ("PK.auth", "PK", "PK.esl", "PK"),
        ("KEK.auth", "KEK", "KEK.esl", "PK"),
        ("DB.auth", "db", "DB.esl", "KEK"),
    ] {
        let auth = fs::read(dir.join(file)).unwrap();
        let len = u32::from_le_bytes(auth[16..20].try_into().unwrap()) as usize;
        let (signed_data, data) = (&auth[40..16 + len], &auth[16 + len..]);
        assert_eq!(data, fs::read(dir.join(esl)).unwrap(), "{file}");
        peer_ok(
            &sesl,
            &["-o", "-t", EPOCH_TIME, var, esl, "payload.bin"],
            dir,
        );
        fs::write(dir.join("p7.der"), content_info(signed_data)).unwrap();
        peer_ok(
            &openssl(),
            &[
                "cms",
                "-verify",
                "-binary",
                "-inform",
                "DER",
                "-purpose",
                "any",
                "-in",
                "p7.der",
                "-content",
                "payload.bin",
                "-CAfile",
                &format!("{signer}.crt"),
                "-out",
                "/dev/null",
            ],
            dir,
        );
        fs::remove_file(dir.join("p7.der")).unwrap();
        fs::remove_file(dir.join("payload.bin")).unwrap();
    }
}

/// EFI variables carry a bare SignedData; openssl reads a ContentInfo.
fn content_info(signed_data: &[u8]) -> Vec<u8> {
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
    const SIGNED_DATA: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02,
    ];
    der(0x30, &[SIGNED_DATA, &der(0xa0, signed_data)].concat())
}

fn leftovers(t: &Token, name: &str) -> Vec<String> {
    fs::read_dir(&t.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n == name || n.starts_with(&format!(".{name}.tmp")))
        .collect()
}

#[test]
fn rsa_pki_in_a_token_verifies_and_signs_with_role_keys() {
    let Some(t) = token() else { return };
    let mut env = ENV.to_vec();
    env.push(("SOURCE_DATE_EPOCH", EPOCH));
    let out = stdout(&ok(run(
        &t,
        &env,
        &[
            "pki",
            "init",
            "--dir",
            "prod-pki",
            "--hsm",
            "pkcs11:token=prod",
            "--key-type",
            "rsa:2048",
            "--uefi",
        ],
    )));
    assert!(
        out.starts_with("created PKI in prod-pki (14 roles"),
        "{out}"
    );
    assert!(!out.contains(PIN), "{out}");
    let dir = t.dir.join("prod-pki");

    verify_chains(&dir);
    let mut roles: Vec<&str> = CHAINS.iter().map(|c| c.0).collect();
    roles.extend(UEFI_ROLES);
    assert_keys_only_in_token(&dir, &roles);
    let mut labels = roles.clone();
    labels.push("tpm2-pcr");
    assert_token_holds(&t, &labels);
    assert_auth_files_verify(&dir);
    // The TPM PCR-policy key is on the token too; pki.json names it.
    let m = manifest(&dir);
    let tpm = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "tpm-pcr-private-key")
        .unwrap();
    assert!(
        tpm["key_uri"]
            .as_str()
            .unwrap()
            .starts_with("pkcs11:token=prod;object=tpm2-pcr;id=%"),
        "{tpm}"
    );
    assert!(dir.join("tpm2-pcr-public.pem").is_file());

    // The certificate on the token is the one in DIR.
    let ossl = openssl();
    peer_ok(
        &ossl,
        &[
            "x509",
            "-in",
            "prod-pki/ssig_subca.cert",
            "-out",
            "ssig_subca.pem",
        ],
        &t.dir,
    );
    tool(
        &t,
        &peer("pkcs11-tool").unwrap(),
        &[
            "--module",
            MODULE,
            "--token-label",
            "prod",
            "--read-object",
            "--type",
            "cert",
            "--label",
            "ssig_subca",
            "-o",
            "token-subca.der",
        ],
    );
    let from_token = peer_ok(
        &ossl,
        &[
            "x509",
            "-inform",
            "DER",
            "-in",
            "token-subca.der",
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
        &t.dir,
    );
    let from_dir = peer_ok(
        &ossl,
        &[
            "x509",
            "-in",
            "ssig_subca.pem",
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
        &t.dir,
    );
    assert_eq!(from_token, from_dir);

    // pki check opens every token key and compares it with its certificate.
    let out = stdout(&ok(run(&t, ENV, &["pki", "check", "--dir", "prod-pki"])));
    assert!(out.contains("PKI in prod-pki: OK"), "{out}");
    // Without the PIN the keys cannot be checked: a failed check, not a pass.
    let o = run(
        &t,
        &[("PKI_SIGNER_PKCS11_MODULE", MODULE)],
        &["pki", "check", "--dir", "prod-pki"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("needs a PIN"), "{}", stdout(&o));

    // --role signs with the token key.
    if Path::new(SYSTEMD_BOOT).is_file() {
        ok(run(
            &t,
            ENV,
            &[
                "pe",
                "sign",
                SYSTEMD_BOOT,
                "-o",
                "signed.efi",
                "--role",
                "ssig_subca",
                "--dir",
                "prod-pki",
            ],
        ));
        peer_ok(
            &peer("sbverify").expect("sbverify"),
            &["--cert", "ssig_subca.pem", "signed.efi"],
            &t.dir,
        );
        peer_ok(
            &peer("sbverify").unwrap(),
            &["--cert", "prod-pki/ssig_rootca.cert", "signed.efi"],
            &t.dir,
        );
    } else if std::env::var("PKI_SIGNER_REQUIRE_PEERS").as_deref() == Ok("1") {
        panic!("{SYSTEMD_BOOT} is missing (apt install systemd-boot-efi)");
    }

    // Running init again finds the PKI and leaves the token alone.
    let out = stdout(&ok(run(
        &t,
        ENV,
        &[
            "pki",
            "init",
            "--dir",
            "prod-pki",
            "--hsm",
            "pkcs11:token=prod",
        ],
    )));
    assert!(out.starts_with("PKI already present in prod-pki"), "{out}");
    // A second PKI in the same token would reuse the role labels: refused.
    let err = fails(
        run(
            &t,
            ENV,
            &[
                "pki",
                "init",
                "--dir",
                "other",
                "--hsm",
                "pkcs11:token=prod",
            ],
        ),
        2,
    );
    assert!(err.contains("already holds objects labelled"), "{err}");
    assert!(leftovers(&t, "other").is_empty());
    assert_token_holds(&t, &labels);
}

#[test]
fn ec_pki_in_a_token_with_module_and_pin_file_in_the_uri() {
    let Some(t) = token() else { return };
    let hsm = format!(
        "pkcs11:token=prod?module-path={MODULE}&pin-source=file:{}",
        t.dir.join("pin.txt").display()
    );
    ok(run(
        &t,
        &[],
        &[
            "pki",
            "init",
            "--dir",
            "ec-pki",
            "--hsm",
            &hsm,
            "--key-type",
            "ec:prime256v1",
        ],
    ));
    let dir = t.dir.join("ec-pki");
    verify_chains(&dir);
    let roles: Vec<&str> = CHAINS.iter().map(|c| c.0).collect();
    assert_keys_only_in_token(&dir, &roles);
    assert_token_holds(&t, &roles);
    let text = peer_ok(
        &openssl(),
        &["x509", "-in", "ssig.cert", "-noout", "-text"],
        &dir,
    );
    assert!(
        text.contains("ecdsa-with-SHA256") && text.contains("prime256v1"),
        "{text}"
    );
    // The module path is kept in the recorded URIs, the PIN file is not.
    let m = manifest(&dir);
    let uri = m["roles"][0]["key_uri"].as_str().unwrap();
    assert!(uri.ends_with(&format!("?module-path={MODULE}")), "{uri}");

    // Signing by role needs only the PIN: the module comes from pki.json.
    let pin_only = [("PKI_SIGNER_PKCS11_PIN", PIN)];
    let out = stdout(&ok(run(
        &t,
        &pin_only,
        &["pki", "check", "--dir", "ec-pki"],
    )));
    assert!(out.contains("PKI in ec-pki: OK"), "{out}");
    let ossl = openssl();
    device_csr(&t.dir, "/CN=device-0001");
    ok(run(
        &t,
        &pin_only,
        &[
            "csr",
            "sign",
            "device.csr",
            "-o",
            "device.cert",
            "--role",
            "device_subca",
            "--dir",
            "ec-pki",
        ],
    ));
    let out = peer_ok(
        &ossl,
        &[
            "verify",
            "-CAfile",
            "ec-pki/gen_rootca.cert",
            "-untrusted",
            "device.cert",
            "device.cert",
        ],
        &t.dir,
    );
    assert!(out.contains(": OK"), "{out}");
}

#[test]
fn a_wrong_pin_leaves_no_directory_and_no_token_objects() {
    let Some(t) = token() else { return };
    let wrong = [
        ("PKI_SIGNER_PKCS11_MODULE", MODULE),
        ("PKI_SIGNER_PKCS11_PIN", "11112222"),
    ];
    let err = fails(
        run(
            &t,
            &wrong,
            &["pki", "init", "--dir", "pki", "--hsm", "pkcs11:token=prod"],
        ),
        2,
    );
    assert!(err.contains("CKR_PIN_INCORRECT"), "{err}");
    assert!(!err.contains("11112222"), "{err}");
    assert!(
        leftovers(&t, "pki").is_empty(),
        "{:?}",
        leftovers(&t, "pki")
    );
    assert!(token_objects(&t).is_empty());

    // Other one-line refusals, before anything is made.
    for (hsm, want) in [
        ("pkcs11:token=prod;object=ssig", "name only the token"),
        ("pkcs11:token=nosuch", "no token 'nosuch'"),
        (
            "pkcs11:token=prod?pin-value=1234",
            "must not be part of the URI",
        ),
    ] {
        let err = fails(
            run(&t, ENV, &["pki", "init", "--dir", "pki", "--hsm", hsm]),
            2,
        );
        assert!(err.contains(want), "{hsm}: {err}");
        assert!(!err.contains(PIN), "{err}");
    }
    let err = fails(
        run(
            &t,
            &[("PKI_SIGNER_PKCS11_PIN", PIN)],
            &["pki", "init", "--dir", "pki", "--hsm", "pkcs11:token=prod"],
        ),
        2,
    );
    assert!(err.contains("no PKCS#11 module"), "{err}");
    assert!(leftovers(&t, "pki").is_empty());
    assert!(token_objects(&t).is_empty());
}

#[test]
fn a_failure_after_key_generation_removes_the_keys_from_the_token() {
    let Some(t) = token() else { return };
    // Keys are generated first; the country fails when the first certificate is issued.
    fs::write(t.dir.join("bad.json"), r#"{"country": "Ä"}"#).unwrap();
    let err = fails(
        run(
            &t,
            ENV,
            &[
                "pki",
                "init",
                "--dir",
                "pki",
                "--hsm",
                "pkcs11:token=prod",
                "--key-type",
                "ec:prime256v1",
                "--profile",
                "bad.json",
            ],
        ),
        2,
    );
    assert!(err.contains("country"), "{err}");
    assert!(
        leftovers(&t, "pki").is_empty(),
        "{:?}",
        leftovers(&t, "pki")
    );
    assert_eq!(token_objects(&t), vec![], "token objects left behind");

    // A development PKI with key files is not silently taken for a token PKI.
    ok(run(
        &t,
        &[],
        &["pki", "init", "--dir", "dev", "--key-type", "ec:prime256v1"],
    ));
    let err = fails(
        run(
            &t,
            ENV,
            &["pki", "init", "--dir", "dev", "--hsm", "pkcs11:token=prod"],
        ),
        2,
    );
    assert!(err.contains("holds a PKI with key files"), "{err}");
    assert!(token_objects(&t).is_empty());
}

/// A production PKI revokes the development one it replaces: `pki init
/// --hsm --uefi --revoke-dev DEV` writes dbx.esl (the TBSCertificate hashes
/// of DEV's db certificates, retired generations included, as efitools'
/// cert-to-efi-hash-list writes them) and dbx.auth (an append signed by the
/// token's KEK), so images signed in development are denied.
#[test]
fn production_pki_revokes_the_development_db_certificates() {
    let Some(t) = token() else { return };
    let mut env = ENV.to_vec();
    env.push(("SOURCE_DATE_EPOCH", EPOCH));
    ok(run(
        &t,
        &env,
        &[
            "pki",
            "init",
            "--dir",
            "dev",
            "--uefi",
            "--key-type",
            "ec:prime256v1",
        ],
    ));
    ok(run(
        &t,
        &env,
        &["pki", "rotate", "ssig_subca", "--dir", "dev"],
    ));
    // Refused: without a token, and for a PKI that is not a development one.
    let err = fails(
        run(
            &t,
            &env,
            &["pki", "init", "--dir", "x", "--uefi", "--revoke-dev", "dev"],
        ),
        2,
    );
    assert!(err.contains("--hsm"), "{err}");
    assert!(!t.dir.join("x").exists());
    let out = stdout(&ok(run(
        &t,
        &env,
        &[
            "pki",
            "init",
            "--dir",
            "prod",
            "--hsm",
            "pkcs11:token=prod",
            "--uefi",
            "--key-type",
            "rsa:2048",
            "--revoke-dev",
            "dev",
        ],
    )));
    assert!(out.starts_with("created PKI in prod"), "{out}");
    let prod = t.dir.join("prod");
    // The entries are those cert-to-efi-hash-list makes for each certificate.
    let esl = fs::read(prod.join("dbx.esl")).unwrap();
    if let Some(c2h) = peer("cert-to-efi-hash-list") {
        let mut want = vec![];
        for (i, f) in [
            "dev/DB.crt",
            "dev/ssig_subca.cert",
            "dev/retired/ssig_subca.1.cert",
        ]
        .iter()
        .enumerate()
        {
            tool(
                &t,
                &openssl(),
                &["x509", "-in", f, "-out", &format!("{i}.pem")],
            );
            tool(
                &t,
                &c2h,
                &[
                    "-g",
                    "6e2d1f0b-3c4a-4b8e-9f5d-2a7c8e1b4d60",
                    "-s",
                    "256",
                    &format!("{i}.pem"),
                    &format!("{i}.esl"),
                ],
            );
            want.extend_from_slice(&fs::read(t.dir.join(format!("{i}.esl"))).unwrap()[28..]);
        }
        assert_eq!(esl[28..], want[..]);
    }
    let auth = fs::read(prod.join("dbx.auth")).unwrap();
    assert!(auth.ends_with(&esl));
    let out = stdout(&ok(run(
        &t,
        &[],
        &[
            "efivar",
            "verify",
            "prod/dbx.auth",
            "--var",
            "dbx",
            "--append",
            "--cert",
            "prod/KEK.crt",
        ],
    )));
    assert!(out.contains("Verification OK"), "{out}");
    let out = stdout(&ok(run(&t, ENV, &["pki", "check", "--dir", "prod"])));
    assert!(
        out.contains("ok   dbx.auth") && out.contains("revokes 3 development"),
        "{out}"
    );
    // An image the development sub CA signed: trusted by its root, denied
    // once the production dbx applies.
    if Path::new(SYSTEMD_BOOT).is_file() {
        ok(run(
            &t,
            &[],
            &[
                "pe",
                "sign",
                SYSTEMD_BOOT,
                "-o",
                "dev.efi",
                "--role",
                "ssig_subca",
                "--dir",
                "dev",
            ],
        ));
        ok(run(
            &t,
            &[],
            &["pe", "verify", "dev.efi", "--cert", "dev/ssig_rootca.cert"],
        ));
        let o = run(
            &t,
            &[],
            &[
                "pe",
                "verify",
                "dev.efi",
                "--cert",
                "dev/ssig_rootca.cert",
                "--dbx",
                "prod/dbx.auth",
            ],
        );
        assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    }
}
