//! `wendy keygen` and `wendy id`: node keys.

use std::path::PathBuf;

use clap::Args;
use wendy::identity::{Identity, IdentityError};

use crate::CmdResult;

/// Arguments of `wendy keygen`.
#[derive(Debug, Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the private key (PKCS#8 PEM, created with mode 0600).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    force: bool,
}

/// Arguments of `wendy id`.
#[derive(Debug, Args)]
pub(crate) struct IdArgs {
    /// A private key file written by `wendy keygen` (or `openssl genpkey -algorithm ed25519`).
    #[arg(value_name = "FILE")]
    key: PathBuf,
}

/// Writes a fresh key and prints its NodeId (32 hex digits) on stdout.
pub(crate) fn keygen(args: KeygenArgs) -> CmdResult {
    let identity = Identity::generate();
    identity.save(&args.out, args.force).map_err(with_hint)?;
    tracing::info!(path = %args.out.display(), node_id = %identity.node_id(), "wrote node key");
    println!("{}", identity.node_id());
    Ok(())
}

/// Prints the NodeId of a key file.
pub(crate) fn id(args: IdArgs) -> CmdResult {
    let identity = Identity::load(&args.key)?;
    println!("{}", identity.node_id());
    Ok(())
}

/// Adds what to do about an error the user can fix with a flag.
pub(crate) fn with_hint(e: IdentityError) -> Box<dyn std::error::Error> {
    match e {
        IdentityError::Exists { .. } => format!("{e}; pass --force to overwrite it").into(),
        other => other.into(),
    }
}
