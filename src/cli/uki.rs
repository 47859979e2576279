use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use pki_signer::identity::Identity;
use pki_signer::text::escape_for_terminal as esc;
use pki_signer::uki::{self, build, pcr};
use pki_signer::{fsutil, plan, Error, Result};

use super::{print_json, signing_time, KeyArgs};

/// The parts of a UKI.
#[derive(Args, Clone, Debug)]
pub(super) struct PartArgs {
    /// Kernel image [.linux].
    #[arg(long, value_name = "FILE")]
    linux: Option<PathBuf>,
    /// Initrd [.initrd]; repeatable: concatenated, each padded to 4 bytes.
    #[arg(long, value_name = "FILE")]
    initrd: Vec<PathBuf>,
    /// Kernel command line [.cmdline], as given.
    #[arg(long, value_name = "TEXT", conflicts_with = "cmdline_file")]
    cmdline: Option<String>,
    /// Kernel command line from a file [.cmdline], byte for byte.
    #[arg(long, value_name = "FILE")]
    cmdline_file: Option<PathBuf>,
    /// os-release file [.osrel].
    #[arg(long, value_name = "FILE")]
    os_release: Option<PathBuf>,
    /// Kernel release, `uname -r` [.uname].
    #[arg(long, value_name = "TEXT")]
    uname: Option<String>,
    /// Splash image, BMP [.splash].
    #[arg(long, value_name = "FILE")]
    splash: Option<PathBuf>,
    /// Devicetree blob [.dtb].
    #[arg(long, value_name = "FILE")]
    dtb: Option<PathBuf>,
    /// SBAT CSV lines to add to the stub's .sbat.
    #[arg(long, value_name = "FILE")]
    sbat: Option<PathBuf>,
    /// CPU microcode, an early cpio the stub (256 and later) puts before the initrds [.ucode].
    #[arg(long, value_name = "FILE")]
    microcode: Option<PathBuf>,
    /// systemd-stub to build on (its version decides what is measured).
    /// Default: /usr/lib/systemd/boot/efi/linuxx64.efi.stub.
    #[arg(long, value_name = "FILE")]
    stub: Option<PathBuf>,
}

impl PartArgs {
    fn any(&self) -> bool {
        self.linux.is_some()
            || !self.initrd.is_empty()
            || self.cmdline.is_some()
            || self.cmdline_file.is_some()
            || self.os_release.is_some()
            || self.uname.is_some()
            || self.splash.is_some()
            || self.dtb.is_some()
            || self.sbat.is_some()
            || self.microcode.is_some()
    }

    fn inputs(&self, pcrpkey: Option<PathBuf>) -> Result<build::Inputs> {
        let cmdline = match (&self.cmdline, &self.cmdline_file) {
            (Some(s), _) => Some(s.clone().into_bytes()),
            (None, Some(f)) => Some(fsutil::read_input(f, fsutil::InputKind::UkiPart)?),
            (None, None) => None,
        };
        Ok(build::Inputs {
            linux: self.linux.clone(),
            initrds: self.initrd.clone(),
            cmdline,
            os_release: self.os_release.clone(),
            uname: self.uname.clone(),
            splash: self.splash.clone(),
            dtb: self.dtb.clone(),
            pcrpkey,
            sbat: self.sbat.clone(),
            microcode: self.microcode.clone(),
        })
    }

    fn stub(&self) -> Result<PathBuf> {
        match &self.stub {
            Some(s) => Ok(s.clone()),
            None => uki::default_stub(),
        }
    }
}

/// Phases and banks of the PCR 11 predictions.
#[derive(Args, Clone, Debug)]
pub(super) struct PcrArgs {
    /// Boot phase paths to predict/sign, e.g. enter-initrd:leave-initrd (comma or space
    /// separated, repeatable). Default: enter-initrd, enter-initrd:leave-initrd,
    /// enter-initrd:leave-initrd:sysinit, enter-initrd:leave-initrd:sysinit:ready.
    #[arg(long, value_name = "PHASES")]
    phases: Vec<String>,
    /// PCR banks: sha1, sha256, sha384, sha512 (comma separated, repeatable).
    /// Default: build sha256; measure all four, as systemd-measure.
    #[arg(long, value_name = "BANKS")]
    pcr_banks: Vec<String>,
}

impl PcrArgs {
    fn resolve(&self, default: &[pcr::Bank]) -> Result<(Vec<pcr::Bank>, Vec<String>)> {
        let mut banks = pcr::parse_banks(&self.pcr_banks)?;
        if banks.is_empty() {
            banks = default.to_vec();
        }
        Ok((banks, pcr::parse_phases(&self.phases)?))
    }
}

#[derive(Subcommand)]
pub(super) enum UkiCmd {
    /// Build a UKI from a systemd stub and its parts, sign the PCR 11 policy into .pcrsig
    /// and Authenticode-sign the result.
    Build {
        #[command(flatten)]
        parts: Box<PartArgs>,
        /// The signed UKI to write.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
        /// Sign the PCR policy with the PKI's PCR key (tpm2-pcr: tpm2-pcr-private.pem, or
        /// its token key after pki init --hsm), from --dir.
        #[arg(long, value_name = "ROLE", conflicts_with = "pcr_key")]
        pcr_role: Option<String>,
        /// Sign the PCR policy with this RSA key: a PEM file or a pkcs11: URI.
        #[arg(long, value_name = "KEY")]
        pcr_key: Option<PathBuf>,
        #[command(flatten)]
        pcr: PcrArgs,
        /// Signing time attribute (RFC 3339); default SOURCE_DATE_EPOCH, else none.
        #[arg(long, value_name = "TIME")]
        signing_time: Option<String>,
        /// Append a record of the UKI to this signing plan (JSON lines), for
        /// `pki-signer resign` and `offline request`. Safe when many builds append at once.
        #[arg(long, value_name = "FILE.json")]
        plan: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Predict PCR 11 per boot phase and bank, as systemd-measure calculate does: for a UKI,
    /// or for the UKI its parts would make.
    Measure {
        /// A UKI (else give its parts).
        uki: Option<PathBuf>,
        #[command(flatten)]
        parts: PartArgs,
        /// A PEM public key for .pcrpkey (parts only).
        #[arg(long, value_name = "FILE")]
        pcrpkey: Option<PathBuf>,
        #[command(flatten)]
        pcr: PcrArgs,
        #[arg(long)]
        json: bool,
    },
    /// List a UKI's sections and check .pcrsig against .pcrpkey (exit 1 if it fails).
    Show {
        uki: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(cmd: UkiCmd) -> Result<i32> {
    match cmd {
        UkiCmd::Build {
            parts,
            output,
            key,
            pcr_role,
            pcr_key,
            pcr,
            signing_time: st,
            plan: plan_file,
            json,
        } => {
            if parts.linux.is_none() {
                return Err(Error::Usage("uki build needs --linux".into()));
            }
            if parts.os_release.is_none() {
                return Err(Error::Usage("uki build needs --os-release".into()));
            }
            if parts.cmdline.is_none() && parts.cmdline_file.is_none() {
                return Err(Error::Usage(
                    "uki build needs --cmdline or --cmdline-file".into(),
                ));
            }
            let (banks, phases) = pcr.resolve(&[pcr::Bank::Sha256])?;
            let inputs = parts.inputs(None)?;
            let stub = parts.stub()?;
            let st = signing_time(st.as_deref())?;
            let pcr_from_role = pcr_role.is_some();
            // Both keys first: a wrong key fails before anything is read.
            let identity = Identity::load(&key.spec())?;
            let pcr_signer = if pcr_role.is_some() || pcr_key.is_some() {
                Some(uki::load_pcr_key(&uki::PcrKeySpec {
                    role: pcr_role,
                    dir: key.dir.clone(),
                    key: pcr_key,
                    key_pass_file: key.key_pass_file.clone(),
                })?)
            } else {
                None
            };
            let stub_before = plan_file
                .as_ref()
                .map(|_| plan::sha256_file(&stub))
                .transpose()?;
            let report = build::build(&build::BuildOptions {
                inputs,
                stub: stub.clone(),
                output: output.clone(),
                identity: &identity,
                pcr: pcr_signer.as_deref().map(|k| build::PcrSigning {
                    key: k,
                    banks: banks.clone(),
                    phases: phases.clone(),
                }),
                banks,
                phases,
                signing_time: st,
            })?;
            if let (Some(plan_file), Some(before)) = (&plan_file, stub_before) {
                record(
                    plan_file,
                    &key,
                    pcr_from_role,
                    &stub,
                    &report,
                    before,
                    &identity,
                )?;
            }
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "built {} on systemd-stub {} (Authenticode sha256 {}{})",
                    esc(&report.output.display().to_string()),
                    esc(&report.stub_version.version),
                    report.digest,
                    if report.pcr_key_fingerprint.is_some() {
                        ", PCR policy signed"
                    } else {
                        ""
                    }
                );
                if let (Some(u), None) = (&report.uname, &parts.uname) {
                    println!("  .uname {} (from the kernel)", esc(u));
                }
                print_predictions(&report.pcr);
            }
            Ok(0)
        }
        UkiCmd::Measure {
            uki: file,
            parts,
            pcrpkey,
            pcr,
            json,
        } => {
            let (banks, phases) = pcr.resolve(&pcr::Bank::ALL)?;
            let report = match file {
                Some(f) => {
                    if parts.any() || pcrpkey.is_some() {
                        return Err(Error::Usage(
                            "give a UKI or its parts (--linux ...), not both".into(),
                        ));
                    }
                    uki::measure_uki(&f, &banks, &phases)?
                }
                None => {
                    if parts.linux.is_none() {
                        return Err(Error::Usage(
                            "uki measure needs a UKI, or --linux and the other parts".into(),
                        ));
                    }
                    let stub = parts.stub()?;
                    uki::measure_inputs(&parts.inputs(pcrpkey)?, &stub, &banks, &phases)?
                }
            };
            if json {
                print_json(&report.pcr)?;
            } else {
                print_predictions(&report.pcr);
            }
            Ok(0)
        }
        UkiCmd::Show { uki: file, json } => {
            let r = uki::show(&file)?;
            if json {
                print_json(&r)?;
            } else {
                println!("{}", esc(&r.file.display().to_string()));
                match &r.stub_version {
                    Some(v) => println!("  stub: systemd-stub {}", esc(&v.version)),
                    None => println!("  stub: unknown (no systemd-stub .sdmagic)"),
                }
                for s in &r.sections {
                    println!(
                        "  {:<9} va {:#010x} size {:>10}{}",
                        esc(&s.name),
                        s.virtual_address,
                        s.virtual_size,
                        match s.measured {
                            Some(true) => "  measured (PCR 11)",
                            _ => "",
                        }
                    );
                }
                if let Some(fp) = &r.pcrpkey_fingerprint {
                    println!("  .pcrpkey fingerprint {fp}");
                }
                for p in &r.policies {
                    println!(
                        "  .pcrsig {} {}: {}{}",
                        p.bank,
                        p.phase.as_deref().unwrap_or("(phase not predicted)"),
                        if p.key_matches && p.signature_valid {
                            "signature valid"
                        } else {
                            "FAILED"
                        },
                        if p.problems.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", esc(&p.problems.join("; ")))
                        }
                    );
                }
                for p in &r.problems {
                    println!("  problem: {}", esc(p));
                }
            }
            if r.ok {
                Ok(0)
            } else {
                if !json {
                    eprintln!(
                        "pki-signer: error: {}: .pcrsig does not verify against .pcrpkey",
                        esc(&r.file.display().to_string())
                    );
                }
                Ok(1)
            }
        }
    }
}

/// The built UKI's record in the signing plan: a `uki` record when its PCR
/// policy is signed (`resign` then checks which key signed it), else `pe`.
/// Its PKI directory is the signing role's, or the PCR role's, so `resign`
/// knows the development PKI either came from.
fn record(
    plan_file: &Path,
    key: &KeyArgs,
    pcr_from_role: bool,
    stub: &Path,
    report: &build::BuildReport,
    stub_sha256: String,
    identity: &Identity,
) -> Result<()> {
    let kind = match report.pcr_key_fingerprint {
        Some(_) => plan::Kind::Uki,
        None => plan::Kind::Pe,
    };
    let pki = (key.role.is_some() || pcr_from_role).then_some(key.dir.as_path());
    let mut rec = plan::Record::signed(
        kind,
        stub,
        &report.output,
        key.role.as_deref(),
        pki,
        stub_sha256,
        &identity.cert,
    )?;
    rec.authenticode_sha256 = Some(report.digest.clone());
    rec.pcr_key_fingerprint = report.pcr_key_fingerprint.clone();
    plan::append(plan_file, &[rec])
}

/// systemd-measure calculate's text form.
fn print_predictions(p: &pcr::Predictions) {
    let phases: Vec<String> = p
        .values()
        .next()
        .map(|v| v.iter().map(|e| e.phase.clone()).collect())
        .unwrap_or_default();
    for (i, phase) in phases.iter().enumerate() {
        println!("# PCR[11] Phase <{phase}>");
        for (bank, v) in p {
            if let Some(e) = v.get(i) {
                println!("11:{bank}={}", e.hash);
            }
        }
    }
}
