//! Two small rate limiters: a token bucket for work that costs something (an outbound call
//! carrying the AppSecret), and a throttle for log warnings an attacker can trigger at will
//! (one line per interval, with the count of what it stands for, instead of one per event).
//!
//! Both take `now` as an argument so they are tested without sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `capacity` tokens at most, refilled at `per_second`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_second: u32, capacity: u32, now: Instant) -> TokenBucket {
        let capacity = f64::from(capacity.max(1));
        TokenBucket {
            tokens: capacity,
            capacity,
            per_second: f64::from(per_second),
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How often a throttled warning is written at most.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Lets one warning through per interval and counts the rest.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    /// When the last line was let through, and how many events came since (including it).
    state: Mutex<(Option<Instant>, u64)>,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(WARNING_INTERVAL)
    }
}

impl Throttle {
    pub fn new(interval: Duration) -> Throttle {
        Throttle {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// Records one event. `Some(n)`: write the line now, standing for `n` events (this one and
    /// those suppressed since the previous line); `None`: stay quiet.
    pub fn hit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, count) = &mut *state;
        *count += 1;
        let due = last.is_none_or(|at| now.saturating_duration_since(at) >= self.interval);
        if due {
            *last = Some(now);
            Some(std::mem::take(count))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2, 3, t0);
        assert!((0..3).all(|_| b.take(t0)), "the burst");
        assert!(!b.take(t0), "empty");
        let half = t0 + Duration::from_millis(500);
        assert!(b.take(half), "one token after 0.5 s at 2/s");
        assert!(!b.take(half));
        // Never more than the capacity, however long it waited.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 3);
        // A clock going backwards takes nothing and grants nothing extra.
        assert!(!b.take(t0));
    }

    #[test]
    fn throttle_writes_one_line_per_interval_with_the_count() {
        let t0 = Instant::now();
        let th = Throttle::new(Duration::from_secs(10));
        assert_eq!(th.hit(t0), Some(1), "the first event is written at once");
        for i in 1..=999 {
            assert_eq!(th.hit(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(
            th.hit(t0 + Duration::from_secs(10)),
            Some(1000),
            "the next line stands for everything since"
        );
        assert_eq!(th.hit(t0 + Duration::from_secs(11)), None);
        assert_eq!(th.hit(t0 + Duration::from_secs(30)), Some(2));
    }
}
