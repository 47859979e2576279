//! A SoftHSM2 token of the test's own, for the tests that keep keys in an HSM.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{peer, stderr, stdout};

pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The SoftHSM2 peer tools: softhsm2-util and pkcs11-tool.
pub struct Tools {
    pub softhsm: PathBuf,
    pub pkcs11_tool: PathBuf,
}

/// The tools, once the SoftHSM2 module is known to be installed. None (the
/// test skips) when something is missing, unless PKI_SIGNER_REQUIRE_PEERS=1.
pub fn tools() -> Option<Tools> {
    let softhsm = peer("softhsm2-util")?;
    let pkcs11_tool = peer("pkcs11-tool")?;
    if !Path::new(MODULE).is_file() {
        if std::env::var("PKI_SIGNER_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("{MODULE} is required (apt install softhsm2)");
        }
        eprintln!("skipped: {MODULE} not installed");
        return None;
    }
    Some(Tools {
        softhsm,
        pkcs11_tool,
    })
}

/// Makes `dir`/softhsm2.conf keep tokens in `dir`/tokens and initialises a
/// token `label` there. Returns the configuration file, for SOFTHSM2_CONF.
pub fn init_token(t: &Tools, dir: &Path, label: &str, so_pin: &str, pin: &str) -> PathBuf {
    std::fs::create_dir(dir.join("tokens")).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir.join("tokens").display()
        ),
    )
    .unwrap();
    let args = [
        "--init-token",
        "--free",
        "--label",
        label,
        "--so-pin",
        so_pin,
        "--pin",
        pin,
    ];
    let o = Command::new(&t.softhsm)
        .args(args)
        .current_dir(dir)
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("run softhsm2-util");
    assert!(
        o.status.success(),
        "{} {args:?} failed: {}{}",
        t.softhsm.display(),
        stdout(&o),
        stderr(&o)
    );
    conf
}
