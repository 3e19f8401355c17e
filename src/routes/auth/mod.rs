pub mod backchannel;
pub mod callback;
pub mod jwks;
pub mod login;
pub mod logout;
pub mod profile;

use crate::auth::oidc::OidcError;
use crate::error::AppError;

/// How a provider failure looks to a shopper.
pub fn provider_error(err: OidcError) -> AppError {
    tracing::warn!(error = %err, "Identity provider call failed");
    match err {
        OidcError::Unavailable(_) | OidcError::NoAnswer(_) => AppError::Unavailable(
            "Sign-in is temporarily unavailable: the identity provider did not answer. Please try again in a moment.".into(),
        ),
        OidcError::Refused { .. } => AppError::BadRequest(
            "The sign-in could not be completed (the code was already used or has expired). Please log in again.".into(),
        ),
        OidcError::InvalidResponse(_) => AppError::BadGateway(
            "The identity provider sent an answer we could not use. Please try again.".into(),
        ),
        OidcError::InvalidToken(_) => AppError::Forbidden(
            "The sign-in could not be verified. Please log in again.".into(),
        ),
    }
}
