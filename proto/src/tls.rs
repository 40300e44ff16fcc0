//! Client side of the mutual TLS between agents (or consumers) and the aggregator: the flags and the
//! tonic client configuration, re-read from the files at every connection so rotated certificates
//! (cert-manager layout `tls.crt`, `tls.key`, `ca.crt`) apply at the next reconnect.

use std::path::PathBuf;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::flags::{non_blank, NonBlank};

/// `--tls-cert`, `--tls-key`, `--tls-ca` for gRPC clients (blank: unset).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClientTlsFlags {
    /// Client certificate (PEM) presented to the aggregator.
    #[arg(long = "tls-cert", env = "AGENT_TLS_CERT", default_value = "", hide_default_value = true, value_parser = non_blank::<PathBuf>)]
    pub cert: NonBlank<PathBuf>,
    /// Client private key (PEM).
    #[arg(long = "tls-key", env = "AGENT_TLS_KEY", default_value = "", hide_default_value = true, value_parser = non_blank::<PathBuf>)]
    pub key: NonBlank<PathBuf>,
    /// CA (PEM) the aggregator's certificate must chain to.
    #[arg(long = "tls-ca", env = "AGENT_TLS_CA", default_value = "", hide_default_value = true, value_parser = non_blank::<PathBuf>)]
    pub ca: NonBlank<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("TLS needs all of --tls-cert, --tls-key and --tls-ca (or none)")]
    Incomplete,
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("TLS set-up failed: {0}")]
    Setup(#[from] tonic::transport::Error),
}

impl ClientTlsFlags {
    pub fn enabled(&self) -> Result<bool, ClientTlsError> {
        match (self.cert.get(), self.key.get(), self.ca.get()) {
            (None, None, None) => Ok(false),
            (Some(_), Some(_), Some(_)) => Ok(true),
            _ => Err(ClientTlsError::Incomplete),
        }
    }

    /// The endpoint with TLS applied from the current files (unchanged when TLS is off).
    pub fn apply(&self, endpoint: Endpoint) -> Result<Endpoint, ClientTlsError> {
        if !self.enabled()? {
            return Ok(endpoint);
        }
        let (Some(cert), Some(key), Some(ca)) = (self.cert.get(), self.key.get(), self.ca.get()) else {
            return Err(ClientTlsError::Incomplete);
        };
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| ClientTlsError::Read(p.clone(), e));
        let tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?)).identity(Identity::from_pem(read(cert)?, read(key)?));
        Ok(endpoint.tls_config(tls)?)
    }
}
