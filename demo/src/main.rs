//! `truthtable-demo-llm [--listen 127.0.0.1:8000] [--token-delay-ms 30]`: the demo upstream.

use std::time::Duration;

struct Args {
    listen: String,
    token_delay: Duration,
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        listen: "127.0.0.1:8000".to_owned(),
        token_delay: Duration::from_millis(30),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => out.listen = value()?,
            "--token-delay-ms" => {
                let v = value()?;
                let ms = v
                    .parse()
                    .map_err(|_| format!("--token-delay-ms: not a number: {v}"))?;
                out.token_delay = Duration::from_millis(ms);
            }
            "-h" | "--help" => {
                return Err(
                    "usage: truthtable-demo-llm [--listen ADDR] [--token-delay-ms MS]".into(),
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(out)
}

#[tokio::main]
async fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let app = truthtable_demo_llm::app(args.token_delay);
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    eprintln!("demo LLM listening on http://{}", args.listen);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop_requested())
        .await
    {
        eprintln!("server error: {e}");
        std::process::exit(1);
    }
}

/// Resolves at SIGTERM or SIGINT, so that `docker stop` ends the service with status 0 once the
/// answers in flight are sent.
async fn stop_requested() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("cannot watch for SIGTERM/SIGINT ({e}); stop the demo LLM with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}
