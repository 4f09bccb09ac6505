//! What the backends' configurations share: reading switches from the environment, timeouts
//! kept in milliseconds, and URLs fit for logs (`Debug` of a config, connection errors).

/// Reads a yes/no setting: `true`, `1`, `yes`, `on` or `false`, `0`, `no`, `off`, in any case
/// and with surrounding blanks; anything else is `None`.
#[cfg(any(feature = "postgres", feature = "s3", feature = "rabbitmq"))]
pub(crate) fn parse_switch(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A timeout as the whole milliseconds a config keeps: at least 1 (0 would mean no wait at
/// all), saturating for the absurdly long.
#[cfg(any(feature = "redis", feature = "rabbitmq"))]
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// What a URL's user-info part without a `:` holds.
#[cfg(any(feature = "postgres", feature = "redis", feature = "rabbitmq"))]
#[derive(Debug, Clone, Copy)]
#[allow(dead_code, reason = "a build with one backend uses one of the two")]
pub(crate) enum LoneUserInfo {
    /// A user name, shown (PostgreSQL, AMQP).
    User,
    /// A password (redis-rs reads `redis://secret@host` so), hidden.
    Password,
}

/// `url` with the password of its user-info part (`scheme://user:password@host`) replaced by
/// `***`.
#[cfg(any(feature = "postgres", feature = "redis", feature = "rabbitmq"))]
pub(crate) fn redact_userinfo(url: &str, lone: LoneUserInfo) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest_at = scheme_end + 3;
    let rest = &url[rest_at..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    // The last `@`: a password may contain one.
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = match (userinfo.find(':'), lone) {
        (Some(colon), _) => format!("{}:***", &userinfo[..colon]),
        (None, LoneUserInfo::Password) if !userinfo.is_empty() => "***".to_owned(),
        (None, _) => userinfo.to_owned(),
    };
    format!("{}{user}{}", &url[..rest_at], &rest[at..])
}

/// `url` with the value of any `password=` query parameter replaced by `***`.
#[cfg(any(feature = "postgres", feature = "redis"))]
pub(crate) fn redact_query_password(url: &str) -> String {
    let Some(q) = url.find('?') else {
        return url.to_owned();
    };
    let (head, query) = url.split_at(q + 1);
    let query = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&");
    format!("{head}{query}")
}

#[cfg(all(test, feature = "postgres", feature = "redis", feature = "rabbitmq"))]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        for (url, lone, shown) in [
            ("amqp://h/%2f", LoneUserInfo::User, "amqp://h/%2f"),
            ("amqp://u:p@h/%2f", LoneUserInfo::User, "amqp://u:***@h/%2f"),
            ("postgres://u@h/db", LoneUserInfo::User, "postgres://u@h/db"),
            (
                "postgres://u:p@w@h/db",
                LoneUserInfo::User,
                "postgres://u:***@h/db",
            ),
            ("redis://p@h", LoneUserInfo::Password, "redis://***@h"),
            ("redis://@h", LoneUserInfo::Password, "redis://@h"),
            (
                "redis://h/0?a=b@c",
                LoneUserInfo::Password,
                "redis://h/0?a=b@c",
            ),
            ("no scheme", LoneUserInfo::Password, "no scheme"),
        ] {
            assert_eq!(redact_userinfo(url, lone), shown, "{url}");
        }
        assert_eq!(
            redact_query_password("x://h/?a=1&Password=p&b=2"),
            "x://h/?a=1&Password=***&b=2"
        );
        assert_eq!(parse_switch(" On "), Some(true));
        assert_eq!(millis(std::time::Duration::ZERO), 1);
    }
}
