//! Replays the reference stack's answers (FastAPI + pydantic v2, recorded by
//! `tests/pydantic_reference.py` into `tests/fixtures/pydantic_reference.json`) against our parsers:
//! the same body must give the same validated values or exactly the same `detail` list, for every
//! generation endpoint's schema.

#![allow(clippy::unwrap_used)]

use fluxd_api::{
    parse_delete_finetune_request, parse_finetuned_request, parse_flux_dev_request,
    parse_flux_pro_1_1_request, parse_flux_pro_request, parse_ultra_finetuned_request,
    parse_ultra_request, Endpoint, RequestError,
};
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

fn cases(name: &str) -> Vec<Value> {
    let fixture: Value = serde_json::from_str(FIXTURE).unwrap();
    fixture[name].as_array().unwrap().clone()
}

#[test]
fn flux_dev_request_matches_fastapi_pydantic() {
    assert!(replay(&cases("flux_dev"), parse_flux_dev_request) > 60);
}

#[test]
fn flux_pro_request_matches_fastapi_pydantic() {
    assert!(replay(&cases("flux_pro"), parse_flux_pro_request) > 60);
}

#[test]
fn flux_pro_1_1_request_matches_fastapi_pydantic() {
    assert!(replay(&cases("flux_pro_1_1"), parse_flux_pro_1_1_request) > 50);
}

#[test]
fn ultra_request_matches_fastapi_pydantic() {
    assert!(replay(&cases("ultra"), parse_ultra_request) > 70);
}

#[test]
fn ultra_finetuned_request_matches_fastapi_pydantic() {
    assert!(replay(&cases("ultra_finetuned"), parse_ultra_finetuned_request) > 70);
}

/// The endpoint dispatch parses each endpoint's bodies with that endpoint's own schema.
#[test]
fn endpoints_parse_with_their_own_schema() {
    let all = [
        (Endpoint::FluxProFinetuned, "finetuned"),
        (Endpoint::FluxDev, "flux_dev"),
        (Endpoint::FluxPro, "flux_pro"),
        (Endpoint::FluxPro11, "flux_pro_1_1"),
        (Endpoint::FluxPro11Ultra, "ultra"),
        (Endpoint::FluxPro11UltraFinetuned, "ultra_finetuned"),
    ];
    for (endpoint, name) in all {
        let n = replay(&cases(name), |body| endpoint.parse(body));
        assert!(n > 50, "{endpoint:?}");
    }
}
