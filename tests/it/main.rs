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
mod faults;
mod left_behind;
mod load;
mod numbers;
mod ops;
mod pooler;
mod refusals;
mod replica;
mod resume;
mod stage;
mod statements;
mod tls;
mod triggers;
mod wan;
