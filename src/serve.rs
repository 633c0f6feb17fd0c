//! `repospanner serve`: initialise a node's state (`--spawn`) and run it.
//!
//! The node runs one glommio executor (shard 0) with the user and node listeners.
//! SIGINT or SIGTERM stops it cleanly: listeners stop, queued writes finish, an index
//! checkpoint is written, "Shutdown complete" is logged.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use repospanner_net::service::{self, Ctx, Limits};
use repospanner_storage::{DmaDir, Options, Store};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::{Config, ServeConfig};
use crate::node::{Identity, NodeBackend};
use crate::stop::{install_signal_handlers, request_stop, stop_requested};
use repospanner_net::client::{NodeClient, Transport};

/// What `serve --spawn` records about the node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeState {
    pub identity: Identity,
    /// Shards (raft groups) of the cluster; fixed at spawn.
    pub shards: u32,
    pub format: u32,
}

const STATE_FILE: &str = "node.json";
/// Format of the node's state (2: repository state replicated by raft).
const FORMAT: u32 = 2;

fn state_path(sc: &ServeConfig) -> PathBuf {
    sc.state_dir.join(STATE_FILE)
}

fn identity(sc: &ServeConfig) -> Identity {
    Identity {
        cluster: sc.node.cluster.clone(),
        region: sc.node.region.clone(),
        name: sc.node.name.clone(),
        id: sc.node.id,
    }
}

fn executor<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> Result<T> {
    glommio::LocalExecutorBuilder::default()
        .name(name)
        .spawn(f)
        .map_err(|e| anyhow::anyhow!("starting the glommio executor (is RLIMIT_MEMLOCK at least 512 KiB? see deploy/README.md): {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("executor thread failed: {e:?}"))
}

async fn open_store(git_dir: &Path, segment_bytes_max: u64) -> Result<Store<DmaDir>> {
    let dir = DmaDir::open(git_dir)
        .await
        .with_context(|| format!("opening the object store in {}", git_dir.display()))?;
    let opts = Options {
        segment_bytes_max,
        ..Options::default()
    };
    let (store, report) = Store::open(dir, opts)
        .await
        .with_context(|| format!("recovering the object store in {}", git_dir.display()))?;
    info!(
        segments = report.segments,
        from_checkpoint = report.from_checkpoint,
        records_scanned = report.records_scanned,
        torn_tail_bytes = report.torn_tail_bytes,
        corruptions = report.corruptions.len(),
        "object store open"
    );
    Ok(store)
}

/// `serve --spawn`: creates the state of the first node of a new region.
pub fn spawn(config: &Config) -> Result<()> {
    let sc = config.serve()?;
    for what in &sc.ignored {
        warn!("{what}");
    }
    // What hook runs left behind if the node stopped during one.
    sc.hooks.dirs().tidy();
    let path = state_path(&sc);
    if path.exists() {
        bail!(
            "state already exists in {}: this node was spawned before; run `repospanner serve`",
            sc.state_dir.display()
        );
    }
    std::fs::create_dir_all(&sc.state_dir)
        .with_context(|| format!("creating {}", sc.state_dir.display()))?;
    let _lock = lock_state(&sc.state_dir)?;
    let shards = sc
        .shards
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    let state = NodeState {
        identity: identity(&sc),
        shards,
        format: FORMAT,
    };
    let repos: Vec<(String, bool)> = config
        .spawn
        .repos
        .iter()
        .map(|r| (r.name.clone(), r.public))
        .collect();
    let ident = state.identity.clone();
    let sc2 = sc.clone();
    executor("spawn", move || {
        Box::pin(async move {
            use repospanner_net::backend::Backend;
            let client = node_client(&sc2)?;
            let mut backends = Vec::new();
            for k in 0..shards as usize {
                let backend = open_shard(&sc2, k, ident.clone(), client.clone()).await?;
                backend
                    .initialize()
                    .await
                    .map_err(|e| anyhow::anyhow!("shard {k}: initialising its raft group: {e}"))?;
                backends.push(backend);
            }
            for (name, public) in repos {
                if !repospanner_net::git::refs::valid_repo_name(&name) {
                    bail!("spawn.repos: invalid repository name {name:?}");
                }
                let owner = repospanner_net::route::shard_of(&name, backends.len());
                backends[owner]
                    .create_repo(&name, public)
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
                info!(repo = %name, shard = owner, "created repository");
            }
            for b in backends {
                b.shutdown().await;
                b.store().clone().close().await?;
            }
            Ok(())
        })
    })??;
    write_state(&path, &state, &sc.state_dir)?;
    info!(node = %sc.node.name, region = %sc.node.region, cluster = %sc.node.cluster, "No state existed; spawned a new region with this node");
    info!("Shutdown complete");
    Ok(())
}

fn write_state(path: &Path, state: &NodeState, state_dir: &Path) -> Result<()> {
    let json = serde_json::to_vec_pretty(&state)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(state_dir)?.sync_all()?;
    Ok(())
}

/// The node-to-node client of one executor.
fn node_client(sc: &ServeConfig) -> Result<Rc<dyn Transport>> {
    let tls = repospanner_net::client::node_client_config(
        &sc.ca_pem,
        &sc.node_cert_pem,
        &sc.node_key_pem,
        &sc.node.cluster,
        &sc.node.region,
    )?;
    Ok(Rc::new(NodeClient::new(tls)))
}

/// Opens shard `k`: its store, state machine and raft group.
async fn open_shard(
    sc: &ServeConfig,
    k: usize,
    identity: Identity,
    client: Rc<dyn Transport>,
) -> Result<NodeBackend<DmaDir>> {
    let store = open_store(&shard_dir(&sc.git_dir, k), sc.segment_bytes_max).await?;
    let backend = NodeBackend::open(
        store,
        identity,
        sc.rpc_addr.clone(),
        sc.default_head.clone(),
        k,
        client,
        Duration::from_secs(u64::from(sc.limits.replication_timeout_seconds)),
        sc.raft.snapshot_entries,
    )
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    backend
        .drop_leftover_asides()
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(backend)
}

/// `serve --joinnode URL`: creates this node's state from a running node of the
/// region, runs until every shard's group has made it a voter, then exits. Retrying
/// after a failed or interrupted join is safe; a node whose disk was wiped rejoins
/// with the same identity and is rebuilt from its peers.
pub fn join(config: &Config, url: &str) -> Result<()> {
    let sc = config.serve()?;
    let peer = url
        .strip_prefix("https://")
        .map(|r| r.trim_end_matches('/'))
        .filter(|r| {
            r.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        })
        .ok_or_else(|| anyhow::anyhow!("--joinnode {url:?}: expected https://<node>:<rpcport>"))?
        .to_owned();
    let path = state_path(&sc);
    std::fs::create_dir_all(&sc.state_dir)
        .with_context(|| format!("creating {}", sc.state_dir.display()))?;
    // Nothing is written while another process serves this node (`run` takes the
    // lock again; a marker left by a refused join would keep the node from starting).
    let lock = lock_state(&sc.state_dir)?;
    if !path.exists() {
        // Before the state: a node with state and this marker has not finished
        // joining, and `serve` refuses to run it (see `run`).
        mark_joining(&sc.state_dir)?;
        let sc2 = sc.clone();
        let peer2 = peer.clone();
        let info: serde_json::Value = executor("join", move || {
            Box::pin(async move {
                let client = node_client(&sc2)?;
                // The node may be starting: keep asking for a minute.
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                let b = loop {
                    match client
                        .get(&peer2, "/rpc/info", Duration::from_secs(30))
                        .await
                    {
                        Ok(b) => break b,
                        Err(e) if e.unreachable() && std::time::Instant::now() < deadline => {
                            warn!(peer = %peer2, error = %e, "the node to join does not answer yet; retrying");
                            glommio::timer::sleep(Duration::from_millis(500)).await;
                        }
                        Err(e) => {
                            return Err(e)
                                .with_context(|| format!("asking {peer2} about the region"))
                        }
                    }
                };
                serde_json::from_slice(&b).context("the node's answer to /rpc/info")
            })
        })??;
        let shards = info["shards"]
            .as_u64()
            .filter(|s| *s > 0 && *s <= 1024)
            .ok_or_else(|| anyhow::anyhow!("{peer} did not say how many shards the region has"))?;
        let state = NodeState {
            identity: identity(&sc),
            shards: shards as u32,
            format: FORMAT,
        };
        write_state(&path, &state, &sc.state_dir)?;
        info!(peer = %peer, shards, "joining the region");
    } else {
        info!(peer = %peer, "state exists; resuming the join");
        mark_joining(&sc.state_dir)?;
    }
    drop(lock);
    run(config, Some(peer))?;
    if JOIN_DONE.load(Ordering::SeqCst) {
        let marker = sc.state_dir.join(JOINING);
        std::fs::remove_file(&marker).with_context(|| format!("removing {}", marker.display()))?;
        std::fs::File::open(&sc.state_dir)?.sync_all()?;
    }
    Ok(())
}

/// In the state directory while a join is under way (see [`join`]).
const JOINING: &str = "joining";

/// Memory each shard's executor keeps for the buffers of its direct I/O (glommio's
/// `io_memory`; registered with io_uring, and so pinned, where RLIMIT_MEMLOCK allows).
/// The store's buffers are sized to fit it: a write frame of under 8 MiB and four reads
/// of under 4 MiB at once (`repospanner_storage::Options::batch_bytes_max`, its
/// `RUN_BYTES_MAX`, and `cluster::APPEND_BYTES`), blocks of its buddy allocator. With
/// glommio's default of 10 MiB and 16 MiB frames, every frame was fresh memory from
/// malloc, faulted in page by page as the store filled it: 12,534 page faults for the
/// first 102 MiB push of a 3-node leader (74% of them filling frames), 1,375 for a
/// second push with the frames from this pool.
const IO_MEMORY_BYTES: usize = 32 << 20;

fn mark_joining(state_dir: &Path) -> Result<()> {
    let marker = state_dir.join(JOINING);
    std::fs::write(&marker, b"serve --joinnode has not finished\n")
        .with_context(|| format!("writing {}", marker.display()))?;
    std::fs::File::open(&marker)?.sync_all()?;
    std::fs::File::open(state_dir)?.sync_all()?;
    Ok(())
}

/// The panic policy (README, "Invariants"): a panic inside a contained boundary
/// (`repospanner_net::contain`: request parsing, negotiation, pack reading, object
/// checks) and outside any fail-stop section (`repospanner_storage::failstop`: the
/// store's and the raft state machine's state changes) fails its request and is logged;
/// any other panic stops the node, since the other shards must not serve on without
/// one of them, or from state a half-done change left behind.
pub fn install_panic_policy() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if panic_is_contained() {
            tracing::error!(panic = %info, "a request failed on a bug; the node goes on");
            return;
        }
        repospanner_net::contain::mark_fatal();
        request_stop();
        default_hook(info);
    }));
}

/// Whether a panic on this thread now costs only its request (see
/// [`install_panic_policy`]).
pub fn panic_is_contained() -> bool {
    repospanner_net::contain::active() && !repospanner_storage::failstop::active()
}

/// `serve`: runs the node until SIGINT or SIGTERM.
pub fn serve(config: &Config) -> Result<()> {
    run(config, None)
}

/// How many shards have finished joining (see [`join`]).
static JOINED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Every shard has joined (the node stops because its join is done).
static JOIN_DONE: AtomicBool = AtomicBool::new(false);

/// Keeps the large buffers a node cycles through (request bodies, object batches, the
/// store's write buffers: 8-16 MiB each) in the process between uses. By default glibc
/// maps each such buffer anew, or trims its arena after it is freed, and every page is
/// then faulted in again on first touch: 6-9% of a replicating member's CPU. Memory
/// freed after a burst stays with the process until the next trim
/// ([`return_freed_memory`]).
fn keep_large_buffers() {
    // SAFETY: mallopt only changes allocator tunables; called before other threads run.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// How often freed memory goes back to the kernel (see [`return_freed_memory`]).
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Gives memory freed after a burst (a large push's bookkeeping, many batches of a
/// clone) back to the kernel every [`TRIM_EVERY`]. Between trims buffers are reused
/// as [`keep_large_buffers`] intends; without trims, what the largest burst used at
/// once would stay with the process for good (measured: a node's RSS 728 MiB just
/// after a 539k-object push, 286 MiB five seconds later with trims).
fn return_freed_memory() {
    let spawned = std::thread::Builder::new()
        .name("trim".into())
        .spawn(|| loop {
            std::thread::sleep(TRIM_EVERY);
            // SAFETY: malloc_trim only returns free memory of glibc's arenas to the
            // kernel; it takes each arena's lock like any allocation.
            unsafe { libc::malloc_trim(0) };
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no thread to return freed memory; RSS stays at its peak");
    }
}

#[allow(clippy::too_many_lines)] // start-up in order: checks, join, shards, signals
fn run(config: &Config, join: Option<String>) -> Result<()> {
    keep_large_buffers();
    return_freed_memory();
    let sc = config.serve()?;
    let path = state_path(&sc);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "No state found in {}: initialise it first with `repospanner serve --spawn` (first node of a region) or `repospanner serve --joinnode https://<node>:<rpcport>`",
            sc.state_dir.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let state: NodeState =
        serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display()))?;
    if join.is_none() && sc.state_dir.join(JOINING).exists() {
        bail!(
            "this node's join did not finish ({} exists): run `repospanner serve --joinnode https://<node>:<rpcport>` again; until it finishes the node must not vote",
            sc.state_dir.join(JOINING).display()
        );
    }
    if state.format != FORMAT {
        bail!(
            "{} has state format {}, this version needs {FORMAT}: the node was created by another version; wipe its state and git directories and rejoin it with --joinnode",
            path.display(),
            state.format
        );
    }
    if state.identity != identity(&sc) {
        bail!(
            "the node certificate (node {} id {} of {}.{}) does not match the node this state belongs to (node {} id {}); renew the certificate with --nodeid {}",
            sc.node.name, sc.node.id, sc.node.region, sc.node.cluster, state.identity.name, state.identity.id, state.identity.id
        );
    }
    // One process per state: with SO_REUSEPORT a second `serve` would even bind the
    // same ports, and two writers would corrupt the log. Held until the process exits.
    let _lock = lock_state(&sc.state_dir)?;
    let tls = repospanner_net::tls::build(
        &sc.ca_pem,
        &sc.node_cert_pem,
        &sc.node_key_pem,
        &sc.server_certs,
    )?;
    let spool = spool_dir(&sc.git_dir);
    std::fs::create_dir_all(&spool).with_context(|| format!("creating {}", spool.display()))?;
    // Spool files have no names, but for the fallback's, which a crash can leave.
    if let Ok(rd) = std::fs::read_dir(&spool) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    install_signal_handlers();
    install_panic_policy();
    let limits = Limits {
        pack_bytes_max: sc.limits.pack_bytes_max,
        object_bytes_max: sc.limits.object_bytes_max,
        push_inflated_bytes_max: sc.limits.push_inflated_bytes_max,
        request: repospanner_net::git::RequestLimits {
            ref_name_bytes_max: sc.limits.ref_name_bytes_max as usize,
            capabilities_max: sc.limits.capabilities_max as usize,
            negotiation_ids_max: sc.limits.negotiation_ids_max as usize,
            refs_per_push_max: sc.limits.refs_per_push_max as usize,
            push_options_max: sc.limits.push_options_max as usize,
        },
        negotiation_bytes_max: sc.limits.negotiation_bytes_max,
        disk_reserve_bytes: sc.limits.disk_reserve_bytes,
    };
    let connections_max = sc.limits.connections_max;
    let shards = state.shards.max(1) as usize;
    // Pin to the CPUs this process may run on (a container's cpuset may exclude CPU 0).
    let allowed = allowed_cpus();
    repospanner_net::service::set_reader_cpus(allowed.clone());
    let (mut senders, mut receivers) = repospanner_net::route::mesh(shards);
    let health = crate::systemd::Health::new(shards);
    let notifier = {
        let health = health.clone();
        std::thread::Builder::new()
            .name("systemd".into())
            .spawn(move || crate::systemd::notify_loop(&health, stop_requested))
            .context("starting the systemd notifier")?
    };
    let mut handles = Vec::with_capacity(shards);
    for k in (0..shards).rev() {
        let to_peers = senders.pop().expect("one sender row per shard");
        let inbox = receivers.pop().expect("one inbox per shard");
        let sc = sc.clone();
        let tls = tls.clone();
        let identity = state.identity.clone();
        let join = join.clone();
        let health = health.clone();
        // Offset by the node id: when several nodes share a machine (tests, a laptop),
        // the members of one group land on different CPUs. One node per machine: no
        // difference.
        let cpu = (k + state.identity.id as usize) % allowed.len().max(1);
        let placement = match allowed.get(cpu) {
            Some(cpu) => glommio::Placement::Fixed(*cpu),
            None => glommio::Placement::Unbound,
        };
        let h = glommio::LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{k}"))
            .io_memory(IO_MEMORY_BYTES)
            // Pack verification runs on this thread, on any CPU: the shard's own core
            // stays free for its executor (heartbeats, other requests).
            .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(1))
            .spawn(move || async move {
                let r = run_shard(k, shards, sc, tls, identity, limits, connections_max, to_peers, inbox, join, health).await;
                // A shard that ends, whyever, ends the node: the others must not serve on
                // without it (its repositories would answer 503 until someone looked).
                if let Err(e) = &r {
                    tracing::error!(shard = k, error = %format!("{e:#}"), "shard failed; stopping the node");
                }
                request_stop();
                r
            })
            .map_err(|e| anyhow::anyhow!("starting shard {k} (is RLIMIT_MEMLOCK at least 512 KiB per core? see deploy/README.md): {e}"))?;
        handles.push(h);
    }
    let mut first_error = None;
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // One shard failing stops the node: the others are told to stop too.
                request_stop();
                first_error.get_or_insert(e);
            }
            Err(e) => {
                request_stop();
                first_error.get_or_insert(anyhow::anyhow!("a shard thread failed: {e:?}"));
            }
        }
    }
    request_stop();
    let _ = notifier.join();
    match first_error {
        Some(e) => Err(e),
        None => {
            info!("Shutdown complete");
            Ok(())
        }
    }
}

/// Takes the node's state lock (`<state>/lock`, an exclusive `flock`), or explains who
/// holds it.
fn lock_state(state_dir: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = state_dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!(
            "another repospanner process is already serving this node (it holds {}); stop it first",
            path.display()
        );
    }
    Ok(f)
}

/// The CPUs this process may run on (its affinity mask); empty if unknown.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills a cpu_set_t we own; CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|c| libc::CPU_ISSET(*c, &set))
            .collect()
    }
}

/// Where shard `k` keeps its log.
/// Where large push bodies wait while they are verified (files without names: see
/// `repospanner_net::spool`).
fn spool_dir(git_dir: &Path) -> PathBuf {
    git_dir.join("spool")
}

fn shard_dir(git_dir: &Path, k: usize) -> PathBuf {
    git_dir.join(format!("shard-{k}"))
}

/// Connections the scrapers' plain listener serves at once.
const PLAIN_CONNECTIONS_MAX: u32 = 64;

/// One shard: its store, its repositories, its listeners, its inbox from the others.
#[allow(clippy::too_many_arguments)]
#[allow(clippy::too_many_lines)] // a shard's start-up in order: store, raft, listeners
async fn run_shard(
    k: usize,
    shards: usize,
    sc: ServeConfig,
    tls: repospanner_net::tls::Tls,
    identity: Identity,
    limits: Limits,
    connections_max: u32,
    to_peers: Vec<
        Option<glommio::channels::shared_channel::SharedSender<repospanner_net::route::Forward>>,
    >,
    inbox: Vec<glommio::channels::shared_channel::SharedReceiver<repospanner_net::route::Forward>>,
    join: Option<String>,
    health: std::sync::Arc<crate::systemd::Health>,
) -> Result<()> {
    let client = node_client(&sc)?;
    let backend = open_shard(&sc, k, identity.clone(), client.clone()).await?;
    let store = backend.store().clone();
    // A joining node learns the group's term from its leader before it may vote.
    backend.set_voting(join.is_none());
    // A joining node without a log takes no entries until the leader knows it has none
    // (see join_shard).
    if join.is_some() && backend.log_is_empty() {
        backend.hold_appends(false);
    }
    // Inboxes first: connecting a sender waits for its receiver to connect.
    let ctx_cell: Rc<std::cell::OnceCell<Rc<Ctx<NodeBackend<DmaDir>>>>> =
        Rc::new(std::cell::OnceCell::new());
    for rx in inbox {
        let cell = ctx_cell.clone();
        glommio::spawn_local(repospanner_net::route::serve_inbound(
            rx,
            move |req, peer, local_only, body| {
                let cell = cell.clone();
                async move {
                    match cell.get() {
                        Some(ctx) => {
                            service::dispatch_forwarded(ctx.clone(), req, peer, local_only, body)
                                .await
                        }
                        None => {
                            let mut r = hyper::Response::new(repospanner_net::http::full(
                                "shard starting\n",
                            ));
                            *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                            r
                        }
                    }
                }
            },
        ))
        .detach();
    }
    let peers = repospanner_net::route::Peers::connect(to_peers).await;
    let per_shard =
        (sc.limits.buffered_bytes_max / shards as u64).max(sc.limits.pack_bytes_max + (1 << 20));
    let ctx = Rc::new(Ctx {
        backend: backend.clone(),
        cluster: sc.node.cluster.clone(),
        region: sc.node.region.clone(),
        node_name: sc.node.name.clone(),
        limits,
        shard: k,
        shards,
        peers,
        budget: repospanner_net::http::Budget::new(per_shard),
        spool_dir: Some(spool_dir(&sc.git_dir)),
        fsck: std::sync::Arc::new(
            repospanner_net::git::fsck::Options::parse(&sc.fsck)
                .map_err(|e| anyhow::anyhow!("checks.fsck: {e}"))?,
        ),
        hooks: std::sync::Arc::new(sc.hooks.clone()),
        metrics: repospanner_net::metrics::Metrics::default(),
    });
    let _ = ctx_cell.set(ctx.clone());
    let user_ctx = ctx.clone();
    let http = glommio::spawn_local(repospanner_net::http::serve(
        sc.listen_http,
        tls.user.clone(),
        connections_max,
        move |req, peer| service::handle_user(user_ctx.clone(), req, peer),
    ));
    let node_ctx = ctx.clone();
    let rpc = glommio::spawn_local(repospanner_net::http::serve(
        sc.listen_rpc,
        tls.node.clone(),
        connections_max,
        move |req, peer| service::handle_node(node_ctx.clone(), req, peer),
    ));
    // The scrapers' listener on shard 0 alone: its answers gather every shard's.
    let plain = sc.listen_metrics.filter(|_| k == 0).map(|addr| {
        let plain_ctx = ctx.clone();
        glommio::spawn_local(repospanner_net::http::serve_plain(
            addr,
            PLAIN_CONNECTIONS_MAX,
            move |req, peer| service::handle_plain(plain_ctx.clone(), req, peer),
        ))
    });
    info!(shard = k, shards, http = %sc.listen_http, rpc = %sc.listen_rpc, node = %sc.node.name, "shard is serving");
    if let Some(c) = &sc.compaction {
        glommio::spawn_local(crate::upkeep::run(
            k,
            store.clone(),
            crate::upkeep::Settings::new(c, sc.segment_bytes_max),
        ))
        .detach();
    }
    {
        // This executor's tick for systemd's watchdog, with whether the shard serves.
        let backend = backend.clone();
        glommio::spawn_local(async move {
            while !stop_requested() {
                use repospanner_net::backend::Backend;
                health.beat(
                    k,
                    repospanner_net::service::shard_ready(&backend.node_status()),
                );
                glommio::timer::sleep(crate::systemd::BEAT).await;
            }
        })
        .detach();
    }
    if let Some(s) = &sc.scrub {
        glommio::spawn_local(crate::upkeep::scrub(k, backend.clone(), s.clone())).detach();
    }
    if let Some(peer) = join {
        glommio::spawn_local(join_shard(
            k,
            shards,
            peer,
            identity.id,
            sc.rpc_addr.clone(),
            client,
            backend.clone(),
        ))
        .detach();
    }
    // Listeners run until a signal; a listener that fails ends the node.
    // The stop flag is checked twice a second: a signal handler can only set a flag, and
    // an idle node should wake as rarely as it can.
    let watch = async {
        while !stop_requested() {
            glommio::timer::sleep(Duration::from_millis(500)).await;
        }
    };
    let r = futures_lite::future::or(
        async {
            watch.await;
            Ok(())
        },
        futures_lite::future::or(
            async { http.await.context("the user listener failed") },
            futures_lite::future::or(
                async { rpc.await.context("the node listener failed") },
                async {
                    match plain {
                        Some(p) => p.await.context("the metrics listener failed"),
                        None => futures_lite::future::pending().await,
                    }
                },
            ),
        ),
    )
    .await;
    info!(
        shard = k,
        "stopping: finishing queued writes and writing an index checkpoint"
    );
    backend.shutdown().await;
    if let Err(e) = store.close().await {
        warn!(shard = k, error = %e, "checkpoint at shutdown failed; the next start scans the log");
    }
    r
}

/// Asks `peer` to add this node to shard `k`'s group until it is a voter there; the
/// last shard to finish stops the node (the join is done).
async fn join_shard(
    k: usize,
    shards: usize,
    peer: String,
    id: u64,
    addr: String,
    client: Rc<dyn Transport>,
    backend: NodeBackend<DmaDir>,
) {
    let body = match serde_json::to_vec(&crate::node::JoinRequest { id, addr }) {
        Ok(b) => bytes::Bytes::from(b),
        Err(_) => return,
    };
    // Without a log (a first join, or a wiped disk), the leader is told first, so that
    // replication to this node starts over instead of sending entries it lost.
    if !backend.takes_appends() {
        if !ask_until_ok(k, &peer, repospanner_net::rpc::Op::Rejoin, &body, &client).await {
            return;
        }
        backend.hold_appends(true);
    }
    if !ask_until_ok(k, &peer, repospanner_net::rpc::Op::Join, &body, &client).await {
        return;
    }
    // The leader said yes; wait until this node has seen the membership itself.
    while !(stop_requested() || backend.is_voter() && backend.caught_up()) {
        glommio::timer::sleep(Duration::from_millis(100)).await;
    }
    info!(
        shard = k,
        "joined: this node is a voter of the shard's group"
    );
    if JOINED.fetch_add(1, Ordering::SeqCst) + 1 == shards {
        info!("joined every shard's group; run `repospanner serve` to serve");
        JOIN_DONE.store(true, Ordering::SeqCst);
        request_stop();
    }
}

/// Posts the join operation `op` of shard `k` to `peer` until it succeeds (backing
/// off); false if the node is asked to stop first.
async fn ask_until_ok(
    k: usize,
    peer: &str,
    op: repospanner_net::rpc::Op,
    body: &bytes::Bytes,
    client: &dyn Transport,
) -> bool {
    let mut attempt = 0u32;
    loop {
        if stop_requested() {
            return false;
        }
        attempt += 1;
        match crate::cluster::post_join(client, peer, k, op, body.clone()).await {
            Ok(()) => return true,
            Err(e) => {
                warn!(shard = k, attempt, op = op.name(), error = %e, "join: not done yet; retrying");
                glommio::timer::sleep(Duration::from_millis(500 * u64::from(attempt.min(10))))
                    .await;
            }
        }
    }
}
