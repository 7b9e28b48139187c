//! Redis Streams as jobsup's queue: key names, the Lua scripts that make every step
//! atomic, a connection that reconnects, and the reading of stream entries into jobs.
//!
//! Every decision that must not race with another supervisor is one Lua script, so Redis
//! runs it whole or not at all: taking entries (with their delivery counts), renewing a
//! lease, and finishing an attempt (store the result or schedule the retry, then `XACK`,
//! only while this consumer still owns the entry at this delivery).

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Cmd, FromRedisValue, Value};
use serde_json::Map;

use crate::record::{JobSpec, Record};
use crate::source::Defaults;

/// The keys of one queue, all derived from `--stream`.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The jobs (`<stream>`).
    pub stream: String,
    /// One entry per finished job (`<stream>:results`).
    pub results: String,
    /// Jobs that ran out of attempts, with their last record (`<stream>:dead`).
    pub dead: String,
    /// Retries waiting for their time, scored by when they are due (`<stream>:delayed`).
    pub delayed: String,
}

impl Keys {
    /// The keys of the queue on `stream`.
    pub fn new(stream: &str) -> Keys {
        Keys {
            stream: stream.to_string(),
            results: format!("{stream}:results"),
            dead: format!("{stream}:dead"),
            delayed: format!("{stream}:delayed"),
        }
    }
}

/// Fields of a stream entry that jobsup itself adds; never part of the job.
const INTERNAL: &str = "jobsup_";

/// Lua: the one place an attempt ends, as a function the scripts below call. Checks that
/// `consumer` still owns the entry at this delivery; only then stores the outcome
/// (`done`: a result; `dead`: a result and a dead letter; `retry`: the job into the
/// delayed set; `release`: the job back on the stream at once), acknowledges and deletes
/// the entry. Returns 1, or 0 for a stale completion (nothing written).
macro_rules! finish_fn {
    () => {
        r#"
local function finish(stream, results, dead, delayed, group, consumer, entry, deliveries, id, attempt, outcome, record, action, delay)
  local p = redis.call('XPENDING', stream, group, entry, entry, 1)
  if #p == 0 or p[1][2] ~= consumer or tonumber(p[1][4]) ~= tonumber(deliveries) then
    return 0
  end
  local fields = {}
  -- The job's own fields are needed only to put it back or to dead-letter it.
  local e = {}
  if action ~= 'done' then
    e = redis.call('XRANGE', stream, entry, entry)
  end
  if e[1] then
    local f = e[1][2]
    for i = 1, #f, 2 do
      if string.sub(f[i], 1, 7) ~= 'jobsup_' then
        table.insert(fields, f[i])
        table.insert(fields, f[i + 1])
      end
    end
  end
  if action == 'retry' or action == 'release' then
    table.insert(fields, 'jobsup_attempts')
    table.insert(fields, attempt)
    if action == 'retry' then
      -- The original entry's id keeps two equal jobs apart in the set.
      table.insert(fields, 'jobsup_from')
      table.insert(fields, entry)
      local t = redis.call('TIME')
      local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      redis.call('ZADD', delayed, now + tonumber(delay), cjson.encode(fields))
    else
      redis.call('XADD', stream, '*', unpack(fields))
    end
  else
    redis.call('XADD', results, '*', 'id', id, 'attempt', attempt, 'outcome', outcome, 'record', record)
    if action == 'dead' then
      redis.call('XADD', dead, '*', 'id', id, 'attempt', attempt, 'outcome', outcome, 'record', record, 'job', cjson.encode(fields))
    end
  end
  redis.call('XACK', stream, group, entry)
  redis.call('XDEL', stream, entry)
  return 1
end
"#
    };
}

/// Lua: takes up to `count` entries for `consumer`, as a function the scripts below call:
/// first moves due retries from the delayed set onto the stream, then (when `claim` is
/// `1`) reclaims entries idle for `min_idle` ms with their delivery counts, then reads
/// new ones. Returns `[[id, fields, deliveries]...]`.
macro_rules! take_fn {
    () => {
        r#"
local function take(stream, delayed, group, consumer, count, claim, min_idle)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 100)
  for _, m in ipairs(due) do
    local ok, f = pcall(cjson.decode, m)
    if ok and type(f) == 'table' and #f > 0 then
      redis.call('XADD', stream, '*', unpack(f))
    end
    redis.call('ZREM', delayed, m)
  end
  count = tonumber(count)
  local out = {}
  if claim == '1' then
    local r = redis.call('XAUTOCLAIM', stream, group, consumer, min_idle, '0-0', 'COUNT', count)
    for _, e in ipairs(r[2]) do
      if e and e[2] then
        local p = redis.call('XPENDING', stream, group, e[1], e[1], 1)
        if p[1] then
          table.insert(out, {e[1], e[2], p[1][4]})
        end
      end
    end
    count = count - #out
  end
  if count > 0 then
    local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS', stream, '>')
    if r then
      for _, e in ipairs(r[1][2]) do
        table.insert(out, {e[1], e[2], 1})
      end
    end
  end
  return out
end
"#
    };
}

/// Lua: ends one attempt. KEYS: stream, results, dead, delayed; ARGV: group, consumer,
/// entry, deliveries, id, attempt, outcome, record, action, delay (ms).
const FINISH: &str = concat!(
    finish_fn!(),
    "return finish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], unpack(ARGV))"
);

/// Lua: takes entries. KEYS: stream, delayed; ARGV: group, consumer, count, claim, min_idle.
const TAKE: &str = concat!(take_fn!(), "return take(KEYS[1], KEYS[2], unpack(ARGV))");

/// Lua: ends one attempt and takes entries for the workers now free, in one round trip
/// (the finish's fence is the same: a stale finish stores nothing, and the take is as
/// [`TAKE`]'s). KEYS as [`FINISH`]'s; ARGV as [`FINISH`]'s, then count, claim, min_idle.
/// Returns `[acked, taken]`.
const FINISH_TAKE: &str = concat!(
    finish_fn!(),
    take_fn!(),
    "local acked = finish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], unpack(ARGV, 1, 10))\n",
    "return {acked, take(KEYS[1], KEYS[4], ARGV[1], ARGV[2], ARGV[11], ARGV[12], ARGV[13])}"
);

/// Lua: renews the leases of `(id, deliveries)` pairs that `consumer` still owns at that
/// delivery (`XCLAIM ... JUSTID` resets the idle time and leaves the delivery count);
/// returns the ids renewed. An entry a peer reclaimed is not taken back.
const RENEW: &str = r#"
local kept = {}
for i = 3, #ARGV, 2 do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] and tonumber(p[1][4]) == tonumber(ARGV[i + 1]) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    table.insert(kept, ARGV[i])
  end
end
return kept
"#;

/// Lua: puts every dead letter's job back on the stream with fresh attempts; returns
/// how many.
const REPLAY: &str = r#"
local n = 0
local all = redis.call('XRANGE', KEYS[2], '-', '+')
for _, e in ipairs(all) do
  local f = e[2]
  for i = 1, #f, 2 do
    if f[i] == 'job' then
      local ok, job = pcall(cjson.decode, f[i + 1])
      if ok and type(job) == 'table' and #job > 0 then
        redis.call('XADD', KEYS[1], '*', unpack(job))
        n = n + 1
      end
    end
  end
  redis.call('XDEL', KEYS[2], e[1])
end
return n
"#;

/// Every script, loaded into each new connection's server (`SCRIPT LOAD`) so that calls
/// can name them by digest.
const SCRIPTS: [&str; 5] = [FINISH, TAKE, FINISH_TAKE, RENEW, REPLAY];

/// `SCRIPT LOAD` of every script, for a new connection (and for tests that call the
/// scripts on a connection of their own).
pub fn load_scripts() -> redis::Pipeline {
    let mut load = redis::pipe();
    for script in SCRIPTS {
        load.cmd("SCRIPT").arg("LOAD").arg(script);
    }
    load
}

/// A script's digest, as Redis names it (the SHA-1 of its text, in hex).
fn digest(script: &str) -> String {
    sha1_smol::Sha1::from(script).digest().to_string()
}

/// A script call by its digest (`EVALSHA`): what each call sends and what Redis hashes is
/// 40 bytes, not the script. Every connection loads the scripts when it is made, and a
/// server that has lost them (restarted, or `SCRIPT FLUSH`) answers `NOSCRIPT`, which
/// drops the connection: the next try reconnects and loads them again.
fn eval(script: &'static str, keys: &[&str]) -> Cmd {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static DIGESTS: OnceLock<Mutex<HashMap<usize, String>>> = OnceLock::new();
    let sha = DIGESTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(script.as_ptr() as usize)
        .or_insert_with(|| digest(script))
        .clone();
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(sha).arg(keys.len());
    for k in keys {
        cmd.arg(*k);
    }
    cmd
}

/// How an attempt ends in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The result is stored.
    Done,
    /// The result is stored, and the job dead-lettered.
    Dead,
    /// The job waits in the delayed set for its next attempt.
    Retry,
    /// The job goes back on the stream at once (a stopping supervisor's).
    Release,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Done => "done",
            Action::Dead => "dead",
            Action::Retry => "retry",
            Action::Release => "release",
        }
    }
}

/// One attempt's end, as the finish script takes it.
#[derive(Debug, Clone)]
pub struct Finish {
    /// The stream entry.
    pub entry: String,
    /// The delivery count this attempt was taken at (the fence).
    pub deliveries: u64,
    /// The job's id.
    pub id: String,
    /// Attempts used, this one included (for `Release` of a job never started: not).
    pub attempt: u32,
    /// What to do.
    pub action: Action,
    /// The outcome's name.
    pub outcome: &'static str,
    /// The record, as JSON.
    pub record: String,
    /// For `Retry`: the wait.
    pub delay: Duration,
    /// Entries to take in the same round trip, for workers that are free.
    pub take: Option<TakeAsk>,
}

/// A request for entries: how many (the free workers), and whether to reclaim lapsed
/// ones first (with their minimum idle time: the lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakeAsk {
    /// At most this many.
    pub count: usize,
    /// Reclaim entries idle this long first.
    pub claim: Option<Duration>,
}

impl Finish {
    /// The script call: `FINISH`, or `FINISH_TAKE` when entries are to be taken too.
    pub fn command(&self, keys: &Keys, group: &str, consumer: &str) -> Cmd {
        let script = if self.take.is_some() {
            FINISH_TAKE
        } else {
            FINISH
        };
        let mut cmd = eval(
            script,
            &[&keys.stream, &keys.results, &keys.dead, &keys.delayed],
        );
        cmd.arg(group)
            .arg(consumer)
            .arg(&self.entry)
            .arg(self.deliveries)
            .arg(&self.id)
            .arg(self.attempt)
            .arg(self.outcome)
            .arg(&self.record)
            .arg(self.action.as_str())
            .arg(self.delay.as_millis() as u64);
        if let Some(ask) = self.take {
            take_args(&mut cmd, ask);
        }
        cmd
    }

    /// Reads the script's reply: whether the finish was acknowledged (not stale), and the
    /// entries taken with it when it took any.
    pub fn parse_reply(&self, reply: Value) -> (bool, Option<Result<Vec<Taken>, String>>) {
        if self.take.is_none() {
            return (matches!(reply, Value::Int(1)), None);
        }
        match reply {
            Value::Array(mut parts) if parts.len() == 2 => {
                let taken = parse_taken(parts.pop().unwrap_or(Value::Nil));
                (matches!(parts[0], Value::Int(1)), Some(taken))
            }
            other => (
                false,
                Some(Err(format!("unexpected reply from Redis: {other:?}"))),
            ),
        }
    }
}

/// The take part of a script call's arguments: count, claim flag, minimum idle (ms).
fn take_args(cmd: &mut Cmd, ask: TakeAsk) {
    cmd.arg(ask.count)
        .arg(if ask.claim.is_some() { "1" } else { "0" })
        .arg(ask.claim.unwrap_or_default().as_millis() as u64);
}

/// The take script's call.
pub fn take(keys: &Keys, group: &str, consumer: &str, ask: TakeAsk) -> Cmd {
    let mut cmd = eval(TAKE, &[&keys.stream, &keys.delayed]);
    cmd.arg(group).arg(consumer);
    take_args(&mut cmd, ask);
    cmd
}

/// The renew script's call.
pub fn renew<'a>(
    keys: &Keys,
    group: &str,
    consumer: &str,
    entries: impl Iterator<Item = (&'a str, u64)>,
) -> Cmd {
    let mut cmd = eval(RENEW, &[&keys.stream]);
    cmd.arg(group).arg(consumer);
    for (entry, deliveries) in entries {
        cmd.arg(entry).arg(deliveries);
    }
    cmd
}

/// The replay script's call.
pub fn replay(keys: &Keys) -> Cmd {
    eval(REPLAY, &[&keys.stream, &keys.dead])
}

/// A stream entry taken for this consumer.
#[derive(Debug, Clone)]
pub struct Taken {
    /// Its stream id.
    pub entry: String,
    /// Its fields, in order.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
    /// How often it has been delivered, this time included.
    pub deliveries: u64,
}

/// Reads the take script's (or `XREADGROUP`'s) reply; `deliveries` is used where the
/// reply has none (`XREADGROUP`: a new entry's first delivery).
pub fn parse_taken(value: Value) -> Result<Vec<Taken>, String> {
    let bad = || format!("unexpected reply from Redis: {value:?}");
    let Value::Array(items) = &value else {
        return match value {
            Value::Nil => Ok(Vec::new()),
            _ => Err(bad()),
        };
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(parts) = item else {
            return Err(bad());
        };
        let (Some(id), Some(Value::Array(flat))) = (parts.first(), parts.get(1)) else {
            return Err(bad());
        };
        let entry = String::from_redis_value(id.clone()).map_err(|_| bad())?;
        let deliveries = match parts.get(2) {
            Some(v) => u64::from_redis_value(v.clone()).map_err(|_| bad())?,
            None => 1,
        };
        let mut fields = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks(2) {
            let [k, v] = pair else { return Err(bad()) };
            fields.push((bytes(k).ok_or_else(bad)?, bytes(v).ok_or_else(bad)?));
        }
        out.push(Taken {
            entry,
            fields,
            deliveries,
        });
    }
    Ok(out)
}

/// `XREADGROUP`'s reply: `[[stream, [[id, fields]...]]]`.
pub fn parse_read(value: Value) -> Result<Vec<Taken>, String> {
    match value {
        Value::Nil => Ok(Vec::new()),
        Value::Array(mut streams) if !streams.is_empty() => match streams.swap_remove(0) {
            Value::Array(mut pair) if pair.len() == 2 => parse_taken(pair.swap_remove(1)),
            other => Err(format!("unexpected reply from Redis: {other:?}")),
        },
        Value::Array(_) => Ok(Vec::new()),
        // RESP3 answers with a map.
        Value::Map(mut streams) if !streams.is_empty() => parse_taken(streams.swap_remove(0).1),
        other => Err(format!("unexpected reply from Redis: {other:?}")),
    }
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

/// A stream entry read into a job, with the attempts its earlier entries used; or why
/// it is not a job (then the record says so and is stored like any result).
pub fn job_of(taken: &Taken, seq: u64, defaults: &Defaults) -> (Result<JobSpec, Record>, u32) {
    let mut used = 0u32;
    let mut map = Map::new();
    let mut error = None;
    for (k, v) in &taken.fields {
        let (Ok(k), Ok(v)) = (std::str::from_utf8(k), std::str::from_utf8(v)) else {
            error.get_or_insert_with(|| {
                format!("field {:?} is not UTF-8 text", String::from_utf8_lossy(k))
            });
            continue;
        };
        if let Some(internal) = k.strip_prefix(INTERNAL) {
            if internal == "attempts" {
                used = v.parse().unwrap_or(0);
            }
            continue;
        }
        // A duration may be given in seconds, as in ndjson.
        let value = match (k, v.parse::<f64>()) {
            ("ttl" | "cleanup", Ok(_)) => serde_json::from_str(v).unwrap_or(v.into()),
            _ => serde_json::Value::String(v.to_string()),
        };
        map.insert(k.to_string(), value);
    }
    map.entry("id")
        .or_insert_with(|| serde_json::Value::String(taken.entry.clone()));
    let id = map
        .get("id")
        .and_then(|v| v.as_str())
        .unwrap_or(&taken.entry)
        .to_string();
    if let Some(reason) = error {
        let reason = format!("stream entry {}: {reason}", taken.entry);
        return (Err(Record::rejected(seq, seq, id, reason)), used);
    }
    let line = serde_json::Value::Object(map).to_string();
    match crate::source::parse_job(line.as_bytes(), seq, defaults) {
        Ok(mut job) => {
            job.ordinal = seq;
            (Ok(job), used)
        }
        Err((kind, reason)) => {
            let mut record = Record::rejected(
                seq,
                seq,
                id,
                format!("stream entry {}: {reason}", taken.entry),
            );
            record.kind = kind;
            (Err(record), used)
        }
    }
}

/// A connection to Redis that reconnects: a command that fails drops the connection,
/// and the next one opens a new one. Each task that blocks (the reader's `XREADGROUP
/// BLOCK`) has its own, so that it holds up no other command.
pub struct Redis {
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
    timeout: Duration,
}

impl Redis {
    /// A client for `url`; nothing is connected yet. `timeout` bounds each reply.
    pub fn open(url: &str, timeout: Duration) -> Result<Redis, String> {
        let client = redis::Client::open(url).map_err(|e| format!("--redis {url}: {e}"))?;
        Ok(Redis {
            client,
            conn: None,
            timeout,
        })
    }

    /// The connection, made first when there is none (or the last one failed).
    async fn connection(&mut self) -> Result<&mut MultiplexedConnection, redis::RedisError> {
        if self.conn.is_none() {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(self.timeout));
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let _: Vec<String> = load_scripts().query_async(&mut conn).await?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Runs one command, connecting first when needed.
    pub async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T, redis::RedisError> {
        let result = async {
            let conn = self.connection().await?;
            cmd.query_async(conn).await
        }
        .await;
        if let Err(e) = &result {
            if !matches!(e.kind(), redis::ErrorKind::Server(_)) || e.code() == Some("NOSCRIPT") {
                self.conn = None;
            }
        }
        result
    }

    /// Runs several commands in one round trip; each keeps its own atomicity (a script
    /// is still one step), the batch is not a transaction.
    pub async fn pipeline(&mut self, cmds: &[Cmd]) -> Result<Vec<Value>, redis::RedisError> {
        let mut pipe = redis::pipe();
        for c in cmds {
            pipe.add_command(c.clone());
        }
        let result = async {
            let conn = self.connection().await?;
            pipe.query_async(conn).await
        }
        .await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

/// Backoff after `failures` failed tries in a row: 100 ms doubling, at most 5 s.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64 << failures.min(6)).min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            ttl: Duration::from_secs(30),
            cleanup: Duration::from_secs(5),
            max_line: 1 << 20,
        }
    }

    fn taken(fields: &[(&str, &str)]) -> Taken {
        Taken {
            entry: "1-0".into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            deliveries: 1,
        }
    }

    #[test]
    fn entries_read_like_ndjson_records() {
        let (job, used) = job_of(
            &taken(&[
                ("id", "a"),
                ("payload", "x"),
                ("ttl", "1.5"),
                ("cleanup", "2s"),
                ("kind", "k"),
                ("jobsup_attempts", "3"),
            ]),
            7,
            &defaults(),
        );
        let job = job.unwrap();
        assert_eq!(used, 3);
        assert_eq!(job.id, "a");
        assert_eq!(job.payload, b"x");
        assert_eq!(job.ttl, Duration::from_millis(1500));
        assert_eq!(job.cleanup, Duration::from_secs(2));
        assert_eq!(job.kind.as_deref(), Some("k"));
        // No id: the entry's.
        let (job, _) = job_of(&taken(&[("payload", "x")]), 1, &defaults());
        assert_eq!(job.unwrap().id, "1-0");
    }

    #[test]
    fn malformed_entries_are_rejected_with_a_reason() {
        for (fields, why) in [
            (&[("id", "a")][..], "missing \"payload\""),
            (&[("payload", "x"), ("ttl", "soon")][..], "bad \"ttl\""),
            (&[("payload", "x"), ("colour", "red")][..], "unknown key"),
        ] {
            let (job, _) = job_of(&taken(fields), 1, &defaults());
            let record = job.unwrap_err();
            let error = record.error.unwrap();
            assert!(error.contains(why), "{error}");
        }
        let bad = Taken {
            entry: "1-0".into(),
            fields: vec![(b"payload".to_vec(), vec![0xff, 0xfe])],
            deliveries: 1,
        };
        let record = job_of(&bad, 1, &defaults()).0.unwrap_err();
        assert!(record.error.unwrap().contains("not UTF-8"));
    }
}
