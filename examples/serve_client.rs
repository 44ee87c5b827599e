//! A client of `gpurt serve`: classifies PNG files (sent base64, so the
//! server decodes, converts and resizes them) or, with `--text`, lines of
//! text, and prints each top class.
//!
//! ```text
//! gpurt serve --run cnn=runs/mnist &
//! cargo run --release --example serve_client -- --model cnn digit.png
//! cargo run --release --example serve_client -- --model news --text "Shares rose 3%"
//! ```

use base64::Engine;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut url = "http://127.0.0.1:8080".to_owned();
    let mut model = "cnn".to_owned();
    let mut text = false;
    let mut items = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--url" => url = args.next().unwrap_or_default(),
            "--model" => model = args.next().unwrap_or_default(),
            "--text" => text = true,
            _ => items.push(a),
        }
    }
    if items.is_empty() {
        eprintln!("usage: serve_client [--url URL] [--model NAME] [--text] PNG... | TEXT...");
        return ExitCode::from(2);
    }
    // One request holds every item (up to the server's --max-batch).
    let data: Vec<String> = if text {
        items.clone()
    } else {
        let mut v = Vec::new();
        for path in &items {
            match std::fs::read(path) {
                Ok(b) => v.push(base64::engine::general_purpose::STANDARD.encode(b)),
                Err(e) => {
                    eprintln!("{path}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        v
    };
    let name = if text { "text" } else { "input" };
    let body = serde_json::json!({
        "inputs": [{"name": name, "shape": [data.len()], "datatype": "BYTES", "data": data}],
        "parameters": {"top_k": 1},
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let reply = rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{url}/v2/models/{model}/infer"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        let status = r.status();
        Ok::<_, reqwest::Error>((status, r.text().await?))
    });
    let (status, text_body) = match reply {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{url}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let v: serde_json::Value = serde_json::from_str(&text_body).unwrap_or_default();
    if !status.is_success() {
        eprintln!("{status}: {}", v["error"].as_str().unwrap_or(&text_body));
        return ExitCode::FAILURE;
    }
    for (item, top) in items.iter().zip(v["top"].as_array().into_iter().flatten()) {
        println!(
            "{item}: {} ({:.1}%)",
            top[0]["name"].as_str().unwrap_or("?"),
            top[0]["probability"].as_f64().unwrap_or(0.0) * 100.0
        );
    }
    ExitCode::SUCCESS
}
