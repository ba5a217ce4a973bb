//! Fixed-window panes kept natively: the fast path of Sluice's tumbling and sliding window operator.
//!
//! The operator (src/sluice/operators/window.py, `FixedWindowOperator`) keeps one partial aggregate per
//! (key, pane), panes being the gcd of size and slide. This kernel does the same per record in a hash map,
//! for the cases it covers — one key (text or integer), aggregates count / sum / mean / min / max of
//! Float64 values and percentiles (DDSketch bucket counts; Python computes the buckets) — and leaves every record that missed a window (late, or partly late under a sliding
//! window) to the Polars path, which also holds whatever this kernel does not cover. The rules are the
//! operator's, written out per record:
//!
//! pane = floor((t - off) / g) * g + off
//! s0   = the earliest window start whose window holds the pane
//! lo   = the earliest window start still open for the record, judged against the watermark before it
//!        (its own `wm`, less the allowed lateness; `floor` is what was final when an ended input resumed)
//!
//! A record with lo == s0 missed nothing and is folded into its (key, pane); any other is returned to the
//! caller. lo > s0 exactly when the window starting at s0 has ended: max(wm - lateness, floor) >= s0 + size
//! (the operator's lo is ceil((wp - size + 1 - off) / slide) * slide + off, and s0 - off is a multiple of
//! the slide; its third bound, pane - 2 * size, is always below s0 + size). Values are NaN-free (the caller checks); a NaN here is a null (the caller's null → NaN).


use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::fx::FxMap;

/// One aggregate's partial: every kind keeps `n` (rows, or non-null values); sum/mean add `s`, min/max `m`.
#[derive(Clone, Copy)]
enum Agg {
    Rows,
    Sum(usize), // the value column's index
    Mean(usize),
    Min(usize),
    Max(usize),
}

/// floor division and its ceiling twin for a positive divisor, as Polars' `//` on Int64
#[inline]
fn ceil_div(a: i64, b: i64) -> i64 {
    -((-a).div_euclid(b))
}

/// A read-only view of a contiguous buffer's bytes as `T`s (numpy arrays and Arrow buffers are aligned).
fn view<'a, T: Copy>(buf: &'a PyBuffer<u8>, what: &str) -> PyResult<&'a [T]> {
    let bytes = buf.len_bytes();
    let ptr = buf.buf_ptr() as *const T;
    if !buf.is_c_contiguous() || bytes % std::mem::size_of::<T>() != 0 || (ptr as usize) % std::mem::align_of::<T>() != 0 {
        return Err(PyValueError::new_err(format!("{what}: not a contiguous, aligned buffer")));
    }
    // SAFETY: the buffer is held (and kept alive by the caller's PyBuffer) for the slice's lifetime,
    // contiguous, aligned and a whole number of T; the values are plain integers and floats.
    Ok(unsafe { std::slice::from_raw_parts(ptr, bytes / std::mem::size_of::<T>()) })
}

enum Keys<'a> {
    /// Arrow string views: 16 bytes each, the length then the text itself when up to 12 bytes, else its
    /// first 4 bytes, the data buffer's index and the offset in it
    Views { views: &'a [u128], bufs: Vec<&'a [u8]> },
    Int(&'a [i64]),
}

#[pyclass(module = "sluice_native")]
pub struct Panes {
    size: i64,
    slide: i64,
    off: i64,
    g: i64,
    aggs: Vec<Agg>,
    nf: usize, // float partials per slot (one per sum/min/max)
    text: bool,
    // keys, interned to codes: text up to 15 bytes packed in an integer (no pointer to follow), longer boxed
    short: FxMap<u128, u32>,
    skeys: FxMap<Box<[u8]>, u32>,
    stext: Vec<Box<[u8]>>,
    ikeys: FxMap<i64, u32>,
    ivals: Vec<i64>,
    last: Vec<(i64, u32)>, // per key code: the pane and slot of its latest record (most records hit it)
    // one slot per (key code, pane)
    map: FxMap<(u32, i64), u32>,
    slot_key: Vec<u32>,
    slot_pane: Vec<i64>,
    ints: Vec<i64>,   // aggs.len() per slot: each aggregate's n
    floats: Vec<f64>, // nf per slot
    quantiles: Vec<f64>,     // per percentile sketch: its q
    sk: Vec<FxMap<i64, i64>>, // quantiles.len() per slot: bucket -> records (DDSketch buckets, made by Python)
}

/// No bucket: the value was null or NaN.
const NO_BUCKET: i64 = i64::MIN;

impl Panes {
    fn new_slot(&mut self, code: u32, pane: i64) -> u32 {
        let s = self.slot_key.len() as u32;
        self.slot_key.push(code);
        self.slot_pane.push(pane);
        self.ints.extend(std::iter::repeat_n(0, self.aggs.len()));
        for a in &self.aggs {
            match a {
                Agg::Rows => {}
                Agg::Sum(_) | Agg::Mean(_) => self.floats.push(0.0),
                Agg::Min(_) => self.floats.push(f64::INFINITY),
                Agg::Max(_) => self.floats.push(f64::NEG_INFINITY),
            }
        }
        self.sk.extend((0..self.quantiles.len()).map(|_| FxMap::default()));
        self.map.insert((code, pane), s);
        s
    }

    /// The code of the text in string view `v` (a short text is its own view: no copy, one integer key).
    fn code_view(&mut self, v: u128, bufs: &[&[u8]]) -> u32 {
        let len = (v as u32) as usize;
        if len <= 12 {
            if let Some(&c) = self.short.get(&v) {
                return c;
            }
            let c = self.new_code();
            self.stext.push(v.to_le_bytes()[4..4 + len].into());
            self.short.insert(v, c);
            return c;
        }
        let (buf, at) = ((v >> 64) as u32 as usize, (v >> 96) as u32 as usize);
        let k = &bufs[buf][at..at + len];
        if let Some(&c) = self.skeys.get(k) {
            return c;
        }
        let c = self.new_code();
        self.stext.push(k.into());
        self.skeys.insert(k.into(), c);
        c
    }

    /// Keys are interned for as long as they hold a pane: when the codes outnumber the keys held by more
    /// than twice (and 4,096), the keys without a pane are forgotten and the rest renumbered, so that a
    /// stream of ever-new keys does not grow the kernel. Whether it renumbered them.
    fn forget_keys(&mut self) -> bool {
        let held = {
            let mut seen = vec![false; self.last.len()];
            self.slot_key.iter().filter(|&&c| !std::mem::replace(&mut seen[c as usize], true)).count()
        };
        if self.last.len() <= 2 * held + 4096 {
            return false;
        }
        let mut renumbered = vec![u32::MAX; self.last.len()];
        let (mut stext, mut ivals) = (Vec::with_capacity(held), Vec::with_capacity(held));
        self.short.clear();
        self.skeys.clear();
        self.ikeys.clear();
        for c in self.slot_key.iter_mut() {
            let old = *c as usize;
            if renumbered[old] == u32::MAX {
                let new = if self.text { stext.len() } else { ivals.len() } as u32;
                renumbered[old] = new;
                if self.text {
                    let k: Box<[u8]> = std::mem::take(&mut self.stext[old]);
                    if k.len() <= 12 {
                        // a short key is interned by its string view: the length, then the text
                        let mut v = [0u8; 16];
                        v[..4].copy_from_slice(&(k.len() as u32).to_le_bytes());
                        v[4..4 + k.len()].copy_from_slice(&k);
                        self.short.insert(u128::from_le_bytes(v), new);
                    } else {
                        self.skeys.insert(k.clone(), new);
                    }
                    stext.push(k);
                } else {
                    self.ikeys.insert(self.ivals[old], new);
                    ivals.push(self.ivals[old]);
                }
            }
            *c = renumbered[old];
        }
        self.stext = stext;
        self.ivals = ivals;
        let codes = if self.text { self.stext.len() } else { self.ivals.len() };
        self.last = vec![(i64::MIN, 0); codes];
        true
    }

    fn new_code(&mut self) -> u32 {
        self.last.push((i64::MIN, 0));
        (self.last.len() - 1) as u32
    }

    fn code_int(&mut self, k: i64) -> u32 {
        if let Some(&c) = self.ikeys.get(&k) {
            return c;
        }
        let c = self.new_code();
        self.ivals.push(k);
        self.ikeys.insert(k, c);
        c
    }

    #[allow(clippy::too_many_arguments)]
    fn fold(&mut self, keys: &Keys, t: &[i64], wm: &[i64], vals: &[&[f64]], buckets: &[&[i64]], lateness: i64, floor: i64,
            skipped: &mut Vec<u32>) {
        let ns = self.quantiles.len();
        let (size, slide, off, g) = (self.size, self.slide, self.off, self.g);
        let na = self.aggs.len();
        let nf = self.nf;
        // successive records mostly share a pane: divide only when the pane changes
        let (mut pane, mut pane_end, mut first_end) = (i64::MAX, i64::MIN, i64::MIN);
        for i in 0..t.len() {
            if t[i] < pane || t[i] >= pane_end {
                pane = (t[i] - off).div_euclid(g) * g + off;
                pane_end = pane + g;
                first_end = ceil_div(pane + (g - size - off), slide) * slide + off + size; // of its first window
            }
            // the operator's lo (the first start not late) exceeds s0 exactly when the first window has
            // ended by the watermark before the record: max(W - lateness, floor) >= s0 + size
            if (wm[i] - lateness).max(floor) >= first_end {
                skipped.push(i as u32);
                continue;
            }
            let code = match keys {
                Keys::Views { views, bufs } => self.code_view(views[i], bufs),
                Keys::Int(v) => self.code_int(v[i]),
            };
            let (last_pane, last_slot) = self.last[code as usize];
            let slot = if last_pane == pane {
                last_slot
            } else {
                let s = match self.map.get(&(code, pane)) {
                    Some(&s) => s,
                    None => self.new_slot(code, pane),
                };
                self.last[code as usize] = (pane, s);
                s
            } as usize;
            let (ib, mut fb) = (slot * na, slot * nf);
            for (j, a) in self.aggs.iter().enumerate() {
                match *a {
                    Agg::Rows => self.ints[ib + j] += 1,
                    Agg::Sum(v) | Agg::Mean(v) => {
                        let x = vals[v][i];
                        if !x.is_nan() {
                            self.floats[fb] += x;
                            self.ints[ib + j] += 1;
                        }
                        fb += 1;
                    }
                    Agg::Min(v) | Agg::Max(v) => {
                        let x = vals[v][i];
                        if !x.is_nan() {
                            let m = &mut self.floats[fb];
                            *m = if matches!(a, Agg::Min(_)) { m.min(x) } else { m.max(x) };
                            self.ints[ib + j] += 1;
                        }
                        fb += 1;
                    }
                }
            }
            for (q, b) in buckets.iter().enumerate() {
                if b[i] != NO_BUCKET {
                    *self.sk[slot * ns + q].entry(b[i]).or_insert(0) += 1;
                }
            }
        }
    }

    /// Fold slot `s`'s partials into output row `o` of (ints, floats).
    fn merge_into(&self, s: usize, o: usize, ints: &mut [i64], floats: &mut [f64], sk: &mut [FxMap<i64, i64>]) {
        let (na, nf, ns) = (self.aggs.len(), self.nf, self.quantiles.len());
        for q in 0..ns {
            let into = &mut sk[o * ns + q];
            for (&b, &c) in &self.sk[s * ns + q] {
                *into.entry(b).or_insert(0) += c;
            }
        }
        let mut f = 0;
        for (j, a) in self.aggs.iter().enumerate() {
            ints[o * na + j] += self.ints[s * na + j];
            match a {
                Agg::Rows => {}
                Agg::Sum(_) | Agg::Mean(_) => {
                    floats[o * nf + f] += self.floats[s * nf + f];
                    f += 1;
                }
                Agg::Min(_) => {
                    floats[o * nf + f] = floats[o * nf + f].min(self.floats[s * nf + f]);
                    f += 1;
                }
                Agg::Max(_) => {
                    floats[o * nf + f] = floats[o * nf + f].max(self.floats[s * nf + f]);
                    f += 1;
                }
            }
        }
    }

    fn empty_floats(&self, rows: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(rows * self.nf);
        for _ in 0..rows {
            for a in &self.aggs {
                match a {
                    Agg::Rows => {}
                    Agg::Sum(_) | Agg::Mean(_) => out.push(0.0),
                    Agg::Min(_) => out.push(f64::INFINITY),
                    Agg::Max(_) => out.push(f64::NEG_INFINITY),
                }
            }
        }
        out
    }

    /// [rows, keys (text: Arrow string views and data; else int64), times, then per aggregate: partials
    /// (`finish` false: its n, then for a sum/mean/min/max the float partial and its validity bits or None)
    /// or its result (`finish` true: a count's n; a sum, mean, min or max and its validity bits or None)]:
    /// the columns Python builds a frame from, in the order of `order` (indices into the other arguments).
    /// A sum, mean, min or max over no value is null.
    #[allow(clippy::too_many_arguments)]
    ///
    /// Then per percentile sketch: `finish`: the bucket at rank max(ceil(q · count), 1) of the window's
    /// buckets in order, and its validity bits or None (null: no value); else its (row, bucket, count)
    /// rows as three int64 columns, rows being positions in `order`.
    fn columns(&self, order: &[u32], codes: &[u32], times: &[i64], ints: &[i64], floats: &[f64], sk: &[FxMap<i64, i64>],
               finish: bool) -> Vec<Option<Vec<u8>>> {
        let rows = order.len();
        let (na, nf) = (self.aggs.len(), self.nf);
        let mut out: Vec<Option<Vec<u8>>> = Vec::new();
        if self.text {
            let mut offsets = Vec::with_capacity(rows + 1);
            let mut data = Vec::new();
            offsets.push(0i64);
            for &r in order {
                data.extend_from_slice(&self.stext[codes[r as usize] as usize]);
                offsets.push(data.len() as i64);
            }
            let mut v = vec![0u8; rows * 16];
            crate::views(&offsets, &data, &mut v);
            out.push(Some(v));
            out.push(Some(data));
        } else {
            let keys: Vec<i64> = order.iter().map(|&r| self.ivals[codes[r as usize] as usize]).collect();
            out.push(Some(as_bytes(&keys).to_vec()));
        }
        let t: Vec<i64> = order.iter().map(|&r| times[r as usize]).collect();
        out.push(Some(as_bytes(&t).to_vec()));
        let mut f = 0;
        for (j, a) in self.aggs.iter().enumerate() {
            let n = |r: u32| ints[r as usize * na + j];
            if !finish || matches!(a, Agg::Rows) {
                let col: Vec<i64> = order.iter().map(|&r| n(r)).collect();
                out.push(Some(as_bytes(&col).to_vec()));
            }
            if matches!(a, Agg::Rows) {
                continue;
            }
            let x = |r: u32| floats[r as usize * nf + f];
            let col: Vec<f64> = if finish && matches!(a, Agg::Mean(_)) {
                order.iter().map(|&r| if n(r) > 0 { x(r) / n(r) as f64 } else { 0.0 }).collect()
            } else {
                order.iter().map(|&r| x(r)).collect()
            };
            out.push(Some(as_bytes(&col).to_vec()));
            let valid: Vec<u8> = order.iter().map(|&r| (n(r) > 0) as u8).collect();
            let partial_sum = !finish && matches!(a, Agg::Sum(_) | Agg::Mean(_)); // a sum's partial is 0.0 over no value
            if partial_sum || valid.iter().all(|&v| v == 1) {
                out.push(None);
            } else {
                out.push(Some(crate::pack_bits(&valid)));
            }
            f += 1;
        }
        let ns = self.quantiles.len();
        for (q, &quantile) in self.quantiles.iter().enumerate() {
            if finish {
                let mut picked = Vec::with_capacity(rows);
                let mut valid = Vec::with_capacity(rows);
                let mut sorted: Vec<(i64, i64)> = Vec::new();
                for &r in order {
                    sorted.clear();
                    sorted.extend(sk[r as usize * ns + q].iter().map(|(&b, &c)| (b, c)));
                    sorted.sort_unstable();
                    let total: i64 = sorted.iter().map(|&(_, c)| c).sum();
                    let rank = (total as f64 * quantile).ceil().max(1.0);
                    let mut cum = 0i64;
                    let pick = sorted.iter().find(|&&(_, c)| {
                        cum += c;
                        cum as f64 >= rank
                    });
                    picked.push(pick.map_or(0, |&(b, _)| b));
                    valid.push(pick.is_some() as u8);
                }
                out.push(Some(as_bytes(&picked).to_vec()));
                if valid.iter().all(|&v| v == 1) {
                    out.push(None);
                } else {
                    out.push(Some(crate::pack_bits(&valid)));
                }
            } else {
                let (mut at, mut bs, mut cs) = (Vec::new(), Vec::new(), Vec::new());
                for (pos, &r) in order.iter().enumerate() {
                    let mut entries: Vec<(i64, i64)> = sk[r as usize * ns + q].iter().map(|(&b, &c)| (b, c)).collect();
                    entries.sort_unstable();
                    for (b, c) in entries {
                        at.push(pos as i64);
                        bs.push(b);
                        cs.push(c);
                    }
                }
                for col in [&at, &bs, &cs] {
                    out.push(Some(as_bytes(col).to_vec()));
                }
            }
        }
        out
    }

    /// `close`'s work (no Python object is touched): the rows, and the buffers of the columns (None: no validity).
    fn close_windows(&mut self, after: i64, upto: i64, finish: bool) -> (usize, Vec<Option<Vec<u8>>>) {
        let (size, slide, off, g) = (self.size, self.slide, self.off, self.g);
        let (na, nf, ns) = (self.aggs.len(), self.nf, self.quantiles.len());
        let mut index: FxMap<(u32, i64), u32> = FxMap::default();
        let (mut codes, mut starts, mut ints, mut floats) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut sk: Vec<FxMap<i64, i64>> = Vec::new();
        // panes merge into their windows in pane order: a window's float sums then do not depend on the order
        // its panes were first seen (a run restored from a checkpoint gives the same bits as one that was not)
        // a pane's windows end in (pane, pane + size]: only panes whose span meets (after, upto] can close one
        let mut by_pane: Vec<usize> =
            (0..self.slot_key.len()).filter(|&s| self.slot_pane[s] < upto && self.slot_pane[s] + size > after).collect();
        by_pane.sort_unstable_by_key(|&s| (self.slot_pane[s], self.slot_key[s]));
        let keep: Vec<bool> = self.slot_pane.iter().map(|&pane| pane + size > upto).collect();
        for s in by_pane {
            let (code, pane) = (self.slot_key[s], self.slot_pane[s]);
            let mut ws = ceil_div(pane + (g - size - off), slide) * slide + off;
            while ws <= pane {
                let we = ws + size;
                if we > after && we <= upto {
                    let o = match index.get(&(code, ws)) {
                        Some(&o) => o as usize,
                        None => {
                            let o = codes.len();
                            index.insert((code, ws), o as u32);
                            codes.push(code);
                            starts.push(ws);
                            ints.extend(std::iter::repeat_n(0, na));
                            floats.extend(self.empty_floats(1));
                            sk.extend((0..ns).map(|_| FxMap::default()));
                            o
                        }
                    };
                    self.merge_into(s, o, &mut ints, &mut floats, &mut sk);
                }
                ws += slide;
            }
        }
        let order = self.sorted(&codes, &starts);
        let out = self.columns(&order, &codes, &starts, &ints, &floats, &sk, finish);
        if keep.iter().any(|k| !k) {
            let mut w = 0;
            let mut moved = vec![u32::MAX; keep.len()]; // each kept slot's new number
            for (s, &k) in keep.iter().enumerate() {
                if !k {
                    continue;
                }
                moved[s] = w as u32;
                self.slot_key[w] = self.slot_key[s];
                self.slot_pane[w] = self.slot_pane[s];
                self.ints.copy_within(s * na..(s + 1) * na, w * na);
                self.floats.copy_within(s * nf..(s + 1) * nf, w * nf);
                for q in 0..ns {
                    self.sk.swap(s * ns + q, w * ns + q);
                }
                w += 1;
            }
            self.slot_key.truncate(w);
            self.slot_pane.truncate(w);
            self.ints.truncate(w * na);
            self.floats.truncate(w * nf);
            self.sk.truncate(w * ns);
            self.last.fill((i64::MIN, 0));
            if self.forget_keys() {
                self.map.clear();
                for s in 0..w {
                    self.map.insert((self.slot_key[s], self.slot_pane[s]), s as u32);
                }
            } else {
                // the keys kept their codes: drop the forgotten slots and renumber the rest in place
                self.map.retain(|_, slot| {
                    let m = moved[*slot as usize];
                    *slot = m;
                    m != u32::MAX
                });
            }
        }
        (order.len(), out)
    }

    /// [rows, column buffers as bytes (None: none)], as `close` and `dump` return them.
    fn as_list<'py>(py: Python<'py>, rows: usize, cols: Vec<Option<Vec<u8>>>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        out.append(rows)?;
        for c in cols {
            match c {
                Some(b) => out.append(PyBytes::new(py, &b))?,
                None => out.append(py.None())?,
            }
        }
        Ok(out)
    }

    /// Rows ordered by (time, key): window start then key, as the operator emits them.
    fn sorted(&self, codes: &[u32], times: &[i64]) -> Vec<u32> {
        let mut order: Vec<u32> = (0..codes.len() as u32).collect();
        if self.text {
            order.sort_unstable_by(|&a, &b| {
                let (a, b) = (a as usize, b as usize);
                times[a].cmp(&times[b]).then_with(|| self.stext[codes[a] as usize].cmp(&self.stext[codes[b] as usize]))
            });
        } else {
            order.sort_unstable_by_key(|&r| (times[r as usize], self.ivals[codes[r as usize] as usize]));
        }
        order
    }
}

fn as_bytes<T>(v: &[T]) -> &[u8] {
    // SAFETY: plain integers and floats, read as their bytes
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

#[pymethods]
impl Panes {
    /// `aggs`: per aggregate (kind, value column index): kind 0 rows, 1 sum, 2 min, 3 max, 4 mean.
    #[new]
    /// `quantiles`: one per percentile sketch, whose buckets `ingest` takes.
    #[allow(clippy::too_many_arguments)]
    fn py_new(size: i64, slide: i64, off: i64, g: i64, aggs: Vec<(u8, usize)>, quantiles: Vec<f64>, text: bool) -> PyResult<Self> {
        if size <= 0 || slide <= 0 || g <= 0 {
            return Err(PyValueError::new_err("window size, slide and pane must be positive"));
        }
        let aggs: Vec<Agg> = aggs
            .into_iter()
            .map(|(k, v)| match k {
                0 => Ok(Agg::Rows),
                1 => Ok(Agg::Sum(v)),
                2 => Ok(Agg::Min(v)),
                3 => Ok(Agg::Max(v)),
                4 => Ok(Agg::Mean(v)),
                _ => Err(PyValueError::new_err(format!("unknown aggregate kind {k}"))),
            })
            .collect::<PyResult<_>>()?;
        let nf = aggs.iter().filter(|a| !matches!(a, Agg::Rows)).count();
        Ok(Panes {
            size,
            slide,
            off,
            g,
            aggs,
            nf,
            text,
            short: FxMap::default(),
            skeys: FxMap::default(),
            stext: Vec::new(),
            ikeys: FxMap::default(),
            ivals: Vec::new(),
            last: Vec::new(),
            map: FxMap::default(),
            slot_key: Vec::new(),
            slot_pane: Vec::new(),
            ints: Vec::new(),
            floats: Vec::new(),
            quantiles,
            sk: Vec::new(),
        })
    }

    /// Fold a batch in. `keys`: (views, [data buffers]) of an Arrow string view array, or the int64 keys; `t`, `wm`: int64; `vals`: float64 columns.
    /// Every buffer is given as bytes-like. Returns the rows left to the caller (int32 indices), or None.
    #[allow(clippy::too_many_arguments)]
    fn ingest<'py>(&mut self, py: Python<'py>, keys: &Bound<'py, PyAny>, t: &Bound<'py, PyAny>, wm: &Bound<'py, PyAny>,
                   vals: Vec<Bound<'py, PyAny>>, buckets: Vec<Bound<'py, PyAny>>, lateness: i64, floor: i64)
                   -> PyResult<Option<Bound<'py, PyBytes>>> {
        if buckets.len() != self.quantiles.len() {
            return Err(PyValueError::new_err("ingest: one bucket column per percentile sketch"));
        }
        let bb: Vec<PyBuffer<u8>> = buckets.iter().map(PyBuffer::<u8>::get).collect::<PyResult<_>>()?;
        let bv: Vec<&[i64]> = bb.iter().map(|b| view(b, "buckets")).collect::<PyResult<_>>()?;
        let tb = PyBuffer::<u8>::get(t)?;
        let wb = PyBuffer::<u8>::get(wm)?;
        let vb: Vec<PyBuffer<u8>> = vals.iter().map(PyBuffer::<u8>::get).collect::<PyResult<_>>()?;
        // text: (views, [data buffers]); else the int64 keys
        let kb: Vec<PyBuffer<u8>> = if self.text {
            let (v, d): (Bound<'py, PyAny>, Vec<Bound<'py, PyAny>>) = keys.extract()?;
            std::iter::once(&v).chain(d.iter()).map(PyBuffer::get).collect::<PyResult<_>>()?
        } else {
            vec![PyBuffer::get(keys)?]
        };
        let tv: &[i64] = view(&tb, "times")?;
        let wv: &[i64] = view(&wb, "watermarks")?;
        let vv: Vec<&[f64]> = vb.iter().map(|b| view(b, "values")).collect::<PyResult<_>>()?;
        let n = tv.len();
        let k = if self.text {
            let bufs: Vec<&[u8]> = kb[1..].iter().map(|b| view(b, "key data")).collect::<PyResult<_>>()?;
            Keys::Views { views: view(&kb[0], "key views")?, bufs }
        } else {
            Keys::Int(view(&kb[0], "keys")?)
        };
        let key_rows = match &k {
            Keys::Views { views, .. } => views.len(),
            Keys::Int(v) => v.len(),
        };
        if wv.len() != n || key_rows != n || vv.iter().any(|v| v.len() != n) || bv.iter().any(|b| b.len() != n) {
            return Err(PyValueError::new_err("ingest: columns of different lengths"));
        }
        if let Keys::Views { views, bufs } = &k {
            let bad = |&v: &u128| {
                let len = (v as u32) as u64;
                let (buf, at) = ((v >> 64) as u32 as usize, (v >> 96) as u32 as u64);
                len > 12 && bufs.get(buf).is_none_or(|b| at + len > b.len() as u64)
            };
            if views.iter().any(bad) {
                return Err(PyValueError::new_err("ingest: a string view outside its buffers"));
            }
        }
        let mut skipped = Vec::new();
        py.detach(|| self.fold(&k, tv, wv, &vv, &bv, lateness, floor, &mut skipped));
        Ok(if skipped.is_empty() { None } else { Some(PyBytes::new(py, as_bytes(&skipped))) })
    }

    /// Windows ending in (after, upto], one row per (key, window start) with the merged partials, ordered
    /// by (start, key); and drop the panes whose every window has now closed.
    /// `finish`: the aggregates' results instead of their partials (see `columns`).
    fn close<'py>(&mut self, py: Python<'py>, after: i64, upto: i64, finish: bool) -> PyResult<Bound<'py, PyList>> {
        // the work runs with the GIL released (the parse threads' Python goes on meanwhile); only the handing
        // over of its buffers needs it
        let (rows, cols) = py.detach(|| self.close_windows(after, upto, finish));
        Self::as_list(py, rows, cols)
    }

    /// Fold in partials kept elsewhere (a checkpoint's state rows): `keys` as in `ingest`, `panes` int64,
    /// then per aggregate its n (int64) and, for a sum, mean, min or max, its float partial (float64, NaN:
    /// none), then per percentile sketch its (row, bucket, count) int64 columns.
    fn load<'py>(&mut self, keys: &Bound<'py, PyAny>, panes: &Bound<'py, PyAny>, parts: Vec<Bound<'py, PyAny>>) -> PyResult<()> {
        let kb: Vec<PyBuffer<u8>> = if self.text {
            let (v, d): (Bound<'py, PyAny>, Vec<Bound<'py, PyAny>>) = keys.extract()?;
            std::iter::once(&v).chain(d.iter()).map(PyBuffer::get).collect::<PyResult<_>>()?
        } else {
            vec![PyBuffer::get(keys)?]
        };
        let pb = PyBuffer::<u8>::get(panes)?;
        let pv: &[i64] = view(&pb, "panes")?;
        let bufs: Vec<PyBuffer<u8>> = parts.iter().map(PyBuffer::<u8>::get).collect::<PyResult<_>>()?;
        let (na, nf, ns) = (self.aggs.len(), self.nf, self.quantiles.len());
        let want = na + nf + 3 * ns;
        if bufs.len() != want {
            return Err(PyValueError::new_err(format!("load: {want} partial columns expected, got {}", bufs.len())));
        }
        let n = pv.len();
        let text_bufs: Vec<&[u8]> = if self.text { kb[1..].iter().map(|b| view(b, "key data")).collect::<PyResult<_>>()? } else { vec![] };
        let views: &[u128] = if self.text { view(&kb[0], "key views")? } else { &[] };
        let ints_in: &[i64] = if self.text { &[] } else { view(&kb[0], "keys")? };
        if (self.text && views.len() != n) || (!self.text && ints_in.len() != n) {
            return Err(PyValueError::new_err("load: keys and panes of different lengths"));
        }
        let mut slots = Vec::with_capacity(n);
        for r in 0..n {
            let code = if self.text {
                let v = views[r];
                let (len, buf, at) = ((v as u32) as u64, (v >> 64) as u32 as usize, (v >> 96) as u32 as u64);
                if len > 12 && text_bufs.get(buf).is_none_or(|b| at + len > b.len() as u64) {
                    return Err(PyValueError::new_err("load: a string view outside its buffers"));
                }
                self.code_view(v, &text_bufs)
            } else {
                self.code_int(ints_in[r])
            };
            let slot = match self.map.get(&(code, pv[r])) {
                Some(&s) => s,
                None => self.new_slot(code, pv[r]),
            } as usize;
            slots.push(slot);
        }
        let mut at = 0;
        let mut f = 0;
        for j in 0..na {
            let counts: &[i64] = view(&bufs[at], "counts")?;
            at += 1;
            let a = self.aggs[j];
            let xs: Option<&[f64]> = if matches!(a, Agg::Rows) { None } else { at += 1; Some(view(&bufs[at - 1], "partials")?) };
            if counts.len() != n || xs.is_some_and(|x| x.len() != n) {
                return Err(PyValueError::new_err("load: partials of different lengths"));
            }
            for (r, &slot) in slots.iter().enumerate() {
                self.ints[slot * na + j] += counts[r];
                if let Some(x) = xs {
                    let (cell, x) = (&mut self.floats[slot * nf + f], x[r]);
                    match a {
                        Agg::Rows => {}
                        Agg::Sum(_) | Agg::Mean(_) => *cell += if x.is_nan() { 0.0 } else { x },
                        Agg::Min(_) => if !x.is_nan() { *cell = cell.min(x) },
                        Agg::Max(_) => if !x.is_nan() { *cell = cell.max(x) },
                    }
                }
            }
            if xs.is_some() {
                f += 1;
            }
        }
        for q in 0..ns {
            let rows: &[i64] = view(&bufs[at], "sketch rows")?;
            let buckets: &[i64] = view(&bufs[at + 1], "buckets")?;
            let counts: &[i64] = view(&bufs[at + 2], "bucket counts")?;
            at += 3;
            if buckets.len() != rows.len() || counts.len() != rows.len() || rows.iter().any(|&r| r < 0 || r as usize >= n) {
                return Err(PyValueError::new_err("load: bad sketch rows"));
            }
            for i in 0..rows.len() {
                *self.sk[slots[rows[i] as usize] * ns + q].entry(buckets[i]).or_insert(0) += counts[i];
            }
        }
        Ok(())
    }

    /// Every (key, pane) held, with its partials, in the same columns as `close` (panes for starts).
    fn dump<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let order: Vec<u32> = (0..self.slot_key.len() as u32).collect();
        let cols = self.columns(&order, &self.slot_key, &self.slot_pane, &self.ints, &self.floats, &self.sk, false);
        Self::as_list(py, order.len(), cols)
    }

    fn clear(&mut self) {
        self.map.clear();
        self.last.fill((i64::MIN, 0));
        self.slot_key.clear();
        self.slot_pane.clear();
        self.ints.clear();
        self.floats.clear();
        self.sk.clear();
    }

    /// Keys interned now (those holding a pane, and at most twice as many others plus 4,096).
    fn keys(&self) -> usize {
        self.last.len()
    }

    fn __len__(&self) -> usize {
        self.slot_key.len()
    }

    /// (lowest, highest) pane held, or None.
    fn pane_range(&self) -> Option<(i64, i64)> {
        let lo = self.slot_pane.iter().min()?;
        let hi = self.slot_pane.iter().max()?;
        Some((*lo, *hi))
    }
}
