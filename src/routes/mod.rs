//! Every route of the public contract.

pub mod account;
pub mod admin;
pub mod auth;
pub mod csrf;
pub mod errors;
pub mod health;
pub mod identity;
pub mod metrics;
pub mod page;
pub mod request_span;
pub mod respond;
pub mod security;
pub mod shop;

use actix_web::web;

use crate::error::AppError;
use crate::rate_limit::RateLimits;
use crate::session::TypedSession;
use crate::state::State;

pub fn configure(cfg: &mut web::ServiceConfig, limits: &RateLimits, baseline: bool) {
    if baseline {
        cfg.route("/_bench/baseline", web::get().to(health::baseline));
    }
    cfg.route("/health", web::get().to(health::health_check))
        .route("/health/live", web::get().to(health::liveness))
        .route("/metrics", web::get().to(metrics::public_metrics))
        .route("/", web::get().to(shop::catalogue::home))
        .route(
            "/products/{slug}",
            web::get().to(shop::catalogue::product_page),
        )
        .route("/cart", web::get().to(shop::cart::show_cart))
        .route("/cart/items", web::post().to(shop::cart::change_item))
        .route(
            "/cart/items/{id}/remove",
            web::post().to(shop::cart::remove_item),
        )
        .route("/checkout", web::post().to(shop::cart::checkout))
        .route("/orders", web::get().to(shop::orders::list_orders))
        .route("/orders/{id}", web::get().to(shop::orders::show_order))
        .service(
            web::resource("/login")
                .wrap(limits.login())
                .route(web::get().to(auth::login::start_login)),
        )
        .service(
            web::resource("/callback")
                .wrap(limits.callback())
                .route(web::get().to(auth::callback::login_callback)),
        )
        .configure(|cfg| admin::configure(cfg, limits))
        .route("/profile", web::get().to(auth::profile::profile_page))
        .route("/account/sessions", web::get().to(account::sessions_page))
        .route(
            "/account/sessions/sign-out-others",
            web::post().to(account::sign_out_others),
        )
        .route(
            "/account/sessions/sign-out-everywhere",
            web::post().to(account::sign_out_everywhere),
        )
        .route(
            "/account/sessions/{id}/sign-out",
            web::post().to(account::sign_out_one),
        )
        .route("/logout", web::post().to(auth::logout::log_out))
        .route("/signed-out", web::get().to(auth::logout::signed_out_page))
        .route(
            "/.well-known/jwks.json",
            web::get().to(auth::jwks::client_jwks),
        )
        .service(
            web::resource("/backchannel-logout")
                .wrap(limits.backchannel())
                .route(web::post().to(auth::backchannel::backchannel_logout)),
        );
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

/// The client's IP address as recorded for sessions and the audit trail: the peer, or what
/// a trusted reverse proxy says in `X-Forwarded-For` (`server.trusted_proxies`).
pub fn client_ip(req: &actix_web::HttpRequest) -> Option<String> {
    let forwarded = crate::net::forwarded_for(req.headers());
    let peer = req.peer_addr().map(|a| a.ip());
    let ip = match req.app_data::<State>() {
        Some(state) => state.proxies.client_ip(peer, forwarded.as_deref()),
        None => peer,
    };
    ip.map(|ip| ip.to_string())
}
