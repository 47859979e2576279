//! Signing plans: a record of what the build signed, with which role and key,
//! so release engineers can re-sign the same artifacts with production keys.
//!
//! A plan is JSON lines, one [`Record`] per signed artifact (a JSON array is
//! accepted too). Many bitbake tasks append to the same plan at once, so an
//! append takes an exclusive `flock` on `PLAN.lock` and adds its lines with
//! one `write` on an `O_APPEND` descriptor: readers never see half a record
//! from a live writer, and a line torn by a killed one is fenced off by the
//! next writer's newline.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, DirLock};
use crate::x509;

/// What kind of artifact a record describes, i.e. how to re-sign it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An Authenticode-signed PE/EFI image; `output` is the signed image.
    Pe,
    /// A GuestOS manifest; `output` is NAME.conf, signed by NAME.sig + NAME.cert.
    Guestos,
    /// A UKI `uki build` made with a signed PCR policy: Authenticode-signed
    /// like `Pe`, and its `.pcrsig` was signed by the PCR key
    /// `pcr_key_fingerprint`. Re-signing replaces only the Authenticode
    /// signature, so `resign` and `offline request` refuse it while that PCR
    /// key is a development PKI's. Older `resign`s do not know this kind and
    /// refuse the whole plan rather than ship a development PCR policy.
    Uki,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pe => "pe",
            Kind::Guestos => "guestos",
            Kind::Uki => "uki",
        }
    }
}

/// One signed artifact. Unknown fields are ignored when reading, so newer
/// writers can add fields without breaking older `resign`s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The file that was signed, as given on the command line; for a UKI
    /// `uki build` made, the stub it was built on.
    pub artifact: PathBuf,
    /// The same, absolute (relative paths depend on each task's cwd).
    pub artifact_abs: PathBuf,
    pub kind: Kind,
    /// The PKI role that signed, or null for `--key/--cert`.
    pub role: Option<String>,
    /// Absolute PKI directory of `role`: where `resign` finds the `pki.json`
    /// that says whether those keys are development keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pki: Option<PathBuf>,
    /// SHA-256 (hex) of the artifact before signing.
    pub sha256_before: String,
    /// SHA-256 (hex) of the signed output file.
    pub sha256_after: String,
    /// SHA-256 (hex) of the signer certificate (DER).
    pub key_fingerprint: String,
    /// Subject of the signer certificate, for people reading the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// The signed file, as given.
    pub output: PathBuf,
    pub output_abs: PathBuf,
    /// PE only: the Authenticode SHA-256 the signature covers. Re-signing
    /// keeps it, which is how a re-run recognises an artifact it already did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticode_sha256: Option<String>,
    /// UKI only: `pkfp` of the key that signed the PCR policy in `.pcrsig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr_key_fingerprint: Option<String>,
}

impl Record {
    /// A record for `artifact`, just signed into `output` by the certificate
    /// `signer_cert` (DER). `sha256_before` must be taken before signing
    /// (in-place signing overwrites the artifact).
    pub fn signed(
        kind: Kind,
        artifact: &Path,
        output: &Path,
        role: Option<&str>,
        pki: Option<&Path>,
        sha256_before: String,
        signer_cert: &[u8],
    ) -> Result<Record> {
        let signer = x509::parse(signer_cert, Path::new("signer certificate"))?
            .subject()
            .to_string();
        Ok(Record {
            artifact: artifact.to_path_buf(),
            artifact_abs: absolute(artifact)?,
            kind,
            role: role.map(str::to_string),
            pki: pki.map(absolute).transpose()?,
            sha256_before,
            sha256_after: sha256_file(output)?,
            key_fingerprint: crate::codec::sha256_hex(signer_cert),
            signer: Some(signer),
            output: output.to_path_buf(),
            output_abs: absolute(output)?,
            authenticode_sha256: None,
            pcr_key_fingerprint: None,
        })
    }

    fn check(&self, plan: &Path, at: &str) -> Result<()> {
        let hex_ok = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        for (name, v) in [
            ("sha256_before", Some(&self.sha256_before)),
            ("sha256_after", Some(&self.sha256_after)),
            ("key_fingerprint", Some(&self.key_fingerprint)),
            ("authenticode_sha256", self.authenticode_sha256.as_ref()),
            ("pcr_key_fingerprint", self.pcr_key_fingerprint.as_ref()),
        ] {
            if let Some(v) = v.filter(|v| !hex_ok(v)) {
                return Err(Error::input(
                    plan,
                    format!("{at}: {name} '{v}' is not a SHA-256 in hex"),
                ));
            }
        }
        if self.kind == Kind::Uki && self.pcr_key_fingerprint.is_none() {
            return Err(Error::input(
                plan,
                format!("{at}: a uki record without pcr_key_fingerprint"),
            ));
        }
        Ok(())
    }
}

/// What one signing command keeps for the plan: the hash of each artifact
/// before signing (in-place signing overwrites it), then one record per
/// signed file, appended in one locked write. Without a plan file it does
/// nothing, so commands call it unconditionally.
pub struct Recorder<'a> {
    pub plan: Option<&'a Path>,
    pub kind: Kind,
    /// The PKI role that signed and its directory, or None for `--key/--cert`.
    pub role: Option<(&'a str, &'a Path)>,
    /// The signer certificate (DER).
    pub signer_cert: &'a [u8],
}

/// One signed file, for [`Recorder::finish`].
pub struct Signed<'a> {
    pub artifact: &'a Path,
    pub output: &'a Path,
    /// From [`Recorder::before`].
    pub sha256_before: Option<String>,
    /// PE only: the Authenticode digest that was signed.
    pub authenticode_sha256: Option<String>,
    /// UKI only: `pkfp` of the PCR policy key.
    pub pcr_key_fingerprint: Option<String>,
}

impl Recorder<'_> {
    /// The artifact's SHA-256 now, if a plan is kept.
    pub fn before(&self, artifact: &Path) -> Result<Option<String>> {
        self.plan.map(|_| sha256_file(artifact)).transpose()
    }

    pub fn finish<'s>(&self, signed: impl IntoIterator<Item = Signed<'s>>) -> Result<()> {
        let Some(plan) = self.plan else {
            return Ok(());
        };
        let mut records = vec![];
        for s in signed {
            let Some(before) = s.sha256_before else {
                continue;
            };
            let mut rec = Record::signed(
                self.kind,
                s.artifact,
                s.output,
                self.role.map(|(r, _)| r),
                self.role.map(|(_, d)| d),
                before,
                self.signer_cert,
            )?;
            rec.authenticode_sha256 = s.authenticode_sha256;
            rec.pcr_key_fingerprint = s.pcr_key_fingerprint;
            records.push(rec);
        }
        append(plan, &records)
    }
}

/// `path` made absolute against the current directory, without resolving
/// symlinks (the plan names files as the build saw them).
pub fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).at(path)
}

/// SHA-256 (hex) of a file's content, read as a stream.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).at(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(crate::codec::hex(&h.finalize()))
}

/// The lock file that serialises writers of `plan`.
pub fn lock_path(plan: &Path) -> PathBuf {
    let mut s = plan.as_os_str().to_os_string();
    s.push(".lock");
    PathBuf::from(s)
}

/// Append `records` to `plan`, creating it. Safe with any number of
/// concurrent appenders (processes or threads).
pub fn append(plan: &Path, records: &[Record]) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    // The plan usually lives in the deploy directory, which the first signing
    // task of a build may be the one to create.
    let dir = fsutil::parent_dir(plan);
    std::fs::create_dir_all(&dir).at(&dir)?;
    let _lock = DirLock::acquire(&lock_path(plan))?;
    let f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(fsutil::PUBLIC_MODE)
        .open(plan)
        .at(plan)?;
    let len = f.metadata().at(plan)?.len();
    if len > 0 && starts_with_array(&f, plan)? {
        return append_to_array(plan, records);
    }
    let mut buf = Vec::new();
    if len > 0 {
        let mut last = [0u8; 1];
        f.read_exact_at(&mut last, len - 1).at(plan)?;
        if last[0] != b'\n' {
            // A writer was killed mid-line; keep its fragment off our record.
            buf.push(b'\n');
        }
    }
    for r in records {
        serde_json::to_writer(&mut buf, r).map_err(|e| Error::Internal(e.to_string()))?;
        buf.push(b'\n');
    }
    // One write() in the normal case; write_all only loops on a short write
    // (disk full), which the lock keeps from interleaving with anyone.
    (&f).write_all(&buf).at(plan)?;
    f.sync_data().at(plan)
}

fn starts_with_array(f: &File, plan: &Path) -> Result<bool> {
    let mut head = [0u8; 256];
    let n = f.read_at(&mut head, 0).at(plan)?;
    Ok(head[..n]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'['))
}

/// A plan someone keeps as a JSON array stays one: rewrite it whole
/// (atomically, still under the lock) with the records added.
fn append_to_array(plan: &Path, records: &[Record]) -> Result<()> {
    let text = fsutil::read_input(plan, fsutil::InputKind::Plan)?;
    let mut all: Vec<serde_json::Value> = serde_json::from_slice(&text)
        .map_err(|e| Error::input(plan, format!("not a JSON array of records: {e}")))?;
    for r in records {
        all.push(serde_json::to_value(r).map_err(|e| Error::Internal(e.to_string()))?);
    }
    let mut out = serde_json::to_vec_pretty(&all).map_err(|e| Error::Internal(e.to_string()))?;
    out.push(b'\n');
    let mode = fs::metadata(plan).at(plan)?.permissions().mode() & 0o7777;
    fsutil::write_atomic(plan, &out, mode)
}

/// Every record of `plan`, in file order.
pub fn read(plan: &Path) -> Result<Vec<Record>> {
    let text = fsutil::read_input_to_string(plan, fsutil::InputKind::Plan)?;
    let records: Vec<Record> = if text.trim_start().starts_with('[') {
        serde_json::from_str(&text)
            .map_err(|e| Error::input(plan, format!("bad signing plan: {e}")))?
    } else {
        let mut v = vec![];
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let r: Record = serde_json::from_str(line).map_err(|e| {
                Error::input(
                    plan,
                    format!("line {}: bad signing plan record: {e}", i + 1),
                )
            })?;
            r.check(plan, &format!("line {}", i + 1))?;
            v.push(r);
        }
        return Ok(v);
    };
    for (i, r) in records.iter().enumerate() {
        r.check(plan, &format!("record {}", i + 1))?;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u32) -> Record {
        Record {
            artifact: format!("a{n}.efi").into(),
            artifact_abs: format!("/b/a{n}.efi").into(),
            kind: Kind::Pe,
            role: Some("ssig_subca".into()),
            pki: Some("/b/pki".into()),
            sha256_before: "0".repeat(64),
            sha256_after: "1".repeat(64),
            key_fingerprint: "2".repeat(64),
            signer: None,
            output: format!("a{n}.signed.efi").into(),
            output_abs: format!("/b/a{n}.signed.efi").into(),
            authenticode_sha256: Some("3".repeat(64)),
            pcr_key_fingerprint: None,
        }
    }

    #[test]
    fn lines_and_arrays_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("plan.json");
        append(&p, &[rec(1)]).unwrap();
        append(&p, &[rec(2), rec(3)]).unwrap();
        assert_eq!(read(&p).unwrap(), vec![rec(1), rec(2), rec(3)]);
        assert_eq!(fs::read_to_string(&p).unwrap().lines().count(), 3);

        let a = d.path().join("array.json");
        fs::write(&a, serde_json::to_vec(&vec![rec(1)]).unwrap()).unwrap();
        append(&a, &[rec(2)]).unwrap();
        assert_eq!(read(&a).unwrap(), vec![rec(1), rec(2)]);
    }

    #[test]
    fn a_torn_line_is_fenced_off_and_reported() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("plan.json");
        append(&p, &[rec(1)]).unwrap();
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"artifact\":").unwrap();
        append(&p, &[rec(2)]).unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 3);
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn concurrent_appends_from_threads_keep_every_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("plan.json");
        std::thread::scope(|s| {
            for n in 0..16 {
                let p = &p;
                s.spawn(move || append(p, &[rec(n)]).unwrap());
            }
        });
        let mut got: Vec<_> = read(&p).unwrap().into_iter().map(|r| r.artifact).collect();
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 16);
    }
}
