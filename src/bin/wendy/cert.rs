//! `wendy cert show FILE`: what a certificate says (node id, issuer, validity, fingerprint),
//! as `nebula-cert print` or `openssl x509 -noout -text` would, in Wendy's terms.

use std::path::PathBuf;
use std::time::SystemTime;

use clap::{Args, Subcommand};
use serde::Serialize;
use wendy::identity::Certificate;

use crate::CmdResult;

/// `wendy cert ...` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum CertCommand {
    /// Print a certificate: the node id its key hashes to, subject, issuer, validity and SHA-256
    /// fingerprint (node certificates and CA certificates alike).
    Show(ShowArgs),
}

/// Arguments of `wendy cert show`.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// A PEM certificate (from `wendy ca issue` or `wendy ca init`).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs a `wendy cert` subcommand.
pub(crate) fn run(cmd: CertCommand) -> CmdResult {
    match cmd {
        CertCommand::Show(args) => show(args),
    }
}

/// What `wendy cert show` prints; the JSON field names are a contract.
#[derive(Debug, Serialize)]
struct Shown {
    file: String,
    /// The node id the certificate's ed25519 key hashes to (`null` for another key type).
    node_id: Option<String>,
    ca: bool,
    subject: String,
    issuer: String,
    self_signed: bool,
    not_before: String,
    not_after: String,
    /// Whole days until `not_after` (negative once expired).
    days_left: i64,
    /// SHA-256 of the DER, colon-separated hex as `openssl x509 -fingerprint -sha256` prints.
    sha256_fingerprint: String,
}

fn show(args: ShowArgs) -> CmdResult {
    let cert = Certificate::load(&args.file)?;
    let der = cert.der().as_ref();
    let (_, parsed) = x509_parser::parse_x509_certificate(der).map_err(|e| {
        format!(
            "{}: not a valid X.509 certificate: {e}",
            args.file.display()
        )
    })?;
    let validity = cert.validity()?;
    let now = SystemTime::now();
    let days_left = match validity.not_after.duration_since(now) {
        Ok(left) => i64::try_from(left.as_secs() / 86_400).unwrap_or(i64::MAX),
        Err(past) => -i64::try_from(past.duration().as_secs().div_ceil(86_400)).unwrap_or(i64::MAX),
    };
    let shown = Shown {
        file: args.file.display().to_string(),
        node_id: cert.node_id().ok().map(|id| id.to_string()),
        ca: cert.is_ca()?,
        subject: parsed.subject().to_string(),
        issuer: parsed.issuer().to_string(),
        self_signed: parsed.subject() == parsed.issuer(),
        not_before: utc(validity.not_before),
        not_after: utc(validity.not_after),
        days_left,
        sha256_fingerprint: fingerprint(der),
    };
    if args.json {
        println!("{}", serde_json::to_string(&shown)?);
        return Ok(());
    }
    let kind = match (shown.ca, shown.self_signed) {
        (true, _) => "mesh CA certificate",
        (false, true) => "self-signed node certificate (open mesh)",
        (false, false) => "node certificate",
    };
    let state = if days_left < 0 {
        format!("EXPIRED {} days ago", -days_left)
    } else if validity.not_before > now {
        "NOT YET VALID".to_owned()
    } else {
        format!("{days_left} days left")
    };
    println!("{}: {kind}", shown.file);
    println!(
        "  node id:     {}",
        shown.node_id.as_deref().unwrap_or("(not an ed25519 key)")
    );
    println!("  subject:     {}", shown.subject);
    println!("  issuer:      {}", shown.issuer);
    println!("  valid from:  {}", shown.not_before);
    println!("  valid until: {} ({state})", shown.not_after);
    println!("  sha256:      {}", shown.sha256_fingerprint);
    Ok(())
}

fn utc(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}
