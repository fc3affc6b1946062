//! `kvctl certs create --dir DIR`: a certificate authority of its own and the certificates a
//! development or test cluster needs, one per role.
//!
//! Each certificate names its role twice, as the subject's organizational unit and as a URI
//! `urn:kv:role:ROLE` among its subject alternative names, so that a server can tell a node
//! from a router from a client by the certificate alone (issue #12 checks it).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::Outcome;

/// Make certificates for a cluster.
#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Write a new CA (ca.pem, ca-key.pem) and node, router and client certificates signed by
    /// it into DIR, valid for localhost and loopback (and any --host).
    Create(CreateArgs),
    /// Issue new node, router and client certificates and keys from the CA already in DIR
    /// (ca.pem, ca-key.pem), replacing the old ones: running processes take them within
    /// seconds, without a restart.
    Renew(RenewArgs),
}

#[derive(Debug, Args)]
struct RenewArgs {
    /// Directory holding ca.pem and ca-key.pem, and the certificates to replace.
    #[arg(long)]
    dir: PathBuf,
    /// Another DNS name or IP address the node and router certificates are valid for
    /// (repeatable), besides localhost, 127.0.0.1 and ::1.
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
    /// How long the new certificates are valid, in days.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    days: u32,
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// Directory to write into (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// Another DNS name or IP address the node and router certificates are valid for
    /// (repeatable), besides localhost, 127.0.0.1 and ::1.
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
    /// How long the certificates are valid, in days.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    days: u32,
    /// Replace certificate files already in DIR (otherwise refused, so that a CA in use is
    /// never overwritten by accident).
    #[arg(long)]
    force: bool,
}

/// A role a certificate is issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Node,
    Router,
    Client,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Router => "router",
            Role::Client => "client",
        }
    }

    /// Nodes and routers both serve and call other cluster processes; clients only call.
    fn usages(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Role::Node | Role::Router => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        }
    }
}

/// The files `certs create` writes, certificate then key, with the role of each pair.
pub const FILES: [(&str, &str, Option<Role>); 4] = [
    ("ca.pem", "ca-key.pem", None),
    ("node.pem", "node-key.pem", Some(Role::Node)),
    ("router.pem", "router-key.pem", Some(Role::Router)),
    ("client.pem", "client-key.pem", Some(Role::Client)),
];

pub fn run(args: CertsArgs) -> anyhow::Result<Outcome> {
    match args.command {
        CertsCommand::Create(a) => {
            let written = create(&a.dir, &a.hosts, a.days, a.force)?;
            for path in written {
                println!("{}", path.display());
            }
            Ok(Outcome::Success)
        }
        CertsCommand::Renew(a) => {
            let written = renew(&a.dir, &a.hosts, a.days)?;
            for path in written {
                println!("{}", path.display());
            }
            Ok(Outcome::Success)
        }
    }
}

/// The validity window of certificates issued now for `days`: from an hour back, so that a
/// machine whose clock is a little behind accepts them at once.
fn validity(days: u32) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::hours(1),
        now + time::Duration::days(i64::from(days)),
    )
}

/// Issues new role certificates from the CA in `dir`; the paths written.
pub fn renew(dir: &Path, hosts: &[String], days: u32) -> anyhow::Result<Vec<PathBuf>> {
    let read = |file: &str| {
        let path = dir.join(file);
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let ca_key = KeyPair::from_pem(&read(FILES[0].1)?)
        .with_context(|| format!("{} is no private key", dir.join(FILES[0].1).display()))?;
    let issuer = Issuer::from_ca_cert_pem(&read(FILES[0].0)?, ca_key)
        .with_context(|| format!("{} is no CA certificate", dir.join(FILES[0].0).display()))?;
    issue_leaves(dir, &issuer, hosts, days)
}

/// Writes the CA and the role certificates into `dir`; the paths written.
pub fn create(
    dir: &Path,
    hosts: &[String],
    days: u32,
    force: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if !force {
        for (cert, key, _) in FILES {
            for name in [cert, key] {
                let path = dir.join(name);
                if path.exists() {
                    anyhow::bail!(
                        "{} already exists: pass --force to replace the certificates in {}",
                        path.display(),
                        dir.display()
                    );
                }
            }
        }
    }
    let (not_before, not_after) = validity(days);
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = name("kv cluster CA", None);
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key).context("signing the CA")?;
    let mut written = Vec::new();
    written.push(write(dir, FILES[0].0, &ca_cert.pem(), false)?);
    written.push(write(dir, FILES[0].1, &ca_key.serialize_pem(), true)?);
    let issuer = Issuer::new(ca, ca_key);
    written.extend(issue_leaves(dir, &issuer, hosts, days)?);
    Ok(written)
}

/// Issues and writes the node, router and client certificates and keys.
fn issue_leaves(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    hosts: &[String],
    days: u32,
) -> anyhow::Result<Vec<PathBuf>> {
    let (not_before, not_after) = validity(days);
    let mut written = Vec::new();
    for (cert_file, key_file, role) in FILES {
        // The CA is the one without a role.
        let Some(role) = role else { continue };
        let key = KeyPair::generate().context("generating a key")?;
        let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        if role != Role::Client {
            names.extend(hosts.iter().cloned());
        }
        let mut params = CertificateParams::new(names)
            .with_context(|| format!("a name for the {} certificate", role.name()))?;
        params.distinguished_name = name(&format!("kv{}", role.name()), Some(role));
        params.subject_alt_names.push(SanType::URI(
            format!("urn:kv:role:{}", role.name())
                .try_into()
                .context("role URI")?,
        ));
        params.extended_key_usages = role.usages();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .signed_by(&key, issuer)
            .with_context(|| format!("signing the {} certificate", role.name()))?;
        // Key first: a process that reads the pair between the two writes sees a new key
        // with the old certificate, refuses the mismatch and keeps its old pair until the
        // next look.
        written.push(write(dir, key_file, &key.serialize_pem(), true)?);
        written.push(write(dir, cert_file, &cert.pem(), false)?);
    }
    Ok(written)
}

fn name(common: &str, role: Option<Role>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    if let Some(role) = role {
        dn.push(DnType::OrganizationalUnitName, role.name());
    }
    dn
}

/// Writes `contents` to `dir/file`, keys readable by their owner only; through a temporary
/// file renamed into place, so that a running process never reads half a file.
fn write(dir: &Path, file: &str, contents: &str, secret: bool) -> anyhow::Result<PathBuf> {
    let path = dir.join(file);
    let tmp = dir.join(format!(".{file}.tmp"));
    write_new(&tmp, contents, secret)?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn write_new(path: &Path, contents: &str, secret: bool) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn the_certificates_chain_to_the_ca_and_name_their_roles() {
        let dir = tempfile::tempdir().expect("temp dir");
        let written = create(dir.path(), &["kv-0.example".into()], 30, false).expect("creates");
        assert_eq!(written.len(), 8);
        for (cert, key, role) in FILES {
            let pem = fs::read_to_string(dir.path().join(cert)).expect("cert");
            assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
            let key_pem = fs::read_to_string(dir.path().join(key)).expect("key");
            assert!(key_pem.contains("PRIVATE KEY"), "{key}");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = fs::metadata(dir.path().join(key))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o077, 0, "{key} is readable by others");
            }
            let Some(role) = role else { continue };
            // Checked by an implementation other than the one that wrote them.
            let Ok(out) = Command::new("openssl")
                .args(["verify", "-CAfile", "ca.pem", cert])
                .current_dir(dir.path())
                .output()
            else {
                eprintln!("openssl not found: chain not checked");
                continue;
            };
            assert!(out.status.success(), "{cert}: {out:?}");
            let text = Command::new("openssl")
                .args(["x509", "-noout", "-text", "-in", cert])
                .current_dir(dir.path())
                .output()
                .expect("openssl x509");
            let text = String::from_utf8_lossy(&text.stdout);
            let uri = format!("URI:urn:kv:role:{}", role.name());
            assert!(text.contains(&uri), "{cert} lacks {uri}: {text}");
            assert!(text.contains("DNS:localhost"), "{cert}: {text}");
            assert_eq!(
                text.contains("DNS:kv-0.example"),
                role != Role::Client,
                "{cert}: {text}"
            );
        }
        // A second run does not overwrite the CA.
        let again = create(dir.path(), &[], 30, false).expect_err("refused");
        assert!(again.to_string().contains("--force"), "{again}");
        create(dir.path(), &[], 30, true).expect("replaced with --force");

        // Renewed certificates are new, from the same CA.
        let ca_before = fs::read(dir.path().join("ca.pem")).unwrap();
        let node_before = fs::read(dir.path().join("node.pem")).unwrap();
        assert_eq!(renew(dir.path(), &[], 30).expect("renews").len(), 6);
        assert_eq!(fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
        assert_ne!(fs::read(dir.path().join("node.pem")).unwrap(), node_before);
        if let Ok(out) = Command::new("openssl")
            .args(["verify", "-CAfile", "ca.pem", "node.pem"])
            .current_dir(dir.path())
            .output()
        {
            assert!(out.status.success(), "renewed node.pem: {out:?}");
        }
        let empty = tempfile::tempdir().unwrap();
        let err = renew(empty.path(), &[], 30).expect_err("no CA to renew from");
        assert!(err.to_string().contains("ca-key.pem"), "{err:#}");
    }
}
