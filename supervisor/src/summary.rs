//! What a run did: counts per outcome, duration percentiles and the slowest jobs.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::record::{Outcome, Record};

/// How many of the slowest jobs the summary names.
const SLOWEST: usize = 5;

/// Running totals of a run.
pub struct Stats {
    counts: BTreeMap<Outcome, u64>,
    // Durations in microseconds, 3 significant figures: percentiles without keeping or
    // sorting every duration.
    durations: Histogram<u64>,
    slowest: BinaryHeap<Reverse<(u64, u64, String)>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            counts: BTreeMap::new(),
            // One microsecond to one day; longer durations are clamped.
            durations: Histogram::new_with_bounds(1, 86_400_000_000, 3)
                .expect("valid histogram bounds"),
            slowest: BinaryHeap::new(),
        }
    }
}

impl Stats {
    /// Counts one record.
    pub fn observe(&mut self, record: &Record) {
        *self.counts.entry(record.outcome).or_default() += 1;
        // Jobs that never ran have no duration to speak of.
        if record.attempts == 0 {
            return;
        }
        let micros = (record.duration_ms * 1000.0).max(0.0) as u64;
        self.durations.saturating_record(micros);
        self.slowest
            .push(Reverse((micros, record.seq, record.id.clone())));
        if self.slowest.len() > SLOWEST {
            self.slowest.pop();
        }
    }

    /// Records with this outcome.
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.counts.get(&outcome).copied().unwrap_or(0)
    }

    /// Records in all.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The summary printed on stderr at the end of a run.
    pub fn render(&self, elapsed: Duration) -> String {
        let mut s = String::new();
        let total = self.total();
        let secs = elapsed.as_secs_f64().max(1e-9);
        let _ = writeln!(
            s,
            "jobsup: {total} jobs in {:.3}s ({:.1} jobs/s)",
            elapsed.as_secs_f64(),
            total as f64 / secs
        );
        let counts: Vec<String> = Outcome::ALL
            .iter()
            .filter(|o| self.count(**o) > 0)
            .map(|o| format!("{} {}", o.as_str(), self.count(*o)))
            .collect();
        let _ = writeln!(
            s,
            "  outcomes: {}",
            if counts.is_empty() {
                "none".into()
            } else {
                counts.join(", ")
            }
        );
        if !self.durations.is_empty() {
            let ms = |q: f64| self.durations.value_at_quantile(q) as f64 / 1000.0;
            let _ = writeln!(
                s,
                "  duration: p50 {:.1}ms, p95 {:.1}ms, p99 {:.1}ms, max {:.1}ms",
                ms(0.5),
                ms(0.95),
                ms(0.99),
                self.durations.max() as f64 / 1000.0
            );
            let mut slow: Vec<_> = self.slowest.iter().map(|Reverse(x)| x.clone()).collect();
            slow.sort_by(|a, b| b.cmp(a));
            let names: Vec<String> = slow
                .iter()
                .map(|(us, seq, id)| {
                    let ms = *us as f64 / 1000.0;
                    if id == &seq.to_string() {
                        format!("line {seq} ({ms:.1}ms)")
                    } else {
                        format!("{id} at line {seq} ({ms:.1}ms)")
                    }
                })
                .collect();
            let _ = writeln!(s, "  slowest: {}", names.join(", "));
        }
        s
    }
}
