//! TLS to PostgreSQL, as the store's URL asks for it, in libpq's words:
//! `sslmode` is `disable`, `prefer`, `require` (encrypted; the server's
//! certificate checked only when `sslrootcert` is given), `verify-ca` (its
//! chain checked against the trusted roots) or `verify-full` (and its
//! name: the host the URL names); `sslrootcert` is a PEM file of the
//! certificate authorities to trust (default: the system's). Without
//! `sslmode` the connection is plain, as it always was.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require`: the URL is
//! handed to it with `sslmode` and `sslrootcert` taken out, and the rest
//! (what to trust, and whether to check) is this module's rustls
//! configuration.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::store::StoreError;

/// How the URL asks for TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain: no `sslmode`, or `disable`.
    Disable,
    /// TLS if the server offers it, unchecked.
    Prefer,
    /// TLS, the certificate checked only against an `sslrootcert`.
    Require,
    /// TLS, the certificate's chain checked.
    VerifyCa,
    /// TLS, the chain and the host name checked.
    VerifyFull,
}

/// The store's URL for tokio-postgres, and the TLS it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    /// The URL without `sslrootcert`, `sslmode` as tokio-postgres knows it.
    pub url: String,
    /// What `sslmode` said.
    pub mode: SslMode,
    /// `sslrootcert`.
    pub root_cert: Option<PathBuf>,
}

/// Reads `sslmode` and `sslrootcert` out of a `postgres://…?…` URL.
pub fn parse(url: &str) -> Result<StoreUrl, StoreError> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut mode = SslMode::Disable;
    let mut root_cert = None;
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => {
                mode = match value {
                    "disable" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(StoreError::Unavailable(format!(
                            "sslmode={other} in the store's URL: it is one of disable, prefer, \
                             require, verify-ca, verify-full"
                        )));
                    }
                }
            }
            "sslrootcert" => root_cert = Some(PathBuf::from(percent_decoded(value))),
            _ => kept.push(pair),
        }
    }
    let tokio_mode = match mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => "require",
    };
    kept.push(match tokio_mode {
        "disable" => "sslmode=disable",
        "prefer" => "sslmode=prefer",
        _ => "sslmode=require",
    });
    Ok(StoreUrl {
        url: format!("{base}?{}", kept.join("&")),
        mode,
        root_cert,
    })
}

/// `%2F` and the like in a path given in a URL.
fn percent_decoded(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The rustls configuration for `url`'s mode (`None`: plain).
pub fn client_config(url: &StoreUrl) -> Result<Option<ClientConfig>, StoreError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = match (&url.root_cert, url.mode) {
        (_, SslMode::Disable) => return Ok(None),
        (Some(path), _) => Some(roots_from(path)?),
        (None, SslMode::VerifyCa | SslMode::VerifyFull) => Some(system_roots()?),
        (None, SslMode::Prefer | SslMode::Require) => None,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match roots {
        // Encrypted, unchecked: libpq's `require` without a root file.
        None => Arc::new(Unchecked(provider.clone())),
        Some(roots) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| tls_error(&format!("cannot check server certificates: {e}")))?;
            match url.mode {
                SslMode::VerifyFull => webpki,
                _ => Arc::new(ChainOnly(webpki)),
            }
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(&e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(config))
}

fn tls_error(why: &str) -> StoreError {
    StoreError::Unavailable(format!("TLS to PostgreSQL: {why}"))
}

fn roots_from(path: &PathBuf) -> Result<Arc<RootCertStore>, StoreError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<_, _>>())
        .map_err(|e| tls_error(&format!("sslrootcert {}: {e}", path.display())))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(tls_error(&format!(
            "sslrootcert {}: no certificate in it",
            path.display()
        )));
    }
    Ok(Arc::new(roots))
}

fn system_roots() -> Result<Arc<RootCertStore>, StoreError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(tls_error(
            "no trusted certificate authorities on this system: give sslrootcert=FILE",
        ));
    }
    Ok(Arc::new(roots))
}

/// Checks a server's chain, not the name in it (libpq's `verify-ca`).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
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

/// Takes any certificate (libpq's `require` without a root file): the
/// connection is encrypted, and the handshake's signatures still checked,
/// but who the server is is not.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_modes_are_read_out_of_the_url() {
        let plain = parse("postgres://u:p@db:5432/dir").unwrap();
        assert_eq!(plain.mode, SslMode::Disable);
        assert_eq!(plain.url, "postgres://u:p@db:5432/dir?sslmode=disable");
        let full = parse(
            "postgres://u@db/dir?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(full.mode, SslMode::VerifyFull);
        assert_eq!(full.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(
            full.url,
            "postgres://u@db/dir?application_name=x&sslmode=require"
        );
        assert_eq!(
            parse("postgres://db/x?sslmode=verify-ca").unwrap().mode,
            SslMode::VerifyCa
        );
        let err = parse("postgres://db/x?sslmode=allow").unwrap_err();
        assert!(err.to_string().contains("verify-full"), "{err}");
        assert!(client_config(&plain).unwrap().is_none());
        let require = parse("postgres://db/x?sslmode=require").unwrap();
        assert!(client_config(&require).unwrap().is_some());
    }
}
