//! The one table from "signature algorithm + public key" to a verifier.
//!
//! Certificates, CSRs, Authenticode and authenticated-variable SignerInfos and
//! GuestOS signatures all end here, so a key type or hash accepted by one
//! verifier is accepted by all, and a rule tightened here is tightened
//! everywhere. Each caller only says which scheme the object names.

use aws_lc_rs::signature as sig;
use cms::cert::x509::spki::AlgorithmIdentifierOwned;
use der::asn1::ObjectIdentifier;
use der::{Decode, Encode, Sequence};
use x509_parser::asn1_rs::ToDer;
use x509_parser::prelude::FromDer;
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo};

use crate::pkcs7::{oid, sig_alg_name, Hash};

/// The public-key kinds every verifier supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
}

impl KeyKind {
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Rsa => "RSA",
            KeyKind::P256 => "P-256",
            KeyKind::P384 => "P-384",
        }
    }
}

/// An OID as x509-parser read it, for comparing with the constants.
fn oid_of(o: &x509_parser::oid_registry::Oid<'_>) -> Option<ObjectIdentifier> {
    ObjectIdentifier::from_bytes(o.as_bytes()).ok()
}

/// The kind of `spki`'s key, or None for a key no verifier supports.
/// id-RSASSA-PSS keys count as RSA: their signatures are PSS anyway.
pub fn key_kind(spki: &SubjectPublicKeyInfo<'_>) -> Option<KeyKind> {
    match oid_of(&spki.algorithm.algorithm)? {
        oid::RSA_ENCRYPTION | oid::RSASSA_PSS => {
            x509_parser::public_key::RSAPublicKey::from_der(spki.subject_public_key.data.as_ref())
                .ok()
                .map(|_| KeyKind::Rsa)
        }
        oid::EC_PUBLIC_KEY => match spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .and_then(|o| oid_of(&o))?
        {
            oid::SECP256R1 => Some(KeyKind::P256),
            oid::SECP384R1 => Some(KeyKind::P384),
            _ => None,
        },
        _ => None,
    }
}

/// RSASSA-PSS-params (RFC 4055), as written in signatureAlgorithm
/// parameters; absent fields take the RFC's defaults.
#[derive(Clone, Debug, Sequence)]
pub(crate) struct RsaPssParams {
    /// Default sha1.
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    pub hash: Option<AlgorithmIdentifierOwned>,
    /// Default MGF1 with sha1.
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
    pub mask_gen: Option<AlgorithmIdentifierOwned>,
    /// Default 20.
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT", optional = "true")]
    pub salt_len: Option<u32>,
    /// Default 1.
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    pub trailer_field: Option<u32>,
}

/// A signature scheme as an object names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    RsaPkcs1(Hash),
    /// MGF1 with the same hash; `salt` bytes of salt.
    RsaPss {
        hash: Hash,
        salt: u16,
    },
    Ecdsa(Hash),
}

impl Scheme {
    pub fn name(self) -> String {
        match self {
            Scheme::RsaPkcs1(h) => format!("RSA PKCS#1 v1.5 {}", h.name()),
            Scheme::RsaPss { hash, salt } => format!("RSA-PSS {} salt {salt}", hash.name()),
            Scheme::Ecdsa(h) => format!("ECDSA {}", h.name()),
        }
    }

    /// The scheme of an X.509 / CMS signatureAlgorithm that names its hash
    /// (sha256WithRSAEncryption, ecdsa-with-SHA384, RSASSA-PSS with parameters).
    pub fn from_alg_id(alg: &AlgorithmIdentifier<'_>) -> Result<Scheme, String> {
        let o = oid_of(&alg.algorithm).ok_or_else(|| {
            format!(
                "unsupported signature algorithm {}",
                alg.algorithm.to_id_string()
            )
        })?;
        if o == oid::RSASSA_PSS {
            let params = alg
                .parameters
                .as_ref()
                .map(|p| p.to_der_vec())
                .transpose()
                .map_err(|e| format!("bad RSA-PSS parameters: {e}"))?;
            return pss_params(params.as_deref());
        }
        Self::from_oid(&o, None)
    }

    /// The scheme of a SignerInfo: its signatureAlgorithm, where a bare key
    /// algorithm (rsaEncryption, id-ecPublicKey, as OpenSSL writes for RSA)
    /// takes the hash from the digestAlgorithm.
    pub fn from_signer_info(
        alg: &AlgorithmIdentifierOwned,
        digest: Hash,
    ) -> Result<Scheme, String> {
        if alg.oid == oid::RSASSA_PSS {
            let params = alg
                .parameters
                .as_ref()
                .map(|p| p.to_der())
                .transpose()
                .map_err(|e| format!("bad RSA-PSS parameters: {e}"))?;
            return pss_params(params.as_deref());
        }
        Self::from_oid(&alg.oid, Some(digest))
    }

    fn from_oid(o: &ObjectIdentifier, digest: Option<Hash>) -> Result<Scheme, String> {
        let unsupported = || format!("unsupported signature algorithm {}", sig_alg_name(o));
        Ok(match *o {
            oid::SHA256_WITH_RSA => Scheme::RsaPkcs1(Hash::Sha256),
            oid::SHA384_WITH_RSA => Scheme::RsaPkcs1(Hash::Sha384),
            oid::SHA512_WITH_RSA => Scheme::RsaPkcs1(Hash::Sha512),
            oid::ECDSA_WITH_SHA256 => Scheme::Ecdsa(Hash::Sha256),
            oid::ECDSA_WITH_SHA384 => Scheme::Ecdsa(Hash::Sha384),
            oid::ECDSA_WITH_SHA512 => Scheme::Ecdsa(Hash::Sha512),
            oid::RSA_ENCRYPTION => Scheme::RsaPkcs1(digest.ok_or_else(unsupported)?),
            oid::EC_PUBLIC_KEY => Scheme::Ecdsa(digest.ok_or_else(unsupported)?),
            _ => return Err(unsupported()),
        })
    }
}

/// The scheme RSASSA-PSS-params (DER) name.
fn pss_params(params: Option<&[u8]>) -> Result<Scheme, String> {
    let params = params.ok_or("bad RSA-PSS parameters: none")?;
    let p = RsaPssParams::from_der(params).map_err(|e| format!("bad RSA-PSS parameters: {e}"))?;
    let hash_oid = p.hash.map_or(oid::SHA1, |h| h.oid);
    let hash =
        Hash::from_oid(&hash_oid).ok_or_else(|| format!("unsupported RSA-PSS hash {hash_oid}"))?;
    let salt =
        u16::try_from(p.salt_len.unwrap_or(20)).map_err(|_| "RSA-PSS salt too long".to_string())?;
    Ok(Scheme::RsaPss { hash, salt })
}

/// Verify `signature` over `msg` made with `scheme` by the key of `spki`.
/// The message is hashed here; errors are short reasons for reports.
pub fn verify(
    spki: &SubjectPublicKeyInfo<'_>,
    scheme: Scheme,
    msg: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    use Hash::*;
    use KeyKind::*;
    let kind = key_kind(spki);
    let pss: sig::RsaParameters;
    let alg: &dyn sig::VerificationAlgorithm = match (scheme, kind) {
        (Scheme::RsaPkcs1(Sha256), Some(Rsa)) => &sig::RSA_PKCS1_2048_8192_SHA256,
        (Scheme::RsaPkcs1(Sha384), Some(Rsa)) => &sig::RSA_PKCS1_2048_8192_SHA384,
        (Scheme::RsaPkcs1(Sha512), Some(Rsa)) => &sig::RSA_PKCS1_2048_8192_SHA512,
        (Scheme::RsaPss { hash, salt }, Some(Rsa)) => {
            let base = match hash {
                Sha256 => sig::RSA_PSS_2048_8192_SHA256,
                Sha384 => sig::RSA_PSS_2048_8192_SHA384,
                Sha512 => sig::RSA_PSS_2048_8192_SHA512,
            };
            pss = base.with_pss_salt_length(sig::RsaPssSaltLength::Custom(salt));
            &pss
        }
        (Scheme::Ecdsa(Sha256), Some(P256)) => &sig::ECDSA_P256_SHA256_ASN1,
        (Scheme::Ecdsa(Sha384), Some(P256)) => &sig::ECDSA_P256_SHA384_ASN1,
        (Scheme::Ecdsa(Sha512), Some(P256)) => &sig::ECDSA_P256_SHA512_ASN1,
        (Scheme::Ecdsa(Sha256), Some(P384)) => &sig::ECDSA_P384_SHA256_ASN1,
        (Scheme::Ecdsa(Sha384), Some(P384)) => &sig::ECDSA_P384_SHA384_ASN1,
        (Scheme::Ecdsa(Sha512), Some(P384)) => &sig::ECDSA_P384_SHA512_ASN1,
        (s, k) => {
            return Err(format!(
                "unsupported combination: {} for {} key",
                s.name(),
                k.map(|k| format!("a {}", k.name()))
                    .unwrap_or_else(|| "an unsupported".into())
            ))
        }
    };
    alg.verify_sig(spki.subject_public_key.data.as_ref(), msg, signature)
        .map_err(|_| "signature does not verify".to_string())
}
