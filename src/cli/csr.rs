use std::path::PathBuf;

use clap::Subcommand;
use pki_signer::{Error, Result};

#[derive(Subcommand)]
pub(super) enum CsrCmd {
    /// Show a CSR. (not implemented yet)
    Show { input: PathBuf },
}

pub(super) fn run(cmd: CsrCmd) -> Result<i32> {
    match cmd {
        CsrCmd::Show { input } => Err(Error::Usage(format!(
            "{}: not implemented yet",
            input.display()
        ))),
    }
}
