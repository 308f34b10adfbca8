//! Exit codes (sysexits.h where one fits) and the error types that choose a one-shot run's
//! code. A leaf module, so that every command (`commands`, `discover`, `history`, `simulate`,
//! `demo`) can name them without importing another command's module; `commands` re-exports
//! them under their old paths.

/// Exit code for an invalid configuration or usage (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Exit code when a job failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code when the state directory is in use by another process (EX_TEMPFAIL: retrying
/// later can succeed, unlike a bad configuration or an unusable directory, which exit 64).
pub const EXIT_IN_USE: u8 = 75;
/// Exit code when a dependency is unavailable at start (EX_UNAVAILABLE): the listen port is
/// in use, or every failure of a one-shot command was an unreachable vault or tenant.
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code when credentials are missing or refused at run time (EX_CONFIG): the Qlik API
/// key or OAuth secret cannot be read or is answered with 401, or the AWS credential chain
/// found none.
pub const EXIT_NO_CREDENTIALS: u8 = 78;

/// Error types that mean "the credentials are missing or refused" (exit 78).
pub const CREDENTIAL_ERROR_TYPES: &[&str] = &["unauthorized", "auth", "secret_no_credentials"];
/// Error types that mean "a dependency could not be reached" (exit 69 when all failures are).
pub const UNAVAILABLE_ERROR_TYPES: &[&str] =
    &["secret_source_unavailable", "connection", "timeout"];

/// Error types that are configuration errors found at run time (exit 64).
pub const CONFIG_ERROR_TYPES: &[&str] = &["secret_source_config", "config"];

/// The exit code of a one-shot run from its failures' error types: 0 without failures, 64 if
/// any was a configuration error (no AWS region), 78 if any was a credential problem, 69 if
/// every one was an unreachable dependency, else 1.
pub fn failure_exit(error_types: &[&str]) -> u8 {
    if error_types.is_empty() {
        0
    } else if error_types.iter().any(|t| CONFIG_ERROR_TYPES.contains(t)) {
        EXIT_USAGE
    } else if error_types
        .iter()
        .any(|t| CREDENTIAL_ERROR_TYPES.contains(t))
    {
        EXIT_NO_CREDENTIALS
    } else if error_types
        .iter()
        .all(|t| UNAVAILABLE_ERROR_TYPES.contains(t))
    {
        EXIT_UNAVAILABLE
    } else {
        EXIT_FAILED
    }
}
