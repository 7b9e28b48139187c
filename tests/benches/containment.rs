//! What the default containment costs per spawn: `jobsup run --mode exec -- /bin/true`
//! with it (a pid namespace behind an init, a mount namespace with its own `/proc` and
//! read-only cgroup file systems, a cgroup namespace; a user namespace as an ordinary user)
//! against `--isolate none`, in alternating rounds of the same run, and the same for
//! `--isolate net` on top (a network namespace is the expensive one).
//!
//! Run with `cargo bench -p jobsup-tests --bench containment`. It prints numbers and
//! asserts nothing about speed. `JOBSUP_BENCH_EXEC_JOBS` sets the jobs per run (default
//! 2000), `JOBSUP_BENCH_ROUNDS` the rounds (default 5).

use std::time::{Duration, Instant};

use jobsup_tests::{children_cpu, jobsup, lines, median};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Wall-clock and CPU microseconds per job of `n` exec-mode `/bin/true` jobs at `-j K`
/// with `flags`. The CPU time (jobsup's and its children's) is what a busy machine blurs
/// least.
fn per_spawn(n: usize, k: usize, flags: &[&str]) -> Result<(f64, f64), Error> {
    let j = jobsup!().timeout(Duration::from_secs(600));
    let input = j.write_file("jobs.txt", lines(n, |i| format!("{i}")));
    let j = j
        .args([
            "--mode",
            "exec",
            "-q",
            "--summary",
            "none",
            "-j",
            &k.to_string(),
        ])
        .args(flags)
        .arg("--input")
        .arg(&input)
        .args(["--output", "/dev/null"])
        .processor("/bin/true", [] as [&str; 0]);
    let cpu = children_cpu();
    let start = Instant::now();
    let run = j.run();
    let elapsed = start.elapsed();
    let cpu = children_cpu() - cpu;
    if run.code() != 0 {
        return Err(format!("jobsup exited {}: {}", run.code(), run.stderr.trim()).into());
    }
    Ok((elapsed.as_secs_f64() * 1e6 / n as f64, cpu / n as f64))
}

fn main() -> Result<(), Error> {
    let n: usize = std::env::var("JOBSUP_BENCH_EXEC_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let rounds: usize = std::env::var("JOBSUP_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    println!(
        "containment: {n} exec-mode /bin/true jobs per run, median of {rounds} alternating rounds"
    );
    println!(
        "{:>3}  {:<16}  {:>14}  {:>14}  {:>10}  {:>12}  {:>12}  {:>10}",
        "K", "containment", "none wall", "contained", "ratio", "none CPU", "contained", "ratio"
    );
    for k in [1, 2] {
        for (name, flags) in [
            ("default", &[][..]),
            ("default + net", &["--isolate", "net"][..]),
        ] {
            let mut wall = (Vec::new(), Vec::new(), Vec::new());
            let mut cpu = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..rounds {
                let a = per_spawn(n, k, &["--isolate", "none"])?;
                let b = per_spawn(n, k, flags)?;
                wall.0.push(a.0);
                wall.1.push(b.0);
                wall.2.push(b.0 / a.0);
                cpu.0.push(a.1);
                cpu.1.push(b.1);
                cpu.2.push(b.1 / a.1);
            }
            println!(
                "{k:>3}  {name:<16}  {:>11.0} us  {:>11.0} us  {:>9.2}x  {:>9.0} us  {:>9.0} us  {:>9.2}x",
                median(wall.0),
                median(wall.1),
                median(wall.2),
                median(cpu.0),
                median(cpu.1),
                median(cpu.2)
            );
        }
    }
    Ok(())
}
