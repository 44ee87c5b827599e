//! Load generator for `gpurt serve` (and any server speaking the same
//! KServe v2 JSON, such as `tools/serve_torch.py`): sends MNIST test
//! images as UINT8 requests at each concurrency level, a fixed number of
//! requests per level, and prints throughput and latency percentiles.
//!
//! ```text
//! cargo run --release --example serve_load -- --url http://127.0.0.1:8080 \
//!     --model cnn --requests 2000 --concurrency 1,8,64 [--embed-run runs/x]
//! ```
//!
//! `--embed-run` also times the embedding API (a batch-1 `Predictor` on
//! the calling thread, as a server worker runs it) on the same images, the
//! floor that HTTP and batching add to.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    url: String,
    model: String,
    requests: usize,
    levels: Vec<usize>,
    label: String,
    embed_run: Option<String>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        url: "http://127.0.0.1:8080".into(),
        model: "cnn".into(),
        requests: 2000,
        levels: vec![1, 8, 64],
        label: "server".into(),
        embed_run: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = value()?,
            "--model" => a.model = value()?,
            "--requests" => {
                a.requests = value()?.parse().map_err(|e| format!("--requests: {e}"))?
            }
            "--label" => a.label = value()?,
            "--embed-run" => a.embed_run = Some(value()?),
            "--concurrency" => {
                a.levels = value()?
                    .split(',')
                    .map(|s| s.parse().map_err(|e| format!("--concurrency {s}: {e}")))
                    .collect::<Result<_, _>>()?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

/// MNIST test images: pixels per image and the pixel buffer.
fn mnist() -> Result<Vec<Vec<u8>>, String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/mnist/t10k-images-idx3-ubyte.gz");
    let (n, rows, cols, px) = gpurt::data::read_idx_images(&path).map_err(|e| e.to_string())?;
    Ok(px
        .chunks(rows * cols)
        .take(n.min(256))
        .map(|c| c.to_vec())
        .collect())
}

fn body(img: &[u8], id: usize) -> String {
    let data: Vec<String> = img.iter().map(u8::to_string).collect();
    format!(
        r#"{{"id":"{id}","inputs":[{{"name":"input","shape":[1,1,28,28],"datatype":"UINT8","data":[{}]}}],"parameters":{{"top_k":1}}}}"#,
        data.join(",")
    )
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

async fn level(
    client: &reqwest::Client,
    url: &str,
    bodies: &Arc<Vec<String>>,
    concurrency: usize,
    requests: usize,
) -> (Vec<Duration>, usize, Duration) {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, bodies, next) =
            (client.clone(), url.to_owned(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(bodies[i % bodies.len()].clone())
                    .send()
                    .await;
                let ok = match r {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    lat.push(t.elapsed());
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::with_capacity(requests);
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("load task");
        lat.extend(l);
        errors += e;
    }
    let wall = start.elapsed();
    lat.sort();
    (lat, errors, wall)
}

fn embed_latency(run: &str, images: &[Vec<u8>]) -> Result<(f64, f64), String> {
    let dir = std::path::Path::new(run);
    let ck = gpurt::checkpoint::Checkpoint::load(dir).map_err(|e| e.to_string())?;
    let w = gpurt::embed::SharedWeights::from_run(dir).map_err(|e| e.to_string())?;
    let mut p = gpurt::embed::Predictor::on_device(&w, 1, &gpurt::backend::DeviceSpec::Cpu)
        .map_err(|e| e.to_string())?;
    let norm = ck.normalizer();
    let mut x = vec![0.0f32; 784];
    let mut lat = Vec::new();
    for i in 0..3000 {
        let t = Instant::now();
        norm.normalize_into(&images[i % images.len()], 1, &mut x);
        p.run(&x).map_err(|e| e.to_string())?;
        if i >= 500 {
            lat.push(t.elapsed());
        }
    }
    lat.sort();
    Ok((percentile(&lat, 0.5), percentile(&lat, 0.99)))
}

fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("serve_load: {e}");
            std::process::exit(2);
        }
    };
    let images = match mnist() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("serve_load: {e}");
            std::process::exit(1);
        }
    };
    if let Some(run) = &a.embed_run {
        match embed_latency(run, &images) {
            Ok((p50, p99)) => println!("embed batch=1 p50_us={p50:.1} p99_us={p99:.1}"),
            Err(e) => {
                eprintln!("serve_load: --embed-run {run}: {e}");
                std::process::exit(1);
            }
        }
    }
    let bodies: Arc<Vec<String>> = Arc::new(
        images
            .iter()
            .enumerate()
            .map(|(i, img)| body(img, i))
            .collect(),
    );
    let url = format!(
        "{}/v2/models/{}/infer",
        a.url.trim_end_matches('/'),
        a.model
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .expect("HTTP client");
        for &c in &a.levels {
            // Warm-up: connections opened, caches filled.
            level(&client, &url, &bodies, c, (4 * c).max(100)).await;
            let (lat, errors, wall) = level(&client, &url, &bodies, c, a.requests).await;
            println!(
                "{} concurrency={c} requests={} errors={errors} throughput_per_s={:.1} p50_us={:.1} p99_us={:.1}",
                a.label,
                a.requests,
                lat.len() as f64 / wall.as_secs_f64(),
                percentile(&lat, 0.5),
                percentile(&lat, 0.99)
            );
        }
    });
}
