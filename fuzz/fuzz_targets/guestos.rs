//! GuestOS manifests: the protobuf text-format parser, and a sign/verify
//! round trip. Signing fills image sizes and hashes into the text in place,
//! so whatever we sign must parse again and verify.
#![no_main]

#[path = "common.rs"]
mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pki_signer::guestos::{self, GuestOsConfig, ImageDir, SignOptions, VerifyOptions};
use pki_signer::identity::Identity;

/// A scratch directory with the images the seed manifests name.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = common::scratch("guestos");
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("images")).unwrap();
        for (name, len) in [("root", 4096), ("setup", 100), ("modules", 1), ("etc", 0)] {
            std::fs::write(d.join("images").join(format!("{name}.img")), vec![7u8; len]).unwrap();
        }
        d
    })
}

fn signer() -> &'static Identity {
    static ID: OnceLock<Identity> = OnceLock::new();
    ID.get_or_init(common::identity)
}

fuzz_target!(|data: &[u8]| {
    let conf = dir().join("g.conf");
    let Ok(m) = GuestOsConfig::parse(&conf, data.to_vec()) else {
        return;
    };
    for mt in &m.mounts {
        let _ = mt.has_image();
    }
    std::fs::write(&conf, data).unwrap();
    let images = ImageDir::scan(&dir().join("images")).unwrap();
    let opts = SignOptions {
        images: Some(&images),
        cms: false,
        signing_time: None,
        allow_missing_images: true,
        verity: false,
    };
    if guestos::sign(std::slice::from_ref(&conf), signer(), &opts).is_ok() {
        let signed = std::fs::read(&conf).unwrap();
        let again = GuestOsConfig::parse(&conf, signed)
            .unwrap_or_else(|e| panic!("the conf we filled in does not parse: {e}"));
        assert_eq!(again.mounts.len(), m.mounts.len());
        let trust = [signer().cert.clone()];
        let mut vo = VerifyOptions {
            trust: &trust,
            images: None,
            check_time: true,
        };
        let r = guestos::verify(&conf, &vo).expect("verify what we signed");
        assert!(r.ok, "what we signed does not verify: {:?}", r.problems);
        // Every image that signing found was filled in, so it checks out
        // (verity needs a .hash.img that this directory does not have).
        let images = dir().join("images");
        vo.images = Some(&images);
        let r = guestos::verify(&conf, &vo).expect("verify what we signed, with images");
        for c in r.images.iter().filter(|c| c.path.is_some()) {
            let bad: Vec<_> = c
                .problems
                .iter()
                .filter(|p| !p.contains("image_verity_sha256"))
                .collect();
            assert!(bad.is_empty(), "{} after filling: {bad:?}", c.mount);
        }
    }
});
