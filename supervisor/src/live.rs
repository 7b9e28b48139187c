//! A started worker process with everything the worker task holds for it: the process,
//! its link, the drains of its output, and its private directory.
//!
//! Starting is where a processor that cannot serve is told apart: a native worker must
//! say hello (with the right protocol version) within the start timeout.

use std::ffi::OsString;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use jobsup_protocol::{negotiate, FromWorker};

use crate::drain::{self, Origin, Tail};
use crate::link::{Link, LinkError, Mode};
use crate::process::Process;
use crate::reaper::Exit;
use crate::sandbox::{SpawnError, Spawner};
use crate::worker::WorkerSettings;

/// Why a worker never became ready.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The process could not be started at all.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// It exited before saying hello.
    #[error("processor {program} exited during its handshake ({exit}); is it a jobsup processor? For other programs use --mode lines or --mode exec{stderr}")]
    ExitedEarly {
        /// The program.
        program: String,
        /// How it ended.
        exit: Exit,
        /// The last lines of its stderr, formatted for the message.
        stderr: String,
    },
    /// A line worker exited before it was given its first job.
    #[error("processor {program} exited before its first job ({exit}); a line processor must keep reading its stdin{stderr}")]
    ExitedIdle {
        /// The program.
        program: String,
        /// How it ended.
        exit: Exit,
        /// The last lines of its stderr, formatted for the message.
        stderr: String,
    },
    /// It did not say hello in time.
    #[error("processor {program} did not complete its handshake within {timeout:?}; is it a jobsup processor? For other programs use --mode lines or --mode exec{stderr}")]
    NoHello {
        /// The program.
        program: String,
        /// The start timeout.
        timeout: Duration,
        /// The last lines of its stderr, formatted for the message.
        stderr: String,
    },
    /// It said something other than a valid hello.
    #[error("processor {program} broke the handshake: {reason}")]
    Handshake {
        /// The program.
        program: String,
        /// What was wrong.
        reason: String,
    },
    /// The run stopped while it was starting, and it was ended: no failure of its own.
    #[error("processor {program} was stopped during its handshake")]
    Stopped {
        /// The program.
        program: String,
    },
}

/// A worker process as its task holds it.
pub struct Live {
    /// The process.
    pub process: Process,
    /// Its pipes.
    pub link: Link,
    /// Its stderr: the last lines, and the running job's part.
    pub tail: Tail,
    /// What the janitor drops when this is dropped, after the process is gone: its private
    /// directory, and the hold on its mount namespace (whose teardown then happens there,
    /// not in the worker's exit).
    leftovers: Option<(tempfile::TempDir, Option<std::os::fd::OwnedFd>)>,
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(leftovers) = self.leftovers.take() {
            crate::janitor::dispose(leftovers);
        }
    }
}

impl Live {
    /// Its private directory, for the next process of its exec slot, where
    /// `sandbox::reusable_workdir` finds it as it was made; the rest goes to the janitor.
    /// Only once the process has ended, and only where that ended its whole tree (its pid
    /// namespace's init, or a cgroup v2 that held it): nothing may write there after.
    pub fn into_workdir(
        mut self,
        user: Option<&crate::sandbox::Identity>,
    ) -> Option<tempfile::TempDir> {
        let (dir, namespace) = self.leftovers.take()?;
        if let Some(namespace) = namespace {
            crate::janitor::dispose(namespace);
        }
        if !self.process.tree_ended() {
            crate::janitor::dispose(dir);
            return None;
        }
        match crate::sandbox::reusable_workdir(dir, user) {
            Ok(dir) => Some(dir),
            Err(dir) => {
                crate::janitor::dispose(dir);
                None
            }
        }
    }

    /// Spawns worker `id` with `args` and wires up its pipes; its stdout (unless it carries
    /// results) and stderr are logged with `current_job`. A native worker must then
    /// complete its handshake.
    pub async fn start(
        id: u64,
        settings: &WorkerSettings,
        spawner: &Spawner,
        args: Vec<OsString>,
        current_job: &Arc<AtomicU64>,
        workdir: Option<tempfile::TempDir>,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<Live, StartError> {
        let mut spec = settings.spawn.clone();
        spec.worker_id = id;
        spec.args = args;
        let program = spec.program.display().to_string();
        let mut spawned = spawner.spawn(spec, workdir).await?;
        let pid = spawned.processor_pid;
        // An exec slot starts a process per job under the same id: its cgroups are reused.
        // The clone's own pidfd where the kernel made one; else `Process::new` opens one.
        let mut process = Process::new(
            spawned.exit,
            spawned.pidfd.take(),
            id,
            spawned.cgroup.take(),
            settings.mode == crate::link::Mode::Exec,
            spawned.born_in_cgroup,
        );
        // In a pid namespace of its own, the process jobsup started is the namespace's init.
        if spawned.behind_init {
            process.behind_init(pid);
        }
        let origin = Origin {
            pool: Arc::clone(&settings.pool),
            worker: id,
            pid,
            job: Arc::clone(current_job),
        };
        let tail = Tail::default();
        let link = match Link::new(
            settings.mode,
            &mut spawned.pipes,
            settings.codec,
            settings.max_output,
        ) {
            Ok(link) => link,
            Err(e) => {
                process.end(Duration::ZERO).await;
                return Err(StartError::Spawn(SpawnError::Other { program, source: e }));
            }
        };
        // Only native workers keep stdout free for logs; in the other modes it is the
        // results, and the link took it.
        if let Some(stdout) = spawned.pipes.stdout.take() {
            drain::spawn(stdout, "stdout", origin.clone(), None);
        }
        // A duplicate of the read end, for the tail to see what the drain has yet to read.
        if let Ok(dup) = spawned.stderr.try_clone() {
            tail.watch(dup);
        }
        drain::spawn(spawned.stderr, "stderr", origin, Some(tail.clone()));
        let mut live = Live {
            process,
            link,
            tail,
            leftovers: Some((spawned.workdir, spawned.mount_namespace)),
        };
        if settings.mode == Mode::Native {
            live.handshake(program, settings.start_timeout, stop)
                .await?;
        }
        tracing::debug!(worker = id, pid, "worker ready");
        Ok(live)
    }

    /// Waits for the hello, at most `timeout`, and ends the process if it does not come or
    /// `stop` resolves first (a run interrupted while its workers start need not wait for
    /// their start timeout).
    async fn handshake(
        &mut self,
        program: String,
        timeout: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), StartError> {
        enum Greeting {
            Frame(Result<Option<FromWorker>, LinkError>),
            Exited,
            Silent,
            Stopped,
        }
        let greeting = tokio::select! {
            biased;
            msg = self.link.next() => Greeting::Frame(msg),
            _ = self.process.exited() => Greeting::Exited,
            () = stop => Greeting::Stopped,
            _ = tokio::time::sleep(timeout) => Greeting::Silent,
        };
        let broke = |reason: String| StartError::Handshake {
            program: program.clone(),
            reason,
        };
        let closed_pipe = matches!(greeting, Greeting::Frame(Ok(None)));
        let failure = match greeting {
            Greeting::Frame(Ok(Some(FromWorker::Hello {
                min_version,
                max_version,
                ..
            }))) => match negotiate(min_version, max_version) {
                Ok(version) => {
                    // Only one version exists so far: nothing to switch on yet.
                    tracing::debug!(version, "protocol version agreed");
                    return Ok(());
                }
                Err(e) => Some(broke(e.to_string())),
            },
            Greeting::Frame(Ok(Some(other))) => Some(broke(format!(
                "expected a hello frame first, got {}",
                frame_name(&other)
            ))),
            Greeting::Frame(Err(LinkError::Protocol(e) | LinkError::Overflow(e))) => {
                Some(broke(format!("protocol error: {e}")))
            }
            // Ended like one that broke the handshake, but no failure of its own.
            Greeting::Stopped => Some(StartError::Stopped {
                program: program.clone(),
            }),
            // It closed its pipe, exited or said nothing: its exit and stderr tell the rest.
            Greeting::Frame(Ok(None)) | Greeting::Exited | Greeting::Silent => None,
        };
        // A process that closed its pipe has usually exited; give it a moment to say how.
        let grace = if failure.is_none() && closed_pipe {
            Duration::from_secs(1)
        } else {
            Duration::ZERO
        };
        let (exit, killed) = self.process.end(grace).await;
        if let Some(failure) = failure {
            return Err(failure);
        }
        let stderr = self.stderr_tail().await;
        Err(if killed {
            StartError::NoHello {
                program,
                timeout,
                stderr,
            }
        } else {
            StartError::ExitedEarly {
                program,
                exit,
                stderr,
            }
        })
    }

    /// The last lines of the process's stderr, formatted to end an error message.
    pub async fn stderr_tail(&self) -> String {
        match self.stderr_text().await {
            t if t.is_empty() => String::new(),
            t => format!("\nits stderr ends with:\n{t}"),
        }
    }

    /// The last lines of the process's stderr, as they are.
    pub async fn stderr_text(&self) -> String {
        // Let the stderr drain catch up with what the process wrote before it ended.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        self.tail.text()
    }
}

/// How a message is named in errors and logs.
pub fn frame_name(msg: &FromWorker) -> &'static str {
    match msg {
        FromWorker::Hello { .. } => "a hello",
        FromWorker::Heartbeat { .. } => "a heartbeat",
        FromWorker::Progress { .. } => "a progress report",
        FromWorker::Done { .. } => "a result",
        FromWorker::CleanupDone { .. } => "a cleanup acknowledgement",
    }
}
