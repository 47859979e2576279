use std::path::PathBuf;

use clap::{ArgGroup, Subcommand};
use pki_signer::csr::{self, CsrFile, IndexTarget, IssueOptions, Job, Profile};
use pki_signer::identity::Identity;
use pki_signer::text::escape_for_terminal as esc;
use pki_signer::{Error, Result};

use super::{print_json, KeyArgs};

// Parsed once per process; boxing the big variant would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(super) enum CsrCmd {
    /// Issue TLS client certificates for device CSRs (proof of possession checked first).
    #[command(group(ArgGroup::new("dest").required(true).args(["output", "out_dir"])))]
    Sign {
        #[arg(required = true, value_name = "DEVICE.csr")]
        inputs: Vec<PathBuf>,
        #[command(flatten)]
        key: KeyArgs,
        /// Certificate file to write: the device certificate, then the issuer chain (PEM).
        #[arg(short, long, value_name = "DEVICE.cert")]
        output: Option<PathBuf>,
        /// Directory for many CSRs: DIR/<CSR file stem>.cert each.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// Validity in days from now, cut to the issuer's notAfter.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Subject and subjectAltName rules: golioth (O = --project, CN; no SAN),
        /// gyroidos (C, O, OU, CN; SAN URI:UUID:/urn:uuid:) or a JSON FILE.
        /// Default: O and CN copied, DNS host names as the only SAN.
        #[arg(long, value_name = "golioth|gyroidos|FILE.json")]
        profile: Option<String>,
        /// Golioth project slug, required in O by --profile golioth.
        #[arg(long, value_name = "SLUG")]
        project: Option<String>,
        /// Record issued certificates in this JSON Lines file
        /// (default with --role: DIR/issued/index.jsonl; with --key/--cert: none).
        #[arg(long, value_name = "FILE")]
        index: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Show a CSR: subject, key, SANs, requested extensions, signature check.
    /// Exits 1 if its self-signature does not verify.
    Show {
        #[arg(value_name = "DEVICE.csr")]
        input: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(cmd: CsrCmd) -> Result<i32> {
    match cmd {
        CsrCmd::Sign {
            inputs,
            key,
            output,
            out_dir,
            days,
            profile,
            project,
            index,
            json,
        } => {
            let profile = match (profile.as_deref(), project) {
                (Some("golioth"), Some(p)) if !p.is_empty() => {
                    Some(Profile::Golioth { project: p })
                }
                (Some("golioth"), _) => {
                    return Err(Error::Usage(
                        "--profile golioth needs --project SLUG (the subject O)".into(),
                    ))
                }
                (_, Some(_)) => {
                    return Err(Error::Usage(
                        "--project only applies to --profile golioth".into(),
                    ))
                }
                (Some("gyroidos"), None) => Some(Profile::Gyroidos),
                (Some(file), None) => Some(Profile::load(std::path::Path::new(file))?),
                (None, None) => None,
            };
            if inputs.len() > 1 && output.is_some() {
                return Err(Error::Usage("several CSRs need --out-dir".into()));
            }
            let jobs = inputs
                .iter()
                .map(|csr| {
                    let output = match (&output, &out_dir) {
                        (Some(o), _) => o.clone(),
                        (None, Some(d)) => {
                            let stem = csr.file_stem().ok_or_else(|| {
                                Error::Usage(format!("{}: not a file name", csr.display()))
                            })?;
                            let mut name = stem.to_os_string();
                            name.push(".cert");
                            d.join(name)
                        }
                        (None, None) => unreachable!("clap requires -o or --out-dir"),
                    };
                    Ok(Job {
                        csr: csr.clone(),
                        output,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let index = match (&index, &key.role) {
                (Some(p), role) => Some(IndexTarget {
                    path: p.clone(),
                    issuer_role: role.clone(),
                    pki_dir: None,
                }),
                (None, Some(role)) => Some(IndexTarget {
                    path: csr::default_index(&key.dir),
                    issuer_role: Some(role.clone()),
                    pki_dir: Some(key.dir.clone()),
                }),
                (None, None) => None,
            };
            // One key load for the whole batch: HSM logins and password
            // prompts happen once, not per device.
            let id = Identity::load(&key.spec())?;
            let opts = IssueOptions {
                not_before: time::OffsetDateTime::now_utc()
                    .replace_nanosecond(0)
                    .map_err(|e| Error::Crypto(e.to_string()))?,
                days,
                profile,
            };
            let s = csr::sign(&jobs, &id, &opts, index.as_ref())?;
            if s.not_after_clamped {
                eprintln!(
                    "pki-signer: warning: --days {days} goes past the issuer's notAfter; certificates end {}",
                    s.certificates
                        .first()
                        .map(|c| c.not_after.as_str())
                        .unwrap_or("with it")
                );
            }
            for c in &s.certificates {
                if !c.dropped_subject.is_empty() {
                    eprintln!(
                        "pki-signer: warning: {}: subject {} not copied (the profile does not copy it)",
                        c.csr.display(),
                        c.dropped_subject.join(", ")
                    );
                }
            }
            if json {
                print_json(&s)?;
            } else {
                for c in &s.certificates {
                    println!(
                        "issued {} for '{}' (serial {}, until {})",
                        c.output.display(),
                        esc(&c.subject),
                        c.serial,
                        c.not_after
                    );
                }
            }
            Ok(0)
        }
        CsrCmd::Show { input, json } => {
            let info = csr::inspect(&CsrFile::read(&input)?)?;
            if json {
                print_json(&info)?;
            } else {
                println!("file:       {}", info.file.display());
                println!("subject:    {}", esc(&info.subject));
                match &info.key_unsupported {
                    None => println!("key:        {}", info.key),
                    Some(why) => println!("key:        {} (not certifiable: {why})", info.key),
                }
                for san in &info.subject_alt_names {
                    println!("SAN:        {}", esc(san));
                }
                for e in &info.requested_extensions {
                    println!(
                        "requests:   {}{}: {}{}",
                        e.name,
                        if e.critical { " (critical)" } else { "" },
                        esc(&e.value),
                        if e.copied { "" } else { " [not copied]" }
                    );
                }
                match &info.signature_error {
                    None => println!("signature:  {} valid", info.signature_algorithm),
                    Some(e) => println!("signature:  {} INVALID: {e}", info.signature_algorithm),
                }
                println!("sha256:     {}", info.sha256);
            }
            Ok(if info.signature_valid { 0 } else { 1 })
        }
    }
}
