//! PE/COFF images: header parsing, the Authenticode digest, and the certificate table.
//!
//! Images can be hundreds of megabytes, so nothing here reads a whole image into
//! memory: headers are parsed from positioned reads, and the digest streams the
//! file through one reusable buffer, computing the Authenticode SHA-256 and the
//! PE checksum partial sum in the same pass.
//!
//! # Digest rules
//!
//! The digest follows the Authenticode specification as EDK2, shim, sbsign and
//! pesign implement it:
//!
//! 1. the headers up to `SizeOfHeaders`, leaving out the `CheckSum` field and the
//!    certificate-table data-directory entry;
//! 2. the raw data of every section with `SizeOfRawData != 0`, in
//!    `PointerToRawData` order;
//! 3. "the rest": the bytes from offset `SUM_OF_BYTES_HASHED` (`SizeOfHeaders`
//!    plus the raw sizes of step 2) up to the certificate table, or to the end of
//!    the file when there is none. For an image whose sections follow the headers
//!    without gaps this is simply the data after the last section. For an image
//!    with gaps it is what firmware computes (and differs from osslsigncode, which
//!    hashes the file linearly); such images are rare and need a second read of
//!    that range.
//!
//! # Padding
//!
//! The certificate table must start on an 8-byte boundary, so an image whose data
//! ends unaligned is padded with zeros before its table. Those zeros lie before
//! the table, so firmware hashes them: the digest to sign is the digest of the
//! padded image, exactly as sbsign and osslsigncode do. [`ImageDigest::sha256`]
//! is that padded digest, and [`PeImage::write_signed`] writes the same padding,
//! so the signed output re-opened has `sha256` equal to what was signed.
//! [`ImageDigest::sha256_unpadded`] is the digest of the file exactly as it is
//! (what `pesign --hash` prints and what firmware computes for an unsigned image,
//! e.g. to match a `db` hash entry); the two differ only for an unaligned image
//! without a certificate table.
//!
//! # Certificate table layout
//!
//! Each `WIN_CERTIFICATE` written has `dwLength = 8 + len(blob)` (padding not
//! counted, as sbsign writes it), revision 0x0200, type 0x0002, then zeros to the
//! next 8-byte boundary. The data directory holds the table's file offset and its
//! size including all padding. Readers walk entries by `ALIGN8(dwLength)`, as EDK2
//! does, so tables written by osslsigncode (whose `dwLength` includes the
//! padding) read back too.
//!
//! # Checksum
//!
//! The PE checksum is the 16-bit end-around-carry sum of the file's little-endian
//! words (the `CheckSum` field counted as zero, an odd final byte as a word with a
//! zero high byte) plus the file length. The digest pass sums the bytes before the
//! table with both the `CheckSum` field and the certificate directory entry
//! counted as zero; writing adds the new directory entry and table to that sum,
//! so the image is never read a second time.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::fsutil;

/// `wRevision` of the `WIN_CERTIFICATE` entries written.
pub const WIN_CERT_REVISION_2_0: u16 = 0x0200;
/// `wCertificateType` for a PKCS#7 SignedData (Authenticode) entry.
pub const WIN_CERT_TYPE_PKCS_SIGNED_DATA: u16 = 0x0002;

/// Size of the buffer the image is streamed through.
/// 64 KiB: the buffer stays in the CPU cache between pread and SHA-256; with
/// 1 MiB, copying out of the page cache missed it and pe verify took 1.36x
/// `openssl dgst -sha256` instead of 1.00x (scripts/bench.sh --only pe-verify).
const BUF_SIZE: usize = 64 << 10;
/// A certificate table larger than this is not read into memory.
const MAX_CERT_TABLE: u64 = 64 << 20;
/// Index of the certificate table in the data directories.
const CERT_DIR_INDEX: u64 = 4;
const SECTION_HEADER_SIZE: u64 = 40;
const COFF_HEADER_SIZE: u64 = 20;
const PE32_MAGIC: u16 = 0x10b;
const PE32PLUS_MAGIC: u16 = 0x20b;

/// One section header, as far as signing cares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SectionInfo {
    pub name: String,
    pub virtual_address: u32,
    pub virtual_size: u32,
    pub raw_offset: u32,
    pub raw_size: u32,
}

/// File offset and size of the certificate table (data directory 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CertTableInfo {
    pub offset: u64,
    pub size: u64,
}

/// The image layout `pe show` prints (sections, header fields, certificate table).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeInfo {
    /// `x86_64`, `aarch64`, ... or the hex machine code when unknown.
    pub machine: String,
    pub pe32plus: bool,
    pub sections: Vec<SectionInfo>,
    pub size_of_headers: u64,
    /// The CheckSum field as stored (not recomputed).
    pub checksum: u32,
    pub cert_table: Option<CertTableInfo>,
    pub file_size: u64,
}

/// One entry of the certificate table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WinCertificate {
    /// File offset of the entry's header.
    pub offset: u64,
    /// `dwLength` as stored (header included).
    pub length: u32,
    pub revision: u16,
    pub cert_type: u16,
    /// `bCertificate`. For [`WIN_CERT_TYPE_PKCS_SIGNED_DATA`] this is the PKCS#7
    /// DER; zero padding that a writer counted in `dwLength` after the DER
    /// element is dropped.
    pub data: Vec<u8>,
}

/// `[start, end)` file offsets.
pub type ByteRange = (u64, u64);

/// The result of [`PeImage::digest`]: the Authenticode digest plus the state
/// [`PeImage::write_signed`] needs to finish the checksum without re-reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageDigest {
    /// Authenticode SHA-256 of the image as it will be signed: zero-padded to an
    /// 8-byte boundary before the certificate table (see the module docs).
    pub sha256: [u8; 32],
    /// Authenticode SHA-256 of the file exactly as it is, without padding.
    /// Equal to `sha256` unless the image is unsigned and its end is unaligned.
    pub sha256_unpadded: [u8; 32],
    /// Offset where the image data ends (start of the old table, or EOF).
    data_end: u64,
    /// `data_end` rounded up to 8: where a new table starts.
    padded_end: u64,
    /// Checksum partial sum over `[0, data_end)`, CheckSum and cert dir as zero.
    checksum_sum: u64,
    stamp: Stamp,
}

impl ImageDigest {
    /// `sha256` in lower-case hex.
    pub fn hex(&self) -> String {
        crate::codec::hex(&self.sha256)
    }

    /// How many zero bytes signing appends to the image data before the table.
    pub fn padding(&self) -> u64 {
        self.padded_end - self.data_end
    }
}

/// Identity and version of the open file, to notice it changing under us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

/// A section with raw data, in file order.
#[derive(Clone, Copy, Debug)]
struct RawRange {
    start: u64,
    end: u64,
}

/// What the headers say about the file's layout: everything the digest and
/// a signed copy need.
#[derive(Clone, Debug)]
struct Layout {
    file_size: u64,
    machine: u16,
    pe32plus: bool,
    /// File offset of the CheckSum field (4 bytes).
    checksum_offset: u64,
    /// File offset of data directory 4 (8 bytes).
    cert_dir_offset: u64,
    size_of_headers: u64,
    checksum: u32,
    dll_characteristics: u16,
    size_of_image: u32,
    sections: Vec<SectionInfo>,
    /// Raw data of the sections with SizeOfRawData != 0, sorted by offset.
    raw: Vec<RawRange>,
    cert_table: Option<CertTableInfo>,
    /// Start of the certificate table, or the file size when there is none.
    data_end: u64,
}

/// An open, validated PE image.
#[derive(Debug)]
pub struct PeImage {
    path: PathBuf,
    file: File,
    stamp: Stamp,
    layout: Layout,
}

fn le16(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn le32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn align8(x: u64) -> Option<u64> {
    Some(x.checked_add(7)? & !7)
}

fn machine_name(m: u16) -> String {
    match m {
        0x8664 => "x86_64".into(),
        0xaa64 => "aarch64".into(),
        0x014c => "i386".into(),
        0x01c2 => "arm".into(),
        0x01c4 => "armv7".into(),
        0x5032 => "riscv32".into(),
        0x5064 => "riscv64".into(),
        0x5128 => "riscv128".into(),
        0x6232 => "loongarch32".into(),
        0x6264 => "loongarch64".into(),
        0x0200 => "ia64".into(),
        0x0ebc => "ebc".into(),
        _ => format!("{m:#06x}"),
    }
}

/// A section name for messages and `info`: up to the first NUL, non-printable
/// bytes escaped so a message stays on one line.
fn section_name(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let name = raw.get(..end).unwrap_or(raw);
    match std::str::from_utf8(name) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => s.to_string(),
        _ => name.escape_ascii().to_string(),
    }
}

/// The length of the DER element at the start of `data`, if it parses.
fn der_element_len(data: &[u8]) -> Option<usize> {
    let first = *data.get(1)?;
    let (header, len) = if first < 0x80 {
        (2usize, usize::from(first))
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = data.get(2..2 + n)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (2 + n, len)
    };
    header.checked_add(len)
}

/// Running PE checksum: a sum congruent, modulo 0xffff, to the sum of the
/// file's little-endian 16-bit words, and zero only if every byte added was.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ChecksumAcc {
    sum: u64,
}

impl ChecksumAcc {
    /// Add `data`, which sits at file offset `offset`.
    fn add(&mut self, offset: u64, data: &[u8]) {
        let mut data = data;
        let mut s = self.sum;
        if offset & 1 == 1 {
            if let Some((&b, rest)) = data.split_first() {
                s += u64::from(b) << 8;
                data = rest;
            }
        }
        // From here `data` starts at an even offset. A little-endian u32 read at
        // an even offset is lo + hi * 2^16, and 2^16 = 1 (mod 0xffff), so summing
        // u32s is summing words modulo 0xffff.
        let mut words = data.chunks_exact(4);
        let mut part = 0u64;
        for w in &mut words {
            part += u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        }
        for (i, &b) in words.remainder().iter().enumerate() {
            part += u64::from(b) << (8 * (i % 2));
        }
        // Folding by 2^32 = 1 (mod 0xffff) keeps the sum small and nonzero-ness intact.
        s = fold32(s) + fold32(part);
        self.sum = fold32(s);
    }

    /// The checksum of a file of `file_len` bytes whose bytes were all added.
    fn finish(&self, file_len: u64) -> u32 {
        let folded = if self.sum == 0 {
            0
        } else {
            // The end-around-carry fold of a nonzero sum lies in 1..=0xffff.
            (self.sum - 1) % 0xffff + 1
        };
        (folded as u32).wrapping_add(file_len as u32)
    }
}

fn fold32(x: u64) -> u64 {
    (x & 0xffff_ffff) + (x >> 32)
}

/// The Authenticode digest and checksum of an image computed from its bytes
/// as they pass, in file order: by [`PeImage::digest`] as it reads an image,
/// and by a writer as it writes one whose headers are final before its data
/// (`uki build`), so that the image is not read back to be signed.
pub struct DigestBuilder {
    path: PathBuf,
    checksum_offset: u64,
    cert_dir_offset: u64,
    /// Hashed ranges of the single pass, in file order and disjoint.
    regions: Vec<ByteRange>,
    next: usize,
    /// "The rest" of an image with gaps between its sections, hashed after
    /// the pass (see the module docs).
    reread: Option<ByteRange>,
    file_size: u64,
    data_end: u64,
    padded_end: u64,
    hasher: Sha256,
    sum: ChecksumAcc,
    pos: u64,
}

impl DigestBuilder {
    /// For an image being written: `headers` holds at least its first
    /// `SizeOfHeaders` bytes, final (the CheckSum field and the certificate
    /// directory entry do not count), and `len` is the length the image
    /// will have. The headers are validated as [`PeImage::open`] does.
    pub fn new(path: &Path, headers: &[u8], len: u64) -> Result<DigestBuilder> {
        let layout = Layout::parse(path, len, &|buf, off| {
            let src = usize::try_from(off)
                .ok()
                .and_then(|o| headers.get(o..o.checked_add(buf.len())?));
            match src {
                Some(src) => {
                    buf.copy_from_slice(src);
                    Ok(())
                }
                None => Err(Error::Internal(format!(
                    "{}: the headers given end before [{off:#x}..{:#x})",
                    path.display(),
                    off + buf.len() as u64
                ))),
            }
        })?;
        DigestBuilder::for_layout(&layout, path)
    }

    fn for_layout(l: &Layout, path: &Path) -> Result<DigestBuilder> {
        let data_end = l.data_end;
        let padded_end =
            align8(data_end).ok_or_else(|| Error::input(path, "image end overflows"))?;
        let (regions, reread) = l.hashed_ranges();
        Ok(DigestBuilder {
            path: path.to_path_buf(),
            checksum_offset: l.checksum_offset,
            cert_dir_offset: l.cert_dir_offset,
            regions,
            next: 0,
            reread,
            file_size: l.file_size,
            data_end,
            padded_end,
            hasher: Sha256::new(),
            sum: ChecksumAcc::default(),
            pos: 0,
        })
    }

    /// How many bytes have passed.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The image's next bytes. Bytes past the image data (an old
    /// certificate table) are ignored.
    pub fn update(&mut self, data: &[u8]) {
        let pos = self.pos;
        let keep = self.data_end.saturating_sub(pos).min(data.len() as u64) as usize;
        let chunk = data.get(..keep).unwrap_or_default();
        self.pos += data.len() as u64;
        let end = pos + chunk.len() as u64;
        while let Some(&(start, stop)) = self.regions.get(self.next) {
            if start >= end {
                break;
            }
            let s = start.max(pos);
            let e = stop.min(end);
            if s < e {
                if let Some(part) = chunk.get((s - pos) as usize..(e - pos) as usize) {
                    self.hasher.update(part);
                }
            }
            if stop > end {
                break;
            }
            self.next += 1;
        }
        // The checksum counts the CheckSum field and the certificate
        // directory entry as zero: their bytes are left out of the sum.
        let mut at = pos;
        for (skip, len) in [(self.checksum_offset, 4), (self.cert_dir_offset, 8)] {
            let s = skip.clamp(at, end);
            if let Some(part) = chunk.get((at - pos) as usize..(s - pos) as usize) {
                self.sum.add(at, part);
            }
            at = (skip + len).clamp(at, end);
        }
        if let Some(part) = chunk.get((at - pos) as usize..) {
            self.sum.add(at, part);
        }
    }

    /// The digest of the image now in `file`, whose bytes up to the image
    /// data's end all passed through [`DigestBuilder::update`]. For an image
    /// with gaps between its sections, "the rest" (as long as the gaps) is
    /// read back from `file`.
    pub fn finish(mut self, file: &File) -> Result<ImageDigest> {
        let bad = |msg: String| Error::input(&self.path, msg);
        if self.pos < self.data_end {
            return Err(bad(format!(
                "image data ends at {:#x}, only {:#x} bytes were hashed",
                self.data_end, self.pos
            )));
        }
        let stamp = Stamp::of(&file.metadata().at(&self.path)?);
        if stamp.len != self.file_size {
            return Err(bad(format!(
                "file is {:#x} bytes, its headers were read for {:#x}",
                stamp.len, self.file_size
            )));
        }
        if let Some((mut pos, stop)) = self.reread {
            let mut buf = vec![0u8; BUF_SIZE.min((stop - pos).max(1) as usize)];
            while pos < stop {
                let n = (buf.len() as u64).min(stop - pos) as usize;
                let chunk = buf.get_mut(..n).unwrap_or_default();
                read_exact_at(file, &self.path, chunk, pos)?;
                self.hasher.update(&*chunk);
                pos += n as u64;
            }
        }
        let sha256_unpadded: [u8; 32] = self.hasher.clone().finalize().into();
        let zeros = [0u8; 8];
        self.hasher.update(
            zeros
                .get(..(self.padded_end - self.data_end) as usize)
                .unwrap_or_default(),
        );
        Ok(ImageDigest {
            sha256: self.hasher.finalize().into(),
            sha256_unpadded,
            data_end: self.data_end,
            padded_end: self.padded_end,
            checksum_sum: self.sum.sum,
            stamp,
        })
    }
}

/// What writing a signed image puts where.
struct SignedLayout {
    /// Bytes of the original image kept: `[0, keep)`.
    keep: u64,
    /// Where the table goes (after padding to 8 when there is a table).
    table_offset: u64,
    /// The new certificate table (empty: no table).
    table: Vec<u8>,
    /// The new data-directory entry 4.
    cert_dir: [u8; 8],
    checksum: u32,
}

impl Layout {
    /// The ranges the Authenticode digest covers, in file order and disjoint,
    /// and "the rest" when it must be read again. The rest starts at
    /// SUM_OF_BYTES_HASHED: without gaps between sections that is the end of
    /// the last one and it joins the ranges (one pass); with gaps it lies
    /// inside data already hashed and is read again afterwards.
    fn hashed_ranges(&self) -> (Vec<ByteRange>, Option<ByteRange>) {
        let mut regions: Vec<ByteRange> = vec![
            (0, self.checksum_offset),
            (self.checksum_offset + 4, self.cert_dir_offset),
            (self.cert_dir_offset + 8, self.size_of_headers),
        ];
        regions.extend(self.raw.iter().map(|r| (r.start, r.end)));
        let hashed: u64 =
            self.size_of_headers + self.raw.iter().map(|r| r.end - r.start).sum::<u64>();
        let last_end = self.raw.last().map_or(self.size_of_headers, |r| r.end);
        if hashed == last_end {
            regions.push((last_end, self.data_end));
            (regions, None)
        } else {
            (regions, Some((hashed, self.data_end)))
        }
    }

    /// Parse and validate the headers, sections and certificate table of a
    /// file of `file_size` bytes; `fetch(buf, off)` reads `buf.len()` bytes
    /// at `off` (only within the headers and the section table).
    fn parse(
        path: &Path,
        file_size: u64,
        fetch: &dyn Fn(&mut [u8], u64) -> Result<()>,
    ) -> Result<Layout> {
        let bad = |msg: String| Error::input(path, msg);
        if file_size > u64::from(u32::MAX) {
            return Err(bad(format!(
                "file size {file_size:#x} exceeds the 4 GiB a PE image can address"
            )));
        }
        let read = |off: u64, len: u64, what: &str| -> Result<Vec<u8>> {
            let end = off.checked_add(len).filter(|&e| e <= file_size);
            if end.is_none() {
                return Err(bad(format!(
                    "truncated: {what} [{off:#x}..{:#x}) extends past end of file (size {file_size:#x})",
                    off.saturating_add(len)
                )));
            }
            let mut buf = vec![0u8; len as usize];
            fetch(&mut buf, off)?;
            Ok(buf)
        };

        // DOS header.
        let magic = read(0, 2.min(file_size), "DOS header")?;
        if magic != b"MZ" {
            return Err(bad("not a PE image: no MZ signature".into()));
        }
        let dos = read(0, 0x40, "DOS header")?;
        let e_lfanew = u64::from(le32(&dos, 0x3c).unwrap_or(0));

        // PE signature and COFF header.
        let no_pe = || bad(format!("not a PE image: no PE signature at {e_lfanew:#x}"));
        if e_lfanew.checked_add(4).is_none_or(|e| e > file_size) {
            return Err(no_pe());
        }
        if read(e_lfanew, 4, "PE signature")? != b"PE\0\0" {
            return Err(no_pe());
        }
        let nt = read(e_lfanew, 4 + COFF_HEADER_SIZE, "COFF header")?;
        let machine = le16(&nt, 4).unwrap_or(0);
        let nsections = u64::from(le16(&nt, 6).unwrap_or(0));
        let opt_size = u64::from(le16(&nt, 20).unwrap_or(0));
        let opt_offset = e_lfanew + 4 + COFF_HEADER_SIZE;

        // Optional header.
        if opt_size < 2 {
            return Err(bad(format!(
                "optional header at {opt_offset:#x} is too small ({opt_size} bytes)"
            )));
        }
        let opt = read(opt_offset, opt_size, "optional header")?;
        let magic = le16(&opt, 0).unwrap_or(0);
        let (pe32plus, dd_rel) = match magic {
            PE32_MAGIC => (false, 96u64),
            PE32PLUS_MAGIC => (true, 112u64),
            _ => {
                return Err(bad(format!(
                    "unsupported optional header magic {magic:#06x} at {opt_offset:#x} (expected 0x010b or 0x020b)"
                )))
            }
        };
        if opt_size < dd_rel {
            return Err(bad(format!(
                "optional header at {opt_offset:#x} is too small ({opt_size} bytes, need {dd_rel})"
            )));
        }
        let size_of_headers = u64::from(le32(&opt, 60).unwrap_or(0));
        let checksum = le32(&opt, 64).unwrap_or(0);
        let dll_characteristics = le16(&opt, 70).unwrap_or(0);
        let size_of_image = le32(&opt, 56).unwrap_or(0);
        let n_dirs = u64::from(le32(&opt, dd_rel as usize - 4).unwrap_or(0));
        if n_dirs <= CERT_DIR_INDEX {
            return Err(bad(format!(
                "NumberOfRvaAndSizes is {n_dirs}: no certificate table data directory (need at least 5)"
            )));
        }
        let dd_end = dd_rel + 8 * n_dirs;
        if dd_end > opt_size {
            return Err(bad(format!(
                "{n_dirs} data directories need {dd_end} bytes but the optional header at {opt_offset:#x} has {opt_size}"
            )));
        }
        let cert_rel = dd_rel + 8 * CERT_DIR_INDEX;
        let cert_va = u64::from(le32(&opt, cert_rel as usize).unwrap_or(0));
        let cert_size = u64::from(le32(&opt, cert_rel as usize + 4).unwrap_or(0));

        // Section table.
        if size_of_headers > file_size {
            return Err(bad(format!(
                "SizeOfHeaders {size_of_headers:#x} extends past end of file (size {file_size:#x})"
            )));
        }
        let sect_offset = opt_offset + opt_size;
        let sect_end = sect_offset + SECTION_HEADER_SIZE * nsections;
        if sect_end > size_of_headers {
            return Err(bad(format!(
                "section table [{sect_offset:#x}..{sect_end:#x}) extends past SizeOfHeaders {size_of_headers:#x}"
            )));
        }
        let table = read(sect_offset, sect_end - sect_offset, "section table")?;
        let mut sections = Vec::with_capacity(nsections as usize);
        let mut raw = Vec::new();
        for hdr in table.chunks_exact(SECTION_HEADER_SIZE as usize) {
            let field = |off| le32(hdr, off).unwrap_or(0);
            let s = SectionInfo {
                name: section_name(hdr.get(..8).unwrap_or_default()),
                virtual_size: field(8),
                virtual_address: field(12),
                raw_size: field(16),
                raw_offset: field(20),
            };
            if s.raw_size != 0 {
                let start = u64::from(s.raw_offset);
                let end = start + u64::from(s.raw_size);
                if start < size_of_headers {
                    return Err(bad(format!(
                        "section {} raw data [{start:#x}..{end:#x}) overlaps the headers (SizeOfHeaders {size_of_headers:#x})",
                        s.name
                    )));
                }
                if end > file_size {
                    return Err(bad(format!(
                        "section {} raw data [{start:#x}..{end:#x}) extends past end of file (size {file_size:#x})",
                        s.name
                    )));
                }
                raw.push((start, end, sections.len()));
            }
            sections.push(s);
        }
        raw.sort_by_key(|&(start, _, _)| start);
        for pair in raw.windows(2) {
            let ((s1, e1, i1), (s2, e2, i2)) = (pair[0], pair[1]);
            if s2 < e1 {
                return Err(bad(format!(
                    "section {} raw data [{s1:#x}..{e1:#x}) overlaps section {} raw data [{s2:#x}..{e2:#x})",
                    sections[i1].name, sections[i2].name
                )));
            }
        }

        // Certificate table: firmware treats Size == 0 as "unsigned".
        let cert_table = if cert_size == 0 {
            None
        } else {
            let start = cert_va;
            let end = cert_va + cert_size;
            if start % 8 != 0 {
                return Err(bad(format!(
                    "certificate table [{start:#x}..{end:#x}) is not 8-byte aligned"
                )));
            }
            if end > file_size {
                return Err(bad(format!(
                    "certificate table [{start:#x}..{end:#x}) extends past end of file (size {file_size:#x})"
                )));
            }
            if end < file_size {
                return Err(bad(format!(
                    "{:#x} bytes of data after the certificate table [{start:#x}..{end:#x}); it must end the file (size {file_size:#x})",
                    file_size - end
                )));
            }
            if start < size_of_headers {
                return Err(bad(format!(
                    "certificate table [{start:#x}..{end:#x}) overlaps the headers (SizeOfHeaders {size_of_headers:#x})"
                )));
            }
            if let Some(&(s, e, i)) = raw.iter().find(|&&(_, e, _)| e > start) {
                return Err(bad(format!(
                    "certificate table [{start:#x}..{end:#x}) overlaps section {} raw data [{s:#x}..{e:#x})",
                    sections[i].name
                )));
            }
            Some(CertTableInfo {
                offset: start,
                size: cert_size,
            })
        };

        Ok(Layout {
            file_size,
            machine,
            pe32plus,
            checksum_offset: opt_offset + 64,
            cert_dir_offset: opt_offset + cert_rel,
            size_of_headers,
            checksum,
            dll_characteristics,
            size_of_image,
            sections,
            raw: raw
                .into_iter()
                .map(|(start, end, _)| RawRange { start, end })
                .collect(),
            data_end: cert_table.map_or(file_size, |t| t.offset),
            cert_table,
        })
    }
}

impl PeImage {
    /// Open `path` and validate its headers, sections and certificate table.
    pub fn open(path: &Path) -> Result<PeImage> {
        let file = File::open(path).at(path)?;
        let meta = file.metadata().at(path)?;
        if !meta.is_file() {
            return Err(Error::input(path, "not a regular file"));
        }
        let stamp = Stamp::of(&meta);
        let layout = Layout::parse(path, stamp.len, &|buf, off| {
            read_exact_at(&file, path, buf, off)
        })?;
        Ok(PeImage {
            path: path.to_path_buf(),
            file,
            stamp,
            layout,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_size(&self) -> u64 {
        self.layout.file_size
    }

    /// The optional header's DllCharacteristics (NX_COMPAT and the like).
    pub fn dll_characteristics(&self) -> u16 {
        self.layout.dll_characteristics
    }

    /// The optional header's SizeOfImage: how much the loader maps.
    pub fn size_of_image(&self) -> u32 {
        self.layout.size_of_image
    }

    /// True when the image has a (non-empty) certificate table.
    pub fn has_cert_table(&self) -> bool {
        self.layout.cert_table.is_some()
    }

    pub fn info(&self) -> PeInfo {
        PeInfo {
            machine: machine_name(self.layout.machine),
            pe32plus: self.layout.pe32plus,
            sections: self.layout.sections.clone(),
            size_of_headers: self.layout.size_of_headers,
            checksum: self.layout.checksum,
            cert_table: self.layout.cert_table,
            file_size: self.layout.file_size,
        }
    }

    /// The Authenticode signatures (PKCS#7 DER) of the certificate table, in
    /// order; entries of other certificate types are skipped, as EDK2 does.
    pub fn pkcs7_signatures(&self) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .signatures()?
            .into_iter()
            .filter(|c| c.cert_type == WIN_CERT_TYPE_PKCS_SIGNED_DATA)
            .map(|c| c.data)
            .collect())
    }

    /// The entries of the certificate table (empty when there is none), walked
    /// like EDK2: each entry starts at the previous one's `ALIGN8(dwLength)`.
    pub fn signatures(&self) -> Result<Vec<WinCertificate>> {
        let Some(table) = self.layout.cert_table else {
            return Ok(Vec::new());
        };
        let bad = |msg: String| Error::input(&self.path, msg);
        if table.size > MAX_CERT_TABLE {
            return Err(bad(format!(
                "certificate table at {:#x} is {:#x} bytes, more than the {:#x} accepted",
                table.offset, table.size, MAX_CERT_TABLE
            )));
        }
        self.check_unchanged()?;
        let end = table.offset + table.size;
        let mut off = table.offset;
        let mut out = Vec::new();
        while off < end {
            if end - off < 8 {
                return Err(bad(format!(
                    "certificate table entry at {off:#x}: only {} bytes left in the table [{:#x}..{end:#x}), a header needs 8",
                    end - off,
                    table.offset
                )));
            }
            let mut hdr = [0u8; 8];
            self.read_at(&mut hdr, off)?;
            let length = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            let revision = u16::from_le_bytes([hdr[4], hdr[5]]);
            let cert_type = u16::from_le_bytes([hdr[6], hdr[7]]);
            let len = u64::from(length);
            if len < 8 || len > end - off {
                return Err(bad(format!(
                    "certificate table entry at {off:#x} has dwLength {len:#x}, outside 8..={:#x} (table [{:#x}..{end:#x}))",
                    end - off,
                    table.offset
                )));
            }
            let mut data = vec![0u8; (len - 8) as usize];
            self.read_at(&mut data, off + 8)?;
            if cert_type == WIN_CERT_TYPE_PKCS_SIGNED_DATA {
                if let Some(n) = der_element_len(&data) {
                    let tail = data.get(n..).unwrap_or_default();
                    if !tail.is_empty() && tail.len() < 8 && tail.iter().all(|&b| b == 0) {
                        data.truncate(n);
                    }
                }
            }
            out.push(WinCertificate {
                offset: off,
                length,
                revision,
                cert_type,
                data,
            });
            off = match align8(off + len) {
                Some(next) => next,
                None => break,
            };
        }
        Ok(out)
    }

    /// The ranges the Authenticode digest covers, in file order and disjoint,
    /// and "the rest" when it must be read again (see [`Layout::hashed_ranges`]).
    pub fn hashed_ranges(&self) -> (Vec<ByteRange>, Option<ByteRange>) {
        self.layout.hashed_ranges()
    }

    /// Where the image data ends: the certificate table, or the end of the file.
    pub fn data_end(&self) -> u64 {
        self.layout.data_end
    }

    /// The file offset of the certificate-table data-directory entry.
    pub fn cert_dir_offset(&self) -> u64 {
        self.layout.cert_dir_offset
    }

    /// The Authenticode SHA-256 digest (see the module docs), and the checksum
    /// partial sum, in one streaming pass over the image.
    pub fn digest(&self) -> Result<ImageDigest> {
        self.digest_with_buffer(BUF_SIZE)
    }

    fn digest_with_buffer(&self, buf_size: usize) -> Result<ImageDigest> {
        self.check_unchanged()?;
        let mut builder = DigestBuilder::for_layout(&self.layout, &self.path)?;
        let data_end = self.layout.data_end;
        let mut buf = vec![0u8; buf_size.max(1).min(data_end.max(1) as usize)];
        let mut pos = 0u64;
        while pos < data_end {
            let n = (buf.len() as u64).min(data_end - pos) as usize;
            let chunk = buf.get_mut(..n).ok_or_else(|| self.internal("buffer"))?;
            self.read_at(chunk, pos)?;
            builder.update(chunk);
            pos += n as u64;
        }
        let digest = builder.finish(&self.file)?;
        self.check_unchanged()?;
        Ok(digest)
    }

    /// Write a copy of the image to `out` with `sigs` (PKCS#7 DER blobs) as its
    /// certificate table, replacing any table it had; `sigs` empty removes the
    /// table. `digest` must come from [`PeImage::digest`] on this image. The
    /// output replaces `out` atomically (temp file, fsync, rename); `out` may be
    /// this image's own path.
    pub fn write_signed(&self, digest: &ImageDigest, sigs: &[Vec<u8>], out: &Path) -> Result<()> {
        fsutil::remove_stale_temps(out);
        let staged = self.stage_signed(digest, sigs, out)?;
        fsutil::publish(vec![staged])
    }

    /// The first half of [`PeImage::write_signed`]: the signed copy, written
    /// to a temp file next to `out` and closed, for [`fsutil::publish`] to
    /// make durable and rename, together with the rest of a batch.
    pub fn stage_signed(
        &self,
        digest: &ImageDigest,
        sigs: &[Vec<u8>],
        out: &Path,
    ) -> Result<fsutil::Staged> {
        // A digest of another image is refused before the copy, not after.
        self.plan(digest, sigs)?;
        let staged = self.stage_copy(out)?;
        self.finish_copy(&staged, digest, sigs)?;
        Ok(staged)
    }

    /// Start a signed copy before the signature exists: the image data (all
    /// of it that is hashed) goes to a temp file next to `out`, so that it
    /// can be copied and made durable while the image is hashed.
    /// [`PeImage::finish_copy`] adds the signatures.
    pub fn stage_copy(&self, out: &Path) -> Result<fsutil::Staged> {
        let mode = self.file.metadata().at(&self.path)?.permissions().mode() & 0o777;
        let mut staged = fsutil::Staged::create(out, fsutil::tag::SIGNING, mode)?;
        let f = staged.file()?;
        // Errors name the output the user asked for ("OUT: No space left on
        // device"), not our temp file.
        self.copy_prefix(f, out, self.layout.data_end)?;
        staged.close();
        Ok(staged)
    }

    /// Complete a copy started by [`PeImage::stage_copy`] on this image:
    /// padding, certificate table, header fields. `digest` must come from
    /// [`PeImage::digest`] on this image.
    pub fn finish_copy(
        &self,
        staged: &fsutil::Staged,
        digest: &ImageDigest,
        sigs: &[Vec<u8>],
    ) -> Result<()> {
        let plan = self.plan(digest, sigs)?;
        let out = staged.dest();
        let f = OpenOptions::new().write(true).open(staged.tmp()).at(out)?;
        let len = f.metadata().at(out)?.len();
        if len != plan.keep {
            return Err(Error::input(
                out,
                format!(
                    "temp copy {} is {len:#x} bytes, expected {:#x}",
                    staged.tmp().display(),
                    plan.keep
                ),
            ));
        }
        self.write_tail(&f, &plan, out)?;
        self.check_unchanged()
    }

    /// Give `f`, which holds this image's data, the table and header fields of
    /// `plan`.
    fn write_tail(&self, f: &File, plan: &SignedLayout, path: &Path) -> Result<()> {
        // set_len to the table offset both drops an old table and, for an
        // unaligned image, appends the zero padding.
        f.set_len(plan.table_offset).at(path)?;
        f.write_all_at(&plan.table, plan.table_offset).at(path)?;
        f.write_all_at(&plan.cert_dir, self.layout.cert_dir_offset)
            .at(path)?;
        f.write_all_at(&plan.checksum.to_le_bytes(), self.layout.checksum_offset)
            .at(path)
    }

    /// Like [`PeImage::write_signed`] onto this image's own path, but in place:
    /// the file is truncated to the image data (dropping any old table), padded,
    /// the new table appended, and the header fields patched, then fsynced. The
    /// inode, links and permissions are kept; the update is not atomic, so a
    /// crash in the middle leaves a broken image.
    pub fn write_signed_in_place(self, digest: &ImageDigest, sigs: &[Vec<u8>]) -> Result<()> {
        let plan = self.plan(digest, sigs)?;
        let path = &self.path;
        let f = OpenOptions::new().write(true).open(path).at(path)?;
        let now = Stamp::of(&f.metadata().at(path)?);
        if now != self.stamp {
            return Err(Error::input(
                path,
                "file was replaced or modified since it was opened; not signing it in place",
            ));
        }
        let new_len = plan.table_offset + plan.table.len() as u64;
        self.write_tail(&f, &plan, path)?;
        f.sync_all().at(path)?;
        let len = f.metadata().at(path)?.len();
        if len != new_len {
            return Err(Error::input(
                path,
                format!("file is {len:#x} bytes after signing in place, expected {new_len:#x}"),
            ));
        }
        Ok(())
    }

    /// Lay out the new table and compute the new header fields.
    fn plan(&self, digest: &ImageDigest, sigs: &[Vec<u8>]) -> Result<SignedLayout> {
        if digest.stamp != self.stamp || digest.data_end != self.layout.data_end {
            return Err(Error::Usage(format!(
                "{}: the digest given was not computed from this image as it is now",
                self.path.display()
            )));
        }
        self.check_unchanged()?;
        let mut table = Vec::new();
        for (i, sig) in sigs.iter().enumerate() {
            if sig.is_empty() {
                return Err(Error::Usage(format!("signature {i} is empty")));
            }
            let length = u32::try_from(sig.len() + 8).map_err(|_| {
                Error::Usage(format!("signature {i} is too large ({} bytes)", sig.len()))
            })?;
            table.extend_from_slice(&length.to_le_bytes());
            table.extend_from_slice(&WIN_CERT_REVISION_2_0.to_le_bytes());
            table.extend_from_slice(&WIN_CERT_TYPE_PKCS_SIGNED_DATA.to_le_bytes());
            table.extend_from_slice(sig);
            table.resize(table.len().next_multiple_of(8), 0);
        }
        let table_offset = if table.is_empty() {
            digest.data_end
        } else {
            digest.padded_end
        };
        let table_size = table.len() as u64;
        let limit = u64::from(u32::MAX);
        if table_offset > limit || table_size > limit || table_offset + table_size > limit {
            return Err(Error::input(
                &self.path,
                format!(
                    "signed image would be {:#x} bytes, more than a PE image can address",
                    table_offset + table_size
                ),
            ));
        }
        let mut cert_dir = [0u8; 8];
        if !table.is_empty() {
            cert_dir[..4].copy_from_slice(&(table_offset as u32).to_le_bytes());
            cert_dir[4..].copy_from_slice(&(table_size as u32).to_le_bytes());
        }
        let mut sum = ChecksumAcc {
            sum: digest.checksum_sum,
        };
        sum.add(self.layout.cert_dir_offset, &cert_dir);
        sum.add(table_offset, &table);
        Ok(SignedLayout {
            keep: digest.data_end,
            table_offset,
            checksum: sum.finish(table_offset + table_size),
            cert_dir,
            table,
        })
    }

    /// Copy `[0, len)` of the image to the same offsets of `out`: with
    /// copy_file_range (reflinks, no user-space copy) where the kernel and
    /// filesystems allow, else through a bounded buffer.
    fn copy_prefix(&self, out: &File, out_path: &Path, len: u64) -> Result<()> {
        let mut off = 0u64;
        while off < len {
            let want = (len - off).min(1 << 30) as usize;
            let mut off_in = off;
            let mut off_out = off;
            match rustix::fs::copy_file_range(
                &self.file,
                Some(&mut off_in),
                out,
                Some(&mut off_out),
                want,
            ) {
                Ok(0) => return Err(self.shrank(off)),
                Ok(n) => off += n as u64,
                Err(_) => break,
            }
        }
        let mut buf = vec![0u8; BUF_SIZE.min((len - off).max(1) as usize)];
        while off < len {
            let n = (buf.len() as u64).min(len - off) as usize;
            let chunk = buf
                .get_mut(..n)
                .ok_or_else(|| self.internal("copy buffer"))?;
            self.read_at(chunk, off)?;
            out.write_all_at(chunk, off).at(out_path)?;
            off += n as u64;
        }
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
        read_exact_at(&self.file, &self.path, buf, off)
    }

    fn shrank(&self, off: u64) -> Error {
        Error::input(
            &self.path,
            format!("file ended at {off:#x} while reading; it changed since it was opened"),
        )
    }

    fn internal(&self, what: &str) -> Error {
        Error::Internal(format!("{}: {what}", self.path.display()))
    }

    fn check_unchanged(&self) -> Result<()> {
        let now = Stamp::of(&self.file.metadata().at(&self.path)?);
        if now != self.stamp {
            return Err(Error::input(
                &self.path,
                "file changed since it was opened (size or modification time differ)",
            ));
        }
        Ok(())
    }
}

fn read_exact_at(file: &File, path: &Path, buf: &mut [u8], off: u64) -> Result<()> {
    file.read_exact_at(buf, off).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::input(
                path,
                format!(
                    "file ended before [{off:#x}..{:#x}) could be read; it changed since it was opened",
                    off + buf.len() as u64
                ),
            )
        } else {
            Error::io(path, e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const E_LFANEW: usize = 0x80;
    const OPT: usize = E_LFANEW + 24;
    const CK: usize = OPT + 64;
    const SOH: usize = 0x200;

    fn dd(pe32plus: bool) -> usize {
        OPT + if pe32plus { 112 } else { 96 }
    }
    fn cert_dir(pe32plus: bool) -> usize {
        dd(pe32plus) + 32
    }
    fn sect_table(pe32plus: bool) -> usize {
        dd(pe32plus) + 16 * 8
    }

    fn put16(d: &mut [u8], off: usize, v: u16) {
        d[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn put32(d: &mut [u8], off: usize, v: u32) {
        d[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn get32(d: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(d[off..off + 4].try_into().unwrap())
    }

    /// A minimal PE: headers of 0x200 bytes, `sections` as (name, raw offset,
    /// raw size), every byte outside the header fields patterned, `len` bytes.
    fn build(pe32plus: bool, sections: &[(&str, u32, u32)], len: usize) -> Vec<u8> {
        let mut d: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
        d[E_LFANEW..sect_table(pe32plus) + 40 * sections.len()].fill(0);
        d[0..2].copy_from_slice(b"MZ");
        put32(&mut d, 0x3c, E_LFANEW as u32);
        d[E_LFANEW..E_LFANEW + 4].copy_from_slice(b"PE\0\0");
        put16(&mut d, E_LFANEW + 4, 0x8664);
        put16(&mut d, E_LFANEW + 6, sections.len() as u16);
        put16(&mut d, E_LFANEW + 20, (sect_table(pe32plus) - OPT) as u16);
        put16(&mut d, E_LFANEW + 22, 0x2022);
        put16(&mut d, OPT, if pe32plus { 0x20b } else { 0x10b });
        put32(&mut d, OPT + 32, 0x1000); // SectionAlignment
        put32(&mut d, OPT + 36, 0x200); // FileAlignment
        put32(&mut d, OPT + 60, SOH as u32);
        put32(&mut d, CK, 0x1234_5678);
        put16(&mut d, OPT + 68, 10); // EFI application
        put32(&mut d, dd(pe32plus) - 4, 16);
        for (i, &(name, off, size)) in sections.iter().enumerate() {
            let h = sect_table(pe32plus) + 40 * i;
            d[h..h + name.len()].copy_from_slice(name.as_bytes());
            put32(&mut d, h + 8, size);
            put32(&mut d, h + 12, 0x1000 * (i as u32 + 1));
            put32(&mut d, h + 16, size);
            put32(&mut d, h + 20, off);
        }
        d
    }

    const SECTIONS: &[(&str, u32, u32)] = &[
        (".text", 0x200, 0x400),
        (".data", 0x600, 0x200),
        (".reloc", 0x800, 0x200),
    ];

    /// The default image: three sections and 13 bytes of unaligned trailing data.
    fn image() -> Vec<u8> {
        build(true, SECTIONS, 0xa00 + 13)
    }

    fn write(dir: &tempfile::TempDir, name: &str, data: &[u8]) -> PathBuf {
        let p = dir.path().join(name);
        // Unlink first: ext4 flushes a file truncated and rewritten in place.
        let _ = fs::remove_file(&p);
        fs::write(&p, data).unwrap();
        p
    }

    /// Reference Authenticode digest, computed the simple in-memory way.
    fn ref_digest(d: &[u8], pe32plus: bool, pad: bool) -> [u8; 32] {
        let cd = cert_dir(pe32plus);
        let soh = get32(d, OPT + 60) as usize;
        let mut h = Sha256::new();
        h.update(&d[..CK]);
        h.update(&d[CK + 4..cd]);
        h.update(&d[cd + 8..soh]);
        let n = u16::from_le_bytes([d[E_LFANEW + 6], d[E_LFANEW + 7]]) as usize;
        let mut secs: Vec<(usize, usize)> = (0..n)
            .map(|i| {
                let s = sect_table(pe32plus) + 40 * i;
                (get32(d, s + 20) as usize, get32(d, s + 16) as usize)
            })
            .filter(|&(_, size)| size != 0)
            .collect();
        secs.sort();
        let mut sum = soh;
        for (off, size) in secs {
            h.update(&d[off..off + size]);
            sum += size;
        }
        let end = match get32(d, cd + 4) {
            0 => d.len(),
            _ => get32(d, cd) as usize,
        };
        h.update(&d[sum..end]);
        if pad {
            h.update(vec![0u8; (8 - end % 8) % 8]);
        }
        h.finalize().into()
    }

    /// Reference PE checksum: fold after every 16-bit word.
    fn ref_checksum(d: &[u8], ck: usize) -> u32 {
        let mut sum: u32 = 0;
        for i in (0..d.len()).step_by(2) {
            if i >= ck && i < ck + 4 {
                continue;
            }
            let w = d[i] as u32 | d.get(i + 1).map_or(0, |&b| (b as u32) << 8);
            sum += w;
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum.wrapping_add(d.len() as u32)
    }

    fn der_blob(len: usize, seed: u8) -> Vec<u8> {
        // A DER SEQUENCE with a long-form length, content `len` bytes.
        let mut v = vec![0x30, 0x82, (len >> 8) as u8, len as u8];
        v.extend((0..len).map(|i| (i as u8).wrapping_mul(seed) | 1));
        v
    }

    #[test]
    fn digest_matches_reference_for_all_layouts() {
        let dir = tempfile::tempdir().unwrap();
        for pe32plus in [true, false] {
            for len in [0xa00, 0xa00 + 13, 0xa00 + 8, 0xa00 + 1] {
                let d = build(pe32plus, SECTIONS, len);
                let p = write(&dir, "a.efi", &d);
                let img = PeImage::open(&p).unwrap();
                let want = ref_digest(&d, pe32plus, true);
                for buf in [1, 2, 3, 7, 64, 0x1ff, BUF_SIZE] {
                    let dg = img.digest_with_buffer(buf).unwrap();
                    assert_eq!(
                        dg.sha256, want,
                        "pe32plus={pe32plus} len={len:#x} buf={buf}"
                    );
                    assert_eq!(dg.sha256_unpadded, ref_digest(&d, pe32plus, false));
                    assert_eq!(dg.padding(), ((8 - len % 8) % 8) as u64);
                }
                assert_eq!(img.digest().unwrap(), img.digest().unwrap());
            }
        }
    }

    #[test]
    fn info_reports_headers() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "a.efi", &image());
        let info = PeImage::open(&p).unwrap().info();
        assert_eq!(info.machine, "x86_64");
        assert!(info.pe32plus);
        assert_eq!(info.size_of_headers, 0x200);
        assert_eq!(info.checksum, 0x1234_5678);
        assert_eq!(info.cert_table, None);
        assert_eq!(info.file_size, 0xa0d);
        assert_eq!(info.sections.len(), 3);
        assert_eq!(
            info.sections[1],
            SectionInfo {
                name: ".data".into(),
                virtual_address: 0x2000,
                virtual_size: 0x200,
                raw_offset: 0x600,
                raw_size: 0x200,
            }
        );
        let json = serde_json::to_string(&info).unwrap();
        assert!(json.contains("\"cert_table\":null"), "{json}");
    }

    #[test]
    fn digest_ignores_checksum_and_cert_dir_but_not_content() {
        let dir = tempfile::tempdir().unwrap();
        let d = image();
        let base = PeImage::open(&write(&dir, "a.efi", &d))
            .unwrap()
            .digest()
            .unwrap();
        let digest_of = |d: &[u8]| {
            PeImage::open(&write(&dir, "b.efi", d))
                .unwrap()
                .digest()
                .unwrap()
        };

        let mut c = d.clone();
        put32(&mut c, CK, 0xdead_beef);
        // A directory entry with Size 0 means "no table" and is not hashed.
        put32(&mut c, cert_dir(true), 0x7777);
        assert_eq!(digest_of(&c).sha256, base.sha256);

        for off in [
            0x10,
            CK + 4,
            cert_dir(true) + 8,
            0x1f0,
            0x200,
            0x7ff,
            0x9ff,
            0xa00,
            0xa0c,
        ] {
            let mut c = d.clone();
            c[off] ^= 0x40;
            assert_ne!(
                digest_of(&c).sha256,
                base.sha256,
                "byte {off:#x} not hashed"
            );
        }
    }

    #[test]
    fn sections_are_hashed_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        // Section headers listed out of file order.
        let secs = [
            (".c", 0x800, 0x200),
            (".a", 0x200, 0x400),
            (".b", 0x600, 0x200),
        ];
        let d = build(true, &secs, 0xa00);
        let dg = PeImage::open(&write(&dir, "a.efi", &d))
            .unwrap()
            .digest()
            .unwrap();
        assert_eq!(dg.sha256, ref_digest(&d, true, true));
        // Contiguous sections: same hash as hashing the file linearly.
        let mut h = Sha256::new();
        h.update(&d[..CK]);
        h.update(&d[CK + 4..cert_dir(true)]);
        h.update(&d[cert_dir(true) + 8..]);
        assert_eq!(dg.sha256, <[u8; 32]>::from(h.finalize()));
    }

    #[test]
    fn gaps_and_empty_sections_follow_firmware_rules() {
        let dir = tempfile::tempdir().unwrap();
        // A 0x100 gap before .b, an empty .bss, and unaligned trailing data.
        let secs = [(".a", 0x200, 0x400), (".bss", 0, 0), (".b", 0x700, 0x100)];
        let d = build(true, &secs, 0x800 + 5);
        let p = write(&dir, "a.efi", &d);
        let img = PeImage::open(&p).unwrap();
        for buf in [3, 0x80, BUF_SIZE] {
            let dg = img.digest_with_buffer(buf).unwrap();
            assert_eq!(dg.sha256, ref_digest(&d, true, true));
            assert_eq!(dg.sha256_unpadded, ref_digest(&d, true, false));
        }
        // Signing and re-reading keeps the digest even with the re-read tail.
        let dg = img.digest().unwrap();
        let out = dir.path().join("s.efi");
        img.write_signed(&dg, &[der_blob(100, 3)], &out).unwrap();
        assert_eq!(
            PeImage::open(&out).unwrap().digest().unwrap().sha256,
            dg.sha256
        );
    }

    /// The builder fed an image's bytes as a writer would (any chunking)
    /// gives what `PeImage::digest` reads from the file, checksum state
    /// included, so the image can be signed in place with it.
    #[test]
    fn digest_builder_equals_digest_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let gaps = [(".a", 0x200, 0x400), (".bss", 0, 0), (".b", 0x700, 0x100)];
        let images = [
            image(),
            build(false, SECTIONS, 0xa00),
            build(true, &gaps, 0x800 + 5),
        ];
        for d in images {
            let p = write(&dir, "a.efi", &d);
            let img = PeImage::open(&p).unwrap();
            let want = img.digest().unwrap();
            for chunk in [1, 7, 0x200, 0x1000, d.len()] {
                let mut b = DigestBuilder::new(&p, &d[..SOH], d.len() as u64).unwrap();
                for c in d.chunks(chunk) {
                    b.update(c);
                }
                assert_eq!(b.position(), d.len() as u64);
                let file = File::open(&p).unwrap();
                let got = b.finish(&file).unwrap();
                // The partial sums may differ; they are congruent mod 0xffff.
                let fin = |d: &ImageDigest| {
                    ChecksumAcc {
                        sum: d.checksum_sum,
                    }
                    .finish(0)
                };
                assert_eq!(fin(&got), fin(&want), "chunk {chunk}");
                let same = ImageDigest {
                    checksum_sum: want.checksum_sum,
                    ..got
                };
                assert_eq!(same, want, "chunk {chunk}");
            }
            // Signed with it, the file verifies as if signed from a read.
            let mut b = DigestBuilder::new(&p, &d, d.len() as u64).unwrap();
            b.update(&d);
            let got = b.finish(&File::open(&p).unwrap()).unwrap();
            let out = dir.path().join("s.efi");
            img.write_signed(&want, &[der_blob(64, 5)], &out).unwrap();
            PeImage::open(&p)
                .unwrap()
                .write_signed_in_place(&got, &[der_blob(64, 5)])
                .unwrap();
            assert!(fs::read(&out).unwrap() == fs::read(&p).unwrap());
        }
        // Too few bytes, or a file of another length, are errors.
        let d = image();
        let p = write(&dir, "a.efi", &d);
        let mut b = DigestBuilder::new(&p, &d[..SOH], d.len() as u64).unwrap();
        b.update(&d[..100]);
        let e = b.finish(&File::open(&p).unwrap()).unwrap_err();
        assert!(e.to_string().contains("only 0x64 bytes"), "{e}");
        let mut b = DigestBuilder::new(&p, &d[..SOH], d.len() as u64 + 8).unwrap();
        b.update(&d);
        b.update(&[0; 8]);
        assert!(b.finish(&File::open(&p).unwrap()).is_err());
        // Headers cut short are refused, not read past.
        assert!(DigestBuilder::new(&p, &d[..0x100], d.len() as u64).is_err());
    }

    #[test]
    fn write_signed_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let d = image();
        let p = write(&dir, "a.efi", &d);
        let img = PeImage::open(&p).unwrap();
        let dg = img.digest().unwrap();
        assert_eq!(dg.padding(), 3);
        let sigs = vec![der_blob(1001, 5), der_blob(64, 7), vec![0xaa; 5]];
        let out = dir.path().join("signed.efi");
        img.write_signed(&dg, &sigs, &out).unwrap();

        let o = fs::read(&out).unwrap();
        let signed = PeImage::open(&out).unwrap();
        let info = signed.info();
        let table = info.cert_table.unwrap();
        assert_eq!(table.offset, 0xa10);
        assert_eq!(table.offset + table.size, o.len() as u64);
        assert_eq!(table.size % 8, 0);
        assert_eq!(
            &o[..0xa0d],
            &{
                let mut e = d.clone();
                put32(&mut e, CK, get32(&o, CK));
                e[cert_dir(true)..cert_dir(true) + 8]
                    .copy_from_slice(&o[cert_dir(true)..cert_dir(true) + 8]);
                e
            }[..]
        );
        assert_eq!(&o[0xa0d..0xa10], &[0, 0, 0]);

        let sd = signed.digest().unwrap();
        assert_eq!(sd.sha256, dg.sha256);
        assert_eq!(sd.sha256_unpadded, dg.sha256);
        assert_eq!(sd.sha256, ref_digest(&o, true, false));

        let got = signed.signatures().unwrap();
        assert_eq!(got.len(), 3);
        for (g, s) in got.iter().zip(&sigs) {
            assert_eq!(&g.data, s);
            assert_eq!(g.length as usize, s.len() + 8);
            assert_eq!(g.revision, WIN_CERT_REVISION_2_0);
            assert_eq!(g.cert_type, WIN_CERT_TYPE_PKCS_SIGNED_DATA);
            assert_eq!(g.offset % 8, 0);
        }

        assert_eq!(info.checksum, ref_checksum(&o, CK));
        assert_ne!(info.checksum, 0x1234_5678);

        // Replacing the table of the signed image: same digest, new table.
        let out2 = dir.path().join("resigned.efi");
        signed.write_signed(&sd, &[der_blob(10, 9)], &out2).unwrap();
        let re = PeImage::open(&out2).unwrap();
        assert_eq!(re.digest().unwrap().sha256, dg.sha256);
        assert_eq!(re.signatures().unwrap()[0].data, der_blob(10, 9));
        assert_eq!(
            re.info().checksum,
            ref_checksum(&fs::read(&out2).unwrap(), CK)
        );

        // No signatures: the table is removed.
        let out3 = dir.path().join("unsigned.efi");
        re.write_signed(&re.digest().unwrap(), &[], &out3).unwrap();
        let un = fs::read(&out3).unwrap();
        assert_eq!(un.len(), 0xa10);
        let un_img = PeImage::open(&out3).unwrap();
        assert_eq!(un_img.info().cert_table, None);
        assert_eq!(un_img.digest().unwrap().sha256, dg.sha256);
        assert_eq!(un_img.info().checksum, ref_checksum(&un, CK));
    }

    #[test]
    fn checksum_matches_reference_for_pe32_and_odd_sizes() {
        let dir = tempfile::tempdir().unwrap();
        for pe32plus in [false, true] {
            for len in [0xa00, 0xa01, 0xa07] {
                for sig_len in [1, 2, 3, 8, 0x1fff] {
                    let d = build(pe32plus, SECTIONS, len);
                    let p = write(&dir, "a.efi", &d);
                    let img = PeImage::open(&p).unwrap();
                    let dg = img.digest_with_buffer(5).unwrap();
                    let out = dir.path().join("o.efi");
                    img.write_signed(&dg, &[vec![0x5a; sig_len]], &out).unwrap();
                    let o = fs::read(&out).unwrap();
                    assert_eq!(
                        get32(&o, CK),
                        ref_checksum(&o, CK),
                        "pe32plus={pe32plus} len={len:#x}"
                    );
                    let s = PeImage::open(&out).unwrap();
                    assert_eq!(s.digest().unwrap().sha256, dg.sha256);
                    assert_eq!(ref_digest(&o, pe32plus, false), dg.sha256);
                }
            }
        }
        // The accumulator on its own: all-zero and all-0xff data.
        for data in [
            vec![0u8; 10],
            vec![0xff; 10],
            vec![0xff; 9],
            vec![0x01, 0, 0xfe, 0xff],
        ] {
            let mut acc = ChecksumAcc::default();
            acc.add(0, &data[..3.min(data.len())]);
            acc.add(3.min(data.len()) as u64, &data[3.min(data.len())..]);
            assert_eq!(
                acc.finish(data.len() as u64),
                ref_checksum(&data, usize::MAX - 4),
                "{data:?}"
            );
        }
    }

    #[test]
    fn in_place_matches_copy() {
        let dir = tempfile::tempdir().unwrap();
        let sigs = vec![der_blob(300, 3)];
        for d in [image(), build(true, SECTIONS, 0xa00)] {
            let p = write(&dir, "a.efi", &d);
            let img = PeImage::open(&p).unwrap();
            let dg = img.digest().unwrap();
            let copy = dir.path().join("copy.efi");
            img.write_signed(&dg, &sigs, &copy).unwrap();
            img.write_signed_in_place(&dg, &sigs).unwrap();
            assert_eq!(fs::read(&p).unwrap(), fs::read(&copy).unwrap());

            // Again on the signed file, with a different (shorter) table.
            let img = PeImage::open(&p).unwrap();
            let dg2 = img.digest().unwrap();
            assert_eq!(dg2.sha256, dg.sha256);
            img.write_signed(&dg2, &[vec![1; 3]], &copy).unwrap();
            img.write_signed_in_place(&dg2, &[vec![1; 3]]).unwrap();
            assert_eq!(fs::read(&p).unwrap(), fs::read(&copy).unwrap());
            assert_eq!(
                PeImage::open(&p).unwrap().signatures().unwrap()[0].data,
                vec![1; 3]
            );
        }
    }

    #[test]
    fn write_signed_over_itself_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "a.efi", &image());
        fs::set_permissions(&p, fs::Permissions::from_mode(0o751)).unwrap();
        let img = PeImage::open(&p).unwrap();
        let dg = img.digest().unwrap();
        img.write_signed(&dg, &[der_blob(50, 1)], &p).unwrap();
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.efi")]);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o751
        );
        let s = PeImage::open(&p).unwrap();
        assert_eq!(s.digest().unwrap().sha256, dg.sha256);

        // A failing write (no such directory) leaves nothing either.
        let bad = dir.path().join("missing/out.efi");
        assert!(s
            .write_signed(&s.digest().unwrap(), &[vec![1]], &bad)
            .is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn stale_or_foreign_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = PeImage::open(&write(&dir, "a.efi", &image())).unwrap();
        let b = PeImage::open(&write(&dir, "b.efi", &build(true, SECTIONS, 0xa00))).unwrap();
        let da = a.digest().unwrap();
        let out = dir.path().join("o.efi");
        assert!(b.write_signed(&da, &[vec![1]], &out).is_err());
        assert!(a.write_signed(&da, &[vec![]], &out).is_err());
        assert!(!out.exists());

        // Modified after opening: digest and write both refuse.
        let mut f = OpenOptions::new().append(true).open(a.path()).unwrap();
        std::io::Write::write_all(&mut f, b"more").unwrap();
        drop(f);
        assert!(a.digest().is_err());
        assert!(a.write_signed(&da, &[vec![1]], &out).is_err());
        assert!(!out.exists());
        assert!(a.write_signed_in_place(&da, &[vec![1]]).is_err());
    }

    #[test]
    fn signatures_walk_like_edk2() {
        let dir = tempfile::tempdir().unwrap();
        let d = build(true, SECTIONS, 0xa00);
        // Build a table by hand: an osslsigncode-style entry whose dwLength
        // counts its padding, then an sbsign-style one, then a non-PKCS entry.
        let der = der_blob(5, 3); // 9 bytes: 8 + 9 = 17 -> padded to 24
        let mut table = Vec::new();
        table.extend_from_slice(&24u32.to_le_bytes());
        table.extend_from_slice(&0x0200u16.to_le_bytes());
        table.extend_from_slice(&2u16.to_le_bytes());
        table.extend_from_slice(&der);
        table.resize(24, 0);
        table.extend_from_slice(&17u32.to_le_bytes());
        table.extend_from_slice(&0x0200u16.to_le_bytes());
        table.extend_from_slice(&2u16.to_le_bytes());
        table.extend_from_slice(&der);
        table.resize(48, 0);
        table.extend_from_slice(&11u32.to_le_bytes());
        table.extend_from_slice(&0x0100u16.to_le_bytes());
        table.extend_from_slice(&1u16.to_le_bytes());
        table.extend_from_slice(&[0, 0, 0]);
        table.resize(64, 0);
        let with_table = |table: &[u8]| {
            let mut s = d.clone();
            put32(&mut s, cert_dir(true), 0xa00);
            put32(&mut s, cert_dir(true) + 4, table.len() as u32);
            s.extend_from_slice(table);
            s
        };
        let img = PeImage::open(&write(&dir, "a.efi", &with_table(&table))).unwrap();
        let sigs = img.signatures().unwrap();
        assert_eq!(sigs.len(), 3);
        assert_eq!(sigs[0].data, der);
        assert_eq!(sigs[0].length, 24);
        assert_eq!(sigs[1].data, der);
        assert_eq!(sigs[1].offset, 0xa18);
        assert_eq!((sigs[2].revision, sigs[2].cert_type), (0x0100, 1));
        assert_eq!(sigs[2].data, vec![0, 0, 0]);

        // Bad dwLength values are errors, not panics.
        for (at, len) in [
            (0, 0u32),
            (0, 7),
            (0, 65),
            (24, 41),
            (24, u32::MAX),
            (48, 17),
        ] {
            let mut t = table.clone();
            put32(&mut t, at, len);
            let img = PeImage::open(&write(&dir, "b.efi", &with_table(&t))).unwrap();
            let e = img.signatures().unwrap_err().to_string();
            assert!(e.contains("dwLength"), "{e}");
        }
        // A table too short to hold a header.
        let img = PeImage::open(&write(&dir, "c.efi", &with_table(&[0u8; 4]))).unwrap();
        assert!(img.signatures().is_err());
    }

    fn open_err(dir: &tempfile::TempDir, d: &[u8]) -> String {
        let p = write(dir, "bad.efi", d);
        match PeImage::open(&p) {
            Ok(_) => panic!("opened a bad image"),
            Err(e) => {
                let s = e.to_string();
                assert!(!s.contains('\n'), "{s}");
                s
            }
        }
    }

    #[test]
    fn malformed_images_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = image();
        let sect = sect_table(true);
        let cd = cert_dir(true);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "no MZ"),
            (b"M".to_vec(), "no MZ"),
            (b"ELF...........".to_vec(), "no MZ"),
            (b"MZ".to_vec(), "truncated: DOS header"),
            (d[..0x70].to_vec(), "no PE signature"),
            (d[..0x90].to_vec(), "truncated: COFF header"),
            (d[..0x100].to_vec(), "truncated: optional header"),
            (d[..0x1ff].to_vec(), "SizeOfHeaders 0x200 extends past end of file"),
            (d[..0x900].to_vec(), "section .reloc raw data [0x800..0xa00) extends past end of file (size 0x900)"),
            ({ let mut c = d.clone(); put32(&mut c, 0x3c, 0xffff_fff0); c }, "no PE signature"),
            ({ let mut c = d.clone(); c[E_LFANEW] = b'X'; c }, "no PE signature"),
            ({ let mut c = d.clone(); put16(&mut c, OPT, 0x107); c }, "magic 0x0107"),
            ({ let mut c = d.clone(); put32(&mut c, dd(true) - 4, 4); c }, "NumberOfRvaAndSizes is 4"),
            ({ let mut c = d.clone(); put32(&mut c, dd(true) - 4, 17); c }, "17 data directories"),
            ({ let mut c = d.clone(); put16(&mut c, E_LFANEW + 20, 100); c }, "too small"),
            ({ let mut c = d.clone(); put16(&mut c, E_LFANEW + 6, 6); c }, "section table [0x188..0x278) extends past SizeOfHeaders 0x200"),
            ({ let mut c = d.clone(); put32(&mut c, OPT + 60, 0x1000_0000); c }, "SizeOfHeaders"),
            ({ let mut c = d.clone(); put32(&mut c, sect + 40 + 20, 0x500); c }, "section .text raw data [0x200..0x600) overlaps section .data raw data [0x500..0x700)"),
            ({ let mut c = d.clone(); put32(&mut c, sect + 20, 0x100); c }, "overlaps the headers"),
            ({ let mut c = d.clone(); put32(&mut c, sect + 16, 0xffff_ffff); c }, "extends past end of file"),
            ({ let mut c = d.clone(); put32(&mut c, cd, 0xa00); put32(&mut c, cd + 4, 0x100); c }, "certificate table [0xa00..0xb00) extends past end of file (size 0xa0d)"),
            ({ let mut c = d.clone(); put32(&mut c, cd, 0xffff_fff8); put32(&mut c, cd + 4, 0xffff_ffff); c }, "extends past end of file"),
            ({ let mut c = d.clone(); put32(&mut c, cd, 0xa04); put32(&mut c, cd + 4, 9); c }, "not 8-byte aligned"),
            ({ let mut c = d.clone(); put32(&mut c, cd, 0xa00); put32(&mut c, cd + 4, 8); c }, "0x5 bytes of data after the certificate table"),
            ({ let mut c = d.clone(); put32(&mut c, cd, 0x9f8); put32(&mut c, cd + 4, 0x15); c }, "overlaps section .reloc"),
            ({ let mut c = build(true, &[], 0x300); put32(&mut c, cd, 0x1f8); put32(&mut c, cd + 4, 0x108); c }, "overlaps the headers"),
        ];
        for (data, want) in cases {
            let e = open_err(&dir, &data);
            assert!(e.contains(want), "expected {want:?} in {e:?}");
        }
        // A directory instead of a file.
        assert!(PeImage::open(dir.path()).is_err());
    }

    /// Deterministic xorshift, so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn exercise(p: &Path, write: bool) {
        if let Ok(img) = PeImage::open(p) {
            let _ = img.info();
            let _ = img.signatures();
            if let Ok(dg) = img.digest_with_buffer(4096) {
                if !write {
                    return;
                }
                let out = p.with_extension("out");
                if img.write_signed(&dg, &[vec![0x30, 0x00]], &out).is_ok() {
                    let o = PeImage::open(&out).expect("own output must open");
                    assert_eq!(o.digest().unwrap().sha256, dg.sha256);
                }
            }
        }
    }

    #[test]
    fn truncations_and_mutations_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let src = write(&dir, "src.efi", &image());
        let img = PeImage::open(&src).unwrap();
        let signed = dir.path().join("signed.efi");
        img.write_signed(
            &img.digest().unwrap(),
            &[der_blob(40, 3), der_blob(20, 5)],
            &signed,
        )
        .unwrap();
        let s = fs::read(&signed).unwrap();
        let p = dir.path().join("m.efi");
        for len in 0..s.len() {
            write(&dir, "m.efi", &s[..len]);
            exercise(&p, true);
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for i in 0..1500 {
            let mut m = s.clone();
            for _ in 0..1 + rng.next() % 4 {
                let r = rng.next();
                // Mostly the headers, sometimes anywhere.
                let at = if r % 4 == 0 {
                    (r >> 8) as usize % m.len()
                } else {
                    (r >> 8) as usize % 0x200
                };
                m[at] = match (r >> 40) % 4 {
                    0 => 0,
                    1 => 0xff,
                    _ => (r >> 48) as u8,
                };
            }
            write(&dir, "m.efi", &m);
            // Writing fsyncs: exercise it on a sample only.
            exercise(&p, i % 16 == 0);
        }
    }

    /// A 200 MiB image (sparse on disk) streams through the bounded buffer, and
    /// signing it in place touches only the end of the file.
    #[test]
    #[ignore = "slow in debug builds; run with --ignored"]
    fn large_image_streams() {
        let dir = tempfile::tempdir().unwrap();
        let big: u32 = 200 << 20;
        let mut d = build(true, &[(".text", 0x200, big)], 0x200);
        d[OPT + 60..OPT + 64].copy_from_slice(&0x200u32.to_le_bytes());
        let p = write(&dir, "big.efi", &d);
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(0x200 + u64::from(big) + 3).unwrap();
        f.write_all_at(b"end", 0x200 + u64::from(big)).unwrap();
        drop(f);
        let t = std::time::Instant::now();
        let img = PeImage::open(&p).unwrap();
        let dg = img.digest().unwrap();
        println!("digest of {} MiB in {:?}", big >> 20, t.elapsed());
        let t = std::time::Instant::now();
        let out = dir.path().join("big-signed.efi");
        img.write_signed(&dg, &[der_blob(2000, 3)], &out).unwrap();
        println!("write_signed in {:?}", t.elapsed());
        img.write_signed_in_place(&dg, &[der_blob(2000, 3)])
            .unwrap();
        let a = PeImage::open(&out).unwrap();
        let b = PeImage::open(&p).unwrap();
        assert_eq!(a.digest().unwrap().sha256, dg.sha256);
        assert_eq!(b.digest().unwrap().sha256, dg.sha256);
        assert_eq!(a.info().checksum, b.info().checksum);
    }

    fn tool(name: &str) -> bool {
        Command::new(name).arg("--help").output().is_ok()
    }

    const SYSTEM_EFI: &[&str] = &[
        "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        "/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
    ];

    /// `pesign --hash` hashes the file as it is: compare with `sha256_unpadded`
    /// (and with `sha256` for images that need no padding).
    #[test]
    fn peer_pesign_hash() {
        if !tool("pesign") {
            println!("skipped: pesign not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut files: Vec<PathBuf> = SYSTEM_EFI
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .collect();
        files.push(write(&dir, "synthetic.efi", &image()));
        files.push(write(
            &dir,
            "aligned.efi",
            &build(true, SECTIONS, 0xa00 + 0x18),
        ));
        for f in files {
            let out = Command::new("pesign")
                .arg("-h")
                .arg("-i")
                .arg(&f)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let Some(h) = text.lines().find_map(|l| l.strip_prefix("hash: ")) else {
                println!("skipped {}: pesign printed {text:?}", f.display());
                continue;
            };
            let dg = PeImage::open(&f).unwrap().digest().unwrap();
            assert_eq!(
                h.trim(),
                crate::codec::hex(&dg.sha256_unpadded),
                "{}",
                f.display()
            );
            println!("pesign agrees on {}", f.display());
        }
    }

    fn openssl_cert(dir: &Path) -> Option<(PathBuf, PathBuf)> {
        let (k, c) = (dir.join("k.pem"), dir.join("c.pem"));
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=pe-test",
                "-days",
                "2",
            ])
            .arg("-keyout")
            .arg(&k)
            .arg("-out")
            .arg(&c)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then_some((k, c))
    }

    /// Sign with sbsign, take its PKCS#7 out, write it with our writer: the
    /// result must be byte-identical to sbsign's (layout, padding, checksum).
    #[test]
    fn peer_sbsign_identical_output() {
        if !tool("sbsign") {
            println!("skipped: sbsign not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let Some((key, cert)) = openssl_cert(dir.path()) else {
            println!("skipped: openssl cannot make a certificate");
            return;
        };
        let mut files: Vec<PathBuf> = SYSTEM_EFI
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .collect();
        files.push(write(&dir, "synthetic.efi", &image()));
        for f in files {
            let sb = dir.path().join("sb.efi");
            let st = Command::new("sbsign")
                .arg("--key")
                .arg(&key)
                .arg("--cert")
                .arg(&cert)
                .arg("--output")
                .arg(&sb)
                .arg(&f)
                .output()
                .unwrap();
            assert!(
                st.status.success(),
                "sbsign failed on {}: {st:?}",
                f.display()
            );
            let sb_img = PeImage::open(&sb).unwrap();
            let sig = sb_img.signatures().unwrap();
            assert_eq!(sig.len(), 1);
            let img = PeImage::open(&f).unwrap();
            let dg = img.digest().unwrap();
            assert_eq!(
                sb_img.digest().unwrap().sha256,
                dg.sha256,
                "{}",
                f.display()
            );
            let ours = dir.path().join("ours.efi");
            img.write_signed(&dg, &[sig[0].data.clone()], &ours)
                .unwrap();
            assert!(
                fs::read(&ours).unwrap() == fs::read(&sb).unwrap(),
                "{} differs from sbsign",
                f.display()
            );
            let v = Command::new("sbverify")
                .arg("--cert")
                .arg(&cert)
                .arg(&ours)
                .output()
                .unwrap();
            assert!(v.status.success(), "sbverify: {v:?}");
            println!("sbsign byte-identical on {}", f.display());
        }
    }

    /// osslsigncode: its signature over our image carries our digest, and its
    /// verifier accepts our re-written table and checksum.
    #[test]
    fn peer_osslsigncode() {
        if !tool("osslsigncode") {
            println!("skipped: osslsigncode not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let Some((key, cert)) = openssl_cert(dir.path()) else {
            println!("skipped: openssl cannot make a certificate");
            return;
        };
        let mut files: Vec<PathBuf> = SYSTEM_EFI
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .collect();
        files.push(write(&dir, "synthetic.efi", &image()));
        files.push(write(&dir, "pe32.efi", &build(false, SECTIONS, 0xa00 + 5)));
        for f in files {
            let os = dir.path().join("os.efi");
            let _ = fs::remove_file(&os);
            let st = Command::new("osslsigncode")
                .args(["sign", "-key"])
                .arg(&key)
                .arg("-certs")
                .arg(&cert)
                .arg("-in")
                .arg(&f)
                .arg("-out")
                .arg(&os)
                .output()
                .unwrap();
            assert!(
                st.status.success(),
                "osslsigncode sign on {}: {st:?}",
                f.display()
            );
            let img = PeImage::open(&f).unwrap();
            let dg = img.digest().unwrap();
            let os_img = PeImage::open(&os).unwrap();
            assert_eq!(os_img.digest().unwrap().sha256, dg.sha256);
            let sig = os_img.signatures().unwrap();
            assert_eq!(der_element_len(&sig[0].data), Some(sig[0].data.len()));

            let ours = dir.path().join("ours.efi");
            img.write_signed(&dg, &[sig[0].data.clone()], &ours)
                .unwrap();
            let v = Command::new("osslsigncode")
                .args(["verify", "-CAfile"])
                .arg(&cert)
                .arg("-in")
                .arg(&ours)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&v.stdout).to_string()
                + &String::from_utf8_lossy(&v.stderr);
            let calc = text
                .lines()
                .find_map(|l| l.strip_prefix("Calculated message digest"))
                .and_then(|l| l.split(':').nth(1))
                .map(|h| h.trim().to_lowercase());
            assert_eq!(calc.as_deref(), Some(dg.hex().as_str()), "{text}");
            assert!(!text.contains("invalid PE checksum"), "{text}");
            assert!(v.status.success(), "{text}");
            println!("osslsigncode agrees on {}", f.display());
        }
    }
}
