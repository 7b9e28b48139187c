//! `--halt`: when a run stops early, as in GNU parallel (`soon,fail=1`, `now,success=1`,
//! `soon,fail=20%`, ...). A pure rule and its counting; the pool carries out the stop.
//!
//! Parallel counts a percentage against the total number of jobs, which a streamed input
//! does not know. Here it is counted against the jobs *finished so far*, and only once at
//! least [`MIN_FOR_PERCENT`] have finished, so that the first failure of a run does not
//! amount to 100%.

use std::fmt;

use crate::record::Outcome;

/// Jobs that must have finished before a percentage rule can trigger (parallel also asks
/// for at least 3 jobs).
pub const MIN_FOR_PERCENT: u64 = 3;

/// What happens to the running jobs when the rule triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Start no new jobs; let the running ones finish.
    Soon,
    /// Start no new jobs and stop the running ones at once.
    Now,
}

/// Which finished jobs the rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counts {
    /// Every outcome but `ok` (a `rejected` line is a failed job).
    Fail,
    /// `ok` only.
    Success,
    /// Every finished job.
    Done,
}

/// How many of them it takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// This many jobs.
    Jobs(u64),
    /// This share (0 < p <= 100) of the jobs finished so far.
    Percent(f64),
}

/// A `--halt` rule other than `never`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HaltRule {
    /// Soon or now.
    pub when: When,
    /// What is counted.
    pub counts: Counts,
    /// How many.
    pub threshold: Threshold,
}

/// A parsed `--halt` value: `None` is `never`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Halt(pub Option<HaltRule>);

impl std::str::FromStr for Halt {
    type Err = String;

    fn from_str(s: &str) -> Result<Halt, String> {
        let rule = |when, counts| {
            Some(HaltRule {
                when,
                counts,
                threshold: Threshold::Jobs(1),
            })
        };
        // Old parallel's shorthands.
        match s.trim() {
            "never" | "0" => return Ok(Halt(None)),
            "1" => return Ok(Halt(rule(When::Soon, Counts::Fail))),
            "2" => return Ok(Halt(rule(When::Now, Counts::Fail))),
            _ => {}
        }
        let bad = |why: &str| {
            format!(
                "--halt {s:?}: {why} (expected never, soon,fail=N, now,fail=N, soon,fail=P%, now,success=N, soon,done=N, ...)"
            )
        };
        let (when, what) = s.split_once(',').ok_or_else(|| bad("no ','"))?;
        let when = match when.trim() {
            "soon" => When::Soon,
            "now" => When::Now,
            _ => return Err(bad("it starts with soon or now")),
        };
        let (counts, n) = what.split_once('=').ok_or_else(|| bad("no '='"))?;
        let counts = match counts.trim() {
            "fail" => Counts::Fail,
            "success" => Counts::Success,
            "done" => Counts::Done,
            _ => return Err(bad("it counts fail, success or done")),
        };
        let n = n.trim();
        let threshold = match n.strip_suffix('%') {
            Some(p) => match p.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => Threshold::Percent(p),
                _ => return Err(bad("a percentage is more than 0 and at most 100")),
            },
            None => match n.parse::<u64>() {
                Ok(n) if n > 0 => Threshold::Jobs(n),
                _ => return Err(bad("a count is a whole number of at least 1")),
            },
        };
        Ok(Halt(Some(HaltRule {
            when,
            counts,
            threshold,
        })))
    }
}

impl fmt::Display for HaltRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let when = match self.when {
            When::Soon => "soon",
            When::Now => "now",
        };
        let counts = match self.counts {
            Counts::Fail => "fail",
            Counts::Success => "success",
            Counts::Done => "done",
        };
        match self.threshold {
            Threshold::Jobs(n) => write!(f, "{when},{counts}={n}"),
            Threshold::Percent(p) => write!(f, "{when},{counts}={p}%"),
        }
    }
}

impl HaltRule {
    fn counts(&self, outcome: Outcome) -> bool {
        match self.counts {
            Counts::Fail => outcome != Outcome::Ok,
            Counts::Success => outcome == Outcome::Ok,
            Counts::Done => true,
        }
    }
}

/// Counts finished jobs against a rule; says once when it triggers.
#[derive(Debug, Clone, Default)]
pub struct HaltCounter {
    rule: Option<HaltRule>,
    finished: u64,
    matching: u64,
    triggered: bool,
}

impl HaltCounter {
    /// A counter for `halt` (`never` never triggers).
    pub fn new(halt: Halt) -> HaltCounter {
        HaltCounter {
            rule: halt.0,
            ..HaltCounter::default()
        }
    }

    /// Counts a job's final outcome (a retried job only on its last attempt). Returns the
    /// rule the first time it triggers, and never again.
    pub fn observe(&mut self, outcome: Outcome) -> Option<HaltRule> {
        let rule = self.rule.filter(|_| !self.triggered)?;
        self.finished += 1;
        if rule.counts(outcome) {
            self.matching += 1;
        }
        self.triggered = match rule.threshold {
            Threshold::Jobs(n) => self.matching >= n,
            Threshold::Percent(p) => {
                self.finished >= MIN_FOR_PERCENT
                    && self.matching as f64 * 100.0 >= p * self.finished as f64
            }
        };
        self.triggered.then_some(rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;

    fn parse(s: &str) -> Option<HaltRule> {
        s.parse::<Halt>().unwrap().0
    }

    #[test]
    fn parses_parallels_forms_and_shorthands() {
        assert_eq!(parse("never"), None);
        assert_eq!(parse("0"), None);
        assert_eq!(parse("1").unwrap().to_string(), "soon,fail=1");
        assert_eq!(parse("2").unwrap().to_string(), "now,fail=1");
        let r = parse("now,success=1").unwrap();
        assert_eq!(
            (r.when, r.counts, r.threshold),
            (When::Now, Counts::Success, Threshold::Jobs(1))
        );
        assert_eq!(
            parse("soon,fail=25%").unwrap().threshold,
            Threshold::Percent(25.0)
        );
        assert_eq!(parse("soon,done=3").unwrap().to_string(), "soon,done=3");
        for bad in [
            "",
            "sometime",
            "soon",
            "soon,fail",
            "soon,oops=1",
            "now,fail=0",
            "now,fail=-1",
            "now,fail=x",
            "now,fail=0%",
            "now,fail=101%",
            "3",
        ] {
            let e = bad.parse::<Halt>().unwrap_err();
            assert!(e.starts_with("--halt"), "{bad}: {e}");
        }
    }

    #[test]
    fn counts_n_jobs_and_triggers_once() {
        let mut c = HaltCounter::new("soon,fail=2".parse().unwrap());
        assert_eq!(c.observe(Failed), None);
        assert_eq!(c.observe(Ok), None);
        // A malformed line is a failed job.
        assert!(c.observe(Rejected).is_some());
        assert_eq!(c.observe(Killed), None, "said once");
        let mut never = HaltCounter::new(Halt(None));
        assert!((0..10).all(|_| never.observe(Failed).is_none()));
        let mut s = HaltCounter::new("now,success=1".parse().unwrap());
        assert_eq!(s.observe(Timeout), None);
        assert!(s.observe(Ok).is_some());
        let mut d = HaltCounter::new("soon,done=2".parse().unwrap());
        assert_eq!(d.observe(Ok), None);
        assert!(d.observe(Failed).is_some());
    }

    #[test]
    fn a_percentage_counts_the_jobs_finished_so_far_from_the_third() {
        let mut c = HaltCounter::new("soon,fail=50%".parse().unwrap());
        // 1 of 1 and 1 of 2 are at least 50%, but too few jobs have finished.
        assert_eq!(c.observe(Failed), None);
        assert_eq!(c.observe(Ok), None);
        assert_eq!(c.observe(Ok), None, "1 of 3 is under 50%");
        assert!(c.observe(Failed).is_some(), "2 of 4 is 50%");
    }
}
