//! TLS with rustls (ring provider): the server configuration built from the PEM files in
//! `[tls]`, with ALPN `h2` and `http/1.1`. It is built once at startup, where a missing or bad
//! file is an error that names it, and again on every configuration reload (SIGHUP): every
//! core's next handshake uses the new certificate, connections already open keep their
//! session, and a reload whose files fail to load is refused and changes nothing. The configuration is read once per handshake (a lock
//! outside the data path).

use kateway_core::config::TlsConfig;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::{Arc, RwLock};

static CURRENT: RwLock<Option<Arc<ServerConfig>>> = RwLock::new(None);

/// Builds the server configuration from the files named in `cfg`.
pub fn load(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .and_then(|it| it.collect())
        .map_err(|e| format!("tls.cert {}: {e}", cfg.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert {}: no certificate in the file",
            cfg.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key)
        .map_err(|e| format!("tls.key {}: {e}", cfg.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sc = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "tls.cert {} / tls.key {}: {e}",
                cfg.cert.display(),
                cfg.key.display()
            )
        })?;
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(sc))
}

/// Installs the configuration for the cores' handshakes (at startup: an error stops it).
pub fn install(cfg: &TlsConfig) -> Result<(), String> {
    put(load(cfg)?);
    Ok(())
}

/// Puts a configuration built by [`load`] in force for the next handshakes (a reload).
pub fn put(sc: Arc<ServerConfig>) {
    *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Some(sc);
}

/// An acceptor with the current configuration, if TLS is configured.
pub fn acceptor() -> Option<monoio_rustls::TlsAcceptor> {
    let sc = CURRENT.read().unwrap_or_else(|e| e.into_inner()).clone()?;
    Some(monoio_rustls::TlsAcceptor::from(sc))
}
