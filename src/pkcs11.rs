//! PKCS#11 (HSM) keys behind the `Signer` trait.
