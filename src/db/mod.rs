//! Connections: parsing connection strings, connecting, session settings,
//! and a thin wrapper that attaches the side and the operation to every error.

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row};

use crate::error::{Error, Result, Side};

/// Session settings for every connection that moves or compares data: text
/// forms that read back identically on the other side, whatever each server's
/// defaults are.
// language=PostgreSQL
const SESSION_SETUP: &str = "SET DateStyle = 'ISO, YMD'; \
     SET IntervalStyle = 'postgres'; \
     SET extra_float_digits = 3; \
     SET TimeZone = 'UTC'; \
     SET bytea_output = 'hex'; \
     SET standard_conforming_strings = on; \
     SET client_min_messages = warning";

/// Extra protection on the source: nothing we run there can write.
// language=PostgreSQL
const SOURCE_SETUP: &str = "SET default_transaction_read_only = on";

/// A parsed connection string, with the side it belongs to.
#[derive(Clone)]
pub struct ConnInfo {
    pub side: Side,
    config: Config,
}

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        write!(f, "ConnInfo({} {})", self.side, self.describe())
    }
}

impl ConnInfo {
    /// Parse a libpq URL or key=value string. The error never repeats the
    /// string itself, which may hold a password.
    pub fn parse(side: Side, conn: &str) -> Result<Self> {
        let mut config = Config::from_str(conn).map_err(|e| {
            Error::InvalidArgument(format!(
                "--{side} is not a valid connection string: {e}. \
                 Use a URL (postgres://user@host:5432/db) or key=value pairs (host=... dbname=...)"
            ))
        })?;
        if config.get_hosts().is_empty() {
            config.host("localhost");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(15));
        }
        if config.get_user().is_none() {
            if let Ok(user) = std::env::var("PGUSER").or_else(|_| std::env::var("USER")) {
                config.user(&user);
            }
        }
        if config.get_password().is_none() {
            if let Ok(pw) = std::env::var("PGPASSWORD") {
                config.password(pw);
            }
        }
        config.application_name("hyperfill");
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        Ok(Self { side, config })
    }

    /// `user@host:port/dbname`, for messages. Never includes the password.
    pub fn describe(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let user = self.config.get_user().unwrap_or("?");
        let db = self.config.get_dbname().unwrap_or(user);
        format!("{user}@{host}:{port}/{db}")
    }

    /// Open a connection and apply the session settings.
    pub async fn connect(&self) -> Result<Db> {
        let (client, connection) =
            self.config
                .connect(NoTls)
                .await
                .map_err(|source| Error::Connect {
                    side: self.side,
                    addr: self.describe(),
                    source,
                })?;
        let side = self.side;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%side, error = %e, "connection closed with an error");
            }
        });
        let db = Db { client, side };
        db.batch(SESSION_SETUP, "setting up the session").await?;
        if side == Side::Source {
            db.batch(SOURCE_SETUP, "setting up the session").await?;
        }
        Ok(db)
    }

    /// Connect with server defaults only (no session settings): used to parse
    /// user-given bounds the way psql would on that server.
    pub async fn connect_raw(&self) -> Result<Db> {
        let (client, connection) =
            self.config
                .connect(NoTls)
                .await
                .map_err(|source| Error::Connect {
                    side: self.side,
                    addr: self.describe(),
                    source,
                })?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Db {
            client,
            side: self.side,
        })
    }
}

/// A connection to one side. Every method names the side and the operation
/// in its error.
pub struct Db {
    pub client: Client,
    pub side: Side,
}

impl Db {
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
    ) -> Result<Vec<Row>> {
        self.client
            .query(sql, params)
            .await
            .map_err(|e| Error::db(self.side, what, e))
    }

    pub async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
    ) -> Result<Row> {
        self.client
            .query_one(sql, params)
            .await
            .map_err(|e| Error::db(self.side, what, e))
    }

    pub async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
    ) -> Result<Option<Row>> {
        self.client
            .query_opt(sql, params)
            .await
            .map_err(|e| Error::db(self.side, what, e))
    }

    pub async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
    ) -> Result<u64> {
        self.client
            .execute(sql, params)
            .await
            .map_err(|e| Error::db(self.side, what, e))
    }

    pub async fn batch(&self, sql: &str, what: &str) -> Result<()> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| Error::db(self.side, what, e))
    }
}
