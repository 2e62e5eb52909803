//! The address a request comes from, for login throttling, `Login.remoteAddress` and access
//! policies' `ipAccessRule`s. It is the connection's peer, unless that peer is one of the
//! configured trusted proxies (`--trusted-proxies`, CIDR ranges): then it is the address the
//! proxies recorded in `X-Forwarded-For`, read from the right and skipping trusted hops, so a
//! client cannot choose its address by sending the header itself.

use std::net::{IpAddr, SocketAddr};

pub use kiln_auth::net::Cidr;
use kiln_auth::net::canonical;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;

use crate::AppState;

/// The client's address given the connection's `peer`, the request `headers` and the
/// trusted proxies.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.iter().any(|c| c.contains(peer)) {
        return peer;
    }
    // Each proxy appends the address it received the request from; the last untrusted one
    // is the client as the outermost trusted proxy saw it.
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
        .map(canonical)
        .collect();
    hops.iter().rev().find(|ip| !trusted.iter().any(|c| c.contains(**ip))).copied().unwrap_or(peer)
}

/// The request's client address (see the module documentation).
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<ClientIp, Self::Rejection> {
        Ok(ClientIp(of_parts(parts, state)))
    }
}

/// The client address of a request whose parts are at hand.
pub fn of_parts(parts: &Parts, state: &AppState) -> IpAddr {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    client_ip(peer, &parts.headers, &state.trusted_proxies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        // Not from a trusted proxy: the header is the client's own claim and is ignored.
        assert_eq!(
            client_ip(ip("203.0.113.9"), &headers(&["1.2.3.4"]), &trusted),
            ip("203.0.113.9")
        );
        // From the proxy: the last untrusted hop.
        assert_eq!(client_ip(ip("10.0.0.2"), &headers(&["1.2.3.4"]), &trusted), ip("1.2.3.4"));
        // A forged first entry does not win over what the proxy appended.
        assert_eq!(
            client_ip(ip("10.0.0.2"), &headers(&["6.6.6.6, 198.51.100.7"]), &trusted),
            ip("198.51.100.7")
        );
        // Several trusted hops, several headers.
        assert_eq!(
            client_ip(ip("10.0.0.2"), &headers(&["198.51.100.7", "10.1.1.1"]), &trusted),
            ip("198.51.100.7")
        );
        // No header: the proxy itself.
        assert_eq!(client_ip(ip("10.0.0.2"), &headers(&[]), &trusted), ip("10.0.0.2"));
        // Nothing trusted: always the peer.
        assert_eq!(client_ip(ip("10.0.0.2"), &headers(&["1.2.3.4"]), &[]), ip("10.0.0.2"));
    }
}
