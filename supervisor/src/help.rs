//! The long texts of `--help`: examples for every subcommand, and for `run` the exit codes,
//! the placeholders and the record fields, kept here so that `cli.rs` only attaches them.
//!
//! Each subcommand's text ends with an `Examples:` section of 2 to 4 `jobsup ...` lines
//! (the end-to-end tests hold every subcommand to that). `after_help` is what `-h` shows;
//! `--help` shows `after_long_help` when there is one, else the same.

/// `jobsup --help`.
pub const JOBSUP: &str = "\
Examples:
  Run every line of jobs.txt through a processor, 30 s each, 5 s to clean up:
    jobsup run --ttl 30s --cleanup 5s -- ./processor < jobs.txt > results.ndjson
  Validate a config file, then run one of its pools:
    jobsup check jobs.toml
    jobsup run --config jobs.toml --pool thumbnailer < images.txt";

/// `jobsup run -h`: the examples only.
pub const RUN_EXAMPLES: &str = "\
Examples:
  A native processor, 30 s per job, 5 s to clean up, records on stdout:
    jobsup run --ttl 30s --cleanup 5s -- ./processor < jobs.txt > results.ndjson
  Any program, one fresh process per job, `{}` replaced by the payload; raw output:
    jobsup run --mode exec --output-format raw -- gzip -9 --keep {} < files.txt
  A line-oriented script, with a job log; --resume skips the jobs it already lists:
    jobsup run --mode lines --joblog jobs.log --resume -- python3 -u upper.py < jobs.txt
  A pool from a config file, with one setting overridden:
    jobsup run --config jobs.toml --pool thumbnailer --ttl 2m < images.txt";

/// `jobsup run --help`: exit codes, placeholders and record fields, then the examples.
pub const RUN: &str = "\
Exit codes (of 0, 1, 124 and 137 the worst that happened wins; the others take precedence):
  0    every job ok
  1    at least one job failed, crashed or was rejected
  124  at least one job timed out and was cleaned up in time
  137  at least one job was hard-killed
  125  jobsup itself failed: a usage or config error (nothing ran), output it could not
       write, or an internal error
  126  the processor exists but cannot be run, or never completed its handshake
  127  the processor was not found
  141  stdout was closed (as a process killed by SIGPIPE)
  130, 143, 129, 138, 140
       the run was interrupted by SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2 (128 + the
       signal's number), after draining

Placeholders (in the processor's arguments, in exec mode; no shell, no re-splitting):
  {}    the job's payload
  {.}   the payload without its extension (photos/cat.png -> photos/cat)
  {/}   its last path component (cat.png)
  {//}  its directory, `.` when it has none (photos)
  {/.}  its last component without its extension (cat)
  {#}   the job's input line number (its seq)
  {id}  the job's id

Input fields (--input-format ndjson: one JSON object per line):
  payload   required; a string, or any JSON value (handed over as its JSON text)
  id        a string or number [default: the line number]
  ttl       this job's ttl, as --ttl
  cleanup   this job's cleanup window, as --cleanup
  kind      a job type such as send_mail, for the per-kind summary and report

Record fields (one JSON object per line per job read):
  seq              the input line number
  id               the job's id
  kind             its kind, when it has one
  outcome          ok, failed, timeout, killed, crashed, rejected or cancelled
  output           the job's output, when it is UTF-8
  output_base64    the job's output in base64, when it is not
  error            what went wrong, in words
  stderr_tail      the last 2 KiB of the job's stderr (failed, crashed, timeout, killed)
  exit_code        the worker's exit code, when it exited with this job
  signal           the signal that ended the worker, when one did
  duration_ms      from hand-off to the worker until the job ended
  attempts         attempts made (0 for jobs never started)
  previous_errors  the errors of earlier attempts, when the job was retried
  deadline         which deadline ended a timeout or killed job: ttl or idle
  worker, pid      the worker's serial number and pid

Mode-only settings (refused with exit 125 in any other mode, as flags and as config keys):
  --idle-timeout                  native
  --start-timeout                 native, lines
  --max-jobs-per-worker           native, lines
  --cleanup-signal, --max-output  lines, exec

";

/// `jobsup check`.
pub const CHECK: &str = "\
Every problem of the file is reported at once, one per line (FILE:LINE:COLUMN, the pool and
the key), with exit 125: unknown keys, bad values, settings of another mode, and commands
that cannot be found or run on this machine. On success the resolved pools are printed.

Examples:
  Validate a file and print its resolved pools:
    jobsup check jobs.toml
  The same, as scripts written for --config call it:
    jobsup check --config jobs.toml";

/// `jobsup report`.
pub const REPORT: &str = "\
Examples:
  Per kind, most total time first, from a job log:
    jobsup report jobs.log
  From a results file, as JSON:
    jobsup report --summary json results.ndjson";

/// `jobsup enqueue`.
pub const ENQUEUE: &str = "\
Examples:
  Put every line of jobs.txt on the stream `jobs`:
    jobsup enqueue --stream jobs < jobs.txt
  NDJSON jobs (with ids, ttls, kinds) on another server:
    jobsup enqueue --redis redis://queue.internal:6379 --input-format ndjson --input jobs.ndjson";

/// `jobsup serve`.
pub const SERVE: &str = "\
Examples:
  Serve the stream `jobs` with four workers, 30 s per job:
    jobsup serve --stream jobs -j 4 --ttl 30s -- ./processor
  A config file's pool, with Prometheus metrics:
    jobsup serve --stream jobs --config jobs.toml --pool thumbnailer --metrics 127.0.0.1:9187";

/// `jobsup status`.
pub const STATUS: &str = "\
Examples:
  The state of the stream `jobs`, as JSON:
    jobsup status --stream jobs
  Only its depth (with jq):
    jobsup status --stream jobs | jq .depth";

/// `jobsup dead`.
pub const DEAD: &str = "\
Examples:
  The dead letters of the stream `jobs`, as NDJSON:
    jobsup dead --stream jobs
  Put them back on the stream with fresh attempts:
    jobsup dead --stream jobs --replay";

/// `jobsup completions`.
pub const COMPLETIONS: &str = "\
Examples:
  Bash, for your user:
    jobsup completions bash > ~/.local/share/bash-completion/completions/jobsup
  Zsh (a directory of your $fpath) and fish:
    jobsup completions zsh > ~/.zfunc/_jobsup
    jobsup completions fish > ~/.config/fish/completions/jobsup.fish";

/// `jobsup man`.
pub const MAN: &str = "\
Examples:
  Install the man page (jobsup and every subcommand, in one page):
    jobsup man > /usr/local/share/man/man1/jobsup.1
  Read the page of `run` alone, without installing it:
    jobsup man run | man -l -";

/// `jobsup run --help`: the reference text, then the examples.
pub fn run_long() -> String {
    format!("{RUN}{RUN_EXAMPLES}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_exit_code_is_in_the_run_help() {
        use crate::exit;
        let text = run_long();
        for code in exit::ALL {
            let listed = text
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{code} ")));
            assert!(listed, "exit code {code} is not in the table\n{text}");
        }
    }

    #[test]
    fn every_ndjson_input_key_is_in_the_run_help() {
        let text = run_long();
        for key in crate::source::NDJSON_KEYS {
            let listed = text
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{key} ")));
            assert!(listed, "ndjson key {key} is not listed\n{text}");
        }
    }

    #[test]
    fn every_mode_only_setting_is_in_the_run_help() {
        for setting in crate::config::MODE_ONLY {
            assert!(
                RUN.contains(setting.flag),
                "{} is not in the list of mode-only settings",
                setting.flag
            );
        }
    }
}
