//! Ids and names: random hex ids, the 12-character short id, and the naming
//! rules the engine applies (container names, image references), each written
//! once so every function that takes a name checks it the same way.

/// `n` random lowercase hex characters (event ids, trace ids, temp names).
/// Seeded from the kernel's randomness through std's hasher keys.
pub fn random_hex(n: usize) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::with_capacity(n + 16);
    let mut counter = 0u64;
    while out.len() < n {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(counter);
        counter += 1;
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out.truncate(n);
    out
}

/// The 12-character id the docker CLI shows (of a container id or an image
/// digest without its `sha256:`); shorter input is returned whole.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Docker's container name rule; also used for networks and volumes, whose
/// rule the engine states the same way.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// The message for a name `valid_name` refuses; `what` names the field.
pub fn name_error(what: &str, name: &str) -> String {
    format!("{what} {name:?} must match [a-zA-Z0-9][a-zA-Z0-9_.-]* (at most 128 characters)")
}

/// A plausible image reference: registry/repo:tag@digest characters only,
/// nothing that could reach into a URL's path or query. `what` names the
/// field in the message.
pub fn check_image(what: &str, image: &str) -> Result<(), String> {
    let ok = !image.is_empty()
        && image.len() <= 512
        && !image.starts_with(['-', '/', ':', '@', '.'])
        && image.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'/' | b':' | b'@'))
        && !image.contains("..");
    if ok {
        Ok(())
    } else {
        Err(format!("{what} {image:?} is not an image reference"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_images() {
        assert!(valid_name("web-1.a_b") && !valid_name("-web") && !valid_name("") && !valid_name("a/b"));
        assert!(!valid_name(&"a".repeat(129)));
        assert!(check_image("image", "127.0.0.1:5000/a/b:1@sha256:00").is_ok());
        for bad in ["", "-x", "/x", "a/../b", "a?b", ".x"] {
            assert_eq!(check_image("image", bad), Err(format!("image {bad:?} is not an image reference")));
        }
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
        let h = random_hex(40);
        assert!(h.len() == 40 && h.bytes().all(|b| b.is_ascii_hexdigit()) && h != random_hex(40));
    }
}
