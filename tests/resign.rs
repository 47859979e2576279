//! Release re-signing: the build signs with the development PKI and records a
//! signing plan (`pe sign --plan`); `resign` replaces the development
//! signatures with production ones from a SoftHSM2 token (or key files), and
//! sbverify / osslsigncode accept the results only with the production
//! certificates.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::softhsm::{self, MODULE};
use common::*;

const PIN: &str = "27182818";
const SO_PIN: &str = "31415926";
const ARTIFACTS: [&str; 3] = ["a1.efi", "a2.efi", "a3.efi"];

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The development PKI the build uses (RSA-2048 to keep the tests quick),
/// with `dev_subca.pem` / `dev_root.pem` next to it for the peers.
fn dev() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap().keep();
        ok(run_in(
            &tmp,
            &[
                "pki",
                "init",
                "--dir",
                "pki",
                "--key-type",
                "rsa:2048",
                "--uefi",
            ],
        ));
        pem_of(&tmp, "pki/ssig_subca.cert", "dev_subca.pem");
        pem_of(&tmp, "pki/ssig_rootca.cert", "dev_root.pem");
        tmp.join("pki")
    })
}

fn pem_of(dir: &Path, cert: &str, out: &str) {
    peer_ok(&openssl(), &["x509", "-in", cert, "-out", out], dir);
}

/// The release PKI: another `pki init` under a production profile, marked
/// non-development in its pki.json, with `prod_subca.pem` / `prod_root.pem`
/// and `keys-files.json` mapping ssig_subca to its key files.
fn prod() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap().keep();
        fs::write(
            tmp.join("profile.json"),
            r#"{"org": "Example Production", "org_unit": "Release"}"#,
        )
        .unwrap();
        ok(run_in(
            &tmp,
            &[
                "pki",
                "init",
                "--dir",
                "pki",
                "--profile",
                "profile.json",
                "--key-type",
                "rsa:2048",
            ],
        ));
        let manifest = tmp.join("pki/pki.json");
        let text = fs::read_to_string(&manifest).unwrap();
        assert!(text.contains("\"development\": true"), "{text}");
        fs::write(
            &manifest,
            text.replace("\"development\": true", "\"development\": false"),
        )
        .unwrap();
        pem_of(&tmp, "pki/ssig_subca.cert", "prod_subca.pem");
        pem_of(&tmp, "pki/ssig_rootca.cert", "prod_root.pem");
        let root = tmp.join("pki");
        fs::write(
            tmp.join("keys-files.json"),
            serde_json::json!({
                "trust": [root.join("ssig_rootca.cert")],
                "ssig_subca": {
                    "key": root.join("ssig_subca.key"),
                    "cert": root.join("ssig_subca.cert"),
                },
            })
            .to_string(),
        )
        .unwrap();
        tmp
    })
}

/// A SoftHSM2 token "release" holding the production ssig_subca key and
/// certificate (imported with pkcs11-tool), and `keys-hsm.json` naming them
/// by pkcs11: URI. None when SoftHSM2 is not installed (and not required).
static HSM: OnceLock<Option<PathBuf>> = OnceLock::new();

fn hsm() -> Option<&'static Path> {
    HSM.get_or_init(|| {
        let tools = softhsm::tools()?;
        let p = prod();
        let d = tempfile::tempdir().unwrap().keep();
        let conf = softhsm::init_token(&tools, &d, "release", SO_PIN, PIN);
        let env = [("SOFTHSM2_CONF", conf)];
        let run = |tool: &Path, args: &[&str]| {
            let o = Command::new(tool)
                .args(args)
                .current_dir(&d)
                .envs(env.iter().cloned())
                .output()
                .unwrap();
            assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        };
        let ossl = openssl();
        let key = p.join("pki/ssig_subca.key");
        peer_ok(
            &ossl,
            &[
                "pkcs8",
                "-topk8",
                "-nocrypt",
                "-in",
                s(&key),
                "-outform",
                "DER",
                "-out",
                "subca.key.der",
            ],
            &d,
        );
        peer_ok(
            &ossl,
            &[
                "x509",
                "-in",
                s(&p.join("prod_subca.pem")),
                "-outform",
                "DER",
                "-out",
                "subca.crt.der",
            ],
            &d,
        );
        for (file, ty) in [("subca.key.der", "privkey"), ("subca.crt.der", "cert")] {
            let mut args = vec!["--module", MODULE, "--login", "--pin", PIN];
            args.extend(["--write-object", file, "--type", ty]);
            args.extend(["--label", "ssig_subca", "--id", "01"]);
            if ty == "privkey" {
                args.push("--usage-sign");
            }
            run(&tools.pkcs11_tool, &args);
        }
        fs::write(
            d.join("keys-hsm.json"),
            serde_json::json!({
                "trust": [p.join("pki/ssig_rootca.cert")],
                "ssig_subca": {
                    "key": "pkcs11:token=release;object=ssig_subca",
                    "cert": "pkcs11:token=release;object=ssig_subca",
                },
            })
            .to_string(),
        )
        .unwrap();
        Some(d)
    })
    .as_deref()
}

/// pki-signer in `cwd` with a clean PKI_SIGNER_* environment, plus the
/// token's module and PIN once a test made the token (never on the command line).
fn run(cwd: &Path, args: &[&str]) -> Output {
    run_env(cwd, args, &[])
}

fn run_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = command(cwd, args);
    c.envs(env.iter().copied());
    c.output().expect("run pki-signer")
}

fn command(cwd: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args).current_dir(cwd);
    for (k, _) in std::env::vars() {
        if k.starts_with("PKI_SIGNER_") && k != "PKI_SIGNER_REQUIRE_PEERS" {
            c.env_remove(k);
        }
    }
    if let Some(h) = HSM.get().and_then(|h| h.as_deref()) {
        c.env("SOFTHSM2_CONF", h.join("softhsm2.conf"))
            .env("PKI_SIGNER_PKCS11_MODULE", MODULE)
            .env("PKI_SIGNER_PKCS11_PIN", PIN);
    }
    c
}

/// A build-like tree: work/aN.efi copies of systemd-boot, signed by the
/// development ssig_subca into deploy/aN.efi, each `pe sign` appending to
/// deploy/plan.json.
fn build() -> Option<PathBuf> {
    let input = systemd_boot()?;
    let t = tempfile::tempdir().unwrap().keep();
    fs::create_dir_all(t.join("work")).unwrap();
    fs::create_dir_all(t.join("deploy")).unwrap();
    for a in ARTIFACTS {
        fs::copy(input, t.join("work").join(a)).unwrap();
        ok(run_in(
            &t,
            &[
                "pe",
                "sign",
                &format!("work/{a}"),
                "-o",
                &format!("deploy/{a}"),
                "--role",
                "ssig_subca",
                "--dir",
                s(dev()),
                "--plan",
                "deploy/plan.json",
            ],
        ));
    }
    Some(t)
}

fn sha(p: &Path) -> String {
    use sha2::Digest;
    pki_signer::codec::hex(&sha2::Sha256::digest(fs::read(p).unwrap()))
}

fn sbverify(cert: &Path, file: &Path) -> bool {
    let tool = peer("sbverify").expect("sbverify");
    Command::new(tool)
        .args(["--cert", s(cert), s(file)])
        .output()
        .unwrap()
        .status
        .success()
}

fn osslsigncode_ok(ca: &Path, file: &Path) -> bool {
    let tool = peer("osslsigncode").expect("osslsigncode");
    let o = Command::new(tool)
        .args(["verify", "-CAfile", s(ca), "-in", s(file)])
        .output()
        .unwrap();
    o.status.success() && stdout(&o).contains("Signature verification: ok")
}

/// Production, not development: checked by independent verifiers.
#[track_caller]
fn assert_production(file: &Path) {
    let (p, d) = (prod(), dev().parent().unwrap());
    assert!(
        sbverify(&p.join("prod_subca.pem"), file),
        "{}",
        file.display()
    );
    assert!(
        !sbverify(&d.join("dev_subca.pem"), file),
        "{}",
        file.display()
    );
    assert!(
        osslsigncode_ok(&p.join("prod_root.pem"), file),
        "{}",
        file.display()
    );
    assert!(
        !osslsigncode_ok(&d.join("dev_root.pem"), file),
        "{}",
        file.display()
    );
}

#[track_caller]
fn assert_development(file: &Path) {
    let (p, d) = (prod(), dev().parent().unwrap());
    assert!(
        sbverify(&d.join("dev_subca.pem"), file),
        "{}",
        file.display()
    );
    assert!(
        !sbverify(&p.join("prod_subca.pem"), file),
        "{}",
        file.display()
    );
}

fn keys_files() -> String {
    s(&prod().join("keys-files.json")).to_string()
}

fn resign(t: &Path, keys: &str, extra: &[&str]) -> Output {
    let mut args = vec!["resign", "--plan", "deploy/plan.json", "--keys", keys];
    args.extend(extra);
    run(t, &args)
}

fn hashes(t: &Path) -> Vec<String> {
    ARTIFACTS
        .iter()
        .map(|a| sha(&t.join("deploy").join(a)))
        .collect()
}

#[test]
fn pe_sign_plan_records_what_was_signed() {
    let Some(t) = build() else { return };
    let text = fs::read_to_string(t.join("deploy/plan.json")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let subca = pki_signer::x509::read_certs(&dev().join("ssig_subca.cert")).unwrap();
    for (r, a) in lines.iter().zip(ARTIFACTS) {
        assert_eq!(r["kind"], "pe");
        assert_eq!(r["role"], "ssig_subca");
        assert_eq!(r["artifact"], format!("work/{a}"));
        assert_eq!(r["output"], format!("deploy/{a}"));
        assert_eq!(r["output_abs"], s(&t.join("deploy").join(a)));
        assert_eq!(r["sha256_before"], sha(Path::new(SYSTEMD_BOOT)));
        assert_eq!(r["sha256_after"], sha(&t.join("deploy").join(a)));
        assert_eq!(
            r["key_fingerprint"],
            pki_signer::codec::sha256_hex(&subca[0])
        );
        assert_eq!(r["pki"], s(dev()));
        assert!(
            r.get("time").is_none(),
            "no wall-clock time: plans are reproducible"
        );
    }
}

#[test]
fn resign_with_an_hsm_key_makes_images_only_production_certs_accept() {
    let Some(h) = hsm() else { return };
    let Some(t) = build() else { return };
    for a in ARTIFACTS {
        assert_development(&t.join("deploy").join(a));
    }
    let before = hashes(&t);
    let keys = h.join("keys-hsm.json");
    // The key really is the token's: with a wrong PIN nothing happens.
    let e = fails(
        run_env(
            &t,
            &["resign", "--plan", "deploy/plan.json", "--keys", s(&keys)],
            &[("PKI_SIGNER_PKCS11_PIN", "0000")],
        ),
        2,
    );
    assert!(e.contains("PIN"), "{e}");
    assert!(!e.contains("0000"), "{e}");
    assert_eq!(hashes(&t), before);
    let o = ok(resign(&t, s(&keys), &[]));
    let out = stdout(&o);
    assert!(out.contains("3 resigned, 0 skipped, 0 failed"), "{out}");
    assert!(!out.contains(PIN) && !stderr(&o).contains(PIN));
    for (a, old) in ARTIFACTS.iter().zip(&before) {
        let f = t.join("deploy").join(a);
        assert_ne!(&sha(&f), old);
        assert_production(&f);
        ok(run(
            &t,
            &[
                "pe",
                "verify",
                s(&f),
                "--cert",
                s(&prod().join("pki/ssig_rootca.cert")),
            ],
        ));
    }
    // Running again changes nothing: everything is done.
    let after = hashes(&t);
    let o = ok(resign(&t, s(&h.join("keys-hsm.json")), &[]));
    assert!(
        stdout(&o).contains("0 resigned, 3 skipped, 0 failed"),
        "{}",
        stdout(&o)
    );
    assert_eq!(hashes(&t), after);
}

#[test]
fn dry_run_checks_everything_and_writes_nothing() {
    let Some(t) = build() else { return };
    let before = hashes(&t);
    let listing = |t: &Path| {
        let mut v: Vec<_> = fs::read_dir(t.join("deploy"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let files = listing(&t);
    let o = ok(resign(&t, &keys_files(), &["--dry-run", "--json"]));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["ok"], true);
    let arts = r["artifacts"].as_array().unwrap();
    assert_eq!(arts.len(), 3);
    for (a, h) in arts.iter().zip(&before) {
        assert_eq!(a["status"], "would-resign");
        assert_eq!(&a["sha256_old"], h);
        assert!(a["signer"].as_str().unwrap().contains("Example Production"));
    }
    assert_eq!(hashes(&t), before);
    assert_eq!(listing(&t), files, "no temp or lock files either");
    ok(resign(
        &t,
        &keys_files(),
        &["--dry-run", "--out-dir", "release"],
    ));
    assert!(!t.join("release").exists());
}

#[test]
fn production_keys_from_the_development_pki_are_refused() {
    let Some(t) = build() else { return };
    let before = hashes(&t);
    let d = dev();
    let root = prod().join("pki/ssig_rootca.cert");
    // A certificate issued under the development root (the dev signing leaf)...
    let leaf = t.join("keys-dev-leaf.json");
    fs::write(
        &leaf,
        serde_json::json!({ "ssig_subca": {
            "key": d.join("ssig.key"), "cert": d.join("ssig.cert"), "trust": [root] } })
        .to_string(),
    )
    .unwrap();
    let e = fails(resign(&t, s(&leaf), &[]), 2);
    assert!(e.contains("role 'ssig_subca'"), "{e}");
    assert!(e.contains("chains to development root"), "{e}");
    assert!(e.contains("CN=Software Signing Root CA"), "{e}");
    assert!(e.contains("pki.json \"development\": true"), "{e}");
    // ...and the very key the build signed with, also in --dry-run.
    let same = t.join("keys-dev-subca.json");
    fs::write(
        &same,
        serde_json::json!({ "ssig_subca": {
            "key": d.join("ssig_subca.key"), "cert": d.join("ssig_subca.cert"), "trust": [root] } })
        .to_string(),
    )
    .unwrap();
    let e = fails(resign(&t, s(&same), &["--dry-run"]), 2);
    assert!(e.contains("chains to development root"), "{e}");
    assert_eq!(hashes(&t), before);
}

#[test]
fn a_dev_pki_named_on_the_command_line_is_refused_too() {
    let Some(t) = build() else { return };
    // Another development PKI the plan does not name: its keys are refused
    // once it is given with --dev-pki.
    ok(run_in(
        &t,
        &[
            "pki",
            "init",
            "--dir",
            "other",
            "--key-type",
            "ec:prime256v1",
        ],
    ));
    let keys = t.join("keys-other.json");
    fs::write(
        &keys,
        serde_json::json!({ "ssig_subca": {
            "key": "other/ssig_subca.key", "cert": "other/ssig_subca.cert",
            "trust": ["other/ssig_rootca.cert"] } })
        .to_string(),
    )
    .unwrap();
    let e = fails(resign(&t, s(&keys), &["--dev-pki", "other"]), 2);
    assert!(e.contains("chains to development root"), "{e}");
    assert!(e.contains("other"), "{e}");
}

#[test]
fn keys_that_do_not_chain_to_their_trust_anchors_are_refused() {
    let Some(t) = build() else { return };
    let p = prod().join("pki");
    let keys = t.join("keys-bad-trust.json");
    fs::write(
        &keys,
        serde_json::json!({ "ssig_subca": {
            "key": p.join("ssig_subca.key"), "cert": p.join("ssig_subca.cert"),
            "trust": [p.join("gen_rootca.cert")] } })
        .to_string(),
    )
    .unwrap();
    let e = fails(resign(&t, s(&keys), &[]), 2);
    assert!(
        e.contains("does not chain to any of its trust anchors"),
        "{e}"
    );
    let keys = t.join("keys-no-role.json");
    fs::write(
        &keys,
        serde_json::json!({ "ssig_subca_cml": {
            "key": p.join("ssig_subca_cml.key"), "cert": p.join("ssig_subca_cml.cert"),
            "trust": [p.join("ssig_rootca.cert")] } })
        .to_string(),
    )
    .unwrap();
    let e = fails(resign(&t, s(&keys), &[]), 2);
    assert!(e.contains("no production key for role 'ssig_subca'"), "{e}");
}

#[test]
fn a_changed_artifact_is_reported_the_others_are_resigned_and_a_rerun_finishes() {
    let Some(t) = build() else { return };
    let deploy = t.join("deploy");
    let a2 = deploy.join("a2.efi");
    let good = fs::read(&a2).unwrap();
    let mut bad = good.clone();
    bad.extend_from_slice(b"tampered");
    fs::write(&a2, &bad).unwrap();

    let o = resign(&t, &keys_files(), &[]);
    let e = fails(o.clone(), 1);
    assert!(e.contains("1 of 3 artifacts not re-signed"), "{e}");
    let out = stdout(&o);
    assert!(
        out.lines().any(|l| l.starts_with("failed")
            && l.contains("a2.efi")
            && l.contains("changed since the build signed it")),
        "{out}"
    );
    // Artifact 1 and 3 are fully new, 2 is exactly as it was.
    assert_production(&deploy.join("a1.efi"));
    assert_production(&deploy.join("a3.efi"));
    assert_eq!(fs::read(&a2).unwrap(), bad);
    let leftovers: Vec<_> = fs::read_dir(&deploy)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // With the artifact back as the build made it, a re-run finishes the job.
    fs::write(&a2, &good).unwrap();
    let o = ok(resign(&t, &keys_files(), &["--json"]));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let status: Vec<_> = r["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(status, ["skipped", "resigned", "skipped"]);
    for a in ARTIFACTS {
        assert_production(&deploy.join(a));
    }
}

#[test]
fn a_missing_artifact_is_an_input_error_and_the_rest_are_resigned() {
    let Some(t) = build() else { return };
    fs::remove_file(t.join("deploy/a1.efi")).unwrap();
    let e = fails(resign(&t, &keys_files(), &[]), 2);
    assert!(e.contains("a1.efi"), "{e}");
    assert_production(&t.join("deploy/a2.efi"));
    assert_production(&t.join("deploy/a3.efi"));
}

#[test]
fn out_dir_gets_resigned_copies_and_the_artifacts_stay_as_built() {
    let Some(t) = build() else { return };
    let before = hashes(&t);
    let o = ok(resign(&t, &keys_files(), &["--out-dir", "release"]));
    assert!(stdout(&o).contains("3 resigned"), "{}", stdout(&o));
    assert_eq!(hashes(&t), before);
    for a in ARTIFACTS {
        assert_production(&t.join("release").join(a));
        assert_development(&t.join("deploy").join(a));
    }
    let o = ok(resign(&t, &keys_files(), &["--out-dir", "release"]));
    assert!(stdout(&o).contains("3 skipped"), "{}", stdout(&o));
    let e = fails(resign(&t, &keys_files(), &["--out-dir", "deploy"]), 2);
    assert!(e.contains("leave --out-dir out"), "{e}");
}

#[test]
fn a_deploy_dir_copied_elsewhere_is_found_next_to_its_plan() {
    let Some(t) = build() else { return };
    let moved = t.join("moved");
    fs::rename(t.join("deploy"), &moved).unwrap();
    ok(run(
        &t,
        &[
            "resign",
            "--plan",
            "moved/plan.json",
            "--keys",
            &keys_files(),
        ],
    ));
    for a in ARTIFACTS {
        assert_production(&moved.join(a));
    }
}

#[test]
fn sixteen_concurrent_pe_sign_plan_appends_give_sixteen_records() {
    let Some(input) = systemd_boot() else { return };
    let t = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..16)
        .map(|i| {
            Command::new(bin())
                .args([
                    "pe",
                    "sign",
                    input,
                    "-o",
                    &format!("out{i:02}.efi"),
                    "--role",
                    "ssig_subca",
                    "--dir",
                    s(dev()),
                    "--plan",
                    "plan.json",
                ])
                .current_dir(t.path())
                .env_remove("PKI_SIGNER_DIR")
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let text = fs::read_to_string(t.path().join("plan.json")).unwrap();
    let mut outputs: Vec<String> = text
        .lines()
        .map(|l| {
            let r: serde_json::Value =
                serde_json::from_str(l).expect("a whole JSON record per line");
            r["output"].as_str().unwrap().to_string()
        })
        .collect();
    outputs.sort();
    let want: Vec<String> = (0..16).map(|i| format!("out{i:02}.efi")).collect();
    assert_eq!(outputs, want);
    let o = ok(run(
        t.path(),
        &[
            "resign",
            "--plan",
            "plan.json",
            "--keys",
            &keys_files(),
            "--dry-run",
        ],
    ));
    assert!(stdout(&o).contains("16 to re-sign"), "{}", stdout(&o));
}

#[test]
fn a_plan_kept_as_a_json_array_is_read_and_appended_to() {
    let Some(t) = build() else { return };
    let plan = t.join("deploy/plan.json");
    let records: Vec<serde_json::Value> = fs::read_to_string(&plan)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    fs::write(&plan, serde_json::to_string_pretty(&records[..2]).unwrap()).unwrap();
    ok(run_in(
        &t,
        &[
            "pe",
            "sign",
            "work/a3.efi",
            "-o",
            "deploy/a3.efi",
            "--role",
            "ssig_subca",
            "--dir",
            s(dev()),
            "--plan",
            "deploy/plan.json",
        ],
    ));
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&fs::read_to_string(&plan).unwrap()).unwrap();
    assert_eq!(all.len(), 3);
    ok(resign(&t, &keys_files(), &[]));
    for a in ARTIFACTS {
        assert_production(&t.join("deploy").join(a));
    }
}

#[test]
fn bad_plans_and_keys_are_one_line_input_errors() {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("plan.json"), "{\"artifact\": 1}\n").unwrap();
    fs::write(t.path().join("keys.json"), "{}").unwrap();
    let e = fails(
        run(
            t.path(),
            &["resign", "--plan", "plan.json", "--keys", "keys.json"],
        ),
        2,
    );
    assert!(e.contains("plan.json: line 1"), "{e}");
    let e = fails(
        run(
            t.path(),
            &["resign", "--plan", "none.json", "--keys", "keys.json"],
        ),
        2,
    );
    assert!(e.contains("none.json"), "{e}");
}

/// `openssl dgst -sha512 -verify` of NAME.sig over NAME.conf with the key of
/// NAME.cert, and `openssl verify` of NAME.cert's chain against `root`.
fn openssl_guestos_ok(dir: &Path, name: &str, root: &Path) -> bool {
    let ossl = openssl();
    let pubkey = peer_ok(
        &ossl,
        &["x509", "-pubkey", "-noout", "-in", &format!("{name}.cert")],
        dir,
    );
    fs::write(dir.join("signer.pub"), pubkey).unwrap();
    let (sig, conf, cert) = (
        format!("{name}.sig"),
        format!("{name}.conf"),
        format!("{name}.cert"),
    );
    let dgst = Command::new(&ossl)
        .args([
            "dgst",
            "-sha512",
            "-verify",
            "signer.pub",
            "-signature",
            &sig,
            &conf,
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    let chain = Command::new(&ossl)
        .args(["verify", "-CAfile", s(root), "-untrusted", &cert, &cert])
        .current_dir(dir)
        .output()
        .unwrap();
    fs::remove_file(dir.join("signer.pub")).unwrap();
    dgst.status.success() && stdout(&dgst).contains("Verified OK") && chain.status.success()
}

fn openssl_cms_ok(dir: &Path, name: &str, root: &Path) -> bool {
    let (p7s, conf) = (format!("{name}.p7s"), format!("{name}.conf"));
    Command::new(openssl())
        .args([
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
            s(root),
            "-purpose",
            "any",
            "-out",
            "/dev/null",
        ])
        .current_dir(dir)
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn a_plan_with_pe_images_and_a_guestos_manifest_is_resigned_role_by_role() {
    let Some(t) = build() else { return };
    let deploy = t.join("deploy");
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/guestos/core-1.conf"),
        deploy.join("core-1.conf"),
    )
    .unwrap();
    ok(run_in(
        &t,
        &[
            "guestos",
            "sign",
            "deploy/core-1.conf",
            "--cms",
            "--role",
            "ssig_cml",
            "--dir",
            s(dev()),
            "--plan",
            "deploy/plan.json",
        ],
    ));
    let (dev_root, prod_root) = (
        dev().parent().unwrap().join("dev_root.pem"),
        prod().join("prod_root.pem"),
    );
    assert!(openssl_guestos_ok(&deploy, "core-1", &dev_root));
    let conf = fs::read(deploy.join("core-1.conf")).unwrap();

    let p = prod().join("pki");
    let keys = t.join("keys-both.json");
    fs::write(
        &keys,
        serde_json::json!({
            "trust": [p.join("ssig_rootca.cert")],
            "ssig_subca": { "key": p.join("ssig_subca.key"), "cert": p.join("ssig_subca.cert") },
            "ssig_cml": { "key": p.join("ssig_cml.key"), "cert": p.join("ssig_cml.cert") },
        })
        .to_string(),
    )
    .unwrap();
    let o = ok(resign(&t, s(&keys), &[]));
    let out = stdout(&o);
    assert!(out.contains("4 resigned, 0 skipped, 0 failed"), "{out}");
    assert!(
        out.lines().any(|l| l.contains("guestos")
            && l.contains("Example Production")
            && l.contains("CML")),
        "{out}"
    );
    // The manifest is untouched; signature, chain and CMS are production's now.
    assert_eq!(fs::read(deploy.join("core-1.conf")).unwrap(), conf);
    assert!(openssl_guestos_ok(&deploy, "core-1", &prod_root));
    assert!(!openssl_guestos_ok(&deploy, "core-1", &dev_root));
    assert!(openssl_cms_ok(&deploy, "core-1", &prod_root));
    assert!(!openssl_cms_ok(&deploy, "core-1", &dev_root));
    ok(run(
        &t,
        &[
            "guestos",
            "verify",
            "deploy/core-1.conf",
            "--trust",
            s(&prod_root),
        ],
    ));
    for a in ARTIFACTS {
        assert_production(&deploy.join(a));
    }
    let o = ok(resign(&t, s(&keys), &[]));
    assert!(
        stdout(&o).contains("0 resigned, 4 skipped"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn a_guestos_manifest_edited_after_signing_is_not_resigned() {
    let Some(t) = build() else { return };
    let deploy = t.join("deploy");
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/guestos/core-1.conf"),
        deploy.join("core-1.conf"),
    )
    .unwrap();
    ok(run_in(
        &t,
        &[
            "guestos",
            "sign",
            "deploy/core-1.conf",
            "--role",
            "ssig_cml",
            "--dir",
            s(dev()),
            "--plan",
            "deploy/plan.json",
        ],
    ));
    let mut text = fs::read_to_string(deploy.join("core-1.conf")).unwrap();
    text = text.replace("version: 1", "version: 2");
    fs::write(deploy.join("core-1.conf"), &text).unwrap();
    let sig = fs::read(deploy.join("core-1.sig")).unwrap();
    let p = prod().join("pki");
    let keys = t.join("keys-both.json");
    fs::write(
        &keys,
        serde_json::json!({
            "trust": [p.join("ssig_rootca.cert")],
            "ssig_subca": { "key": p.join("ssig_subca.key"), "cert": p.join("ssig_subca.cert") },
            "ssig_cml": { "key": p.join("ssig_cml.key"), "cert": p.join("ssig_cml.cert") },
        })
        .to_string(),
    )
    .unwrap();
    let o = resign(&t, s(&keys), &[]);
    let out = stdout(&o);
    fails(o, 1);
    assert!(
        out.lines().any(|l| l.starts_with("failed")
            && l.contains("core-1.conf")
            && l.contains("changed since the build signed it")),
        "{out}"
    );
    assert_eq!(fs::read(deploy.join("core-1.sig")).unwrap(), sig);
}

/// When to kill a running `resign`.
#[derive(Clone, Copy, Debug)]
enum Kill {
    After(u64),
    /// As soon as this artifact has been replaced (the next is then under way).
    WhenReplaced(usize),
}

#[test]
fn killed_at_any_moment_every_artifact_is_old_or_new_and_a_rerun_finishes() {
    use std::os::unix::fs::MetadataExt;
    let Some(template) = build() else { return };
    let plan = fs::read_to_string(template.join("deploy/plan.json")).unwrap();
    let recorded: Vec<String> = plan
        .lines()
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            r["sha256_after"].as_str().unwrap().to_string()
        })
        .collect();
    let prod_subca = prod().join("prod_subca.pem");
    let kills = [
        Kill::After(0),
        Kill::WhenReplaced(0),
        Kill::WhenReplaced(0),
        Kill::WhenReplaced(1),
        Kill::WhenReplaced(1),
        Kill::After(2000),
    ];
    let mut mixed = 0;
    for (i, kill) in kills.into_iter().enumerate() {
        let t = template.join(format!("run{i}"));
        let deploy = t.join("deploy");
        fs::create_dir_all(&deploy).unwrap();
        for a in ARTIFACTS {
            fs::copy(template.join("deploy").join(a), deploy.join(a)).unwrap();
        }
        let here = plan.replace(s(&template.join("deploy")), s(&deploy));
        fs::write(deploy.join("plan.json"), here).unwrap();
        let inodes: Vec<u64> = ARTIFACTS
            .iter()
            .map(|a| fs::metadata(deploy.join(a)).unwrap().ino())
            .collect();

        let mut child = command(
            &t,
            &[
                "resign",
                "--plan",
                "deploy/plan.json",
                "--keys",
                &keys_files(),
            ],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
        match kill {
            Kill::After(ms) => std::thread::sleep(std::time::Duration::from_millis(ms)),
            Kill::WhenReplaced(k) => {
                let f = deploy.join(ARTIFACTS[k]);
                while fs::metadata(&f).map(|m| m.ino()).ok() == Some(inodes[k])
                    && child.try_wait().unwrap().is_none()
                {
                    std::thread::yield_now();
                }
            }
        }
        let _ = child.kill();
        child.wait().unwrap();

        let mut new = 0;
        for (a, old) in ARTIFACTS.iter().zip(&recorded) {
            let f = deploy.join(a);
            if &sha(&f) != old {
                new += 1;
                assert!(
                    sbverify(&prod_subca, &f),
                    "killed {kill:?}: {a} is neither the old nor a new image"
                );
            }
        }
        if new > 0 && new < ARTIFACTS.len() {
            mixed += 1;
        }
        ok(run(
            &t,
            &[
                "resign",
                "--plan",
                "deploy/plan.json",
                "--keys",
                &keys_files(),
            ],
        ));
        for a in ARTIFACTS {
            assert_production(&deploy.join(a));
        }
        let leftovers: Vec<_> = fs::read_dir(&deploy)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "killed {kill:?}: {leftovers:?}");
    }
    assert!(mixed > 0, "no kill landed between two artifacts");
}

/// A UKI with a PCR policy made by the build's PCR key: resign signs its
/// policy again for the production PCR key (`tpm2-pcr` in KEYS.json), then
/// the image. Without that key the UKI is refused and nothing changes.
#[test]
fn a_uki_gets_the_production_pcr_policy_and_signature() {
    let stub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
    if !Path::new(stub).is_file() {
        assert!(
            std::env::var("PKI_SIGNER_REQUIRE_PEERS").as_deref() != Ok("1"),
            "systemd-boot-efi is required"
        );
        return;
    }
    let t = tempfile::tempdir().unwrap().keep();
    fs::create_dir_all(t.join("deploy")).unwrap();
    fs::write(t.join("initrd"), vec![7u8; 100_001]).unwrap();
    let dev_keys = [
        "--role",
        "ssig_subca",
        "--dir",
        s(dev()),
        "--pcr-role",
        "tpm2-pcr",
    ];
    ok(common::pcr::uki_build(&t, "uki.efi", &dev_keys));
    ok(run_in(
        &t,
        &[
            "pe",
            "sign",
            "uki.efi",
            "-o",
            "deploy/uki.efi",
            "--replace",
            "--role",
            "ssig_subca",
            "--dir",
            s(dev()),
            "--plan",
            "deploy/plan.json",
        ],
    ));
    let built = fs::read(t.join("deploy/uki.efi")).unwrap();
    let e = fails(resign(&t, &keys_files(), &[]), 2);
    assert!(e.contains("'tpm2-pcr' entry"), "{e}");
    assert!(fs::read(t.join("deploy/uki.efi")).unwrap() == built);

    let ossl = openssl();
    openssl_rsa_key(&t, "pcr.pem");
    peer_ok(
        &ossl,
        &["pkey", "-in", "pcr.pem", "-pubout", "-out", "pcr-pub.pem"],
        &t,
    );
    let mut keys: serde_json::Value =
        serde_json::from_slice(&fs::read(keys_files()).unwrap()).unwrap();
    keys["tpm2-pcr"] =
        serde_json::json!({ "key": t.join("pcr.pem"), "public": t.join("pcr-pub.pem") });
    fs::write(t.join("keys.json"), keys.to_string()).unwrap();
    let keys = s(&t.join("keys.json")).to_string();
    ok(resign(&t, &keys, &[]));
    assert_production(&t.join("deploy/uki.efi"));

    // .pcrpkey is the production PCR key, and openssl verifies every policy
    // with it over the PCR 11 values systemd-measure computes.
    let sections = common::pcr::extract(&t, "deploy/uki.efi");
    let der = |f: &Path| {
        let o = Command::new(&ossl)
            .args(["pkey", "-pubin", "-outform", "DER", "-in"])
            .arg(f)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}: {}", f.display(), stderr(&o));
        o.stdout
    };
    assert_eq!(der(&sections.join("pcrpkey")), der(&t.join("pcr-pub.pem")));
    let n = common::pcr::verify_policies(&t, &["sha256"], &t.join("pcr-pub.pem"));
    assert!(n.is_none_or(|n| n == 4), "{n:?}");

    // Again: already done, nothing changes.
    let done = fs::read(t.join("deploy/uki.efi")).unwrap();
    let o = ok(resign(&t, &keys, &["--json"]));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["skipped"], 1, "{r}");
    assert!(fs::read(t.join("deploy/uki.efi")).unwrap() == done);
}
