//! Verdicts as strict as the consumer's. Every chain, key and list here is made
//! by openssl or efitools, never by pki-signer, and every expected verdict is
//! the peer's: sbverify, osslsigncode, `openssl verify` with EDK2's flags
//! (-partial_chain -purpose any), cert-to-efi-hash-list, pesign -h.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

/// openssl's extension sections for the odd chains.
const EXT: &str = "\
[root]
basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
[root_pl0]
basicConstraints=critical,CA:TRUE,pathlen:0
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
[sub]
basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
[sub_nobc]
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
[leaf]
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=codeSigning
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
[leaf_crit]
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
1.3.6.1.4.1.55555.1=critical,ASN1:NULL
";

/// `NAME.key` + `NAME.pem` made by openssl: self-signed when `issuer` is None.
fn mk(dir: &Path, name: &str, issuer: Option<&str>, section: &str) {
    let ossl = openssl();
    fs::write(dir.join("ext.cnf"), EXT).unwrap();
    peer_ok(
        &ossl,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN={name}"),
            "-out",
            &format!("{name}.csr"),
        ],
        dir,
    );
    let mut args: Vec<String> = [
        "x509",
        "-req",
        "-in",
        &format!("{name}.csr"),
        "-days",
        "3650",
        "-extfile",
        "ext.cnf",
        "-extensions",
        section,
        "-out",
        &format!("{name}.pem"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    match issuer {
        None => args.extend(["-signkey".into(), format!("{name}.key")]),
        Some(i) => args.extend([
            "-CA".into(),
            format!("{i}.pem"),
            "-CAkey".into(),
            format!("{i}.key"),
            "-set_serial".into(),
            format!("{}", 1000 + name.len() * 7 + section.len()),
        ]),
    }
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    peer_ok(&ossl, &refs, dir);
}

/// Exit status of a peer tool (true = it accepted).
fn peer_accepts(tool: &str, args: &[&str], dir: &Path) -> bool {
    let t = peer(tool).unwrap_or_else(|| panic!("{tool} missing"));
    Command::new(t)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
        .status
        .success()
}

/// EDK2's Pkcs7Verify settings, as `openssl verify` spells them.
fn openssl_edk2(dir: &Path, anchor: &str, untrusted: &str, leaf: &str) -> bool {
    peer_accepts(
        "openssl",
        &[
            "verify",
            "-partial_chain",
            "-purpose",
            "any",
            "-no_check_time",
            "-CAfile",
            anchor,
            "-untrusted",
            untrusted,
            leaf,
        ],
        dir,
    )
}

/// Sign systemd-boot with `leaf` (and `sub` as the carried chain) using
/// pki-signer; returns the signed file's name.
fn sign_with(dir: &Path, leaf: &str, chain: &str, out: &str) -> Option<String> {
    let src = systemd_boot()?;
    let o = run_in(
        dir,
        &[
            "pe",
            "sign",
            src,
            "-o",
            out,
            "--key",
            &format!("{leaf}.key"),
            "--cert",
            &format!("{leaf}.pem"),
            "--chain",
            chain,
        ],
    );
    ok(o);
    Some(out.to_string())
}

/// Our verdict (`pe verify --cert anchor`) next to sbverify's and osslsigncode's.
fn pe_verdicts(dir: &Path, signed: &str, anchor: &str, extra: &[&str]) -> (bool, bool, bool) {
    let mut args = vec!["pe", "verify", signed, "--cert", anchor];
    args.extend_from_slice(extra);
    let ours = run_in(dir, &args);
    assert!(
        matches!(ours.status.code(), Some(0) | Some(1)),
        "{}",
        stderr(&ours)
    );
    let sbverify = peer_accepts("sbverify", &["--cert", anchor, signed], dir);
    let ossl = peer_accepts(
        "osslsigncode",
        &["verify", "-in", signed, "-CAfile", anchor],
        dir,
    );
    (ours.status.success(), sbverify, ossl)
}

/// Root -> sub -> leaf where the given sections make it odd.
fn chain(dir: &Path, root: &str, sub: &str, leaf: &str) {
    mk(dir, "root", None, root);
    mk(dir, "sub", Some("root"), sub);
    mk(dir, "leaf", Some("sub"), leaf);
}

#[test]
fn a_good_chain_is_accepted_by_everyone() {
    let d = tempfile::tempdir().unwrap();
    chain(d.path(), "root", "sub", "leaf");
    let Some(s) = sign_with(d.path(), "leaf", "sub.pem", "good.efi") else {
        return;
    };
    assert!(openssl_edk2(d.path(), "root.pem", "sub.pem", "leaf.pem"));
    assert_eq!(
        pe_verdicts(d.path(), &s, "root.pem", &[]),
        (true, true, true)
    );
    // EDK2 allows a partial chain: the sub CA alone as the db entry.
    let o = ok(run_in(d.path(), &["pe", "verify", &s, "--cert", "sub.pem"]));
    assert!(stdout(&o).contains("OK"), "{}", stdout(&o));
}

/// A chain openssl made with the given odd sections, signed with, then
/// verified under its root: every peer and pki-signer must refuse it, and
/// pki-signer's report must say `why`.
fn refused_by_all(root: &str, sub: &str, leaf: &str, why: &str) {
    let d = tempfile::tempdir().unwrap();
    chain(d.path(), root, sub, leaf);
    let Some(s) = sign_with(d.path(), "leaf", "sub.pem", "odd.efi") else {
        return;
    };
    assert!(!openssl_edk2(d.path(), "root.pem", "sub.pem", "leaf.pem"));
    assert_eq!(
        pe_verdicts(d.path(), &s, "root.pem", &[]),
        (false, false, false)
    );
    for json in [false, true] {
        let mut args = vec!["pe", "verify", &s, "--cert", "root.pem"];
        if json {
            args.push("--json");
        }
        let o = run_in(d.path(), &args);
        assert!(stdout(&o).contains(why), "{}", stdout(&o));
    }
}

#[test]
fn path_length_exceeded_is_refused_like_the_peers() {
    refused_by_all("root_pl0", "sub", "leaf", "path length");
}

#[test]
fn an_intermediate_without_basic_constraints_is_not_a_ca() {
    refused_by_all("root", "sub_nobc", "leaf", "invalid CA");
}

#[test]
fn an_unknown_critical_extension_is_refused() {
    refused_by_all("root", "sub", "leaf_crit", "unhandled critical extension");
}

/// efitools' cert-to-efi-hash-list writes EFI_CERT_X509_SHA* entries, the
/// hash of the certificate's TBSCertificate; EDK2 denies an image whose
/// signer (or the db certificate that verified it) is listed.
#[test]
fn dbx_certificate_hashes_revoke_the_chain() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    chain(dir, "root", "sub", "leaf");
    let Some(s) = sign_with(dir, "leaf", "sub.pem", "signed.efi") else {
        return;
    };
    let Some(tool) = peer("cert-to-efi-hash-list") else {
        return;
    };
    for (cert, bits) in [
        ("leaf", "256"),
        ("leaf", "384"),
        ("leaf", "512"),
        ("root", "256"),
    ] {
        let esl = format!("dbx-{cert}-{bits}.esl");
        peer_ok(
            &tool,
            &[
                "-g",
                "11111111-2222-3333-4444-555555555555",
                "-s",
                bits,
                &format!("{cert}.pem"),
                &esl,
            ],
            dir,
        );
        let o = run_in(
            dir,
            &["pe", "verify", &s, "--cert", "root.pem", "--dbx", &esl],
        );
        assert_eq!(o.status.code(), Some(1), "{cert} sha{bits}: {}", stdout(&o));
        assert!(stdout(&o).contains("revoked by hash"), "{}", stdout(&o));
    }
    // An unrelated certificate's hash revokes nothing.
    mk(dir, "other", None, "root");
    peer_ok(&tool, &["-s", "256", "other.pem", "dbx-other.esl"], dir);
    ok(run_in(
        dir,
        &[
            "pe",
            "verify",
            &s,
            "--cert",
            "root.pem",
            "--dbx",
            "dbx-other.esl",
        ],
    ));
}

/// A one-entry EFI_SIGNATURE_LIST of SHA-256 image hashes, as firmware reads it.
fn sha256_esl(hash_hex: &str) -> Vec<u8> {
    let hash: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hash_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let mut v = vec![
        0x26, 0x16, 0xc4, 0xc1, 0x4c, 0x50, 0x92, 0x40, 0xac, 0xa9, 0x41, 0xf9, 0x36, 0x93, 0x43,
        0x28,
    ];
    v.extend(76u32.to_le_bytes());
    v.extend(0u32.to_le_bytes());
    v.extend(48u32.to_le_bytes());
    v.extend([0x55; 16]);
    v.extend(hash);
    v
}

fn pesign_hash(dir: &Path, file: &str) -> Option<String> {
    let t = peer("pesign")?;
    let o = Command::new(t)
        .args(["-h", "-i", file])
        .current_dir(dir)
        .output()
        .unwrap();
    let text = stdout(&o);
    text.lines()
        .find_map(|l| l.strip_prefix("hash: "))
        .map(|h| h.trim().to_string())
}

#[test]
fn db_image_hashes_match_the_image_as_it_is() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let Some(src) = systemd_boot() else {
        return;
    };
    // Unsigned and unaligned: three bytes past an 8-byte boundary.
    let mut img = fs::read(src).unwrap();
    img.truncate(img.len() / 8 * 8);
    img.extend_from_slice(b"abc");
    fs::write(dir.join("unaligned.efi"), &img).unwrap();
    let mut padded = img.clone();
    padded.resize(img.len().div_ceil(8) * 8, 0);
    fs::write(dir.join("padded.efi"), &padded).unwrap();
    let Some(as_is) = pesign_hash(dir, "unaligned.efi") else {
        return;
    };
    let pad = pesign_hash(dir, "padded.efi").unwrap();
    assert_ne!(as_is, pad);
    fs::write(dir.join("db-as-is.esl"), sha256_esl(&as_is)).unwrap();
    fs::write(dir.join("db-padded.esl"), sha256_esl(&pad)).unwrap();
    ok(run_in(
        dir,
        &["pe", "verify", "unaligned.efi", "--db", "db-as-is.esl"],
    ));
    let o = run_in(
        dir,
        &["pe", "verify", "unaligned.efi", "--db", "db-padded.esl"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    // The same in dbx: only the as-is digest revokes.
    let o = run_in(
        dir,
        &[
            "pe",
            "verify",
            "unaligned.efi",
            "--db",
            "db-as-is.esl",
            "--dbx",
            "db-padded.esl",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let o = run_in(
        dir,
        &[
            "pe",
            "verify",
            "unaligned.efi",
            "--db",
            "db-as-is.esl",
            "--dbx",
            "db-as-is.esl",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
}

/// An attacker's self-signed PK.auth, made with efitools: without --cert only
/// firmware in Setup Mode would take it, and the verdict must say so.
#[test]
fn a_self_signed_pk_update_says_it_assumed_setup_mode() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    mk(dir, "attacker", None, "root");
    let (Some(c2e), Some(sign)) = (peer("cert-to-efi-sig-list"), peer("sign-efi-sig-list")) else {
        return;
    };
    peer_ok(&c2e, &["attacker.pem", "PK.esl"], dir);
    peer_ok(
        &sign,
        &[
            "-t",
            "2026-01-01 00:00:00",
            "-k",
            "attacker.key",
            "-c",
            "attacker.pem",
            "PK",
            "PK.esl",
            "PK.auth",
        ],
        dir,
    );
    let o = ok(run_in(dir, &["efivar", "verify", "PK.auth"]));
    assert!(stdout(&o).contains("assumed Setup Mode"), "{}", stdout(&o));
    let o = ok(run_in(dir, &["efivar", "verify", "PK.auth", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["assumed_setup_mode"], true);
    // In User Mode the current PK decides.
    mk(dir, "owner", None, "root");
    let o = run_in(dir, &["efivar", "verify", "PK.auth", "--cert", "owner.pem"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
}

/// GyroidOS's cml loads the root file into an X509_STORE and verifies with
/// the defaults: the path must reach a self-signed root, an intermediate as
/// the anchor is "unable to get issuer certificate".
#[test]
fn guestos_trust_must_be_the_root() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    chain(dir, "root", "sub", "leaf");
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/guestos/core-1.conf");
    fs::copy(conf, dir.join("core-1.conf")).unwrap();
    let ossl = openssl();
    peer_ok(
        &ossl,
        &[
            "dgst",
            "-sha512",
            "-sign",
            "leaf.key",
            "-out",
            "core-1.sig",
            "core-1.conf",
        ],
        dir,
    );
    let cert = fs::read_to_string(dir.join("leaf.pem")).unwrap()
        + &fs::read_to_string(dir.join("sub.pem")).unwrap();
    fs::write(dir.join("core-1.cert"), cert).unwrap();
    // The peer: openssl verify with the defaults cml uses.
    assert!(peer_accepts(
        "openssl",
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "sub.pem",
            "leaf.pem"
        ],
        dir
    ));
    assert!(!peer_accepts(
        "openssl",
        &["verify", "-CAfile", "sub.pem", "leaf.pem"],
        dir
    ));
    ok(run_in(
        dir,
        &["guestos", "verify", "core-1.conf", "--trust", "root.pem"],
    ));
    let o = run_in(
        dir,
        &["guestos", "verify", "core-1.conf", "--trust", "sub.pem"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));

    // A root with pathlen 0 above the sub CA: openssl (and cml) refuse.
    chain(dir, "root_pl0", "sub", "leaf");
    peer_ok(
        &ossl,
        &[
            "dgst",
            "-sha512",
            "-sign",
            "leaf.key",
            "-out",
            "core-1.sig",
            "core-1.conf",
        ],
        dir,
    );
    let cert = fs::read_to_string(dir.join("leaf.pem")).unwrap()
        + &fs::read_to_string(dir.join("sub.pem")).unwrap();
    fs::write(dir.join("core-1.cert"), cert).unwrap();
    assert!(!peer_accepts(
        "openssl",
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "sub.pem",
            "leaf.pem"
        ],
        dir
    ));
    let o = run_in(
        dir,
        &["guestos", "verify", "core-1.conf", "--trust", "root.pem"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
}

#[test]
fn pe_sign_warns_about_a_root_ca_or_a_foreign_eku() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let Some(src) = systemd_boot() else {
        return;
    };
    mk(dir, "root", None, "root");
    let o = ok(run_in(
        dir,
        &[
            "pe", "sign", src, "-o", "r.efi", "--key", "root.key", "--cert", "root.pem",
        ],
    ));
    assert!(stderr(&o).contains("is a root CA"), "{}", stderr(&o));
    fs::write(
        dir.join("tls.cnf"),
        "[tls]\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ossl = openssl();
    peer_ok(
        &ossl,
        &[
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key", "-subj",
            "/CN=tls", "-out", "tls.csr",
        ],
        dir,
    );
    peer_ok(
        &ossl,
        &[
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-set_serial",
            "9",
            "-extfile",
            "tls.cnf",
            "-extensions",
            "tls",
            "-out",
            "tls.pem",
        ],
        dir,
    );
    let o = ok(run_in(
        dir,
        &[
            "pe", "sign", src, "-o", "t.efi", "--key", "tls.key", "--cert", "tls.pem",
        ],
    ));
    assert!(stderr(&o).contains("without codeSigning"), "{}", stderr(&o));
    mk(dir, "leaf", Some("root"), "leaf");
    let o = ok(run_in(
        dir,
        &[
            "pe", "sign", src, "-o", "l.efi", "--key", "leaf.key", "--cert", "leaf.pem",
        ],
    ));
    assert_eq!(stderr(&o), "");
}
