//! The crate's error type, and the JSON error answers the API sends.

use std::io;
use std::path::PathBuf;

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use lockstock::api::ErrorBody;

/// Everything the library can fail at. Messages name the thing, never a secret; the cause is
/// the error's `source()` (print the chain, e.g. with `{:#}` in anyhow).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot prepare the data directory {path}")]
    DataDir { path: PathBuf, source: io::Error },
    #[error("cannot open the ledger database {path}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the ledger database failed")]
    Db(#[from] rusqlite::Error),
    #[error("an account already exists in {0}; refusing to create another")]
    AccountExists(PathBuf),
    #[error("no account in {0}; run `lockstock-cloud init --data {0}` first")]
    NoAccount(PathBuf),
    #[error("another lockstock-cloud server is already using {0}")]
    Busy(PathBuf),
    #[error(
        "the ledger database {path} has schema version {found}, newer than this build understands; upgrade lockstock-cloud"
    )]
    Schema { path: PathBuf, found: i64 },
    #[error("cannot load the TLS {what} from {path}: {reason}")]
    Tls {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the server cannot accept connections: {0}")]
    Listen(io::Error),
    #[error("the ledger holds an unreadable record: {0}")]
    Corrupt(String),
    #[error("the ledger writer thread stopped unexpectedly")]
    WriterStopped,
}

/// An error answer: a status, a machine-readable type and a sentence for a human.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found_error", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict_error", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", message)
    }

    /// A failure on our side: the client gets a generic sentence, the log gets the detail.
    pub fn internal(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "the control plane failed to process the request; nothing was recorded, retry later",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded_error", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = axum::Json(ErrorBody::new(self.kind, self.message)).into_response();
        *resp.status_mut() = self.status;
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        Self::internal(&e)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self::internal(&lockstock::error_chain(&e))
    }
}
