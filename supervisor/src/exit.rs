//! The one place where a run's end becomes an exit code (DESIGN.md's table, after GNU
//! `timeout`).

use crate::record::Outcome;
use crate::summary::Stats;

/// At least one job was hard-killed.
pub const KILLED: u8 = 137;
/// At least one job timed out and was cleaned up in time.
pub const TIMEOUT: u8 = 124;
/// At least one job failed, crashed or was rejected.
pub const FAILED: u8 = 1;
/// Every job ok.
pub const OK: u8 = 0;
/// jobsup itself failed, including a usage or config error.
pub const JOBSUP_ERROR: u8 = 125;
/// The processor exists but cannot be run, or never completed its handshake.
pub const CANNOT_RUN: u8 = 126;
/// The processor was not found.
pub const NOT_FOUND: u8 = 127;
/// The output (stdout) was closed by its reader: what a process killed by SIGPIPE shows.
pub const OUTPUT_CLOSED: u8 = 128 + 13;

/// Every code above, for the help's table and its tests (an interrupted run exits with
/// 128 + the signal's number besides).
pub const ALL: [u8; 8] = [
    OK,
    FAILED,
    TIMEOUT,
    KILLED,
    JOBSUP_ERROR,
    CANNOT_RUN,
    NOT_FOUND,
    OUTPUT_CLOSED,
];

/// How a run ended, apart from its jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// The input was read to its end and every job finished.
    Completed,
    /// A signal interrupted the run (its number).
    Interrupted(i32),
    /// The processor could not be started; the code is 126 or 127.
    CannotStart(u8),
    /// jobsup itself failed (reading input, writing output).
    Failed,
    /// `--halt` stopped the run; `cancelled` jobs were cancelled by the halt itself (not
    /// started, or stopped by `now`), and do not raise the code.
    Halted {
        /// How many of the `cancelled` records the halt caused.
        cancelled: u64,
    },
    /// The reader of the output closed it (EPIPE): 141, as if killed by SIGPIPE.
    OutputClosed,
}

/// The exit code of `jobsup run`: the run's own condition first, then the worst outcome.
pub fn exit_code(end: &RunEnd, stats: &Stats) -> u8 {
    match end {
        RunEnd::Interrupted(sig) => return 128 + *sig as u8,
        RunEnd::CannotStart(code) => return *code,
        RunEnd::Failed => return JOBSUP_ERROR,
        RunEnd::OutputClosed => return OUTPUT_CLOSED,
        RunEnd::Completed | RunEnd::Halted { .. } => {}
    }
    let halt_cancelled = match end {
        RunEnd::Halted { cancelled } => *cancelled,
        _ => 0,
    };
    if stats.count(Outcome::Killed) > 0 {
        KILLED
    } else if stats.count(Outcome::Timeout) > 0 {
        TIMEOUT
    } else if [Outcome::Failed, Outcome::Crashed, Outcome::Rejected]
        .iter()
        .any(|o| stats.count(*o) > 0)
        || stats.count(Outcome::Cancelled) > halt_cancelled
    {
        FAILED
    } else {
        OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{JobSpec, Record};

    fn stats(outcomes: &[Outcome]) -> Stats {
        let job = JobSpec::sample(1);
        let mut s = Stats::default();
        for o in outcomes {
            s.observe(&Record::new(&job, *o));
        }
        s
    }

    #[test]
    fn worst_outcome_wins() {
        use Outcome::*;
        let c = |o: &[Outcome]| exit_code(&RunEnd::Completed, &stats(o));
        assert_eq!(c(&[]), OK);
        assert_eq!(c(&[Ok, Ok]), OK);
        assert_eq!(c(&[Ok, Rejected]), FAILED);
        assert_eq!(c(&[Crashed, Timeout, Ok]), TIMEOUT);
        assert_eq!(c(&[Timeout, Killed, Failed]), KILLED);
    }

    #[test]
    fn run_conditions_take_precedence() {
        let s = stats(&[Outcome::Killed]);
        assert_eq!(exit_code(&RunEnd::Interrupted(15), &s), 143);
        assert_eq!(exit_code(&RunEnd::Interrupted(2), &s), 130);
        assert_eq!(exit_code(&RunEnd::CannotStart(127), &s), 127);
        assert_eq!(exit_code(&RunEnd::Failed, &s), 125);
        assert_eq!(exit_code(&RunEnd::OutputClosed, &s), 141);
    }

    #[test]
    fn jobs_cancelled_by_a_halt_do_not_raise_the_code() {
        use Outcome::*;
        let halted = |n, o: &[Outcome]| exit_code(&RunEnd::Halted { cancelled: n }, &stats(o));
        assert_eq!(halted(2, &[Ok, Cancelled, Cancelled]), OK);
        assert_eq!(halted(1, &[Ok, Cancelled, Cancelled]), FAILED);
        assert_eq!(halted(1, &[Timeout, Cancelled]), TIMEOUT);
        assert_eq!(halted(1, &[Failed, Ok, Cancelled]), FAILED);
    }
}
