//! The command-line front end: argument parsing and output formatting only.
//! Everything it does is a library call.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use pki_signer::keys::KeyType;
use pki_signer::{Error, Result};

mod pki;

#[derive(Parser)]
#[command(
    name = "pki-signer",
    version,
    about = "Development PKI and signing for secure-boot images"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, show and check a PKI directory.
    #[command(subcommand)]
    Pki(PkiCmd),
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
        #[arg(long)]
        json: bool,
    },
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
    let res = match cli.cmd {
        Command::Pki(c) => pki::run(c),
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
fn one_line(e: &Error) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::Usage(e.to_string()))?;
    println!("{s}");
    Ok(())
}
