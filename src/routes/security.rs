//! Security headers on every response: a Content-Security-Policy without inline script, no
//! framing, no MIME sniffing, a strict referrer policy, and HSTS when the shop is on https.

use actix_web::middleware::DefaultHeaders;

use crate::configuration::Settings;

/// The policy: everything from our own origin only. Forms may also lead to the identity
/// providers (logout and login redirect there after a POST), so their origins are allowed as
/// form targets and nothing else.
pub fn content_security_policy(settings: &Settings) -> String {
    let mut origins: Vec<String> = settings
        .providers()
        .iter()
        .map(|p| p.issuer_url.origin().ascii_serialization())
        .collect();
    origins.dedup();
    let provider = origins.join(" ");
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
         frame-ancestors 'none'; form-action 'self' {provider}"
    )
}

pub fn headers(settings: &Settings) -> DefaultHeaders {
    let mut headers = DefaultHeaders::new()
        .add(("Content-Security-Policy", content_security_policy(settings)))
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        .add(("Referrer-Policy", "same-origin"))
        .add(("Cross-Origin-Opener-Policy", "same-origin"))
        .add((
            "Permissions-Policy",
            "camera=(), microphone=(), geolocation=(), payment=()",
        ));
    if settings.is_https() {
        headers = headers.add((
            "Strict-Transport-Security",
            "max-age=63072000; includeSubDomains",
        ));
    }
    headers
}
