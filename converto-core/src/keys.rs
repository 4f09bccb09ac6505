//! API keys: their format, their scopes, and the `KeyStore` trait that keeps them.
//!
//! A key reads `cvt_` + 32 base62 characters of randomness (190 bits) + 6 base62 characters of
//! the CRC32 of everything before them, like GitHub's tokens: the prefix makes a leaked key easy
//! to recognise (secret scanners, logs), and the checksum lets a server refuse a mistyped or
//! made-up key without asking its store. Stores keep only the SHA-256 of a key: a key is
//! high-entropy, so a fast hash is as good as a slow one and costs nothing per request.

use std::fmt::{self, Debug};

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use sha2::{Digest, Sha256};

use crate::error::BackendError;

/// A `dyn KeyStore`.
pub type DynKeyStore = dyn KeyStore;

/// What every key starts with.
pub const KEY_PREFIX: &str = "cvt_";
/// Random base62 characters in a key.
const RANDOM_CHARS: usize = 32;
/// Base62 characters of the checksum (62^6 > 2^32).
const CHECKSUM_CHARS: usize = 6;
/// Length of a whole key.
pub const KEY_LEN: usize = KEY_PREFIX.len() + RANDOM_CHARS + CHECKSUM_CHARS;
/// Random characters shown in listings (`cvt_AbCdEf…`); what is left keeps over 150 bits.
const SHOWN_CHARS: usize = 6;
/// Characters of a key id.
const ID_CHARS: usize = 12;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// One permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Look: GET and HEAD.
    Read,
    /// Change: POST, PUT, DELETE.
    Write,
    /// Everything, the operator's endpoints (`/metrics`) included.
    Admin,
}

impl Scope {
    fn bit(self) -> u8 {
        match self {
            Scope::Read => 1,
            Scope::Write => 2,
            Scope::Admin => 4,
        }
    }

    /// The scope's name: `read`, `write` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    /// The scope named `name`, if it is one.
    pub fn from_name(name: &str) -> Option<Scope> {
        match name {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// A set of [`Scope`]s. `admin` allows everything.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// No scope at all.
    pub const NONE: Scopes = Scopes(0);
    /// Every scope.
    pub const ALL: Scopes = Scopes(7);

    /// The set with `scope` added.
    pub fn with(self, scope: Scope) -> Scopes {
        Scopes(self.0 | scope.bit())
    }

    /// Whether the set holds `scope` itself (not through `admin`).
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Whether the set allows what `scope` allows: it holds it, or holds `admin`.
    pub fn allows(self, scope: Scope) -> bool {
        self.contains(scope) || self.contains(Scope::Admin)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The scopes held, in the order read, write, admin.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        [Scope::Read, Scope::Write, Scope::Admin]
            .into_iter()
            .filter(move |s| self.contains(*s))
    }

    /// The known scope names among `names` (unknown names are left out: a token issued for
    /// several services carries scopes of the others).
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Scopes {
        names
            .into_iter()
            .filter_map(Scope::from_name)
            .fold(Scopes::NONE, Scopes::with)
    }
}

impl fmt::Display for Scopes {
    /// Comma-separated names, e.g. `read,write`; empty for no scope.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Scope::as_str).collect();
        f.write_str(&names.join(","))
    }
}

impl Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({self})")
    }
}

/// A scope list that names something that is not a scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?} (scopes are read, write and admin)")]
pub struct UnknownScope(pub String);

impl std::str::FromStr for Scopes {
    type Err = UnknownScope;

    /// Comma- or space-separated scope names; every name must be known.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split([',', ' '])
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .try_fold(Scopes::NONE, |acc, name| {
                Scope::from_name(name)
                    .map(|sc| acc.with(sc))
                    .ok_or_else(|| UnknownScope(name.to_owned()))
            })
    }
}

/// A tenant name a key can carry: 1 to 64 ASCII letters, digits, `-`, `_` or `.`, not
/// starting with `.` (tenant names end up in blob keys and logs).
pub fn validate_tenant(tenant: &str) -> Result<(), InvalidTenant> {
    let ok = !tenant.is_empty()
        && tenant.len() <= 64
        && !tenant.starts_with('.')
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(InvalidTenant(tenant.chars().take(80).collect()))
    }
}

/// A tenant name [`validate_tenant`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid tenant {0:?}: use 1 to 64 ASCII letters, digits, '-', '_' or '.', not starting with '.'"
)]
pub struct InvalidTenant(pub String);

/// The SHA-256 of a key, hex: what stores keep and look keys up by.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KeyHash(String);

impl KeyHash {
    /// The hash of `key` (whatever its shape).
    pub fn of(key: &str) -> KeyHash {
        KeyHash(hex::encode(Sha256::digest(key.as_bytes())))
    }

    /// A hash read back from a store (64 lowercase hex characters, as [`KeyHash::as_str`]).
    pub fn from_hex(hex: impl Into<String>) -> KeyHash {
        KeyHash(hex.into())
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not secret, but of no use in logs at full length.
        write!(f, "KeyHash({}…)", &self.0[..self.0.len().min(8)])
    }
}

/// A key's plaintext, shown once when it is made. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    /// The key, to hand to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

/// Why a presented key was refused before any store was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MalformedKey {
    /// It does not start with `cvt_`, or has the wrong length or characters.
    #[error("not a converto API key")]
    Shape,
    /// The checksum does not match: a mistyped or made-up key.
    #[error("the API key's checksum does not match")]
    Checksum,
}

/// Checks a presented key's shape and checksum and gives the hash to look it up by.
pub fn parse_key(key: &str) -> Result<KeyHash, MalformedKey> {
    let Some(rest) = key.strip_prefix(KEY_PREFIX) else {
        return Err(MalformedKey::Shape);
    };
    if key.len() != KEY_LEN || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(MalformedKey::Shape);
    }
    let (body, checksum) = key.split_at(KEY_LEN - CHECKSUM_CHARS);
    if checksum != base62_fixed(u64::from(crc32(body.as_bytes())), CHECKSUM_CHARS) {
        return Err(MalformedKey::Checksum);
    }
    Ok(KeyHash::of(key))
}

/// A new key: its plaintext (to show once) and the record to store.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// The key itself.
    pub secret: SecretKey,
    /// What the store keeps.
    pub record: NewApiKey,
}

/// The random source failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw random bytes for a key: {0}")]
pub struct RandomError(getrandom::Error);

/// Makes a key for `tenant` with `scopes`, valid until `expires_at` (forever with `None`).
pub fn generate_key(
    tenant: &str,
    scopes: Scopes,
    expires_at: Option<DateTime<Utc>>,
) -> Result<GeneratedKey, KeyGenError> {
    validate_tenant(tenant)?;
    let random = random_base62(RANDOM_CHARS)?;
    let body = format!("{KEY_PREFIX}{random}");
    let checksum = base62_fixed(u64::from(crc32(body.as_bytes())), CHECKSUM_CHARS);
    let key = format!("{body}{checksum}");
    let record = NewApiKey {
        id: random_base62(ID_CHARS)?,
        prefix: format!("{KEY_PREFIX}{}", &random[..SHOWN_CHARS]),
        hash: KeyHash::of(&key),
        tenant: tenant.to_owned(),
        scopes,
        // Microseconds: what every store keeps, so records read back equal.
        created_at: Utc::now().trunc_subsecs(6),
        expires_at: expires_at.map(|t| t.trunc_subsecs(6)),
    };
    Ok(GeneratedKey {
        secret: SecretKey(key),
        record,
    })
}

/// Why [`generate_key`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyGenError {
    /// The tenant name is not acceptable.
    #[error(transparent)]
    Tenant(#[from] InvalidTenant),
    /// No randomness.
    #[error(transparent)]
    Random(#[from] RandomError),
}

fn random_base62(n: usize) -> Result<String, RandomError> {
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::fill(&mut buf).map_err(RandomError)?;
        // 248 = 4 * 62: taking only bytes below it keeps every character equally likely.
        for b in buf.iter().filter(|b| **b < 248) {
            if out.len() == n {
                break;
            }
            out.push(char::from(BASE62[usize::from(*b % 62)]));
        }
    }
    Ok(out)
}

/// `n` base62 digits of `value`, most significant first, zero-padded.
fn base62_fixed(mut value: u64, n: usize) -> String {
    let mut digits = vec![b'0'; n];
    for d in digits.iter_mut().rev() {
        *d = BASE62[(value % 62) as usize];
        value /= 62;
    }
    digits.into_iter().map(char::from).collect()
}

/// CRC-32 (IEEE 802.3, as zlib's `crc32`).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// A key to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewApiKey {
    /// Public id (for listing and revoking).
    pub id: String,
    /// The key's first characters, to recognise it in a listing.
    pub prefix: String,
    /// The SHA-256 of the key.
    pub hash: KeyHash,
    /// The tenant the key acts as.
    pub tenant: String,
    /// What the key may do.
    pub scopes: Scopes,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A stored key, without its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    /// Public id.
    pub id: String,
    /// The key's first characters.
    pub prefix: String,
    /// The tenant the key acts as.
    pub tenant: String,
    /// What the key may do.
    pub scopes: Scopes,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// The record a [`NewApiKey`] becomes.
    pub fn from_new(new: &NewApiKey) -> ApiKey {
        ApiKey {
            id: new.id.clone(),
            prefix: new.prefix.clone(),
            tenant: new.tenant.clone(),
            scopes: new.scopes,
            created_at: new.created_at,
            expires_at: new.expires_at,
            revoked_at: None,
        }
    }

    /// Whether the key may be used at `now`.
    pub fn check(&self, now: DateTime<Utc>) -> Result<(), KeyRefused> {
        if self.revoked_at.is_some() {
            return Err(KeyRefused::Revoked);
        }
        if self.expires_at.is_some_and(|t| t <= now) {
            return Err(KeyRefused::Expired);
        }
        Ok(())
    }
}

/// Why a stored key may not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefused {
    /// It was revoked.
    #[error("the API key was revoked")]
    Revoked,
    /// It expired.
    #[error("the API key has expired")]
    Expired,
}

/// The errors of a [`KeyStore`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyStoreError {
    /// No key with that id.
    #[error("no API key with id {id:?}")]
    NotFound {
        /// The id.
        id: String,
    },
    /// A key with that id or hash exists already.
    #[error("an API key with id {id:?} or the same hash exists already")]
    AlreadyExists {
        /// The id.
        id: String,
    },
    /// A stored key could not be read back.
    #[error("stored API key is corrupt: {0}")]
    Corrupt(String),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl KeyStoreError {
    /// Whether trying again may succeed.
    pub fn is_temporary(&self) -> bool {
        matches!(self, KeyStoreError::Backend(e) if e.is_temporary())
    }
}

/// Keeps API keys (as hashes) for the service's authentication.
#[async_trait]
pub trait KeyStore: Send + Sync + Debug + 'static {
    /// Stores a new key.
    async fn create(&self, key: NewApiKey) -> Result<ApiKey, KeyStoreError>;

    /// The key with this hash, revoked and expired ones included (the caller decides with
    /// [`ApiKey::check`], so it can say why a key was refused).
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<ApiKey>, KeyStoreError>;

    /// Every key, oldest first.
    async fn list(&self) -> Result<Vec<ApiKey>, KeyStoreError>;

    /// Revokes the key and returns it; revoking a revoked key changes nothing.
    async fn revoke(&self, id: &str) -> Result<ApiKey, KeyStoreError>;

    /// Checks that the backend answers.
    async fn ping(&self) -> Result<(), KeyStoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn generated_keys_parse_and_a_changed_character_does_not() {
        let g = generate_key("acme", Scopes::NONE.with(Scope::Read), None).expect("key");
        let key = g.secret.expose();
        assert_eq!(key.len(), KEY_LEN);
        assert!(key.starts_with("cvt_"));
        assert_eq!(parse_key(key), Ok(g.record.hash.clone()));
        assert!(key.starts_with(&g.record.prefix));
        // Change one random character: the checksum no longer matches.
        let mut bytes = key.as_bytes().to_vec();
        bytes[10] = if bytes[10] == b'a' { b'b' } else { b'a' };
        let changed = String::from_utf8(bytes).expect("ascii");
        assert_eq!(parse_key(&changed), Err(MalformedKey::Checksum));
        assert_eq!(parse_key("cvt_short"), Err(MalformedKey::Shape));
        assert_eq!(
            parse_key(&key.replace("cvt_", "ghp_")),
            Err(MalformedKey::Shape)
        );
        assert_ne!(
            generate_key("acme", Scopes::ALL, None).expect("key").secret,
            g.secret
        );
        assert!(!format!("{:?}", g.secret).contains(key));
    }

    #[test]
    fn scopes_parse_print_and_admin_allows_everything() {
        let s: Scopes = "read, write".parse().expect("scopes");
        assert_eq!(s.to_string(), "read,write");
        assert!(s.allows(Scope::Write) && !s.allows(Scope::Admin));
        let admin: Scopes = "admin".parse().expect("scopes");
        assert!(admin.allows(Scope::Read) && admin.allows(Scope::Write));
        assert!("read,root".parse::<Scopes>().is_err());
        assert_eq!(
            Scopes::from_names(["read", "other:thing"]),
            Scopes::NONE.with(Scope::Read)
        );
    }

    #[test]
    fn tenants_are_checked() {
        assert!(validate_tenant("acme-1.eu_west").is_ok());
        for bad in ["", ".hidden", "a/b", "ü", &"x".repeat(65)] {
            assert!(validate_tenant(bad).is_err(), "{bad:?}");
        }
    }
}
