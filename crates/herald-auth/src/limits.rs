//! Limits per client: how many streams one address and one token subject may hold, and how
//! fast one address — and one token subject, wherever it connects from — may open streams,
//! publish, read history and report lag (token buckets).
//!
//! The client's address is the TCP peer's, or, when the peer is one of `--trusted-proxies`, the
//! rightmost address of the forwarding header (`X-Forwarded-For`, or RFC 7239 `Forwarded` with
//! `--client-ip-header forwarded`) that is not a trusted proxy (a client can prepend anything to
//! that header; only what the trusted proxies appended is believed). Only the one configured
//! header is read: a proxy that writes `X-Forwarded-For` passes a client's forged `Forwarded`
//! through untouched. Loopback addresses are never
//! limited by address: they are this machine (a local proxy not declared trusted, probes, tools),
//! and limiting them would limit every client behind them at once. Behind a load balancer, list
//! its addresses in `--trusted-proxies`, or every client shares its address.
//!
//! Past a rate, a JSON endpoint answers 429 `too_many_requests` with `Retry-After`; a stream is
//! refused in band (`herald.refused`), so a native `EventSource` comes back after the delay.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use herald_config::{Limit, units};
use herald_runtime::{ApiError, ErrorCode};
use http::HeaderMap;

/// What a request does, for its rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Opening a stream.
    StreamOpen,
    /// A publish or a batch.
    Publish,
    /// A history read.
    History,
    /// A lag report.
    Lag,
}

/// `N/s`, `N/min` or `N/h`: N requests per period, in bursts of up to N.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// The bucket's size.
    pub burst: f64,
    /// Tokens added per second.
    pub per_second: f64,
}

/// Parses a rate, or `off`.
pub fn rate(s: &str) -> Result<Limit<Rate>, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(Limit(None));
    }
    let (n, period) = s
        .trim()
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a rate: write N/s, N/min or N/h, or off"))?;
    let n: u32 = n
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?}: the count must be a whole number above zero"))?;
    let seconds = match period.trim() {
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("{s:?}: unknown period {other:?}; use s, min or h")),
    };
    Ok(Limit(Some(Rate {
        burst: f64::from(n),
        per_second: f64::from(n) / seconds,
    })))
}

/// An IP network, `10.0.0.0/8` or an address alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            (IpAddr::V6(_), IpAddr::V4(v4)) => self.contains(IpAddr::V6(v4.to_ipv6_mapped())),
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6
                .to_ipv4_mapped()
                .is_some_and(|v4| self.contains(IpAddr::V4(v4))),
        }
    }
}

/// Parses `ADDR/PREFIX` or `ADDR`.
pub fn cidr(s: &str) -> Result<Cidr, String> {
    let (addr, prefix) = match s.trim().split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s.trim(), None),
    };
    let net: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or network (10.0.0.0/8)"))?;
    let max = if net.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{s:?}: the prefix must be 0 to {max}"))?,
        None => max,
    };
    Ok(Cidr { net, prefix })
}

/// The per-client limits' options.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitOptions {
    /// Proxies whose forwarding header is believed (comma-separated networks: 10.0.0.0/8); the
    /// client is the rightmost address they did not add.
    #[arg(long, env = "HERALD_TRUSTED_PROXIES", value_name = "NETWORKS", value_delimiter = ',', value_parser = cidr)]
    pub trusted_proxies: Vec<Cidr>,
    /// The header the trusted proxies write the client's address in: `x-forwarded-for` or
    /// `forwarded` (RFC 7239, its `for=` parameters).
    #[arg(
        long,
        env = "HERALD_CLIENT_IP_HEADER",
        value_name = "HEADER",
        default_value = "x-forwarded-for",
        value_enum
    )]
    pub client_ip_header: ClientIpHeader,
    /// Most open streams per client address (`off`: no limit).
    #[arg(long, env = "HERALD_MAX_STREAMS_PER_IP", value_name = "N", default_value = "1000", value_parser = units::count_limit)]
    pub max_streams_per_ip: Limit<usize>,
    /// Most open streams per token subject (`sub`; `off`: no limit).
    #[arg(long, env = "HERALD_MAX_STREAMS_PER_SUBJECT", value_name = "N", default_value = "100", value_parser = units::count_limit)]
    pub max_streams_per_subject: Limit<usize>,
    /// Stream opens per client address: N/s, N/min or N/h, in bursts of N; or off.
    #[arg(long, env = "HERALD_STREAM_OPEN_RATE", value_name = "RATE", default_value = "20/s", value_parser = rate)]
    pub stream_open_rate: Limit<Rate>,
    /// Publish requests per client address (a batch counts once); or off.
    #[arg(long, env = "HERALD_PUBLISH_RATE", value_name = "RATE", default_value = "1000/s", value_parser = rate)]
    pub publish_rate: Limit<Rate>,
    /// History reads per client address; or off.
    #[arg(long, env = "HERALD_HISTORY_RATE", value_name = "RATE", default_value = "50/s", value_parser = rate)]
    pub history_rate: Limit<Rate>,
    /// Lag reports per client address; or off.
    #[arg(long, env = "HERALD_LAG_REPORT_RATE", value_name = "RATE", default_value = "10/s", value_parser = rate)]
    pub lag_report_rate: Limit<Rate>,
}

/// The header trusted proxies name the client in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, most load balancers).
    #[value(name = "x-forwarded-for")]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

impl ClientIpHeader {
    /// The hops the header lists, first (the client's claim) to last (the nearest proxy's);
    /// `None` for a hop that is not an address (`unknown`, an obfuscated name, garbage).
    fn hops(self, headers: &HeaderMap) -> Vec<Option<IpAddr>> {
        let name = match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
        };
        let values = headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .flat_map(|v| v.split(','));
        match self {
            Self::XForwardedFor => values.map(|a| a.trim().parse().ok()).collect(),
            Self::Forwarded => values.map(forwarded_for).collect(),
        }
    }
}

/// The address of one `Forwarded` element's `for=` parameter (RFC 7239 §4, §6): `192.0.2.60`,
/// `"192.0.2.60:4711"`, `"[2001:db8::17]:4711"`; `None` for `unknown`, an obfuscated node, or an
/// element without `for=`.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let node = element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim().trim_matches('"'))
    })?;
    if let Some(v6) = node.strip_prefix('[') {
        return v6.split(']').next()?.parse().ok();
    }
    node.parse().ok().or_else(|| {
        node.rsplit_once(':')?
            .0
            .parse::<std::net::Ipv4Addr>()
            .ok()
            .map(IpAddr::V4)
    })
}

/// A bucket not touched for this long is forgotten.
const IDLE_BUCKET: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The limits, with the counts and buckets they keep.
#[derive(Debug)]
pub struct ClientLimits {
    trusted: Vec<Cidr>,
    header: ClientIpHeader,
    per_ip: Option<usize>,
    per_subject: Option<usize>,
    rates: HashMap<Kind, Rate>,
    streams: Mutex<HashMap<ClientKey, usize>>,
    buckets: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    map: HashMap<(Kind, ClientKey), Bucket>,
    swept: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ClientKey {
    Ip(IpAddr),
    Subject(String),
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self::none()
    }
}

impl ClientLimits {
    /// No limits at all.
    pub fn none() -> Self {
        Self {
            trusted: Vec::new(),
            header: ClientIpHeader::XForwardedFor,
            per_ip: None,
            per_subject: None,
            rates: HashMap::new(),
            streams: Mutex::default(),
            buckets: Mutex::default(),
        }
    }

    /// The limits `options` set.
    pub fn new(options: &LimitOptions) -> Self {
        let rates = [
            (Kind::StreamOpen, options.stream_open_rate),
            (Kind::Publish, options.publish_rate),
            (Kind::History, options.history_rate),
            (Kind::Lag, options.lag_report_rate),
        ]
        .into_iter()
        .filter_map(|(kind, Limit(rate))| rate.map(|r| (kind, r)))
        .collect();
        Self {
            trusted: options.trusted_proxies.clone(),
            header: options.client_ip_header,
            per_ip: options.max_streams_per_ip.0,
            per_subject: options.max_streams_per_subject.0,
            rates,
            streams: Mutex::default(),
            buckets: Mutex::default(),
        }
    }

    /// The client's address, or `None` where it is not limited by address (loopback).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
        let trusted = |ip: &IpAddr| self.trusted.iter().any(|c| c.contains(*ip));
        let mut client = peer;
        if trusted(&peer) {
            // Right to left, past the trusted proxies: the first other hop is the client. A hop
            // that is not an address ends the walk at the proxy that wrote it (what lies left of
            // it is anyone's claim); a list of trusted proxies only names its first as the client.
            let hops = self.header.hops(headers);
            for hop in hops.iter().rev() {
                match hop {
                    Some(ip) if trusted(ip) => client = *ip,
                    Some(ip) => {
                        client = *ip;
                        break;
                    }
                    None => break,
                }
            }
        }
        (!client.is_loopback()).then_some(client)
    }

    /// Takes one request of `kind` from `client`'s bucket: `Err(seconds to wait)` when empty.
    pub fn take(&self, kind: Kind, client: Option<IpAddr>) -> Result<(), u64> {
        match client {
            Some(ip) => self.take_for(kind, ClientKey::Ip(ip)),
            None => Ok(()),
        }
    }

    /// Takes one request of `kind` from the token subject's bucket (the same rates as per
    /// address): a subject spread over many addresses is held to them too. 429 when empty.
    pub fn take_subject(&self, kind: Kind, subject: Option<&str>) -> Result<(), ApiError> {
        match subject {
            Some(sub) => self
                .take_for(kind, ClientKey::Subject(sub.to_owned()))
                .map_err(|wait| Self::too_many(kind, wait)),
            None => Ok(()),
        }
    }

    fn take_for(&self, kind: Kind, key: ClientKey) -> Result<(), u64> {
        let Some(rate) = self.rates.get(&kind) else {
            return Ok(());
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.map.len() > 4096
            && buckets
                .swept
                .is_none_or(|t| now.duration_since(t) > IDLE_BUCKET)
        {
            buckets
                .map
                .retain(|_, b| now.duration_since(b.at) < IDLE_BUCKET);
            buckets.swept = Some(now);
        }
        let bucket = buckets.map.entry((kind, key)).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * rate.per_second;
        bucket.tokens = (bucket.tokens + refill).min(rate.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / rate.per_second).ceil().max(1.0) as u64)
        }
    }

    /// The refusal for a request over its rate.
    pub fn too_many(kind: Kind, retry_after: u64) -> ApiError {
        // (The message says "client": an address or a token subject.)
        let what = match kind {
            Kind::StreamOpen => "stream opens",
            Kind::Publish => "publishes",
            Kind::History => "history reads",
            Kind::Lag => "lag reports",
        };
        ApiError::new(
            ErrorCode::TooManyRequests,
            format!("too many {what} from this client; retry in {retry_after} s"),
        )
        .retry_after(retry_after)
    }

    /// Counts a stream for `client` and `subject` while the slot lives; refused when either holds
    /// its limit.
    pub fn open_stream(
        self: &Arc<Self>,
        client: Option<IpAddr>,
        subject: Option<&str>,
    ) -> Result<StreamSlot, ApiError> {
        let mut keys = Vec::with_capacity(2);
        if let (Some(ip), Some(max)) = (client, self.per_ip) {
            keys.push((ClientKey::Ip(ip), max, "this address"));
        }
        if let (Some(sub), Some(max)) = (subject, self.per_subject) {
            keys.push((
                ClientKey::Subject(sub.to_owned()),
                max,
                "this token's subject",
            ));
        }
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        for (key, max, who) in &keys {
            if streams.get(key).copied().unwrap_or(0) >= *max {
                return Err(ApiError::new(
                    ErrorCode::TooManyConnections,
                    format!("{who} holds its limit of {max} streams"),
                )
                .retry_after(5));
            }
        }
        for (key, _, _) in &keys {
            *streams.entry(key.clone()).or_insert(0) += 1;
        }
        Ok(StreamSlot {
            limits: Arc::clone(self),
            keys: keys.into_iter().map(|(k, _, _)| k).collect(),
        })
    }
}

/// One stream counted against its client's limits; uncounted on drop.
#[derive(Debug)]
pub struct StreamSlot {
    limits: Arc<ClientLimits>,
    keys: Vec<ClientKey>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut streams = self
            .limits
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for key in self.keys.drain(..) {
            if let Some(n) = streams.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    streams.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn rates_and_networks_parse() {
        assert_eq!(
            rate("20/s").unwrap(),
            Limit(Some(Rate {
                burst: 20.0,
                per_second: 20.0
            }))
        );
        assert_eq!(rate("60/min").unwrap().0.unwrap().per_second, 1.0);
        assert_eq!(rate("off").unwrap(), Limit(None));
        for bad in ["20", "0/s", "x/s", "5/day", ""] {
            assert!(rate(bad).is_err(), "{bad}");
        }
        let net = cidr("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(
            cidr("fc00::/7")
                .unwrap()
                .contains("fd12::1".parse().unwrap())
        );
        assert!(
            cidr("127.0.0.1")
                .unwrap()
                .contains("127.0.0.1".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x"] {
            assert!(cidr(bad).is_err(), "{bad}");
        }
    }

    fn limits(trusted: &[&str]) -> ClientLimits {
        let mut o: LimitOptions = herald_config::defaults();
        o.trusted_proxies = trusted.iter().map(|t| cidr(t).unwrap()).collect();
        o.stream_open_rate = rate("3/s").unwrap();
        o.max_streams_per_ip = Limit(Some(2));
        o.max_streams_per_subject = Limit(Some(1));
        ClientLimits::new(&o)
    }

    #[test]
    fn the_client_is_the_peer_or_what_trusted_proxies_say() {
        let l = limits(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(l.client(ip("203.0.113.9"), &h), Some(ip("203.0.113.9")));
        assert_eq!(
            l.client(ip("127.0.0.1"), &h),
            None,
            "loopback is not limited"
        );
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, 198.51.100.7, 10.0.0.5"),
        );
        // From a trusted proxy: the rightmost address it did not add; a forged prefix is ignored.
        assert_eq!(l.client(ip("10.1.1.1"), &h), Some(ip("198.51.100.7")));
        // From anyone else, the header is not believed.
        assert_eq!(l.client(ip("203.0.113.9"), &h), Some(ip("203.0.113.9")));
        // A hop that is not an address stops the walk at the proxy that wrote it.
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("198.51.100.7, unknown, 10.0.0.5"),
        );
        assert_eq!(l.client(ip("10.1.1.1"), &h), Some(ip("10.0.0.5")));
        // Only the configured header is read: X-Forwarded-For here, a forged Forwarded ignored.
        h.remove("x-forwarded-for");
        h.insert("forwarded", HeaderValue::from_static("for=198.51.100.7"));
        assert_eq!(l.client(ip("10.1.1.1"), &h), Some(ip("10.1.1.1")));
    }

    #[test]
    fn forwarded_names_the_client_when_configured() {
        let mut o: LimitOptions = herald_config::defaults();
        o.trusted_proxies = vec![cidr("10.0.0.0/8").unwrap()];
        o.client_ip_header = ClientIpHeader::Forwarded;
        let l = ClientLimits::new(&o);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut h = HeaderMap::new();
        h.append(
            "forwarded",
            HeaderValue::from_static("for=1.2.3.4, for=\"[2001:db8:cafe::17]:4711\";proto=https"),
        );
        h.append(
            "forwarded",
            HeaderValue::from_static("For=\"10.0.0.7:80\";by=10.0.0.1"),
        );
        assert_eq!(l.client(ip("10.1.1.1"), &h), Some(ip("2001:db8:cafe::17")));
        h.insert(
            "forwarded",
            HeaderValue::from_static("for=198.51.100.7:4711"),
        );
        assert_eq!(l.client(ip("10.1.1.1"), &h), Some(ip("198.51.100.7")));
        h.insert(
            "forwarded",
            HeaderValue::from_static("for=1.2.3.4, for=_hidden"),
        );
        assert_eq!(l.client(ip("10.1.1.1"), &h), Some(ip("10.1.1.1")));
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
        assert_eq!(
            l.client(ip("10.1.1.1"), &h),
            Some(ip("10.1.1.1")),
            "X-Forwarded-For is not read when Forwarded is the configured header"
        );
    }

    #[test]
    fn buckets_refill_and_stream_counts_come_back() {
        let l = Arc::new(limits(&[]));
        let ip = Some("203.0.113.9".parse().unwrap());
        for _ in 0..3 {
            assert!(l.take(Kind::StreamOpen, ip).is_ok());
        }
        assert_eq!(l.take(Kind::StreamOpen, ip), Err(1));
        assert!(
            l.take(Kind::StreamOpen, None).is_ok(),
            "unlimited without an address"
        );
        assert!(
            l.take(Kind::Publish, ip).is_ok(),
            "each kind has its own bucket"
        );
        for _ in 0..3 {
            assert!(l.take_subject(Kind::StreamOpen, Some("alice")).is_ok());
        }
        let e = l.take_subject(Kind::StreamOpen, Some("alice")).unwrap_err();
        assert_eq!(
            (e.code, e.retry_after),
            (ErrorCode::TooManyRequests, Some(1))
        );
        assert!(l.take_subject(Kind::StreamOpen, Some("bob")).is_ok());
        assert!(l.take_subject(Kind::StreamOpen, None).is_ok());
        std::thread::sleep(Duration::from_millis(400));
        assert!(l.take(Kind::StreamOpen, ip).is_ok(), "a token came back");

        let a = l.open_stream(ip, None).unwrap();
        let _b = l.open_stream(ip, None).unwrap();
        assert_eq!(
            l.open_stream(ip, None).unwrap_err().code,
            ErrorCode::TooManyConnections
        );
        drop(a);
        let _c = l.open_stream(ip, None).unwrap();
        let other = Some("203.0.113.10".parse().unwrap());
        let _s = l.open_stream(other, Some("alice")).unwrap();
        assert!(
            l.open_stream(None, Some("alice")).is_err(),
            "one stream per subject"
        );
        assert!(l.open_stream(None, Some("bob")).is_ok());
    }
}
