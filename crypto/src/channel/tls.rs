//! TLS for [`super::TcpChannel`]: configurations read from PEM files.
//!
//! The semi-honest model assumes authenticated channels: without TLS anyone
//! on the path can pose as the server (and read the client's masked input
//! and the result). TLS 1.3 only, on `ring`'s primitives (rustls); the
//! client checks the server's certificate against a CA it is given and the
//! name it connects to. No client certificates: the server learns nothing
//! about who its clients are from the protocol either way.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::error::{Error, Result};

pub use rustls::{ClientConfig, ServerConfig};

/// Largest PEM file read (certificate chains and keys are a few KB).
const MAX_PEM_BYTES: u64 = 1 << 20;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tls(format!("{what}: {e}"))
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    let meta =
        std::fs::metadata(path).map_err(|e| tls_err(&format!("{what} {}", path.display()), e))?;
    if meta.len() > MAX_PEM_BYTES {
        return Err(Error::Tls(format!(
            "{what} {} is {} bytes; a PEM file is at most {MAX_PEM_BYTES}",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read(path).map_err(|e| tls_err(&format!("{what} {}", path.display()), e))
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_pem(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_err(&format!("{what} {}", path.display()), e))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{what} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

/// The server's configuration: its certificate chain (PEM, leaf first) and
/// private key (PEM: PKCS#8, PKCS#1 or SEC1).
pub fn server_config(cert_chain: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let certs = certificates(cert_chain, "certificate chain")?;
    let key_pem = read_pem(key, "private key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| tls_err(&format!("private key {}", key.display()), e))?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err("configuration", e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_err("the certificate and key do not make a server identity", e))?;
    Ok(Arc::new(cfg))
}

/// The client's configuration: the CA certificates (PEM) that may sign the
/// server's certificate; no other root is trusted.
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certificates(ca, "CA file")? {
        roots.add(c).map_err(|e| tls_err(&format!("CA file {}", ca.display()), e))?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err("configuration", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The name the server's certificate must carry: a DNS name or an IP
/// address (the host part of `host:port`, brackets of an IPv6 address
/// removed).
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| Error::Tls(format!("{host:?} is not a server name: {e}")))
}

/// The host part of `host:port`.
pub fn host_of(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => addr,
    }
}

/// What a TLS client needs: its configuration and the name it checks.
#[derive(Clone, Debug)]
pub struct TlsClient {
    /// Trusted roots and protocol settings.
    pub config: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must carry.
    pub name: ServerName<'static>,
}

/// Says what a failed handshake means in words a user acts on.
pub(crate) fn explain(e: std::io::Error) -> Error {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()).cloned();
    match inner {
        Some(rustls::Error::InvalidCertificate(c)) => Error::Tls(format!(
            "the server's certificate is not trusted ({c:?}): is --tls-ca the CA that signed \
             it, and does the certificate carry the name connected to?"
        )),
        Some(rustls::Error::AlertReceived(a)) => {
            Error::Tls(format!("the peer refused the TLS handshake ({a:?})"))
        }
        Some(other) => Error::Tls(format!("handshake: {other}")),
        None => match e.kind() {
            std::io::ErrorKind::InvalidData => Error::Tls(format!(
                "handshake: the peer does not speak TLS ({e}); is one side --plaintext?"
            )),
            _ => e.into(),
        },
    }
}

/// A private certificate authority and one server certificate it signed,
/// in PEM (ECDSA P-256 keys, valid from now for `days`).
pub struct Pki {
    /// The CA's certificate: what clients are given (`--tls-ca`).
    pub ca_cert: String,
    /// The CA's private key (keep it offline; it signs more servers).
    pub ca_key: String,
    /// The server's certificate (`--tls-cert`), for every name in `names`.
    pub server_cert: String,
    /// The server's private key (`--tls-key`).
    pub server_key: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

/// Makes a [`Pki`] for the server names `names` (DNS names or IP
/// addresses).
pub fn make_pki(names: &[String], days: u32) -> Result<Pki> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let err = |e: rcgen::Error| Error::Tls(format!("making certificates: {e}"));
    if names.is_empty() {
        return Err(Error::Tls("a server certificate needs at least one name".into()));
    }
    let now = std::time::SystemTime::now();
    let until = now + Duration::from_secs(u64::from(days) * 86_400);
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    // A CA name of its own: a client that trusts another delphi CA looks
    // this one's issuer up by name and must not find that other CA.
    let tag: u64 = rand::random();
    ca.distinguished_name.push(DnType::CommonName, format!("delphi private CA {tag:016x}"));
    ca.not_before = now.into();
    ca.not_after = until.into();
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let mut leaf = CertificateParams::new(names.to_vec()).map_err(err)?;
    leaf.distinguished_name.push(DnType::CommonName, names[0].clone());
    leaf.not_before = now.into();
    leaf.not_after = until.into();
    let leaf_key = KeyPair::generate().map_err(err)?;
    let ca_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(err)?;
    Ok(Pki {
        ca_cert: ca_cert.pem(),
        ca_key: ca_pem,
        server_cert: leaf_cert.pem(),
        server_key: leaf_key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::channel::{Channel, TcpChannel};
    use std::net::TcpListener;

    const WAIT: Duration = Duration::from_secs(10);

    /// A PKI written to a fresh folder: (folder, ca.pem, cert.pem, key.pem).
    fn pki_files(tag: &str) -> (std::path::PathBuf, [std::path::PathBuf; 3]) {
        let dir = std::env::temp_dir().join(format!("delphi-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = make_pki(&["localhost".into(), "127.0.0.1".into()], 2).unwrap();
        let files = [dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem")];
        for (f, text) in files.iter().zip([&p.ca_cert, &p.server_cert, &p.server_key]) {
            std::fs::write(f, text).unwrap();
        }
        (dir, files)
    }

    /// A TLS server thread (certificate `cert`, key `key`) answering one
    /// frame; the client's outcome (trusting `ca`, checking `name`) and the
    /// server's.
    fn exchange(cert: &Path, key: &Path, ca: &Path, name: &str) -> (Result<Vec<u8>>, Result<()>) {
        let server_cfg = server_config(cert, key).unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || -> Result<()> {
            let (s, _) = l.accept()?;
            let mut ch = TcpChannel::tls_server(s, server_cfg, WAIT)?;
            let m = ch.recv_frame()?;
            ch.send_frame(&m)?;
            ch.flush()
        });
        let tls =
            TlsClient { config: client_config(ca).unwrap(), name: server_name(name).unwrap() };
        let client = TcpChannel::tls_connect(addr, &tls, WAIT).and_then(|mut ch| {
            assert!(ch.is_tls());
            // A frame larger than the write buffer crosses too.
            let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
            ch.send_frame(&big)?;
            ch.flush()?;
            ch.recv_frame()
        });
        (client, server.join().unwrap())
    }

    #[test]
    fn frames_cross_a_tls_connection_checked_against_the_ca() {
        let (dir, [ca, cert, key]) = pki_files("own");
        for name in ["127.0.0.1", "localhost"] {
            let (client, server) = exchange(&cert, &key, &ca, name);
            let got = client.unwrap();
            assert_eq!(got.len(), 3_000_000);
            assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
            server.unwrap();
        }
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_wrong_ca_or_name_is_refused_by_name() {
        let (dir, [ca, cert, key]) = pki_files("server");
        let (other, [other_ca, _, _]) = pki_files("other");
        let (client, server) = exchange(&cert, &key, &other_ca, "127.0.0.1");
        let Err(Error::Tls(why)) = client else { panic!("{client:?}") };
        assert!(why.contains("not trusted") && why.contains("UnknownIssuer"), "{why}");
        assert!(server.is_err());
        // The right CA, another name.
        let (client, _) = exchange(&cert, &key, &ca, "example.org");
        let Err(Error::Tls(why)) = client else { panic!("{client:?}") };
        assert!(why.contains("not trusted") && why.contains("NotValidForName"), "{why}");
        std::fs::remove_dir_all(dir).ok();
        std::fs::remove_dir_all(other).ok();
    }

    #[test]
    fn a_plaintext_peer_is_refused() {
        let (dir, [ca, cert, key]) = pki_files("plain");
        // A plaintext client at a TLS server.
        let cfg = server_config(&cert, &key).unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h =
            std::thread::spawn(move || TcpChannel::tls_server(l.accept()?.0, cfg, WAIT).map(drop));
        let mut ch = TcpChannel::connect(addr).unwrap();
        ch.send_frame(&[0u8; 64]).unwrap();
        ch.flush().unwrap();
        let Err(Error::Tls(why)) = h.join().unwrap() else { panic!("accepted plaintext") };
        assert!(why.contains("handshake"), "{why}");
        // A TLS client at a plaintext server that sends first.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || -> Result<()> {
            let mut ch = TcpChannel::new(l.accept()?.0)?;
            ch.send_frame(b"{\"hello\":1}")?;
            ch.flush()
        });
        let tls = TlsClient {
            config: client_config(&ca).unwrap(),
            name: server_name("localhost").unwrap(),
        };
        let Err(Error::Tls(why)) = TcpChannel::tls_connect(addr, &tls, WAIT).map(drop) else {
            panic!("a plaintext server passed as TLS")
        };
        assert!(why.contains("does not speak TLS") || why.contains("handshake"), "{why}");
        let _ = h.join();
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn unusable_files_are_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("delphi-tls-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let Err(Error::Tls(why)) = client_config(&empty) else { panic!() };
        assert!(why.contains("no PEM certificate"), "{why}");
        let Err(Error::Tls(why)) = client_config(&dir.join("missing.pem")) else { panic!() };
        assert!(why.contains("missing.pem"), "{why}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn hosts_and_names() {
        assert_eq!(host_of("example.org:7878"), "example.org");
        assert_eq!(host_of("127.0.0.1:7878"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7878"), "[::1]");
        assert_eq!(host_of("example.org"), "example.org");
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("example.org"), Ok(ServerName::DnsName(_))));
        assert!(matches!(server_name("not a name"), Err(Error::Tls(_))));
    }
}
