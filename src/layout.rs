//! `pki export`: a PKI's UEFI Secure Boot keys and its TPM PCR policy key
//! under the file names another tool expects, in a directory of their own.
//!
//! Kairos (AuroraBoot's `genkey` and `build-uki`, enki before them) keeps
//!
//! - `PK.key PK.pem PK.der PK.esl PK.auth`, the same for `KEK`, and for `db`
//!   in lower case: `db.key`/`db.pem` sign the EFI binaries (`--sb-key`,
//!   `--sb-cert`); the `.auth` files are what systemd-boot enrolls from
//!   `loader/keys/auto` (`--public-keys`: PK.auth self-signed, KEK.auth
//!   signed by PK, db.auth signed by KEK); `.der` is the certificate in DER;
//! - `tpm2-pcr-private.pem`, the PCR policy key (`--tpm-pcr-private-key`).
//!
//! This PKI's roles are PK, KEK and DB, and `DB.esl`/`DB.auth` hold the
//! certificates of DB and ssig_subca, so a UKI signed by either boots.
//! `dbx.esl`/`dbx.auth` (a production PKI's revocation of the development
//! one) and `tpm2-pcr-public.pem` come along as they are, which systemd-boot
//! enrolls and systemd-cryptenroll binds to. A key kept in a PKCS#11 token
//! is not a file: its URI is reported instead, which Kairos takes for
//! `--sb-key` and `--tpm-pcr-private-key` too.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, InputKind};
use crate::pki::Inventory;

/// The file names of a tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Kairos: PK/KEK/db `.key .pem .der .esl .auth`, `tpm2-pcr-private.pem`.
    Kairos,
}

/// What `export` wrote, or which token key stands in for a file.
#[derive(Clone, Debug, Serialize)]
pub struct ExportReport {
    pub dir: PathBuf,
    pub layout: Layout,
    pub files: Vec<ExportedFile>,
    /// Keys that live in a token: no file, their URI.
    pub token_keys: Vec<TokenKey>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExportedFile {
    /// The name in the exported directory.
    pub name: String,
    /// The file of the PKI it is a copy of, relative to the PKI directory.
    pub from: String,
    pub private: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct TokenKey {
    /// The file the tool would read (`db.key`, `tpm2-pcr-private.pem`).
    pub name: String,
    pub uri: String,
}

/// One file to copy: PKI file (relative), exported name, what it must be.
struct Copy {
    from: String,
    name: String,
    what: What,
    group: String,
}

/// What a file must be; checked before anything is written, so a broken
/// PKI is refused rather than exported.
#[derive(Clone, Copy, PartialEq, Eq)]
enum What {
    Key,
    Cert,
    PublicKey,
    Esl,
    Auth,
}

impl What {
    fn input_kind(self) -> InputKind {
        match self {
            What::Key => InputKind::Key,
            What::Cert | What::PublicKey => InputKind::Certificate,
            What::Esl => InputKind::Esl,
            What::Auth => InputKind::Auth,
        }
    }
}

impl Copy {
    fn private(&self) -> bool {
        self.what == What::Key
    }

    /// Parse `data` as what it must be; the SubjectPublicKeyInfo of a key,
    /// certificate or public key.
    fn check(&self, data: &[u8], path: &Path) -> Result<Option<Vec<u8>>> {
        Ok(match self.what {
            What::Key => {
                let signer = crate::identity::load_signer(path, None)?;
                Some(crate::x509::spki_der(signer.as_ref()))
            }
            What::Cert => {
                let certs = crate::x509::parse_certs(data, path)?;
                let cert = crate::x509::parse(&certs[0], path)?;
                Some(cert.public_key().raw.to_vec())
            }
            What::PublicKey => Some(
                crate::uki::public_key_from_pem(data)
                    .map_err(|m| Error::input(path, m))?
                    .spki_der,
            ),
            What::Esl => {
                crate::efivar::parse_esl(data, path)?;
                None
            }
            What::Auth => {
                crate::efivar::parse_auth(data, path)?;
                None
            }
        })
    }
}

/// The UEFI roles and the names Kairos gives them.
const KAIROS_ROLES: [(&str, &str); 3] = [("PK", "PK"), ("KEK", "KEK"), ("DB", "db")];

/// Write the PKI in `pki_dir` to the new directory `out` in `layout`. `out`
/// must not exist, or be empty; it appears whole, with one rename, or not at
/// all. In release mode a development PKI is refused: a tool that signs with
/// the exported keys would sign with development keys.
pub fn export(pki_dir: &Path, layout: Layout, out: &Path) -> Result<ExportReport> {
    let Layout::Kairos = layout;
    if crate::release::enabled() {
        if let Some(why) = crate::release::development_dir(pki_dir)? {
            return Err(Error::input(
                pki_dir,
                format!("release mode refuses to export a development PKI ({why}): the keys would sign releases"),
            ));
        }
    }
    let (copies, token_keys) = kairos_files(pki_dir)?;
    // Everything is read and checked before anything is written: each file
    // is what it must be, and each key belongs to its certificate.
    let mut contents = Vec::with_capacity(copies.len());
    let mut spki_of: Vec<(&str, Vec<u8>, &str)> = vec![];
    for c in &copies {
        let path = pki_dir.join(&c.from);
        let data = fsutil::read_input(&path, c.what.input_kind())?;
        if let Some(spki) = c.check(&data, &path)? {
            if let Some((_, first, other)) = spki_of.iter().find(|(g, _, _)| *g == c.group) {
                if *first != spki {
                    return Err(Error::input(
                        &path,
                        format!("its public key is not that of {other}"),
                    ));
                }
            } else {
                spki_of.push((c.group.as_str(), spki, c.from.as_str()));
            }
        }
        contents.push(data);
    }
    let out = std::path::absolute(out).at(out)?;
    match fs::read_dir(&out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::input(
                    &out,
                    "is not empty: export into a new or empty directory",
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&out, e)),
    }
    let parent = fsutil::parent_dir(&out);
    fs::create_dir_all(&parent).at(&parent)?;
    let tmp = fsutil::temp_path(&out, fsutil::tag::TMP)?;
    // Private from the start: keys go in (the umask can only narrow 0700).
    fs::DirBuilder::new().mode(0o700).create(&tmp).at(&tmp)?;
    let written = copies.iter().zip(&contents).try_for_each(|(c, data)| {
        let mode = if c.private() {
            fsutil::KEY_MODE
        } else {
            fsutil::PUBLIC_MODE
        };
        fsutil::write_new(&tmp.join(&c.name), data, mode)
    });
    let published = written.and_then(|()| {
        fsutil::sync_dir(&tmp)?;
        // rename(2) replaces an empty directory too.
        fs::rename(&tmp, &out).at(&out)?;
        fsutil::sync_dir(&parent)
    });
    if let Err(e) = published {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(ExportReport {
        dir: out,
        layout,
        files: copies
            .into_iter()
            .map(|c| ExportedFile {
                private: c.private(),
                name: c.name,
                from: c.from,
            })
            .collect(),
        token_keys,
    })
}

/// The files of the Kairos layout, found through `pki.json`.
fn kairos_files(pki_dir: &Path) -> Result<(Vec<Copy>, Vec<TokenKey>)> {
    let manifest = pki_dir.join(crate::pki::MANIFEST);
    if !manifest.is_file() {
        return Err(Error::input(
            pki_dir,
            format!(
                "no {}: pki export reads the PKI that pki init --uefi made",
                crate::pki::MANIFEST
            ),
        ));
    }
    let inv = Inventory::load(pki_dir)?;
    let mut copies = vec![];
    let mut tokens = vec![];
    // The files of one key (its key, certificates or public key) share a group.
    let file = |from: String, name: String, what: What, group: &str| Copy {
        from,
        name,
        what,
        group: group.to_string(),
    };
    for (role, name) in KAIROS_ROLES {
        let r = inv.roles.iter().find(|r| r.role == role).ok_or_else(|| {
            Error::input(
                &manifest,
                format!("no {role} role: the Kairos layout needs the UEFI keys (pki init --uefi)"),
            )
        })?;
        match (&r.key_uri, &r.files.key) {
            (Some(uri), _) => tokens.push(TokenKey {
                name: format!("{name}.key"),
                uri: uri.clone(),
            }),
            (None, Some(k)) => copies.push(file(k.clone(), format!("{name}.key"), What::Key, role)),
            (None, None) => {
                return Err(Error::input(
                    &manifest,
                    format!("role {role} names neither a key file nor a token key"),
                ))
            }
        }
        let der = r.files.der.clone().ok_or_else(|| {
            Error::input(&manifest, format!("role {role} has no DER certificate"))
        })?;
        copies.push(file(
            r.files.cert.clone(),
            format!("{name}.pem"),
            What::Cert,
            role,
        ));
        copies.push(file(der, format!("{name}.der"), What::Cert, role));
        copies.push(file(
            format!("{role}.esl"),
            format!("{name}.esl"),
            What::Esl,
            role,
        ));
        copies.push(file(
            format!("{role}.auth"),
            format!("{name}.auth"),
            What::Auth,
            role,
        ));
    }
    for (from, what) in [("dbx.esl", What::Esl), ("dbx.auth", What::Auth)] {
        if pki_dir.join(from).is_file() {
            copies.push(file(from.into(), from.into(), what, "dbx"));
        }
    }
    let pcr = |kind: &str| inv.files.iter().find(|f| f.kind == kind);
    match pcr("tpm-pcr-private-key") {
        Some(f) if f.key_uri.is_some() => tokens.push(TokenKey {
            name: "tpm2-pcr-private.pem".into(),
            uri: f.key_uri.clone().unwrap_or_default(),
        }),
        Some(f) => copies.push(file(
            f.path.clone(),
            "tpm2-pcr-private.pem".into(),
            What::Key,
            "pcr",
        )),
        None => {
            return Err(Error::input(
                &manifest,
                "no TPM PCR key: the Kairos layout needs tpm2-pcr-private.pem (pki init --uefi)",
            ))
        }
    }
    if let Some(f) = pcr("tpm-pcr-public-key") {
        copies.push(file(
            f.path.clone(),
            "tpm2-pcr-public.pem".into(),
            What::PublicKey,
            "pcr",
        ));
    }
    Ok((copies, tokens))
}
