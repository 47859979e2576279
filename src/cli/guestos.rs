use std::path::PathBuf;

use clap::Subcommand;
use pki_signer::{Error, Result};

#[derive(Subcommand)]
pub(super) enum GuestosCmd {
    /// Show a GuestOS manifest. (not implemented yet)
    Show { input: PathBuf },
}

pub(super) fn run(cmd: GuestosCmd) -> Result<i32> {
    match cmd {
        GuestosCmd::Show { input } => Err(Error::Usage(format!(
            "{}: not implemented yet",
            input.display()
        ))),
    }
}
