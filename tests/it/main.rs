//! Integration tests against real PostgreSQL + TimescaleDB servers.
//! See harness/mod.rs for how servers are found and how skips are reported.

mod harness;

mod caggs;
mod caggs_refresh;
mod columns;
mod compressed;
mod copy;
mod errors;
mod fallback;
mod left_behind;
mod ops;
mod refusals;
mod resume;
mod stage;
mod tls;
mod triggers;
