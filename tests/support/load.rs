//! The one load generator of the suite: GETs through the proxy, either at a
//! paced rate (open loop: each request in a task of its own, so a slow answer
//! never slows the pace) or from workers that send the next request when the
//! last is answered (closed loop), on pooled HTTP/1.1, pooled h2c, or a new
//! connection per request. Bounded in count and in time, always.
//!
//! What is kept of each answer is the caller's choice: [`LoadPlan::start`]
//! takes a function from the reply to the record (`"200 stable"`, the
//! upstream's name, ...), so a run of thousands of requests keeps no bodies.
//! Each [`Sample`] also carries when its request left and a caller's tag read
//! before and after it (the step `/status` said, a config epoch), which is how
//! tests relate answers to what the control plane did meanwhile.
//!
//! ```ignore
//! let load = LoadPlan::paced(f.url("/"), 200).max_requests(4_000).start(outcome);
//! wait_until(LIMIT, "a trip", || ...).await;
//! let samples = load.finish().await;
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use hyper_util::rt::TokioIo;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::client::{get, h2c_client, http1_client, read_answer, try_send, Answer, HttpClient};
use super::{wait_until, within, Body, BoxError};

/// How long [`Load::finish`] may take to collect the requests still out.
const FINISH_LIMIT: Duration = Duration::from_secs(60);

/// How a worker reaches the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A pooled HTTP/1.1 client with keep-alive.
    KeepAlive,
    /// A pooled HTTP/2 client, cleartext with prior knowledge.
    H2c,
    /// A TCP connection of its own per request, closed after the answer.
    NewConnection,
}

/// Why a request got no answer.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The exchange failed (connect, reset, a broken body ...).
    Error(String),
    /// Nothing complete came back within the plan's answer limit.
    NoAnswer,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Error(e) => write!(f, "error {e}"),
            Failure::NoAnswer => f.write_str("no answer"),
        }
    }
}

/// What one request came back with, handed to the caller's recorder.
pub type Reply = Result<Answer, Failure>;

/// One request of the load, as the caller chose to record it.
#[derive(Debug, Clone)]
pub struct Sample<R> {
    /// The request's number, from 0 in the order they left.
    pub n: u64,
    /// When the request left.
    pub at: Instant,
    /// The tag when the request left ...
    pub before: u64,
    /// ... and when its answer was complete.
    pub after: u64,
    pub record: R,
}

enum Shape {
    Paced { rate: u32 },
    Workers { via: Vec<Via>, pause: Duration },
}

/// Request number `n` of worker `w`.
type MakeRequest = Arc<dyn Fn(usize, u64) -> Request<Body> + Send + Sync>;

/// What to send, how, and for how long; [`LoadPlan::start`] runs it.
pub struct LoadPlan {
    url: String,
    numbered: bool,
    make: Option<MakeRequest>,
    shape: Shape,
    client: Option<HttpClient>,
    max_requests: u64,
    max_run: Duration,
    answer_limit: Duration,
    tag: Arc<AtomicU64>,
}

impl LoadPlan {
    /// `rate` GETs of `url` a second, each in a task of its own.
    pub fn paced(url: String, rate: u32) -> LoadPlan {
        LoadPlan::new(url, Shape::Paced { rate })
    }

    /// One worker per entry of `via`, each sending its next GET of `url` as
    /// soon as the last is answered.
    pub fn workers(url: String, via: &[Via]) -> LoadPlan {
        LoadPlan::new(
            url,
            Shape::Workers {
                via: via.to_vec(),
                pause: Duration::ZERO,
            },
        )
    }

    fn new(url: String, shape: Shape) -> LoadPlan {
        LoadPlan {
            url,
            numbered: false,
            make: None,
            shape,
            client: None,
            max_requests: 10_000,
            max_run: Duration::from_secs(60),
            answer_limit: Duration::from_secs(30),
            tag: Arc::default(),
        }
    }

    /// Stops after this many requests in all (default 10,000).
    pub fn max_requests(mut self, n: u64) -> LoadPlan {
        self.max_requests = n;
        self
    }

    /// Sends nothing after this long (default 60 s).
    pub fn max_run(mut self, limit: Duration) -> LoadPlan {
        self.max_run = limit;
        self
    }

    /// A request with no complete answer after this long is a
    /// [`Failure::NoAnswer`] (default 30 s).
    pub fn answer_limit(mut self, limit: Duration) -> LoadPlan {
        self.answer_limit = limit;
        self
    }

    /// Workers wait this long between an answer and their next request.
    pub fn pause(mut self, pause: Duration) -> LoadPlan {
        if let Shape::Workers { pause: p, .. } = &mut self.shape {
            *p = pause;
        }
        self
    }

    /// Read before and after every request into [`Sample::before`] and
    /// [`Sample::after`].
    pub fn tag(mut self, tag: Arc<AtomicU64>) -> LoadPlan {
        self.tag = tag;
        self
    }

    /// Each request's path gets `/WORKER/N` appended, so an upstream's log
    /// tells requests apart.
    pub fn numbered(mut self) -> LoadPlan {
        self.numbered = true;
        self
    }

    /// Request number `n` is `make(n)` instead of a GET of the plan's URL
    /// (its URI names the address a new connection goes to).
    pub fn request(
        mut self,
        make: impl Fn(u64) -> Request<Body> + Send + Sync + 'static,
    ) -> LoadPlan {
        self.make = Some(Arc::new(move |_, n| make(n)));
        self
    }

    /// The requests go through `client` (the paced load's all, the
    /// keep-alive workers' too); by default a pooled HTTP/1.1 client of the
    /// load's own (one per worker).
    pub fn client(mut self, client: HttpClient) -> LoadPlan {
        self.client = Some(client);
        self
    }

    /// Starts sending; `record` turns each reply into what is kept of it.
    pub fn start<R, F>(self, record: F) -> Load<R>
    where
        R: Send + 'static,
        F: Fn(Reply) -> R + Send + Sync + 'static,
    {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            samples: Mutex::new(Vec::new()),
            record,
            tag: self.tag.clone(),
            max_requests: self.max_requests,
            answer_limit: self.answer_limit,
        });
        let started = Instant::now();
        let mut tasks = Vec::new();
        let make = self.make.clone().unwrap_or_else(|| {
            let (url, numbered) = (self.url.clone(), self.numbered);
            Arc::new(move |worker, n| get(&numbered_url(&url, numbered, worker, n), None))
        });
        match &self.shape {
            Shape::Paced { rate } => {
                let client = self.client.clone().unwrap_or_else(http1_client);
                let (shared, make) = (shared.clone(), make.clone());
                let (rate, max_run) = (*rate, self.max_run);
                tasks.push(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut requests = JoinSet::new();
                    while let Some(i) = shared.next(started, max_run) {
                        tick.tick().await;
                        let request = make(0, i);
                        let (client, shared) = (client.clone(), shared.clone());
                        requests.spawn(async move {
                            shared.exchange(Via::KeepAlive, &client, i, request).await;
                        });
                        while requests.try_join_next().is_some() {}
                    }
                    while requests.join_next().await.is_some() {}
                }));
            }
            Shape::Workers { via, pause } => {
                for (worker, via) in via.iter().copied().enumerate() {
                    let (shared, make) = (shared.clone(), make.clone());
                    let shared_client = self.client.clone();
                    let (pause, max_run) = (*pause, self.max_run);
                    tasks.push(tokio::spawn(async move {
                        let client = match (via, &shared_client) {
                            (Via::H2c, _) => h2c_client(),
                            (_, Some(client)) => client.clone(),
                            (_, None) => http1_client(),
                        };
                        while let Some(i) = shared.next(started, max_run) {
                            shared.exchange(via, &client, i, make(worker, i)).await;
                            if !pause.is_zero() {
                                tokio::time::sleep(pause).await;
                            }
                        }
                    }));
                }
            }
        }
        Load { shared, tasks }
    }
}

fn numbered_url(url: &str, numbered: bool, worker: usize, i: u64) -> String {
    if numbered {
        format!("{}/{worker}/{i}", url.trim_end_matches('/'))
    } else {
        url.to_string()
    }
}

struct Shared<R, F> {
    stop: AtomicBool,
    sent: AtomicU64,
    answered: AtomicU64,
    in_flight: AtomicU64,
    samples: Mutex<Vec<Sample<R>>>,
    record: F,
    tag: Arc<AtomicU64>,
    max_requests: u64,
    answer_limit: Duration,
}

impl<R, F: Fn(Reply) -> R> Shared<R, F> {
    /// The number of the next request, or `None` once the load must stop.
    fn next(&self, started: Instant, max_run: Duration) -> Option<u64> {
        if self.stop.load(Ordering::SeqCst) || started.elapsed() >= max_run {
            return None;
        }
        let i = self.sent.fetch_add(1, Ordering::SeqCst);
        if i >= self.max_requests {
            self.sent.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(i)
    }

    async fn exchange(&self, via: Via, client: &HttpClient, n: u64, request: Request<Body>) {
        // Counted in flight before it leaves, so a request that reaches an
        // upstream later was in flight when the count was read.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let at = Instant::now();
        let before = self.tag.load(Ordering::SeqCst);
        let uri = request.uri().clone();
        let exchange = async {
            match via {
                Via::NewConnection => one_connection(request).await,
                _ => try_send(client, request).await,
            }
        };
        let reply = match tokio::time::timeout(self.answer_limit, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(Failure::Error(format!("{via:?} {uri}: {e}"))),
            Err(_) => Err(Failure::NoAnswer),
        };
        let after = self.tag.load(Ordering::SeqCst);
        let record = (self.record)(reply);
        self.samples.lock().expect("samples").push(Sample {
            n,
            at,
            before,
            after,
            record,
        });
        self.answered.fetch_add(1, Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running load; [`Load::finish`] stops it and hands back every sample.
pub struct Load<R> {
    shared: Arc<dyn Counters<R>>,
    tasks: Vec<JoinHandle<()>>,
}

/// The shared state without the recorder's type, so [`Load`] names only `R`.
trait Counters<R>: Send + Sync {
    fn stop(&self);
    fn sent(&self) -> u64;
    fn answered(&self) -> u64;
    fn in_flight(&self) -> u64;
    fn samples(&self) -> &Mutex<Vec<Sample<R>>>;
}

impl<R: Send, F: Fn(Reply) -> R + Send + Sync> Counters<R> for Shared<R, F> {
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
    fn answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }
    fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }
    fn samples(&self) -> &Mutex<Vec<Sample<R>>> {
        &self.samples
    }
}

impl<R> Load<R> {
    /// Requests sent so far (counted as they leave).
    pub fn sent(&self) -> u64 {
        self.shared.sent()
    }

    /// Requests answered or failed so far.
    pub fn answered(&self) -> u64 {
        self.shared.answered()
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight()
    }

    /// Samples so far for which `f` holds.
    pub fn count(&self, f: impl Fn(&Sample<R>) -> bool) -> usize {
        let samples = self.shared.samples().lock().expect("samples");
        samples.iter().filter(|s| f(s)).count()
    }

    /// Waits until `n` more requests have been answered (or failed).
    pub async fn progress(&self, n: u64) {
        let target = self.answered() + n;
        wait_until(FINISH_LIMIT, "the load goes on", || {
            self.answered() >= target
        })
        .await;
    }

    /// Stops sending, waits for the requests still out; every sample, in the
    /// order the requests left.
    pub async fn finish(self) -> Vec<Sample<R>> {
        self.shared.stop();
        self.join().await
    }

    /// Waits until the load has sent all it was allowed to and every answer
    /// is in; every sample, in the order the requests left.
    pub async fn join(self) -> Vec<Sample<R>> {
        for task in self.tasks {
            within(FINISH_LIMIT, "the load to finish", task)
                .await
                .expect("load task panicked");
        }
        let mut samples = std::mem::take(&mut *self.shared.samples().lock().expect("samples"));
        samples.sort_by_key(|s| s.at);
        samples
    }
}

// ---------------------------------------------------------------- recorders

/// `"STATUS UPSTREAM"` (`veer` when the proxy answered itself), `"error ..."`
/// or `"no answer"`.
pub fn status_and_upstream(reply: Reply) -> String {
    match reply {
        Ok(answer) => format!(
            "{} {}",
            answer.status.as_u16(),
            answer.upstream().unwrap_or("veer")
        ),
        Err(failure) => failure.to_string(),
    }
}

/// The upstream that answered a 200; anything else, described, as an `Err`.
pub fn upstream_of_200(reply: Reply) -> Result<String, String> {
    match reply {
        Ok(answer) if answer.status == 200 => Ok(answer.upstream().unwrap_or("(none)").to_string()),
        Ok(answer) => Err(format!(
            "{} x-veer-error={:?} {}",
            answer.status,
            answer.header("x-veer-error"),
            answer.text().trim()
        )),
        Err(failure) => Err(failure.to_string()),
    }
}

/// Samples by record (`"200 stable"`: count).
pub fn tally<R: Ord + Clone>(samples: &[Sample<R>]) -> std::collections::BTreeMap<R, u64> {
    let mut out = std::collections::BTreeMap::new();
    for s in samples {
        *out.entry(s.record.clone()).or_insert(0) += 1;
    }
    out
}

/// One request on a connection of its own, closed afterwards.
async fn one_connection(request: Request<Body>) -> Result<Answer, BoxError> {
    let authority = request
        .uri()
        .authority()
        .ok_or("the load's URL has no authority")?
        .clone();
    let addr: SocketAddr = authority.as_str().parse()?;
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let response = sender.send_request(request).await?;
    let answer = read_answer(response).await;
    drop(sender);
    let _ = driver.await;
    answer
}
