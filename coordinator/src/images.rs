//! The coordinator's image store, for sites with no registry. `corral image push` uploads a
//! `docker save` tar; the files its `manifest.json` names (the image config and the layers) are
//! kept once each, by SHA-256, under `images/blobs/`, and each image name is a row pointing at them,
//! so images that share layers store them once. A node that lacks an image fetches it over its QUIC
//! link as a `docker load` tar put together from the blobs ([`LoadTar::send`]).
//!
//! An image belongs to a project, or is shared by every project (pushed with `--shared` by a
//! global admin, as the base image of an air-gapped site is). A job whose project has an image of
//! the name it asks for is sent `corral.local/<project>/<config digest>:latest` instead
//! ([`for_node`]): the tar the node loads is tagged so, no run of another project on that node
//! finds it by its short name, and no configuration may name `corral.local/` (admission).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ring::digest::{Context as Digest, SHA256};
use serde::Deserialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use corral_proto::api;

use crate::secrets::random_hex;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    Invalid(String),
    #[error("image store: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// An image as stored: its config blob and its layer blobs, in order (hex SHA-256s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredImage {
    pub name: String,
    pub config: String,
    pub layers: Vec<String>,
}

pub struct ImageStore {
    dir: PathBuf,
}

/// One image of a `docker save` tar's `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// How Docker names an image it was given as `name`: `docker.io/library/` dropped, `:latest` added
/// when no tag or digest is given.
pub fn normalize(name: &str) -> String {
    let name = name.trim();
    let name = name.strip_prefix("docker.io/").unwrap_or(name);
    let name = name.strip_prefix("library/").unwrap_or(name);
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || name.contains('@') { name.to_owned() } else { format!("{name}:latest") }
}

/// How a node's Docker names `image` of `project`'s store: by its config's digest, so that a push
/// of new content under the same name, or a new project of an old one's name, is a new image to
/// the node (a name with a registry's port could not be a path there either).
pub fn qualified(project: &str, image: &StoredImage) -> String {
    format!("{}/{project}/{}:latest", api::LOCAL_IMAGE_REGISTRY, image.config)
}

/// The project and config digest of a [`qualified`] image; `None` for any other name.
pub fn unqualified(image: &str) -> Option<(&str, &str)> {
    let rest = image.strip_prefix(api::LOCAL_IMAGE_REGISTRY)?.strip_prefix('/')?;
    let (project, digest) = rest.strip_suffix(":latest")?.split_once('/')?;
    (!project.is_empty() && is_digest(digest)).then_some((project, digest))
}

/// The job as its node gets it: its image [`qualified`] when its project stores one of that name
/// (the stored job keeps the name its configuration gave).
pub fn for_node(
    store: &Store,
    mut spec: corral_proto::job::JobSpec,
) -> crate::store::Result<corral_proto::job::JobSpec> {
    if let Some(image) = store.image(Some(&spec.project), &normalize(&spec.image))? {
        spec.image = qualified(&spec.project, &image);
    }
    Ok(spec)
}

fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl ImageStore {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        crate::datadir::create_dir_all(&dir.join("blobs"))?;
        let tmp = dir.join("tmp");
        // Uploads cut off by a restart.
        let _ = std::fs::remove_dir_all(&tmp);
        crate::datadir::create_dir_all(&tmp)?;
        Ok(Self { dir: dir.to_owned() })
    }

    pub fn blob(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs").join(digest)
    }

    /// A fresh path for an upload in progress.
    pub fn upload_path(&self) -> PathBuf {
        self.dir.join("tmp").join(format!("upload-{}.tar", random_hex(8)))
    }

    /// Imports a `docker save` tar: keeps its config and layers by digest (once each) and records
    /// every name it carries, in `project` (`None`: shared). Returns what was stored.
    pub fn import(
        &self,
        store: &Store,
        project: Option<&str>,
        tar_path: &Path,
    ) -> Result<Vec<api::ImageInfo>, ImageError> {
        let invalid = |what: String| ImageError::Invalid(format!("not a `docker save` tar: {what}"));
        let staging = self.dir.join("tmp").join(format!("import-{}", random_hex(8)));
        crate::datadir::create_dir_all(&staging)?;
        let result = (|| {
            // Every regular file, hashed while copied out; links resolved afterwards.
            let mut files: HashMap<String, (String, u64)> = HashMap::new();
            let mut links: HashMap<String, String> = HashMap::new();
            let mut manifest = None;
            let mut archive = tar::Archive::new(std::fs::File::open(tar_path)?);
            for entry in archive.entries().map_err(|e| invalid(e.to_string()))? {
                let mut entry = entry.map_err(|e| invalid(e.to_string()))?;
                let path = entry
                    .path()
                    .map_err(|e| invalid(e.to_string()))?
                    .to_string_lossy()
                    .trim_start_matches("./")
                    .to_owned();
                let kind = entry.header().entry_type();
                if kind.is_symlink() || kind.is_hard_link() {
                    if let Some(target) = entry.link_name().map_err(|e| invalid(e.to_string()))? {
                        let target = target.to_string_lossy().into_owned();
                        let resolved = if kind.is_symlink() {
                            let base = Path::new(&path).parent().unwrap_or(Path::new(""));
                            normalize_path(&base.join(&target))
                        } else {
                            target.trim_start_matches("./").to_owned()
                        };
                        links.insert(path, resolved);
                    }
                    continue;
                }
                if !kind.is_file() {
                    continue;
                }
                if path == "manifest.json" {
                    let mut text = String::new();
                    entry.read_to_string(&mut text).map_err(|e| invalid(format!("manifest.json: {e}")))?;
                    manifest = Some(text);
                    continue;
                }
                let out_path = staging.join(random_hex(8));
                let mut out = crate::datadir::private_file().write(true).create_new(true).open(&out_path)?;
                let mut digest = Digest::new(&SHA256);
                let mut buf = vec![0u8; 256 * 1024];
                let mut size = 0u64;
                loop {
                    let n = entry.read(&mut buf).map_err(|e| invalid(format!("{path}: {e}")))?;
                    if n == 0 {
                        break;
                    }
                    digest.update(&buf[..n]);
                    out.write_all(&buf[..n])?;
                    size += n as u64;
                }
                let hex: String = digest.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
                let blob = self.blob(&hex);
                if blob.exists() {
                    std::fs::remove_file(&out_path)?;
                } else {
                    std::fs::rename(&out_path, &blob)?;
                }
                files.insert(path, (hex, size));
            }
            let manifest = manifest.ok_or_else(|| invalid("it has no manifest.json".into()))?;
            let entries: Vec<ManifestEntry> =
                serde_json::from_str(&manifest).map_err(|e| invalid(format!("manifest.json: {e}")))?;
            let find = |path: &str| {
                let mut p = path.trim_start_matches("./").to_owned();
                for _ in 0..8 {
                    match links.get(&p) {
                        Some(next) => p = next.clone(),
                        None => break,
                    }
                }
                files.get(&p).cloned().ok_or_else(|| invalid(format!("manifest.json names {path}, which it lacks")))
            };
            let mut stored = Vec::new();
            for entry in entries {
                let (config, config_size) = find(&entry.config)?;
                let mut layers = Vec::new();
                let mut size = config_size;
                for l in &entry.layers {
                    let (digest, layer_size) = find(l)?;
                    size += layer_size;
                    layers.push(digest);
                }
                let tags = entry.repo_tags.unwrap_or_default();
                if tags.is_empty() {
                    return Err(ImageError::Invalid(
                        "the tar holds an image without a name: save it by name (docker save NAME:TAG)".into(),
                    ));
                }
                for tag in tags {
                    let image = StoredImage { name: normalize(&tag), config: config.clone(), layers: layers.clone() };
                    store.put_image(project, &image, size)?;
                    stored.push(api::ImageInfo {
                        name: image.name,
                        project: project.map(str::to_owned),
                        size,
                        layers: layers.len() as u32,
                        pushed_ms: crate::secrets::now_ms(),
                    });
                }
            }
            Ok(stored)
        })();
        let _ = std::fs::remove_dir_all(&staging);
        if result.is_ok() {
            // Blobs a failed import left behind are collected by the next removal.
            self.collect(store)?;
        }
        result
    }

    /// Removes `name` of `project` (`None`: the shared one), then every blob no remaining image
    /// needs.
    pub fn remove(&self, store: &Store, project: Option<&str>, name: &str) -> Result<bool, ImageError> {
        let removed = store.remove_image(project, &normalize(name))?;
        if removed {
            self.collect(store)?;
        }
        Ok(removed)
    }

    /// Removes every blob no stored image needs.
    pub fn collect(&self, store: &Store) -> Result<(), ImageError> {
        let used: std::collections::HashSet<String> =
            store.stored_images()?.into_iter().flat_map(|i| std::iter::once(i.config).chain(i.layers)).collect();
        for entry in std::fs::read_dir(self.dir.join("blobs"))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_digest(&name) && !used.contains(&name) {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// The `docker load` tar of `image`, tagged `tag`: `manifest.json`, the config as
    /// `<digest>.json`, each layer as `<digest>/layer.tar`.
    pub fn plan(&self, image: &StoredImage, tag: &str) -> std::io::Result<LoadTar> {
        let manifest = serde_json::json!([{
            "Config": format!("{}.json", image.config),
            "RepoTags": [tag],
            "Layers": image.layers.iter().map(|l| format!("{l}/layer.tar")).collect::<Vec<_>>(),
        }])
        .to_string()
        .into_bytes();
        let mut files = vec![(format!("{}.json", image.config), self.blob(&image.config))];
        let mut seen = std::collections::HashSet::new();
        for l in &image.layers {
            if seen.insert(l) {
                files.push((format!("{l}/layer.tar"), self.blob(l)));
            }
        }
        let padded = |n: u64| 512 + n.div_ceil(512) * 512;
        let mut total = padded(manifest.len() as u64) + 1024;
        let mut sized = Vec::new();
        for (name, path) in files {
            let len = std::fs::metadata(&path)?.len();
            total += padded(len);
            sized.push((name, path, len));
        }
        Ok(LoadTar { files: sized, manifest, size: total })
    }
}

/// A `docker load` tar to send: its files (name in the tar, blob, length), its manifest, and its
/// exact size in bytes.
pub struct LoadTar {
    files: Vec<(String, PathBuf, u64)>,
    manifest: Vec<u8>,
    pub size: u64,
}

impl LoadTar {
    /// Writes the tar.
    pub async fn send<W: AsyncWrite + Unpin>(&self, out: &mut W) -> std::io::Result<()> {
        let manifest = &self.manifest;
        out.write_all(&tar_header("manifest.json", manifest.len() as u64)?).await?;
        out.write_all(manifest).await?;
        out.write_all(&padding(manifest.len() as u64)).await?;
        for (name, path, len) in &self.files {
            out.write_all(&tar_header(name, *len)?).await?;
            let mut file = tokio::io::AsyncReadExt::take(tokio::fs::File::open(path).await?, *len);
            tokio::io::copy(&mut file, out).await?;
            out.write_all(&padding(*len)).await?;
        }
        out.write_all(&[0u8; 1024]).await?;
        out.flush().await
    }
}

fn tar_header(path: &str, size: u64) -> std::io::Result<Vec<u8>> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h.as_bytes().to_vec())
}

fn padding(len: u64) -> Vec<u8> {
    vec![0u8; ((512 - len % 512) % 512) as usize]
}

/// `a/./b/../c` → `a/c`, for link targets inside the tar.
fn normalize_path(p: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_as_docker_does() {
        assert_eq!(normalize("busybox"), "busybox:latest");
        assert_eq!(normalize("docker.io/library/ubuntu:22.04"), "ubuntu:22.04");
        assert_eq!(normalize("team/app"), "team/app:latest");
        assert_eq!(normalize("registry:5000/team/app"), "registry:5000/team/app:latest");
        assert_eq!(normalize("registry:5000/team/app:v1"), "registry:5000/team/app:v1");
        assert_eq!(normalize("app@sha256:abc"), "app@sha256:abc");
    }

    /// A `docker save`-shaped tar: manifest.json, a config and the given layers.
    fn saved(name: &str, layers: &[&[u8]]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, data).expect("append");
        };
        let names: Vec<String> = (0..layers.len()).map(|i| format!("l{i}/layer.tar")).collect();
        for (n, l) in names.iter().zip(layers) {
            add(n, l);
        }
        add("cfg.json", format!("{{\"name\":\"{name}\"}}").as_bytes());
        let manifest = serde_json::json!([{"Config": "cfg.json", "RepoTags": [name], "Layers": names}]);
        add("manifest.json", manifest.to_string().as_bytes());
        b.into_inner().expect("tar")
    }

    #[tokio::test]
    async fn shared_layers_are_stored_once_and_the_load_tar_is_exact() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("db"))?;
        let images = ImageStore::open(&dir.path().join("images"))?;
        let base = vec![7u8; 3000];
        store.create_project("research", None)?;
        let shared_and_research = [(None, "team/a:1", b"aaaa".as_slice()), (Some("research"), "team/b", b"bbbbbbbb")];
        for (project, name, top) in shared_and_research {
            let tar = dir.path().join("in.tar");
            std::fs::write(&tar, saved(name, &[&base, top]))?;
            let got = images.import(&store, project, &tar)?;
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].layers, 2);
            assert_eq!(got[0].project.as_deref(), project);
        }
        // 2 configs + the shared base + 2 tops.
        assert_eq!(std::fs::read_dir(dir.path().join("images/blobs"))?.count(), 5);
        assert!(store.image(None, "team/b:latest")?.is_none(), "research's image is not shared");
        let b = store.image(Some("research"), "team/b:latest")?.expect("stored under its normalized name");
        let listed = |p| -> anyhow::Result<Vec<(String, Option<String>)>> {
            Ok(store.image_infos(p)?.into_iter().map(|i| (i.name, i.project)).collect())
        };
        assert_eq!(listed(None)?, [("team/a:1".to_owned(), None)]);
        assert_eq!(listed(Some("main"))?, [("team/a:1".to_owned(), None)]);
        assert_eq!(
            listed(Some("research"))?,
            [("team/a:1".to_owned(), None), ("team/b:latest".to_owned(), Some("research".to_owned()))]
        );

        let tag = qualified("research", &b);
        assert_eq!(tag, format!("corral.local/research/{}:latest", b.config));
        assert_eq!(unqualified(&tag), Some(("research", b.config.as_str())));
        let found = store.image_by_config("research", &b.config)?.expect("found by its config");
        assert_eq!(found.name, "team/b:latest");
        assert!(store.image_by_config("main", &b.config)?.is_none(), "and only in research");
        let tar = images.plan(&b, &tag)?;
        let mut out = Vec::new();
        tar.send(&mut out).await?;
        assert_eq!(out.len() as u64, tar.size, "the announced size is the bytes sent");
        let mut archive = tar::Archive::new(out.as_slice());
        let mut seen = HashMap::new();
        for e in archive.entries()? {
            let mut e = e?;
            let mut data = Vec::new();
            e.read_to_end(&mut data)?;
            seen.insert(e.path()?.to_string_lossy().into_owned(), data);
        }
        let m: Vec<ManifestEntry> = serde_json::from_slice(&seen["manifest.json"])?;
        assert_eq!(m[0].repo_tags.as_deref(), Some(&[tag][..]), "tagged as the node asked");
        assert_eq!(seen[&m[0].layers[0]], base);
        assert_eq!(seen[&m[0].layers[1]], b"bbbbbbbb");

        // Removing one image keeps the layer the other still uses.
        assert!(!images.remove(&store, Some("research"), "team/a:1")?, "a shared image is not research's");
        assert!(images.remove(&store, None, "team/a:1")?);
        assert!(!images.remove(&store, None, "team/a:1")?);
        assert_eq!(std::fs::read_dir(dir.path().join("images/blobs"))?.count(), 3);

        std::fs::write(dir.path().join("bad.tar"), b"not a tar at all, just text")?;
        let e = images.import(&store, None, &dir.path().join("bad.tar")).expect_err("refused");
        assert!(e.to_string().contains("not a `docker save` tar"), "{e}");
        Ok(())
    }

    #[test]
    fn only_corral_local_names_are_unqualified() {
        let d = "ab".repeat(32);
        assert_eq!(unqualified(&format!("corral.local/main/{d}:latest")), Some(("main", d.as_str())));
        for other in [
            "app:1".to_owned(),
            format!("corral.local/{d}:latest"),
            format!("corral.local//{d}:latest"),
            format!("corral.local/main/{d}"),
            "corral.local/main/app:latest".to_owned(),
            format!("corral.localhost/main/{d}:latest"),
            format!("x/corral.local/main/{d}:latest"),
        ] {
            assert_eq!(unqualified(&other), None, "{other}");
        }
    }

    #[test]
    fn link_targets_resolve_inside_the_tar() {
        assert_eq!(normalize_path(Path::new("abc/../blobs/sha256/ff")), "blobs/sha256/ff");
        assert_eq!(normalize_path(Path::new("./a/./b")), "a/b");
    }
}
