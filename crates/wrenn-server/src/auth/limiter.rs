//! A keyed token-bucket rate limiter with bounded memory, for login and signup: each key (a
//! client address, an email) has a bucket of `burst` tokens refilled at `per_minute`; an
//! attempt takes one, and an empty bucket answers how long until the next token. At most
//! `max_keys` buckets are kept: when full, buckets that have refilled (idle keys, which
//! would start full anyway) are dropped; if none has, a new key is refused until one has,
//! so a flood of new keys cannot grow memory nor reset anyone's bucket. No I/O, no HTTP.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many attempts a key gets: `burst` at once, then `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u32,
    pub per_minute: u32,
}

impl Rate {
    /// Refill in tokens per second.
    fn per_sec(self) -> f64 {
        f64::from(self.per_minute.max(1)) / 60.0
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One rate for many keys.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    max_keys: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        Self {
            rate,
            max_keys: max_keys.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The bucket's tokens at `now`.
    fn refilled(&self, b: Bucket, now: Instant) -> f64 {
        let gained = now.saturating_duration_since(b.at).as_secs_f64() * self.rate.per_sec();
        (b.tokens + gained).min(f64::from(self.rate.burst))
    }

    /// How long until a bucket with `tokens` has one.
    fn wait(&self, tokens: f64) -> Duration {
        Duration::from_secs_f64(((1.0 - tokens).max(0.0) / self.rate.per_sec()).max(0.001))
    }

    /// Takes a token for `key`; `Err(wait)` if it has none (nothing taken).
    pub fn take(&self, key: &str) -> Result<(), Duration> {
        self.take_at(key, Instant::now())
    }

    /// Whether `key` has a token, without taking it.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        match buckets.get(key) {
            Some(b) => {
                let tokens = self.refilled(*b, now);
                if tokens >= 1.0 {
                    Ok(())
                } else {
                    Err(self.wait(tokens))
                }
            }
            None => Ok(()),
        }
    }

    fn take_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.rate.burst == 0 {
            return Err(self.wait(0.0));
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= self.max_keys {
            let full = f64::from(self.rate.burst);
            buckets.retain(|_, b| self.refilled(*b, now) < full);
            if buckets.len() >= self.max_keys {
                // Every kept key is still limited: the newcomer waits for the soonest refill
                // of one token, at most.
                return Err(self.wait(0.0));
            }
        }
        let b = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: f64::from(self.rate.burst),
            at: now,
        });
        let tokens = self.refilled(*b, now);
        if tokens < 1.0 {
            b.tokens = tokens;
            b.at = now;
            return Err(self.wait(tokens));
        }
        b.tokens = tokens - 1.0;
        b.at = now;
        Ok(())
    }

    /// How many keys are tracked (for tests).
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        burst: 3,
        per_minute: 60,
    };

    #[test]
    fn a_burst_then_one_per_refill() {
        let l = RateLimiter::new(RATE, 10);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.take_at("a", t0).is_ok());
        }
        let wait = l.take_at("a", t0).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        // Another key has its own bucket.
        assert!(l.take_at("b", t0).is_ok());
        // One token a second.
        assert!(l.take_at("a", t0 + Duration::from_millis(1010)).is_ok());
        assert!(l.take_at("a", t0 + Duration::from_millis(1020)).is_err());
    }

    #[test]
    fn memory_is_bounded_and_idle_keys_make_room() {
        let l = RateLimiter::new(RATE, 2);
        let t0 = Instant::now();
        assert!(l.take_at("a", t0).is_ok());
        assert!(l.take_at("b", t0).is_ok());
        // Full of keys still limited: a new one waits.
        assert!(l.take_at("c", t0).is_err());
        assert_eq!(l.tracked(), 2);
        // Once a and b have refilled they are dropped for c.
        assert!(l.take_at("c", t0 + Duration::from_secs(2)).is_ok());
        assert!(l.tracked() <= 2);
    }
}
