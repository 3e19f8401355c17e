//! Who the client is: the peer address, or — only when the peer is one of our own reverse
//! proxies — the address that proxy saw, from `X-Forwarded-For`. A client cannot choose its
//! address by sending the header itself.

use std::net::IpAddr;

use ipnet::IpNet;

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
}
