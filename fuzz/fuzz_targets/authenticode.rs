//! Authenticode PKCS#7 parsing and checking, as `pe verify` / `pe attach` use it.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pki_signer::authenticode;

fuzz_target!(|data: &[u8]| {
    let origin = Path::new("fuzz.p7");
    let Ok(sig) = authenticode::parse(data, origin) else {
        return;
    };
    let _ = authenticode::verify_signature(&sig, &[0u8; 32]);
    let digest = sig.image_digest.clone();
    let _ = authenticode::verify_signature(&sig, &digest);
    let _ = authenticode::chains_to(&sig, &sig.certs);
    if let Some(leaf) = &sig.signer_cert {
        let _ = authenticode::chains_to(&sig, std::slice::from_ref(leaf));
        // The cml / openssl-default rules: full path to a self-signed root.
        let _ = pki_signer::chain::build(
            leaf,
            &sig.certs,
            &sig.certs,
            &pki_signer::chain::Rules::root(None),
        );
    }
    for n in &sig.nested {
        let _ = authenticode::parse(n, origin);
    }
});
