//! A signing identity: a key (any `Signer`) plus the certificate that names
//! it and the chain to send along. Every signing command resolves its
//! `--role R` or `--key K --cert C` options into one of these, once per run.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::keys::{self, FileKey, Signer};
use crate::pki::Pki;
use crate::x509;

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
    pub key: Option<PathBuf>,
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
                let key = r.key.clone().ok_or_else(|| {
                    Error::input(&r.cert, format!("role '{role}' has no private key file"))
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
        let pass = keys::key_password(spec.key_pass_file.as_deref())?;
        let signer = FileKey::load(&key_path, pass.as_deref().map(|s| s.as_str()))?;
        Identity::from_signer(Box::new(signer), &cert_path, spec.chain.as_deref())
    }

    /// Pair `signer` with the first certificate of `cert_path`; the rest of that
    /// file (and `chain_path`) become the chain. Refuses a key that does not
    /// belong to the certificate, which would make signatures nobody can verify.
    pub fn from_signer(
        signer: Box<dyn Signer>,
        cert_path: &Path,
        chain_path: Option<&Path>,
    ) -> Result<Identity> {
        let mut certs = x509::read_certs(cert_path)?;
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
        if let Some(p) = chain_path {
            for c in x509::read_certs(p)? {
                if !chain.contains(&c) {
                    chain.push(c);
                }
            }
        }
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
