//! A real `redis-server` for the `jobsup serve` tests: started from `PATH` on a free port
//! in a directory of its own, stopped (and its files removed) when dropped.
//!
//! A machine without `redis-server` fails these tests with a message that says so: a
//! queue test that skipped itself silently would hide a broken `serve`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use tempfile::TempDir;

use crate::{wait_until, PATH, WAIT};

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    appendonly: bool,
}

/// One entry of a results (or dead) stream.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The stream id.
    pub entry: String,
    /// Its fields.
    pub fields: BTreeMap<String, String>,
}

impl Entry {
    /// A field, or "".
    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).map(String::as_str).unwrap_or("")
    }

    /// The `record` field as JSON.
    pub fn record(&self) -> Value {
        serde_json::from_str(self.get("record"))
            .unwrap_or_else(|e| panic!("entry {} has no JSON record: {e}", self.entry))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot find a free port")
}

impl RedisServer {
    /// Starts a server without persistence.
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// Starts a server; with `appendonly`, every write is fsynced to its append-only file
    /// before it is acknowledged, so that a restart keeps it.
    pub fn start_with(appendonly: bool) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("jobsup-redis-")
            .tempdir()
            .expect("cannot create the Redis directory");
        let mut server = RedisServer {
            child: None,
            dir,
            port: free_port(),
            appendonly,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let found = Command::new("sh")
            .args(["-c", "command -v redis-server"])
            .env("PATH", PATH)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "redis-server is not installed (not on {PATH}): the jobsup serve tests need a real Redis; install it (Debian: apt-get install redis-server; .ci/run does this)"
        );
        let mut cmd = Command::new("redis-server");
        cmd.env_clear()
            .env("PATH", PATH)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", ""])
            .args(["--protected-mode", "no"]);
        if self.appendonly {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start redis-server");
        self.child = Some(child);
        let url = self.url();
        wait_until(WAIT, "redis-server answers PING", || {
            redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
    }

    /// Stops the server (SIGTERM: with appendonly it keeps its data) and starts it again
    /// on the same port and directory.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    /// The URL to give `--redis`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url().as_str())
            .and_then(|c| c.get_connection())
            .expect("cannot connect to the test's redis-server")
    }

    /// Runs one command and returns its reply.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut self.conn())
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// Runs a command built elsewhere (jobsup's own scripts) and returns its reply.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        cmd.query(&mut self.conn())
            .unwrap_or_else(|e| panic!("redis: {e}"))
    }

    /// Runs a pipeline built elsewhere (loading jobsup's scripts) and returns its replies.
    pub fn pipeline<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> T {
        pipe.query(&mut self.conn())
            .unwrap_or_else(|e| panic!("redis: {e}"))
    }

    /// Every entry of a stream.
    pub fn entries(&self, key: &str) -> Vec<Entry> {
        let raw: Vec<(String, Vec<(String, String)>)> = self.cmd(&["XRANGE", key, "-", "+"]);
        raw.into_iter()
            .map(|(entry, fields)| Entry {
                entry,
                fields: fields.into_iter().collect(),
            })
            .collect()
    }

    /// A stream's length.
    pub fn xlen(&self, key: &str) -> u64 {
        self.cmd(&["XLEN", key])
    }

    /// How many entries of `stream` the group `jobsup` has delivered and not acked.
    pub fn pending(&self, stream: &str) -> u64 {
        let reply: redis::RedisResult<(u64, Value2, Value2, Value2)> = redis::cmd("XPENDING")
            .arg(stream)
            .arg("jobsup")
            .query(&mut self.conn());
        reply.map(|r| r.0).unwrap_or(0)
    }

    /// Pending entries of `stream` per consumer.
    pub fn pending_of(&self, stream: &str, consumer: &str) -> u64 {
        let reply: redis::RedisResult<Vec<redis::Value>> = redis::cmd("XPENDING")
            .arg(stream)
            .arg("jobsup")
            .arg("-")
            .arg("+")
            .arg(100_000)
            .arg(consumer)
            .query(&mut self.conn());
        reply.map(|r| r.len() as u64).unwrap_or(0)
    }
}

/// Any reply, ignored.
type Value2 = redis::Value;

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
