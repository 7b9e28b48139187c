fn main() -> std::process::ExitCode {
    jobsup::cli::main()
}
