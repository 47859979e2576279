//! Offline signing requests and responses, as `offline sign` and
//! `offline complete` parse and check them (strict hex, caps, every `tbs`
//! re-derived by its format module, response signatures verified).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pki_signer::offline;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.json");
    if let Ok(r) = offline::parse_request(data, path) {
        // A request that passes must serialise and parse back the same.
        let again = offline::to_json(&r.request).expect("serialise");
        let r2 = offline::parse_request(&again, path).expect("re-parse a checked request");
        assert_eq!(r2.sha256, r.sha256);
    }
    if let Ok(r) = offline::parse_response(data, path) {
        assert_eq!(r.results.len(), r.request.items.len());
    }
});
