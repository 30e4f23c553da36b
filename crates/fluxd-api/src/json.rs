//! A JSON reader that fails the way the reference API does.
//!
//! The reference is FastAPI: it decodes the body with Python's `json.loads` and turns a
//! `JSONDecodeError` into `{"type":"json_invalid","loc":["body",<pos>],...,"ctx":{"error":<msg>}}`,
//! where `<msg>` and `<pos>` (a character offset) come from CPython's `_json` scanner
//! (`Modules/_json.c`, CPython 3.11). serde_json's messages and positions differ, so this module
//! follows the scanner's control flow and messages step by step. It also keeps what pydantic needs
//! and `serde_json::Value` loses: whether a number was written as an integer, and integers wider
//! than 64 bits (Python ints are unbounded; pydantic then reports a range error, not a type error).
//!
//! Deliberate differences, all cases where the reference answers 500 (it cannot serialise the
//! value back): `NaN`/`Infinity`/`-Infinity` literals are "Expecting value" here, and a lone
//! surrogate escape (`\ud800`) becomes U+FFFD.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};

/// Nesting deeper than this is refused as an unreadable body: CPython's scanner hits its
/// recursion limit (`RecursionError`, answered 400 by FastAPI) near 1000 levels; we stop earlier
/// to keep our own stack small.
const MAX_DEPTH: usize = 256;

/// A parsed JSON value, as Python's `json` module would have produced it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    /// An integer literal; saturated at the `i128` bounds (far beyond every field's range).
    Int(i128),
    Float(f64),
    Str(String),
    Array(Vec<Json>),
    /// Keys in first-insertion order; a repeated key keeps its first position and its last value,
    /// as a Python `dict` does.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// The value as it is echoed back in an error's `input`. Integers beyond 64 bits and
    /// non-finite floats cannot be held by `serde_json::Value`: they become the nearest `f64`
    /// and `null` respectively.
    pub(crate) fn to_value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Int(i) => {
                if let Ok(v) = i64::try_from(*i) {
                    Value::from(v)
                } else if let Ok(v) = u64::try_from(*i) {
                    Value::from(v)
                } else {
                    Number::from_f64(*i as f64).map_or(Value::Null, Value::Number)
                }
            }
            Json::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Json::Str(s) => Value::String(s.clone()),
            Json::Array(items) => Value::Array(items.iter().map(Json::to_value).collect()),
            Json::Object(fields) => {
                let mut map = Map::new();
                for (k, v) in fields {
                    map.insert(k.clone(), v.to_value());
                }
                Value::Object(map)
            }
        }
    }
}

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DecodeError {
    /// A `JSONDecodeError`: Python's message and the character offset it reports.
    Syntax { msg: &'static str, pos: usize },
    /// Not UTF-8, or nested too deep: FastAPI answers these 400, not 422.
    Unreadable,
}

/// Decodes a request body the way `json.loads(bytes)` does (UTF-8, optional BOM).
pub(crate) fn decode(body: &[u8]) -> Result<Json, DecodeError> {
    // `json.loads` on bytes picks `utf-8-sig` when the BOM is present, dropping it.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let text = std::str::from_utf8(body).map_err(|_| DecodeError::Unreadable)?;
    let mut scanner = Scanner {
        text,
        bytes: text.as_bytes(),
        depth: 0,
    };
    let start = scanner.skip_ws(0);
    let (value, end) = scanner.value(start).map_err(|e| scanner.to_error(e))?;
    let end = scanner.skip_ws(end);
    if end == scanner.bytes.len() {
        Ok(value)
    } else {
        Err(scanner.to_error(Fail::At("Extra data", end)))
    }
}

/// A failure inside the scanner, positions in bytes until converted.
enum Fail {
    /// CPython's `StopIteration(idx)`: no value starts here; the caller says "Expecting value".
    NoValue(usize),
    /// A `JSONDecodeError` with its message.
    At(&'static str, usize),
    TooDeep,
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    depth: usize,
}

type Scan<T> = Result<(T, usize), Fail>;

impl Scanner<'_> {
    fn to_error(&self, fail: Fail) -> DecodeError {
        let (msg, byte) = match fail {
            // `raw_decode` turns the scanner's `StopIteration(idx)` into this message.
            Fail::NoValue(at) => ("Expecting value", at),
            Fail::At(msg, at) => (msg, at),
            Fail::TooDeep => return DecodeError::Unreadable,
        };
        // Python reports positions in code points.
        let byte = byte.min(self.bytes.len());
        let pos = self.text.get(..byte).map_or(byte, |s| s.chars().count());
        DecodeError::Syntax { msg, pos }
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.bytes.get(i).copied()
    }

    /// Python's whitespace set for JSON: space, tab, newline, carriage return.
    fn skip_ws(&self, mut i: usize) -> usize {
        while matches!(self.at(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            i += 1;
        }
        i
    }

    /// `scan_once_unicode`.
    fn value(&mut self, i: usize) -> Scan<Json> {
        match self.at(i) {
            None => Err(Fail::NoValue(i)),
            Some(b'"') => self.string(i + 1).map(|(s, end)| (Json::Str(s), end)),
            Some(b'{') => self.nested(|s| s.object(i + 1)),
            Some(b'[') => self.nested(|s| s.array(i + 1)),
            Some(b'n') if self.bytes[i..].starts_with(b"null") => Ok((Json::Null, i + 4)),
            Some(b't') if self.bytes[i..].starts_with(b"true") => Ok((Json::Bool(true), i + 4)),
            Some(b'f') if self.bytes[i..].starts_with(b"false") => Ok((Json::Bool(false), i + 5)),
            Some(_) => self.number(i),
        }
    }

    fn nested(&mut self, f: impl FnOnce(&mut Self) -> Scan<Json>) -> Scan<Json> {
        if self.depth >= MAX_DEPTH {
            return Err(Fail::TooDeep);
        }
        self.depth += 1;
        let out = f(self);
        self.depth -= 1;
        out
    }

    /// `_parse_object_unicode`; `i` is just past the `{`.
    fn object(&mut self, i: usize) -> Scan<Json> {
        let mut fields: Vec<(String, Json)> = Vec::new();
        // Key → position in `fields`, so that many keys stay linear, not quadratic.
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut i = self.skip_ws(i);
        if self.at(i) == Some(b'}') {
            return Ok((Json::Object(fields), i + 1));
        }
        loop {
            if self.at(i) != Some(b'"') {
                return Err(Fail::At(
                    "Expecting property name enclosed in double quotes",
                    i,
                ));
            }
            let (key, end) = self.string(i + 1)?;
            i = self.skip_ws(end);
            if self.at(i) != Some(b':') {
                return Err(Fail::At("Expecting ':' delimiter", i));
            }
            i = self.skip_ws(i + 1);
            let (value, end) = self.value(i)?;
            match index.get(&key).and_then(|&at| fields.get_mut(at)) {
                Some(slot) => slot.1 = value,
                None => {
                    index.insert(key.clone(), fields.len());
                    fields.push((key, value));
                }
            }
            i = self.skip_ws(end);
            match self.at(i) {
                Some(b'}') => return Ok((Json::Object(fields), i + 1)),
                Some(b',') => i = self.skip_ws(i + 1),
                _ => return Err(Fail::At("Expecting ',' delimiter", i)),
            }
        }
    }

    /// `_parse_array_unicode`; `i` is just past the `[`.
    fn array(&mut self, i: usize) -> Scan<Json> {
        let mut items = Vec::new();
        let mut i = self.skip_ws(i);
        if self.at(i) == Some(b']') {
            return Ok((Json::Array(items), i + 1));
        }
        loop {
            let (value, end) = self.value(i)?;
            items.push(value);
            i = self.skip_ws(end);
            match self.at(i) {
                Some(b']') => return Ok((Json::Array(items), i + 1)),
                Some(b',') => i = self.skip_ws(i + 1),
                _ => return Err(Fail::At("Expecting ',' delimiter", i)),
            }
        }
    }

    /// `_match_number_unicode`: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?`, where an
    /// incomplete fraction or exponent is simply not part of the number.
    fn number(&self, start: usize) -> Scan<Json> {
        let digit = |i: usize| self.at(i).is_some_and(|c| c.is_ascii_digit());
        let mut i = start;
        if self.at(i) == Some(b'-') {
            i += 1;
        }
        match self.at(i) {
            Some(b'1'..=b'9') => {
                i += 1;
                while digit(i) {
                    i += 1;
                }
            }
            Some(b'0') => i += 1,
            _ => return Err(Fail::NoValue(start)),
        }
        let mut is_float = false;
        if self.at(i) == Some(b'.') && digit(i + 1) {
            is_float = true;
            i += 2;
            while digit(i) {
                i += 1;
            }
        }
        if matches!(self.at(i), Some(b'e' | b'E')) {
            let mut j = i + 1;
            if matches!(self.at(j), Some(b'+' | b'-')) {
                j += 1;
            }
            if digit(j) {
                while digit(j) {
                    j += 1;
                }
                is_float = true;
                i = j;
            }
        }
        let lexeme = &self.text[start..i];
        let value = if is_float {
            // Python's float() of a valid JSON number never fails; overflow gives ±inf as here.
            Json::Float(lexeme.parse::<f64>().unwrap_or(f64::NAN))
        } else {
            Json::Int(parse_saturating(lexeme))
        };
        Ok((value, i))
    }

    /// `scanstring_unicode` in strict mode; `i` is just past the opening quote.
    fn string(&self, i: usize) -> Scan<String> {
        let begin = i - 1;
        let unterminated = Fail::At("Unterminated string starting at", begin);
        let mut out = String::new();
        let mut i = i;
        loop {
            // Copy the run of plain characters up to a quote, backslash or control character.
            let run_start = i;
            while let Some(c) = self.at(i) {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                i += 1;
            }
            out.push_str(&self.text[run_start..i]);
            match self.at(i) {
                None => return Err(unterminated),
                Some(b'"') => return Ok((out, i + 1)),
                Some(b'\\') => {}
                Some(_) => return Err(Fail::At("Invalid control character at", i)),
            }
            // A backslash at `i`.
            let next = i + 1;
            let Some(esc) = self.at(next) else {
                return Err(unterminated);
            };
            if esc != b'u' {
                let c = match esc {
                    b'"' => '"',
                    b'\\' => '\\',
                    b'/' => '/',
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    b'n' => '\n',
                    b'r' => '\r',
                    b't' => '\t',
                    _ => return Err(Fail::At("Invalid \\escape", i)),
                };
                out.push(c);
                i = next + 1;
                continue;
            }
            // `\uXXXX`: CPython demands that something follows the four digits.
            let digits = next + 1;
            if digits + 4 >= self.bytes.len() {
                return Err(Fail::At("Invalid \\uXXXX escape", next));
            }
            let high = self.hex4(digits)?;
            let mut end = digits + 4;
            let mut code = u32::from(high);
            if (0xD800..0xDC00).contains(&high)
                && end + 6 < self.bytes.len()
                && self.at(end) == Some(b'\\')
                && self.at(end + 1) == Some(b'u')
            {
                let low = self.hex4(end + 2)?;
                if (0xDC00..0xE000).contains(&low) {
                    code = 0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                    end += 6;
                }
            }
            out.push(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER));
            i = end;
        }
    }

    /// Four hex digits at `i`. CPython reports a bad digit at `end - 5` (`end` past the digits),
    /// which is the escape's `u`.
    fn hex4(&self, i: usize) -> Result<u16, Fail> {
        let mut v: u16 = 0;
        for k in i..i + 4 {
            let d = self
                .at(k)
                .and_then(|c| (c as char).to_digit(16))
                .ok_or(Fail::At("Invalid \\uXXXX escape", i - 1))?;
            v = (v << 4) | d as u16;
        }
        Ok(v)
    }
}

/// Parses `-?[0-9]+` (already validated), saturating at the `i128` bounds.
fn parse_saturating(lexeme: &str) -> i128 {
    let (neg, digits) = match lexeme.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, lexeme),
    };
    let mut v: i128 = 0;
    for c in digits.bytes() {
        let d = i128::from(c - b'0');
        v = v.saturating_mul(10);
        v = if neg {
            v.saturating_sub(d)
        } else {
            v.saturating_add(d)
        };
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> (&'static str, usize) {
        match decode(body.as_bytes()) {
            Err(DecodeError::Syntax { msg, pos }) => (msg, pos),
            other => panic!("expected a syntax error for {body:?}, got {other:?}"),
        }
    }

    #[test]
    fn values_keep_python_semantics() {
        let v = decode(br#"{"a": 1, "b": 1.0, "a": 2, "c": [true, null], "d": 123456789012345678901234567890}"#)
            .unwrap();
        let Json::Object(fields) = v else { panic!() };
        assert_eq!(fields[0], ("a".into(), Json::Int(2)));
        assert_eq!(fields[1], ("b".into(), Json::Float(1.0)));
        assert_eq!(fields[2].1, Json::Array(vec![Json::Bool(true), Json::Null]));
        assert_eq!(fields[3].1, Json::Int(123456789012345678901234567890));
        assert_eq!(fields.len(), 4);
    }

    #[test]
    fn escapes_and_surrogates() {
        let v = decode(br#""a\n\u00e9\ud83d\ude00\/""#).unwrap();
        assert_eq!(v, Json::Str("a\n\u{e9}\u{1F600}/".into()));
        assert_eq!(
            decode(br#""\ud800x""#).unwrap(),
            Json::Str("\u{FFFD}x".into())
        );
    }

    #[test]
    fn errors_match_cpython() {
        assert_eq!(err(""), ("Expecting value", 0));
        assert_eq!(err("[1,]"), ("Expecting value", 3));
        assert_eq!(err("{\"a\" 1}"), ("Expecting ':' delimiter", 5));
        assert_eq!(err("1 2"), ("Extra data", 2));
        assert_eq!(err("\"ab"), ("Unterminated string starting at", 0));
        assert_eq!(err("\"\\x\""), ("Invalid \\escape", 1));
        assert_eq!(err("\"\\u12x4\""), ("Invalid \\uXXXX escape", 2));
        assert_eq!(err("NaN"), ("Expecting value", 0));
        assert_eq!(err("-"), ("Expecting value", 0));
        assert_eq!(err("\"é\" x"), ("Extra data", 4));
    }

    #[test]
    fn many_keys_stay_cheap() {
        let body: String = std::iter::once("{".to_string())
            .chain((0..200_000).map(|k| format!("\"k{k}\":{k},")))
            .chain(std::iter::once("\"k0\":-1}".to_string()))
            .collect();
        let Json::Object(fields) = decode(body.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(fields.len(), 200_000);
        assert_eq!(fields[0].1, Json::Int(-1));
    }

    #[test]
    fn unreadable_bodies() {
        assert_eq!(decode(b"\"\xff\""), Err(DecodeError::Unreadable));
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert_eq!(decode(deep.as_bytes()), Err(DecodeError::Unreadable));
        assert!(decode(b"\xEF\xBB\xBF{}").is_ok());
    }
}
