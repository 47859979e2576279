fn main() {
    std::process::exit(pki_signer_cli::run());
}

#[path = "cli/mod.rs"]
mod pki_signer_cli;
