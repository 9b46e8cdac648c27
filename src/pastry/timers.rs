//! Timers: arming the periodic heartbeat and maintenance timers.

use std::time::Duration;

use rand::Rng;

use super::state::Pastry;
use super::Time;

impl Pastry {
    pub(super) fn start_timers(&mut self, now: Time) {
        let period = self.config.probe_period.as_micros().max(1) as u64;
        let jitter = Duration::from_micros(self.rng.gen_range(0..period));
        self.next_heartbeat = now + jitter;
        let maintenance = self.config.maintenance_period.as_micros().max(1) as u64;
        self.next_maintenance =
            now + Duration::from_micros(maintenance / 2 + self.rng.gen_range(0..maintenance));
        self.refresh_watches(now);
    }
}
