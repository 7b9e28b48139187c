//! `jobsup serve` on a real Redis: fenced acks, leases, reclaiming, dead letters, drain.
//!
//! Every test starts its own `redis-server` ([`RedisServer`]) and real `serve` processes,
//! and judges by what Redis holds at the end: one result per job id, nothing pending.

use std::collections::BTreeMap;
use std::time::Duration;

use jobsup_tests::redis_server::{Entry, RedisServer};
use jobsup_tests::{
    bin, is_guard, kill_tree, pid_alive, process_tree, wait_until, Background, Jobsup, Run,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const LONG: Duration = Duration::from_secs(60);

/// The tests whose point is a lease kept, or lost, within a second or two run alone. Beside
/// the others (each with a Redis of its own and supervisors in the real-time class, on two
/// CPUs) a Redis or a supervisor can wait longer than that for a CPU now and then, and a
/// lease lapses for reasons that are not the test's (one run in four or five, measured).
static TURNS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    TURNS.write().unwrap_or_else(|e| e.into_inner())
}

fn beside_others() -> std::sync::RwLockReadGuard<'static, ()> {
    TURNS.read().unwrap_or_else(|e| e.into_inner())
}

fn jobsup() -> Jobsup {
    Jobsup::new(bin!("jobsup-shim")).timeout(Duration::from_secs(120))
}

fn enqueue(redis: &RedisServer, stream: &str, format: &str, input: &str) -> Run {
    jobsup()
        .args(["enqueue", "--redis", &redis.url(), "--stream", stream])
        .args(["--input-format", format])
        .stdin(input)
        .run()
}

/// A `serve` of `processor` on `stream` named `consumer`, with `extra` flags.
fn serve(
    redis: &RedisServer,
    stream: &str,
    consumer: &str,
    extra: &[&str],
    processor: &str,
    args: &[&str],
) -> Background {
    jobsup()
        .args(["serve", "--redis", &redis.url(), "--stream", stream])
        .args(["--consumer", consumer])
        .args(extra)
        .processor(processor, args)
        .spawn()
}

/// The results stream's entries per job id.
fn results_by_id(redis: &RedisServer, stream: &str) -> BTreeMap<String, Vec<Entry>> {
    let mut by: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for e in redis.entries(&format!("{stream}:results")) {
        by.entry(e.get("id").to_string()).or_default().push(e);
    }
    by
}

fn ids(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("job-{i}")).collect()
}

fn ndjson(ids: &[String], payload: impl Fn(&str) -> String) -> String {
    ids.iter()
        .map(|id| format!("{{\"id\":\"{id}\",\"payload\":\"{}\"}}\n", payload(id)))
        .collect()
}

/// Stops a serve with SIGTERM and waits for its clean exit.
fn drain(serve: Background) -> Run {
    serve.signal(Signal::SIGTERM);
    let run = serve.wait();
    assert_eq!(run.code(), 0, "a drained serve exits 0\n{run}");
    run
}

fn assert_exactly_once(redis: &RedisServer, stream: &str, ids: &[String]) {
    let by = results_by_id(redis, stream);
    for id in ids {
        let n = by.get(id).map_or(0, Vec::len);
        assert_eq!(
            n,
            1,
            "job {id} has {n} results, not exactly one: {:?}",
            by.get(id)
        );
    }
    assert_eq!(
        by.len(),
        ids.len(),
        "results for unknown ids: {:?}",
        by.keys()
    );
    assert_eq!(redis.pending(stream), 0, "entries left pending");
}

#[test]
fn every_job_is_acked_once_with_its_result() {
    let _turn = beside_others();
    let redis = RedisServer::start();
    let ids = ids(300);
    let run = enqueue(&redis, "q", "ndjson", &ndjson(&ids, |id| format!("p-{id}")));
    assert_eq!(run.code(), 0, "{run}");
    // Lines get generated ids.
    let run = enqueue(&redis, "q", "lines", "alpha\nbeta\n");
    assert_eq!(run.code(), 0, "{run}");
    let s = serve(&redis, "q", "a", &["-j", "2"], bin!("jobsup-echo"), &[]);
    wait_until(LONG, "every job has a result", || {
        redis.xlen("q:results") >= 302
    });
    drain(s);
    let by = results_by_id(&redis, "q");
    for id in &ids {
        let results = &by[id];
        assert_eq!(results.len(), 1, "{id}: {results:?}");
        let r = &results[0];
        assert_eq!(r.get("outcome"), "ok");
        assert_eq!(r.get("attempt"), "1");
        // The record is the one `run` prints.
        let record = r.record();
        assert_eq!(record["id"], id.as_str());
        assert_eq!(record["output"], format!("p-{id}").as_str());
        assert_eq!(record["outcome"], "ok");
    }
    let outputs: Vec<String> = by
        .values()
        .flatten()
        .map(|e| e.record()["output"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(outputs.contains(&"alpha".to_string()) && outputs.contains(&"beta".to_string()));
    assert_eq!(by.len(), 302);
    assert_eq!(redis.pending("q"), 0);
    assert_eq!(redis.xlen("q"), 0, "acknowledged entries are deleted");
    let status = jobsup()
        .args(["status", "--redis", &redis.url(), "--stream", "q"])
        .run();
    assert_eq!(status.code(), 0, "{status}");
    let v: serde_json::Value = serde_json::from_str(status.stdout_str().trim()).unwrap();
    assert_eq!(v["results"], 302);
    assert_eq!(v["pending"], 0);
    assert_eq!(v["depth"], 0);
}

#[test]
fn the_finish_script_acks_only_for_the_owner_at_its_delivery() {
    let _turn = beside_others();
    use jobsup::queue::{Action, Finish, Keys, TakeAsk};
    let redis = RedisServer::start();
    let keys = Keys::new("q");
    // jobsup calls its scripts by digest, each connection loading them first.
    let _: Vec<String> = redis.pipeline(&jobsup::queue::load_scripts());
    let entry: String = redis.cmd(&["XADD", "q", "*", "id", "j", "payload", "x"]);
    let _: String = redis.cmd(&["XGROUP", "CREATE", "q", "jobsup", "0"]);
    // Delivered to a, then reclaimed by b: the second delivery is b's.
    let _: redis::Value = redis.cmd(&["XREADGROUP", "GROUP", "jobsup", "a", "STREAMS", "q", ">"]);
    let _: redis::Value = redis.cmd(&["XCLAIM", "q", "jobsup", "b", "0", &entry]);
    let finish = |deliveries, take| Finish {
        entry: entry.clone(),
        deliveries,
        id: "j".into(),
        attempt: deliveries as u32,
        action: Action::Done,
        outcome: "ok",
        record: "{}".into(),
        delay: Duration::ZERO,
        take,
    };
    let one_more = Some(TakeAsk {
        count: 1,
        claim: None,
    });
    // The same fence whether or not the finish takes the next entry in the same call.
    for take in [None, one_more] {
        for (consumer, deliveries) in [("a", 1), ("a", 2), ("b", 1)] {
            let f = finish(deliveries, take);
            let reply: redis::Value = redis.query(&f.command(&keys, "jobsup", consumer));
            let (acked, taken) = f.parse_reply(reply);
            assert!(!acked, "{consumer} at delivery {deliveries} is stale");
            assert_eq!(taken.map(|t| t.unwrap().len()), take.map(|_| 0));
            assert_eq!(
                redis.xlen("q:results"),
                0,
                "a stale completion stores nothing"
            );
            assert_eq!(redis.pending("q"), 1, "a stale completion is not acked");
        }
    }
    // The owner's finish stores and acks, and takes the next entry in the same call.
    let next: String = redis.cmd(&["XADD", "q", "*", "id", "k", "payload", "y"]);
    let f = finish(2, one_more);
    let reply: redis::Value = redis.query(&f.command(&keys, "jobsup", "b"));
    let (acked, taken) = f.parse_reply(reply);
    assert!(acked);
    let taken = taken.expect("a take was asked for").unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].entry, next);
    assert_eq!(taken[0].deliveries, 1);
    assert_eq!(redis.xlen("q:results"), 1);
    assert_eq!(
        redis.pending("q"),
        1,
        "only the entry just taken is pending"
    );
    assert_eq!(redis.xlen("q"), 1, "the finished entry is deleted");
    // Twice is stale too: the entry is no longer pending.
    let acked: i64 = redis.query(&finish(2, None).command(&keys, "jobsup", "b"));
    assert_eq!(acked, 0);
    assert_eq!(redis.xlen("q:results"), 1);
}

#[test]
fn a_stopped_supervisor_loses_its_jobs_kills_its_copies_and_stores_nothing() {
    let _turn = alone();
    let redis = RedisServer::start();
    let ids = ids(2);
    enqueue(&redis, "q", "ndjson", &ndjson(&ids, |_| "6000".into()));
    let flags = ["-j", "2", "--lease", "1s"];
    let a = serve(&redis, "q", "a", &flags, bin!("jobsup-sleepy"), &[]);
    wait_until(LONG, "a took both jobs", || redis.pending_of("q", "a") == 2);
    let copies: Vec<i32> = process_tree(a.pid())
        .into_iter()
        .filter(|&p| p != a.pid() && !is_guard(p))
        .collect();
    assert!(!copies.is_empty());
    // Its children keep running while it cannot renew their leases.
    a.signal(Signal::SIGSTOP);
    let b = serve(&redis, "q", "b", &flags, bin!("jobsup-sleepy"), &[]);
    wait_until(LONG, "b reclaimed both jobs", || {
        redis.pending_of("q", "b") == 2
    });
    a.signal(Signal::SIGCONT);
    wait_until(LONG, "a stopped its own copies of the jobs", || {
        copies.iter().all(|&p| !pid_alive(p))
    });
    wait_until(LONG, "b finished both jobs", || {
        redis.xlen("q:results") == 2
    });
    let a = drain(a);
    drain(b);
    assert_eq!(
        a.stderr.matches("lost its lease (").count()
            + a.stderr.matches("stale completion of").count(),
        2,
        "both of a's attempts ended without a stored result\n{a}"
    );
    assert_exactly_once(&redis, "q", &ids);
    for e in redis.entries("q:results") {
        assert_eq!(e.get("attempt"), "2", "b's was the second delivery: {e:?}");
        assert_eq!(e.get("outcome"), "ok");
    }
}

#[test]
fn a_job_running_for_several_leases_is_not_duplicated() {
    let _turn = alone();
    let redis = RedisServer::start();
    let ids = ids(2);
    enqueue(&redis, "q", "ndjson", &ndjson(&ids, |_| "6000".into()));
    let flags = ["-j", "2", "--lease", "1500ms"];
    let a = serve(&redis, "q", "a", &flags, bin!("jobsup-sleepy"), &[]);
    wait_until(LONG, "a took both jobs", || redis.pending_of("q", "a") == 2);
    // A peer reclaiming every lease/2 finds nothing idle: a renews the leases.
    let b = serve(&redis, "q", "b", &flags, bin!("jobsup-sleepy"), &[]);
    wait_until(LONG, "both jobs finished", || redis.xlen("q:results") == 2);
    let a = drain(a);
    let b = drain(b);
    assert_exactly_once(&redis, "q", &ids);
    for e in redis.entries("q:results") {
        assert_eq!(e.get("outcome"), "ok");
        assert_eq!(e.get("attempt"), "1", "never redelivered: {e:?}");
    }
    assert!(!a.stderr.contains("lost its lease ("), "{a}");
    assert!(!b.stderr.contains("stale completion of"), "{b}");
}

#[test]
fn three_serves_and_a_kill_9_leave_one_result_per_job() {
    let _turn = beside_others();
    let redis = RedisServer::start();
    let ids = ids(1500);
    enqueue(&redis, "q", "ndjson", &ndjson(&ids, |id| id.to_string()));
    let flags = ["-j", "2", "--lease", "1s"];
    let victim = serve(&redis, "q", "a", &flags, bin!("jobsup-echo"), &[]);
    let b = serve(&redis, "q", "b", &flags, bin!("jobsup-echo"), &[]);
    let c = serve(&redis, "q", "c", &flags, bin!("jobsup-echo"), &[]);
    wait_until(LONG, "a third of the jobs finished", || {
        redis.xlen("q:results") >= 500
    });
    // The whole process group: jobsup, its guard and its workers at once.
    let tree = kill_tree(victim.pid());
    assert!(!tree.is_empty());
    let _ = kill(Pid::from_raw(-victim.pid()), Signal::SIGKILL);
    drop(victim);
    wait_until(LONG, "every job has a result", || {
        results_by_id(&redis, "q").len() == ids.len()
    });
    wait_until(LONG, "nothing stays pending", || redis.pending("q") == 0);
    drain(b);
    drain(c);
    assert_exactly_once(&redis, "q", &ids);
}

#[test]
fn an_always_crashing_job_is_dead_lettered_after_exactly_max_attempts() {
    let _turn = beside_others();
    let redis = RedisServer::start();
    enqueue(
        &redis,
        "q",
        "ndjson",
        "{\"id\":\"bad\",\"payload\":\"x\"}\n{\"id\":\"good\",\"payload\":\"y\"}\n",
    );
    let script = "read -r line; if [ \"$line\" = x ]; then kill -9 $$; fi; echo \"$line\"";
    let s = serve(
        &redis,
        "q",
        "a",
        &[
            "--mode",
            "lines",
            "--max-attempts",
            "3",
            "--retry-delay",
            "10ms",
        ],
        "/bin/sh",
        &["-c", &format!("while :; do {script}; done")],
    );
    wait_until(LONG, "the bad job is dead-lettered", || {
        redis.xlen("q:dead") == 1
    });
    wait_until(LONG, "both have results", || redis.xlen("q:results") == 2);
    let run = drain(s);
    let dead = redis.entries("q:dead");
    assert_eq!(dead[0].get("id"), "bad");
    assert_eq!(dead[0].get("attempt"), "3", "{dead:?}\n{run}");
    assert_eq!(dead[0].get("outcome"), "crashed");
    let by = results_by_id(&redis, "q");
    assert_eq!(by["bad"].len(), 1);
    assert_eq!(by["bad"][0].get("attempt"), "3");
    assert_eq!(by["good"][0].get("outcome"), "ok");
    assert_eq!(redis.cmd::<u64>(&["ZCARD", "q:delayed"]), 0);
    assert_eq!(redis.pending("q"), 0);
    // `dead` lists it; `--replay` puts it back on the stream.
    let listed = jobsup()
        .args(["dead", "--redis", &redis.url(), "--stream", "q"])
        .run();
    assert_eq!(listed.code(), 0, "{listed}");
    let line: serde_json::Value = serde_json::from_str(listed.stdout_str().trim()).unwrap();
    assert_eq!(line["id"], "bad");
    assert_eq!(line["record"]["outcome"], "crashed");
    let replay = jobsup()
        .args(["dead", "--redis", &redis.url(), "--stream", "q", "--replay"])
        .run();
    assert_eq!(replay.code(), 0, "{replay}");
    assert_eq!(redis.xlen("q:dead"), 0);
    let back = redis.entries("q");
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].get("id"), "bad");
    assert_eq!(back[0].get("payload"), "x");
}

#[test]
fn sigterm_drains_finishing_running_jobs_and_releasing_the_rest() {
    let _turn = beside_others();
    let redis = RedisServer::start();
    let ids = ids(6);
    enqueue(&redis, "q", "ndjson", &ndjson(&ids, |_| "1000".into()));
    let a = serve(
        &redis,
        "q",
        "a",
        &["-j", "2", "--slow", "100ms"],
        bin!("jobsup-sleepy"),
        &[],
    );
    // Taken from Redis is not yet running (a take whose answer the supervisor reads after
    // the signal is released, not run): each job that runs says it is slow 100 ms in.
    wait_until(LONG, "a runs two jobs", || {
        redis.pending_of("q", "a") == 2 && a.stderr_so_far().matches("slow job:").count() == 2
    });
    let a = drain(a);
    // The two it ran finished; it took nothing more after the signal.
    assert_eq!(redis.xlen("q:results"), 2, "{a}");
    assert_eq!(redis.pending("q"), 0, "{a}");
    // A job cut off by --shutdown-timeout goes back on the stream, not to the results.
    enqueue(
        &redis,
        "q",
        "ndjson",
        "{\"id\":\"long\",\"payload\":\"60000\"}\n",
    );
    let b = serve(
        &redis,
        "q",
        "b",
        &["-j", "6", "--shutdown-timeout", "200ms"],
        bin!("jobsup-sleepy"),
        &[],
    );
    wait_until(LONG, "b finished the rest", || redis.xlen("q:results") == 6);
    wait_until(LONG, "b runs the long job", || {
        redis.pending_of("q", "b") == 1
    });
    let b = drain(b);
    // Released, not recorded (a take in progress may pick it up and release it again).
    assert!(!b.stderr.contains(" 0 entr(ies) released"), "{b}");
    assert_eq!(redis.pending("q"), 0);
    let left = redis.entries("q");
    assert_eq!(left.len(), 1, "the long job is back: {left:?}");
    assert_eq!(left[0].get("id"), "long");
    assert_exactly_once(&redis, "q", &ids);
}

#[test]
fn a_redis_restart_loses_no_job() {
    let _turn = beside_others();
    let mut redis = RedisServer::start_with(true);
    let ids = ids(400);
    enqueue(&redis, "q", "ndjson", &ndjson(&ids, |id| id.to_string()));
    let a = serve(
        &redis,
        "q",
        "a",
        &["-j", "2", "--lease", "2s"],
        bin!("jobsup-echo"),
        &[],
    );
    wait_until(LONG, "some jobs finished", || {
        redis.xlen("q:results") >= 100
    });
    redis.restart();
    wait_until(LONG, "every job has a result", || {
        results_by_id(&redis, "q").len() == ids.len()
    });
    wait_until(LONG, "nothing stays pending", || redis.pending("q") == 0);
    let a = drain(a);
    let by = results_by_id(&redis, "q");
    for id in &ids {
        assert!(by.contains_key(id), "job {id} was lost\n{a}");
    }
    assert!(
        a.stderr.contains("retrying with backoff") || a.stderr.contains("cannot renew"),
        "the outage was noticed and logged\n{a}"
    );
}

#[test]
fn bad_entries_and_bad_flags_get_clear_errors() {
    let _turn = beside_others();
    let redis = RedisServer::start();
    // Enqueue refuses what serve could not run, naming the line, and adds the rest.
    let run = enqueue(
        &redis,
        "q",
        "ndjson",
        "{\"id\":\"1\",\"payload\":\"a\"}\nnot json\n{\"id\":\"2\",\"payload\":\"b\",\"ttl\":\"soon\"}\n",
    );
    assert_eq!(run.code(), 1, "{run}");
    assert!(run.stderr.contains("line 2: not valid JSON"), "{run}");
    assert!(run.stderr.contains("line 3: bad \"ttl\""), "{run}");
    assert_eq!(redis.xlen("q"), 1);
    // An entry written by something else, malformed, still gets exactly one result.
    let _: String = redis.cmd(&["XADD", "q", "*", "id", "m", "colour", "red"]);
    let s = serve(&redis, "q", "a", &[], bin!("jobsup-echo"), &[]);
    wait_until(LONG, "both entries have results", || {
        redis.xlen("q:results") == 2
    });
    drain(s);
    let by = results_by_id(&redis, "q");
    assert_eq!(by["1"][0].get("outcome"), "ok");
    assert_eq!(by["m"][0].get("outcome"), "rejected");
    let error = by["m"][0].record()["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        error.contains("missing \"payload\"") || error.contains("unknown key"),
        "{error}"
    );
    assert_eq!(redis.pending("q"), 0);
    for (flags, says) in [
        (&["--retries", "2"][..], "--retries"),
        (&["--lease", "0s"][..], "--lease"),
        (&["--max-attempts", "0"][..], "--max-attempts"),
        (&["--output", "x"][..], "--output"),
    ] {
        let run = jobsup()
            .args(["serve", "--redis", &redis.url(), "--stream", "q"])
            .args(flags)
            .processor(bin!("jobsup-echo"), [] as [&str; 0])
            .run();
        assert_ne!(run.code(), 0, "{flags:?}\n{run}");
        assert!(run.stderr.contains(says), "{flags:?}\n{run}");
    }
    let run = jobsup()
        .args(["serve", "--redis", "redis://127.0.0.1:1", "--stream", "q"])
        .processor(bin!("jobsup-echo"), [] as [&str; 0])
        .run();
    assert_eq!(run.code(), 125, "{run}");
    assert!(run.stderr.contains("cannot use Redis"), "{run}");
}

/// `GET path` on `addr`, the whole response.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).expect("cannot connect to --metrics");
    write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn metrics_over_http_match_the_results_stream() {
    let _turn = beside_others();
    let redis = RedisServer::start();
    let ids = ids(20);
    enqueue(&redis, "q", "ndjson", &ndjson(&ids, |id| id.to_string()));
    let _: String = redis.cmd(&["XADD", "q", "*", "id", "m", "colour", "red"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let s = serve(
        &redis,
        "q",
        "a",
        &["-j", "2", "--metrics", &addr],
        bin!("jobsup-echo"),
        &[],
    );
    wait_until(LONG, "every job has a result", || {
        redis.xlen("q:results") == 21
    });
    let by = results_by_id(&redis, "q");
    let ok = by
        .values()
        .flatten()
        .filter(|e| e.get("outcome") == "ok")
        .count();
    let body = http_get(&addr, "/metrics");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains(&format!("jobsup_jobs_total{{outcome=\"ok\"}} {ok}\n")),
        "{body}"
    );
    assert!(
        body.contains("jobsup_jobs_total{outcome=\"rejected\"} 1\n"),
        "{body}"
    );
    assert!(
        body.contains("jobsup_stale_completions_total 0\n"),
        "{body}"
    );
    assert!(body.contains("jobsup_workers 2\n"), "{body}");
    assert!(
        body.contains(&format!("jobsup_job_duration_seconds_count {}\n", ok + 1)),
        "{body}"
    );
    assert!(http_get(&addr, "/other").starts_with("HTTP/1.1 404"));
    drain(s);
    // A port that cannot be had is an error at start.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let run = jobsup()
        .args([
            "serve",
            "--redis",
            &redis.url(),
            "--stream",
            "q",
            "--metrics",
            &busy,
        ])
        .processor(bin!("jobsup-echo"), [] as [&str; 0])
        .run();
    assert_eq!(run.code(), 125, "{run}");
    assert!(run.stderr.contains("--metrics"), "{run}");
}

#[test]
fn a_whole_worker_is_one_config_file() {
    let _turn = beside_others();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.toml");
    // The server in [defaults.source], the stream in the pool's own table: layered by key.
    std::fs::write(
        &config,
        format!(
            "[defaults.source]\nredis = \"{}\"\n\n[pools.echo]\ncommand = \"{}\"\nconcurrency = 2\n\n[pools.echo.source]\nstream = \"cq\"\nconsumer = \"from-file\"\nmax_attempts = 3\n",
            redis.url(),
            bin!("jobsup-echo")
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    // check shows the queue the pool consumes, layered.
    let check = jobsup().args(["check", config]).run();
    assert_eq!(check.code(), 0, "{check}");
    let want = format!(
        "  source: stream cq on {}, group jobsup, consumer from-file,",
        redis.url()
    );
    assert!(check.stdout_str().contains(&want), "{check}");
    let run = jobsup()
        .args(["enqueue", "--config", config, "--pool", "echo"])
        .stdin("a\nb\nc\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(redis.xlen("cq"), 3, "enqueue found the stream in the file");
    // No --redis, --stream, --consumer or processor on the command line.
    let s = jobsup()
        .args(["serve", "--config", config, "--pool", "echo"])
        .spawn();
    wait_until(LONG, "every job has a result", || {
        redis.xlen("cq:results") >= 3
    });
    drain(s);
    let ids: Vec<String> = results_by_id(&redis, "cq").into_keys().collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    for e in redis.entries("cq:results") {
        assert_eq!(e.get("outcome"), "ok");
    }
    let status = jobsup().args(["status", "--config", config]).run();
    assert_eq!(status.code(), 0, "{status}");
    let v: serde_json::Value = serde_json::from_str(status.stdout_str().trim()).unwrap();
    assert_eq!(v["stream"], "cq");
    assert_eq!(v["results"], 3);
    // A flag wins over the file.
    let status = jobsup()
        .args(["status", "--config", config, "--stream", "other"])
        .run();
    assert_eq!(status.code(), 0, "{status}");
    let v: serde_json::Value = serde_json::from_str(status.stdout_str().trim()).unwrap();
    assert_eq!(v["stream"], "other");
    assert_eq!(v["results"], 0);
    // The consumer's name came from the file too (it is the one that acked, so it is no
    // longer in the pending list; its results say nothing of it): ask the group.
    let consumers: redis::Value = redis.cmd(&["XINFO", "CONSUMERS", "cq", "jobsup"]);
    assert!(
        format!("{consumers:?}").contains("from-file"),
        "{consumers:?}"
    );
}

#[test]
fn a_config_file_source_with_a_mistake_is_refused_clearly() {
    let _turn = beside_others();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let unknown = write(
        "unknown.toml",
        "[pools.p]\ncommand = \"true\"\n[pools.p.source]\nstream = \"q\"\nqueue = \"q\"\n",
    );
    let nostream = write("nostream.toml", "[pools.p]\ncommand = \"true\"\n");
    for (config, says) in [(&unknown, "queue"), (&nostream, "no stream")] {
        for sub in ["serve", "status", "enqueue"] {
            let run = jobsup()
                .args([sub, "--config", config.as_str()])
                .stdin("")
                .run();
            assert_eq!(run.code(), 125, "{sub} {config}\n{run}");
            assert!(run.stderr.contains(says), "{sub} {config}\n{run}");
        }
    }
}

#[test]
fn an_entry_waiting_for_a_slow_starting_worker_keeps_its_lease() {
    let _turn = alone();
    let redis = RedisServer::start();
    let run = enqueue(
        &redis,
        "q",
        "ndjson",
        "{\"id\":\"w\",\"payload\":\"from-a\"}\n",
    );
    assert_eq!(run.code(), 0, "{run}");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("first-worker-gone");
    let marker_arg = marker.to_str().unwrap();
    // a's first worker takes the entry's place and dies before reading it; its next one
    // needs several leases to start, and the entry waits for it, taken by a.
    let lease = ["-j", "1", "--lease", "2s"];
    let a = serve(
        &redis,
        "q",
        "a",
        &lease,
        bin!("fx-restart"),
        &[marker_arg, "6000", bin!("jobsup-echo")],
    );
    wait_until(LONG, "a's first worker is gone", || marker.exists());
    // A peer that would reclaim the entry (and say so in its output) if a let it lapse.
    let b = serve(
        &redis,
        "q",
        "b",
        &[&lease[..], &["--mode", "lines"]].concat(),
        "sed",
        &["-u", "s/^/b:/"],
    );
    wait_until(LONG, "the job has a result", || {
        redis.xlen("q:results") >= 1
    });
    let a = drain(a);
    drain(b);
    let by = results_by_id(&redis, "q");
    assert_eq!(by["w"].len(), 1, "{:?}", by["w"]);
    assert_eq!(
        by["w"][0].record()["output"],
        "from-a",
        "the entry was taken over while it waited for a's worker\n{a}"
    );
    assert_eq!(redis.pending("q"), 0);
}

#[test]
fn scripts_flushed_from_redis_mid_run_are_loaded_again_and_nothing_is_lost() {
    let _turn = beside_others();
    let redis = RedisServer::start();
    let ids = ids(200);
    let run = enqueue(&redis, "q", "ndjson", &ndjson(&ids, |_| "5".into()));
    assert_eq!(run.code(), 0, "{run}");
    let s = serve(&redis, "q", "a", &["-j", "2"], bin!("jobsup-sleepy"), &[]);
    wait_until(LONG, "some jobs have results", || {
        redis.xlen("q:results") >= 20
    });
    // What an operator's SCRIPT FLUSH (or a failover to a replica without them) does.
    let _: String = redis.cmd(&["SCRIPT", "FLUSH"]);
    wait_until(LONG, "every job has a result", || {
        redis.xlen("q:results") >= ids.len() as u64
    });
    let run = drain(s);
    assert_exactly_once(&redis, "q", &ids);
    assert!(
        run.stderr.contains("0 stale completion(s)"),
        "a lost script is not a stale completion\n{run}"
    );
}
