//! jobsup supervisor (stub).
pub mod cli {
    /// Entry point.
    pub fn main() -> std::process::ExitCode { std::process::ExitCode::from(125) }
}
