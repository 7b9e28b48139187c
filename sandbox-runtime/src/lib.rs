//! jobsup-runtime (stub)
