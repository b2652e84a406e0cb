//! Who may open which sandbox, for tokens that do not name sandboxes: the `[[policy]]` rules of
//! the config file, CEL expressions over the verified token's claims (`token`), the sandbox as
//! Daytona describes it (`sandbox`) and the request (`request`). A request is allowed when any
//! rule is true; an error while evaluating a rule (a claim the token lacks, a type mismatch)
//! counts as false, so a rule can only open, never break, the door.
//!
//! Compiled once (start-up, reload): parsed, then checked without any input (only the three
//! variables, known functions and operators, the fields `sandbox` and `request` have) and
//! evaluated once against a representative input, which must yield a boolean or an error of
//! missing data. Evaluation is bounded: CEL has no loops beyond its macros over the inputs'
//! lists and maps, and the inputs are bounded in size here ([`TokenClaims`], [`SandboxInfo`]).
//! Pure: no I/O; the sandbox's description is looked up by the caller (`Lookup::Sandbox`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cel::common::ast::{EntryExpr, Expr};
use cel::common::value::{CowVal, Val};
use cel::objects::{Key, Map};
use cel::parser::Expression;
use cel::{Context, Value};

/// Rules at most, and the longest expression: each is evaluated for every such request.
pub const MAX_RULES: usize = 64;
pub const MAX_EXPRESSION_LEN: usize = 4096;
/// Nesting of an expression at most (the interpreter recurses on it).
const MAX_DEPTH: usize = 48;

/// Bounds on a token's claims as a policy sees them: a token beyond them is refused (it is not
/// evaluated at all), so the cost of a rule over `token` stays small.
pub const MAX_CLAIM_VALUES: usize = 2048;
pub const MAX_CLAIM_LIST: usize = 256;
pub const MAX_CLAIM_STRING: usize = 2048;
const MAX_CLAIM_DEPTH: usize = 4;

/// Bounds on a sandbox's labels (Daytona's answer beyond them is refused as unusable).
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY: usize = 256;
pub const MAX_LABEL_VALUE: usize = 1024;

/// The fields of `sandbox` and `request`: a rule naming another is refused at start-up.
const SANDBOX_FIELDS: &[&str] = &[
    "id",
    "name",
    "labels",
    "organizationId",
    "organization",
    "state",
];
const REQUEST_FIELDS: &[&str] = &["port", "method", "path", "route"];

/// The functions the interpreter knows (its default context), and the operators it evaluates.
const FUNCTIONS: &[&str] = &[
    "contains",
    "size",
    "type",
    "dyn",
    "bool",
    "startsWith",
    "endsWith",
    "string",
    "bytes",
    "double",
    "int",
    "uint",
    "matches",
    "duration",
    "timestamp",
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
];
const OPERATORS: &[&str] = &[
    "_?_:_",
    "_&&_",
    "_||_",
    "!_",
    "_-_",
    "_+_",
    "_*_",
    "_/_",
    "_%_",
    "_==_",
    "_!=_",
    "_>=_",
    "_<=_",
    "_>_",
    "_<_",
    "-_",
    "_[_]",
    "@in",
    "@not_strictly_false",
];

/// A rule as the config file gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub name: String,
    pub allow: String,
}

/// Outcomes remembered per policy (a reload starts afresh): a warm request of a signed-in person
/// costs a look-up, not an evaluation. The key is what the outcome depends on: the token's claims
/// and the sandbox's description (each by the serial number it got when it was built, so a new
/// token or a re-fetched description is a new key, never a stale hit) and those request fields
/// that some rule names. A request whose path is longer than [`MAX_MEMO_PATH`] (when a rule reads
/// the path) is evaluated and not remembered.
pub const MEMO_ENTRIES: usize = 16_384;
pub const MAX_MEMO_PATH: usize = 256;

/// Serial numbers of [`TokenClaims`] and [`SandboxInfo`] values (never reused: 2^64).
static SERIAL: AtomicU64 = AtomicU64::new(1);

fn serial() -> u64 {
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

/// Which fields of `request` the rules read (a bare `request` reads them all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RequestUse {
    port: bool,
    method: bool,
    path: bool,
    route: bool,
}

/// A remembered outcome's key (fields no rule reads are left empty).
#[derive(Debug, PartialEq, Eq, Hash)]
struct MemoKey {
    token: u64,
    sandbox: u64,
    port: u16,
    method: Box<str>,
    path: Box<str>,
    route: Box<str>,
}

/// The same key, borrowed from the request (a look-up allocates nothing). Hashes as [`MemoKey`]
/// does: the same fields, of the same types, in the same order.
#[derive(Debug, Hash)]
struct MemoProbe<'a> {
    token: u64,
    sandbox: u64,
    port: u16,
    method: &'a str,
    path: &'a str,
    route: &'a str,
}

impl quick_cache::Equivalent<MemoKey> for MemoProbe<'_> {
    fn equivalent(&self, key: &MemoKey) -> bool {
        self.token == key.token
            && self.sandbox == key.sandbox
            && self.port == key.port
            && same(self.method, &key.method)
            && same(self.path, &key.path)
            && same(self.route, &key.route)
    }
}

/// String equality that does not call `memcmp` for the empty strings most keys hold (glibc's
/// vectorised `memcmp` cost more than the rest of a look-up on this machine: bench/NOTES.md).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

/// One compiled rule: the whole expression, and its top-level `&&` conditions (for "closest").
struct Rule {
    name: Arc<str>,
    expression: Expression,
    conditions: Vec<Expression>,
}

/// The compiled policy: every rule, and the interpreter's functions (built once).
pub struct Rules {
    rules: Vec<Rule>,
    /// The standard library's functions (built once; each evaluation shares it).
    env: Arc<cel::Env>,
    reads: RequestUse,
    memo: quick_cache::sync::Cache<MemoKey, Outcome>,
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.rules.iter().map(|r| &r.name))
            .finish()
    }
}

/// A token's verified claims as a CEL map, built once per token (the verifier remembers it with
/// the grant).
#[derive(Debug, Clone)]
pub struct TokenClaims {
    /// In the interpreter's own representation (converted once).
    native: Arc<dyn Val>,
    serial: u64,
}

impl PartialEq for TokenClaims {
    fn eq(&self, other: &Self) -> bool {
        *self.native == *other.native
    }
}

impl Eq for TokenClaims {}

/// What Daytona's `GET /sandbox/{id}` says of a sandbox, as rules see it (built once per answer).
#[derive(Debug, Clone)]
pub struct SandboxInfo {
    pub id: String,
    pub name: String,
    pub organization_id: String,
    pub state: String,
    pub labels: BTreeMap<String, String>,
    /// The same, as a CEL map in the interpreter's own representation (converted once).
    native: Arc<dyn Val>,
    serial: u64,
}

impl PartialEq for SandboxInfo {
    fn eq(&self, other: &Self) -> bool {
        *self.native == *other.native
    }
}

impl Eq for SandboxInfo {}

/// What the request adds: the port, method, path without its query, and the route's name.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub port: u16,
    pub method: &'a str,
    pub path: &'a str,
    /// `daytona_authz.route`; `""` when the route has no name.
    pub route: &'a str,
}

/// The outcome of evaluating every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// This rule allowed it (the first one that did).
    Allowed(Arc<str>),
    /// None did; the closest one, if any rule got anywhere.
    Denied(Option<Closest>),
}

/// The rule that came closest to allowing a denied request: the one that got furthest down its
/// chain of top-level `&&` conditions, i.e. with the most leading conditions true before the
/// first false one (ties: the first such rule; a rule whose first condition is false never
/// comes closest). For the log and `--explain`, never for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closest {
    pub rule: Arc<str>,
    pub true_conditions: usize,
    pub conditions: usize,
}

impl std::fmt::Display for Closest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} (its first {} of {} conditions true)",
            self.rule, self.true_conditions, self.conditions
        )
    }
}

impl Rules {
    /// Compiles and checks every rule; every problem is one line naming its rule.
    pub fn compile(specs: &[RuleSpec]) -> Result<Rules, Vec<String>> {
        let mut problems = Vec::new();
        let mut rules = Vec::new();
        if specs.len() > MAX_RULES {
            problems.push(format!(
                "[[policy]]: {} rules; at most {MAX_RULES}",
                specs.len()
            ));
        }
        let env = Arc::new(cel::Env::stdlib());
        for (index, spec) in specs.iter().enumerate() {
            let label = if spec.name.trim().is_empty() {
                format!("[[policy]] #{}", index + 1)
            } else {
                format!("[[policy]] {:?}", spec.name)
            };
            if spec.name.trim().is_empty()
                || spec.name.len() > 200
                || spec.name.chars().any(|c| {
                    // Control characters, and the invisible ones that reorder or split a line
                    // (bidi overrides, line separators): the name goes into log lines.
                    c.is_control()
                        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
                            | '\u{2060}'..='\u{206F}' | '\u{FEFF}')
                })
            {
                problems.push(format!(
                    "{label}: needs a name of 1-200 characters, none a control character"
                ));
                continue;
            }
            if specs[..index].iter().any(|other| other.name == spec.name) {
                problems.push(format!("{label}: two rules have this name"));
                continue;
            }
            match compile_one(spec, &env) {
                Ok(rule) => rules.push(rule),
                Err(why) => problems.push(format!("{label}: {why}")),
            }
        }
        if problems.is_empty() {
            let mut reads = RequestUse::default();
            for rule in &rules {
                request_use(&rule.expression, &mut reads);
            }
            Ok(Rules {
                rules,
                env,
                reads,
                memo: quick_cache::sync::Cache::new(MEMO_ENTRIES),
            })
        } else {
            Err(problems)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// The rules' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| &*r.name)
    }

    /// Evaluates the rules in order: the first true one allows. When none does, says which came
    /// closest. The same inputs give the same outcome (rules have no clock and no I/O), so it is
    /// remembered ([`MEMO_ENTRIES`]).
    pub fn evaluate(
        &self,
        token: &TokenClaims,
        sandbox: &SandboxInfo,
        request: &RequestFacts<'_>,
    ) -> Outcome {
        let reads = self.reads;
        let probe = MemoProbe {
            token: token.serial,
            sandbox: sandbox.serial,
            port: if reads.port { request.port } else { 0 },
            method: if reads.method { request.method } else { "" },
            path: if reads.path { request.path } else { "" },
            route: if reads.route { request.route } else { "" },
        };
        if let Some(outcome) = self.memo.get(&probe) {
            return outcome;
        }
        let outcome = self.evaluate_afresh(token, sandbox, request);
        if probe.path.len() <= MAX_MEMO_PATH && probe.method.len() <= MAX_MEMO_PATH {
            self.memo.insert(
                MemoKey {
                    token: probe.token,
                    sandbox: probe.sandbox,
                    port: probe.port,
                    method: probe.method.into(),
                    path: probe.path.into(),
                    route: probe.route.into(),
                },
                outcome.clone(),
            );
        }
        outcome
    }

    fn evaluate_afresh(
        &self,
        token: &TokenClaims,
        sandbox: &SandboxInfo,
        request: &RequestFacts<'_>,
    ) -> Outcome {
        let inputs = Inputs::new(token, sandbox, request);
        let mut scope = Context::with_env(Arc::clone(&self.env));
        scope.set_variable_resolver(&inputs);
        for rule in &self.rules {
            if holds(&rule.expression, &scope) {
                return Outcome::Allowed(Arc::clone(&rule.name));
            }
        }
        let mut closest: Option<Closest> = None;
        for rule in &self.rules {
            let true_conditions = rule
                .conditions
                .iter()
                .take_while(|condition| holds(condition, &scope))
                .count();
            if true_conditions > 0
                && closest
                    .as_ref()
                    .is_none_or(|best| true_conditions > best.true_conditions)
            {
                closest = Some(Closest {
                    rule: Arc::clone(&rule.name),
                    true_conditions,
                    conditions: rule.conditions.len(),
                });
            }
        }
        Outcome::Denied(closest)
    }
}

/// The three inputs as the interpreter reads them: the token's claims and the sandbox's
/// description lent from their values built once (no copy per evaluation), the request's facts
/// built for this request.
struct Inputs<'a> {
    token: &'a dyn Val,
    sandbox: &'a dyn Val,
    request: Option<Box<dyn Val>>,
}

impl<'a> Inputs<'a> {
    fn new(token: &'a TokenClaims, sandbox: &'a SandboxInfo, request: &RequestFacts<'_>) -> Self {
        Inputs {
            token: &*token.native,
            sandbox: &*sandbox.native,
            request: Box::<dyn Val>::try_from(request.value()).ok(),
        }
    }
}

impl cel::context::VariableResolver for Inputs<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        match variable {
            "token" => Some(CowVal::Borrowed(self.token)),
            "sandbox" => Some(CowVal::Borrowed(self.sandbox)),
            "request" => self.request.as_deref().map(CowVal::Borrowed),
            _ => None,
        }
    }
}

/// Whether `expression` is `true` in `scope`. An error is false, and so is a panic of the
/// interpreter (it still has a few `todo!()`s): a rule can never take a request down.
fn holds(expression: &Expression, scope: &Context<'_, '_>) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        matches!(Value::resolve(expression, scope), Ok(Value::Bool(true)))
    }))
    .unwrap_or(false)
}

fn compile_one(spec: &RuleSpec, env: &Arc<cel::Env>) -> Result<Rule, String> {
    if spec.allow.trim().is_empty() || spec.allow.len() > MAX_EXPRESSION_LEN {
        return Err(format!(
            "allow must be a CEL expression of 1-{MAX_EXPRESSION_LEN} characters"
        ));
    }
    let expression = std::panic::catch_unwind(|| cel::Program::compile(&spec.allow))
        .map_err(|_| "allow does not parse".to_owned())?
        .map_err(|errors| {
            let said: Vec<String> = errors
                .errors
                .iter()
                .map(|e| format!("at {}:{}: {}", e.pos.0, e.pos.1, e.msg))
                .collect();
            format!("allow does not parse: {}", said.join("; "))
        })?
        .expression()
        .clone();
    match check(&expression)? {
        Ty::Bool | Ty::Dyn => {}
        other => {
            return Err(format!(
                "allow must be a condition (true or false), not a {other}"
            ));
        }
    }
    // Evaluated once against a representative input: the result must be a boolean, and the only
    // errors allowed are missing data (a claim or label that input does not have).
    let (sample, token) = (SandboxInfo::sample(), TokenClaims::sample());
    let request = RequestFacts {
        port: 3000,
        method: "GET",
        path: "/",
        route: "",
    };
    let inputs = Inputs::new(&token, &sample, &request);
    let mut scope = Context::with_env(Arc::clone(env));
    scope.set_variable_resolver(&inputs);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Value::resolve(&expression, &scope)
    }))
    .map_err(|_| "allow cannot be evaluated (the interpreter failed on it)".to_owned())?;
    match result {
        Ok(Value::Bool(_)) => {}
        Ok(other) => {
            return Err(format!(
                "allow must be a condition (true or false), not a {}",
                other.type_of()
            ));
        }
        // What the rule itself gets wrong: a function that does not exist in that form, a wrong
        // number of arguments, a literal a function refuses (a regular expression, a
        // timestamp). Anything else depends on what the claims hold (a claim missing, or of
        // another type than this input's): checked when a real token arrives.
        Err(
            error @ (cel::ExecutionError::UndeclaredReference(_)
            | cel::ExecutionError::InvalidArgumentCount { .. }
            | cel::ExecutionError::NotSupportedAsMethod { .. }
            | cel::ExecutionError::MissingArgumentOrTarget
            | cel::ExecutionError::FunctionError { .. }
            | cel::ExecutionError::DuplicateKey(_)
            | cel::ExecutionError::InternalError(_)),
        ) => {
            // One line: some errors (a regular expression's) span several.
            let said = error.to_string();
            let said: Vec<&str> = said
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            return Err(format!(
                "allow fails on a representative request: {}",
                said.join(" ")
            ));
        }
        Err(_) => {}
    }
    let mut conditions = Vec::new();
    conjuncts(&expression, &mut conditions);
    Ok(Rule {
        name: spec.name.as_str().into(),
        expression,
        conditions,
    })
}

/// Marks the fields of `request` that `expression` reads: `request.port` reads the port, a bare
/// `request` (indexed, compared, or a macro's variable of that name) counts as reading every field.
fn request_use(expression: &Expression, reads: &mut RequestUse) {
    let all = RequestUse {
        port: true,
        method: true,
        path: true,
        route: true,
    };
    match &expression.expr {
        // `.request` is `request` too (a leading dot names the root scope).
        Expr::Ident(name) if name.trim_start_matches('.') == "request" => *reads = all,
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
        Expr::Select(select) => match (&select.operand.expr, select.field.as_str()) {
            (Expr::Ident(root), field) if root.trim_start_matches('.') == "request" => {
                match field {
                    "port" => reads.port = true,
                    "method" => reads.method = true,
                    "path" => reads.path = true,
                    "route" => reads.route = true,
                    _ => *reads = all,
                }
            }
            _ => request_use(&select.operand, reads),
        },
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                request_use(target, reads);
            }
            for arg in &call.args {
                request_use(arg, reads);
            }
        }
        Expr::Comprehension(c) => {
            if [&c.iter_var, &c.accu_var].contains(&&"request".to_owned())
                || c.iter_var2.as_deref() == Some("request")
            {
                *reads = all;
            }
            for e in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                request_use(e, reads);
            }
        }
        Expr::List(list) => list.elements.iter().for_each(|e| request_use(e, reads)),
        Expr::Map(map) => {
            for entry in &map.entries {
                if let EntryExpr::MapEntry(e) = &entry.expr {
                    request_use(&e.key, reads);
                    request_use(&e.value, reads);
                }
            }
        }
        Expr::Struct(_) => *reads = all,
    }
}

/// The top-level `&&` conditions of an expression (itself when it is not a conjunction).
fn conjuncts(expression: &Expression, out: &mut Vec<Expression>) {
    match &expression.expr {
        Expr::Call(call) if call.func_name == "_&&_" && call.args.len() == 2 => {
            conjuncts(&call.args[0], out);
            conjuncts(&call.args[1], out);
        }
        _ => out.push(expression.clone()),
    }
}

/// The static type of an expression, as far as it can be known before any input: the fields of
/// `sandbox` and `request` have known types, a token's claims do not (`Dyn`: whatever the issuer
/// sends).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ty {
    Dyn,
    Null,
    /// A type, as `type(x)` yields and `int`, `list`, ... name.
    Type,
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Duration,
    Timestamp,
    List(Box<Ty>),
    Map(Box<Ty>, Box<Ty>),
    Sandbox,
    Request,
}

impl std::fmt::Display for Ty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ty::Dyn => f.write_str("dyn"),
            Ty::Null => f.write_str("null"),
            Ty::Type => f.write_str("type"),
            Ty::Bool => f.write_str("bool"),
            Ty::Int => f.write_str("int"),
            Ty::Uint => f.write_str("uint"),
            Ty::Double => f.write_str("double"),
            Ty::String => f.write_str("string"),
            Ty::Bytes => f.write_str("bytes"),
            Ty::Duration => f.write_str("duration"),
            Ty::Timestamp => f.write_str("timestamp"),
            Ty::List(t) => write!(f, "list({t})"),
            Ty::Map(k, v) => write!(f, "map({k}, {v})"),
            Ty::Sandbox => f.write_str("sandbox"),
            Ty::Request => f.write_str("request"),
        }
    }
}

impl Ty {
    fn numeric(&self) -> bool {
        matches!(self, Ty::Int | Ty::Uint | Ty::Double)
    }

    /// Whether values of the two types can be equal (`==`, `in`): the same type, numbers of
    /// any kind, `null`, or a `dyn` on either side.
    fn comparable(&self, other: &Ty) -> bool {
        match (self, other) {
            (Ty::Dyn, _) | (_, Ty::Dyn) | (Ty::Null, _) | (_, Ty::Null) => true,
            (a, b) if a.numeric() && b.numeric() => true,
            (Ty::List(a), Ty::List(b)) => a.comparable(b),
            (Ty::Map(ka, va), Ty::Map(kb, vb)) => ka.comparable(kb) && va.comparable(vb),
            (a, b) => a == b,
        }
    }

    /// The type of a value that is one or the other (`?:`, a list's elements).
    fn join(self, other: Ty) -> Ty {
        if self == other { self } else { Ty::Dyn }
    }

    /// The fields of `sandbox` and `request`.
    fn field(&self, name: &str) -> Option<Ty> {
        match (self, name) {
            (Ty::Sandbox, "labels") => Some(Ty::Map(Box::new(Ty::String), Box::new(Ty::String))),
            (Ty::Sandbox, f) if SANDBOX_FIELDS.contains(&f) => Some(Ty::String),
            (Ty::Request, "port") => Some(Ty::Int),
            (Ty::Request, f) if REQUEST_FIELDS.contains(&f) => Some(Ty::String),
            _ => None,
        }
    }
}

/// The variables in scope: the three inputs, then the macros' own.
struct Scope {
    bound: Vec<(String, Ty)>,
    /// Macros (`exists`, `all`, `map`, ...) nested at this point.
    macros: usize,
}

/// The names of CEL's types, for `type(x) == list`.
const TYPE_NAMES: &[&str] = &[
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
];

/// Functions the interpreter has only as methods (`s.startsWith(p)`), and only as functions
/// (`int(x)`); `size` and `matches` are both.
const METHODS_ONLY: &[&str] = &["contains", "startsWith", "endsWith"];
const FUNCTIONS_ONLY: &[&str] = &[
    "string",
    "bytes",
    "double",
    "int",
    "uint",
    "bool",
    "dyn",
    "type",
    "duration",
    "timestamp",
];

/// Macros nested in one another at most: each multiplies the steps (three over lists of 256 are
/// 16 million per request).
const MAX_NESTED_MACROS: usize = 2;

/// Checks and types an expression without input: only `token`, `sandbox`, `request` (and the
/// macros' own variables); known functions and operators, applied to operands of types they
/// take (`request.port == "3000"` compares an int with a string: refused); known fields of
/// `sandbox` and `request`; no message literals; bounded nesting. What the token's claims hold
/// is not known before a token arrives (`dyn`): an operation on one is checked at run time,
/// where a type mismatch is an error, which is false.
fn check(expression: &Expression) -> Result<Ty, String> {
    let mut scope = Scope {
        bound: vec![
            (
                "token".into(),
                Ty::Map(Box::new(Ty::String), Box::new(Ty::Dyn)),
            ),
            ("sandbox".into(), Ty::Sandbox),
            ("request".into(), Ty::Request),
        ],
        macros: 0,
    };
    typed(expression, &mut scope, 0)
}

/// An operator as written (`_==_` is `==`, `@in` is `in`).
fn written(operator: &str) -> &str {
    match operator {
        "_?_:_" => "? :",
        "_[_]" => "[ ]",
        other => other.trim_matches(|c| c == '_' || c == '@'),
    }
}

fn typed(expression: &Expression, scope: &mut Scope, depth: usize) -> Result<Ty, String> {
    if depth > MAX_DEPTH {
        return Err(format!("allow nests deeper than {MAX_DEPTH} levels"));
    }
    let next = depth + 1;
    Ok(match &expression.expr {
        Expr::Ident(name) => match scope
            .bound
            .iter()
            .rev()
            .find(|(n, _)| n == name.trim_start_matches('.'))
        {
            Some((_, ty)) => ty.clone(),
            None if TYPE_NAMES.contains(&name.as_str()) => Ty::Type,
            None => {
                return Err(format!(
                    "allow names {name:?}; the inputs are token, sandbox and request"
                ));
            }
        },
        Expr::Select(select) => {
            let operand = typed(&select.operand, scope, next)?;
            let field = select.field.as_str();
            let ty = match &operand {
                Ty::Sandbox | Ty::Request => operand.field(field).ok_or_else(|| {
                    let (root, fields) = if operand == Ty::Sandbox {
                        ("sandbox", SANDBOX_FIELDS)
                    } else {
                        ("request", REQUEST_FIELDS)
                    };
                    format!(
                        "allow names {root}.{field}; {root} has {}",
                        fields.join(", ")
                    )
                })?,
                Ty::Map(key, value) if key.comparable(&Ty::String) => (**value).clone(),
                Ty::Dyn => Ty::Dyn,
                other => {
                    return Err(format!(
                        "allow reads .{field} of a {other}, which has no fields"
                    ));
                }
            };
            if select.test { Ty::Bool } else { ty }
        }
        Expr::Call(call) => call_type(call, scope, next)?,
        Expr::Comprehension(c) => {
            if scope.macros >= MAX_NESTED_MACROS {
                return Err(format!(
                    "allow nests more than {MAX_NESTED_MACROS} macros (exists, all, map, ...)"
                ));
            }
            let range = typed(&c.iter_range, scope, next)?;
            let (first, second) = match &range {
                Ty::List(t) => (Ty::Int, (**t).clone()),
                Ty::Map(k, v) => ((**k).clone(), (**v).clone()),
                Ty::Dyn => (Ty::Dyn, Ty::Dyn),
                other => {
                    return Err(format!(
                        "allow applies a macro (exists, all, map, ...) to a {other}; it takes a list or a map"
                    ));
                }
            };
            // One variable: a list's elements or a map's keys; two: index and element, or key
            // and value.
            let vars = match &c.iter_var2 {
                None if matches!(range, Ty::List(_)) => vec![(c.iter_var.clone(), second)],
                None => vec![(c.iter_var.clone(), first)],
                Some(v2) => vec![(c.iter_var.clone(), first), (v2.clone(), second)],
            };
            let accu = typed(&c.accu_init, scope, next)?;
            let before = scope.bound.len();
            scope.bound.extend(vars);
            scope.bound.push((c.accu_var.clone(), accu));
            scope.macros += 1;
            let result = [&c.loop_cond, &c.loop_step]
                .into_iter()
                .try_for_each(|e| typed(e, scope, next).map(drop))
                .and_then(|()| typed(&c.result, scope, next));
            scope.macros -= 1;
            scope.bound.truncate(before);
            result?
        }
        Expr::List(list) => {
            let mut element: Option<Ty> = None;
            for e in &list.elements {
                let ty = typed(e, scope, next)?;
                element = Some(match element {
                    None => ty,
                    Some(before) => before.join(ty),
                });
            }
            Ty::List(Box::new(element.unwrap_or(Ty::Dyn)))
        }
        Expr::Map(map) => {
            let (mut key, mut value): (Option<Ty>, Option<Ty>) = (None, None);
            for entry in &map.entries {
                match &entry.expr {
                    EntryExpr::MapEntry(e) => {
                        let k = typed(&e.key, scope, next)?;
                        let v = typed(&e.value, scope, next)?;
                        key = Some(key.map_or(k.clone(), |before| before.join(k)));
                        value = Some(value.map_or(v.clone(), |before| before.join(v)));
                    }
                    EntryExpr::StructField(_) => return Err("allow has a message literal".into()),
                }
            }
            Ty::Map(
                Box::new(key.unwrap_or(Ty::Dyn)),
                Box::new(value.unwrap_or(Ty::Dyn)),
            )
        }
        Expr::Literal(literal) => {
            use cel::common::ast::LiteralValue as L;
            match literal {
                L::Boolean(_) => Ty::Bool,
                L::Bytes(_) => Ty::Bytes,
                L::Double(_) => Ty::Double,
                L::Int(_) => Ty::Int,
                L::Null => Ty::Null,
                L::String(_) => Ty::String,
                L::UInt(_) => Ty::Uint,
            }
        }
        Expr::Struct(_) => return Err("allow has a message literal (not supported)".into()),
        Expr::Unspecified => return Err("allow does not parse".into()),
    })
}

/// The type of an operator's or a function's result, its operands checked.
fn call_type(
    call: &cel::common::ast::CallExpr,
    scope: &mut Scope,
    next: usize,
) -> Result<Ty, String> {
    let name = call.func_name.as_str();
    let operator = !name.starts_with(|c: char| c.is_ascii_alphabetic());
    if operator && !OPERATORS.contains(&name) {
        return Err(format!(
            "allow uses an operator this interpreter lacks ({name})"
        ));
    }
    if !operator && !FUNCTIONS.contains(&name) {
        return Err(format!("allow calls an unknown function {name}()"));
    }
    if !operator {
        let method = call.target.is_some();
        if method && FUNCTIONS_ONLY.contains(&name) {
            return Err(format!(
                "allow calls {name}() as a method; write {name}(x), not x.{name}()"
            ));
        }
        if !method && (METHODS_ONLY.contains(&name) || name.starts_with("get")) {
            return Err(format!(
                "allow calls {name}() as a function; write x.{name}(...), not {name}(x, ...)"
            ));
        }
    }
    let target = call
        .target
        .as_ref()
        .map(|t| typed(t, scope, next))
        .transpose()?;
    let args = call
        .args
        .iter()
        .map(|a| typed(a, scope, next))
        .collect::<Result<Vec<_>, _>>()?;
    let mismatch = || {
        let mut types: Vec<String> = target.iter().map(ToString::to_string).collect();
        types.extend(args.iter().map(ToString::to_string));
        if operator {
            format!(
                "allow applies {} to {}, which it does not take",
                written(name),
                types.join(" and ")
            )
        } else {
            format!(
                "allow calls {name}() on {}, which it does not take",
                types.join(", ")
            )
        }
    };
    let is = |ty: &Ty, want: &Ty| ty == want || *ty == Ty::Dyn;
    // The receiver and arguments together: `s.startsWith(p)` and `startsWith(s, p)` alike.
    let all: Vec<&Ty> = target.iter().chain(args.iter()).collect();
    let ty = match (name, all.as_slice()) {
        ("_&&_" | "_||_", [a, b]) if is(a, &Ty::Bool) && is(b, &Ty::Bool) => Ty::Bool,
        ("!_" | "@not_strictly_false", [a]) if is(a, &Ty::Bool) => Ty::Bool,
        ("_?_:_", [c, a, b]) if is(c, &Ty::Bool) => (*a).clone().join((*b).clone()),
        ("_==_" | "_!=_", [a, b]) if a.comparable(b) => Ty::Bool,
        ("_<_" | "_<=_" | "_>_" | "_>=_", [a, b])
            if (a.numeric() && b.numeric())
                || (a == b
                    && matches!(
                        a,
                        Ty::String | Ty::Bytes | Ty::Bool | Ty::Duration | Ty::Timestamp
                    ))
                || **a == Ty::Dyn
                || **b == Ty::Dyn =>
        {
            Ty::Bool
        }
        ("@in", [x, container]) => match container {
            Ty::List(element) if x.comparable(element) => Ty::Bool,
            Ty::Map(key, _) if x.comparable(key) => Ty::Bool,
            Ty::Sandbox | Ty::Request if x.comparable(&Ty::String) => Ty::Bool,
            Ty::Dyn => Ty::Bool,
            _ => return Err(mismatch()),
        },
        ("_[_]", [container, index]) => match container {
            Ty::List(element) if matches!(index, Ty::Int | Ty::Uint | Ty::Dyn) => {
                (**element).clone()
            }
            Ty::Map(key, value) if index.comparable(key) => (**value).clone(),
            Ty::Sandbox | Ty::Request if index.comparable(&Ty::String) => Ty::Dyn,
            // A claim: a list by position or a map by key, known when a token arrives.
            Ty::Dyn if matches!(index, Ty::Int | Ty::Uint | Ty::String | Ty::Bool | Ty::Dyn) => {
                Ty::Dyn
            }
            _ => return Err(mismatch()),
        },
        ("_+_", [a, b]) => match (a, b) {
            (Ty::Dyn, _) | (_, Ty::Dyn) => Ty::Dyn,
            (Ty::List(x), Ty::List(y)) => Ty::List(Box::new((**x).clone().join((**y).clone()))),
            (Ty::Timestamp, Ty::Duration) | (Ty::Duration, Ty::Timestamp) => Ty::Timestamp,
            (a, b)
                if a == b
                    && matches!(
                        a,
                        Ty::Int | Ty::Uint | Ty::Double | Ty::String | Ty::Bytes | Ty::Duration
                    ) =>
            {
                (*a).clone()
            }
            _ => return Err(mismatch()),
        },
        ("_-_", [a, b]) => match (a, b) {
            (Ty::Dyn, _) | (_, Ty::Dyn) => Ty::Dyn,
            (Ty::Timestamp, Ty::Timestamp) => Ty::Duration,
            (Ty::Timestamp, Ty::Duration) => Ty::Timestamp,
            (a, b) if a == b && (a.numeric() || **a == Ty::Duration) => (*a).clone(),
            _ => return Err(mismatch()),
        },
        ("_*_" | "_/_" | "_%_", [a, b]) => match (a, b) {
            (Ty::Dyn, _) | (_, Ty::Dyn) => Ty::Dyn,
            (Ty::Double, Ty::Double) if name == "_%_" => return Err(mismatch()),
            (a, b) if a == b && a.numeric() => (*a).clone(),
            _ => return Err(mismatch()),
        },
        ("-_", [a]) if matches!(a, Ty::Int | Ty::Double | Ty::Dyn) => (*a).clone(),
        ("size", [Ty::String | Ty::Bytes | Ty::List(_) | Ty::Map(..) | Ty::Dyn]) => Ty::Int,
        ("contains" | "startsWith" | "endsWith" | "matches", [a, b])
            if is(a, &Ty::String) && is(b, &Ty::String) =>
        {
            Ty::Bool
        }
        ("string", [_]) => Ty::String,
        ("type", [_]) => Ty::Type,
        ("dyn", [_]) => Ty::Dyn,
        ("bool", [a]) if is(a, &Ty::String) || **a == Ty::Bool => Ty::Bool,
        ("bytes", [a]) if is(a, &Ty::String) || **a == Ty::Bytes => Ty::Bytes,
        ("double", [a]) if a.numeric() || is(a, &Ty::String) => Ty::Double,
        ("int" | "uint", [a]) if a.numeric() || is(a, &Ty::String) || **a == Ty::Timestamp => {
            if name == "int" {
                Ty::Int
            } else {
                Ty::Uint
            }
        }
        ("duration", [a]) if is(a, &Ty::String) => Ty::Duration,
        ("timestamp", [a]) if is(a, &Ty::String) || **a == Ty::Int => Ty::Timestamp,
        (getter, [a, rest @ ..])
            if getter.starts_with("get")
                && rest.len() <= 1
                && rest.iter().all(|tz| is(tz, &Ty::String))
                && matches!(a, Ty::Timestamp | Ty::Duration | Ty::Dyn) =>
        {
            Ty::Int
        }
        _ => return Err(mismatch()),
    };
    Ok(ty)
}

impl TokenClaims {
    /// Verified (or introspected) claims as a CEL map, or `None` when they are beyond the bounds
    /// (too many values, a list or string too long, nested too deep).
    pub fn new(claims: &serde_json::Map<String, serde_json::Value>) -> Option<TokenClaims> {
        let mut budget = MAX_CLAIM_VALUES;
        let value = object(claims, &mut budget, 0)?;
        Some(TokenClaims {
            native: Arc::from(Box::<dyn Val>::try_from(value).ok()?),
            serial: serial(),
        })
    }

    fn sample() -> TokenClaims {
        let claims = serde_json::json!({
            "sub": "someone", "email": "someone@example.com", "groups": ["example-group"],
            "roles": ["example-role"], "exp": 4_102_444_800u64, "iat": 1_700_000_000u64,
            "iss": "https://issuer.example.com", "aud": "daytona-authz",
        });
        TokenClaims::new(claims.as_object().expect("an object")).expect("within bounds")
    }
}

fn object(
    claims: &serde_json::Map<String, serde_json::Value>,
    budget: &mut usize,
    depth: usize,
) -> Option<Value> {
    let mut map = HashMap::with_capacity(claims.len());
    for (name, value) in claims {
        if name.len() > MAX_CLAIM_STRING {
            return None;
        }
        map.insert(Key::from(name.as_str()), json(value, budget, depth + 1)?);
    }
    Some(Value::Map(Map { map: Arc::new(map) }))
}

fn json(value: &serde_json::Value, budget: &mut usize, depth: usize) -> Option<Value> {
    *budget = budget.checked_sub(1)?;
    if depth > MAX_CLAIM_DEPTH {
        return None;
    }
    Some(match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Int(i),
            (None, Some(u), _) => Value::UInt(u),
            (None, None, Some(f)) => Value::Float(f),
            _ => return None,
        },
        serde_json::Value::String(s) if s.len() <= MAX_CLAIM_STRING => {
            Value::String(Arc::new(s.clone()))
        }
        serde_json::Value::String(_) => return None,
        serde_json::Value::Array(items) if items.len() <= MAX_CLAIM_LIST => Value::List(Arc::new(
            items
                .iter()
                .map(|item| json(item, budget, depth + 1))
                .collect::<Option<Vec<_>>>()?,
        )),
        serde_json::Value::Array(_) => return None,
        serde_json::Value::Object(members) if members.len() <= MAX_CLAIM_LIST => {
            object(members, budget, depth)?
        }
        serde_json::Value::Object(_) => return None,
    })
}

impl SandboxInfo {
    /// A sandbox's description, or why it cannot be used (labels beyond the bounds).
    pub fn new(
        id: String,
        name: String,
        organization_id: String,
        state: String,
        labels: BTreeMap<String, String>,
    ) -> Result<SandboxInfo, String> {
        if labels.len() > MAX_LABELS {
            return Err(format!("more than {MAX_LABELS} labels"));
        }
        if labels
            .iter()
            .any(|(k, v)| k.len() > MAX_LABEL_KEY || v.len() > MAX_LABEL_VALUE)
        {
            return Err("a label key or value is too long".into());
        }
        if [&id, &name, &organization_id, &state]
            .iter()
            .any(|s| s.len() > MAX_LABEL_VALUE)
        {
            return Err("a field is too long".into());
        }
        let text = |s: &str| Value::String(Arc::new(s.to_owned()));
        let label_map: HashMap<Key, Value> = labels
            .iter()
            .map(|(k, v)| (Key::from(k.as_str()), text(v)))
            .collect();
        let mut map: HashMap<Key, Value> = HashMap::new();
        map.insert("id".into(), text(&id));
        map.insert("name".into(), text(&name));
        map.insert("organizationId".into(), text(&organization_id));
        map.insert("organization".into(), text(&organization_id));
        map.insert("state".into(), text(&state));
        map.insert(
            "labels".into(),
            Value::Map(Map {
                map: Arc::new(label_map),
            }),
        );
        Ok(SandboxInfo {
            id,
            name,
            organization_id,
            state,
            labels,
            native: Arc::from(
                Box::<dyn Val>::try_from(Value::Map(Map { map: Arc::new(map) }))
                    .map_err(|e| format!("not a value the rules can read: {e}"))?,
            ),
            serial: serial(),
        })
    }

    fn sample() -> SandboxInfo {
        SandboxInfo::new(
            "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93".into(),
            "example".into(),
            "example-organization".into(),
            "started".into(),
            BTreeMap::from([("team".to_owned(), "example-team".to_owned())]),
        )
        .expect("within bounds")
    }
}

/// The keys of `request`, made once (a key is a shared string).
static REQUEST_KEYS: std::sync::LazyLock<[Key; 4]> = std::sync::LazyLock::new(|| {
    [
        "port".into(),
        "method".into(),
        "path".into(),
        "route".into(),
    ]
});

impl RequestFacts<'_> {
    fn value(&self) -> Value {
        let text = |s: &str| Value::String(Arc::new(s.to_owned()));
        let [port, method, path, route] = &*REQUEST_KEYS;
        let mut map: HashMap<Key, Value> = HashMap::with_capacity(4);
        map.insert(port.clone(), Value::Int(i64::from(self.port)));
        map.insert(method.clone(), text(self.method));
        map.insert(path.clone(), text(self.path));
        map.insert(route.clone(), text(self.route));
        Value::Map(Map { map: Arc::new(map) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEAM: &str = r#"token.groups.exists(g, g == sandbox.labels["team"])"#;
    const ADMINS: &str = r#""platform-admins" in token.groups && request.port != 22222"#;

    fn rules(specs: &[(&str, &str)]) -> Result<Rules, Vec<String>> {
        Rules::compile(
            &specs
                .iter()
                .map(|(name, allow)| RuleSpec {
                    name: (*name).into(),
                    allow: (*allow).into(),
                })
                .collect::<Vec<_>>(),
        )
    }

    fn example() -> Rules {
        rules(&[("team", TEAM), ("admins", ADMINS)]).unwrap()
    }

    fn token(claims: serde_json::Value) -> TokenClaims {
        TokenClaims::new(claims.as_object().unwrap()).unwrap()
    }

    fn sandbox(team: Option<&str>) -> SandboxInfo {
        let labels = team
            .map(|t| BTreeMap::from([("team".to_owned(), t.to_owned())]))
            .unwrap_or_default();
        SandboxInfo::new(
            "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93".into(),
            "web".into(),
            "org-1".into(),
            "started".into(),
            labels,
        )
        .unwrap()
    }

    fn on(port: u16) -> RequestFacts<'static> {
        RequestFacts {
            port,
            method: "GET",
            path: "/app",
            route: "preview",
        }
    }

    fn allowed(outcome: Outcome) -> String {
        match outcome {
            Outcome::Allowed(rule) => rule.to_string(),
            other => panic!("not allowed: {other:?}"),
        }
    }

    #[test]
    fn the_issue_examples_decide_by_team_and_admin_group() {
        let rules = example();
        let alice = token(serde_json::json!({"sub": "alice", "groups": ["team-a", "staff"]}));
        assert_eq!(
            allowed(rules.evaluate(&alice, &sandbox(Some("team-a")), &on(3000))),
            "team"
        );
        assert_eq!(
            rules.evaluate(&alice, &sandbox(Some("team-b")), &on(3000)),
            Outcome::Denied(None)
        );
        assert_eq!(
            rules.evaluate(&alice, &sandbox(None), &on(3000)),
            Outcome::Denied(None),
            "no team label: nobody's team"
        );
        let admin = token(serde_json::json!({"groups": ["platform-admins"]}));
        for team in [Some("team-a"), Some("team-b"), None] {
            assert_eq!(
                allowed(rules.evaluate(&admin, &sandbox(team), &on(3000))),
                "admins"
            );
        }
        assert_eq!(
            rules.evaluate(&admin, &sandbox(Some("team-b")), &on(22222)),
            Outcome::Denied(Some(Closest {
                rule: "admins".into(),
                true_conditions: 1,
                conditions: 2
            }))
        );
        // No groups claim at all: every rule errors, which is false.
        let nobody = token(serde_json::json!({"sub": "x"}));
        assert_eq!(
            rules.evaluate(&nobody, &sandbox(Some("team-a")), &on(3000)),
            Outcome::Denied(None)
        );
    }

    #[test]
    fn every_input_is_there() {
        let rules = rules(&[(
            "all",
            r#"sandbox.id == "0b8f2a4e-6c1d-4f3a-9e2b-7d5c8a1f0e93" && sandbox.name == "web"
               && sandbox.organizationId == "org-1" && sandbox.organization == "org-1"
               && sandbox.state == "started" && request.method == "GET" && request.path == "/app"
               && request.route == "preview" && request.port == 3000 && token.sub == "x"
               && token.n == 7 && token.email.endsWith("@example.com")"#,
        )])
        .unwrap();
        let t = token(serde_json::json!({"sub": "x", "n": 7, "email": "x@example.com"}));
        assert_eq!(
            allowed(rules.evaluate(&t, &sandbox(None), &on(3000))),
            "all"
        );
        assert_eq!(
            rules.evaluate(&t, &sandbox(None), &on(3001)),
            Outcome::Denied(Some(Closest {
                rule: "all".into(),
                true_conditions: 8,
                conditions: 12
            }))
        );
    }

    #[test]
    fn a_claim_of_an_unexpected_shape_is_false_not_a_crash() {
        let rules = example();
        // A single group as a string, as some providers send it: `exists` over a string.
        let odd = token(serde_json::json!({"groups": "team-a"}));
        assert_eq!(
            rules.evaluate(&odd, &sandbox(Some("team-a")), &on(3000)),
            Outcome::Denied(None)
        );
    }

    /// What the specification says, and `cel-interpreter` 0.10 did not do: each of these opened
    /// the door there.
    #[test]
    fn operators_follow_the_cel_specification_not_truthiness() {
        let box_a = sandbox(None);
        let deny = |allow: &str, claims: serde_json::Value| {
            let rules = rules(&[("r", allow)]).unwrap();
            assert!(
                matches!(
                    rules.evaluate(&token(claims.clone()), &box_a, &on(3000)),
                    Outcome::Denied(_)
                ),
                "{allow} with {claims} must not allow"
            );
        };
        // `in` over a string is no substring test: one group sent as a string.
        deny(
            ADMINS,
            serde_json::json!({"groups": "platform-admins-readonly"}),
        );
        deny(
            r#""admins" in token.groups"#,
            serde_json::json!({"groups": "non-admins"}),
        );
        // A missing key is an error, not null: two missing values are not equal.
        deny(
            r#"token["https://acme.dev/team"] == sandbox.labels["team"]"#,
            serde_json::json!({"sub": "x"}),
        );
        // `&&`, `||`, `!` and `?:` take booleans only.
        deny(
            r#""staff" in token.groups && token.email_verified"#,
            serde_json::json!({"groups": ["staff"], "email_verified": "false"}),
        );
        deny("token.admin || false", serde_json::json!({"admin": "yes"}));
        deny("!token.blocked", serde_json::json!({"sub": "x"}));
        deny("!token.blocked", serde_json::json!({"blocked": "no"}));
        deny("token.vip ? true : false", serde_json::json!({"vip": 1}));
        // A macro over a string is an error (0.10 panicked).
        deny(TEAM, serde_json::json!({"groups": "team-a"}));
        // And the same rules still allow what they should.
        let rules = rules(&[("r", r#"!token.blocked && "staff" in token.groups"#)]).unwrap();
        let ok = token(serde_json::json!({"blocked": false, "groups": ["staff"]}));
        assert_eq!(allowed(rules.evaluate(&ok, &box_a, &on(3000))), "r");
    }

    #[test]
    fn broken_rules_are_refused_naming_the_rule() {
        for (allow, says) in [
            ("token.groups.exists(g, ", "does not parse"),
            ("request.port", "must be a condition"),
            ("sandbox.lables.team == 'a'", "sandbox.lables"),
            ("request.host == 'x'", "request.host"),
            ("user.admin", "\"user\""),
            ("lower(token.sub) == 'a'", "unknown function lower()"),
            ("request.port > 'a'", "applies > to int and string"),
            (r#"request.port == "3000""#, "applies == to int and string"),
            (
                r#"sandbox.labels.team == 1"#,
                "applies == to string and int",
            ),
            (
                r#""a" in request.method"#,
                "applies in to string and string",
            ),
            ("size(request.port) > 0", "calls size() on int"),
            (
                "request.method.startsWith(1)",
                "calls startsWith() on string, int",
            ),
            ("request.path + 1 == 'x'", "applies + to string and int"),
            ("!request.method", "applies ! to string"),
            ("request.method && true", "applies && to string and bool"),
            ("request.port.exists(p, p == 1)", "applies a macro"),
            ("request.port.x == 1", "of a int, which has no fields"),
            ("sandbox.labels", "not a map(string, string)"),
            (r#"startsWith(token.dept, "eng")"#, "as a function"),
            ("token.iat.timestamp() > 0", "as a method"),
            (r#"request.path.matches("[")"#, "representative"),
            (
                "token.a.exists(x, token.b.exists(y, token.c.exists(z, x == y && y == z)))",
                "more than 2 macros",
            ),
            ("", "1-4096"),
        ] {
            let problems = rules(&[("fine", "true"), ("the broken one", allow)]).unwrap_err();
            assert_eq!(problems.len(), 1, "{allow}: {problems:?}");
            assert!(
                problems[0].starts_with("[[policy]] \"the broken one\": "),
                "{problems:?}"
            );
            assert!(problems[0].contains(says), "{allow}: {problems:?}");
            assert!(!problems[0].contains('\n'), "{problems:?}");
        }
        let twice = rules(&[("a", "true"), ("a", "false")]).unwrap_err();
        assert!(twice[0].contains("two rules"), "{twice:?}");
        assert!(rules(&[("", "true")]).unwrap_err()[0].contains("#1"));
        assert!(rules(&[("a\nb", "true")]).unwrap_err()[0].contains("control character"));
        assert!(rules(&[("a\u{202E}b", "true")]).unwrap_err()[0].contains("control character"));
        // Missing data is fine at start-up: the claim may be there at run time.
        rules(&[("roles", r#""admin" in token.roles_claim_not_in_sample"#)]).unwrap();
        // What a claim holds is not known before a token: checked at run time.
        rules(&[
            (
                "claims",
                r#"token.level > 3 && token.email.endsWith("@example.com") && token.admin"#,
            ),
            (
                "two macros",
                "token.groups.exists(g, token.teams.all(t, t != g))",
            ),
            (
                "map",
                r#"token.groups.map(g, g + "-x").exists(g, g == sandbox.labels["team"])"#,
            ),
            (
                "filter",
                r#"size(token.groups.filter(g, g.startsWith("team-"))) > 0"#,
            ),
            ("exists_one", r#"token.groups.exists_one(g, g == "staff")"#),
            ("has", "has(token.groups) && has(sandbox.labels.team)"),
            (
                "ternary",
                r#"request.port == 3000 ? request.method == "GET" : false"#,
            ),
            (
                "numbers",
                "request.port >= 3000u && request.port < 4000.0 && -request.port < 0",
            ),
            (
                "index",
                r#"sandbox.labels["team"] in ["a", "b"] && request["path"] != "/x""#,
            ),
            (
                "time",
                r#"timestamp(token.iat) < timestamp("2030-01-01T00:00:00Z") + duration("1h")"#,
            ),
            ("first group", r#"token.groups[0] == "staff""#),
            ("aud list", r#""previews" in token.aud"#),
            (
                "type guard",
                r#"type(token.groups) == list ? "staff" in token.groups : token.groups == "staff""#,
            ),
            (
                "conversions",
                r#"bool("true") && dyn(token.level) > 2 && type(request.port) == int"#,
            ),
        ])
        .unwrap();
    }

    #[test]
    fn a_remembered_outcome_is_never_reused_for_other_inputs() {
        let rules = rules(&[
            (
                "public",
                r#"request.path.startsWith("/public") && "staff" in token.groups"#,
            ),
            ("team", TEAM),
        ])
        .unwrap();
        let alice = token(serde_json::json!({"groups": ["staff"]}));
        let at = |path: &'static str| RequestFacts {
            port: 3000,
            method: "GET",
            path,
            route: "",
        };
        let box_a = sandbox(None);
        // Twice each way, so the second answer of each comes from memory.
        for _ in 0..2 {
            assert_eq!(
                allowed(rules.evaluate(&alice, &box_a, &at("/public/a.css"))),
                "public"
            );
            assert!(matches!(
                rules.evaluate(&alice, &box_a, &at("/private")),
                Outcome::Denied(_)
            ));
        }
        // Daytona now says the sandbox is team-a's: a new description, a new outcome.
        let team_a = token(serde_json::json!({"groups": ["team-a"]}));
        assert!(matches!(
            rules.evaluate(&team_a, &box_a, &at("/private")),
            Outcome::Denied(_)
        ));
        let relabelled = sandbox(Some("team-a"));
        assert_eq!(
            allowed(rules.evaluate(&team_a, &relabelled, &at("/private"))),
            "team"
        );
        // The same claims in a new token are a new key too (and decide the same).
        let again = token(serde_json::json!({"groups": ["team-a"]}));
        assert_eq!(
            allowed(rules.evaluate(&again, &relabelled, &at("/private"))),
            "team"
        );
    }

    #[test]
    fn the_memory_key_holds_the_request_fields_some_rule_reads() {
        let reads = |allow: &str| rules(&[("r", allow)]).unwrap().reads;
        assert_eq!(
            reads(r#".request.path == "/""#),
            RequestUse {
                path: true,
                ..RequestUse::default()
            }
        );
        assert_eq!(reads(TEAM), RequestUse::default());
        assert_eq!(
            reads(ADMINS),
            RequestUse {
                port: true,
                ..RequestUse::default()
            }
        );
        let all = RequestUse {
            port: true,
            method: true,
            path: true,
            route: true,
        };
        assert_eq!(reads(r#"request["path"] == "/""#), all);
        assert_eq!(reads(r#"[request].exists(r, r.method == "GET")"#), all);
        assert_eq!(
            reads(r#"request.method == "GET" && request.route == "r""#),
            RequestUse {
                method: true,
                route: true,
                ..RequestUse::default()
            }
        );
        // A probe hashes as the key it stands for.
        let hash = |v: &dyn Fn(&mut std::collections::hash_map::DefaultHasher)| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            v(&mut h);
            std::hash::Hasher::finish(&h)
        };
        let key = MemoKey {
            token: 1,
            sandbox: 2,
            port: 3,
            method: "GET".into(),
            path: "/p".into(),
            route: "".into(),
        };
        let probe = MemoProbe {
            token: 1,
            sandbox: 2,
            port: 3,
            method: "GET",
            path: "/p",
            route: "",
        };
        assert_eq!(
            hash(&|h| std::hash::Hash::hash(&key, h)),
            hash(&|h| std::hash::Hash::hash(&probe, h))
        );
        assert!(quick_cache::Equivalent::equivalent(&probe, &key));
    }

    #[test]
    fn claims_beyond_the_bounds_are_refused() {
        let many: Vec<String> = (0..=MAX_CLAIM_LIST).map(|i| format!("g{i}")).collect();
        assert!(
            TokenClaims::new(serde_json::json!({"groups": many}).as_object().unwrap()).is_none()
        );
        let long = "x".repeat(MAX_CLAIM_STRING + 1);
        assert!(TokenClaims::new(serde_json::json!({"sub": long}).as_object().unwrap()).is_none());
        let deep = serde_json::json!({"a": {"b": {"c": {"d": {"e": 1}}}}});
        assert!(TokenClaims::new(deep.as_object().unwrap()).is_none());
        let labels: BTreeMap<String, String> = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        assert!(SandboxInfo::new("i".into(), "n".into(), "o".into(), "s".into(), labels).is_err());
    }
}
