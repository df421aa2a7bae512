//! How many workers `copy` runs when `--parallelism` is not given: the
//! source's round trip, measured at start beside the near target's, and the
//! connection slots the servers have free.

use std::time::{Duration, Instant};

use crate::db::Db;
use crate::error::Result;

/// Workers on a near source, when `--parallelism` is not given.
pub(super) const DEFAULT_WORKERS: usize = 8;
/// At most this many workers are chosen for a far source.
const MAX_AUTO_WORKERS: usize = 48;
/// A round trip shorter than this is a near source: the default workers.
/// (A busy machine answers a trivial statement on a LAN in 2 to 4 ms now and
/// then; that is not latency worth more sessions on the source.)
const NEAR_SOURCE: Duration = Duration::from_millis(5);
/// A start-up round trip this long suggests a far source: the connections
/// of more workers start opening at once (each takes five round trips or
/// so), while the round trip is measured again; the pool grows to what that
/// measure decides.
pub(super) const FAR_SOURCE: Duration = Duration::from_millis(20);

/// Source and target. Connection slots left for clients that are not
/// superusers.
// language=PostgreSQL
const FREE_CONNECTIONS: &str = "\
SELECT current_setting('max_connections')::int
     - current_setting('superuser_reserved_connections')::int
     - coalesce(current_setting('reserved_connections', true)::int, 0)
     - (SELECT count(*)::int FROM pg_stat_activity WHERE backend_type = 'client backend')";

/// The number of workers when `--parallelism` is not given. Each task waits
/// for two round trips to the source, so on a far source a worker is mostly
/// waiting: from 5 ms of round-trip time, one more worker per 2 ms above the
/// default 8, up to 48, and never more than half the connection slots left on either
/// server (the rest is for others). (One per 3 ms was tried: on the
/// benchmark's two cores it saved 5 % on 180 larger chunks at 50 ms, where
/// each worker's session costs the servers CPU, and cost 12 % on 2,160 small
/// ones, where the latency is all; docs/benchmarks.md, WAN.)
pub fn auto_workers(rtt: Duration, free_slots: Option<i64>) -> usize {
    if rtt < NEAR_SOURCE {
        return DEFAULT_WORKERS;
    }
    let wanted = DEFAULT_WORKERS + (rtt.as_secs_f64() * 1000.0 / 2.0) as usize;
    let by_slots = free_slots
        .map(|f| ((f.max(0) / 2) as usize).max(DEFAULT_WORKERS))
        .unwrap_or(DEFAULT_WORKERS);
    wanted.min(MAX_AUTO_WORKERS).min(by_slots)
}

/// Round-trip time to the source: the shortest of `first` (the start-up's
/// catalog read) and two trivial statements on a connection that has already
/// run one (so no first-query start-up is counted, and one slow answer from
/// a busy machine does not count either). Each of the two goes together
/// with the same trivial statement to the near target: they run while the
/// first workers copy, and on a busy machine (two cores, eight workers and
/// both servers) any answer can wait 5 to 15 ms for a CPU. When the source
/// took less than [`NEAR_SOURCE`] more than the target, it is near, and that
/// difference is its round trip; otherwise the source's own time is (the
/// difference would count the target's wait against a far source twice).
pub(super) async fn round_trip(src: &Db, near: &Db, first: Duration) -> Result<Duration> {
    async fn timed(db: &Db, what: &str) -> Result<Duration> {
        let t0 = Instant::now();
        db.batch("", what).await?;
        Ok(t0.elapsed())
    }
    let (mut best, mut beyond_near) = (first, first);
    for _ in 0..2 {
        let (far, here) = tokio::join!(
            timed(src, "measuring the round trip to the source"),
            timed(near, "measuring the round trip to the target"),
        );
        let far = far?;
        best = best.min(far);
        beyond_near = beyond_near.min(far.saturating_sub(here?));
    }
    Ok(if beyond_near < NEAR_SOURCE {
        beyond_near
    } else {
        best
    })
}

pub(super) async fn free_slots(db: &Db) -> Option<i64> {
    db.query_one(FREE_CONNECTIONS, &[], "counting free connection slots")
        .await
        .ok()
        .map(|r| r.get::<_, i32>(0) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_workers_grow_with_the_round_trip_within_the_slots() {
        let ms = Duration::from_millis;
        assert_eq!(auto_workers(Duration::from_micros(200), None), 8);
        assert_eq!(auto_workers(ms(1), Some(500)), 8);
        // a busy LAN's few milliseconds are not a far source
        assert_eq!(auto_workers(ms(4), Some(500)), 8);
        assert_eq!(auto_workers(ms(5), Some(500)), 10);
        assert_eq!(auto_workers(ms(10), Some(500)), 13);
        assert_eq!(auto_workers(ms(25), Some(500)), 20);
        assert_eq!(auto_workers(ms(50), Some(500)), 33);
        assert_eq!(auto_workers(ms(400), Some(500)), 48);
        // half the free slots, but never below the default
        assert_eq!(auto_workers(ms(100), Some(40)), 20);
        assert_eq!(auto_workers(ms(100), Some(500)), 48);
        assert_eq!(auto_workers(ms(100), Some(6)), 8);
        // unknown slots: no more than the default
        assert_eq!(auto_workers(ms(100), None), 8);
    }
}
