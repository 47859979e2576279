use std::path::{Path, PathBuf};

use clap::Subcommand;
use pki_signer::efivar::{self, EfiTime, Guid, SecureVar};
use pki_signer::fsutil::{self, InputKind, PUBLIC_MODE};
use pki_signer::identity::Identity;
use pki_signer::pe::PeImage;
use pki_signer::text::escape_for_terminal as esc;
use pki_signer::{pkcs7, sigalg, x509, Error, Result};

use super::{print_json, KeyArgs};

#[derive(Subcommand)]
pub(super) enum EfivarCmd {
    /// Build a signature list (ESL) from certificates and SHA-256 hashes,
    /// byte-identical to efitools' cert-to-efi-sig-list for certificates.
    Esl {
        /// Certificates (PEM or DER). The first certificate of each file becomes
        /// one signature list; the rest of a chain file is ignored.
        certs: Vec<PathBuf>,
        /// SHA-256 hash (64 hex digits) to add; repeatable.
        #[arg(long = "sha256", value_name = "HEX")]
        sha256: Vec<String>,
        /// EFI image whose Authenticode SHA-256 (as firmware computes it for
        /// this file) to add; repeatable.
        #[arg(long = "pe", value_name = "FILE.efi")]
        pe: Vec<PathBuf>,
        /// Signature owner GUID of every entry.
        #[arg(long, value_name = "GUID", value_parser = parse_guid)]
        owner: Guid,
        /// Signature list to write.
        #[arg(short, long, value_name = "OUT.esl")]
        output: PathBuf,
    },
    /// Sign a signature list as a time-based authenticated write of PK, KEK,
    /// db or dbx (EFI_VARIABLE_AUTHENTICATION_2, as efitools' sign-efi-sig-list).
    Auth {
        /// Signature list to sign (may be empty: that deletes the variable).
        #[arg(value_name = "IN.esl")]
        input: PathBuf,
        /// Variable the file updates: PK, KEK, db or dbx.
        #[arg(long, value_parser = parse_var)]
        var: SecureVar,
        /// Append to the variable instead of replacing it (APPEND_WRITE).
        #[arg(long)]
        append: bool,
        #[command(flatten)]
        key: KeyArgs,
        /// Timestamp "YYYY-MM-DD HH:MM:SS" (UTC); default SOURCE_DATE_EPOCH, else now.
        #[arg(long, value_name = "TIME")]
        time: Option<String>,
        /// Also take the entries of this signature list or published update
        /// (e.g. uefi.org's dbx .auth) that IN.esl does not hold; repeatable.
        #[arg(long, value_name = "FILE.auth|FILE.esl")]
        merge: Vec<PathBuf>,
        /// Authenticated variable to write: header, PKCS#7, then the list.
        #[arg(short, long, value_name = "OUT.auth")]
        output: PathBuf,
    },
    /// Show a signature list (.esl) or an authenticated variable (.auth).
    Show {
        input: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Check an .auth file as firmware would: signature over the update,
    /// signer trusted by --cert / --esl (PK updates may be self-signed by the
    /// PK they carry, as in setup mode). Exit 1 if it fails.
    Verify {
        #[arg(value_name = "FILE.auth")]
        input: PathBuf,
        /// The variable it must update (default: whichever its signature covers).
        #[arg(long, value_parser = parse_var)]
        var: Option<SecureVar>,
        /// It must be an append (with --var).
        #[arg(long, requires = "var")]
        append: bool,
        /// Trusted certificate (PEM/DER), e.g. PK.crt for KEK updates; repeatable.
        #[arg(long)]
        cert: Vec<PathBuf>,
        /// Signature list whose X.509 entries are trusted, e.g. KEK.esl for db updates.
        #[arg(long)]
        esl: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

fn parse_guid(s: &str) -> std::result::Result<Guid, String> {
    s.parse()
}

fn parse_var(s: &str) -> std::result::Result<SecureVar, String> {
    s.parse()
}

fn parse_sha256(s: &str) -> Result<[u8; 32]> {
    let t = s.trim();
    let bad = || Error::Usage(format!("--sha256 '{s}': want 64 hex digits"));
    if t.len() != 64 || !t.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

pub(super) fn run(cmd: EfivarCmd) -> Result<i32> {
    match cmd {
        EfivarCmd::Esl {
            certs,
            sha256,
            pe,
            owner,
            output,
        } => {
            let mut ders = vec![];
            for c in &certs {
                ders.push(x509::read_certs(c)?.remove(0));
            }
            let mut hashes: Vec<[u8; 32]> = vec![];
            for h in &sha256 {
                hashes.push(parse_sha256(h)?);
            }
            for p in &pe {
                hashes.push(PeImage::open(p)?.digest()?.sha256_unpadded);
            }
            // Firmware gains nothing from a hash listed twice.
            let mut seen = std::collections::HashSet::new();
            hashes.retain(|h| seen.insert(*h));
            if ders.is_empty() && hashes.is_empty() {
                return Err(Error::Usage(
                    "nothing to put in the list: give certificates, --sha256 or --pe".into(),
                ));
            }
            let esl = efivar::build_esl(owner, &ders, &hashes);
            fsutil::write_atomic(&output, &esl, PUBLIC_MODE)?;
            println!(
                "wrote {}: {} certificate(s), {} hash(es), owner {owner}",
                output.display(),
                ders.len(),
                hashes.len()
            );
            Ok(0)
        }
        EfivarCmd::Auth {
            input,
            var,
            append,
            key,
            time,
            merge,
            output,
        } => {
            let time = match time {
                Some(t) => EfiTime::parse(&t).map_err(|e| Error::Usage(format!("--time {e}")))?,
                None => EfiTime::from_env_or(time::OffsetDateTime::now_utc())?,
            };
            let mut data = fsutil::read_input(&input, InputKind::Esl)?;
            efivar::parse_esl(&data, &input)?;
            let mut merged = vec![];
            for m in &merge {
                let bytes = fsutil::read_input(m, InputKind::Esl)?;
                let lists = efivar::parse_lists(&efivar::lists_of_file(&bytes, m)?, m)?;
                let (d, added) = efivar::merge_lists(&data, &[lists], m)?;
                data = d;
                merged.push((m, added));
            }
            let entries = efivar::check_var_content(var, &data, &input)?;
            let id = Identity::load(&key.spec())?;
            if !id.signer.key_type().is_rsa() {
                eprintln!(
                    "pki-signer: note: the UEFI spec wants RSA-2048 keys for {var} updates; firmware may reject {}",
                    id.signer.key_type()
                );
            }
            let auth = efivar::sign_auth(
                var,
                append,
                time,
                &data,
                id.signer.as_ref(),
                &id.cert,
                &id.chain,
            )?;
            fsutil::write_atomic(&output, &auth, PUBLIC_MODE)?;
            for (m, added) in merged {
                println!(
                    "merged {added} entr{} of {} not already listed",
                    if added == 1 { "y" } else { "ies" },
                    m.display()
                );
            }
            let signer = x509::parse(&id.cert, &input)?.subject().to_string();
            println!(
                "wrote {}: {}{var} update, {} entr{}, time {time}, signed by {signer}",
                output.display(),
                if append { "append to " } else { "" },
                entries.len(),
                if entries.len() == 1 { "y" } else { "ies" }
            );
            Ok(0)
        }
        EfivarCmd::Show { input, json } => {
            let kind = if input.extension().is_some_and(|e| e == "auth") {
                InputKind::Auth
            } else {
                InputKind::Esl
            };
            let bytes = fsutil::read_input(&input, kind)?;
            let report = show(&bytes, &input)?;
            if json {
                print_json(&report)?;
            } else {
                print_show(&input, &report);
            }
            Ok(0)
        }
        EfivarCmd::Verify {
            input,
            var,
            append,
            cert,
            esl,
            json,
        } => {
            let mut anchors = vec![];
            for c in &cert {
                anchors.extend(x509::read_certs(c)?);
            }
            for e in &esl {
                let bytes = fsutil::read_input(e, InputKind::Esl)?;
                anchors.extend(
                    efivar::parse_esl(&bytes, e)?
                        .into_iter()
                        .filter(|x| x.is_x509())
                        .map(|x| x.data),
                );
            }
            let want = var.map(|v| (v, append));
            let bytes = fsutil::read_input(&input, InputKind::Auth)?;
            let r = efivar::verify_auth(&bytes, &input, want, &anchors)?;
            if json {
                print_json(&r)?;
            } else {
                if let Some(v) = &r.var {
                    println!(
                        "{}: {}{v} update, time {}",
                        input.display(),
                        if r.append { "append to " } else { "" },
                        r.time
                    );
                }
                if let Some(s) = &r.signer {
                    println!("signer: {}", esc(s));
                }
                if let Some(t) = &r.trusted_by {
                    println!("trusted via: {}", esc(t));
                }
                for w in &r.warnings {
                    println!("warning: {w}");
                }
                for p in &r.problems {
                    println!("problem: {p}");
                }
                println!(
                    "{}: {}",
                    input.display(),
                    if r.ok {
                        "Verification OK"
                    } else {
                        "Verification FAILED"
                    }
                );
            }
            Ok(if r.ok { 0 } else { 1 })
        }
    }
}

#[derive(serde::Serialize)]
struct SignerReport {
    subject: String,
    issuer: String,
    fingerprint_sha256: String,
}

#[derive(serde::Serialize)]
struct AuthReport {
    time: String,
    time_reserved_fields_zero: bool,
    /// The variable the signature verifies for, or None.
    var: Option<String>,
    vendor_guid: Option<Guid>,
    append: Option<bool>,
    attributes: Option<String>,
    attribute_names: Vec<&'static str>,
    signature_valid: bool,
    signer: Option<SignerReport>,
    signer_id: String,
    digest_algorithm: String,
    signature_algorithm: String,
    signed_attributes: bool,
    certificates: usize,
    /// The PKCS#7 is wrapped in a ContentInfo (EDK2 wants a bare SignedData).
    content_info: bool,
    pkcs7_size: usize,
}

#[derive(serde::Serialize)]
struct ShowReport {
    /// "esl" or "auth".
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<AuthReport>,
    entries: Vec<efivar::EntryInfo>,
}

fn signer_report(der: &[u8], path: &Path) -> Option<SignerReport> {
    let c = x509::parse(der, path).ok()?;
    Some(SignerReport {
        subject: c.subject().to_string(),
        issuer: c.issuer().to_string(),
        fingerprint_sha256: pki_signer::codec::sha256_hex(der),
    })
}

fn show(bytes: &[u8], path: &Path) -> Result<ShowReport> {
    if !efivar::is_auth(bytes) {
        let entries = efivar::parse_esl(bytes, path)?;
        return Ok(ShowReport {
            kind: "esl",
            auth: None,
            entries: entries
                .iter()
                .map(|e| efivar::describe_entry(e, path))
                .collect(),
        });
    }
    let a = efivar::parse_auth(bytes, path)?;
    let sd = pkcs7::parse(&a.pkcs7, path)?;
    let entries = efivar::parse_esl(&a.data, path)?;
    let signed_for = a.signed_for(&sd);
    let si = sd
        .signers
        .first()
        .ok_or_else(|| Error::input(path, "PKCS#7 has no SignerInfo"))?;
    let attributes = signed_for.map(|(_, ap)| efivar::auth_attributes(ap));
    let auth = AuthReport {
        time: a.time.to_string(),
        time_reserved_fields_zero: a.time_reserved_zero,
        var: signed_for.map(|(v, _)| v.name().to_string()),
        vendor_guid: signed_for.map(|(v, _)| v.vendor_guid()),
        append: signed_for.map(|(_, ap)| ap),
        attributes: attributes.map(|x| format!("0x{x:08x}")),
        attribute_names: attributes.map(efivar::attribute_names).unwrap_or_default(),
        signature_valid: signed_for.is_some(),
        signer: sd.signer_cert(si).and_then(|c| signer_report(c, path)),
        signer_id: si.describe_sid(),
        digest_algorithm: sigalg::hash_name(&si.digest_oid),
        signature_algorithm: sigalg::alg_name(&si.signature_alg.oid),
        signed_attributes: si.signed_attrs.is_some(),
        certificates: sd.certs.len(),
        content_info: sd.content_info,
        pkcs7_size: a.pkcs7.len(),
    };
    Ok(ShowReport {
        kind: "auth",
        auth: Some(auth),
        entries: entries
            .iter()
            .map(|e| efivar::describe_entry(e, path))
            .collect(),
    })
}

fn print_show(path: &Path, r: &ShowReport) {
    if let Some(a) = &r.auth {
        println!("{}: authenticated variable", path.display());
        println!("  time: {}", a.time);
        match (&a.var, a.append) {
            (Some(v), Some(append)) => println!(
                "  signed for: {}{v} ({}), attributes {}",
                if append { "append to " } else { "" },
                a.vendor_guid.map(|g| g.to_string()).unwrap_or_default(),
                a.attribute_names.join("|")
            ),
            _ => println!(
                "  signed for: unknown (the signature verifies for none of PK, KEK, db, dbx)"
            ),
        }
        match &a.signer {
            Some(s) => {
                println!("  signer: {}", esc(&s.subject));
                println!("  signer sha256: {}", s.fingerprint_sha256);
            }
            None => println!("  signer: {} (certificate not included)", a.signer_id),
        }
        println!(
            "  pkcs7: {} bytes, {}, {} with {}, {} certificate(s){}",
            a.pkcs7_size,
            if a.content_info {
                "ContentInfo"
            } else {
                "bare SignedData"
            },
            a.signature_algorithm,
            a.digest_algorithm,
            a.certificates,
            if a.signed_attributes {
                ", signed attributes"
            } else {
                ""
            }
        );
        println!(
            "  content: {} entr{}{}",
            r.entries.len(),
            if r.entries.len() == 1 { "y" } else { "ies" },
            summary(&r.entries)
        );
    } else {
        println!(
            "{}: signature list, {} entr{}{}",
            path.display(),
            r.entries.len(),
            if r.entries.len() == 1 { "y" } else { "ies" },
            summary(&r.entries)
        );
    }
    for (i, e) in r.entries.iter().enumerate() {
        println!("  [{i}] {} owner {}", e.sig_type, e.owner);
        if let Some(s) = &e.subject {
            println!("      subject: {}", esc(s));
        }
        if let Some(s) = &e.issuer {
            println!("      issuer: {}", esc(s));
        }
        if let Some(s) = &e.fingerprint_sha256 {
            println!("      sha256 fingerprint: {s}");
        }
        if let Some(s) = &e.data {
            println!("      {s}");
        }
        if let Some(s) = &e.problem {
            println!("      problem: {s}");
        }
    }
}

/// ": 431 sha256 (owner 77fa9abd-...), 1 x509 (owner ...)" for lists of
/// more than one kind or owner; empty when one line per entry says it all.
fn summary(entries: &[efivar::EntryInfo]) -> String {
    let mut groups: Vec<(&str, Guid, usize)> = vec![];
    for e in entries {
        match groups
            .iter_mut()
            .find(|(t, o, _)| *t == e.sig_type && *o == e.owner)
        {
            Some(g) => g.2 += 1,
            None => groups.push((&e.sig_type, e.owner, 1)),
        }
    }
    if entries.len() < 2 {
        return String::new();
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|(t, o, n)| format!("{n} {t} (owner {o})"))
        .collect();
    format!(": {}", parts.join(", "))
}
