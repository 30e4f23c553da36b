//! Every boundary of every field of `POST /v1/flux-pro-finetuned`, on both sides, as a readable
//! table (the exact messages are proven against pydantic by `tests/reference.rs`).

#![allow(clippy::unwrap_used)]

use fluxd_api::{
    parse_delete_finetune_request, parse_finetuned_request, FinetunedRequest, OutputFormat,
    RequestError,
};
use serde_json::{json, Value};

/// Parses `{"finetune_id": "ft", <field>: <value>}`; Ok(request) or the error types reported.
fn with(field: &str, value: Value) -> Result<FinetunedRequest, Vec<String>> {
    let body = json!({"finetune_id": "ft", field: value});
    match parse_finetuned_request(body.to_string().as_bytes()) {
        Ok(req) => Ok(req),
        Err(RequestError::Invalid(e)) => Err(e.detail.into_iter().map(|e| e.kind).collect()),
        Err(other) => panic!("unexpected {other:?}"),
    }
}

/// `None`: accepted. `Some(kind)`: rejected with exactly that one error at `["body", field]`.
fn check(field: &str, cases: &[(Value, Option<&str>)]) {
    for (value, want) in cases {
        match (with(field, value.clone()), want) {
            (Ok(_), None) => {}
            (Err(kinds), Some(kind)) => {
                assert_eq!(kinds, vec![kind.to_string()], "{field}={value}")
            }
            (got, _) => panic!("{field}={value}: expected {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn steps() {
    check(
        "steps",
        &[
            (json!(0), Some("greater_than_equal")),
            (json!(1), None),
            (json!(50), None),
            (json!(51), Some("less_than_equal")),
            (json!(40.0), None),
            (json!(40.5), Some("int_from_float")),
            (json!("40"), None),
            (json!("abc"), Some("int_parsing")),
            (json!(true), None),
            (json!(null), Some("int_type")),
        ],
    );
    assert_eq!(with("steps", json!("7")).unwrap().steps, 7);
}

#[test]
fn width_and_height() {
    for side in ["width", "height"] {
        check(
            side,
            &[
                (json!(224), Some("greater_than_equal")),
                (json!(256), None),
                (json!(1440), None),
                (json!(1472), Some("less_than_equal")),
                (json!(1000), Some("multiple_of")),
                (json!(1441), Some("multiple_of")),
            ],
        );
    }
}

#[test]
fn guidance_and_strength() {
    check(
        "guidance",
        &[
            (json!(1.49), Some("greater_than_equal")),
            (json!(1.5), None),
            (json!(5), None),
            (json!(5.01), Some("less_than_equal")),
            (json!("2.5"), None),
            (json!("x"), Some("float_parsing")),
            (json!(null), Some("float_type")),
        ],
    );
    check(
        "finetune_strength",
        &[
            (json!(-0.01), Some("greater_than_equal")),
            (json!(0), None),
            (json!(2), None),
            (json!(2.01), Some("less_than_equal")),
        ],
    );
}

#[test]
fn safety_tolerance() {
    for v in 0..=6 {
        assert_eq!(
            with("safety_tolerance", json!(v)).unwrap().safety_tolerance,
            v as u8
        );
    }
    check(
        "safety_tolerance",
        &[
            (json!(-1), Some("greater_than_equal")),
            (json!(7), Some("less_than_equal")),
        ],
    );
}

#[test]
fn output_format() {
    assert_eq!(
        with("output_format", json!("png")).unwrap().output_format,
        OutputFormat::Png
    );
    assert_eq!(
        with("output_format", json!("jpeg")).unwrap().output_format,
        OutputFormat::Jpeg
    );
    check(
        "output_format",
        &[
            (json!("gif"), Some("enum")),
            (json!("JPEG"), Some("enum")),
            (json!(null), Some("enum")),
        ],
    );
}

#[test]
fn webhook_url() {
    let tail = |n: usize| format!("https://e.com/{}", "a".repeat(n - 14));
    check(
        "webhook_url",
        &[
            (json!(""), Some("url_parsing")),
            (json!(tail(2083)), None),
            (json!(tail(2084)), Some("url_too_long")),
            (json!("not a url"), Some("url_parsing")),
            (json!("ftp://x"), Some("url_scheme")),
            (json!(5), Some("url_type")),
            (json!(null), None),
        ],
    );
    assert_eq!(
        with("webhook_url", json!("http://x"))
            .unwrap()
            .webhook_url
            .as_deref(),
        Some("http://x/")
    );
}

#[test]
fn seed_bool_and_strings() {
    check(
        "seed",
        &[
            (json!(null), None),
            (json!(-1), Some("greater_than_equal")),
            (json!(u64::MAX), None),
            (json!("42"), None),
            (json!(1.5), Some("int_from_float")),
        ],
    );
    assert_eq!(with("seed", json!("42")).unwrap().seed, Some(42));
    check(
        "prompt_upsampling",
        &[
            (json!("yes"), None),
            (json!("off"), None),
            (json!(1), None),
            (json!(2), Some("bool_parsing")),
            (json!(null), Some("bool_type")),
        ],
    );
    check(
        "prompt",
        &[
            (json!(5), Some("string_type")),
            (json!(null), Some("string_type")),
        ],
    );
    check(
        "image_prompt",
        &[(json!(null), None), (json!(5), Some("string_type"))],
    );
}

#[test]
fn defaults_and_unknown_fields() {
    let req =
        parse_finetuned_request(br#"{"finetune_id":"ft","model":"x","extra":[1,{}]}"#).unwrap();
    assert_eq!(req.finetune_strength, 1.1);
    assert_eq!(
        (req.steps, req.guidance, req.width, req.height),
        (40, 2.5, 1024, 768)
    );
    assert_eq!(
        (req.safety_tolerance, req.output_format),
        (2, OutputFormat::Jpeg)
    );
    assert_eq!(
        (req.prompt.as_str(), req.prompt_upsampling, req.seed),
        ("", false, None)
    );
    // The validated request round-trips through serde (as the store keeps it).
    let back: FinetunedRequest =
        serde_json::from_value(serde_json::to_value(&req).unwrap()).unwrap();
    assert_eq!(back, req);
    let sparse: FinetunedRequest = serde_json::from_str(r#"{"finetune_id":"ft"}"#).unwrap();
    assert_eq!(sparse, req);
}

#[test]
fn several_errors_at_once_in_field_order() {
    let body = br#"{"steps": 0, "width": 1000, "output_format": "gif", "guidance": 9}"#;
    let Err(RequestError::Invalid(e)) = parse_finetuned_request(body) else {
        panic!()
    };
    let got: Vec<(String, Value)> = e
        .detail
        .iter()
        .map(|e| (e.kind.clone(), json!(e.loc)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("missing".into(), json!(["body", "finetune_id"])),
            ("greater_than_equal".into(), json!(["body", "steps"])),
            ("less_than_equal".into(), json!(["body", "guidance"])),
            ("multiple_of".into(), json!(["body", "width"])),
            ("enum".into(), json!(["body", "output_format"])),
        ]
    );
    assert_eq!(
        e.detail[0].input,
        json!({"steps": 0, "width": 1000, "output_format": "gif", "guidance": 9})
    );
}

#[test]
fn body_level_errors() {
    let err = parse_finetuned_request(br#"{"finetune_id": "x",}"#).unwrap_err();
    assert_eq!(err.status(), 422);
    assert_eq!(
        err.body(),
        json!({"detail": [{"type": "json_invalid", "loc": ["body", 20],
        "msg": "JSON decode error", "input": {},
        "ctx": {"error": "Expecting property name enclosed in double quotes"}}]})
    );
    let err = parse_finetuned_request(b"[1]").unwrap_err();
    assert_eq!(
        err.body()["detail"][0]["type"],
        json!("model_attributes_type")
    );
    let err = parse_finetuned_request(b"").unwrap_err();
    assert_eq!(
        err.body(),
        json!({"detail": [{"type": "missing", "loc": ["body"], "msg": "Field required", "input": null}]})
    );
    let err = parse_finetuned_request(b"{\"finetune_id\": \"\xff\"}").unwrap_err();
    assert_eq!(
        (err.status(), err.body()),
        (
            400,
            json!({"detail": "There was an error parsing the body"})
        )
    );
    assert_eq!(
        parse_delete_finetune_request(br#"{"finetune_id":"a"}"#)
            .unwrap()
            .finetune_id,
        "a"
    );
    assert_eq!(
        parse_delete_finetune_request(b"{}").unwrap_err().body()["detail"][0]["type"],
        json!("missing")
    );
}
