//! A manager of no cgroup at all (added to this copy of libcgroups, see `PATCHES.md`).
//!
//! A caller whose containers ask for no resource limit and are contained otherwise (a pid
//! namespace, whose init takes every other process with it when it dies) gains nothing from a
//! cgroup, and pays for one on every start: on a cgroup v1 host a directory and a migration in
//! each mounted controller, and the same again to remove them. After `disable()`, every manager
//! this process and the processes it clones create is this one: joining is a no-op, removing is
//! a no-op, and anything that needs a cgroup (limits, freezing, statistics, listing the
//! processes) is an error saying so.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::unistd::Pid;

use crate::common::{AnyCgroupManager, CgroupManager, ControllerOpt, FreezerState};
use crate::stats::Stats;

static DISABLED: AtomicBool = AtomicBool::new(false);

/// From now on, in this process and the processes it forks or clones, create no cgroup.
pub fn disable() {
    DISABLED.store(true, Ordering::SeqCst);
}

/// Whether `disable` was called.
pub fn disabled() -> bool {
    DISABLED.load(Ordering::SeqCst)
}

#[derive(thiserror::Error, Debug)]
pub enum NoneManagerError {
    #[error("cgroups are disabled: {0} needs a cgroup")]
    NeedsCgroup(&'static str),
}

/// The manager of no cgroup.
#[derive(Debug, Default)]
pub struct Manager;

impl Manager {
    pub fn any(self) -> AnyCgroupManager {
        AnyCgroupManager::None(self)
    }
}

impl CgroupManager for Manager {
    type Error = NoneManagerError;

    fn add_task(&self, _pid: Pid) -> Result<(), Self::Error> {
        Ok(())
    }

    fn apply(&self, _controller_opt: &ControllerOpt) -> Result<(), Self::Error> {
        Err(NoneManagerError::NeedsCgroup("a resource limit"))
    }

    fn remove(&self) -> Result<(), Self::Error> {
        Ok(())
    }

    fn freeze(&self, _state: FreezerState) -> Result<(), Self::Error> {
        Err(NoneManagerError::NeedsCgroup("freezing"))
    }

    fn stats(&self) -> Result<Stats, Self::Error> {
        Err(NoneManagerError::NeedsCgroup("statistics"))
    }

    fn get_all_pids(&self) -> Result<Vec<Pid>, Self::Error> {
        Err(NoneManagerError::NeedsCgroup("listing the processes"))
    }
}
