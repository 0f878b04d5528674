//! Named step lists, catalyst's prepare / build / finish: the bootstrap and the build pass are
//! each a fixed list of steps run by the one loop here. Every step is announced as it starts and
//! ends (tracing, with its duration, and a line in the pass's log) and recorded in the state's
//! `last_pass.steps` as it goes (`running`, then `done`, `skipped` or `failed`), saved at each
//! change, so `status` shows the step a pass is in and a restart finds what an interrupted one
//! did. Which steps a restart may skip is each list's own rule ([`StepList::done`]), from the
//! records of the previous attempt ([`done_before`]) and the products still there.

use std::time::Instant;

use super::session::Session;
use super::state::{now, LastPass, LoopState, State, StepRecord, StepResult};
use super::{MachineLock, Result};

/// One step of a list.
pub trait Step: Copy + std::fmt::Debug + 'static {
    /// Every step of the list, in the order they run.
    const ALL: &'static [Self];
    /// Its name in the state and the log (`world`).
    fn name(self) -> &'static str;
    /// `prepare`, `build` or `finish`.
    fn phase(self) -> &'static str;
}

/// What a step's body reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ran {
    /// It did its work.
    Done,
    /// It had nothing to do (recorded `skipped`).
    Nothing,
    /// It failed the pass without an error (an emerge that failed, drift): recorded `failed`,
    /// and the list stops.
    Failed,
}

/// A list of steps and what they run on; the records go into the last pass of a state the list
/// holds (the one the session updates as packages go by), saved at each change.
pub trait StepList {
    type Step: Step;
    /// `pass` or `bootstrap`, in the log lines.
    fn what(&self) -> &'static str;
    /// The hash of the list's inputs, kept in each record.
    fn key(&self) -> String;
    /// Whether `step` was done before with the same inputs and may be skipped.
    fn done(&mut self, step: Self::Step) -> Result<bool>;
    /// Run `step`.
    fn run(&mut self, step: Self::Step) -> Result<Ran>;
    /// Where the records go.
    fn records(&mut self) -> impl Records + '_;
}

/// Where a list's records go: the last pass of a state, the save of that state, the log.
pub trait Records {
    /// The last pass the records go into.
    fn last_pass(&mut self) -> &mut LastPass;
    /// Save the state that holds the last pass.
    fn save(&mut self) -> Result<()>;
    /// A line of gbuild's own in the pass's log.
    fn log_line(&mut self, line: &str) -> Result<()>;
}

impl<R: Records + ?Sized> Records for &mut R {
    fn last_pass(&mut self) -> &mut LastPass {
        (**self).last_pass()
    }
    fn save(&mut self) -> Result<()> {
        (**self).save()
    }
    fn log_line(&mut self, line: &str) -> Result<()> {
        (**self).log_line(line)
    }
}

/// The records of a list run in a session (the pass, the bootstrap): the session's state,
/// saved under the machine's lock, and its log.
pub struct SessionRecords<'x, 'a> {
    pub s: &'x mut Session<'a>,
    pub m: &'x MachineLock,
}

impl Records for SessionRecords<'_, '_> {
    fn last_pass(&mut self) -> &mut LastPass {
        self.s
            .pass_state()
            .last_pass
            .get_or_insert_with(LastPass::default)
    }
    fn save(&mut self) -> Result<()> {
        self.s.pass_state().save(self.m)
    }
    fn log_line(&mut self, line: &str) -> Result<()> {
        self.s.log_line(line)
    }
}

/// Run every step of `list` in order. `Ok(Some(step))` when `step` failed the pass (`Ran::Failed`);
/// an error of a step is recorded against it, then returned.
pub fn run<L: StepList>(list: &mut L) -> Result<Option<L::Step>> {
    let what = list.what();
    let key = list.key();
    for &step in L::Step::ALL {
        let name = step.name();
        if list.done(step)? {
            list.records().last_pass().steps.push(StepRecord {
                name: name.to_string(),
                result: StepResult::Skipped,
                key: key.clone(),
                started: now(),
                duration_ms: 0,
            });
            list.records().save()?;
            announce(&format!("{what} step {name}: done before, skipped"));
            continue;
        }
        announce(&format!("{what} step {name} ({})", step.phase()));
        list.records()
            .log_line(&format!("step {name} ({})", step.phase()))?;
        list.records().last_pass().steps.push(StepRecord {
            name: name.to_string(),
            result: StepResult::Running,
            key: key.clone(),
            started: now(),
            duration_ms: 0,
        });
        list.records().save()?;
        let t = Instant::now();
        let r = list.run(step);
        let result = match &r {
            Ok(Ran::Done) => StepResult::Done,
            Ok(Ran::Nothing) => StepResult::Skipped,
            Ok(Ran::Failed) | Err(_) => StepResult::Failed,
        };
        let ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Some(rec) = list.records().last_pass().steps.last_mut() {
            rec.result = result;
            rec.duration_ms = ms;
        }
        let saved = list.records().save();
        let line = format!(
            "{what} step {name}: {result} in {:.1} s",
            ms as f64 / 1000.0
        );
        if result == StepResult::Failed {
            tracing::warn!("{line}");
        } else {
            announce(&line);
        }
        // The step's own error first: it says what went wrong.
        match r? {
            Ran::Failed => {
                saved?;
                return Ok(Some(step));
            }
            Ran::Done | Ran::Nothing => saved?,
        }
    }
    Ok(None)
}

/// A step's line: a notice, or a debug event in quiet mode.
fn announce(line: &str) {
    if crate::progress::quiet() {
        tracing::debug!("{line}");
    } else {
        tracing::info!("{line}");
    }
}

/// Whether `previous` (the last pass of an earlier attempt) recorded `step` finished
/// (`done`, or `skipped` as done before or with nothing to do) with inputs `key`.
pub fn done_before(previous: Option<&LastPass>, step: &str, key: &str) -> bool {
    previous.is_some_and(|lp| {
        lp.steps.iter().any(|r| {
            r.name == step
                && matches!(r.result, StepResult::Done | StepResult::Skipped)
                && r.key == key
        })
    })
}

/// The step `lp` is in: its last record while it runs.
pub fn current(lp: &LastPass) -> Option<&StepRecord> {
    lp.steps.last().filter(|r| r.result == StepResult::Running)
}

/// The step a building loop is in now (none when the loop is not building, or died).
pub fn running(s: &State) -> Option<&StepRecord> {
    if s.live_state() != LoopState::Building {
        return None;
    }
    s.last_pass.as_ref().and_then(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::BuilderError;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum S {
        A,
        B,
        C,
    }

    impl Step for S {
        const ALL: &'static [S] = &[S::A, S::B, S::C];
        fn name(self) -> &'static str {
            match self {
                S::A => "a",
                S::B => "b",
                S::C => "c",
            }
        }
        fn phase(self) -> &'static str {
            "build"
        }
    }

    /// A list whose steps do what `outcome` says, with the records of a previous attempt.
    struct List {
        previous: Option<LastPass>,
        lp: LastPass,
        outcome: fn(S) -> Result<Ran>,
        ran: Vec<S>,
        /// The records as saved, one snapshot per save.
        saved: Vec<Vec<StepRecord>>,
        log: Vec<String>,
    }

    impl StepList for List {
        type Step = S;
        fn what(&self) -> &'static str {
            "test"
        }
        fn key(&self) -> String {
            "k1".into()
        }
        fn done(&mut self, step: S) -> Result<bool> {
            Ok(done_before(
                self.previous.as_ref(),
                step.name(),
                &self.key(),
            ))
        }
        fn run(&mut self, step: S) -> Result<Ran> {
            self.ran.push(step);
            // While it runs, the saved state names it.
            let last = self.saved.last().and_then(|r| r.last()).cloned().unwrap();
            assert_eq!(
                (last.name.as_str(), last.result),
                (step.name(), StepResult::Running)
            );
            (self.outcome)(step)
        }
        fn records(&mut self) -> impl Records + '_ {
            self
        }
    }

    impl Records for List {
        fn last_pass(&mut self) -> &mut LastPass {
            &mut self.lp
        }
        fn save(&mut self) -> Result<()> {
            self.saved.push(self.lp.steps.clone());
            Ok(())
        }
        fn log_line(&mut self, line: &str) -> Result<()> {
            self.log.push(line.to_string());
            Ok(())
        }
    }

    fn list(previous: Option<LastPass>, outcome: fn(S) -> Result<Ran>) -> List {
        List {
            previous,
            lp: LastPass::default(),
            outcome,
            ran: Vec::new(),
            saved: Vec::new(),
            log: Vec::new(),
        }
    }

    fn results(lp: &LastPass) -> Vec<(&str, StepResult)> {
        lp.steps
            .iter()
            .map(|r| (r.name.as_str(), r.result))
            .collect()
    }

    #[test]
    fn every_step_runs_in_order_and_is_recorded_as_it_goes() {
        let mut l = list(None, |s| {
            Ok(if s == S::B { Ran::Nothing } else { Ran::Done })
        });
        assert_eq!(run(&mut l).unwrap(), None);
        assert_eq!(l.ran, vec![S::A, S::B, S::C]);
        use StepResult::*;
        assert_eq!(
            results(&l.lp),
            vec![("a", Done), ("b", Skipped), ("c", Done)]
        );
        assert!(l.lp.steps.iter().all(|r| r.key == "k1" && r.started > 0));
        assert_eq!(
            l.log,
            vec!["step a (build)", "step b (build)", "step c (build)"]
        );
        // Saved when each step starts and when it ends.
        assert_eq!(l.saved.len(), 6);
        assert_eq!(current(&l.lp), None);
    }

    #[test]
    fn a_step_done_before_with_the_same_inputs_is_skipped() {
        let mut l = list(None, |s| {
            Ok(if s == S::C { Ran::Failed } else { Ran::Done })
        });
        assert_eq!(run(&mut l).unwrap(), Some(S::C));
        // The next attempt skips what the first did, and runs again what failed.
        let mut again = list(Some(l.lp.clone()), |_| Ok(Ran::Done));
        assert_eq!(run(&mut again).unwrap(), None);
        assert_eq!(again.ran, vec![S::C]);
        use StepResult::*;
        assert_eq!(
            results(&again.lp),
            vec![("a", Skipped), ("b", Skipped), ("c", Done)]
        );
        // Other inputs: nothing is skipped.
        let mut other = l.lp.clone();
        other.steps.iter_mut().for_each(|r| r.key = "k0".into());
        let mut fresh = list(Some(other), |_| Ok(Ran::Done));
        run(&mut fresh).unwrap();
        assert_eq!(fresh.ran, vec![S::A, S::B, S::C]);
    }

    #[test]
    fn a_failing_step_is_recorded_by_name_and_stops_the_list() {
        let mut l = list(None, |s| match s {
            S::B => Err(BuilderError::NoStage3),
            _ => Ok(Ran::Done),
        });
        assert!(matches!(run(&mut l), Err(BuilderError::NoStage3)));
        assert_eq!(l.ran, vec![S::A, S::B]);
        use StepResult::*;
        assert_eq!(results(&l.lp), vec![("a", Done), ("b", Failed)]);
        assert_eq!(l.saved.last().unwrap(), &l.lp.steps);
        // A step that never ended (a killed process) is running, and not done.
        let mut killed = l.lp.clone();
        killed.steps[1].result = Running;
        assert_eq!(current(&killed).map(|r| r.name.as_str()), Some("b"));
        assert!(!done_before(Some(&killed), "b", "k1"));
        assert!(done_before(Some(&killed), "a", "k1"));
    }
}
