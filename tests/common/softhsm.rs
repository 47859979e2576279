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

/// Write `file` (DER) into the token as an object of type `ty` (privkey,
/// pubkey, cert) with `label` and `id`, as pkcs11-tool does; private keys may sign.
#[allow(clippy::too_many_arguments, dead_code)]
pub fn write_object(
    t: &Tools,
    conf: &Path,
    dir: &Path,
    pin: &str,
    file: &str,
    ty: &str,
    label: &str,
    id: &str,
) {
    let mut args = vec!["--module", MODULE, "--login", "--pin", pin];
    args.extend([
        "--write-object",
        file,
        "--type",
        ty,
        "--label",
        label,
        "--id",
        id,
    ]);
    if ty == "privkey" {
        args.push("--usage-sign");
    }
    let o = Command::new(&t.pkcs11_tool)
        .args(&args)
        .current_dir(dir)
        .env("SOFTHSM2_CONF", conf)
        .output()
        .expect("run pkcs11-tool");
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
}

/// `key` (a PEM private key) as unencrypted PKCS#8 DER at `out`, for
/// pkcs11-tool --write-object (openssl pkcs8 -topk8).
#[allow(dead_code)]
pub fn pkcs8_der(key: &Path, out: &Path) {
    let o = Command::new(super::openssl())
        .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in"])
        .arg(key)
        .arg("-out")
        .arg(out)
        .output()
        .expect("run openssl");
    assert!(
        o.status.success(),
        "openssl pkcs8 {}: {}",
        key.display(),
        stderr(&o)
    );
}
