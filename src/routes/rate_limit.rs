//! Per-client-IP rate limits (actix-governor) on the routes an attacker would hammer:
//! `/login`, `/callback`, `/backchannel-logout` and the admin POSTs. Each group has its own
//! buckets; going over answers the shared 429 page with `Retry-After`.

use std::net::{IpAddr, Ipv4Addr};

use actix_governor::governor::NotUntil;
use actix_governor::governor::clock::{Clock, DefaultClock, QuantaInstant};
use actix_governor::governor::middleware::NoOpMiddleware;
use actix_governor::{
    Governor, GovernorConfig, GovernorConfigBuilder, KeyExtractor, SimpleKeyExtractionError,
};
use actix_web::dev::ServiceRequest;
use actix_web::middleware::Condition;
use actix_web::{HttpResponse, HttpResponseBuilder};

use crate::configuration::RateLimitSettings;
use crate::error::ErrorMessage;
use crate::net::TrustedProxies;

/// The client IP as [`TrustedProxies`] resolves it.
#[derive(Clone)]
pub struct ClientIp(TrustedProxies);

impl KeyExtractor for ClientIp {
    type Key = IpAddr;
    type KeyExtractionError = SimpleKeyExtractionError<&'static str>;

    fn extract(&self, req: &ServiceRequest) -> Result<IpAddr, Self::KeyExtractionError> {
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        // No peer address (not over TCP): one shared bucket rather than no limit.
        Ok(self
            .0
            .client_ip(req.peer_addr().map(|a| a.ip()), forwarded)
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
    }

    fn exceed_rate_limit_response(
        &self,
        negative: &NotUntil<QuantaInstant>,
        mut response: HttpResponseBuilder,
    ) -> HttpResponse {
        let wait = negative
            .wait_time_from(DefaultClock::default().now())
            .as_secs()
            .max(1);
        tracing::warn!(retry_after_secs = wait, "Rate limit exceeded");
        // No body here: the error-page handler renders the 429 with this sentence.
        response.extensions_mut().insert(ErrorMessage(format!(
            "Too many attempts from your address. Please wait {wait} second{} and try again.",
            if wait == 1 { "" } else { "s" }
        )));
        response.finish()
    }
}

pub type Limit = Condition<Governor<ClientIp, NoOpMiddleware>>;

/// One limiter per route group, shared by every worker (the buckets live behind an `Arc`).
#[derive(Clone)]
pub struct RateLimits {
    enabled: bool,
    login: GovernorConfig<ClientIp, NoOpMiddleware>,
    callback: GovernorConfig<ClientIp, NoOpMiddleware>,
    backchannel: GovernorConfig<ClientIp, NoOpMiddleware>,
    admin: GovernorConfig<ClientIp, NoOpMiddleware>,
}

impl RateLimits {
    pub fn new(settings: &RateLimitSettings, proxies: &TrustedProxies) -> Self {
        let config = || {
            GovernorConfigBuilder::default()
                .requests_per_minute(u64::from(settings.per_minute.max(1)))
                .burst_size(settings.burst.max(1))
                .key_extractor(ClientIp(proxies.clone()))
                .finish()
                .expect("positive period and burst")
        };
        Self {
            enabled: settings.enabled,
            login: config(),
            callback: config(),
            backchannel: config(),
            admin: config(),
        }
    }

    fn limit(&self, config: &GovernorConfig<ClientIp, NoOpMiddleware>) -> Limit {
        Condition::new(self.enabled, Governor::new(config))
    }

    pub fn login(&self) -> Limit {
        self.limit(&self.login)
    }

    pub fn callback(&self) -> Limit {
        self.limit(&self.callback)
    }

    pub fn backchannel(&self) -> Limit {
        self.limit(&self.backchannel)
    }

    pub fn admin(&self) -> Limit {
        self.limit(&self.admin)
    }
}
