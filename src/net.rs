//! Who the client is: the peer address, or — only when the peer is one of our own reverse
//! proxies — the address that proxy saw, from `X-Forwarded-For`. A client cannot choose its
//! address by sending the header itself.

use std::net::{IpAddr, Ipv6Addr};

use actix_web::http::header::HeaderMap;
use ipnet::IpNet;

/// Every `X-Forwarded-For` line of a request as one list, in order. A proxy may add a line of
/// its own rather than append to the last one (HAProxy's `option forwardfor` does), so the
/// address it saw is on the last line, not the first. A line that is not text stops the walk
/// where it stands, as an entry that is not an address does.
pub fn forwarded_for(headers: &HeaderMap) -> Option<String> {
    let lines: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .map(|v| v.to_str().unwrap_or("not-text"))
        .collect();
    (!lines.is_empty()).then(|| lines.join(","))
}

/// The bucket a client's requests are counted in: its IPv4 address, or the /64 of its IPv6
/// address (one subscriber usually holds a whole /64, so counting per address would give it
/// 2^64 buckets). IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
pub fn rate_limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address. `X-Forwarded-For` is read right to left: each proxy appends the
    /// address it saw, so the first address not of a trusted proxy is the client. Entries
    /// that are not addresses end the walk: whatever is left of them was written by the client.
    pub fn client_ip(&self, peer: Option<IpAddr>, forwarded_for: Option<&str>) -> Option<IpAddr> {
        let peer = peer?;
        if !self.trusts(peer) {
            return Some(peer);
        }
        let mut client = peer;
        for entry in forwarded_for.unwrap_or("").rsplit(',') {
            match entry.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !self.trusts(ip) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        Some(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn the_header_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        let none = proxies(&[]);
        assert_eq!(
            none.client_ip(ip("203.0.113.9"), Some("1.2.3.4")),
            ip("203.0.113.9")
        );
        let lb = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            lb.client_ip(ip("203.0.113.9"), Some("1.2.3.4")),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn the_first_untrusted_address_from_the_right_is_the_client() {
        let lb = proxies(&["10.0.0.0/8", "192.0.2.1/32"]);
        // client → 192.0.2.1 (CDN) → 10.0.0.5 (load balancer) → us
        assert_eq!(
            lb.client_ip(ip("10.0.0.5"), Some("198.51.100.7, 192.0.2.1")),
            ip("198.51.100.7")
        );
        // A client-forged entry further left is never reached.
        assert_eq!(
            lb.client_ip(ip("10.0.0.5"), Some("6.6.6.6, 198.51.100.7")),
            ip("198.51.100.7")
        );
        // Garbage ends the walk at the last good address.
        assert_eq!(
            lb.client_ip(ip("10.0.0.5"), Some("not-an-ip, 10.1.1.1")),
            ip("10.1.1.1")
        );
        // No header: the proxy itself.
        assert_eq!(lb.client_ip(ip("10.0.0.5"), None), ip("10.0.0.5"));
        assert_eq!(lb.client_ip(None, Some("1.2.3.4")), None);
        let v6 = proxies(&["::1/128"]);
        assert_eq!(
            v6.client_ip(ip("::1"), Some("2001:db8::7")),
            ip("2001:db8::7")
        );
    }

    #[test]
    fn every_header_line_is_read_and_the_last_one_holds_the_proxys_entry() {
        use actix_web::http::header::{HeaderName, HeaderValue};
        let mut headers = HeaderMap::new();
        let xff = HeaderName::from_static("x-forwarded-for");
        // The client sent a line of its own; the load balancer added one with what it saw.
        headers.append(xff.clone(), HeaderValue::from_static("6.6.6.6"));
        headers.append(xff.clone(), HeaderValue::from_static("198.51.100.7"));
        let joined = forwarded_for(&headers);
        assert_eq!(joined.as_deref(), Some("6.6.6.6,198.51.100.7"));
        let lb = proxies(&["127.0.0.1/32"]);
        assert_eq!(
            lb.client_ip(ip("127.0.0.1"), joined.as_deref()),
            ip("198.51.100.7"),
            "not the client's forged first line"
        );
        assert_eq!(forwarded_for(&HeaderMap::new()), None);
        headers.append(xff, HeaderValue::from_bytes(b"\xff").unwrap());
        assert_eq!(
            lb.client_ip(ip("127.0.0.1"), forwarded_for(&headers).as_deref()),
            ip("127.0.0.1"),
            "a line that is not text ends the walk"
        );
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        let a = rate_limit_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = rate_limit_key("2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap());
        let c = rate_limit_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        let v4 = "203.0.113.9".parse::<IpAddr>().unwrap();
        assert_eq!(rate_limit_key(v4), v4);
        assert_eq!(rate_limit_key("::ffff:203.0.113.9".parse().unwrap()), v4);
    }
}
