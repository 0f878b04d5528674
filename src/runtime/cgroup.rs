//! Where a container's cgroup goes. libcontainer must get an absolute `cgroupsPath`: an empty
//! one is the caller's own cgroup (its cleanup after a failure would kill gbuild), a relative
//! one goes to the systemd manager. On cgroup v1/hybrid hosts the v1 manager has no rootless
//! mode, so a user's containers live under the directory `setup-host` delegated to them.

use super::RuntimeError;

/// The directory (relative to each controller's root) under which this user's containers get
/// their cgroup, checked once per runtime.
pub fn discover_base() -> Result<String, RuntimeError> {
    let uid = nix::unistd::getuid().as_raw();
    if uid == 0 {
        return Ok("/gbuild".into());
    }
    let user = crate::setup_host::user_name(uid);
    let base = crate::setup_host::delegated_cgroup(&user);
    if crate::setup_host::cgroup_is_v1() {
        for (ctrl, mnt) in crate::setup_host::v1_controller_mounts() {
            let dir = mnt.join(base.trim_start_matches('/'));
            let ok = std::fs::metadata(&dir)
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.uid() == uid
                })
                .unwrap_or(false);
            if !ok {
                return Err(RuntimeError::NoCgroupDelegation {
                    ctrl,
                    path: dir,
                    uid,
                    user,
                });
            }
        }
    }
    Ok(base)
}

/// The cgroup path of container `id` under `base`.
pub fn container_path(base: &str, id: &str) -> String {
    format!("{}/{id}", base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_absolute_and_never_the_base_itself() {
        assert_eq!(container_path("/gbuild/u", "gb-1-2"), "/gbuild/u/gb-1-2");
        assert_eq!(container_path("/gbuild/", "gb-1-2"), "/gbuild/gb-1-2");
    }
}
