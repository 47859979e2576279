use pki_signer::pki::{self, InitOptions, InitPlan, Pki, Profile};
use pki_signer::text::escape_for_terminal as esc;
use pki_signer::{Error, Result};

use super::{print_json, PkiCmd};

pub(super) fn run(cmd: PkiCmd) -> Result<i32> {
    match cmd {
        PkiCmd::Init {
            dir,
            profile,
            key_type,
            uefi,
            hsm,
            revoke_dev,
            json,
        } => {
            let prof = match &profile {
                Some(p) => Profile::load(p)?,
                None => Profile::default(),
            };
            let plan = InitPlan::resolve(&prof, profile.as_deref(), key_type, uefi)?;
            let report = pki::init(&InitOptions {
                dir: dir.dir,
                plan,
                hsm,
                revoke_dev,
            })?;
            if json {
                print_json(&report)?;
            } else if report.status == "created" {
                println!(
                    "created PKI in {} ({} roles, {:.2}s)",
                    report.dir.display(),
                    report.roles.len(),
                    report.seconds
                );
                for r in &report.roles {
                    println!("  {:<16} {:<14} {}", r.role, r.key_type, esc(&r.subject));
                }
                if report.roles.iter().any(|r| r.key_uri.is_some()) {
                    println!(
                        "keys generated in the PKCS#11 token; their URIs are in {}",
                        report.dir.join(pki::MANIFEST).display()
                    );
                }
            } else {
                let note = report
                    .note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                println!("PKI already present in {}{note}", report.dir.display());
            }
            Ok(0)
        }
        PkiCmd::Export {
            dir,
            layout,
            out,
            json,
        } => {
            let r = pki_signer::layout::export(&dir.dir, layout.into(), &out)?;
            if json {
                print_json(&r)?;
            } else {
                println!("exported {} to {}", dir.dir.display(), r.dir.display());
                for f in &r.files {
                    println!(
                        "  {:<22} {}{}",
                        f.name,
                        f.from,
                        if f.private { " (private, 0600)" } else { "" }
                    );
                }
                for t in &r.token_keys {
                    println!("  {:<22} in a token: give {} instead", t.name, esc(&t.uri));
                }
            }
            Ok(0)
        }
        PkiCmd::Show { dir, json } => {
            let rows = pki::show(&Pki::open(&dir.dir)?)?;
            if json {
                print_json(&rows)?;
            } else {
                for r in rows {
                    println!("{} ({})", r.role, r.file.display());
                    println!("  subject:     {}", esc(&r.info.subject));
                    println!("  issuer:      {}", esc(&r.info.issuer));
                    println!(
                        "  key:         {}{}",
                        r.info.key,
                        if r.info.ca { ", CA" } else { "" }
                    );
                    println!("  sha256:      {}", r.info.fingerprint_sha256);
                    println!(
                        "  valid:       {} .. {}",
                        r.info.not_before, r.info.not_after
                    );
                }
            }
            Ok(0)
        }
        PkiCmd::Rotate { role, dir, json } => {
            let r = pki_signer::lifecycle::rotate(&dir.dir, &role)?;
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "rotated {} in {}: generation {} ({})",
                    r.role,
                    r.dir.display(),
                    r.generation,
                    esc(&r.subject)
                );
                println!("  sha256:      {}", r.fingerprint_sha256);
                println!(
                    "  predecessor: {} (generation {}, sha256 {})",
                    r.predecessor.files.cert,
                    r.predecessor.generation,
                    r.predecessor.fingerprint_sha256
                );
                for f in &r.refreshed {
                    println!("  refreshed:   {f} (enrolment of new devices)");
                }
                for (i, u) in r.updates.iter().enumerate() {
                    println!("  update {}:    {} ({})", i + 1, u.path, u.describe());
                }
                if !r.issued_by_predecessor.is_empty() {
                    println!(
                        "  note: still certified by the predecessor: {}; rotate them before its revocation reaches devices",
                        r.issued_by_predecessor.join(", ")
                    );
                }
            }
            Ok(0)
        }
        PkiCmd::Check {
            dir,
            at,
            key_pass_file,
            warn_days,
            json,
        } => {
            let pass = pki_signer::keys::key_password(key_pass_file.as_deref())?;
            let now = match at {
                None => time::OffsetDateTime::now_utc(),
                Some(t) => {
                    time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                        .map_err(|e| {
                            Error::Usage(format!(
                                "--at '{t}': {e} (want e.g. 2030-01-01T00:00:00Z)"
                            ))
                        })?
                }
            };
            let report = pki::check(
                &Pki::open(&dir.dir)?,
                now,
                pass.as_deref().map(|s| s.as_str()),
                warn_days,
            )?;
            if json {
                print_json(&report)?;
            } else {
                for it in &report.items {
                    let tag = if !it.ok {
                        "FAIL"
                    } else if !it.warnings.is_empty() {
                        "warn"
                    } else {
                        "ok"
                    };
                    println!("{tag:<5}{}", it.role);
                    for p in &it.problems {
                        println!("     problem: {p}");
                    }
                    for w in &it.warnings {
                        println!("     warning: {w}");
                    }
                    for n in &it.notes {
                        println!("     note: {n}");
                    }
                }
                let bad = report.items.iter().filter(|i| !i.ok).count();
                if report.ok {
                    println!(
                        "PKI in {}: OK ({} items)",
                        report.dir.display(),
                        report.items.len()
                    );
                } else {
                    println!(
                        "PKI in {}: {bad} of {} items FAILED",
                        report.dir.display(),
                        report.items.len()
                    );
                }
            }
            Ok(if report.ok { 0 } else { 1 })
        }
    }
}
