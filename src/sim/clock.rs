//! A node's clock: a piecewise-linear map from true time to the node's local monotonic time.

use crate::time::Instant;

/// Rates are in parts per billion: `1_000_000_000` is a clock that keeps true time.
pub(crate) const PPB: u64 = 1_000_000_000;

/// `local(t) = anchor_local + (t - anchor_true) * rate`, for `t >= anchor_true`. A rate change
/// re-anchors at the current instant, so local time stays continuous and monotonic.
#[derive(Debug, Clone)]
pub(crate) struct LocalClock {
    anchor_true: u64,
    anchor_local: u64,
    rate_ppb: u64,
}

impl LocalClock {
    /// A clock reading `offset` at true time `t0`, running at `rate_ppb`.
    pub(crate) fn new(t0: u64, offset: u64, rate_ppb: u64) -> Self {
        LocalClock {
            anchor_true: t0,
            anchor_local: offset,
            rate_ppb: rate_ppb.max(1),
        }
    }

    pub(crate) fn rate_ppb(&self) -> u64 {
        self.rate_ppb
    }

    /// The local reading at true time `t` (rounded down to the nanosecond).
    pub(crate) fn local(&self, t: u64) -> Instant {
        let dt = u128::from(t.saturating_sub(self.anchor_true));
        let dl = dt * u128::from(self.rate_ppb) / u128::from(PPB);
        Instant::from_nanos(
            self.anchor_local
                .saturating_add(u64::try_from(dl).unwrap_or(u64::MAX)),
        )
    }

    /// The earliest true time `t >= now` at which the local reading is at least `at`: when a
    /// node sleeping until `at` must be woken (rounded up, so it never wakes early).
    pub(crate) fn true_time_of(&self, at: Instant, now: u64) -> u64 {
        let at = at.as_nanos();
        if at <= self.anchor_local {
            return now.max(self.anchor_true);
        }
        let dl = u128::from(at - self.anchor_local);
        let dt = (dl * u128::from(PPB)).div_ceil(u128::from(self.rate_ppb));
        let t = u64::try_from(dt)
            .ok()
            .and_then(|dt| self.anchor_true.checked_add(dt))
            .unwrap_or(u64::MAX);
        t.max(now)
    }

    /// Changes the rate from true time `t` on.
    pub(crate) fn set_rate(&mut self, t: u64, rate_ppb: u64) {
        let local = self.local(t).as_nanos();
        self.anchor_true = t.max(self.anchor_true);
        self.anchor_local = local;
        self.rate_ppb = rate_ppb.max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn maps_both_ways() {
        let c = LocalClock::new(1_000, 5_000, 1_500_000_000);
        assert_eq!(c.local(1_000), Instant::from_nanos(5_000));
        assert_eq!(c.local(3_000), Instant::from_nanos(8_000));
        assert_eq!(c.true_time_of(Instant::from_nanos(8_000), 0), 3_000);
        assert_eq!(c.true_time_of(Instant::from_nanos(8_001), 0), 3_001);
        assert_eq!(c.true_time_of(Instant::from_nanos(10), 2_000), 2_000);
    }

    #[test]
    fn rate_changes_keep_time_continuous() {
        let mut c = LocalClock::new(0, 0, PPB);
        c.set_rate(1_000, 2 * PPB);
        assert_eq!(c.local(1_000), Instant::from_nanos(1_000));
        assert_eq!(c.local(2_000), Instant::from_nanos(3_000));
    }

    proptest! {
        #[test]
        fn wakes_never_early_and_never_late(
            rate in 500_000_000u64..3_000_000_000,
            offset in 0u64..1 << 40,
            at in 0u64..1 << 42,
        ) {
            let c = LocalClock::new(0, offset, rate);
            let at = Instant::from_nanos(at);
            let t = c.true_time_of(at, 0);
            if at.as_nanos() > offset {
                prop_assert!(c.local(t) >= at, "woken early");
                prop_assert!(t == 0 || c.local(t - 1) < at, "woken late");
            }
        }
    }
}
