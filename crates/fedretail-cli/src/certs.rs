//! `fedretail certs`: the network's own certificate authority and the coordinator's
//! TLS certificate, so a network needs no outside CA to run over TLS.

use anyhow::{Context, Result};
use clap::Args;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct CertsArgs {
    /// Folder to write ca.pem, ca-key.pem, coordinator.pem and coordinator-key.pem into.
    #[arg(long, default_value = "fedretail-certs")]
    pub out: PathBuf,
    /// Names (DNS or IP) agents reach the coordinator by; localhost and 127.0.0.1 are
    /// always included. Repeat for several.
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
    /// Replace certificates already in --out.
    #[arg(long)]
    pub force: bool,
}

/// PEM text of a CA certificate and key, and of a server certificate and key it signed.
pub struct Issued {
    pub ca: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
}

/// A new CA, and a server certificate for `names` (plus localhost and 127.0.0.1).
pub fn issue(names: &[String]) -> Result<Issued> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fedretail network CA");
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let mut all: Vec<String> = names.to_vec();
    for n in ["localhost", "127.0.0.1"] {
        if !all.iter().any(|a| a == n) {
            all.push(n.to_string());
        }
    }
    let mut params = CertificateParams::new(all)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "fedretail coordinator");
    let key = KeyPair::generate()?;
    let issuer = Issuer::new(ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Issued {
        ca: ca.pem(),
        ca_key: ca_key.serialize_pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

pub fn certs(args: CertsArgs) -> Result<()> {
    let files = [
        "ca.pem",
        "ca-key.pem",
        "coordinator.pem",
        "coordinator-key.pem",
    ];
    if !args.force {
        if let Some(f) = files.iter().find(|f| args.out.join(f).exists()) {
            anyhow::bail!(
                "{} exists: agents trust the CA in it; pass --force to replace it (every agent then needs the new ca.pem)",
                args.out.join(f).display()
            );
        }
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let issued = issue(&args.names)?;
    for (name, text) in files
        .iter()
        .zip([&issued.ca, &issued.ca_key, &issued.cert, &issued.key])
    {
        write_private(&args.out.join(name), text, name.ends_with("key.pem"))?;
    }
    let dir = args.out.display();
    println!("wrote {dir}/ca.pem (give it to every agent), {dir}/ca-key.pem (keep it offline),");
    println!("      {dir}/coordinator.pem and {dir}/coordinator-key.pem (the coordinator's)");
    println!("coordinator.toml:\n  [tls]\n  cert = \"{dir}/coordinator.pem\"\n  key = \"{dir}/coordinator-key.pem\"");
    let host = args.names.first().map_or("localhost", String::as_str);
    println!(
        "each store's agent config:\n  coordinator = \"https://{host}:50051\"\n  ca = \"ca.pem\""
    );
    Ok(())
}

/// Writes `text`; a key only the owner can read.
fn write_private(path: &Path, text: &str, secret: bool) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    Ok(())
}
