//! The status page (`/`) and its JSON twin (`/api/status`): for every machine in the store, the
//! build loop's state, the package being built, the last pass and its failures, configuration
//! drift, ABI warnings, what is published and the tail of the last pass's log. Rendered on the
//! server as plain HTML with inline CSS, so it works without JavaScript (and under a strict CSP).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::Value;

use super::index::{safe_rel, IndexCache};
use crate::builder::state::{
    AbiWarning, LoopState, PassKind, PassOutcome, PassRecord, PublishedInfo, State,
};
use crate::progress::human_bytes;
use crate::store::{valid_name, Store};

/// Append to a page being rendered: `fmt::Write` into a `String` cannot fail, so there is no
/// error to handle.
macro_rules! put {
    ($dst:expr, $($arg:tt)*) => {{
        use ::std::fmt::Write as _;
        // Infallible for a String (see above).
        let _ = $dst.write_fmt(format_args!($($arg)*));
    }};
}

/// `put!` with a newline.
macro_rules! putln {
    ($dst:expr, $($arg:tt)*) => {{
        put!($dst, $($arg)*);
        put!($dst, "\n");
    }};
}

/// Lines of the last pass's log shown.
pub const LOG_LINES: usize = 30;
/// Bytes read from the end of the log to find them.
const LOG_WINDOW: u64 = 64 * 1024;

/// One published generation as the status page lists it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GenerationRow {
    pub generation: u64,
    pub served: bool,
    pub tags: Vec<String>,
    pub info: PublishedInfo,
}

/// What the server knows about one machine.
#[derive(Debug, Default)]
pub struct MachineStatus {
    pub name: String,
    /// `state.json` as the loop wrote it (none when missing or unreadable).
    pub state: Option<State>,
    /// `published/info.json` (none before the first publication or when unreadable).
    pub published: Option<PublishedInfo>,
    /// Binpkgs listed in the published index (what hosts can fetch now).
    pub index_packages: Option<usize>,
    /// The packages (CPVs) of the published index, sorted.
    pub packages: Vec<String>,
    /// The generations kept, oldest first.
    pub generations: Vec<GenerationRow>,
    /// Whether the loop's pid is alive (None without a pid).
    pub loop_alive: Option<bool>,
    pub log: Option<String>,
    pub log_tail: Vec<String>,
    /// Files that could not be read or parsed.
    pub problems: Vec<String>,
}

/// Read the status of every machine under the store, sorted by name.
pub fn collect(store: &Store, index: &IndexCache) -> Vec<MachineStatus> {
    let mut names: Vec<String> = std::fs::read_dir(store.machines())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| valid_name(n))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| machine(store, index, &n))
        .collect()
}

fn machine(store: &Store, index: &IndexCache, name: &str) -> MachineStatus {
    let dir = store.machine(name);
    let mut st = MachineStatus {
        name: name.to_string(),
        ..Default::default()
    };
    st.state = read_json(&dir.state_file(), &mut st.problems);
    st.published = read_json(&dir.published().info(), &mut st.problems);
    match index.get(name, &dir.published().packages()) {
        Ok(ix) => {
            st.index_packages = ix.as_ref().map(|i| i.packages);
            if let Some(ix) = ix {
                st.packages = super::index::cpvs(&String::from_utf8_lossy(&ix.bytes));
            }
        }
        Err(e) => st.problems.push(e.to_string()),
    }
    if let Ok(m) = crate::builder::Machine::open(store, name) {
        use crate::builder::generations;
        let served = generations::current(&m);
        let tags = generations::tags(&m).unwrap_or_else(|e| {
            st.problems.push(e.to_string());
            Default::default()
        });
        let all = generations::list(&m).unwrap_or_else(|e| {
            st.problems.push(e.to_string());
            Vec::new()
        });
        st.generations = all
            .into_iter()
            .map(|g| GenerationRow {
                generation: g.id,
                served: served == Some(g.id),
                tags: tags
                    .iter()
                    .filter(|(_, id)| **id == g.id)
                    .map(|(t, _)| t.clone())
                    .collect(),
                info: g.info,
            })
            .collect();
    }
    st.loop_alive = st.state.as_ref().and_then(|s| s.loop_alive());
    let log = st
        .state
        .as_ref()
        .and_then(|s| s.last_pass.as_ref())
        .map(|p| p.log.clone())
        .filter(|l| safe_rel(l) && l.starts_with("logs/"))
        .or_else(|| newest_log(&dir.logs()));
    if let Some(l) = log {
        match tail(&dir.path().join(&l), LOG_LINES) {
            Ok(lines) => st.log_tail = lines,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => st.problems.push(format!("{l}: {e}")),
        }
        st.log = Some(l);
    }
    st
}

/// A file of the loop read with its schema; an unreadable one is listed as a problem (the page
/// shows "unreadable: <path>: <why>") instead of failing the page.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path, problems: &mut Vec<String>) -> Option<T> {
    crate::fsutil::read_json(path)
        .map_err(|e| problems.push(format!("unreadable: {e}")))
        .ok()
        .flatten()
}

/// `logs/pass-<unix>.log` with the largest number.
fn newest_log(logs: &Path) -> Option<String> {
    std::fs::read_dir(logs)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| {
            let ts: u64 = n
                .strip_prefix("pass-")?
                .strip_suffix(".log")?
                .parse()
                .ok()?;
            Some((ts, n))
        })
        .max()
        .map(|(_, n)| format!("logs/{n}"))
}

/// The last `n` lines of a text file, without terminal escape sequences.
pub fn tail(path: &Path, n: usize) -> std::io::Result<Vec<String>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(LOG_WINDOW);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(LOG_WINDOW).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // probably cut
    }
    let from = lines.len().saturating_sub(n);
    Ok(lines[from..]
        .iter()
        .map(|l| {
            let clean = strip_ansi(l);
            // Keep the last state of a line redrawn with carriage returns.
            let clean = clean.rsplit('\r').find(|s| !s.is_empty()).unwrap_or("");
            clean.chars().take(400).collect()
        })
        .collect())
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            if it.peek() == Some(&'[') {
                it.next();
                for d in it.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            } else {
                it.next();
            }
        } else if c == '\t' || c == '\r' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// `/api/status`: the files as the loop wrote them, plus what the server derived.
pub fn to_json(machines: &[MachineStatus]) -> Value {
    let list: Vec<Value> = machines
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.name,
                "state": m.state,
                "published": m.published,
                "published_packages": m.index_packages,
                "generations": m.generations,
                "loop_alive": m.loop_alive,
                "log": m.log,
                "log_tail": m.log_tail,
                "problems": m.problems,
                "urls": {
                    "packages": format!("/{}/{}", m.name, crate::store::PACKAGES),
                    "binrepos_conf": format!("/{}/binrepos.conf", m.name),
                    "repos_conf": format!("/{}/repos.conf", m.name),
                    "snapshot": format!("/{}/snapshot", m.name),
                    "snapshot_info": format!("/{}/snapshot.info", m.name),
                },
            })
        })
        .collect();
    serde_json::json!({
        "generated": now(),
        "machines": list,
    })
}

fn now() -> i64 {
    crate::time::now() as i64
}

// The status page shows times as `2026-01-01 12:00 UTC`.
use crate::time::utc_minutes as utc;

/// Escape text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn ago(secs: i64) -> String {
    let d = now() - secs;
    let s = if d < 0 {
        "in the future".to_string()
    } else if d < 120 {
        format!("{d} s ago")
    } else if d < 7200 {
        format!("{} min ago", d / 60)
    } else if d < 172_800 {
        format!("{} h ago", d / 3600)
    } else {
        format!("{} days ago", d / 86_400)
    };
    format!("{} ({s})", utc(secs))
}

fn state_class(s: LoopState) -> &'static str {
    match s {
        LoopState::Idle => "ok",
        LoopState::Building => "busy",
        LoopState::Waiting => "wait",
        LoopState::Failed | LoopState::Held => "bad",
        LoopState::Stopped | LoopState::Unknown => "off",
    }
}

fn warning_line(w: &AbiWarning) -> String {
    let mut s = esc(or_unknown(&w.cpv));
    if !w.file.is_empty() {
        put!(s, ": <code>{}</code>", esc(&w.file));
    }
    if !w.requires.is_empty() {
        put!(s, " needs {}", esc(&w.requires));
    }
    if !w.kernel.is_empty() {
        put!(s, " (host kernel {})", esc(&w.kernel));
    }
    s
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() {
        "?"
    } else {
        s
    }
}

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d1d1f;background:#fafafa}\
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.2em;margin:1.6em 0 .4em}\
.sub{color:#666;margin-bottom:1em}\
table{border-collapse:collapse;background:#fff;margin:.3em 0}\
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}\
th{background:#f0f0f3}\
.badge{display:inline-block;padding:.05em .5em;border-radius:.6em;font-weight:600;color:#fff}\
.ok{background:#2e7d32}.busy{background:#1565c0}.wait{background:#6d6d6d}.bad{background:#c62828}.off{background:#999}\
.warn{color:#b26a00}.err{color:#c62828}\
pre{background:#1e1e1e;color:#ddd;padding:.6em;overflow-x:auto;max-width:100%;font-size:12px}\
section{border-top:1px solid #ddd;margin-top:1.5em}ul{margin:.2em 0;padding-left:1.4em}";

/// The whole status page.
pub fn render_html(machines: &[MachineStatus], host: Option<&str>) -> String {
    let mut h = String::with_capacity(16 * 1024);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<meta http-equiv=\"refresh\" content=\"30\">");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width\">");
    h.push_str("<title>gbuild binhost</title><style>");
    h.push_str(CSS);
    h.push_str("</style></head><body>\n<h1>gbuild binhost</h1>");
    putln!(
        h,
        "<div class=\"sub\">{} machine(s) &middot; {}{}</div>",
        machines.len(),
        esc(&utc(now())),
        host.map(|x| format!(" &middot; http://{}/", esc(x)))
            .unwrap_or_default()
    );
    if machines.is_empty() {
        h.push_str("<p>No machines in the store yet.</p>");
    } else {
        summary(&mut h, machines);
        for m in machines {
            details(&mut h, m);
        }
    }
    h.push_str("</body></html>\n");
    h
}

fn summary(h: &mut String, machines: &[MachineStatus]) {
    h.push_str(
        "<table id=\"machines\"><thead><tr><th>machine</th><th>state</th><th>current</th>\
        <th>last pass</th><th>published</th><th>PKGDIR</th><th>warnings</th></tr></thead><tbody>\n",
    );
    for m in machines {
        let s = m.state.clone().unwrap_or_default();
        let state = s.state;
        put!(
            h,
            "<tr class=\"machine\" id=\"m-{n}\"><td><a href=\"#d-{n}\">{n}</a></td>\
             <td><span class=\"badge {c}\">{st}</span>{dead}</td>",
            n = esc(&m.name),
            c = state_class(state),
            st = esc(state.as_str()),
            dead = if m.loop_alive == Some(false) && state != LoopState::Stopped {
                " <span class=\"warn\">(loop not running)</span>"
            } else {
                ""
            }
        );
        put!(h, "<td>{}</td>", current_text(&s));
        put!(
            h,
            "<td>{}</td>",
            s.last_pass
                .as_ref()
                .map(|p| {
                    let cls = match p.result {
                        PassOutcome::Failed => " class=\"err\"",
                        _ => "",
                    };
                    let mut t = format!("<span{cls}>{}</span>", esc(p.result.as_str()));
                    if let Some(f) = &p.failed_package {
                        put!(t, ": {}", esc(f));
                    }
                    t
                })
                .unwrap_or_else(|| "none".into())
        );
        let p = m.published.clone().unwrap_or_default();
        put!(
            h,
            "<td>{}</td>",
            match (m.index_packages, m.published.as_ref().map(|p| p.bytes)) {
                (Some(n), Some(b)) => format!("{n} binpkgs, {}", human_bytes(b)),
                (Some(n), None) => format!("{n} binpkgs"),
                (None, _) => "nothing yet".into(),
            }
        );
        put!(
            h,
            "<td>{}</td>",
            m.state
                .as_ref()
                .map(|s| format!(
                    "{} binpkgs, {}",
                    s.counts.binpkgs,
                    human_bytes(s.counts.bytes)
                ))
                .unwrap_or_default()
        );
        let nwarn = s.drift.len()
            + s.abi_warnings.len()
            + p.held_back.len()
            + m.problems.len()
            + s.gate.as_ref().map_or(0, |g| g.problems.len());
        putln!(
            h,
            "<td>{}</td></tr>",
            if nwarn == 0 {
                "&ndash;".to_string()
            } else {
                format!("<span class=\"warn\">{nwarn}</span>")
            }
        );
    }
    h.push_str("</tbody></table>\n");
}

fn current_text(s: &State) -> String {
    // The step a building loop is in, before the package emerge is at.
    let step = crate::builder::steps::running(s).map(|r| format!("step {}", esc(&r.name)));
    let Some(c) = &s.current else {
        return step.unwrap_or_else(|| "&ndash;".into());
    };
    let mut t = step.map(|st| format!("{st}: ")).unwrap_or_default();
    t.push_str(&esc(or_unknown(&c.package)));
    if !c.phase.is_empty() {
        put!(t, " ({})", esc(&c.phase));
    }
    if c.total > 0 {
        put!(t, " {}/{}", c.index, c.total);
    }
    t
}

fn details(h: &mut String, m: &MachineStatus) {
    let n = esc(&m.name);
    let s = m.state.clone().unwrap_or_default();
    let p = m.published.clone().unwrap_or_default();
    put!(h, "<section id=\"d-{n}\"><h2>{n}</h2><table>");
    let row = |h: &mut String, k: &str, v: String| {
        put!(h, "<tr><th>{k}</th><td>{v}</td></tr>");
    };
    let mut state = match &m.state {
        Some(s) => esc(s.state.as_str()),
        None => "unknown (no state.json)".to_string(),
    };
    if let Some(pid) = s.pid {
        put!(state, ", pid {pid}");
        if m.loop_alive == Some(false) {
            state.push_str(" <span class=\"warn\">(not running)</span>");
        }
    }
    if s.updated > 0 {
        put!(state, ", updated {}", esc(&ago(s.updated as i64)));
    }
    row(h, "loop", state);
    row(h, "current", current_text(&s));
    if let Some(lp) = &s.last_pass {
        let mut t = esc(lp.result.as_str());
        if lp.started > 0 {
            put!(t, ", started {}", esc(&ago(lp.started as i64)));
        }
        if let (a, Some(b)) = (lp.started, lp.finished) {
            if a > 0 {
                put!(t, ", took {} min", b.saturating_sub(a) / 60);
            }
        }
        put!(t, ", built {}, reused {}", lp.built.len(), lp.reused);
        if let Some(f) = &lp.failed_package {
            put!(t, "<br><span class=\"err\">failed: {}</span>", esc(f));
        }
        if !lp.built.is_empty() {
            let shown: Vec<String> = lp.built.iter().take(20).map(|b| esc(b)).collect();
            let more = lp.built.len().saturating_sub(20);
            put!(
                t,
                "<br>built: {}{}",
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
        }
        match lp.kind {
            PassKind::Bootstrap => t.push_str("<br>the first build of the world set"),
            PassKind::Rebase => t.push_str("<br>a new builder on a newer stage3 (rebase)"),
            _ => {}
        }
        row(h, "last pass", t);
        if !lp.cleanup.is_empty() {
            let steps: Vec<String> = lp
                .cleanup
                .iter()
                .map(|c| {
                    let mut line = format!("{}: {}", esc(&c.name), c.items.len());
                    if !c.items.is_empty() {
                        let shown: Vec<String> = c.items.iter().take(10).map(|i| esc(i)).collect();
                        let more = c.items.len().saturating_sub(10);
                        put!(line, " ({}", shown.join(", "));
                        if more > 0 {
                            put!(line, " and {more} more");
                        }
                        line.push(')');
                    }
                    line
                })
                .collect();
            row(h, "cleanup", steps.join("<br>"));
        }
    } else {
        row(h, "last pass", "none".into());
    }
    let mut pubt = match m.index_packages {
        Some(k) => format!("{k} binpkgs"),
        None => "nothing published yet".into(),
    };
    if m.published.is_some() {
        put!(pubt, ", {}", human_bytes(p.bytes));
    }
    if p.published_at > 0 {
        put!(pubt, ", {}", esc(&ago(p.published_at as i64)));
    }
    if let Some(d) = p.snapshot.as_ref().and_then(|s| s.valid_date()) {
        put!(pubt, ", tree snapshot {d}");
    }
    row(h, "published", pubt);
    if m.state.is_some() {
        row(
            h,
            "PKGDIR",
            format!(
                "{} binpkgs, {}",
                s.counts.binpkgs,
                human_bytes(s.counts.bytes)
            ),
        );
    }
    let list = |items: Vec<String>| -> String {
        if items.is_empty() {
            "none".into()
        } else {
            format!(
                "<ul class=\"warn\"><li>{}</li></ul>",
                items.join("</li><li>")
            )
        }
    };
    if let Some(g) = &s.gate {
        let problems: Vec<String> = g
            .problems
            .iter()
            .map(|p| format!("{}: {}", esc(&p.package), esc(&p.reason)))
            .collect();
        let mut cell = esc(&g.headline());
        if !problems.is_empty() {
            cell.push_str(&list(problems));
        }
        row(h, "publish gate", cell);
    }
    row(h, "drift", list(s.drift.iter().map(|d| esc(d)).collect()));
    row(
        h,
        "ABI warnings",
        list(s.abi_warnings.iter().map(warning_line).collect()),
    );
    row(
        h,
        "held back",
        list(p.held_back.iter().map(warning_line).collect()),
    );
    if !m.problems.is_empty() {
        row(
            h,
            "problems",
            format!(
                "<ul class=\"err\"><li>{}</li></ul>",
                m.problems
                    .iter()
                    .map(|x| esc(x))
                    .collect::<Vec<_>>()
                    .join("</li><li>")
            ),
        );
    }
    if !m.generations.is_empty() {
        row(h, "generations", generations_table(&m.name, &m.generations));
    }
    if !s.history.is_empty() {
        row(h, "pass durations", durations_chart(&s.history));
    }
    if !m.packages.is_empty() {
        row(
            h,
            "packages",
            format!(
                "<details><summary>{} published</summary><ul class=\"pkgs\"><li>{}</li></ul></details>",
                m.packages.len(),
                m.packages
                    .iter()
                    .map(|p| esc(p))
                    .collect::<Vec<_>>()
                    .join("</li><li>")
            ),
        );
    }
    row(
        h,
        "for the host",
        format!(
            "<a href=\"/{n}/binrepos.conf\">binrepos.conf</a> &middot; \
             <a href=\"/{n}/repos.conf\">repos.conf</a> &middot; \
             <a href=\"/{n}/Packages\">Packages</a> &middot; \
             <a href=\"/{n}/snapshot.info\">snapshot</a>"
        ),
    );
    h.push_str("</table>");
    if let Some(l) = &m.log {
        put!(
            h,
            "<div>last lines of <code>{}</code>:</div><pre class=\"log\">{}</pre>",
            esc(l),
            m.log_tail
                .iter()
                .map(|x| esc(x))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    h.push_str("</section>\n");
}

/// The generations of a machine: time, snapshot, packages, built, reused, held, which one is
/// served, tags (with the URL hosts follow).
fn generations_table(machine: &str, gens: &[GenerationRow]) -> String {
    let mut t = String::from(
        "<table class=\"gens\"><tr><th>gen</th><th>published</th><th>snapshot</th>\
         <th>packages</th><th>built</th><th>reused</th><th>held</th><th>result</th><th></th></tr>",
    );
    for g in gens.iter().rev() {
        let i = &g.info;
        let (built, reused) = i
            .pass
            .as_ref()
            .map_or(("&ndash;".into(), "&ndash;".into()), |p| {
                (p.built.to_string(), p.reused.to_string())
            });
        let mut marks = Vec::new();
        if g.served {
            marks.push("<span class=\"badge ok\">served</span>".to_string());
        }
        for tag in &g.tags {
            marks.push(format!(
                "<a href=\"/{m}@{t}/binrepos.conf\">@{t}</a>",
                m = esc(machine),
                t = esc(tag)
            ));
        }
        put!(
            t,
            "<tr class=\"gen\" id=\"g-{m}-{n}\"><td>{n}</td><td>{at}</td><td>{snap}</td><td>{pk}</td>\
             <td>{built}</td><td>{reused}</td><td>{held}</td><td>{result}</td><td>{marks}</td></tr>",
            m = esc(machine),
            n = g.generation,
            at = esc(&utc(i.published_at as i64)),
            snap = esc(
                i.snapshot
                    .as_ref()
                    .and_then(|s| s.date.as_deref())
                    .unwrap_or("?")
            ),
            pk = i.packages,
            held = i.held_back.len(),
            result = i
                .gate
                .map_or("published".to_string(), |g| format!("gate {g}")),
            marks = marks.join(" "),
        );
    }
    t.push_str("</table>");
    t
}

/// A small bar chart (inline SVG, no script) of the last passes' durations: green for a
/// success, orange for a pass the publish gate held, red for a failure, the height relative to
/// the longest.
fn durations_chart(history: &[PassRecord]) -> String {
    const W: usize = 12;
    const H: i64 = 40;
    let secs: Vec<i64> = history
        .iter()
        .map(|p| p.finished.saturating_sub(p.started) as i64)
        .collect();
    let max = secs.iter().copied().max().unwrap_or(0).max(1);
    let mut svg = format!(
        "<svg class=\"chart\" width=\"{w}\" height=\"{H}\" viewBox=\"0 0 {w} {H}\" \
         role=\"img\" aria-label=\"pass durations\">",
        w = W * history.len().max(1)
    );
    for (i, (p, d)) in history.iter().zip(&secs).enumerate() {
        let h = (d * (H - 2) / max).max(1);
        let fill = match p.result {
            PassOutcome::Success => "#2e7d32",
            PassOutcome::Held => "#ef6c00",
            _ => "#c62828",
        };
        put!(
            svg,
            "<rect x=\"{x}\" y=\"{y}\" width=\"{bw}\" height=\"{h}\" fill=\"{fill}\">\
             <title>{when}: {r}, {d} s, built {b}</title></rect>",
            x = i * W,
            y = H - h,
            bw = W - 2,
            when = esc(&utc(p.started as i64)),
            r = p.result,
            b = p.built,
        );
    }
    svg.push_str("</svg>");
    let last = secs.last().copied().unwrap_or(0);
    format!(
        "{svg} <span class=\"sub\">last {} passes; the last took {} min {} s, the longest {} min</span>",
        history.len(),
        last / 60,
        last % 60,
        max / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_767_225_600), "2026-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
    }

    #[test]
    fn escaping_and_sizes() {
        assert_eq!(
            esc("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn tail_strips_escapes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l");
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!("\u{1b}[32;01m*\u{1b}[0m line {i}\n"));
        }
        std::fs::write(&p, text).unwrap();
        let t = tail(&p, 30).unwrap();
        assert_eq!(t.len(), 30);
        assert_eq!(t[0], "* line 70");
        assert_eq!(t[29], "* line 99");
    }

    #[test]
    fn generations_and_durations() {
        use crate::builder::state::{PassSummary, SnapshotRef};
        let g = |n: u64, served: bool, tags: &[&str]| GenerationRow {
            generation: n,
            served,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            info: PublishedInfo {
                generation: n,
                published_at: 1_767_225_600 + n * 86_400,
                snapshot: Some(SnapshotRef {
                    date: Some(format!("2026010{n}")),
                    ..Default::default()
                }),
                packages: 10 + n as usize,
                pass: Some(PassSummary {
                    built: 3,
                    reused: 7,
                    ..Default::default()
                }),
                ..Default::default()
            },
        };
        let rec = |secs: u64, result: PassOutcome| PassRecord {
            started: 1000,
            finished: 1000 + secs,
            result,
            ..Default::default()
        };
        let m = MachineStatus {
            name: "m1".into(),
            state: Some(State {
                history: vec![
                    rec(600, PassOutcome::Success),
                    rec(60, PassOutcome::Failed),
                    rec(300, PassOutcome::Held),
                    rec(1200, PassOutcome::Success),
                ],
                ..Default::default()
            }),
            generations: vec![g(1, false, &["stable"]), {
                let mut g2 = g(2, true, &[]);
                g2.info.gate = Some(crate::builder::state::GateResult::Passed);
                g2
            }],
            packages: vec!["app-editors/vim-9.1.0".into()],
            ..Default::default()
        };
        let html = render_html(&[m], None);
        assert!(html.contains("id=\"g-m1-2\"><td>2</td><td>2026-01-03 00:00 UTC</td><td>20260102</td><td>12</td><td>3</td><td>7</td><td>0</td><td>gate passed</td>"), "{html}");
        assert!(html.contains("<td>0</td><td>published</td>"), "{html}");
        assert!(html.contains("<span class=\"badge ok\">served</span>"));
        assert!(html.contains("href=\"/m1@stable/binrepos.conf\">@stable</a>"));
        // The longest pass is the tallest bar; the failed one is red, the held one orange.
        assert!(html.contains("height=\"38\" fill=\"#2e7d32\""), "{html}");
        assert!(html.contains("fill=\"#c62828\""));
        assert!(
            html.contains("fill=\"#ef6c00\"><title>1970-01-01 00:16 UTC: held"),
            "{html}"
        );
        assert!(html.contains("<li>app-editors/vim-9.1.0</li>"));
    }

    #[test]
    fn page_escapes_machine_data() {
        let m = MachineStatus {
            name: "m1".into(),
            state: Some(State {
                state: LoopState::Failed,
                drift: vec!["<script>".into()],
                ..Default::default()
            }),
            log: Some("logs/pass-1.log".into()),
            log_tail: vec!["</pre><b>".into()],
            ..Default::default()
        };
        let html = render_html(&[m], Some("h:1"));
        assert!(html.contains("id=\"m-m1\""));
        assert!(html.contains("&lt;script&gt;"));
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;/pre&gt;&lt;b&gt;"));
    }

    #[test]
    fn reads_what_the_loop_writes_and_names_an_unreadable_file() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::at(d.path());
        let m = crate::builder::MachineLock::create(&store, "laptop").unwrap();
        let mut st = State {
            state: LoopState::Building,
            ..Default::default()
        };
        st.save(&m).unwrap();
        std::fs::create_dir_all(m.published().path()).unwrap();
        std::fs::write(m.published().info(), b"{\"packages\": ").unwrap();
        let got = collect(&store, &IndexCache::default());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].state.as_ref().unwrap().state, LoopState::Building);
        assert!(got[0].published.is_none());
        let info = m.published().info().display().to_string();
        assert!(
            got[0]
                .problems
                .iter()
                .any(|p| p.starts_with("unreadable: ") && p.contains(&info)),
            "{:?}",
            got[0].problems
        );
        let html = render_html(&got, None);
        assert!(html.contains("unreadable: "));
    }
}
