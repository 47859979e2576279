//! Authenticode signatures: PKCS#7 SignedData over SpcIndirectDataContent.
//!
//! What we write follows the Authenticode PE specification the way sbsign,
//! osslsigncode and signtool do it, because that is what firmware (EDK2's
//! `AuthenticodeVerify`, built on OpenSSL's PKCS#7 code) accepts:
//!
//! ```text
//! ContentInfo { signedData, [0] EXPLICIT SignedData {
//!   version 1, digestAlgorithms { sha256 (or sha384 for P-384 keys) },
//!   contentInfo { 1.3.6.1.4.1.311.2.1.4, [0] EXPLICIT SpcIndirectDataContent },  -- no OCTET STRING
//!   certificates [0] { signer, chain... },
//!   signerInfos { SignerInfo { version 1, issuerAndSerialNumber, digestAlgorithm,
//!     [0] signed attributes, signatureAlgorithm, signature } } } }
//! ```
//!
//! The messageDigest attribute covers the *content octets* of the
//! SpcIndirectDataContent (its DER without the outer tag and length), not the
//! whole element as CMS would have it.
//!
//! Reading uses the same types, with `der` (see [`crate::pkcs7`] for what is
//! kept as received): the SpcIndirectDataContent's bytes and the signed
//! attributes' bytes are checked as they came, not re-encoded.

use std::path::Path;

use cms::cert::x509::attr::Attribute;
use cms::cert::x509::spki::AlgorithmIdentifierOwned;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::EncapsulatedContentInfo;
use der::asn1::{BitString, BmpString, ObjectIdentifier, OctetString, SetOfVec};
use der::{Any, Decode, Encode, Sequence, Tag, TagNumber, Tagged};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::asn1::{attribute, Raw};
use crate::error::{Error, Result};
use crate::keys::Signer;
use crate::pkcs7::{name_string, SignerId};
use crate::sigalg::{alg_name, hash_name, AlgIdFor, DigestInfo, Hash, Scheme};
use crate::{asn1, oid, pkcs7};

/// The placeholder file name sbsign and signtool put into SpcPeImageData.
const OBSOLETE: &str = "<<<Obsolete>>>";

// ---------------------------------------------------------------------------
// Writing

/// Everything needed to sign one image digest.
pub struct SignOptions<'a> {
    pub signer: &'a dyn Signer,
    /// The signer's certificate (DER); its key must be `signer`'s.
    pub cert: &'a [u8],
    /// Further certificates (DER) to carry, e.g. intermediate CAs. The root
    /// is not needed: firmware has it in db.
    pub chain: &'a [Vec<u8>],
    /// Adds a signingTime signed attribute when set. Without it the output
    /// depends only on the inputs (RSA signatures are deterministic).
    pub signing_time: Option<OffsetDateTime>,
}

fn der_err(e: der::Error) -> Error {
    Error::Crypto(format!("encoding the Authenticode signature: {e}"))
}

fn context(number: TagNumber, constructed: bool) -> Tag {
    Tag::ContextSpecific {
        constructed,
        number,
    }
}

/// SpcPeImageData { flags: empty BIT STRING, file: [0] { [2] { [0] IMPLICIT BMPString "<<<Obsolete>>>" } } },
/// byte for byte what sbsign and signtool write.
fn spc_pe_image_data() -> der::Result<Any> {
    let name = BmpString::from_utf8(OBSOLETE)?;
    let unicode = Any::new(context(TagNumber::N0, false), name.as_bytes())?;
    let file = Any::new(context(TagNumber::N2, true), unicode.to_der()?)?;
    let link = Any::new(context(TagNumber::N0, true), file.to_der()?)?;
    let flags = BitString::new(0, Vec::new())?;
    Any::new(Tag::Sequence, [flags.to_der()?, link.to_der()?].concat())
}

/// `value` is `ANY OPTIONAL`, as osslsigncode declares it.
#[derive(Sequence)]
struct SpcAttributeTypeAndOptionalValue {
    value_type: ObjectIdentifier,
    value: Option<Any>,
}

#[derive(Sequence)]
struct SpcIndirectDataContent {
    data: SpcAttributeTypeAndOptionalValue,
    message_digest: DigestInfo,
}

/// The SpcIndirectDataContent for a PE image's SHA-256 digest.
fn spc_indirect_data_content(image_sha256: &[u8; 32]) -> der::Result<Any> {
    Any::encode_from(&SpcIndirectDataContent {
        data: SpcAttributeTypeAndOptionalValue {
            value_type: oid::SPC_PE_IMAGE_DATA,
            value: Some(spc_pe_image_data()?),
        },
        message_digest: DigestInfo {
            algorithm: Hash::Sha256.alg_id()?,
            digest: OctetString::new(image_sha256.to_vec())?,
        },
    })
}

#[derive(Sequence)]
struct SignerInfoDer {
    version: CmsVersion,
    /// IssuerAndSerialNumber, assembled from the certificate's own bytes.
    sid: Any,
    digest_algorithm: AlgorithmIdentifierOwned,
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT")]
    signed_attrs: SetOfVec<Attribute>,
    signature_algorithm: AlgorithmIdentifierOwned,
    signature: OctetString,
}

/// Sign the Authenticode digest of a PE image. Returns the DER of the PKCS#7
/// ContentInfo (what sbsign --detached writes and what goes into WIN_CERTIFICATE).
pub fn sign_digest(image_sha256: &[u8; 32], opts: &SignOptions) -> Result<Vec<u8>> {
    let cert = pkcs7::check_signer(opts.signer, opts.cert, opts.chain)?;
    // The key's own scheme, whose hash is also the digest algorithm. A
    // PSS-typed key is refused: no firmware is known to check such a signature.
    let scheme = match opts.signer.scheme() {
        Scheme::RsaPss { .. } => {
            return Err(Error::Usage(format!(
                "{} is an RSA-PSS key: Authenticode signatures are RSA PKCS#1 v1.5 or ECDSA",
                opts.signer.origin()
            )))
        }
        s => s,
    };
    let hash = scheme.hash();
    let signing_time = opts
        .signing_time
        .map(|t| asn1::signing_time_value(t, der_err))
        .transpose()?;
    let spc = spc_indirect_data_content(image_sha256).map_err(der_err)?;
    // Authenticode: the digest covers the content octets, without tag and length.
    let message_digest = hash.digest(spc.value());

    let signed_attrs = (|| -> der::Result<SetOfVec<Attribute>> {
        let mut attrs = vec![
            attribute(
                oid::CONTENT_TYPE,
                Any::encode_from(&oid::SPC_INDIRECT_DATA)?,
            )?,
            attribute(
                oid::MESSAGE_DIGEST,
                Any::new(Tag::OctetString, message_digest)?,
            )?,
            attribute(oid::SPC_SP_OPUS_INFO, Any::new(Tag::Sequence, Vec::new())?)?,
        ];
        if let Some(t) = signing_time {
            attrs.push(attribute(oid::SIGNING_TIME, t)?);
        }
        // SET OF in DER order, which is also what the signature is computed over.
        SetOfVec::try_from(attrs)
    })()
    .map_err(der_err)?;
    let signature = opts
        .signer
        .sign(scheme, &signed_attrs.to_der().map_err(der_err)?)?;

    (|| -> der::Result<Vec<u8>> {
        let signer_info = SignerInfoDer {
            version: CmsVersion::V1,
            sid: pkcs7::issuer_and_serial(&cert)?,
            digest_algorithm: hash.alg_id()?,
            signed_attrs,
            signature_algorithm: scheme.alg_id(AlgIdFor::SignerInfo)?,
            signature: OctetString::new(signature)?,
        };
        let signed_data = pkcs7::signed_data(
            hash,
            EncapsulatedContentInfo {
                econtent_type: oid::SPC_INDIRECT_DATA,
                econtent: Some(spc),
            },
            opts.cert,
            opts.chain,
            Any::encode_from(&signer_info)?,
        )?;
        ContentInfo {
            content_type: oid::SIGNED_DATA,
            content: Any::encode_from(&signed_data)?,
        }
        .to_der()
    })()
    .map_err(der_err)
}

// ---------------------------------------------------------------------------
// Reading

/// A parsed Authenticode signature.
#[derive(Clone, Debug)]
pub struct Signature {
    /// The image digest the signature vouches for (SpcIndirectDataContent).
    pub image_digest: Vec<u8>,
    /// Its algorithm: "sha256", "sha384", "sha512", "sha1", or the dotted OID.
    pub digest_algorithm: String,
    /// SpcIndirectDataContent.data.type: SpcPeImageData for PE images.
    pub data_type: ObjectIdentifier,
    /// Every certificate carried in the signature (DER), in stored order.
    pub certs: Vec<Vec<u8>>,
    /// The certificate the SignerInfo points at (issuer + serial, or key id).
    pub signer_cert: Option<Vec<u8>>,
    /// The signer's issuer and serial (hex) as named in the SignerInfo,
    /// or "subjectKeyIdentifier" and the key id.
    pub signer_issuer: String,
    pub signer_serial: String,
    /// SignerInfo.digestAlgorithm (hash of the signed attributes).
    pub signer_digest_algorithm: String,
    /// SignerInfo.signatureAlgorithm, e.g. "rsaEncryption", "ecdsa-with-SHA256".
    pub signature_algorithm: String,
    /// The signingTime signed attribute (RFC 3339), if any.
    pub signing_time: Option<String>,
    pub signed_data_version: u32,
    /// The content was wrapped in an OCTET STRING (CMS style) instead of
    /// being the SpcIndirectDataContent itself (PKCS#7 / Authenticode style).
    pub cms_wrapped: bool,
    /// Further signatures nested in the unsigned attributes (DER ContentInfo each).
    pub nested: Vec<Vec<u8>>,
    /// A countersignature or RFC 3161 timestamp is attached.
    pub timestamped: bool,

    /// The SpcIndirectDataContent's content octets as received: what the
    /// messageDigest covers.
    spc_content: Vec<u8>,
    /// The whole SpcIndirectDataContent element as received, when CMS-style
    /// (a CMS signer digests the whole element).
    spc_element: Option<Vec<u8>>,
    signer: pkcs7::SignerInfo,
}

/// Parse a PKCS#7 Authenticode signature (ours, sbsign's, osslsigncode's,
/// pesign's, signtool's). Zero padding after it (WIN_CERTIFICATE alignment)
/// is accepted. `origin` names the input in errors.
pub fn parse(der: &[u8], origin: &Path) -> Result<Signature> {
    pkcs7::read_signed_data(der, false, |_, sd| read_signature(sd))
        .map_err(|e| Error::input(origin, format!("not a valid Authenticode signature: {e}")))
}

fn read_signature(sd: &pkcs7::SignedDataRef<'_>) -> std::result::Result<Signature, String> {
    let eci = &sd.encap_content_info;
    if eci.econtent_type != oid::SPC_INDIRECT_DATA {
        return Err(format!(
            "content type {} is not SpcIndirectDataContent ({})",
            eci.econtent_type,
            oid::SPC_INDIRECT_DATA
        ));
    }
    let bad_spc = |e: der::Error| format!("SpcIndirectDataContent: {e}");
    let (spc, spc_content, spc_element) = match &eci.econtent {
        Some(c) if c.tag() == Tag::Sequence => (
            c.decode_as::<SpcIndirectDataContent>().map_err(bad_spc)?,
            c.value().to_vec(),
            None,
        ),
        Some(c) if c.tag() == Tag::OctetString => {
            let inner = Raw::from_der(c.value()).map_err(|e| format!("wrapped content: {e}"))?;
            if inner.tag != Tag::Sequence {
                return Err("wrapped content is not one SpcIndirectDataContent".into());
            }
            (
                SpcIndirectDataContent::from_der(inner.der).map_err(bad_spc)?,
                inner.value.to_vec(),
                Some(inner.der.to_vec()),
            )
        }
        _ => return Err("SpcIndirectDataContent missing".into()),
    };

    let si = match sd.signer_infos.0.as_slice() {
        [si] => si,
        [] => return Err("no signerInfo".into()),
        _ => return Err("more than one signerInfo (Authenticode allows exactly one)".into()),
    };
    let signer = pkcs7::SignerInfo::read(si)?;
    let mut nested = vec![];
    let mut timestamped = false;
    for a in si.unsigned_attrs.iter().flatten() {
        match a.oid {
            oid::MS_NESTED_SIGNATURE => nested.extend(a.values.0.iter().map(|v| v.der.to_vec())),
            oid::COUNTER_SIGNATURE | oid::MS_RFC3161_TIMESTAMP => {
                timestamped |= !a.values.0.is_empty()
            }
            _ => {}
        }
    }

    let certs = pkcs7::certificates(sd);
    let signer_cert = pkcs7::find_signer_cert(&certs, &signer.sid).map(<[u8]>::to_vec);
    let (signer_issuer, signer_serial) = match &signer.sid {
        SignerId::IssuerSerial { issuer, serial } => {
            (name_string(issuer), crate::codec::hex(serial))
        }
        SignerId::KeyId(id) => ("subjectKeyIdentifier".to_string(), crate::codec::hex(id)),
    };
    Ok(Signature {
        image_digest: spc.message_digest.digest.as_bytes().to_vec(),
        digest_algorithm: hash_name(&spc.message_digest.algorithm.oid),
        data_type: spc.data.value_type,
        certs,
        signer_cert,
        signer_issuer,
        signer_serial,
        signer_digest_algorithm: hash_name(&signer.digest_oid),
        signature_algorithm: alg_name(&signer.signature_alg.oid),
        signing_time: signer.signing_time.clone(),
        signed_data_version: sd.version,
        cms_wrapped: spc_element.is_some(),
        nested,
        timestamped,
        spc_content,
        spc_element,
        signer,
    })
}

// ---------------------------------------------------------------------------
// Checking

/// Cryptographic check of one signature: the messageDigest attribute matches
/// the SpcIndirectDataContent, the SignerInfo signature verifies with the
/// signer certificate's key, and the image digest inside equals
/// `expected_image_digest`. Says nothing about trust (see `chains_to`).
pub fn verify_signature(
    sig: &Signature,
    expected_image_digest: &[u8],
) -> std::result::Result<(), String> {
    let si = &sig.signer;
    let attrs = si
        .signed_attrs
        .as_deref()
        .ok_or("no signed attributes (Authenticode requires them)")?;
    // A missing contentType is tolerated like Windows and OpenSSL do; a wrong one is not.
    match si.content_types.as_slice() {
        [] => {}
        [ct] if *ct == oid::SPC_INDIRECT_DATA => {}
        [ct] => {
            return Err(format!(
                "contentType attribute is {ct}, not SpcIndirectDataContent"
            ))
        }
        _ => return Err("more than one contentType attribute".into()),
    }
    let md = match si.message_digests.as_slice() {
        [md] => md,
        [] => return Err("no messageDigest attribute".into()),
        _ => return Err("more than one messageDigest attribute".into()),
    };
    // SHA-1 signer digests are not accepted.
    let hash = Hash::from_oid(&si.digest_oid).ok_or_else(|| {
        format!(
            "unsupported signer digest algorithm {}",
            sig.signer_digest_algorithm
        )
    })?;
    // Authenticode hashes the content octets; a CMS-style signer hashes the whole element.
    let covers = |b: &[u8]| hash.digest(b) == *md;
    if !covers(&sig.spc_content) && !sig.spc_element.as_deref().is_some_and(covers) {
        return Err("messageDigest attribute does not match the SpcIndirectDataContent".into());
    }
    let cert_der = sig.signer_cert.as_deref().ok_or_else(|| {
        format!(
            "signer certificate (issuer '{}', serial {}) is not in the signature",
            sig.signer_issuer, sig.signer_serial
        )
    })?;
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| format!("signer certificate does not parse: {e}"))?;
    pkcs7::verify_raw(&cert, si, hash, attrs)?;
    if sig.image_digest != expected_image_digest {
        return Err(format!(
            "image digest mismatch: signed {} {}, image has {}",
            sig.digest_algorithm,
            crate::codec::hex(&sig.image_digest),
            crate::codec::hex(expected_image_digest)
        ));
    }
    Ok(())
}

/// What a signer certificate says that firmware does not check but a
/// release engineer should hear: a root CA signing images directly (its
/// key then has to sit on the build machine), or an extended key usage
/// that does not include codeSigning (Windows and some shims refuse it).
pub fn signer_warnings(cert_der: &[u8]) -> Vec<String> {
    let Ok((_, c)) = X509Certificate::from_der(cert_der) else {
        return vec![];
    };
    let mut w = vec![];
    let name = c.subject().to_string();
    if c.subject() == c.issuer() && matches!(c.basic_constraints(), Ok(Some(bc)) if bc.value.ca) {
        w.push(format!(
            "signer '{name}' is a root CA: sign with a sub CA or a signing certificate so the root key can stay offline"
        ));
    }
    if let Ok(Some(eku)) = c.extended_key_usage() {
        if !eku.value.code_signing && !eku.value.any {
            w.push(format!(
                "signer '{name}' has an extended key usage without codeSigning"
            ));
        }
    }
    w
}

/// Trust, EDK2-style (see [`crate::chain`]): the index of the first anchor
/// that a valid path from the signer certificate (through the certificates
/// carried in the signature) ends at.
pub fn chains_to(sig: &Signature, anchors: &[Vec<u8>]) -> Option<usize> {
    trust_path(sig, anchors).ok().map(|p| p.anchor)
}

/// The path [`chains_to`] finds, or why there is none.
pub fn trust_path(
    sig: &Signature,
    anchors: &[Vec<u8>],
) -> std::result::Result<crate::chain::CertPath, String> {
    let leaf = sig
        .signer_cert
        .as_deref()
        .ok_or("signer certificate is not in the signature")?;
    crate::chain::uefi_path(leaf, &sig.certs, anchors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asn1::children as inner;
    use crate::keys::{FileKey, KeyType};
    use crate::x509::{self, CertSpec, Subject};
    use der::Decode;
    use rcgen::KeyUsagePurpose as Ku;

    const DIGEST: [u8; 32] = [0x5a; 32];

    fn key(t: KeyType) -> FileKey {
        FileKey::from_pkcs8(&t.generate().unwrap(), Path::new("test.key")).unwrap()
    }

    fn spec(cn: &str, ca: bool) -> CertSpec {
        CertSpec {
            subject: Subject {
                common_name: cn.into(),
                ..Default::default()
            },
            ca,
            not_before: OffsetDateTime::now_utc().replace_nanosecond(0).unwrap(),
            days: 30,
            key_usage: if ca {
                vec![Ku::DigitalSignature, Ku::KeyCertSign]
            } else {
                vec![Ku::DigitalSignature]
            },
            eku: vec![],
        }
    }

    fn self_signed(k: &FileKey, cn: &str, ca: bool) -> Vec<u8> {
        x509::issue(&spec(cn, ca), k, None).unwrap()
    }

    fn opts<'a>(k: &'a FileKey, cert: &'a [u8], chain: &'a [Vec<u8>]) -> SignOptions<'a> {
        SignOptions {
            signer: k,
            cert,
            chain,
            signing_time: None,
        }
    }

    fn parse_ok(der: &[u8]) -> Signature {
        parse(der, Path::new("test.p7")).unwrap()
    }

    #[test]
    fn rsa_sign_parse_verify() {
        let k = key(KeyType::Rsa(2048));
        let cert = self_signed(&k, "DB", true);
        let der = sign_digest(&DIGEST, &opts(&k, &cert, &[])).unwrap();
        let s = parse_ok(&der);
        assert_eq!(s.image_digest, DIGEST);
        assert_eq!(s.digest_algorithm, "sha256");
        assert_eq!(s.data_type, oid::SPC_PE_IMAGE_DATA);
        assert_eq!(s.certs, vec![cert.clone()]);
        assert_eq!(s.signer_cert.as_deref(), Some(cert.as_slice()));
        assert_eq!(s.signer_issuer, "CN=DB");
        assert_eq!(s.signer_digest_algorithm, "sha256");
        assert_eq!(s.signature_algorithm, "rsaEncryption");
        assert_eq!(s.signing_time, None);
        assert_eq!(s.signed_data_version, 1);
        assert!(!s.cms_wrapped && !s.timestamped && s.nested.is_empty());

        verify_signature(&s, &DIGEST).unwrap();
        let e = verify_signature(&s, &[0x5b; 32]).unwrap_err();
        assert!(e.contains("image digest mismatch"), "{e}");

        assert_eq!(chains_to(&s, std::slice::from_ref(&cert)), Some(0));
        let other = self_signed(&key(KeyType::EcP256), "Other", true);
        assert_eq!(chains_to(&s, std::slice::from_ref(&other)), None);
        assert_eq!(chains_to(&s, &[other, cert]), Some(1));
    }

    #[test]
    fn deterministic_without_time_and_signing_time_when_given() {
        let k = key(KeyType::Rsa(2048));
        let cert = self_signed(&k, "DB", true);
        let a = sign_digest(&DIGEST, &opts(&k, &cert, &[])).unwrap();
        let b = sign_digest(&DIGEST, &opts(&k, &cert, &[])).unwrap();
        assert_eq!(a, b);

        let t = at(2024, 1, 2, 3, 4, 5, 678, 1);
        let mut o = opts(&k, &cert, &[]);
        o.signing_time = Some(t);
        let c = sign_digest(&DIGEST, &o).unwrap();
        assert_ne!(a, c);
        let s = parse_ok(&c);
        assert_eq!(s.signing_time.as_deref(), Some("2024-01-02T02:04:05Z"));
        verify_signature(&s, &DIGEST).unwrap();
        assert!(find(&c, &[0x17, 0x0d]).is_some(), "UTCTime expected");

        o.signing_time = Some(at(2051, 6, 1, 0, 0, 0, 0, 0));
        let d = sign_digest(&DIGEST, &o).unwrap();
        let s = parse_ok(&d);
        assert_eq!(s.signing_time.as_deref(), Some("2051-06-01T00:00:00Z"));
        assert!(
            find(&d, &[0x18, 0x0f]).is_some(),
            "GeneralizedTime expected"
        );
        verify_signature(&s, &DIGEST).unwrap();
    }

    #[allow(clippy::too_many_arguments)]
    fn at(y: i32, mo: u8, d: u8, h: u8, mi: u8, s: u8, ms: u16, off_h: i8) -> OffsetDateTime {
        let date = time::Date::from_calendar_date(y, mo.try_into().unwrap(), d).unwrap();
        time::PrimitiveDateTime::new(date, time::Time::from_hms_milli(h, mi, s, ms).unwrap())
            .assume_offset(time::UtcOffset::from_hms(off_h, 0, 0).unwrap())
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    /// The structure, checked element by element against the specification.
    #[test]
    fn encoding_layout() {
        let k = key(KeyType::Rsa(2048));
        let cert = self_signed(&k, "DB", true);
        let mut o = opts(&k, &cert, &[]);
        o.signing_time = Some(at(2030, 1, 1, 0, 0, 0, 0, 0));
        let der = sign_digest(&DIGEST, &o).unwrap();

        let ci = inner(&der);
        assert_eq!(ci.len(), 2);
        assert_eq!(
            ObjectIdentifier::from_der(ci[0].der).unwrap(),
            oid::SIGNED_DATA
        );
        let sd = inner(inner(ci[1].der)[0].der);
        assert_eq!(sd.len(), 5, "no crls, nothing after signerInfos");
        assert_eq!(sd[0].der, [0x02, 0x01, 0x01]);
        // digestAlgorithms = { sha256 with NULL }
        assert_eq!(sd[1].der, hex("310f300d06096086480165030402010500"));
        let eci = inner(sd[2].der);
        assert_eq!(
            ObjectIdentifier::from_der(eci[0].der).unwrap(),
            oid::SPC_INDIRECT_DATA
        );
        let spc = inner(eci[1].der)[0];
        assert_eq!(
            spc.tag,
            Tag::Sequence,
            "SpcIndirectDataContent directly, no OCTET STRING"
        );
        let parts = inner(spc.der);
        // SpcAttributeTypeAndOptionalValue exactly as sbsign writes it.
        let mut want = hex("3033060a2b06010401823702010f30250301 00a020a21e801c");
        for c in OBSOLETE.encode_utf16() {
            want.extend(c.to_be_bytes());
        }
        assert_eq!(parts[0].der, want);
        let mut want = hex("3031300d060960864801650304020105000420");
        want.extend(DIGEST);
        assert_eq!(parts[1].der, want);
        assert_eq!(parts.len(), 2);

        assert_eq!(sd[3].tag, context(TagNumber::N0, true), "certificates");
        assert_eq!(sd[3].value, cert.as_slice());
        let infos = inner(sd[4].der);
        assert_eq!(infos.len(), 1);
        let si = inner(infos[0].der);
        assert_eq!(si[0].der, [0x02, 0x01, 0x01]);
        let c = cms::cert::x509::Certificate::from_der(&cert).unwrap();
        assert_eq!(
            si[1].value,
            [
                c.tbs_certificate.issuer.to_der().unwrap(),
                c.tbs_certificate.serial_number.to_der().unwrap()
            ]
            .concat(),
            "issuerAndSerialNumber"
        );
        assert_eq!(si[2].der, hex("300d06096086480165030402010500"));
        assert_eq!(si[3].tag, context(TagNumber::N0, true), "signed attrs");
        let attrs = inner(si[3].der);
        let mut order = vec![];
        let mut values = vec![];
        for a in &attrs {
            let a = inner(a.der);
            order.push(ObjectIdentifier::from_der(a[0].der).unwrap());
            let v = inner(a[1].der);
            assert_eq!(v.len(), 1);
            values.push(v[0].der.to_vec());
        }
        assert_eq!(
            order,
            [
                oid::SPC_SP_OPUS_INFO,
                oid::CONTENT_TYPE,
                oid::SIGNING_TIME,
                oid::MESSAGE_DIGEST
            ]
        );
        assert_eq!(values[0], [0x30, 0x00]);
        let mut md = vec![0x04, 0x20];
        md.extend(Hash::Sha256.digest(spc.value));
        assert_eq!(
            values[3], md,
            "messageDigest = SHA-256 of the content octets"
        );
        // Attributes are in DER SET OF order.
        let elems: Vec<&[u8]> = attrs.iter().map(|a| a.der).collect();
        let mut sorted = elems.clone();
        sorted.sort();
        assert_eq!(elems, sorted);
        assert_eq!(si[4].der, hex("300d06092a864886f70d0101010500"));
        assert_eq!(si[5].tag, Tag::OctetString);
        assert_eq!(si[5].value.len(), 256);
        assert_eq!(si.len(), 6);

        // RustCrypto's own types read it too.
        let ci = cms::content_info::ContentInfo::from_der(&der).unwrap();
        let sd: cms::signed_data::SignedData = ci.content.decode_as().unwrap();
        assert_eq!(sd.version, CmsVersion::V1);
        assert_eq!(sd.signer_infos.0.len(), 1);
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn ec_keys() {
        for (kt, alg, digest) in [
            (KeyType::EcP256, "ecdsa-with-SHA256", "sha256"),
            (KeyType::EcP384, "ecdsa-with-SHA384", "sha384"),
        ] {
            let k = key(kt);
            let cert = self_signed(&k, "EC", true);
            let der = sign_digest(&DIGEST, &opts(&k, &cert, &[])).unwrap();
            let s = parse_ok(&der);
            assert_eq!(s.signature_algorithm, alg);
            assert_eq!(s.signer_digest_algorithm, digest);
            assert_eq!(s.digest_algorithm, "sha256");
            verify_signature(&s, &DIGEST).unwrap();
            assert!(verify_signature(&s, &[0; 32]).is_err());
            assert_eq!(chains_to(&s, &[cert]), Some(0));
        }
    }

    #[test]
    fn wrong_key_for_certificate_is_refused() {
        let k = key(KeyType::EcP256);
        let other = key(KeyType::EcP256);
        let cert = self_signed(&other, "DB", true);
        let e = sign_digest(&DIGEST, &opts(&k, &cert, &[])).unwrap_err();
        assert!(e.to_string().contains("does not belong"), "{e}");
        assert!(sign_digest(&DIGEST, &opts(&k, b"junk", &[])).is_err());
    }

    #[test]
    fn chain_of_trust() {
        let root_k = key(KeyType::EcP256);
        let root = self_signed(&root_k, "Root", true);
        let sub_k = key(KeyType::EcP256);
        let sub = x509::issue(&spec("Sub", true), &sub_k, Some((&root, &root_k))).unwrap();
        let leaf_k = key(KeyType::EcP384);
        let leaf = x509::issue(&spec("Leaf", false), &leaf_k, Some((&sub, &sub_k))).unwrap();
        let chain = vec![sub.clone(), leaf.clone()]; // duplicate of the leaf is dropped
        let der = sign_digest(&DIGEST, &opts(&leaf_k, &leaf, &chain)).unwrap();
        let s = parse_ok(&der);
        assert_eq!(s.certs, vec![leaf.clone(), sub.clone()]);
        assert_eq!(s.signer_cert.as_deref(), Some(leaf.as_slice()));
        verify_signature(&s, &DIGEST).unwrap();

        let unrelated = self_signed(&key(KeyType::EcP256), "Root", true);
        assert_eq!(chains_to(&s, std::slice::from_ref(&root)), Some(0));
        assert_eq!(chains_to(&s, &[unrelated.clone(), root.clone()]), Some(1));
        assert_eq!(chains_to(&s, std::slice::from_ref(&sub)), Some(0));
        assert_eq!(chains_to(&s, std::slice::from_ref(&leaf)), Some(0));
        assert_eq!(chains_to(&s, std::slice::from_ref(&unrelated)), None);
        assert_eq!(chains_to(&s, &[]), None);

        // Without the sub CA in the signature, the root alone is not enough...
        let der = sign_digest(&DIGEST, &opts(&leaf_k, &leaf, &[])).unwrap();
        let s2 = parse_ok(&der);
        assert_eq!(chains_to(&s2, std::slice::from_ref(&root)), None);
        // ...but the sub CA as anchor is.
        assert_eq!(chains_to(&s2, std::slice::from_ref(&sub)), Some(0));

        // A certificate that is not a CA cannot anchor anything but itself.
        let nonca_k = key(KeyType::EcP256);
        let nonca = self_signed(&nonca_k, "NotCA", false);
        let child_k = key(KeyType::EcP256);
        let child = x509::issue(&spec("Child", false), &child_k, Some((&nonca, &nonca_k))).unwrap();
        let der = sign_digest(&DIGEST, &opts(&child_k, &child, &[])).unwrap();
        let s3 = parse_ok(&der);
        verify_signature(&s3, &DIGEST).unwrap();
        assert_eq!(chains_to(&s3, std::slice::from_ref(&nonca)), None);
        assert_eq!(chains_to(&s3, std::slice::from_ref(&child)), Some(0));
    }

    /// Re-wrap the content CMS style: [0] { OCTET STRING { SpcIndirectDataContent } }.
    fn cms_wrap(der: &[u8]) -> Vec<u8> {
        let ci = inner(der);
        let sd = inner(inner(ci[1].der)[0].der);
        let mut body = vec![];
        for (i, t) in sd.iter().enumerate() {
            if i == 2 {
                let eci = inner(t.der);
                let spc = inner(eci[1].der)[0];
                let wrapped = EncapsulatedContentInfo {
                    econtent_type: ObjectIdentifier::from_der(eci[0].der).unwrap(),
                    econtent: Some(Any::encode_from(&OctetString::new(spc.der).unwrap()).unwrap()),
                };
                body.extend(wrapped.to_der().unwrap());
            } else {
                body.extend(t.der);
            }
        }
        ContentInfo {
            content_type: oid::SIGNED_DATA,
            content: Any::new(Tag::Sequence, body).unwrap(),
        }
        .to_der()
        .unwrap()
    }

    /// `der` with its signed attributes written in the order `written`
    /// leaves them, and signed again over them in the order `signed` leaves them.
    fn with_signed_attrs(
        der: &[u8],
        k: &FileKey,
        written: fn(&mut Vec<&[u8]>),
        signed: fn(&mut Vec<&[u8]>),
    ) -> Vec<u8> {
        let ci = inner(der);
        let sd = inner(inner(ci[1].der)[0].der);
        let si = inner(inner(sd[4].der)[0].der);
        let attrs: Vec<&[u8]> = inner(si[3].der).iter().map(|a| a.der).collect();
        let order = |f: fn(&mut Vec<&[u8]>)| {
            let mut a = attrs.clone();
            f(&mut a);
            a.concat()
        };
        let body = order(written);
        let set = Any::new(Tag::Set, order(signed)).unwrap().to_der().unwrap();
        let signature = k.sign(k.scheme(), &set).unwrap();
        let si = [
            si[0].der,
            si[1].der,
            si[2].der,
            &Any::new(context(TagNumber::N0, true), body)
                .unwrap()
                .to_der()
                .unwrap(),
            si[4].der,
            &OctetString::new(signature).unwrap().to_der().unwrap(),
        ]
        .concat();
        let infos = Any::new(
            Tag::Set,
            Any::new(Tag::Sequence, si).unwrap().to_der().unwrap(),
        );
        let sd = [
            sd[0].der,
            sd[1].der,
            sd[2].der,
            sd[3].der,
            &infos.unwrap().to_der().unwrap(),
        ]
        .concat();
        ContentInfo {
            content_type: oid::SIGNED_DATA,
            content: Any::new(Tag::Sequence, sd).unwrap(),
        }
        .to_der()
        .unwrap()
    }

    /// signtool does not always sort the signed attributes. The signature
    /// covers them as written, so they are checked as received, as OpenSSL
    /// (sbverify, EDK2) does, never re-encoded.
    #[test]
    fn unsorted_signed_attributes_verify_as_received() {
        let k = key(KeyType::EcP256);
        let cert = self_signed(&k, "DB", true);
        let mut o = opts(&k, &cert, &[]);
        o.signing_time = Some(at(2030, 1, 1, 0, 0, 0, 0, 0));
        let sorted = sign_digest(&DIGEST, &o).unwrap();
        let der = with_signed_attrs(&sorted, &k, |a| a.reverse(), |a| a.reverse());
        let s = parse_ok(&der);
        assert_ne!(s.signer.signed_attrs, parse_ok(&sorted).signer.signed_attrs);
        assert_eq!(s.signing_time.as_deref(), Some("2030-01-01T00:00:00Z"));
        verify_signature(&s, &DIGEST).unwrap();
        // Written unsorted but signed in DER order: a reader that re-encoded
        // the attributes would accept it; firmware does not.
        let resorted = with_signed_attrs(&sorted, &k, |a| a.reverse(), |_| {});
        let e = verify_signature(&parse_ok(&resorted), &DIGEST).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");

        if have("openssl") {
            let dir = tempfile::tempdir().unwrap();
            let p7 = dir.path().join("sig.p7");
            let content = dir.path().join("content.bin");
            std::fs::write(&p7, &der).unwrap();
            std::fs::write(&content, &s.spc_content).unwrap();
            let (ok, out) = run(std::process::Command::new("openssl")
                .args(["smime", "-verify", "-inform", "DER", "-binary", "-noverify"])
                .args(["-out", "/dev/null", "-in"])
                .arg(&p7)
                .arg("-content")
                .arg(&content));
            assert!(ok, "openssl smime -verify: {out}");
        }
    }

    #[test]
    fn cms_style_content_and_padding() {
        let k = key(KeyType::EcP256);
        let cert = self_signed(&k, "DB", true);
        let der = sign_digest(&DIGEST, &opts(&k, &cert, &[])).unwrap();
        let wrapped = cms_wrap(&der);
        assert_ne!(wrapped, der);
        let s = parse_ok(&wrapped);
        assert!(s.cms_wrapped);
        assert_eq!(s.image_digest, DIGEST);
        verify_signature(&s, &DIGEST).unwrap();

        // WIN_CERTIFICATE pads to 8 bytes with zeros; anything else trailing is an error.
        let mut padded = der.clone();
        padded.extend([0; 7]);
        verify_signature(&parse_ok(&padded), &DIGEST).unwrap();
        padded.push(1);
        assert!(parse(&padded, Path::new("x")).is_err());
    }

    #[test]
    fn tampering_is_detected() {
        let k = key(KeyType::Rsa(2048));
        let cert = self_signed(&k, "DB", true);
        let der = sign_digest(&DIGEST, &opts(&k, &cert, &[])).unwrap();
        // The image digest inside the SpcIndirectDataContent...
        let pos = find(&der, &DIGEST).unwrap();
        let mut t = der.clone();
        t[pos] ^= 1;
        let mut d = DIGEST;
        d[0] ^= 1;
        let e = verify_signature(&parse_ok(&t), &d).unwrap_err();
        assert!(e.contains("messageDigest"), "{e}");
        // ...and the signature value.
        let mut t = der.clone();
        let n = t.len();
        t[n - 1] ^= 1;
        let e = verify_signature(&parse_ok(&t), &DIGEST).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
    }

    /// Garbage, truncations and bit flips must give errors, never panics.
    #[test]
    fn garbage_never_panics() {
        let k = key(KeyType::EcP256);
        let cert = self_signed(&k, "DB", true);
        let mut o = opts(&k, &cert, &[]);
        o.signing_time = Some(OffsetDateTime::now_utc());
        let der = sign_digest(&DIGEST, &o).unwrap();
        let p = Path::new("fuzz");
        let check = |b: &[u8]| {
            if let Ok(s) = parse(b, p) {
                let _ = verify_signature(&s, &DIGEST);
                let _ = chains_to(&s, std::slice::from_ref(&cert));
            }
        };
        for n in 0..der.len() {
            assert!(parse(&der[..n], p).is_err(), "truncated at {n}");
        }
        for i in 0..der.len() {
            for x in [0x01, 0x80, 0xff] {
                let mut b = der.clone();
                b[i] ^= x;
                check(&b);
            }
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let len = (rnd() % 300) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
            if len > 2 && rnd() % 2 == 0 {
                b[0] = 0x30; // get past the first check now and then
            }
            check(&b);
            // Random splices of a valid signature.
            let mut b = der.clone();
            for _ in 0..1 + rnd() % 4 {
                let i = (rnd() as usize) % b.len();
                b[i] = rnd() as u8;
            }
            check(&b);
        }
        for b in [
            &[][..],
            &[0x30],
            &[0x30, 0x80],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x89, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            &[0x1f, 0x81, 0x00],
        ] {
            assert!(parse(b, p).is_err());
        }
    }

    // ---- peers -----------------------------------------------------------

    fn have(tool: &str) -> bool {
        std::process::Command::new(tool)
            .arg("--help")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok()
    }

    fn run(cmd: &mut std::process::Command) -> (bool, String) {
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// OpenSSL's PKCS#7 code (what sbverify and EDK2 use) reads and verifies
    /// our output given the content octets, as sbverify feeds them.
    #[test]
    fn openssl_reads_and_verifies() {
        if !have("openssl") {
            println!("skipped: openssl not found");
            return;
        }
        use std::process::Command;
        let dir = tempfile::tempdir().unwrap();
        for kt in [KeyType::Rsa(2048), KeyType::EcP256, KeyType::EcP384] {
            let k = key(kt);
            let cert = self_signed(&k, "DB", true);
            let mut o = opts(&k, &cert, &[]);
            o.signing_time = Some(OffsetDateTime::now_utc());
            let der = sign_digest(&DIGEST, &o).unwrap();
            let p7 = dir.path().join("sig.p7");
            std::fs::write(&p7, &der).unwrap();
            let s = parse_ok(&der);
            let content = dir.path().join("content.bin");
            std::fs::write(&content, &s.spc_content).unwrap();
            let (ok, out) = run(Command::new("openssl")
                .args(["pkcs7", "-inform", "DER", "-print", "-noout", "-in"])
                .arg(&p7));
            assert!(ok, "{kt}: openssl pkcs7 -print: {out}");
            assert!(out.contains("1.3.6.1.4.1.311.2.1.4"), "{out}");
            let (ok, out) = run(Command::new("openssl")
                .args(["smime", "-verify", "-inform", "DER", "-binary", "-noverify"])
                .args(["-out", "/dev/null", "-in"])
                .arg(&p7)
                .arg("-content")
                .arg(&content));
            assert!(ok, "{kt}: openssl smime -verify: {out}");
            // OpenSSL's CMS parser insists on an OCTET STRING eContent, so it
            // rejects every PKCS#7-style Authenticode signature (sbsign's too).
            let (ok, out) = run(Command::new("openssl")
                .args([
                    "cms", "-cmsout", "-print", "-noout", "-inform", "DER", "-in",
                ])
                .arg(&p7));
            println!(
                "{kt}: openssl cms -cmsout -print: {}",
                if ok {
                    "parsed".to_string()
                } else {
                    format!("rejected: {}", out.lines().next().unwrap_or(""))
                }
            );
        }
    }

    /// End to end with sbsigntools and osslsigncode on a real EFI binary:
    /// their signatures parse and verify with our code, and ours, attached
    /// with sbattach, pass sbverify and osslsigncode verify.
    #[test]
    fn peer_tools_end_to_end() {
        let efi = Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi");
        let tools = ["openssl", "sbsign", "sbattach", "sbverify", "osslsigncode"];
        if !efi.exists() || !tools.iter().all(|t| have(t)) {
            println!("skipped: needs {} and {}", tools.join(", "), efi.display());
            return;
        }
        use std::process::Command;
        // AUTHENTICODE_PEER_DIR keeps the files (of the last key type) for inspection.
        let tmp = tempfile::tempdir().unwrap();
        let base = std::env::var_os("AUTHENTICODE_PEER_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| tmp.path().to_path_buf());
        std::fs::create_dir_all(&base).unwrap();
        let d = |n: &str| base.join(n);
        let mut efi_digest = [0u8; 32];
        for kt in [KeyType::Rsa(2048), KeyType::EcP256, KeyType::EcP384] {
            let pkcs8 = kt.generate().unwrap();
            let k = FileKey::from_pkcs8(&pkcs8, Path::new("k")).unwrap();
            let cert = self_signed(&k, "Test DB", true);
            for f in ["sb.p7", "os.efi", "os.p7", "ours.p7", "ours.efi"] {
                let _ = std::fs::remove_file(d(f));
            }
            std::fs::write(d("key.pem"), crate::keys::pkcs8_pem(&pkcs8)).unwrap();
            std::fs::write(d("cert.pem"), x509::pem_cert(&cert)).unwrap();

            // Reference signatures.
            let (ok, out) = run(Command::new("sbsign")
                .arg("--key")
                .arg(d("key.pem"))
                .arg("--cert")
                .arg(d("cert.pem"))
                .arg("--detached")
                .arg("--output")
                .arg(d("sb.p7"))
                .arg(efi));
            if !ok {
                println!("{kt}: sbsign failed, skipping its part: {out}");
                continue;
            }
            let sb = parse_ok(&std::fs::read(d("sb.p7")).unwrap());
            verify_signature(&sb, &sb.image_digest.clone()).unwrap();
            assert_eq!(chains_to(&sb, std::slice::from_ref(&cert)), Some(0));
            let (ok, out) = run(Command::new("osslsigncode")
                .args(["sign", "-h", "sha256", "-certs"])
                .arg(d("cert.pem"))
                .arg("-key")
                .arg(d("key.pem"))
                .arg("-in")
                .arg(efi)
                .arg("-out")
                .arg(d("os.efi")));
            assert!(ok, "osslsigncode sign: {out}");
            let (ok, out) = run(Command::new("osslsigncode")
                .args(["extract-signature", "-in"])
                .arg(d("os.efi"))
                .arg("-out")
                .arg(d("os.p7")));
            assert!(ok, "osslsigncode extract-signature: {out}");
            let os = parse_ok(&std::fs::read(d("os.p7")).unwrap());
            verify_signature(&os, &os.image_digest.clone()).unwrap();
            assert_eq!(
                os.image_digest, sb.image_digest,
                "peers agree on the digest"
            );

            // Ours, over the digest the peers computed.
            let digest: [u8; 32] = sb.image_digest.as_slice().try_into().unwrap();
            efi_digest = digest;
            let ours = sign_digest(&digest, &opts(&k, &cert, &[])).unwrap();
            std::fs::write(d("ours.p7"), &ours).unwrap();
            std::fs::copy(efi, d("ours.efi")).unwrap();
            let (ok, out) = run(Command::new("sbattach")
                .arg("--attach")
                .arg(d("ours.p7"))
                .arg(d("ours.efi")));
            assert!(ok, "sbattach: {out}");
            let (ok, out) = run(Command::new("sbverify")
                .arg("--cert")
                .arg(d("cert.pem"))
                .arg(d("ours.efi")));
            println!("{kt}: sbverify: {}", out.trim());
            assert!(ok, "{kt}: sbverify: {out}");
            let (ok, out) = run(Command::new("osslsigncode")
                .args(["verify", "-CAfile"])
                .arg(d("cert.pem"))
                .arg("-in")
                .arg(d("ours.efi")));
            println!(
                "{kt}: osslsigncode verify: {}",
                out.lines()
                    .filter(|l| l.contains("ignature") || l.contains("igest"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            assert!(ok, "{kt}: osslsigncode verify: {out}");
        }

        if efi_digest == [0; 32] {
            println!("skipped the CA part: sbsign never worked");
            return;
        }
        // A code-signing leaf under a CA; only the CA is given to the verifiers.
        let ca_k = key(KeyType::Rsa(2048));
        let ca = self_signed(&ca_k, "Test CA", true);
        let leaf_k = key(KeyType::Rsa(2048));
        let mut leaf_spec = spec("Test Signer", false);
        leaf_spec.eku = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
        let leaf = x509::issue(&leaf_spec, &leaf_k, Some((&ca, &ca_k))).unwrap();
        std::fs::write(d("ca.pem"), x509::pem_cert(&ca)).unwrap();
        let ours = sign_digest(&efi_digest, &opts(&leaf_k, &leaf, &[])).unwrap();
        let s = parse_ok(&ours);
        assert_eq!(chains_to(&s, std::slice::from_ref(&ca)), Some(0));
        std::fs::write(d("leaf.p7"), &ours).unwrap();
        std::fs::copy(efi, d("leaf.efi")).unwrap();
        let (ok, out) = run(Command::new("sbattach")
            .arg("--attach")
            .arg(d("leaf.p7"))
            .arg(d("leaf.efi")));
        assert!(ok, "sbattach: {out}");
        let (ok, out) = run(Command::new("sbverify")
            .arg("--cert")
            .arg(d("ca.pem"))
            .arg(d("leaf.efi")));
        println!("leaf under CA: sbverify: {}", out.trim());
        assert!(ok, "sbverify with CA: {out}");
        let (ok, out) = run(Command::new("osslsigncode")
            .args(["verify", "-CAfile"])
            .arg(d("ca.pem"))
            .arg("-in")
            .arg(d("leaf.efi")));
        println!("leaf under CA: osslsigncode verify ok={ok}");
        assert!(ok, "osslsigncode verify with CA: {out}");
    }
}
