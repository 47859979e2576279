fn main() {
    // Rust ignores SIGPIPE, so `pki-signer pki show --json | head` would panic
    // in println!; restore the default so we end quietly like other Unix tools.
    // SAFETY: called before any other thread exists; SIG_DFL is always valid.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    pki_signer::pkcs11::take_turns_on_softhsm();
    std::process::exit(pki_signer_cli::run());
}

#[path = "cli/mod.rs"]
mod pki_signer_cli;
