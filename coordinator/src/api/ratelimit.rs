//! Services' `rate_limits`, as dstack's gateway applies them (nginx `limit_req ... burst=B nodelay`):
//! per key (the client's IP address, or a header's value), the limit with the longest `prefix` that
//! the request's path (as the service sees it) starts with; `rps` rounded to requests per minute as
//! dstack does, tracked to the nanosecond (`rps: 5` is one request every 200 ms), and `burst` more
//! let through at once. A request over it is answered `429 Too Many Requests` with `Retry-After`,
//! before the service's auth is checked and before any replica is picked. A request whose key header
//! is missing or empty is not counted (as in nginx).
//!
//! The bucket math is [`governor`]'s (GCRA); the keys live in [`BoundedStore`], at most
//! [`MAX_KEYS`] per limit: when full, keys whose bucket is full again are dropped first, then the
//! one that would refill soonest. Keys are hashed, so a long header value costs nothing more.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::http::HeaderMap;
use axum::serve::IncomingStream;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::{Quota, RateLimiter};

use corral_proto::config::{RateLimit, RateLimitKey};
use corral_proto::ids::RunId;

/// Keys tracked per limit (nginx's 10 MB zone holds about 80,000 IPv6 ones; this is 16,384 × 16
/// bytes).
pub const MAX_KEYS: usize = 16_384;
/// Services whose limiters are kept (each deployment of a service has its own).
const MAX_SERVICES: usize = 4096;

/// The address a TLS connection came from, for handlers (`ConnectInfo<PeerAddr>`).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::SocketAddr);

impl Connected<IncomingStream<'_, super::tls::TlsListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, super::tls::TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// The client's address as the connection's listener gave it: `ConnectInfo<PeerAddr>` over TLS,
/// axum's own `ConnectInfo<SocketAddr>` over plain TCP.
pub fn peer(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    use axum::extract::ConnectInfo;
    extensions
        .get::<ConnectInfo<PeerAddr>>()
        .map(|c| c.0.0.ip())
        .or_else(|| extensions.get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip()))
}

/// A request over a limit: how long until it would pass, and which limit it met.
#[derive(Clone, Debug, PartialEq)]
pub struct Limited {
    pub retry_after: Duration,
    pub prefix: String,
    pub rps: f64,
    pub burst: u64,
}

impl Limited {
    /// The `Retry-After` header's value: whole seconds, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

type Limiter<C> = RateLimiter<u64, BoundedStore, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// One `rate_limits` entry with its buckets.
struct Limit<C: Clock + Clone> {
    spec: RateLimit,
    /// `None`: a rate too high to limit (more than one request a nanosecond).
    limiter: Option<Limiter<C>>,
}

/// Every service's limiters, by deployment.
pub struct RateLimits<C: Clock + Clone = DefaultClock> {
    clock: C,
    hasher: std::hash::RandomState,
    services: Mutex<HashMap<RunId, Arc<Vec<Limit<C>>>>>,
}

impl Default for RateLimits<DefaultClock> {
    fn default() -> Self {
        Self::with_clock(DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    pub fn with_clock(clock: C) -> Self {
        Self { clock, hasher: std::hash::RandomState::new(), services: Mutex::default() }
    }

    /// Counts a request to the service deployment `run` (whose `rate_limits` are `limits`) for
    /// `path`, from `peer`; `Err` when it is over the limit that applies.
    pub fn check(
        &self,
        run: &RunId,
        limits: &[RateLimit],
        path: &str,
        peer: Option<IpAddr>,
        headers: &HeaderMap,
    ) -> Result<(), Limited> {
        let Some(i) = longest_prefix(limits, path) else { return Ok(()) };
        let service = self.service(run, limits);
        let Some(limit) = service.get(i) else { return Ok(()) };
        let key = match &limit.spec.key {
            RateLimitKey::IpAddress => match peer {
                Some(ip) => self.hasher.hash_one(ip),
                // Served without the peer's address (in-process tests): one bucket for all.
                None => 0,
            },
            RateLimitKey::Header(name) => match headers.get(name.as_str()).map(|v| v.as_bytes()) {
                Some(v) if !v.is_empty() => self.hasher.hash_one(v),
                _ => return Ok(()),
            },
        };
        let Some(limiter) = &limit.limiter else { return Ok(()) };
        if limiter.len() >= MAX_KEYS {
            limiter.retain_recent();
        }
        limiter.check_key(&key).map_err(|not_until| Limited {
            retry_after: not_until.wait_time_from(self.clock.now()),
            prefix: limit.spec.prefix.clone(),
            rps: limit.spec.rps,
            burst: limit.spec.burst,
        })
    }

    /// The limiters of a deployment, made on its first request.
    fn service(&self, run: &RunId, limits: &[RateLimit]) -> Arc<Vec<Limit<C>>> {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = services.get(run) {
            return s.clone();
        }
        if services.len() >= MAX_SERVICES {
            // Deployments come and go; a busy one that loses its buckets starts them full again.
            services.clear();
        }
        let made: Vec<Limit<C>> = limits
            .iter()
            .map(|spec| Limit {
                spec: spec.clone(),
                limiter: quota(spec).map(|q| RateLimiter::new(q, BoundedStore::new(MAX_KEYS), self.clock.clone())),
            })
            .collect();
        let made = Arc::new(made);
        services.insert(run.clone(), made.clone());
        made
    }
}

/// The limit whose prefix is the longest one `path` starts with (nginx's prefix locations).
fn longest_prefix(limits: &[RateLimit], path: &str) -> Option<usize> {
    limits
        .iter()
        .enumerate()
        .filter(|(_, l)| path.starts_with(l.prefix.as_str()))
        .max_by_key(|(_, l)| l.prefix.len())
        .map(|(i, _)| i)
}

/// dstack's rate in nginx's terms: `round(rps × 60)` requests a minute, one every `60 s / that`,
/// with `burst` more at once.
fn quota(spec: &RateLimit) -> Option<Quota> {
    let per_minute = (spec.rps * 60.0).round().max(1.0);
    let period = Duration::from_secs_f64(60.0 / per_minute);
    let burst = u32::try_from(spec.burst.saturating_add(1)).ok().and_then(NonZeroU32::new)?;
    Some(Quota::with_period(period)?.allow_burst(burst))
}

/// A keyed store for [`governor`] with a bound: at most `cap` keys.
pub struct BoundedStore {
    cap: usize,
    /// Each key's theoretical arrival time (GCRA), from the limiter's start.
    tats: Mutex<HashMap<u64, Nanos>>,
}

impl BoundedStore {
    pub fn new(cap: usize) -> Self {
        Self { cap: cap.max(1), tats: Mutex::default() }
    }
}

impl StateStore for BoundedStore {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut tats = self.tats.lock().unwrap_or_else(|e| e.into_inner());
        let previous = tats.get(key).copied();
        // Refused: nothing changes (the bucket stays as it was).
        let (outcome, tat) = f(previous)?;
        if previous.is_none() && tats.len() >= self.cap {
            // Full even after the limiter dropped the refilled keys: drop the one whose bucket
            // refills soonest, the closest to a fresh one.
            if let Some(oldest) = tats.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                tats.remove(&oldest);
            }
        }
        tats.insert(*key, tat);
        Ok(outcome)
    }
}

impl ShrinkableKeyedStateStore<u64> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.tats.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, t| *t > drop_below);
    }

    fn len(&self) -> usize {
        self.tats.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limit(prefix: &str, rps: f64, burst: u64) -> RateLimit {
        RateLimit { prefix: prefix.into(), key: RateLimitKey::IpAddress, rps, burst }
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    struct Case {
        clock: FakeRelativeClock,
        limits: RateLimits<FakeRelativeClock>,
        run: RunId,
    }

    impl Case {
        fn new() -> Self {
            let clock = FakeRelativeClock::default();
            Self { limits: RateLimits::with_clock(clock.clone()), clock, run: RunId("svc".into()) }
        }

        fn check(&self, specs: &[RateLimit], path: &str, peer: Option<IpAddr>) -> Result<(), Limited> {
            self.limits.check(&self.run, specs, path, peer, &HeaderMap::new())
        }

        /// How many of `n` requests at this instant pass.
        fn passed(&self, specs: &[RateLimit], n: usize) -> usize {
            (0..n).filter(|_| self.check(specs, "/", ip(1)).is_ok()).count()
        }
    }

    #[test]
    fn rps_alone_lets_one_request_through_per_interval() {
        let c = Case::new();
        let specs = [limit("/", 5.0, 0)];
        assert_eq!(c.passed(&specs, 3), 1, "rps 5 is one request every 200 ms");
        c.clock.advance(Duration::from_millis(199));
        assert!(c.check(&specs, "/", ip(1)).is_err());
        c.clock.advance(Duration::from_millis(1));
        assert!(c.check(&specs, "/", ip(1)).is_ok());
    }

    #[test]
    fn burst_lets_that_many_more_through_at_once() {
        let c = Case::new();
        let specs = [limit("/", 5.0, 4)];
        assert_eq!(c.passed(&specs, 6), 5, "the 6th request in the same instant is refused");
        let e = c.check(&specs, "/", ip(1)).expect_err("still over");
        assert_eq!(e.retry_after, Duration::from_millis(200));
        assert_eq!(e.retry_after_secs(), 1);
        // Over a second the bucket refills by 5: a second burst of 5 passes.
        c.clock.advance(Duration::from_secs(1));
        assert_eq!(c.passed(&specs, 6), 5);
    }

    #[test]
    fn slow_rates_round_to_requests_a_minute_and_wait_long() {
        let c = Case::new();
        let specs = [limit("/", 1.0 / 60.0, 0)];
        assert!(c.check(&specs, "/", ip(1)).is_ok());
        let e = c.check(&specs, "/", ip(1)).expect_err("one a minute");
        assert_eq!(e.retry_after_secs(), 60);
        // 2.5 rps is 150 a minute: one every 400 ms.
        let c = Case::new();
        let specs = [limit("/", 2.5, 0)];
        assert!(c.check(&specs, "/", ip(1)).is_ok());
        assert_eq!(c.check(&specs, "/", ip(1)).expect_err("over").retry_after, Duration::from_millis(400));
    }

    #[test]
    fn each_client_has_its_own_bucket() {
        let c = Case::new();
        let specs = [limit("/", 1.0, 0)];
        assert!(c.check(&specs, "/", ip(1)).is_ok());
        assert!(c.check(&specs, "/", ip(1)).is_err());
        assert!(c.check(&specs, "/", ip(2)).is_ok(), "another address is not held back");
    }

    #[test]
    fn the_longest_matching_prefix_decides_and_others_are_free() {
        let c = Case::new();
        let specs = [limit("/api/", 100.0, 100), limit("/api/auth/", 1.0, 0)];
        assert!(c.check(&specs, "/api/auth/login", ip(1)).is_ok());
        let e = c.check(&specs, "/api/auth/login", ip(1)).expect_err("the auth limit applies");
        assert_eq!(e.prefix, "/api/auth/");
        assert!(c.check(&specs, "/api/items", ip(1)).is_ok(), "the wider limit has room");
        for _ in 0..10 {
            assert!(c.check(&specs, "/static/app.js", ip(1)).is_ok(), "no prefix matches: no limit");
        }
    }

    #[test]
    fn a_header_key_counts_by_value_and_skips_requests_without_it() {
        let c = Case::new();
        let specs =
            [RateLimit { prefix: "/".into(), key: RateLimitKey::Header("X-Api-Key".into()), rps: 1.0, burst: 0 }];
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-api-key", v.parse().expect("a header value"));
            h
        };
        assert!(c.limits.check(&c.run, &specs, "/", ip(1), &with("a")).is_ok());
        assert!(c.limits.check(&c.run, &specs, "/", ip(2), &with("a")).is_err(), "same key, another address");
        assert!(c.limits.check(&c.run, &specs, "/", ip(1), &with("b")).is_ok());
        for _ in 0..5 {
            assert!(c.limits.check(&c.run, &specs, "/", ip(1), &HeaderMap::new()).is_ok(), "no key: not counted");
        }
    }

    #[test]
    fn keys_are_bounded_and_refilled_ones_go_first() {
        let clock = FakeRelativeClock::default();
        let q = quota(&limit("/", 1.0, 0)).expect("a quota");
        let limiter: Limiter<FakeRelativeClock> = RateLimiter::new(q, BoundedStore::new(3), clock.clone());
        for k in 0..3u64 {
            assert!(limiter.check_key(&k).is_ok());
        }
        assert!(limiter.check_key(&0).is_err());
        // A fourth key in a full store pushes out one; the store never holds more than 3.
        assert!(limiter.check_key(&3).is_ok());
        assert_eq!(limiter.len(), 3);
        // Once their buckets refill, retain_recent drops them all.
        clock.advance(Duration::from_secs(2));
        limiter.retain_recent();
        assert_eq!(limiter.len(), 0);
    }

    #[test]
    fn deployments_are_bounded() {
        let c = Case::new();
        let specs = [limit("/", 1.0, 0)];
        for i in 0..(MAX_SERVICES + 10) {
            let _ = c.limits.check(&RunId(format!("r{i}")), &specs, "/", ip(1), &HeaderMap::new());
        }
        assert!(c.limits.services.lock().expect("lock").len() <= MAX_SERVICES);
    }
}
