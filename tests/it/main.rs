//! Integration tests against real PostgreSQL + TimescaleDB servers.
//! See harness/mod.rs for how servers are found and how skips are reported.

mod harness;

mod caggs;
mod compressed;
mod copy;
mod errors;
mod faults;
mod load;
mod numbers;
mod ops;
mod replica;
mod resume;
mod stage;
mod statements;
mod tls;
