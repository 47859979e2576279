//! Private keys and the one signing interface every signing path uses.
//!
//! Anything that signs (certificates, Authenticode, EFI variables, GuestOS
//! manifests, PCR policies) talks to a `dyn Signer`, so a key held in a file
//! and a key held in an HSM are interchangeable. Which scheme a key signs
//! with is the algorithm module's ([`crate::sigalg`]) answer, not the caller's.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};

use crate::error::{Error, Result};
use crate::oid;
use crate::sigalg::{Hash, KeyInfo, KeyKind, Scheme};

/// A key algorithm and size, spelled as on the command line (`rsa:4096`, `ec:prime256v1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    Rsa(u32),
    EcP256,
    EcP384,
}

impl KeyType {
    pub const ACCEPTED: &'static str = "rsa:4096, rsa:3072, rsa:2048, ec:prime256v1, ec:secp384r1";

    pub fn is_rsa(self) -> bool {
        matches!(self, KeyType::Rsa(_))
    }

    /// The kind of a key of this type; `rsa_pss`: typed id-RSASSA-PSS.
    pub fn kind(self, rsa_pss: bool) -> KeyKind {
        match self {
            KeyType::Rsa(_) if rsa_pss => KeyKind::RsaPss,
            KeyType::Rsa(_) => KeyKind::Rsa,
            KeyType::EcP256 => KeyKind::P256,
            KeyType::EcP384 => KeyKind::P384,
        }
    }

    /// The type of the key `info` describes, if pki-signer makes such keys.
    pub fn of(info: &KeyInfo) -> Option<KeyType> {
        match info.kind? {
            KeyKind::Rsa | KeyKind::RsaPss => format!("rsa:{}", info.bits?).parse().ok(),
            KeyKind::P256 => Some(KeyType::EcP256),
            KeyKind::P384 => Some(KeyType::EcP384),
        }
    }

    /// Relative cost of generating a key, used to start the slowest first.
    fn generation_cost(self) -> u32 {
        match self {
            KeyType::Rsa(bits) => bits,
            _ => 1,
        }
    }

    /// Generate a fresh private key, returned as PKCS#8 DER.
    pub fn generate(self) -> Result<Vec<u8>> {
        let der = match self {
            KeyType::Rsa(bits) => {
                let size = match bits {
                    2048 => aws_lc_rs::rsa::KeySize::Rsa2048,
                    3072 => aws_lc_rs::rsa::KeySize::Rsa3072,
                    4096 => aws_lc_rs::rsa::KeySize::Rsa4096,
                    _ => return Err(Error::Usage(format!("unsupported RSA size {bits}"))),
                };
                let kp = RsaKeyPair::generate(size)
                    .map_err(|_| Error::Crypto(format!("RSA-{bits} key generation failed")))?;
                use aws_lc_rs::encoding::AsDer;
                let der: aws_lc_rs::encoding::Pkcs8V1Der = kp
                    .as_der()
                    .map_err(|_| Error::Crypto("RSA key encoding failed".into()))?;
                der.as_ref().to_vec()
            }
            KeyType::EcP256 | KeyType::EcP384 => {
                let alg = ecdsa_signing_alg(self);
                let kp = EcdsaKeyPair::generate(alg)
                    .map_err(|_| Error::Crypto("EC key generation failed".into()))?;
                kp.to_pkcs8v1()
                    .map_err(|_| Error::Crypto("EC key encoding failed".into()))?
                    .as_ref()
                    .to_vec()
            }
        };
        Ok(der)
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyType::Rsa(bits) => write!(f, "rsa:{bits}"),
            KeyType::EcP256 => f.write_str("ec:prime256v1"),
            KeyType::EcP384 => f.write_str("ec:secp384r1"),
        }
    }
}

impl FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "rsa:4096" => Ok(KeyType::Rsa(4096)),
            "rsa:3072" => Ok(KeyType::Rsa(3072)),
            "rsa:2048" => Ok(KeyType::Rsa(2048)),
            "ec:prime256v1" | "ec:p-256" | "ec:secp256r1" => Ok(KeyType::EcP256),
            "ec:secp384r1" | "ec:p-384" => Ok(KeyType::EcP384),
            _ => Err(format!(
                "unknown key type '{s}' (accepted: {})",
                KeyType::ACCEPTED
            )),
        }
    }
}

impl serde::Serialize for KeyType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for KeyType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Generate keys for several types at once, on all cores: RSA generation
/// dominates `pki init`, and the keys are independent. Results keep input order.
pub fn generate_many(types: &[KeyType]) -> Result<Vec<Vec<u8>>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    let mut order: Vec<usize> = (0..types.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(types[i].generation_cost()));
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<Result<Vec<u8>>>>> =
        Mutex::new((0..types.len()).map(|_| None).collect());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(types.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = order.get(k) else { break };
                let r = types[i].generate();
                out.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
    });
    out.into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::Internal("key generation did not run".into()))))
        .collect()
}

/// Something that can sign: a key file ([`FileKey`]) or a PKCS#11 object
/// (`crate::pkcs11`); every signing path takes one, so an HSM key works everywhere.
/// Implementations must never expose private key material.
pub trait Signer: Send + Sync {
    fn key_type(&self) -> KeyType;
    /// The subjectPublicKey BIT STRING content: PKCS#1 RSAPublicKey for RSA,
    /// the uncompressed point for EC.
    fn public_key(&self) -> &[u8];
    fn sign(&self, scheme: Scheme, msg: &[u8]) -> Result<Vec<u8>>;
    /// Keys typed id-RSASSA-PSS may only make PSS signatures.
    fn rsa_pss_only(&self) -> bool {
        false
    }
    /// Where the key lives (path or URI), for messages. Never key material.
    fn origin(&self) -> String;

    /// What the key is, as the algorithm module names it.
    fn key_kind(&self) -> KeyKind {
        self.key_type().kind(self.rsa_pss_only())
    }
    /// The scheme the key signs with where the format leaves the hash to
    /// the key (X.509, Authenticode).
    fn scheme(&self) -> Scheme {
        self.key_kind().default_scheme()
    }
    /// The scheme for a format that fixes the hash (CMS, GuestOS, PCR policies).
    fn scheme_with(&self, hash: Hash) -> Result<Scheme> {
        let kind = self.key_kind();
        kind.scheme_with(hash).ok_or_else(|| {
            Error::Usage(format!(
                "{}: an {} key cannot make {} signatures (it makes {})",
                self.origin(),
                kind.name(),
                hash.name(),
                Hash::ALL
                    .into_iter()
                    .filter(|h| kind.scheme_with(*h).is_some())
                    .map(Hash::name)
                    .collect::<Vec<_>>()
                    .join(" or ")
            ))
        })
    }
}

enum FileKeyInner {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A private key read from (or generated for) a key file.
pub struct FileKey {
    inner: FileKeyInner,
    key_type: KeyType,
    /// The key is typed id-RSASSA-PSS (GyroidOS's "secondary" keys): it must
    /// only sign with PSS padding.
    rsa_pss: bool,
    origin: String,
}

fn ecdsa_signing_alg(t: KeyType) -> &'static signature::EcdsaSigningAlgorithm {
    match t {
        KeyType::EcP384 => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        _ => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
    }
}

/// Key passwords come from a file or the environment, never from argv
/// (which every user on the machine can read in /proc).
pub const KEY_PASS_ENV: &str = "PKI_SIGNER_KEY_PASS";

/// The password for encrypted keys: `--key-pass-file` (first line) or `$PKI_SIGNER_KEY_PASS`.
pub fn key_password(pass_file: Option<&Path>) -> Result<Option<zeroize::Zeroizing<String>>> {
    if let Some(p) = pass_file {
        let bytes = zeroize::Zeroizing::new(crate::fsutil::read_input(
            p,
            crate::fsutil::InputKind::Password,
        )?);
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| Error::input(p, format!("not UTF-8 text: {e}")))?;
        let line = text.lines().next().unwrap_or("");
        return Ok(Some(zeroize::Zeroizing::new(line.to_string())));
    }
    Ok(std::env::var(KEY_PASS_ENV)
        .ok()
        .map(zeroize::Zeroizing::new))
}

impl FileKey {
    /// Parse a PKCS#8 DER private key (RSA, RSA-PSS, EC P-256/P-384). `origin` names it in errors.
    pub fn from_pkcs8(der: &[u8], origin: &Path) -> Result<FileKey> {
        let info = pkcs8::PrivateKeyInfo::try_from(der)
            .map_err(|e| Error::input(origin, format!("not a PKCS#8 private key: {e}")))?;
        if info.algorithm.oid == oid::RSASSA_PSS {
            // The key material is a plain RSAPrivateKey; only the type differs.
            return Self::from_rsa(RsaKeyPair::from_der(info.private_key), true, origin);
        }
        if info.algorithm.oid == oid::RSA_ENCRYPTION {
            return Self::from_rsa(RsaKeyPair::from_pkcs8(der), false, origin);
        }
        for t in [KeyType::EcP256, KeyType::EcP384] {
            if let Ok(kp) = EcdsaKeyPair::from_pkcs8(ecdsa_signing_alg(t), der) {
                return Ok(Self::ec(kp, t, origin));
            }
        }
        Err(Error::input(
            origin,
            format!(
                "unsupported private key algorithm {} (expected RSA, RSA-PSS, EC P-256 or EC P-384)",
                info.algorithm.oid
            ),
        ))
    }

    fn from_rsa(
        kp: std::result::Result<RsaKeyPair, aws_lc_rs::error::KeyRejected>,
        rsa_pss: bool,
        origin: &Path,
    ) -> Result<FileKey> {
        let kp = kp.map_err(|e| Error::input(origin, format!("RSA key rejected: {e}")))?;
        let bits = (kp.public_modulus_len() * 8) as u32;
        Ok(FileKey {
            inner: FileKeyInner::Rsa(kp),
            key_type: KeyType::Rsa(bits),
            rsa_pss,
            origin: origin.display().to_string(),
        })
    }

    fn ec(kp: EcdsaKeyPair, t: KeyType, origin: &Path) -> FileKey {
        FileKey {
            inner: FileKeyInner::Ec(kp),
            key_type: t,
            rsa_pss: false,
            origin: origin.display().to_string(),
        }
    }

    /// Read a key file: PEM (PKCS#8, encrypted PKCS#8, PKCS#1 "RSA PRIVATE KEY",
    /// SEC1 "EC PRIVATE KEY") or PKCS#8 DER. `password` decrypts encrypted PKCS#8.
    pub fn load(path: &Path, password: Option<&str>) -> Result<FileKey> {
        let bytes = zeroize::Zeroizing::new(crate::fsutil::read_input(
            path,
            crate::fsutil::InputKind::Key,
        )?);
        if !bytes.starts_with(b"-----BEGIN") {
            return FileKey::from_pkcs8(&bytes, path);
        }
        let block = pem::parse_many(&bytes[..])
            .map_err(|e| Error::input(path, format!("bad PEM: {e}")))?
            .into_iter()
            .find(|p| p.tag().ends_with("PRIVATE KEY"))
            .ok_or_else(|| Error::input(path, "no PRIVATE KEY block in PEM file"))?;
        if block.headers().get("Proc-Type").is_some() {
            return Err(Error::input(
                path,
                "legacy PEM encryption is not supported; convert with: openssl pkcs8 -topk8 -in KEY -out KEY.p8",
            ));
        }
        let der = zeroize::Zeroizing::new(block.contents().to_vec());
        match block.tag() {
            "PRIVATE KEY" => FileKey::from_pkcs8(&der, path),
            "ENCRYPTED PRIVATE KEY" => {
                let Some(pass) = password else {
                    return Err(Error::input(
                        path,
                        format!("key is encrypted: set {KEY_PASS_ENV} or pass --key-pass-file"),
                    ));
                };
                let enc = pkcs8::EncryptedPrivateKeyInfo::try_from(&der[..])
                    .map_err(|e| Error::input(path, format!("bad encrypted key: {e}")))?;
                let doc = enc.decrypt(pass.as_bytes()).map_err(|_| {
                    Error::input(
                        path,
                        "wrong password for encrypted key (or unsupported cipher)",
                    )
                })?;
                FileKey::from_pkcs8(doc.as_bytes(), path)
            }
            "RSA PRIVATE KEY" => Self::from_rsa(RsaKeyPair::from_der(&der), false, path),
            "EC PRIVATE KEY" => {
                for t in [KeyType::EcP256, KeyType::EcP384] {
                    if let Ok(kp) = EcdsaKeyPair::from_private_key_der(ecdsa_signing_alg(t), &der) {
                        return Ok(Self::ec(kp, t, path));
                    }
                }
                Err(Error::input(
                    path,
                    "unsupported EC key (expected P-256 or P-384)",
                ))
            }
            other => Err(Error::input(
                path,
                format!("unsupported key type '{other}'"),
            )),
        }
    }

    /// True for id-RSASSA-PSS typed keys, which must sign with PSS.
    pub fn is_rsa_pss(&self) -> bool {
        self.rsa_pss
    }
}

impl Signer for FileKey {
    fn key_type(&self) -> KeyType {
        self.key_type
    }

    fn public_key(&self) -> &[u8] {
        match &self.inner {
            FileKeyInner::Rsa(k) => k.public_key().as_ref(),
            FileKeyInner::Ec(k) => k.public_key().as_ref(),
        }
    }

    fn sign(&self, scheme: Scheme, msg: &[u8]) -> Result<Vec<u8>> {
        let fail = || Error::Crypto(format!("signing with {} failed", self.origin));
        let refuse = || {
            Error::Usage(format!(
                "{} is an {} key and cannot make {} signatures",
                self.origin,
                self.key_kind().name(),
                scheme.name()
            ))
        };
        match (&self.inner, scheme) {
            (FileKeyInner::Rsa(_), Scheme::RsaPkcs1(_)) if self.rsa_pss => Err(refuse()),
            (FileKeyInner::Rsa(k), s) => {
                let pad = s.rsa_encoding().ok_or_else(refuse)?;
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(pad, &SystemRandom::new(), msg, &mut sig)
                    .map_err(|_| fail())?;
                Ok(sig)
            }
            (FileKeyInner::Ec(k), Scheme::Ecdsa(h)) => {
                ecdsa_deterministic(k, self.key_type, &h.digest(msg)).map_err(|_| fail())
            }
            (FileKeyInner::Ec(_), _) => Err(refuse()),
        }
    }

    fn origin(&self) -> String {
        self.origin.clone()
    }

    fn rsa_pss_only(&self) -> bool {
        self.rsa_pss
    }
}

/// ECDSA with the RFC 6979 nonce, so that signing is reproducible like RSA
/// PKCS#1 v1.5 (Yocto builds compare outputs byte for byte). The prehash may
/// be longer than the curve order: ECDSA uses its leftmost bits (FIPS 186-4 6.4).
fn ecdsa_deterministic(
    k: &EcdsaKeyPair,
    t: KeyType,
    prehash: &[u8],
) -> std::result::Result<Vec<u8>, ()> {
    use aws_lc_rs::encoding::AsBigEndian;
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    let scalar = k.private_key().as_be_bytes().map_err(|_| ())?;
    let scalar = zeroize::Zeroizing::new(scalar.as_ref().to_vec());
    match t {
        KeyType::EcP256 => {
            let sk = p256::ecdsa::SigningKey::from_slice(&scalar).map_err(|_| ())?;
            let sig: p256::ecdsa::Signature = sk.sign_prehash(prehash).map_err(|_| ())?;
            Ok(sig.to_der().as_bytes().to_vec())
        }
        KeyType::EcP384 => {
            let sk = p384::ecdsa::SigningKey::from_slice(&scalar).map_err(|_| ())?;
            let sig: p384::ecdsa::Signature = sk.sign_prehash(prehash).map_err(|_| ())?;
            Ok(sig.to_der().as_bytes().to_vec())
        }
        KeyType::Rsa(_) => Err(()),
    }
}

/// Re-type an RSA PKCS#8 key as id-RSASSA-PSS without parameters, what
/// `openssl req -newkey rsa-pss` writes (gen_dev_certs.sh's GuestOS signing
/// keys): the RSAPrivateKey inside stays as it is.
pub fn pkcs8_as_rsa_pss(der: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    use pkcs8::der::Encode;
    let info = pkcs8::PrivateKeyInfo::try_from(der)
        .map_err(|e| Error::Crypto(format!("not a PKCS#8 private key: {e}")))?;
    if info.algorithm.oid != oid::RSA_ENCRYPTION {
        return Err(Error::Crypto(format!(
            "only RSA keys can be typed RSA-PSS, not {}",
            info.algorithm.oid
        )));
    }
    let pss = pkcs8::PrivateKeyInfo {
        algorithm: pkcs8::AlgorithmIdentifierRef {
            oid: oid::RSASSA_PSS,
            parameters: None,
        },
        private_key: info.private_key,
        public_key: None,
    };
    let mut out = zeroize::Zeroizing::new(vec![]);
    pss.encode_to_vec(&mut out)
        .map_err(|e| Error::Crypto(format!("PKCS#8 encoding: {e}")))?;
    Ok(out)
}

/// PEM-encode a PKCS#8 private key.
pub fn pkcs8_pem(der: &[u8]) -> String {
    crate::codec::pem_encode("PRIVATE KEY", der)
}
