//! GuestOS manifests: signing and verifying NAME.conf as GyroidOS's cml daemon checks them.
//!
//! A manifest is a protobuf text-format `NAME.conf` (GuestOSConfig). Next to it
//! cml expects `NAME.sig`, a raw signature with SHA-512 over the exact bytes of
//! the conf, and `NAME.cert`: the signer's certificate first, then untrusted
//! intermediates, chained to the device's software-signing root. The padding
//! follows the key type of that first certificate: id-RSASSA-PSS keys are
//! checked with PSS (MGF1-SHA-512, salt 64), rsaEncryption keys with PKCS#1 v1.5.
//!
//! Image sizes and hashes are written into the conf by replacing or inserting
//! only those values, so everything else a reviewer has read stays byte for byte.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::digest;
use time::OffsetDateTime;
use x509_parser::prelude::X509Certificate;

use crate::chain;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::identity::Identity;
use crate::par;
use crate::sigalg::{self, Hash, KeyKind, Scheme};
use crate::x509;

mod cml;
pub mod verity;

// ---------------------------------------------------------------------------
// Protobuf text format, with byte positions kept so values can be edited in place.

#[derive(Debug)]
struct Scalar {
    start: usize,
    end: usize,
    kind: ScalarKind,
}

#[derive(Debug)]
enum ScalarKind {
    /// A string literal (adjacent literals already joined), unescaped.
    Str(Vec<u8>),
    /// A number, enum name, `true`/`false`...
    Word(String),
}

#[derive(Debug)]
enum Value {
    Scalar(Scalar),
    /// `open` is the offset just after the opening brace.
    Message {
        open: usize,
        fields: Vec<Field>,
    },
    List(Vec<Value>),
}

#[derive(Debug)]
struct Field {
    name: String,
    /// Offset of the field name.
    start: usize,
    /// Offset just after the value (the closing brace for messages).
    end: usize,
    value: Value,
}

#[derive(Debug)]
enum Tok {
    Ident(String),
    Str(Vec<u8>),
    Word(String),
    Punct(u8),
    Eof,
}

type Lexed = std::result::Result<(Tok, usize, usize), (usize, String)>;

struct Lexer<'a> {
    b: &'a [u8],
    pos: usize,
    /// Messages open around the current token: parsing recurses per level.
    depth: usize,
}

/// Deeper nesting is refused instead of overflowing the stack on a hostile
/// conf; protobuf's own text parser stops at the same depth.
const MAX_NESTING: usize = 100;

impl Lexer<'_> {
    fn skip_space(&mut self) {
        while self.pos < self.b.len() {
            match self.b[self.pos] {
                c if c.is_ascii_whitespace() => self.pos += 1,
                b'#' => {
                    while self.pos < self.b.len() && self.b[self.pos] != b'\n' {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn peek(&mut self) -> Lexed {
        let save = self.pos;
        let t = self.next();
        self.pos = save;
        t
    }

    fn next(&mut self) -> Lexed {
        self.skip_space();
        let start = self.pos;
        let Some(&c) = self.b.get(start) else {
            return Ok((Tok::Eof, start, start));
        };
        let word_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        let tok = match c {
            b'"' | b'\'' => Tok::Str(self.string(c)?),
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while self.pos < self.b.len() && word_char(self.b[self.pos]) {
                    self.pos += 1;
                }
                Tok::Ident(String::from_utf8_lossy(&self.b[start..self.pos]).into_owned())
            }
            c if c.is_ascii_digit() || c == b'-' || c == b'+' || c == b'.' => {
                self.pos += 1;
                while self.pos < self.b.len()
                    && (word_char(self.b[self.pos]) || b".+-".contains(&self.b[self.pos]))
                {
                    self.pos += 1;
                }
                Tok::Word(String::from_utf8_lossy(&self.b[start..self.pos]).into_owned())
            }
            b'{' | b'}' | b'<' | b'>' | b'[' | b']' | b':' | b',' | b';' => {
                self.pos += 1;
                Tok::Punct(c)
            }
            c => return Err((start, format!("unexpected character {:?}", char::from(c)))),
        };
        Ok((tok, start, self.pos))
    }

    /// A quoted string with C-style escapes, as protobuf's text format has them.
    fn string(&mut self, quote: u8) -> std::result::Result<Vec<u8>, (usize, String)> {
        let start = self.pos;
        self.pos += 1;
        let mut out = vec![];
        loop {
            let Some(&c) = self.b.get(self.pos) else {
                return Err((start, "unterminated string".into()));
            };
            self.pos += 1;
            match c {
                b'\n' => return Err((start, "unterminated string".into())),
                c if c == quote => return Ok(out),
                b'\\' => {
                    let Some(&e) = self.b.get(self.pos) else {
                        return Err((start, "unterminated string".into()));
                    };
                    self.pos += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'a' => out.push(7),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'v' => out.push(11),
                        b'\\' | b'\'' | b'"' | b'?' => out.push(e),
                        b'0'..=b'7' => {
                            let mut v = u32::from(e - b'0');
                            for _ in 0..2 {
                                match self.b.get(self.pos) {
                                    Some(&d @ b'0'..=b'7') => {
                                        v = v * 8 + u32::from(d - b'0');
                                        self.pos += 1;
                                    }
                                    _ => break,
                                }
                            }
                            out.push(v as u8);
                        }
                        b'x' | b'u' | b'U' => {
                            let max = match e {
                                b'x' => 2,
                                b'u' => 4,
                                _ => 8,
                            };
                            let from = self.pos;
                            while self.pos - from < max
                                && self.b.get(self.pos).is_some_and(|d| d.is_ascii_hexdigit())
                            {
                                self.pos += 1;
                            }
                            let digits = std::str::from_utf8(&self.b[from..self.pos]).unwrap_or("");
                            let v = u32::from_str_radix(digits, 16)
                                .map_err(|_| (from - 2, "bad escape sequence".to_string()))?;
                            if e == b'x' {
                                out.push(v as u8);
                            } else {
                                let ch = char::from_u32(v)
                                    .ok_or((from - 2, "bad unicode escape".to_string()))?;
                                out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                            }
                        }
                        _ => return Err((self.pos - 2, "bad escape sequence".into())),
                    }
                }
                c => out.push(c),
            }
        }
    }
}

fn parse_text(b: &[u8]) -> std::result::Result<Vec<Field>, (usize, String)> {
    let mut lx = Lexer {
        b,
        pos: 0,
        depth: 0,
    };
    Ok(parse_fields(&mut lx, None)?.0)
}

/// Fields up to `close` (or the end of input); returns them and the offset after `close`.
fn parse_fields(
    lx: &mut Lexer<'_>,
    close: Option<u8>,
) -> std::result::Result<(Vec<Field>, usize), (usize, String)> {
    let mut fields = vec![];
    loop {
        let (t, s, e) = lx.next()?;
        let name = match t {
            Tok::Eof => match close {
                Some(c) => return Err((s, format!("missing '{}'", char::from(c)))),
                None => return Ok((fields, s)),
            },
            Tok::Punct(c) if Some(c) == close => return Ok((fields, e)),
            Tok::Ident(n) => n,
            Tok::Punct(b'[') => {
                return Err((s, "extension and Any fields are not supported".into()))
            }
            _ => return Err((s, "expected a field name".into())),
        };
        let colon = matches!(lx.peek()?.0, Tok::Punct(b':'));
        if colon {
            lx.next()?;
        }
        let (value, end) = match lx.peek()?.0 {
            Tok::Punct(b'[') if colon => {
                lx.next()?;
                parse_list(lx)?
            }
            Tok::Punct(b'{' | b'<') => parse_value(lx)?,
            Tok::Str(_) | Tok::Word(_) | Tok::Ident(_) if colon => parse_value(lx)?,
            _ if !colon => {
                return Err((lx.peek()?.1, "expected ':' or '{' after field name".into()))
            }
            _ => return Err((lx.peek()?.1, "expected a value".into())),
        };
        fields.push(Field {
            name,
            start: s,
            end,
            value,
        });
        if matches!(lx.peek()?.0, Tok::Punct(b',' | b';')) {
            lx.next()?;
        }
    }
}

fn parse_list(lx: &mut Lexer<'_>) -> std::result::Result<(Value, usize), (usize, String)> {
    let mut items = vec![];
    if let (Tok::Punct(b']'), _, e) = lx.peek()? {
        lx.next()?;
        return Ok((Value::List(items), e));
    }
    loop {
        items.push(parse_value(lx)?.0);
        match lx.next()? {
            (Tok::Punct(b','), _, _) => {}
            (Tok::Punct(b']'), _, e) => return Ok((Value::List(items), e)),
            (_, s, _) => return Err((s, "expected ',' or ']'".into())),
        }
    }
}

fn parse_value(lx: &mut Lexer<'_>) -> std::result::Result<(Value, usize), (usize, String)> {
    let (t, s, e) = lx.next()?;
    match t {
        Tok::Punct(c @ (b'{' | b'<')) => {
            let close = if c == b'{' { b'}' } else { b'>' };
            if lx.depth >= MAX_NESTING {
                return Err((s, format!("messages nested more than {MAX_NESTING} deep")));
            }
            lx.depth += 1;
            let (fields, end) = parse_fields(lx, Some(close))?;
            lx.depth -= 1;
            Ok((Value::Message { open: e, fields }, end))
        }
        Tok::Str(mut bytes) => {
            // Adjacent literals form one string, as in C.
            let mut end = e;
            while let (Tok::Str(more), _, e2) = lx.peek()? {
                lx.next()?;
                bytes.extend_from_slice(&more);
                end = e2;
            }
            let kind = ScalarKind::Str(bytes);
            Ok((
                Value::Scalar(Scalar {
                    start: s,
                    end,
                    kind,
                }),
                end,
            ))
        }
        Tok::Word(w) | Tok::Ident(w) => {
            let kind = ScalarKind::Word(w);
            Ok((
                Value::Scalar(Scalar {
                    start: s,
                    end: e,
                    kind,
                }),
                e,
            ))
        }
        _ => Err((s, "expected a value".into())),
    }
}

/// "line L col C" for a byte offset (1-based, columns in bytes).
fn line_col(b: &[u8], pos: usize) -> String {
    let pos = pos.min(b.len());
    let line = b[..pos].iter().filter(|&&c| c == b'\n').count() + 1;
    let col = pos
        - b[..pos]
            .iter()
            .rposition(|&c| c == b'\n')
            .map_or(0, |i| i + 1)
        + 1;
    format!("line {line} col {col}")
}

fn parse_u64(w: &str) -> Option<u64> {
    if let Some(h) = w.strip_prefix("0x").or_else(|| w.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if w.len() > 1 && w.starts_with('0') {
        u64::from_str_radix(&w[1..], 8).ok()
    } else {
        w.parse().ok()
    }
}

// ---------------------------------------------------------------------------
// GuestOSConfig, as cml's guestos.proto defines it.

const CONFIG_FIELDS: &[&str] = &[
    "name",
    "hardware",
    "version",
    "mounts",
    "init_path",
    "init_param",
    "init_env",
    "mounts_setup",
    "feature_bg_booting",
    "feature_install_guest",
    "min_ram_limit",
    "def_ram_limit",
    "description",
    "description_long",
    "upstream_version",
    "icon",
    "build_date",
    "update_base_url",
];
const CONFIG_REPEATED: &[&str] = &["mounts", "init_param", "init_env", "mounts_setup"];

/// GuestOSMount fields and their numbers: new fields are inserted in number
/// order, as protobuf's own printers write them.
const MOUNT_FIELDS: &[(&str, u32)] = &[
    ("image_file", 1),
    ("mount_point", 2),
    ("fs_type", 3),
    ("mount_type", 4),
    ("min_size", 6),
    ("max_size", 7),
    ("def_size", 8),
    ("image_size", 10),
    ("image_sha1", 11),
    ("image_sha2_256", 12),
    ("mount_data", 13),
    ("image_verity_sha256", 14),
];

/// GuestOSMount.Type, value = index + 1.
const MOUNT_TYPES: &[&str] = &[
    "SHARED",
    "DEVICE",
    "DEVICE_RW",
    "EMPTY",
    "COPY",
    "FLASH",
    "OVERLAY_RO",
    "SHARED_RW",
    "OVERLAY_RW",
    "BIND_FILE",
    "BIND_FILE_RW",
    "STORE_ONLY",
];

/// The mount types whose image file cml checks (size and hash) before use,
/// and for which GyroidOS's config creator records them.
pub const IMAGE_MOUNT_TYPES: &[&str] =
    &["SHARED", "FLASH", "OVERLAY_RO", "SHARED_RW", "STORE_ONLY"];

/// One `mounts` or `mounts_setup` entry.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Mount {
    /// `mounts[0]`, `mounts_setup[1]`...
    pub id: String,
    pub image_file: String,
    pub mount_point: String,
    pub fs_type: String,
    pub mount_type: String,
    pub image_size: Option<u64>,
    pub image_sha1: Option<String>,
    pub image_sha2_256: Option<String>,
    pub image_verity_sha256: Option<String>,
    #[serde(skip)]
    layout: MountLayout,
}

impl Mount {
    /// Does cml check an image file for this mount?
    pub fn has_image(&self) -> bool {
        IMAGE_MOUNT_TYPES.contains(&self.mount_type.as_str())
    }
}

/// Where a mount's fields sit in the text.
#[derive(Clone, Debug, Default)]
struct MountLayout {
    /// (field number, name offset, end offset) of every known field, in text order.
    fields: Vec<(u32, usize, usize)>,
    /// Value spans of image_size, image_sha1, image_sha2_256 when present.
    values: BTreeMap<u32, (usize, usize)>,
    /// Offset just after the opening brace.
    open: usize,
}

/// A parsed GuestOS manifest, with the bytes it came from.
#[derive(Debug)]
pub struct GuestOsConfig {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub name: String,
    pub hardware: String,
    pub version: u64,
    pub description: Option<String>,
    pub build_date: Option<String>,
    pub mounts: Vec<Mount>,
    /// Things cml's parser may reject but we can still sign (unknown fields).
    pub warnings: Vec<String>,
    /// Why cml could not load this conf ("line L col C: what"), when it could
    /// not: `sign` and `verify` refuse it, `show` tells.
    pub cml_problem: Option<String>,
}

struct Ctx<'a> {
    path: &'a Path,
    bytes: &'a [u8],
}

impl Ctx<'_> {
    fn err(&self, pos: usize, msg: impl std::fmt::Display) -> Error {
        Error::input(self.path, format!("{}: {msg}", line_col(self.bytes, pos)))
    }

    fn string(&self, f: &Field) -> Result<String> {
        match &f.value {
            Value::Scalar(Scalar {
                kind: ScalarKind::Str(b),
                ..
            }) => String::from_utf8(b.clone())
                .map_err(|_| self.err(f.start, format!("'{}' is not UTF-8", f.name))),
            _ => Err(self.err(f.start, format!("'{}' must be a string", f.name))),
        }
    }

    fn word<'f>(&self, f: &'f Field) -> Result<&'f str> {
        match &f.value {
            Value::Scalar(Scalar {
                kind: ScalarKind::Word(w),
                ..
            }) => Ok(w),
            _ => Err(self.err(f.start, format!("'{}' must be a number or name", f.name))),
        }
    }

    fn uint(&self, f: &Field) -> Result<u64> {
        let w = self.word(f)?;
        parse_u64(w).ok_or_else(|| {
            self.err(
                f.start,
                format!("'{}' must be an unsigned integer, not '{w}'", f.name),
            )
        })
    }
}

/// Messages of a (possibly list-valued) message field, with their open offsets.
fn messages(f: &Field) -> Vec<(&[Field], usize)> {
    match &f.value {
        Value::Message { open, fields } => vec![(fields.as_slice(), *open)],
        Value::List(items) => items
            .iter()
            .filter_map(|v| match v {
                Value::Message { open, fields } => Some((fields.as_slice(), *open)),
                _ => None,
            })
            .collect(),
        Value::Scalar(_) => vec![],
    }
}

impl GuestOsConfig {
    pub fn load(path: &Path) -> Result<GuestOsConfig> {
        let bytes = fsutil::read_input(path, fsutil::InputKind::GuestosConf)?;
        GuestOsConfig::parse(path, bytes)
    }

    /// Parse leniently (protobuf's text format, as `show` reads it) and note
    /// in `cml_problem` whether cml's own parser would load the conf. When
    /// both fail, cml's reason is the error.
    pub fn parse(path: &Path, bytes: Vec<u8>) -> Result<GuestOsConfig> {
        let cml_problem = cml::check(&bytes)
            .err()
            .map(|(pos, msg)| format!("{}: {msg}", line_col(&bytes, pos)));
        match Self::parse_lenient(path, bytes) {
            Ok(mut m) => {
                m.cml_problem = cml_problem;
                Ok(m)
            }
            Err(e) => Err(match cml_problem {
                Some(p) => Error::input(path, p),
                None => e,
            }),
        }
    }

    /// Like `parse`, but a conf cml cannot load is an error.
    pub fn parse_for_cml(path: &Path, bytes: Vec<u8>) -> Result<GuestOsConfig> {
        let m = Self::parse(path, bytes)?;
        match &m.cml_problem {
            Some(p) => Err(Error::input(path, p.clone())),
            None => Ok(m),
        }
    }

    fn parse_lenient(path: &Path, bytes: Vec<u8>) -> Result<GuestOsConfig> {
        let cx = Ctx {
            path,
            bytes: &bytes,
        };
        let fields = parse_text(&bytes).map_err(|(pos, msg)| cx.err(pos, msg))?;
        let mut warnings = vec![];
        let mut seen = BTreeSet::new();
        for f in &fields {
            if !CONFIG_FIELDS.contains(&f.name.as_str()) {
                warnings.push(format!(
                    "{}: {}: unknown GuestOSConfig field '{}'",
                    path.display(),
                    line_col(&bytes, f.start),
                    f.name
                ));
            } else if !CONFIG_REPEATED.contains(&f.name.as_str()) && !seen.insert(f.name.as_str()) {
                return Err(cx.err(f.start, format!("'{}' is given twice", f.name)));
            }
        }
        let get = |n: &str| fields.iter().find(|f| f.name == n);
        let required = |n: &str| {
            get(n).ok_or_else(|| {
                Error::input(
                    path,
                    format!("missing required field '{n}' (not a GuestOS manifest?)"),
                )
            })
        };
        let name = cx.string(required("name")?)?;
        let hardware = cx.string(required("hardware")?)?;
        let version = cx.uint(required("version")?)?;
        // cml builds directory names from the name.
        if name.is_empty() || name.contains('/') {
            return Err(cx.err(
                required("name")?.start,
                format!("name '{name}' must be non-empty and have no '/'"),
            ));
        }
        let desc = required("description")?;
        let description = match messages(desc).first() {
            Some((m, _)) => match m.iter().find(|f| f.name == "en") {
                Some(en) => Some(cx.string(en)?),
                None => return Err(cx.err(desc.start, "description needs 'en'")),
            },
            None => return Err(cx.err(desc.start, "description must be a message")),
        };
        let build_date = get("build_date").map(|f| cx.string(f)).transpose()?;
        let mut mounts = vec![];
        for list in ["mounts", "mounts_setup"] {
            let mut index = 0;
            for f in fields.iter().filter(|f| f.name == list) {
                let ms = messages(f);
                if ms.is_empty() {
                    return Err(cx.err(f.start, format!("'{list}' must be a message")));
                }
                for (m, open) in ms {
                    let id = format!("{list}[{index}]");
                    mounts.push(Self::mount(&cx, f, m, open, id, &mut warnings)?);
                    index += 1;
                }
            }
        }
        Ok(GuestOsConfig {
            path: path.to_path_buf(),
            bytes,
            name,
            hardware,
            version,
            description,
            build_date,
            mounts,
            warnings,
            cml_problem: None,
        })
    }

    fn mount(
        cx: &Ctx<'_>,
        parent: &Field,
        m: &[Field],
        open: usize,
        id: String,
        warnings: &mut Vec<String>,
    ) -> Result<Mount> {
        let mut layout = MountLayout {
            open,
            ..Default::default()
        };
        let mut seen = BTreeSet::new();
        for f in m {
            match MOUNT_FIELDS.iter().find(|(n, _)| *n == f.name) {
                Some(&(_, num)) => {
                    if !seen.insert(num) {
                        return Err(cx.err(f.start, format!("{id}: '{}' is given twice", f.name)));
                    }
                    layout.fields.push((num, f.start, f.end));
                    if let Value::Scalar(s) = &f.value {
                        layout.values.insert(num, (s.start, s.end));
                    }
                }
                None => warnings.push(format!(
                    "{}: {}: unknown GuestOSMount field '{}'",
                    cx.path.display(),
                    line_col(cx.bytes, f.start),
                    f.name
                )),
            }
        }
        let get = |n: &str| m.iter().find(|f| f.name == n);
        let required = |n: &str| {
            get(n)
                .ok_or_else(|| cx.err(parent.start, format!("{id}: missing required field '{n}'")))
        };
        let mt = required("mount_type")?;
        let w = cx.word(mt)?;
        let mount_type = match parse_u64(w) {
            Some(n) if (1..=MOUNT_TYPES.len() as u64).contains(&n) => {
                MOUNT_TYPES[n as usize - 1].to_string()
            }
            _ if MOUNT_TYPES.contains(&w) => w.to_string(),
            _ => return Err(cx.err(mt.start, format!("{id}: unknown mount_type '{w}'"))),
        };
        let opt_str = |n: &str| get(n).map(|f| cx.string(f)).transpose();
        Ok(Mount {
            image_file: cx.string(required("image_file")?)?,
            mount_point: cx.string(required("mount_point")?)?,
            fs_type: cx.string(required("fs_type")?)?,
            mount_type,
            image_size: get("image_size").map(|f| cx.uint(f)).transpose()?,
            image_sha1: opt_str("image_sha1")?,
            image_sha2_256: opt_str("image_sha2_256")?,
            image_verity_sha256: opt_str("image_verity_sha256")?,
            id,
            layout,
        })
    }

    /// The file cml reads the signature from: NAME.sig next to NAME.conf.
    pub fn sibling(conf: &Path, ext: &str) -> PathBuf {
        conf.with_extension(ext)
    }
}

// ---------------------------------------------------------------------------
// Image files.

/// The `*.img` files under a directory, found once and looked up per mount.
pub struct ImageDir {
    root: PathBuf,
    by_name: HashMap<OsString, Vec<PathBuf>>,
}

impl ImageDir {
    /// Walk `root`. Symlinks to files count (Yocto deploy directories are full
    /// of them); symlinked directories are not entered, so there are no loops.
    pub fn scan(root: &Path) -> Result<ImageDir> {
        let meta = fs::metadata(root).at(root)?;
        if !meta.is_dir() {
            return Err(Error::input(root, "not a directory"));
        }
        let mut by_name: HashMap<OsString, Vec<PathBuf>> = HashMap::new();
        for p in files_under(root, "img")? {
            if let Some(name) = p.file_name() {
                by_name.entry(name.to_owned()).or_default().push(p);
            }
        }
        Ok(ImageDir {
            root: root.to_path_buf(),
            by_name,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The image for `image_file` of a GuestOS named `name` at `version`. cml
    /// reads `<store>/<name>-<version>/<image_file>.img`, with name and version
    /// from the conf's contents (daemon/guestos.c: `guestos_new_internal`,
    /// `guestos_check_mount_image_block`), whatever the conf file is called.
    /// Looked for, in this order:
    /// - `<name>-<version>/` next to the conf (cml's store layout), if under the root;
    /// - the root itself, when it is named `<name>-<version>`;
    /// - `<root>/<name>-<version>/`;
    /// - the only `<name>-<version>/` directory anywhere under the root that has
    ///   the file (two are an error).
    pub fn find(
        &self,
        conf: &Path,
        name: &str,
        version: u64,
        image_file: &str,
    ) -> Result<Option<PathBuf>> {
        let nv = format!("{name}-{version}");
        let file = format!("{image_file}.img");
        let canon_root = fs::canonicalize(&self.root).at(&self.root)?;
        let beside = fsutil::parent_dir(conf).join(&nv);
        if fs::canonicalize(&beside).is_ok_and(|d| d.starts_with(&canon_root)) {
            let p = beside.join(&file);
            if p.is_file() {
                return Ok(Some(p));
            }
        }
        if self.root.file_name() == Some(std::ffi::OsStr::new(&nv)) {
            let p = self.root.join(&file);
            if p.is_file() {
                return Ok(Some(p));
            }
        }
        let p = self.root.join(&nv).join(&file);
        if p.is_file() {
            return Ok(Some(p));
        }
        let Some(cands) = self.by_name.get(std::ffi::OsStr::new(&file)) else {
            return Ok(None);
        };
        let named: Vec<&PathBuf> = cands
            .iter()
            .filter(|p| p.parent().and_then(|d| d.file_name()) == Some(std::ffi::OsStr::new(&nv)))
            .collect();
        match named.as_slice() {
            [one] => Ok(Some((*one).clone())),
            [a, b, ..] => Err(Error::input(
                &self.root,
                format!(
                    "{file} for {} ({nv}) is ambiguous: {} and {}; keep each GuestOS's images in <name>-<version>/ next to its conf",
                    conf.display(),
                    a.display(),
                    b.display()
                ),
            )),
            [] => Ok(None),
        }
    }

    /// Where cml would look for an image that `find` did not find.
    pub fn expected(&self, name: &str, version: u64, image_file: &str) -> PathBuf {
        let nv = format!("{name}-{version}");
        let file = format!("{image_file}.img");
        if self.root.file_name() == Some(std::ffi::OsStr::new(&nv)) {
            self.root.join(file)
        } else {
            self.root.join(nv).join(file)
        }
    }
}

/// Size and hashes of an image file, as the manifest records them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ImageHash {
    pub size: u64,
    pub sha1: String,
    pub sha256: String,
    /// The dm-verity root hash of `<image>.hash.img`, when one was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_verity_sha256: Option<String>,
}

/// An image hashed, with its dm-verity hash image when one was asked for.
pub struct Hashed {
    pub hash: ImageHash,
    pub verity: Option<verity::HashImage>,
}

/// Read size of one piece of an image: large enough that the hash threads
/// spend their time hashing, small enough that a few fit in the cache.
const CHUNK: usize = 4 << 20;
/// Pieces in flight between the reader and the hash threads.
const CHUNKS: usize = 4;

/// Read an image once, computing SHA-1 and SHA-256 together.
pub fn hash_image(path: &Path) -> Result<ImageHash> {
    Ok(hash_image_with(path, None)?.hash)
}

/// Read an image once for SHA-1, SHA-256 and, with `verity`, the dm-verity
/// hash tree (the bytes of its `<image>.hash.img`). The hashes run on
/// threads of their own, fed the same buffers, so a large image costs about
/// the time of its slowest hash rather than the sum of all three.
pub fn hash_image_with(path: &Path, verity: Option<verity::Params>) -> Result<Hashed> {
    use std::sync::{mpsc, Arc};
    let mut f = fs::File::open(path).at(path)?;
    let expect = f.metadata().at(path)?.len();
    type Piece = Arc<Vec<u8>>;
    let lanes = 2 + usize::from(verity.is_some());
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut txs: Vec<mpsc::SyncSender<Piece>> = vec![];
    let mut rxs: Vec<mpsc::Receiver<Piece>> = vec![];
    for _ in 0..lanes {
        let (tx, rx) = mpsc::sync_channel::<Piece>(CHUNKS);
        txs.push(tx);
        rxs.push(rx);
    }
    // Each lane owns its hash; a lane returns what it computed.
    enum Out {
        Sha1(digest::Digest),
        Sha256(digest::Digest),
        Tree(Box<verity::Tree>),
    }
    let (size, outs) = std::thread::scope(|s| -> Result<(u64, Vec<Out>)> {
        let mut handles = vec![];
        for (lane, rx) in rxs.into_iter().enumerate() {
            let done = done_tx.clone();
            let params = verity.clone();
            handles.push(s.spawn(move || {
                let mut sha1 = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
                let mut sha256 = digest::Context::new(&digest::SHA256);
                let mut tree = params.map(verity::Tree::new);
                for piece in rx {
                    match lane {
                        0 => sha1.update(&piece),
                        1 => sha256.update(&piece),
                        _ => tree.as_mut().expect("verity lane").update(&piece),
                    }
                    drop(piece);
                    let _ = done.send(());
                }
                match lane {
                    0 => Out::Sha1(sha1.finish()),
                    1 => Out::Sha256(sha256.finish()),
                    _ => Out::Tree(Box::new(tree.expect("verity lane"))),
                }
            }));
        }
        drop(done_tx);
        // The reader: a buffer is refilled once every lane let go of it.
        let mut pool: Vec<Piece> = vec![];
        let mut size = 0u64;
        let read = (|| -> Result<()> {
            loop {
                let idx = loop {
                    if let Some(i) = pool.iter().position(|p| Arc::strong_count(p) == 1) {
                        break i;
                    }
                    if pool.len() < CHUNKS {
                        pool.push(Arc::new(vec![0u8; CHUNK]));
                        break pool.len() - 1;
                    }
                    if done_rx.recv().is_err() {
                        return Err(Error::Crypto(format!(
                            "{}: a hash thread stopped",
                            path.display()
                        )));
                    }
                };
                let buf = Arc::get_mut(&mut pool[idx]).expect("only the reader holds it");
                buf.resize(CHUNK, 0);
                // Fill the piece whole (the tree wants whole blocks).
                let mut n = 0;
                while n < CHUNK {
                    match f.read(&mut buf[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(Error::io(path, e)),
                    }
                }
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                size += n as u64;
                for tx in &txs {
                    if tx.send(Arc::clone(&pool[idx])).is_err() {
                        return Err(Error::Crypto(format!(
                            "{}: a hash thread stopped",
                            path.display()
                        )));
                    }
                }
                if n < CHUNK {
                    return Ok(());
                }
            }
        })();
        drop(txs);
        let outs = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| Error::Internal("hash thread panicked".into()))
            })
            .collect::<Result<Vec<_>>>()?;
        read?;
        Ok((size, outs))
    })?;
    // A build step still writing the image would leave hashes of a torn file.
    if size != expect || f.metadata().at(path)?.len() != size {
        return Err(Error::input(
            path,
            "image changed while it was being hashed",
        ));
    }
    let mut hash = ImageHash {
        size,
        sha1: String::new(),
        sha256: String::new(),
        image_verity_sha256: None,
    };
    let mut tree = None;
    for o in outs {
        match o {
            Out::Sha1(d) => hash.sha1 = crate::codec::hex(d.as_ref()),
            Out::Sha256(d) => hash.sha256 = crate::codec::hex(d.as_ref()),
            Out::Tree(t) => {
                let h = t
                    .finish()
                    .map_err(|why| Error::input(path, format!("no dm-verity hash image: {why}")))?;
                hash.image_verity_sha256 = Some(h.root.clone());
                tree = Some(h);
            }
        }
    }
    Ok(Hashed { hash, verity: tree })
}

/// `<image>.hash.img` next to `<image>.img`, where cml looks for it
/// (daemon/c_vol.c, `c_vol_hash_image_path_new`).
pub fn verity_path(image: &Path) -> PathBuf {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    image.with_file_name(format!("{stem}.hash.img"))
}

/// Hash several images, one per core at a time. Each path is read once;
/// those in `verity` also get their dm-verity hash image.
pub fn hash_images(
    paths: &BTreeSet<PathBuf>,
    verity: &HashMap<PathBuf, verity::Params>,
) -> Result<HashMap<PathBuf, Hashed>> {
    let paths: Vec<&PathBuf> = paths.iter().collect();
    let hashes = par::map(paths.len(), par::cores(), |i| {
        hash_image_with(paths[i], verity.get(paths[i]).cloned())
    })?;
    Ok(paths.into_iter().cloned().zip(hashes).collect())
}

/// What `--images` did for one mount.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageFill {
    pub mount: String,
    pub image_file: String,
    pub mount_type: String,
    /// The image used, or None when DIR has none (the mount is left as it was).
    pub path: Option<PathBuf>,
    #[serde(flatten)]
    pub hash: Option<ImageHash>,
    /// The conf's values changed.
    pub changed: bool,
}

/// Rewrite the image_size / image_sha1 / image_sha2_256 values of the given
/// mounts, inserting the fields that are missing after their predecessors in
/// field-number order, with the indentation of the line above.
fn fill_text(bytes: &[u8], mounts: &[(&Mount, &ImageHash)]) -> Vec<u8> {
    let mut edits: Vec<(usize, usize, Vec<u8>)> = vec![];
    for (m, h) in mounts {
        let mut values: Vec<(u32, &str, String)> = vec![
            (10, "image_size", h.size.to_string()),
            (11, "image_sha1", format!("\"{}\"", h.sha1)),
            (12, "image_sha2_256", format!("\"{}\"", h.sha256)),
        ];
        if let Some(root) = &h.image_verity_sha256 {
            values.push((14, "image_verity_sha256", format!("\"{root}\"")));
        }
        // Missing fields grouped by the field they follow.
        let mut inserts: BTreeMap<usize, Vec<(&str, &str)>> = BTreeMap::new();
        let mut anchors: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
        for (num, name, text) in &values {
            if let Some(&(s, e)) = m.layout.values.get(num) {
                if bytes[s..e] != *text.as_bytes() {
                    edits.push((s, e, text.clone().into_bytes()));
                }
                continue;
            }
            let anchor = m
                .layout
                .fields
                .iter()
                .filter(|(n, _, _)| n < num)
                .max_by_key(|(_, _, end)| *end)
                .map(|&(_, s, e)| (s, e));
            let key = anchor.map_or(m.layout.open, |(_, e)| e);
            anchors.insert(key, anchor.unwrap_or((m.layout.open, m.layout.open)));
            inserts.entry(key).or_default().push((name, text));
        }
        for (key, fields) in inserts {
            let (start, end) = anchors[&key];
            edits.push(insertion(bytes, start, end, &fields));
        }
    }
    edits.sort_by_key(|e| (e.0, e.1));
    let mut out = Vec::with_capacity(bytes.len() + 256);
    let mut at = 0;
    for (s, e, text) in edits {
        out.extend_from_slice(&bytes[at..s]);
        out.extend_from_slice(&text);
        at = e;
    }
    out.extend_from_slice(&bytes[at..]);
    out
}

/// New `name: value` fields placed after the field spanning `start..end`: on
/// lines of their own when that field has its line to itself (trailing
/// comments stay where they are), else inline after it.
fn insertion(
    b: &[u8],
    start: usize,
    end: usize,
    fields: &[(&str, &str)],
) -> (usize, usize, Vec<u8>) {
    let line_start = b[..start]
        .iter()
        .rposition(|&c| c == b'\n')
        .map_or(0, |i| i + 1);
    let indent = &b[line_start..start];
    let line_end = b[end..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(b.len(), |i| end + i);
    let mut rest = Lexer {
        b: &b[..line_end],
        pos: end,
        depth: 0,
    };
    let alone_after = loop {
        match rest.next() {
            Ok((Tok::Punct(b',' | b';'), _, _)) => continue,
            Ok((Tok::Eof, _, _)) => break true,
            _ => break false,
        }
    };
    let own_line = indent.iter().all(|c| *c == b' ' || *c == b'\t') && alone_after && start > 0;
    let mut text = vec![];
    if own_line {
        let crlf = line_end > 0 && b.get(line_end - 1) == Some(&b'\r') && line_end < b.len();
        let pos = if crlf { line_end - 1 } else { line_end };
        let nl: &[u8] = if crlf { b"\r\n" } else { b"\n" };
        for (name, value) in fields {
            text.extend_from_slice(nl);
            text.extend_from_slice(indent);
            text.extend_from_slice(format!("{name}: {value}").as_bytes());
        }
        (pos, pos, text)
    } else {
        for (name, value) in fields {
            text.extend_from_slice(format!(" {name}: {value}").as_bytes());
        }
        (end, end, text)
    }
}

// ---------------------------------------------------------------------------
// Signing.

/// cml's `ssl_verify_signature_from_digest` (common/ssl_util.c).
pub(crate) const CML_KEY_RULE: &str = "cml verifies GuestOS signatures only with RSA (PKCS#1 v1.5) or RSA-PSS keys; any other key is \"Unsupported key type\" (ssl_verify_signature_from_digest, common/ssl_util.c)";

/// The scheme cml checks a GuestOS signature with: SHA-512, padded as the
/// signer certificate's key type says; None for the keys cml refuses.
pub(crate) fn cml_scheme(kind: Option<KeyKind>) -> Option<Scheme> {
    kind.filter(|k| matches!(k, KeyKind::Rsa | KeyKind::RsaPss))?
        .scheme_with(Hash::Sha512)
}

/// The scheme cml will check with: it follows the key type in the signer's
/// certificate, not what the key file would allow.
fn scheme_for(id: &Identity, cert_origin: &Path) -> Result<Scheme> {
    let key = x509::key_info(&x509::parse(&id.cert, cert_origin)?);
    if key.kind == Some(KeyKind::Rsa) && id.signer.rsa_pss_only() {
        return Err(Error::input(
            cert_origin,
            format!(
                "key {} is RSA-PSS but its certificate is rsaEncryption, for which cml checks PKCS#1 v1.5",
                id.signer.origin()
            ),
        ));
    }
    cml_scheme(key.kind).ok_or_else(|| {
        Error::input(
            cert_origin,
            format!("{} key: {CML_KEY_RULE}", key.algorithm),
        )
    })
}

/// Check `signature` over `msg` with the key of `leaf`, as cml does.
fn verify_raw(
    leaf: &X509Certificate<'_>,
    msg: &[u8],
    signature: &[u8],
) -> std::result::Result<Scheme, String> {
    let key = x509::key_info(leaf);
    let scheme = cml_scheme(key.kind)
        .ok_or_else(|| format!("{} signer key: {CML_KEY_RULE}", key.algorithm))?;
    sigalg::verify(leaf.public_key(), scheme, msg, signature)
        .map(|()| scheme)
        .map_err(|e| format!("{} {e}", scheme.name()))
}

/// Options for `sign`.
pub struct SignOptions<'a> {
    /// Fill image sizes and hashes from this directory first.
    pub images: Option<&'a ImageDir>,
    /// Also write a detached CMS signature NAME.p7s.
    pub cms: bool,
    /// With `images`: sign even when an image cml checks is not there (its
    /// values in the conf are left as they are). Without it that is an error.
    pub allow_missing_images: bool,
    /// With `images`: write `<image>.hash.img` and fill image_verity_sha256
    /// for every SHARED and SHARED_RW mount. Mounts whose conf already
    /// carries image_verity_sha256 get it either way.
    pub verity: bool,
    pub signing_time: Option<OffsetDateTime>,
}

#[derive(Debug, serde::Serialize)]
pub struct SignReport {
    pub conf: PathBuf,
    pub sig: PathBuf,
    pub cert: PathBuf,
    pub p7s: Option<PathBuf>,
    pub name: String,
    pub version: u64,
    pub scheme: String,
    pub signer: String,
    /// The conf was rewritten with new image values.
    pub conf_updated: bool,
    pub images: Vec<ImageFill>,
    pub warnings: Vec<String>,
}

/// The regular files named `*.EXT` under `root`, in file-name order per
/// directory. Symlinks to files count (Yocto deploy directories are full of
/// them); symlinked directories are not entered, so there are no loops.
fn files_under(root: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.map_err(|err| {
            let at = err.path().unwrap_or(root).to_path_buf();
            Error::io(at, err.into())
        })?;
        let p = e.path();
        if !e.file_type().is_dir()
            && p.extension().is_some_and(|x| x == ext)
            && fs::metadata(p).is_ok_and(|m| m.is_file())
        {
            out.push(e.into_path());
        }
    }
    Ok(out)
}

/// Every `*.conf` under `dir`, sorted.
pub fn find_confs(dir: &Path) -> Result<Vec<PathBuf>> {
    let meta = fs::metadata(dir).at(dir)?;
    if !meta.is_dir() {
        return Err(Error::input(dir, "not a directory"));
    }
    let out = files_under(dir, "conf")?;
    if out.is_empty() {
        return Err(Error::input(dir, "no *.conf files found"));
    }
    Ok(out)
}

struct Prepared {
    manifest: GuestOsConfig,
    text: Vec<u8>,
    fills: Vec<ImageFill>,
}

/// Sign GuestOS manifests: NAME.sig and NAME.cert (and NAME.p7s) next to each
/// NAME.conf. Everything is read, hashed and signed before anything is
/// written, so a bad input leaves every file as it was.
pub fn sign(confs: &[PathBuf], id: &Identity, opts: &SignOptions<'_>) -> Result<Vec<SignReport>> {
    let cert_origin = Path::new("signer certificate");
    let scheme = scheme_for(id, cert_origin)?;
    let leaf = x509::parse(&id.cert, cert_origin)?;
    let signer = leaf.subject().to_string();

    let mut prepared = vec![];
    let mut wanted = BTreeSet::new();
    let mut verity_params: HashMap<PathBuf, verity::Params> = HashMap::new();
    let mut located = vec![];
    for conf in confs {
        let manifest = GuestOsConfig::load(conf)?;
        if let Some(p) = &manifest.cml_problem {
            return Err(Error::input(conf, p.clone()));
        }
        let mut found = vec![];
        if let Some(dir) = opts.images {
            for (i, m) in manifest.mounts.iter().enumerate() {
                if !m.has_image() {
                    continue;
                }
                let verity_type = VERITY_MOUNT_TYPES.contains(&m.mount_type.as_str());
                let with_verity = m.image_verity_sha256.is_some() || (opts.verity && verity_type);
                if with_verity && !verity_type {
                    return Err(Error::input(conf, verity_type_rule(m)));
                }
                let p = dir.find(conf, &manifest.name, manifest.version, &m.image_file)?;
                match &p {
                    Some(p) => {
                        wanted.insert(p.clone());
                        if with_verity {
                            // The salt follows where cml finds the image; the
                            // first mount naming a file decides it.
                            verity_params.entry(p.clone()).or_insert_with(|| {
                                verity::Params::derive(
                                    &manifest.name,
                                    manifest.version,
                                    &m.image_file,
                                )
                            });
                        }
                    }
                    None if !opts.allow_missing_images => {
                        return Err(Error::input(
                            conf,
                            format!(
                                "{} ({}): image {} not found (cml reads <store>/<name>-<version>/<image_file>.img); --allow-missing-images signs without it",
                                m.id,
                                m.mount_type,
                                dir.expected(&manifest.name, manifest.version, &m.image_file)
                                    .display()
                            ),
                        ))
                    }
                    None => {}
                }
                found.push((i, p, with_verity));
            }
        }
        located.push(found);
        prepared.push(manifest);
    }
    let mut hashes = hash_images(&wanted, &verity_params)?;
    // The hash images go next to their images, staged now and published
    // before the confs that name their roots.
    let mut staged_trees = vec![];
    for (p, h) in &mut hashes {
        if let Some(t) = h.verity.take() {
            staged_trees.push(fsutil::Staged::with_data(
                &verity_path(p),
                fsutil::tag::TMP,
                fsutil::PUBLIC_MODE,
                &t.bytes,
            )?);
        }
    }

    let mut work = vec![];
    for (manifest, found) in prepared.into_iter().zip(located) {
        let mut fills = vec![];
        let mut edits = vec![];
        for (i, p, with_verity) in found {
            let m = &manifest.mounts[i];
            let hash = p.as_ref().map(|p| {
                let mut h = hashes[p].hash.clone();
                if !with_verity {
                    h.image_verity_sha256 = None;
                }
                h
            });
            let changed = hash.as_ref().is_some_and(|h| {
                m.image_size != Some(h.size)
                    || m.image_sha1.as_deref() != Some(&h.sha1)
                    || m.image_sha2_256.as_deref() != Some(&h.sha256)
                    || (h.image_verity_sha256.is_some()
                        && m.image_verity_sha256 != h.image_verity_sha256)
            });
            if let Some(h) = &hash {
                edits.push((m, h.clone()));
            }
            fills.push(ImageFill {
                mount: m.id.clone(),
                image_file: m.image_file.clone(),
                mount_type: m.mount_type.clone(),
                path: p,
                hash,
                changed,
            });
        }
        let pairs: Vec<(&Mount, &ImageHash)> = edits.iter().map(|(m, h)| (*m, h)).collect();
        let text = if pairs.is_empty() {
            manifest.bytes.clone()
        } else {
            let t = fill_text(&manifest.bytes, &pairs);
            // The edited text must still be a manifest with exactly our values.
            let again = GuestOsConfig::parse_for_cml(&manifest.path, t.clone())?;
            for (m, h) in &pairs {
                let n = again.mounts.iter().find(|n| n.id == m.id);
                let good = n.is_some_and(|n| {
                    n.image_size == Some(h.size)
                        && n.image_sha1.as_deref() == Some(&h.sha1)
                        && n.image_sha2_256.as_deref() == Some(&h.sha256)
                        && (h.image_verity_sha256.is_none()
                            || n.image_verity_sha256 == h.image_verity_sha256)
                });
                if !good {
                    return Err(Error::input(
                        &manifest.path,
                        format!("{}: could not update the image fields", m.id),
                    ));
                }
            }
            t
        };
        work.push(Prepared {
            manifest,
            text,
            fills,
        });
    }

    let mut pem = x509::pem_cert(&id.cert);
    for c in &id.chain {
        pem.push_str(&x509::pem_cert(c));
    }
    let mut outputs = vec![];
    for w in &work {
        let signature = id.signer.sign(scheme, &w.text)?;
        // A key that does not match, or an HSM that pads differently, would
        // produce files cml rejects; catch it here.
        verify_raw(&leaf, &w.text, &signature).map_err(|e| {
            Error::Crypto(format!(
                "{}: own signature check failed: {e}",
                w.manifest.path.display()
            ))
        })?;
        let p7s = if opts.cms {
            Some(cms_sign(&w.text, id, opts.signing_time)?)
        } else {
            None
        };
        outputs.push((signature, p7s));
    }

    fsutil::publish(staged_trees)?;
    let mut reports = vec![];
    for (w, (signature, p7s)) in work.into_iter().zip(outputs) {
        let conf = &w.manifest.path;
        let updated = w.text != w.manifest.bytes;
        if updated {
            // Through symlinks to the real file, keeping its mode.
            let real = fs::canonicalize(conf).at(conf)?;
            let mode = fs::metadata(&real).at(&real)?.permissions().mode() & 0o7777;
            fsutil::write_atomic(&real, &w.text, mode)?;
        }
        let sig_path = GuestOsConfig::sibling(conf, "sig");
        let cert_path = GuestOsConfig::sibling(conf, "cert");
        fsutil::write_atomic(&sig_path, &signature, fsutil::PUBLIC_MODE)?;
        fsutil::write_atomic(&cert_path, pem.as_bytes(), fsutil::PUBLIC_MODE)?;
        let p7s_path = match p7s {
            Some(der) => {
                let p = GuestOsConfig::sibling(conf, "p7s");
                fsutil::write_atomic(&p, &der, fsutil::PUBLIC_MODE)?;
                Some(p)
            }
            None => None,
        };
        reports.push(SignReport {
            conf: conf.clone(),
            sig: sig_path,
            cert: cert_path,
            p7s: p7s_path,
            name: w.manifest.name.clone(),
            version: w.manifest.version,
            scheme: scheme.name(),
            signer: signer.clone(),
            conf_updated: updated,
            images: w.fills,
            warnings: w.manifest.warnings,
        });
    }
    Ok(reports)
}

/// Detached CMS SignedData over the conf with SHA-512, what `openssl cms -sign
/// -binary -md sha512 -outform DER` makes.
fn cms_sign(content: &[u8], id: &Identity, t: Option<OffsetDateTime>) -> Result<Vec<u8>> {
    crate::pkcs7::sign_detached(
        content,
        &crate::pkcs7::DetachedOptions {
            signer: id.signer.as_ref(),
            cert: &id.cert,
            chain: &id.chain,
            hash: Hash::Sha512,
            signed_attrs: true,
            signing_time: t,
            content_info: true,
        },
    )
}

// ---------------------------------------------------------------------------
// Verification.

pub struct VerifyOptions<'a> {
    /// Trust anchors (DER): cml's ssig_rootca.
    pub trust: &'a [Vec<u8>],
    /// Also check the images of the manifest in this directory.
    pub images: Option<&'a Path>,
    /// Check certificate validity periods (cml does once provisioned).
    pub check_time: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct ImageCheck {
    pub mount: String,
    pub image_file: String,
    pub path: Option<PathBuf>,
    pub size: Option<u64>,
    /// The hash cml compares: sha256, else sha1.
    pub hash: Option<&'static str>,
    pub ok: bool,
    pub problems: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct VerifyReport {
    pub conf: PathBuf,
    pub sig: PathBuf,
    pub cert: PathBuf,
    pub name: Option<String>,
    pub version: Option<u64>,
    pub signer: String,
    pub scheme: Option<String>,
    pub signature_ok: bool,
    /// Subjects from the signer up to the trust anchor.
    pub chain: Vec<String>,
    pub chain_ok: bool,
    pub images: Vec<ImageCheck>,
    pub problems: Vec<String>,
    pub ok: bool,
}

/// Verify NAME.conf with NAME.sig and NAME.cert as cml does: the first
/// certificate is the signer, the others are untrusted intermediates, and the
/// path must end at one of the trust anchors.
pub fn verify(conf: &Path, opts: &VerifyOptions<'_>) -> Result<VerifyReport> {
    let bytes = fsutil::read_input(conf, fsutil::InputKind::GuestosConf)?;
    let sig_path = GuestOsConfig::sibling(conf, "sig");
    let cert_path = GuestOsConfig::sibling(conf, "cert");
    let signature = fsutil::read_input(&sig_path, fsutil::InputKind::Signature)?;
    let certs = x509::read_certs(&cert_path)?;
    let leaf = x509::parse(&certs[0], &cert_path)?;
    let mut problems = vec![];

    let scheme = match verify_raw(&leaf, &bytes, &signature) {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(format!("{}: {e}", sig_path.display()));
            None
        }
    };
    // cml: X509_verify_cert with its defaults, the root file as the store.
    let rules = chain::Rules::root(opts.check_time.then(OffsetDateTime::now_utc));
    let (chain, chain_problem) = match chain::build(&certs[0], &certs[1..], opts.trust, &rules) {
        Ok(p) => (p.certs, None),
        Err(e) => (vec![], Some(e)),
    };
    if let Some(p) = &chain_problem {
        problems.push(format!("{}: {p}", cert_path.display()));
    }
    let chain_ok = chain_problem.is_none();
    let chain_subjects = chain
        .iter()
        .filter_map(|d| {
            x509::parse(d, &cert_path)
                .ok()
                .map(|c| c.subject().to_string())
        })
        .collect();

    // A conf cml cannot parse is rejected by it, whatever the signature says.
    let manifest = match GuestOsConfig::parse_for_cml(conf, bytes) {
        Ok(m) => Some(m),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    let mut images = vec![];
    if let (Some(dir), Some(m)) = (opts.images, &manifest) {
        images = check_images(m, &ImageDir::scan(dir)?)?;
        for c in &images {
            for p in &c.problems {
                problems.push(format!(
                    "{}: {} {}.img: {p}",
                    conf.display(),
                    c.mount,
                    c.image_file
                ));
            }
        }
    }
    let ok = problems.is_empty();
    Ok(VerifyReport {
        conf: conf.to_path_buf(),
        sig: sig_path,
        cert: cert_path,
        name: manifest.as_ref().map(|m| m.name.clone()),
        version: manifest.as_ref().map(|m| m.version),
        signer: leaf.subject().to_string(),
        scheme: scheme.map(Scheme::name),
        signature_ok: scheme.is_some(),
        chain: chain_subjects,
        chain_ok: chain_ok && chain_problem.is_none(),
        images,
        problems,
        ok,
    })
}

fn check_images(m: &GuestOsConfig, dir: &ImageDir) -> Result<Vec<ImageCheck>> {
    let mut located = vec![];
    let mut wanted = BTreeSet::new();
    for mount in m.mounts.iter().filter(|x| x.has_image()) {
        let p = dir.find(&m.path, &m.name, m.version, &mount.image_file)?;
        if let Some(p) = &p {
            wanted.insert(p.clone());
        }
        located.push((mount, p));
    }
    // With the salt of each hash image there is, so that one read of the
    // image also rebuilds its hash image for comparison.
    let mut salts = HashMap::new();
    let mut sb_problems: HashMap<PathBuf, String> = HashMap::new();
    for (mount, p) in &located {
        let Some(p) = p else { continue };
        if mount.image_verity_sha256.is_none() || salts.contains_key(p) {
            continue;
        }
        match read_superblock(&verity_path(p)) {
            Ok(sb) => {
                salts.insert(p.clone(), sb.params);
            }
            Err(why) => {
                sb_problems.insert(p.clone(), why);
            }
        }
    }
    let hashes = hash_images(&wanted, &salts)?;
    let mut out = vec![];
    for (mount, p) in located {
        let mut problems = vec![];
        let mut hash = None;
        let hashed = p.as_ref().map(|p| &hashes[p]);
        let h = hashed.map(|h| &h.hash);
        match h {
            None => problems.push(format!(
                "{}.img not found: cml reads {}",
                mount.image_file,
                dir.expected(&m.name, m.version, &mount.image_file)
                    .display()
            )),
            Some(h) => {
                match mount.image_size {
                    None => problems.push("no image_size in the manifest".into()),
                    Some(s) if s != h.size => {
                        problems.push(format!("size is {} bytes, the manifest says {s}", h.size))
                    }
                    _ => {}
                }
                // cml compares SHA-256 when present, else SHA-1; a SHA-1 that
                // is present but wrong is reported too.
                let checks = [
                    ("sha256", mount.image_sha2_256.as_deref(), &h.sha256),
                    ("sha1", mount.image_sha1.as_deref(), &h.sha1),
                ];
                for (name, want, got) in checks {
                    if let Some(want) = want {
                        hash.get_or_insert(name);
                        if !want.eq_ignore_ascii_case(got) {
                            problems.push(format!("{name} is {got}, the manifest says {want}"));
                        }
                    }
                }
                if hash.is_none() {
                    problems.push("no image_sha2_256 or image_sha1 in the manifest".into());
                }
                if let (Some(want), Some(p)) = (mount.image_verity_sha256.as_deref(), &p) {
                    problems.extend(check_verity(
                        mount,
                        want,
                        p,
                        sb_problems.get(p),
                        hashed.and_then(|h| h.verity.as_ref()),
                    ));
                }
            }
        }
        out.push(ImageCheck {
            mount: mount.id.clone(),
            image_file: mount.image_file.clone(),
            size: h.map(|h| h.size),
            path: p,
            hash,
            ok: problems.is_empty(),
            problems,
        });
    }
    Ok(out)
}

/// The superblock of a hash image, read bounded.
fn read_superblock(hash_img: &Path) -> std::result::Result<verity::Superblock, String> {
    let mut head = vec![];
    fs::File::open(hash_img)
        .and_then(|f| f.take(verity::BLOCK as u64).read_to_end(&mut head))
        .map_err(|e| format!("{}: {e}", hash_img.display()))?;
    verity::parse_superblock(&head).map_err(|e| format!("{}: {e}", hash_img.display()))
}

/// What cml's dm-verity device would make of a mount: the mount type must be
/// one cml finds a hash image for, the hash image must hold the tree of the
/// image with the root hash the conf names.
fn check_verity(
    mount: &Mount,
    want: &str,
    image: &Path,
    sb_problem: Option<&String>,
    rebuilt: Option<&verity::HashImage>,
) -> Vec<String> {
    if !VERITY_MOUNT_TYPES.contains(&mount.mount_type.as_str()) {
        return vec![verity_type_rule(mount)];
    }
    let hp = verity_path(image);
    if let Some(why) = sb_problem {
        return vec![format!("image_verity_sha256 is set, but {why}")];
    }
    let Some(rebuilt) = rebuilt else {
        return vec![format!("{}: no dm-verity hash tree", hp.display())];
    };
    let mut problems = vec![];
    if !want.eq_ignore_ascii_case(&rebuilt.root) {
        problems.push(format!(
            "dm-verity root hash of the image is {}, the manifest says {want}",
            rebuilt.root
        ));
    }
    match fs::File::open(&hp).and_then(|f| {
        let mut head = vec![];
        f.take(rebuilt.bytes.len() as u64 + 1)
            .read_to_end(&mut head)
            .map(|_| head)
    }) {
        Ok(b) if b == rebuilt.bytes => {}
        // veritysetup may leave a larger, zero-filled hash device (GyroidOS
        // pre-creates 10 MB); the kernel reads only the tree.
        Ok(b) if b.len() > rebuilt.bytes.len() && b.starts_with(&rebuilt.bytes) => {}
        Ok(_) => problems.push(format!(
            "{}: the hash tree does not match the image",
            hp.display()
        )),
        Err(e) => problems.push(format!("{}: {e}", hp.display())),
    }
    problems
}

/// The mount types cml opens a dm-verity device for: it finds the hash
/// image only for these (daemon/c_vol.c, `c_vol_hash_image_path_new`).
pub const VERITY_MOUNT_TYPES: &[&str] = &["SHARED", "SHARED_RW"];

fn verity_type_rule(m: &Mount) -> String {
    format!(
        "{} ({}): image_verity_sha256 is set, but cml sets up dm-verity only for SHARED and SHARED_RW mounts (c_vol_hash_image_path_new, daemon/c_vol.c)",
        m.id, m.mount_type
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = "name: \"core\"\nhardware: \"x86\"\nversion: 1\ninit_path: \"/sbin/cservice\"\nmounts {\n\timage_file: \"root\"\n\tmount_point: \"/\"\n\tfs_type: \"squashfs\"\n\tmount_type: SHARED_RW # the rootfs\n}\nmounts {\n\timage_file: \"tmpfs\"\n\tmount_point: \"/data/\"\n\tfs_type: \"tmpfs\"\n\tmount_type: EMPTY\n\tdef_size: 12\n}\ndescription {\n\ten: \"yocto based core userland (x86)\"\n}\n";

    fn parse(s: &str) -> GuestOsConfig {
        GuestOsConfig::parse(Path::new("t.conf"), s.as_bytes().to_vec()).unwrap()
    }

    fn h() -> ImageHash {
        ImageHash {
            size: 4096,
            sha1: "a".repeat(40),
            sha256: "b".repeat(64),
            image_verity_sha256: None,
        }
    }

    fn fill(s: &str) -> String {
        let m = parse(s);
        let h = h();
        let pairs: Vec<_> = m
            .mounts
            .iter()
            .filter(|m| m.has_image())
            .map(|m| (m, &h))
            .collect();
        String::from_utf8(fill_text(&m.bytes, &pairs)).unwrap()
    }

    #[test]
    fn parses_gyroidos_template() {
        let m = parse(CONF);
        assert_eq!(
            (m.name.as_str(), m.hardware.as_str(), m.version),
            ("core", "x86", 1)
        );
        assert_eq!(m.mounts.len(), 2);
        assert_eq!(m.mounts[0].mount_type, "SHARED_RW");
        assert!(m.mounts[0].has_image() && !m.mounts[1].has_image());
        assert!(m.warnings.is_empty());
    }

    #[test]
    fn inserts_missing_fields_after_mount_type_keeping_comments() {
        let out = fill(CONF);
        let want = CONF.replace(
            "\tmount_type: SHARED_RW # the rootfs\n",
            &format!(
                "\tmount_type: SHARED_RW # the rootfs\n\timage_size: 4096\n\timage_sha1: \"{}\"\n\timage_sha2_256: \"{}\"\n",
                "a".repeat(40),
                "b".repeat(64)
            ),
        );
        assert_eq!(out, want);
        // Filling again changes nothing.
        assert_eq!(fill(&out), out);
    }

    #[test]
    fn replaces_existing_values_only() {
        let conf = "name: 'x' hardware: \"x86\" version: 0x2\ndescription < en: \"d\" >\nmounts {\n  image_file: \"root\"\n  mount_point: \"/\"\n  fs_type: \"ext4\"\n  mount_type: 1\n  image_size: 17\n  image_sha1: \"00\"\n  image_sha2_256: \"11\" \"22\"\n  mount_data: \"context=x\"\n}\n";
        let out = fill(conf);
        let want = conf
            .replace("image_size: 17", "image_size: 4096")
            .replace(
                "image_sha1: \"00\"",
                &format!("image_sha1: \"{}\"", "a".repeat(40)),
            )
            .replace("\"11\" \"22\"", &format!("\"{}\"", "b".repeat(64)));
        assert_eq!(out, want);
        assert_eq!(parse(conf).version, 2);
    }

    #[test]
    fn inline_mounts_get_inline_fields_and_crlf_is_kept() {
        let conf = "name: \"x\"\r\nhardware: \"arm\"\r\nversion: 3\r\ndescription { en: \"d\" }\r\nmounts { image_file: \"boot\" mount_point: \"\" fs_type: \"vfat\" mount_type: FLASH }\r\nmounts_setup {\r\n\timage_file: \"root\"\r\n\tmount_point: \"/\"\r\n\tfs_type: \"ext4\"\r\n\tmount_type: SHARED\r\n\timage_sha2_256: \"00\"\r\n}\r\n";
        let out = fill(conf);
        let a = "a".repeat(40);
        let b = "b".repeat(64);
        let want = conf
            .replace(
                "mount_type: FLASH }",
                &format!("mount_type: FLASH image_size: 4096 image_sha1: \"{a}\" image_sha2_256: \"{b}\" }}"),
            )
            .replace(
                "\tmount_type: SHARED\r\n\timage_sha2_256: \"00\"\r\n",
                &format!("\tmount_type: SHARED\r\n\timage_size: 4096\r\n\timage_sha1: \"{a}\"\r\n\timage_sha2_256: \"{b}\"\r\n"),
            );
        assert_eq!(out, want);
        let m = parse(&out);
        assert_eq!(m.mounts[1].id, "mounts_setup[0]");
        assert_eq!(m.mounts[1].image_sha2_256.as_deref(), Some(b.as_str()));
    }

    #[test]
    fn bad_input_is_an_error_with_a_position() {
        let cases = [
            ("name: \"x", "line 1 col 7: unterminated string"),
            ("name: \"x\"\nhardware: \"x86\"\nversion: 1\ndescription { en: \"d\"\n", "missing '}'"),
            ("name: \"x\"\nhardware: \"x86\"\ndescription { en: \"d\" }\n", "missing required field 'version'"),
            ("name: \"x\" name: \"y\"", "line 1 col 11: 'name' is given twice"),
            ("name: \"x\" hardware: \"h\" version: -1 description { en: \"\" }", "unsigned integer"),
            ("name: \"x\" hardware: \"h\" version: 1 description { en: \"\" } mounts { image_file: \"a\" mount_point: \"/\" fs_type: \"e\" mount_type: BOGUS }", "unknown mount_type 'BOGUS'"),
            ("name: \"x\" hardware: \"h\" version: 1 description { en: \"\" } mounts { image_file: \"a\" mount_type: SHARED }", "mounts[0]: missing required field 'mount_point'"),
            ("name \"x\"", "expected ':' or '{'"),
            ("[ext]: 1", "not supported"),
            ("name: \"a/b\" hardware: \"h\" version: 1 description { en: \"\" }", "no '/'"),
        ];
        for (text, want) in cases {
            let e = GuestOsConfig::parse(Path::new("t.conf"), text.as_bytes().to_vec())
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("t.conf: ") && e.contains(want),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_warnings() {
        let m = parse(&CONF.replace("init_path", "init_pth"));
        assert_eq!(m.warnings.len(), 1);
        assert!(m.warnings[0].contains("line 4 col 1: unknown GuestOSConfig field 'init_pth'"));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x2545f4914f6cdd1du64;
        let base = CONF.as_bytes();
        for _ in 0..3000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut b = base.to_vec();
            let pos = (seed as usize) % b.len();
            b[pos] = (seed >> 32) as u8;
            b.truncate((seed >> 40) as usize % (b.len() + 1));
            if let Ok(m) = GuestOsConfig::parse(Path::new("t"), b.clone()) {
                let h = h();
                let pairs: Vec<_> = m.mounts.iter().map(|x| (x, &h)).collect();
                let _ = fill_text(&b, &pairs);
            }
        }
    }

    #[test]
    fn escapes() {
        let m = parse(
            "name: \"a\\x41\\101\\u00e9\\n\" hardware: 'h\\'' version: 1 description { en: \"\" }",
        );
        assert_eq!(m.name, "aAAé\n");
        assert_eq!(m.hardware, "h'");
    }
}
