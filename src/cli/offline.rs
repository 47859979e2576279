use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Subcommand;
use pki_signer::csr::Profile;
use pki_signer::efivar::{EfiTime, SecureVar};
use pki_signer::fsutil;
use pki_signer::image::Existing;
use pki_signer::offline::{self, Artifact, Kind, Status};
use pki_signer::text::escape_for_terminal as esc;
use pki_signer::{Error, Result};

use super::{print_json, signing_time};

#[derive(Subcommand)]
pub(super) enum OfflineCmd {
    /// Build host: write what must be signed (no artifact leaves the host).
    Request {
        /// Artifacts: PE images (kernels, UKIs, EFI apps), GuestOS NAME.conf, device NAME.csr.
        artifacts: Vec<PathBuf>,
        /// Also every artifact of this signing plan (`pe sign --plan`, `guestos sign --plan`);
        /// the build's own signatures are dropped when completing.
        #[arg(long, value_name = "PLAN.json")]
        plan: Option<PathBuf>,
        /// An EFI variable update: VAR=FILE.esl (VAR+=FILE.esl appends); completes to FILE.auth.
        #[arg(long, value_name = "VAR=FILE.esl")]
        efivar: Vec<String>,
        /// Production certificates per role (KEYS.json as `resign` reads it; only "cert",
        /// "chain" and "trust" are read here, keys are never opened).
        #[arg(long, value_name = "KEYS.json")]
        keys: PathBuf,
        /// The role of a kind: pe=ROLE, guestos=ROLE, csr=ROLE, efivar=ROLE (defaults
        /// ssig_subca, ssig_cml, device_subca, and PK for PK/KEK, KEK for db/dbx).
        #[arg(long, value_name = "KIND=ROLE")]
        role: Vec<String>,
        /// PE images already signed: keep their signatures and add ours.
        #[arg(long, conflicts_with = "replace")]
        append: bool,
        /// PE images already signed: drop their signatures.
        #[arg(long)]
        replace: bool,
        /// signingTime of PE signatures (RFC 3339); default SOURCE_DATE_EPOCH, else none.
        #[arg(long, value_name = "TIME")]
        signing_time: Option<String>,
        /// EFI_TIME of variable updates ("YYYY-MM-DD HH:MM:SS"); default SOURCE_DATE_EPOCH, else now.
        #[arg(long, value_name = "TIME")]
        time: Option<String>,
        #[arg(short = 'o', long = "output", value_name = "REQUEST.json")]
        output: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Signing host: check a request, show what will be signed, sign it in one login.
    Sign {
        request: PathBuf,
        /// Production keys per role (files or pkcs11: URIs), as `resign` reads them.
        #[arg(long, value_name = "KEYS.json")]
        keys: PathBuf,
        #[arg(short = 'o', long = "output", value_name = "RESPONSE.json")]
        output: PathBuf,
        /// Sign without asking (needed when stdin is not a terminal).
        #[arg(long)]
        yes: bool,
        /// csr items: validity of issued certificates in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// csr items: golioth, gyroidos or a FILE.json profile (decided here, not by the request).
        #[arg(long)]
        profile: Option<String>,
        /// csr items: the project slug of the golioth profile.
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Build host: attach the response's signatures, verify, write each artifact.
    Complete {
        response: PathBuf,
        /// The request this host wrote: the response must answer exactly it.
        #[arg(long, value_name = "REQUEST.json")]
        request: Option<PathBuf>,
        /// Write the completed artifacts here instead of in place.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// Verify against these anchors instead of the request's.
        #[arg(long, value_name = "CERT")]
        trust: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

fn parse_kind(s: &str) -> Option<Kind> {
    match s {
        "pe" => Some(Kind::Pe),
        "efivar" => Some(Kind::Efivar),
        "guestos" => Some(Kind::Guestos),
        "csr" => Some(Kind::Csr),
        _ => None,
    }
}

fn kind_of(p: &std::path::Path) -> Result<Kind> {
    match p.extension().and_then(|e| e.to_str()) {
        Some("conf") => Ok(Kind::Guestos),
        Some("csr") => Ok(Kind::Csr),
        Some("esl") => Err(Error::Usage(format!(
            "{}: give signature lists as --efivar VAR={}",
            p.display(),
            p.display()
        ))),
        _ => Ok(Kind::Pe),
    }
}

fn counts(c: &std::collections::BTreeMap<Kind, usize>) -> String {
    c.iter()
        .map(|(k, n)| format!("{n} {}", k.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn run(cmd: OfflineCmd) -> Result<i32> {
    match cmd {
        OfflineCmd::Request {
            artifacts,
            plan,
            efivar,
            keys,
            role,
            append,
            replace,
            signing_time: st,
            time,
            output,
            json,
        } => {
            let mut roles = std::collections::BTreeMap::new();
            for r in &role {
                let (k, v) = r
                    .split_once('=')
                    .and_then(|(k, v)| Some((parse_kind(k)?, v)))
                    .ok_or_else(|| {
                        Error::Usage(format!(
                            "--role '{r}': want KIND=ROLE with KIND pe, guestos, csr or efivar"
                        ))
                    })?;
                roles.insert(k, v.to_string());
            }
            let role_for = |k: Kind, var| {
                roles
                    .get(&k)
                    .cloned()
                    .unwrap_or_else(|| k.default_role(var).to_string())
            };
            let mut list = vec![];
            if let Some(p) = &plan {
                let mut from = offline::artifacts_from_plan(p)?;
                for a in &mut from {
                    if let Some(r) = roles.get(&a.kind) {
                        a.role = r.clone();
                    }
                }
                list.extend(from);
            }
            for a in &artifacts {
                let k = kind_of(a)?;
                list.push(Artifact::new(k, a, &role_for(k, None)));
            }
            for e in &efivar {
                let bad = || {
                    Error::Usage(format!("--efivar '{e}': want VAR=FILE.esl or VAR+=FILE.esl, VAR one of PK, KEK, db, dbx"))
                };
                let (v, file) = e.split_once('=').ok_or_else(bad)?;
                let (v, add) = match v.strip_suffix('+') {
                    Some(v) => (v, true),
                    None => (v, false),
                };
                let var = SecureVar::ALL
                    .into_iter()
                    .find(|x| x.name() == v)
                    .ok_or_else(bad)?;
                let mut a = Artifact::new(
                    Kind::Efivar,
                    std::path::Path::new(file),
                    &role_for(Kind::Efivar, Some(var)),
                );
                a.var = Some((var, add));
                list.push(a);
            }
            let efi_time = match time {
                Some(t) => EfiTime::parse(&t).map_err(|e| Error::Usage(format!("--time {e}")))?,
                None => EfiTime::from_env_or(time::OffsetDateTime::now_utc())?,
            };
            let req = offline::request(
                &list,
                &offline::RequestOptions {
                    keys,
                    signing_time: signing_time(st.as_deref())?,
                    existing: if append {
                        Existing::Append
                    } else if replace {
                        Existing::Replace
                    } else {
                        Existing::Refuse
                    },
                    efi_time,
                },
            )?;
            let bytes = offline::to_json(&req)?;
            fsutil::write_atomic(&output, &bytes, fsutil::PUBLIC_MODE)?;
            let sha = offline::request_sha256(&req);
            if json {
                print_json(&serde_json::json!({
                    "request": output,
                    "request_sha256": sha,
                    "items": req.items.len(),
                    "bytes": bytes.len(),
                }))?;
            } else {
                let mut by: std::collections::BTreeMap<Kind, usize> = Default::default();
                for i in &req.items {
                    *by.entry(i.kind).or_insert(0) += 1;
                }
                println!(
                    "wrote {}: {} item(s) ({}), {} bytes, request SHA-256 {sha}",
                    output.display(),
                    req.items.len(),
                    counts(&by),
                    bytes.len()
                );
            }
            Ok(0)
        }
        OfflineCmd::Sign {
            request,
            keys,
            output,
            yes,
            days,
            profile,
            project,
            json,
        } => {
            let csr_profile = match (profile.as_deref(), project) {
                (None, None) => None,
                (Some("golioth"), Some(project)) => Some(Profile::Golioth { project }),
                (Some("golioth"), None) => {
                    return Err(Error::Usage(
                        "--profile golioth needs --project SLUG".into(),
                    ))
                }
                (Some("gyroidos"), None) => Some(Profile::Gyroidos),
                (Some(f), None) => Some(Profile::load(std::path::Path::new(f))?),
                (_, Some(_)) => {
                    return Err(Error::Usage("--project goes with --profile golioth".into()))
                }
            };
            let signing = offline::prepare(
                &request,
                &offline::SignOptions {
                    keys,
                    csr_days: days,
                    csr_profile,
                },
            )?;
            if !yes && !std::io::stdin().is_terminal() {
                return Err(Error::Usage(
                    "not asking for confirmation without a terminal: pass --yes to sign".into(),
                ));
            }
            let sum = signing.summary();
            // The summary goes to stderr, so that stdout stays --json's.
            eprintln!(
                "{}: {} item(s), request SHA-256 {}",
                request.display(),
                sum.items,
                sum.request_sha256
            );
            for r in &sum.roles {
                eprintln!(
                    "  role {}: {} with '{}' ({}), certificate SHA-256 {}, public key SHA-256 {}, key {}",
                    r.role,
                    counts(&r.counts),
                    esc(&r.subject),
                    r.key_type,
                    r.cert_sha256,
                    r.key_sha256,
                    esc(&r.key)
                );
            }
            for k in &sum.pcr_keys {
                eprintln!(
                    "  PCR key {}: {} policies of {} UKI(s), {}, public key SHA-256 (pkfp) {}, key {}",
                    k.name,
                    k.policies,
                    k.ukis,
                    k.key_type,
                    k.key_sha256,
                    esc(&k.key)
                );
            }
            if !yes {
                eprint!("sign these {} item(s)? [y/N] ", sum.items);
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .map_err(|e| Error::Usage(format!("stdin: {e}")))?;
                if !matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
                    return Err(Error::Usage("not confirmed: nothing signed".into()));
                }
            }
            let t0 = std::time::Instant::now();
            let resp = signing.sign()?;
            let secs = t0.elapsed().as_secs_f64();
            fsutil::write_atomic(&output, &offline::to_json(&resp)?, fsutil::PUBLIC_MODE)?;
            if json {
                print_json(&serde_json::json!({
                    "response": output,
                    "request_sha256": resp.request_sha256,
                    "summary": sum,
                    "seconds": secs,
                }))?;
            } else {
                println!(
                    "wrote {}: {} signature(s) in {secs:.3} s",
                    output.display(),
                    resp.results.len()
                );
            }
            Ok(0)
        }
        OfflineCmd::Complete {
            response,
            request,
            out_dir,
            trust,
            json,
        } => {
            let report = offline::complete(&offline::CompleteOptions {
                response,
                request,
                out_dir,
                trust,
            })?;
            if json {
                print_json(&report)?;
            } else {
                for i in &report.items {
                    println!(
                        "{:<17} {:<7} {} -> {}",
                        match i.status {
                            Status::Completed => "completed",
                            Status::AlreadyComplete => "already-complete",
                        },
                        i.kind.as_str(),
                        i.artifact.display(),
                        i.outputs
                            .iter()
                            .map(|o| o.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                println!(
                    "{} completed, {} already complete",
                    report.completed, report.already_complete
                );
            }
            Ok(0)
        }
    }
}
