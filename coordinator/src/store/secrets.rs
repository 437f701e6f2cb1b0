//! A project's secrets, as sealed bytes: the store never sees a value ([`crate::vault`] seals and
//! opens them).

use rusqlite::{OptionalExtension, params};

use super::{Result, Store, now_ms};

/// A secret's name and dates, never its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRow {
    pub name: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl Store {
    /// Sets a secret (sealed), keeping when it was first set.
    pub fn put_secret(&self, project: &str, name: &str, sealed: &[u8]) -> Result<()> {
        let now = now_ms();
        self.execute(
            "INSERT INTO secrets (project, name, sealed, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?4) \
             ON CONFLICT (project, name) DO UPDATE SET sealed = excluded.sealed, updated_ms = excluded.updated_ms",
            owned![project, name, sealed, now],
        )?;
        Ok(())
    }

    pub fn sealed_secret(&self, project: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached("SELECT sealed FROM secrets WHERE project = ?1 AND name = ?2")?;
        Ok(stmt.query_row(params![project, name], |r| r.get(0)).optional()?)
    }

    pub fn secrets(&self, project: &str) -> Result<Vec<SecretRow>> {
        let conn = self.read();
        let mut stmt =
            conn.prepare_cached("SELECT name, created_ms, updated_ms FROM secrets WHERE project = ?1 ORDER BY name")?;
        let rows = stmt.query_map(params![project], |r| {
            Ok(SecretRow { name: r.get(0)?, created_ms: r.get(1)?, updated_ms: r.get(2)? })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// `false`: there was no such secret.
    pub fn delete_secret(&self, project: &str, name: &str) -> Result<bool> {
        let n = self.execute("DELETE FROM secrets WHERE project = ?1 AND name = ?2", owned![project, name])?;
        Ok(n > 0)
    }
}
