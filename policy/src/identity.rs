//! Instance identity credentials (CF's CF_INSTANCE_CERT): a deployment CA, separate from the
//! cell CA, that signs a certificate for each container from a CSR its cell makes. The key
//! never leaves the cell; the control plane adds what it knows (the app's internal routes).
//!
//! The certificate: subject `OU=organization:ORG, OU=space:SPACE, OU=app:APP, CN=HANDLE` (the
//! shape of Diego's instance identity), DNS SANs the handle and the app's internal routes, an
//! IP SAN the container's address, EKU serverAuth + clientAuth, valid [`DEFAULT_LIFETIME`]
//! unless the request asks for less (at least [`MIN_LIFETIME`]).
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    SigningKey,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::certs::{read, tls_err, write_file};
use crate::error::ControlError;

/// How long an instance certificate is valid unless the request asks for less.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The shortest lifetime a request may ask for.
pub const MIN_LIFETIME: Duration = Duration::from_secs(10);

/// Body of `POST /internal/instance_identity`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IdentityRequest {
    /// PEM `CERTIFICATE REQUEST`; its signature must verify. Only its public key is used.
    #[serde(default)]
    pub csr: String,
    /// The container handle: the certificate's CN and first DNS SAN.
    #[serde(default)]
    pub handle: String,
    /// The container's overlay address: the IP SAN.
    #[serde(default)]
    pub ip: String,
    #[serde(default)]
    pub app_id: String,
    #[serde(default)]
    pub space_id: String,
    #[serde(default)]
    pub org_id: String,
    /// Shortens the lifetime (seconds; at least 10, at most the default 24 h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_secs: Option<u64>,
}

/// The answer: the signed certificate and the CA that signed it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IssuedIdentity {
    /// PEM, the instance certificate alone (the CA is `ca`).
    pub certificate: String,
    /// PEM, the instance identity CA: what peers verify instance certificates against.
    pub ca: String,
    /// Unix seconds.
    pub not_before: u64,
    /// Unix seconds.
    pub not_after: u64,
}

/// Why a request was refused: `field` is the request field at fault.
#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("signing the instance certificate: {0}")]
    Signing(String),
}

fn invalid(field: &'static str, message: impl Into<String>) -> IdentityError {
    IdentityError::Invalid {
        field,
        message: message.into(),
    }
}

/// `DATA_DIR/instance-identity`: `ca.pem` and `ca-key.pem` (0600), in a 0700 folder.
pub fn identity_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("instance-identity")
}

/// The instance identity CA, with its key.
pub struct InstanceCa {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params() -> Result<CertificateParams, ControlError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    p.distinguished_name
        .push(DnType::CommonName, "Tapestry instance identity CA");
    p.distinguished_name
        .push(DnType::OrganizationName, "Tapestry");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

impl InstanceCa {
    /// Loads the CA from `DATA_DIR/instance-identity/`, or creates it (ECDSA P-256) on first
    /// start. The folder is made 0700 and the key 0600 whatever the umask.
    pub fn ensure(data_dir: &Path) -> Result<InstanceCa, ControlError> {
        let dir = identity_dir(data_dir);
        crate::server::private_dir(&dir)?;
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
        if cert_path.is_file() && key_path.is_file() {
            let key = KeyPair::from_pem(&read(&key_path)?).map_err(tls_err)?;
            let ca_pem = read(&cert_path)?;
            let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).map_err(tls_err)?;
            return Ok(InstanceCa { ca_pem, issuer });
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(tls_err)?;
        let params = ca_params()?;
        let cert = params.self_signed(&key).map_err(tls_err)?;
        // The key first: a CA certificate without its key is useless, the reverse is redone.
        write_file(&key_path, &key.serialize_pem(), true)?;
        write_file(&cert_path, &cert.pem(), false)?;
        Ok(InstanceCa {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Checks `req` and signs its CSR's key with the identity fields; `routes` are the app's
    /// internal route hosts (DNS SANs after the handle).
    pub fn issue(
        &self,
        req: &IdentityRequest,
        routes: &[String],
        now: SystemTime,
    ) -> Result<IssuedIdentity, IdentityError> {
        let ip = check_request(req)?;
        let csr = CertificateSigningRequestParams::from_pem(&req.csr).map_err(|e| match e {
            rcgen::Error::InvalidCertificationRequestSignature => invalid(
                "csr",
                "the signature of the certificate request does not verify",
            ),
            other => invalid(
                "csr",
                format!("not a PEM certificate request this CA can sign: {other}"),
            ),
        })?;
        let lifetime = req
            .lifetime_secs
            .map_or(DEFAULT_LIFETIME, Duration::from_secs)
            .clamp(MIN_LIFETIME, DEFAULT_LIFETIME);
        let not_before = now - Duration::from_secs(30).min(lifetime);
        let not_after = now + lifetime;
        let sign_err = |e: rcgen::Error| IdentityError::Signing(e.to_string());
        let mut p = CertificateParams::default();
        // A placeholder subject, replaced below by one with three OUs (rcgen keeps one value
        // per attribute type).
        let marker = format!("tapestry-subject-{:032x}", rand::random::<u128>());
        p.distinguished_name
            .push(DnType::CommonName, marker.clone());
        let mut sans = vec![dns_san(&req.handle)?];
        for r in routes {
            if r != &req.handle {
                sans.push(dns_san(r)?);
            }
        }
        sans.push(SanType::IpAddress(ip.into()));
        p.subject_alt_names = sans;
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        p.is_ca = IsCa::ExplicitNoCa;
        p.use_authority_key_identifier_extension = true;
        let mut serial = rand::random::<[u8; 16]>();
        serial[0] &= 0x7f;
        serial[0] |= 0x01;
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        p.not_before = not_before.into();
        p.not_after = not_after.into();
        let signed = CertificateSigningRequestParams {
            params: p,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)
        .map_err(sign_err)?;
        let subject = [
            (OU, format!("organization:{}", req.org_id)),
            (OU, format!("space:{}", req.space_id)),
            (OU, format!("app:{}", req.app_id)),
            (CN, req.handle.clone()),
        ];
        let der = replace_subject(signed.der(), &[(CN, marker)], &subject, self.issuer.key())?;
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(IssuedIdentity {
            certificate: pem_certificate(&der),
            ca: self.ca_pem.clone(),
            not_before: secs(not_before),
            not_after: secs(not_after),
        })
    }
}

/// Validates the fields other than `csr`; returns the IP.
pub fn check_request(req: &IdentityRequest) -> Result<Ipv4Addr, IdentityError> {
    if req.csr.trim().is_empty() {
        return Err(invalid("csr", "required"));
    }
    if req.handle.is_empty() {
        return Err(invalid("handle", "required"));
    }
    if req.handle.len() > 253 || !req.handle.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "handle",
            "must be 1-253 ASCII letters, digits or punctuation (it is a DNS name in the certificate)",
        ));
    }
    let ip: Ipv4Addr = req
        .ip
        .parse()
        .map_err(|_| invalid("ip", format!("'{}' is not an IPv4 address", req.ip)))?;
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        return Err(invalid("ip", format!("{ip} is not a unicast address")));
    }
    if req.app_id.trim().is_empty() {
        return Err(invalid("app_id", "required"));
    }
    for (field, v) in [
        ("app_id", &req.app_id),
        ("space_id", &req.space_id),
        ("org_id", &req.org_id),
    ] {
        if v.len() > 255 || v.chars().any(char::is_control) {
            return Err(invalid(
                field,
                "must be at most 255 characters without control characters",
            ));
        }
    }
    if req.lifetime_secs == Some(0) {
        return Err(invalid("lifetime_secs", "must be positive"));
    }
    Ok(ip)
}

fn dns_san(name: &str) -> Result<SanType, IdentityError> {
    let ia5 = name
        .to_string()
        .try_into()
        .map_err(|_| invalid("handle", format!("{name:?} is not an ASCII DNS name")))?;
    Ok(SanType::DnsName(ia5))
}

const CN: &[u64] = &[2, 5, 4, 3];
const OU: &[u64] = &[2, 5, 4, 11];

/// A Name: one RDN per attribute, UTF8String values (as rcgen writes them).
fn name_der(attrs: &[(&[u64], String)]) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            for (oid, value) in attrs {
                w.next().write_set(|w| {
                    w.next().write_sequence(|w| {
                        w.next()
                            .write_oid(&yasna::models::ObjectIdentifier::from_slice(oid));
                        w.next().write_utf8_string(value);
                    })
                })
            }
        })
    })
}

/// Replaces the subject `old` of the signed certificate `cert` by `new` and signs it again.
fn replace_subject(
    cert: &[u8],
    old: &[(&[u64], String)],
    new: &[(&[u64], String)],
    key: &KeyPair,
) -> Result<Vec<u8>, IdentityError> {
    let fail = |m: &str| IdentityError::Signing(format!("rewriting the subject: {m}"));
    let (tbs, alg) = yasna::parse_der(cert, |r| {
        r.read_sequence(|r| {
            let tbs = r.next().read_der()?;
            let alg = r.next().read_der()?;
            r.next().read_bitvec_bytes()?;
            Ok((tbs, alg))
        })
    })
    .map_err(|e| fail(&e.to_string()))?;
    let contents = der_contents(&tbs).ok_or_else(|| fail("bad TBS header"))?;
    let (old, new) = (name_der(old), name_der(new));
    let at = contents
        .windows(old.len())
        .position(|w| w == old.as_slice())
        .ok_or_else(|| fail("placeholder subject not found"))?;
    let mut body = contents[..at].to_vec();
    body.extend_from_slice(&new);
    body.extend_from_slice(&contents[at + old.len()..]);
    let tbs = yasna::construct_der(|w| w.write_sequence(|w| w.next().write_der(&body)));
    let sig = key
        .sign(&tbs)
        .map_err(|e| IdentityError::Signing(e.to_string()))?;
    Ok(yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_der(&tbs);
            w.next().write_der(&alg);
            w.next().write_bitvec_bytes(&sig, sig.len() * 8);
        })
    }))
}

/// The contents of a DER SEQUENCE (its header stripped).
fn der_contents(tlv: &[u8]) -> Option<&[u8]> {
    if tlv.first() != Some(&0x30) {
        return None;
    }
    let first = *tlv.get(1)?;
    let (len, start) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let len = tlv
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, 2 + n)
    };
    tlv.get(start..start.checked_add(len)?)
}

fn pem_certificate(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der), config)
}
