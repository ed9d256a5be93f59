//! Where callbacks may go: public https addresses only.
//!
//! A business chooses its callback URL, so without a policy it could point the
//! router at the cloud's metadata service (169.254.169.254), at a database on the
//! private network, or at the router itself. Three checks stop that:
//!
//! 1. [`check_url`] when a URL is configured and again before every send: https
//!    only, no credentials in the URL, and a host that is not a forbidden literal
//!    address nor a loopback name.
//! 2. [`GuardedResolver`] when connecting: names are resolved again at that moment
//!    (DNS can change between configuration and delivery, and a name can resolve to
//!    anything), and forbidden addresses are dropped before a connection is tried.
//! 3. [`client`] follows no redirects, so a permitted host cannot send the request on
//!    to a forbidden one, and uses no proxy, so the resolved address is the one
//!    connected to.
//!
//! reqwest consults its resolver only for names: a URL whose host is a literal IP
//! address connects without it. That is why [`check_url`] must refuse forbidden
//! literal addresses itself, and why delivery code must call it before every send,
//! not only when the URL is stored.
//!
//! `allow_loopback` exists for local runs, where the receiver is on the same machine;
//! it admits loopback (and plain http to a loopback host) and nothing else.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// How long one delivery attempt may take, connecting included.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Why a callback URL or address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Not a URL at all.
    #[error("not a valid URL: {0}")]
    Invalid(String),
    /// A scheme other than https (or http to loopback, where allowed).
    #[error("the URL must be https (got {0}:)")]
    Scheme(String),
    /// `user:password@` in the URL.
    #[error("the URL must not contain a user name or password")]
    Userinfo,
    /// No host, as in `https:///path`.
    #[error("the URL has no host")]
    NoHost,
    /// The host is, or names, an address callbacks may not reach.
    #[error("{0} is not a public address")]
    Forbidden(String),
    /// The name could not be resolved.
    #[error("resolving {name}: {reason}")]
    Unresolvable {
        /// The name.
        name: String,
        /// The resolver's answer.
        reason: String,
    },
    /// A name resolved only to forbidden addresses.
    #[error("{0} resolves to no public address")]
    NoPublicAddress(String),
}

/// Parses and checks a callback URL.
///
/// Accepted: `https://` URLs without a user name or password whose host is a name
/// or a permitted address; with `allow_loopback`, also `http://` when the host is
/// loopback (`127.0.0.0/8`, `[::1]`, `localhost`). A name is not resolved here, so
/// this never touches the network; [`GuardedResolver`] checks what it resolves to at
/// connection time.
pub fn check_url(url: &str, allow_loopback: bool) -> Result<Url, AddressError> {
    let parsed = Url::parse(url.trim()).map_err(|err| AddressError::Invalid(err.to_string()))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(AddressError::Userinfo);
    }

    // The url crate normalises hosts as browsers do, so `127.1`, `0x7f.1` and
    // `2130706433` all arrive here as the address 127.0.0.1.
    let loopback = match parsed.host() {
        None => return Err(AddressError::NoHost),
        Some(Host::Domain("")) => return Err(AddressError::NoHost),
        Some(Host::Domain(name)) => {
            if is_loopback_name(name) && !allow_loopback {
                return Err(AddressError::Forbidden(name.to_owned()));
            }
            is_loopback_name(name)
        }
        Some(Host::Ipv4(ip)) => check_ip(IpAddr::V4(ip), allow_loopback)?,
        Some(Host::Ipv6(ip)) => check_ip(IpAddr::V6(ip), allow_loopback)?,
    };

    match parsed.scheme() {
        "https" => {}
        "http" if allow_loopback && loopback => {}
        other => return Err(AddressError::Scheme(other.to_owned())),
    }
    Ok(parsed)
}

/// Refuses a forbidden literal address; tells whether it is loopback.
fn check_ip(ip: IpAddr, allow_loopback: bool) -> Result<bool, AddressError> {
    if is_forbidden(ip, allow_loopback) {
        return Err(AddressError::Forbidden(ip.to_string()));
    }
    Ok(canonical(ip).is_loopback())
}

/// `localhost` and its subdomains, which resolvers answer with loopback addresses
/// without asking DNS (RFC 6761).
fn is_loopback_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// Whether callbacks must not reach `ip`.
///
/// Forbidden: unspecified, loopback (unless `allow_loopback`), private, shared
/// (carrier-grade NAT), link-local (the cloud metadata service among them),
/// multicast, broadcast, reserved, documentation and benchmarking ranges, and the
/// IPv6 ranges for unique-local and site-local networks. IPv6 addresses that carry an
/// IPv4 address are judged by that IPv4 address, so `::ffff:10.0.0.1` is as private
/// as `10.0.0.1`: IPv4-mapped `::ffff:0:0/96` (which a dual-stack socket connects to
/// as IPv4), IPv4-compatible `::/96`, NAT64 `64:ff9b::/96` and 6to4 `2002::/16`. Only
/// the mapped form counts as loopback for `allow_loopback`; the others reach a
/// translator or relay elsewhere, never this machine.
pub fn is_forbidden(ip: IpAddr, allow_loopback: bool) -> bool {
    match ip {
        IpAddr::V4(ip) => v4_forbidden(ip, allow_loopback),
        IpAddr::V6(ip) => match (ip.to_ipv4_mapped(), tunnelled_v4(ip)) {
            (Some(v4), _) => v4_forbidden(v4, allow_loopback),
            (None, Some(v4)) => v4_forbidden(v4, false),
            (None, None) => v6_forbidden(ip, allow_loopback),
        },
    }
}

/// The address as a socket would treat it: IPv4-mapped IPv6 as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// IPv4 ranges callbacks may not reach, loopback aside: (network, prefix length).
const V4_FORBIDDEN: &[(Ipv4Addr, u8)] = &[
    // "This network", 0.0.0.0 included.
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    // Private networks.
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    // Shared address space (carrier-grade NAT).
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    // Link-local, where cloud metadata services (169.254.169.254) live.
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    // IETF protocol assignments, and the 6to4 relay anycast range.
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    (Ipv4Addr::new(192, 88, 99, 0), 24),
    // Documentation (TEST-NET-1, 2 and 3) and benchmarking.
    (Ipv4Addr::new(192, 0, 2, 0), 24),
    (Ipv4Addr::new(198, 51, 100, 0), 24),
    (Ipv4Addr::new(203, 0, 113, 0), 24),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    // Multicast 224/4, and reserved 240/4 with the broadcast address in it.
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// IPv6 ranges inside global unicast (2000::/3) that callbacks may not reach;
/// everything outside 2000::/3 is refused too (unspecified, unique local fc00::/7,
/// link-local fe80::/10, site-local fec0::/10, multicast ff00::/8, discard-only
/// 100::/64, local-use NAT64 64:ff9b:1::/48, and what is unassigned).
const V6_FORBIDDEN: &[(Ipv6Addr, u8)] = &[
    // IETF protocol assignments (Teredo and benchmarking among them).
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23),
    // Documentation.
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),
];

fn v4_forbidden(ip: Ipv4Addr, allow_loopback: bool) -> bool {
    if ip.is_loopback() {
        return !allow_loopback;
    }
    let bits = u32::from(ip);
    V4_FORBIDDEN.iter().any(|&(network, prefix)| {
        let mask = u32::MAX << (32 - u32::from(prefix));
        bits & mask == u32::from(network)
    })
}

fn v6_forbidden(ip: Ipv6Addr, allow_loopback: bool) -> bool {
    if ip.is_loopback() {
        return !allow_loopback;
    }
    let bits = u128::from(ip);
    let global_unicast = bits >> 125 == 0b001;
    !global_unicast
        || V6_FORBIDDEN.iter().any(|&(network, prefix)| {
            let mask = u128::MAX << (128 - u32::from(prefix));
            bits & mask == u128::from(network)
        })
}

/// The IPv4 address that an IPv4-compatible, NAT64 or 6to4 address carries.
fn tunnelled_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match ip.segments() {
        // IPv4-compatible ::a.b.c.d (deprecated); `::` and `::1` are IPv6's own.
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 || lo > 1 => Some(v4(hi, lo)),
        // NAT64's well-known prefix 64:ff9b::/96.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
        // 6to4: 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
        [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
        _ => None,
    }
}

/// A resolver for reqwest that drops forbidden addresses, so that a connection to
/// one is never attempted, whatever a name resolves to at that moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardedResolver {
    /// Admit loopback addresses (local runs only).
    pub allow_loopback: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_loopback = self.allow_loopback;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let permitted = resolve(&host, allow_loopback).await?;
            let addrs: Addrs = Box::new(permitted.into_iter());
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(addrs)
        })
    }
}

/// Resolves `host` with the system resolver and keeps the permitted addresses.
///
/// The port is 0; reqwest puts in the URL's.
pub async fn resolve(host: &str, allow_loopback: bool) -> Result<Vec<SocketAddr>, AddressError> {
    let found =
        tokio::net::lookup_host((host, 0))
            .await
            .map_err(|err| AddressError::Unresolvable {
                name: host.to_owned(),
                reason: err.to_string(),
            })?;
    let permitted: Vec<SocketAddr> = found
        .filter(|addr| !is_forbidden(addr.ip(), allow_loopback))
        .collect();
    if permitted.is_empty() {
        return Err(AddressError::NoPublicAddress(host.to_owned()));
    }
    Ok(permitted)
}

/// The HTTP client for deliveries: the guarded resolver, no redirects, no proxy, and
/// a [`TIMEOUT`] on each attempt. Build it once and reuse it; call [`check_url`]
/// before every request, since literal-address URLs bypass the resolver.
pub fn client(allow_loopback: bool) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver { allow_loopback }))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every address here is only judged, never connected to.
    #[test]
    fn forbidden_addresses_are_refused_and_public_ones_pass() {
        let forbidden = [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.0.1",
            "169.254.169.254",
            "169.254.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.10",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::10.1.2.3",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::10.0.0.1",
            "64:ff9b:1::1",
            "2002:a9fe:a9fe::1",
            "2002:7f00:1::",
            "2002:c0a8:0101::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "feff::1",
            "ff02::1",
            "100::1",
            "2001:db8::1",
            "2001::1",
            "3fff::1",
            "1::1",
        ];
        for ip in forbidden {
            let parsed: IpAddr = ip.parse().unwrap();
            assert!(is_forbidden(parsed, false), "{ip} was permitted");
        }

        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.1.1",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.255",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2a00:1450::1",
        ];
        for ip in public {
            let parsed: IpAddr = ip.parse().unwrap();
            assert!(!is_forbidden(parsed, false), "{ip} was refused");
            assert!(!is_forbidden(parsed, true), "{ip} was refused");
        }
    }

    #[test]
    fn the_loopback_flag_admits_loopback_and_nothing_else() {
        for ip in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert!(is_forbidden(parsed, false), "{ip}");
            assert!(!is_forbidden(parsed, true), "{ip}");
        }
        // Loopback carried through a translator or relay is not this machine.
        for ip in [
            "10.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "::",
            "fe80::1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
        ] {
            assert!(is_forbidden(ip.parse().unwrap(), true), "{ip}");
        }
    }

    #[test]
    fn check_url_takes_public_https_urls() {
        for url in [
            "https://hooks.example.com/chat",
            "https://hooks.example.com:8443/chat?x=1",
            "https://8.8.8.8/",
            "https://[2606:4700:4700::1111]/hook",
            " https://example.com/padded ",
        ] {
            let checked = check_url(url, false).unwrap_or_else(|err| panic!("{url}: {err}"));
            assert_eq!(checked.scheme(), "https");
        }
    }

    #[test]
    fn check_url_refuses_forbidden_literal_hosts_in_every_spelling() {
        for url in [
            "https://127.0.0.1/",
            "https://127.1/",
            "https://2130706433/",
            "https://0x7f000001/",
            "https://0177.0.0.1/",
            "https://0/",
            "https://10.0.0.1/",
            "https://169.254.169.254/latest/meta-data/",
            "https://192.168.0.1:8443/",
            "https://[::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:a9fe:a9fe]/",
            "https://[fe80::1]/",
            "https://[fd00::1]/",
            "https://localhost/",
            "https://LOCALHOST./",
            "https://api.localhost/",
        ] {
            assert!(
                matches!(check_url(url, false), Err(AddressError::Forbidden(_))),
                "{url}: {:?}",
                check_url(url, false)
            );
        }
        // The flag admits loopback only.
        assert!(check_url("https://169.254.169.254/", true).is_err());
        assert!(check_url("http://10.0.0.1/", true).is_err());
    }

    #[test]
    fn check_url_refuses_other_schemes_userinfo_and_missing_hosts() {
        assert_eq!(
            check_url("http://hooks.example.com/", false),
            Err(AddressError::Scheme("http".into()))
        );
        // Plain http is for loopback, even with the flag.
        assert_eq!(
            check_url("http://hooks.example.com/", true),
            Err(AddressError::Scheme("http".into()))
        );
        for url in ["ftp://example.com/", "file:///etc/passwd", "gopher://x/"] {
            assert!(check_url(url, true).is_err(), "{url}");
        }
        assert_eq!(
            check_url("https://user:pw@example.com/", false),
            Err(AddressError::Userinfo)
        );
        assert_eq!(
            check_url("https://user@example.com/", false),
            Err(AddressError::Userinfo)
        );
        assert!(matches!(
            check_url("not a url", false),
            Err(AddressError::Invalid(_))
        ));
        assert!(check_url("https://", false).is_err());
        assert!(check_url("", false).is_err());
    }

    #[test]
    fn local_runs_may_use_http_to_loopback() {
        for url in [
            "http://127.0.0.1:4000/demo/callback",
            "http://localhost:4000/",
            "http://[::1]:4000/",
            "https://127.0.0.1:4000/",
        ] {
            assert!(check_url(url, true).is_ok(), "{url}");
            assert!(check_url(url, false).is_err(), "{url}");
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_localhost_unless_loopback_is_allowed() {
        // `localhost` is answered from the hosts file; no DNS server is asked and
        // nothing is connected to.
        assert_eq!(
            resolve("localhost", false).await,
            Err(AddressError::NoPublicAddress("localhost".into()))
        );
        let allowed = resolve("localhost", true).await.unwrap();
        assert!(!allowed.is_empty());
        assert!(allowed.iter().all(|addr| addr.ip().is_loopback()));

        let name: Name = "localhost".parse().unwrap();
        assert!(GuardedResolver::default().resolve(name).await.is_err());
        let name: Name = "localhost".parse().unwrap();
        let addrs: Vec<SocketAddr> = GuardedResolver {
            allow_loopback: true,
        }
        .resolve(name)
        .await
        .unwrap()
        .collect();
        assert!(!addrs.is_empty());
    }

    #[tokio::test]
    async fn the_client_never_connects_to_localhost_without_the_flag() {
        // A listener on 127.0.0.1 that must never see a connection: the resolver
        // drops the address before reqwest can try it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let err = client(false)
            .unwrap()
            .post(format!("http://localhost:{port}/"))
            .send()
            .await
            .unwrap_err();
        let chain = crate::error::chain(&err);
        assert!(chain.contains("resolves to no public address"), "{chain}");
        let accepted = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        assert!(accepted.is_err(), "a connection was made");
    }

    #[tokio::test]
    async fn the_client_does_not_follow_redirects() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        use axum::http::{StatusCode, header::LOCATION};
        use axum::routing::get;

        // A local receiver that redirects, and counts whether the target is reached.
        let followed = Arc::new(AtomicUsize::new(0));
        let counter = followed.clone();
        let app = axum::Router::new()
            .route(
                "/hook",
                get(|| async { (StatusCode::TEMPORARY_REDIRECT, [(LOCATION, "/elsewhere")]) }),
            )
            .route(
                "/elsewhere",
                get(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async { "followed" }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let url = check_url(&format!("http://{addr}/hook"), true).unwrap();
        let response = client(true).unwrap().get(url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(followed.load(Ordering::SeqCst), 0);
        server.abort();
    }
}
