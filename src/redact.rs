//! What never leaves the filter: the values of credential headers and query parameters.
//!
//! The built-in lists are here and nowhere else (docs/reference.md lists them, checked by
//! `tests/reference.rs`); an operator's `redact_headers` and `redact_query_params` add to them.
//! A redacted value is recorded as [`REDACTED`]; everything else stays byte for byte.

use std::borrow::Cow;

/// What a redacted value is recorded as.
pub const REDACTED: &str = "[REDACTED]";

/// Header names whose values are always redacted, in requests and responses alike: the
/// credential headers of the major LLM and cloud APIs and of common gateways.
pub const DEFAULT_HEADERS: &[&str] = &[
    // HTTP authentication and sessions (OpenAI, Azure OpenAI with Entra ID, Vertex AI, Bedrock
    // API keys and SigV4, Cohere, Mistral, Hugging Face, OpenRouter, Groq, Together, …).
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    // API keys: Anthropic; Azure OpenAI; Kong, Supabase and others; Google Gemini.
    "x-api-key",
    "api-key",
    "apikey",
    "x-goog-api-key",
    // Google and AWS session credentials.
    "x-goog-iam-authorization-token",
    "x-amz-security-token",
    // Azure API Management (the trace location is a signed URL) and Azure Functions.
    "ocp-apim-subscription-key",
    "ocp-apim-trace-location",
    "x-functions-key",
    // Identity-aware proxies that forward the user's token.
    "x-amzn-oidc-accesstoken",
    "x-amzn-oidc-data",
    "x-goog-iap-jwt-assertion",
    "cf-access-jwt-assertion",
    "cf-access-token",
    "x-forwarded-access-token",
    "x-auth-request-access-token",
    "x-serverless-authorization",
    // LLM gateways.
    "helicone-auth",
    "x-portkey-api-key",
    "x-litellm-api-key",
    // Common conventions.
    "x-auth-token",
    "x-access-token",
    "x-api-token",
    "x-refresh-token",
    "x-jwt-assertion",
    "x-csrf-token",
    "x-xsrf-token",
    "x-vault-token",
    "private-token",
];

/// Query parameter names whose values are always redacted (matched case-insensitively after
/// percent-decoding the name): API keys (Google's `key`), OAuth tokens, passwords, and the
/// signatures and session tokens of pre-signed AWS, Google Cloud and Azure URLs.
pub const DEFAULT_QUERY_PARAMS: &[&str] = &[
    "key",
    "api_key",
    "apikey",
    "api-key",
    "subscription-key",
    "access_token",
    "refresh_token",
    "id_token",
    "auth_token",
    "token",
    "jwt",
    "password",
    "passwd",
    "secret",
    "client_secret",
    "sig",
    "signature",
    "x-amz-security-token",
    "x-amz-signature",
    "x-amz-credential",
    "x-goog-signature",
    "x-goog-credential",
];

/// The longest name a list may hold; a longer header or decoded parameter name matches nothing.
pub const MAX_NAME: usize = 256;

/// A set of names, compared case-insensitively (ASCII).
///
/// A lookup runs for every header of every exchange, and nearly all of them miss: the names sit in
/// small buckets keyed by length and first and last byte, so a miss costs a hash of three bytes
/// and, rarely, one comparison (a sorted list searched by halves cost a quarter of the record
/// writer's instructions: BENCHMARKS.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// Lower case, sorted, without repeats.
    sorted: Vec<Box<[u8]>>,
    /// `BUCKETS` lists of indexes into `sorted`.
    buckets: Vec<Vec<u16>>,
}

const BUCKETS: usize = 64;

fn bucket(name: &[u8]) -> usize {
    match (name.first(), name.last()) {
        (Some(&first), Some(&last)) => {
            ((name.len() as u32).wrapping_mul(31) ^ u32::from(first) ^ (u32::from(last) << 3))
                as usize
                % BUCKETS
        }
        _ => 0,
    }
}

impl Default for Names {
    fn default() -> Names {
        Names::new(&[], [])
    }
}

impl Names {
    /// The built-in `defaults` and `extra` (each at most [`MAX_NAME`] bytes long), lowered.
    pub fn new<'a>(defaults: &[&'a str], extra: impl IntoIterator<Item = &'a str>) -> Names {
        let mut sorted: Vec<Box<[u8]>> = defaults
            .iter()
            .copied()
            .chain(extra)
            .map(|n| n.as_bytes().to_ascii_lowercase().into_boxed_slice())
            .collect();
        sorted.sort();
        sorted.dedup();
        let mut buckets = vec![Vec::new(); BUCKETS];
        for (i, name) in sorted.iter().enumerate() {
            buckets[bucket(name)].push(i as u16);
        }
        Names { sorted, buckets }
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// Whether `name` is in the set. Header names reach the filter in lower case; others are
    /// lowered on the stack first.
    pub fn contains(&self, name: &[u8]) -> bool {
        if !name.iter().any(u8::is_ascii_uppercase) {
            return self.contains_lower(name);
        }
        let mut lower = [0u8; MAX_NAME];
        match lower.get_mut(..name.len()) {
            Some(buf) => {
                for (to, from) in buf.iter_mut().zip(name) {
                    *to = from.to_ascii_lowercase();
                }
                self.contains_lower(buf)
            }
            None => false,
        }
    }

    fn contains_lower(&self, name: &[u8]) -> bool {
        self.buckets[bucket(name)]
            .iter()
            .any(|&i| *self.sorted[usize::from(i)] == *name)
    }

    /// Whether the query parameter name `encoded`, percent-decoded (`+` as a space), is in the
    /// set. A `%` not followed by two hex digits is taken as it is.
    pub fn contains_encoded(&self, encoded: &[u8]) -> bool {
        if !encoded.contains(&b'%') && !encoded.contains(&b'+') {
            return self.contains(encoded);
        }
        let mut decoded = [0u8; MAX_NAME];
        let mut len = 0;
        let mut i = 0;
        while i < encoded.len() {
            let (byte, used) = match encoded[i] {
                b'%' => match (hex(encoded.get(i + 1)), hex(encoded.get(i + 2))) {
                    (Some(hi), Some(lo)) => (hi << 4 | lo, 3),
                    _ => (b'%', 1),
                },
                b'+' => (b' ', 1),
                b => (b, 1),
            };
            let Some(slot) = decoded.get_mut(len) else {
                return false;
            };
            *slot = byte.to_ascii_lowercase();
            len += 1;
            i += used;
        }
        self.contains_lower(&decoded[..len])
    }
}

fn hex(b: Option<&u8>) -> Option<u8> {
    match *b? {
        c @ b'0'..=b'9' => Some(c - b'0'),
        c @ b'a'..=b'f' => Some(c - b'a' + 10),
        c @ b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A raw query string with the value of every parameter named in `names` replaced by
/// [`REDACTED`]; names, order, repeats, separators and every other byte as they were. Parameters
/// are separated by `&` or `;` (some servers split on either, so both are treated as ends); a
/// parameter without `=`, or with an empty value, has nothing to hide and stays as it is.
/// Borrows the input, allocating nothing, when no value is redacted.
pub fn query<'a>(query: &'a [u8], names: &Names) -> Cow<'a, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut start = 0;
    while start <= query.len() {
        let end = query[start..]
            .iter()
            .position(|&b| b == b'&' || b == b';')
            .map_or(query.len(), |i| start + i);
        let segment = &query[start..end];
        if let Some(eq) = segment.iter().position(|&b| b == b'=') {
            let value = start + eq + 1;
            if value < end && names.contains_encoded(&segment[..eq]) {
                let o = out.get_or_insert_with(|| Vec::with_capacity(query.len() + 16));
                o.extend_from_slice(&query[copied..value]);
                o.extend_from_slice(REDACTED.as_bytes());
                copied = end;
            }
        }
        start = end + 1;
    }
    match out {
        None => Cow::Borrowed(query),
        Some(mut o) => {
            o.extend_from_slice(&query[copied..]);
            Cow::Owned(o)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn defaults() -> Names {
        Names::new(DEFAULT_QUERY_PARAMS, ["x-tenant-secret"])
    }

    fn redact(q: &str) -> String {
        String::from_utf8(query(q.as_bytes(), &defaults()).into_owned()).unwrap()
    }

    #[test]
    fn listed_values_become_redacted_and_everything_else_stays() {
        assert_eq!(
            redact("stream=false&api_key=sk-query-canary-456"),
            "stream=false&api_key=[REDACTED]"
        );
        assert_eq!(
            redact("key=AIza-1&alt=sse&key=AIza-2&X-Tenant-Secret=t"),
            "key=[REDACTED]&alt=sse&key=[REDACTED]&X-Tenant-Secret=[REDACTED]",
            "repeats, order and the name's spelling kept"
        );
        assert_eq!(
            redact("X-Amz-Signature=abc;X-Amz-Security-Token=tok&x=1"),
            "X-Amz-Signature=[REDACTED];X-Amz-Security-Token=[REDACTED]&x=1"
        );
        assert_eq!(redact("a=1&b=2"), "a=1&b=2");
        assert_eq!(redact(""), "");
    }

    #[test]
    fn names_are_matched_after_percent_decoding() {
        assert_eq!(redact("api%5Fkey=s1"), "api%5Fkey=[REDACTED]");
        assert_eq!(redact("%61%50%69_KEY=s2"), "%61%50%69_KEY=[REDACTED]");
        assert_eq!(redact("client%5fsecret=s3"), "client%5fsecret=[REDACTED]");
        assert_eq!(redact("api%20key=s4"), "api%20key=s4", "not a listed name");
    }

    #[test]
    fn malformed_queries_are_kept_safely() {
        for q in [
            "%", "%%", "%zz=1", "key", "=secret", "&&&", "key=", "a=%", "key%=x", "%k%e%y=v",
            "key=a=b", ";;key=", "&=&",
        ] {
            let out = redact(q);
            assert!(
                out == q || out.contains("[REDACTED]"),
                "{q:?} became {out:?}"
            );
        }
        assert_eq!(redact("key=a=b"), "key=[REDACTED]", "the whole value");
        assert_eq!(redact("key"), "key", "no value to hide");
        assert_eq!(redact("key=&a=1"), "key=&a=1", "an empty value stays empty");
        assert_eq!(
            redact("=secret"),
            "=secret",
            "an empty name is no listed name"
        );
        assert_eq!(redact("ke%y=v"), "ke%y=v", "a stray % is taken as it is");
    }

    #[test]
    fn nothing_is_allocated_when_nothing_matches() {
        let q = b"model=gpt-4o&stream=true&n=1";
        assert!(matches!(query(q, &defaults()), Cow::Borrowed(_)));
    }

    #[test]
    fn header_names_compare_case_insensitively() {
        let names = Names::new(DEFAULT_HEADERS, ["X-Tenant-Key"]);
        assert!(names.contains(b"authorization"));
        assert!(names.contains(b"Ocp-Apim-Subscription-Key"));
        assert!(names.contains(b"x-tenant-key"));
        assert!(!names.contains(b"content-type"));
        assert!(!names.contains(&[b'A'; MAX_NAME + 1]));
        assert_eq!(
            Names::new(&["a", "A"], ["a"]).len(),
            1,
            "lowered without repeats"
        );
    }

    #[test]
    fn the_contracts_minimum_lists_are_built_in() {
        for name in [
            "authorization",
            "proxy-authorization",
            "cookie",
            "set-cookie",
            "x-api-key",
            "api-key",
            "x-goog-api-key",
            "x-amz-security-token",
            "ocp-apim-subscription-key",
        ] {
            assert!(DEFAULT_HEADERS.contains(&name), "{name}");
        }
        for name in [
            "key",
            "api_key",
            "apikey",
            "api-key",
            "access_token",
            "token",
            "password",
            "secret",
            "client_secret",
            "sig",
            "signature",
            "x-amz-security-token",
            "x-amz-signature",
            "x-goog-signature",
        ] {
            assert!(DEFAULT_QUERY_PARAMS.contains(&name), "{name}");
        }
    }

    #[test]
    fn every_default_is_lower_case_and_short() {
        for name in DEFAULT_HEADERS.iter().chain(DEFAULT_QUERY_PARAMS) {
            assert_eq!(*name, name.to_ascii_lowercase());
            assert!(!name.is_empty() && name.len() <= MAX_NAME);
        }
    }

    proptest! {
        /// Whatever the query, no value of a listed name survives, and removing the markers from
        /// the output gives back the input with exactly those values removed.
        #[test]
        fn no_listed_value_survives_and_nothing_else_changes(
            parts in prop::collection::vec(
                (prop::sample::select(vec!["key", "API_KEY", "sig", "a", "", "x%5Fy", "tok%65n", "%"]),
                 prop::option::of("[a-z0-9%=]{0,8}"),
                 prop::sample::select(vec!["&", ";"])),
                0..8),
        ) {
            let mut q = String::new();
            let mut expected = String::new();
            for (i, (name, value, sep)) in parts.iter().enumerate() {
                if i > 0 { q.push_str(sep); expected.push_str(sep); }
                q.push_str(name);
                expected.push_str(name);
                if let Some(v) = value {
                    q.push('=');
                    q.push_str(v);
                    expected.push('=');
                    let listed = defaults().contains_encoded(name.as_bytes());
                    if listed && !v.is_empty() {
                        expected.push_str(REDACTED);
                    } else {
                        expected.push_str(v);
                    }
                }
            }
            prop_assert_eq!(redact(&q), expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(q in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = query(&q, &defaults());
        }
    }
}
