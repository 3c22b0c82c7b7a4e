//! TLS to the source, as libpq's `sslmode` and `sslrootcert` say: `disable`, `prefer` (the
//! default: TLS when the server offers it, unverified), `require` (TLS, unverified),
//! `verify-ca` (the chain checked against the root certificates), `verify-full` (the chain
//! and the host name). Root certificates come from `sslrootcert` (a PEM file) or, without
//! it, the system store. The replication connection gets the same settings
//! (pgwire-replication's rustls support); regular connections use tokio-postgres-rustls.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::error::CdcError;

/// True when TLS failed on the certificate (retrying will not change it).
pub(crate) fn refused(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_none() && format!("{e:?}").to_lowercase().contains("certificate")
}

/// The error with its cause (tokio-postgres shows only "error performing TLS handshake").
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if refused(e) {
        text.push_str(" (check sslrootcert, or the server's certificate and host name)");
    }
    text
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Mode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The TLS settings of a source URL.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tls {
    pub(crate) mode: Mode,
    pub(crate) root_cert: Option<PathBuf>,
}

impl Tls {
    /// Takes `sslmode` and `sslrootcert` out of `url` (tokio-postgres knows neither
    /// `verify-*` nor `sslrootcert`); returns the rest of the URL and the settings.
    pub(crate) fn split(url: &str) -> Result<(String, Tls), CdcError> {
        let mut tls = Tls::default();
        let mut take = |key: &str, value: &str| -> Result<bool, CdcError> {
            match key {
                "sslmode" => {
                    tls.mode = match value {
                        "disable" => Mode::Disable,
                        "allow" | "prefer" => Mode::Prefer,
                        "require" => Mode::Require,
                        "verify-ca" => Mode::VerifyCa,
                        "verify-full" => Mode::VerifyFull,
                        other => {
                            return Err(CdcError::Config(format!(
                                "source URL: sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                            )))
                        }
                    };
                    Ok(true)
                }
                "sslrootcert" => {
                    tls.root_cert = Some(PathBuf::from(value));
                    Ok(true)
                }
                "sslcert" | "sslkey" => Err(CdcError::Config(format!(
                    "source URL: {key} (client certificates) is not supported yet; use a password (scram-sha-256)"
                ))),
                _ => Ok(false),
            }
        };
        let rest = if let Some((base, query)) = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .and_then(|_| url.split_once('?'))
        {
            let mut kept = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                if !take(key, value)? {
                    kept.push(pair);
                }
            }
            if kept.is_empty() {
                base.to_string()
            } else {
                format!("{base}?{}", kept.join("&"))
            }
        } else if url.contains("://") {
            url.to_string()
        } else {
            // key=value form.
            let mut kept = Vec::new();
            for word in url.split_whitespace() {
                let (key, value) = word.split_once('=').unwrap_or((word, ""));
                if !take(key, value.trim_matches('\''))? {
                    kept.push(word);
                }
            }
            kept.join(" ")
        };
        if tls.root_cert.is_some() && !matches!(tls.mode, Mode::VerifyCa | Mode::VerifyFull) {
            // libpq verifies whenever a root certificate is given with require.
            if tls.mode == Mode::Require {
                tls.mode = Mode::VerifyCa;
            }
        }
        Ok((rest, tls))
    }

    /// tokio-postgres's own mode for the regular connections.
    pub(crate) fn postgres_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            Mode::Disable => tokio_postgres::config::SslMode::Disable,
            Mode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }

    /// The replication connection's settings.
    pub(crate) fn replication(&self, host: &str) -> pgwire_replication::TlsConfig {
        use pgwire_replication::TlsConfig;
        match self.mode {
            Mode::Disable => TlsConfig::disabled(),
            Mode::Prefer => TlsConfig {
                mode: pgwire_replication::SslMode::Prefer,
                ..TlsConfig::default()
            },
            Mode::Require => TlsConfig::require(),
            Mode::VerifyCa => TlsConfig::verify_ca(self.root_cert.clone()),
            Mode::VerifyFull => {
                TlsConfig::verify_full(self.root_cert.clone()).with_sni_hostname(host)
            }
        }
    }

    /// The rustls connector for regular connections.
    pub(crate) fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, CdcError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| CdcError::Config(format!("TLS: {e}")))?;
        let config = match self.mode {
            Mode::Disable | Mode::Prefer | Mode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth(),
            Mode::VerifyCa | Mode::VerifyFull => {
                let roots = Arc::new(self.roots()?);
                let webpki =
                    rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                        .build()
                        .map_err(|e| CdcError::Config(format!("TLS root certificates: {e}")))?;
                if self.mode == Mode::VerifyFull {
                    builder.with_webpki_verifier(webpki).with_no_client_auth()
                } else {
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
                        .with_no_client_auth()
                }
            }
        };
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }

    fn roots(&self) -> Result<rustls::RootCertStore, CdcError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.root_cert {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    CdcError::Config(format!("sslrootcert {}: {e}", path.display()))
                })?;
                let certs: Vec<CertificateDer<'static>> =
                    rustls::pki_types::pem::PemObject::pem_slice_iter(&pem)
                        .collect::<Result<_, _>>()
                        .map_err(|e| {
                            CdcError::Config(format!("sslrootcert {}: {e:?}", path.display()))
                        })?;
                if certs.is_empty() {
                    return Err(CdcError::Config(format!(
                        "sslrootcert {} holds no PEM certificate",
                        path.display()
                    )));
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        CdcError::Config(format!("sslrootcert {}: {e}", path.display()))
                    })?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        Ok(roots)
    }
}

/// `prefer` / `require`: encrypted, the certificate not checked (libpq's semantics);
/// handshake signatures are still verified.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain checked, the host name not.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
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
