//! UEFI signature lists (EFI_SIGNATURE_LIST, "ESL"), the format of the PK,
//! KEK, db and dbx variables.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::error::{Error, Result};

/// An EFI_GUID, stored in its on-disk byte order (first three fields little-endian).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

pub const EFI_CERT_X509_GUID: Guid = Guid::from_fields(
    0xa5c0_59a1,
    0x94e4,
    0x4aa7,
    [0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72],
);
pub const EFI_CERT_SHA256_GUID: Guid = Guid::from_fields(
    0xc1c4_1626,
    0x504c,
    0x4092,
    [0xac, 0xa9, 0x41, 0xf9, 0x36, 0x93, 0x43, 0x28],
);

impl Guid {
    pub const fn from_fields(a: u32, b: u16, c: u16, d: [u8; 8]) -> Guid {
        let a = a.to_le_bytes();
        let b = b.to_le_bytes();
        let c = c.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5],
            d[6], d[7],
        ])
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
            u16::from_le_bytes([g[4], g[5]]),
            u16::from_le_bytes([g[6], g[7]]),
            g[8],
            g[9],
            g[10],
            g[11],
            g[12],
            g[13],
            g[14],
            g[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Guid {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Guid, String> {
        let bad = || format!("'{s}' is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
        let parts: Vec<&str> = s.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if parts.len() != 5
            || parts
                .iter()
                .zip(lens)
                .any(|(p, l)| p.len() != l || !p.bytes().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(bad());
        }
        let a = u32::from_str_radix(parts[0], 16).map_err(|_| bad())?;
        let b = u16::from_str_radix(parts[1], 16).map_err(|_| bad())?;
        let c = u16::from_str_radix(parts[2], 16).map_err(|_| bad())?;
        let tail = format!("{}{}", parts[3], parts[4]);
        let mut d = [0u8; 8];
        for (i, byte) in d.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&tail[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Guid::from_fields(a, b, c, d))
    }
}

impl serde::Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Guid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Size of EFI_SIGNATURE_LIST's fixed header: type GUID + three u32.
const LIST_HEADER: usize = 16 + 4 + 4 + 4;

/// One signature list holding one X.509 certificate, as efitools'
/// cert-to-efi-sig-list writes it. Concatenate lists for several certs.
pub fn esl_x509(owner: Guid, cert_der: &[u8]) -> Vec<u8> {
    esl(EFI_CERT_X509_GUID, owner, &[cert_der])
}

/// One signature list of SHA-256 hashes (all entries share one list, as they
/// have the same size).
pub fn esl_sha256(owner: Guid, hashes: &[[u8; 32]]) -> Vec<u8> {
    let refs: Vec<&[u8]> = hashes.iter().map(|h| h.as_slice()).collect();
    esl(EFI_CERT_SHA256_GUID, owner, &refs)
}

fn esl(sig_type: Guid, owner: Guid, entries: &[&[u8]]) -> Vec<u8> {
    let sig_size = 16 + entries.first().map_or(0, |e| e.len());
    let total = LIST_HEADER + sig_size * entries.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&sig_type.0);
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // SignatureHeaderSize
    out.extend_from_slice(&(sig_size as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&owner.0);
        out.extend_from_slice(e);
    }
    out
}

/// One entry of a parsed signature list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigEntry {
    pub sig_type: Guid,
    pub owner: Guid,
    pub data: Vec<u8>,
}

impl SigEntry {
    pub fn is_x509(&self) -> bool {
        self.sig_type == EFI_CERT_X509_GUID
    }
}

/// Parse a concatenation of EFI_SIGNATURE_LISTs, checking every size field
/// against the buffer so that a hostile file cannot make us read past it.
pub fn parse_esl(bytes: &[u8], path: &Path) -> Result<Vec<SigEntry>> {
    let mut out = Vec::new();
    let mut off = 0usize;
    let u32_at = |o: usize| {
        u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
    };
    while off < bytes.len() {
        let bad =
            |msg: String| Error::input(path, format!("signature list at offset {off}: {msg}"));
        if bytes.len() - off < LIST_HEADER {
            return Err(bad(format!(
                "truncated header ({} bytes left)",
                bytes.len() - off
            )));
        }
        let mut t = [0u8; 16];
        t.copy_from_slice(&bytes[off..off + 16]);
        let list_size = u32_at(off + 16);
        let header_size = u32_at(off + 20);
        let sig_size = u32_at(off + 24);
        if list_size < LIST_HEADER || list_size > bytes.len() - off {
            return Err(bad(format!("list size {list_size} does not fit the file")));
        }
        if sig_size < 16 {
            return Err(bad(format!(
                "signature size {sig_size} is smaller than an owner GUID"
            )));
        }
        let body = list_size - LIST_HEADER;
        if header_size > body || (body - header_size) % sig_size != 0 {
            return Err(bad(format!(
                "list size {list_size} is not header {header_size} + n x signature size {sig_size}"
            )));
        }
        let mut p = off + LIST_HEADER + header_size;
        while p < off + list_size {
            let mut owner = [0u8; 16];
            owner.copy_from_slice(&bytes[p..p + 16]);
            out.push(SigEntry {
                sig_type: Guid(t),
                owner: Guid(owner),
                data: bytes[p + 16..p + sig_size].to_vec(),
            });
            p += sig_size;
        }
        off += list_size;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_round_trip_and_byte_order() {
        let g: Guid = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072".parse().unwrap();
        assert_eq!(g, EFI_CERT_X509_GUID);
        assert_eq!(&g.0[..4], &[0xa1, 0x59, 0xc0, 0xa5]);
        assert_eq!(g.to_string(), "a5c059a1-94e4-4aa7-87b5-ab155c2bf072");
        assert!("a5c059a1-94e4-4aa7-87b5".parse::<Guid>().is_err());
    }

    #[test]
    fn parse_rejects_sizes_that_do_not_fit() {
        let owner = EFI_CERT_SHA256_GUID;
        let esl = esl_sha256(owner, &[[1u8; 32], [2u8; 32]]);
        let entries = parse_esl(&esl, Path::new("x")).unwrap();
        assert_eq!(entries.len(), 2);
        assert!(parse_esl(&esl[..esl.len() - 1], Path::new("x")).is_err());
        let mut bad = esl.clone();
        bad[24] = 0;
        assert!(parse_esl(&bad, Path::new("x")).is_err());
    }
}
