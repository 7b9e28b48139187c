//! A processor that misbehaves on command, to try out every outcome jobsup can record.
//!
//! Demonstrates how results, errors, panics and crashes look from the supervisor's side.
//! The payload is a command:
//!
//! | payload | what the job does |
//! |---|---|
//! | `ok`, `ok:TEXT` | succeeds with `ok` or TEXT |
//! | `fail`, `fail:MSG` | fails with `failed on purpose` or MSG |
//! | `panic`, `panic:MSG` | panics (the runtime reports it and keeps serving) |
//! | `abort` | aborts the process (SIGABRT) |
//! | `exit:N` | exits with code N in the middle of the job |
//! | `sleep:MS` | sleeps MS milliseconds, ignoring any cleanup request, then succeeds |
//! | `spin` | burns CPU forever, ignoring any cleanup request |
//! | `segv` | dies of SIGSEGV |
//! | `log:TEXT` | writes TEXT on stdout and on stderr (jobsup logs both), then succeeds |
//! | `ok-on:N` | fails until its Nth attempt (with `--retries`), then succeeds |
//! | `beat:MS` | works MS milliseconds, sending a heartbeat every 50 ms, then succeeds |
//! | `silent:MS` | works MS milliseconds without a heartbeat, then succeeds |
//! | anything else | succeeds with the payload itself |
//!
//! ```text
//! cargo build -p jobsup-tests --bin flaky
//! printf 'ok\nfail:disk full\npanic\nsegv\n' | jobsup run -- target/debug/jobsup-flaky
//! ```

use std::hint::black_box;
use std::process;
use std::thread;
use std::time::Duration;

use jobsup_runtime::{Context, Job};
use nix::sys::signal::{raise, signal, SigHandler, Signal};

fn main() {
    jobsup_runtime::serve(act)
}

fn act(job: &Job, ctx: &Context) -> Result<Vec<u8>, String> {
    let payload = String::from_utf8_lossy(job.payload());
    let payload = payload.trim_end_matches(['\r', '\n']);
    let (command, arg) = match payload.split_once(':') {
        Some((command, arg)) => (command, Some(arg)),
        None => (payload, None),
    };
    match (command, arg) {
        ("ok", arg) => Ok(arg.unwrap_or("ok").as_bytes().to_vec()),
        ("fail", arg) => Err(arg.unwrap_or("failed on purpose").to_owned()),
        ("panic", arg) => panic!("{}", arg.unwrap_or("flaky panicked on purpose")),
        ("abort", None) => process::abort(),
        ("exit", Some(code)) => process::exit(number(code)?),
        ("sleep", Some(ms)) => {
            let ms: u64 = number(ms)?;
            thread::sleep(Duration::from_millis(ms));
            Ok(format!("slept {ms} ms").into_bytes())
        }
        ("spin", None) => spin(),
        ("segv", None) => segfault(),
        ("ok-on", Some(n)) => {
            let n: u32 = number(n)?;
            if job.attempt() >= n {
                Ok(format!("ok on attempt {}", job.attempt()).into_bytes())
            } else {
                Err(format!("not yet: attempt {} of {n}", job.attempt()))
            }
        }
        ("beat", Some(ms)) => {
            let ms: u64 = number(ms)?;
            let until = std::time::Instant::now() + Duration::from_millis(ms);
            while std::time::Instant::now() < until && !ctx.cleanup_requested() {
                ctx.heartbeat();
                thread::sleep(Duration::from_millis(50));
            }
            Ok(format!("worked {ms} ms with heartbeats").into_bytes())
        }
        ("silent", Some(ms)) => {
            let ms: u64 = number(ms)?;
            thread::sleep(Duration::from_millis(ms));
            Ok(format!("worked {ms} ms in silence").into_bytes())
        }
        ("log", Some(text)) => {
            println!("{text} (stdout)");
            eprintln!("{text} (stderr)");
            Ok(b"logged".to_vec())
        }
        _ => Ok(job.payload().to_vec()),
    }
}

fn number<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))
}

fn spin() -> ! {
    let mut n = 0_u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

fn segfault() -> ! {
    // Rust's own SIGSEGV handler (for stack overflows) returns from a raised signal instead
    // of dying, so put the default action back first.
    // SAFETY: SIG_DFL runs no code in this process.
    let _ = unsafe { signal(Signal::SIGSEGV, SigHandler::SigDfl) };
    let _ = raise(Signal::SIGSEGV);
    // Only reached if the signal is blocked: still die abnormally.
    process::abort()
}
