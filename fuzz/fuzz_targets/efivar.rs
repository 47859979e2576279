//! EFI signature lists and authenticated variables, as `efivar show/verify`
//! and `pe verify --db/--dbx` read them.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pki_signer::efivar::{self, SecureVar};
use pki_signer::pkcs7;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.esl");
    if let Ok(entries) = efivar::parse_esl(data, path) {
        for e in &entries {
            let _ = efivar::describe_entry(e, path);
        }
    }
    for var in SecureVar::ALL {
        let _ = efivar::check_var_content(var, data, path);
    }
    if efivar::is_auth(data) {
        if let Ok(auth) = efivar::parse_auth(data, path) {
            let _ = auth.time.to_string();
            let _ = efivar::parse_esl(&auth.data, path);
            if let Ok(sd) = pkcs7::parse(&auth.pkcs7, path) {
                let _ = auth.signed_for(&sd);
                for si in &sd.signers {
                    if let Some(leaf) = sd.signer_cert(si) {
                        let _ = sd.trusted_by(leaf, &sd.certs);
                    }
                }
            }
        }
    }
});
