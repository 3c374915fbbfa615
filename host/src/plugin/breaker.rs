//! The circuit breaker of each plugin version: a plugin whose calls keep running out of time or
//! fuel holds a core for its whole deadline on every call, so after a few such calls in a row
//! the host stops calling it for a while and answers with its fail mode instead. After the pause
//! one call probes it: an answer closes the breaker, another costly failure pauses it for twice
//! as long (up to a ceiling).
//!
//! Pure state over the time it is given (the request's time, from the service's clock); no I/O.

use std::time::Duration;

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Costly failures (deadline, fuel) in a row that open the breaker; 0 turns breakers off.
    pub trip_after: u32,
    /// The first pause; each failed probe doubles it.
    pub first_pause: Duration,
    /// The longest pause.
    pub max_pause: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            trip_after: 3,
            first_pause: Duration::from_secs(10),
            max_pause: Duration::from_secs(300),
        }
    }
}

/// Whether a call may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Run it.
    Call,
    /// Do not run it: the plugin is paused until `until_ms` after `failures` costly failures.
    Refuse { until_ms: u64, failures: u32 },
}

/// One plugin version's breaker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Breaker {
    /// Costly failures in a row, across pauses.
    failures: u32,
    /// While paused: until when, and the pause that got it there.
    paused: Option<(u64, Duration)>,
    /// A probe call is running since this time: other calls wait for its outcome (or for a
    /// pause's length, in case the probe's caller went away without reporting).
    probing_since: Option<u64>,
}

impl Breaker {
    /// Whether a call at `now_ms` may run.
    pub fn admit(&mut self, now_ms: u64, config: &BreakerConfig) -> Admission {
        let Some((until_ms, pause)) = self.paused else {
            return Admission::Call;
        };
        let refuse = |until_ms| Admission::Refuse {
            until_ms,
            failures: self.failures,
        };
        if now_ms < until_ms {
            return refuse(until_ms);
        }
        match self.probing_since {
            Some(since) if now_ms < since.saturating_add(millis(pause.max(config.first_pause))) => {
                refuse(now_ms)
            }
            _ => {
                self.probing_since = Some(now_ms);
                Admission::Call
            }
        }
    }

    /// Records how a call admitted at `now_ms` ended: `costly` if it ran out of time
    /// or fuel.
    pub fn record(&mut self, costly: bool, now_ms: u64, config: &BreakerConfig) {
        self.probing_since = None;
        if !costly {
            *self = Breaker::default();
            return;
        }
        self.failures = self.failures.saturating_add(1);
        if config.trip_after == 0 || self.failures < config.trip_after {
            return;
        }
        // A call admitted before the pause began (not the probe) changes only the count.
        if self.paused.is_some_and(|(until_ms, _)| now_ms < until_ms) {
            return;
        }
        let pause = match self.paused {
            None => config.first_pause,
            Some((_, last)) => last.saturating_mul(2).min(config.max_pause),
        };
        self.paused = Some((now_ms.saturating_add(millis(pause)), pause));
    }

    /// Forgets a probe admitted at `admit` that never ran (no slot was free).
    pub fn abandon(&mut self) {
        self.probing_since = None;
    }

    /// Whether this breaker is back to its initial state (and need not be kept).
    pub fn is_idle(&self) -> bool {
        *self == Breaker::default()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: BreakerConfig = BreakerConfig {
        trip_after: 3,
        first_pause: Duration::from_secs(10),
        max_pause: Duration::from_secs(40),
    };

    fn fail(b: &mut Breaker, now: u64) {
        assert_eq!(b.admit(now, &CONFIG), Admission::Call);
        b.record(true, now, &CONFIG);
    }

    #[test]
    fn opens_after_costly_failures_in_a_row_and_only_then() {
        let mut b = Breaker::default();
        fail(&mut b, 0);
        fail(&mut b, 1);
        // An answer in between starts the count again.
        assert_eq!(b.admit(2, &CONFIG), Admission::Call);
        b.record(false, 2, &CONFIG);
        assert!(b.is_idle());
        fail(&mut b, 3);
        fail(&mut b, 4);
        fail(&mut b, 5);
        assert_eq!(
            b.admit(6, &CONFIG),
            Admission::Refuse {
                until_ms: 10_005,
                failures: 3
            }
        );
    }

    #[test]
    fn one_probe_after_the_pause_then_closed_or_paused_twice_as_long() {
        let mut b = Breaker::default();
        for t in 0..3 {
            fail(&mut b, t);
        }
        // The pause is over: one probe runs, the others are refused while it does.
        assert_eq!(b.admit(10_002, &CONFIG), Admission::Call);
        assert!(matches!(b.admit(10_003, &CONFIG), Admission::Refuse { .. }));
        b.record(true, 10_100, &CONFIG);
        assert_eq!(
            b.admit(10_101, &CONFIG),
            Admission::Refuse {
                until_ms: 30_100,
                failures: 4
            }
        );
        // Doubling stops at the ceiling.
        assert_eq!(b.admit(30_100, &CONFIG), Admission::Call);
        b.record(true, 30_100, &CONFIG);
        assert_eq!(b.admit(70_100, &CONFIG), Admission::Call);
        b.record(true, 70_100, &CONFIG);
        assert!(matches!(
            b.admit(70_101, &CONFIG),
            Admission::Refuse {
                until_ms: 110_100,
                ..
            }
        ));
        // A probe that answers closes the breaker.
        assert_eq!(b.admit(110_100, &CONFIG), Admission::Call);
        b.record(false, 110_100, &CONFIG);
        assert!(b.is_idle());
        assert_eq!(b.admit(110_101, &CONFIG), Admission::Call);
    }

    #[test]
    fn a_probe_whose_caller_went_away_does_not_wedge_the_breaker() {
        let mut b = Breaker::default();
        for t in 0..3 {
            fail(&mut b, t);
        }
        assert_eq!(b.admit(10_002, &CONFIG), Admission::Call);
        // Never recorded; a pause later another probe may run.
        assert!(matches!(b.admit(15_000, &CONFIG), Admission::Refuse { .. }));
        assert_eq!(b.admit(20_002, &CONFIG), Admission::Call);
    }

    #[test]
    fn trip_after_zero_never_opens() {
        let off = BreakerConfig {
            trip_after: 0,
            ..CONFIG
        };
        let mut b = Breaker::default();
        for t in 0..100 {
            assert_eq!(b.admit(t, &off), Admission::Call);
            b.record(true, t, &off);
        }
    }
}
