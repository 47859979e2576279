//! Generic PKCS#7 / CMS SignedData (detached) made with any `Signer`: used by
//! EFI authenticated variables and GuestOS CMS signatures.
