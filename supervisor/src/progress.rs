//! The progress bar on stderr, shown only when stderr is a terminal: jobs done, counts per
//! outcome, jobs/s, and an ETA when the input's size is known (a file, or stdin redirected
//! from one), measured by how much of it has been read.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::record::Outcome;
use crate::summary::Stats;

/// The bar on screen, if any: log lines are written around it.
static ON_SCREEN: OnceLock<ProgressBar> = OnceLock::new();

/// Stderr for log lines: while a progress bar is drawn, each line is written with the bar
/// lifted off the screen and redrawn below it, instead of landing on the bar's line.
pub struct StderrBelowBar;

impl Write for StderrBelowBar {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match ON_SCREEN.get() {
            Some(bar) => bar.suspend(|| io::stderr().write_all(buf))?,
            None => io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// A progress bar, or nothing when stderr is not a terminal.
pub struct Progress {
    bar: Option<ProgressBar>,
    bytes_read: Arc<AtomicU64>,
    started: Instant,
}

impl Progress {
    /// A bar over `input_size` bytes of input (a spinner when unknown), if `enabled`.
    pub fn new(enabled: bool, input_size: Option<u64>, bytes_read: Arc<AtomicU64>) -> Progress {
        let bar = enabled.then(|| {
            let (bar, template) = match input_size {
                Some(size) if size > 0 => (
                    ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr()),
                    "{bar:24} {percent:>3}% {msg} (ETA {eta})",
                ),
                _ => (
                    ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
                    "{spinner} {msg}",
                ),
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            let _ = ON_SCREEN.set(bar.clone());
            bar
        });
        Progress {
            bar,
            bytes_read,
            started: Instant::now(),
        }
    }

    /// Redraws from the run's totals (indicatif limits how often it really draws).
    pub fn update(&self, stats: &Stats) {
        let Some(bar) = &self.bar else {
            return;
        };
        bar.set_position(self.bytes_read.load(Ordering::Relaxed));
        let done = stats.total();
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        let counts: Vec<String> = Outcome::ALL
            .iter()
            .filter(|o| stats.count(**o) > 0)
            .map(|o| format!("{} {}", o.as_str(), stats.count(*o)))
            .collect();
        bar.set_message(format!(
            "{done} jobs done: {} · {rate:.1} jobs/s",
            counts.join(", ")
        ));
    }

    /// Removes the bar, before the summary is printed.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
