//! The two text encodings of binary data the tool prints and writes: hex
//! (fingerprints, digests) and PEM; and a SHA-256 that can stop on one host
//! and finish on another.

use sha2::{Digest, Sha256};

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// SHA-256 of `data` in lower-case hex: the fingerprint format of every report.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// PEM with LF line endings (the `pem` crate defaults to CRLF, which openssl
/// tolerates but diff, sha256sum-based caches and humans do not).
pub fn pem_encode(tag: &str, der: &[u8]) -> String {
    let cfg = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(tag, der.to_vec()), cfg)
}

/// A SHA-256 computation that can be stopped, written down and finished
/// elsewhere: the offline signing host finishes the Authenticode digest of a
/// UKI over the `.pcrsig` it makes itself, without the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sha256Midstate {
    /// The chaining value after `compressed` bytes.
    pub state: [u32; 8],
    /// Bytes compressed so far: a multiple of 64.
    pub compressed: u64,
    /// Bytes given but not yet compressed: fewer than 64.
    pub pending: Vec<u8>,
}

impl Default for Sha256Midstate {
    fn default() -> Self {
        Sha256Midstate {
            state: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                0x5be0cd19,
            ],
            compressed: 0,
            pending: Vec::with_capacity(64),
        }
    }
}

impl Sha256Midstate {
    pub fn update(&mut self, mut data: &[u8]) {
        use sha2::digest::generic_array::GenericArray;
        if !self.pending.is_empty() {
            let take = (64 - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < 64 {
                return;
            }
            let block = std::mem::take(&mut self.pending);
            sha2::compress256(&mut self.state, &[*GenericArray::from_slice(&block)]);
            self.compressed += 64;
            self.pending = block;
            self.pending.clear();
        }
        let mut blocks = data.chunks_exact(64);
        for b in &mut blocks {
            sha2::compress256(&mut self.state, &[*GenericArray::from_slice(b)]);
        }
        self.compressed += (data.len() - blocks.remainder().len()) as u64;
        self.pending.extend_from_slice(blocks.remainder());
    }

    /// The digest of everything given (FIPS 180-4 padding).
    pub fn finish(mut self) -> [u8; 32] {
        let bits = (self.compressed + self.pending.len() as u64).wrapping_mul(8);
        let mut tail = vec![0x80u8];
        let zeros = (64 - (self.pending.len() + 9) % 64) % 64;
        tail.resize(1 + zeros, 0);
        tail.extend_from_slice(&bits.to_be_bytes());
        self.update(&tail);
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// The chaining value as 32 bytes (big-endian words), for the request.
    pub fn state_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// The inverse of [`Sha256Midstate::state_bytes`] with the counts;
    /// None unless `compressed` is whole blocks and `pending` less than one.
    pub fn from_parts(state: &[u8; 32], compressed: u64, pending: &[u8]) -> Option<Self> {
        if compressed % 64 != 0 || pending.len() >= 64 {
            return None;
        }
        let mut s = [0u32; 8];
        for (w, b) in s.iter_mut().zip(state.chunks_exact(4)) {
            *w = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        }
        Some(Sha256Midstate {
            state: s,
            compressed,
            pending: pending.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn midstate_equals_sha256_however_it_is_split_and_carried() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for len in [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000] {
            let want: [u8; 32] = Sha256::digest(&data[..len]).into();
            for cut in [0, 1, 63, 64, 100, len] {
                let cut = cut.min(len);
                let mut m = Sha256Midstate::default();
                m.update(&data[..cut]);
                let carried =
                    Sha256Midstate::from_parts(&m.state_bytes(), m.compressed, &m.pending).unwrap();
                let mut m = carried;
                for piece in data[cut..len].chunks(17) {
                    m.update(piece);
                }
                assert_eq!(m.finish(), want, "len {len} cut {cut}");
            }
        }
        assert!(Sha256Midstate::from_parts(&[0; 32], 63, &[]).is_none());
        assert!(Sha256Midstate::from_parts(&[0; 32], 64, &[0; 64]).is_none());
    }
}
