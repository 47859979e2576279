//! A signing identity: a key (any `Signer`) plus the certificate that names
//! it and the chain to send along. Every signing command resolves its
//! `--role R` or `--key K --cert C` options into one of these, once per run.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::keys::{self, FileKey, Signer};
use crate::pkcs11::{self, Pkcs11Key};
use crate::pki::Pki;
use crate::release;
use crate::x509;

/// Where an identity's key came from, for the release-mode check.
struct Origin<'a> {
    role: Option<&'a str>,
    pki_dir: Option<&'a Path>,
    key: &'a Path,
}

pub struct Identity {
    pub signer: Box<dyn Signer>,
    /// The signer's certificate (DER).
    pub cert: Vec<u8>,
    /// Further certificates to embed (DER), leaf-side first, root excluded.
    pub chain: Vec<Vec<u8>>,
}

/// Where a signing key comes from, as given on the command line.
#[derive(Clone, Debug, Default)]
pub struct KeySpec {
    pub role: Option<String>,
    pub dir: PathBuf,
    /// A key file, or an RFC 7512 `pkcs11:` URI naming a private key on a token.
    pub key: Option<PathBuf>,
    /// A certificate file, or a `pkcs11:` URI naming a certificate object.
    pub cert: Option<PathBuf>,
    /// Extra chain certificates (PEM file).
    pub chain: Option<PathBuf>,
    pub key_pass_file: Option<PathBuf>,
}

impl Identity {
    pub fn load(spec: &KeySpec) -> Result<Identity> {
        let (key_path, cert_path) = match (&spec.role, &spec.key, &spec.cert) {
            (Some(role), None, None) => {
                let pki = Pki::open(&spec.dir)?;
                let r = pki.role(role)?;
                // A file, or the pkcs11: URI of a key `pki init --hsm` made in a token.
                let key = r.key.clone().ok_or_else(|| {
                    Error::input(&r.cert, format!("role '{role}' has no private key"))
                })?;
                (key, r.cert.clone())
            }
            (None, Some(k), Some(c)) => (k.clone(), c.clone()),
            (Some(_), _, _) => {
                return Err(Error::Usage(
                    "give either --role or --key with --cert, not both".into(),
                ))
            }
            _ => {
                return Err(Error::Usage(
                    "a signing key is needed: --role ROLE, or --key KEY --cert CERT".into(),
                ))
            }
        };
        let signer = load_signer(&key_path, spec.key_pass_file.as_deref())?;
        let origin = Origin {
            role: spec.role.as_deref(),
            pki_dir: Some(&spec.dir),
            key: &key_path,
        };
        Identity::checked(signer, &cert_path, spec.chain.as_deref(), &origin)
    }

    /// Pair `signer` with the first certificate of `cert_path` (a file or a
    /// `pkcs11:` URI); the rest of that file (and `chain_path`) become the
    /// chain. Refuses a key that does not belong to the certificate, which
    /// would make signatures nobody can verify.
    pub fn from_signer(
        signer: Box<dyn Signer>,
        cert_path: &Path,
        chain_path: Option<&Path>,
    ) -> Result<Identity> {
        let key = PathBuf::from(signer.origin());
        let origin = Origin {
            role: None,
            pki_dir: None,
            key: &key,
        };
        Identity::checked(signer, cert_path, chain_path, &origin)
    }

    /// `from_signer`, knowing where the key came from. Every identity is made
    /// here, so every signing path passes the release-mode check.
    fn checked(
        signer: Box<dyn Signer>,
        cert_path: &Path,
        chain_path: Option<&Path>,
        origin: &Origin<'_>,
    ) -> Result<Identity> {
        let mut certs = read_cert_chain(cert_path)?;
        let cert = certs.remove(0);
        let parsed = x509::parse(&cert, cert_path)?;
        if parsed.public_key().subject_public_key.data.as_ref() != signer.public_key() {
            return Err(Error::input(
                cert_path,
                format!("certificate does not match the key {}", signer.origin()),
            ));
        }
        // Signing with an expired certificate makes artifacts that verifiers
        // with a clock reject later; catch it at build time instead.
        let now = time::OffsetDateTime::now_utc();
        for der in std::iter::once(&cert).chain(certs.iter()) {
            let c = x509::parse(der, cert_path)?;
            let v = c.validity();
            if now > v.not_after.to_datetime() {
                return Err(Error::input(
                    cert_path,
                    format!(
                        "certificate '{}' expired {}",
                        c.subject(),
                        x509::rfc3339(&v.not_after)
                    ),
                ));
            }
            if now < v.not_before.to_datetime() {
                return Err(Error::input(
                    cert_path,
                    format!(
                        "certificate '{}' is not valid before {}",
                        c.subject(),
                        x509::rfc3339(&v.not_before)
                    ),
                ));
            }
        }
        let mut chain: Vec<Vec<u8>> = certs;
        let mut extra = vec![];
        if let Some(p) = chain_path {
            for c in x509::read_certs(p)? {
                if !chain.contains(&c) {
                    extra.push(c.clone());
                    chain.push(c);
                }
            }
        }
        // Release mode: never a development key (roots included in the check).
        let all: Vec<Vec<u8>> = std::iter::once(cert.clone())
            .chain(chain.iter().cloned())
            .collect();
        release::check_key(&release::Candidate {
            role: origin.role,
            pki_dir: origin.pki_dir,
            key: origin.key,
            cert: cert_path,
            chain: chain_path,
            certs: &all,
            in_cert_file: all.len() - extra.len(),
        })?;
        // Roots are trust anchors, not chain members: leave self-signed certs out.
        chain.retain(|c| {
            x509::parse(c, cert_path)
                .map(|p| p.subject() != p.issuer())
                .unwrap_or(false)
        });
        Ok(Identity {
            signer,
            cert,
            chain,
        })
    }
}

/// Open a signing key: a `pkcs11:` URI (RFC 7512) or a key file. File keys
/// may be encrypted (`key_pass_file`, else `$PKI_SIGNER_KEY_PASS`); token keys
/// take their PIN from `$PKI_SIGNER_PKCS11_PIN` or the URI's `pin-source`.
pub fn load_signer(key: &Path, key_pass_file: Option<&Path>) -> Result<Box<dyn Signer>> {
    if let Some(uri) = key.to_str().filter(|_| pkcs11::is_uri(key)) {
        return Ok(Box::new(Pkcs11Key::open(uri)?));
    }
    let pass = keys::key_password(key_pass_file)?;
    Ok(Box::new(FileKey::load(
        key,
        pass.as_deref().map(|s| s.as_str()),
    )?))
}

/// The certificates (DER) of `cert`: every certificate of a PEM/DER file, or
/// the one certificate object a `pkcs11:` URI names.
pub fn read_cert_chain(cert: &Path) -> Result<Vec<Vec<u8>>> {
    if let Some(uri) = cert.to_str().filter(|_| pkcs11::is_uri(cert)) {
        let der = pkcs11::read_cert(uri)?;
        let shown = pkcs11::Pkcs11Uri::parse(uri)?.shown().to_string();
        x509::parse(&der, Path::new(&shown))?;
        return Ok(vec![der]);
    }
    x509::read_certs(cert)
}
