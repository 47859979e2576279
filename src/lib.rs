//! pki-signer: development PKI generation and signing for secure-boot images.

#![forbid(unsafe_code)]

pub mod asn1;
pub mod authenticode;
pub mod chain;
pub mod codec;
pub mod csr;
pub mod efivar;
pub mod error;
pub mod fsutil;
pub mod guestos;
pub mod identity;
pub mod image;
pub mod keys;
pub mod lifecycle;
pub mod offline;
pub mod oid;
pub mod par;
pub mod pe;
pub mod pkcs11;
pub mod pkcs7;
pub mod pki;
pub mod plan;
pub mod release;
pub mod resign;
pub mod sigalg;
pub mod text;
pub mod uki;
pub mod x509;

pub use error::{Error, ErrorKind, Result};
