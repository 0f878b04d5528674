//! `gbuild fetch` against a local signed mirror: the happy path, re-runs and `--offline`, every
//! verification failure (nothing may be promoted into the store), network faults and resume.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::mirror::{self, keys, stage3_name, stage3_rel, Fault, Gpg, Mirror, Server, SNAP_DATE};
use crate::util::{self, Scratch};

/// A test's world: scratch dir, gpg home, mirror tree and its server, and a store.
struct World {
    _scratch: Scratch,
    gpg: Gpg,
    mirror: Mirror,
    server: Server,
    store: PathBuf,
}

/// Size of the incompressible payload inside the stage3 (enough for several 1 MiB chunks).
const STAGE3_NOISE: usize = 3 << 20;

fn world() -> World {
    let scratch = Scratch::new();
    let gpg = Gpg::new(scratch.path());
    let root = scratch.path().join("mirror");
    let mirror = Mirror::build(&root, &gpg, STAGE3_NOISE);
    let server = Server::start(&root);
    let store = scratch.path().join("store");
    World {
        _scratch: scratch,
        gpg,
        mirror,
        server,
        store,
    }
}

impl World {
    /// `gbuild fetch` from the mirror URL, trusting the main test key.
    fn fetch(&self, extra: &[&str]) -> Output {
        self.fetch_from(&self.server.url, extra)
    }

    fn fetch_from(&self, url: &str, extra: &[&str]) -> Output {
        util::output(&mut self.fetch_cmd(url, extra))
    }

    fn fetch_cmd(&self, url: &str, extra: &[&str]) -> Command {
        let mut c = util::gbuild(&self.store);
        c.env("GBUILD_RETRY_BASE_MS", "5")
            .env("GBUILD_RETRIES", "3")
            .args(["fetch", "--mirror", url, "--keyring"])
            .arg(&self.mirror.keyring)
            .args(["--trust", &keys().main_fpr])
            .args(extra);
        c
    }

    /// `gbuild fetch` with `env`, killed if still running after `limit` (a hang is a failure).
    fn fetch_bounded(&self, env: &[(&str, &str)], limit: Duration) -> Output {
        let mut c = self.fetch_cmd(&self.server.url, &[]);
        c.envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn gbuild fetch");
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > limit {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "gbuild fetch still running after {limit:?}: {}",
                    util::stderr(&out)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    }

    fn downloads(&self) -> PathBuf {
        self.store.join("downloads")
    }

    /// Names in downloads/ other than the lock and in-flight `.partial` files.
    fn promoted(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.downloads())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != ".fetch.lock" && !n.ends_with(".partial"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn partials(&self) -> Vec<String> {
        std::fs::read_dir(self.downloads())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".partial"))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn stage3_requests(&self) -> Vec<mirror::Seen> {
        self.server.requests_for(&stage3_rel())
    }
}

/// Exit 1, one line naming `needle`, and nothing promoted for the stage3.
fn assert_fails(w: &World, out: &Output, needle: &str) {
    let err = util::stderr(out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains(needle), "stderr should name {needle:?}: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("gbuild:")).collect();
    assert_eq!(errors.len(), 1, "one line of error expected: {err}");
    assert_eq!(err.trim_end().lines().last(), Some(errors[0]), "{err}");
    let promoted = w.promoted();
    assert!(
        !promoted.iter().any(|n| n.starts_with("stage3-")),
        "nothing may be promoted: {promoted:?}"
    );
}

fn manifest(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn happy_path_rerun_downloads_nothing_and_offline_works() {
    let w = world();
    let out = w.fetch(&[]);
    assert!(out.status.success());
    let stdout = util::stdout(&out);
    let stage3 = w.downloads().join(stage3_name());
    let snap = w.downloads().join(format!("gentoo-{SNAP_DATE}.tar.xz"));
    assert!(
        stdout.contains(&format!("stage3: {}", stage3.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("snapshot: {}", snap.display())),
        "{stdout}"
    );
    assert_eq!(std::fs::read(&stage3).unwrap(), w.mirror.stage3);
    assert_eq!(std::fs::read(&snap).unwrap(), w.mirror.snapshot);
    for f in [".asc", ".DIGESTS"] {
        assert!(w
            .downloads()
            .join(format!("{}{f}", stage3_name()))
            .is_file());
    }
    let m = manifest(&w.downloads().join("stage3-amd64-openrc.json"));
    assert_eq!(m["file"], stage3_name());
    assert_eq!(m["size"], w.mirror.stage3.len() as u64);
    assert_eq!(m["sha512"], mirror::sha512_hex(&w.mirror.stage3));
    assert_eq!(m["blake2b"], mirror::b2_hex(&w.mirror.stage3));
    assert_eq!(m["signer"]["primary"], keys().main_fpr);
    assert_ne!(m["signer"]["key"], keys().main_fpr, "signed by the subkey");
    let s = manifest(&w.downloads().join(format!("snapshot-{SNAP_DATE}.json")));
    assert_eq!(s["date"], SNAP_DATE);
    assert_eq!(s["fetched_as"], "gentoo-latest.tar.xz");
    // The tree's timestamps, read after verification (Gentoo stamps gentoo-D on D+1).
    assert_eq!(s["identity"]["timestamp_x"], 1767401101);
    assert_eq!(
        s["identity"]["timestamp_chk"],
        "Sat, 03 Jan 2026 00:45:01 +0000"
    );
    assert!(w.partials().is_empty());

    // Second run: only the small pointer files are asked for.
    let before = w.server.log().len();
    let out = w.fetch(&[]);
    assert!(out.status.success());
    let new: Vec<String> = w.server.log()[before..]
        .iter()
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(
        new,
        vec![
            format!("/{}", mirror::latest_rel()),
            "/snapshots/gentoo-latest.tar.xz.gpgsig".to_string()
        ]
    );
    assert!(util::stderr(&out).contains("already verified"));

    // A dated snapshot that is already verified needs no request at all.
    let before = w.server.log().len();
    let out = w.fetch(&["--snapshot-date", SNAP_DATE]);
    assert!(out.status.success());
    assert_eq!(
        w.server.log().len(),
        before + 1,
        "only the latest-stage3 file"
    );

    // Offline: no server needed (an unroutable mirror URL proves no request is made).
    let out = w.fetch_from("http://127.0.0.1:9", &["--offline"]);
    assert!(out.status.success());
    assert_eq!(util::stdout(&out), stdout);
}

#[test]
fn dated_snapshot_and_file_mirror() {
    let w = world();
    let url = format!("file://{}", w.mirror.root.display());
    let out = w.fetch_from(&url, &["--snapshot-date", SNAP_DATE]);
    assert!(out.status.success());
    let s = manifest(&w.downloads().join(format!("snapshot-{SNAP_DATE}.json")));
    assert_eq!(s["file"], format!("gentoo-{SNAP_DATE}.tar.xz"));
    assert!(s.get("fetched_as").is_none());
    assert!(w.server.log().is_empty());
}

#[test]
fn offline_with_empty_store_names_what_is_missing() {
    let w = world();
    let out = w.fetch(&["--offline"]);
    let err = util::stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("stage3 for amd64/openrc") && err.contains("downloads"),
        "{err}"
    );
    assert!(w.server.log().is_empty());
}

#[test]
fn tarball_with_one_byte_changed_fails() {
    let w = world();
    let mut bad = w.mirror.stage3.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    w.mirror.write(&stage3_rel(), &bad);
    let out = w.fetch(&[]);
    assert_fails(&w, &out, &stage3_name());
    assert!(util::stderr(&out).contains("SHA512 mismatch"));
    assert!(
        w.partials().is_empty(),
        "a failed file is not kept for resume"
    );
}

#[test]
fn digests_with_a_changed_hash_fails() {
    let w = world();
    let body = Mirror::digests_body(&w.mirror.stage3);
    let real = mirror::b2_hex(&w.mirror.stage3);
    let forged = body.replacen(&real, &"0".repeat(128), 1);
    assert_ne!(body, forged);
    // Properly signed, wrong value.
    w.mirror.write(
        &format!("{}.DIGESTS", stage3_rel()),
        &w.gpg.clearsign(&keys().main_fpr, &forged),
    );
    let out = w.fetch(&[]);
    assert_fails(&w, &out, &stage3_name());
    assert!(util::stderr(&out).contains("BLAKE2B mismatch"));

    // Edited after signing: the signature no longer matches.
    let signed = String::from_utf8(w.gpg.clearsign(&keys().main_fpr, &body)).unwrap();
    let sha = mirror::sha512_hex(&w.mirror.stage3);
    let edited = signed.replace(&sha, &"1".repeat(128));
    w.mirror
        .write(&format!("{}.DIGESTS", stage3_rel()), edited.as_bytes());
    let out = w.fetch(&[]);
    assert_fails(&w, &out, &format!("{}.DIGESTS", stage3_name()));
    assert!(util::stderr(&out).contains("bad signature"));
}

#[test]
fn signature_by_unknown_or_untrusted_key_fails() {
    let w = world();
    // The other key is in the keyring but not trusted.
    w.mirror.sign_stage3(&w.gpg, &keys().other_fpr);
    let out = w.fetch(&[]);
    assert_fails(&w, &out, "latest-stage3-amd64-openrc.txt");
    assert!(util::stderr(&out).contains("not trusted"));

    // Only the tarball's detached signature by a key absent from the keyring.
    w.mirror.sign_stage3(&w.gpg, &keys().main_fpr);
    let asc = w
        .gpg
        .detach_sign(&keys().old_fpr, &w.mirror.path(&stage3_rel()));
    w.mirror.write(&format!("{}.asc", stage3_rel()), &asc);
    let out = w.fetch(&[]);
    assert_fails(&w, &out, &format!("{}.asc", stage3_name()));
    assert!(util::stderr(&out).contains("unknown key"));
    assert!(w.stage3_requests().is_empty(), "tarball never requested");
}

#[test]
fn expired_user_trusted_key_is_a_hard_error() {
    let w = world();
    let k = keys();
    std::fs::write(&w.mirror.keyring, w.gpg.export(&[&k.old_fpr])).unwrap();
    w.mirror.sign_stage3(&w.gpg, &k.old_fpr);
    let out = w.fetch(&["--trust", &k.old_fpr]);
    assert_fails(&w, &out, "latest-stage3-amd64-openrc.txt");
    assert!(util::stderr(&out).contains("expired on 2020-12-31"));
}

#[test]
fn unsigned_latest_file_fails() {
    let w = world();
    w.mirror.write(
        &mirror::latest_rel(),
        Mirror::latest_body(w.mirror.stage3.len()).as_bytes(),
    );
    let out = w.fetch(&[]);
    assert_fails(&w, &out, "latest-stage3-amd64-openrc.txt");
    assert!(util::stderr(&out).contains("not signed"));
}

#[test]
fn text_outside_the_signed_part_is_ignored() {
    let w = world();
    let forged_rel =
        "releases/amd64/autobuilds/20990101T000000Z/stage3-amd64-openrc-20990101T000000Z.tar.xz";
    w.mirror.write(forged_rel, b"evil");
    let forged_line = "20990101T000000Z/stage3-amd64-openrc-20990101T000000Z.tar.xz 4\n";

    // A forged path before and after the genuine signed text is not used.
    let signed = w.gpg.clearsign(
        &keys().main_fpr,
        &Mirror::latest_body(w.mirror.stage3.len()),
    );
    let mut text = forged_line.as_bytes().to_vec();
    text.extend_from_slice(&signed);
    text.extend_from_slice(forged_line.as_bytes());
    w.mirror.write(&mirror::latest_rel(), &text);
    let out = w.fetch(&[]);
    assert!(out.status.success());
    assert!(w.server.requests_for(forged_rel).is_empty());
    assert_eq!(w.stage3_requests().len(), 1);

    // When the only path line is outside the signed part, there is nothing to fetch.
    let w = world();
    w.mirror.write(forged_rel, b"evil");
    let mut text = w.gpg.clearsign(
        &keys().main_fpr,
        "# Latest as of Thu, 01 Jan 2026\n# ts=1\n",
    );
    text.extend_from_slice(forged_line.as_bytes());
    w.mirror.write(&mirror::latest_rel(), &text);
    let out = w.fetch(&[]);
    assert_fails(&w, &out, "latest-stage3-amd64-openrc.txt");
    assert!(util::stderr(&out).contains("signed text"));
    assert!(w.server.requests_for(forged_rel).is_empty());
}

#[test]
fn truncated_tarball_fails() {
    let w = world();
    let short = &w.mirror.stage3[..w.mirror.stage3.len() / 2];
    w.mirror.write(&stage3_rel(), short);
    let out = w.fetch(&[]);
    assert_fails(&w, &out, &stage3_name());
    assert!(util::stderr(&out).contains("bytes, but latest-stage3-amd64-openrc.txt says"));
}

#[test]
fn snapshot_signed_by_another_key_fails() {
    let w = world();
    w.mirror.sign_snapshot(&w.gpg, &keys().other_fpr);
    let out = w.fetch(&[]);
    let err = util::stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("gentoo-latest.tar.xz.gpgsig") && err.contains("not trusted"),
        "{err}"
    );
    assert!(
        !w.promoted()
            .iter()
            .any(|n| n.starts_with("gentoo-") || n.starts_with("snapshot-")),
        "{:?}",
        w.promoted()
    );
    // Signed by a trusted key but over other bytes.
    let w = world();
    let sig = w.mirror.path("snapshots/gentoo-latest.tar.xz.gpgsig");
    w.mirror
        .write("snapshots/gentoo-latest.tar.xz", b"not the signed snapshot");
    let out = w.fetch(&[]);
    let err = util::stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("gentoo-latest.tar.xz.gpgsig") && err.contains("bad signature"),
        "{err}"
    );
    assert!(sig.is_file());
    assert!(!w.promoted().iter().any(|n| n.starts_with("gentoo-")));
}

#[test]
fn not_found_fails_at_once_naming_the_url() {
    let w = world();
    w.server.fault(&stage3_rel(), Fault::NotFound, None);
    let out = w.fetch(&[]);
    assert_fails(&w, &out, &format!("{}/{}", w.server.url, stage3_rel()));
    assert!(util::stderr(&out).contains("404"));
    assert_eq!(w.stage3_requests().len(), 1, "no retry on 404");
}

#[test]
fn server_error_retries_then_fails_naming_the_url() {
    let w = world();
    w.server.fault(&stage3_rel(), Fault::Status(500), None);
    let out = w.fetch(&[]);
    assert_fails(&w, &out, &format!("{}/{}", w.server.url, stage3_rel()));
    assert!(util::stderr(&out).contains("HTTP 500"));
    assert_eq!(w.stage3_requests().len(), 3, "GBUILD_RETRIES=3 attempts");

    // A transient 503 then success.
    let w = world();
    w.server.fault(&stage3_rel(), Fault::Status(503), Some(1));
    w.server
        .fault(&mirror::latest_rel(), Fault::Status(502), Some(1));
    assert!(w.fetch(&[]).status.success());
}

#[test]
fn connection_reset_mid_body_fails_and_keeps_the_partial() {
    let w = world();
    let half = w.mirror.stage3.len() as u64 / 2;
    w.server.fault(&stage3_rel(), Fault::CutAt(half), None);
    let out = w.fetch(&[]);
    assert_fails(&w, &out, &format!("{}/{}", w.server.url, stage3_rel()));
    let partial = w.downloads().join(format!("{}.partial", stage3_name()));
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), half);

    // The next run resumes from the partial file with a Range request.
    w.server.clear_faults();
    let before = w.stage3_requests().len();
    let out = w.fetch(&[]);
    assert!(out.status.success());
    let reqs = w.stage3_requests();
    assert_eq!(reqs.len(), before + 1);
    let last = reqs.last().unwrap();
    assert_eq!(
        last.range.as_deref(),
        Some(format!("bytes={half}-").as_str())
    );
    assert_eq!(last.status, 206);
    assert_eq!(
        std::fs::read(w.downloads().join(stage3_name())).unwrap(),
        w.mirror.stage3
    );
    assert!(!partial.exists());
}

#[test]
fn interrupted_download_resumes_within_one_run() {
    let w = world();
    let half = w.mirror.stage3.len() as u64 / 2;
    w.server.fault(&stage3_rel(), Fault::CutAt(half), Some(1));
    let out = w.fetch(&[]);
    assert!(out.status.success());
    let reqs = w.stage3_requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(
        reqs[1].range.as_deref(),
        Some(format!("bytes={half}-").as_str())
    );
    assert_eq!(reqs[1].status, 206);
    let m = manifest(&w.downloads().join("stage3-amd64-openrc.json"));
    assert_eq!(m["sha512"], mirror::sha512_hex(&w.mirror.stage3));
}

#[test]
fn server_ignoring_range_makes_the_download_start_over() {
    let w = world();
    let third = w.mirror.stage3.len() as u64 / 3;
    w.server.fault(&stage3_rel(), Fault::CutAt(third), Some(1));
    w.server.fault(&stage3_rel(), Fault::IgnoreRange, None);
    let out = w.fetch(&[]);
    assert!(out.status.success());
    let reqs = w.stage3_requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert!(reqs[1].range.is_some());
    assert_eq!(reqs[1].status, 200);
    assert_eq!(
        std::fs::read(w.downloads().join(stage3_name())).unwrap(),
        w.mirror.stage3
    );
}

#[test]
fn detached_signature_over_other_bytes_fails_whatever_its_digest() {
    for digest in ["SHA512", "SHA256"] {
        let w = world();
        let k = keys();
        let rel = stage3_rel();
        let asc = w
            .gpg
            .detach_sign_digest(&k.main_fpr, &w.mirror.path(&rel), digest);
        w.mirror.write(&format!("{rel}.asc"), &asc);
        // Genuine: verifies with either digest algorithm.
        let out = w.fetch(&[]);
        assert!(out.status.success(), "{digest}");

        // DIGESTS and latest agree with new bytes, but the detached signature does not.
        let w = world();
        w.mirror.write(&format!("{rel}.asc"), &asc);
        let mut other = w.mirror.stage3.clone();
        other[10] ^= 0x80;
        w.mirror
            .replace_stage3_keep_asc(&w.gpg, &k.main_fpr, &other);
        let out = w.fetch(&[]);
        assert_fails(&w, &out, &format!("{}.asc", stage3_name()));
        assert!(util::stderr(&out).contains("bad signature"), "{digest}");
        assert!(w.partials().is_empty());
    }
}

#[test]
fn complete_partial_left_by_an_earlier_run_is_checked_not_downloaded_again() {
    let w = world();
    std::fs::create_dir_all(w.downloads()).unwrap();
    let partial = w.downloads().join(format!("{}.partial", stage3_name()));
    std::fs::write(&partial, &w.mirror.stage3).unwrap();
    let out = w.fetch(&[]);
    assert!(out.status.success());
    let reqs = w.stage3_requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].status, 416);
    assert_eq!(
        std::fs::read(w.downloads().join(stage3_name())).unwrap(),
        w.mirror.stage3
    );
}

#[test]
fn endless_body_after_a_valid_signature_stops_at_the_bound_and_keeps_nothing() {
    let w = world();
    let size = w.mirror.stage3.len() as u64;
    w.server.fault(&stage3_rel(), Fault::Endless, None);
    let out = w.fetch_bounded(&[], Duration::from_secs(120));
    assert_fails(&w, &out, &format!("{}/{}", w.server.url, stage3_rel()));
    let err = util::stderr(&out);
    assert!(
        err.contains(&format!(
            "more than the {size} bytes latest-stage3-amd64-openrc.txt signs"
        )),
        "{err}"
    );
    assert!(w.partials().is_empty(), "{:?}", w.partials());
    // Stopped at the bound: only what socket buffers hold was sent beyond it.
    let sent = w.server.endless_sent();
    assert!(sent < size + (32 << 20), "{sent} bytes sent for {size}");
    assert_eq!(w.stage3_requests().len(), 1, "not retried");

    // A partial left longer than the signed size is not resumed but started over.
    w.server.clear_faults();
    let partial = w.downloads().join(format!("{}.partial", stage3_name()));
    std::fs::write(&partial, mirror::noise(size as usize + 10, 3)).unwrap();
    let out = w.fetch(&[]);
    assert!(out.status.success(), "{}", util::stderr(&out));
    let last = w.stage3_requests().pop().unwrap();
    assert_eq!((last.range, last.status), (None, 200));
    assert!(w.partials().is_empty());

    // The snapshot has no signed size: the cap bounds it.
    let w = world();
    w.server
        .fault("snapshots/gentoo-latest.tar.xz", Fault::Endless, None);
    let out = w.fetch_bounded(&[("GBUILD_DOWNLOAD_CAP_MB", "1")], Duration::from_secs(120));
    let err = util::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{}/snapshots/gentoo-latest.tar.xz: more than the {} bytes allowed",
            w.server.url,
            1 << 20
        )),
        "{err}"
    );
    assert!(w.partials().is_empty(), "{:?}", w.partials());
    assert!(!w.promoted().iter().any(|n| n.starts_with("gentoo-")));
}

#[test]
fn trickled_body_is_aborted_after_the_stall_timeout() {
    let w = world();
    w.server.fault(&stage3_rel(), Fault::Trickle(50), None);
    let env = [("GBUILD_STALL_SECS", "1")];
    let out = w.fetch_bounded(&env, Duration::from_secs(60));
    assert_fails(&w, &out, &format!("{}/{}", w.server.url, stage3_rel()));
    let err = util::stderr(&out);
    assert!(
        err.contains("stalled") && err.contains("gave up after 3 attempts"),
        "{err}"
    );
    assert_eq!(w.stage3_requests().len(), 3);
    // A trickled small file too (the latest file is read into memory).
    w.server.clear_faults();
    w.server
        .fault(&mirror::latest_rel(), Fault::Trickle(50), None);
    let out = w.fetch_bounded(&env, Duration::from_secs(60));
    assert_fails(
        &w,
        &out,
        &format!("{}/{}", w.server.url, mirror::latest_rel()),
    );
    assert!(util::stderr(&out).contains("stalled"));
}

#[test]
fn server_cutting_every_body_short_and_ignoring_range_is_given_up_on() {
    let w = world();
    let third = w.mirror.stage3.len() as u64 / 3;
    w.server
        .fault(&stage3_rel(), Fault::CutIgnoringRange(third), None);
    let out = w.fetch_bounded(&[], Duration::from_secs(60));
    assert_fails(&w, &out, &format!("{}/{}", w.server.url, stage3_rel()));
    assert!(
        util::stderr(&out).contains("gave up after 3 attempts"),
        "{}",
        util::stderr(&out)
    );
    let reqs = w.stage3_requests();
    assert_eq!(reqs.len(), 3, "GBUILD_RETRIES=3 attempts: {reqs:?}");
    assert!(reqs[1..]
        .iter()
        .all(|r| r.range.is_some() && r.status == 200));
}
