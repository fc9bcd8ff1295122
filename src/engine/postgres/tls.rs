//! TLS for connections to PostgreSQL, with libpq's `sslmode` semantics, on rustls (ring).
//!
//! - `disable`: no TLS. `prefer` (and `allow`): TLS if the server offers it, unverified.
//! - `require`: TLS, unverified; with `sslrootcert`, verified as for `verify-ca` (as libpq does).
//! - `verify-ca`: the certificate chain must lead to `sslrootcert`; the host name is not checked.
//! - `verify-full`: chain and host name (or IP address) verified.
//!
//! `sslrootcert` defaults to `~/.postgresql/root.crt` when that file exists, as in libpq.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::conninfo::{ConnInfo, SslMode};
use crate::error::{Error, Result};

/// The TLS connector for `info`'s `sslmode`, and the client's own mode for it.
pub(crate) fn connector(info: &ConnInfo) -> Result<(MakeRustlsConnect, postgres::config::SslMode)> {
    // rustls 0.23.48 deprecates ring's provider for lacking post-quantum key exchange; its
    // replacement (aws-lc-rs) builds a C library with cmake on every machine that builds
    // tollgate. Kept deliberately: TLS to PostgreSQL with ring's classical key exchange, as
    // before; revisit when PostgreSQL deployments ask for post-quantum key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let root = info.ssl_root_cert.clone().or_else(default_root_cert);
    let mode = match (info.ssl_mode, &root) {
        (SslMode::Require, Some(_)) => SslMode::VerifyCa,
        (mode, _) => mode,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(Unverified {
            provider: Arc::clone(&provider),
        }),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let path = root.ok_or_else(|| {
                Error::InvalidArgument(
                    "sslmode=verify-ca and verify-full need sslrootcert (or ~/.postgresql/root.crt)"
                        .into(),
                )
            })?;
            let mut roots = RootCertStore::empty();
            let certificates = CertificateDer::pem_file_iter(&path).map_err(|error| {
                Error::InvalidArgument(format!("cannot read sslrootcert {path}: {error}"))
            })?;
            for certificate in certificates {
                let certificate = certificate.map_err(|error| {
                    Error::InvalidArgument(format!("bad certificate in {path}: {error}"))
                })?;
                roots.add(certificate).map_err(|error| {
                    Error::InvalidArgument(format!("bad certificate in {path}: {error}"))
                })?;
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|error| {
                        Error::InvalidArgument(format!("sslrootcert {path}: {error}"))
                    })?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly { webpki })
            }
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| Error::InvalidArgument(format!("TLS setup: {error}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let client_mode = match mode {
        SslMode::Disable => postgres::config::SslMode::Disable,
        SslMode::Prefer => postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            postgres::config::SslMode::Require
        }
    };
    Ok((MakeRustlsConnect::new(config), client_mode))
}

fn default_root_cert() -> Option<String> {
    let home = std::env::var_os("HOME")?;
    let path = std::path::Path::new(&home).join(".postgresql/root.crt");
    path.exists().then(|| path.display().to_string())
}

/// Accepts any certificate (libpq's `require` and `prefer`), still checking that the server
/// holds the certificate's key.
#[derive(Debug)]
struct Unverified {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the chain must verify; a certificate for another name is accepted.
#[derive(Debug)]
struct ChainOnly {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
