//! The progress bar on stderr, shown only when stderr is a terminal: jobs done, counts per
//! outcome, jobs/s, and an ETA when the input's size is known (a file, or stdin redirected
//! from one), measured by how much of it has been read.
//!
//! The pool only stores counts ([`Progress::update`]); the bar is drawn by the stderr
//! thread of [`crate::logs`], between log lines, so that a terminal that stops reading
//! stalls that thread and nothing else.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::record::Outcome;
use crate::summary::Stats;

/// The bar on screen, if any.
static ON_SCREEN: OnceLock<Screen> = OnceLock::new();

/// What the bar shows, as the pool last left it.
struct Screen {
    bar: ProgressBar,
    bytes_read: Arc<AtomicU64>,
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
    /// A bar over `input_size` bytes of input (a spinner when unknown), if `enabled`.
    pub fn new(enabled: bool, input_size: Option<u64>, bytes_read: Arc<AtomicU64>) -> Progress {
        if !enabled {
            return Progress { screen: None };
        }
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
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let screen = Screen {
            bar,
            bytes_read,
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
            count.store(stats.count(outcome), Ordering::Relaxed);
        }
    }

    /// The run is over: the bar is cleared before the summary is written.
    pub fn finish(&self) {
        if let Some(screen) = self.screen {
            screen.over.store(true, Ordering::Relaxed);
        }
    }
}

/// Whether a bar is on screen (for the stderr thread).
pub(crate) fn shown() -> bool {
    ON_SCREEN
        .get()
        .is_some_and(|s| !s.over.load(Ordering::Relaxed) || !s.bar.is_finished())
}

/// Redraws the bar from the last totals, or clears it once the run is over (stderr
/// thread only).
pub(crate) fn redraw() {
    let Some(screen) = ON_SCREEN.get() else {
        return;
    };
    if screen.over.load(Ordering::Relaxed) {
        return clear();
    }
    let bar = &screen.bar;
    bar.set_position(screen.bytes_read.load(Ordering::Relaxed));
    let counts: Vec<(Outcome, u64)> = Outcome::ALL
        .iter()
        .zip(&screen.counts)
        .map(|(o, c)| (*o, c.load(Ordering::Relaxed)))
        .collect();
    let done: u64 = counts.iter().map(|(_, n)| n).sum();
    let rate = done as f64 / screen.started.elapsed().as_secs_f64().max(1e-3);
    let counts: Vec<String> = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(o, n)| format!("{} {n}", o.as_str()))
        .collect();
    bar.set_message(format!(
        "{done} jobs done: {} · {rate:.1} jobs/s",
        counts.join(", ")
    ));
    bar.tick();
}

/// Removes the bar for good (stderr thread only).
pub(crate) fn clear() {
    if let Some(screen) = ON_SCREEN.get() {
        if !screen.bar.is_finished() {
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
