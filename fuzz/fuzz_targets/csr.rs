//! CSR reading (PEM or DER), `csr show`'s inspection, and `csr sign`'s
//! checks and issuing with a test Device CA.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pki_signer::csr::{self, CsrFile, IssueOptions, Issuer, Profile};
use pki_signer::identity::Identity;

fn ca() -> &'static Identity {
    static ID: OnceLock<Identity> = OnceLock::new();
    ID.get_or_init(common::identity)
}

fuzz_target!(|data: &[u8]| {
    let path = common::scratch_with("in.csr", data);
    let Ok(req) = CsrFile::read(&path) else {
        return;
    };
    let _ = csr::inspect(&req);
    for profile in [
        None,
        Some(Profile::Gyroidos),
        Some(Profile::Golioth {
            project: "fuzz".into(),
        }),
    ] {
        let opts = IssueOptions {
            not_before: time::OffsetDateTime::now_utc(),
            days: 7,
            profile,
        };
        let issuer = Issuer::new(ca(), &opts).expect("test CA can issue");
        if let Ok(issued) = csr::issue(&req, &issuer, &opts) {
            // Whatever we issue must parse back and name the CSR's key.
            pki_signer::x509::parse(&issued.der, &path).expect("issued certificate parses");
            let _ = csr::cert_file(&issued, &issuer);
        }
    }
});
