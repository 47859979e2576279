//! `uki build`: a systemd stub plus its parts, laid out as ukify lays them
//! out, the PCR policy signed, then Authenticode-signed as `pe sign` does.
//!
//! Layout (ukify's `pe_add_sections`, systemd-stub(7)):
//! - the stub's COFF symbol table is dropped when it ends the file (image
//!   files should not carry one);
//! - new sections follow the stub's last section in the order of the
//!   stub's release's ukify ([`StubRules::layout`]), `.pcrsig` last, each
//!   with `VirtualSize` = its length, raw data at the next `FileAlignment`
//!   boundary, `SizeOfRawData` rounded up to it, and `VirtualAddress` at the
//!   next 4 KiB boundary (or `SectionAlignment`, if larger) after the
//!   previous section, as the systemd-stub(7) objcopy recipe does;
//! - `.linux` is code, the others initialized data, all read-only;
//! - `NumberOfSections`, `SizeOfInitializedData`, `SizeOfImage` follow;
//!   `CheckSum` is set when the image is signed;
//! - several initrds are concatenated, each padded to 4 bytes (ukify);
//! - `.sbat` is rewritten in place: `--sbat` lines added for stubs that do
//!   not measure it, merged as ukify does for those that do;
//! - NX_COMPAT is cleared when the kernel lacks it (ukify 257 and 262).
//!
//! One pass: the layout is known before anything is written (`.pcrsig` has
//! a fixed length for a given key, banks and phases:
//! [`pcr::pcrsig_len`]), so the headers are written final, then every input
//! is read once and copied into the output while the banks' digests of the
//! measured parts and the Authenticode digest and checksum of the image
//! ([`DigestBuilder`]) are computed; the output is not read back. The
//! signature is then appended in place, as `pe sign --in-place` does.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::Serialize;
use time::OffsetDateTime;

use super::pcr::{self, Bank, MultiHasher, PcrSig, Predictions, SectionDigests};
use super::{canonical, open_stream, read_part, rules_for, SbatStyle, StubRules, StubVersion, Uki};
use crate::authenticode::{self, SignOptions};
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::identity::Identity;
use crate::keys::Signer;
use crate::pe::{DigestBuilder, PeImage};

const SECTION_HEADER: usize = 40;
const IMAGE_SCN_CNT_CODE: u32 = 0x0000_0020;
const IMAGE_SCN_CNT_INITIALIZED_DATA: u32 = 0x0000_0040;
const IMAGE_SCN_MEM_READ: u32 = 0x4000_0000;
const IMAGE_FILE_LOCAL_SYMS_STRIPPED: u16 = 0x0008;
const IMAGE_DLLCHARACTERISTICS_NX_COMPAT: u16 = 0x0100;
/// The `sbat,` line every SBAT starts with.
const SBAT_HEADER: &str =
    "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md";
/// What ukify adds when no SBAT is given, so that UKIs as a class can be
/// revoked.
const UKI_SBAT: &str =
    "uki,1,UKI,uki,1,https://uapi-group.org/specifications/specs/unified_kernel_image/";
/// Sections start on page boundaries in memory, as in the objcopy recipe.
const MIN_SECTION_ALIGN: u32 = 4096;

fn le16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn le32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    if let Some(s) = b.get_mut(off..off + 2) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

fn round_up(x: u64, a: u64) -> u64 {
    if a <= 1 {
        x
    } else {
        x.div_ceil(a) * a
    }
}

/// One section header of the stub.
#[derive(Clone, Debug)]
pub struct StubSection {
    pub name: String,
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub raw_size: u32,
    pub raw_offset: u32,
    /// File offset of the header.
    header: usize,
}

/// A systemd stub, read whole (it is small) and parsed.
pub struct Stub {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub version: StubVersion,
    pub sections: Vec<StubSection>,
    coff: usize,
    opt: usize,
    table_end: usize,
    size_of_headers: u32,
    file_align: u32,
    section_align: u32,
    dll_characteristics: u16,
    /// Where the stub's data ends (its symbol table dropped, if it ended the file).
    data_end: usize,
    strip_symbols: bool,
}

impl Stub {
    pub fn load(path: &Path) -> Result<Stub> {
        let bytes = read_part(path)?;
        Stub::parse(bytes, path)
    }

    /// Parse a stub image held in memory. Never panics on malformed input.
    pub fn parse(bytes: Vec<u8>, path: &Path) -> Result<Stub> {
        let bad = |m: String| Error::input(path, m);
        if bytes.get(..2) != Some(b"MZ") {
            return Err(bad("not a PE image: no MZ signature".into()));
        }
        let pe = le32(&bytes, 0x3c).unwrap_or(0) as usize;
        if bytes.get(pe..pe.saturating_add(4)) != Some(b"PE\0\0") {
            return Err(bad(format!("not a PE image: no PE signature at {pe:#x}")));
        }
        let coff = pe + 4;
        let trunc = || bad("truncated PE headers".into());
        let nsect = le16(&bytes, coff + 2).ok_or_else(trunc)? as usize;
        let sym_ptr = le32(&bytes, coff + 8).ok_or_else(trunc)? as u64;
        let nsym = le32(&bytes, coff + 12).ok_or_else(trunc)? as u64;
        let opt_size = le16(&bytes, coff + 16).ok_or_else(trunc)? as usize;
        let opt = coff + 20;
        let magic = le16(&bytes, opt).ok_or_else(trunc)?;
        let dd = match magic {
            0x20b => opt + 112,
            0x10b => opt + 96,
            m => return Err(bad(format!("unsupported optional header magic {m:#06x}"))),
        };
        if dd > opt + opt_size {
            return Err(trunc());
        }
        let section_align = le32(&bytes, opt + 32).ok_or_else(trunc)?;
        let file_align = le32(&bytes, opt + 36).ok_or_else(trunc)?;
        let size_of_headers = le32(&bytes, opt + 60).ok_or_else(trunc)?;
        let dll_characteristics = le16(&bytes, opt + 70).ok_or_else(trunc)?;
        let ndirs = le32(&bytes, dd - 4).ok_or_else(trunc)? as usize;
        if ndirs > 4 && le32(&bytes, dd + 4 * 8 + 4).ok_or_else(trunc)? != 0 {
            return Err(bad(
                "the stub is signed; sign the UKI, not the stub (pe unsign it first)".into(),
            ));
        }
        if !file_align.is_power_of_two() || !(512..=65536).contains(&file_align) {
            return Err(bad(format!(
                "FileAlignment {file_align:#x} is not supported"
            )));
        }
        if !section_align.is_power_of_two() || section_align < file_align {
            return Err(bad(format!(
                "SectionAlignment {section_align:#x} is not supported"
            )));
        }
        let table = opt + opt_size;
        let table_end = table + nsect * SECTION_HEADER;
        if table_end > size_of_headers as usize || size_of_headers as usize > bytes.len() {
            return Err(bad("section table extends past SizeOfHeaders".into()));
        }
        let mut sections = vec![];
        for i in 0..nsect {
            let h = table + i * SECTION_HEADER;
            let raw_name = &bytes[h..h + 8];
            let end = raw_name.iter().position(|&b| b == 0).unwrap_or(8);
            let name = String::from_utf8_lossy(&raw_name[..end]).into_owned();
            let s = StubSection {
                name,
                virtual_size: le32(&bytes, h + 8).ok_or_else(trunc)?,
                virtual_address: le32(&bytes, h + 12).ok_or_else(trunc)?,
                raw_size: le32(&bytes, h + 16).ok_or_else(trunc)?,
                raw_offset: le32(&bytes, h + 20).ok_or_else(trunc)?,
                header: h,
            };
            if s.raw_size > 0 {
                let end = u64::from(s.raw_offset) + u64::from(s.raw_size);
                if end > bytes.len() as u64 || s.raw_offset < size_of_headers {
                    return Err(bad(format!(
                        "section {} raw data lies outside the file",
                        s.name
                    )));
                }
                if s.raw_offset % file_align != 0 {
                    return Err(bad(format!(
                        "section {} raw data at {:#x} is not FileAlignment-aligned",
                        s.name, s.raw_offset
                    )));
                }
            }
            sections.push(s);
        }
        let sections_end = sections
            .iter()
            .map(|s| u64::from(s.raw_offset) + u64::from(s.raw_size))
            .max()
            .unwrap_or(u64::from(size_of_headers));
        // A symbol table (and its string table) that ends the file is dropped.
        let mut data_end = bytes.len();
        let mut strip_symbols = false;
        if sym_ptr != 0 {
            let syms_end = sym_ptr.saturating_add(18 * nsym);
            let strtab = le32(&bytes, syms_end as usize).map_or(0, u64::from);
            let end = syms_end.saturating_add(strtab);
            if end == bytes.len() as u64 && sym_ptr >= sections_end {
                data_end = sym_ptr as usize;
                strip_symbols = true;
            }
        }
        let version = {
            let s = sections
                .iter()
                .find(|s| s.name == ".sdmagic")
                .ok_or_else(|| bad("no .sdmagic section: not a systemd stub".into()))?;
            let start = s.raw_offset as usize;
            let len = s.virtual_size.min(s.raw_size) as usize;
            let data = bytes.get(start..start + len).unwrap_or_default();
            super::parse_sdmagic(data, path)?
        };
        Ok(Stub {
            path: path.to_path_buf(),
            bytes,
            version,
            sections,
            coff,
            opt,
            table_end,
            size_of_headers,
            file_align,
            section_align,
            dll_characteristics,
            data_end,
            strip_symbols,
        })
    }
}

/// What a new section holds.
pub enum Content {
    Bytes(Vec<u8>),
    /// Large files, streamed; several are concatenated, each padded to 4
    /// bytes (ukify's `join_initrds`).
    Files(Vec<(PathBuf, u64)>),
}

impl Content {
    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Files(f) if f.len() == 1 => f[0].1,
            Content::Files(f) => f.iter().map(|(_, n)| round_up(*n, 4)).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stream the content through `f`, reading each file once.
    pub fn stream(&self, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let mut r = ContentReader::new(self);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = r.fill(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            f(buf.get(..n).unwrap_or_default())?;
        }
    }
}

/// Size of the chunks inputs are read in.
const CHUNK: usize = 256 << 10;

/// Reads a [`Content`] front to back into buffers the caller gives, each
/// file once; the padding after an initrd comes as a short chunk of its own.
pub struct ContentReader<'a> {
    content: &'a Content,
    /// Bytes: the offset reached. Files: the next file to open.
    next: usize,
    file: Option<OpenPart<'a>>,
    /// Zeros owed before the next file.
    pad: usize,
}

struct OpenPart<'a> {
    path: &'a Path,
    file: File,
    len: u64,
    done: u64,
}

impl<'a> ContentReader<'a> {
    pub fn new(content: &'a Content) -> ContentReader<'a> {
        ContentReader {
            content,
            next: 0,
            file: None,
            pad: 0,
        }
    }

    /// Read the next bytes into `buf`: how many, 0 at the end.
    pub fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let files = match self.content {
            Content::Bytes(b) => {
                let rest = b.get(self.next..).unwrap_or_default();
                let n = rest.len().min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                self.next += n;
                return Ok(n);
            }
            Content::Files(files) => files,
        };
        loop {
            if self.pad > 0 {
                let n = self.pad.min(buf.len());
                buf[..n].fill(0);
                self.pad -= n;
                return Ok(n);
            }
            if let Some(o) = &mut self.file {
                let n = o.file.read(buf).at(o.path)?;
                let done = o.done + n as u64;
                if done > o.len || (n == 0 && done != o.len) {
                    return Err(Error::input(
                        o.path,
                        format!(
                            "file changed while it was read ({} bytes expected, {done} read)",
                            o.len
                        ),
                    ));
                }
                if n > 0 {
                    o.done = done;
                    return Ok(n);
                }
                if files.len() > 1 {
                    self.pad = (round_up(o.len, 4) - o.len) as usize;
                }
                self.file = None;
                continue;
            }
            let Some((path, len)) = files.get(self.next) else {
                return Ok(0);
            };
            self.next += 1;
            let (file, now) = open_stream(path)?;
            if now != *len {
                return Err(Error::input(path, "file changed while the UKI was built"));
            }
            self.file = Some(OpenPart {
                path,
                file,
                len: *len,
                done: 0,
            });
        }
    }
}

/// One section to add.
pub struct Part {
    pub name: &'static str,
    pub content: Content,
}

/// The parts of a UKI, as given on the command line.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub linux: Option<PathBuf>,
    pub initrds: Vec<PathBuf>,
    pub cmdline: Option<Vec<u8>>,
    pub os_release: Option<PathBuf>,
    pub uname: Option<String>,
    pub splash: Option<PathBuf>,
    pub dtb: Option<PathBuf>,
    /// A PEM public key for `.pcrpkey` (measure only; build takes it from the PCR key).
    pub pcrpkey: Option<PathBuf>,
    pub sbat: Option<PathBuf>,
    /// `.ucode`: microcode the stub (256 on) hands to the kernel before the initrds.
    pub microcode: Option<PathBuf>,
}

impl Inputs {
    /// The new sections in `layout`'s order (`.pcrsig` comes later).
    /// `pcrpkey` overrides `self.pcrpkey`.
    pub fn parts(&self, pcrpkey: Option<Vec<u8>>, layout: &[&str]) -> Result<Vec<Part>> {
        let mut v = vec![];
        let file = |p: &Option<PathBuf>| -> Result<Option<Content>> {
            p.as_deref()
                .map(|p| read_part(p).map(Content::Bytes))
                .transpose()
        };
        let mut add = |name, c: Option<Content>| {
            if let Some(c) = c {
                v.push(Part { name, content: c });
            }
        };
        add(".osrel", file(&self.os_release)?);
        add(".cmdline", self.cmdline.clone().map(Content::Bytes));
        add(".dtb", file(&self.dtb)?);
        add(
            ".uname",
            self.uname.clone().map(|s| Content::Bytes(s.into_bytes())),
        );
        add(".splash", file(&self.splash)?);
        let pk = match pcrpkey {
            Some(b) => Some(b),
            None => match &self.pcrpkey {
                Some(p) => {
                    let b = fsutil::read_input(p, fsutil::InputKind::Certificate)?;
                    super::public_key_from_pem(&b).map_err(|m| Error::input(p, m))?;
                    Some(b)
                }
                None => None,
            },
        };
        add(".pcrpkey", pk.map(Content::Bytes));
        if !self.initrds.is_empty() {
            let mut files = vec![];
            for p in &self.initrds {
                let (_, len) = open_stream(p)?;
                files.push((p.clone(), len));
            }
            add(".initrd", Some(Content::Files(files)));
        }
        if let Some(p) = &self.linux {
            let (_, len) = open_stream(p)?;
            add(".linux", Some(Content::Files(vec![(p.clone(), len)])));
        }
        if let Some(p) = &self.microcode {
            let (_, len) = open_stream(p)?;
            add(".ucode", Some(Content::Files(vec![(p.clone(), len)])));
        }
        v.sort_by_key(|p| layout.iter().position(|n| *n == p.name));
        Ok(v)
    }

    /// What `uki build` takes from the kernel when it is a PE image: its
    /// `.sbat` and DllCharacteristics. None when it is not one (ukify then
    /// goes on without them, and so does this).
    fn kernel_pe(&self) -> Result<Option<KernelPe>> {
        let Some(p) = &self.linux else {
            return Ok(None);
        };
        let Ok(k) = Uki::open(p) else {
            return Ok(None);
        };
        let sbat = match k.section(".sbat") {
            Some(s) => Some(k.read_small(s)?),
            None => None,
        };
        Ok(Some(KernelPe {
            sbat,
            nx_compat: k.dll_characteristics & IMAGE_DLLCHARACTERISTICS_NX_COMPAT != 0,
        }))
    }
}

struct KernelPe {
    sbat: Option<Vec<u8>>,
    nx_compat: bool,
}

/// How the stub's own sections and headers change in the UKI, beyond the
/// new sections.
pub struct StubEdits {
    /// The new `.sbat`, or None to keep the stub's.
    pub sbat: Option<Vec<u8>>,
    /// Clear NX_COMPAT: the stub claims it but the kernel does not, and the
    /// image must not promise what its kernel cannot keep (ukify 257 and 262).
    pub clear_nx: bool,
}

impl StubEdits {
    pub fn new(stub: &Stub, rules: &StubRules, inputs: &Inputs) -> Result<StubEdits> {
        let kernel = inputs.kernel_pe()?;
        let user = match &inputs.sbat {
            Some(p) => Some((read_part(p)?, p.as_path())),
            None => None,
        };
        let sbat = if rules.sbat == SbatStyle::Stub {
            match user {
                Some(u) => Some(merge_sbat(stub, None, Some(u), SbatStyle::Stub)?),
                None => None,
            }
        } else {
            // The stub measures .sbat: write it as ukify does (stub, kernel,
            // then --sbat or ukify's default), so that ukify's UKI and ours
            // measure the same.
            let kernel_sbat = kernel.as_ref().and_then(|k| k.sbat.as_deref());
            Some(merge_sbat(stub, kernel_sbat, user, rules.sbat)?)
        };
        let clear_nx = stub.dll_characteristics & IMAGE_DLLCHARACTERISTICS_NX_COMPAT != 0
            && kernel.is_some_and(|k| !k.nx_compat);
        Ok(StubEdits { sbat, clear_nx })
    }

    /// The content (VirtualSize bytes) of the stub's section `s` in the UKI.
    pub fn section_content(&self, stub: &Stub, s: &StubSection) -> Vec<u8> {
        if s.name == ".sbat" {
            if let Some(new) = &self.sbat {
                return new.clone();
            }
        }
        let start = s.raw_offset as usize;
        let raw = s.raw_size.min(s.virtual_size) as usize;
        let mut v = stub
            .bytes
            .get(start..start + raw)
            .unwrap_or_default()
            .to_vec();
        v.resize(s.virtual_size as usize, 0);
        v
    }
}

/// The digests of the stub's own sections that `rules` measures (`.sbat`
/// from 254), as they will be in the UKI.
pub fn stub_digests(
    stub: &Stub,
    rules: &StubRules,
    edits: &StubEdits,
    banks: &[Bank],
) -> SectionDigests {
    let mut out = vec![];
    for s in &stub.sections {
        let Some(role) = rules.role(&s.name) else {
            continue;
        };
        let content = edits.section_content(stub, s);
        if content.is_empty() {
            continue;
        }
        let mut h = MultiHasher::new(banks);
        h.update(&content);
        out.push((role.to_string(), h.finish()));
    }
    out
}

/// The PCR policy key and how to sign.
pub struct PcrSigning<'a> {
    pub key: &'a dyn Signer,
    pub banks: Vec<Bank>,
    pub phases: Vec<String>,
}

pub struct BuildOptions<'a> {
    pub inputs: Inputs,
    pub stub: PathBuf,
    pub output: PathBuf,
    pub identity: &'a Identity,
    pub pcr: Option<PcrSigning<'a>>,
    /// Banks/phases of the predictions reported when there is no PCR key.
    pub banks: Vec<Bank>,
    pub phases: Vec<String>,
    pub signing_time: Option<OffsetDateTime>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SectionReport {
    pub name: String,
    pub virtual_address: u32,
    pub virtual_size: u32,
    pub raw_offset: u32,
    pub raw_size: u32,
    pub measured: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct BuildReport {
    pub output: PathBuf,
    pub stub: PathBuf,
    pub stub_version: StubVersion,
    pub sections: Vec<SectionReport>,
    /// PCR 11 predictions per bank and phase.
    pub pcr: Predictions,
    /// `pkfp` of the PCR key, when the policy was signed.
    pub pcr_key_fingerprint: Option<String>,
    /// Authenticode SHA-256 that was signed (hex).
    pub digest: String,
    /// `.uname`, as given or as found in the kernel.
    pub uname: Option<String>,
}

/// A new section's header fields.
struct Placed {
    name: &'static str,
    va: u32,
    vs: u32,
    raw_offset: u32,
    raw_size: u32,
    flags: u32,
}

/// Build, measure, sign. Nothing is visible at `output` until the signed
/// image is complete and durable.
pub fn build(o: &BuildOptions<'_>) -> Result<BuildReport> {
    let stub = Stub::load(&o.stub)?;
    let rules = rules_for(&stub.version, &o.stub)?;
    if let Some(why) = o
        .pcr
        .as_ref()
        .and_then(|p| rules.check_policy_banks(&p.banks, &stub.version))
    {
        return Err(Error::input(&o.stub, why));
    }
    let (pcrpkey, banks, phases) = match &o.pcr {
        Some(p) => {
            let spki = crate::x509::spki_der(p.key);
            let pem = crate::codec::pem_encode("PUBLIC KEY", &spki).into_bytes();
            (Some(pem), p.banks.clone(), p.phases.clone())
        }
        None => (None, o.banks.clone(), o.phases.clone()),
    };
    if o.pcr.is_some() && o.inputs.pcrpkey.is_some() {
        return Err(Error::Usage(
            "--pcrpkey is taken from the PCR key when the policy is signed".into(),
        ));
    }
    // The policy's length is fixed by the key, banks and phases: `.pcrsig`
    // is placed, and the headers final, before anything is hashed.
    let pcrsig_len = match &o.pcr {
        Some(p) => Some(pcr::pcrsig_len(&p.banks, &p.phases, p.key)?),
        None => None,
    };
    // ukify takes `.uname` from the kernel when none is given; so does this,
    // so that the two build the same UKI from the same command line.
    let mut inputs = o.inputs.clone();
    if inputs.uname.is_none() {
        if let Some(k) = &inputs.linux {
            inputs.uname = kernel_uname(k)?;
        }
    }
    let mut parts = inputs.parts(pcrpkey, rules.layout)?;
    parts.retain(|p| !p.content.is_empty());
    if !parts.iter().any(|p| p.name == ".linux") {
        return Err(Error::Usage("--linux is needed".into()));
    }
    // Microcode on a stub that does not know `.ucode` (before 256) would be
    // carried along and never loaded. (`.uname` on 252-253 is only not
    // measured; the kernel does not need it.)
    if let Some(p) = parts
        .iter()
        .find(|p| p.name == ".ucode" && !rules.measured.contains(&p.name))
    {
        return Err(Error::Usage(format!(
            "systemd-stub {} does not know {} sections: build on a newer stub",
            stub.version.version, p.name
        )));
    }
    rules.check_names(
        stub.sections.iter().map(|s| s.name.as_str()),
        &stub.version,
        &o.stub,
    )?;
    let mut bytes = stub.bytes.clone();
    // The stub's own bytes as they will be in the UKI: its `.sbat` (and
    // that section's VirtualSize) rewritten before the headers are made.
    let edits = StubEdits::new(&stub, rules, &inputs)?;
    if let (Some(new), Some(s)) = (
        &edits.sbat,
        stub.sections.iter().find(|s| s.name == ".sbat"),
    ) {
        let start = s.raw_offset as usize;
        bytes[start..start + s.raw_size as usize].fill(0);
        bytes[start..start + new.len()].copy_from_slice(new);
        put32(&mut bytes, s.header + 8, new.len() as u32);
    }

    // Layout.
    let n_new = parts.len() + usize::from(pcrsig_len.is_some());
    let new_table_end = stub.table_end + n_new * SECTION_HEADER;
    let first_raw = stub
        .sections
        .iter()
        .filter(|s| s.raw_size > 0)
        .map(|s| s.raw_offset as usize)
        .min()
        .unwrap_or(stub.size_of_headers as usize);
    let soh = round_up(u64::from(stub.size_of_headers), u64::from(stub.file_align)) as usize;
    if soh > first_raw {
        return Err(Error::input(
            &o.stub,
            "SizeOfHeaders is not FileAlignment-aligned and the first section follows it at once",
        ));
    }
    if new_table_end > soh {
        return Err(Error::input(
            &o.stub,
            format!(
                "the stub's headers have room for {} more section headers, {n_new} are needed",
                (soh - stub.table_end) / SECTION_HEADER
            ),
        ));
    }
    let fa = u64::from(stub.file_align);
    let sa = u64::from(stub.section_align.max(MIN_SECTION_ALIGN));
    let mut next_va = stub
        .sections
        .iter()
        .map(|s| u64::from(s.virtual_address) + u64::from(s.virtual_size))
        .max()
        .unwrap_or(0);
    let stub_end = stub.data_end.max(soh);
    let mut next_raw = stub_end as u64;
    let mut placed = vec![];
    let too_big = || Error::Usage("the UKI would exceed the 4 GiB a PE image can address".into());
    let mut place = |name: &'static str, len: u64| -> Result<Placed> {
        let va = round_up(next_va, sa);
        let raw = round_up(next_raw, fa);
        let raw_size = round_up(len, fa);
        next_va = va + len;
        next_raw = raw + raw_size;
        if next_raw > u64::from(u32::MAX) || next_va > u64::from(u32::MAX) {
            return Err(too_big());
        }
        Ok(Placed {
            name,
            va: va as u32,
            vs: len as u32,
            raw_offset: raw as u32,
            raw_size: raw_size as u32,
            flags: IMAGE_SCN_MEM_READ
                | if name == ".linux" {
                    IMAGE_SCN_CNT_CODE
                } else {
                    IMAGE_SCN_CNT_INITIALIZED_DATA
                },
        })
    };
    for p in &parts {
        placed.push(place(p.name, p.content.len())?);
    }
    if let Some(len) = pcrsig_len {
        placed.push(place(".pcrsig", len)?);
    }
    let hdr = headers(&stub, &bytes, soh, &placed, &edits);
    let image_end = placed.last().map_or(stub_end as u64, |p| {
        u64::from(p.raw_offset) + u64::from(p.raw_size)
    });

    // Write the image front to back. Every byte passes the Authenticode
    // hasher on its way out, and those of measured parts the PCR banks too
    // (on the thread that reads them). Another thread makes what is written
    // durable meanwhile, so that little is left for the fsync at the end.
    let out = &o.output;
    fsutil::remove_stale_temps(out);
    let mut staged = fsutil::Staged::create(out, fsutil::tag::SIGNING, fsutil::PUBLIC_MODE)?;
    let file = staged.file()?;
    let (pe, digests, pkfp) = fsutil::sync_behind(file, out, |sync| {
        let mut w = Emitter {
            f: file,
            out,
            pe: DigestBuilder::new(out, &hdr, image_end)?,
            sync,
        };
        w.emit(&hdr)?;
        w.emit(bytes.get(soh..stub.data_end).unwrap_or_default())?;
        let mut digests = vec![];
        for (p, at) in parts.iter().zip(&placed) {
            w.pad_to(u64::from(at.raw_offset))?;
            let is_measured = rules.measures(p.name);
            let d = stream_part(&p.content, if is_measured { &banks } else { &[] }, &mut w)?;
            if w.pos() - u64::from(at.raw_offset) != u64::from(at.vs) {
                return Err(Error::Usage(format!(
                    "section {}: input size changed while it was read",
                    p.name
                )));
            }
            if is_measured {
                digests.push((p.name.to_string(), d));
            }
        }
        // Measured sections of the stub itself (.sbat from 254), as edited.
        digests.extend(stub_digests(&stub, rules, &edits, &banks));
        let digests = canonical(rules.measured, digests, &o.stub)?;

        // The signed policy, last.
        let mut pkfp = None;
        if let (Some(p), Some(at)) = (&o.pcr, placed.last()) {
            let (_, json): (PcrSig, Vec<u8>) =
                pcr::sign_policies(&digests, &p.banks, &p.phases, p.key)?;
            if json.len() as u64 != u64::from(at.vs) {
                return Err(Error::Internal(format!(
                    ".pcrsig is {} bytes, {} were laid out",
                    json.len(),
                    at.vs
                )));
            }
            w.pad_to(u64::from(at.raw_offset))?;
            w.emit(&json)?;
            pkfp = Some(pcr::key_fingerprint(p.key.public_key()));
        }
        w.pad_to(image_end)?;
        Ok((w.pe, digests, pkfp))
    })?;
    let digest = pe.finish(&File::open(staged.tmp()).at(out)?)?;
    staged.close();
    let predictions = pcr::predict(&digests, &banks, &phases);

    // Authenticode, as `pe sign` makes it, appended in place.
    let p7 = authenticode::sign_digest(
        &digest.sha256,
        &SignOptions {
            signer: o.identity.signer.as_ref(),
            cert: &o.identity.cert,
            chain: &o.identity.chain,
            signing_time: o.signing_time,
        },
    )?;
    PeImage::open(staged.tmp())?.write_signed_in_place(&digest, &[p7])?;
    staged.sync()?;
    fsutil::publish(vec![staged])?;

    let measured_names: Vec<&str> = digests.iter().map(|(n, _)| n.as_str()).collect();
    let mut sections: Vec<SectionReport> = stub
        .sections
        .iter()
        .map(|s| SectionReport {
            name: s.name.clone(),
            virtual_address: s.virtual_address,
            virtual_size: le32(&bytes, s.header + 8).unwrap_or(s.virtual_size),
            raw_offset: s.raw_offset,
            raw_size: s.raw_size,
            measured: measured_names.contains(&s.name.as_str()),
        })
        .collect();
    sections.extend(placed.iter().map(|p| SectionReport {
        name: p.name.to_string(),
        virtual_address: p.va,
        virtual_size: p.vs,
        raw_offset: p.raw_offset,
        raw_size: p.raw_size,
        measured: measured_names.contains(&p.name),
    }));
    Ok(BuildReport {
        output: out.clone(),
        stub: o.stub.clone(),
        stub_version: stub.version,
        sections,
        pcr: predictions,
        pcr_key_fingerprint: pkfp,
        digest: digest.hex(),
        uname: inputs.uname,
    })
}

/// The kernel release a kernel image names, found as ukify finds it: in an
/// x86 bzImage, the version string the real-mode header points to
/// (Documentation/arch/x86/boot.rst, `kernel_version`); in other images,
/// the first `Linux version N.… (` banner. None when there is neither
/// (ukify then adds no `.uname` either).
pub fn kernel_uname(kernel: &Path) -> Result<Option<String>> {
    let (file, len) = open_stream(kernel)?;
    let mut head = [0u8; 0x210];
    if len >= head.len() as u64 {
        file.read_exact_at(&mut head, 0).at(kernel)?;
        if &head[0x202..0x206] == b"HdrS" {
            let off = u64::from(u16::from_le_bytes([head[0x20e], head[0x20f]])) + 0x200;
            let mut text = vec![0u8; 128.min(len.saturating_sub(off)) as usize];
            file.read_exact_at(&mut text, off).at(kernel)?;
            let text = text.split(|&b| b == 0).next().unwrap_or_default();
            if let Some(r) = bzimage_release(text) {
                return Ok(Some(r));
            }
        }
    }
    banner_release(&file, len, kernel)
}

/// `6.1.0-9-amd64` of `6.1.0-9-amd64 (debian-kernel@lists.debian.org) #1 SMP …`:
/// the release, a space, a parenthesised builder without spaces, a space, `#`.
fn bzimage_release(text: &[u8]) -> Option<String> {
    let sp = text.iter().position(|&b| b == b' ')?;
    let (release, rest) = text.split_at(sp);
    let ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._+-".contains(b);
    if release.is_empty() || !release.iter().all(ok) {
        return None;
    }
    let builder = rest.strip_prefix(b" (")?;
    let close = builder.iter().position(|&b| b == b')' || b == b' ')?;
    if close == 0 || builder[close] != b')' || !builder[close + 1..].starts_with(b" #") {
        return None;
    }
    String::from_utf8(release.to_vec()).ok()
}

/// The release of the first `Linux version D.S (` in the file, where S runs
/// to the next whitespace; read in blocks that overlap by a banner's length.
fn banner_release(file: &File, len: u64, path: &Path) -> Result<Option<String>> {
    const TAG: &[u8] = b"Linux version ";
    const MAX: usize = 256;
    let mut buf = vec![0u8; (1 << 20) + MAX];
    let mut pos = 0u64;
    while pos < len {
        let n = (buf.len() as u64).min(len - pos) as usize;
        file.read_exact_at(&mut buf[..n], pos).at(path)?;
        let block = &buf[..n];
        let mut from = 0;
        while let Some(i) = find(&block[from..], TAG) {
            let at = from + i + TAG.len();
            let tail = &block[at..];
            let ws = tail.iter().position(|b| b" \t\n\r\x0b\x0c".contains(b));
            if tail.len() >= 2 && tail[0].is_ascii_digit() && tail[1] == b'.' {
                if let Some(ws) = ws.filter(|&w| w >= 3) {
                    if tail[ws..].starts_with(b" (") {
                        return Ok(String::from_utf8(tail[..ws].to_vec()).ok());
                    }
                }
            }
            from = at;
        }
        if pos + n as u64 >= len {
            break;
        }
        pos += (n - MAX) as u64;
    }
    Ok(None)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The UKI's headers, `soh` bytes: the stub's (`bytes`, its `.sbat` already
/// rewritten), with the new sections in the table and the counts and sizes
/// that follow from them, and NX_COMPAT cleared if `edits` says so.
/// `CheckSum` is zero until the image is signed.
fn headers(stub: &Stub, bytes: &[u8], soh: usize, placed: &[Placed], edits: &StubEdits) -> Vec<u8> {
    let mut hdr = bytes.get(..soh).unwrap_or(bytes).to_vec();
    hdr.resize(soh, 0);
    put32(&mut hdr, stub.opt + 60, soh as u32);
    let nsect = stub.sections.len() + placed.len();
    put16(&mut hdr, stub.coff + 2, nsect as u16);
    if stub.strip_symbols {
        put32(&mut hdr, stub.coff + 8, 0);
        put32(&mut hdr, stub.coff + 12, 0);
        let ch = le16(&hdr, stub.coff + 18).unwrap_or(0) | IMAGE_FILE_LOCAL_SYMS_STRIPPED;
        put16(&mut hdr, stub.coff + 18, ch);
    }
    let mut init_data = le32(&hdr, stub.opt + 8).unwrap_or(0);
    for (i, p) in placed.iter().enumerate() {
        let h = stub.table_end + i * SECTION_HEADER;
        let mut name = [0u8; 8];
        name[..p.name.len()].copy_from_slice(p.name.as_bytes());
        hdr[h..h + 8].copy_from_slice(&name);
        put32(&mut hdr, h + 8, p.vs);
        put32(&mut hdr, h + 12, p.va);
        put32(&mut hdr, h + 16, p.raw_size);
        put32(&mut hdr, h + 20, p.raw_offset);
        put32(&mut hdr, h + 36, p.flags);
        init_data = init_data.wrapping_add(p.vs);
    }
    put32(&mut hdr, stub.opt + 8, init_data);
    let last_end = stub
        .sections
        .iter()
        .map(|s| u64::from(s.virtual_address) + u64::from(s.virtual_size))
        .chain(placed.iter().map(|p| u64::from(p.va) + u64::from(p.vs)))
        .max()
        .unwrap_or(0);
    let size_of_image = round_up(last_end, u64::from(stub.section_align));
    put32(&mut hdr, stub.opt + 56, size_of_image as u32);
    put32(&mut hdr, stub.opt + 64, 0);
    if edits.clear_nx {
        let dc = le16(&hdr, stub.opt + 70).unwrap_or(0) & !IMAGE_DLLCHARACTERISTICS_NX_COMPAT;
        put16(&mut hdr, stub.opt + 70, dc);
    }
    hdr
}

/// Chunks in flight between the thread reading a part and the one writing it.
const BUFFERS: usize = 4;

/// Writes the image front to back, each byte hashed on its way out and
/// counted for the sync thread; errors name the output.
struct Emitter<'a> {
    f: &'a File,
    out: &'a Path,
    pe: DigestBuilder,
    sync: &'a mut fsutil::SyncBehind,
}

impl Emitter<'_> {
    fn pos(&self) -> u64 {
        self.pe.position()
    }

    fn emit(&mut self, data: &[u8]) -> Result<()> {
        self.f.write_all_at(data, self.pos()).at(self.out)?;
        self.pe.update(data);
        self.sync.wrote(data.len() as u64);
        Ok(())
    }

    /// Zeros up to `at` (FileAlignment padding).
    fn pad_to(&mut self, at: u64) -> Result<()> {
        const ZEROS: [u8; 4096] = [0; 4096];
        while self.pos() < at {
            let n = (at - self.pos()).min(ZEROS.len() as u64) as usize;
            self.emit(&ZEROS[..n])?;
        }
        Ok(())
    }
}

/// Copy `content` to `w`, and return its digest in each of `banks`. A
/// second thread reads it and computes the banks' digests while this one
/// writes it and computes the Authenticode digest: on two cores, each byte
/// costs one hash of time, not two. [`BUFFERS`] chunks bound the memory.
fn stream_part(content: &Content, banks: &[Bank], w: &mut Emitter) -> Result<Vec<(Bank, Vec<u8>)>> {
    std::thread::scope(|s| {
        let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(BUFFERS);
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        let reader = s.spawn(move || {
            let mut h = MultiHasher::new(banks);
            let mut r = ContentReader::new(content);
            let mut made = 0;
            loop {
                let mut buf = match free_rx.try_recv() {
                    Ok(b) => b,
                    Err(_) if made < BUFFERS => {
                        made += 1;
                        vec![0u8; CHUNK]
                    }
                    // The writer stopped (an error it reports).
                    Err(_) => match free_rx.recv() {
                        Ok(b) => b,
                        Err(_) => break,
                    },
                };
                let n = r.fill(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(buf.get(..n).unwrap_or_default());
                if full_tx.send((buf, n)).is_err() {
                    break;
                }
            }
            Ok(h.finish())
        });
        let mut written = Ok(());
        for (buf, n) in &full_rx {
            written = w.emit(buf.get(..n).unwrap_or_default());
            if written.is_err() {
                break;
            }
            let _ = free_tx.send(buf);
        }
        // Unblocks the reader if this side stopped first.
        drop(full_rx);
        drop(free_tx);
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(Error::Internal("reader thread panicked".into())));
        written?;
        read
    })
}

/// The SBAT entries (lines) after the `sbat,` header of an SBAT text; None
/// when it does not start with one.
fn sbat_entries(text: &str) -> Option<Vec<&str>> {
    let mut lines = text.lines().filter(|l| !l.is_empty());
    lines.next().filter(|l| l.starts_with("sbat,"))?;
    Some(lines.collect())
}

/// The `.sbat` of the UKI: the stub's entries, then the kernel's (`kernel`:
/// its `.sbat`, ignored when it is not an SBAT, as ukify does), then those
/// of `user` (`--sbat`; its `sbat,` line, if any, dropped). `style`
/// [`SbatStyle::UkifyNul`] or [`SbatStyle::Ukify`]: as ukify 254-257 or 262
/// write it, which the stub then measures: one canonical `sbat,` line,
/// ukify's `uki` entry when no `--sbat` is given, and (254-257) a NUL after
/// the last newline. [`SbatStyle::Stub`]: the stub's own text extended, as
/// pki-signer always did for the stubs that do not measure `.sbat`. The
/// result must fit the stub's section.
fn merge_sbat(
    stub: &Stub,
    kernel: Option<&[u8]>,
    user: Option<(Vec<u8>, &Path)>,
    style: SbatStyle,
) -> Result<Vec<u8>> {
    let ukify = style != SbatStyle::Stub;
    let s = stub
        .sections
        .iter()
        .find(|s| s.name == ".sbat")
        .ok_or_else(|| Error::input(&stub.path, "the stub has no .sbat section to extend"))?;
    let text = |b: &[u8]| -> std::result::Result<String, std::str::Utf8Error> {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        std::str::from_utf8(&b[..end]).map(str::to_string)
    };
    let start = s.raw_offset as usize;
    let own = stub
        .bytes
        .get(start..start + s.virtual_size.min(s.raw_size) as usize)
        .unwrap_or_default();
    let own = text(own).map_err(|_| Error::input(&stub.path, ".sbat is not text"))?;
    let own_entries = sbat_entries(&own)
        .ok_or_else(|| Error::input(&stub.path, ".sbat does not start with an sbat, line"))?;
    let header = if ukify {
        SBAT_HEADER
    } else {
        own.lines().find(|l| !l.is_empty()).unwrap_or(SBAT_HEADER)
    };
    let mut lines = vec![header.to_string()];
    lines.extend(own_entries.iter().map(|l| l.to_string()));
    if ukify {
        let k = kernel.and_then(|k| text(k).ok());
        if let Some(entries) = k.as_deref().and_then(sbat_entries) {
            lines.extend(entries.iter().map(|l| l.to_string()));
        }
    }
    let blame = match &user {
        Some((bytes, path)) => {
            let extra =
                std::str::from_utf8(bytes).map_err(|_| Error::input(path, "not UTF-8 text"))?;
            for l in extra.lines().filter(|l| !l.trim().is_empty()) {
                if l.starts_with("sbat,") {
                    continue;
                }
                if l.split(',').count() < 6 {
                    return Err(Error::input(
                        path,
                        format!("SBAT line '{}' has fewer than 6 fields", l.escape_debug()),
                    ));
                }
                lines.push(l.to_string());
            }
            path.to_path_buf()
        }
        None => {
            if ukify {
                lines.push(UKI_SBAT.to_string());
            }
            stub.path.clone()
        }
    };
    let mut out = lines.join("\n").into_bytes();
    out.push(b'\n');
    if style == SbatStyle::UkifyNul {
        out.push(0);
    }
    if out.len() > s.raw_size as usize {
        return Err(Error::input(
            &blame,
            format!(
                "merged SBAT is {} bytes; the stub's .sbat holds {}",
                out.len(),
                s.raw_size
            ),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        std::fs::write(&p, bytes).unwrap();
        (d, p)
    }

    fn bzimage(version: &[u8], len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        b[0x500..0x500 + version.len()].copy_from_slice(version);
        b
    }

    #[test]
    fn the_release_is_read_as_ukify_reads_it() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (
                b"6.1.0-9-amd64 (debian-kernel@lists.debian.org) #1 SMP",
                Some("6.1.0-9-amd64"),
            ),
            (b"6.6.1+git (oe-user@oe-host) #1 PREEMPT", Some("6.6.1+git")),
            // Not the header's shape: capitals, a space in the builder, no '#'.
            (b"6.1.0-Custom (a@b) #1", None),
            (b"6.1.0 (a b) #1", None),
            (b"6.1.0 (a@b) 1", None),
            (b" (a@b) #1", None),
            (b"", None),
        ];
        for (text, want) in cases {
            let (_d, p) = kernel(&bzimage(text, 0x1000));
            assert_eq!(kernel_uname(&p).unwrap().as_deref(), *want, "{text:?}");
        }
        // The pointer past the end, and a file shorter than the header.
        let mut b = bzimage(b"", 0x1000);
        b.truncate(0x400);
        b[0x20e..0x210].copy_from_slice(&0xffffu16.to_le_bytes());
        let (_d, p) = kernel(&b);
        assert_eq!(kernel_uname(&p).unwrap(), None);
        let (_d, p) = kernel(b"MZ");
        assert_eq!(kernel_uname(&p).unwrap(), None);
    }

    #[test]
    fn other_kernels_give_their_banner_even_across_read_blocks() {
        let banner = b"Linux version 6.12.0-rc1 (builder@host) (gcc 14) #1 SMP";
        for at in [0usize, 100, (1 << 20) - 20, (1 << 20) + 300, 3 << 20] {
            let mut b = vec![b'x'; at + banner.len() + 10];
            b[at..at + banner.len()].copy_from_slice(banner);
            // An earlier near-miss: no digit-dot after the tag.
            b[..14].copy_from_slice(b"Linux version ");
            let (_d, p) = kernel(&b);
            assert_eq!(
                kernel_uname(&p).unwrap().as_deref(),
                Some("6.12.0-rc1"),
                "at {at}"
            );
        }
        let (_d, p) = kernel(b"Linux version 6.1 was built");
        assert_eq!(kernel_uname(&p).unwrap(), None);
    }
}
