//! receive-pack over HTTP: a push's body read while it arrives (spooled, its pack read on a thread of its own, what it verifies written aside), passed whole to the owning shard when another accepted it, then verified and applied (`git::receive`).

use super::*;
use crate::metrics::PushOutcome;

/// What verifying a push holds per object of its pack, at most (its entry, its id in
/// the sets connectivity and the store use, its place in the ref transaction): a
/// push's memory grows with its objects, never with their bytes, and this much per
/// object is taken from the shard's [`Ctx::budget`] for as long as the push runs.
pub const PUSH_BYTES_PER_OBJECT: usize = 1024;

/// Takes what a push of `count` objects holds from the shard's budget, or refuses it
/// (503) at once.
pub(super) fn charge_objects(ctx: &Ctx<impl Backend>, count: u32) -> Result<http::Held, Refusal> {
    let bytes = count as usize * PUSH_BYTES_PER_OBJECT;
    ctx.budget.try_take(bytes).ok_or_else(|| Refusal {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: format!(
            "a push of {count} objects needs {} MiB of this node's budget for pushes \
             in flight (limits.buffered_bytes_max), which other pushes hold or which is \
             smaller; try again later, or raise it",
            bytes >> 20
        ),
        git: false,
    })
}

pub(super) async fn receive_pack<B: Backend + 'static>(
    ctx: Rc<Ctx<B>>,
    repo: String,
    state: RepoState,
    req: Req,
    held: Held,
) -> Response<Body> {
    if let Err(r) = room_for_a_push(&ctx) {
        return counted(&ctx, *r);
    }
    let extra = hook_run::extras(&req.headers);
    let arrived = Arrived {
        received: Received {
            body: Bytes::from(req.body),
            pre_read: None,
            started: std::time::Instant::now(),
        },
        held,
        aside: None,
    };
    let c = ctx.clone();
    counted(
        &c,
        receive_pack_body(ctx, repo, state, arrived, extra).await,
    )
}

/// Refuses a push (507) while the git file system has less free than
/// `limits.disk_reserve_bytes`: that room is kept for the raft log, compaction and
/// metadata, which must not fail, and reads go on.
fn room_for_a_push<B: Backend>(ctx: &Ctx<B>) -> Result<(), Box<Response<Body>>> {
    let Some(dir) = ctx.spool_dir.as_deref() else {
        return Ok(());
    };
    let reserve = ctx.limits.disk_reserve_bytes;
    match spool::free_bytes_in(dir) {
        Ok(free) if free < reserve => {
            warn!(
                free,
                reserve, "push refused: the node's disk is nearly full"
            );
            Err(Box::new(text(
                StatusCode::INSUFFICIENT_STORAGE,
                &format!(
                    "the node's disk is nearly full: {free} bytes free, and limits.disk_reserve_bytes keeps {reserve} for the store; pushes resume once there is room"
                ),
                &ctx.node_name,
            )))
        }
        _ => Ok(()),
    }
}

/// A push read while it arrives: authorised before its body is read, its pack parsed,
/// inflated and hashed piece by piece as the body comes in (overlapping the transfer),
/// then verified and applied as any push. A body another shard accepted arrives whole
/// (see [`receive_and_forward`]).
pub(super) async fn receive_streaming<B: Backend + 'static>(
    ctx: Rc<Ctx<B>>,
    source: route::Source,
    peer: Rc<Peer>,
    repo: String,
    extra: Vec<(String, String)>,
) -> Response<Body> {
    let c = ctx.clone();
    counted(
        &c,
        receive_streaming_here(ctx, source, peer, repo, extra).await,
    )
}

/// `response` to a push, counted if it is a refusal by HTTP status (a push answered in
/// git's protocol counts itself: `receive_pack_body`, `refused_push`).
fn counted<B: Backend>(ctx: &Ctx<B>, response: Response<Body>) -> Response<Body> {
    if !response.status().is_success() {
        ctx.metrics
            .push_done(PushOutcome::of_status(response.status()));
    }
    response
}

async fn receive_streaming_here<B: Backend + 'static>(
    ctx: Rc<Ctx<B>>,
    source: route::Source,
    peer: Rc<Peer>,
    repo: String,
    extra: Vec<(String, String)>,
) -> Response<Body> {
    let node = ctx.node_name.clone();
    let who = match user_of(&ctx, &peer) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let (state, may_push) = match authorize(&ctx, who.as_ref(), &repo).await {
        Ok(a) => a,
        Err(r) => return *r,
    };
    if !may_push {
        return text(
            StatusCode::FORBIDDEN,
            "you may not push to this repository",
            &node,
        );
    }
    if let Err(r) = room_for_a_push(&ctx) {
        return *r;
    }
    // A body the accepting shard receives itself comes whole, after the objects it
    // verified meanwhile (written aside here as they come).
    let mut aside: Option<AsideGuard<B>> = None;
    let mut body = match source {
        route::Source::Client(body) => route::ClientBody::Reading(body),
        route::Source::Shard(mut sb) => loop {
            match sb.next().await {
                Some(route::BodyChunk::Aside(objects)) => {
                    let id = AsideGuard::id_in(&mut aside, &ctx);
                    if let Err(e) = ctx.backend.store_aside(&repo, id, objects).await {
                        return text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            &format!("storing objects failed: {e}"),
                            &node,
                        );
                    }
                }
                // Received by the accepting shard: its bytes are accounted here from
                // now on.
                Some(route::BodyChunk::Received(r)) => {
                    let Some(held) = ctx.budget.try_take(r.body.len()) else {
                        return body_error(&http::BodyError::Busy, &node);
                    };
                    let arrived = Arrived {
                        received: *r,
                        held,
                        aside,
                    };
                    return receive_pack_body(ctx, repo, state, arrived, extra).await;
                }
                Some(route::BodyChunk::Refused(f)) => return refused_push(&ctx, &f),
                None => {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the shard that accepted the push went away",
                        &node,
                    )
                }
            }
        },
    };
    match receive_body(&ctx, &mut body, &repo, AsideTo::Here, &|| false).await {
        Ok(arrived) => receive_pack_body(ctx, repo, state, arrived, extra).await,
        Err(refusal) => refused_push(&ctx, &refusal),
    }
}

/// Logs each ref of a push that got its report, and counts the push: its outcome, its
/// time from the first byte (`started`), and its phases, the body's arrival
/// (`received_in`) first.
fn account(
    metrics: &crate::metrics::Metrics,
    repo: &str,
    report: &receive::Report,
    started: std::time::Instant,
    received_in: std::time::Duration,
) {
    for (name, r) in &report.refs {
        match r {
            Ok(()) => info!(repo = %repo, r#ref = %name, "ref updated"),
            Err(e) => warn!(repo = %repo, r#ref = %name, reason = %e, "ref update refused"),
        }
    }
    let outcome = if report.failed {
        PushOutcome::Failed
    } else if report.unpack.is_ok() && report.refs.iter().all(|(_, r)| r.is_ok()) {
        PushOutcome::Accepted
    } else {
        PushOutcome::Refused
    };
    let mut phases = vec![("receive", received_in)];
    phases.extend(report.phases.iter().copied());
    metrics.push_reported(outcome, started.elapsed(), &phases);
}

/// The answer to a refused push; one refused in git's protocol (answered with status
/// 200) is counted here, others by their status ([`counted`]).
fn refused_push<B: Backend>(ctx: &Ctx<B>, r: &Refusal) -> Response<Body> {
    if r.git {
        ctx.metrics.push_done(PushOutcome::Refused);
    }
    refused(r, &ctx.node_name)
}

/// A push that landed on a shard other than its repository's owner: this shard receives
/// the body (spools it, reads its pack while it arrives) and passes it to the owner
/// whole, which authorises the push first and verifies and applies it after: a handful
/// of messages between the two cores per push (the verified objects in 16 MiB batches,
/// then the body) instead of one per 256 KiB piece, and the shard that decrypts the body
/// also reads it. If the owner answers first (a refusal), receiving stops.
pub(super) async fn receive_and_forward<B: Backend + 'static>(
    ctx: Rc<Ctx<B>>,
    owner: usize,
    head: Req,
    body: Incoming,
    peer: Rc<Peer>,
    repo: String,
) -> Response<Body> {
    let (tx, rx) = glommio::channels::shared_channel::new_bounded(ASIDE_IN_FLIGHT);
    let answered = Rc::new(std::cell::Cell::new(false));
    let stop = answered.clone();
    let c = ctx.clone();
    glommio::spawn_local(async move {
        let tx = crate::gate::gated(tx.connect()).await;
        let mut body = route::ClientBody::Reading(body);
        let stopped = || stop.get();
        let to = AsideTo::Owner(&tx);
        let (msg, held) = match receive_body(&c, &mut body, &repo, to, &stopped).await {
            Ok(a) => (
                route::BodyChunk::Received(Box::new(a.received)),
                Some(a.held),
            ),
            Err(refusal) => (route::BodyChunk::Refused(refusal), None),
        };
        // The owner takes the body into its own budget when it gets it.
        let _ = crate::gate::gated(tx.send(msg)).await;
        drop(held);
    })
    .detach();
    let response = route::forward_with(
        &ctx.peers,
        owner,
        head,
        peer.cert.clone(),
        peer.addr,
        false,
        Some(rx),
    )
    .await;
    answered.set(true);
    response
}

/// Reads a push body from `source` to its end: spooled past 4 MiB, within this shard's
/// budget and `limits.pack_bytes_max`, its pack read while it arrives, what it verifies
/// written aside as it goes. Stops with a refusal when `stopped()` (the push was
/// answered meanwhile).
#[allow(clippy::too_many_lines)] // one loop over the body's pieces: budget, spool, trailer, reader and aside writer advance together
pub(super) async fn receive_body<B: Backend + 'static>(
    ctx: &Rc<Ctx<B>>,
    source: &mut route::ClientBody,
    repo: &str,
    aside: AsideTo<'_>,
    stopped: &dyn Fn() -> bool,
) -> Result<Arrived<B>, Refusal> {
    let limits = PackLimits {
        object_bytes_max: ctx.limits.object_bytes_max,
        inflated_bytes_max: ctx.limits.push_inflated_bytes_max,
        ..PackLimits::default()
    };
    let max = ctx.limits.pack_bytes_max;
    let mut got = spool::Body::new();
    let mut held = http::Held::default();
    let mut pack_at = None;
    // Hashed here as the pieces arrive (cheap: plain SHA-1), not by the pack reader;
    // `hashed_to` is how much of the body the trailer was given.
    let mut trailer = crate::git::pack::Trailer::new();
    let mut hashed_to = 0;
    let mut reading = PackReading::Here {
        stream: Some(Box::new((
            crate::git::pack::PackStream::without_trailer(limits),
            Inspected::new(ctx.fsck.clone()),
        ))),
        error: None,
    };
    let mut aside = AsideWriter::new(ctx, repo, aside);
    let mut objects_charged = false;
    let arriving = std::time::Instant::now();
    let received: Result<(), Refusal> = async {
        loop {
            if stopped() {
                return Err(Refusal {
                    status: StatusCode::CONFLICT,
                    message: "the push was answered before its body arrived".into(),
                    git: false,
                });
            }
            let data = match source.next().await {
                Ok(Some(d)) => d,
                Ok(None) => return Ok(()),
                Err(e) => return Err(body_refusal(&e)),
            };
            ctx.metrics.received(data.len());
            if got.len() as u64 + data.len() as u64 > max {
                return Err(body_refusal(&http::BodyError::TooLarge(max)));
            }
            match ctx.budget.try_take(data.len()) {
                Some(h) => held.merge(h),
                None => return Err(body_refusal(&http::BodyError::Busy)),
            }
            let spool = ctx
                .spool_dir
                .as_deref()
                .map(|dir| (dir, ctx.limits.disk_reserve_bytes));
            if let Err(e) = got.push(&data, spool, max as usize) {
                warn!(repo = %repo, error = %e, "spooling a push failed");
                let status = if e.kind() == std::io::ErrorKind::StorageFull {
                    StatusCode::INSUFFICIENT_STORAGE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                return Err(Refusal {
                    status,
                    message: format!("spooling the push failed: {e}"),
                    git: false,
                });
            }
            if pack_at.is_none() {
                let end = crate::contain::run(|| receive::commands_end(got.as_slice()))
                    .unwrap_or_else(|p| Err(receive::ProtocolError(p.to_string())));
                match end {
                    Ok(at) => pack_at = at,
                    Err(e) => {
                        return Err(Refusal {
                            status: StatusCode::OK,
                            message: e.to_string(),
                            git: true,
                        })
                    }
                }
            }
            if let Some(at) = pack_at {
                if !objects_charged {
                    if let Some(count) = got.as_slice().get(at + 8..at + 12) {
                        objects_charged = true;
                        let count = u32::from_be_bytes([count[0], count[1], count[2], count[3]]);
                        // More than the limit: the reader refuses the pack by name.
                        held.merge(charge_objects(ctx, count.min(limits.objects_max))?);
                    }
                }
                reading.advance(&got, at);
                // From the piece itself where it holds all that is new (every piece
                // after the one the pack starts in).
                let (from, end) = (hashed_to.max(at), got.len());
                let piece_at = end - data.len();
                match from.checked_sub(piece_at) {
                    Some(skip) => trailer.push(data.get(skip..).unwrap_or_default()),
                    None => trailer.push(got.as_slice().get(from..end).unwrap_or_default()),
                }
                hashed_to = end;
                if let spool::Body::File(f) = &got {
                    aside.add(&f.view(), at, reading.take_ready()).await?;
                }
            }
            glommio::yield_if_needed().await;
        }
    }
    .await;
    if let Err(refusal) = received {
        reading.abandon();
        source.linger();
        return Err(refusal);
    }
    let view = match &got {
        spool::Body::File(f) => Some(f.view()),
        spool::Body::Mem(_) => None,
    };
    let buf = got.into_bytes();
    let arrived_ms = arriving.elapsed().as_millis() as u64;
    let pre_read = match pack_at {
        Some(at) if buf.len() > at => {
            let pack = buf.get(at..).unwrap_or_default();
            let read = reading
                .finish_writing(&buf, at, &mut aside, view.as_ref())
                .await?;
            Some(read.and_then(|entries| trailer.check(pack).map(|()| entries)))
        }
        _ => {
            reading.abandon();
            None
        }
    };
    aside.finish().await?;
    info!(
        repo = %repo,
        bytes = buf.len(),
        arrived_ms,
        read_ms = arriving.elapsed().as_millis() as u64,
        "push body received and read"
    );
    Ok(Arrived {
        received: Received {
            body: buf,
            pre_read,
            started: arriving,
        },
        held,
        aside: aside.into_guard(),
    })
}

/// A push body received here ([`receive_body`]).
pub(super) struct Arrived<B: Backend> {
    received: Received,
    held: Held,
    aside: Option<AsideGuard<B>>,
}

/// The push in `body` (commands, options, pack), with its entries if they were read
/// while it arrived.
pub(super) async fn receive_pack_body<B: Backend + 'static>(
    ctx: Rc<Ctx<B>>,
    repo: String,
    state: RepoState,
    arrived: Arrived<B>,
    extra: Vec<(String, String)>,
) -> Response<Body> {
    let Arrived {
        received: Received {
            body,
            pre_read,
            started,
        },
        held,
        aside,
    } = arrived;
    let received_in = started.elapsed();
    let node = ctx.node_name.clone();
    let ctype = "application/x-git-receive-pack-result";
    if body.as_ref() == b"0000" {
        // git's probe before a large chunked POST.
        return respond(StatusCode::OK, ctype, Vec::new(), &node);
    }
    let parsed = crate::contain::run(|| receive::parse_push(&body, &ctx.limits.request));
    let push = match parsed {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            ctx.metrics.push_done(PushOutcome::Refused);
            return git_error(&e.to_string(), &node, ctype);
        }
        Err(p) => return bug(&repo, &p, &node),
    };
    if push.commands.is_empty() {
        return respond(StatusCode::OK, ctype, Vec::new(), &node);
    }
    let (mut tx, out) = http::channel();
    glommio::spawn_local(async move {
        // The body's share of the budget is held until the push is done; what it
        // wrote aside is dropped when it is, unless the push stored it.
        let _held = held;
        let aside_id = aside.as_ref().map(|g| g.id);
        let _aside = aside;
        let sideband = push
            .caps
            .contains("side-band-64k")
            .then_some(pktline::MAX_PKT);
        let quiet = push.caps.contains("quiet");
        let limits = PackLimits {
            object_bytes_max: ctx.limits.object_bytes_max,
            inflated_bytes_max: ctx.limits.push_inflated_bytes_max,
            ..PackLimits::default()
        };
        let progress_tx = tx.clone();
        let progress = move |msg: String| {
            if let (Some(max), false) = (sideband, quiet) {
                let mut o = Vec::new();
                pktline::sideband(&mut o, 2, format!("{msg}\n").as_bytes(), max);
                // Progress is best effort: dropped if the client is slow.
                let _ = progress_tx.clone().try_send(Bytes::from(o));
            }
        };
        let pack = body.slice(push.pack_at..);
        let mut hooks = hook_run::PushHooks::new(
            ctx.clone(),
            &repo,
            &state,
            &push,
            pack.clone(),
            extra,
            sideband,
            tx.clone(),
        );
        let report = receive::receive(
            &ctx.backend,
            &repo,
            &state,
            &push,
            pack,
            aside_id,
            &limits,
            &ctx.fsck,
            pre_read,
            &mut hooks,
            progress,
        )
        .await;
        let mut o = Vec::new();
        band(sideband, &mut o, &report.encode());
        let told = tx.send(Bytes::from(o)).await.is_ok();
        account(&ctx.metrics, &repo, &report, started, received_in);
        // After the report, as git's receive-pack: post-receive, once the region
        // holds the push (whether or not the client is still there to see it).
        hooks.after(&report).await;
        if !told {
            return;
        }
        if sideband.is_some() {
            let mut o = Vec::new();
            pktline::flush(&mut o);
            if tx.send(Bytes::from(o)).await.is_err() {
                return;
            }
        }
        tx.finish();
    })
    .detach();
    let mut r = Response::new(out);
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        r.headers_mut().insert("content-type", v);
    }
    r
}
