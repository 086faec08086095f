//! Failed authentications are recorded one by one up to a rate per source
//! address; past it they are answered the same way (`UNAUTHENTICATED`) but
//! only counted, and one audit record per address gives how many there
//! were and when. Anyone who can reach the port can send calls with a bad
//! token, and without this each of them would cost a durable audit record
//! (a sync of the disk): a flood could fill the disk and slow every
//! caller. A call that authenticates is never held back.
//!
//! The rate is a GCRA bucket per IP address (`governor`): `per_minute`
//! records a minute, in bursts of up to a tenth of that (at least one).
//! Counts are kept for at most [`MAX_ADDRESSES`] addresses; the failures of
//! any further address are counted together, as "other addresses".

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Mutex;

use governor::{DefaultKeyedRateLimiter, Quota};

/// Addresses whose unrecorded failures are counted one by one.
pub const MAX_ADDRESSES: usize = 10_000;

/// Default of `--audit-auth-failures-per-minute`.
pub const DEFAULT_AUTH_FAILURES_PER_MINUTE: u32 = 600;

/// Where failed calls came from, as far as they are counted apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Ip(IpAddr),
    /// The transport knew no address (an in-process caller).
    Unknown,
    /// Past [`MAX_ADDRESSES`].
    Others,
}

impl Source {
    fn of(address: Option<&str>) -> Source {
        match address.and_then(|a| a.parse::<SocketAddr>().ok()) {
            Some(a) => Source::Ip(a.ip()),
            None => Source::Unknown,
        }
    }

    /// For the audit record's `sourceAddress`.
    pub fn describe(&self) -> String {
        match self {
            Source::Ip(ip) => ip.to_string(),
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
    limiter: Option<DefaultKeyedRateLimiter<Source>>,
    per_minute: u32,
    unrecorded: Mutex<HashMap<Source, Unrecorded>>,
}

impl FailureThrottle {
    /// `per_minute` records a minute per address; 0 records every failure.
    pub fn new(per_minute: u32) -> FailureThrottle {
        let limiter = NonZeroU32::new(per_minute).map(|rate| {
            let burst = NonZeroU32::new(per_minute / 10).unwrap_or(NonZeroU32::MIN);
            DefaultKeyedRateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst))
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

    /// Whether a failed authentication from `address` (`ip:port`) gets a
    /// record of its own; if not, it is counted (at `now`, Unix seconds).
    pub fn record(&self, address: Option<&str>, now: i64) -> bool {
        let Some(limiter) = &self.limiter else {
            return true;
        };
        let source = Source::of(address);
        if limiter.check_key(&source).is_ok() {
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
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
        }
        let mut counts: Vec<(Source, Unrecorded)> =
            std::mem::take(&mut *self.unrecorded.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        counts.sort_by_key(|(_, u)| u.first);
        counts
    }

    /// Puts counts back (their records could not be made).
    pub fn restore(&self, counts: Vec<(Source, Unrecorded)>) {
        let mut unrecorded = self.unrecorded.lock().unwrap_or_else(|e| e.into_inner());
        for (source, u) in counts {
            match unrecorded.entry(source) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(u);
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    let e = o.get_mut();
                    e.calls += u.calls;
                    e.first = e.first.min(u.first);
                    e.last = e.last.max(u.last);
                }
            }
        }
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

    #[test]
    fn failures_past_the_rate_are_counted_per_address() {
        // 60 a minute: bursts of 6.
        let throttle = FailureThrottle::new(60);
        let a = Some("10.0.0.1:4000");
        let recorded = (0..20).filter(|_| throttle.record(a, 100)).count();
        assert_eq!(recorded, 6);
        // Another port of the same address shares the bucket; another
        // address has its own.
        assert!(!throttle.record(Some("10.0.0.1:4001"), 101));
        assert!(throttle.record(Some("10.0.0.2:4000"), 101));
        assert!(throttle.record(None, 101));
        let counts = throttle.take();
        assert_eq!(
            counts,
            vec![(
                Source::Ip("10.0.0.1".parse().unwrap()),
                Unrecorded {
                    calls: 15,
                    first: 100,
                    last: 101
                }
            )]
        );
        assert!(throttle.take().is_empty(), "taken once");
        throttle.restore(counts.clone());
        throttle.restore(counts);
        assert_eq!(throttle.take()[0].1.calls, 30);
    }

    #[test]
    fn zero_records_every_failure() {
        let throttle = FailureThrottle::new(0);
        assert!((0..1000).all(|_| throttle.record(Some("10.0.0.1:1"), 0)));
        assert!(throttle.take().is_empty());
    }

    #[test]
    fn past_the_address_limit_failures_are_counted_together() {
        let throttle = FailureThrottle::new(1);
        for i in 0..(MAX_ADDRESSES as u32 + 5) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            let address = format!("{ip}:1");
            assert!(throttle.record(Some(&address), 0), "first of {ip}");
            assert!(!throttle.record(Some(&address), 0), "second of {ip}");
        }
        let counts = throttle.take();
        assert_eq!(counts.len(), MAX_ADDRESSES + 1);
        let others = counts.iter().find(|(s, _)| *s == Source::Others).unwrap();
        assert_eq!(others.1.calls, 5);
    }
}
