//! The `repospanner` command line: parsing and dispatch only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use repospanner::commands::{self, LeafFlags};
use repospanner::config::DEFAULT_PATH;

#[derive(Debug, Parser)]
#[command(
    name = "repospanner",
    version,
    about = "Distributed git repository storage server"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, default_value = DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version.
    Version {
        /// Only the version, without build details.
        #[arg(long)]
        public: bool,
    },
    /// Certificate authority: create the CA, node and user certificates.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Run a node (after initialising its state with --spawn or --joinnode).
    Serve(ServeArgs),
    /// Administer the region through a node's admin API.
    Admin(AdminArgs),
    /// Create a local region with certificates and configs, and start it.
    Quickstart(QuickstartArgs),
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create the cluster CA in `ca.path`.
    Init {
        /// Cluster name, a DNS domain (e.g. repospanner.example.com).
        cluster: String,
        /// Validity in years.
        #[arg(long, default_value_t = 10)]
        years: u32,
        /// Do not limit the CA to names under the cluster domain.
        #[arg(long)]
        no_name_constraint: bool,
    },
    /// Issue a node certificate `<nodename>.<region>.<cluster>`.
    Node {
        region: String,
        nodename: String,
        #[arg(long, default_value_t = 1)]
        years: u32,
        /// Node ID (default: the certificate's serial; reuse the old ID to renew).
        #[arg(long)]
        nodeid: Option<u64>,
        /// Extra DNS name or IP address the node answers on (repeatable).
        #[arg(long = "san", value_name = "NAME_OR_IP", num_args = 1.., value_delimiter = ',')]
        sans: Vec<String>,
    },
    /// Issue a user certificate carrying its permissions.
    Leaf {
        username: String,
        #[arg(long)]
        admin: bool,
        #[arg(long)]
        monitor: bool,
        #[arg(long)]
        read: bool,
        #[arg(long)]
        write: bool,
        /// Region globs the certificate is valid in (repeatable or comma-separated).
        #[arg(long = "region", value_name = "GLOB", required = true, num_args = 1.., value_delimiter = ',')]
        regions: Vec<String>,
        /// Repository globs the certificate is valid for; `*` also matches `/`.
        #[arg(long = "repo", value_name = "GLOB", required = true, num_args = 1.., value_delimiter = ',')]
        repos: Vec<String>,
        #[arg(long, default_value_t = 1)]
        years: u32,
    },
    /// Show what a certificate carries and whether it verifies against a CA.
    Info {
        cert: PathBuf,
        #[arg(long)]
        cacert: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Initialise the state of a new region on this node, then exit.
    #[arg(long, conflicts_with = "joinnode")]
    spawn: bool,
    /// Join the region of a running node (https://node:rpcport), then exit.
    #[arg(long, value_name = "URL")]
    joinnode: Option<String>,
    /// Verbose logs.
    #[arg(long)]
    debug: bool,
}

#[derive(Debug, Args)]
struct AdminArgs {
    /// Print the node's raw JSON answers (before or after the subcommand, as in the
    /// Go original).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Repositories.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// The state of the node and its region.
    Nodestatus {
        /// One line and a Nagios exit code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN
        /// (the node cannot be asked).
        #[arg(long)]
        nagios: bool,
    },
    /// The region's nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Read and check every record the node holds (or one repository's objects), and
    /// repair damaged objects from the other members. Exits 2 if damage is left.
    Scrub {
        #[arg(long)]
        repo: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Remove node ID from every shard's raft group, through any member (refused if a
    /// group would be left without a majority that answers). Its data is not touched.
    Remove { id: u64 },
}

#[derive(Debug, Subcommand)]
enum RepoCommand {
    Create {
        name: String,
        /// Readable without a certificate (`--public`, `--public=true|false`).
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        public: Option<bool>,
    },
    List,
    Delete {
        name: String,
    },
    /// Bring an existing repository in (every ref, tags and HEAD) through the normal
    /// push path; created if absent; run again to resume or catch up.
    Import {
        name: String,
        /// A local repository (bare or not) or a URL `git clone` takes.
        source: String,
    },
    Edit {
        name: String,
        /// Readable without a certificate (`--public`, `--public=true|false`).
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        public: Option<bool>,
        /// Accept non-fast-forward (force) pushes, the default of a new repository
        /// (`--allow-non-fast-forward=false` refuses them).
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        allow_non_fast_forward: Option<bool>,
        /// The pre-receive hook: a script (any executable) run before a push's changes
        /// apply, which refuses them all by failing; "" removes it.
        #[arg(long, value_name = "FILE")]
        hook_pre_receive: Option<String>,
        /// The update hook, run once per changed ref (arguments: ref, old, new), which
        /// refuses that ref by failing; "" removes it.
        #[arg(long, value_name = "FILE")]
        hook_update: Option<String>,
        /// The post-receive hook, run once the region has acknowledged a push; "" removes
        /// it.
        #[arg(long, value_name = "FILE")]
        hook_post_receive: Option<String>,
        /// SYM=TARGET to set a symbolic ref, SYM= to delete it.
        symrefs: Vec<String>,
    },
}

#[derive(Debug, Args)]
struct QuickstartArgs {
    #[arg(long, default_value = "quickstart")]
    dir: PathBuf,
    /// Nodes in the region (a push needs a majority of them).
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    #[arg(long, default_value_t = 8443)]
    port: u16,
    /// Only write the files.
    #[arg(long)]
    no_start: bool,
}

#[allow(clippy::too_many_lines)] // one match arm per command
fn run(cli: Cli) -> anyhow::Result<()> {
    let config = || commands::load_config(&cli.config);
    match cli.command {
        Command::Version { public } => {
            if public {
                println!("repoSpanner {}", repospanner::VERSION);
            } else {
                println!(
                    "repoSpanner {} ({} {})",
                    repospanner::VERSION,
                    std::env::consts::OS,
                    std::env::consts::ARCH
                );
            }
            Ok(())
        }
        Command::Ca(CaCommand::Init {
            cluster,
            years,
            no_name_constraint,
        }) => commands::ca_init(&config()?, &cluster, years, !no_name_constraint),
        Command::Ca(CaCommand::Node {
            region,
            nodename,
            years,
            nodeid,
            sans,
        }) => commands::ca_node(&config()?, &region, &nodename, years, nodeid, sans),
        Command::Ca(CaCommand::Leaf {
            username,
            admin,
            monitor,
            read,
            write,
            regions,
            repos,
            years,
        }) => commands::ca_leaf(
            &config()?,
            &username,
            LeafFlags {
                admin,
                monitor,
                read,
                write,
            },
            regions,
            repos,
            years,
        ),
        Command::Ca(CaCommand::Info { cert, cacert }) => {
            commands::ca_info(&cert, cacert.as_deref())
        }
        Command::Serve(args) => {
            let config = config()?;
            match (args.spawn, args.joinnode) {
                (true, _) => repospanner::serve::spawn(&config),
                (false, Some(url)) => repospanner::serve::join(&config, &url),
                (false, None) => repospanner::serve::serve(&config),
            }
        }
        Command::Admin(AdminArgs { json, command }) => {
            let admin = config()?.admin()?;
            match command {
                AdminCommand::Repo(RepoCommand::Create { name, public }) => {
                    repospanner::admin::repo_create(&admin, &name, public.unwrap_or(false))
                }
                AdminCommand::Repo(RepoCommand::Import { name, source }) => {
                    repospanner::import::import(&admin, &name, &source)
                }
                AdminCommand::Repo(RepoCommand::Delete { name }) => {
                    repospanner::admin::repo_delete(&admin, &name)
                }
                AdminCommand::Repo(RepoCommand::List) => {
                    repospanner::admin::repo_list(&admin, json)
                }
                AdminCommand::Repo(RepoCommand::Edit {
                    name,
                    public,
                    allow_non_fast_forward,
                    hook_pre_receive,
                    hook_update,
                    hook_post_receive,
                    symrefs,
                }) => repospanner::admin::repo_edit(
                    &admin,
                    &name,
                    public,
                    allow_non_fast_forward,
                    &symrefs,
                    &repospanner::admin::HookFiles {
                        pre_receive: hook_pre_receive,
                        update: hook_update,
                        post_receive: hook_post_receive,
                    },
                ),
                AdminCommand::Nodestatus { nagios } => {
                    let code = repospanner::admin::nodestatus(&admin, json, nagios)?;
                    if code != 0 {
                        std::process::exit(code);
                    }
                    Ok(())
                }
                AdminCommand::Node(NodeCommand::Remove { id }) => {
                    repospanner::admin::node_remove(&admin, id)
                }
                AdminCommand::Scrub { repo } => {
                    let code = repospanner::admin::scrub(&admin, json, repo.as_deref())?;
                    if code != 0 {
                        std::process::exit(code);
                    }
                    Ok(())
                }
            }
        }
        Command::Quickstart(q) => {
            repospanner::quickstart::run(&repospanner::quickstart::Quickstart {
                dir: q.dir,
                nodes: q.nodes,
                port: q.port,
                no_start: q.no_start,
            })
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let debug = matches!(&cli.command, Command::Serve(a) if a.debug);
    let default_level = if debug { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
