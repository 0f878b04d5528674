//! Progress for long steps: a bar (bytes, rate, ETA) on a terminal, plain lines otherwise, so logs
//! and CI output stay readable.

use std::io::IsTerminal;

/// A size as people read it: `10 B`, `1.5 MiB` (binary units).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A byte-counting bar for `len` bytes (unknown when `None`) labelled `what`. Hidden when stderr
/// is not a terminal or quiet mode is on; then `done` prints one plain line.
pub fn bytes(what: &str, len: Option<u64>) -> Progress {
    let bar = if std::io::stderr().is_terminal() && !quiet() {
        let bar = match len {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        };
        bar.set_draw_target(ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar
    } else {
        ProgressBar::hidden()
    };
    bar.set_message(what.to_string());
    Progress {
        bar,
        what: what.to_string(),
        start: std::time::Instant::now(),
    }
}

pub struct Progress {
    bar: ProgressBar,
    what: String,
    start: std::time::Instant,
}

impl Progress {
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }
    pub fn set_position(&self, n: u64) {
        self.bar.set_position(n);
    }
    pub fn done(&self) {
        let n = self.bar.position();
        self.bar.finish_and_clear();
        if !quiet() {
            eprintln!(
                "{}: {} bytes in {:.1}s",
                self.what,
                n,
                self.start.elapsed().as_secs_f64()
            );
        }
    }
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_quiet(q: bool) {
    QUIET.store(q, std::sync::atomic::Ordering::Relaxed);
}

pub fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

/// A progress line on stderr (a package going by, a phase of the bootstrap), unless quiet.
/// Messages that are not progress (warnings, errors, outcomes) are `tracing` events instead.
pub fn note(line: &str) {
    if !quiet() {
        eprintln!("{line}");
    }
}
