//! `gpurt serve` over loopback: answers equal to the embedding API's,
//! batching, every malformed request's status, backpressure, timeouts,
//! hot reload under load and SIGTERM under load. Bounded loops only.
#![cfg(feature = "serve")]

use gpurt::backend::DeviceSpec;
use gpurt::checkpoint::Checkpoint;
use gpurt::embed::{Predictor, SharedWeights};
use gpurt::serve::model::Limits;
use gpurt::serve::{ServeConfig, Server};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// Two small CNN runs on the bundled MNIST (different seeds, so different
/// weights), trained once per test binary.
fn runs() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static RUNS: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    RUNS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for (name, seed) in [("a", "1"), ("b", "2")] {
            let out = dir.path().join(name);
            let o = Command::new(env!("CARGO_BIN_EXE_gpurt"))
                .args([
                    "train", "--epochs", "1", "--limit", "640", "--device", "cpu", "--quiet",
                ])
                .args(["--seed", seed, "--out"])
                .arg(&out)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            paths.push(out);
        }
        let b = paths.pop().unwrap();
        let a = paths.pop().unwrap();
        (dir, a, b)
    })
}

fn mnist_images(n: usize) -> Vec<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist/t10k-images-idx3-ubyte.gz");
    let (_, r, c, px) = gpurt::data::read_idx_images(&path).unwrap();
    px.chunks(r * c).take(n).map(<[u8]>::to_vec).collect()
}

fn config(run: &Path) -> ServeConfig {
    ServeConfig {
        models: vec![("cnn".into(), run.to_path_buf())],
        addr: "127.0.0.1:0".parse().unwrap(),
        limits: Limits {
            device: DeviceSpec::Cpu,
            workers: 2,
            // Each worker's batch-1 predictor on a team of two: every
            // test here also runs the split convolutions under load.
            threads_per_worker: 2,
            max_batch: 16,
            max_delay: Duration::from_millis(2),
            max_queue: 256,
            test_batch_delay: Duration::ZERO,
        },
        max_request_rows: 16,
        max_body: 1 << 20,
        timeout: Duration::from_secs(20),
        http_threads: 2,
        access_log: false,
        allow_load_path: true,
    }
}

fn uint8_body(images: &[Vec<u8>]) -> String {
    let data: Vec<String> = images.iter().flatten().map(u8::to_string).collect();
    format!(
        r#"{{"id":"t","inputs":[{{"name":"input","shape":[{},1,28,28],"datatype":"UINT8","data":[{}]}}],"parameters":{{"top_k":2}}}}"#,
        images.len(),
        data.join(",")
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn post(client: &reqwest::Client, url: &str, body: String) -> (u16, serde_json::Value) {
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {text:?}: {e}"));
    (status, v)
}

fn logits_of(v: &serde_json::Value) -> Vec<f32> {
    serde_json::from_value(v["outputs"][0]["data"].clone()).unwrap()
}

/// The embedding API's logits for each image, batch 1.
fn reference(run: &Path, images: &[Vec<u8>]) -> Vec<Vec<f32>> {
    let ck = Checkpoint::load(run).unwrap();
    let w = SharedWeights::from_run(run).unwrap();
    let mut p = Predictor::on_device(&w, 1, &DeviceSpec::Cpu).unwrap();
    let mut x = vec![0.0; 784];
    images
        .iter()
        .map(|img| {
            ck.normalizer().normalize_into(img, 1, &mut x);
            p.run(&x).unwrap().to_vec()
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
            "{what}: {got:?} vs {want:?}"
        );
    }
}

#[test]
fn answers_equal_the_embedding_api_for_uint8_fp32_and_png_inputs() {
    let (_, run, _) = runs();
    let images = mnist_images(5);
    let want = reference(run, &images);
    let server = Server::start(config(run)).unwrap();
    let base = format!("http://{}", server.addr());
    let url = format!("{base}/v2/models/cnn/infer");
    let rt = runtime();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let (status, v) = post(&c, &url, uint8_body(&images)).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["id"], "t");
        assert_eq!(v["outputs"][0]["shape"], serde_json::json!([5, 10]));
        let got = logits_of(&v);
        for (i, w) in want.iter().enumerate() {
            assert_close(&got[i * 10..i * 10 + 10], w, "UINT8");
            let top = v["top"][i][0]["class"].as_u64().unwrap() as usize;
            let best = (0..10).max_by(|&a, &b| w[a].total_cmp(&w[b])).unwrap();
            assert_eq!(top, best);
        }
        // FP32: the client normalises.
        let ck = Checkpoint::load(run).unwrap();
        let mut x = vec![0.0f32; 784];
        ck.normalizer().normalize_into(&images[0], 1, &mut x);
        let body = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": x}]});
        let (status, v) = post(&c, &url, body.to_string()).await;
        assert_eq!(status, 200, "{v}");
        assert_close(&logits_of(&v), &want[0], "FP32");
        // A base64 PNG of the same image.
        let mut png_bytes = Vec::new();
        {
            let mut e = png::Encoder::new(&mut png_bytes, 28, 28);
            e.set_color(png::ColorType::Grayscale);
            e.set_depth(png::BitDepth::Eight);
            e.write_header().unwrap().write_image_data(&images[1]).unwrap();
        }
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png_bytes);
        let body = serde_json::json!({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": [b64]}]});
        let (status, v) = post(&c, &url, body.to_string()).await;
        assert_eq!(status, 200, "{v}");
        assert_close(&logits_of(&v), &want[1], "PNG");
        // Metadata and health.
        let meta = c.get(format!("{base}/v2/models/cnn")).send().await.unwrap().text().await.unwrap();
        let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
        assert_eq!(meta["inputs"][0]["shape"], serde_json::json!([-1, 1, 28, 28]));
        assert_eq!(meta["parameters"]["classes"][3], "3");
        for path in ["/v2/health/live", "/v2/health/ready", "/v2/models/cnn/ready"] {
            assert_eq!(c.get(format!("{base}{path}")).send().await.unwrap().status(), 200, "{path}");
        }
    });
    let totals = server.shutdown().unwrap();
    assert_eq!(totals.accepted, totals.answered);
}

#[test]
fn concurrent_requests_are_batched_and_each_gets_its_own_answer() {
    let (_, run, _) = runs();
    let images = mnist_images(48);
    let want = reference(run, &images);
    let mut cfg = config(run);
    cfg.limits.workers = 1;
    // The worker's first batch takes long enough for the rest to queue.
    cfg.limits.test_batch_delay = Duration::from_millis(200);
    let server = Server::start(cfg).unwrap();
    let url = format!("http://{}/v2/models/cnn/infer", server.addr());
    let rt = runtime();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let tasks: Vec<_> = images
            .iter()
            .map(|img| {
                let (c, url, body) = (
                    c.clone(),
                    url.clone(),
                    uint8_body(std::slice::from_ref(img)),
                );
                tokio::spawn(async move { post(&c, &url, body).await })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let (status, v) = t.await.unwrap();
            assert_eq!(status, 200, "{v}");
            assert_close(&logits_of(&v), &want[i], &format!("request {i}"));
        }
        let page = c
            .get(format!("http://{}/metrics", server.addr()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let count = |name: &str| -> f64 {
            page.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} in\n{page}"))
        };
        let batches = count("gpurt_batch_size_count{model=\"cnn\"}");
        let examples = count("gpurt_batch_size_sum{model=\"cnn\"}");
        assert_eq!(examples, 48.0);
        assert!(
            batches <= 12.0,
            "48 requests ran in {batches} batches:\n{page}"
        );
        assert_eq!(count("gpurt_requests_total{model=\"cnn\"}"), 48.0);
    });
    server.shutdown().unwrap();
}

#[test]
fn malformed_requests_get_a_status_and_a_json_error_naming_the_field() {
    let (_, run, _) = runs();
    let mut cfg = config(run);
    cfg.max_body = 64 * 1024;
    cfg.allow_load_path = false;
    let server = Server::start(cfg).unwrap();
    let base = format!("http://{}", server.addr());
    let img = mnist_images(1).remove(0);
    let px: Vec<String> = img.iter().map(u8::to_string).collect();
    let px = px.join(",");
    let good = uint8_body(std::slice::from_ref(&img));
    let input = |shape: &str, dt: &str, data: &str| {
        format!(
            r#"{{"inputs":[{{"name":"input","shape":{shape},"datatype":"{dt}","data":{data}}}]}}"#
        )
    };
    let huge = "9".repeat(30);
    let deep = format!("{}1{}", "[".repeat(20), "]".repeat(20));
    let cases: Vec<(&str, &str, String, &str, u16, &str)> = vec![
        (
            "truncated JSON",
            "cnn",
            good[..good.len() / 2].to_owned(),
            "application/json",
            400,
            "body",
        ),
        (
            "NaN literal",
            "cnn",
            input("[1,1,28,28]", "FP32", "[NaN]"),
            "application/json",
            400,
            "body",
        ),
        (
            "number out of f32 range",
            "cnn",
            input(
                "[1,1,28,28]",
                "FP32",
                &format!("[1e39,{}]", vec!["0"; 783].join(",")),
            ),
            "application/json",
            400,
            "inputs[0].data[0]",
        ),
        (
            "wrong shape",
            "cnn",
            input("[1,1,27,28]", "UINT8", &format!("[{px}]")),
            "application/json",
            400,
            "inputs[0].shape",
        ),
        (
            "huge dimensions",
            "cnn",
            input(&format!("[{huge},1,28,28]"), "UINT8", "[1]"),
            "application/json",
            400,
            "body",
        ),
        (
            "too many examples",
            "cnn",
            input("[4000000000,1,28,28]", "UINT8", "[1]"),
            "application/json",
            400,
            "inputs[0].shape",
        ),
        (
            "zero examples",
            "cnn",
            input("[0,1,28,28]", "UINT8", "[]"),
            "application/json",
            400,
            "inputs[0].shape",
        ),
        (
            "data shorter than the shape",
            "cnn",
            input("[2,1,28,28]", "UINT8", &format!("[{px}]")),
            "application/json",
            400,
            "inputs[0].data",
        ),
        (
            "pixel over 255",
            "cnn",
            input(
                "[1,1,28,28]",
                "UINT8",
                &format!("[256,{}]", &px[px.find(',').unwrap() + 1..]),
            ),
            "application/json",
            400,
            "inputs[0].data[0]",
        ),
        (
            "unknown datatype",
            "cnn",
            input("[1,1,28,28]", "INT64", &format!("[{px}]")),
            "application/json",
            400,
            "inputs[0].datatype",
        ),
        (
            "strings for UINT8",
            "cnn",
            input("[1,1,28,28]", "UINT8", r#"["a"]"#),
            "application/json",
            400,
            "inputs[0].data",
        ),
        (
            "mixed strings and numbers",
            "cnn",
            input("[2]", "BYTES", r#"["a",1]"#),
            "application/json",
            400,
            "inputs[0].data",
        ),
        (
            "nested deeper than 8",
            "cnn",
            input("[1,1,28,28]", "FP32", &deep),
            "application/json",
            400,
            "inputs[0].data",
        ),
        (
            "not base64",
            "cnn",
            input("[1]", "BYTES", r#"["@@@"]"#),
            "application/json",
            400,
            "inputs[0].data[0]",
        ),
        (
            "base64 of something not a PNG",
            "cnn",
            input("[1]", "BYTES", r#"["aGVsbG8="]"#),
            "application/json",
            400,
            "inputs[0].data[0]",
        ),
        (
            "wrong input name",
            "cnn",
            good.replace(r#""name":"input""#, r#""name":"x""#),
            "application/json",
            400,
            "inputs[0].name",
        ),
        (
            "no inputs",
            "cnn",
            r#"{"inputs":[]}"#.into(),
            "application/json",
            400,
            "inputs",
        ),
        (
            "top_k of 0",
            "cnn",
            good.replace(r#""top_k":2"#, r#""top_k":0"#),
            "application/json",
            400,
            "parameters.top_k",
        ),
        (
            "JSON that is not an object",
            "cnn",
            "[1,2,3]".into(),
            "application/json",
            400,
            "body",
        ),
        (
            "wrong content type",
            "cnn",
            good.clone(),
            "text/plain",
            415,
            "content-type",
        ),
        (
            "oversized body",
            "cnn",
            format!("{good}{}", " ".repeat(70 * 1024)),
            "application/json",
            413,
            "body",
        ),
        (
            "unknown model",
            "nope",
            good.clone(),
            "application/json",
            404,
            "model",
        ),
    ];
    assert!(cases.len() >= 15);
    let rt = runtime();
    rt.block_on(async {
        let c = reqwest::Client::new();
        for (what, model, body, ct, status, field) in &cases {
            let r = c
                .post(format!("{base}/v2/models/{model}/infer"))
                .header("content-type", *ct)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), *status, "{what}");
            let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            assert_eq!(v["field"], *field, "{what}: {v}");
            let msg = v["error"].as_str().unwrap();
            assert!(
                !msg.contains('\n') && msg.starts_with(field),
                "{what}: {msg}"
            );
        }
        // Routes: unknown path, wrong method.
        assert_eq!(
            c.get(format!("{base}/v3/x")).send().await.unwrap().status(),
            404
        );
        assert_eq!(
            c.get(format!("{base}/v2/models/cnn/infer"))
                .send()
                .await
                .unwrap()
                .status(),
            405
        );
        assert_eq!(
            c.get(format!("{base}/v2/models/nope"))
                .send()
                .await
                .unwrap()
                .status(),
            404
        );
        // A load naming another folder needs --allow-load-path.
        let r = c
            .post(format!("{base}/v2/repository/models/cnn/load"))
            .body(r#"{"parameters":{"run":"/etc"}}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert!(r.text().await.unwrap().contains("--allow-load-path"));
        // Still serving.
        let (status, _) = post(&c, &format!("{base}/v2/models/cnn/infer"), good.clone()).await;
        assert_eq!(status, 200);
    });
    server.shutdown().unwrap();
}

#[test]
fn a_full_queue_answers_503_with_retry_after_and_a_slow_answer_504() {
    let (_, run, _) = runs();
    let mut cfg = config(run);
    cfg.limits.workers = 1;
    cfg.limits.max_queue = 1;
    cfg.limits.max_batch = 1;
    cfg.max_request_rows = 1;
    // Generous margins, so a loaded machine cannot reorder the steps.
    cfg.limits.test_batch_delay = Duration::from_millis(3000);
    cfg.timeout = Duration::from_millis(1500);
    let server = Server::start(cfg).unwrap();
    let url = format!("http://{}/v2/models/cnn/infer", server.addr());
    let body = uint8_body(&mnist_images(1));
    let rt = runtime();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let send = || {
            let (c, url, body) = (c.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                let r = c
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let retry = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                (r.status().as_u16(), retry, r.text().await.unwrap())
            })
        };
        let first = send(); // taken by the worker, which sleeps 3 s
        tokio::time::sleep(Duration::from_millis(400)).await;
        let second = send(); // fills the queue
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (status, retry, text) = send().await.unwrap();
        assert_eq!((status, retry.as_deref()), (503, Some("1")), "{text}");
        assert!(text.contains("queue"), "{text}");
        for t in [first, second] {
            let (status, _, text) = t.await.unwrap();
            assert_eq!(status, 504, "{text}");
            assert!(text.contains("1500 ms"), "{text}");
        }
    });
    server.shutdown().unwrap();
}

#[test]
fn hot_reload_under_load_fails_no_request_and_each_answer_matches_its_version() {
    let (_, a, b) = runs();
    let images = mnist_images(4);
    let want = [reference(a, &images), reference(b, &images)];
    let server = Server::start(config(a)).unwrap();
    let base = format!("http://{}", server.addr());
    let rt = runtime();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let url = format!("{base}/v2/models/cnn/infer");
        // The load runs until every reload is done (and 60 requests per
        // client at least): a fixed count could end before the first
        // reload on a fast server.
        let reloading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let load = tokio::spawn({
            let (c, url, reloading) = (c.clone(), url.clone(), reloading.clone());
            let bodies: Vec<String> = images
                .iter()
                .map(|i| uint8_body(std::slice::from_ref(i)))
                .collect();
            async move {
                let tasks: Vec<_> = (0..16)
                    .map(|t| {
                        let (c, url, bodies) = (c.clone(), url.clone(), bodies.clone());
                        let reloading = reloading.clone();
                        tokio::spawn(async move {
                            let mut seen = Vec::new();
                            let mut i = 0;
                            while i < 60 || reloading.load(std::sync::atomic::Ordering::SeqCst) {
                                let k = (t + i) % bodies.len();
                                let (status, v) = post(&c, &url, bodies[k].clone()).await;
                                assert_eq!(status, 200, "{v}");
                                let version: u64 =
                                    v["model_version"].as_str().unwrap().parse().unwrap();
                                seen.push((k, version, logits_of(&v)));
                                i += 1;
                            }
                            seen
                        })
                    })
                    .collect();
                let mut all = Vec::new();
                for t in tasks {
                    all.extend(t.await.unwrap());
                }
                all
            }
        });
        // Alternate the served run between a and b while the load runs.
        for i in 0..4 {
            tokio::time::sleep(Duration::from_millis(40)).await;
            let run = if i % 2 == 0 { b } else { a };
            let body = serde_json::json!({"parameters": {"run": run}}).to_string();
            let r = c
                .post(format!("{base}/v2/repository/models/cnn/load"))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        }
        reloading.store(false, std::sync::atomic::Ordering::SeqCst);
        let answers = load.await.unwrap();
        assert!(answers.len() >= 16 * 60, "{} answers", answers.len());
        let mut versions = std::collections::BTreeSet::new();
        for (k, version, logits) in answers {
            // Versions 1 and 3 serve run a, 2 and 4 run b.
            let w = &want[((version + 1) % 2) as usize][k];
            assert_close(&logits, w, &format!("image {k} at version {version}"));
            versions.insert(version);
        }
        assert!(
            versions.len() >= 2,
            "the load saw only versions {versions:?}"
        );
        // A reload that cannot work leaves the old version serving.
        let r = c
            .post(format!("{base}/v2/repository/models/cnn/load"))
            .body(r#"{"parameters":{"run":"/no/such/run"}}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert!(r.text().await.unwrap().contains("still serving"));
        let (status, _) = post(&c, &url, uint8_body(&images[..1])).await;
        assert_eq!(status, 200);
    });
    server.shutdown().unwrap();
}

#[cfg(unix)]
#[test]
fn sighup_reloads_and_sigterm_answers_every_accepted_request_under_load() {
    use std::io::{BufRead, BufReader};
    let (_, run, _) = runs();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpurt"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--quiet",
            "--device",
            "cpu",
            "--run",
        ])
        .arg(format!("cnn={}", run.display()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .split("http://")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_owned();
    let url = format!("http://{addr}/v2/models/cnn/infer");
    let body = uint8_body(&mnist_images(1));
    let rt = runtime();
    let (ok, other) = rt.block_on(async {
        let c = reqwest::Client::new();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (c, url, body, done) = (c.clone(), url.clone(), body.clone(), done.clone());
                tokio::spawn(async move {
                    let (mut ok, mut other) = (0, Vec::new());
                    // Bounded: at most 400 requests per client.
                    for _ in 0..400 {
                        match c
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send()
                            .await
                        {
                            Ok(r) if r.status() == 200 => {
                                if r.bytes().await.is_ok() {
                                    ok += 1;
                                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                }
                            }
                            Ok(r) => other.push(r.status().as_u16()),
                            // Refused or reset: the server no longer accepts.
                            Err(_) => break,
                        }
                    }
                    (ok, other)
                })
            })
            .collect();
        while done.load(std::sync::atomic::Ordering::SeqCst) < 150 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // SIGHUP reloads under load (the served folder again).
        // SAFETY: kill(2) on our own child's pid, which has not been reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
        while done.load(std::sync::atomic::Ordering::SeqCst) < 300 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // SAFETY: kill(2) on our own child's pid, which has not been reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let (mut ok, mut other) = (0u64, Vec::new());
        for t in tasks {
            let (o, e) = t.await.unwrap();
            ok += o;
            other.extend(e);
        }
        (ok, other)
    });
    let status = child.wait().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(status.success(), "exit {status:?}: {rest:?}");
    let last = rest
        .iter()
        .find(|l| l.starts_with("stopped:"))
        .unwrap_or_else(|| panic!("{rest:?}"));
    assert!(
        rest.iter().any(|l| l == "reloaded cnn: version 2"),
        "{rest:?}"
    );
    let nums: Vec<u64> = last.split(' ').filter_map(|w| w.parse().ok()).collect();
    assert_eq!(nums[0], nums[1], "{last}");
    assert!(
        other.iter().all(|&s| s == 503),
        "non-200 answers: {other:?}"
    );
    assert_eq!(
        ok + other.len() as u64,
        nums[0],
        "client saw {ok} answers; server: {last}"
    );
    assert!(ok >= 300);
}

#[test]
fn a_text_model_takes_strings_and_answers_like_the_text_predictor() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("zh");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/zh-news-sample");
    let o = Command::new(env!("CARGO_BIN_EXE_gpurt"))
        .args([
            "train", "--model", "fasttext", "--quiet", "--device", "cpu", "--epochs", "4",
        ])
        .args([
            "--vocab-size",
            "300",
            "--batch",
            "8",
            "--val-split",
            "0",
            "--data",
        ])
        .arg(format!("text:{}", data.display()))
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let texts = [
        "决赛第八十九分钟，替补前锋头球进球。",
        "央行宣布下调存款准备金率。",
        "",
    ];
    let mut tp = gpurt::embed::TextPredictor::from_run(&run, 4, &DeviceSpec::Cpu).unwrap();
    let classes = tp.classes().to_vec();
    let want = tp.run(&texts).unwrap()[..3 * classes.len()].to_vec();
    let mut cfg = config(&run);
    cfg.models = vec![("news".into(), run.clone())];
    let server = Server::start(cfg).unwrap();
    let base = format!("http://{}", server.addr());
    runtime().block_on(async {
        let c = reqwest::Client::new();
        let body = serde_json::json!({"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": texts}]});
        let (status, v) = post(&c, &format!("{base}/v2/models/news/infer"), body.to_string()).await;
        assert_eq!(status, 200, "{v}");
        assert_close(&logits_of(&v), &want, "text logits");
        let names: Vec<String> = serde_json::from_value(v["top"].as_array().unwrap().iter().map(|t| t[0]["name"].clone()).collect()).unwrap();
        assert!(names.iter().all(|n| classes.contains(n)), "{names:?}");
        // Numbers for a text model, and an image datatype, are refused.
        let body = serde_json::json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [1]}]});
        let (status, v) = post(&c, &format!("{base}/v2/models/news/infer"), body.to_string()).await;
        assert_eq!((status, v["field"].as_str()), (400, Some("inputs[0].data")), "{v}");
        let body = serde_json::json!({"inputs": [{"name": "text", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]});
        let (status, v) = post(&c, &format!("{base}/v2/models/news/infer"), body.to_string()).await;
        assert_eq!((status, v["field"].as_str()), (400, Some("inputs[0].datatype")), "{v}");
        let meta = c.get(format!("{base}/v2/models/news")).send().await.unwrap().text().await.unwrap();
        let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
        assert_eq!(meta["inputs"][0]["name"], "text");
        assert_eq!(meta["parameters"]["classes"], serde_json::json!(classes));
    });
    server.shutdown().unwrap();
}
