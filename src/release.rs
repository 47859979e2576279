//! Release mode: a release build never signs with a development key.
//!
//! Release mode is on when `PKI_SIGNER_RELEASE` is set (to anything but
//! empty, `0`, `false`, `no` or `off`) or when the CLI got `--release`
//! ([`enable`]). Then every signing identity passes [`check_key`] (called by
//! `identity::Identity`, which every signing command and `resign` use to get
//! their key) and `pki init` passes [`check_pki_init`].
//!
//! A key is a development key when:
//! - it is a role of, or its key file lies in, a development PKI directory:
//!   one whose `pki.json` says `"development": true`, or a GyroidOS directory
//!   made by `gen_dev_certs.sh` (no `pki.json`, and a root CA's private key,
//!   `ssig_rootca.key` or `gen_rootca.key`, lies beside the signing keys);
//! - its certificate, or a certificate of its chain, carries the development
//!   marker [`DEV_MARKER_OID`] (a certificatePolicies policy that `pki init`
//!   puts into every development certificate);
//! - its public key (or that of a certificate of its chain) is the public key
//!   of a certificate of such a development directory, or its certificate was
//!   issued by one. The directories looked at are the role's PKI, `--dir` /
//!   `$PKI_SIGNER_DIR`, and those holding the key, certificate and chain files.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::pkcs11;
use crate::pki::{Inventory, MANIFEST};
use crate::x509;

/// The environment variable that turns release mode on.
pub const ENV: &str = "PKI_SIGNER_RELEASE";

/// The development marker: a certificatePolicies (2.5.29.32, non-critical)
/// policy identifier under the UUID arc 2.25 (ITU-T X.667), made from a
/// random UUID once. `pki init` puts it into every certificate of a
/// development PKI; release mode refuses any key whose certificate or chain
/// carries it.
pub const DEV_MARKER_OID: &str = "2.25.254591559235912200184357140465293194856";
/// The UUID of [`DEV_MARKER_OID`] as an integer (its last arc).
const DEV_MARKER_UUID: u128 = 254_591_559_235_912_200_184_357_140_465_293_194_856;
/// certificatePolicies.
const CERTIFICATE_POLICIES: [u64; 4] = [2, 5, 29, 32];

/// A root CA's private key in a directory without `pki.json` means the
/// directory was made by GyroidOS's gen_dev_certs.sh: a release PKI keeps its
/// root keys offline (GyroidOS links it in as a symlink with the signing keys only).
const GYROIDOS_ROOTS: [&str; 2] = ["ssig_rootca", "gen_rootca"];

/// Largest certificate file read while looking for development keys.
const MAX_CERT_FILE: u64 = 1 << 20;

static FORCED: AtomicBool = AtomicBool::new(false);

/// Turn release mode on for this process (the CLI's `--release`).
pub fn enable() {
    FORCED.store(true, Ordering::SeqCst);
}

/// Is release mode on: `--release`, or `PKI_SIGNER_RELEASE` set to anything
/// but empty / 0 / false / no / off? An unexpected value counts as on.
pub fn enabled() -> bool {
    if FORCED.load(Ordering::SeqCst) {
        return true;
    }
    std::env::var_os(ENV).is_some_and(|v| value_on(&v.to_string_lossy()))
}

fn value_on(v: &str) -> bool {
    let v = v.trim().to_ascii_lowercase();
    !matches!(v.as_str(), "" | "0" | "false" | "no" | "off")
}

// ---------------------------------------------------------------------------
// The marker

/// The content octets (no tag, no length) of the marker OID.
fn marker_oid_content() -> Vec<u8> {
    // 2.25.N: the first subidentifier is 2 * 40 + 25, then N in base 128.
    let mut out = vec![2 * 40 + 25];
    let mut groups = vec![];
    let mut n = DEV_MARKER_UUID;
    loop {
        groups.push((n & 0x7f) as u8);
        n >>= 7;
        if n == 0 {
            break;
        }
    }
    for (i, g) in groups.iter().enumerate().rev() {
        out.push(if i == 0 { *g } else { g | 0x80 });
    }
    out
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// The non-critical certificatePolicies extension holding the marker policy
/// (no qualifiers), for `x509::issue_with`.
pub fn marker_extension() -> rcgen::CustomExtension {
    let oid = der_tlv(0x06, &marker_oid_content());
    let policy_information = der_tlv(0x30, &oid);
    let policies = der_tlv(0x30, &policy_information);
    let mut ext = rcgen::CustomExtension::from_oid_content(&CERTIFICATE_POLICIES, policies);
    ext.set_criticality(false);
    ext
}

/// Does `cert` carry the development marker?
pub fn has_marker(cert: &X509Certificate<'_>) -> bool {
    let want = marker_oid_content();
    cert.extensions().iter().any(|e| {
        matches!(e.parsed_extension(), ParsedExtension::CertificatePolicies(ps)
            if ps.iter().any(|p| p.policy_id.as_bytes() == want.as_slice()))
    })
}

// ---------------------------------------------------------------------------
// Development directories

/// Why `dir` is a development PKI directory, or None if it is not one (or is
/// not a directory at all).
pub fn development_dir(dir: &Path) -> Result<Option<String>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    if dir.join(MANIFEST).exists() {
        let m = Inventory::load(dir)?;
        return Ok(m.development.then(|| {
            format!(
                "{} says \"development\": true",
                dir.join(MANIFEST).display()
            )
        }));
    }
    for root in GYROIDOS_ROOTS {
        let key = dir.join(format!("{root}.key"));
        if key.is_file() && dir.join(format!("{root}.cert")).is_file() {
            return Ok(Some(format!(
                "{} is a GyroidOS gen_dev_certs.sh directory (no {MANIFEST}, root CA key {root}.key beside the signing keys)",
                dir.display()
            )));
        }
    }
    Ok(None)
}

/// A public key of a development directory.
struct DevKey {
    /// The subjectPublicKey bits.
    key: Vec<u8>,
    /// Its certificate (DER), if it came from one.
    cert: Option<Vec<u8>>,
    what: String,
    file: PathBuf,
    why: String,
}

/// Every public key of a development directory: its certificates (`.cert`,
/// `.crt`, `.cer`, `.pem`, `.x509`, also in `certs/`) and PEM public keys.
fn dev_keys(dir: &Path, why: &str, out: &mut Vec<DevKey>) {
    let mut files = vec![];
    for d in [dir.to_path_buf(), dir.join("certs")] {
        if let Ok(rd) = fs::read_dir(&d) {
            files.extend(rd.flatten().map(|e| e.path()));
        }
    }
    files.sort();
    let mut chained = vec![];
    for f in files {
        let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "cert" | "crt" | "cer" | "pem" | "x509") {
            continue;
        }
        let Ok(md) = fs::metadata(&f) else { continue };
        if !md.is_file() || md.len() > MAX_CERT_FILE {
            continue;
        }
        let Ok(bytes) = fs::read(&f) else { continue };
        if let Ok(certs) = x509::parse_certs(&bytes, &f) {
            // A file's own certificate first: a match names the role's file,
            // not a file that carries it in its chain.
            for (i, der) in certs.into_iter().enumerate() {
                let Ok(c) = x509::parse(&der, &f) else {
                    continue;
                };
                let k = DevKey {
                    key: c.public_key().subject_public_key.data.to_vec(),
                    what: format!("development certificate '{}'", c.subject()),
                    cert: Some(der.clone()),
                    file: f.clone(),
                    why: why.to_string(),
                };
                if i == 0 {
                    out.push(k);
                } else {
                    chained.push(k);
                }
            }
        } else if let Ok(p) = pem::parse_many(&bytes) {
            for p in p.into_iter().filter(|p| p.tag() == "PUBLIC KEY") {
                if let Ok((_, spki)) =
                    x509_parser::x509::SubjectPublicKeyInfo::from_der(p.contents())
                {
                    out.push(DevKey {
                        key: spki.subject_public_key.data.to_vec(),
                        cert: None,
                        what: "a development public key".into(),
                        file: f.clone(),
                        why: why.to_string(),
                    });
                }
            }
        }
    }
    out.extend(chained);
}

// ---------------------------------------------------------------------------
// The check

/// A signing identity about to be used, as its command named it.
pub struct Candidate<'a> {
    /// `--role R`, if the key was chosen by role.
    pub role: Option<&'a str>,
    /// The PKI directory of the role, or `--dir` / `$PKI_SIGNER_DIR` when
    /// `--key/--cert` were given (its keys must not be used under new certificates).
    pub pki_dir: Option<&'a Path>,
    /// The key: a file or a `pkcs11:` URI.
    pub key: &'a Path,
    /// The certificate: a file or a `pkcs11:` URI.
    pub cert: &'a Path,
    pub chain: Option<&'a Path>,
    /// The signer's certificate first, then every certificate of its file and
    /// of the chain file (DER), roots included.
    pub certs: &'a [Vec<u8>],
    /// How many of `certs` came from the certificate file (the rest from `chain`).
    pub in_cert_file: usize,
}

impl Candidate<'_> {
    fn label(&self) -> String {
        match self.role {
            Some(r) => format!("role '{r}'"),
            None => format!("key {}", shown(self.key)),
        }
    }

    /// The file the refusal names: the key file, else the certificate.
    fn file(&self) -> &Path {
        if pkcs11::is_uri(self.key) {
            self.cert
        } else {
            self.key
        }
    }
}

fn shown(p: &Path) -> String {
    if pkcs11::is_uri(p) {
        p.to_str()
            .and_then(|u| pkcs11::Pkcs11Uri::parse(u).ok())
            .map(|u| u.shown().to_string())
            .unwrap_or_else(|| "pkcs11:...".into())
    } else {
        p.display().to_string()
    }
}

fn refuse(path: &Path, label: &str, why: String) -> Error {
    Error::input(
        path,
        format!("release mode refuses {label}: {why}; sign with a production key"),
    )
}

/// The one release-mode check of a signing key. Does nothing outside
/// release mode; in release mode refuses a development key (see the module
/// documentation) with one input error naming the role or key file, the file
/// and why.
pub fn check_key(c: &Candidate<'_>) -> Result<()> {
    if !enabled() {
        return Ok(());
    }
    let label = c.label();
    // (a), (b): the role's PKI, or the directory the key file lies in.
    if let (Some(_), Some(dir)) = (c.role, c.pki_dir) {
        if let Some(why) = development_dir(dir)? {
            return Err(refuse(
                c.file(),
                &label,
                format!("a key of a development PKI ({why})"),
            ));
        }
    }
    let mut dirs: Vec<PathBuf> = vec![];
    for p in [Some(c.key), Some(c.cert), c.chain].into_iter().flatten() {
        if !pkcs11::is_uri(p) {
            dirs.push(fsutil::parent_dir(p));
        }
    }
    if !pkcs11::is_uri(c.key) {
        if let Some(why) = development_dir(&dirs[0])? {
            return Err(refuse(
                c.key,
                &label,
                format!("the key file lies in a development PKI ({why})"),
            ));
        }
    }
    // (c): the marker.
    let cert_file = |i: usize| -> &Path {
        match c.chain {
            Some(ch) if i >= c.in_cert_file => ch,
            _ => c.cert,
        }
    };
    let parsed: Vec<(usize, X509Certificate<'_>)> = c
        .certs
        .iter()
        .enumerate()
        .filter_map(|(i, d)| x509::parse(d, c.cert).ok().map(|p| (i, p)))
        .collect();
    for (i, p) in &parsed {
        if has_marker(p) {
            let whose = if *i == 0 {
                "its certificate".to_string()
            } else {
                "its chain certificate".to_string()
            };
            return Err(refuse(
                cert_file(*i),
                &label,
                format!(
                    "{whose} '{}' carries the development marker (certificate policy {DEV_MARKER_OID})",
                    p.subject()
                ),
            ));
        }
    }
    // (d): the public keys of the development directories around.
    if let Some(d) = c.pki_dir {
        dirs.push(d.to_path_buf());
    }
    let mut seen: Vec<PathBuf> = vec![];
    let mut dev: Vec<DevKey> = vec![];
    for d in dirs {
        let canon = fs::canonicalize(&d).unwrap_or(d.clone());
        if seen.contains(&canon) {
            continue;
        }
        seen.push(canon);
        if let Some(why) = development_dir(&d)? {
            dev_keys(&d, &why, &mut dev);
        }
    }
    for (i, p) in &parsed {
        let key = p.public_key().subject_public_key.data.as_ref();
        let whose = if *i == 0 {
            "its public key".to_string()
        } else {
            format!("the public key of its chain certificate '{}'", p.subject())
        };
        if let Some(k) = dev.iter().find(|k| k.key == key) {
            return Err(refuse(
                cert_file(*i),
                &label,
                format!(
                    "{whose} is that of {} ({}; {})",
                    k.what,
                    k.file.display(),
                    k.why
                ),
            ));
        }
        let issuer = dev.iter().find(|k| {
            k.cert.as_deref().is_some_and(|der| {
                der != c.certs[*i].as_slice()
                    && x509::parse(der, &k.file)
                        .is_ok_and(|ic| x509::verify_signed_by(p, &ic).is_ok())
            })
        });
        if let Some(k) = issuer {
            return Err(refuse(
                cert_file(*i),
                &label,
                format!(
                    "certificate '{}' was issued by {} ({}; {})",
                    p.subject(),
                    k.what,
                    k.file.display(),
                    k.why
                ),
            ));
        }
    }
    Ok(())
}

/// `pki init` in release mode: it never creates a development PKI (keys in
/// files; only `--hsm` makes production keys, `creating` says it is about to
/// generate), and refuses an existing development PKI.
pub fn check_pki_init(dir: &Path, creating: bool, hsm: bool) -> Result<()> {
    if !enabled() {
        return Ok(());
    }
    if let Some(why) = development_dir(dir)? {
        return Err(Error::input(
            dir,
            format!("release mode refuses a development PKI ({why}); provide production keys (--key/--cert, or pki init --hsm into another --dir)"),
        ));
    }
    if creating && !hsm {
        return Err(Error::input(
            dir,
            "release mode: pki init would create a development PKI (keys in files); provide production keys (--key/--cert, PKI_SIGNER_KEY[ROLE] in the layer) or generate them in a token with pki init --hsm URI",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_oid_encodes_the_uuid_arc() {
        // 2.25 -> 0x69, then the UUID in base 128 (openssl prints it as DEV_MARKER_OID).
        let content = marker_oid_content();
        assert_eq!(content[0], 0x69);
        let mut n: u128 = 0;
        for (i, b) in content[1..].iter().enumerate() {
            assert_eq!(b & 0x80 == 0, i == content.len() - 2, "continuation bits");
            n = (n << 7) | u128::from(b & 0x7f);
        }
        assert_eq!(format!("2.25.{n}"), DEV_MARKER_OID);
        assert_eq!(n, DEV_MARKER_UUID);
    }

    #[test]
    fn env_values() {
        for (v, on) in [
            ("1", true),
            ("yes", true),
            ("release", true),
            ("0", false),
            ("", false),
            (" Off ", false),
            ("false", false),
        ] {
            assert_eq!(value_on(v), on, "{v:?}");
        }
    }
}
