//! pki-signer: development PKI generation and signing for secure-boot images.

pub mod authenticode;
pub mod efivar;
pub mod error;
pub mod fsutil;
pub mod identity;
pub mod image;
pub mod keys;
pub mod pe;
pub mod pki;
pub mod x509;

pub use error::{Error, Result};
