//! A machine whose clock is off: for tests of what must not depend on clocks agreeing.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use ksp_core::{CollectError, LagCollector, LagRequest, TopicLag};

/// How far, and which way, a clock is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skew {
    /// This much ahead of the true time.
    Ahead(Duration),
    /// This much behind it.
    Behind(Duration),
}

impl Skew {
    /// `t` as this clock shows it.
    pub fn apply(self, t: SystemTime) -> SystemTime {
        match self {
            Self::Ahead(d) => t + d,
            Self::Behind(d) => t - d,
        }
    }

    /// Now, as this clock shows it.
    pub fn now(self) -> SystemTime {
        self.apply(SystemTime::now())
    }
}

/// A lag collector running on a machine whose clock is off: it stamps its reports with that
/// clock. Give the same machine's other parts [`Skew::now`] as their clock.
#[derive(Debug)]
pub struct SkewedCollector<C> {
    inner: C,
    skew: Skew,
}

impl<C> SkewedCollector<C> {
    /// `inner`, on a machine whose clock is `skew` off.
    pub fn new(inner: C, skew: Skew) -> Self {
        Self { inner, skew }
    }

    /// The collector inside.
    pub fn inner(&self) -> &C {
        &self.inner
    }
}

#[async_trait]
impl<C: LagCollector> LagCollector for SkewedCollector<C> {
    async fn collect(&self, request: &LagRequest<'_>) -> Result<Vec<TopicLag>, CollectError> {
        let mut lags = self.inner.collect(request).await?;
        for lag in &mut lags {
            // The inner collector read the true clock; this machine's shows another time.
            lag.collected_at = self.skew.apply(lag.collected_at);
        }
        Ok(lags)
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn idle(&self, group: &str) {
        self.inner.idle(group);
    }
}
