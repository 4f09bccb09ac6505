//! The webhook HTTP client: a [`WebhookTransport`] on reqwest (rustls) that is safe to point at
//! the internet.
//!
//! - Only `http` and `https` URLs, without credentials in them.
//! - Every address is checked **after DNS resolution**, in the resolver reqwest connects
//!   through, so the connection goes only to an address that passed (no second lookup a
//!   rebinding DNS server could answer differently). IP-literal URLs, which reqwest does not
//!   resolve, are checked before the request. Refused: loopback, private (RFC 1918), shared
//!   (100.64/10), link-local, unique-local, site-local, multicast, unspecified, broadcast,
//!   documentation, benchmarking, reserved and the IPv6 forms that embed an IPv4 address
//!   (checked as that address) or tunnel to one (6to4, Teredo); unless the address is in
//!   [`WebhookClientConfig::allow`].
//! - No proxy from the environment (it would resolve names itself), no redirects followed
//!   (a 3xx is an answer like any other, and final).
//! - The whole request is bounded by [`WebhookClientConfig::timeout`] (15 s); at most
//!   [`WebhookClientConfig::max_response_bytes`] of the answer are read, then dropped.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use converto_core::webhook::{
    TransportError, WebhookRequest, WebhookResponse, WebhookTransport, parse_retry_after,
};
use serde::Deserialize;

/// An IP network, `addr/prefix` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// A string that is not a CIDR.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid CIDR {0:?}: expected e.g. 127.0.0.0/8 or fd00::/8")]
pub struct CidrError(String);

impl std::str::FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.chars().take(64).collect());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (
                a.parse::<IpAddr>().map_err(|_| err())?,
                Some(p.parse::<u8>().map_err(|_| err())?),
            ),
            None => (s.parse::<IpAddr>().map_err(|_| err())?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(err());
        }
        Ok(Self { addr, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is in the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(u32::from(net)) << 96,
                u128::from(u32::from(ip)) << 96,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - u32::from(prefix));
    a & mask == b & mask
}

/// Why an address is not public, if it is not.
pub fn special_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_unspecified() || a == 0 => "unspecified (0.0.0.0/8)",
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private",
        _ if ip.is_link_local() => "link-local",
        _ if ip.is_multicast() => "multicast",
        _ if ip.is_broadcast() => "broadcast",
        (100, b, _) if (64..128).contains(&b) => "shared address space (100.64.0.0/10)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18 | 19, _) => "benchmarking (198.18.0.0/15)",
        (192, 88, 99) => "6to4 relay anycast",
        _ if a >= 240 => "reserved (240.0.0.0/4)",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return special_v4(v4);
    }
    let s = ip.segments();
    Some(match s {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_multicast() => "multicast",
        [0, 0, 0, 0, 0, 0, _, _] => "IPv4-compatible (deprecated)",
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => {
            let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
            return special_v4(v4);
        }
        [0x64, 0xff9b, 1, ..] => "local NAT64 (64:ff9b:1::/48)",
        [0x100, 0, 0, 0, ..] => "discard (100::/64)",
        [0x2001, x, ..] if x < 0x200 => "IETF protocol assignments / Teredo (2001::/23)",
        [0x2001, 0xdb8, ..] => "documentation",
        [0x2002, ..] => "6to4 (2002::/16)",
        [x, ..] if x & 0xfe00 == 0xfc00 => "unique-local (fc00::/7)",
        [x, ..] if x & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        [x, ..] if x & 0xffc0 == 0xfec0 => "site-local (fec0::/10)",
        _ => return None,
    })
}

/// The webhook client's settings (`[webhooks]` in the service's configuration).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookClientConfig {
    /// Networks webhooks may reach although they are not public, as CIDRs (e.g.
    /// `["127.0.0.0/8"]` for a receiver on this machine).
    pub allow: Vec<String>,
    /// The bound on a whole request, connection to last byte read.
    #[serde(with = "humantime_serde_secs")]
    pub timeout: Duration,
    /// How much of an answer is read (and discarded).
    pub max_response_bytes: usize,
}

/// Seconds as a number, for the config file.
mod humantime_serde_secs {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

impl Default for WebhookClientConfig {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            timeout: Duration::from_secs(15),
            max_response_bytes: 64 * 1024,
        }
    }
}

/// The client could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookClientError {
    /// An allow-list entry is not a CIDR.
    #[error(transparent)]
    Cidr(#[from] CidrError),
    /// reqwest refused its configuration.
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

#[derive(Debug)]
struct Policy {
    allow: Vec<Cidr>,
}

impl Policy {
    fn check(&self, ip: IpAddr) -> Result<(), String> {
        if self.allow.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        match special_address(ip) {
            Some(why) => Err(format!("{ip} is {why}; not allowed (see [webhooks] allow)")),
            None => Ok(()),
        }
    }
}

/// The resolver's refusal, found again in reqwest's error chain.
#[derive(Debug)]
struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Resolves with the system resolver, then keeps only the allowed addresses.
struct FilteringResolver {
    policy: Arc<Policy>,
}

impl reqwest::dns::Resolve for FilteringResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .take(32)
                .collect();
            let mut refused = None;
            let ok: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check(a.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refused.get_or_insert(why);
                        false
                    }
                })
                .collect();
            if ok.is_empty() {
                let why = refused.unwrap_or_else(|| format!("{host} has no address"));
                return Err(Box::new(Refused(format!("{host}: {why}"))) as _);
            }
            Ok(Box::new(ok.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The [`WebhookTransport`] of the service (see the [module docs](self)).
pub struct HttpWebhookTransport {
    client: reqwest::Client,
    policy: Arc<Policy>,
    max_response_bytes: usize,
}

impl fmt::Debug for HttpWebhookTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpWebhookTransport")
            .field("policy", &self.policy)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish_non_exhaustive()
    }
}

impl HttpWebhookTransport {
    /// A client with these settings.
    pub fn new(config: &WebhookClientConfig) -> Result<Self, WebhookClientError> {
        let allow = config
            .allow
            .iter()
            .map(|c| c.trim().parse())
            .collect::<Result<Vec<Cidr>, _>>()?;
        let policy = Arc::new(Policy { allow });
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .dns_resolver(Arc::new(FilteringResolver {
                policy: Arc::clone(&policy),
            }))
            .user_agent(concat!("converto/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            policy,
            max_response_bytes: config.max_response_bytes,
        })
    }

    fn parse(&self, url: &str) -> Result<reqwest::Url, String> {
        let u = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err("only http and https URLs".into());
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err("no credentials in the URL (sign with the secret instead)".into());
        }
        match u.host() {
            None => return Err("no host".into()),
            Some(url::Host::Ipv4(ip)) => self.policy.check(IpAddr::V4(ip))?,
            Some(url::Host::Ipv6(ip)) => self.policy.check(IpAddr::V6(ip))?,
            Some(url::Host::Domain(_)) => {}
        }
        Ok(u)
    }
}

fn refused_in(e: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Refused>() {
            return Some(r.0.clone());
        }
        source = s.source();
    }
    None
}

/// The error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out.chars().take(500).collect()
}

#[async_trait]
impl WebhookTransport for HttpWebhookTransport {
    fn check_url(&self, url: &str) -> Result<(), String> {
        self.parse(url).map(|_| ())
    }

    async fn post(&self, request: WebhookRequest) -> Result<WebhookResponse, TransportError> {
        let url = self.parse(&request.url).map_err(TransportError::Refused)?;
        let mut builder = self.client.post(url);
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        let classify = |e: reqwest::Error| {
            if let Some(why) = refused_in(&e) {
                TransportError::Refused(why)
            } else if e.is_timeout() {
                TransportError::Timeout
            } else {
                TransportError::Network(chain(&e))
            }
        };
        let mut response = builder.body(request.body).send().await.map_err(classify)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
        // Read a bounded part of the answer (so the connection can be reused), then drop it.
        let mut read = 0usize;
        while read < self.max_response_bytes {
            match response.chunk().await {
                Ok(Some(chunk)) => read = read.saturating_add(chunk.len()),
                Ok(None) | Err(_) => break,
            }
        }
        Ok(WebhookResponse {
            status,
            retry_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn special_addresses_are_refused_and_public_ones_pass() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
            "2001:db8::1",
            "2002:7f00:1::1",
            "fec0::1",
        ] {
            assert!(special_address(ip(bad)).is_some(), "{bad} passed");
        }
        for good in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(special_address(ip(good)), None, "{good} refused");
        }
    }

    #[test]
    fn the_allow_list_takes_cidrs() {
        let net: Cidr = "127.0.0.0/8".parse().expect("cidr");
        assert!(net.contains(ip("127.1.2.3")));
        assert!(!net.contains(ip("128.0.0.1")));
        assert!(!net.contains(ip("::1")));
        let one: Cidr = "::1".parse().expect("cidr");
        assert!(one.contains(ip("::1")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
        let policy = Policy { allow: vec![net] };
        assert!(policy.check(ip("127.0.0.1")).is_ok());
        assert!(policy.check(ip("10.0.0.1")).is_err());
    }

    #[test]
    fn urls_are_checked_before_any_request() {
        let t = HttpWebhookTransport::new(&WebhookClientConfig::default()).expect("client");
        assert!(t.check_url("https://example.com/hook").is_ok());
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data",
            "https://user:pw@example.com/",
            "not a url",
        ] {
            assert!(t.check_url(bad).is_err(), "{bad} passed");
        }
    }
}
