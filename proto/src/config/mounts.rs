//! What a run brings into its container besides the image: host directories and named volumes
//! (`volumes`), a Git repo (`repos`) and local files (`files`).

use serde::{Deserialize, Serialize};

use super::fields::{Issue, Object, Res, choice, string, strings};
use super::yaml::{Node, Value};

/// A host directory mounted into the container (dstack's instance volume).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceMount {
    pub instance_path: String,
    pub path: String,
    /// Run anyway on a node where the host path cannot be mounted.
    pub optional: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RepoExistsAction {
    Error,
    Skip,
}

/// A Git repo to put in the container: a local one (uploaded by the CLI) or a URL (cloned on the node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoSpec {
    pub local_path: Option<String>,
    pub url: Option<String>,
    pub branch: Option<String>,
    pub hash: Option<String>,
    /// Where in the container; relative paths are relative to the working directory.
    pub path: String,
    pub if_exists: RepoExistsAction,
    /// A local repo as `corral apply` uploaded it (never in a file: the CLI fills it in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadRef>,
}

/// A local file or directory that the CLI uploads into the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMapping {
    pub local_path: String,
    pub path: String,
    /// The file or directory as `corral apply` uploaded it (never in a file: the CLI fills it in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadRef>,
}

/// An upload in the coordinator's store: a tar archive named by its SHA-256 (lowercase hex),
/// whose entries all sit under one top-level name, which the node replaces with the destination
/// path. At most [`super::limits::MAX_UPLOAD_BYTES`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRef {
    pub sha256: String,
    pub size: u64,
}

impl UploadRef {
    /// Whether `s` can name an upload: 64 lowercase hex digits (it names a file in the store).
    pub fn is_digest(s: &str) -> bool {
        s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

/// One entry of `volumes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeMount {
    /// A host directory or file (`/host:/container`, `{instance_path, path}`).
    Instance(InstanceMount),
    /// A named volume (`name:/container`, `{name, path}`): Corral keeps it, on one node (a Docker
    /// volume) or in the cloud (an EBS volume).
    Named(NamedMount),
}

impl VolumeMount {
    /// Where it appears in the container.
    pub fn path(&self) -> &str {
        match self {
            Self::Instance(m) => &m.path,
            Self::Named(m) => &m.path,
        }
    }
}

/// A named volume mounted at `path`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedMount {
    /// The volume's name; with several (dstack's list form), one of them is mounted: the first
    /// that is where the run is placed. May hold `${{ dstack.node_rank }}` (one volume per node).
    pub names: Vec<String>,
    pub path: String,
}

/// One entry of `volumes`: a host path (it has a `/`) or a volume name, then `:` and the path in
/// the container; or the same as a mapping.
pub(crate) fn volume(node: &Node, path: &str) -> Res<VolumeMount> {
    let mount = if let Value::Map(_) = node.value {
        let o = Object::new(node, path, "volume", &["name", "path", "instance_path", "optional"])?;
        if o.has("name") {
            if o.has("instance_path") {
                return Err(Issue::invalid(
                    o.key_mark("instance_path"),
                    o.path("instance_path"),
                    "set either `name` (a volume) or `instance_path` (a host path), not both",
                ));
            }
            if let Some(n) = o.get("optional") {
                return Err(Issue::invalid(
                    n.mark,
                    o.path("optional"),
                    "`optional` is for host paths (`instance_path`)",
                ));
            }
            let names = o.require("name", |n, p| match &n.value {
                Value::Seq(_) => strings(n, p),
                _ => string(n, p).map(|s| vec![s]),
            })?;
            let names =
                names.into_iter().map(|v| volume_name(node, &format!("{path}.name"), v)).collect::<Res<Vec<_>>>()?;
            if names.is_empty() {
                return Err(Issue::invalid(node.mark, o.path("name"), "name at least one volume"));
            }
            VolumeMount::Named(NamedMount { names, path: o.require("path", string)? })
        } else {
            VolumeMount::Instance(InstanceMount {
                instance_path: o.require("instance_path", string)?,
                path: o.require("path", string)?,
                optional: o.boolean("optional")?.unwrap_or(false),
            })
        }
    } else {
        let s = string(node, path)?;
        let Some((src, dest)) = s.split_once(':').filter(|(_, d)| !d.contains(':')) else {
            return Err(Issue::invalid(
                node.mark,
                path,
                format!("expected `/host/path:/container/path` or `volume-name:/container/path`, found \"{s}\""),
            ));
        };
        if src.contains('/') {
            VolumeMount::Instance(InstanceMount {
                instance_path: src.to_owned(),
                path: dest.to_owned(),
                optional: false,
            })
        } else {
            let name = volume_name(node, path, src.to_owned())?;
            VolumeMount::Named(NamedMount { names: vec![name], path: dest.to_owned() })
        }
    };
    let paths: Vec<&String> = match &mount {
        VolumeMount::Instance(m) => vec![&m.instance_path, &m.path],
        VolumeMount::Named(m) => vec![&m.path],
    };
    for p in paths {
        if !p.starts_with('/') || p.split('/').any(|part| part == "..") {
            return Err(Issue::invalid(node.mark, path, format!("\"{p}\" must be an absolute path without `..`")));
        }
    }
    Ok(mount)
}

/// A volume name as a run names it: a valid name, or one with an interpolation (checked once it
/// is expanded, when the run is placed).
fn volume_name(node: &Node, path: &str, name: String) -> Res<String> {
    if name.contains("${{") || super::values::is_valid_name(&name) {
        return Ok(name);
    }
    Err(Issue::invalid(
        node.mark,
        path,
        format!(
            "\"{name}\" is not a valid volume name: use 2 to 41 lowercase letters, digits and hyphens, starting with a letter"
        ),
    ))
}

/// `.`, `..:/my-repo`, `https://github.com/org/repo`, `git@github.com:org/repo.git:/path`, or a mapping.
pub(crate) fn repo(node: &Node, path: &str) -> Res<RepoSpec> {
    let mut spec = RepoSpec {
        local_path: None,
        url: None,
        branch: None,
        hash: None,
        path: ".".into(),
        if_exists: RepoExistsAction::Error,
        upload: None,
    };
    if let Value::Map(_) = node.value {
        let known = ["local_path", "url", "branch", "hash", "path", "if_exists"];
        let o = Object::new(node, path, "repo", &known)?;
        spec.local_path = o.string("local_path")?;
        spec.url = o.string("url")?;
        spec.branch = o.string("branch")?;
        spec.hash = o.string("hash")?;
        spec.path = o.string("path")?.unwrap_or(spec.path);
        if let Some(action) = o.map("if_exists", |n, p| choice(n, p, &["error", "skip"]))? {
            spec.if_exists = if action == "skip" { RepoExistsAction::Skip } else { RepoExistsAction::Error };
        }
    } else {
        let s = string(node, path)?;
        let mut parts: Vec<String> = s.split(':').map(str::to_owned).collect();
        let mut is_url = false;
        if parts.len() > 1 {
            if parts[0].contains('@') || parts[1].starts_with("//") {
                let joined = format!("{}:{}", parts[0], parts[1]);
                parts.splice(0..2, [joined]);
                is_url = true;
            } else if is_drive(&parts[0]) && parts[1].starts_with(['\\', '/']) {
                let joined = format!("{}:{}", parts[0], parts[1]);
                parts.splice(0..2, [joined]);
            }
        }
        let (src, dest) = match parts.as_slice() {
            [src] => (src.clone(), None),
            [src, dest] => (src.clone(), Some(dest.clone())),
            _ => {
                return Err(Issue::invalid(
                    node.mark,
                    path,
                    format!("cannot read \"{s}\" as a repo (`local/path[:container/path]` or a URL)"),
                ));
            }
        };
        if is_url {
            spec.url = Some(src)
        } else {
            spec.local_path = Some(src)
        }
        if let Some(dest) = dest {
            spec.path = dest;
        }
    }
    match (&spec.local_path, &spec.url) {
        (Some(_), Some(_)) => Err(Issue::invalid(node.mark, path, "`local_path` and `url` are mutually exclusive")),
        (None, None) => Err(Issue::invalid(node.mark, path, "set either `local_path` or `url`")),
        _ => Ok(spec),
    }
}

/// A Windows drive letter (`C` of `C:\\path`), as dstack tells it from `.:/path`.
fn is_drive(s: &str) -> bool {
    s.len() == 1 && s.bytes().all(|b| b.is_ascii_alphabetic())
}

/// `train.py`, `../configs:~/configs`, or `{local_path:, path:}`.
pub(crate) fn file(node: &Node, path: &str) -> Res<FileMapping> {
    if let Value::Map(_) = node.value {
        let o = Object::new(node, path, "file mapping", &["local_path", "path"])?;
        return Ok(FileMapping {
            local_path: o.require("local_path", string)?,
            path: o.require("path", string)?,
            upload: None,
        });
    }
    let s = string(node, path)?;
    let mut parts: Vec<&str> = s.split(':').collect();
    let joined;
    if parts.len() > 1 && is_drive(parts[0]) && parts[1].starts_with(['\\', '/']) {
        joined = format!("{}:{}", parts[0], parts[1]);
        parts.splice(0..2, [joined.as_str()]);
    }
    match parts.as_slice() {
        [one] => Ok(FileMapping { local_path: (*one).to_owned(), path: (*one).to_owned(), upload: None }),
        [local, dest] => Ok(FileMapping { local_path: (*local).to_owned(), path: (*dest).to_owned(), upload: None }),
        _ => Err(Issue::invalid(node.mark, path, format!("cannot read \"{s}\" as `local/path[:container/path]`"))),
    }
}
