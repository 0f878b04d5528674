//! The command line as a user meets it: generated completions and man pages, and output into a
//! pipe whose reader goes away.

use std::io::Read;
use std::process::Stdio;

use crate::util::{bin, gbuild, output, stdout};

#[test]
fn completions_and_man_page_cover_every_verb() {
    let dir = tempfile::tempdir().unwrap();
    let out = output(gbuild(dir.path()).args(["completions", "bash"]));
    assert!(out.status.success());
    let bash = stdout(&out);
    for verb in ["run", "machine", "serve", "snapshot", "restore"] {
        assert!(bash.contains(verb), "bash completions lack {verb}");
    }
    let out = output(gbuild(dir.path()).args(["completions", "zsh"]));
    assert!(out.status.success() && stdout(&out).contains("#compdef gbuild"));

    let out = output(gbuild(dir.path()).arg("man"));
    assert!(out.status.success());
    assert!(stdout(&out).contains(".TH gbuild 1"));
    let pages = dir.path().join("man");
    let out = output(gbuild(dir.path()).args(["man", "--dir"]).arg(&pages));
    assert!(out.status.success());
    for page in ["gbuild.1", "gbuild-run.1", "gbuild-machine-import.1"] {
        assert!(pages.join(page).is_file(), "no {page}");
    }
    // Hidden internal verbs get no page.
    assert!(!pages.join("gbuild-__layer-helper.1").exists());

    let out = output(gbuild(dir.path()).args(["completions", "nosuchshell"]));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_reader_that_goes_away_is_not_a_failure() {
    // `gbuild logs | head -1` on a log far larger than a pipe's buffer.
    let store = tempfile::tempdir().unwrap();
    let logs = store.path().join("machines/default/logs");
    std::fs::create_dir_all(&logs).unwrap();
    let line = "emerge: >>> Compiling source in /var/tmp/portage/app-misc/x-1/work ...\n";
    std::fs::write(logs.join("pass-1.log"), line.repeat(40_000)).unwrap();
    for args in [&["logs"][..], &["man"][..], &["completions", "bash"][..]] {
        let mut child = gbuild(store.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin().display()));
        let mut first = [0u8; 16];
        child.stdout.take().unwrap().read_exact(&mut first).unwrap();
        // The read end is closed here, with most of the output unread.
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "gbuild {args:?}: {err}");
        assert!(
            !err.contains("Broken pipe") && !err.contains("panicked"),
            "{err}"
        );
    }
}
