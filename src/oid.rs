//! The object identifiers pki-signer reads and writes, by name: const_oid's
//! database (RFC names) where it has them, so nothing is compared as a
//! dotted string, and the few it lacks spelled once here.

use const_oid::db::{rfc4519, rfc5280, rfc5911, rfc5912, rfc6960, rfc8410};
pub use der::asn1::ObjectIdentifier;

/// An OID as x509-parser reads it, for comparing with the constants.
pub fn of(o: &x509_parser::oid_registry::Oid<'_>) -> Option<ObjectIdentifier> {
    ObjectIdentifier::from_bytes(o.as_bytes()).ok()
}

// CMS content types and attributes.
pub const DATA: ObjectIdentifier = rfc5911::ID_DATA;
pub const SIGNED_DATA: ObjectIdentifier = rfc5911::ID_SIGNED_DATA;
pub const CONTENT_TYPE: ObjectIdentifier = rfc5911::ID_CONTENT_TYPE;
pub const MESSAGE_DIGEST: ObjectIdentifier = rfc5911::ID_MESSAGE_DIGEST;
pub const SIGNING_TIME: ObjectIdentifier = rfc5911::ID_SIGNING_TIME;
pub const COUNTER_SIGNATURE: ObjectIdentifier = rfc5911::ID_COUNTERSIGNATURE;

// Hashes, keys and signature algorithms.
pub const SHA1: ObjectIdentifier = rfc5912::ID_SHA_1;
pub const SHA256: ObjectIdentifier = rfc5912::ID_SHA_256;
pub const SHA384: ObjectIdentifier = rfc5912::ID_SHA_384;
pub const SHA512: ObjectIdentifier = rfc5912::ID_SHA_512;
pub const RSA_ENCRYPTION: ObjectIdentifier = rfc5912::RSA_ENCRYPTION;
pub const MGF1: ObjectIdentifier = rfc5912::ID_MGF_1;
pub const RSASSA_PSS: ObjectIdentifier = rfc5912::ID_RSASSA_PSS;
pub const SHA1_WITH_RSA: ObjectIdentifier = rfc5912::SHA_1_WITH_RSA_ENCRYPTION;
pub const SHA256_WITH_RSA: ObjectIdentifier = rfc5912::SHA_256_WITH_RSA_ENCRYPTION;
pub const SHA384_WITH_RSA: ObjectIdentifier = rfc5912::SHA_384_WITH_RSA_ENCRYPTION;
pub const SHA512_WITH_RSA: ObjectIdentifier = rfc5912::SHA_512_WITH_RSA_ENCRYPTION;
pub const EC_PUBLIC_KEY: ObjectIdentifier = rfc5912::ID_EC_PUBLIC_KEY;
pub const SECP256R1: ObjectIdentifier = rfc5912::SECP_256_R_1;
pub const SECP384R1: ObjectIdentifier = rfc5912::SECP_384_R_1;
pub const ECDSA_WITH_SHA256: ObjectIdentifier = rfc5912::ECDSA_WITH_SHA_256;
pub const ECDSA_WITH_SHA384: ObjectIdentifier = rfc5912::ECDSA_WITH_SHA_384;
pub const ECDSA_WITH_SHA512: ObjectIdentifier = rfc5912::ECDSA_WITH_SHA_512;
pub const DSA: ObjectIdentifier = rfc5912::ID_DSA;
pub const ED25519: ObjectIdentifier = rfc8410::ID_ED_25519;
pub const ED448: ObjectIdentifier = rfc8410::ID_ED_448;

// Name attributes.
pub const COUNTRY: ObjectIdentifier = rfc4519::C;
pub const STATE: ObjectIdentifier = rfc4519::ST;
pub const LOCALITY: ObjectIdentifier = rfc4519::L;
pub const ORG: ObjectIdentifier = rfc4519::O;
pub const ORG_UNIT: ObjectIdentifier = rfc4519::OU;
pub const COMMON_NAME: ObjectIdentifier = rfc4519::CN;
pub const SERIAL_NUMBER: ObjectIdentifier = rfc4519::SERIAL_NUMBER;
pub const EMAIL_ADDRESS: ObjectIdentifier = const_oid::db::rfc3280::EMAIL_ADDRESS;

// Certificate extensions.
pub const SUBJECT_KEY_ID: ObjectIdentifier = rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER;
pub const AUTHORITY_KEY_ID: ObjectIdentifier = rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER;
pub const KEY_USAGE: ObjectIdentifier = rfc5280::ID_CE_KEY_USAGE;
pub const EXT_KEY_USAGE: ObjectIdentifier = rfc5280::ID_CE_EXT_KEY_USAGE;
pub const SUBJECT_ALT_NAME: ObjectIdentifier = rfc5280::ID_CE_SUBJECT_ALT_NAME;
pub const BASIC_CONSTRAINTS: ObjectIdentifier = rfc5280::ID_CE_BASIC_CONSTRAINTS;
pub const NAME_CONSTRAINTS: ObjectIdentifier = rfc5280::ID_CE_NAME_CONSTRAINTS;
pub const CERTIFICATE_POLICIES: ObjectIdentifier = rfc5280::ID_CE_CERTIFICATE_POLICIES;
pub const POLICY_MAPPINGS: ObjectIdentifier = rfc5280::ID_CE_POLICY_MAPPINGS;
pub const POLICY_CONSTRAINTS: ObjectIdentifier = rfc5280::ID_CE_POLICY_CONSTRAINTS;
pub const INHIBIT_ANY_POLICY: ObjectIdentifier = rfc5280::ID_CE_INHIBIT_ANY_POLICY;
pub const CRL_DISTRIBUTION_POINTS: ObjectIdentifier = rfc5280::ID_CE_CRL_DISTRIBUTION_POINTS;
pub const OCSP_NO_CHECK: ObjectIdentifier = rfc6960::ID_PKIX_OCSP_NOCHECK;
pub const NETSCAPE_CERT_TYPE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.113730.1.1");
/// RFC 3779 sbgp-ipAddrBlock and sbgp-autonomousSysNum.
pub const IP_ADDR_BLOCKS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.1.7");
pub const AS_IDENTIFIERS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.1.8");
pub const PROXY_CERT_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.1.14");

// Microsoft Authenticode.
pub const SPC_INDIRECT_DATA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.4");
pub const SPC_PE_IMAGE_DATA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.15");
pub const SPC_SP_OPUS_INFO: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.12");
/// Further Authenticode signatures nested in an unsigned attribute.
pub const MS_NESTED_SIGNATURE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.4.1");
/// An RFC 3161 timestamp token in an unsigned attribute.
pub const MS_RFC3161_TIMESTAMP: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.3.3.1");
