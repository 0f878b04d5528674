//! Containers get no cgroup. gbuild asks for no resource limit, and a container's processes are
//! held by its pid namespace (when gbuild's init, its pid 1, exits, the kernel kills the rest),
//! so a cgroup would only cost time: on a cgroup v1 host libcontainer makes and joins one in each
//! mounted controller (the kernel's migration lock on the way) and removes them all again, and
//! its v1 manager has no rootless mode, which needed root to delegate a directory per controller.
//! The patched copy of libcgroups in `vendor/` has a manager of no cgroup, chosen here once per
//! process (inherited by the processes libcontainer clones and by the watchdog).

/// Make every cgroup manager libcontainer creates from now on, in this process and its children,
/// one that creates nothing.
pub fn disable() {
    libcgroups::none::disable();
}

/// The cgroup path recorded in container `id`'s spec (absolute and never empty, so that nothing
/// could resolve it to the caller's own cgroup); no cgroup is created there.
pub fn container_path(id: &str) -> String {
    format!("/gbuild/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_absolute_and_never_empty() {
        assert_eq!(container_path("gb-1-2"), "/gbuild/gb-1-2");
    }
}
