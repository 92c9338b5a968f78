//! The rate limit of the event log (`log-events`): at most
//! [`EVENTS_PER_SECOND`] records a second on each CPU, so a flood of
//! malformed packets from outside cannot flood the operator's log once the
//! setting is on. What it holds back is said in one record when the next
//! second's first record goes out.

/// Records a CPU writes in one second at most.
pub const EVENTS_PER_SECOND: u32 = 20;

const SECOND_NS: u64 = 1_000_000_000;

/// One CPU's log window, in a per-CPU map slot: only that CPU ever
/// touches it, and a program runs to the end before another starts on the
/// CPU, so the plain read-modify-write below cannot race.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventRate {
    /// Boot-clock ns when the current window opened.
    pub window_start: u64,
    /// Records written in the current window.
    pub logged: u32,
    /// Records held back in the current window.
    pub suppressed: u32,
}

/// Whether an event may be logged now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Log it; the previous window held back this many records, to be said first.
    Log { held_back: u32 },
    /// Over the limit: counted, not logged.
    Suppress,
}

impl EventRate {
    pub fn admit(&mut self, now: u64) -> Admit {
        if self.logged == 0 || now.wrapping_sub(self.window_start) >= SECOND_NS {
            let held_back = self.suppressed;
            *self = EventRate {
                window_start: now,
                logged: 1,
                suppressed: 0,
            };
            return Admit::Log { held_back };
        }
        if self.logged < EVENTS_PER_SECOND {
            self.logged += 1;
            Admit::Log { held_back: 0 }
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            Admit::Suppress
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_at_the_limit_and_the_rest_is_told_next_second() {
        let mut r = EventRate::default();
        let t0 = 5 * SECOND_NS;
        let logged = (0..100)
            .filter(|i| matches!(r.admit(t0 + i), Admit::Log { .. }))
            .count();
        assert_eq!(logged, EVENTS_PER_SECOND as usize);
        assert_eq!(r.suppressed, 100 - EVENTS_PER_SECOND);
        assert_eq!(
            r.admit(t0 + SECOND_NS),
            Admit::Log {
                held_back: 100 - EVENTS_PER_SECOND
            }
        );
        assert_eq!(r.admit(t0 + SECOND_NS + 1), Admit::Log { held_back: 0 });
    }

    #[test]
    fn a_quiet_cpu_logs_every_event() {
        let mut r = EventRate::default();
        for s in 0..50u64 {
            assert_eq!(r.admit(s * SECOND_NS / 2), Admit::Log { held_back: 0 });
        }
    }

    #[test]
    fn the_first_event_at_boot_time_zero_is_logged() {
        let mut r = EventRate::default();
        assert_eq!(r.admit(0), Admit::Log { held_back: 0 });
    }
}
