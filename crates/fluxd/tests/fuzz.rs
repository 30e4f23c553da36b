//! A schema-driven fuzz run against the real binary: schemathesis (pinned, from PyPI) reads the
//! server's own `/openapi.json` and sends generated requests, valid and invalid, to every
//! operation for a bounded time. It fails on any 5xx and on any response the document does not
//! describe: an undocumented status, content type or header, or a body off its schema.

mod common;

use std::process::Command;

use common::*;

/// Seconds of fuzzing: the whole run stays within a minute or two on CI's 2 cores.
const BUDGET_SECS: &str = "60";

#[test]
fn schemathesis_finds_no_server_error_and_no_response_off_the_document() {
    // Hypothesis pinned too: schemathesis's own pin allows a range.
    let python = python_with(&["schemathesis==4.32.5", "hypothesis==6.170.29"]);
    let data = scratch("fuzz");
    // A key with room for every task the fuzzer queues: with no worker they stay queued, so
    // valid submits keep reaching the store instead of all becoming 429s.
    let key = create_key_with_limit(&data, "acme", 1_000_000);
    import_lora(&data, "acme", "my-finetune", &[]);
    let redux = data.join("tiny-model/redux");
    let server = Server::start(
        &data,
        &[
            "--no-worker",
            "--max-active-tasks",
            "1000000",
            // Image prompts are decoded and checked at submit: fuzz that path too.
            "--redux-model",
            s(&redux),
        ],
    );
    let report = data.join("schemathesis.xml");
    // Its command-line entry point, called through the venv's interpreter (the venv was built
    // under another name, so its scripts' `#!` lines point elsewhere).
    let run = Command::new(&python)
        .args([
            "-c",
            "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
            "run",
        ])
        .arg(format!("{}/openapi.json", server.base))
        .args(["--header", &format!("x-key: {key}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
        ])
        // One worker: hypothesis parses lambdas' source with `ast.parse`, which CPython 3.11
        // can fail from two threads at once ("AST constructor recursion depth mismatch").
        .args(["--max-time", BUDGET_SECS, "--seed", "7", "--workers", "1"])
        .args(["--request-timeout", "30", "--suppress-health-check", "all"])
        .args(["--report", "junit", "--report-junit-path", s(&report)])
        // The same cases every run (the seed), nothing written into the source tree.
        .args(["--generation-database", "none"])
        .current_dir(&data)
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}");
    assert!(
        run.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
}
