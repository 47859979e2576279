//! Key lifecycle (issue 17): `pki rotate` of db roles and of KEK, the updates
//! it writes, published dbx updates and `efivar auth --merge`, checked with
//! efitools (sign-efi-sig-list, sig-list-to-certs, cert-to-efi-hash-list),
//! virt-firmware (virt-fw-sigdb) and openssl.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const OWNER: &str = "6e2d1f0b-3c4a-4b8e-9f5d-2a7c8e1b4d60";
const EPOCH: &str = "1700000000";

fn sde(cwd: &Path, args: &[&str]) -> Output {
    run_env(cwd, args, &[("SOURCE_DATE_EPOCH", EPOCH)])
}

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

/// The variable data (signature lists) of an .auth file.
fn auth_data(auth: &[u8]) -> Vec<u8> {
    let len = u32::from_le_bytes(auth[16..20].try_into().unwrap()) as usize;
    auth[16 + len..].to_vec()
}

fn manifest(pki: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(pki.join("pki.json")).unwrap()).unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The first certificate of a PEM chain file, as its own PEM file (efitools
/// reads exactly one).
fn first_pem(d: &Path, chain: &Path, out: &str) -> String {
    peer_ok(
        &openssl(),
        &["x509", "-in", chain.to_str().unwrap(), "-out", out],
        d,
    );
    d.join(out).to_str().unwrap().to_string()
}

/// sign-efi-sig-list over the list of `ours` with the same key, variable,
/// append flag and time must give the same bytes.
fn efitools_signs_the_same(d: &Path, ours: &Path, var: &str, key: &Path, cert: &str, time: &str) {
    efitools_signs(d, ours, true, var, key, cert, time)
}

/// As `efitools_signs_the_same`, for an append (`-a`) or a replacement.
fn efitools_signs(
    d: &Path,
    ours: &Path,
    append: bool,
    var: &str,
    key: &Path,
    cert: &str,
    time: &str,
) {
    let Some(tool) = peer("sign-efi-sig-list") else {
        return;
    };
    let bytes = fs::read(ours).unwrap();
    fs::write(d.join("list.esl"), auth_data(&bytes)).unwrap();
    let mut args = vec![];
    if append {
        args.push("-a");
    }
    args.extend([
        "-t",
        time,
        "-k",
        key.to_str().unwrap(),
        "-c",
        cert,
        var,
        "list.esl",
        "efitools.auth",
    ]);
    peer_ok(&tool, &args, d);
    assert_eq!(
        bytes,
        fs::read(d.join("efitools.auth")).unwrap(),
        "{}: differs from sign-efi-sig-list{} -t '{time}' {var}",
        ours.display(),
        if append { " -a" } else { "" }
    );
}

#[test]
fn rotate_ssig_subca_writes_db_append_and_dbx_updates_efitools_agrees_with() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(sde(
        d,
        &["pki", "init", "--uefi", "--key-type", "ec:prime256v1"],
    ));
    let pki = d.join("pki");
    // A pki.json of before the lifecycle fields loads as it is.
    let before = manifest(&pki);
    assert!(before.get("retired").is_none() && before.get("updates").is_none());
    let old_cert = fs::read(pki.join("ssig_subca.cert")).unwrap();
    let old_pem = first_pem(d, &pki.join("ssig_subca.cert"), "old.pem");

    // An image signed by the predecessor, before the rotation.
    let img = systemd_boot();
    if let Some(img) = img {
        ok(sde(
            d,
            &["pe", "sign", img, "-o", "old.efi", "--role", "ssig_subca"],
        ));
    }

    let out = stdout(&ok(sde(d, &["pki", "rotate", "ssig_subca", "--json"])));
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["generation"], 2);
    assert_eq!(r["predecessor"]["files"], serde_json::Value::Null);
    assert_eq!(r["predecessor"]["cert"], "retired/ssig_subca.1.cert");
    assert_eq!(r["issued_by_predecessor"], serde_json::json!(["ssig"]));
    let ups: Vec<&str> = r["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        ups,
        [
            "updates/db-append-ssig_subca.2.auth",
            "updates/dbx-ssig_subca.1.auth"
        ]
    );
    // Times count up from SOURCE_DATE_EPOCH (2023-11-14 22:13:20): DB.auth
    // is signed again first, then the two updates.
    let times: Vec<&str> = r["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["time"].as_str().unwrap())
        .collect();
    assert_eq!(times, ["2023-11-14 22:13:22", "2023-11-14 22:13:23"]);

    // The predecessor is kept, its key private; the successor has the role's names.
    assert_eq!(
        fs::read(pki.join("retired/ssig_subca.1.cert")).unwrap(),
        old_cert
    );
    assert_eq!(mode(&pki.join("retired/ssig_subca.1.key")), 0o600);
    assert_eq!(mode(&pki.join("ssig_subca.key")), 0o600);
    assert_eq!(mode(&pki.join("retired")), 0o700);
    assert_ne!(fs::read(pki.join("ssig_subca.cert")).unwrap(), old_cert);
    let new_pem = first_pem(d, &pki.join("ssig_subca.cert"), "new.pem");
    // Same subject and issuer, new key; openssl verifies it under the same root.
    let subj = |f: &str| {
        peer_ok(
            &openssl(),
            &["x509", "-in", f, "-noout", "-subject", "-issuer"],
            d,
        )
    };
    assert_eq!(subj(&old_pem), subj(&new_pem));
    let pubkey = |f: &str| peer_ok(&openssl(), &["x509", "-in", f, "-noout", "-pubkey"], d);
    assert_ne!(pubkey(&old_pem), pubkey(&new_pem));
    peer_ok(
        &openssl(),
        &["verify", "-CAfile", "pki/ssig_rootca.cert", &new_pem],
        d,
    );
    // The kernel module signing export follows the role.
    let x509 = fs::read(pki.join("certs/signing_key.x509")).unwrap();
    peer_ok(
        &openssl(),
        &[
            "x509", "-in", &new_pem, "-outform", "DER", "-out", "new.der",
        ],
        d,
    );
    assert_eq!(x509, fs::read(d.join("new.der")).unwrap());

    // pki.json records both and their relation.
    let m = manifest(&pki);
    let role = m["roles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["role"] == "ssig_subca")
        .unwrap();
    assert_eq!(role["generation"], 2);
    let ret = &m["retired"][0];
    assert_eq!(role["predecessor_sha256"], ret["fingerprint_sha256"]);
    assert_eq!(ret["successor_sha256"], role["fingerprint_sha256"]);
    assert_eq!(ret["revoked_by"], "updates/dbx-ssig_subca.1.auth");

    let kek_key = pki.join("KEK.key");
    let kek = pki.join("KEK.crt");
    // db append: the successor's certificate, as sig-list-to-certs reads it
    // and efitools signs it.
    let add = pki.join("updates/db-append-ssig_subca.2.auth");
    efitools_signs_the_same(d, &add, "db", &kek_key, kek.to_str().unwrap(), times[0]);
    fs::write(d.join("add.esl"), auth_data(&fs::read(&add).unwrap())).unwrap();
    if let Some(sl2c) = peer("sig-list-to-certs") {
        peer_ok(&sl2c, &["add.esl", "add"], d);
        assert_eq!(fs::read(d.join("add-0.der")).unwrap(), x509);
    }
    // dbx: the predecessor's TBSCertificate hash, as cert-to-efi-hash-list writes it.
    let rev = pki.join("updates/dbx-ssig_subca.1.auth");
    efitools_signs_the_same(d, &rev, "dbx", &kek_key, kek.to_str().unwrap(), times[1]);
    let rev_esl = auth_data(&fs::read(&rev).unwrap());
    fs::write(d.join("rev.esl"), &rev_esl).unwrap();
    if let Some(c2h) = peer("cert-to-efi-hash-list") {
        peer_ok(&c2h, &["-g", OWNER, "-s", "256", &old_pem, "hash.esl"], d);
        assert_eq!(rev_esl, fs::read(d.join("hash.esl")).unwrap());
    }
    if let Some(sl2c) = peer("sig-list-to-certs") {
        peer_ok(&sl2c, &["rev.esl", "rev"], d);
    }
    if let Some(sigdb) = virt_fw("virt-fw-sigdb") {
        let out = peer_ok(&sigdb, &["-i", "add.esl", "-p"], d);
        assert!(out.contains("EfiCertX509 count=1"), "{out}");
        assert!(out.contains("CN=Software Signing Sub CA"), "{out}");
        let out = peer_ok(&sigdb, &["-i", "rev.esl", "-p"], d);
        assert!(
            out.contains("type=3bd2a492-96c0-4079-b420-fcf98ef103ed count=1"),
            "{out}"
        );
    }
    // Our firmware-style check: appends to db and dbx, trusted by the KEK only.
    for f in [&add, &rev] {
        let out = stdout(&ok(run_env(
            d,
            &[
                "efivar",
                "verify",
                f.to_str().unwrap(),
                "--cert",
                "pki/KEK.crt",
            ],
            &[],
        )));
        assert!(out.contains("append to d"), "{out}");
        let o = run_env(
            d,
            &[
                "efivar",
                "verify",
                f.to_str().unwrap(),
                "--cert",
                "pki/PK.crt",
            ],
            &[],
        );
        assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    }
    // New devices get the current certificates: DB.auth signed again, later
    // than pki init's, holding DB and the successor.
    let db_auth = fs::read(pki.join("DB.auth")).unwrap();
    assert_eq!(auth_data(&db_auth), fs::read(pki.join("DB.esl")).unwrap());
    if let Some(tool) = peer("sign-efi-sig-list") {
        peer_ok(
            &tool,
            &[
                "-t",
                "2023-11-14 22:13:21",
                "-k",
                kek_key.to_str().unwrap(),
                "-c",
                kek.to_str().unwrap(),
                "db",
                "pki/DB.esl",
                "db-efitools.auth",
            ],
            d,
        );
        assert_eq!(db_auth, fs::read(d.join("db-efitools.auth")).unwrap());
    }

    // What firmware then does with images: the old signature is revoked by
    // the dbx update, the successor's trusted through the db append.
    if let Some(img) = img {
        ok(sde(
            d,
            &["pe", "sign", img, "-o", "new.efi", "--role", "ssig_subca"],
        ));
        let rev = rev.to_str().unwrap();
        let add = add.to_str().unwrap();
        ok(run_env(
            d,
            &["pe", "verify", "old.efi", "--cert", &old_pem],
            &[],
        ));
        let o = run_env(
            d,
            &["pe", "verify", "old.efi", "--cert", &old_pem, "--dbx", rev],
            &[],
        );
        assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
        assert!(stdout(&o).contains("revoked"), "{}", stdout(&o));
        ok(run_env(
            d,
            &["pe", "verify", "new.efi", "--db", add, "--dbx", rev],
            &[],
        ));
        let o = run_env(d, &["pe", "verify", "new.efi", "--cert", &old_pem], &[]);
        assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    }

    // pki check: successor, retirement and the updates in order; the leaf
    // still issued by the predecessor is a warning.
    let out = stdout(&ok(run_env(d, &["pki", "check"], &[])));
    assert!(out.contains("note: generation 2, successor of"), "{out}");
    assert!(out.contains("ok   retired/ssig_subca.1.cert"), "{out}");
    assert!(
        out.contains("revoked by updates/dbx-ssig_subca.1.auth"),
        "{out}"
    );
    assert!(
        out.contains("update 1 of 2: add ssig_subca generation 2"),
        "{out}"
    );
    assert!(
        out.contains("update 2 of 2: revoke ssig_subca generation 1"),
        "{out}"
    );
    assert!(
        out.contains("warn ssig") && out.contains("pki rotate ssig"),
        "{out}"
    );
    ok(sde(d, &["pki", "rotate", "ssig"]));
    let out = stdout(&ok(run_env(d, &["pki", "check", "--json"], &[])));
    let c: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(c["ok"], true);
    assert!(!out.contains("is retired"), "{out}");

    // A tampered update fails pki check.
    let mut t = fs::read(pki.join("updates/dbx-ssig_subca.1.auth")).unwrap();
    let n = t.len();
    t[n - 20] ^= 1;
    fs::write(pki.join("updates/dbx-ssig_subca.1.auth"), t).unwrap();
    let o = run_env(d, &["pki", "check"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("FAIL updates/dbx-ssig_subca.1.auth"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn rotate_kek_appends_it_with_pk_and_later_db_updates_are_signed_by_the_new_kek() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(sde(
        d,
        &["pki", "init", "--uefi", "--key-type", "ec:prime256v1"],
    ));
    let pki = d.join("pki");
    let old_kek = fs::read(pki.join("KEK.crt")).unwrap();
    let old_kek_der = fs::read(pki.join("KEK.cer")).unwrap();
    let out = stdout(&ok(sde(d, &["pki", "rotate", "KEK", "--json"])));
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["updates"][0]["path"], "updates/KEK-append-KEK.2.auth");
    assert_eq!(r["updates"][0]["signer"], "PK");
    let t = r["updates"][0]["time"].as_str().unwrap().to_string();
    assert_eq!(fs::read(pki.join("retired/KEK.1.crt")).unwrap(), old_kek);
    assert!(pki.join("retired/KEK.1.cer").is_file());
    let kek_append = pki.join("updates/KEK-append-KEK.2.auth");
    efitools_signs_the_same(
        d,
        &kek_append,
        "KEK",
        &pki.join("PK.key"),
        pki.join("PK.crt").to_str().unwrap(),
        &t,
    );
    assert_eq!(
        auth_data(&fs::read(&kek_append).unwrap()),
        fs::read(pki.join("KEK.esl")).unwrap()
    );
    // PK, not the old KEK, signs KEK updates (firmware does not chain them).
    ok(run_env(
        d,
        &[
            "efivar",
            "verify",
            kek_append.to_str().unwrap(),
            "--var",
            "KEK",
            "--append",
            "--cert",
            "pki/PK.crt",
        ],
        &[],
    ));
    let o = run_env(
        d,
        &[
            "efivar",
            "verify",
            kek_append.to_str().unwrap(),
            "--cert",
            "pki/retired/KEK.1.crt",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    // The append leaves the old KEK in the variable: a replacement, signed
    // by the PK, later than the append, holding only the new KEK drops it.
    let u = &r["updates"][1];
    assert_eq!(u["path"], "updates/KEK-KEK.2.auth");
    assert_eq!(u["action"], "replace");
    assert_eq!(u["append"], false);
    assert_eq!(u["signer"], "PK");
    let t2 = u["time"].as_str().unwrap();
    assert!(t2 > t.as_str(), "replacement {t2} not after the append {t}");
    let kek_replace = pki.join("updates/KEK-KEK.2.auth");
    efitools_signs(
        d,
        &kek_replace,
        false,
        "KEK",
        &pki.join("PK.key"),
        pki.join("PK.crt").to_str().unwrap(),
        t2,
    );
    let list = auth_data(&fs::read(&kek_replace).unwrap());
    assert_eq!(list, fs::read(pki.join("KEK.esl")).unwrap());
    assert!(!list.windows(old_kek_der.len()).any(|w| w == old_kek_der));
    ok(run_env(
        d,
        &[
            "efivar",
            "verify",
            kek_replace.to_str().unwrap(),
            "--var",
            "KEK",
            "--cert",
            "pki/PK.crt",
        ],
        &[],
    ));
    let o = run_env(
        d,
        &[
            "efivar",
            "verify",
            kek_replace.to_str().unwrap(),
            "--var",
            "KEK",
            "--append",
            "--cert",
            "pki/PK.crt",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "not an append");
    // New devices: KEK.auth holds the new KEK, DB.auth is signed by it.
    ok(run_env(
        d,
        &[
            "efivar",
            "verify",
            "pki/DB.auth",
            "--var",
            "db",
            "--cert",
            "pki/KEK.crt",
        ],
        &[],
    ));
    let o = run_env(
        d,
        &[
            "efivar",
            "verify",
            "pki/DB.auth",
            "--cert",
            "pki/retired/KEK.1.crt",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));

    // The next db rotation is signed by the new KEK.
    let out = stdout(&ok(sde(d, &["pki", "rotate", "DB", "--json"])));
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let paths: Vec<&str> = r["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["updates/db-append-DB.2.auth", "updates/dbx-DB.1.auth"]
    );
    for u in r["updates"].as_array().unwrap() {
        let f = pki.join(u["path"].as_str().unwrap());
        let var = u["var"].as_str().unwrap();
        let t = u["time"].as_str().unwrap();
        efitools_signs_the_same(
            d,
            &f,
            var,
            &pki.join("KEK.key"),
            pki.join("KEK.crt").to_str().unwrap(),
            t,
        );
        ok(run_env(
            d,
            &[
                "efivar",
                "verify",
                f.to_str().unwrap(),
                "--cert",
                "pki/KEK.crt",
            ],
            &[],
        ));
        let o = run_env(
            d,
            &[
                "efivar",
                "verify",
                f.to_str().unwrap(),
                "--cert",
                "pki/retired/KEK.1.crt",
            ],
            &[],
        );
        assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    }
    let m = manifest(&pki);
    let times: Vec<&str> = m["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["time"].as_str().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(times, sorted, "update times strictly increase");
    assert_eq!(times.len(), 4);
    let o = ok(run_env(d, &["pki", "check"], &[]));
    assert!(
        stdout(&o).contains("replace KEK generation 2, replacement of KEK"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn rotate_keeps_key_types_and_is_safe_under_concurrency() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(sde(d, &["pki", "init", "--key-type", "ec:prime256v1"]));
    let pki = d.join("pki");
    // Three rotations at once: the lock makes them one after another.
    let kids: Vec<_> = (0..3)
        .map(|_| {
            let mut c = Command::new(bin());
            c.args(["pki", "rotate", "device_subca"])
                .current_dir(d)
                .stdout(std::process::Stdio::null());
            for (k, _) in std::env::vars() {
                if k.starts_with("PKI_SIGNER_") {
                    c.env_remove(k);
                }
            }
            c.spawn().unwrap()
        })
        .collect();
    for mut k in kids {
        assert!(k.wait().unwrap().success());
    }
    let m = manifest(&pki);
    let role = m["roles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["role"] == "device_subca")
        .unwrap();
    assert_eq!(role["generation"], 4);
    assert_eq!(role["key_type"], "ec:prime256v1");
    assert_eq!(m["retired"].as_array().unwrap().len(), 3);
    for g in 1..=3 {
        assert!(pki.join(format!("retired/device_subca.{g}.key")).is_file());
    }
    // Not in firmware: no updates.
    assert!(m.get("updates").is_none());
    assert!(!pki.join("updates").exists());
    // RSA-PSS roles stay RSA-PSS (cml's padding follows the key type).
    ok(run_env(d, &["pki", "rotate", "ssig_cml"], &[]));
    let text = peer_ok(
        &openssl(),
        &["x509", "-in", "pki/ssig_cml.cert", "-noout", "-text"],
        d,
    );
    assert!(text.contains("Public Key Algorithm: rsassaPss"), "{text}");
    ok(run_env(d, &["pki", "check"], &[]));
    // Nothing left beside the PKI but its lock.
    let mut names: Vec<String> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["pki", "pki.lock"]);
}

#[test]
fn rotate_refuses_bad_input_with_one_line_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(sde(
        d,
        &["pki", "init", "--uefi", "--key-type", "ec:prime256v1"],
    ));
    let before = fs::read(d.join("pki/pki.json")).unwrap();
    for (args, want) in [
        (vec!["pki", "rotate", "nope"], "no role 'nope'"),
        (vec!["pki", "rotate", "PK"], "platform key"),
        (vec!["pki", "rotate", "ssig_rootca"], "root CA"),
        (vec!["pki", "rotate", "ssig", "--dir", "missing"], "missing"),
    ] {
        let err = fails(run_env(d, &args, &[]), 2);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // Release mode never makes keys in a development PKI.
    let err = fails(
        run_env(
            d,
            &["pki", "rotate", "ssig_subca"],
            &[("PKI_SIGNER_RELEASE", "1")],
        ),
        2,
    );
    assert!(err.contains("release mode"), "{err}");
    // A symlinked PKI (as GyroidOS links release PKIs) is never written through.
    std::os::unix::fs::symlink("pki", d.join("link")).unwrap();
    let err = fails(
        run_env(d, &["pki", "rotate", "ssig", "--dir", "link"], &[]),
        2,
    );
    assert!(err.contains("symlink"), "{err}");
    // A directory without pki.json.
    fs::create_dir(d.join("gyroidos")).unwrap();
    fs::copy(d.join("pki/ssig.cert"), d.join("gyroidos/ssig.cert")).unwrap();
    let err = fails(
        run_env(d, &["pki", "rotate", "ssig", "--dir", "gyroidos"], &[]),
        2,
    );
    assert!(err.contains("pki.json"), "{err}");
    assert_eq!(fs::read(d.join("pki/pki.json")).unwrap(), before);
    assert!(!d.join("pki/retired").exists());
}

/// Microsoft's owner GUID of its dbx entries.
const MS_OWNER: &str = "77fa9abd-0359-4d32-bd60-28f4e78f784b";
const TIME: &str = "2024-01-02 03:04:05";

/// A dbx update as uefi.org publishes them: EFI_VARIABLE_AUTHENTICATION_2
/// over one list of many EFI_CERT_SHA256 entries owned by Microsoft, an
/// append signed by a certificate a KEK CA issued (made here with openssl
/// and efitools' sign-efi-sig-list). We show it, check its signer against
/// the KEK, apply it to an image and merge our own revocations with it.
#[test]
fn published_dbx_update_is_shown_verified_applied_and_merged() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let Some(img) = systemd_boot() else { return };
    let Some(sesl) = peer("sign-efi-sig-list") else {
        return;
    };
    let o = openssl();
    peer_ok(
        &o,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "kekca.key",
            "-out",
            "kekca.pem",
            "-days",
            "30",
            "-subj",
            "/CN=Test KEK CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=keyCertSign,cRLSign",
        ],
        d,
    );
    peer_ok(
        &o,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "signer.key",
            "-out",
            "signer.csr",
            "-subj",
            "/CN=Test KEK dbx signer",
        ],
        d,
    );
    peer_ok(
        &o,
        &[
            "x509",
            "-req",
            "-in",
            "signer.csr",
            "-CA",
            "kekca.pem",
            "-CAkey",
            "kekca.key",
            "-days",
            "30",
            "-out",
            "signer.pem",
        ],
        d,
    );
    // 299 made-up hashes and the systemd-boot image's Authenticode digest.
    let digest = stdout(&ok(run_env(d, &["pe", "digest", img, "--json"], &[])));
    let digest: serde_json::Value = serde_json::from_str(&digest).unwrap();
    // What firmware hashes once the image is signed (signing pads it to 8 bytes).
    let digest = digest["sha256_when_signed"].as_str().unwrap().to_string();
    let mut args = vec!["efivar".to_string(), "esl".into()];
    for i in 0..299u32 {
        let h = format!("{:08x}", i.wrapping_mul(2_654_435_761) ^ 0x5bd1_e995).repeat(8);
        args.extend(["--sha256".into(), h]);
    }
    args.extend(["--sha256".into(), digest.clone()]);
    args.extend([
        "--owner".into(),
        MS_OWNER.into(),
        "-o".into(),
        "published.esl".into(),
    ]);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    ok(run_env(d, &args, &[]));
    peer_ok(
        &sesl,
        &[
            "-a",
            "-t",
            TIME,
            "-k",
            "signer.key",
            "-c",
            "signer.pem",
            "dbx",
            "published.esl",
            "published.auth",
        ],
        d,
    );

    // show: an append to dbx, 300 SHA-256 entries of Microsoft's owner GUID.
    let out = stdout(&ok(run_env(d, &["efivar", "show", "published.auth"], &[])));
    assert!(out.contains("signed for: append to dbx"), "{out}");
    assert!(
        out.contains(&format!(
            "content: 300 entries: 300 sha256 (owner {MS_OWNER})"
        )),
        "{out}"
    );
    assert!(out.contains(&digest), "{out}");
    let out = stdout(&ok(run_env(
        d,
        &["efivar", "show", "--json", "published.auth"],
        &[],
    )));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["entries"].as_array().unwrap().len(), 300);
    assert_eq!(v["entries"][0]["owner"], MS_OWNER);
    // verify: the signer chains to the KEK (db/dbx updates may), not to another.
    let out = stdout(&ok(run_env(
        d,
        &[
            "efivar",
            "verify",
            "published.auth",
            "--var",
            "dbx",
            "--append",
            "--cert",
            "kekca.pem",
            "--json",
        ],
        &[],
    )));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["trusted_by"], "CN=Test KEK CA");
    assert_eq!(v["signer"], "CN=Test KEK dbx signer");
    let o2 = run_env(
        d,
        &["efivar", "verify", "published.auth", "--cert", "signer.csr"],
        &[],
    );
    assert_eq!(o2.status.code(), Some(2), "{}", stderr(&o2));
    ok(sde(
        d,
        &["pki", "init", "--uefi", "--key-type", "ec:prime256v1"],
    ));
    let o2 = run_env(
        d,
        &[
            "efivar",
            "verify",
            "published.auth",
            "--cert",
            "pki/KEK.crt",
        ],
        &[],
    );
    assert_eq!(o2.status.code(), Some(1), "{}", stdout(&o2));
    // It revokes the image by its digest: pe verify --dbx takes the .auth.
    ok(run_env(
        d,
        &[
            "pe",
            "sign",
            img,
            "-o",
            "signed.efi",
            "--role",
            "ssig_subca",
        ],
        &[],
    ));
    ok(run_env(
        d,
        &[
            "pe",
            "verify",
            "signed.efi",
            "--cert",
            "pki/ssig_subca.cert",
        ],
        &[],
    ));
    let o2 = run_env(
        d,
        &[
            "pe",
            "verify",
            "signed.efi",
            "--cert",
            "pki/ssig_subca.cert",
            "--dbx",
            "published.auth",
        ],
        &[],
    );
    assert_eq!(o2.status.code(), Some(1), "{}", stdout(&o2));

    // Merge our own revocation (pki rotate's dbx list) with the published one.
    ok(sde(d, &["pki", "rotate", "ssig_subca"]));
    let ours = auth_data(&fs::read(d.join("pki/updates/dbx-ssig_subca.1.auth")).unwrap());
    fs::write(d.join("ours.esl"), &ours).unwrap();
    let out = stdout(&ok(run_env(
        d,
        &[
            "efivar",
            "auth",
            "--var",
            "dbx",
            "--append",
            "--role",
            "KEK",
            "--dir",
            "pki",
            "--time",
            TIME,
            "--merge",
            "published.auth",
            "--merge",
            "published.esl",
            "ours.esl",
            "-o",
            "merged.auth",
        ],
        &[],
    )));
    assert!(
        out.contains("merged 300 entries of published.auth"),
        "{out}"
    );
    assert!(out.contains("merged 0 entries of published.esl"), "{out}");
    let merged = fs::read(d.join("merged.auth")).unwrap();
    let data = auth_data(&merged);
    assert_eq!(
        data,
        [ours.clone(), fs::read(d.join("published.esl")).unwrap()].concat()
    );
    fs::write(d.join("merged.esl"), &data).unwrap();
    peer_ok(
        &sesl,
        &[
            "-a",
            "-t",
            TIME,
            "-k",
            "pki/KEK.key",
            "-c",
            "pki/KEK.crt",
            "dbx",
            "merged.esl",
            "efitools.auth",
        ],
        d,
    );
    assert_eq!(merged, fs::read(d.join("efitools.auth")).unwrap());
    if let Some(sigdb) = virt_fw("virt-fw-sigdb") {
        let out = peer_ok(&sigdb, &["-i", "merged.esl", "-p"], d);
        assert!(out.contains("EfiCertSha256 count=300"), "{out}");
        assert!(
            out.contains("type=3bd2a492-96c0-4079-b420-fcf98ef103ed count=1"),
            "{out}"
        );
    }
    if let Some(sl2c) = peer("sig-list-to-certs") {
        peer_ok(&sl2c, &["merged.esl", "m"], d);
    }
    ok(run_env(
        d,
        &[
            "efivar",
            "verify",
            "merged.auth",
            "--var",
            "dbx",
            "--append",
            "--cert",
            "pki/KEK.crt",
        ],
        &[],
    ));
    // A --merge file that is not a list is refused with one line, nothing written.
    fs::write(d.join("junk.auth"), b"junk").unwrap();
    let err = fails(
        run_env(
            d,
            &[
                "efivar",
                "auth",
                "--var",
                "dbx",
                "--role",
                "KEK",
                "--dir",
                "pki",
                "--merge",
                "junk.auth",
                "ours.esl",
                "-o",
                "x.auth",
            ],
            &[],
        ),
        2,
    );
    assert!(err.contains("junk.auth"), "{err}");
    assert!(!d.join("x.auth").exists());
}
