//! Images in the coordinator's own store ([`crate::images`]): a name and the blobs it is made of.

use rusqlite::{OptionalExtension, params};

use corral_proto::api;

use super::{Result, Store, StoreError, now_ms};
use crate::images::StoredImage;

impl Store {
    /// Adds or replaces the image called `image.name`.
    pub fn put_image(&self, image: &StoredImage, size: u64) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO images (name, config, layers, size, pushed_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                image.name,
                image.config,
                serde_json::to_string(&image.layers).map_err(|source| corrupt(&image.name, source))?,
                size as i64,
                now_ms()
            ],
        )?;
        Ok(())
    }

    pub fn image(&self, name: &str) -> Result<Option<StoredImage>> {
        let row: Option<(String, String)> = self
            .conn()
            .query_row("SELECT config, layers FROM images WHERE name = ?1", [name], |r| Ok((r.get(0)?, r.get(1)?)))
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

    pub fn remove_image(&self, name: &str) -> Result<bool> {
        Ok(self.conn().execute("DELETE FROM images WHERE name = ?1", [name])? > 0)
    }

    /// Every stored image's blobs (what the blob collector keeps).
    pub fn stored_images(&self) -> Result<Vec<StoredImage>> {
        let conn = self.conn();
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

    /// The images as `corral image list` shows them, by name.
    pub fn image_infos(&self) -> Result<Vec<api::ImageInfo>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT name, layers, size, pushed_ms FROM images ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, layers, size, pushed_ms) = row?;
            let layers: Vec<String> = serde_json::from_str(&layers).map_err(|source| corrupt(&name, source))?;
            out.push(api::ImageInfo { name, size: size as u64, layers: layers.len() as u32, pushed_ms });
        }
        Ok(out)
    }
}

fn corrupt(name: &str, source: serde_json::Error) -> StoreError {
    StoreError::Corrupt { what: format!("layer list of image {name}"), source }
}
