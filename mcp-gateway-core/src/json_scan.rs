//! A strict, single-pass JSON scanner for the envelope parser.
//!
//! Why not serde: the envelope needs a handful of members out of a body it
//! must otherwise only validate and skip. Driving serde's derived visitors
//! for that (field-name matching through `Option` visitors, a raw-value
//! capture per id) costs several times what this scanner does, and it is on
//! the path of every request (`docs/benchmarks.md`).
//!
//! It accepts exactly RFC 8259 JSON: UTF-8 is checked once for the whole
//! body by the caller (the scanner works on `&str`), strings must not hold
//! control characters and their escapes must be valid (a `\u` surrogate
//! must be paired), numbers follow the grammar, and nesting is limited to
//! [`MAX_DEPTH`] (as serde_json's default), so a deep body cannot exhaust
//! the stack.
//!
//! Two kinds of failure are kept apart, because JSON-RPC answers them with
//! different codes: the text is not JSON (*syntax*, -32700), or it is JSON
//! of the wrong shape (*shape*, -32600). A shape problem is recorded and
//! the scan goes on, so a body that is both misshapen and broken further
//! on is reported as broken: not JSON at all is the more basic fault.

use std::borrow::Cow;

/// Deepest nesting of arrays and objects accepted.
pub(crate) const MAX_DEPTH: u32 = 128;

/// Why a body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanError {
    /// Not JSON.
    Syntax(&'static str),
    /// JSON, but not the shape asked for.
    Shape(&'static str),
}

/// The JSON types, as far as the envelope cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Object,
    Array,
    String,
    Number,
    Literal,
    Null,
}

/// A cursor over one JSON text.
pub(crate) struct Scanner<'a> {
    src: &'a str,
    pos: usize,
    depth: u32,
    shape: Option<&'static str>,
}

type Scan<T> = Result<T, ScanError>;

/// The index of the first byte at or after `i` that ends the plain run of
/// a string: a quote, a backslash or a control character (`b.len()` when
/// there is none). Eight bytes at a time: strings are most of a JSON-RPC
/// body, and a byte-at-a-time loop was the scanner's largest cost.
#[inline]
fn plain_run_end(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        // A byte of `v` is zero exactly where `x` holds the byte searched.
        let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
        let quote = zero(x ^ (ONES * u64::from(b'"')));
        let backslash = zero(x ^ (ONES * u64::from(b'\\')));
        // Bytes below 0x20: subtracting 0x20 borrows into the high bit.
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
        let hits = quote | backslash | control;
        if hits != 0 {
            // The lowest flagged byte is exact (borrows only run upwards,
            // from a byte that is itself a hit).
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return i;
        }
        i += 1;
    }
    i
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(src: &'a str) -> Self {
        Scanner {
            src,
            pos: 0,
            depth: 0,
            shape: None,
        }
    }

    /// The byte offset of the cursor.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    fn bytes(&self) -> &'a [u8] {
        self.src.as_bytes()
    }

    /// Records a shape problem (the first one wins) and goes on.
    pub(crate) fn shape_error(&mut self, msg: &'static str) {
        self.shape.get_or_insert(msg);
    }

    /// After the last value: only whitespace may follow; then the first
    /// shape problem, if any.
    pub(crate) fn finish(mut self) -> Scan<()> {
        self.ws();
        if self.pos != self.src.len() {
            return Err(ScanError::Syntax(
                "trailing characters after the JSON value",
            ));
        }
        match self.shape {
            Some(m) => Err(ScanError::Shape(m)),
            None => Ok(()),
        }
    }

    pub(crate) fn ws(&mut self) {
        let b = self.bytes();
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The kind of the next value (after whitespace), without consuming it.
    pub(crate) fn peek_kind(&mut self) -> Scan<Kind> {
        self.ws();
        Ok(match self.bytes().get(self.pos) {
            Some(b'{') => Kind::Object,
            Some(b'[') => Kind::Array,
            Some(b'"') => Kind::String,
            Some(b'-' | b'0'..=b'9') => Kind::Number,
            Some(b'n') => Kind::Null,
            Some(b't' | b'f') => Kind::Literal,
            Some(_) => return Err(ScanError::Syntax("expected a JSON value")),
            None => return Err(ScanError::Syntax("unexpected end of JSON")),
        })
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.bytes().get(self.pos) == Some(&c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn enter(&mut self) -> Scan<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ScanError::Syntax("JSON nested too deeply"));
        }
        Ok(())
    }

    /// Walks an object, calling `member` with each key; `member` must
    /// consume the value (read it or [`skip`](Self::skip) it).
    pub(crate) fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, Cow<'a, str>) -> Scan<()>,
    ) -> Scan<()> {
        let (open, close) = (b'{', b'}');
        let errors = ("expected an object", "expected ',' or '}' in an object");
        self.items(open, close, errors, |s| {
            s.ws();
            let key = s.string()?;
            if !s.eat(b':') {
                return Err(ScanError::Syntax("expected ':' after an object key"));
            }
            member(s, key)
        })
    }

    /// Walks an array, calling `item` for each element; `item` must
    /// consume it.
    pub(crate) fn array(&mut self, item: impl FnMut(&mut Self) -> Scan<()>) -> Scan<()> {
        let errors = ("expected an array", "expected ',' or ']' in an array");
        self.items(b'[', b']', errors, item)
    }

    /// The comma-separated items between `open` and `close`, one nesting
    /// level down; `errors` are the messages for a missing `open` and for
    /// a missing separator.
    fn items(
        &mut self,
        open: u8,
        close: u8,
        errors: (&'static str, &'static str),
        mut item: impl FnMut(&mut Self) -> Scan<()>,
    ) -> Scan<()> {
        if !self.eat(open) {
            return Err(ScanError::Syntax(errors.0));
        }
        self.enter()?;
        if !self.eat(close) {
            loop {
                item(self)?;
                if self.eat(b',') {
                    continue;
                }
                if self.eat(close) {
                    break;
                }
                return Err(ScanError::Syntax(errors.1));
            }
        }
        self.depth -= 1;
        Ok(())
    }

    /// Skips one value, validating it; returns its exact text.
    pub(crate) fn raw(&mut self) -> Scan<&'a str> {
        self.ws();
        let start = self.pos;
        self.skip()?;
        Ok(&self.src[start..self.pos])
    }

    /// Skips one value, validating it.
    pub(crate) fn skip(&mut self) -> Scan<()> {
        match self.peek_kind()? {
            Kind::Object => self.object(|s, _| s.skip()),
            Kind::Array => self.array(Self::skip),
            Kind::String => self.skip_string(),
            Kind::Number => self.number(),
            Kind::Null => self.literal("null"),
            Kind::Literal => {
                if self.bytes()[self.pos] == b't' {
                    self.literal("true")
                } else {
                    self.literal("false")
                }
            }
        }
    }

    fn literal(&mut self, word: &'static str) -> Scan<()> {
        if self.src[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(ScanError::Syntax("invalid literal"))
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Scan<()> {
        let b = self.bytes();
        let mut i = self.pos;
        let digits = |i: &mut usize| {
            let from = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i > from
        };
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                digits(&mut i);
            }
            _ => return Err(ScanError::Syntax("invalid number")),
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            if !digits(&mut i) {
                return Err(ScanError::Syntax("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            if !digits(&mut i) {
                return Err(ScanError::Syntax("invalid number"));
            }
        }
        self.pos = i;
        Ok(())
    }

    /// Reads a string value (after whitespace), decoding escapes; borrows
    /// the source when there are none.
    pub(crate) fn string(&mut self) -> Scan<Cow<'a, str>> {
        self.ws();
        let b = self.bytes();
        if b.get(self.pos) != Some(&b'"') {
            return Err(ScanError::Syntax("expected a string"));
        }
        let start = self.pos + 1;
        let i = plain_run_end(b, start);
        // The common case: no escape before the closing quote.
        match b.get(i) {
            Some(b'"') => {
                self.pos = i + 1;
                return Ok(Cow::Borrowed(&self.src[start..i]));
            }
            Some(b'\\') => {}
            Some(_) => return Err(ScanError::Syntax("control character in a string")),
            None => return Err(ScanError::Syntax("unterminated string")),
        }
        let mut out = String::with_capacity(i - start + 16);
        out.push_str(&self.src[start..i]);
        self.pos = i;
        self.escaped_rest(Some(&mut out))?;
        Ok(Cow::Owned(out))
    }

    fn skip_string(&mut self) -> Scan<()> {
        let b = self.bytes();
        // Caller saw the opening quote.
        let i = plain_run_end(b, self.pos + 1);
        match b.get(i) {
            Some(b'"') => {
                self.pos = i + 1;
                return Ok(());
            }
            Some(b'\\') => {}
            Some(_) => return Err(ScanError::Syntax("control character in a string")),
            None => return Err(ScanError::Syntax("unterminated string")),
        }
        self.pos = i;
        self.escaped_rest(None)
    }

    /// The rest of a string from its first backslash (at `pos`) to past the
    /// closing quote, decoded into `out` when given.
    fn escaped_rest(&mut self, mut out: Option<&mut String>) -> Scan<()> {
        let b = self.bytes();
        let mut i = self.pos;
        let mut plain = i;
        loop {
            i = plain_run_end(b, i);
            match b.get(i) {
                Some(b'"') => {
                    if let Some(o) = out.as_deref_mut() {
                        o.push_str(&self.src[plain..i]);
                    }
                    self.pos = i + 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    if let Some(o) = out.as_deref_mut() {
                        o.push_str(&self.src[plain..i]);
                    }
                    let (c, len) = self.escape(i)?;
                    if let Some(o) = out.as_deref_mut() {
                        o.push(c);
                    }
                    i += len;
                    plain = i;
                }
                Some(_) => return Err(ScanError::Syntax("control character in a string")),
                None => return Err(ScanError::Syntax("unterminated string")),
            }
        }
    }

    /// The escape at `i` (a backslash): the character and the escape's
    /// length in bytes.
    fn escape(&self, i: usize) -> Scan<(char, usize)> {
        let b = self.bytes();
        let bad = ScanError::Syntax("invalid escape in a string");
        let c = match b.get(i + 1) {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                let hi = self.hex4(i + 2)?;
                if (0xD800..0xDC00).contains(&hi) {
                    // A high surrogate must be followed by a low one.
                    if b.get(i + 6) != Some(&b'\\') || b.get(i + 7) != Some(&b'u') {
                        return Err(ScanError::Syntax("unpaired surrogate in a string"));
                    }
                    let lo = self.hex4(i + 8)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err(ScanError::Syntax("unpaired surrogate in a string"));
                    }
                    let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                    return char::from_u32(cp).map(|c| (c, 12)).ok_or(bad);
                }
                return char::from_u32(hi)
                    .map(|c| (c, 6))
                    .ok_or(ScanError::Syntax("unpaired surrogate in a string"));
            }
            _ => return Err(bad),
        };
        Ok((c, 2))
    }

    fn hex4(&self, i: usize) -> Scan<u32> {
        let digits = self
            .bytes()
            .get(i..i + 4)
            .ok_or(ScanError::Syntax("invalid \\u escape"))?;
        digits.iter().try_fold(0u32, |acc, d| {
            let v = (*d as char)
                .to_digit(16)
                .ok_or(ScanError::Syntax("invalid \\u escape"))?;
            Ok(acc * 16 + v)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Validates a whole text as one JSON value.
    fn valid(text: &str) -> bool {
        let mut s = Scanner::new(text);
        s.skip().is_ok() && s.finish().is_ok()
    }

    #[test]
    fn accepts_json_and_refuses_the_rest() {
        for good in [
            "0",
            "-0.5e+3",
            "1E9",
            " \"a\\u00e9\\ud83d\\ude00\\n\" ",
            "[]",
            "{}",
            "[1,{\"a\":[null,true,false]}]",
            "{\"\":\"\"}",
        ] {
            assert!(valid(good), "{good}");
        }
        for bad in [
            "",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "tru",
            "nul",
            "\"\\x\"",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud800\\u0041\"",
            "\"a\nb\"",
            "\"abc",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{1:2}",
            "[1 2]",
            "{} {}",
            "NaN",
        ] {
            assert!(!valid(bad), "{bad:?}");
        }
    }

    #[test]
    fn plain_run_ends_at_the_first_quote_backslash_or_control_byte() {
        // Every special byte at every position of runs of every length up
        // to three chunks, over every other byte value as filler.
        for filler in (0x20u8..=0xff).filter(|c| *c != b'"' && *c != b'\\') {
            for len in 0..24 {
                let mut buf = vec![filler; len];
                assert_eq!(plain_run_end(&buf, 0), len);
                for at in 0..len {
                    for special in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                        buf[at] = special;
                        assert_eq!(plain_run_end(&buf, 0), at);
                        // A special byte after the first does not matter.
                        if at + 1 < len {
                            buf[at + 1] = b'"';
                            assert_eq!(plain_run_end(&buf, 0), at);
                            buf[at + 1] = filler;
                        }
                        buf[at] = filler;
                    }
                }
            }
        }
    }

    #[test]
    fn nesting_is_limited() {
        let ok = "[".repeat(MAX_DEPTH as usize) + &"]".repeat(MAX_DEPTH as usize);
        assert!(valid(&ok));
        let deep = "[".repeat(MAX_DEPTH as usize + 1) + &"]".repeat(MAX_DEPTH as usize + 1);
        assert!(!valid(&deep));
        // Far deeper than any stack could take recursively: refused, no crash.
        assert!(!valid(&"[".repeat(1_000_000)));
    }

    #[test]
    fn strings_decode_and_borrow_when_plain() {
        let mut s = Scanner::new(r#""plain""#);
        assert!(matches!(s.string().unwrap(), Cow::Borrowed("plain")));
        let mut s = Scanner::new(r#""a\/b\u00e9\ud83d\ude00\"""#);
        assert_eq!(s.string().unwrap(), "a/bé😀\"");
    }

    #[test]
    fn raw_is_the_exact_text() {
        let mut s = Scanner::new(" { \"a\" : [1, 2] } ");
        assert_eq!(s.raw().unwrap(), "{ \"a\" : [1, 2] }");
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            (-1e300f64..1e300).prop_map(|f| serde_json::json!(f)),
            any::<String>().prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever serde_json writes (compact or pretty) is valid, and
        /// every string in it decodes to what was written.
        #[test]
        fn accepts_what_serde_json_writes(v in arb_json(), pretty in any::<bool>()) {
            let text = if pretty { serde_json::to_string_pretty(&v).unwrap() } else { serde_json::to_string(&v).unwrap() };
            prop_assert!(valid(&text));
        }

        #[test]
        fn decodes_strings_as_serde_json_does(s in any::<String>()) {
            let text = serde_json::to_string(&s).unwrap();
            prop_assert_eq!(Scanner::new(&text).string().unwrap(), s);
        }

        /// On any text the scanner and serde_json agree on whether it is
        /// JSON (numbers aside: serde_json refuses ones beyond f64, which
        /// are still JSON).
        #[test]
        fn agrees_with_serde_json_on_validity(text in "[\\[\\]{}:,\" a0-9.eE+\\-\\\\u/ntrfl]{0,24}") {
            let theirs = serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok();
            prop_assert_eq!(valid(&text), theirs, "{:?}", text);
        }
    }
}
