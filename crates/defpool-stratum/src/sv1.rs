//! Stratum V1: newline-delimited JSON-RPC as miners and pools speak it.
//!
//! One codec serves both sides: the proxy parses miners' requests and writes pool messages
//! downstream, and parses pools' messages and writes miners' requests upstream. Parsing is pure
//! ([`parse_line`], [`MinerRequest::parse`], [`PoolMessage::parse`]) so it can be fuzzed; the
//! only I/O is [`LineReader`], which bounds every line.
//!
//! Byte orders on the wire follow the de-facto convention (cgminer, every public pool):
//! `prevhash` is the header's previous-hash bytes with each 32-bit word reversed; version, nbits,
//! ntime and nonce are big-endian hex of the header integers; extranonces and coinbase parts are
//! raw bytes in hex.

use serde_json::{json, Value};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, ReadBuf};

/// Lines longer than this are a protocol violation unless a port configures otherwise.
pub const DEFAULT_MAX_LINE: usize = 16 * 1024;

/// Why a line could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum Sv1Error {
    #[error("line exceeds the limit of {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("line is not UTF-8 JSON: {0}")]
    Json(String),
    #[error("message is neither a request nor a response")]
    NotJsonRpc,
    #[error("{method}: {reason}")]
    BadParams { method: String, reason: String },
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

impl Sv1Error {
    /// Violations close the connection; bad parameters only earn an error reply.
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            Sv1Error::LineTooLong { .. } | Sv1Error::Json(_) | Sv1Error::NotJsonRpc
        )
    }
}

fn bad(method: &str, reason: impl Into<String>) -> Sv1Error {
    Sv1Error::BadParams {
        method: method.to_string(),
        reason: reason.into(),
    }
}

/// A JSON-RPC request or notification (`id` null).
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub id: Value,
    pub method: String,
    pub params: Vec<Value>,
}

/// A JSON-RPC response.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub id: Value,
    pub result: Value,
    pub error: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Incoming {
    Request(Request),
    Response(Response),
}

/// Parses one line (without its newline).
///
/// The envelope is read field by field instead of into a `Value` map: this runs for every share,
/// and the map's nodes and key strings were a good part of its cost. The rules are a map's: an
/// absent `id` is null, the last of duplicate keys wins, unknown keys are ignored.
pub fn parse_line(line: &[u8]) -> Result<Incoming, Sv1Error> {
    let envelope: Envelope =
        serde_json::from_slice(line).map_err(|e| Sv1Error::Json(e.to_string()))?;
    let Envelope::Object(fields) = envelope else {
        return Err(Sv1Error::NotJsonRpc);
    };
    let id = fields.id.unwrap_or(Value::Null);
    if let Some(method) = fields.method {
        let Value::String(method) = method else {
            return Err(Sv1Error::NotJsonRpc);
        };
        let params = match fields.params {
            Some(Value::Array(params)) => params,
            None | Some(Value::Null) => Vec::new(),
            Some(other) => vec![other],
        };
        return Ok(Incoming::Request(Request { id, method, params }));
    }
    if fields.result.is_some() || fields.error.is_some() {
        return Ok(Incoming::Response(Response {
            id,
            result: fields.result.unwrap_or(Value::Null),
            error: fields.error.unwrap_or(Value::Null),
        }));
    }
    Err(Sv1Error::NotJsonRpc)
}

/// A line's top-level JSON value: the JSON-RPC members of an object (present, possibly null),
/// or something that is not an object.
enum Envelope {
    Object(EnvelopeFields),
    NotObject,
}

#[derive(Default)]
struct EnvelopeFields {
    id: Option<Value>,
    method: Option<Value>,
    params: Option<Value>,
    result: Option<Value>,
    error: Option<Value>,
}

impl<'de> serde::Deserialize<'de> for Envelope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EnvelopeVisitor)
    }
}

/// A member name: one of the five, or another (skipped).
enum Member {
    Id,
    Method,
    Params,
    Result,
    Error,
    Other,
}

impl<'de> serde::Deserialize<'de> for Member {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Member;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Member, E> {
                Ok(match name {
                    "id" => Member::Id,
                    "method" => Member::Method,
                    "params" => Member::Params,
                    "result" => Member::Result,
                    "error" => Member::Error,
                    _ => Member::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

struct EnvelopeVisitor;

impl<'de> serde::de::Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        let mut fields = EnvelopeFields::default();
        while let Some(member) = map.next_key::<Member>()? {
            let slot = match member {
                Member::Id => &mut fields.id,
                Member::Method => &mut fields.method,
                Member::Params => &mut fields.params,
                Member::Result => &mut fields.result,
                Member::Error => &mut fields.error,
                Member::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value::<Value>()?);
        }
        Ok(Envelope::Object(fields))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Envelope, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Envelope::NotObject)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Envelope, E> {
        Ok(Envelope::NotObject)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Envelope, E> {
        Ok(Envelope::NotObject)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Envelope, E> {
        Ok(Envelope::NotObject)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Envelope, E> {
        Ok(Envelope::NotObject)
    }

    fn visit_str<E>(self, _: &str) -> Result<Envelope, E> {
        Ok(Envelope::NotObject)
    }

    fn visit_unit<E>(self) -> Result<Envelope, E> {
        Ok(Envelope::NotObject)
    }
}

/// Line buffer capacity a [`LineReader`] keeps between lines.
const LINE_KEPT: usize = 1024;

/// Reads newline-terminated lines, refusing any longer than `limit`.
///
/// Cancel-safe: a partly read line survives a cancelled `next_line` (as in `select!`).
pub struct LineReader<R> {
    inner: R,
    limit: usize,
    line: Vec<u8>,
    returned: bool,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    pub fn new(inner: R, limit: usize) -> Self {
        LineReader {
            inner,
            limit,
            line: Vec::new(),
            returned: false,
        }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The next non-empty line without its terminator; `None` at end of stream.
    pub async fn next_line(&mut self) -> Result<Option<&[u8]>, Sv1Error> {
        if self.returned {
            self.line.clear();
            self.returned = false;
            // After an unusually long line, give the memory back: thousands of idle miners
            // each holding their largest line add up.
            if self.line.capacity() > LINE_KEPT {
                self.line = Vec::new();
            }
        }
        loop {
            // Wait for data first; while waiting with no partial line, hold no line buffer
            // (an idle miner's last line, ~150 B each, adds up over thousands of miners).
            let (inner, line) = (&mut self.inner, &mut self.line);
            std::future::poll_fn(|cx| match Pin::new(&mut *inner).poll_fill_buf(cx) {
                Poll::Ready(r) => Poll::Ready(r.map(|_| ())),
                Poll::Pending => {
                    if line.is_empty() && line.capacity() > 0 {
                        *line = Vec::new();
                    }
                    Poll::Pending
                }
            })
            .await?;
            // Ready now: returns what the poll above buffered, without another read.
            let buf = self.inner.fill_buf().await?;
            if buf.is_empty() {
                if self.line.is_empty() {
                    return Ok(None);
                }
                break;
            }
            let (take, done) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if self.line.len() + take > self.limit + 1 {
                return Err(Sv1Error::LineTooLong { limit: self.limit });
            }
            self.line.extend_from_slice(&buf[..take]);
            self.inner.consume(take);
            if done {
                while matches!(self.line.last(), Some(b'\n' | b'\r')) {
                    self.line.pop();
                }
                if self.line.is_empty() {
                    continue;
                }
                break;
            }
        }
        self.returned = true;
        Ok(Some(&self.line))
    }
}

/// Bytes a [`ReleasingReader`] reads at once (on the stack; a submit line is under 256 B).
const READ_CHUNK: usize = 512;

/// A buffered reader that holds no buffer while nothing is pending: each read lands in a stack
/// buffer and only unconsumed bytes are kept, freed once consumed. For connections that are
/// idle most of the time (miners), where a `BufReader`'s fixed buffer would stay allocated for
/// each of thousands of connections. Cancel-safe like any `AsyncBufRead`: bytes read are kept
/// until consumed.
pub struct ReleasingReader<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
}

impl<R> ReleasingReader<R> {
    pub fn new(inner: R) -> Self {
        ReleasingReader {
            inner,
            buf: Vec::new(),
            pos: 0,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ReleasingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.buf.len() {
            let n = out.remaining().min(this.buf.len() - this.pos);
            out.put_slice(&this.buf[this.pos..this.pos + n]);
            Pin::new(&mut *this).consume(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

impl<R: AsyncRead + Unpin> AsyncBufRead for ReleasingReader<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.pos >= this.buf.len() {
            let mut chunk = [0u8; READ_CHUNK];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    // Empty at end of stream, which `fill_buf` reports as an empty slice.
                    this.buf = rb.filled().to_vec();
                    this.pos = 0;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(&this.buf[this.pos..]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.pos = (this.pos + amt).min(this.buf.len());
        if this.pos == this.buf.len() {
            this.buf = Vec::new();
            this.pos = 0;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Field encodings

/// Previous-block hash in stratum's word-swapped form, from header (internal) byte order.
pub fn prevhash_to_sv1(internal: &[u8; 32]) -> String {
    let mut out = [0u8; 32];
    for (dst, src) in out.chunks_exact_mut(4).zip(internal.chunks_exact(4)) {
        dst.copy_from_slice(src);
        dst.reverse();
    }
    hex::encode(out)
}

/// Inverse of [`prevhash_to_sv1`].
pub fn prevhash_from_sv1(text: &str) -> Option<[u8; 32]> {
    let mut bytes: [u8; 32] = hex::decode(text).ok()?.try_into().ok()?;
    for word in bytes.chunks_exact_mut(4) {
        word.reverse();
    }
    Some(bytes)
}

pub fn u32_to_hex(v: u32) -> String {
    format!("{v:08x}")
}

fn hex_u32(method: &str, field: &str, v: &Value) -> Result<u32, Sv1Error> {
    let s = v
        .as_str()
        .ok_or_else(|| bad(method, format!("{field} must be a hex string")))?;
    if s.is_empty() || s.len() > 8 {
        return Err(bad(method, format!("{field} must be 1..8 hex digits")));
    }
    u32::from_str_radix(s, 16).map_err(|_| bad(method, format!("{field} is not hex")))
}

fn hex_bytes(method: &str, field: &str, v: &Value, max: usize) -> Result<Vec<u8>, Sv1Error> {
    let s = v
        .as_str()
        .ok_or_else(|| bad(method, format!("{field} must be a hex string")))?;
    if s.len() > max * 2 {
        return Err(bad(method, format!("{field} longer than {max} bytes")));
    }
    hex::decode(s).map_err(|_| bad(method, format!("{field} is not hex")))
}

fn string(method: &str, field: &str, v: Option<&Value>) -> Result<String, Sv1Error> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err(bad(method, format!("{field} missing"))),
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Miner → pool

/// BIP310 `mining.configure` parameters DefPool understands.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Configure {
    pub extensions: Vec<String>,
    pub version_rolling_mask: Option<u32>,
    pub version_rolling_min_bit_count: Option<u32>,
    pub minimum_difficulty: Option<f64>,
}

/// A submitted share as SV1 carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submit {
    pub worker: String,
    pub job_id: String,
    pub extranonce2: Vec<u8>,
    pub ntime: u32,
    pub nonce: u32,
    /// BIP310 rolled version bits, when the miner rolls.
    pub version_bits: Option<u32>,
}

/// Requests a miner sends.
#[derive(Clone, Debug, PartialEq)]
pub enum MinerRequest {
    Subscribe {
        user_agent: Option<String>,
        session: Option<String>,
    },
    Authorize {
        username: String,
        password: String,
    },
    Configure(Configure),
    ExtranonceSubscribe,
    SuggestDifficulty(f64),
    Submit(Submit),
    /// A method DefPool does not serve (answered with an error, not a disconnect).
    Unknown(String),
}

impl MinerRequest {
    pub fn parse(req: &Request) -> Result<MinerRequest, Sv1Error> {
        let m = req.method.as_str();
        let p = &req.params;
        Ok(match m {
            "mining.subscribe" => MinerRequest::Subscribe {
                user_agent: p.first().and_then(|v| v.as_str()).map(str::to_string),
                session: p.get(1).and_then(|v| v.as_str()).map(str::to_string),
            },
            "mining.authorize" => MinerRequest::Authorize {
                username: string(m, "username", p.first())?,
                password: p
                    .get(1)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string(),
            },
            "mining.configure" => {
                let mut c = Configure::default();
                if let Some(Value::Array(exts)) = p.first() {
                    c.extensions = exts
                        .iter()
                        .filter_map(|e| e.as_str().map(str::to_string))
                        .collect();
                } else {
                    return Err(bad(m, "first parameter must be the list of extensions"));
                }
                if let Some(Value::Object(opts)) = p.get(1) {
                    if let Some(v) = opts.get("version-rolling.mask") {
                        c.version_rolling_mask = Some(hex_u32(m, "version-rolling.mask", v)?);
                    }
                    c.version_rolling_min_bit_count = opts
                        .get("version-rolling.min-bit-count")
                        .and_then(|v| v.as_u64())
                        .map(|v| v.min(32) as u32);
                    c.minimum_difficulty = opts.get("minimum-difficulty.value").and_then(number);
                }
                MinerRequest::Configure(c)
            }
            "mining.extranonce.subscribe" => MinerRequest::ExtranonceSubscribe,
            "mining.suggest_difficulty" => {
                let d = p
                    .first()
                    .and_then(number)
                    .filter(|d| d.is_finite() && *d > 0.0)
                    .ok_or_else(|| bad(m, "difficulty must be a positive number"))?;
                MinerRequest::SuggestDifficulty(d)
            }
            "mining.submit" => {
                if p.len() < 5 {
                    return Err(bad(m, "expected worker, job_id, extranonce2, ntime, nonce"));
                }
                MinerRequest::Submit(Submit {
                    worker: string(m, "worker", p.first())?,
                    job_id: string(m, "job_id", p.get(1))?,
                    extranonce2: hex_bytes(m, "extranonce2", &p[2], 32)?,
                    ntime: hex_u32(m, "ntime", &p[3])?,
                    nonce: hex_u32(m, "nonce", &p[4])?,
                    version_bits: match p.get(5) {
                        Some(Value::Null) | None => None,
                        Some(v) => Some(hex_u32(m, "version_bits", v)?),
                    },
                })
            }
            other => MinerRequest::Unknown(other.to_string()),
        })
    }

    /// The request line a miner sends (upstream side and load generator).
    pub fn to_line(&self, id: u64) -> String {
        let (method, params) = match self {
            MinerRequest::Subscribe {
                user_agent,
                session,
            } => {
                let mut p = vec![json!(user_agent.clone().unwrap_or_default())];
                if let Some(s) = session {
                    p.push(json!(s));
                }
                ("mining.subscribe", Value::Array(p))
            }
            MinerRequest::Authorize { username, password } => {
                ("mining.authorize", json!([username, password]))
            }
            MinerRequest::Configure(c) => {
                let mut opts = serde_json::Map::new();
                if let Some(mask) = c.version_rolling_mask {
                    opts.insert("version-rolling.mask".into(), json!(u32_to_hex(mask)));
                }
                if let Some(n) = c.version_rolling_min_bit_count {
                    opts.insert("version-rolling.min-bit-count".into(), json!(n));
                }
                if let Some(d) = c.minimum_difficulty {
                    opts.insert("minimum-difficulty.value".into(), json!(d));
                }
                ("mining.configure", json!([c.extensions, opts]))
            }
            MinerRequest::ExtranonceSubscribe => ("mining.extranonce.subscribe", json!([])),
            MinerRequest::SuggestDifficulty(d) => ("mining.suggest_difficulty", json!([d])),
            MinerRequest::Submit(s) => {
                let mut p = vec![
                    json!(s.worker),
                    json!(s.job_id),
                    json!(hex::encode(&s.extranonce2)),
                    json!(u32_to_hex(s.ntime)),
                    json!(u32_to_hex(s.nonce)),
                ];
                if let Some(v) = s.version_bits {
                    p.push(json!(u32_to_hex(v)));
                }
                ("mining.submit", Value::Array(p))
            }
            MinerRequest::Unknown(m) => (m.as_str(), json!([])),
        };
        let mut line = json!({"id": id, "method": method, "params": params}).to_string();
        line.push('\n');
        line
    }
}

// ---------------------------------------------------------------------------------------------
// Pool → miner

/// A job as `mining.notify` carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notify {
    pub job_id: String,
    /// Header (internal) byte order; converted on the wire.
    pub prev_hash: [u8; 32],
    pub coinbase1: Vec<u8>,
    pub coinbase2: Vec<u8>,
    /// Internal byte order.
    pub merkle_branch: Vec<[u8; 32]>,
    pub version: u32,
    pub nbits: u32,
    pub ntime: u32,
    pub clean_jobs: bool,
}

/// A `mining.notify` serialized once for many miners: everything but the job id and the
/// clean flag, which differ per miner, is kept as text (a switch sends the same job to
/// thousands of miners; hex and JSON encoding per miner was most of its cost).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedNotify {
    /// `","<prevhash>",...,"<ntime>",` — the parameters after the job id, before the flag.
    middle: String,
}

const NOTIFY_HEAD: &str = "{\"id\":null,\"method\":\"mining.notify\",\"params\":[\"";

impl PreparedNotify {
    /// From a notify; its `job_id` and `clean_jobs` are ignored (given per line).
    pub fn new(n: &Notify) -> PreparedNotify {
        use std::fmt::Write;
        let mut middle = String::with_capacity(
            160 + 2 * (n.coinbase1.len() + n.coinbase2.len()) + 67 * n.merkle_branch.len(),
        );
        middle.push_str("\",\"");
        middle.push_str(&prevhash_to_sv1(&n.prev_hash));
        middle.push_str("\",\"");
        middle.push_str(&hex::encode(&n.coinbase1));
        middle.push_str("\",\"");
        middle.push_str(&hex::encode(&n.coinbase2));
        middle.push_str("\",[");
        for (i, h) in n.merkle_branch.iter().enumerate() {
            if i > 0 {
                middle.push(',');
            }
            middle.push('"');
            middle.push_str(&hex::encode(h));
            middle.push('"');
        }
        let _ = write!(
            middle,
            "],\"{:08x}\",\"{:08x}\",\"{:08x}\",",
            n.version, n.nbits, n.ntime
        );
        PreparedNotify { middle }
    }

    /// Appends the notify line for `job_id` (hex digits or other JSON-safe text).
    pub fn write_line(&self, out: &mut String, job_id: &str, clean_jobs: bool) {
        debug_assert!(!job_id.contains(['"', '\\']));
        out.reserve(NOTIFY_HEAD.len() + job_id.len() + self.middle.len() + 9);
        out.push_str(NOTIFY_HEAD);
        out.push_str(job_id);
        out.push_str(&self.middle);
        out.push_str(if clean_jobs { "true]}\n" } else { "false]}\n" });
    }

    /// Bytes of one line (without the job id), for memory accounting.
    pub fn len(&self) -> usize {
        NOTIFY_HEAD.len() + self.middle.len() + 9
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Notifications a pool sends.
#[derive(Clone, Debug, PartialEq)]
pub enum PoolMessage {
    SetDifficulty(f64),
    Notify(Notify),
    SetExtranonce {
        extranonce1: Vec<u8>,
        extranonce2_size: usize,
    },
    SetVersionMask(u32),
    Reconnect {
        host: Option<String>,
        port: Option<u16>,
        wait_secs: u32,
    },
    ShowMessage(String),
    Unknown(String),
}

impl PoolMessage {
    pub fn parse(req: &Request) -> Result<PoolMessage, Sv1Error> {
        let m = req.method.as_str();
        let p = &req.params;
        Ok(match m {
            "mining.set_difficulty" => PoolMessage::SetDifficulty(
                p.first()
                    .and_then(number)
                    .filter(|d| d.is_finite() && *d > 0.0)
                    .ok_or_else(|| bad(m, "difficulty must be a positive number"))?,
            ),
            "mining.notify" => {
                if p.len() < 9 {
                    return Err(bad(m, "expected 9 parameters"));
                }
                let prev = p[1].as_str().and_then(prevhash_from_sv1);
                let branch = p[4]
                    .as_array()
                    .ok_or_else(|| bad(m, "merkle branch must be a list"))?
                    .iter()
                    .map(|h| {
                        h.as_str()
                            .and_then(|s| hex::decode(s).ok())
                            .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad(m, "merkle branch entries must be 32-byte hex"))?;
                PoolMessage::Notify(Notify {
                    job_id: string(m, "job_id", p.first())?,
                    prev_hash: prev.ok_or_else(|| bad(m, "prevhash must be 32-byte hex"))?,
                    coinbase1: hex_bytes(m, "coinb1", &p[2], 1 << 20)?,
                    coinbase2: hex_bytes(m, "coinb2", &p[3], 1 << 20)?,
                    merkle_branch: branch,
                    version: hex_u32(m, "version", &p[5])?,
                    nbits: hex_u32(m, "nbits", &p[6])?,
                    ntime: hex_u32(m, "ntime", &p[7])?,
                    clean_jobs: p[8].as_bool().unwrap_or(false),
                })
            }
            "mining.set_extranonce" => PoolMessage::SetExtranonce {
                extranonce1: hex_bytes(m, "extranonce1", p.first().unwrap_or(&Value::Null), 32)?,
                extranonce2_size: p
                    .get(1)
                    .and_then(|v| v.as_u64())
                    .filter(|n| *n <= 32)
                    .ok_or_else(|| bad(m, "extranonce2 size must be 0..=32"))?
                    as usize,
            },
            "mining.set_version_mask" => {
                PoolMessage::SetVersionMask(hex_u32(m, "mask", p.first().unwrap_or(&Value::Null))?)
            }
            "client.reconnect" => PoolMessage::Reconnect {
                host: p.first().and_then(|v| v.as_str()).map(str::to_string),
                port: p.get(1).and_then(number).map(|n| n as u16),
                wait_secs: p.get(2).and_then(number).unwrap_or(0.0) as u32,
            },
            "client.show_message" => PoolMessage::ShowMessage(
                p.first()
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string(),
            ),
            other => PoolMessage::Unknown(other.to_string()),
        })
    }

    /// The notification line a pool sends.
    pub fn to_line(&self) -> String {
        let (method, params) = match self {
            PoolMessage::SetDifficulty(d) => ("mining.set_difficulty", json!([d])),
            PoolMessage::Notify(n) => (
                "mining.notify",
                json!([
                    n.job_id,
                    prevhash_to_sv1(&n.prev_hash),
                    hex::encode(&n.coinbase1),
                    hex::encode(&n.coinbase2),
                    n.merkle_branch.iter().map(hex::encode).collect::<Vec<_>>(),
                    u32_to_hex(n.version),
                    u32_to_hex(n.nbits),
                    u32_to_hex(n.ntime),
                    n.clean_jobs
                ]),
            ),
            PoolMessage::SetExtranonce {
                extranonce1,
                extranonce2_size,
            } => (
                "mining.set_extranonce",
                json!([hex::encode(extranonce1), extranonce2_size]),
            ),
            PoolMessage::SetVersionMask(mask) => {
                ("mining.set_version_mask", json!([u32_to_hex(*mask)]))
            }
            PoolMessage::Reconnect {
                host,
                port,
                wait_secs,
            } => ("client.reconnect", json!([host, port, wait_secs])),
            PoolMessage::ShowMessage(s) => ("client.show_message", json!([s])),
            PoolMessage::Unknown(m) => (m.as_str(), json!([])),
        };
        let mut line = json!({"id": null, "method": method, "params": params}).to_string();
        line.push('\n');
        line
    }
}

/// A successful reply line.
pub fn result_line(id: &Value, result: Value) -> String {
    reply_line(id, &result, &Value::Null)
}

/// An error reply line in the conventional `[code, message, null]` form.
pub fn error_line(id: &Value, code: i64, message: &str) -> String {
    reply_line(id, &Value::Null, &json!([code, message, null]))
}

/// `{"id":…,"result":…,"error":…}` and a newline, written directly: one allocation per reply
/// (every share gets one) instead of a map built and then serialized.
fn reply_line(id: &Value, result: &Value, error: &Value) -> String {
    let mut line = Vec::with_capacity(48);
    line.extend_from_slice(br#"{"id":"#);
    write_json(&mut line, id);
    line.extend_from_slice(br#","result":"#);
    write_json(&mut line, result);
    line.extend_from_slice(br#","error":"#);
    write_json(&mut line, error);
    line.extend_from_slice(b"}\n");
    String::from_utf8(line).expect("serde_json writes UTF-8")
}

fn write_json(out: &mut Vec<u8>, v: &Value) {
    serde_json::to_writer(out, v).expect("a Value always serializes into memory");
}

/// The conventional stratum error codes (from the pre-BIP "stratum mining protocol" notes that
/// every pool follows).
pub mod error_code {
    pub const OTHER: i64 = 20;
    pub const JOB_NOT_FOUND: i64 = 21;
    pub const DUPLICATE_SHARE: i64 = 22;
    pub const LOW_DIFFICULTY: i64 = 23;
    pub const UNAUTHORIZED: i64 = 24;
    pub const NOT_SUBSCRIBED: i64 = 25;
}

/// The `mining.subscribe` result: subscriptions, extranonce1, extranonce2 size.
pub fn subscribe_result(session: &str, extranonce1: &[u8], extranonce2_size: usize) -> Value {
    json!([
        [
            ["mining.set_difficulty", session],
            ["mining.notify", session]
        ],
        hex::encode(extranonce1),
        extranonce2_size
    ])
}

/// Reads a `mining.subscribe` result (upstream side): extranonce1 and extranonce2 size.
pub fn parse_subscribe_result(result: &Value) -> Option<(Vec<u8>, usize)> {
    let arr = result.as_array()?;
    let en1 = hex::decode(arr.get(1)?.as_str()?).ok()?;
    let size = arr.get(2)?.as_u64()? as usize;
    (en1.len() <= 32 && size <= 32).then_some((en1, size))
}

/// Reads a `mining.configure` result: the version-rolling mask the pool granted, if any.
pub fn parse_configure_result(result: &Value) -> Option<u32> {
    let obj = result.as_object()?;
    if obj.get("version-rolling")?.as_bool()? {
        u32::from_str_radix(obj.get("version-rolling.mask")?.as_str()?, 16).ok()
    } else {
        None
    }
}

/// The error message of a response, for logs and reject reasons.
pub fn error_message(error: &Value) -> String {
    match error {
        Value::Null => String::new(),
        Value::Array(a) => a
            .get(1)
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| error.to_string()),
        Value::Object(o) => o
            .get("message")
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| error.to_string()),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(line: &str) -> Request {
        match parse_line(line.as_bytes()).unwrap() {
            Incoming::Request(r) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    #[test]
    fn parses_a_cgminer_session() {
        let sub =
            request(r#"{"id": 1, "method": "mining.subscribe", "params": ["cgminer/4.10.0"]}"#);
        assert_eq!(
            MinerRequest::parse(&sub).unwrap(),
            MinerRequest::Subscribe {
                user_agent: Some("cgminer/4.10.0".into()),
                session: None
            }
        );
        let auth =
            request(r#"{"id":2,"method":"mining.authorize","params":["ltc1qaddr.rig1","d=512"]}"#);
        assert_eq!(
            MinerRequest::parse(&auth).unwrap(),
            MinerRequest::Authorize {
                username: "ltc1qaddr.rig1".into(),
                password: "d=512".into()
            }
        );
        let submit = request(
            r#"{"params": ["ltc1qaddr.rig1", "1f", "0000000a", "5f5e1000", "e8832204", "00a00000"], "id": 4, "method": "mining.submit"}"#,
        );
        assert_eq!(
            MinerRequest::parse(&submit).unwrap(),
            MinerRequest::Submit(Submit {
                worker: "ltc1qaddr.rig1".into(),
                job_id: "1f".into(),
                extranonce2: vec![0, 0, 0, 10],
                ntime: 0x5f5e1000,
                nonce: 0xe8832204,
                version_bits: Some(0x00a00000),
            })
        );
    }

    #[test]
    fn configure_reads_the_bip310_mask() {
        let c = request(
            r#"{"id":1,"method":"mining.configure","params":[["version-rolling"],{"version-rolling.mask":"1fffe000","version-rolling.min-bit-count":2}]}"#,
        );
        let MinerRequest::Configure(c) = MinerRequest::parse(&c).unwrap() else {
            panic!()
        };
        assert_eq!(c.version_rolling_mask, Some(0x1fffe000));
        assert_eq!(c.version_rolling_min_bit_count, Some(2));
    }

    #[test]
    fn bad_params_are_not_violations_but_bad_json_is() {
        let r = request(r#"{"id":3,"method":"mining.submit","params":["w","1","zz","0","0"]}"#);
        let e = MinerRequest::parse(&r).unwrap_err();
        assert!(!e.is_protocol_violation());
        assert!(e.to_string().contains("extranonce2"), "{e}");
        assert!(parse_line(b"{not json")
            .unwrap_err()
            .is_protocol_violation());
        assert!(parse_line(b"[1,2]").unwrap_err().is_protocol_violation());
        assert!(parse_line(br#"{"id":1}"#)
            .unwrap_err()
            .is_protocol_violation());
        assert_eq!(
            MinerRequest::parse(&request(
                r#"{"id":1,"method":"mining.get_transactions","params":[]}"#
            ))
            .unwrap(),
            MinerRequest::Unknown("mining.get_transactions".into())
        );
    }

    #[test]
    fn prepared_notify_is_the_same_line_as_the_message() {
        for (branch, clean) in [(vec![], false), (vec![[7u8; 32], [9u8; 32]], true)] {
            let n = Notify {
                job_id: "2a0001".into(),
                prev_hash: [5u8; 32],
                coinbase1: vec![1, 2, 3],
                coinbase2: vec![4, 5],
                merkle_branch: branch,
                version: 0x20000000,
                nbits: 0x1d00ffff,
                ntime: 0x6000_0000,
                clean_jobs: clean,
            };
            let mut line = String::new();
            PreparedNotify::new(&n).write_line(&mut line, "2a0001", clean);
            assert_eq!(line, PoolMessage::Notify(n).to_line());
        }
    }

    #[test]
    fn notify_round_trips_and_swaps_prevhash_words() {
        let mut prev = [0u8; 32];
        for (i, b) in prev.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert!(prevhash_to_sv1(&prev).starts_with("03020100" /* first word reversed */));
        let n = Notify {
            job_id: "a1".into(),
            prev_hash: prev,
            coinbase1: vec![1, 2, 3],
            coinbase2: vec![4, 5],
            merkle_branch: vec![[7u8; 32], [9u8; 32]],
            version: 0x20000000,
            nbits: 0x1d00ffff,
            ntime: 0x6000_0000,
            clean_jobs: true,
        };
        let line = PoolMessage::Notify(n.clone()).to_line();
        let Incoming::Request(r) = parse_line(line.trim_end().as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(PoolMessage::parse(&r).unwrap(), PoolMessage::Notify(n));
    }

    #[test]
    fn subscribe_and_configure_results_round_trip() {
        let v = subscribe_result("s1", &[0xde, 0xad, 0, 1], 4);
        assert_eq!(
            parse_subscribe_result(&v),
            Some((vec![0xde, 0xad, 0, 1], 4))
        );
        let granted = json!({"version-rolling": true, "version-rolling.mask": "1fffe000"});
        assert_eq!(parse_configure_result(&granted), Some(0x1fffe000));
        assert_eq!(
            parse_configure_result(&json!({"version-rolling": false})),
            None
        );
        assert_eq!(
            error_message(&json!([23, "Low difficulty share", null])),
            "Low difficulty share"
        );
    }

    #[tokio::test]
    async fn line_reader_bounds_lines_and_skips_blank_ones() {
        let data: &[u8] =
            b"\r\n{\"a\":1}\r\n\n{\"b\":2}\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n";
        let mut r = LineReader::new(data, 20);
        assert_eq!(r.next_line().await.unwrap().unwrap(), b"{\"a\":1}");
        assert_eq!(r.next_line().await.unwrap().unwrap(), b"{\"b\":2}");
        assert!(matches!(
            r.next_line().await,
            Err(Sv1Error::LineTooLong { limit: 20 })
        ));
        let mut r = LineReader::new(&b"{\"a\":1}"[..], 20);
        assert_eq!(r.next_line().await.unwrap().unwrap(), b"{\"a\":1}");
        assert!(r.next_line().await.unwrap().is_none());
    }

    /// An idle connection holds neither a read buffer nor its last line; a line split over
    /// reads, two lines in one read and a line cut by a cancelled `next_line` still come whole.
    #[tokio::test]
    async fn releasing_reader_holds_nothing_while_idle() {
        use tokio::io::AsyncWriteExt;
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut r = LineReader::new(ReleasingReader::new(rx), 2000);
        tx.write_all(b"{\"a\":").await.unwrap();
        // Cancelled while the line is partial: the part read so far must survive.
        let cut = tokio::time::timeout(std::time::Duration::from_millis(20), r.next_line()).await;
        assert!(cut.is_err());
        tx.write_all(b"1}\n{\"b\":2}\n").await.unwrap();
        assert_eq!(r.next_line().await.unwrap().unwrap(), b"{\"a\":1}");
        assert_eq!(r.next_line().await.unwrap().unwrap(), b"{\"b\":2}");
        let idle = tokio::time::timeout(std::time::Duration::from_millis(20), r.next_line()).await;
        assert!(idle.is_err());
        assert_eq!(
            r.line.capacity(),
            0,
            "the last line's buffer is kept while idle"
        );
        assert_eq!(
            r.inner.buf.capacity(),
            0,
            "the read buffer is kept while idle"
        );
        // A line longer than one read chunk.
        let long = format!("{{\"c\":\"{}\"}}\n", "x".repeat(3 * READ_CHUNK / 2));
        let writer = tokio::spawn(async move {
            tx.write_all(long.as_bytes()).await.unwrap();
            tx
        });
        let got = r.next_line().await.unwrap().unwrap().to_vec();
        assert_eq!(got.len(), 3 * READ_CHUNK / 2 + 8);
        drop(writer.await.unwrap());
        assert!(r.next_line().await.unwrap().is_none());
    }

    /// The parser this module had before the field-by-field one: a `Value` map, then members.
    fn parse_line_through_a_map(line: &[u8]) -> Result<Incoming, Sv1Error> {
        let value: Value =
            serde_json::from_slice(line).map_err(|e| Sv1Error::Json(e.to_string()))?;
        let Value::Object(mut obj) = value else {
            return Err(Sv1Error::NotJsonRpc);
        };
        let id = obj.remove("id").unwrap_or(Value::Null);
        if let Some(method) = obj.remove("method") {
            let Value::String(method) = method else {
                return Err(Sv1Error::NotJsonRpc);
            };
            let params = match obj.remove("params") {
                Some(Value::Array(params)) => params,
                None | Some(Value::Null) => Vec::new(),
                Some(other) => vec![other],
            };
            return Ok(Incoming::Request(Request { id, method, params }));
        }
        if obj.contains_key("result") || obj.contains_key("error") {
            return Ok(Incoming::Response(Response {
                id,
                result: obj.remove("result").unwrap_or(Value::Null),
                error: obj.remove("error").unwrap_or(Value::Null),
            }));
        }
        Err(Sv1Error::NotJsonRpc)
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-z.\"\\\\ ]{0,8}".prop_map(Value::String),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        json_leaf().prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(("[a-z]{1,3}", inner), 0..3)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Objects with the JSON-RPC members (repeated, null, of any type, or missing) and others,
    /// written by hand so that keys can repeat; sometimes not an object, sometimes cut short.
    fn envelope_line() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("id"),
            Just("method"),
            Just("params"),
            Just("result"),
            Just("error"),
            Just("x"),
            Just("meth\\u006fd"),
        ];
        let member = (key, prop_oneof![json_value(), Just(json!("mining.submit"))]);
        (
            proptest::collection::vec(member, 0..7),
            0..6u8,
            json_value(),
            0..40usize,
        )
            .prop_map(|(members, shape, other, cut)| {
                let object = format!(
                    "{{{}}}",
                    members
                        .iter()
                        .map(|(k, v)| format!("\"{k}\": {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                match shape {
                    0 => other.to_string(),
                    1 => object.chars().take(cut).collect(),
                    _ => object,
                }
            })
    }

    /// What a parse gave, for comparing two parsers: the message exactly, an error by its kind.
    /// serde words a JSON syntax error by where it stopped, and skipping an unknown member
    /// (the typed envelope) stops elsewhere than building it (a map): `{"x": {"a":-` is an
    /// "invalid number" to one and an "EOF while parsing a value" to the other.
    fn outcome(parsed: Result<Incoming, Sv1Error>) -> String {
        match parsed {
            Err(Sv1Error::Json(_)) => "invalid JSON".to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn a_cut_unknown_member_is_invalid_json_to_both_parsers() {
        let line = br#"{"x": {"aaa":-"#;
        assert!(matches!(parse_line(line), Err(Sv1Error::Json(_))));
        assert!(matches!(
            parse_line_through_a_map(line),
            Err(Sv1Error::Json(_))
        ));
    }

    proptest! {
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(Incoming::Request(r)) = parse_line(&bytes) {
                let _ = MinerRequest::parse(&r);
                let _ = PoolMessage::parse(&r);
            }
        }

        #[test]
        fn parse_line_reads_envelopes_as_a_value_map_would(line in envelope_line()) {
            prop_assert_eq!(
                outcome(parse_line(line.as_bytes())),
                outcome(parse_line_through_a_map(line.as_bytes())),
                "line {}", line
            );
        }

        #[test]
        fn reply_lines_are_the_json_of_their_members(id in json_leaf(), code: i64, message in "[ -~]{0,12}") {
            let ok: Value = serde_json::from_str(result_line(&id, json!(true)).trim_end()).unwrap();
            prop_assert_eq!(ok, json!({"id": id, "result": true, "error": null}));
            let line = error_line(&id, code, &message);
            prop_assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
            let err: Value = serde_json::from_str(line.trim_end()).unwrap();
            prop_assert_eq!(err, json!({"id": id, "result": null, "error": [code, message, null]}));
        }

        #[test]
        fn submit_round_trips(en2 in proptest::collection::vec(any::<u8>(), 0..16), ntime: u32, nonce: u32, bits: Option<u32>) {
            let s = MinerRequest::Submit(Submit { worker: "w.1".into(), job_id: "7".into(), extranonce2: en2, ntime, nonce, version_bits: bits });
            let line = s.to_line(9);
            let Incoming::Request(r) = parse_line(line.trim_end().as_bytes()).unwrap() else { panic!() };
            prop_assert_eq!(MinerRequest::parse(&r).unwrap(), s);
        }
    }
}
