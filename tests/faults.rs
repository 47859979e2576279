//! Faults a build system inflicts: tasks killed with SIGKILL at any moment,
//! many tasks at once, a full disk. Whatever happens, an output is either
//! absent or complete and valid, and inputs are never touched.
//!
//! Sizes are scaled down so that this file runs in well under a minute (50
//! kills of a 24 MiB image instead of a 200 MiB one; the code paths are the
//! same: the image streams through a fixed buffer whatever its size).
//!
//! Documented leftovers of a killed run, all removed by the next run:
//! - `pe sign`: `.OUT.signing.PID` beside OUT (removed by the next signing
//!   into that directory once PID is gone);
//! - `pki init`: `.DIR.tmp.PID` beside DIR (removed by the next `pki init`),
//!   and the lock file `DIR.lock`, which stays by design.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
const KILLS: usize = 50;

fn spawn(cwd: &Path, args: &[&str]) -> Child {
    let mut c = Command::new(bin());
    c.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("PKI_SIGNER_") {
            c.env_remove(k);
        }
    }
    c.spawn().expect("start pki-signer")
}

/// Deterministic xorshift: a failing kill point can be reproduced.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Start `args`, and SIGKILL it `delay` after `armed(pid)` first holds (unless
/// it finished by then); reap it. Returns its PID if it was killed.
fn kill_after(
    cwd: &Path,
    args: &[&str],
    armed: impl Fn(u32) -> bool,
    delay: Duration,
) -> Option<u32> {
    let mut child = spawn(cwd, args);
    let mut deadline = None;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(
                st.success(),
                "pki-signer {args:?} failed on its own: {st:?}"
            );
            return None;
        }
        if deadline.is_none() && armed(child.id()) {
            deadline = Some(Instant::now() + delay);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            child.kill().unwrap();
            let st = child.wait().unwrap();
            return (st.signal() == Some(9)).then_some(child.id());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn fastest_of_3(mut run: impl FnMut()) -> Duration {
    (0..3)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed()
        })
        .min()
        .unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// An EFI image of about `size` bytes: a real one (systemd-boot) when the
/// system has it, else a synthetic one, with trailing data after the last
/// section, which the Authenticode digest covers. The file is sparse apart
/// from a few written blocks, so making it costs no time.
fn big_image(dir: &Path, size: u64) -> PathBuf {
    let base = if Path::new(SYSTEMD_BOOT).is_file() {
        fs::read(SYSTEMD_BOOT).unwrap()
    } else {
        eprintln!("note: {SYSTEMD_BOOT} not installed, using a synthetic image");
        synthetic_pe()
    };
    let p = dir.join("big.efi");
    fs::write(&p, &base).unwrap();
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(size).unwrap();
    for i in 0..16u64 {
        let at = base.len() as u64 + i * (size - base.len() as u64) / 16;
        f.write_all_at(&[0xa5; 4096], at.min(size - 4096)).unwrap();
    }
    f.sync_all().unwrap();
    p
}

/// A minimal PE32+ image: headers and one section of 0x200 bytes.
fn synthetic_pe() -> Vec<u8> {
    let mut d = vec![0u8; 0x400];
    let put16 = |d: &mut [u8], o: usize, v: u16| d[o..o + 2].copy_from_slice(&v.to_le_bytes());
    let put32 = |d: &mut [u8], o: usize, v: u32| d[o..o + 4].copy_from_slice(&v.to_le_bytes());
    d[..2].copy_from_slice(b"MZ");
    put32(&mut d, 0x3c, 0x80);
    d[0x80..0x84].copy_from_slice(b"PE\0\0");
    put16(&mut d, 0x84, 0x8664);
    put16(&mut d, 0x86, 1);
    put16(&mut d, 0x94, 240);
    put16(&mut d, 0x98, 0x20b);
    put32(&mut d, 0x98 + 32, 0x1000);
    put32(&mut d, 0x98 + 36, 0x200);
    put32(&mut d, 0x98 + 56, 0x2000);
    put32(&mut d, 0x98 + 60, 0x200);
    put16(&mut d, 0x98 + 68, 10);
    put32(&mut d, 0x98 + 108, 16);
    let s = 0x98 + 240;
    d[s..s + 5].copy_from_slice(b".text");
    put32(&mut d, s + 8, 0x200);
    put32(&mut d, s + 12, 0x1000);
    put32(&mut d, s + 16, 0x200);
    put32(&mut d, s + 20, 0x200);
    d[0x200..].fill(0x90);
    d
}

/// One EC PKI for the signing tests (fast to make).
fn pki(dir: &Path) -> PathBuf {
    ok(run_in(dir, &["pki", "init", "--key-type", "ec:prime256v1"]));
    // sbverify wants the signing CA alone in its --cert file.
    if let Some(ossl) = peer("openssl") {
        peer_ok(
            &ossl,
            &["x509", "-in", "pki/ssig_subca.cert", "-out", "subca.pem"],
            dir,
        );
    }
    dir.join("pki")
}

/// OUT is a complete, valid signed image: our verifier and sbverify agree.
#[track_caller]
fn assert_valid(dir: &Path, out: &Path) {
    ok(run_in(
        dir,
        &[
            "pe",
            "verify",
            out.to_str().unwrap(),
            "--cert",
            "pki/ssig_rootca.cert",
        ],
    ));
    if let Some(sbverify) = peer("sbverify") {
        if dir.join("subca.pem").is_file() {
            peer_ok(
                &sbverify,
                &["--cert", "subca.pem", out.to_str().unwrap()],
                dir,
            );
        }
    }
}

#[test]
fn sign_killed_at_random_points_leaves_no_output_or_a_valid_one() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    pki(dir);
    let input = big_image(dir, 24 << 20);
    let before = fs::read(&input).unwrap();
    let outdir = dir.join("out");
    fs::create_dir(&outdir).unwrap();
    let out = outdir.join("signed.efi");
    let args = [
        "pe",
        "sign",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--role",
        "ssig_subca",
    ];

    // How long a whole run takes here (the fastest of three: a shared machine
    // only ever makes runs slower); kill points spread over 0..120% of it.
    let full = fastest_of_3(|| {
        ok(run_in(dir, &args));
    });
    assert_valid(dir, &out);
    fs::remove_file(&out).unwrap();

    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut killed, mut complete, mut mid_write) = (0, 0, 0);
    for i in 0..KILLS {
        // Every other kill aims at the last, shortest phase: while the
        // temp file is being written, fsynced and renamed.
        let writing = |pid: u32| outdir.join(format!(".signed.efi.signing.{pid}")).exists();
        let killed_now = if i % 2 == 0 {
            let delay = Duration::from_micros(rng.below(full.as_micros() as u64 * 6 / 5));
            kill_after(dir, &args, |_| true, delay)
        } else {
            kill_after(
                dir,
                &args,
                writing,
                Duration::from_micros(rng.below(30_000)),
            )
        };
        if let Some(pid) = killed_now {
            killed += 1;
            if outdir.join(format!(".signed.efi.signing.{pid}")).exists() {
                mid_write += 1;
            }
        }
        if out.exists() {
            // The rename is the last step: an output that exists is whole.
            assert_valid(dir, &out);
            complete += 1;
            fs::remove_file(&out).unwrap();
        }
        // Only our own documented temp file may be left, and only one: the
        // next run removes the leftovers of dead signers.
        let left = names(&outdir);
        assert!(
            left.len() <= 1 && left.iter().all(|n| n.starts_with(".signed.efi.signing.")),
            "after kill {i}: {left:?}"
        );
    }
    eprintln!(
        "pe sign: {KILLS} runs of {full:?} each: {killed} killed mid-way \
         ({mid_write} while a temp file existed), {complete} had finished"
    );
    assert!(
        killed >= KILLS / 3,
        "only {killed} of {KILLS} runs were killed"
    );
    assert!(mid_write >= 3, "only {mid_write} kills hit the write phase");
    // The next run succeeds and cleans up after the killed ones.
    ok(run_in(dir, &args));
    assert_valid(dir, &out);
    assert_eq!(names(&outdir), ["signed.efi"]);
    assert!(fs::read(&input).unwrap() == before, "input changed");
}

#[test]
fn pki_init_killed_at_random_points_leaves_no_pki_or_a_complete_one() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let args = ["pki", "init", "--uefi", "--key-type", "ec:prime256v1"];
    let full = fastest_of_3(|| {
        let _ = fs::remove_dir_all(dir.join("pki"));
        ok(run_in(dir, &args));
    });
    ok(run_in(dir, &["pki", "check"]));
    fs::remove_dir_all(dir.join("pki")).unwrap();

    let mut rng = Rng(0x5eed_1234_abcd_0002);
    let (mut killed, mut complete, mut mid_write) = (0, 0, 0);
    for i in 0..KILLS {
        let delay = Duration::from_micros(rng.below(full.as_micros() as u64 * 6 / 5));
        if let Some(pid) = kill_after(dir, &args, |_| true, delay) {
            killed += 1;
            if dir.join(format!(".pki.tmp.{pid}")).exists() {
                mid_write += 1;
            }
        }
        let pki = dir.join("pki");
        if pki.exists() {
            // Published with one rename: if it is there, it is whole.
            ok(run_in(dir, &["pki", "check"]));
            complete += 1;
            fs::remove_dir_all(&pki).unwrap();
        }
        for n in names(dir) {
            assert!(
                n == "pki.lock" || n.starts_with(".pki.tmp."),
                "after kill {i} at {delay:?}: unexpected {n}"
            );
        }
    }
    eprintln!(
        "pki init: {KILLS} runs of {full:?} each: {killed} killed mid-way \
         ({mid_write} with a temp dir left), {complete} had finished"
    );
    assert!(
        killed >= KILLS / 3,
        "only {killed} of {KILLS} runs were killed"
    );
    // After any number of killed runs, the next one works and tidies up.
    ok(run_in(dir, &args));
    ok(run_in(dir, &["pki", "check"]));
    assert_eq!(names(dir), ["pki", "pki.lock"]);
}

#[test]
fn sixteen_concurrent_signers_all_succeed() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    pki(dir);
    let input = big_image(dir, 4 << 20);
    let children: Vec<(PathBuf, Child)> = (0..16)
        .map(|i| {
            let out = dir.join(format!("signed-{i}.efi"));
            let c = spawn(
                dir,
                &[
                    "pe",
                    "sign",
                    input.to_str().unwrap(),
                    "-o",
                    out.to_str().unwrap(),
                    "--role",
                    if i % 2 == 0 { "ssig_subca" } else { "ssig" },
                ],
            );
            (out, c)
        })
        .collect();
    let mut digests = vec![];
    for (out, c) in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}: {}", out.display(), stderr(&o));
        assert_valid(dir, &out);
        let d = stdout(&ok(run_in(dir, &["pe", "digest", out.to_str().unwrap()])));
        digests.push(d.split_whitespace().next().unwrap().to_string());
    }
    // All signed the same image: one Authenticode digest.
    digests.dedup();
    assert_eq!(digests.len(), 1, "{digests:?}");
    // Sixteen concurrent signers of the same output: one of them wins, whole.
    let out = dir.join("same.efi");
    let children: Vec<Child> = (0..16)
        .map(|_| {
            spawn(
                dir,
                &[
                    "pe",
                    "sign",
                    input.to_str().unwrap(),
                    "-o",
                    out.to_str().unwrap(),
                    "--role",
                    "ssig_subca",
                ],
            )
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_valid(dir, &out);
    assert!(
        !names(dir).iter().any(|n| n.contains(".signing.")),
        "{:?}",
        names(dir)
    );
}

/// A 1 MiB tmpfs, unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: &Path) -> Option<SmallFs> {
        fs::create_dir_all(at).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(at)
            .output()
            .ok()?;
        if !o.status.success() {
            eprintln!(
                "skipped: cannot mount a tmpfs here ({})",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return None;
        }
        Some(SmallFs(at.to_path_buf()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_is_a_clear_error_and_leaves_nothing_behind() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    pki(dir);
    let Some(small) = SmallFs::mount(&dir.join("small")) else {
        return;
    };
    let input = big_image(dir, 3 << 20);
    let before = fs::read(&input).unwrap();
    let out = small.0.join("signed.efi");
    let err = fails(
        run_in(
            dir,
            &[
                "pe",
                "sign",
                input.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--role",
                "ssig_subca",
            ],
        ),
        2,
    );
    // It names the output asked for, not our temp file.
    assert!(err.contains("signed.efi: No space left on device"), "{err}");
    assert!(names(&small.0).is_empty(), "{:?}", names(&small.0));
    assert!(fs::read(&input).unwrap() == before, "input changed");

    // Nearly full: a PKI does not fit either, and no half PKI is left.
    let filler = small.0.join("filler");
    let f = fs::File::create(&filler).unwrap();
    let mut block = vec![0u8; 64 << 10];
    let mut written = 0;
    while (written as u64) < (1 << 20) {
        match f.write_at(&block, written as u64) {
            Ok(n) if n > 0 => written += n,
            _ => break,
        }
    }
    block.truncate(0);
    f.set_len(written as u64 - (16 << 10)).unwrap();
    let err = fails(
        run_in(
            dir,
            &[
                "pki",
                "init",
                "--key-type",
                "ec:prime256v1",
                "--dir",
                small.0.join("pki").to_str().unwrap(),
            ],
        ),
        2,
    );
    assert!(err.contains("No space left on device"), "{err}");
    let left: Vec<String> = names(&small.0)
        .into_iter()
        .filter(|n| n != "filler" && n != "pki.lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
