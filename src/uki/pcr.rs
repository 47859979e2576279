//! PCR 11 arithmetic: banks, boot phases, the TPM2 PolicyPCR digest, and the
//! `.pcrsig` JSON that `systemd-measure sign` writes.
//!
//! What systemd-stub extends into PCR 11, per measured section in its
//! canonical order: `H(name + NUL)`, then `H(content)` (VirtualSize bytes).
//! `systemd-pcrphase` later extends `H(word)` (no NUL) per boot-phase word.
//! An extend is `pcr = H(pcr || digest)`, from all zeros.
//!
//! The signed policy (TPM 2.0 Part 3, TPM2_PolicyPCR), in the SHA-256 policy
//! session systemd uses: `pol = SHA256(0^32 || TPM_CC_PolicyPCR ||
//! TPML_PCR_SELECTION{1, bank, 3, 00 08 00} || SHA256(pcr11))`, signed with
//! the bank's own hash (RSA PKCS#1 v1.5); `pkfp` is the SHA-256 of the
//! public key as PKCS#1 RSAPublicKey DER (`i2d_PublicKey`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::{KeyType, Signer};
use crate::sigalg::{Hash, Scheme};

/// The PCR systemd-stub measures the UKI's sections into.
pub const PCR_KERNEL_BOOT: u32 = 11;
/// TPM_CC_PolicyPCR.
const TPM_CC_POLICY_PCR: u32 = 0x0000_017f;

/// A TPM PCR bank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bank {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Bank {
    /// All banks, in the order systemd-measure prints them (sorted by name).
    pub const ALL: [Bank; 4] = [Bank::Sha1, Bank::Sha256, Bank::Sha384, Bank::Sha512];

    pub fn name(self) -> &'static str {
        match self {
            Bank::Sha1 => "sha1",
            Bank::Sha256 => "sha256",
            Bank::Sha384 => "sha384",
            Bank::Sha512 => "sha512",
        }
    }

    pub fn algorithm(self) -> &'static digest::Algorithm {
        match self {
            Bank::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            Bank::Sha256 => &digest::SHA256,
            Bank::Sha384 => &digest::SHA384,
            Bank::Sha512 => &digest::SHA512,
        }
    }

    /// TPM_ALG_ID.
    pub fn tpm_alg(self) -> u16 {
        match self {
            Bank::Sha1 => 0x0004,
            Bank::Sha256 => 0x000b,
            Bank::Sha384 => 0x000c,
            Bank::Sha512 => 0x000d,
        }
    }

    pub fn size(self) -> usize {
        self.algorithm().output_len()
    }

    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        digest::digest(self.algorithm(), data).as_ref().to_vec()
    }

    /// The hash of this bank's policy signature (systemd signs with the
    /// bank's hash); None for SHA-1, which the algorithm module lacks.
    /// The hash a policy of this bank is signed with; the sha1 bank's
    /// (RSA-SHA1) is not made here.
    pub fn signing_hash(self) -> Result<Hash> {
        self.sig_hash().ok_or_else(|| {
            Error::Usage(
                "the sha1 bank's policy would need an RSA-SHA1 signature, which pki-signer does not make; sign sha256, sha384 or sha512 (--pcr-banks)".into(),
            )
        })
    }

    pub fn sig_hash(self) -> Option<Hash> {
        match self {
            Bank::Sha256 => Some(Hash::Sha256),
            Bank::Sha384 => Some(Hash::Sha384),
            Bank::Sha512 => Some(Hash::Sha512),
            Bank::Sha1 => None,
        }
    }
}

impl fmt::Display for Bank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Bank {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Bank, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sha1" => Ok(Bank::Sha1),
            "sha256" => Ok(Bank::Sha256),
            "sha384" => Ok(Bank::Sha384),
            "sha512" => Ok(Bank::Sha512),
            _ => Err(format!(
                "unknown PCR bank '{s}' (known: sha1, sha256, sha384, sha512)"
            )),
        }
    }
}

/// Parse `sha256,sha384` (commas or spaces; repeatable options joined):
/// sorted and deduplicated, as systemd-measure does.
pub fn parse_banks(list: &[String]) -> Result<Vec<Bank>> {
    let mut v = vec![];
    for item in list {
        for w in item.split([',', ' ']).filter(|w| !w.is_empty()) {
            v.push(w.parse::<Bank>().map_err(Error::Usage)?);
        }
    }
    v.sort();
    v.dedup();
    Ok(v)
}

/// The words systemd-pcrphase extends into PCR 11.
pub const KNOWN_PHASE_WORDS: [&str; 6] = [
    "enter-initrd",
    "leave-initrd",
    "sysinit",
    "ready",
    "shutdown",
    "final",
];

/// The phases signed when none are given (systemd-measure's default).
pub const DEFAULT_PHASES: [&str; 4] = [
    "enter-initrd",
    "enter-initrd:leave-initrd",
    "enter-initrd:leave-initrd:sysinit",
    "enter-initrd:leave-initrd:sysinit:ready",
];

/// Parse phase paths (`a:b`, separated by commas or spaces; repeatable):
/// empty words dropped as systemd-measure normalises them, unknown words
/// refused (a typo would sign a policy no boot ever reaches), then sorted and
/// deduplicated as systemd-measure does. None given: [`DEFAULT_PHASES`].
pub fn parse_phases(list: &[String]) -> Result<Vec<String>> {
    let mut v = vec![];
    for item in list {
        for path in item.split([',', ' ']).filter(|p| !p.is_empty()) {
            let words: Vec<&str> = path.split(':').filter(|w| !w.is_empty()).collect();
            for w in &words {
                if !KNOWN_PHASE_WORDS.contains(w) {
                    return Err(Error::Usage(format!(
                        "unknown boot phase '{w}' in '{path}' (known: {})",
                        KNOWN_PHASE_WORDS.join(", ")
                    )));
                }
            }
            v.push(words.join(":"));
        }
    }
    if v.is_empty() {
        return Ok(DEFAULT_PHASES.iter().map(|s| s.to_string()).collect());
    }
    v.sort();
    v.dedup();
    Ok(v)
}

/// PCR 11 of one bank, as it is being extended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcrState {
    pub bank: Bank,
    pub value: Vec<u8>,
}

impl PcrState {
    pub fn new(bank: Bank) -> PcrState {
        PcrState {
            bank,
            value: vec![0; bank.size()],
        }
    }

    /// `pcr = H(pcr || digest)`.
    pub fn extend(&mut self, digest: &[u8]) {
        let mut c = digest::Context::new(self.bank.algorithm());
        c.update(&self.value);
        c.update(digest);
        self.value = c.finish().as_ref().to_vec();
    }

    /// What the stub does for one section: its name with the NUL, then its content's digest.
    pub fn extend_section(&mut self, name: &str, content_digest: &[u8]) {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        let h = self.bank.hash(&n);
        self.extend(&h);
        self.extend(content_digest);
    }

    /// What systemd-pcrphase does for a phase path: `H(word)` per word.
    pub fn extend_phase(&mut self, phase: &str) {
        for w in phase.split(':').filter(|w| !w.is_empty()) {
            let h = self.bank.hash(w.as_bytes());
            self.extend(&h);
        }
    }
}

/// Hashes a section's content in every bank at once, as it streams by.
pub struct MultiHasher {
    ctx: Vec<(Bank, digest::Context)>,
    pub len: u64,
}

impl MultiHasher {
    pub fn new(banks: &[Bank]) -> MultiHasher {
        MultiHasher {
            ctx: banks
                .iter()
                .map(|&b| (b, digest::Context::new(b.algorithm())))
                .collect(),
            len: 0,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        for (_, c) in &mut self.ctx {
            c.update(data);
        }
        self.len += data.len() as u64;
    }

    pub fn finish(self) -> Vec<(Bank, Vec<u8>)> {
        self.ctx
            .into_iter()
            .map(|(b, c)| (b, c.finish().as_ref().to_vec()))
            .collect()
    }
}

/// The measured sections' digests, in the order the stub measures them:
/// (name, [(bank, digest)]). Empty sections are left out (the stub skips them).
pub type SectionDigests = Vec<(String, Vec<(Bank, Vec<u8>)>)>;

/// Per bank, (phase, PCR 11 value) for each phase.
pub type RawPredictions = Vec<(Bank, Vec<(String, Vec<u8>)>)>;

/// One predicted value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prediction {
    /// Empty for the sections alone (`--phases :`): systemd-measure leaves
    /// the key out then.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    pub pcr: u32,
    pub hash: String,
}

/// Per bank, the value of PCR 11 after the sections and each phase:
/// `systemd-measure calculate --json`'s shape.
pub type Predictions = BTreeMap<String, Vec<Prediction>>;

/// The raw PCR values per bank and phase.
pub fn predict_raw(sections: &SectionDigests, banks: &[Bank], phases: &[String]) -> RawPredictions {
    banks
        .iter()
        .map(|&bank| {
            let mut base = PcrState::new(bank);
            for (name, digests) in sections {
                if let Some((_, d)) = digests.iter().find(|(b, _)| *b == bank) {
                    base.extend_section(name, d);
                }
            }
            let per_phase = phases
                .iter()
                .map(|p| {
                    let mut s = base.clone();
                    s.extend_phase(p);
                    (p.clone(), s.value)
                })
                .collect();
            (bank, per_phase)
        })
        .collect()
}

pub fn predict(sections: &SectionDigests, banks: &[Bank], phases: &[String]) -> Predictions {
    predict_raw(sections, banks, phases)
        .into_iter()
        .map(|(bank, v)| {
            (
                bank.name().to_string(),
                v.into_iter()
                    .map(|(phase, value)| Prediction {
                        phase,
                        pcr: PCR_KERNEL_BOOT,
                        hash: crate::codec::hex(&value),
                    })
                    .collect(),
            )
        })
        .collect()
}

/// TPM2_PolicyPCR over PCR 11 of `bank` holding `pcr_value`, from an empty
/// SHA-256 policy session.
pub fn policy_pcr_digest(bank: Bank, pcr_value: &[u8]) -> [u8; 32] {
    let mut sel = Vec::with_capacity(10);
    sel.extend_from_slice(&1u32.to_be_bytes());
    sel.extend_from_slice(&bank.tpm_alg().to_be_bytes());
    sel.push(3);
    let mut mask = [0u8; 3];
    mask[(PCR_KERNEL_BOOT / 8) as usize] |= 1 << (PCR_KERNEL_BOOT % 8);
    sel.extend_from_slice(&mask);
    let pcr_digest = digest::digest(&digest::SHA256, pcr_value);
    let mut c = digest::Context::new(&digest::SHA256);
    c.update(&[0u8; 32]);
    c.update(&TPM_CC_POLICY_PCR.to_be_bytes());
    c.update(&sel);
    c.update(pcr_digest.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(c.finish().as_ref());
    out
}

/// One signed policy of `.pcrsig`, fields in systemd-measure's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcrSigEntry {
    pub pcrs: Vec<u32>,
    pub pkfp: String,
    pub pol: String,
    pub sig: String,
}

/// `.pcrsig`: bank name -> signed policies, one per phase.
pub type PcrSig = BTreeMap<String, Vec<PcrSigEntry>>;

/// The `pkfp` of a key: SHA-256 of its PKCS#1 RSAPublicKey (for EC, of the point).
pub fn key_fingerprint(public_key: &[u8]) -> String {
    crate::codec::hex(digest::digest(&digest::SHA256, public_key).as_ref())
}

/// Refuse what [`sign_policies`] would refuse, before any section is hashed:
/// a key that is not plain RSA, a bank whose policy cannot be signed.
pub fn check_policy_key(banks: &[Bank], key: &dyn Signer) -> Result<usize> {
    let KeyType::Rsa(bits) = key.key_type() else {
        return Err(not_rsa(key));
    };
    if key.rsa_pss_only() {
        return Err(not_rsa(key));
    }
    for b in banks {
        b.signing_hash()?;
    }
    Ok(bits.div_ceil(8) as usize)
}

fn not_rsa(key: &dyn Signer) -> Error {
    Error::Usage(format!(
        "the PCR policy key {} is {}; systemd's TPM2 policy signatures are RSA PKCS#1 v1.5 (use an RSA key, e.g. pki init --uefi's tpm2-pcr-private.pem)",
        key.origin(),
        key.key_type()
    ))
}

/// The length of the JSON [`sign_policies`] returns for these banks, phases
/// and key, known before anything is signed: every value in it has a fixed
/// length (hex digests, the base64 of an RSA PKCS#1 v1.5 signature, which
/// is as long as the modulus). `uki build` lays out `.pcrsig` with it.
pub fn pcrsig_len(banks: &[Bank], phases: &[String], key: &dyn Signer) -> Result<u64> {
    let sig_len = check_policy_key(banks, key)?;
    let entry = PcrSigEntry {
        pcrs: vec![PCR_KERNEL_BOOT],
        pkfp: key_fingerprint(key.public_key()),
        pol: crate::codec::hex(&[0u8; 32]),
        sig: base64_encode(&vec![0u8; sig_len]),
    };
    let sig: PcrSig = banks
        .iter()
        .map(|b| (b.name().to_string(), vec![entry.clone(); phases.len()]))
        .collect();
    Ok(pcrsig_json(&sig)?.len() as u64)
}

/// Sign the policy of every bank and phase with `key`, as `systemd-measure
/// sign` does. Returns the JSON exactly as systemd-measure prints it with
/// `--json=short` (compact, banks sorted, newline at the end).
pub fn sign_policies(
    sections: &SectionDigests,
    banks: &[Bank],
    phases: &[String],
    key: &dyn Signer,
) -> Result<(PcrSig, Vec<u8>)> {
    let sig_len = check_policy_key(banks, key)?;
    let pkfp = key_fingerprint(key.public_key());
    let mut out = PcrSig::new();
    for (bank, values) in predict_raw(sections, banks, phases) {
        // check_policy_key: a plain RSA key, so PKCS#1 v1.5 with the bank's hash.
        let scheme = Scheme::RsaPkcs1(bank.signing_hash()?);
        let mut entries = vec![];
        for (_, value) in values {
            let pol = policy_pcr_digest(bank, &value);
            let sig = key.sign(scheme, &pol)?;
            // RFC 8017 I2OSP: a PKCS#1 v1.5 signature has the modulus's length.
            if sig.len() != sig_len {
                return Err(Error::Usage(format!(
                    "the PCR policy key {} made a {}-byte signature; a {} key makes {sig_len}-byte ones",
                    key.origin(),
                    sig.len(),
                    key.key_type()
                )));
            }
            entries.push(PcrSigEntry {
                pcrs: vec![PCR_KERNEL_BOOT],
                pkfp: pkfp.clone(),
                pol: crate::codec::hex(&pol),
                sig: base64_encode(&sig),
            });
        }
        out.insert(bank.name().to_string(), entries);
    }
    let json = pcrsig_json(&out)?;
    Ok((out, json))
}

/// `systemd-measure sign --json=short`'s output for `sig`.
fn pcrsig_json(sig: &PcrSig) -> Result<Vec<u8>> {
    let mut json = serde_json::to_vec(sig).map_err(|e| Error::Internal(e.to_string()))?;
    json.push(b'\n');
    Ok(json)
}

/// Parse a `.pcrsig` section (trailing NULs and whitespace allowed).
pub fn parse_pcrsig(data: &[u8]) -> std::result::Result<PcrSig, String> {
    let end = data
        .iter()
        .rposition(|&b| b != 0 && !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let text = std::str::from_utf8(&data[..end]).map_err(|e| format!("not UTF-8: {e}"))?;
    let v: PcrSig = serde_json::from_str(text).map_err(|e| format!("not .pcrsig JSON: {e}"))?;
    for bank in v.keys() {
        bank.parse::<Bank>()?;
    }
    Ok(v)
}

/// Standard base64 with padding (systemd's `SD_JSON_BUILD_BASE64`).
pub fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Decode standard base64 (padding optional, no whitespace).
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 6 {
        return None;
    }
    Some(out)
}

/// Parse lower- or upper-case hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for n in 0..20usize {
            let d: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(base64_decode(&base64_encode(&d)).unwrap(), d);
        }
        assert_eq!(base64_encode(b"foob"), "Zm9vYg==");
        assert_eq!(base64_encode(b"fooba"), "Zm9vYmE=");
    }

    #[test]
    fn phases_normalise_sort_and_refuse_typos() {
        assert_eq!(parse_phases(&[]).unwrap().len(), 4);
        let p = parse_phases(&["enter-initrd::leave-initrd:, enter-initrd".into()]).unwrap();
        assert_eq!(p, vec!["enter-initrd", "enter-initrd:leave-initrd"]);
        assert!(parse_phases(&["enter-initrd:sysnit".into()]).is_err());
    }

    #[test]
    fn banks_sorted_like_systemd_measure() {
        let b = parse_banks(&["sha512,sha256".into(), "SHA1".into(), "sha256".into()]).unwrap();
        assert_eq!(b, vec![Bank::Sha1, Bank::Sha256, Bank::Sha512]);
        assert!(parse_banks(&["md5".into()]).is_err());
    }

    #[test]
    fn policy_digest_of_zero_pcr_is_stable() {
        // The PCR selection for PCR 11 is 00 08 00.
        let d1 = policy_pcr_digest(Bank::Sha256, &[0; 32]);
        let d2 = policy_pcr_digest(Bank::Sha384, &[0; 48]);
        assert_ne!(d1, d2);
    }

    /// `.pcrsig` is laid out before it is signed: its predicted length is
    /// the real one, for every bank and phase count.
    #[test]
    fn pcrsig_length_is_known_before_signing() {
        use crate::keys::{FileKey, KeyType};
        let key = |kt: KeyType| {
            FileKey::from_pkcs8(&kt.generate().unwrap(), std::path::Path::new("k")).unwrap()
        };
        let rsa = key(KeyType::Rsa(2048));
        let sections: SectionDigests = vec![(
            ".linux".into(),
            Bank::ALL.iter().map(|&b| (b, b.hash(b"kernel"))).collect(),
        )];
        for banks in [
            vec![Bank::Sha256],
            vec![Bank::Sha256, Bank::Sha384, Bank::Sha512],
        ] {
            for phases in [parse_phases(&[]).unwrap(), vec![String::new()]] {
                let (_, json) = sign_policies(&sections, &banks, &phases, &rsa).unwrap();
                let want = pcrsig_len(&banks, &phases, &rsa).unwrap();
                assert_eq!(json.len() as u64, want, "{banks:?} {phases:?}");
            }
        }
        let ec = key(KeyType::EcP256);
        let e = pcrsig_len(&[Bank::Sha256], &[], &ec)
            .unwrap_err()
            .to_string();
        assert!(e.contains("RSA PKCS#1 v1.5"), "{e}");
        assert!(pcrsig_len(&[Bank::Sha1], &[], &rsa).is_err());
    }
}
