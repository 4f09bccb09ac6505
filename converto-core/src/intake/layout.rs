//! The blob key layout, in one place. Nothing outside this module spells a key.
//!
//! Every key of a tenant's data starts with the tenant:
//!
//! ```text
//! tenants/{tenant}/conversions/{id}/input                       a conversion's own input
//! tenants/{tenant}/conversions/{id}/artifacts/{attempt}/{name}  its outputs, per attempt
//! tenants/{tenant}/uploads/{upload-id}                          an upload made with a ticket
//! tenants/{tenant}/uploads/staged-{uuid}                        a multipart file being received
//! {shared input}.claims/{conversion-id}                         a conversion's claim on an upload
//! system/upload-secret                                          the generated ticket secret
//! ```
//!
//! A tenant name is written as is when it is made of ASCII letters, digits, `_`, `-` and `.`
//! (not only dots); any other byte is percent-encoded, so no name can reach outside its prefix.
//! Records keep the keys they were written with, so blobs stored before tenant prefixes existed
//! (`conversions/{id}/...`, `uploads/{id}`) stay readable; [`legacy_conversion`] and
//! [`LEGACY_UPLOADS`] name them for deletion and the janitor.

use crate::ConversionId;

/// Where every tenant's data lives.
pub const TENANTS: &str = "tenants/";

/// Where uploads lived before tenant prefixes.
pub const LEGACY_UPLOADS: &str = "uploads/";

/// The generated upload-ticket secret.
pub const UPLOAD_SECRET: &str = "system/upload-secret";

/// What separates a shared input's key from its claims' ids: `{input_key}.claims/{id}`.
const CLAIMS: &str = ".claims/";

/// A tenant name as one key segment.
fn segment(tenant: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
    if !tenant.is_empty() && tenant.bytes().all(plain) && !tenant.bytes().all(|b| b == b'.') {
        return tenant.to_owned();
    }
    let mut out = String::with_capacity(tenant.len() * 3 + 1);
    for b in tenant.bytes() {
        if plain(b) && b != b'.' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push('%');
    }
    out
}

/// Everything a tenant owns.
pub fn tenant(tenant: &str) -> String {
    format!("{TENANTS}{}/", segment(tenant))
}

/// Everything a conversion owns (deleted with it).
pub fn conversion(tenant_name: &str, id: ConversionId) -> String {
    format!("{}conversions/{id}/", tenant(tenant_name))
}

/// Where a conversion's blobs were kept before tenant prefixes (deleted with it too).
pub fn legacy_conversion(id: ConversionId) -> String {
    format!("conversions/{id}/")
}

/// A conversion's own input.
pub fn input(tenant: &str, id: ConversionId) -> String {
    format!("{}input", conversion(tenant, id))
}

/// A conversion's artifacts, every attempt.
pub fn artifacts(tenant: &str, id: ConversionId) -> String {
    format!("{}artifacts/", conversion(tenant, id))
}

/// One attempt's artifact.
pub fn artifact(tenant: &str, id: ConversionId, attempt: u32, name: &str) -> String {
    format!("{}{attempt}/{name}", artifacts(tenant, id))
}

/// A tenant's uploads.
pub fn uploads(tenant_name: &str) -> String {
    format!("{}uploads/", tenant(tenant_name))
}

/// An upload made with a ticket.
pub fn upload(tenant: &str, upload: uuid::Uuid) -> String {
    format!("{}{upload}", uploads(tenant))
}

/// A fresh key for a file being received as part of a submission.
pub fn staged(tenant: &str) -> String {
    format!("{}staged-{}", uploads(tenant), uuid::Uuid::now_v7())
}

/// Whether a key is an upload or a staged file itself (not a claim on one, not a
/// conversion's blob), in the tenant layout or the legacy one.
pub fn is_upload(key: &str) -> bool {
    let rest = match key.strip_prefix(TENANTS) {
        Some(rest) => match rest.split_once('/') {
            Some((_, after_tenant)) => after_tenant.strip_prefix("uploads/"),
            None => None,
        },
        None => key.strip_prefix(LEGACY_UPLOADS),
    };
    rest.is_some_and(|r| !r.is_empty() && !r.contains('/'))
}

/// The blob that records conversion `id`'s claim on the shared input blob `input_key`.
pub fn claim(input_key: &str, id: ConversionId) -> String {
    format!("{}{id}", claims(input_key))
}

/// Where the claims on the shared input blob `input_key` are kept.
pub fn claims(input_key: &str) -> String {
    format!("{input_key}{CLAIMS}")
}

/// The shared input a blob key claims, if the key is a conversion's claim on one: how a
/// cleaner of inputs tells claimed ones from a single listing.
pub fn claimed_input(key: &str) -> Option<&str> {
    key.rsplit_once(CLAIMS).map(|(input, _)| input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_holds_together() {
        let id = ConversionId::new();
        let up = uuid::Uuid::now_v7();
        assert!(input("acme", id).starts_with(&conversion("acme", id)));
        assert!(conversion("acme", id).starts_with(&tenant("acme")));
        assert!(artifact("acme", id, 2, "a.obj").starts_with(&artifacts("acme", id)));
        assert!(is_upload(&upload("acme", up)));
        assert!(is_upload(&staged("acme")));
        assert!(is_upload(&format!("{LEGACY_UPLOADS}{up}")));
        assert!(!is_upload(&input("acme", id)));
        let c = claim(&upload("acme", up), id);
        assert!(!is_upload(&c));
        assert_eq!(claimed_input(&c), Some(upload("acme", up).as_str()));
        assert_eq!(claimed_input(&upload("acme", up)), None);
        for k in [
            input("acme", id),
            artifact("acme", id, 1, "x.png"),
            upload("acme", up),
            c,
            UPLOAD_SECRET.into(),
        ] {
            crate::blob::validate_key(&k).expect("a valid key");
        }
    }

    #[test]
    fn no_tenant_name_leaves_its_prefix() {
        for hostile in ["..", ".", "a/../../b", "", "x/y", "%2F", "tenant\n", "é"] {
            let t = tenant(hostile);
            let seg = t
                .strip_prefix(TENANTS)
                .and_then(|s| s.strip_suffix('/'))
                .expect("one segment");
            assert!(
                !seg.contains('/') && seg != "." && seg != ".." && !seg.is_empty(),
                "{hostile:?} -> {t}"
            );
            crate::blob::validate_key(&format!("{t}x")).expect("a valid key");
        }
        assert_ne!(tenant("a/b"), tenant("a%2Fb"));
        assert_eq!(tenant("acme-1.eu"), "tenants/acme-1.eu/");
    }
}
