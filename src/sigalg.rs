//! The one table from "signature algorithm + public key" to a verifier.
//!
//! Certificates, CSRs, Authenticode and authenticated-variable SignerInfos and
//! GuestOS signatures all end here, so a key type or hash accepted by one
//! verifier is accepted by all, and a rule tightened here is tightened
//! everywhere. Each caller only says which scheme the object names.

use aws_lc_rs::signature as sig;
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

const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";

/// The kind of `spki`'s key, or None for a key no verifier supports.
/// id-RSASSA-PSS keys count as RSA: their signatures are PSS anyway.
pub fn key_kind(spki: &SubjectPublicKeyInfo<'_>) -> Option<KeyKind> {
    match spki.algorithm.algorithm.to_id_string().as_str() {
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
            .map(|o| o.to_id_string())
            .as_deref()
        {
            Some(OID_P256) => Some(KeyKind::P256),
            Some(OID_P384) => Some(KeyKind::P384),
            _ => None,
        },
        _ => None,
    }
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
        let o = alg.algorithm.to_id_string();
        if o == oid::RSASSA_PSS {
            return pss_params(alg);
        }
        Self::from_oid(&o, None)
    }

    /// The scheme of a SignerInfo: its signatureAlgorithm, where a bare key
    /// algorithm (rsaEncryption, id-ecPublicKey, as OpenSSL writes for RSA)
    /// takes the hash from the digestAlgorithm. `alg_der` is the whole
    /// AlgorithmIdentifier, needed for RSASSA-PSS parameters.
    pub fn from_signer_info(sig_oid: &str, alg_der: &[u8], digest: Hash) -> Result<Scheme, String> {
        if sig_oid == oid::RSASSA_PSS {
            let (_, alg) = AlgorithmIdentifier::from_der(alg_der)
                .map_err(|e| format!("bad RSASSA-PSS parameters: {e}"))?;
            return pss_params(&alg);
        }
        Self::from_oid(sig_oid, Some(digest))
    }

    fn from_oid(o: &str, digest: Option<Hash>) -> Result<Scheme, String> {
        let unsupported = || format!("unsupported signature algorithm {}", sig_alg_name(o));
        Ok(match o {
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

fn pss_params(alg: &AlgorithmIdentifier<'_>) -> Result<Scheme, String> {
    use x509_parser::signature_algorithm::SignatureAlgorithm;
    let parsed =
        SignatureAlgorithm::try_from(alg).map_err(|e| format!("bad RSA-PSS parameters: {e}"))?;
    let SignatureAlgorithm::RSASSA_PSS(p) = parsed else {
        return Err("bad RSA-PSS parameters".into());
    };
    let hash = Hash::from_oid(&p.hash_algorithm_oid().to_id_string()).ok_or_else(|| {
        format!(
            "unsupported RSA-PSS hash {}",
            p.hash_algorithm_oid().to_id_string()
        )
    })?;
    let salt = u16::try_from(p.salt_length()).map_err(|_| "RSA-PSS salt too long".to_string())?;
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
