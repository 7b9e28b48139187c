//! Every transition of [`JobRun`] and the races between them, with made-up instants: no
//! process, no sleeping.

use std::time::Duration;

use jobsup_protocol::{FromWorker, JobResult};
use proptest::prelude::*;
use tokio::time::Instant;

use super::*;

const JOB: u64 = 7;
const PREVIOUS: u64 = 6;

fn rules() -> Rules {
    Rules {
        ttl: Some(Duration::from_secs(10)),
        cleanup: Duration::from_secs(2),
        idle: None,
        slow: None,
        ends_by_exit: false,
        start_grace: None,
        cpu: None,
    }
}

/// A clock for one test: `at(ms)` is that many milliseconds after the hand-off.
struct Clock(Instant);

impl Clock {
    fn at(&self, ms: u64) -> Instant {
        self.0 + Duration::from_millis(ms)
    }
}

fn start(rules: Rules) -> (JobRun, Clock) {
    let t0 = Instant::now();
    (JobRun::new(rules, JOB, Some(PREVIOUS), t0), Clock(t0))
}

fn done(job: u64, out: &str) -> Input {
    Input::Said(FromWorker::Done {
        job,
        result: JobResult::Ok(out.into()),
    })
}

fn ack(job: u64) -> Input {
    Input::Said(FromWorker::CleanupDone { job })
}

fn beat(job: u64) -> Input {
    Input::Said(FromWorker::Heartbeat { job })
}

fn exited(code: i32) -> Input {
    Input::Exited {
        exit: Exit::Code(code),
        unseen: false,
    }
}

fn ok(out: &str) -> JobResult {
    JobResult::Ok(out.into())
}

/// The verdict and trigger of an act that must be a finish.
fn finished(act: Act) -> (Verdict, Trigger) {
    match act {
        Act::Finish { verdict, trigger } => (verdict, trigger),
        other => panic!("expected a finish, got {other:?}"),
    }
}

fn is_wait(act: &Act) -> bool {
    matches!(act, Act::Wait)
}

#[test]
fn a_result_before_the_ttl_is_returned() {
    let (mut run, c) = start(rules());
    assert_eq!(run.next_timer(), Some(c.at(10_000)));
    let (v, t) = finished(run.on(done(JOB, "x"), c.at(9_999)));
    assert_eq!((v, t), (Verdict::Returned(ok("x")), Trigger::None));
    assert_eq!(
        run.next_timer(),
        None,
        "nothing is left to time once it is over"
    );
}

#[test]
fn a_result_taken_in_at_the_ttl_before_the_tick_counts() {
    // The shell feeds what was already in the pipe before the tick that passes the ttl.
    let (mut run, c) = start(rules());
    let (v, _) = finished(run.on(done(JOB, "x"), c.at(10_000)));
    assert_eq!(v, Verdict::Returned(ok("x")));
}

#[test]
fn a_result_after_the_tick_at_the_ttl_is_kept_but_the_job_timed_out() {
    let (mut run, c) = start(rules());
    match run.on(Input::Tick, c.at(10_000)) {
        Act::RequestCleanup { grace } => assert_eq!(grace, Duration::from_secs(2)),
        other => panic!("{other:?}"),
    }
    assert!(run.cleaning_up());
    assert_eq!(run.next_timer(), Some(c.at(12_000)));
    assert!(is_wait(&run.on(done(JOB, "late"), c.at(10_001))));
    let (v, t) = finished(run.on(ack(JOB), c.at(11_000)));
    assert_eq!(v, Verdict::TimedOut(Some(ok("late"))));
    assert_eq!(t, Trigger::Ttl);
}

#[test]
fn a_tick_before_a_deadline_does_nothing() {
    let (mut run, c) = start(rules());
    assert!(is_wait(&run.on(Input::Tick, c.at(9_999))));
    assert!(!run.cleaning_up());
}

#[test]
fn the_grace_is_counted_from_the_deadline_not_from_a_late_tick() {
    let (mut run, c) = start(rules());
    match run.on(Input::Tick, c.at(10_500)) {
        Act::RequestCleanup { grace } => assert_eq!(grace, Duration::from_millis(1_500)),
        other => panic!("{other:?}"),
    }
    assert_eq!(run.next_timer(), Some(c.at(12_000)));
}

#[test]
fn an_exit_during_cleanup_is_a_timeout() {
    let (mut run, c) = start(rules());
    run.on(Input::Tick, c.at(10_000));
    let (v, t) = finished(run.on(exited(0), c.at(10_100)));
    assert_eq!((v, t), (Verdict::TimedOut(None), Trigger::Ttl));
}

#[test]
fn no_acknowledgement_by_the_hard_deadline_is_a_kill() {
    let (mut run, c) = start(rules());
    run.on(Input::Tick, c.at(10_000));
    assert!(is_wait(&run.on(Input::Tick, c.at(11_999))));
    run.on(done(JOB, "late"), c.at(11_999));
    let (v, t) = finished(run.on(Input::Tick, c.at(12_000)));
    assert_eq!((v, t), (Verdict::Killed(Some(ok("late"))), Trigger::Ttl));
}

#[test]
fn a_ttl_of_zero_is_no_deadline() {
    let (mut run, c) = start(Rules {
        ttl: None,
        ..rules()
    });
    assert_eq!(run.next_timer(), None);
    assert!(is_wait(&run.on(Input::Tick, c.at(u32::MAX as u64))));
    let (v, _) = finished(run.on(done(JOB, "x"), c.at(u32::MAX as u64)));
    assert_eq!(v, Verdict::Returned(ok("x")));
}

#[test]
fn a_cleanup_of_zero_kills_at_the_ttl_without_asking() {
    let (mut run, c) = start(Rules {
        cleanup: Duration::ZERO,
        ..rules()
    });
    let (v, t) = finished(run.on(Input::Tick, c.at(10_000)));
    assert_eq!((v, t), (Verdict::Killed(None), Trigger::Ttl));
}

#[test]
fn a_heartbeat_just_before_the_idle_timeout_moves_it() {
    let (mut run, c) = start(Rules {
        idle: Some(Duration::from_secs(1)),
        ..rules()
    });
    assert_eq!(run.next_timer(), Some(c.at(1_000)));
    assert!(is_wait(&run.on(beat(JOB), c.at(999))));
    assert!(is_wait(&run.on(Input::Tick, c.at(1_000))));
    assert_eq!(run.next_timer(), Some(c.at(1_999)));
    assert!(matches!(
        run.on(Input::Tick, c.at(1_999)),
        Act::RequestCleanup { .. }
    ));
    let (_, t) = finished(run.on(ack(JOB), c.at(2_000)));
    assert_eq!(t, Trigger::Idle);
}

#[test]
fn progress_is_a_sign_of_life_too() {
    let (mut run, c) = start(Rules {
        idle: Some(Duration::from_secs(1)),
        ..rules()
    });
    let progress = Input::Said(FromWorker::Progress {
        job: JOB,
        done: 1,
        total: None,
        message: None,
    });
    run.on(progress, c.at(900));
    assert_eq!(run.next_timer(), Some(c.at(1_900)));
}

#[test]
fn the_ttl_still_holds_with_heartbeats() {
    let (mut run, c) = start(Rules {
        idle: Some(Duration::from_secs(3)),
        ..rules()
    });
    for ms in (0..10_000).step_by(1_000) {
        run.on(beat(JOB), c.at(ms));
    }
    assert_eq!(run.next_timer(), Some(c.at(10_000)));
    assert!(matches!(
        run.on(Input::Tick, c.at(10_000)),
        Act::RequestCleanup { .. }
    ));
    let (_, t) = finished(run.on(Input::Tick, c.at(12_000)));
    assert_eq!(t, Trigger::Ttl);
}

#[test]
fn a_message_about_the_previous_job_is_stale_not_blamed() {
    let (mut run, c) = start(rules());
    assert!(matches!(
        run.on(done(PREVIOUS, "dup"), c.at(1)),
        Act::IgnoreStale(_)
    ));
    assert!(matches!(
        run.on(beat(PREVIOUS), c.at(2)),
        Act::IgnoreStale(_)
    ));
    let (v, _) = finished(run.on(done(JOB, "x"), c.at(3)));
    assert_eq!(v, Verdict::Returned(ok("x")));
}

#[test]
fn protocol_errors_crash_the_job() {
    let cases: Vec<(Input, &str)> = vec![
        (done(99, "x"), "result for job 99, but job 7 is running"),
        (beat(99), "heartbeat for job 99"),
        (ack(99), "cleanup acknowledgement for job 99"),
        (ack(JOB), "cleanup acknowledged before any request"),
        (
            Input::Said(FromWorker::Hello {
                min_version: 2,
                max_version: 2,
                pid: 1,
            }),
            "hello in the middle of a job",
        ),
        (
            Input::Broke(LinkError::Protocol("garbage".into())),
            "garbage",
        ),
    ];
    for (input, want) in cases {
        let (mut run, c) = start(rules());
        match finished(run.on(input, c.at(1))) {
            (Verdict::Crashed(Crash::Protocol(what)), Trigger::None) => {
                assert!(what.contains(want), "{what:?} should contain {want:?}")
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn too_much_output_fails_the_job() {
    let (mut run, c) = start(rules());
    let (v, _) = finished(run.on(Input::Broke(LinkError::Overflow("big".into())), c.at(1)));
    assert_eq!(v, Verdict::Overflow("big".into()));
}

#[test]
fn dying_mid_job_is_a_crash_unless_the_job_was_never_taken() {
    let (mut run, c) = start(rules());
    assert_eq!(
        finished(run.on(exited(3), c.at(1))).0,
        Verdict::Crashed(Crash::Died)
    );
    let (mut run, c) = start(rules());
    let unseen = Input::Exited {
        exit: Exit::Code(0),
        unseen: true,
    };
    assert_eq!(finished(run.on(unseen, c.at(1))).0, Verdict::Unseen);
}

#[test]
fn a_closed_result_pipe_mid_job_is_a_crash_but_not_during_cleanup() {
    let (mut run, c) = start(rules());
    let (v, _) = finished(run.on(Input::Closed { unseen: false }, c.at(1)));
    assert_eq!(v, Verdict::Crashed(Crash::PipeClosed));

    let (mut run, c) = start(rules());
    let (v, _) = finished(run.on(Input::Closed { unseen: true }, c.at(1)));
    assert_eq!(v, Verdict::Unseen);

    let (mut run, c) = start(rules());
    run.on(Input::Tick, c.at(10_000));
    assert!(is_wait(
        &run.on(Input::Closed { unseen: false }, c.at(10_001))
    ));
    assert_eq!(
        finished(run.on(exited(0), c.at(10_002))).0,
        Verdict::TimedOut(None)
    );
}

#[test]
fn an_exec_job_ends_by_exiting() {
    let exec = Rules {
        ends_by_exit: true,
        ..rules()
    };
    let (mut run, c) = start(exec);
    assert!(is_wait(&run.on(Input::Closed { unseen: false }, c.at(1))));
    let (v, _) = finished(run.on(exited(2), c.at(2)));
    assert_eq!(v, Verdict::Exited(Exit::Code(2)));
    // After its cleanup request, exiting is cleaning up, whatever the code.
    let (mut run, c) = start(exec);
    run.on(Input::Tick, c.at(10_000));
    assert_eq!(
        finished(run.on(exited(143), c.at(10_001))).0,
        Verdict::TimedOut(None)
    );
}

#[test]
fn stopping_the_run_asks_for_cleanup_then_kills_after_the_grace() {
    let (mut run, c) = start(rules());
    let stop = |grace: u64| Input::Stop {
        reason: "interrupted".into(),
        grace: Duration::from_millis(grace),
    };
    match run.on(stop(500), c.at(1_000)) {
        Act::RequestCleanup { grace } => assert_eq!(grace, Duration::from_millis(500)),
        other => panic!("{other:?}"),
    }
    assert_eq!(run.next_timer(), Some(c.at(1_500)));
    // A second stop with a later kill changes nothing; with an earlier one, it wins.
    assert!(is_wait(&run.on(stop(5_000), c.at(1_100))));
    assert_eq!(run.next_timer(), Some(c.at(1_500)));
    assert!(is_wait(&run.on(stop(0), c.at(1_200))));
    assert_eq!(run.next_timer(), Some(c.at(1_200)));
    let (v, t) = finished(run.on(Input::Tick, c.at(1_200)));
    assert_eq!(v, Verdict::Killed(None));
    assert_eq!(t, Trigger::Stop("interrupted".into()));
}

#[test]
fn a_stop_with_no_grace_kills_at_once() {
    let (mut run, c) = start(rules());
    let stop = Input::Stop {
        reason: "cancelled".into(),
        grace: Duration::ZERO,
    };
    let (v, t) = finished(run.on(stop, c.at(1)));
    assert_eq!(
        (v, t),
        (Verdict::Killed(None), Trigger::Stop("cancelled".into()))
    );
}

#[test]
fn a_stop_during_the_ttl_cleanup_keeps_the_ttl_when_it_kills_no_earlier() {
    let (mut run, c) = start(rules());
    run.on(Input::Tick, c.at(10_000));
    let stop = Input::Stop {
        reason: "interrupted".into(),
        grace: Duration::from_secs(60),
    };
    assert!(is_wait(&run.on(stop, c.at(10_001))));
    let (_, t) = finished(run.on(Input::Tick, c.at(12_000)));
    assert_eq!(t, Trigger::Ttl);
}

#[test]
fn the_slow_mark_warns_once_and_deadlines_still_follow() {
    let (mut run, c) = start(Rules {
        slow: Some(Duration::from_secs(10)),
        ..rules()
    });
    assert_eq!(run.next_timer(), Some(c.at(10_000)));
    // Both are due at once: the warning first, then (on the next tick) the cleanup.
    assert!(matches!(
        run.on(Input::Tick, c.at(10_000)),
        Act::WarnSlow { after } if after == Duration::from_secs(10)
    ));
    assert!(matches!(
        run.on(Input::Tick, c.at(10_000)),
        Act::RequestCleanup { .. }
    ));
    assert!(is_wait(&run.on(Input::Tick, c.at(10_001))));
}

#[test]
fn a_line_worker_s_first_clock_starts_when_it_takes_the_job() {
    let (mut run, c) = start(Rules {
        ttl: Some(Duration::from_millis(300)),
        start_grace: Some(Duration::from_secs(10)),
        ..rules()
    });
    assert!(run.awaits_take());
    assert_eq!(run.next_timer(), Some(c.at(10_000)));
    // Start-up took 350 ms, more than the ttl: that is not the job's time.
    assert!(is_wait(&run.on(Input::Tick, c.at(350))));
    assert!(is_wait(&run.on(Input::Taken, c.at(350))));
    assert!(!run.awaits_take());
    assert_eq!(run.started(), c.at(350));
    assert_eq!(run.next_timer(), Some(c.at(650)));
    let (v, _) = finished(run.on(done(JOB, "x"), c.at(600)));
    assert_eq!(v, Verdict::Returned(ok("x")));
}

#[test]
fn the_start_grace_is_bounded() {
    let (mut run, c) = start(Rules {
        ttl: Some(Duration::from_millis(300)),
        start_grace: Some(Duration::from_secs(1)),
        ..rules()
    });
    // The worker never takes the job: its clock starts when the grace ends.
    assert!(is_wait(&run.on(Input::Tick, c.at(1_000))));
    assert_eq!(run.started(), c.at(1_000));
    assert!(matches!(
        run.on(Input::Tick, c.at(1_300)),
        Act::RequestCleanup { .. }
    ));
}

#[test]
fn an_answer_during_the_grace_starts_the_clock_and_counts() {
    let (mut run, c) = start(Rules {
        start_grace: Some(Duration::from_secs(1)),
        ..rules()
    });
    let (v, _) = finished(run.on(done(JOB, "x"), c.at(5)));
    assert_eq!(v, Verdict::Returned(ok("x")));
}

#[test]
fn nothing_happens_after_the_verdict() {
    let (mut run, c) = start(rules());
    finished(run.on(done(JOB, "x"), c.at(1)));
    for input in [done(JOB, "y"), exited(1), Input::Tick, ack(JOB)] {
        assert!(is_wait(&run.on(input, c.at(20_000))));
    }
}

fn cpu(ms: u64) -> Input {
    Input::CpuUsed(Duration::from_millis(ms))
}

fn with_cpu(ms: u64) -> Rules {
    Rules {
        cpu: Some(Duration::from_millis(ms)),
        ..rules()
    }
}

#[test]
fn using_up_the_cpu_budget_kills_the_job_at_once() {
    let (mut run, c) = start(with_cpu(2_000));
    assert!(is_wait(&run.on(cpu(1_999), c.at(1_000))));
    let (v, t) = finished(run.on(cpu(2_000), c.at(1_500)));
    assert_eq!(v, Verdict::Killed(None));
    assert_eq!(t, Trigger::Cpu);
    assert_eq!(v.outcome(&t), Outcome::Killed);
    // Nothing after it.
    assert!(is_wait(&run.on(done(JOB, "x"), c.at(1_501))));
}

#[test]
fn without_a_budget_cpu_time_is_only_news() {
    let (mut run, c) = start(rules());
    assert!(is_wait(&run.on(cpu(u32::MAX as u64), c.at(1))));
    let (v, _) = finished(run.on(done(JOB, "x"), c.at(2)));
    assert_eq!(v, Verdict::Returned(ok("x")));
}

#[test]
fn a_result_before_the_budget_is_used_up_counts() {
    let (mut run, c) = start(with_cpu(1_000));
    let (v, _) = finished(run.on(done(JOB, "x"), c.at(900)));
    assert_eq!(v, Verdict::Returned(ok("x")));
    assert!(is_wait(&run.on(cpu(5_000), c.at(901))));
}

#[test]
fn the_cpu_budget_holds_during_cleanup_and_keeps_a_late_result() {
    let (mut run, c) = start(with_cpu(2_000));
    assert!(matches!(
        run.on(Input::Tick, c.at(10_000)),
        Act::RequestCleanup { .. }
    ));
    assert!(is_wait(&run.on(done(JOB, "late"), c.at(10_100))));
    let (v, t) = finished(run.on(cpu(2_500), c.at(10_200)));
    assert_eq!(v, Verdict::Killed(Some(ok("late"))));
    assert_eq!(t, Trigger::Cpu);
}

#[test]
fn the_cpu_budget_overrides_a_stop() {
    let (mut run, c) = start(with_cpu(2_000));
    let stop = Input::Stop {
        reason: "stopping".into(),
        grace: Duration::from_secs(5),
    };
    assert!(matches!(
        run.on(stop, c.at(100)),
        Act::RequestCleanup { .. }
    ));
    let (v, t) = finished(run.on(cpu(2_000), c.at(200)));
    assert_eq!(v.outcome(&t), Outcome::Killed);
    assert_eq!(t, Trigger::Cpu);
}

#[test]
fn the_cpu_budget_counts_while_a_line_worker_has_not_taken_its_job() {
    let (mut run, c) = start(Rules {
        start_grace: Some(Duration::from_secs(1)),
        ..with_cpu(500)
    });
    let (v, t) = finished(run.on(cpu(600), c.at(300)));
    assert_eq!((v, t), (Verdict::Killed(None), Trigger::Cpu));
}

/// One input of a random history, with how far the clock moves before it.
fn any_input() -> impl Strategy<Value = (u64, Input)> {
    let job = prop_oneof![Just(JOB), Just(PREVIOUS), Just(99u64)];
    let input = prop_oneof![
        4 => Just(Input::Tick),
        2 => job.clone().prop_map(|j| done(j, "r")),
        1 => job.clone().prop_map(|j| Input::Said(FromWorker::Done {
            job: j,
            result: JobResult::Failed("no".into()),
        })),
        2 => job.clone().prop_map(ack),
        2 => job.prop_map(beat),
        1 => Just(Input::Taken),
        1 => any::<bool>().prop_map(|unseen| Input::Closed { unseen }),
        1 => (any::<bool>(), -1..3i32).prop_map(|(unseen, code)| Input::Exited {
            exit: if code < 0 { Exit::Signal(9) } else { Exit::Code(code) },
            unseen,
        }),
        1 => (0..3_000u64).prop_map(|g| Input::Stop {
            reason: "stop".into(),
            grace: Duration::from_millis(g),
        }),
        1 => Just(Input::Broke(LinkError::Protocol("junk".into()))),
        2 => (0..3_000u64).prop_map(|ms| Input::CpuUsed(Duration::from_millis(ms))),
    ];
    (0..4_000u64, input)
}

fn any_rules() -> impl Strategy<Value = Rules> {
    (
        prop::option::of(0..5_000u64),
        0..3_000u64,
        prop::option::of(1..3_000u64),
        prop::option::of(1..3_000u64),
        any::<bool>(),
        prop::option::of(0..2_000u64),
        prop::option::of(1..2_000u64),
    )
        .prop_map(
            |(ttl, cleanup, idle, slow, ends_by_exit, grace, cpu)| Rules {
                ttl: ttl.map(Duration::from_millis),
                cleanup: Duration::from_millis(cleanup),
                idle: idle.map(Duration::from_millis),
                slow: slow.map(Duration::from_millis),
                ends_by_exit,
                start_grace: grace.map(Duration::from_millis),
                cpu: cpu.map(Duration::from_millis),
            },
        )
}

proptest! {
    /// Whatever happens in whatever order, a job gets exactly one verdict (the process
    /// exiting always ends it), and the one rule holds: once the cleanup request is out,
    /// the worker's own answer no longer decides the outcome.
    #[test]
    fn every_history_ends_in_exactly_one_verdict(
        rules in any_rules(),
        history in prop::collection::vec(any_input(), 0..40),
    ) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut run = JobRun::new(rules, JOB, Some(PREVIOUS), now);
        let mut verdicts = Vec::new();
        let mut asked = false;
        let inputs = history.into_iter().chain([(0, exited(0))]);
        for (advance, input) in inputs {
            now += Duration::from_millis(advance);
            if let Some(timer) = run.next_timer() {
                prop_assert!(timer >= t0);
            }
            match run.on(input, now) {
                Act::Finish { verdict, trigger } => verdicts.push((verdict, trigger, asked)),
                Act::RequestCleanup { .. } => {
                    prop_assert!(!asked, "a cleanup request goes out once");
                    asked = true;
                }
                Act::Wait | Act::WarnSlow { .. } | Act::IgnoreStale(_) => {}
            }
        }
        prop_assert_eq!(verdicts.len(), 1, "{:?}", verdicts);
        let (verdict, trigger, asked) = &verdicts[0];
        if *asked {
            prop_assert!(
                !matches!(verdict, Verdict::Returned(_) | Verdict::Exited(_) | Verdict::Unseen),
                "after the cleanup request: {:?}", verdict
            );
            prop_assert!(*trigger != Trigger::None);
        }
        if matches!(verdict, Verdict::TimedOut(_) | Verdict::Killed(_)) {
            prop_assert!(*trigger != Trigger::None, "a timeout or kill says what fired");
        }
        // Only a budget ends a job for its CPU time, and only with the kill.
        if *trigger == Trigger::Cpu {
            prop_assert!(rules.cpu.is_some());
            prop_assert!(matches!(verdict, Verdict::Killed(_)), "{:?}", verdict);
        }
    }
}
