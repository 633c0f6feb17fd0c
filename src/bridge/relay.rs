//! git's protocol between an ssh client (one stateful stream) and the node's smart
//! HTTP (a request and a response per round). receive-pack maps one to one: the
//! commands and the pack are one request, the report its response. upload-pack v0 is
//! a conversation over ssh: the client sends wants, then haves a batch at a time,
//! reading the server's acknowledgements between batches, then `done`. Over HTTP each
//! batch is a request of its own, which repeats the wants and the haves found common
//! so far (as git's own stateless client does); a shallow clone's boundary, which the
//! client reads before its first haves, comes from a request of the wants alone.

use std::io::{Read, Write};

use anyhow::{anyhow, bail, Context, Result};

use super::http::{self, Body, Target};

/// Longest pkt-line git sends (65520 bytes, its header included).
const PKT_MAX: usize = 65520;

/// Most bytes of one section a client sends before its flush (commands, wants, a
/// batch of haves), and of the haves found common that each round repeats: the node's
/// own default for a negotiation (`limits.negotiation_bytes_max`).
pub(super) const SECTION_BYTES_MAX: usize = 64 << 20;

/// Appends a pkt-line to a section, within [`SECTION_BYTES_MAX`].
fn add(section: &mut Vec<u8>, p: &Pkt) -> Result<()> {
    if section.len() + p.raw().len() > SECTION_BYTES_MAX {
        bail!("the client sent more than {SECTION_BYTES_MAX} bytes before a flush");
    }
    section.extend_from_slice(&p.raw());
    Ok(())
}

/// A pkt-line as read: its raw bytes (header included), to pass on unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Pkt {
    /// `0000`.
    Flush,
    /// `0001`, `0002` (protocol v2).
    Special(Vec<u8>),
    /// A data line: raw bytes and its payload.
    Data(Vec<u8>),
}

impl Pkt {
    fn raw(&self) -> Vec<u8> {
        match self {
            Pkt::Flush => b"0000".to_vec(),
            Pkt::Special(r) | Pkt::Data(r) => r.clone(),
        }
    }

    fn payload(&self) -> &[u8] {
        match self {
            Pkt::Data(r) => &r[4..],
            _ => &[],
        }
    }
}

/// Reads one pkt-line; `None` at a clean end before it.
pub(super) fn read_pkt(r: &mut impl Read) -> Result<Option<Pkt>> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut head[got..])?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            bail!("the stream ended inside a pkt-line header");
        }
        got += n;
    }
    let text = std::str::from_utf8(&head).map_err(|_| anyhow!("bad pkt-line header {head:?}"))?;
    let len =
        usize::from_str_radix(text, 16).map_err(|_| anyhow!("bad pkt-line header {text:?}"))?;
    match len {
        0 => Ok(Some(Pkt::Flush)),
        1 | 2 => Ok(Some(Pkt::Special(head.to_vec()))),
        3 => bail!("bad pkt-line length 3"),
        n if n > PKT_MAX => bail!("pkt-line of {n} bytes, past git's {PKT_MAX}"),
        n => {
            let mut raw = vec![0u8; n];
            raw[..4].copy_from_slice(&head);
            r.read_exact(&mut raw[4..])
                .context("the stream ended inside a pkt-line")?;
            Ok(Some(Pkt::Data(raw)))
        }
    }
}

pub(super) fn pkt(payload: &str) -> Vec<u8> {
    let mut v = format!("{:04x}", payload.len() + 4).into_bytes();
    v.extend_from_slice(payload.as_bytes());
    v
}

/// An error as git shows it: an `ERR` line.
pub(super) fn err_pkt(msg: &str) -> Vec<u8> {
    let mut m: String = msg.chars().filter(|c| *c != '\n').collect();
    let mut end = m.len().min(PKT_MAX - 16);
    while !m.is_char_boundary(end) {
        end -= 1;
    }
    m.truncate(end);
    pkt(&format!("ERR {m}\n"))
}

/// A request to the node for repository `repo`.
pub(super) struct Node<'a> {
    pub target: &'a Target,
    pub repo: &'a str,
    pub headers: Vec<(String, String)>,
}

impl Node<'_> {
    fn get_refs(&self, service: &str) -> Result<http::Response> {
        let r = http::request(
            self.target,
            "GET",
            &format!("/repo/{}.git/info/refs?service={service}", self.repo),
            &self.headers,
            Body::None,
        )?;
        ok(r)
    }

    fn post(&self, service: &str, body: Body<'_>) -> Result<http::Response> {
        let mut headers = self.headers.clone();
        headers.push((
            "Content-Type".into(),
            format!("application/x-{service}-request"),
        ));
        let r = http::request(
            self.target,
            "POST",
            &format!("/repo/{}.git/{service}", self.repo),
            &headers,
            body,
        )?;
        ok(r)
    }

    /// The ref advertisement of `service`, without smart HTTP's `# service=` preamble
    /// (which git over ssh does not send).
    fn advertise(&self, service: &str, out: &mut impl Write) -> Result<()> {
        let mut r = self.get_refs(service)?;
        let first = read_pkt(&mut r.body)?;
        match &first {
            Some(p) if p.payload().starts_with(b"# service=") => {
                if read_pkt(&mut r.body)? != Some(Pkt::Flush) {
                    bail!("the node's advertisement has no flush after its preamble");
                }
            }
            Some(p) => out.write_all(&p.raw())?,
            None => bail!("the node sent an empty advertisement"),
        }
        std::io::copy(&mut r.body, out)?;
        out.flush()?;
        Ok(())
    }
}

/// A response with a status other than 200 as an error that quotes it.
fn ok(mut r: http::Response) -> Result<http::Response> {
    if r.status == 200 {
        return Ok(r);
    }
    let mut text = Vec::new();
    let _ = (&mut r.body).take(4096).read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text);
    let why = match r.status {
        404 => "repository not found (or not yours to see)".to_owned(),
        _ => format!("the node answered {}: {}", r.status, text.trim()),
    };
    Err(anyhow!(why))
}

/// Bridges `git-receive-pack`.
pub(super) fn receive_pack(
    node: &Node<'_>,
    input: &mut impl Read,
    out: &mut impl Write,
) -> Result<()> {
    node.advertise("git-receive-pack", out)?;
    // The commands (and shallow lines) to a flush; push options to another if the
    // client asked for them; then the pack, to the end of the stream, if any command
    // creates or updates a ref.
    let mut head = Vec::new();
    let mut first = true;
    let mut options = false;
    let mut needs_pack = false;
    loop {
        match read_pkt(input)? {
            None if first => return Ok(()),
            None => bail!("the client stopped in the middle of its commands"),
            Some(Pkt::Flush) if first => return Ok(()), // nothing to push
            Some(Pkt::Flush) => {
                head.extend_from_slice(b"0000");
                break;
            }
            Some(p) => {
                let line = p.payload();
                let (cmd, caps) = match line.iter().position(|b| *b == 0) {
                    Some(z) => (&line[..z], &line[z + 1..]),
                    None => (line, &[][..]),
                };
                // The capabilities ride on the first command (after any shallow lines).
                if caps.split(|b| *b == b' ').any(|c| c == b"push-options") {
                    options = true;
                }
                if !cmd.starts_with(b"shallow ")
                    && cmd
                        .get(41..81)
                        .is_some_and(|new| new.iter().any(|b| *b != b'0'))
                {
                    needs_pack = true;
                }
                first = false;
                add(&mut head, &p)?;
            }
        }
    }
    if options {
        loop {
            match read_pkt(input)? {
                None => bail!("the client stopped in the middle of its push options"),
                Some(p) => {
                    add(&mut head, &p)?;
                    if p == Pkt::Flush {
                        break;
                    }
                }
            }
        }
    }
    let body = if needs_pack {
        Body::Stream {
            first: &head,
            rest: input,
        }
    } else {
        Body::Bytes(&head)
    };
    let mut r = node.post("git-receive-pack", body)?;
    std::io::copy(&mut r.body, out)?;
    out.flush()?;
    Ok(())
}

/// Bridges `git-upload-pack` (protocol v0: what git over ssh speaks unless both sides
/// pass `GIT_PROTOCOL`).
pub(super) fn upload_pack(
    node: &Node<'_>,
    input: &mut impl Read,
    out: &mut impl Write,
) -> Result<()> {
    node.advertise("git-upload-pack", out)?;
    let mut wants = Vec::new();
    let mut deepen = false;
    loop {
        match read_pkt(input)? {
            // `ls-remote`, or a fetch with nothing to fetch: a flush and the end.
            None | Some(Pkt::Flush) if wants.is_empty() => return Ok(()),
            None => bail!("the client stopped in the middle of its wants"),
            Some(Pkt::Flush) => {
                wants.extend_from_slice(b"0000");
                break;
            }
            Some(p) => {
                deepen |= p.payload().starts_with(b"deepen");
                add(&mut wants, &p)?;
            }
        }
    }
    if deepen {
        // The client reads the new shallow boundary before it sends any have.
        let mut r = node.post("git-upload-pack", Body::Bytes(&wants))?;
        relay_shallow(&mut r.body, Some(&mut *out))?;
        out.flush()?;
    }
    let mut common = Common::default();
    loop {
        let mut batch = Vec::new();
        let mut done = false;
        loop {
            match read_pkt(input)? {
                None => return Ok(()),
                Some(Pkt::Flush) => break,
                Some(p) if p.payload().starts_with(b"done") => {
                    done = true;
                    break;
                }
                Some(p) => add(&mut batch, &p)?,
            }
        }
        let mut body = wants.clone();
        body.extend_from_slice(&common.haves);
        body.extend_from_slice(&batch);
        body.extend_from_slice(if done { b"0009done\n" } else { b"0000" });
        let mut r = node.post("git-upload-pack", Body::Bytes(&body))?;
        if deepen {
            relay_shallow(&mut r.body, None)?;
        }
        let ended = relay_round(&mut r.body, out, done, &mut common)?;
        out.flush()?;
        if ended {
            return Ok(());
        }
    }
}

/// Reads a response's shallow lines up to their flush, passing them to `out` if given.
fn relay_shallow(r: &mut impl Read, mut out: Option<&mut dyn Write>) -> Result<()> {
    loop {
        match read_pkt(r)? {
            None => bail!("the node's answer ended before its shallow lines did"),
            Some(p) => {
                if let Some(o) = out.as_mut() {
                    o.write_all(&p.raw())?;
                }
                if p == Pkt::Flush {
                    return Ok(());
                }
                if p.payload().starts_with(b"ERR ") {
                    return Err(anyhow!(
                        "{}",
                        String::from_utf8_lossy(&p.payload()[4..]).trim().to_owned()
                    ));
                }
            }
        }
    }
}

/// The haves the node acknowledged as common, which every later round repeats (as
/// git's stateless client does).
#[derive(Default)]
struct Common {
    seen: std::collections::HashSet<Vec<u8>>,
    /// Their `have` lines.
    haves: Vec<u8>,
}

/// Passes one round's answer on, noting the haves it found common. Whether the
/// conversation is over (the pack was sent, or an error). A round that is not the
/// last must end with its NAK: anything else would leave the client waiting.
fn relay_round(
    r: &mut impl Read,
    out: &mut impl Write,
    done: bool,
    common: &mut Common,
) -> Result<bool> {
    loop {
        let Some(p) = read_pkt(r)? else {
            if done {
                return Ok(true);
            }
            bail!("the node's answer to a round of haves ended without its NAK");
        };
        out.write_all(&p.raw())?;
        let line = p.payload();
        if let Some(rest) = line.strip_prefix(b"ACK ") {
            let oid = rest.get(..40).unwrap_or_default();
            let status = rest.get(40..).unwrap_or_default().trim_ascii();
            if status.is_empty() {
                // The last acknowledgement: the pack follows.
                std::io::copy(r, out)?;
                return Ok(true);
            }
            if status == b"common" && common.seen.insert(oid.to_vec()) {
                let have = pkt(&format!("have {}\n", String::from_utf8_lossy(oid)));
                if common.haves.len() + have.len() > SECTION_BYTES_MAX {
                    bail!("more haves in common than a request may carry");
                }
                common.haves.extend_from_slice(&have);
            }
        } else if line.starts_with(b"NAK") {
            if done {
                std::io::copy(r, out)?;
                return Ok(true);
            }
            // The round is over, unless the node is ready and sends the pack now
            // (no-done): its last ACK follows at once.
            return relay_after_nak(r, out);
        } else if line.starts_with(b"ERR ") {
            return Ok(true);
        }
    }
}

/// After a round's NAK: the end of the answer, or (no-done) the last ACK and the pack.
fn relay_after_nak(r: &mut impl Read, out: &mut impl Write) -> Result<bool> {
    match read_pkt(r)? {
        None => Ok(false),
        Some(p) => {
            out.write_all(&p.raw())?;
            if p.payload().starts_with(b"ACK ") || p.payload().starts_with(b"ERR ") {
                std::io::copy(r, out)?;
                return Ok(true);
            }
            bail!("the node's answer went on after its NAK with something else than its last ACK")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkt_lines_read_whole_or_fail() {
        let mut r: &[u8] = b"0009done\n00000001";
        assert_eq!(
            read_pkt(&mut r).expect("line"),
            Some(Pkt::Data(b"0009done\n".to_vec()))
        );
        assert_eq!(read_pkt(&mut r).expect("flush"), Some(Pkt::Flush));
        assert_eq!(
            read_pkt(&mut r).expect("delim"),
            Some(Pkt::Special(b"0001".to_vec()))
        );
        assert_eq!(read_pkt(&mut r).expect("end"), None);
        for bad in [&b"00"[..], b"zzzz", b"0003", b"0010short", b"ffff"] {
            let mut r = bad;
            assert!(read_pkt(&mut r).is_err(), "{bad:?}");
        }
        assert_eq!(err_pkt("no\nway"), b"000eERR noway\n");
    }

    #[test]
    fn a_round_notes_what_is_common_and_ends_with_the_pack() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let answer = [
            pkt(&format!("ACK {a} common\n")),
            pkt(&format!("ACK {b} ready\n")),
            pkt("NAK\n"),
        ]
        .concat();
        let (mut out, mut common) = (Vec::new(), Common::default());
        assert!(!relay_round(&mut &answer[..], &mut out, false, &mut common).expect("round"));
        assert_eq!(out, answer);
        assert_eq!(
            common.seen.len(),
            1,
            "only `common` acknowledgements are repeated"
        );
        // Again: nothing new is noted; then the last ACK and the pack.
        let last = [
            pkt(&format!("ACK {a} common\n")),
            pkt(&format!("ACK {a}\n")),
            b"PACK...".to_vec(),
        ]
        .concat();
        let mut out = Vec::new();
        assert!(relay_round(&mut &last[..], &mut out, false, &mut common).expect("round"));
        assert_eq!(out, last);
        assert_eq!(common.seen.len(), 1);
        // ready, NAK, then (no-done) the last ACK and the pack at once.
        let ready = [
            pkt(&format!("ACK {b} ready\n")),
            pkt("NAK\n"),
            pkt(&format!("ACK {b}\n")),
            b"PACK...".to_vec(),
        ]
        .concat();
        let mut out = Vec::new();
        assert!(relay_round(&mut &ready[..], &mut out, false, &mut common).expect("round"));
        assert_eq!(out, ready);
        // A round that ends without its NAK would leave the client waiting: an error.
        let cut = pkt(&format!("ACK {a} common\n"));
        assert!(relay_round(&mut &cut[..], &mut Vec::new(), false, &mut common).is_err());
    }
}
