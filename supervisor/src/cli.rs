//! The command line: parse, run, and map the result to an exit code in one place.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use jobsup_protocol::{Codec, DEFAULT_MAX_FRAME};

use crate::config::PoolSpec;
use crate::exit::{self, RunEnd};
use crate::joblog::{JobLog, JobLogPath};
use crate::link::Mode;
use crate::pool::{self, PoolConfig, RetryPolicy};
use crate::progress::Progress;
use crate::reaper::{self, Reaper};
use crate::sandbox::{self, SpawnError, SpawnSpec, Spawner};
use crate::sink::{OutputFormat, Outputs, Sink};
use crate::source::{Defaults, InputFormat, Remaining, Source};
use crate::worker::WorkerSettings;

/// jobsup runs jobs in a pool of reusable, sandboxed worker processes, with deadlines that
/// hold even when a job does not cooperate.
#[derive(Debug, Parser)]
#[command(name = "jobsup", version, about, long_about = None, after_help = crate::help::JOBSUP)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less log output (only warnings and errors; processor output is not logged).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// How log lines are written on stderr: text, or one JSON object per line.
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every job of the input through a pool of workers; one NDJSON record per job.
    #[command(after_help = crate::help::RUN_EXAMPLES, after_long_help = crate::help::run_long())]
    Run(RunArgs),
    /// Summarize a job log (--joblog) or a results file afterwards: per kind, most total
    /// time first.
    #[command(after_help = crate::help::REPORT)]
    Report(ReportArgs),
    /// Validate a config file without running anything, and print the resolved pools.
    #[command(after_help = crate::help::CHECK)]
    Check(CheckArgs),
    /// Add jobs (the input `run` takes) to a Redis stream for `jobsup serve`.
    #[command(after_help = crate::help::ENQUEUE)]
    Enqueue(crate::queue_cli::EnqueueArgs),
    /// Run jobs from a Redis stream's consumer group, with leases, fenced acks and dead
    /// letters; records go to `<stream>:results`.
    #[command(after_help = crate::help::SERVE)]
    Serve(crate::queue_cli::ServeArgs),
    /// A queue's state as JSON: depth, pending per consumer, delayed, dead, results.
    #[command(after_help = crate::help::STATUS)]
    Status(crate::queue_cli::StatusArgs),
    /// Print a queue's dead letters as NDJSON, or put them back on the stream (--replay).
    #[command(after_help = crate::help::DEAD)]
    Dead(crate::queue_cli::DeadArgs),
    /// Print a shell completion script on stdout.
    #[command(after_help = crate::help::COMPLETIONS)]
    Completions(CompletionsArgs),
    /// Print the man page (roff) on stdout: jobsup's, then each subcommand's.
    #[command(after_help = crate::help::MAN)]
    Man(ManArgs),
    /// Internal: the guard process `run` starts (see the `guard` module).
    #[command(name = "__guard", hide = true)]
    Guard(crate::guard::GuardArgs),
}

/// The format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the event's fields at the top level.
    Json,
}

/// The format of the end-of-run summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SummaryFormat {
    /// A table for people.
    Text,
    /// One JSON object, for scripts.
    Json,
    /// No summary.
    None,
}

/// `jobsup report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A job log written by --joblog, or a results file written by jobsup run.
    pub file: PathBuf,
    /// text or json.
    #[arg(long, value_enum, default_value = "text")]
    pub summary: SummaryFormat,
}

/// `jobsup run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Read pools from this TOML file (flags given here override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The pool of the config file to run (may be left out when it has one pool).
    #[arg(long, value_name = "NAME", requires = "config")]
    pub pool: Option<String>,
    /// The pool's settings.
    #[command(flatten)]
    pub spec: PoolSpec,
    /// Read jobs from this file instead of stdin.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Write records to this file instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// What is written for each job: json (its record) or raw (its output bytes as they
    /// are, each job's whole; failures are said on stderr).
    #[arg(long, value_enum, default_value = "json")]
    pub output_format: OutputFormat,
    /// Also write the JSON records to this file (beside raw output, say).
    #[arg(long, value_name = "FILE")]
    pub results: Option<PathBuf>,
    /// How input lines are read.
    #[arg(long, value_enum, default_value = "lines")]
    pub input_format: InputFormat,
    /// Write records in input order instead of as jobs finish.
    #[arg(long)]
    pub keep_order: bool,
    /// Write one row per finished job to this file, with GNU parallel's columns plus the
    /// outcome, attempts, id and kind; +FILE appends.
    #[arg(long, value_name = "FILE")]
    pub joblog: Option<JobLogPath>,
    /// Stop early, as GNU parallel: never, soon,fail=N (start no more jobs after N
    /// failures), now,fail=N (and cancel the running ones), fail=P% (of the jobs finished
    /// so far, from the third), success=N, done=N; 1 and 2 are soon,fail=1 and now,fail=1.
    #[arg(long, value_name = "RULE", default_value = "never")]
    pub halt: crate::halt::Halt,
    /// Skip every job whose id has a row in --joblog, and append to it.
    #[arg(long, requires = "joblog", conflicts_with = "resume_failed")]
    pub resume: bool,
    /// Skip the jobs whose latest row in --joblog is ok (run the others again), and append
    /// to it.
    #[arg(long, requires = "joblog")]
    pub resume_failed: bool,
    /// The end-of-run summary on stderr: text, json or none.
    #[arg(long, value_enum, default_value = "text")]
    pub summary: SummaryFormat,
    /// After a first SIGINT/SIGTERM, running jobs may finish for this long before they are
    /// asked to clean up and then killed [default: their own deadlines].
    #[arg(long, value_parser = crate::units::parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// Where workers' private working directories are created [default: the temp dir].
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Run workers in this directory, or `scratch` for each worker's private one (which
    /// they always get, as TMPDIR and JOBSUP_WORKDIR) [default: the directory jobsup was
    /// started in, as xargs and parallel do].
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Serve Prometheus text on http://ADDR/metrics while jobsup runs (e.g.
    /// 127.0.0.1:9187): jobs counted by outcome as their records are written.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Keep jobsup in the ordinary scheduling class: without it, jobsup's threads run
    /// under SCHED_RR at a low real-time priority where that is permitted (root,
    /// CAP_SYS_NICE, RLIMIT_RTPRIO), else at a lower nice value where RLIMIT_NICE allows.
    #[arg(long)]
    pub no_realtime: bool,
    /// The processor to run, and its arguments (or `command` in the config file).
    #[arg(last = true, value_name = "PROCESSOR")]
    pub command: Vec<OsString>,
}

/// `jobsup check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The config file to validate.
    #[arg(
        value_name = "FILE",
        required_unless_present = "config",
        conflicts_with = "config"
    )]
    pub file: Option<PathBuf>,
    /// The same file, as an option (as `run --config` takes it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl CheckArgs {
    /// The file to check, however it was given (clap ensures exactly one way).
    pub fn path(&self) -> &std::path::Path {
        self.file
            .as_deref()
            .or(self.config.as_deref())
            .expect("clap requires FILE or --config")
    }
}

/// The shells `jobsup completions` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    /// Bash (bash-completion).
    Bash,
    /// Zsh.
    Zsh,
    /// Fish.
    Fish,
}

/// `jobsup completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write the script for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// `jobsup man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Only this subcommand's page (e.g. `run`) [default: jobsup's and every subcommand's].
    #[arg(value_name = "SUBCOMMAND")]
    pub subcommand: Option<String>,
}

/// Which of fds 0, 1 and 2 were closed at start (bit `n` for fd `n`).
static CLOSED_AT_START: AtomicU8 = AtomicU8::new(0);

/// Whether stdout was closed when jobsup started.
pub fn stdout_was_closed() -> bool {
    CLOSED_AT_START.load(Ordering::Relaxed) & 0b010 != 0
}

/// The fd table's size made at start ([`jobsup_process::fd::reserve_fd_table`], after the
/// soft open-files limit is raised to the hard one): a worker holds about ten of jobsup's
/// fds, so this is room for several hundred.
const FD_TABLE: usize = 8192;

/// The binary's entry point: parses the command line, runs, and returns the exit code.
pub fn main() -> ExitCode {
    // Before anything opens a file.
    CLOSED_AT_START.store(jobsup_process::fd::open_closed_std_fds(), Ordering::Relaxed);
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(exit::JOBSUP_ERROR),
            };
        }
    };
    // The guard logs nothing (its output goes nowhere) and starts no thread.
    if let Command::Guard(args) = &cli.command {
        return ExitCode::from(crate::guard::serve(args));
    }
    // Before any thread starts: so that every thread has SIGCHLD blocked, and so that the fd
    // table is not grown while threads share it (room for hundreds of workers' fds).
    jobsup_process::reaper::leave_sigchld_to_the_reaper();
    let raised = jobsup_process::fd::raise_open_files_limit();
    jobsup_process::fd::reserve_fd_table(FD_TABLE);
    jobsup_process::fd::keep_freed_memory();
    crate::health::install();
    let logs = match init_logging(&cli) {
        Ok(logs) => logs,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "jobsup: cannot start logging: {e}");
            return ExitCode::from(exit::JOBSUP_ERROR);
        }
    };
    if let Some(((soft, hard), to)) = raised {
        tracing::debug!(
            "open files: soft limit raised from {soft} to {to} (hard {hard}); workers get {soft} back"
        );
    }
    let (code, summary) = match cli.command {
        Command::Run(args) => match run(args, cli.quiet) {
            Ok(done) => done,
            Err(e) => {
                tracing::error!("{e:#}");
                (exit::JOBSUP_ERROR, None)
            }
        },
        Command::Check(args) => (print_or_fail(crate::config::check(args.path())), None),
        Command::Completions(args) => (print_or_fail(Ok(completions(args.shell))), None),
        Command::Man(args) => (print_or_fail(man(args.subcommand.as_deref())), None),
        Command::Serve(args) => match crate::queue_cli::serve(args, cli.quiet) {
            Ok(done) => done,
            Err(e) => {
                tracing::error!("{e:#}");
                (exit::JOBSUP_ERROR, None)
            }
        },
        Command::Enqueue(args) => (crate::queue_cli::enqueue(&args), None),
        Command::Status(args) => (print_or_fail(crate::queue_cli::status(&args)), None),
        Command::Dead(args) => (crate::queue_cli::dead(&args), None),
        Command::Report(args) => (print_or_fail(report(&args)), None),
        Command::Guard(_) => unreachable!("served above"),
    };
    let dropped = logs.dropped();
    if dropped > 0 {
        tracing::warn!("{dropped} log lines were dropped: stderr was not being read");
    }
    // After the log lines still queued; waits only while stderr is taking them.
    logs.finish(summary.unwrap_or_default());
    ExitCode::from(code)
}

/// Logs go to stderr through a thread of their own (`logs`): a processor that floods its
/// stderr, or a terminal that stops reading, must not stall the supervisor's single async
/// thread, nor keep jobsup from exiting. When the queue is full, lines are dropped (and
/// counted) rather than deadlines missed.
fn init_logging(cli: &Cli) -> std::io::Result<crate::logs::Logs> {
    use tracing_subscriber::EnvFilter;
    let default = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let (writer, logs) = crate::logs::start()?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    let _ = match cli.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    Ok(logs)
}

/// Prints a command's text on stdout (exit 0), or logs its error (exit 125).
fn print_or_fail(result: Result<String, String>) -> u8 {
    match result {
        // Rust put /dev/null where a closed stdout was: the text would vanish silently.
        Ok(_) if stdout_was_closed() => {
            tracing::error!("stdout is closed: there is nowhere to print to");
            exit::JOBSUP_ERROR
        }
        Ok(text) => {
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                tracing::error!("cannot write to stdout: {e}");
                return exit::JOBSUP_ERROR;
            }
            exit::OK
        }
        Err(e) => {
            tracing::error!("{e}");
            exit::JOBSUP_ERROR
        }
    }
}

/// `jobsup completions SHELL`: the script, generated from the command line's definition.
pub fn completions(shell: Shell) -> String {
    use clap::CommandFactory;
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(generator, &mut Cli::command(), "jobsup", &mut script);
    String::from_utf8_lossy(&script).into_owned()
}

/// `jobsup man [SUBCOMMAND]`: one roff stream holding jobsup's page and then each visible
/// subcommand's (`jobsup-run(1)`...), which `man` shows one after the other; or one
/// subcommand's page alone.
pub fn man(only: Option<&str>) -> Result<String, String> {
    use clap::CommandFactory;
    let mut cli = Cli::command();
    // Built, the subcommands know their full names (`jobsup run`, `jobsup-run`).
    cli.build();
    let subcommands: Vec<clap::Command> = cli
        .get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
        .cloned()
        .collect();
    let pages: Vec<clap::Command> = match only {
        None => std::iter::once(cli).chain(subcommands).collect(),
        Some(name) => vec![subcommands
            .into_iter()
            .find(|c| c.get_name() == name)
            .ok_or_else(|| format!("jobsup man: no subcommand {name:?}"))?],
    };
    let mut roff = Vec::new();
    for page in pages {
        // Each page's footer names the version, as jobsup's own does.
        clap_mangen::Man::new(page.version(env!("CARGO_PKG_VERSION")))
            .render(&mut roff)
            .map_err(|e| format!("cannot render the man page: {e}"))?;
    }
    Ok(String::from_utf8_lossy(&roff).into_owned())
}

/// `jobsup report`: the per-kind summary of a job log or results file.
pub fn report(args: &ReportArgs) -> Result<String, String> {
    let records = crate::joblog::read_records(&args.file)?;
    let mut stats = crate::summary::Stats::default();
    for r in &records {
        stats.observe(r);
    }
    Ok(match args.summary {
        SummaryFormat::Json => format!("{}\n", stats.to_json(None)),
        SummaryFormat::Text => stats.render(None, None),
        SummaryFormat::None => String::new(),
    })
}

/// `jobsup run`: returns the exit code and the summary for stderr, or an error for jobsup's
/// own failures (125).
pub fn run(args: RunArgs, quiet: bool) -> anyhow::Result<(u8, Option<String>)> {
    run_pool(args, quiet, None)
}

/// `jobsup run`, or with `serve` the same pool fed by a Redis stream (`jobsup serve`):
/// one setup of the processor, the sandbox and the guard for both.
pub(crate) fn run_pool(
    args: RunArgs,
    quiet: bool,
    serve: Option<crate::serve::Options>,
) -> anyhow::Result<(u8, Option<String>)> {
    let serving = serve.is_some();
    // Serve's records go to Redis, not to an output.
    if serving && (args.output_format != OutputFormat::Json || args.results.is_some()) {
        anyhow::bail!("--output-format and --results are not flags of jobsup serve");
    }
    if !serving && args.output.is_none() && stdout_was_closed() {
        anyhow::bail!(
            "stdout is closed: there is nowhere to write the records (give --output FILE)"
        );
    }
    let pool = crate::config::resolve_run(
        args.spec.clone(),
        args.config
            .as_deref()
            .map(|path| (path, args.pool.as_deref())),
        args.command.clone(),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let (program, proc_args) = pool
        .command
        .split_first()
        .expect("a resolved pool has a command");
    let program = match sandbox::resolve_program(std::path::Path::new(program)) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("{e}");
            let code = match e {
                SpawnError::NotFound { .. } => exit::NOT_FOUND,
                SpawnError::NotExecutable { .. } => exit::CANNOT_RUN,
                SpawnError::Other { .. } => exit::JOBSUP_ERROR,
            };
            return Ok((code, None));
        }
    };
    let input = match &args.input {
        Some(path) => std::fs::File::open(path)
            .map_err(|e| anyhow::anyhow!("cannot open input {}: {e}", path.display()))?,
        // A duplicate shares the open file description, offset included.
        None => std::os::fd::AsFd::as_fd(&std::io::stdin())
            .try_clone_to_owned()
            .map(std::fs::File::from)
            .map_err(|e| anyhow::anyhow!("cannot read the standard input: {e}"))?,
    };
    // A regular file's jobs can be counted up front, for the progress bar's total.
    let remaining = Remaining::of(&input);
    let command_line = std::iter::once(program.as_os_str())
        .chain(proc_args.iter().map(|a| a.as_os_str()))
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    // Read before the log is opened for appending; resuming keeps the log it reads.
    let resume = match &args.joblog {
        Some(at) if args.resume || args.resume_failed => {
            let resume = crate::joblog::Resume::read(&at.path, args.resume_failed)
                .map_err(|e| anyhow::anyhow!(e))?;
            tracing::info!(
                "resuming: the job log {} has {} job id(s); {}",
                at.path.display(),
                resume.ids(),
                if args.resume_failed {
                    "those whose latest row is ok are skipped"
                } else {
                    "they are skipped"
                }
            );
            Some(Arc::new(resume))
        }
        _ => None,
    };
    let joblog_at = args.joblog.clone().map(|at| JobLogPath {
        append: at.append || resume.is_some(),
        ..at
    });
    let joblog =
        match &joblog_at {
            Some(at) => Some(JobLog::open(at, command_line).map_err(|e| {
                anyhow::anyhow!("cannot open the job log {}: {e}", at.path.display())
            })?),
            None => None,
        };
    let output = match &args.output {
        Some(path) => std::fs::File::create(path)
            .map_err(|e| anyhow::anyhow!("cannot create output {}: {e}", path.display()))?,
        // fd 1 itself, without std's lock and line buffering: the writer thread batches.
        None => std::fs::File::from(
            std::os::fd::AsFd::as_fd(&std::io::stdout())
                .try_clone_to_owned()
                .map_err(|e| anyhow::anyhow!("cannot use stdout for the records: {e}"))?,
        ),
    };
    let results = match &args.results {
        Some(path) => Some(open_results(path, &output)?),
        None => None,
    };
    let outputs = Outputs {
        out: Box::new(output),
        format: args.output_format,
        // A lines-mode result is a line whose newline was taken off; exec and native
        // results are bytes the processor chose, written as they are.
        newline: pool.mode == Mode::Lines,
        results,
        joblog,
    };
    let workers = pool.concurrency;
    // Variables for the workers: what the pool sets, then what it passes through.
    let mut extra_env: Vec<(OsString, OsString)> = pool
        .env
        .iter()
        .map(|crate::config::EnvVar(k, v)| (k.into(), v.into()))
        .collect();
    for key in &pool.pass_env {
        if let Some(value) = std::env::var_os(key) {
            extra_env.push((key.into(), value));
        }
    }
    let codec = Codec::new(DEFAULT_MAX_FRAME);
    // RLIMIT_CPU counts a process's whole life: in a worker that serves many jobs it would
    // add their times up. There the worker task measures each job's time instead.
    let (spawn_limits, cpu_budget) = if pool.mode.reuses_processes() {
        let limits = crate::sandbox::Limits {
            cpu_secs: None,
            ..pool.limits
        };
        (limits, pool.limits.cpu_secs.map(Duration::from_secs))
    } else {
        (pool.limits, None)
    };
    let settings = WorkerSettings {
        pool: Arc::from(pool.name.as_str()),
        slow: pool.slow,
        idle_timeout: pool.idle_timeout,
        mode: pool.mode,
        cleanup_signal: pool.cleanup_signal,
        max_output: pool.max_output,
        spawn: SpawnSpec {
            program,
            args: proc_args.to_vec(),
            worker_id: 0,
            max_frame: codec.max_frame(),
            workdir_parent: args.workdir.clone(),
            cwd: worker_cwd(
                args.cwd.as_deref().or(pool.cwd.as_deref()),
                pool.user.as_ref(),
            )?,
            protocol_fds: pool.mode == Mode::Native,
            stdin_pipe: pool.mode != Mode::Native,
            env: extra_env,
            limits: spawn_limits,
            // Before the reaper exists: the probe waits for its own children.
            isolation: crate::isolate::resolve(&pool.isolate, &pool.binds)
                .map_err(|e| anyhow::anyhow!(e))?,
            user: pool.user.clone(),
            priority: worker_priority(pool.priority),
            // An exec slot starts a process per job: they share the slot's namespaces.
            share_namespaces: pool.mode == Mode::Exec,
        },
        start_timeout: pool.start_timeout,
        max_jobs: pool.max_jobs_per_worker,
        retire_grace: pool.cleanup,
        codec,
        cpu_budget,
    };
    let defaults = Defaults {
        ttl: pool.ttl,
        cleanup: pool.cleanup,
        // A payload must fit in a frame with room for the job's other fields.
        max_line: codec.max_frame() as usize - 4096,
    };
    // Bound before any worker exists, so that an address that cannot be had is an error
    // (125) before any job runs, as in serve, which binds its own.
    let metrics_listener = match args.metrics.filter(|_| serve.is_none()) {
        Some(addr) => Some(crate::metrics::bind(addr).map_err(|e| anyhow::anyhow!(e))?),
        None => None,
    };

    let (cgroups, found) = crate::cgroup::Cgroups::detect(crate::cgroup::Wanted {
        memory: pool.limits.memory,
        max_procs: pool.limits.max_procs,
    });
    // Said once, at info level: which mechanisms contain the workers on this machine.
    let cgroups = cgroups.map(Arc::new);
    if let Some(c) = &cgroups {
        crate::summary::count_cpu_in(Arc::clone(c));
    }
    if let Some(why) = found.max_procs_refused {
        if let Some(c) = &cgroups {
            c.remove_all();
        }
        anyhow::bail!("--max-procs needs a pids cgroup controller, and none is usable here: {why}");
    }
    // Before any worker exists: none may read or write jobsup's memory through /proc. A
    // worker in a user namespace of its own cannot anyway (it has no capability in
    // jobsup's), and there the init must stay dumpable to write its own user mapping.
    if !settings
        .spawn
        .isolation
        .as_ref()
        .is_some_and(|p| p.user_namespace())
    {
        crate::isolate::undumpable();
    }
    let namespaces = settings.spawn.isolation.as_ref().map(|p| p.describe());
    let pid_namespace = settings
        .spawn
        .isolation
        .as_ref()
        .is_some_and(|p| p.init().is_some());
    let shared = settings.spawn.share_namespaces
        && cgroups.as_ref().is_some_and(|c| c.kills_atomically())
        && settings
            .spawn
            .isolation
            .as_ref()
            .is_some_and(|p| p.shareable());
    tracing::info!(
        kill = %found.kill,
        namespaces = namespaces.as_deref().unwrap_or("none"),
        memory = found.memory.as_deref().unwrap_or("-"),
        max_procs = found.max_procs.as_deref().unwrap_or("-"),
        "sandbox: workers get their own session, directory and environment; hard kill through {}",
        if pid_namespace && shared {
            "their cgroup (an exec slot's processes share its pid and mount namespaces, one job at a time)"
        } else if pid_namespace {
            "their pid namespace"
        } else if cgroups.as_ref().is_some_and(|c| c.can_kill()) {
            "their cgroup"
        } else {
            "their process group and a /proc tree walk"
        }
    );
    // Where the workers' private directories go (as the sandbox makes them), for the guard
    // to remove this run's if jobsup is killed.
    let workdirs = args.workdir.clone().unwrap_or_else(std::env::temp_dir);
    let workdirs = std::path::absolute(&workdirs).unwrap_or(workdirs);
    // Before the reaper: the guard must exist before any worker does.
    let mut guard = match crate::guard::start(
        cgroups.as_ref().map_or(&[][..], |c| c.bases()),
        &workdirs,
    ) {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::warn!("cannot start the guard process ({e}): if jobsup is killed, descendants of its workers may survive it");
            None
        }
    };
    // After the guard, which should not inherit it; before every thread that should.
    // The workers' nice value was resolved before (`worker_priority`): from the one jobsup
    // was started with, not the one it may take now.
    let raised = crate::priority::raise_supervisor(!args.no_realtime);
    tracing::debug!("jobsup's scheduling priority: {raised}");
    // The reaper and the spawner are threads that live until the process exits.
    let reaper = Reaper::start().map_err(|e| anyhow::anyhow!("cannot start the reaper: {e}"))?;
    if let Some(guard) = &mut guard {
        guard.register(&reaper);
    }
    let spawner = Spawner::start(reaper.clone(), cgroups.clone())
        .map_err(|e| anyhow::anyhow!("cannot start the spawner: {e}"))?;
    // Before any worker: see `offload` and `janitor::start`.
    jobsup_process::offload::start();
    crate::janitor::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let (end, stats) = runtime.block_on(async {
        if let Some(mut opts) = serve {
            opts.workers = workers;
            opts.retry_on = pool.retry_on.clone();
            opts.retry_delay = pool.retry_delay;
            opts.shutdown_timeout = args.shutdown_timeout;
            let (end, stats, _) =
                crate::serve::run(opts, Arc::new(settings), spawner, defaults).await;
            return anyhow::Ok((end, stats));
        }
        let source = Source::start_resuming(input.into(), args.input_format, defaults, resume)?;
        let sink = Sink::start(outputs, args.keep_order)?.named(match &args.output {
            Some(path) => path.display().to_string(),
            None => "stdout".into(),
        });
        let show_progress = !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let cfg = PoolConfig {
            workers,
            retry: RetryPolicy {
                retries: pool.retries,
                on: pool.retry_on.clone(),
                delay: pool.retry_delay,
            },
            shutdown_timeout: args.shutdown_timeout,
            settings: Arc::new(settings),
            progress: Progress::new(show_progress, remaining),
            metrics: match metrics_listener {
                Some(listener) => Some(crate::metrics::start(listener)?),
                None => None,
            },
            halt: args.halt,
        };
        anyhow::Ok(pool::run(cfg, spawner, source, sink).await)
    })?;
    // Taken while the workers' cgroups, which count their processes' time, are there
    // (the guard's final pass removes them).
    let cpu = crate::summary::Cpu::used_so_far();
    // The guard's final pass first: killing the remaining children would kill it too.
    if let Some(guard) = guard {
        finish_guard(guard);
    }
    // Inherited orphans the workers left behind die with the run.
    reaper.kill_remaining_children();
    wait_for_no_children(Duration::from_secs(2));
    // The workers' private directories go before jobsup does.
    if !crate::janitor::finish(Duration::from_secs(5)) {
        tracing::warn!("some workers' private directories could not be removed in time");
    }
    if let Some(cgroups) = &cgroups {
        cgroups.remove_all();
    }
    let broken = crate::health::first_failure();
    let ran = matches!(
        end,
        RunEnd::Completed | RunEnd::Interrupted(_) | RunEnd::Halted { .. } | RunEnd::OutputClosed
    ) || stats.total() > 0
        || broken.is_some();
    let elapsed = Some(started.elapsed());
    let mut summary = match args.summary {
        _ if !ran => None,
        SummaryFormat::Text => Some(stats.render(elapsed, cpu.as_ref())),
        SummaryFormat::Json => {
            let mut json = stats.to_json(elapsed);
            if let (Some(cpu), Some(map)) = (cpu, json.as_object_mut()) {
                map.insert("cpu_s".into(), crate::summary::cpu_json(&cpu));
            }
            if let (Some(what), Some(map)) = (broken, json.as_object_mut()) {
                map.insert("internal_error".into(), what.into());
            }
            Some(format!("{json}\n"))
        }
        SummaryFormat::None => None,
    };
    // Whatever else happened, a run in which part of jobsup broke did not succeed.
    if let Some(what) = broken {
        if let Some(text) = summary
            .as_mut()
            .filter(|_| args.summary == SummaryFormat::Text)
        {
            text.push_str(&format!("  jobsup failed: {what}\n"));
        }
        return Ok((exit::JOBSUP_ERROR, summary));
    }
    // A drained serve succeeded: its jobs' outcomes are in Redis, not its exit code.
    if serving && matches!(end, RunEnd::Completed | RunEnd::Interrupted(_)) {
        return Ok((exit::OK, summary));
    }
    Ok((exit::exit_code(&end, &stats), summary))
}

/// How long the guard has for its final pass after a normal end (it finds nothing after
/// a clean run, and is quick).
const GUARD_FINISH: Duration = Duration::from_secs(2);

/// Tells the guard the run is over and waits (bounded) for it to exit by itself.
fn finish_guard(guard: crate::guard::Guard) {
    use crate::guard::Finished;
    let pid = guard.pid();
    match guard.finish(GUARD_FINISH) {
        Finished::Exited(Some(reaper::Exit::Code(0))) => tracing::debug!(pid, "guard finished"),
        Finished::Exited(None) => {
            tracing::debug!(pid, "guard told to finish; its exit status is unknown")
        }
        // It died before its time (someone killed it), or refused its arguments.
        Finished::Exited(Some(status)) => {
            tracing::warn!(
                pid,
                "the guard process ended with {status}: it may not have guarded the whole run"
            )
        }
        Finished::Killed => tracing::debug!(pid, "guard did not finish in time; killed"),
    }
}

/// The workers' scheduling, from the pool's `--nice` and `--sched`.
fn worker_priority(
    (nice, sched): (Option<u8>, crate::config::Sched),
) -> crate::priority::WorkerPriority {
    use crate::config::Sched;
    use crate::priority::Policy;
    let policy = match sched {
        Sched::Other => Policy::Other,
        Sched::Batch => Policy::Batch,
        Sched::Idle => Policy::Idle,
    };
    crate::priority::WorkerPriority::below_supervisor(
        policy,
        nice.unwrap_or(crate::config::DEFAULT_NICE),
    )
}

/// Where the workers run: `--cwd` (or the `cwd` key), else the directory jobsup was
/// started in; `None` for `scratch`, each worker's private directory. Made absolute and
/// checked once, so that a typo, or a directory `--user` cannot enter, is an error before
/// any job rather than a failure of every job.
fn worker_cwd(
    given: Option<&std::path::Path>,
    user: Option<&crate::sandbox::Identity>,
) -> anyhow::Result<Option<PathBuf>> {
    let dir = match given {
        Some(dir) if dir == std::path::Path::new("scratch") => return Ok(None),
        Some(dir) => resolve_cwd(dir)?,
        None => std::env::current_dir().map_err(|e| {
            anyhow::anyhow!(
                "the directory jobsup was started in, where workers run: {e}; \
                 use --cwd scratch (each worker's private directory) or --cwd DIR"
            )
        })?,
    };
    if let Some(id) = user {
        if let Some((at, owner, mode)) = crate::sandbox::first_unenterable(&dir, id) {
            anyhow::bail!(
                "workers run as uid {} (--user) cannot enter {} (owner uid {owner}, mode {mode:o}), \
                 so they cannot run in {}: use --cwd scratch (each worker's private directory) \
                 or --cwd DIR with a directory they can enter",
                id.uid,
                at.display(),
                dir.display()
            );
        }
    }
    Ok(Some(dir))
}

/// `--cwd DIR`, made absolute and checked.
fn resolve_cwd(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let abs =
        std::path::absolute(dir).map_err(|e| anyhow::anyhow!("--cwd {}: {e}", dir.display()))?;
    match std::fs::metadata(&abs) {
        Ok(m) if m.is_dir() => {
            // Workers run as jobsup's user: it must be able to enter it (a `--user`
            // that cannot is said by the worker's own start, at its directory stage).
            nix::unistd::access(&abs, nix::unistd::AccessFlags::X_OK)
                .map_err(|e| anyhow::anyhow!("--cwd {}: {}", dir.display(), e.desc()))?;
            Ok(abs)
        }
        Ok(_) => anyhow::bail!("--cwd {}: not a directory", dir.display()),
        Err(e) => anyhow::bail!("--cwd {}: {e}", dir.display()),
    }
}

/// Creates `--results FILE`, refusing the output itself: two writers of one file would
/// garble both. Checked before the file is created, which would truncate it.
fn open_results(
    path: &std::path::Path,
    output: &std::fs::File,
) -> anyhow::Result<Box<dyn Write + Send>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| {
        // Writers of /dev/null and the like do not garble each other.
        a.dev() == b.dev() && a.ino() == b.ino() && !a.file_type().is_char_device()
    };
    if let (Ok(results), Ok(out)) = (std::fs::metadata(path), output.metadata()) {
        if same(&results, &out) {
            anyhow::bail!(
                "--results {} is the output itself: give another file",
                path.display()
            );
        }
    }
    let file = std::fs::File::create(path)
        .map_err(|e| anyhow::anyhow!("cannot create results {}: {e}", path.display()))?;
    Ok(Box::new(file))
}

/// Waits until the reaper has collected every child, so that jobsup never exits with live
/// children; bounded, because a process stuck in the kernel cannot be waited for forever.
fn wait_for_no_children(limit: Duration) {
    let until = Instant::now() + limit;
    while !reaper::children_of_self().is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
