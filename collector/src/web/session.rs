//! The web view's sign-in: a session cookie instead of the read token, so the token is typed
//! once, posted once, and never stored in the browser, a URL or a log.
//!
//! The cookie is `EXPIRY.MAC`: the expiry (Unix seconds) and an HMAC-SHA256 of it keyed with the
//! read token. Every collector replica that knows the token can check it, none needs to keep
//! sessions, and rotating the token ends every session. It is `HttpOnly` (no script reads it),
//! `SameSite=Lax` (not sent with cross-site posts or embedded requests), `Path=/`, and — when the
//! request came over HTTPS through a proxy that says so (`X-Forwarded-Proto: https` or
//! `Forwarded: proto=https`) — `Secure`, under the `__Host-` prefix that browsers only accept
//! from a secure origin.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap, HeaderValue};
use base64::Engine as _;
use ring::hmac;

/// The cookie's name over plain HTTP.
pub const COOKIE: &str = "tt_session";
/// The cookie's name over HTTPS.
pub const SECURE_COOKIE: &str = "__Host-tt_session";
/// How long a sign-in lasts.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);

const CONTEXT: &str = "truthtable-ui-session-v1";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn mac(token: &str, expiry: u64) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes());
    hmac::sign(&key, format!("{CONTEXT}\n{expiry}").as_bytes())
}

/// A session value that is valid until `now + LIFETIME`.
pub fn issue(token: &str, now: u64) -> String {
    let expiry = now + LIFETIME.as_secs();
    let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac(token, expiry));
    format!("{expiry}.{tag}")
}

/// True when `value` was issued with `token` and has not expired at `now`.
pub fn check(token: &str, value: &str, now: u64) -> bool {
    let Some((expiry, tag)) = value.split_once('.') else {
        return false;
    };
    let Ok(expiry) = expiry.parse::<u64>() else {
        return false;
    };
    if expiry <= now || expiry > now + LIFETIME.as_secs() {
        return false;
    }
    let Ok(tag) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tag) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes());
    hmac::verify(&key, format!("{CONTEXT}\n{expiry}").as_bytes(), &tag).is_ok()
}

/// The values of the session cookies the request carries.
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE || name == SECURE_COOKIE).then_some(value.trim())
        })
}

/// True when the request carries a session cookie issued with `token` that is still valid.
pub fn valid(headers: &HeaderMap, token: &str) -> bool {
    let now = now();
    cookies(headers).any(|v| check(token, v, now))
}

/// True when a proxy in front says the request came over HTTPS.
pub fn is_https(headers: &HeaderMap) -> bool {
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|first| {
            first.split(';').any(|kv| {
                kv.trim().split_once('=').is_some_and(|(k, v)| {
                    k.eq_ignore_ascii_case("proto")
                        && v.trim_matches('"').eq_ignore_ascii_case("https")
                })
            })
        });
    forwarded_proto || forwarded
}

fn cookie(name: &str, value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!("{name}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax{secure}");
    // A session value is digits, a dot and base64url: always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The `set-cookie` value that signs the browser in.
pub fn sign_in(token: &str, https: bool) -> HeaderValue {
    let name = if https { SECURE_COOKIE } else { COOKIE };
    cookie(name, &issue(token, now()), LIFETIME.as_secs(), https)
}

/// The `set-cookie` values that sign the browser out (both names, so neither lingers).
pub fn sign_out(https: bool) -> [HeaderValue; 2] {
    [
        cookie(COOKIE, "", 0, https),
        cookie(SECURE_COOKIE, "", 0, true),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_valid_until_it_expires_and_only_for_its_token() {
        let t = 1_800_000_000;
        let v = issue("read-token", t);
        assert!(check("read-token", &v, t));
        assert!(check("read-token", &v, t + LIFETIME.as_secs() - 1));
        assert!(!check("read-token", &v, t + LIFETIME.as_secs()));
        assert!(!check("rotated-token", &v, t));
        assert!(!v.contains("read-token"));
    }

    #[test]
    fn forged_and_malformed_sessions_are_refused() {
        let t = 1_800_000_000;
        let v = issue("k", t);
        let (_, tag) = v.split_once('.').unwrap();
        let far = t + 10 * LIFETIME.as_secs();
        for bad in [
            "",
            "x",
            "123",
            &format!("{far}.{tag}"),
            &format!("{}.{tag}", t + 1),
            &format!("{}.AAAA", t + 100),
            &format!("{}.!!", t + 100),
        ] {
            assert!(!check("k", bad, t), "{bad}");
        }
    }

    #[test]
    fn cookies_are_read_from_any_cookie_header() {
        let v = issue("k", now());
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("theme=dark; {COOKIE}={v}").parse().unwrap(),
        );
        assert!(valid(&h, "k"));
        assert!(!valid(&h, "other"));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("{SECURE_COOKIE}={v}").parse().unwrap(),
        );
        assert!(valid(&h, "k"));
    }

    #[test]
    fn https_is_what_a_proxy_says() {
        let mut h = HeaderMap::new();
        assert!(!is_https(&h));
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        assert!(is_https(&h));
        let mut h = HeaderMap::new();
        h.insert(
            header::FORWARDED,
            "for=1.2.3.4;proto=https".parse().unwrap(),
        );
        assert!(is_https(&h));
        h.insert(header::FORWARDED, "proto=http".parse().unwrap());
        assert!(!is_https(&h));
    }

    #[test]
    fn the_cookie_is_http_only_lax_and_secure_over_https() {
        let plain = sign_in("k", false);
        let plain = plain.to_str().unwrap();
        assert!(plain.starts_with("tt_session="));
        assert!(plain.contains("; HttpOnly; SameSite=Lax"));
        assert!(!plain.contains("Secure"));
        let secure = sign_in("k", true);
        let secure = secure.to_str().unwrap();
        assert!(secure.starts_with("__Host-tt_session="));
        assert!(secure.ends_with("; Secure") && secure.contains("; Path=/;"));
        assert!(sign_out(false)[0].to_str().unwrap().contains("Max-Age=0"));
    }
}
