//! The queue subcommands: `enqueue`, `serve`, `status` and `dead`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use crate::cli::RunArgs;
use crate::exit;
use crate::queue::{self, Keys, Redis};
use crate::source::{Defaults, InputFormat};

/// Where the queue is. Each flag may come from the config file's source table instead
/// (`[pools.NAME.source]`, see [`SourceSpec`]); a flag given here wins.
#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// The Redis server [default: redis://127.0.0.1:6379].
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// The jobs' stream; the other keys are named after it (`<stream>:results`,
    /// `<stream>:dead`, `<stream>:delayed`).
    #[arg(long, value_name = "KEY")]
    pub stream: Option<String>,
    /// The consumer group [default: jobsup].
    #[arg(long)]
    pub group: Option<String>,
}

/// The queue's Redis server when neither a flag nor the config file names one.
const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";
/// The consumer group when neither a flag nor the config file names one.
const DEFAULT_GROUP: &str = "jobsup";
/// How long a taken job stays a consumer's without a renewal, by default.
const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Deliveries of a job before it is dead-lettered, by default.
const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// A pool's queue in the config file: `[pools.NAME.source]`, over `[defaults.source]`,
/// key by key. Every key is optional and has the flag of the same name; with `stream` in
/// the file, `jobsup serve --config FILE --pool NAME` is a whole worker in one file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// `--redis`.
    pub redis: Option<String>,
    /// `--stream`.
    pub stream: Option<String>,
    /// `--group`.
    pub group: Option<String>,
    /// `--consumer`.
    pub consumer: Option<String>,
    /// `--lease`.
    pub lease: Option<crate::config::Dur>,
    /// `--max-attempts`.
    pub max_attempts: Option<u32>,
    /// `--metrics`.
    pub metrics: Option<std::net::SocketAddr>,
}

impl SourceSpec {
    /// One line for `jobsup check`: what is set, and the defaults of what is not.
    pub fn describe(&self) -> String {
        let lease = self.lease.map_or(DEFAULT_LEASE, |d| d.0);
        format!(
            "stream {} on {}, group {}, consumer {}, lease {}, max attempts {}, metrics {}",
            self.stream.as_deref().unwrap_or("- (give --stream)"),
            self.redis.as_deref().unwrap_or(DEFAULT_REDIS),
            self.group.as_deref().unwrap_or(DEFAULT_GROUP),
            self.consumer.as_deref().unwrap_or("host name and pid"),
            humantime::format_duration(lease),
            self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            self.metrics.map_or("-".into(), |m| m.to_string()),
        )
    }

    /// Fills every key `self` leaves unset from `under`.
    pub fn over(self, under: &SourceSpec) -> SourceSpec {
        SourceSpec {
            redis: self.redis.or_else(|| under.redis.clone()),
            stream: self.stream.or_else(|| under.stream.clone()),
            group: self.group.or_else(|| under.group.clone()),
            consumer: self.consumer.or_else(|| under.consumer.clone()),
            lease: self.lease.or(under.lease),
            max_attempts: self.max_attempts.or(under.max_attempts),
            metrics: self.metrics.or(under.metrics),
        }
    }
}

/// A config file to take the queue's location from (`enqueue`, `status`, `dead`; `serve`
/// has the same flags through `run`'s).
#[derive(Debug, Clone, Args)]
pub struct QueueFile {
    /// Take the queue from this config file's pool (its `[pools.NAME.source]` table).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The pool of the config file (may be left out when it has one pool).
    #[arg(long, value_name = "NAME", requires = "config")]
    pub pool: Option<String>,
}

/// The source table of the config file's pool (over its `[defaults.source]`), or an empty
/// one without a file.
fn file_source(config: Option<&Path>, pool: Option<&str>) -> Result<SourceSpec, String> {
    let Some(path) = config else {
        return Ok(SourceSpec::default());
    };
    let file = crate::config::load(path)?;
    let (_, spec) = crate::config::select_pool(path, &file, pool)?;
    let under = file.defaults.source.clone().unwrap_or_default();
    Ok(spec.source.clone().unwrap_or_default().over(&under))
}

/// Where a queue is, every part decided.
#[derive(Debug, Clone)]
pub struct Queue {
    /// The Redis URL.
    pub redis: String,
    /// The stream and the keys named after it.
    pub keys: Keys,
    /// The consumer group.
    pub group: String,
}

impl QueueArgs {
    /// The flags over the file's source table over the defaults; the stream has no default.
    fn resolve(&self, file: &SourceSpec) -> Result<Queue, String> {
        let stream = self
            .stream
            .clone()
            .or_else(|| file.stream.clone())
            .ok_or("no stream: give --stream KEY, or `stream` in the pool's [pools.NAME.source] table of --config FILE")?;
        if stream.is_empty() {
            return Err("the stream's name must not be empty".into());
        }
        Ok(Queue {
            redis: self
                .redis
                .clone()
                .or_else(|| file.redis.clone())
                .unwrap_or_else(|| DEFAULT_REDIS.into()),
            keys: Keys::new(&stream),
            group: self
                .group
                .clone()
                .or_else(|| file.group.clone())
                .unwrap_or_else(|| DEFAULT_GROUP.into()),
        })
    }
}

impl QueueArgs {
    /// [`QueueArgs::resolve`] over the source table of `file`'s pool, if one is given.
    fn resolve_from(&self, file: &QueueFile) -> Result<Queue, String> {
        self.resolve(&file_source(file.config.as_deref(), file.pool.as_deref())?)
    }
}

/// `jobsup status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The queue.
    #[command(flatten)]
    pub queue: QueueArgs,
    /// Or where the config file says it is.
    #[command(flatten)]
    pub file: QueueFile,
}

/// `jobsup enqueue`.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// The queue.
    #[command(flatten)]
    pub queue: QueueArgs,
    /// Or where the config file says it is.
    #[command(flatten)]
    pub file: QueueFile,
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
    /// lease/3, and reclaimed by any consumer once idle for longer [default: 30s].
    #[arg(long, value_parser = crate::units::parse_duration)]
    pub lease: Option<Duration>,
    /// Deliveries of a job (crashes of its supervisor included) before it is
    /// dead-lettered [default: 5].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: Option<u32>,
    /// Everything `run` takes (`--metrics` among them): processor, deadlines, sandbox, pool.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `jobsup dead`.
#[derive(Debug, Args)]
pub struct DeadArgs {
    /// The queue.
    #[command(flatten)]
    pub queue: QueueArgs,
    /// Or where the config file says it is.
    #[command(flatten)]
    pub file: QueueFile,
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
    let file =
        file_source(run.config.as_deref(), run.pool.as_deref()).map_err(anyhow::Error::msg)?;
    let queue = args.queue.resolve(&file).map_err(anyhow::Error::msg)?;
    let lease = args
        .lease
        .or(file.lease.map(|d| d.0))
        .unwrap_or(DEFAULT_LEASE);
    if lease < Duration::from_millis(300) {
        anyhow::bail!("--lease {lease:?} is too short (at least 300ms)");
    }
    let max_attempts = args
        .max_attempts
        .or(file.max_attempts)
        .unwrap_or(DEFAULT_MAX_ATTEMPTS);
    if max_attempts == 0 {
        anyhow::bail!("max_attempts must be at least 1");
    }
    let consumer = match args.consumer.or(file.consumer) {
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
        redis: queue.redis,
        keys: queue.keys,
        group: queue.group,
        consumer,
        lease,
        max_attempts,
        // Filled in from the resolved pool.
        retry_on: Vec::new(),
        retry_delay: Duration::ZERO,
        workers: 1,
        shutdown_timeout: None,
        metrics: args.run.metrics.or(file.metrics),
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
    let queue = match args.queue.resolve_from(&args.file) {
        Ok(q) => q,
        Err(e) => {
            tracing::error!("{e}");
            return exit::JOBSUP_ERROR;
        }
    };
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
    let mut redis = match Redis::open(&queue.redis, Duration::from_secs(10)) {
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
            .map_err(|e| format!("cannot add jobs to {}: {e}", queue.redis))?;
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
                cmd.arg(&queue.keys.stream).arg("*");
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
    tracing::info!("{added} job(s) added to {}", queue.keys.stream);
    if bad > 0 {
        tracing::error!("{bad} line(s) were not jobs and were skipped");
        return exit::FAILED;
    }
    exit::OK
}

/// `jobsup status`, as one JSON object.
pub fn status(args: &StatusArgs) -> Result<String, String> {
    let queue = args.queue.resolve_from(&args.file)?;
    let keys = &queue.keys;
    let mut redis = Redis::open(&queue.redis, Duration::from_secs(10))?;
    runtime()?.block_on(async {
        let fail = |e: redis::RedisError| format!("cannot read the queue at {}: {e}", queue.redis);
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
        xpending.arg(&keys.stream).arg(&queue.group);
        let (pending, consumers) = match redis.query::<redis::Value>(&xpending).await {
            Ok(v) => pending_summary(v),
            // No group yet: nothing is pending.
            Err(e) if e.code() == Some("NOGROUP") => (0, serde_json::Map::new()),
            Err(e) => return Err(fail(e)),
        };
        let status = json!({
            "stream": keys.stream,
            "group": queue.group,
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
    let result = (|| {
        let queue = args.queue.resolve_from(&args.file)?;
        let keys = queue.keys;
        let mut redis = Redis::open(&queue.redis, Duration::from_secs(10))?;
        let rt = runtime()?;
        let fail = |e: redis::RedisError| format!("cannot read the queue at {}: {e}", queue.redis);
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
