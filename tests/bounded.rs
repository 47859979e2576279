//! Bounded input: every non-PE input must be a regular file under its
//! documented cap (README, "Input limits"). `/dev/zero`, a FIFO, a directory
//! or a huge sparse file given as a certificate, key, ESL, `.auth`, CSR,
//! GuestOS conf, signature, plan, profile, keys.json or pki.json is refused
//! with one line and exit 2, before it is read. The commands run under an
//! address-space limit (`ulimit -v`), so a tool that read `/dev/zero` whole
//! would die of it here instead of passing.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::*;

/// `ulimit -v` of the commands under test, in KiB (about 1 GB).
const ULIMIT_KB: u32 = 1_000_000;
/// Only to keep a regression from hanging the suite (a FIFO opened for
/// reading waits for a writer); not a timing assertion.
const HANG: Duration = Duration::from_secs(120);

const MIB: u64 = 1 << 20;
const OWNER: &str = "4b2f6c1e-8d3a-4e57-9a10-c2d4e6f80a1b";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Run pki-signer in `cwd` under `ulimit -v`, with a clean environment.
fn run_limited(cwd: &Path, args: &[&str]) -> Output {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("ulimit -v {ULIMIT_KB} && exec \"$0\" \"$@\""))
        .arg(bin())
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("PKI_SIGNER_") || k == "SOURCE_DATE_EPOCH" {
            c.env_remove(k);
        }
    }
    let child = c.spawn().expect("run sh");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(HANG) {
        Ok(o) => o.expect("wait for pki-signer"),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            panic!("pki-signer {args:?} hung for more than {HANG:?}");
        }
    }
}

/// `args` must fail with exit 2 and one error line about `bad` that
/// contains `want`; and leave none of `outputs`.
#[track_caller]
fn refused(cwd: &Path, args: &[&str], bad: &str, want: &str, outputs: &[&Path]) {
    let o = run_limited(cwd, args);
    let err = stderr(&o);
    let cmd = format!("pki-signer {}", args.join(" "));
    assert_eq!(o.status.code(), Some(2), "{cmd}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{cmd}: {err:?}");
    let line = format!("pki-signer: error: {bad}: {want}");
    assert!(err.starts_with(&line), "{cmd}: want {line:?}, got {err:?}");
    for out in outputs {
        assert!(!out.exists(), "{cmd}: left {}", out.display());
    }
}

/// A PKI, a minimal PE image, a CSR, a signed GuestOS conf and its plan,
/// and the bad inputs: a FIFO, a directory, links to `/dev/zero`.
struct World {
    dir: PathBuf,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        ok(run_in(
            &dir,
            &["pki", "init", "--uefi", "--key-type", "ec:prime256v1"],
        ));
        fs::write(dir.join("image.efi"), tiny_pe()).unwrap();
        device_csr(&dir, "/O=Example/CN=device-1");
        fs::copy(
            repo().join("testdata/guestos/core-1.conf"),
            dir.join("core-1.conf"),
        )
        .unwrap();
        ok(run_in(
            &dir,
            &[
                "guestos",
                "sign",
                "core-1.conf",
                "--role",
                "ssig_cml",
                "--plan",
                "plan.jsonl",
            ],
        ));
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        fs::create_dir(dir.join("a-directory")).unwrap();
        World { dir }
    })
}

/// A small well-formed PE32+ EFI application (as in tests/malformed.rs):
/// headers up to 0x200, then one 0x200-byte section.
fn tiny_pe() -> Vec<u8> {
    fn put(d: &mut [u8], off: usize, v: &[u8]) {
        d[off..off + v.len()].copy_from_slice(v);
    }
    let (coff, opt) = (0x84, 0x98);
    let mut d = vec![0u8; 0x400];
    put(&mut d, 0, b"MZ");
    put(&mut d, 0x3c, &0x80u32.to_le_bytes());
    put(&mut d, 0x80, b"PE\0\0");
    put(&mut d, coff, &0x8664u16.to_le_bytes());
    put(&mut d, coff + 2, &1u16.to_le_bytes());
    put(&mut d, coff + 16, &240u16.to_le_bytes()); // SizeOfOptionalHeader
    put(&mut d, coff + 18, &0x2022u16.to_le_bytes());
    put(&mut d, opt, &0x20bu16.to_le_bytes());
    for (off, v) in [
        (16, 0x1000u32), // entry point
        (32, 0x1000),    // section alignment
        (36, 0x200),     // file alignment
        (56, 0x2000),    // SizeOfImage
        (60, 0x200),     // SizeOfHeaders
        (108, 16),       // NumberOfRvaAndSizes
    ] {
        put(&mut d, opt + off, &v.to_le_bytes());
    }
    put(&mut d, opt + 68, &10u16.to_le_bytes()); // EFI application
    let s = opt + 240;
    put(&mut d, s, b".text");
    for (off, v) in [
        (8, 0x200u32),
        (12, 0x1000),
        (16, 0x200),
        (20, 0x200),
        (36, 0x6000_0020),
    ] {
        put(&mut d, s + off, &v.to_le_bytes());
    }
    for (i, b) in d[0x200..].iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    d
}

#[test]
fn dev_zero_is_refused_as_every_kind_of_input() {
    let w = world();
    let d = &w.dir;
    let z = "/dev/zero";
    let out = d.join("out.bin");
    let char_dev = "not a regular file (character device)";
    let role = |r: &'static str| ["--role", r];
    let cases: Vec<Vec<&str>> = vec![
        // certificate
        vec!["pe", "verify", "image.efi", "--cert", z],
        vec!["efivar", "esl", z, "--owner", OWNER, "-o", "out.bin"],
        // key, and its password file
        vec![
            "pe",
            "sign",
            "image.efi",
            "-o",
            "out.bin",
            "--key",
            z,
            "--cert",
            "pki/ssig_subca.cert",
        ],
        vec![
            "pe",
            "sign",
            "image.efi",
            "-o",
            "out.bin",
            "--key",
            "pki/ssig_subca.key",
            "--cert",
            "pki/ssig_subca.cert",
            "--key-pass-file",
            z,
        ],
        // ESL and .auth
        vec!["pe", "verify", "image.efi", "--db", z],
        vec!["efivar", "show", z],
        vec!["efivar", "verify", z],
        [
            &["efivar", "auth", "--var", "db"][..],
            &role("KEK"),
            &[z, "-o", "out.bin"],
        ]
        .concat(),
        // CSR
        vec!["csr", "show", z],
        [
            &["csr", "sign", z][..],
            &role("device_subca"),
            &["-o", "out.bin"],
        ]
        .concat(),
        // GuestOS conf
        vec!["guestos", "show", z],
        [&["guestos", "sign", z][..], &role("ssig_cml")].concat(),
        // detached signature
        vec![
            "pe",
            "attach",
            "image.efi",
            "--signature",
            z,
            "-o",
            "out.bin",
        ],
        // profile
        vec!["pki", "init", "--dir", "pki2", "--profile", z],
        // plan and keys.json
        vec!["resign", "--plan", z, "--keys", "keys.json"],
        vec!["resign", "--plan", "plan.jsonl", "--keys", z],
    ];
    for args in &cases {
        refused(d, args, z, char_dev, &[&out, &d.join("pki2")]);
    }
    // Found by name, not given: NAME.sig of a conf, pki.json of a PKI.
    fs::create_dir_all(d.join("g")).unwrap();
    for f in ["core-1.conf", "core-1.cert"] {
        fs::copy(d.join(f), d.join("g").join(f)).unwrap();
    }
    let _ = fs::remove_file(d.join("g/core-1.sig"));
    symlink(z, d.join("g/core-1.sig")).unwrap();
    refused(
        d,
        &[
            "guestos",
            "verify",
            "g/core-1.conf",
            "--trust",
            "pki/ssig_rootca.cert",
        ],
        "g/core-1.sig",
        char_dev,
        &[],
    );
    let pki = d.join("pki-zero");
    let _ = fs::remove_dir_all(&pki);
    fs::create_dir(&pki).unwrap();
    for e in fs::read_dir(d.join("pki")).unwrap() {
        let e = e.unwrap();
        // certs/ (the kernel signing export) is not needed to read pki.json.
        if e.file_name() != "pki.json" && !e.file_type().unwrap().is_dir() {
            fs::copy(e.path(), pki.join(e.file_name())).unwrap();
        }
    }
    symlink(z, pki.join("pki.json")).unwrap();
    refused(
        d,
        &["pki", "show", "--dir", "pki-zero"],
        "pki-zero/pki.json",
        char_dev,
        &[],
    );
}

#[test]
fn fifos_and_directories_are_refused_without_waiting() {
    let w = world();
    let d = &w.dir;
    for (bad, what) in [("fifo", "FIFO"), ("a-directory", "directory")] {
        let want = format!("not a regular file ({what})");
        for args in [
            vec!["pe", "verify", "image.efi", "--cert", bad],
            vec!["efivar", "show", bad],
            vec!["csr", "show", bad],
            vec!["guestos", "show", bad],
            vec!["resign", "--plan", bad, "--keys", "keys.json"],
            vec!["pki", "init", "--dir", "pki2", "--profile", bad],
        ] {
            refused(d, &args, bad, &want, &[&d.join("pki2")]);
        }
    }
}

/// A password may come through a pipe (`--key-pass-file <(...)`): the read
/// is bounded all the same.
#[test]
fn a_password_may_come_through_a_pipe() {
    let w = world();
    let d = &w.dir;
    let fifo = d.join("pass-fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let writer = fifo.clone();
    // Not joined: if pki-signer never opened the FIFO, this thread would
    // wait forever, and the assertion below says why.
    std::thread::spawn(move || {
        let mut f = fs::OpenOptions::new().write(true).open(writer).unwrap();
        f.write_all(b"unused\n").unwrap();
    });
    let out = d.join("piped.efi");
    let o = run_limited(
        d,
        &[
            "pe",
            "sign",
            "image.efi",
            "-o",
            out.to_str().unwrap(),
            "--key",
            "pki/ssig_subca.key",
            "--cert",
            "pki/ssig_subca.cert",
            "--key-pass-file",
            fifo.to_str().unwrap(),
        ],
    );
    ok(o);
    assert!(out.exists());
}

/// Sparse files one byte over the cap are refused by their size, before a
/// byte is read; a file exactly at the cap is read.
#[test]
fn files_over_the_cap_are_refused_by_size() {
    let w = world();
    let d = &w.dir;
    let sparse = |name: &str, len: u64| {
        let p = d.join(name);
        fs::File::create(&p).unwrap().set_len(len).unwrap();
        name.to_string()
    };
    let cert = sparse("big.pem", MIB + 1);
    let key = sparse("big.key", MIB + 1);
    let csr = sparse("big.csr", MIB + 1);
    let conf = sparse("big.conf", MIB + 1);
    let profile = sparse("big-profile.json", MIB + 1);
    let keys = sparse("big-keys.json", MIB + 1);
    let esl = sparse("big.esl", 16 * MIB + 1);
    let auth = sparse("big.auth", 16 * MIB + 1);
    let plan = sparse("big-plan.jsonl", 64 * MIB + 1);
    let cases: Vec<(Vec<&str>, &str, String)> = vec![
        (
            vec!["pe", "verify", "image.efi", "--cert", &cert],
            &cert,
            "1048577 bytes; a certificate file may be at most 1 MiB".into(),
        ),
        (
            vec![
                "pe",
                "sign",
                "image.efi",
                "-o",
                "out.bin",
                "--key",
                &key,
                "--cert",
                "pki/ssig_subca.cert",
            ],
            &key,
            "1048577 bytes; a key file may be at most 1 MiB".into(),
        ),
        (
            vec!["csr", "show", &csr],
            &csr,
            "1048577 bytes; a CSR may be at most 1 MiB".into(),
        ),
        (
            vec!["guestos", "show", &conf],
            &conf,
            "1048577 bytes; a GuestOS manifest may be at most 1 MiB".into(),
        ),
        (
            vec!["pki", "init", "--dir", "pki2", "--profile", &profile],
            &profile,
            "1048577 bytes; a profile may be at most 1 MiB".into(),
        ),
        (
            vec!["resign", "--plan", "plan.jsonl", "--keys", &keys],
            &keys,
            "1048577 bytes; a keys file may be at most 1 MiB".into(),
        ),
        (
            vec!["efivar", "show", &esl],
            &esl,
            "16777217 bytes; a signature list may be at most 16 MiB".into(),
        ),
        (
            vec!["efivar", "verify", &auth],
            &auth,
            "16777217 bytes; an .auth file may be at most 16 MiB".into(),
        ),
        (
            vec!["resign", "--plan", &plan, "--keys", "keys.json"],
            &plan,
            "67108865 bytes; a signing plan may be at most 64 MiB".into(),
        ),
    ];
    for (args, bad, want) in &cases {
        refused(d, args, bad, want, &[&d.join("out.bin"), &d.join("pki2")]);
    }

    // Exactly at the cap: a certificate padded with blank lines to 1 MiB.
    let mut pem = fs::read(d.join("pki/ssig_rootca.cert")).unwrap();
    pem.resize(MIB as usize, b'\n');
    fs::write(d.join("at-cap.pem"), &pem).unwrap();
    let esl = d.join("at-cap.esl");
    ok(run_limited(
        d,
        &[
            "efivar",
            "esl",
            "at-cap.pem",
            "--owner",
            OWNER,
            "-o",
            esl.to_str().unwrap(),
        ],
    ));
    assert!(esl.exists());
}
