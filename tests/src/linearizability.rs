//! Linearizability of strong operations: a recording client and a Wing–Gong checker.
//!
//! As in etcd's robustness tests (`tests/robustness/client/client.go`, `validate/`): every
//! call is recorded with its invocation and completion times and its result; a call that timed
//! out or found the cluster unavailable has an *unknown* outcome — a write may still have
//! applied, so it is never treated as failed. The checker then searches, key by key (keys are
//! independent registers, so a history is linearizable iff each key's is), for an order of the
//! operations that respects real time and the register model below.
//!
//! # The model
//!
//! A key's state is absent (version 0) or a value with a version. Versions are the Raft log
//! index of the write that set the key, so they only go up, but not one by one (other keys of
//! the group take indexes too):
//!
//! - `put(v)` returning version `n`: needs `n` above the current version; the state becomes
//!   `(v, n)`.
//! - `get` returning `(v, n)` or absent: the state must be exactly that.
//! - `cas(e, v)` returning version `n`: the current version must be `e` (0: absent) and
//!   `n > e`; the state becomes `(v, n)`.
//! - `cas(e, v)` failing with current version `c`: the current version must be `c`, and
//!   `c != e`; nothing changes. (Failing without a version: only `!= e` is checked.)
//! - A write with an unknown outcome may take effect at any point after its invocation, or
//!   never. Its version is unknown: the state holds "some version above `m`", which a later
//!   read or condition pins down.
//!
//! Values must be unique per write (the workload makes them so), or a read cannot say which
//! write it saw. Failed reads say nothing and are dropped.
//!
//! # The search
//!
//! Wing & Gong's algorithm with Lowe's memoization (the one porcupine uses): repeatedly pick
//! an operation that may go next — one invoked before every not yet linearized completed
//! operation returned — apply it to the model, recurse, and backtrack on failure; a set of
//! (linearized operations, model state) pairs already explored prunes the search. Operations
//! with unknown outcome never have to be picked, so the search succeeds once every completed
//! operation is linearized. A budget of explored states bounds the worst case; running out is
//! reported as inconclusive, never as a pass.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvclient::{Client, Error, ReadOptions, WriteOptions};

/// What an operation asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// An unconditional strong write.
    Put { value: String },
    /// A strong read.
    Get,
    /// A strong write conditional on the key's version being `expected` (0: absent).
    Cas { expected: u64, value: String },
}

/// What an operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A put or cas applied, at this version.
    Written { version: u64 },
    /// A get: the value and version, or `None` for an absent key.
    Read(Option<(String, u64)>),
    /// A cas was refused; the key's version as the server reported it (0: absent).
    CasFailed { current: Option<u64> },
    /// The operation definitely did not take effect (the request was invalid).
    Failed,
    /// Timeout, unavailable, transport error: a write may or may not have applied.
    Unknown,
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The recording client (task) that made the call.
    pub client: usize,
    pub key: String,
    pub kind: OpKind,
    /// When the call started, since the history's origin.
    pub invoke: Duration,
    /// When it returned. For an [`Outcome::Unknown`] write this is when the caller gave up:
    /// the checker treats the operation as open-ended.
    pub complete: Duration,
    pub outcome: Outcome,
    /// The error text, when the call failed (for diagnostics).
    pub error: Option<String>,
}

impl Operation {
    /// Whether the checker must linearize the operation (its effect was observed).
    fn is_completed(&self) -> bool {
        !matches!(self.outcome, Outcome::Unknown)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let op = match &self.kind {
            OpKind::Put { value } => format!("put({value})"),
            OpKind::Get => "get()".to_string(),
            OpKind::Cas { expected, value } => format!("cas(if v{expected}, {value})"),
        };
        let out = match &self.outcome {
            Outcome::Written { version } => format!("ok v{version}"),
            Outcome::Read(None) => "absent".to_string(),
            Outcome::Read(Some((v, n))) => format!("{v} v{n}"),
            Outcome::CasFailed { current: Some(c) } => format!("condition failed, current v{c}"),
            Outcome::CasFailed { current: None } => "condition failed".to_string(),
            Outcome::Failed => "failed (no effect)".to_string(),
            Outcome::Unknown => {
                format!("UNKNOWN ({})", self.error.as_deref().unwrap_or("no answer"))
            }
        };
        let end = if self.is_completed() {
            format!("{:10.3}", ms(self.complete))
        } else {
            "       inf".to_string()
        };
        write!(
            f,
            "[{:10.3} .. {end}] c{} {} {op} -> {out}",
            ms(self.invoke),
            self.client,
            self.key
        )
    }
}

/// Reads a history back from its text (one [`Operation`] per line, as `Display` writes them,
/// e.g. a run's `history.txt`), so that a saved history can be checked again, with a larger
/// budget say. Error texts of unknown outcomes are kept as written.
pub fn parse_history(text: &str) -> Result<Vec<Operation>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| parse_operation(l).map_err(|e| format!("line {}: {e}: {l}", n + 1)))
        .collect()
}

fn parse_operation(line: &str) -> Result<Operation, String> {
    let ms = |t: &str| -> Result<Duration, String> {
        let v: f64 = t.trim().parse().map_err(|_| format!("bad time {t:?}"))?;
        Ok(Duration::from_nanos((v * 1_000_000.0).round() as u64))
    };
    let rest = line.trim().strip_prefix('[').ok_or("no [")?;
    let (times, rest) = rest.split_once(']').ok_or("no ]")?;
    let (invoke, end) = times.split_once("..").ok_or("no ..")?;
    let invoke = ms(invoke)?;
    let mut words = rest.trim().splitn(3, ' ');
    let client = words
        .next()
        .and_then(|c| c.strip_prefix('c'))
        .and_then(|c| c.parse().ok())
        .ok_or("no client")?;
    let key = words.next().ok_or("no key")?.to_string();
    let (op, out) = words
        .next()
        .and_then(|r| r.split_once(" -> "))
        .ok_or("no ->")?;
    let kind = if op == "get()" {
        OpKind::Get
    } else if let Some(v) = op.strip_prefix("put(").and_then(|v| v.strip_suffix(')')) {
        OpKind::Put { value: v.into() }
    } else if let Some(c) = op
        .strip_prefix("cas(if v")
        .and_then(|v| v.strip_suffix(')'))
    {
        let (expected, value) = c.split_once(", ").ok_or("bad cas")?;
        OpKind::Cas {
            expected: expected.parse().map_err(|_| "bad cas version")?,
            value: value.into(),
        }
    } else {
        return Err(format!("unknown op {op:?}"));
    };
    let version = |v: &str| -> Result<u64, String> {
        v.strip_prefix('v')
            .and_then(|n| n.parse().ok())
            .ok_or(format!("bad version {v:?}"))
    };
    let (outcome, error) = if let Some(v) = out.strip_prefix("ok ") {
        (
            Outcome::Written {
                version: version(v)?,
            },
            None,
        )
    } else if out == "absent" {
        (Outcome::Read(None), None)
    } else if let Some(c) = out.strip_prefix("condition failed, current ") {
        (
            Outcome::CasFailed {
                current: Some(version(c)?),
            },
            None,
        )
    } else if out == "condition failed" {
        (Outcome::CasFailed { current: None }, None)
    } else if out == "failed (no effect)" {
        (Outcome::Failed, None)
    } else if let Some(e) = out
        .strip_prefix("UNKNOWN (")
        .and_then(|e| e.strip_suffix(')'))
    {
        (Outcome::Unknown, Some(e.to_string()))
    } else {
        let (value, v) = out.rsplit_once(' ').ok_or("bad read")?;
        (Outcome::Read(Some((value.into(), version(v)?))), None)
    };
    let complete = match end.trim() {
        "inf" => invoke,
        t => ms(t)?,
    };
    Ok(Operation {
        client,
        key,
        kind,
        invoke,
        complete,
        outcome,
        error,
    })
}

/// Recorded operations, shared by every recording client of one run.
#[derive(Debug, Clone)]
pub struct History {
    origin: Instant,
    ops: Arc<Mutex<Vec<Operation>>>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> Self {
        History {
            origin: Instant::now(),
            ops: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Time since the origin.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Appends one operation. A std mutex: held for a push, never across `.await`.
    pub fn record(&self, op: Operation) {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).push(op);
    }

    /// Every operation recorded so far.
    pub fn operations(&self) -> Vec<Operation> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A client whose strong calls are recorded in a [`History`].
#[derive(Debug, Clone)]
pub struct RecordingClient {
    id: usize,
    client: Client,
    history: History,
}

impl RecordingClient {
    /// Records the calls of `client` as client `id`.
    pub fn new(id: usize, client: Client, history: History) -> Self {
        RecordingClient {
            id,
            client,
            history,
        }
    }

    fn finish(
        &self,
        key: &str,
        kind: OpKind,
        invoke: Duration,
        outcome: Outcome,
        error: Option<String>,
    ) -> Outcome {
        self.history.record(Operation {
            client: self.id,
            key: key.to_string(),
            kind,
            invoke,
            complete: self.history.now(),
            outcome: outcome.clone(),
            error,
        });
        outcome
    }

    /// A strong put.
    pub async fn put(&self, key: &str, value: &str) -> Outcome {
        let invoke = self.history.now();
        let result = self
            .client
            .put_with(key.to_string(), value.to_string(), &WriteOptions::default())
            .await;
        let (outcome, error) = match result {
            Ok(version) => (Outcome::Written { version }, None),
            Err(e) => (write_error(&e), Some(e.to_string())),
        };
        let kind = OpKind::Put {
            value: value.to_string(),
        };
        self.finish(key, kind, invoke, outcome, error)
    }

    /// A strong compare-and-set on the key's version.
    pub async fn cas(&self, key: &str, expected: u64, value: &str) -> Outcome {
        let invoke = self.history.now();
        let options = WriteOptions {
            if_version: Some(expected),
            ..Default::default()
        };
        let result = self
            .client
            .put_with(key.to_string(), value.to_string(), &options)
            .await;
        let (outcome, error) = match result {
            Ok(version) => (Outcome::Written { version }, None),
            Err(Error::ConditionFailed { current_version }) => (
                Outcome::CasFailed {
                    current: current_version,
                },
                None,
            ),
            Err(e) => (write_error(&e), Some(e.to_string())),
        };
        let kind = OpKind::Cas {
            expected,
            value: value.to_string(),
        };
        self.finish(key, kind, invoke, outcome, error)
    }

    /// A strong get.
    pub async fn get(&self, key: &str) -> Outcome {
        let invoke = self.history.now();
        let result = self
            .client
            .get_with(key.to_string(), &ReadOptions::default())
            .await;
        let (outcome, error) = match result {
            Ok(found) => (
                Outcome::Read(
                    found.map(|v| (String::from_utf8_lossy(&v.value).into_owned(), v.version)),
                ),
                None,
            ),
            Err(e) => (Outcome::Unknown, Some(e.to_string())),
        };
        self.finish(key, OpKind::Get, invoke, outcome, error)
    }
}

/// A failed write: definitely without effect only when the request itself was refused.
fn write_error(e: &Error) -> Outcome {
    match e {
        Error::InvalidArgument { .. } | Error::InvalidEndpoint { .. } => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

/// A key's version as the model knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Ver {
    Known(u64),
    /// Written by an operation of unknown outcome: some version above this one.
    Above(u64),
}

/// The register: absent, or a value (interned) with its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct State(Option<(u32, Ver)>);

impl State {
    /// Whether the current version can be `v`, and the state with the version pinned to it.
    fn with_version(self, v: u64) -> Option<State> {
        match self.0 {
            None => (v == 0).then_some(self),
            Some((_, Ver::Known(k))) => (k == v).then_some(self),
            Some((val, Ver::Above(n))) => (v > n).then_some(State(Some((val, Ver::Known(v))))),
        }
    }

    /// Whether the current version is certainly `v`.
    fn certainly_version(self, v: u64) -> bool {
        match self.0 {
            None => v == 0,
            Some((_, Ver::Known(k))) => k == v,
            Some((_, Ver::Above(_))) => false,
        }
    }

    /// A lower bound of the current version.
    fn version_floor(self) -> u64 {
        match self.0 {
            None => 0,
            Some((_, Ver::Known(k))) | Some((_, Ver::Above(k))) => k,
        }
    }
}

/// An operation as the search sees it: interned values, open-ended when unknown.
#[derive(Debug, Clone)]
struct Step {
    kind: StepKind,
    call: Duration,
    /// `None`: unknown outcome, may linearize at any time after `call`, or never.
    ret: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
enum StepKind {
    ReadAbsent,
    Read {
        value: u32,
        version: u64,
    },
    Put {
        value: u32,
        version: Option<u64>,
    },
    Cas {
        expected: u64,
        value: u32,
        version: Option<u64>,
    },
    CasFailed {
        expected: u64,
        current: Option<u64>,
    },
}

impl StepKind {
    /// The states the model may be in after this operation, from `s`.
    fn apply(self, s: State) -> Option<State> {
        match self {
            StepKind::ReadAbsent => s.0.is_none().then_some(s),
            StepKind::Read { value, version } => match s.0 {
                Some((v, _)) if v == value => s.with_version(version),
                _ => None,
            },
            StepKind::Put { value, version } => {
                let floor = s.version_floor();
                match version {
                    Some(n) => (n > floor).then_some(State(Some((value, Ver::Known(n))))),
                    None => Some(State(Some((value, Ver::Above(floor))))),
                }
            }
            StepKind::Cas {
                expected,
                value,
                version,
            } => {
                s.with_version(expected)?;
                match version {
                    Some(n) => (n > expected).then_some(State(Some((value, Ver::Known(n))))),
                    None => Some(State(Some((value, Ver::Above(expected))))),
                }
            }
            StepKind::CasFailed { expected, current } => match current {
                Some(c) => {
                    if c == expected {
                        None
                    } else {
                        s.with_version(c)
                    }
                }
                None => (!s.certainly_version(expected)).then_some(s),
            },
        }
    }
}

/// The verdict on one key.
#[derive(Debug, Clone)]
pub enum KeyVerdict {
    Linearizable,
    /// No order exists; the report shows the longest linearizable prefix and what blocked it.
    Violation(String),
    /// The search ran out of its state budget.
    Inconclusive {
        explored: usize,
    },
}

/// The verdict on a whole history.
#[derive(Debug, Clone)]
pub struct Report {
    pub keys: Vec<(String, KeyVerdict)>,
    /// Operations checked (failed reads and requests without effect excluded).
    pub operations: usize,
    /// Of those, writes with unknown outcome.
    pub unknown: usize,
}

impl Report {
    /// Whether every key is linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.keys
            .iter()
            .all(|(_, v)| matches!(v, KeyVerdict::Linearizable))
    }

    /// Whether some key has no linearization (as opposed to one not found within the budget).
    pub fn has_violation(&self) -> bool {
        self.keys
            .iter()
            .any(|(_, v)| matches!(v, KeyVerdict::Violation(_)))
    }

    /// The keys that are not (proven) linearizable, with the reason.
    pub fn problems(&self) -> String {
        let mut out = String::new();
        for (key, verdict) in &self.keys {
            match verdict {
                KeyVerdict::Linearizable => {}
                KeyVerdict::Violation(text) => {
                    out.push_str(&format!("key {key}: NOT LINEARIZABLE\n{text}\n"))
                }
                KeyVerdict::Inconclusive { explored } => out.push_str(&format!(
                    "key {key}: inconclusive after exploring {explored} states\n"
                )),
            }
        }
        out
    }
}

/// Default budget of explored (linearized set, state) pairs per key.
pub const DEFAULT_BUDGET: usize = 2_000_000;

/// Checks a whole history, key by key.
pub fn check(history: &[Operation]) -> Report {
    check_with_budget(history, DEFAULT_BUDGET)
}

/// [`check`] with a state budget per key.
pub fn check_with_budget(history: &[Operation], budget: usize) -> Report {
    let mut by_key: HashMap<&str, Vec<&Operation>> = HashMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut keys: Vec<&str> = by_key.keys().copied().collect();
    keys.sort();
    let mut report = Report {
        keys: Vec::new(),
        operations: 0,
        unknown: 0,
    };
    for key in keys {
        let ops: Vec<Operation> = by_key[key]
            .iter()
            .filter(|op| {
                // Failed reads and refused requests have no effect and no observation.
                let failed_read = op.kind == OpKind::Get && op.outcome == Outcome::Unknown;
                op.outcome != Outcome::Failed && !failed_read
            })
            .map(|op| (*op).clone())
            .collect();
        report.operations += ops.len();
        report.unknown += ops.iter().filter(|o| !o.is_completed()).count();
        let verdict = check_key(&ops, budget);
        report.keys.push((key.to_string(), verdict));
    }
    report
}

/// Checks the operations of one key (all with the same key). Runs the search on a thread with
/// a large stack: its recursion is as deep as the history is long.
pub fn check_key(ops: &[Operation], budget: usize) -> KeyVerdict {
    let ops = ops.to_vec();
    std::thread::Builder::new()
        .name("linearizability".into())
        .stack_size(512 << 20)
        .spawn(move || Search::new(&ops, budget).run(&ops))
        .expect("spawning the checker thread")
        .join()
        .unwrap_or_else(|_| KeyVerdict::Violation("the checker panicked".into()))
}

struct Search {
    steps: Vec<Step>,
    /// Completed operations, by invocation time.
    completed: Vec<usize>,
    /// Unknown-outcome operations, by invocation time.
    unknown: Vec<usize>,
    linearized: Vec<bool>,
    /// (return time, index) of every completed operation not linearized yet.
    pending_returns: BTreeSet<(Duration, usize)>,
    visited: HashSet<(Vec<u64>, State)>,
    budget: usize,
    path: Vec<usize>,
    /// The longest path (in completed operations) found, and the state it ended in.
    best: (usize, Vec<usize>, State),
    exhausted: bool,
}

impl Search {
    fn new(ops: &[Operation], budget: usize) -> Search {
        let mut values: HashMap<String, u32> = HashMap::new();
        let mut intern = |v: &str| -> u32 {
            let n = values.len() as u32;
            *values.entry(v.to_string()).or_insert(n)
        };
        let mut steps = Vec::with_capacity(ops.len());
        for op in ops {
            let ret = op.is_completed().then_some(op.complete);
            let kind = match (&op.kind, &op.outcome) {
                (OpKind::Get, Outcome::Read(None)) => StepKind::ReadAbsent,
                (OpKind::Get, Outcome::Read(Some((v, n)))) => StepKind::Read {
                    value: intern(v),
                    version: *n,
                },
                (OpKind::Put { value }, Outcome::Written { version }) => StepKind::Put {
                    value: intern(value),
                    version: Some(*version),
                },
                (OpKind::Put { value }, Outcome::Unknown) => StepKind::Put {
                    value: intern(value),
                    version: None,
                },
                (OpKind::Cas { expected, value }, Outcome::Written { version }) => StepKind::Cas {
                    expected: *expected,
                    value: intern(value),
                    version: Some(*version),
                },
                (OpKind::Cas { expected, value }, Outcome::Unknown) => StepKind::Cas {
                    expected: *expected,
                    value: intern(value),
                    version: None,
                },
                (OpKind::Cas { expected, .. }, Outcome::CasFailed { current }) => {
                    StepKind::CasFailed {
                        expected: *expected,
                        current: *current,
                    }
                }
                // A mismatched record (a put reported as a read...) can be matched by nothing.
                _ => StepKind::Read {
                    value: u32::MAX,
                    version: 0,
                },
            };
            steps.push(Step {
                kind,
                call: op.invoke,
                ret,
            });
        }
        let mut completed: Vec<usize> = (0..steps.len())
            .filter(|&i| steps[i].ret.is_some())
            .collect();
        completed.sort_by_key(|&i| steps[i].call);
        let mut unknown: Vec<usize> = (0..steps.len())
            .filter(|&i| steps[i].ret.is_none())
            .collect();
        unknown.sort_by_key(|&i| steps[i].call);
        let pending_returns = completed
            .iter()
            .map(|&i| (steps[i].ret.unwrap_or(Duration::MAX), i))
            .collect();
        Search {
            linearized: vec![false; steps.len()],
            steps,
            completed,
            unknown,
            pending_returns,
            visited: HashSet::new(),
            budget,
            path: Vec::new(),
            best: (0, Vec::new(), State(None)),
            exhausted: false,
        }
    }

    fn run(mut self, ops: &[Operation]) -> KeyVerdict {
        if self.dfs(State(None), 0, 0) {
            return KeyVerdict::Linearizable;
        }
        if self.exhausted {
            return KeyVerdict::Inconclusive {
                explored: self.visited.len(),
            };
        }
        KeyVerdict::Violation(self.explain(ops))
    }

    fn bits(&self) -> Vec<u64> {
        let mut bits = vec![0u64; self.linearized.len().div_ceil(64)];
        for (i, &l) in self.linearized.iter().enumerate() {
            if l {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        bits
    }

    /// `low`: every completed operation before `completed[low]` is linearized. `done`: how
    /// many completed operations are linearized.
    fn dfs(&mut self, state: State, low: usize, done: usize) -> bool {
        if done == self.completed.len() {
            return true;
        }
        if done > self.best.0 {
            self.best = (done, self.path.clone(), state);
        }
        if self.visited.len() >= self.budget {
            self.exhausted = true;
            return false;
        }
        if !self.visited.insert((self.bits(), state)) {
            return false;
        }
        let mut low = low;
        while low < self.completed.len() && self.linearized[self.completed[low]] {
            low += 1;
        }
        // Every candidate must be invoked before the earliest pending return.
        let deadline = match self.pending_returns.iter().next() {
            Some(&(ret, _)) => ret,
            None => return true,
        };
        let mut candidates: Vec<usize> = Vec::new();
        for &i in &self.completed[low..] {
            if self.steps[i].call > deadline {
                break;
            }
            if !self.linearized[i] {
                candidates.push(i);
            }
        }
        for &i in &self.unknown {
            if self.steps[i].call > deadline {
                break;
            }
            if !self.linearized[i] {
                candidates.push(i);
            }
        }
        for i in candidates {
            let Some(next) = self.steps[i].kind.apply(state) else {
                continue;
            };
            let ret = self.steps[i].ret;
            self.linearized[i] = true;
            self.path.push(i);
            let counted = if let Some(r) = ret {
                self.pending_returns.remove(&(r, i));
                1
            } else {
                0
            };
            if self.dfs(next, low, done + counted) {
                return true;
            }
            if let Some(r) = ret {
                self.pending_returns.insert((r, i));
            }
            self.path.pop();
            self.linearized[i] = false;
            if self.exhausted {
                return false;
            }
        }
        false
    }

    /// The longest linearizable prefix, then the operations that could not follow it.
    fn explain(&self, ops: &[Operation]) -> String {
        let (done, path, state) = &self.best;
        let mut out = format!(
            "longest linearizable prefix: {done} of {} completed operations; model state then: {}\n",
            self.completed.len(),
            self.describe_state(*state, ops)
        );
        let tail = path.len().saturating_sub(10);
        out.push_str("  ... last operations of that order:\n");
        for &i in &path[tail..] {
            out.push_str(&format!("    {}\n", ops[i]));
        }
        let on_path: HashSet<usize> = path.iter().copied().collect();
        let deadline = self
            .completed
            .iter()
            .filter(|i| !on_path.contains(i))
            .filter_map(|&i| self.steps[i].ret)
            .min();
        out.push_str("  operations that could come next, none of which fits:\n");
        let mut shown = 0;
        for (i, op) in ops.iter().enumerate() {
            if on_path.contains(&i) {
                continue;
            }
            if deadline.is_some_and(|d| self.steps[i].call > d) {
                continue;
            }
            out.push_str(&format!("    {op}\n"));
            shown += 1;
            if shown >= 20 {
                out.push_str("    ...\n");
                break;
            }
        }
        out
    }

    fn describe_state(&self, state: State, ops: &[Operation]) -> String {
        match state.0 {
            None => "absent".to_string(),
            Some((value, ver)) => {
                let name = ops
                    .iter()
                    .zip(&self.steps)
                    .find_map(|(op, step)| match (step.kind, &op.kind) {
                        (StepKind::Put { value: v, .. }, OpKind::Put { value: s })
                        | (StepKind::Cas { value: v, .. }, OpKind::Cas { value: s, .. })
                            if v == value =>
                        {
                            Some(s.clone())
                        }
                        _ => None,
                    })
                    .unwrap_or_else(|| format!("#{value}"));
                match ver {
                    Ver::Known(n) => format!("{name} v{n}"),
                    Ver::Above(n) => format!("{name} v>{n}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_printed_history_reads_back_as_it_was() {
        let at = |ms: u64| Duration::from_micros(ms * 1000 + 250);
        let ops = vec![
            Operation {
                client: 3,
                key: "nem-1".into(),
                kind: OpKind::Cas {
                    expected: 4,
                    value: "w3-7".into(),
                },
                invoke: at(10),
                complete: at(12),
                outcome: Outcome::CasFailed { current: Some(9) },
                error: None,
            },
            Operation {
                client: 0,
                key: "nem-0".into(),
                kind: OpKind::Get,
                invoke: at(11),
                complete: at(15),
                outcome: Outcome::Read(Some(("w1-2".into(), 5))),
                error: None,
            },
            Operation {
                client: 1,
                key: "nem-0".into(),
                kind: OpKind::Put {
                    value: "w1-3".into(),
                },
                invoke: at(13),
                complete: at(13),
                outcome: Outcome::Unknown,
                error: Some("deadline exceeded (x)".into()),
            },
            Operation {
                client: 2,
                key: "nem-0".into(),
                kind: OpKind::Get,
                invoke: at(1),
                complete: at(2),
                outcome: Outcome::Read(None),
                error: None,
            },
        ];
        let text: String = ops.iter().map(|o| format!("{o}\n")).collect();
        assert_eq!(parse_history(&text).expect("parses"), ops);
        assert!(parse_history("[ 1 .. 2 ] c1 k frob() -> ok v1").is_err());
    }

    /// A history written as (client, invoke ms, complete ms or None for unknown, op, outcome).
    struct H(Vec<Operation>);

    impl H {
        fn new() -> Self {
            H(Vec::new())
        }

        fn op(mut self, client: usize, t: (u64, Option<u64>), kind: OpKind, out: Outcome) -> Self {
            let unknown = t.1.is_none();
            self.0.push(Operation {
                client,
                key: "k".into(),
                kind,
                invoke: Duration::from_millis(t.0),
                complete: Duration::from_millis(t.1.unwrap_or(t.0 + 1)),
                outcome: if unknown { Outcome::Unknown } else { out },
                error: None,
            });
            self
        }

        fn put(self, c: usize, t: (u64, Option<u64>), v: &str, ver: u64) -> Self {
            self.op(
                c,
                t,
                OpKind::Put { value: v.into() },
                Outcome::Written { version: ver },
            )
        }

        fn get(self, c: usize, t: (u64, u64), found: Option<(&str, u64)>) -> Self {
            self.op(
                c,
                (t.0, Some(t.1)),
                OpKind::Get,
                Outcome::Read(found.map(|(v, n)| (v.to_string(), n))),
            )
        }

        fn cas(self, c: usize, t: (u64, Option<u64>), e: u64, v: &str, out: Outcome) -> Self {
            self.op(
                c,
                t,
                OpKind::Cas {
                    expected: e,
                    value: v.into(),
                },
                out,
            )
        }

        fn verdict(&self) -> KeyVerdict {
            check_key(&self.0, 100_000)
        }

        fn assert_ok(&self) {
            let v = self.verdict();
            assert!(matches!(v, KeyVerdict::Linearizable), "{v:?}");
        }

        fn assert_violation(&self) {
            let v = self.verdict();
            assert!(matches!(v, KeyVerdict::Violation(_)), "{v:?}");
        }
    }

    fn ok(version: u64) -> Outcome {
        Outcome::Written { version }
    }

    fn failed(current: u64) -> Outcome {
        Outcome::CasFailed {
            current: Some(current),
        }
    }

    #[test]
    fn empty_and_sequential_histories_are_linearizable() {
        H::new().assert_ok();
        H::new()
            .get(0, (0, 1), None)
            .put(0, (2, Some(3)), "a", 5)
            .get(0, (4, 5), Some(("a", 5)))
            .cas(0, (6, Some(7)), 5, "b", ok(9))
            .cas(0, (8, Some(9)), 5, "c", failed(9))
            .get(1, (10, 11), Some(("b", 9)))
            .assert_ok();
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // The read overlaps the put: it may see the old or the new value.
        H::new()
            .put(0, (0, Some(1)), "a", 1)
            .put(0, (10, Some(20)), "b", 2)
            .get(1, (11, 12), Some(("a", 1)))
            .get(2, (13, 14), Some(("b", 2)))
            .get(1, (21, 22), Some(("b", 2)))
            .assert_ok();
        // The read completed before a concurrent put was invoked... no: overlapping writes
        // may be ordered either way, as long as versions agree with the order.
        H::new()
            .put(0, (0, Some(10)), "a", 3)
            .put(1, (1, Some(11)), "b", 2)
            .get(2, (12, 13), Some(("a", 3)))
            .assert_ok();
    }

    #[test]
    fn stale_read_after_a_completed_write_is_a_violation() {
        H::new()
            .put(0, (0, Some(1)), "a", 1)
            .put(0, (2, Some(3)), "b", 2)
            .get(1, (4, 5), Some(("a", 1)))
            .assert_violation();
    }

    #[test]
    fn two_successful_cas_from_the_same_version_is_a_violation() {
        H::new()
            .put(0, (0, Some(1)), "a", 1)
            .cas(1, (2, Some(10)), 1, "b", ok(5))
            .cas(2, (3, Some(11)), 1, "c", ok(6))
            .assert_violation();
        // One of them failing is fine.
        H::new()
            .put(0, (0, Some(1)), "a", 1)
            .cas(1, (2, Some(10)), 1, "b", ok(5))
            .cas(2, (3, Some(11)), 1, "c", failed(5))
            .assert_ok();
    }

    #[test]
    fn read_of_a_value_never_written_is_a_violation() {
        H::new()
            .put(0, (0, Some(1)), "a", 1)
            .get(1, (2, 3), Some(("ghost", 1)))
            .assert_violation();
        H::new()
            .get(1, (2, 3), Some(("ghost", 7)))
            .assert_violation();
    }

    #[test]
    fn read_going_back_in_time_is_a_violation() {
        // Both writes overlap both reads, but once a read saw b, a later read cannot see a.
        H::new()
            .put(0, (0, Some(1)), "a", 1)
            .put(0, (2, Some(30)), "b", 2)
            .get(1, (3, 4), Some(("b", 2)))
            .get(2, (5, 6), Some(("a", 1)))
            .assert_violation();
        // Absent after present (no deletes).
        H::new()
            .put(0, (0, Some(1)), "a", 1)
            .get(1, (2, 3), None)
            .assert_violation();
    }

    #[test]
    fn versions_must_increase() {
        H::new()
            .put(0, (0, Some(1)), "a", 5)
            .put(0, (2, Some(3)), "b", 4)
            .assert_violation();
        // A read that pins a version different from the write's.
        H::new()
            .put(0, (0, Some(1)), "a", 5)
            .get(1, (2, 3), Some(("a", 6)))
            .assert_violation();
    }

    #[test]
    fn unknown_writes_may_apply_late_or_never() {
        // Never applied.
        H::new()
            .put(0, (0, None), "a", 0)
            .get(1, (5, 6), None)
            .get(1, (7, 8), None)
            .assert_ok();
        // Applied long after the caller gave up, with a version a read pins down.
        H::new()
            .put(0, (0, None), "a", 0)
            .get(1, (5, 6), None)
            .get(1, (100, 101), Some(("a", 7)))
            .cas(1, (102, Some(103)), 7, "b", ok(9))
            .assert_ok();
        // But never before it was invoked.
        H::new()
            .get(1, (0, 1), Some(("a", 7)))
            .put(0, (5, None), "a", 0)
            .assert_violation();
        // An unknown cas applies only from its expected version.
        H::new()
            .put(0, (0, Some(1)), "a", 3)
            .cas(1, (2, None), 2, "b", Outcome::Unknown)
            .get(2, (10, 11), Some(("b", 8)))
            .assert_violation();
        H::new()
            .put(0, (0, Some(1)), "a", 3)
            .cas(1, (2, None), 3, "b", Outcome::Unknown)
            .get(2, (10, 11), Some(("b", 8)))
            .cas(2, (12, Some(13)), 8, "c", ok(9))
            .assert_ok();
    }

    #[test]
    fn a_failed_cas_must_see_the_version_it_reports() {
        H::new()
            .put(0, (0, Some(1)), "a", 3)
            .cas(1, (2, Some(3)), 2, "b", failed(4))
            .assert_violation();
        // Reporting the expected version as current is a contradiction.
        H::new()
            .put(0, (0, Some(1)), "a", 3)
            .cas(1, (2, Some(3)), 3, "b", failed(3))
            .assert_violation();
        // A write of unknown outcome can explain the reported version.
        H::new()
            .put(0, (0, Some(1)), "a", 3)
            .put(2, (1, None), "x", 0)
            .cas(1, (2, Some(3)), 3, "b", failed(6))
            .get(1, (4, 5), Some(("x", 6)))
            .assert_ok();
    }

    #[test]
    fn many_concurrent_increments_check_quickly() {
        // Four clients racing CAS increments, each round one winner: a long valid history.
        let mut h = H::new();
        let mut version = 0;
        let mut t = 0;
        for round in 0..300 {
            let winner = round % 4;
            for c in 0..4 {
                let out = if c == winner {
                    ok(version + 2)
                } else {
                    failed(version + 2)
                };
                h = h.cas(
                    c,
                    (t + c as u64, Some(t + 10 + c as u64)),
                    version,
                    &format!("r{round}c{c}"),
                    out,
                );
            }
            version += 2;
            t += 20;
        }
        h.assert_ok();
    }

    #[test]
    fn the_report_names_the_key_and_what_blocked() {
        let mut ops = H::new()
            .put(0, (0, Some(1)), "a", 1)
            .put(0, (2, Some(3)), "b", 2)
            .get(1, (4, 5), Some(("a", 1)))
            .0;
        for op in &mut ops {
            op.key = "bad".into();
        }
        let mut good = H::new().put(0, (0, Some(1)), "z", 1).0;
        good[0].key = "good".into();
        ops.extend(good);
        let report = check(&ops);
        assert!(!report.is_linearizable());
        let text = report.problems();
        assert!(text.contains("key bad: NOT LINEARIZABLE"), "{text}");
        assert!(!text.contains("key good"), "{text}");
        assert!(text.contains("get() -> a v1"), "{text}");
    }
}
