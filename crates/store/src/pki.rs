//! A small certificate authority for an etcd cluster of ilanet (the lab's, and tests'): one CA,
//! a server certificate per etcd member (also used for peer TLS), and a client certificate per
//! user — `root`, the policy administrator ([`POLICY_ADMIN_USER`]) and one per host, whose common name is the host name (etcd takes the client
//! certificate's CN as the user name when `--client-cert-auth` is on).
//!
//! Files in the PKI directory (keys are mode 0600, the directory 0700):
//!
//! | file | what |
//! |---|---|
//! | `ca.crt` | the CA certificate (the CA key is not kept: nothing more can be signed) |
//! | `member-<name>.crt`, `member-<name>.key` | an etcd member's server + peer certificate |
//! | `client-<cn>.crt`, `client-<cn>.key` | a client certificate with CN `<cn>` |
//!
//! Certificates are ECDSA P-256 (rcgen's default), valid from generation for
//! [`VALIDITY_DAYS`] days. Member certificates name `127.0.0.1`, `::1` and `localhost` plus the
//! addresses given.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// How long generated certificates are valid.
pub const VALIDITY_DAYS: u64 = 825;
/// The etcd user with every permission (and the CN of its certificate).
pub const ROOT_USER: &str = "root";
/// The etcd user that may write policies (and the CN of its certificate): hosts may only read
/// them, so that a compromised host cannot change what the network allows.
pub const POLICY_ADMIN_USER: &str = "ilanet-policy-admin";

/// Errors of certificate generation.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Writing or reading a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// rcgen refused the parameters.
    #[error("generating {what}: {reason}")]
    Generate {
        /// Which certificate.
        what: String,
        /// rcgen's error.
        reason: String,
    },
    /// A name cannot be a certificate's CN or file name.
    #[error("{0:?} cannot name a certificate (empty, '/', control characters or too long)")]
    BadName(String),
}

/// The three files a TLS client of etcd needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientTls {
    /// CA certificate that signed the members' certificates (PEM).
    pub ca: PathBuf,
    /// The client certificate (PEM); its CN is the etcd user.
    pub cert: PathBuf,
    /// The client certificate's private key (PEM).
    pub key: PathBuf,
}

/// A generated PKI directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pki {
    dir: PathBuf,
}

fn check_name(name: &str) -> Result<(), PkiError> {
    if name.is_empty()
        || name.len() > 64
        || name.contains('/')
        || name.starts_with('.')
        || name.chars().any(char::is_control)
    {
        return Err(PkiError::BadName(name.to_string()));
    }
    Ok(())
}

fn gen_err(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |e| PkiError::Generate {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

fn write_file(path: &Path, text: &str, private: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}

fn params(cn: &str, sans: Vec<String>) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(sans).map_err(gen_err(cn))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "ilanet");
    p.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks a little behind.
    p.not_before = now - Duration::from_secs(3600);
    p.not_after = now + Duration::from_secs(VALIDITY_DAYS * 86_400);
    Ok(p)
}

impl Pki {
    /// Generates a CA and the certificates of `members` (etcd member names; their
    /// certificates also name `extra_addrs`) and of the clients `root`, [`POLICY_ADMIN_USER`] and
    /// `hosts` into `dir`
    /// (created with mode 0700; files already there are replaced).
    pub fn generate(
        dir: &Path,
        members: &[String],
        extra_addrs: &[IpAddr],
        hosts: &[String],
    ) -> Result<Pki, PkiError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| PkiError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        let ca_key = KeyPair::generate().map_err(gen_err("the CA key"))?;
        let mut ca = params("ilanet etcd CA", Vec::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, ca_key).map_err(gen_err("the CA"))?;
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        write_file(&pki.ca(), &ca.pem(), false)?;
        for m in members {
            check_name(m)?;
            let mut sans = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
            sans.extend(extra_addrs.iter().map(IpAddr::to_string));
            let mut p = params(m, sans)?;
            // The member certificate serves clients and peers, and is a peer's client too.
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let key = KeyPair::generate().map_err(gen_err(m))?;
            let cert = p.signed_by(&key, &ca).map_err(gen_err(m))?;
            let (crt, k) = pki.member(m);
            write_file(&crt, &cert.pem(), false)?;
            write_file(&k, &key.serialize_pem(), true)?;
        }
        if let Some(h) = hosts
            .iter()
            .find(|h| *h == ROOT_USER || *h == POLICY_ADMIN_USER)
        {
            return Err(PkiError::BadName(format!(
                "{h} (a host may not take the name of an administrator)"
            )));
        }
        for cn in [ROOT_USER, POLICY_ADMIN_USER]
            .into_iter()
            .chain(hosts.iter().map(String::as_str))
        {
            check_name(cn)?;
            let mut p = params(cn, Vec::new())?;
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let key = KeyPair::generate().map_err(gen_err(cn))?;
            let cert = p.signed_by(&key, &ca).map_err(gen_err(cn))?;
            let files = pki.client(cn);
            write_file(&files.cert, &cert.pem(), false)?;
            write_file(&files.key, &key.serialize_pem(), true)?;
        }
        Ok(pki)
    }

    /// A PKI directory generated before.
    pub fn open(dir: &Path) -> Pki {
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A member's certificate and key.
    pub fn member(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("member-{name}.crt")),
            self.dir.join(format!("member-{name}.key")),
        )
    }

    /// The files of the client with common name `cn` (`root`, [`POLICY_ADMIN_USER`], or a host
    /// name).
    pub fn client(&self, cn: &str) -> ClientTls {
        ClientTls {
            ca: self.ca(),
            cert: self.dir.join(format!("client-{cn}.crt")),
            key: self.dir.join(format!("client-{cn}.key")),
        }
    }
}
