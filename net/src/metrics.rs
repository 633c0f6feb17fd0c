//! Metrics for `GET /metrics`: the catalogue of every family the node exports, what a
//! shard counts in the network layer ([`Metrics`]), and the merge and encoding of the
//! shards' samples into Prometheus's text format.
//!
//! Each shard counts on its own executor without atomics. A scrape asks every shard
//! for its samples ([`Sample`], sent between shards as JSON), sums those that name the
//! same series, and encodes the sums with the `prometheus` crate's text encoder.
//! Per-shard values (raft indexes, storage) carry a `shard` label so they never sum.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

/// What kind of metric a family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric family: its full name, kind and help text.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

const fn family(name: &'static str, kind: Kind, help: &'static str) -> Family {
    Family { name, kind, help }
}

/// Every family the node exports. A sample naming another is a bug (and is dropped).
pub const FAMILIES: &[Family] = &[
    // Requests.
    family("repospanner_pushes_total", Kind::Counter, "Pushes by outcome: accepted (every ref updated), refused (by the request, a check, a hook, or a reader asking to push) or failed (storage or replication)."),
    family("repospanner_fetches_total", Kind::Counter, "Fetches (kind clone when the client has nothing, else fetch) by outcome: sent, failed, or abandoned by the client."),
    family("repospanner_push_received_bytes_total", Kind::Counter, "Bytes of push bodies received."),
    family("repospanner_pack_sent_bytes_total", Kind::Counter, "Bytes of packs handed to fetching clients' connections."),
    family("repospanner_push_duration_seconds", Kind::Histogram, "Time from a push's first byte to its report, sent once a majority holds it."),
    family("repospanner_push_phase_duration_seconds", Kind::Histogram, "Time of each phase of a push: receive (the body arriving and read), resolve, connect, hooks, store (a majority holds the objects) and refs (the ref entry committed and applied)."),
    family("repospanner_fetch_duration_seconds", Kind::Histogram, "Time to plan and send a fetch's pack."),
    family("repospanner_http_requests_in_flight", Kind::Gauge, "User requests being served, until their response is sent."),
    family("repospanner_memory_budget_used_bytes", Kind::Gauge, "Bytes of request bodies held against the memory budget."),
    family("repospanner_memory_budget_bytes", Kind::Gauge, "The memory budget for request bodies, summed over the shards (each takes limits.buffered_bytes_max / shards, at least limits.pack_bytes_max + 1 MiB)."),
    family("repospanner_filesystem_free_bytes", Kind::Gauge, "Free bytes on the store's file system."),
    family("repospanner_disk_reserve_bytes", Kind::Gauge, "Free space below which pushes are refused (limits.disk_reserve_bytes)."),
    family("process_resident_memory_bytes", Kind::Gauge, "Resident memory of the node's process."),
    // Raft, per shard.
    family("repospanner_raft_term", Kind::Gauge, "The shard's raft term."),
    family("repospanner_raft_last_log_index", Kind::Gauge, "The last index of the shard's raft log."),
    family("repospanner_raft_committed_index", Kind::Gauge, "The highest raft index this node knows committed."),
    family("repospanner_raft_applied_index", Kind::Gauge, "The highest raft index applied to the shard's state."),
    family("repospanner_raft_leader", Kind::Gauge, "1 if this node leads the shard's group."),
    family("repospanner_raft_has_leader", Kind::Gauge, "1 if the shard's group has a leader this node knows of."),
    family("repospanner_raft_leader_changes_total", Kind::Counter, "Times the leader this node knows of changed."),
    family("repospanner_raft_members", Kind::Gauge, "Voting members of the shard's group."),
    family("repospanner_raft_replication_lag_entries", Kind::Gauge, "Raft entries a member lacks of the leader's log (exported by the leader)."),
    family("repospanner_repositories", Kind::Gauge, "Repositories the shard holds."),
    family("repospanner_objects", Kind::Gauge, "Objects the shard's store holds."),
    // Storage, per shard.
    family("repospanner_storage_appends_total", Kind::Counter, "Appends to the shard's store."),
    family("repospanner_storage_batches_total", Kind::Counter, "Group-commit batches written (one write and one sync each)."),
    family("repospanner_storage_written_bytes_total", Kind::Counter, "Bytes written to the store's segments."),
    family("repospanner_storage_checkpoints_total", Kind::Counter, "Index checkpoints written."),
    family("repospanner_storage_sync_duration_seconds", Kind::Histogram, "Time for one batch to become durable: its write and fdatasync (or an O_DSYNC write), and a new segment's directory sync."),
    family("repospanner_storage_batch_appends", Kind::Histogram, "Appends per group-commit batch."),
    family("repospanner_storage_corruptions", Kind::Gauge, "Damaged regions the store knows of."),
    family("repospanner_storage_segments", Kind::Gauge, "Segment files, as compaction last measured."),
    family("repospanner_storage_segment_bytes", Kind::Gauge, "Bytes of segment files, as compaction last measured."),
    family("repospanner_storage_dead_bytes", Kind::Gauge, "Bytes of segment files no live record uses, as compaction last measured."),
    family("repospanner_compaction_segments_total", Kind::Counter, "Segments compaction removed."),
    family("repospanner_compaction_freed_bytes_total", Kind::Counter, "Bytes of segment files compaction removed."),
    family("repospanner_compaction_moved_bytes_total", Kind::Counter, "Bytes of live records compaction copied."),
    family("repospanner_scrub_read_bytes_total", Kind::Counter, "Bytes of the store scrub has read again and checked (its progress)."),
    family("repospanner_scrub_last_finished_timestamp_seconds", Kind::Gauge, "When the shard's last scrub finished (absent before the first)."),
    family("repospanner_scrub_last_records", Kind::Gauge, "Records the shard's last scrub read."),
    family("repospanner_scrub_last_damaged_objects", Kind::Gauge, "Damaged objects the shard's last scrub found."),
    family("repospanner_scrub_last_unrepaired_objects", Kind::Gauge, "Objects the shard's last scrub left damaged."),
    family("repospanner_scrub_last_missing_objects", Kind::Gauge, "Objects the shard's last scrub found missing from a ref's closure."),
];

/// One series' value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Counter(u64),
    Gauge(f64),
    /// `counts[i]` values at most `bounds[i]`, the last count those above every bound.
    Histogram {
        bounds: Vec<f64>,
        counts: Vec<u64>,
        sum: f64,
    },
}

/// One series: a family's name, its labels and its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: Value,
}

impl Sample {
    pub fn new(name: &str, labels: &[(&str, &str)], value: Value) -> Sample {
        Sample {
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            value,
        }
    }

    pub fn gauge(name: &str, labels: &[(&str, &str)], v: f64) -> Sample {
        Sample::new(name, labels, Value::Gauge(v))
    }

    pub fn counter(name: &str, labels: &[(&str, &str)], v: u64) -> Sample {
        Sample::new(name, labels, Value::Counter(v))
    }
}

/// Sums samples of the same series (same name and labels). Histograms with other
/// bounds, or values of another kind, than the first of their series are dropped.
pub fn merge(samples: impl IntoIterator<Item = Sample>) -> Vec<Sample> {
    let mut out: BTreeMap<(String, Vec<(String, String)>), Value> = BTreeMap::new();
    for s in samples {
        let key = (s.name, s.labels);
        let Some(have) = out.get_mut(&key) else {
            out.insert(key, s.value);
            continue;
        };
        match (have, s.value) {
            (Value::Counter(a), Value::Counter(b)) => *a = a.saturating_add(b),
            (Value::Gauge(a), Value::Gauge(b)) => *a += b,
            (
                Value::Histogram {
                    bounds,
                    counts,
                    sum,
                },
                Value::Histogram {
                    bounds: b,
                    counts: c,
                    sum: s,
                },
            ) if *bounds == b && counts.len() == c.len() => {
                for (x, y) in counts.iter_mut().zip(c) {
                    *x = x.saturating_add(y);
                }
                *sum += s;
            }
            _ => {}
        }
    }
    out.into_iter()
        .map(|((name, labels), value)| Sample {
            name,
            labels,
            value,
        })
        .collect()
}

/// The text exposition of `samples` (merged first), families in catalogue order.
pub fn encode(samples: Vec<Sample>) -> String {
    use prometheus::proto;
    let mut by_family: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for s in merge(samples) {
        by_family.entry(s.name.clone()).or_default().push(s);
    }
    let mut families = Vec::new();
    for f in FAMILIES {
        let Some(samples) = by_family.remove(f.name) else {
            continue;
        };
        let mut mf = proto::MetricFamily::default();
        mf.set_name(f.name.to_owned());
        mf.set_help(f.help.to_owned());
        mf.set_field_type(match f.kind {
            Kind::Counter => proto::MetricType::COUNTER,
            Kind::Gauge => proto::MetricType::GAUGE,
            Kind::Histogram => proto::MetricType::HISTOGRAM,
        });
        for s in samples {
            let mut m = proto::Metric::default();
            m.set_label(
                s.labels
                    .into_iter()
                    .map(|(k, v)| {
                        let mut l = proto::LabelPair::default();
                        l.set_name(k);
                        l.set_value(v);
                        l
                    })
                    .collect(),
            );
            match (f.kind, s.value) {
                (Kind::Counter, Value::Counter(v)) => {
                    let mut c = proto::Counter::default();
                    c.set_value(v as f64);
                    m.set_counter(c);
                }
                (Kind::Gauge, Value::Gauge(v)) => {
                    let mut g = proto::Gauge::default();
                    g.set_value(v);
                    m.set_gauge(g);
                }
                (
                    Kind::Histogram,
                    Value::Histogram {
                        bounds,
                        counts,
                        sum,
                    },
                ) => m.set_histogram(histogram(&bounds, &counts, sum)),
                _ => continue,
            }
            mf.mut_metric().push(m);
        }
        if !mf.get_metric().is_empty() {
            families.push(mf);
        }
    }
    let mut out = String::new();
    // Only an empty family or one without a name fails, and neither is built here.
    if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&families, &mut out) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    out
}

fn histogram(bounds: &[f64], counts: &[u64], sum: f64) -> prometheus::proto::Histogram {
    use prometheus::proto;
    let mut h = proto::Histogram::default();
    let mut cumulative = 0u64;
    let mut buckets = Vec::with_capacity(bounds.len());
    for (bound, count) in bounds.iter().zip(counts) {
        cumulative = cumulative.saturating_add(*count);
        let mut b = proto::Bucket::default();
        b.set_upper_bound(*bound);
        b.set_cumulative_count(cumulative);
        buckets.push(b);
    }
    h.set_bucket(buckets);
    h.set_sample_count(counts.iter().fold(0u64, |a, c| a.saturating_add(*c)));
    h.set_sample_sum(sum);
    h
}

/// A histogram a shard fills: fixed bounds, one count per bucket and one above them.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: RefCell<Vec<u64>>,
    sum: Cell<f64>,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: RefCell::new(vec![0; bounds.len() + 1]),
            sum: Cell::new(0.0),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        if let Some(c) = self.counts.borrow_mut().get_mut(i) {
            *c += 1;
        }
        self.sum.set(self.sum.get() + v);
    }

    pub fn sample(&self, name: &str, labels: &[(&str, &str)]) -> Sample {
        Sample::new(
            name,
            labels,
            Value::Histogram {
                bounds: self.bounds.to_vec(),
                counts: self.counts.borrow().clone(),
                sum: self.sum.get(),
            },
        )
    }
}

/// Bounds for request durations, in seconds.
pub const SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0,
];

/// How a push ended (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Accepted,
    Refused,
    Failed,
}

impl PushOutcome {
    const ALL: [PushOutcome; 3] = [Self::Accepted, Self::Refused, Self::Failed];

    fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }

    /// The outcome of a push answered with `status` before any report: refused for
    /// the client's errors, failed for the server's.
    pub fn of_status(status: hyper::StatusCode) -> PushOutcome {
        if status.is_server_error() {
            Self::Failed
        } else if status.is_success() {
            Self::Accepted
        } else {
            Self::Refused
        }
    }
}

/// How a fetch ended (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    Sent,
    Failed,
    Abandoned,
}

impl FetchOutcome {
    const ALL: [FetchOutcome; 3] = [Self::Sent, Self::Failed, Self::Abandoned];

    fn label(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Abandoned => "abandoned",
        }
    }
}

/// The phases [`crate::git::receive::receive`] marks, and `receive` before them.
pub const PUSH_PHASES: &[&str] = &["receive", "resolve", "connect", "hooks", "store", "refs"];

/// What one shard's network layer counts.
#[derive(Debug)]
pub struct Metrics {
    pushes: [Cell<u64>; 3],
    /// `[clone, fetch]` by [`FetchOutcome`].
    fetches: [[Cell<u64>; 3]; 2],
    received_bytes: Cell<u64>,
    sent_bytes: Cell<u64>,
    in_flight: Rc<Cell<u64>>,
    push_seconds: Histogram,
    phase_seconds: Vec<Histogram>,
    fetch_seconds: [Histogram; 2],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            pushes: Default::default(),
            fetches: Default::default(),
            received_bytes: Cell::new(0),
            sent_bytes: Cell::new(0),
            in_flight: Rc::new(Cell::new(0)),
            push_seconds: Histogram::new(SECONDS),
            phase_seconds: PUSH_PHASES
                .iter()
                .map(|_| Histogram::new(SECONDS))
                .collect(),
            fetch_seconds: [Histogram::new(SECONDS), Histogram::new(SECONDS)],
        }
    }
}

/// A user request being served, counted in [`Metrics`] until dropped.
#[derive(Debug)]
pub struct InFlight(Rc<Cell<u64>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// A response body that keeps its request [`InFlight`] until it is sent whole, or
/// dropped (the client went away).
struct CountedBody {
    body: crate::http::Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for CountedBody {
    type Data = crate::piece::Piece;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        self.body.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// `response`, its request counted in flight until its body is sent.
pub fn counted_response(
    response: hyper::Response<crate::http::Body>,
    in_flight: InFlight,
) -> hyper::Response<crate::http::Body> {
    response.map(|body| -> crate::http::Body {
        Box::pin(CountedBody {
            body,
            _in_flight: in_flight,
        })
    })
}

fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get().saturating_add(n));
}

impl Metrics {
    pub fn push_done(&self, outcome: PushOutcome) {
        add(&self.pushes[outcome as usize], 1);
    }

    /// A push that got a report: its outcome, its time from the first byte, and each
    /// phase's (named as in [`PUSH_PHASES`]).
    pub fn push_reported(
        &self,
        outcome: PushOutcome,
        total: std::time::Duration,
        phases: &[(&'static str, std::time::Duration)],
    ) {
        self.push_done(outcome);
        self.push_seconds.observe(total.as_secs_f64());
        for (name, d) in phases {
            if let Some(i) = PUSH_PHASES.iter().position(|p| p == name) {
                self.phase_seconds[i].observe(d.as_secs_f64());
            }
        }
    }

    pub fn fetch_done(&self, clone: bool, outcome: FetchOutcome, took: std::time::Duration) {
        let kind = usize::from(!clone);
        add(&self.fetches[kind][outcome as usize], 1);
        if outcome == FetchOutcome::Sent {
            self.fetch_seconds[kind].observe(took.as_secs_f64());
        }
    }

    pub fn received(&self, bytes: usize) {
        add(&self.received_bytes, bytes as u64);
    }

    pub fn sent(&self, bytes: usize) {
        add(&self.sent_bytes, bytes as u64);
    }

    pub fn in_flight(&self) -> InFlight {
        add(&self.in_flight, 1);
        InFlight(self.in_flight.clone())
    }

    /// This shard's samples.
    pub fn samples(&self) -> Vec<Sample> {
        let mut out = Vec::new();
        for o in PushOutcome::ALL {
            let v = self.pushes[o as usize].get();
            out.push(Sample::counter(
                "repospanner_pushes_total",
                &[("outcome", o.label())],
                v,
            ));
        }
        for (k, kind) in ["clone", "fetch"].iter().enumerate() {
            for o in FetchOutcome::ALL {
                let v = self.fetches[k][o as usize].get();
                out.push(Sample::counter(
                    "repospanner_fetches_total",
                    &[("kind", kind), ("outcome", o.label())],
                    v,
                ));
            }
            out.push(
                self.fetch_seconds[k]
                    .sample("repospanner_fetch_duration_seconds", &[("kind", kind)]),
            );
        }
        out.push(Sample::counter(
            "repospanner_push_received_bytes_total",
            &[],
            self.received_bytes.get(),
        ));
        out.push(Sample::counter(
            "repospanner_pack_sent_bytes_total",
            &[],
            self.sent_bytes.get(),
        ));
        out.push(Sample::gauge(
            "repospanner_http_requests_in_flight",
            &[],
            self.in_flight.get() as f64,
        ));
        out.push(
            self.push_seconds
                .sample("repospanner_push_duration_seconds", &[]),
        );
        for (name, h) in PUSH_PHASES.iter().zip(&self.phase_seconds) {
            out.push(h.sample(
                "repospanner_push_phase_duration_seconds",
                &[("phase", name)],
            ));
        }
        out
    }
}

/// The resident memory of this process, from `/proc/self/statm`.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages.saturating_mul(u64::try_from(page).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_named_by_the_conventions() {
        let mut seen = std::collections::HashSet::new();
        for f in FAMILIES {
            assert!(seen.insert(f.name), "{} twice", f.name);
            assert!(
                f.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                f.name
            );
            assert_eq!(
                f.kind == Kind::Counter,
                f.name.ends_with("_total"),
                "{}",
                f.name
            );
            assert!(f.help.ends_with('.'), "{}", f.name);
        }
    }

    #[test]
    fn samples_of_one_series_sum_and_others_stay_apart() {
        let h = |counts: Vec<u64>, sum| Value::Histogram {
            bounds: vec![1.0, 2.0],
            counts,
            sum,
        };
        let merged = merge(vec![
            Sample::counter("repospanner_pushes_total", &[("outcome", "accepted")], 2),
            Sample::counter("repospanner_pushes_total", &[("outcome", "accepted")], 3),
            Sample::counter("repospanner_pushes_total", &[("outcome", "failed")], 1),
            Sample::gauge("repospanner_raft_term", &[("shard", "0")], 4.0),
            Sample::gauge("repospanner_raft_term", &[("shard", "1")], 5.0),
            Sample::new(
                "repospanner_push_duration_seconds",
                &[],
                h(vec![1, 0, 2], 7.0),
            ),
            Sample::new(
                "repospanner_push_duration_seconds",
                &[],
                h(vec![0, 1, 1], 4.5),
            ),
            // Another kind for a series already seen: dropped.
            Sample::gauge("repospanner_pushes_total", &[("outcome", "failed")], 9.0),
        ]);
        assert_eq!(merged.len(), 5);
        assert!(merged.contains(&Sample::counter(
            "repospanner_pushes_total",
            &[("outcome", "accepted")],
            5
        )));
        assert!(merged.contains(&Sample::counter(
            "repospanner_pushes_total",
            &[("outcome", "failed")],
            1
        )));
        assert!(merged.contains(&Sample::new(
            "repospanner_push_duration_seconds",
            &[],
            h(vec![1, 1, 3], 11.5)
        )));
    }

    #[test]
    fn the_text_format_has_cumulative_buckets_and_skips_unknown_families() {
        let m = Metrics::default();
        m.push_reported(
            PushOutcome::Accepted,
            std::time::Duration::from_millis(30),
            &[
                ("store", std::time::Duration::from_millis(3)),
                ("nonsense", std::time::Duration::ZERO),
            ],
        );
        m.push_reported(
            PushOutcome::Refused,
            std::time::Duration::from_secs(4000),
            &[],
        );
        let mut samples = m.samples();
        samples.push(Sample::gauge("not_in_the_catalogue", &[], 1.0));
        let text = encode(samples);
        assert!(
            text.contains("# TYPE repospanner_pushes_total counter"),
            "{text}"
        );
        assert!(
            text.contains("repospanner_pushes_total{outcome=\"accepted\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("repospanner_push_duration_seconds_bucket{le=\"0.025\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("repospanner_push_duration_seconds_bucket{le=\"0.05\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("repospanner_push_duration_seconds_bucket{le=\"1800\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("repospanner_push_duration_seconds_bucket{le=\"+Inf\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("repospanner_push_duration_seconds_count 2"),
            "{text}"
        );
        assert!(
            text.contains("repospanner_push_phase_duration_seconds_count{phase=\"store\"} 1"),
            "{text}"
        );
        assert!(!text.contains("not_in_the_catalogue"), "{text}");
    }
}
