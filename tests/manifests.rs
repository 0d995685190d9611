//! Every Kubernetes manifest under `deploy/` validates against the published schemas of its kind
//! (`scripts/validate-manifests`: Kubernetes' own, Istio's CRDs before and after 1.27, Gateway
//! API's, Envoy Gateway's, all closed to unknown fields), and a manifest with a wrong enum or a
//! misspelled field fails that check, naming the field.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::repo;
use std::process::{Command, Output};

fn validate(args: &[&str]) -> Output {
    let python = repo().join(".venv-schemas/bin/python");
    assert!(
        python.exists(),
        "no {} (scripts/setup makes it)",
        python.display()
    );
    Command::new(python)
        .arg(repo().join("scripts/validate-manifests"))
        .args(args)
        .output()
        .expect("run scripts/validate-manifests")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn every_shipped_manifest_validates_against_the_schemas_of_its_kind() {
    let out = validate(&[]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    for (file, kind, schema) in [
        (
            "deploy/istio/collector.yaml#1",
            "Deployment",
            "Kubernetes 1.37.0 (kubernetes-validate, strict)",
        ),
        (
            "deploy/istio/collector.yaml#2",
            "PodDisruptionBudget",
            "Kubernetes",
        ),
        (
            "deploy/istio/collector-sqlite.yaml#1",
            "PersistentVolumeClaim",
            "Kubernetes",
        ),
        (
            "deploy/istio/collector-sqlite.yaml#3",
            "Service",
            "Kubernetes",
        ),
        ("deploy/istio/collector.yaml#0", "Namespace", "Kubernetes"),
        (
            "deploy/istio/serviceentry-external.yaml#0",
            "ServiceEntry",
            "Istio 1.24.2 CRD",
        ),
        (
            "deploy/istio/wasmplugin-istio-1.20-1.26.yaml#0",
            "WasmPlugin",
            "Istio 1.24.2 CRD (cloudcoil-models-istio, closed), placeholder sha256 refused",
        ),
        (
            "deploy/istio/wasmplugin-istio-1.20-1.26.yaml#0",
            "WasmPlugin",
            "Istio CRD (@kubernetes-models/istio 3.0.1, closed)",
        ),
        (
            "deploy/istio/wasmplugin.yaml#0",
            "WasmPlugin",
            "FAIL_RELOAD refused as before Istio 1.27",
        ),
        (
            "deploy/istio/wasmplugin.yaml#0",
            "WasmPlugin",
            "Istio CRD (@kubernetes-models/istio 3.0.1, closed)",
        ),
        (
            "deploy/envoy-gateway/httproute.yaml#0",
            "HTTPRoute",
            "Gateway API CRD (@kubernetes-models/gateway-api 2.0.0, closed)",
        ),
        (
            "deploy/envoy-gateway/collector-route.yaml#0",
            "HTTPRoute",
            "Gateway API CRD (@kubernetes-models/gateway-api 2.0.0, closed)",
        ),
        (
            "deploy/envoy-gateway/envoyextensionpolicy.yaml#0",
            "EnvoyExtensionPolicy",
            "Envoy Gateway CRD (@kubernetes-models/envoy-gateway 2.0.0, closed)",
        ),
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(&format!("{file} {kind} "))
                    && l.contains(": valid against ")
                    && l.contains(schema)),
            "{file} {kind} is not reported valid against {schema}:\n{report}"
        );
    }
    // Every document is judged: none is left out as of a kind no schema covers, and such a kind
    // fails the check.
    assert!(!report.contains("no schema for"), "{report}");
    let dir = tempfile::tempdir().unwrap();
    let unknown = dir.path().join("unknown.yaml");
    std::fs::write(
        &unknown,
        "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SomethingElse\nmetadata: {name: x}\n",
    )
    .unwrap();
    let out = validate(&[unknown.to_str().unwrap()]);
    let report = text(&out);
    assert!(!out.status.success(), "{report}");
    assert!(
        report.contains(
            "SomethingElse x: INVALID: no schema for gateway.envoyproxy.io/v1alpha1 SomethingElse"
        ),
        "{report}"
    );
}

#[test]
fn a_wrong_enum_or_a_misspelled_field_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let broken = [
        (
            "deployment.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  replicass: 3\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers: [{name: c, image: i}]\n",
            vec!["'replicass' was unexpected"],
        ),
        (
            "service.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: [{port: 8081, protocoll: TCP}]\n",
            vec!["'protocoll' was unexpected"],
        ),
        (
            "wasmplugin.yaml",
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: w, namespace: n}\nspec:\n  url: oci://registry.example.com/f:1\n  failStrategy: FAIL_SOMETIMES\n  sha265: abc\n",
            vec![
                "'sha265' was unexpected",
                "spec/failStrategy: 'FAIL_SOMETIMES' is not valid",
                "(@kubernetes-models/istio 3.0.1, closed): data/spec/failStrategy must be equal to one of the allowed values",
                "(@kubernetes-models/istio 3.0.1, closed): data/spec must NOT have additional properties ('sha265' was unexpected)",
            ],
        ),
        (
            "wasmplugin-sha.yaml",
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: w, namespace: n}\nspec:\n  url: oci://registry.example.com/f:1\n  sha256: sha256:abc\n",
            vec!["spec/sha256"],
        ),
        (
            // Istio 1.27+ (FAIL_RELOAD): the current CRD, closed, refuses the misspelled field
            // and still admits any key in the free-form pluginConfig.
            "wasmplugin-current.yaml",
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: w, namespace: n}\nspec:\n  url: oci://registry.example.com/f:1\n  failStrategy: FAIL_RELOAD\n  imagePullPolicyy: Always\n  pluginConfig: {audit_cluster: c, any_key: {nested: 1}}\n",
            vec![
                "(@kubernetes-models/istio 3.0.1, closed): data/spec must NOT have additional properties ('imagePullPolicyy' was unexpected)",
            ],
        ),
        (
            "httproute-misspelled.yaml",
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: n}\nspec:\n  rules:\n  - backendRefs: [{name: s, port: 80, wieght: 1}]\n",
            vec![
                "(@kubernetes-models/gateway-api 2.0.0, closed): data/spec/rules/0/backendRefs/0 must NOT have additional properties ('wieght' was unexpected)",
            ],
        ),
        (
            // Envoy Gateway: a code.type that does not exist and a misspelled failOpen are named;
            // the free-form config keeps any key.
            "envoyextensionpolicy.yaml",
            "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: EnvoyExtensionPolicy\nmetadata: {name: p, namespace: n}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]\n  wasm:\n  - name: w\n    code: {type: Oci, image: {url: oci://registry.example.com/f:1}}\n    failOpn: true\n    config: {audit_cluster: c, any_key: {nested: 1}}\n",
            vec![
                "(@kubernetes-models/envoy-gateway 2.0.0, closed): data/spec/wasm/0/code/type must be equal to one of the allowed values",
                "(@kubernetes-models/envoy-gateway 2.0.0, closed): data/spec/wasm/0 must NOT have additional properties ('failOpn' was unexpected)",
            ],
        ),
        (
            "httproute.yaml",
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: n}\nspec:\n  rules:\n  - matches:\n    - path: {type: Prefix, value: /}\n",
            vec!["data/spec/rules/0/matches/0/path/type must be equal to one of the allowed values"],
        ),
    ];
    let mut paths = Vec::new();
    for (name, yaml, _) in &broken {
        let path = dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        paths.push(path.to_str().unwrap().to_owned());
    }
    // One run for all (the schemas take seconds to load), each file judged on its own lines.
    let out = validate(&paths.iter().map(String::as_str).collect::<Vec<_>>());
    let report = text(&out);
    assert!(!out.status.success(), "{report}");
    for ((name, _, wanted), path) in broken.iter().zip(&paths) {
        for w in wanted {
            assert!(
                report.lines().any(|l| l.starts_with(&format!("{path}#0 "))
                    && l.contains(": INVALID against ")
                    && l.contains(w)),
                "{name}: no INVALID line with {w:?}:\n{report}"
            );
        }
        assert!(
            !report
                .lines()
                .any(|l| l.starts_with(&format!("{path}#0 ")) && l.contains(": valid against ")),
            "{name}: a schema accepted it:\n{report}"
        );
    }
    // Closing stops where the published schema is open: the keys of a WasmPlugin's pluginConfig
    // and of an EnvoyExtensionPolicy's config are not refused.
    for key in ["'audit_cluster'", "'any_key'", "'nested'"] {
        assert!(!report.contains(key), "{key} refused:\n{report}");
    }
}
