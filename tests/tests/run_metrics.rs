//! `jobsup run --metrics ADDR`: Prometheus text on `http://ADDR/metrics` while the run
//! goes on, counting jobs by outcome exactly as the records written so far say; an address
//! that cannot be bound is a usage error (125) before any job.

use std::io::{Read, Write};

use jobsup_tests::{jobsup, wait_until, WAIT};

fn http_get(addr: &str, path: &str) -> String {
    let mut conn = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    out
}

/// The address jobsup says it serves metrics on (it was given port 0).
fn metrics_addr(stderr: &str) -> Option<String> {
    let at = stderr.find("metrics on http://")? + "metrics on http://".len();
    let rest = &stderr[at..];
    Some(rest[..rest.find("/metrics")?].to_string())
}

#[test]
fn metrics_during_a_run_count_the_records_written_so_far() {
    let j = jobsup!();
    let gate = j.dir().join("gate");
    let made = std::process::Command::new("mkfifo").arg(&gate).status();
    assert!(made.is_ok_and(|s| s.success()), "cannot make a fifo");
    // `held` waits until the test opens the fifo: the run is still going while it scrapes.
    let script = r#"case "$1" in
        held) read x < gate; echo released ;;
        fail*) exit 1 ;;
        *) echo "$1" ;;
    esac"#;
    let bg = j
        .args(["--mode", "exec", "-j", "2", "--metrics", "127.0.0.1:0"])
        .processor("sh", ["-c", script, "sh", "{}"])
        .stdin("held\nok1\nfail1\nok2\n")
        .spawn();
    wait_until(WAIT, "all but the held job have their records", || {
        bg.records_so_far().len() == 3
    });
    let addr = metrics_addr(&bg.stderr_so_far())
        .unwrap_or_else(|| panic!("no 'metrics on' line\n{}", bg.stderr_so_far()));
    let body = http_get(&addr, "/metrics");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let records = bg.records_so_far();
    for outcome in ["ok", "failed"] {
        let n = records.iter().filter(|r| r.outcome() == outcome).count();
        assert!(
            body.contains(&format!("jobsup_jobs_total{{outcome=\"{outcome}\"}} {n}\n")),
            "{outcome}: {n}\n{body}"
        );
    }
    assert!(
        !body.contains("lease"),
        "serve's metrics are not a run's\n{body}"
    );
    assert!(
        body.contains("jobsup_job_duration_seconds_count 3\n"),
        "{body}"
    );
    // CPU time so far: jobsup's own, and its three finished jobs' processes'.
    for who in ["supervisor", "processes"] {
        let prefix = format!("jobsup_cpu_seconds{{who=\"{who}\"}} ");
        let value = body
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {prefix}\n{body}"));
        assert!(value > 0.0, "{who}: {value}\n{body}");
    }
    assert_eq!(
        http_get(&addr, "/other").lines().next(),
        Some("HTTP/1.1 404 Not Found")
    );
    // Release the held job: the run ends with every job recorded.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&gate)
        .and_then(|mut f| f.write_all(b"go\n"))
        .expect("open the gate");
    let run = bg.wait();
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.records().len(), 4, "{run}");
    // Served only while jobsup runs.
    assert!(std::net::TcpStream::connect(&addr).is_err(), "{run}");
}

#[test]
fn an_address_that_cannot_be_bound_is_a_usage_error_before_any_job() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let j = jobsup!();
    let marker = j.dir().join("ran");
    let run = j
        .args(["--mode", "exec", "--metrics", &addr])
        .processor("sh", ["-c", &format!("echo > {}", marker.display())])
        .stdin("x\n")
        .run();
    assert_eq!(run.code(), 125, "{run}");
    assert!(run.stderr.contains(&format!("--metrics {addr}")), "{run}");
    assert!(run.records().is_empty(), "{run}");
    assert!(!marker.exists(), "a job ran\n{run}");
    drop(taken);
}
