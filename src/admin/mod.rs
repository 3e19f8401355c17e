//! What the admin dashboard reads and does: live counts and activity per hour (`overview`),
//! the session table with search, filters and keyset pages (`sessions`, `cursor`),
//! revocation with an audit trail (`revoke`, `audit`). Logins are read through the `logins`
//! view; ending them is the token store's.

mod audit;
mod cursor;
mod overview;
mod revoke;
mod sessions;
pub mod user_agent;

pub use audit::{Actor, AuditAction, AuditEntry, AuditPage, Target, audit, record};
pub use cursor::Cursor;
pub use overview::{HourlyActivity, Overview, hourly_activity, overview};
pub use revoke::{RevokeScope, Revoked, revoke};
pub use sessions::{SessionPage, SessionQuery, SessionRow, SortOrder, session, sessions};
