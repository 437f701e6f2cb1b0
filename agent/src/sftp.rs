//! SFTP for `scp` and `sftp` into any image: the agent serves the protocol itself and reads and
//! writes the container's files through Docker's archive API, so the image needs no sftp-server
//! (and a link inside the container can never lead to the host's files). Files are read whole when
//! opened and written whole when closed: enough for copying files in and out, not for random
//! access into huge files. Removing and renaming run the container's `rm`, `rmdir` and `mv`.

use std::collections::HashMap;

use russh_sftp::protocol::{Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode, Version};

use corral_shim::{PathStat, Shim};

/// Files at most this large are served (they are held in memory while open).
const MAX_FILE: usize = 4 << 30;

pub struct Sftp {
    shim: Shim,
    container: String,
    /// Where relative paths start: the container's working directory.
    home: String,
    open: HashMap<String, Open>,
    next: u64,
}

enum Open {
    Read(Vec<u8>),
    Write { dir: String, name: String, data: Vec<u8>, mode: u32 },
    Dir { entries: Vec<PathStat>, listed: bool },
}

impl Sftp {
    pub fn new(shim: Shim, container: String, home: String) -> Self {
        Self { shim, container, home, open: HashMap::new(), next: 0 }
    }

    fn absolute(&self, path: &str) -> String {
        let joined = if path.starts_with('/') { path.to_owned() } else { format!("{}/{path}", self.home) };
        let mut parts: Vec<&str> = Vec::new();
        for p in joined.split('/') {
            match p {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                p => parts.push(p),
            }
        }
        format!("/{}", parts.join("/"))
    }

    fn handle(&mut self, open: Open) -> String {
        self.next += 1;
        let h = format!("h{}", self.next);
        self.open.insert(h.clone(), open);
        h
    }

    /// Removing and renaming have no archive API: the container's own `rm`, `rmdir`, `mv` do them
    /// (an image without them answers "failure").
    async fn run(&self, id: u32, command: Vec<String>) -> Result<Status, StatusCode> {
        match self.shim.run_in(&self.container, command).await {
            Ok((0, _)) => Ok(ok(id)),
            Ok((code, errors)) => {
                tracing::debug!(code, "sftp: {}", errors.trim());
                Err(if errors.contains("No such file") { StatusCode::NoSuchFile } else { StatusCode::Failure })
            }
            Err(e) => {
                tracing::debug!("sftp: {e}");
                Err(StatusCode::Failure)
            }
        }
    }

    async fn stat_of(&self, path: &str) -> Result<PathStat, StatusCode> {
        match self.shim.stat(&self.container, &self.absolute(path)).await {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err(StatusCode::NoSuchFile),
            Err(e) => {
                tracing::debug!("sftp stat {path}: {e}");
                Err(StatusCode::Failure)
            }
        }
    }
}

fn attrs(s: &PathStat) -> FileAttributes {
    FileAttributes {
        size: Some(s.size),
        uid: Some(0),
        gid: Some(0),
        user: None,
        group: None,
        permissions: Some(s.mode),
        atime: s.mtime,
        mtime: s.mtime,
    }
}

fn ok(id: u32) -> Status {
    Status { id, status_code: StatusCode::Ok, error_message: "Ok".into(), language_tag: "en-US".into() }
}

fn failed<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> StatusCode + '_ {
    move |e| {
        tracing::debug!("sftp {what}: {e}");
        StatusCode::Failure
    }
}

impl russh_sftp::server::Handler for Sftp {
    type Error = StatusCode;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported
    }

    async fn init(&mut self, _version: u32, _extensions: HashMap<String, String>) -> Result<Version, Self::Error> {
        Ok(Version::new())
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let path = self.absolute(&path);
        Ok(Name { id, files: vec![File::dummy(path)] })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        Ok(Attrs { id, attrs: attrs(&self.stat_of(&path).await?) })
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        self.stat(id, path).await
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let size = match self.open.get(&handle).ok_or(StatusCode::Failure)? {
            Open::Read(data) => data.len(),
            Open::Write { data, .. } => data.len(),
            Open::Dir { .. } => 0,
        };
        let attrs = FileAttributes { size: Some(size as u64), ..FileAttributes::default() };
        Ok(Attrs { id, attrs })
    }

    async fn setstat(&mut self, id: u32, _path: String, _attrs: FileAttributes) -> Result<Status, Self::Error> {
        // Times and modes of a copy (`scp -p`) are not kept; the copy itself stands.
        Ok(ok(id))
    }

    async fn fsetstat(&mut self, id: u32, _handle: String, _attrs: FileAttributes) -> Result<Status, Self::Error> {
        Ok(ok(id))
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let path = self.absolute(&filename);
        let open = if pflags.contains(OpenFlags::WRITE) {
            let (dir, name) = path.rsplit_once('/').ok_or(StatusCode::Failure)?;
            let dir = if dir.is_empty() { "/".to_owned() } else { dir.to_owned() };
            // Appending or writing into an existing file starts from its content.
            let data = if pflags.contains(OpenFlags::TRUNCATE) {
                Vec::new()
            } else {
                match self.shim.stat(&self.container, &path).await {
                    Ok(Some(s)) if !s.is_dir() => {
                        self.shim.read_file(&self.container, &path).await.map_err(failed("read"))?
                    }
                    _ => Vec::new(),
                }
            };
            Open::Write { dir, name: name.to_owned(), data, mode: attrs.permissions.unwrap_or(0o644) }
        } else {
            let s = self.stat_of(&path).await?;
            if s.is_dir() || s.size as usize > MAX_FILE {
                return Err(StatusCode::Failure);
            }
            Open::Read(self.shim.read_file(&self.container, &path).await.map_err(failed("read"))?)
        };
        Ok(Handle { id, handle: self.handle(open) })
    }

    async fn read(&mut self, id: u32, handle: String, offset: u64, len: u32) -> Result<Data, Self::Error> {
        let Some(Open::Read(data)) = self.open.get(&handle) else { return Err(StatusCode::Failure) };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if start >= data.len() {
            return Err(StatusCode::Eof);
        }
        let end = start.saturating_add(len as usize).min(data.len());
        Ok(Data { id, data: data[start..end].to_vec() })
    }

    async fn write(&mut self, id: u32, handle: String, offset: u64, bytes: Vec<u8>) -> Result<Status, Self::Error> {
        let Some(Open::Write { data, .. }) = self.open.get_mut(&handle) else { return Err(StatusCode::Failure) };
        let start = usize::try_from(offset).map_err(failed("write"))?;
        let end = start.checked_add(bytes.len()).filter(|&e| e <= MAX_FILE).ok_or(StatusCode::Failure)?;
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(&bytes);
        Ok(ok(id))
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.open.remove(&handle) {
            Some(Open::Write { dir, name, data, mode }) => {
                self.shim.write_file(&self.container, &dir, &name, &data, mode).await.map_err(failed("write"))?;
                Ok(ok(id))
            }
            Some(_) => Ok(ok(id)),
            None => Err(StatusCode::Failure),
        }
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let path = self.absolute(&path);
        let entries = self.shim.list_dir(&self.container, &path).await.map_err(failed("list"))?;
        Ok(Handle { id, handle: self.handle(Open::Dir { entries, listed: false }) })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let Some(Open::Dir { entries, listed }) = self.open.get_mut(&handle) else { return Err(StatusCode::Failure) };
        if *listed {
            return Err(StatusCode::Eof);
        }
        *listed = true;
        let files = entries.iter().map(|s| File::new(s.name.clone(), attrs(s))).collect();
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        let path = self.absolute(&path);
        self.run(id, vec!["rm".into(), "-f".into(), "--".into(), path]).await
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        let path = self.absolute(&path);
        self.run(id, vec!["rmdir".into(), "--".into(), path]).await
    }

    async fn rename(&mut self, id: u32, oldpath: String, newpath: String) -> Result<Status, Self::Error> {
        let (from, to) = (self.absolute(&oldpath), self.absolute(&newpath));
        self.run(id, vec!["mv".into(), "--".into(), from, to]).await
    }

    async fn mkdir(&mut self, id: u32, path: String, attrs: FileAttributes) -> Result<Status, Self::Error> {
        let path = self.absolute(&path);
        let (dir, name) = path.rsplit_once('/').ok_or(StatusCode::Failure)?;
        let dir = if dir.is_empty() { "/" } else { dir };
        let mode = attrs.permissions.unwrap_or(0o755);
        self.shim.make_dir(&self.container, dir, name, mode).await.map_err(failed("mkdir"))?;
        Ok(ok(id))
    }
}
