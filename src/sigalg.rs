//! The algorithm module: hashes, key kinds, signature schemes, the scheme a
//! key signs with, the AlgorithmIdentifier written for a scheme, and the one
//! table from "scheme + public key" to a verifier.
//!
//! Every signer (file keys, PKCS#11 keys, offline replays) and every verifier
//! (certificates, CSRs, Authenticode, EFI variables, GuestOS, PCR policies)
//! asks here, so a key type or hash accepted by one is accepted by all, and a
//! rule tightened here is tightened everywhere.

use aws_lc_rs::signature as sig;
use cms::cert::x509::spki::AlgorithmIdentifierOwned;
use der::asn1::{ObjectIdentifier, OctetString};
use der::{Any, Decode, Encode, Sequence};
use x509_parser::asn1_rs::ToDer;
use x509_parser::prelude::FromDer;
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo};

use crate::asn1::alg_id;
use crate::oid;

/// The message digest of a signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    pub const ALL: [Hash; 3] = [Hash::Sha256, Hash::Sha384, Hash::Sha512];

    pub fn oid(self) -> ObjectIdentifier {
        match self {
            Hash::Sha256 => oid::SHA256,
            Hash::Sha384 => oid::SHA384,
            Hash::Sha512 => oid::SHA512,
        }
    }

    pub fn from_oid(o: &ObjectIdentifier) -> Option<Hash> {
        Hash::ALL.into_iter().find(|h| h.oid() == *o)
    }

    /// "sha256", as OpenSSL names digests.
    pub fn name(self) -> &'static str {
        match self {
            Hash::Sha256 => "sha256",
            Hash::Sha384 => "sha384",
            Hash::Sha512 => "sha512",
        }
    }

    /// The digest's length in bytes.
    pub fn size(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        use aws_lc_rs::digest;
        let alg = match self {
            Hash::Sha256 => &digest::SHA256,
            Hash::Sha384 => &digest::SHA384,
            Hash::Sha512 => &digest::SHA512,
        };
        digest::digest(alg, data).as_ref().to_vec()
    }

    /// The AlgorithmIdentifier with NULL parameters, as OpenSSL writes a
    /// digestAlgorithm and a DigestInfo's algorithm.
    pub fn alg_id(self) -> der::Result<AlgorithmIdentifierOwned> {
        alg_id(self.oid(), true)
    }

    /// DER DigestInfo (RFC 8017 9.2) of `digest`: what PKCS#1 v1.5 signs.
    pub fn digest_info(self, digest: &[u8]) -> der::Result<Vec<u8>> {
        DigestInfo {
            algorithm: self.alg_id()?,
            digest: OctetString::new(digest)?,
        }
        .to_der()
    }
}

/// DigestInfo, also the messageDigest of an Authenticode SpcIndirectDataContent.
#[derive(Sequence)]
pub(crate) struct DigestInfo {
    pub algorithm: AlgorithmIdentifierOwned,
    pub digest: OctetString,
}

/// "sha256" for known digest OIDs, the dotted OID otherwise.
pub fn hash_name(o: &ObjectIdentifier) -> String {
    match (*o, Hash::from_oid(o)) {
        (oid::SHA1, _) => "sha1".into(),
        (_, Some(h)) => h.name().into(),
        _ => o.to_string(),
    }
}

/// A readable name for a signatureAlgorithm (X.509, PKCS#10 or SignerInfo).
pub fn alg_name(o: &ObjectIdentifier) -> String {
    match *o {
        oid::RSA_ENCRYPTION => "rsaEncryption",
        oid::RSASSA_PSS => "RSASSA-PSS",
        oid::SHA1_WITH_RSA => "sha1WithRSAEncryption",
        oid::SHA256_WITH_RSA => "sha256WithRSAEncryption",
        oid::SHA384_WITH_RSA => "sha384WithRSAEncryption",
        oid::SHA512_WITH_RSA => "sha512WithRSAEncryption",
        oid::EC_PUBLIC_KEY => "id-ecPublicKey",
        oid::ECDSA_WITH_SHA256 => "ecdsa-with-SHA256",
        oid::ECDSA_WITH_SHA384 => "ecdsa-with-SHA384",
        oid::ECDSA_WITH_SHA512 => "ecdsa-with-SHA512",
        oid::ED25519 => "Ed25519",
        o => return o.to_string(),
    }
    .into()
}

/// The public-key kinds pki-signer signs and verifies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    /// An RSA key typed id-RSASSA-PSS (GyroidOS's "secondary" keys): it signs
    /// only with PSS; verifiers treat it as RSA.
    RsaPss,
    P256,
    P384,
}

impl KeyKind {
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Rsa => "RSA",
            KeyKind::RsaPss => "RSA-PSS",
            KeyKind::P256 => "EC P-256",
            KeyKind::P384 => "EC P-384",
        }
    }

    /// The scheme a key of this kind signs with where the format leaves the
    /// hash to the key (X.509, Authenticode): SHA-256, SHA-384 for P-384.
    pub fn default_scheme(self) -> Scheme {
        match self {
            KeyKind::Rsa => Scheme::RsaPkcs1(Hash::Sha256),
            KeyKind::RsaPss => Scheme::pss(Hash::Sha256),
            KeyKind::P256 => Scheme::Ecdsa(Hash::Sha256),
            KeyKind::P384 => Scheme::Ecdsa(Hash::Sha384),
        }
    }

    /// The scheme for a format that fixes the hash (CMS, GuestOS, PCR
    /// policies). An EC key signs its curve's hash, or SHA-512 (what `openssl
    /// dgst -sha512 -sign` makes with any EC key); other pairs are refused.
    pub fn scheme_with(self, hash: Hash) -> Option<Scheme> {
        match (self, hash) {
            (KeyKind::Rsa, h) => Some(Scheme::RsaPkcs1(h)),
            (KeyKind::RsaPss, h) => Some(Scheme::pss(h)),
            (KeyKind::P256, Hash::Sha256 | Hash::Sha512)
            | (KeyKind::P384, Hash::Sha384 | Hash::Sha512) => Some(Scheme::Ecdsa(hash)),
            _ => None,
        }
    }
}

/// A public key as a certificate or CSR carries it.
#[derive(Clone, Debug)]
pub struct KeyInfo {
    /// "RSA", "RSA-PSS", "EC", "Ed25519", "Ed448", "DSA", or the dotted OID.
    pub algorithm: String,
    /// Modulus bits of a well-formed RSA key.
    pub bits: Option<usize>,
    /// The named curve of an EC key: "P-256", "P-384" or the dotted OID.
    pub curve: Option<String>,
    /// None for keys pki-signer does not sign or verify with.
    pub kind: Option<KeyKind>,
}

impl KeyInfo {
    pub fn of(spki: &SubjectPublicKeyInfo<'_>) -> KeyInfo {
        let alg = oid::of(&spki.algorithm.algorithm);
        let mut info = KeyInfo {
            algorithm: match alg {
                Some(oid::RSA_ENCRYPTION) => "RSA".into(),
                Some(oid::RSASSA_PSS) => "RSA-PSS".into(),
                Some(oid::EC_PUBLIC_KEY) => "EC".into(),
                Some(oid::ED25519) => "Ed25519".into(),
                Some(oid::ED448) => "Ed448".into(),
                Some(oid::DSA) => "DSA".into(),
                _ => spki.algorithm.algorithm.to_id_string(),
            },
            bits: None,
            curve: None,
            kind: None,
        };
        match alg {
            Some(a @ (oid::RSA_ENCRYPTION | oid::RSASSA_PSS)) => {
                let key = spki.subject_public_key.data.as_ref();
                info.bits = x509_parser::public_key::RSAPublicKey::from_der(key)
                    .ok()
                    .map(|(_, k)| k.key_size());
                let pss = a == oid::RSASSA_PSS;
                info.kind = info
                    .bits
                    .map(|_| if pss { KeyKind::RsaPss } else { KeyKind::Rsa });
            }
            Some(oid::EC_PUBLIC_KEY) => {
                let curve = spki.algorithm.parameters.as_ref();
                let curve = curve.and_then(|p| p.as_oid().ok());
                (info.curve, info.kind) = match curve.as_ref().and_then(oid::of) {
                    Some(oid::SECP256R1) => (Some("P-256".into()), Some(KeyKind::P256)),
                    Some(oid::SECP384R1) => (Some("P-384".into()), Some(KeyKind::P384)),
                    _ => (curve.map(|c| c.to_id_string()), None),
                };
            }
            _ => {}
        }
        info
    }

    /// "RSA 4096", "RSA-PSS 2048", "EC P-256", "Ed25519", "RSA (malformed)",
    /// "EC (no named curve)".
    pub fn describe(&self) -> String {
        match (self.bits, &self.curve, self.algorithm.as_str()) {
            (Some(bits), _, a) => format!("{a} {bits}"),
            (_, Some(c), a) => format!("{a} {c}"),
            (_, _, a @ ("RSA" | "RSA-PSS")) => format!("{a} (malformed)"),
            (_, _, "EC") => "EC (no named curve)".into(),
            (_, _, a) => a.into(),
        }
    }
}

/// The kind of `spki`'s key, or None for a key no verifier supports.
pub fn key_kind(spki: &SubjectPublicKeyInfo<'_>) -> Option<KeyKind> {
    KeyInfo::of(spki).kind
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

/// A signature scheme: what a signer is asked for and what an object names.
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

/// Where an AlgorithmIdentifier is written: pki-signer spells a scheme
/// differently in each, and keeps each spelling byte for byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlgIdFor {
    /// A SignerInfo's signatureAlgorithm: RSA PKCS#1 v1.5 as rsaEncryption
    /// (the hash is the digestAlgorithm's), as OpenSSL's `PKCS7_sign`
    /// writes it; the PSS hash identifiers without parameters (RFC 5754's
    /// form; OpenSSL writes NULL, and either verifies).
    SignerInfo,
    /// A certificate's signature, as `openssl ca` writes it: RSA PKCS#1 v1.5
    /// as sha256WithRSAEncryption, the PSS hash identifiers with NULL.
    Certificate,
}

impl Scheme {
    /// RSA-PSS with the salt as long as the hash, the only PSS form signers
    /// make (openssl's `rsa_pss_saltlen:-1`, what cml and EDK2 expect).
    pub fn pss(hash: Hash) -> Scheme {
        Scheme::RsaPss {
            hash,
            salt: hash.size() as u16,
        }
    }

    pub fn hash(self) -> Hash {
        match self {
            Scheme::RsaPkcs1(h) | Scheme::Ecdsa(h) | Scheme::RsaPss { hash: h, .. } => h,
        }
    }

    /// "RSA PKCS#1 v1.5 SHA-512", "RSA-PSS SHA-512 (MGF1-SHA-512, salt 64)", "ECDSA SHA-256".
    pub fn name(self) -> String {
        let h = |h: Hash| format!("SHA-{}", h.size() * 8);
        match self {
            Scheme::RsaPkcs1(x) => format!("RSA PKCS#1 v1.5 {}", h(x)),
            Scheme::RsaPss { hash, salt } => {
                format!("RSA-PSS {} (MGF1-{}, salt {salt})", h(hash), h(hash))
            }
            Scheme::Ecdsa(x) => format!("ECDSA {}", h(x)),
        }
    }

    /// The name in offline signing requests: "rsa-pkcs1-sha256",
    /// "rsa-pss-sha512" (salt = hash length), "ecdsa-sha384".
    pub fn id(self) -> String {
        match self {
            Scheme::RsaPkcs1(h) => format!("rsa-pkcs1-{}", h.name()),
            Scheme::RsaPss { hash, .. } => format!("rsa-pss-{}", hash.name()),
            Scheme::Ecdsa(h) => format!("ecdsa-{}", h.name()),
        }
    }

    pub fn from_id(id: &str) -> Option<Scheme> {
        Hash::ALL
            .into_iter()
            .flat_map(|h| [Scheme::RsaPkcs1(h), Scheme::pss(h), Scheme::Ecdsa(h)])
            .find(|s| s.id() == id)
    }

    /// The AlgorithmIdentifier written for this scheme in `at`.
    pub fn alg_id(self, at: AlgIdFor) -> der::Result<AlgorithmIdentifierOwned> {
        let (hash, salt) = match (self, at) {
            (Scheme::RsaPss { hash, salt }, _) => (hash, salt),
            (Scheme::RsaPkcs1(_), AlgIdFor::SignerInfo) => {
                return alg_id(oid::RSA_ENCRYPTION, true)
            }
            (Scheme::RsaPkcs1(h), _) => return alg_id(Self::named_oid(true, h), true),
            (Scheme::Ecdsa(h), _) => return alg_id(Self::named_oid(false, h), false),
        };
        let h = alg_id(hash.oid(), at == AlgIdFor::Certificate)?;
        let params = RsaPssParams {
            hash: Some(h.clone()),
            mask_gen: Some(AlgorithmIdentifierOwned {
                oid: oid::MGF1,
                parameters: Some(Any::encode_from(&h)?),
            }),
            salt_len: Some(u32::from(salt)),
            trailer_field: None,
        };
        Ok(AlgorithmIdentifierOwned {
            oid: oid::RSASSA_PSS,
            parameters: Some(Any::encode_from(&params)?),
        })
    }

    /// The signatureAlgorithm of RSA PKCS#1 v1.5 (`rsa`) or ECDSA with `h`.
    fn named_oid(rsa: bool, h: Hash) -> ObjectIdentifier {
        match (rsa, h) {
            (true, Hash::Sha256) => oid::SHA256_WITH_RSA,
            (true, Hash::Sha384) => oid::SHA384_WITH_RSA,
            (true, Hash::Sha512) => oid::SHA512_WITH_RSA,
            (false, Hash::Sha256) => oid::ECDSA_WITH_SHA256,
            (false, Hash::Sha384) => oid::ECDSA_WITH_SHA384,
            (false, Hash::Sha512) => oid::ECDSA_WITH_SHA512,
        }
    }

    /// aws-lc's encoding for an RSA signature of this scheme; PSS only with
    /// the salt as long as the hash, which is all aws-lc makes.
    pub(crate) fn rsa_encoding(self) -> Option<&'static dyn sig::RsaEncoding> {
        use Hash::*;
        Some(match self {
            Scheme::RsaPkcs1(Sha256) => &sig::RSA_PKCS1_SHA256,
            Scheme::RsaPkcs1(Sha384) => &sig::RSA_PKCS1_SHA384,
            Scheme::RsaPkcs1(Sha512) => &sig::RSA_PKCS1_SHA512,
            s if s != Scheme::pss(s.hash()) => return None,
            Scheme::RsaPss { hash: Sha256, .. } => &sig::RSA_PSS_SHA256,
            Scheme::RsaPss { hash: Sha384, .. } => &sig::RSA_PSS_SHA384,
            Scheme::RsaPss { hash: Sha512, .. } => &sig::RSA_PSS_SHA512,
            Scheme::Ecdsa(_) => return None,
        })
    }

    /// The scheme of an X.509 / CMS signatureAlgorithm that names its hash
    /// (sha256WithRSAEncryption, ecdsa-with-SHA384, RSASSA-PSS with parameters).
    pub fn from_alg_id(alg: &AlgorithmIdentifier<'_>) -> Result<Scheme, String> {
        let o = oid::of(&alg.algorithm).ok_or_else(|| {
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
        let unsupported = || format!("unsupported signature algorithm {}", alg_name(o));
        let named = Hash::ALL.into_iter().flat_map(|h| {
            [
                (Self::named_oid(true, h), Scheme::RsaPkcs1(h)),
                (Self::named_oid(false, h), Scheme::Ecdsa(h)),
            ]
        });
        if let Some((_, s)) = named.into_iter().find(|(n, _)| n == o) {
            return Ok(s);
        }
        Ok(match *o {
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
        (Scheme::RsaPkcs1(h), Some(Rsa | RsaPss)) => match h {
            Sha256 => &sig::RSA_PKCS1_2048_8192_SHA256,
            Sha384 => &sig::RSA_PKCS1_2048_8192_SHA384,
            Sha512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        },
        (Scheme::RsaPss { hash, salt }, Some(Rsa | RsaPss)) => {
            let base = match hash {
                Sha256 => sig::RSA_PSS_2048_8192_SHA256,
                Sha384 => sig::RSA_PSS_2048_8192_SHA384,
                Sha512 => sig::RSA_PSS_2048_8192_SHA512,
            };
            pss = base.with_pss_salt_length(sig::RsaPssSaltLength::Custom(salt));
            &pss
        }
        (Scheme::Ecdsa(h), Some(P256)) => match h {
            Sha256 => &sig::ECDSA_P256_SHA256_ASN1,
            Sha384 => &sig::ECDSA_P256_SHA384_ASN1,
            Sha512 => &sig::ECDSA_P256_SHA512_ASN1,
        },
        (Scheme::Ecdsa(h), Some(P384)) => match h {
            Sha256 => &sig::ECDSA_P384_SHA256_ASN1,
            Sha384 => &sig::ECDSA_P384_SHA384_ASN1,
            Sha512 => &sig::ECDSA_P384_SHA512_ASN1,
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(d: &[u8]) -> String {
        crate::codec::hex(d)
    }

    /// The PSS identifiers are the bytes pki-signer wrote before they came
    /// from here: certificates and signatures that peers read carry them.
    #[test]
    fn pss_algorithm_identifiers_keep_their_bytes() {
        const SHA256: &str = "0609608648016503040201";
        const MGF1: &str = "06092a864886f70d010108";
        const PSS: &str = "06092a864886f70d01010a";
        // Also what `openssl ca -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:-1` writes.
        let cert =
            format!("3041{PSS}3034a00f300d{SHA256}0500a11c301a{MGF1}300d{SHA256}0500a203020120");
        let si = format!("303d{PSS}3030a00d300b{SHA256}a11a3018{MGF1}300b{SHA256}a203020120");
        let pss = Scheme::pss(Hash::Sha256);
        for (at, want) in [(AlgIdFor::Certificate, cert), (AlgIdFor::SignerInfo, si)] {
            let der = pss.alg_id(at).unwrap().to_der().unwrap();
            assert_eq!(hex(&der), want, "{at:?}");
            let alg = AlgorithmIdentifierOwned::from_der(&der).unwrap();
            assert_eq!(Scheme::from_signer_info(&alg, Hash::Sha512), Ok(pss));
        }
    }

    #[test]
    fn every_scheme_round_trips_its_id_and_algorithm_identifier() {
        for h in Hash::ALL {
            for s in [Scheme::RsaPkcs1(h), Scheme::pss(h), Scheme::Ecdsa(h)] {
                assert_eq!(Scheme::from_id(&s.id()), Some(s));
                let alg = s.alg_id(AlgIdFor::SignerInfo).unwrap();
                assert_eq!(Scheme::from_signer_info(&alg, h), Ok(s));
                // A certificate's identifier names the hash itself.
                let other = Hash::ALL.into_iter().find(|x| *x != h).unwrap();
                let alg = s.alg_id(AlgIdFor::Certificate).unwrap();
                assert_eq!(Scheme::from_signer_info(&alg, other), Ok(s));
            }
        }
    }
}
