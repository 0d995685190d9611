//! What can be checked of the deployment files without a Docker engine or a Kubernetes cluster:
//!
//! - `docker-compose.yml` parses; the envoy, collector and demo services exist; every file it
//!   mounts or builds from exists; its Envoy runs the one shipped `envoy/envoy.yaml` and, through
//!   the mounts and the working directory, finds the built filter where that config names it; that
//!   config passes `envoy --mode validate` there; the image is the Envoy version the tests run;
//!   the collector and demo listen where `envoy/envoy.yaml` sends captures and requests.
//! - The Istio manifests parse; the `WasmPlugin` pulls an OCI image, pins a checksum (or carries the
//!   documented placeholder), has a fail strategy and a phase Istio knows, and its `pluginConfig` is a
//!   configuration the filter accepts, aimed at the collector Service by Istio's cluster name.
//!   `collector.yaml` runs several replicas with the database URL and password from a Secret (the
//!   collector accepts its command line); `collector-sqlite.yaml` one replica on a volume.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{assert_envoy_validates, envoy_bin, repo, wasm_path};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use truthtable_filter::config::Config;

/// Every document of a YAML file, as JSON.
fn yaml_docs(path: &Path) -> Vec<Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} does not parse as YAML: {e}", path.display()))
        })
        .filter(|d| !d.is_null())
        .collect()
}

fn yaml(path: &Path) -> Value {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{}: one YAML document", path.display());
    docs.remove(0)
}

fn compose() -> Value {
    yaml(&repo().join("docker-compose.yml"))
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let s = &compose["services"][name];
    assert!(s.is_object(), "docker-compose.yml has no service {name}");
    s
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a list, got {v}"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

/// `(host source, container target)` of every bind mount of a service, sources resolved against
/// the repository root (where docker-compose.yml lives).
fn binds(service: &Value) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for v in service["volumes"].as_array().into_iter().flatten() {
        let (source, target) = match v {
            Value::String(short) => {
                let mut parts = short.split(':');
                let (s, t) = (parts.next().unwrap(), parts.next().expect("SRC:DST"));
                if !(s.starts_with('.') || s.starts_with('/')) {
                    continue; // a named volume
                }
                (s.to_owned(), t.to_owned())
            }
            Value::Object(long) if long["type"] == "bind" => (
                long["source"].as_str().unwrap().to_owned(),
                long["target"].as_str().unwrap().to_owned(),
            ),
            _ => continue,
        };
        out.push((repo().join(source), target));
    }
    out
}

/// The host path behind a container path, through a service's bind mounts.
fn host_path(binds: &[(PathBuf, String)], container: &str) -> Option<PathBuf> {
    binds.iter().find_map(|(source, target)| {
        let rest = container.strip_prefix(target.as_str())?;
        if rest.is_empty() {
            Some(source.clone())
        } else {
            Some(source.join(rest.strip_prefix('/')?))
        }
    })
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `127.0.0.1:PORT` of a STATIC cluster's single endpoint in an Envoy config.
fn cluster_address(envoy: &Value, name: &str) -> String {
    let cluster = envoy["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no cluster {name}"));
    let a = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    format!("{}:{}", a["address"].as_str().unwrap(), a["port_value"])
}

fn arg_after(args: &[String], flag: &str) -> String {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    args.get(i + 1).expect("a value").clone()
}

#[test]
fn compose_parses_and_every_file_it_mounts_or_builds_from_exists() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    for name in ["envoy", "collector", "demo"] {
        let s = service(&compose, name);
        assert_eq!(
            s["network_mode"], "host",
            "{name}: envoy/envoy.yaml speaks to 127.0.0.1, so all three share the host network"
        );
    }
    for (name, s) in services {
        if let Some(build) = s.get("build") {
            let context = repo().join(build["context"].as_str().unwrap_or("."));
            assert!(
                context.is_dir(),
                "{name}: no build context {}",
                context.display()
            );
            let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
            assert!(dockerfile.is_file(), "{name}: no {}", dockerfile.display());
        }
        for (source, target) in binds(s) {
            assert!(
                source.exists(),
                "{name}: mounts {} at {target}, which does not exist (for the .wasm: run scripts/release)",
                source.display()
            );
        }
        for v in s["volumes"].as_array().into_iter().flatten() {
            if let Some(short) = v.as_str() {
                let source = short.split(':').next().unwrap();
                if !(source.starts_with('.') || source.starts_with('/')) {
                    assert!(
                        compose["volumes"].get(source).is_some(),
                        "{name}: named volume {source} is not declared"
                    );
                }
            }
        }
    }
    assert!(repo().join(".dockerignore").is_file());
}

#[test]
fn compose_envoy_runs_the_shipped_config_and_finds_the_built_filter() {
    let compose = compose();
    let envoy = service(&compose, "envoy");
    let binds = binds(envoy);

    // The official image of the Envoy version the tests run.
    let version = Command::new(envoy_bin()).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    // "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    let version = version
        .split("version: ")
        .nth(1)
        .and_then(|v| v.split('/').nth(1))
        .unwrap_or_else(|| panic!("envoy --version: {version}"));
    assert_eq!(
        envoy["image"].as_str().unwrap(),
        format!("envoyproxy/envoy:v{version}")
    );

    // The config it runs is envoy/envoy.yaml itself.
    let command = strings(&envoy["command"]);
    let config = arg_after(&command, "-c");
    let config_host = host_path(&binds, &config)
        .unwrap_or_else(|| panic!("-c {config} is not inside a bind mount"));
    assert_eq!(
        canonical(&config_host),
        canonical(&repo().join("envoy/envoy.yaml")),
        "compose must run the one shipped Envoy config"
    );

    // The .wasm path in that config, relative to Envoy's working directory, is the built filter.
    let text = std::fs::read_to_string(&config_host).unwrap();
    let filename = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("filename: "))
        .expect("the filter's filename");
    let working_dir = envoy["working_dir"].as_str().expect("working_dir");
    let wasm_container = if filename.starts_with('/') {
        filename.to_owned()
    } else {
        format!("{working_dir}/{filename}")
    };
    let wasm_host = host_path(&binds, &wasm_container)
        .unwrap_or_else(|| panic!("{wasm_container} is not inside a bind mount"));
    assert_eq!(canonical(&wasm_host), canonical(&wasm_path()));

    // Every mount under the working directory mirrors the repository layout, so Envoy started in
    // the repository root sees what the container sees; there it must validate.
    for (source, target) in &binds {
        if let Some(rel) = target.strip_prefix(&format!("{working_dir}/")) {
            assert_eq!(canonical(source), canonical(&repo().join(rel)), "{target}");
        }
    }
    assert_envoy_validates(&config_host);
}

#[test]
fn compose_collector_and_demo_listen_where_the_envoy_config_points() {
    let compose = compose();
    let envoy = yaml(&repo().join("envoy/envoy.yaml"));
    let collector = strings(&service(&compose, "collector")["command"]);
    let demo = strings(&service(&compose, "demo")["command"]);

    // The filter's configuration names the audit cluster, which is where the collector listens.
    let text = std::fs::read_to_string(repo().join("envoy/envoy.yaml")).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("value: '"))
        .expect("the filter's configuration line");
    let config = Config::parse(line.trim_end_matches('\'').as_bytes()).unwrap();
    assert_eq!(
        arg_after(&collector, "--listen"),
        cluster_address(&envoy, &config.audit_cluster)
    );
    assert_eq!(
        arg_after(&demo, "--listen"),
        cluster_address(&envoy, "llm_upstream")
    );
    // The collector's database is on the named volume.
    let db = arg_after(&collector, "--db");
    let volumes = strings(&service(&compose, "collector")["volumes"]);
    assert!(
        volumes.iter().any(|v| {
            let (name, target) = v.split_once(':').unwrap();
            compose["volumes"].get(name).is_some() && db.starts_with(&format!("{target}/"))
        }),
        "--db {db} should be on a named volume: {volumes:?}"
    );
}

#[test]
fn dockerfiles_build_and_run_the_binaries_compose_expects() {
    for (dockerfile, package) in [
        ("collector/Dockerfile", "truthtable-collector"),
        ("demo/Dockerfile", "truthtable-demo-llm"),
    ] {
        let text = std::fs::read_to_string(repo().join(dockerfile)).unwrap();
        assert!(
            text.contains(&format!("cargo build --release --locked -p {package}")),
            "{dockerfile} should build {package}"
        );
        assert!(
            text.contains(&format!("ENTRYPOINT [\"{package}\"]")),
            "{dockerfile} should run {package}"
        );
    }
    let cargo_names = [
        std::fs::read_to_string(repo().join("collector/Cargo.toml")).unwrap(),
        std::fs::read_to_string(repo().join("demo/Cargo.toml")).unwrap(),
    ];
    assert!(cargo_names[0].contains("name = \"truthtable-collector\""));
    assert!(cargo_names[1].contains("name = \"truthtable-demo-llm\""));

    let oci = std::fs::read_to_string(repo().join("deploy/oci/Dockerfile")).unwrap();
    assert!(
        oci.contains("FROM scratch"),
        "the filter image holds only the module"
    );
    assert!(
        oci.contains("COPY truthtable_filter.wasm ./plugin.wasm"),
        "Istio's compat image layout wants /plugin.wasm"
    );
}

#[test]
fn release_script_is_executable_bash() {
    use std::os::unix::fs::PermissionsExt;
    let script = repo().join("scripts/release");
    let mode = std::fs::metadata(&script).unwrap().permissions().mode();
    assert!(mode & 0o111 != 0, "scripts/release is not executable");
    let out = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.contains("cargo build --release --target wasm32-wasip1 --locked"));
    assert!(text.contains("sha256sum"));
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn istio_wasmplugin_targets_the_collector_with_a_valid_filter_configuration() {
    let dir = repo().join("deploy/istio");
    let collector = yaml_docs(&dir.join("collector.yaml"));
    let service = kind(&collector, "Service");
    let (svc, ns) = (
        service["metadata"]["name"].as_str().unwrap(),
        service["metadata"]["namespace"].as_str().unwrap(),
    );
    let port = &service["spec"]["ports"][0];
    assert!(
        port["name"].as_str().unwrap().starts_with("http") || port["appProtocol"] == "http",
        "Istio must see the collector port as HTTP"
    );

    // The replicated layout: several replicas, the database URL and password from a Secret
    // (never on the command line), ready only while the database takes writes.
    let deployment = kind(&collector, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args = strings(&container["args"]);
    assert_eq!(
        arg_after(&args, "--listen"),
        format!("0.0.0.0:{}", port["targetPort"])
    );
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    assert!(
        !args
            .iter()
            .any(|a| a == "--db" || a.starts_with("postgres")),
        "the database URL comes from a Secret, not the command line: {args:?}"
    );
    let env = |name: &str| {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in the collector's env"))
            .clone()
    };
    assert!(env("TRUTHTABLE_DB")["valueFrom"]["secretKeyRef"]["key"].is_string());
    let password_file = env("TRUTHTABLE_DB_PASSWORD_FILE")["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let mounted = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| {
            let volume = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == m["name"]);
            password_file.starts_with(m["mountPath"].as_str().unwrap())
                && volume.is_some_and(|v| v["secret"]["secretName"].is_string())
        });
    assert!(mounted, "{password_file} is not on a mounted Secret");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    // The collector accepts the manifest's command line.
    let mut argv = vec!["truthtable-collector".to_owned()];
    argv.extend(args.iter().cloned());
    truthtable_collector::config::Cli::try_from_args(argv).unwrap();
    assert_eq!(
        kind(&collector, "PodDisruptionBudget")["spec"]["minAvailable"],
        1
    );

    // The small layout on SQLite: one replica, its database on the claimed volume, and the
    // same Service.
    let sqlite = yaml_docs(&dir.join("collector-sqlite.yaml"));
    assert_eq!(kind(&sqlite, "Service")["metadata"], service["metadata"]);
    let deployment = kind(&sqlite, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let args = strings(&pod["containers"][0]["args"]);
    let claim = kind(&sqlite, "PersistentVolumeClaim")["metadata"]["name"].clone();
    assert_eq!(
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
        claim
    );
    let mount = pod["containers"][0]["volumeMounts"][0]["mountPath"]
        .as_str()
        .unwrap();
    assert!(arg_after(&args, "--db").starts_with(&format!("{mount}/")));
    assert_eq!(
        deployment["spec"]["replicas"], 1,
        "one writer per SQLite file"
    );

    let docs = yaml_docs(&dir.join("wasmplugin.yaml"));
    let plugin = kind(&docs, "WasmPlugin");
    assert_eq!(plugin["apiVersion"], "extensions.istio.io/v1alpha1");
    let spec = &plugin["spec"];
    assert!(spec["url"].as_str().unwrap().starts_with("oci://"));
    let sha = spec["sha256"].as_str().expect("sha256");
    let placeholder = "REPLACE_WITH_IMAGE_MANIFEST_DIGEST";
    assert!(
        sha == placeholder
            || (sha.len() == 64
                && sha
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))),
        "sha256 is neither a digest nor the documented placeholder: {sha}"
    );
    let deploy_doc = std::fs::read_to_string(repo().join("docs/deploy.md")).unwrap();
    assert!(
        deploy_doc.contains(placeholder),
        "docs/deploy.md explains {placeholder}"
    );
    assert!(matches!(
        spec["failStrategy"].as_str(),
        Some("FAIL_OPEN" | "FAIL_CLOSE" | "FAIL_RELOAD")
    ));
    assert!(matches!(
        spec["phase"].as_str(),
        Some("AUTHN" | "AUTHZ" | "STATS" | "UNSPECIFIED_PHASE")
    ));

    // Istio hands pluginConfig to the filter as JSON: the filter must accept it as is.
    let config = Config::parse(spec["pluginConfig"].to_string().as_bytes())
        .unwrap_or_else(|e| panic!("pluginConfig is refused by the filter: {e}"));
    let host = format!("{svc}.{ns}.svc.cluster.local");
    assert_eq!(
        config.audit_cluster,
        format!("outbound|{}||{host}", port["port"])
    );
    assert!(
        config.audit_authority == host || config.audit_authority.starts_with(&format!("{host}:")),
        "audit_authority should name the Service, got {}",
        config.audit_authority
    );

    let external = yaml_docs(&dir.join("serviceentry-external.yaml"));
    let entry = kind(&external, "ServiceEntry");
    assert_eq!(entry["spec"]["ports"][0]["protocol"], "HTTP");
}
