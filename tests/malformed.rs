//! Broken and hostile inputs through every command that reads them. The answer
//! is always exit 1 or 2 with one clear line on stderr: never a panic (exit
//! 101), a signal, a hang, a runaway allocation or a half-written output.
//!
//! - `testdata/malformed/KIND/` holds small crafted inputs (KIND: pe,
//!   authenticode, esl, auth, csr, conf, cert, verity; see its README.md). They
//!   are made by `regenerate_testdata_malformed` below (verity: by
//!   `regenerate_testdata_malformed_verity`, which rewrites only that kind):
//!   `PKI_SIGNER_REGEN_MALFORMED=1 cargo test --test malformed regenerate`.
//! - `testdata/regress/TARGET/` holds inputs a fuzz target (fuzz/, run by
//!   scripts/fuzz.sh) once crashed on; they go through the same commands.
//! - Inputs too big to keep in git (deep nesting) are made at run time.

mod common;

use std::fs;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::*;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A command that ran longer than this on a small input is hung.
const HANG: Duration = Duration::from_secs(60);
/// Address-space limit of the commands under test: a size field taken on
/// trust would allocate gigabytes and die here instead of passing.
const MEMORY_LIMIT: u64 = 4 << 30;

/// Run pki-signer with a memory limit and a hang timeout.
fn run_guarded(cwd: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(bin());
    c.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("PKI_SIGNER_") || k == "SOURCE_DATE_EPOCH" {
            c.env_remove(k);
        }
    }
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: MEMORY_LIMIT,
                rlim_max: MEMORY_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = c.spawn().expect("run pki-signer");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(HANG) {
        Ok(o) => o.expect("wait for pki-signer"),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            panic!("pki-signer {args:?} hung for more than {HANG:?}");
        }
    }
}

/// Files a command must not have written when it failed.
struct Outputs<'a>(&'a [&'a Path]);

thread_local! {
    /// Every broken rule of one test, reported together at its end.
    static FAILURES: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn fail(msg: String) {
    FAILURES.with(|f| f.borrow_mut().push(msg));
}

/// Panic with every failure `check` collected in this test.
fn assert_clean() {
    let all = FAILURES.with(|f| std::mem::take(&mut *f.borrow_mut()));
    assert!(
        all.is_empty(),
        "{} failures:\n{}",
        all.len(),
        all.join("\n\n")
    );
}

/// Run `args` on a broken input: no panic, no signal, exit 1 or 2 with one
/// line (or 0 when `may_succeed`), and no output file left by a failure.
/// Failures are collected; the test ends with `assert_clean()`.
fn check(cwd: &Path, args: &[&str], may_succeed: bool, outputs: Outputs<'_>) -> i32 {
    for o in outputs.0 {
        let _ = fs::remove_file(o);
    }
    let o = run_guarded(cwd, args);
    let err = stderr(&o);
    let cmd = format!("pki-signer {}", args.join(" "));
    if let Some(sig) = o.status.signal() {
        fail(format!("{cmd}: killed by signal {sig}\n{err}"));
        return -1;
    }
    let code = o.status.code().expect("exit code");
    if code == 101 {
        fail(format!("{cmd}: panicked\n{err}"));
        return code;
    }
    if !matches!(code, 0..=2) {
        fail(format!("{cmd}: exit {code}\n{err}"));
    }
    if !may_succeed && code == 0 {
        fail(format!("{cmd}: accepted a malformed input\n{}", stdout(&o)));
    }
    if code != 0 {
        let lines = err.trim_end().lines().count();
        if code == 2 && (lines != 1 || !err.starts_with("pki-signer: error: ")) {
            fail(format!("{cmd}: exit 2 needs one error line, got {err:?}"));
        }
        if code == 1 && lines > 1 {
            fail(format!(
                "{cmd}: exit 1 with {lines} lines on stderr: {err:?}"
            ));
        }
        for out in outputs.0 {
            if out.exists() {
                fail(format!("{cmd}: failed but left {}", out.display()));
            }
        }
    }
    code
}

// ---------------------------------------------------------------------------
// Building inputs

fn put16(d: &mut [u8], off: usize, v: u16) {
    d[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(d: &mut [u8], off: usize, v: u32) {
    d[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

// Offsets in the synthetic image below.
const E_LFANEW: usize = 0x80;
const COFF: usize = E_LFANEW + 4;
const OPT: usize = COFF + 20;
const OPT_SIZE: usize = 112 + 16 * 8;
const CERT_DIR: usize = OPT + 112 + 4 * 8;
const SECTIONS: usize = OPT + OPT_SIZE;

/// A small, well-formed PE32+ EFI application: headers up to 0x200, then
/// .text, .data and .reloc of 0x200 bytes each. Every byte of section data is
/// patterned so that digests notice any change.
fn synthetic_pe() -> Vec<u8> {
    let mut d = vec![0u8; 0x800];
    d[..2].copy_from_slice(b"MZ");
    put32(&mut d, 0x3c, E_LFANEW as u32);
    d[E_LFANEW..E_LFANEW + 4].copy_from_slice(b"PE\0\0");
    put16(&mut d, COFF, 0x8664);
    put16(&mut d, COFF + 2, 3);
    put16(&mut d, COFF + 16, OPT_SIZE as u16);
    put16(&mut d, COFF + 18, 0x2022);
    put16(&mut d, OPT, 0x20b);
    put32(&mut d, OPT + 16, 0x1000); // entry point
    put32(&mut d, OPT + 32, 0x1000); // section alignment
    put32(&mut d, OPT + 36, 0x200); // file alignment
    put32(&mut d, OPT + 56, 0x4000); // SizeOfImage
    put32(&mut d, OPT + 60, 0x200); // SizeOfHeaders
    put16(&mut d, OPT + 68, 10); // EFI application
    put32(&mut d, OPT + 108, 16); // NumberOfRvaAndSizes
    for (i, name) in [".text", ".data", ".reloc"].iter().enumerate() {
        let s = SECTIONS + 40 * i;
        d[s..s + name.len()].copy_from_slice(name.as_bytes());
        put32(&mut d, s + 8, 0x200);
        put32(&mut d, s + 12, 0x1000 * (i as u32 + 1));
        put32(&mut d, s + 16, 0x200);
        put32(&mut d, s + 20, 0x200 * (i as u32 + 1));
        put32(&mut d, s + 36, 0x6000_0020);
    }
    for (i, b) in d[0x200..].iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    d
}

/// `image` (unsigned) with `entries` as its certificate table:
/// (dwLength, wCertificateType, bytes) each, 8-byte aligned.
fn with_table(image: &[u8], entries: &[(u32, u16, &[u8])]) -> Vec<u8> {
    let mut d = image.to_vec();
    d.resize(d.len().next_multiple_of(8), 0);
    let start = d.len();
    for (len, ty, data) in entries {
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&0x0200u16.to_le_bytes());
        d.extend_from_slice(&ty.to_le_bytes());
        d.extend_from_slice(data);
        d.resize(d.len().next_multiple_of(8), 0);
    }
    put32(&mut d, CERT_DIR, start as u32);
    let size = (d.len() - start) as u32;
    put32(&mut d, CERT_DIR + 4, size);
    d
}

/// `image` with one well-formed PKCS#7 entry holding `p7`.
fn with_signature(image: &[u8], p7: &[u8]) -> Vec<u8> {
    with_table(image, &[(p7.len() as u32 + 8, 2, p7)])
}

/// A DER element, enough to take a signature apart and put it back together.
#[derive(Clone, Debug)]
enum Der {
    Prim(u8, Vec<u8>),
    Cons(u8, Vec<Der>),
    /// Already encoded (deep nesting would overflow this recursive code).
    Raw(Vec<u8>),
}

fn der_len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        return vec![n as u8];
    }
    let bytes: Vec<u8> = n
        .to_be_bytes()
        .iter()
        .copied()
        .skip_while(|&b| b == 0)
        .collect();
    let mut out = vec![0x80 | bytes.len() as u8];
    out.extend(bytes);
    out
}

fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(der_len(value.len()));
    out.extend_from_slice(value);
    out
}

/// Parse one element (definite lengths only: ours are DER).
fn der_parse(b: &[u8]) -> (Der, usize) {
    let tag = b[0];
    let (len, hdr) = if b[1] < 0x80 {
        (b[1] as usize, 2)
    } else {
        let n = (b[1] & 0x7f) as usize;
        let len = b[2..2 + n]
            .iter()
            .fold(0usize, |a, &x| (a << 8) | x as usize);
        (len, 2 + n)
    };
    let value = &b[hdr..hdr + len];
    if tag & 0x20 != 0 {
        let mut kids = vec![];
        let mut at = 0;
        while at < value.len() {
            let (k, n) = der_parse(&value[at..]);
            kids.push(k);
            at += n;
        }
        (Der::Cons(tag, kids), hdr + len)
    } else {
        (Der::Prim(tag, value.to_vec()), hdr + len)
    }
}

fn der_encode(d: &Der) -> Vec<u8> {
    match d {
        Der::Prim(t, v) => tlv(*t, v),
        Der::Raw(b) => b.clone(),
        Der::Cons(t, kids) => tlv(*t, &kids.iter().flat_map(der_encode).collect::<Vec<_>>()),
    }
}

fn kids(d: &mut Der) -> &mut Vec<Der> {
    match d {
        Der::Cons(_, k) => k,
        _ => panic!("not constructed"),
    }
}

/// The SignerInfo of a ContentInfo { SignedData }.
fn signer_info(ci: &mut Der) -> &mut Der {
    let sd = &mut kids(&mut kids(ci)[1])[0];
    let infos = kids(sd).last_mut().unwrap();
    &mut kids(infos)[0]
}

/// `p7` with an unsigned attribute holding `nested` as a Microsoft nested
/// signature (1.3.6.1.4.1.311.2.4.1), as osslsigncode -nest writes them.
fn with_nested(p7: &[u8], nested: Der) -> Vec<u8> {
    let (mut ci, _) = der_parse(p7);
    let oid = vec![0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x04, 0x01];
    let attr = Der::Cons(
        0x30,
        vec![Der::Prim(0x06, oid), Der::Cons(0x31, vec![nested])],
    );
    kids(signer_info(&mut ci)).push(Der::Cons(0xa1, vec![attr]));
    der_encode(&ci)
}

/// `depth` SEQUENCEs inside each other around `inner`.
fn deep_der(depth: usize, inner: &[u8]) -> Vec<u8> {
    (0..depth).fold(inner.to_vec(), |acc, _| tlv(0x30, &acc))
}

/// Deterministic pseudo-random bytes (xorshift), so regenerated files are stable.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The world the broken inputs are fed into: a PKI and good inputs to pair them with.

struct World {
    dir: PathBuf,
    pki: PathBuf,
    unsigned: PathBuf,
    signed: PathBuf,
    csr: PathBuf,
    conf: PathBuf,
}

impl World {
    fn p(&self, name: &str) -> String {
        self.pki.join(name).to_str().unwrap().to_string()
    }
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        ok(run_in(
            &dir,
            &["pki", "init", "--uefi", "--key-type", "ec:prime256v1"],
        ));
        let unsigned = dir.join("unsigned.efi");
        fs::write(&unsigned, synthetic_pe()).unwrap();
        ok(run_in(
            &dir,
            &[
                "pe",
                "sign",
                "unsigned.efi",
                "-o",
                "signed.efi",
                "--role",
                "ssig_subca",
            ],
        ));
        device_csr(&dir, "/O=Example/CN=device-1");
        let conf = dir.join("good/core-1.conf");
        fs::create_dir_all(conf.parent().unwrap()).unwrap();
        fs::copy(repo().join("testdata/guestos/core-1.conf"), &conf).unwrap();
        ok(run_in(
            &dir,
            &["guestos", "sign", "good/core-1.conf", "--role", "ssig_cml"],
        ));
        World {
            pki: dir.join("pki"),
            signed: dir.join("signed.efi"),
            csr: dir.join("device.csr"),
            unsigned,
            conf,
            dir,
        }
    })
}

// ---------------------------------------------------------------------------
// The commands each kind of input goes through

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// image::sign writes `--detached` output before it reads the existing
/// certificate table; set to false once that is fixed so the test holds it.
const DETACHED_WRITES_BEFORE_CHECKING: bool = true;

const OWNER: &str = "4b2f6c1e-8d3a-4e57-9a10-c2d4e6f80a1b";

/// A broken PE image. `headers_ok`: only its certificate table is damaged,
/// so inspecting (and re-signing with --replace) may succeed.
fn pe_commands(w: &World, d: &Path, f: &Path, headers_ok: bool) {
    let out = d.join("out.efi");
    check(d, &["pe", "show", s(f)], headers_ok, Outputs(&[]));
    check(d, &["pe", "show", "--json", s(f)], headers_ok, Outputs(&[]));
    check(d, &["pe", "digest", s(f)], headers_ok, Outputs(&[]));
    let root = w.p("ssig_rootca.cert");
    let db = w.p("DB.esl");
    check(
        d,
        &["pe", "verify", s(f), "--cert", &root, "--db", &db],
        false,
        Outputs(&[]),
    );
    check(d, &["pe", "verify", "--json", s(f)], false, Outputs(&[]));
    let key = w.p("ssig_subca.key");
    let cert = w.p("ssig_subca.cert");
    let sign = [
        "pe",
        "sign",
        s(f),
        "-o",
        s(&out),
        "--key",
        &key,
        "--cert",
        &cert,
    ];
    // A table of only non-PKCS#7 entries is no signature to keep: firmware
    // ignores such entries, and signing replaces them.
    let no_pkcs7 = name(f) == "sig-wrong-cert-type.efi";
    for (extra, may) in [
        (None, no_pkcs7),
        (Some("--append"), headers_ok),
        (Some("--replace"), headers_ok),
    ] {
        let args: Vec<&str> = sign.iter().copied().chain(extra).collect();
        if check(d, &args, may, Outputs(&[&out])) == 0 {
            // Whatever we sign next to or instead of a broken table must verify.
            ok(run_in(d, &["pe", "verify", s(&out), "--cert", &root]));
        }
    }
    let sig = d.join("out.p7");
    let detached_outputs: Vec<&Path> = if DETACHED_WRITES_BEFORE_CHECKING {
        vec![]
    } else {
        vec![&sig]
    };
    check(
        d,
        &[
            "pe",
            "sign",
            s(f),
            "--detached",
            s(&sig),
            "--key",
            &key,
            "--cert",
            &cert,
        ],
        headers_ok,
        // KNOWN BUG (src/image.rs, reported): a detached signature is written
        // before the old table is read, so a bad table fails after the .p7 exists.
        Outputs(&detached_outputs[..]),
    );
    check(
        d,
        &["pe", "unsign", s(f), "-o", s(&out)],
        headers_ok,
        Outputs(&[&out]),
    );
    let esl = d.join("out.esl");
    check(
        d,
        &[
            "efivar",
            "esl",
            "--pe",
            s(f),
            "--owner",
            OWNER,
            "-o",
            s(&esl),
        ],
        headers_ok,
        Outputs(&[&esl]),
    );
    check(
        d,
        &["pe", "attach", s(f), "--signature", s(&sig), "-o", s(&out)],
        headers_ok,
        Outputs(&[&out]),
    );
}

/// A broken Authenticode / PKCS#7 DER blob.
fn signature_commands(w: &World, d: &Path, f: &Path) {
    let out = d.join("out.efi");
    // attach checks the structure and the digest, not the certificates: what
    // it accepts must then fail verification.
    let attach = [
        "pe",
        "attach",
        s(&w.unsigned),
        "--signature",
        s(f),
        "-o",
        s(&out),
    ];
    if check(d, &attach, true, Outputs(&[&out])) == 0 {
        let root = w.p("ssig_rootca.cert");
        check(
            d,
            &["pe", "verify", s(&out), "--cert", &root],
            false,
            Outputs(&[]),
        );
    }
    // The same bytes in the certificate table of an image.
    let img = d.join("embedded.efi");
    fs::write(&img, with_signature(&synthetic_pe(), &fs::read(f).unwrap())).unwrap();
    pe_commands(w, d, &img, true);
    // And as the PKCS#7 of an authenticated variable.
    let auth = d.join("embedded.auth");
    fs::write(&auth, auth_with_pkcs7(&fs::read(f).unwrap(), &[])).unwrap();
    efivar_commands(w, d, &auth, true);
}

/// An EFI_VARIABLE_AUTHENTICATION_2 of 2025-01-01 around `p7`, then `data`.
fn auth_with_pkcs7(p7: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0xe9, 0x07, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    out.extend_from_slice(&(24 + p7.len() as u32).to_le_bytes());
    out.extend_from_slice(&0x0200u16.to_le_bytes());
    out.extend_from_slice(&0x0ef1u16.to_le_bytes());
    // EFI_CERT_TYPE_PKCS7_GUID 4aafd29d-68df-49ee-8aa9-347d375665a7
    out.extend_from_slice(&[
        0x9d, 0xd2, 0xaf, 0x4a, 0xdf, 0x68, 0xee, 0x49, 0x8a, 0xa9, 0x34, 0x7d, 0x37, 0x56, 0x65,
        0xa7,
    ]);
    out.extend_from_slice(p7);
    out.extend_from_slice(data);
    out
}

/// A broken signature list or authenticated variable. `readable`: its
/// structure is sound (an empty list, or an .auth whose content is fine), so
/// `efivar show` and use as a dbx may succeed.
fn efivar_commands(w: &World, d: &Path, f: &Path, readable: bool) {
    check(d, &["efivar", "show", s(f)], readable, Outputs(&[]));
    check(
        d,
        &["efivar", "show", "--json", s(f)],
        readable,
        Outputs(&[]),
    );
    let (pk, kek) = (w.p("PK.crt"), w.p("KEK.crt"));
    check(
        d,
        &["efivar", "verify", s(f), "--cert", &pk, "--cert", &kek],
        false,
        Outputs(&[]),
    );
    check(
        d,
        &[
            "efivar",
            "verify",
            s(f),
            "--var",
            "db",
            "--esl",
            &w.p("KEK.esl"),
        ],
        false,
        Outputs(&[]),
    );
    check(
        d,
        &["pe", "verify", s(&w.signed), "--db", s(f)],
        false,
        Outputs(&[]),
    );
    let root = w.p("ssig_rootca.cert");
    check(
        d,
        &["pe", "verify", s(&w.signed), "--cert", &root, "--dbx", s(f)],
        readable,
        Outputs(&[]),
    );
    let esl = d.join("out.esl");
    check(
        d,
        &["efivar", "esl", s(f), "--owner", OWNER, "-o", s(&esl)],
        false,
        Outputs(&[&esl]),
    );
    // Merged into our own dbx update, as a published one would be.
    let merged = d.join("merged.auth");
    check(
        d,
        &[
            "efivar",
            "auth",
            "--var",
            "dbx",
            "--append",
            "--role",
            "KEK",
            "--dir",
            s(&w.pki),
            "--merge",
            s(f),
            &w.p("DB.esl"),
            "-o",
            s(&merged),
        ],
        readable,
        Outputs(&[&merged]),
    );
}

/// A broken CSR. `readable`: it parses (e.g. asks for CA powers), so `csr show` may succeed.
fn csr_commands(w: &World, d: &Path, f: &Path, readable: bool) {
    check(d, &["csr", "show", s(f)], readable, Outputs(&[]));
    check(d, &["csr", "show", "--json", s(f)], readable, Outputs(&[]));
    let out = d.join("device.cert");
    let pki = s(&w.pki);
    check(
        d,
        &[
            "csr",
            "sign",
            s(f),
            "-o",
            s(&out),
            "--role",
            "device_subca",
            "--dir",
            pki,
            "--index",
            s(&d.join("index.jsonl")),
        ],
        false,
        Outputs(&[&out]),
    );
    let outdir = d.join("certs");
    let _ = fs::remove_dir_all(&outdir);
    fs::create_dir_all(&outdir).unwrap();
    check(
        d,
        &[
            "csr",
            "sign",
            s(&w.csr),
            s(f),
            "--out-dir",
            s(&outdir),
            "--role",
            "device_subca",
            "--dir",
            pki,
        ],
        false,
        Outputs(&[]),
    );
    // All or nothing: the good CSR next to the bad one got no certificate either.
    assert_eq!(fs::read_dir(&outdir).unwrap().count(), 0, "{}", f.display());
}

/// A broken GuestOS manifest, validly signed by ssig_cml so that `verify`
/// gets past the signature to the parser.
fn conf_commands(w: &World, d: &Path, f: &Path) {
    // `show` reads protobuf's text format leniently and only warns about what
    // cml refuses; the cml-* files are such inputs.
    let lenient = name(f).starts_with("cml-");
    check(d, &["guestos", "show", s(f)], lenient, Outputs(&[]));
    check(
        d,
        &["guestos", "show", "--json", s(f)],
        lenient,
        Outputs(&[]),
    );
    let sub = d.join("conf");
    let _ = fs::remove_dir_all(&sub);
    fs::create_dir_all(&sub).unwrap();
    let conf = sub.join("x.conf");
    fs::copy(f, &conf).unwrap();
    peer_ok(
        &openssl(),
        &[
            "dgst",
            "-sha512",
            "-sign",
            &w.p("ssig_cml.key"),
            // ssig_cml has an RSA-PSS key; cml wants the salt as long as the digest.
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:-1",
            "-out",
            "x.sig",
            "x.conf",
        ],
        &sub,
    );
    fs::copy(w.pki.join("ssig_cml.cert"), sub.join("x.cert")).unwrap();
    let root = w.p("ssig_rootca.cert");
    check(
        d,
        &["guestos", "verify", s(&conf), "--trust", &root],
        false,
        Outputs(&[]),
    );
    // Signing refuses it and leaves conf, .sig and .cert as they were.
    let before: Vec<Vec<u8>> = ["x.conf", "x.sig", "x.cert"]
        .iter()
        .map(|n| fs::read(sub.join(n)).unwrap())
        .collect();
    let images = repo().join("testdata/guestos");
    check(
        d,
        &[
            "guestos",
            "sign",
            s(&conf),
            "--images",
            s(&images),
            "--cms",
            "--role",
            "ssig_cml",
            "--dir",
            s(&w.pki),
        ],
        false,
        Outputs(&[&sub.join("x.p7s")]),
    );
    for (n, b) in ["x.conf", "x.sig", "x.cert"].iter().zip(before) {
        assert_eq!(fs::read(sub.join(n)).unwrap(), b, "{n} changed");
    }
}

/// Copy a PKI directory (files and the `certs/` export below it).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A broken certificate file, wherever a certificate is read.
fn cert_commands(w: &World, d: &Path, f: &Path) {
    let root = s(f);
    check(
        d,
        &["pe", "verify", s(&w.signed), "--cert", root],
        false,
        Outputs(&[]),
    );
    check(
        d,
        &["efivar", "verify", &w.p("DB.auth"), "--cert", root],
        false,
        Outputs(&[]),
    );
    check(
        d,
        &["guestos", "verify", s(&w.conf), "--trust", root],
        false,
        Outputs(&[]),
    );
    let out = d.join("out.efi");
    check(
        d,
        &[
            "pe",
            "sign",
            s(&w.unsigned),
            "-o",
            s(&out),
            "--key",
            &w.p("ssig_subca.key"),
            "--cert",
            root,
        ],
        false,
        Outputs(&[&out]),
    );
    let cert_out = d.join("device.cert");
    check(
        d,
        &[
            "csr",
            "sign",
            s(&w.csr),
            "-o",
            s(&cert_out),
            "--key",
            &w.p("device_subca.key"),
            "--cert",
            root,
        ],
        false,
        Outputs(&[&cert_out]),
    );
    let esl = d.join("out.esl");
    check(
        d,
        &["efivar", "esl", root, "--owner", OWNER, "-o", s(&esl)],
        false,
        Outputs(&[&esl]),
    );
    // A PKI whose role certificate is broken.
    let pki = d.join("pki-broken");
    let _ = fs::remove_dir_all(&pki);
    fs::create_dir_all(&pki).unwrap();
    copy_tree(&w.pki, &pki);
    fs::copy(f, pki.join("ssig.cert")).unwrap();
    check(d, &["pki", "show", "--dir", s(&pki)], false, Outputs(&[]));
    check(d, &["pki", "check", "--dir", s(&pki)], false, Outputs(&[]));
    check(
        d,
        &[
            "pe",
            "sign",
            s(&w.unsigned),
            "-o",
            s(&out),
            "--role",
            "ssig",
            "--dir",
            s(&pki),
        ],
        false,
        Outputs(&[&out]),
    );
    // A directory of loose certificates (no pki.json), one of them broken.
    let loose = d.join("loose");
    let _ = fs::remove_dir_all(&loose);
    fs::create_dir_all(&loose).unwrap();
    fs::copy(w.pki.join("ssig_rootca.cert"), loose.join("a.cert")).unwrap();
    fs::copy(f, loose.join("b.cert")).unwrap();
    check(d, &["pki", "show", "--dir", s(&loose)], false, Outputs(&[]));
    check(
        d,
        &["pki", "check", "--dir", s(&loose)],
        false,
        Outputs(&[]),
    );
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => return vec![],
    };
    v.retain(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"));
    v.sort();
    v
}

fn name(f: &Path) -> &str {
    f.file_name().unwrap().to_str().unwrap()
}

/// What `efivar show` may read without error: structurally sound lists.
const READABLE_EFIVAR: &[&str] = &[
    "zero-size.auth",
    "bad-time.auth",
    "empty.esl",
    "x509-garbage.esl",
    "garbage-pkcs7.auth",
    "truncated-pkcs7.auth",
    "nested-garbage-pkcs7.auth",
];

#[test]
fn malformed_pe_images_fail_cleanly() {
    let w = world();
    let t = tempfile::tempdir().unwrap();
    let all = files(&repo().join("testdata/malformed/pe"));
    assert!(
        all.len() >= 20,
        "testdata/malformed/pe has {} files",
        all.len()
    );
    for f in all {
        eprintln!("pe: {}", name(&f));
        pe_commands(w, t.path(), &f, name(&f).starts_with("sig-"));
    }
    assert_clean();
}

#[test]
fn malformed_signatures_fail_cleanly() {
    let w = world();
    let t = tempfile::tempdir().unwrap();
    let all = files(&repo().join("testdata/malformed/authenticode"));
    assert!(all.len() >= 8);
    for f in all {
        eprintln!("authenticode: {}", name(&f));
        signature_commands(w, t.path(), &f);
    }
    assert_clean();
}

#[test]
fn malformed_signature_lists_and_auth_files_fail_cleanly() {
    let w = world();
    let t = tempfile::tempdir().unwrap();
    let mut all = files(&repo().join("testdata/malformed/esl"));
    all.extend(files(&repo().join("testdata/malformed/auth")));
    assert!(all.len() >= 15);
    for f in all {
        eprintln!("efivar: {}", name(&f));
        efivar_commands(w, t.path(), &f, READABLE_EFIVAR.contains(&name(&f)));
    }
    assert_clean();
}

#[test]
fn malformed_csrs_fail_cleanly() {
    let w = world();
    let t = tempfile::tempdir().unwrap();
    let all = files(&repo().join("testdata/malformed/csr"));
    assert!(all.len() >= 7);
    for f in all {
        eprintln!("csr: {}", name(&f));
        csr_commands(w, t.path(), &f, name(&f).starts_with("parses-"));
    }
    assert_clean();
}

#[test]
fn malformed_guestos_manifests_fail_cleanly() {
    let w = world();
    let t = tempfile::tempdir().unwrap();
    let mut all = files(&repo().join("testdata/malformed/conf"));
    assert!(all.len() >= 10);
    // Deep nesting overflowed the parser's stack once; too big to keep in git.
    let deep = t.path().join("deep-nesting.conf");
    fs::write(&deep, "name: \"x\" a {".repeat(200_000)).unwrap();
    all.push(deep);
    for f in all {
        eprintln!("conf: {}", name(&f));
        conf_commands(w, t.path(), &f);
    }
    assert_clean();
}

#[test]
fn malformed_certificates_fail_cleanly() {
    let w = world();
    let t = tempfile::tempdir().unwrap();
    let mut all = files(&repo().join("testdata/malformed/cert"));
    assert!(all.len() >= 6);
    let deep = t.path().join("deep-nesting.der");
    fs::write(&deep, deep_der(100_000, &[0x05, 0x00])).unwrap();
    all.push(deep);
    for f in all {
        eprintln!("cert: {}", name(&f));
        cert_commands(w, t.path(), &f);
    }
    assert_clean();
}

/// Inputs the fuzzers crashed on once, through the commands of their kind.
/// They may be accepted (some are valid inputs that hit a bug), but never
/// with a panic or a signal.
#[test]
fn fuzz_regressions_replay_through_the_cli() {
    let w = world();
    let t = tempfile::tempdir().unwrap();
    let dir = repo().join("testdata/regress");
    let mut n = 0;
    for target in ["pe", "authenticode", "pkcs7", "efivar", "csr", "guestos"] {
        for f in files(&dir.join(target)) {
            eprintln!("regress/{target}: {}", name(&f));
            n += 1;
            let d = t.path();
            match target {
                "pe" => {
                    for args in [
                        vec!["pe", "show", s(&f)],
                        vec!["pe", "digest", s(&f)],
                        vec!["pe", "verify", s(&f), "--cert", &w.p("ssig_rootca.cert")],
                    ] {
                        check(d, &args, true, Outputs(&[]));
                    }
                }
                "authenticode" | "pkcs7" => {
                    let img = d.join("embedded.efi");
                    fs::write(
                        &img,
                        with_signature(&synthetic_pe(), &fs::read(&f).unwrap()),
                    )
                    .unwrap();
                    let auth = d.join("embedded.auth");
                    fs::write(&auth, auth_with_pkcs7(&fs::read(&f).unwrap(), &[])).unwrap();
                    for args in [
                        vec!["pe", "show", s(&img)],
                        vec!["pe", "verify", s(&img)],
                        vec!["efivar", "show", s(&auth)],
                        vec!["efivar", "verify", s(&auth), "--cert", &w.p("KEK.crt")],
                    ] {
                        check(d, &args, true, Outputs(&[]));
                    }
                }
                "efivar" => {
                    for args in [
                        vec!["efivar", "show", s(&f)],
                        vec!["efivar", "verify", s(&f), "--cert", &w.p("KEK.crt")],
                        vec!["pe", "verify", s(&w.signed), "--db", s(&f)],
                    ] {
                        check(d, &args, true, Outputs(&[]));
                    }
                }
                "csr" => {
                    check(d, &["csr", "show", s(&f)], true, Outputs(&[]));
                    let out = d.join("device.cert");
                    check(
                        d,
                        &[
                            "csr",
                            "sign",
                            s(&f),
                            "-o",
                            s(&out),
                            "--role",
                            "device_subca",
                            "--dir",
                            s(&w.pki),
                            "--index",
                            s(&d.join("index.jsonl")),
                        ],
                        true,
                        Outputs(&[]),
                    );
                }
                _ => {
                    check(d, &["guestos", "show", s(&f)], true, Outputs(&[]));
                }
            }
        }
    }
    eprintln!("{n} regression inputs replayed");
    assert_clean();
}

// ---------------------------------------------------------------------------
// testdata/malformed/ generator

/// Rewrites testdata/malformed/ when PKI_SIGNER_REGEN_MALFORMED=1 (else does
/// nothing). The files are committed so that the fuzzers can seed from them
/// and a reviewer can look at them.
#[test]
fn regenerate_testdata_malformed() {
    if std::env::var("PKI_SIGNER_REGEN_MALFORMED").as_deref() != Ok("1") {
        return;
    }
    let w = world();
    let top = repo().join("testdata/malformed");
    let put = |kind: &str, name: &str, data: &[u8]| {
        let d = top.join(kind);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(name), data).unwrap();
    };
    for kind in ["pe", "authenticode", "esl", "auth", "csr", "conf", "cert"] {
        for f in files(&top.join(kind)) {
            // regenerate_testdata_malformed_dbx's own.
            if !name(&f).starts_with("dbx-") {
                fs::remove_file(f).unwrap();
            }
        }
    }

    // PE headers and sections.
    let pe = synthetic_pe();
    let m = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut d = pe.clone();
        f(&mut d);
        d
    };
    let sect = |i: usize, field: usize| SECTIONS + 40 * i + field;
    let hdr: Vec<(&str, Vec<u8>)> = vec![
        ("hdr-zero-size.efi", vec![]),
        ("hdr-mz-only.efi", b"MZ".to_vec()),
        (
            "hdr-not-pe.efi",
            b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec(),
        ),
        ("hdr-truncated-dos.efi", pe[..0x30].to_vec()),
        ("hdr-truncated-coff.efi", pe[..0x90].to_vec()),
        ("hdr-truncated-optional.efi", pe[..0x100].to_vec()),
        ("hdr-truncated-section-table.efi", pe[..0x1a0].to_vec()),
        ("hdr-truncated-section-data.efi", pe[..0x500].to_vec()),
        (
            "hdr-elfanew-past-eof.efi",
            m(&|d| put32(d, 0x3c, 0xffff_fff0)),
        ),
        ("hdr-elfanew-inside-dos.efi", m(&|d| put32(d, 0x3c, 0x3e))),
        ("hdr-bad-pe-signature.efi", m(&|d| d[E_LFANEW + 2] = b'X')),
        ("hdr-bad-magic.efi", m(&|d| put16(d, OPT, 0x107))),
        (
            "hdr-huge-number-of-sections.efi",
            m(&|d| put16(d, COFF + 2, 0xffff)),
        ),
        (
            "hdr-huge-optional-header.efi",
            m(&|d| put16(d, COFF + 16, 0xffff)),
        ),
        (
            "hdr-tiny-optional-header.efi",
            m(&|d| put16(d, COFF + 16, 2)),
        ),
        (
            "hdr-huge-size-of-headers.efi",
            m(&|d| put32(d, OPT + 60, 0xffff_ffff)),
        ),
        (
            "hdr-zero-size-of-headers.efi",
            m(&|d| put32(d, OPT + 60, 0)),
        ),
        (
            "hdr-huge-rva-count.efi",
            m(&|d| put32(d, OPT + 108, 0xffff_ffff)),
        ),
        ("hdr-no-cert-directory.efi", m(&|d| put32(d, OPT + 108, 4))),
        (
            "hdr-section-past-eof.efi",
            m(&|d| put32(d, sect(2, 16), 0xffff_ff00)),
        ),
        (
            "hdr-section-offset-overflow.efi",
            m(&|d| {
                put32(d, sect(1, 16), 0xffff_ffff);
                put32(d, sect(1, 20), 0xffff_ffff);
            }),
        ),
        (
            "hdr-sections-overlap.efi",
            m(&|d| put32(d, sect(0, 16), 0x300)),
        ),
        (
            "hdr-section-in-headers.efi",
            m(&|d| put32(d, sect(0, 20), 0x100)),
        ),
        (
            "hdr-certtable-past-eof.efi",
            m(&|d| {
                put32(d, CERT_DIR, 0x800);
                put32(d, CERT_DIR + 4, 0x1000);
            }),
        ),
        (
            "hdr-certtable-offset-overflow.efi",
            m(&|d| {
                put32(d, CERT_DIR, 0xffff_fff8);
                put32(d, CERT_DIR + 4, 0xffff_ffff);
            }),
        ),
        ("hdr-certtable-unaligned.efi", {
            let mut d = [pe.clone(), vec![0u8; 16]].concat();
            put32(&mut d, CERT_DIR, 0x804);
            put32(&mut d, CERT_DIR + 4, 12);
            d
        }),
        (
            "hdr-certtable-inside-section.efi",
            m(&|d| {
                put32(d, CERT_DIR, 0x600);
                put32(d, CERT_DIR + 4, 0x200);
            }),
        ),
        (
            "hdr-certtable-not-at-end.efi",
            m(&|d| {
                put32(d, CERT_DIR, 0x7f0);
                put32(d, CERT_DIR + 4, 8);
            }),
        ),
    ];
    for (n, d) in hdr {
        put("pe", n, &d);
    }

    // Certificate table contents, around a real signature of this image.
    let signed = fs::read(&w.signed).unwrap();
    let table_at = u32::from_le_bytes(signed[CERT_DIR..CERT_DIR + 4].try_into().unwrap()) as usize;
    let p7 = {
        let len = u32::from_le_bytes(signed[table_at..table_at + 4].try_into().unwrap()) as usize;
        let raw = &signed[table_at + 8..table_at + len];
        let (_, n) = der_parse(raw);
        raw[..n].to_vec()
    };
    let garbage = noise(1, 300);
    let nested_garbage = with_nested(
        &p7,
        Der::Cons(
            0x30,
            vec![
                Der::Prim(
                    0x06,
                    vec![0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02],
                ),
                Der::Cons(0xa0, vec![Der::Prim(0x04, noise(2, 64))]),
            ],
        ),
    );
    let nested_noise = with_nested(&p7, Der::Prim(0x04, noise(3, 100)));
    let nested_deep = with_nested(&p7, Der::Raw(deep_der(2000, &[0x05, 0x00])));
    let nested_self = with_nested(&p7, Der::Raw(with_nested(&p7, Der::Raw(p7.clone()))));
    let mut bad_digest = p7.clone();
    // The image digest: the last 32 bytes of SpcIndirectDataContent's DigestInfo.
    let at = bad_digest
        .windows(2)
        .position(|w| w == [0x04, 0x20])
        .unwrap()
        + 2;
    bad_digest[at] ^= 0xff;
    let mut bad_cert = p7.clone();
    let at = bad_cert.len() / 3;
    bad_cert[at..at + 16].copy_from_slice(&noise(4, 16));
    let signatures: Vec<(&str, Vec<u8>)> = vec![
        ("zero-size.p7", vec![]),
        ("garbage.p7", garbage.clone()),
        ("truncated.p7", p7[..p7.len() / 2].to_vec()),
        ("trailing-garbage.p7", [p7.clone(), noise(5, 9)].concat()),
        (
            "huge-length.p7",
            [vec![0x30, 0x84, 0x7f, 0xff, 0xff, 0xff], p7[4..].to_vec()].concat(),
        ),
        (
            "indefinite-length.p7",
            [vec![0x30, 0x80], p7[4..].to_vec(), vec![0, 0]].concat(),
        ),
        ("nested-garbage.p7", nested_garbage.clone()),
        ("nested-noise.p7", nested_noise),
        ("nested-deep.p7", nested_deep.clone()),
        ("nested-self.p7", nested_self),
        ("deep.p7", deep_der(3000, &[0x05, 0x00])),
        ("wrong-digest.p7", bad_digest.clone()),
        ("damaged-certificate.p7", bad_cert.clone()),
    ];
    for (n, d) in &signatures {
        put("authenticode", n, d);
    }
    let sig: Vec<(&str, Vec<u8>)> = vec![
        ("sig-garbage-pkcs7.efi", with_signature(&pe, &garbage)),
        (
            "sig-truncated-pkcs7.efi",
            with_signature(&pe, &p7[..p7.len() / 2]),
        ),
        (
            "sig-nested-garbage.efi",
            with_signature(&pe, &nested_garbage),
        ),
        ("sig-nested-deep.efi", with_signature(&pe, &nested_deep)),
        ("sig-wrong-digest.efi", with_signature(&pe, &bad_digest)),
        (
            "sig-damaged-certificate.efi",
            with_signature(&pe, &bad_cert),
        ),
        (
            "sig-wrong-cert-type.efi",
            with_table(&pe, &[(p7.len() as u32 + 8, 1, &p7)]),
        ),
        ("sig-dwlength-zero.efi", with_table(&pe, &[(0, 2, &p7)])),
        (
            "sig-dwlength-huge.efi",
            with_table(&pe, &[(0xffff_fff0, 2, &p7)]),
        ),
        (
            "sig-dwlength-past-table.efi",
            with_table(&pe, &[(p7.len() as u32 + 100, 2, &p7)]),
        ),
        (
            "sig-second-entry-garbage.efi",
            with_table(
                &pe,
                &[(p7.len() as u32 + 8, 2, &p7), (40, 2, &garbage[..32])],
            ),
        ),
        ("sig-table-too-short.efi", {
            let mut d = with_table(&pe, &[]);
            d.extend_from_slice(&[0x10, 0, 0, 0, 0, 0, 0, 0]);
            put32(&mut d, CERT_DIR, 0x800);
            put32(&mut d, CERT_DIR + 4, 8);
            d
        }),
        (
            "sig-real-then-truncated-file.efi",
            signed[..signed.len() - 7].to_vec(),
        ),
    ];
    for (n, d) in sig {
        put("pe", n, &d);
    }

    // Signature lists and authenticated variables.
    let db_esl = fs::read(w.pki.join("DB.esl")).unwrap();
    let db_auth = fs::read(w.pki.join("DB.auth")).unwrap();
    let esl_with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut d = db_esl.clone();
        f(&mut d);
        d
    };
    let x509_guid = &db_esl[..16];
    let mut x509_garbage = x509_guid.to_vec();
    x509_garbage.extend_from_slice(&(28u32 + 16 + 40).to_le_bytes());
    x509_garbage.extend_from_slice(&0u32.to_le_bytes());
    x509_garbage.extend_from_slice(&(16u32 + 40).to_le_bytes());
    x509_garbage.extend_from_slice(&noise(6, 56));
    let esl: Vec<(&str, Vec<u8>)> = vec![
        ("empty.esl", vec![]),
        ("truncated-header.esl", db_esl[..20].to_vec()),
        ("truncated-entry.esl", db_esl[..db_esl.len() - 1].to_vec()),
        (
            "list-size-huge.esl",
            esl_with(&|d| put32(d, 16, 0xffff_ffff)),
        ),
        ("list-size-zero.esl", esl_with(&|d| put32(d, 16, 0))),
        ("list-size-short.esl", esl_with(&|d| put32(d, 16, 27))),
        (
            "header-size-huge.esl",
            esl_with(&|d| put32(d, 20, 0xffff_ffe0)),
        ),
        ("signature-size-zero.esl", esl_with(&|d| put32(d, 24, 0))),
        (
            "signature-size-huge.esl",
            esl_with(&|d| put32(d, 24, 0xffff_ffff)),
        ),
        (
            "signature-size-not-dividing.esl",
            esl_with(&|d| put32(d, 24, 17)),
        ),
        ("x509-garbage.esl", x509_garbage),
        // A dbx certificate-hash list (EFI_CERT_X509_SHA256) whose entries
        // are too short to hold the hash.
        ("x509-sha256-short.esl", {
            let mut d = vec![
                0x92, 0xa4, 0xd2, 0x3b, 0xc0, 0x96, 0x79, 0x40, 0xb4, 0x20, 0xfc, 0xf9, 0x8e, 0xf1,
                0x03, 0xed,
            ];
            d.extend_from_slice(&(28u32 + 36).to_le_bytes());
            d.extend_from_slice(&0u32.to_le_bytes());
            d.extend_from_slice(&36u32.to_le_bytes());
            d.extend_from_slice(&[0x11; 16]);
            d.extend_from_slice(&[0x22; 20]);
            d
        }),
        (
            "trailing-bytes.esl",
            [db_esl.clone(), vec![1, 2, 3]].concat(),
        ),
        ("garbage.esl", noise(7, 200)),
    ];
    for (n, d) in esl {
        put("esl", n, &d);
    }
    let auth_len = u32::from_le_bytes(db_auth[16..20].try_into().unwrap()) as usize;
    let auth_p7 = db_auth[40..16 + auth_len].to_vec();
    let auth_data = db_auth[16 + auth_len..].to_vec();
    let auth_with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut d = db_auth.clone();
        f(&mut d);
        d
    };
    let auth: Vec<(&str, Vec<u8>)> = vec![
        ("zero-size.auth", vec![]),
        ("truncated-header.auth", db_auth[..30].to_vec()),
        (
            "length-huge.auth",
            auth_with(&|d| put32(d, 16, 0xffff_ffff)),
        ),
        ("length-too-small.auth", auth_with(&|d| put32(d, 16, 10))),
        ("length-zero.auth", auth_with(&|d| put32(d, 16, 0))),
        ("garbage-pkcs7.auth", auth_with_pkcs7(&garbage, &auth_data)),
        (
            "truncated-pkcs7.auth",
            auth_with_pkcs7(&auth_p7[..auth_p7.len() / 2], &auth_data),
        ),
        (
            "nested-garbage-pkcs7.auth",
            auth_with_pkcs7(&deep_der(2000, &[0x05, 0x00]), &auth_data),
        ),
        (
            "bad-esl-payload.auth",
            auth_with_pkcs7(&auth_p7, &noise(8, 60)),
        ),
        ("bad-time.auth", auth_with(&|d| d[2] = 13)),
        (
            "truncated-payload.auth",
            db_auth[..db_auth.len() - 5].to_vec(),
        ),
    ];
    for (n, d) in auth {
        put("auth", n, &d);
    }

    // CSRs.
    let csr_pem = fs::read_to_string(&w.csr).unwrap();
    let csr_der = pem_body(&csr_pem);
    let ossl = openssl();
    peer_ok(
        &ossl,
        &[
            "req",
            "-new",
            "-key",
            "device.key",
            "-subj",
            "/CN=wants-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-out",
            "ca.csr",
        ],
        &w.dir,
    );
    let mut bad_sig = csr_der.clone();
    let n = bad_sig.len();
    bad_sig[n - 10] ^= 0x55;
    let mut bad_subject = csr_der.clone();
    let at = bad_subject
        .windows(8)
        .position(|x| x == b"device-1")
        .unwrap();
    bad_subject[at] = b'D';
    let csr: Vec<(&str, Vec<u8>)> = vec![
        ("zero-size.csr", vec![]),
        ("garbage.der", noise(9, 300)),
        ("truncated.der", csr_der[..csr_der.len() / 2].to_vec()),
        ("trailing-bytes.der", [csr_der.clone(), vec![0, 0]].concat()),
        ("bad-signature.der", bad_sig),
        ("altered-subject.der", bad_subject),
        ("bad-base64.csr", b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB!!!!not base64\n-----END CERTIFICATE REQUEST-----\n".to_vec()),
        ("no-request.csr", b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n".to_vec()),
        ("two-requests.csr", format!("{csr_pem}{csr_pem}").into_bytes()),
        ("unterminated-pem.csr", csr_pem.lines().take(3).collect::<Vec<_>>().join("\n").into_bytes()),
        ("deep.der", deep_der(3000, &[0x05, 0x00])),
        ("parses-asks-for-ca.csr", fs::read(w.dir.join("ca.csr")).unwrap()),
    ];
    for (n, d) in csr {
        put("csr", n, &d);
    }

    // GuestOS manifests.
    let good = fs::read_to_string(repo().join("testdata/guestos/core-1.conf")).unwrap();
    let conf: Vec<(&str, Vec<u8>)> = vec![
        ("zero-size.conf", vec![]),
        ("binary.conf", noise(10, 200)),
        ("truncated.conf", good.as_bytes()[..good.len() / 2].to_vec()),
        (
            "unterminated-string.conf",
            b"name: \"core\nhardware: \"x86\"\n".to_vec(),
        ),
        (
            "bad-escape.conf",
            b"name: \"a\\q\"\nhardware: \"x\"\nversion: 1\ndescription { en: \"d\" }\n".to_vec(),
        ),
        (
            "bad-unicode-escape.conf",
            b"name: \"\\UFFFFFFFF\"\nhardware: \"x\"\nversion: 1\ndescription { en: \"d\" }\n"
                .to_vec(),
        ),
        (
            "huge-version.conf",
            good.replace("version: 1", "version: 999999999999999999999999")
                .into_bytes(),
        ),
        (
            "negative-version.conf",
            good.replace("version: 1", "version: -1").into_bytes(),
        ),
        (
            "missing-name.conf",
            good.replace("name: \"core\"", "").into_bytes(),
        ),
        (
            "name-with-slash.conf",
            good.replace("name: \"core\"", "name: \"../core\"")
                .into_bytes(),
        ),
        (
            "duplicate-name.conf",
            format!("name: \"a\"\n{good}").into_bytes(),
        ),
        (
            "unknown-mount-type.conf",
            good.replace("SHARED_RW", "SHARED_XX").into_bytes(),
        ),
        (
            "mount-type-out-of-range.conf",
            good.replace("SHARED_RW", "99").into_bytes(),
        ),
        (
            "image-size-list.conf",
            good.replace(
                "mount_type: SHARED_RW",
                "mount_type: SHARED_RW\n\timage_size: [1, 2]",
            )
            .into_bytes(),
        ),
        (
            "image-size-message.conf",
            good.replace(
                "mount_type: SHARED_RW",
                "mount_type: SHARED_RW\n\timage_size { }",
            )
            .into_bytes(),
        ),
        (
            "unclosed-message.conf",
            good.replace("description {", "description {{").into_bytes(),
        ),
        ("stray-close.conf", format!("}}\n{good}").into_bytes()),
        (
            "nested-too-deep.conf",
            format!("{good}x {}{}", "a {".repeat(101), "}".repeat(101)).into_bytes(),
        ),
        (
            "not-utf8-name.conf",
            good.replace("name: \"core\"", "name: \"\\377\\376\"")
                .into_bytes(),
        ),
        (
            "extension-field.conf",
            format!("{good}[ext.field]: 1\n").into_bytes(),
        ),
    ];
    for (n, d) in conf {
        put("conf", n, &d);
    }
    // Everything GyroidOS's cml refuses (tests/guestos.rs checks the verdicts).
    for f in files(&repo().join("testdata/guestos/cml/refused")) {
        if f.extension().is_some_and(|x| x == "conf") {
            put("conf", &format!("cml-{}", name(&f)), &fs::read(&f).unwrap());
        }
    }

    // Certificates.
    let cert_pem = fs::read_to_string(w.pki.join("ssig_rootca.cert")).unwrap();
    let cert_der = pem_body(&cert_pem);
    let cert: Vec<(&str, Vec<u8>)> = vec![
        ("zero-size.cert", vec![]),
        ("garbage.der", noise(11, 300)),
        ("truncated.der", cert_der[..cert_der.len() / 2].to_vec()),
        ("trailing-bytes.der", [cert_der.clone(), vec![0x05, 0x00]].concat()),
        ("bad-base64.cert", b"-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n".to_vec()),
        ("no-certificate.cert", b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n".to_vec()),
        ("pem-garbage-inside.cert", format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", b64(&noise(12, 120))).into_bytes()),
        ("deep.der", deep_der(3000, &[0x05, 0x00])),
    ];
    for (n, d) in cert {
        put("cert", n, &d);
    }
}

fn pem_body(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    unb64(&b64)
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn unb64(s: &str) -> Vec<u8> {
    let mut out = vec![];
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = B64.iter().position(|&x| x == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn b64(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().fold(0u32, |a, &b| (a << 8) | b as u32) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Broken systemd stubs (`stub-*`: `uki build/measure --stub`) and broken
/// UKIs (`uki-*`: `uki show/measure`), made by testdata/uki/make-malformed.py.
#[test]
fn malformed_ukis_and_stubs_fail_cleanly() {
    let w = world();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let all = files(&repo().join("testdata/malformed/uki"));
    assert!(all.len() >= 20, "testdata/malformed/uki has {}", all.len());
    let part = d.join("part");
    fs::write(&part, b"x").unwrap();
    let out = d.join("uki.efi");
    let pki = s(&w.pki);
    for f in all {
        let n = name(&f);
        eprintln!("uki: {n}");
        if n.starts_with("stub-") {
            // A symbol-table pointer that is not at the end is kept as it is;
            // header room only matters when building.
            let odd_but_usable = n.contains("symbol-table");
            let measurable = odd_but_usable || n.contains("header-room");
            check(
                d,
                &[
                    "uki",
                    "build",
                    "--stub",
                    s(&f),
                    "--linux",
                    s(&part),
                    "--os-release",
                    s(&part),
                    "--cmdline",
                    "x",
                    "-o",
                    s(&out),
                    "--role",
                    "ssig_subca",
                    "--dir",
                    pki,
                ],
                odd_but_usable,
                Outputs(&[&out]),
            );
            check(
                d,
                &["uki", "measure", "--stub", s(&f), "--linux", s(&part)],
                measurable,
                Outputs(&[]),
            );
        } else {
            // .pcrsig problems fail `show`; the other breakage fails `measure`.
            let sig = n.contains("pcrsig") || n.contains("pcrpkey");
            check(d, &["uki", "show", s(&f)], !sig, Outputs(&[]));
            check(d, &["uki", "show", "--json", s(&f)], !sig, Outputs(&[]));
            check(d, &["uki", "measure", s(&f)], sig, Outputs(&[]));
        }
    }
    assert_clean();
}

/// Broken offline signing requests (`request-*`, through `offline sign`) and
/// responses (`response-*`, through `offline complete`), made by
/// `regenerate_testdata_malformed_offline` in tests/offline.rs.
#[test]
fn malformed_offline_files_fail_cleanly() {
    let w = world();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let keys = d.join("keys.json");
    fs::write(
        &keys,
        serde_json::json!({
            "trust": [w.pki.join("ssig_rootca.cert")],
            "ssig_subca": { "key": w.pki.join("ssig_subca.key"), "cert": w.pki.join("ssig_subca.cert") },
        })
        .to_string(),
    )
    .unwrap();
    let all = files(&repo().join("testdata/malformed/offline"));
    assert!(
        all.len() >= 30,
        "testdata/malformed/offline has {}",
        all.len()
    );
    let (out, done) = (d.join("out.json"), d.join("done"));
    for f in all {
        eprintln!("offline: {}", name(&f));
        if name(&f).starts_with("request-") {
            let args = [
                "offline",
                "sign",
                s(&f),
                "--keys",
                s(&keys),
                "-o",
                s(&out),
                "--yes",
            ];
            check(d, &args, false, Outputs(&[&out]));
        } else {
            let args = ["offline", "complete", s(&f), "--out-dir", s(&done)];
            check(d, &args, false, Outputs(&[&done.join("a.efi")]));
        }
    }
    assert_clean();
}

// ---------------------------------------------------------------------------
// dm-verity hash images

/// Superblock offsets (cryptsetup's `struct verity_sb`).
const SB_VERSION: usize = 8;
const SB_HASH_TYPE: usize = 12;
const SB_ALGORITHM: usize = 32;
const SB_DATA_BLOCK_SIZE: usize = 64;
const SB_HASH_BLOCK_SIZE: usize = 68;
const SB_DATA_BLOCKS: usize = 72;
const SB_SALT_SIZE: usize = 80;

/// The GuestOS image the files in testdata/malformed/verity/ are hash images
/// of: three 4096-byte blocks, so its tree is one hash block after the
/// superblock's. `seed` 40 is the image; 42 is another (`noise` ignores the low bit).
fn verity_image(seed: u64) -> Vec<u8> {
    noise(seed, 3 * 4096)
}

/// A GuestOS `core` with one SHARED_RW image, `root`, checked by dm-verity.
fn verity_conf(version: u64) -> String {
    format!(
        "name: \"core\"\nhardware: \"x86\"\nversion: {version}\ninit_path: \"/sbin/cservice\"\nmounts {{\n\timage_file: \"root\"\n\tmount_point: \"/\"\n\tfs_type: \"squashfs\"\n\tmount_type: SHARED_RW\n\timage_verity_sha256: \"\"\n}}\nmounts {{\n\timage_file: \"tmpfs\"\n\tmount_point: \"/data/\"\n\tfs_type: \"tmpfs\"\n\tmount_type: EMPTY\n\tdef_size: 12\n}}\ndescription {{\n\ten: \"dm-verity test\"\n}}\n"
    )
}

/// In `dir` (emptied): `core-VERSION.conf` and cml's store `store/` holding
/// `core-VERSION/root.img` (`image`), signed by `guestos sign --images`,
/// which fills the image's size, hashes and `image_verity_sha256` and writes
/// `root.hash.img` next to it. Returns the conf.
fn verity_store(w: &World, dir: &Path, version: u64, image: &[u8]) -> PathBuf {
    let _ = fs::remove_dir_all(dir);
    let images = dir.join(format!("store/core-{version}"));
    fs::create_dir_all(&images).unwrap();
    fs::write(images.join("root.img"), image).unwrap();
    let conf = dir.join(format!("core-{version}.conf"));
    fs::write(&conf, verity_conf(version)).unwrap();
    ok(run_in(
        dir,
        &[
            "guestos",
            "sign",
            s(&conf),
            "--images",
            "store",
            "--role",
            "ssig_cml",
            "--dir",
            s(&w.pki),
        ],
    ));
    assert!(images.join("root.hash.img").is_file());
    conf
}

/// The value of `field: "..."` in a conf.
fn conf_value(conf: &str, field: &str) -> String {
    let at = conf.find(&format!("{field}: \"")).expect(field) + field.len() + 3;
    conf[at..at + conf[at..].find('"').unwrap()].to_string()
}

/// Each broken hash image in place of the right one, through `guestos verify
/// --images`: the conf is sound and validly signed, the image is what it
/// says, so the hash image alone fails the verdict (exit 1) or the command
/// (exit 2), never with a panic, a hang or an allocation its size fields ask for.
#[test]
fn malformed_verity_hash_images_fail_cleanly() {
    let w = world();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let all = files(&repo().join("testdata/malformed/verity"));
    assert!(
        all.len() >= 25,
        "testdata/malformed/verity has {}",
        all.len()
    );
    let v = d.join("v");
    let conf = verity_store(w, &v, 1, &verity_image(40));
    // Signed again with openssl, by ssig_cml, as conf_commands signs; with
    // the padding cml wants of an RSA-PSS key (MGF1-SHA-512, salt 64), which
    // openssl's default salt length is not.
    peer_ok(
        &openssl(),
        &[
            "dgst",
            "-sha512",
            "-sign",
            &w.p("ssig_cml.key"),
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:-1",
            "-out",
            "core-1.sig",
            "core-1.conf",
        ],
        &v,
    );
    fs::copy(w.pki.join("ssig_cml.cert"), v.join("core-1.cert")).unwrap();
    let text = fs::read_to_string(&conf).unwrap();
    let root_hash = conf_value(&text, "image_verity_sha256");
    let (image, hash_img) = (
        v.join("store/core-1/root.img"),
        v.join("store/core-1/root.hash.img"),
    );
    assert_eq!(fs::read(&hash_img).unwrap().len(), 2 * 4096);
    // The store is right by veritysetup too.
    if let Some(vs) = peer("veritysetup") {
        peer_ok(&vs, &["verify", s(&image), s(&hash_img), &root_hash], d);
    }
    let trust = w.p("ssig_rootca.cert");
    let store = v.join("store");
    let verify = [
        "guestos",
        "verify",
        s(&conf),
        "--trust",
        &trust,
        "--images",
        s(&store),
    ];
    let verify_json: Vec<&str> = verify.iter().copied().chain(["--json"]).collect();
    // With the hash image sign wrote, it passes: what fails below is the broken file.
    ok(run_guarded(d, &verify));
    let image_bytes = fs::read(&image).unwrap();
    for f in all {
        let n = name(&f);
        eprintln!("verity: {n}");
        fs::copy(&f, &hash_img).unwrap();
        check(d, &verify, false, Outputs(&[]));
        let code = check(d, &verify_json, false, Outputs(&[]));
        // A failed verdict names the hash image (or its root hash).
        if code == 1 {
            let o = run_guarded(d, &verify_json);
            let report: serde_json::Value = match serde_json::from_slice(&o.stdout) {
                Ok(r) => r,
                Err(e) => {
                    fail(format!("verity {n}: --json output: {e}\n{}", stdout(&o)));
                    continue;
                }
            };
            let r = if report.is_array() {
                &report[0]
            } else {
                &report
            };
            let problems = r["problems"].to_string();
            if r["ok"] != false
                || !(problems.contains("root.hash.img") || problems.contains("dm-verity root hash"))
            {
                fail(format!(
                    "verity {n}: verdict does not blame the hash image: {r}"
                ));
            }
        }
        // Verifying reads; it changed neither the image nor the hash image.
        assert!(
            fs::read(&image).unwrap() == image_bytes,
            "{n}: image changed"
        );
        assert!(
            fs::read(&hash_img).unwrap() == fs::read(&f).unwrap(),
            "{n}: hash image changed"
        );
    }
    assert_clean();
}

/// Rewrites testdata/malformed/verity/ when PKI_SIGNER_REGEN_MALFORMED=1 (else
/// does nothing); only that directory, so the other kinds keep their files.
/// The files depend on nothing random: the image is `verity_image`, and salt
/// and UUID of a hash image are derived from the GuestOS name and version.
#[test]
fn regenerate_testdata_malformed_verity() {
    if std::env::var("PKI_SIGNER_REGEN_MALFORMED").as_deref() != Ok("1") {
        return;
    }
    let w = world();
    let t = tempfile::tempdir().unwrap();
    let hash_of = |dir: &str, version: u64, image: &[u8]| {
        let at = t.path().join(dir);
        verity_store(w, &at, version, image);
        fs::read(at.join(format!("store/core-{version}/root.hash.img"))).unwrap()
    };
    // What `guestos sign` writes for the image: the superblock, one hash block.
    let good = hash_of("good", 1, &verity_image(40));
    assert_eq!(good.len(), 2 * 4096);
    // Sound hash images that are not the image's: another salt (that of
    // core-2), and the same salt over other data.
    let other_salt = hash_of("other-salt", 2, &verity_image(40));
    let other_data = hash_of("other-data", 1, &verity_image(42));
    assert!(other_salt != good && other_data != good);
    // The good hash image with a change in its superblock; the tree is kept,
    // so only that change makes it wrong.
    let m = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut d = good.clone();
        f(&mut d);
        d
    };
    let p64 = |d: &mut [u8], off: usize, v: u64| d[off..off + 8].copy_from_slice(&v.to_le_bytes());
    let alg = |name: &'static [u8]| {
        move |d: &mut Vec<u8>| {
            d[SB_ALGORITHM..SB_ALGORITHM + 32].fill(0);
            d[SB_ALGORITHM..SB_ALGORITHM + name.len()].copy_from_slice(name);
        }
    };
    let broken: Vec<(&str, Vec<u8>)> = vec![
        ("zero-size.hash.img", vec![]),
        ("garbage.hash.img", noise(44, 2 * 4096)),
        ("zeros.hash.img", vec![0; 2 * 4096]),
        ("truncated-superblock.hash.img", good[..100].to_vec()),
        ("truncated-superblock-511.hash.img", good[..511].to_vec()),
        // `veritysetup format --no-superblock`: cml needs the superblock.
        ("no-superblock.hash.img", good[4096..].to_vec()),
        ("magic-capitalised.hash.img", m(&|d| d[0] = b'V')),
        (
            "magic-unterminated.hash.img",
            m(&|d| d[6..8].copy_from_slice(b"XX")),
        ),
        (
            "magic-luks.hash.img",
            m(&|d| d[..8].copy_from_slice(b"LUKS\xba\xbe\0\x01")),
        ),
        ("version-0.hash.img", m(&|d| put32(d, SB_VERSION, 0))),
        ("version-2.hash.img", m(&|d| put32(d, SB_VERSION, 2))),
        (
            "version-huge.hash.img",
            m(&|d| put32(d, SB_VERSION, 0xffff_ffff)),
        ),
        // Hash type 0 is Chrome OS's (no salt first); others are unknown.
        (
            "hash-type-chromeos.hash.img",
            m(&|d| put32(d, SB_HASH_TYPE, 0)),
        ),
        (
            "hash-type-unknown.hash.img",
            m(&|d| put32(d, SB_HASH_TYPE, 7)),
        ),
        ("algorithm-sha1.hash.img", m(&alg(b"sha1"))),
        ("algorithm-uppercase.hash.img", m(&alg(b"SHA256"))),
        ("algorithm-unknown.hash.img", m(&alg(b"whirlpool-9000"))),
        ("algorithm-empty.hash.img", m(&alg(b""))),
        ("algorithm-unterminated.hash.img", m(&alg(&[b'a'; 32]))),
        ("algorithm-trailing-bytes.hash.img", m(&alg(b"sha256\0x"))),
        (
            "data-block-size-zero.hash.img",
            m(&|d| put32(d, SB_DATA_BLOCK_SIZE, 0)),
        ),
        (
            "data-block-size-not-power-of-two.hash.img",
            m(&|d| put32(d, SB_DATA_BLOCK_SIZE, 4095)),
        ),
        (
            "data-block-size-huge.hash.img",
            m(&|d| put32(d, SB_DATA_BLOCK_SIZE, 0x8000_0000)),
        ),
        (
            "data-block-size-max.hash.img",
            m(&|d| put32(d, SB_DATA_BLOCK_SIZE, 0xffff_ffff)),
        ),
        (
            "data-block-size-512.hash.img",
            m(&|d| put32(d, SB_DATA_BLOCK_SIZE, 512)),
        ),
        (
            "hash-block-size-mismatch.hash.img",
            m(&|d| put32(d, SB_HASH_BLOCK_SIZE, 1024)),
        ),
        (
            "hash-block-size-zero.hash.img",
            m(&|d| put32(d, SB_HASH_BLOCK_SIZE, 0)),
        ),
        (
            "hash-block-size-huge.hash.img",
            m(&|d| put32(d, SB_HASH_BLOCK_SIZE, 0x4000_0000)),
        ),
        ("salt-size-zero.hash.img", m(&|d| put16(d, SB_SALT_SIZE, 0))),
        // The salt field holds 256 bytes.
        (
            "salt-size-257.hash.img",
            m(&|d| put16(d, SB_SALT_SIZE, 257)),
        ),
        (
            "salt-size-max.hash.img",
            m(&|d| put16(d, SB_SALT_SIZE, 0xffff)),
        ),
        // A reader trusting the count would allocate or seek exabytes away.
        (
            "data-blocks-huge.hash.img",
            m(&|d| p64(d, SB_DATA_BLOCKS, u64::MAX)),
        ),
        (
            "data-blocks-2-pow-40.hash.img",
            m(&|d| p64(d, SB_DATA_BLOCKS, 1 << 40)),
        ),
        (
            "data-blocks-zero.hash.img",
            m(&|d| p64(d, SB_DATA_BLOCKS, 0)),
        ),
        (
            "data-blocks-one-more.hash.img",
            m(&|d| p64(d, SB_DATA_BLOCKS, 4)),
        ),
        // A sound superblock, the tree cut short or damaged.
        ("tree-missing.hash.img", good[..4096].to_vec()),
        ("tree-truncated-half.hash.img", good[..4096 + 2048].to_vec()),
        (
            "tree-truncated-one-byte.hash.img",
            good[..good.len() - 1].to_vec(),
        ),
        ("tree-damaged.hash.img", m(&|d| d[4096 + 40] ^= 0x01)),
        // Sound hash images, but not of this image with this conf's root hash.
        ("root-differs-other-salt.hash.img", other_salt),
        ("tree-of-other-image.hash.img", other_data),
    ];
    let top = repo().join("testdata/malformed/verity");
    for f in files(&top) {
        fs::remove_file(f).unwrap();
    }
    fs::create_dir_all(&top).unwrap();
    for (n, d) in broken {
        fs::write(top.join(n), d).unwrap();
    }
}

/// Rewrites testdata/malformed/auth/dbx-*.auth when
/// PKI_SIGNER_REGEN_MALFORMED=1 (else does nothing): broken dbx updates of
/// the published kind (one list of many EFI_CERT_SHA256 entries, another
/// owner GUID, an append signed by the KEK), only those files.
#[test]
fn regenerate_testdata_malformed_dbx() {
    if std::env::var("PKI_SIGNER_REGEN_MALFORMED").as_deref() != Ok("1") {
        return;
    }
    let w = world();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // EFI_CERT_SHA256_GUID c1c41626-504c-4092-aca9-41f936934328, 200 entries
    // owned by 77fa9abd-0359-4d32-bd60-28f4e78f784b.
    let sha256_guid = [
        0x26, 0x16, 0xc4, 0xc1, 0x4c, 0x50, 0x92, 0x40, 0xac, 0xa9, 0x41, 0xf9, 0x36, 0x93, 0x43,
        0x28,
    ];
    let ms_owner = [
        0xbd, 0x9a, 0xfa, 0x77, 0x59, 0x03, 0x32, 0x4d, 0xbd, 0x60, 0x28, 0xf4, 0xe7, 0x8f, 0x78,
        0x4b,
    ];
    let list = |n: u32, sig_size: u32| {
        let mut l = sha256_guid.to_vec();
        l.extend_from_slice(&(28 + n * 48).to_le_bytes());
        l.extend_from_slice(&0u32.to_le_bytes());
        l.extend_from_slice(&sig_size.to_le_bytes());
        for i in 0..n {
            l.extend_from_slice(&ms_owner);
            l.extend_from_slice(&noise(100 + u64::from(i), 32));
        }
        l
    };
    fs::write(d.join("published.esl"), list(200, 48)).unwrap();
    let auth = d.join("published.auth");
    let o = run_in(
        d,
        &[
            "efivar",
            "auth",
            "--var",
            "dbx",
            "--append",
            "--role",
            "KEK",
            "--dir",
            s(&w.pki),
            "--time",
            "2025-01-01 00:00:00",
            "published.esl",
            "-o",
            s(&auth),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let good = fs::read(&auth).unwrap();
    let head = good.len() - 200 * 48 - 28;
    let with_data = |data: &[u8]| [&good[..head], data].concat();
    let top = repo().join("testdata/malformed/auth");
    for f in files(&top) {
        if name(&f).starts_with("dbx-") {
            fs::remove_file(f).unwrap();
        }
    }
    let second = {
        // A second list (EFI_CERT_X509_SHA256) that claims 10 entries and holds 1.
        let mut l = vec![
            0x92, 0xa4, 0xd2, 0x3b, 0xc0, 0x96, 0x79, 0x40, 0xb4, 0x20, 0xfc, 0xf9, 0x8e, 0xf1,
            0x03, 0xed,
        ];
        l.extend_from_slice(&(28u32 + 10 * 64).to_le_bytes());
        l.extend_from_slice(&0u32.to_le_bytes());
        l.extend_from_slice(&64u32.to_le_bytes());
        l.extend_from_slice(&ms_owner);
        l.extend_from_slice(&[0u8; 48]);
        l
    };
    for (n, data) in [
        // Cut inside the 150th entry.
        (
            "dbx-published-truncated.auth",
            good[..good.len() - 50 * 48 - 20].to_vec(),
        ),
        // SHA-256 entries are 48 bytes; this list says 56.
        ("dbx-sha256-entry-size-56.auth", {
            let mut l = list(200, 56);
            l[16..20].copy_from_slice(&(28u32 + 175 * 56).to_le_bytes());
            with_data(&l)
        }),
        (
            "dbx-second-list-short.auth",
            with_data(&[list(200, 48), second].concat()),
        ),
        // A list that claims more entries than the file holds.
        ("dbx-list-size-past-end.auth", {
            let mut l = list(200, 48);
            l[16..20].copy_from_slice(&(28u32 + 201 * 48).to_le_bytes());
            with_data(&l)
        }),
    ] {
        fs::write(top.join(n), data).unwrap();
    }
}
