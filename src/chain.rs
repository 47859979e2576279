//! Certificate paths: one builder and one set of checks for every verifier.
//!
//! Each consumer of our signatures validates certificate paths with OpenSSL's
//! `X509_verify_cert`, under different settings. [`Rules`] names those
//! settings; [`build`] finds the path and applies OpenSSL's checks to it, so a
//! path we accept is one the consumer accepts:
//!
//! * UEFI firmware (EDK2 `Pkcs7Verify`, used for images and authenticated
//!   variables): `X509_V_FLAG_PARTIAL_CHAIN | X509_V_FLAG_NO_CHECK_TIME`,
//!   purpose any, one db/KEK/PK certificate at a time as the trust store. Any
//!   anchor ends the path, root or not; validity periods are not checked.
//! * GyroidOS cml (`ssl_verify_certificate`): the defaults. The path must end
//!   at a self-signed certificate of the trust file; validity is checked
//!   unless cml was told to ignore time.
//! * Device certificates: `openssl verify` defaults, as cml.
//!
//! In every mode, as OpenSSL's `check_chain_extensions` does: no certificate
//! on the path may carry a critical extension OpenSSL does not handle; every
//! issuer must be a CA (basicConstraints CA:TRUE, or for the anchor the
//! legacy forms OpenSSL still accepts), and a keyUsage without keyCertSign
//! forbids issuing; pathLenConstraint limits the non-self-issued
//! intermediates below a CA.

use time::OffsetDateTime;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::oid::{self, ObjectIdentifier};
use crate::x509;

/// How the path may end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchoring {
    /// Any trusted certificate ends the path (`X509_V_FLAG_PARTIAL_CHAIN`).
    Partial,
    /// The path must end at a trusted self-signed certificate; other trusted
    /// certificates may only serve as intermediates.
    Root,
}

/// The checks one consumer applies.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    pub anchoring: Anchoring,
    /// Check validity periods at this time; None: no time check.
    pub at: Option<OffsetDateTime>,
}

impl Rules {
    /// EDK2 firmware: partial chains, no clock.
    pub const UEFI: Rules = Rules {
        anchoring: Anchoring::Partial,
        at: None,
    };

    /// GyroidOS cml and `openssl verify`: full path to a root, validity at
    /// `at` (None when the verifier was told to ignore time).
    pub fn root(at: Option<OffsetDateTime>) -> Rules {
        Rules {
            anchoring: Anchoring::Root,
            at,
        }
    }
}

/// A validated path: DER certificates from the leaf up to and including the
/// anchor that ends it.
#[derive(Clone, Debug)]
pub struct CertPath {
    pub certs: Vec<Vec<u8>>,
    /// Index into the `anchors` given to [`build`].
    pub anchor: usize,
}

/// Longest path tried, counting the leaf.
const MAX_DEPTH: usize = 10;

/// Extensions OpenSSL's `X509_supported_extension` handles; any other
/// extension marked critical makes `X509_verify_cert` fail.
const HANDLED_CRITICAL: &[ObjectIdentifier] = &[
    oid::NETSCAPE_CERT_TYPE,
    oid::KEY_USAGE,
    oid::SUBJECT_ALT_NAME,
    oid::BASIC_CONSTRAINTS,
    oid::CERTIFICATE_POLICIES,
    oid::CRL_DISTRIBUTION_POINTS,
    oid::EXT_KEY_USAGE,
    oid::IP_ADDR_BLOCKS,
    oid::AS_IDENTIFIERS,
    oid::OCSP_NO_CHECK,
    oid::POLICY_CONSTRAINTS,
    oid::PROXY_CERT_INFO,
    oid::NAME_CONSTRAINTS,
    oid::POLICY_MAPPINGS,
    oid::INHIBIT_ANY_POLICY,
];

struct Cand<'a> {
    der: &'a [u8],
    cert: X509Certificate<'a>,
}

fn parse(der: &[u8]) -> Option<Cand<'_>> {
    X509Certificate::from_der(der)
        .ok()
        .map(|(_, cert)| Cand { der, cert })
}

fn self_issued(c: &X509Certificate<'_>) -> bool {
    c.subject() == c.issuer()
}

/// The path from `leaf` through the untrusted `carried` certificates to one
/// of `anchors`, checked under `rules`; or the reason, in OpenSSL's terms,
/// why there is none. Trusted issuers are preferred, as OpenSSL's
/// `X509_V_FLAG_TRUSTED_FIRST` does; the first complete path is the verdict.
pub fn build(
    leaf: &[u8],
    carried: &[Vec<u8>],
    anchors: &[Vec<u8>],
    rules: &Rules,
) -> Result<CertPath, String> {
    let leaf_c = parse(leaf).ok_or("signer certificate does not parse")?;
    let mut terminal: Vec<(usize, Cand<'_>)> = vec![];
    let mut pool: Vec<Cand<'_>> = vec![];
    for (i, a) in anchors.iter().enumerate() {
        let Some(c) = parse(a) else { continue };
        if rules.anchoring == Anchoring::Root && !self_issued(&c.cert) {
            pool.push(c);
        } else {
            terminal.push((i, c));
        }
    }
    pool.extend(
        carried
            .iter()
            .filter(|d| d.as_slice() != leaf)
            .filter_map(|d| parse(d)),
    );
    let mut path = vec![0usize; 0];
    let mut used = vec![false; pool.len()];
    let found = walk(&leaf_c, &terminal, &pool, &mut used, &mut path);
    let Some((anchor_pos, issued_by_anchor)) = found else {
        let ends = leaf_c.cert.subject().to_string();
        return Err(match rules.anchoring {
            Anchoring::Root if terminal.is_empty() && !anchors.is_empty() => format!(
                "unable to get issuer certificate of '{}' (the trust anchors hold no self-signed root)",
                ends
            ),
            _ => format!(
                "unable to get local issuer certificate: no path from '{}' to a trusted certificate",
                ends
            ),
        });
    };
    let mut certs: Vec<&Cand<'_>> = vec![&leaf_c];
    certs.extend(path.iter().map(|&j| &pool[j]));
    let (anchor_index, anchor) = (&terminal[anchor_pos].0, &terminal[anchor_pos].1);
    if issued_by_anchor {
        certs.push(anchor);
    }
    check(&certs, rules)?;
    Ok(CertPath {
        certs: certs.iter().map(|c| c.der.to_vec()).collect(),
        anchor: *anchor_index,
    })
}

/// Depth-first search, trusted issuers first. Returns the position of the
/// terminal anchor and whether it is an issuer above the path (true) or the
/// last certificate of the path itself (false, byte-equal).
fn walk(
    cert: &Cand<'_>,
    terminal: &[(usize, Cand<'_>)],
    pool: &[Cand<'_>],
    used: &mut [bool],
    path: &mut Vec<usize>,
) -> Option<(usize, bool)> {
    if let Some(p) = terminal.iter().position(|(_, a)| a.der == cert.der) {
        return Some((p, false));
    }
    if let Some(p) = terminal.iter().position(|(_, a)| {
        a.cert.subject() == cert.cert.issuer()
            && x509::verify_signed_by(&cert.cert, &a.cert).is_ok()
    }) {
        return Some((p, true));
    }
    if path.len() + 1 >= MAX_DEPTH {
        return None;
    }
    for j in 0..pool.len() {
        if used[j]
            || pool[j].cert.subject() != cert.cert.issuer()
            || pool[j].der == cert.der
            || x509::verify_signed_by(&cert.cert, &pool[j].cert).is_err()
        {
            continue;
        }
        used[j] = true;
        path.push(j);
        if let Some(r) = walk(&pool[j], terminal, pool, used, path) {
            return Some(r);
        }
        path.pop();
        used[j] = false;
    }
    None
}

/// OpenSSL's `check_ca`: 0 = may not issue; 1 = basicConstraints CA:TRUE;
/// 3 = self-signed v1 certificate; 4 = keyUsage with keyCertSign and no
/// basicConstraints; 5 = Netscape CA cert type.
fn ca_kind(c: &X509Certificate<'_>) -> u8 {
    match c.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => return 0,
        Err(_) => return 0,
        _ => {}
    }
    match c.basic_constraints() {
        Ok(Some(bc)) => u8::from(bc.value.ca),
        Err(_) => 0,
        Ok(None) => {
            if c.version() == x509_parser::x509::X509Version::V1 && self_issued(c) {
                3
            } else if matches!(c.key_usage(), Ok(Some(_))) {
                4
            } else if c.iter_extensions().any(|e| {
                matches!(e.parsed_extension(), ParsedExtension::NSCertType(t)
                    if t.ssl_ca() || t.smime_ca() || t.object_signing_ca())
            }) {
                5
            } else {
                0
            }
        }
    }
}

/// OpenSSL's `check_chain_extensions` and `check_time` over `certs` (leaf
/// first, anchor last).
fn check(certs: &[&Cand<'_>], rules: &Rules) -> Result<(), String> {
    let n = certs.len();
    // Non-self-issued intermediates below the certificate being checked.
    let mut plen: u32 = 0;
    for (i, c) in certs.iter().enumerate() {
        let c = &c.cert;
        let name = c.subject().to_string();
        let handled = |o| oid::of(o).is_some_and(|o| HANDLED_CRITICAL.contains(&o));
        if let Some(e) = c.iter_extensions().find(|e| e.critical && !handled(&e.oid)) {
            return Err(format!(
                "certificate '{name}' has an unhandled critical extension {}",
                e.oid.to_id_string()
            ));
        }
        if i > 0
            && c.iter_extensions()
                .any(|e| oid::of(&e.oid) == Some(oid::NAME_CONSTRAINTS))
        {
            // OpenSSL would check every name below against them; we do not
            // evaluate name constraints, so we do not vouch for such a path.
            return Err(format!(
                "certificate '{name}' has name constraints, which pki-signer does not evaluate"
            ));
        }
        if i > 0 {
            let kind = ca_kind(c);
            // Intermediates need basicConstraints CA:TRUE; the top of the
            // path may also be a legacy CA form.
            if kind == 0 || (i + 1 < n && kind != 1) {
                return Err(format!(
                    "invalid CA certificate '{name}' (it may not issue certificates)"
                ));
            }
            if let Ok(Some(bc)) = c.basic_constraints() {
                if let Some(max) = bc.value.path_len_constraint {
                    if i > 1 && plen > max {
                        return Err(format!(
                            "path length constraint exceeded: '{name}' allows {max} intermediate(s) below it, the path has {plen}"
                        ));
                    }
                }
            }
            if !self_issued(c) {
                plen += 1;
            }
        }
        if let Some(at) = rules.at {
            let v = c.validity();
            if at < v.not_before.to_datetime() {
                return Err(format!(
                    "certificate '{name}' is not yet valid (not before {})",
                    x509::rfc3339(&v.not_before)
                ));
            }
            if at > v.not_after.to_datetime() {
                return Err(format!(
                    "certificate '{name}' has expired (not after {})",
                    x509::rfc3339(&v.not_after)
                ));
            }
        }
    }
    Ok(())
}

/// SHA-256/384/512 of a certificate's TBSCertificate: what a dbx
/// EFI_CERT_X509_SHA* entry holds (EDK2 `IsCertHashFoundInDbx`).
pub fn tbs_hash(der: &[u8], len: usize) -> Option<Vec<u8>> {
    let (_, c) = X509Certificate::from_der(der).ok()?;
    let tbs = c.tbs_certificate.as_ref();
    use aws_lc_rs::digest;
    let alg = match len {
        32 => &digest::SHA256,
        48 => &digest::SHA384,
        64 => &digest::SHA512,
        _ => return None,
    };
    Some(digest::digest(alg, tbs).as_ref().to_vec())
}

/// Trust as EDK2 decides it: the anchors are tried one at a time, in order,
/// each as the only certificate of the store (`IsAllowedByDb` calls
/// `AuthenticodeVerify` once per db entry). The first that yields a valid
/// path wins; otherwise the reason the first anchor gave.
pub fn uefi_path(
    leaf: &[u8],
    carried: &[Vec<u8>],
    anchors: &[Vec<u8>],
) -> Result<CertPath, String> {
    let mut first_err = None;
    for (i, a) in anchors.iter().enumerate() {
        match build(leaf, carried, std::slice::from_ref(a), &Rules::UEFI) {
            Ok(mut p) => {
                p.anchor = i;
                return Ok(p);
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or_else(|| "no trusted certificate given".into()))
}
