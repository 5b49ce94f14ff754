//! `autoprune serve`, `autoprune tokens` and `autoprune worker`: the leaderboard service, its
//! tokens, and the workers that evaluate its jobs.

use super::flags::SandboxFlags;
use autoprune::board::store::Store;
use autoprune::board::worker::{self, WorkerOptions};
use autoprune::board::{api, Baseline, BoardConfig, BoardProtocol, Limits, Role, Setting};
use autoprune::term::line;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `autoprune serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The board's folder (its SQLite database); created on first use.
    #[arg(long)]
    pub data: PathBuf,
    /// Address to listen on (`127.0.0.1:0` picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Settings a new board ranks (comma-separated; default `50%,2:4,70%+sdsa`). An existing
    /// board keeps its own; asking for others is refused.
    #[arg(long, value_delimiter = ',')]
    pub settings: Vec<Setting>,
    /// Baselines a new board measures (default: magnitude,wanda,ria,sparsegpt).
    #[arg(long, value_delimiter = ',')]
    pub baselines: Vec<Baseline>,
    /// Tokens per window of a new board's protocol (default 512).
    #[arg(long)]
    pub seqlen: Option<usize>,
    /// Calibration windows of a new board's protocol (default 32).
    #[arg(long)]
    pub calib_windows: Option<usize>,
    /// Held-out evaluation windows of a new board's protocol (default 64).
    #[arg(long)]
    pub eval_windows: Option<usize>,
    /// Largest `.rs` source accepted, bytes.
    #[arg(long, default_value_t = Limits::default().max_source_bytes)]
    pub max_source_bytes: usize,
    /// Largest `.wasm` component accepted, bytes.
    #[arg(long, default_value_t = Limits::default().max_component_bytes)]
    pub max_component_bytes: usize,
    /// Submissions per submitter per rolling hour.
    #[arg(long, default_value_t = Limits::default().submissions_per_hour)]
    pub submissions_per_hour: u32,
    /// Shortest interval between two submissions of one submitter, seconds.
    #[arg(long, default_value_t = Limits::default().min_interval_secs)]
    pub min_interval: f64,
    /// Jobs of one submitter waiting or running at once.
    #[arg(long, default_value_t = Limits::default().max_pending_jobs)]
    pub max_pending_jobs: u32,
    /// Seconds a worker holds a job without renewing it.
    #[arg(long, default_value_t = Limits::default().lease_secs)]
    pub lease_secs: f64,
    /// Times a job is handed out before it fails as abandoned.
    #[arg(long, default_value_t = Limits::default().max_attempts)]
    pub max_attempts: u32,
    /// Wall-clock limit of one request, seconds.
    #[arg(long, default_value_t = Limits::default().request_secs)]
    pub request_secs: f64,
    /// Seconds a connection may take to send a request's headers (a slow client is cut off).
    #[arg(long, default_value_t = Limits::default().header_secs)]
    pub header_secs: f64,
}

impl ServeArgs {
    /// The configuration these flags ask for (`None`: none given, keep the board's).
    fn config(&self) -> Option<BoardConfig> {
        let given = !self.settings.is_empty()
            || !self.baselines.is_empty()
            || self.seqlen.is_some()
            || self.calib_windows.is_some()
            || self.eval_windows.is_some();
        if !given {
            return None;
        }
        let d = BoardConfig::default();
        let p = BoardProtocol::default();
        Some(BoardConfig {
            settings: if self.settings.is_empty() {
                d.settings
            } else {
                self.settings.clone()
            },
            baselines: if self.baselines.is_empty() {
                d.baselines
            } else {
                self.baselines.clone()
            },
            protocol: BoardProtocol {
                seq_len: self.seqlen.unwrap_or(p.seq_len),
                calib_windows: self.calib_windows.unwrap_or(p.calib_windows),
                eval_windows: self.eval_windows.unwrap_or(p.eval_windows),
            },
        })
    }

    fn limits(&self) -> anyhow::Result<Limits> {
        let pos = |x: f64, what: &str| {
            anyhow::ensure!(x.is_finite() && x > 0.0, "{what} must be a positive number");
            Ok(())
        };
        pos(self.lease_secs, "--lease-secs")?;
        pos(self.request_secs, "--request-secs")?;
        pos(self.header_secs, "--header-secs")?;
        anyhow::ensure!(
            self.min_interval.is_finite() && self.min_interval >= 0.0,
            "--min-interval must be >= 0"
        );
        Ok(Limits {
            max_source_bytes: self.max_source_bytes,
            max_component_bytes: self.max_component_bytes,
            submissions_per_hour: self.submissions_per_hour,
            min_interval_secs: self.min_interval,
            max_pending_jobs: self.max_pending_jobs,
            lease_secs: self.lease_secs,
            max_attempts: self.max_attempts.max(1),
            request_secs: self.request_secs,
            header_secs: self.header_secs,
        })
    }
}

/// An exclusive lock on the board's folder for this process's lifetime (`flock`, released
/// by the kernel whatever way the process ends).
fn lock_board(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("serve.lock"))?;
    // SAFETY: flock on a descriptor this function owns.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    anyhow::ensure!(
        r == 0,
        "another `autoprune serve` is running on {}",
        line(&dir.display().to_string())
    );
    Ok(f)
}

/// Run `serve` until SIGINT or SIGTERM.
pub fn serve(args: ServeArgs) -> anyhow::Result<i32> {
    let limits = args.limits()?;
    let config = args.config();
    if let Some(c) = &config {
        let p = &c.protocol;
        anyhow::ensure!(
            p.seq_len >= 16 && p.calib_windows >= 1 && p.eval_windows >= 1 && !c.settings.is_empty(),
            "a board needs windows of at least 16 tokens, one calibration and one evaluation window, and a setting"
        );
    }
    anyhow::ensure!(
        limits.max_source_bytes <= autoprune::build::BuildOptions::default().max_source_bytes,
        "--max-source-bytes can be at most {} (what a worker's compile sandbox takes)",
        autoprune::build::BuildOptions::default().max_source_bytes
    );
    let store = Store::open(&args.data, config.as_ref())?;
    // One server per board: the store's checks assume it is the only writer of jobs.
    let _lock = lock_board(&args.data)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", line(&args.listen)))?;
        let addr = listener.local_addr()?;
        println!("listening on http://{addr}");
        std::io::stdout().flush()?;
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        api::serve(listener, api::AppState::new(store, limits), shutdown).await
    })?;
    Ok(0)
}

/// Arguments of `autoprune tokens`.
#[derive(Debug, clap::Args)]
pub struct TokensArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TokensCommand,
}

/// `tokens add` or `tokens revoke`.
#[derive(Debug, clap::Subcommand)]
pub enum TokensCommand {
    /// Issue a token; it is printed once (only its hash is stored).
    Add {
        /// The board's folder.
        #[arg(long)]
        data: PathBuf,
        /// Who it is for (shown on the board as the submitter).
        #[arg(long)]
        name: String,
        /// A worker token (leases and evaluates jobs) instead of a submitter's.
        #[arg(long, conflicts_with = "search")]
        worker: bool,
        /// A search run's token (`search --workers`: sends evaluation tasks).
        #[arg(long)]
        search: bool,
    },
    /// Revoke every token issued to a name.
    Revoke {
        /// The board's folder.
        #[arg(long)]
        data: PathBuf,
        /// Whose tokens.
        #[arg(long)]
        name: String,
    },
}

/// Run `tokens`.
pub fn tokens(args: TokensArgs) -> anyhow::Result<i32> {
    match args.command {
        TokensCommand::Add {
            data,
            name,
            worker,
            search,
        } => {
            let store = Store::open(&data, None)?;
            let role = match (worker, search) {
                (true, _) => Role::Worker,
                (_, true) => Role::Search,
                _ => Role::Submitter,
            };
            println!("{}", store.add_token(&name, role)?);
        }
        TokensCommand::Revoke { data, name } => {
            let store = Store::open(&data, None)?;
            let n = store.revoke_tokens(&name)?;
            println!("revoked {n} token(s) of {}", line(&name));
        }
    }
    Ok(0)
}

/// Arguments of `autoprune worker`.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The board's URL, e.g. `http://127.0.0.1:8080`.
    #[arg(long)]
    pub server: String,
    /// A worker token (`autoprune tokens add --worker`); default: `$AUTOPRUNE_WORKER_TOKEN`,
    /// which keeps it out of the process list.
    #[arg(long)]
    pub worker_token: Option<String>,
    /// This worker's name among the token's (default: host name and process id).
    #[arg(long)]
    pub instance: Option<String>,
    /// Stop after this many jobs.
    #[arg(long)]
    pub max_jobs: Option<usize>,
    /// Stop once the queue has been empty this many seconds.
    #[arg(long)]
    pub exit_when_idle: Option<f64>,
    /// Seconds between polls of an empty queue.
    #[arg(long, default_value_t = 2.0)]
    pub poll: f64,
    /// Give up on an unreachable server after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    pub give_up_after: f64,
    /// Where the model runs: `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub sandbox: SandboxFlags,
}

/// Run `worker` until its job limit, an idle queue, or SIGINT.
pub fn worker(args: WorkerArgs) -> anyhow::Result<i32> {
    let token = match args.worker_token.clone() {
        Some(t) => t,
        None => std::env::var("AUTOPRUNE_WORKER_TOKEN").map_err(|_| {
            anyhow::anyhow!("no worker token: pass --worker-token or set AUTOPRUNE_WORKER_TOKEN")
        })?,
    };
    let secs = |x: f64, what: &str| {
        anyhow::ensure!(x.is_finite() && x >= 0.0, "{what} must be >= 0");
        Ok(Duration::from_secs_f64(x))
    };
    let opts = WorkerOptions {
        server: args.server.clone(),
        token,
        instance: args
            .instance
            .clone()
            .unwrap_or_else(worker::default_instance),
        build: args.sandbox.build.options(),
        policy: args.sandbox.policy()?,
        device: args.device.clone(),
        max_jobs: args.max_jobs,
        exit_when_idle: args
            .exit_when_idle
            .map(|x| secs(x, "--exit-when-idle"))
            .transpose()?,
        poll: secs(args.poll, "--poll")?.max(Duration::from_millis(50)),
        give_up_after: secs(args.give_up_after, "--give-up-after")?,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    // The first Ctrl-C finishes the current job and stops; the default action comes back for
    // a second one.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(rt) = rt {
            rt.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
            eprintln!("worker: stopping after the current job (Ctrl-C again to abandon it)");
            s.store(true, Ordering::Relaxed);
            rt.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
            std::process::exit(super::Exit::Interrupted.into());
        }
    });
    let stats = worker::run(opts, stop)?;
    println!(
        "worker: {} measured, {} failed (verdicts), {} lost",
        stats.measured, stats.failed, stats.lost
    );
    Ok(0)
}

/// Arguments of `autoprune slurm`.
#[derive(Debug, clap::Args)]
pub struct SlurmArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: SlurmCommand,
}

/// `slurm submit` or `slurm status`.
#[derive(Debug, clap::Subcommand)]
pub enum SlurmCommand {
    /// Submit an `sbatch` array of workers for a board (the worker token from
    /// `--worker-token` or `$AUTOPRUNE_WORKER_TOKEN` reaches them through the environment).
    Submit(Box<SlurmSubmit>),
    /// The tasks of a submitted array (`squeue`, then `sacct` or `scontrol`).
    Status {
        /// The array's job id (printed by `slurm submit`).
        #[arg(long)]
        job: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Arguments of `autoprune slurm submit`.
#[derive(Debug, clap::Args)]
pub struct SlurmSubmit {
    /// The board's URL as the compute nodes reach it.
    #[arg(long)]
    pub server: String,
    /// Number of workers (array tasks).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Partition (default: the cluster's).
    #[arg(long)]
    pub partition: Option<String>,
    /// Account to charge.
    #[arg(long)]
    pub account: Option<String>,
    /// Time limit per worker (Slurm's syntax: minutes, `H:MM:SS`, `D-HH:MM:SS`).
    #[arg(long, default_value = "1:00:00")]
    pub time: String,
    /// CPUs per worker.
    #[arg(long, default_value_t = 4)]
    pub cpus_per_worker: usize,
    /// Memory per worker (Slurm's syntax, e.g. `16G`; default: the partition's).
    #[arg(long)]
    pub mem: Option<String>,
    /// GPUs per worker (`--gres=gpu:N`); the workers then run the model on CUDA.
    #[arg(long, default_value_t = 0)]
    pub gpus_per_worker: usize,
    /// Job name.
    #[arg(long, default_value = "autoprune-worker")]
    pub name: String,
    /// Folder for the script and the workers' logs (on a file system the nodes share).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The `autoprune` binary the nodes run (default: this one).
    #[arg(long)]
    pub autoprune: Option<PathBuf>,
    /// A worker stops once the queue has been empty this many seconds (default: it runs
    /// until its time limit).
    #[arg(long)]
    pub exit_when_idle: Option<f64>,
    /// A worker token (default: `$AUTOPRUNE_WORKER_TOKEN`).
    #[arg(long)]
    pub worker_token: Option<String>,
}

/// Run `slurm`.
pub fn slurm(args: SlurmArgs) -> anyhow::Result<i32> {
    use autoprune::board::slurm::{self, ArraySpec};
    match args.command {
        SlurmCommand::Submit(s) => {
            let token = match s.worker_token.clone() {
                Some(t) => t,
                None => std::env::var("AUTOPRUNE_WORKER_TOKEN").map_err(|_| {
                    anyhow::anyhow!(
                        "no worker token: pass --worker-token or set AUTOPRUNE_WORKER_TOKEN"
                    )
                })?,
            };
            let spec = ArraySpec {
                server: s.server.clone(),
                workers: s.workers,
                partition: s.partition.clone(),
                account: s.account.clone(),
                time: s.time.clone(),
                cpus_per_worker: s.cpus_per_worker,
                mem: s.mem.clone(),
                gpus_per_worker: s.gpus_per_worker,
                name: s.name.clone(),
                autoprune: match &s.autoprune {
                    Some(p) => p.clone(),
                    None => std::env::current_exe()?,
                },
                dir: s.dir.clone().unwrap_or_else(slurm::default_dir),
                exit_when_idle: s.exit_when_idle,
            };
            let (id, script) = spec.submit(&token)?;
            println!("{id}");
            eprintln!(
                "submitted array job {id}: {} worker(s); script {}; logs {}/worker-{id}_*.log",
                s.workers,
                script.display(),
                script
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
        }
        SlurmCommand::Status { job, json } => {
            let tasks = slurm::status(&job)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tasks)?);
            } else {
                println!("{:<14} {:<12} {:>10}  detail", "task", "state", "elapsed");
                for t in &tasks {
                    println!(
                        "{:<14} {:<12} {:>10}  {} ({})",
                        line(&t.id),
                        line(&t.state),
                        line(&t.elapsed),
                        line(&t.detail),
                        t.source
                    );
                }
            }
        }
    }
    Ok(0)
}
