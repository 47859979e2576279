//! Unified Kernel Images (UAPI UKI specification, systemd-stub(7)): build
//! one from a systemd-stub and its parts, predict the PCR 11 values the stub
//! and systemd-pcrphase will produce, sign the PCR policy as
//! `systemd-measure sign` does, and inspect a UKI.
//!
//! Which sections the stub measures, and in which order, depends on the stub
//! version (its `.sdmagic` section says it). Only versions whose measured
//! set is known here are accepted ([`STUB_RULES`]); a newer stub is
//! refused rather than guessed at, because a wrong guess would sign a policy
//! no boot ever satisfies.

pub mod build;
pub mod pcr;
pub mod repolicy;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::pe::{PeImage, SectionInfo};
use pcr::{Bank, MultiHasher, PcrSig, Predictions, SectionDigests};

/// Where Debian (systemd-boot-efi) and OE-core (systemd-boot) put the x86-64 stub.
pub const DEFAULT_STUBS: [&str; 2] = [
    "/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
    "/usr/lib/systemd/boot/efi/linuxx64.efi.stub.signed",
];

/// The stub to use when none is given: the first of [`DEFAULT_STUBS`] present.
pub fn default_stub() -> Result<PathBuf> {
    DEFAULT_STUBS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Usage(format!(
                "no systemd stub at {} (apt install systemd-boot-efi); pass --stub",
                DEFAULT_STUBS[0]
            ))
        })
}

/// What pki-signer knows of a range of systemd-stub versions (major numbers,
/// inclusive), from systemd's source at those tags: `unified_sections[]`
/// (src/fundamental/tpm-pcr.c, later uki.c), the stub's measuring loop and
/// section lookup (src/boot/efi/stub.c and pe.c, src/boot/ from 257), and
/// that release's ukify.
#[derive(Debug)]
pub struct StubRules {
    pub first: u32,
    pub last: u32,
    /// The sections the stub measures into PCR 11, in the order it measures
    /// them (the enum order, not the file's); `.pcrsig` never is.
    pub measured: &'static [&'static str],
    /// The order in which `uki build` adds its sections, that release's
    /// ukify's; `.pcrsig` always comes last, because it can only be made once
    /// everything measured has been hashed (ukify 254-256 put `.linux` after
    /// it; the stub finds sections by name, so either boots).
    pub layout: &'static [&'static str],
    /// Up to 256 the stub compares only `strlen(name)` bytes of a section
    /// name, so `.linuxfoo` is taken as `.linux`; from 257 all 8 bytes.
    pub prefix_names: bool,
    /// How `uki build` writes `.sbat`.
    pub sbat: SbatStyle,
    /// Sign PCR policies for the sha256 bank only. systemd-measure 262 signs
    /// every bank's policy with RSA-SHA256 (systemd PR 41051, in 260 or 261;
    /// systemd's check has always accepted only that); pki-signer signs a
    /// bank's policy with the bank's hash, as systemd-measure 252-259 did, so
    /// for the stubs of those newer releases it signs sha256 only rather
    /// than differ from their systemd-measure.
    pub sha256_policies_only: bool,
    /// Sections whose measurement the stub decides at boot, with why a UKI
    /// carrying one is refused.
    pub unpredictable: &'static [(&'static str, &'static str)],
}

/// How `uki build` writes the UKI's `.sbat` (the stub's section, rewritten
/// in place).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SbatStyle {
    /// The stub's own text, `--sbat` lines added (252-253 do not measure it).
    Stub,
    /// As ukify 254-257 merges it (its `merge_sbat`): one `sbat,` line, the
    /// stub's, the kernel's and `--sbat`'s entries (ukify's `uki` entry when
    /// no `--sbat`), and a NUL after the last newline.
    UkifyNul,
    /// As ukify 262 merges it: the same lines, ending at the last newline.
    Ukify,
}

/// ukify 254-256's order (and pki-signer's for 252-253, which had no ukify
/// that measured `.uname`).
const LAYOUT_UKIFY_254: &[&str] = &[
    ".osrel", ".cmdline", ".dtb", ".uname", ".splash", ".pcrpkey", ".initrd", ".linux", ".ucode",
];
/// ukify 257 moved `.linux` before `.initrd`; ukify 262 keeps that order for
/// these sections (it puts `.dtbauto`/`.hwids` after `.dtb` and `.efifw`
/// after `.initrd`, which `uki build` does not write). `.ucode` comes last,
/// as in ukify 257 and 262; for 256, whose ukify source is not at hand, the
/// same (the stub finds sections by name and measures in its own order).
const LAYOUT_UKIFY_257: &[&str] = &[
    ".osrel", ".cmdline", ".dtb", ".uname", ".splash", ".pcrpkey", ".linux", ".initrd", ".ucode",
];

const PROFILE_WHY: &str = "a multi-profile UKI: the boot picks which profile's sections the stub measures; pki-signer predicts single-profile UKIs only";
const DTBAUTO_WHY: &str = "the stub measures the .dtbauto that matches the machine's devicetree or hardware IDs, which is not known at build time";

/// Every systemd-stub version pki-signer predicts PCR 11 for. 252, 254, 257
/// and 262 (Debian 12, bookworm-backports, Debian 13, forky/sid) are checked
/// against real stubs, systemd-measure and firmware in tests/; 253, 255,
/// 256 and 258-261 only by reading the source, which measures as the
/// neighbouring releases do (258-261 as 262: same `unified_sections[]`,
/// measuring loop and name matching in the 262 source, and the NEWS of
/// 258-262 names no other change to what the stub measures).
pub const STUB_RULES: [StubRules; 5] = [
    StubRules {
        first: 252,
        last: 253,
        measured: &[
            ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey",
        ],
        layout: LAYOUT_UKIFY_254,
        prefix_names: true,
        sbat: SbatStyle::Stub,
        sha256_policies_only: false,
        unpredictable: &[],
    },
    StubRules {
        first: 254,
        last: 255,
        measured: &[
            ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".uname", ".sbat",
            ".pcrpkey",
        ],
        layout: LAYOUT_UKIFY_254,
        prefix_names: true,
        sbat: SbatStyle::UkifyNul,
        sha256_policies_only: false,
        unpredictable: &[],
    },
    StubRules {
        first: 256,
        last: 256,
        measured: &[
            ".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname",
            ".sbat", ".pcrpkey",
        ],
        layout: LAYOUT_UKIFY_254,
        prefix_names: true,
        sbat: SbatStyle::UkifyNul,
        sha256_policies_only: false,
        unpredictable: &[],
    },
    StubRules {
        first: 257,
        last: 257,
        measured: &[
            ".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname",
            ".sbat", ".pcrpkey", ".profile", ".dtbauto", ".hwids",
        ],
        layout: LAYOUT_UKIFY_257,
        prefix_names: false,
        sbat: SbatStyle::UkifyNul,
        sha256_policies_only: false,
        unpredictable: &[(".profile", PROFILE_WHY), (".dtbauto", DTBAUTO_WHY)],
    },
    // 258 added `.efifw` (NEWS 258; last in `unified_sections[]`, measured
    // like the others, but only the copy whose firmware ID matches the
    // machine's, via `.hwids`: src/boot/pe.c); a section whose VirtualAddress
    // + VirtualSize passes SizeOfImage is skipped by 262's pe.c (pki-signer
    // refuses such a UKI for every version). Stub 258's `.sbat` is padded to
    // 1 KiB, which needs ukify 257.9 or later (NEWS 258). ukify 262 no longer
    // ends `.sbat` with a NUL; when between 258 and 262 that changed is not
    // in the source, so a UKI from ukify 258-261 may differ from ours in that
    // byte (each predicts its own `.sbat`, so PCR 11 is right either way).
    StubRules {
        first: 258,
        last: 262,
        measured: &[
            ".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname",
            ".sbat", ".pcrpkey", ".profile", ".dtbauto", ".hwids", ".efifw",
        ],
        layout: LAYOUT_UKIFY_257,
        prefix_names: false,
        sbat: SbatStyle::Ukify,
        sha256_policies_only: true,
        unpredictable: &[
            (".profile", PROFILE_WHY),
            (".dtbauto", DTBAUTO_WHY),
            (
                ".efifw",
                "the stub measures the .efifw whose firmware ID matches the machine's hardware IDs, which is not known at build time",
            ),
        ],
    },
];

impl StubRules {
    /// Refuse to sign policies for `banks` where [`Self::sha256_policies_only`]
    /// says so; the one-line reason.
    pub fn check_policy_banks(&self, banks: &[Bank], v: &StubVersion) -> Option<String> {
        let other = banks.iter().find(|b| **b != Bank::Sha256)?;
        self.sha256_policies_only.then(|| {
            format!(
                "systemd-stub {}: pki-signer signs the {other} bank's PCR policy with {other}, the systemd-measure of this release with SHA-256; sign the sha256 bank only (--pcr-banks sha256)",
                v.version
            )
        })
    }

    /// The measured section the stub takes a section named `name` for.
    pub fn role(&self, name: &str) -> Option<&'static str> {
        self.measured.iter().copied().find(|m| {
            if self.prefix_names {
                name.starts_with(m)
            } else {
                name == *m
            }
        })
    }

    pub fn measures(&self, name: &str) -> bool {
        self.measured.contains(&name)
    }

    /// Refuse the sections of a UKI this stub would measure in a way that
    /// cannot be predicted: a name it takes for another section, or one it
    /// decides at boot.
    pub fn check_names<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
        v: &StubVersion,
        path: &Path,
    ) -> Result<()> {
        for name in names {
            if let Some((_, why)) = self.unpredictable.iter().find(|(n, _)| *n == name) {
                return Err(Error::input(path, format!("section {name}: {why}")));
            }
            if let Some(role) = self.role(name).filter(|r| *r != name) {
                return Err(Error::input(
                    path,
                    format!(
                        "section {}: systemd-stub {} takes it as {role} (it compares only the first {} bytes of a name); rename it",
                        name.escape_debug(),
                        v.version,
                        role.len()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The rules of systemd-stub `major`, or None when pki-signer does not know it.
pub fn stub_rules(major: u32) -> Option<&'static StubRules> {
    STUB_RULES
        .iter()
        .find(|r| (r.first..=r.last).contains(&major))
}

/// The versions [`STUB_RULES`] covers, for messages: `252-262`.
pub fn known_stub_versions() -> String {
    let first = STUB_RULES.first().map_or(0, |r| r.first);
    let last = STUB_RULES.last().map_or(0, |r| r.last);
    format!("{first}-{last}")
}

/// What `.sdmagic` says: `#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StubVersion {
    /// The whole version word (`252.39-1~deb12u2`).
    pub version: String,
    pub major: u32,
}

/// Parse the content of `.sdmagic` of the stub or UKI at `path`.
pub fn parse_sdmagic(data: &[u8], path: &Path) -> Result<StubVersion> {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let text = std::str::from_utf8(&data[..end])
        .map_err(|_| Error::input(path, ".sdmagic is not text"))?;
    let rest = text.split("systemd-stub ").nth(1).ok_or_else(|| {
        let m = format!(".sdmagic '{}' names no systemd-stub", text.escape_debug());
        Error::input(path, m)
    })?;
    let version = rest.split_whitespace().next().unwrap_or("").to_string();
    let digits: String = version.chars().take_while(|c| c.is_ascii_digit()).collect();
    let major = digits.parse::<u32>().map_err(|_| {
        let m = format!(
            ".sdmagic version '{}' has no number",
            version.escape_debug()
        );
        Error::input(path, m)
    })?;
    Ok(StubVersion { version, major })
}

/// The rules of the stub `v`, or an input error naming `path`.
pub fn rules_for(v: &StubVersion, path: &Path) -> Result<&'static StubRules> {
    stub_rules(v.major).ok_or_else(|| {
        Error::input(
            path,
            format!(
                "systemd-stub {}: which sections this version measures into PCR 11 is not known to pki-signer (known: {}); refusing to guess",
                v.version,
                known_stub_versions()
            ),
        )
    })
}

/// Order `digests` (any order) as the stub measures them, keeping only the
/// sections it measures. A section measured twice is refused: which copy the
/// stub takes is not something to predict.
pub fn canonical(
    measured: &[&str],
    digests: SectionDigests,
    path: &Path,
) -> Result<SectionDigests> {
    let mut out = vec![];
    for name in measured {
        let mut found = digests.iter().filter(|(n, _)| n == name);
        if let Some(d) = found.next() {
            if found.next().is_some() {
                return Err(Error::input(path, format!("section {name} appears twice")));
            }
            out.push(d.clone());
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Reading the sections of an existing UKI

/// An opened UKI: validated PE headers and a descriptor for section reads.
pub struct Uki {
    pub path: PathBuf,
    pub sections: Vec<SectionInfo>,
    pub file_size: u64,
    pub dll_characteristics: u16,
    pub size_of_image: u32,
    file: File,
}

/// How far a section's VirtualSize may exceed its raw data (zeros the loader
/// adds, e.g. a kernel's bss): a 4 GiB VirtualSize is a broken image, not
/// 4 GiB of zeros to hash.
const MAX_ZERO_FILL: u64 = 256 << 20;

/// Largest `.sdmagic`, `.pcrsig` or `.pcrpkey` read into memory.
const MAX_SMALL_SECTION: u32 = 1 << 20;

impl Uki {
    pub fn open(path: &Path) -> Result<Uki> {
        let img = PeImage::open(path)?;
        let info = img.info();
        let file = File::open(path).at(path)?;
        Ok(Uki {
            path: path.to_path_buf(),
            sections: info.sections,
            file_size: info.file_size,
            dll_characteristics: img.dll_characteristics(),
            size_of_image: img.size_of_image(),
            file,
        })
    }

    pub fn section(&self, name: &str) -> Option<&SectionInfo> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// Stream the VirtualSize bytes the loader maps for `s` (raw data, then
    /// zeros past SizeOfRawData), as the stub measures them.
    pub fn stream(&self, s: &SectionInfo, mut f: impl FnMut(&[u8])) -> Result<()> {
        let vs = u64::from(s.virtual_size);
        let raw = u64::from(s.raw_size).min(vs);
        let start = u64::from(s.raw_offset);
        if raw > 0 && start + raw > self.file_size {
            return Err(Error::input(
                &self.path,
                format!("section {} extends past the end of the file", s.name),
            ));
        }
        if vs - raw > MAX_ZERO_FILL {
            return Err(Error::input(
                &self.path,
                format!(
                    "section {}: VirtualSize {vs:#x} exceeds its raw data ({raw:#x} bytes) by more than {MAX_ZERO_FILL:#x}",
                    s.name
                ),
            ));
        }
        let mut buf = vec![0u8; (256 << 10).min(vs.max(1) as usize)];
        let mut pos = 0u64;
        while pos < vs {
            let n = (buf.len() as u64).min(vs - pos) as usize;
            let chunk = &mut buf[..n];
            if pos < raw {
                let m = ((raw - pos) as usize).min(n);
                self.file
                    .read_exact_at(&mut chunk[..m], start + pos)
                    .at(&self.path)?;
                chunk[m..].fill(0);
            } else {
                chunk.fill(0);
            }
            f(chunk);
            pos += n as u64;
        }
        Ok(())
    }

    /// A small section's content (VirtualSize bytes), bounded.
    pub fn read_small(&self, s: &SectionInfo) -> Result<Vec<u8>> {
        if s.virtual_size > MAX_SMALL_SECTION {
            return Err(Error::input(
                &self.path,
                format!(
                    "section {} is {} bytes; at most {MAX_SMALL_SECTION} are read",
                    s.name, s.virtual_size
                ),
            ));
        }
        let mut v = Vec::with_capacity(s.virtual_size as usize);
        self.stream(s, |c| v.extend_from_slice(c))?;
        Ok(v)
    }

    /// The stub version from `.sdmagic`.
    pub fn stub_version(&self) -> Result<StubVersion> {
        let s = self.section(".sdmagic").ok_or_else(|| {
            Error::input(&self.path, "no .sdmagic section: not a systemd-stub image")
        })?;
        let data = self.read_small(s)?;
        parse_sdmagic(&data, &self.path)
    }

    /// The digests, in `banks`, of the sections `rules`' stub measures, in
    /// measuring order; a UKI it would measure unpredictably is refused.
    pub fn measured_digests(
        &self,
        rules: &StubRules,
        v: &StubVersion,
        banks: &[Bank],
    ) -> Result<SectionDigests> {
        rules.check_names(self.sections.iter().map(|s| s.name.as_str()), v, &self.path)?;
        let mut all = vec![];
        for s in &self.sections {
            if !rules.measures(&s.name) || s.virtual_size == 0 {
                continue;
            }
            // systemd-stub 262 skips such a section (src/boot/pe.c); older
            // stubs measure memory past the loaded image.
            let end = u64::from(s.virtual_address) + u64::from(s.virtual_size);
            if end > u64::from(self.size_of_image) {
                return Err(Error::input(
                    &self.path,
                    format!(
                        "section {} ends at {end:#x}, past SizeOfImage {:#x}: the stub skips it (262) or reads past the loaded image",
                        s.name, self.size_of_image
                    ),
                ));
            }
            let mut h = MultiHasher::new(banks);
            self.stream(s, |c| h.update(c))?;
            all.push((s.name.clone(), h.finish()));
        }
        canonical(rules.measured, all, &self.path)
    }
}

// ---------------------------------------------------------------------------
// uki measure

#[derive(Clone, Debug, Serialize)]
pub struct MeasureReport {
    pub stub_version: StubVersion,
    /// The measured sections, in measuring order.
    pub sections: Vec<String>,
    pub pcr: Predictions,
}

/// PCR 11 predictions for an existing UKI.
pub fn measure_uki(path: &Path, banks: &[Bank], phases: &[String]) -> Result<MeasureReport> {
    let uki = Uki::open(path)?;
    let v = uki.stub_version()?;
    let rules = rules_for(&v, path)?;
    let digests = uki.measured_digests(rules, &v, banks)?;
    Ok(MeasureReport {
        stub_version: v,
        sections: digests.iter().map(|(n, _)| n.clone()).collect(),
        pcr: pcr::predict(&digests, banks, phases),
    })
}

/// PCR 11 predictions for the UKI `inputs` would make with `stub`.
pub fn measure_inputs(
    inputs: &build::Inputs,
    stub: &Path,
    banks: &[Bank],
    phases: &[String],
) -> Result<MeasureReport> {
    let stub_pe = build::Stub::load(stub)?;
    let rules = rules_for(&stub_pe.version, stub)?;
    let parts = inputs.parts(None, rules.layout)?;
    let edits = build::StubEdits::new(&stub_pe, rules, inputs)?;
    let mut all = build::stub_digests(&stub_pe, rules, &edits, banks);
    for p in &parts {
        if !rules.measures(p.name) {
            continue;
        }
        let mut h = MultiHasher::new(banks);
        p.content.stream(|c| {
            h.update(c);
            Ok(())
        })?;
        if h.len > 0 {
            all.push((p.name.to_string(), h.finish()));
        }
    }
    let digests = canonical(rules.measured, all, stub)?;
    Ok(MeasureReport {
        stub_version: stub_pe.version,
        sections: digests.iter().map(|(n, _)| n.clone()).collect(),
        pcr: pcr::predict(&digests, banks, phases),
    })
}

// ---------------------------------------------------------------------------
// uki show

#[derive(Clone, Debug, Serialize)]
pub struct ShowSection {
    pub name: String,
    pub virtual_address: u32,
    pub virtual_size: u32,
    pub raw_offset: u32,
    pub raw_size: u32,
    /// Measured into PCR 11 by this stub (None: stub version unknown).
    pub measured: Option<bool>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PolicyCheck {
    pub bank: String,
    /// The phase whose predicted PCR value the policy matches (default phases
    /// tried), if any.
    pub phase: Option<String>,
    pub pol: String,
    /// `pkfp` is the fingerprint of `.pcrpkey`.
    pub key_matches: bool,
    /// `sig` verifies over `pol` with `.pcrpkey`.
    pub signature_valid: bool,
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ShowReport {
    pub file: PathBuf,
    pub stub_version: Option<StubVersion>,
    pub sections: Vec<ShowSection>,
    /// `.pcrpkey` SHA-256 fingerprint of its RSAPublicKey (as `pkfp`).
    pub pcrpkey_fingerprint: Option<String>,
    pub policies: Vec<PolicyCheck>,
    pub problems: Vec<String>,
    /// Every `.pcrsig` policy is signed by `.pcrpkey`'s key.
    pub ok: bool,
}

/// List the sections and check `.pcrsig` against `.pcrpkey`.
pub fn show(path: &Path) -> Result<ShowReport> {
    let uki = Uki::open(path)?;
    let version = uki.stub_version().ok();
    // None also when this stub would measure the UKI unpredictably.
    let rules = version.as_ref().and_then(|v| {
        let r = stub_rules(v.major)?;
        r.check_names(uki.sections.iter().map(|s| s.name.as_str()), v, path)
            .ok()
            .map(|()| (r, v.clone()))
    });
    let sections = uki
        .sections
        .iter()
        .map(|s| ShowSection {
            name: s.name.clone(),
            virtual_address: s.virtual_address,
            virtual_size: s.virtual_size,
            raw_offset: s.raw_offset,
            raw_size: s.raw_size,
            measured: rules.as_ref().map(|(r, _)| r.measures(&s.name)),
        })
        .collect();
    let mut report = ShowReport {
        file: path.to_path_buf(),
        stub_version: version,
        sections,
        pcrpkey_fingerprint: None,
        policies: vec![],
        problems: vec![],
        ok: true,
    };
    let Some(sig_section) = uki.section(".pcrsig") else {
        return Ok(report);
    };
    let sig_data = uki.read_small(sig_section)?;
    let pcrsig = match pcr::parse_pcrsig(&sig_data) {
        Ok(p) => p,
        Err(m) => {
            report.problems.push(format!(".pcrsig: {m}"));
            report.ok = false;
            return Ok(report);
        }
    };
    let key = match uki.section(".pcrpkey") {
        Some(s) => {
            let pem = uki.read_small(s)?;
            match public_key_from_pem(&pem) {
                Ok(k) => Some(k),
                Err(m) => {
                    report.problems.push(format!(".pcrpkey: {m}"));
                    None
                }
            }
        }
        None => {
            report
                .problems
                .push(".pcrsig present but no .pcrpkey to check it with".into());
            None
        }
    };
    // Predictions for the default phases, to name the phase each policy is for.
    let banks: Vec<Bank> = pcrsig.keys().filter_map(|b| b.parse().ok()).collect();
    let phases: Vec<String> = pcr::DEFAULT_PHASES.iter().map(|s| s.to_string()).collect();
    let predicted = match &rules {
        Some((r, v)) => Some(pcr::predict_raw(
            &uki.measured_digests(r, v, &banks)?,
            &banks,
            &phases,
        )),
        None => None,
    };
    report.pcrpkey_fingerprint = key.as_ref().map(|k| pcr::key_fingerprint(&k.key_bits));
    report.policies = check_policies(&pcrsig, key.as_ref(), predicted.as_ref());
    report.ok = report.problems.is_empty()
        && report
            .policies
            .iter()
            .all(|p| p.key_matches && p.signature_valid);
    Ok(report)
}

/// `path`'s `.pcrpkey` is the key `key_bits` (subjectPublicKey bits) and
/// every policy of its `.pcrsig` verifies with it, as `uki show` checks.
pub fn check_pcr_policy(path: &Path, key_bits: &[u8]) -> Result<()> {
    let show = show(path)?;
    let failed = |m: String| Err(Error::Verify(format!("{}: {m}", path.display())));
    if show.pcrpkey_fingerprint.as_deref() != Some(pcr::key_fingerprint(key_bits).as_str()) {
        return failed(".pcrpkey is not the expected PCR key".into());
    }
    if !show.ok || show.policies.is_empty() {
        let mut p = show.problems;
        p.extend(show.policies.into_iter().flat_map(|p| p.problems));
        if p.is_empty() {
            p.push(".pcrsig holds no policy".into());
        }
        return failed(p.join("; "));
    }
    Ok(())
}

/// A public key from a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub spki_der: Vec<u8>,
    /// The subjectPublicKey BIT STRING content (RSAPublicKey DER for RSA).
    pub key_bits: Vec<u8>,
}

pub fn public_key_from_pem(pem_bytes: &[u8]) -> std::result::Result<PublicKey, String> {
    use x509_parser::prelude::FromDer;
    let end = pem_bytes
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(pem_bytes.len());
    let blocks = pem::parse_many(&pem_bytes[..end]).map_err(|e| format!("bad PEM: {e}"))?;
    let block = blocks
        .into_iter()
        .find(|p| p.tag() == "PUBLIC KEY")
        .ok_or("no PUBLIC KEY block")?;
    let der = block.contents().to_vec();
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&der)
        .map_err(|e| format!("bad SubjectPublicKeyInfo: {e}"))?;
    let key_bits = spki.subject_public_key.data.to_vec();
    Ok(PublicKey {
        spki_der: der,
        key_bits,
    })
}

/// Verify a policy signature: made with `bank`'s hash, as systemd-measure
/// signed up to 259 at least (RSA-SHA1 for the sha1 bank), or with SHA-256
/// whatever the bank, as systemd-measure 262 signs (systemd PR 41051) and
/// the only one systemd's own check (src/shared/tpm2-util.c, 257 and 262)
/// accepts.
pub fn verify_policy_sig(key: &PublicKey, bank: Bank, pol: &[u8], sig: &[u8]) -> bool {
    use crate::sigalg::{self, Hash, KeyKind, Scheme};
    use x509_parser::prelude::FromDer;
    let Ok((_, spki)) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&key.spki_der) else {
        return false;
    };
    let Some(kind) = sigalg::key_kind(&spki) else {
        return false;
    };
    let rsa = matches!(kind, KeyKind::Rsa | KeyKind::RsaPss);
    let with = |hash| {
        let scheme = if rsa {
            Scheme::RsaPkcs1(hash)
        } else {
            Scheme::Ecdsa(hash)
        };
        sigalg::verify(&spki, scheme, pol, sig).is_ok()
    };
    if with(Hash::Sha256) {
        return true;
    }
    match bank.sig_hash() {
        Some(Hash::Sha256) => false,
        Some(hash) => with(hash),
        // Legacy: systemd-measure signed the sha1 bank with RSA-SHA1.
        None => {
            rsa && aws_lc_rs::signature::UnparsedPublicKey::new(
                &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
                &key.key_bits,
            )
            .verify(pol, sig)
            .is_ok()
        }
    }
}

/// Check every policy of `pcrsig`: key fingerprint, signature, and which
/// predicted phase it is for.
pub fn check_policies(
    pcrsig: &PcrSig,
    key: Option<&PublicKey>,
    predicted: Option<&pcr::RawPredictions>,
) -> Vec<PolicyCheck> {
    let mut out = vec![];
    for (bank_name, entries) in pcrsig {
        let Ok(bank) = bank_name.parse::<Bank>() else {
            continue;
        };
        for e in entries {
            let mut problems = vec![];
            if e.pcrs != [pcr::PCR_KERNEL_BOOT] {
                problems.push(format!("pcrs {:?}, expected [11]", e.pcrs));
            }
            let pol = pcr::unhex(&e.pol).filter(|p| p.len() == 32);
            if pol.is_none() {
                problems.push("pol is not a SHA-256 digest in hex".into());
            }
            let sig = pcr::base64_decode(&e.sig);
            if sig.is_none() {
                problems.push("sig is not base64".into());
            }
            let key_matches =
                key.is_some_and(|k| pcr::key_fingerprint(&k.key_bits) == e.pkfp.to_lowercase());
            if key.is_some() && !key_matches {
                problems.push("pkfp is not the fingerprint of .pcrpkey".into());
            }
            let signature_valid = match (key, &pol, &sig) {
                (Some(k), Some(p), Some(s)) => verify_policy_sig(k, bank, p, s),
                _ => false,
            };
            if key.is_some() && pol.is_some() && sig.is_some() && !signature_valid {
                problems.push("signature does not verify with .pcrpkey".into());
            }
            let phase = pol.as_ref().and_then(|p| {
                predicted?
                    .iter()
                    .find(|(b, _)| *b == bank)?
                    .1
                    .iter()
                    .find(|(_, v)| pcr::policy_pcr_digest(bank, v)[..] == p[..])
                    .map(|(ph, _)| ph.clone())
            });
            out.push(PolicyCheck {
                bank: bank_name.clone(),
                phase,
                pol: e.pol.clone(),
                key_matches,
                signature_valid,
                problems,
            });
        }
    }
    out
}

/// Read a whole regular file that may be large (kernel, initrd), as a stream.
pub(crate) fn open_stream(path: &Path) -> Result<(File, u64)> {
    let f = File::open(path).at(path)?;
    let md = f.metadata().at(path)?;
    if !md.is_file() {
        return Err(Error::input(path, "not a regular file"));
    }
    Ok((f, md.len()))
}

/// Read a small input (os-release, splash, dtb, sbat, stub): bounded.
pub(crate) fn read_part(path: &Path) -> Result<Vec<u8>> {
    fsutil::read_input(path, fsutil::InputKind::UkiPart)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdmagic_parses_debian_stub() {
        let p = Path::new("stub.efi");
        let v = parse_sdmagic(b"#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####\0", p).unwrap();
        assert_eq!(v.major, 252);
        assert_eq!(v.version, "252.39-1~deb12u2");
        assert!(parse_sdmagic(b"#### LoaderInfo: systemd-boot 252 ####", p).is_err());
        assert!(parse_sdmagic(b"systemd-stub x", p).is_err());
        assert!(stub_rules(251).is_none() && stub_rules(263).is_none());
        assert_eq!(known_stub_versions(), "252-262");
    }

    #[test]
    fn rules_cover_each_version_once_and_measure_in_enum_order() {
        for major in 252..=262 {
            assert_eq!(
                STUB_RULES
                    .iter()
                    .filter(|r| (r.first..=r.last).contains(&major))
                    .count(),
                1,
                "{major}"
            );
        }
        // Every later set keeps the earlier ones' order (systemd: "PLEASE DO NOT REORDER").
        for w in STUB_RULES.windows(2) {
            let later: Vec<&str> = w[1]
                .measured
                .iter()
                .copied()
                .filter(|n| w[0].measured.contains(n))
                .collect();
            assert_eq!(later, w[0].measured);
        }
        let p = Path::new("x.efi");
        let v = |s: &str| parse_sdmagic(format!("systemd-stub {s}").as_bytes(), p).unwrap();
        let old = stub_rules(254).unwrap();
        assert_eq!(old.role(".linuxfoo"), Some(".linux"));
        let err = old.check_names([".linuxfoo"], &v("254.1"), p).unwrap_err();
        assert!(err.to_string().contains("takes it as .linux"), "{err}");
        let new = stub_rules(257).unwrap();
        assert_eq!(new.role(".linuxfoo"), None);
        assert!(new.check_names([".linuxfoo"], &v("257.1"), p).is_ok());
        let err = new.check_names([".profile"], &v("257.1"), p).unwrap_err();
        assert!(err.to_string().contains("multi-profile"), "{err}");
        assert!(new.check_names([".dtbauto"], &v("257.1"), p).is_err());
        assert!(new.check_names([".efifw"], &v("257.1"), p).is_ok());
        let r262 = stub_rules(258).unwrap();
        assert!(std::ptr::eq(r262, stub_rules(262).unwrap()));
        assert_eq!(r262.measured.last(), Some(&".efifw"));
        let err = r262.check_names([".efifw"], &v("262-1"), p).unwrap_err();
        assert!(err.to_string().contains("firmware ID"), "{err}");
        assert!(r262.check_names([".linuxfoo"], &v("262-1"), p).is_ok());
    }
}

// ---------------------------------------------------------------------------
// The PCR policy key

/// The name `--pcr-role` takes: the PCR key `pki init --uefi` makes.
pub const PCR_ROLE: &str = "tpm2-pcr";

/// Where the PCR policy key comes from, as given on the command line.
#[derive(Clone, Debug, Default)]
pub struct PcrKeySpec {
    /// `--pcr-role tpm2-pcr`: the PKI's `tpm2-pcr-private.pem` (or its token key).
    pub role: Option<String>,
    pub dir: PathBuf,
    /// `--pcr-key`: a key file or a `pkcs11:` URI.
    pub key: Option<PathBuf>,
    pub key_pass_file: Option<PathBuf>,
}

/// Open the PCR policy key. It goes through the same `Signer` as every
/// other key (file or PKCS#11), and the same release-mode check: a key of a
/// development PKI, or lying in one, or equal to a development PKI's
/// `tpm2-pcr-public.pem`, is refused in release mode.
pub fn load_pcr_key(spec: &PcrKeySpec) -> Result<Box<dyn crate::keys::Signer>> {
    let key_path = match (&spec.role, &spec.key) {
        (Some(r), None) => {
            if r != PCR_ROLE {
                return Err(Error::Usage(format!(
                    "--pcr-role '{r}': the PCR policy key's role is '{PCR_ROLE}'"
                )));
            }
            pcr_role_key(&spec.dir)?
        }
        (None, Some(k)) => k.clone(),
        (Some(_), Some(_)) => {
            return Err(Error::Usage(
                "give either --pcr-role or --pcr-key, not both".into(),
            ))
        }
        (None, None) => return Err(Error::Usage("no PCR key given".into())),
    };
    let signer = crate::identity::load_signer(&key_path, spec.key_pass_file.as_deref())?;
    crate::release::check_key(&crate::release::Candidate {
        role: spec.role.as_deref(),
        pki_dir: Some(&spec.dir),
        key: &key_path,
        cert: &key_path,
        chain: None,
        certs: &[],
        in_cert_file: 0,
    })?;
    if crate::release::enabled() {
        if let Some(why) = crate::release::development_dir(&spec.dir)? {
            let public = spec.dir.join("tpm2-pcr-public.pem");
            let dev = fsutil::read_input(&public, fsutil::InputKind::Certificate)
                .ok()
                .and_then(|b| public_key_from_pem(&b).ok());
            if dev.is_some_and(|d| d.key_bits == signer.public_key()) {
                return Err(Error::input(
                    &key_path,
                    format!("release mode refuses this PCR key: it is the development key of {} ({why}); sign with a production key", public.display()),
                ));
            }
        }
    }
    Ok(signer)
}

/// The PCR key file (or token URI) of the PKI in `dir`.
fn pcr_role_key(dir: &Path) -> Result<PathBuf> {
    let pki = crate::pki::Pki::open(dir)?;
    if let Some(m) = &pki.manifest {
        if let Some(f) = m.files.iter().find(|f| f.kind == "tpm-pcr-private-key") {
            if let Some(uri) = &f.key_uri {
                return Ok(PathBuf::from(uri));
            }
            if !f.path.is_empty() {
                return Ok(dir.join(&f.path));
            }
        }
    }
    let p = dir.join("tpm2-pcr-private.pem");
    if p.is_file() {
        return Ok(p);
    }
    Err(Error::input(
        dir,
        "no TPM PCR key in this PKI (pki init --uefi makes tpm2-pcr-private.pem)",
    ))
}

/// The `pkfp` of the PCR public key of the PKI in `dir` (`tpm2-pcr-public.pem`,
/// or the file `pki.json` names), if it has one.
pub fn pki_pcr_fingerprint(dir: &Path) -> Option<String> {
    let name = crate::pki::Inventory::load(dir)
        .ok()
        .and_then(|m| {
            m.files
                .into_iter()
                .find(|f| f.kind == "tpm-pcr-public-key" && !f.path.is_empty())
        })
        .map_or_else(|| "tpm2-pcr-public.pem".to_string(), |f| f.path);
    let pem = fsutil::read_input(&dir.join(name), fsutil::InputKind::Certificate).ok()?;
    let key = public_key_from_pem(&pem).ok()?;
    Some(pcr::key_fingerprint(&key.key_bits))
}

/// The `pkfp` of the key in `path`'s `.pcrpkey`, or empty when it has none.
pub fn pcrpkey_fingerprint(path: &Path) -> Result<String> {
    let uki = Uki::open(path)?;
    let Some(s) = uki.section(".pcrpkey") else {
        return Ok(String::new());
    };
    let pem = uki.read_small(s)?;
    let key =
        public_key_from_pem(&pem).map_err(|m| Error::input(path, format!(".pcrpkey: {m}")))?;
    Ok(pcr::key_fingerprint(&key.key_bits))
}

/// Refuse to re-sign the UKI at `path` (whose plan record names the PCR key
/// `pkfp`) when that key is the PCR key of one of the development PKIs
/// `dev_dirs`: re-signing replaces only the Authenticode signature, so the
/// development policy, and the `.pcrpkey` that `systemd-cryptenroll` binds
/// disks to, would ship under a production signature.
pub fn check_resignable(path: &Path, pkfp: &str, dev_dirs: &[PathBuf]) -> Result<()> {
    for dir in dev_dirs {
        if pki_pcr_fingerprint(dir).is_some_and(|f| f.eq_ignore_ascii_case(pkfp)) {
            return Err(Error::input(
                path,
                format!(
                    "its PCR policy (.pcrsig) is signed by the development PCR key of {} (pkfp {pkfp}); re-signing would keep that policy and .pcrpkey: give KEYS.json a 'tpm2-pcr' entry (the production PCR key) to sign it again, or build the UKI with the production PCR key",
                    dir.display()
                ),
            ));
        }
    }
    Ok(())
}
