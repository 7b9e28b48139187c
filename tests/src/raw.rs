//! Native processors driven directly over their two protocol pipes, without jobsup: the
//! baseline the benchmarks measure jobsup against.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use bytes::BytesMut;
use jobsup_protocol::{Codec, FromWorker, Job, JobResult, ToWorker, ENV_PROTOCOL};

/// What the drivers fail with.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `n` round trips (a `Job` frame out, its `Done` back) through one native processor
/// spawned directly with `argv`, which must echo its payload: the cost of the processes
/// and the protocol alone, the baseline of the benchmarks.
pub fn echo_round_trips(argv: &[OsString], n: usize, first_id: u64) -> Result<(), Error> {
    let (job_r, job_w) = pipe()?;
    let (res_r, res_w) = pipe()?;
    let (job_fd, res_fd) = (job_r.as_raw_fd(), res_w.as_raw_fd());
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", crate::PATH)
        .env(ENV_PROTOCOL, jobsup_protocol::PROTOCOL_VERSION.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls (fcntl, dup2, close) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Move both ends out of the way first: either may itself be fd 3 or 4.
            let j = libc::fcntl(job_fd, libc::F_DUPFD_CLOEXEC, 10);
            let r = libc::fcntl(res_fd, libc::F_DUPFD_CLOEXEC, 10);
            if j < 0 || r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 clears close-on-exec on the new descriptors.
            if libc::dup2(j, jobsup_protocol::JOB_FD) < 0
                || libc::dup2(r, jobsup_protocol::RESULT_FD) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(j);
            libc::close(r);
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    drop(job_r);
    drop(res_w);
    let codec = Codec::default();
    let mut to_worker = BufWriter::new(File::from(job_w));
    let mut from_worker = BufReader::new(File::from(res_r));
    let mut decoder = codec.decoder::<FromWorker>();
    let mut buf = BytesMut::new();
    let outcome = (|| -> Result<(), Error> {
        match decoder.read_frame(&mut from_worker, &mut buf)? {
            Some(FromWorker::Hello { .. }) => {}
            other => return Err(format!("expected a Hello, got {other:?}").into()),
        }
        for i in 0..n {
            let id = first_id + i as u64;
            let payload = format!("payload {id}").into_bytes();
            let job = ToWorker::Job(Job {
                id,
                key: id.to_string(),
                payload: payload.clone(),
                attempt: 1,
                ttl_ms: 30_000,
                kind: None,
            });
            codec.write_frame(&mut to_worker, &job)?;
            match decoder.read_frame(&mut from_worker, &mut buf)? {
                Some(FromWorker::Done {
                    job,
                    result: JobResult::Ok(out),
                }) if job == id && out == payload => {}
                other => return Err(format!("job {id}: unexpected answer {other:?}").into()),
            }
        }
        codec.write_frame(&mut to_worker, &ToWorker::Shutdown)?;
        Ok(())
    })();
    drop(to_worker);
    if outcome.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    outcome
}
