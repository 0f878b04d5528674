//! The overlays a machine's binpkgs were built with, offered to its hosts like the main tree:
//! `/<M>/overlays` lists each repository of the host's repos.conf other than the main tree with
//! its identity (git commit or captured tree hash), `/<M>/overlays/<name>.tar` is the exact tree
//! the builder binds (without `.git`), as an uncompressed tar in path order. Only trees the
//! builder already has are offered: serving never fetches.

use std::path::{Path, PathBuf};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::host::Repo;
use crate::store::Store;

/// The overlays of machine `machine`'s host bundle (none without one).
fn repos(store: &Store, machine: &str) -> Vec<Repo> {
    crate::host::machine::config_bundle(store, machine)
        .ok()
        .filter(|b| {
            crate::host::machine::config_dir(store, machine)
                .join(crate::host::MANIFEST_NAME)
                .is_file()
                && !b.manifest.repos.is_empty()
        })
        .map(|b| b.manifest.repos.into_iter().filter(|r| !r.main).collect())
        .unwrap_or_default()
}

/// Where the builder has overlay `r`'s tree, when it has it.
fn tree_of(store: &Store, machine: &str, r: &Repo) -> Option<PathBuf> {
    let dir = if r.captured.is_some() {
        crate::host::machine::config_dir(store, machine)
            .join(crate::host::bundle::captured_prefix(&r.name))
    } else {
        store.overlay_checkout(&r.name, r.git_commit.as_deref()?)
    };
    dir.is_dir().then_some(dir)
}

pub(crate) fn list(store: &Store, machine: &str) -> Response {
    let items: Vec<serde_json::Value> = repos(store, machine)
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "location": r.location,
                "sync_type": r.sync_type,
                "sync_uri": r.sync_uri,
                "git_commit": r.git_commit,
                "captured": r.captured,
                "url": tree_of(store, machine, r)
                    .map(|_| format!("/{machine}/overlays/{}.tar", r.name)),
            })
        })
        .collect();
    let mut resp =
        axum::Json(serde_json::json!({ "machine": machine, "overlays": items })).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

pub(crate) fn tarball(store: &Store, machine: &str, file: &str) -> Response {
    let Some(name) = file.strip_suffix(".tar") else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let Some(dir) = repos(store, machine)
        .iter()
        .find(|r| r.name == name)
        .and_then(|r| tree_of(store, machine, r))
    else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Deterministic);
    if let Err(e) = append_tree(&mut b, &dir, Path::new("")) {
        tracing::error!("overlay tarball of {}: {e}", dir.display());
        return (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response();
    }
    let body = match b.into_inner() {
        Ok(v) => v,
        Err(_) => return (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response(),
    };
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    resp
}

/// Files and directories of `dir` (no `.git`, no symlinks: the builder's trees have none that
/// matter) below `rel`, in path order.
fn append_tree(b: &mut tar::Builder<Vec<u8>>, dir: &Path, rel: &Path) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for n in names {
        if n == ".git" {
            continue;
        }
        let p = dir.join(&n);
        let r = rel.join(&n);
        let md = std::fs::symlink_metadata(&p)?;
        if md.is_dir() {
            b.append_dir(&r, &p)?;
            append_tree(b, &p, &r)?;
        } else if md.is_file() {
            b.append_path_with_name(&p, &r)?;
        }
    }
    Ok(())
}
