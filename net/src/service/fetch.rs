//! upload-pack over HTTP: the ref advertisement (`info/refs`) and clones and fetches, their packs sent in pieces with side-band progress.

use super::*;
use crate::git::Oid;
use crate::metrics::FetchOutcome;

pub(super) async fn info_refs<B: Backend>(
    ctx: &Ctx<B>,
    repo: &str,
    state: &RepoState,
    service: &str,
    v2: bool,
) -> Response<Body> {
    let node = &ctx.node_name;
    let mut out = Vec::new();
    pktline::fixed(&mut out, &format!("# service={service}"));
    pktline::flush(&mut out);
    if v2 {
        out.extend(upload::advertise_v2());
    } else {
        let refs = match upload::refs_of(&ctx.backend, repo, state).await {
            Ok(r) => r,
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), node),
        };
        let caps = if service == "git-receive-pack" {
            let mut c = receive::receive_caps();
            if let Some(t) = state.symrefs.get("HEAD") {
                c.push_str(&format!(" symref=HEAD:{t}"));
            }
            c
        } else {
            upload::upload_caps(state)
        };
        // receive-pack advertises no peeled lines and no HEAD.
        if service == "git-receive-pack" {
            let plain: Vec<_> = refs
                .into_iter()
                .map(|r| upload::AdRef { peeled: None, ..r })
                .collect();
            let mut s = state.clone();
            s.symrefs.remove("HEAD");
            out.extend(upload::advertise_v0(&plain, &s, &caps));
        } else {
            out.extend(upload::advertise_v0(&refs, state, &caps));
        }
    }
    respond(
        StatusCode::OK,
        &format!("application/x-{service}-advertisement"),
        out,
        node,
    )
}

/// Wraps `payload` for the client: on side-band 1 if it asked for side-band.
pub(super) fn band(sideband: Option<usize>, out: &mut Vec<u8>, payload: &[u8]) {
    match sideband {
        Some(max) => pktline::sideband(out, 1, payload, max),
        None => out.extend_from_slice(payload),
    }
}

pub(super) fn sideband_of(req: &FetchRequest) -> Option<usize> {
    if req.has("side-band-64k") {
        Some(pktline::MAX_PKT)
    } else if req.has("side-band") {
        Some(1000)
    } else {
        None
    }
}

const UPLOAD_RESULT: &str = "application/x-git-upload-pack-result";

/// `POST git-upload-pack`: the request parsed ([`fetch_request`]), a negotiation round
/// answered ([`negotiate`]), or the pack planned and sent ([`Fetch::send`]) while the
/// response streams.
pub(super) async fn upload_pack<B: Backend + 'static>(
    ctx: Rc<Ctx<B>>,
    repo: String,
    state: RepoState,
    req: Req,
    v2: bool,
) -> Response<Body> {
    let node = ctx.node_name.clone();
    let refs = match upload::refs_of(&ctx.backend, &repo, &state).await {
        Ok(r) => r,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), &node),
    };
    let (fetch, v2_fetch) = match fetch_request(&ctx, &req.body, v2, &refs, &state) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    if fetch.wants.is_empty() {
        return respond(StatusCode::OK, UPLOAD_RESULT, Vec::new(), &node);
    }
    let common = upload::common(&ctx.backend, &repo, &fetch.haves);
    let v2_acks = match negotiate(&ctx, &repo, &refs, &fetch, &common, v2_fetch).await {
        Ok(acks) => acks,
        Err(r) => return *r,
    };
    let (tx, body) = http::channel();
    let clone = fetch.haves.is_empty();
    let (counting, failed_repo) = (ctx.clone(), repo.clone());
    let job = Fetch {
        ctx,
        repo,
        state,
        refs,
        fetch,
        common,
        v2_acks,
        v2_fetch,
    };
    // Contained as its request is: on a bug the response is abandoned (the client sees
    // a broken transfer) and the shard goes on.
    let sending = crate::contain::contained(job.send(tx));
    glommio::spawn_local(async move {
        if let Err(p) = sending.await {
            counting
                .metrics
                .fetch_done(clone, FetchOutcome::Failed, std::time::Duration::ZERO);
            tracing::error!(repo = %failed_repo, error = %p, "sending a pack failed on a bug; the node goes on");
        }
    })
    .detach();
    let mut r = Response::new(body);
    if let Ok(v) = hyper::header::HeaderValue::from_str(UPLOAD_RESULT) {
        r.headers_mut().insert("content-type", v);
    }
    r
}

/// The fetch a request body asks for (and whether it is protocol v2's), or the answer
/// to give instead: v2's `ls-refs`, or an error in git's protocol.
fn fetch_request<B: Backend>(
    ctx: &Ctx<B>,
    body: &[u8],
    v2: bool,
    refs: &[upload::AdRef],
    state: &RepoState,
) -> Result<(FetchRequest, bool), Box<Response<Body>>> {
    let node = &ctx.node_name;
    let limits = &ctx.limits.request;
    let refuse = |e: String| Box::new(git_error(&e, node, UPLOAD_RESULT));
    if !v2 {
        return upload::parse_v0(body, limits)
            .map(|f| (f, false))
            .map_err(|e| refuse(e.to_string()));
    }
    let r = upload::parse_v2(body, limits).map_err(|e| refuse(e.to_string()))?;
    match r.command.as_str() {
        "ls-refs" => Err(Box::new(respond(
            StatusCode::OK,
            UPLOAD_RESULT,
            upload::ls_refs(&r.args, refs, state),
            node,
        ))),
        "fetch" => upload::parse_v2_fetch(&r.args, limits)
            .map(|f| (f, true))
            .map_err(|e| refuse(e.to_string())),
        other => {
            let other = crate::git::excerpt(other.as_bytes());
            Err(refuse(format!("unknown command {other}")))
        }
    }
}

/// A negotiation round: `Err` with its answer while the server has not seen enough
/// (or a deepening round's boundary), else the v2 acknowledgments the pack follows.
async fn negotiate<B: Backend>(
    ctx: &Ctx<B>,
    repo: &str,
    refs: &[upload::AdRef],
    fetch: &FetchRequest,
    common: &[Oid],
    v2_fetch: bool,
) -> Result<Vec<u8>, Box<Response<Body>>> {
    let node = &ctx.node_name;
    let answer = |out: Vec<u8>| Box::new(respond(StatusCode::OK, UPLOAD_RESULT, out, node));
    if fetch.done {
        return Ok(Vec::new());
    }
    // Another negotiation round, unless the server has seen enough.
    let ready = upload::ready(&ctx.backend, repo, &fetch.wants, common).await;
    if v2_fetch {
        let acks = upload::acknowledgments_v2(common, ready);
        if !ready || common.is_empty() {
            return Err(answer(acks));
        }
        return Ok(acks); // the packfile follows
    }
    let (out, pack_follows) = upload::negotiation_v0(fetch, common, ready);
    if pack_follows {
        return Ok(Vec::new());
    }
    if !fetch.deepens() {
        return Err(answer(out));
    }
    // Every round of a deepening fetch starts with the boundary.
    let (shallow, unshallow) = upload::boundary(&ctx.backend, repo, refs, fetch)
        .await
        .map_err(|e| Box::new(git_error(&e.to_string(), node, UPLOAD_RESULT)))?;
    let mut head = Vec::new();
    shallow_lines(&mut head, &shallow, &unshallow);
    pktline::flush(&mut head);
    // The first round of a deepening fetch carries no haves and asks for the boundary
    // alone.
    if !fetch.haves.is_empty() {
        head.extend(out);
    }
    Err(answer(head))
}

/// git's `shallow` and `unshallow` lines.
fn shallow_lines(out: &mut Vec<u8>, shallow: &[Oid], unshallow: &[Oid]) {
    for s in shallow {
        pktline::fixed(out, &format!("shallow {}", crate::git::hex(s)));
    }
    for s in unshallow {
        pktline::fixed(out, &format!("unshallow {}", crate::git::hex(s)));
    }
}

/// A fetch whose pack follows: what planning and sending it need.
struct Fetch<B: Backend> {
    ctx: Rc<Ctx<B>>,
    repo: String,
    state: RepoState,
    refs: Vec<upload::AdRef>,
    fetch: FetchRequest,
    common: Vec<Oid>,
    v2_acks: Vec<u8>,
    v2_fetch: bool,
}

impl<B: Backend + 'static> Fetch<B> {
    /// Without shallow information to send first, the response can start before
    /// planning, so the client sees progress while the server counts objects.
    fn early(&self) -> bool {
        !self.fetch.deepens() && self.fetch.shallows.is_empty()
    }

    /// What comes before the pack: v2's acknowledgments and shallow-info, or v0's
    /// shallow section and final ACK/NAK.
    fn head(&self, plan: Option<&upload::Plan>) -> Vec<u8> {
        let mut head = self.v2_acks.clone();
        if self.v2_fetch {
            if let Some(plan) = plan.filter(|_| !self.early()) {
                pktline::fixed(&mut head, "shallow-info");
                shallow_lines(&mut head, &plan.shallow, &plan.unshallow);
                pktline::delim(&mut head);
            }
            pktline::fixed(&mut head, "packfile");
        } else {
            // git's v0 answer starts with a shallow section (maybe empty) when the
            // request deepens.
            if let Some(plan) = plan.filter(|_| self.fetch.deepens()) {
                shallow_lines(&mut head, &plan.shallow, &plan.unshallow);
                pktline::flush(&mut head);
            }
            head.extend(upload::negotiation_v0(&self.fetch, &self.common, true).0);
        }
        head
    }

    /// Plans the pack and sends it into `tx`, counting the fetch by its outcome.
    async fn send(self, mut tx: http::BodySender) {
        let (ctx, repo) = (&self.ctx, &self.repo);
        let clone = self.fetch.haves.is_empty();
        let sideband = sideband_of(&self.fetch);
        let progress = !self.fetch.has("no-progress") && sideband.is_some();
        let band_max = sideband.unwrap_or(1000);
        let started = std::time::Instant::now();
        let early = self.early();
        let abandoned = || {
            ctx.metrics
                .fetch_done(clone, FetchOutcome::Abandoned, started.elapsed());
        };
        if early && tx.send(Bytes::from(self.head(None))).await.is_err() {
            return abandoned();
        }
        let progress_tx = tx.clone();
        let mut report = move |msg: String| {
            if progress {
                let mut o = Vec::new();
                pktline::sideband(&mut o, 2, format!("{msg}\r").as_bytes(), band_max);
                // Best effort: dropped when the client is slow.
                let _ = progress_tx.clone().try_send(Bytes::from(o));
            }
        };
        let planned = upload::plan(
            &ctx.backend,
            repo,
            &self.state,
            &self.refs,
            &self.fetch,
            &self.common,
            &mut report,
        )
        .await;
        let plan = match planned {
            Ok(p) => p,
            Err(e) => {
                warn!(repo = %repo, error = %e, "fetch failed");
                ctx.metrics
                    .fetch_done(clone, FetchOutcome::Failed, started.elapsed());
                return plan_failed(&e.to_string(), early, sideband, tx).await;
            }
        };
        let mut first = if early {
            Vec::new()
        } else {
            self.head(Some(&plan))
        };
        if progress {
            let msg = format!(
                "repoSpanner-rs: sending {} objects ({} as thin deltas)\n",
                plan.objects.len(),
                plan.thin
            );
            pktline::sideband(&mut first, 2, msg.as_bytes(), band_max);
        }
        if tx.send(Bytes::from(first)).await.is_err() {
            return abandoned();
        }
        let planned = started.elapsed();
        let outcome = send_pack(ctx, repo, &plan, sideband, tx).await;
        ctx.metrics.fetch_done(clone, outcome, started.elapsed());
        if outcome != FetchOutcome::Sent {
            return;
        }
        if plan.proves_reachable {
            match ctx.backend.mark_reachable(repo, &self.state.refs).await {
                Ok(()) => {
                    info!(repo = %repo, "every stored object is reachable: full clones skip the walk again")
                }
                Err(e) => debug!(repo = %repo, error = %e, "not marked reachable"),
            }
        }
        info!(
            repo = %repo,
            objects = plan.objects.len(),
            plan_ms = planned.as_millis() as u64,
            plan = %plan.phases,
            walked = %plan.walked,
            total_ms = started.elapsed().as_millis() as u64,
            "served a pack"
        );
    }
}

/// Tells the client a fetch's planning failed: on side-band 3 if the response has
/// started (`early`), as an ERR line if nothing was sent; a raw pack promised without
/// side-band has no channel to say why, so the response is abandoned (see
/// `http::channel`).
async fn plan_failed(why: &str, early: bool, sideband: Option<usize>, mut tx: http::BodySender) {
    let mut o = Vec::new();
    match (early, sideband) {
        (true, Some(max)) => pktline::sideband(&mut o, 3, format!("{why}\n").as_bytes(), max),
        (false, _) => pktline::error(&mut o, why),
        (true, None) => return,
    }
    if tx.send(Bytes::from(o)).await.is_ok() {
        tx.finish();
    }
}

/// Streams the pack of `plan` into `tx`: entries read a batch at a time and framed
/// straight into the response, the next batch read while the last is sent; the
/// channel's bound makes a slow client slow the reading down. Whether it was sent,
/// abandoned by the client, or failed on a read (the client is told why on side-band 3
/// where it has one). The bytes handed to the connection are counted in the shard's
/// metrics.
async fn send_pack<B: Backend>(
    ctx: &Ctx<B>,
    repo: &str,
    plan: &upload::Plan,
    sideband: Option<usize>,
    mut tx: http::BodySender,
) -> FetchOutcome {
    let backend = &ctx.backend;
    let count =
        |pieces: &[http::Piece]| ctx.metrics.sent(pieces.iter().map(http::Piece::len).sum());
    let mut out = pktline::BandWriter::new(1, sideband);
    let mut pack = upload::PackOut::new(plan, &mut |b| out.write(b));
    let mut end = upload::batch_end(plan, 0);
    let mut read = upload::read_batch(backend, repo, &plan.objects[..end]).await;
    loop {
        let batch = match read {
            Ok(b) => b,
            Err(e) => {
                // The pack has started: the client is told why it stops.
                warn!(repo = %repo, error = %e, "fetch failed while sending the pack");
                // Without side-band there is no way to say why: the response is
                // abandoned, so the client sees a broken transfer (http::channel).
                let Some(max) = sideband else {
                    return FetchOutcome::Failed;
                };
                let mut o = out.take();
                pktline::sideband(&mut o, 3, format!("{e}\n").as_bytes(), max);
                if tx.send(Bytes::from(o)).await.is_ok() {
                    tx.finish();
                }
                return FetchOutcome::Failed;
            }
        };
        // Framed by reference: the entries stay in the read buffers until TLS
        // copies them into its records (see crate::piece).
        let mut pieces = Vec::new();
        pack.write(
            batch,
            &mut Cut {
                out: &mut out,
                pieces: &mut pieces,
            },
        );
        count(&pieces);
        let start = end;
        if start == plan.objects.len() {
            if !send_all(&mut tx, pieces).await {
                return FetchOutcome::Abandoned;
            }
            break;
        }
        end = upload::batch_end(plan, start);
        let next = upload::read_batch(backend, repo, &plan.objects[start..end]);
        let (sent, next) = futures_util::future::join(send_all(&mut tx, pieces), next).await;
        if !sent {
            return FetchOutcome::Abandoned;
        }
        read = next;
    }
    pack.finish(&mut |b| out.write(b));
    let mut last = out.take_piece();
    if sideband.is_some() {
        let mut end = Vec::new();
        pktline::flush(&mut end);
        last.push_shared(Bytes::from(end));
    }
    count(std::slice::from_ref(&last));
    if tx.send(last).await.is_err() {
        return FetchOutcome::Abandoned;
    }
    tx.finish();
    FetchOutcome::Sent
}

/// The most bytes of a response handed to the connection at a time: the response
/// channel holds a few of them, so a batch of the pack is not queued whole.
pub(super) const SEND_PIECE: usize = 256 << 10;

/// Sends `pieces` in order; false if the client went away.
pub(super) async fn send_all(tx: &mut http::BodySender, pieces: Vec<http::Piece>) -> bool {
    for p in pieces {
        if tx.send(p).await.is_err() {
            return false;
        }
    }
    true
}

/// A pack's side-band framing, cut into pieces of about [`SEND_PIECE`] as it is
/// written.
pub(super) struct Cut<'a> {
    out: &'a mut pktline::BandWriter,
    pieces: &'a mut Vec<http::Piece>,
}

impl Cut<'_> {
    fn cut(&mut self) {
        if self.out.len() >= SEND_PIECE {
            self.pieces.push(self.out.take_piece());
        }
    }
}

impl<C: AsRef<[u8]> + 'static> upload::PackSink<C> for Cut<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.out.write(b);
        self.cut();
    }
    fn stored(&mut self, deflated: C) {
        let len = deflated.as_ref().len();
        if len <= SEND_PIECE {
            self.out.write_owned(deflated);
            self.cut();
            return;
        }
        // A large entry in several pieces: each piece pins its whole read buffer, so
        // pieces of one entry, not one piece per entry, fill the response channel.
        let all = crate::piece::LocalBytes::new(deflated);
        let mut at = 0;
        while at < len {
            let n = SEND_PIECE.min(len - at);
            self.out.write_local(all.slice(at..at + n));
            self.cut();
            at += n;
        }
    }
}
