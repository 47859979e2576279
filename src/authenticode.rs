//! Authenticode signatures: PKCS#7 SignedData over SpcIndirectDataContent.
