//! PE parsing, the Authenticode digest, the certificate table and what
//! `pe verify` does with each signature in it; plus a signing round trip:
//! whatever we accept and sign must re-open with the digest we signed.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use pki_signer::image::{self, Trust};
use pki_signer::pe::PeImage;
use pki_signer::{authenticode, x509};

fuzz_target!(|data: &[u8]| {
    let path = common::scratch_with("in.efi", data);
    let img = match PeImage::open(&path) {
        Ok(img) => img,
        Err(_) => return,
    };
    let _ = img.info();
    let digest = img.digest();
    if let Ok(entries) = img.signatures() {
        for e in &entries {
            let Ok(sig) = authenticode::parse(&e.data, &path) else {
                continue;
            };
            if let Ok(d) = &digest {
                let _ = authenticode::verify_signature(&sig, &d.sha256);
            }
            // The carried certificates as anchors walk every chain in it.
            let _ = authenticode::chains_to(&sig, &sig.certs);
            if let Some(c) = &sig.signer_cert {
                let _ = x509::parse(c, &path).map(|p| p.subject().to_string());
            }
            for n in &sig.nested {
                let _ = authenticode::parse(n, &path);
            }
        }
    }
    // What `pe verify` and `pe show` run.
    let _ = image::verify(&path, &Trust::default());

    if let Ok(d) = digest {
        let out = common::scratch("out.efi");
        let sigs = [vec![0x30, 0x03, 0x02, 0x01, 0x01]];
        if img.write_signed(&d, &sigs, &out).is_ok() {
            let o = PeImage::open(&out).expect("our own signed output must open");
            assert_eq!(
                o.digest().expect("digest of our output").sha256,
                d.sha256,
                "signed output has a different digest than what was signed"
            );
            let s = o.signatures().expect("our own table must read back");
            assert_eq!(s.last().map(|w| w.data.as_slice()), Some(&sigs[0][..]));
        }
    }
});
