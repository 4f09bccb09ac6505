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

use std::fmt::Write as _;

use crate::ConversionId;

/// Where every tenant's data lives.
pub const TENANTS: &str = "tenants/";

/// Where uploads lived before tenant prefixes.
pub const LEGACY_UPLOADS: &str = "uploads/";

/// The generated upload-ticket secret.
pub const UPLOAD_SECRET: &str = "system/upload-secret";

/// What separates a shared input's key from its claims' ids: `{input_key}.claims/{id}`.
const CLAIMS: &str = ".claims/";

/// A tenant name as one key segment, pushed onto `out`.
fn push_segment(out: &mut String, tenant: &str) {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
    if !tenant.is_empty() && tenant.bytes().all(plain) && !tenant.bytes().all(|b| b == b'.') {
        out.push_str(tenant);
        return;
    }
    let start = out.len();
    for b in tenant.bytes() {
        if plain(b) && b != b'.' {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    if out.len() == start {
        out.push('%');
    }
}

// Every key is built in one string, sized once: they are made for every job (a few each),
// where nested `format!`s cost a measurable share of the engine's time.

/// `tenants/{tenant}/` pushed onto `out`.
fn push_tenant(out: &mut String, tenant: &str) {
    out.push_str(TENANTS);
    push_segment(out, tenant);
    out.push('/');
}

/// `tenants/{tenant}/conversions/{id}/` pushed onto `out`.
fn push_conversion(out: &mut String, tenant: &str, id: ConversionId) {
    push_tenant(out, tenant);
    out.push_str("conversions/");
    let _ = write!(out, "{id}/");
}

/// A string with room for a key of `tenant` and `extra` more bytes.
fn key_for(tenant: &str, extra: usize) -> String {
    String::with_capacity(TENANTS.len() + tenant.len() * 3 + 64 + extra)
}

/// Everything a tenant owns.
pub fn tenant(tenant: &str) -> String {
    let mut key = key_for(tenant, 0);
    push_tenant(&mut key, tenant);
    key
}

/// Everything a conversion owns (deleted with it).
pub fn conversion(tenant_name: &str, id: ConversionId) -> String {
    let mut key = key_for(tenant_name, 0);
    push_conversion(&mut key, tenant_name, id);
    key
}

/// Where a conversion's blobs were kept before tenant prefixes (deleted with it too).
pub fn legacy_conversion(id: ConversionId) -> String {
    format!("conversions/{id}/")
}

/// A conversion's own input.
pub fn input(tenant: &str, id: ConversionId) -> String {
    let mut key = key_for(tenant, 8);
    push_conversion(&mut key, tenant, id);
    key.push_str("input");
    key
}

/// A conversion's artifacts, every attempt.
pub fn artifacts(tenant: &str, id: ConversionId) -> String {
    let mut key = key_for(tenant, 16);
    push_conversion(&mut key, tenant, id);
    key.push_str("artifacts/");
    key
}

/// One attempt's artifact.
pub fn artifact(tenant: &str, id: ConversionId, attempt: u32, name: &str) -> String {
    let mut key = key_for(tenant, 32 + name.len());
    push_conversion(&mut key, tenant, id);
    key.push_str("artifacts/");
    let _ = write!(key, "{attempt}/");
    key.push_str(name);
    key
}

/// A tenant's uploads.
pub fn uploads(tenant_name: &str) -> String {
    let mut key = key_for(tenant_name, 16);
    push_tenant(&mut key, tenant_name);
    key.push_str("uploads/");
    key
}

/// An upload made with a ticket.
pub fn upload(tenant: &str, upload: uuid::Uuid) -> String {
    let mut key = uploads(tenant);
    let _ = write!(key, "{upload}");
    key
}

/// A fresh key for a file being received as part of a submission.
pub fn staged(tenant: &str) -> String {
    let mut key = uploads(tenant);
    let _ = write!(key, "staged-{}", uuid::Uuid::now_v7());
    key
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

    /// The keys stored records hold: their spelling never changes.
    #[test]
    fn keys_are_spelled_as_stored() {
        let id: ConversionId = "01900000-0000-7000-8000-00000000002a"
            .parse()
            .expect("an id");
        let up: uuid::Uuid = "01900000-0000-7000-8000-00000000002b"
            .parse()
            .expect("a uuid");
        let c = "tenants/a%2Fb%2Ec/conversions/01900000-0000-7000-8000-00000000002a/";
        assert_eq!(tenant("a/b.c"), "tenants/a%2Fb%2Ec/");
        assert_eq!(tenant(".."), "tenants/%2E%2E/");
        assert_eq!(tenant(""), "tenants/%/");
        assert_eq!(conversion("a/b.c", id), c);
        assert_eq!(input("a/b.c", id), format!("{c}input"));
        assert_eq!(
            artifacts("acme", id),
            format!("{}artifacts/", conversion("acme", id))
        );
        assert_eq!(
            artifact("a/b.c", id, 12, "x.obj"),
            format!("{c}artifacts/12/x.obj")
        );
        assert_eq!(uploads("acme"), "tenants/acme/uploads/");
        assert_eq!(
            upload("acme", up),
            "tenants/acme/uploads/01900000-0000-7000-8000-00000000002b"
        );
        assert!(staged("acme").starts_with("tenants/acme/uploads/staged-"));
        assert_eq!(
            staged("acme").len(),
            "tenants/acme/uploads/staged-".len() + 36
        );
    }
}
