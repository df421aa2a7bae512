//! Hypertables left behind, and chunks copied another way: the short lists
//! that `status`, `copy` and `verify` add to their summaries.
//!
//! `stage` records every source hypertable and continuous aggregate with its
//! chunk count in the queue, and marks the ones any stage selected. One left
//! behind has chunks on the source and was never selected: a second `stage`
//! (another time type, another `--filter`) was forgotten. Each list comes
//! with the command that stages it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::db::Db;
use crate::error::Result;
use crate::ident::QualifiedName;
use crate::queue::{self, LeftBehind};
use crate::ui;

/// Source. Every hypertable except TimescaleDB's internal compressed ones:
/// schema, table, continuous aggregate view schema and name (or NULL), the
/// time column's type, the number of chunks, the name `--filter` matches.
// language=PostgreSQL
pub const SOURCE_INVENTORY: &str = "\
SELECT h.schema_name::text, h.table_name::text,
       ca.user_view_schema::text, ca.user_view_name::text,
       coalesce((SELECT format_type(d.column_type, NULL) FROM _timescaledb_catalog.dimension d
                 WHERE d.hypertable_id = h.id AND d.interval_length IS NOT NULL
                 ORDER BY d.id LIMIT 1), ''),
       (SELECT count(*) FROM _timescaledb_catalog.chunk c
        WHERE c.hypertable_id = h.id AND NOT coalesce((to_jsonb(c) ->> 'dropped')::boolean, false))::int,
       CASE WHEN ca.user_view_name IS NULL THEN format('%I.%I', h.schema_name, h.table_name)
            ELSE format('%I.%I', ca.user_view_schema, ca.user_view_name) END
FROM _timescaledb_catalog.hypertable h
LEFT JOIN _timescaledb_catalog.continuous_agg ca ON ca.mat_hypertable_id = h.id
WHERE h.compression_state <> 2
ORDER BY 1, 2";

/// Every source hypertable with its chunk count (for `stage` to record).
pub async fn source_inventory(src: &Db) -> Result<Vec<LeftBehind>> {
    let rows = src
        .query(SOURCE_INVENTORY, &[], "listing the source's hypertables")
        .await?;
    Ok(rows.iter().map(LeftBehind::from_row).collect())
}

/// What the summaries add: the hypertables left behind, and the chunks
/// copied another way than staged with the reason.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Extras {
    pub left_behind: Vec<LeftBehind>,
    pub copied_another_way: Vec<CopiedAnotherWay>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CopiedAnotherWay {
    pub chunk: QualifiedName,
    pub reason: String,
}

/// Read both lists from the queue.
pub async fn read(tgt: &Db) -> Result<Extras> {
    if queue::schema_version(tgt).await? < 3 {
        return Ok(Extras::default());
    }
    let (left_behind, another) =
        tokio::try_join!(queue::left_behind(tgt), queue::copied_another_way(tgt))?;
    Ok(Extras {
        left_behind,
        copied_another_way: another
            .into_iter()
            .map(|(chunk, reason)| CopiedAnotherWay { chunk, reason })
            .collect(),
    })
}

/// `--filter` regex matching exactly these names (as `format('%I.%I')`
/// renders them), regex metacharacters escaped.
fn exact_filter(names: &[&str]) -> String {
    let escape = |s: &str| {
        s.chars()
            .map(|c| {
                if "\\.^$|?*+()[]{}".contains(c) {
                    format!("\\{c}")
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
    };
    let alts: Vec<String> = names.iter().map(|n| escape(n)).collect();
    if alts.len() == 1 {
        format!("^{}$", alts[0])
    } else {
        format!("^({})$", alts.join("|"))
    }
}

/// The lines that list what was left behind, one `stage` command per time type.
pub fn left_behind_lines(list: &[LeftBehind]) -> Vec<String> {
    if list.is_empty() {
        return Vec::new();
    }
    let mut out = vec![format!(
        "LEFT BEHIND: {} source hypertable(s) or continuous aggregate(s) have chunks but were never staged:",
        list.len()
    )];
    let mut by_type: BTreeMap<&str, Vec<&LeftBehind>> = BTreeMap::new();
    for l in list {
        let what = match &l.continuous_aggregate {
            Some(v) => format!(
                "continuous aggregate {v} (materialization {})",
                l.hypertable
            ),
            None => l.hypertable.to_string(),
        };
        out.push(format!(
            "  {what}: {} chunk(s), time column {}",
            l.chunks, l.time_type
        ));
        by_type.entry(l.time_type.as_str()).or_default().push(l);
    }
    out.push("  Stage them (T as a value of their time type), then run copy again:".into());
    for (tt, group) in by_type {
        let names: Vec<&str> = group.iter().map(|l| l.filter_name.as_str()).collect();
        out.push(format!(
            "    hyperfill stage --source \"$SOURCE\" --target \"$TARGET\" --until '<T as {tt}>' --filter '{}'",
            exact_filter(&names).replace('\'', "'\\''")
        ));
    }
    out
}

/// The lines that list chunks copied another way than staged.
pub fn another_way_lines(list: &[CopiedAnotherWay]) -> Vec<String> {
    if list.is_empty() {
        return Vec::new();
    }
    let mut out = vec![format!(
        "Copied another way than staged: {} chunk(s):",
        list.len()
    )];
    for c in list {
        out.push(format!("  {}: {}", c.chunk, c.reason));
    }
    out
}

/// Print both lists (human mode).
pub fn print(extras: &Extras) {
    for l in another_way_lines(&extras.copied_another_way)
        .into_iter()
        .chain(left_behind_lines(&extras.left_behind))
    {
        ui::line(&l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb(schema: &str, name: &str, cagg: Option<&str>, tt: &str) -> LeftBehind {
        LeftBehind {
            hypertable: QualifiedName::new(schema, name),
            continuous_aggregate: cagg.map(|c| QualifiedName::new(schema, c)),
            time_type: tt.into(),
            chunks: 3,
            filter_name: match cagg {
                Some(c) if c.contains(' ') => format!("{schema}.\"{c}\""),
                Some(c) => format!("{schema}.{c}"),
                None => format!("{schema}.{name}"),
            },
        }
    }

    #[test]
    fn one_stage_command_per_time_type_with_an_exact_filter() {
        let lines = left_behind_lines(&[
            lb("public", "counters", None, "bigint"),
            lb("public", "ticks", None, "bigint"),
            lb(
                "public",
                "_materialized_hypertable_3",
                Some("Daily Roll"),
                "timestamp with time zone",
            ),
        ]);
        let text = lines.join("\n");
        assert!(
            text.contains(
                "--until '<T as bigint>' --filter '^(public\\.counters|public\\.ticks)$'"
            ),
            "{text}"
        );
        assert!(
            text.contains("--filter '^public\\.\"Daily Roll\"$'"),
            "{text}"
        );
        assert!(left_behind_lines(&[]).is_empty());
    }
}
