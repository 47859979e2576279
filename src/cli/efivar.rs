use std::path::PathBuf;

use clap::Subcommand;
use pki_signer::{Error, Result};

#[derive(Subcommand)]
pub(super) enum EfivarCmd {
    /// Show a signature list or authenticated variable file. (not implemented yet)
    Show { input: PathBuf },
}

pub(super) fn run(cmd: EfivarCmd) -> Result<i32> {
    match cmd {
        EfivarCmd::Show { input } => Err(Error::Usage(format!(
            "{}: not implemented yet",
            input.display()
        ))),
    }
}
