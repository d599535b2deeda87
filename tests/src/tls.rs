//! TLS for the tests: a certificate authority made with rcgen that issues
//! server and client certificates into PEM files, and a stunnel4 process
//! that terminates TLS on a free loopback port in front of the local
//! RabbitMQ.
//!
//! stunnel4 is the Debian package `stunnel4`, which `bash .ci/run`
//! installs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::process::{Child, Command};

/// Maximum wait for stunnel to accept connections after its start.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A certificate authority whose certificate is a PEM file.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    /// The CA certificate, PEM.
    pub cert: PathBuf,
}

/// A certificate and its private key, both PEM files.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// Creates a CA named `name` and writes its certificate to
    /// `<dir>/<name>.pem`.
    pub fn create(dir: &Path, name: &str) -> anyhow::Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("switchyard test CA {name}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let cert = dir.join(format!("{name}.pem"));
        write(&cert, &issuer.pem())?;
        Ok(TestCa {
            issuer,
            dir: dir.to_owned(),
            cert,
        })
    }

    /// Issues a server certificate for `127.0.0.1` and `localhost`, written
    /// to `<name>.pem` and `<name>.key`.
    pub fn issue_server(&self, name: &str) -> anyhow::Result<IssuedCertificate> {
        let hosts = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        self.issue(name, hosts, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// Issues a client certificate, written to `<name>.pem` and `<name>.key`.
    pub fn issue_client(&self, name: &str) -> anyhow::Result<IssuedCertificate> {
        self.issue(name, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        name: &str,
        hosts: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
    ) -> anyhow::Result<IssuedCertificate> {
        let mut params = CertificateParams::new(hosts)?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("switchyard test {name}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &*self.issuer)?;
        let issued = IssuedCertificate {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        write(&issued.cert, &certificate.pem())?;
        write(&issued.key, &key.serialize_pem())?;
        Ok(issued)
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write `{}`", path.display()))
}

/// A stunnel4 process that accepts TLS on a free loopback port and forwards
/// the plain stream to a local address. Killed on drop.
pub struct Stunnel {
    child: Child,
    port: u16,
    log_path: PathBuf,
}

impl Stunnel {
    /// Starts stunnel with the server certificate `server`, forwarding to
    /// `forward_to` (such as `127.0.0.1:5672`). With `client_ca`, stunnel
    /// requires a client certificate signed by that CA.
    pub async fn start(
        dir: &Path,
        server: &IssuedCertificate,
        client_ca: Option<&Path>,
        forward_to: &str,
    ) -> anyhow::Result<Stunnel> {
        let port = crate::free_port()?;
        let mut config = format!(
            "foreground = yes\npid =\ndebug = notice\n\n[switchyard-test]\n\
             accept = 127.0.0.1:{port}\nconnect = {forward_to}\ncert = {}\nkey = {}\n",
            server.cert.display(),
            server.key.display()
        );
        if let Some(client_ca) = client_ca {
            // verifyChain requires a client certificate and checks it
            // against CAfile.
            config.push_str(&format!(
                "verifyChain = yes\nCAfile = {}\n",
                client_ca.display()
            ));
        }

        let config_path = dir.join(format!("stunnel-{port}.conf"));
        write(&config_path, &config)?;
        let log_path = dir.join(format!("stunnel-{port}.log"));
        let log = std::fs::File::create(&log_path)?;

        let child = Command::new("stunnel4")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context(
                "cannot start `stunnel4`, the TLS terminator of the TLS tests; install the \
                 Debian package with `apt-get install stunnel4` (bash .ci/run does)",
            )?;

        let mut stunnel = Stunnel {
            child,
            port,
            log_path,
        };
        let log_path = &stunnel.log_path;
        crate::process::wait_listening(
            &mut stunnel.child,
            port,
            "stunnel4",
            log_path,
            START_TIMEOUT,
        )
        .await?;
        Ok(stunnel)
    }

    /// Returns the port that serves TLS.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns what stunnel logged so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Kills stunnel and waits for it to exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("cannot kill stunnel4")
    }
}
