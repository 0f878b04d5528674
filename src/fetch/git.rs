//! Git-synced overlays at the exact commit a host uses: `git clone` of the overlay's `sync-uri`,
//! checked out detached at the commit its bundle records, into `overlays/<name>/<commit>/` of
//! the store. The checkout is verified (its HEAD must be that commit) before it is renamed into
//! place; a finished checkout is never changed, so every builder of that commit shares it.

use std::path::PathBuf;
use std::process::Command;

use crate::fsutil::IoContext;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("overlay {name}: {what} failed for {uri}: {detail}")]
    Git {
        name: String,
        uri: String,
        what: String,
        detail: String,
    },
    #[error("overlay {name}: invalid commit {commit:?}")]
    Commit { name: String, commit: String },
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
}

fn run(cmd: &mut Command, name: &str, uri: &str, what: &str) -> Result<(), GitError> {
    let err = |detail: String| GitError::Git {
        name: name.to_string(),
        uri: uri.to_string(),
        what: what.to_string(),
        detail,
    };
    let out = cmd
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| err(format!("run git: {e}")))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        return Err(err(msg.lines().last().unwrap_or("").trim().to_string()));
    }
    Ok(())
}

/// The checkout of overlay `name` at `commit` from `uri`, made when missing.
pub fn checkout(store: &Store, name: &str, uri: &str, commit: &str) -> Result<PathBuf, GitError> {
    if commit.len() < 40
        || !commit.chars().all(|c| c.is_ascii_hexdigit())
        || !crate::store::valid_name(name)
    {
        return Err(GitError::Commit {
            name: name.to_string(),
            commit: commit.to_string(),
        });
    }
    let dest = store.overlay_checkout(name, commit);
    if dest.is_dir() {
        return Ok(dest);
    }
    let parent = dest.parent().expect("checkout has a parent");
    std::fs::create_dir_all(parent).at("create directory", parent)?;
    let tmp = crate::fsutil::temp_sibling(&dest);
    // Best effort: a fresh name (a dead namesake would fail the next step, named).
    let _ = std::fs::remove_dir_all(&tmp);
    let r = (|| {
        run(
            Command::new("git")
                .args(["clone", "--quiet", "--no-checkout", "--", uri])
                .arg(&tmp),
            name,
            uri,
            "git clone",
        )?;
        run(
            Command::new("git")
                .arg("-C")
                .arg(&tmp)
                .args([
                    "-c",
                    "advice.detachedHead=false",
                    "checkout",
                    "--quiet",
                    "--detach",
                ])
                .arg(commit),
            name,
            uri,
            &format!("git checkout {commit}"),
        )?;
        let head = crate::host::export::git_head(&tmp).unwrap_or_default();
        if head != commit {
            return Err(GitError::Commit {
                name: name.to_string(),
                commit: commit.to_string(),
            });
        }
        Ok(())
    })();
    if let Err(e) = r {
        // Best effort beside the step's own error; gc removes a temporary-named leftover.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    crate::fsutil::rename_dir_into_place(&tmp, &dest)?;
    Ok(dest)
}
