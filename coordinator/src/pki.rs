//! The coordinator's certificate authority: created on first start, it signs the coordinator's own
//! QUIC certificate and every node's certificate. Agents pin it by the SHA-256 of its DER, which the
//! join token carries.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use corral_proto::wire::{ALPN, COORDINATOR_SERVER_NAME};

use crate::secrets::sha256_hex;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read or write {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate operation failed: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("tls configuration failed: {0}")]
    Tls(String),
}

pub struct Pki {
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io { path: path.display().to_string(), source })
}

fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    crate::datadir::write_private(path, contents.as_bytes())
        .map_err(|source| PkiError::Io { path: path.display().to_string(), source })
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Corral CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    params
}

impl Pki {
    /// Loads the CA from `dir` (`ca.pem`, `ca.key`), creating it on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, PkiError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        let (ca_pem, key) = if cert_path.exists() && key_path.exists() {
            let key = KeyPair::from_pem(&read(&key_path)?)?;
            (read(&cert_path)?, key)
        } else {
            let key = KeyPair::generate()?;
            let cert = ca_params().self_signed(&key)?;
            write_private(&key_path, &key.serialize_pem())?;
            write_private(&cert_path, &cert.pem())?;
            (cert.pem(), key)
        };
        let ca_der = pem_to_der(&ca_pem)
            .ok_or_else(|| PkiError::Tls(format!("{} holds no certificate", cert_path.display())))?;
        let issuer = Issuer::from_ca_cert_der(&ca_der, key)?;

        // The QUIC server certificate is cheap to mint: a fresh one on every start.
        let server_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![COORDINATOR_SERVER_NAME.to_owned()])?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = params.signed_by(&server_key, &issuer)?;
        Ok(Self {
            ca_der,
            ca_pem,
            issuer,
            server_cert: server_cert.der().clone(),
            server_key: server_key.serialize_der(),
        })
    }

    /// What a join token pins: the hex SHA-256 of the CA certificate's DER.
    pub fn ca_hash(&self) -> String {
        sha256_hex(&self.ca_der)
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Signs a node's certificate request. The node is named by `node_id`; the coordinator identifies
    /// it later by the certificate's fingerprint. Returns the PEM and the fingerprint.
    pub fn sign_node(&self, csr_der: &[u8], node_id: &str) -> Result<(String, String), PkiError> {
        let der = CertificateSigningRequestDer::from(csr_der.to_vec());
        let mut csr = CertificateSigningRequestParams::from_der(&der)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        csr.params.distinguished_name = dn;
        csr.params.subject_alt_names = vec![rcgen::SanType::DnsName(
            format!("node-{node_id}").try_into().map_err(|e: rcgen::Error| PkiError::Cert(e))?,
        )];
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        csr.params.is_ca = IsCa::NoCa;
        csr.params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        csr.params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let cert = csr.signed_by(&self.issuer)?;
        Ok((cert.pem(), sha256_hex(cert.der())))
    }

    /// The QUIC server's TLS configuration: presents its certificate with the CA in the chain (so an
    /// enrolling agent can check the CA against its token) and accepts clients with a node certificate
    /// signed by the CA, or none at all (enrollment; such a connection may do nothing else).
    pub fn quic_server_config(&self) -> Result<rustls::ServerConfig, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).map_err(|e| PkiError::Tls(e.to_string()))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| PkiError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.server_cert.clone(), self.ca_der.clone()], key)
            .map_err(|e| PkiError::Tls(e.to_string()))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// The HTTPS API's TLS configuration with a certificate from this CA, minted on every start. It
    /// names `corral-coordinator` (what Corral's own clients check, whatever address they dial),
    /// `localhost`, the loopback addresses and `names` (host names and IP addresses clients use).
    pub fn https_server_config(&self, names: &[String]) -> Result<rustls::ServerConfig, PkiError> {
        let mut sans = vec![COORDINATOR_SERVER_NAME.to_owned(), "localhost".into(), "127.0.0.1".into(), "::1".into()];
        for name in names {
            if !sans.contains(name) {
                sans.push(name.clone());
            }
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, COORDINATOR_SERVER_NAME);
        params.distinguished_name = dn;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        https_config(vec![cert.der().clone(), self.ca_der.clone()], key)
    }
}

/// The HTTPS API's TLS configuration with the operator's own certificate chain and key (PEM files).
pub fn https_server_config_from_files(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, PkiError> {
    use rustls_pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(read(cert)?.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(PkiError::Tls(format!("{} holds no certificate", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_slice(read(key)?.as_bytes())
        .map_err(|e| PkiError::Tls(format!("{}: no private key in it ({e})", key.display())))?;
    https_config(certs, key)
}

fn https_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, PkiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The first certificate in a PEM text, as DER.
pub fn pem_to_der(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_survives_restart_and_signs_csrs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Pki::load_or_create(dir.path()).expect("creates");
        let again = Pki::load_or_create(dir.path()).expect("loads");
        assert_eq!(first.ca_hash(), again.ca_hash(), "the CA is kept across restarts");

        let node_key = KeyPair::generate().expect("key");
        let csr = CertificateParams::new(vec![]).expect("params").serialize_request(&node_key).expect("csr");
        let (pem, fingerprint) = again.sign_node(csr.der(), "n1").expect("signs");
        assert!(pem.contains("BEGIN CERTIFICATE"));
        assert_eq!(fingerprint.len(), 64);
        assert!(again.sign_node(b"not a csr", "n1").is_err());
    }
}
