//! The runtime's entry point: set up the link and the threads, then run handlers.

use std::fmt::Display;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread;

use jobsup_protocol::{FromWorker, JobResult, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};

use crate::control::{Assignment, Control, Controller, Event, Hook};
use crate::exit::Ending;
use crate::outbox::Outbox;
use crate::panic::panic_message;
use crate::{inbox, signals, startup, Context, Job};

/// A jobsup worker, configured before it starts serving.
///
/// [`serve`](crate::serve) is `Runtime::new().serve(..)`; build a `Runtime` to register a
/// cleanup hook.
#[derive(Default)]
pub struct Runtime {
    hook: Option<Hook>,
}

impl Runtime {
    /// A runtime with no cleanup hook.
    pub fn new() -> Self {
        Runtime::default()
    }

    /// Hook run on the reader thread as soon as a cleanup request arrives (or on the signal
    /// thread, for SIGTERM), while the handler may still be running.
    ///
    /// The hook runs while the handler may still be running on the main thread, so it can
    /// release what the handler holds (kill a child process, remove a temporary file)
    /// even when the handler never looks at
    /// [`Context::cleanup_requested`]. Once the hook returns the runtime acknowledges the
    /// cleanup and exits with code 124 without waiting for the handler. A panic in the
    /// hook is reported on stderr and ends the cleanup the same way.
    ///
    /// Without a hook, the runtime sets the cleanup flag and waits for the handler to
    /// return before it exits with code 124.
    pub fn on_cleanup(mut self, hook: impl FnOnce(&Job) + Send + 'static) -> Self {
        self.hook = Some(Box::new(hook));
        self
    }

    /// Serves jobs from jobsup with `handler` until jobsup says stop; never returns.
    ///
    /// The handler runs on the calling thread, one job at a time. `Ok(bytes)` is the
    /// job's result; `Err(e)` fails the job with `e`'s `Display` text; a panic fails the
    /// job with the panic's message and the worker goes on serving.
    ///
    /// Run outside jobsup, it prints how to run the program and exits with code 2.
    pub fn serve<F, E>(self, handler: F) -> !
    where
        F: FnMut(&Job, &Context) -> Result<Vec<u8>, E>,
        E: Display,
    {
        let link = match startup::connect() {
            Ok(link) => link,
            Err(e) => Ending::NotStarted(e).exit(),
        };
        let outbox = Arc::new(Outbox::new(link.replies, link.codec));
        // The job channel lives as long as the process: the handler's thread takes a closed
        // channel for a broken state machine.
        let (jobs_tx, jobs) = mpsc::channel();
        let control = Control::new(self.hook, Arc::clone(&outbox), jobs_tx);
        let controller = Controller::new(control, Arc::clone(&outbox));

        // Before the hello: from then on jobsup may send SIGTERM, and it must not kill the
        // worker outright.
        if let Err(e) = signals::forward_sigterm(controller.clone()) {
            outbox.finish(Ending::Failed(format!("cannot watch for SIGTERM: {e}")));
        }
        let hello = FromWorker::Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            pid: std::process::id(),
        };
        if outbox.send(&hello).is_err() {
            outbox.finish(Ending::LinkLost);
        }

        let reader = controller.clone();
        let spawned = thread::Builder::new()
            .name("jobsup-reader".into())
            .spawn(move || inbox::pump(link.requests, link.codec, reader));
        if let Err(e) = spawned {
            outbox.finish(Ending::Failed(format!("cannot start a thread: {e}")));
        }

        serve_jobs(handler, &jobs, &controller, &outbox)
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cleanup_hook", &self.hook.is_some())
            .finish()
    }
}

/// The handler's thread: runs each job it is handed and reports the result to the state
/// machine, which decides when the process ends.
fn serve_jobs<F, E>(
    mut handler: F,
    jobs: &Receiver<Assignment>,
    events: &Controller,
    outbox: &Arc<Outbox>,
) -> !
where
    F: FnMut(&Job, &Context) -> Result<Vec<u8>, E>,
    E: Display,
{
    while let Ok(Assignment {
        job,
        deadline,
        cleanup,
    }) = jobs.recv()
    {
        let ctx = Context::new(job.id(), deadline, cleanup, Arc::clone(outbox));
        let result = run_handler(&mut handler, &job, &ctx);
        let finished = Event::Finished {
            job: job.id(),
            result,
        };
        events.send(finished);
    }
    outbox.finish(Ending::Failed("the job channel closed".into()))
}

fn run_handler<F, E>(handler: &mut F, job: &Job, ctx: &Context) -> JobResult
where
    F: FnMut(&Job, &Context) -> Result<Vec<u8>, E>,
    E: Display,
{
    // `to_string` is inside the guard too: a `Display` impl can panic as well.
    let outcome = catch_unwind(AssertUnwindSafe(|| match handler(job, ctx) {
        Ok(bytes) => JobResult::Ok(bytes),
        Err(e) => JobResult::Failed(e.to_string()),
    }));
    outcome.unwrap_or_else(|payload| {
        JobResult::Failed(format!("handler panicked: {}", panic_message(&*payload)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    use jobsup_protocol::Codec;

    fn fixture() -> (Job, Context) {
        let job = Job::new(jobsup_protocol::Job {
            id: 1,
            key: "k".into(),
            payload: b"in".to_vec(),
            attempt: 1,
            ttl_ms: 10,
            kind: None,
        });
        let sink = File::options().write(true).open("/dev/null").unwrap();
        let outbox = Arc::new(Outbox::new(sink, Codec::default()));
        let ctx = Context::new(1, Instant::now(), Arc::new(AtomicBool::new(false)), outbox);
        (job, ctx)
    }

    #[test]
    fn handler_outcomes_become_results() {
        let (job, ctx) = fixture();
        let mut ok = |j: &Job, _: &Context| Ok::<_, String>(j.payload().to_vec());
        assert_eq!(
            run_handler(&mut ok, &job, &ctx),
            JobResult::Ok(b"in".to_vec())
        );
        let mut fail = |_: &Job, _: &Context| Err::<Vec<u8>, _>("no disk");
        assert_eq!(
            run_handler(&mut fail, &job, &ctx),
            JobResult::Failed("no disk".into())
        );
        let mut boom = |_: &Job, _: &Context| -> Result<Vec<u8>, String> { panic!("boom {}", 1) };
        assert_eq!(
            run_handler(&mut boom, &job, &ctx),
            JobResult::Failed("handler panicked: boom 1".into())
        );
    }
}
