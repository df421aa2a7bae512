//! Columns of a relation, and the comparison of a hypertable's columns
//! between source and target.

use super::sql;
use crate::db::Db;
use crate::error::Result;
use crate::ident::QualifiedName;

/// A live column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `format_type()` of the column's type, with typmod.
    pub type_name: String,
    /// Schema of the type (user types must match by schema too).
    pub type_schema: String,
    /// Binary COPY cannot carry it: use text format for the whole table.
    pub needs_text: bool,
    /// The type's binary output and input functions (and its element's).
    pub binary_io: String,
    /// A generated column: its value is computed by the server that stores it.
    pub generated: bool,
}

/// The live columns of a relation in attribute order; empty when it does not exist.
pub async fn relation_columns(db: &Db, rel: &QualifiedName) -> Result<Vec<Column>> {
    let rows = db
        .query(
            sql::RELATION_COLUMNS,
            &[&rel.sql()],
            &format!("reading the columns of {rel}"),
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            type_name: r.get(1),
            type_schema: r.get(2),
            needs_text: r.get(3),
            binary_io: r.get(4),
            generated: r.get(5),
        })
        .collect())
}

/// Whether rows must travel between these two relations as text: a column's
/// type has no portable binary form, or the two servers read and write it
/// with different functions (which can happen across PostgreSQL majors or
/// extension versions; same functions means the same binary form).
pub fn text_copy_needed(source: &[Column], target: &[Column]) -> bool {
    source.iter().any(|s| {
        s.needs_text
            || target
                .iter()
                .find(|t| t.name == s.name)
                .is_some_and(|t| t.needs_text || t.binary_io != s.binary_io)
    })
}

/// Same as [`relation_columns`]; `None` when the hypertable does not exist.
pub async fn hypertable_columns(db: &Db, ht: &QualifiedName) -> Result<Option<Vec<Column>>> {
    if !super::relation_exists(db, ht).await? {
        return Ok(None);
    }
    relation_columns(db, ht).await.map(Some)
}

/// Differences between a hypertable's columns on the source and the target,
/// matched by name (order and dropped-column gaps do not matter). Each entry is
/// a readable sentence.
pub fn column_differences(source: &[Column], target: &[Column]) -> Vec<String> {
    let mut out = Vec::new();
    for s in source {
        match target.iter().find(|t| t.name == s.name) {
            None => out.push(format!(
                "column \"{}\" ({}) is missing on the target",
                s.name, s.type_name
            )),
            Some(t) if t.type_name != s.type_name || t.type_schema != s.type_schema => {
                out.push(format!(
                    "column \"{}\" is {} on the source but {} on the target",
                    s.name,
                    qualified_type(s),
                    qualified_type(t)
                ))
            }
            Some(_) => {}
        }
    }
    for t in target {
        if !source.iter().any(|s| s.name == t.name) {
            out.push(format!(
                "column \"{}\" ({}) exists on the target but not on the source",
                t.name, t.type_name
            ));
        }
    }
    out
}

fn qualified_type(c: &Column) -> String {
    if c.type_schema == "pg_catalog" {
        c.type_name.clone()
    } else {
        format!("{} (schema {})", c.type_name, c.type_schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str) -> Column {
        Column {
            name: name.into(),
            type_name: ty.into(),
            type_schema: "pg_catalog".into(),
            needs_text: false,
            binary_io: "int4send int4recv".into(),
            generated: false,
        }
    }

    #[test]
    fn text_when_a_type_has_no_portable_binary_form_or_the_servers_read_it_differently() {
        let s = vec![col("time", "timestamptz"), col("v", "integer")];
        assert!(!text_copy_needed(&s, &s));
        let mut t = s.clone();
        t[1].binary_io = "int4send other_recv".into();
        assert!(text_copy_needed(&s, &t));
        let mut t = s.clone();
        t[0].needs_text = true;
        assert!(text_copy_needed(&s, &t));
        // A column the target lacks decides nothing here (the column check reports it).
        assert!(!text_copy_needed(&s, &s[..1]));
    }

    #[test]
    fn order_does_not_matter_but_names_and_types_do() {
        let s = vec![
            col("time", "timestamp with time zone"),
            col("v", "double precision"),
        ];
        let t = vec![
            col("v", "double precision"),
            col("time", "timestamp with time zone"),
        ];
        assert!(column_differences(&s, &t).is_empty());

        let t2 = vec![
            col("time", "timestamp with time zone"),
            col("v", "real"),
            col("x", "integer"),
        ];
        let d = column_differences(&s, &t2);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("\"v\" is double precision on the source but real on the target"));
        assert!(d[1].contains("\"x\" (integer) exists on the target but not on the source"));
    }
}
