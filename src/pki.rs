//! The development PKI: which roles exist, generating them once (safely under
//! parallel bitbake tasks), and inspecting / checking a PKI directory.
//!
//! Layout and file names follow GyroidOS's gen_dev_certs.sh (`NAME.cert` with
//! the chain up to but excluding the root, `NAME.key` PKCS#8), so existing
//! build configurations find the files where they expect them.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyUsagePurpose as Ku};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::efivar::{self, Guid};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, DirLock, KEY_MODE, PUBLIC_MODE};
use crate::keys::{self, FileKey, KeyType, Signer};
use crate::pkcs11::{self, Pkcs11Key, TokenWriter};
use crate::x509::{self, CertSpec, Subject};

pub const MANIFEST: &str = "pki.json";
/// Owner GUID written into signature lists unless the profile sets one.
/// Fixed, so that ESL/.auth output is reproducible.
pub const DEFAULT_OWNER_GUID: &str = "6e2d1f0b-3c4a-4b8e-9f5d-2a7c8e1b4d60";
const DEFAULT_ORG: &str = "Development PKI";
const DEFAULT_COUNTRY: &str = "DE";
const DEFAULT_OU: &str = "Development";
/// UEFI firmware handles RSA-2048 best; PK/KEK/DB and the TPM policy key use it.
const UEFI_KEY_TYPE: KeyType = KeyType::Rsa(2048);

/// The GuestOS signing roles: gen_dev_certs.sh (provisioning_lib.sh's
/// NEWKEY_ARGS_secondary) gives them RSA-PSS keys, and cml checks GuestOS
/// signatures only with RSA or RSA-PSS keys (common/ssl_util.c,
/// `ssl_verify_signature_from_digest`: anything else is "Unsupported key type").
/// They stay RSA whatever `--key-type` says, and their keys are typed
/// id-RSASSA-PSS like the script's, so cml (which takes the padding from the
/// certificate's key type) checks PSS, what GyroidOS's sign_config.sh makes.
pub const GUESTOS_ROLES: &[&str] = &["ssig_subca_cml", "ssig_cml"];
const GUESTOS_KEY_TYPE: KeyType = KeyType::Rsa(4096);
/// Roles gen_dev_certs.sh makes with NEWKEY_ARGS_secondary: typed RSA-PSS
/// when their key is RSA (with `--key-type ec:*` the OCSP server key is EC,
/// as the script makes it).
const RSA_PSS_ROLES: &[&str] = &["ssig_subca_cml", "ssig_cml", "ocsp_server"];
/// The kernel module signing key and certificate gen_dev_certs.sh derives
/// from ssig_subca (`derive_exports`): the key followed by the certificate
/// (CONFIG_MODULE_SIG_KEY), and the certificate in DER.
const MODULE_SIGNING_PEM: &str = "certs/signing_key.pem";
const MODULE_SIGNING_X509: &str = "certs/signing_key.x509";
const MODULE_SIGNING_ROLE: &str = "ssig_subca";
/// Built-in roles newer than some PKIs already made: a PKI without them is
/// still complete (it is used as it is, never regenerated).
const ADDED_ROLES: &[&str] = &["ocsp_server"];
const TPM_PCR_PRIVATE: &str = "tpm2-pcr-private.pem";
const TPM_PCR_PUBLIC: &str = "tpm2-pcr-public.pem";
/// `pki check` warns when a certificate expires within this many days
/// (`--warn-days`): a quarter is what a rotation needs to reach devices.
pub const EXPIRY_WARNING_DAYS: u32 = 90;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleKind {
    /// GyroidOS-style `NAME.cert` (PEM chain) + `NAME.key`.
    X509,
    /// UEFI Secure Boot key: `NAME.crt` (PEM), `NAME.cer` (DER), `NAME.key`.
    Uefi,
}

/// A role fully resolved from the built-in table, the profile and the CLI.
#[derive(Clone, Debug)]
pub struct RoleSpec {
    pub name: String,
    pub hierarchy: String,
    pub kind: RoleKind,
    /// None for self-signed roots.
    pub issuer: Option<String>,
    pub ca: bool,
    pub days: u32,
    pub key_type: KeyType,
    pub subject: Subject,
    pub key_usage: Vec<Ku>,
    pub eku: Vec<Eku>,
    /// The key is typed id-RSASSA-PSS (key file and certificate), as
    /// gen_dev_certs.sh types its "secondary" keys; its certificates are
    /// signed with RSASSA-PSS.
    pub rsa_pss: bool,
}

struct Builtin {
    name: &'static str,
    cn: &'static str,
    hierarchy: &'static str,
    kind: RoleKind,
    issuer: Option<&'static str>,
    ca: bool,
    days: u32,
    key_usage: &'static [&'static str],
    eku: &'static [&'static str],
}

const CA_KU: &[&str] = &["keyCertSign", "cRLSign"];
const LEAF_KU: &[&str] = &["digitalSignature"];

const fn ca(
    name: &'static str,
    cn: &'static str,
    hierarchy: &'static str,
    issuer: Option<&'static str>,
    days: u32,
) -> Builtin {
    Builtin {
        name,
        cn,
        hierarchy,
        kind: RoleKind::X509,
        issuer,
        ca: true,
        days,
        key_usage: CA_KU,
        eku: &[],
    }
}

const fn leaf(
    name: &'static str,
    cn: &'static str,
    hierarchy: &'static str,
    issuer: &'static str,
    eku: &'static [&'static str],
) -> Builtin {
    Builtin {
        name,
        cn,
        hierarchy,
        kind: RoleKind::X509,
        issuer: Some(issuer),
        ca: false,
        days: 1095,
        key_usage: LEAF_KU,
        eku,
    }
}

const fn uefi(name: &'static str, cn: &'static str) -> Builtin {
    // Self-signed like `openssl req -x509` makes them for efitools/sbctl; DB
    // also signs EFI binaries directly, hence digitalSignature on all three.
    Builtin {
        name,
        cn,
        hierarchy: "uefi",
        kind: RoleKind::Uefi,
        issuer: None,
        ca: true,
        days: 3650,
        key_usage: &["digitalSignature", "keyCertSign", "cRLSign"],
        eku: &[],
    }
}

const SSIG: &str = "software-signing";
const CUSTOMER: &str = "customer";

const BUILTIN: &[Builtin] = &[
    ca("ssig_rootca", "Software Signing Root CA", SSIG, None, 3650),
    // The sub CA signs kernels/UKIs itself (its certificate sits in db), so it
    // also needs digitalSignature.
    Builtin {
        key_usage: &["digitalSignature", "keyCertSign", "cRLSign"],
        ..ca(
            "ssig_subca",
            "Software Signing Sub CA",
            SSIG,
            Some("ssig_rootca"),
            2190,
        )
    },
    ca(
        "ssig_subca_cml",
        "CML Signing Sub CA",
        SSIG,
        Some("ssig_rootca"),
        2190,
    ),
    leaf(
        "ssig",
        "Software Signing Certificate",
        SSIG,
        "ssig_subca",
        &["codeSigning"],
    ),
    leaf(
        "ssig_cml",
        "CML Signing Certificate",
        SSIG,
        "ssig_subca_cml",
        &["codeSigning"],
    ),
    ca("gen_rootca", "General Root CA", CUSTOMER, None, 3650),
    ca(
        "device_subca",
        "Device Sub CA",
        CUSTOMER,
        Some("gen_rootca"),
        730,
    ),
    ca(
        "user_subca",
        "User Sub CA",
        CUSTOMER,
        Some("gen_rootca"),
        2190,
    ),
    ca(
        "backend_subca",
        "Backend Sub CA",
        CUSTOMER,
        Some("gen_rootca"),
        2190,
    ),
    leaf(
        "backend",
        "Backend Certificate",
        CUSTOMER,
        "backend_subca",
        &["serverAuth"],
    ),
    // gen_ocsp_certs.sh: issued by the backend sub CA, key as the GuestOS roles'.
    leaf(
        "ocsp_server",
        "OCSP Server Certificate",
        CUSTOMER,
        "backend_subca",
        &["OCSPSigning"],
    ),
];

const BUILTIN_UEFI: &[Builtin] = &[
    uefi("PK", "Platform Key"),
    uefi("KEK", "Key Exchange Key"),
    uefi("DB", "Signature Database Key"),
];

/// Profile JSON: everything optional; see README "Profile".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub org: Option<String>,
    pub country: Option<String>,
    pub org_unit: Option<String>,
    pub key_type: Option<KeyType>,
    pub uefi: Option<bool>,
    pub owner_guid: Option<Guid>,
    #[serde(default)]
    pub roles: BTreeMap<String, RoleOverride>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleOverride {
    /// Issuing role, or "self" for a new root.
    pub issuer: Option<String>,
    pub ca: Option<bool>,
    pub days: Option<u32>,
    pub key_type: Option<KeyType>,
    pub cn: Option<String>,
    pub org: Option<String>,
    pub org_unit: Option<String>,
    pub country: Option<String>,
    pub key_usage: Option<Vec<String>>,
    pub eku: Option<Vec<String>>,
    pub hierarchy: Option<String>,
}

impl Profile {
    pub fn load(path: &Path) -> Result<Profile> {
        let text = fsutil::read_input_to_string(path, fsutil::InputKind::Profile)?;
        serde_json::from_str(&text).map_err(|e| Error::input(path, format!("bad profile: {e}")))
    }
}

fn parse_ku(s: &str) -> std::result::Result<Ku, String> {
    Ok(match s {
        "digitalSignature" => Ku::DigitalSignature,
        "nonRepudiation" | "contentCommitment" => Ku::ContentCommitment,
        "keyEncipherment" => Ku::KeyEncipherment,
        "dataEncipherment" => Ku::DataEncipherment,
        "keyAgreement" => Ku::KeyAgreement,
        "keyCertSign" => Ku::KeyCertSign,
        "cRLSign" => Ku::CrlSign,
        _ => return Err(format!("unknown key usage '{s}'")),
    })
}

fn parse_eku(s: &str) -> std::result::Result<Eku, String> {
    Ok(match s {
        "serverAuth" => Eku::ServerAuth,
        "clientAuth" => Eku::ClientAuth,
        "codeSigning" => Eku::CodeSigning,
        "emailProtection" => Eku::EmailProtection,
        "timeStamping" => Eku::TimeStamping,
        "OCSPSigning" => Eku::OcspSigning,
        _ => return Err(format!("unknown extended key usage '{s}'")),
    })
}

fn valid_role_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        && n != MANIFEST
}

/// The built-in roles (and the UEFI ones with `uefi`), before the profile.
fn builtin_specs(
    uefi: bool,
    default_kt: KeyType,
    subject: &dyn Fn(&str) -> Subject,
) -> Vec<RoleSpec> {
    let builtins = BUILTIN.iter().chain(if uefi { BUILTIN_UEFI } else { &[] });
    builtins
        .map(|b| RoleSpec {
            name: b.name.into(),
            hierarchy: b.hierarchy.into(),
            kind: b.kind,
            issuer: b.issuer.map(Into::into),
            ca: b.ca,
            days: b.days,
            key_type: if b.kind == RoleKind::Uefi {
                UEFI_KEY_TYPE
            } else if GUESTOS_ROLES.contains(&b.name) && !default_kt.is_rsa() {
                GUESTOS_KEY_TYPE
            } else {
                default_kt
            },
            subject: subject(b.cn),
            key_usage: b
                .key_usage
                .iter()
                .map(|k| parse_ku(k).expect("builtin"))
                .collect(),
            eku: b
                .eku
                .iter()
                .map(|k| parse_eku(k).expect("builtin"))
                .collect(),
            rsa_pss: false,
        })
        .collect()
}

/// A role the profile adds: it must say whether it is a CA and who issues it.
fn new_role(
    name: &str,
    o: &RoleOverride,
    specs: &[RoleSpec],
    default_kt: KeyType,
    subject: Subject,
) -> std::result::Result<RoleSpec, String> {
    if BUILTIN_UEFI.iter().any(|b| b.name == name) {
        return Err(format!(
            "role '{name}' is a UEFI role: enable it with --uefi or \"uefi\": true"
        ));
    }
    let ca =
        o.ca.ok_or_else(|| format!("new role '{name}' needs \"ca\": true|false"))?;
    let issuer = o
        .issuer
        .clone()
        .ok_or_else(|| format!("new role '{name}' needs \"issuer\" (a role, or \"self\")"))?;
    let hierarchy = specs
        .iter()
        .find(|s| s.name == issuer)
        .map_or_else(|| name.to_string(), |s| s.hierarchy.clone());
    Ok(RoleSpec {
        name: name.to_string(),
        hierarchy,
        kind: RoleKind::X509,
        issuer: Some(issuer),
        ca,
        days: if ca { 2190 } else { 1095 },
        key_type: default_kt,
        subject,
        key_usage: if ca {
            vec![Ku::KeyCertSign, Ku::CrlSign]
        } else {
            vec![Ku::DigitalSignature]
        },
        eku: vec![],
        rsa_pss: false,
    })
}

/// The profile's settings for role `name`, over what it had.
fn apply_override(
    s: &mut RoleSpec,
    name: &str,
    o: &RoleOverride,
) -> std::result::Result<(), String> {
    if let Some(i) = &o.issuer {
        s.issuer = if i == "self" { None } else { Some(i.clone()) };
    }
    if let Some(v) = o.ca {
        s.ca = v;
    }
    if let Some(v) = o.days {
        if v == 0 {
            return Err(format!("role '{name}': days must be > 0"));
        }
        s.days = v;
    }
    if let Some(v) = o.key_type {
        if s.kind == RoleKind::Uefi && !v.is_rsa() {
            return Err(format!("role '{name}': UEFI keys must be RSA"));
        }
        if GUESTOS_ROLES.contains(&name) && !v.is_rsa() {
            return Err(format!(
                "role '{name}': key_type {v}: GuestOS signing keys must be RSA: cml verifies GuestOS signatures only with RSA or RSA-PSS keys (\"Unsupported key type\", common/ssl_util.c), and gen_dev_certs.sh gives this role an RSA-PSS key"
            ));
        }
        s.key_type = v;
    }
    if let Some(v) = &o.cn {
        s.subject.common_name = v.clone();
    }
    if let Some(v) = &o.org {
        s.subject.org = Some(v.clone());
    }
    if let Some(v) = &o.org_unit {
        s.subject.org_unit = Some(v.clone());
    }
    if let Some(v) = &o.country {
        s.subject.country = Some(v.clone());
    }
    if let Some(v) = &o.hierarchy {
        s.hierarchy = v.clone();
    }
    if let Some(v) = &o.key_usage {
        s.key_usage = v
            .iter()
            .map(|k| parse_ku(k))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| format!("role '{name}': {e}"))?;
    }
    if let Some(v) = &o.eku {
        s.eku = v
            .iter()
            .map(|k| parse_eku(k))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| format!("role '{name}': {e}"))?;
    }
    Ok(())
}

/// Issuers before the roles they issue; unknown issuers, non-CA issuers and
/// cycles are refused.
fn issuers_first(specs: Vec<RoleSpec>) -> std::result::Result<Vec<RoleSpec>, String> {
    let mut ordered: Vec<RoleSpec> = Vec::with_capacity(specs.len());
    let mut pending = specs;
    while !pending.is_empty() {
        let before = pending.len();
        let mut rest = Vec::new();
        for s in pending {
            match &s.issuer {
                None => ordered.push(s),
                Some(i) => match ordered.iter().find(|o| &o.name == i) {
                    Some(iss) if !iss.ca => {
                        return Err(format!("role '{}': issuer '{i}' is not a CA", s.name))
                    }
                    Some(_) => ordered.push(s),
                    None => rest.push(s),
                },
            }
        }
        if rest.len() == before {
            let names: Vec<String> = rest
                .iter()
                .map(|s| format!("{} (issuer {})", s.name, s.issuer.as_deref().unwrap_or("?")))
                .collect();
            return Err(format!("unknown or circular issuers: {}", names.join(", ")));
        }
        pending = rest;
    }
    Ok(ordered)
}

/// What `pki init` will create.
#[derive(Clone, Debug)]
pub struct InitPlan {
    /// Issuers before the certificates they issue.
    pub roles: Vec<RoleSpec>,
    pub uefi: bool,
    pub owner_guid: Guid,
}

impl InitPlan {
    /// Resolve built-ins + profile + CLI flags. `profile_path` is only for messages.
    pub fn resolve(
        profile: &Profile,
        profile_path: Option<&Path>,
        cli_key_type: Option<KeyType>,
        cli_uefi: bool,
    ) -> Result<InitPlan> {
        let perr = |msg: String| match profile_path {
            Some(p) => Error::input(p, msg),
            None => Error::Usage(msg),
        };
        let uefi = cli_uefi || profile.uefi.unwrap_or(false);
        let default_kt = cli_key_type
            .or(profile.key_type)
            .unwrap_or(KeyType::Rsa(4096));
        let subject = |cn: &str| Subject {
            country: Some(
                profile
                    .country
                    .clone()
                    .unwrap_or_else(|| DEFAULT_COUNTRY.into()),
            ),
            org: Some(profile.org.clone().unwrap_or_else(|| DEFAULT_ORG.into())),
            org_unit: Some(
                profile
                    .org_unit
                    .clone()
                    .unwrap_or_else(|| DEFAULT_OU.into()),
            ),
            common_name: cn.into(),
        };
        let mut specs = builtin_specs(uefi, default_kt, &subject);
        for (name, o) in &profile.roles {
            if !valid_role_name(name) {
                return Err(perr(format!(
                    "role name '{name}' must be 1-64 of [A-Za-z0-9_-]"
                )));
            }
            let idx = match specs.iter().position(|s| &s.name == name) {
                Some(i) => i,
                None => {
                    let s = new_role(name, o, &specs, default_kt, subject(name)).map_err(perr)?;
                    specs.push(s);
                    specs.len() - 1
                }
            };
            apply_override(&mut specs[idx], name, o).map_err(perr)?;
        }
        for s in &mut specs {
            s.rsa_pss = s.kind == RoleKind::X509
                && s.key_type.is_rsa()
                && RSA_PSS_ROLES.contains(&s.name.as_str());
        }
        Ok(InitPlan {
            roles: issuers_first(specs).map_err(perr)?,
            uefi,
            owner_guid: profile
                .owner_guid
                .unwrap_or_else(|| DEFAULT_OWNER_GUID.parse().expect("valid")),
        })
    }

    fn role(&self, name: &str) -> Option<&RoleSpec> {
        self.roles.iter().find(|r| r.name == name)
    }

    /// Every file a complete PKI of this plan has, manifest included.
    pub fn expected_files(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .roles
            .iter()
            .flat_map(|r| role_files(&r.name, r.kind).all())
            .collect();
        v.extend(self.extra_files().into_iter().map(|f| f.path));
        v.push(MANIFEST.into());
        v
    }

    /// Non-role files: the kernel module signing key, signature lists and
    /// the TPM PCR-policy key pair.
    fn extra_files(&self) -> Vec<FileEntry> {
        let mut v = vec![];
        if self.role(MODULE_SIGNING_ROLE).is_some() {
            for (path, kind) in [
                (MODULE_SIGNING_PEM, "module-signing-key"),
                (MODULE_SIGNING_X509, "module-signing-cert"),
            ] {
                v.push(FileEntry {
                    path: path.into(),
                    kind: kind.into(),
                    roles: vec![MODULE_SIGNING_ROLE.into()],
                    key_uri: None,
                    time: None,
                });
            }
        }
        if !self.uefi {
            return v;
        }
        // Only built-in UEFI roles are wired up; profiles cannot remove them.
        let esl = |path: &str, roles: &[&str]| FileEntry {
            path: path.into(),
            kind: "esl".into(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            key_uri: None,
            time: None,
        };
        if self.role("ssig_subca").is_some() {
            v.push(esl("ssig_subca.esl", &["ssig_subca"]));
            v.push(esl("DB.esl", &["DB", "ssig_subca"]));
        } else {
            v.push(esl("DB.esl", &["DB"]));
        }
        v.push(esl("KEK.esl", &["KEK"]));
        v.push(esl("PK.esl", &["PK"]));
        // Authenticated writes of those lists (PK signs PK and KEK, KEK signs db).
        let auths: Vec<FileEntry> = v
            .iter()
            .filter_map(|f| {
                let path = match f.path.as_str() {
                    "PK.esl" => "PK.auth",
                    "KEK.esl" => "KEK.auth",
                    "DB.esl" => "DB.auth",
                    _ => return None,
                };
                Some(FileEntry {
                    path: path.into(),
                    kind: "auth".into(),
                    roles: f.roles.clone(),
                    key_uri: None,
                    time: None,
                })
            })
            .collect();
        v.extend(auths);
        v.push(FileEntry {
            path: TPM_PCR_PRIVATE.into(),
            kind: "tpm-pcr-private-key".into(),
            roles: vec![],
            key_uri: None,
            time: None,
        });
        v.push(FileEntry {
            path: TPM_PCR_PUBLIC.into(),
            kind: "tpm-pcr-public-key".into(),
            roles: vec![],
            key_uri: None,
            time: None,
        });
        v
    }
}

/// The files of one role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleFiles {
    pub cert: String,
    /// The key file; absent when the key lives in a token (`key_uri`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub der: Option<String>,
}

impl RoleFiles {
    fn all(&self) -> Vec<String> {
        let mut v = vec![self.cert.clone()];
        v.extend(self.key.clone());
        v.extend(self.der.clone());
        v
    }
}

pub fn role_files(name: &str, kind: RoleKind) -> RoleFiles {
    match kind {
        RoleKind::X509 => RoleFiles {
            cert: format!("{name}.cert"),
            key: Some(format!("{name}.key")),
            der: None,
        },
        RoleKind::Uefi => RoleFiles {
            cert: format!("{name}.crt"),
            key: Some(format!("{name}.key")),
            der: Some(format!("{name}.cer")),
        },
    }
}

/// `pki.json`: what is in the directory and how the roles relate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Inventory {
    pub format: u32,
    pub generator: String,
    /// Development PKIs are refused as production keys by `resign`.
    pub development: bool,
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_guid: Option<Guid>,
    pub roles: Vec<RoleEntry>,
    #[serde(default)]
    pub files: Vec<FileEntry>,
    /// Predecessors `pki rotate` kept (`retired/ROLE.N.*`), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<RetiredEntry>,
    /// Signed variable updates `pki rotate` wrote (`updates/*.auth`), in the
    /// order their timestamps give them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub updates: Vec<UpdateEntry>,
}

/// A role's certificate and key that `pki rotate` replaced.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RetiredEntry {
    pub role: String,
    pub generation: u32,
    pub subject: String,
    pub key_type: String,
    pub fingerprint_sha256: String,
    #[serde(flatten)]
    pub files: RoleFiles,
    /// The certificate that replaced it.
    pub successor_sha256: String,
    /// When it was retired (RFC 3339).
    pub retired: String,
    /// The update that revokes it (dbx), for roles whose certificate is in db.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
}

/// An authenticated variable update written by `pki rotate`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpdateEntry {
    /// Relative to the PKI directory (`updates/db-append-ssig_subca.2.auth`).
    pub path: String,
    /// The variable: `db`, `dbx` or `KEK`.
    pub var: String,
    pub append: bool,
    /// EFI_TIME of the update, "YYYY-MM-DD HH:MM:SS" (UTC).
    pub time: String,
    /// "add" (the successor's certificate), "revoke" (the predecessor's
    /// TBSCertificate SHA-256, EFI_CERT_X509_SHA256) or "replace" (the
    /// whole new list, holding the successor's certificate; `append` false).
    pub action: String,
    /// The role and generation the update adds or revokes.
    pub role: String,
    pub generation: u32,
    /// SHA-256 fingerprint of that certificate.
    pub cert_sha256: String,
    /// The role (PK or KEK) whose certificate signed it, and that certificate.
    pub signer: String,
    pub signer_sha256: String,
}

impl UpdateEntry {
    /// What the update does, for `pki rotate` and `pki check` output.
    pub fn describe(&self) -> String {
        format!(
            "{} {} generation {}, {} {}, time {}, signed by {}",
            self.action,
            self.role,
            self.generation,
            if self.append {
                "append to"
            } else {
                "replacement of"
            },
            self.var,
            self.time,
            self.signer
        )
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoleEntry {
    pub role: String,
    pub hierarchy: String,
    pub kind: RoleKind,
    pub issuer: Option<String>,
    pub ca: bool,
    pub key_type: String,
    pub subject: String,
    pub fingerprint_sha256: String,
    #[serde(flatten)]
    pub files: RoleFiles,
    /// RFC 7512 URI of the private key when it lives in a token (`pki init
    /// --hsm`); never holds a PIN. The PIN comes from $PKI_SIGNER_PKCS11_PIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_uri: Option<String>,
    /// 1 for the certificate `pki init` made; `pki rotate` counts up.
    #[serde(
        default = "first_generation",
        skip_serializing_if = "is_first_generation"
    )]
    pub generation: u32,
    /// The certificate this one succeeded (see `Inventory::retired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predecessor_sha256: Option<String>,
}

fn first_generation() -> u32 {
    1
}

fn is_first_generation(g: &u32) -> bool {
    *g == 1
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileEntry {
    /// Empty for a private key that lives in a token (see `key_uri`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// The token key of a `tpm-pcr-private-key` entry made by `pki init --hsm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_uri: Option<String>,
    /// The EFI_TIME of an `.auth` file `pki rotate` signed again; absent:
    /// SOURCE_DATE_EPOCH of `pki init` (or its clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

impl Inventory {
    pub fn load(dir: &Path) -> Result<Inventory> {
        let p = dir.join(MANIFEST);
        let text = fsutil::read_input_to_string(&p, fsutil::InputKind::PkiManifest)?;
        serde_json::from_str(&text).map_err(|e| Error::input(&p, format!("bad manifest: {e}")))
    }

    fn all_files(&self) -> Vec<String> {
        let mut v: Vec<String> = self.roles.iter().flat_map(|r| r.files.all()).collect();
        v.extend(
            self.files
                .iter()
                .filter(|f| !f.path.is_empty())
                .map(|f| f.path.clone()),
        );
        v
    }

    /// True if the role keys live in a token rather than in files.
    pub fn keys_in_token(&self) -> bool {
        self.roles.iter().any(|r| r.key_uri.is_some())
    }

    pub fn role(&self, name: &str) -> Option<&RoleEntry> {
        self.roles.iter().find(|r| r.role == name)
    }
}

/// A PKI directory opened for reading: ours (with pki.json) or a GyroidOS-style
/// one made by gen_dev_certs.sh (roles found by file name).
pub struct Pki {
    pub dir: PathBuf,
    pub manifest: Option<Inventory>,
    pub roles: Vec<RoleEntryRef>,
}

/// A role as found on disk.
#[derive(Clone, Debug)]
pub struct RoleEntryRef {
    pub role: String,
    pub issuer: Option<String>,
    pub cert: PathBuf,
    /// A key file, or the `pkcs11:` URI of a token key (as a path, the way
    /// `--key` takes it).
    pub key: Option<PathBuf>,
}

impl Pki {
    pub fn open(dir: &Path) -> Result<Pki> {
        let md = fs::metadata(dir).at(dir)?;
        if !md.is_dir() {
            return Err(Error::input(dir, "not a directory"));
        }
        if dir.join(MANIFEST).exists() {
            let m = Inventory::load(dir)?;
            let roles = m
                .roles
                .iter()
                .map(|r| RoleEntryRef {
                    role: r.role.clone(),
                    issuer: r.issuer.clone(),
                    cert: dir.join(&r.files.cert),
                    // A token key is named by its URI, which `identity::load_signer` opens.
                    key: match (&r.key_uri, &r.files.key) {
                        (Some(uri), _) => Some(PathBuf::from(uri)),
                        (None, Some(k)) => Some(dir.join(k)),
                        (None, None) => None,
                    },
                })
                .collect();
            return Ok(Pki {
                dir: dir.into(),
                manifest: Some(m),
                roles,
            });
        }
        // No manifest: every NAME.cert / NAME.crt is a role; issuers are found by name matching in `check`.
        let mut roles = vec![];
        let mut entries: Vec<_> = fs::read_dir(dir)
            .at(dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext != "cert" && ext != "crt" {
                continue;
            }
            let stem = p
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("")
                .to_string();
            let key = dir.join(format!("{stem}.key"));
            roles.push(RoleEntryRef {
                role: stem,
                issuer: None,
                key: key.exists().then_some(key),
                cert: p,
            });
        }
        if roles.is_empty() {
            return Err(Error::input(
                dir,
                format!("no {MANIFEST} and no *.cert/*.crt files: not a PKI directory"),
            ));
        }
        Ok(Pki {
            dir: dir.into(),
            manifest: None,
            roles,
        })
    }

    pub fn role(&self, name: &str) -> Result<&RoleEntryRef> {
        self.roles.iter().find(|r| r.role == name).ok_or_else(|| {
            let known: Vec<&str> = self.roles.iter().map(|r| r.role.as_str()).collect();
            Error::input(
                &self.dir,
                format!("no role '{name}' (known: {})", known.join(", ")),
            )
        })
    }
}

/// Options of `pki init`.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub dir: PathBuf,
    pub plan: InitPlan,
    /// `pkcs11:token=...` (no object): generate every key of the PKI in this
    /// token instead of in files. DIR then holds certificates, signature
    /// lists and `pki.json`, which names each key by its URI.
    pub hsm: Option<String>,
    /// A development PKI whose db certificates (DB, ssig_subca and their
    /// retired generations) the new PKI revokes: `dbx.esl` and `dbx.auth`,
    /// so that images signed in development are denied on production devices.
    pub revoke_dev: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
pub struct InitReport {
    /// "created" or "present".
    pub status: &'static str,
    pub dir: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub roles: Vec<RoleEntry>,
    pub seconds: f64,
}

enum DirState {
    Absent,
    Empty,
    Complete(Option<Inventory>),
    Partial(String),
}

fn list_missing(dir: &Path, files: &[String]) -> Vec<String> {
    files
        .iter()
        .filter(|f| !dir.join(f).exists())
        .cloned()
        .collect()
}

fn summarize(v: &[String]) -> String {
    if v.len() <= 6 {
        v.join(", ")
    } else {
        format!("{} and {} more", v[..6].join(", "), v.len() - 6)
    }
}

fn inspect(dir: &Path, plan: &InitPlan) -> Result<DirState> {
    let md = match fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if fs::symlink_metadata(dir).is_ok() {
                return Ok(DirState::Partial("it is a dangling symlink".into()));
            }
            return Ok(DirState::Absent);
        }
        Err(e) => return Err(Error::io(dir, e)),
    };
    if !md.is_dir() {
        return Err(Error::input(dir, "exists and is not a directory"));
    }
    if dir.join(MANIFEST).exists() {
        let m = Inventory::load(dir)?;
        let missing = list_missing(dir, &m.all_files());
        if !missing.is_empty() {
            return Ok(DirState::Partial(format!(
                "missing {}",
                summarize(&missing)
            )));
        }
        let lacking: Vec<String> = plan
            .roles
            .iter()
            .filter(|r| m.role(&r.name).is_none() && !ADDED_ROLES.contains(&r.name.as_str()))
            .map(|r| r.name.clone())
            .collect();
        if !lacking.is_empty() {
            return Ok(DirState::Partial(format!(
                "its {MANIFEST} has no role {} (requested by the profile or --uefi); generate into another --dir",
                summarize(&lacking)
            )));
        }
        return Ok(DirState::Complete(Some(m)));
    }
    let mut expected = plan.expected_files();
    // A directory gen_dev_certs.sh made before it derived the module signing
    // files, or before some role existed, is complete all the same.
    let newer: Vec<String> = ADDED_ROLES
        .iter()
        .filter_map(|r| plan.role(r))
        .flat_map(|r| role_files(&r.name, r.kind).all())
        .chain([
            MODULE_SIGNING_PEM.to_string(),
            MODULE_SIGNING_X509.to_string(),
        ])
        .collect();
    expected.retain(|f| f != MANIFEST && !newer.contains(f));
    let missing = list_missing(dir, &expected);
    if missing.is_empty() {
        return Ok(DirState::Complete(None));
    }
    if fs::read_dir(dir).at(dir)?.next().is_none() {
        return Ok(DirState::Empty);
    }
    Ok(DirState::Partial(format!(
        "no {MANIFEST}, missing {}",
        summarize(&missing)
    )))
}

fn present(dir: &Path, m: Option<Inventory>, started: std::time::Instant) -> InitReport {
    let note = m
        .is_none()
        .then(|| format!("no {MANIFEST}: using an existing GyroidOS-style PKI"));
    InitReport {
        status: "present",
        dir: dir.into(),
        note,
        roles: m.map(|m| m.roles).unwrap_or_default(),
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// `present`, unless the caller asked for token keys and DIR holds key
/// files: reporting "present" then would let a release engineer believe the
/// keys are in the HSM.
fn present_for(
    opts: &InitOptions,
    dir: &Path,
    m: Option<Inventory>,
    started: std::time::Instant,
) -> Result<InitReport> {
    if opts.hsm.is_some() && !m.as_ref().is_some_and(|m| m.keys_in_token()) {
        return Err(Error::input(
            dir,
            "holds a PKI with key files; --hsm does not move keys into a token: use another --dir",
        ));
    }
    Ok(present(dir, m, started))
}

/// Open the token for `pki init --hsm` and refuse it unless it can make
/// every key of the plan and holds no object with a label the plan uses:
/// two keys under one label are a signing accident waiting to happen.
fn open_token(uri: &str, plan: &InitPlan) -> Result<TokenWriter> {
    let w = TokenWriter::open(uri)?;
    let mut types: Vec<KeyType> = plan.roles.iter().map(|r| r.key_type).collect();
    if plan.uefi {
        types.push(UEFI_KEY_TYPE);
    }
    types.dedup();
    for t in &types {
        w.check_supports(*t)?;
    }
    let mut labels: Vec<&str> = plan.roles.iter().map(|r| r.name.as_str()).collect();
    if plan.uefi {
        labels.push(TPM_PCR_LABEL);
    }
    let used = w.labels_in_use(&labels)?;
    if !used.is_empty() {
        return Err(Error::input(
            w.shown(),
            format!(
                "token '{}' already holds objects labelled {}; pki init --hsm never mixes keys: use an empty token or delete them (pkcs11-tool --delete-object --label L --type privkey|pubkey|cert)",
                w.token(),
                summarize(&used)
            ),
        ));
    }
    Ok(w)
}

/// Generate the PKI in `opts.dir` unless it is already there.
///
/// Safe under concurrency: the state is re-checked under an exclusive lock on
/// `DIR.lock`, the PKI is built in a private temp directory beside DIR and
/// published with one rename, so other processes see either nothing or all of it.
pub fn init(opts: &InitOptions) -> Result<InitReport> {
    let started = std::time::Instant::now();
    let dir = normalize(&opts.dir);
    let is_symlink = fs::symlink_metadata(&dir)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false);

    // Fast path without touching anything (a release PKI may be read-only).
    let state = inspect(&dir, &opts.plan)?;
    let creating = matches!(state, DirState::Absent | DirState::Empty);
    match state {
        DirState::Complete(m) => {
            crate::release::check_pki_init(&dir, false, opts.hsm.is_some())?;
            return present_for(opts, &dir, m, started);
        }
        DirState::Partial(why) if is_symlink => {
            return Err(Error::input(&dir, format!("is a symlink (a release PKI?) and incomplete: {why}; pki-signer never writes through it")))
        }
        _ if is_symlink => {
            return Err(Error::input(&dir, "is a symlink to an empty directory; pki-signer never writes through it"))
        }
        _ => {}
    }

    // Release mode never creates a development PKI.
    crate::release::check_pki_init(&dir, creating, opts.hsm.is_some())?;
    let revoke = match &opts.revoke_dev {
        None => vec![],
        Some(dev) => {
            if !opts.plan.uefi {
                return Err(Error::Usage(
                    "--revoke-dev writes dbx.esl/dbx.auth: it needs --uefi".into(),
                ));
            }
            if opts.hsm.is_none() {
                return Err(Error::Usage(
                    "--revoke-dev is for production PKIs, whose keys pki init --hsm makes in a token"
                        .into(),
                ));
            }
            crate::lifecycle::dev_db_certs(dev)?
        }
    };
    let parent = fsutil::parent_dir(&dir);
    fs::create_dir_all(&parent).at(&parent)?;
    let name = dir
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{}: not a directory name", dir.display())))?
        .to_string_lossy()
        .to_string();
    let lock_path = parent.join(format!("{name}.lock"));
    let _lock = DirLock::acquire(&lock_path)?;

    match inspect(&dir, &opts.plan)? {
        DirState::Complete(m) => {
            crate::release::check_pki_init(&dir, false, opts.hsm.is_some())?;
            return present_for(opts, &dir, m, started);
        }
        DirState::Partial(why) => {
            return Err(Error::input(
                &dir,
                format!("incomplete PKI ({why}); refusing to overwrite: remove it or fix it"),
            ))
        }
        DirState::Absent | DirState::Empty => {}
    }

    fsutil::remove_stale_temps(&dir);
    // The token is opened (and logged in to) before anything is written, so
    // a wrong PIN or a missing module leaves no trace.
    let mut hsm = match &opts.hsm {
        Some(uri) => Some(open_token(uri, &opts.plan)?),
        None => None,
    };
    let tmp = fsutil::temp_path(&dir, fsutil::tag::TMP)?;
    // Private from its first instant: keys are written into it (the umask
    // can only narrow 0700).
    fs::DirBuilder::new().mode(0o700).create(&tmp).at(&tmp)?;
    let result = generate_into(&tmp, &opts.plan, hsm.as_mut(), &revoke).and_then(|m| {
        fsutil::sync_dir(&tmp)?;
        // rename(2) atomically replaces an empty directory, too.
        fs::rename(&tmp, &dir).at(&dir)?;
        // Published: from here on the token objects belong to DIR. Dropping
        // an uncommitted writer (any error above) removes them again.
        if let Some(w) = hsm.take() {
            w.commit();
        }
        fsutil::sync_dir(&parent)?;
        Ok(m)
    });
    match result {
        Ok(m) => Ok(InitReport {
            status: "created",
            dir,
            note: None,
            roles: m.roles,
            seconds: started.elapsed().as_secs_f64(),
        }),
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// "pki/" and "pki" are the same directory; the lock and temp names need the bare name.
pub(crate) fn normalize(p: &Path) -> PathBuf {
    let s = p.to_string_lossy();
    let t = s.trim_end_matches('/');
    if t.is_empty() {
        PathBuf::from("/")
    } else {
        PathBuf::from(t)
    }
}

fn chain_pem(plan: &InitPlan, ders: &HashMap<String, Vec<u8>>, role: &RoleSpec) -> String {
    let mut out = x509::pem_cert(&ders[&role.name]);
    let mut cur = role;
    while let Some(iss) = cur.issuer.as_deref().and_then(|i| plan.role(i)) {
        if iss.issuer.is_none() {
            break; // the root is distributed on its own, never in chains
        }
        out.push_str(&x509::pem_cert(&ders[&iss.name]));
        cur = iss;
    }
    out
}

/// Label of the TPM PCR-policy key in a token.
const TPM_PCR_LABEL: &str = "tpm2-pcr";

/// One key made by `pki init`: the signer, plus what to record for it.
struct NewKey {
    signer: Box<dyn Signer>,
    /// PKCS#8 DER of a file key, to be written as `NAME.key`.
    pkcs8: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// URI and CKA_ID of a token key.
    token: Option<(String, Vec<u8>)>,
}

/// Generate one key per (name, type): in files, or in the token `hsm`.
/// File keys with `pss` set are typed id-RSASSA-PSS; token keys are plain
/// RSA objects (GyroidOS's sign_config.sh, too, leaves the PSS typing of
/// token keys to whoever imports them).
fn generate_keys(
    names: &[&str],
    types: &[KeyType],
    pss: &[bool],
    hsm: Option<&mut TokenWriter>,
) -> Result<Vec<NewKey>> {
    match hsm {
        None => {
            let pkcs8s = keys::generate_many(types)?;
            pkcs8s
                .into_iter()
                .zip(names)
                .zip(pss)
                .map(|((der, name), &pss)| {
                    let der = zeroize::Zeroizing::new(der);
                    let der = if pss {
                        keys::pkcs8_as_rsa_pss(&der)?
                    } else {
                        der
                    };
                    Ok(NewKey {
                        signer: Box::new(FileKey::from_pkcs8(&der, Path::new(name))?),
                        pkcs8: Some(der),
                        token: None,
                    })
                })
                .collect()
        }
        Some(w) => {
            let items: Vec<(&str, KeyType)> =
                names.iter().copied().zip(types.iter().copied()).collect();
            Ok(w.generate_many(&items)?
                .into_iter()
                .map(|g| NewKey {
                    signer: Box::new(g.key),
                    pkcs8: None,
                    token: Some((g.uri, g.id)),
                })
                .collect())
        }
    }
}

fn generate_into(
    tmp: &Path,
    plan: &InitPlan,
    mut hsm: Option<&mut TokenWriter>,
    revoke: &[Vec<u8>],
) -> Result<Inventory> {
    let mut types: Vec<KeyType> = plan.roles.iter().map(|r| r.key_type).collect();
    let mut names: Vec<&str> = plan.roles.iter().map(|r| r.name.as_str()).collect();
    let mut pss: Vec<bool> = plan.roles.iter().map(|r| r.rsa_pss).collect();
    if plan.uefi {
        types.push(UEFI_KEY_TYPE); // TPM PCR-policy key
        names.push(TPM_PCR_LABEL);
        pss.push(false);
    }
    // A PKI whose keys were made in a token is meant for production; every
    // other one is a development PKI, and each of its certificates says so.
    let development = hsm.is_none();
    let keys = generate_keys(&names, &types, &pss, hsm.as_deref_mut())?;

    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .map_err(|e| Error::Crypto(e.to_string()))?;
    let mut ders: HashMap<String, Vec<u8>> = HashMap::new();
    let mut entries = vec![];
    for (i, role) in plan.roles.iter().enumerate() {
        let spec = CertSpec {
            subject: role.subject.clone(),
            ca: role.ca,
            not_before: now,
            days: role.days,
            key_usage: role.key_usage.clone(),
            eku: role.eku.clone(),
        };
        let issuer = match &role.issuer {
            None => None,
            Some(iname) => {
                let j = plan
                    .roles
                    .iter()
                    .position(|r| &r.name == iname)
                    .expect("plan is ordered");
                Some((ders[iname].as_slice(), keys[j].signer.as_ref()))
            }
        };
        let marker = if development {
            vec![crate::release::marker_extension()]
        } else {
            vec![]
        };
        let der = x509::issue_with(&spec, keys[i].signer.as_ref(), issuer, marker)?;
        let mut files = role_files(&role.name, role.kind);
        match (&keys[i].pkcs8, &files.key) {
            (Some(p8), Some(kf)) => {
                fsutil::write_new(&tmp.join(kf), keys::pkcs8_pem(p8).as_bytes(), KEY_MODE)?
            }
            _ => files.key = None,
        }
        if let Some(d) = &files.der {
            fsutil::write_new(&tmp.join(d), &der, PUBLIC_MODE)?;
        }
        let info = x509::describe(&der, &tmp.join(&files.cert))?;
        entries.push(RoleEntry {
            role: role.name.clone(),
            hierarchy: role.hierarchy.clone(),
            kind: role.kind,
            issuer: role.issuer.clone(),
            ca: role.ca,
            key_type: match role.key_type {
                KeyType::Rsa(bits) if keys[i].signer.rsa_pss_only() => format!("rsa-pss:{bits}"),
                t => t.to_string(),
            },
            subject: info.subject,
            fingerprint_sha256: info.fingerprint_sha256,
            files,
            key_uri: keys[i].token.as_ref().map(|(uri, _)| uri.clone()),
            generation: 1,
            predecessor_sha256: None,
        });
        ders.insert(role.name.clone(), der);
    }
    for (role, e) in plan.roles.iter().zip(&entries) {
        fsutil::write_new(
            &tmp.join(&e.files.cert),
            chain_pem(plan, &ders, role).as_bytes(),
            PUBLIC_MODE,
        )?;
    }

    let mut extra = plan.extra_files();
    if !revoke.is_empty() {
        for (path, kind) in [("dbx.esl", "dbx-esl"), ("dbx.auth", "dbx-auth")] {
            extra.push(FileEntry {
                path: path.into(),
                kind: kind.into(),
                roles: vec![],
                key_uri: None,
                time: None,
            });
        }
    }
    let tpm_key = keys.last().filter(|_| plan.uefi);
    let module_key = plan
        .roles
        .iter()
        .position(|r| r.name == MODULE_SIGNING_ROLE)
        .map(|j| &keys[j]);
    // A token key cannot go into a PEM file: only the certificate is written.
    extra.retain(|f| {
        f.kind != "module-signing-key" || module_key.is_some_and(|k| k.pkcs8.is_some())
    });
    for f in &mut extra {
        let path = tmp.join(&f.path);
        if let Some(d) = Path::new(&f.path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(tmp.join(d))
                .at(tmp.join(d))?;
        }
        match f.kind.as_str() {
            // gen_dev_certs.sh's derive_exports: `cat ssig_subca.key` then
            // `openssl x509 -in ssig_subca.cert -outform PEM` (the first
            // certificate only), and the same certificate as DER.
            "module-signing-key" => {
                let p8 = module_key
                    .and_then(|k| k.pkcs8.as_ref())
                    .expect("retained only with a key file");
                let mut pem = zeroize::Zeroizing::new(keys::pkcs8_pem(p8));
                pem.push_str(&x509::pem_cert(&ders[MODULE_SIGNING_ROLE]));
                fsutil::write_new(&path, pem.as_bytes(), KEY_MODE)?;
            }
            "module-signing-cert" => {
                fsutil::write_new(&path, &ders[MODULE_SIGNING_ROLE], PUBLIC_MODE)?;
            }
            "esl" => {
                let data: Vec<u8> = f
                    .roles
                    .iter()
                    .flat_map(|r| efivar::esl_x509(plan.owner_guid, &ders[r]))
                    .collect();
                fsutil::write_new(&path, &data, PUBLIC_MODE)?;
            }
            "auth" => {
                // The variable and its signer follow from the file name.
                let (var, signer) = match f.path.as_str() {
                    "PK.auth" => (efivar::SecureVar::Pk, "PK"),
                    "KEK.auth" => (efivar::SecureVar::Kek, "PK"),
                    _ => (efivar::SecureVar::Db, "KEK"),
                };
                let j = plan
                    .roles
                    .iter()
                    .position(|r| r.name == signer)
                    .expect("UEFI roles are planned");
                let data: Vec<u8> = f
                    .roles
                    .iter()
                    .flat_map(|r| efivar::esl_x509(plan.owner_guid, &ders[r]))
                    .collect();
                let time = efivar::EfiTime::from_env_or(now)?;
                let auth = efivar::sign_auth(
                    var,
                    false,
                    time,
                    &data,
                    keys[j].signer.as_ref(),
                    &ders[signer],
                    &[],
                )?;
                fsutil::write_new(&path, &auth, PUBLIC_MODE)?;
            }
            "dbx-esl" => {
                let data = efivar::esl_x509_sha256(plan.owner_guid, revoke, &path)?;
                fsutil::write_new(&path, &data, PUBLIC_MODE)?;
            }
            "dbx-auth" => {
                // An append: it adds to whatever dbx the device already has.
                let j = plan
                    .roles
                    .iter()
                    .position(|r| r.name == "KEK")
                    .expect("UEFI roles are planned");
                let data = efivar::esl_x509_sha256(plan.owner_guid, revoke, &path)?;
                let time = efivar::EfiTime::from_env_or(now)?;
                let auth = efivar::sign_auth(
                    efivar::SecureVar::Dbx,
                    true,
                    time,
                    &data,
                    keys[j].signer.as_ref(),
                    &ders["KEK"],
                    &[],
                )?;
                fsutil::write_new(&path, &auth, PUBLIC_MODE)?;
            }
            "tpm-pcr-private-key" => {
                let k = tpm_key.expect("tpm key");
                match (&k.pkcs8, &k.token) {
                    (Some(p8), _) => {
                        fsutil::write_new(&path, keys::pkcs8_pem(p8).as_bytes(), KEY_MODE)?
                    }
                    (None, Some((uri, _))) => {
                        f.path.clear();
                        f.key_uri = Some(uri.clone());
                    }
                    (None, None) => unreachable!("a key is a file or a token object"),
                }
            }
            "tpm-pcr-public-key" => {
                let spki = x509::spki_der(tpm_key.expect("tpm key").signer.as_ref());
                fsutil::write_new(
                    &path,
                    crate::codec::pem_encode("PUBLIC KEY", &spki).as_bytes(),
                    PUBLIC_MODE,
                )?;
            }
            _ => unreachable!("unknown extra file kind"),
        }
    }

    // The certificates go on the token too, beside their keys, so the token
    // alone is a complete record of what it holds.
    if let Some(w) = hsm {
        for (i, role) in plan.roles.iter().enumerate() {
            let (_, id) = keys[i].token.as_ref().expect("token key");
            w.store_cert(&role.name, id, &ders[&role.name])?;
        }
        w.check_unique(&names)?;
    }

    let manifest = Inventory {
        format: 1,
        generator: format!("pki-signer {}", env!("CARGO_PKG_VERSION")),
        // `resign` and release mode accept a token PKI where they refuse
        // development PKIs.
        development,
        created: now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        owner_guid: plan.uefi.then_some(plan.owner_guid),
        roles: entries,
        files: extra,
        retired: vec![],
        updates: vec![],
    };
    let json =
        serde_json::to_string_pretty(&manifest).map_err(|e| Error::Internal(e.to_string()))? + "\n";
    fsutil::write_new(&tmp.join(MANIFEST), json.as_bytes(), PUBLIC_MODE)?;
    Ok(manifest)
}

/// One row of `pki show`.
#[derive(Clone, Debug, Serialize)]
pub struct ShowRow {
    pub role: String,
    pub file: PathBuf,
    #[serde(flatten)]
    pub info: x509::CertInfo,
}

pub fn show(pki: &Pki) -> Result<Vec<ShowRow>> {
    pki.roles
        .iter()
        .map(|r| {
            let certs = x509::read_certs(&r.cert)?;
            Ok(ShowRow {
                role: r.role.clone(),
                file: r.cert.clone(),
                info: x509::describe(&certs[0], &r.cert)?,
            })
        })
        .collect()
}

/// Result of checking one role (or one extra file).
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckItem {
    pub role: String,
    pub ok: bool,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    /// What the item is in the PKI's history: generation, successor,
    /// revocation, the update's place in the order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub dir: PathBuf,
    pub ok: bool,
    pub items: Vec<CheckItem>,
}

/// Verify chains, key/cert pairs, validity and signature lists.
/// `password` decrypts encrypted keys (GyroidOS encrypts its general PKI keys).
pub fn check(
    pki: &Pki,
    now: OffsetDateTime,
    password: Option<&str>,
    warn_days: u32,
) -> Result<CheckReport> {
    // Load every role's certificate chain up front; a file that does not parse is a problem of that role.
    let chains: Vec<Result<Vec<Vec<u8>>>> = pki
        .roles
        .iter()
        .map(|r| x509::read_certs(&r.cert))
        .collect();
    let mut by_subject: HashMap<String, usize> = HashMap::new();
    for (i, c) in chains.iter().enumerate() {
        if let Ok(c) = c {
            if let Ok(p) = x509::parse(&c[0], &pki.roles[i].cert) {
                by_subject.entry(p.subject().to_string()).or_insert(i);
            }
        }
    }
    let ctx = CheckCtx {
        pki,
        chains: &chains,
        by_subject: &by_subject,
        now,
        password,
        warn_days,
    };
    let mut items = vec![];
    for (i, r) in pki.roles.iter().enumerate() {
        let mut it = CheckItem {
            role: r.role.clone(),
            ..Default::default()
        };
        match &chains[i] {
            Err(e) => it.problems.push(e.to_string()),
            Ok(chain) => check_role(&ctx, r, chain, &mut it),
        }
        it.ok = it.problems.is_empty();
        items.push(it);
    }
    if let Some(m) = &pki.manifest {
        for f in m
            .files
            .iter()
            .filter(|f| f.kind == "esl" || f.kind == "auth")
        {
            let mut it = CheckItem {
                role: f.path.clone(),
                ..Default::default()
            };
            if f.kind == "esl" {
                check_esl(pki, m, f, &mut it);
            } else {
                check_auth(pki, m, f, &mut it);
            }
            it.ok = it.problems.is_empty();
            items.push(it);
        }
    }
    if let Some(m) = &pki.manifest {
        crate::lifecycle::check_history(pki, m, now, &mut items);
    }
    // Listed only when something is wrong, so a sound PKI keeps its item count.
    let mut perms = CheckItem {
        role: "permissions".into(),
        ..Default::default()
    };
    check_permissions(pki, &mut perms);
    if !perms.problems.is_empty() {
        items.push(perms);
    }
    Ok(CheckReport {
        dir: pki.dir.clone(),
        ok: items.iter().all(|i| i.ok),
        items,
    })
}

/// What every role check looks at besides the role itself.
struct CheckCtx<'a> {
    pki: &'a Pki,
    chains: &'a [Result<Vec<Vec<u8>>>],
    by_subject: &'a HashMap<String, usize>,
    now: OffsetDateTime,
    password: Option<&'a str>,
    warn_days: u32,
}

fn check_role(ctx: &CheckCtx<'_>, r: &RoleEntryRef, chain: &[Vec<u8>], it: &mut CheckItem) {
    let CheckCtx {
        pki,
        chains,
        by_subject,
        now,
        password,
        warn_days,
    } = *ctx;
    let parsed: Vec<_> = match chain
        .iter()
        .map(|d| x509::parse(d, &r.cert))
        .collect::<Result<Vec<_>>>()
    {
        Ok(p) => p,
        Err(e) => return it.problems.push(e.to_string()),
    };
    let leaf = &parsed[0];
    // Validity of every certificate in the file.
    for c in &parsed {
        let nb = c.validity().not_before.to_datetime();
        let na = c.validity().not_after.to_datetime();
        if now < nb {
            it.problems.push(format!(
                "'{}' is not valid before {}",
                c.subject(),
                x509::rfc3339(&c.validity().not_before)
            ));
        } else if now > na {
            it.problems.push(format!(
                "'{}' expired {}",
                c.subject(),
                x509::rfc3339(&c.validity().not_after)
            ));
        } else if na - now < time::Duration::days(i64::from(warn_days)) {
            it.warnings.push(format!(
                "'{}' expires {} (within {warn_days} days)",
                c.subject(),
                x509::rfc3339(&c.validity().not_after)
            ));
        }
    }
    // Walk the chain in the file, then up to a root from the directory.
    for pair in parsed.windows(2) {
        if let Err(e) = x509::verify_signed_by(&pair[0], &pair[1]) {
            it.problems.push(format!(
                "chain in file: '{}' not signed by '{}': {e}",
                pair[0].subject(),
                pair[1].subject()
            ));
        }
        if !x509::is_ca(&pair[1]) {
            it.problems.push(format!(
                "chain in file: issuer '{}' is not a CA",
                pair[1].subject()
            ));
        }
    }
    let top = parsed.last().expect("non-empty");
    if top.subject() == top.issuer() {
        if let Err(e) = x509::verify_signed_by(top, top) {
            it.problems.push(format!("self-signature: {e}"));
        }
    } else {
        // The role's own issuer when the file holds no chain; otherwise whoever issued the top of the chain.
        let idx = match (parsed.len(), r.issuer.as_deref()) {
            (1, Some(name)) => pki.roles.iter().position(|x| x.role == name),
            _ => by_subject.get(&top.issuer().to_string()).copied(),
        };
        let issuer_der = idx.and_then(|j| chains[j].as_ref().ok().map(|c| (j, &c[0])));
        match issuer_der {
            None => it.problems.push(format!(
                "issuer '{}' not found in {}",
                top.issuer(),
                pki.dir.display()
            )),
            Some((j, der)) => match x509::parse(der, &pki.roles[j].cert) {
                Err(e) => it.problems.push(e.to_string()),
                Ok(issuer_cert) => {
                    if let Err(e) = x509::verify_signed_by(top, &issuer_cert) {
                        it.problems.push(format!(
                            "'{}' not signed by '{}': {e}",
                            top.subject(),
                            issuer_cert.subject()
                        ));
                    } else if !x509::is_ca(&issuer_cert) {
                        it.problems
                            .push(format!("issuer '{}' is not a CA", issuer_cert.subject()));
                    }
                }
            },
        }
    }
    // The rules every verifier applies (CA flags, path length, critical
    // extensions) over the PKI's own certificates, up to its root.
    if it.problems.is_empty() {
        let pool: Vec<Vec<u8>> = chain
            .iter()
            .skip(1)
            .chain(chains.iter().filter_map(|c| c.as_ref().ok()).flatten())
            .cloned()
            .collect();
        let roots: Vec<Vec<u8>> = pool
            .iter()
            .chain(chain.iter())
            .filter(|d| x509::parse(d, &r.cert).is_ok_and(|c| c.subject() == c.issuer()))
            .cloned()
            .collect();
        if let Err(e) =
            crate::chain::build(&chain[0], &pool, &roots, &crate::chain::Rules::root(None))
        {
            it.problems.push(format!("certificate path: {e}"));
        }
    }
    // The private key must belong to the certificate.
    match &r.key {
        None => it.warnings.push("no private key file".into()),
        Some(kp) if pkcs11::is_uri(kp) => {
            // Opening it logs in and finds the private key itself, not only a
            // public object that could outlive a deleted key.
            match Pkcs11Key::open(&kp.to_string_lossy()) {
                Err(e) => it.problems.push(e.to_string()),
                Ok(k) => {
                    if k.public_key() != leaf.public_key().subject_public_key.data.as_ref() {
                        it.problems.push(format!(
                            "{} does not match the certificate's public key",
                            k.origin()
                        ));
                    }
                }
            }
        }
        Some(kp) => {
            if let Some(p) = key_mode_problem(kp) {
                it.problems.push(p);
            }
            match FileKey::load(kp, password) {
                Err(e) => it.problems.push(e.to_string()),
                Ok(k) => {
                    if k.public_key() != leaf.public_key().subject_public_key.data.as_ref() {
                        it.problems.push(format!(
                            "{} does not match the certificate's public key",
                            kp.display()
                        ));
                    }
                }
            }
        }
    }
}

/// A private key file open to group or others (any bit of 077).
pub(crate) fn key_mode_problem(path: &Path) -> Option<String> {
    let mode = fs::metadata(path).ok()?.mode() & 0o7777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "{}: mode {mode:04o}; a private key must not be open to group or others (chmod 600)",
            path.display()
        )
    })
}

/// The TPM PCR key (role keys are checked with their role), and the
/// directory itself when it holds private key files: group or others may
/// neither list nor change it.
fn check_permissions(pki: &Pki, it: &mut CheckItem) {
    let tpm_keys: Vec<PathBuf> = pki
        .manifest
        .iter()
        .flat_map(|m| &m.files)
        .filter(|f| {
            (f.kind == "tpm-pcr-private-key" || f.kind == "module-signing-key")
                && !f.path.is_empty()
        })
        .map(|f| pki.dir.join(&f.path))
        .collect();
    it.problems
        .extend(tpm_keys.iter().filter_map(|k| key_mode_problem(k)));
    let key_files = !tpm_keys.is_empty()
        || pki
            .roles
            .iter()
            .any(|r| r.key.as_deref().is_some_and(|k| !pkcs11::is_uri(k)));
    if let (true, Ok(md)) = (key_files, fs::metadata(&pki.dir)) {
        let mode = md.mode() & 0o7777;
        if mode & 0o066 != 0 {
            it.problems.push(format!(
                "{}: mode {mode:04o}; a directory of private keys must not be readable or writable by group or others (chmod 700)",
                pki.dir.display()
            ));
        }
    }
    it.ok = it.problems.is_empty();
}

fn check_esl(pki: &Pki, m: &Inventory, f: &FileEntry, it: &mut CheckItem) {
    let path = pki.dir.join(&f.path);
    match fsutil::read_input(&path, fsutil::InputKind::Esl) {
        Ok(bytes) => check_esl_content(pki, m, f, &bytes, &path, it),
        Err(e) => it.problems.push(e.to_string()),
    }
}

/// An `.auth` file: its list holds the certificates of its roles, and it is
/// signed, for the variable its name says, by the key firmware will check it
/// with (PK for PK and KEK, KEK for db).
fn check_auth(pki: &Pki, m: &Inventory, f: &FileEntry, it: &mut CheckItem) {
    let path = pki.dir.join(&f.path);
    let (var, signer) = match f.path.as_str() {
        "PK.auth" => (efivar::SecureVar::Pk, "PK"),
        "KEK.auth" => (efivar::SecureVar::Kek, "PK"),
        "DB.auth" => (efivar::SecureVar::Db, "KEK"),
        _ => {
            return it
                .warnings
                .push("not a variable pki init writes; not checked".into())
        }
    };
    let bytes = match fsutil::read_input(&path, fsutil::InputKind::Auth) {
        Ok(b) => b,
        Err(e) => return it.problems.push(e.to_string()),
    };
    match efivar::parse_auth(&bytes, &path) {
        Ok(auth) => check_esl_content(pki, m, f, &auth.data, &path, it),
        Err(e) => return it.problems.push(e.to_string()),
    }
    let want = m
        .role(signer)
        .map(|re| pki.dir.join(&re.files.cert))
        .and_then(|c| x509::read_certs(&c).ok())
        .and_then(|c| c.into_iter().next());
    let anchors: Vec<Vec<u8>> = want.iter().cloned().collect();
    // The firmware's verdict, with this PKI's signer as the only anchor.
    match efivar::verify_auth(&bytes, &path, Some((var, false)), &anchors) {
        Ok(v) => {
            it.problems
                .extend(v.problems.iter().map(|p| format!("{var} update: {p}")));
            if v.leaf.is_none() || v.leaf != want {
                it.problems.push(format!(
                    "not signed by the {signer} certificate of this PKI"
                ));
            }
        }
        Err(e) => it.problems.push(e.to_string()),
    }
}

/// The list in an `.esl` (or in an `.auth`) holds exactly the certificates of
/// the file's roles.
fn check_esl_content(
    pki: &Pki,
    m: &Inventory,
    f: &FileEntry,
    bytes: &[u8],
    path: &Path,
    it: &mut CheckItem,
) {
    let entries = match efivar::parse_esl(bytes, path) {
        Ok(e) => e,
        Err(e) => return it.problems.push(e.to_string()),
    };
    let mut want: Vec<Vec<u8>> = vec![];
    for r in &f.roles {
        let Some(re) = m.role(r) else {
            return it.problems.push(format!("lists unknown role {r}"));
        };
        match x509::read_certs(&pki.dir.join(&re.files.cert)) {
            Ok(c) => want.push(c[0].clone()),
            Err(e) => return it.problems.push(e.to_string()),
        }
    }
    let got: Vec<Vec<u8>> = entries
        .iter()
        .filter(|e| e.is_x509())
        .map(|e| e.data.clone())
        .collect();
    if got != want {
        it.problems.push(format!(
            "certificates differ from those of {}",
            f.roles.join(" + ")
        ));
    }
    if let Some(g) = m.owner_guid {
        if entries.iter().any(|e| e.owner != g) {
            it.warnings.push(format!("owner GUID differs from {g}"));
        }
    }
}
