//! dm-verity hash images, as GyroidOS's cml opens them and `veritysetup
//! format` writes them.
//!
//! cml (common/verity.c, `verity_create_blk_dev`) reads the verity superblock
//! from the first 4096 bytes of `<image>.hash.img` and gives the kernel the
//! table `VERSION DATA HASH DATA_BLOCK_SIZE HASH_BLOCK_SIZE DATA_BLOCKS 1 ALG
//! ROOT SALT` from it: the superblock is required, the tree starts at hash
//! block 1, and the salt must not be empty (an empty one leaves the kernel a
//! table with a missing argument). The device covers the whole image
//! (`tgt->length` = image size in sectors), so the image must be a whole
//! number of data blocks, or the kernel refuses "Data device is too small".
//!
//! We write what `veritysetup format --salt=S --uuid=U` writes (format 1,
//! SHA-256, 4096-byte data and hash blocks), with the salt and UUID derived
//! from the GuestOS name, version and image name instead of drawn at random,
//! so two builds of the same image give the same hash image and root hash.

use aws_lc_rs::digest;

/// Data and hash block size (veritysetup's default, and what cml's images use).
pub const BLOCK: usize = 4096;
const DIGEST: usize = 32;
const PER_BLOCK: usize = BLOCK / DIGEST;
/// The superblock's fixed part; the rest of its hash block is zeros.
const SB_LEN: usize = 512;
const SIGNATURE: &[u8; 8] = b"verity\0\0";
/// Levels cryptsetup and the kernel allow.
const MAX_LEVELS: usize = 63;

/// Salt and UUID of one hash image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub salt: Vec<u8>,
    pub uuid: [u8; 16],
}

impl Params {
    /// Derived from where cml finds the image: `<name>-<version>/<image_file>`.
    /// A 32-byte salt, as veritysetup's default, different per GuestOS image.
    pub fn derive(name: &str, version: u64, image_file: &str) -> Params {
        let id = format!("{name}-{version}/{image_file}");
        let h = |label: &str| {
            let mut c = digest::Context::new(&digest::SHA256);
            c.update(b"pki-signer dm-verity ");
            c.update(label.as_bytes());
            c.update(b"\0");
            c.update(id.as_bytes());
            c.finish()
        };
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&h("uuid").as_ref()[..16]);
        // RFC 9562 version 8 (custom), variant 10.
        uuid[6] = (uuid[6] & 0x0f) | 0x80;
        uuid[8] = (uuid[8] & 0x3f) | 0x80;
        Params {
            salt: h("salt").as_ref().to_vec(),
            uuid,
        }
    }

    /// `12345678-9abc-...`, as `veritysetup --uuid` takes it.
    pub fn uuid_string(&self) -> String {
        let h = crate::codec::hex(&self.uuid);
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }
}

/// The level-0 hashes of an image, fed in order, whole blocks at a time.
pub struct Tree {
    salted: digest::Context,
    params: Params,
    level0: Vec<u8>,
    blocks: u64,
    /// Bytes after the last whole block (only ever at the end).
    tail: usize,
}

/// A finished hash image.
pub struct HashImage {
    /// The whole `<image>.hash.img`.
    pub bytes: Vec<u8>,
    /// The root hash, lowercase hex: `image_verity_sha256`.
    pub root: String,
}

impl Tree {
    pub fn new(params: Params) -> Tree {
        let mut salted = digest::Context::new(&digest::SHA256);
        salted.update(&params.salt);
        Tree {
            salted,
            params,
            level0: vec![],
            blocks: 0,
            tail: 0,
        }
    }

    /// Hash the blocks of `data`, which continues the image. Only the last
    /// piece of an image may end inside a block.
    pub fn update(&mut self, data: &[u8]) {
        debug_assert_eq!(self.tail, 0, "data after a partial block");
        let mut chunks = data.chunks_exact(BLOCK);
        self.level0.reserve(data.len() / BLOCK * DIGEST);
        for b in &mut chunks {
            self.level0.extend_from_slice(self.hash(b).as_ref());
            self.blocks += 1;
        }
        self.tail += chunks.remainder().len();
    }

    fn hash(&self, block: &[u8]) -> digest::Digest {
        let mut c = self.salted.clone();
        c.update(block);
        c.finish()
    }

    /// The hash image, or why cml could not use one for this image.
    pub fn finish(self) -> Result<HashImage, String> {
        if self.tail != 0 {
            return Err(format!(
                "its size is not a multiple of {BLOCK} bytes: cml maps the whole image, and the kernel refuses a dm-verity device larger than its data blocks (\"Data device is too small\")"
            ));
        }
        if self.blocks == 0 {
            return Err("it is empty: dm-verity needs at least one block".into());
        }
        let Tree {
            salted,
            params,
            level0,
            blocks,
            ..
        } = self;
        let hash = |b: &[u8]| {
            let mut c = salted.clone();
            c.update(b);
            c.finish()
        };
        // Levels as the kernel and cryptsetup count them: enough that one
        // hash block covers everything below the top.
        let mut levels = 0usize;
        while levels < MAX_LEVELS
            && (blocks - 1) >> (PER_BLOCK.trailing_zeros() as usize * levels) != 0
        {
            levels += 1;
        }
        // Level i (0 = hashes of data blocks) as whole hash blocks.
        let mut tree: Vec<Vec<u8>> = vec![];
        let mut below = level0;
        for _ in 0..levels {
            let n = below.len().div_ceil(BLOCK);
            below.resize(n * BLOCK, 0);
            let mut next = Vec::with_capacity(n * DIGEST);
            for b in below.chunks_exact(BLOCK) {
                next.extend_from_slice(hash(b).as_ref());
            }
            tree.push(below);
            below = next;
        }
        // `below` is now the root: the digest of the top block, or of the
        // only data block when there are no levels.
        let root = below;
        debug_assert_eq!(root.len(), DIGEST);
        let total: usize = BLOCK + tree.iter().map(Vec::len).sum::<usize>();
        let mut bytes = Vec::with_capacity(total);
        bytes.extend_from_slice(&superblock(&params, blocks));
        bytes.resize(BLOCK, 0);
        // The top level first, the level over the data blocks last.
        for level in tree.iter().rev() {
            bytes.extend_from_slice(level);
        }
        Ok(HashImage {
            bytes,
            root: crate::codec::hex(&root),
        })
    }
}

/// The on-disk superblock (cryptsetup's `struct verity_sb`, cml's `verity_sb_t`).
fn superblock(p: &Params, data_blocks: u64) -> [u8; SB_LEN] {
    let mut sb = [0u8; SB_LEN];
    sb[0..8].copy_from_slice(SIGNATURE);
    sb[8..12].copy_from_slice(&1u32.to_le_bytes()); // superblock version
    sb[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type: normal (not Chrome OS)
    sb[16..32].copy_from_slice(&p.uuid);
    sb[32..38].copy_from_slice(b"sha256");
    sb[64..68].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    sb[68..72].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    sb[80..82].copy_from_slice(&(p.salt.len() as u16).to_le_bytes());
    sb[88..88 + p.salt.len()].copy_from_slice(&p.salt);
    sb
}

/// What a hash image's superblock says, checked against what cml and we use.
#[derive(Debug, PartialEq, Eq)]
pub struct Superblock {
    pub params: Params,
    pub data_blocks: u64,
}

/// Read the superblock at the start of a hash image. Refuses anything but
/// format 1, SHA-256 and 4096-byte blocks with a non-empty salt: what cml
/// passes on to the kernel unchanged, and what we write.
pub fn parse_superblock(b: &[u8]) -> Result<Superblock, String> {
    if b.len() < SB_LEN {
        return Err(format!(
            "{} bytes: too short for a dm-verity superblock",
            b.len()
        ));
    }
    if &b[0..8] != SIGNATURE {
        return Err("no dm-verity superblock (signature \"verity\" missing)".into());
    }
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let (version, hash_type) = (u32_at(8), u32_at(12));
    if version != 1 || hash_type != 1 {
        return Err(format!(
            "superblock version {version}, hash type {hash_type}: only version 1, type 1 is supported"
        ));
    }
    let alg = &b[32..64];
    let alg_len = alg.iter().position(|&c| c == 0).unwrap_or(alg.len());
    if &alg[..alg_len] != b"sha256" || alg[alg_len..].iter().any(|&c| c != 0) {
        // The whole field, so that bytes after a NUL show.
        let end = alg.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
        return Err(format!(
            "hash algorithm {:?}: only sha256 is supported",
            String::from_utf8_lossy(&alg[..end])
        ));
    }
    let (data_bs, hash_bs) = (u32_at(64), u32_at(68));
    if data_bs as usize != BLOCK || hash_bs as usize != BLOCK {
        return Err(format!(
            "block sizes {data_bs}/{hash_bs}: only {BLOCK}/{BLOCK} is supported"
        ));
    }
    let data_blocks = u64::from_le_bytes(b[72..80].try_into().expect("8 bytes"));
    let salt_len = usize::from(u16::from_le_bytes([b[80], b[81]]));
    if salt_len == 0 || salt_len > 256 {
        return Err(format!(
            "salt of {salt_len} bytes: cml needs 1 to 256 (an empty salt leaves the kernel's table short of an argument)"
        ));
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&b[16..32]);
    Ok(Superblock {
        params: Params {
            salt: b[88..88 + salt_len].to_vec(),
            uuid,
        },
        data_blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_of(data: &[u8], p: &Params) -> Result<HashImage, String> {
        let mut t = Tree::new(p.clone());
        // In pieces, as the reader hands them over.
        let mut rest = data;
        while rest.len() > 3 * BLOCK {
            t.update(&rest[..3 * BLOCK]);
            rest = &rest[3 * BLOCK..];
        }
        t.update(rest);
        t.finish()
    }

    #[test]
    fn layout_and_root_follow_the_level_count() {
        let p = Params::derive("core", 1, "root");
        for blocks in [1usize, 2, 128, 129, 128 * 128 + 1] {
            let data: Vec<u8> = (0..blocks * BLOCK)
                .map(|i| (i * 7 + i / 4096) as u8)
                .collect();
            let h = tree_of(&data, &p).unwrap();
            let (mut n, mut hash_blocks) = (blocks, 0);
            while n > 1 {
                n = n.div_ceil(PER_BLOCK);
                hash_blocks += n;
            }
            assert_eq!(h.bytes.len(), BLOCK * (1 + hash_blocks), "{blocks}");
            let sb = parse_superblock(&h.bytes).unwrap();
            assert_eq!(sb.params, p);
            assert_eq!(sb.data_blocks, blocks as u64);
            // Root = H(salt || top block); with one block, H(salt || data).
            let top: &[u8] = if blocks == 1 {
                &data
            } else {
                &h.bytes[BLOCK..2 * BLOCK]
            };
            let mut c = digest::Context::new(&digest::SHA256);
            c.update(&p.salt);
            c.update(top);
            assert_eq!(h.root, crate::codec::hex(c.finish().as_ref()));
        }
    }

    #[test]
    fn partial_and_empty_images_are_refused() {
        let p = Params::derive("x", 1, "y");
        assert!(tree_of(&[0; BLOCK + 1], &p)
            .err()
            .unwrap()
            .contains("Data device is too small"));
        assert!(tree_of(&[], &p).err().unwrap().contains("empty"));
    }

    #[test]
    fn params_are_stable_and_differ_per_image() {
        let a = Params::derive("core", 1, "root");
        assert_eq!(a, Params::derive("core", 1, "root"));
        assert_ne!(a, Params::derive("core", 2, "root"));
        assert_ne!(a.salt, Params::derive("core", 1, "modules").salt);
        assert_eq!(a.salt.len(), 32);
        assert_eq!(a.uuid_string().len(), 36);
    }

    #[test]
    fn bad_superblocks_are_refused() {
        let p = Params::derive("core", 1, "root");
        let good = superblock(&p, 9);
        assert!(parse_superblock(&good).is_ok());
        let cases: [(usize, u8, &str); 5] = [
            (0, b'V', "signature"),
            (8, 2, "version 2"),
            (32, b'S', "only sha256"),
            (65, 0x20, "block sizes"),
            (80, 0, "salt of 0 bytes"),
        ];
        for (off, v, want) in cases {
            let mut b = good;
            b[off] = v;
            let e = parse_superblock(&b).unwrap_err();
            assert!(e.contains(want), "{off}: {e}");
        }
        assert!(parse_superblock(&good[..100]).is_err());
        // Bytes after the name's NUL are named in the error.
        let mut b = good;
        b[39] = b'x';
        let e = parse_superblock(&b).unwrap_err();
        assert!(e.contains(r#""sha256\0x""#), "{e}");
    }
}
