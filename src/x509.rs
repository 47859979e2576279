//! X.509 certificates: issuing them with any `Signer`, reading them back,
//! checking signatures, and describing them for `show` commands.

use std::path::Path;

use crate::codec::{hex, pem_encode, sha256_hex};
use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, Issuer, KeyIdMethod};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::time::ASN1Time;

use crate::error::{Error, Result};
use crate::keys::{KeyType, Signer};
use crate::sigalg::{AlgIdFor, Hash, KeyInfo, KeyKind, Scheme};

/// Lets rcgen sign and embed public keys through our `Signer` trait, so
/// certificate issuance works the same for file and HSM keys.
struct RcgenKey<'a> {
    key: &'a dyn Signer,
    alg: &'static rcgen::SignatureAlgorithm,
    /// The key is typed id-RSASSA-PSS in certificates (GyroidOS's GuestOS
    /// signing keys). rcgen 0.14 knows no RSA-PSS at all: it writes the
    /// rsaEncryption form, which [`finish_pss`] replaces. The SKI and AKI are
    /// derived from [`rcgen::PublicKeyData::subject_public_key_info`], so they
    /// are computed over the id-RSASSA-PSS form from the start.
    pss_spki: bool,
    /// Do not sign: the TBSCertificate is changed and signed afterwards by
    /// [`finish_pss`]; rcgen gets a placeholder.
    deferred: bool,
}

impl<'a> RcgenKey<'a> {
    fn new(key: &'a dyn Signer) -> Self {
        let alg = match key.key_type() {
            KeyType::Rsa(_) => &rcgen::PKCS_RSA_SHA256,
            KeyType::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        };
        RcgenKey {
            key,
            alg,
            pss_spki: false,
            deferred: false,
        }
    }

    fn pss(mut self, pss_spki: bool, deferred: bool) -> Self {
        self.pss_spki = pss_spki;
        self.deferred = deferred;
        self
    }
}

impl rcgen::PublicKeyData for RcgenKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.key.public_key()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.alg
    }
    fn subject_public_key_info(&self) -> Vec<u8> {
        if self.pss_spki {
            return rsa_pss_spki_der(self.key.public_key());
        }
        plain_spki(self.alg, self.key.public_key())
    }
}

impl rcgen::SigningKey for RcgenKey<'_> {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        if self.deferred {
            return Ok(vec![0]);
        }
        self.key
            .sign(self.key.scheme(), msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// rcgen's own SubjectPublicKeyInfo encoding (what the trait's default
/// method returns), for keys that are not typed id-RSASSA-PSS.
fn plain_spki(alg: &'static rcgen::SignatureAlgorithm, key: &[u8]) -> Vec<u8> {
    struct Plain<'a>(&'static rcgen::SignatureAlgorithm, &'a [u8]);
    impl rcgen::PublicKeyData for Plain<'_> {
        fn der_bytes(&self) -> &[u8] {
            self.1
        }
        fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
            self.0
        }
    }
    rcgen::PublicKeyData::subject_public_key_info(&Plain(alg, key))
}

/// SubjectPublicKeyInfo of an RSA key typed id-RSASSA-PSS without
/// parameters (no restrictions), as `openssl req -newkey rsa-pss` makes it.
pub fn rsa_pss_spki_der(rsa_public_key: &[u8]) -> Vec<u8> {
    use cms::cert::x509::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
    use der::Encode;
    let spki = SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: crate::oid::RSASSA_PSS,
            parameters: None,
        },
        subject_public_key: der::asn1::BitString::from_bytes(rsa_public_key)
            .expect("a byte string is a bit string"),
    };
    spki.to_der().expect("SubjectPublicKeyInfo encodes")
}

/// Is the key of this certificate typed id-RSASSA-PSS?
fn cert_key_is_pss(der: &[u8]) -> Result<bool> {
    let c = parse(der, Path::new("issuer certificate"))?;
    Ok(key_info(&c).kind == Some(KeyKind::RsaPss))
}

/// Give a certificate rcgen made the parts rcgen cannot write, and sign it:
/// the subject key typed id-RSASSA-PSS (`subject_pss`), and an RSASSA-PSS
/// signature (SHA-256, salt 32, as `openssl ca -sigopt
/// rsa_padding_mode:pss -sigopt rsa_pss_saltlen:-1` makes it) when the
/// issuer's key is typed so (`issuer_pss`; OpenSSL refuses any other
/// signature by such a key).
/// Otherwise the issuer signs with its usual scheme and rcgen's algorithm
/// identifier stays.
fn finish_pss(
    der: &[u8],
    subject_pss: bool,
    issuer_pss: bool,
    issuer_key: &dyn Signer,
) -> Result<Vec<u8>> {
    use cms::cert::x509::spki::AlgorithmIdentifierOwned;
    use cms::cert::x509::Certificate;
    use der::{Decode, Encode};
    let enc = |e: der::Error| Error::Internal(format!("certificate encoding: {e}"));
    let mut cert = Certificate::from_der(der).map_err(enc)?;
    if subject_pss {
        cert.tbs_certificate.subject_public_key_info.algorithm = AlgorithmIdentifierOwned {
            oid: crate::oid::RSASSA_PSS,
            parameters: None,
        };
    }
    let scheme = if issuer_pss {
        let scheme = Scheme::pss(Hash::Sha256);
        let alg = scheme.alg_id(AlgIdFor::Certificate).map_err(enc)?;
        cert.tbs_certificate.signature = alg.clone();
        cert.signature_algorithm = alg;
        scheme
    } else {
        issuer_key.scheme()
    };
    let tbs = cert.tbs_certificate.to_der().map_err(enc)?;
    let sig = issuer_key.sign(scheme, &tbs)?;
    cert.signature = der::asn1::BitString::from_bytes(&sig).map_err(enc)?;
    cert.to_der().map_err(enc)
}

/// SubjectPublicKeyInfo DER of a signer's public key.
pub fn spki_der(key: &dyn Signer) -> Vec<u8> {
    rcgen::PublicKeyData::subject_public_key_info(&RcgenKey::new(key))
}

/// Subject name fields in the order they are encoded.
#[derive(Clone, Debug, Default)]
pub struct Subject {
    pub country: Option<String>,
    pub org: Option<String>,
    pub org_unit: Option<String>,
    pub common_name: String,
}

impl Subject {
    fn to_dn(&self) -> Result<DistinguishedName> {
        let mut dn = DistinguishedName::new();
        if let Some(c) = &self.country {
            // RFC 5280: countryName is a PrintableString.
            let p = rcgen::string::PrintableString::try_from(c.as_str())
                .map_err(|_| Error::Usage(format!("country '{c}' is not printable")))?;
            dn.push(DnType::CountryName, DnValue::PrintableString(p));
        }
        if let Some(o) = &self.org {
            dn.push(DnType::OrganizationName, o.as_str());
        }
        if let Some(ou) = &self.org_unit {
            dn.push(DnType::OrganizationalUnitName, ou.as_str());
        }
        dn.push(DnType::CommonName, self.common_name.as_str());
        Ok(dn)
    }
}

/// What a certificate says about itself, beyond the subject.
#[derive(Clone, Debug)]
pub struct CertSpec {
    pub subject: Subject,
    pub ca: bool,
    pub not_before: OffsetDateTime,
    pub days: u32,
    pub key_usage: Vec<rcgen::KeyUsagePurpose>,
    pub eku: Vec<rcgen::ExtendedKeyUsagePurpose>,
}

/// 16 random bytes, forced positive and full-length so the encoding is always 16 bytes.
fn random_serial() -> Result<rcgen::SerialNumber> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| Error::Crypto("RNG failed".into()))?;
    b[0] = (b[0] & 0x7f) | 0x40;
    Ok(rcgen::SerialNumber::from_slice(&b))
}

/// Issue a certificate for `subject_key`. With `issuer = None` it is self-signed;
/// otherwise `issuer` is the issuing CA's certificate (DER) and key, and the AKI
/// is copied from that certificate's SKI.
pub fn issue(
    spec: &CertSpec,
    subject_key: &dyn Signer,
    issuer: Option<(&[u8], &dyn Signer)>,
) -> Result<Vec<u8>> {
    issue_with(spec, subject_key, issuer, vec![])
}

/// `issue`, with further extensions after the standard ones (`pki init`
/// adds the development marker, see `release::marker_extension`).
pub fn issue_with(
    spec: &CertSpec,
    subject_key: &dyn Signer,
    issuer: Option<(&[u8], &dyn Signer)>,
    extensions: Vec<rcgen::CustomExtension>,
) -> Result<Vec<u8>> {
    let mut p = CertificateParams::default();
    p.custom_extensions = extensions;
    p.distinguished_name = spec.subject.to_dn()?;
    p.not_before = spec.not_before;
    p.not_after = spec.not_before + time::Duration::days(i64::from(spec.days));
    p.serial_number = Some(random_serial()?);
    p.is_ca = if spec.ca {
        rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
    } else {
        rcgen::IsCa::ExplicitNoCa
    };
    p.key_usages = spec.key_usage.clone();
    p.extended_key_usages = spec.eku.clone();
    p.key_identifier_method = KeyIdMethod::Sha256;
    // A key typed id-RSASSA-PSS (GyroidOS's GuestOS signing roles) is
    // certified as such, and such an issuer signs with RSASSA-PSS.
    let subject_pss = subject_key.rsa_pss_only();
    let (issuer_pss, issuer_spki_pss) = match issuer {
        None => (subject_pss, subject_pss),
        Some((d, k)) => {
            let typed = cert_key_is_pss(d)?;
            (typed || k.rsa_pss_only(), typed)
        }
    };
    let finish = subject_pss || issuer_pss;
    let err =
        |e: rcgen::Error| Error::Crypto(format!("issuing '{}': {e}", spec.subject.common_name));
    let (cert, signer) = match issuer {
        None => {
            let subject = RcgenKey::new(subject_key).pss(subject_pss, finish);
            (p.self_signed(&subject).map_err(err)?, subject_key)
        }
        Some((issuer_der, issuer_key)) => {
            p.use_authority_key_identifier_extension = true;
            let subject = RcgenKey::new(subject_key).pss(subject_pss, false);
            let issuer = Issuer::from_ca_cert_der(
                &issuer_der.to_vec().into(),
                RcgenKey::new(issuer_key).pss(issuer_spki_pss, finish),
            )
            .map_err(err)?;
            (p.signed_by(&subject, &issuer).map_err(err)?, issuer_key)
        }
    };
    if finish {
        return finish_pss(cert.der(), subject_pss, issuer_pss, signer);
    }
    Ok(cert.der().to_vec())
}

pub fn pem_cert(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

/// Read every certificate from a PEM file (in order) or a single DER certificate.
pub fn read_certs(path: &Path) -> Result<Vec<Vec<u8>>> {
    let bytes = crate::fsutil::read_input(path, crate::fsutil::InputKind::Certificate)?;
    parse_certs(&bytes, path)
}

pub fn parse_certs(bytes: &[u8], path: &Path) -> Result<Vec<Vec<u8>>> {
    let certs: Vec<Vec<u8>> =
        if bytes.starts_with(b"-----BEGIN") || bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            pem::parse_many(bytes)
                .map_err(|e| Error::input(path, format!("bad PEM: {e}")))?
                .into_iter()
                .filter(|p| p.tag() == "CERTIFICATE" || p.tag() == "X509 CERTIFICATE")
                .map(|p| p.into_contents())
                .collect()
        } else {
            vec![bytes.to_vec()]
        };
    if certs.is_empty() {
        return Err(Error::input(path, "no CERTIFICATE in file"));
    }
    for c in &certs {
        parse(c, path)?;
    }
    Ok(certs)
}

pub fn parse<'a>(der: &'a [u8], path: &Path) -> Result<X509Certificate<'a>> {
    match X509Certificate::from_der(der) {
        Ok(([], c)) => Ok(c),
        Ok(_) => Err(Error::input(path, "trailing bytes after certificate")),
        Err(e) => Err(Error::input(path, format!("not an X.509 certificate: {e}"))),
    }
}

/// What the key of `cert` is; `describe()` for "RSA 4096" / "EC P-256".
pub fn key_info(cert: &X509Certificate<'_>) -> KeyInfo {
    KeyInfo::of(cert.public_key())
}

/// Verify that `child` carries a valid signature by `issuer`'s key.
/// Returns a short reason on failure.
pub fn verify_signed_by(
    child: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
) -> std::result::Result<(), String> {
    if child.issuer() != issuer.subject() {
        return Err(format!(
            "issuer name '{}' does not match '{}'",
            child.issuer(),
            issuer.subject()
        ));
    }
    verify_with_key(
        issuer,
        &child.signature_algorithm,
        child.tbs_certificate.as_ref(),
        child.signature_value.data.as_ref(),
    )
}

/// Verify `sig` over `msg`, made with the algorithm `alg` (an X.509/CMS
/// AlgorithmIdentifier), against `signer`'s public key.
pub fn verify_with_key(
    signer: &X509Certificate<'_>,
    alg: &x509_parser::x509::AlgorithmIdentifier<'_>,
    msg: &[u8],
    sig: &[u8],
) -> std::result::Result<(), String> {
    verify_with_spki(signer.public_key(), alg, msg, sig)
}

/// Verify `sig` over `msg` against a bare SubjectPublicKeyInfo, for objects that
/// carry their own key (a CSR's proof of possession): RSA PKCS#1 v1.5 and PSS
/// (with the salt length the parameters give), ECDSA on P-256/P-384.
pub fn verify_with_spki(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
    alg: &x509_parser::x509::AlgorithmIdentifier<'_>,
    msg: &[u8],
    sig: &[u8],
) -> std::result::Result<(), String> {
    crate::sigalg::verify(spki, crate::sigalg::Scheme::from_alg_id(alg)?, msg, sig)
}

/// Issue a certificate for a public key we hold no `Signer` for (a CSR's key),
/// signed by `issuer_key` whose certificate is `issuer_der`. The caller fills
/// `params` (subject, validity, usages, extensions); this sets what every issued
/// certificate has in common with `issue`: a random 16-byte serial, the SKI
/// (SHA-256 based) and the AKI copied from the issuer's SKI.
/// Refuses keys rcgen would not re-encode byte for byte, so the certificate
/// always certifies exactly the key given.
pub fn issue_for_spki(
    mut params: CertificateParams,
    subject_spki_der: &[u8],
    issuer_der: &[u8],
    issuer_key: &dyn Signer,
) -> Result<Vec<u8>> {
    use rcgen::PublicKeyData as _;
    let subject = rcgen::SubjectPublicKeyInfo::from_der(subject_spki_der)
        .map_err(|e| Error::Crypto(format!("unsupported public key: {e}")))?;
    if subject.subject_public_key_info() != subject_spki_der {
        return Err(Error::Crypto(
            "unsupported public key encoding (cannot be copied unchanged)".into(),
        ));
    }
    params.serial_number = Some(random_serial()?);
    params.key_identifier_method = KeyIdMethod::Sha256;
    params.use_authority_key_identifier_extension = true;
    let err = |e: rcgen::Error| Error::Crypto(format!("issuing certificate: {e}"));
    let issuer_spki_pss = cert_key_is_pss(issuer_der)?;
    let issuer_pss = issuer_spki_pss || issuer_key.rsa_pss_only();
    let issuer = Issuer::from_ca_cert_der(
        &issuer_der.to_vec().into(),
        RcgenKey::new(issuer_key).pss(issuer_spki_pss, issuer_pss),
    )
    .map_err(err)?;
    let cert = params.signed_by(&subject, &issuer).map_err(err)?;
    if issuer_pss {
        return finish_pss(cert.der(), false, true, issuer_key);
    }
    Ok(cert.der().to_vec())
}

pub fn is_ca(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

pub fn rfc3339(t: &ASN1Time) -> String {
    t.to_datetime()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// A certificate summarised for `show` output.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub key: String,
    pub ca: bool,
    pub fingerprint_sha256: String,
    pub not_before: String,
    pub not_after: String,
}

pub fn describe(der: &[u8], path: &Path) -> Result<CertInfo> {
    let c = parse(der, path)?;
    Ok(CertInfo {
        subject: c.subject().to_string(),
        issuer: c.issuer().to_string(),
        serial: hex(c.raw_serial()),
        key: key_info(&c).describe(),
        ca: is_ca(&c),
        fingerprint_sha256: sha256_hex(der),
        not_before: rfc3339(&c.validity().not_before),
        not_after: rfc3339(&c.validity().not_after),
    })
}
