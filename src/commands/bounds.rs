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
    db.try_query_one(&sql, &[&text]).await.map(|r| r.get(0))
}

/// Whether a timestamptz text names its moment only with the session's time
/// zone (no UTC offset, or a word like `today`): parsed in two sessions
/// whose time zones differ, it gives two different moments.
async fn depends_on_time_zone(db: &Db, ext: &Extension, text: &str) -> Result<bool> {
    let sql = format!(
        "SELECT {}.time_to_internal(CAST($1::text AS timestamptz))",
        quote_ident(&ext.functions_schema)
    );
    let what = "checking how --until/--from is read";
    db.batch("BEGIN READ ONLY; SET LOCAL TimeZone = 'UTC'", what)
        .await?;
    let result = async {
        let a: i64 = db.query_one(&sql, &[&text], what).await?.get(0);
        db.batch("SET LOCAL TimeZone = 'Asia/Kathmandu'", what)
            .await?;
        let b: i64 = db.query_one(&sql, &[&text], what).await?.get(0);
        Ok::<_, Error>(a != b)
    }
    .await;
    db.batch("ROLLBACK", what).await?;
    result
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
/// canonical ones (ISO, UTC) applied before rendering. Also returns notes
/// for the user: how a timestamptz bound without a UTC offset was read.
pub async fn parse_windows(
    raw: &Db,
    ext: &Extension,
    hypertables: &[SelectedHypertable],
    until: &str,
    from: Option<&str>,
) -> Result<(HashMap<TimeType, Window>, Vec<String>)> {
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
                        pg_text(&e).trim_end_matches('.')
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

    // A timestamptz bound without an offset means the source server's time
    // zone: say so, with the moment it was read as.
    let mut zoned = Vec::new();
    if let Some(names) = by_type.get(&TimeType::TimestampTz) {
        let zone: String = raw
            .query_one("SHOW TimeZone", &[], "reading the session's time zone")
            .await?
            .get(0);
        for (flag, text) in [("until", Some(until)), ("from", from)] {
            let Some(text) = text else { continue };
            if depends_on_time_zone(raw, ext, text).await? {
                zoned.push((flag, text.to_string(), zone.clone(), names.join(", ")));
            }
        }
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
    let mut notes = Vec::new();
    for (flag, text, zone, names) in zoned {
        let w = &windows[&TimeType::TimestampTz];
        let read = match flag {
            "until" => Some(&w.until),
            _ => w.from.as_ref(),
        };
        if let Some(b) = read {
            notes.push(format!(
                "--{flag} '{text}' has no UTC offset: it was read in the source server's time \
                 zone ({zone}) as {} for the timestamptz hypertable(s) {names}. Give an offset \
                 (like '{}') to name the moment yourself.",
                b.literal, b.literal
            ));
        }
    }
    Ok((windows, notes))
}
