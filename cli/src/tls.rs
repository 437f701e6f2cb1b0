//! Trusting a coordinator that serves HTTPS with a certificate from its own CA: the CLI pins that
//! CA (fetched once and checked against the hash the coordinator printed) and checks the name every
//! such certificate carries, `corral-coordinator`, whatever address it dials. A coordinator with the
//! operator's own certificate needs none of this: the system's roots and the URL's name apply.

use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use corral_proto::wire::COORDINATOR_SERVER_NAME;

#[derive(Debug)]
struct PinnedCa(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialed: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from(COORDINATOR_SERVER_NAME).map_err(|e| rustls::Error::General(e.to_string()))?;
        self.0.verify_server_cert(end_entity, intermediates, &name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A client that trusts only servers with a certificate from the CA in `ca_pem`.
pub fn pinned_client(ca_pem: &str) -> anyhow::Result<reqwest::Client> {
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).context("the pinned CA is not a PEM certificate")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).context("the pinned CA certificate is not usable")?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa(verifier)))
        .with_no_client_auth();
    Ok(reqwest::Client::builder().use_preconfigured_tls(config).build()?)
}

/// Lower-case hex SHA-256 of a PEM certificate's DER: what a join token and `--ca-hash` carry.
pub fn ca_hash(ca_pem: &str) -> anyhow::Result<String> {
    let der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).context("not a PEM certificate")?;
    Ok(ring::digest::digest(&ring::digest::SHA256, &der).as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// Fetches the coordinator's CA from `url` and keeps it only if its hash is `expected`: the one
/// download made before anything is trusted, and checked by what it must match.
pub async fn fetch_ca(url: &str, expected: &str) -> anyhow::Result<String> {
    let insecure = reqwest::Client::builder().danger_accept_invalid_certs(true).build()?;
    let url = format!("{}/ca.pem", url.trim_end_matches('/'));
    let resp = insecure.get(&url).send().await.with_context(|| format!("cannot reach {url}"))?;
    if !resp.status().is_success() {
        bail!("{url} answered {}", resp.status());
    }
    let pem = resp.text().await.with_context(|| format!("{url} was cut off"))?;
    let got = ca_hash(&pem).with_context(|| format!("{url} is not a certificate"))?;
    if !got.eq_ignore_ascii_case(expected.trim()) {
        bail!(
            "the coordinator at {url} has CA {got}, not {expected}: it is not the coordinator you meant, or something is in between"
        );
    }
    Ok(pem)
}
