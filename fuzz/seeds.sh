#!/usr/bin/env bash
# Seed corpora for the fuzz targets, made from real git traffic: a small history with
# nested trees, delta chains, a merge and an annotated tag is cloned (protocol v2 and
# v0), fetched into and pushed with GIT_TRACE_PACKET on; the requests git sent are
# turned back into request bodies. Packs come from git pack-objects (full and thin),
# objects from git cat-file. Writes fuzz/seeds/<target>/ anew (not committed).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/seeds"
rm -rf "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export GIT_CONFIG_NOSYSTEM=1 HOME="$work" GIT_AUTHOR_NAME=A GIT_AUTHOR_EMAIL=a@example.com \
    GIT_COMMITTER_NAME=C GIT_COMMITTER_EMAIL=c@example.com
git config --global init.defaultBranch master
for t in pktline upload_request receive_request pack_stream delta objects names cert_extensions; do
    mkdir -p "$out/$t"
done

# A history: a growing file (delta chains), nested directories, a branch and a merge.
src="$work/src"
git init -q "$src"
cd "$src"
mkdir -p a/b/c d
for i in $(seq 1 12); do
    seq 1 $((i * 40)) > a/b/c/grow.txt
    echo "file $i" > "d/f$i"
    printf '#!/bin/sh\necho %s\n' "$i" > a/run.sh && chmod +x a/run.sh
    git add -A && git commit -qm "commit $i"
done
ln -s a/run.sh link && git add link && git commit -qm "a symlink"
git checkout -qb side HEAD~3
echo side > d/side && git add -A && git commit -qm side
git checkout -q master
git merge -q --no-edit side
git tag -a v1 -m "release 1"
git tag light HEAD~2

# Requests: a v2 clone (ls-refs, fetch), a v0 clone, incremental fetches with haves,
# a shallow and a partial clone, a push (commands and capabilities) and a push from the
# shallow clone.
to_bodies() { # trace file, direction marker (e.g. "upload-pack<"), output prefix
    python3 - "$@" <<'PY'
import re, sys
trace, marker, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
bodies, cur = [], b""
for line in open(trace, "rb"):
    m = re.search(rb"packet: +" + re.escape(marker.encode()) + rb" (.*)$", line.rstrip(b"\n"))
    if not m:
        continue
    p = m.group(1)
    if p in (b"0000", b"0001", b"0002"):
        cur += p
        if p == b"0000":
            bodies.append(cur)
    else:
        p = p.replace(b"\\0", b"\0") + b"\n"
        cur += b"%04x" % (len(p) + 4) + p
bodies.append(cur)
for i, b in enumerate(x for x in bodies if x):
    open(f"{prefix}-{i}", "wb").write(b)
PY
}
cd "$work"
GIT_TRACE_PACKET="$work/v2.trace" git -c protocol.version=2 clone -q --no-local "file://$src" c2
GIT_TRACE_PACKET="$work/v0.trace" git -c protocol.version=0 clone -q --no-local "file://$src" c0
(cd "$src" && echo more >> d/f1 && git commit -qam more && git tag -a v2 -m two)
GIT_TRACE_PACKET="$work/v2f.trace" git -C c2 -c protocol.version=2 fetch -q origin
GIT_TRACE_PACKET="$work/v0f.trace" git -C c0 -c protocol.version=0 fetch -q origin
GIT_TRACE_PACKET="$work/v2s.trace" git -c protocol.version=2 clone -q --no-local --depth 2 "file://$src" c2s
# Deepening: a fetch that deepens the shallow clone, clones cut by time and by ref.
GIT_TRACE_PACKET="$work/v2d.trace" git -C c2s -c protocol.version=2 fetch -q --deepen=1 origin
GIT_TRACE_PACKET="$work/v0t.trace" git -c protocol.version=0 clone -q --no-local \
    --shallow-since="1 hour ago" "file://$src" c0t
GIT_TRACE_PACKET="$work/v2x.trace" git -c protocol.version=2 clone -q --no-local \
    --shallow-exclude=v1 "file://$src" c2x
git -C "$src" config uploadpack.allowFilter true
GIT_TRACE_PACKET="$work/v2p.trace" git -c protocol.version=2 clone -q --no-local \
    --filter=blob:none "file://$src" cpf
for t in v2 v0 v2f v0f v2s v2p v2d v0t v2x; do
    to_bodies "$work/$t.trace" "upload-pack<" "$out/upload_request/$t"
done
git init -q --bare "$work/bare.git"
(cd c2 && echo pushed >> d/f2 && git commit -qam pushed)
git -C "$work/bare.git" config receive.advertisePushOptions true
GIT_TRACE_PACKET="$work/push.trace" git -C c2 -c protocol.version=0 push -q --atomic \
    -o ci.skip "file://$work/bare.git" master v1 refs/remotes/origin/side:refs/heads/side
# A push from the shallow clone: its boundary comes first.
(cd c2s && echo shallow >> d/f3 && git commit -qam "from a shallow clone")
GIT_TRACE_PACKET="$work/spush.trace" git -C c2s push -q "file://$work/bare.git" \
    HEAD:refs/heads/shallow-work
to_bodies "$work/push.trace" "receive-pack<" "$out/receive_request/push"
to_bodies "$work/spush.trace" "receive-pack<" "$out/receive_request/shallow-push"
# A push request with its pack after the commands, as it comes over HTTP.
for f in "$out"/receive_request/push-*; do
    { cat "$f"; git -C c2 pack-objects --stdout --revs -q <<<"master" ; } > "$f.with-pack"
done
cp "$out"/upload_request/* "$out"/receive_request/* "$out/pktline/"

# Packs: whole, thin (bases outside), and without deltas.
git -C "$src" pack-objects --stdout --all -q </dev/null > "$out/pack_stream/all.pack"
printf 'master\n^master~4\n' | git -C "$src" pack-objects --stdout --revs --thin -q > "$out/pack_stream/thin.pack"
printf 'master\n^master~1\n' | git -C "$src" pack-objects --stdout --revs --depth=0 -q > "$out/pack_stream/nodelta.pack"

# Objects, each prefixed with its kind's byte as the target reads it (0 commit,
# 1 tree, 2 tag, 3 blob).
obj() { { printf "\\x$1"; git -C "$src" cat-file "$2" "$3"; } > "$out/objects/$4"; }
obj 00 commit master merge-commit
obj 00 commit master~1 commit
obj 01 tree master root-tree
obj 01 tree master:a nested-tree
obj 02 tag v1 tag
obj 03 blob master:a/run.sh blob

# Delta: the target splits at its first byte's value; a base of 16 bytes and a delta
# that copies a part of it and inserts three bytes.
printf '\x10abcdefghijklmnop\x10\x07\x90\x04\x03XYZ' > "$out/delta/copy-insert"

# Names: real ref names and request paths.
git -C "$src" for-each-ref --format='%(refname)' | while read -r r; do
    printf '%s' "$r" > "$out/names/$(echo "$r" | tr / _)"
done
printf '/repo/rpms/kernel.git/info/refs' > "$out/names/path"
printf '/rpc/shard/3/raft-append' > "$out/names/rpc"

# Certificates (DER) for the extension target.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=seed \
    -keyout "$work/k.pem" -out "$work/c.pem" -days 1 2>/dev/null
openssl x509 -in "$work/c.pem" -outform der -out "$out/cert_extensions/cert.der"
printf '\x30\x06\x0c\x01*\x0c\x01a' > "$out/cert_extensions/strings"

echo "seeds: $(find "$out" -type f | wc -l) files in $out"
