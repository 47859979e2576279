use std::path::PathBuf;

use clap::{ArgGroup, Args, Subcommand};
use pki_signer::identity::Identity;
use pki_signer::image::{self, Existing, Output, Trust};
use pki_signer::pe::PeImage;
use pki_signer::text::escape_for_terminal as esc;
use pki_signer::{authenticode, plan, x509, Error, Result};

use super::{print_json, signing_time, KeyArgs};

#[derive(Subcommand)]
pub(super) enum PeCmd {
    /// Authenticode-sign images. With several inputs, use --out-dir or --in-place.
    Sign(SignArgs),
    /// Add a detached signature to an image.
    Attach {
        input: PathBuf,
        #[arg(long, value_name = "SIG.p7")]
        signature: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, conflicts_with = "replace")]
        append: bool,
        #[arg(long)]
        replace: bool,
    },
    /// Remove signatures (all, or the one at --index).
    Unsign {
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long)]
        index: Option<usize>,
    },
    /// Print the Authenticode SHA-256 of an image.
    Digest {
        input: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Verify signatures against certificates and/or UEFI db/dbx signature lists.
    Verify(VerifyArgs),
    /// Show sections, signatures, signers and digests.
    Show(ShowArgs),
}

fn existing(append: bool, replace: bool) -> Existing {
    if append {
        Existing::Append
    } else if replace {
        Existing::Replace
    } else {
        Existing::Refuse
    }
}

pub(super) fn run(cmd: PeCmd) -> Result<i32> {
    match cmd {
        PeCmd::Sign(a) => sign(a),
        PeCmd::Attach {
            input,
            signature,
            output,
            append,
            replace,
        } => {
            let r = image::attach(&input, &signature, &output, existing(append, replace))?;
            println!(
                "attached {} -> {} ({} signature(s))",
                signature.display(),
                r.output.display(),
                r.signatures_after
            );
            Ok(0)
        }
        PeCmd::Unsign {
            input,
            output,
            index,
        } => {
            let r = image::unsign(&input, &output, index)?;
            println!(
                "{} -> {}: {} of {} signature(s) left",
                r.input.display(),
                r.output.display(),
                r.signatures_after,
                r.signatures_before
            );
            Ok(0)
        }
        PeCmd::Digest { input, json } => {
            // As the file is now: what firmware computes for it and what pesign -h
            // prints. Signing an unaligned image pads it first; that digest is
            // the one a signature covers.
            let d = PeImage::open(&input)?.digest()?;
            let as_is = pki_signer::codec::hex(&d.sha256_unpadded);
            if json {
                print_json(
                    &serde_json::json!({ "file": input, "sha256": as_is, "sha256_when_signed": d.hex() }),
                )?;
            } else {
                println!("{as_is}  {}", input.display());
            }
            Ok(0)
        }
        PeCmd::Verify(a) => verify(a),
        PeCmd::Show(a) => show(a),
    }
}

#[derive(Args)]
#[command(group(ArgGroup::new("dest").required(true).args(["output", "out_dir", "in_place", "detached"])))]
pub(super) struct SignArgs {
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Signed image to write (one input).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Directory for the signed images (same file names), for many inputs.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Append the signature to the input file itself.
    #[arg(long)]
    in_place: bool,
    /// Write only the PKCS#7 signature (sbsign --detached compatible).
    #[arg(long, value_name = "SIG.p7")]
    detached: Option<PathBuf>,
    #[command(flatten)]
    key: KeyArgs,
    /// Keep existing signatures and add ours after them.
    #[arg(long, conflicts_with = "replace")]
    append: bool,
    /// Drop existing signatures.
    #[arg(long)]
    replace: bool,
    /// Signing time attribute (RFC 3339); default SOURCE_DATE_EPOCH, else none.
    #[arg(long, value_name = "TIME")]
    signing_time: Option<String>,
    /// Append a record per signed image to this signing plan (JSON lines),
    /// for `pki-signer resign`. Safe when many builds append at once.
    #[arg(long, value_name = "FILE.json", conflicts_with = "detached")]
    plan: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

fn sign(a: SignArgs) -> Result<i32> {
    let SignArgs {
        inputs,
        output,
        out_dir,
        in_place,
        detached,
        key,
        append,
        replace,
        signing_time: st,
        plan: plan_file,
        json,
    } = a;
    let st = signing_time(st.as_deref())?;
    if inputs.len() > 1 && (output.is_some() || detached.is_some()) {
        return Err(Error::Usage(
            "several inputs need --out-dir or --in-place".into(),
        ));
    }
    // The key is loaded and checked once for the whole batch.
    let id = Identity::load(&key.spec())?;
    for w in pki_signer::authenticode::signer_warnings(&id.cert) {
        eprintln!("pki-signer: warning: {w}");
    }
    let mut jobs = Vec::with_capacity(inputs.len());
    for input in &inputs {
        let output = if in_place {
            Output::InPlace
        } else if let Some(d) = &detached {
            Output::Detached(d.clone())
        } else if let Some(o) = &output {
            Output::File(o.clone())
        } else {
            let dir = out_dir.as_ref().expect("clap group");
            let name = input
                .file_name()
                .ok_or_else(|| Error::Usage(format!("{}: not a file", input.display())))?;
            Output::File(dir.join(name))
        };
        jobs.push(image::Job {
            input: input.clone(),
            output,
        });
    }
    let recorder = plan::Recorder {
        plan: plan_file.as_deref(),
        kind: plan::Kind::Pe,
        role: key.role.as_deref().map(|r| (r, key.dir.as_path())),
        signer_cert: &id.cert,
    };
    let done = image::sign_all(&jobs, &id, existing(append, replace), st, |input| {
        recorder.before(input)
    })?;
    recorder.finish(done.iter().map(|(r, before)| plan::Signed {
        artifact: &r.input,
        output: &r.output,
        sha256_before: before.clone(),
        authenticode_sha256: Some(r.digest.clone()),
        pcr_key_fingerprint: None,
    }))?;
    let reports: Vec<_> = done.into_iter().map(|(r, _)| r).collect();
    if !json {
        for r in &reports {
            println!(
                "signed {} -> {} (sha256 {})",
                r.input.display(),
                r.output.display(),
                r.digest
            );
        }
    }
    if json {
        print_json(&reports)?;
    }
    Ok(0)
}

#[derive(Args)]
pub(super) struct VerifyArgs {
    input: PathBuf,
    /// Trusted certificate (PEM/DER); repeatable.
    #[arg(long)]
    cert: Vec<PathBuf>,
    /// db signature list: X.509 and SHA-256 entries are trusted.
    #[arg(long)]
    db: Vec<PathBuf>,
    /// dbx signature list: X.509 and SHA-256 entries are revoked.
    #[arg(long)]
    dbx: Vec<PathBuf>,
    #[arg(long)]
    json: bool,
}

fn verify(a: VerifyArgs) -> Result<i32> {
    let VerifyArgs {
        input,
        cert,
        db,
        dbx,
        json,
    } = a;
    if cert.is_empty() && db.is_empty() {
        return Err(Error::Usage(
            "nothing to trust: give --cert CERT and/or --db DB.esl".into(),
        ));
    }
    let mut trust = Trust::default();
    for c in &cert {
        trust.add_cert_file(c)?;
    }
    for d in &db {
        trust.add_db(d)?;
    }
    for d in &dbx {
        trust.add_dbx(d)?;
    }
    let r = image::verify(&input, &trust)?;
    if json {
        print_json(&r)?;
    } else {
        for s in &r.signatures {
            let who = s.signer.as_deref().unwrap_or("unknown signer");
            let verdict = if s.revoked {
                "REVOKED".to_string()
            } else if s.valid && s.trusted_by.is_some() {
                format!("trusted via {}", s.trusted_by.as_deref().unwrap_or(""))
            } else if s.valid {
                "valid, untrusted".to_string()
            } else {
                "INVALID".to_string()
            };
            println!("signature {}: {}: {}", s.index, esc(who), esc(&verdict));
            for p in &s.problems {
                println!("  problem: {p}");
            }
        }
        if r.signatures.is_empty() {
            println!("no signatures");
        }
        if r.digest_in_db {
            println!("image digest {} is in db", r.digest);
        }
        if r.digest_revoked {
            println!("image digest {} is in dbx", r.digest);
        }
        println!(
            "{}: {}",
            input.display(),
            if r.ok {
                "Signature verification OK"
            } else {
                "Signature verification FAILED"
            }
        );
    }
    Ok(if r.ok { 0 } else { 1 })
}

#[derive(Args)]
pub(super) struct ShowArgs {
    input: PathBuf,
    #[arg(long)]
    json: bool,
}

fn show(a: ShowArgs) -> Result<i32> {
    let ShowArgs { input, json } = a;
    let img = PeImage::open(&input)?;
    let info = img.info();
    let d = img.digest()?;
    let mut sigs = vec![];
    for (i, c) in img.signatures()?.iter().enumerate() {
        let mut v = serde_json::json!({ "index": i, "offset": c.offset, "length": c.length, "revision": c.revision, "type": c.cert_type });
        if let Ok(s) = authenticode::parse(&c.data, &input) {
            v["digest_algorithm"] = s.digest_algorithm.clone().into();
            v["image_digest"] = pki_signer::codec::hex(&s.image_digest).into();
            v["signer"] = s
                .signer_cert
                .as_deref()
                .and_then(|c| x509::parse(c, &input).ok().map(|p| p.subject().to_string()))
                .into();
            v["issuer"] = s.signer_issuer.clone().into();
            v["signing_time"] = s.signing_time.clone().into();
            v["certificates"] = s.certs.len().into();
        }
        sigs.push(v);
    }
    if json {
        print_json(
            &serde_json::json!({ "file": input, "digest_sha256": d.hex(), "image": info, "signatures": sigs }),
        )?;
    } else {
        println!(
            "{}: {} PE{}, {} bytes, checksum 0x{:08x}",
            input.display(),
            info.machine,
            if info.pe32plus { "32+" } else { "32" },
            info.file_size,
            info.checksum
        );
        println!("authenticode sha256: {}", d.hex());
        println!("sections:");
        for s in &info.sections {
            println!(
                "  {:<10} vaddr 0x{:08x} vsize 0x{:08x} raw 0x{:08x}+0x{:x}",
                s.name, s.virtual_address, s.virtual_size, s.raw_offset, s.raw_size
            );
        }
        println!("signatures: {}", sigs.len());
        for s in &sigs {
            println!(
                "  [{}] signer: {}",
                s["index"],
                esc(s["signer"].as_str().unwrap_or("?"))
            );
            println!("      issuer: {}", esc(s["issuer"].as_str().unwrap_or("?")));
            println!(
                "      image digest: {} {}",
                s["digest_algorithm"].as_str().unwrap_or("?"),
                s["image_digest"].as_str().unwrap_or("?")
            );
            if let Some(t) = s["signing_time"].as_str() {
                println!("      signing time: {t}");
            }
        }
    }
    Ok(0)
}
