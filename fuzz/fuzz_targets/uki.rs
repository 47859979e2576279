//! The UKI readers: a systemd stub's headers and `.sdmagic` (`uki build`),
//! a UKI's sections (`uki show` / `uki measure`), `.pcrsig` JSON and
//! `.pcrpkey` PEM, the policy check that combines them, and the kernel
//! release `uki build` finds in a kernel.
#![no_main]

#[path = "common.rs"]
mod common;

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pki_signer::uki::{self, build, pcr};

fuzz_target!(|data: &[u8]| {
    // As a stub.
    if let Ok(stub) = build::Stub::parse(data.to_vec(), Path::new("fuzz.stub")) {
        let _ = uki::rules_for(&stub.version, Path::new("fuzz.stub"));
    }
    // As a UKI file.
    let path = common::scratch_with("in.efi", data);
    let _ = uki::show(&path);
    let _ = uki::measure_uki(&path, &[pcr::Bank::Sha256], &["enter-initrd".to_string()]);
    // As a kernel whose release `uki build` looks for.
    let _ = build::kernel_uname(&path);
    // As section contents.
    let _ = uki::parse_sdmagic(data, Path::new("fuzz.efi"));
    let key = uki::public_key_from_pem(data).ok();
    if let Ok(sig) = pcr::parse_pcrsig(data) {
        let _ = uki::check_policies(&sig, key.as_ref(), None);
    }
});
