//! A project's secrets: sealed at rest with a key of the data dir's own (ChaCha20-Poly1305 from
//! `ring`), never returned by the API, and expanded as `${{ secrets.NAME }}` only into the
//! `StartJob` sent to the node that runs the job: the stored run and job keep the reference.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use corral_proto::config::Configuration;
use corral_proto::job::JobSpec;

use crate::State;

/// The key's file in the data dir, private to the coordinator's user.
pub const KEY_FILE: &str = "secrets.key";
/// The longest secret value.
pub const MAX_VALUE: usize = 64 * 1024;
/// The longest secret name.
const MAX_NAME: usize = 128;

pub struct Vault {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl Vault {
    /// The data dir's key, made (32 random bytes, mode 0600) on first start.
    pub fn open_or_create(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(KEY_FILE);
        let rng = SystemRandom::new();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut b = vec![0u8; 32];
                rng.fill(&mut b).map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                f.write_all(&b)?;
                f.sync_all()?;
                b
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
            .map_err(|_| anyhow::anyhow!("{} is not a 32-byte key", path.display()))?;
        Ok(Self { key: LessSafeKey::new(key), rng })
    }

    /// `value` sealed for `project`'s secret `name`: the nonce, then the ciphertext and its tag.
    pub fn seal(&self, project: &str, name: &str, value: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
        let mut sealed = value.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad(project, name), &mut sealed)
            .map_err(|_| anyhow::anyhow!("sealing a secret failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The value sealed by [`Vault::seal`]; `None` when it was sealed under another key, project
    /// or name, or altered.
    pub fn open(&self, project: &str, name: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let (nonce, rest) = sealed.split_at_checked(NONCE_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = rest.to_vec();
        let plain = self.key.open_in_place(nonce, aad(project, name), &mut buf).ok()?;
        Some(plain.to_vec())
    }
}

/// What a sealed value is bound to: moved to another project or name, it does not open.
fn aad(project: &str, name: &str) -> Aad<Vec<u8>> {
    Aad::from(format!("{project}\0{name}").into_bytes())
}

/// Whether `name` may name a secret: 1 to 128 of `A-Z a-z 0-9 _ -`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// One `${{ secrets.NAME }}` (or, with `ns`, `${{ env.NAME }}`) in a string: its byte range and
/// the name.
struct Reference<'a> {
    range: std::ops::Range<usize>,
    name: &'a str,
}

/// The `${{ secrets.NAME }}` references in `s` (spaces allowed inside the braces; `$${{` is an
/// escape, as in dstack).
fn references(s: &str) -> Vec<Reference<'_>> {
    references_in(s, "secrets.")
}

/// The `${{ <ns>NAME }}` references in `s`.
fn references_in<'a>(s: &'a str, ns: &str) -> Vec<Reference<'a>> {
    corral_proto::config::interpolations(s)
        .into_iter()
        .filter_map(|(range, inner)| Some(Reference { range, name: inner.strip_prefix(ns)?.trim() }))
        .collect()
}

/// `s` with each secret reference replaced by its value; `Err` names a secret `value` lacks.
fn expand(s: &str, value: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    expand_in(s, "secrets.", value)
}

/// `s` with each `${{ <ns>NAME }}` replaced by `value(NAME)`; `Err` names one it lacks.
fn expand_in(s: &str, ns: &str, value: &impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let refs = references_in(s, ns);
    if refs.is_empty() {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut at = 0;
    for r in refs {
        out.push_str(&s[at..r.range.start]);
        out.push_str(&value(r.name).ok_or_else(|| r.name.to_owned())?);
        at = r.range.end;
    }
    out.push_str(&s[at..]);
    Ok(out)
}

/// The secrets a run's configuration names, each once, in order.
pub fn used(cfg: &Configuration) -> Vec<String> {
    let text = serde_json::to_string(cfg).unwrap_or_default();
    let mut names: Vec<String> = Vec::new();
    for r in references(&text) {
        if !names.iter().any(|n| n == r.name) {
            names.push(r.name.to_owned());
        }
    }
    names
}

/// Checks at apply that every secret the run names is set in `project`, and that it names them
/// only where they are expanded (`env` and `registry_auth`, as in dstack). The error says which
/// and what to do.
/// (Where each interpolation may stand is admission's: `corral_proto::admission`.)
pub fn check_run(state: &State, project: &str, cfg: &Configuration) -> Result<(), String> {
    // `${{ env.NAME }}` in registry_auth and probes: NAME must be one of the run's variables.
    let mut env_refs: Vec<(String, &str)> = Vec::new();
    if let Some(auth) = registry_auth(cfg) {
        env_refs.extend([&auth.username, &auth.password].into_iter().map(|f| ("registry_auth".to_owned(), f.as_str())));
    }
    if let Configuration::Service(s) = cfg {
        for (i, p) in s.probes.iter().flatten().enumerate() {
            env_refs.push((format!("probes[{i}].url"), &p.url));
            env_refs.extend(p.body.as_deref().map(|b| (format!("probes[{i}].body"), b)));
            env_refs.extend(p.headers.iter().map(|(k, v)| (format!("probes[{i}].headers.{k}"), v.as_str())));
        }
    }
    for (field, value) in env_refs {
        for r in references_in(value, "env.") {
            if !run_env(cfg).iter().any(|e| e.name == r.name) {
                return Err(format!(
                    "{field}: ${{{{ env.{0} }}}} names no variable of the run's env: add it (`env: [{0}]` takes \
                     it from the shell of `corral apply`)",
                    r.name
                ));
            }
        }
    }
    for name in used(cfg) {
        if !valid_name(&name) {
            return Err(format!("${{{{ secrets.{name} }}}}: not a secret name (letters, digits, _ and -)"));
        }
        match state.store.sealed_secret(project, &name) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(format!(
                    "secret {name:?} is not set in project {project:?}: set it with `corral secret set {name}` \
                     (the value is read from stdin)"
                ));
            }
            Err(e) => return Err(format!("cannot read the project's secrets: {e}")),
        }
    }
    Ok(())
}

/// The spec to send to the node: its `env` values and `registry_auth` with the project's secrets
/// in. `Err` says which secret is gone (deleted after the run was applied).
pub fn with_secrets(state: &State, spec: &JobSpec) -> Result<JobSpec, String> {
    let names_any = spec.env.iter().any(|(_, v)| v.contains("${{"))
        || spec
            .container
            .registry_auth
            .as_ref()
            .is_some_and(|a| a.username.contains("${{") || a.password.contains("${{"));
    if !names_any {
        return Ok(spec.clone());
    }
    let value = |name: &str| {
        let sealed = state.store.sealed_secret(&spec.project, name).ok().flatten()?;
        let plain = state.vault.open(&spec.project, name, &sealed)?;
        String::from_utf8(plain).ok()
    };
    let gone = |name: String| {
        format!(
            "secret {name:?} of project {:?} is no longer set: `corral secret set {name}`, then apply again",
            spec.project
        )
    };
    let mut out = spec.clone();
    for (_, v) in &mut out.env {
        *v = corral_proto::config::unescape_interpolations(&expand(v, &value).map_err(gone)?);
    }
    // `${{ env.NAME }}` in `registry_auth` is the job's variable, its secrets in (as in dstack).
    let env = out.env.clone();
    let var = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let unset = |name: String| format!("registry_auth: ${{{{ env.{name} }}}}: the job has no variable {name}");
    if let Some(auth) = &mut out.container.registry_auth {
        for field in [&mut auth.username, &mut auth.password] {
            *field = expand(field, &value).map_err(gone)?;
            *field = corral_proto::config::unescape_interpolations(&expand_in(field, "env.", &var).map_err(unset)?);
        }
    }
    Ok(out)
}

/// `s` with each `${{ env.NAME }}` replaced by the variable `NAME` of `env`; `Err` names one it
/// lacks.
pub fn with_env(s: &str, env: &[(String, String)]) -> Result<String, String> {
    let var = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    expand_in(s, "env.", &var).map(|s| corral_proto::config::unescape_interpolations(&s))
}

fn registry_auth(cfg: &Configuration) -> Option<&corral_proto::config::RegistryAuth> {
    match cfg {
        Configuration::Task(t) => t.registry_auth.as_ref(),
        Configuration::Service(s) => s.registry_auth.as_ref(),
        Configuration::DevEnvironment(d) => d.registry_auth.as_ref(),
        Configuration::Fleet(_) | Configuration::Volume(_) => None,
    }
}

fn run_env(cfg: &Configuration) -> &[corral_proto::config::EnvVar] {
    match cfg {
        Configuration::Task(t) => &t.env,
        Configuration::Service(s) => &s.env,
        Configuration::DevEnvironment(d) => &d.env,
        Configuration::Fleet(_) | Configuration::Volume(_) => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_as_what_it_was_sealed_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vault = Vault::open_or_create(dir.path()).expect("vault");
        let sealed = vault.seal("main", "HF_TOKEN", b"hf_abc").expect("seal");
        assert!(!sealed.windows(6).any(|w| w == b"hf_abc"), "the value is not in the sealed bytes");
        assert_eq!(vault.open("main", "HF_TOKEN", &sealed).as_deref(), Some(&b"hf_abc"[..]));
        assert_eq!(vault.open("other", "HF_TOKEN", &sealed), None, "another project");
        assert_eq!(vault.open("main", "OTHER", &sealed), None, "another name");
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert_eq!(vault.open("main", "HF_TOKEN", &altered), None, "altered");
        assert_eq!(vault.open("main", "HF_TOKEN", b"short"), None);
        // The same key after a restart; private to the coordinator's user.
        let again = Vault::open_or_create(dir.path()).expect("reopen");
        assert_eq!(again.open("main", "HF_TOKEN", &sealed).as_deref(), Some(&b"hf_abc"[..]));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn references_expand_and_escapes_stay() {
        let value = |n: &str| (n == "A").then(|| "1".to_owned());
        assert_eq!(expand("x=${{ secrets.A }}-${{secrets.A}}", &value), Ok("x=1-1".to_owned()));
        assert_eq!(expand("$${{ secrets.A }} ${{ env.B }}", &value), Ok("$${{ secrets.A }} ${{ env.B }}".to_owned()));
        assert_eq!(expand("${{ secrets.B }}", &value), Err("B".to_owned()));
        assert_eq!(expand("no reference", &value), Ok("no reference".to_owned()));
        assert_eq!(expand_in("u=${{ env.A }}", "env.", &value), Ok("u=1".to_owned()));
        assert_eq!(expand("${{ env.A }}", &value), Ok("${{ env.A }}".to_owned()), "secrets only");
        assert_eq!(expand("${{ secrets.A", &value), Ok("${{ secrets.A".to_owned()), "unclosed: not a reference");
        assert!(valid_name("HF_TOKEN-2") && !valid_name("") && !valid_name("a.b") && !valid_name(&"x".repeat(129)));
    }
}
