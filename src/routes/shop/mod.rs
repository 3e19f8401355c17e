//! The shop's pages: catalogue, cart, checkout and orders.

pub mod cart;
pub mod catalogue;
pub mod orders;

use crate::error::AppError;
use crate::session::TypedSession;
use crate::startup::State;
use crate::templates::Layout;

/// The number of items in the session's cart, for the header.
pub fn cart_count(session: &TypedSession) -> u32 {
    session.cart().count()
}

pub fn page_layout(state: &State, session: &TypedSession) -> Layout {
    Layout::for_session(session, &state.settings.admin)
}

/// A POST form's CSRF token must match the session's, or nothing happens.
pub fn require_csrf(session: &TypedSession, submitted: &str) -> Result<(), AppError> {
    if session.check_csrf(submitted) {
        Ok(())
    } else {
        Err(AppError::Forbidden(
            "This form has expired or did not come from this shop. Please go back, reload the page and try again.".into(),
        ))
    }
}
