//! Per-client rate limits (actix-governor) on the routes an attacker would hammer:
//! `/login`, `/callback`, `/backchannel-logout` and the admin POSTs. Each group has its own
//! buckets; going over answers the shared 429 page with `Retry-After`. A client is its
//! address by the trusted-proxy rule, an IPv6 client its /64 ([`rate_limit_key`]). Buckets
//! back to full are dropped by [`RateLimits::prune`], on a timer, so a flood of distinct
//! addresses cannot grow the maps without bound.

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
use crate::net::{TrustedProxies, forwarded_for, rate_limit_key};

/// The client IP as [`TrustedProxies`] resolves it.
#[derive(Clone)]
pub struct ClientIp(TrustedProxies);

impl KeyExtractor for ClientIp {
    type Key = IpAddr;
    type KeyExtractionError = SimpleKeyExtractionError<&'static str>;

    fn extract(&self, req: &ServiceRequest) -> Result<IpAddr, Self::KeyExtractionError> {
        let forwarded = forwarded_for(req.headers());
        // No peer address (not over TCP): one shared bucket rather than no limit.
        let ip = self
            .0
            .client_ip(req.peer_addr().map(|a| a.ip()), forwarded.as_deref())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        Ok(rate_limit_key(ip))
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

    fn groups(&self) -> [&GovernorConfig<ClientIp, NoOpMiddleware>; 4] {
        [&self.login, &self.callback, &self.backchannel, &self.admin]
    }

    /// Drops the buckets that are full again (their clients have been quiet for a refill
    /// period) and gives their memory back.
    pub fn prune(&self) {
        for group in self.groups() {
            let limiter = group.limiter();
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Buckets held now, over every route group.
    pub fn buckets(&self) -> usize {
        self.groups().iter().map(|g| g.limiter().len()).sum()
    }

    /// Prunes every `every` until `stop` is cancelled.
    pub async fn prune_until_stopped(
        self,
        every: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.prune(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_flood_of_distinct_addresses_is_pruned_once_its_buckets_refill() {
        // 6,000 a minute: a bucket refills one cell every 10 ms.
        let settings = RateLimitSettings {
            enabled: true,
            per_minute: 6_000,
            burst: 5,
        };
        let limits = RateLimits::new(&settings, &TrustedProxies::default());
        let login = limits.login.limiter();
        for n in 0..100_000u128 {
            // Each address in a /64 of its own, as a flood from many subscribers would be.
            let ip = rate_limit_key(IpAddr::V6(Ipv6Addr::from(
                (0x2001_0db8u128 << 96) | (n << 64),
            )));
            assert!(login.check_key(&ip).is_ok());
        }
        assert_eq!(limits.buckets(), 100_000);
        // Used once each: full again after one refill period.
        std::thread::sleep(Duration::from_millis(50));
        limits.prune();
        assert_eq!(limits.buckets(), 0, "every refilled bucket is dropped");
    }

    #[test]
    fn a_bucket_still_in_use_is_kept() {
        let settings = RateLimitSettings {
            enabled: true,
            per_minute: 1,
            burst: 2,
        };
        let limits = RateLimits::new(&settings, &TrustedProxies::default());
        let ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
        let login = limits.login.limiter();
        assert!(login.check_key(&ip).is_ok());
        assert!(login.check_key(&ip).is_ok());
        assert!(login.check_key(&ip).is_err(), "the burst is spent");
        limits.prune();
        assert!(login.check_key(&ip).is_err(), "pruning forgives nothing");
        assert_eq!(limits.buckets(), 1);
    }
}
