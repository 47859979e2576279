use std::path::PathBuf;

use clap::Subcommand;
use pki_signer::guestos::{self, GuestOsConfig, ImageDir, SignOptions, VerifyOptions};
use pki_signer::identity::Identity;
use pki_signer::text::escape_for_terminal as esc;
use pki_signer::{plan, x509, Error, Result};

use super::{print_json, signing_time, KeyArgs};

#[derive(Subcommand)]
pub(super) enum GuestosCmd {
    /// Sign NAME.conf: write NAME.sig (SHA-512 signature over the conf bytes) and
    /// NAME.cert (signer certificate, then its chain) next to it, as cml expects.
    Sign {
        /// GuestOS manifests (NAME.conf).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        confs: Vec<PathBuf>,
        /// Sign every *.conf under DIR.
        #[arg(long, value_name = "DIR")]
        all: Option<PathBuf>,
        #[command(flatten)]
        key: KeyArgs,
        /// First fill image_size, image_sha1 and image_sha2_256 of the mounts
        /// cml checks (SHARED, FLASH, OVERLAY_RO, SHARED_RW, STORE_ONLY) from
        /// NAME-VERSION/IMAGE_FILE.img under DIR, as cml finds them (NAME and
        /// VERSION from the conf's contents). A missing image is an error.
        #[arg(long, value_name = "DIR")]
        images: Option<PathBuf>,
        /// With --images: sign even if an image is missing (its values stay as they are).
        #[arg(long, requires = "images")]
        allow_missing_images: bool,
        /// With --images: write IMAGE_FILE.hash.img (dm-verity: SHA-256,
        /// 4096-byte blocks, superblock, salt derived from NAME-VERSION/IMAGE_FILE)
        /// next to each SHARED and SHARED_RW image and fill its
        /// image_verity_sha256 with the root hash, as cml opens it. Done
        /// without this flag for mounts that already have image_verity_sha256.
        #[arg(long, requires = "images")]
        verity: bool,
        /// Also write NAME.p7s, a detached CMS signature (SHA-512, DER).
        #[arg(long)]
        cms: bool,
        /// signingTime of the CMS signature (RFC 3339); default SOURCE_DATE_EPOCH, else none.
        #[arg(long, value_name = "TIME", requires = "cms")]
        signing_time: Option<String>,
        /// Append a record per signed manifest to this signing plan (JSON lines),
        /// for `pki-signer resign`. Safe when many builds append at once.
        #[arg(long, value_name = "FILE.json")]
        plan: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Verify NAME.conf against NAME.sig and NAME.cert as cml does.
    Verify {
        conf: PathBuf,
        /// Trusted root certificate(s), e.g. ssig_rootca.cert.
        #[arg(long, required = true, value_name = "ROOT.cert")]
        trust: Vec<PathBuf>,
        /// Also check sizes and hashes of the images under DIR.
        #[arg(long, value_name = "DIR")]
        images: Option<PathBuf>,
        /// Ignore certificate validity periods, as cml does before provisioning.
        #[arg(long)]
        no_check_time: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show what a GuestOS manifest says.
    Show {
        conf: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(cmd: GuestosCmd) -> Result<i32> {
    match cmd {
        GuestosCmd::Sign {
            confs,
            all,
            key,
            images,
            allow_missing_images,
            verity,
            cms,
            signing_time: st,
            plan: plan_file,
            json,
        } => {
            let st = signing_time(st.as_deref())?;
            let confs = match &all {
                Some(dir) => guestos::find_confs(dir)?,
                None => confs,
            };
            let dir = images.as_deref().map(ImageDir::scan).transpose()?;
            let id = Identity::load(&key.spec())?;
            let opts = SignOptions {
                images: dir.as_ref(),
                cms,
                signing_time: st,
                allow_missing_images,
                verity,
            };
            let recorder = plan::Recorder {
                plan: plan_file.as_deref(),
                kind: plan::Kind::Guestos,
                role: key.role.as_deref().map(|r| (r, key.dir.as_path())),
                signer_cert: &id.cert,
            };
            // Before signing: --images may rewrite the conf.
            let before = confs
                .iter()
                .map(|c| recorder.before(c))
                .collect::<Result<Vec<_>>>()?;
            let reports = guestos::sign(&confs, &id, &opts)?;
            recorder.finish(reports.iter().zip(before).map(|(r, b)| plan::Signed {
                artifact: &r.conf,
                output: &r.conf,
                sha256_before: b,
                authenticode_sha256: None,
                pcr_key_fingerprint: None,
            }))?;
            for r in &reports {
                for w in &r.warnings {
                    eprintln!("pki-signer: warning: {w}");
                }
                for f in r.images.iter().filter(|f| f.path.is_none()) {
                    eprintln!(
                        "pki-signer: warning: {}: {} ({}): no {}.img (--allow-missing-images); left as it was",
                        r.conf.display(),
                        f.mount,
                        f.mount_type,
                        f.image_file
                    );
                }
            }
            if json {
                print_json(&reports)?;
                return Ok(0);
            }
            for r in &reports {
                for f in &r.images {
                    if let (Some(p), Some(h)) = (&f.path, &f.hash) {
                        println!(
                            "{}: {} {} {} bytes sha256 {}{}{}",
                            r.conf.display(),
                            f.mount,
                            p.display(),
                            h.size,
                            h.sha256,
                            match &h.image_verity_sha256 {
                                Some(root) => format!(
                                    ", dm-verity root {root} ({})",
                                    guestos::verity_path(p).display()
                                ),
                                None => String::new(),
                            },
                            if f.changed { " (updated)" } else { "" }
                        );
                    }
                }
                let mut outs = vec![r.sig.display().to_string(), r.cert.display().to_string()];
                if let Some(p) = &r.p7s {
                    outs.push(p.display().to_string());
                }
                println!(
                    "signed {} ({} v{}) -> {} ({}, by '{}')",
                    r.conf.display(),
                    r.name,
                    r.version,
                    outs.join(", "),
                    r.scheme,
                    esc(&r.signer)
                );
            }
            Ok(0)
        }
        GuestosCmd::Verify {
            conf,
            trust,
            images,
            no_check_time,
            json,
        } => {
            let mut anchors = vec![];
            for t in &trust {
                anchors.extend(x509::read_certs(t)?);
            }
            let opts = VerifyOptions {
                trust: &anchors,
                images: images.as_deref(),
                check_time: !no_check_time,
            };
            let r = guestos::verify(&conf, &opts)?;
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "signature: {} by '{}': {}",
                    r.scheme.as_deref().unwrap_or("-"),
                    esc(&r.signer),
                    if r.signature_ok { "ok" } else { "BAD" }
                );
                println!(
                    "chain: {}: {}",
                    if r.chain.is_empty() {
                        "-".to_string()
                    } else {
                        esc(&r.chain.join(" <- "))
                    },
                    if r.chain_ok { "ok" } else { "BAD" }
                );
                for c in &r.images {
                    println!(
                        "image {} {}: {}",
                        c.mount,
                        c.path
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|| format!("{}.img", c.image_file)),
                        if c.ok {
                            format!(
                                "{} bytes, {} ok",
                                c.size.unwrap_or(0),
                                c.hash.unwrap_or("hash")
                            )
                        } else {
                            c.problems.join("; ")
                        }
                    );
                }
                if r.ok {
                    println!("{}: OK", conf.display());
                }
            }
            match r.problems.first() {
                None => Ok(0),
                Some(p) => Err(Error::Verify(if r.problems.len() > 1 {
                    format!("{p} (and {} more problems)", r.problems.len() - 1)
                } else {
                    p.clone()
                })),
            }
        }
        GuestosCmd::Show { conf, json } => {
            let m = GuestOsConfig::load(&conf)?;
            for w in &m.warnings {
                eprintln!("pki-signer: warning: {w}");
            }
            if let Some(p) = &m.cml_problem {
                eprintln!(
                    "pki-signer: warning: {}: cml would not load this conf: {}",
                    conf.display(),
                    esc(p)
                );
            }
            if json {
                print_json(&serde_json::json!({
                    "conf": conf,
                    "name": m.name,
                    "hardware": m.hardware,
                    "version": m.version,
                    "description": m.description,
                    "build_date": m.build_date,
                    "mounts": m.mounts,
                    "cml_loads": m.cml_problem.is_none(),
                    "cml_problem": m.cml_problem,
                }))?;
                return Ok(0);
            }
            println!(
                "{}: {} v{} ({})",
                conf.display(),
                esc(&m.name),
                m.version,
                esc(&m.hardware)
            );
            if let Some(d) = &m.description {
                println!("description: {}", esc(d));
            }
            if let Some(d) = &m.build_date {
                println!("build date: {}", esc(d));
            }
            for mt in &m.mounts {
                println!(
                    "{} {} -> {} ({}, {}){}",
                    mt.id,
                    mt.image_file,
                    mt.mount_point,
                    mt.fs_type,
                    mt.mount_type,
                    match (&mt.image_size, &mt.image_sha2_256) {
                        (Some(s), Some(h)) => format!(" {s} bytes sha256 {h}"),
                        (Some(s), None) => format!(" {s} bytes"),
                        _ if mt.has_image() => " (no size/hash yet)".into(),
                        _ => String::new(),
                    }
                );
            }
            Ok(0)
        }
    }
}
