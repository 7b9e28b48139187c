//! Throughput and memory of jobsup, against a raw-pipe baseline (lateness is the
//! `deadlines` bench).
//!
//! Run with `cargo bench -p jobsup-tests --bench throughput`. It prints numbers and asserts
//! nothing about speed. `JOBSUP_BENCH_JOBSUP` names another jobsup binary to measure
//! instead of this build's (an older build, for a before/after). `JOBSUP_BENCH_JOBS` sets the number of jobs per throughput run
//! (default 20000), `JOBSUP_BENCH_ROUNDS` the rounds per configuration (default 5),
//! `JOBSUP_BENCH_ONLY=exec` runs the exec rows alone (sections 4, jobs/s and CPU).
//!
//! 1. Baseline: K `echo` processors spawned directly, one thread per processor doing
//!    sequential round trips (`Job` frame out, `Done` frame back) over the two protocol
//!    pipes. This is the cost of the processes and the protocol alone.
//! 2. jobsup: `jobsup run -j K --input FILE --output /dev/null -- echo` on the same number
//!    of jobs, timed end to end (start-up and shutdown included), at K = 1, 2 and 64.
//! 3. Peak RSS of jobsup at `-j 64` over `JOBSUP_BENCH_RSS_JOBS` jobs (default a million)
//!    and a tenth of that (its own `VmHWM`): it should not grow with the input.
//! 4. `--mode exec`: `jobsup run --mode exec -j K -- /bin/true` on `JOBSUP_BENCH_EXEC_JOBS`
//!    jobs (default 2000), against `xargs -P K -n 1 /bin/true` on as many lines, one
//!    thread spawning `/bin/true` and waiting for it, one at a time, and K threads each
//!    doing what jobsup does per exec job (stdin, stdout and stderr on pipes, spawn,
//!    wait) with no hop between threads: the floor of the design. Then the CPU time
//!    per job of the same two runs, each with every process it ran (`RUSAGE_CHILDREN`),
//!    and jobsup's split of its own (the summary's `cpu_s`): where jobs/s fall short of
//!    xargs on a machine the jobs keep busy, this says which side the time goes to.
//! 5. `--mode lines`: `jobsup run --mode lines -j K -- stdbuf -oL cat` (or a `python3 -u`
//!    echo loop without stdbuf) on the same number of jobs as 1 and 2, against K threads
//!    that each drive the same program directly with write-line/read-line round trips.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use jobsup_tests::{bin, children_cpu, lines, median};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The jobsup binary measured: `JOBSUP_BENCH_JOBSUP` (another build, to compare), or
/// this one.
fn jobsup_bin() -> String {
    std::env::var("JOBSUP_BENCH_JOBSUP")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_jobsup-shim").to_string())
}

/// `jobsup run`, with the binary measured.
fn jobsup_run() -> jobsup_tests::Jobsup {
    jobsup_tests::Jobsup::new(jobsup_bin()).arg("run")
}

/// `n` round trips through one directly spawned `echo` processor.
fn baseline_worker(n: usize, first_id: u64) -> Result<(), Error> {
    jobsup_tests::raw::echo_round_trips(&[OsString::from(bin!("jobsup-echo"))], n, first_id)
}

/// Waits for a benchmark child once its input is closed; kills it first if the round trips
/// failed, so that a broken run cannot hang the benchmark.
fn end_child(mut child: std::process::Child, outcome: Result<(), Error>) -> Result<(), Error> {
    if outcome.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    outcome
}

/// Jobs per second through K directly driven processors.
fn baseline(n: usize, k: usize) -> Result<f64, Error> {
    let start = Instant::now();
    let per = n / k;
    let handles: Vec<_> = (0..k)
        .map(|w| thread::spawn(move || baseline_worker(per, (w * per) as u64 + 1)))
        .collect();
    for h in handles {
        h.join().map_err(|_| "baseline thread panicked")??;
    }
    Ok((per * k) as f64 / start.elapsed().as_secs_f64())
}

/// Runs a prepared jobsup command over `n` jobs, timed end to end: jobs per second.
fn timed_run(j: jobsup_tests::Jobsup, n: usize) -> Result<f64, Error> {
    let start = Instant::now();
    let run = j.run();
    let elapsed = start.elapsed();
    if run.code() != 0 {
        return Err(format!("jobsup exited {}: {}", run.code(), run.stderr.trim()).into());
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Jobs per second through `jobsup run -j K`.
fn through_jobsup(n: usize, k: usize) -> Result<f64, Error> {
    let j = jobsup_run().timeout(Duration::from_secs(600));
    let input = j.write_file("jobs.txt", lines(n, |i| format!("payload {i}")));
    let j = j
        .args(["-j", &k.to_string(), "--input"])
        .arg(&input)
        .args(["--output", "/dev/null"])
        .processor(bin!("jobsup-echo"), [] as [&str; 0]);
    timed_run(j, n)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A program's command line, as the benchmark runs it (first element: the program).
type Argv = Vec<String>;

/// A command for `argv` with the same scrubbed environment jobsup gives its workers.
fn command(argv: &[String]) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", jobsup_tests::PATH);
    cmd
}

/// Whether `program` is on the benchmark's `PATH`.
fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .env_clear()
        .env("PATH", jobsup_tests::PATH)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Writes `n` payload lines to a file in `j`'s directory and returns its path.
fn job_file(j: &jobsup_tests::Jobsup, n: usize) -> std::path::PathBuf {
    j.write_file("jobs.txt", lines(n, |i| format!("payload {i}")))
}

/// `jobsup run --mode MODE -j K FLAGS -- ARGV` on a file of `n` jobs, its records to
/// `/dev/null`, ready to run.
fn jobsup_mode(
    mode: &str,
    flags: &[&str],
    argv: &[String],
    n: usize,
    k: usize,
) -> jobsup_tests::Jobsup {
    let j = jobsup_run().timeout(Duration::from_secs(600));
    let input = job_file(&j, n);
    j.args(["--mode", mode, "-j", &k.to_string()])
        .args(flags)
        .arg("--input")
        .arg(&input)
        .args(["--output", "/dev/null"])
        .processor(&argv[0], &argv[1..])
}

/// Jobs per second through `jobsup run --mode MODE -j K -- ARGV` on `n` jobs.
fn through_jobsup_mode(mode: &str, argv: &[String], n: usize, k: usize) -> Result<f64, Error> {
    timed_run(jobsup_mode(mode, &["-q"], argv, n, k), n)
}

/// CPU microseconds per job (user and system) of `n` exec jobs at `-j K`: jobsup with every
/// process it ran, and its own threads' share as its summary reports it (`None` from a
/// jobsup too old to say).
fn jobsup_exec_cpu(n: usize, k: usize) -> Result<(f64, Option<f64>), Error> {
    let truth = ["/bin/true".to_string()];
    let j = jobsup_mode("exec", &["--summary", "json"], &truth, n, k);
    let before = children_cpu();
    let run = j.run();
    let tree = children_cpu() - before;
    if run.code() != 0 {
        return Err(format!("jobsup exited {}: {}", run.code(), run.stderr.trim()).into());
    }
    let own = run.json_summary()["cpu_s"]["supervisor"].as_f64();
    Ok((tree / n as f64, own.map(|s| s * 1e6 / n as f64)))
}

/// CPU microseconds per job of `xargs -P K -n 1 /bin/true` on `n` lines, with its
/// processes.
fn xargs_exec_cpu(n: usize, k: usize) -> Result<f64, Error> {
    let before = children_cpu();
    through_runner(
        &["xargs", "-P", &k.to_string(), "-n", "1", "/bin/true"].map(String::from),
        n,
    )?;
    Ok((children_cpu() - before) / n as f64)
}

/// Prints, per K, the median CPU per exec job of jobsup (whole tree, and its own share)
/// and of xargs over `rounds` alternating rounds, and the median ratio of the trees.
fn exec_cpu_rows(n: usize, rounds: usize) {
    for k in [1, 2] {
        let (mut tree, mut own, mut xargs, mut ratios) = (vec![], vec![], vec![], vec![]);
        for _ in 0..rounds {
            if let (Ok((t, o)), Ok(x)) = (jobsup_exec_cpu(n, k), xargs_exec_cpu(n, k)) {
                tree.push(t);
                own.extend(o);
                xargs.push(x);
                ratios.push(t / x);
            }
        }
        if ratios.is_empty() {
            println!("| `--mode exec -- /bin/true`, `-j {k}`, CPU per job | unavailable | | |");
            continue;
        }
        let t = median(tree);
        let split = if own.is_empty() {
            "its own share not reported by this binary".to_string()
        } else {
            let o = median(own);
            format!(
                "jobsup itself {o:.0} µs, the processes it ran {:.0} µs",
                t - o
            )
        };
        println!(
            "| `--mode exec -- /bin/true`, `-j {k}`, CPU per job (user + system, every process included) | {t:.0} µs: {split} | `xargs -P{k}` with its processes: {:.0} µs | {:.3} of xargs' CPU (lower is better) |",
            median(xargs),
            median(ratios)
        );
    }
}

/// Exec baseline: `n` sequential spawns of `argv` (no input, no output), each waited for.
fn spawn_and_wait_worker(argv: &[String], n: usize, _first_id: usize) -> Result<(), Error> {
    for _ in 0..n {
        let status = command(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            return Err(format!("{argv:?}: {status}").into());
        }
    }
    Ok(())
}

/// Exec floor: `n` jobs on this thread as jobsup runs each (its line on a stdin pipe,
/// stdout and stderr on pipes read to their end, the exit waited for), through `std`'s
/// spawn (`posix_spawn`: a `vfork`-style clone, as jobsup's). K of these on K threads is
/// a supervisor with a thread per slot and no hop between threads per job: what jobsup's
/// exec path could come to without its containment (which the `containment` bench
/// prices).
fn spawn_with_pipes_worker(argv: &[String], n: usize, first_id: usize) -> Result<(), Error> {
    for i in 0..n {
        let mut child = command(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            // A processor that exits without reading closes the pipe first: not an error.
            let _ = writeln!(stdin, "payload {}", first_id + i);
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(format!("{argv:?}: {}", out.status).into());
        }
    }
    Ok(())
}

/// Lines baseline: one process of `argv`, `n` write-line/read-line round trips.
fn line_round_trips(argv: &[String], n: usize, first_id: usize) -> Result<(), Error> {
    let mut child = command(argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let outcome = (|| -> Result<(), Error> {
        let mut answer = String::new();
        for i in 0..n {
            let line = format!("payload {}\n", first_id + i);
            stdin.write_all(line.as_bytes())?;
            answer.clear();
            stdout.read_line(&mut answer)?;
            if answer != line {
                return Err(format!("{argv:?} answered {answer:?} to {line:?}").into());
            }
        }
        Ok(())
    })();
    drop(stdin);
    end_child(child, outcome)
}

/// Jobs per second of `worker` run on K threads, `n / K` jobs each.
fn on_threads(
    n: usize,
    k: usize,
    worker: fn(&[String], usize, usize) -> Result<(), Error>,
    argv: &[String],
) -> Result<f64, Error> {
    let per = n / k;
    let start = Instant::now();
    let handles: Vec<_> = (0..k)
        .map(|w| {
            let argv = argv.to_vec();
            thread::spawn(move || worker(&argv, per, w * per + 1))
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "baseline thread panicked")??;
    }
    Ok((per * k) as f64 / start.elapsed().as_secs_f64())
}

/// Jobs per second of a general-purpose runner (`xargs`, `parallel`) given `n` input lines
/// on stdin.
fn through_runner(argv: &[String], n: usize) -> Result<f64, Error> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("jobs.txt");
    std::fs::write(&input, lines(n, |i| format!("payload{i}")))?;
    let start = Instant::now();
    let status = command(argv)
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .stdin(File::open(&input)?)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let elapsed = start.elapsed();
    if !status.success() {
        return Err(format!("{argv:?}: {status}").into());
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// A contender of a throughput table: its column title and a run at K workers.
struct Contender<'a> {
    name: String,
    run: Box<dyn Fn(usize) -> Result<f64, Error> + 'a>,
}

impl<'a> Contender<'a> {
    fn new(name: impl Into<String>, run: impl Fn(usize) -> Result<f64, Error> + 'a) -> Self {
        Contender {
            name: name.into(),
            run: Box::new(run),
        }
    }
}

/// Prints one row per K: the median jobs/s of each contender over `rounds` rounds in which
/// they take turns, and the median of the per-round ratios of the second (jobsup) to the
/// first (the baseline).
fn compare(rounds: usize, contenders: &[Contender<'_>]) {
    let mut header = format!("{:>3}", "K");
    for c in contenders {
        header.push_str(&format!("  {:>22}", format!("{} jobs/s", c.name)));
    }
    header.push_str(&format!("  {:>16}", "jobsup/baseline"));
    println!("{header}");
    for k in [1, 2] {
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
        let mut ratios = Vec::new();
        for _ in 0..rounds {
            let results: Vec<Result<f64, Error>> = contenders.iter().map(|c| (c.run)(k)).collect();
            if let (Some(Ok(b)), Some(Ok(s))) = (results.first(), results.get(1)) {
                ratios.push(s / b);
            }
            for (i, r) in results.into_iter().enumerate() {
                match r {
                    Ok(v) => samples[i].push(v),
                    Err(e) => println!("     error ({}): {e}", contenders[i].name),
                }
            }
        }
        let mut row = format!("{k:>3}");
        for s in samples.iter_mut().chain([&mut ratios]) {
            s.sort_by(f64::total_cmp);
        }
        for s in &samples {
            row.push_str(&format!("  {:>22.0}", percentile(s, 50.0)));
        }
        row.push_str(&format!("  {:>16.3}", percentile(&ratios, 50.0)));
        println!("{row}");
    }
}

/// `--mode lines` against direct write-line/read-line round trips.
fn lines_mode_table(n: usize, rounds: usize) {
    // GNU cat writes what it reads at once, but stdbuf makes that explicit; without it, a
    // Python loop that flushes every line does the same.
    let echo: Argv = if installed("stdbuf") {
        ["stdbuf", "-oL", "cat"].map(String::from).to_vec()
    } else {
        [
            "python3",
            "-u",
            "-c",
            "import sys\nfor l in sys.stdin: sys.stdout.write(l)",
        ]
        .map(String::from)
        .to_vec()
    };
    println!(
        "lines mode: {n} jobs through `{}`, median of {rounds} alternating rounds",
        echo.join(" ")
    );
    compare(
        rounds,
        &[
            Contender::new("raw pipe", |k| on_threads(n, k, line_round_trips, &echo)),
            Contender::new("jobsup", |k| through_jobsup_mode("lines", &echo, n, k)),
        ],
    );
}

/// Peak RSS (KiB) of `jobsup run -j K` over `n` echo jobs: the largest `VmHWM` (its own
/// high-water mark) read from `/proc/PID/status` every 20 ms while it runs. (Not
/// `wait4`'s `ru_maxrss`, which also counts the children it reaped, and a child cloned
/// with `CLONE_VM` is charged the supervisor's memory until it execs.)
fn peak_rss(n: usize, k: usize) -> Result<u64, Error> {
    let j = jobsup_run();
    let input = j.write_file("jobs.txt", lines(n, |i| format!("payload {i}")));
    let mut child = Command::new(jobsup_bin())
        .args(["run", "-q", "-j", &k.to_string(), "--input"])
        .arg(&input)
        .args(["--output", "/dev/null", "--"])
        .arg(bin!("jobsup-echo"))
        .current_dir(j.dir())
        .env_clear()
        .env("PATH", jobsup_tests::PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let hwm = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        peak = peak.max(hwm);
        thread::sleep(Duration::from_millis(20));
    };
    if !status.success() {
        return Err(format!("jobsup ended with {status}").into());
    }
    Ok(peak)
}

/// `rounds` alternating rounds of each contender at `k`: the median of each, and the
/// median of the per-round ratios of the first to the second.
fn medians(rounds: usize, k: usize, contenders: &[Contender<'_>]) -> (Vec<f64>, f64) {
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    let mut ratios = Vec::new();
    for _ in 0..rounds {
        let results: Vec<Result<f64, Error>> = contenders.iter().map(|c| (c.run)(k)).collect();
        if let (Some(Ok(s)), Some(Ok(b))) = (results.first(), results.get(1)) {
            ratios.push(s / b);
        }
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(v) => samples[i].push(v),
                Err(e) => println!("     error ({} at -j {k}): {e}", contenders[i].name),
            }
        }
    }
    ratios.sort_by(f64::total_cmp);
    let meds = samples
        .iter_mut()
        .map(|s| {
            s.sort_by(f64::total_cmp);
            percentile(s, 50.0)
        })
        .collect();
    (meds, percentile(&ratios, 50.0))
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; this harness takes no arguments of its own.
    let n = env_or("JOBSUP_BENCH_JOBS", 20_000);
    let rounds = env_or("JOBSUP_BENCH_ROUNDS", 5);
    let exec_jobs = env_or("JOBSUP_BENCH_EXEC_JOBS", 2_000);
    let rss_jobs = env_or("JOBSUP_BENCH_RSS_JOBS", 1_000_000);

    // The machine is shared and noisy: jobsup and its baseline alternate, round after
    // round; each figure is the median of its rounds, and each ratio the median of the
    // ratios of rounds run back to back.
    println!(
        "throughput: {n} trivial native jobs (`echo`), {exec_jobs} exec jobs; median of {rounds} alternating rounds"
    );
    println!("| measure | jobsup | baseline in the same run | ratio |");
    println!("|---|---|---|---|");
    let native = [
        Contender::new("jobsup", |k| through_jobsup(n, k)),
        Contender::new("raw pipe ping-pong", |k| baseline(n, k)),
    ];
    let only_exec = std::env::var("JOBSUP_BENCH_ONLY").is_ok_and(|v| v == "exec");
    let mut at_one = None;
    for k in [1, 2, 64].into_iter().filter(|_| !only_exec) {
        let (m, ratio) = medians(rounds, k, &native);
        let scaling = match at_one {
            None => {
                at_one = Some(m[0]);
                String::new()
            }
            Some(one) => format!("; {:.2}x jobsup at `-j 1`", m[0] / one),
        };
        println!(
            "| trivial native jobs/s, `-j {k}` | {:.0}/s | raw pipe ping-pong, {k} at a time: {:.0}/s | {ratio:.3}{scaling} |",
            m[0], m[1]
        );
    }

    let truth: Argv = vec!["/bin/true".into()];
    let exec = [
        Contender::new("jobsup", |k| {
            through_jobsup_mode("exec", &truth, exec_jobs, k)
        }),
        Contender::new("xargs", |k| {
            through_runner(
                &["xargs", "-P", &k.to_string(), "-n", "1", "/bin/true"].map(String::from),
                exec_jobs,
            )
        }),
        Contender::new("spawn+wait", |_| {
            on_threads(exec_jobs, 1, spawn_and_wait_worker, &truth)
        }),
        Contender::new("threads", |k| {
            on_threads(exec_jobs, k, spawn_with_pipes_worker, &truth)
        }),
    ];
    let mut exec_one = None;
    for k in [1, 2] {
        let (m, ratio) = medians(rounds, k, &exec);
        let scaling = match exec_one {
            None => {
                exec_one = Some(m[0]);
                String::new()
            }
            Some(one) => format!("; {:.2}x jobsup at `-j 1`", m[0] / one),
        };
        println!(
            "| `--mode exec -- /bin/true`, `-j {k}` | {:.0}/s | `xargs -P{k} -n1 /bin/true` {:.0}/s; spawn+wait one at a time {:.0}/s; a thread per slot spawning with pipes, {k} at a time, {:.0}/s ({:.3} of it) | {ratio:.3} of xargs{scaling} |",
            m[0], m[1], m[2], m[3], m[0] / m[3]
        );
    }

    exec_cpu_rows(exec_jobs, rounds);
    if only_exec {
        return;
    }

    let small = rss_jobs / 10;
    match (peak_rss(small, 64), peak_rss(rss_jobs, 64)) {
        (Ok(a), Ok(b)) => println!(
            "| supervisor peak RSS, `-j 64`, {rss_jobs} jobs | {:.1} MB | {small} jobs: {:.1} MB | {:.2} (target: at most 30 MB) |",
            b as f64 / 1024.0,
            a as f64 / 1024.0,
            b as f64 / a as f64
        ),
        (a, b) => println!("| supervisor peak RSS | unavailable: {:?} {:?} | | |", a.err(), b.err()),
    }

    println!();
    lines_mode_table(n, rounds);
}
