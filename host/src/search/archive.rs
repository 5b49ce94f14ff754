//! The search archive: one SQLite database (WAL journal) per run holding its configuration,
//! every node (candidate) with its code, stage results and verdicts, every edge (derivation),
//! every proposer call, and run metadata.
//!
//! Durability model: every state change is one transaction, committed before the next step
//! starts. A run killed at any instant (even `kill -9`) loses at most the candidate being
//! evaluated at that moment; `--resume` finds it in state `pending` and evaluates it again.
//! Seeds are written in the same transaction that marks the run as seeded, so they are never
//! added twice.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use super::records::{Operator, ProposerName, Stage, Verdict};

/// Archive errors.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// SQLite failed (corrupt file, disk full, locked by another process, …).
    #[error("archive {path}: {source}")]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The database is not an autoprune archive, or of another schema version.
    #[error("archive {path}: {message}")]
    Schema {
        /// The database.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ArchiveError>;

/// Schema version written into `meta`; bump on incompatible changes. Version 2 records the
/// evaluation ladder: `proxy`, `fitness` and `heldout` are perplexity *ratios to Wanda* at the
/// screen, sequential and held-out levels, and `detail` holds every level's paired comparison
/// (JSON). Version-1 archives (perplexities, no `detail`) can still be read (`runs show`).
pub const SCHEMA_VERSION: &str = "2";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    id          INTEGER PRIMARY KEY,
    created     REAL NOT NULL,
    proposer    TEXT NOT NULL,
    operator    TEXT NOT NULL,
    thought     TEXT NOT NULL,
    code        TEXT NOT NULL,
    source_hash TEXT NOT NULL,
    expr        TEXT,
    status      TEXT NOT NULL,
    stage       TEXT,
    verdict     TEXT,
    mask_hash   TEXT,
    duplicate_of INTEGER,
    proxy       REAL,
    fitness     REAL,
    heldout     REAL,
    seconds     REAL,
    tokens      INTEGER NOT NULL DEFAULT 0,
    detail      TEXT
);
CREATE INDEX IF NOT EXISTS nodes_source ON nodes(source_hash);
CREATE INDEX IF NOT EXISTS nodes_mask ON nodes(mask_hash);
CREATE TABLE IF NOT EXISTS edges (
    child     INTEGER NOT NULL REFERENCES nodes(id),
    parent    INTEGER NOT NULL REFERENCES nodes(id),
    operator  TEXT NOT NULL,
    rationale TEXT NOT NULL,
    PRIMARY KEY (child, parent)
);
CREATE TABLE IF NOT EXISTS calls (
    id                INTEGER PRIMARY KEY,
    node              INTEGER REFERENCES nodes(id),
    created           REAL NOT NULL,
    proposer          TEXT NOT NULL,
    prompt            TEXT NOT NULL,
    response          TEXT,
    error             TEXT,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    seconds           REAL NOT NULL
);
";

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Recorded, not yet (completely) evaluated.
    Pending,
    /// Went through every stage: `fitness` is set.
    Evaluated,
    /// Stopped by a stage's threshold (e.g. the proxy): `proxy` is set, `fitness` is not.
    Screened,
    /// Failed a stage with a typed verdict.
    Failed,
    /// Produces the same masks on the probe layers as `duplicate_of`; its result was reused.
    Duplicate,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Evaluated => "evaluated",
            Status::Screened => "screened",
            Status::Failed => "failed",
            Status::Duplicate => "duplicate",
        }
    }

    fn parse(s: &str) -> Status {
        match s {
            "evaluated" => Status::Evaluated,
            "screened" => Status::Screened,
            "failed" => Status::Failed,
            "duplicate" => Status::Duplicate,
            _ => Status::Pending,
        }
    }
}

/// A candidate about to be recorded.
#[derive(Debug, Clone, Default)]
pub struct NewNode {
    /// Which proposer made it (`seed`, `gp`, `random`, `llm:<model>`).
    pub proposer: ProposerName,
    /// How: `seed`, `new`, `mutate`, `crossover`, `tune`, `repair`.
    pub operator: Operator,
    /// The idea in words.
    pub thought: String,
    /// The candidate source.
    pub code: String,
    /// A structured form (e.g. a GP tree as JSON), if any.
    pub expr: Option<String>,
    /// Parents with the rationale of the derivation.
    pub parents: Vec<(i64, String)>,
    /// Proposer tokens spent on it.
    pub tokens: u64,
}

/// A recorded candidate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    /// Id (increasing in creation order).
    pub id: i64,
    /// Unix time of creation.
    pub created: f64,
    /// Proposer.
    pub proposer: ProposerName,
    /// Operator.
    pub operator: Operator,
    /// The idea in words.
    pub thought: String,
    /// Source.
    pub code: String,
    /// SHA-256 of the source.
    pub source_hash: String,
    /// Structured form, if any.
    pub expr: Option<String>,
    /// Life state.
    pub status: Status,
    /// Last stage reached (`build`, `check`, `probe`, `screen`, `sequential`; version-1
    /// archives: `proxy`, `full`).
    pub stage: Option<Stage>,
    /// Typed verdict if it failed (stored as JSON).
    pub verdict: Option<Verdict>,
    /// Hash of its masks on the probe layers.
    pub mask_hash: Option<String>,
    /// The node whose result was reused.
    pub duplicate_of: Option<i64>,
    /// Screen score: perplexity ratio to Wanda on the screen windows (lower is better;
    /// version-1 archives: the proxy perplexity).
    pub proxy: Option<f64>,
    /// Fitness: ratio to Wanda at the sequential level on the validation windows (lower is
    /// better; version-1 archives: the validation perplexity).
    pub fitness: Option<f64>,
    /// Ratio to Wanda on the held-out evaluation windows (final ranking only; version-1
    /// archives: the held-out perplexity).
    pub heldout: Option<f64>,
    /// Evaluation seconds.
    pub seconds: Option<f64>,
    /// Proposer tokens.
    pub tokens: u64,
    /// Every level's paired comparison (JSON of [`super::cascade::Detail`]).
    #[serde(default)]
    pub detail: Option<String>,
}

/// A derivation edge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Edge {
    /// Derived node.
    pub child: i64,
    /// Parent node.
    pub parent: i64,
    /// Operator.
    pub operator: Operator,
    /// The stated reason.
    pub rationale: String,
}

/// What an evaluation concluded (serialised when a board's worker evaluates it remotely).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// Final status (never `Pending`).
    pub status: Option<Status>,
    /// Last stage reached.
    pub stage: Stage,
    /// Typed verdict on failure.
    pub verdict: Option<Verdict>,
    /// Probe mask hash.
    pub mask_hash: Option<String>,
    /// Reused node.
    pub duplicate_of: Option<i64>,
    /// Screen ratio to Wanda.
    pub proxy: Option<f64>,
    /// Sequential-level ratio to Wanda.
    pub fitness: Option<f64>,
    /// Seconds.
    pub seconds: f64,
    /// Every level's paired comparison (JSON).
    pub detail: Option<String>,
}

/// One proposer call (prompt and response), for the record.
#[derive(Debug, Clone, Default)]
pub struct Call {
    /// The node it produced, if any.
    pub node: Option<i64>,
    /// Proposer.
    pub proposer: ProposerName,
    /// Prompt text (JSON of the messages for chat endpoints).
    pub prompt: String,
    /// Response text, if any.
    pub response: Option<String>,
    /// Error, if the call failed.
    pub error: Option<String>,
    /// Tokens in.
    pub prompt_tokens: u64,
    /// Tokens out.
    pub completion_tokens: u64,
    /// Seconds.
    pub seconds: f64,
}

/// An open archive.
pub struct Archive {
    conn: Connection,
    path: PathBuf,
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Archive {
    /// Open (creating if needed) the archive at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let err = |source| ArchiveError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        // WAL: readers (`runs show`) never block the run; NORMAL sync is durable against a
        // killed process (only an OS crash can lose the last transactions).
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        let a = Archive {
            conn,
            path: path.to_path_buf(),
        };
        match a.meta("schema")? {
            None => a.set_meta("schema", SCHEMA_VERSION)?,
            Some(v) if v == SCHEMA_VERSION => {}
            Some(v) if v == "1" => {
                // Readable: add the column this version reads (left empty); the schema stays 1,
                // so `--resume` can refuse it (its scores are perplexities, not ratios).
                let has = a.conn.prepare("SELECT detail FROM nodes LIMIT 0").is_ok();
                if !has {
                    a.conn
                        .execute_batch("ALTER TABLE nodes ADD COLUMN detail TEXT")
                        .map_err(|e| a.err(e))?;
                }
            }
            Some(v) => {
                return Err(ArchiveError::Schema {
                    path: path.to_path_buf(),
                    message: format!("schema version {v}, this autoprune reads {SCHEMA_VERSION}"),
                })
            }
        }
        Ok(a)
    }

    /// Open an existing archive read-only-ish (fails if the file does not exist).
    pub fn open_existing(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(ArchiveError::Schema {
                path: path.to_path_buf(),
                message: "no such archive".into(),
            });
        }
        Self::open(path)
    }

    fn err(&self, source: rusqlite::Error) -> ArchiveError {
        ArchiveError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The schema version this archive was written with (`"1"` or [`SCHEMA_VERSION`]).
    pub fn schema(&self) -> Result<String> {
        Ok(self
            .meta("schema")?
            .unwrap_or_else(|| SCHEMA_VERSION.into()))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Set a metadata value.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Record the seed candidates and mark the run as seeded, atomically; does nothing if the
    /// run was seeded before. Returns the ids of the nodes inserted (empty on resume).
    pub fn seed(&mut self, seeds: &[NewNode]) -> Result<Vec<i64>> {
        let path = self.path.clone();
        let err = |source| ArchiveError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let seeded: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'seeded'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err)?;
        if seeded.is_some() {
            return Ok(Vec::new());
        }
        let mut ids = Vec::new();
        for s in seeds {
            ids.push(insert_node(&tx, s).map_err(err)?);
        }
        tx.execute(
            "INSERT INTO meta(key, value) VALUES ('seeded', ?1)",
            [ids.len().to_string()],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(ids)
    }

    /// Record a new candidate (and its edges) in state `pending`.
    pub fn add(&mut self, node: &NewNode) -> Result<i64> {
        self.record(node, None, &[])
    }

    /// Record a proposal in one transaction: the node (and its edges) — `pending`, or `failed`
    /// at stage `propose` with the typed verdict `failure` (a response that held no usable
    /// code, an endpoint that gave up) — and the proposer calls that produced it, linked to it.
    pub fn record(
        &mut self,
        node: &NewNode,
        failure: Option<&Verdict>,
        calls: &[Call],
    ) -> Result<i64> {
        let path = self.path.clone();
        let err = |source| ArchiveError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let id = insert_node(&tx, node).map_err(err)?;
        if let Some(v) = failure {
            tx.execute(
                "UPDATE nodes SET status = 'failed', stage = ?3, verdict = ?2, seconds = 0
                 WHERE id = ?1",
                params![id, v.to_json(), Stage::Propose.as_str()],
            )
            .map_err(err)?;
        }
        for c in calls {
            insert_call(&tx, Some(id), c).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(id)
    }

    /// Every proposer call, in order.
    pub fn calls(&self) -> Result<Vec<Call>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT node, proposer, prompt, response, error, prompt_tokens,
                 completion_tokens, seconds FROM calls ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(Call {
                    node: r.get(0)?,
                    proposer: ProposerName::from(r.get::<_, String>(1)?),
                    prompt: r.get(2)?,
                    response: r.get(3)?,
                    error: r.get(4)?,
                    prompt_tokens: r.get::<_, i64>(5)? as u64,
                    completion_tokens: r.get::<_, i64>(6)? as u64,
                    seconds: r.get(7)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Record the outcome of a node's evaluation.
    pub fn finish(&self, id: i64, o: &Outcome) -> Result<()> {
        let status = o.status.unwrap_or(Status::Failed);
        self.conn
            .execute(
                "UPDATE nodes SET status = ?2, stage = ?3, verdict = ?4, mask_hash = ?5,
                 duplicate_of = ?6, proxy = ?7, fitness = ?8, seconds = ?9, detail = ?10
                 WHERE id = ?1",
                params![
                    id,
                    status.as_str(),
                    o.stage.as_str(),
                    o.verdict.as_ref().map(Verdict::to_json),
                    o.mask_hash,
                    o.duplicate_of,
                    o.proxy,
                    o.fitness,
                    o.seconds,
                    o.detail
                ],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Record a node's held-out score (ratio to Wanda), and its detail when given.
    pub fn set_heldout(&self, id: i64, score: f64) -> Result<()> {
        self.conn
            .execute(
                "UPDATE nodes SET heldout = ?2 WHERE id = ?1",
                params![id, score],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Replace a node's detail (JSON).
    pub fn set_detail(&self, id: i64, detail: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE nodes SET detail = ?2 WHERE id = ?1",
                params![id, detail],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Every node, in creation order.
    pub fn nodes(&self) -> Result<Vec<Node>> {
        self.query_nodes("SELECT * FROM nodes ORDER BY id", [])
    }

    /// Nodes left `pending` (by a crash).
    pub fn pending(&self) -> Result<Vec<Node>> {
        self.query_nodes(
            "SELECT * FROM nodes WHERE status = 'pending' ORDER BY id",
            [],
        )
    }

    /// One node.
    pub fn node(&self, id: i64) -> Result<Option<Node>> {
        Ok(self
            .query_nodes("SELECT * FROM nodes WHERE id = ?1", [id])?
            .into_iter()
            .next())
    }

    /// A finished node with this source hash, if any.
    pub fn by_source(&self, hash: &str) -> Result<Option<Node>> {
        Ok(self
            .query_nodes(
                "SELECT * FROM nodes WHERE source_hash = ?1 AND status != 'pending' ORDER BY id LIMIT 1",
                [hash],
            )?
            .into_iter()
            .next())
    }

    /// A finished, non-duplicate node with these probe masks, if any.
    pub fn by_mask(&self, mask_hash: &str) -> Result<Option<Node>> {
        Ok(self
            .query_nodes(
                "SELECT * FROM nodes WHERE mask_hash = ?1 AND status IN ('evaluated', 'screened')
                 ORDER BY id LIMIT 1",
                [mask_hash],
            )?
            .into_iter()
            .next())
    }

    /// Every edge.
    pub fn edges(&self) -> Result<Vec<Edge>> {
        let mut st = self
            .conn
            .prepare("SELECT child, parent, operator, rationale FROM edges ORDER BY child, parent")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(Edge {
                    child: r.get(0)?,
                    parent: r.get(1)?,
                    operator: Operator::from(r.get::<_, String>(2)?),
                    rationale: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Number of proposed (non-seed) nodes: what the candidate budget counts.
    pub fn proposed_count(&self) -> Result<u64> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM nodes WHERE operator != ?1",
                [Operator::Seed.as_str()],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    /// Proposer tokens spent so far (prompt + completion over all calls).
    pub fn tokens_spent(&self) -> Result<u64> {
        self.conn
            .query_row(
                "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM calls",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    /// Prompt and completion tokens spent so far, separately (for prices).
    pub fn token_split(&self) -> Result<(u64, u64)> {
        self.conn
            .query_row(
                "SELECT COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0)
                 FROM calls",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .map_err(|e| self.err(e))
    }

    fn query_nodes<P: rusqlite::Params>(&self, sql: &str, p: P) -> Result<Vec<Node>> {
        let mut st = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = st
            .query_map(p, |r| {
                Ok(Node {
                    id: r.get("id")?,
                    created: r.get("created")?,
                    proposer: ProposerName::from(r.get::<_, String>("proposer")?),
                    operator: Operator::from(r.get::<_, String>("operator")?),
                    thought: r.get("thought")?,
                    code: r.get("code")?,
                    source_hash: r.get("source_hash")?,
                    expr: r.get("expr")?,
                    status: Status::parse(&r.get::<_, String>("status")?),
                    stage: r.get::<_, Option<String>>("stage")?.map(Stage::from),
                    verdict: r
                        .get::<_, Option<String>>("verdict")?
                        .map(|v| Verdict::from_json(&v)),
                    mask_hash: r.get("mask_hash")?,
                    duplicate_of: r.get("duplicate_of")?,
                    proxy: r.get("proxy")?,
                    fitness: r.get("fitness")?,
                    heldout: r.get("heldout")?,
                    seconds: r.get("seconds")?,
                    tokens: r.get::<_, i64>("tokens")? as u64,
                    detail: r.get("detail")?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }
}

fn insert_call(
    tx: &rusqlite::Transaction<'_>,
    node: Option<i64>,
    c: &Call,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO calls(node, created, proposer, prompt, response, error,
         prompt_tokens, completion_tokens, seconds) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            node,
            now(),
            c.proposer.to_string(),
            c.prompt,
            c.response,
            c.error,
            c.prompt_tokens as i64,
            c.completion_tokens as i64,
            c.seconds
        ],
    )
    .map(|_| ())
}

fn insert_node(tx: &rusqlite::Transaction<'_>, n: &NewNode) -> rusqlite::Result<i64> {
    tx.execute(
        "INSERT INTO nodes(created, proposer, operator, thought, code, source_hash, expr, status, tokens)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8)",
        params![
            now(),
            n.proposer.to_string(),
            n.operator.as_str(),
            n.thought,
            n.code,
            crate::sandbox::sha256_hex(n.code.as_bytes()),
            n.expr,
            n.tokens as i64
        ],
    )?;
    let id = tx.last_insert_rowid();
    for (parent, rationale) in &n.parents {
        tx.execute(
            "INSERT OR IGNORE INTO edges(child, parent, operator, rationale) VALUES (?1, ?2, ?3, ?4)",
            params![id, parent, n.operator.as_str(), rationale],
        )?;
    }
    Ok(id)
}

#[cfg(test)]
mod tests;
