//! The document's shape, its schemas and the checked-in copy.

use super::*;
use serde_json::{json, Value};

fn doc() -> Value {
    serde_json::to_value(openapi()).unwrap()
}

#[test]
fn request_schema_matches_the_reference_page() {
    let doc = doc();
    let req = &doc["components"]["schemas"]["FinetunedRequest"];
    assert_eq!(req["required"], json!(["finetune_id"]));
    let p = &req["properties"];
    assert_eq!(p["finetune_strength"]["default"], json!(1.1));
    assert_eq!(p["finetune_strength"]["minimum"].as_f64(), Some(0.0));
    assert_eq!(p["finetune_strength"]["maximum"].as_f64(), Some(2.0));
    assert_eq!(p["steps"]["default"], json!(40));
    assert_eq!(p["steps"]["minimum"], json!(1));
    assert_eq!(p["steps"]["maximum"], json!(50));
    assert_eq!(p["guidance"]["minimum"].as_f64(), Some(1.5));
    assert_eq!(p["guidance"]["maximum"].as_f64(), Some(5.0));
    assert_eq!(p["width"]["multipleOf"], json!(32));
    assert_eq!(p["height"]["default"], json!(768));
    assert_eq!(p["height"]["maximum"], json!(1440));
    assert_eq!(p["safety_tolerance"]["maximum"], json!(6));
    assert_eq!(p["webhook_url"]["maxLength"], json!(2083));
    assert_eq!(p["webhook_url"]["minLength"], json!(1));
    assert_eq!(p["webhook_url"]["format"], json!("uri"));
    assert_eq!(p["prompt"]["default"], json!(""));
    let formats = &doc["components"]["schemas"]["OutputFormat"]["enum"];
    assert_eq!(formats, &json!(["jpeg", "png"]));
    let statuses = &doc["components"]["schemas"]["TaskStatus"]["enum"];
    assert_eq!(
        statuses,
        &json!([
            "Task not found",
            "Pending",
            "Request Moderated",
            "Content Moderated",
            "Ready",
            "Error"
        ])
    );
}

#[test]
fn endpoints_and_security() {
    let doc = doc();
    assert_eq!(
        doc["components"]["securitySchemes"]["x-key"],
        json!({"type":"apiKey","in":"header","name":"x-key","description":"Your API key."})
    );
    let mut authed: Vec<(String, &str)> = Endpoint::all().map(|e| (e.path(), "post")).collect();
    authed.extend(
        [
            ("/v1/get_result", "get"),
            ("/v1/my_finetunes", "get"),
            ("/v1/finetune_details", "get"),
            ("/v1/delete_finetune", "post"),
            ("/v1/finetunes", "post"),
            ("/v1/cancel", "post"),
            ("/v1/credits", "get"),
        ]
        .map(|(p, m)| (p.to_owned(), m)),
    );
    for (path, method) in &authed {
        let op = &doc["paths"][path.as_str()][method];
        assert_eq!(op["security"], json!([{"x-key": []}]), "{path}");
        assert!(op["responses"]["200"].is_object(), "{path}");
        assert!(op["responses"]["403"].is_object(), "{path}");
        let takes_input = path != "/v1/my_finetunes" && path != "/v1/credits";
        assert_eq!(op["responses"]["422"].is_object(), takes_input, "{path}");
    }
    for e in Endpoint::all() {
        let responses = &doc["paths"][e.path().as_str()]["post"]["responses"];
        for code in ["400", "402", "413", "429", "503"] {
            assert!(responses[code].is_object(), "{e:?} {code}");
        }
        let finetuned = e.spec().finetune_strength.is_some();
        assert_eq!(responses["404"].is_object(), finetuned, "{e:?}");
    }
    for name in crate::UNSERVED_ENDPOINTS {
        assert!(doc["paths"][format!("/v1/{name}")].is_null(), "{name}");
    }
    for (path, method) in [
        ("/v1/images/{file}", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        let op = &doc["paths"][path][method];
        assert!(op["responses"]["200"].is_object(), "{path}");
        assert!(op["security"].is_null(), "{path} needs no key");
    }
    // Every response of every operation documents x-request-id, and every operation takes it.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let params = op["parameters"].as_array().unwrap();
            assert!(
                params
                    .iter()
                    .any(|p| p["name"] == "x-request-id" && p["in"] == "header"),
                "{method} {path}"
            );
            for (code, response) in op["responses"].as_object().unwrap() {
                assert!(
                    response["headers"]["x-request-id"].is_object(),
                    "{method} {path} {code}"
                );
            }
        }
    }
    assert_eq!(
        doc["paths"]["/v1/get_result"]["get"]["parameters"][0]["name"],
        json!("id")
    );
    let cancel = &doc["paths"]["/v1/cancel"]["post"]["responses"];
    for code in ["404", "409"] {
        assert!(cancel[code].is_object(), "cancel {code}");
    }
}

#[test]
fn new_endpoint_schemas() {
    let doc = doc();
    let s = &doc["components"]["schemas"];
    let dev = &s["FluxDevRequest"]["properties"];
    assert_eq!(dev["steps"]["default"], json!(28));
    assert_eq!(dev["guidance"]["default"], json!(3.0));
    assert_eq!(
        s["FluxProRequest"]["properties"]["interval"]["maximum"].as_f64(),
        Some(4.0)
    );
    assert!(s["FluxPro11Request"]["properties"]["steps"].is_null());
    let ultra = &s["UltraRequest"]["properties"];
    assert_eq!(ultra["aspect_ratio"]["default"], json!("16:9"));
    assert_eq!(ultra["image_prompt_strength"]["default"], json!(0.1));
    assert_eq!(ultra["raw"]["default"], json!(false));
    let uft = &s["UltraFinetunedRequest"];
    assert_eq!(uft["required"], json!(["finetune_id"]));
    assert_eq!(
        uft["properties"]["finetune_strength"]["default"],
        json!(1.2)
    );
    assert!(uft["properties"]["raw"].is_null());
}

#[test]
fn document_is_stable() {
    let a = serde_json::to_string_pretty(&openapi()).unwrap();
    let b = serde_json::to_string_pretty(&openapi()).unwrap();
    assert_eq!(a, b);
    // Every `$ref` points at a schema the document defines.
    let doc: Value = serde_json::from_str(&a).unwrap();
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let name = r.trim_start_matches("#/components/schemas/");
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling {r}"
        );
    }
}

/// The checked-in `openapi.json` is what the code generates. After an intended change,
/// regenerate it with `FLUXD_UPDATE_OPENAPI=1 cargo test -p fluxd-api openapi` and review the
/// diff.
#[test]
fn checked_in_document_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    let generated = openapi_json().unwrap();
    if std::env::var_os("FLUXD_UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{path} is stale: run FLUXD_UPDATE_OPENAPI=1 cargo test -p fluxd-api openapi"
    );
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref" {
                    out.extend(v.as_str().map(str::to_owned));
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}
