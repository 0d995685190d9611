//! Envoy cluster YAML shared by the tests and `examples/hold_cost.rs`.

/// A STATIC cluster `name` to 127.0.0.1:`port` speaking HTTP/2, as `audit_transport: "grpc"`
/// needs: one list item of `static_resources.clusters`, indented for it.
pub fn http2_cluster(name: &str, port: u16) -> String {
    format!(
        r#"  - name: {name}
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
"#
    )
}
