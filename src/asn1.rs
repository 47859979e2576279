//! The small, lenient DER reader shared by the Authenticode and PKCS#7 code,
//! and the few DER-building helpers both need.
//!
//! A TLV walker rather than a strict DER decoder: signatures made by other
//! tools are not always canonical DER (e.g. certificates not sorted in their
//! SET OF), and the exact bytes of signed attributes must be kept to check
//! the signature. Errors are plain strings; callers wrap them with the file
//! name and what was being parsed.

use cms::cert::x509::attr::Attribute;
use cms::cert::x509::spki::AlgorithmIdentifierOwned;
use der::asn1::{GeneralizedTime, ObjectIdentifier, SetOfVec, UtcTime};
use der::{Any, DateTime, Tag};
use time::OffsetDateTime;

use crate::error::{Error, Result};

pub const SEQUENCE: u8 = 0x30;
pub const SET: u8 = 0x31;
pub const INTEGER: u8 = 0x02;
pub const OCTET_STRING: u8 = 0x04;
pub const OBJECT_ID: u8 = 0x06;
pub const UTC_TIME: u8 = 0x17;
pub const GENERALIZED_TIME: u8 = 0x18;
pub const CTX0: u8 = 0xa0;
pub const CTX1: u8 = 0xa1;
pub const CTX0_PRIMITIVE: u8 = 0x80;

/// One BER/DER element with a definite length.
#[derive(Clone, Copy, Debug)]
pub struct Tlv<'a> {
    pub tag: u8,
    /// Tag, length and value.
    pub raw: &'a [u8],
    pub value: &'a [u8],
}

impl Tlv<'_> {
    pub fn header_len(&self) -> usize {
        self.raw.len() - self.value.len()
    }
}

/// Split the first element off `input`.
pub fn take(input: &[u8]) -> std::result::Result<(Tlv<'_>, &[u8]), String> {
    let (&tag, rest) = input.split_first().ok_or("truncated: element expected")?;
    if tag & 0x1f == 0x1f {
        return Err(format!("unsupported multi-byte tag 0x{tag:02x}"));
    }
    let (&first, mut rest) = rest.split_first().ok_or("truncated length")?;
    let len = match first {
        0..=0x7f => usize::from(first),
        0x80 => return Err("indefinite length (BER) is not supported".into()),
        _ => {
            let n = usize::from(first & 0x7f);
            if n > 4 || rest.len() < n {
                return Err("bad length".into());
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            rest = &rest[n..];
            len
        }
    };
    if rest.len() < len {
        return Err(format!(
            "truncated: element of {len} bytes, {} left",
            rest.len()
        ));
    }
    let header = input.len() - rest.len();
    Ok((
        Tlv {
            tag,
            raw: &input[..header + len],
            value: &rest[..len],
        },
        &rest[len..],
    ))
}

/// Iterates the elements inside a constructed element.
pub struct Elements<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Elements<'a> {
    /// `what` names the element in errors.
    pub fn of(t: Tlv<'a>, what: &'static str) -> Self {
        Elements {
            rest: t.value,
            what,
        }
    }

    pub fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    #[allow(clippy::should_implement_trait)] // fallible, unlike Iterator::next
    pub fn next(&mut self) -> std::result::Result<Option<Tlv<'a>>, String> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (t, rest) = take(self.rest).map_err(|e| format!("{}: {e}", self.what))?;
        self.rest = rest;
        Ok(Some(t))
    }

    pub fn expect(&mut self, tag: u8, field: &str) -> std::result::Result<Tlv<'a>, String> {
        match self.next()? {
            Some(t) if t.tag == tag => Ok(t),
            Some(t) => Err(format!(
                "{}: {field}: expected tag 0x{tag:02x}, found 0x{:02x}",
                self.what, t.tag
            )),
            None => Err(format!("{}: {field} missing", self.what)),
        }
    }

    pub fn optional(&mut self, tag: u8) -> std::result::Result<Option<Tlv<'a>>, String> {
        if self.peek() == Some(tag) {
            self.next()
        } else {
            Ok(None)
        }
    }
}

/// Dotted form of an OBJECT IDENTIFIER; a malformed one is shown in hex
/// rather than failing, so that it can still be reported.
pub fn oid_string(t: Tlv<'_>) -> String {
    ObjectIdentifier::from_bytes(t.value)
        .map(|o| o.to_string())
        .unwrap_or_else(|_| format!("<bad OID {}>", crate::codec::hex(t.value)))
}

/// A non-negative INTEGER that fits 32 bits (version numbers).
pub fn small_int(t: Tlv<'_>) -> std::result::Result<u32, String> {
    if t.value.is_empty() || t.value.len() > 4 || t.value[0] & 0x80 != 0 {
        return Err("bad version number".into());
    }
    Ok(t.value
        .iter()
        .fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
}

/// AlgorithmIdentifier's OID.
pub fn alg_oid(t: Tlv<'_>, what: &'static str) -> std::result::Result<String, String> {
    Ok(oid_string(
        Elements::of(t, what).expect(OBJECT_ID, "algorithm")?,
    ))
}

/// Call `f(oid, value)` for every value of every attribute in a SET OF Attribute.
pub fn for_each_attribute<'a>(
    attrs: Tlv<'a>,
    what: &'static str,
    mut f: impl FnMut(String, Tlv<'a>) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    let mut attrs = Elements::of(attrs, what);
    while let Some(a) = attrs.next()? {
        if a.tag != SEQUENCE {
            return Err(format!("{what}: attribute is not a SEQUENCE"));
        }
        let mut a = Elements::of(a, what);
        let o = oid_string(a.expect(OBJECT_ID, "attribute type")?);
        let mut values = Elements::of(a.expect(SET, "attribute values")?, what);
        while let Some(v) = values.next()? {
            f(o.clone(), v)?;
        }
    }
    Ok(())
}

/// Serial numbers compare equal with or without leading zero octets.
pub fn strip_zeros(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&x| x == 0).count();
    &b[n..]
}

// ---------------------------------------------------------------------------
// Writing

pub fn obj_id(s: &str) -> der::Result<ObjectIdentifier> {
    ObjectIdentifier::new(s).map_err(|_| Tag::ObjectIdentifier.value_error())
}

pub fn alg_id(o: &str, null_params: bool) -> der::Result<AlgorithmIdentifierOwned> {
    Ok(AlgorithmIdentifierOwned {
        oid: obj_id(o)?,
        parameters: if null_params {
            Some(Any::new(Tag::Null, Vec::new())?)
        } else {
            None
        },
    })
}

pub fn attribute(o: &str, value: Any) -> der::Result<Attribute> {
    Ok(Attribute {
        oid: obj_id(o)?,
        values: SetOfVec::try_from(vec![value])?,
    })
}

/// signingTime as RFC 5652 wants it: UTCTime through 2049, GeneralizedTime
/// after. `der_err` says which signature was being encoded.
pub fn signing_time_value(t: OffsetDateTime, der_err: fn(der::Error) -> Error) -> Result<Any> {
    let t = t.to_offset(time::UtcOffset::UTC);
    let bad = || Error::Usage(format!("signing time {t} is out of range (1970..9999)"));
    let year = u16::try_from(t.year()).map_err(|_| bad())?;
    let dt = DateTime::new(
        year,
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
    )
    .map_err(|_| bad())?;
    if year < 2050 {
        Any::encode_from(&UtcTime::from_date_time(dt).map_err(|_| bad())?).map_err(der_err)
    } else {
        Any::encode_from(&GeneralizedTime::from_date_time(dt)).map_err(der_err)
    }
}
