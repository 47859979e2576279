//! Generic PKCS#7 / CMS SignedData with detached content, made with any
//! `Signer`: EFI authenticated variables (efitools' form) and GuestOS CMS
//! signatures.
//!
//! What [`sign_detached`] writes is the layout of OpenSSL's `PKCS7_sign`,
//! which `openssl smime`, `openssl cms` and EDK2 (OpenSSL's PKCS#7 code) read:
//!
//! ```text
//! [ContentInfo { signedData, [0] EXPLICIT]   -- only with `content_info`
//! SignedData {
//!   version 1, digestAlgorithms { hash },
//!   encapContentInfo { id-data },            -- detached: no eContent
//!   certificates [0] { signer, chain... },
//!   signerInfos { SignerInfo { version 1, issuerAndSerialNumber, hash,
//!     [0] { contentType, signingTime, messageDigest }   -- only with `signed_attrs`
//!     signatureAlgorithm, signature } } }
//! ```
//!
//! Without signed attributes the signature covers the content itself; with
//! an RSA PKCS#1 v1.5 key that makes the output a pure function of the
//! inputs, byte for byte what `PKCS7_sign(... PKCS7_NOATTR)` produces.
//!
//! [`parse`] reads the same structures with `der` (see [`SignedDataRef`]),
//! keeping the bytes of the signed attributes as received: the signature
//! covers them in whatever order the signer wrote them.

use std::path::Path;

use cms::cert::x509::attr::Attribute;
use cms::cert::x509::spki::{AlgorithmIdentifierOwned, AlgorithmIdentifierRef};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::EncapsulatedContentInfo;
use der::asn1::{
    GeneralizedTime, IntRef, ObjectIdentifier, OctetString, OctetStringRef, SetOfVec, UtcTime,
};
use der::{
    Any, Choice, Decode, DecodeValue, Encode, EncodeValue, FixedTag, Header, Length, Reader,
    Sequence, Tag, Tagged, Writer,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::asn1::{attribute, first_element, strip_zeros, Raw, SetInOrder};
use crate::error::{Error, Result};
use crate::keys::Signer;
use crate::sigalg::{hash_name, AlgIdFor, Hash};
use crate::{asn1, oid, x509};

// ---------------------------------------------------------------------------
// Writing

/// How [`sign_detached`] signs.
pub struct DetachedOptions<'a> {
    pub signer: &'a dyn Signer,
    /// The signer's certificate (DER); its key must be `signer`'s.
    pub cert: &'a [u8],
    /// Further certificates (DER) to carry, e.g. intermediate CAs.
    pub chain: &'a [Vec<u8>],
    pub hash: Hash,
    /// include signed attributes (contentType, messageDigest, signingTime if given)
    pub signed_attrs: bool,
    pub signing_time: Option<OffsetDateTime>,
    /// wrap in ContentInfo (true) or emit bare SignedData (false)
    pub content_info: bool,
}

fn der_err(e: der::Error) -> Error {
    Error::Crypto(format!("encoding the PKCS#7 signature: {e}"))
}

#[derive(Sequence)]
struct SignerInfoDer {
    version: CmsVersion,
    /// IssuerAndSerialNumber, assembled from the certificate's own bytes.
    sid: Any,
    digest_algorithm: AlgorithmIdentifierOwned,
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    signed_attrs: Option<SetOfVec<Attribute>>,
    signature_algorithm: AlgorithmIdentifierOwned,
    signature: OctetString,
}

/// Certificates keep their order (signer first), as OpenSSL, sbsign,
/// osslsigncode and signtool write them.
#[derive(Sequence)]
pub(crate) struct SignedDataDer {
    version: CmsVersion,
    digest_algorithms: SetOfVec<AlgorithmIdentifierOwned>,
    encap_content_info: EncapsulatedContentInfo,
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT")]
    certificates: Vec<Any>,
    signer_infos: SetOfVec<Any>,
}

/// SignedData version 1 with one digest algorithm and one SignerInfo,
/// carrying `cert` then the `chain` certificates not already carried.
pub(crate) fn signed_data(
    hash: Hash,
    encap_content_info: EncapsulatedContentInfo,
    cert: &[u8],
    chain: &[Vec<u8>],
    signer_info: Any,
) -> der::Result<SignedDataDer> {
    let mut certs: Vec<&[u8]> = vec![cert];
    for c in chain {
        if !certs.contains(&c.as_slice()) {
            certs.push(c);
        }
    }
    Ok(SignedDataDer {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![hash.alg_id()?])?,
        encap_content_info,
        certificates: certs
            .iter()
            .map(|c| <Any as der::Decode>::from_der(c))
            .collect::<der::Result<_>>()?,
        signer_infos: SetOfVec::try_from(vec![signer_info])?,
    })
}

/// IssuerAndSerialNumber of `cert`, from the certificate's own bytes.
pub(crate) fn issuer_and_serial(cert: &X509Certificate<'_>) -> der::Result<Any> {
    let serial = Any::new(Tag::Integer, cert.raw_serial())?.to_der()?;
    Any::new(
        Tag::Sequence,
        [cert.tbs_certificate.issuer.as_raw(), &serial].concat(),
    )
}

/// The parsed signer certificate, once it is known to hold `signer`'s key
/// and every chain certificate parses.
pub(crate) fn check_signer<'c>(
    signer: &dyn Signer,
    cert: &'c [u8],
    chain: &[Vec<u8>],
) -> Result<X509Certificate<'c>> {
    let cert = x509::parse(cert, Path::new("signer certificate"))?;
    if cert.public_key().subject_public_key.data.as_ref() != signer.public_key() {
        return Err(Error::Usage(format!(
            "key {} does not belong to the signer certificate '{}'",
            signer.origin(),
            cert.subject()
        )));
    }
    for (i, c) in chain.iter().enumerate() {
        x509::parse(c, Path::new(&format!("chain certificate {}", i + 1)))?;
    }
    Ok(cert)
}

/// Detached SignedData over `content` (eContent absent), DER.
pub fn sign_detached(content: &[u8], opts: &DetachedOptions) -> Result<Vec<u8>> {
    let cert = check_signer(opts.signer, opts.cert, opts.chain)?;
    let scheme = opts.signer.scheme_with(opts.hash)?;
    let hash = opts.hash;

    let signed_attrs = if opts.signed_attrs {
        let time = opts
            .signing_time
            .map(|t| asn1::signing_time_value(t, der_err))
            .transpose()?;
        let attrs = (|| -> der::Result<SetOfVec<Attribute>> {
            let mut v = vec![
                attribute(oid::CONTENT_TYPE, Any::encode_from(&oid::DATA)?)?,
                attribute(
                    oid::MESSAGE_DIGEST,
                    Any::new(Tag::OctetString, hash.digest(content))?,
                )?,
            ];
            if let Some(t) = time {
                v.push(attribute(oid::SIGNING_TIME, t)?);
            }
            // DER order; the signature covers exactly this encoding.
            SetOfVec::try_from(v)
        })()
        .map_err(der_err)?;
        Some(attrs)
    } else {
        None
    };
    let signature = match &signed_attrs {
        Some(a) => opts.signer.sign(scheme, &a.to_der().map_err(der_err)?)?,
        None => opts.signer.sign(scheme, content)?,
    };

    (|| -> der::Result<Vec<u8>> {
        let signer_info = SignerInfoDer {
            version: CmsVersion::V1,
            sid: issuer_and_serial(&cert)?,
            digest_algorithm: hash.alg_id()?,
            signed_attrs,
            signature_algorithm: scheme.alg_id(AlgIdFor::SignerInfo)?,
            signature: OctetString::new(signature)?,
        };
        let signed_data = signed_data(
            hash,
            EncapsulatedContentInfo {
                econtent_type: oid::DATA,
                econtent: None,
            },
            opts.cert,
            opts.chain,
            Any::encode_from(&signer_info)?,
        )?;
        if opts.content_info {
            ContentInfo {
                content_type: oid::SIGNED_DATA,
                content: Any::encode_from(&signed_data)?,
            }
            .to_der()
        } else {
            signed_data.to_der()
        }
    })()
    .map_err(der_err)
}

// ---------------------------------------------------------------------------
// Reading
//
// RFC 5652's structures, read with `der` as strict DER (see `crate::asn1`).
// Where `cms`'s own types would lose what the checks need, the `*Ref` types
// below keep it:
// * certificates, SignerInfos, digestAlgorithms and unsigned attribute
//   values in the order received, duplicates kept (`SetInOrder`, `Vec`);
// * certificates, the issuer Name and unsigned attribute values as the
//   bytes received (`Raw`);
// * the signed attributes as the bytes received (`SignedAttrs`).

/// `SignedData`, as [`cms::signed_data::SignedData`] but keeping what
/// checking a signature needs (see above). Shared with Authenticode.
#[derive(Sequence)]
pub(crate) struct SignedDataRef<'a> {
    /// Any version is read (OpenSSL does not check it either).
    pub version: u32,
    pub digest_algorithms: SetInOrder<AlgorithmIdentifierRef<'a>>,
    pub encap_content_info: EncapsulatedContentInfo,
    /// CertificateChoices; certificates are the SEQUENCEs.
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    pub certificates: Option<Vec<Raw<'a>>>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    pub crls: Option<Vec<Raw<'a>>>,
    pub signer_infos: SetInOrder<SignerInfoRef<'a>>,
}

/// `SignerInfo`, as [`cms::signed_data::SignerInfo`] but with the signed
/// attributes' bytes and the issuer's bytes kept.
#[derive(Sequence)]
pub(crate) struct SignerInfoRef<'a> {
    pub version: u32,
    pub sid: SignerIdRef<'a>,
    pub digest_alg: AlgorithmIdentifierOwned,
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    pub signed_attrs: Option<SignedAttrs>,
    pub signature_algorithm: AlgorithmIdentifierOwned,
    pub signature: OctetStringRef<'a>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    pub unsigned_attrs: Option<Vec<AttributeRef<'a>>>,
}

#[derive(Choice)]
pub(crate) enum SignerIdRef<'a> {
    IssuerAndSerialNumber(IssuerAndSerialNumberRef<'a>),
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT")]
    SubjectKeyIdentifier(OctetStringRef<'a>),
}

/// The issuer Name is kept as received, to compare with the certificates'.
#[derive(Sequence)]
pub(crate) struct IssuerAndSerialNumberRef<'a> {
    pub issuer: Raw<'a>,
    pub serial_number: IntRef<'a>,
}

/// An attribute whose values are kept in order, as received (unsigned
/// attributes: nested signatures, timestamps).
#[derive(Sequence)]
pub(crate) struct AttributeRef<'a> {
    pub oid: ObjectIdentifier,
    pub values: SetInOrder<Raw<'a>>,
}

/// `[0] IMPLICIT SignedAttributes`: the attributes, and the bytes the
/// signature covers, which are the bytes received with the tag changed to
/// SET (RFC 5652 5.4). They are never re-encoded from the attributes: a
/// signer that did not sort them still verifies, as with OpenSSL and EDK2.
pub(crate) struct SignedAttrs {
    /// `SET` header and the content octets as received.
    pub der: Vec<u8>,
    /// Where the content octets start in `der`.
    value_at: usize,
    pub attrs: SetOfVec<Attribute>,
}

impl FixedTag for SignedAttrs {
    const TAG: Tag = Tag::Set;
}

impl<'a> DecodeValue<'a> for SignedAttrs {
    fn decode_value<R: Reader<'a>>(reader: &mut R, header: Header) -> der::Result<Self> {
        let value = reader.read_slice(header.length)?;
        // `der` reads only the minimal length form, so this is the header
        // received, with the tag changed.
        let mut der = Header::new(Tag::Set, header.length)?.to_der()?;
        let value_at = der.len();
        der.extend_from_slice(value);
        let attrs = SetOfVec::<Attribute>::from_der(&der)?;
        Ok(SignedAttrs {
            der,
            value_at,
            attrs,
        })
    }
}

impl EncodeValue for SignedAttrs {
    fn value_len(&self) -> der::Result<Length> {
        Length::try_from(self.der.len() - self.value_at)
    }

    fn encode_value(&self, writer: &mut impl Writer) -> der::Result<()> {
        writer.write(&self.der[self.value_at..])
    }
}

/// Call `f` with the SignedData of `der`, a ContentInfo { signedData } or,
/// if `bare_ok`, a bare SignedData; `f` learns which. Zero bytes may follow
/// (padding).
pub(crate) fn read_signed_data<T>(
    der: &[u8],
    bare_ok: bool,
    f: impl FnOnce(bool, &SignedDataRef<'_>) -> std::result::Result<T, String>,
) -> std::result::Result<T, String> {
    let outer = first_element(der)?;
    if outer.tag != Tag::Sequence {
        return Err("not a SEQUENCE".into());
    }
    // ContentInfo starts with an OID; SignedData with its version INTEGER.
    if !bare_ok || outer.value.first() == Some(&u8::from(Tag::ObjectIdentifier)) {
        let ci = ContentInfo::from_der(outer.der).map_err(|e| format!("ContentInfo: {e}"))?;
        if ci.content_type != oid::SIGNED_DATA {
            return Err(format!(
                "content type {} is not signedData",
                ci.content_type
            ));
        }
        let sd = ci
            .content
            .decode_as::<SignedDataRef>()
            .map_err(|e| format!("SignedData: {e}"))?;
        f(true, &sd)
    } else {
        let sd = SignedDataRef::from_der(outer.der).map_err(|e| format!("SignedData: {e}"))?;
        f(false, &sd)
    }
}

/// How a SignerInfo names its certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignerId {
    /// Issuer Name (DER) and serial number (INTEGER content octets).
    IssuerSerial { issuer: Vec<u8>, serial: Vec<u8> },
    /// subjectKeyIdentifier.
    KeyId(Vec<u8>),
}

impl SignerId {
    pub(crate) fn matches(&self, cert: &X509Certificate<'_>) -> bool {
        match self {
            SignerId::IssuerSerial { issuer, serial } => {
                if strip_zeros(cert.raw_serial()) != strip_zeros(serial) {
                    return false;
                }
                let ci = cert.tbs_certificate.issuer.as_raw();
                // Same bytes, or the same name spelled differently.
                ci == issuer.as_slice()
                    || x509_parser::x509::X509Name::from_der(issuer)
                        .map(|(_, n)| n.to_string() == cert.issuer().to_string())
                        .unwrap_or(false)
            }
            SignerId::KeyId(id) => cert.extensions().iter().any(|e| {
                matches!(e.parsed_extension(),
                    x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k)
                        if k.0 == id.as_slice())
            }),
        }
    }

    /// The signer as named in the SignerInfo: "issuer, serial HEX" or "key id HEX".
    fn describe(&self) -> String {
        match self {
            SignerId::IssuerSerial { issuer, serial } => {
                format!(
                    "issuer '{}', serial {}",
                    name_string(issuer),
                    crate::codec::hex(serial)
                )
            }
            SignerId::KeyId(id) => format!("key id {}", crate::codec::hex(id)),
        }
    }
}

/// A Name (DER) as text; a malformed one in hex.
pub(crate) fn name_string(der: &[u8]) -> String {
    x509_parser::x509::X509Name::from_der(der)
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|_| format!("<name {}>", crate::codec::hex(der)))
}

/// One SignerInfo, parsed.
#[derive(Clone, Debug)]
pub struct SignerInfo {
    pub sid: SignerId,
    /// digestAlgorithm OID.
    pub digest_oid: ObjectIdentifier,
    /// The signed attributes re-tagged as SET (what the signature covers), if any.
    pub signed_attrs: Option<Vec<u8>>,
    pub content_types: Vec<ObjectIdentifier>,
    pub message_digests: Vec<Vec<u8>>,
    /// The signingTime signed attribute (RFC 3339), if any.
    pub signing_time: Option<String>,
    /// signatureAlgorithm (RSASSA-PSS needs its parameters).
    pub signature_alg: AlgorithmIdentifierOwned,
    pub signature: Vec<u8>,
}

impl SignerInfo {
    /// The signer as named in the SignerInfo: "issuer, serial HEX" or "key id HEX".
    pub fn describe_sid(&self) -> String {
        self.sid.describe()
    }

    /// The parts of `si` the checks use, the signed attributes' values decoded.
    pub(crate) fn read(si: &SignerInfoRef<'_>) -> std::result::Result<SignerInfo, String> {
        let sid = match &si.sid {
            SignerIdRef::IssuerAndSerialNumber(isn) => {
                if isn.issuer.tag != Tag::Sequence {
                    return Err("signerInfo: issuer is not a Name".into());
                }
                SignerId::IssuerSerial {
                    issuer: isn.issuer.der.to_vec(),
                    serial: isn.serial_number.as_bytes().to_vec(),
                }
            }
            SignerIdRef::SubjectKeyIdentifier(id) => SignerId::KeyId(id.as_bytes().to_vec()),
        };
        let mut content_types = vec![];
        let mut message_digests = vec![];
        let mut signing_time = None;
        for a in si.signed_attrs.iter().flat_map(|s| s.attrs.iter()) {
            for v in a.values.iter() {
                match a.oid {
                    oid::CONTENT_TYPE => content_types.push(
                        v.decode_as::<ObjectIdentifier>()
                            .map_err(|_| "contentType is not an OBJECT IDENTIFIER")?,
                    ),
                    oid::MESSAGE_DIGEST => message_digests.push(
                        v.decode_as::<OctetStringRef>()
                            .map_err(|_| "messageDigest is not an OCTET STRING")?
                            .as_bytes()
                            .to_vec(),
                    ),
                    oid::SIGNING_TIME => {
                        let t = match v.tag() {
                            Tag::UtcTime => v.decode_as::<UtcTime>().map(|t| t.to_date_time()),
                            _ => v.decode_as::<GeneralizedTime>().map(|t| t.to_date_time()),
                        };
                        // DateTime shows as RFC 3339, seconds and "Z".
                        signing_time =
                            Some(t.map_err(|_| "bad signingTime".to_string())?.to_string());
                    }
                    _ => {}
                }
            }
        }
        Ok(SignerInfo {
            sid,
            digest_oid: si.digest_alg.oid,
            signed_attrs: si.signed_attrs.as_ref().map(|s| s.der.clone()),
            content_types,
            message_digests,
            signing_time,
            signature_alg: si.signature_algorithm.clone(),
            signature: si.signature.as_bytes().to_vec(),
        })
    }
}

/// A parsed SignedData.
#[derive(Clone, Debug)]
pub struct SignedData {
    /// It came wrapped in a ContentInfo (false: bare SignedData, as in EFI variables).
    pub content_info: bool,
    pub version: u32,
    pub digest_algorithms: Vec<ObjectIdentifier>,
    /// encapContentInfo.eContentType.
    pub content_type: ObjectIdentifier,
    /// The eContent octets when the content is attached.
    pub content: Option<Vec<u8>>,
    /// Every certificate carried (DER), in stored order.
    pub certs: Vec<Vec<u8>>,
    pub signers: Vec<SignerInfo>,
}

/// The certificates a SignedData carries (DER, as received, in stored
/// order); other CertificateChoices (attribute certificates...) are skipped.
pub(crate) fn certificates(sd: &SignedDataRef<'_>) -> Vec<Vec<u8>> {
    sd.certificates
        .iter()
        .flatten()
        .filter(|c| c.tag == Tag::Sequence)
        .map(|c| c.der.to_vec())
        .collect()
}

/// The first of `certs` that `sid` names.
pub(crate) fn find_signer_cert<'c>(certs: &'c [Vec<u8>], sid: &SignerId) -> Option<&'c [u8]> {
    certs
        .iter()
        .find(|c| X509Certificate::from_der(c).is_ok_and(|(_, p)| sid.matches(&p)))
        .map(|c| c.as_slice())
}

/// Parse a DER SignedData, bare or in a ContentInfo. Zero padding after it
/// is accepted. `origin` names the input in errors.
pub fn parse(der: &[u8], origin: &Path) -> Result<SignedData> {
    read_signed_data(der, true, |content_info, sd| {
        let content = match &sd.encap_content_info.econtent {
            None => None,
            Some(c) if c.tag() == Tag::OctetString => Some(c.value().to_vec()),
            // PKCS#7 allows any type here (Authenticode uses a SEQUENCE).
            Some(c) => Some(c.to_der().map_err(|e| format!("eContent: {e}"))?),
        };
        Ok(SignedData {
            content_info,
            version: sd.version,
            digest_algorithms: sd.digest_algorithms.0.iter().map(|a| a.oid).collect(),
            content_type: sd.encap_content_info.econtent_type,
            content,
            certs: certificates(sd),
            signers: sd
                .signer_infos
                .0
                .iter()
                .map(SignerInfo::read)
                .collect::<std::result::Result<_, _>>()?,
        })
    })
    .map_err(|e| Error::input(origin, format!("not a valid PKCS#7 SignedData: {e}")))
}

// ---------------------------------------------------------------------------
// Checking

impl SignedData {
    /// The certificate `si` names, if the SignedData carries it.
    pub fn signer_cert(&self, si: &SignerInfo) -> Option<&[u8]> {
        find_signer_cert(&self.certs, &si.sid)
    }

    /// Cryptographic check of every SignerInfo over detached `content`:
    /// with signed attributes, contentType matches and messageDigest is the
    /// content's hash and the signature covers the attributes; without them
    /// the signature covers the content. Says nothing about trust (see
    /// [`SignedData::trusted_by`]). Returns the signer certificates.
    pub fn verify_detached(&self, content: &[u8]) -> std::result::Result<Vec<&[u8]>, String> {
        if self.signers.is_empty() {
            return Err("no SignerInfo".into());
        }
        self.signers
            .iter()
            .map(|si| self.verify_signer(si, content))
            .collect()
    }

    fn verify_signer<'s>(
        &'s self,
        si: &SignerInfo,
        content: &[u8],
    ) -> std::result::Result<&'s [u8], String> {
        let hash = Hash::from_oid(&si.digest_oid)
            .ok_or_else(|| format!("unsupported digest algorithm {}", hash_name(&si.digest_oid)))?;
        let cert_der = self.signer_cert(si).ok_or_else(|| {
            format!(
                "signer certificate ({}) is not in the signature",
                si.describe_sid()
            )
        })?;
        let (_, cert) = X509Certificate::from_der(cert_der)
            .map_err(|e| format!("signer certificate does not parse: {e}"))?;
        let msg: &[u8] = match &si.signed_attrs {
            None => content,
            Some(attrs) => {
                match si.content_types.as_slice() {
                    [ct] if *ct == self.content_type => {}
                    [ct] => {
                        return Err(format!(
                            "contentType attribute {ct} differs from the content type {}",
                            self.content_type
                        ))
                    }
                    [] => return Err("signed attributes lack contentType".into()),
                    _ => return Err("more than one contentType attribute".into()),
                }
                let md = match si.message_digests.as_slice() {
                    [md] => md,
                    [] => return Err("no messageDigest attribute".into()),
                    _ => return Err("more than one messageDigest attribute".into()),
                };
                if *md != hash.digest(content) {
                    return Err("messageDigest does not match the content".into());
                }
                attrs
            }
        };
        verify_raw(&cert, si, hash, msg)?;
        Ok(cert_der)
    }

    /// Trust, EDK2-style: the index of the first anchor such that the
    /// certificate `leaf` (a signer certificate), or one on a path from it
    /// upward through the certificates carried here, is byte-equal to it or
    /// validly signed by it. Validity periods are ignored: firmware has no
    /// trusted clock.
    pub fn trusted_by(&self, leaf: &[u8], anchors: &[Vec<u8>]) -> Option<usize> {
        self.trusted_path(leaf, anchors).ok().map(|p| p.anchor)
    }

    /// The path [`Self::trusted_by`] finds, or why there is none.
    pub fn trusted_path(
        &self,
        leaf: &[u8],
        anchors: &[Vec<u8>],
    ) -> std::result::Result<crate::chain::CertPath, String> {
        crate::chain::uefi_path(leaf, &self.certs, anchors)
    }
}

/// Verify `si.signature` over `msg` with `cert`'s key. The hash comes from
/// the signature algorithm when it names one, else from the digestAlgorithm
/// (rsaEncryption / id-ecPublicKey, as OpenSSL writes for RSA).
pub(crate) fn verify_raw(
    cert: &X509Certificate<'_>,
    si: &SignerInfo,
    digest: Hash,
    msg: &[u8],
) -> std::result::Result<(), String> {
    let scheme = crate::sigalg::Scheme::from_signer_info(&si.signature_alg, digest)?;
    crate::sigalg::verify(cert.public_key(), scheme, msg, &si.signature)
        .map_err(|e| format!("{e} with the key of '{}'", cert.subject()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{FileKey, KeyType};
    use crate::x509::{CertSpec, Subject};
    use rcgen::KeyUsagePurpose as Ku;

    fn key(t: KeyType) -> FileKey {
        FileKey::from_pkcs8(&t.generate().unwrap(), Path::new("test.key")).unwrap()
    }

    fn cert_for(k: &FileKey, cn: &str) -> Vec<u8> {
        let spec = CertSpec {
            subject: Subject {
                common_name: cn.into(),
                ..Default::default()
            },
            ca: true,
            not_before: OffsetDateTime::now_utc().replace_nanosecond(0).unwrap(),
            days: 30,
            key_usage: vec![Ku::DigitalSignature, Ku::KeyCertSign],
            eku: vec![],
        };
        x509::issue(&spec, k, None).unwrap()
    }

    fn opts<'a>(k: &'a FileKey, cert: &'a [u8], hash: Hash) -> DetachedOptions<'a> {
        DetachedOptions {
            signer: k,
            cert,
            chain: &[],
            hash,
            signed_attrs: false,
            signing_time: None,
            content_info: false,
        }
    }

    #[test]
    fn round_trip_every_form() {
        let content = b"variable payload".to_vec();
        for (kt, hash) in [
            (KeyType::Rsa(2048), Hash::Sha256),
            (KeyType::Rsa(2048), Hash::Sha512),
            (KeyType::EcP256, Hash::Sha256),
            (KeyType::EcP384, Hash::Sha384),
            (KeyType::EcP256, Hash::Sha512),
            (KeyType::EcP384, Hash::Sha512),
        ] {
            let k = key(kt);
            let cert = cert_for(&k, "Signer");
            for (attrs, ci) in [(false, false), (true, false), (false, true), (true, true)] {
                let mut o = opts(&k, &cert, hash);
                o.signed_attrs = attrs;
                o.content_info = ci;
                o.signing_time = Some(OffsetDateTime::now_utc());
                let der = sign_detached(&content, &o).unwrap();
                let sd = parse(&der, Path::new("x")).unwrap();
                assert_eq!(sd.content_info, ci);
                assert_eq!(sd.signers.len(), 1);
                assert_eq!(sd.signers[0].signed_attrs.is_some(), attrs);
                assert_eq!(sd.signers[0].signing_time.is_some(), attrs);
                let signers = sd.verify_detached(&content).unwrap();
                assert_eq!(signers, vec![cert.as_slice()]);
                assert_eq!(
                    sd.trusted_by(signers[0], std::slice::from_ref(&cert)),
                    Some(0)
                );
                let mut other = content.clone();
                other[0] ^= 1;
                assert!(sd.verify_detached(&other).is_err(), "{kt} {hash:?}");
            }
        }
    }

    #[test]
    fn rsa_without_attributes_is_deterministic() {
        let k = key(KeyType::Rsa(2048));
        let cert = cert_for(&k, "PK");
        let a = sign_detached(b"x", &opts(&k, &cert, Hash::Sha256)).unwrap();
        let b = sign_detached(b"x", &opts(&k, &cert, Hash::Sha256)).unwrap();
        assert_eq!(a, b);
        // EDK2 finds the SHA-256 OID at offset 13 of a bare SignedData.
        assert_eq!(a[1], 0x82);
        assert_eq!(
            &a[13..22],
            &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01]
        );
    }

    #[test]
    fn unsupported_hashes_are_clear_errors() {
        let k = key(KeyType::EcP256);
        let cert = cert_for(&k, "EC");
        let e = sign_detached(b"x", &opts(&k, &cert, Hash::Sha384)).unwrap_err();
        assert!(e.to_string().contains("sha384"), "{e}");
        let other = key(KeyType::EcP256);
        let e = sign_detached(b"x", &opts(&other, &cert, Hash::Sha256)).unwrap_err();
        assert!(e.to_string().contains("does not belong"), "{e}");
    }

    /// Signed attributes out of DER order, as some signers write them, are
    /// checked over the bytes received; certificates keep their stored order
    /// and duplicates, as OpenSSL keeps them (der's SetOfVec would sort them
    /// and refuse the duplicate).
    #[test]
    fn signed_attributes_and_certificates_are_read_as_received() {
        use crate::asn1::children;
        let content = b"efi variable";
        let k = key(KeyType::EcP256);
        let cert = cert_for(&k, "Signer");
        let other = cert_for(&key(KeyType::EcP256), "Other");
        let mut o = opts(&k, &cert, Hash::Sha256);
        o.signed_attrs = true;
        o.signing_time = Some(OffsetDateTime::now_utc());
        let der = sign_detached(content, &o).unwrap();

        // Bare SignedData: version, digestAlgorithms, encapContentInfo, [0] certificates, signerInfos.
        let sd = children(&der);
        let si = children(children(sd[4].der)[0].der);
        let mut attrs: Vec<&[u8]> = children(si[3].der).iter().map(|a| a.der).collect();
        attrs.reverse();
        let body = attrs.concat();
        let set = Any::new(Tag::Set, body.clone()).unwrap().to_der().unwrap();
        let signature = k
            .sign(crate::sigalg::Scheme::Ecdsa(Hash::Sha256), &set)
            .unwrap();
        let ctx0 = Tag::ContextSpecific {
            constructed: true,
            number: der::TagNumber::N0,
        };
        let si = [
            si[0].der,
            si[1].der,
            si[2].der,
            &Any::new(ctx0, body).unwrap().to_der().unwrap(),
            si[4].der,
            &OctetString::new(signature).unwrap().to_der().unwrap(),
        ]
        .concat();
        let si = Any::new(Tag::Sequence, si).unwrap().to_der().unwrap();
        let certs = [other.clone(), cert.clone(), other.clone()].concat();
        let rebuilt = [
            sd[0].der,
            sd[1].der,
            sd[2].der,
            &Any::new(ctx0, certs).unwrap().to_der().unwrap(),
            &Any::new(Tag::Set, si).unwrap().to_der().unwrap(),
        ]
        .concat();
        let rebuilt = Any::new(Tag::Sequence, rebuilt).unwrap().to_der().unwrap();

        let p = parse(&rebuilt, Path::new("x")).unwrap();
        assert_eq!(p.certs, vec![other.clone(), cert.clone(), other]);
        assert_eq!(p.signers[0].signed_attrs.as_deref(), Some(set.as_slice()));
        assert_eq!(p.verify_detached(content).unwrap(), vec![cert.as_slice()]);
        assert!(p.verify_detached(b"other").is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let k = key(KeyType::EcP256);
        let cert = cert_for(&k, "G");
        let mut o = opts(&k, &cert, Hash::Sha256);
        o.signed_attrs = true;
        o.content_info = true;
        o.signing_time = Some(OffsetDateTime::now_utc());
        let der = sign_detached(b"c", &o).unwrap();
        let p = Path::new("fuzz");
        for n in 0..der.len() {
            assert!(parse(&der[..n], p).is_err(), "truncated at {n}");
        }
        for i in 0..der.len() {
            for x in [0x01, 0x80, 0xff] {
                let mut b = der.clone();
                b[i] ^= x;
                if let Ok(sd) = parse(&b, p) {
                    if let Ok(s) = sd.verify_detached(b"c") {
                        let _ = sd.trusted_by(s[0], std::slice::from_ref(&cert));
                    }
                }
            }
        }
    }
}
