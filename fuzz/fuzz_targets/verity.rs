//! dm-verity hash images: the superblock reader `guestos verify --images`
//! applies to `<image>.hash.img`, and the tree built with what it read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pki_signer::guestos::verity;

fuzz_target!(|data: &[u8]| {
    let Ok(sb) = verity::parse_superblock(data) else {
        return;
    };
    assert!(!sb.params.salt.is_empty() && sb.params.salt.len() <= 256);
    // The rest of the input as image data: whole blocks give a hash image
    // whose superblock reads back the same; anything else is refused.
    let image = &data[data.len().min(512)..];
    let mut t = verity::Tree::new(sb.params.clone());
    t.update(image);
    match t.finish() {
        Ok(h) => {
            assert!(image.len() % verity::BLOCK == 0 && !image.is_empty());
            let again = verity::parse_superblock(&h.bytes).expect("our own superblock");
            assert_eq!(again.params, sb.params);
            assert_eq!(again.data_blocks, (image.len() / verity::BLOCK) as u64);
            assert_eq!(h.root.len(), 64);
        }
        Err(_) => assert!(image.len() % verity::BLOCK != 0 || image.is_empty()),
    }
});
