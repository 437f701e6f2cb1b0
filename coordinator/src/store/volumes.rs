//! Named volumes, per project: a Docker volume on one node, or an EBS volume. A row exists from
//! `corral apply` of a `type: volume` configuration, or from the first run that mounts the name;
//! it goes with `corral volume delete` once its node (or the cloud) removed the volume.

use rusqlite::{OptionalExtension, params};

use corral_proto::api::VolumeStatus;
use corral_proto::config::{VolumeBackend, VolumeConfig};
use corral_proto::ids::NodeId;

use super::{Result, Store, json, now_ms, opt_json_col};

/// A volume as the store keeps it.
#[derive(Clone, Debug)]
pub struct VolumeRow {
    pub project: String,
    pub name: String,
    /// The applied configuration; `None` for a volume a run made by mounting it.
    pub configuration: Option<VolumeConfig>,
    pub backend: Option<VolumeBackend>,
    /// Where the Docker volume is; for EBS, the node it is attached to.
    pub node_id: Option<NodeId>,
    /// The Docker volume's name, or the EBS volume's id.
    pub volume_id: Option<String>,
    pub region: Option<String>,
    pub availability_zone: Option<String>,
    pub size: Option<u64>,
    pub status: VolumeStatus,
    pub status_message: Option<String>,
    pub created_ms: i64,
}

const COLUMNS: &str = "project, name, configuration, backend, node_id, volume_id, region, availability_zone, size, \
     status, status_message, created_ms";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VolumeRow> {
    let backend: Option<String> = r.get(3)?;
    let status: String = r.get(9)?;
    Ok(VolumeRow {
        project: r.get(0)?,
        name: r.get(1)?,
        configuration: opt_json_col(r, 2)?,
        backend: backend.filter(|b| b == "aws").map(|_| VolumeBackend::Aws),
        node_id: r.get::<_, Option<String>>(4)?.map(NodeId),
        volume_id: r.get(5)?,
        region: r.get(6)?,
        availability_zone: r.get(7)?,
        size: r.get::<_, Option<i64>>(8)?.map(|s| s.max(0) as u64),
        status: VolumeStatus::parse(&status).unwrap_or(VolumeStatus::Failed),
        status_message: r.get(10)?,
        created_ms: r.get(11)?,
    })
}

impl Store {
    /// Registers a volume's configuration, or replaces the configuration of one that exists (its
    /// node, status and size stay). Returns the row as stored.
    pub fn put_volume(&self, project: &str, name: &str, cfg: &VolumeConfig) -> Result<VolumeRow> {
        let backend = cfg.backend.map(|_| "aws");
        self.execute(
            "INSERT INTO volumes (project, name, configuration, backend, region, availability_zone, status, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7)
             ON CONFLICT (project, name) DO UPDATE SET configuration = excluded.configuration",
            owned![project, name, json(cfg), backend, cfg.region, cfg.availability_zone, now_ms()],
        )?;
        Ok(self.volume(project, name)?.expect("the row was just written"))
    }

    pub fn volume(&self, project: &str, name: &str) -> Result<Option<VolumeRow>> {
        let conn = self.read();
        let row = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM volumes WHERE project = ?1 AND name = ?2"),
                params![project, name],
                from_row,
            )
            .optional()?;
        Ok(row)
    }

    /// A project's volumes by name; every project's with `None`.
    pub fn volumes(&self, project: Option<&str>) -> Result<Vec<VolumeRow>> {
        let conn = self.read();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM volumes WHERE ?1 IS NULL OR project = ?1 ORDER BY project, name"
        ))?;
        let rows = stmt.query_map([project], from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Runs placed on `node` mount these Docker volumes there: each is recorded as living on the
    /// node (made by this first use when it did not exist). A volume already on another node is
    /// left as it is (the scheduler placed the run where its volumes are).
    pub fn volumes_placed(&self, node: &NodeId, volumes: &[(&str, &str, &str)]) -> Result<()> {
        let node = node.clone();
        let volumes: Vec<(String, String, String)> =
            volumes.iter().map(|(p, n, d)| ((*p).to_owned(), (*n).to_owned(), (*d).to_owned())).collect();
        self.write(move |conn| {
            let node = &node;
            let tx = conn.savepoint()?;
            for (project, name, docker_name) in &volumes {
                tx.execute(
                    "INSERT INTO volumes (project, name, node_id, volume_id, status, created_ms)
                 VALUES (?1, ?2, ?3, ?4, 'active', ?5)
                 ON CONFLICT (project, name) DO UPDATE SET node_id = excluded.node_id,
                     volume_id = excluded.volume_id, status = 'active'
                 WHERE volumes.node_id IS NULL AND volumes.backend IS NULL",
                    params![project, name, node.0, docker_name, now_ms()],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// What a node reported of its Docker volumes: the sizes of those it has. Returns the volumes
    /// being deleted there that it no longer has (they are gone), and those it still has.
    pub fn volumes_reported(
        &self,
        node: &NodeId,
        present: &[(String, Option<u64>)],
    ) -> Result<(Vec<VolumeRow>, Vec<VolumeRow>)> {
        let mine: Vec<VolumeRow> = self
            .volumes(None)?
            .into_iter()
            .filter(|v| v.backend.is_none() && v.node_id.as_ref() == Some(node))
            .collect();
        let present = present.to_vec();
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let (mut gone, mut left) = (Vec::new(), Vec::new());
            for v in mine {
                let found = present.iter().find(|(d, _)| Some(d) == v.volume_id.as_ref());
                match (found, v.status) {
                    (None, VolumeStatus::Deleting) => {
                        tx.execute("DELETE FROM volumes WHERE project = ?1 AND name = ?2", params![v.project, v.name])?;
                        gone.push(v);
                    }
                    (Some((_, size)), status) => {
                        tx.execute(
                            "UPDATE volumes SET size = ?3 WHERE project = ?1 AND name = ?2",
                            params![v.project, v.name, size.map(|s| s.min(i64::MAX as u64) as i64)],
                        )?;
                        if status == VolumeStatus::Deleting {
                            left.push(v);
                        }
                    }
                    (None, _) => {}
                }
            }
            tx.commit()?;
            Ok((gone, left))
        })
    }

    pub fn set_volume_status(
        &self,
        project: &str,
        name: &str,
        status: VolumeStatus,
        message: Option<&str>,
    ) -> Result<()> {
        self.execute(
            "UPDATE volumes SET status = ?3, status_message = ?4 WHERE project = ?1 AND name = ?2",
            owned![project, name, status.as_str(), message],
        )?;
        Ok(())
    }

    /// What the cloud says of an EBS volume: its id, zone and size, and where it is attached.
    pub fn set_volume_cloud(
        &self,
        project: &str,
        name: &str,
        volume_id: &str,
        zone: Option<&str>,
        size: Option<u64>,
        node: Option<&NodeId>,
    ) -> Result<()> {
        self.execute(
            "UPDATE volumes SET volume_id = ?3, availability_zone = COALESCE(?4, availability_zone),
                 size = COALESCE(?5, size), node_id = ?6, status = 'active', status_message = NULL
             WHERE project = ?1 AND name = ?2",
            owned![project, name, volume_id, zone, size.map(|s| s as i64), node.map(|n| &n.0)],
        )?;
        Ok(())
    }

    pub fn delete_volume(&self, project: &str, name: &str) -> Result<bool> {
        let n = self.execute("DELETE FROM volumes WHERE project = ?1 AND name = ?2", owned![project, name])?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(&dir.path().join("corral.db")).expect("a store");
        (dir, store)
    }

    fn config(text: &str) -> VolumeConfig {
        match corral_proto::config::parse(text, "v.yml").expect("valid") {
            corral_proto::config::Configuration::Volume(v) => v,
            other => panic!("not a volume: {other:?}"),
        }
    }

    #[test]
    fn a_registered_volume_is_made_where_first_used_and_goes_once_its_node_removed_it() {
        let (_dir, s) = store();
        let v = s.put_volume("main", "data", &config("type: volume\nname: data\n")).expect("stored");
        assert_eq!((v.status, v.node_id.clone()), (VolumeStatus::Pending, None));
        let (a, b) = (NodeId("a".into()), NodeId("b".into()));
        s.volumes_placed(&a, &[("main", "data", "corral-vol-main-data")]).expect("placed");
        // A later placement elsewhere (which the scheduler never makes) does not move it.
        s.volumes_placed(&b, &[("main", "data", "corral-vol-main-data")]).expect("placed");
        let v = s.volume("main", "data").expect("read").expect("there");
        assert_eq!((v.status, v.node_id.as_ref()), (VolumeStatus::Active, Some(&a)));
        assert!(v.configuration.is_some(), "applying again keeps what was applied");
        let present = vec![("corral-vol-main-data".to_owned(), Some(4096))];
        assert!(s.volumes_reported(&a, &present).expect("reported").0.is_empty());
        assert_eq!(s.volume("main", "data").expect("read").expect("there").size, Some(4096));
        s.set_volume_status("main", "data", VolumeStatus::Deleting, None).expect("marked");
        let (gone, left) = s.volumes_reported(&a, &present).expect("reported");
        assert!(gone.is_empty() && left.len() == 1, "still on its node: asked again");
        let (gone, _) = s.volumes_reported(&a, &[]).expect("reported");
        assert_eq!(gone.len(), 1);
        assert!(s.volume("main", "data").expect("read").is_none(), "gone once its node no longer has it");
    }

    #[test]
    fn a_run_s_first_use_makes_a_row_and_projects_keep_their_own() {
        let (_dir, s) = store();
        let a = NodeId("a".into());
        s.volumes_placed(&a, &[("main", "cache", "corral-vol-main-cache")]).expect("placed");
        let rows = s.volumes(Some("main")).expect("listed");
        assert_eq!((rows.len(), rows[0].configuration.is_none()), (1, true));
        assert_eq!(rows[0].volume_id.as_deref(), Some("corral-vol-main-cache"));
        assert!(s.volumes(Some("other")).expect("listed").is_empty());
    }
}
