//! The blob key layout, in one place. Nothing outside this module spells a key.
//!
//! ```text
//! conversions/{id}/input                       a conversion's own input
//! conversions/{id}/artifacts/{attempt}/{name}  its outputs, per attempt
//! uploads/{upload-id}                          an upload made with a ticket (shared input)
//! uploads/staged-{uuid}                        a multipart file being received
//! uploads/{...}.claims/{conversion-id}         a conversion's claim on a shared input
//! system/upload-secret                         the generated ticket-signing secret
//! ```

use crate::ConversionId;

/// Where uploads and staged files live.
pub const UPLOADS: &str = "uploads/";

/// Where conversions' own blobs live.
pub const CONVERSIONS: &str = "conversions/";

/// The generated upload-ticket secret.
pub const UPLOAD_SECRET: &str = "system/upload-secret";

/// What separates a shared input's key from its claims' ids: `{input_key}.claims/{id}`.
const CLAIMS: &str = ".claims/";

/// Everything a conversion owns (deleted with it).
pub fn conversion(id: ConversionId) -> String {
    format!("{CONVERSIONS}{id}/")
}

/// A conversion's own input.
pub fn input(id: ConversionId) -> String {
    format!("{CONVERSIONS}{id}/input")
}

/// A conversion's artifacts, every attempt.
pub fn artifacts(id: ConversionId) -> String {
    format!("{CONVERSIONS}{id}/artifacts/")
}

/// One attempt's artifact.
pub fn artifact(id: ConversionId, attempt: u32, name: &str) -> String {
    format!("{CONVERSIONS}{id}/artifacts/{attempt}/{name}")
}

/// An upload made with a ticket.
pub fn upload(upload: uuid::Uuid) -> String {
    format!("{UPLOADS}{upload}")
}

/// A fresh key for a file being received as part of a submission.
pub fn staged() -> String {
    format!("{UPLOADS}staged-{}", uuid::Uuid::now_v7())
}

/// Whether a key is an upload or a staged file itself (not a claim on one).
pub fn is_upload(key: &str) -> bool {
    key.strip_prefix(UPLOADS)
        .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
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
        assert!(input(id).starts_with(&conversion(id)));
        assert!(artifact(id, 2, "a.obj").starts_with(&artifacts(id)));
        assert!(is_upload(&upload(up)));
        assert!(is_upload(&staged()));
        let c = claim(&upload(up), id);
        assert!(!is_upload(&c));
        assert_eq!(claimed_input(&c), Some(upload(up).as_str()));
        assert_eq!(claimed_input(&upload(up)), None);
        for k in [
            input(id),
            artifact(id, 1, "x.png"),
            upload(up),
            c,
            UPLOAD_SECRET.into(),
        ] {
            crate::blob::validate_key(&k).expect("a valid key");
        }
    }
}
