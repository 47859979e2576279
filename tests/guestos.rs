//! `guestos sign/verify/show`: GuestOS manifests as GyroidOS's cml checks them,
//! cross-checked with `openssl dgst`, `openssl verify`, `openssl cms`,
//! `protoc` (an independent text-format parser) and coreutils' hash tools.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;

const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/guestos");

/// A development PKI per key type, made once for this file.
fn pki(key_type: &'static str) -> &'static Path {
    static EC: OnceLock<PathBuf> = OnceLock::new();
    static EC384: OnceLock<PathBuf> = OnceLock::new();
    static RSA: OnceLock<PathBuf> = OnceLock::new();
    let cell = match key_type {
        "ec:prime256v1" => &EC,
        "ec:secp384r1" => &EC384,
        "rsa:2048" => &RSA,
        _ => unreachable!(),
    };
    cell.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap().keep();
        ok(run_in(&tmp, &["pki", "init", "--key-type", key_type]));
        tmp.join("pki")
    })
}

/// A GyroidOS-style software-signing PKI made with openssl: RSA root and sub
/// CA, and an `ssig_cml` key typed RSA-PSS, certified with PSS signatures.
/// Returns the directory holding ssig_rootca.cert, ssig_cml.key, ssig_cml.cert.
fn gyroidos_pss_pki() -> Option<&'static Path> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let ossl = peer("openssl")?;
    Some(DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap().keep();
        fs::write(
            d.join("ca.ext"),
            "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
        )
        .unwrap();
        fs::write(
            d.join("leaf.ext"),
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n",
        )
        .unwrap();
        let run = |args: &[&str]| peer_ok(&ossl, args, &d);
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ssig_rootca.key",
            "-out",
            "ssig_rootca.cert",
            "-subj",
            "/CN=ssig_rootca",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "sub.key",
            "-out",
            "sub.csr",
            "-subj",
            "/CN=ssig_subca_cml",
        ]);
        run(&[
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
            "30",
            "-extfile",
            "ca.ext",
            "-sha256",
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:-1",
            "-out",
            "sub.cert",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa-pss",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-nodes",
            "-keyout",
            "ssig_cml.key",
            "-out",
            "cml.csr",
            "-subj",
            "/CN=ssig_cml",
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            "cml.csr",
            "-CA",
            "sub.cert",
            "-CAkey",
            "sub.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "leaf.ext",
            "-sigopt",
            "rsa_padding_mode:pss",
            "-out",
            "cml.leaf",
        ]);
        let chain = [
            fs::read(d.join("cml.leaf")).unwrap(),
            fs::read(d.join("sub.cert")).unwrap(),
        ]
        .concat();
        fs::write(d.join("ssig_cml.cert"), chain).unwrap();
        d
    }))
}

/// A fresh working directory with the example manifests and their images
/// laid out as cml stores them: NAME.conf next to NAME/IMAGE.img.
fn workdir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for conf in ["core-1.conf", "kiosk-7.conf"] {
        fs::copy(Path::new(TESTDATA).join(conf), tmp.path().join(conf)).unwrap();
    }
    for (dir, img, len) in [
        ("core-1", "root", 300_000),
        ("core-1", "modules", 70_001),
        ("kiosk-7", "root", 1 << 20),
        ("kiosk-7", "setup", 12_345),
    ] {
        fs::create_dir_all(tmp.path().join(dir)).unwrap();
        fs::write(
            tmp.path().join(dir).join(format!("{img}.img")),
            data(len, img),
        )
        .unwrap();
    }
    tmp
}

/// Deterministic filler for image files.
fn data(len: usize, seed: &str) -> Vec<u8> {
    let mut x = seed.bytes().fold(0x9e3779b97f4a7c15u64, |a, b| {
        a.rotate_left(5) ^ u64::from(b)
    });
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn role(key_type: &'static str, r: &str) -> String {
    pki(key_type).join(r).to_str().unwrap().to_string()
}

/// GyroidOS's sign_config.sh options.
const PSS: &[&str] = &["rsa_padding_mode:pss", "rsa_pss_saltlen:-1"];

/// `openssl dgst -sha512 -verify` of NAME.sig with the key of NAME.cert's first certificate.
fn openssl_dgst_verify(dir: &Path, name: &str, sigopts: &[&str]) -> bool {
    let ossl = openssl();
    let pubkey = peer_ok(
        &ossl,
        &["x509", "-pubkey", "-noout", "-in", &format!("{name}.cert")],
        dir,
    );
    fs::write(dir.join("signer.pub"), pubkey).unwrap();
    let mut args = vec!["dgst", "-sha512", "-verify", "signer.pub"];
    for o in sigopts {
        args.extend(["-sigopt", o]);
    }
    let sig = format!("{name}.sig");
    let conf = format!("{name}.conf");
    args.extend(["-signature", &sig, &conf]);
    let o = std::process::Command::new(&ossl)
        .args(&args)
        .current_dir(dir)
        .output()
        .unwrap();
    let out = stdout(&o);
    assert_eq!(
        o.status.success(),
        out.contains("Verified OK"),
        "{out}{}",
        stderr(&o)
    );
    o.status.success()
}

fn openssl_verify_chain(dir: &Path, root: &str, name: &str) {
    let cert = format!("{name}.cert");
    let out = peer_ok(
        &openssl(),
        &["verify", "-CAfile", root, "-untrusted", &cert, &cert],
        dir,
    );
    assert!(out.contains(": OK"), "{out}");
}

/// `openssl cms -verify` of the detached NAME.p7s over NAME.conf.
fn openssl_cms_verify(dir: &Path, name: &str, root: &str) {
    let (p7s, conf) = (format!("{name}.p7s"), format!("{name}.conf"));
    // -purpose any: the signing leaf has EKU codeSigning, and openssl cms
    // would otherwise insist on S/MIME signing.
    let out = peer_ok(
        &openssl(),
        &[
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            &p7s,
            "-content",
            &conf,
            "-CAfile",
            root,
            "-purpose",
            "any",
            "-out",
            "/dev/null",
        ],
        dir,
    );
    assert!(out.contains("Verification successful"), "{out}");
}

/// The values a real protobuf parser reads from the conf: (image_file, size, sha1, sha256).
fn protoc_images(dir: &Path, conf: &str) -> Option<Vec<(String, String, String, String)>> {
    let protoc = peer("protoc")?;
    let proto_dir = Path::new(TESTDATA);
    let encoded = std::process::Command::new(&protoc)
        .args([
            "--encode=GuestOSConfig",
            "-I",
            proto_dir.to_str().unwrap(),
            "guestos.proto",
        ])
        .stdin(fs::File::open(dir.join(conf)).unwrap())
        .output()
        .unwrap();
    assert!(
        encoded.status.success(),
        "protoc rejects {conf}: {}",
        stderr(&encoded)
    );
    let bin = dir.join("conf.bin");
    fs::write(&bin, &encoded.stdout).unwrap();
    let decoded = std::process::Command::new(&protoc)
        .args([
            "--decode=GuestOSConfig",
            "-I",
            proto_dir.to_str().unwrap(),
            "guestos.proto",
        ])
        .stdin(fs::File::open(&bin).unwrap())
        .output()
        .unwrap();
    let text = stdout(&decoded);
    let mut out = vec![];
    for block in text.split("mounts").skip(1) {
        let field = |k: &str| {
            block
                .lines()
                .find_map(|l| l.trim().strip_prefix(&format!("{k}: ")))
                .unwrap_or("")
                .trim_matches('"')
                .to_string()
        };
        if !field("image_size").is_empty() {
            out.push((
                field("image_file"),
                field("image_size"),
                field("image_sha1"),
                field("image_sha2_256"),
            ));
        }
    }
    Some(out)
}

/// What coreutils say about an image: (size, sha1, sha256).
fn coreutils(path: &Path) -> Option<(String, String, String)> {
    let p = path.to_str().unwrap();
    let cwd = Path::new("/");
    let first = |s: String| s.split_whitespace().next().unwrap().to_string();
    Some((
        first(peer_ok(&peer("stat")?, &["-c", "%s", p], cwd)),
        first(peer_ok(&peer("sha1sum")?, &[p], cwd)),
        first(peer_ok(&peer("sha256sum")?, &[p], cwd)),
    ))
}

fn verify(dir: &Path, conf: &str, root: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["guestos", "verify", conf, "--trust", root];
    args.extend_from_slice(extra);
    run_in(dir, &args)
}

#[test]
fn sign_with_images_fills_hashes_like_coreutils_and_openssl_accepts_the_signature() {
    let w = workdir();
    let dir = w.path();
    let key = role("ec:prime256v1", "ssig_cml.key");
    let cert = role("ec:prime256v1", "ssig_cml.cert");
    let root = role("ec:prime256v1", "ssig_rootca.cert");
    let before = fs::read_to_string(dir.join("core-1.conf")).unwrap();

    let out = stdout(&ok(run_in(
        dir,
        &[
            "guestos",
            "sign",
            "core-1.conf",
            "--key",
            &key,
            "--cert",
            &cert,
            "--images",
            ".",
        ],
    )));
    assert!(
        // `--key-type ec:*` still gives ssig_cml an RSA-PSS key: cml verifies
        // no EC key, and GyroidOS's own ssig_cml is RSA-PSS.
        out.contains(
            "signed core-1.conf (core v1) -> core-1.sig, core-1.cert (RSA-PSS SHA-512 (MGF1-SHA-512, salt 64)"
        ),
        "{out}"
    );

    // Only the image values of the mounts cml checks were added; the rest is byte-identical.
    let after = fs::read_to_string(dir.join("core-1.conf")).unwrap();
    let mut expected = before.clone();
    for (img, ty) in [("root", "SHARED_RW"), ("modules", "OVERLAY_RO")] {
        let (size, sha1, sha256) =
            coreutils(&dir.join("core-1").join(format!("{img}.img"))).unwrap();
        let anchor = format!("\tmount_type: {ty}\n");
        expected = expected.replace(
            &anchor,
            &format!("{anchor}\timage_size: {size}\n\timage_sha1: \"{sha1}\"\n\timage_sha2_256: \"{sha256}\"\n"),
        );
    }
    assert_eq!(after, expected);
    if let Some(images) = protoc_images(dir, "core-1.conf") {
        assert_eq!(images.len(), 2);
        for (img, size, sha1, sha256) in images {
            let (s, h1, h256) = coreutils(&dir.join("core-1").join(format!("{img}.img"))).unwrap();
            assert_eq!((size, sha1, sha256), (s, h1, h256), "{img}");
        }
    }

    // What cml runs: SHA-512 signature by the first certificate, with the
    // padding its key type says, chain to the root.
    assert!(openssl_dgst_verify(dir, "core-1", PSS));
    openssl_verify_chain(dir, &root, "core-1");
    let ours = stdout(&ok(verify(dir, "core-1.conf", &root, &["--images", "."])));
    assert!(ours.contains("core-1.conf: OK"), "{ours}");

    // NAME.cert is the signer certificate followed by its chain, as `cat` of the cert files.
    assert_eq!(
        fs::read(dir.join("core-1.cert")).unwrap(),
        fs::read(&cert).unwrap()
    );

    // Signing again finds nothing to update.
    let again = run_in(
        dir,
        &[
            "guestos",
            "sign",
            "core-1.conf",
            "--key",
            &key,
            "--cert",
            &cert,
            "--images",
            ".",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&ok(again).stdout).unwrap();
    assert_eq!(v[0]["conf_updated"], false);
    assert_eq!(fs::read_to_string(dir.join("core-1.conf")).unwrap(), after);
}

#[test]
fn existing_values_are_replaced_in_place_in_creator_output() {
    let w = workdir();
    let dir = w.path();
    let before = fs::read_to_string(dir.join("kiosk-7.conf")).unwrap();
    let out = run_in(
        dir,
        &[
            "guestos",
            "sign",
            "kiosk-7.conf",
            "--role",
            "ssig_cml",
            "--dir",
            pki("ec:prime256v1").to_str().unwrap(),
            "--images",
            ".",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&ok(out).stdout).unwrap();
    assert_eq!(v[0]["conf_updated"], true);
    assert_eq!(v[0]["images"].as_array().unwrap().len(), 2);

    let (size, sha1, sha256) = coreutils(&dir.join("kiosk-7/root.img")).unwrap();
    let (s2, h2, h256) = coreutils(&dir.join("kiosk-7/setup.img")).unwrap();
    let expected = before
        .replace("image_size: 4096", &format!("image_size: {size}"))
        .replace(&format!("\"{}\"", "0".repeat(40)), &format!("\"{sha1}\""))
        .replace(&format!("\"{}\"", "0".repeat(64)), &format!("\"{sha256}\""))
        .replace(
            "  mount_type: SHARED\n}\ndescription",
            &format!("  mount_type: SHARED\n  image_size: {s2}\n  image_sha1: \"{h2}\"\n  image_sha2_256: \"{h256}\"\n}}\ndescription"),
        );
    assert_eq!(
        fs::read_to_string(dir.join("kiosk-7.conf")).unwrap(),
        expected
    );
    protoc_images(dir, "kiosk-7.conf");
    ok(verify(
        dir,
        "kiosk-7.conf",
        &role("ec:prime256v1", "ssig_rootca.cert"),
        &["--images", "."],
    ));
}

/// A plain rsaEncryption key (here `ssig`; GuestOS roles are RSA-PSS)
/// signs PKCS#1 v1.5, which cml checks for such a key.
#[test]
fn rsa_keys_sign_pkcs1_and_cms_verifies_with_openssl() {
    let w = workdir();
    let dir = w.path();
    let pki = pki("rsa:2048").to_str().unwrap();
    let root = role("rsa:2048", "ssig_rootca.cert");
    let out = stdout(&ok(run_in(
        dir,
        &[
            "guestos",
            "sign",
            "core-1.conf",
            "--role",
            "ssig",
            "--dir",
            pki,
            "--cms",
        ],
    )));
    assert!(
        out.contains("core-1.sig, core-1.cert, core-1.p7s (RSA PKCS#1 v1.5 SHA-512"),
        "{out}"
    );
    // rsaEncryption leaf: cml verifies PKCS#1 v1.5, so PSS must not verify.
    assert!(openssl_dgst_verify(dir, "core-1", &[]));
    assert!(!openssl_dgst_verify(dir, "core-1", PSS));
    openssl_verify_chain(dir, &root, "core-1");
    ok(verify(dir, "core-1.conf", &root, &[]));

    openssl_cms_verify(dir, "core-1", &root);
    let info = peer_ok(
        &openssl(),
        &[
            "cms",
            "-cmsout",
            "-print",
            "-inform",
            "DER",
            "-in",
            "core-1.p7s",
        ],
        dir,
    );
    assert!(info.contains("sha512"), "{info}");

    // With SOURCE_DATE_EPOCH, PKCS#1 signatures and the CMS file are reproducible.
    let sign_at = |epoch: &str| {
        let o = std::process::Command::new(bin())
            .args([
                "guestos",
                "sign",
                "core-1.conf",
                "--role",
                "ssig",
                "--dir",
                pki,
                "--cms",
            ])
            .env("SOURCE_DATE_EPOCH", epoch)
            .current_dir(dir)
            .output()
            .unwrap();
        ok(o);
        (
            fs::read(dir.join("core-1.sig")).unwrap(),
            fs::read(dir.join("core-1.p7s")).unwrap(),
        )
    };
    assert_eq!(sign_at("1700000000"), sign_at("1700000000"));
    assert_ne!(sign_at("1700000000").1, sign_at("1700000001").1);
}

#[test]
fn gyroidos_rsa_pss_ssig_cml_key_signs_pss_with_salt_64() {
    let Some(p) = gyroidos_pss_pki() else { return };
    let w = workdir();
    let dir = w.path();
    let key = p.join("ssig_cml.key");
    let cert = p.join("ssig_cml.cert");
    let root = p.join("ssig_rootca.cert");
    let out = stdout(&ok(run_in(
        dir,
        &[
            "guestos",
            "sign",
            "core-1.conf",
            "--key",
            key.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--images",
            ".",
            "--cms",
        ],
    )));
    assert!(
        out.contains("RSA-PSS SHA-512 (MGF1-SHA-512, salt 64)"),
        "{out}"
    );
    // The exact check of GyroidOS's sign_config.sh / cml: PSS, salt = digest length.
    assert!(openssl_dgst_verify(dir, "core-1", PSS));
    // The key type alone selects PSS; any other salt length is refused.
    assert!(openssl_dgst_verify(dir, "core-1", &[]));
    assert!(!openssl_dgst_verify(
        dir,
        "core-1",
        &["rsa_padding_mode:pss", "rsa_pss_saltlen:32"]
    ));
    openssl_verify_chain(dir, root.to_str().unwrap(), "core-1");
    let ours = stdout(&ok(verify(
        dir,
        "core-1.conf",
        root.to_str().unwrap(),
        &["--images", "."],
    )));
    assert!(ours.contains("RSA-PSS SHA-512"), "{ours}");
    openssl_cms_verify(dir, "core-1", root.to_str().unwrap());
}

#[test]
fn our_verify_accepts_what_openssl_dgst_signs() {
    let ossl = openssl();
    let mut cases: Vec<(PathBuf, PathBuf, PathBuf, bool)> = vec![];
    // pki init's ssig_cml is RSA-PSS whatever the key type: GyroidOS's
    // sign_config.sh steps (always PSS) give signatures cml accepts.
    for kt in ["ec:prime256v1", "ec:secp384r1", "rsa:2048"] {
        let p = pki(kt);
        cases.push((
            p.join("ssig_cml.key"),
            p.join("ssig_cml.cert"),
            p.join("ssig_rootca.cert"),
            true,
        ));
        // A plain RSA key (ssig, rsaEncryption) signed without -sigopt.
        if kt.starts_with("rsa") {
            cases.push((
                p.join("ssig.key"),
                p.join("ssig.cert"),
                p.join("ssig_rootca.cert"),
                false,
            ));
        }
    }
    if let Some(p) = gyroidos_pss_pki() {
        cases.push((
            p.join("ssig_cml.key"),
            p.join("ssig_cml.cert"),
            p.join("ssig_rootca.cert"),
            true,
        ));
    }
    for (key, cert, root, pss) in cases {
        let w = workdir();
        let dir = w.path();
        // GyroidOS's sign_config.sh, by hand.
        let mut args = vec!["dgst", "-sha512", "-sign", key.to_str().unwrap()];
        if pss {
            args.extend([
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:-1",
            ]);
        }
        args.extend(["-out", "kiosk-7.sig", "kiosk-7.conf"]);
        peer_ok(&ossl, &args, dir);
        fs::copy(&cert, dir.join("kiosk-7.cert")).unwrap();
        let out = stdout(&ok(verify(
            dir,
            "kiosk-7.conf",
            root.to_str().unwrap(),
            &["--json"],
        )));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["ok"], true, "{key:?}: {out}");
        assert_eq!(v["name"], "kiosk");
    }

    // cml fixes the PSS salt at the digest length: a 32-byte salt is refused.
    if let Some(p) = gyroidos_pss_pki() {
        let w = workdir();
        let dir = w.path();
        let key = p.join("ssig_cml.key");
        peer_ok(
            &ossl,
            &[
                "dgst",
                "-sha512",
                "-sign",
                key.to_str().unwrap(),
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:32",
                "-out",
                "kiosk-7.sig",
                "kiosk-7.conf",
            ],
            dir,
        );
        fs::copy(p.join("ssig_cml.cert"), dir.join("kiosk-7.cert")).unwrap();
        let root = p.join("ssig_rootca.cert");
        let err = fails(verify(dir, "kiosk-7.conf", root.to_str().unwrap(), &[]), 1);
        assert!(
            err.contains("RSA-PSS SHA-512 (MGF1-SHA-512, salt 64) signature does not verify"),
            "{err}"
        );
    }
}

#[test]
fn one_changed_byte_in_conf_or_image_fails_verification() {
    let w = workdir();
    let dir = w.path();
    let pki = pki("ec:prime256v1").to_str().unwrap();
    let root = role("ec:prime256v1", "ssig_rootca.cert");
    ok(run_in(
        dir,
        &[
            "guestos",
            "sign",
            "core-1.conf",
            "--role",
            "ssig_cml",
            "--dir",
            pki,
            "--images",
            ".",
        ],
    ));
    ok(verify(dir, "core-1.conf", &root, &["--images", "."]));

    // The conf: version 1 -> 2.
    let conf = fs::read(dir.join("core-1.conf")).unwrap();
    let mut bad = conf.clone();
    let pos = bad.windows(10).position(|w| w == b"version: 1").unwrap() + 9;
    bad[pos] = b'2';
    fs::write(dir.join("core-1.conf"), &bad).unwrap();
    let err = fails(verify(dir, "core-1.conf", &root, &[]), 1);
    assert!(
        err.contains(
            "core-1.sig: RSA-PSS SHA-512 (MGF1-SHA-512, salt 64) signature does not verify"
        ),
        "{err}"
    );
    assert!(!openssl_dgst_verify(dir, "core-1", PSS));
    fs::write(dir.join("core-1.conf"), &conf).unwrap();

    // An image: one byte flipped, same size.
    let img = dir.join("core-1/modules.img");
    let good = fs::read(&img).unwrap();
    let mut flipped = good.clone();
    flipped[4242] ^= 1;
    fs::write(&img, &flipped).unwrap();
    ok(verify(dir, "core-1.conf", &root, &[])); // the signature alone is still fine
    let err = fails(verify(dir, "core-1.conf", &root, &["--images", "."]), 1);
    assert!(
        err.contains("core-1.conf: mounts[2] modules.img: sha256 is"),
        "{err}"
    );
    fs::write(&img, &good).unwrap();

    // A missing image.
    fs::remove_file(dir.join("core-1/root.img")).unwrap();
    let err = fails(verify(dir, "core-1.conf", &root, &["--images", "."]), 1);
    assert!(err.contains("root.img not found"), "{err}");

    // The wrong trust root.
    let err = fails(
        verify(
            dir,
            "core-1.conf",
            &role("ec:prime256v1", "gen_rootca.cert"),
            &[],
        ),
        1,
    );
    assert!(err.contains("core-1.cert: "), "{err}");

    // A certificate file whose first certificate is not the signer.
    let chain = fs::read_to_string(dir.join("core-1.cert")).unwrap();
    let split = chain.find("-----BEGIN CERTIFICATE-----\n").unwrap();
    let second = chain[split + 10..].find("-----BEGIN").unwrap() + split + 10;
    fs::write(
        dir.join("core-1.cert"),
        format!("{}{}", &chain[second..], &chain[..second]),
    )
    .unwrap();
    let err = fails(verify(dir, "core-1.conf", &root, &[]), 1);
    assert!(err.contains("signature does not verify"), "{err}");
}

#[test]
fn sign_all_walks_the_directory() {
    let w = workdir();
    let dir = w.path();
    // A second GuestOS tree one level down, laid out the same way.
    fs::create_dir_all(dir.join("arm/core-1")).unwrap();
    fs::copy(dir.join("core-1.conf"), dir.join("arm/core-1.conf")).unwrap();
    fs::write(dir.join("arm/core-1/root.img"), data(5000, "arm-root")).unwrap();
    fs::write(
        dir.join("arm/core-1/modules.img"),
        data(5001, "arm-modules"),
    )
    .unwrap();
    let pki = pki("ec:prime256v1").to_str().unwrap();
    let out = run_in(
        dir,
        &[
            "guestos", "sign", "--all", ".", "--role", "ssig_cml", "--dir", pki, "--images", ".",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&ok(out).stdout).unwrap();
    let confs: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["conf"].as_str().unwrap())
        .collect();
    assert_eq!(
        confs,
        ["./arm/core-1.conf", "./core-1.conf", "./kiosk-7.conf"]
    );
    // Each conf took the images of its own NAME/ directory.
    assert_eq!(v[0]["images"][0]["path"], "./arm/core-1/root.img");
    assert_eq!(v[1]["images"][0]["path"], "./core-1/root.img");
    let root = role("ec:prime256v1", "ssig_rootca.cert");
    for name in ["arm/core-1", "core-1", "kiosk-7"] {
        assert!(openssl_dgst_verify(dir, name, &[]), "{name}");
        ok(verify(
            dir,
            &format!("{name}.conf"),
            &root,
            &["--images", "."],
        ));
    }

    // Images elsewhere: found by walking, but two candidates are refused.
    let other = tempfile::tempdir().unwrap();
    fs::create_dir_all(other.path().join("deploy/a/core-1")).unwrap();
    fs::create_dir_all(other.path().join("deploy/b/core-1")).unwrap();
    fs::copy(
        dir.join("core-1/root.img"),
        other.path().join("deploy/a/core-1/root.img"),
    )
    .unwrap();
    fs::copy(
        dir.join("core-1/root.img"),
        other.path().join("deploy/b/core-1/root.img"),
    )
    .unwrap();
    fs::copy(
        dir.join("core-1/modules.img"),
        other.path().join("deploy/a/core-1/modules.img"),
    )
    .unwrap();
    let images = other.path().join("deploy");
    let err = fails(
        run_in(
            dir,
            &[
                "guestos",
                "sign",
                "core-1.conf",
                "--role",
                "ssig_cml",
                "--dir",
                pki,
                "--images",
                images.to_str().unwrap(),
            ],
        ),
        2,
    );
    assert!(
        err.contains("root.img for core-1.conf (core-1) is ambiguous"),
        "{err}"
    );
    fs::remove_dir_all(other.path().join("deploy/b")).unwrap();
    ok(verify(
        dir,
        "core-1.conf",
        &root,
        &["--images", images.to_str().unwrap()],
    ));
}

#[test]
fn bad_inputs_fail_with_one_line_and_write_nothing() {
    let w = workdir();
    let dir = w.path();
    let pki = pki("ec:prime256v1").to_str().unwrap();
    let sign = |conf: &str, extra: &[&str]| {
        let mut args = vec!["guestos", "sign", conf, "--role", "ssig_cml", "--dir", pki];
        args.extend_from_slice(extra);
        run_in(dir, &args)
    };
    fs::write(
        dir.join("noversion.conf"),
        "name: \"x\"\nhardware: \"x86\"\ndescription { en: \"d\" }\n",
    )
    .unwrap();
    let err = fails(sign("noversion.conf", &[]), 2);
    assert!(
        err.contains("noversion.conf: missing required field 'version'"),
        "{err}"
    );
    fs::write(
        dir.join("broken.conf"),
        "name: \"x\"\nmounts {\n\timage_file: \"root\n}\n",
    )
    .unwrap();
    let err = fails(sign("broken.conf", &[]), 2);
    assert!(
        err.contains("broken.conf: line 3 col 14: unterminated string"),
        "{err}"
    );
    let err = fails(sign("missing.conf", &[]), 2);
    assert!(err.contains("missing.conf"), "{err}");
    let err = fails(sign("core-1.conf", &["--images", "nowhere"]), 2);
    assert!(err.contains("nowhere"), "{err}");
    // A batch with one bad conf signs none of them.
    let err = fails(
        run_in(
            dir,
            &[
                "guestos",
                "sign",
                "core-1.conf",
                "broken.conf",
                "--role",
                "ssig_cml",
                "--dir",
                pki,
                "--images",
                ".",
            ],
        ),
        2,
    );
    assert!(err.contains("broken.conf"), "{err}");
    for f in ["noversion.sig", "broken.sig", "core-1.sig", "core-1.cert"] {
        assert!(!dir.join(f).exists(), "{f}");
    }
    assert_eq!(
        fs::read(dir.join("core-1.conf")).unwrap(),
        fs::read(Path::new(TESTDATA).join("core-1.conf")).unwrap()
    );
    let leftovers: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());

    // Verify: no signature is an input error, not a verification result.
    let err = fails(
        verify(
            dir,
            "kiosk-7.conf",
            &role("ec:prime256v1", "ssig_rootca.cert"),
            &[],
        ),
        2,
    );
    assert!(err.contains("kiosk-7.sig"), "{err}");
}

#[test]
fn show_lists_the_mounts() {
    let out = stdout(&ok(run_in(
        Path::new(TESTDATA),
        &["guestos", "show", "core-1.conf"],
    )));
    assert!(out.starts_with("core-1.conf: core v1 (x86)"), "{out}");
    assert!(
        out.contains("mounts[0] root -> / (squashfs, SHARED_RW) (no size/hash yet)"),
        "{out}"
    );
    let v: serde_json::Value = serde_json::from_slice(
        &ok(run_in(
            Path::new(TESTDATA),
            &["guestos", "show", "kiosk-7.conf", "--json"],
        ))
        .stdout,
    )
    .unwrap();
    assert_eq!(v["mounts"][1]["id"], "mounts_setup[0]");
    assert_eq!(v["mounts"][0]["image_size"], 4096);
}

/// `pki init --key-type ec:secp384r1` still makes an RSA ssig_cml (cml checks
/// no other key type), and its signatures verify raw and as CMS.
#[test]
fn an_ec_pki_still_signs_guestos_with_rsa() {
    let w = workdir();
    let dir = w.path();
    let pki = pki("ec:secp384r1").to_str().unwrap();
    ok(run_in(
        dir,
        &[
            "guestos",
            "sign",
            "kiosk-7.conf",
            "--role",
            "ssig_cml",
            "--dir",
            pki,
            "--cms",
        ],
    ));
    assert!(openssl_dgst_verify(dir, "kiosk-7", &[]));
    openssl_cms_verify(dir, "kiosk-7", &role("ec:secp384r1", "ssig_rootca.cert"));
    ok(verify(
        dir,
        "kiosk-7.conf",
        &role("ec:secp384r1", "ssig_rootca.cert"),
        &[],
    ));
}

/// The confs of testdata/guestos/cml/: `accepted/` holds what cml's parser
/// loads, `refused/` what it refuses and `stricter/` what it loads but reads
/// otherwise than it looks (refused by us too). Each `VERDICTS` line names a
/// conf, what pki-signer must say and what cml does, from cml's parser source
/// (gyroidos/external_protobuf-c-text parse.re, protobuf-c's message check).
fn cml_corpus(sub: &str) -> Vec<(PathBuf, String)> {
    let dir = Path::new(TESTDATA).join("cml").join(sub);
    let mut listed = vec![];
    if sub != "accepted" {
        let verdicts = fs::read_to_string(dir.join("VERDICTS")).unwrap();
        for line in verdicts.lines().filter(|l| !l.starts_with('#')) {
            let mut cols = line.split('\t');
            let (name, want) = (cols.next().unwrap(), cols.next().unwrap());
            assert!(cols.next().is_some_and(|c| !c.is_empty()), "{line}");
            listed.push((dir.join(name), want.to_string()));
        }
    }
    let mut confs: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    confs.sort();
    if sub == "accepted" {
        return confs.into_iter().map(|p| (p, String::new())).collect();
    }
    let mut names: Vec<&PathBuf> = listed.iter().map(|(p, _)| p).collect();
    names.sort();
    assert_eq!(names, confs.iter().collect::<Vec<_>>(), "{sub}/VERDICTS");
    listed
}

#[test]
fn cml_corpus_accepted_confs_sign_verify_and_show_clean() {
    let pki = pki("rsa:2048").to_str().unwrap();
    let root = role("rsa:2048", "ssig_rootca.cert");
    let all = cml_corpus("accepted");
    assert!(all.len() >= 10);
    for (conf, _) in all {
        let name = conf.file_name().unwrap().to_str().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::copy(&conf, dir.join(name)).unwrap();
        let show = ok(run_in(dir, &["guestos", "show", name]));
        assert!(
            !stderr(&show).contains("cml would not load"),
            "{name}: {}",
            stderr(&show)
        );
        let v: serde_json::Value =
            serde_json::from_slice(&ok(run_in(dir, &["guestos", "show", name, "--json"])).stdout)
                .unwrap();
        assert_eq!(v["cml_loads"], true, "{name}");
        ok(run_in(
            dir,
            &["guestos", "sign", name, "--role", "ssig_cml", "--dir", pki],
        ));
        ok(verify(dir, name, &root, &[]));
        // An independent text-format parser reads it too.
        if let Some(protoc) = peer("protoc") {
            let o = std::process::Command::new(protoc)
                .args(["--encode=GuestOSConfig", "-I", TESTDATA, "guestos.proto"])
                .stdin(fs::File::open(dir.join(name)).unwrap())
                .output()
                .unwrap();
            assert!(o.status.success(), "protoc: {name}: {}", stderr(&o));
        }
    }
}

#[test]
fn cml_corpus_refused_confs_are_refused_by_sign_verify_and_show() {
    let pki = pki("rsa:2048");
    let root = role("rsa:2048", "ssig_rootca.cert");
    let key = role("rsa:2048", "ssig_cml.key");
    let mut all = cml_corpus("refused");
    assert!(all.len() >= 40);
    all.extend(cml_corpus("stricter"));
    for (conf, want) in all {
        let name = conf.file_name().unwrap().to_str().unwrap();
        let stem = name.trim_end_matches(".conf");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::copy(&conf, dir.join(name)).unwrap();
        let reason = format!("{name}: {want}");

        // sign: exit 2, the reason, nothing written.
        let err = fails(
            run_in(
                dir,
                &[
                    "guestos",
                    "sign",
                    name,
                    "--role",
                    "ssig_cml",
                    "--dir",
                    pki.to_str().unwrap(),
                    "--cms",
                ],
            ),
            2,
        );
        assert!(err.contains(&reason), "sign {name}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert_eq!(
            fs::read_dir(dir).unwrap().count(),
            1,
            "{name}: files written"
        );
        assert_eq!(fs::read(dir.join(name)).unwrap(), fs::read(&conf).unwrap());

        // verify of a valid signature made the GyroidOS way: exit 1, the reason.
        peer_ok(
            &openssl(),
            &[
                "dgst",
                "-sha512",
                "-sign",
                &key,
                "-sigopt",
                PSS[0],
                "-sigopt",
                PSS[1],
                "-out",
                &format!("{stem}.sig"),
                name,
            ],
            dir,
        );
        fs::copy(
            role("rsa:2048", "ssig_cml.cert"),
            dir.join(format!("{stem}.cert")),
        )
        .unwrap();
        let err = fails(verify(dir, name, &root, &[]), 1);
        assert!(err.contains(&reason), "verify {name}: {err}");

        // show: lenient, but says cml would not load it (or fails with the reason).
        let o = run_in(dir, &["guestos", "show", name]);
        let e = stderr(&o);
        if o.status.success() {
            assert!(
                e.contains("cml would not load this conf") && e.contains(&want),
                "show {name}: {e}"
            );
        } else {
            assert!(e.contains(&reason), "show {name}: {e}");
        }
    }
}

#[test]
fn ec_signer_keys_are_refused_as_cml_does() {
    // ssig is not a GuestOS role: with --key-type ec it is EC.
    let p = pki("ec:prime256v1");
    let (key, cert) = (p.join("ssig.key"), p.join("ssig.cert"));
    let w = workdir();
    let dir = w.path();
    let err = fails(
        run_in(
            dir,
            &[
                "guestos",
                "sign",
                "core-1.conf",
                "--key",
                key.to_str().unwrap(),
                "--cert",
                cert.to_str().unwrap(),
                "--images",
                ".",
            ],
        ),
        2,
    );
    assert!(
        err.contains("EC key: cml verifies GuestOS signatures only with RSA (PKCS#1 v1.5) or RSA-PSS keys; any other key is \"Unsupported key type\""),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!dir.join("core-1.sig").exists() && !dir.join("core-1.cert").exists());
    assert_eq!(
        fs::read(dir.join("core-1.conf")).unwrap(),
        fs::read(Path::new(TESTDATA).join("core-1.conf")).unwrap()
    );
    // An ECDSA signature that openssl makes and accepts is refused by verify.
    peer_ok(
        &openssl(),
        &[
            "dgst",
            "-sha512",
            "-sign",
            key.to_str().unwrap(),
            "-out",
            "core-1.sig",
            "core-1.conf",
        ],
        dir,
    );
    fs::copy(&cert, dir.join("core-1.cert")).unwrap();
    assert!(openssl_dgst_verify(dir, "core-1", &[]));
    let root = p.join("ssig_rootca.cert");
    let err = fails(verify(dir, "core-1.conf", root.to_str().unwrap(), &[]), 1);
    assert!(
        err.contains("core-1.sig: EC signer key: ") && err.contains("Unsupported key type"),
        "{err}"
    );
}

#[test]
fn pki_init_gives_the_guestos_roles_rsa_pss_keys() {
    // --key-type ec: the GuestOS roles are RSA-PSS (as gen_dev_certs.sh
    // makes them), the others EC; ssig_subca_cml signs with RSASSA-PSS.
    let p = pki("ec:prime256v1");
    for (cert, want, signed) in [
        ("ssig_cml.cert", "rsassaPss", "rsassaPss"),
        ("ssig_subca_cml.cert", "rsassaPss", "ecdsa-with-SHA256"),
        ("ssig.cert", "id-ecPublicKey", "ecdsa-with-SHA256"),
    ] {
        let text = peer_ok(
            &openssl(),
            &[
                "x509",
                "-noout",
                "-text",
                "-in",
                p.join(cert).to_str().unwrap(),
            ],
            Path::new("/"),
        );
        assert!(
            text.contains(&format!("Public Key Algorithm: {want}")),
            "{cert}: {text}"
        );
        assert!(
            text.contains(&format!("Signature Algorithm: {signed}")),
            "{cert}: {text}"
        );
    }
    // The key files are typed id-RSASSA-PSS too (PKCS#8), as openssl's
    // `req -newkey rsa-pss` writes them.
    for key in ["ssig_cml.key", "ssig_subca_cml.key"] {
        let asn1 = peer_ok(
            &openssl(),
            &["asn1parse", "-in", p.join(key).to_str().unwrap()],
            Path::new("/"),
        );
        assert!(
            asn1.lines().take(4).any(|l| l.contains(":rsassaPss")),
            "{key}: {asn1}"
        );
    }
    // A profile asking for an EC GuestOS signing key is refused, with the reason.
    let tmp = tempfile::tempdir().unwrap();
    for r in ["ssig_cml", "ssig_subca_cml"] {
        fs::write(
            tmp.path().join("p.json"),
            format!("{{\"roles\": {{\"{r}\": {{\"key_type\": \"ec:prime256v1\"}}}}}}"),
        )
        .unwrap();
        let err = fails(
            run_in(tmp.path(), &["pki", "init", "--profile", "p.json"]),
            2,
        );
        assert!(
            err.contains(&format!(
                "role '{r}': key_type ec:prime256v1: GuestOS signing keys must be RSA"
            )) && err.contains("Unsupported key type"),
            "{err}"
        );
        assert!(!tmp.path().join("pki").exists());
    }
}

#[test]
fn images_are_found_by_name_and_version_from_the_contents() {
    let w = workdir();
    let dir = w.path();
    let pki = pki("rsa:2048").to_str().unwrap();
    // foo.conf holds core v1: cml reads core-1/, never foo/.
    fs::copy(dir.join("core-1.conf"), dir.join("foo.conf")).unwrap();
    fs::create_dir_all(dir.join("foo")).unwrap();
    fs::write(dir.join("foo/root.img"), data(999, "decoy")).unwrap();
    let sign = |conf: &str, images: &str, extra: &[&str]| {
        let mut args = vec![
            "guestos", "sign", conf, "--role", "ssig_cml", "--dir", pki, "--images", images,
            "--json",
        ];
        args.extend_from_slice(extra);
        run_in(dir, &args)
    };
    let v: serde_json::Value =
        serde_json::from_slice(&ok(sign("foo.conf", ".", &[])).stdout).unwrap();
    assert_eq!(v[0]["images"][0]["path"], "./core-1/root.img");
    assert_eq!(v[0]["images"][1]["path"], "./core-1/modules.img");
    // The image directory itself, named NAME-VERSION (what the layer's class passes).
    fs::create_dir_all(dir.join("confs")).unwrap();
    fs::copy(dir.join("kiosk-7.conf"), dir.join("confs/kiosk-7.conf")).unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&ok(sign("confs/kiosk-7.conf", "kiosk-7", &[])).stdout).unwrap();
    assert_eq!(v[0]["images"][0]["path"], "kiosk-7/root.img");

    // A missing image: exit 2 naming the path cml reads, nothing written.
    fs::remove_file(dir.join("core-1/modules.img")).unwrap();
    fs::remove_file(dir.join("core-1.sig")).ok();
    let before = fs::read(dir.join("core-1.conf")).unwrap();
    let err = fails(sign("core-1.conf", ".", &[]), 2);
    assert!(
        err.contains("core-1.conf: mounts[2] (OVERLAY_RO): image ./core-1/modules.img not found"),
        "{err}"
    );
    assert!(!dir.join("core-1.sig").exists());
    assert_eq!(fs::read(dir.join("core-1.conf")).unwrap(), before);
    // Unless asked for: then a warning, and the other image is filled.
    let o = ok(sign("core-1.conf", ".", &["--allow-missing-images"]));
    assert!(
        stderr(&o).contains("no modules.img (--allow-missing-images)"),
        "{}",
        stderr(&o)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["images"][0]["path"], "./core-1/root.img");
    assert!(v[0]["images"][1]["path"].is_null());
}

/// GyroidOS's sign_config.sh, step by step, on a `pki init` PKI: `openssl
/// dgst -sha512 -sign ssig_cml.key -sigopt rsa_padding_mode:pss -sigopt
/// rsa_pss_saltlen:-1`, then `cat ssig_cml.cert > NAME.cert`; and its --cms
/// branch, which adds `-keyopt rsa_padding_mode:pss` when `openssl x509
/// -text` says rsassaPss. cml takes the padding from the certificate's key
/// type: PSS with salt = digest length.
#[test]
fn gyroidos_sign_config_steps_work_on_a_pki_init_pki() {
    let ossl = openssl();
    for kt in ["rsa:2048", "ec:prime256v1"] {
        let p = pki(kt);
        let (key, cert, root) = (
            p.join("ssig_cml.key"),
            p.join("ssig_cml.cert"),
            p.join("ssig_rootca.cert"),
        );
        let (key, cert, root) = (
            key.to_str().unwrap(),
            cert.to_str().unwrap(),
            root.to_str().unwrap(),
        );
        let w = workdir();
        let dir = w.path();
        // do_sign_rsa_pss (the test password is ignored for a plain key).
        let o = std::process::Command::new(&ossl)
            .args([
                "dgst",
                "-sha512",
                "-sign",
                key,
                "-sigopt",
                PSS[0],
                "-sigopt",
                PSS[1],
                "-out",
                "kiosk-7.sig",
                "-passin",
                "env:GYROIDOS_TEST_PASSWD_PKI",
                "kiosk-7.conf",
            ])
            .env("GYROIDOS_TEST_PASSWD_PKI", "pass")
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        fs::copy(cert, dir.join("kiosk-7.cert")).unwrap();
        // The padding cml derives from the key type, and no other.
        assert!(openssl_dgst_verify(dir, "kiosk-7", PSS), "{kt}");
        assert!(!openssl_dgst_verify(
            dir,
            "kiosk-7",
            &["rsa_padding_mode:pkcs1"]
        ));
        let text = peer_ok(&ossl, &["x509", "-in", cert, "-noout", "-text"], dir);
        assert!(text.contains("Public Key Algorithm: rsassaPss"), "{text}");
        assert!(text.contains("Signature Algorithm: rsassaPss"), "{text}");
        openssl_verify_chain(dir, root, "kiosk-7");
        let ours = stdout(&ok(verify(dir, "kiosk-7.conf", root, &[])));
        assert!(
            ours.contains("RSA-PSS SHA-512 (MGF1-SHA-512, salt 64)") && ours.contains(": OK"),
            "{ours}"
        );

        // do_sign_cms: the key type grep finds rsassaPss, so -keyopt pss
        // (the chain from the sub CA's file: OpenSSL 3.0 refuses the signer
        // certificate twice, as the script's --certfile of the chain gives it).
        let sub = p.join("ssig_subca_cml.cert");
        peer_ok(
            &ossl,
            &[
                "cms",
                "-sign",
                "-outform",
                "DER",
                "-md",
                "sha512",
                "-signer",
                cert,
                "-inkey",
                key,
                "-keyopt",
                "rsa_padding_mode:pss",
                "-out",
                "kiosk-7.p7s",
                "-in",
                "kiosk-7.conf",
                "-binary",
                "-certfile",
                sub.to_str().unwrap(),
            ],
            dir,
        );
        openssl_cms_verify(dir, "kiosk-7", root);
    }
}

/// Images laid out for dm-verity: whole 4096-byte blocks (one block, two
/// hash levels, one level), in cml's store layout.
fn verity_workdir() -> tempfile::TempDir {
    let w = workdir();
    for (dir, img, blocks) in [
        ("core-1", "root", 129usize),
        ("core-1", "modules", 3),
        ("kiosk-7", "root", 300),
        ("kiosk-7", "setup", 1),
    ] {
        fs::write(
            w.path().join(dir).join(format!("{img}.img")),
            data(blocks * 4096, img),
        )
        .unwrap();
    }
    w
}

fn verity_sign(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let pki = pki("rsa:2048").to_str().unwrap();
    let mut args = vec![
        "guestos",
        "sign",
        "core-1.conf",
        "kiosk-7.conf",
        "--role",
        "ssig_cml",
        "--dir",
        pki,
        "--images",
        ".",
        "--json",
    ];
    args.extend_from_slice(extra);
    serde_json::from_slice(&ok(run_in(dir, &args)).stdout).unwrap()
}

#[test]
fn verity_hash_images_are_what_veritysetup_verifies_and_reproducible() {
    let w = verity_workdir();
    let dir = w.path();
    let v = verity_sign(dir, &["--verity"]);
    // SHARED and SHARED_RW mounts get a hash image; OVERLAY_RO does not
    // (cml finds hash images only for the first two).
    let mut roots = vec![];
    for r in v.as_array().unwrap() {
        for f in r["images"].as_array().unwrap() {
            let img = PathBuf::from(f["path"].as_str().unwrap());
            let hash_img =
                img.with_file_name(format!("{}.hash.img", f["image_file"].as_str().unwrap()));
            if f["mount_type"] == "OVERLAY_RO" {
                assert!(f["image_verity_sha256"].is_null(), "{f}");
                assert!(!dir.join(&hash_img).exists());
                continue;
            }
            let root = f["image_verity_sha256"].as_str().unwrap().to_string();
            roots.push((img, hash_img, root));
        }
    }
    assert_eq!(roots.len(), 3);
    let veritysetup = peer("veritysetup");
    for (img, hash_img, root) in &roots {
        let conf = fs::read_to_string(dir.join(if img.starts_with("./core-1") {
            "core-1.conf"
        } else {
            "kiosk-7.conf"
        }))
        .unwrap();
        assert!(
            conf.contains(&format!("image_verity_sha256: \"{root}\"")),
            "{conf}"
        );
        let Some(vs) = &veritysetup else { continue };
        let (i, h) = (img.to_str().unwrap(), hash_img.to_str().unwrap());
        peer_ok(vs, &["verify", i, h, root], dir);
        // Byte for byte what veritysetup format writes with the same salt and UUID.
        let dump = peer_ok(vs, &["dump", h], dir);
        let field = |k: &str| {
            dump.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap()
                .trim()
                .to_string()
        };
        let (salt, uuid) = (field("Salt:"), field("UUID:"));
        assert_eq!(field("Hash algorithm:"), "sha256");
        assert_eq!(field("Data block size:"), "4096");
        let out = peer_ok(
            vs,
            &[
                "format",
                &format!("--salt={salt}"),
                &format!("--uuid={uuid}"),
                i,
                "ref.hash.img",
            ],
            dir,
        );
        assert!(out.contains(&format!("Root hash:      \t{root}")), "{out}");
        assert_eq!(
            fs::read(dir.join("ref.hash.img")).unwrap(),
            fs::read(dir.join(hash_img)).unwrap(),
            "{h}"
        );
        fs::remove_file(dir.join("ref.hash.img")).unwrap();
        // A wrong root hash is refused.
        let mut bad = root.clone();
        bad.replace_range(..1, if bad.starts_with('0') { "1" } else { "0" });
        let o = std::process::Command::new(vs)
            .args(["verify", i, h, &bad])
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(!o.status.success());
    }
    let root = role("rsa:2048", "ssig_rootca.cert");
    for conf in ["core-1.conf", "kiosk-7.conf"] {
        ok(verify(dir, conf, &root, &["--images", "."]));
    }

    // Two builds of the same inputs: the same hash images and confs.
    let w2 = verity_workdir();
    verity_sign(w2.path(), &["--verity"]);
    for f in [
        "core-1.conf",
        "kiosk-7.conf",
        "core-1/root.hash.img",
        "kiosk-7/root.hash.img",
        "kiosk-7/setup.hash.img",
    ] {
        assert_eq!(
            fs::read(dir.join(f)).unwrap(),
            fs::read(w2.path().join(f)).unwrap(),
            "{f}"
        );
    }
    // Signing again without --verity keeps the verity values (the confs
    // carry image_verity_sha256 now) and changes nothing.
    let before = fs::read(dir.join("core-1/root.hash.img")).unwrap();
    let v = verity_sign(dir, &[]);
    assert_eq!(v[0]["conf_updated"], false, "{v}");
    assert_eq!(fs::read(dir.join("core-1/root.hash.img")).unwrap(), before);

    // A changed image: verify finds the stale hash tree; signing renews it.
    let img = dir.join("core-1/root.img");
    let mut b = fs::read(&img).unwrap();
    b[4096 * 100 + 5] ^= 1;
    fs::write(&img, &b).unwrap();
    let err = fails(verify(dir, "core-1.conf", &root, &["--images", "."]), 1);
    assert!(err.contains("core-1.conf: mounts[0] root.img: "), "{err}");
    let v = verity_sign(dir, &[]);
    assert_eq!(v[0]["conf_updated"], true);
    ok(verify(dir, "core-1.conf", &root, &["--images", "."]));
    // A damaged hash image is found by verify.
    let h = dir.join("core-1/root.hash.img");
    let mut t = fs::read(&h).unwrap();
    let last = t.len() - 4096;
    t[last] ^= 1;
    fs::write(&h, &t).unwrap();
    let err = fails(verify(dir, "core-1.conf", &root, &["--images", "."]), 1);
    assert!(
        err.contains("root.hash.img: the hash tree does not match the image"),
        "{err}"
    );
}

#[test]
fn verity_is_refused_where_cml_could_not_open_it() {
    let pki = pki("rsa:2048").to_str().unwrap();
    let sign = |dir: &Path, conf: &str, extra: &[&str]| {
        let mut args = vec![
            "guestos", "sign", conf, "--role", "ssig_cml", "--dir", pki, "--images", ".",
        ];
        args.extend_from_slice(extra);
        run_in(dir, &args)
    };
    // An image that is not whole 4096-byte blocks (workdir's core-1/root.img is 300000 bytes).
    let w = workdir();
    let dir = w.path();
    let err = fails(sign(dir, "core-1.conf", &["--verity"]), 2);
    assert!(
        err.contains(
            "core-1/root.img: no dm-verity hash image: its size is not a multiple of 4096 bytes"
        ) && err.contains("Data device is too small"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!dir.join("core-1.sig").exists() && !dir.join("core-1/root.hash.img").exists());
    let leftovers: Vec<_> = fs::read_dir(dir.join("core-1"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // image_verity_sha256 on a mount type cml has no hash image for.
    let w = verity_workdir();
    let dir = w.path();
    let conf = fs::read_to_string(dir.join("core-1.conf"))
        .unwrap()
        .replace(
            "\tmount_type: OVERLAY_RO\n",
            "\tmount_type: OVERLAY_RO\n\timage_verity_sha256: \"\"\n",
        );
    fs::write(dir.join("core-1.conf"), &conf).unwrap();
    let err = fails(sign(dir, "core-1.conf", &[]), 2);
    assert!(
        err.contains("mounts[2] (OVERLAY_RO): image_verity_sha256 is set, but cml sets up dm-verity only for SHARED and SHARED_RW mounts"),
        "{err}"
    );

    // An empty image_verity_sha256 on a SHARED_RW mount: filled without --verity.
    let conf = fs::read_to_string(Path::new(TESTDATA).join("core-1.conf"))
        .unwrap()
        .replace(
            "\tmount_type: SHARED_RW\n",
            "\tmount_type: SHARED_RW\n\timage_verity_sha256: \"\"\n",
        );
    fs::write(dir.join("core-1.conf"), &conf).unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&ok(sign(dir, "core-1.conf", &["--json"])).stdout).unwrap();
    let root = v[0]["images"][0]["image_verity_sha256"].as_str().unwrap();
    assert_eq!(root.len(), 64);
    assert!(dir.join("core-1/root.hash.img").exists());
    assert!(!dir.join("core-1/modules.hash.img").exists());
}
