//! What a run did: counts per outcome, duration percentiles and the slowest jobs, overall
//! and per job kind, so that "which job types are eating my workers?" has a one-line
//! answer.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::record::{Outcome, Record};

/// How many of the slowest jobs are named, overall and per kind.
const SLOWEST: usize = 5;

/// The name under which jobs without a kind are counted.
pub const NO_KIND: &str = "(none)";

/// One of the slowest jobs: duration in microseconds, seq, id.
type Slow = (u64, u64, String);

/// The CPU time a run used (user and system together): jobsup's own threads, and the
/// processes it ran. The supervisor's share is its overhead: what a run costs beyond the
/// jobs themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    /// jobsup's own threads (`RUSAGE_SELF`).
    pub supervisor: Duration,
    /// The processes it ran: all that ran in the workers' cgroups where they are cgroup v2
    /// ([`count_cpu_in`]); else every child reaped so far, with the descendants each
    /// reaped (`RUSAGE_CHILDREN`), which misses a worker killed with its pid namespace's
    /// init.
    pub processes: Duration,
}

/// The run's cgroups, whose CPU count [`Cpu::used_so_far`] takes for the processes' share.
static RUN_CGROUPS: std::sync::OnceLock<std::sync::Arc<crate::cgroup::Cgroups>> =
    std::sync::OnceLock::new();

/// Counts the processes' CPU time in `cgroups` from now on (once per process: a run has
/// one set of cgroups).
pub fn count_cpu_in(cgroups: std::sync::Arc<crate::cgroup::Cgroups>) {
    let _ = RUN_CGROUPS.set(cgroups);
}

impl Cpu {
    /// What the process has used up to now; `None` where the kernel does not say. Before
    /// the run's cgroups are removed, for their count to be taken.
    pub fn used_so_far() -> Option<Cpu> {
        use nix::sys::resource::{getrusage, UsageWho};
        let total = |who| {
            getrusage(who).ok().map(|u| {
                let us = |t: nix::sys::time::TimeVal| {
                    Duration::from_secs(t.tv_sec().max(0) as u64)
                        + Duration::from_micros(t.tv_usec().max(0) as u64)
                };
                us(u.user_time()) + us(u.system_time())
            })
        };
        let in_cgroups = RUN_CGROUPS.get().and_then(|c| c.cpu_used());
        Some(Cpu {
            supervisor: total(UsageWho::RUSAGE_SELF)?,
            processes: match in_cgroups {
                Some(used) => used,
                None => total(UsageWho::RUSAGE_CHILDREN)?,
            },
        })
    }
}

/// Totals for a set of jobs.
struct Tally {
    counts: BTreeMap<Outcome, u64>,
    // Durations in microseconds, 3 significant figures: percentiles without keeping or
    // sorting every duration.
    durations: Histogram<u64>,
    total_us: u64,
    slowest: BinaryHeap<Reverse<Slow>>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            counts: BTreeMap::new(),
            // One microsecond to one day; longer durations are clamped.
            durations: Histogram::new_with_bounds(1, 86_400_000_000, 3)
                .expect("valid histogram bounds"),
            total_us: 0,
            slowest: BinaryHeap::new(),
        }
    }
}

impl Tally {
    fn observe(&mut self, record: &Record) {
        *self.counts.entry(record.outcome).or_default() += 1;
        // Jobs that never ran have no duration to speak of.
        if record.attempts == 0 {
            return;
        }
        let micros = (record.duration_ms * 1000.0).max(0.0) as u64;
        self.durations.saturating_record(micros);
        self.total_us = self.total_us.saturating_add(micros);
        self.slowest
            .push(Reverse((micros, record.seq, record.id.clone())));
        if self.slowest.len() > SLOWEST {
            self.slowest.pop();
        }
    }

    fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    fn count(&self, outcome: Outcome) -> u64 {
        self.counts.get(&outcome).copied().unwrap_or(0)
    }

    fn ms_at(&self, q: f64) -> f64 {
        self.durations.value_at_quantile(q) as f64 / 1000.0
    }

    fn slowest(&self) -> Vec<Slow> {
        let mut slow: Vec<Slow> = self.slowest.iter().map(|Reverse(x)| x.clone()).collect();
        slow.sort_by(|a, b| b.cmp(a));
        slow
    }

    fn outcomes_text(&self) -> String {
        let counts: Vec<String> = Outcome::ALL
            .iter()
            .filter(|o| self.count(**o) > 0)
            .map(|o| format!("{} {}", o.as_str(), self.count(*o)))
            .collect();
        if counts.is_empty() {
            "none".into()
        } else {
            counts.join(", ")
        }
    }

    fn to_json(&self) -> Value {
        let outcomes: serde_json::Map<String, Value> = Outcome::ALL
            .iter()
            .map(|o| (o.as_str().to_string(), json!(self.count(*o))))
            .collect();
        let timed = !self.durations.is_empty();
        let ms = |v: f64| if timed { json!(round3(v)) } else { Value::Null };
        json!({
            "jobs": self.total(),
            "outcomes": outcomes,
            "total_ms": round3(self.total_us as f64 / 1000.0),
            "p50_ms": ms(self.ms_at(0.5)),
            "p95_ms": ms(self.ms_at(0.95)),
            "p99_ms": ms(self.ms_at(0.99)),
            "max_ms": ms(self.durations.max() as f64 / 1000.0),
            "slowest": self.slowest().iter().map(|(us, seq, id)| json!({
                "id": id, "seq": seq, "duration_ms": round3(*us as f64 / 1000.0)
            })).collect::<Vec<_>>(),
        })
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Running totals of a run, overall and per kind.
#[derive(Default)]
pub struct Stats {
    all: Tally,
    kinds: BTreeMap<String, Tally>,
    /// Jobs not run because the job log had them (`--resume`): they have no record.
    skipped: u64,
}

impl Stats {
    /// Counts one record.
    pub fn observe(&mut self, record: &Record) {
        self.all.observe(record);
        let kind = record.kind.as_deref().unwrap_or(NO_KIND);
        match self.kinds.get_mut(kind) {
            Some(tally) => tally.observe(record),
            None => {
                let mut tally = Tally::default();
                tally.observe(record);
                self.kinds.insert(kind.to_string(), tally);
            }
        }
    }

    /// Records with this outcome.
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.all.count(outcome)
    }

    /// Notes how many jobs `--resume` passed over.
    pub fn set_skipped(&mut self, n: u64) {
        self.skipped = n;
    }

    /// Jobs `--resume` passed over.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Records in all.
    pub fn total(&self) -> u64 {
        self.all.total()
    }

    /// Kinds, most total time first (then most jobs, then by name).
    fn kinds_by_time(&self) -> Vec<(&String, &Tally)> {
        let mut kinds: Vec<_> = self.kinds.iter().collect();
        kinds.sort_by(|a, b| {
            b.1.total_us
                .cmp(&a.1.total_us)
                .then(b.1.total().cmp(&a.1.total()))
                .then(a.0.cmp(b.0))
        });
        kinds
    }

    /// The kinds, most total time first, as names.
    pub fn kind_names_by_time(&self) -> Vec<String> {
        self.kinds_by_time()
            .into_iter()
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The summary as text. `elapsed` is the run's wall time and `cpu` its CPU time,
    /// when known.
    pub fn render(&self, elapsed: Option<Duration>, cpu: Option<&Cpu>) -> String {
        let mut s = String::new();
        let total = self.total();
        match elapsed {
            Some(elapsed) => {
                let secs = elapsed.as_secs_f64().max(1e-9);
                let _ = writeln!(
                    s,
                    "jobsup: {total} jobs in {:.3}s ({:.1} jobs/s)",
                    elapsed.as_secs_f64(),
                    total as f64 / secs
                );
            }
            None => {
                let _ = writeln!(s, "jobsup: {total} jobs");
            }
        }
        let _ = writeln!(s, "  outcomes: {}", self.all.outcomes_text());
        if self.skipped > 0 {
            let _ = writeln!(
                s,
                "  skipped: {} (already in the job log; no record)",
                self.skipped
            );
        }
        if !self.all.durations.is_empty() {
            let t = &self.all;
            let _ = writeln!(
                s,
                "  duration: p50 {:.1}ms, p95 {:.1}ms, p99 {:.1}ms, max {:.1}ms",
                t.ms_at(0.5),
                t.ms_at(0.95),
                t.ms_at(0.99),
                t.durations.max() as f64 / 1000.0
            );
            let names: Vec<String> = t.slowest().iter().map(slow_text).collect();
            let _ = writeln!(s, "  slowest: {}", names.join(", "));
        }
        if let Some(cpu) = cpu {
            s.push_str(&self.render_cpu(cpu));
        }
        // A table per kind is worth its lines once there is more than "no kind".
        if self.kinds.keys().any(|k| k != NO_KIND) {
            let _ = writeln!(s, "  by kind, most time first:");
            let _ = writeln!(
                s,
                "    {:<20} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9}  outcomes; slowest",
                "kind", "jobs", "total", "p50", "p95", "p99", "max"
            );
            for (kind, t) in self.kinds_by_time() {
                let (p50, p95, p99, max) = if t.durations.is_empty() {
                    ("-".into(), "-".into(), "-".into(), "-".into())
                } else {
                    (
                        ms_text(t.ms_at(0.5)),
                        ms_text(t.ms_at(0.95)),
                        ms_text(t.ms_at(0.99)),
                        ms_text(t.durations.max() as f64 / 1000.0),
                    )
                };
                let slow: Vec<String> = t.slowest().iter().take(3).map(slow_text).collect();
                let _ = writeln!(
                    s,
                    "    {:<20} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9}  {}; {}",
                    kind,
                    t.total(),
                    ms_text(t.total_us as f64 / 1000.0),
                    p50,
                    p95,
                    p99,
                    max,
                    t.outcomes_text(),
                    if slow.is_empty() {
                        "-".into()
                    } else {
                        slow.join(", ")
                    }
                );
            }
        }
        s
    }

    /// The summary's line on CPU time: totals, and per job where there were jobs.
    fn render_cpu(&self, cpu: &Cpu) -> String {
        let per_job = |d: Duration| match self.total() {
            0 => String::new(),
            n => format!(" ({:.3}ms per job)", d.as_secs_f64() * 1000.0 / n as f64),
        };
        format!(
            "  cpu: jobsup {:.3}s{}, the processes it ran {:.3}s{}\n",
            cpu.supervisor.as_secs_f64(),
            per_job(cpu.supervisor),
            cpu.processes.as_secs_f64(),
            per_job(cpu.processes)
        )
    }

    /// The summary as one JSON object. `elapsed` is the run's wall time, when known.
    pub fn to_json(&self, elapsed: Option<Duration>) -> Value {
        let mut v = self.all.to_json();
        if self.skipped > 0 {
            v["skipped"] = json!(self.skipped);
        }
        if let Some(elapsed) = elapsed {
            v["elapsed_s"] = json!(round3(elapsed.as_secs_f64()));
            v["jobs_per_s"] = json!(round3(
                self.total() as f64 / elapsed.as_secs_f64().max(1e-9)
            ));
        }
        v["kinds"] = Value::Array(
            self.kinds_by_time()
                .into_iter()
                .map(|(kind, t)| {
                    let mut k = t.to_json();
                    k["kind"] = json!(kind);
                    k
                })
                .collect(),
        );
        v
    }
}

/// The CPU times as the JSON summary's `cpu_s`: seconds, to the microsecond.
pub fn cpu_json(cpu: &Cpu) -> Value {
    let seconds = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e6;
    json!({
        "supervisor": seconds(cpu.supervisor),
        "processes": seconds(cpu.processes),
    })
}

fn ms_text(ms: f64) -> String {
    if ms >= 10_000.0 {
        format!("{:.1}s", ms / 1000.0)
    } else {
        format!("{ms:.1}ms")
    }
}

fn slow_text((us, seq, id): &Slow) -> String {
    let ms = *us as f64 / 1000.0;
    if id == &seq.to_string() {
        format!("line {seq} ({ms:.1}ms)")
    } else {
        format!("{id} at line {seq} ({ms:.1}ms)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::JobSpec;

    fn record(seq: u64, kind: Option<&str>, outcome: Outcome, ms: f64) -> Record {
        let job = JobSpec {
            id: format!("j{seq}"),
            kind: kind.map(str::to_string),
            ..JobSpec::sample(seq)
        };
        let mut r = Record::new(&job, outcome);
        r.set_duration(Duration::from_secs_f64(ms / 1000.0));
        r
    }

    #[test]
    fn absurd_durations_from_a_report_file_do_not_panic() {
        // `jobsup report` reads durations from files it did not write.
        let mut s = Stats::default();
        for ms in [f64::INFINITY, f64::NAN, -5.0, 1e300, f64::MAX] {
            let mut r = record(1, Some("x"), Outcome::Ok, 1.0);
            r.duration_ms = ms;
            s.observe(&r);
            s.observe(&r);
        }
        assert!(s.render(None, None).contains("x"));
        assert!(s.to_json(None)["kinds"].is_array());
    }

    #[test]
    fn kinds_are_ordered_by_total_time_and_counts_add_up() {
        let mut s = Stats::default();
        for i in 0..10 {
            s.observe(&record(i, Some("send_mail"), Outcome::Ok, 10.0));
        }
        s.observe(&record(20, Some("export"), Outcome::Timeout, 500.0));
        s.observe(&record(21, None, Outcome::Failed, 1.0));
        assert_eq!(s.kind_names_by_time(), ["export", "send_mail", NO_KIND]);
        let v = s.to_json(Some(Duration::from_secs(1)));
        assert_eq!(v["jobs"], 12);
        let kinds = v["kinds"].as_array().unwrap();
        let sum: u64 = kinds.iter().map(|k| k["jobs"].as_u64().unwrap()).sum();
        assert_eq!(sum, 12);
        assert_eq!(kinds[0]["slowest"][0]["id"], "j20");
        assert_eq!(kinds[1]["outcomes"]["ok"], 10);
        let cpu = Cpu {
            supervisor: Duration::from_millis(24),
            processes: Duration::from_millis(1200),
        };
        assert_eq!(
            s.render_cpu(&cpu),
            "  cpu: jobsup 0.024s (2.000ms per job), the processes it ran 1.200s (100.000ms per job)\n"
        );
        assert_eq!(cpu_json(&cpu)["supervisor"], 0.024);
        let text = s.render(None, Some(&cpu));
        assert!(text.contains("  cpu: jobsup 0.024s"), "{text}");
        let export = text.find("export").unwrap();
        let mail = text.find("send_mail").unwrap();
        assert!(export < mail, "{text}");
    }
}
