//! A built UKI's PCR policy made again for another PCR key: what a release
//! does to a UKI that the build signed with its development keys.
//!
//! `.pcrpkey` gets the new public key and `.pcrsig` the new policies, both
//! in place: a key of the same size gives contents of the same length, so no
//! section moves, and PCR 11 changes only through `.pcrpkey`. The banks and
//! phases are the ones the old `.pcrsig` was signed for.
//!
//! `.pcrsig` is the last data of the image (as `uki build` and ukify write
//! it), so the Authenticode digest of the new image is a SHA-256 over bytes
//! known before the policies are signed, then the new `.pcrsig` and zeros.
//! [`Repolicy::prefix`] is that SHA-256 stopped before `.pcrsig`: an offline
//! signing host finishes it over the `.pcrsig` it makes, and so signs both
//! the policies and the image in one visit, without the image.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::pcr::{self, Bank, MultiHasher, SectionDigests};
use super::{public_key_from_pem, rules_for, Uki};
use crate::codec::Sha256Midstate;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::keys::Signer;
use crate::pe::PeImage;

/// A section's content in the file: `len` (VirtualSize) bytes at `offset`,
/// in `raw_size` bytes of raw data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub offset: u64,
    pub len: u64,
    pub raw_size: u64,
}

/// What re-signing a UKI's policy for a new key changes, worked out from
/// the UKI in one pass.
#[derive(Clone, Debug)]
pub struct Repolicy {
    /// The new `.pcrpkey` content (PEM).
    pub pcrpkey: Vec<u8>,
    pub pcrpkey_at: Place,
    pub pcrsig_at: Place,
    pub banks: Vec<Bank>,
    pub phases: Vec<String>,
    /// The measured sections' digests with the new `.pcrpkey`.
    pub digests: SectionDigests,
    /// SHA-256 of the UKI file as it is.
    pub file_sha256: [u8; 32],
    /// The Authenticode SHA-256 of the new image, stopped where `.pcrsig` starts.
    pub prefix: Sha256Midstate,
    /// Zeros hashed after the new `.pcrsig`: the rest of its raw data, and
    /// the padding to 8 that signing adds.
    pub zeros_after: u64,
}

/// The phases a `.pcrsig` can be for: the sections alone and every stage
/// of the boot in order (each of systemd-measure's defaults is one).
fn candidate_phases() -> Vec<String> {
    let mut v = vec![String::new()];
    for n in 1..=pcr::KNOWN_PHASE_WORDS.len() {
        v.push(pcr::KNOWN_PHASE_WORDS[..n].join(":"));
    }
    v
}

/// Largest run of zeros after `.pcrsig` that a request may ask to hash.
pub const MAX_ZEROS_AFTER: u64 = 1 << 20;

/// Work out the new policy for `path` and the PCR public key `new_spki`
/// (SubjectPublicKeyInfo DER). Refuses what cannot be done in place.
pub fn plan(path: &Path, new_spki: &[u8]) -> Result<Repolicy> {
    let uki = Uki::open(path)?;
    let img = PeImage::open(path)?;
    let version = uki.stub_version()?;
    let rules = rules_for(&version, path)?;
    rules.check_names(uki.sections.iter().map(|s| s.name.as_str()), &version, path)?;
    let measured = rules.measured;
    let section = |name: &str| {
        uki.section(name).cloned().ok_or_else(|| {
            Error::input(
                path,
                format!("no {name} section: the UKI has no PCR policy to sign again"),
            )
        })
    };
    let (sig_s, key_s) = (section(".pcrsig")?, section(".pcrpkey")?);
    let old_sig = pcr::parse_pcrsig(&uki.read_small(&sig_s)?)
        .map_err(|m| Error::input(path, format!(".pcrsig: {m}")))?;
    let old_key = uki.read_small(&key_s)?;
    public_key_from_pem(&old_key).map_err(|m| Error::input(path, format!(".pcrpkey: {m}")))?;
    let pem = crate::codec::pem_encode("PUBLIC KEY", new_spki).into_bytes();
    public_key_from_pem(&pem).map_err(|m| Error::Usage(format!("the new PCR key: {m}")))?;
    if pem.len() != old_key.len() || pem.len() as u64 > u64::from(key_s.raw_size) {
        return Err(Error::input(
            path,
            format!(
                "its .pcrpkey is {} bytes and the new PCR key's would be {}: a key of another size needs the UKI built again (uki build)",
                old_key.len(),
                pem.len()
            ),
        ));
    }
    let place = |s: &crate::pe::SectionInfo| Place {
        offset: u64::from(s.raw_offset),
        len: u64::from(s.virtual_size),
        raw_size: u64::from(s.raw_size),
    };
    let (pcrsig_at, pcrpkey_at) = (place(&sig_s), place(&key_s));
    let (ranges, reread) = img.hashed_ranges();
    let data_end = img.data_end();
    let last = ranges.iter().rev().find(|r| r.0 < r.1).copied();
    if reread.is_some()
        || pcrsig_at.len > pcrsig_at.raw_size
        || last != Some((pcrsig_at.offset, pcrsig_at.offset + pcrsig_at.raw_size))
    {
        return Err(Error::input(
            path,
            ".pcrsig is not the image's last data (uki build and ukify put it last); its policy cannot be signed again in place",
        ));
    }
    let banks: Vec<Bank> = old_sig.keys().filter_map(|b| b.parse().ok()).collect();
    for b in &banks {
        b.signing_hash()?;
    }
    if let Some(why) = rules.check_policy_banks(&banks, &version) {
        return Err(Error::input(path, why));
    }

    // One pass: the file's hash, the Authenticode prefix of the new image
    // and the measured sections' digests, with the new .pcrpkey in place.
    let mut file_hash = Sha256::new();
    let mut prefix = Sha256Midstate::default();
    let mut measured_secs: Vec<(crate::pe::SectionInfo, MultiHasher)> = uki
        .sections
        .iter()
        .filter(|s| {
            measured.contains(&s.name.as_str()) && s.virtual_size > 0 && s.name != ".pcrpkey"
        })
        .map(|s| (s.clone(), MultiHasher::new(&banks)))
        .collect();
    let file = std::fs::File::open(path).at(path)?;
    let size = file.metadata().at(path)?.len();
    let mut buf = vec![0u8; (1 << 20).min(size.max(1) as usize)];
    let mut pos = 0u64;
    let key_range = (pcrpkey_at.offset, pcrpkey_at.offset + pem.len() as u64);
    while pos < size {
        let n = (buf.len() as u64).min(size - pos) as usize;
        let chunk = &mut buf[..n];
        file.read_exact_at(chunk, pos).at(path)?;
        file_hash.update(&*chunk);
        let end = pos + n as u64;
        // The new .pcrpkey over the old.
        let (s, e) = (key_range.0.max(pos), key_range.1.min(end));
        if s < e {
            chunk[(s - pos) as usize..(e - pos) as usize]
                .copy_from_slice(&pem[(s - key_range.0) as usize..(e - key_range.0) as usize]);
        }
        for &(rs, re) in &ranges {
            let (s, e) = (rs.max(pos), re.min(end).min(pcrsig_at.offset));
            if s < e {
                prefix.update(&chunk[(s - pos) as usize..(e - pos) as usize]);
            }
        }
        for (sec, h) in &mut measured_secs {
            let rs = u64::from(sec.raw_offset);
            let re = rs + u64::from(sec.raw_size.min(sec.virtual_size));
            let (s, e) = (rs.max(pos), re.min(end));
            if s < e {
                h.update(&chunk[(s - pos) as usize..(e - pos) as usize]);
            }
        }
        pos = end;
    }
    if pos != size || data_end > size {
        return Err(Error::input(path, "file changed while it was read"));
    }
    let hash_key = |content: &[u8]| {
        let mut h = MultiHasher::new(&banks);
        h.update(content);
        h.update(&vec![
            0;
            (pcrpkey_at.len as usize).saturating_sub(content.len())
        ]);
        (".pcrpkey".to_string(), h.finish())
    };
    let mut others = vec![];
    for (sec, mut h) in measured_secs {
        let raw = sec.raw_size.min(sec.virtual_size);
        h.update(&vec![0; (sec.virtual_size - raw) as usize]);
        others.push((sec.name.clone(), h.finish()));
    }
    let with_key = |content: &[u8]| -> Result<SectionDigests> {
        let mut all = others.clone();
        if measured.contains(&".pcrpkey") {
            all.push(hash_key(content));
        }
        super::canonical(measured, all, path)
    };
    let old_digests = with_key(&old_key)?;
    let digests = with_key(&pem)?;
    let phases = old_phases(&old_sig, &old_digests, &banks, path)?;
    let padded_end = data_end.next_multiple_of(8);
    Ok(Repolicy {
        pcrpkey: pem,
        pcrpkey_at,
        pcrsig_at,
        banks,
        phases,
        digests,
        file_sha256: file_hash.finalize().into(),
        prefix,
        zeros_after: pcrsig_at.raw_size - pcrsig_at.len + (padded_end - data_end),
    })
}

/// The phase of every policy of `old`, found by predicting PCR 11 with the
/// UKI's sections as they are; the same phases in every bank.
fn old_phases(
    old: &pcr::PcrSig,
    digests: &SectionDigests,
    banks: &[Bank],
    path: &Path,
) -> Result<Vec<String>> {
    let candidates = candidate_phases();
    let predicted = pcr::predict_raw(digests, banks, &candidates);
    let mut phases: Option<Vec<String>> = None;
    for (bank, values) in &predicted {
        let entries = old.get(bank.name()).map(Vec::as_slice).unwrap_or_default();
        let mut found = vec![];
        for (i, e) in entries.iter().enumerate() {
            let pol = pcr::unhex(&e.pol).unwrap_or_default();
            let phase = values
                .iter()
                .find(|(_, v)| pcr::policy_pcr_digest(*bank, v)[..] == pol[..])
                .map(|(p, _)| p.clone())
                .ok_or_else(|| {
                    Error::input(
                        path,
                        format!(
                            ".pcrsig: policy {i} of bank {bank} is for no boot phase of these sections (signed for other sections, or a phase path pki-signer does not try); build the UKI again"
                        ),
                    )
                })?;
            found.push(phase);
        }
        match &phases {
            None => phases = Some(found),
            Some(p) if *p == found => {}
            Some(_) => {
                return Err(Error::input(
                    path,
                    ".pcrsig: the banks are signed for different phases; build the UKI again",
                ))
            }
        }
    }
    match phases {
        Some(p) if !p.is_empty() => Ok(p),
        _ => Err(Error::input(path, ".pcrsig holds no policy")),
    }
}

impl Repolicy {
    /// Sign the new policies with `key`: the new `.pcrsig` content, which
    /// must have the old one's length.
    pub fn sign(&self, key: &dyn Signer, path: &Path) -> Result<Vec<u8>> {
        let (_, json) = pcr::sign_policies(&self.digests, &self.banks, &self.phases, key)?;
        check_len(&json, self.pcrsig_at.len, path)?;
        Ok(json)
    }

    /// Stage the new image next to `dest`: `src`'s data with the new
    /// `.pcrpkey` and `.pcrsig` and no certificate table, closed.
    pub fn stage(&self, src: &Path, dest: &Path, pcrsig: &[u8]) -> Result<fsutil::Staged> {
        check_len(pcrsig, self.pcrsig_at.len, src)?;
        let img = PeImage::open(src)?;
        fsutil::remove_stale_temps(dest);
        let staged = img.stage_copy(dest)?;
        let f = OpenOptions::new().write(true).open(staged.tmp()).at(dest)?;
        f.write_all_at(&self.pcrpkey, self.pcrpkey_at.offset)
            .at(dest)?;
        f.write_all_at(pcrsig, self.pcrsig_at.offset).at(dest)?;
        // The old table is not copied; its directory entry goes too.
        f.write_all_at(&[0; 8], img.cert_dir_offset()).at(dest)?;
        Ok(staged)
    }
}

fn check_len(pcrsig: &[u8], want: u64, path: &Path) -> Result<()> {
    if pcrsig.len() as u64 != want {
        return Err(Error::input(
            path,
            format!(
                "the new .pcrsig is {} bytes and the UKI's is {want}: a PCR key of another size needs the UKI built again (uki build)",
                pcrsig.len()
            ),
        ));
    }
    Ok(())
}

/// The Authenticode SHA-256 of the new image: `prefix` finished over the new
/// `.pcrsig` and `zeros_after` zeros.
pub fn finish_digest(prefix: &Sha256Midstate, pcrsig: &[u8], zeros_after: u64) -> [u8; 32] {
    let mut h = prefix.clone();
    h.update(pcrsig);
    let zeros = [0u8; 4096];
    let mut left = zeros_after;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        h.update(&zeros[..n]);
        left -= n as u64;
    }
    h.finish()
}
