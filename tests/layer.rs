//! meta-pki-signer, the bitbake layer, tested with BitBake's own library: the
//! python tests in tests/layer/ parse the layer with bb's parser and run its
//! signing tasks on real EFI binaries with the pki-signer binary cargo just built.
//!
//! They need a venv with bitbake-setup (BitBake's `bb`), oelint-adv and pytest:
//! `scripts/layer-deps.sh` makes it. Without it these tests are skipped, unless
//! PKI_SIGNER_REQUIRE_PEERS=1 (scripts/test.sh), which makes them fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn require_peers() -> bool {
    std::env::var("PKI_SIGNER_REQUIRE_PEERS").as_deref() == Ok("1")
}

/// The venv's python, if it can import bb and pytest.
fn layer_python() -> Option<PathBuf> {
    let python = match std::env::var_os("PKI_SIGNER_LAYER_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let venv = std::env::var_os("PKI_SIGNER_VENV")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(".venv"));
            repo().join(venv).join("bin").join("python")
        }
    };
    let usable = python.is_file()
        && Command::new(&python)
            .args(["-c", "import bb.data, pytest"])
            .output()
            .is_ok_and(|o| o.status.success());
    if usable {
        return Some(python);
    }
    let why = format!(
        "{} cannot import bb (bitbake-setup) and pytest: run scripts/layer-deps.sh",
        python.display()
    );
    if require_peers() {
        panic!("{why} (PKI_SIGNER_REQUIRE_PEERS=1)");
    }
    eprintln!("skipped: {why}");
    None
}

/// Run one module of tests/layer with pytest; panics with pytest's report if a test fails.
fn pytest(module: &str) {
    let Some(python) = layer_python() else {
        return;
    };
    let name = module.trim_end_matches(".py");
    let basetemp = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("layer-{name}"));
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"])
        .arg("--basetemp")
        .arg(&basetemp)
        .arg(Path::new("tests").join("layer").join(module))
        .current_dir(repo())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    // The tests choose their own PKI_SIGNER_* settings; only these two come from here.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PKI_SIGNER_") && k != "PKI_SIGNER_REQUIRE_PEERS" {
            cmd.env_remove(k);
        }
    }
    cmd.env("PKI_SIGNER_BIN", common::bin());
    let out = cmd.output().expect("run pytest");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "pytest tests/layer/{module} failed:\n{report}"
    );
    eprintln!("{report}");
    assert!(report.contains(" passed"), "no test ran:\n{report}");
}

#[test]
fn layer_parse() {
    pytest("test_parse.py");
}

#[test]
fn layer_sign() {
    pytest("test_sign.py");
}

#[test]
fn layer_concurrent_init() {
    pytest("test_concurrency.py");
}

#[test]
fn layer_recipe() {
    pytest("test_recipe.py");
}

#[test]
fn layer_release() {
    pytest("test_release.py");
}

#[test]
fn layer_plan() {
    pytest("test_plan.py");
}

#[test]
fn layer_offline() {
    pytest("test_offline.py");
}

#[test]
fn layer_runqueue() {
    pytest("test_runqueue.py");
}

#[test]
fn layer_pkcs11() {
    pytest("test_pkcs11.py");
}

#[test]
fn layer_sign_at_compile() {
    pytest("test_sign_at_compile.py");
}

#[test]
fn layer_uki() {
    pytest("test_uki.py");
}

#[test]
fn layer_oe_core() {
    pytest("test_oe_core.py");
}

#[test]
fn layer_oelint() {
    pytest("test_oelint.py");
}
