//! GNU parallel's path placeholders in exec-mode arguments, end to end: the processor is a
//! real `sh` printing its arguments.

use jobsup_tests::jobsup;

#[test]
fn path_placeholders_reach_the_process_as_gnu_parallel_cuts_them() {
    let script = "printf '%s|' \"$@\"";
    let run = jobsup!()
        .args(["--mode", "exec"])
        .processor(
            "sh",
            [
                "-c", script, "sh", "{}", "{.}", "{/}", "{//}", "{/.}", "{#}",
            ],
        )
        .stdin("photos/2024/cat.tar.gz\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let records = run.records();
    assert_eq!(records.len(), 1, "{run}");
    assert_eq!(
        records[0].output(),
        Some("photos/2024/cat.tar.gz|photos/2024/cat.tar|cat.tar.gz|photos/2024|cat.tar|1|"),
        "{run}"
    );
}
