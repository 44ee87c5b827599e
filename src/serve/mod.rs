//! `gpurt serve`: trained runs behind an HTTP/1.1 inference API in the
//! KServe v2 / Triton layout, with dynamic batching, backpressure,
//! Prometheus metrics, hot reload and graceful shutdown.
//!
//! Threads: tokio runs the HTTP side (parsing, decoding, encoding); each
//! model has its own worker threads (one per core on the CPU, one per
//! device otherwise), each owning compiled predictors. The two meet at a
//! bounded queue per model (see [`batcher`]).

mod numbers;
pub mod request;

#[cfg(feature = "serve")]
pub mod batcher;
#[cfg(feature = "serve")]
mod http;
#[cfg(feature = "serve")]
pub mod metrics;
#[cfg(feature = "serve")]
pub mod model;

#[cfg(feature = "serve")]
pub use server::*;

#[cfg(feature = "serve")]
mod server {
    use super::http::{self, AppState};
    use super::model::{Limits, Model};
    use crate::error::{Error, Result};
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::Duration;

    /// Everything `gpurt serve` is told.
    #[derive(Clone, Debug)]
    pub struct ServeConfig {
        /// (name, run folder) of each model.
        pub models: Vec<(String, PathBuf)>,
        pub addr: SocketAddr,
        pub limits: Limits,
        /// Most examples in one request.
        pub max_request_rows: usize,
        /// Largest request body, in bytes.
        pub max_body: usize,
        /// Per-request limit from arrival to response.
        pub timeout: Duration,
        /// HTTP threads (tokio workers).
        pub http_threads: usize,
        /// One log line per request on stderr.
        pub access_log: bool,
        /// Whether a load request may name another run folder (otherwise
        /// it can only reload the folder each model was started with).
        pub allow_load_path: bool,
    }

    /// A running server. Dropping it without [`Server::shutdown`] leaves
    /// the threads to end with the process.
    pub struct Server {
        addr: SocketAddr,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<JoinHandle<Result<http::Totals>>>,
        state: AppState,
    }

    impl Server {
        /// Load and compile every model, bind the address and start
        /// answering. Errors (a bad run folder, an address in use) come
        /// back before anything is served.
        pub fn start(cfg: ServeConfig) -> Result<Server> {
            let mut models = Vec::new();
            let mut workers = Vec::new();
            for (name, run) in &cfg.models {
                if models.iter().any(|m: &Arc<Model>| &m.name == name) {
                    return Err(Error::Usage(format!("model name '{name}' given twice")));
                }
                let (m, w) = Model::start(name, run.clone(), cfg.limits.clone())?;
                models.push(m);
                workers.extend(w);
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(cfg.http_threads.max(1))
                .thread_name("gpurt-http")
                .enable_all()
                .build()
                .map_err(|e| Error::Usage(format!("cannot start the HTTP runtime: {e}")))?;
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind(cfg.addr))
                .map_err(|e| Error::Usage(format!("cannot listen on {}: {e}", cfg.addr)))?;
            let addr = listener
                .local_addr()
                .map_err(|e| Error::Usage(format!("{}: {e}", cfg.addr)))?;
            let state = AppState::new(models, &cfg);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let serve_state = state.clone();
            let close_state = state.clone();
            let thread = std::thread::Builder::new()
                .name("gpurt-serve".into())
                .spawn(move || {
                    let totals = runtime.block_on(http::serve(listener, serve_state, async {
                        let _ = stopped.await;
                    }));
                    // Every handler has returned: closing the queues lets
                    // the workers finish what is queued and end.
                    close_state.close_models();
                    drop(runtime);
                    for w in workers {
                        let _ = w.join();
                    }
                    totals
                })
                .map_err(|e| Error::Usage(format!("cannot start the server thread: {e}")))?;
            Ok(Server {
                addr,
                stop: Some(stop),
                thread: Some(thread),
                state,
            })
        }

        /// The bound address (the port is the OS's choice for port 0).
        pub fn addr(&self) -> SocketAddr {
            self.addr
        }

        /// Reload every model from its run folder (what SIGHUP does).
        pub fn reload_all(&self) -> Vec<(String, Result<u64>)> {
            self.state.reload_all()
        }

        /// Stop accepting connections, answer every request already
        /// accepted, stop the workers. Returns how many requests were
        /// accepted and answered.
        pub fn shutdown(mut self) -> Result<http::Totals> {
            if let Some(s) = self.stop.take() {
                let _ = s.send(());
            }
            match self.thread.take().map(|t| t.join()) {
                Some(Ok(r)) => r,
                _ => Err(Error::Usage("the server thread panicked".into())),
            }
        }
    }

    pub use super::http::Totals;

    /// Serve until SIGTERM or Ctrl-C (graceful: in-flight requests are
    /// answered); SIGHUP reloads every model.
    pub fn run_until_signal(cfg: ServeConfig) -> Result<Totals> {
        let server = Server::start(cfg.clone())?;
        let names: Vec<String> = cfg.models.iter().map(|(n, _)| n.clone()).collect();
        eprintln!(
            "serving {} on http://{} (max batch {}, {} worker(s) per model); SIGHUP reloads, SIGTERM stops",
            names.join(", "),
            server.addr(),
            cfg.limits.max_batch,
            cfg.limits.workers
        );
        wait_for_signals(&server)?;
        eprintln!("shutting down: answering the requests in flight");
        let totals = server.shutdown()?;
        eprintln!(
            "stopped: {} requests accepted, {} answered",
            totals.accepted, totals.answered
        );
        Ok(totals)
    }

    #[cfg(unix)]
    fn wait_for_signals(server: &Server) -> Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Usage(format!("signal runtime: {e}")))?;
        rt.block_on(async {
            let sig = |k| signal(k).map_err(|e| Error::Usage(format!("signal handler: {e}")));
            let mut term = sig(SignalKind::terminate())?;
            let mut int = sig(SignalKind::interrupt())?;
            let mut hup = sig(SignalKind::hangup())?;
            loop {
                tokio::select! {
                    _ = term.recv() => return Ok(()),
                    _ = int.recv() => return Ok(()),
                    _ = hup.recv() => {
                        for (name, r) in server.reload_all() {
                            match r {
                                Ok(g) => eprintln!("reloaded {name}: version {g}"),
                                Err(e) => eprintln!("reload of {name} failed, still serving the old version: {e}"),
                            }
                        }
                    }
                }
            }
        })
    }

    #[cfg(not(unix))]
    fn wait_for_signals(_server: &Server) -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Usage(format!("signal runtime: {e}")))?;
        rt.block_on(tokio::signal::ctrl_c())
            .map_err(|e| Error::Usage(format!("signal handler: {e}")))
    }
}
