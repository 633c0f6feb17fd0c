//! `config.yml`: reading, defaults and validation.
//!
//! The file keeps the Go original's keys so an existing `/etc/repospanner/config.yml`
//! works unchanged; keys we add (`storage.shards`, `limits.*`) have defaults and are
//! listed, commented, in `deploy/config.example.yml`. Parsing is strict: an unknown
//! key or a wrong type is an error naming the key. Each command then asks for the
//! validated view it needs ([`Config::ca_dir`], [`Config::admin`], [`Config::serve`]),
//! and that view checks the files it refers to, so a bad config fails before anything
//! is written.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use repospanner_ca::{CertFacts, CertKind};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// Where `repospanner` looks for its configuration without `--config`.
pub const DEFAULT_PATH: &str = "/etc/repospanner/config.yml";

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}` is required for this command but is not set")]
    Missing { key: &'static str },
    #[error("config key `{key}`: invalid value {value:?}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
    #[error("config key `{key}`: {path}: {reason}")]
    File {
        key: String,
        path: PathBuf,
        reason: String,
    },
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// The whole file, as written (all sections optional; commands validate what they use).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub ca: CaSection,
    pub admin: AdminSection,
    pub storage: StorageSection,
    pub listen: ListenSection,
    pub certificates: CertificatesSection,
    pub checks: ChecksSection,
    pub hooks: HooksSection,
    pub silly: SillySection,
    pub limits: Limits,
    pub spawn: SpawnSection,
    pub raft: RaftSection,
}

/// Replication settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    /// A shard's group snapshots its state every this many log entries and purges the
    /// log before it (keeping a quarter of it for members that lag a little).
    pub snapshot_entries: u64,
}

impl Default for RaftSection {
    fn default() -> Self {
        RaftSection {
            snapshot_entries: 2000,
        }
    }
}

/// What `serve --spawn` creates in a new region.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpawnSection {
    /// Repositories to create with the region (the quick start creates `test`).
    pub repos: Vec<SpawnRepo>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnRepo {
    pub name: String,
    #[serde(default)]
    pub public: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaSection {
    pub path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    pub url: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// Node state: identity, raft logs, segments.
    pub state: Option<PathBuf>,
    pub git: GitSection,
    /// Shards (raft groups) for a new cluster; fixed at `serve --spawn`.
    /// Default: the number of cores.
    pub shards: Option<u32>,
    /// A log segment is sealed, and a new one started, at this size (MiB, 1 to 4096).
    pub segment_mib: u64,
    pub compaction: CompactionSection,
    pub scrub: ScrubSection,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            state: None,
            git: GitSection::default(),
            shards: None,
            segment_mib: 1024,
            compaction: CompactionSection::default(),
            scrub: ScrubSection::default(),
        }
    }
}

/// The background scrub of each shard's log (`admin scrub` runs one at once). On by
/// default: bit rot in a segment that is rarely read is otherwise found only when a
/// clone needs it, and a member that still holds the object may be gone by then. At
/// the default rate a shard of 100 GiB takes under four hours, once a week.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScrubSection {
    pub enabled: bool,
    /// Most MiB one shard reads per second while it scrubs.
    pub mib_per_second: u64,
    /// Time between the end of one scrub and the start of the next.
    pub interval_seconds: u64,
}

impl Default for ScrubSection {
    fn default() -> Self {
        ScrubSection {
            enabled: true,
            mib_per_second: 8,
            interval_seconds: 7 * 24 * 3600,
        }
    }
}

/// Online compaction of each shard's log (`repospanner_storage`'s `compact_segment`).
/// On by default: refused pushes, deleted repositories and the raft log's past only
/// become space again this way, and a node runs for years.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactionSection {
    pub enabled: bool,
    /// A sealed segment is compacted once at most this share of it is live (0 to 1)
    /// and at least an eighth of a segment in it is dead.
    pub live_share_max: f64,
    /// Most MiB of live records one shard copies per second.
    pub mib_per_second: u64,
    /// How often each shard looks for a segment to compact.
    pub interval_seconds: u64,
}

impl Default for CompactionSection {
    fn default() -> Self {
        CompactionSection {
            enabled: true,
            live_share_max: 0.5,
            mib_per_second: 32,
            interval_seconds: 60,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitSection {
    /// Only `tree` existed in the Go original; accepted for compatibility, unused.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Accepted for compatibility; a node is always clustered.
    pub clustered: Option<bool>,
    /// Object store root.
    pub directory: Option<PathBuf>,
    /// Accepted for compatibility; objects are stored as git deflated them.
    pub compressmethod: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenSection {
    pub rpc: Option<String>,
    pub http: Option<String>,
    /// `host:port` peers dial to reach this node's `listen.rpc` (default: `listen.rpc`
    /// if it is a specific address, else `<node>.<region>.<cluster>:<rpc port>`, the
    /// Go original's RPC URL).
    pub rpc_advertise: Option<String>,
    /// A plain-HTTP listener for scrapers and load balancers on a private address:
    /// `GET /metrics`, `/livez` and `/readyz` only, without a certificate (off unless
    /// set).
    pub metrics: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertKeyPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CertificatesSection {
    pub ca: Option<PathBuf>,
    pub client: Option<CertKeyPaths>,
    /// By SNI name; `default` is required to serve.
    pub server: BTreeMap<String, CertKeyPaths>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChecksSection {
    /// Walk the whole new history on push (default true, as in the Go original).
    pub paranoid: bool,
    /// Object checks a push must pass are git's `receive.fsckObjects`, always on; this
    /// relaxes (or tightens) single checks by git's message ids, as git's
    /// `receive.fsck.<msg-id>` does: `"zeroPaddedFilemode=ignore,badTimezone=warn"`.
    pub fsck: String,
}

impl Default for ChecksSection {
    fn default() -> Self {
        ChecksSection {
            paranoid: true,
            fsck: String::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksSection {
    /// The Go original's `repohookrunner`: not needed, ignored.
    pub runner: Option<PathBuf>,
    /// The uid (and gid) hooks run as; 0: the node's own.
    pub user: u32,
    /// `GIT_TRACE` in hooks.
    pub debug: bool,
    pub bubblewrap: Option<BubblewrapSection>,
    /// A hook still running after this long is killed and its push refused.
    pub timeout_seconds: u64,
    /// All of a push's update hooks (one per ref) together; refs left are refused.
    pub push_timeout_seconds: u64,
    /// Most output of one hook passed to the client.
    pub output_bytes_max: usize,
}

impl Default for HooksSection {
    fn default() -> Self {
        HooksSection {
            runner: None,
            user: 0,
            debug: false,
            bubblewrap: None,
            timeout_seconds: 10,
            push_timeout_seconds: 60,
            output_bytes_max: 1 << 20,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BubblewrapSection {
    pub enabled: bool,
    /// The bubblewrap program (default `bwrap`, found on `PATH`).
    pub program: Option<PathBuf>,
    pub unshare: Option<Vec<String>>,
    pub share_net: bool,
    pub mount_proc: bool,
    pub mount_dev: bool,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub hostname: Option<String>,
    pub bind: Option<Vec<[String; 2]>>,
    pub ro_bind: Option<Vec<[String; 2]>>,
    pub symlink: Option<Vec<[String; 2]>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SillySection {
    /// Branch HEAD points at in a new repository.
    pub defaulthead: String,
}

impl Default for SillySection {
    fn default() -> Self {
        SillySection {
            defaulthead: "master".into(),
        }
    }
}

/// Named limits: every queue and input has one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest pack a push may send.
    pub pack_bytes_max: u64,
    /// Largest single object (inflated) a push may carry.
    pub object_bytes_max: u64,
    /// Most bytes verifying one push may inflate and produce by applying deltas.
    pub push_inflated_bytes_max: u64,
    /// Most ref updates in one push.
    pub refs_per_push_max: u32,
    /// Most concurrent client connections per node.
    pub connections_max: u32,
    /// How long a push waits for a majority before failing, in seconds.
    pub replication_timeout_seconds: u32,
    /// Most bytes of request bodies (pushes) the node holds at once, in memory or, for
    /// a body past 4 MiB, in an unnamed file under `<git dir>/spool` until it is
    /// verified and stored; a push beyond it is refused with 503 at once. Each shard
    /// gets an equal part, but never less than one push of `pack_bytes_max`.
    pub buffered_bytes_max: u64,
    /// A push is refused (507) when spooling it would leave less than this free on the
    /// git directory's file system, so pushes in flight never fill the disk the store
    /// writes to.
    pub disk_reserve_bytes: u64,
    /// Largest upload-pack (clone, fetch) request body, after gzip is undone.
    pub negotiation_bytes_max: u64,
    /// Most object ids (want, have, shallow) and ref names (deepen-not) in one
    /// upload-pack request.
    pub negotiation_ids_max: u32,
    /// Longest ref name a push may create or update, in bytes.
    pub ref_name_bytes_max: u32,
    /// Most capabilities in one request.
    pub capabilities_max: u32,
    /// Most push options (`git push -o`) in one push.
    pub push_options_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            pack_bytes_max: 2 << 30,
            object_bytes_max: 1 << 30,
            push_inflated_bytes_max: 64 << 30,
            refs_per_push_max: 100_000,
            connections_max: 4096,
            replication_timeout_seconds: 30,
            buffered_bytes_max: 4 << 30,
            disk_reserve_bytes: 1 << 30,
            negotiation_bytes_max: 64 << 20,
            negotiation_ids_max: 1_000_000,
            ref_name_bytes_max: 4096,
            capabilities_max: 256,
            push_options_max: 256,
        }
    }
}

impl Config {
    /// Reads and parses `path`. Unknown keys and wrong types are errors.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses YAML text (an empty document is an error, not an empty config).
    pub fn parse(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Err("the file is empty".into());
        }
        let config: Config = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        config.check_values().map_err(|e| e.to_string())?;
        Ok(config)
    }

    /// The Go original's keys this node accepts but does not follow, set to a value
    /// that asks for something else: what the node does instead.
    pub fn ignored_keys(&self) -> Vec<String> {
        let mut ignored = Vec::new();
        if !self.checks.paranoid {
            ignored.push(
                "checks.paranoid: false is ignored: every push's connectivity is checked \
                 in full (every object its new history names is pushed or stored)"
                    .to_owned(),
            );
        }
        if let Some(m) = self
            .storage
            .git
            .compressmethod
            .as_deref()
            .filter(|m| *m != "none")
        {
            ignored.push(format!(
                "storage.git.compressmethod: {m} is ignored: objects are stored as git \
                 deflated them in the pack"
            ));
        }
        if self.storage.git.clustered == Some(false) {
            ignored.push(
                "storage.git.clustered: false is ignored: a node always replicates to its \
                 region (a region of one node is a single server)"
                    .to_owned(),
            );
        }
        if self.hooks.runner.is_some() {
            ignored.push(
                "hooks.runner is ignored: the node runs hooks itself (no repohookrunner)"
                    .to_owned(),
            );
        }
        ignored
    }

    /// How this node runs hooks, from `hooks.*`.
    fn hook_settings(&self, state_dir: &Path) -> Result<repospanner_net::hooks::Settings> {
        let h = &self.hooks;
        let sandbox = match &h.bubblewrap {
            Some(b) if b.enabled => {
                let sb = repospanner_net::hooks::Sandbox {
                    bwrap: b.program.clone().unwrap_or_else(|| "bwrap".into()),
                    unshare: b.unshare.clone().unwrap_or_default(),
                    share_net: b.share_net,
                    mount_proc: b.mount_proc,
                    mount_dev: b.mount_dev,
                    uid: b.uid,
                    gid: b.gid,
                    hostname: b.hostname.clone(),
                    bind: b.bind.clone().unwrap_or_default(),
                    ro_bind: b.ro_bind.clone().unwrap_or_default(),
                    symlink: b.symlink.clone().unwrap_or_default(),
                };
                sb.check()
                    .map_err(|why| invalid("hooks.bubblewrap", "", &why))?;
                Some(sb)
            }
            _ => None,
        };
        if h.timeout_seconds == 0 || h.timeout_seconds > 3600 {
            return Err(invalid(
                "hooks.timeout_seconds",
                &h.timeout_seconds.to_string(),
                "must be 1 to 3600",
            ));
        }
        Ok(repospanner_net::hooks::Settings {
            dir: state_dir.join("hooks"),
            sandbox,
            timeout: std::time::Duration::from_secs(h.timeout_seconds),
            push_timeout: std::time::Duration::from_secs(
                h.push_timeout_seconds.max(h.timeout_seconds),
            ),
            output_bytes_max: h.output_bytes_max,
            user: (h.user != 0).then_some(h.user),
            debug: h.debug,
        })
    }

    /// Checks values that need no file access.
    fn check_values(&self) -> Result<()> {
        if let Some(kind) = &self.storage.git.kind {
            if kind != "tree" {
                return Err(invalid("storage.git.type", kind, "only `tree` is known"));
            }
        }
        if let Some(method) = &self.storage.git.compressmethod {
            if !matches!(method.as_str(), "none" | "gzip" | "zlib") {
                return Err(invalid(
                    "storage.git.compressmethod",
                    method,
                    "expected none, gzip or zlib",
                ));
            }
        }
        if self.storage.shards == Some(0) || self.storage.shards.is_some_and(|s| s > 1024) {
            return Err(invalid(
                "storage.shards",
                &format!("{:?}", self.storage.shards),
                "must be 1 to 1024",
            ));
        }
        check_refname_component("silly.defaulthead", &self.silly.defaulthead)?;
        for (key, value) in [
            ("listen.rpc", &self.listen.rpc),
            ("listen.http", &self.listen.http),
        ] {
            if let Some(v) = value {
                parse_addr(key, v)?;
            }
        }
        if let Some(url) = &self.admin.url {
            check_url("admin.url", url)?;
        }
        if let Err(why) = repospanner_net::git::fsck::Options::parse(&self.checks.fsck) {
            return Err(invalid("checks.fsck", &self.checks.fsck, &why));
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.pack_bytes_max", l.pack_bytes_max),
            ("limits.object_bytes_max", l.object_bytes_max),
            ("limits.push_inflated_bytes_max", l.push_inflated_bytes_max),
            ("limits.refs_per_push_max", u64::from(l.refs_per_push_max)),
            ("limits.connections_max", u64::from(l.connections_max)),
            ("limits.buffered_bytes_max", l.buffered_bytes_max),
            ("limits.negotiation_bytes_max", l.negotiation_bytes_max),
            (
                "limits.negotiation_ids_max",
                u64::from(l.negotiation_ids_max),
            ),
            ("limits.ref_name_bytes_max", u64::from(l.ref_name_bytes_max)),
            ("limits.capabilities_max", u64::from(l.capabilities_max)),
            (
                "limits.replication_timeout_seconds",
                u64::from(l.replication_timeout_seconds),
            ),
            ("raft.snapshot_entries", self.raft.snapshot_entries),
        ] {
            if v == 0 {
                return Err(invalid(key, "0", "must be greater than zero"));
            }
        }
        if l.ref_name_bytes_max as usize > repospanner_net::git::REF_NAME_BYTES_LIMIT {
            return Err(invalid(
                "limits.ref_name_bytes_max",
                &l.ref_name_bytes_max.to_string(),
                &format!(
                    "must be at most {} (a ref's line must fit one pkt-line)",
                    repospanner_net::git::REF_NAME_BYTES_LIMIT
                ),
            ));
        }
        Ok(())
    }

    /// `ca.path`, for the `ca` commands.
    pub fn ca_dir(&self) -> Result<&Path> {
        self.ca
            .path
            .as_deref()
            .ok_or(ConfigError::Missing { key: "ca.path" })
    }

    /// The `admin.*` keys, validated, for the `admin` commands.
    pub fn admin(&self) -> Result<AdminConfig> {
        let a = &self.admin;
        let url = a
            .url
            .clone()
            .ok_or(ConfigError::Missing { key: "admin.url" })?;
        let ca =
            a.ca.clone()
                .ok_or(ConfigError::Missing { key: "admin.ca" })?;
        let cert = a
            .cert
            .clone()
            .ok_or(ConfigError::Missing { key: "admin.cert" })?;
        let key = a
            .key
            .clone()
            .ok_or(ConfigError::Missing { key: "admin.key" })?;
        let ca_pem = read_certs("admin.ca", &ca)?;
        let cert_pem = read_certs("admin.cert", &cert)?;
        let key_pem = read_key("admin.key", &key)?;
        Ok(AdminConfig {
            url: url.trim_end_matches('/').to_owned(),
            ca_pem,
            cert_pem,
            key_pem,
            ca_path: ca,
            cert_path: cert,
            key_path: key,
        })
    }

    /// `storage.segment_mib` in bytes, and `storage.compaction` and `storage.scrub` if
    /// enabled, checked.
    fn storage_settings(&self) -> Result<(u64, Option<CompactionSection>, Option<ScrubSection>)> {
        let st = &self.storage;
        if !(1..=4096).contains(&st.segment_mib) {
            return Err(invalid(
                "storage.segment_mib",
                &st.segment_mib.to_string(),
                "expected 1 to 4096",
            ));
        }
        let c = &st.compaction;
        if !(c.live_share_max > 0.0 && c.live_share_max <= 1.0) {
            return Err(invalid(
                "storage.compaction.live_share_max",
                &c.live_share_max.to_string(),
                "expected a share above 0 and at most 1",
            ));
        }
        if c.interval_seconds == 0 {
            return Err(invalid(
                "storage.compaction.interval_seconds",
                "0",
                "expected at least 1",
            ));
        }
        let sc = &st.scrub;
        if sc.enabled && (sc.interval_seconds == 0 || sc.mib_per_second == 0) {
            return Err(invalid(
                "storage.scrub",
                &format!(
                    "{} MiB/s every {} s",
                    sc.mib_per_second, sc.interval_seconds
                ),
                "expected a rate and an interval of at least 1",
            ));
        }
        Ok((
            st.segment_mib << 20,
            c.enabled.then(|| c.clone()),
            sc.enabled.then(|| sc.clone()),
        ))
    }

    /// Everything `serve` needs, validated: addresses parse, every certificate and
    /// key is readable and parses, the node certificate is a node certificate.
    /// `listen.metrics`, on a port none of `taken` uses.
    fn metrics_addr(&self, taken: &[SocketAddr]) -> Result<Option<SocketAddr>> {
        let Some(m) = self.listen.metrics.as_deref() else {
            return Ok(None);
        };
        let a = parse_addr("listen.metrics", m)?;
        if taken.iter().any(|t| t.port() == a.port()) {
            return Err(invalid(
                "listen.metrics",
                m,
                "must use a port of its own (listen.http and listen.rpc take theirs)",
            ));
        }
        Ok(Some(a))
    }

    pub fn serve(&self) -> Result<ServeConfig> {
        let state_dir = self.storage.state.clone().ok_or(ConfigError::Missing {
            key: "storage.state",
        })?;
        let git_dir = self
            .storage
            .git
            .directory
            .clone()
            .unwrap_or_else(|| state_dir.join("git"));
        let rpc = self
            .listen
            .rpc
            .as_deref()
            .ok_or(ConfigError::Missing { key: "listen.rpc" })?;
        let http = self
            .listen
            .http
            .as_deref()
            .ok_or(ConfigError::Missing { key: "listen.http" })?;
        let listen_rpc = parse_addr("listen.rpc", rpc)?;
        let listen_http = parse_addr("listen.http", http)?;
        let listen_metrics = self.metrics_addr(&[listen_http, listen_rpc])?;

        let ca_path = self.certificates.ca.clone().ok_or(ConfigError::Missing {
            key: "certificates.ca",
        })?;
        let ca_pem = read_certs("certificates.ca", &ca_path)?;
        let client = self
            .certificates
            .client
            .clone()
            .ok_or(ConfigError::Missing {
                key: "certificates.client.cert",
            })?;
        let node_cert_pem = read_certs("certificates.client.cert", &client.cert)?;
        let node_key_pem = read_key("certificates.client.key", &client.key)?;
        let node = node_identity(&client.cert, &node_cert_pem, &ca_pem)?;

        if !self.certificates.server.contains_key("default") {
            return Err(ConfigError::Missing {
                key: "certificates.server.default",
            });
        }
        let mut server = BTreeMap::new();
        for (sni, paths) in &self.certificates.server {
            let cert = read_certs(&format!("certificates.server.{sni}.cert"), &paths.cert)?;
            let key = read_key(&format!("certificates.server.{sni}.key"), &paths.key)?;
            server.insert(sni.clone(), (cert, key));
        }
        let rpc_addr = match &self.listen.rpc_advertise {
            Some(a) => {
                let ok = a
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if !ok {
                    return Err(invalid(
                        "listen.rpc_advertise",
                        a,
                        "expected host:port, e.g. node1.example.org:8444",
                    ));
                }
                a.clone()
            }
            None if names_a_host(rpc) => rpc.to_owned(),
            None if listen_rpc.ip().is_unspecified() => format!(
                "{}.{}.{}:{}",
                node.name,
                node.region,
                node.cluster,
                listen_rpc.port()
            ),
            None => listen_rpc.to_string(),
        };
        let hooks = self.hook_settings(&state_dir)?;
        let (segment_bytes_max, compaction, scrub) = self.storage_settings()?;
        Ok(ServeConfig {
            segment_bytes_max,
            compaction,
            scrub,
            hooks,
            state_dir,
            git_dir,
            shards: self.storage.shards,
            listen_rpc,
            listen_http,
            listen_metrics,
            rpc_addr,
            ca_pem,
            node_cert_pem,
            node_key_pem,
            server_certs: server,
            node,
            ignored: self.ignored_keys(),
            fsck: self.checks.fsck.clone(),
            default_head: self.silly.defaulthead.clone(),
            limits: self.limits.clone(),
            raft: self.raft.clone(),
        })
    }
}

/// The node's identity, read from its own certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    pub cluster: String,
    pub region: String,
    pub name: String,
    pub id: u64,
}

/// The validated `admin.*` keys.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub url: String,
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// The files they were read from (for a `git` the admin client runs).
    pub ca_path: PathBuf,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub state_dir: PathBuf,
    pub git_dir: PathBuf,
    pub shards: Option<u32>,
    pub listen_rpc: SocketAddr,
    pub listen_http: SocketAddr,
    /// The plain listener for scrapers (`listen.metrics`), if set.
    pub listen_metrics: Option<SocketAddr>,
    /// Where peers reach `listen_rpc` (`host:port`).
    pub rpc_addr: String,
    pub ca_pem: Vec<u8>,
    pub node_cert_pem: Vec<u8>,
    pub node_key_pem: Vec<u8>,
    /// SNI name → (certificate chain PEM, key PEM); always has `default`.
    pub server_certs: BTreeMap<String, (Vec<u8>, Vec<u8>)>,
    pub node: NodeIdentity,
    /// How hooks run.
    pub hooks: repospanner_net::hooks::Settings,
    /// Keys of the Go original set to what this node does not do, each with what it
    /// does instead: logged as warnings at start.
    pub ignored: Vec<String>,
    /// `checks.fsck`, checked when the configuration was read.
    pub fsck: String,
    pub default_head: String,
    pub limits: Limits,
    pub raft: RaftSection,
    /// `storage.segment_mib` in bytes.
    pub segment_bytes_max: u64,
    /// `storage.compaction`, if enabled.
    pub compaction: Option<CompactionSection>,
    /// `storage.scrub`, if enabled.
    pub scrub: Option<ScrubSection>,
}

fn invalid(key: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// A listening address as the Go original took it: `IP:port`, `:port` (every IPv4
/// address) or `host:port` (the host name's first address, resolved once, at start).
fn parse_addr(key: &str, value: &str) -> Result<SocketAddr> {
    if let Ok(a) = value.parse() {
        return Ok(a);
    }
    let bad = |why: &str| invalid(key, value, why);
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| bad("expected host:port, :port or IP:port, e.g. 0.0.0.0:8443"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
    if host.is_empty() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()
        .map_err(|e| bad(&format!("the host name does not resolve: {e}")))?
        .next()
        .ok_or_else(|| bad("the host name has no address"))
}

/// Whether a listening address names a host (resolved by [`parse_addr`]), which is
/// then also what peers dial.
fn names_a_host(value: &str) -> bool {
    value.parse::<SocketAddr>().is_err() && !value.starts_with(':')
}

fn check_url(key: &str, value: &str) -> Result<()> {
    let rest = value
        .strip_prefix("https://")
        .ok_or_else(|| invalid(key, value, "must start with https://"))?;
    if rest.split('/').next().is_none_or(str::is_empty) {
        return Err(invalid(key, value, "has no host"));
    }
    Ok(())
}

fn check_refname_component(key: &str, value: &str) -> Result<()> {
    let bad = value.is_empty()
        || value.starts_with(['-', '.', '/'])
        || value.ends_with(['/', '.'])
        || value.ends_with(".lock")
        || value.contains("..")
        || value.contains("//")
        || value.contains("@{")
        || value
            .bytes()
            .any(|b| b < 0x20 || b == 0x7f || b" ~^:?*[\\".contains(&b));
    if bad {
        return Err(invalid(key, value, "not a valid git branch name"));
    }
    Ok(())
}

fn file_err(key: &str, path: &Path, reason: impl ToString) -> ConfigError {
    ConfigError::File {
        key: key.to_owned(),
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Reads a PEM file that must hold at least one certificate.
fn read_certs(key: &str, path: &Path) -> Result<Vec<u8>> {
    let pem = std::fs::read(path).map_err(|e| file_err(key, path, e))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| file_err(key, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(key, path, "holds no PEM certificate"));
    }
    Ok(pem)
}

/// Reads a PEM file that must hold a private key.
fn read_key(key: &str, path: &Path) -> Result<Vec<u8>> {
    let pem = std::fs::read(path).map_err(|e| file_err(key, path, e))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| file_err(key, path, format!("holds no PEM private key: {e}")))?;
    Ok(pem)
}

fn node_identity(path: &Path, cert_pem: &[u8], ca_pem: &[u8]) -> Result<NodeIdentity> {
    let key = "certificates.client.cert";
    let info = repospanner_ca::CertInfo::inspect(cert_pem, Some(ca_pem))
        .map_err(|e| file_err(key, path, e))?;
    if let Some(Err(e)) = info.verified {
        return Err(file_err(
            key,
            path,
            format!("not valid for certificates.ca: {e}"),
        ));
    }
    let facts: CertFacts = info.facts;
    match (facts.kind, facts.cluster, facts.node) {
        (Some(CertKind::Node), Some(cluster), Some(node)) => Ok(NodeIdentity {
            cluster,
            region: node.region,
            name: node.name,
            id: node.id,
        }),
        _ => Err(file_err(
            key,
            path,
            "not a repoSpanner node certificate (make one with `repospanner ca node`)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(yaml: &str) -> String {
        match Config::parse(yaml) {
            Ok(c) => panic!("expected an error for {yaml:?}, got {c:?}"),
            Err(e) => e,
        }
    }

    fn check_err(yaml: &str, expected: &[&str]) {
        let e = parse_err(yaml);
        for want in expected {
            assert!(e.contains(want), "error {e:?} should mention {want:?}");
        }
    }

    #[test]
    fn the_go_originals_keys_it_does_not_follow_are_named() {
        let c = Config::parse(
            "checks:\n  paranoid: false\nstorage:\n  git:\n    compressmethod: gzip\n    clustered: false\n",
        )
        .expect("parses");
        let ignored = c.ignored_keys().join("\n");
        for key in ["checks.paranoid", "compressmethod: gzip", "clustered"] {
            assert!(ignored.contains(key), "{ignored}");
        }
        let plain = Config::parse("checks:\n  paranoid: true\n").expect("parses");
        assert!(plain.ignored_keys().is_empty());
    }

    #[test]
    fn defaults() {
        let c = Config::parse("ca:\n  path: /x\n").expect("parses");
        assert!(
            c.checks.paranoid,
            "paranoid defaults to true as in the Go original"
        );
        assert_eq!(c.silly.defaulthead, "master");
        assert_eq!(c.limits.refs_per_push_max, 100_000);
        assert_eq!(c.ca_dir().expect("set"), Path::new("/x"));
    }

    #[test]
    fn bad_configs_name_the_key() {
        check_err("", &["empty"]);
        check_err("bogus: 1\n", &["unknown field `bogus`"]);
        check_err(
            "storage:\n  git:\n    bogus: 1\n",
            &["storage.git", "bogus"],
        );
        check_err("listen:\n  http: [1]\n", &["listen.http"]);
        check_err("listen:\n  http: nothost\n", &["listen.http", "host:port"]);
        check_err("listen:\n  http: \":99999\"\n", &["listen.http", "port"]);
        check_err(
            "listen:\n  http: no-such-host.invalid:8443\n",
            &["listen.http", "does not resolve"],
        );
        for (text, addr) in [(":8443", "0.0.0.0:8443"), ("[::1]:8443", "[::1]:8443")] {
            assert_eq!(
                parse_addr("listen.http", text).map(|a| a.to_string()).ok(),
                Some(addr.to_owned()),
                "{text}"
            );
        }
        let named = parse_addr("listen.http", "localhost:8443").expect("resolves");
        assert!(named.ip().is_loopback() && named.port() == 8443, "{named}");
        assert!(names_a_host("localhost:1") && !names_a_host(":1") && !names_a_host("[::]:1"));
        check_err("checks:\n  paranoid: maybe\n", &["checks.paranoid"]);
        check_err("checks:\n  fsck: hasDotgit=maybe\n", &["checks.fsck"]);
        check_err("checks:\n  fsck: noSuchCheck=ignore\n", &["checks.fsck"]);
        assert!(Config::parse("checks:\n  fsck: zeroPaddedFilemode=ignore\n").is_ok());
        check_err("storage:\n  git:\n    type: blob\n", &["storage.git.type"]);
        check_err("storage:\n  shards: 0\n", &["storage.shards"]);
        check_err("silly:\n  defaulthead: a..b\n", &["silly.defaulthead"]);
        check_err("admin:\n  url: http://x\n", &["admin.url", "https"]);
        check_err("limits:\n  pack_bytes_max: 0\n", &["limits.pack_bytes_max"]);
        check_err(
            "limits:\n  pack_bytes_max: -1\n",
            &["limits.pack_bytes_max"],
        );
        check_err("ca: a: b\n", &["line 1"]);
    }

    #[test]
    fn the_example_config_parses() {
        let c = Config::parse(include_str!("../deploy/config.example.yml")).expect("parses");
        c.storage_settings().expect("valid storage settings");
    }

    #[test]
    fn storage_settings_are_checked() {
        let c = Config::parse("ca:\n  path: /x\n").expect("parses");
        let (segment, compaction, scrub) = c.storage_settings().expect("defaults");
        assert_eq!(segment, 1 << 30);
        assert!(compaction.is_some_and(|c| c.enabled && c.live_share_max == 0.5));
        assert!(scrub.is_some_and(|s| s.mib_per_second == 8));
        for (yaml, key) in [
            ("storage:\n  segment_mib: 0\n", "storage.segment_mib"),
            ("storage:\n  segment_mib: 5000\n", "storage.segment_mib"),
            (
                "storage:\n  compaction:\n    live_share_max: 1.5\n",
                "storage.compaction.live_share_max",
            ),
            (
                "storage:\n  compaction:\n    interval_seconds: 0\n",
                "storage.compaction.interval_seconds",
            ),
            (
                "storage:\n  scrub:\n    mib_per_second: 0\n",
                "storage.scrub",
            ),
        ] {
            let c = Config::parse(yaml).expect("parses");
            let e = c.storage_settings().unwrap_err().to_string();
            assert!(e.contains(key), "{yaml}: {e}");
        }
        let off = Config::parse("storage:\n  compaction:\n    enabled: false\n").expect("parses");
        assert!(off.storage_settings().expect("valid").1.is_none());
    }

    #[test]
    fn missing_keys_are_named_per_command() {
        let c = Config::parse("silly:\n  defaulthead: main\n").expect("parses");
        assert!(c.ca_dir().unwrap_err().to_string().contains("ca.path"));
        assert!(c.admin().unwrap_err().to_string().contains("admin.url"));
        assert!(c.serve().unwrap_err().to_string().contains("storage.state"));
    }

    #[test]
    fn unreadable_files_are_named() {
        let c = Config::parse(
            "admin:\n  url: https://n/\n  ca: /nonexistent/ca.crt\n  cert: /x\n  key: /y\n",
        )
        .expect("parses");
        let e = c.admin().unwrap_err().to_string();
        assert!(
            e.contains("admin.ca") && e.contains("/nonexistent/ca.crt"),
            "{e}"
        );
    }
}
