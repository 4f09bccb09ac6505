//! `converto tenants set | list | show | unset`: per-tenant limit overrides in the `--store`
//! database.
//!
//! An override holds only the fields an operator set; a tenant's limits in force are the
//! override's fields over its `[tenants.NAME]` table, over `[tenant_defaults]`, over the
//! built-in defaults. Running servers and workers read overrides through a cache of
//! [`OVERRIDE_CACHE_TTL`] (5 s), so a change reaches them within that time, without a restart.

use std::io::Write;

use converto_core::tenants::{
    LimitOverrides, OVERRIDE_CACHE_TTL, TenantLimits, TenantOverride, TenantStoreError,
};

use crate::config::{Settings, TenantsCommand};
use crate::isolate::human_bytes;
use crate::runtime::{self, StartError};

/// Why a `tenants` command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TenantsCliError {
    /// The store could not be opened.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] TenantStoreError),
    /// An argument is unusable.
    #[error("{0}")]
    Argument(String),
    /// Writing the answer failed.
    #[error("cannot write the answer: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs a `tenants` command, writing its answer to `out`.
pub async fn run(
    settings: &Settings,
    command: TenantsCommand,
    out: &mut dyn Write,
) -> Result<(), TenantsCliError> {
    runtime::require_lasting_store(settings, "tenant overrides")
        .map_err(TenantsCliError::Argument)?;
    let store = runtime::open_tenant_store(settings).await?;
    match command {
        TenantsCommand::Set {
            name,
            max_running,
            max_queued,
            storage_bytes,
            rate,
            burst,
            max_priority,
        } => {
            check_name(&name)?;
            if rate.is_some_and(|r| !r.is_finite() || r < 0.0) {
                return Err(TenantsCliError::Argument(
                    "--rate: give a number of requests per second, 0 or more".into(),
                ));
            }
            let given = LimitOverrides {
                requests_per_second: rate,
                burst,
                max_queued,
                max_running,
                storage_bytes: storage_bytes.map(|b| b.0),
                max_priority,
            };
            if given.is_empty() {
                return Err(TenantsCliError::Argument(
                    "give at least one limit: --max-running, --max-queued, --storage-bytes, \
                     --rate, --burst or --max-priority"
                        .into(),
                ));
            }
            let earlier = store
                .get(&name)
                .await?
                .map(|o| o.limits)
                .unwrap_or_default();
            let stored = store.put(&name, &earlier.merged(&given)).await?;
            tracing::info!(tenant = %name, "tenant limits overridden");
            writeln!(
                out,
                "{}: {} (in force within {} s)",
                stored.tenant,
                describe(&stored.limits),
                OVERRIDE_CACHE_TTL.as_secs()
            )?;
        }
        TenantsCommand::List => {
            let all = store.list().await?;
            writeln!(out, "{:<24}  {:<20}  OVERRIDES", "TENANT", "UPDATED")?;
            for TenantOverride {
                tenant,
                limits,
                updated_at,
            } in all
            {
                writeln!(
                    out,
                    "{tenant:<24}  {:<20}  {}",
                    updated_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    describe(&limits)
                )?;
            }
        }
        TenantsCommand::Show { name } => {
            let config = settings.limits.of(&name);
            let overrides = store
                .get(&name)
                .await?
                .map(|o| o.limits)
                .unwrap_or_default();
            let in_force = config.with(&overrides);
            let from_config = if settings.limits.tenants.contains_key(&name) {
                "config [tenants]"
            } else {
                "config defaults"
            };
            let source = |set: bool| if set { "override" } else { from_config };
            writeln!(out, "tenant {name}")?;
            for (field, value, set) in rows(&in_force, &overrides) {
                writeln!(out, "  {field:<14} {value:<14} ({})", source(set))?;
            }
        }
        TenantsCommand::Unset { name } => {
            if store.remove(&name).await? {
                writeln!(out, "{name}: override removed; its configured limits apply")?;
            } else {
                writeln!(out, "{name}: had no override")?;
            }
        }
    }
    Ok(())
}

/// A tenant name as credentials carry it: 1 to 200 visible characters.
fn check_name(name: &str) -> Result<(), TenantsCliError> {
    if name.is_empty() || name.len() > 200 || name.chars().any(|c| c.is_control()) {
        return Err(TenantsCliError::Argument(
            "the tenant name must be 1 to 200 characters, none of them control characters".into(),
        ));
    }
    Ok(())
}

fn unlimited_or(n: u64, show: impl Fn(u64) -> String) -> String {
    if n == 0 {
        "unlimited".to_owned()
    } else {
        show(n)
    }
}

/// Each limit: its name, its value in force, and whether the override sets it.
fn rows(l: &TenantLimits, o: &LimitOverrides) -> Vec<(&'static str, String, bool)> {
    vec![
        (
            "max-running",
            unlimited_or(l.max_running, |n| n.to_string()),
            o.max_running.is_some(),
        ),
        (
            "max-queued",
            unlimited_or(l.max_queued, |n| n.to_string()),
            o.max_queued.is_some(),
        ),
        (
            "storage-bytes",
            unlimited_or(l.storage_bytes, human_bytes),
            o.storage_bytes.is_some(),
        ),
        (
            "rate",
            if l.requests_per_second > 0.0 {
                format!("{}/s", l.requests_per_second)
            } else {
                "unlimited".to_owned()
            },
            o.requests_per_second.is_some(),
        ),
        ("burst", l.burst.to_string(), o.burst.is_some()),
        (
            "max-priority",
            l.max_priority.to_string(),
            o.max_priority.is_some(),
        ),
    ]
}

/// The fields an override sets, as `name=value` pairs.
fn describe(o: &LimitOverrides) -> String {
    let all = TenantLimits::default().with(o);
    let parts: Vec<String> = rows(&all, o)
        .into_iter()
        .filter(|(_, _, set)| *set)
        .map(|(field, value, _)| format!("{field}={value}"))
        .collect();
    if parts.is_empty() {
        "nothing".to_owned()
    } else {
        parts.join(" ")
    }
}
