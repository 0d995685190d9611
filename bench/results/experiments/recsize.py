# One-off (fourth session): the size of the capture record of bench/probe's 1 KiB workload. Runs nginx
# (the probe's answer), Envoy with the release filter delivering to a Python receiver that counts
# bytes and lines, and wrk for 2 s; prints bytes per record and one record. Needs what bench/run installs.
# Output at 08:20 UTC: 22 127 records in 252 POSTs, 65 933 519 bytes: 2 980 bytes per record.
import json, os, socket, subprocess, threading, time, http.server, urllib.request
R = "/tmp/truthtable-recsize"
os.makedirs(R, exist_ok=True)
# The repository root: this file is bench/results/experiments/recsize.py.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
def port():
    s=socket.socket(); s.bind(("127.0.0.1",0)); p=s.getsockname()[1]; s.close(); return p
p_up,p_recv,p_l,p_admin=port(),port(),port(),port()
answer = json.dumps({"id": "chatcmpl-bench", "object": "chat.completion", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "Paris. " + "x" * 890}, "finish_reason": "stop"}]})
request = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "What is the capital of France? " + "x" * 950}]})
open(f"{R}/request.json","w").write(request)
os.makedirs(f"{R}/tmp",exist_ok=True)
open(f"{R}/nginx.conf","w").write(f"""user root;
worker_processes 1; daemon off; pid {R}/nginx.pid; error_log {R}/nginx.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {R}/tmp; keepalive_requests 10000000;
  server {{ listen 127.0.0.1:{p_up};
    location / {{ client_body_buffer_size 1m; client_max_body_size 64m; default_type application/json; return 200 '{answer}'; }} }} }}
""")
stats={"bytes":0,"lines":0,"posts":0,"sample":b""}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version="HTTP/1.1"
    def do_POST(self):
        n=int(self.headers["content-length"]); b=self.rfile.read(n)
        stats["bytes"]+=n; stats["lines"]+=b.count(b"\n"); stats["posts"]+=1
        if not stats["sample"]: stats["sample"]=b.split(b"\n")[0]
        self.send_response(204); self.send_header("content-length","0"); self.end_headers()
    def log_message(self,*a): pass
srv=http.server.ThreadingHTTPServer(("127.0.0.1",p_recv),H)
threading.Thread(target=srv.serve_forever,daemon=True).start()
open(f"{R}/envoy.yaml","w").write(f"""admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p_admin} }} }} }}
static_resources:
  listeners:
  - name: capture
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p_l} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: capture
          route_config:
            virtual_hosts:
            - name: probe
              domains: ["*"]
              routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: upstream }} }}]
          http_filters:
          - name: truthtable
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                root_id: truthtable
                configuration: {{ "@type": type.googleapis.com/google.protobuf.StringValue, value: '{{"audit_cluster": "audit"}}' }}
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {ROOT}/target/wasm32-wasip1/release/truthtable_filter.wasm }} }}
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: upstream
    type: STATIC
    load_assignment: {{ cluster_name: upstream, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p_up} }} }} }} }}] }}] }}
  - name: audit
    type: STATIC
    load_assignment: {{ cluster_name: audit, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p_recv} }} }} }} }}] }}] }}
""")
ng=subprocess.Popen(["nginx","-p",R,"-c",f"{R}/nginx.conf"])
ev=subprocess.Popen([f"{ROOT}/.venv/bin/envoy","-c",f"{R}/envoy.yaml","--concurrency","1","--disable-hot-restart","-l","warn","--log-path",f"{R}/envoy.log"])
try:
    for _ in range(100):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{p_admin}/ready").read()==b"LIVE\n": break
        except OSError: pass
        time.sleep(0.1)
    out=subprocess.run(["wrk","-t1","-c16","-d2s","-s",f"{ROOT}/bench/wrk.lua",f"http://127.0.0.1:{p_l}/json"],env={**os.environ,"BENCH_BODY":f"{R}/request.json"},capture_output=True,text=True).stdout
    time.sleep(1.5)
    req=[l for l in out.splitlines() if l.startswith("WRKJSON")][0]
    print(req)
    print("posts",stats["posts"],"records",stats["lines"],"bytes",stats["bytes"],"bytes/record",stats["bytes"]/max(1,stats["lines"]))
    print(stats["sample"].decode())
finally:
    ev.terminate(); ng.terminate(); srv.shutdown()
