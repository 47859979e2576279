//! Generic PKCS#7 / CMS SignedData (EFI authenticated variables, GuestOS CMS).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pki_signer::pkcs7;

fuzz_target!(|data: &[u8]| {
    let Ok(sd) = pkcs7::parse(data, Path::new("fuzz.p7s")) else {
        return;
    };
    let _ = sd.verify_detached(b"content");
    if let Some(c) = &sd.content {
        let _ = sd.verify_detached(c);
    }
    for si in &sd.signers {
        let _ = si.describe_sid();
        if let Some(leaf) = sd.signer_cert(si) {
            let _ = sd.trusted_by(leaf, &sd.certs);
        }
    }
    for c in &sd.certs {
        let _ = sd.trusted_by(c, &sd.certs);
    }
});
