//! storefront: a web shop whose shoppers log in with OpenID Connect. The server is the OAuth
//! client (a backend for frontend): tokens stay in Postgres, encrypted; the browser holds only
//! an opaque session cookie.

pub mod account;
pub mod activity;
pub mod admin;
pub mod auth;
pub mod cli;
pub mod configuration;
pub mod crypto;
pub mod db;
pub mod error;
pub mod metrics;
pub mod net;
pub mod rate_limit;
pub mod routes;
pub mod session;
pub mod shop;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod templates;
