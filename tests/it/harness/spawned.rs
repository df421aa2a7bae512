//! A `hyperfill copy` run as a child process, for the tests that kill,
//! interrupt or outlast it (faults, load, resume).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use super::{bin, Dbs};

/// `hyperfill copy --source .. --target .. -p <p>`, stdout and stderr piped.
pub fn copy_command(db: &Dbs, p: &str) -> Command {
    let mut c = bin();
    c.args([
        "copy",
        "--source",
        &db.source_url,
        "--target",
        &db.target_url,
        "-p",
        p,
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c
}

/// A copy that has printed its first "Copied chunk" line: the child, the
/// rest of its stdout, and what it printed so far.
pub struct Started {
    pub child: Child,
    pub lines: Lines<BufReader<ChildStdout>>,
    pub out: String,
}

impl Started {
    /// Start `cmd` and wait (at most `secs`) for its first copied chunk.
    pub async fn first_chunk(mut cmd: Command, secs: u64) -> Started {
        let mut child = cmd.spawn().expect("spawn hyperfill copy");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut out = String::new();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(secs), lines.next_line())
                .await
                .expect("no chunk copied in time")
                .expect("read")
                .expect("copy exited before copying a chunk");
            out.push_str(&line);
            out.push('\n');
            if line.contains("Copied chunk") {
                break;
            }
        }
        Started { child, lines, out }
    }

    /// Keep reading stdout in the background (so the child never blocks on
    /// a full pipe) and hand back the child.
    pub fn drain(self) -> Child {
        let mut lines = self.lines;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child
    }
}

impl Dbs {
    /// Wait until the target has no hyperfill connection left in this
    /// test's database (the server has noticed that a killed client is gone
    /// and rolled its transaction back).
    pub async fn wait_for_no_hyperfill_sessions(&self) {
        for _ in 0..200 {
            let n = self
                .tgt_i64("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'hyperfill' AND datname = current_database()")
                .await;
            if n == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("hyperfill sessions did not end on the target");
    }
}

impl Dbs {
    /// Make the target's `readings` (time timestamptz, device int, ...)
    /// spend `secs` seconds on each row of device 1 at `hour`:00 of any day:
    /// one such row per one-day chunk. A CHECK constraint, which fires on
    /// copied rows (user triggers do not).
    pub async fn slow_target_readings(&self, hour: u32, secs: f64) {
        self.tgt
            .batch_execute(&format!(
                "CREATE FUNCTION slow(d int, t timestamptz) RETURNS bool LANGUAGE plpgsql AS $$
                 BEGIN IF d = 1 AND extract(hour FROM t) = {hour} AND extract(minute FROM t) = 0
                       THEN PERFORM pg_sleep({secs}); END IF; RETURN true; END $$;
                 ALTER TABLE readings ADD CONSTRAINT slow CHECK (slow(device, time));"
            ))
            .await
            .expect("a slow CHECK constraint on the target's readings");
    }
}
