//! Device certificates: checking PKCS#10 CSRs and issuing TLS client
//! certificates for them from a Device Sub CA.
//!
//! A device generates its key where it never leaves (TPM, secure element) and
//! hands out a CSR. Before anything is issued, the CSR's self-signature must
//! verify (proof that the requester holds the key) and it must not ask for CA
//! powers. The issued certificate copies the subject attributes and the
//! subjectAltName types the profile allows (see [`ProfileRules`]); names with
//! control or invisible characters are refused. Everything else (CA:false,
//! key usages, EKU clientAuth, validity) is decided here, never by the
//! requester.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{DistinguishedName, DnType, DnValue};
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension, X509Extension};
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, DirLock, PUBLIC_MODE};
use crate::identity::Identity;
use crate::oid::{self, ObjectIdentifier};
use crate::par;
use crate::sigalg::{alg_name, KeyInfo, KeyKind};
use crate::x509;

/// A CSR read into memory (DER), remembered with the file it came from.
pub struct CsrFile {
    pub path: PathBuf,
    pub der: Vec<u8>,
}

impl CsrFile {
    /// Read a CSR in PEM (`CERTIFICATE REQUEST`, or the older `NEW CERTIFICATE
    /// REQUEST`) or DER. Exactly one request per file.
    pub fn read(path: &Path) -> Result<CsrFile> {
        let bytes = fsutil::read_input(path, fsutil::InputKind::Csr)?;
        let der = if bytes.windows(10).any(|w| w == b"-----BEGIN") {
            let mut reqs: Vec<Vec<u8>> = pem::parse_many(&bytes)
                .map_err(|e| Error::input(path, format!("bad PEM: {e}")))?
                .into_iter()
                .filter(|p| {
                    p.tag() == "CERTIFICATE REQUEST" || p.tag() == "NEW CERTIFICATE REQUEST"
                })
                .map(|p| p.into_contents())
                .collect();
            match reqs.len() {
                1 => reqs.remove(0),
                0 => return Err(Error::input(path, "no CERTIFICATE REQUEST in file")),
                n => {
                    return Err(Error::input(
                        path,
                        format!("{n} certificate requests in one file; give one per file"),
                    ))
                }
            }
        } else {
            bytes
        };
        let csr = CsrFile {
            path: path.to_path_buf(),
            der,
        };
        csr.parse()?;
        Ok(csr)
    }

    fn parse(&self) -> Result<X509CertificationRequest<'_>> {
        let req = match X509CertificationRequest::from_der(&self.der) {
            Ok(([], r)) => r,
            Ok(_) => return Err(self.err("trailing bytes after the certificate request")),
            Err(e) => return Err(self.err(format!("not a PKCS#10 certificate request: {e}"))),
        };
        if req.certification_request_info.version.0 != 0 {
            return Err(self.err(format!(
                "unsupported certificate request version {}",
                req.certification_request_info.version.0 + 1
            )));
        }
        Ok(req)
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::input(&self.path, msg)
    }
}

/// The kind of the key `info` describes, or why we do not certify it.
fn device_key(info: &KeyInfo) -> std::result::Result<KeyKind, String> {
    match (info.algorithm.as_str(), info.kind, info.bits, &info.curve) {
        // Keys restricted to PSS: no device stack we target uses them for TLS.
        ("RSA-PSS", ..) => {
            Err("RSA-PSS-restricted key (id-RSASSA-PSS) is not supported; use rsaEncryption".into())
        }
        (_, Some(KeyKind::Rsa), Some(bits), _) if !(2048..=8192).contains(&bits) => {
            Err(format!("RSA key of {bits} bits (supported: 2048 to 8192)"))
        }
        (_, Some(k), ..) => Ok(k),
        ("RSA", ..) => Err("malformed RSA public key".into()),
        ("EC", _, _, Some(c)) => Err(format!("EC curve {c} (supported: P-256, P-384)")),
        ("EC", ..) => Err("EC key without a named curve".into()),
        (a, ..) => Err(format!(
            "key algorithm {a} (supported: RSA, EC P-256, EC P-384)"
        )),
    }
}

/// The subject attribute named so in `SUBJECT_ATTRS`, or the dotted OID.
fn attr_name(o: &x509_parser::oid_registry::Oid<'_>) -> String {
    let known = oid::of(o).and_then(|o| SUBJECT_ATTRS.iter().find(|(_, x)| *x == o));
    known.map_or_else(|| o.to_id_string(), |(n, _)| n.to_string())
}

fn ext_name(o: &x509_parser::oid_registry::Oid<'_>) -> String {
    const NAMES: &[(ObjectIdentifier, &str)] = &[
        (oid::BASIC_CONSTRAINTS, "basicConstraints"),
        (oid::KEY_USAGE, "keyUsage"),
        (oid::EXT_KEY_USAGE, "extendedKeyUsage"),
        (oid::SUBJECT_ALT_NAME, "subjectAltName"),
        (oid::SUBJECT_KEY_ID, "subjectKeyIdentifier"),
        (oid::AUTHORITY_KEY_ID, "authorityKeyIdentifier"),
        (oid::CERTIFICATE_POLICIES, "certificatePolicies"),
        (oid::NAME_CONSTRAINTS, "nameConstraints"),
    ];
    let known = oid::of(o).and_then(|o| NAMES.iter().find(|(x, _)| *x == o));
    known.map_or_else(|| o.to_id_string(), |(_, n)| n.to_string())
}

/// The arcs of `o`, as rcgen takes OIDs.
fn arcs(o: ObjectIdentifier) -> Vec<u64> {
    o.arcs().map(u64::from).collect()
}

fn ip_text(b: &[u8]) -> String {
    match b.len() {
        4 => std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => crate::codec::hex(b),
    }
}

/// A GeneralName as openssl prints it, or an error for names nobody can use.
fn general_name_text(g: &GeneralName<'_>) -> std::result::Result<String, String> {
    Ok(match g {
        GeneralName::DNSName(s) => format!("DNS:{s}"),
        GeneralName::RFC822Name(s) => format!("email:{s}"),
        GeneralName::URI(s) => format!("URI:{s}"),
        GeneralName::IPAddress(b) if b.len() == 4 || b.len() == 16 => {
            format!("IP Address:{}", ip_text(b))
        }
        GeneralName::DirectoryName(n) => format!("DirName:{n}"),
        GeneralName::RegisteredID(o) => format!("Registered ID:{o}"),
        GeneralName::OtherName(o, _) => format!("othername:{o}"),
        GeneralName::X400Address(_) => "X400Name:<unsupported>".into(),
        GeneralName::EDIPartyName(_) => "EdiPartyName:<unsupported>".into(),
        GeneralName::IPAddress(b) => return Err(format!("IP address of {} bytes", b.len())),
        GeneralName::Invalid(tag, _) => return Err(format!("invalid name (tag {})", tag.0)),
    })
}

/// The extensions a CSR asks for, in order. Several extensionRequest
/// attributes or repeated extensions are ambiguous, so they are refused.
fn requested_extensions<'a>(
    req: &'a X509CertificationRequest<'a>,
) -> std::result::Result<Vec<&'a X509Extension<'a>>, String> {
    let mut out = vec![];
    let mut seen_attr = false;
    for attr in req.certification_request_info.iter_attributes() {
        if let ParsedCriAttribute::ExtensionRequest(er) = attr.parsed_attribute() {
            if seen_attr {
                return Err("more than one extensionRequest attribute".into());
            }
            seen_attr = true;
            out.extend(er.extensions.iter());
        }
    }
    let mut oids = HashSet::new();
    for e in &out {
        if !oids.insert(&e.oid) {
            return Err(format!("requests extension {} twice", ext_name(&e.oid)));
        }
    }
    Ok(out)
}

/// One requested extension, described for `csr show`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RequestedExtension {
    pub name: String,
    pub oid: String,
    pub critical: bool,
    pub value: String,
    /// Whether `csr sign` copies it into the certificate (only subjectAltName is).
    pub copied: bool,
}

fn describe_extension(e: &X509Extension<'_>) -> RequestedExtension {
    let value = match e.parsed_extension() {
        ParsedExtension::BasicConstraints(bc) => match (bc.ca, bc.path_len_constraint) {
            (true, Some(n)) => format!("CA:TRUE, pathlen:{n}"),
            (true, None) => "CA:TRUE".into(),
            (false, _) => "CA:FALSE".into(),
        },
        ParsedExtension::KeyUsage(ku) => ku.to_string(),
        ParsedExtension::ExtendedKeyUsage(eku) => {
            let mut v = vec![];
            for (set, name) in [
                (eku.any, "anyExtendedKeyUsage"),
                (eku.server_auth, "serverAuth"),
                (eku.client_auth, "clientAuth"),
                (eku.code_signing, "codeSigning"),
                (eku.email_protection, "emailProtection"),
                (eku.time_stamping, "timeStamping"),
                (eku.ocsp_signing, "OCSPSigning"),
            ] {
                if set {
                    v.push(name.to_string());
                }
            }
            v.extend(eku.other.iter().map(|o| o.to_id_string()));
            v.join(", ")
        }
        ParsedExtension::SubjectAlternativeName(san) => san
            .general_names
            .iter()
            .map(|g| general_name_text(g).unwrap_or_else(|e| format!("<{e}>")))
            .collect::<Vec<_>>()
            .join(", "),
        ParsedExtension::ParseError { error } => format!("<malformed: {error}>"),
        _ => crate::codec::hex(e.value),
    };
    RequestedExtension {
        name: ext_name(&e.oid),
        copied: oid::of(&e.oid) == Some(oid::SUBJECT_ALT_NAME),
        oid: e.oid.to_id_string(),
        critical: e.critical,
        value,
    }
}

/// What `csr show` prints.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CsrInfo {
    pub file: PathBuf,
    pub subject: String,
    pub key: String,
    /// Why `csr sign` would refuse the key, if it would.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_unsupported: Option<String>,
    pub signature_algorithm: String,
    pub signature_valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature_error: Option<String>,
    pub subject_alt_names: Vec<String>,
    pub requested_extensions: Vec<RequestedExtension>,
    pub sha256: String,
}

/// Describe a CSR. A bad signature is reported, not an error: `show` is how
/// one finds out why `sign` refuses a request.
pub fn inspect(csr: &CsrFile) -> Result<CsrInfo> {
    let req = csr.parse()?;
    let cri = &req.certification_request_info;
    let key = KeyInfo::of(&cri.subject_pki);
    let sig = verify_pop(&req);
    let exts = requested_extensions(&req).map_err(|e| csr.err(e))?;
    let mut sans = vec![];
    for e in &exts {
        if let ParsedExtension::SubjectAlternativeName(san) = e.parsed_extension() {
            for g in &san.general_names {
                sans.push(general_name_text(g).unwrap_or_else(|e| format!("<{e}>")));
            }
        }
    }
    Ok(CsrInfo {
        file: csr.path.clone(),
        subject: cri.subject.to_string(),
        key: key.describe(),
        key_unsupported: device_key(&key).err(),
        signature_algorithm: req_alg_name(&req),
        signature_valid: sig.is_ok(),
        signature_error: sig.err(),
        subject_alt_names: sans,
        requested_extensions: exts.iter().map(|e| describe_extension(e)).collect(),
        sha256: crate::codec::sha256_hex(&csr.der),
    })
}

fn req_alg_name(req: &X509CertificationRequest<'_>) -> String {
    let o = &req.signature_algorithm.algorithm;
    oid::of(o).map_or_else(|| o.to_id_string(), |o| alg_name(&o))
}

/// Proof of possession: the request is signed by the key it asks us to certify.
fn verify_pop(req: &X509CertificationRequest<'_>) -> std::result::Result<(), String> {
    let cri = &req.certification_request_info;
    x509::verify_with_spki(
        &cri.subject_pki,
        &req.signature_algorithm,
        cri.raw,
        req.signature_value.data.as_ref(),
    )
}

/// Subject rules of the services device certificates are made for.
/// Without a profile, [`ProfileRules::default`] applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Golioth: O = the project slug, CN = the device's certificate ID.
    Golioth { project: String },
    /// GyroidOS / trust|me: the CN names the device; cml's CSRs also carry
    /// C, O, OU and a `URI:UUID:<device uuid>` subjectAltName.
    Gyroidos,
    /// Rules read from a JSON file (`--profile FILE.json`).
    Custom(Box<ProfileRules>),
}

/// Subject attributes a profile may name, by their short names.
const SUBJECT_ATTRS: &[(&str, ObjectIdentifier)] = &[
    ("C", oid::COUNTRY),
    ("ST", oid::STATE),
    ("L", oid::LOCALITY),
    ("O", oid::ORG),
    ("OU", oid::ORG_UNIT),
    ("CN", oid::COMMON_NAME),
    ("serialNumber", oid::SERIAL_NUMBER),
    ("emailAddress", oid::EMAIL_ADDRESS),
];

/// What a profile lets into a certificate. Everything is decided by the
/// profile, never by the requester: subject attributes not in `copy_subject`
/// are dropped (as `openssl ca` drops fields its policy does not list), and
/// a subjectAltName entry the profile does not allow is refused.
///
/// As JSON (`csr sign --profile FILE.json`), every field optional:
/// `{"name": "acme", "copy_subject": ["O", "CN"], "require_subject": ["CN"],
///   "subject_values": {"O": "acme"}, "allowed_san": ["dns", "uri:urn:uuid:"]}`
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileRules {
    /// Shown in refusals ("not allowed by profile NAME").
    #[serde(default = "default_profile_name")]
    pub name: String,
    /// Subject attributes copied into the certificate, by short name
    /// (C, ST, L, O, OU, CN, serialNumber, emailAddress). Default: O, CN.
    #[serde(default = "default_copy_subject")]
    pub copy_subject: Vec<String>,
    /// Attributes the CSR must have (each must also be copied).
    #[serde(default)]
    pub require_subject: Vec<String>,
    /// Attributes that must have exactly this value (each must be copied).
    #[serde(default)]
    pub subject_values: std::collections::BTreeMap<String, String>,
    /// subjectAltName types copied: `dns` (host names, no wildcard),
    /// `dns-wildcard` (also `*.example.com`), `ip`, `email`, `uri` (any URI)
    /// or `uri:PREFIX` (URIs starting with PREFIX, case-insensitive; after a
    /// prefix ending in `uuid:` a UUID must follow). Default: none.
    #[serde(default)]
    pub allowed_san: Vec<String>,
}

fn default_profile_name() -> String {
    "default".into()
}

fn default_copy_subject() -> Vec<String> {
    vec!["O".into(), "CN".into()]
}

impl Default for ProfileRules {
    /// No `--profile`: O and CN are copied, no attribute is required (the
    /// certificate must still name someone), plain DNS names are the only
    /// subjectAltName allowed.
    fn default() -> Self {
        ProfileRules {
            name: default_profile_name(),
            copy_subject: default_copy_subject(),
            require_subject: vec![],
            subject_values: Default::default(),
            allowed_san: vec!["dns".into()],
        }
    }
}

/// One allowed subjectAltName type.
#[derive(Clone, Debug, PartialEq, Eq)]
enum SanRule {
    Dns,
    DnsWildcard,
    Ip,
    Email,
    Uri(String),
}

impl SanRule {
    fn parse(s: &str) -> std::result::Result<SanRule, String> {
        Ok(match s {
            "dns" => SanRule::Dns,
            "dns-wildcard" => SanRule::DnsWildcard,
            "ip" => SanRule::Ip,
            "email" => SanRule::Email,
            "uri" => SanRule::Uri(String::new()),
            _ => match s.strip_prefix("uri:") {
                Some(p) if !p.is_empty() && p.bytes().all(|b| (0x21..0x7f).contains(&b)) => {
                    SanRule::Uri(p.to_string())
                }
                _ => {
                    let s = crate::text::escape_for_terminal(s);
                    let known = "dns, dns-wildcard, ip, email, uri or uri:PREFIX";
                    return Err(format!("allowed_san '{s}': expected {known}"));
                }
            },
        })
    }
}

/// A profile's rules, checked and resolved to OIDs once per run.
struct Policy {
    name: String,
    copy: Vec<(String, ObjectIdentifier)>,
    require: Vec<String>,
    values: Vec<(String, String)>,
    san: Vec<SanRule>,
}

fn attr_oid(name: &str) -> std::result::Result<ObjectIdentifier, String> {
    SUBJECT_ATTRS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, o)| *o)
        .ok_or_else(|| {
            format!(
                "unknown subject attribute '{}' (known: {})",
                crate::text::escape_for_terminal(name),
                SUBJECT_ATTRS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

impl ProfileRules {
    fn policy(&self) -> std::result::Result<Policy, String> {
        let mut copy = vec![];
        for n in &self.copy_subject {
            let oid = attr_oid(n)?;
            if !copy.iter().any(|(_, o)| *o == oid) {
                copy.push((n.clone(), oid));
            }
        }
        let copied = |n: &str, field: &str| {
            attr_oid(n)?;
            if copy.iter().any(|(c, _)| c == n) {
                Ok(n.to_string())
            } else {
                Err(format!(
                    "{field} names {n}, which copy_subject does not copy"
                ))
            }
        };
        let require = self
            .require_subject
            .iter()
            .map(|n| copied(n, "require_subject"))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut values = vec![];
        for (n, v) in &self.subject_values {
            copied(n, "subject_values")?;
            check_text(&format!("subject_values {n}"), v)?;
            values.push((n.clone(), v.clone()));
        }
        let san = self
            .allowed_san
            .iter()
            .map(|s| SanRule::parse(s))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Policy {
            name: self.name.clone(),
            copy,
            require,
            values,
            san,
        })
    }
}

impl Profile {
    /// Read a profile from JSON; unknown fields are refused.
    pub fn load(path: &Path) -> Result<Profile> {
        let bytes = fsutil::read_input(path, fsutil::InputKind::Profile)?;
        let mut rules: ProfileRules = serde_json::from_slice(&bytes)
            .map_err(|e| Error::input(path, format!("bad CSR profile: {e}")))?;
        if rules.name == default_profile_name() {
            if let Some(stem) = path.file_stem() {
                rules.name = stem.to_string_lossy().into_owned();
            }
        }
        rules
            .policy()
            .map_err(|e| Error::input(path, format!("bad CSR profile: {e}")))?;
        Ok(Profile::Custom(Box::new(rules)))
    }

    /// The rules this profile stands for.
    pub fn rules(&self) -> ProfileRules {
        match self {
            Profile::Golioth { project } => ProfileRules {
                name: "golioth".into(),
                copy_subject: default_copy_subject(),
                require_subject: vec!["O".into(), "CN".into()],
                subject_values: [("O".to_string(), project.clone())].into_iter().collect(),
                allowed_san: vec![],
            },
            Profile::Gyroidos => ProfileRules {
                name: "gyroidos".into(),
                copy_subject: ["C", "O", "OU", "CN"].map(String::from).to_vec(),
                require_subject: vec!["CN".into()],
                subject_values: Default::default(),
                allowed_san: vec!["uri:UUID:".into(), "uri:urn:uuid:".into()],
            },
            Profile::Custom(r) => (**r).clone(),
        }
    }
}

/// Refuse text a device name must never hold: controls (C0 with NUL, ESC and
/// newline; DEL; C1), format characters (zero-width, bidi controls, BOM...),
/// leading or trailing whitespace, and values that are empty or draw nothing.
fn check_text(field: &str, value: &str) -> std::result::Result<(), String> {
    use crate::text::{describe_char, escape_for_terminal, is_control, is_format, is_invisible};
    let shown = escape_for_terminal(value);
    if value.chars().all(is_invisible) {
        return Err(format!(
            "{field} '{shown}' is empty or only invisible characters"
        ));
    }
    if let Some((i, c)) = value
        .chars()
        .enumerate()
        .find(|(_, c)| is_control(*c) || is_format(*c) || matches!(c, '\u{2028}' | '\u{2029}'))
    {
        let what = if is_control(c) {
            "control character"
        } else {
            "invisible or reordering character"
        };
        return Err(format!(
            "{field} '{shown}' holds {what} {} at position {}",
            describe_char(c),
            i + 1
        ));
    }
    if value.starts_with(char::is_whitespace) || value.ends_with(char::is_whitespace) {
        return Err(format!(
            "{field} '{shown}' has leading or trailing whitespace"
        ));
    }
    Ok(())
}

/// A host name: LDH labels of 1 to 63 characters, 253 at most in all; with
/// `wildcard`, the first label may be `*`.
fn check_dns(name: &str, wildcard: bool) -> std::result::Result<(), String> {
    let rest = match name.strip_prefix("*.") {
        Some(r) if wildcard => r,
        Some(_) => return Err("wildcard DNS names are not allowed".into()),
        None => name,
    };
    if name.len() > 253 {
        return Err("DNS name longer than 253 characters".into());
    }
    for label in rest.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(if label.contains('*') {
                "wildcard DNS names are not allowed".into()
            } else {
                format!(
                    "'{}' is not a host name label (letters, digits and '-', 1 to 63 characters)",
                    crate::text::escape_for_terminal(label)
                )
            });
        }
    }
    Ok(())
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Check one subjectAltName entry against the profile: its type must be
/// listed and its value well-formed. Errors name the entry (escaped).
fn check_san(g: &GeneralName<'_>, policy: &Policy) -> std::result::Result<(), String> {
    let shown = crate::text::escape_for_terminal(
        &general_name_text(g).map_err(|m| format!("subjectAltName: {m}"))?,
    );
    let refuse = |why: &str| Err(format!("subjectAltName {shown}: {why}"));
    let not_allowed = |kind: &str| {
        let allowed = if policy.san.is_empty() {
            "none".to_string()
        } else {
            policy
                .san
                .iter()
                .map(|r| match r {
                    SanRule::Dns => "dns".to_string(),
                    SanRule::DnsWildcard => "dns-wildcard".to_string(),
                    SanRule::Ip => "ip".to_string(),
                    SanRule::Email => "email".to_string(),
                    SanRule::Uri(p) if p.is_empty() => "uri".to_string(),
                    SanRule::Uri(p) => format!("uri:{p}"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(format!(
            "subjectAltName {shown}: {kind} not allowed by profile {} (it allows: {allowed})",
            policy.name
        ))
    };
    let ascii_printable = |s: &str| s.bytes().all(|b| (0x21..0x7f).contains(&b));
    match g {
        GeneralName::DNSName(s) => {
            let wildcard_ok = policy.san.contains(&SanRule::DnsWildcard);
            if !wildcard_ok && !policy.san.contains(&SanRule::Dns) {
                return not_allowed("DNS names are");
            }
            if s.contains('*') && !wildcard_ok {
                return not_allowed("wildcard DNS names are");
            }
            check_dns(s, wildcard_ok).or_else(|e| refuse(&e))
        }
        GeneralName::IPAddress(_) => {
            if !policy.san.contains(&SanRule::Ip) {
                return not_allowed("IP addresses are");
            }
            Ok(())
        }
        GeneralName::RFC822Name(s) => {
            if !policy.san.contains(&SanRule::Email) {
                return not_allowed("e-mail addresses are");
            }
            match s.split_once('@') {
                Some((l, d)) if !l.is_empty() && ascii_printable(s) && !d.contains('@') => {
                    check_dns(d, false).or_else(|e| refuse(&e))
                }
                _ => refuse("not an e-mail address (local@host, printable ASCII)"),
            }
        }
        GeneralName::URI(s) => {
            let lower = s.to_ascii_lowercase();
            let rule = policy.san.iter().find_map(|r| match r {
                SanRule::Uri(p) if lower.starts_with(&p.to_ascii_lowercase()) => Some(p),
                _ => None,
            });
            let Some(prefix) = rule else {
                return not_allowed("URIs of this form are");
            };
            if !ascii_printable(s) {
                return refuse("URIs must be printable ASCII without spaces");
            }
            if prefix.to_ascii_lowercase().ends_with("uuid:") && !is_uuid(&s[prefix.len()..]) {
                return refuse("no UUID (8-4-4-4-12 hex digits) after the prefix");
            }
            Ok(())
        }
        GeneralName::DirectoryName(_) => not_allowed("directory names are"),
        GeneralName::RegisteredID(_) => not_allowed("registered IDs are"),
        GeneralName::OtherName(..) => not_allowed("otherNames are"),
        _ => not_allowed("this name type is"),
    }
}

/// One subject attribute: type, value as given, and its text.
struct Attr {
    oid: ObjectIdentifier,
    value: DnValue,
    text: String,
    /// The value as encoded in the CSR (tag and content), to check the
    /// certificate carries it unchanged.
    tag: u32,
    data: Vec<u8>,
}

/// The subject split by the profile: attributes copied (checked) and the
/// ones dropped, as `NAME=value` (escaped) for a warning.
struct Subject {
    attrs: Vec<Attr>,
    dropped: Vec<String>,
}

/// Read the subject into values rcgen re-encodes with the same string types.
/// rcgen keeps one value per attribute type and single-valued RDNs only, so
/// subjects it could not reproduce are refused rather than silently changed.
/// Attributes the profile does not copy are dropped unchecked (their text
/// only appears escaped, in a warning).
fn subject_attrs(name: &X509Name<'_>, policy: &Policy) -> std::result::Result<Subject, String> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let mut out: Vec<Attr> = vec![];
    let mut dropped = vec![];
    for rdn in name.iter() {
        let mut it = rdn.iter();
        let (Some(a), None) = (it.next(), it.next()) else {
            return Err("subject has a multi-valued RDN, which is not supported".into());
        };
        let copied = oid::of(a.attr_type()).filter(|o| policy.copy.iter().any(|(_, c)| c == o));
        let Some(oid) = copied else {
            let text = a
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|_| String::from_utf8_lossy(a.attr_value().data).into_owned());
            dropped.push(format!(
                "{}={}",
                attr_name(a.attr_type()),
                crate::text::escape_for_terminal(&text)
            ));
            continue;
        };
        let name = attr_name(a.attr_type());
        if out.iter().any(|x| x.oid == oid) {
            return Err(format!(
                "subject has more than one {name} attribute, which is not supported"
            ));
        }
        let data = a.attr_value().data;
        let bad = |what: &str| format!("subject {name}: {what}");
        let utf8 = |d: &[u8]| {
            std::str::from_utf8(d)
                .map(str::to_string)
                .map_err(|_| bad("invalid characters"))
        };
        let (value, text) = match a.attr_value().tag() {
            Tag::Utf8String => {
                let s = utf8(data)?;
                (DnValue::Utf8String(s.clone()), s)
            }
            Tag::PrintableString => {
                let s = utf8(data)?;
                let p = rcgen::string::PrintableString::try_from(s.as_str())
                    .map_err(|_| bad("invalid PrintableString"))?;
                (DnValue::PrintableString(p), s)
            }
            Tag::Ia5String => {
                let s = utf8(data)?;
                let p = rcgen::string::Ia5String::try_from(s.as_str())
                    .map_err(|_| bad("invalid IA5String"))?;
                (DnValue::Ia5String(p), s)
            }
            Tag::T61String => {
                let s = utf8(data)?;
                let p = rcgen::string::TeletexString::try_from(s.as_str())
                    .map_err(|_| bad("TeletexString outside ASCII is not supported"))?;
                (DnValue::TeletexString(p), s)
            }
            Tag::BmpString => {
                let b = rcgen::string::BmpString::from_utf16be(data.to_vec())
                    .map_err(|_| bad("invalid BMPString"))?;
                let units: Vec<u16> = data
                    .chunks(2)
                    .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                    .collect();
                let s = String::from_utf16(&units).map_err(|_| bad("invalid BMPString"))?;
                (DnValue::BmpString(b), s)
            }
            Tag::UniversalString => {
                let u = rcgen::string::UniversalString::from_utf32be(data.to_vec())
                    .map_err(|_| bad("invalid UniversalString"))?;
                let s: String = data
                    .chunks(4)
                    .map(|c| {
                        let mut w = [0u8; 4];
                        w[..c.len()].copy_from_slice(c);
                        char::from_u32(u32::from_be_bytes(w))
                    })
                    .collect::<Option<String>>()
                    .ok_or_else(|| bad("invalid UniversalString"))?;
                (DnValue::UniversalString(u), s)
            }
            t => return Err(bad(&format!("unsupported string type {t}"))),
        };
        check_text(&format!("subject {name}"), &text)?;
        out.push(Attr {
            oid,
            value,
            text,
            tag: a.attr_value().tag().0,
            data: data.to_vec(),
        });
    }
    Ok(Subject {
        attrs: out,
        dropped,
    })
}

fn check_profile(attrs: &[Attr], policy: &Policy) -> std::result::Result<(), String> {
    let mut names: Vec<&str> = policy.require.iter().map(String::as_str).collect();
    for (n, _) in &policy.values {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    let profile = &policy.name;
    for n in names {
        let oid = attr_oid(n)?;
        let want = policy.values.iter().find(|(k, _)| k == n).map(|(_, v)| v);
        let hint = match (want, profile.as_str(), n) {
            (Some(v), "golioth", "O") => format!("O={v} (the project slug)"),
            (Some(v), _, _) => format!("{n}={v}"),
            (None, "golioth", "CN") => "CN=<certificate ID>".into(),
            (None, _, "CN") => "CN=<device ID>".into(),
            (None, _, _) => format!("{n}=<value>"),
        };
        match (attrs.iter().find(|a| a.oid == oid), want) {
            (None, _) => {
                return Err(format!(
                    "subject has no {n}, but profile {profile} needs {hint}"
                ))
            }
            (Some(a), Some(v)) if a.text != *v => {
                return Err(format!(
                    "subject {n} is '{}', but profile {profile} needs {hint}",
                    crate::text::escape_for_terminal(&a.text)
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// How every certificate of one `csr sign` run is made.
#[derive(Clone, Debug)]
pub struct IssueOptions {
    pub not_before: OffsetDateTime,
    pub days: u32,
    pub profile: Option<Profile>,
}

/// The issuer, checked and prepared once per run.
pub struct Issuer<'a> {
    id: &'a Identity,
    /// The issued certificate's chain as written after it: the issuer's
    /// certificate and its chain, root excluded.
    chain_pem: String,
    pub subject: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// The validity was cut short to end with the issuer's.
    pub clamped: bool,
}

impl<'a> Issuer<'a> {
    /// Check that `id` may issue certificates and fix the validity of this run.
    /// A validity past the issuer's own notAfter is clamped to it: chains
    /// fail from that day on anyway, and refusing would block provisioning
    /// in the last year of a Sub CA's life.
    pub fn new(id: &'a Identity, opts: &IssueOptions) -> Result<Issuer<'a>> {
        let c = x509::parse(&id.cert, Path::new("issuer certificate"))?;
        let subject = c.subject().to_string();
        if !x509::is_ca(&c) {
            return Err(Error::Usage(format!(
                "issuer '{subject}' is not a CA (basicConstraints CA:TRUE missing)"
            )));
        }
        if let Ok(Some(ku)) = c.key_usage() {
            if !ku.value.key_cert_sign() {
                return Err(Error::Usage(format!(
                    "issuer '{subject}' may not sign certificates (keyUsage lacks keyCertSign)"
                )));
            }
        }
        if opts.days == 0 {
            return Err(Error::Usage("--days must be at least 1".into()));
        }
        policy_of(opts)?;
        let issuer_end = c.validity().not_after.to_datetime();
        let wanted = opts
            .not_before
            .checked_add(time::Duration::days(i64::from(opts.days)));
        let (not_after, clamped) = match wanted {
            Some(t) if t <= issuer_end => (t, false),
            _ => (issuer_end, true),
        };
        if not_after <= opts.not_before {
            return Err(Error::Usage(format!(
                "issuer '{subject}' expires {}, before any certificate could be valid",
                x509::rfc3339(&c.validity().not_after)
            )));
        }
        let mut chain_pem = String::new();
        if c.subject() != c.issuer() {
            chain_pem.push_str(&x509::pem_cert(&id.cert));
        }
        for der in &id.chain {
            chain_pem.push_str(&x509::pem_cert(der));
        }
        Ok(Issuer {
            id,
            chain_pem,
            subject,
            not_before: opts.not_before,
            not_after,
            clamped,
        })
    }
}

/// A certificate issued for one CSR.
#[derive(Clone, Debug)]
pub struct Issued {
    pub csr: PathBuf,
    pub der: Vec<u8>,
    pub info: x509::CertInfo,
    /// Subject attributes of the CSR the profile does not copy, as
    /// `NAME=value` with the value escaped.
    pub dropped_subject: Vec<String>,
}

/// Check `csr` (proof of possession, no CA powers, profile) and issue its
/// certificate. Nothing is written.
pub fn issue(csr: &CsrFile, issuer: &Issuer<'_>, opts: &IssueOptions) -> Result<Issued> {
    let req = csr.parse()?;
    let cri = &req.certification_request_info;
    let key = KeyInfo::of(&cri.subject_pki);
    let kind = device_key(&key).map_err(|e| csr.err(format!("unsupported key: {e}")))?;
    verify_pop(&req).map_err(|e| {
        csr.err(format!(
            "CSR self-signature ({}, {}) is invalid: {e}; no proof the requester holds the key",
            req_alg_name(&req),
            key.describe()
        ))
    })?;
    let exts = requested_extensions(&req).map_err(|e| csr.err(e))?;
    let policy = policy_of(opts)?;
    let mut san = None;
    for e in &exts {
        match e.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) if bc.ca => {
                return Err(csr.err(
                    "requests a CA certificate (basicConstraints CA:TRUE); device certificates are never CAs",
                ))
            }
            ParsedExtension::KeyUsage(ku) if ku.key_cert_sign() || ku.crl_sign() => {
                return Err(csr.err(format!(
                    "requests keyUsage {ku}; keyCertSign and cRLSign are for CAs only"
                )))
            }
            ParsedExtension::SubjectAlternativeName(s) => {
                if s.general_names.is_empty() {
                    return Err(csr.err("requests an empty subjectAltName"));
                }
                for g in &s.general_names {
                    check_san(g, &policy).map_err(|m| csr.err(m))?;
                }
                san = Some(*e);
            }
            ParsedExtension::ParseError { error }
                if oid::of(&e.oid).is_some_and(|o| {
                    [oid::BASIC_CONSTRAINTS, oid::KEY_USAGE, oid::SUBJECT_ALT_NAME].contains(&o)
                }) =>
            {
                return Err(csr.err(format!(
                    "malformed {} in the request: {error}",
                    ext_name(&e.oid)
                )))
            }
            _ => {}
        }
    }
    let Subject { attrs, dropped } =
        subject_attrs(&cri.subject, &policy).map_err(|e| csr.err(e))?;
    check_profile(&attrs, &policy).map_err(|e| csr.err(e))?;
    if attrs.is_empty() && san.is_none() {
        return Err(csr.err(format!(
            "no subject attribute that profile {} copies ({}) and no subjectAltName: the certificate would name nobody",
            policy.name,
            policy.copy.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }

    let mut p = rcgen::CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for a in &attrs {
        dn.push(DnType::from_oid(&arcs(a.oid)), a.value.clone());
    }
    p.distinguished_name = dn;
    p.not_before = issuer.not_before;
    p.not_after = issuer.not_after;
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    if kind == KeyKind::Rsa {
        // RSA key exchange (TLS 1.2 RSA kx) encrypts to the certified key.
        p.key_usages.push(rcgen::KeyUsagePurpose::KeyEncipherment);
    }
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    if let Some(e) = san {
        // Copied byte for byte, so name forms rcgen cannot express survive too.
        let mut ext = rcgen::CustomExtension::from_oid_content(
            &arcs(oid::SUBJECT_ALT_NAME),
            e.value.to_vec(),
        );
        // RFC 5280 4.2.1.6: with an empty subject the SAN must be critical.
        ext.set_criticality(e.critical || attrs.is_empty());
        p.custom_extensions.push(ext);
    }
    let der = x509::issue_for_spki(p, cri.subject_pki.raw, &issuer.id.cert, &*issuer.id.signer)
        .map_err(|e| csr.err(e.to_string()))?;

    // The certificate must say exactly what was checked above, and be
    // verifiable by the issuer's certificate: catch encoder or key mix-ups
    // here instead of on a device in the field.
    let cert = x509::parse(&der, &csr.path)?;
    let issuer_cert = x509::parse(&issuer.id.cert, &csr.path)?;
    let copied: Vec<(Option<ObjectIdentifier>, u32, &[u8])> = cert
        .subject()
        .iter_attributes()
        .map(|a| {
            (
                oid::of(a.attr_type()),
                a.attr_value().tag().0,
                a.attr_value().data,
            )
        })
        .collect();
    let wanted: Vec<(Option<ObjectIdentifier>, u32, &[u8])> = attrs
        .iter()
        .map(|a| (Some(a.oid), a.tag, a.data.as_slice()))
        .collect();
    if copied != wanted || cert.subject().iter().any(|rdn| rdn.iter().count() != 1) {
        return Err(csr.err("subject could not be copied unchanged"));
    }
    if cert.public_key().raw != cri.subject_pki.raw {
        return Err(csr.err("public key could not be copied unchanged"));
    }
    if cert.issuer().as_raw() != issuer_cert.subject().as_raw() {
        return Err(csr.err(format!(
            "issuer name '{}' could not be copied unchanged",
            issuer.subject
        )));
    }
    x509::verify_signed_by(&cert, &issuer_cert)
        .map_err(|e| Error::Crypto(format!("issued certificate does not verify: {e}")))?;
    let info = x509::describe(&der, &csr.path)?;
    Ok(Issued {
        csr: csr.path.clone(),
        der,
        info,
        dropped_subject: dropped,
    })
}

/// The checked rules of the run's profile (or the default rules).
fn policy_of(opts: &IssueOptions) -> Result<Policy> {
    let rules = opts
        .profile
        .as_ref()
        .map(Profile::rules)
        .unwrap_or_default();
    rules
        .policy()
        .map_err(|e| Error::Usage(format!("profile {}: {e}", rules.name)))
}

/// Check and issue every CSR, on all cores. All or nothing: the first
/// refused CSR (in input order) is the error, and nothing is issued then.
pub fn issue_all(
    inputs: &[PathBuf],
    issuer: &Issuer<'_>,
    opts: &IssueOptions,
) -> Result<Vec<Issued>> {
    par::map(inputs.len(), par::cores(), |i| {
        CsrFile::read(&inputs[i]).and_then(|c| issue(&c, issuer, opts))
    })
}

/// The PEM file handed to the device: its certificate, then the issuer chain
/// (root excluded; the device or the service holds the root).
pub fn cert_file(issued: &Issued, issuer: &Issuer<'_>) -> String {
    let mut s = x509::pem_cert(&issued.der);
    s.push_str(&issuer.chain_pem);
    s
}

/// One line of the issuance index.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct IndexEntry {
    pub serial: String,
    pub subject: String,
    pub fingerprint_sha256: String,
    pub not_before: String,
    pub not_after: String,
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_role: Option<String>,
    /// File name of the CSR.
    pub csr: String,
    /// Where the certificate was written.
    pub cert: PathBuf,
}

/// Where `csr sign --role R` keeps its record of issued certificates.
pub fn default_index(pki_dir: &Path) -> PathBuf {
    pki_dir.join("issued").join("index.jsonl")
}

/// Append `entries` to the JSON Lines index at `path`, one line per
/// certificate, under an exclusive lock so parallel runs never interleave.
/// Appending (not rewriting) means a crash can at worst leave one partial
/// last line, which the next writer ends with a newline and readers skip.
pub fn append_index(path: &Path, entries: &[IndexEntry]) -> Result<()> {
    let dir = fsutil::parent_dir(path);
    std::fs::create_dir_all(&dir).at(&dir)?;
    let mut lock = path.as_os_str().to_owned();
    lock.push(".lock");
    // DirLock follows symlinks; a symlinked lock or index is refused here,
    // and the index itself is opened with O_NOFOLLOW below.
    for p in [path, Path::new(&lock)] {
        if is_symlink(p) {
            return Err(Error::input(
                p,
                "is a symlink; pki-signer never writes the index through one",
            ));
        }
    }
    let _lock = DirLock::acquire(Path::new(&lock))?;
    let mut buf = String::new();
    for e in entries {
        let line = serde_json::to_string(e).map_err(|e| Error::input(path, e.to_string()))?;
        buf.push_str(&line);
        buf.push('\n');
    }
    let existed = path.exists();
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(PUBLIC_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Error::input(
                path,
                "is a symlink; pki-signer never writes the index through one",
            ),
            _ => Error::io(path, e),
        })?;
    let len = f.metadata().at(path)?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1)).at(path)?;
        f.read_exact(&mut last).at(path)?;
        if last[0] != b'\n' {
            buf.insert(0, '\n');
        }
    }
    f.write_all(buf.as_bytes()).at(path)?;
    f.sync_all().at(path)?;
    if !existed {
        fsutil::sync_dir(&dir)?;
    }
    Ok(())
}

fn is_symlink(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

/// Refuse, before anything is issued, an index that would be written
/// through a symlink: the PKI directory (GyroidOS links release PKIs),
/// its `issued` directory, the index file or its lock. Certificates are only
/// handed out once recorded, so such a run issues nothing; `--index FILE`
/// records them elsewhere.
pub fn check_index_target(ix: &IndexTarget) -> Result<()> {
    let hint = "pki-signer never writes through one; give --index FILE to record issued certificates elsewhere";
    if let Some(d) = &ix.pki_dir {
        if is_symlink(d) {
            return Err(Error::input(
                d,
                format!("PKI directory is a symlink (a release PKI?); {hint}"),
            ));
        }
        let issued = d.join("issued");
        if is_symlink(&issued) {
            return Err(Error::input(&issued, format!("is a symlink; {hint}")));
        }
    }
    let mut lock = ix.path.as_os_str().to_owned();
    lock.push(".lock");
    for p in [ix.path.as_path(), Path::new(&lock)] {
        if is_symlink(p) {
            return Err(Error::input(p, format!("is a symlink; {hint}")));
        }
    }
    Ok(())
}

/// Read an index back (skipping a partial line a crash may have left).
pub fn read_index(path: &Path) -> Result<Vec<IndexEntry>> {
    let text = std::fs::read_to_string(path).at(path)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Where each certificate goes and who issued it, for the index.
pub fn index_entry(
    issued: &Issued,
    output: &Path,
    issuer: &Issuer<'_>,
    role: Option<&str>,
) -> IndexEntry {
    IndexEntry {
        serial: issued.info.serial.clone(),
        subject: issued.info.subject.clone(),
        fingerprint_sha256: issued.info.fingerprint_sha256.clone(),
        not_before: issued.info.not_before.clone(),
        not_after: issued.info.not_after.clone(),
        issuer: issuer.subject.clone(),
        issuer_role: role.map(str::to_string),
        csr: issued
            .csr
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        cert: output.to_path_buf(),
    }
}

/// One CSR and where its certificate goes.
#[derive(Clone, Debug)]
pub struct Job {
    pub csr: PathBuf,
    pub output: PathBuf,
}

/// Where to record issued certificates, and the role name to record.
#[derive(Clone, Debug)]
pub struct IndexTarget {
    pub path: PathBuf,
    pub issuer_role: Option<String>,
    /// The PKI directory, when the index is its `issued/index.jsonl`: a
    /// symlinked PKI (a linked release PKI) is never written through.
    pub pki_dir: Option<PathBuf>,
}

/// What `csr sign` did, per certificate.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SignReport {
    pub csr: PathBuf,
    pub output: PathBuf,
    pub subject: String,
    /// CSR subject attributes the profile does not copy (`NAME=value`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped_subject: Vec<String>,
    pub serial: String,
    pub fingerprint_sha256: String,
    pub not_before: String,
    pub not_after: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SignSummary {
    pub issuer: String,
    /// --days went past the issuer's notAfter; certificates end with it.
    pub not_after_clamped: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<PathBuf>,
    pub certificates: Vec<SignReport>,
}

/// Issue a certificate for every job with one loaded key. Every CSR is checked
/// before anything is written; the index is appended before the certificates
/// are handed out, so no certificate ever exists without its record.
pub fn sign(
    jobs: &[Job],
    id: &Identity,
    opts: &IssueOptions,
    index: Option<&IndexTarget>,
) -> Result<SignSummary> {
    let mut outs = HashSet::new();
    for j in jobs {
        if j.output == j.csr {
            return Err(Error::Usage(format!(
                "{}: output would overwrite the CSR",
                j.csr.display()
            )));
        }
        if !outs.insert(&j.output) {
            return Err(Error::Usage(format!(
                "{}: two CSRs would be written to this output (same file stem?)",
                j.output.display()
            )));
        }
    }
    let issuer = Issuer::new(id, opts)?;
    if let Some(ix) = index {
        check_index_target(ix)?;
    }
    let inputs: Vec<PathBuf> = jobs.iter().map(|j| j.csr.clone()).collect();
    let issued = issue_all(&inputs, &issuer, opts)?;
    let dirs: HashSet<PathBuf> = jobs.iter().map(|j| fsutil::parent_dir(&j.output)).collect();
    for d in dirs {
        std::fs::create_dir_all(&d).at(&d)?;
    }
    if let Some(ix) = index {
        let entries: Vec<IndexEntry> = issued
            .iter()
            .zip(jobs)
            .map(|(i, j)| index_entry(i, &j.output, &issuer, ix.issuer_role.as_deref()))
            .collect();
        append_index(&ix.path, &entries)?;
    }
    let staged = issued
        .iter()
        .zip(jobs)
        .map(|(i, j)| {
            let pem = cert_file(i, &issuer);
            fsutil::Staged::with_data(&j.output, fsutil::tag::TMP, PUBLIC_MODE, pem.as_bytes())
        })
        .collect::<Result<Vec<_>>>()?;
    fsutil::publish(staged)?;
    let mut certificates = Vec::with_capacity(jobs.len());
    for (i, j) in issued.iter().zip(jobs) {
        certificates.push(SignReport {
            csr: j.csr.clone(),
            output: j.output.clone(),
            subject: i.info.subject.clone(),
            dropped_subject: i.dropped_subject.clone(),
            serial: i.info.serial.clone(),
            fingerprint_sha256: i.info.fingerprint_sha256.clone(),
            not_before: i.info.not_before.clone(),
            not_after: i.info.not_after.clone(),
        });
    }
    Ok(SignSummary {
        issuer: issuer.subject.clone(),
        not_after_clamped: issuer.clamped,
        index: index.map(|i| i.path.clone()),
        certificates,
    })
}
