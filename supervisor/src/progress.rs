//! The progress bar on stderr, shown only when stderr is a terminal: jobs done out of the
//! jobs in the input, counts per outcome, jobs/s, and an ETA.
//!
//! Progress is counted in finished jobs (records), never in input bytes: the input is read
//! ahead of the jobs, so bytes would say 100% with most jobs still to run. The total is
//! known when the input is a regular file (`--input FILE`, or stdin redirected from one):
//! a thread counts its jobs ([`Remaining::count_jobs`]) while the run starts, and until it
//! is done, or when the input is a pipe, a spinner shows the count and the rate.
//!
//! The pool only stores counts ([`Progress::update`]); the bar is drawn by the stderr
//! thread of [`crate::logs`], between log lines, so that a terminal that stops reading
//! stalls that thread and nothing else. Its last draw, before it is cleared for the
//! summary, shows the final counts.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::record::Outcome;
use crate::source::Remaining;
use crate::summary::Stats;

/// The bar on screen, if any.
static ON_SCREEN: OnceLock<Screen> = OnceLock::new();

/// The bar once the total is known.
const BAR: &str = "{bar:24} {pos}/{len} jobs done {percent:>3}% {msg} (ETA {eta})";

/// The spinner while it is not (a pipe, or still counting).
const SPINNER: &str = "{spinner} {pos} jobs done: {msg}";

/// What the bar shows, as the pool last left it.
struct Screen {
    bar: ProgressBar,
    /// The jobs in the input, once counted.
    total: Arc<OnceLock<u64>>,
    /// Whether the bar has been switched from the spinner to the bar with a total.
    has_total: AtomicBool,
    started: Instant,
    /// Jobs done per outcome, in the order of [`Outcome::ALL`].
    counts: [AtomicU64; Outcome::ALL.len()],
    /// The run is over: the bar is to be cleared, not redrawn.
    over: AtomicBool,
}

/// A progress bar, or nothing when stderr is not a terminal.
pub struct Progress {
    screen: Option<&'static Screen>,
}

impl Progress {
    /// A bar over the jobs of `input` (a spinner when it cannot be counted), if `enabled`.
    pub fn new(enabled: bool, input: Option<Remaining>) -> Progress {
        if !enabled {
            return Progress { screen: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(style(SPINNER));
        let total = Arc::new(OnceLock::new());
        if let Some(input) = input {
            count_in_background(input, Arc::clone(&total));
        }
        let screen = Screen {
            bar,
            total,
            has_total: AtomicBool::new(false),
            started: Instant::now(),
            counts: Default::default(),
            over: AtomicBool::new(false),
        };
        // One run per process: a second bar is not shown.
        let screen = ON_SCREEN.set(screen).ok().and_then(|()| ON_SCREEN.get());
        Progress { screen }
    }

    /// Notes the run's totals, for the next redraw.
    pub fn update(&self, stats: &Stats) {
        let Some(screen) = self.screen else {
            return;
        };
        for (count, outcome) in screen.counts.iter().zip(Outcome::ALL) {
            count.store(stats.count(outcome), Ordering::Release);
        }
    }

    /// The run is over: the bar is cleared before the summary is written.
    pub fn finish(&self) {
        if let Some(screen) = self.screen {
            screen.over.store(true, Ordering::Release);
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Counts the input's jobs on a thread of its own: a large file takes a while, and the
/// run does not wait for it. If counting fails, the spinner stays.
fn count_in_background(input: Remaining, total: Arc<OnceLock<u64>>) {
    let counting = std::thread::Builder::new()
        .name("jobsup-count".into())
        .spawn(move || match input.count_jobs() {
            Ok(n) => {
                let _ = total.set(n);
            }
            Err(e) => tracing::debug!("cannot count the input's jobs for the progress bar: {e}"),
        });
    if let Err(e) = counting {
        tracing::debug!("cannot start counting the input's jobs: {e}");
    }
}

/// Whether a bar is on screen (for the stderr thread).
pub(crate) fn shown() -> bool {
    ON_SCREEN
        .get()
        .is_some_and(|s| !s.over.load(Ordering::Acquire) || !s.bar.is_finished())
}

/// Redraws the bar from the last totals, or clears it once the run is over (stderr
/// thread only).
pub(crate) fn redraw() {
    let Some(screen) = ON_SCREEN.get() else {
        return;
    };
    if screen.over.load(Ordering::Acquire) {
        return clear();
    }
    refresh(screen);
    screen.bar.tick();
}

/// Puts the last totals into the bar, without drawing it.
fn refresh(screen: &Screen) {
    let bar = &screen.bar;
    let counts: Vec<(Outcome, u64)> = Outcome::ALL
        .iter()
        .zip(&screen.counts)
        .map(|(o, c)| (*o, c.load(Ordering::Acquire)))
        .collect();
    let done: u64 = counts.iter().map(|(_, n)| n).sum();
    if let Some(&total) = screen.total.get() {
        if !screen.has_total.swap(true, Ordering::Relaxed) {
            bar.set_style(style(BAR));
        }
        // Never past 100%: a file that grew after it was counted has more jobs.
        bar.set_length(total.max(done));
    }
    bar.set_position(done);
    let rate = done as f64 / screen.started.elapsed().as_secs_f64().max(1e-3);
    let counts: Vec<String> = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(o, n)| format!("{} {n}", o.as_str()))
        .collect();
    bar.set_message(format!("{} · {rate:.1} jobs/s", counts.join(", ")));
}

/// Removes the bar for good (stderr thread only), after drawing it once more with the
/// final totals: the last thing the bar said is how the run ended.
pub(crate) fn clear() {
    if let Some(screen) = ON_SCREEN.get() {
        if !screen.bar.is_finished() {
            refresh(screen);
            screen.bar.force_draw();
            screen.bar.finish_and_clear();
        }
    }
}

/// Runs `write` (a log line) with the bar lifted off the screen, so that the line lands
/// above it instead of on its line (stderr thread only).
pub(crate) fn around_bar(write: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    match ON_SCREEN.get() {
        Some(screen) if !screen.bar.is_finished() => screen.bar.suspend(write),
        _ => write(),
    }
}
