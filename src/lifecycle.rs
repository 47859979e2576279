//! Key lifecycle: `pki rotate` makes the successor of a role, keeps its
//! predecessor in `retired/`, and writes the signed variable updates that
//! move deployed devices from one to the other (`updates/`):
//!
//! - a role whose certificate is in db (`ssig_subca`, `DB`): `db-append-ROLE.N.auth`
//!   adds the successor (generation N) to db, `dbx-ROLE.M.auth` revokes the
//!   predecessor (generation M) by the SHA-256 of its TBSCertificate
//!   (EFI_CERT_X509_SHA256, zero revocation time: EDK2's
//!   `IsCertHashFoundInDbx` then denies every signature carrying it, and the
//!   db certificate that verified one). Both are appends signed by the KEK.
//! - KEK: `KEK-append-KEK.N.auth`, an append signed by the PK, and
//!   `KEK-KEK.N.auth`, a replacement of KEK (not an append) signed by the PK
//!   holding only `KEK.esl`'s certificates: an append leaves the predecessor
//!   in KEK, and firmware accepts db and dbx updates signed by any KEK
//!   certificate, so only the replacement retires it. Later db and dbx
//!   updates are signed by the new KEK.
//!
//! Each update's EFI_TIME is one second after the latest time the PKI has
//! signed so far, counted from SOURCE_DATE_EPOCH (else the clock): updates
//! come in order and the same history gives the same times.
//!
//! The enrolment files of new devices (`DB.esl`, `DB.auth`, `KEK.auth`...)
//! are rebuilt for the current certificates. The whole directory is changed
//! in a private copy and swapped in with one `renameat2(RENAME_EXCHANGE)`,
//! under the lock `pki init` takes: readers see the old PKI or the new one.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use x509_parser::prelude::X509Certificate;

use crate::efivar::{self, EfiTime, Guid, SecureVar};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, DirLock, KEY_MODE, PUBLIC_MODE};
use crate::identity::{Identity, KeySpec};
use crate::keys::{self, FileKey, KeyType, Signer};
use crate::pki::{
    Inventory, RetiredEntry, RoleEntry, RoleFiles, RoleKind, UpdateEntry, DEFAULT_OWNER_GUID,
    MANIFEST,
};
use crate::x509::{self, CertSpec, Subject};

/// Where `pki rotate` keeps predecessors: `retired/ROLE.N.cert` (and `.key`,
/// `.crt`, `.cer` as the role has them), N its generation.
pub const RETIRED_DIR: &str = "retired";
/// Where `pki rotate` writes the variable updates for deployed devices.
pub const UPDATES_DIR: &str = "updates";

/// What `pki rotate` did.
#[derive(Clone, Debug, Serialize)]
pub struct RotateReport {
    pub dir: PathBuf,
    pub role: String,
    pub generation: u32,
    pub subject: String,
    pub fingerprint_sha256: String,
    pub predecessor: RetiredEntry,
    /// The updates for deployed devices, in the order they must reach them.
    pub updates: Vec<UpdateEntry>,
    /// Enrolment files (for new devices) rebuilt with the current certificates.
    pub refreshed: Vec<String>,
    /// Roles the predecessor issued: rotate them before its revocation
    /// reaches devices, or what they sign is revoked with it.
    pub issued_by_predecessor: Vec<String>,
}

/// The variable a file `pki init` writes updates, and the role that signs it.
pub fn enrolment_auth(path: &str) -> Option<(SecureVar, &'static str)> {
    match path {
        "PK.auth" => Some((SecureVar::Pk, "PK")),
        "KEK.auth" => Some((SecureVar::Kek, "PK")),
        "DB.auth" => Some((SecureVar::Db, "KEK")),
        _ => None,
    }
}

/// The roles whose certificates the enrolment list `list` (`DB.esl`,
/// `KEK.esl`) holds.
fn listed_roles(m: &Inventory, list: &str) -> Vec<String> {
    m.files
        .iter()
        .find(|f| f.kind == "esl" && f.path == list)
        .map(|f| f.roles.clone())
        .unwrap_or_default()
}

/// `retired/NAME.N.EXT` for the role file `NAME.EXT`.
fn retired_name(file: &str, generation: u32) -> String {
    let p = Path::new(file);
    let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or(file);
    match p.extension().and_then(|e| e.to_str()) {
        Some(ext) => format!("{RETIRED_DIR}/{stem}.{generation}.{ext}"),
        None => format!("{RETIRED_DIR}/{stem}.{generation}"),
    }
}

/// The key type `pki.json` records (`rsa:4096`, `rsa-pss:4096`, `ec:prime256v1`),
/// and whether the key is typed id-RSASSA-PSS.
fn recorded_key_type(s: &str, manifest: &Path) -> Result<(KeyType, bool)> {
    let (t, pss) = match s.strip_prefix("rsa-pss:") {
        Some(bits) => (format!("rsa:{bits}"), true),
        None => (s.to_string(), false),
    };
    let kt: KeyType = t
        .parse()
        .map_err(|e: String| Error::input(manifest, format!("key type '{s}': {e}")))?;
    Ok((kt, pss))
}

/// The subject fields `x509::Subject` writes, read back from a certificate
/// `pki init` made. Anything else cannot be reproduced, so it is refused.
fn subject_of(c: &X509Certificate<'_>, path: &Path) -> Result<Subject> {
    use x509_parser::oid_registry as oids;
    let mut s = Subject::default();
    let mut cn = None;
    for rdn in c.subject().iter() {
        for a in rdn.iter() {
            let v = a
                .as_str()
                .map_err(|_| Error::input(path, "subject attribute is not a string"))?
                .to_string();
            let oid = a.attr_type();
            if *oid == oids::OID_X509_COUNTRY_NAME {
                s.country = Some(v);
            } else if *oid == oids::OID_X509_ORGANIZATION_NAME {
                s.org = Some(v);
            } else if *oid == oids::OID_X509_ORGANIZATIONAL_UNIT {
                s.org_unit = Some(v);
            } else if *oid == oids::OID_X509_COMMON_NAME {
                cn = Some(v);
            } else {
                return Err(Error::input(
                    path,
                    format!("subject attribute {oid}: pki rotate reproduces only C, O, OU and CN"),
                ));
            }
        }
    }
    s.common_name = cn.ok_or_else(|| Error::input(path, "subject has no CN"))?;
    Ok(s)
}

/// What the successor's certificate says: the predecessor's subject, CA
/// flag, key usages and validity period, from now on.
fn spec_from(c: &X509Certificate<'_>, path: &Path, now: time::OffsetDateTime) -> Result<CertSpec> {
    use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyUsagePurpose as Ku};
    let mut key_usage = vec![];
    if let Ok(Some(ku)) = c.key_usage() {
        let k = ku.value;
        for (on, u) in [
            (k.digital_signature(), Ku::DigitalSignature),
            (k.non_repudiation(), Ku::ContentCommitment),
            (k.key_encipherment(), Ku::KeyEncipherment),
            (k.data_encipherment(), Ku::DataEncipherment),
            (k.key_agreement(), Ku::KeyAgreement),
            (k.key_cert_sign(), Ku::KeyCertSign),
            (k.crl_sign(), Ku::CrlSign),
        ] {
            if on {
                key_usage.push(u);
            }
        }
    }
    let mut eku = vec![];
    if let Ok(Some(e)) = c.extended_key_usage() {
        let e = e.value;
        for (on, u) in [
            (e.server_auth, Eku::ServerAuth),
            (e.client_auth, Eku::ClientAuth),
            (e.code_signing, Eku::CodeSigning),
            (e.email_protection, Eku::EmailProtection),
            (e.time_stamping, Eku::TimeStamping),
            (e.ocsp_signing, Eku::OcspSigning),
        ] {
            if on {
                eku.push(u);
            }
        }
    }
    let v = c.validity();
    let days = (v.not_after.to_datetime() - v.not_before.to_datetime()).whole_days();
    let days = u32::try_from(days)
        .ok()
        .filter(|d| *d > 0)
        .ok_or_else(|| Error::input(path, format!("validity of {days} days")))?;
    Ok(CertSpec {
        subject: subject_of(c, path)?,
        ca: x509::is_ca(c),
        not_before: now,
        days,
        key_usage,
        eku,
    })
}

/// The EFI_TIMEs of new updates: each one second after the latest the PKI
/// has signed (its `.auth` files and recorded updates), and at least
/// SOURCE_DATE_EPOCH (else now) + 1.
struct Clock {
    next: i64,
}

impl Clock {
    fn new(m: &Inventory, dir: &Path, now: time::OffsetDateTime) -> Result<Clock> {
        let base = EfiTime::source_date_epoch()?.unwrap_or(now.unix_timestamp());
        let mut last = base;
        let mut seen = |t: EfiTime| {
            if let Some(u) = t.to_unix() {
                last = last.max(u);
            }
        };
        for u in &m.updates {
            if let Ok(t) = EfiTime::parse(&u.time) {
                seen(t);
            }
        }
        for f in m.files.iter().filter(|f| f.kind == "auth") {
            let p = dir.join(&f.path);
            if let Ok(b) = fsutil::read_input(&p, fsutil::InputKind::Auth) {
                if let Ok(a) = efivar::parse_auth(&b, &p) {
                    seen(a.time);
                }
            }
        }
        Ok(Clock { next: last + 1 })
    }

    fn next(&mut self) -> Result<EfiTime> {
        let t = EfiTime::from_unix(self.next)?;
        self.next += 1;
        Ok(t)
    }
}

/// A key that signs updates: the rotated role's new key, or another role's
/// through `Identity` (so the release-mode check applies).
struct UpdSigner<'a> {
    role: String,
    signer: &'a dyn Signer,
    cert: &'a [u8],
    chain: &'a [Vec<u8>],
}

/// Create `path` (inside the private copy) with `data`, replacing any file there.
fn put(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(path, e)),
        _ => {}
    }
    fsutil::write_new(path, data, mode)
}

fn mkdir_private(p: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(p) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => Ok(()),
        r => r.at(p),
    }
}

/// Copy the PKI directory `from` into the new directory `to`: regular files
/// with their modes (fsynced), subdirectories, symlinks as symlinks.
fn copy_tree(from: &Path, to: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new().mode(0o700).create(to).at(to)?;
    let mut entries: Vec<_> = fs::read_dir(from)
        .at(from)?
        .collect::<std::io::Result<Vec<_>>>()
        .at(from)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let src = e.path();
        let dst = to.join(e.file_name());
        let md = fs::symlink_metadata(&src).at(&src)?;
        let ft = md.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&src).at(&src)?;
            std::os::unix::fs::symlink(&target, &dst).at(&dst)?;
        } else if ft.is_dir() {
            copy_tree(&src, &dst, md.mode() & 0o7777)?;
        } else if ft.is_file() {
            let data = fs::read(&src).at(&src)?;
            fsutil::write_new(&dst, &data, md.mode() & 0o7777)?;
        } else {
            return Err(Error::input(
                &src,
                "neither a file, a directory nor a symlink; pki rotate copies only those",
            ));
        }
    }
    fsutil::sync_dir(to)?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).at(to)
}

/// Make the successor of `role` in the PKI at `dir` (see the module doc).
pub fn rotate(dir: &Path, role: &str) -> Result<RotateReport> {
    let dir = crate::pki::normalize(dir);
    let md = fs::symlink_metadata(&dir).at(&dir)?;
    if md.file_type().is_symlink() {
        return Err(Error::input(
            &dir,
            "is a symlink (a release PKI?); pki-signer never writes through it",
        ));
    }
    if !md.is_dir() {
        return Err(Error::input(&dir, "not a directory"));
    }
    if !dir.join(MANIFEST).exists() {
        return Err(Error::input(
            &dir,
            format!("no {MANIFEST}: pki rotate needs the inventory pki init writes"),
        ));
    }
    // Release mode: a development PKI makes no new keys either.
    crate::release::check_pki_init(&dir, false, false)?;
    let parent = fsutil::parent_dir(&dir);
    let name = dir
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{}: not a directory name", dir.display())))?
        .to_string_lossy()
        .to_string();
    let _lock = DirLock::acquire(&parent.join(format!("{name}.lock")))?;
    fsutil::remove_stale_temps(&dir);

    let m = Inventory::load(&dir)?;
    let manifest_path = dir.join(MANIFEST);
    let entry = m.role(role).cloned().ok_or_else(|| {
        let known: Vec<&str> = m.roles.iter().map(|r| r.role.as_str()).collect();
        Error::input(
            &manifest_path,
            format!("no role '{role}' (known: {})", known.join(", ")),
        )
    })?;
    if entry.key_uri.is_some() {
        return Err(Error::input(
            &manifest_path,
            format!("role '{role}': its key lives in a token; pki rotate makes file keys only (token rotation is not supported yet)"),
        ));
    }
    if role == "PK" {
        return Err(Error::input(
            &manifest_path,
            "role 'PK': rotating the platform key is not supported (it needs a PK update signed by the old PK)",
        ));
    }
    if entry.issuer.is_none() && entry.kind == RoleKind::X509 {
        return Err(Error::input(
            &manifest_path,
            format!("role '{role}' is a root CA: its successor would be a new PKI; rotate the roles below it"),
        ));
    }
    let old_key_file =
        entry.files.key.clone().ok_or_else(|| {
            Error::input(&manifest_path, format!("role '{role}' has no key file"))
        })?;
    let old_cert_path = dir.join(&entry.files.cert);
    let old_der = x509::read_certs(&old_cert_path)?.remove(0);
    let old = x509::parse(&old_der, &old_cert_path)?;
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .map_err(|e| Error::Internal(e.to_string()))?;
    let spec = spec_from(&old, &old_cert_path, now)?;
    let (kt, pss) = recorded_key_type(&entry.key_type, &manifest_path)?;
    let owner: Guid = match m.owner_guid {
        Some(g) => g,
        None => DEFAULT_OWNER_GUID
            .parse()
            .map_err(|e| Error::Internal(format!("default owner GUID: {e}")))?,
    };

    // Every key but the new one is opened as any signing command opens it.
    let load = |r: &str| {
        Identity::load(&KeySpec {
            role: Some(r.to_string()),
            dir: dir.clone(),
            ..Default::default()
        })
    };
    let issuer = entry.issuer.as_deref().map(load).transpose()?;
    let db_roles = listed_roles(&m, "DB.esl");
    let kek_roles = listed_roles(&m, "KEK.esl");
    let in_db = db_roles.iter().any(|r| r == role);
    let in_kek = kek_roles.iter().any(|r| r == role);
    let signer_roles: Vec<&str> = {
        let mut v = vec![];
        if in_db || m.files.iter().any(|f| f.path == "DB.auth") {
            v.push("KEK");
        }
        if in_kek
            || m.files
                .iter()
                .any(|f| f.path == "KEK.auth" || f.path == "PK.auth")
        {
            v.push("PK");
        }
        v.retain(|r| *r != role && m.role(r).is_some());
        v
    };
    let mut ids = vec![];
    for r in &signer_roles {
        ids.push((r.to_string(), load(r)?));
    }

    // The successor.
    let p8 = zeroize::Zeroizing::new(kt.generate()?);
    let p8 = if pss {
        keys::pkcs8_as_rsa_pss(&p8)?
    } else {
        p8
    };
    let new_key = FileKey::from_pkcs8(&p8, Path::new(&old_key_file))?;
    let marker = if m.development {
        vec![crate::release::marker_extension()]
    } else {
        vec![]
    };
    let new_der = x509::issue_with(
        &spec,
        &new_key,
        issuer
            .as_ref()
            .map(|i| (i.cert.as_slice(), i.signer.as_ref())),
        marker,
    )?;
    let mut cert_pem = x509::pem_cert(&new_der);
    if let Some(i) = &issuer {
        // The chain up to, not including, the root (as pki init writes it).
        let root = x509::parse(&i.cert, &old_cert_path).is_ok_and(|c| c.subject() == c.issuer());
        if !root {
            cert_pem.push_str(&x509::pem_cert(&i.cert));
        }
        for c in &i.chain {
            cert_pem.push_str(&x509::pem_cert(c));
        }
    }
    let new_info = x509::describe(&new_der, &old_cert_path)?;
    let g = entry.generation;

    let mut m2 = m.clone();
    let retired = RetiredEntry {
        role: role.to_string(),
        generation: g,
        subject: entry.subject.clone(),
        key_type: entry.key_type.clone(),
        fingerprint_sha256: entry.fingerprint_sha256.clone(),
        files: RoleFiles {
            cert: retired_name(&entry.files.cert, g),
            key: entry.files.key.as_deref().map(|k| retired_name(k, g)),
            der: entry.files.der.as_deref().map(|d| retired_name(d, g)),
        },
        successor_sha256: new_info.fingerprint_sha256.clone(),
        retired: now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        revoked_by: None,
    };
    {
        let e: &mut RoleEntry = m2
            .roles
            .iter_mut()
            .find(|r| r.role == role)
            .ok_or_else(|| Error::Internal(format!("role {role} vanished from pki.json")))?;
        e.generation = g + 1;
        e.predecessor_sha256 = Some(entry.fingerprint_sha256.clone());
        e.subject = new_info.subject.clone();
        e.fingerprint_sha256 = new_info.fingerprint_sha256.clone();
    }
    let issued_by_predecessor: Vec<String> = m
        .roles
        .iter()
        .filter(|r| r.issuer.as_deref() == Some(role))
        .map(|r| r.role.clone())
        .collect();

    let tmp = fsutil::temp_path(&dir, fsutil::tag::TMP)?;
    let _ = fs::remove_dir_all(&tmp);
    let mut clock = Clock::new(&m, &dir, now)?;
    let mut work = || -> Result<(Vec<UpdateEntry>, Vec<String>, RetiredEntry)> {
        copy_tree(&dir, &tmp, md.mode() & 0o7777)?;
        let mut retired = retired.clone();
        // Keep the predecessor.
        mkdir_private(&tmp.join(RETIRED_DIR))?;
        let moves = [
            (Some(&entry.files.cert), Some(&retired.files.cert)),
            (entry.files.key.as_ref(), retired.files.key.as_ref()),
            (entry.files.der.as_ref(), retired.files.der.as_ref()),
        ];
        for (from, to) in moves {
            if let (Some(from), Some(to)) = (from, to) {
                let (from, to) = (tmp.join(from), tmp.join(to));
                if to.exists() {
                    return Err(Error::input(
                        dir.join(to.strip_prefix(&tmp).unwrap_or(&to)),
                        "already exists; pki.json does not record it",
                    ));
                }
                fs::rename(&from, &to).at(&to)?;
            }
        }
        // The successor under the role's names.
        fsutil::write_new(
            &tmp.join(&entry.files.cert),
            cert_pem.as_bytes(),
            PUBLIC_MODE,
        )?;
        fsutil::write_new(
            &tmp.join(&old_key_file),
            keys::pkcs8_pem(&p8).as_bytes(),
            KEY_MODE,
        )?;
        if let Some(d) = &entry.files.der {
            fsutil::write_new(&tmp.join(d), &new_der, PUBLIC_MODE)?;
        }
        // The kernel module signing exports follow ssig_subca.
        for f in m2
            .files
            .iter()
            .filter(|f| f.roles.iter().any(|r| r == role))
        {
            match f.kind.as_str() {
                "module-signing-key" => {
                    let mut pem = zeroize::Zeroizing::new(keys::pkcs8_pem(&p8));
                    pem.push_str(&x509::pem_cert(&new_der));
                    put(&tmp.join(&f.path), pem.as_bytes(), KEY_MODE)?;
                }
                "module-signing-cert" => put(&tmp.join(&f.path), &new_der, PUBLIC_MODE)?,
                _ => {}
            }
        }

        let roles_now = m2.roles.clone();
        let cert_of = |r: &str| -> Result<Vec<u8>> {
            let re = roles_now
                .iter()
                .find(|x| x.role == r)
                .ok_or_else(|| Error::input(&manifest_path, format!("lists unknown role {r}")))?;
            Ok(x509::read_certs(&tmp.join(&re.files.cert))?.remove(0))
        };
        let list_of = |roles: &[String]| -> Result<Vec<u8>> {
            let mut out = vec![];
            for r in roles {
                out.extend(efivar::esl_x509(owner, &cert_of(r)?));
            }
            Ok(out)
        };
        let signer_for = |r: &str| -> Option<UpdSigner<'_>> {
            if r == role {
                return Some(UpdSigner {
                    role: r.to_string(),
                    signer: &new_key,
                    cert: &new_der,
                    chain: &[],
                });
            }
            ids.iter().find(|(n, _)| n == r).map(|(n, id)| UpdSigner {
                role: n.clone(),
                signer: id.signer.as_ref(),
                cert: &id.cert,
                chain: &id.chain,
            })
        };

        // Enrolment files for new devices: the current certificates, signed
        // by the current keys.
        let mut refreshed = vec![];
        for i in 0..m2.files.len() {
            let f = m2.files[i].clone();
            match f.kind.as_str() {
                "esl" if f.roles.iter().any(|r| r == role) => {
                    put(&tmp.join(&f.path), &list_of(&f.roles)?, PUBLIC_MODE)?;
                    refreshed.push(f.path.clone());
                }
                "auth" => {
                    let Some((var, signer)) = enrolment_auth(&f.path) else {
                        continue;
                    };
                    if signer != role && !f.roles.iter().any(|r| r == role) {
                        continue;
                    }
                    let s = signer_for(signer).ok_or_else(|| {
                        Error::input(
                            &manifest_path,
                            format!("no {signer} key to sign {}", f.path),
                        )
                    })?;
                    let t = clock.next()?;
                    let auth = efivar::sign_auth(
                        var,
                        false,
                        t,
                        &list_of(&f.roles)?,
                        s.signer,
                        s.cert,
                        s.chain,
                    )?;
                    put(&tmp.join(&f.path), &auth, PUBLIC_MODE)?;
                    m2.files[i].time = Some(t.to_string());
                    refreshed.push(f.path.clone());
                }
                _ => {}
            }
        }

        // Updates for deployed devices, in the order they must reach them.
        let mut updates = vec![];
        let mut write_update = |path: String,
                                var: SecureVar,
                                action: &str,
                                generation: u32,
                                cert: &[u8],
                                data: Vec<u8>,
                                signer: &str|
         -> Result<UpdateEntry> {
            let s = signer_for(signer).ok_or_else(|| {
                Error::input(
                    &manifest_path,
                    format!("no {signer} role to sign the {var} update"),
                )
            })?;
            // A replacement's time must be later than the variable's (EDK2
            // checks only non-appends); the clock's times are.
            let append = action != "replace";
            let t = clock.next()?;
            let auth = efivar::sign_auth(var, append, t, &data, s.signer, s.cert, s.chain)?;
            mkdir_private(&tmp.join(UPDATES_DIR))?;
            fsutil::write_new(&tmp.join(&path), &auth, PUBLIC_MODE)?;
            let u = UpdateEntry {
                path,
                var: var.name().to_string(),
                append,
                time: t.to_string(),
                action: action.to_string(),
                role: role.to_string(),
                generation,
                cert_sha256: crate::codec::sha256_hex(cert),
                signer: s.role.clone(),
                signer_sha256: crate::codec::sha256_hex(s.cert),
            };
            updates.push(u.clone());
            Ok(u)
        };
        if in_db {
            write_update(
                format!("{UPDATES_DIR}/db-append-{role}.{}.auth", g + 1),
                SecureVar::Db,
                "add",
                g + 1,
                &new_der,
                efivar::esl_x509(owner, &new_der),
                "KEK",
            )?;
            let u = write_update(
                format!("{UPDATES_DIR}/dbx-{role}.{g}.auth"),
                SecureVar::Dbx,
                "revoke",
                g,
                &old_der,
                efivar::esl_x509_sha256(owner, std::slice::from_ref(&old_der), &old_cert_path)?,
                "KEK",
            )?;
            retired.revoked_by = Some(u.path);
        }
        if in_kek {
            write_update(
                format!("{UPDATES_DIR}/KEK-append-{role}.{}.auth", g + 1),
                SecureVar::Kek,
                "add",
                g + 1,
                &new_der,
                efivar::esl_x509(owner, &new_der),
                "PK",
            )?;
            // Applied after the append (and after any update the predecessor
            // signed that a device still needs), it drops the predecessor.
            write_update(
                format!("{UPDATES_DIR}/KEK-{role}.{}.auth", g + 1),
                SecureVar::Kek,
                "replace",
                g + 1,
                &new_der,
                list_of(&kek_roles)?,
                "PK",
            )?;
        }
        let mut m3 = m2.clone();
        m3.retired.push(retired.clone());
        m3.updates.extend(updates.iter().cloned());
        let json =
            serde_json::to_string_pretty(&m3).map_err(|e| Error::Internal(e.to_string()))? + "\n";
        put(&tmp.join(MANIFEST), json.as_bytes(), PUBLIC_MODE)?;
        for d in [RETIRED_DIR, UPDATES_DIR, "certs", ""] {
            let p = tmp.join(d);
            if p.is_dir() {
                fsutil::sync_dir(&p)?;
            }
        }
        // One atomic swap: readers see the old directory or the new one.
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &tmp,
            rustix::fs::CWD,
            &dir,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .map_err(|e| {
            Error::io(
                &dir,
                std::io::Error::other(format!(
                    "cannot swap in the rotated PKI (renameat2 RENAME_EXCHANGE): {e}"
                )),
            )
        })?;
        fsutil::sync_dir(&parent)?;
        Ok((updates, refreshed, retired))
    };
    let result = work();
    // After the swap `tmp` holds the old directory; on error, the copy.
    let _ = fs::remove_dir_all(&tmp);
    let (updates, refreshed, retired) = result?;
    Ok(RotateReport {
        dir,
        role: role.to_string(),
        generation: g + 1,
        subject: new_info.subject,
        fingerprint_sha256: new_info.fingerprint_sha256,
        predecessor: retired,
        updates,
        refreshed,
        issued_by_predecessor,
    })
}

// ---------------------------------------------------------------------------
// pki check: successors, retired certificates and updates

fn short(fp: &str) -> &str {
    fp.get(..16).unwrap_or(fp)
}

/// The first certificate of `path`, if it reads.
fn first_cert(path: &Path) -> Option<Vec<u8>> {
    x509::read_certs(path).ok()?.into_iter().next()
}

/// Add what `pki rotate` recorded to `pki check`'s items: notes on the
/// roles (generation, predecessor), a warning for a role still certified
/// by a retired predecessor of its issuer, one item per retired
/// certificate and one per update (verified as firmware would: for its
/// variable, as an append, by the recorded signer, holding what it says).
pub fn check_history(
    pki: &crate::pki::Pki,
    m: &Inventory,
    now: time::OffsetDateTime,
    items: &mut Vec<crate::pki::CheckItem>,
) {
    use crate::pki::CheckItem;
    check_dbx_files(pki, m, items);
    let dir = &pki.dir;
    // Every certificate the history names, by fingerprint.
    let mut by_fp: std::collections::HashMap<String, Vec<u8>> = Default::default();
    for f in m
        .roles
        .iter()
        .map(|r| &r.files.cert)
        .chain(m.retired.iter().map(|r| &r.files.cert))
    {
        if let Some(c) = first_cert(&dir.join(f)) {
            by_fp.insert(crate::codec::sha256_hex(&c), c);
        }
    }
    let revocation_of = |role: &str, g: u32| {
        m.retired
            .iter()
            .find(|r| r.role == role && r.generation == g)
            .and_then(|r| r.revoked_by.clone())
    };
    for it in items.iter_mut() {
        let Some(re) = m.role(&it.role) else { continue };
        if let Some(p) = &re.predecessor_sha256 {
            let file = m
                .retired
                .iter()
                .find(|r| &r.fingerprint_sha256 == p)
                .map(|r| r.files.cert.as_str())
                .unwrap_or("not kept");
            it.notes.push(format!(
                "generation {}, successor of {} ({file})",
                re.generation,
                short(p)
            ));
        }
        let (Some(iss), Some(leaf)) = (&re.issuer, first_cert(&dir.join(&re.files.cert))) else {
            continue;
        };
        let Ok(leaf) = x509::parse(&leaf, &dir.join(&re.files.cert)) else {
            continue;
        };
        let signed_by = |der: &[u8]| {
            x509::parse(der, dir).is_ok_and(|c| x509::verify_signed_by(&leaf, &c).is_ok())
        };
        let current = m
            .role(iss)
            .and_then(|i| first_cert(&dir.join(&i.files.cert)));
        if current.as_deref().is_some_and(signed_by) {
            continue;
        }
        for r in m.retired.iter().filter(|r| &r.role == iss) {
            if first_cert(&dir.join(&r.files.cert)).is_some_and(|c| signed_by(&c)) {
                let when = match revocation_of(iss, r.generation) {
                    Some(u) => format!(" before {u} reaches devices"),
                    None => String::new(),
                };
                it.warnings.push(format!(
                    "issued by {iss} generation {} ({}), which is retired: rotate it (pki rotate {}){when}",
                    r.generation, r.files.cert, re.role
                ));
            }
        }
    }

    for r in &m.retired {
        let mut it = CheckItem {
            role: r.files.cert.clone(),
            ..Default::default()
        };
        let path = dir.join(&r.files.cert);
        match first_cert(&path) {
            None => it
                .problems
                .push(format!("{}: missing or not a certificate", path.display())),
            Some(c) => {
                if crate::codec::sha256_hex(&c) != r.fingerprint_sha256 {
                    it.problems.push(format!(
                        "{}: not the certificate {MANIFEST} records (sha256 {})",
                        path.display(),
                        short(&r.fingerprint_sha256)
                    ));
                }
                if let Ok(p) = x509::parse(&c, &path) {
                    if now > p.validity().not_after.to_datetime() {
                        it.notes.push(format!(
                            "expired {}",
                            x509::rfc3339(&p.validity().not_after)
                        ));
                    }
                }
            }
        }
        if let Some(k) = &r.files.key {
            let kp = dir.join(k);
            if kp.exists() {
                if let Some(p) = crate::pki::key_mode_problem(&kp) {
                    it.problems.push(p);
                }
            } else {
                it.notes.push(format!("its key {k} has been deleted"));
            }
        }
        it.notes.push(format!(
            "{} generation {}, retired {}, succeeded by {}",
            r.role,
            r.generation,
            r.retired,
            short(&r.successor_sha256)
        ));
        if let Some(u) = &r.revoked_by {
            it.notes.push(format!("revoked by {u}"));
        }
        it.ok = it.problems.is_empty();
        items.push(it);
    }

    for (n, u) in m.updates.iter().enumerate() {
        let mut it = CheckItem {
            role: u.path.clone(),
            ..Default::default()
        };
        check_update(dir, u, &by_fp, &mut it);
        it.notes.push(format!(
            "update {} of {}: {}",
            n + 1,
            m.updates.len(),
            u.describe()
        ));
        it.ok = it.problems.is_empty();
        items.push(it);
    }
}

fn check_update(
    dir: &Path,
    u: &UpdateEntry,
    by_fp: &std::collections::HashMap<String, Vec<u8>>,
    it: &mut crate::pki::CheckItem,
) {
    let path = dir.join(&u.path);
    let var: SecureVar = match u.var.parse() {
        Ok(v) => v,
        Err(e) => return it.problems.push(e),
    };
    let bytes = match fsutil::read_input(&path, fsutil::InputKind::Auth) {
        Ok(b) => b,
        Err(e) => return it.problems.push(e.to_string()),
    };
    let Some(signer) = by_fp.get(&u.signer_sha256) else {
        return it.problems.push(format!(
            "its signer {} (sha256 {}) is neither a role nor a retired certificate of the PKI",
            u.signer,
            short(&u.signer_sha256)
        ));
    };
    match efivar::verify_auth(
        &bytes,
        &path,
        Some((var, u.append)),
        std::slice::from_ref(signer),
    ) {
        Err(e) => return it.problems.push(e.to_string()),
        Ok(v) => {
            it.problems
                .extend(v.problems.iter().map(|p| format!("{var} update: {p}")));
            if v.leaf.as_deref().is_some_and(|l| l != signer.as_slice()) {
                it.problems.push(format!(
                    "not signed by the {} certificate it records",
                    u.signer
                ));
            }
            if v.time != u.time {
                it.problems
                    .push(format!("time {} differs from {} recorded", v.time, u.time));
            }
        }
    }
    let Some(cert) = by_fp.get(&u.cert_sha256) else {
        return it.problems.push(format!(
            "the certificate it {}s (sha256 {}) is not in the PKI",
            u.action,
            short(&u.cert_sha256)
        ));
    };
    let data = match efivar::parse_auth(&bytes, &path) {
        Ok(a) => a.data,
        Err(e) => return it.problems.push(e.to_string()),
    };
    let entries = match efivar::parse_esl(&data, &path) {
        Ok(e) => e,
        Err(e) => return it.problems.push(e.to_string()),
    };
    let holds = match u.action.as_str() {
        "add" => entries.len() == 1 && entries[0].is_x509() && entries[0].data == *cert,
        // The whole new list: certificates only, this one among them.
        "replace" => entries.iter().all(|e| e.is_x509()) && entries.iter().any(|e| e.data == *cert),
        "revoke" => {
            entries.len() == 1
                && entries[0].sig_type == efivar::EFI_CERT_X509_SHA256_GUID
                && crate::chain::tbs_hash(cert, 32).is_some_and(|h| entries[0].data[..32] == h[..])
        }
        a => {
            return it.problems.push(format!("unknown action '{a}'"));
        }
    };
    if !holds {
        it.problems.push(format!(
            "does not hold exactly the {} of {} generation {}",
            if u.action == "revoke" {
                "TBSCertificate hash"
            } else {
                "certificate"
            },
            u.role,
            u.generation
        ));
    }
}

// ---------------------------------------------------------------------------
// pki init --revoke-dev

/// The certificates a development PKI puts into db: the roles of its
/// `DB.esl` (DB and ssig_subca) and their retired generations; for a
/// GyroidOS directory without `pki.json`, `ssig_subca.cert` and `DB.crt`.
/// Refuses a directory that is not a development PKI.
pub fn dev_db_certs(dev: &Path) -> Result<Vec<Vec<u8>>> {
    if crate::release::development_dir(dev)?.is_none() {
        return Err(Error::input(
            dev,
            format!("not a development PKI (neither {MANIFEST} with \"development\": true nor a gen_dev_certs.sh directory); --revoke-dev revokes only development certificates"),
        ));
    }
    let mut files: Vec<PathBuf> = vec![];
    if dev.join(MANIFEST).exists() {
        let m = Inventory::load(dev)?;
        let mut roles = listed_roles(&m, "DB.esl");
        if roles.is_empty() {
            roles = ["DB", "ssig_subca"]
                .iter()
                .filter(|r| m.role(r).is_some())
                .map(|r| r.to_string())
                .collect();
        }
        for r in &roles {
            if let Some(e) = m.role(r) {
                files.push(dev.join(&e.files.cert));
            }
            files.extend(
                m.retired
                    .iter()
                    .filter(|x| &x.role == r)
                    .map(|x| dev.join(&x.files.cert)),
            );
        }
    } else {
        files.extend(
            ["ssig_subca.cert", "DB.crt"]
                .iter()
                .map(|f| dev.join(f))
                .filter(|p| p.exists()),
        );
    }
    let mut out: Vec<Vec<u8>> = vec![];
    for f in files {
        let c = x509::read_certs(&f)?.remove(0);
        if !out.contains(&c) {
            out.push(c);
        }
    }
    if out.is_empty() {
        return Err(Error::input(
            dev,
            "holds no db certificate (DB or ssig_subca) to revoke",
        ));
    }
    Ok(out)
}

/// `pki check` of `dbx.esl`/`dbx.auth` of `pki init --revoke-dev`: the list
/// holds certificate hashes only, and the update is an append to dbx of
/// exactly that list, signed by this PKI's KEK.
pub fn check_dbx_files(
    pki: &crate::pki::Pki,
    m: &Inventory,
    items: &mut Vec<crate::pki::CheckItem>,
) {
    let dir = &pki.dir;
    for f in m.files.iter().filter(|f| f.kind == "dbx-auth") {
        let mut it = crate::pki::CheckItem {
            role: f.path.clone(),
            ..Default::default()
        };
        let path = dir.join(&f.path);
        let kek = m
            .role("KEK")
            .and_then(|k| first_cert(&dir.join(&k.files.cert)));
        let esl = fs::read(dir.join("dbx.esl")).unwrap_or_default();
        match (fsutil::read_input(&path, fsutil::InputKind::Auth), kek) {
            (Err(e), _) => it.problems.push(e.to_string()),
            (_, None) => it
                .problems
                .push("no KEK certificate to check it with".into()),
            (Ok(b), Some(kek)) => {
                match efivar::verify_auth(
                    &b,
                    &path,
                    Some((SecureVar::Dbx, true)),
                    std::slice::from_ref(&kek),
                ) {
                    Err(e) => it.problems.push(e.to_string()),
                    Ok(v) => it
                        .problems
                        .extend(v.problems.iter().map(|p| format!("dbx update: {p}"))),
                }
                match efivar::parse_auth(&b, &path) {
                    Ok(a) if a.data == esl => {
                        let n = efivar::parse_esl(&esl, &path).map(|e| e.len()).unwrap_or(0);
                        it.notes.push(format!(
                            "revokes {n} development certificate(s) by TBSCertificate hash"
                        ));
                    }
                    Ok(_) => it.problems.push("does not hold the list of dbx.esl".into()),
                    Err(e) => it.problems.push(e.to_string()),
                }
            }
        }
        it.ok = it.problems.is_empty();
        items.push(it);
    }
}
