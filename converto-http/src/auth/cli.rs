//! `converto keys create | list | revoke`: API keys in the `--store` database.

use std::io::Write;

use chrono::Utc;
use converto_core::keys::{KeyStoreError, Scopes, generate_key};

use crate::config::{DurationArg, KeysCommand, Settings};
use crate::runtime::{self, StartError};

/// Why a `keys` command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysCliError {
    /// The store could not be opened.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] KeyStoreError),
    /// An argument is unusable.
    #[error("{0}")]
    Argument(String),
    /// Writing the answer failed.
    #[error("cannot write the answer: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs a `keys` command, writing its answer to `out` (`create` writes only the key).
pub async fn run(
    settings: &Settings,
    command: KeysCommand,
    out: &mut dyn Write,
) -> Result<(), KeysCliError> {
    runtime::require_lasting_store(settings, "keys").map_err(KeysCliError::Argument)?;
    let store = runtime::open_key_store(settings).await?;
    match command {
        KeysCommand::Create {
            tenant,
            scopes,
            expires,
        } => {
            let scopes: Scopes = scopes
                .parse()
                .map_err(|e| KeysCliError::Argument(format!("--scopes: {e}")))?;
            if scopes.is_empty() {
                return Err(KeysCliError::Argument(
                    "--scopes: give at least one of read, write, admin".into(),
                ));
            }
            let expires_at = match expires {
                Some(text) => {
                    let DurationArg(d) = text
                        .parse()
                        .map_err(|e| KeysCliError::Argument(format!("--expires: {e}")))?;
                    let d = chrono::Duration::from_std(d)
                        .map_err(|_| KeysCliError::Argument("--expires: too long".into()))?;
                    Some(Utc::now() + d)
                }
                None => None,
            };
            let generated = generate_key(&tenant, scopes, expires_at)
                .map_err(|e| KeysCliError::Argument(e.to_string()))?;
            let key = store.create(generated.record).await?;
            tracing::info!(id = %key.id, tenant = %key.tenant, scopes = %key.scopes, "API key created");
            writeln!(out, "{}", generated.secret.expose())?;
        }
        KeysCommand::List => {
            let keys = store.list().await?;
            writeln!(
                out,
                "{:<12}  {:<11}  {:<16}  {:<16}  {:<20}  {:<20}  REVOKED",
                "ID", "PREFIX", "TENANT", "SCOPES", "CREATED", "EXPIRES"
            )?;
            let time = |t: Option<chrono::DateTime<Utc>>| {
                t.map_or_else(
                    || "-".to_owned(),
                    |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                )
            };
            for k in keys {
                writeln!(
                    out,
                    "{:<12}  {:<11}  {:<16}  {:<16}  {:<20}  {:<20}  {}",
                    k.id,
                    format!("{}…", k.prefix),
                    k.tenant,
                    k.scopes.to_string(),
                    time(Some(k.created_at)),
                    time(k.expires_at),
                    time(k.revoked_at)
                )?;
            }
        }
        KeysCommand::Revoke { id } => {
            let key = store.revoke(&id).await?;
            writeln!(out, "revoked {} (tenant {})", key.id, key.tenant)?;
        }
    }
    Ok(())
}
