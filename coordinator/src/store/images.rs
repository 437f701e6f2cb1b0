//! Images in the coordinator's own store ([`crate::images`]): a name and the blobs it is made of,
//! in one project, or shared by every project (`project = ''` in the table).

use rusqlite::OptionalExtension;

use corral_proto::api;

use super::{Result, Store, StoreError, now_ms};
use crate::images::StoredImage;

/// The table's `project` of an image in `project`, or of a shared one (`None`).
fn scope(project: Option<&str>) -> &str {
    project.unwrap_or("")
}

impl Store {
    /// Adds or replaces the image called `image.name` in `project` (`None`: shared).
    pub fn put_image(&self, project: Option<&str>, image: &StoredImage, size: u64) -> Result<()> {
        self.execute(
            "INSERT OR REPLACE INTO images (project, name, config, layers, size, pushed_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            owned![
                scope(project),
                image.name,
                image.config,
                serde_json::to_string(&image.layers).map_err(|source| corrupt(&image.name, source))?,
                size as i64,
                now_ms()
            ],
        )?;
        Ok(())
    }

    /// The image `name` of `project` (`None`: the shared one), not falling back to the other.
    pub fn image(&self, project: Option<&str>, name: &str) -> Result<Option<StoredImage>> {
        let row: Option<(String, String)> = self
            .read()
            .query_row(
                "SELECT config, layers FROM images WHERE project = ?1 AND name = ?2",
                [scope(project), name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match row {
            Some((config, layers)) => Ok(Some(StoredImage {
                name: name.to_owned(),
                config,
                layers: serde_json::from_str(&layers).map_err(|source| corrupt(name, source))?,
            })),
            None => Ok(None),
        }
    }

    /// `project`'s image whose config blob is `config` (what a node asks for by [`qualified`]
    /// name).
    ///
    /// [`qualified`]: crate::images::qualified
    pub fn image_by_config(&self, project: &str, config: &str) -> Result<Option<StoredImage>> {
        let row: Option<(String, String)> = self
            .read()
            .query_row(
                "SELECT name, layers FROM images WHERE project = ?1 AND config = ?2 AND project <> '' LIMIT 1",
                [project, config],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match row {
            Some((name, layers)) => {
                let layers = serde_json::from_str(&layers).map_err(|source| corrupt(&name, source))?;
                Ok(Some(StoredImage { name, config: config.to_owned(), layers }))
            }
            None => Ok(None),
        }
    }

    pub fn remove_image(&self, project: Option<&str>, name: &str) -> Result<bool> {
        Ok(self.execute("DELETE FROM images WHERE project = ?1 AND name = ?2", owned![scope(project), name])? > 0)
    }

    /// Every stored image's blobs, of every project (what the blob collector keeps).
    pub fn stored_images(&self) -> Result<Vec<StoredImage>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached("SELECT name, config, layers FROM images")?;
        let rows =
            stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, config, layers) = row?;
            let layers = serde_json::from_str(&layers).map_err(|source| corrupt(&name, source))?;
            out.push(StoredImage { name, config, layers });
        }
        Ok(out)
    }

    /// The images a run of `project` can use, as `corral image list` shows them: the project's and
    /// the shared ones, by name (`None`: the shared ones only).
    pub fn image_infos(&self, project: Option<&str>) -> Result<Vec<api::ImageInfo>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT project, name, layers, size, pushed_ms FROM images WHERE project IN ('', ?1)
             ORDER BY name, project DESC",
        )?;
        let rows = stmt.query_map([scope(project)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (project, name, layers, size, pushed_ms) = row?;
            let layers: Vec<String> = serde_json::from_str(&layers).map_err(|source| corrupt(&name, source))?;
            let project = (!project.is_empty()).then_some(project);
            out.push(api::ImageInfo { name, project, size: size as u64, layers: layers.len() as u32, pushed_ms });
        }
        Ok(out)
    }
}

fn corrupt(name: &str, source: serde_json::Error) -> StoreError {
    StoreError::Corrupt { what: format!("layer list of image {name}"), source }
}
