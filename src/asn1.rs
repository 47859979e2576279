//! DER helpers shared by the PKCS#7 and Authenticode code: the few reading
//! types `der` lacks, and the writing helpers both need.
//!
//! Reading is `der`'s strict DER: minimal lengths, canonical INTEGERs, no
//! indefinite lengths, nothing left over inside a SEQUENCE. Because only the
//! minimal length form is accepted, a header re-encoded from what was read is
//! the header that was received.
//!
//! What `der` would change, and the types here keep as received:
//! * [`SetInOrder`]: a SET OF in the order received, duplicates kept.
//!   `SetOfVec` sorts on decode and refuses duplicates; OpenSSL (and so EDK2
//!   and sbverify) keeps certificates and SignerInfos in stored order, and
//!   that order decides which certificate path is tried first.
//! * [`Raw`]: an element as the exact bytes received, for what is handed on
//!   whole (certificates, nested signatures) or compared byte for byte.

use cms::cert::x509::attr::Attribute;
use cms::cert::x509::spki::AlgorithmIdentifierOwned;
use der::asn1::{AnyRef, GeneralizedTime, ObjectIdentifier, SetOfVec, UtcTime};
use der::{
    Any, DateTime, Decode, DecodeValue, Encode, EncodeValue, FixedTag, Header, Length, Reader,
    SliceReader, Tag, Tagged, Writer,
};
use time::OffsetDateTime;

use crate::error::{Error, Result};

// ---------------------------------------------------------------------------
// Reading

/// One element exactly as received: tag, length and value.
#[derive(Clone, Copy, Debug)]
pub struct Raw<'a> {
    /// The whole element.
    pub der: &'a [u8],
    pub tag: Tag,
    /// Its content octets.
    pub value: &'a [u8],
}

impl<'a> Decode<'a> for Raw<'a> {
    fn decode<R: Reader<'a>>(reader: &mut R) -> der::Result<Self> {
        let der = reader.tlv_bytes()?;
        let any = AnyRef::from_der(der)?;
        Ok(Raw {
            der,
            tag: any.tag(),
            value: any.value(),
        })
    }
}

impl Encode for Raw<'_> {
    fn encoded_len(&self) -> der::Result<Length> {
        Length::try_from(self.der.len())
    }

    fn encode(&self, writer: &mut impl Writer) -> der::Result<()> {
        writer.write(self.der)
    }
}

/// A SET OF in the order received, duplicates kept (see the module notes).
#[derive(Clone, Debug)]
pub struct SetInOrder<T>(pub Vec<T>);

impl<T> FixedTag for SetInOrder<T> {
    const TAG: Tag = Tag::Set;
}

impl<'a, T: Decode<'a>> DecodeValue<'a> for SetInOrder<T> {
    fn decode_value<R: Reader<'a>>(reader: &mut R, header: Header) -> der::Result<Self> {
        Vec::<T>::decode_value(reader, header).map(SetInOrder)
    }
}

impl<T: Encode> EncodeValue for SetInOrder<T> {
    fn value_len(&self) -> der::Result<Length> {
        self.0.value_len()
    }

    fn encode_value(&self, writer: &mut impl Writer) -> der::Result<()> {
        self.0.encode_value(writer)
    }
}

/// The first element of `input`, which may be followed by zero bytes only
/// (WIN_CERTIFICATE and .auth padding); anything else after it is an error.
pub fn first_element(input: &[u8]) -> std::result::Result<Raw<'_>, String> {
    let err = |e: der::Error| match e.kind() {
        // The only integer here is the length, and der reads lengths up to 256 MiB.
        der::ErrorKind::Overflow => "length out of range".to_string(),
        _ => e.to_string(),
    };
    let mut reader = SliceReader::new(input).map_err(err)?;
    let first = Raw::decode(&mut reader).map_err(err)?;
    let trailing = &input[first.der.len()..];
    if trailing.iter().any(|&b| b != 0) {
        return Err(format!("{} bytes of trailing data", trailing.len()));
    }
    Ok(first)
}

/// The elements inside the constructed element `der` (tests take signatures apart).
#[cfg(test)]
pub fn children(der: &[u8]) -> Vec<Raw<'_>> {
    let outer = Raw::from_der(der).unwrap();
    let mut reader = SliceReader::new(outer.value).unwrap();
    let mut v = vec![];
    while !reader.is_finished() {
        v.push(Raw::decode(&mut reader).unwrap());
    }
    v
}

/// Serial numbers compare equal with or without leading zero octets.
pub fn strip_zeros(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&x| x == 0).count();
    &b[n..]
}

// ---------------------------------------------------------------------------
// Writing

pub fn alg_id(oid: ObjectIdentifier, null_params: bool) -> der::Result<AlgorithmIdentifierOwned> {
    Ok(AlgorithmIdentifierOwned {
        oid,
        parameters: if null_params {
            Some(Any::new(Tag::Null, Vec::new())?)
        } else {
            None
        },
    })
}

pub fn attribute(oid: ObjectIdentifier, value: Any) -> der::Result<Attribute> {
    Ok(Attribute {
        oid,
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
