//! `resign`: replace development signatures with production ones, artifact by artifact.
//!
//! The build signs with development keys and records what it signed in a
//! signing plan ([`crate::plan`]). A release engineer maps the plan's roles to
//! production keys (files or `pkcs11:` URIs) in KEYS.json and runs `resign`:
//!
//! - Before touching anything it refuses production keys that are the build's
//!   own keys or the key of any development certificate (public keys are
//!   compared, not certificates), or chain to a root of a development PKI
//!   (`pki.json` says `"development": true`, or a GyroidOS gen_dev_certs.sh
//!   directory without `pki.json`), and keys that do not chain to the
//!   production trust anchors given for them.
//! - Each artifact must still be what the build signed (SHA-256 from the plan).
//! - The new file(s) are made next to their destination, verified against the
//!   production anchors, then renamed into place, so each artifact is either
//!   fully old or fully new. A re-signed artifact keeps the content the build
//!   signed (the Authenticode digest of a PE, the bytes of a GuestOS conf), and
//!   that plus a valid production signature is how a re-run recognises work
//!   already done: running again after a failure finishes the job.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::authenticode;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::guestos;
use crate::identity::{self, Identity, KeySpec};
use crate::image::{self, Trust};
use crate::pe::PeImage;
use crate::pkcs11;
use crate::pki::Pki;
use crate::plan::{self, Kind, Record};
use crate::release;
use crate::x509;

// ---------------------------------------------------------------------------
// KEYS.json

/// One production identity as KEYS.json gives it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntryFile {
    /// Absent on a build host's keys.json for `offline request`, which
    /// reads only the certificates.
    #[serde(default)]
    key: Option<String>,
    cert: String,
    #[serde(default)]
    chain: Option<String>,
    #[serde(default)]
    trust: Vec<String>,
    #[serde(default)]
    key_pass_file: Option<String>,
}

/// The PCR policy key as KEYS.json gives it (under the name `tpm2-pcr`): it
/// has a public key, not a certificate.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PcrEntryFile {
    #[serde(default)]
    key: Option<String>,
    public: String,
    #[serde(default)]
    key_pass_file: Option<String>,
}

/// The production PCR policy key: `public` (PEM) on the build host, `key`
/// (file or `pkcs11:` URI) on the signing host.
#[derive(Clone, Debug)]
pub struct PcrEntry {
    pub key: Option<PathBuf>,
    pub public: PathBuf,
    pub key_pass_file: Option<PathBuf>,
}

/// A production key: for a role of the plan, or (for records signed with
/// `--key/--cert`) for the build key with that certificate fingerprint.
#[derive(Clone, Debug)]
pub struct KeyEntry {
    pub name: String,
    pub key: Option<PathBuf>,
    pub cert: PathBuf,
    pub chain: Option<PathBuf>,
    /// Production trust anchors for this key: its own `trust` plus the top-level one.
    pub trust: Vec<PathBuf>,
    pub key_pass_file: Option<PathBuf>,
}

impl KeyEntry {
    /// Open the key (a token login for a `pkcs11:` URI) with its certificate
    /// and chain; release mode's check applies as for every identity.
    pub fn identity(&self) -> Result<Identity> {
        let key = self.key.clone().ok_or_else(|| {
            Error::Usage(format!(
                "{} has no \"key\" in KEYS.json (certificate-only entries are for `offline request`)",
                entry_label(&self.name)
            ))
        })?;
        Identity::load(&KeySpec {
            role: None,
            dir: PathBuf::new(),
            key: Some(key),
            cert: Some(self.cert.clone()),
            chain: self.chain.clone(),
            key_pass_file: self.key_pass_file.clone(),
        })
    }
}

/// KEYS.json: `{"trust": [ROOT...], "ROLE": {"key", "cert", "chain"?, "trust"?}, ...}`.
/// Relative file names are relative to KEYS.json; `pkcs11:` URIs are kept as they are.
#[derive(Clone, Debug)]
pub struct Keys {
    pub path: PathBuf,
    pub entries: BTreeMap<String, KeyEntry>,
    /// `tpm2-pcr`: the PCR policy key UKIs are signed for.
    pub pcr: Option<PcrEntry>,
}

impl Keys {
    pub fn load(path: &Path) -> Result<Keys> {
        let text = fsutil::read_input_to_string(path, fsutil::InputKind::KeyMap)?;
        let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
            .map_err(|e| {
                Error::input(
                    path,
                    format!("not a JSON object of role -> {{key, cert, trust}}: {e}"),
                )
            })?;
        let base = fsutil::parent_dir(path);
        let resolve = |s: &str| -> PathBuf {
            let p = Path::new(s);
            if pkcs11::is_uri(p) || p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let top: Vec<String> = match map.remove("trust") {
            None => vec![],
            Some(v) => serde_json::from_value(v).map_err(|e| {
                Error::input(path, format!("\"trust\" must be a list of files: {e}"))
            })?,
        };
        let mut entries = BTreeMap::new();
        let pcr = match map.remove(crate::uki::PCR_ROLE) {
            None => None,
            Some(v) => {
                let f: PcrEntryFile = serde_json::from_value(v).map_err(|e| {
                    Error::input(
                        path,
                        format!("'{}': {e} (the PCR key has \"public\": a PEM public key, no certificate)", crate::uki::PCR_ROLE),
                    )
                })?;
                Some(PcrEntry {
                    key: f.key.as_deref().map(resolve),
                    public: resolve(&f.public),
                    key_pass_file: f.key_pass_file.as_deref().map(resolve),
                })
            }
        };
        for (name, v) in map {
            let f: KeyEntryFile = serde_json::from_value(v)
                .map_err(|e| Error::input(path, format!("'{name}': {e}")))?;
            let trust = f.trust.iter().chain(&top).map(|s| resolve(s)).collect();
            entries.insert(
                name.clone(),
                KeyEntry {
                    name,
                    key: f.key.as_deref().map(resolve),
                    cert: resolve(&f.cert),
                    chain: f.chain.as_deref().map(resolve),
                    trust,
                    key_pass_file: f.key_pass_file.as_deref().map(resolve),
                },
            );
        }
        if entries.is_empty() && pcr.is_none() {
            return Err(Error::input(path, "no production keys in it"));
        }
        Ok(Keys {
            path: path.to_path_buf(),
            entries,
            pcr,
        })
    }

    /// The entry for a record: its role, else its build key's fingerprint.
    pub fn entry_for(&self, rec: &Record) -> Option<&KeyEntry> {
        rec.role
            .as_deref()
            .and_then(|r| self.entries.get(r))
            .or_else(|| self.entries.get(&rec.key_fingerprint.to_ascii_lowercase()))
    }
}

/// How a KEYS.json entry is named in messages.
fn entry_label(name: &str) -> String {
    if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("key for build certificate {name}")
    } else {
        format!("role '{name}'")
    }
}

// ---------------------------------------------------------------------------
// Development PKIs

struct DevCert {
    der: Vec<u8>,
    role: String,
    dir: PathBuf,
    /// Why the directory counts as development.
    why: &'static str,
}

fn parse_cert(der: &[u8]) -> Option<X509Certificate<'_>> {
    X509Certificate::from_der(der).ok().map(|(_, c)| c)
}

/// Every certificate of the development PKIs: the `--dev-pki` directories
/// (development by the user's word) and the PKI directories the plan's
/// records name whose `pki.json` says `"development": true`.
fn dev_certs(
    explicit: &[PathBuf],
    from_plan: &[PathBuf],
    warnings: &mut Vec<String>,
) -> Result<Vec<DevCert>> {
    let mut dirs: Vec<(PathBuf, bool)> = explicit.iter().map(|d| (d.clone(), true)).collect();
    for d in from_plan {
        if !dirs.iter().any(|(e, _)| e == d) {
            dirs.push((d.clone(), false));
        }
    }
    let mut out: Vec<DevCert> = vec![];
    for (dir, explicit) in dirs {
        if !explicit && !dir.is_dir() {
            warnings.push(format!(
                "{}: the build's PKI directory is not here; only the build's own certificates are refused",
                dir.display()
            ));
            continue;
        }
        let pki = Pki::open(&dir)?;
        // pki.json says "development": true, or a GyroidOS gen_dev_certs.sh
        // directory without pki.json.
        let development = release::development_dir(&dir)?.map(|_| match pki.manifest {
            Some(_) => "pki.json \"development\": true",
            None => "a GyroidOS gen_dev_certs.sh directory: no pki.json, root CA key beside the signing keys",
        });
        if !explicit && development.is_none() {
            continue;
        }
        let why = development.unwrap_or("given as --dev-pki");
        let mut chained = vec![];
        for r in &pki.roles {
            let certs = x509::read_certs(&r.cert)?;
            for (i, der) in certs.into_iter().enumerate() {
                if i == 0 {
                    if !out.iter().any(|c| c.der == der) {
                        out.push(DevCert {
                            der,
                            role: r.role.clone(),
                            dir: dir.clone(),
                            why,
                        });
                    }
                } else {
                    chained.push((der, r.role.clone()));
                }
            }
        }
        // Chain members of a role file that no role file starts with.
        for (der, role) in chained {
            if !out.iter().any(|c| c.der == der) {
                out.push(DevCert {
                    der,
                    role: format!("chain of {role}"),
                    dir: dir.clone(),
                    why,
                });
            }
        }
    }
    Ok(out)
}

/// The root above development certificate `i`, walking issuers inside the
/// development PKIs (the top-most one found when the root is missing).
fn dev_root(dev: &[DevCert], mut i: usize) -> usize {
    for _ in 0..8 {
        let Some(c) = parse_cert(&dev[i].der) else {
            break;
        };
        if c.subject() == c.issuer() {
            break;
        }
        let up = dev.iter().position(|p| {
            p.der != dev[i].der
                && parse_cert(&p.der).is_some_and(|pc| x509::verify_signed_by(&c, &pc).is_ok())
        });
        match up {
            Some(j) => i = j,
            None => break,
        }
    }
    i
}

/// The public key (subjectPublicKey bits) of a certificate.
fn public_key(der: &[u8]) -> Option<Vec<u8>> {
    parse_cert(der).map(|c| c.public_key().subject_public_key.data.to_vec())
}

/// How a production certificate relates to a development certificate.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DevLink {
    /// The same certificate, or one issued by the development key.
    Chains,
    /// Another certificate for the development certificate's public key
    /// (e.g. the development ssig_subca key under a production-issued certificate).
    SameKey,
}

/// The development certificate whose public key `der` certifies, or that
/// issued `der`. Public keys are compared, not certificates: a development
/// key under a new certificate is still a development key.
fn dev_match(der: &[u8], dev: &[DevCert]) -> Option<(usize, DevLink)> {
    let c = parse_cert(der)?;
    let key = c.public_key().subject_public_key.data.as_ref();
    if let Some(i) = dev.iter().position(|d| d.der == der) {
        return Some((i, DevLink::Chains));
    }
    if let Some(i) = dev
        .iter()
        .position(|d| public_key(&d.der).is_some_and(|k| k == key))
    {
        return Some((i, DevLink::SameKey));
    }
    dev.iter()
        .position(|d| parse_cert(&d.der).is_some_and(|dc| x509::verify_signed_by(&c, &dc).is_ok()))
        .map(|i| (i, DevLink::Chains))
}

/// The certificates the build signed with, found in the artifacts it signed
/// (each record names its certificate by fingerprint only): the signer
/// certificates of the PE signatures and the first certificate of a GuestOS
/// NAME.cert. Best effort: an artifact that cannot be read adds nothing.
fn build_certs(records: &[Record], plan_dir: &Path) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = vec![];
    for rec in records {
        let src = locate(rec, plan_dir);
        let found: Vec<Vec<u8>> = match rec.kind {
            Kind::Pe | Kind::Uki => PeImage::open(&src)
                .and_then(|img| img.pkcs7_signatures())
                .map(|sigs| {
                    sigs.iter()
                        .filter_map(|der| authenticode::parse(der, &src).ok()?.signer_cert)
                        .collect()
                })
                .unwrap_or_default(),
            Kind::Guestos => x509::read_certs(&guestos::GuestOsConfig::sibling(&src, "cert"))
                .map(|v| v.into_iter().take(1).collect())
                .unwrap_or_default(),
        };
        for c in found {
            if crate::codec::sha256_hex(&c).eq_ignore_ascii_case(&rec.key_fingerprint)
                && !out.contains(&c)
            {
                out.push(c);
            }
        }
    }
    out
}

fn subject_of(der: &[u8]) -> String {
    parse_cert(der)
        .map(|c| c.subject().to_string())
        .unwrap_or_else(|| "unparsable certificate".into())
}

// ---------------------------------------------------------------------------
// The run

pub struct Options {
    pub plan: PathBuf,
    pub keys: PathBuf,
    /// Write re-signed copies here instead of replacing the artifacts.
    pub out_dir: Option<PathBuf>,
    /// Check everything, write nothing.
    pub dry_run: bool,
    /// Further development PKI directories whose roots production keys must not chain to.
    pub dev_pki: Vec<PathBuf>,
    pub signing_time: Option<OffsetDateTime>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Resigned,
    /// Already re-signed by an earlier run.
    Skipped,
    Failed,
    /// `--dry-run`: everything checked, this one would be re-signed.
    WouldResign,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Resigned => "resigned",
            Status::Skipped => "skipped",
            Status::Failed => "failed",
            Status::WouldResign => "would-resign",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ArtifactReport {
    /// The file that was re-signed (for GuestOS: NAME.conf).
    pub artifact: PathBuf,
    /// Where the re-signed file is (the artifact itself unless --out-dir).
    pub output: PathBuf,
    pub kind: Kind,
    pub role: Option<String>,
    pub status: Status,
    /// SHA-256 of the signed file before / after (PE: the image; GuestOS: NAME.sig).
    pub sha256_old: Option<String>,
    pub sha256_new: Option<String>,
    /// Production signer (certificate subject).
    pub signer: Option<String>,
    /// Why it failed, or why it was skipped.
    pub reason: Option<String>,
    /// 1: it is not what the build signed, or the result did not verify; 2: bad input.
    #[serde(skip)]
    pub exit_code: i32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub plan: PathBuf,
    pub keys: PathBuf,
    pub out_dir: Option<PathBuf>,
    pub dry_run: bool,
    pub warnings: Vec<String>,
    pub artifacts: Vec<ArtifactReport>,
    pub resigned: usize,
    pub skipped: usize,
    pub failed: usize,
    pub ok: bool,
}

impl Report {
    /// 0 when every artifact is re-signed (or would be), else the worst artifact's code.
    pub fn exit_code(&self) -> i32 {
        self.artifacts
            .iter()
            .map(|a| a.exit_code)
            .max()
            .unwrap_or(0)
    }
}

/// A production key, loaded and checked.
struct Production {
    id: Identity,
    subject: String,
    anchors: Vec<Vec<u8>>,
}

/// The last record per output file: a build that re-ran a signing task
/// appended again, and only its latest output exists.
fn latest_per_output(records: Vec<Record>) -> Vec<Record> {
    let mut pos: HashMap<PathBuf, usize> = HashMap::new();
    let mut out: Vec<Record> = vec![];
    for r in records {
        match pos.get(&r.output_abs) {
            Some(&i) => out[i] = r,
            None => {
                pos.insert(r.output_abs.clone(), out.len());
                out.push(r);
            }
        }
    }
    out
}

/// Where the record's output is now: where the build wrote it, else (a
/// deploy directory copied elsewhere) next to the plan. The digest check
/// makes sure it is the same file.
fn locate(rec: &Record, plan_dir: &Path) -> PathBuf {
    let mut candidates = vec![rec.output_abs.clone()];
    if rec.output.is_relative() {
        candidates.push(plan_dir.join(&rec.output));
    }
    if let Some(name) = rec.output.file_name() {
        candidates.push(plan_dir.join(name));
    }
    candidates
        .iter()
        .find(|p| p.symlink_metadata().is_ok())
        .cloned()
        .unwrap_or_else(|| rec.output_abs.clone())
}

/// The KEYS.json entry each record needs (by role, else by the build
/// certificate), and the distinct entries in first-use order.
fn keys_needed(records: &[Record], keys: &Keys) -> Result<(Vec<String>, Vec<String>)> {
    let mut needed: Vec<String> = vec![];
    let mut entry_of: Vec<String> = vec![];
    for rec in records {
        let e = keys.entry_for(rec).ok_or_else(|| {
            Error::input(
                &keys.path,
                format!(
                    "no production key for {} (needed by {})",
                    match &rec.role {
                        Some(r) => format!("role '{r}'"),
                        None => format!("build certificate {}", rec.key_fingerprint),
                    },
                    rec.output.display()
                ),
            )
        })?;
        if !needed.contains(&e.name) {
            needed.push(e.name.clone());
        }
        entry_of.push(e.name.clone());
    }

    Ok((needed, entry_of))
}

/// The production PCR key (KEYS.json's `tpm2-pcr`), opened, when an image
/// of the plan has a PCR policy (`.pcrsig`); refused when it is missing.
fn pcr_key_needed(
    records: &[Record],
    sources: &[PathBuf],
    keys: &Keys,
) -> Result<Option<Box<dyn crate::keys::Signer>>> {
    let uki = records.iter().zip(sources).find(|(r, src)| {
        r.kind == Kind::Pe
            && PeImage::open(src)
                .is_ok_and(|i| i.info().sections.iter().any(|s| s.name == ".pcrsig"))
    });
    let Some((_, src)) = uki else {
        return Ok(None);
    };
    // Without one, each UKI's policy is kept if no development key signed it.
    let Some(e) = &keys.pcr else {
        return Ok(None);
    };
    let key = e.key.clone().ok_or_else(|| {
        Error::input(
            src,
            format!(
                "a UKI with a PCR policy: {}'s '{}' entry has no \"key\" to sign it with",
                keys.path.display(),
                crate::uki::PCR_ROLE
            ),
        )
    })?;
    let signer = crate::uki::load_pcr_key(&crate::uki::PcrKeySpec {
        role: None,
        dir: PathBuf::new(),
        key: Some(key),
        key_pass_file: e.key_pass_file.clone(),
    })?;
    let public = fsutil::read_input(&e.public, fsutil::InputKind::Certificate)?;
    let public =
        crate::uki::public_key_from_pem(&public).map_err(|m| Error::input(&e.public, m))?;
    if public.key_bits != signer.public_key() {
        return Err(Error::input(
            &e.public,
            format!("is not the public key of {}", signer.origin()),
        ));
    }
    Ok(Some(signer))
}

/// Refuse a production entry whose certificates are, or chain to,
/// development ones or the build's own, or that does not chain to its trust
/// anchors; returns the anchors.
fn check_production(
    keys: &Keys,
    name: &str,
    dev: &[DevCert],
    built_with: &[Vec<u8>],
    records: &[Record],
) -> Result<Vec<Vec<u8>>> {
    let e = &keys.entries[name];
    let label = entry_label(name);
    let mut certs = identity::read_cert_chain(&e.cert)?;
    if let Some(c) = &e.chain {
        certs.extend(x509::read_certs(c)?);
    }
    for der in &certs {
        if let Some((i, DevLink::SameKey)) = dev_match(der, dev) {
            return Err(Error::input(
                &keys.path,
                format!(
                    "{label}: production certificate '{}' has the public key of development certificate '{}' ({} in {}, {}); refusing to re-sign",
                    subject_of(der),
                    subject_of(&dev[i].der),
                    dev[i].role,
                    dev[i].dir.display(),
                    dev[i].why
                ),
            ));
        }
        if let Some((i, _)) = dev_match(der, dev) {
            let root = &dev[dev_root(dev, i)];
            return Err(Error::input(
                &keys.path,
                format!(
                    "{label}: production certificate '{}' chains to development root '{}' ({} in {}, {}); refusing to re-sign",
                    subject_of(&certs[0]),
                    subject_of(&root.der),
                    root.role,
                    root.dir.display(),
                    root.why
                ),
            ));
        }
    }
    let fp = crate::codec::sha256_hex(&certs[0]);
    let key = public_key(&certs[0]);
    if let Some(b) = built_with
        .iter()
        .find(|b| public_key(b).is_some() && public_key(b) == key)
    {
        return Err(Error::input(
            &keys.path,
            format!(
                "{label}: production certificate '{}' has the public key of the build's certificate '{}' (SHA-256 {}); refusing to re-sign",
                subject_of(&certs[0]),
                subject_of(b),
                crate::codec::sha256_hex(b)
            ),
        ));
    }
    if records
        .iter()
        .any(|r| r.key_fingerprint.eq_ignore_ascii_case(&fp))
    {
        return Err(Error::input(
            &keys.path,
            format!(
                "{label}: production certificate '{}' is the one the build signed with (SHA-256 {fp}); refusing to re-sign",
                subject_of(&certs[0])
            ),
        ));
    }
    if e.trust.is_empty() {
        return Err(Error::input(
            &keys.path,
            format!("{label}: no production trust anchors (\"trust\": [ROOT.cert]) to verify the result against"),
        ));
    }
    let mut anchors = vec![];
    for t in &e.trust {
        for der in x509::read_certs(t)? {
            if let Some((i, _)) = dev_match(&der, dev) {
                let root = &dev[dev_root(dev, i)];
                return Err(Error::input(
                    t,
                    format!(
                        "{label}: trust anchor '{}' belongs to development root '{}' ({}); refusing to re-sign",
                        subject_of(&der),
                        subject_of(&root.der),
                        root.dir.display()
                    ),
                ));
            }
            anchors.push(der);
        }
    }
    // The path rules every verifier uses (partial chains, as firmware
    // allows; validity was checked when the key was loaded).
    if let Err(why) = crate::chain::uefi_path(&certs[0], &certs[1..], &anchors) {
        return Err(Error::input(
            &keys.path,
            format!(
                "{label}: production certificate '{}' does not chain to any of its trust anchors ({}): {why}",
                subject_of(&certs[0]),
                e.trust
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(anchors)
}

/// Destinations: with --out-dir, one file name per artifact, and never an
/// artifact itself; else the artifacts themselves.
fn destinations(opts: &Options, sources: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut dests = vec![];
    if let Some(dir) = &opts.out_dir {
        let dir_abs = plan::absolute(dir)?;
        let mut names: HashMap<&std::ffi::OsStr, &Path> = HashMap::new();
        for src in sources {
            let name = src
                .file_name()
                .ok_or_else(|| Error::input(src, "not a file name"))?;
            if let Some(other) = names.insert(name, src) {
                return Err(Error::Usage(format!(
                    "--out-dir: {} and {} would both be written to {}",
                    other.display(),
                    src.display(),
                    dir.join(name).display()
                )));
            }
            let same_dir = match (
                fs::canonicalize(&dir_abs),
                fs::canonicalize(fsutil::parent_dir(src)),
            ) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            };
            if same_dir {
                return Err(Error::Usage(format!(
                    "--out-dir {} holds {} itself; leave --out-dir out to re-sign in place",
                    dir.display(),
                    src.display()
                )));
            }
            dests.push(dir_abs.join(name));
        }
    } else {
        dests = sources.to_vec();
    }

    Ok(dests)
}

/// Re-sign every artifact of the plan. Errors returned here come before
/// anything was written (bad plan or keys, a development key); per-artifact
/// problems are in the report.
pub fn run(opts: &Options) -> Result<Report> {
    let records = plan::read(&opts.plan)?;
    if records.is_empty() {
        return Err(Error::input(&opts.plan, "no records: nothing to re-sign"));
    }
    let records = latest_per_output(records);
    let keys = Keys::load(&opts.keys)?;

    // Which production key each record needs; all must be there before we start.
    let (needed, entry_of) = keys_needed(&records, &keys)?;

    // Refuse development keys from their certificates alone, before any
    // key (or token login) is touched.
    let mut warnings = vec![];
    let mut plan_pkis: Vec<PathBuf> = vec![];
    for r in &records {
        if let Some(p) = &r.pki {
            if !plan_pkis.contains(p) {
                plan_pkis.push(p.clone());
            }
        }
    }
    let dev = dev_certs(&opts.dev_pki, &plan_pkis, &mut warnings)?;
    let mut dev_dirs: Vec<PathBuf> = vec![];
    for c in &dev {
        if !dev_dirs.contains(&c.dir) {
            dev_dirs.push(c.dir.clone());
        }
    }
    // The build's own keys, by public key: also those signed with --key/--cert.
    let built_with = build_certs(&records, &fsutil::parent_dir(&plan::absolute(&opts.plan)?));
    let mut anchors_of: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for name in &needed {
        let anchors = check_production(&keys, name, &dev, &built_with, &records)?;
        anchors_of.insert(name.clone(), anchors);
    }

    let plan_dir = fsutil::parent_dir(&plan::absolute(&opts.plan)?);
    let sources: Vec<PathBuf> = records.iter().map(|r| locate(r, &plan_dir)).collect();
    let dests = destinations(opts, &sources)?;

    // UKIs carry the build's PCR key and policy: they need the production PCR key.
    let pcr = pcr_key_needed(&records, &sources, &keys)?;

    // Load the keys (token logins happen here), once each.
    let mut prod: BTreeMap<String, Production> = BTreeMap::new();
    for name in &needed {
        let e = &keys.entries[name];
        let id = e.identity()?;
        let subject = subject_of(&id.cert);
        prod.insert(
            name.clone(),
            Production {
                id,
                subject,
                anchors: anchors_of.remove(name).unwrap_or_default(),
            },
        );
    }

    if let (Some(dir), false) = (&opts.out_dir, opts.dry_run) {
        fs::create_dir_all(dir).at(dir)?;
    }

    let artifacts: Vec<ArtifactReport> = records
        .iter()
        .enumerate()
        .map(|(i, rec)| {
            let job = Job {
                rec,
                src: &sources[i],
                dest: &dests[i],
                p: &prod[&entry_of[i]],
                dev_dirs: &dev_dirs,
                out_dir: opts.out_dir.is_some(),
                dry_run: opts.dry_run,
                signing_time: opts.signing_time,
                pcr: pcr.as_deref(),
            };
            job.report()
        })
        .collect();
    let count = |s: Status| artifacts.iter().filter(|a| a.status == s).count();
    let failed = count(Status::Failed);
    Ok(Report {
        plan: opts.plan.clone(),
        keys: opts.keys.clone(),
        out_dir: opts.out_dir.clone(),
        dry_run: opts.dry_run,
        warnings,
        resigned: count(Status::Resigned) + count(Status::WouldResign),
        skipped: count(Status::Skipped),
        failed,
        ok: failed == 0,
        artifacts,
    })
}

impl Job<'_> {
    /// Re-sign this artifact; its problems go into the report, not up.
    fn report(&self) -> ArtifactReport {
        let res = match self.rec.kind {
            Kind::Pe => self.pe(),
            Kind::Uki => self.pe(),
            Kind::Guestos => self.guestos(),
        };
        let mut a = ArtifactReport {
            artifact: self.src.to_path_buf(),
            output: self.dest.to_path_buf(),
            kind: self.rec.kind,
            role: self.rec.role.clone(),
            status: Status::Failed,
            sha256_old: None,
            sha256_new: None,
            signer: Some(self.p.subject.clone()),
            reason: None,
            exit_code: 0,
        };
        match res {
            Ok(o) => {
                a.status = o.status;
                a.sha256_old = o.old;
                a.sha256_new = o.new;
                a.reason = o.note;
            }
            Err(e) => {
                a.exit_code = e.exit_code();
                a.reason = Some(
                    e.to_string()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" "),
                );
            }
        }
        a
    }
}

// ---------------------------------------------------------------------------
// One artifact

struct Job<'a> {
    rec: &'a Record,
    src: &'a Path,
    dest: &'a Path,
    p: &'a Production,
    /// The development PKIs, whose PCR keys a UKI's policy must not be signed with.
    dev_dirs: &'a [PathBuf],
    out_dir: bool,
    dry_run: bool,
    signing_time: Option<OffsetDateTime>,
    /// The production PCR key, when a UKI of the plan has a PCR policy.
    pcr: Option<&'a dyn crate::keys::Signer>,
}

struct Outcome {
    status: Status,
    old: Option<String>,
    new: Option<String>,
    note: Option<String>,
}

fn changed(path: &Path, now: &str, recorded: &str) -> Error {
    Error::Verify(format!(
        "{}: changed since the build signed it (sha256 {now}, the plan recorded {recorded})",
        path.display()
    ))
}

impl Job<'_> {
    fn already(&self, old: Option<String>) -> Outcome {
        Outcome {
            status: Status::Skipped,
            old: None,
            new: old,
            note: Some("already re-signed".into()),
        }
    }

    fn pe(&self) -> Result<Outcome> {
        if !self.dry_run {
            fsutil::remove_stale_temps(self.dest);
        }
        let now = plan::sha256_file(self.src)?;
        let fresh = now.eq_ignore_ascii_case(&self.rec.sha256_after);
        if (self.out_dir || !fresh) && self.dest.exists() && self.pe_done(self.dest) {
            return Ok(self.already(Some(plan::sha256_file(self.dest)?)));
        }
        if !fresh {
            return Err(changed(self.src, &now, &self.rec.sha256_after));
        }

        let img = PeImage::open(self.src)?;
        if img.info().sections.iter().any(|s| s.name == ".pcrsig") {
            if self.pcr.is_some() {
                return self.resign_uki(&img, now);
            }
            // Without the production PCR key the policy stays: only if no
            // development PCR key signed it.
            let pkfp = crate::uki::pcrpkey_fingerprint(self.src)?;
            crate::uki::check_resignable(self.src, &pkfp, self.dev_dirs)?;
        }
        let digest = img.digest()?;
        let mut kept = vec![];
        let mut dropped = 0;
        for der in img.pkcs7_signatures()? {
            if self.by_build_key(&der) {
                dropped += 1;
            } else {
                // Someone else's signature (e.g. a distribution's on its kernel) stays.
                kept.push(der);
            }
        }
        if dropped == 0 {
            return Err(Error::input(
                self.src,
                format!(
                    "no signature by the build's certificate {} to replace",
                    self.rec.key_fingerprint
                ),
            ));
        }
        let p7 = self.sign_digest(&digest.sha256)?;
        if self.dry_run {
            let sig = authenticode::parse(&p7, self.src)?;
            authenticode::verify_signature(&sig, &digest.sha256).map_err(|e| {
                Error::Verify(format!("{}: new signature: {e}", self.src.display()))
            })?;
            if authenticode::chains_to(&sig, &self.p.anchors).is_none() {
                return Err(Error::Verify(format!(
                    "{}: new signature does not chain to the production trust anchors",
                    self.src.display()
                )));
            }
            return Ok(Outcome {
                status: Status::WouldResign,
                old: Some(now),
                new: None,
                note: None,
            });
        }
        let mut sigs = kept;
        sigs.push(p7);
        let staging = fsutil::temp_path(self.dest, fsutil::tag::RESIGN)?;
        let res = img
            .write_signed(&digest, &sigs, &staging)
            .and_then(|()| {
                self.check_pe(&staging)
                    .map_err(|e| e.not_verified(self.src, "the re-signed image"))
            })
            .and_then(|()| plan::sha256_file(&staging))
            .and_then(|new| {
                fs::rename(&staging, self.dest).at(self.dest)?;
                fsutil::sync_dir(&fsutil::parent_dir(self.dest))?;
                Ok(new)
            });
        match res {
            Ok(new) => Ok(Outcome {
                status: Status::Resigned,
                old: Some(now),
                new: Some(new),
                note: None,
            }),
            Err(e) => {
                let _ = fs::remove_file(&staging);
                Err(e)
            }
        }
    }

    /// A UKI: its PCR policy signed again for the production PCR key (new
    /// `.pcrpkey`, new `.pcrsig`), then the image. Every signature goes: the
    /// image changes under them.
    fn resign_uki(&self, img: &PeImage, now: String) -> Result<Outcome> {
        let pcr = self
            .pcr
            .ok_or_else(|| Error::Internal("UKI without the PCR key".into()))?;
        let sigs = img.pkcs7_signatures()?;
        let others = sigs.iter().filter(|d| !self.by_build_key(d)).count();
        if sigs.len() == others {
            return Err(Error::input(
                self.src,
                format!(
                    "no signature by the build's certificate {} to replace",
                    self.rec.key_fingerprint
                ),
            ));
        }
        if others > 0 {
            return Err(Error::input(
                self.src,
                format!("also signed by {others} other key(s); its PCR policy is signed again, which changes the image, so their signatures cannot stay"),
            ));
        }
        let rp = crate::uki::repolicy::plan(self.src, &crate::x509::spki_der(pcr))?;
        let pcrsig = rp.sign(pcr, self.src)?;
        if self.dry_run {
            return Ok(Outcome {
                status: Status::WouldResign,
                old: Some(now),
                new: None,
                note: Some("PCR policy signed again for the production PCR key".into()),
            });
        }
        let mut staged = rp.stage(self.src, self.dest, &pcrsig)?;
        let img = PeImage::open(staged.tmp())?;
        let digest = img.digest()?;
        let p7 = self.sign_digest(&digest.sha256)?;
        img.write_signed_in_place(&digest, &[p7])?;
        self.uki_done(staged.tmp(), pcr)
            .map_err(|e| e.not_verified(self.src, "the re-signed UKI"))?;
        let new = plan::sha256_file(staged.tmp())?;
        staged.sync()?;
        fsutil::publish(vec![staged])?;
        Ok(Outcome {
            status: Status::Resigned,
            old: Some(now),
            new: Some(new),
            note: Some("PCR policy signed again for the production PCR key".into()),
        })
    }

    /// `path` is signed by the production key, trusted, and its `.pcrpkey`
    /// is the production PCR key with every policy signed by it.
    fn uki_done(&self, path: &Path, pcr: &dyn crate::keys::Signer) -> Result<()> {
        self.check_pe(path)?;
        crate::uki::check_pcr_policy(path, pcr.public_key())
    }

    /// The production Authenticode signature over `digest`.
    fn sign_digest(&self, digest: &[u8; 32]) -> Result<Vec<u8>> {
        authenticode::sign_digest(
            digest,
            &authenticode::SignOptions {
                signer: self.p.id.signer.as_ref(),
                cert: &self.p.id.cert,
                chain: &self.p.id.chain,
                signing_time: self.signing_time,
            },
        )
    }

    fn by_build_key(&self, p7: &[u8]) -> bool {
        authenticode::parse(p7, self.src)
            .ok()
            .and_then(|s| s.signer_cert)
            .is_some_and(|c| {
                crate::codec::sha256_hex(&c).eq_ignore_ascii_case(&self.rec.key_fingerprint)
            })
    }

    /// Is `path` this artifact, re-signed: the image the build signed, a
    /// valid production signature trusted by the anchors, no build signature?
    fn pe_done(&self, path: &Path) -> bool {
        if let Some(pcr) = self.pcr {
            let uki = PeImage::open(path)
                .is_ok_and(|i| i.info().sections.iter().any(|s| s.name == ".pcrsig"));
            if uki {
                return self.uki_done(path, pcr).is_ok();
            }
        }
        let Some(want) = &self.rec.authenticode_sha256 else {
            return false;
        };
        let same = PeImage::open(path)
            .and_then(|i| i.digest())
            .is_ok_and(|d| d.hex().eq_ignore_ascii_case(want));
        same && self.check_pe(path).is_ok()
    }

    fn check_pe(&self, path: &Path) -> Result<()> {
        let trust = Trust {
            certs: self
                .p
                .anchors
                .iter()
                .map(|a| ("production trust anchor".to_string(), a.clone()))
                .collect(),
            ..Trust::default()
        };
        let report = image::verify(path, &trust)?;
        let entries = PeImage::open(path)?.pkcs7_signatures()?;
        let mut ours = false;
        for (i, der) in entries.iter().enumerate() {
            if self.by_build_key(der) {
                return Err(Error::Verify(format!("signature {i} is still the build's")));
            }
            let signer = authenticode::parse(der, path)
                .ok()
                .and_then(|s| s.signer_cert);
            if signer.as_deref() == Some(self.p.id.cert.as_slice()) {
                let r = &report.signatures[i];
                if r.valid && r.trusted_by.is_some() && !r.revoked {
                    ours = true;
                } else {
                    return Err(Error::Verify(r.problems.join("; ")));
                }
            }
        }
        if !ours || !report.ok {
            return Err(Error::Verify(format!(
                "no valid signature by '{}' trusted by the production anchors",
                self.p.subject
            )));
        }
        Ok(())
    }

    fn guestos(&self) -> Result<Outcome> {
        if !self.dry_run {
            fsutil::remove_stale_temps(self.dest);
        }
        let now = plan::sha256_file(self.src)?;
        let fresh = now.eq_ignore_ascii_case(&self.rec.sha256_after);
        let sig_of = |conf: &Path| {
            let s = guestos::GuestOsConfig::sibling(conf, "sig");
            s.exists().then(|| plan::sha256_file(&s)).transpose()
        };
        // The conf is what was signed; re-signing leaves it as it is, so a
        // destination with the same conf and a production signature is done.
        let dest_same = self.dest.exists()
            && plan::sha256_file(self.dest)?.eq_ignore_ascii_case(&self.rec.sha256_after);
        if dest_same && self.check_guestos(self.dest).is_ok() {
            return Ok(self.already(sig_of(self.dest)?));
        }
        if !fresh {
            return Err(changed(self.src, &now, &self.rec.sha256_after));
        }
        let old = sig_of(self.src)?;
        let cms = guestos::GuestOsConfig::sibling(self.src, "p7s").exists();
        if self.dry_run {
            return Ok(Outcome {
                status: Status::WouldResign,
                old,
                new: None,
                note: None,
            });
        }
        let staging = fsutil::temp_path(self.dest, fsutil::tag::RESIGN_DIR)?;
        let _ = fs::remove_dir_all(&staging);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .at(&staging)?;
        let res = self.guestos_in(&staging, cms);
        let _ = fs::remove_dir_all(&staging);
        let new = res?;
        Ok(Outcome {
            status: Status::Resigned,
            old,
            new: Some(new),
            note: None,
        })
    }

    /// Sign a copy of the conf in `staging`, verify it, and move the new files
    /// into place; returns the SHA-256 of the new NAME.sig.
    fn guestos_in(&self, staging: &Path, cms: bool) -> Result<String> {
        let name = self
            .dest
            .file_name()
            .ok_or_else(|| Error::input(self.dest, "not a file name"))?;
        let conf = staging.join(name);
        let bytes = fsutil::read_input(self.src, fsutil::InputKind::GuestosConf)?;
        let mode = fs::metadata(self.src).at(self.src)?.permissions().mode() & 0o7777;
        fsutil::write_new(&conf, &bytes, mode)?;
        if !plan::sha256_file(&conf)?.eq_ignore_ascii_case(&self.rec.sha256_after) {
            return Err(changed(
                self.src,
                "(changed while reading)",
                &self.rec.sha256_after,
            ));
        }
        guestos::sign(
            std::slice::from_ref(&conf),
            &self.p.id,
            &guestos::SignOptions {
                images: None,
                cms,
                signing_time: self.signing_time,
                allow_missing_images: false,
                verity: false,
            },
        )?;
        self.check_guestos(&conf)
            .map_err(|e| e.not_verified(self.src, "the re-signed manifest"))?;
        let new = plan::sha256_file(&guestos::GuestOsConfig::sibling(&conf, "sig"))?;
        // The certificate before the signature: a crash in between leaves a
        // pair that fails verification, which the next run redoes.
        let mut moves = vec![];
        for ext in ["cert", "sig", "p7s"] {
            let s = guestos::GuestOsConfig::sibling(&conf, ext);
            if s.exists() {
                moves.push((s, guestos::GuestOsConfig::sibling(self.dest, ext)));
            }
        }
        if self.out_dir {
            moves.push((conf.clone(), self.dest.to_path_buf()));
        }
        commit(&moves)?;
        Ok(new)
    }

    fn check_guestos(&self, conf: &Path) -> Result<()> {
        let r = guestos::verify(
            conf,
            &guestos::VerifyOptions {
                trust: &self.p.anchors,
                images: None,
                check_time: true,
            },
        )?;
        if !r.ok {
            return Err(Error::Verify(r.problems.join("; ")));
        }
        let first = x509::read_certs(&guestos::GuestOsConfig::sibling(conf, "cert"))?;
        if first.first() != Some(&self.p.id.cert) {
            return Err(Error::Verify(format!(
                "signed by '{}', not the production key",
                r.signer
            )));
        }
        Ok(())
    }
}

/// Rename each staged file over its destination. If one rename fails, the
/// ones already done are put back, so the artifact stays all old.
fn commit(moves: &[(PathBuf, PathBuf)]) -> Result<()> {
    let old: Vec<Option<(Vec<u8>, u32)>> = moves
        .iter()
        .map(|(_, d)| {
            let bytes = fs::read(d).ok()?;
            let mode = fs::metadata(d).ok()?.permissions().mode() & 0o7777;
            Some((bytes, mode))
        })
        .collect();
    for (i, (s, d)) in moves.iter().enumerate() {
        if let Err(e) = fs::rename(s, d).at(d) {
            for ((_, done), prev) in moves[..i].iter().zip(&old) {
                let _ = match prev {
                    Some((b, m)) => fsutil::write_atomic(done, b, *m),
                    None => fs::remove_file(done).at(done),
                };
            }
            return Err(e);
        }
    }
    if let Some((_, d)) = moves.first() {
        fsutil::sync_dir(&fsutil::parent_dir(d))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_only_entry_loads_but_cannot_sign() {
        let d = tempfile::tempdir().unwrap();
        let keys = d.path().join("keys.json");
        fs::write(
            &keys,
            r#"{"trust": ["root.pem"], "ssig_subca": {"cert": "sub.pem"}}"#,
        )
        .unwrap();
        let k = Keys::load(&keys).unwrap();
        let e = &k.entries["ssig_subca"];
        assert_eq!(e.key, None);
        assert_eq!(e.cert, d.path().join("sub.pem"));
        let err = e.identity().err().unwrap();
        assert_eq!(err.kind(), crate::ErrorKind::Usage);
        assert!(
            err.to_string().contains("role 'ssig_subca' has no \"key\""),
            "{err}"
        );
    }
}
