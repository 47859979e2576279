//! Offline signing: the build host writes a request, an air-gapped host with
//! the HSM signs it, and the build host completes the artifacts.
//!
//! ```text
//! build host:    offline request ARTIFACT... --keys keys.json -o request.json
//! signing host:  offline sign request.json --keys keys.json -o response.json
//! build host:    offline complete response.json --request request.json
//! ```
//!
//! The request holds, per artifact, the exact bytes to be signed (`tbs`) and
//! the signature scheme, plus what is needed to derive those bytes again: the
//! Authenticode digest and signing time of a PE image, the variable, time and
//! signature lists of an `.auth` update, the GuestOS conf, the CSR. It never
//! holds an artifact image.
//!
//! The to-be-signed bytes are not built here: each format module builds them
//! as it does when it signs with a key at hand. This module runs that code
//! with a [`Signer`] that records what it is asked to sign (request, and
//! again on the signing host to check the request), and at completion with
//! one that hands back the signature made offline, but only for exactly the
//! bytes the format module derives from the artifact as it is now. A
//! signature for other bytes (a tampered artifact, a changed digest, swapped
//! items) is therefore refused before anything is written.
//!
//! The signing host refuses anything it cannot re-derive: unknown kinds and
//! roles, a role whose certificate is not the one in its KEYS.json, bytes
//! that are not what the item's own fields give, hex that is not strict
//! lowercase, sizes beyond each field's cap. Its keys are loaded through
//! [`Identity`], so release mode's refusal of development keys applies, and
//! each key is opened once (PKCS#11: one login).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509CertificationRequest};

use crate::authenticode;
use crate::chain;
use crate::csr;
use crate::efivar::{self, EfiTime, SecureVar};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, InputKind, Staged};
use crate::guestos;
use crate::identity::{self, Identity};
use crate::image::{self, Existing, Trust};
use crate::keys::{KeyType, Signer};
use crate::par;
use crate::pe::PeImage;
use crate::pkcs11;
use crate::plan;
use crate::resign::Keys;
use crate::sigalg::{self, Scheme};
use crate::uki::{self, pcr, repolicy};
use crate::x509;

/// The `format` of a request file.
pub const REQUEST_FORMAT: &str = "pki-signer offline request";
/// The `format` of a response file.
pub const RESPONSE_FORMAT: &str = "pki-signer offline response";
/// The only version written and read.
pub const VERSION: u32 = 1;

/// At most this many items in one request.
pub const MAX_ITEMS: usize = 100_000;
const MAX_ROLES: usize = 64;
/// Certificates per chain or trust list.
const MAX_CERTS: usize = 16;
const MAX_CERT: usize = 64 << 10;
const MAX_NAME: usize = 4096;
/// Authenticode signed attributes are about 100 bytes.
const MAX_TBS_PE: usize = 4 << 10;
const MAX_TBS_EFIVAR: usize = (16 << 20) + 256;
const MAX_TBS_TEXT: usize = 1 << 20;
/// RSA-16384 signatures are 2 KiB; ECDSA ones far less.
const MAX_SIGNATURE: usize = 4 << 10;

/// What an item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An Authenticode signature of a PE image (kernel, UKI, EFI application).
    Pe,
    /// A time-based authenticated variable update (`.auth`) from a signature list.
    Efivar,
    /// A GuestOS manifest: NAME.sig and NAME.cert next to NAME.conf.
    Guestos,
    /// A device certificate for a CSR.
    Csr,
    /// A UKI whose PCR policy is signed again for the production PCR key,
    /// then the whole image (Authenticode), in one visit (see uki::repolicy).
    Uki,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pe => "pe",
            Kind::Efivar => "efivar",
            Kind::Guestos => "guestos",
            Kind::Csr => "csr",
            Kind::Uki => "uki",
        }
    }

    /// The role that signs this kind unless told otherwise.
    pub fn default_role(self, var: Option<SecureVar>) -> &'static str {
        match (self, var) {
            (Kind::Pe | Kind::Uki, _) => "ssig_subca",
            (Kind::Guestos, _) => "ssig_cml",
            (Kind::Csr, _) => "device_subca",
            (Kind::Efivar, Some(SecureVar::Pk | SecureVar::Kek)) => "PK",
            (Kind::Efivar, _) => "KEK",
        }
    }
}

// ---------------------------------------------------------------------------
// The files

/// `request.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub format: String,
    pub version: u32,
    /// The certificates of each role the items use.
    pub roles: BTreeMap<String, RoleCerts>,
    /// The PCR policy keys `uki` items are signed for (they have no certificate).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pcr_keys: BTreeMap<String, PcrKeyInfo>,
    pub items: Vec<Item>,
}

/// A PCR policy key as the build host knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcrKeyInfo {
    /// SubjectPublicKeyInfo DER, in hex.
    pub public_key: String,
}

/// A role as the build host knows it: the production certificate the
/// signature must be made with, its chain, and the anchors it must chain to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleCerts {
    /// SHA-256 of `cert` (DER), in hex: the signing host's key for the role
    /// must have exactly this certificate.
    pub cert_sha256: String,
    /// The signer certificate, DER in hex.
    pub cert: String,
    /// Further certificates carried with the signature, DER in hex.
    #[serde(default)]
    pub chain: Vec<String>,
    /// Trust anchors the result is verified against, DER in hex.
    pub trust: Vec<String>,
}

/// One thing to sign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// The item's position in `items`, from 0.
    pub id: u64,
    pub kind: Kind,
    pub role: String,
    /// The artifact, as given to `offline request`.
    pub artifact: String,
    /// The same, absolute.
    pub artifact_abs: String,
    /// SHA-256 (hex) of the artifact file when the request was made.
    pub artifact_sha256: String,
    /// `rsa-pkcs1-sha256`, `ecdsa-sha384`...; absent for `csr` (the
    /// signing host issues the certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// The exact bytes to sign, in hex (`csr`: the CSR, DER).
    pub tbs: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pe: Option<PeParams>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efivar: Option<EfivarParams>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uki: Option<UkiParams>,
}

/// What the Authenticode signed attributes of a PE item are made from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeParams {
    /// The Authenticode SHA-256 of the image as signing pads it (hex).
    pub authenticode_sha256: String,
    /// signingTime (RFC 3339, whole seconds), or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_time: Option<String>,
    /// `refuse`, `append` or `replace`: what to do with signatures the image has.
    pub existing: String,
    /// Signatures by these certificates (SHA-256, hex) are dropped first:
    /// the build's development signatures, for items from a signing plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop_signers: Vec<String>,
}

/// What an `.auth` update is made from; the signature lists are the tail of `tbs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EfivarParams {
    /// `PK`, `KEK`, `db` or `dbx`.
    pub var: String,
    pub append: bool,
    /// EFI_TIME, `YYYY-MM-DD HH:MM:SS`.
    pub time: String,
}

/// What a `uki` item's policies and image signature are made from. `tbs` is
/// empty: the signed attributes cover the Authenticode digest, which is only
/// known once the policies are signed (`prefix` finished over the new
/// `.pcrsig` and `zeros_after` zeros).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UkiParams {
    /// The PCR key (a name in `pcr_keys`).
    pub pcr_role: String,
    pub banks: Vec<String>,
    /// Boot phase paths, one policy per bank and phase, in `.pcrsig` order.
    pub phases: Vec<String>,
    /// The measured sections in measuring order, `.pcrpkey` already the new key.
    pub sections: Vec<UkiSection>,
    /// The length the new `.pcrsig` has.
    pub pcrsig_len: u64,
    pub prefix: HashPrefix,
    pub zeros_after: u64,
    /// signingTime (RFC 3339, whole seconds), or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_time: Option<String>,
    /// `refuse` or `replace`: signatures other than `drop_signers`' cannot
    /// stay, since the image changes.
    pub existing: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop_signers: Vec<String>,
}

/// A measured section's digest per bank (hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UkiSection {
    pub name: String,
    pub digests: BTreeMap<String, String>,
}

/// A SHA-256 stopped part-way ([`crate::codec::Sha256Midstate`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashPrefix {
    /// The chaining value (hex, 32 bytes).
    pub state: String,
    /// Bytes hashed into it: whole 64-byte blocks.
    pub compressed: u64,
    /// The bytes after those (hex, fewer than 64).
    pub pending: String,
}

/// `response.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub format: String,
    pub version: u32,
    /// SHA-256 of the request as serialised here (see [`request_sha256`]).
    pub request_sha256: String,
    pub request: Request,
    /// Which key signed for each role.
    pub signers: BTreeMap<String, SignerNote>,
    /// One per item, in item order.
    pub results: Vec<Signed>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerNote {
    pub cert_sha256: String,
    /// Where the key was (file or `pkcs11:` URI without its query).
    pub key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    pub id: u64,
    /// The signature over the item's `tbs`, in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// `csr`: the issued certificate, DER in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// `uki`: the policy signatures, in `.pcrsig` order (banks, then phases), in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr_signatures: Option<Vec<String>>,
}

/// The SHA-256 (hex) that binds a response to its request: over the
/// request's compact JSON as this module writes it (field order fixed, roles
/// sorted), so it does not depend on whitespace.
pub fn request_sha256(r: &Request) -> String {
    let bytes = serde_json::to_vec(r).unwrap_or_default();
    crate::codec::sha256_hex(&bytes)
}

// ---------------------------------------------------------------------------
// Strict decoding

fn bad(origin: &Path, at: &str, msg: impl std::fmt::Display) -> Error {
    Error::input(origin, format!("{at}: {msg}"))
}

/// Lowercase hex of at most `max` decoded bytes; anything else is refused.
fn unhex(s: &str, max: usize, origin: &Path, at: &str) -> Result<Vec<u8>> {
    if s.len() > max.saturating_mul(2) {
        return Err(bad(
            origin,
            at,
            format!("{} bytes; at most {max} are allowed here", s.len() / 2),
        ));
    }
    if s.len() % 2 != 0 {
        return Err(bad(origin, at, "odd number of hex digits"));
    }
    let val = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len() / 2);
    for (i, pair) in b.chunks_exact(2).enumerate() {
        match (val(pair[0]), val(pair[1])) {
            (Some(h), Some(l)) => out.push(h << 4 | l),
            _ => {
                return Err(bad(
                    origin,
                    at,
                    format!("not lowercase hex at offset {}", 2 * i),
                ))
            }
        }
    }
    Ok(out)
}

fn sha256_field(s: &str, origin: &Path, at: &str) -> Result<[u8; 32]> {
    if s.len() != 64 {
        return Err(bad(origin, at, "not a SHA-256 (64 lowercase hex digits)"));
    }
    let v = unhex(s, 32, origin, at)?;
    let mut out = [0u8; 32];
    out.copy_from_slice(&v);
    Ok(out)
}

fn name_field(s: &str, origin: &Path, at: &str) -> Result<()> {
    if s.is_empty() || s.len() > MAX_NAME || s.chars().any(|c| c.is_control()) {
        return Err(bad(
            origin,
            at,
            "must be 1 to 4096 characters without control characters",
        ));
    }
    Ok(())
}

fn role_name_ok(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 64
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

fn existing_name(e: Existing) -> &'static str {
    match e {
        Existing::Refuse => "refuse",
        Existing::Append => "append",
        Existing::Replace => "replace",
    }
}

fn parse_existing(s: &str) -> Option<Existing> {
    match s {
        "refuse" => Some(Existing::Refuse),
        "append" => Some(Existing::Append),
        "replace" => Some(Existing::Replace),
        _ => None,
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    use time::format_description::well_known::Rfc3339;
    t.format(&Rfc3339).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Checked forms

/// A role of a request, decoded and checked.
#[derive(Clone, Debug)]
pub struct Role {
    pub name: String,
    pub cert: Vec<u8>,
    pub chain: Vec<Vec<u8>>,
    pub trust: Vec<Vec<u8>>,
    pub cert_sha256: String,
    pub subject: String,
    pub key_type: KeyType,
    /// The certificate's key is typed id-RSASSA-PSS.
    pub rsa_pss: bool,
    /// subjectPublicKey bits of `cert`.
    pub public_key: Vec<u8>,
}

/// Kind-specific fields, decoded.
#[derive(Clone, Debug)]
pub enum Params {
    Pe {
        digest: [u8; 32],
        signing_time: Option<OffsetDateTime>,
        existing: Existing,
        drop_signers: Vec<String>,
    },
    Efivar {
        var: SecureVar,
        append: bool,
        time: EfiTime,
        /// The signature lists (the tail of `tbs`).
        data: Vec<u8>,
    },
    Guestos,
    Csr,
    Uki(Box<UkiChecked>),
}

/// A `uki` item's fields, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UkiChecked {
    pub pcr_role: String,
    pub banks: Vec<pcr::Bank>,
    pub phases: Vec<String>,
    pub digests: pcr::SectionDigests,
    pub pcrsig_len: u64,
    pub prefix: crate::codec::Sha256Midstate,
    pub zeros_after: u64,
    pub signing_time: Option<OffsetDateTime>,
    pub existing: Existing,
    pub drop_signers: Vec<String>,
}

/// An item of a request, decoded and checked against its own fields.
#[derive(Clone, Debug)]
pub struct CheckedItem {
    pub kind: Kind,
    pub role: String,
    pub artifact: PathBuf,
    pub artifact_abs: PathBuf,
    pub artifact_sha256: String,
    pub scheme: Option<Scheme>,
    pub tbs: Vec<u8>,
    pub params: Params,
}

/// A whole request, checked: every field decoded, every `tbs` re-derived.
#[derive(Clone, Debug)]
pub struct CheckedRequest {
    pub request: Request,
    pub sha256: String,
    pub roles: BTreeMap<String, Role>,
    pub pcr_keys: BTreeMap<String, PcrKey>,
    pub items: Vec<CheckedItem>,
}

/// A PCR policy key of a request, decoded.
#[derive(Clone, Debug)]
pub struct PcrKey {
    pub name: String,
    pub public: uki::PublicKey,
    pub key_type: KeyType,
}

fn check_role(name: &str, rc: &RoleCerts, origin: &Path) -> Result<Role> {
    let at = format!("role '{name}'");
    let cert = unhex(&rc.cert, MAX_CERT, origin, &format!("{at}: cert"))?;
    let parsed = x509::parse(&cert, origin).map_err(|e| bad(origin, &at, format!("cert: {e}")))?;
    let fp = crate::codec::sha256_hex(&cert);
    if rc.cert_sha256 != fp {
        return Err(bad(
            origin,
            &at,
            format!(
                "cert_sha256 {} is not the SHA-256 of its cert ({fp})",
                rc.cert_sha256
            ),
        ));
    }
    let key = x509::key_info(&parsed);
    let key_type = KeyType::of(&key)
        .ok_or_else(|| bad(origin, &at, format!("unsupported key {}", key.describe())))?;
    let rsa_pss = key.kind == Some(sigalg::KeyKind::RsaPss);
    let public_key = parsed.public_key().subject_public_key.data.to_vec();
    let subject = parsed.subject().to_string();
    let list = |v: &[String], what: &str, min: usize| -> Result<Vec<Vec<u8>>> {
        if v.len() < min || v.len() > MAX_CERTS {
            return Err(bad(
                origin,
                &at,
                format!(
                    "{what}: {} certificates; {min} to {MAX_CERTS} are allowed",
                    v.len()
                ),
            ));
        }
        let mut out = vec![];
        for (i, h) in v.iter().enumerate() {
            let w = format!("{at}: {what}[{i}]");
            let der = unhex(h, MAX_CERT, origin, &w)?;
            x509::parse(&der, origin).map_err(|e| bad(origin, &w, e))?;
            out.push(der);
        }
        Ok(out)
    };
    Ok(Role {
        name: name.to_string(),
        chain: list(&rc.chain, "chain", 0)?,
        trust: list(&rc.trust, "trust", 1)?,
        cert_sha256: fp,
        subject,
        key_type,
        rsa_pss,
        public_key,
        cert,
    })
}

/// A `Signer` that only records what it is asked to sign. Running a format
/// module's own signing code with it yields that module's to-be-signed bytes.
struct Recorder<'a> {
    role: &'a Role,
    seen: Mutex<Vec<(Scheme, Vec<u8>)>>,
}

impl<'a> Recorder<'a> {
    fn new(role: &'a Role) -> Self {
        Recorder {
            role,
            seen: Mutex::new(vec![]),
        }
    }

    fn one(self) -> Result<(Scheme, Vec<u8>)> {
        let mut v = self.seen.into_inner().unwrap_or_else(|e| e.into_inner());
        match v.len() {
            1 => Ok(v.remove(0)),
            n => Err(Error::Crypto(format!(
                "expected one signature to be asked for, got {n}"
            ))),
        }
    }
}

impl Signer for Recorder<'_> {
    fn key_type(&self) -> KeyType {
        self.role.key_type
    }
    fn public_key(&self) -> &[u8] {
        &self.role.public_key
    }
    fn sign(&self, scheme: Scheme, msg: &[u8]) -> Result<Vec<u8>> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((scheme, msg.to_vec()));
        // A placeholder of a plausible size; the output is thrown away.
        Ok(vec![0u8; 64])
    }
    fn rsa_pss_only(&self) -> bool {
        self.role.rsa_pss
    }
    fn origin(&self) -> String {
        format!("role '{}' (offline)", self.role.name)
    }
}

/// A `Signer` that hands back a signature made offline, and only for the
/// bytes and scheme it was made for.
struct Replay<'a> {
    role: &'a Role,
    scheme: Scheme,
    tbs: &'a [u8],
    signature: &'a [u8],
    what: &'a str,
}

impl Signer for Replay<'_> {
    fn key_type(&self) -> KeyType {
        self.role.key_type
    }
    fn public_key(&self) -> &[u8] {
        &self.role.public_key
    }
    fn sign(&self, scheme: Scheme, msg: &[u8]) -> Result<Vec<u8>> {
        if scheme != self.scheme || msg != self.tbs {
            return Err(Error::Verify(format!(
                "{}: what it needs signed now is not what the response's signature was made over; refusing",
                self.what
            )));
        }
        Ok(self.signature.to_vec())
    }
    fn rsa_pss_only(&self) -> bool {
        self.role.rsa_pss
    }
    fn origin(&self) -> String {
        format!("role '{}' (offline signature)", self.role.name)
    }
}

/// The Authenticode signed attributes for `digest`, as `pe sign` would sign them.
fn pe_tbs(
    role: &Role,
    digest: &[u8; 32],
    signing_time: Option<OffsetDateTime>,
) -> Result<(Scheme, Vec<u8>)> {
    let rec = Recorder::new(role);
    authenticode::sign_digest(
        digest,
        &authenticode::SignOptions {
            signer: &rec,
            cert: &role.cert,
            chain: &role.chain,
            signing_time,
        },
    )?;
    rec.one()
}

/// What the PKCS#7 of an `.auth` update covers, as `efivar auth` would sign it.
fn efivar_tbs(
    role: &Role,
    var: SecureVar,
    append: bool,
    time: EfiTime,
    data: &[u8],
) -> Result<(Scheme, Vec<u8>)> {
    let rec = Recorder::new(role);
    efivar::sign_auth(var, append, time, data, &rec, &role.cert, &role.chain)?;
    rec.one()
}

/// The scheme cml checks a GuestOS signature by `role` with.
fn guestos_scheme(role: &Role, origin: &Path) -> Result<Scheme> {
    guestos::cml_scheme(Some(role.key_type.kind(role.rsa_pss))).ok_or_else(|| {
        let rule = guestos::CML_KEY_RULE;
        bad(
            origin,
            &format!("role '{}'", role.name),
            format!("{} key: {rule}", role.key_type),
        )
    })
}

fn sha256(data: &[u8]) -> String {
    crate::codec::hex(&Sha256::digest(data))
}

/// The signing time, the `existing` rule and the dropped signers of a `pe`
/// or `uki` item, decoded.
fn signing_fields(
    signing_time: &Option<String>,
    existing: &str,
    drop_signers: &[String],
    origin: &Path,
    at: &str,
) -> Result<(Option<OffsetDateTime>, Existing)> {
    let signing_time = match signing_time {
        None => None,
        Some(t) => {
            use time::format_description::well_known::Rfc3339;
            let parsed = OffsetDateTime::parse(t, &Rfc3339)
                .map_err(|e| bad(origin, at, format!("signing_time '{t}': {e}")))?;
            if rfc3339(parsed) != *t {
                return Err(bad(
                    origin,
                    at,
                    format!("signing_time '{t}' is not in the form 2026-01-01T00:00:00Z"),
                ));
            }
            Some(parsed)
        }
    };
    let existing = parse_existing(existing).ok_or_else(|| {
        bad(
            origin,
            at,
            format!("existing '{existing}' (refuse, append or replace)"),
        )
    })?;
    if drop_signers.len() > MAX_CERTS {
        return Err(bad(origin, at, "too many drop_signers"));
    }
    for d in drop_signers {
        sha256_field(d, origin, &format!("{at}: drop_signers"))?;
    }
    Ok((signing_time, existing))
}

/// Most sections, banks and phases a `uki` item may have.
const MAX_UKI_SECTIONS: usize = 32;
const MAX_UKI_PHASES: usize = 16;

/// A `uki` item's fields, decoded and within their caps.
fn check_uki(
    p: &UkiParams,
    pcr_keys: &BTreeMap<String, PcrKey>,
    origin: &Path,
    at: &str,
) -> Result<UkiChecked> {
    if !pcr_keys.contains_key(&p.pcr_role) {
        return Err(bad(
            origin,
            at,
            format!("pcr_role '{}' is not in the request's pcr_keys", p.pcr_role),
        ));
    }
    let mut banks = vec![];
    for b in &p.banks {
        let bank: pcr::Bank = b.parse().map_err(|e| bad(origin, at, e))?;
        bank.signing_hash().map_err(|e| bad(origin, at, e))?;
        banks.push(bank);
    }
    let mut sorted = banks.clone();
    sorted.sort();
    sorted.dedup();
    if banks.is_empty() || sorted != banks {
        return Err(bad(origin, at, "banks: one or more, sorted, each once"));
    }
    if p.phases.is_empty() || p.phases.len() > MAX_UKI_PHASES {
        return Err(bad(origin, at, format!("phases: 1 to {MAX_UKI_PHASES}")));
    }
    for ph in &p.phases {
        if ph.split(':').any(|w| !pcr::KNOWN_PHASE_WORDS.contains(&w)) && !ph.is_empty() {
            return Err(bad(origin, at, format!("phase '{}'", ph.escape_debug())));
        }
    }
    if p.sections.is_empty() || p.sections.len() > MAX_UKI_SECTIONS {
        return Err(bad(
            origin,
            at,
            format!("sections: 1 to {MAX_UKI_SECTIONS}"),
        ));
    }
    let mut digests = vec![];
    for (k, sec) in p.sections.iter().enumerate() {
        let w = format!("{at}: sections[{k}]");
        if !sec.name.starts_with('.') || sec.name.len() > 8 || !sec.name.is_ascii() {
            return Err(bad(origin, &w, "name is not a PE section name"));
        }
        if sec.digests.len() != banks.len() {
            return Err(bad(origin, &w, "one digest per bank"));
        }
        let mut per = vec![];
        for &bank in &banks {
            let h = sec
                .digests
                .get(bank.name())
                .ok_or_else(|| bad(origin, &w, format!("no {bank} digest")))?;
            let d = unhex(h, 64, origin, &w)?;
            if d.len() != bank.size() {
                return Err(bad(
                    origin,
                    &w,
                    format!("the {bank} digest is not {} bytes", bank.size()),
                ));
            }
            per.push((bank, d));
        }
        digests.push((sec.name.clone(), per));
    }
    if p.pcrsig_len == 0 || p.pcrsig_len > MAX_TBS_TEXT as u64 {
        return Err(bad(origin, at, "pcrsig_len out of range"));
    }
    if p.zeros_after > repolicy::MAX_ZEROS_AFTER {
        return Err(bad(origin, at, "zeros_after out of range"));
    }
    let state: [u8; 32] = sha256_field(&p.prefix.state, origin, &format!("{at}: prefix"))?;
    let pending = unhex(&p.prefix.pending, 63, origin, &format!("{at}: prefix"))?;
    let prefix = crate::codec::Sha256Midstate::from_parts(&state, p.prefix.compressed, &pending)
        .ok_or_else(|| bad(origin, at, "prefix: compressed is not whole blocks"))?;
    let (signing_time, existing) =
        signing_fields(&p.signing_time, &p.existing, &p.drop_signers, origin, at)?;
    if existing == Existing::Append {
        return Err(bad(
            origin,
            at,
            "existing 'append': a uki item changes the image, so no signature can stay (refuse or replace)",
        ));
    }
    Ok(UkiChecked {
        pcr_role: p.pcr_role.clone(),
        banks,
        phases: p.phases.clone(),
        digests,
        pcrsig_len: p.pcrsig_len,
        prefix,
        zeros_after: p.zeros_after,
        signing_time,
        existing,
        drop_signers: p.drop_signers.clone(),
    })
}

fn check_item(
    i: usize,
    it: &Item,
    roles: &BTreeMap<String, Role>,
    pcr_keys: &BTreeMap<String, PcrKey>,
    origin: &Path,
) -> Result<CheckedItem> {
    let at = format!("item {i}");
    if it.id != i as u64 {
        return Err(bad(origin, &at, format!("id is {}, expected {i}", it.id)));
    }
    let role = roles.get(&it.role).ok_or_else(|| {
        bad(
            origin,
            &at,
            format!("role '{}' is not in the request's roles", it.role),
        )
    })?;
    name_field(&it.artifact, origin, &format!("{at}: artifact"))?;
    name_field(&it.artifact_abs, origin, &format!("{at}: artifact_abs"))?;
    if !Path::new(&it.artifact_abs).is_absolute() {
        return Err(bad(origin, &at, "artifact_abs is not an absolute path"));
    }
    sha256_field(
        &it.artifact_sha256,
        origin,
        &format!("{at}: artifact_sha256"),
    )?;
    let max = match it.kind {
        Kind::Pe => MAX_TBS_PE,
        Kind::Uki => 0,
        Kind::Efivar => MAX_TBS_EFIVAR,
        Kind::Guestos | Kind::Csr => MAX_TBS_TEXT,
    };
    let tbs = unhex(&it.tbs, max, origin, &format!("{at}: tbs"))?;
    let scheme = match (&it.scheme, it.kind) {
        (None, Kind::Csr) => None,
        (Some(_), Kind::Csr) => return Err(bad(origin, &at, "a csr item has no scheme")),
        (None, _) => return Err(bad(origin, &at, "scheme is missing")),
        (Some(s), _) => Some(
            Scheme::from_id(s).ok_or_else(|| bad(origin, &at, format!("unknown scheme '{s}'")))?,
        ),
    };
    let (pe, efivar, uki) = (it.pe.is_some(), it.efivar.is_some(), it.uki.is_some());
    let wrong_params = match it.kind {
        Kind::Pe => !pe || efivar || uki,
        Kind::Efivar => !efivar || pe || uki,
        Kind::Uki => !uki || pe || efivar,
        Kind::Guestos | Kind::Csr => pe || efivar || uki,
    };
    if wrong_params {
        return Err(bad(
            origin,
            &at,
            format!(
                "a {} item has {}",
                it.kind.as_str(),
                match it.kind {
                    Kind::Pe => "exactly a \"pe\" object",
                    Kind::Efivar => "exactly an \"efivar\" object",
                    Kind::Uki => "exactly a \"uki\" object",
                    _ => "none of \"pe\", \"efivar\" and \"uki\"",
                }
            ),
        ));
    }
    let artifact = PathBuf::from(&it.artifact);
    // What tbs must be, derived from the item's other fields.
    let (params, derived) = match it.kind {
        Kind::Pe => {
            let p = it.pe.as_ref().ok_or_else(|| bad(origin, &at, "no pe"))?;
            let digest = sha256_field(
                &p.authenticode_sha256,
                origin,
                &format!("{at}: authenticode_sha256"),
            )?;
            let (signing_time, existing) =
                signing_fields(&p.signing_time, &p.existing, &p.drop_signers, origin, &at)?;
            let derived = pe_tbs(role, &digest, signing_time)?;
            (
                Params::Pe {
                    digest,
                    signing_time,
                    existing,
                    drop_signers: p.drop_signers.clone(),
                },
                Some(derived),
            )
        }
        Kind::Efivar => {
            let p = it
                .efivar
                .as_ref()
                .ok_or_else(|| bad(origin, &at, "no efivar"))?;
            let var = SecureVar::ALL
                .into_iter()
                .find(|v| v.name() == p.var)
                .ok_or_else(|| bad(origin, &at, format!("var '{}' (PK, KEK, db or dbx)", p.var)))?;
            let time = EfiTime::parse(&p.time)
                .map_err(|e| bad(origin, &at, format!("time '{}': {e}", p.time)))?;
            if time.to_string() != p.time {
                return Err(bad(
                    origin,
                    &at,
                    format!("time '{}' is not in the form YYYY-MM-DD HH:MM:SS", p.time),
                ));
            }
            let head = efivar::auth_payload(var, efivar::auth_attributes(p.append), time, &[]);
            let data = tbs
                .strip_prefix(head.as_slice())
                .ok_or_else(|| {
                    bad(
                        origin,
                        &at,
                        format!(
                            "tbs does not start with the name, GUID, attributes and time of a {}{var} update",
                            if p.append { "append to " } else { "" }
                        ),
                    )
                })?
                .to_vec();
            if sha256(&data) != it.artifact_sha256 {
                return Err(bad(
                    origin,
                    &at,
                    "the signature lists in tbs are not the artifact (SHA-256 differs)",
                ));
            }
            efivar::check_var_content(var, &data, &artifact).map_err(|e| bad(origin, &at, e))?;
            let derived = efivar_tbs(role, var, p.append, time, &data)?;
            (
                Params::Efivar {
                    var,
                    append: p.append,
                    time,
                    data,
                },
                Some(derived),
            )
        }
        Kind::Guestos => {
            if sha256(&tbs) != it.artifact_sha256 {
                return Err(bad(
                    origin,
                    &at,
                    "tbs is not the manifest (SHA-256 differs from artifact_sha256)",
                ));
            }
            guestos::GuestOsConfig::parse_for_cml(&artifact, tbs.clone())
                .map_err(|e| bad(origin, &at, e))?;
            let s = guestos_scheme(role, origin)?;
            (Params::Guestos, Some((s, tbs.clone())))
        }
        Kind::Csr => {
            match X509CertificationRequest::from_der(&tbs) {
                Ok(([], _)) => {}
                _ => return Err(bad(origin, &at, "tbs is not one DER certificate request")),
            }
            (Params::Csr, None)
        }
        Kind::Uki => {
            let p = it.uki.as_ref().ok_or_else(|| bad(origin, &at, "no uki"))?;
            let u = check_uki(p, pcr_keys, origin, &at)?;
            // The scheme is the role's; what it signs is derived when signing.
            let (s, _) = pe_tbs(role, &[0; 32], u.signing_time)?;
            (Params::Uki(Box::new(u)), Some((s, vec![])))
        }
    };
    if let Some((s, bytes)) = derived {
        if Some(s) != scheme {
            return Err(bad(
                origin,
                &at,
                format!(
                    "scheme is {}; a {} key of role '{}' signs this with {}",
                    it.scheme.as_deref().unwrap_or("absent"),
                    role.key_type,
                    role.name,
                    s.id()
                ),
            ));
        }
        if bytes != tbs {
            return Err(bad(
                origin,
                &at,
                format!(
                    "tbs is not what the item's own fields give for a {} signature; refusing to sign it",
                    it.kind.as_str()
                ),
            ));
        }
    }
    Ok(CheckedItem {
        kind: it.kind,
        role: it.role.clone(),
        artifact,
        artifact_abs: PathBuf::from(&it.artifact_abs),
        artifact_sha256: it.artifact_sha256.clone(),
        scheme,
        tbs,
        params,
    })
}

/// Check a request: format, version, every field decoded strictly and within
/// its cap, every role's certificates, and every item's `tbs` re-derived from
/// its own fields by the format module that owns it.
pub fn check_request(request: Request, origin: &Path) -> Result<CheckedRequest> {
    if request.format != REQUEST_FORMAT {
        return Err(Error::input(
            origin,
            format!(
                "format is '{}', not '{REQUEST_FORMAT}'",
                request.format.escape_debug()
            ),
        ));
    }
    if request.version != VERSION {
        return Err(Error::input(
            origin,
            format!(
                "version {} is not supported (this pki-signer reads version {VERSION})",
                request.version
            ),
        ));
    }
    if request.items.is_empty() {
        return Err(Error::input(origin, "no items"));
    }
    if request.items.len() > MAX_ITEMS {
        return Err(Error::input(
            origin,
            format!(
                "{} items; at most {MAX_ITEMS} are allowed",
                request.items.len()
            ),
        ));
    }
    if request.roles.len() > MAX_ROLES {
        return Err(Error::input(origin, "too many roles"));
    }
    let mut roles = BTreeMap::new();
    for (name, rc) in &request.roles {
        if !role_name_ok(name) {
            return Err(Error::input(
                origin,
                format!(
                    "role name '{}' (letters, digits, _ - . only)",
                    name.escape_debug()
                ),
            ));
        }
        roles.insert(name.clone(), check_role(name, rc, origin)?);
    }
    let used: BTreeSet<&str> = request.items.iter().map(|i| i.role.as_str()).collect();
    if let Some(r) = roles.keys().find(|r| !used.contains(r.as_str())) {
        return Err(Error::input(
            origin,
            format!("role '{r}' is listed but no item uses it"),
        ));
    }
    let pcr_keys = check_pcr_keys(&request, origin)?;
    let items = par::map(request.items.len(), par::cores(), |i| {
        check_item(i, &request.items[i], &roles, &pcr_keys, origin)
    })?;
    let mut seen = HashSet::new();
    for (i, it) in items.iter().enumerate() {
        if !seen.insert((it.kind, it.artifact_abs.clone())) {
            return Err(Error::input(
                origin,
                format!(
                    "item {i}: {} is in the request twice",
                    it.artifact_abs.display()
                ),
            ));
        }
    }
    Ok(CheckedRequest {
        sha256: request_sha256(&request),
        request,
        roles,
        pcr_keys,
        items,
    })
}

/// The request's PCR keys: names, RSA public keys (systemd's policy
/// signatures are RSA), each used by an item.
fn check_pcr_keys(request: &Request, origin: &Path) -> Result<BTreeMap<String, PcrKey>> {
    if request.pcr_keys.len() > MAX_ROLES {
        return Err(Error::input(origin, "too many pcr_keys"));
    }
    let mut out = BTreeMap::new();
    for (name, info) in &request.pcr_keys {
        let at = format!("pcr_keys '{}'", name.escape_debug());
        if !role_name_ok(name) {
            return Err(bad(origin, &at, "name: letters, digits, _ - . only"));
        }
        if !request
            .items
            .iter()
            .any(|i| i.uki.as_ref().is_some_and(|u| &u.pcr_role == name))
        {
            return Err(bad(origin, &at, "listed but no item uses it"));
        }
        let der = unhex(&info.public_key, MAX_CERT, origin, &at)?;
        let pem = crate::codec::pem_encode("PUBLIC KEY", &der);
        let public = uki::public_key_from_pem(pem.as_bytes()).map_err(|e| bad(origin, &at, e))?;
        let bits = rsa_bits(&public.key_bits).ok_or_else(|| {
            bad(
                origin,
                &at,
                "not an RSA public key (systemd signs PCR policies with RSA)",
            )
        })?;
        out.insert(
            name.clone(),
            PcrKey {
                name: name.clone(),
                public,
                key_type: KeyType::Rsa(bits),
            },
        );
    }
    Ok(out)
}

/// The modulus size of a PKCS#1 RSAPublicKey, in bits.
fn rsa_bits(key_bits: &[u8]) -> Option<u32> {
    let (rest, k) = x509_parser::public_key::RSAPublicKey::from_der(key_bits).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let m = k.modulus.iter().skip_while(|&&b| b == 0).count();
    u32::try_from(m * 8).ok()
}

/// Parse and check a request file's bytes.
pub fn parse_request(bytes: &[u8], origin: &Path) -> Result<CheckedRequest> {
    let r: Request = serde_json::from_slice(bytes)
        .map_err(|e| Error::input(origin, format!("not an offline signing request: {e}")))?;
    check_request(r, origin)
}

/// A response, checked: its request (as [`check_request`]), the binding
/// hash, and every result decoded.
#[derive(Clone, Debug)]
pub struct CheckedResponse {
    pub request: CheckedRequest,
    pub signers: BTreeMap<String, SignerNote>,
    /// Per item: the signature, or for `csr` the certificate (DER).
    pub results: Vec<Vec<u8>>,
    /// Per `uki` item: the policies and what the image signature covers.
    pub ukis: Vec<Option<UkiSigned>>,
}

/// Parse and check a response file's bytes.
pub fn parse_response(bytes: &[u8], origin: &Path) -> Result<CheckedResponse> {
    let r: Response = serde_json::from_slice(bytes)
        .map_err(|e| Error::input(origin, format!("not an offline signing response: {e}")))?;
    if r.format != RESPONSE_FORMAT {
        return Err(Error::input(
            origin,
            format!(
                "format is '{}', not '{RESPONSE_FORMAT}'",
                r.format.escape_debug()
            ),
        ));
    }
    if r.version != VERSION {
        return Err(Error::input(
            origin,
            format!("version {} is not supported", r.version),
        ));
    }
    sha256_field(&r.request_sha256, origin, "request_sha256")?;
    let computed = request_sha256(&r.request);
    if computed != r.request_sha256 {
        return Err(Error::input(
            origin,
            format!(
                "the request it carries has SHA-256 {computed}, not the request_sha256 {} it was signed for",
                r.request_sha256
            ),
        ));
    }
    let request = check_request(r.request, origin)?;
    if r.results.len() != request.items.len() {
        return Err(Error::input(
            origin,
            format!(
                "{} results for {} items",
                r.results.len(),
                request.items.len()
            ),
        ));
    }
    for (name, role) in &request.roles {
        let note = r
            .signers
            .get(name)
            .ok_or_else(|| Error::input(origin, format!("signers: nothing for role '{name}'")))?;
        if note.cert_sha256 != role.cert_sha256 {
            return Err(Error::input(
                origin,
                format!(
                    "signers: role '{name}' was signed with certificate {}, the request asks for {}",
                    note.cert_sha256, role.cert_sha256
                ),
            ));
        }
        name_field(&note.key, origin, "signers: key")?;
    }
    if r.signers.len() != request.roles.len() {
        return Err(Error::input(
            origin,
            "signers: a role the request does not have",
        ));
    }
    let mut results = vec![];
    let mut ukis = vec![];
    for (i, (s, it)) in r.results.iter().zip(&request.items).enumerate() {
        let at = format!("result {i}");
        if s.id != i as u64 {
            return Err(bad(origin, &at, format!("id is {}, expected {i}", s.id)));
        }
        let derived = match (&it.params, &s.pcr_signatures) {
            (Params::Uki(u), Some(list)) => {
                let role = &request.roles[&it.role];
                let key = &request.pcr_keys[&u.pcr_role];
                let max = u.banks.len() * u.phases.len();
                if list.len() != max {
                    return Err(bad(
                        origin,
                        &at,
                        format!("{} policy signatures for {max} policies", list.len()),
                    ));
                }
                let mut sigs = vec![];
                for h in list {
                    sigs.push(unhex(
                        h,
                        MAX_SIGNATURE,
                        origin,
                        &format!("{at}: pcr_signatures"),
                    )?);
                }
                let replay = PolicyReplay {
                    key,
                    sigs: &sigs,
                    next: AtomicUsize::new(0),
                };
                Some(uki_signed(u, role, &replay, origin).map_err(|e| bad(origin, &at, e))?)
            }
            (Params::Uki(_), None) => {
                return Err(bad(origin, &at, "a uki result needs pcr_signatures"));
            }
            (_, Some(_)) => {
                return Err(bad(
                    origin,
                    &at,
                    "pcr_signatures belong to uki results only",
                ));
            }
            (_, None) => None,
        };
        let v = match (it.kind, &s.signature, &s.certificate) {
            (Kind::Csr, None, Some(c)) => {
                let der = unhex(c, MAX_CERT, origin, &format!("{at}: certificate"))?;
                x509::parse(&der, origin).map_err(|e| bad(origin, &at, e))?;
                der
            }
            (Kind::Csr, _, _) => {
                return Err(bad(
                    origin,
                    &at,
                    "a csr result has a certificate and nothing else",
                ))
            }
            (_, Some(sig), None) => unhex(sig, MAX_SIGNATURE, origin, &format!("{at}: signature"))?,
            (k, _, _) => {
                return Err(bad(
                    origin,
                    &at,
                    format!("a {} result has a signature and nothing else", k.as_str()),
                ))
            }
        };
        if v.is_empty() {
            return Err(bad(origin, &at, "empty"));
        }
        if let Some(scheme) = it.scheme {
            // Checked here, before any artifact is read: a signature swapped
            // between items or made by another key is refused by name.
            let role = &request.roles[&it.role];
            let cert = x509::parse(&role.cert, origin)?;
            let tbs = derived
                .as_ref()
                .map_or(it.tbs.as_slice(), |u| u.tbs.as_slice());
            sigalg::verify(cert.public_key(), scheme, tbs, &v).map_err(|e| {
                bad(
                    origin,
                    &at,
                    format!(
                        "the signature for {} does not verify with role '{}' ({e}); refusing",
                        it.artifact.display(),
                        it.role
                    ),
                )
            })?;
        }
        results.push(v);
        ukis.push(derived);
    }
    Ok(CheckedResponse {
        request,
        signers: r.signers,
        results,
        ukis,
    })
}

/// Read and check a request file (bounded read).
pub fn read_request(path: &Path) -> Result<CheckedRequest> {
    parse_request(&fsutil::read_input(path, InputKind::Offline)?, path)
}

/// Read and check a response file (bounded read).
pub fn read_response(path: &Path) -> Result<CheckedResponse> {
    parse_response(&fsutil::read_input(path, InputKind::Offline)?, path)
}

/// JSON with a final newline, as written to request and response files.
pub fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    let mut out =
        serde_json::to_vec_pretty(v).map_err(|e| Error::Internal(format!("JSON: {e}")))?;
    out.push(b'\n');
    Ok(out)
}

// ---------------------------------------------------------------------------
// 1. request (build host)

/// One artifact to put into a request.
#[derive(Clone, Debug)]
pub struct Artifact {
    pub kind: Kind,
    pub path: PathBuf,
    pub role: String,
    /// `efivar`: the variable and whether the update appends.
    pub var: Option<(SecureVar, bool)>,
    /// `pe`: signatures by these certificates (SHA-256 hex) are dropped.
    pub drop_signers: Vec<String>,
    /// `pe`: overrides [`RequestOptions::existing`].
    pub existing: Option<Existing>,
}

impl Artifact {
    pub fn new(kind: Kind, path: &Path, role: &str) -> Artifact {
        Artifact {
            kind,
            path: path.to_path_buf(),
            role: role.to_string(),
            var: None,
            drop_signers: vec![],
            existing: None,
        }
    }
}

pub struct RequestOptions {
    /// KEYS.json: only `cert`, `chain` and `trust` are read; keys are not opened.
    pub keys: PathBuf,
    pub signing_time: Option<OffsetDateTime>,
    /// What `pe` items do with signatures the image already has.
    pub existing: Existing,
    /// EFI_TIME of `efivar` items.
    pub efi_time: EfiTime,
}

fn role_certs(keys: &Keys, role: &str) -> Result<RoleCerts> {
    let e = keys.entries.get(role).ok_or_else(|| {
        Error::input(
            &keys.path,
            format!(
                "no entry for role '{role}' (it has: {})",
                keys.entries.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        )
    })?;
    if pkcs11::is_uri(&e.cert) {
        return Err(Error::input(
            &keys.path,
            format!("role '{role}': give the certificate as a file for offline requests (the build host has no token)"),
        ));
    }
    let mut certs = identity::read_cert_chain(&e.cert)?;
    let cert = certs.remove(0);
    if let Some(c) = &e.chain {
        for d in x509::read_certs(c)? {
            if !certs.contains(&d) {
                certs.push(d);
            }
        }
    }
    // Roots are anchors, not chain members (as Identity does).
    certs.retain(|c| {
        x509::parse(c, &e.cert)
            .map(|p| p.subject() != p.issuer())
            .unwrap_or(false)
    });
    if e.trust.is_empty() {
        return Err(Error::input(
            &keys.path,
            format!("role '{role}': no trust anchors (\"trust\": [ROOT.cert]) to verify the completed artifacts against"),
        ));
    }
    let mut trust = vec![];
    for t in &e.trust {
        trust.extend(x509::read_certs(t)?);
    }
    Ok(RoleCerts {
        cert_sha256: crate::codec::sha256_hex(&cert),
        cert: crate::codec::hex(&cert),
        chain: certs.iter().map(|c| crate::codec::hex(c)).collect(),
        trust: trust.iter().map(|c| crate::codec::hex(c)).collect(),
    })
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| Error::input(p, "file name is not UTF-8"))
}

/// The signatures a PE image keeps under `existing` once `drop` signers'
/// are gone; refuses an image still signed when told to refuse.
fn kept_signatures(
    img: &PeImage,
    path: &Path,
    existing: Existing,
    drop: &[String],
) -> Result<Vec<Vec<u8>>> {
    let mut kept = vec![];
    for der in img.pkcs7_signatures()? {
        let fp = authenticode::parse(&der, path)
            .ok()
            .and_then(|s| s.signer_cert)
            .map(|c| crate::codec::sha256_hex(&c));
        if fp.is_some_and(|f| drop.contains(&f)) {
            continue;
        }
        kept.push(der);
    }
    match existing {
        Existing::Refuse if !kept.is_empty() => Err(Error::input(
            path,
            format!(
                "already signed ({} signature(s)): pass --append to add ours after them, or --replace to drop them",
                kept.len()
            ),
        )),
        Existing::Replace => Ok(vec![]),
        _ => Ok(kept),
    }
}

/// The PCR key of KEYS.json, as a request names it.
type PcrPublic = (String, uki::PublicKey);

fn make_item(
    id: usize,
    a: &Artifact,
    role: &Role,
    pcr: Option<&PcrPublic>,
    opts: &RequestOptions,
) -> Result<Item> {
    let path = &a.path;
    let mut item = Item {
        id: id as u64,
        kind: a.kind,
        role: a.role.clone(),
        artifact: path_str(path)?,
        artifact_abs: path_str(&plan::absolute(path)?)?,
        artifact_sha256: String::new(),
        scheme: None,
        tbs: String::new(),
        pe: None,
        efivar: None,
        uki: None,
    };
    let signing_time = match opts.signing_time {
        // What the request says, to the second.
        Some(t) => Some(
            t.replace_nanosecond(0)
                .map_err(|e| Error::Usage(e.to_string()))?,
        ),
        None => None,
    };
    let (scheme, tbs) = match a.kind {
        Kind::Pe | Kind::Uki => {
            let img = PeImage::open(path)?;
            if img.info().sections.iter().any(|s| s.name == ".pcrsig") {
                return uki_item(item, a, role, pcr, signing_time, opts, &img);
            }
            let existing = a.existing.unwrap_or(opts.existing);
            kept_signatures(&img, path, existing, &a.drop_signers)?;
            // Both hashes in one go: the file hash on another thread while
            // the image is hashed (the second read comes from the page cache).
            let (file, digest) = std::thread::scope(|s| {
                let f = s.spawn(|| plan::sha256_file(path));
                let d = img.digest();
                (
                    f.join()
                        .unwrap_or_else(|_| Err(Error::Internal("hash thread panicked".into()))),
                    d,
                )
            });
            item.artifact_sha256 = file?;
            let digest = digest?;
            item.pe = Some(PeParams {
                authenticode_sha256: crate::codec::hex(&digest.sha256),
                signing_time: opts.signing_time.map(rfc3339),
                existing: existing_name(existing).into(),
                drop_signers: a.drop_signers.clone(),
            });
            pe_tbs(role, &digest.sha256, signing_time)?
        }
        Kind::Efivar => {
            let (var, append) = a
                .var
                .ok_or_else(|| Error::Usage(format!("{}: which variable?", path.display())))?;
            let data = fsutil::read_input(path, InputKind::Esl)?;
            efivar::check_var_content(var, &data, path)?;
            item.artifact_sha256 = sha256(&data);
            item.efivar = Some(EfivarParams {
                var: var.name().into(),
                append,
                time: opts.efi_time.to_string(),
            });
            efivar_tbs(role, var, append, opts.efi_time, &data)?
        }
        Kind::Guestos => {
            let bytes = fsutil::read_input(path, InputKind::GuestosConf)?;
            guestos::GuestOsConfig::parse_for_cml(path, bytes.clone())?;
            item.artifact_sha256 = sha256(&bytes);
            (guestos_scheme(role, path)?, bytes)
        }
        Kind::Csr => {
            let bytes = fsutil::read_input(path, InputKind::Csr)?;
            let csr = csr::CsrFile::read(path)?;
            item.artifact_sha256 = sha256(&bytes);
            item.tbs = crate::codec::hex(&csr.der);
            return Ok(item);
        }
    };
    item.scheme = Some(scheme.id());
    item.tbs = crate::codec::hex(&tbs);
    Ok(item)
}

/// A UKI with a PCR policy: its policy is signed again for the PCR key of
/// KEYS.json and the image after it, so the build's PCR key goes with the
/// build's signature.
fn uki_item(
    mut item: Item,
    a: &Artifact,
    role: &Role,
    pcr: Option<&PcrPublic>,
    signing_time: Option<OffsetDateTime>,
    opts: &RequestOptions,
    img: &PeImage,
) -> Result<Item> {
    let path = &a.path;
    let (pcr_role, key) = pcr.ok_or_else(|| {
        Error::input(
            path,
            format!(
                "a UKI with a PCR policy (.pcrsig): KEYS.json needs a '{}' entry with the production PCR public key (\"public\": FILE.pem)",
                uki::PCR_ROLE
            ),
        )
    })?;
    let existing = match a.existing.unwrap_or(opts.existing) {
        Existing::Replace => Existing::Replace,
        _ => Existing::Refuse,
    };
    if existing == Existing::Refuse {
        let kept = kept_signatures(img, path, Existing::Append, &a.drop_signers)?;
        if !kept.is_empty() {
            return Err(Error::input(
                path,
                format!(
                    "signed by {} other signature(s); its PCR policy is signed again, which changes the image, so they cannot stay: --replace drops them",
                    kept.len()
                ),
            ));
        }
    }
    let rp = repolicy::plan(path, &key.spki_der)?;
    item.kind = Kind::Uki;
    item.artifact_sha256 = crate::codec::hex(&rp.file_sha256);
    let (scheme, _) = pe_tbs(role, &[0; 32], signing_time)?;
    item.scheme = Some(scheme.id());
    item.uki = Some(UkiParams {
        pcr_role: pcr_role.clone(),
        banks: rp.banks.iter().map(|b| b.name().to_string()).collect(),
        phases: rp.phases.clone(),
        sections: rp
            .digests
            .iter()
            .map(|(name, d)| UkiSection {
                name: name.clone(),
                digests: d
                    .iter()
                    .map(|(b, h)| (b.name().to_string(), crate::codec::hex(h)))
                    .collect(),
            })
            .collect(),
        pcrsig_len: rp.pcrsig_at.len,
        prefix: HashPrefix {
            state: crate::codec::hex(&rp.prefix.state_bytes()),
            compressed: rp.prefix.compressed,
            pending: crate::codec::hex(&rp.prefix.pending),
        },
        zeros_after: rp.zeros_after,
        signing_time: signing_time.map(rfc3339),
        existing: existing_name(existing).into(),
        drop_signers: a.drop_signers.clone(),
    });
    Ok(item)
}

/// Build the request for `artifacts`. Nothing is written.
pub fn request(artifacts: &[Artifact], opts: &RequestOptions) -> Result<Request> {
    if artifacts.is_empty() {
        return Err(Error::Usage(
            "nothing to sign: give artifacts or --plan".into(),
        ));
    }
    if artifacts.len() > MAX_ITEMS {
        return Err(Error::Usage(format!(
            "{} artifacts; one request holds at most {MAX_ITEMS}",
            artifacts.len()
        )));
    }
    let keys = Keys::load(&opts.keys)?;
    let mut roles = BTreeMap::new();
    for a in artifacts {
        if !roles.contains_key(&a.role) {
            if !role_name_ok(&a.role) {
                return Err(Error::Usage(format!(
                    "role name '{}'",
                    a.role.escape_debug()
                )));
            }
            roles.insert(a.role.clone(), role_certs(&keys, &a.role)?);
        }
    }
    let mut checked = BTreeMap::new();
    for (name, rc) in &roles {
        checked.insert(name.clone(), check_role(name, rc, &opts.keys)?);
    }
    let pcr: Option<PcrPublic> = match &keys.pcr {
        Some(e) => {
            let b = fsutil::read_input(&e.public, InputKind::Certificate)?;
            let k = uki::public_key_from_pem(&b).map_err(|m| Error::input(&e.public, m))?;
            Some((uki::PCR_ROLE.to_string(), k))
        }
        None => None,
    };
    let items = par::map(artifacts.len(), par::cores(), |i| {
        let a = &artifacts[i];
        make_item(i, a, &checked[&a.role], pcr.as_ref(), opts)
    })?;
    let mut pcr_keys = BTreeMap::new();
    if let Some((name, k)) = &pcr {
        if items.iter().any(|i| i.kind == Kind::Uki) {
            pcr_keys.insert(
                name.clone(),
                PcrKeyInfo {
                    public_key: crate::codec::hex(&k.spki_der),
                },
            );
        }
    }
    let req = Request {
        format: REQUEST_FORMAT.into(),
        version: VERSION,
        roles,
        pcr_keys,
        items,
    };
    // What the signing host will check, checked here first.
    check_request(req.clone(), Path::new("the new request"))?;
    Ok(req)
}

/// The artifacts of a signing plan: its latest record per output, signed
/// again by the same role, the build's own signatures dropped.
pub fn artifacts_from_plan(plan_path: &Path) -> Result<Vec<Artifact>> {
    let records = plan::read(plan_path)?;
    let dir = fsutil::parent_dir(&plan::absolute(plan_path)?);
    let mut pos: BTreeMap<PathBuf, usize> = BTreeMap::new();
    let mut out: Vec<Artifact> = vec![];
    for r in records {
        let kind = match r.kind {
            plan::Kind::Pe => Kind::Pe,
            plan::Kind::Guestos => Kind::Guestos,
        };
        let mut path = r.output_abs.clone();
        if path.symlink_metadata().is_err() {
            if let Some(name) = r.output.file_name() {
                path = dir.join(name);
            }
        }
        let mut a = Artifact::new(
            kind,
            &path,
            r.role.as_deref().unwrap_or(kind.default_role(None)),
        );
        if kind == Kind::Pe {
            a.drop_signers = vec![r.key_fingerprint.to_ascii_lowercase()];
            a.existing = Some(Existing::Append);
        }
        match pos.get(&r.output_abs) {
            Some(&i) => out[i] = a,
            None => {
                pos.insert(r.output_abs.clone(), out.len());
                out.push(a);
            }
        }
    }
    if out.is_empty() {
        return Err(Error::input(plan_path, "no records: nothing to sign"));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// 2. sign (signing host)

pub struct SignOptions {
    /// KEYS.json: the production key and certificate of each role.
    pub keys: PathBuf,
    /// `csr` items: validity in days, and the profile deciding what goes in.
    pub csr_days: u32,
    pub csr_profile: Option<csr::Profile>,
}

/// A role's loaded key: the identity, plus more sessions on the same token
/// key so that several threads can sign at once.
struct Loaded {
    id: Identity,
    extra: Vec<Box<dyn Signer>>,
}

/// A checked request with its keys loaded, ready to sign.
pub struct Signing {
    req: CheckedRequest,
    keys: BTreeMap<String, Loaded>,
    /// The PCR policy keys of `uki` items.
    pcr: BTreeMap<String, Box<dyn Signer>>,
    csr_opts: csr::IssueOptions,
}

/// What `offline sign` is about to do, shown before it does it.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub request_sha256: String,
    pub items: usize,
    pub roles: Vec<RoleSummary>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pcr_keys: Vec<PcrKeySummary>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PcrKeySummary {
    pub name: String,
    /// UKIs whose policy it signs, and the policies in all.
    pub ukis: usize,
    pub policies: usize,
    pub key_type: String,
    /// `pkfp`: SHA-256 of the public key (PKCS#1 RSAPublicKey).
    pub key_sha256: String,
    pub key: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct RoleSummary {
    pub role: String,
    pub counts: BTreeMap<Kind, usize>,
    pub subject: String,
    pub key_type: String,
    /// SHA-256 of the signer certificate.
    pub cert_sha256: String,
    /// SHA-256 of the public key (subjectPublicKey bits).
    pub key_sha256: String,
    pub key: String,
    /// Signing threads (token sessions) used for this role.
    pub sessions: usize,
}

/// Check `request` and load the keys it needs: every refusal (bad request,
/// unknown role, a certificate other than the request's, a development key
/// in release mode) comes here, before anything is signed.
pub fn prepare(request_path: &Path, opts: &SignOptions) -> Result<Signing> {
    let req = read_request(request_path)?;
    let keys = Keys::load(&opts.keys)?;
    for (name, role) in &req.roles {
        let e = keys.entries.get(name).ok_or_else(|| {
            Error::input(
                request_path,
                format!(
                    "role '{name}' is not one of {} ({})",
                    keys.path.display(),
                    keys.entries.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        let have = identity::read_cert_chain(&e.cert)?.remove(0);
        if have != role.cert {
            return Err(Error::input(
                request_path,
                format!(
                    "role '{name}': the request wants certificate {} ('{}'), {} has {} for it; refusing",
                    role.cert_sha256,
                    role.subject,
                    keys.path.display(),
                    crate::codec::sha256_hex(&have)
                ),
            ));
        }
        if let Err(why) = chain::uefi_path(&role.cert, &role.chain, &role.trust) {
            return Err(Error::input(
                request_path,
                format!("role '{name}': the certificate does not chain to the request's trust anchors: {why}"),
            ));
        }
    }
    let csr_opts = csr::IssueOptions {
        not_before: OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .map_err(|e| Error::Crypto(e.to_string()))?,
        days: opts.csr_days,
        profile: opts.csr_profile.clone(),
    };
    precheck_csrs(&req, &csr_opts)?;
    let pcr = load_pcr_keys(&req, &keys, request_path)?;
    let mut loaded = BTreeMap::new();
    for name in req.roles.keys() {
        let e = &keys.entries[name];
        let id = e.identity()?;
        let n = req.items.iter().filter(|i| &i.role == name).count();
        if req
            .items
            .iter()
            .any(|i| &i.role == name && i.kind == Kind::Csr)
        {
            // Refuses a role that may not issue certificates, before anything is signed.
            csr::Issuer::new(&id, &csr_opts)?;
        }
        // A token key signs one operation per session: open more sessions
        // on the same key (the token is logged in already).
        let mut extra: Vec<Box<dyn Signer>> = vec![];
        if let Some(uri) = e.key.as_deref().filter(|k| pkcs11::is_uri(k)) {
            for _ in 1..par::cores().min(n) {
                let s = identity::load_signer(uri, None)?;
                if s.public_key() != id.signer.public_key() {
                    return Err(Error::input(uri, "a second session found another key"));
                }
                extra.push(s);
            }
        }
        loaded.insert(name.clone(), Loaded { id, extra });
    }
    Ok(Signing {
        req,
        keys: loaded,
        pcr,
        csr_opts,
    })
}

/// Open the PCR keys the request's `uki` items are signed for: the
/// `tpm2-pcr` key of KEYS.json, which must be the key the request names.
/// Release mode's refusal of development keys applies.
fn load_pcr_keys(
    req: &CheckedRequest,
    keys: &Keys,
    request_path: &Path,
) -> Result<BTreeMap<String, Box<dyn Signer>>> {
    let mut out = BTreeMap::new();
    for (name, k) in &req.pcr_keys {
        let e = keys
            .pcr
            .as_ref()
            .filter(|_| name == uki::PCR_ROLE)
            .ok_or_else(|| {
                Error::input(
                    request_path,
                    format!(
                        "PCR key '{name}' is not in {} (a \"{}\" entry with \"key\" and \"public\")",
                        keys.path.display(),
                        uki::PCR_ROLE
                    ),
                )
            })?;
        let key = e.key.clone().ok_or_else(|| {
            Error::input(
                &keys.path,
                format!("'{}' has no \"key\" to sign with", uki::PCR_ROLE),
            )
        })?;
        let signer = uki::load_pcr_key(&uki::PcrKeySpec {
            role: None,
            dir: PathBuf::new(),
            key: Some(key),
            key_pass_file: e.key_pass_file.clone(),
        })?;
        if signer.public_key() != k.public.key_bits.as_slice() {
            return Err(Error::input(
                request_path,
                format!(
                    "PCR key '{name}': the request is for key {}, {} has {}; refusing",
                    pcr::key_fingerprint(&k.public.key_bits),
                    keys.path.display(),
                    pcr::key_fingerprint(signer.public_key())
                ),
            ));
        }
        out.insert(name.clone(), signer);
    }
    Ok(out)
}

/// A `uki` item signed: its policy signatures, the new `.pcrsig`, the
/// Authenticode digest of the new image and the signed attributes over it.
#[derive(Clone, Debug)]
pub struct UkiSigned {
    pub pcr_signatures: Vec<Vec<u8>>,
    pub pcrsig: Vec<u8>,
    pub digest: [u8; 32],
    pub tbs: Vec<u8>,
}

/// What the image signature of a `uki` item covers, once its policies are
/// signed by `key`: the signing host signs with its key, and the build host
/// replays the response's signatures (which [`PolicyReplay`] checks).
fn uki_signed(u: &UkiChecked, role: &Role, key: &dyn Signer, origin: &Path) -> Result<UkiSigned> {
    let (sigs, pcrsig) = pcr::sign_policies(&u.digests, &u.banks, &u.phases, key)?;
    if pcrsig.len() as u64 != u.pcrsig_len {
        return Err(Error::input(
            origin,
            format!(
                "the new .pcrsig is {} bytes; the UKI has room for {} (a PCR key of another size than the build's?)",
                pcrsig.len(),
                u.pcrsig_len
            ),
        ));
    }
    let mut pcr_signatures = vec![];
    for entries in sigs.values() {
        for e in entries {
            pcr_signatures.push(
                pcr::base64_decode(&e.sig)
                    .ok_or_else(|| Error::Internal("policy signature".into()))?,
            );
        }
    }
    let digest = repolicy::finish_digest(&u.prefix, &pcrsig, u.zeros_after);
    let (_, tbs) = pe_tbs(role, &digest, u.signing_time)?;
    Ok(UkiSigned {
        pcr_signatures,
        pcrsig,
        digest,
        tbs,
    })
}

/// A PCR "signer" that hands back the response's policy signatures in
/// order, each checked against the request's PCR key over the policy the
/// build host derives.
struct PolicyReplay<'a> {
    key: &'a PcrKey,
    sigs: &'a [Vec<u8>],
    next: AtomicUsize,
}

impl Signer for PolicyReplay<'_> {
    fn key_type(&self) -> KeyType {
        self.key.key_type
    }
    fn public_key(&self) -> &[u8] {
        &self.key.public.key_bits
    }
    fn sign(&self, scheme: Scheme, msg: &[u8]) -> Result<Vec<u8>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let sig = self.sigs.get(i).ok_or_else(|| {
            Error::Verify(format!(
                "fewer policy signatures than policies ({})",
                self.sigs.len()
            ))
        })?;
        let bank = pcr::Bank::ALL
            .into_iter()
            .find(|b| b.sig_hash().map(Scheme::RsaPkcs1) == Some(scheme))
            .ok_or_else(|| Error::Internal("policy scheme".into()))?;
        if !uki::verify_policy_sig(&self.key.public, bank, msg, sig) {
            return Err(Error::Verify(format!(
                "policy signature {i} does not verify with PCR key '{}'",
                self.key.name
            )));
        }
        Ok(sig.clone())
    }
    fn origin(&self) -> String {
        format!("PCR key '{}' (offline signatures)", self.key.name)
    }
}

/// Run every CSR through the issuing checks (proof of possession, no CA
/// powers, the profile) before anything is shown or signed: with a
/// throwaway EC issuer, so the token is not used for it. The real issuance
/// repeats the checks.
fn precheck_csrs(req: &CheckedRequest, opts: &csr::IssueOptions) -> Result<()> {
    if !req.items.iter().any(|i| i.kind == Kind::Csr) {
        return Ok(());
    }
    let key = crate::keys::FileKey::from_pkcs8(
        &KeyType::EcP256.generate()?,
        Path::new("throwaway issuer"),
    )?;
    let spec = x509::CertSpec {
        subject: x509::Subject {
            common_name: "offline CSR check".into(),
            ..Default::default()
        },
        ca: true,
        not_before: opts.not_before,
        days: opts.days.saturating_add(1),
        key_usage: vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ],
        eku: vec![],
    };
    let cert = x509::issue(&spec, &key, None)?;
    let id = Identity {
        signer: Box::new(key),
        cert,
        chain: vec![],
    };
    let issuer = csr::Issuer::new(&id, opts)?;
    par::map(req.items.len(), par::cores(), |i| {
        let it = &req.items[i];
        if it.kind != Kind::Csr {
            return Ok(());
        }
        let c = csr::CsrFile {
            path: it.artifact.clone(),
            der: it.tbs.clone(),
        };
        csr::issue(&c, &issuer, opts).map(|_| ())
    })?;
    Ok(())
}

impl Signing {
    pub fn summary(&self) -> Summary {
        let roles = self
            .req
            .roles
            .values()
            .map(|r| {
                let mut counts = BTreeMap::new();
                for it in self.req.items.iter().filter(|i| i.role == r.name) {
                    *counts.entry(it.kind).or_insert(0) += 1;
                }
                let l = &self.keys[&r.name];
                RoleSummary {
                    role: r.name.clone(),
                    counts,
                    subject: r.subject.clone(),
                    key_type: r.key_type.to_string(),
                    cert_sha256: r.cert_sha256.clone(),
                    key_sha256: sha256(&r.public_key),
                    key: l.id.signer.origin(),
                    sessions: 1 + l.extra.len(),
                }
            })
            .collect();
        let pcr_keys = self
            .req
            .pcr_keys
            .values()
            .map(|k| {
                let ukis: Vec<&UkiChecked> = self
                    .req
                    .items
                    .iter()
                    .filter_map(|i| match &i.params {
                        Params::Uki(u) if u.pcr_role == k.name => Some(u.as_ref()),
                        _ => None,
                    })
                    .collect();
                PcrKeySummary {
                    name: k.name.clone(),
                    ukis: ukis.len(),
                    policies: ukis.iter().map(|u| u.banks.len() * u.phases.len()).sum(),
                    key_type: k.key_type.to_string(),
                    key_sha256: pcr::key_fingerprint(&k.public.key_bits),
                    key: self.pcr[&k.name].origin(),
                }
            })
            .collect();
        Summary {
            request_sha256: self.req.sha256.clone(),
            items: self.req.items.len(),
            roles,
            pcr_keys,
        }
    }

    /// Sign every item. Each signature is checked against the certificate
    /// before the response is made.
    pub fn sign(self) -> Result<Response> {
        let n = self.req.items.len();
        // The policies first, one UKI after another on the PCR key: each
        // UKI's image signature covers the .pcrsig they make.
        let mut ukis: Vec<Option<UkiSigned>> = vec![None; n];
        for (i, it) in self.req.items.iter().enumerate() {
            if let Params::Uki(u) = &it.params {
                let key = self.pcr[&u.pcr_role].as_ref();
                ukis[i] = Some(uki_signed(u, &self.req.roles[&it.role], key, &it.artifact)?);
            }
        }
        let ukis = &ukis;
        let out: Mutex<Vec<Option<Result<Vec<u8>>>>> = Mutex::new((0..n).map(|_| None).collect());
        let stop = AtomicBool::new(false);
        // Per role: its items, and the next one to hand out.
        let work: Vec<(&Loaded, Vec<usize>, AtomicUsize)> = self
            .keys
            .iter()
            .map(|(name, l)| {
                let todo = (0..n)
                    .filter(|&i| &self.req.items[i].role == name)
                    .collect();
                (l, todo, AtomicUsize::new(0))
            })
            .collect();
        std::thread::scope(|s| {
            for (l, todo, next) in &work {
                let signers: Vec<&dyn Signer> = std::iter::once(l.id.signer.as_ref())
                    .chain(l.extra.iter().map(|b| b.as_ref()))
                    .collect();
                // File keys sign on every core from one key.
                let threads = if l.extra.is_empty() {
                    par::cores().min(todo.len()).max(1)
                } else {
                    signers.len()
                };
                for t in 0..threads {
                    let signer = signers[t % signers.len()];
                    let (out, stop) = (&out, &stop);
                    let (req, id, csr_opts) = (&self.req, &l.id, &self.csr_opts);
                    s.spawn(move || loop {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&i) = todo.get(k) else { break };
                        let tbs = ukis[i].as_ref().map(|u| u.tbs.as_slice());
                        let r = sign_item(req, i, signer, id, csr_opts, tbs);
                        if r.is_err() {
                            stop.store(true, Ordering::Relaxed);
                        }
                        out.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                    });
                }
            }
        });
        let mut results = vec![];
        let mut first_err = None;
        for (i, r) in out
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_iter()
            .enumerate()
        {
            match r {
                Some(Ok(v)) => {
                    let csr = self.req.items[i].kind == Kind::Csr;
                    results.push(Signed {
                        id: i as u64,
                        signature: (!csr).then(|| crate::codec::hex(&v)),
                        certificate: csr.then(|| crate::codec::hex(&v)),
                        pcr_signatures: ukis[i].as_ref().map(|u| {
                            u.pcr_signatures
                                .iter()
                                .map(|s| crate::codec::hex(s))
                                .collect()
                        }),
                    });
                }
                Some(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                None => {}
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        if results.len() != n {
            return Err(Error::Internal("not every item was signed".into()));
        }
        let signers = self
            .req
            .roles
            .iter()
            .map(|(name, r)| {
                (
                    name.clone(),
                    SignerNote {
                        cert_sha256: r.cert_sha256.clone(),
                        key: self.keys[name].id.signer.origin(),
                    },
                )
            })
            .collect();
        Ok(Response {
            format: RESPONSE_FORMAT.into(),
            version: VERSION,
            request_sha256: self.req.sha256.clone(),
            request: self.req.request,
            signers,
            results,
        })
    }
}

/// Sign item `i`: its `tbs`, or for a `uki` item `derived_tbs`.
fn sign_item(
    req: &CheckedRequest,
    i: usize,
    signer: &dyn Signer,
    id: &Identity,
    csr_opts: &csr::IssueOptions,
    derived_tbs: Option<&[u8]>,
) -> Result<Vec<u8>> {
    let it = &req.items[i];
    let role = &req.roles[&it.role];
    let Some(scheme) = it.scheme else {
        // csr: issue the certificate here, under the signing host's rules.
        let issuer = csr::Issuer::new(id, csr_opts)?;
        let c = csr::CsrFile {
            path: it.artifact.clone(),
            der: it.tbs.clone(),
        };
        return Ok(csr::issue(&c, &issuer, csr_opts)?.der);
    };
    let tbs = derived_tbs.unwrap_or(&it.tbs);
    let sig = signer.sign(scheme, tbs)?;
    let cert = x509::parse(&role.cert, &it.artifact)?;
    sigalg::verify(cert.public_key(), scheme, tbs, &sig).map_err(|e| {
        Error::Crypto(format!(
            "item {i} ({}): the key's signature does not verify with the certificate: {e}",
            it.artifact.display()
        ))
    })?;
    Ok(sig)
}

// ---------------------------------------------------------------------------
// 3. complete (build host)

pub struct CompleteOptions {
    pub response: PathBuf,
    /// The request as the build host kept it: the response must answer it.
    pub request: Option<PathBuf>,
    /// Write completed artifacts here instead of in place.
    pub out_dir: Option<PathBuf>,
    /// Trust anchors to verify with instead of the request's.
    pub trust: Vec<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Completed,
    /// An earlier run completed it already.
    AlreadyComplete,
}

#[derive(Clone, Debug, Serialize)]
pub struct ItemReport {
    pub id: usize,
    pub kind: Kind,
    pub role: String,
    pub artifact: PathBuf,
    pub outputs: Vec<PathBuf>,
    pub status: Status,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompleteReport {
    pub request_sha256: String,
    pub items: Vec<ItemReport>,
    pub completed: usize,
    pub already_complete: usize,
}

/// Where an item's artifact is: where the request saw it, else next to the response.
fn locate(it: &CheckedItem, base: &Path) -> PathBuf {
    let mut c = vec![it.artifact_abs.clone()];
    if it.artifact.is_relative() {
        c.push(base.join(&it.artifact));
    }
    if let Some(n) = it.artifact.file_name() {
        c.push(base.join(n));
    }
    c.iter()
        .find(|p| p.symlink_metadata().is_ok())
        .cloned()
        .unwrap_or_else(|| it.artifact_abs.clone())
}

/// The files an item writes: for `pe` the image, `efivar` NAME.auth,
/// `csr` NAME.cert, `guestos` NAME.cert and NAME.sig (and NAME.conf with --out-dir).
fn outputs(kind: Kind, src: &Path, out_dir: Option<&Path>) -> Result<Vec<PathBuf>> {
    let name = src
        .file_name()
        .ok_or_else(|| Error::input(src, "not a file name"))?;
    let at = |p: PathBuf| match out_dir {
        Some(d) => d.join(p.file_name().unwrap_or(name)),
        None => p,
    };
    Ok(match kind {
        Kind::Pe | Kind::Uki => vec![at(src.to_path_buf())],
        Kind::Efivar => vec![at(src.with_extension("auth"))],
        Kind::Csr => vec![at(src.with_extension("cert"))],
        Kind::Guestos => {
            let mut v = vec![
                at(guestos::GuestOsConfig::sibling(src, "cert")),
                at(guestos::GuestOsConfig::sibling(src, "sig")),
            ];
            if out_dir.is_some() {
                v.push(at(src.to_path_buf()));
            }
            v
        }
    })
}

fn changed(path: &Path, now: &str, want: &str) -> Error {
    Error::Verify(format!(
        "{}: changed since the request was made (sha256 {now}, the request recorded {want}); refusing",
        path.display()
    ))
}

/// What completing one item leaves to publish.
enum Done {
    Already,
    Staged(Vec<Staged>),
}

struct Job<'a> {
    it: &'a CheckedItem,
    role: &'a Role,
    anchors: &'a [Vec<u8>],
    result: &'a [u8],
    /// `uki`: the PCR key and what the response's signatures make.
    uki: Option<(&'a PcrKey, &'a UkiSigned)>,
    src: PathBuf,
    outs: Vec<PathBuf>,
}

impl Job<'_> {
    fn replay(&self) -> Result<Replay<'_>> {
        let scheme = self
            .it
            .scheme
            .ok_or_else(|| Error::Crypto("no scheme".into()))?;
        Ok(Replay {
            role: self.role,
            scheme,
            tbs: &self.it.tbs,
            signature: self.result,
            what: self.it.artifact.to_str().unwrap_or("item"),
        })
    }

    fn run(&self) -> Result<Done> {
        match &self.it.params {
            Params::Pe {
                digest,
                signing_time,
                existing,
                drop_signers,
            } => self.pe(digest, *signing_time, *existing, drop_signers),
            Params::Efivar {
                var,
                append,
                time,
                data,
            } => self.efivar(*var, *append, *time, data),
            Params::Guestos => self.guestos(),
            Params::Csr => self.csr(),
            Params::Uki(u) => self.uki(u),
        }
    }

    fn pe_trust(&self) -> Trust {
        Trust {
            certs: self
                .anchors
                .iter()
                .map(|a| ("production trust anchor".to_string(), a.clone()))
                .collect(),
            ..Trust::default()
        }
    }

    /// `path` is the image the request was for (`digest`), carries `p7`,
    /// and verifies, `p7` valid and trusted: one pass over the image.
    fn pe_verifies(&self, path: &Path, p7: &[u8], digest: &[u8; 32]) -> Result<()> {
        let failed = |m: &str| Error::Verify(m.to_string());
        let entries = PeImage::open(path)?.pkcs7_signatures()?;
        let i = entries
            .iter()
            .position(|e| e == p7)
            .ok_or_else(|| failed("the offline signature is not in the image"))?;
        let report = image::verify(path, &self.pe_trust())?;
        if report.digest != crate::codec::hex(digest) {
            return Err(failed(&format!(
                "Authenticode digest {} is not the request's {}",
                report.digest,
                crate::codec::hex(digest)
            )));
        }
        let r = report
            .signatures
            .get(i)
            .ok_or_else(|| failed("signature missing"))?;
        if !(r.valid && r.trusted_by.is_some() && !r.revoked && report.ok) {
            let mut p = r.problems.clone();
            if p.is_empty() {
                p.push("not trusted by the production anchors".into());
            }
            return Err(failed(&p.join("; ")));
        }
        Ok(())
    }

    fn pe(
        &self,
        digest: &[u8; 32],
        signing_time: Option<OffsetDateTime>,
        existing: Existing,
        drop: &[String],
    ) -> Result<Done> {
        // The signature as the image will carry it; the replay refuses
        // unless authenticode derives exactly the bytes that were signed.
        let replay = self.replay()?;
        let p7 = authenticode::sign_digest(
            digest,
            &authenticode::SignOptions {
                signer: &replay,
                cert: &self.role.cert,
                chain: &self.role.chain,
                signing_time,
            },
        )?;
        let dest = &self.outs[0];
        if dest.exists() && self.pe_verifies(dest, &p7, digest).is_ok() {
            return Ok(Done::Already);
        }
        let img = PeImage::open(&self.src)?;
        // Both hashes at once: the file's on another thread (page cache).
        let (now, d) = std::thread::scope(|s| {
            let f = s.spawn(|| plan::sha256_file(&self.src));
            let d = img.digest();
            (
                f.join()
                    .unwrap_or_else(|_| Err(Error::Internal("hash thread panicked".into()))),
                d,
            )
        });
        let (now, d) = (now?, d?);
        if now != self.it.artifact_sha256 {
            return Err(changed(&self.src, &now, &self.it.artifact_sha256));
        }
        if d.sha256 != *digest {
            return Err(Error::Verify(format!(
                "{}: Authenticode digest {} is not the request's {}; refusing",
                self.src.display(),
                d.hex(),
                crate::codec::hex(digest)
            )));
        }
        let mut sigs = kept_signatures(&img, &self.src, existing, drop)?;
        sigs.push(p7.clone());
        fsutil::remove_stale_temps(dest);
        let staged = img.stage_signed(&d, &sigs, dest)?;
        self.pe_verifies(staged.tmp(), &p7, digest)
            .map_err(|e| e.not_verified(&self.src, "the completed image"))?;
        Ok(Done::Staged(vec![staged]))
    }

    /// A UKI: the new `.pcrpkey` and `.pcrsig` in a copy of the artifact,
    /// then the image signature, checked as firmware and the TPM would.
    fn uki(&self, u: &UkiChecked) -> Result<Done> {
        let (key, done) = self
            .uki
            .ok_or_else(|| Error::Internal("uki item without its policies".into()))?;
        let replay = Replay {
            tbs: &done.tbs,
            ..self.replay()?
        };
        let p7 = authenticode::sign_digest(
            &done.digest,
            &authenticode::SignOptions {
                signer: &replay,
                cert: &self.role.cert,
                chain: &self.role.chain,
                signing_time: u.signing_time,
            },
        )?;
        let dest = &self.outs[0];
        if dest.exists()
            && self.pe_verifies(dest, &p7, &done.digest).is_ok()
            && uki::check_pcr_policy(dest, &key.public.key_bits).is_ok()
        {
            return Ok(Done::Already);
        }
        // The artifact as the request saw it, and what the request derived
        // from it, derived again.
        let rp = repolicy::plan(&self.src, &key.public.spki_der)?;
        let now = crate::codec::hex(&rp.file_sha256);
        if now != self.it.artifact_sha256 {
            return Err(changed(&self.src, &now, &self.it.artifact_sha256));
        }
        if rp.digests != u.digests
            || rp.prefix != u.prefix
            || rp.zeros_after != u.zeros_after
            || rp.banks != u.banks
            || rp.phases != u.phases
        {
            return Err(Error::Verify(format!(
                "{}: its sections or layout are not what the request was made from; refusing",
                self.src.display()
            )));
        }
        let img = PeImage::open(&self.src)?;
        if u.existing == Existing::Refuse
            && !kept_signatures(&img, &self.src, Existing::Append, &u.drop_signers)?.is_empty()
        {
            return Err(Error::input(
                &self.src,
                "signed by others since the request was made; refusing",
            ));
        }
        let mut staged = rp.stage(&self.src, dest, &done.pcrsig)?;
        let img = PeImage::open(staged.tmp())?;
        let d = img.digest()?;
        if d.sha256 != done.digest {
            return Err(Error::Verify(format!(
                "{}: the new image's Authenticode digest {} is not the one signed ({}); refusing",
                self.src.display(),
                d.hex(),
                crate::codec::hex(&done.digest)
            )));
        }
        img.write_signed_in_place(&d, std::slice::from_ref(&p7))?;
        let verified = self
            .pe_verifies(staged.tmp(), &p7, &done.digest)
            .and_then(|()| uki::check_pcr_policy(staged.tmp(), &key.public.key_bits));
        verified.map_err(|e| e.not_verified(&self.src, "the completed UKI"))?;
        staged.sync()?;
        Ok(Done::Staged(vec![staged]))
    }

    fn efivar(&self, var: SecureVar, append: bool, time: EfiTime, data: &[u8]) -> Result<Done> {
        let replay = self.replay()?;
        let auth = efivar::sign_auth(
            var,
            append,
            time,
            data,
            &replay,
            &self.role.cert,
            &self.role.chain,
        )?;
        let dest = &self.outs[0];
        if fs::read(dest).is_ok_and(|b| b == auth) && self.auth_verifies(&auth, var, append).is_ok()
        {
            return Ok(Done::Already);
        }
        let now = fsutil::read_input(&self.src, InputKind::Esl)?;
        let h = sha256(&now);
        if h != self.it.artifact_sha256 {
            return Err(changed(&self.src, &h, &self.it.artifact_sha256));
        }
        self.auth_verifies(&auth, var, append)
            .map_err(|e| e.not_verified(dest, "the completed update"))?;
        Ok(Done::Staged(vec![Staged::with_data(
            dest,
            fsutil::tag::TMP,
            fsutil::PUBLIC_MODE,
            &auth,
        )?]))
    }

    /// As `efivar verify --var V --cert ANCHOR` decides.
    fn auth_verifies(&self, auth: &[u8], var: SecureVar, append: bool) -> Result<()> {
        let v = efivar::verify_auth(auth, &self.outs[0], Some((var, append)), self.anchors)?;
        if v.ok {
            Ok(())
        } else {
            Err(Error::Verify(v.problems.join("; ")))
        }
    }

    fn guestos(&self) -> Result<Done> {
        let mut pem = x509::pem_cert(&self.role.cert);
        for c in &self.role.chain {
            pem.push_str(&x509::pem_cert(c));
        }
        let (cert_out, sig_out) = (&self.outs[0], &self.outs[1]);
        let conf_out = self.outs.get(2).unwrap_or(&self.src);
        let already = fs::read(sig_out).is_ok_and(|b| b == self.result)
            && fs::read(cert_out).is_ok_and(|b| b == pem.as_bytes())
            && plan::sha256_file(conf_out).is_ok_and(|h| h == self.it.artifact_sha256)
            && self.guestos_verifies(conf_out).is_ok();
        if already {
            return Ok(Done::Already);
        }
        let bytes = fsutil::read_input(&self.src, InputKind::GuestosConf)?;
        let h = sha256(&bytes);
        if h != self.it.artifact_sha256 || bytes != self.it.tbs {
            return Err(changed(&self.src, &h, &self.it.artifact_sha256));
        }
        // Verify the three files together, as cml will read them, before
        // any of them is published.
        let name = self
            .src
            .file_name()
            .ok_or_else(|| Error::input(&self.src, "not a file name"))?;
        let staging = fsutil::parent_dir(sig_out).join(format!(
            ".{}.offline.d.{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&staging);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .at(&staging)?;
        let conf = staging.join(name);
        let checked = (|| {
            fsutil::write_new(&conf, &bytes, fsutil::PUBLIC_MODE)?;
            fsutil::write_new(
                &guestos::GuestOsConfig::sibling(&conf, "sig"),
                self.result,
                fsutil::PUBLIC_MODE,
            )?;
            fsutil::write_new(
                &guestos::GuestOsConfig::sibling(&conf, "cert"),
                pem.as_bytes(),
                fsutil::PUBLIC_MODE,
            )?;
            self.guestos_verifies(&conf)
                .map_err(|e| e.not_verified(&self.src, "the completed manifest"))
        })();
        let _ = fs::remove_dir_all(&staging);
        checked?;
        let mut staged = vec![
            Staged::with_data(
                cert_out,
                fsutil::tag::TMP,
                fsutil::PUBLIC_MODE,
                pem.as_bytes(),
            )?,
            Staged::with_data(sig_out, fsutil::tag::TMP, fsutil::PUBLIC_MODE, self.result)?,
        ];
        if let Some(c) = self.outs.get(2) {
            let mode = fs::metadata(&self.src).at(&self.src)?.permissions().mode() & 0o777;
            staged.push(Staged::with_data(c, fsutil::tag::TMP, mode, &bytes)?);
        }
        Ok(Done::Staged(staged))
    }

    fn guestos_verifies(&self, conf: &Path) -> Result<()> {
        let r = guestos::verify(
            conf,
            &guestos::VerifyOptions {
                trust: self.anchors,
                images: None,
                check_time: true,
            },
        )?;
        if !r.ok {
            return Err(Error::Verify(r.problems.join("; ")));
        }
        Ok(())
    }

    fn csr(&self) -> Result<Done> {
        let cert = self.result;
        let mut file = x509::pem_cert(cert);
        let issuer = x509::parse(&self.role.cert, &self.src)?;
        if issuer.subject() != issuer.issuer() {
            file.push_str(&x509::pem_cert(&self.role.cert));
        }
        for c in &self.role.chain {
            file.push_str(&x509::pem_cert(c));
        }
        let dest = &self.outs[0];
        if fs::read(dest).is_ok_and(|b| b == file.as_bytes()) && self.cert_verifies().is_ok() {
            return Ok(Done::Already);
        }
        let bytes = fsutil::read_input(&self.src, InputKind::Csr)?;
        let h = sha256(&bytes);
        if h != self.it.artifact_sha256 {
            return Err(changed(&self.src, &h, &self.it.artifact_sha256));
        }
        if csr::CsrFile::read(&self.src)?.der != self.it.tbs {
            return Err(changed(&self.src, &h, &self.it.artifact_sha256));
        }
        self.cert_verifies()
            .map_err(|e| e.not_verified(&self.src, "the issued certificate"))?;
        Ok(Done::Staged(vec![Staged::with_data(
            dest,
            fsutil::tag::TMP,
            fsutil::PUBLIC_MODE,
            file.as_bytes(),
        )?]))
    }

    /// The certificate is for the CSR's key, is no CA, was issued by the
    /// role's certificate, and chains to a root of the anchors as `openssl
    /// verify` checks it.
    fn cert_verifies(&self) -> Result<()> {
        let cert = x509::parse(self.result, &self.src)?;
        let (_, req) = X509CertificationRequest::from_der(&self.it.tbs)
            .map_err(|e| Error::input(&self.src, format!("the CSR: {e}")))?;
        if cert.public_key().raw != req.certification_request_info.subject_pki.raw {
            return Err(Error::Verify(
                "the certificate is not for the CSR's key".into(),
            ));
        }
        if x509::is_ca(&cert) {
            return Err(Error::Verify("the certificate is a CA".into()));
        }
        let issuer = x509::parse(&self.role.cert, &self.src)?;
        x509::verify_signed_by(&cert, &issuer)
            .map_err(|e| Error::Verify(format!("not issued by the role's certificate: {e}")))?;
        let carried: Vec<Vec<u8>> = std::iter::once(self.role.cert.clone())
            .chain(self.role.chain.iter().cloned())
            .collect();
        chain::build(
            self.result,
            &carried,
            self.anchors,
            &chain::Rules::root(Some(OffsetDateTime::now_utc())),
        )
        .map(|_| ())
        .map_err(Error::Verify)
    }
}

/// Complete every item of a response: check, attach, verify, write.
/// Everything is checked and staged before anything is renamed into place,
/// so a refused item leaves every artifact as it was; items an earlier run
/// completed are left alone.
pub fn complete(opts: &CompleteOptions) -> Result<CompleteReport> {
    let resp = read_response(&opts.response)?;
    if let Some(rp) = &opts.request {
        let mine = read_request(rp)?;
        if mine.sha256 != resp.request.sha256 {
            return Err(Error::input(
                &opts.response,
                format!(
                    "answers request {}, not {} ({}); refusing",
                    resp.request.sha256,
                    rp.display(),
                    mine.sha256
                ),
            ));
        }
    }
    let mut trust_override = vec![];
    for t in &opts.trust {
        trust_override.extend(x509::read_certs(t)?);
    }
    let req = &resp.request;
    let base = fsutil::parent_dir(&plan::absolute(&opts.response)?);
    if let Some(d) = &opts.out_dir {
        fs::create_dir_all(d).at(d)?;
    }
    let mut jobs = vec![];
    let mut seen = HashSet::new();
    for (i, it) in req.items.iter().enumerate() {
        let src = locate(it, &base);
        let outs = outputs(it.kind, &src, opts.out_dir.as_deref())?;
        for o in &outs {
            let abs = plan::absolute(o)?;
            if !seen.insert(abs) {
                return Err(Error::Usage(format!(
                    "{}: two items would be written here (same file name?)",
                    o.display()
                )));
            }
        }
        let role = &req.roles[&it.role];
        let uki = match (&it.params, &resp.ukis[i]) {
            (Params::Uki(u), Some(done)) => Some((&req.pcr_keys[&u.pcr_role], done)),
            _ => None,
        };
        jobs.push(Job {
            it,
            role,
            uki,
            anchors: if trust_override.is_empty() {
                &role.trust
            } else {
                &trust_override
            },
            result: &resp.results[i],
            src,
            outs,
        });
    }
    let done = par::map(jobs.len(), par::cores(), |i| jobs[i].run())?;
    let mut staged = vec![];
    let mut items = vec![];
    for (i, d) in done.into_iter().enumerate() {
        let j = &jobs[i];
        let status = match d {
            Done::Already => Status::AlreadyComplete,
            Done::Staged(s) => {
                staged.extend(s);
                Status::Completed
            }
        };
        items.push(ItemReport {
            id: i,
            kind: j.it.kind,
            role: j.it.role.clone(),
            artifact: j.src.clone(),
            outputs: j.outs.clone(),
            status,
        });
    }
    fsutil::publish(staged)?;
    let completed = items
        .iter()
        .filter(|i| i.status == Status::Completed)
        .count();
    Ok(CompleteReport {
        request_sha256: req.sha256.clone(),
        already_complete: items.len() - completed,
        completed,
        items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::FileKey;

    fn role() -> (FileKey, Role) {
        let k =
            FileKey::from_pkcs8(&KeyType::Rsa(2048).generate().unwrap(), Path::new("k")).unwrap();
        let spec = x509::CertSpec {
            subject: x509::Subject {
                common_name: "signer".into(),
                ..Default::default()
            },
            ca: true,
            not_before: OffsetDateTime::now_utc().replace_nanosecond(0).unwrap(),
            days: 30,
            key_usage: vec![rcgen::KeyUsagePurpose::DigitalSignature],
            eku: vec![],
        };
        let cert = x509::issue(&spec, &k, None).unwrap();
        let rc = RoleCerts {
            cert_sha256: crate::codec::sha256_hex(&cert),
            cert: crate::codec::hex(&cert),
            chain: vec![],
            trust: vec![crate::codec::hex(&cert)],
        };
        (k, check_role("ssig_subca", &rc, Path::new("r")).unwrap())
    }

    fn pe_request(role: &Role, digest: [u8; 32]) -> Request {
        let (s, tbs) = pe_tbs(role, &digest, None).unwrap();
        Request {
            format: REQUEST_FORMAT.into(),
            version: VERSION,
            roles: [(
                role.name.clone(),
                RoleCerts {
                    cert_sha256: role.cert_sha256.clone(),
                    cert: crate::codec::hex(&role.cert),
                    chain: vec![],
                    trust: vec![crate::codec::hex(&role.cert)],
                },
            )]
            .into_iter()
            .collect(),
            pcr_keys: BTreeMap::new(),
            items: vec![Item {
                id: 0,
                kind: Kind::Pe,
                role: role.name.clone(),
                artifact: "a.efi".into(),
                artifact_abs: "/b/a.efi".into(),
                artifact_sha256: "1".repeat(64),
                scheme: Some(s.id()),
                tbs: crate::codec::hex(&tbs),
                pe: Some(PeParams {
                    authenticode_sha256: crate::codec::hex(&digest),
                    signing_time: None,
                    existing: "refuse".into(),
                    drop_signers: vec![],
                }),
                efivar: None,
                uki: None,
            }],
        }
    }

    #[test]
    fn strict_hex() {
        let p = Path::new("x");
        assert_eq!(unhex("00ff", 2, p, "f").unwrap(), vec![0, 255]);
        for bad in ["0", "0F", "zz", " 00", "00 ", "+0"] {
            assert!(unhex(bad, 8, p, "f").is_err(), "{bad}");
        }
        assert!(unhex("000000", 2, p, "f").is_err());
    }

    #[test]
    fn a_request_round_trips_and_tampering_is_refused() {
        let (k, role) = role();
        let req = pe_request(&role, [7u8; 32]);
        let bytes = serde_json::to_vec(&req).unwrap();
        let c = parse_request(&bytes, Path::new("r")).unwrap();
        assert_eq!(c.items[0].tbs, pe_tbs(&role, &[7u8; 32], None).unwrap().1);

        // Another digest with the old tbs: not what the fields give.
        let mut t = req.clone();
        t.items[0].pe.as_mut().unwrap().authenticode_sha256 = crate::codec::hex(&[8u8; 32]);
        let e = check_request(t, Path::new("r")).unwrap_err().to_string();
        assert!(e.contains("tbs is not what"), "{e}");
        // Unknown fields, kinds, schemes, uppercase hex.
        let text = String::from_utf8(bytes).unwrap();
        for (from, to) in [
            ("\"version\":1", "\"version\":1,\"extra\":0"),
            ("\"kind\":\"pe\"", "\"kind\":\"elf\""),
            ("rsa-pkcs1-sha256", "rsa-pkcs1-md5"),
            ("\"version\":1", "\"version\":2"),
        ] {
            let t = text.replacen(from, to, 1);
            assert_ne!(t, text);
            assert!(parse_request(t.as_bytes(), Path::new("r")).is_err(), "{to}");
        }
        let mut t = req.clone();
        t.items[0].tbs = t.items[0].tbs.to_uppercase();
        assert!(check_request(t, Path::new("r")).is_err());

        // A replayed signature only fits the bytes it was made for.
        let (s, tbs) = pe_tbs(&role, &[7u8; 32], None).unwrap();
        let sig = k.sign(s, &tbs).unwrap();
        let replay = Replay {
            role: &role,
            scheme: s,
            tbs: &tbs,
            signature: &sig,
            what: "a.efi",
        };
        let opts = |signer| authenticode::SignOptions {
            signer,
            cert: &role.cert,
            chain: &[],
            signing_time: None,
        };
        let p7 = authenticode::sign_digest(&[7u8; 32], &opts(&replay)).unwrap();
        let parsed = authenticode::parse(&p7, Path::new("p7")).unwrap();
        authenticode::verify_signature(&parsed, &[7u8; 32]).unwrap();
        assert_eq!(
            p7,
            authenticode::sign_digest(&[7u8; 32], &opts(&k)).unwrap()
        );
        assert!(authenticode::sign_digest(&[8u8; 32], &opts(&replay)).is_err());
    }
}
