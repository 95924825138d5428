//! The domain error every module returns; the HTTP layer maps it to
//! problem+json in one place (`http::errors`), the CLI to a sentence on stderr.

/// What went wrong in a domain operation, in terms an operator understands.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that does not meet the rules; names the field.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, as the request names it.
        field: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// The thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with what is stored (a duplicate name, a thing still in use).
    #[error("{0}")]
    Conflict(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The credentials are missing, wrong, expired or revoked.
    #[error("{0}")]
    Unauthorized(String),
    /// Too many attempts; retry after the given seconds.
    #[error("too many attempts; try again in {retry_after_s} s")]
    Throttled {
        /// Seconds until the next attempt may succeed.
        retry_after_s: u64,
    },
    /// The request body is larger than a configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// Well-formed input that cannot be carried out (an unknown artifact, a bad signature).
    #[error("{0}")]
    Unprocessable(String),
    /// The store failed.
    #[error("database error: {0}")]
    Store(#[from] sqlx::Error),
    /// Anything else that is our fault.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for an invalid field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Result of a domain operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
