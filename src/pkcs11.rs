//! PKCS#11 (HSM) keys behind the `Signer` trait.
//!
//! Keys and certificates on a token are named by RFC 7512 URIs such as
//! `pkcs11:token=release;object=ssig?module-path=/usr/lib/softhsm/libsofthsm2.so`.
//! The PIN never comes from the command line, which every user of the machine
//! can read: it comes from `$PKI_SIGNER_PKCS11_PIN` or from the file named by
//! `pin-source=file:PATH`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use crate::error::{Error, Result};
use crate::keys::{KeyType, Signer};
use crate::sigalg::{Hash, Scheme};

/// Module used when the URI has no `module-path`.
pub const MODULE_ENV: &str = "PKI_SIGNER_PKCS11_MODULE";
/// User PIN, used when the URI has no `pin-source`.
pub const PIN_ENV: &str = "PKI_SIGNER_PKCS11_PIN";

/// True if a `--key`/`--cert` value names a PKCS#11 object rather than a file.
pub fn is_uri(s: &Path) -> bool {
    s.to_str()
        .is_some_and(|s| s.len() >= 7 && s[..7].eq_ignore_ascii_case("pkcs11:"))
}

/// A parsed RFC 7512 URI: the attributes we select by, plus the module and PIN source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    pub token: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub slot_id: Option<u64>,
    pub object: Option<String>,
    pub id: Option<Vec<u8>>,
    /// `private`, `public`, `cert`, ...
    pub object_type: Option<String>,
    pub module_path: Option<PathBuf>,
    pub pin_source: Option<String>,
    /// The path part (`pkcs11:token=...;object=...`), for messages: the query
    /// may hold a `pin-value` and is never echoed.
    shown: String,
}

impl Pkcs11Uri {
    pub fn parse(s: &str) -> Result<Pkcs11Uri> {
        let bad = |shown: &str, msg: String| Error::input(shown, msg);
        if !is_uri(Path::new(s)) {
            return Err(Error::Usage(
                "not a PKCS#11 URI (expected pkcs11:...)".to_string(),
            ));
        }
        let rest = &s[7..];
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut uri = Pkcs11Uri {
            shown: format!("pkcs11:{path}"),
            ..Default::default()
        };
        let shown = uri.shown.clone();
        let mut seen: Vec<String> = Vec::new();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, raw) = attr
                .split_once('=')
                .ok_or_else(|| bad(&shown, format!("URI attribute '{attr}' has no '='")))?;
            let name = name.to_ascii_lowercase();
            if seen.contains(&name) {
                return Err(bad(&shown, format!("URI attribute '{name}' is repeated")));
            }
            seen.push(name.clone());
            let value = percent_decode(raw).map_err(|m| bad(&shown, m))?;
            let text = || {
                String::from_utf8(value.clone())
                    .map_err(|_| bad(&shown, format!("URI attribute '{name}' is not UTF-8")))
            };
            match name.as_str() {
                "token" => uri.token = Some(text()?),
                "manufacturer" => uri.manufacturer = Some(text()?),
                "model" => uri.model = Some(text()?),
                "serial" => uri.serial = Some(text()?),
                "slot-id" => {
                    uri.slot_id = Some(text()?.parse().map_err(|_| {
                        bad(&shown, format!("slot-id '{raw}' is not a number"))
                    })?)
                }
                "object" => uri.object = Some(text()?),
                "id" => uri.id = Some(value),
                "type" => uri.object_type = Some(text()?),
                "module-path" | "pin-source" | "pin-value" | "module-name" => {
                    return Err(bad(
                        &shown,
                        format!("'{name}' is a query attribute: write it after '?', e.g. pkcs11:token=T;object=O?{name}=..."),
                    ))
                }
                _ => {
                    return Err(bad(
                        &shown,
                        format!("URI attribute '{name}' is not supported (supported: token, manufacturer, model, serial, slot-id, object, id, type)"),
                    ))
                }
            }
        }
        for attr in query.unwrap_or("").split('&').filter(|a| !a.is_empty()) {
            let (name, raw) = attr.split_once('=').unwrap_or((attr, ""));
            let name = name.to_ascii_lowercase();
            match name.as_str() {
                "pin-value" => {
                    return Err(bad(
                        &shown,
                        format!("the PIN must not be part of the URI (pin-value): set {PIN_ENV} or use pin-source=file:PATH"),
                    ))
                }
                "module-path" => {
                    let v = percent_decode(raw).map_err(|m| bad(&shown, m))?;
                    let v = String::from_utf8(v)
                        .map_err(|_| bad(&shown, "module-path is not UTF-8".into()))?;
                    uri.module_path = Some(PathBuf::from(v));
                }
                "pin-source" => {
                    let v = percent_decode(raw).map_err(|m| bad(&shown, m))?;
                    let v = String::from_utf8(v)
                        .map_err(|_| bad(&shown, "pin-source is not UTF-8".into()))?;
                    uri.pin_source = Some(v);
                }
                "module-name" => {
                    return Err(bad(
                        &shown,
                        "module-name is not supported: give the module file with module-path=".into(),
                    ))
                }
                _ => {
                    return Err(bad(
                        &shown,
                        format!("URI query attribute '{name}' is not supported (supported: module-path, pin-source)"),
                    ))
                }
            }
        }
        Ok(uri)
    }

    /// The URI without its query, safe to print.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn object_name(&self) -> String {
        match (&self.object, &self.id) {
            (Some(o), _) => format!("'{o}'"),
            (None, Some(id)) => format!("id {}", percent_encode(id)),
            (None, None) => "(any)".to_string(),
        }
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::input(&self.shown, msg)
    }
}

fn percent_decode(s: &str) -> std::result::Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in '{s}'"))?;
            out.push(h);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// RFC 7512 percent-encoding of every byte.
fn percent_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("%{x:02x}")).collect()
}

/// `CKR_PIN_INCORRECT` rather than cryptoki's paragraph-long description:
/// the CKR_ name is what HSM manuals and support threads use.
fn ckr(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, _) => {
            let camel = format!("{rv:?}");
            let mut s = String::from("CKR");
            for c in camel.chars() {
                if c.is_ascii_uppercase() {
                    s.push('_');
                }
                s.push(c.to_ascii_uppercase());
            }
            s
        }
        other => other.to_string(),
    }
}

/// Modules are loaded and initialised once per process: C_Initialize may be
/// called only once, and every key and certificate on the same module must
/// share the login state that lives in that one library instance.
///
/// Returns the module and the one slot whose token the URI names.
fn token(uri: &Pkcs11Uri) -> Result<(PathBuf, Pkcs11, Slot, String)> {
    let path = match &uri.module_path {
        Some(p) => p.clone(),
        None => match std::env::var_os(MODULE_ENV) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => {
                return Err(uri.err(format!(
                    "no PKCS#11 module: add ?module-path=/path/to/module.so to the URI or set {MODULE_ENV}"
                )))
            }
        },
    };
    // The SoftHSM2 turn lock (if any) lives as long as the module.
    type Loaded = (PathBuf, Pkcs11, Option<std::fs::File>);
    static MODULES: OnceLock<Mutex<Vec<Loaded>>> = OnceLock::new();
    let mut loaded = MODULES
        .get_or_init(|| Mutex::new(Vec::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some((_, ctx, _)) = loaded.iter().find(|(p, _, _)| *p == path) {
        let (slot, label) = find_token(uri, &path, ctx)?;
        return Ok((path, ctx.clone(), slot, label));
    }
    if !path.is_file() {
        return Err(uri.err(format!("PKCS#11 module {} not found", path.display())));
    }
    let lock = softhsm_lock(&path);
    let ctx = Pkcs11::new(&path).map_err(|e| {
        uri.err(format!(
            "cannot load PKCS#11 module {}: {}",
            path.display(),
            ckr(&e)
        ))
    })?;
    initialize(uri, &path, &ctx)?;
    // SoftHSM2 reads its token files once, in C_Initialize, and leaves out a
    // token whose file another process is rewriting at that moment ("Token
    // integrity check failed"): parallel bitbake tasks signing on one token
    // see it vanish. It is back at the next C_Initialize. Nothing else holds
    // this context yet, so finalising it here is safe.
    let mut found = find_token(uri, &path, &ctx);
    for ms in [20, 100, 400] {
        if found.is_ok() {
            break;
        }
        let _ = ctx.clone().finalize();
        std::thread::sleep(std::time::Duration::from_millis(ms));
        initialize(uri, &path, &ctx)?;
        found = find_token(uri, &path, &ctx);
    }
    loaded.push((path.clone(), ctx.clone(), lock));
    let (slot, label) = found?;
    Ok((path, ctx, slot, label))
}

/// SoftHSM2's file store is not safe for concurrent processes: one that
/// reads the token while another rewrites it loses the token, or fails its
/// login or a listing with CKR_GENERAL_ERROR (SoftHSMv2 issue 757). Parallel
/// bitbake tasks signing with one SoftHSM2 token would fail at random, so
/// pki-signer processes take turns on SoftHSM2 modules: an exclusive flock on
/// the configuration file the module reads ($SOFTHSM2_CONF, else the user's
/// or /etc/softhsm's softhsm2.conf), so processes that share a token store
/// take turns and others do not; nothing is created. It is held until the
/// process exits. Other modules (real HSMs) are not locked. None when the
/// lock cannot be had; the retries in `token` remain.
///
/// Only processes that ask for it take turns (the command line does): a
/// program that uses this library and also runs pki-signer children would
/// otherwise hold the lock they wait for.
fn softhsm_lock(module: &Path) -> Option<std::fs::File> {
    if !TAKE_TURNS.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let name = module.file_name()?.to_str()?;
    if !name.starts_with("libsofthsm") {
        return None;
    }
    let conf = match std::env::var_os("SOFTHSM2_CONF") {
        Some(c) if !c.is_empty() => PathBuf::from(c),
        _ => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".config/softhsm2/softhsm2.conf"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("/etc/softhsm/softhsm2.conf")),
    };
    let file = std::fs::File::open(conf).ok()?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).ok()?;
    Some(file)
}

static TAKE_TURNS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Make this process take turns with other pki-signer processes on SoftHSM2
/// modules (see `softhsm_lock`). Call it before the first key is opened.
pub fn take_turns_on_softhsm() {
    TAKE_TURNS.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn initialize(uri: &Pkcs11Uri, path: &Path, ctx: &Pkcs11) -> Result<()> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(uri.err(format!(
            "PKCS#11 module {} failed to initialise: {}",
            path.display(),
            ckr(&e)
        ))),
    }
}

/// The one slot whose token matches the URI's token attributes.
fn find_token(uri: &Pkcs11Uri, module: &Path, ctx: &Pkcs11) -> Result<(Slot, String)> {
    let fail = |e: CkError| {
        uri.err(format!(
            "PKCS#11 module {}: listing tokens failed: {}",
            module.display(),
            ckr(&e)
        ))
    };
    let mut all = Vec::new();
    let mut hits = Vec::new();
    for slot in ctx.get_slots_with_token().map_err(fail)? {
        let info = ctx.get_token_info(slot).map_err(fail)?;
        // SoftHSM2 and others keep a free slot with a blank token for `--init-token`.
        if !info.token_initialized() {
            continue;
        }
        let ok = uri.token.as_deref().is_none_or(|t| t == info.label())
            && uri
                .manufacturer
                .as_deref()
                .is_none_or(|t| t == info.manufacturer_id())
            && uri.model.as_deref().is_none_or(|t| t == info.model())
            && uri
                .serial
                .as_deref()
                .is_none_or(|t| t == info.serial_number())
            && uri.slot_id.is_none_or(|id| id == slot.id());
        all.push(format!("'{}'", info.label()));
        if ok {
            hits.push((slot, info.label().to_string()));
        }
    }
    let want = uri
        .token
        .as_deref()
        .map(|t| format!("token '{t}'"))
        .unwrap_or_else(|| "a token matching the URI".to_string());
    match hits.len() {
        1 => Ok(hits.remove(0)),
        0 => Err(uri.err(format!(
            "no {want} in PKCS#11 module {} (tokens: {})",
            module.display(),
            if all.is_empty() {
                "none".to_string()
            } else {
                all.join(", ")
            }
        ))),
        n => Err(uri.err(format!(
            "{n} tokens match the URI ({}): add token= or serial=",
            all.join(", ")
        ))),
    }
}

/// The user PIN: `pin-source=file:PATH` (first line), else `$PKI_SIGNER_PKCS11_PIN`.
fn pin(uri: &Pkcs11Uri) -> Result<Option<AuthPin>> {
    if let Some(src) = &uri.pin_source {
        let path = src
            .strip_prefix("file://")
            .or_else(|| src.strip_prefix("file:"))
            .unwrap_or(src);
        if path.starts_with('|') || (path.contains(':') && !path.starts_with('/')) {
            return Err(uri.err(format!("pin-source '{src}': only file:PATH is supported")));
        }
        let bytes = zeroize::Zeroizing::new(
            crate::fsutil::read_input(Path::new(path), crate::fsutil::InputKind::Password)
                .map_err(|e| uri.err(format!("pin-source {e}")))?,
        );
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| uri.err(format!("pin-source {path}: not UTF-8 text: {e}")))?;
        let line = text.lines().next().unwrap_or("");
        return Ok(Some(AuthPin::from(line.to_string())));
    }
    Ok(std::env::var(PIN_ENV)
        .ok()
        .filter(|p| !p.is_empty())
        .map(AuthPin::from))
}

struct Opened {
    ctx: Pkcs11,
    slot: Slot,
    session: Session,
    token: String,
}

/// An open session on the URI's token, logged in as the user when the token
/// wants it. Login state is per module instance, so a second key on the same
/// token finds the user logged in already: one login per run.
fn open_session(uri: &Pkcs11Uri, need_login: bool) -> Result<Opened> {
    let (_, ctx, slot, token) = token(uri)?;
    let session = ctx.open_ro_session(slot).map_err(|e| {
        uri.err(format!(
            "cannot open a session on token '{token}': {}",
            ckr(&e)
        ))
    })?;
    let o = Opened {
        ctx,
        slot,
        session,
        token,
    };
    if need_login {
        login(uri, &o)?;
    }
    Ok(o)
}

fn login(uri: &Pkcs11Uri, o: &Opened) -> Result<()> {
    let label = &o.token;
    let info = o
        .ctx
        .get_token_info(o.slot)
        .map_err(|e| uri.err(format!("token '{label}': {}", ckr(&e))))?;
    if !info.login_required() {
        return Ok(());
    }
    let pin = pin(uri)?;
    if pin.is_none() && !info.protected_authentication_path() {
        return Err(uri.err(format!(
            "token '{label}' needs a PIN: set {PIN_ENV} or add ?pin-source=file:PATH to the URI"
        )));
    }
    match o.session.login(UserType::User, pin.as_ref()) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(uri.err(format!(
            "PKCS#11 login to token '{label}' failed: {}",
            ckr(&e)
        ))),
    }
}

fn find(
    session: &Session,
    class: ObjectClass,
    label: Option<&str>,
    id: Option<&[u8]>,
) -> std::result::Result<Vec<ObjectHandle>, CkError> {
    let mut t = vec![Attribute::Class(class)];
    if let Some(l) = label {
        t.push(Attribute::Label(l.as_bytes().to_vec()));
    }
    if let Some(i) = id {
        t.push(Attribute::Id(i.to_vec()));
    }
    session.find_objects(&t)
}

fn attrs(session: &Session, obj: ObjectHandle, want: &[AttributeType]) -> Vec<Attribute> {
    session.get_attributes(obj, want).unwrap_or_default()
}

fn bytes_attr(a: &[Attribute], t: AttributeType) -> Option<Vec<u8>> {
    a.iter().find_map(|a| match (a, t) {
        (Attribute::Id(v), AttributeType::Id)
        | (Attribute::Label(v), AttributeType::Label)
        | (Attribute::Modulus(v), AttributeType::Modulus)
        | (Attribute::PublicExponent(v), AttributeType::PublicExponent)
        | (Attribute::EcParams(v), AttributeType::EcParams)
        | (Attribute::EcPoint(v), AttributeType::EcPoint)
        | (Attribute::Value(v), AttributeType::Value) => Some(v.clone()),
        _ => None,
    })
}

/// Exactly one object of `class` named by the URI, or a one-line reason.
fn one_object(
    uri: &Pkcs11Uri,
    session: &Session,
    class: ObjectClass,
    what: &str,
    token: &str,
) -> Result<ObjectHandle> {
    if uri.object.is_none() && uri.id.is_none() {
        return Err(uri.err(format!(
            "the URI names no {what}: add object=LABEL or id=%.."
        )));
    }
    let mut hits = find(session, class, uri.object.as_deref(), uri.id.as_deref())
        .map_err(|e| uri.err(format!("searching token '{token}' failed: {}", ckr(&e))))?;
    match hits.len() {
        1 => Ok(hits.remove(0)),
        0 => Err(uri.err(format!(
            "no {what} {} on token '{token}'",
            uri.object_name()
        ))),
        n => Err(uri.err(format!(
            "{n} {what}s match {} on token '{token}': add id= to the URI",
            uri.object_name()
        ))),
    }
}

const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

#[derive(der::Sequence)]
struct RsaPublicKey<'a> {
    n: der::asn1::UintRef<'a>,
    e: der::asn1::UintRef<'a>,
}

#[derive(der::Sequence)]
struct EcdsaSig<'a> {
    r: der::asn1::UintRef<'a>,
    s: der::asn1::UintRef<'a>,
}

fn rsa_public_der(n: &[u8], e: &[u8]) -> Option<Vec<u8>> {
    use der::Encode;
    RsaPublicKey {
        n: der::asn1::UintRef::new(n).ok()?,
        e: der::asn1::UintRef::new(e).ok()?,
    }
    .to_der()
    .ok()
}

/// CKA_EC_POINT is a DER OCTET STRING holding the point, but some tokens
/// return the bare point; accept both.
fn ec_point(v: &[u8], field_len: usize) -> Option<Vec<u8>> {
    if v.len() == 1 + 2 * field_len && v[0] == 0x04 {
        return Some(v.to_vec());
    }
    use der::Decode;
    let os = der::asn1::OctetStringRef::from_der(v).ok()?;
    let p = os.as_bytes();
    (p.len() == 1 + 2 * field_len && p[0] == 0x04).then(|| p.to_vec())
}

/// A private key on a PKCS#11 token. Signing sends only the hash (or
/// DigestInfo) to the token: the raw mechanisms CKM_RSA_PKCS, CKM_RSA_PKCS_PSS
/// and CKM_ECDSA are the ones nearly every token implements, and the message
/// never leaves the build host.
pub struct Pkcs11Key {
    /// Sessions are not Sync; the mutex serialises signing, which a token
    /// does one operation at a time per session anyway.
    session: Mutex<Session>,
    key: ObjectHandle,
    key_type: KeyType,
    public: Vec<u8>,
    token: String,
    origin: String,
}

impl Pkcs11Key {
    /// Open the private key named by `uri`, logging in to its token.
    pub fn open(uri: &str) -> Result<Pkcs11Key> {
        let uri = Pkcs11Uri::parse(uri)?;
        if let Some(t) = uri.object_type.as_deref() {
            if t != "private" {
                return Err(uri.err(format!("type={t}: a signing key must be type=private")));
            }
        }
        let Opened { session, token, .. } = open_session(&uri, true)?;
        let key = one_object(
            &uri,
            &session,
            ObjectClass::PRIVATE_KEY,
            "private key",
            &token,
        )?;
        Pkcs11Key::from_handle(&uri, session, key, token)
    }

    /// The key behind `key` (a private key handle visible in `session`):
    /// its type and public half, read from the token.
    fn from_handle(
        uri: &Pkcs11Uri,
        session: Session,
        key: ObjectHandle,
        token: String,
    ) -> Result<Pkcs11Key> {
        let a = attrs(
            &session,
            key,
            &[
                AttributeType::KeyType,
                AttributeType::Id,
                AttributeType::Label,
                AttributeType::Modulus,
                AttributeType::PublicExponent,
                AttributeType::EcParams,
                AttributeType::AlwaysAuthenticate,
                AttributeType::Sign,
            ],
        );
        let ck_type = a.iter().find_map(|a| match a {
            Attribute::KeyType(t) => Some(*t),
            _ => None,
        });
        let name = uri.object_name();
        if a.iter().any(|a| matches!(a, Attribute::Sign(false))) {
            return Err(uri.err(format!(
                "private key {name} on token '{token}' is not allowed to sign (CKA_SIGN is false)"
            )));
        }
        if a.iter()
            .any(|a| matches!(a, Attribute::AlwaysAuthenticate(true)))
        {
            return Err(uri.err(format!(
                "private key {name} on token '{token}' needs a login before every signature (CKA_ALWAYS_AUTHENTICATE), which is not supported"
            )));
        }
        let id = bytes_attr(&a, AttributeType::Id).filter(|v| !v.is_empty());
        let label = bytes_attr(&a, AttributeType::Label)
            .filter(|v| !v.is_empty())
            .and_then(|v| String::from_utf8(v).ok());
        // The public half: a public key object or certificate sharing the
        // private key's CKA_ID (the PKCS#11 convention), else its label.
        let (sel_label, sel_id) = match &id {
            Some(i) => (None, Some(i.as_slice())),
            None => (label.as_deref(), None),
        };
        let pubobj = find(&session, ObjectClass::PUBLIC_KEY, sel_label, sel_id)
            .unwrap_or_default()
            .first()
            .map(|&o| {
                attrs(
                    &session,
                    o,
                    &[
                        AttributeType::Modulus,
                        AttributeType::PublicExponent,
                        AttributeType::EcPoint,
                    ],
                )
            })
            .unwrap_or_default();
        let cert_spki = || -> Option<Vec<u8>> {
            let c = *find(&session, ObjectClass::CERTIFICATE, sel_label, sel_id)
                .ok()?
                .first()?;
            let der = bytes_attr(
                &attrs(&session, c, &[AttributeType::Value]),
                AttributeType::Value,
            )?;
            let (_, x) = x509_parser::parse_x509_certificate(&der).ok()?;
            Some(x.public_key().subject_public_key.data.to_vec())
        };
        let no_public = || {
            uri.err(format!(
                "no public key or certificate object for private key {name} on token '{token}' (import one with the same id)"
            ))
        };
        let (key_type, public) = match ck_type {
            Some(t) if t == CkKeyType::RSA => {
                let from = |src: &[Attribute]| {
                    let n = bytes_attr(src, AttributeType::Modulus)?;
                    let e = bytes_attr(src, AttributeType::PublicExponent)?;
                    let bits = (n.iter().skip_while(|&&b| b == 0).count() * 8) as u32;
                    Some((bits, rsa_public_der(&n, &e)?))
                };
                // The private key's own modulus is authoritative; a stray
                // public object with the same id must not decide what we sign for.
                let (bits, public) = from(&a)
                    .or_else(|| from(&pubobj))
                    .or_else(|| {
                        let spki = cert_spki()?;
                        Some((rsa_bits_from_der(&spki)?, spki))
                    })
                    .ok_or_else(no_public)?;
                (KeyType::Rsa(bits), public)
            }
            Some(t) if t == CkKeyType::EC => {
                let params = bytes_attr(&a, AttributeType::EcParams).unwrap_or_default();
                let (kt, field) = if params == OID_P256 {
                    (KeyType::EcP256, 32)
                } else if params == OID_P384 {
                    (KeyType::EcP384, 48)
                } else {
                    return Err(uri.err(format!(
                        "private key {name} on token '{token}' uses an unsupported curve (expected P-256 or P-384)"
                    )));
                };
                let public = bytes_attr(&pubobj, AttributeType::EcPoint)
                    .and_then(|p| ec_point(&p, field))
                    .or_else(cert_spki)
                    .ok_or_else(no_public)?;
                (kt, public)
            }
            other => {
                return Err(uri.err(format!(
                    "private key {name} on token '{token}' has unsupported key type {}",
                    other
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "(unknown)".into())
                )))
            }
        };
        Ok(Pkcs11Key {
            session: Mutex::new(session),
            key,
            key_type,
            public,
            token,
            origin: uri.shown().to_string(),
        })
    }
}

/// Bits of the modulus of a DER RSAPublicKey.
fn rsa_bits_from_der(der_bytes: &[u8]) -> Option<u32> {
    use der::Decode;
    let k = RsaPublicKey::from_der(der_bytes).ok()?;
    Some((k.n.as_bytes().len() * 8) as u32)
}

impl Signer for Pkcs11Key {
    fn key_type(&self) -> KeyType {
        self.key_type
    }

    fn public_key(&self) -> &[u8] {
        &self.public
    }

    fn sign(&self, scheme: Scheme, msg: &[u8]) -> Result<Vec<u8>> {
        let refuse = |needs: &str| {
            Err(Error::Usage(format!(
                "{} is {}; {} needs {needs}",
                self.origin,
                self.key_type,
                scheme.name()
            )))
        };
        let hash = scheme.hash();
        let digest = hash.digest(msg);
        let (mech, mech_name, data) = match (self.key_type, scheme) {
            (KeyType::Rsa(_), Scheme::RsaPkcs1(_)) => {
                let info = hash
                    .digest_info(&digest)
                    .map_err(|e| Error::Internal(format!("DigestInfo: {e}")))?;
                (Mechanism::RsaPkcs, "CKM_RSA_PKCS", info)
            }
            (KeyType::Rsa(_), Scheme::RsaPss { salt, .. }) => {
                let (hash_alg, mgf) = match hash {
                    Hash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
                    Hash::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
                    Hash::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
                };
                let params = PkcsPssParams {
                    hash_alg,
                    mgf,
                    s_len: u64::from(salt).into(),
                };
                (Mechanism::RsaPkcsPss(params), "CKM_RSA_PKCS_PSS", digest)
            }
            (KeyType::EcP256, Scheme::Ecdsa(Hash::Sha256))
            | (KeyType::EcP384, Scheme::Ecdsa(Hash::Sha384)) => {
                (Mechanism::Ecdsa, "CKM_ECDSA", digest)
            }
            (KeyType::EcP256 | KeyType::EcP384, Scheme::Ecdsa(Hash::Sha512)) => {
                // ECDSA uses the leftmost order-size bits of the hash (FIPS
                // 186-4, 6.4); cutting it here spares tokens that insist on
                // a hash no longer than the order.
                let n = if self.key_type == KeyType::EcP384 {
                    48
                } else {
                    32
                };
                (Mechanism::Ecdsa, "CKM_ECDSA", digest[..n].to_vec())
            }
            (KeyType::Rsa(_), _) => return refuse("another key type"),
            (_, Scheme::Ecdsa(_)) => return refuse("the matching curve"),
            _ => return refuse("an RSA key or another scheme"),
        };
        let session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let sig = session.sign(&mech, self.key, &data).map_err(|e| {
            Error::Crypto(format!(
                "{}: PKCS#11 signing with {mech_name} on token '{}' failed: {}",
                self.origin,
                self.token,
                ckr(&e)
            ))
        })?;
        if mech_name != "CKM_ECDSA" {
            return Ok(sig);
        }
        // Tokens return r||s; CMS, Authenticode and X.509 want ECDSA-Sig-Value.
        if sig.is_empty() || sig.len() % 2 != 0 {
            return Err(Error::Crypto(format!(
                "{}: token returned a malformed ECDSA signature ({} bytes)",
                self.origin,
                sig.len()
            )));
        }
        let (r, s) = sig.split_at(sig.len() / 2);
        use der::Encode;
        EcdsaSig {
            r: der::asn1::UintRef::new(r).map_err(|e| Error::Crypto(e.to_string()))?,
            s: der::asn1::UintRef::new(s).map_err(|e| Error::Crypto(e.to_string()))?,
        }
        .to_der()
        .map_err(|e| Error::Crypto(e.to_string()))
    }

    fn origin(&self) -> String {
        self.origin.clone()
    }
}

/// The DER certificate named by `uri` (a CKO_CERTIFICATE object). Certificates
/// are usually public objects; the token is logged in to only if the
/// certificate is not visible without it.
pub fn read_cert(uri: &str) -> Result<Vec<u8>> {
    let uri = Pkcs11Uri::parse(uri)?;
    if let Some(t) = uri.object_type.as_deref() {
        if t != "cert" {
            return Err(uri.err(format!("type={t}: a certificate must be type=cert")));
        }
    }
    let o = open_session(&uri, false)?;
    let (session, token) = (&o.session, &o.token);
    let obj = match one_object(
        &uri,
        session,
        ObjectClass::CERTIFICATE,
        "certificate",
        token,
    ) {
        Ok(obj) => obj,
        Err(first) => {
            if pin(&uri)?.is_none() {
                return Err(first);
            }
            login(&uri, &o)?;
            one_object(
                &uri,
                session,
                ObjectClass::CERTIFICATE,
                "certificate",
                token,
            )?
        }
    };
    bytes_attr(
        &attrs(session, obj, &[AttributeType::Value]),
        AttributeType::Value,
    )
    .filter(|v| !v.is_empty())
    .ok_or_else(|| {
        uri.err(format!(
            "certificate {} on token '{token}' has no readable CKA_VALUE",
            uri.object_name()
        ))
    })
}

/// Percent-encode a URI attribute value. `keep` lists the reserved
/// characters that may stay literal where the value goes (RFC 7512 differs
/// between path and query).
fn pct(v: &[u8], keep: &[u8]) -> String {
    let mut out = String::with_capacity(v.len());
    for &b in v {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

impl Pkcs11Uri {
    /// The URI of object `label`/`id` on the token this URI selects: the
    /// token attributes as given, plus `module-path` if it was given. Never
    /// the PIN source: a PIN file path is the caller's secret plumbing and
    /// may not exist on the machine that later signs.
    pub fn object_uri(&self, label: &str, id: &[u8]) -> String {
        const PATH_KEEP: &[u8] = b":@!$'()*+,=";
        let mut parts: Vec<String> = vec![];
        let mut add = |name: &str, v: Option<&[u8]>| {
            if let Some(v) = v {
                parts.push(format!("{name}={}", pct(v, PATH_KEEP)));
            }
        };
        add("token", self.token.as_deref().map(str::as_bytes));
        add(
            "manufacturer",
            self.manufacturer.as_deref().map(str::as_bytes),
        );
        add("model", self.model.as_deref().map(str::as_bytes));
        add("serial", self.serial.as_deref().map(str::as_bytes));
        let slot = self.slot_id.map(|n| n.to_string());
        add("slot-id", slot.as_deref().map(str::as_bytes));
        add("object", Some(label.as_bytes()));
        parts.push(format!("id={}", percent_encode(id)));
        let mut uri = format!("pkcs11:{}", parts.join(";"));
        if let Some(m) = &self.module_path {
            uri.push_str("?module-path=");
            uri.push_str(&pct(m.as_os_str().as_encoded_bytes(), b"/:@!$'()*+,;"));
        }
        uri
    }
}

/// A token opened read-write to create a PKI's keys in it (`pki init --hsm`).
///
/// Every object it creates is remembered and destroyed again when the writer
/// is dropped without `commit`: a failed or interrupted init must not leave
/// keys behind that the next run would refuse to overwrite.
pub struct TokenWriter {
    uri: Pkcs11Uri,
    ctx: Pkcs11,
    slot: Slot,
    session: Session,
    token: String,
    created: Vec<ObjectHandle>,
    committed: bool,
}

/// Generate a key pair labelled `label` with a fresh random CKA_ID; returns
/// (public, private, id). The private key is sensitive and never
/// extractable, and may only sign: a PKI key that can also decrypt or unwrap
/// invites misuse.
fn keypair(
    session: &Session,
    uri: &Pkcs11Uri,
    token: &str,
    label: &str,
    kt: KeyType,
) -> Result<(ObjectHandle, ObjectHandle, Vec<u8>)> {
    let mut id = vec![0u8; 16];
    aws_lc_rs::rand::fill(&mut id).map_err(|_| Error::Crypto("RNG failed".into()))?;
    let mut public = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.clone()),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
    ];
    let private = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.clone()),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ];
    let mech = match kt {
        KeyType::Rsa(bits) => {
            public.push(Attribute::ModulusBits((bits as std::ffi::c_ulong).into()));
            public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
            Mechanism::RsaPkcsKeyPairGen
        }
        KeyType::EcP256 => {
            public.push(Attribute::EcParams(OID_P256.to_vec()));
            Mechanism::EccKeyPairGen
        }
        KeyType::EcP384 => {
            public.push(Attribute::EcParams(OID_P384.to_vec()));
            Mechanism::EccKeyPairGen
        }
    };
    let (pubh, privh) = session
        .generate_key_pair(&mech, &public, &private)
        .map_err(|e| {
            uri.err(format!(
                "generating {kt} key '{label}' on token '{token}' failed: {}",
                ckr(&e)
            ))
        })?;
    Ok((pubh, privh, id))
}

/// A key pair just generated on the token.
pub struct GeneratedKey {
    pub id: Vec<u8>,
    /// `pkcs11:token=...;object=LABEL;id=...` naming both the private key
    /// and (once stored) the certificate.
    pub uri: String,
    pub key: Pkcs11Key,
}

impl TokenWriter {
    /// Open the token `uri` selects (no object attributes), logged in as the user.
    pub fn open(uri: &str) -> Result<TokenWriter> {
        let uri = Pkcs11Uri::parse(uri)?;
        if uri.object.is_some() || uri.id.is_some() || uri.object_type.is_some() {
            return Err(uri.err(
                "name only the token (pkcs11:token=NAME): the keys are labelled with their role names",
            ));
        }
        let (_, ctx, slot, token) = token(&uri)?;
        let info = ctx
            .get_token_info(slot)
            .map_err(|e| uri.err(format!("token '{token}': {}", ckr(&e))))?;
        if info.write_protected() {
            return Err(uri.err(format!("token '{token}' is write-protected")));
        }
        let session = ctx.open_rw_session(slot).map_err(|e| {
            uri.err(format!(
                "cannot open a read-write session on token '{token}': {}",
                ckr(&e)
            ))
        })?;
        let o = Opened {
            ctx,
            slot,
            session,
            token,
        };
        login(&uri, &o)?;
        Ok(TokenWriter {
            uri,
            ctx: o.ctx,
            slot: o.slot,
            session: o.session,
            token: o.token,
            created: vec![],
            committed: false,
        })
    }

    /// The token's label.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The `--hsm` URI as given, without its query (safe to print).
    pub fn shown(&self) -> &str {
        self.uri.shown()
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        self.uri.err(msg)
    }

    /// The labels among `labels` that some object on the token already has.
    pub fn labels_in_use(&self, labels: &[&str]) -> Result<Vec<String>> {
        let mut used = vec![];
        for l in labels {
            let hits = self
                .session
                .find_objects(&[Attribute::Label(l.as_bytes().to_vec())])
                .map_err(|e| {
                    self.err(format!(
                        "searching token '{}' failed: {}",
                        self.token,
                        ckr(&e)
                    ))
                })?;
            if !hits.is_empty() {
                used.push(l.to_string());
            }
        }
        Ok(used)
    }

    /// Refuse key types the token cannot generate or sign with, before
    /// anything is created.
    pub fn check_supports(&self, kt: KeyType) -> Result<()> {
        let (gen, gen_name, sign, sign_name) = match kt {
            KeyType::Rsa(_) => (
                MechanismType::RSA_PKCS_KEY_PAIR_GEN,
                "CKM_RSA_PKCS_KEY_PAIR_GEN",
                MechanismType::RSA_PKCS,
                "CKM_RSA_PKCS",
            ),
            KeyType::EcP256 | KeyType::EcP384 => (
                MechanismType::ECC_KEY_PAIR_GEN,
                "CKM_EC_KEY_PAIR_GEN",
                MechanismType::ECDSA,
                "CKM_ECDSA",
            ),
        };
        let list = self.ctx.get_mechanism_list(self.slot).map_err(|e| {
            self.err(format!(
                "token '{}': listing mechanisms failed: {}",
                self.token,
                ckr(&e)
            ))
        })?;
        for (m, name) in [(gen, gen_name), (sign, sign_name)] {
            if !list.contains(&m) {
                return Err(self.err(format!(
                    "token '{}' does not support {name}, needed for {kt} keys",
                    self.token
                )));
            }
        }
        if let KeyType::Rsa(bits) = kt {
            if let Ok(info) = self.ctx.get_mechanism_info(self.slot, gen) {
                let (min, max) = (info.min_key_size(), info.max_key_size());
                let bits = bits as usize;
                if bits < min || (max > 0 && bits > max) {
                    return Err(self.err(format!(
                        "token '{}' generates RSA keys of {min}..{max} bits, not {bits}",
                        self.token
                    )));
                }
            }
        }
        Ok(())
    }

    /// Generate one signing key pair per (label, type), each with a fresh
    /// random CKA_ID; results keep input order. Key generation is what a PKI
    /// init waits for (RSA-4096 in SoftHSM2 takes seconds), and tokens serve
    /// sessions in parallel, so several sessions generate at once.
    pub fn generate_many(&mut self, items: &[(&str, KeyType)]) -> Result<Vec<GeneratedKey>> {
        use std::sync::atomic::{AtomicUsize, Ordering};

        let want = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(items.len())
            .max(1);
        // Tokens limit sessions; run with as many as it grants (at least one).
        let mut sessions = vec![];
        for _ in 0..want {
            match self.ctx.open_rw_session(self.slot) {
                Ok(s) => sessions.push(s),
                Err(e) if sessions.is_empty() => {
                    return Err(self.err(format!(
                        "cannot open a read-write session on token '{}': {}",
                        self.token,
                        ckr(&e)
                    )))
                }
                Err(_) => break,
            }
        }
        let next = AtomicUsize::new(0);
        type Pair = Result<(ObjectHandle, ObjectHandle, Vec<u8>)>;
        let out: Mutex<Vec<Option<Pair>>> = Mutex::new((0..items.len()).map(|_| None).collect());
        let (uri, token) = (&self.uri, self.token.as_str());
        std::thread::scope(|s| {
            for session in sessions {
                let (next, out) = (&next, &out);
                s.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(label, kt)) = items.get(i) else {
                        break;
                    };
                    let r = keypair(&session, uri, token, label, kt);
                    out.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                });
            }
        });
        let results = out.into_inner().unwrap_or_else(|e| e.into_inner());
        // Record every object made before reporting any failure, so that
        // dropping the writer removes them all.
        for (pubh, privh, _) in results.iter().flatten().flatten() {
            self.created.push(*pubh);
            self.created.push(*privh);
        }
        let mut keys = Vec::with_capacity(items.len());
        for (r, &(label, kt)) in results.into_iter().zip(items) {
            let (_, privh, id) =
                r.unwrap_or_else(|| Err(Error::Crypto("key generation did not run".into())))?;
            let uri = self.uri.object_uri(label, &id);
            let parsed = Pkcs11Uri::parse(&uri)?;
            // Each key its own session, so keys can sign independently.
            let session = self.ctx.open_ro_session(self.slot).map_err(|e| {
                self.err(format!(
                    "cannot open a session on token '{}': {}",
                    self.token,
                    ckr(&e)
                ))
            })?;
            let key = Pkcs11Key::from_handle(&parsed, session, privh, self.token.clone())?;
            if key.key_type() != kt {
                return Err(self.err(format!(
                    "token '{}' generated a {} key for '{label}' instead of {kt}",
                    self.token,
                    key.key_type()
                )));
            }
            keys.push(GeneratedKey { id, uri, key });
        }
        Ok(keys)
    }

    /// Store certificate `der` as a public CKO_CERTIFICATE object beside the
    /// key with the same label and id, the PKCS#11 convention that lets
    /// other tools (and `--cert pkcs11:...`) pair them.
    pub fn store_cert(&mut self, label: &str, id: &[u8], der_cert: &[u8]) -> Result<()> {
        let (_, x) = x509_parser::parse_x509_certificate(der_cert)
            .map_err(|e| self.err(format!("certificate for '{label}': {e}")))?;
        let serial = {
            use der::Encode;
            der::asn1::IntRef::new(x.tbs_certificate.raw_serial())
                .and_then(|i| i.to_der())
                .map_err(|e| self.err(format!("certificate for '{label}': serial: {e}")))?
        };
        let template = [
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(cryptoki::object::CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
            Attribute::Subject(x.subject().as_raw().to_vec()),
            Attribute::Issuer(x.issuer().as_raw().to_vec()),
            Attribute::SerialNumber(serial),
            Attribute::Value(der_cert.to_vec()),
        ];
        let h = self.session.create_object(&template).map_err(|e| {
            self.err(format!(
                "storing the certificate of '{label}' on token '{}' failed: {}",
                self.token,
                ckr(&e)
            ))
        })?;
        self.created.push(h);
        Ok(())
    }

    /// Fails if some label among `labels` has more than the one private key
    /// this writer made: another process generated into the token at the
    /// same time, and nobody could tell the keys apart.
    pub fn check_unique(&self, labels: &[&str]) -> Result<()> {
        for l in labels {
            let n = find(&self.session, ObjectClass::PRIVATE_KEY, Some(l), None)
                .map(|v| v.len())
                .unwrap_or(0);
            if n > 1 {
                return Err(self.err(format!(
                    "token '{}' now holds {n} private keys labelled '{l}': another pki init wrote to it at the same time",
                    self.token
                )));
            }
        }
        Ok(())
    }

    /// Keep everything created so far.
    pub fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for TokenWriter {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // Best effort: the session may be the thing that failed.
        for h in self.created.drain(..).rev() {
            let _ = self.session.destroy_object(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_path_and_query() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=My%20Token;object=ssig;id=%01%02;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin",
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("My Token"));
        assert_eq!(u.object.as_deref(), Some("ssig"));
        assert_eq!(u.id.as_deref(), Some(&[1u8, 2][..]));
        assert_eq!(u.object_type.as_deref(), Some("private"));
        assert_eq!(
            u.module_path.as_deref(),
            Some(Path::new("/usr/lib/softhsm/libsofthsm2.so"))
        );
        assert_eq!(u.pin_source.as_deref(), Some("file:/run/pin"));
        assert_eq!(
            u.shown(),
            "pkcs11:token=My%20Token;object=ssig;id=%01%02;type=private"
        );
    }

    #[test]
    fn refuses_pin_in_uri_without_echoing_it() {
        let e = Pkcs11Uri::parse("pkcs11:token=t;object=k?pin-value=s3cret")
            .unwrap_err()
            .to_string();
        assert!(e.contains(PIN_ENV), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn refuses_bad_attributes() {
        for bad in [
            "pkcs11:token=a;token=b",
            "pkcs11:token=a;object=%zz",
            "pkcs11:token=a;module-path=/x.so",
            "pkcs11:token=a;frobnicate=1",
            "pkcs11:token=a?module-name=softhsm2",
        ] {
            assert!(Pkcs11Uri::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn object_uris_round_trip_and_never_carry_the_pin_source() {
        let t = Pkcs11Uri::parse(
            "pkcs11:token=Prod%20CA%3b1;serial=42?module-path=/opt/hsm/lib%20x.so&pin-source=file:/run/pin",
        )
        .unwrap();
        let s = t.object_uri("ssig_subca", &[0x00, 0xab]);
        assert_eq!(
            s,
            "pkcs11:token=Prod%20CA%3b1;serial=42;object=ssig_subca;id=%00%ab?module-path=/opt/hsm/lib%20x.so"
        );
        let back = Pkcs11Uri::parse(&s).unwrap();
        assert_eq!(back.token.as_deref(), Some("Prod CA;1"));
        assert_eq!(back.serial.as_deref(), Some("42"));
        assert_eq!(back.object.as_deref(), Some("ssig_subca"));
        assert_eq!(back.id.as_deref(), Some(&[0x00, 0xab][..]));
        assert_eq!(
            back.module_path.as_deref(),
            Some(Path::new("/opt/hsm/lib x.so"))
        );
        assert_eq!(back.pin_source, None);
    }

    #[test]
    fn ckr_names() {
        let e = CkError::Pkcs11(RvError::PinIncorrect, cryptoki::context::Function::Login);
        assert_eq!(ckr(&e), "CKR_PIN_INCORRECT");
    }

    #[test]
    fn ec_point_both_forms() {
        let mut raw = vec![4u8];
        raw.extend([7u8; 64]);
        let mut wrapped = vec![4u8, 65];
        wrapped.extend(&raw);
        assert_eq!(ec_point(&raw, 32).unwrap(), raw);
        assert_eq!(ec_point(&wrapped, 32).unwrap(), raw);
    }
}
