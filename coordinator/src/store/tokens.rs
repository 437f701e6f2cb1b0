//! Join tokens: a join token may name
//! a fleet, expire and count its uses; spending one says why it cannot enroll.

use rusqlite::{OptionalExtension, params};

use corral_proto::api;

use super::{Result, Store, now_ms};

/// Whether the coordinator's own join token enrolls hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultToken {
    Valid,
    /// Revoked by the operator (`corral token revoke`): it stays so across restarts.
    Revoked,
}

impl Store {
    /// Records the coordinator's own join token (no fleet, no expiry, no count) unless it is known,
    /// and answers whether it is revoked. A revoked one stays revoked, and so does one that replaces
    /// it (the file removed, the CA made anew): once the operator revoked the default token, no start
    /// brings one back; `corral token create` makes the next.
    pub fn ensure_default_join_token(&self, hash: &str) -> Result<DefaultToken> {
        let hash = hash.to_owned();
        self.write(move |conn| {
            let hash = hash.as_str();
            let tx = conn.savepoint()?;
            let known: Option<bool> =
                tx.query_row("SELECT revoked FROM join_tokens WHERE hash = ?1", [hash], |r| r.get(0)).optional()?;
            let revoked = match known {
                // Marked as the default too, for a database older than the mark.
                Some(revoked) => {
                    tx.execute("UPDATE join_tokens SET is_default = 1 WHERE hash = ?1", [hash])?;
                    revoked
                }
                None => {
                    let revoked_before: bool = tx.query_row(
                        "SELECT EXISTS (SELECT 1 FROM join_tokens WHERE is_default = 1 AND revoked = 1)",
                        [],
                        |r| r.get(0),
                    )?;
                    tx.execute(
                        "INSERT INTO join_tokens (hash, created_ms, revoked, is_default) VALUES (?1, ?2, ?3, 1)",
                        params![hash, now_ms(), revoked_before],
                    )?;
                    revoked_before
                }
            };
            tx.commit()?;
            Ok(if revoked { DefaultToken::Revoked } else { DefaultToken::Valid })
        })
    }

    /// Stores a new join token (by the hash of its secret).
    pub fn create_join_token(
        &self,
        hash: &str,
        fleet: Option<&str>,
        expires_ms: Option<i64>,
        uses: Option<u32>,
    ) -> Result<()> {
        self.execute(
            "INSERT INTO join_tokens (hash, fleet, created_ms, expires_ms, uses_left) VALUES (?1, ?2, ?3, ?4, ?5)",
            owned![hash, fleet, now_ms(), expires_ms, uses],
        )?;
        Ok(())
    }

    /// Every join token, oldest first, by id (the first 12 hex digits of its hash).
    pub fn join_tokens(&self) -> Result<Vec<api::JoinTokenInfo>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT substr(hash, 1, 12), fleet, created_ms, expires_ms, uses_left, revoked, is_default FROM join_tokens \
             ORDER BY created_ms",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(api::JoinTokenInfo {
                id: r.get(0)?,
                fleet: r.get(1)?,
                created_ms: r.get(2)?,
                expires_ms: r.get(3)?,
                uses_left: r.get(4)?,
                revoked: r.get(5)?,
                default: r.get(6)?,
                token: None,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Revokes the join tokens whose id starts with `id`; returns how many matched (the caller
    /// refuses an ambiguous id before: see [`Store::join_token_ids_like`]).
    pub fn revoke_join_token(&self, id: &str) -> Result<usize> {
        let pattern = format!("{}%", id.to_ascii_lowercase());
        self.execute("UPDATE join_tokens SET revoked = 1 WHERE hash LIKE ?1", owned![pattern])
    }

    /// Ids of the join tokens whose id starts with `id`.
    pub fn join_token_ids_like(&self, id: &str) -> Result<Vec<String>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached("SELECT substr(hash, 1, 12) FROM join_tokens WHERE hash LIKE ?1")?;
        let rows = stmt.query_map([format!("{}%", id.to_ascii_lowercase())], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
    }

    /// Whether a join token exists and is not revoked (spent or expired ones still count: the host
    /// that just used it may ask how it joined).
    pub fn join_token_known(&self, hash: &str) -> Result<bool> {
        let revoked: Option<bool> = self
            .read()
            .query_row("SELECT revoked FROM join_tokens WHERE hash = ?1", [hash], |r| r.get(0))
            .optional()?;
        Ok(revoked == Some(false))
    }

    /// Whether a join token could enroll a host now: `Ok(Err(why))` when it could not. Spends nothing.
    pub fn check_join_token(&self, hash: &str) -> Result<std::result::Result<(), &'static str>> {
        Ok(join_token_usable(&self.read(), hash)?.map(|_| ()))
    }

    /// Spends one use of a join token. `Ok(Err(why))`: it cannot enroll; `Ok(Ok(fleet))`: it did,
    /// into that fleet if it names one.
    pub fn use_join_token(&self, hash: &str) -> Result<std::result::Result<Option<String>, &'static str>> {
        let hash = hash.to_owned();
        self.write(move |conn| {
            let hash = hash.as_str();
            let (fleet, counted) = match join_token_usable(conn, hash)? {
                Ok(usable) => usable,
                Err(why) => return Ok(Err(why)),
            };
            if counted {
                conn.execute("UPDATE join_tokens SET uses_left = uses_left - 1 WHERE hash = ?1", [hash])?;
            }
            Ok(Ok(fleet))
        })
    }
}

/// A join token's fleet and whether its uses are counted, or why it cannot enroll.
fn join_token_usable(
    conn: &rusqlite::Connection,
    hash: &str,
) -> Result<std::result::Result<(Option<String>, bool), &'static str>> {
    #[allow(clippy::type_complexity)] // one row's columns, named right below
    let row: Option<(Option<String>, Option<i64>, Option<i64>, bool)> = conn
        .query_row("SELECT fleet, expires_ms, uses_left, revoked FROM join_tokens WHERE hash = ?1", [hash], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((fleet, expires, uses_left, revoked)) = row else {
        return Ok(Err("wrong join token secret: ask for a new token (`corral token create`)"));
    };
    if revoked {
        return Ok(Err("this join token was revoked: ask for a new token (`corral token create`)"));
    }
    if expires.is_some_and(|e| e < now_ms()) {
        return Ok(Err("this join token expired: ask for a new token (`corral token create`)"));
    }
    if uses_left.is_some_and(|u| u <= 0) {
        return Ok(Err("this join token is used up (it enrolls a set number of hosts): ask for a new token"));
    }
    Ok(Ok((fleet, uses_left.is_some())))
}
