//! Replays the reference stack's answers (FastAPI + pydantic v2, recorded by
//! `tests/pydantic_reference.py` into `tests/fixtures/pydantic_reference.json`) against our parsers:
//! the same body must give the same validated values or exactly the same `detail` list.

#![allow(clippy::unwrap_used)]

use fluxd_api::{parse_delete_finetune_request, parse_finetuned_request, RequestError};
use serde::Serialize;
use serde_json::Value;

const FIXTURE: &str = include_str!("fixtures/pydantic_reference.json");

fn replay<T: Serialize>(
    cases: &[Value],
    parse: impl Fn(&[u8]) -> Result<T, RequestError>,
) -> usize {
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?");
        let body = case["body"].as_str().expect("body is a string");
        let status = case["status"].as_u64().expect("status");
        let got = parse(body.as_bytes());
        let (got_status, got_body) = match &got {
            Ok(req) => (200, serde_json::to_value(req).unwrap()),
            Err(RequestError::Invalid(errors)) => {
                (422, serde_json::to_value(&errors.detail).unwrap())
            }
            Err(e) => (u64::from(e.status()), e.body()),
        };
        let want_body = if status == 200 {
            &case["ok"]
        } else {
            &case["detail"]
        };
        if got_status != status || &got_body != want_body {
            failures.push(format!(
                "{name}: body {body:.200}\n  want {status} {want_body:.600}\n  got  {got_status} {got_body:.600}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from the reference:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    cases.len()
}

#[test]
fn finetuned_request_matches_fastapi_pydantic() {
    let fixture: Value = serde_json::from_str(FIXTURE).unwrap();
    let cases = fixture["finetuned"].as_array().unwrap();
    assert!(replay(cases, parse_finetuned_request) > 200);
}

#[test]
fn delete_finetune_request_matches_fastapi_pydantic() {
    let fixture: Value = serde_json::from_str(FIXTURE).unwrap();
    let cases = fixture["delete_finetune"].as_array().unwrap();
    assert!(replay(cases, parse_delete_finetune_request) >= 8);
}
