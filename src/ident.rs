//! Identifiers and literals: the only place where names become SQL text.

use std::fmt;

/// Quote an SQL identifier the way `quote_ident` does, always quoting.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for ch in name.chars() {
        if ch == '"' {
            out.push('"');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// Quote a string literal (standard_conforming_strings = on, which is the
/// default since PostgreSQL 9.1 and which every session of ours sets).
///
/// Used only where PostgreSQL cannot take a bind parameter: inside
/// `COPY (SELECT ...) TO STDOUT`, whose query cannot be parameterised.
pub fn quote_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for ch in value.chars() {
        if ch == '\'' {
            out.push('\'');
        }
        out.push(ch);
    }
    out.push('\'');
    out
}

/// A schema-qualified relation name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// A name from two adjacent text columns of a row: schema at `i`, name at `i + 1`.
    pub fn from_row(row: &tokio_postgres::Row, i: usize) -> Self {
        Self::new(row.get::<_, String>(i), row.get::<_, String>(i + 1))
    }

    /// The name as SQL text, both parts quoted: `"schema"."name"`.
    pub fn sql(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for QualifiedName {
    /// Human form, used in messages: quoted parts, as a user would type them in psql.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sql())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers_with_quotes_spaces_and_unicode() {
        assert_eq!(quote_ident("plain"), "\"plain\"");
        assert_eq!(quote_ident("Mixed Case"), "\"Mixed Case\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_ident("température"), "\"température\"");
    }

    #[test]
    fn quotes_literals() {
        assert_eq!(quote_literal("2024-01-01"), "'2024-01-01'");
        assert_eq!(quote_literal("o'clock"), "'o''clock'");
    }

    #[test]
    fn qualified_name_renders_both_parts_quoted() {
        let q = QualifiedName::new("my schema", "T\"1");
        assert_eq!(q.sql(), "\"my schema\".\"T\"\"1\"");
    }
}
