//! What can be checked of the deployment files without a Docker engine or a Kubernetes cluster
//! (`scripts/test-compose` runs docker-compose.yml under a real engine):
//!
//! - `docker-compose.yml` parses; the envoy, collector and demo services exist; every file it
//!   mounts or builds from exists; its Envoy runs the one shipped `envoy/envoy.yaml` and, through
//!   the mounts and the working directory, finds the built filter where that config names it; that
//!   config passes `envoy --mode validate` there; the image is the Envoy version the tests run;
//!   the collector and demo listen where `envoy/envoy.yaml` sends captures and requests.
//! - The Dockerfiles build from source by default and have a `prebuilt` target that packs the
//!   host's release binary, which `.dockerignore` lets into the build context; the offline
//!   override `deploy/compose/offline.yml` changes only where images come from, and names targets
//!   that exist; the Envoy stand-in is the version compose names, on the projects' own base.
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

/// `(stage name, base image)` of every `FROM` of a Dockerfile, in order.
fn stages(dockerfile: &str) -> Vec<(String, String)> {
    dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .map(|rest| {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                _ => String::new(),
            };
            (name, words[0].to_owned())
        })
        .collect()
}

/// The text of one stage: from its `FROM` line to the next.
fn stage_text<'a>(dockerfile: &'a str, name: &str) -> &'a str {
    let start = dockerfile
        .find(&format!("AS {name}\n"))
        .unwrap_or_else(|| panic!("no stage {name}"));
    let rest = &dockerfile[start..];
    let end = rest[1..].find("\nFROM ").map_or(rest.len(), |i| i + 1);
    &rest[..end]
}

#[test]
fn dockerfiles_build_from_source_by_default_or_pack_the_host_binary() {
    let dockerignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    let ignore: Vec<&str> = dockerignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        ignore.contains(&"target"),
        ".dockerignore keeps build products out"
    );
    for (dockerfile, package) in [
        ("collector/Dockerfile", "truthtable-collector"),
        ("demo/Dockerfile", "truthtable-demo-llm"),
    ] {
        let text = std::fs::read_to_string(repo().join(dockerfile)).unwrap();
        let stages = stages(&text);
        let names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["runtime", "prebuilt", "build", "source"],
            "{dockerfile}: stages"
        );
        // The runtime is the Debian the Rust image is built on, so the binary's glibc matches.
        assert_eq!(stages[0].1, "debian:bookworm-slim", "{dockerfile}");
        assert_eq!(stages[2].1, "rust:1-slim-bookworm", "{dockerfile}");
        assert!(
            text.contains(&format!("ENTRYPOINT [\"{package}\"]")),
            "{dockerfile} should run {package}"
        );
        let installed = format!("/usr/local/bin/{package}");

        // Without --target, the last stage is built: the binary compiled in the Rust image.
        let build = stage_text(&text, "build");
        assert!(
            build.contains(&format!("cargo build --release --locked -p {package}")),
            "{dockerfile} should build {package}"
        );
        let source = stage_text(&text, "source");
        assert!(source.starts_with("AS source\n") && text.contains("FROM runtime AS source"));
        assert!(
            source.contains(&format!("COPY --from=build {installed} {installed}")),
            "{dockerfile}: the source stage takes the binary the build stage made"
        );

        // --target prebuilt packs target/release/<package>, built on the host.
        let prebuilt = stage_text(&text, "prebuilt");
        assert!(text.contains("FROM runtime AS prebuilt"));
        assert!(
            prebuilt.contains("ARG BIN_DIR=target/release"),
            "{dockerfile}"
        );
        assert!(
            prebuilt.contains(&format!("COPY ${{BIN_DIR}}/{package} {installed}")),
            "{dockerfile}: prebuilt copies the host's binary"
        );
        for dir in ["target/release", "target/*/release"] {
            assert!(
                ignore.contains(&format!("!{dir}/{package}").as_str()),
                ".dockerignore must let {dir}/{package} into the build context"
            );
        }
        // Nothing else of target/ is let in.
        for line in &ignore {
            if let Some(kept) = line.strip_prefix("!target/") {
                assert!(
                    kept.ends_with("/truthtable-collector")
                        || kept.ends_with("/truthtable-demo-llm"),
                    ".dockerignore lets in more of target/ than the two binaries: {line}"
                );
            }
        }
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
fn offline_override_changes_only_where_images_come_from() {
    let compose = compose();
    let path = repo().join("deploy/compose/offline.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("# docker-compose.yml without a registry: an override file"),
        "offline.yml says what it is in its first line"
    );
    let offline = yaml(&path);
    let keys: Vec<&String> = offline.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["services"], "offline.yml overrides services only");
    let services = offline["services"].as_object().unwrap();
    for (name, changes) in services {
        let shipped = service(&compose, name);
        for (key, value) in changes.as_object().unwrap() {
            match key.as_str() {
                "pull_policy" => assert_eq!(value, "never", "{name}"),
                "build" => {
                    let build = value.as_object().unwrap();
                    for k in build.keys() {
                        assert!(
                            ["target", "network", "args"].contains(&k.as_str()),
                            "{name}: offline.yml changes build.{k}"
                        );
                    }
                    // Only where the prebuilt binaries are, defaulting to the Dockerfile's own.
                    if let Some(args) = build.get("args") {
                        let args = args.as_object().unwrap();
                        assert_eq!(args.keys().collect::<Vec<_>>(), ["BIN_DIR"], "{name}");
                        assert_eq!(
                            args["BIN_DIR"], "${TRUTHTABLE_BIN_DIR:-target/release}",
                            "{name}"
                        );
                    }
                    // The target it names is a stage of the service's own Dockerfile.
                    let dockerfile = shipped["build"]["dockerfile"].as_str().unwrap();
                    let stages = stages(&std::fs::read_to_string(repo().join(dockerfile)).unwrap());
                    let target = build["target"].as_str().unwrap();
                    assert!(
                        stages.iter().any(|(n, _)| n == target),
                        "{name}: {dockerfile} has no stage {target}"
                    );
                    assert_eq!(build.get("network").and_then(Value::as_str), Some("none"));
                }
                other => panic!("{name}: offline.yml changes {other}, not an image source"),
            }
        }
    }
    for name in ["envoy", "collector", "demo"] {
        assert!(services.contains_key(name), "offline.yml: no {name}");
    }
}

#[test]
fn offline_images_make_the_envoy_compose_names_on_the_projects_base() {
    let compose = compose();
    let image = service(&compose, "envoy")["image"].as_str().unwrap();
    let version = image
        .strip_prefix("envoyproxy/envoy:v")
        .expect("the official image's name");
    let script = std::fs::read_to_string(repo().join("deploy/compose/offline-images")).unwrap();
    assert!(script.contains(&format!("envoy_version={version}\n")));
    assert!(script.contains("envoy_image=envoyproxy/envoy:v$envoy_version\n"));
    assert!(script.contains("base=debian:bookworm-slim\n"));
    let standin = std::fs::read_to_string(repo().join("deploy/compose/envoy/Dockerfile")).unwrap();
    assert_eq!(
        stages(&standin),
        [(String::new(), "debian:bookworm-slim".to_owned())]
    );
    assert!(standin.contains("COPY envoy /usr/local/bin/envoy"));
    // docker-compose.yml's command starts with `envoy`, which the stand-in has on its PATH.
    assert_eq!(strings(&service(&compose, "envoy")["command"])[0], "envoy");
    assert!(
        !standin.contains("ENTRYPOINT"),
        "the command is run as given"
    );
}

#[test]
fn compose_scripts_are_executable_and_ci_runs_the_compose_test() {
    use std::os::unix::fs::PermissionsExt;
    // Parsed, not run: python3 compiles without writing bytecode, bash -n reads without executing.
    let compile = "import sys; compile(open(sys.argv[1]).read(), sys.argv[1], 'exec')";
    for (script, interpreter, check) in [
        ("scripts/test-compose", "python3", ["-c", compile]),
        ("deploy/compose/offline-images", "bash", ["-n", "--"]),
    ] {
        let path = repo().join(script);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "{script} is not executable");
        let out = Command::new(interpreter)
            .args(check)
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ci = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
    let test = ci
        .find("\nscripts/test\n")
        .expect(".ci/run runs scripts/test");
    let compose = ci
        .find("\nscripts/test-compose\n")
        .expect(".ci/run runs scripts/test-compose");
    assert!(test < compose, ".ci/run runs scripts/test first");
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
