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

/// The network CA's parameters: the same every time, so that with the CA's key they
/// make the issuer of its certificate again (`enroll` signs with them).
fn ca_params() -> Result<CertificateParams> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fedretail network CA");
    Ok(ca_params)
}

/// A new CA, and a server certificate for `names` (plus localhost and 127.0.0.1).
pub fn issue(names: &[String]) -> Result<Issued> {
    let ca_params = ca_params()?;
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

#[derive(Args)]
pub struct EnrollArgs {
    /// The folder `fedretail certs` wrote (its ca.pem and ca-key.pem sign the store's
    /// certificate); the store's files go to its `stores/` folder.
    #[arg(long, default_value = "fedretail-certs")]
    pub certs: PathBuf,
    /// The store's id, as in the coordinator's [[stores]] and the store's own config.
    #[arg(long)]
    pub store: String,
    /// Replace the store's certificate if it has one.
    #[arg(long)]
    pub force: bool,
}

/// A store's certificate (its identity under mutual TLS) and key, and the SHA-256 of
/// the certificate the coordinator pins it by.
pub struct Enrolled {
    pub cert: String,
    pub key: String,
    pub sha256: String,
}

/// A client certificate for `store`, signed by the CA whose key is `ca_key_pem`.
pub fn enroll_store(ca_key_pem: &str, store: &str) -> Result<Enrolled> {
    use sha2::Digest;
    let ca_key = KeyPair::from_pem(ca_key_pem).context("reading the CA's key")?;
    let issuer = Issuer::new(ca_params()?, &ca_key);
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, store);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let sha256 = sha2::Sha256::digest(cert.der())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Enrolled {
        cert: cert.pem(),
        key: key.serialize_pem(),
        sha256,
    })
}

pub fn enroll(args: EnrollArgs) -> Result<()> {
    anyhow::ensure!(
        !args.store.is_empty()
            && args.store.len() <= 128
            && args
                .store
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "store id must be 1-128 characters of letters, digits, '-', '_' or '.'"
    );
    let ca_key_path = args.certs.join("ca-key.pem");
    let ca_key = std::fs::read_to_string(&ca_key_path).with_context(|| {
        format!(
            "reading {} (run `fedretail certs --out {}` first)",
            ca_key_path.display(),
            args.certs.display()
        )
    })?;
    let dir = args.certs.join("stores");
    let (cert_path, key_path) = (
        dir.join(format!("{}.pem", args.store)),
        dir.join(format!("{}-key.pem", args.store)),
    );
    if cert_path.exists() && !args.force {
        anyhow::bail!(
            "{} exists; pass --force to issue a new one (the coordinator must then pin the new certificate_sha256)",
            cert_path.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let e = enroll_store(&ca_key, &args.store)?;
    write_private(&cert_path, &e.cert, false)?;
    write_private(&key_path, &e.key, true)?;
    let (identity_path, roster) = enroll_signing(&args.certs, &dir, &args.store)?;
    let store = &args.store;
    println!(
        "wrote {}, {} and {} (give all three to {store}, with ca.pem)",
        cert_path.display(),
        key_path.display(),
        identity_path.display()
    );
    println!("certificate sha256 {}", e.sha256);
    println!(
        "coordinator.toml:\n  [tls]\n  client_ca = \"{}\"   # mutual TLS: every agent shows a certificate\n  [[stores]]\n  store_id = \"{store}\"\n  certificate_sha256 = \"{}\"",
        args.certs.join("ca.pem").display(),
        e.sha256
    );
    println!("{store}'s agent config:\n  cert = \"{store}.pem\"\n  key = \"{store}-key.pem\"\n  ca = \"ca.pem\"\n  secagg_identity = \"{store}-secagg.json\"   # signs its SecAgg+ keys\n  roster_key = \"{roster}\"   # every store's: check neighbours' SecAgg+ keys");
    Ok(())
}

/// The network's roster authority, kept beside the CA's key (created on first use):
/// it signs each enrolled store's SecAgg+ verifying key.
fn roster_authority(certs: &Path) -> Result<fedretail_privacy::secagg::RosterAuthority> {
    use fedretail_privacy::secagg::RosterAuthority;
    let path = certs.join("roster-key.hex");
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        return RosterAuthority::from_hex(&text).with_context(|| path.display().to_string());
    }
    let authority = RosterAuthority::generate(&mut rand::rng());
    write_private(&path, &authority.to_hex(), true)?;
    write_private(
        &certs.join("roster.pub"),
        &authority.roster().to_hex(),
        false,
    )?;
    Ok(authority)
}

/// Writes the store's SecAgg+ signing identity; returns its path and the roster's
/// public key every agent checks neighbours by.
fn enroll_signing(certs: &Path, dir: &Path, store: &str) -> Result<(PathBuf, String)> {
    let authority = roster_authority(certs)?;
    let identity = authority.enroll(store, &mut rand::rng());
    let path = dir.join(format!("{store}-secagg.json"));
    write_private(&path, &identity.to_json(), true)?;
    Ok((path, authority.roster().to_hex()))
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
