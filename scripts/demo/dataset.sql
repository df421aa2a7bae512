-- Sample dataset for scripts/demo.sh, loaded into the *source* database.
--
-- Covers the time types hyperfill has to handle:
--   metrics       timestamptz, 1 day chunks + hash space dimension (device_id,
--                 2 partitions), 30 days, ~345k rows, a column that needs
--                 quoting ("Reading °C"), text and jsonb columns
--   events        timestamp without time zone, 1 day chunks, text + jsonb
--   daily_counts  date, 7 day chunks, primary key
--   ticks         bigint (milliseconds since the Unix epoch), 1 day chunks,
--                 integer_now function
--   devices       plain (non-hyper) table: copied by pg_dump, not hyperfill
--
-- All data lies in [2025-01-01, 2025-01-31) UTC and is deterministic.
-- The demo's completion point T is 2025-01-29 18:30:00+00 (inside a chunk).
\set ON_ERROR_STOP 1
set timezone = 'UTC';
-- keep the output quiet: create_hypertable() etc. return rows
\o /dev/null

create extension if not exists timescaledb;

create table devices (
    device_id   integer primary key,
    name        text not null,
    location    text
);
insert into devices
select d, 'device-' || d, (array['lab', 'roof', 'basement', 'garage'])[1 + d % 4]
from generate_series(1, 8) d;

-- timestamptz + space partitioning ------------------------------------------
create table metrics (
    time          timestamptz not null,
    device_id     integer not null,
    "Reading °C"  double precision,
    humidity      real,
    status        text,
    tags          jsonb
);
select create_hypertable('metrics', by_range('time', interval '1 day'));
select add_dimension('metrics', by_hash('device_id', 2));
create index metrics_device_time_idx on metrics (device_id, time desc);

insert into metrics (time, device_id, "Reading °C", humidity, status, tags)
select t,
       d,
       round((20 + 5 * sin(extract(epoch from t) / 3600.0) + d)::numeric, 2)::float8,
       (40 + (extract(epoch from t)::bigint % 300) / 10.0)::real,
       case when extract(minute from t)::int % 17 = 0 then 'warn' else 'ok' end,
       jsonb_build_object('fw', 'v' || (1 + d % 3), 'rack', d % 2, 'note', 'ünïcødé ✓')
from generate_series(timestamptz '2025-01-01 00:00:00+00',
                     timestamptz '2025-01-30 23:59:00+00',
                     interval '1 minute') t
cross join generate_series(1, 8) d;

-- timestamp without time zone -----------------------------------------------
create table events (
    time     timestamp not null,
    kind     text not null,
    payload  jsonb,
    message  text
);
-- (timestamp without time zone is deliberate: silence the best-practice warning)
set client_min_messages = error;
select create_hypertable('events', by_range('time', interval '1 day'));
reset client_min_messages;

insert into events (time, kind, payload, message)
select t,
       (array['login', 'logout', 'error', 'purchase'])[1 + (n % 4)],
       jsonb_build_object('n', n, 'user', 'u' || (n % 97), 'tags', jsonb_build_array('a', n % 5)),
       case when n % 10 = 0 then null else 'event #' || n || E' with \'quotes\', commas, and\ttabs' end
from generate_series(timestamp '2025-01-01 00:00:00',
                     timestamp '2025-01-30 23:59:30',
                     interval '30 seconds') with ordinality as s(t, n);

-- date ------------------------------------------------------------------------
create table daily_counts (
    day    date not null,
    site   text not null,
    hits   bigint not null,
    primary key (day, site)
);
select create_hypertable('daily_counts', by_range('day', interval '7 days'));

insert into daily_counts (day, site, hits)
select day::date, 'site-' || s, (s * 1000 + extract(doy from day)::int)
from generate_series(date '2025-01-01', date '2025-01-30', interval '1 day') day
cross join generate_series(1, 50) s;

-- bigint (epoch milliseconds) -----------------------------------------------
create table ticks (
    ts      bigint not null,
    symbol  text not null,
    price   numeric(12, 4) not null,
    volume  integer,
    primary key (symbol, ts)
);
select create_hypertable('ticks', by_range('ts', 86400000));

create function ticks_now() returns bigint
language sql stable as $$ select (extract(epoch from now()) * 1000)::bigint $$;
select set_integer_now_func('ticks', 'ticks_now');

insert into ticks (ts, symbol, price, volume)
select (extract(epoch from t) * 1000)::bigint,
       sym,
       round((100 + 10 * cos(extract(epoch from t) / 7200.0) + length(sym))::numeric, 4),
       (extract(epoch from t)::bigint / 60) % 1000
from generate_series(timestamptz '2025-01-01 00:00:00+00',
                     timestamptz '2025-01-30 23:59:00+00',
                     interval '1 minute') t
cross join unnest(array['ACME', 'INIT', 'ZZZ']) sym;

analyze;
\o
