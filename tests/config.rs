//! Envoy refuses a bad filter configuration at startup with one error line naming the key, and
//! every Envoy YAML the project ships passes `envoy --mode validate`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

fn refused(config: &str) -> String {
    match Envoy::try_start(EnvoyOpts {
        upstream: free_port(),
        audit: free_port(),
        filter: Some(config),
        workers: 1,
    }) {
        Ok(_) => panic!("Envoy accepted the bad configuration {config}"),
        Err(log) => log,
    }
}

fn the_error_line(log: &str) -> &str {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("truthtable: invalid configuration"))
        .collect();
    assert!(
        !lines.is_empty(),
        "no configuration error in the log:\n{log}"
    );
    lines[0]
}

#[test]
fn each_invalid_configuration_is_refused_with_a_line_naming_the_key() {
    for (config, key, problem) in [
        (r#"{}"#, "audit_cluster", "missing field"),
        // What Istio sends for a WasmPlugin without pluginConfig, Envoy Gateway for no config.
        ("", "audit_cluster", "the configuration is empty"),
        (
            r#"{"audit_cluster": "truthtable_audit", "max_body_bytes": 1048576.5}"#,
            "max_body_bytes",
            "1048576.5 is not an integer",
        ),
        (r#"{"audit_cluster": 7}"#, "audit_cluster", "invalid type"),
        (
            r#"{"audit_cluster": "truthtable_audit", "max_body_bytes": "lots"}"#,
            "max_body_bytes",
            "\"lots\"",
        ),
        (
            r#"{"audit_cluster": "truthtable_audit", "max_body_byte": 1}"#,
            "max_body_byte",
            "unknown field",
        ),
        (
            r#"{"audit_cluster": "truthtable_audit", "audit_timeout_ms": 0}"#,
            "audit_timeout_ms",
            "out of range",
        ),
        (
            r#"{"audit_cluster": "truthtable_audit", "redact_headers": ["bad header"]}"#,
            "redact_headers[0]",
            "not a valid HTTP header name",
        ),
        (
            r#"audit_cluster: truthtable_audit"#,
            "configuration",
            "not valid JSON",
        ),
    ] {
        let log = refused(config);
        let line = the_error_line(&log);
        assert!(
            line.contains(&format!("invalid configuration: {key}: ")),
            "{config}: {line}"
        );
        assert!(line.contains(problem), "{config}: {line}");
    }
}

#[test]
fn every_shipped_envoy_yaml_validates_with_the_built_filter() {
    let wasm = wasm_path();
    let mut checked = 0;
    for dir in ["envoy", "bench", "deploy"] {
        let Ok(entries) = std::fs::read_dir(repo().join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if !matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            if !text.contains("static_resources") {
                continue; // not an Envoy bootstrap (compose, Istio manifests)
            }
            assert_envoy_validates(&path);
            checked += 1;
        }
    }
    assert!(checked >= 1, "found no Envoy YAML to validate");
    assert!(wasm.exists());
}

#[test]
fn envoy_takes_an_integer_written_as_a_float_or_in_exponent_form() {
    // Control planes and YAML tooling print integers these ways (a structured pluginConfig is a
    // google.protobuf.Struct, whose numbers are doubles).
    let config = filter_config(r#""max_body_bytes": 1.048576e6, "audit_timeout_ms": 2000.0"#);
    let envoy = Envoy::try_start(EnvoyOpts {
        upstream: free_port(),
        audit: free_port(),
        filter: Some(&config),
        workers: 1,
    });
    if let Err(log) = envoy {
        panic!("Envoy refused {config}:\n{log}");
    }
}
