//! Turns a captured body back into the bytes the application saw: base64 undone, then every
//! `content-encoding` (gzip, deflate, br) undone in reverse order of application.
//!
//! A truncated or corrupt compressed body is decoded as far as it goes; the problem is reported
//! beside the bytes, never as a failure.

use std::io::Read;

use crate::record::{header, CapturedBody, Headers};

/// Decoded bodies larger than this are cut here (a guard against decompression bombs).
pub const MAX_DECODED_BYTES: usize = 256 * 1024 * 1024;

/// The body's plain bytes and what, if anything, got in the way of decoding all of them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decoded {
    /// The bytes decoded so far (all of them when `problem` is `None`).
    pub bytes: Vec<u8>,
    /// Why decoding stopped early, or why the bytes may not be the whole body.
    pub problem: Option<String>,
}

/// Decodes `body` as the headers describe it.
pub fn decode_body(body: &CapturedBody, headers: &Headers) -> Decoded {
    let mut bytes = match body.bytes() {
        Ok(b) => b,
        Err(e) => {
            return Decoded {
                bytes: Vec::new(),
                problem: Some(format!("body data is not valid base64: {e}")),
            }
        }
    };
    let Some(encodings) = header(headers, "content-encoding") else {
        return Decoded {
            bytes,
            problem: None,
        };
    };
    let codings: Vec<String> = encodings
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    for coding in codings.iter().rev() {
        let (out, problem) = match coding.as_str() {
            "gzip" | "x-gzip" => read_all(flate2::read::MultiGzDecoder::new(bytes.as_slice())),
            "deflate" => inflate(&bytes),
            "br" => read_all(brotli::Decompressor::new(bytes.as_slice(), 4096)),
            other => {
                return Decoded {
                    bytes,
                    problem: Some(format!("unsupported content-encoding \"{other}\"")),
                }
            }
        };
        bytes = out;
        if let Some(p) = problem {
            return Decoded {
                bytes,
                problem: Some(format!("content-encoding {coding}: {p}")),
            };
        }
    }
    Decoded {
        bytes,
        problem: None,
    }
}

/// HTTP `deflate` is meant to be zlib-wrapped, but raw deflate is common in the wild.
/// A body's pieces decoded one at a time, as they crossed the filter: for each piece of the
/// captured bytes, the plain bytes it let the decoder write. `None` for a coding this does not
/// stream (several codings, or one it does not know). Decoding stops, keeping what came before,
/// at corrupt input or past [`MAX_DECODED_BYTES`].
pub fn decode_pieces<'a>(
    coding: &str,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Option<Vec<Vec<u8>>> {
    use flate2::write::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};
    use std::io::Write;
    enum Stream {
        Gzip(MultiGzDecoder<Vec<u8>>),
        Zlib(ZlibDecoder<Vec<u8>>),
        Raw(DeflateDecoder<Vec<u8>>),
        Br(Box<brotli::DecompressorWriter<Vec<u8>>>),
    }
    impl Stream {
        fn write(&mut self, piece: &[u8]) -> std::io::Result<Vec<u8>> {
            fn step(w: &mut impl Write, piece: &[u8]) -> std::io::Result<()> {
                w.write_all(piece)?;
                w.flush()
            }
            Ok(std::mem::take(match self {
                Stream::Gzip(w) => {
                    step(w, piece)?;
                    w.get_mut()
                }
                Stream::Zlib(w) => {
                    step(w, piece)?;
                    w.get_mut()
                }
                Stream::Raw(w) => {
                    step(w, piece)?;
                    w.get_mut()
                }
                Stream::Br(w) => {
                    step(w.as_mut(), piece)?;
                    w.get_mut()
                }
            }))
        }
    }
    let coding = coding.trim().to_ascii_lowercase();
    let mut pieces = pieces.into_iter().peekable();
    let mut stream = match coding.as_str() {
        "gzip" | "x-gzip" => Stream::Gzip(MultiGzDecoder::new(Vec::new())),
        // Zlib-wrapped, as the RFC says, unless the first bytes are not a zlib header (some
        // servers send raw deflate).
        "deflate" => match pieces.peek() {
            Some([a, b, ..]) if a & 0x0f == 8 && (u16::from(*a) << 8 | u16::from(*b)) % 31 == 0 => {
                Stream::Zlib(ZlibDecoder::new(Vec::new()))
            }
            _ => Stream::Raw(DeflateDecoder::new(Vec::new())),
        },
        "br" => Stream::Br(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096))),
        _ => return None,
    };
    let mut out = Vec::new();
    let mut total = 0usize;
    for piece in pieces {
        let Ok(plain) = stream.write(piece) else {
            break;
        };
        total += plain.len();
        if total > MAX_DECODED_BYTES {
            break;
        }
        out.push(plain);
    }
    Some(out)
}

fn inflate(bytes: &[u8]) -> (Vec<u8>, Option<String>) {
    let zlib = read_all(flate2::read::ZlibDecoder::new(bytes));
    if zlib.1.is_some() && zlib.0.is_empty() {
        let raw = read_all(flate2::read::DeflateDecoder::new(bytes));
        if raw.1.is_none() || !raw.0.is_empty() {
            return raw;
        }
    }
    zlib
}

/// Reads until the end, an error, or [`MAX_DECODED_BYTES`]; keeps everything read before a stop.
fn read_all(mut reader: impl Read) -> (Vec<u8>, Option<String>) {
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => return (out, None),
            Ok(n) => {
                out.extend_from_slice(chunk.get(..n).unwrap_or_default());
                if out.len() > MAX_DECODED_BYTES {
                    out.truncate(MAX_DECODED_BYTES);
                    return (
                        out,
                        Some(format!("decoded body cut at {MAX_DECODED_BYTES} bytes")),
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let problem = format!("decoding stopped after {} bytes: {e}", out.len());
                return (out, Some(problem));
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::record::BodyEncoding;
    use base64::Engine as _;
    use std::io::Write;

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    pub(crate) fn brotli(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(data).unwrap();
        }
        out
    }

    pub(crate) fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    pub(crate) fn b64_body(bytes: &[u8], truncated: bool) -> CapturedBody {
        CapturedBody {
            encoding: BodyEncoding::Base64,
            data: base64::engine::general_purpose::STANDARD.encode(bytes),
            size: bytes.len() as u64 + u64::from(truncated) * 100,
            truncated,
        }
    }

    fn headers(ce: &str) -> Headers {
        vec![("content-encoding".into(), ce.into())]
    }

    const TEXT: &[u8] = b"{\"hello\":\"world\",\"n\":[1,2,3,4,5,6,7,8,9,10]}";

    #[test]
    fn plain_utf8_body_is_returned_as_is() {
        let body = CapturedBody {
            encoding: BodyEncoding::Utf8,
            data: "abc".into(),
            size: 3,
            truncated: false,
        };
        assert_eq!(decode_body(&body, &vec![]).bytes, b"abc");
    }

    #[test]
    fn gzip_br_and_deflate_are_undone() {
        for (ce, bytes) in [
            ("gzip", gzip(TEXT)),
            ("br", brotli(TEXT)),
            ("deflate", zlib(TEXT)),
        ] {
            let d = decode_body(&b64_body(&bytes, false), &headers(ce));
            assert_eq!(d.problem, None, "{ce}");
            assert_eq!(d.bytes, TEXT, "{ce}");
        }
    }

    #[test]
    fn raw_deflate_is_accepted_too() {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(TEXT).unwrap();
        let d = decode_body(&b64_body(&e.finish().unwrap(), false), &headers("deflate"));
        assert_eq!(d.bytes, TEXT);
    }

    #[test]
    fn stacked_encodings_are_undone_in_reverse() {
        let bytes = brotli(&gzip(TEXT));
        let d = decode_body(&b64_body(&bytes, false), &headers("gzip, br"));
        assert_eq!(d.bytes, TEXT);
    }

    #[test]
    fn truncated_gzip_yields_a_prefix_and_a_problem() {
        let long: Vec<u8> = (0..20000u32)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let z = gzip(&long);
        let d = decode_body(&b64_body(&z[..z.len() / 2], true), &headers("gzip"));
        assert!(d.problem.is_some());
        assert!(!d.bytes.is_empty());
        assert!(long.starts_with(&d.bytes));
    }

    #[test]
    fn unknown_encoding_is_reported() {
        let d = decode_body(&b64_body(TEXT, false), &headers("zstd"));
        assert_eq!(
            d.problem.as_deref(),
            Some("unsupported content-encoding \"zstd\"")
        );
    }
}
