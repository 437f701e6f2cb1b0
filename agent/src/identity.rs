//! The node's identity in its state dir, and the TLS configurations built from it.
//!
//! Files: `node.key` (the node's private key, 0600), `node.pem` (its certificate, signed by the
//! coordinator's CA), `ca.pem` (the CA itself), `node.json` (node id and coordinator address).
//! The state dir is 0700 and every file in it 0600: the node's key is its credential, and the
//! rest is nobody else's business. An older state dir is tightened when it is loaded.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};

use corral_proto::ids::NodeId;
use corral_proto::wire::ALPN;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is damaged: {detail} (remove the state dir's node files and enroll again)")]
    Damaged { path: PathBuf, detail: String },
    #[error("tls setup failed: {0}")]
    Tls(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeFile {
    pub node_id: NodeId,
    pub coordinator: String,
}

pub struct Identity {
    pub node: NodeFile,
    pub key_der: Vec<u8>,
    pub cert: CertificateDer<'static>,
    pub ca: CertificateDer<'static>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io { path: path.to_owned(), source }
}

fn first_cert(path: &Path, pem: &str) -> Result<CertificateDer<'static>, IdentityError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| IdentityError::Damaged { path: path.to_owned(), detail: e.to_string() })
}

/// Writes a file created 0600 (an existing one is truncated and keeps its mode: [`make_private`]).
fn write_private(path: &Path, text: &str) -> Result<(), IdentityError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))
}

/// Removes the group and other bits of the state dir and of the identity files in it.
fn make_private(dir: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    for path in std::iter::once(dir.to_owned()).chain(FILES.iter().map(|f| dir.join(f))) {
        let mode = match fs::symlink_metadata(&path) {
            Ok(m) if !m.file_type().is_symlink() => m.permissions().mode() & 0o7777,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&path)(e)),
        };
        if mode & 0o077 != 0 {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & !0o077)).map_err(io(&path))?;
            tracing::info!(path = %path.display(), "made private to the agent's user");
        }
    }
    Ok(())
}

/// The identity files of a state dir.
const FILES: [&str; 4] = ["node.key", "node.pem", "ca.pem", "node.json"];

pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Identity {
    /// `Ok(None)` when the node has not enrolled yet.
    pub fn load(dir: &Path) -> Result<Option<Self>, IdentityError> {
        let node_path = dir.join("node.json");
        if !node_path.exists() {
            return Ok(None);
        }
        make_private(dir)?;
        let node: NodeFile = serde_json::from_str(&fs::read_to_string(&node_path).map_err(io(&node_path))?)
            .map_err(|e| IdentityError::Damaged { path: node_path.clone(), detail: e.to_string() })?;
        let key_path = dir.join("node.key");
        let key = rcgen::KeyPair::from_pem(&fs::read_to_string(&key_path).map_err(io(&key_path))?)
            .map_err(|e| IdentityError::Damaged { path: key_path.clone(), detail: e.to_string() })?;
        let cert_path = dir.join("node.pem");
        let cert = first_cert(&cert_path, &fs::read_to_string(&cert_path).map_err(io(&cert_path))?)?;
        let ca_path = dir.join("ca.pem");
        let ca = first_cert(&ca_path, &fs::read_to_string(&ca_path).map_err(io(&ca_path))?)?;
        Ok(Some(Self { node, key_der: key.serialize_der(), cert, ca }))
    }

    /// Writes the files of a fresh enrollment. The key is written first and the node file last, so a
    /// crash halfway leaves a state dir that is simply "not enrolled".
    pub fn save(
        dir: &Path,
        node: &NodeFile,
        key: &rcgen::KeyPair,
        cert_pem: &str,
        ca_pem: &str,
    ) -> Result<(), IdentityError> {
        use std::os::unix::fs::DirBuilderExt;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io(dir)(e)),
            _ => make_private(dir)?,
        }
        let key_path = dir.join("node.key");
        write_private(&key_path, &key.serialize_pem())?;
        for (name, text) in [("node.pem", cert_pem), ("ca.pem", ca_pem)] {
            write_private(&dir.join(name), text)?;
        }
        let json = serde_json::to_string_pretty(node).map_err(|e| IdentityError::Tls(e.to_string()))?;
        write_private(&dir.join("node.json"), &json)
    }

    /// An identity held in memory only (no state dir), from what enrollment returned. For simulated
    /// nodes in tests and benchmarks, which must not write thousands of state dirs.
    pub fn from_enrollment(
        node: NodeFile,
        key: &rcgen::KeyPair,
        cert_pem: &str,
        ca_pem: &str,
    ) -> Result<Self, IdentityError> {
        let here = Path::new("<enrollment answer>");
        Ok(Self {
            node,
            key_der: key.serialize_der(),
            cert: first_cert(here, cert_pem)?,
            ca: first_cert(here, ca_pem)?,
        })
    }

    /// Mutual TLS: trusts only the stored CA and presents the node certificate.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(|e| IdentityError::Tls(e.to_string()))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| IdentityError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![self.cert.clone()], key)
            .map_err(|e| IdentityError::Tls(e.to_string()))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// For enrollment: trusts the coordinator only if its chain carries a CA whose SHA-256 is the one in
/// the join token, and its certificate is signed by that CA. No trust on first use.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    ca_hash: String,
    provider: Arc<CryptoProvider>,
    /// What went wrong, in words, for the agent's error message.
    pub failure: Mutex<Option<String>>,
}

impl PinnedCaVerifier {
    pub fn new(ca_hash: &str) -> Self {
        Self {
            ca_hash: ca_hash.to_owned(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            failure: Mutex::new(None),
        }
    }

    pub fn client_config(self: &Arc<Self>) -> Result<rustls::ClientConfig, IdentityError> {
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| IdentityError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(self.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    fn fail(&self, msg: String) -> rustls::Error {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg.clone());
        rustls::Error::General(msg)
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| sha256_hex(c) == self.ca_hash) else {
            let presented: Vec<String> = intermediates.iter().map(|c| sha256_hex(c)).collect();
            return Err(self.fail(format!(
                "the coordinator's CA does not match the join token: the token pins CA {}, the coordinator presented {} — \
                 check the token, or that this is the right coordinator",
                self.ca_hash,
                if presented.is_empty() { "no CA".to_owned() } else { presented.join(", ") }
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|e| self.fail(format!("the pinned CA is unusable: {e}")))?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| self.fail(format!("cannot build a verifier: {e}")))?;
        verifier
            .verify_server_cert(end_entity, &[], server_name, ocsp, now)
            .map_err(|e| self.fail(format!("the coordinator's certificate is not signed by the pinned CA: {e}")))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> String {
        format!("{:o}", fs::metadata(path).expect("metadata").permissions().mode() & 0o777)
    }

    #[test]
    fn the_state_dir_is_private_and_an_old_one_is_tightened() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("state");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["node".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert")
            .pem();
        let node = NodeFile { node_id: NodeId("n1".into()), coordinator: "127.0.0.1:7071".into() };
        Identity::save(&dir, &node, &key, &cert, &cert).expect("save");
        assert_eq!(mode(&dir), "700");
        for f in FILES {
            assert_eq!(mode(&dir.join(f)), "600", "{f}");
        }

        // A state dir an older agent left readable to everyone.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::set_permissions(dir.join("node.pem"), fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(Identity::load(&dir).expect("load").is_some());
        assert_eq!(mode(&dir), "700");
        assert_eq!(mode(&dir.join("node.pem")), "600");
    }
}
