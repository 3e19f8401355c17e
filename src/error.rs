//! One error type for handlers, rendered through the shared error page.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

#[derive(thiserror::Error)]
pub enum AppError {
    /// 400, with a sentence for the user.
    #[error("{0}")]
    BadRequest(String),
    /// 404, with a sentence for the user.
    #[error("{0}")]
    NotFound(String),
    /// 403, with a sentence for the user.
    #[error("{0}")]
    Forbidden(String),
    /// 303 to `/login?return_to=…`.
    #[error("Please log in to continue.")]
    LoginRequired { return_to: String },
    /// 503: a dependency (Postgres, the provider) is down; retrying later will work.
    #[error("{0}")]
    Unavailable(String),
    /// 502: the identity provider answered something unusable.
    #[error("{0}")]
    BadGateway(String),
    /// 500; the detail goes to the log only.
    #[error("Something went wrong on our side. Please try again.")]
    Unexpected(#[from] anyhow::Error),
}

pub type Result<T, E = AppError> = std::result::Result<T, E>;

impl fmt::Debug for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        error_chain_fmt(self, f)
    }
}

pub fn error_chain_fmt(e: &impl std::error::Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(f, "{e}")?;
    let mut current = e.source();
    while let Some(cause) = current {
        writeln!(f, "Caused by:\n\t{cause}")?;
        current = cause.source();
    }
    Ok(())
}

impl From<sqlx::Error> for AppError {
    fn from(err: sqlx::Error) -> Self {
        if crate::db::is_unavailable(&err) {
            tracing::warn!(error = %err, "Database unavailable");
            AppError::Unavailable(
                "The shop's database is unavailable. Please try again in a moment.".into(),
            )
        } else {
            AppError::Unexpected(err.into())
        }
    }
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::LoginRequired { .. } => StatusCode::SEE_OTHER,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            AppError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A bare response carrying the message; `crate::routes::errors` wraps it in the page.
    fn error_response(&self) -> HttpResponse {
        if let AppError::Unexpected(e) = self {
            tracing::error!(error.cause_chain = ?e, "Unexpected error");
        }
        let mut res = HttpResponse::build(self.status_code());
        if let AppError::LoginRequired { return_to } = self {
            res.insert_header((header::LOCATION, crate::auth::login_url(return_to)));
        }
        if let AppError::Unavailable(_) = self {
            res.insert_header((header::RETRY_AFTER, HeaderValue::from_static("5")));
        }
        res.extensions_mut().insert(ErrorMessage(self.to_string()));
        res.finish()
    }
}

/// The user-facing sentence of an error response, picked up by the error page renderer.
#[derive(Debug, Clone)]
pub struct ErrorMessage(pub String);
