//! `pki init/show/check`, checked with openssl and efitools.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// (role, issuer root) of every non-UEFI role of the default PKI.
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

fn verify_chains(dir: &Path) {
    let ossl = openssl();
    for (role, root) in CHAINS {
        // The role's file holds its chain up to (excluding) the root.
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

fn x509_text(dir: &Path, file: &str) -> String {
    peer_ok(&openssl(), &["x509", "-in", file, "-noout", "-text"], dir)
}

fn pubkey_of_cert(dir: &Path, file: &str) -> String {
    peer_ok(&openssl(), &["x509", "-in", file, "-noout", "-pubkey"], dir)
}

fn pubkey_of_key(dir: &Path, file: &str) -> String {
    peer_ok(&openssl(), &["pkey", "-in", file, "-pubout"], dir)
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn default_pki_with_uefi_is_accepted_by_openssl_and_efitools() {
    let tmp = tempfile::tempdir().unwrap();
    let out = stdout(&ok(run_in(tmp.path(), &["pki", "init", "--uefi"])));
    assert!(out.starts_with("created PKI in pki"), "{out}");
    let dir = tmp.path().join("pki");
    assert_eq!(mode(&dir), 0o700);

    verify_chains(&dir);
    let ossl = openssl();
    for (role, _) in CHAINS.iter().chain(&[("PK", ""), ("KEK", ""), ("DB", "")]) {
        let (cert, key) = if ["PK", "KEK", "DB"].contains(role) {
            (format!("{role}.crt"), format!("{role}.key"))
        } else {
            (format!("{role}.cert"), format!("{role}.key"))
        };
        assert_eq!(mode(&dir.join(&key)), 0o600, "{key}");
        assert!(peer_ok(&ossl, &["pkey", "-check", "-noout", "-in", &key], &dir).contains("valid"));
        assert_eq!(
            pubkey_of_cert(&dir, &cert),
            pubkey_of_key(&dir, &key),
            "{role}: key does not match cert"
        );
        let text = x509_text(&dir, &cert);
        let subject_line = text
            .lines()
            .find(|l| l.trim_start().starts_with("Subject:"))
            .unwrap();
        assert!(
            subject_line.contains("C = DE, O = Development PKI, OU = Development, CN = "),
            "{subject_line}"
        );
        // 16-byte positive serial: openssl prints it as 16 colon-separated bytes.
        let serial = text
            .lines()
            .skip_while(|l| !l.contains("Serial Number:"))
            .nth(1)
            .unwrap()
            .trim()
            .to_string();
        assert_eq!(serial.split(':').count(), 16, "{role} serial {serial}");
        assert!(text.contains("X509v3 Subject Key Identifier"), "{role}");
        let is_root = matches!(*role, "ssig_rootca" | "gen_rootca" | "PK" | "KEK" | "DB");
        assert_eq!(
            text.contains("X509v3 Authority Key Identifier"),
            !is_root,
            "{role} AKI"
        );
        let is_leaf = matches!(*role, "ssig" | "ssig_cml" | "backend" | "ocsp_server");
        if is_leaf {
            assert!(
                text.contains("X509v3 Basic Constraints: critical\n                CA:FALSE"),
                "{role}\n{text}"
            );
            assert!(
                text.contains("X509v3 Key Usage: critical\n                Digital Signature\n"),
                "{role}\n{text}"
            );
        } else {
            assert!(
                text.contains("X509v3 Basic Constraints: critical\n                CA:TRUE"),
                "{role}\n{text}"
            );
            let ku = text
                .lines()
                .skip_while(|l| !l.contains("X509v3 Key Usage: critical"))
                .nth(1)
                .unwrap();
            assert!(ku.contains("Certificate Sign, CRL Sign"), "{role}: {ku}");
        }
        match *role {
            "ssig" | "ssig_cml" => assert!(text.contains("Code Signing"), "{role}"),
            "backend" => assert!(text.contains("TLS Web Server Authentication"), "{role}"),
            "ocsp_server" => assert!(text.contains("OCSP Signing"), "{role}"),
            "PK" | "KEK" | "DB" => assert!(text.contains("Public-Key: (2048 bit)"), "{role}"),
            _ => assert!(text.contains("Public-Key: (4096 bit)"), "{role}"),
        }
    }
    // DER copies of the UEFI certs are the same certificates.
    for k in ["PK", "KEK", "DB"] {
        let from_pem = Command::new(&ossl)
            .args(["x509", "-in", &format!("{k}.crt"), "-outform", "DER"])
            .current_dir(&dir)
            .output()
            .unwrap()
            .stdout;
        assert_eq!(
            from_pem,
            fs::read(dir.join(format!("{k}.cer"))).unwrap(),
            "{k}.cer"
        );
    }
    // The TPM PCR-policy key pair belongs together.
    assert_eq!(mode(&dir.join("tpm2-pcr-private.pem")), 0o600);
    assert_eq!(
        pubkey_of_key(&dir, "tpm2-pcr-private.pem"),
        fs::read_to_string(dir.join("tpm2-pcr-public.pem")).unwrap()
    );

    // Signature lists are byte-identical to efitools' cert-to-efi-sig-list with the same owner GUID.
    if let Some(c2e) = peer("cert-to-efi-sig-list") {
        let manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("pki.json")).unwrap()).unwrap();
        let guid = manifest["owner_guid"].as_str().unwrap().to_string();
        let efitools_esl = |cert: &str| {
            let out = tmp.path().join(format!("{cert}.efitools.esl"));
            peer_ok(&c2e, &["-g", &guid, cert, out.to_str().unwrap()], &dir);
            fs::read(out).unwrap()
        };
        // ssig_subca.cert holds the sub CA first; efitools wants a single cert.
        let sub = Command::new(&ossl)
            .args(["x509", "-in", "ssig_subca.cert"])
            .current_dir(&dir)
            .output()
            .unwrap()
            .stdout;
        fs::write(tmp.path().join("subca.pem"), sub).unwrap();
        let sub_esl = efitools_esl(tmp.path().join("subca.pem").to_str().unwrap());
        assert_eq!(sub_esl, fs::read(dir.join("ssig_subca.esl")).unwrap());
        for k in ["PK", "KEK"] {
            assert_eq!(
                efitools_esl(&format!("{k}.crt")),
                fs::read(dir.join(format!("{k}.esl"))).unwrap(),
                "{k}.esl"
            );
        }
        let mut db = efitools_esl("DB.crt");
        db.extend(sub_esl);
        assert_eq!(
            db,
            fs::read(dir.join("DB.esl")).unwrap(),
            "DB.esl = DB + ssig_subca"
        );
    }

    // show --json agrees with openssl's fingerprints; check passes.
    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&ok(run_in(tmp.path(), &["pki", "show", "--json"])))).unwrap();
    let rows = shown.as_array().unwrap();
    assert_eq!(rows.len(), 14);
    for r in rows {
        let file = r["file"].as_str().unwrap();
        let fp = peer_ok(
            &ossl,
            &["x509", "-in", file, "-noout", "-fingerprint", "-sha256"],
            tmp.path(),
        );
        let fp = fp
            .trim()
            .rsplit('=')
            .next()
            .unwrap()
            .replace(':', "")
            .to_lowercase();
        assert_eq!(r["fingerprint_sha256"].as_str().unwrap(), fp, "{file}");
    }
    let check = stdout(&ok(run_in(tmp.path(), &["pki", "check"])));
    assert!(check.contains("OK (21 items)"), "{check}");

    // check verifies the .auth files too: a db update put in KEK.auth's place
    // (signed by KEK, for db) and a PK.auth whose list was altered.
    let kek_auth = fs::read(dir.join("KEK.auth")).unwrap();
    fs::copy(dir.join("DB.auth"), dir.join("KEK.auth")).unwrap();
    let mut pk_auth = fs::read(dir.join("PK.auth")).unwrap();
    let last = pk_auth.len() - 40;
    pk_auth[last] ^= 1;
    fs::write(dir.join("PK.auth"), &pk_auth).unwrap();
    let o = run_in(tmp.path(), &["pki", "check", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let bad: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["ok"] == false)
        .map(|i| i["role"].as_str().unwrap())
        .collect();
    assert_eq!(bad, ["KEK.auth", "PK.auth"], "{v}");
    fs::write(dir.join("KEK.auth"), kek_auth).unwrap();
}

#[test]
fn ec_pki_verifies_and_second_init_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    ok(run_in(
        tmp.path(),
        &[
            "pki",
            "init",
            "--dir",
            "ecpki",
            "--key-type",
            "ec:prime256v1",
        ],
    ));
    let dir = tmp.path().join("ecpki");
    verify_chains(&dir);
    let text = x509_text(&dir, "device_subca.cert");
    assert!(
        text.contains("id-ecPublicKey")
            && text.contains("prime256v1")
            && text.contains("ecdsa-with-SHA256"),
        "{text}"
    );

    let before: Vec<(String, Vec<u8>)> = sorted_files(&dir);
    let again = stdout(&ok(run_in(
        tmp.path(),
        &[
            "pki",
            "init",
            "--dir",
            "ecpki/",
            "--key-type",
            "ec:prime256v1",
        ],
    )));
    assert!(again.contains("already present"), "{again}");
    assert_eq!(before, sorted_files(&dir));
}

fn sorted_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .flat_map(|e| {
            // One level down: certs/ (the kernel module signing files).
            if e.file_type().unwrap().is_dir() {
                return sorted_files(&e.path())
                    .into_iter()
                    .map(|(n, b)| (format!("{}/{n}", e.file_name().to_string_lossy()), b))
                    .collect();
            }
            vec![(
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )]
        })
        .collect();
    v.sort();
    v
}

#[test]
fn sixteen_concurrent_inits_make_exactly_one_pki() {
    let tmp = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..16)
        .map(|_| {
            Command::new(bin())
                .args(["pki", "init", "--json", "--key-type", "ec:prime256v1"])
                .env("PKI_SIGNER_DIR", tmp.path().join("shared"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut created = 0;
    for c in children {
        let o = ok(c.wait_with_output().unwrap());
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        match v["status"].as_str().unwrap() {
            "created" => created += 1,
            "present" => {}
            s => panic!("status {s}"),
        }
    }
    assert_eq!(created, 1, "exactly one process generates");
    // Nothing but the PKI and its lock file is left beside it.
    let mut names: Vec<String> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["shared", "shared.lock"]);
    verify_chains(&tmp.path().join("shared"));
}

#[test]
fn incomplete_dir_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    ok(run_in(
        tmp.path(),
        &["pki", "init", "--key-type", "ec:prime256v1"],
    ));
    let dir = tmp.path().join("pki");
    fs::remove_file(dir.join("ssig.key")).unwrap();
    let before = sorted_files(&dir);
    let err = fails(
        run_in(tmp.path(), &["pki", "init", "--key-type", "ec:prime256v1"]),
        2,
    );
    assert!(
        err.contains("pki: incomplete PKI (missing ssig.key)"),
        "{err}"
    );
    assert_eq!(before, sorted_files(&dir));

    // A directory with foreign files and no manifest names what is missing.
    let other = tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("notes.txt"), "x").unwrap();
    let err = fails(run_in(tmp.path(), &["pki", "init", "--dir", "other"]), 2);
    assert!(
        err.contains("no pki.json, missing ssig_rootca.cert"),
        "{err}"
    );

    // An empty directory (e.g. made by a recipe) is filled.
    fs::create_dir(tmp.path().join("empty")).unwrap();
    ok(run_in(
        tmp.path(),
        &[
            "pki",
            "init",
            "--dir",
            "empty",
            "--key-type",
            "ec:prime256v1",
        ],
    ));
    verify_chains(&tmp.path().join("empty"));
}

#[test]
fn symlinked_release_pki_is_never_written() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("release-empty")).unwrap();
    symlink("release-empty", tmp.path().join("pki")).unwrap();
    let err = fails(run_in(tmp.path(), &["pki", "init"]), 2);
    assert!(err.contains("symlink"), "{err}");
    assert_eq!(
        fs::read_dir(tmp.path().join("release-empty"))
            .unwrap()
            .count(),
        0
    );

    ok(run_in(
        tmp.path(),
        &[
            "pki",
            "init",
            "--dir",
            "real",
            "--key-type",
            "ec:prime256v1",
        ],
    ));
    symlink("real", tmp.path().join("link")).unwrap();
    let before = sorted_files(&tmp.path().join("real"));
    let out = stdout(&ok(run_in(
        tmp.path(),
        &[
            "pki",
            "init",
            "--dir",
            "link",
            "--key-type",
            "ec:prime256v1",
        ],
    )));
    assert!(out.contains("already present"), "{out}");
    assert_eq!(before, sorted_files(&tmp.path().join("real")));
    assert!(
        !tmp.path().join("link.lock").exists(),
        "nothing written beside a complete release PKI"
    );
}

#[test]
fn profile_sets_org_validity_key_types_and_adds_a_sub_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/profile-example.json");
    ok(run_in(
        tmp.path(),
        &["pki", "init", "--profile", profile.to_str().unwrap()],
    ));
    let dir = tmp.path().join("pki");
    let ossl = openssl();
    // The added sub CA chains to the software-signing root.
    let out = peer_ok(
        &ossl,
        &[
            "verify",
            "-CAfile",
            "ssig_rootca.cert",
            "-untrusted",
            "ssig_subca_arm.cert",
            "ssig_subca_arm.cert",
        ],
        &dir,
    );
    assert!(out.contains("OK"), "{out}");
    let text = x509_text(&dir, "ssig_subca_arm.cert");
    assert!(
        text.contains("O = Example Corp, OU = Firmware, CN = Software Signing Sub CA (arm64)"),
        "{text}"
    );
    assert!(text.contains("ASN1 OID: secp384r1"), "{text}");
    // 400 days: valid in 399 days, expired in 401.
    let checkend = |days: u64| {
        Command::new(&ossl)
            .args([
                "x509",
                "-in",
                "ssig_subca_arm.cert",
                "-noout",
                "-checkend",
                &(days * 86400).to_string(),
            ])
            .current_dir(&dir)
            .status()
            .unwrap()
            .success()
    };
    assert!(checkend(399) && !checkend(401));
    let dev = x509_text(&dir, "device_subca.cert");
    assert!(
        dev.contains("prime256v1") && dev.contains("O = Example Corp"),
        "{dev}"
    );
    let root = x509_text(&dir, "ssig_rootca.cert");
    assert!(
        root.contains("Public-Key: (3072 bit)"),
        "profile key_type applies to the rest"
    );
    ok(run_in(tmp.path(), &["pki", "check"]));
}

#[test]
fn bad_arguments_and_profiles_give_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run_in(tmp.path(), &["pki", "init", "--key-type", "rsa:1024"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown key type 'rsa:1024'"));

    let write = |name: &str, body: &str| {
        let p = tmp.path().join(name);
        fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    };
    let p = write(
        "unknown-issuer.json",
        r#"{"roles": {"extra": {"issuer": "nope", "ca": false}}}"#,
    );
    let err = fails(run_in(tmp.path(), &["pki", "init", "--profile", &p]), 2);
    assert!(
        err.contains("unknown-issuer.json: unknown or circular issuers: extra (issuer nope)"),
        "{err}"
    );
    let p = write("typo.json", r#"{"orgg": "x"}"#);
    let err = fails(run_in(tmp.path(), &["pki", "init", "--profile", &p]), 2);
    assert!(
        err.contains("typo.json: bad profile: unknown field `orgg`"),
        "{err}"
    );
    let p = write(
        "leaf-issuer.json",
        r#"{"roles": {"extra": {"issuer": "ssig", "ca": false}}}"#,
    );
    let err = fails(run_in(tmp.path(), &["pki", "init", "--profile", &p]), 2);
    assert!(err.contains("issuer 'ssig' is not a CA"), "{err}");
    assert!(
        !tmp.path().join("pki").exists(),
        "nothing generated on a bad profile"
    );
    let err = fails(run_in(tmp.path(), &["pki", "show", "--dir", "missing"]), 2);
    assert!(err.contains("missing: No such file or directory"), "{err}");
}

#[test]
fn check_finds_wrong_keys_expiry_and_near_expiry() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("short.json");
    fs::write(
        &p,
        r#"{"key_type": "ec:prime256v1", "roles": {"backend": {"days": 10}}}"#,
    )
    .unwrap();
    ok(run_in(
        tmp.path(),
        &["pki", "init", "--profile", p.to_str().unwrap()],
    ));
    let out = stdout(&ok(run_in(tmp.path(), &["pki", "check"])));
    assert!(
        out.contains("warn backend") && out.contains("within 90 days"),
        "{out}"
    );
    // The lead time is the caller's: 5 days is not yet time to warn of 10.
    let out = stdout(&ok(run_in(
        tmp.path(),
        &["pki", "check", "--warn-days", "5"],
    )));
    assert!(
        out.contains("ok   backend") && !out.contains("warn"),
        "{out}"
    );
    let out = stdout(&ok(run_in(
        tmp.path(),
        &["pki", "check", "--warn-days", "4000"],
    )));
    assert!(out.contains("warn ssig_rootca"), "{out}");
    assert_eq!(
        run_in(tmp.path(), &["pki", "check", "--warn-days", "-1"])
            .status
            .code(),
        Some(2)
    );

    let o = run_in(
        tmp.path(),
        &["pki", "check", "--at", "2099-01-01T00:00:00Z", "--json"],
    );
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["items"][0]["problems"][0]
        .as_str()
        .unwrap()
        .contains("expired"));

    let dir = tmp.path().join("pki");
    fs::copy(dir.join("device_subca.key"), dir.join("user_subca.key")).unwrap();
    let o = run_in(tmp.path(), &["pki", "check"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("user_subca.key does not match the certificate's public key"),
        "{}",
        stdout(&o)
    );
}

/// A PKI made by openssl the way GyroidOS's gen_dev_certs.sh does (no pki.json)
/// is readable by show and check.
#[test]
fn gyroidos_style_directory_made_by_openssl_is_understood() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // A directory of keys is private, or `pki check` fails.
    fs::set_permissions(d, fs::Permissions::from_mode(0o700)).unwrap();
    let ossl = openssl();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args = vec![
        "req",
        "-x509",
        "-subj",
        "/C=DE/O=OSS Release/OU=Development/CN=GyroidOS Software Signing Root CA",
        "-keyout",
        "ssig_rootca.key",
        "-out",
        "ssig_rootca.cert",
        "-days",
        "30",
    ];
    args.extend(ec);
    peer_ok(&ossl, &args, d);
    let mut args = vec![
        "req",
        "-new",
        "-subj",
        "/C=DE/O=OSS Release/OU=Development/CN=GyroidOS Software Signing Sub CA",
        "-keyout",
        "ssig_subca.key",
        "-out",
        "sub.csr",
    ];
    args.extend(ec);
    peer_ok(&ossl, &args, d);
    fs::write(
        d.join("ext.cnf"),
        "basicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    peer_ok(
        &ossl,
        &[
            "x509",
            "-req",
            "-in",
            "sub.csr",
            "-CA",
            "ssig_rootca.cert",
            "-CAkey",
            "ssig_rootca.key",
            "-CAcreateserial",
            "-days",
            "365",
            "-extfile",
            "ext.cnf",
            "-out",
            "sub.pem",
        ],
        d,
    );
    // GyroidOS appends the root to the sub CA's file.
    let chain = fs::read_to_string(d.join("sub.pem")).unwrap()
        + &fs::read_to_string(d.join("ssig_rootca.cert")).unwrap();
    fs::write(d.join("ssig_subca.cert"), chain).unwrap();

    let shown: serde_json::Value = serde_json::from_str(&stdout(&ok(run_in(
        d,
        &["pki", "show", "--dir", ".", "--json"],
    ))))
    .unwrap();
    let roles: Vec<&str> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["ssig_rootca", "ssig_subca"]);
    let out = stdout(&ok(run_in(d, &["pki", "check", "--dir", "."])));
    assert!(out.contains("OK (2 items)"), "{out}");
}

/// `pki check` fails on a private key or a key directory open to group or
/// others, with one problem line naming the file and its mode.
#[test]
fn check_fails_on_keys_and_directory_open_to_others() {
    let tmp = tempfile::tempdir().unwrap();
    ok(run_in(
        tmp.path(),
        &["pki", "init", "--uefi", "--key-type", "ec:prime256v1"],
    ));
    let dir = tmp.path().join("pki");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let chmod = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    assert_eq!(mode(&dir), 0o700);
    ok(run_in(tmp.path(), &["pki", "check"]));

    let failing = |want: &str| {
        let o = run_in(tmp.path(), &["pki", "check"]);
        assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
        let out = stdout(&o);
        let hits: Vec<&str> = out.lines().filter(|l| l.contains(want)).collect();
        assert_eq!(hits.len(), 1, "{want:?} in {out}");
        assert!(hits[0].trim_start().starts_with("problem: "), "{out}");
    };
    for (file, m) in [
        ("ssig.key", 0o644),
        ("ssig.key", 0o640),
        ("ssig.key", 0o604),
        ("tpm2-pcr-private.pem", 0o644),
    ] {
        let key = dir.join(file);
        chmod(&key, m);
        failing(&format!(
            "pki/{file}: mode {m:04o}; a private key must not be open to group or others"
        ));
        chmod(&key, 0o600);
    }
    for m in [0o755, 0o750, 0o705, 0o720] {
        chmod(&dir, m);
        failing(&format!("pki: mode {m:04o}; a directory of private keys must not be readable or writable by group or others"));
    }
    chmod(&dir, 0o700);
    let out = stdout(&ok(run_in(tmp.path(), &["pki", "check"])));
    assert!(!out.contains("permissions"), "{out}");
}

/// A symlink planted at DIR.lock is refused, not followed: nothing is
/// created or opened at its target, and no PKI is made.
#[test]
fn symlinked_lock_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    symlink(d.join("elsewhere"), d.join("pki.lock")).unwrap();
    let err = fails(
        run_in(d, &["pki", "init", "--key-type", "ec:prime256v1"]),
        2,
    );
    assert!(
        err.contains("pki.lock: is a symlink; pki-signer does not follow a symlinked lock file"),
        "{err}"
    );
    assert!(!d.join("elsewhere").exists(), "followed the symlink");
    assert!(!d.join("pki").exists());
    // A symlink to an existing file is not opened either.
    fs::write(d.join("elsewhere"), "keep").unwrap();
    fails(
        run_in(d, &["pki", "init", "--key-type", "ec:prime256v1"]),
        2,
    );
    assert_eq!(fs::read_to_string(d.join("elsewhere")).unwrap(), "keep");
    assert!(!d.join("pki").exists());
}

/// What a PKI file is: its PEM blocks (or "DER CERTIFICATE") and the key
/// algorithm of the key or first certificate in it, as openssl names them.
fn file_kind(dir: &Path, file: &str) -> (Vec<String>, String) {
    let bytes = fs::read(dir.join(file)).unwrap();
    let ossl = openssl();
    if !bytes.starts_with(b"-----BEGIN") && !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        let text = peer_ok(
            &ossl,
            &["x509", "-inform", "DER", "-in", file, "-noout", "-text"],
            dir,
        );
        let alg = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Public Key Algorithm: "))
            .unwrap()
            .to_string();
        return (vec!["DER CERTIFICATE".into()], alg);
    }
    let text = String::from_utf8(bytes).unwrap();
    let labels: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("-----BEGIN "))
        .map(|l| l.trim_end_matches('-').to_string())
        .collect();
    let alg = if labels[0].ends_with("PRIVATE KEY") {
        // The PKCS#8 algorithm: the first OBJECT openssl finds.
        let asn1 = peer_ok(&ossl, &["asn1parse", "-in", file], dir);
        asn1.lines()
            .find_map(|l| l.split("prim: OBJECT            :").nth(1))
            .unwrap()
            .trim()
            .to_string()
    } else {
        let text = peer_ok(&ossl, &["x509", "-in", file, "-noout", "-text"], dir);
        text.lines()
            .find_map(|l| l.trim().strip_prefix("Public Key Algorithm: "))
            .unwrap()
            .to_string()
    };
    // gen_dev_certs.sh's chains include the root, ours stop below it: the
    // number of certificates after the first is not compared.
    let mut kinds = vec![labels[0].clone()];
    kinds.extend(
        labels
            .iter()
            .skip(1)
            .filter(|l| !kinds.contains(l))
            .cloned()
            .collect::<Vec<_>>(),
    );
    (kinds, alg)
}

/// GyroidOS's gen_dev_certs.sh with KEY_TYPE rsa:2048, its openssl steps
/// for the files a drop-in replacement must have beyond the role
/// certificates: NEWKEY_ARGS_secondary (rsa-pss) for ssig_subca_cml,
/// ssig_cml and ocsp_server, SIGOPT_ARGS (PSS) where ssig_subca_cml signs,
/// and derive_exports' certs/signing_key.{pem,x509}.
fn gen_dev_certs_files(d: &Path) {
    let ossl = openssl();
    let run = |args: &[&str]| peer_ok(&ossl, args, d);
    let root = |name: &str| {
        run(&[
            "req",
            "-batch",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.cert"),
            "-subj",
            &format!("/CN={name}"),
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:true",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    };
    let issue = |name: &str, newkey: &[&str], ca: &str, ext: &str, pss: bool| {
        let mut args = vec!["req", "-batch"];
        args.extend_from_slice(newkey);
        let (key, csr) = (format!("{name}.key"), format!("{name}.csr"));
        let subj = format!("/CN={name}");
        args.extend(["-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj]);
        run(&args);
        let (ca_cert, ca_key, out) = (
            format!("{ca}.cert"),
            format!("{ca}.key"),
            format!("{name}.cert"),
        );
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "30",
            "-sha256",
            "-extfile",
            ext,
            "-out",
            &out,
        ];
        if pss {
            args.extend([
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:-1",
            ]);
        }
        run(&args);
        // The chain after the certificate, as the script's `cat`.
        let mut chain = fs::read(d.join(&out)).unwrap();
        chain.extend(fs::read(d.join(&ca_cert)).unwrap());
        fs::write(d.join(&out), chain).unwrap();
    };
    fs::write(
        d.join("ca.ext"),
        "basicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    fs::write(
        d.join("leaf.ext"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n",
    )
    .unwrap();
    let primary: &[&str] = &["-newkey", "rsa:2048"];
    let secondary: &[&str] = &["-newkey", "rsa-pss", "-pkeyopt", "rsa_keygen_bits:2048"];
    root("ssig_rootca");
    issue("ssig_subca", primary, "ssig_rootca", "ca.ext", false);
    issue("ssig_subca_cml", secondary, "ssig_rootca", "ca.ext", false);
    issue("ssig_cml", secondary, "ssig_subca_cml", "leaf.ext", true);
    root("gen_rootca");
    issue("backend_subca", primary, "gen_rootca", "ca.ext", false);
    issue("ocsp_server", secondary, "backend_subca", "leaf.ext", false);
    // derive_exports
    fs::create_dir_all(d.join("certs")).unwrap();
    run(&[
        "x509",
        "-in",
        "ssig_subca.cert",
        "-outform",
        "DER",
        "-out",
        "certs/signing_key.x509",
    ]);
    let pem = run(&["x509", "-in", "ssig_subca.cert", "-outform", "PEM"]);
    let mut key = fs::read(d.join("ssig_subca.key")).unwrap();
    key.extend(pem.as_bytes());
    fs::write(d.join("certs/signing_key.pem"), key).unwrap();
}

#[test]
fn pki_init_is_a_drop_in_for_gen_dev_certs() {
    let tmp = tempfile::tempdir().unwrap();
    ok(run_in(
        tmp.path(),
        &["pki", "init", "--key-type", "rsa:2048"],
    ));
    let ours = tmp.path().join("pki");
    let theirs = tmp.path().join("gyroidos");
    fs::create_dir_all(&theirs).unwrap();
    gen_dev_certs_files(&theirs);
    for f in [
        "ssig_subca.cert",
        "ssig_subca.key",
        "ssig_subca_cml.cert",
        "ssig_subca_cml.key",
        "ssig_cml.cert",
        "ssig_cml.key",
        "ocsp_server.cert",
        "ocsp_server.key",
        "certs/signing_key.pem",
        "certs/signing_key.x509",
    ] {
        assert_eq!(file_kind(&ours, f), file_kind(&theirs, f), "{f}");
    }
    let (_, alg) = file_kind(&ours, "ssig_cml.key");
    assert_eq!(alg, "rsassaPss");
    // The module signing files hold ssig_subca's key and certificate.
    let der = fs::read(ours.join("certs/signing_key.x509")).unwrap();
    let pem = peer_ok(
        &openssl(),
        &[
            "x509",
            "-in",
            "ssig_subca.cert",
            "-outform",
            "DER",
            "-out",
            "first.der",
        ],
        &ours,
    );
    assert!(pem.is_empty());
    assert_eq!(fs::read(ours.join("first.der")).unwrap(), der);
    fs::remove_file(ours.join("first.der")).unwrap();
    assert_eq!(
        pubkey_of_key(&ours, "certs/signing_key.pem"),
        pubkey_of_cert(&ours, "ssig_subca.cert")
    );
    assert_eq!(mode(&ours.join("certs/signing_key.pem")), 0o600);
    // Chains verify, and the PKI checks out (the module signing key included).
    verify_chains(&ours);
    ok(run_in(tmp.path(), &["pki", "check"]));
    // A PKI made before ocsp_server existed is used as it is.
    let m = fs::read_to_string(ours.join("pki.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&m).unwrap();
    v["roles"]
        .as_array_mut()
        .unwrap()
        .retain(|r| r["role"] != "ocsp_server");
    fs::write(
        ours.join("pki.json"),
        serde_json::to_string_pretty(&v).unwrap(),
    )
    .unwrap();
    let out = stdout(&ok(run_in(
        tmp.path(),
        &["pki", "init", "--key-type", "rsa:2048"],
    )));
    assert!(!out.contains("created"), "{out}");
}
