//! Failed authentications are recorded one by one up to a rate per source
//! address; past it they are answered the same way (`UNAUTHENTICATED`) but
//! only counted, and one audit record per address gives how many there
//! were and when. Anyone who can reach the port can send calls with a bad
//! token, and without this each of them would cost a durable audit record
//! (a sync of the disk): a flood could fill the disk and slow every
//! caller. A call that authenticates is never held back.
//!
//! The rate is a GCRA bucket per source (`governor`): `per_minute` records
//! a minute, in bursts of up to a tenth of that (at least one). A source is
//! an IPv4 address or an IPv6 /64 (one host has a whole /64 to send from);
//! for a credential a service forwards (table-service acting for its
//! caller), the address the service names in `x-forwarded-for`, kept apart
//! from direct calls, so one caller's bad tokens do not use up the
//! service's allowance for everyone. All sources together get ten times the
//! rate of one, so many addresses cannot multiply it without bound either.
//! Counts are kept for at most [`MAX_ADDRESSES`] sources; the failures of
//! any further source are counted together, as "other addresses".
//!
//! Counts not yet recorded are lost if the process dies (at most the last
//! few seconds'); the first failure of every source always has a record of
//! its own.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Mutex;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

use super::Credentials;

/// Addresses whose unrecorded failures are counted one by one.
pub const MAX_ADDRESSES: usize = 10_000;

/// Default of `--audit-auth-failures-per-minute`.
pub const DEFAULT_AUTH_FAILURES_PER_MINUTE: u32 = 600;

/// Where failed calls came from, as far as they are counted apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address or an IPv6 /64.
    Ip(IpAddr),
    /// The same, named by a service that forwarded the credential.
    Forwarded(IpAddr),
    /// The transport knew no address (an in-process caller).
    Unknown,
    /// Past [`MAX_ADDRESSES`].
    Others,
}

/// An IPv4 address as it is; an IPv6 address's /64.
fn network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

impl Source {
    /// The source of a call whose authentication failed: `forwarded` when
    /// it was the credential a service forwarded that failed.
    pub fn of(creds: &Credentials, forwarded: bool) -> Source {
        let direct = || match creds
            .source_address
            .as_deref()
            .and_then(|a| a.parse::<SocketAddr>().ok())
        {
            Some(a) => Source::Ip(network(a.ip())),
            None => Source::Unknown,
        };
        if !forwarded {
            return direct();
        }
        match creds
            .forwarded_for
            .as_deref()
            .and_then(|a| a.parse::<IpAddr>().ok())
        {
            Some(ip) => Source::Forwarded(network(ip)),
            None => direct(),
        }
    }

    /// For the audit record's `source_address`.
    pub fn describe(&self) -> String {
        let net = |ip: &IpAddr| match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("{v6}/64"),
        };
        match self {
            Source::Ip(ip) => net(ip),
            Source::Forwarded(ip) => format!("{} (forwarded by a service)", net(ip)),
            Source::Unknown => "unknown".into(),
            Source::Others => "other addresses".into(),
        }
    }
}

/// Failed authentications of one source that have no record of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unrecorded {
    pub calls: u64,
    /// Unix seconds of the first and the last.
    pub first: i64,
    pub last: i64,
}

/// See the module documentation.
pub struct FailureThrottle {
    /// `None`: every failure is recorded.
    limiter: Option<(DefaultKeyedRateLimiter<Source>, DefaultDirectRateLimiter)>,
    per_minute: u32,
    unrecorded: Mutex<HashMap<Source, Unrecorded>>,
}

impl FailureThrottle {
    /// `per_minute` records a minute per address; 0 records every failure.
    pub fn new(per_minute: u32) -> FailureThrottle {
        let limiter = NonZeroU32::new(per_minute).map(|rate| {
            let burst = NonZeroU32::new(per_minute / 10).unwrap_or(NonZeroU32::MIN);
            let all = rate.saturating_mul(NonZeroU32::new(10).expect("ten"));
            (
                DefaultKeyedRateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst)),
                DefaultDirectRateLimiter::direct(Quota::per_minute(all).allow_burst(rate)),
            )
        });
        FailureThrottle {
            limiter,
            per_minute,
            unrecorded: Mutex::new(HashMap::new()),
        }
    }

    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    /// Whether a failed authentication from `source` gets a record of its
    /// own; if not, it is counted (at `now`, Unix seconds).
    pub fn record(&self, source: Source, now: i64) -> bool {
        let Some((each, all)) = &self.limiter else {
            return true;
        };
        if each.check_key(&source).is_ok() && all.check().is_ok() {
            return true;
        }
        let mut unrecorded = self.unrecorded.lock().unwrap_or_else(|e| e.into_inner());
        let source = if unrecorded.len() >= MAX_ADDRESSES && !unrecorded.contains_key(&source) {
            Source::Others
        } else {
            source
        };
        let entry = unrecorded.entry(source).or_insert(Unrecorded {
            calls: 0,
            first: now,
            last: now,
        });
        entry.calls += 1;
        entry.last = now;
        false
    }

    /// Takes the counts so far, and forgets the buckets of addresses that
    /// have not failed lately.
    pub fn take(&self) -> Vec<(Source, Unrecorded)> {
        if let Some((each, _)) = &self.limiter {
            each.retain_recent();
        }
        let mut counts: Vec<(Source, Unrecorded)> =
            std::mem::take(&mut *self.unrecorded.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        counts.sort_by_key(|(_, u)| u.first);
        counts
    }
}

/// Unix seconds as an RFC 3339 UTC time.
pub fn utc(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{seconds} (Unix time)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(address: &str) -> Source {
        Source::of(
            &Credentials {
                source_address: Some(address.into()),
                ..Credentials::default()
            },
            false,
        )
    }

    #[test]
    fn sources_are_addresses_and_ipv6_networks() {
        assert_eq!(direct("10.0.0.1:4000"), direct("10.0.0.1:4001"));
        assert_ne!(direct("10.0.0.1:4000"), direct("10.0.0.2:4000"));
        // One host has a whole /64.
        assert_eq!(
            direct("[2001:db8:1:2::1]:1"),
            direct("[2001:db8:1:2:ffff::9]:2")
        );
        assert_ne!(direct("[2001:db8:1:2::1]:1"), direct("[2001:db8:1:3::1]:1"));
        assert_eq!(
            direct("[2001:db8:1:2::1]:1").describe(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(direct("[::ffff:10.0.0.1]:1"), direct("10.0.0.1:9"));
        assert_eq!(direct("not an address"), Source::Unknown);
        // A forwarded credential's failure counts against the address the
        // service names, apart from direct calls; without one, against the
        // service's own.
        let via = |forwarded_for: Option<&str>| {
            Source::of(
                &Credentials {
                    source_address: Some("10.9.9.9:50000".into()),
                    forwarded_for: forwarded_for.map(str::to_string),
                    ..Credentials::default()
                },
                true,
            )
        };
        assert_eq!(
            via(Some("192.0.2.7")),
            Source::Forwarded("192.0.2.7".parse().unwrap())
        );
        assert_eq!(
            via(Some("192.0.2.7")).describe(),
            "192.0.2.7 (forwarded by a service)"
        );
        assert_eq!(via(None), direct("10.9.9.9:1"));
        assert_eq!(via(Some("garbage")), direct("10.9.9.9:1"));
    }

    #[test]
    fn failures_past_the_rate_are_counted_per_source() {
        // 6 a minute: bursts of 1, then one per 10 s (longer than the test).
        let throttle = FailureThrottle::new(6);
        let a = direct("10.0.0.1:4000");
        let recorded = (0..20).filter(|_| throttle.record(a, 100)).count();
        assert_eq!(recorded, 1);
        assert!(!throttle.record(direct("10.0.0.1:4001"), 101));
        assert!(throttle.record(direct("10.0.0.2:4000"), 101));
        assert!(throttle.record(Source::Unknown, 101));
        let counts = throttle.take();
        assert_eq!(
            counts,
            vec![(
                Source::Ip("10.0.0.1".parse().unwrap()),
                Unrecorded {
                    calls: 20,
                    first: 100,
                    last: 101
                }
            )]
        );
        assert!(throttle.take().is_empty(), "taken once");
    }

    #[test]
    fn all_sources_together_get_ten_times_the_rate_of_one() {
        // 10 a minute each (bursts of 1); 100 a minute for all (bursts of 10).
        let throttle = FailureThrottle::new(10);
        let recorded = (0..50u32)
            .filter(|i| {
                let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
                throttle.record(direct(&format!("{ip}:1")), 0)
            })
            .count();
        assert_eq!(recorded, 10);
        assert_eq!(throttle.take().len(), 40);
    }

    #[test]
    fn zero_records_every_failure() {
        let throttle = FailureThrottle::new(0);
        assert!((0..1000).all(|_| throttle.record(direct("10.0.0.1:1"), 0)));
        assert!(throttle.take().is_empty());
    }

    #[test]
    fn past_the_address_limit_failures_are_counted_together() {
        let throttle = FailureThrottle::new(6);
        for i in 0..(MAX_ADDRESSES as u32 + 5) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            let source = direct(&format!("{ip}:1"));
            // Until one is counted (the first few sources get a record of
            // their own first).
            while throttle.record(source, 0) {}
        }
        let counts = throttle.take();
        assert_eq!(counts.len(), MAX_ADDRESSES + 1);
        let others = counts.iter().find(|(s, _)| *s == Source::Others).unwrap();
        assert_eq!(others.1.calls, 5);
    }
}
