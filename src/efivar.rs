//! UEFI signature lists (EFI_SIGNATURE_LIST, "ESL"), the format of the PK,
//! KEK, db and dbx variables.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::{pkcs7, x509};

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

/// One signature list of EFI_CERT_X509_SHA256 entries: the SHA-256 of each
/// certificate's TBSCertificate, then a zero EFI_TIME revocation time, as
/// efitools' cert-to-efi-hash-list writes them. EDK2's
/// `IsCertHashFoundInDbx` matches it against every certificate a signature
/// carries and against the db certificate that verified it; a zero
/// revocation time means revoked whatever the signing time.
pub fn esl_x509_sha256(owner: Guid, certs: &[Vec<u8>], path: &Path) -> Result<Vec<u8>> {
    let mut entries = vec![];
    for c in certs {
        let mut h = crate::chain::tbs_hash(c, 32)
            .ok_or_else(|| Error::input(path, "not a certificate: no TBSCertificate to hash"))?;
        h.extend_from_slice(&[0u8; 16]);
        entries.push(h);
    }
    let refs: Vec<&[u8]> = entries.iter().map(|e| e.as_slice()).collect();
    Ok(esl(EFI_CERT_X509_SHA256_GUID, owner, &refs))
}

/// One EFI_SIGNATURE_LIST as it is in a file: its type, header, entry size
/// and entries (owner GUID, data), so that lists can be filtered and
/// written back unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigList {
    pub sig_type: Guid,
    pub header: Vec<u8>,
    pub sig_size: usize,
    pub entries: Vec<(Guid, Vec<u8>)>,
}

impl SigList {
    pub fn to_bytes(&self) -> Vec<u8> {
        let total = LIST_HEADER + self.header.len() + self.sig_size * self.entries.len();
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&self.sig_type.0);
        out.extend_from_slice(&(total as u32).to_le_bytes());
        out.extend_from_slice(&(self.header.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.sig_size as u32).to_le_bytes());
        out.extend_from_slice(&self.header);
        for (owner, data) in &self.entries {
            out.extend_from_slice(&owner.0);
            out.extend_from_slice(data);
        }
        out
    }
}

/// The lists of a signature database, each with its entries ([`parse_esl`]
/// checks the sizes; this keeps the list boundaries).
pub fn parse_lists(bytes: &[u8], path: &Path) -> Result<Vec<SigList>> {
    // parse_esl validates every size field; walk the same layout again.
    parse_esl(bytes, path)?;
    let u32_at = |o: usize| {
        u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
    };
    let mut out = vec![];
    let mut off = 0;
    while off < bytes.len() {
        let mut t = [0u8; 16];
        t.copy_from_slice(&bytes[off..off + 16]);
        let (list_size, header_size, sig_size) =
            (u32_at(off + 16), u32_at(off + 20), u32_at(off + 24));
        let header = bytes[off + LIST_HEADER..off + LIST_HEADER + header_size].to_vec();
        let mut entries = vec![];
        let mut p = off + LIST_HEADER + header_size;
        while p < off + list_size {
            let mut owner = [0u8; 16];
            owner.copy_from_slice(&bytes[p..p + 16]);
            entries.push((Guid(owner), bytes[p + 16..p + sig_size].to_vec()));
            p += sig_size;
        }
        out.push(SigList {
            sig_type: Guid(t),
            header,
            sig_size,
            entries,
        });
        off += list_size;
    }
    Ok(out)
}

/// `base` followed by the entries of `more` that `base` (or an earlier list
/// of `more`) does not already hold, list by list, each list keeping its
/// type, header and entry size; lists left empty are dropped. An entry is
/// the same when its type and data are, whoever owns it: firmware gains
/// nothing from a revocation listed twice. Returns the merged lists and how
/// many entries were added.
pub fn merge_lists(base: &[u8], more: &[Vec<SigList>], path: &Path) -> Result<(Vec<u8>, usize)> {
    let mut seen: std::collections::HashSet<(Guid, Vec<u8>)> = parse_esl(base, path)?
        .into_iter()
        .map(|e| (e.sig_type, e.data))
        .collect();
    let mut out = base.to_vec();
    let mut added = 0;
    for lists in more {
        for l in lists {
            let mut keep = l.clone();
            keep.entries
                .retain(|(_, d)| seen.insert((l.sig_type, d.clone())));
            if !keep.entries.is_empty() {
                added += keep.entries.len();
                out.extend(keep.to_bytes());
            }
        }
    }
    Ok((out, added))
}

/// The signature lists of a file: an `.esl` as it is, or the content of an
/// `.auth` (a published update such as a dbx revocation list).
pub fn lists_of_file(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    if is_auth(bytes) {
        Ok(parse_auth(bytes, path)?.data)
    } else {
        parse_esl(bytes, path)?;
        Ok(bytes.to_vec())
    }
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
        // Types of fixed size: UEFI 2.10 section 32.4.1 (hash, or hash then
        // an EFI_TIME revocation time, after the owner GUID). Firmware reads
        // exactly that many bytes, so any other size is a broken list.
        let ty = Guid(t);
        let fixed = [
            (EFI_CERT_SHA1_GUID, 20),
            (EFI_CERT_SHA224_GUID, 28),
            (EFI_CERT_SHA256_GUID, 32),
            (EFI_CERT_SHA384_GUID, 48),
            (EFI_CERT_SHA512_GUID, 64),
            (EFI_CERT_RSA2048_GUID, 256),
            (EFI_CERT_X509_SHA256_GUID, 32 + 16),
            (EFI_CERT_X509_SHA384_GUID, 48 + 16),
            (EFI_CERT_X509_SHA512_GUID, 64 + 16),
        ];
        if let Some((_, n)) = fixed.iter().find(|(g, _)| *g == ty) {
            if sig_size != 16 + n {
                return Err(bad(format!(
                    "{} entries are {} bytes, not {sig_size}",
                    sig_type_name(ty),
                    16 + n
                )));
            }
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

// ---------------------------------------------------------------------------
// Signature types, for display

pub const EFI_CERT_SHA1_GUID: Guid = Guid::from_fields(
    0x826c_a512,
    0xcf10,
    0x4ac9,
    [0xb1, 0x87, 0xbe, 0x01, 0x49, 0x66, 0x31, 0xbd],
);
pub const EFI_CERT_SHA224_GUID: Guid = Guid::from_fields(
    0x0b6e_5233,
    0xa65c,
    0x44c9,
    [0x94, 0x07, 0xd9, 0xab, 0x83, 0xbf, 0xc8, 0xbd],
);
pub const EFI_CERT_SHA384_GUID: Guid = Guid::from_fields(
    0xff3e_5307,
    0x9fd0,
    0x48c9,
    [0x85, 0xf1, 0x8a, 0xd5, 0x6c, 0x70, 0x1e, 0x01],
);
pub const EFI_CERT_SHA512_GUID: Guid = Guid::from_fields(
    0x093e_0fae,
    0xa6c4,
    0x4f50,
    [0x9f, 0x1b, 0xd4, 0x1e, 0x2b, 0x89, 0xc1, 0x9a],
);
pub const EFI_CERT_RSA2048_GUID: Guid = Guid::from_fields(
    0x3c57_66e8,
    0x269c,
    0x4e34,
    [0xaa, 0x14, 0xed, 0x77, 0x6e, 0x85, 0xb3, 0xb6],
);
pub const EFI_CERT_X509_SHA256_GUID: Guid = Guid::from_fields(
    0x3bd2_a492,
    0x96c0,
    0x4079,
    [0xb4, 0x20, 0xfc, 0xf9, 0x8e, 0xf1, 0x03, 0xed],
);
pub const EFI_CERT_X509_SHA384_GUID: Guid = Guid::from_fields(
    0x7076_876e,
    0x80c2,
    0x4ee6,
    [0xaa, 0xd2, 0x28, 0xb3, 0x49, 0xa6, 0x86, 0x5b],
);
pub const EFI_CERT_X509_SHA512_GUID: Guid = Guid::from_fields(
    0x446d_bf63,
    0x2502,
    0x4cda,
    [0xbc, 0xfa, 0x24, 0x65, 0xd2, 0xb0, 0xfe, 0x9d],
);

/// Short name of a signature type GUID ("x509", "sha256"...), or the GUID.
pub fn sig_type_name(t: Guid) -> String {
    let known = [
        (EFI_CERT_X509_GUID, "x509"),
        (EFI_CERT_SHA256_GUID, "sha256"),
        (EFI_CERT_SHA1_GUID, "sha1"),
        (EFI_CERT_SHA224_GUID, "sha224"),
        (EFI_CERT_SHA384_GUID, "sha384"),
        (EFI_CERT_SHA512_GUID, "sha512"),
        (EFI_CERT_RSA2048_GUID, "rsa2048"),
        (EFI_CERT_X509_SHA256_GUID, "x509-sha256"),
        (EFI_CERT_X509_SHA384_GUID, "x509-sha384"),
        (EFI_CERT_X509_SHA512_GUID, "x509-sha512"),
    ];
    known
        .iter()
        .find(|(g, _)| *g == t)
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| t.to_string())
}

/// A signature list as written by `efivar esl`: one list per certificate (as
/// cert-to-efi-sig-list does, since certificates differ in size), then one
/// list holding every SHA-256 hash.
pub fn build_esl(owner: Guid, certs: &[Vec<u8>], hashes: &[[u8; 32]]) -> Vec<u8> {
    let mut out: Vec<u8> = certs.iter().flat_map(|c| esl_x509(owner, c)).collect();
    if !hashes.is_empty() {
        out.extend(esl_sha256(owner, hashes));
    }
    out
}

/// One entry of a signature list, described for `efivar show`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EntryInfo {
    #[serde(rename = "type")]
    pub sig_type: String,
    pub owner: Guid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint_sha256: Option<String>,
    /// Hash entries: the hash; other types: the data in hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Why an X.509 entry could not be read as a certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

pub fn describe_entry(e: &SigEntry, path: &Path) -> EntryInfo {
    let mut info = EntryInfo {
        sig_type: sig_type_name(e.sig_type),
        owner: e.owner,
        subject: None,
        issuer: None,
        fingerprint_sha256: None,
        data: None,
        problem: None,
    };
    if e.is_x509() {
        match crate::x509::parse(&e.data, path) {
            Ok(c) => {
                info.subject = Some(c.subject().to_string());
                info.issuer = Some(c.issuer().to_string());
                info.fingerprint_sha256 = Some(crate::codec::sha256_hex(&e.data));
            }
            Err(err) => info.problem = Some(err.to_string()),
        }
    } else {
        info.data = Some(crate::codec::hex(&e.data));
    }
    info
}

// ---------------------------------------------------------------------------
// Time-based authenticated variables (EFI_VARIABLE_AUTHENTICATION_2)

/// Vendor GUID of PK and KEK.
pub const EFI_GLOBAL_VARIABLE: Guid = Guid::from_fields(
    0x8be4_df61,
    0x93ca,
    0x11d2,
    [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c],
);
/// Vendor GUID of db and dbx.
pub const EFI_IMAGE_SECURITY_DATABASE_GUID: Guid = Guid::from_fields(
    0xd719_b2cb,
    0x3d3a,
    0x4596,
    [0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f],
);
/// WIN_CERTIFICATE_UEFI_GUID.CertType for PKCS#7 SignedData.
pub const EFI_CERT_TYPE_PKCS7_GUID: Guid = Guid::from_fields(
    0x4aaf_d29d,
    0x68df,
    0x49ee,
    [0x8a, 0xa9, 0x34, 0x7d, 0x37, 0x56, 0x65, 0xa7],
);
const WIN_CERT_REVISION_2_0: u16 = 0x0200;
const WIN_CERT_TYPE_EFI_GUID: u16 = 0x0ef1;
/// EFI_TIME (16) + WIN_CERTIFICATE_UEFI_GUID header (4 + 2 + 2 + 16).
const AUTH2_HEADER: usize = 16 + 24;

/// Variable attributes.
pub mod attr {
    pub const NON_VOLATILE: u32 = 0x01;
    pub const BOOTSERVICE_ACCESS: u32 = 0x02;
    pub const RUNTIME_ACCESS: u32 = 0x04;
    pub const TIME_BASED_AUTHENTICATED_WRITE_ACCESS: u32 = 0x20;
    pub const APPEND_WRITE: u32 = 0x40;
}

/// NV|BS|RT|TIME_BASED_AUTH, plus APPEND_WRITE for appends: what firmware
/// expects for the Secure Boot variables (and what sign-efi-sig-list signs).
pub fn auth_attributes(append: bool) -> u32 {
    let a = attr::NON_VOLATILE
        | attr::BOOTSERVICE_ACCESS
        | attr::RUNTIME_ACCESS
        | attr::TIME_BASED_AUTHENTICATED_WRITE_ACCESS;
    if append {
        a | attr::APPEND_WRITE
    } else {
        a
    }
}

/// Names of the attribute bits, as in the UEFI spec.
pub fn attribute_names(a: u32) -> Vec<&'static str> {
    [
        (attr::NON_VOLATILE, "NON_VOLATILE"),
        (attr::BOOTSERVICE_ACCESS, "BOOTSERVICE_ACCESS"),
        (attr::RUNTIME_ACCESS, "RUNTIME_ACCESS"),
        (
            attr::TIME_BASED_AUTHENTICATED_WRITE_ACCESS,
            "TIME_BASED_AUTHENTICATED_WRITE_ACCESS",
        ),
        (attr::APPEND_WRITE, "APPEND_WRITE"),
    ]
    .iter()
    .filter(|(b, _)| a & b != 0)
    .map(|(_, n)| *n)
    .collect()
}

/// The Secure Boot variables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecureVar {
    Pk,
    Kek,
    Db,
    Dbx,
}

impl SecureVar {
    pub const ALL: [SecureVar; 4] = [SecureVar::Pk, SecureVar::Kek, SecureVar::Db, SecureVar::Dbx];

    /// The variable name as firmware spells it.
    pub fn name(self) -> &'static str {
        match self {
            SecureVar::Pk => "PK",
            SecureVar::Kek => "KEK",
            SecureVar::Db => "db",
            SecureVar::Dbx => "dbx",
        }
    }

    pub fn vendor_guid(self) -> Guid {
        match self {
            SecureVar::Pk | SecureVar::Kek => EFI_GLOBAL_VARIABLE,
            SecureVar::Db | SecureVar::Dbx => EFI_IMAGE_SECURITY_DATABASE_GUID,
        }
    }
}

impl fmt::Display for SecureVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SecureVar {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        SecureVar::ALL
            .into_iter()
            .find(|v| v.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown variable '{s}' (expected PK, KEK, db or dbx)"))
    }
}

/// EFI_TIME as authenticated variables use it: UTC, nanosecond, time zone
/// and daylight fields zero (firmware rejects anything else).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EfiTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl EfiTime {
    pub fn from_datetime(t: time::OffsetDateTime) -> Result<EfiTime> {
        let t = t.to_offset(time::UtcOffset::UTC);
        let year = u16::try_from(t.year())
            .ok()
            .filter(|y| (1900..=9999).contains(y))
            .ok_or_else(|| {
                Error::Usage(format!("time {t} is outside EFI_TIME's years 1900..9999"))
            })?;
        Ok(EfiTime {
            year,
            month: u8::from(t.month()),
            day: t.day(),
            hour: t.hour(),
            minute: t.minute(),
            second: t.second(),
        })
    }

    /// The time `secs` seconds after the Unix epoch.
    pub fn from_unix(secs: i64) -> Result<EfiTime> {
        let t = time::OffsetDateTime::from_unix_timestamp(secs)
            .map_err(|e| Error::Usage(format!("time {secs}: {e}")))?;
        EfiTime::from_datetime(t)
    }

    /// Seconds since the Unix epoch, or None for a time that is no date.
    pub fn to_unix(self) -> Option<i64> {
        let month = time::Month::try_from(self.month).ok()?;
        let date = time::Date::from_calendar_date(i32::from(self.year), month, self.day).ok()?;
        let tod = time::Time::from_hms(self.hour, self.minute, self.second).ok()?;
        Some(
            time::PrimitiveDateTime::new(date, tod)
                .assume_utc()
                .unix_timestamp(),
        )
    }

    /// "YYYY-MM-DD HH:MM:SS" (UTC), the form sign-efi-sig-list -t takes.
    pub fn parse(s: &str) -> std::result::Result<EfiTime, String> {
        let bad = |why: String| format!("time '{s}': {why} (want YYYY-MM-DD HH:MM:SS, UTC)");
        let nums = |part: &str, sep: char| -> Option<Vec<u32>> {
            let v: Vec<&str> = part.split(sep).collect();
            (v.len() == 3
                && v.iter()
                    .all(|x| !x.is_empty() && x.bytes().all(|c| c.is_ascii_digit())))
            .then(|| v.iter().filter_map(|x| x.parse().ok()).collect())
            .filter(|v: &Vec<u32>| v.len() == 3)
        };
        let (date, clock) = s
            .trim()
            .split_once(' ')
            .ok_or_else(|| bad("no space between date and time".into()))?;
        let d = nums(date, '-').ok_or_else(|| bad("bad date".into()))?;
        let c = nums(clock.trim(), ':').ok_or_else(|| bad("bad time of day".into()))?;
        let month = u8::try_from(d[1])
            .ok()
            .and_then(|m| time::Month::try_from(m).ok())
            .ok_or_else(|| bad("bad month".into()))?;
        let year = i32::try_from(d[0]).map_err(|_| bad("bad year".into()))?;
        let day = u8::try_from(d[2]).map_err(|_| bad("bad day".into()))?;
        let date =
            time::Date::from_calendar_date(year, month, day).map_err(|e| bad(e.to_string()))?;
        let hms = |x: u32| u8::try_from(x).unwrap_or(u8::MAX);
        let tod = time::Time::from_hms(hms(c[0]), hms(c[1]), hms(c[2]))
            .map_err(|e| bad(e.to_string()))?;
        EfiTime::from_datetime(time::PrimitiveDateTime::new(date, tod).assume_utc())
            .map_err(|e| bad(e.to_string()))
    }

    /// SOURCE_DATE_EPOCH in seconds, when it is set.
    pub fn source_date_epoch() -> Result<Option<i64>> {
        match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(s) if !s.trim().is_empty() => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| Error::Usage(format!("SOURCE_DATE_EPOCH '{s}' is not a number"))),
            _ => Ok(None),
        }
    }

    /// SOURCE_DATE_EPOCH when set (reproducible builds), else `fallback`.
    pub fn from_env_or(fallback: time::OffsetDateTime) -> Result<EfiTime> {
        match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(s) if !s.trim().is_empty() => {
                let secs: i64 = s.trim().parse().map_err(|_| {
                    Error::Usage(format!("SOURCE_DATE_EPOCH '{s}' is not a number"))
                })?;
                let t = time::OffsetDateTime::from_unix_timestamp(secs)
                    .map_err(|e| Error::Usage(format!("SOURCE_DATE_EPOCH '{s}': {e}")))?;
                EfiTime::from_datetime(t)
            }
            _ => EfiTime::from_datetime(fallback),
        }
    }

    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..2].copy_from_slice(&self.year.to_le_bytes());
        b[2] = self.month;
        b[3] = self.day;
        b[4] = self.hour;
        b[5] = self.minute;
        b[6] = self.second;
        b
    }

    /// The time, and whether the fields that must be zero are.
    fn from_bytes(b: &[u8; 16]) -> (EfiTime, bool) {
        let t = EfiTime {
            year: u16::from_le_bytes([b[0], b[1]]),
            month: b[2],
            day: b[3],
            hour: b[4],
            minute: b[5],
            second: b[6],
        };
        (t, b[7..].iter().all(|&x| x == 0))
    }
}

impl fmt::Display for EfiTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// What the PKCS#7 of an authenticated write covers: the variable name in
/// UTF-16LE without its NUL, the vendor GUID, the attributes, the EFI_TIME
/// and the new content.
pub fn auth_payload(var: SecureVar, attributes: u32, time: EfiTime, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + data.len());
    for u in var.name().encode_utf16() {
        out.extend_from_slice(&u.to_le_bytes());
    }
    out.extend_from_slice(&var.vendor_guid().0);
    out.extend_from_slice(&attributes.to_le_bytes());
    out.extend_from_slice(&time.to_bytes());
    out.extend_from_slice(data);
    out
}

/// Check that `data` is what firmware accepts for `var`: signature lists
/// whose X.509 entries are certificates; PK holds exactly one certificate
/// (or nothing, which deletes it); KEK holds certificates or RSA-2048 keys.
pub fn check_var_content(var: SecureVar, data: &[u8], path: &Path) -> Result<Vec<SigEntry>> {
    let entries = parse_esl(data, path)?;
    for (i, e) in entries.iter().enumerate() {
        if e.is_x509() {
            crate::x509::parse(&e.data, path).map_err(|err| {
                Error::input(
                    path,
                    format!("entry {i}: X.509 entry is not a certificate: {err}"),
                )
            })?;
        }
    }
    let bad = |msg: String| Err(Error::input(path, format!("not valid for {var}: {msg}")));
    match var {
        SecureVar::Pk if entries.len() > 1 => {
            return bad(format!(
                "PK holds one certificate, this has {} entries",
                entries.len()
            ))
        }
        SecureVar::Pk if entries.iter().any(|e| !e.is_x509()) => {
            return bad("PK must be an X.509 certificate".into())
        }
        SecureVar::Kek => {
            if let Some(e) = entries
                .iter()
                .find(|e| !e.is_x509() && e.sig_type != EFI_CERT_RSA2048_GUID)
            {
                return bad(format!(
                    "KEK takes x509 or rsa2048 entries, not {}",
                    sig_type_name(e.sig_type)
                ));
            }
        }
        _ => {}
    }
    Ok(entries)
}

/// Sign `data` (signature lists) as a time-based authenticated write of `var`:
/// EFI_VARIABLE_AUTHENTICATION_2 { EFI_TIME, WIN_CERTIFICATE_UEFI_GUID {
/// PKCS#7 } } followed by `data`, the file `SetVariable()` (and efivarfs,
/// after the attributes word) takes.
///
/// The PKCS#7 is what efitools' sign-efi-sig-list writes and EDK2 insists
/// on: a bare SignedData (no ContentInfo: EDK2 looks for the SHA-256 OID at
/// a fixed offset), SHA-256, no signed attributes, content detached.
pub fn sign_auth(
    var: SecureVar,
    append: bool,
    time: EfiTime,
    data: &[u8],
    signer: &dyn crate::keys::Signer,
    cert: &[u8],
    chain: &[Vec<u8>],
) -> Result<Vec<u8>> {
    let payload = auth_payload(var, auth_attributes(append), time, data);
    let p7 = crate::pkcs7::sign_detached(
        &payload,
        &crate::pkcs7::DetachedOptions {
            signer,
            cert,
            chain,
            hash: crate::sigalg::Hash::Sha256,
            signed_attrs: false,
            signing_time: None,
            content_info: false,
        },
    )?;
    let length = u32::try_from(24 + p7.len())
        .map_err(|_| Error::Crypto("PKCS#7 signature too large".into()))?;
    let mut out = Vec::with_capacity(AUTH2_HEADER + p7.len() + data.len());
    out.extend_from_slice(&time.to_bytes());
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&WIN_CERT_REVISION_2_0.to_le_bytes());
    out.extend_from_slice(&WIN_CERT_TYPE_EFI_GUID.to_le_bytes());
    out.extend_from_slice(&EFI_CERT_TYPE_PKCS7_GUID.0);
    out.extend_from_slice(&p7);
    out.extend_from_slice(data);
    Ok(out)
}

/// A parsed `.auth` file.
#[derive(Clone, Debug)]
pub struct AuthFile {
    pub time: EfiTime,
    /// Nanosecond, time zone, daylight and pad fields are zero, as required.
    pub time_reserved_zero: bool,
    /// WIN_CERTIFICATE_UEFI_GUID.CertData: the PKCS#7 SignedData.
    pub pkcs7: Vec<u8>,
    /// The new variable content (signature lists).
    pub data: Vec<u8>,
}

/// Does `bytes` start with an EFI_VARIABLE_AUTHENTICATION_2 header?
pub fn is_auth(bytes: &[u8]) -> bool {
    bytes.len() >= AUTH2_HEADER
        && bytes[20..22] == WIN_CERT_REVISION_2_0.to_le_bytes()
        && bytes[22..24] == WIN_CERT_TYPE_EFI_GUID.to_le_bytes()
        && bytes[24..40] == EFI_CERT_TYPE_PKCS7_GUID.0
}

pub fn parse_auth(bytes: &[u8], path: &Path) -> Result<AuthFile> {
    if !is_auth(bytes) {
        return Err(Error::input(
            path,
            "not an authenticated variable (no EFI_VARIABLE_AUTHENTICATION_2 header with a PKCS#7 certificate)",
        ));
    }
    let mut t = [0u8; 16];
    t.copy_from_slice(&bytes[..16]);
    let (time, time_reserved_zero) = EfiTime::from_bytes(&t);
    let length = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]) as usize;
    if length < 24 || length > bytes.len() - 16 {
        return Err(Error::input(
            path,
            format!("WIN_CERTIFICATE length {length} does not fit the file"),
        ));
    }
    Ok(AuthFile {
        time,
        time_reserved_zero,
        pkcs7: bytes[AUTH2_HEADER..16 + length].to_vec(),
        data: bytes[16 + length..].to_vec(),
    })
}

impl AuthFile {
    /// Which Secure Boot variable (and whether as an append) the signature
    /// verifies for, trying each: the name is not stored in the file.
    pub fn signed_for(&self, sd: &crate::pkcs7::SignedData) -> Option<(SecureVar, bool)> {
        SecureVar::ALL
            .into_iter()
            .flat_map(|v| [(v, false), (v, true)])
            .find(|&(v, append)| {
                sd.verify_detached(&auth_payload(
                    v,
                    auth_attributes(append),
                    self.time,
                    &self.data,
                ))
                .is_ok()
            })
    }
}

/// Who may sign an update, as EDK2's AuthVariableLib decides: PK and KEK
/// updates are checked against the PK with no chaining (the signer must be
/// the PK certificate itself); db and dbx updates may chain to any KEK
/// certificate, one at a time.
pub fn update_trust(
    v: SecureVar,
    sd: &crate::pkcs7::SignedData,
    leaf: &[u8],
    anchors: &[Vec<u8>],
) -> std::result::Result<usize, String> {
    match v {
        SecureVar::Pk | SecureVar::Kek => {
            let i = anchors.iter().position(|a| a == leaf).ok_or_else(|| {
                format!(
                    "the signer is not the PK certificate (firmware does not chain {v} updates)"
                )
            })?;
            crate::chain::uefi_path(leaf, &[], &anchors[i..=i])
                .map(|_| i)
                .map_err(|e| format!("the signer's path is invalid: {e}"))
        }
        SecureVar::Db | SecureVar::Dbx => sd
            .trusted_path(leaf, anchors)
            .map(|p| p.anchor)
            .map_err(|e| format!("the signer does not chain to a trusted certificate: {e}")),
    }
}

/// What [`verify_auth`] found: `ok` when firmware would apply the update.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AuthVerdict {
    pub file: PathBuf,
    pub ok: bool,
    pub var: Option<String>,
    pub append: bool,
    pub time: String,
    pub signer: Option<String>,
    /// Subject of the trusted certificate the signer chains to.
    pub trusted_by: Option<String>,
    /// No trust anchor was given for a PK update, so the new PK itself was
    /// trusted, as only firmware in Setup Mode would.
    pub assumed_setup_mode: bool,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    /// The signer's certificate (DER), when the signature verified.
    #[serde(skip)]
    pub leaf: Option<Vec<u8>>,
}

/// Check an `.auth` update as EDK2's AuthVariableLib does: EFI_TIME with zero
/// reserved fields, one SignerInfo over sha256, a signature over the name,
/// GUID, attributes, time and data of `want` (or of whichever Secure Boot
/// variable it verifies for), content the variable may hold, and a signer
/// that `anchors` vouch for as [`update_trust`] decides. A PK update with no
/// anchors is checked as Setup Mode would (the new PK vouches for itself),
/// and the verdict says so. `path` only names the file in messages.
pub fn verify_auth(
    bytes: &[u8],
    path: &Path,
    want: Option<(SecureVar, bool)>,
    anchors: &[Vec<u8>],
) -> Result<AuthVerdict> {
    let a = parse_auth(bytes, path)?;
    let sd = pkcs7::parse(&a.pkcs7, path)?;
    let mut problems = vec![];
    let mut warnings = vec![];
    if !a.time_reserved_zero {
        problems.push(
            "EFI_TIME has non-zero nanosecond/time zone/daylight/pad fields (firmware rejects it)"
                .into(),
        );
    }
    if sd.content_info {
        warnings.push(
            "the PKCS#7 is wrapped in a ContentInfo: EDK2-based firmware wants a bare SignedData"
                .into(),
        );
    }
    if sd.signers.len() != 1 {
        problems.push(format!("{} SignerInfos (expected one)", sd.signers.len()));
    }
    if let Some(si) = sd.signers.first() {
        if si.digest_oid != crate::oid::SHA256 {
            problems.push(format!(
                "digest algorithm {} (time-based variables require sha256)",
                crate::sigalg::hash_name(&si.digest_oid)
            ));
        }
    }
    let found = match want {
        Some((v, append)) => {
            let payload = auth_payload(v, auth_attributes(append), a.time, &a.data);
            match sd.verify_detached(&payload) {
                Ok(_) => Some((v, append)),
                Err(e) => {
                    let other = a.signed_for(&sd);
                    problems.push(match other {
                        Some((o, oa)) if (o, oa) != (v, append) => format!(
                            "signed for {}{o}, not {}{v}",
                            if oa { "append to " } else { "" },
                            if append { "append to " } else { "" }
                        ),
                        _ => e,
                    });
                    None
                }
            }
        }
        None => {
            let f = a.signed_for(&sd);
            if f.is_none() {
                problems.push("the signature verifies for none of PK, KEK, db, dbx".into());
            }
            f
        }
    };
    let mut signer = None;
    let mut trusted_by = None;
    let mut setup_mode = false;
    let mut found_leaf = None;
    if let Some((v, append)) = found {
        let payload = auth_payload(v, auth_attributes(append), a.time, &a.data);
        let leaf = sd
            .verify_detached(&payload)
            .ok()
            .and_then(|s| s.first().map(|c| c.to_vec()));
        if let Err(e) = check_var_content(v, &a.data, path) {
            problems.push(e.to_string());
        }
        let mut anchors = anchors.to_vec();
        if anchors.is_empty() && v == SecureVar::Pk {
            // Setup mode: the new PK vouches for itself. In user mode the
            // current PK must have signed it, so say what was assumed.
            setup_mode = true;
            warnings.push(
                "no --cert given: assumed Setup Mode, where a PK update may be signed by the new PK itself; \
                 in User Mode the current PK must sign it"
                    .into(),
            );
            anchors.extend(
                parse_esl(&a.data, path)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|e| e.is_x509())
                    .map(|e| e.data),
            );
        }
        found_leaf.clone_from(&leaf);
        if let Some(leaf) = leaf {
            signer = x509::parse(&leaf, path)
                .ok()
                .map(|c| c.subject().to_string());
            if anchors.is_empty() {
                problems.push(format!(
                    "nothing to trust for a {v} update: give --cert or --esl"
                ));
            } else {
                match update_trust(v, &sd, &leaf, &anchors) {
                    Ok(i) => {
                        trusted_by = x509::parse(&anchors[i], path)
                            .ok()
                            .map(|c| c.subject().to_string())
                    }
                    Err(e) => problems.push(e),
                }
            }
        }
    }
    Ok(AuthVerdict {
        file: path.to_path_buf(),
        ok: problems.is_empty(),
        var: found.map(|(v, _)| v.name().to_string()),
        append: found.is_some_and(|(_, ap)| ap),
        time: a.time.to_string(),
        signer,
        trusted_by,
        assumed_setup_mode: setup_mode,
        leaf: found_leaf,
        problems,
        warnings,
    })
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

    #[test]
    fn efi_time_parse_and_layout() {
        let t = EfiTime::parse("2024-01-02 03:04:05").unwrap();
        assert_eq!(t.to_string(), "2024-01-02 03:04:05");
        assert_eq!(
            t.to_bytes(),
            [0xe8, 0x07, 1, 2, 3, 4, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        for bad in [
            "2024-01-02",
            "2024-02-30 00:00:00",
            "2024-01-02 24:00:00",
            "2024-1-2 3:4:5x",
            "1899-12-31 00:00:00",
        ] {
            assert!(EfiTime::parse(bad).is_err(), "{bad}");
        }
        assert!(EfiTime::parse("2024-1-2 3:4:5").is_ok());
    }

    #[test]
    fn auth_round_trip_and_var_detection() {
        use crate::keys::{FileKey, KeyType};
        let k =
            FileKey::from_pkcs8(&KeyType::Rsa(2048).generate().unwrap(), Path::new("k")).unwrap();
        let spec = crate::x509::CertSpec {
            subject: crate::x509::Subject {
                common_name: "KEK".into(),
                ..Default::default()
            },
            ca: true,
            not_before: time::OffsetDateTime::now_utc()
                .replace_nanosecond(0)
                .unwrap(),
            days: 30,
            key_usage: vec![rcgen::KeyUsagePurpose::DigitalSignature],
            eku: vec![],
        };
        let cert = crate::x509::issue(&spec, &k, None).unwrap();
        let data = esl_sha256(EFI_CERT_SHA256_GUID, &[[7u8; 32]]);
        let time = EfiTime::parse("2025-06-07 08:09:10").unwrap();
        let p = Path::new("x.auth");
        check_var_content(SecureVar::Dbx, &data, p).unwrap();
        assert!(check_var_content(SecureVar::Pk, &data, p).is_err());
        assert!(check_var_content(SecureVar::Kek, &data, p).is_err());
        for append in [false, true] {
            let auth = sign_auth(SecureVar::Dbx, append, time, &data, &k, &cert, &[]).unwrap();
            assert!(is_auth(&auth));
            let a = parse_auth(&auth, p).unwrap();
            assert_eq!((a.time, a.time_reserved_zero), (time, true));
            assert_eq!(a.data, data);
            let sd = crate::pkcs7::parse(&a.pkcs7, p).unwrap();
            assert!(!sd.content_info);
            assert_eq!(a.signed_for(&sd), Some((SecureVar::Dbx, append)));
            for n in 0..auth.len().min(AUTH2_HEADER + 8) {
                let _ = parse_auth(&auth[..n], p);
            }
            let mut bad = auth.clone();
            bad[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
            assert!(parse_auth(&bad, p).is_err());
        }
    }
}
