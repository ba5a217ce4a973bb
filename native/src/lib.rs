//! A strict, columnar decoder of newline-separated JSON objects for a declared schema (Sluice's fast path).
//!
//! It either returns the declared columns of a block in which every record is good, or None ("not sure"): on
//! any syntax error, wrong type, duplicate declared key, invalid UTF-8, lone UTF-16
//! surrogate, raw control character in a string, integer out of range, non-finite number, nesting deeper
//! than `MAX_DEPTH`, non-object record, missing or null required field. The caller then runs its own
//! (slower, explaining) path, so this code never has to say why.
//!
//! Supported types: Int64/Int32/UInt32/UInt64 (values up to i64::MAX), Float64, String, Boolean, and structs
//! of these, each optional. Undeclared fields are skipped, but validated as JSON.

use pyo3::exceptions::PyValueError;
use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

mod arrow;
mod asof;
mod fx;
mod panes;
mod scan;

use scan::{append, clinger, digit_run, next_special};

const MAX_DEPTH: u32 = 128;

mod sessions;
mod wm;

type R<T> = Result<T, ()>;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Float,
    Str,
    Bool,
    Struct,
}

struct Spec {
    name: Vec<u8>,
    head: u64, // the name's first 8 bytes (zero-padded): most keys are told apart by these alone
    kind: Kind,
    min: i64,
    max: i64,
    required: bool,
    col: usize,
    children: Vec<Spec>,
    plain: bool, // the name holds no quote, backslash or control character: its JSON spelling can be its bytes
}

#[derive(Default)]
struct Column {
    valid: Vec<u8>, // one byte per row (packed to bits at the end), kept only from the column's first null on
    nulls: usize,
    rows: usize, // values and nulls so far
    ints: Vec<i64>,
    floats: Vec<f64>,
    offsets: Vec<i64>,
    data: Vec<u8>,
}

impl Column {
    /// A value (not null) was added. Invariant: once `nulls` > 0, `valid` holds one byte per row.
    #[inline(always)]
    fn present(&mut self) {
        if self.nulls != 0 {
            self.valid.push(1);
        }
        self.rows += 1;
    }

    /// A null was added: the first one materializes the validity of the rows before it (all valid).
    fn absent(&mut self) {
        if self.nulls == 0 {
            self.valid.resize(self.rows, 1);
        }
        self.valid.push(0);
        self.nulls += 1;
        self.rows += 1;
    }
}

/// A number's text, checked against JSON's grammar, and what its scan learnt on the way.
struct Num {
    start: usize,
    int: bool,     // no fraction, no exponent
    neg: bool,
    mant: u64,     // the digits of the integer and fraction parts as one integer: exact while `digits` <= 19
    digits: usize, // how many there are
    exp10: i64,    // the value is mant * 10^exp10 (saturated far beyond any finite f64's exponent)
}

/// A schema, resolved once (Python keeps it per schema).
#[pyclass(frozen)]
struct Plan {
    fields: Vec<Spec>,
    kinds: Vec<Kind>, // per column, in pre-order
}

fn build(obj: &Bound<'_, PyAny>, top: bool, kinds: &mut Vec<Kind>) -> PyResult<Spec> {
    // (name, kind, required, children)
    let t = obj.cast::<PyTuple>()?;
    let name: Vec<u8> = t.get_item(0)?.extract::<String>()?.into_bytes();
    let kind_s: String = t.get_item(1)?.extract()?;
    let required: bool = t.get_item(2)?.extract()?;
    let (kind, min, max) = match kind_s.as_str() {
        "i64" | "u64" => (Kind::Int, if kind_s == "u64" { 0 } else { i64::MIN }, i64::MAX),
        "i32" => (Kind::Int, i32::MIN as i64, i32::MAX as i64),
        "u32" => (Kind::Int, 0, u32::MAX as i64),
        "f64" => (Kind::Float, 0, 0),
        "str" => (Kind::Str, 0, 0),
        "bool" => (Kind::Bool, 0, 0),
        "struct" => (Kind::Struct, 0, 0),
        other => return Err(PyValueError::new_err(format!("unsupported kind {other}"))),
    };
    let col = kinds.len();
    kinds.push(kind);
    let mut children = Vec::new();
    if kind == Kind::Struct {
        for c in t.get_item(3)?.try_iter()? {
            children.push(build(&c?, false, kinds)?);
        }
        if children.is_empty() || children.len() > 64 {
            return Err(PyValueError::new_err("a struct needs 1 to 64 fields"));
        }
    }
    let head = word(&name, 0, name.len());
    let plain = !name.iter().any(|&c| c == b'"' || c == b'\\' || c < 0x20);
    Ok(Spec { name, head, kind, min, max, required: required && top, col, children, plain })
}

#[pymethods]
impl Plan {
    #[new]
    fn new(fields: &Bound<'_, PyList>) -> PyResult<Self> {
        let mut kinds = Vec::new();
        let mut specs = Vec::new();
        for f in fields.iter() {
            specs.push(build(&f, true, &mut kinds)?);
        }
        if specs.is_empty() || specs.len() > 64 {
            return Err(PyValueError::new_err("a schema needs 1 to 64 fields"));
        }
        Ok(Plan { fields: specs, kinds })
    }
}

struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
    cols: Vec<Column>,
}

#[inline(always)]
fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t' || b == b'\r'
}

impl<'a> Parser<'a> {
    #[inline(always)]
    fn peek(&self) -> u8 {
        // 0 at the end: never valid where a token is expected
        if self.pos < self.buf.len() {
            self.buf[self.pos]
        } else {
            0
        }
    }

    /// Past any spaces, tabs and carriage returns.
    #[inline(always)]
    fn ws(&mut self) {
        // mostly there are none: one comparison (peek's 0 at the end is below b' ' too, and the loop stops)
        if self.peek() > b' ' {
            return;
        }
        while self.pos < self.buf.len() && is_ws(self.buf[self.pos]) {
            self.pos += 1;
        }
    }

    /// Past the `:` after a key, and any whitespace around it.
    #[inline(always)]
    fn colon(&mut self) -> R<()> {
        if self.peek() == b':' {
            self.pos += 1;
        } else {
            self.ws();
            self.expect(b':')?;
        }
        self.ws();
        Ok(())
    }

    #[inline(always)]
    fn expect(&mut self, b: u8) -> R<()> {
        if self.peek() == b {
            self.pos += 1;
            Ok(())
        } else {
            Err(())
        }
    }

    #[inline(always)]
    fn literal(&mut self, word: &[u8]) -> R<()> {
        if self.buf[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(())
        }
    }

    fn records(&mut self, fields: &[Spec]) -> R<usize> {
        let mut n = 0;
        loop {
            self.ws();
            if self.pos >= self.buf.len() {
                return Ok(n);
            }
            if self.buf[self.pos] == b'\n' {
                self.pos += 1; // a blank line
                continue;
            }
            self.expect(b'{')?;
            self.object(fields, 1)?;
            n += 1;
            self.ws();
            if self.pos < self.buf.len() {
                self.expect(b'\n')?;
            }
        }
    }

    /// The fields of an object whose `{` is consumed.
    fn object(&mut self, fields: &[Spec], depth: u32) -> R<()> {
        let mut seen: u64 = 0;
        let mut hint = 0usize; // records usually hold their fields in the same order
        self.ws();
        if self.peek() == b'}' {
            self.pos += 1;
        } else {
            loop {
                self.expect(b'"')?;
                let start = self.pos;
                // the predicted field's name, spelt plainly, then the closing quote: that is the key (a plain
                // name's bytes cannot hold an escape or end the string early)
                let f = &fields[hint];
                let end = start + f.name.len();
                if f.plain
                    && end < self.buf.len()
                    && self.buf[end] == b'"'
                    && word(self.buf, start, f.name.len()) == f.head
                    && (f.name.len() <= 8 || self.buf[start + 8..end] == f.name[8..])
                {
                    self.pos = end + 1;
                    self.colon()?;
                    let found = hint;
                    if seen & (1u64 << found) != 0 {
                        return Err(()); // a duplicate declared key
                    }
                    seen |= 1u64 << found;
                    hint = if found + 1 == fields.len() { 0 } else { found + 1 };
                    self.value(&fields[found], depth)?;
                    if self.after_member()? {
                        break;
                    }
                    continue;
                }
                let escaped = self.skip_string_body()?;
                let raw = &self.buf[start..self.pos - 1];
                // a key spelt with escapes ("\u00e9" for "é", as Python's json.dumps writes) is compared decoded
                let decoded = if escaped { Some(unescape(raw)?) } else { None };
                let key: &[u8] = decoded.as_deref().unwrap_or(raw);
                let head = if escaped { word(key, 0, key.len()) } else { word(self.buf, start, key.len()) };
                self.colon()?;
                let mut found = usize::MAX;
                for k in 0..fields.len() {
                    let i = if hint + k < fields.len() { hint + k } else { hint + k - fields.len() };
                    let f = &fields[i];
                    if f.head == head && f.name.len() == key.len() && (key.len() <= 8 || f.name[8..] == key[8..]) {
                        found = i;
                        break;
                    }
                }
                if found != usize::MAX {
                    if seen & (1u64 << found) != 0 {
                        return Err(()); // a duplicate declared key
                    }
                    seen |= 1u64 << found;
                    hint = found + 1;
                    if hint == fields.len() {
                        hint = 0;
                    }
                    self.value(&fields[found], depth)?;
                } else {
                    self.skip_value(depth)?;
                }
                if self.after_member()? {
                    break;
                }
            }
        }
        let all = if fields.len() == 64 { u64::MAX } else { (1u64 << fields.len()) - 1 };
        if seen != all {
            for (i, f) in fields.iter().enumerate() {
                if seen & (1u64 << i) == 0 {
                    if f.required {
                        return Err(());
                    }
                    self.null(f);
                }
            }
        }
        Ok(())
    }

    /// Past the `,` (and whitespace) or `}` after an object's member: whether it was the `}`.
    #[inline(always)]
    fn after_member(&mut self) -> R<bool> {
        self.ws();
        match self.peek() {
            b',' => {
                self.pos += 1;
                self.ws();
                Ok(false)
            }
            b'}' => {
                self.pos += 1;
                Ok(true)
            }
            _ => Err(()),
        }
    }

    fn null(&mut self, f: &Spec) {
        let c = &mut self.cols[f.col];
        c.absent();
        match f.kind {
            Kind::Int | Kind::Bool => c.ints.push(0),
            Kind::Float => c.floats.push(0.0),
            Kind::Str => c.offsets.push(c.data.len() as i64),
            Kind::Struct => {
                for ch in &f.children {
                    self.null(ch);
                }
            }
        }
    }

    fn value(&mut self, f: &Spec, depth: u32) -> R<()> {
        if self.peek() == b'n' {
            self.literal(b"null")?;
            if f.required {
                return Err(());
            }
            self.null(f);
            return Ok(());
        }
        match f.kind {
            Kind::Int => {
                let n = self.number()?;
                if !n.int {
                    return Err(());
                }
                let v = self.int_value(&n)?;
                if v < f.min || v > f.max {
                    return Err(());
                }
                let c = &mut self.cols[f.col];
                c.present();
                c.ints.push(v);
            }
            Kind::Float => {
                let n = self.number()?;
                // an integer is read as one and converted (so -0 is 0.0, as Polars reads it)
                let v = if n.int {
                    self.int_value(&n)? as f64
                } else if let Some(v) = clinger(n.mant, n.exp10, n.neg).filter(|_| n.digits <= 19) {
                    v
                } else {
                    parse_float(&self.buf[n.start..self.pos])?
                };
                let c = &mut self.cols[f.col];
                c.present();
                c.floats.push(v);
            }
            Kind::Bool => {
                let v = match self.peek() {
                    b't' => {
                        self.literal(b"true")?;
                        1
                    }
                    b'f' => {
                        self.literal(b"false")?;
                        0
                    }
                    _ => return Err(()),
                };
                let c = &mut self.cols[f.col];
                c.present();
                c.ints.push(v);
            }
            Kind::Str => {
                self.expect(b'"')?;
                self.string_into(f.col)?;
            }
            Kind::Struct => {
                self.expect(b'{')?;
                if depth >= MAX_DEPTH {
                    return Err(());
                }
                self.cols[f.col].present();
                self.object(&f.children, depth + 1)?;
            }
        }
        Ok(())
    }

    /// The integer value of a number that is one (`n.int`); Err when it does not fit an i64.
    #[inline(always)]
    fn int_value(&self, n: &Num) -> R<i64> {
        if n.digits <= 18 {
            let v = n.mant as i64; // exact: below 10^18 < 2^63
            Ok(if n.neg { -v } else { v })
        } else {
            parse_int(&self.buf[n.start..self.pos])
        }
    }

    /// A number (checked against JSON's grammar), its digits gathered on the way.
    #[inline]
    fn number(&mut self) -> R<Num> {
        let b = self.buf;
        let start = self.pos;
        let mut p = start;
        let neg = p < b.len() && b[p] == b'-';
        if neg {
            p += 1;
        }
        if p >= b.len() {
            return Err(());
        }
        let mut mant = 0u64;
        let mut digits = 0usize;
        if b[p] == b'0' {
            p += 1;
            digits = 1;
        } else if b[p].is_ascii_digit() {
            p = digit_run(b, p, &mut mant, &mut digits);
        } else {
            return Err(());
        }
        let mut int = true;
        let mut exp10 = 0i64;
        if p < b.len() && b[p] == b'.' {
            int = false;
            p += 1;
            let d = p;
            p = digit_run(b, p, &mut mant, &mut digits);
            if p == d {
                return Err(());
            }
            exp10 = -((p - d) as i64);
        }
        if p < b.len() && (b[p] == b'e' || b[p] == b'E') {
            int = false;
            p += 1;
            let eneg = p < b.len() && b[p] == b'-';
            if p < b.len() && (b[p] == b'+' || b[p] == b'-') {
                p += 1;
            }
            let d = p;
            let mut e = 0i64;
            while p < b.len() && b[p].is_ascii_digit() {
                if e < 1_000_000_000 {
                    e = e * 10 + (b[p] - b'0') as i64; // saturates far outside every fast path's range
                }
                p += 1;
            }
            if p == d {
                return Err(());
            }
            exp10 = exp10.saturating_add(if eneg { -e } else { e });
        }
        // what follows a number must end it (`01`, `1x` are not numbers)
        if p < b.len() && !matches!(b[p], b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n') {
            return Err(());
        }
        self.pos = p;
        Ok(Num { start, int, neg, mant, digits, exp10 })
    }

    /// Past a string's closing quote (its opening one consumed), checking escapes, control characters,
    /// surrogates and UTF-8; whether it holds an escape.
    #[inline(always)]
    fn skip_string_body(&mut self) -> R<bool> {
        // the common case, inlined: plain ASCII up to the closing quote
        let p = next_special(self.buf, self.pos);
        if p < self.buf.len() && self.buf[p] == b'"' {
            self.pos = p + 1;
            return Ok(false);
        }
        self.skip_string_rest(p)
    }

    /// `skip_string_body` from `p`, the first byte after the opening quote (at `self.pos`) that is not plain.
    #[inline(never)]
    fn skip_string_rest(&mut self, from: usize) -> R<bool> {
        let b = self.buf;
        let start = self.pos;
        let mut p = from;
        let mut high = false;
        let mut escaped = false;
        loop {
            // plain ASCII text, 16 bytes at a time
            p = next_special(b, p);
            if p >= b.len() {
                return Err(());
            }
            match b[p] {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    p = escape(b, p + 1, &mut |_| {})?;
                }
                c if c >= 0x80 => {
                    high = true;
                    p += 1;
                }
                _ => return Err(()), // a raw control character
            }
        }
        if high && std::str::from_utf8(&b[start..p]).is_err() {
            return Err(());
        }
        self.pos = p + 1;
        Ok(escaped)
    }

    /// A declared string (opening quote consumed), decoded into column `col`.
    fn string_into(&mut self, col: usize) -> R<()> {
        let b = self.buf;
        let c = &mut self.cols[col];
        let out_start = c.data.len();
        let mut p = self.pos;
        let mut run = p;
        let mut high = false;
        loop {
            p = next_special(b, p);
            if p >= b.len() {
                return Err(());
            }
            match b[p] {
                b'"' => break,
                b'\\' => {
                    append(&mut c.data, b, run, p - run);
                    let data = &mut c.data;
                    p = escape(b, p + 1, &mut |ch: char| {
                        let mut tmp = [0u8; 4];
                        data.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
                    })?;
                    run = p;
                }
                x if x >= 0x80 => {
                    high = true;
                    p += 1;
                }
                _ => return Err(()),
            }
        }
        append(&mut c.data, b, run, p - run);
        // escapes only add whole characters: the text is valid exactly when its raw bytes are
        if high && std::str::from_utf8(&c.data[out_start..]).is_err() {
            return Err(());
        }
        c.present();
        c.offsets.push(c.data.len() as i64);
        self.pos = p + 1;
        Ok(())
    }

    /// Past any JSON value (checked, not kept).
    fn skip_value(&mut self, depth: u32) -> R<()> {
        match self.peek() {
            b'"' => {
                self.pos += 1;
                self.skip_string_body().map(|_| ())
            }
            b'{' => {
                if depth >= MAX_DEPTH {
                    return Err(());
                }
                self.pos += 1;
                self.ws();
                if self.peek() == b'}' {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.expect(b'"')?;
                    self.skip_string_body()?;
                    self.colon()?;
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.peek() {
                        b',' => {
                            self.pos += 1;
                            self.ws();
                        }
                        b'}' => {
                            self.pos += 1;
                            return Ok(());
                        }
                        _ => return Err(()),
                    }
                }
            }
            b'[' => {
                if depth >= MAX_DEPTH {
                    return Err(());
                }
                self.pos += 1;
                self.ws();
                if self.peek() == b']' {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.peek() {
                        b',' => {
                            self.pos += 1;
                            self.ws();
                        }
                        b']' => {
                            self.pos += 1;
                            return Ok(());
                        }
                        _ => return Err(()),
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => {
                let n = self.number()?;
                // only an exponent (or hundreds of digits) can make a number overflow to infinity; at most 19
                // digits times 10^±22 cannot
                let text = &self.buf[n.start..self.pos];
                let small = n.digits <= 19 && (-22..=22).contains(&n.exp10);
                if !n.int && !small && (text.len() > 300 || text.iter().any(|&c| c == b'e' || c == b'E')) {
                    parse_float(text)?;
                }
                Ok(())
            }
        }
    }
}

/// A string's text (between its quotes, already checked) with its escapes decoded.
fn unescape(raw: &[u8]) -> R<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut p = 0;
    while p < raw.len() {
        if raw[p] == b'\\' {
            p = escape(raw, p + 1, &mut |ch: char| {
                let mut tmp = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
            })?;
        } else {
            out.push(raw[p]);
            p += 1;
        }
    }
    Ok(out)
}

/// The bytes `b[at..at + len]`, at most 8 of them, as a little-endian word padded with zeros.
#[inline(always)]
fn word(b: &[u8], at: usize, len: usize) -> u64 {
    let n = len.min(8);
    if at + 8 <= b.len() {
        let w = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        if n == 8 { w } else { w & ((1u64 << (8 * n)) - 1) }
    } else {
        let mut w = 0u64;
        for (i, &x) in b[at..at + n].iter().enumerate() {
            w |= (x as u64) << (8 * i);
        }
        w
    }
}

#[inline]
fn hex4(b: &[u8], p: usize) -> R<u32> {
    if p + 4 > b.len() {
        return Err(());
    }
    let mut v = 0u32;
    for &x in &b[p..p + 4] {
        let d = match x {
            b'0'..=b'9' => x - b'0',
            b'a'..=b'f' => x - b'a' + 10,
            b'A'..=b'F' => x - b'A' + 10,
            _ => return Err(()),
        };
        v = v * 16 + d as u32;
    }
    Ok(v)
}

/// One escape (after its backslash at `p - 1`): the character to `out`, and the position after it.
#[inline]
fn escape(b: &[u8], p: usize, out: &mut dyn FnMut(char)) -> R<usize> {
    if p >= b.len() {
        return Err(());
    }
    let ch = match b[p] {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let hi = hex4(b, p + 1)?;
            if (0xD800..0xDC00).contains(&hi) {
                // a high surrogate: its low half must follow, escaped
                if p + 11 > b.len() || b[p + 5] != b'\\' || b[p + 6] != b'u' {
                    return Err(());
                }
                let lo = hex4(b, p + 7)?;
                if !(0xDC00..0xE000).contains(&lo) {
                    return Err(());
                }
                let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                out(char::from_u32(cp).ok_or(())?);
                return Ok(p + 11);
            }
            if (0xDC00..0xE000).contains(&hi) {
                return Err(()); // a lone low surrogate
            }
            out(char::from_u32(hi).ok_or(())?);
            return Ok(p + 5);
        }
        _ => return Err(()),
    };
    out(ch);
    Ok(p + 1)
}

/// An integer's text (already checked against the grammar) as an i64; Err when it does not fit.
#[inline]
fn parse_int(text: &[u8]) -> R<i64> {
    let (neg, digits) = if text[0] == b'-' { (true, &text[1..]) } else { (false, text) };
    if digits.len() > 19 {
        return Err(());
    }
    let mut v: u64 = 0;
    for &d in digits {
        v = v.checked_mul(10).ok_or(())?.checked_add((d - b'0') as u64).ok_or(())?;
    }
    if neg {
        if v > (i64::MAX as u64) + 1 {
            return Err(());
        }
        Ok((v as i64).wrapping_neg())
    } else {
        i64::try_from(v).map_err(|_| ())
    }
}

/// A number's text (already checked against JSON's grammar) as the nearest f64; Err when it overflows.
#[inline]
fn parse_float(text: &[u8]) -> R<f64> {
    // SAFETY: the grammar check admitted only ASCII digits, signs, '.', 'e' and 'E'
    let s = unsafe { std::str::from_utf8_unchecked(text) };
    let v: f64 = s.parse().map_err(|_| ())?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(())
    }
}

pub(crate) fn pack_bits(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; bytes.len().div_ceil(8)];
    for (i, chunk) in bytes.chunks(8).enumerate() {
        let mut v = 0u8;
        for (j, &x) in chunk.iter().enumerate() {
            v |= (x & 1) << j;
        }
        out[i] = v;
    }
    out
}

/// Arrow's string views of the strings at `offsets` in `data` (one data buffer): 16 bytes each, the length
/// and either the text itself (up to 12 bytes) or its first 4 bytes, buffer 0 and its offset. Polars keeps
/// its strings so, and takes these without converting them.
pub(crate) fn views(offsets: &[i64], data: &[u8], out: &mut [u8]) {
    let n = offsets.len() - 1;
    for i in 0..n {
        let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
        let len = end - start;
        let v = &mut out[i * 16..i * 16 + 16];
        v[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        if len <= 12 {
            v[4..4 + len].copy_from_slice(&data[start..end]);
        } else {
            v[4..8].copy_from_slice(&data[start..start + 4]);
            // v[8..12]: buffer 0
            v[12..16].copy_from_slice(&(start as u32).to_le_bytes());
        }
    }
}

pub(crate) fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: plain numbers, read as their bytes
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

fn decode_block(buf: &[u8], plan: &Plan) -> Option<(usize, Vec<Column>)> {
    let mut parser = Parser { buf, pos: 0, cols: Vec::with_capacity(plan.kinds.len()) };
    let guess = buf.len() / 64 + 16;
    for k in &plan.kinds {
        let mut c = Column::default(); // `valid` only grows once the column has a null
        match k {
            Kind::Int | Kind::Bool => c.ints.reserve(guess),
            Kind::Float => c.floats.reserve(guess),
            Kind::Str => {
                c.offsets.reserve(guess + 1);
                c.offsets.push(0);
            }
            Kind::Struct => {}
        }
        parser.cols.push(c);
    }
    let n = parser.records(&plan.fields).ok()?;
    // string views address their text with u32 offsets (an 8 MB block's strings are far from 4 GB)
    if n == 0 || parser.cols.iter().any(|c| c.data.len() > u32::MAX as usize) {
        return None;
    }
    Some((n, parser.cols))
}

/// The bytes of a block handed to `decode` or `decode_arrow`: any C-contiguous byte buffer, read in place
/// for as long as `blob` is held. The caller must not change a mutable buffer meanwhile.
pub(crate) fn block_bytes(blob: &PyBuffer<u8>) -> PyResult<&[u8]> {
    if !blob.is_c_contiguous() {
        return Err(PyValueError::new_err("decode: the block must be a contiguous byte buffer"));
    }
    let n = blob.len_bytes();
    // SAFETY: the buffer is held (and its memory pinned) while `blob` lives, which the returned slice's
    // lifetime is tied to; a C-contiguous buffer of u8 is `len_bytes` bytes from `buf_ptr`
    Ok(if n == 0 { &[] } else { unsafe { std::slice::from_raw_parts(blob.buf_ptr() as *const u8, n) } })
}

/// Decode a block: None when not sure, else (rows, [(validity bits or None, buffers...) per column in
/// pre-order]). Int columns come as i64 values (the caller narrows them), booleans as packed bits, strings as
/// Arrow string views and UTF-8 data.
///
/// `blob` is any C-contiguous byte buffer (bytes, bytearray, a memoryview of one), read in place, not copied.
/// The caller must not change a mutable buffer during the call (it is read with the GIL released); nothing of
/// it is kept afterwards (every output buffer is new).
#[pyfunction]
fn decode<'py>(py: Python<'py>, blob: PyBuffer<u8>, plan: &Bound<'py, Plan>) -> PyResult<Option<(usize, Vec<Bound<'py, PyTuple>>)>> {
    let buf = block_bytes(&blob)?;
    let plan_ref: &Plan = plan.get();
    let out = py.detach(|| decode_block(buf, plan_ref));
    let Some((n, cols)) = out else { return Ok(None) };
    let mut result = Vec::with_capacity(cols.len());
    for (c, kind) in cols.iter().zip(plan_ref.kinds.iter()) {
        let validity: Option<Bound<'py, PyBytes>> =
            if c.nulls == 0 { None } else { Some(PyBytes::new(py, &pack_bits(&c.valid))) };
        let bufs: Vec<Bound<'py, PyAny>> = match kind {
            Kind::Int => vec![PyBytes::new(py, as_bytes(&c.ints)).into_any()],
            Kind::Float => vec![PyBytes::new(py, as_bytes(&c.floats)).into_any()],
            Kind::Bool => {
                let bits: Vec<u8> = c.ints.iter().map(|&v| v as u8).collect();
                vec![PyBytes::new(py, &pack_bits(&bits)).into_any()]
            }
            Kind::Str => {
                let n = c.offsets.len() - 1;
                let v = PyBytes::new_with(py, n * 16, |out| {
                    views(&c.offsets, &c.data, out);
                    Ok(())
                })?;
                vec![v.into_any(), PyBytes::new(py, &c.data).into_any()]
            }
            Kind::Struct => vec![],
        };
        let mut items: Vec<Bound<'py, PyAny>> = vec![validity.map_or_else(|| py.None().into_bound(py), |v| v.into_any())];
        items.extend(bufs);
        result.push(PyTuple::new(py, items)?);
    }
    Ok(Some((n, result)))
}

#[pymodule]
fn sluice_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Plan>()?;
    m.add_function(wrap_pyfunction!(decode, m)?)?;
    m.add_function(wrap_pyfunction!(arrow::decode_arrow, m)?)?;
    m.add_function(wrap_pyfunction!(arrow::frame, m)?)?;
    m.add_function(wrap_pyfunction!(arrow::buffers, m)?)?;
    m.add_class::<arrow::Export>()?;
    m.add_class::<arrow::Buffer>()?;
    m.add_function(wrap_pyfunction!(wm::watermarks, m)?)?;
    m.add_function(wrap_pyfunction!(wm::window_watermarks, m)?)?;
    m.add_function(wrap_pyfunction!(wm::any_nan, m)?)?;
    m.add_function(wrap_pyfunction!(asof::asof_match, m)?)?;
    m.add_class::<panes::Panes>()?;
    m.add_class::<sessions::SessionKernel>()?;
    Ok(())
}
