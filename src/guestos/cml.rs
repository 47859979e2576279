//! What GyroidOS's cml can load.
//!
//! cml reads a GuestOS conf with `protobuf_message_new_from_buf`
//! (cml `common/protobuf-text.c`): the bytes become a C string, GyroidOS's fork
//! of protobuf-c-text parses it (`protobuf-c-text/parse.re` in
//! gyroidos/external_protobuf-c-text: an re2c lexer and a four-state machine),
//! then `protobuf_c_message_check` (protobuf-c) insists on the required string
//! and message fields. The schema is cml's `daemon/guestos.proto`.
//!
//! [`check`] mirrors that and returns the first thing cml refuses, with its
//! byte offset. It also refuses the few inputs that cml reads differently from
//! how they look (a NUL byte, `\000`, `\\"`, a leading zero, a negative or
//! overflowing uint64, a string spanning lines): those are marked "(stricter
//! than cml)" in the message.

use super::MOUNT_TYPES;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    Required,
    Optional,
    Repeated,
}

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Bytes,
    U32,
    U64,
    Bool,
    Enum(&'static [&'static str]),
    Msg(&'static str, &'static [Def]),
}

struct Def {
    name: &'static str,
    label: Label,
    ty: Ty,
}

const fn def(name: &'static str, label: Label, ty: Ty) -> Def {
    Def { name, label, ty }
}

use Label::{Optional as Opt, Repeated as Rep, Required as Req};

/// `message I18NString`.
const I18N: &[Def] = &[
    def("en", Req, Ty::Str),
    def("de", Opt, Ty::Str),
    def("fr", Opt, Ty::Str),
];

/// `message GuestOSMount`.
const MOUNT: &[Def] = &[
    def("image_file", Req, Ty::Str),
    def("mount_point", Req, Ty::Str),
    def("fs_type", Req, Ty::Str),
    def("mount_type", Req, Ty::Enum(MOUNT_TYPES)),
    def("min_size", Opt, Ty::U32),
    def("max_size", Opt, Ty::U32),
    def("def_size", Opt, Ty::U32),
    def("image_size", Opt, Ty::U64),
    def("image_sha1", Opt, Ty::Str),
    def("image_sha2_256", Opt, Ty::Str),
    def("mount_data", Opt, Ty::Str),
    def("image_verity_sha256", Opt, Ty::Str),
];

/// `message GuestOSConfig`.
const CONFIG: &[Def] = &[
    def("name", Req, Ty::Str),
    def("hardware", Req, Ty::Str),
    def("version", Req, Ty::U64),
    def("mounts", Rep, Ty::Msg("GuestOSMount", MOUNT)),
    def("init_path", Opt, Ty::Str),
    def("init_param", Rep, Ty::Str),
    def("init_env", Rep, Ty::Str),
    def("mounts_setup", Rep, Ty::Msg("GuestOSMount", MOUNT)),
    def("feature_bg_booting", Opt, Ty::Bool),
    def("feature_install_guest", Opt, Ty::Bool),
    def("min_ram_limit", Opt, Ty::U32),
    def("def_ram_limit", Opt, Ty::U32),
    def("description", Req, Ty::Msg("I18NString", I18N)),
    def("description_long", Opt, Ty::Msg("I18NString", I18N)),
    def("upstream_version", Opt, Ty::Str),
    def("icon", Opt, Ty::Bytes),
    def("build_date", Opt, Ty::Str),
    def("update_base_url", Opt, Ty::Str),
];

/// A problem and the byte offset it is at.
pub(super) type Problem = (usize, String);

/// The tokens of parse.re's lexer (`TokenId`).
enum Tok<'a> {
    Eof,
    Bareword(&'a [u8]),
    Number(&'a [u8]),
    Boolean,
    Quoted,
    Open,
    Close,
    Colon,
}

struct Lexer<'a> {
    b: &'a [u8],
    pos: usize,
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl<'a> Lexer<'a> {
    /// The next token and its offset.
    fn next(&mut self) -> Result<(Tok<'a>, usize), Problem> {
        // WS = [ \t]; NL = "\n". Nothing else is white space.
        while let Some(b' ' | b'\t' | b'\n') = self.b.get(self.pos) {
            self.pos += 1;
        }
        let at = self.pos;
        let Some(&c) = self.b.get(at) else {
            return Ok((Tok::Eof, at));
        };
        let single = |t| Ok((t, at));
        match c {
            b'{' => {
                self.pos += 1;
                return single(Tok::Open);
            }
            b'}' => {
                self.pos += 1;
                return single(Tok::Close);
            }
            b':' => {
                self.pos += 1;
                return single(Tok::Colon);
            }
            b'"' => {
                self.quoted()?;
                return single(Tok::Quoted);
            }
            _ => {}
        }
        // I = [-]? [0-9]+; F = [-]? [0-9]* "." [0-9]+; BW = [a-zA-Z0-9_]+;
        // "true" and "false" before BW. re2c takes the longest match, and
        // the rule listed first (numbers, then the booleans) on a tie.
        let digits = |from: usize| {
            self.b[from.min(self.b.len())..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count()
        };
        let sign = usize::from(c == b'-');
        let int = digits(at + sign);
        let mut num = if int > 0 { sign + int } else { 0 };
        if self.b.get(at + sign + int) == Some(&b'.') {
            let frac = digits(at + sign + int + 1);
            if frac > 0 {
                num = sign + int + 1 + frac;
            }
        }
        let bw = self.b[at..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
            .count();
        if num > 0 && num >= bw {
            self.pos += num;
            return Ok((Tok::Number(&self.b[at..at + num]), at));
        }
        if bw > 0 {
            self.pos += bw;
            let w = &self.b[at..at + bw];
            let t = match w {
                b"true" | b"false" => Tok::Boolean,
                _ => Tok::Bareword(w),
            };
            return Ok((t, at));
        }
        // Everything else is parse.re's default rule: "String unescape or
        // malloc failure."
        let what = match c {
            0 => "a NUL byte: cml reads the conf as a C string and would stop here (stricter than cml)".to_string(),
            b'#' => "'#' comment: cml's parser has no comments".into(),
            b'\r' => "carriage return (CRLF line end?): cml's parser allows only spaces, tabs and LF between tokens".into(),
            b'<' | b'>' => format!("'{}': cml's parser knows only '{{' '}}' around messages", char::from(c)),
            b'\'' => "single-quoted string: cml's parser knows only double quotes".into(),
            b';' | b',' => format!("'{}' separator: cml's parser has none; separate fields by white space", char::from(c)),
            b'[' | b']' => format!("'{}': lists and extensions are not supported by cml's parser; repeat the field for each value", char::from(c)),
            b'+' => "'+' sign: cml's parser reads numbers as [-]digits only".into(),
            b'-' | b'.' => format!("'{}' without digits: not a number for cml's parser", char::from(c)),
            c if c.is_ascii_graphic() => format!("unexpected '{}': cml's parser knows only names, numbers, \"strings\", '{{' '}}' ':'", char::from(c)),
            c => format!("unexpected byte 0x{c:02x}: cml's parser allows only spaces, tabs and LF between tokens"),
        };
        Err((at, what))
    }

    /// QS = ["] (EQ|[^"])* ["] with EQ = [\\] ["]: the string ends at the
    /// first quote without a backslash before it, then `unesc_str` decodes it.
    fn quoted(&mut self) -> Result<(), Problem> {
        let start = self.pos;
        let mut k = start + 1;
        let end = loop {
            match self.b[k.min(self.b.len())..]
                .iter()
                .position(|&c| c == b'"')
            {
                None => return Err((start, "unterminated string".into())),
                Some(i) if self.b[k + i - 1] == b'\\' && k + i - 1 > start => k += i + 1,
                Some(i) => break k + i,
            }
        };
        self.pos = end + 1;
        let content = &self.b[start + 1..end];
        let mut i = 0;
        while i < content.len() {
            let at = start + 1 + i;
            match content[i] {
                0 => {
                    return Err((
                        at,
                        "a NUL byte: cml reads the conf as a C string and would stop here (stricter than cml)".into(),
                    ))
                }
                b'\n' => {
                    return Err((
                        start,
                        "string spans lines: cml's lexer takes the line break in, protobuf's text format refuses it; close the string on its line or write \\n".into(),
                    ))
                }
                // Only reachable after an escaped backslash: cml's lexer took
                // that backslash and this quote for an escaped quote.
                b'"' => {
                    return Err((
                        at - 2,
                        "'\\\\' right before '\"': cml's lexer reads '\\\"' as an escaped quote, so the string does not end here".into(),
                    ))
                }
                b'\\' => {
                    let e = content.get(i + 1).copied();
                    match e {
                        Some(b'\'' | b'"' | b'\\' | b'n' | b'r' | b't') => i += 2,
                        Some(b'0') => {
                            let oct = |j: usize| matches!(content.get(j), Some(b'0'..=b'7'));
                            if !(oct(i + 2) && oct(i + 3)) {
                                return Err((
                                    at,
                                    "'\\0' escape: cml's lexer wants exactly \\0 and two octal digits".into(),
                                ));
                            }
                            if content[i + 2] == b'0' && content[i + 3] == b'0' {
                                return Err((
                                    at,
                                    "'\\000' (NUL): cml keeps strings as C strings and would cut it here (stricter than cml)".into(),
                                ));
                            }
                            i += 4;
                        }
                        _ => {
                            let esc = e.map(|e| show(&[e])).unwrap_or_default();
                            return Err((
                                at,
                                format!(
                                    "'\\{esc}' escape: cml's lexer knows only \\n \\r \\t \\\\ \\\" \\' and \\0 with two octal digits"
                                ),
                            ));
                        }
                    }
                }
                _ => i += 1,
            }
        }
        Ok(())
    }
}

/// A message being filled: parse.re's message stack.
struct Frame {
    id: String,
    ty: &'static str,
    defs: &'static [Def],
    seen: Vec<u32>,
    open: usize,
}

impl Frame {
    fn new(id: String, ty: &'static str, defs: &'static [Def], open: usize) -> Frame {
        Frame {
            id,
            ty,
            defs,
            seen: vec![0; defs.len()],
            open,
        }
    }

    fn prefix(&self) -> String {
        if self.id.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.id)
        }
    }

    /// protobuf_c_message_check: required strings and messages must be set.
    /// Required numbers and enums are not checked there (cml then reads 0).
    fn check_required(&self, at: usize) -> Result<(), Problem> {
        for (d, n) in self.defs.iter().zip(&self.seen) {
            if d.label == Req && *n == 0 && matches!(d.ty, Ty::Str | Ty::Msg(..)) {
                return Err((
                    at,
                    format!("{}missing required field '{}'", self.prefix(), d.name),
                ));
            }
        }
        Ok(())
    }
}

fn type_name(ty: Ty) -> &'static str {
    match ty {
        Ty::Str => "string",
        Ty::Bytes => "bytes",
        Ty::U32 => "uint32",
        Ty::U64 => "uint64",
        Ty::Bool => "bool",
        Ty::Enum(_) => "enum",
        Ty::Msg(m, _) => m,
    }
}

/// An unsigned number as cml's strtoul/strtoull read it (decimal only).
fn unsigned(name: &str, ty: Ty, n: &[u8]) -> Result<(), String> {
    let text = show(n);
    let bits = if matches!(ty, Ty::U32) { 32 } else { 64 };
    if n.contains(&b'.') {
        return Err(format!(
            "'{name}' must be an unsigned integer (uint{bits}), not '{text}'"
        ));
    }
    if n.starts_with(b"-") {
        return Err(format!(
            "'{name}' must be an unsigned integer (uint{bits}), not '{text}': cml's strtoul/strtoull would wrap it{}",
            if bits == 64 { " (stricter than cml)" } else { "" }
        ));
    }
    if n.len() > 1 && n[0] == b'0' {
        return Err(format!(
            "'{name}': leading zero in '{text}': cml reads it as decimal, protobuf's text format as octal; drop the zero (stricter than cml)"
        ));
    }
    let v: Option<u64> = text.parse().ok();
    match v {
        Some(v) if bits == 64 || v <= u64::from(u32::MAX) => Ok(()),
        Some(_) => Err(format!("'{name}': {text} does not fit uint32 (cml refuses more than 4294967295)")),
        None => Err(format!(
            "'{name}': {text} does not fit uint64 (cml's strtoull would read 18446744073709551615) (stricter than cml)"
        )),
    }
}

/// Does `tok` fit a field of type `ty`? (parse.re's `state_value`)
fn value(d: &Def, tok: &Tok<'_>) -> Result<(), String> {
    let name = d.name;
    let want = type_name(d.ty);
    match (d.ty, tok) {
        (Ty::Str | Ty::Bytes, Tok::Quoted) | (Ty::Bool, Tok::Boolean) => Ok(()),
        (Ty::U32 | Ty::U64, Tok::Number(n)) => unsigned(name, d.ty, n),
        (Ty::U32 | Ty::U64, Tok::Bareword(w)) if w[0].is_ascii_digit() => Err(format!(
            "'{name}' must be an unsigned integer in decimal, not '{}': cml's parser has no hex, octal or exponent",
            show(w)
        )),
        (Ty::Enum(names), Tok::Bareword(w)) => {
            if names.iter().any(|n| n.as_bytes() == *w) {
                Ok(())
            } else {
                Err(format!("unknown {name} '{}'", show(w)))
            }
        }
        (Ty::Enum(names), Tok::Number(n)) => Err(format!(
            "'{name}' takes the enum name ({}), not the number {}: cml's parser reads enums by name only",
            names.join(", "),
            show(n)
        )),
        (Ty::Bool, Tok::Number(n)) => Err(format!(
            "'{name}' takes true or false, not {}",
            show(n)
        )),
        (Ty::Bool, Tok::Bareword(w)) => Err(format!(
            "'{name}' takes true or false (lower case), not {}",
            show(w)
        )),
        (Ty::Str | Ty::Bytes, Tok::Bareword(w)) => Err(format!(
            "'{name}' is a {want}: write it in double quotes, not '{}'",
            show(w)
        )),
        (Ty::Str | Ty::Bytes, Tok::Number(n)) => Err(format!(
            "'{name}' is a {want}: write it in double quotes, not {}",
            show(n)
        )),
        (_, Tok::Quoted) => Err(format!("'{name}' ({want}) takes no string")),
        (_, Tok::Boolean) => Err(format!("'{name}' ({want}) takes no true/false")),
        (_, Tok::Bareword(w)) => Err(format!("'{name}' ({want}) takes no '{}'", show(w))),
        _ => Err(format!("expected a value for '{name}'")),
    }
}

/// The first thing in `b` that cml's conf reader refuses (or reads otherwise
/// than it looks), with its byte offset.
pub(super) fn check(b: &[u8]) -> Result<(), Problem> {
    let mut lx = Lexer { b, pos: 0 };
    let mut stack = vec![Frame::new(String::new(), "GuestOSConfig", CONFIG, 0)];
    // Counts of repeated message fields, for the ids of their elements.
    let mut after_string = false;
    loop {
        let (tok, at) = lx.next()?;
        let depth = stack.len();
        let top = stack.last_mut().expect("the root frame stays");
        let name = match tok {
            Tok::Bareword(w) => w,
            Tok::Eof if depth == 1 => break,
            Tok::Eof => return Err((at, "missing '}'".into())),
            Tok::Close if depth == 1 => return Err((at, "'}' without a matching '{'".into())),
            Tok::Close => {
                top.check_required(top.open)?;
                stack.pop();
                after_string = false;
                continue;
            }
            Tok::Quoted if after_string => {
                return Err((
                    at,
                    "adjacent strings: cml's parser does not join them; write one string".into(),
                ))
            }
            Tok::Number(n) => {
                return Err((
                    at,
                    format!("expected a field name or '}}', found {}", show(n)),
                ))
            }
            _ => return Err((at, "expected a field name or '}'".into())),
        };
        let Some(i) = top.defs.iter().position(|d| d.name.as_bytes() == name) else {
            return Err((
                at,
                format!(
                    "{}unknown {} field '{}': cml's parser refuses unknown fields",
                    top.prefix(),
                    top.ty,
                    show(name)
                ),
            ));
        };
        let d = &top.defs[i];
        let twice = top.seen[i] > 0 && d.label != Rep;
        let (sep, sep_at) = lx.next()?;
        after_string = false;
        match (sep, d.ty) {
            (Tok::Colon, Ty::Msg(..)) => {
                return Err((
                    sep_at,
                    format!(
                        "'{}' is a message: write '{} {{', not '{}: {{'",
                        d.name, d.name, d.name
                    ),
                ))
            }
            (Tok::Open, Ty::Msg(ty, defs)) => {
                if twice {
                    return Err((at, format!("{}'{}' is given twice", top.prefix(), d.name)));
                }
                let id = if d.label == Rep {
                    format!("{}[{}]", d.name, top.seen[i])
                } else {
                    d.name.to_string()
                };
                top.seen[i] += 1;
                stack.push(Frame::new(id, ty, defs, at));
            }
            (Tok::Open, _) => {
                return Err((
                    sep_at,
                    format!("'{}' is not a message: write '{}: value'", d.name, d.name),
                ))
            }
            (Tok::Colon, _) => {
                // cml refuses a second value of an optional field and of any
                // string; a required number or enum given twice keeps the
                // last one (refused here: stricter).
                if twice {
                    let stricter = if d.label == Req && !matches!(d.ty, Ty::Str) {
                        " (stricter than cml, which keeps the last)"
                    } else {
                        ""
                    };
                    return Err((
                        at,
                        format!("{}'{}' is given twice{stricter}", top.prefix(), d.name),
                    ));
                }
                let (v, v_at) = lx.next()?;
                value(d, &v).map_err(|m| (v_at, format!("{}{m}", top.prefix())))?;
                after_string = matches!(v, Tok::Quoted);
                top.seen[i] += 1;
            }
            _ => return Err((sep_at, format!("expected ':' or '{{' after '{}'", d.name))),
        }
    }
    stack[0].check_required(b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "name: \"core\"\nhardware: \"x86\"\nversion: 1\nmounts {\n\timage_file: \"root\"\n\tmount_point: \"/\"\n\tfs_type: \"squashfs\"\n\tmount_type: SHARED_RW\n}\ndescription {\n\ten: \"d\"\n}\n";

    fn problem(s: &str) -> String {
        check(s.as_bytes()).unwrap_err().1
    }

    #[test]
    fn accepts_the_creator_style() {
        check(OK.as_bytes()).unwrap();
        check(
            b"name:\"a\" hardware:\"b\" version:2 description{en:\"\\0101\\n\\t\\r\\\\\\\"\\'\"}",
        )
        .unwrap();
        // Required numbers and enums are not checked by protobuf_c_message_check.
        check(b"name: \"a\" hardware: \"b\" description { en: \"\" }").unwrap();
    }

    #[test]
    fn lexer_ties_and_longest_matches() {
        let base = "name: \"a\" hardware: \"b\" description { en: \"\" } ";
        for (extra, want) in [
            ("version: 0x10", "no hex"),
            ("version: 1e5", "no hex"),
            ("version: 1.0", "not '1.0'"),
            ("version: +1", "'+' sign"),
            ("feature_bg_booting: True", "lower case"),
            ("feature_bg_booting: 1", "true or false"),
            ("min_ram_limit: 4294967296", "does not fit uint32"),
            ("version: 18446744073709551616", "does not fit uint64"),
            ("version: 010", "leading zero"),
            ("trueish: 1", "unknown GuestOSConfig field 'trueish'"),
        ] {
            let p = problem(&format!("{base}{extra}"));
            assert!(p.contains(want), "{extra}: {p}");
        }
        check(format!("{base}feature_bg_booting: true min_ram_limit: 4294967295").as_bytes())
            .unwrap();
    }
}
