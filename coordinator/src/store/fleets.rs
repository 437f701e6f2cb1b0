//! Fleets' configurations, per project (nodes name their fleet without one).

use rusqlite::OptionalExtension;

use corral_proto::config::FleetConfig;

use super::{Result, Store, from_json, json, json_col, now_ms};

impl Store {
    /// Creates or replaces a fleet's configuration.
    pub fn put_fleet(&self, project: &str, name: &str, cfg: &FleetConfig) -> Result<()> {
        self.execute(
            "INSERT INTO fleets VALUES (?1, ?2, ?3, ?4) ON CONFLICT (project, name) DO UPDATE SET configuration = excluded.configuration",
            owned![project, name, json(cfg), now_ms()],
        )?;
        Ok(())
    }

    pub fn fleets(&self, project: &str) -> Result<Vec<(String, FleetConfig, i64)>> {
        let conn = self.read();
        let mut stmt =
            conn.prepare("SELECT name, configuration, created_ms FROM fleets WHERE project = ?1 ORDER BY name")?;
        let rows = stmt
            .query_map([project], |r| Ok((r.get(0)?, json_col(r, 1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Every fleet of every project: (project, name, configuration).
    pub fn all_fleets(&self) -> Result<Vec<(String, String, FleetConfig)>> {
        let conn = self.read();
        let mut stmt = conn.prepare("SELECT project, name, configuration FROM fleets ORDER BY project, name")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, json_col(r, 2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn delete_fleet(&self, project: &str, name: &str) -> Result<bool> {
        let n = self.execute("DELETE FROM fleets WHERE project = ?1 AND name = ?2", owned![project, name])?;
        Ok(n == 1)
    }

    /// A fleet's configuration by name (fleet names are looked up across projects: nodes name
    /// their fleet without a project).
    /// The projects that have a fleet of this name: the nodes of that fleet are theirs.
    pub fn fleet_projects(&self, name: &str) -> Result<Vec<String>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached("SELECT project FROM fleets WHERE name = ?1 ORDER BY project")?;
        let rows = stmt.query_map([name], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn fleet_config(&self, name: &str) -> Result<Option<FleetConfig>> {
        let cfg: Option<String> = self
            .read()
            .query_row("SELECT configuration FROM fleets WHERE name = ?1 LIMIT 1", [name], |r| r.get(0))
            .optional()?;
        cfg.map(|c| from_json("fleet configuration", &c)).transpose()
    }
}
