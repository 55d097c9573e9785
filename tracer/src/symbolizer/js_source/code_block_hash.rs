//! JavaScriptCore's `CodeBlockHash`: the `#A70GFT` after a function's name in jitdump names.
//!
//! JSC (`bytecode/CodeBlockHash.cpp` in Bun's WebKit): SHA-1 of the function's source text as UTF-8, the
//! digest's first 4 bytes read little endian; 0 and 1 become themselves plus 0x2d5a93d0 (so that no hash
//! is 0); then XOR the specialization kind (0 call, 1 construct). Printed as 6 base-62 digits
//! (`A-Z a-z 0-9`, most significant first; 62^6 > 2^32). Sources of 500 MB or more are sampled instead of
//! hashed whole: no function of a program we can read is that long, so that case is not reproduced.

use sha1::{Digest, Sha1};

const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const DIGITS: usize = 6;
/// JSC adds this to a digest prefix of 0 or 1 (`#Azero0` / `#Azero1` once the kind is XORed in).
const ZERO_AVOIDANCE: u32 = 0x2d5a_93d0;

/// Which entry of a function a code block was compiled for: a call, or `new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Specialization {
    Call = 0,
    Construct = 1,
}

/// A code block hash, as a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CodeBlockHash(pub u32);

impl CodeBlockHash {
    /// The hash JSC gives a code block compiled from `source` (the exact text it parsed).
    pub fn of(source: &str, specialization: Specialization) -> Self {
        let digest = Sha1::digest(source.as_bytes());
        let mut hash = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
        if hash <= 1 {
            hash += ZERO_AVOIDANCE;
        }
        Self(hash ^ specialization as u32)
    }

    /// Parses the 6 letters and digits JSC prints (`A70GFT`); None for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != DIGITS {
            return None;
        }
        let mut value: u64 = 0;
        for byte in text.bytes() {
            let digit = ALPHABET.iter().position(|&a| a == byte)? as u64;
            value = value * 62 + digit;
        }
        u32::try_from(value).ok().map(Self)
    }
}

impl std::fmt::Display for CodeBlockHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut digits = [0u8; DIGITS];
        let mut rest = self.0;
        for slot in digits.iter_mut().rev() {
            *slot = ALPHABET[(rest % 62) as usize];
            rest /= 62;
        }
        f.write_str(std::str::from_utf8(&digits).expect("ASCII digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base62_round_trips_and_orders_digits_most_significant_first() {
        assert_eq!(CodeBlockHash(0).to_string(), "AAAAAA");
        assert_eq!(CodeBlockHash(1).to_string(), "AAAAAB");
        assert_eq!(CodeBlockHash(62).to_string(), "AAAABA");
        assert_eq!(CodeBlockHash(u32::MAX).to_string(), "EqpPMD");
        for value in [0, 1, 61, 62, 3843, 0x2d5a_93d0, 0x8000_0000, u32::MAX] {
            assert_eq!(CodeBlockHash::parse(&CodeBlockHash(value).to_string()), Some(CodeBlockHash(value)));
        }
        assert_eq!(CodeBlockHash::parse("A70GF"), None);
        assert_eq!(CodeBlockHash::parse("A70GF!"), None);
        assert_eq!(CodeBlockHash::parse("zzzzzz"), None, "above 2^32");
    }

    #[test]
    fn zero_and_one_are_avoided_like_jsc() {
        // JSC's own comment: a zero digest prefix prints as #Azero0 for calls and #Azero1 for constructs.
        assert_eq!(CodeBlockHash(ZERO_AVOIDANCE).to_string(), "Azero0");
        assert_eq!(CodeBlockHash(ZERO_AVOIDANCE ^ 1).to_string(), "Azero1");
    }

    /// Hashes printed by Bun 1.3.13 (`BUN_JSC_useJITDump=1`) for functions of a `bun build --compile`
    /// bundle (tests/fixtures/js_source/kinds.bundle.js), with the exact text that produced each.
    #[test]
    fn matches_hashes_that_bun_printed() {
        let cases = [
            ("(a) {\n  return a + 1;\n}", Specialization::Call, "BkIyR1"),
            ("(a, b) => a * b + 1", Specialization::Call, "DBV8XG"),
            ("(a) {\n    this.a = a;\n  }", Specialization::Construct, "BBSw3b"),
            ("{\n  await null;\n  return a + 4;\n}", Specialization::Call, "DMQgiA"),
            ("await a + 6", Specialization::Call, "AO5Jcd"),
            // The default constructors JSC makes for a class without one (the `class` is named).
            ("() { }", Specialization::Construct, "AvtfcK"),
            ("(...args) { super(...args); }", Specialization::Construct, "DWwph9"),
        ];
        for (text, specialization, printed) in cases {
            assert_eq!(CodeBlockHash::of(text, specialization).to_string(), printed, "{text:?}");
        }
    }
}
