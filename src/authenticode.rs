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
//! Reading is done with a small, lenient TLV walker rather than a strict DER
//! decoder: signatures made by other tools are not always canonical DER (e.g.
//! certificates not sorted in their SET OF), and the exact bytes of the signed
//! attributes must be kept to check the signature.

use std::path::Path;

use cms::cert::x509::attr::Attribute;
use cms::cert::x509::spki::AlgorithmIdentifierOwned;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::EncapsulatedContentInfo;
use der::asn1::{BitString, BmpString, ObjectIdentifier, OctetString, SetOfVec};
use der::{Any, Encode, Sequence, Tag, TagNumber};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

use crate::asn1::{
    alg_id, alg_oid, attribute, for_each_attribute, obj_id, oid_string, small_int, strip_zeros,
    take, Elements, Tlv, CTX0, CTX1, INTEGER, OBJECT_ID, OCTET_STRING, SEQUENCE, SET,
};
use crate::error::{Error, Result};
use crate::keys::{KeyType, SigScheme, Signer};
use crate::pkcs7::{hash_name, SignerId};
use crate::{asn1, pkcs7, sigalg};

/// Object identifiers used here, as dotted strings (what the reader compares).
pub mod oid {
    pub const SIGNED_DATA: &str = "1.2.840.113549.1.7.2";
    pub const SPC_INDIRECT_DATA: &str = "1.3.6.1.4.1.311.2.1.4";
    pub const SPC_PE_IMAGE_DATA: &str = "1.3.6.1.4.1.311.2.1.15";
    pub const SPC_SP_OPUS_INFO: &str = "1.3.6.1.4.1.311.2.1.12";
    pub const CONTENT_TYPE: &str = "1.2.840.113549.1.9.3";
    pub const MESSAGE_DIGEST: &str = "1.2.840.113549.1.9.4";
    pub const SIGNING_TIME: &str = "1.2.840.113549.1.9.5";
    pub const COUNTER_SIGNATURE: &str = "1.2.840.113549.1.9.6";
    /// Microsoft: further Authenticode signatures nested in an unsigned attribute.
    pub const MS_NESTED_SIGNATURE: &str = "1.3.6.1.4.1.311.2.4.1";
    /// Microsoft: RFC 3161 timestamp token in an unsigned attribute.
    pub const MS_RFC3161_TIMESTAMP: &str = "1.3.6.1.4.1.311.3.3.1";
    pub const SHA1: &str = "1.3.14.3.2.26";
    pub const SHA256: &str = "2.16.840.1.101.3.4.2.1";
    pub const SHA384: &str = "2.16.840.1.101.3.4.2.2";
    pub const SHA512: &str = "2.16.840.1.101.3.4.2.3";
    pub const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
    pub const SHA256_WITH_RSA: &str = "1.2.840.113549.1.1.11";
    pub const SHA384_WITH_RSA: &str = "1.2.840.113549.1.1.12";
    pub const SHA512_WITH_RSA: &str = "1.2.840.113549.1.1.13";
    pub const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
    pub const ECDSA_WITH_SHA256: &str = "1.2.840.10045.4.3.2";
    pub const ECDSA_WITH_SHA384: &str = "1.2.840.10045.4.3.3";
    pub const ECDSA_WITH_SHA512: &str = "1.2.840.10045.4.3.4";
}

/// The placeholder file name sbsign and signtool put into SpcPeImageData.
const OBSOLETE: &str = "<<<Obsolete>>>";

// ---------------------------------------------------------------------------
// Hashes

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hash {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn from_oid(o: &str) -> Option<Hash> {
        match o {
            oid::SHA1 => Some(Hash::Sha1),
            oid::SHA256 => Some(Hash::Sha256),
            oid::SHA384 => Some(Hash::Sha384),
            oid::SHA512 => Some(Hash::Sha512),
            _ => None,
        }
    }

    fn oid(self) -> &'static str {
        match self {
            Hash::Sha1 => oid::SHA1,
            Hash::Sha256 => oid::SHA256,
            Hash::Sha384 => oid::SHA384,
            Hash::Sha512 => oid::SHA512,
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        use aws_lc_rs::digest;
        let alg = match self {
            Hash::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            Hash::Sha256 => &digest::SHA256,
            Hash::Sha384 => &digest::SHA384,
            Hash::Sha512 => &digest::SHA512,
        };
        digest::digest(alg, data).as_ref().to_vec()
    }
}

fn sig_alg_name(o: &str) -> String {
    match o {
        oid::RSA_ENCRYPTION => "rsaEncryption".into(),
        oid::SHA256_WITH_RSA => "sha256WithRSAEncryption".into(),
        oid::SHA384_WITH_RSA => "sha384WithRSAEncryption".into(),
        oid::SHA512_WITH_RSA => "sha512WithRSAEncryption".into(),
        oid::EC_PUBLIC_KEY => "id-ecPublicKey".into(),
        oid::ECDSA_WITH_SHA256 => "ecdsa-with-SHA256".into(),
        oid::ECDSA_WITH_SHA384 => "ecdsa-with-SHA384".into(),
        oid::ECDSA_WITH_SHA512 => "ecdsa-with-SHA512".into(),
        o => o.to_string(),
    }
}

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

#[derive(Sequence)]
struct SpcAttributeTypeAndOptionalValue {
    value_type: ObjectIdentifier,
    value: Any,
}

#[derive(Sequence)]
struct DigestInfo {
    algorithm: AlgorithmIdentifierOwned,
    digest: OctetString,
}

#[derive(Sequence)]
struct SpcIndirectDataContent {
    data: SpcAttributeTypeAndOptionalValue,
    message_digest: DigestInfo,
}

/// DER of the SpcIndirectDataContent for a PE image's SHA-256 digest.
fn spc_indirect_data_content(image_sha256: &[u8; 32]) -> der::Result<Vec<u8>> {
    SpcIndirectDataContent {
        data: SpcAttributeTypeAndOptionalValue {
            value_type: obj_id(oid::SPC_PE_IMAGE_DATA)?,
            value: spc_pe_image_data()?,
        },
        message_digest: DigestInfo {
            algorithm: alg_id(oid::SHA256, true)?,
            digest: OctetString::new(image_sha256.to_vec())?,
        },
    }
    .to_der()
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

/// How a key of each type signs: scheme for `Signer::sign`, the digest
/// algorithm of the SignerInfo (also the messageDigest hash) and the
/// signatureAlgorithm OpenSSL (hence sbsign and osslsigncode) writes.
fn signing_params(kt: KeyType) -> (SigScheme, Hash, &'static str, bool) {
    match kt {
        KeyType::Rsa(_) => (
            SigScheme::RsaPkcs1Sha256,
            Hash::Sha256,
            oid::RSA_ENCRYPTION,
            true,
        ),
        KeyType::EcP256 => (
            SigScheme::EcdsaSha256,
            Hash::Sha256,
            oid::ECDSA_WITH_SHA256,
            false,
        ),
        KeyType::EcP384 => (
            SigScheme::EcdsaSha384,
            Hash::Sha384,
            oid::ECDSA_WITH_SHA384,
            false,
        ),
    }
}

/// Sign the Authenticode digest of a PE image. Returns the DER of the PKCS#7
/// ContentInfo (what sbsign --detached writes and what goes into WIN_CERTIFICATE).
pub fn sign_digest(image_sha256: &[u8; 32], opts: &SignOptions) -> Result<Vec<u8>> {
    let cert_origin = Path::new("signer certificate");
    pkcs7::check_signer(opts.signer, opts.cert, opts.chain)?;
    let (issuer, serial) = cert_issuer_serial(opts.cert)
        .ok_or_else(|| Error::input(cert_origin, "cannot find issuer and serial number"))?;

    let (scheme, hash, sig_oid, sig_null) = signing_params(opts.signer.key_type());
    let signing_time = opts
        .signing_time
        .map(|t| asn1::signing_time_value(t, der_err))
        .transpose()?;
    let spc = spc_indirect_data_content(image_sha256).map_err(der_err)?;
    let (spc_tlv, _) = take(&spc).map_err(Error::Crypto)?;
    // Authenticode: the digest covers the content octets, without tag and length.
    let message_digest = hash.digest(spc_tlv.value);

    let signed_attrs = (|| -> der::Result<SetOfVec<Attribute>> {
        let mut attrs = vec![
            attribute(
                oid::CONTENT_TYPE,
                Any::encode_from(&obj_id(oid::SPC_INDIRECT_DATA)?)?,
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
            sid: Any::new(Tag::Sequence, [issuer.raw, serial.raw].concat())?,
            digest_algorithm: alg_id(hash.oid(), true)?,
            signed_attrs,
            signature_algorithm: alg_id(sig_oid, sig_null)?,
            signature: OctetString::new(signature)?,
        };
        let signed_data = pkcs7::signed_data(
            hash.oid(),
            EncapsulatedContentInfo {
                econtent_type: obj_id(oid::SPC_INDIRECT_DATA)?,
                econtent: Some(Any::new(Tag::Sequence, spc_tlv.value)?),
            },
            opts.cert,
            opts.chain,
            Any::encode_from(&signer_info)?,
        )?;
        ContentInfo {
            content_type: obj_id(oid::SIGNED_DATA)?,
            content: Any::encode_from(&signed_data)?,
        }
        .to_der()
    })()
    .map_err(der_err)
}

// ---------------------------------------------------------------------------
// Reading

/// Issuer Name (whole element) and serialNumber INTEGER of a certificate.
fn cert_issuer_serial(cert: &[u8]) -> Option<(Tlv<'_>, Tlv<'_>)> {
    let (c, _) = take(cert).ok()?;
    let mut c = Elements::of(c, "certificate");
    let mut tbs = Elements::of(c.expect(SEQUENCE, "").ok()?, "tbsCertificate");
    tbs.optional(CTX0).ok()?;
    let serial = tbs.expect(INTEGER, "").ok()?;
    tbs.expect(SEQUENCE, "").ok()?;
    let issuer = tbs.expect(SEQUENCE, "").ok()?;
    Some((issuer, serial))
}

fn name_string(raw: &[u8]) -> String {
    match X509Name::from_der(raw) {
        Ok((_, n)) => n.to_string(),
        Err(_) => format!("<name {}>", crate::codec::hex(raw)),
    }
}

/// Is `cert` the certificate `sid` names?
fn signer_matches(sid: &SignerId, cert: &[u8]) -> bool {
    match sid {
        SignerId::IssuerSerial { issuer, serial } => {
            let Some((ci, cs)) = cert_issuer_serial(cert) else {
                return false;
            };
            if strip_zeros(cs.value) != strip_zeros(serial) {
                return false;
            }
            // Same bytes, or the same name spelled differently.
            ci.raw == issuer.as_slice() || name_string(ci.raw) == name_string(issuer)
        }
        SignerId::KeyId(id) => match X509Certificate::from_der(cert) {
            Ok((_, c)) => c.extensions().iter().any(|e| {
                matches!(e.parsed_extension(),
                    x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k)
                        if k.0 == id.as_slice())
            }),
            Err(_) => false,
        },
    }
}

/// A parsed Authenticode signature.
#[derive(Clone, Debug)]
pub struct Signature {
    /// The image digest the signature vouches for (SpcIndirectDataContent).
    pub image_digest: Vec<u8>,
    /// Its algorithm: "sha256", "sha384", "sha512", "sha1", or the dotted OID.
    pub digest_algorithm: String,
    /// SpcIndirectDataContent.data.type: SpcPeImageData (1.3.6.1.4.1.311.2.1.15) for PE images.
    pub data_type: String,
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

    /// SpcIndirectDataContent element, and the length of its tag + length.
    spc: Vec<u8>,
    spc_header_len: usize,
    /// Signed attributes re-tagged as SET (what the signature covers).
    signed_attrs: Option<Vec<u8>>,
    signature: Vec<u8>,
    signer_digest_oid: String,
    signature_oid: String,
    /// The whole signatureAlgorithm element (RSASSA-PSS carries parameters).
    signature_alg: Vec<u8>,
    content_types: Vec<String>,
    message_digests: Vec<Vec<u8>>,
}

/// Parse a PKCS#7 Authenticode signature (ours, sbsign's, osslsigncode's,
/// pesign's, signtool's). Zero padding after it (WIN_CERTIFICATE alignment)
/// is accepted. `origin` names the input in errors.
pub fn parse(der: &[u8], origin: &Path) -> Result<Signature> {
    parse_inner(der)
        .map_err(|e| Error::input(origin, format!("not a valid Authenticode signature: {e}")))
}

fn parse_inner(der: &[u8]) -> std::result::Result<Signature, String> {
    let (ci, trailing) = take(der)?;
    if trailing.iter().any(|&b| b != 0) {
        return Err(format!("{} bytes of trailing data", trailing.len()));
    }
    if ci.tag != SEQUENCE {
        return Err("ContentInfo is not a SEQUENCE".into());
    }
    let mut ci = Elements::of(ci, "ContentInfo");
    let ct = oid_string(ci.expect(OBJECT_ID, "contentType")?);
    if ct != oid::SIGNED_DATA {
        return Err(format!("content type {ct} is not signedData"));
    }
    let wrapper = ci.expect(CTX0, "content")?;
    let sd = Elements::of(wrapper, "ContentInfo content").expect(SEQUENCE, "SignedData")?;
    let mut sd = Elements::of(sd, "SignedData");
    let signed_data_version = small_int(sd.expect(INTEGER, "version")?)?;
    sd.expect(SET, "digestAlgorithms")?;

    // encapContentInfo
    let mut eci = Elements::of(sd.expect(SEQUENCE, "contentInfo")?, "contentInfo");
    let ect = oid_string(eci.expect(OBJECT_ID, "contentType")?);
    if ect != oid::SPC_INDIRECT_DATA {
        return Err(format!(
            "content type {ect} is not SpcIndirectDataContent ({})",
            oid::SPC_INDIRECT_DATA
        ));
    }
    let mut content = Elements::of(eci.expect(CTX0, "content")?, "content");
    let (spc, cms_wrapped) = match content.next()? {
        Some(t) if t.tag == SEQUENCE => (t, false),
        Some(t) if t.tag == OCTET_STRING => {
            let (inner, rest) = take(t.value).map_err(|e| format!("wrapped content: {e}"))?;
            if inner.tag != SEQUENCE || !rest.is_empty() {
                return Err("wrapped content is not one SpcIndirectDataContent".into());
            }
            (inner, true)
        }
        _ => return Err("SpcIndirectDataContent missing".into()),
    };
    let mut sidc = Elements::of(spc, "SpcIndirectDataContent");
    let mut data = Elements::of(
        sidc.expect(SEQUENCE, "data")?,
        "SpcAttributeTypeAndOptionalValue",
    );
    let data_type = oid_string(data.expect(OBJECT_ID, "type")?);
    let mut di = Elements::of(sidc.expect(SEQUENCE, "messageDigest")?, "DigestInfo");
    let image_digest_oid = alg_oid(di.expect(SEQUENCE, "digestAlgorithm")?, "DigestInfo")?;
    let image_digest = di.expect(OCTET_STRING, "digest")?.value.to_vec();

    let mut certs = vec![];
    if let Some(set) = sd.optional(CTX0)? {
        let mut set = Elements::of(set, "certificates");
        while let Some(c) = set.next()? {
            // Other CertificateChoices (attribute certificates...) are skipped.
            if c.tag == SEQUENCE {
                certs.push(c.raw.to_vec());
            }
        }
    }
    sd.optional(CTX1)?; // crls
    let mut infos = Elements::of(sd.expect(SET, "signerInfos")?, "signerInfos");
    let si = match infos.next()? {
        Some(si) if si.tag == SEQUENCE => si,
        Some(_) => return Err("signerInfo is not a SEQUENCE".into()),
        None => return Err("no signerInfo".into()),
    };
    if infos.next()?.is_some() {
        return Err("more than one signerInfo (Authenticode allows exactly one)".into());
    }

    // SignerInfo
    let mut si = Elements::of(si, "signerInfo");
    let pkcs7::SignerInfo {
        sid,
        digest_oid: signer_digest_oid,
        signed_attrs,
        content_types,
        message_digests,
        signing_time,
        ..
    } = pkcs7::read_signer_head(&mut si)?;
    let alg = si.expect(SEQUENCE, "signatureAlgorithm")?;
    let signature_oid = alg_oid(alg, "signerInfo")?;
    let signature_alg = alg.raw.to_vec();
    let signature = si.expect(OCTET_STRING, "signature")?.value.to_vec();
    let mut nested = vec![];
    let mut timestamped = false;
    if let Some(attrs) = si.optional(CTX1)? {
        for_each_attribute(attrs, "unsigned attributes", |o, v| {
            match o.as_str() {
                oid::MS_NESTED_SIGNATURE => nested.push(v.raw.to_vec()),
                oid::COUNTER_SIGNATURE | oid::MS_RFC3161_TIMESTAMP => timestamped = true,
                _ => {}
            }
            Ok(())
        })?;
    }

    let signer_cert = certs.iter().find(|c| signer_matches(&sid, c)).cloned();
    let (signer_issuer, signer_serial) = match &sid {
        SignerId::IssuerSerial { issuer, serial } => {
            (name_string(issuer), crate::codec::hex(serial))
        }
        SignerId::KeyId(id) => ("subjectKeyIdentifier".to_string(), crate::codec::hex(id)),
    };
    Ok(Signature {
        image_digest,
        digest_algorithm: hash_name(&image_digest_oid),
        data_type,
        certs,
        signer_cert,
        signer_issuer,
        signer_serial,
        signer_digest_algorithm: hash_name(&signer_digest_oid),
        signature_algorithm: sig_alg_name(&signature_oid),
        signing_time,
        signed_data_version,
        cms_wrapped,
        nested,
        timestamped,
        spc: spc.raw.to_vec(),
        spc_header_len: spc.header_len(),
        signed_attrs,
        signature,
        signer_digest_oid,
        signature_oid,
        signature_alg,
        content_types,
        message_digests,
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
    let attrs = sig
        .signed_attrs
        .as_deref()
        .ok_or("no signed attributes (Authenticode requires them)")?;
    // A missing contentType is tolerated like Windows and OpenSSL do; a wrong one is not.
    match sig.content_types.as_slice() {
        [] => {}
        [ct] if ct == oid::SPC_INDIRECT_DATA => {}
        [ct] => {
            return Err(format!(
                "contentType attribute is {ct}, not SpcIndirectDataContent"
            ))
        }
        _ => return Err("more than one contentType attribute".into()),
    }
    let md = match sig.message_digests.as_slice() {
        [md] => md,
        [] => return Err("no messageDigest attribute".into()),
        _ => return Err("more than one messageDigest attribute".into()),
    };
    let hash = Hash::from_oid(&sig.signer_digest_oid)
        .filter(|h| *h != Hash::Sha1)
        .ok_or_else(|| {
            format!(
                "unsupported signer digest algorithm {}",
                sig.signer_digest_algorithm
            )
        })?;
    let content = &sig.spc[sig.spc_header_len..];
    // Authenticode hashes the content octets; a CMS-style signer hashes the whole element.
    if hash.digest(content) != *md && !(sig.cms_wrapped && hash.digest(&sig.spc) == *md) {
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
    let digest = match hash {
        Hash::Sha256 => pkcs7::Hash::Sha256,
        Hash::Sha384 => pkcs7::Hash::Sha384,
        Hash::Sha512 => pkcs7::Hash::Sha512,
        Hash::Sha1 => return Err("SHA-1 signer digests are not accepted".into()),
    };
    let scheme = sigalg::Scheme::from_signer_info(&sig.signature_oid, &sig.signature_alg, digest)?;
    sigalg::verify(cert.public_key(), scheme, attrs, &sig.signature)
        .map_err(|e| format!("{e} with the key of '{}'", cert.subject()))?;
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
    use crate::keys::FileKey;
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

        let (ci, rest) = take(&der).unwrap();
        assert!(rest.is_empty());
        let mut ci = Elements::of(ci, "ci");
        assert_eq!(oid_string(ci.next().unwrap().unwrap()), oid::SIGNED_DATA);
        let sd = Elements::of(ci.expect(CTX0, "").unwrap(), "")
            .expect(SEQUENCE, "")
            .unwrap();
        let mut sd = Elements::of(sd, "sd");
        assert_eq!(sd.expect(INTEGER, "").unwrap().value, [1]);
        // digestAlgorithms = { sha256 with NULL }
        assert_eq!(
            sd.expect(SET, "").unwrap().raw,
            hex("310f300d06096086480165030402010500")
        );
        let mut eci = Elements::of(sd.expect(SEQUENCE, "").unwrap(), "eci");
        assert_eq!(
            oid_string(eci.next().unwrap().unwrap()),
            oid::SPC_INDIRECT_DATA
        );
        let spc = Elements::of(eci.expect(CTX0, "").unwrap(), "")
            .expect(SEQUENCE, "SpcIndirectDataContent directly, no OCTET STRING")
            .unwrap();
        // SpcAttributeTypeAndOptionalValue exactly as sbsign writes it.
        let (data, _) = take(spc.value).unwrap();
        let mut want = hex("3033060a2b06010401823702010f30250301 00a020a21e801c");
        for c in OBSOLETE.encode_utf16() {
            want.extend(c.to_be_bytes());
        }
        assert_eq!(data.raw, want);
        let (di, _) = take(&spc.value[data.raw.len()..]).unwrap();
        let mut want = hex("3031300d060960864801650304020105000420");
        want.extend(DIGEST);
        assert_eq!(di.raw, want);

        let certs = sd.expect(CTX0, "certificates").unwrap();
        assert_eq!(certs.value, cert.as_slice());
        let mut infos = Elements::of(sd.expect(SET, "").unwrap(), "");
        let mut si = Elements::of(infos.next().unwrap().unwrap(), "si");
        assert!(infos.next().unwrap().is_none());
        assert!(
            sd.next().unwrap().is_none(),
            "no crls, nothing after signerInfos"
        );
        assert_eq!(si.expect(INTEGER, "").unwrap().value, [1]);
        let (issuer, serial) = cert_issuer_serial(&cert).unwrap();
        assert_eq!(
            si.expect(SEQUENCE, "sid").unwrap().value,
            [issuer.raw, serial.raw].concat()
        );
        assert_eq!(
            si.expect(SEQUENCE, "").unwrap().raw,
            hex("300d06096086480165030402010500")
        );
        let attrs = si.expect(CTX0, "signed attrs").unwrap();
        let mut order = vec![];
        let mut raws = vec![];
        for_each_attribute(attrs, "t", |o, v| {
            order.push(o);
            raws.push(v.raw.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(
            order,
            [
                oid::SPC_SP_OPUS_INFO,
                oid::CONTENT_TYPE,
                oid::SIGNING_TIME,
                oid::MESSAGE_DIGEST
            ]
        );
        assert_eq!(raws[0], [0x30, 0x00]);
        let mut md = vec![0x04, 0x20];
        md.extend(Hash::Sha256.digest(spc.value));
        assert_eq!(raws[3], md, "messageDigest = SHA-256 of the content octets");
        // Attributes are in DER SET OF order.
        let mut elems = vec![];
        let mut e = Elements::of(attrs, "");
        while let Some(a) = e.next().unwrap() {
            elems.push(a.raw.to_vec());
        }
        let mut sorted = elems.clone();
        sorted.sort();
        assert_eq!(elems, sorted);
        assert_eq!(
            si.expect(SEQUENCE, "").unwrap().raw,
            hex("300d06092a864886f70d0101010500")
        );
        assert_eq!(si.expect(OCTET_STRING, "").unwrap().value.len(), 256);
        assert!(si.next().unwrap().is_none());

        // RustCrypto's strict decoder reads it too.
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
        fn tlv(tag: u8, v: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            match v.len() {
                n @ 0..=0x7f => out.push(n as u8),
                n @ 0x80..=0xff => out.extend([0x81, n as u8]),
                n => out.extend([0x82, (n >> 8) as u8, n as u8]),
            }
            out.extend(v);
            out
        }
        let (ci, _) = take(der).unwrap();
        let mut ci = Elements::of(ci, "");
        let ct = ci.next().unwrap().unwrap();
        let sd = Elements::of(ci.next().unwrap().unwrap(), "")
            .next()
            .unwrap()
            .unwrap();
        let mut parts = Elements::of(sd, "");
        let mut body = vec![];
        while let Some(t) = parts.next().unwrap() {
            if t.tag == SEQUENCE && body.len() < 30 {
                let mut e = Elements::of(t, "");
                let o = e.next().unwrap().unwrap();
                let spc = Elements::of(e.next().unwrap().unwrap(), "")
                    .next()
                    .unwrap()
                    .unwrap();
                let inner = [o.raw.to_vec(), tlv(CTX0, &tlv(OCTET_STRING, spc.raw))].concat();
                body.extend(tlv(SEQUENCE, &inner));
            } else {
                body.extend(t.raw);
            }
        }
        tlv(
            SEQUENCE,
            &[ct.raw.to_vec(), tlv(CTX0, &tlv(SEQUENCE, &body))].concat(),
        )
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
            std::fs::write(&content, &s.spc[s.spc_header_len..]).unwrap();
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
