//! Reading X.509 certificates: PEM bundles and the facts Palisade trusts a certificate for.
//!
//! rustls-webpki checks that a chain is signed and in date, but not the SPIFFE rules on top:
//! a workload certificate must carry exactly one URI SAN, which is a SPIFFE ID, and must not
//! be a CA. Those checks live here so that the sidecar, the control plane and the tests read
//! certificates the same way.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::spiffe::{SpiffeId, SpiffeIdError};

/// Why a certificate or PEM document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("no PEM certificate found")]
    NoCertificate,
    #[error("PEM is malformed: {0}")]
    BadPem(String),
    #[error("certificate is not valid DER X.509")]
    BadDer,
    #[error("certificate has {0} URI SANs; a workload certificate must have exactly one")]
    UriSanCount(usize),
    #[error("certificate's URI SAN is not a valid SPIFFE ID: {0}")]
    BadSpiffeId(SpiffeIdError),
    #[error("certificate has duplicate or unreadable extensions")]
    BadExtensions,
    #[error("certificate is a CA certificate and cannot identify a workload")]
    LeafIsCa,
}

/// Parses every certificate in a PEM document, in order. At least one is required.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadPem(e.to_string()))?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate);
    }
    for cert in &certs {
        parse(cert)?;
    }
    Ok(certs)
}

/// Encodes certificates as one PEM document.
pub fn certs_to_pem<'a, 'b: 'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'b>>) -> String {
    let blocks: Vec<pem::Pem> = certs
        .into_iter()
        .map(|c| pem::Pem::new("CERTIFICATE", c.as_ref().to_vec()))
        .collect();
    pem::encode_many_config(
        &blocks,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, CertError> {
    match X509Certificate::from_der(der.as_ref()) {
        Ok(([], cert)) => Ok(cert),
        _ => Err(CertError::BadDer),
    }
}

/// What Palisade reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// The SPIFFE ID, when the certificate has exactly one URI SAN and it is one.
    pub spiffe_id: Option<SpiffeId>,
    pub is_ca: bool,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
    /// Serial number, lower-case hex with ':' separators (as `openssl x509 -serial` without them).
    pub serial: String,
    pub subject: String,
    /// Number of URI SANs (0 for most CA certificates).
    pub uri_sans: usize,
}

/// Reads the summary of any certificate (leaf or CA).
pub fn summarize(der: &CertificateDer<'_>) -> Result<CertSummary, CertError> {
    let cert = parse(der)?;
    let uris = uri_sans(&cert)?;
    let spiffe_id = match uris.as_slice() {
        [one] => SpiffeId::parse(one).ok(),
        _ => None,
    };
    let is_ca = cert
        .basic_constraints()
        .map_err(|_| CertError::BadExtensions)?
        .is_some_and(|bc| bc.value.ca);
    Ok(CertSummary {
        spiffe_id,
        is_ca,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        serial: cert.tbs_certificate.raw_serial_as_string().replace(':', ""),
        subject: cert.subject().to_string(),
        uri_sans: uris.len(),
    })
}

/// The SPIFFE ID of a workload certificate, refusing anything that is not exactly one
/// SPIFFE URI SAN on a non-CA certificate.
pub fn workload_spiffe_id(der: &CertificateDer<'_>) -> Result<SpiffeId, CertError> {
    let cert = parse(der)?;
    let is_ca = cert
        .basic_constraints()
        .map_err(|_| CertError::BadExtensions)?
        .is_some_and(|bc| bc.value.ca);
    if is_ca {
        return Err(CertError::LeafIsCa);
    }
    let uris = uri_sans(&cert)?;
    match uris.as_slice() {
        [one] => SpiffeId::parse(one).map_err(CertError::BadSpiffeId),
        other => Err(CertError::UriSanCount(other.len())),
    }
}

fn uri_sans<'a>(cert: &X509Certificate<'a>) -> Result<Vec<&'a str>, CertError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|_| CertError::BadExtensions)?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}
