//! Base64, the one encoding dcd needs (registry auth headers, inline PEM for
//! zenoh, config.json `auth` entries), written once rather than pulled in as a crate.

pub const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
pub const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Padded base64 in `alphabet`.
pub fn base64_encode(bytes: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard or URL-safe base64, padding optional (config.json files are
/// written by more than one tool).
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = acc << 6 | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A lone trailing character carries fewer than 8 bits: not base64.
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_matches_known_values() {
        assert_eq!(base64_encode(b"", STANDARD), "");
        assert_eq!(base64_encode(b"f", STANDARD), "Zg==");
        assert_eq!(base64_encode(b"fo", STANDARD), "Zm8=");
        assert_eq!(base64_encode(b"foobar", STANDARD), "Zm9vYmFy");
        assert_eq!(base64_encode(b"user:pass", STANDARD), "dXNlcjpwYXNz");
        assert_eq!(base64_encode(b"\xfb\xff", URL_SAFE), "-_8=");
        assert_eq!(base64_encode(b"\xfb\xff", STANDARD), "+/8=");
        for data in [&b""[..], b"a", b"ab", b"abc", b"\x00\xff\x10\x80"] {
            for alphabet in [STANDARD, URL_SAFE] {
                let text = base64_encode(data, alphabet);
                assert_eq!(base64_decode(&text).as_deref(), Some(data), "{text}");
                assert_eq!(base64_decode(text.trim_end_matches('=')).as_deref(), Some(data));
            }
        }
        for bad in ["a", "ab$c", "abcde"] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }
}
