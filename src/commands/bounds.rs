//! Parsing `--until` / `--from` as each selected hypertable's time type, on
//! the source server, the way psql would read them there.

use std::collections::{BTreeMap, HashMap};

use crate::catalog::{Extension, SelectedHypertable, TimeType};
use crate::db::Db;
use crate::error::{pg_text, Error, Result};
use crate::ident::quote_ident;
use crate::plan::{Bound, Window};

/// Parse `text` as `tt` with the session's own settings (DateStyle, TimeZone)
/// into TimescaleDB's internal form.
async fn to_internal(
    db: &Db,
    ext: &Extension,
    tt: TimeType,
    text: &str,
) -> std::result::Result<i64, tokio_postgres::Error> {
    // The type name comes from a closed list; the value is a parameter.
    let sql = format!(
        "SELECT {}.time_to_internal(CAST($1::text AS {}))",
        quote_ident(&ext.functions_schema),
        tt.sql()
    );
    db.client.query_one(&sql, &[&text]).await.map(|r| r.get(0))
}

/// Render an internal value as canonical text of its type. Must run in a
/// session with `DateStyle = ISO` and `TimeZone = UTC`.
async fn literal(db: &Db, ext: &Extension, tt: TimeType, internal: i64) -> Result<String> {
    let f = quote_ident(&ext.functions_schema);
    let sql = match tt {
        TimeType::TimestampTz => format!("SELECT {f}.to_timestamp($1)::text"),
        TimeType::Timestamp => format!("SELECT {f}.to_timestamp_without_timezone($1)::text"),
        TimeType::Date => format!("SELECT {f}.to_date($1)::text"),
        _ => return Ok(internal.to_string()),
    };
    let row = db
        .query_one(&sql, &[&internal], "rendering a time bound")
        .await?;
    Ok(row.get(0))
}

/// Parse the bounds for every time type among `hypertables`. Fails, naming
/// the hypertables, when a bound cannot be read as one of their types.
/// `raw` must still have the server's default settings; it gets the
/// canonical ones (ISO, UTC) applied before rendering.
pub async fn parse_windows(
    raw: &Db,
    ext: &Extension,
    hypertables: &[SelectedHypertable],
    until: &str,
    from: Option<&str>,
) -> Result<HashMap<TimeType, Window>> {
    let mut by_type: BTreeMap<TimeType, Vec<String>> = BTreeMap::new();
    let mut unsupported = Vec::new();
    for h in hypertables {
        match TimeType::from_pg(&h.time_type_name) {
            Some(tt) => by_type
                .entry(tt)
                .or_default()
                .push(h.hypertable.to_string()),
            None => unsupported.push(format!(
                "{} (time column \"{}\" is {})",
                h.hypertable, h.time_column, h.time_type_name
            )),
        }
    }
    if !unsupported.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "hyperfill cannot stage hypertables whose time column is not timestamptz, timestamp, \
             date, smallint, integer or bigint: {}. Leave them out with --filter",
            unsupported.join(", ")
        )));
    }

    let mut internal: HashMap<TimeType, (i64, Option<i64>)> = HashMap::new();
    let mut problems = Vec::new();
    for (tt, names) in &by_type {
        let parse = |flag: &'static str, text: &str| {
            let names = names.clone();
            let text = text.to_string();
            async move {
                match to_internal(raw, ext, *tt, &text).await {
                    Ok(v) => Ok(Some(v)),
                    Err(e) if e.code().is_some_and(|c| c.code().starts_with("22")) => Err(format!(
                        "--{flag} '{text}' cannot be read as {} (the time type of {}): {}",
                        tt.sql(),
                        names.join(", "),
                        pg_text(&e)
                    )),
                    Err(e) => Err(Error::db(raw.side, format!("reading --{flag}"), e).to_string()),
                }
            }
        };
        let u = parse("until", until).await;
        let f = match from {
            Some(f) => parse("from", f).await,
            None => Ok(None),
        };
        match (u, f) {
            (Ok(Some(u)), Ok(f)) => {
                internal.insert(*tt, (u, f));
            }
            (u, f) => {
                problems.extend(u.err());
                problems.extend(f.err());
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{}. Give a value of that type, or stage hypertables with different time types \
             separately with --filter. Nothing was changed",
            problems.join("; ")
        )));
    }

    raw.batch(
        "SET DateStyle = 'ISO, YMD'; SET TimeZone = 'UTC'; SET IntervalStyle = 'postgres'",
        "setting up the session",
    )
    .await?;
    let mut windows = HashMap::new();
    for (tt, (u, f)) in internal {
        if let Some(f) = f {
            if f >= u {
                return Err(Error::InvalidArgument(format!(
                    "--from '{}' is not before --until '{until}' (for {}). Nothing was changed",
                    from.unwrap_or_default(),
                    tt.sql()
                )));
            }
        }
        let until_b = Bound {
            internal: u,
            literal: literal(raw, ext, tt, u).await?,
        };
        let from_b = match f {
            Some(f) => Some(Bound {
                internal: f,
                literal: literal(raw, ext, tt, f).await?,
            }),
            None => None,
        };
        windows.insert(
            tt,
            Window {
                from: from_b,
                until: until_b,
            },
        );
    }
    Ok(windows)
}
