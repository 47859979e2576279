//! Signing and verifying EFI images: the `pe` format module and the
//! `authenticode` signature module put together, one image at a time.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;
use time::OffsetDateTime;

use crate::authenticode::{self, SignOptions};
use crate::efivar;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::identity::Identity;
use crate::par;
use crate::pe::{ImageDigest, PeImage};
use crate::x509;

/// What to do with signatures an image already carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Refuse to sign an already-signed image (the default: silently
    /// stacking or dropping signatures surprises people).
    Refuse,
    /// Keep them and add ours after them, as EDK2 walks the table.
    Append,
    /// Drop them all.
    Replace,
}

/// Where the result of signing goes.
#[derive(Clone, Debug)]
pub enum Output {
    /// A new file (temp file + rename).
    File(PathBuf),
    /// Append the table to the input itself without rewriting the image.
    InPlace,
    /// Only the PKCS#7 SignedData, like `sbsign --detached`.
    Detached(PathBuf),
}

#[derive(Clone, Debug, Serialize)]
pub struct SignReport {
    pub input: PathBuf,
    pub output: PathBuf,
    /// Authenticode SHA-256 that was signed (hex).
    pub digest: String,
    pub signatures_before: usize,
    pub signatures_after: usize,
}

fn existing_for(
    img: &PeImage,
    input: &Path,
    existing: Existing,
    new: Vec<u8>,
) -> Result<(usize, Vec<Vec<u8>>)> {
    let old = img.pkcs7_signatures()?;
    let before = old.len();
    let sigs = match existing {
        Existing::Refuse if before > 0 => {
            return Err(Error::input(
                input,
                format!("already signed ({before} signature{}): pass --append to add ours after them, or --replace to drop them", if before == 1 { "" } else { "s" }),
            ))
        }
        Existing::Append => old.into_iter().chain(std::iter::once(new)).collect(),
        _ => vec![new],
    };
    Ok((before, sigs))
}

/// One image to sign and where the result goes.
#[derive(Clone, Debug)]
pub struct Job {
    pub input: PathBuf,
    pub output: Output,
}

/// Authenticode-sign one image with `id`.
pub fn sign(
    input: &Path,
    output: &Output,
    id: &Identity,
    existing: Existing,
    signing_time: Option<OffsetDateTime>,
) -> Result<SignReport> {
    let job = Job {
        input: input.to_path_buf(),
        output: output.clone(),
    };
    let mut done = sign_all(&[job], id, existing, signing_time, |_| Ok(()))?;
    done.pop()
        .map(|(r, ())| r)
        .ok_or_else(|| Error::Internal("signing produced no report".into()))
}

/// Authenticode-sign many images with one loaded key, on all cores.
/// `before` runs on each input before it is touched (to hash it for a
/// signing plan, say) and its result comes back with the report.
///
/// Every image is signed before any output is touched, so an input that
/// cannot be signed leaves every output as it was. Copies are written to temp
/// files as their images are signed (the data while the image is hashed)
/// and fsynced on other threads meanwhile; then in-place images get their
/// tables, and the copies and detached signatures are renamed into place
/// together.
pub fn sign_all<T: Send + Sync>(
    jobs: &[Job],
    id: &Identity,
    existing: Existing,
    signing_time: Option<OffsetDateTime>,
    before: impl Fn(&Path) -> Result<T> + Sync,
) -> Result<Vec<(SignReport, T)>> {
    let mut targets = HashSet::new();
    for j in jobs {
        let target = match &j.output {
            Output::File(p) | Output::Detached(p) => p,
            Output::InPlace => &j.input,
        };
        if !targets.insert(target) {
            return Err(Error::Usage(format!(
                "{}: two inputs would be written here (same file name?)",
                target.display()
            )));
        }
        fsutil::remove_stale_temps(target);
    }
    // Copies are finished and fsynced as they are signed; the rest waits.
    let copies = jobs
        .iter()
        .filter(|j| matches!(j.output, Output::File(_)))
        .count();
    let (signed, mut staged) = fsutil::sync_while(copies, |queue| {
        par::map(jobs.len(), par::cores(), |i| {
            let j = &jobs[i];
            let t = before(&j.input)?;
            let (report, pending) = sign_one(j, id, existing, signing_time)?;
            let pending = match pending {
                Pending::Copy(copy) => {
                    queue.push(copy);
                    None
                }
                p => Some(p),
            };
            Ok((report, t, pending))
        })
    })?;
    // Waiting on the disk, not the CPU: many at once.
    let more = par::map(signed.len(), par::IO_THREADS, |i| {
        let (r, _, pending) = &signed[i];
        match pending {
            Some(Pending::InPlace(digest, sigs)) => {
                PeImage::open(&r.input)?.write_signed_in_place(digest, sigs)?;
                Ok(None)
            }
            Some(Pending::Detached(p7)) => Ok(Some(fsutil::Staged::with_data(
                &r.output,
                fsutil::tag::TMP,
                fsutil::PUBLIC_MODE,
                p7,
            )?)),
            Some(Pending::Copy(_)) | None => Ok(None),
        }
    })?;
    staged.extend(more.into_iter().flatten());
    fsutil::publish(staged)?;
    Ok(signed.into_iter().map(|(r, t, _)| (r, t)).collect())
}

/// Images from this size on are copied and synced while they are hashed.
const EARLY_SYNC_MIN: u64 = 16 << 20;

/// What is left to write for one signed image.
enum Pending {
    InPlace(ImageDigest, Vec<Vec<u8>>),
    /// A finished copy in its temp file.
    Copy(fsutil::Staged),
    /// The PKCS#7 SignedData alone.
    Detached(Vec<u8>),
}

/// Read and sign one image. A copy is written to its temp file; nothing
/// else is written yet. The image is closed again, so a batch of thousands
/// does not hold thousands of descriptors; the digest remembers the file's
/// identity, and writing in place refuses an image that changed in between.
fn sign_one(
    job: &Job,
    id: &Identity,
    existing: Existing,
    signing_time: Option<OffsetDateTime>,
) -> Result<(SignReport, Pending)> {
    let input = job.input.as_path();
    let img = PeImage::open(input)?;
    // Refuse before doing the expensive part.
    if existing == Existing::Refuse && !matches!(job.output, Output::Detached(_)) {
        existing_for(&img, input, existing, vec![])?;
    }
    let (copy, digest) = match &job.output {
        // Making a big copy durable is mostly waiting for the disk, as long
        // as hashing takes: do both at once. Small ones wait for publish(),
        // which syncs a whole batch together.
        Output::File(p) if img.file_size() >= EARLY_SYNC_MIN => std::thread::scope(|s| {
            let copy = s.spawn(|| {
                let c = img.stage_copy(p)?;
                c.sync_data()?;
                Ok::<_, Error>(c)
            });
            let digest = img.digest();
            let copy = copy
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("copy thread panicked".into())));
            Ok::<_, Error>((Some(copy?), digest?))
        })?,
        Output::File(p) => (Some(img.stage_copy(p)?), img.digest()?),
        _ => (None, img.digest()?),
    };
    let p7 = authenticode::sign_digest(
        &digest.sha256,
        &SignOptions {
            signer: id.signer.as_ref(),
            cert: &id.cert,
            chain: &id.chain,
            signing_time,
        },
    )?;
    let report = |output: &Path, before, after| SignReport {
        input: input.into(),
        output: output.into(),
        digest: digest.hex(),
        signatures_before: before,
        signatures_after: after,
    };
    Ok(match &job.output {
        Output::Detached(p) => {
            let r = report(p, img.pkcs7_signatures()?.len(), 1);
            (r, Pending::Detached(p7))
        }
        Output::InPlace => {
            let (before, sigs) = existing_for(&img, input, existing, p7)?;
            (
                report(input, before, sigs.len()),
                Pending::InPlace(digest, sigs),
            )
        }
        Output::File(p) => {
            let (before, sigs) = existing_for(&img, input, existing, p7)?;
            let copy = copy.ok_or_else(|| Error::Internal("copy was not staged".into()))?;
            // Not visible until publish(), so finishing it now is safe.
            img.finish_copy(&copy, &digest, &sigs)?;
            (report(p, before, sigs.len()), Pending::Copy(copy))
        }
    })
}

/// Attach a detached signature made elsewhere (e.g. by an HSM workflow or sbsign --detached).
pub fn attach(input: &Path, sig_path: &Path, out: &Path, existing: Existing) -> Result<SignReport> {
    let img = PeImage::open(input)?;
    let raw = fsutil::read_input(sig_path, fsutil::InputKind::Signature)?;
    let der = if raw.starts_with(b"-----BEGIN") {
        pem::parse(&raw)
            .map_err(|e| Error::input(sig_path, format!("bad PEM: {e}")))?
            .into_contents()
    } else {
        raw
    };
    let sig = authenticode::parse(&der, sig_path)?;
    let digest = img.digest()?;
    if sig.image_digest != digest.sha256 {
        return Err(Error::input(
            sig_path,
            format!(
                "signature is for image digest {}, {} has {}",
                crate::codec::hex(&sig.image_digest),
                input.display(),
                digest.hex()
            ),
        ));
    }
    let (before, sigs) = existing_for(&img, input, existing, der)?;
    img.write_signed(&digest, &sigs, out)?;
    Ok(SignReport {
        input: input.into(),
        output: out.into(),
        digest: digest.hex(),
        signatures_before: before,
        signatures_after: sigs.len(),
    })
}

/// Remove the signature at `index` (0-based), or all of them.
pub fn unsign(input: &Path, out: &Path, index: Option<usize>) -> Result<SignReport> {
    let img = PeImage::open(input)?;
    let mut sigs = img.pkcs7_signatures()?;
    let before = sigs.len();
    match index {
        None => sigs.clear(),
        Some(i) if i < sigs.len() => {
            sigs.remove(i);
        }
        Some(i) => {
            return Err(Error::input(
                input,
                format!("no signature at index {i} ({before} present)"),
            ))
        }
    }
    let digest = img.digest()?;
    img.write_signed(&digest, &sigs, out)?;
    Ok(SignReport {
        input: input.into(),
        output: out.into(),
        digest: digest.hex(),
        signatures_before: before,
        signatures_after: sigs.len(),
    })
}

/// Trust anchors and revocations, as UEFI db/dbx hold them or as given certificates.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// X.509 anchors (DER): `--cert` files and db X.509 entries.
    pub certs: Vec<(String, Vec<u8>)>,
    /// Image digests allowed by db.
    pub hashes: Vec<Vec<u8>>,
    pub revoked_certs: Vec<Vec<u8>>,
    /// dbx EFI_CERT_X509_SHA256/384/512 entries: the hash of a revoked
    /// certificate's TBSCertificate (the revocation time is not kept: with no
    /// dbt, firmware treats every such certificate as revoked).
    pub revoked_cert_hashes: Vec<Vec<u8>>,
    pub revoked_hashes: Vec<Vec<u8>>,
}

impl Trust {
    pub fn add_cert_file(&mut self, path: &Path) -> Result<()> {
        for c in x509::read_certs(path)? {
            self.certs.push((path.display().to_string(), c));
        }
        Ok(())
    }

    fn read_esl(path: &Path) -> Result<Vec<efivar::SigEntry>> {
        // A published update (.auth, e.g. a dbx revocation list) gives its lists.
        let bytes = fsutil::read_input(path, fsutil::InputKind::Esl)?;
        efivar::parse_esl(&efivar::lists_of_file(&bytes, path)?, path)
    }

    pub fn add_db(&mut self, path: &Path) -> Result<()> {
        for e in Self::read_esl(path)? {
            if e.is_x509() {
                self.certs
                    .push((format!("{} (db)", path.display()), e.data));
            } else if e.sig_type == efivar::EFI_CERT_SHA256_GUID {
                self.hashes.push(e.data);
            }
        }
        Ok(())
    }

    pub fn add_dbx(&mut self, path: &Path) -> Result<()> {
        for e in Self::read_esl(path)? {
            let hash_len = match e.sig_type {
                t if t == efivar::EFI_CERT_X509_SHA256_GUID => 32,
                t if t == efivar::EFI_CERT_X509_SHA384_GUID => 48,
                t if t == efivar::EFI_CERT_X509_SHA512_GUID => 64,
                _ => 0,
            };
            if e.is_x509() {
                self.revoked_certs.push(e.data);
            } else if e.sig_type == efivar::EFI_CERT_SHA256_GUID {
                self.revoked_hashes.push(e.data);
            } else if hash_len > 0 {
                // Hash, then EFI_TIME revocation time.
                let h = e.data.get(..hash_len).ok_or_else(|| {
                    Error::input(
                        path,
                        format!(
                            "dbx certificate-hash entry of {} bytes is too short",
                            e.data.len()
                        ),
                    )
                })?;
                self.revoked_cert_hashes.push(h.to_vec());
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SignatureReport {
    pub index: usize,
    pub signer: Option<String>,
    pub issuer: String,
    pub signing_time: Option<String>,
    pub valid: bool,
    pub trusted_by: Option<String>,
    pub revoked: bool,
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub file: PathBuf,
    pub digest: String,
    pub signatures: Vec<SignatureReport>,
    /// The image digest itself is in db.
    pub digest_in_db: bool,
    /// The image digest is in dbx.
    pub digest_revoked: bool,
    pub ok: bool,
}

/// Check every signature of `path` against `trust`. `ok` means: at least one
/// signature is valid and trusted (or the digest is in db), and nothing is revoked.
pub fn verify(path: &Path, trust: &Trust) -> Result<VerifyReport> {
    let img = PeImage::open(path)?;
    let digest = img.digest()?;
    let entries = img.pkcs7_signatures()?;
    let mut reports = vec![];
    for (i, der) in entries.iter().enumerate() {
        let mut r = SignatureReport {
            index: i,
            signer: None,
            issuer: String::new(),
            signing_time: None,
            valid: false,
            trusted_by: None,
            revoked: false,
            problems: vec![],
        };
        match authenticode::parse(der, path) {
            Err(e) => r.problems.push(e.to_string()),
            Ok(sig) => {
                r.issuer = sig.signer_issuer.clone();
                r.signing_time = sig.signing_time.clone();
                r.signer = sig
                    .signer_cert
                    .as_deref()
                    .and_then(|c| x509::parse(c, path).ok().map(|p| p.subject().to_string()));
                match authenticode::verify_signature(&sig, &digest.sha256) {
                    Ok(()) => r.valid = true,
                    Err(e) => r.problems.push(e),
                }
                let anchors: Vec<Vec<u8>> = trust.certs.iter().map(|(_, c)| c.clone()).collect();
                let tpath = authenticode::trust_path(&sig, &anchors);
                match &tpath {
                    Ok(p) => r.trusted_by = Some(trust.certs[p.anchor].0.clone()),
                    Err(e) if !anchors.is_empty() => r.problems.push(format!(
                        "signer does not chain to any trusted certificate: {e}"
                    )),
                    Err(_) => {}
                }
                if !trust.revoked_certs.is_empty()
                    && authenticode::chains_to(&sig, &trust.revoked_certs).is_some()
                {
                    r.revoked = true;
                    r.problems
                        .push("signer chains to a certificate in dbx".into());
                }
                // EDK2 hashes the signer certificate(s) and the db certificate
                // that verified; we take every certificate of the path, so an
                // intermediate revoked by hash is refused too.
                let mut on_path: Vec<&[u8]> = sig.signer_cert.as_deref().into_iter().collect();
                if let Ok(p) = &tpath {
                    on_path.extend(p.certs.iter().map(|c| c.as_slice()));
                }
                if let Some(c) = on_path.iter().find(|c| {
                    trust
                        .revoked_cert_hashes
                        .iter()
                        .any(|h| crate::chain::tbs_hash(c, h.len()).is_some_and(|d| d == *h))
                }) {
                    r.revoked = true;
                    let name = x509::parse(c, path)
                        .map(|p| p.subject().to_string())
                        .unwrap_or_default();
                    r.problems
                        .push(format!("certificate '{name}' is revoked by hash in dbx"));
                }
            }
        }
        reports.push(r);
    }
    // Firmware hashes the image as it is: an unsigned, unaligned image is
    // not padded, so only that digest may match a db or dbx entry.
    let digest_in_db = trust
        .hashes
        .iter()
        .any(|h| h[..] == digest.sha256_unpadded[..]);
    let digest_revoked = trust
        .revoked_hashes
        .iter()
        .any(|h| h[..] == digest.sha256_unpadded[..]);
    let any_trusted = reports.iter().any(|r| r.valid && r.trusted_by.is_some());
    let any_revoked = reports.iter().any(|r| r.revoked);
    let ok = (any_trusted || digest_in_db) && !any_revoked && !digest_revoked;
    Ok(VerifyReport {
        file: path.into(),
        digest: digest.hex(),
        signatures: reports,
        digest_in_db,
        digest_revoked,
        ok,
    })
}
