//! Release mode (`PKI_SIGNER_RELEASE=1` or `--release`): every signing
//! command refuses development keys with one line and exit 2 and writes
//! nothing, and signs with production keys. The production PKI here is made
//! with openssl (GyroidOS file names, the root key kept outside the directory),
//! so nothing about it comes from pki-signer.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::*;

/// The marker `pki init` puts into development certificates (README, "Release mode").
const MARKER: &str = "2.25.254591559235912200184357140465293194856";
const OWNER: &str = "6e2d1f0b-3c4a-4b8e-9f5d-2a7c8e1b4d60";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// pki-signer with only the PKI_SIGNER_* variables given.
fn run_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    c.args(args).current_dir(cwd);
    for (k, _) in std::env::vars() {
        if k.starts_with("PKI_SIGNER_") && k != "PKI_SIGNER_REQUIRE_PEERS" {
            c.env_remove(k);
        }
    }
    c.envs(env.iter().copied());
    c.output().expect("run pki-signer")
}

/// The two ways to turn release mode on.
#[derive(Clone, Copy, Debug)]
enum Mode {
    Env,
    Flag,
}
const MODES: [Mode; 2] = [Mode::Env, Mode::Flag];

fn run_release(cwd: &Path, args: &[&str], mode: Mode, env: &[(&str, &str)]) -> Output {
    let mut env = env.to_vec();
    let mut args = args.to_vec();
    match mode {
        Mode::Env => env.push(("PKI_SIGNER_RELEASE", "1")),
        Mode::Flag => args.push("--release"),
    }
    run_env(cwd, &args, &env)
}

/// Release mode refuses: exit 2, one line naming `names`, and none of `outputs` appears.
#[track_caller]
fn refused(cwd: &Path, args: &[&str], env: &[(&str, &str)], names: &[&str], outputs: &[&str]) {
    for mode in MODES {
        let e = fails(run_release(cwd, args, mode, env), 2);
        assert!(e.contains("release mode"), "{mode:?}: {e}");
        for n in names {
            assert!(e.contains(n), "{mode:?}: '{n}' not in {e}");
        }
        for o in outputs {
            assert!(!cwd.join(o).exists(), "{mode:?}: {o} was written");
        }
    }
}

/// The development PKI: `pki init` (EC, with the UEFI keys), development in pki.json.
fn dev() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let t = tempfile::tempdir().unwrap().keep();
        ok(run_in(
            &t,
            &[
                "pki",
                "init",
                "--dir",
                "dev",
                "--key-type",
                "ec:prime256v1",
                "--uefi",
            ],
        ));
        t.join("dev")
    })
}

fn ossl(dir: &Path, args: &[&str]) {
    peer_ok(&openssl(), args, dir);
}

const CA_EXT: &str = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,digitalSignature,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n";

/// Certify `key` (a PEM key file in `dir`) as `out` under the production
/// root, with extra extension lines `ext`.
fn prod_issue(dir: &Path, key: &str, cn: &str, out: &str, ext: &str) {
    let root = prod();
    let csr = format!("{out}.csr");
    let extfile = format!("{out}.ext");
    fs::write(dir.join(&extfile), format!("{CA_EXT}{ext}")).unwrap();
    ossl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            key,
            "-subj",
            &format!("/O=Example Production/CN={cn}"),
            "-out",
            &csr,
        ],
    );
    ossl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            s(&root.join("ssig_rootca.cert")),
            "-CAkey",
            s(&root.join("../offline/root.key")),
            "-set_serial",
            &format!("0x{}", &sha_hex(out.as_bytes())[..16]),
            "-days",
            "30",
            "-sha256",
            "-extfile",
            &extfile,
            "-out",
            out,
        ],
    );
}

fn sha_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The production PKI, by openssl, in GyroidOS's layout as a release PKI has
/// it: `ssig_rootca.cert`, `ssig_subca.{key,cert}` and a UEFI `KEK.{key,crt}`
/// (RSA-2048); the root key lives in `../offline`, not beside them.
fn prod() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let t = tempfile::tempdir().unwrap().keep();
        let p = t.join("prod");
        fs::create_dir_all(&p).unwrap();
        fs::create_dir_all(t.join("offline")).unwrap();
        ossl(
            &p,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "../offline/root.key",
                "-out",
                "ssig_rootca.cert",
                "-subj",
                "/O=Example Production/CN=Production Root CA",
                "-days",
                "30",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        ossl(
            &p,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "ssig_subca.key",
            ],
        );
        ossl(
            &p,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "KEK.key",
                "-out",
                "KEK.crt",
                "-subj",
                "/CN=Production KEK",
                "-days",
                "30",
            ],
        );
        p
    })
    .as_path()
}

/// prod() with its sub CA certified (separate from prod() because issuing needs prod()).
fn prod_pki() -> &'static Path {
    static D: OnceLock<()> = OnceLock::new();
    let p = prod();
    D.get_or_init(|| {
        prod_issue(
            p,
            "ssig_subca.key",
            "Production Signing Sub CA",
            "ssig_subca.cert",
            "",
        )
    });
    p
}

/// The production PKI with an RSA `ssig_cml` (cml verifies GuestOS
/// signatures only with RSA keys).
fn prod_cml() -> &'static Path {
    static D: OnceLock<()> = OnceLock::new();
    let p = prod_pki();
    D.get_or_init(|| {
        openssl_rsa_key(p, "ssig_cml.key");
        prod_issue(
            p,
            "ssig_cml.key",
            "Production GuestOS Signing",
            "ssig_cml.cert",
            "",
        )
    });
    p
}

/// A directory as GyroidOS's gen_dev_certs.sh leaves it, made with openssl:
/// no pki.json, the root CA's key beside the signing keys, the root appended
/// to the sub CA's file.
fn gyroidos_dev() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let t = tempfile::tempdir().unwrap().keep();
        let g = t.join("test_certificates");
        fs::create_dir_all(&g).unwrap();
        ossl(
            &g,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ssig_rootca.key",
                "-out",
                "ssig_rootca.cert",
                "-subj",
                "/C=DE/O=OSS Release/OU=Development/CN=GyroidOS Software Signing Root CA",
                "-days",
                "30",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        fs::write(g.join("ca.ext"), CA_EXT).unwrap();
        for (name, cn) in [
            ("ssig_subca", "GyroidOS Software Signing Sub CA"),
            ("ssig_subca_cml", "GyroidOS CML Signing Sub CA"),
        ] {
            ossl(
                &g,
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-keyout",
                    &format!("{name}.key"),
                    "-subj",
                    &format!("/C=DE/O=OSS Release/OU=Development/CN={cn}"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            ossl(
                &g,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ssig_rootca.cert",
                    "-CAkey",
                    "ssig_rootca.key",
                    "-CAcreateserial",
                    "-days",
                    "30",
                    "-extfile",
                    "ca.ext",
                    "-out",
                    &format!("{name}.cert"),
                ],
            );
            fs::remove_file(g.join(format!("{name}.csr"))).unwrap();
            // GyroidOS appends the root to the sub CA's file.
            let mut pem = fs::read(g.join(format!("{name}.cert"))).unwrap();
            pem.extend(fs::read(g.join("ssig_rootca.cert")).unwrap());
            fs::write(g.join(format!("{name}.cert")), pem).unwrap();
        }
        fs::remove_file(g.join("ca.ext")).unwrap();
        let _ = fs::remove_file(g.join("ssig_rootca.srl"));
        assert!(!g.join("pki.json").exists());
        g
    })
}

fn efi(dir: &Path) -> Option<()> {
    fs::copy(systemd_boot()?, dir.join("a.efi")).unwrap();
    Some(())
}

fn sbverify_ok(cert: &Path, file: &Path) {
    if let Some(sb) = peer("sbverify") {
        peer_ok(&sb, &["--cert", s(cert), s(file)], Path::new("."));
    }
}

// ---------------------------------------------------------------------------
// pe sign

#[test]
fn pe_sign_refuses_development_keys_and_signs_with_production_keys() {
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    let Some(()) = efi(w) else { return };
    let d = dev();
    // A role of a pki.json "development": true PKI.
    refused(
        w,
        &[
            "pe",
            "sign",
            "a.efi",
            "-o",
            "out.efi",
            "--role",
            "ssig_subca",
            "--dir",
            s(d),
        ],
        &[],
        &[
            "role 'ssig_subca'",
            "ssig_subca.key",
            "\"development\": true",
        ],
        &["out.efi"],
    );
    // The same files given as --key/--cert.
    let key = d.join("ssig_subca.key");
    let cert = d.join("ssig_subca.cert");
    refused(
        w,
        &[
            "pe",
            "sign",
            "a.efi",
            "-o",
            "out.efi",
            "--key",
            s(&key),
            "--cert",
            s(&cert),
        ],
        &[],
        &[&format!("key {}", key.display()), "development PKI"],
        &["out.efi"],
    );
    // Without release mode the development PKI signs as always.
    ok(run_env(
        w,
        &[
            "pe",
            "sign",
            "a.efi",
            "-o",
            "dev.efi",
            "--role",
            "ssig_subca",
            "--dir",
            s(d),
        ],
        &[],
    ));

    // The production PKI (openssl, GyroidOS names, no root key in it) signs.
    let p = prod_pki();
    for mode in MODES {
        let _ = fs::remove_file(w.join("out.efi"));
        ok(run_release(
            w,
            &[
                "pe",
                "sign",
                "a.efi",
                "-o",
                "out.efi",
                "--role",
                "ssig_subca",
                "--dir",
                s(p),
            ],
            mode,
            &[],
        ));
        sbverify_ok(&p.join("ssig_subca.cert"), &w.join("out.efi"));
    }
}

#[test]
fn a_development_key_under_a_production_issued_certificate_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    let Some(()) = efi(w) else { return };
    let d = dev();
    // The development ssig_subca key, copied out of the PKI and certified by
    // the production root: no file of it is in a development directory and
    // its certificate has no marker. Its public key gives it away.
    let moved = w.join("moved");
    fs::create_dir(&moved).unwrap();
    fs::copy(d.join("ssig_subca.key"), moved.join("ssig_subca.key")).unwrap();
    prod_pki();
    prod_issue(
        &moved,
        "ssig_subca.key",
        "Production Signing Sub CA",
        "ssig_subca.cert",
        "",
    );
    let args = [
        "pe",
        "sign",
        "a.efi",
        "-o",
        "out.efi",
        "--key",
        "moved/ssig_subca.key",
        "--cert",
        "moved/ssig_subca.cert",
    ];
    // The development PKI is known from --dir, or $PKI_SIGNER_DIR (the layer exports it).
    let mut with_dir = args.to_vec();
    with_dir.extend(["--dir", s(d)]);
    refused(
        w,
        &with_dir,
        &[],
        &[
            "key moved/ssig_subca.key",
            "moved/ssig_subca.cert",
            "its public key is that of development certificate",
            "CN=Software Signing Sub CA",
        ],
        &["out.efi"],
    );
    refused(
        w,
        &args,
        &[("PKI_SIGNER_DIR", s(d))],
        &["its public key is that of development certificate"],
        &["out.efi"],
    );
}

#[test]
fn a_gyroidos_gen_dev_certs_directory_without_pki_json_is_development() {
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    let Some(()) = efi(w) else { return };
    let g = gyroidos_dev();
    refused(
        w,
        &[
            "pe",
            "sign",
            "a.efi",
            "-o",
            "out.efi",
            "--role",
            "ssig_subca",
            "--dir",
            s(g),
        ],
        &[],
        &["role 'ssig_subca'", "gen_dev_certs.sh", "ssig_rootca.key"],
        &["out.efi"],
    );
    let key = g.join("ssig_subca_cml.key");
    let cert = g.join("ssig_subca_cml.cert");
    refused(
        w,
        &[
            "pe",
            "sign",
            "a.efi",
            "-o",
            "out.efi",
            "--key",
            s(&key),
            "--cert",
            s(&cert),
        ],
        &[],
        &["ssig_subca_cml.key", "gen_dev_certs.sh"],
        &["out.efi"],
    );
    // The same layout without the root key is how GyroidOS links a release
    // PKI: prod_pki() is one, and it signs (see the pe sign test).
}

#[test]
fn a_certificate_with_the_development_marker_is_refused_wherever_it_lies() {
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    let Some(()) = efi(w) else { return };
    // pki init's certificates carry the marker: copied out of the PKI, they are still refused.
    let d = dev();
    let out = peer_ok(
        &openssl(),
        &[
            "x509",
            "-in",
            s(&d.join("ssig_subca.cert")),
            "-noout",
            "-text",
        ],
        w,
    );
    assert!(out.contains("X509v3 Certificate Policies"), "{out}");
    assert!(out.contains(&format!("Policy: {MARKER}")), "{out}");
    let copy = w.join("copy");
    fs::create_dir(&copy).unwrap();
    for f in ["ssig_subca.key", "ssig_subca.cert"] {
        fs::copy(d.join(f), copy.join(f)).unwrap();
    }
    refused(
        w,
        &[
            "pe",
            "sign",
            "a.efi",
            "-o",
            "out.efi",
            "--key",
            "copy/ssig_subca.key",
            "--cert",
            "copy/ssig_subca.cert",
        ],
        &[],
        &[
            "copy/ssig_subca.cert",
            "carries the development marker",
            MARKER,
        ],
        &["out.efi"],
    );
    // A certificate openssl made with the marker policy, for a fresh key under
    // the production root: the marker alone is enough.
    let m = w.join("marked");
    fs::create_dir(&m).unwrap();
    ossl(
        &m,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "k.pem",
        ],
    );
    prod_pki();
    prod_issue(
        &m,
        "k.pem",
        "Marked",
        "c.pem",
        &format!("certificatePolicies={MARKER}\n"),
    );
    let args = [
        "pe",
        "sign",
        "a.efi",
        "-o",
        "out.efi",
        "--key",
        "marked/k.pem",
        "--cert",
        "marked/c.pem",
    ];
    refused(
        w,
        &args,
        &[],
        &["key marked/k.pem", "carries the development marker"],
        &["out.efi"],
    );
    // Outside release mode it signs.
    ok(run_env(w, &args, &[]));
}

// ---------------------------------------------------------------------------
// efivar auth

#[test]
fn efivar_auth_refuses_development_keys_and_signs_with_production_keys() {
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    let d = dev();
    let p = prod_pki();
    ok(run_env(
        w,
        &[
            "efivar",
            "esl",
            s(&p.join("ssig_subca.cert")),
            "--owner",
            OWNER,
            "-o",
            "db.esl",
        ],
        &[],
    ));
    refused(
        w,
        &[
            "efivar",
            "auth",
            "--var",
            "db",
            "--role",
            "KEK",
            "--dir",
            s(d),
            "db.esl",
            "-o",
            "db.auth",
        ],
        &[],
        &["role 'KEK'", "KEK.key", "\"development\": true"],
        &["db.auth"],
    );
    for mode in MODES {
        let _ = fs::remove_file(w.join("db.auth"));
        ok(run_release(
            w,
            &[
                "efivar",
                "auth",
                "--var",
                "db",
                "--key",
                s(&p.join("KEK.key")),
                "--cert",
                s(&p.join("KEK.crt")),
                "db.esl",
                "-o",
                "db.auth",
            ],
            mode,
            &[],
        ));
        ok(run_env(
            w,
            &[
                "efivar",
                "verify",
                "db.auth",
                "--var",
                "db",
                "--cert",
                s(&p.join("KEK.crt")),
            ],
            &[],
        ));
    }
}

// ---------------------------------------------------------------------------
// guestos sign

#[test]
fn guestos_sign_refuses_development_keys_and_signs_with_production_keys() {
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/guestos/core-1.conf");
    fs::copy(&conf, w.join("core-1.conf")).unwrap();
    let d = dev();
    refused(
        w,
        &[
            "guestos",
            "sign",
            "core-1.conf",
            "--role",
            "ssig_cml",
            "--dir",
            s(d),
        ],
        &[],
        &["role 'ssig_cml'", "ssig_cml.key"],
        &["core-1.sig", "core-1.cert"],
    );
    let g = gyroidos_dev();
    refused(
        w,
        &[
            "guestos",
            "sign",
            "core-1.conf",
            "--role",
            "ssig_subca_cml",
            "--dir",
            s(g),
        ],
        &[],
        &["role 'ssig_subca_cml'", "gen_dev_certs.sh"],
        &["core-1.sig", "core-1.cert"],
    );
    let p = prod_cml();
    for mode in MODES {
        ok(run_release(
            w,
            &[
                "guestos",
                "sign",
                "core-1.conf",
                "--role",
                "ssig_cml",
                "--dir",
                s(p),
            ],
            mode,
            &[],
        ));
        assert!(w.join("core-1.sig").is_file());
        let v = ok(run_env(
            w,
            &[
                "guestos",
                "verify",
                "core-1.conf",
                "--trust",
                s(&p.join("ssig_rootca.cert")),
            ],
            &[],
        ));
        assert!(stdout(&v).contains("OK") || v.status.success());
    }
}

// ---------------------------------------------------------------------------
// csr sign

#[test]
fn csr_sign_refuses_development_keys_and_issues_with_production_keys() {
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    device_csr(w, "/O=fleet/CN=device-0001");
    // A copy of the development PKI, so its issued/index.jsonl can be watched.
    let d = w.join("dev");
    let o = Command::new("cp")
        .args(["-a", s(dev()), s(&d)])
        .output()
        .unwrap();
    assert!(o.status.success());
    refused(
        w,
        &[
            "csr",
            "sign",
            "device.csr",
            "--role",
            "device_subca",
            "--dir",
            "dev",
            "-o",
            "device.cert",
        ],
        &[],
        &["role 'device_subca'", "device_subca.key"],
        &["device.cert", "dev/issued"],
    );
    let p = prod_pki();
    for mode in MODES {
        let _ = fs::remove_file(w.join("device.cert"));
        ok(run_release(
            w,
            &[
                "csr",
                "sign",
                "device.csr",
                "--key",
                s(&p.join("ssig_subca.key")),
                "--cert",
                s(&p.join("ssig_subca.cert")),
                "-o",
                "device.cert",
            ],
            mode,
            &[],
        ));
        let v = peer_ok(
            &openssl(),
            &[
                "verify",
                "-CAfile",
                s(&p.join("ssig_rootca.cert")),
                "-untrusted",
                s(&p.join("ssig_subca.cert")),
                "device.cert",
            ],
            w,
        );
        assert!(v.contains("device.cert: OK"), "{v}");
    }
}

// ---------------------------------------------------------------------------
// pki init

#[test]
fn pki_init_in_release_mode_never_creates_a_development_pki() {
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    refused(
        w,
        &["pki", "init", "--dir", "new", "--key-type", "ec:prime256v1"],
        &[],
        &["new", "would create a development PKI", "--hsm"],
        &["new", "new.lock"],
    );
    // An existing development PKI is refused, a GyroidOS one too...
    refused(
        w,
        &["pki", "init", "--dir", s(dev())],
        &[],
        &["\"development\": true"],
        &[],
    );
    refused(
        w,
        &["pki", "init", "--dir", s(gyroidos_dev())],
        &[],
        &["gen_dev_certs.sh"],
        &[],
    );
    // ...and outside release mode nothing changes.
    ok(run_env(w, &["pki", "init", "--dir", s(dev())], &[]));
}

#[test]
fn pki_init_in_release_mode_makes_and_accepts_a_pki_in_a_token() {
    let Some(tools) = common::softhsm::tools() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    let conf = common::softhsm::init_token(&tools, w, "release", "31415926", "27182818");
    let env = [
        ("SOFTHSM2_CONF", s(&conf)),
        ("PKI_SIGNER_PKCS11_MODULE", common::softhsm::MODULE),
        ("PKI_SIGNER_PKCS11_PIN", "27182818"),
    ];
    let init = [
        "pki",
        "init",
        "--dir",
        "release-pki",
        "--key-type",
        "ec:prime256v1",
        "--hsm",
        "pkcs11:token=release",
    ];
    let o = ok(run_release(w, &init, Mode::Env, &env));
    assert!(stdout(&o).contains("release-pki"), "{}", stdout(&o));
    let m = fs::read_to_string(w.join("release-pki/pki.json")).unwrap();
    assert!(m.contains("\"development\": false"), "{m}");
    // No marker in production certificates.
    let text = peer_ok(
        &openssl(),
        &[
            "x509",
            "-in",
            "release-pki/ssig_subca.cert",
            "-noout",
            "-text",
        ],
        w,
    );
    assert!(!text.contains(MARKER), "{text}");
    // Present: fine in release mode, with the flag too.
    let o = ok(run_release(w, &init, Mode::Flag, &env));
    assert!(stdout(&o).contains("already present"), "{}", stdout(&o));
    // Its token keys sign in release mode.
    if efi(w).is_some() {
        ok(run_release(
            w,
            &[
                "pe",
                "sign",
                "a.efi",
                "-o",
                "out.efi",
                "--role",
                "ssig_subca",
                "--dir",
                "release-pki",
            ],
            Mode::Env,
            &env,
        ));
        sbverify_ok(&w.join("release-pki/ssig_subca.cert"), &w.join("out.efi"));
    }
}

// ---------------------------------------------------------------------------
// resign

/// A build: a.efi signed into deploy/a.efi by `pe sign ARGS --plan`.
fn build(key_args: &[&str]) -> Option<tempfile::TempDir> {
    let t = tempfile::tempdir().unwrap();
    let w = t.path();
    efi(w)?;
    fs::create_dir(w.join("deploy")).unwrap();
    let mut args = vec![
        "pe",
        "sign",
        "a.efi",
        "-o",
        "deploy/a.efi",
        "--plan",
        "deploy/plan.json",
    ];
    args.extend_from_slice(key_args);
    ok(run_env(w, &args, &[]));
    Some(t)
}

fn keys_json(w: &Path, name: &str, role: &str, key: &Path, cert: &Path) -> String {
    let p = prod_pki();
    fs::write(
        w.join(name),
        serde_json::json!({
            "trust": [p.join("ssig_rootca.cert")],
            role: { "key": key, "cert": cert },
        })
        .to_string(),
    )
    .unwrap();
    name.to_string()
}

#[test]
fn resign_refuses_development_keys_in_release_mode_and_uses_production_keys() {
    let d = dev();
    let Some(t) = build(&["--role", "ssig_subca", "--dir", s(d)]) else {
        return;
    };
    let w = t.path();
    let before = fs::read(w.join("deploy/a.efi")).unwrap();
    let p = prod_pki();
    // A fresh key certified with the marker under the production root: resign's
    // own checks pass it (it chains to the production root, it is not the
    // build's key), release mode refuses it.
    let m = w.join("marked");
    fs::create_dir(&m).unwrap();
    ossl(
        &m,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "k.pem",
        ],
    );
    prod_issue(
        &m,
        "k.pem",
        "Marked",
        "c.pem",
        &format!("certificatePolicies={MARKER}\n"),
    );
    let marked = keys_json(
        w,
        "keys-marked.json",
        "ssig_subca",
        &m.join("k.pem"),
        &m.join("c.pem"),
    );
    let resign = [
        "resign",
        "--plan",
        "deploy/plan.json",
        "--keys",
        &marked,
        "--out-dir",
        "out",
    ];
    refused(
        w,
        &resign,
        &[],
        &["c.pem", "carries the development marker"],
        &["out/a.efi"],
    );
    let dry = [
        "resign",
        "--plan",
        "deploy/plan.json",
        "--keys",
        &marked,
        "--dry-run",
    ];
    ok(run_env(w, &dry, &[]));
    assert_eq!(fs::read(w.join("deploy/a.efi")).unwrap(), before);

    let prod_keys = keys_json(
        w,
        "keys-prod.json",
        "ssig_subca",
        &p.join("ssig_subca.key"),
        &p.join("ssig_subca.cert"),
    );
    for mode in MODES {
        let _ = fs::remove_dir_all(w.join("out"));
        ok(run_release(
            w,
            &[
                "resign",
                "--plan",
                "deploy/plan.json",
                "--keys",
                &prod_keys,
                "--out-dir",
                "out",
            ],
            mode,
            &[],
        ));
        sbverify_ok(&p.join("ssig_subca.cert"), &w.join("out/a.efi"));
    }
}

#[test]
fn resign_compares_public_keys_not_certificates() {
    let d = dev();
    let Some(t) = build(&["--role", "ssig_subca", "--dir", s(d)]) else {
        return;
    };
    let w = t.path();
    // The development ssig_subca key under a certificate the production root
    // issued: its fingerprint is new, its public key is the build's.
    let moved = w.join("moved");
    fs::create_dir(&moved).unwrap();
    fs::copy(d.join("ssig_subca.key"), moved.join("ssig_subca.key")).unwrap();
    prod_pki();
    prod_issue(
        &moved,
        "ssig_subca.key",
        "Production Signing Sub CA",
        "ssig_subca.cert",
        "",
    );
    let keys = keys_json(
        w,
        "keys-moved.json",
        "ssig_subca",
        &moved.join("ssig_subca.key"),
        &moved.join("ssig_subca.cert"),
    );
    let e = resign_refused(w, &keys);
    assert!(e.contains("role 'ssig_subca'"), "{e}");
    assert!(
        e.contains("has the public key of development certificate"),
        "{e}"
    );
    assert!(e.contains("CN=Software Signing Sub CA"), "{e}");
}

/// `resign --dry-run` with `keys`: refused, exit 2; the error line.
fn resign_refused(w: &Path, keys: &str) -> String {
    fails(
        run_env(
            w,
            &[
                "resign",
                "--plan",
                "deploy/plan.json",
                "--keys",
                keys,
                "--dry-run",
            ],
            &[],
        ),
        2,
    )
}

#[test]
fn resign_refuses_a_sibling_key_of_a_gyroidos_directory_without_pki_json() {
    let g = gyroidos_dev();
    let Some(t) = build(&["--role", "ssig_subca", "--dir", s(g)]) else {
        return;
    };
    let w = t.path();
    // Another key of the same gen_dev_certs.sh directory, under a new
    // production-issued certificate.
    let sib = w.join("sibling");
    fs::create_dir(&sib).unwrap();
    fs::copy(g.join("ssig_subca_cml.key"), sib.join("k.pem")).unwrap();
    prod_pki();
    prod_issue(&sib, "k.pem", "Production Signing Sub CA", "c.pem", "");
    let keys = keys_json(
        w,
        "keys-sibling.json",
        "ssig_subca",
        &sib.join("k.pem"),
        &sib.join("c.pem"),
    );
    let e = resign_refused(w, &keys);
    assert!(
        e.contains("has the public key of development certificate"),
        "{e}"
    );
    assert!(e.contains("CN=GyroidOS CML Signing Sub CA"), "{e}");
    assert!(e.contains("gen_dev_certs.sh"), "{e}");
    // The directory's own files are refused as chaining to its root.
    let keys = keys_json(
        w,
        "keys-gyroid.json",
        "ssig_subca",
        &g.join("ssig_subca_cml.key"),
        &g.join("ssig_subca_cml.cert"),
    );
    let e = resign_refused(w, &keys);
    assert!(e.contains("development"), "{e}");
}
