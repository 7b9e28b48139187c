//! The queue subcommands: `enqueue`, `serve`, `status` and `dead`.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use crate::cli::RunArgs;
use crate::exit;
use crate::queue::{self, Keys, Redis};
use crate::source::{Defaults, InputFormat};

/// Where the queue is.
#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// The Redis server.
    #[arg(long, value_name = "URL", default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
    /// The jobs' stream; the other keys are named after it (`<stream>:results`,
    /// `<stream>:dead`, `<stream>:delayed`).
    #[arg(long, value_name = "KEY")]
    pub stream: String,
    /// The consumer group.
    #[arg(long, default_value = "jobsup")]
    pub group: String,
}

/// `jobsup enqueue`.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// The queue.
    #[command(flatten)]
    pub queue: QueueArgs,
    /// Read jobs from this file instead of stdin.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// How input lines are read (as `jobsup run` reads them).
    #[arg(long, value_enum, default_value = "lines")]
    pub input_format: InputFormat,
}

/// `jobsup serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The queue.
    #[command(flatten)]
    pub queue: QueueArgs,
    /// This consumer's name in the group [default: host name and pid].
    #[arg(long)]
    pub consumer: Option<String>,
    /// How long a taken job stays this consumer's without a renewal; renewed every
    /// lease/3, and reclaimed by any consumer once idle for longer.
    #[arg(long, default_value = "30s", value_parser = crate::units::parse_duration)]
    pub lease: Duration,
    /// Deliveries of a job (crashes of its supervisor included) before it is
    /// dead-lettered.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// Serve Prometheus text on http://ADDR/metrics (e.g. 127.0.0.1:9187).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Everything `run` takes: processor, deadlines, sandbox, pool.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `jobsup dead`.
#[derive(Debug, Args)]
pub struct DeadArgs {
    /// The queue.
    #[command(flatten)]
    pub queue: QueueArgs,
    /// Put every dead letter's job back on the stream with fresh attempts.
    #[arg(long)]
    pub replay: bool,
}

/// `jobsup serve`: checks the flags that belong to `run` only, then runs the pool on the
/// stream.
pub fn serve(args: ServeArgs, quiet: bool) -> anyhow::Result<(u8, Option<String>)> {
    let run = &args.run;
    let only_run = [
        ("--input", run.input.is_some()),
        ("--output", run.output.is_some()),
        ("--keep-order", run.keep_order),
        ("--joblog", run.joblog.is_some()),
        ("--halt", run.halt.0.is_some()),
        (
            "--retries (serve counts deliveries: --max-attempts)",
            run.spec.retries.is_some(),
        ),
    ];
    if let Some((flag, _)) = only_run.iter().find(|(_, given)| *given) {
        anyhow::bail!("{flag} is not a flag of jobsup serve");
    }
    if args.lease < Duration::from_millis(300) {
        anyhow::bail!("--lease {:?} is too short (at least 300ms)", args.lease);
    }
    let consumer = match args.consumer {
        Some(c) if !c.is_empty() => c,
        Some(_) => anyhow::bail!("--consumer must not be empty"),
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "jobsup".into());
            format!("{host}-{}", std::process::id())
        }
    };
    let opts = crate::serve::Options {
        redis: args.queue.redis,
        keys: Keys::new(&args.queue.stream),
        group: args.queue.group,
        consumer,
        lease: args.lease,
        max_attempts: args.max_attempts,
        // Filled in from the resolved pool.
        retry_on: Vec::new(),
        retry_delay: Duration::ZERO,
        workers: 1,
        shutdown_timeout: None,
        metrics: args.metrics,
    };
    crate::cli::run_pool(args.run, quiet, Some(opts))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start: {e}"))
}

/// One input line as the stream entry's fields, or why it is not a job.
fn fields_of(
    line: &str,
    format: InputFormat,
    line_no: u64,
    prefix: &str,
) -> Result<Vec<(String, String)>, String> {
    let generated = || format!("{prefix}-{line_no}");
    if format == InputFormat::Lines {
        return Ok(vec![
            ("id".into(), generated()),
            ("payload".into(), line.to_string()),
        ]);
    }
    // The same checks as `run`: what serve would reject is refused here, at the source.
    let defaults = Defaults {
        ttl: Duration::ZERO,
        cleanup: Duration::ZERO,
        max_line: usize::MAX,
    };
    crate::source::parse_job(line.as_bytes(), line_no, &defaults).map_err(|(_, why)| why)?;
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(line) else {
        return Err("not a JSON object".into());
    };
    let mut fields = Vec::new();
    for (k, v) in map {
        let text = match v {
            Value::String(s) => s,
            other => other.to_string(),
        };
        fields.push((k, text));
    }
    if !fields.iter().any(|(k, _)| k == "id") {
        fields.insert(0, ("id".into(), generated()));
    }
    Ok(fields)
}

/// `jobsup enqueue`: every job of the input becomes one stream entry; a bad line is
/// reported with its number and skipped, and makes the exit code 1.
pub fn enqueue(args: &EnqueueArgs) -> u8 {
    let input: Box<dyn BufRead> = match &args.input {
        Some(path) => match std::fs::File::open(path) {
            Ok(f) => Box::new(std::io::BufReader::new(f)),
            Err(e) => {
                tracing::error!("cannot open input {}: {e}", path.display());
                return exit::JOBSUP_ERROR;
            }
        },
        None => Box::new(std::io::stdin().lock()),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("{e}");
            return exit::JOBSUP_ERROR;
        }
    };
    let mut redis = match Redis::open(&args.queue.redis, Duration::from_secs(10)) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e}");
            return exit::JOBSUP_ERROR;
        }
    };
    // Ids for jobs without one: unique across enqueues without asking Redis.
    let prefix = format!("{:016x}", fastrand::u64(..));
    let (mut added, mut bad) = (0u64, 0u64);
    let mut batch = Vec::new();
    let flush = |redis: &mut Redis, batch: &mut Vec<redis::Cmd>, added: &mut u64| {
        if batch.is_empty() {
            return Ok(());
        }
        rt.block_on(redis.pipeline(batch))
            .map_err(|e| format!("cannot add jobs to {}: {e}", args.queue.redis))?;
        *added += batch.len() as u64;
        batch.clear();
        Ok::<(), String>(())
    };
    for (n, line) in input.split(b'\n').enumerate() {
        let line_no = n as u64 + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("cannot read the input: {e}");
                return exit::JOBSUP_ERROR;
            }
        };
        let Ok(mut line) = String::from_utf8(line) else {
            tracing::error!("line {line_no}: not UTF-8 text; skipped");
            bad += 1;
            continue;
        };
        if line.ends_with('\r') {
            line.pop();
        }
        if line.trim().is_empty() {
            continue;
        }
        match fields_of(&line, args.input_format, line_no, &prefix) {
            Ok(fields) => {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(&args.queue.stream).arg("*");
                for (k, v) in fields {
                    cmd.arg(k).arg(v);
                }
                batch.push(cmd);
            }
            Err(why) => {
                tracing::error!("line {line_no}: {why}; skipped");
                bad += 1;
            }
        }
        if batch.len() >= 1000 {
            if let Err(e) = flush(&mut redis, &mut batch, &mut added) {
                tracing::error!("{e} ({added} added before)");
                return exit::JOBSUP_ERROR;
            }
        }
    }
    if let Err(e) = flush(&mut redis, &mut batch, &mut added) {
        tracing::error!("{e} ({added} added before)");
        return exit::JOBSUP_ERROR;
    }
    tracing::info!("{added} job(s) added to {}", args.queue.stream);
    if bad > 0 {
        tracing::error!("{bad} line(s) were not jobs and were skipped");
        return exit::FAILED;
    }
    exit::OK
}

/// `jobsup status`, as one JSON object.
pub fn status(args: &QueueArgs) -> Result<String, String> {
    let keys = Keys::new(&args.stream);
    let mut redis = Redis::open(&args.redis, Duration::from_secs(10))?;
    runtime()?.block_on(async {
        let fail = |e: redis::RedisError| format!("cannot read the queue at {}: {e}", args.redis);
        let len = |key: &str| {
            let mut c = redis::cmd("XLEN");
            c.arg(key);
            c
        };
        let stream: u64 = redis.query(&len(&keys.stream)).await.map_err(fail)?;
        let results: u64 = redis.query(&len(&keys.results)).await.map_err(fail)?;
        let dead: u64 = redis.query(&len(&keys.dead)).await.map_err(fail)?;
        let mut zcard = redis::cmd("ZCARD");
        zcard.arg(&keys.delayed);
        let delayed: u64 = redis.query(&zcard).await.map_err(fail)?;
        let mut xpending = redis::cmd("XPENDING");
        xpending.arg(&keys.stream).arg(&args.group);
        let (pending, consumers) = match redis.query::<redis::Value>(&xpending).await {
            Ok(v) => pending_summary(v),
            // No group yet: nothing is pending.
            Err(e) if e.code() == Some("NOGROUP") => (0, serde_json::Map::new()),
            Err(e) => return Err(fail(e)),
        };
        let status = json!({
            "stream": keys.stream,
            "group": args.group,
            // Acknowledged entries are deleted: what is left is pending or not yet read.
            "depth": stream.saturating_sub(pending),
            "pending": pending,
            "consumers": consumers,
            "delayed": delayed,
            "dead": dead,
            "results": results,
        });
        Ok(format!("{status}\n"))
    })
}

/// `XPENDING key group`'s summary: the count and the count per consumer.
fn pending_summary(v: redis::Value) -> (u64, serde_json::Map<String, Value>) {
    use redis::{FromRedisValue, Value as R};
    let mut per = serde_json::Map::new();
    let R::Array(parts) = v else {
        return (0, per);
    };
    let count = parts
        .first()
        .and_then(|c| u64::from_redis_value(c.clone()).ok())
        .unwrap_or(0);
    if let Some(R::Array(consumers)) = parts.get(3) {
        for c in consumers {
            if let Ok((name, n)) = <(String, u64)>::from_redis_value(c.clone()) {
                per.insert(name, n.into());
            }
        }
    }
    (count, per)
}

/// `jobsup dead`: the dead letters on stdout as NDJSON, or with `--replay` back on the
/// stream.
pub fn dead(args: &DeadArgs) -> u8 {
    let keys = Keys::new(&args.queue.stream);
    let result = (|| {
        let mut redis = Redis::open(&args.queue.redis, Duration::from_secs(10))?;
        let rt = runtime()?;
        let fail =
            |e: redis::RedisError| format!("cannot read the queue at {}: {e}", args.queue.redis);
        if args.replay {
            let n: u64 = rt
                .block_on(redis.query(&queue::replay(&keys)))
                .map_err(fail)?;
            tracing::info!("{n} dead job(s) put back on {}", keys.stream);
            return Ok(String::new());
        }
        let mut range = redis::cmd("XRANGE");
        range.arg(&keys.dead).arg("-").arg("+");
        let entries = queue::parse_taken(rt.block_on(redis.query(&range)).map_err(fail)?)?;
        let mut out = String::new();
        for e in entries {
            let mut obj = serde_json::Map::new();
            obj.insert("entry".into(), e.entry.into());
            for (k, v) in e.fields {
                let k = String::from_utf8_lossy(&k).into_owned();
                let v = String::from_utf8_lossy(&v).into_owned();
                let v = match k.as_str() {
                    "record" | "job" => serde_json::from_str(&v).unwrap_or(Value::String(v)),
                    "attempt" => v
                        .parse::<u64>()
                        .map(Value::from)
                        .unwrap_or(Value::String(v)),
                    _ => Value::String(v),
                };
                obj.insert(k, v);
            }
            out.push_str(&Value::Object(obj).to_string());
            out.push('\n');
        }
        Ok::<String, String>(out)
    })();
    match result {
        Ok(text) => {
            let mut stdout = std::io::stdout().lock();
            match stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
            {
                Ok(()) => exit::OK,
                Err(e) => {
                    tracing::error!("cannot write to stdout: {e}");
                    exit::JOBSUP_ERROR
                }
            }
        }
        Err(e) => {
            tracing::error!("{e}");
            exit::JOBSUP_ERROR
        }
    }
}
