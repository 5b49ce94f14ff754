//! The board's durable records: one SQLite database (WAL journal) holding its configuration,
//! tokens (hashed), submissions with their code, jobs with leases and results, and an audit
//! log.
//!
//! Durability: every state change is one transaction. A server killed at any instant (even
//! `kill -9`) restarts with every accepted submission, every lease and every result; a worker
//! that dies loses its lease when it expires, and the job goes back to the queue.

use super::{now, token_hash, Baseline, BoardConfig, Limits, Role, Setting};
use crate::hash::sha256_hex;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Schema version written into `meta`.
pub const SCHEMA_VERSION: &str = "1";

/// The database file inside a board's data folder.
pub const DB_FILE: &str = "board.sqlite";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    id      INTEGER PRIMARY KEY,
    name    TEXT NOT NULL,
    role    TEXT NOT NULL,
    hash    TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS submissions (
    id        INTEGER PRIMARY KEY,
    token_id  INTEGER REFERENCES tokens(id),
    submitter TEXT NOT NULL,
    name      TEXT NOT NULL,
    kind      TEXT NOT NULL,
    sha256    TEXT NOT NULL,
    body      BLOB NOT NULL,
    publish   INTEGER NOT NULL,
    baseline  INTEGER NOT NULL DEFAULT 0,
    created   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS submissions_sha ON submissions(sha256);
CREATE INDEX IF NOT EXISTS submissions_token ON submissions(token_id, created);
CREATE TABLE IF NOT EXISTS jobs (
    id            INTEGER PRIMARY KEY,
    submission_id INTEGER NOT NULL REFERENCES submissions(id),
    setting       TEXT NOT NULL,
    state         TEXT NOT NULL,
    worker        TEXT,
    lease         TEXT,
    lease_until   REAL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    created       REAL NOT NULL,
    finished      REAL,
    ppl           REAL,
    sparsity      REAL,
    seconds       REAL,
    verdict       TEXT,
    reused_from   INTEGER,
    result        TEXT,
    mask_hash     TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, id);
CREATE INDEX IF NOT EXISTS jobs_setting ON jobs(setting);
CREATE INDEX IF NOT EXISTS jobs_submission ON jobs(submission_id);
CREATE TABLE IF NOT EXISTS audit (
    id     INTEGER PRIMARY KEY,
    ts     REAL NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
";

/// A request the board refuses: an HTTP status, a stable machine-readable code, a message for
/// people, and for 429 the seconds to wait.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// Stable code (`unauthorized`, `quota`, `not_held`, …).
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
    /// Seconds until a retry can succeed (429 only).
    pub retry_after: Option<u64>,
}

impl Refusal {
    /// A refusal without `Retry-After`.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// Store errors: a refusal of the caller's request, or the host's own failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request is refused (typed, the record unchanged).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// SQLite or the host failed.
    #[error("board database {path}: {message}")]
    Db {
        /// The database.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Who is calling, from their token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Token row.
    pub id: i64,
    /// The name it was issued to.
    pub name: String,
    /// Submitter or worker.
    pub role: Role,
}

/// What a plugin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// Rust source, built by the worker in the compile sandbox.
    Rs,
    /// A WebAssembly component.
    Wasm,
    /// A built-in method (SparseGPT).
    Builtin,
    /// A search run's evaluation task (`search --workers`): not ranked.
    Task,
}

impl PluginKind {
    fn as_str(self) -> &'static str {
        match self {
            PluginKind::Rs => "rs",
            PluginKind::Wasm => "wasm",
            PluginKind::Builtin => "builtin",
            PluginKind::Task => "task",
        }
    }

    fn parse(s: &str) -> PluginKind {
        match s {
            "rs" => PluginKind::Rs,
            "wasm" => PluginKind::Wasm,
            "task" => PluginKind::Task,
            _ => PluginKind::Builtin,
        }
    }
}

/// A submission as the API hands it to the store (already size-checked and validated).
#[derive(Debug, Clone)]
pub struct NewSubmission {
    /// Display name (untrusted; escaped wherever shown).
    pub name: String,
    /// Source or component.
    pub kind: PluginKind,
    /// The file's bytes.
    pub body: Vec<u8>,
    /// The settings asked for (a subset of the board's).
    pub settings: Vec<Setting>,
    /// Whether the code may be shown on the page.
    pub publish: bool,
}

/// One job of a submission, as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// Job id.
    pub id: i64,
    /// Setting.
    pub setting: String,
    /// `queued`, `leased`, `done` or `failed`.
    pub state: String,
    /// Times handed to a worker.
    pub attempts: i64,
    /// Perplexity on the held-out text (done).
    pub ppl: Option<f64>,
    /// Achieved sparsity (done).
    pub sparsity: Option<f64>,
    /// Worker seconds (done).
    pub seconds: Option<f64>,
    /// The verdict (failed).
    pub verdict: Option<JobVerdict>,
    /// The job whose result this one reused (identical code, same setting).
    pub reused_from: Option<i64>,
}

/// A submission with its jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmissionView {
    /// Id.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Who submitted it.
    pub submitter: String,
    /// rs, wasm or builtin.
    pub kind: PluginKind,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Whether the code is public.
    pub publish: bool,
    /// A built-in baseline.
    pub baseline: bool,
    /// Unix seconds.
    pub created: f64,
    /// Its jobs, one per setting.
    pub jobs: Vec<JobView>,
    /// The code, when published and asked for (`.rs` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// Why a job failed: the verdict's kind and its text, both capped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobVerdict {
    /// `compile`, `trap`, `timeout`, `invalid_output`, `abandoned`, …
    pub kind: String,
    /// What happened.
    pub detail: String,
}

/// What a worker measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measured {
    /// Perplexity on the held-out text.
    pub ppl: f64,
    /// Achieved sparsity.
    pub sparsity: f64,
    /// Seconds the worker spent.
    pub seconds: f64,
    /// The protocol the worker ran.
    pub fingerprint: Fingerprint,
}

/// What identifies the data a worker evaluated on: results with different fingerprints are
/// not comparable, so the board pins the first and refuses others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fingerprint {
    /// The model's file name.
    pub model: String,
    /// Tokens in the calibration stream.
    pub calib_tokens: usize,
    /// Tokens in the evaluation stream.
    pub eval_tokens: usize,
    /// SHA-256 of the evaluated windows' token ids.
    pub eval_sha256: String,
}

/// How a job ended, as a worker reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum JobOutcome {
    /// Pruned and measured.
    Measured(Measured),
    /// The plugin failed (its verdict).
    Failed(JobVerdict),
    /// A search task's outcome (JSON of the search archive's `Outcome`).
    Task(serde_json::Value),
}

/// A job handed to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// Job id.
    pub job_id: i64,
    /// The lease's secret: renewals and the result must carry it.
    pub lease: String,
    /// Seconds until it expires unless renewed.
    pub lease_secs: f64,
    /// The setting to prune under (`None` for a search task).
    pub setting: Option<Setting>,
    /// A search task (`search --workers`): what to evaluate, as JSON.
    #[serde(default)]
    pub task: Option<serde_json::Value>,
    /// The board's protocol.
    pub protocol: super::BoardProtocol,
    /// Submission id.
    pub submission_id: i64,
    /// Display name.
    pub name: String,
    /// Plugin kind.
    pub kind: PluginKind,
    /// SHA-256 of the body.
    pub sha256: String,
    /// The body in hex (empty for a built-in method).
    pub body_hex: String,
    /// The built-in method's name (`sparsegpt`), for kind `builtin`.
    pub builtin: Option<String>,
}

/// One ranked line of the board.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Submission id.
    pub submission_id: i64,
    /// Display name.
    pub name: String,
    /// Submitter.
    pub submitter: String,
    /// A built-in baseline.
    pub baseline: bool,
    /// Perplexity.
    pub ppl: f64,
    /// Perplexity over Wanda's under the same setting (when Wanda is measured).
    pub ratio_to_wanda: Option<f64>,
}

/// One setting's ranking and its failures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranking {
    /// The setting.
    pub setting: String,
    /// Measured entries, best (lowest perplexity) first.
    pub entries: Vec<Entry>,
    /// Failed submissions: (submission id, name, submitter, verdict).
    pub failed: Vec<(i64, String, String, JobVerdict)>,
    /// Jobs queued or running.
    pub pending: usize,
}

/// The whole board.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leaderboard {
    /// One ranking per setting, in the board's order.
    pub settings: Vec<Ranking>,
}

/// A search task's job: its state, outcome (JSON) and verdict.
pub type TaskState = (String, Option<serde_json::Value>, Option<JobVerdict>);

/// A job that [`Store::lease`] may hand out, with its submission.
struct Candidate {
    job_id: i64,
    setting: String,
    sid: i64,
    name: String,
    kind: String,
    sha256: String,
    body: Vec<u8>,
    state: String,
    attempts: i64,
    holder: Option<String>,
    lease: Option<String>,
}

/// A job's state, worker and lease.
type Holder = (String, Option<String>, Option<String>);

/// The board's database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    config: BoardConfig,
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    // A lease id only has to be unguessable by other workers; fall back to the clock if the
    // system has no randomness (never seen on Linux).
    if getrandom::fill(&mut b).is_err() {
        return sha256_hex(format!("{:?}{}", std::time::Instant::now(), now()).as_bytes());
    }
    hex::encode(b)
}

/// A string from a client, made safe to store: at most `max` characters, control characters
/// (terminal escapes) replaced.
pub fn clean(s: &str, max: usize) -> String {
    // Controls (terminal escapes) and the invisible characters that reorder or hide text
    // (bidirectional overrides and isolates, zero-width marks) could spoof a name.
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{061c}' | '\u{feff}')
    };
    s.chars()
        .take(max)
        .map(|c| if hidden(c) { '\u{fffd}' } else { c })
        .collect()
}

/// Refuse a submission of `jobs` jobs from `caller` now if it is over a limit: the interval
/// between two submissions, the hourly quota, the jobs waiting at once (429 with
/// `Retry-After`), or more settings than may ever wait at once (400).
fn check_quota(
    conn: &Connection,
    path: &Path,
    caller: &Caller,
    jobs: usize,
    limits: &Limits,
    t: f64,
) -> Result<()> {
    let db = |e: rusqlite::Error| StoreError::Db {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    if jobs as u64 > u64::from(limits.max_pending_jobs) {
        return Err(Refusal::new(
            400,
            "too_many_settings",
            format!("at most {} jobs may wait at once", limits.max_pending_jobs),
        )
        .into());
    }
    let (count, last): (u32, Option<f64>) = conn
        .query_row(
            "SELECT COUNT(*), MAX(created) FROM submissions WHERE token_id IN
               (SELECT id FROM tokens WHERE name = ?1) AND created > ?2",
            params![caller.name, t - 3600.0],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(db)?;
    if let Some(last) = last {
        let wait = limits.min_interval_secs - (t - last);
        if wait > 0.0 {
            return Err(Refusal {
                retry_after: Some(wait.ceil().max(1.0) as u64),
                ..Refusal::new(
                    429,
                    "rate_limited",
                    format!(
                        "at most one submission every {} s",
                        limits.min_interval_secs
                    ),
                )
            }
            .into());
        }
    }
    if count >= limits.submissions_per_hour {
        let oldest: Option<f64> = conn
            .query_row(
                "SELECT MIN(created) FROM submissions WHERE token_id IN
                   (SELECT id FROM tokens WHERE name = ?1) AND created > ?2",
                params![caller.name, t - 3600.0],
                |r| r.get(0),
            )
            .map_err(db)?;
        return Err(Refusal {
            retry_after: Some((oldest.unwrap_or(t) + 3600.0 - t).ceil().max(1.0) as u64),
            ..Refusal::new(
                429,
                "quota",
                format!(
                    "at most {} submissions per hour",
                    limits.submissions_per_hour
                ),
            )
        }
        .into());
    }
    let pending: u32 = conn
        .query_row(
            "SELECT COUNT(*) FROM jobs JOIN submissions s ON s.id = jobs.submission_id
             WHERE s.token_id IN (SELECT id FROM tokens WHERE name = ?1)
               AND jobs.state IN ('queued', 'leased')",
            [&caller.name],
            |r| r.get(0),
        )
        .map_err(db)?;
    if u64::from(pending) + jobs as u64 > u64::from(limits.max_pending_jobs) {
        return Err(Refusal {
            retry_after: Some(limits.lease_secs.ceil() as u64),
            ..Refusal::new(
                429,
                "pending_quota",
                format!(
                    "{pending} of your jobs are waiting; at most {} at once",
                    limits.max_pending_jobs
                ),
            )
        }
        .into());
    }
    Ok(())
}

impl Store {
    /// Open the board in `dir` (creating the folder and database if needed). A new board takes
    /// `config` (the default when `None`) and its baselines are queued; an existing board keeps
    /// its own, and a different `config` is refused.
    pub fn open(dir: &Path, config: Option<&BoardConfig>) -> Result<Store> {
        let path = dir.join(DB_FILE);
        let db = |message: String| StoreError::Db {
            path: path.clone(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| db(format!("cannot create the folder: {e}")))?;
        let conn = Connection::open(&path).map_err(|e| db(e.to_string()))?;
        let setup = || -> rusqlite::Result<()> {
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            // WAL: the page and the API read while workers write; NORMAL sync is durable
            // against a killed process (only an OS crash can lose the last transactions).
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            conn.execute_batch(SCHEMA)
        };
        setup().map_err(|e| db(e.to_string()))?;
        let mut store = Store {
            conn,
            path: path.clone(),
            config: config.cloned().unwrap_or_default(),
        };
        let schema = store.meta("schema")?;
        match schema.as_deref() {
            None => store.create()?,
            Some(SCHEMA_VERSION) => {
                let text = store
                    .meta("config")?
                    .ok_or_else(|| db("no board configuration recorded".into()))?;
                let recorded: BoardConfig = serde_json::from_str(&text)
                    .map_err(|e| db(format!("its configuration does not parse: {e}")))?;
                if let Some(asked) = config {
                    if *asked != recorded {
                        return Err(db(format!(
                            "this board was created with {} and cannot change: results under two protocols do not rank (start a new board in another folder)",
                            serde_json::to_string(&recorded).unwrap_or_default()
                        )));
                    }
                }
                store.config = recorded;
            }
            Some(v) => {
                return Err(db(format!(
                    "schema version {v}, this autoprune reads {SCHEMA_VERSION}"
                )))
            }
        }
        Ok(store)
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// The board's configuration.
    pub fn config(&self) -> &BoardConfig {
        &self.config
    }

    fn meta(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    /// A new board: its configuration and its baselines' submissions and jobs, in one
    /// transaction.
    fn create(&mut self) -> Result<()> {
        let config = serde_json::to_string(&self.config).map_err(|e| self.err(e))?;
        let settings = self.config.settings.clone();
        let baselines = self.config.baselines.clone();
        let t = now();
        let path = self.path.clone();
        let db = move |e: rusqlite::Error| StoreError::Db {
            path: path.clone(),
            message: e.to_string(),
        };
        let tx = self.conn.transaction().map_err(&db)?;
        let run = || -> rusqlite::Result<()> {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('config', ?1)",
                [&config],
            )?;
            for b in baselines {
                let (kind, body) = match b.source() {
                    Some(src) => (PluginKind::Rs, src.as_bytes().to_vec()),
                    None => (PluginKind::Builtin, b.name().as_bytes().to_vec()),
                };
                tx.execute(
                    "INSERT INTO submissions (token_id, submitter, name, kind, sha256, body, publish, baseline, created)
                     VALUES (NULL, 'autoprune', ?1, ?2, ?3, ?4, 1, 1, ?5)",
                    params![b.name(), kind.as_str(), sha256_hex(&body), body, t],
                )?;
                let sid = tx.last_insert_rowid();
                for s in &settings {
                    tx.execute(
                        "INSERT INTO jobs (submission_id, setting, state, created) VALUES (?1, ?2, 'queued', ?3)",
                        params![sid, s.to_string(), t],
                    )?;
                }
            }
            tx.execute(
                "INSERT INTO audit (ts, actor, action, detail) VALUES (?1, 'autoprune', 'create', ?2)",
                params![t, config],
            )?;
            // Last: a board whose creation was interrupted has no schema and is created again.
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', ?1)",
                [SCHEMA_VERSION],
            )?;
            Ok(())
        };
        run().map_err(&db)?;
        tx.commit().map_err(&db)
    }

    /// Append to the audit log (`detail` is stored as given; it is escaped when shown).
    pub fn audit(&self, actor: &str, action: &str, detail: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO audit (ts, actor, action, detail) VALUES (?1, ?2, ?3, ?4)",
                params![now(), clean(actor, 80), action, clean(detail, 2000)],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The audit log, oldest first: (time, actor, action, detail).
    pub fn audit_log(&self) -> Result<Vec<(f64, String, String, String)>> {
        let mut st = self
            .conn
            .prepare("SELECT ts, actor, action, detail FROM audit ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Issue a token to `name`; returns the token (shown once: only its hash is stored).
    pub fn add_token(&self, name: &str, role: Role) -> Result<String> {
        let name = clean(name.trim(), 80);
        if name.is_empty() {
            return Err(Refusal::new(400, "bad_name", "a token needs a name").into());
        }
        let token = super::new_token().map_err(|e| self.err(e))?;
        self.conn
            .execute(
                "INSERT INTO tokens (name, role, hash, created) VALUES (?1, ?2, ?3, ?4)",
                params![name, role.as_str(), token_hash(&token), now()],
            )
            .map_err(|e| self.err(e))?;
        self.audit(
            "admin",
            "token_add",
            &format!("{} ({})", name, role.as_str()),
        )?;
        Ok(token)
    }

    /// Revoke every token issued to `name`; returns how many.
    pub fn revoke_tokens(&self, name: &str) -> Result<usize> {
        let n = self
            .conn
            .execute(
                "UPDATE tokens SET revoked = 1 WHERE name = ?1 AND revoked = 0",
                [name],
            )
            .map_err(|e| self.err(e))?;
        self.audit("admin", "token_revoke", &format!("{name}: {n}"))?;
        Ok(n)
    }

    /// The caller a bearer token belongs to (`None`: unknown or revoked).
    pub fn caller(&self, token: &str) -> Result<Option<Caller>> {
        let row: Option<(i64, String, String)> = self
            .conn
            .query_row(
                "SELECT id, name, role FROM tokens WHERE hash = ?1 AND revoked = 0",
                [token_hash(token)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(row.map(|(id, name, role)| Caller {
            id,
            name,
            role: match role.as_str() {
                "worker" => Role::Worker,
                "search" => Role::Search,
                _ => Role::Submitter,
            },
        }))
    }

    /// Accept a submission from `caller` under `limits`: quotas are checked and the submission
    /// and its jobs written in one transaction. A job whose code and setting were measured
    /// before reuses that result. Returns the submission's id.
    pub fn submit(&mut self, caller: &Caller, s: &NewSubmission, limits: &Limits) -> Result<i64> {
        let t = now();
        let sha = sha256_hex(&s.body);
        let path = self.path.clone();
        let db = move |e: rusqlite::Error| StoreError::Db {
            path: path.clone(),
            message: e.to_string(),
        };
        let tx = self.conn.transaction().map_err(&db)?;
        check_quota(&tx, &self.path, caller, s.settings.len(), limits, t)?;
        tx.execute(
            "INSERT INTO submissions (token_id, submitter, name, kind, sha256, body, publish, created)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![caller.id, caller.name, s.name, s.kind.as_str(), sha, s.body, s.publish, t],
        )
        .map_err(&db)?;
        let sid = tx.last_insert_rowid();
        for setting in &s.settings {
            let setting = setting.to_string();
            let earlier: Option<(i64, f64, f64, f64)> = tx
                .query_row(
                    "SELECT jobs.id, ppl, sparsity, seconds FROM jobs
                     JOIN submissions s ON s.id = jobs.submission_id
                     WHERE s.sha256 = ?1 AND s.kind = ?2 AND jobs.setting = ?3
                       AND jobs.state = 'done' AND jobs.reused_from IS NULL
                     ORDER BY jobs.id LIMIT 1",
                    params![sha, s.kind.as_str(), setting],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()
                .map_err(&db)?;
            match earlier {
                Some((from, ppl, sp, secs)) => tx.execute(
                    "INSERT INTO jobs (submission_id, setting, state, created, finished, ppl, sparsity, seconds, reused_from)
                     VALUES (?1, ?2, 'done', ?3, ?3, ?4, ?5, ?6, ?7)",
                    params![sid, setting, t, ppl, sp, secs, from],
                ),
                None => tx.execute(
                    "INSERT INTO jobs (submission_id, setting, state, created) VALUES (?1, ?2, 'queued', ?3)",
                    params![sid, setting, t],
                ),
            }
            .map_err(&db)?;
        }
        tx.execute(
            "INSERT INTO audit (ts, actor, action, detail) VALUES (?1, ?2, 'submit', ?3)",
            params![
                t,
                caller.name,
                format!(
                    "#{sid} {} {} sha256 {sha} settings {}",
                    s.kind.as_str(),
                    clean(&s.name, 80),
                    s.settings
                        .iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                )
            ],
        )
        .map_err(&db)?;
        tx.commit().map_err(&db)?;
        Ok(sid)
    }

    /// [`check_quota`] for one job, before the server reads a submission's body.
    pub fn precheck(&self, caller: &Caller, limits: &Limits) -> Result<()> {
        check_quota(&self.conn, &self.path, caller, 1, limits, now())
    }

    /// Queue a search run's evaluation task (`search --workers`); returns its id.
    pub fn submit_task(&mut self, caller: &Caller, task: &serde_json::Value) -> Result<i64> {
        let body = serde_json::to_vec(task).map_err(|e| self.err(e))?;
        let t = now();
        let path = self.path.clone();
        let db = move |e: rusqlite::Error| StoreError::Db {
            path: path.clone(),
            message: e.to_string(),
        };
        let tx = self.conn.transaction().map_err(&db)?;
        tx.execute(
            "INSERT INTO submissions (token_id, submitter, name, kind, sha256, body, publish, created)
             VALUES (?1, ?2, 'search task', 'task', ?3, ?4, 0, ?5)",
            params![caller.id, caller.name, sha256_hex(&body), body, t],
        )
        .map_err(&db)?;
        let sid = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO jobs (submission_id, setting, state, created) VALUES (?1, 'search', 'queued', ?2)",
            params![sid, t],
        )
        .map_err(&db)?;
        tx.commit().map_err(&db)?;
        Ok(sid)
    }

    /// A search task of `owner`: its job's state, outcome (JSON) and verdict.
    pub fn task(&self, id: i64, owner: &str) -> Result<Option<TaskState>> {
        let row: Option<(String, Option<String>, Option<String>)> = self
            .conn
            .query_row(
                "SELECT jobs.state, jobs.result, jobs.verdict FROM jobs
                 JOIN submissions s ON s.id = jobs.submission_id
                 WHERE s.id = ?1 AND s.kind = 'task' AND s.submitter = ?2",
                params![id, owner],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(row.map(|(state, result, verdict)| {
            (
                state,
                result.and_then(|r| serde_json::from_str(&r).ok()),
                verdict.and_then(|v| serde_json::from_str(&v).ok()),
            )
        }))
    }

    /// Record a refused request in the audit log (who, what, why).
    pub fn audit_refusal(&self, actor: &str, what: &str, r: &Refusal) -> Result<()> {
        self.audit(
            actor,
            "refused",
            &format!("{what}: {} {}", r.code, r.message),
        )
    }

    fn jobs_of(&self, sid: i64) -> Result<Vec<JobView>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, setting, state, attempts, ppl, sparsity, seconds, verdict, reused_from
                 FROM jobs WHERE submission_id = ?1 ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([sid], |r| {
                let verdict: Option<String> = r.get(7)?;
                Ok(JobView {
                    id: r.get(0)?,
                    setting: r.get(1)?,
                    state: r.get(2)?,
                    attempts: r.get(3)?,
                    ppl: r.get(4)?,
                    sparsity: r.get(5)?,
                    seconds: r.get(6)?,
                    verdict: verdict.and_then(|v| serde_json::from_str(&v).ok()),
                    reused_from: r.get(8)?,
                })
            })
            .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// A submission with its jobs (`with_code`: include the code when it is published source).
    pub fn submission(&self, id: i64, with_code: bool) -> Result<Option<SubmissionView>> {
        let row = self
            .conn
            .query_row(
                "SELECT name, submitter, kind, sha256, publish, baseline, created,
                        CASE WHEN ?2 AND publish AND kind = 'rs' THEN body END AS code
                     FROM submissions WHERE id = ?1",
                params![id, with_code],
                |r| {
                    Ok(SubmissionView {
                        id,
                        name: r.get("name")?,
                        submitter: r.get("submitter")?,
                        kind: PluginKind::parse(&r.get::<_, String>("kind")?),
                        sha256: r.get("sha256")?,
                        publish: r.get("publish")?,
                        baseline: r.get("baseline")?,
                        created: r.get("created")?,
                        jobs: Vec::new(),
                        code: r
                            .get::<_, Option<Vec<u8>>>("code")?
                            .map(|b| String::from_utf8_lossy(&b).into_owned()),
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some(mut view) = row else {
            return Ok(None);
        };
        view.jobs = self.jobs_of(id)?;
        Ok(Some(view))
    }

    /// A submission as the public page shows it: its code and its verdicts' detail (compiler
    /// diagnostics quote code) only when its submitter published it.
    pub fn public_submission(&self, id: i64) -> Result<Option<SubmissionView>> {
        Ok(self.submission(id, true)?.map(|mut v| {
            if !v.publish {
                for j in &mut v.jobs {
                    if let Some(verdict) = &mut j.verdict {
                        verdict.detail =
                            "(shown to its submitter: the code is not published)".into();
                    }
                }
            }
            v
        }))
    }

    /// The token that submitted `id` (`None` for a baseline or an unknown id).
    pub fn submitted_by(&self, id: i64) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT submitter FROM submissions WHERE id = ?1 AND baseline = 0",
                [id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Hand `worker` a job: the one it already holds (a lease request whose answer was lost
    /// must not cost the job an attempt), else the next queued job or job whose lease expired,
    /// baselines first, then oldest first. An expired job handed out `max_attempts` times is
    /// failed as abandoned instead. `None`: nothing to do.
    pub fn lease(&mut self, worker: &str, limits: &Limits) -> Result<Option<Lease>> {
        let t = now();
        let path = self.path.clone();
        let db = move |e: rusqlite::Error| StoreError::Db {
            path: path.clone(),
            message: e.to_string(),
        };
        let tx = self.conn.transaction().map_err(&db)?;
        let abandoned = serde_json::to_string(&JobVerdict {
            kind: "abandoned".into(),
            detail: format!(
                "handed to workers {} times; none finished it within its lease",
                limits.max_attempts
            ),
        })
        .unwrap_or_default();
        let pick = |sql: &str, p: &[&dyn rusqlite::ToSql]| {
            tx.query_row(sql, p, |r| {
                Ok(Candidate {
                    job_id: r.get(0)?,
                    setting: r.get(1)?,
                    sid: r.get(2)?,
                    name: r.get(3)?,
                    kind: r.get(4)?,
                    sha256: r.get(5)?,
                    body: r.get(6)?,
                    state: r.get(7)?,
                    attempts: r.get(8)?,
                    holder: r.get(9)?,
                    lease: r.get(10)?,
                })
            })
            .optional()
        };
        const COLS: &str = "SELECT jobs.id, jobs.setting, s.id, s.name, s.kind, s.sha256, s.body,
                jobs.state, jobs.attempts, jobs.worker, jobs.lease FROM jobs
                JOIN submissions s ON s.id = jobs.submission_id";
        let held = pick(
            &format!(
                "{COLS} WHERE jobs.state = 'leased' AND jobs.worker = ?1 ORDER BY jobs.id LIMIT 1"
            ),
            &[&worker],
        )
        .map_err(&db)?;
        let job = match held {
            Some(j) => Some(j),
            None => loop {
                let next = pick(
                    &format!(
                        "{COLS} WHERE jobs.state = 'queued' OR (jobs.state = 'leased' AND jobs.lease_until < ?1)
                         ORDER BY s.baseline DESC, jobs.id LIMIT 1"
                    ),
                    &[&t],
                )
                .map_err(&db)?;
                match next {
                    Some(j)
                        if j.state == "leased" && j.attempts >= i64::from(limits.max_attempts) =>
                    {
                        tx.execute(
                            "UPDATE jobs SET state = 'failed', verdict = ?1, finished = ?2, lease = NULL, worker = NULL
                             WHERE id = ?3",
                            params![abandoned, t, j.job_id],
                        )
                        .map_err(&db)?;
                        tx.execute(
                            "INSERT INTO audit (ts, actor, action, detail) VALUES (?1, 'autoprune', 'abandon', ?2)",
                            params![t, format!("job {}: lease of {} expired after {} attempts", j.job_id, j.holder.clone().unwrap_or_default(), j.attempts)],
                        )
                        .map_err(&db)?;
                    }
                    other => break other,
                }
            },
        };
        let Some(Candidate {
            job_id,
            setting,
            sid,
            name,
            kind,
            sha256,
            body,
            state,
            holder,
            lease: old_lease,
            ..
        }) = job
        else {
            tx.commit().map_err(&db)?;
            return Ok(None);
        };
        let mine = holder.as_deref() == Some(worker) && state == "leased";
        let lease = match (&old_lease, mine) {
            (Some(l), true) => l.clone(),
            _ => random_hex(16),
        };
        tx.execute(
            "UPDATE jobs SET state = 'leased', worker = ?1, lease = ?2, lease_until = ?3,
                 attempts = attempts + ?4 WHERE id = ?5",
            params![
                worker,
                lease,
                t + limits.lease_secs,
                if mine { 0 } else { 1 },
                job_id
            ],
        )
        .map_err(&db)?;
        let how = match (mine, state.as_str()) {
            (true, _) => "again (already held)".to_string(),
            (false, "leased") => {
                format!("after the lease of {} expired", holder.unwrap_or_default())
            }
            _ => String::new(),
        };
        tx.execute(
            "INSERT INTO audit (ts, actor, action, detail) VALUES (?1, ?2, 'lease', ?3)",
            params![
                t,
                worker,
                format!("job {job_id} (submission #{sid}, {setting}) {how}")
            ],
        )
        .map_err(&db)?;
        tx.commit().map_err(&db)?;
        let kind = PluginKind::parse(&kind);
        let (setting, task) = if kind == PluginKind::Task {
            let task = serde_json::from_slice(&body).map_err(|e| self.err(e))?;
            (None, Some(task))
        } else {
            (Some(setting.parse().map_err(|e| self.err(e))?), None)
        };
        Ok(Some(Lease {
            task,
            job_id,
            lease,
            lease_secs: limits.lease_secs,
            setting,
            protocol: self.config.protocol.clone(),
            submission_id: sid,
            name,
            kind,
            sha256,
            builtin: (kind == PluginKind::Builtin).then(|| String::from_utf8_lossy(&body).into()),
            body_hex: if matches!(kind, PluginKind::Builtin | PluginKind::Task) {
                String::new()
            } else {
                hex::encode(&body)
            },
        }))
    }

    /// Check that `worker` holds `job_id` under `lease` now.
    fn held(&self, job_id: i64, worker: &str, lease: &str) -> Result<()> {
        let row: Option<Holder> = self
            .conn
            .query_row(
                "SELECT state, worker, lease FROM jobs WHERE id = ?1",
                [job_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((state, w, l)) = row else {
            return Err(Refusal::new(404, "no_such_job", format!("no job {job_id}")).into());
        };
        // An expired lease stays its holder's until another worker is handed the job: a
        // worker that could not renew while the server was down keeps its work.
        let holds =
            state == "leased" && w.as_deref() == Some(worker) && l.as_deref() == Some(lease);
        if !holds {
            return Err(Refusal::new(
                409,
                "not_held",
                format!(
                    "job {job_id} is not leased to this worker under this lease (state {state})"
                ),
            )
            .into());
        }
        Ok(())
    }

    /// A worker pruned `job_id` and reports its masks' hash before measuring. If an earlier
    /// job under the same setting measured the same masks, this job is done at once with that
    /// result (`Ok(Some(earlier job))`) and the worker stops; else the hash is recorded
    /// (`Ok(None)`). A baseline never reuses another submission's result.
    pub fn masks(
        &mut self,
        job_id: i64,
        worker: &str,
        lease: &str,
        hash: &str,
    ) -> Result<Option<i64>> {
        self.held(job_id, worker, lease)?;
        if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Refusal::new(400, "bad_result", "a mask hash is 64 hex digits").into());
        }
        let t = now();
        let path = self.path.clone();
        let db = move |e: rusqlite::Error| StoreError::Db {
            path: path.clone(),
            message: e.to_string(),
        };
        let tx = self.conn.transaction().map_err(&db)?;
        let (setting, baseline): (String, bool) = tx
            .query_row(
                "SELECT jobs.setting, s.baseline FROM jobs JOIN submissions s ON s.id = jobs.submission_id
                 WHERE jobs.id = ?1",
                [job_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(&db)?;
        let earlier: Option<i64> = if baseline {
            None
        } else {
            tx.query_row(
                "SELECT id FROM jobs WHERE setting = ?1 AND mask_hash = ?2 AND state = 'done'
                   AND reused_from IS NULL AND id != ?3 ORDER BY id LIMIT 1",
                params![setting, hash, job_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(&db)?
        };
        match earlier {
            Some(from) => {
                tx.execute(
                    "UPDATE jobs SET state = 'done', finished = ?1, mask_hash = ?2, lease = NULL,
                         reused_from = ?3,
                         ppl = (SELECT ppl FROM jobs WHERE id = ?3),
                         sparsity = (SELECT sparsity FROM jobs WHERE id = ?3),
                         seconds = (SELECT seconds FROM jobs WHERE id = ?3)
                     WHERE id = ?4 AND lease = ?5",
                    params![t, hash, from, job_id, lease],
                )
                .map_err(&db)?;
                tx.execute(
                    "INSERT INTO audit (ts, actor, action, detail) VALUES (?1, ?2, 'reuse', ?3)",
                    params![t, worker, format!("job {job_id}: the masks of job {from}")],
                )
                .map_err(&db)?;
            }
            None => {
                tx.execute(
                    "UPDATE jobs SET mask_hash = ?1 WHERE id = ?2",
                    params![hash, job_id],
                )
                .map_err(&db)?;
            }
        }
        tx.commit().map_err(&db)?;
        Ok(earlier)
    }

    /// Extend a lease; returns its new expiry (Unix seconds).
    pub fn renew(&self, job_id: i64, worker: &str, lease: &str, limits: &Limits) -> Result<f64> {
        self.held(job_id, worker, lease)?;
        let until = now() + limits.lease_secs;
        self.conn
            .execute(
                "UPDATE jobs SET lease_until = ?1 WHERE id = ?2",
                params![until, job_id],
            )
            .map_err(|e| self.err(e))?;
        Ok(until)
    }

    /// Record a job's outcome from the worker that holds it. A measurement must be finite and
    /// in range, and its protocol fingerprint must match the board's (pinned by the first).
    pub fn finish(
        &mut self,
        job_id: i64,
        worker: &str,
        lease: &str,
        outcome: &JobOutcome,
    ) -> Result<()> {
        let t = now();
        self.held(job_id, worker, lease)?;
        let bad = |m: &str| StoreError::from(Refusal::new(400, "bad_result", m));
        let path = self.path.clone();
        let db = move |e: rusqlite::Error| StoreError::Db {
            path: path.clone(),
            message: e.to_string(),
        };
        let is_task = self
            .conn
            .query_row(
                "SELECT s.kind = 'task' FROM jobs JOIN submissions s ON s.id = jobs.submission_id
                 WHERE jobs.id = ?1",
                [job_id],
                |r| r.get::<_, bool>(0),
            )
            .map_err(|e| self.err(e))?;
        match outcome {
            JobOutcome::Measured(_) if is_task => Err(bad("a measurement for a search task")),
            JobOutcome::Measured(m) => {
                if !(m.ppl.is_finite() && m.ppl >= 1.0) {
                    return Err(bad("perplexity must be a finite number >= 1"));
                }
                if !(m.sparsity.is_finite() && (0.0..=1.0).contains(&m.sparsity)) {
                    return Err(bad("sparsity must be in [0, 1]"));
                }
                if !(m.seconds.is_finite() && m.seconds >= 0.0) {
                    return Err(bad("seconds must be finite and >= 0"));
                }
                let fp = serde_json::to_string(&m.fingerprint).map_err(|e| self.err(e))?;
                if fp.len() > 4096 {
                    return Err(bad("fingerprint too long"));
                }
                let tx = self.conn.transaction().map_err(&db)?;
                let pinned: Option<String> = tx
                    .query_row(
                        "SELECT value FROM meta WHERE key = 'fingerprint'",
                        [],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(&db)?;
                match pinned {
                    None => {
                        tx.execute(
                            "INSERT INTO meta (key, value) VALUES ('fingerprint', ?1)",
                            [&fp],
                        )
                        .map_err(&db)?;
                    }
                    Some(p) if p == fp => {}
                    Some(p) => {
                        // Not this job's fault: it goes back to the queue, the attempt unspent.
                        tx.execute(
                            "UPDATE jobs SET state = 'queued', worker = NULL, lease = NULL,
                                 attempts = MAX(attempts - 1, 0) WHERE id = ?1",
                            [job_id],
                        )
                        .map_err(&db)?;
                        tx.commit().map_err(&db)?;
                        return Err(Refusal::new(
                            409,
                            "protocol_mismatch",
                            format!(
                                "this worker evaluated on other data ({fp}); the board's is {p}; its job went back to the queue"
                            ),
                        )
                        .into());
                    }
                }
                tx.execute(
                    "UPDATE jobs SET state = 'done', finished = ?1, ppl = ?2, sparsity = ?3,
                         seconds = ?4, lease = NULL WHERE id = ?5 AND lease = ?6",
                    params![t, m.ppl, m.sparsity, m.seconds, job_id, lease],
                )
                .map_err(&db)?;
                tx.execute(
                    "INSERT INTO audit (ts, actor, action, detail) VALUES (?1, ?2, 'result', ?3)",
                    params![t, worker, format!("job {job_id}: perplexity {:.4}", m.ppl)],
                )
                .map_err(&db)?;
                tx.commit().map_err(&db)
            }
            JobOutcome::Task(_) if !is_task => Err(bad("a search task's outcome for a board job")),
            JobOutcome::Task(v) => {
                let text = serde_json::to_string(v).map_err(|e| self.err(e))?;
                if text.len() > 1 << 20 {
                    return Err(bad("a task's outcome is at most 1 MiB"));
                }
                let tx = self.conn.transaction().map_err(&db)?;
                tx.execute(
                    "UPDATE jobs SET state = 'done', finished = ?1, result = ?2, lease = NULL
                     WHERE id = ?3 AND lease = ?4",
                    params![t, text, job_id, lease],
                )
                .map_err(&db)?;
                tx.commit().map_err(&db)
            }
            JobOutcome::Failed(v) => {
                let v = JobVerdict {
                    kind: clean(&v.kind, 40),
                    detail: clean(&v.detail, 8000),
                };
                let text = serde_json::to_string(&v).map_err(|e| self.err(e))?;
                let tx = self.conn.transaction().map_err(&db)?;
                tx.execute(
                    "UPDATE jobs SET state = 'failed', finished = ?1, verdict = ?2, lease = NULL
                     WHERE id = ?3 AND lease = ?4",
                    params![t, text, job_id, lease],
                )
                .map_err(&db)?;
                tx.execute(
                    "INSERT INTO audit (ts, actor, action, detail) VALUES (?1, ?2, 'verdict', ?3)",
                    params![t, worker, format!("job {job_id}: {}", v.kind)],
                )
                .map_err(&db)?;
                tx.commit().map_err(&db)
            }
        }
    }

    /// Counts of jobs by state.
    pub fn job_counts(&self) -> Result<Vec<(String, i64)>> {
        let mut st = self
            .conn
            .prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// The board: every setting's ranking (one entry per measured job; a resubmission of
    /// identical code reuses its result and is not ranked twice), its failures (the verdict's
    /// kind only) and how many jobs wait.
    pub fn leaderboard(&self) -> Result<Leaderboard> {
        let mut settings = Vec::new();
        for s in &self.config.settings {
            let setting = s.to_string();
            let mut st = self
                .conn
                .prepare(
                    "SELECT s.id, s.name, s.submitter, s.baseline, jobs.state, jobs.ppl, jobs.verdict
                     FROM jobs JOIN submissions s ON s.id = jobs.submission_id
                     WHERE jobs.setting = ?1 AND jobs.reused_from IS NULL ORDER BY jobs.id",
                )
                .map_err(|e| self.err(e))?;
            #[allow(clippy::type_complexity)]
            let rows: Vec<(
                i64,
                String,
                String,
                bool,
                String,
                Option<f64>,
                Option<String>,
            )> = st
                .query_map([&setting], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                })
                .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(|e| self.err(e))?;
            let wanda = rows
                .iter()
                .find(|r| r.3 && r.1 == Baseline::Wanda.name() && r.5.is_some())
                .and_then(|r| r.5);
            let mut entries = Vec::new();
            let mut failed = Vec::new();
            let mut pending = 0;
            for (sid, name, submitter, baseline, state, ppl, verdict) in rows {
                match (state.as_str(), ppl) {
                    ("done", Some(ppl)) => entries.push(Entry {
                        submission_id: sid,
                        name,
                        submitter,
                        baseline,
                        ppl,
                        ratio_to_wanda: wanda.map(|w| ppl / w),
                    }),
                    ("failed", _) => {
                        // Only the kind: a verdict's detail (compiler diagnostics) quotes code
                        // that may not be published.
                        let v = verdict
                            .and_then(|v| serde_json::from_str::<JobVerdict>(&v).ok())
                            .map_or_else(
                                || JobVerdict {
                                    kind: "unknown".into(),
                                    detail: String::new(),
                                },
                                |v| JobVerdict {
                                    kind: v.kind,
                                    detail: String::new(),
                                },
                            );
                        failed.push((sid, name, submitter, v));
                    }
                    _ => pending += 1,
                }
            }
            entries.sort_by(|a, b| {
                a.ppl
                    .total_cmp(&b.ppl)
                    .then(a.submission_id.cmp(&b.submission_id))
            });
            settings.push(Ranking {
                setting,
                entries,
                failed,
                pending,
            });
        }
        Ok(Leaderboard { settings })
    }

    /// Recent submissions, newest first (id, name, submitter, baseline).
    pub fn recent(&self, limit: usize) -> Result<Vec<SubmissionView>> {
        let ids: Vec<i64> = {
            let mut st = self
                .conn
                .prepare(
                    "SELECT id FROM submissions WHERE kind != 'task' ORDER BY id DESC LIMIT ?1",
                )
                .map_err(|e| self.err(e))?;
            st.query_map([limit as i64], |r| r.get(0))
                .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(|e| self.err(e))?
        };
        let mut out = Vec::new();
        for id in ids {
            if let Some(s) = self.submission(id, false)? {
                out.push(s);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(dir: &Path) -> Store {
        let cfg = BoardConfig {
            settings: vec!["2:4".parse().unwrap()],
            baselines: vec![Baseline::Wanda],
            ..BoardConfig::default()
        };
        Store::open(dir, Some(&cfg)).unwrap()
    }

    fn limits() -> Limits {
        Limits {
            min_interval_secs: 0.0,
            ..Limits::default()
        }
    }

    fn measured(ppl: f64) -> JobOutcome {
        JobOutcome::Measured(Measured {
            ppl,
            sparsity: 0.5,
            seconds: 1.0,
            fingerprint: Fingerprint {
                model: "m.gguf".into(),
                calib_tokens: 10,
                eval_tokens: 20,
                eval_sha256: "ab".into(),
            },
        })
    }

    fn alice(s: &Store) -> Caller {
        let t = s.add_token("alice", Role::Submitter).unwrap();
        s.caller(&t).unwrap().unwrap()
    }

    fn sub(body: &str) -> NewSubmission {
        NewSubmission {
            name: "m".into(),
            kind: PluginKind::Rs,
            body: body.as_bytes().to_vec(),
            settings: vec!["2:4".parse().unwrap()],
            publish: false,
        }
    }

    #[test]
    fn a_new_board_queues_its_baselines_and_keeps_its_config() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = board(dir.path());
        let l = s.lease("w1", &limits()).unwrap().unwrap();
        assert_eq!(l.name, "wanda");
        assert_eq!(l.setting.unwrap().to_string(), "2:4");
        assert!(s.lease("w2", &limits()).unwrap().is_none());
        drop(s);
        // Reopened without a config: the recorded one; with another: refused.
        let s = Store::open(dir.path(), None).unwrap();
        assert_eq!(s.config().settings.len(), 1);
        drop(s);
        let other = BoardConfig::default();
        let e = Store::open(dir.path(), Some(&other)).err().unwrap();
        assert!(e.to_string().contains("cannot change"), "{e}");
    }

    #[test]
    fn tokens_authenticate_by_hash_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let s = board(dir.path());
        let t = s.add_token("w", Role::Worker).unwrap();
        assert_eq!(s.caller(&t).unwrap().unwrap().role, Role::Worker);
        assert!(s.caller("ap_nope").unwrap().is_none());
        let stored: String = s
            .conn
            .query_row("SELECT hash FROM tokens", [], |r| r.get(0))
            .unwrap();
        assert!(!stored.contains(&t[3..]));
        assert_eq!(s.revoke_tokens("w").unwrap(), 1);
        assert!(s.caller(&t).unwrap().is_none());
    }

    #[test]
    fn leases_expire_and_are_handed_again_then_abandoned() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = board(dir.path());
        let lim = Limits {
            lease_secs: -1.0, // every lease is already expired
            max_attempts: 2,
            ..limits()
        };
        let a = s.lease("w1", &lim).unwrap().unwrap();
        // Asking again (an answer lost): the same job and lease, no attempt spent.
        let again = s.lease("w1", &lim).unwrap().unwrap();
        assert_eq!((again.job_id, &again.lease), (a.job_id, &a.lease));
        // Expired, but nobody else has it yet: still w1's.
        s.renew(a.job_id, "w1", &a.lease, &lim).unwrap();
        let b = s.lease("w2", &lim).unwrap().unwrap();
        assert_eq!(a.job_id, b.job_id);
        assert_ne!(a.lease, b.lease);
        // w1's lease is gone: its result is refused, the record unchanged.
        let e = s
            .finish(a.job_id, "w1", &a.lease, &measured(50.0))
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Refused(Refusal { status: 409, .. })),
            "{e}"
        );
        assert!(s.lease("w3", &lim).unwrap().is_none());
        let v = s.submission(b.submission_id, false).unwrap().unwrap();
        assert_eq!(v.jobs[0].state, "failed");
        assert_eq!(v.jobs[0].verdict.as_ref().unwrap().kind, "abandoned");
    }

    #[test]
    fn results_are_checked_and_identical_code_reuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = board(dir.path());
        let lim = limits();
        let w = s.lease("w", &lim).unwrap().unwrap();
        s.finish(w.job_id, "w", &w.lease, &measured(60.0)).unwrap();
        let who = alice(&s);
        let id = s.submit(&who, &sub("fn a() {}"), &lim).unwrap();
        let l = s.lease("w", &lim).unwrap().unwrap();
        assert_eq!(l.submission_id, id);
        for bad in [f64::NAN, f64::INFINITY, 0.5, -3.0] {
            let e = s
                .finish(l.job_id, "w", &l.lease, &measured(bad))
                .unwrap_err();
            assert!(
                matches!(e, StoreError::Refused(Refusal { status: 400, .. })),
                "{bad}"
            );
        }
        let mut other = measured(55.0);
        if let JobOutcome::Measured(m) = &mut other {
            m.fingerprint.eval_tokens = 21;
        }
        assert!(s.finish(l.job_id, "x", &l.lease, &measured(55.0)).is_err());
        assert_eq!(
            s.submission(id, false).unwrap().unwrap().jobs[0].state,
            "leased"
        );
        let e = s.finish(l.job_id, "w", &l.lease, &other).unwrap_err();
        assert!(e.to_string().contains("protocol_mismatch"), "{e}");
        // Back in the queue with its attempt unspent; the old lease is void.
        let j = &s.submission(id, false).unwrap().unwrap().jobs[0];
        assert_eq!((j.state.as_str(), j.attempts), ("queued", 0));
        assert!(s.finish(l.job_id, "w", &l.lease, &measured(55.0)).is_err());
        let l = s.lease("w", &lim).unwrap().unwrap();
        s.finish(l.job_id, "w", &l.lease, &measured(55.0)).unwrap();
        // The same code again: done at once, reusing the result.
        let again = s.submit(&who, &sub("fn a() {}"), &lim).unwrap();
        let v = s.submission(again, false).unwrap().unwrap();
        assert_eq!(v.jobs[0].state, "done");
        assert_eq!(v.jobs[0].ppl, Some(55.0));
        assert_eq!(v.jobs[0].reused_from, Some(l.job_id));
        let board = s.leaderboard().unwrap();
        let r = &board.settings[0];
        assert_eq!(r.entries.len(), 2, "the reuse is not ranked twice");
        assert_eq!(r.entries[0].ppl, 55.0);
        assert!((r.entries[0].ratio_to_wanda.unwrap() - 55.0 / 60.0).abs() < 1e-12);
    }

    #[test]
    fn identical_masks_reuse_a_measured_result_but_never_for_a_baseline() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = board(dir.path());
        let lim = limits();
        let who = alice(&s);
        let id = s.submit(&who, &sub("fn twice() {}"), &lim).unwrap();
        let h = "ab".repeat(32);
        // The submission is measured first; the baseline with the same masks is still measured.
        let w = s.lease("w", &lim).unwrap().unwrap();
        assert_eq!(w.name, "wanda");
        let l = s.lease("v", &lim).unwrap().unwrap();
        assert_eq!(l.submission_id, id);
        assert_eq!(s.masks(l.job_id, "v", &l.lease, &h).unwrap(), None);
        s.finish(l.job_id, "v", &l.lease, &measured(60.0)).unwrap();
        assert_eq!(s.masks(w.job_id, "w", &w.lease, &h).unwrap(), None);
        s.finish(w.job_id, "w", &w.lease, &measured(60.0)).unwrap();
        // Another submission with those masks: done at once with the earlier result.
        // The earliest measured job with those masks is the baseline's.
        let again = s.submit(&who, &sub("fn thrice() {}"), &lim).unwrap();
        let l = s.lease("v", &lim).unwrap().unwrap();
        assert_eq!(
            s.masks(l.job_id, "v", &l.lease, &h).unwrap(),
            Some(w.job_id)
        );
        let j = &s.submission(again, false).unwrap().unwrap().jobs[0];
        assert_eq!(
            (j.state.as_str(), j.ppl, j.reused_from),
            ("done", Some(60.0), Some(w.job_id))
        );
        assert!(
            s.finish(l.job_id, "v", &l.lease, &measured(1.5)).is_err(),
            "the lease is spent"
        );
        assert!(s.masks(l.job_id, "v", &l.lease, "zz").is_err());
    }

    #[test]
    fn quotas_refuse_with_retry_after_and_record_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = board(dir.path());
        let who = alice(&s);
        let lim = Limits {
            submissions_per_hour: 2,
            ..limits()
        };
        s.submit(&who, &sub("a"), &lim).unwrap();
        s.submit(&who, &sub("b"), &lim).unwrap();
        let e = s.submit(&who, &sub("c"), &lim).unwrap_err();
        let StoreError::Refused(r) = e else { panic!() };
        assert_eq!((r.status, r.code), (429, "quota"));
        assert!(r.retry_after.unwrap() > 3000);
        let spaced = Limits {
            min_interval_secs: 60.0,
            ..limits()
        };
        let e = s.submit(&who, &sub("d"), &spaced).unwrap_err();
        let StoreError::Refused(r) = e else { panic!() };
        assert_eq!(r.code, "rate_limited");
        assert_eq!(s.recent(10).unwrap().len(), 3); // wanda + a + b
    }
}
