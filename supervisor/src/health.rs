//! What broke inside jobsup, if anything: the first panic of any thread or task.
//!
//! jobsup validates every value from outside where it enters, so a panic is a bug. A bug
//! must still not cost a record or hang the run: [`install`] puts in a panic hook that
//! remembers the first panic (which thread, where, what) and wakes the pool, which stops
//! reading, stops the running jobs and records every job read; the run then exits 125 and
//! the summary says what broke. Each thread and task is also owned by someone who notices
//! its end (the pool's `JoinSet` of worker tasks, the reader's and writer's join handles,
//! the reaper's and spawners' own `catch_unwind`), so nothing waits for a part that died.
//!
//! The test-only fault points ([`fault`]) live in `jobsup_process::fault`.

use std::sync::OnceLock;

use tokio::sync::Notify;

static FIRST: OnceLock<String> = OnceLock::new();
static BROKEN: Notify = Notify::const_new();

/// Puts in the panic hook. Call once, early in `main`.
pub fn install() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let what = panic_message(info.payload());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let text = format!("internal error: thread '{name}' failed{at}: {what}");
        // The log line goes out through the logging thread; without a subscriber (before
        // logging starts), straight to stderr.
        if tracing::dispatcher::has_been_set() {
            tracing::error!("{text}");
        } else {
            eprintln!("jobsup: {text}");
        }
        let _ = FIRST.set(text);
        BROKEN.notify_one();
    }));
}

/// The first internal failure of this process, in words.
pub fn first_failure() -> Option<&'static str> {
    FIRST.get().map(String::as_str)
}

/// Resolves once some part of jobsup has panicked (at once if one already has).
/// Cancel-safe.
pub async fn broken() -> &'static str {
    loop {
        if let Some(what) = first_failure() {
            return what;
        }
        BROKEN.notified().await;
    }
}

pub use jobsup_process::fault::{fault, panic_message};
