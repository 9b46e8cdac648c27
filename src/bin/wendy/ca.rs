//! `wendy ca init` and `wendy ca issue`: the mesh certificate authority of a closed mesh.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use wendy::identity::{Identity, IdentityError, MeshCa, Validity};

use crate::keys::with_hint;
use crate::CmdResult;

/// `wendy ca ...` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum CaCommand {
    /// Create a CA: writes DIR/ca.key (mode 0600, keep it secret) and DIR/ca.crt.
    Init(InitArgs),
    /// Sign a node key: writes a node certificate that chains to DIR/ca.crt and prints the
    /// node's NodeId.
    Issue(IssueArgs),
}

/// Arguments of `wendy ca init`.
#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// The CA directory (created if needed).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The CA certificate's common name.
    #[arg(long, default_value = "Wendy mesh CA")]
    name: String,
    /// How many days the CA certificate is valid.
    #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..))]
    days: u32,
    /// Replace an existing CA in DIR.
    #[arg(long)]
    force: bool,
}

/// Arguments of `wendy ca issue`.
#[derive(Debug, Args)]
pub(crate) struct IssueArgs {
    /// The CA directory (holding ca.key and ca.crt from `wendy ca init`).
    #[arg(long = "ca", value_name = "DIR")]
    ca_dir: PathBuf,
    /// The node's key file (from `wendy keygen`); only its public key goes into the certificate.
    #[arg(long, value_name = "NODE.key")]
    key: PathBuf,
    /// Where to write the node certificate (PEM).
    #[arg(long, value_name = "NODE.crt")]
    out: PathBuf,
    /// How many days the node certificate is valid.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..))]
    days: u32,
    /// Replace NODE.crt if it exists.
    #[arg(long)]
    force: bool,
}

/// Runs a `wendy ca` subcommand.
pub(crate) fn run(cmd: CaCommand) -> CmdResult {
    match cmd {
        CaCommand::Init(args) => init(args),
        CaCommand::Issue(args) => issue(args),
    }
}

fn init(args: InitArgs) -> CmdResult {
    let ca = MeshCa::generate(&args.name, Validity::days_from_now(args.days))?;
    ca.save(&args.out, args.force).map_err(with_hint)?;
    println!(
        "wrote {} (secret) and {}",
        args.out.join(wendy::identity::CA_KEY_FILE).display(),
        args.out.join(wendy::identity::CA_CERT_FILE).display()
    );
    Ok(())
}

fn issue(args: IssueArgs) -> CmdResult {
    let ca = MeshCa::load(&args.ca_dir).map_err(|e| match e {
        IdentityError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            format!(
                "{e} (create a CA with `wendy ca init --out {}`)",
                args.ca_dir.display()
            )
            .into()
        }
        other => Box::<dyn std::error::Error>::from(other),
    })?;
    let node = Identity::load(&args.key)?;
    let cert = ca.issue(&node.public_key(), Validity::days_from_now(args.days))?;
    cert.save(&args.out, args.force).map_err(with_hint)?;
    tracing::info!(path = %args.out.display(), node_id = %node.node_id(), "issued node certificate");
    println!("{}", node.node_id());
    Ok(())
}
