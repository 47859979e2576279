use std::path::PathBuf;

use clap::Args;
use pki_signer::resign::{self, Options, Status};
use pki_signer::Result;

use super::{print_json, signing_time};

#[derive(Args)]
pub(super) struct ResignArgs {
    /// Signing plan written by the build (`pe sign --plan`, `guestos sign --plan`;
    /// JSON lines or a JSON array).
    #[arg(long, value_name = "PLAN.json")]
    plan: PathBuf,
    /// Production keys per role: {"ROLE": {"key": FILE|pkcs11:URI, "cert": FILE|pkcs11:URI,
    /// "chain": FILE, "trust": [ROOT.cert]}, "trust": [ROOT.cert]}.
    #[arg(long, value_name = "KEYS.json")]
    keys: PathBuf,
    /// Write the re-signed files here (same names) and leave the artifacts as they are.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Check everything (digests, keys, trust) and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// A development PKI directory production keys must not chain to (besides the
    /// PKIs the plan names); repeatable.
    #[arg(long, value_name = "DIR")]
    dev_pki: Vec<PathBuf>,
    /// Signing time attribute of new PE signatures (RFC 3339); default SOURCE_DATE_EPOCH, else none.
    #[arg(long, value_name = "TIME")]
    signing_time: Option<String>,
    #[arg(long)]
    json: bool,
}

pub(super) fn run(a: ResignArgs) -> Result<i32> {
    let report = resign::run(&Options {
        plan: a.plan,
        keys: a.keys,
        out_dir: a.out_dir,
        dry_run: a.dry_run,
        dev_pki: a.dev_pki,
        signing_time: signing_time(a.signing_time.as_deref())?,
    })?;
    for w in &report.warnings {
        eprintln!("pki-signer: warning: {w}");
    }
    if a.json {
        print_json(&report)?;
    } else {
        for r in &report.artifacts {
            let digests = match (&r.sha256_old, &r.sha256_new) {
                (Some(o), Some(n)) => format!(" sha256 {o} -> {n}"),
                (Some(o), None) => format!(" sha256 {o}"),
                (None, Some(n)) => format!(" sha256 {n}"),
                (None, None) => String::new(),
            };
            let to = if r.output != r.artifact {
                format!(" -> {}", r.output.display())
            } else {
                String::new()
            };
            let why = match (r.status, &r.reason) {
                (Status::Failed, Some(e)) => {
                    // Most reasons start with the artifact's own path, shown already.
                    let own = format!("{}: ", r.artifact.display());
                    format!(": {}", e.strip_prefix(&own).unwrap_or(e))
                }
                (_, Some(n)) => format!(" ({n})"),
                _ => format!(" by '{}'", r.signer.as_deref().unwrap_or("?")),
            };
            println!(
                "{:<12} {} {}{to}{digests}{why}",
                r.status.as_str(),
                r.kind.as_str(),
                r.artifact.display()
            );
        }
        println!(
            "{}{} {}, {} skipped, {} failed ({} artifacts)",
            if report.dry_run {
                "dry run, nothing written: "
            } else {
                ""
            },
            report.resigned,
            if report.dry_run {
                "to re-sign"
            } else {
                "resigned"
            },
            report.skipped,
            report.failed,
            report.artifacts.len()
        );
    }
    if !report.ok {
        let first = report
            .artifacts
            .iter()
            .find(|r| r.status == Status::Failed)
            .and_then(|r| r.reason.clone())
            .unwrap_or_default();
        eprintln!(
            "pki-signer: error: {} of {} artifacts not re-signed; first: {first}",
            report.failed,
            report.artifacts.len()
        );
    }
    Ok(report.exit_code())
}
