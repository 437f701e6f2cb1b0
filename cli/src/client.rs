//! The coordinator's HTTP API from the CLI's side, and where the CLI finds it.

use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use corral_proto::api::{self, ApiError, MAX_BODY_BYTES, NameKind};

/// `~/.config/corral/config.json` (or `$XDG_CONFIG_HOME/corral/config.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CliConfig {
    pub url: Option<String>,
    pub token: Option<String>,
    pub project: Option<String>,
    /// The coordinator's own CA (PEM), pinned by `corral config --ca-hash`; absent when the
    /// coordinator's certificate is one this host trusts anyway (or it serves plain HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
}

pub fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CORRAL_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("corral").join("config.json"))
}

impl CliConfig {
    pub fn load() -> anyhow::Result<Self> {
        let Some(path) = config_path() else {
            return Ok(Self::default());
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid: fix or remove it", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn save(&self) -> anyhow::Result<PathBuf> {
        let path = config_path().context("no config dir: set HOME or CORRAL_CONFIG")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        write_private(&path, &serde_json::to_string_pretty(self)?)?;
        Ok(path)
    }
}

/// An API path (`/api/projects/main/runs/train/stop`) from its segments, each percent-encoded as one
/// segment: a name a user typed (`a/../b?x#%`) stays one segment and cannot reach another route.
/// Every path with a name in it is built here.
pub fn api_path(segments: &[&str]) -> anyhow::Result<String> {
    // A URL parser drops or resolves `.` and `..` however they are encoded, and an empty segment
    // is no name: none of them can be sent as one.
    if let Some(bad) = segments.iter().find(|s| s.is_empty() || **s == "." || **s == "..") {
        bail!("{bad:?} is not a valid name");
    }
    let mut url = reqwest::Url::parse("http://corral.invalid/").context("the base of API paths")?;
    url.path_segments_mut().map_err(|()| anyhow!("an http URL has path segments"))?.pop_if_empty().extend(segments);
    Ok(url.path().to_owned())
}

/// The message for a request body past [`MAX_BODY_BYTES`], before it is sent or as the coordinator's
/// `413` answer.
fn too_large(bytes: Option<usize>) -> anyhow::Error {
    let limit = MAX_BODY_BYTES as f64 / (1 << 20) as f64;
    match bytes {
        Some(n) => anyhow!(
            "configuration too large (limit {limit} MB): the request would be {:.1} MB; move large commands or values into files in the image",
            n as f64 / (1 << 20) as f64
        ),
        None => anyhow!("configuration too large (limit {limit} MB): the coordinator refused the request (413)"),
    }
}

/// Percent-encoding for a query-string value (image names, GPU specs).
pub fn query_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Writes a file only its owner can read (it holds a token, or says where keys are).
pub fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub url: String,
    token: String,
    pub project: String,
}

impl Client {
    /// From the config file, overridden by `CORRAL_URL`, `CORRAL_TOKEN`, `CORRAL_PROJECT` and
    /// `CORRAL_CA_CERT` (a PEM file, or the PEM itself).
    pub fn from_env() -> anyhow::Result<Self> {
        let file = CliConfig::load()?;
        let url = std::env::var("CORRAL_URL").ok().or(file.url).context(
            "no coordinator configured: run `corral config --url URL --token TOKEN` or set CORRAL_URL and CORRAL_TOKEN",
        )?;
        let token = std::env::var("CORRAL_TOKEN").ok().or(file.token).context(
            "no API token configured: run `corral config --token TOKEN` or set CORRAL_TOKEN (the admin token is in the coordinator's data dir)",
        )?;
        let project =
            std::env::var("CORRAL_PROJECT").ok().or(file.project).unwrap_or_else(|| api::DEFAULT_PROJECT.to_owned());
        api::check_name(NameKind::Project, &project).map_err(|e| anyhow!("project: {e}"))?;
        // A path, or the PEM itself (as a run with `dstack: true` is given it).
        let ca = match std::env::var_os("CORRAL_CA_CERT") {
            Some(pem) if pem.to_string_lossy().starts_with("-----BEGIN") => Some(pem.to_string_lossy().into_owned()),
            Some(path) => Some(
                std::fs::read_to_string(&path)
                    .with_context(|| format!("CORRAL_CA_CERT: cannot read {}", PathBuf::from(&path).display()))?,
            ),
            None => file.ca_cert,
        };
        match ca {
            Some(pem) => Self::with_ca(&url, &token, &project, &pem),
            None => Ok(Self::new(&url, &token, &project)),
        }
    }

    /// Plain HTTP, or HTTPS with a certificate this host trusts.
    pub fn new(url: &str, token: &str, project: &str) -> Self {
        Self::with_http(reqwest::Client::new(), url, token, project)
    }

    /// HTTPS with a certificate from the coordinator's own CA, given as PEM.
    pub fn with_ca(url: &str, token: &str, project: &str, ca_pem: &str) -> anyhow::Result<Self> {
        Ok(Self::with_http(crate::tls::pinned_client(ca_pem)?, url, token, project))
    }

    fn with_http(http: reqwest::Client, url: &str, token: &str, project: &str) -> Self {
        Self { http, url: url.trim_end_matches('/').to_owned(), token: token.to_owned(), project: project.to_owned() }
    }

    /// The API token it sends.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The coordinator's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A fixed path under the project (`runs`, `fleets`); a path with a name in it is
    /// [`Client::project_api`]'s.
    pub fn project_path(&self, rest: &str) -> String {
        match api_path(&["api", "projects", &self.project]) {
            Ok(base) => format!("{base}/{rest}"),
            // from_env checked the project; a client made with `new` and a bad one gets 404s.
            Err(_) => format!("/api/projects/{}/{rest}", self.project),
        }
    }

    /// `/api/projects/{project}/` and `segments`, each encoded as one segment ([`api_path`]).
    pub fn project_api(&self, segments: &[&str]) -> anyhow::Result<String> {
        let all: Vec<&str> =
            ["api", "projects", self.project.as_str()].into_iter().chain(segments.iter().copied()).collect();
        api_path(&all)
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the coordinator at {}", self.url))?;
        let status = resp.status();
        if status == reqwest::StatusCode::PAYLOAD_TOO_LARGE {
            return Err(too_large(None));
        }
        let body = resp.bytes().await.context("the coordinator's answer was cut off")?;
        if !status.is_success() {
            match serde_json::from_slice::<ApiError>(&body) {
                Ok(e) => bail!("{}", e.error),
                Err(_) => bail!("the coordinator answered {status}: {}", String::from_utf8_lossy(&body)),
            }
        }
        serde_json::from_slice(&body).with_context(|| format!("unexpected answer from the coordinator ({status})"))
    }

    /// Every node, by name, fetched a page of 500 at a time.
    pub async fn nodes(&self) -> anyhow::Result<Vec<api::Node>> {
        self.every_page("/api/nodes?", 500, |n: &api::Node| n.id.to_string()).await
    }

    /// Every run of the project (finished ones too with `all`), newest first, fetched a page of
    /// 1,000 at a time.
    pub async fn runs(&self, all: bool) -> anyhow::Result<Vec<api::Run>> {
        let path = format!("{}?all={all}&", self.project_api(&["runs"])?);
        self.every_page(&path, 1000, |r: &api::Run| r.id.to_string()).await
    }

    /// Every item of a paged list (`{path}limit=N&after=ID`), page after page until one is not
    /// full (a coordinator from before pages answers everything at once).
    async fn every_page<T: DeserializeOwned>(
        &self,
        path: &str,
        page: usize,
        id: impl Fn(&T) -> String,
    ) -> anyhow::Result<Vec<T>> {
        let mut items: Vec<T> = Vec::new();
        loop {
            let after = items.last().map(|i| format!("&after={}", query_value(&id(i)))).unwrap_or_default();
            let got: Vec<T> = self.get(&format!("{path}limit={page}{after}")).await?;
            let last = got.len() != page;
            items.extend(got);
            if last {
                return Ok(items);
            }
        }
    }

    /// POSTs a raw body (a stream: an image tarball). A coordinator that refuses the request (no
    /// right, no such project) answers before reading the body and closes the connection, which
    /// the client sees as a write error: then an empty request asks it why.
    pub async fn post_body<T: DeserializeOwned>(&self, path: &str, body: reqwest::Body) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.url);
        let sent = self.send::<T>(self.http.post(&url).body(body)).await;
        let Err(cut_off) = sent else { return sent };
        if !cut_off.chain().any(|e| e.downcast_ref::<reqwest::Error>().is_some_and(reqwest::Error::is_request)) {
            return Err(cut_off);
        }
        let why = self.http.post(&url).bearer_auth(&self.token).send().await;
        match why {
            Ok(resp) if matches!(resp.status().as_u16(), 401 | 403 | 404) => {
                let status = resp.status();
                let body = resp.bytes().await.unwrap_or_default();
                match serde_json::from_slice::<ApiError>(&body) {
                    Ok(e) => bail!("{}", e.error),
                    Err(_) => bail!("the coordinator answered {status}: {}", String::from_utf8_lossy(&body)),
                }
            }
            _ => Err(cut_off),
        }
    }

    /// PUTs a raw body of `len` bytes (a stream: an upload's tar). Every refusal, `413` included,
    /// is the coordinator's own words.
    pub async fn put_body<T: DeserializeOwned>(&self, path: &str, body: reqwest::Body, len: u64) -> anyhow::Result<T> {
        let resp = self
            .http
            .put(format!("{}{path}", self.url))
            .header(reqwest::header::CONTENT_LENGTH, len)
            .bearer_auth(&self.token)
            .body(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the coordinator at {}", self.url))?;
        let status = resp.status();
        let body = resp.bytes().await.context("the coordinator's answer was cut off")?;
        if !status.is_success() {
            match serde_json::from_slice::<ApiError>(&body) {
                Ok(e) => bail!("{}", e.error),
                Err(_) => bail!("the coordinator answered {status}: {}", String::from_utf8_lossy(&body)),
            }
        }
        serde_json::from_slice(&body).with_context(|| format!("unexpected answer from the coordinator ({status})"))
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        self.send(self.http.put(format!("{}{path}", self.url)).json(body)).await
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.get(format!("{}{path}", self.url))).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.delete(format!("{}{path}", self.url))).await
    }

    /// POSTs `body` as JSON. A body past the coordinator's limit is refused here: sent, it would
    /// be cut off by a `413` the CLI could not read (`Broken pipe`).
    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        let json = serde_json::to_vec(body).context("cannot encode the request")?;
        if json.len() > MAX_BODY_BYTES {
            return Err(too_large(Some(json.len())));
        }
        let req =
            self.http.post(format!("{}{path}", self.url)).header(reqwest::header::CONTENT_TYPE, "application/json");
        self.send(req.body(json)).await
    }

    /// Opens a byte pipe to `port` of job `job` of a run's containers, through the coordinator.
    pub async fn tunnel(&self, run: &str, job: u32, port: u16) -> anyhow::Result<reqwest::Upgraded> {
        let query = [("port", port.to_string()), ("job", job.to_string())];
        self.upgrade(&self.project_api(&["runs", run, "tunnel"])?, &query, corral_proto::api::TUNNEL_PROTOCOL).await
    }

    /// Has the run's node serve SSH for job `job`'s container, letting in `public_key` (an OpenSSH
    /// public key line); the connection then carries SSH.
    pub async fn ssh(&self, run: &str, job: u32, public_key: &str) -> anyhow::Result<reqwest::Upgraded> {
        let query = [("key", public_key.to_owned()), ("job", job.to_string())];
        self.upgrade(&self.project_api(&["runs", run, "ssh"])?, &query, corral_proto::api::TUNNEL_PROTOCOL).await
    }

    /// Starts `command` in job `job` of a run; the connection then carries `wire::ExecFrame`s.
    /// With `tty`, in a terminal of `size` (rows, cols).
    pub async fn exec(
        &self,
        run: &str,
        job: u32,
        command: &[String],
        tty: Option<(u16, u16)>,
    ) -> anyhow::Result<reqwest::Upgraded> {
        let mut query = vec![
            ("command", serde_json::to_string(command)?),
            ("job", job.to_string()),
            ("tty", tty.is_some().to_string()),
        ];
        if let Some((rows, cols)) = tty {
            query.extend([("rows", rows.to_string()), ("cols", cols.to_string())]);
        }
        self.upgrade(&self.project_api(&["runs", run, "exec"])?, &query, corral_proto::api::EXEC_PROTOCOL).await
    }

    /// An API path upgraded to `protocol` (`101 Switching Protocols`), or the coordinator's error.
    async fn upgrade(&self, path: &str, query: &[(&str, String)], protocol: &str) -> anyhow::Result<reqwest::Upgraded> {
        let url = format!("{}{path}", self.url);
        let resp = self
            .http
            .get(url)
            .query(query)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, protocol)
            .send()
            .await
            .with_context(|| format!("cannot reach the coordinator at {}", self.url))?;
        if resp.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            let status = resp.status();
            let body = resp.bytes().await.unwrap_or_default();
            match serde_json::from_slice::<ApiError>(&body) {
                Ok(e) => bail!("{}", e.error),
                Err(_) => bail!("the coordinator answered {status} to a {protocol} request"),
            }
        }
        resp.upgrade().await.context("the connection was cut before it switched protocols")
    }

    /// Opens a log stream from `offset`.
    pub async fn logs(&self, run: &str, job: u32, offset: u64, follow: bool) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{}", self.url, self.project_api(&["runs", run, "logs"])?);
        let resp = self
            .http
            .get(url)
            .query(&[("offset", offset.to_string()), ("follow", follow.to_string()), ("job", job.to_string())])
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the coordinator at {}", self.url))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.bytes().await.unwrap_or_default();
            match serde_json::from_slice::<ApiError>(&body) {
                Ok(e) => bail!("{}", e.error),
                Err(_) => bail!("the coordinator answered {status}"),
            }
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_one_segment_however_it_is_spelled() {
        let name = "../../../nodes/node2/cordon?x=#y%2F z";
        let path = api_path(&["api", "projects", "main", "runs", name, "stop"]).expect("a path");
        assert_eq!(path, "/api/projects/main/runs/..%2F..%2F..%2Fnodes%2Fnode2%2Fcordon%3Fx=%23y%252F%20z/stop");
        // As the coordinator reads it: six segments, the fifth the name as typed.
        let url = reqwest::Url::parse(&format!("http://127.0.0.1:7070{path}")).expect("a URL");
        assert_eq!((url.query(), url.fragment()), (None, None));
        let segments: Vec<&str> = url.path_segments().expect("segments").collect();
        assert_eq!(segments.len(), 6, "{segments:?}");
        let decoded = percent_decode(segments[4]);
        assert_eq!(decoded, name);
        let client = Client::new("http://127.0.0.1:7070/", "t", "main");
        assert_eq!(client.project_api(&["runs", "a/b", "logs"]).expect("a path"), "/api/projects/main/runs/a%2Fb/logs");
    }

    /// `%2F` → `/`, as the coordinator's router decodes a segment (ASCII is enough here).
    fn percent_decode(s: &str) -> String {
        let (mut out, mut rest) = (String::new(), s);
        while let Some(i) = rest.find('%') {
            out.push_str(&rest[..i]);
            let byte = rest.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()).expect("two hex digits");
            out.push(char::from(byte));
            rest = &rest[i + 3..];
        }
        out + rest
    }

    #[test]
    fn dot_segments_and_empty_names_are_refused() {
        for bad in ["..", ".", ""] {
            let e = api_path(&["api", "nodes", bad, "cordon"]).expect_err("refused");
            assert_eq!(e.to_string(), format!("{bad:?} is not a valid name"));
        }
        assert!(api_path(&["api", "nodes", "...", "cordon"]).is_ok(), "three dots are a name like any other");
    }

    #[test]
    fn too_large_says_the_limit() {
        assert!(
            too_large(Some(3 << 20))
                .to_string()
                .starts_with("configuration too large (limit 2 MB): the request would be 3.0 MB")
        );
        assert!(too_large(None).to_string().starts_with("configuration too large (limit 2 MB)"));
    }
}
