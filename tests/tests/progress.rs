//! The progress bar counts finished jobs, not input bytes, and knows the total when the
//! input is a regular file (`--input FILE`, or stdin redirected from one). It is drawn
//! only on a terminal: here jobsup's stderr is the slave side of a real pty, and the test
//! reads what was drawn from the master side.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use jobsup_tests::{jobsup, lines, Jobsup, Run, WAIT};

/// A pty: the master to read, and the slave to give jobsup as its stderr.
fn pty() -> (std::fs::File, std::fs::File) {
    let (mut master, mut slave) = (-1, -1);
    // Wide enough that the bar's text is never cut short.
    let size = libc::winsize {
        ws_row: 50,
        ws_col: 200,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two fds into the given places and reads `size`.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just opened and are owned by nobody else.
    unsafe {
        (
            OwnedFd::from_raw_fd(master).into(),
            OwnedFd::from_raw_fd(slave).into(),
        )
    }
}

/// What jobsup draws on its terminal, read by a thread as it comes.
struct Screen {
    text: Arc<Mutex<Vec<u8>>>,
}

impl Screen {
    /// Gives `cmd` the slave side of a new pty as its stderr (and a terminal type: the bar
    /// library draws nothing without one).
    fn attach(cmd: Jobsup) -> (Jobsup, Screen) {
        let (mut master, slave) = pty();
        let text = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&text);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            // EIO once jobsup, the last holder of the slave, has exited.
            while let Ok(n @ 1..) = master.read(&mut chunk) {
                sink.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        (cmd.env("TERM", "xterm").stderr_to(slave), Screen { text })
    }

    fn so_far(&self) -> String {
        String::from_utf8_lossy(&self.text.lock().unwrap()).into_owned()
    }

    /// Waits until the terminal shows `what`.
    fn wait_for(&self, what: &str) {
        let until = std::time::Instant::now() + WAIT;
        while !self.so_far().contains(what) {
            assert!(
                std::time::Instant::now() < until,
                "the terminal never showed {what:?}; it showed:\n{:?}",
                self.so_far()
            );
            // Polling what a thread collects: there is nothing to block on.
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// Exec jobs whose payload is a number: those up to `quick` finish at once, the others
/// wait until the file `gate` exists.
fn gated(cmd: Jobsup, quick: u32) -> (Jobsup, std::path::PathBuf) {
    let gate = cmd.dir().join("gate");
    let script = format!(
        r#"[ "$0" -le {quick} ] || while [ ! -e {} ]; do sleep 0.01; done"#,
        gate.display()
    );
    let cmd = cmd
        .args(["--mode", "exec"])
        .processor("sh", ["-c", &script, "{}"]);
    (cmd, gate)
}

fn finish(run: Run, jobs: usize) {
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.records().len(), jobs, "{run}");
}

#[test]
fn with_an_input_file_the_bar_counts_jobs_out_of_the_total() {
    let cmd = jobsup!().args(["-j", "20", "--input", "jobs.txt"]);
    cmd.write_file("jobs.txt", lines(20, |i| i.to_string()));
    let (cmd, gate) = gated(cmd, 10);
    let (cmd, screen) = Screen::attach(cmd);
    let bg = cmd.spawn();
    // All 20 lines are read (20 workers), half the jobs are done: by bytes the bar would
    // be full; by jobs it is half way.
    screen.wait_for("10/20 jobs done  50%");
    assert!(
        !screen.so_far().contains("100%"),
        "full with half the jobs still running:\n{}",
        screen.so_far()
    );
    std::fs::write(&gate, "").unwrap();
    let run = bg.wait();
    finish(run, 20);
    // The bar's last draw, before it makes room for the summary, is the final count.
    screen.wait_for("20/20 jobs done 100%");
}

#[test]
fn with_stdin_from_a_file_the_total_is_known_too() {
    let cmd = jobsup!().args(["-j", "2"]);
    let input = cmd.write_file("jobs.txt", lines(6, |i| i.to_string()));
    let (cmd, gate) = gated(cmd, 2);
    let (cmd, screen) = Screen::attach(cmd);
    let bg = cmd.stdin_from(std::fs::File::open(&input).unwrap()).spawn();
    screen.wait_for("2/6 jobs done  33%");
    std::fs::write(&gate, "").unwrap();
    finish(bg.wait(), 6);
    screen.wait_for("6/6 jobs done 100%");
}

#[test]
fn with_a_pipe_the_count_of_jobs_done_is_shown_without_a_total() {
    let (cmd, gate) = gated(jobsup!().args(["-j", "4"]), 3);
    let (cmd, screen) = Screen::attach(cmd);
    let bg = cmd.stdin(lines(4, |i| i.to_string())).spawn();
    screen.wait_for("3 jobs done: ok 3");
    assert!(
        !screen.so_far().contains("/4 jobs"),
        "a percentage of an unknown total:\n{}",
        screen.so_far()
    );
    std::fs::write(&gate, "").unwrap();
    finish(bg.wait(), 4);
    screen.wait_for("4 jobs done: ok 4");
}
