//! The command-line front end: argument parsing and output formatting only.
//! Everything it does is a library call.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use pki_signer::keys::KeyType;
use pki_signer::{Error, Result};

mod csr;
mod efivar;
mod guestos;
mod offline;
mod pe;
mod pki;
mod resign;
mod uki;

#[derive(Parser)]
#[command(
    name = "pki-signer",
    version,
    about = "Development PKI and signing for secure-boot images"
)]
struct Cli {
    /// Release mode: refuse development keys (same as PKI_SIGNER_RELEASE=1).
    #[arg(long, global = true)]
    release: bool,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, show and check a PKI directory.
    #[command(subcommand)]
    Pki(PkiCmd),
    /// Authenticode-sign, verify and inspect PE/EFI images (kernels, UKIs, EFI apps).
    #[command(subcommand)]
    Pe(pe::PeCmd),
    /// UEFI signature lists and authenticated variables (PK, KEK, db, dbx).
    #[command(subcommand)]
    Efivar(efivar::EfivarCmd),
    /// Sign and verify GuestOS manifests (NAME.conf -> NAME.sig + NAME.cert).
    #[command(subcommand)]
    Guestos(guestos::GuestosCmd),
    /// Issue device certificates from CSRs.
    #[command(subcommand)]
    Csr(csr::CsrCmd),
    /// Re-sign the artifacts of a signing plan with production keys.
    Resign(resign::ResignArgs),
    /// Sign on an air-gapped HSM host: request (build host), sign, complete (build host).
    #[command(subcommand)]
    Offline(offline::OfflineCmd),
    /// Build, measure (PCR 11) and inspect Unified Kernel Images.
    #[command(subcommand)]
    Uki(Box<uki::UkiCmd>),
}

/// How a signing command finds its key: a role of the PKI, or explicit files.
#[derive(Args, Clone, Debug)]
struct KeyArgs {
    /// Role in the PKI directory whose key and certificate sign (e.g. ssig_subca).
    #[arg(long, conflicts_with_all = ["key", "cert"])]
    role: Option<String>,
    /// PKI directory for --role (in release mode, its development keys are refused under
    /// --key/--cert too).
    #[arg(long, env = "PKI_SIGNER_DIR", default_value = "pki")]
    dir: PathBuf,
    /// Private key: a file (PEM/DER; PKCS#8, PKCS#1, SEC1, encrypted PKCS#8) or a PKCS#11 URI
    /// (pkcs11:token=T;object=L; PIN from $PKI_SIGNER_PKCS11_PIN or pin-source=file:).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Signer certificate: a PEM file (further certificates in it become the chain) or a
    /// PKCS#11 URI of a certificate object.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Extra chain certificates to embed (PEM).
    #[arg(long)]
    chain: Option<PathBuf>,
    /// File whose first line is the key password (else $PKI_SIGNER_KEY_PASS).
    #[arg(long, value_name = "FILE")]
    key_pass_file: Option<PathBuf>,
}

impl KeyArgs {
    fn spec(&self) -> pki_signer::identity::KeySpec {
        pki_signer::identity::KeySpec {
            role: self.role.clone(),
            dir: self.dir.clone(),
            key: self.key.clone(),
            cert: self.cert.clone(),
            chain: self.chain.clone(),
            key_pass_file: self.key_pass_file.clone(),
        }
    }
}

/// signingTime: --signing-time, else SOURCE_DATE_EPOCH, else none (reproducible).
fn signing_time(arg: Option<&str>) -> Result<Option<time::OffsetDateTime>> {
    use time::format_description::well_known::Rfc3339;
    if let Some(t) = arg {
        return time::OffsetDateTime::parse(t, &Rfc3339)
            .map(Some)
            .map_err(|e| {
                Error::Usage(format!(
                    "--signing-time '{t}': {e} (want e.g. 2026-01-01T00:00:00Z)"
                ))
            });
    }
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) if !s.is_empty() => {
            let secs: i64 = s
                .trim()
                .parse()
                .map_err(|_| Error::Usage(format!("SOURCE_DATE_EPOCH '{s}' is not a number")))?;
            time::OffsetDateTime::from_unix_timestamp(secs)
                .map(Some)
                .map_err(|e| Error::Usage(format!("SOURCE_DATE_EPOCH '{s}': {e}")))
        }
        _ => Ok(None),
    }
}

#[derive(Args, Clone)]
struct DirArg {
    /// PKI directory.
    #[arg(long, env = "PKI_SIGNER_DIR", default_value = "pki")]
    dir: PathBuf,
}

#[derive(Subcommand)]
enum PkiCmd {
    /// Generate the development PKI in DIR unless it is already there.
    Init {
        #[command(flatten)]
        dir: DirArg,
        /// Profile JSON: organisation, subjects, validity, key types, extra roles.
        #[arg(long)]
        profile: Option<PathBuf>,
        /// Key type of all non-UEFI roles the profile does not set.
        #[arg(long, value_name = "TYPE", value_parser = parse_key_type)]
        key_type: Option<KeyType>,
        /// Also create UEFI PK/KEK/DB keys, signature lists and the TPM PCR-policy key.
        #[arg(long)]
        uefi: bool,
        /// Generate every key inside this PKCS#11 token (pkcs11:token=NAME[?module-path=...]),
        /// non-extractable; DIR gets only certificates and pki.json with the key URIs.
        /// PIN from $PKI_SIGNER_PKCS11_PIN or pin-source=file:.
        #[arg(long, value_name = "URI")]
        hsm: Option<String>,
        /// A development PKI whose db certificates (DB, ssig_subca and their retired
        /// generations) this production PKI revokes in dbx.esl/dbx.auth (with --hsm --uefi).
        #[arg(long, value_name = "DIR")]
        revoke_dev: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Make the successor of a CA, signing or UEFI KEK/DB role: new key, same
    /// issuer, subject and key type. The predecessor moves to retired/ROLE.N.*;
    /// for roles in db (ssig_subca, DB) the KEK-signed updates
    /// updates/db-append-ROLE.N.auth and updates/dbx-ROLE.M.auth are written,
    /// for KEK the PK-signed updates/KEK-append-KEK.N.auth and
    /// updates/KEK-KEK.N.auth (a replacement of KEK that drops the predecessor).
    Rotate {
        /// The role to rotate (e.g. ssig_subca, DB, KEK).
        role: String,
        #[command(flatten)]
        dir: DirArg,
        #[arg(long)]
        json: bool,
    },
    /// List every certificate of the PKI.
    Show {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long)]
        json: bool,
    },
    /// Verify chains, key/certificate pairs, validity and signature lists.
    Check {
        #[command(flatten)]
        dir: DirArg,
        /// Check validity as of this time (RFC 3339) instead of now.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// File whose first line is the password of encrypted keys (else $PKI_SIGNER_KEY_PASS).
        #[arg(long, value_name = "FILE")]
        key_pass_file: Option<PathBuf>,
        /// Warn when a certificate expires within this many days.
        #[arg(long, value_name = "N", default_value_t = pki_signer::pki::EXPIRY_WARNING_DAYS)]
        warn_days: u32,
        #[arg(long)]
        json: bool,
    },
    /// Copy the UEFI keys, certificates, signature lists, .auth files and the TPM PCR key
    /// into a new directory under the names another tool expects. kairos: PK/KEK/db .key
    /// .pem .der .esl .auth and tpm2-pcr-private.pem (AuroraBoot genkey's layout; db.key and
    /// db.pem for --sb-key/--sb-cert, the directory for --public-keys). Keys in a token are
    /// not files: their URIs are printed instead.
    Export {
        #[command(flatten)]
        dir: DirArg,
        /// Whose file names.
        #[arg(long, value_enum)]
        layout: ExportLayout,
        /// The directory to create (absent or empty).
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ExportLayout {
    /// Kairos (AuroraBoot, enki).
    Kairos,
}

impl From<ExportLayout> for pki_signer::layout::Layout {
    fn from(l: ExportLayout) -> Self {
        match l {
            ExportLayout::Kairos => pki_signer::layout::Layout::Kairos,
        }
    }
}

fn parse_key_type(s: &str) -> std::result::Result<KeyType, String> {
    s.parse()
}

pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    if cli.release {
        pki_signer::release::enable();
    }
    let res = match cli.cmd {
        Command::Pki(c) => pki::run(c),
        Command::Pe(c) => pe::run(c),
        Command::Efivar(c) => efivar::run(c),
        Command::Guestos(c) => guestos::run(c),
        Command::Csr(c) => csr::run(c),
        Command::Resign(a) => resign::run(a),
        Command::Offline(c) => offline::run(c),
        Command::Uki(c) => uki::run(*c),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pki-signer: error: {}", one_line(&e));
            e.exit_code()
        }
    }
}

/// Errors are printed on one line, whatever the underlying message holds.
/// Subjects and file contents inside the message are escaped, so a hostile
/// name cannot move the cursor or fake a second line.
fn one_line(e: &Error) -> String {
    let line = e
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    pki_signer::text::escape_for_terminal(&line)
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::Usage(e.to_string()))?;
    println!("{s}");
    Ok(())
}
