//! pydantic v2 lax-mode coercion of JSON input, one function per field type.
//!
//! Follows pydantic's "Conversion Table" for JSON input and pydantic-core's validators
//! (`input_json.rs`, `shared.rs`: `str_as_int`, `strip_decimal_zeros`; `url.rs`), checked case by
//! case against pydantic 2.14.4 by `tests/pydantic_reference.py`. Constraint checks run in
//! pydantic-core's order (multiple_of, le, ge) and report only the first that fails.

use serde_json::{Map, Number, Value};

use crate::json::Json;

/// A field-level failure: pydantic's type, message and context, without `loc`/`input`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fault {
    pub kind: &'static str,
    pub msg: String,
    pub ctx: Option<Map<String, Value>>,
}

impl Fault {
    fn new(kind: &'static str, msg: &str) -> Self {
        Fault {
            kind,
            msg: msg.to_owned(),
            ctx: None,
        }
    }

    fn with_ctx(kind: &'static str, msg: String, key: &str, value: Value) -> Self {
        let mut ctx = Map::new();
        ctx.insert(key.to_owned(), value);
        Fault {
            kind,
            msg,
            ctx: Some(ctx),
        }
    }
}

/// A numeric bound as the model declares it: integer fields keep integer bounds; float fields
/// hold float bounds (pydantic puts `5.0` in `ctx` yet prints "5" in the message).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Bound {
    Int(i128),
    Float(f64),
}

impl Bound {
    fn as_f64(self) -> f64 {
        match self {
            Bound::Int(i) => i as f64,
            Bound::Float(f) => f,
        }
    }

    fn ctx(self) -> Value {
        match self {
            Bound::Int(i) => i64::try_from(i)
                .map(Value::from)
                .or_else(|_| u64::try_from(i).map(Value::from))
                .unwrap_or(Value::Null),
            Bound::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        }
    }

    fn text(self) -> String {
        match self {
            Bound::Int(i) => i.to_string(),
            // Rust prints 5.0 as "5" and 1.5 as "1.5", which is what pydantic's message shows.
            Bound::Float(f) => f.to_string(),
        }
    }
}

/// Inclusive range and step of a numeric field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Range {
    pub ge: Option<Bound>,
    pub le: Option<Bound>,
    pub multiple_of: Option<i128>,
}

fn too_small(ge: Bound) -> Fault {
    Fault::with_ctx(
        "greater_than_equal",
        format!("Input should be greater than or equal to {}", ge.text()),
        "ge",
        ge.ctx(),
    )
}

fn too_large(le: Bound) -> Fault {
    Fault::with_ctx(
        "less_than_equal",
        format!("Input should be less than or equal to {}", le.text()),
        "le",
        le.ctx(),
    )
}

/// pydantic lax `int` from JSON, then the field's constraints.
pub(crate) fn int(input: &Json, range: Range) -> Result<i128, Fault> {
    let value = match input {
        Json::Bool(b) => i128::from(*b),
        Json::Int(i) => *i,
        Json::Float(f) => int_from_float(*f)?,
        Json::Str(s) => int_from_str(s)?,
        Json::Null | Json::Array(_) | Json::Object(_) => {
            return Err(Fault::new("int_type", "Input should be a valid integer"))
        }
    };
    if let Some(m) = range.multiple_of {
        if value % m != 0 {
            return Err(Fault::with_ctx(
                "multiple_of",
                format!("Input should be a multiple of {m}"),
                "multiple_of",
                Bound::Int(m).ctx(),
            ));
        }
    }
    if let Some(le) = range.le {
        let over = match le {
            Bound::Int(b) => value > b,
            Bound::Float(b) => value as f64 > b,
        };
        if over {
            return Err(too_large(le));
        }
    }
    if let Some(ge) = range.ge {
        let under = match ge {
            Bound::Int(b) => value < b,
            Bound::Float(b) => (value as f64) < b,
        };
        if under {
            return Err(too_small(ge));
        }
    }
    Ok(value)
}

fn int_from_float(f: f64) -> Result<i128, Fault> {
    if !f.is_finite() {
        return Err(Fault::new(
            "finite_number",
            "Input should be a finite number",
        ));
    }
    if f.fract() != 0.0 {
        return Err(Fault::new(
            "int_from_float",
            "Input should be a valid integer, got a number with a fractional part",
        ));
    }
    // pydantic-core converts floats through i64 and gives up beyond it.
    if !(-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f) {
        return Err(Fault::new(
            "int_parsing_size",
            "Unable to parse input string as an integer, exceeded maximum size",
        ));
    }
    Ok(f as i128)
}

fn int_from_str(s: &str) -> Result<i128, Fault> {
    let s = s.trim();
    // pydantic-core refuses to parse longer digit strings (CPython's int max_str_digits is 4300).
    if s.len() > 4300 {
        return Err(Fault::new(
            "int_parsing_size",
            "Unable to parse input string as an integer, exceeded maximum size",
        ));
    }
    parse_int_literal(s)
        .or_else(|| strip_decimal_zeros(s).and_then(parse_int_literal))
        .ok_or_else(|| {
            Fault::new(
                "int_parsing",
                "Input should be a valid integer, unable to parse string as an integer",
            )
        })
}

/// `"40.000"` → `"40"`: pydantic accepts integers written with a zero fraction.
fn strip_decimal_zeros(s: &str) -> Option<&str> {
    let (whole, frac) = s.split_once('.')?;
    (!frac.is_empty() && frac.bytes().all(|c| c == b'0')).then_some(whole)
}

/// `[+-]?digits` with single underscores between digits (Python's `int()` literal rules, ASCII
/// digits only), saturating at the `i128` bounds.
fn parse_int_literal(s: &str) -> Option<i128> {
    let (neg, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let bytes = digits.as_bytes();
    if bytes.is_empty() || !bytes[0].is_ascii_digit() || !bytes[bytes.len() - 1].is_ascii_digit() {
        return None;
    }
    let mut v: i128 = 0;
    let mut prev_underscore = false;
    for &c in bytes {
        if c == b'_' {
            if prev_underscore {
                return None;
            }
            prev_underscore = true;
            continue;
        }
        if !c.is_ascii_digit() {
            return None;
        }
        prev_underscore = false;
        let d = i128::from(c - b'0');
        v = v.saturating_mul(10);
        v = if neg {
            v.saturating_sub(d)
        } else {
            v.saturating_add(d)
        };
    }
    Some(v)
}

/// pydantic lax `float` from JSON (inf and nan allowed, as pydantic's default), then constraints.
pub(crate) fn float(input: &Json, range: Range) -> Result<f64, Fault> {
    let value = match input {
        Json::Bool(b) => f64::from(u8::from(*b)),
        Json::Int(i) => *i as f64,
        Json::Float(f) => *f,
        Json::Str(s) => float_from_str(s).ok_or_else(|| {
            Fault::new(
                "float_parsing",
                "Input should be a valid number, unable to parse string as a number",
            )
        })?,
        Json::Null | Json::Array(_) | Json::Object(_) => {
            return Err(Fault::new("float_type", "Input should be a valid number"))
        }
    };
    // "Not within" rather than "beyond", so that NaN fails `le` first, as in pydantic-core.
    if let Some(le) = range.le {
        if value.partial_cmp(&le.as_f64()).is_none_or(|o| o.is_gt()) {
            return Err(too_large(le));
        }
    }
    if let Some(ge) = range.ge {
        if value.partial_cmp(&ge.as_f64()).is_none_or(|o| o.is_lt()) {
            return Err(too_small(ge));
        }
    }
    Ok(value)
}

fn float_from_str(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.contains('_') {
        // Python float() syntax: underscores only between digits.
        let b = s.as_bytes();
        let ok = b.iter().enumerate().all(|(i, &c)| {
            c != b'_'
                || (i > 0
                    && i + 1 < b.len()
                    && b[i - 1].is_ascii_digit()
                    && b[i + 1].is_ascii_digit())
        });
        if !ok {
            return None;
        }
        return s.replace('_', "").parse().ok();
    }
    // Rust's grammar matches Python's float(): optional sign, "inf"/"infinity"/"nan" in any
    // case, "2.", ".5", exponents.
    s.parse().ok()
}

/// pydantic lax `bool` from JSON.
pub(crate) fn boolean(input: &Json) -> Result<bool, Fault> {
    let unparsable = || {
        Fault::new(
            "bool_parsing",
            "Input should be a valid boolean, unable to interpret input",
        )
    };
    let wrong_type = || Fault::new("bool_type", "Input should be a valid boolean");
    match input {
        Json::Bool(b) => Ok(*b),
        Json::Int(0) => Ok(false),
        Json::Int(1) => Ok(true),
        // pydantic-core reads JSON numbers as i64 first: other i64 values are "unable to
        // interpret", wider ones (big ints) are not numbers it would interpret at all.
        Json::Int(i) if i64::try_from(*i).is_ok() => Err(unparsable()),
        Json::Float(f) if *f == 0.0 => Ok(false),
        Json::Float(f) if *f == 1.0 => Ok(true),
        // A float without fraction is read as an int; one with a fraction is no boolean.
        Json::Float(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Err(unparsable()),
        Json::Str(s) => match s.to_ascii_lowercase().as_str() {
            "0" | "off" | "f" | "false" | "n" | "no" => Ok(false),
            "1" | "on" | "t" | "true" | "y" | "yes" => Ok(true),
            _ => Err(unparsable()),
        },
        Json::Int(_) | Json::Float(_) | Json::Null | Json::Array(_) | Json::Object(_) => {
            Err(wrong_type())
        }
    }
}

/// pydantic `str` from JSON: only strings (numbers are not coerced).
pub(crate) fn string(input: &Json) -> Result<String, Fault> {
    match input {
        Json::Str(s) => Ok(s.clone()),
        _ => Err(Fault::new("string_type", "Input should be a valid string")),
    }
}

/// A string enum: the input must equal one of `values` exactly.
pub(crate) fn one_of<'v>(input: &Json, values: &[&'v str]) -> Result<&'v str, Fault> {
    if let Json::Str(s) = input {
        if let Some(v) = values.iter().find(|v| **v == s.as_str()) {
            return Ok(v);
        }
    }
    let quoted: Vec<String> = values.iter().map(|v| format!("'{v}'")).collect();
    let expected = match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    Err(Fault::with_ctx(
        "enum",
        format!("Input should be {expected}"),
        "expected",
        Value::String(expected.clone()),
    ))
}

/// pydantic's `HttpUrl` (at most 2083 characters, http or https); returns the normalised URL as
/// pydantic serialises it (`http://x` → `http://x/`).
pub(crate) fn http_url(input: &Json) -> Result<String, Fault> {
    const MAX: usize = 2083;
    let Json::Str(s) = input else {
        return Err(Fault::new(
            "url_type",
            "URL input should be a string or URL",
        ));
    };
    if s.chars().count() > MAX {
        return Err(Fault::with_ctx(
            "url_too_long",
            format!("URL should have at most {MAX} characters"),
            "max_length",
            Value::from(MAX),
        ));
    }
    let parse_error = |reason: String| {
        Fault::with_ctx(
            "url_parsing",
            format!("Input should be a valid URL, {reason}"),
            "error",
            Value::String(reason),
        )
    };
    if s.is_empty() {
        return Err(parse_error("input is empty".into()));
    }
    let url = url::Url::parse(s).map_err(|e| parse_error(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Fault::with_ctx(
            "url_scheme",
            "URL scheme should be 'http' or 'https'".into(),
            "expected_schemes",
            Value::String("'http' or 'https'".into()),
        ));
    }
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: Range = Range {
        ge: Some(Bound::Int(1)),
        le: Some(Bound::Int(50)),
        multiple_of: None,
    };

    #[test]
    fn int_strings() {
        for (s, want) in [
            ("40", Some(40)),
            (" 40 ", Some(40)),
            ("+40", Some(40)),
            ("4_0", Some(40)),
            ("40.00", Some(40)),
            ("40.", None),
            ("0040", Some(40)),
            ("-0", Some(0)),
            ("4__0", None),
            ("40_", None),
            ("_40", None),
            ("+ 40", None),
            ("4e1", None),
            ("40.5", None),
            ("", None),
            ("\u{661}", None),
        ] {
            assert_eq!(
                parse_int_literal(s.trim())
                    .or_else(|| strip_decimal_zeros(s.trim()).and_then(parse_int_literal)),
                want,
                "{s:?}"
            );
        }
    }

    #[test]
    fn int_constraints_order() {
        let width = Range {
            ge: Some(Bound::Int(256)),
            le: Some(Bound::Int(1440)),
            multiple_of: Some(32),
        };
        assert_eq!(
            int(&Json::Int(1441), width).unwrap_err().kind,
            "multiple_of"
        );
        assert_eq!(
            int(&Json::Int(1472), width).unwrap_err().kind,
            "less_than_equal"
        );
        assert_eq!(
            int(&Json::Int(224), width).unwrap_err().kind,
            "greater_than_equal"
        );
        assert_eq!(int(&Json::Bool(true), STEPS), Ok(1));
        assert_eq!(
            int(&Json::Float(1e19), STEPS).unwrap_err().kind,
            "int_parsing_size"
        );
        assert_eq!(
            int(&Json::Float(f64::NAN), STEPS).unwrap_err().kind,
            "finite_number"
        );
    }

    #[test]
    fn float_messages_print_bounds_like_pydantic() {
        let r = Range {
            ge: Some(Bound::Float(1.5)),
            le: Some(Bound::Float(5.0)),
            multiple_of: None,
        };
        let e = float(&Json::Float(5.01), r).unwrap_err();
        assert_eq!(e.msg, "Input should be less than or equal to 5");
        assert_eq!(serde_json::to_string(&e.ctx).unwrap(), r#"{"le":5.0}"#);
        let e = float(&Json::Str("nan".into()), r).unwrap_err();
        assert_eq!(e.kind, "less_than_equal");
        assert_eq!(
            float(&Json::Str("1_0.5".into()), Range { le: None, ..r }),
            Ok(10.5)
        );
    }

    #[test]
    fn enum_expected_text() {
        let e = one_of(&Json::Str("gif".into()), &["jpeg", "png"]).unwrap_err();
        assert_eq!(e.msg, "Input should be 'jpeg' or 'png'");
        let e = one_of(&Json::Null, &["a", "b", "c"]).unwrap_err();
        assert_eq!(e.msg, "Input should be 'a', 'b' or 'c'");
    }
}
