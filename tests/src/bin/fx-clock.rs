//! Benchmark helper: runs its arguments as a command, waits for it, and prints the wall
//! time it took in microseconds, as decimal text on one line (one write, so that lines of
//! concurrent runs do not mix).

use std::io::Write;
use std::process::Command;
use std::time::Instant;

fn main() {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: fx-clock PROGRAM [ARG...]");
        std::process::exit(2);
    };
    let start = Instant::now();
    let status = Command::new(program).args(args).status();
    let micros = start.elapsed().as_micros();
    if let Err(e) = status {
        eprintln!("fx-clock: {e}");
        std::process::exit(127);
    }
    let _ = std::io::stdout().write_all(format!("{micros}\n").as_bytes());
}
